/* config_values.c -- what a configured value may be: parsers, string checks, the BATCH_*
 * overrides and the rules between settings, with the one set of error messages they share.
 *
 * Every value, from the file, the environment or a default, passes bd__config_parse_value()
 * and its check here, so one bad value reads the same wherever it came from. URLs go
 * through bd_url_parse() (url.h). Owns nothing beyond one bd_config_load() call (struct
 * cfg_load). Startup only: calls gethostname(), so never on the loop.
 * SPDX-License-Identifier: MIT
 */
#include "config_internal.h"
#include "batchd/base64.h"
#include "batchd/error.h"
#include "batchd/log.h"
#include "batchd/random_id.h"
#include "batchd/url.h"

#include <assert.h>
#include <libpq-fe.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

/* -- Errors --------------------------------------------------------------------------- */

int bd__config_fail(struct cfg_load *ld, int code, const char *fmt, ...)
{
    va_list ap;

    if (ld->errbuf != NULL && ld->errlen > 0) {
        va_start(ap, fmt);
        vsnprintf(ld->errbuf, ld->errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

int bd__config_fail_oom(struct cfg_load *ld)
{
    return bd__config_fail(ld, BD_ENOMEM, "%s: out of memory", ld->path);
}

/* "FILE: key: why" or, when the value came from the environment, "environment VAR: why". */
int bd__config_fail_value(struct cfg_load *ld, const char *key, const char *env, const char *why)
{
    if (env != NULL)
        return bd__config_fail(ld, BD_EINVAL, "environment %s: %s", env, why);
    return bd__config_fail(ld, BD_EINVAL, "%s: %s: %s", ld->path, key, why);
}

/* -- Value parsers: one set for file and environment ------------------------------------ */

static const char *const provider_names[] = { "ollama", "openai", "tei", "hashing" };
static const char *const overlong_names[] = { "truncate", "fail" };

/* Quote a user value into a reason: non-printable bytes become '?', and a long value is
 * cut to buflen - 4 characters plus "...", so one line stays one line. */
static const char *cfg_quote(const char *s, char *buf, size_t buflen)
{
    size_t n = 0;

    assert(buflen > 4);
    for (; s[n] != '\0' && n < buflen - 1; n++)
        buf[n] = (s[n] >= 0x20 && s[n] < 0x7f) ? s[n] : '?';
    buf[n] = '\0';
    if (s[n] != '\0')
        memcpy(buf + buflen - 4, "...", 4);
    return buf;
}

static bool parse_u64(const char *s, uint64_t *out)
{
    char *end;

    if (*s < '0' || *s > '9')             /* strtoull would take " 1", "+1" and "-1" */
        return false;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end != '\0' || (errno != 0 && errno != ERANGE))
        return false;
    *out = v;                             /* ERANGE: ULLONG_MAX, which fails any range */
    return true;
}

static bool parse_double(const char *s, double *out)
{
    char *end;

    if (*s == '\0' || *s == ' ' || *s == '\t')
        return false;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || *end != '\0' || !isfinite(v))
        return false;
    *out = v;
    return true;
}

static bool parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = { "true", "yes", "on", "1" };
    static const char *const no[] = { "false", "no", "off", "0" };

    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return true;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return true;
        }
    }
    return false;
}

static int parse_name(const char *s, const char *const *names, int n)
{
    for (int i = 0; i < n; i++)
        if (strcmp(s, names[i]) == 0)
            return i;
    return -1;
}

/* Parse text as f's kind into base + f->cfg_off. BD_OK, BD_EINVAL with why filled, or
 * BD_ENOMEM. A string replaces (and frees) what was there. */
