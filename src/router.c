/* router.c -- method + path pattern -> handler, with {param} segments.
 *
 * Owns the route table: patterns are copied by bd_router_add before uv_run and the table is
 * constant after. Loop thread only; never blocks. Matching allocates only the decoded copy of
 * the path, in the request's arena. Knows nothing of jobs.  SPDX-License-Identifier: MIT
 *
 * Matching rules. A path is split on '/' and each segment is percent-decoded on its own, so
 * "%2F" stays inside a segment (and a parameter). Literal segments compare against the decoded
 * segment; parameters match any non-empty segment. A trailing slash is significant: "/a/" has
 * an empty last segment, so it does not match "/a" and gets 404 (no redirect), unless a
 * pattern "/a/" is registered: a pattern may end with an empty segment (and the root
 * pattern is "/"), never have one in the middle. When several patterns match, the
 * one with a literal at the first position where they differ wins ("/jobs/stats" beats
 * "/jobs/{id}"), whatever the insertion order. HEAD is served by a GET route unless a HEAD
 * route exists for the path.
 */
#include "batchd/router.h"
#include "batchd/error.h"
#include "batchd/url.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ROUTER_MAX_SEGS    16
#define ROUTER_MAX_METHOD  16

struct route_seg {
    const char *text;                  /* literal text or parameter name, in route->split */
    size_t len;
    bool is_param;
};

struct route {
    char method[ROUTER_MAX_METHOD];
    char *pattern;
    char *split;                       /* copy of pattern cut into segments */
    struct route_seg segs[ROUTER_MAX_SEGS];
    unsigned nsegs;
    bd_http_request_cb handler;
    bd_http_request_cb on_headers;     /* streaming routes only */
    void *arg;
};

struct bd_router {
    struct route *routes;
    unsigned count;
    unsigned cap;
    unsigned stream_count;             /* routes with on_headers */
    unsigned max_segs;                 /* no path with more segments can match */
};

struct bd_router *bd_router_new(void)
{
    return calloc(1, sizeof(struct bd_router));
}

void bd_router_free(struct bd_router *r)
{
    if (r == NULL)
        return;
    for (unsigned i = 0; i < r->count; i++) {
        free(r->routes[i].pattern);
        free(r->routes[i].split);
    }
    free(r->routes);
    free(r);
}

static bool is_name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_';
}

/* Split rt->pattern into rt->segs. Returns BD_OK or BD_EINVAL. */
static int route_parse(struct route *rt)
{
    char *p;
    unsigned nparams = 0;

    if (rt->pattern[0] != '/')
        return BD_EINVAL;
    if (strcmp(rt->pattern, "/") == 0) {           /* the root: one empty literal segment */
        rt->segs[0] = (struct route_seg){ "", 0, false };
        rt->nsegs = 1;
        return BD_OK;
    }
    p = rt->split + 1;
    for (;;) {
        char *slash = strchr(p, '/');
        size_t len = slash ? (size_t)(slash - p) : strlen(p);
        struct route_seg *seg;

        /* An empty segment only at the end: "/a/" is a route of its own (not "/a"). */
        if ((len == 0 && slash != NULL) || rt->nsegs == ROUTER_MAX_SEGS)
            return BD_EINVAL;
        seg = &rt->segs[rt->nsegs++];
        if (slash != NULL)
            *slash = '\0';
        if (p[0] == '{') {
            if (len < 3 || p[len - 1] != '}' || ++nparams > BD_HTTP_MAX_PARAMS)
                return BD_EINVAL;
            for (size_t i = 1; i < len - 1; i++) {
                if (!is_name_char(p[i]))
                    return BD_EINVAL;
            }
            *seg = (struct route_seg){ p + 1, len - 2, true };
        } else {
            if (strpbrk(p, "{}%?#") != NULL)       /* literals match decoded text: no escapes */
                return BD_EINVAL;
            *seg = (struct route_seg){ p, len, false };
        }
        if (slash == NULL)
            return BD_OK;
        p = slash + 1;
    }
}

/* Same method and the same shape: they would match exactly the same requests. */
static bool route_conflicts(const struct route *a, const struct route *b)
{
    if (strcmp(a->method, b->method) != 0 || a->nsegs != b->nsegs)
        return false;
    for (unsigned i = 0; i < a->nsegs; i++) {
        if (a->segs[i].is_param != b->segs[i].is_param)
            return false;
        if (!a->segs[i].is_param &&
            (a->segs[i].len != b->segs[i].len ||
             memcmp(a->segs[i].text, b->segs[i].text, a->segs[i].len) != 0))
            return false;
    }
    return true;
}

