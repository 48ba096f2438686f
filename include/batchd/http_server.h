/* http_server.h -- HTTP/1.1 server on uv_tcp + llhttp.
 *
 * Keep-alive, pipelined requests answered in order, chunked request bodies, limits on
 * header size, URL length, body size and connections, idle and slow-request timeouts.
 * A complete request is handed to one callback; the handler answers it, now or later,
 * with exactly one bd_http_respond*() or one bd_http_stream_begin() ... bd_http_stream_end().
 * A request body can instead be handed over as it arrives, with flow control (see
 * on_headers and bd_http_body_stream below).
 * Knows nothing of jobs. Loop thread only. The process must ignore SIGPIPE (libuv writes
 * with write(2)).
 */
#ifndef BATCHD_HTTP_SERVER_H
#define BATCHD_HTTP_SERVER_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>


#define BD_HTTP_MAX_PARAMS 4

struct bd_http_server;

struct bd_http_header {
    const char *name;                 /* as received; compare case-insensitively */
    const char *value;
};

struct bd_http_request {
    /* Filled by the server; all memory lives in the request's arena and is valid until
     * the response is finished (bd_http_respond*() returned or bd_http_stream_end()). */
    const char *method;               /* "GET", "POST", ... */
    const char *target;               /* raw request target "/a/b?x=1" */
    const char *path;                 /* target without the query, still percent-encoded */
    const char *query;                /* raw query without '?', "" when none */
    const char *body;                 /* NUL-terminated copy of the de-chunked body ("" if none);
                                       * NULL for a streamed body (bd_http_body_stream) */
    size_t body_len;                  /* 0 for a streamed body */
    const struct bd_http_header *headers;
    unsigned headers_count;
    uint64_t start_ns;                /* uv_hrtime() when the first byte arrived */

    /* Filled by the router before the handler runs. */
    const char *route;                /* the matched pattern ("/api/v1/batch/jobs/{id}"), or NULL */
    const char *params[BD_HTTP_MAX_PARAMS]; /* decoded path parameters, in pattern order */
    unsigned params_count;

    void *user;                       /* free for the handler */
};

/* Called once per complete request. req is borrowed until the handler finishes it. */
typedef void (*bd_http_request_cb)(struct bd_http_request *req, void *arg);

/* Called after each response has been queued, for metrics/logging (route may be NULL). */
typedef void (*bd_http_response_cb)(const struct bd_http_request *req, int status,
                                    uint64_t duration_ns, void *arg);

/* Called when the client goes away before its response finished. The handler must still
 * finish the request (respond or stream_end); the server then just frees it. */
typedef void (*bd_http_abort_cb)(struct bd_http_request *req, void *arg);

/* Receives a streamed request body (bd_http_body_stream): each piece as llhttp hands it over
 * (chunked coding removed; data borrowed for the call), then once with data == NULL and
 * len == 0 when the body has ended, well or badly (bd_http_body_get_status says which).
 * Never called from inside bd_http_body_resume() nor after the abort callback. Returning < 0
 * means: deliver no more (the handler has answered or will answer; the connection then
 * closes after the answer, as for any answer given before the body ended). */
typedef int (*bd_http_body_cb)(struct bd_http_request *req, const char *data, size_t len,
                               void *arg);

/* Called when a stream's queued output has been written to the socket (backpressure). */
typedef void (*bd_http_drain_cb)(struct bd_http_request *req, void *arg);

/* Called once when bd_http_server_close() has finished (all connections closed). */
typedef void (*bd_http_closed_cb)(struct bd_http_server *srv, void *arg);

