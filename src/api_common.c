/* api_common.c -- what the API's handlers share: JSON answers, the API key check, the job
 * id rule, limit= and cursor= parsing, the one RFC 3339 time formatter, and the answer to a
 * failed store read.
 *
 * Owns nothing beyond a call: no state. Loop thread only. Every error answered here takes
 * its HTTP status and code from the error map (error.h), never a literal.
 * SPDX-License-Identifier: MIT
 */
#include "api_internal.h"
#include "api_v1.h"

#include "batchd/config.h"
#include "batchd/error.h"
#include "batchd/http_server.h"
#include "batchd/job_engine.h"
#include "batchd/log.h"
#include "batchd/router.h"
#include "batchd/server.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

void bd__api_respond_json(struct bd_http_request *req, int status, json_t *json,
                          const char *extra_headers)
{
    char *body = json ? json_dumps(json, BD__API_JSON_FLAGS) : NULL;

    json_decref(json);
    if (body == NULL) {
        bd_http_respond_err(req, BD_ENOMEM, "out of memory building the response", NULL);
        return;
    }
    bd_http_respond(req, status, "application/json", extra_headers, body, strlen(body));
    free(body);
}

/* given equals key, in a time that depends on key's length only (not on where they first
 * differ): a client cannot find a key byte by byte from answer times. */
static bool api_key_equal(const char *given, size_t given_len, const char *key)
{
    size_t len = strlen(key);
    unsigned char diff = given_len != len;
    for (size_t i = 0; i < len; i++)
        diff |= (unsigned char)key[i] ^ (unsigned char)(i < given_len ? given[i] : 0);
    return diff == 0;
}

bool bd__api_is_key_valid(const struct bd_http_request *req, const struct bd_server *srv)
{
    const struct bd_config *cfg = srv->cfg;
    const char *key;
    bool is_ok = false;

    if (cfg->api_keys_count == 0)
        return true;
    key = bd_http_header_get(req, "X-API-Key");
    if (key == NULL) {
        const char *auth = bd_http_header_get(req, "Authorization");
        if (auth && strncasecmp(auth, "Bearer ", 7) == 0)
            key = auth + 7;
    }
    /* Every key is compared (no early exit), each in constant time. */
    for (unsigned i = 0; key && i < cfg->api_keys_count; i++)
        is_ok |= api_key_equal(key, strlen(key), cfg->api_keys[i]);
    return is_ok;
}

int bd__api_check_auth(struct bd_http_request *req, struct bd_server *srv)
{
    if (bd__api_is_key_valid(req, srv))
        return 1;
    bd_http_respond_error_ex(req, bd_err_http_status(BD_EUNAUTH), "WWW-Authenticate: Bearer\r\n",
                             bd_err_api_code(BD_EUNAUTH), bd_strerror(BD_EUNAUTH), NULL);
    return 0;
}

int bd__api_is_job_id_valid(const char *id)
{
    size_t n;

    if (id == NULL)
        return 0;
    for (n = 0; id[n] != '\0'; n++) {
        char c = id[n];
        bool is_ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                     (c >= '0' && c <= '9') || c == '_' || c == '-';
        if (!is_ok || n >= BD__API_JOB_ID_MAX)
            return 0;
    }
    return n > 0;
}

void bd__api_set(json_t *o, const char *key, json_t *v, bool *failed)
{
    if (json_object_set_new(o, key, v) < 0)
        *failed = true;
}

bool bd__api_is_terminal(enum bd_job_state s)
{
    return s == BD_JOB_COMPLETED || s == BD_JOB_FAILED || s == BD_JOB_CANCELLED;
}

double bd__api_round1(double x)
{
    return round(x * 10.0) / 10.0;
}

json_t *bd__api_time_json(long long unix_ms)
{
    char buf[40];

    if (bd_time_rfc3339(unix_ms, buf, sizeof(buf)) == 0)
        return json_null();
    return json_string(buf);
}

void bd__api_fail_store(struct bd_http_request *req, const char *job_id, int err,
                        const char *pg_message)
{
    if (err == BD_ENOTFOUND) {
        bd_http_respond_err(req, BD_ENOTFOUND, "no such job", NULL);
        return;
    }
    bd_log(BD_LOG_WARN, "api", "job=%s route=%s event=store_failed err=%s pg=\"%s\"",
           job_id ? job_id : "-", req->route ? req->route : "-", bd_err_name(err),
           pg_message ? pg_message : "");
    if (err == BD_EINTERNAL || err == BD_ENOMEM)
        bd_http_respond_err(req, err, NULL, NULL);
    else
        bd_http_respond_err(req, BD_EPG, NULL, NULL);
}

const char *bd__api_job_id(struct bd_http_request *req)
{
    const char *id = req->params_count > 0 ? req->params[0] : NULL;

    if (!bd__api_is_job_id_valid(id)) {
        bd_http_respond_err(req, BD_EINVAL, "job id must match ^[A-Za-z0-9_-]{1,128}$",
                            "job_id");
        return NULL;
    }
    return id;
}

