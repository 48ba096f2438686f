/* url.c -- the one URL parser (libcurl's URL API) and the one strict percent-decoder.
 *
 * Owns nothing beyond the struct bd_url it fills. Any thread; never blocks; no statics
 * other than constant tables. Must not grow a second hand-written URL splitter: a new
 * kind of URL adds a scheme list below and calls bd_url_parse().  SPDX-License-Identifier: MIT
 */
#include "batchd/url.h"
#include "batchd/error.h"

#include <curl/curl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const bd_url_redis_schemes[] = { "redis", NULL };
const char *const bd_url_postgres_schemes[] = { "postgres", "postgresql", NULL };
const char *const bd_url_http_schemes[] = { "http", "https", NULL };

/* The port a URL means when it names none. libcurl knows http(s) but not redis or
 * postgres (CURLU_NON_SUPPORT_SCHEME), so the table is ours. */
static const struct {
    const char *scheme;
    int port;
} url_default_ports[] = {
    { "redis", 6379 }, { "postgres", 5432 }, { "postgresql", 5432 },
    { "http", 80 },    { "https", 443 },
};

static int url_fail(char *why, size_t whylen, const char *fmt, const char *arg)
{
    if (why != NULL && whylen > 0)
        snprintf(why, whylen, fmt, arg);
    return BD_EINVAL;
}

/* Copy part of h into *dst ("" when rc is absent, the code for a part the URL lacks;
 * CURLUE_OK for a part always present). BD_OK, BD_EINVAL or BD_ENOMEM. */
static int url_get_part(CURLU *h, CURLUPart part, unsigned flags, CURLUcode absent, char **dst,
                        char *why, size_t whylen)
{
    char *val = NULL;
    CURLUcode rc = curl_url_get(h, part, &val, flags);

    if ((absent != CURLUE_OK && rc == absent) || (rc == CURLUE_OK && val == NULL)) {
        *dst = strdup("");
    } else if (rc == CURLUE_OUT_OF_MEMORY) {
        return BD_ENOMEM;
    } else if (rc != CURLUE_OK) {
        return url_fail(why, whylen, "not a valid URL: %s", curl_url_strerror(rc));
    } else {
        *dst = strdup(val);
        curl_free(val);
    }
    return *dst != NULL ? BD_OK : BD_ENOMEM;
}

static bool url_has_space(const char *s)
{
    for (; *s != '\0'; s++)
        if ((unsigned char)*s <= 0x20 || *s == 0x7f)
            return true;
    return false;
}

static int url_check_scheme(const char *scheme, const char *const *allowed, char *why,
                            size_t whylen)
{
    char list[128] = "";

    for (size_t i = 0; allowed[i] != NULL; i++) {
        if (strcmp(scheme, allowed[i]) == 0)
            return BD_OK;
        snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s://", i ? " or " : "",
                 allowed[i]);
    }
    if (why != NULL && whylen > 0)
        snprintf(why, whylen, "scheme must be %s (got \"%.16s\")", list, scheme);
    return BD_EINVAL;
}

static int url_set_port(CURLU *h, struct bd_url *out, char *why, size_t whylen)
{
    char *val = NULL;
    CURLUcode rc = curl_url_get(h, CURLUPART_PORT, &val, 0);

    if (rc == CURLUE_NO_PORT) {
        for (size_t i = 0; i < sizeof(url_default_ports) / sizeof(url_default_ports[0]); i++)
            if (strcmp(url_default_ports[i].scheme, out->scheme) == 0)
                out->port = url_default_ports[i].port;
        return out->port > 0 ? BD_OK : url_fail(why, whylen, "no port%s", "");
    }
    if (rc == CURLUE_OUT_OF_MEMORY)
        return BD_ENOMEM;
    if (rc != CURLUE_OK)
        return url_fail(why, whylen, "not a valid URL: %s", curl_url_strerror(rc));
    out->port = atoi(val);                          /* libcurl checked: digits, <= 65535 */
    curl_free(val);
    return out->port > 0 ? BD_OK : url_fail(why, whylen, "port must be 1..65535%s", "");
}