int bd__config_parse_value(const struct cfg_field *f, const char *text, void *base, char *why,
                           size_t whylen)
{
    void *dst = (char *)base + f->cfg_off;
    char q[48];
    uint64_t u;
    double d;
    bool b;
    int i;

    switch (f->kind) {
    case CFG_UINT:
    case CFG_SIZE:
        if (!parse_u64(text, &u)) {
            snprintf(why, whylen, "not an integer (got \"%s\")", cfg_quote(text, q, sizeof(q)));
            return BD_EINVAL;
        }
        if ((double)u < f->min || (double)u > f->max) {
            snprintf(why, whylen, "must be between %.0f and %.0f (got %s)", f->min, f->max,
                     cfg_quote(text, q, sizeof(q)));
            return BD_EINVAL;
        }
        if (f->kind == CFG_UINT)
            *(unsigned *)dst = (unsigned)u;
        else
            *(size_t *)dst = (size_t)u;
        return BD_OK;
    case CFG_SECONDS:
    case CFG_RATE:
        if (!parse_double(text, &d)) {
            snprintf(why, whylen, "not a number (got \"%s\")", cfg_quote(text, q, sizeof(q)));
            return BD_EINVAL;
        }
        if (f->kind == CFG_SECONDS && (d <= 0 || d > f->max)) {
            snprintf(why, whylen, "must be a number of seconds > 0 and <= %.0f (got %s)",
                     f->max, cfg_quote(text, q, sizeof(q)));
            return BD_EINVAL;
        }
        if (f->kind == CFG_RATE && (d < f->min || d > f->max)) {
            snprintf(why, whylen, "must be between %.0f and %.0f (got %s)", f->min, f->max,
                     cfg_quote(text, q, sizeof(q)));
            return BD_EINVAL;
        }
        *(double *)dst = d;
        return BD_OK;
    case CFG_BOOL:
        if (!parse_bool(text, &b)) {
            snprintf(why, whylen, "must be true or false (got \"%s\")",
                     cfg_quote(text, q, sizeof(q)));
            return BD_EINVAL;
        }
        *(bool *)dst = b;
        return BD_OK;
    case CFG_PROVIDER:
        i = parse_name(text, provider_names, 4);
        if (i < 0) {
            snprintf(why, whylen, "must be one of ollama, openai, tei, hashing (got \"%s\")",
                     cfg_quote(text, q, sizeof(q)));
            return BD_EINVAL;
        }
        *(enum bd_model_provider *)dst = (enum bd_model_provider)i;
        return BD_OK;
    case CFG_OVERLONG:
        i = parse_name(text, overlong_names, 2);
        if (i < 0) {
            snprintf(why, whylen, "must be truncate or fail (got \"%s\")",
                     cfg_quote(text, q, sizeof(q)));
            return BD_EINVAL;
        }
        *(enum bd_overlong_policy *)dst = (enum bd_overlong_policy)i;
        return BD_OK;
    case CFG_STRING: {
        if (f->check != NULL && !f->check(text, why, whylen))
            return BD_EINVAL;
        char *copy = strdup(text);
        if (copy == NULL)
            return BD_ENOMEM;
        free(*(char **)dst);
        *(char **)dst = copy;
        return BD_OK;
    }
    }
    assert(!"unknown setting kind");
    return BD_EINVAL;
}

/* -- String checks ---------------------------------------------------------------------- */

/* Split "host:port" or "[v6]:port" into host (copied into host, hostlen) and port. */
static bool split_listen(const char *s, char *host, size_t hostlen, int *port, char *why,
                         size_t whylen)
{
    const char *colon;
    const char *h = s;
    size_t hlen;
    uint64_t p;

    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (close == NULL || close[1] != ':') {
            snprintf(why, whylen, "must be host:port or [ipv6]:port");
            return false;
        }
        h = s + 1;
        hlen = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL) {
            char q[48];
            snprintf(why, whylen, "must be host:port (no port in \"%s\")",
                     cfg_quote(s, q, sizeof(q)));
            return false;
        }
        hlen = (size_t)(colon - s);
        if (memchr(s, ':', hlen) != NULL) {
            snprintf(why, whylen, "an IPv6 address needs brackets: [::1]:8000");
            return false;
        }
    }
    if (hlen == 0 || hlen >= hostlen) {
        snprintf(why, whylen, "must be host:port with a host of 1 to %zu characters",
                 hostlen - 1);
        return false;
    }
    for (size_t i = 0; i < hlen; i++) {
        if (h[i] <= 0x20 || h[i] >= 0x7f || h[i] == '/' || h[i] == '[' || h[i] == ']') {
            snprintf(why, whylen, "host contains a character that cannot be in a host");
            return false;
        }
    }
    if (!parse_u64(colon + 1, &p) || p > 65535) {
        snprintf(why, whylen, "port must be an integer 0..65535");
        return false;
    }
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    *port = (int)p;
    return true;
}