/* A zero limit or timeout below picks the default in brackets. */
struct bd_http_options {
    unsigned max_connections;         /* when full: make room (a slowloris, a silent one) or 503 [4096] */
    unsigned max_header_bytes;        /* sum of header names+values; over -> 431, close [16 KiB] */
    unsigned max_url_bytes;           /* over -> 414, close [8 KiB] */
    size_t max_body_bytes;            /* over (Content-Length or chunked) -> 413, close [16 MiB];
                                       * per request: bd_http_body_set_limit() */
    uint64_t idle_timeout_ms;         /* no request in progress [60 s] */
    uint64_t request_timeout_ms;      /* first byte to full request; over -> 408 [30 s] */
    uint64_t shutdown_timeout_ms;     /* bd_http_server_close: connections still open this
                                       * long after it are cut (a client that stops reading
                                       * a stream, an event stream) [5 s] */
    uint64_t write_timeout_ms;        /* output waiting this long without the client taking
                                       * a byte of it: the connection is cut, whatever its
                                       * handler is doing [60 s] */
    uint64_t min_body_rate;           /* bytes/s a streamed body whose route allows it more
                                       * than request_timeout_ms must average after its
                                       * first request_timeout_ms; slower -> 408 [1 KiB/s] */
    bd_http_request_cb on_request;    /* required */
    void *on_request_arg;
    bd_http_response_cb on_response;  /* optional */
    void *on_response_arg;
    /* Optional: called for each request when its headers are complete (method, target,
     * query and headers set), before any body byte is read, outside llhttp. It may call
     * bd_http_body_set_limit()/bd_http_body_set_timeout(), and then either
     * - bd_http_body_stream(): the request is the handler's from now on (it answers it once;
     *   on_request is never called for it), or
     * - answer at once with bd_http_respond*() (a body not yet read is then not read: the
     *   connection closes after the answer), or
     * - neither: the request goes on as without on_headers (body buffered up to its limit,
     *   on_request at message-complete, or the server's own 400/408/413).
     * bd_router_dispatch_headers is the one to use with bd_router_dispatch. */
    bd_http_request_cb on_headers;
    void *on_headers_arg;
};

/* Create a server on loop. Returns BD_OK and *out, or a negative error (nothing created). */
int bd_http_server_new(uv_loop_t *loop, const struct bd_http_options *opt,
                       struct bd_http_server **out);

/* Bind and listen on host:port (port 0 picks one; see bd_http_server_get_port).
 * Returns BD_OK or a libuv error (UV_EADDRINUSE, ...). */
int bd_http_server_listen(struct bd_http_server *srv, const char *host, int port);

/* The bound port, or -1 if not listening. */
int bd_http_server_get_port(const struct bd_http_server *srv);

/* Open connections right now. */
unsigned bd_http_server_get_connections(const struct bd_http_server *srv);

/* Stop accepting, close idle connections, let requests in progress finish (their
 * connections close after the response), then free srv and call cb once (async). A
 * connection still open after shutdown_timeout_ms is cut (its handler gets the abort
 * callback and finishes its request), so the close ends in bounded time whatever the
 * clients do. */
void bd_http_server_close(struct bd_http_server *srv, bd_http_closed_cb cb, void *arg);

/* ---- Per-request helpers --------------------------------------------------------- */

/* Allocate from the request's arena (freed with the request). NULL on ENOMEM. */
void *bd_http_alloc(struct bd_http_request *req, size_t size);
char *bd_http_strdup(struct bd_http_request *req, const char *s);

/* Header value (case-insensitive name) or NULL. Borrowed from req. */
const char *bd_http_header_get(const struct bd_http_request *req, const char *name);

/* Percent-decoded value of query parameter name ('+' is a space), or NULL when absent.
 * Arena memory. */
const char *bd_http_query_get(struct bd_http_request *req, const char *name);

/* Register the abort callback (see bd_http_abort_cb). */
void bd_http_set_abort_cb(struct bd_http_request *req, bd_http_abort_cb cb, void *arg);

/* ---- Streamed request bodies ------------------------------------------------------ *
 *
 * Contract of a streamed body (all of it is in bd_http_body_cb and on_headers above, too):
 * - Limits: the body may total bd_http_body_set_limit() bytes (default max_body_bytes), by
 *   Content-Length (checked before any byte is read) or as received. Over it, or on
 *   malformed chunked framing, or when the client is too slow, reading stops and on_body
 *   gets its final call (NULL, 0) with bd_http_body_get_status() < 0; the handler answers
 *   (bd_http_respond_err(req, status, ...) gives 413/400/408) and the connection closes
 *   after the answer.
 * - Time: the client must deliver the whole body within bd_http_body_set_timeout() ms
 *   (default request_timeout_ms), counted from the request's first byte; time the handler
 *   keeps the body paused is not counted (it is the server's). Paused time itself is bounded
 *   only by the handler, which must resume or answer.
 * - Answering before the body ended (from on_body or later) stops reading: the answer is
 *   sent with "Connection: close", the write side is shut, unread input is read and dropped
 *   for up to 1 s (so the client sees the answer rather than a reset), then the connection
 *   closes. After the final on_body call the connection stays alive as usual (keep-alive,
 *   pipelined requests behind it are served in order).
 * - A client that goes away: the abort callback runs once and on_body is not called again;
 *   the handler still finishes req. While paused the socket is not read, so a departure is
 *   noticed after resume.
 */