static int router_add(struct bd_router *r, const char *method, const char *pattern,
                      bd_http_request_cb on_headers, bd_http_request_cb handler, void *arg)
{
    struct route rt = { .handler = handler, .on_headers = on_headers, .arg = arg };
    int err;

    if (method == NULL || pattern == NULL || handler == NULL || method[0] == '\0' ||
        strlen(method) >= sizeof(rt.method))
        return BD_EINVAL;
    strcpy(rt.method, method);
    rt.pattern = strdup(pattern);
    rt.split = strdup(pattern);
    if (rt.pattern == NULL || rt.split == NULL) {
        err = BD_ENOMEM;
        goto fail;
    }
    if ((err = route_parse(&rt)) < 0)
        goto fail;
    for (unsigned i = 0; i < r->count; i++) {
        if (route_conflicts(&r->routes[i], &rt)) {
            err = BD_ECONFLICT;
            goto fail;
        }
    }
    if (r->count == r->cap) {
        unsigned cap = r->cap ? r->cap * 2 : 16;
        struct route *routes = realloc(r->routes, cap * sizeof(*routes));

        if (routes == NULL) {
            err = BD_ENOMEM;
            goto fail;
        }
        r->routes = routes;
        r->cap = cap;
    }
    r->routes[r->count++] = rt;
    if (rt.nsegs > r->max_segs)
        r->max_segs = rt.nsegs;
    if (on_headers != NULL)
        r->stream_count++;
    return BD_OK;

fail:
    free(rt.pattern);
    free(rt.split);
    return err;
}

int bd_router_add(struct bd_router *r, const char *method, const char *pattern,
                  bd_http_request_cb handler, void *arg)
{
    return router_add(r, method, pattern, NULL, handler, arg);
}

int bd_router_add_stream(struct bd_router *r, const char *method, const char *pattern,
                         bd_http_request_cb on_headers, bd_http_request_cb on_request, void *arg)
{
    if (on_headers == NULL)
        return BD_EINVAL;
    return router_add(r, method, pattern, on_headers, on_request, arg);
}

static bool route_matches_path(const struct route *rt, char *const *segs, const size_t *lens,
                               unsigned nsegs)
{
    if (rt->nsegs != nsegs)
        return false;
    for (unsigned i = 0; i < nsegs; i++) {
        const struct route_seg *s = &rt->segs[i];

        if (s->is_param ? lens[i] == 0
                        : lens[i] != s->len || memcmp(segs[i], s->text, s->len) != 0)
            return false;
    }
    return true;
}

/* a beats b: a literal where they first differ in kind. */
static bool route_more_specific(const struct route *a, const struct route *b)
{
    for (unsigned i = 0; i < a->nsegs; i++) {
        if (a->segs[i].is_param != b->segs[i].is_param)
            return !a->segs[i].is_param;
    }
    return false;
}

/* Append method to allow ("GET, DELETE") unless present; whole names only. */
static void allow_add(char *allow, size_t allowlen, const char *method)
{
    size_t used, mlen = strlen(method);
    const char *p = allow;

    if (allow == NULL || allowlen == 0)
        return;
    while ((p = strstr(p, method)) != NULL) {
        if ((p == allow || p[-1] == ' ') && (p[mlen] == ',' || p[mlen] == '\0'))
            return;
        p += mlen;
    }
    used = strlen(allow);
    if (used + (used ? 2 : 0) + mlen + 1 > allowlen)
        return;                                    /* no room: list what fits */
    snprintf(allow + used, allowlen - used, "%s%s", used ? ", " : "", method);
}