bool bd__config_check_listen(const char *s, char *why, size_t whylen)
{
    char host[256];
    int port;

    return split_listen(s, host, sizeof(host), &port, why, whylen);
}

bool bd__config_check_log_level(const char *s, char *why, size_t whylen)
{
    enum bd_log_level level;
    char q[48];

    if (bd_log_level_parse(s, &level) == BD_OK)
        return true;
    snprintf(why, whylen, "must be one of debug, info, warn, error, off (got \"%s\")",
             cfg_quote(s, q, sizeof(q)));
    return false;
}

static bool is_name_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '_' || c == '.' || c == ':' || c == '-';
}

/* ^[A-Za-z0-9_.:-]{1,max}$ */
static bool check_charset(const char *s, size_t max, char *why, size_t whylen)
{
    size_t n = strlen(s);
    char q[48];

    for (size_t i = 0; i < n; i++) {
        if (!is_name_char(s[i])) {
            snprintf(why, whylen, "may contain only A-Z a-z 0-9 _ . : - (got \"%s\")",
                     cfg_quote(s, q, sizeof(q)));
            return false;
        }
    }
    if (n == 0 || n > max) {
        snprintf(why, whylen, "must be 1 to %zu characters long", max);
        return false;
    }
    return true;
}

bool bd__config_check_name(const char *s, char *why, size_t whylen)
{
    return check_charset(s, 64, why, whylen);
}

bool bd__config_check_worker_id(const char *s, char *why, size_t whylen)
{
    return check_charset(s, 128, why, whylen);
}

/* http.allowed_hosts: "" or a comma list of host names (DNS names or IP literals, no
 * port: a Host header's port is ignored when matched), each 1 to 253 characters. */
bool bd__config_check_hosts(const char *s, char *why, size_t whylen)
{
    const char *p = s;

    while (*p != '\0') {
        size_t n = strcspn(p, ",");

        if (n == 0 || n > 253) {
            snprintf(why, whylen, "must be a comma list of host names, each 1 to 253 "
                                  "characters long");
            return false;
        }
        if (p[0] == '[' ? p[n - 1] != ']' : memchr(p, ':', n) != NULL) {
            snprintf(why, whylen, "host names take no port (IPv6 literals in brackets)");
            return false;
        }
        for (size_t i = 0; i < n; i++) {
            char c = p[i];
            if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '-' || c == '_' || c == ':' || c == '[' || c == ']')) {
                snprintf(why, whylen, "host names may contain only A-Z a-z 0-9 . - _ and, for "
                                      "IPv6, [ : ] (no spaces, no ports)");
                return false;
            }
        }
        p += n;
        if (*p == ',' && *++p == '\0') {
            snprintf(why, whylen, "must not end with a comma");
            return false;
        }
    }
    return true;
}

/* Parse s with bd_url_parse() (url.h, libcurl's URL API), so a URL that a module would
 * refuse at startup fails the config check instead, naming its key. On failure why reads
 * "<what> (<detail>)"; the URL itself is never echoed, it may hold a password. */
static bool check_url(const char *s, const char *const *schemes, const char *what,
                      bool is_query_ok, bool is_db_path, char *why, size_t whylen)
{
    struct bd_url u;
    char detail[128] = "";
    unsigned db;
    int err = bd_url_parse(s, schemes, &u, detail, sizeof(detail));

    if (err == BD_OK && !is_query_ok && u.query[0] != '\0') {
        snprintf(detail, sizeof(detail), "no ?query allowed");
        err = BD_EINVAL;
    }
    if (err == BD_OK && is_db_path && bd_url_path_uint(&u, 1u << 20, &db) < 0) {
        snprintf(detail, sizeof(detail), "the path must be a database number");
        err = BD_EINVAL;
    }
    bd_url_free(&u);
    if (err == BD_ENOMEM)
        snprintf(detail, sizeof(detail), "out of memory");
    if (err < 0)
        snprintf(why, whylen, "%s (%s)", what, detail);
    return err == BD_OK;
}

