/* http.c -- batchctl's HTTP client over one libcurl easy handle (see http.h).
 *
 * Owns the easy handle (its connection stays open between the requests of one run) and the
 * API key header. Blocking by design: a command-line client has nothing else to do while
 * it waits. Knows the API's prefix and its error shape, nothing of any command.
 * SPDX-License-Identifier: MIT
 */
#define _GNU_SOURCE                           /* asprintf */
#include "http.h"

#include "bctl.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define API_PREFIX    "/api/v1/batch"
#define BODY_MAX      (256u << 20)   /* a gathered answer; larger is not batchd talking */

struct http_call {
    struct bctl_http *h;
    const struct bctl_xfer *x;
    struct bctl_http_resp *resp;
};

int bctl_http_init(struct bctl_http *h, const struct bctl_args *a)
{
    memset(h, 0, sizeof(*h));
    h->args = a;
    h->easy = curl_easy_init();
    if (h->easy == NULL)
        return -1;
    if (a->api_key != NULL) {
        char *line = NULL;
        if (asprintf(&line, "X-API-Key: %s", a->api_key) < 0) {
            curl_easy_cleanup(h->easy);
            return -1;
        }
        h->auth = curl_slist_append(NULL, line);
        free(line);
        if (h->auth == NULL) {
            curl_easy_cleanup(h->easy);
            return -1;
        }
    }
    return 0;
}

void bctl_http_close(struct bctl_http *h)
{
    curl_slist_free_all(h->auth);
    if (h->easy != NULL)
        curl_easy_cleanup(h->easy);
    memset(h, 0, sizeof(*h));
}

void bctl_http_resp_free(struct bctl_http_resp *r)
{
    bd_buf_free(&r->body);
}

char *bctl_http_url(const struct bctl_http *h, const char *path, const char *const *query)
{
    const struct bctl_args *a = h->args;
    CURLU *u = curl_url();
    char *base = NULL, *out = NULL;
    char *old_path = NULL;

    if (u == NULL)
        return NULL;
    /* The base may carry a path of its own (a batchd behind a proxy at /batchd): the API's
     * path goes after it. */
    if (asprintf(&base, "%.*s", (int)a->url_len, a->url) < 0)
        goto done;
    if (curl_url_set(u, CURLUPART_URL, base, 0) != CURLUE_OK)
        goto done;
    if (curl_url_get(u, CURLUPART_PATH, &old_path, 0) != CURLUE_OK)
        goto done;
    {
        char *full = NULL;
        size_t n = strlen(old_path);
        while (n > 0 && old_path[n - 1] == '/')
            n--;
        if (asprintf(&full, "%.*s" API_PREFIX "%s", (int)n, old_path, path) < 0)
            goto done;
        CURLUcode rc = curl_url_set(u, CURLUPART_PATH, full, 0);
        free(full);
        if (rc != CURLUE_OK)
            goto done;
    }
    curl_url_set(u, CURLUPART_QUERY, NULL, 0);
    for (size_t i = 0; query != NULL && query[i] != NULL; i += 2) {
        char *pair = NULL;
        if (query[i + 1] == NULL)
            continue;
        if (asprintf(&pair, "%s=%s", query[i], query[i + 1]) < 0)
            goto done;
        CURLUcode rc = curl_url_set(u, CURLUPART_QUERY, pair,
                                    CURLU_APPENDQUERY | CURLU_URLENCODE);
        free(pair);
        if (rc != CURLUE_OK)
            goto done;
    }
    if (curl_url_get(u, CURLUPART_URL, &out, 0) != CURLUE_OK)
        out = NULL;
done:
    curl_free(old_path);
    free(base);
    curl_url_cleanup(u);
    return out;
}

static size_t http_on_header(char *data, size_t size, size_t nmemb, void *arg)
{
    struct http_call *c = arg;
    size_t n = size * nmemb;

    if (n > 12 && strncasecmp(data, "Retry-After:", 12) == 0) {
        size_t i = 12, j = 0;
        while (i < n && (data[i] == ' ' || data[i] == '\t'))
            i++;
        while (i < n && !isspace((unsigned char)data[i]) &&
               j + 1 < sizeof(c->resp->retry_after))
            c->resp->retry_after[j++] = data[i++];
        c->resp->retry_after[j] = '\0';
    }
    return n;
}

static size_t http_on_body(char *data, size_t size, size_t nmemb, void *arg)
{
    struct http_call *c = arg;
    size_t n = size * nmemb;
    long status = 0;

    curl_easy_getinfo(c->h->easy, CURLINFO_RESPONSE_CODE, &status);
    if (status >= 200 && status < 300 && c->x->on_data != NULL) {
        int rc = c->x->on_data(data, n, c->x->data_arg);
        if (rc != 0) {
            c->resp->stopped = rc;
            return n == 0 ? 1 : 0;           /* any other count aborts the transfer */
        }
        return n;
    }
    if (c->resp->body.len + n > BODY_MAX)
        return 0;
    bd_buf_append(&c->resp->body, data, n);
    return c->resp->body.is_failed ? 0 : n;
}

