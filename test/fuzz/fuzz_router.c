/* fuzz_router.c -- fuzz target for request-path handling: the router (src/router.c),
 * percent-decoding (bd_url_decode in src/url.c), the job-id check
 * (bd__api_is_job_id_valid) and the JSON text helpers the API uses.
 *
 * The submit body's validation and its bulk_insert fast path (src/api_submit_parse.c) have
 * their own target, fuzz_submit; fuzz_json_scan covers the scanner the fast path is built
 * on. This target covers what the request goes through before it.
 *
 * Input: byte 0 picks the method (low 3 bits) and allow-buffer size (bit 3); the rest, up
 * to the first NUL, is a path. It is
 *   1. matched against batchd's real route table (bd_api_register on a router; handlers
 *      never run) with req == NULL, so parameters are malloc'ed and ASan sees each one;
 *      every parameter goes through bd__api_is_job_id_valid, checked against the rule;
 *   2. percent-decoded with and without '+' as space and with tight output buffers;
 *   3. used as a route pattern on a fresh router: if bd_router_add accepts it, the path made
 *      by putting "v<i>" in each {param} must match it with those parameters, and adding
 *      it again must conflict;
 *   4. parsed as JSON (json_loadb, any value) and, when valid, dumped and parsed again to an
 *      equal value; written with bd_buf_json_string, which must read back unchanged when the
 *      text is valid UTF-8.
 * No loop, no sockets.  SPDX-License-Identifier: MIT
 */
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batchd/api.h"
#include "batchd/buf.h"
#include "batchd/error.h"
#include "batchd/http_server.h"
#include "batchd/log.h"
#include "batchd/router.h"
#include "batchd/server.h"
#include "batchd/url.h"

#define FUZZ_NAME "fuzz_router"
#include "fuzz_check.h"

static const char *const methods[8] = {
    "GET", "HEAD", "POST", "DELETE", "PUT", "OPTIONS", "", "A-METHOD-LONGER-THAN-15",
};

static void on_never(struct bd_http_request *req, void *arg)
{
    (void)req;
    (void)arg;
    abort();                                       /* matching never calls a handler */
}

/* ^[A-Za-z0-9_-]{1,128}$, written independently of api_jobs_read.c. */
static bool job_id_rule(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > BD__API_JOB_ID_MAX)
        return false;
    return strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-") == n;
}

static void fuzz_api_routes(const char *method, const char *path, size_t allowlen)
{
    /* batchd's own table; registering only stores srv, so a zeroed one is enough. */
    static struct bd_server srv;
    static struct bd_router *api;
    const char *params[BD_HTTP_MAX_PARAMS] = { NULL };
    const char *pattern = NULL;
    bd_http_request_cb handler = NULL;
    void *arg = NULL;
    unsigned count = 99;
    char *allow = malloc(allowlen);
    int rc;

    if (api == NULL) {
        api = bd_router_new();
        FUZZ_CHECK(api != NULL && bd_api_register(api, &srv) == BD_OK, "route table");
    }
    if (allow == NULL)
        return;
    rc = bd_router_match(api, NULL, method, path, &pattern, &handler, &arg, params, &count,
                         allow, allowlen);
    FUZZ_CHECK(memchr(allow, '\0', allowlen) != NULL, "allow not NUL-terminated");
    switch (rc) {
    case BD_OK:
        FUZZ_CHECK(pattern != NULL && handler != NULL && arg == &srv, "match without route");
        FUZZ_CHECK(count <= BD_HTTP_MAX_PARAMS, "count %u", count);
        for (unsigned i = 0; i < count; i++) {
            FUZZ_CHECK(params[i] != NULL && params[i][0] != '\0', "empty param %u", i);
            FUZZ_CHECK(!bd__api_is_job_id_valid(params[i]) == !job_id_rule(params[i]),
                       "job id \"%s\": %d", params[i], bd__api_is_job_id_valid(params[i]));
            free((char *)params[i]);
        }
        break;
    case BD_EMETHOD:
        FUZZ_CHECK(count == 0, "params on 405");
        FUZZ_CHECK(allowlen < 8 || allow[0] != '\0', "405 with an empty Allow");
        break;
    case BD_ENOTFOUND:
    case BD_EINVAL:
        FUZZ_CHECK(count == 0, "params on rc %d", rc);
        break;
    default:
        FUZZ_CHECK(rc == BD_ENOMEM, "rc %d", rc);
    }
    free(allow);
}

static void fuzz_url_decode(const char *in, size_t len)
{
    for (int plus = 0; plus <= 1; plus++) {
        char *out = malloc(len + 1);
        long n, m;

        if (out == NULL)
            return;
        n = bd_url_decode(in, len, out, len + 1, plus);
        FUZZ_CHECK(n >= -1 && n <= (long)len, "n %ld for len %zu", n, len);
        if (n >= 0) {
            FUZZ_CHECK(out[n] == '\0' && strlen(out) == (size_t)n, "decoded length %ld", n);
            /* Exactly n + 1 bytes are enough; n are not. */
            m = bd_url_decode(in, len, out, (size_t)n + 1, plus);
            FUZZ_CHECK(m == n, "outlen n+1: %ld, want %ld", m, n);
            m = bd_url_decode(in, len, out, (size_t)n, plus);
            FUZZ_CHECK(m == -1, "outlen n: %ld, want -1", m);
            if (!plus)
                FUZZ_CHECK(memchr(in, '%', len) != NULL || (n == (long)len &&
                                                             memcmp(in, out, len) == 0),
                           "no escapes, yet the text changed");
        }
        free(out);
    }
    FUZZ_CHECK(bd_url_decode(in, len, NULL, 0, 0) == -1, "outlen 0");
}