bool bd__config_check_redis_url(const char *s, char *why, size_t whylen)
{
    return check_url(s, bd_url_redis_schemes,
                     "must be a redis:// URL: redis://[[user]:password@]host[:port][/db]", false,
                     true, why, whylen);
}

/* libpq is the judge of what it accepts: a conninfo string ("host=... dbname=...") or a
 * URL. A single-host URL also goes through bd_url_parse(), which names what is wrong (a
 * bad port, a wrong scheme); the forms only libpq knows (no host: the Unix socket,
 * "postgresql:///db"; several hosts, "postgresql://h1,h2:5433/db") are left to libpq.
 * libpq's own message is not quoted: it may echo part of the value, and so a password. */
bool bd__config_check_postgres_url(const char *s, char *why, size_t whylen)
{
    const char *sep = strstr(s, "://");
    PQconninfoOption *opts;
    char *err = NULL;

    if (sep != NULL && sep[3] != '/' && strchr(sep + 3, ',') == NULL &&
        !check_url(s, bd_url_postgres_schemes,
                   "must be a postgres:// or postgresql:// URL, or a conninfo string", true,
                   false, why, whylen))
        return false;
    opts = PQconninfoParse(s, &err);
    if (opts == NULL) {
        snprintf(why, whylen, "%s",
                 err != NULL ? "libpq cannot parse it as a URL or a conninfo string"
                             : "out of memory");
        PQfreemem(err);
        return false;
    }
    PQconninfoFree(opts);
    return true;
}

/* A model's base_url: "/api/embed" and the like are appended, hence no query. */
bool bd__config_check_http_url(const char *s, char *why, size_t whylen)
{
    return check_url(s, bd_url_http_schemes, "must be an http:// or https:// URL", false, false,
                     why, whylen);
}

/* A webhook endpoint: the URL is used as it is (a query is fine), so only the scheme and
 * the form are checked; ftp:// and the like are refused here, never tried. */
bool bd__config_check_webhook_url(const char *s, char *why, size_t whylen)
{
    return check_url(s, bd_url_http_schemes, "must be an http:// or https:// URL", true, false,
                     why, whylen);
}

/* Standard Webhooks' secret form: "whsec_" and the key in base64. The key's length bounds
 * are ours: under 16 bytes is too weak for HMAC-SHA256, over 128 is a paste error. The
 * value is never echoed (it is the key). */
bool bd__config_check_webhook_secret(const char *s, char *why, size_t whylen)
{
    static const char prefix[] = "whsec_";
    unsigned char key[200];
    size_t n = 0;
    size_t len = strlen(s);

    if (strncmp(s, prefix, strlen(prefix)) != 0) {
        snprintf(why, whylen, "must start with \"whsec_\" followed by the key in base64");
        return false;
    }
    len -= strlen(prefix);
    if (len > 4 * sizeof(key) / 3 ||
        bd_base64_decode(s + strlen(prefix), len, key, sizeof(key), &n) < 0) {
        snprintf(why, whylen, "the part after \"whsec_\" must be base64 (A-Z a-z 0-9 + /, "
                              "= padding)");
        return false;
    }
    memset(key, 0, sizeof(key));
    if (n < 16 || n > 128) {
        snprintf(why, whylen, "the key must be 16 to 128 bytes (got %zu)", n);
        return false;
    }
    return true;
}

/* The event types, as the triggers of schema version 8 (pg_schema.c) name them. */
static const char *const webhook_event_types[] = {
    "batch.completed", "batch.failed", "batch.expired", "batch.cancelled",
    "job.completed",   "job.failed",   "job.cancelled",
};