int bd_url_parse(const char *url, const char *const *allowed_schemes, struct bd_url *out,
                 char *why, size_t whylen)
{
    CURLU *h;
    CURLUcode rc;
    char *frag = NULL;
    const char *sep;
    int err;

    memset(out, 0, sizeof(*out));
    if (url_has_space(url))
        return url_fail(why, whylen, "must not contain spaces or control characters%s", "");
    /* libcurl reads "redis:///0" as host "0" (0.0.0.0); an empty authority is no host. */
    if ((sep = strstr(url, "://")) != NULL && sep[3] == '/')
        return url_fail(why, whylen, "no host%s", "");
    if ((h = curl_url()) == NULL)
        return BD_ENOMEM;
    rc = curl_url_set(h, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME);
    if (rc == CURLUE_OUT_OF_MEMORY) {
        err = BD_ENOMEM;
        goto fail;
    }
    if (rc != CURLUE_OK) {
        err = url_fail(why, whylen, "not a valid URL: %s", curl_url_strerror(rc));
        goto fail;
    }
    err = url_get_part(h, CURLUPART_SCHEME, 0, CURLUE_NO_SCHEME, &out->scheme, why, whylen);
    if (err == BD_OK)
        err = url_check_scheme(out->scheme, allowed_schemes, why, whylen);
    if (err == BD_OK)
        err = url_get_part(h, CURLUPART_HOST, 0, CURLUE_NO_HOST, &out->host, why, whylen);
    if (err == BD_OK && out->host[0] == '\0')
        err = url_fail(why, whylen, "no host%s", "");
    if (err == BD_OK && out->host[0] == '[') {     /* [::1] → ::1 */
        size_t n = strlen(out->host);
        memmove(out->host, out->host + 1, n - 2);
        out->host[n - 2] = '\0';
    }
    if (err == BD_OK)
        err = url_set_port(h, out, why, whylen);
    if (err == BD_OK)
        err = url_get_part(h, CURLUPART_USER, CURLU_URLDECODE, CURLUE_NO_USER, &out->user, why,
                           whylen);
    if (err == BD_OK)
        err = url_get_part(h, CURLUPART_PASSWORD, CURLU_URLDECODE, CURLUE_NO_PASSWORD,
                           &out->password, why, whylen);
    if (err == BD_OK)
        err = url_get_part(h, CURLUPART_PATH, 0, CURLUE_OK, &out->path, why, whylen);
    if (err == BD_OK)
        err = url_get_part(h, CURLUPART_QUERY, 0, CURLUE_NO_QUERY, &out->query, why, whylen);
    if (err == BD_OK && curl_url_get(h, CURLUPART_FRAGMENT, &frag, 0) == CURLUE_OK) {
        curl_free(frag);
        err = url_fail(why, whylen, "must not have a #fragment%s", "");
    }
    if (err < 0)
        goto fail;
    curl_url_cleanup(h);
    return BD_OK;

fail:
    curl_url_cleanup(h);
    bd_url_free(out);
    return err;
}

void bd_url_free(struct bd_url *u)
{
    if (u == NULL)
        return;
    free(u->scheme);
    free(u->host);
    free(u->user);
    free(u->password);
    free(u->path);
    free(u->query);
    memset(u, 0, sizeof(*u));
}

int bd_url_path_uint(const struct bd_url *u, unsigned max, unsigned *out)
{
    const char *p = u->path[0] == '/' ? u->path + 1 : u->path;
    unsigned long v = 0;

    *out = 0;
    if (*p == '\0')
        return BD_OK;
    for (; *p != '\0'; p++) {
        if (*p < '0' || *p > '9')
            return BD_EINVAL;
        v = v * 10 + (unsigned long)(*p - '0');
        if (v > max)
            return BD_EINVAL;
    }
    *out = (unsigned)v;
    return BD_OK;
}

static int url_hex_value(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;                                     /* ASCII lower case */
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

long bd_url_decode(const char *in, size_t len, char *out, size_t outlen, int plus_is_space)
{
    size_t o = 0;

    if (outlen == 0)
        return -1;
    for (size_t i = 0; i < len; i++) {
        int c = (unsigned char)in[i];

        if (c == '%') {
            int hi, lo;

            if (len - i < 3)
                return -1;
            hi = url_hex_value((unsigned char)in[i + 1]);
            lo = url_hex_value((unsigned char)in[i + 2]);
            if (hi < 0 || lo < 0)
                return -1;
            c = hi * 16 + lo;
            i += 2;
        } else if (c == '+' && plus_is_space) {
            c = ' ';
        }
        if (c == '\0' || o + 1 >= outlen)          /* NUL would cut the string short */
            return -1;
        out[o++] = (char)c;
    }
    out[o] = '\0';
    return (long)o;
}