/* "/a/{x}/b" -> "/a/v0/b", the values each param must come back as. */
static char *concrete_path(const char *pattern, unsigned *nparams)
{
    char *out = malloc(strlen(pattern) * 2 + 8);
    size_t o = 0;

    *nparams = 0;
    if (out == NULL)
        return NULL;
    for (const char *p = pattern; *p != '\0';) {
        if (*p == '{' && (p == pattern || p[-1] == '/')) {
            const char *close = strchr(p, '}');
            o += (size_t)sprintf(out + o, "v%u", (*nparams)++);
            p = close + 1;
        } else {
            out[o++] = *p++;
        }
    }
    out[o] = '\0';
    return out;
}

static void fuzz_pattern(const char *method, const char *pattern)
{
    struct bd_router *r = bd_router_new();
    const char *params[BD_HTTP_MAX_PARAMS] = { NULL };
    const char *got = NULL, *m = NULL, *pat = NULL;
    bd_http_request_cb handler = NULL;
    void *arg = NULL;
    unsigned count = 0, nparams;
    char allow[64];
    char *path;
    int tag, rc;

    if (r == NULL)
        return;
    rc = bd_router_add(r, method, pattern, on_never, &tag);
    FUZZ_CHECK(rc == BD_OK || rc == BD_EINVAL || rc == BD_ENOMEM, "add rc %d", rc);
    if (rc != BD_OK) {
        FUZZ_CHECK(bd_router_get_route(r, 0, &m, &pat) == 0, "failed add left a route");
        bd_router_free(r);
        return;
    }
    FUZZ_CHECK(bd_router_get_route(r, 0, &m, &pat) == 1 && strcmp(m, method) == 0 &&
                   strcmp(pat, pattern) == 0, "route 0 is not what was added");
    FUZZ_CHECK(bd_router_add(r, method, pattern, on_never, &tag) == BD_ECONFLICT,
               "same route twice");
    if ((path = concrete_path(pattern, &nparams)) != NULL) {
        FUZZ_CHECK(nparams <= BD_HTTP_MAX_PARAMS, "%u params accepted", nparams);
        rc = bd_router_match(r, NULL, method, path, &got, &handler, &arg, params, &count,
                             allow, sizeof(allow));
        FUZZ_CHECK(rc == BD_OK, "pattern \"%s\" does not match \"%s\": rc %d", pattern, path,
                   rc);
        FUZZ_CHECK(strcmp(got, pattern) == 0 && arg == &tag, "matched another route");
        FUZZ_CHECK(count == nparams, "%u params, want %u", count, nparams);
        for (unsigned i = 0; i < count; i++) {
            char want[16];
            snprintf(want, sizeof(want), "v%u", i);
            FUZZ_CHECK(strcmp(params[i], want) == 0, "param %u = \"%s\"", i, params[i]);
            free((char *)params[i]);
        }
        free(path);
    }
    bd_router_free(r);
}

static void fuzz_json(const char *text, size_t len)
{
    json_error_t jerr;
    json_t *v = json_loadb(text, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    struct bd_buf b;

    if (v != NULL) {
        char *dumped = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
        if (dumped != NULL) {
            json_t *again = json_loads(dumped, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
            FUZZ_CHECK(again != NULL && json_equal(v, again), "dump did not read back: %s",
                       dumped);
            json_decref(again);
            free(dumped);
        }
        json_decref(v);
    }

    bd_buf_init(&b);
    bd_buf_json_string(&b, text, len);
    if (!b.is_failed) {
        json_t *s = json_stringn(text, len);       /* NULL when text is not UTF-8 */
        if (s != NULL) {
            json_t *back = json_loadb(b.data, b.len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
            FUZZ_CHECK(back != NULL && json_equal(s, back),
                       "bd_buf_json_string did not read back (%s): %.200s", jerr.text, b.data);
            json_decref(back);
            json_decref(s);
        }
    }
    bd_buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *method;
    size_t allowlen;
    char *path;

    if (size == 0)
        return 0;
    bd_log_set_level(BD_LOG_OFF);
    method = methods[data[0] & 7];
    allowlen = (data[0] & 8) ? 5 : 128;           /* 128: what bd_router_dispatch passes */
    if ((path = strndup((const char *)data + 1, size - 1)) == NULL)
        return 0;

    if (method[0] != '\0')
        fuzz_api_routes(method, path, allowlen);
    fuzz_url_decode((const char *)data + 1, size - 1);
    fuzz_pattern(method, path);
    fuzz_json((const char *)data + 1, size - 1);
    free(path);
    return 0;
}
