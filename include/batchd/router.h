/* router.h -- method + path pattern -> handler, with {param} segments.
 *
 * Patterns are literal segments and "{name}" segments ("/api/v1/batch/jobs/{id}/status").
 * A trailing slash is part of the path: "/a/" matches only a route "/a/", never "/a".
 * Parameters are percent-decoded per segment, so "%2F" never splits a path. The table is
 * built before uv_run and constant after. Knows nothing of jobs.
 */
#ifndef BATCHD_ROUTER_H
#define BATCHD_ROUTER_H

#include "batchd/http_server.h"

struct bd_router;

/* New empty router. NULL on ENOMEM. Free with bd_router_free. */
struct bd_router *bd_router_new(void);
void bd_router_free(struct bd_router *r);

/* Add a route. pattern is copied. Returns BD_OK, BD_EINVAL for a malformed pattern or more
 * than BD_HTTP_MAX_PARAMS parameters, BD_ECONFLICT if method+pattern already exists. */
int bd_router_add(struct bd_router *r, const char *method, const char *pattern,
                  bd_http_request_cb handler, void *arg);

/* Add a streaming route: when a matching request's headers are complete (before its body is
 * read) on_headers(req, arg) runs with req->route and req->params set; it may call
 * bd_http_body_stream() and then answers req itself (on_request is not called), or leave the
 * body buffered, and then on_request(req, arg) runs at message-complete as for any route
 * (see bd_http_options.on_headers). Needs bd_router_dispatch_headers as the server's
 * on_headers. Returns as bd_router_add (BD_EINVAL also when on_headers is NULL). */
int bd_router_add_stream(struct bd_router *r, const char *method, const char *pattern,
                         bd_http_request_cb on_headers, bd_http_request_cb on_request, void *arg);

/* Match method+path (raw, percent-encoded, no query). On BD_OK *pattern, *handler, *arg are
 * set and params[0..*params_count) hold decoded parameters allocated from req's arena
 * (req may be NULL in tests: then params are malloc'ed and the caller frees each).
 * Returns BD_ENOTFOUND when no pattern matches the path, BD_EMETHOD when patterns match but
 * not for this method (allow then holds "GET, DELETE"), BD_EINVAL for a bad escape. */
int bd_router_match(const struct bd_router *r, struct bd_http_request *req, const char *method,
                    const char *path, const char **pattern, bd_http_request_cb *handler,
                    void **arg, const char **params, unsigned *params_count, char *allow,
                    size_t allowlen);

/* A bd_http_request_cb (arg = the router): matches req, fills req->route/params and calls
 * the handler; answers 404, 405 (with Allow) or 400 itself. HEAD is matched as GET. */
void bd_router_dispatch(struct bd_http_request *req, void *router);

/* A bd_http_request_cb for bd_http_options.on_headers (arg = the router): when req matches a
 * streaming route, fills req->route/params and calls its on_headers; otherwise does nothing
 * (bd_router_dispatch answers at message-complete, 404 and 405 included). */
void bd_router_dispatch_headers(struct bd_http_request *req, void *router);

/* Routes in insertion order, for the OpenAPI coverage test. Returns the count; when
 * i < count, *method and *pattern are set (borrowed). */
unsigned bd_router_get_route(const struct bd_router *r, unsigned i, const char **method,
                             const char **pattern);

#endif