/* Decimal digits only, within [min, max]. */
static bool api_parse_ll(const char *s, long long min, long long max, long long *out)
{
    long long v = 0;
    size_t n = 0;

    if (s == NULL || *s == '\0')
        return false;
    for (; s[n] != '\0'; n++) {
        if (s[n] < '0' || s[n] > '9' || n >= 18)
            return false;
        v = v * 10 + (s[n] - '0');
    }
    if (v < min || v > max)
        return false;
    *out = v;
    return true;
}

bool bd__api_get_limit(struct bd_http_request *req, unsigned def, unsigned *out)
{
    const char *s = bd_http_query_get(req, "limit");
    long long v;

    if (s == NULL) {
        *out = def;
        return true;
    }
    if (!api_parse_ll(s, 1, BD__API_PAGE_MAX, &v)) {
        bd_http_respond_err(req, BD_EINVAL, "limit must be an integer from 1 to 1000", "limit");
        return false;
    }
    *out = (unsigned)v;
    return true;
}

bool bd__api_get_cursor(struct bd_http_request *req, char tag, long long max, bool *has,
                        long long *out)
{
    const char *s = bd_http_query_get(req, "cursor");

    *has = false;
    if (s == NULL || *s == '\0')
        return true;
    if (s[0] != tag || !api_parse_ll(s + 1, 0, max, out)) {
        bd_http_respond_err(req, BD_EINVAL, "cursor is not one this endpoint returned",
                            "cursor");
        return false;
    }
    *has = true;
    return true;
}

json_t *bd__api_cursor_json(char tag, long long v)
{
    char buf[32];

    snprintf(buf, sizeof(buf), "%c%lld", tag, v);
    return json_string(buf);
}

/* A request a web page on another site can make a browser send without asking the server
 * first (a "simple" cross-origin request): a POST with no Content-Type or one of the three
 * form types, and no header of ours. Such a POST could retry or cancel jobs on a batchd a
 * browser can reach; with a JSON type or a key header the browser has to ask first (CORS
 * preflight), which batchd never allows. */
bool bd__api_is_simple_post(const struct bd_http_request *req)
{
    if (strcmp(req->method, "POST") != 0 || bd_http_header_get(req, "X-API-Key") ||
        bd_http_header_get(req, "Authorization"))
        return false;
    const char *ct = bd_http_header_get(req, "Content-Type");
    return ct == NULL || strncasecmp(ct, "text/plain", 10) == 0 ||
           strncasecmp(ct, "application/x-www-form-urlencoded", 33) == 0 ||
           strncasecmp(ct, "multipart/form-data", 19) == 0;
}

/* http.allowed_hosts: with a list set, a request must name one of its hosts in Host (port
 * ignored, case-insensitive). A web page whose own name an attacker points at 127.0.0.1
 * (DNS rebinding) sends its own name, so batchd never answers it. /healthz and /readyz
 * answer any Host: probes use the pod's or machine's address. */
static bool api_is_host_allowed(const struct bd_http_request *req, const char *list)
{
    const char *host = bd_http_header_get(req, "Host");
    size_t len;

    if (list[0] == '\0')
        return true;
    if (host == NULL)
        return false;
    if (host[0] == '[') {                          /* [v6]:port */
        const char *end = strchr(host, ']');
        len = end ? (size_t)(end - host) + 1 : strlen(host);
    } else {
        const char *colon = strchr(host, ':');
        len = colon ? (size_t)(colon - host) : strlen(host);
    }
    for (const char *p = list; *p != '\0';) {
        size_t n = strcspn(p, ",");
        if (n == len && strncasecmp(p, host, n) == 0)
            return true;
        p += n + (p[n] == ',');
    }
    return false;
}

void bd_api_on_headers(struct bd_http_request *req, void *arg)
{
    struct bd_server *srv = arg;
    size_t n = strlen(BD_API_PREFIX);
    bool is_api = strncmp(req->path, BD_API_PREFIX, n) == 0 &&
                  (req->path[n] == '/' || req->path[n] == '\0');

    if (!api_is_host_allowed(req, srv->cfg->http_allowed_hosts) &&
        strcmp(req->path, "/healthz") != 0 && strcmp(req->path, "/readyz") != 0) {
        bd_http_respond_error(req, 421, "host_not_allowed",
                              "this server does not answer for the host named in the Host "
                              "header (http.allowed_hosts)", NULL);
        return;
    }
    if (bd__v1_is_path(req->path) && !bd__v1_admit(req, srv))
        return;                                     /* 401 or 415 in OpenAI's shape */
    if (is_api && srv->cfg->api_keys_count > 0 && !bd__api_check_auth(req, srv))
        return;                                     /* 401: the body is never read */
    /* The submit checks its own Content-Type (JSON or JSON Lines only). */
    if (is_api && strcmp(req->path + n, "/jobs") != 0 && bd__api_is_simple_post(req)) {
        bd_http_respond_err(req, BD_EMEDIATYPE, "a POST needs Content-Type: application/json "
                            "(or an X-API-Key / Authorization header): a form or a page on "
                            "another site cannot send one", "Content-Type");
        return;
    }
    bd_router_dispatch_headers(req, srv->router);
}