int bctl_http_perform(struct bctl_http *h, const struct bctl_xfer *x, struct bctl_http_resp *resp)
{
    const struct bctl_args *a = h->args;
    struct http_call call = {h, x, resp};
    struct curl_slist *headers = NULL;
    char line[256];
    CURL *e = h->easy;
    double idle = x->idle_s > 0 ? x->idle_s : a->timeout_s;
    CURLcode rc;
    int ok = 0;

    memset(resp, 0, sizeof(*resp));
    bd_buf_init(&resp->body);
    curl_easy_reset(e);                       /* keeps the open connection */
    for (const struct curl_slist *s = h->auth; s != NULL; s = s->next)
        headers = curl_slist_append(headers, s->data);
    if (x->content_type != NULL) {
        snprintf(line, sizeof(line), "Content-Type: %s", x->content_type);
        headers = curl_slist_append(headers, line);
    } else if (strcmp(x->method, "POST") == 0) {
        /* batchd refuses a POST a web form could send (no type): say it is JSON. */
        headers = curl_slist_append(headers, "Content-Type: application/json");
    }
    for (size_t i = 0; x->headers != NULL && x->headers[i] != NULL; i++)
        headers = curl_slist_append(headers, x->headers[i]);
    if (x->read != NULL && x->upload_size < 0)
        headers = curl_slist_append(headers, "Transfer-Encoding: chunked");

    curl_easy_setopt(e, CURLOPT_URL, x->url);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, h->errbuf);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "batchctl/" BATCHD_VERSION);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)ceil(a->timeout_s * 1000));
    if (x->is_stream) {
        curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
        curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, (long)ceil(idle));
    } else {
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)ceil(a->timeout_s * 1000));
    }
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, http_on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, &call);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, http_on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &call);
    if (strcmp(x->method, "POST") == 0) {
        curl_easy_setopt(e, CURLOPT_POST, 1L);
        if (x->read != NULL) {
            curl_easy_setopt(e, CURLOPT_READFUNCTION, x->read);
            curl_easy_setopt(e, CURLOPT_READDATA, x->read_arg);
            curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)x->upload_size);
        } else {
            curl_easy_setopt(e, CURLOPT_POSTFIELDS, "");
            curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, 0L);
        }
    } else if (strcmp(x->method, "GET") != 0) {
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, x->method);
    }
    if (x->progress != NULL) {
        curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, x->progress);
        curl_easy_setopt(e, CURLOPT_XFERINFODATA, x->progress_arg);
    }

    h->errbuf[0] = '\0';
    rc = curl_easy_perform(e);
    resp->curl_code = (int)rc;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &resp->status);
    /* An answer sent before the whole upload was read (batchd refuses a bad line at once
     * and closes) can end curl's transfer with a send error: the answer still counts. */
    if (resp->status < 200 && rc != CURLE_OK)
        ok = -1;
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, NULL);
    curl_slist_free_all(headers);
    return ok;
}

int bctl_http_status_exit(long status)
{
    if (status == 401 || status == 403)
        return BCTL_EXIT_AUTH;
    if (status == 404)
        return BCTL_EXIT_NOT_FOUND;
    if (status >= 400 && status < 500)
        return BCTL_EXIT_REFUSED;
    return BCTL_EXIT_SERVER;
}

int bctl_http_fail(const struct bctl_http *h, const char *what, int rc,
                   const struct bctl_http_resp *r)
{
    const struct bctl_args *a = h->args;

    if (rc < 0) {
        const char *why = h->errbuf[0] ? h->errbuf : curl_easy_strerror((CURLcode)r->curl_code);
        fprintf(stderr, "batchctl: %s: cannot reach %.*s: %s\n", what, (int)a->url_len, a->url,
                why);
        return BCTL_EXIT_CONNECT;
    }
    json_t *doc = r->body.len > 0 ? json_loadb(r->body.data, r->body.len, 0, NULL) : NULL;
    const char *code = NULL, *message = NULL, *field = NULL;
    json_t *err = json_object_get(doc, "error");
    if (json_is_object(err)) {
        code = json_string_value(json_object_get(err, "code"));
        message = json_string_value(json_object_get(err, "message"));
        field = json_string_value(json_object_get(err, "field"));
    }
    if (a->is_json && doc != NULL) {
        fwrite(r->body.data, 1, r->body.len, stdout);
        if (r->body.data[r->body.len - 1] != '\n')
            fputc('\n', stdout);
    }
    if (message != NULL)
        fprintf(stderr, "batchctl: %s: %ld %s: %s%s%s%s\n", what, r->status, code ? code : "",
                message, field ? " (field " : "", field ? field : "", field ? ")" : "");
    else
        fprintf(stderr, "batchctl: %s: HTTP %ld: %.200s\n", what, r->status,
                r->body.len > 0 ? r->body.data : "(no body)");
    if (r->status == 401 && a->api_key == NULL)
        fprintf(stderr, "batchctl: the server wants an API key: --api-key or BATCHD_API_KEY\n");
    if (r->retry_after[0] != '\0')
        fprintf(stderr, "batchctl: the server asks to retry after %s s\n", r->retry_after);
    json_decref(doc);
    return bctl_http_status_exit(r->status);
}

json_t *bctl_http_json(struct bctl_http *h, const char *method, const char *url,
                       const char *what, struct bctl_http_resp *resp, int *exit_code)
{
    struct bctl_xfer x = {.method = method, .url = url};
    json_error_t jerr;
    int rc = bctl_http_perform(h, &x, resp);

    if (rc < 0 || resp->status < 200 || resp->status >= 300) {
        *exit_code = bctl_http_fail(h, what, rc, resp);
        return NULL;
    }
    if (resp->curl_code != CURLE_OK) {
        *exit_code = bctl_http_fail(h, what, -1, resp);
        return NULL;
    }
    json_t *doc = json_loadb(resp->body.data ? resp->body.data : "", resp->body.len, 0, &jerr);
    if (doc == NULL) {
        fprintf(stderr, "batchctl: %s: the answer is not JSON (%s)\n", what, jerr.text);
        *exit_code = BCTL_EXIT_SERVER;
        return NULL;
    }
    *exit_code = BCTL_EXIT_OK;
    return doc;
}