bool bd__config_check_webhook_event(const char *s, char *why, size_t whylen)
{
    char q[48];

    for (size_t i = 0; i < sizeof(webhook_event_types) / sizeof(webhook_event_types[0]); i++)
        if (strcmp(s, webhook_event_types[i]) == 0)
            return true;
    snprintf(why, whylen, "unknown event type \"%s\" (one of batch.completed, batch.failed, "
             "batch.expired, batch.cancelled, job.completed, job.failed, job.cancelled)",
             cfg_quote(s, q, sizeof(q)));
    return false;
}

void bd__config_webhooks_free(struct bd_config *cfg)
{
    for (unsigned e = 0; e < cfg->webhook_endpoints_count; e++) {
        struct bd_webhook_endpoint_config *ec = &cfg->webhook_endpoints[e];
        free(ec->name);
        free(ec->url);
        if (ec->secret != NULL)
            memset(ec->secret, 0, strlen(ec->secret));   /* the key does not linger */
        free(ec->secret);
        for (unsigned i = 0; i < ec->events_count; i++)
            free(ec->events[i]);
        free(ec->events);
    }
    free(cfg->webhook_endpoints);
    cfg->webhook_endpoints = NULL;
    cfg->webhook_endpoints_count = 0;
}

/* Printable ASCII, spaces allowed (a remote model name such as "BAAI/bge small"). */
bool bd__config_check_printable(const char *s, char *why, size_t whylen)
{
    size_t n = strlen(s);

    for (size_t i = 0; i < n; i++) {
        if (s[i] < 0x20 || s[i] >= 0x7f) {
            snprintf(why, whylen, "must be printable ASCII");
            return false;
        }
    }
    if (n > 256) {
        snprintf(why, whylen, "must be at most 256 characters long");
        return false;
    }
    return true;
}

/* A secret that goes into an HTTP header: printable ASCII, no spaces. Never echoed. */
bool bd__config_check_token(const char *s, char *why, size_t whylen)
{
    /* Printable ASCII already excludes control bytes and DEL; only ' ' is left to refuse. */
    if (strchr(s, ' ') != NULL || !bd__config_check_printable(s, why, whylen)) {
        snprintf(why, whylen, "must be printable ASCII without spaces, at most 256 characters");
        return false;
    }
    return true;
}

/* -- Environment overrides ----------------------------------------------------------- */

int bd__config_api_keys_add(struct bd_config *cfg, const char *key, size_t len)
{
    char **keys = realloc(cfg->api_keys, (cfg->api_keys_count + 1) * sizeof(*keys));
    if (keys == NULL)
        return BD_ENOMEM;
    cfg->api_keys = keys;
    keys[cfg->api_keys_count] = strndup(key, len);
    if (keys[cfg->api_keys_count] == NULL)
        return BD_ENOMEM;
    cfg->api_keys_count++;
    return BD_OK;
}

void bd__config_api_keys_clear(struct bd_config *cfg)
{
    for (unsigned i = 0; i < cfg->api_keys_count; i++)
        free(cfg->api_keys[i]);
    free(cfg->api_keys);
    cfg->api_keys = NULL;
    cfg->api_keys_count = 0;
}

/* BATCH_API_KEYS: comma separated; blanks around keys and empty entries are ignored. */
static int cfg_apply_env_api_keys(struct cfg_load *ld, struct bd_config *cfg, const char *v)
{
    static const char env[] = "BATCH_API_KEYS";
    char why[128];
    char one[260];

    bd__config_api_keys_clear(cfg);
    for (const char *p = v; *p != '\0';) {
        size_t len = strcspn(p, ",");
        const char *end = p + len;
        const char *s = p;
        while (s < end && (*s == ' ' || *s == '\t'))
            s++;
        const char *e = end;
        while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        if (e > s) {
            if ((size_t)(e - s) >= sizeof(one))
                return bd__config_fail_value(ld, NULL, env, "a key is longer than 256 characters");
            memcpy(one, s, (size_t)(e - s));
            one[e - s] = '\0';
            if (!bd__config_check_token(one, why, sizeof(why)))
                return bd__config_fail_value(ld, NULL, env, why);
            if (bd__config_api_keys_add(cfg, s, (size_t)(e - s)) < 0)
                return bd__config_fail_oom(ld);
        }
        p = *end == ',' ? end + 1 : end;
    }
    if (cfg->api_keys_count == 0)
        return bd__config_fail_value(ld, NULL, env, "no key in the list");
    ld->are_api_keys_from_env = true;
    return BD_OK;
}