/* From on_headers only: deliver req's body to on_body(req, data, len, arg) as it arrives
 * instead of buffering it; req->body stays NULL. Returns BD_OK, or BD_EINVAL when called
 * outside on_headers (nothing changed). */
int bd_http_body_stream(struct bd_http_request *req, bd_http_body_cb on_body, void *arg);

/* Stop reading req's body from the socket until bd_http_body_resume(). Bytes already read
 * stay buffered and are delivered after the resume, in order. No-op once the body ended. */
void bd_http_body_pause(struct bd_http_request *req);

/* Read and deliver again; on_body is called later from the loop, never from inside this
 * call. No-op when not paused. */
void bd_http_body_resume(struct bd_http_request *req);

/* Total body bytes allowed for req (0: max_body_bytes). From on_headers, before the body;
 * applies to buffered and streamed bodies alike. */
void bd_http_body_set_limit(struct bd_http_request *req, uint64_t bytes);

/* Client time allowed for req, first byte to end of body, paused time excluded
 * (0: request_timeout_ms). From on_headers. */
void bd_http_body_set_timeout(struct bd_http_request *req, uint64_t ms);

/* For on_body's final call: BD_OK when the body arrived whole, else BD_ETOOLARGE (over the
 * limit), BD_ETIMEOUT (client too slow), BD_EINVAL (malformed framing) or BD_ENOMEM. */
int bd_http_body_get_status(const struct bd_http_request *req);

/* Streamed body bytes received so far (0 for a buffered body; use body_len). */
uint64_t bd_http_body_get_received(const struct bd_http_request *req);

/* Finish req with a complete response. extra_headers is NULL or "Name: value\r\n..." lines.
 * body is copied. Safe to call after the client went away (then it just frees req).
 * req must not be used afterwards. */
void bd_http_respond(struct bd_http_request *req, int status, const char *content_type,
                     const char *extra_headers, const char *body, size_t body_len);

/* Finish req with {"error":{"code":code,"message":message[,"field":field]}} and status.
 * field may be NULL. */
void bd_http_respond_error(struct bd_http_request *req, int status, const char *code,
                           const char *message, const char *field);

/* bd_http_respond_error() plus extra_headers (NULL or "Name: value\r\n..." lines), for the
 * errors that need one: 405 Allow, 429/503 Retry-After. */
void bd_http_respond_error_ex(struct bd_http_request *req, int status, const char *extra_headers,
                              const char *code, const char *message, const char *field);

/* Finish req with the JSON error for a bd error code (bd_err_http_status/bd_err_api_code);
 * message NULL means bd_strerror(err). */
void bd_http_respond_err(struct bd_http_request *req, int err, const char *message,
                         const char *field);

/* Start a streamed (chunked) response. Returns BD_OK, or a negative error when the client
 * is gone (the handler still ends the stream). */
int bd_http_stream_begin(struct bd_http_request *req, int status, const char *content_type,
                         const char *extra_headers);

/* Queue data (copied) as one chunk. Returns BD_OK, or UV_ECONNRESET/UV_EPIPE when the client
 * is gone. */
int bd_http_stream_write(struct bd_http_request *req, const char *data, size_t len);

/* Bytes queued for this stream but not yet written to the socket. */
size_t bd_http_stream_get_pending(const struct bd_http_request *req);

/* Call cb once the stream's pending output drops to zero (one-shot; re-arm each time). */
void bd_http_stream_set_drain_cb(struct bd_http_request *req, bd_http_drain_cb cb, void *arg);

/* Finish the stream (terminating chunk). req must not be used afterwards. */
void bd_http_stream_end(struct bd_http_request *req);

/* Reason phrase for status ("Not Found"). Never NULL. */
const char *bd_http_status_text(int status);

#endif