/* bd_router_match(), giving the route itself. */
static int router_find(const struct bd_router *r, struct bd_http_request *req, const char *method,
                       const char *path, const struct route **found, const char **params,
                       unsigned *params_count, char *allow, size_t allowlen)
{
    char *segs[ROUTER_MAX_SEGS];
    size_t lens[ROUTER_MAX_SEGS];
    unsigned nsegs = 1;
    size_t plen = strlen(path);
    const struct route *best = NULL;
    bool is_best_exact = false, is_path_known = false;
    bool is_head = strcmp(method, "HEAD") == 0;
    char *buf, *out;
    const char *p;
    int rc;

    *params_count = 0;
    if (allow != NULL && allowlen > 0)
        allow[0] = '\0';
    if (path[0] != '/')
        return BD_ENOTFOUND;
    for (p = path + 1; *p != '\0'; p++)
        nsegs += *p == '/';
    if (nsegs > r->max_segs)
        return BD_ENOTFOUND;

    /* Each decoded segment is no longer than its raw text, and the '/' before it pays for
     * its NUL, so plen + 1 bytes hold them all. */
    buf = req != NULL ? bd_http_alloc(req, plen + 1) : malloc(plen + 1);
    if (buf == NULL)
        return BD_ENOMEM;
    out = buf;
    p = path + 1;
    for (unsigned i = 0; i < nsegs; i++) {
        const char *slash = strchr(p, '/');
        size_t rawlen = slash ? (size_t)(slash - p) : strlen(p);
        long n = bd_url_decode(p, rawlen, out, rawlen + 1, 0);

        if (n < 0) {
            rc = BD_EINVAL;
            goto out;
        }
        segs[i] = out;
        lens[i] = (size_t)n;
        out += n + 1;
        p += rawlen + 1;
    }

    for (unsigned i = 0; i < r->count; i++) {
        const struct route *rt = &r->routes[i];
        bool is_exact;

        if (!route_matches_path(rt, segs, lens, nsegs))
            continue;
        is_path_known = true;
        allow_add(allow, allowlen, rt->method);
        is_exact = strcmp(rt->method, method) == 0;
        if (!is_exact && !(is_head && strcmp(rt->method, "GET") == 0))
            continue;
        if (best == NULL || (is_exact && !is_best_exact) ||
            (is_exact == is_best_exact && route_more_specific(rt, best))) {
            best = rt;
            is_best_exact = is_exact;
        }
    }
    if (best == NULL) {
        rc = is_path_known ? BD_EMETHOD : BD_ENOTFOUND;
        goto out;
    }

    for (unsigned i = 0; i < nsegs; i++) {
        if (!best->segs[i].is_param)
            continue;
        if (req != NULL) {
            params[*params_count] = segs[i];
        } else if ((params[*params_count] = strdup(segs[i])) == NULL) {
            while (*params_count > 0)
                free((char *)params[--*params_count]);
            rc = BD_ENOMEM;
            goto out;
        }
        ++*params_count;
    }
    *found = best;
    rc = BD_OK;

out:
    if (req == NULL)
        free(buf);
    return rc;
}

int bd_router_match(const struct bd_router *r, struct bd_http_request *req, const char *method,
                    const char *path, const char **pattern, bd_http_request_cb *handler,
                    void **arg, const char **params, unsigned *params_count, char *allow,
                    size_t allowlen)
{
    const struct route *rt = NULL;
    int rc = router_find(r, req, method, path, &rt, params, params_count, allow, allowlen);

    if (rc == BD_OK) {
        *pattern = rt->pattern;
        *handler = rt->handler;
        *arg = rt->arg;
    }
    return rc;
}

/* Only streaming routes act here; every other request (unknown paths included) is matched
 * again, and answered, at message-complete by bd_router_dispatch. */
void bd_router_dispatch_headers(struct bd_http_request *req, void *router)
{
    const struct bd_router *r = router;
    const struct route *rt = NULL;
    const char *params[BD_HTTP_MAX_PARAMS];
    unsigned count = 0;

    if (r->stream_count == 0 ||
        router_find(r, req, req->method, req->path, &rt, params, &count, NULL, 0) != BD_OK ||
        rt->on_headers == NULL)
        return;
    req->route = rt->pattern;
    memcpy(req->params, params, count * sizeof(params[0]));
    req->params_count = count;
    rt->on_headers(req, rt->arg);
}

void bd_router_dispatch(struct bd_http_request *req, void *router)
{
    const struct bd_router *r = router;
    bd_http_request_cb handler = NULL;
    const char *pattern = NULL;
    void *arg = NULL;
    char allow[128];
    char hdr[sizeof(allow) + 16];
    int rc;

    rc = bd_router_match(r, req, req->method, req->path, &pattern, &handler, &arg, req->params,
                         &req->params_count, allow, sizeof(allow));
    switch (rc) {
    case BD_OK:
        req->route = pattern;
        handler(req, arg);
        break;
    case BD_EMETHOD:
        snprintf(hdr, sizeof(hdr), "Allow: %s\r\n", allow);
        bd_http_respond_error_ex(req, 405, hdr, bd_err_api_code(BD_EMETHOD),
                                 "method not allowed for this path", NULL);
        break;
    case BD_ENOTFOUND:
        bd_http_respond_err(req, BD_ENOTFOUND, "no such route", NULL);
        break;
    case BD_EINVAL:
        bd_http_respond_error(req, 400, "bad_request", "malformed percent-escape in path", NULL);
        break;
    default:
        bd_http_respond_err(req, rc, NULL, NULL);
        break;
    }
}

unsigned bd_router_get_route(const struct bd_router *r, unsigned i, const char **method,
                             const char **pattern)
{
    if (i < r->count) {
        *method = r->routes[i].method;
        *pattern = r->routes[i].pattern;
    }
    return r->count;
}