static const char *cfg_getenv(struct cfg_load *ld, const char *name)
{
    const char *v = ld->getenv_fn(name, ld->getenv_arg);
    return (v != NULL && v[0] != '\0') ? v : NULL;
}

int bd__config_apply_env(struct cfg_load *ld, struct bd_config *cfg)
{
    char why[256];
    int err;

    for (size_t i = 0; i < CFG_NFIELDS; i++) {
        const struct cfg_field *f = &cfg_fields[i];
        if (f->env == NULL)
            continue;
        const char *v = cfg_getenv(ld, f->env);
        if (v == NULL)
            continue;
        err = bd__config_parse_value(f, v, cfg, why, sizeof(why));
        if (err == BD_ENOMEM)
            return bd__config_fail_oom(ld);
        if (err < 0)
            return bd__config_fail_value(ld, f->key, f->env, why);
        ld->is_from_env[i] = true;
    }
    const char *keys = cfg_getenv(ld, "BATCH_API_KEYS");
    if (keys != NULL)
        return cfg_apply_env_api_keys(ld, cfg, keys);
    return BD_OK;
}

/* -- Cross-field rules ------------------------------------------------------------------ */

static size_t cfg_field_index(const char *key)
{
    for (size_t i = 0; i < CFG_NFIELDS; i++)
        if (strcmp(cfg_fields[i].key, key) == 0)
            return i;
    assert(!"no such setting");
    return 0;
}

/* Fail naming key, or its environment variable when that is where the value came from. */
static int cfg_fail_setting(struct cfg_load *ld, const char *key, const char *why)
{
    size_t i = cfg_field_index(key);
    return bd__config_fail_value(ld, key, ld->is_from_env[i] ? cfg_fields[i].env : NULL, why);
}

/* "<hostname>-<pid>-<4 random hex>", with anything a worker id may not hold replaced by
 * '_'. The random part keeps ids apart where hostname and pid repeat (containers started
 * from one image with a fixed hostname all run batchd as pid 1): two processes with one id
 * would renew each other's leases. */
static int cfg_default_worker_id(struct bd_config *cfg)
{
    char host[200];
    char id[240], rnd[5];

    if (gethostname(host, sizeof(host)) != 0 || host[0] == '\0')
        snprintf(host, sizeof(host), "batchd");
    host[sizeof(host) - 1] = '\0';
    for (char *p = host; *p != '\0'; p++)
        if (!is_name_char(*p))
            *p = '_';
    bd_random_hex_or_clock(rnd, 2);
    snprintf(id, sizeof(id), "%.100s-%ld-%s", host, (long)getpid(), rnd);
    cfg->worker_id = strdup(id);
    return cfg->worker_id != NULL ? BD_OK : BD_ENOMEM;
}

/* Drop trailing '/' so "{base_url}/api/embed" never has "//". */
static void cfg_trim_slashes(char *url)
{
    size_t n = strlen(url);
    while (n > 0 && url[n - 1] == '/')
        url[--n] = '\0';
}

static int cfg_validate_models(struct cfg_load *ld, struct bd_config *cfg)
{
    char key[96];
    char why[160];

    for (unsigned m = 0; m < cfg->models_count; m++) {
        struct bd_model_config *mc = &cfg->models[m];
        if (mc->provider != BD_PROVIDER_HASHING && mc->base_url == NULL) {
            snprintf(key, sizeof(key), "models[%u].base_url", m);
            snprintf(why, sizeof(why), "required for provider %s",
                     bd_config_provider_name(mc->provider));
            return bd__config_fail_value(ld, key, NULL, why);
        }
        if (mc->base_url != NULL)
            cfg_trim_slashes(mc->base_url);
        if (mc->max_input_chars > mc->max_chars_per_request) {
            snprintf(key, sizeof(key), "models[%u].max_input_chars", m);
            snprintf(why, sizeof(why), "must not exceed max_chars_per_request (%u)",
                     mc->max_chars_per_request);
            return bd__config_fail_value(ld, key, NULL, why);
        }
        for (unsigned o = 0; o < m; o++) {
            if (strcmp(cfg->models[o].name, mc->name) == 0) {
                snprintf(key, sizeof(key), "models[%u].name", m);
                snprintf(why, sizeof(why), "duplicate model name \"%s\" (also models[%u])",
                         mc->name, o);
                return bd__config_fail_value(ld, key, NULL, why);
            }
        }
    }
    return BD_OK;
}

static int cfg_validate_webhooks(struct cfg_load *ld, struct bd_config *cfg)
{
    char key[96];
    char why[160];

    if (cfg->webhook_retry_base_s > cfg->webhook_retry_max_s)
        return cfg_fail_setting(ld, "webhooks.retry_base", "must not exceed webhooks.retry_max");
    if (cfg->webhook_retention_s < cfg->webhook_max_age_s)
        return cfg_fail_setting(ld, "webhooks.retention", "must not be less than "
                                "webhooks.max_age (an event is kept while it may be sent)");
    for (unsigned e = 0; e < cfg->webhook_endpoints_count; e++) {
        struct bd_webhook_endpoint_config *ec = &cfg->webhook_endpoints[e];
        if (ec->timeout_s <= 0)
            ec->timeout_s = cfg->webhook_timeout_s;
        for (unsigned o = 0; o < e; o++) {
            if (strcmp(cfg->webhook_endpoints[o].name, ec->name) == 0) {
                snprintf(key, sizeof(key), "webhooks.endpoints[%u].name", e);
                snprintf(why, sizeof(why), "duplicate endpoint name (also endpoints[%u]); give "
                         "each endpoint its own name", o);
                return bd__config_fail_value(ld, key, NULL, why);
            }
        }
    }
    return BD_OK;
}

int bd__config_validate(struct cfg_load *ld, struct bd_config *cfg)
{
    char host[256];
    char why[160];
    int err;

    if (cfg->redis_url == NULL)
        return bd__config_fail(ld, BD_EINVAL,
                               "%s: redis.url: required (in the file or in "
                               "BATCH_REDIS_URL)",
                               ld->path);
    if (cfg->postgres_url == NULL)
        return bd__config_fail(ld, BD_EINVAL,
                               "%s: postgres.url: required (in the file or in "
                               "BATCH_POSTGRES_URL)",
                               ld->path);
    if (cfg->default_batch_size > cfg->max_batch_size) {
        snprintf(why, sizeof(why), "must not exceed jobs.max_batch_size (%u)",
                 cfg->max_batch_size);
        return cfg_fail_setting(ld, "jobs.default_batch_size", why);
    }
    if (!split_listen(cfg->listen, host, sizeof(host), &cfg->listen_port, why, sizeof(why)))
        return cfg_fail_setting(ld, "server.listen", why);   /* checked already: belt */
    cfg->listen_host = strdup(host);
    if (cfg->listen_host == NULL)
        return bd__config_fail_oom(ld);
    if (cfg->worker_id == NULL && cfg_default_worker_id(cfg) < 0)
        return bd__config_fail_oom(ld);
    err = cfg_validate_models(ld, cfg);
    if (err < 0)
        return err;
    return cfg_validate_webhooks(ld, cfg);
}

/* -- Names --------------------------------------------------------------------------- */

const char *bd_config_provider_name(enum bd_model_provider p)
{
    if ((unsigned)p < sizeof(provider_names) / sizeof(provider_names[0]))
        return provider_names[p];
    return "unknown";
}
