/* http_server.c -- HTTP/1.1 on uv_tcp + llhttp: connections, requests, limits, timeouts.
 *
 * One of three files (http_internal.h says which holds what): the llhttp callbacks live
 * in http_parse.c, the response writers (bd_http_respond*, bd_http_stream_*) in
 * http_response.c.
 *
 * Owns the listening socket, every connection (struct http_conn: its uv_tcp_t, one uv_timer_t
 * for the idle/request/linger timeouts, the llhttp parser and a fixed input buffer) and every
 * request (struct http_req: its arena and any output buffered behind earlier responses).
 * Loop thread only; never blocks. Knows nothing of routes or jobs: each complete request goes
 * to opt.on_request (and, when set, each request's headers to opt.on_headers, which may take
 * the body as a stream: bd_http_body_*). Must not free a connection outside its last close callback, nor a request
 * that a handler still holds.  SPDX-License-Identifier: MIT
 */
#include "http_internal.h"
#include "batchd/error.h"
#include "batchd/log.h"

#include <assert.h>
#include <llhttp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>

/* How it fits together.
 *
 * A connection parses its input with llhttp. Header names, values and the URL are gathered
 * in a per-connection scratch buffer (a callback may see a token in pieces) and copied into
 * the request's arena when complete, so there is no malloc per header. on_message_complete
 * pauses the parser; the completed request is appended to the connection's queue and handed
 * to opt.on_request outside llhttp_execute(), so a handler may do anything, including answer
 * at once or close the server.
 *
 * Responses leave strictly in request order: only the queue's head writes to the socket;
 * a later request that is answered first keeps its output in its own list until it becomes
 * the head. A pipelined request is parsed only once the one before it is answered (one
 * request of a connection in a handler at a time). Reading stops while a request is in
 * its handler, HTTP_MAX_QUEUED requests wait, their bodies exceed max_body_bytes, or
 * HTTP_MAX_WRITE_QUEUE bytes are unwritten or held (a client that pipelines without
 * reading), and resumes from the server's idle handle, never from inside a handler's call.
 *
 * Every error the server produces itself (400, 408, 413, 414, 431, 503) is an ordinary
 * request answered with bd_http_respond_error(), queued behind earlier responses and marked
 * last: after it the connection shuts down its write side and lingers, reading and dropping
 * input until EOF or HTTP_LINGER_MS, so the client reads the error instead of a reset.
 *
 * Streamed bodies. With opt.on_headers set, llhttp pauses after each request's headers and
 * bd__http_conn_on_headers() runs the hook outside llhttp. The request is queued and handed to the
 * handler ("taken") before the hook runs, so the hook may answer at once; if the hook neither
 * answers nor calls bd_http_body_stream(), the request is untaken and goes on as usual. A
 * streamed request is then both conn->parsing and in the queue, holding a reference for
 * each. llhttp's on_body records each piece and pauses; conn_process_input() hands it to the
 * handler, still pointing into conn->in. bd_http_body_pause() stops reading and
 * conn_process_input() stops at the next piece, leaving the rest in conn->in, where it waits
 * for bd_http_body_resume() (which schedules the service idle handle: never a delivery from
 * inside the call). At message-complete the handler gets on_body(NULL, 0). An answer before
 * that, on_body < 0, or a failure of the body (limit, framing, timeout) "abandons" the body:
 * nothing more is parsed, the parsing reference is dropped, and the connection closes after
 * the answer (lingering, so the client reads it): the rest of a body of unknown size cannot
 * be skipped cheaply. The request timer excludes the time the handler kept the body paused.
 *
 * Expect: 100-continue is answered with "100 Continue" when no earlier response is pending
 * (and the declared body is within max_body_bytes); otherwise it is ignored and the client
 * sends the body after its own wait.
 *
 * Lifetimes. A request holds up to two references: the connection's (from on_message_begin
 * until it has been popped from the queue, or the connection is gone) and the handler's (from
 * dispatch until bd_http_respond*() or bd_http_stream_end()). A connection is freed in its
 * last close callback; requests a handler still holds are detached there (conn = NULL), their
 * abort callbacks run, and they are freed when the handler finishes them. The server is freed
 * once its listener, every connection and every request are gone.
 */

static void conn_process_input(struct http_conn *conn);
static void srv_maybe_finish_close(struct bd_http_server *srv);
static void srv_on_service(uv_idle_t *idle);
static void conn_on_timer(uv_timer_t *timer);

/* ---- Arena ------------------------------------------------------------------------ */

void *bd__http_arena_alloc(struct http_arena *a, size_t size)
{
    struct arena_chunk *c;
    size_t cap;

    if (size > SIZE_MAX - HTTP_ARENA_CHUNK)
        return NULL;
    size = (size + HTTP_ALIGN - 1) & ~(size_t)(HTTP_ALIGN - 1);
    if (size == 0)
        size = HTTP_ALIGN;
    if ((size_t)(a->end - a->pos) >= size) {
        void *p = a->pos;
        a->pos += size;
        return p;
    }
    /* A big block (a body) gets a chunk of its own, so the current chunk keeps its tail. */
    cap = size > HTTP_ARENA_CHUNK / 2 ? size : HTTP_ARENA_CHUNK;
    c = malloc(sizeof(*c) + cap);
    if (c == NULL)
        return NULL;
    c->next = a->chunks;
    a->chunks = c;
    if (cap == size)
        return c->data;
    a->pos = (char *)c->data + size;
    a->end = (char *)c->data + cap;
    return c->data;
}

static void arena_free(struct http_arena *a)
{
    struct arena_chunk *c = a->chunks;

    while (c != NULL) {
        struct arena_chunk *next = c->next;
        free(c);
        c = next;
    }
    a->chunks = NULL;
}

/* ---- Requests --------------------------------------------------------------------- */

struct http_req *bd__http_req_new(struct http_conn *conn)
{
    struct bd_http_server *srv = conn->srv;
    struct http_req *r = srv->free_reqs;

    if (r != NULL) {
        srv->free_reqs = r->next;
        srv->free_count--;
    } else if ((r = malloc(sizeof(*r))) == NULL) {
        return NULL;
    }
    memset(r, 0, offsetof(struct http_req, inline_mem));
    r->srv = srv;
    r->conn = conn;
    r->refs = 1;                                   /* the connection's */
    r->arena.pos = (char *)r->inline_mem;
    r->arena.end = r->arena.pos + sizeof(r->inline_mem);
    r->pub.method = "";
    r->pub.target = "";
    r->pub.path = "";
    r->pub.query = "";
    r->pub.body = "";
    r->pub.start_ns = uv_hrtime();
    r->is_keep_alive = true;
    srv->req_count++;
    return r;
}

static void req_free(struct http_req *r)
{
    struct bd_http_server *srv = r->srv;
    struct http_wbuf *w = r->out_head;

    while (w != NULL) {                            /* output that never reached the socket */
        struct http_wbuf *next = w->next;
        free(w);
        w = next;
    }
    arena_free(&r->arena);
    srv->req_count--;
    if (srv->free_count < HTTP_FREE_REQS && !srv->is_finishing) {
        r->next = srv->free_reqs;
        srv->free_reqs = r;
        srv->free_count++;
    } else {
        free(r);
    }
    srv_maybe_finish_close(srv);
}

void bd__http_req_unref(struct http_req *r)
{
    assert(r->refs > 0);
    if (--r->refs == 0)
        req_free(r);
}

/* ---- Connection state shared with http_response.c --------------------------------- */

uint64_t bd__http_req_body_limit(const struct http_req *r)
{
    return r->body_limit ? r->body_limit : r->srv->opt.max_body_bytes;
}

/* Bounds what one connection holds: requests, their bodies and unwritten output. And one
 * request of a connection in a handler at a time: the next pipelined request is parsed
 * once the last one is answered (answers leave in order anyway). Sixteen pipelined
 * requests each holding a PostgreSQL query let 200 clients put 3,200 queries on a pool of
 * four; now a connection costs the pool what a client that waits for its answers does. */
bool bd__http_conn_is_busy(const struct http_conn *conn)
{
    return conn->parsing == NULL && conn->tail != NULL && !conn->tail->is_finished;
}

/* Reading goes on while a request is in its handler (so a client that leaves is noticed
 * and the handler aborted), until the input buffer is full. */
bool bd__http_conn_must_pause(const struct http_conn *conn)
{
    return (conn->in_len >= HTTP_IN_BUF && bd__http_conn_is_busy(conn)) ||
           conn->queued >= HTTP_MAX_QUEUED ||
           conn->write_bytes + conn->held_bytes >= HTTP_MAX_WRITE_QUEUE ||
           conn->queued_body_bytes > conn->srv->opt.max_body_bytes;
}

void bd__http_conn_schedule_service(struct http_conn *conn)
{
    struct bd_http_server *srv = conn->srv;

    if (conn->is_service_pending || conn->is_closing)
        return;
    conn->is_service_pending = true;
    conn->service_next = srv->service;
    srv->service = conn;
    uv_idle_start(&srv->service_idle, srv_on_service);
}

void bd__http_conn_queue_push(struct http_conn *conn, struct http_req *r)
{
    r->next = NULL;
    if (conn->tail != NULL)
        conn->tail->next = r;
    else
        conn->head = r;
    conn->tail = r;
    conn->queued++;
    conn->queued_body_bytes += r->pub.body_len;
}

/* ---- Connections ------------------------------------------------------------------ */

static void conn_start_reading(struct http_conn *conn);

void bd__http_conn_stop_reading(struct http_conn *conn)
{
    if (conn->is_reading) {
        uv_read_stop((uv_stream_t *)&conn->tcp);
        conn->is_reading = false;
    }
}

static void conn_on_close(uv_handle_t *handle)
{
    struct http_conn *conn = handle->data;
    struct bd_http_server *srv = conn->srv;
    struct http_req *list, *r, *next;

    if (--conn->pending_closes > 0)
        return;
    if (conn->parsing != NULL)
        bd__http_req_unref(conn->parsing);
    if (conn->is_service_pending) {
        struct http_conn **pp = &srv->service;
        while (*pp != conn)
            pp = &(*pp)->service_next;
        *pp = conn->service_next;
    }
    if (conn->prev != NULL)
        conn->prev->next = conn->next;
    else
        srv->conns = conn->next;
    if (conn->next != NULL)
        conn->next->prev = conn->prev;
    srv->conn_count--;
    if (!conn->is_reject)
        srv->serving_count--;
    bd_log(BD_LOG_DEBUG, "http", "conn=%llu closed", conn->id);

    /* Detach what handlers still hold. The extra reference keeps every request alive while
     * abort callbacks run, whatever they finish. */
    list = conn->head;
    for (r = list; r != NULL; r = r->next) {
        r->conn = NULL;
        r->refs++;
    }
    for (r = list; r != NULL; r = r->next) {
        if (!r->is_finished && r->abort_cb != NULL) {
            bd_http_abort_cb cb = r->abort_cb;
            r->abort_cb = NULL;
            cb(&r->pub, r->abort_arg);
        }
    }
    for (r = list; r != NULL; r = next) {
        next = r->next;
        r->next = NULL;
        bd__http_req_unref(r);                              /* the extra one */
        bd__http_req_unref(r);                              /* the connection's */
    }
    free(conn->scratch);
    free(conn);
    srv_maybe_finish_close(srv);
}

void bd__http_conn_close_now(struct http_conn *conn)
{
    if (conn->is_closing)
        return;
    conn->is_closing = true;
    conn->is_input_done = true;
    conn->is_reading = false;
    uv_close((uv_handle_t *)&conn->tcp, conn_on_close);
    uv_close((uv_handle_t *)&conn->timer, conn_on_close);
}

static void conn_on_shutdown(uv_shutdown_t *req, int status)
{
    struct http_conn *conn = req->data;

    if (conn->is_closing)
        return;
    /* A connection refused for max_connections does not linger: its descriptor is wanted
     * back at once (a burst of refusals must not eat the stores' reserve). */
    if (status < 0 || conn->srv->is_closing || conn->is_reject) {
        bd__http_conn_close_now(conn);
        return;
    }
    conn->is_lingering = true;
    conn->in_off = conn->in_len = 0;
    conn_start_reading(conn);
    if (conn->is_closing)
        return;
    conn->timer_mode = CONN_TIMER_LINGER;
    uv_timer_start(&conn->timer, conn_on_timer, HTTP_LINGER_MS, 0);
}

/* Close after everything queued has been written: shut the write side, then linger. */
void bd__http_conn_close_graceful(struct http_conn *conn)
{
    if (conn->is_closing || conn->is_shutting)
        return;
    conn->is_shutting = true;
    conn->is_input_done = true;
    bd__http_conn_stop_reading(conn);
    conn->shutdown.data = conn;
    if (uv_shutdown(&conn->shutdown, (uv_stream_t *)&conn->tcp, conn_on_shutdown) < 0)
        bd__http_conn_close_now(conn);
    else
        bd__http_conn_update_timer(conn);
}

/* Milliseconds the client has left to deliver the request being parsed: the whole request
 * within its timeout (request_timeout_ms, or the route's: a streamed upload may take an
 * hour), and, whatever the route allows in total, some bytes within request_timeout_ms of
 * the last ones (nginx's client_body_timeout) and, for a long route, an average rate: a
 * body trickled a byte at a time cannot hold a connection and an upload slot for the
 * route's whole hour. Time the handler keeps the body paused counts for none of them. */
static uint64_t conn_request_time_left(const struct http_conn *conn)
{
    const struct bd_http_options *opt = &conn->srv->opt;
    const struct http_req *r = conn->parsing;
    uint64_t now = uv_hrtime();
    uint64_t limit = r->timeout_ms ? r->timeout_ms : opt->request_timeout_ms;
    uint64_t elapsed = (now - r->pub.start_ns - r->paused_ns) / 1000000;
    uint64_t since = conn->input_ns > now ? 0 : (now - conn->input_ns) / 1000000;
    uint64_t left = elapsed < limit ? limit - elapsed : 0;
    uint64_t idle_left = since < opt->request_timeout_ms ? opt->request_timeout_ms - since : 0;

    if (idle_left < left)
        left = idle_left;
    /* A streamed body (a route that allows more than request_timeout_ms) must also average
     * min_body_rate after its first request_timeout_ms: it is due by then plus one second per
     * min_body_rate bytes received (Apache's mod_reqtimeout MinRate). */
    if (r->is_body_stream && limit > opt->request_timeout_ms) {
        uint64_t due = opt->request_timeout_ms + r->body_received * 1000 / opt->min_body_rate;
        uint64_t rate_left = elapsed < due ? due - elapsed : 0;
        if (rate_left < left)
            left = rate_left;
    }
    return left;
}

void bd__http_conn_update_timer(struct http_conn *conn)
{
    const struct bd_http_options *opt = &conn->srv->opt;
    enum conn_timer mode = CONN_TIMER_NONE;
    uint64_t ms = 0;

    if (conn->is_closing || conn->is_lingering)
        return;
    if (conn->parsing != NULL && conn->parsing->is_body_paused) {
        mode = CONN_TIMER_NONE;                    /* the server's time, not the client's */
    } else if (conn->parsing != NULL && !conn->is_input_done && !conn->is_paused) {
        mode = CONN_TIMER_REQUEST;
        ms = conn_request_time_left(conn);
    } else if (conn->head == NULL) {
        mode = CONN_TIMER_IDLE;                    /* also bounds a shutdown's final writes */
        ms = opt->idle_timeout_ms;
    }
    if (mode == conn->timer_mode)
        return;
    conn->timer_mode = mode;
    if (mode == CONN_TIMER_NONE)
        uv_timer_stop(&conn->timer);
    else
        uv_timer_start(&conn->timer, conn_on_timer, ms, mode == CONN_TIMER_IDLE ? ms : 0);
}

/* A server-produced error for the request being parsed (or a fresh one): queue it behind
 * earlier responses, answer it, and parse nothing more. */

void bd__http_conn_fail(struct http_conn *conn, int err, const char *reason)
{
    struct http_req *r = conn->parsing;

    if (r != NULL && r->is_taken) {                /* the handler answers a streamed body */
        bd__http_conn_body_fail(conn, r, err);
        return;
    }
    conn->parsing = NULL;
    conn->is_input_done = true;
    bd__http_conn_stop_reading(conn);
    if (r == NULL && (r = bd__http_req_new(conn)) == NULL) {
        bd__http_conn_close_now(conn);
        return;
    }
    bd__http_conn_queue_push(conn, r);
    r->is_last = true;
    r->refs++;                                     /* the handler's, held by the server here */
    bd_log(BD_LOG_DEBUG, "http", "conn=%llu bad request: %s%s%s", conn->id, bd_err_name(err),
           reason ? ": " : "", reason ? reason : "");
    if (err == BD_EINVAL)
        bd_http_respond_error(&r->pub, 400, "bad_request",
                              reason ? reason : "malformed HTTP request", NULL);
    else
        bd_http_respond_err(&r->pub, err, NULL, NULL);
}

static void conn_on_timer(uv_timer_t *timer)
{
    struct http_conn *conn = timer->data;
    enum conn_timer mode = conn->timer_mode;
    uint64_t left;

    conn->timer_mode = CONN_TIMER_NONE;
    uv_timer_stop(timer);
    switch (mode) {
    case CONN_TIMER_IDLE:
        bd_log(BD_LOG_DEBUG, "http", "conn=%llu idle timeout", conn->id);
        bd__http_conn_close_now(conn);
        break;
    case CONN_TIMER_REQUEST:
        left = conn->parsing != NULL ? conn_request_time_left(conn) : 0;
        if (left > 0) {
            conn->timer_mode = CONN_TIMER_REQUEST;   /* bytes came meanwhile: wait on */
            uv_timer_start(timer, conn_on_timer, left, 0);
            break;
        }
        bd__http_conn_fail(conn, BD_ETIMEOUT, NULL);
        break;
    case CONN_TIMER_LINGER:
        bd__http_conn_close_now(conn);
        break;
    case CONN_TIMER_NONE:
        break;
    }
}

/* ---- Input ------------------------------------------------------------------------ */

/* Hand the request that llhttp just completed to the handler. */
static void conn_dispatch(struct http_conn *conn)
{
    struct bd_http_server *srv = conn->srv;
    struct http_req *r = conn->parsing;

    conn->parsing = NULL;
    bd__http_conn_stop_request_timer(conn);                 /* the next request gets its own clock */
    if (!r->is_taken)
        bd__http_conn_queue_push(conn, r);
    if (!r->is_keep_alive) {
        r->is_last = true;
        conn->is_input_done = true;
        bd__http_conn_stop_reading(conn);
    }
    if (r->is_taken) {                             /* the handler has it: end its body */
        bd__http_req_body_end(r);
        bd__http_req_unref(r);                     /* the parsing reference */
        return;
    }
    r->refs++;                                     /* the handler's */
    srv->opt.on_request(&r->pub, srv->opt.on_request_arg);
}

/* Reading is held: backpressure, or the handler paused the body being parsed. */
static bool conn_is_held(const struct http_conn *conn)
{
    return conn->is_paused || (conn->parsing != NULL && conn->parsing->is_body_paused);
}

static void conn_process_input(struct http_conn *conn)
{
    if (conn->is_processing)
        return;
    conn->is_processing = true;
    /* After a pause llhttp may still owe callbacks that need no input (message-complete right
     * after the headers or the last body piece), so it runs once more even on no bytes. */
    while ((conn->in_off < conn->in_len || conn->is_parser_pending) && !conn->is_closing &&
           !conn->is_input_done) {
        const char *data = conn->in + conn->in_off;
        llhttp_errno_t e;

        if (conn->parsing != NULL && conn->parsing->is_body_paused) {
            bd__http_conn_stop_reading(conn);               /* the rest waits in conn->in */
            break;
        }
        if (bd__http_conn_must_pause(conn)) {
            bd_log(BD_LOG_DEBUG, "http", "conn=%llu paused queued=%u body=%zu unwritten=%zu",
                   conn->id, conn->queued, conn->queued_body_bytes, conn->write_bytes);
            conn->is_paused = true;
            bd__http_conn_stop_reading(conn);
            break;
        }
        if (bd__http_conn_is_busy(conn)) {        /* parse the next request after this one */
            conn->is_parse_held = true;
            break;
        }
        conn->is_parser_pending = false;
        e = llhttp_execute(&conn->parser, data, conn->in_len - conn->in_off);
        if (conn->is_closing)
            break;
        if (e == HPE_OK) {
            conn->in_off = conn->in_len;
        } else if (e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) {
            conn->in_off += (size_t)(llhttp_get_error_pos(&conn->parser) - data);
            if (e == HPE_PAUSED) {
                llhttp_resume(&conn->parser);
                conn->is_parser_pending = true;
            } else {
                conn->is_input_done = true;        /* we speak no other protocol */
                bd__http_conn_stop_reading(conn);
            }
            if (conn->parsing == NULL || conn->is_input_done)
                continue;
            if (conn->parsing->is_headers_pending)
                bd__http_conn_on_headers(conn);
            else if (conn->body_at != NULL)
                bd__http_conn_deliver_body(conn, conn->parsing);
            else if (conn->parsing->is_complete)
                conn_dispatch(conn);
        } else {
            bd__http_conn_fail(conn, conn->parse_err ? conn->parse_err : BD_EINVAL,
                      conn->parse_err ? NULL : llhttp_get_error_reason(&conn->parser));
        }
    }
    if (conn->is_input_done || conn->in_off == conn->in_len) {
        conn->in_off = conn->in_len = 0;
    } else if (conn->in_off > 0) {
        memmove(conn->in, conn->in + conn->in_off, conn->in_len - conn->in_off);
        conn->in_len -= conn->in_off;
        conn->in_off = 0;
    }
    conn->is_processing = false;
    bd__http_conn_update_timer(conn);
}

/* Deferred work for one connection, from the server's idle handle. */
static void conn_service(struct http_conn *conn)
{
    for (;;) {
        struct http_req *r;
        bd_http_drain_cb cb;

        if (conn->is_closing)
            return;
        for (r = conn->head; r != NULL; r = r->next) {
            if (r->drain_cb != NULL && bd_http_stream_get_pending(&r->pub) == 0)
                break;
        }
        if (r == NULL)
            break;
        cb = r->drain_cb;
        r->drain_cb = NULL;
        cb(&r->pub, r->drain_arg);
    }
    bool is_resume = conn->is_body_resumed;

    conn->is_body_resumed = false;
    if (conn->is_parse_held && !bd__http_conn_is_busy(conn)) {
        conn->is_parse_held = false;
        is_resume = true;
    }
    if (conn->is_paused && !bd__http_conn_must_pause(conn)) {
        conn->is_paused = false;
        conn->input_ns = uv_hrtime();              /* the pause was ours, not the client's */
        is_resume = true;
    }
    if (is_resume && !conn->is_paused) {
        conn_process_input(conn);
        if (!conn_is_held(conn) && !conn->is_input_done && !conn->is_closing)
            conn_start_reading(conn);
    }
}

static void srv_on_service(uv_idle_t *idle)
{
    struct bd_http_server *srv = idle->data;
    struct http_conn *list = srv->service;

    /* Closing connections stay allocated until their close callback, which cannot run while
     * this callback does, so walking the detached list is safe whatever conn_service does. */
    srv->service = NULL;
    uv_idle_stop(idle);
    while (list != NULL) {
        struct http_conn *conn = list;
        list = conn->service_next;
        conn->is_service_pending = false;
        conn_service(conn);
    }
}

static void conn_on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    struct http_conn *conn = handle->data;

    (void)suggested;
    if (conn->is_lingering)
        conn->in_len = 0;
    buf->base = conn->in + conn->in_len;
    buf->len = sizeof(conn->in) - conn->in_len;
}

static void conn_on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct http_conn *conn = stream->data;

    (void)buf;
    if (nread == 0 || conn->is_closing)
        return;
    if (nread < 0) {
        if (nread != UV_EOF)
            bd_log(BD_LOG_DEBUG, "http", "conn=%llu read failed: %s", conn->id,
                   uv_strerror((int)nread));
        /* EOF means the client is gone (as in Go's net/http): requests still being handled
         * are aborted rather than answered to a half-closed socket. */
        bd__http_conn_close_now(conn);
        return;
    }
    if (conn->is_lingering)
        return;                                    /* dropped: we have said our last word */
    conn->input_ns = uv_hrtime();
    conn->in_len += (size_t)nread;
    conn_process_input(conn);
}

static void conn_start_reading(struct http_conn *conn)
{
    int err;

    if (conn->is_reading || conn->is_closing)
        return;
    err = uv_read_start((uv_stream_t *)&conn->tcp, conn_on_alloc, conn_on_read);
    if (err < 0) {
        bd_log(BD_LOG_DEBUG, "http", "conn=%llu read_start failed: %s", conn->id,
               uv_strerror(err));
        bd__http_conn_close_now(conn);
        return;
    }
    conn->is_reading = true;
}

/* Full: make room for a newcomer by closing a connection that costs a client nothing to
 * lose and may be an attacker's: the one that has been sending its request's headers the
 * longest (slowloris), else one with no request at all (idle keep-alive, or connected and
 * silent). Only headers begun, or silence, HTTP_EVICT_AGE_MS ago or more (a real client
 * sends its request's headers at once), and never a request being handled or a body being
 * received. Returns
 * true when one was closed (no longer counted as serving). */
static bool srv_evict(struct bd_http_server *srv, const struct http_conn *newcomer)
{
    struct http_conn *conn, *victim = NULL;
    bool is_victim_in_headers = false;

    uint64_t before = uv_hrtime() - HTTP_EVICT_AGE_MS * 1000000ull;

    for (conn = srv->conns; conn != NULL; conn = conn->next) {
        if (conn == newcomer || conn->is_reject || conn->is_closing || conn->is_shutting ||
            conn->head != NULL)
            continue;
        if (conn->parsing != NULL && conn->parsing->pub.method[0] == '\0') {
            if (conn->parsing->pub.start_ns > before)
                continue;                          /* headers begun < 1 s ago */
            if (!is_victim_in_headers ||
                conn->parsing->pub.start_ns < victim->parsing->pub.start_ns) {
                victim = conn;
                is_victim_in_headers = true;
            }
        } else if (conn->parsing == NULL && !is_victim_in_headers &&
                   conn->input_ns <= before &&
                   (victim == NULL || conn->input_ns < victim->input_ns)) {
            victim = conn;                         /* the longest silent */
        }
    }
    if (victim == NULL)
        return false;
    srv->evicted++;
    victim->is_reject = true;                      /* no longer serving, from now */
    srv->serving_count--;
    bd__http_conn_close_now(victim);
    return true;
}

/* Warnings about refused or evicted connections: at most one a second, with counts (a
 * storm of refusals must not become a storm of log lines). */
static void srv_log_full(struct bd_http_server *srv)
{
    uint64_t now = uv_hrtime();

    if (now - srv->full_logged_ns < 1000000000ull && srv->full_logged_ns != 0)
        return;
    bd_log(BD_LOG_WARN, "http", "event=connections_full open=%u max_connections=%u "
           "refused=%llu evicted=%llu (since start)", srv->serving_count,
           srv->opt.max_connections, srv->rejected, srv->evicted);
    srv->full_logged_ns = now;
}

/* Over max_connections: answer 503 and close, without parsing. */
static void conn_reject(struct http_conn *conn)
{
    struct http_req *r;

    conn->is_reject = true;
    conn->is_input_done = true;
    conn->srv->rejected++;
    srv_log_full(conn->srv);
    if ((r = bd__http_req_new(conn)) == NULL) {
        bd__http_conn_close_now(conn);
        return;
    }
    bd__http_conn_queue_push(conn, r);
    r->is_last = true;
    r->refs++;
    bd_http_respond_error_ex(&r->pub, 503, "Retry-After: 1\r\n", "server_busy",
                             "too many open connections", NULL);
}

static void srv_on_connection(uv_stream_t *listener, int status)
{
    struct bd_http_server *srv = listener->data;
    struct http_conn *conn;
    int err;

    if (status < 0) {
        bd_log(BD_LOG_WARN, "http", "accept failed: %s", uv_strerror(status));
        return;
    }
    if ((conn = calloc(1, sizeof(*conn))) == NULL) {
        bd_log(BD_LOG_WARN, "http", "accept failed: %s", bd_strerror(BD_ENOMEM));
        return;
    }
    uv_tcp_init(srv->loop, &conn->tcp);            /* AF_UNSPEC: cannot fail */
    uv_timer_init(srv->loop, &conn->timer);
    conn->tcp.data = conn;
    conn->timer.data = conn;
    conn->srv = srv;
    conn->id = ++srv->next_conn_id;
    conn->pending_closes = 2;
    conn->next = srv->conns;
    if (srv->conns != NULL)
        srv->conns->prev = conn;
    srv->conns = conn;
    srv->conn_count++;
    llhttp_init(&conn->parser, HTTP_REQUEST, &srv->settings);
    conn->parser.data = conn;

    if ((err = uv_accept(listener, (uv_stream_t *)&conn->tcp)) < 0) {
        bd_log(BD_LOG_WARN, "http", "accept failed: %s", uv_strerror(err));
        conn->is_reject = true;                    /* never counted as serving */
        bd__http_conn_close_now(conn);
        return;
    }
    uv_tcp_nodelay(&conn->tcp, 1);
    conn->input_ns = uv_hrtime();
    if (srv->serving_count >= srv->opt.max_connections && !srv_evict(srv, conn)) {
        conn_reject(conn);
        return;
    }
    if (srv->evicted > 0 && srv->serving_count + 1 >= srv->opt.max_connections)
        srv_log_full(srv);
    srv->serving_count++;
    bd_log(BD_LOG_DEBUG, "http", "conn=%llu open (%u open)", conn->id, srv->conn_count);
    conn_start_reading(conn);
    bd__http_conn_update_timer(conn);
}

/* ---- Server ----------------------------------------------------------------------- */

static void srv_on_idle_closed(uv_handle_t *handle)
{
    struct bd_http_server *srv = handle->data;
    bd_http_closed_cb cb = srv->closed_cb;
    void *arg = srv->closed_arg;

    if (--srv->handles_closing > 0)
        return;

    while (srv->free_reqs != NULL) {
        struct http_req *r = srv->free_reqs;
        srv->free_reqs = r->next;
        free(r);
    }
    if (cb != NULL)
        cb(srv, arg);                              /* the caller must not use srv after */
    free(srv);
}

static void srv_maybe_finish_close(struct bd_http_server *srv)
{
    if (!srv->is_closing || !srv->is_listener_closed || srv->conns != NULL ||
        srv->req_count > 0 || srv->is_finishing)
        return;
    srv->is_finishing = true;
    bd_log(BD_LOG_DEBUG, "http", "server closed");
    srv->handles_closing = 3;
    uv_close((uv_handle_t *)&srv->write_timer, srv_on_idle_closed);
    uv_close((uv_handle_t *)&srv->close_timer, srv_on_idle_closed);
    uv_close((uv_handle_t *)&srv->service_idle, srv_on_idle_closed);
}

static void srv_on_listener_closed(uv_handle_t *handle)
{
    struct bd_http_server *srv = handle->data;

    srv->is_listener_closed = true;
    srv_maybe_finish_close(srv);
}

int bd_http_server_new(uv_loop_t *loop, const struct bd_http_options *opt,
                       struct bd_http_server **out)
{
    struct bd_http_server *srv;
    int err;

    if (loop == NULL || opt == NULL || opt->on_request == NULL || out == NULL)
        return BD_EINVAL;
    if ((srv = calloc(1, sizeof(*srv))) == NULL)
        return BD_ENOMEM;
    srv->loop = loop;
    srv->opt = *opt;
    if (srv->opt.max_connections == 0)
        srv->opt.max_connections = HTTP_DEFAULT_MAX_CONNECTIONS;
    if (srv->opt.max_header_bytes == 0)
        srv->opt.max_header_bytes = HTTP_DEFAULT_MAX_HEADER_BYTES;
    if (srv->opt.max_url_bytes == 0)
        srv->opt.max_url_bytes = HTTP_DEFAULT_MAX_URL_BYTES;
    if (srv->opt.max_body_bytes == 0)
        srv->opt.max_body_bytes = HTTP_DEFAULT_MAX_BODY_BYTES;
    if (srv->opt.idle_timeout_ms == 0)
        srv->opt.idle_timeout_ms = HTTP_DEFAULT_IDLE_MS;
    if (srv->opt.request_timeout_ms == 0)
        srv->opt.request_timeout_ms = HTTP_DEFAULT_REQUEST_MS;
    if (srv->opt.shutdown_timeout_ms == 0)
        srv->opt.shutdown_timeout_ms = HTTP_DEFAULT_SHUTDOWN_MS;
    if (srv->opt.write_timeout_ms == 0)
        srv->opt.write_timeout_ms = HTTP_DEFAULT_WRITE_MS;
    if (srv->opt.min_body_rate == 0)
        srv->opt.min_body_rate = HTTP_DEFAULT_MIN_BODY_RATE;

    bd__http_parser_settings_init(&srv->settings);

    /* uv_tcp_init with AF_UNSPEC registers nothing when it fails, so free() is enough. */
    if ((err = uv_tcp_init(loop, &srv->listener)) < 0) {
        free(srv);
        return err;
    }
    uv_idle_init(loop, &srv->service_idle);        /* cannot fail */
    uv_timer_init(loop, &srv->close_timer);        /* cannot fail */
    uv_timer_init(loop, &srv->write_timer);
    srv->listener.data = srv;
    srv->service_idle.data = srv;
    srv->close_timer.data = srv;
    srv->write_timer.data = srv;
    *out = srv;
    return BD_OK;
}

/* Bytes in the kernel's send queue the client has not acknowledged (SIOCOUTQ): they fall
 * when the client reads, even while libuv, waiting for the socket to be writable again
 * (Linux wakes a writer only once half its queue is free), sees nothing. */
static size_t conn_unacked_bytes(const struct http_conn *conn)
{
    uv_os_fd_t fd;
    int n = 0;

    if (uv_fileno((const uv_handle_t *)&conn->tcp, &fd) < 0 || ioctl(fd, SIOCOUTQ, &n) < 0 ||
        n < 0)
        return 0;
    return (size_t)n;
}

/* Output that makes no progress: a client that stopped reading a response (or pipelines
 * without reading) holds its connection, the response's memory and, during a shutdown, the
 * process. Every sweep looks at each connection with output in the socket: the client took
 * some of it since the last sweep (a write completed, libuv's queue shrank, or the kernel's
 * unacknowledged bytes fell) or not; after
 * write_timeout_ms without progress the connection is cut and its handler gets the abort
 * callback. This is the one timeout that runs while a handler holds the connection. */
static void srv_on_write_sweep(uv_timer_t *t)
{
    struct bd_http_server *srv = t->data;
    uint64_t now = uv_hrtime();
    uint64_t limit_ns = srv->opt.write_timeout_ms * 1000000ull;
    struct http_conn *conn, *next;

    for (conn = srv->conns; conn != NULL; conn = next) {
        size_t left, sent;

        next = conn->next;
        if (conn->is_closing || conn->write_bytes == 0)
            continue;
        left = conn->tcp.write_queue_size;
        sent = conn_unacked_bytes(conn);
        if (left < conn->write_left || sent < conn->write_unacked)
            conn->write_progress_ns = now;
        conn->write_left = left;
        conn->write_unacked = sent;
        if (now - conn->write_progress_ns < limit_ns)
            continue;
        bd_log(BD_LOG_INFO, "http", "event=write_timeout conn=%llu unwritten=%zu after_ms=%llu",
               conn->id, conn->write_bytes + conn->held_bytes,
               (unsigned long long)srv->opt.write_timeout_ms);
        bd__http_conn_close_now(conn);
    }
}

int bd_http_server_listen(struct bd_http_server *srv, const char *host, int port)
{
    struct sockaddr_storage ss;
    uint64_t sweep;
    int err;

    if (host == NULL || strcmp(host, "localhost") == 0)
        host = "127.0.0.1";
    if (port < 0 || port > 65535)
        return BD_EINVAL;
    err = uv_ip4_addr(host, port, (struct sockaddr_in *)&ss);
    if (err < 0)
        err = uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss);
    if (err < 0)
        return err;
    if ((err = uv_tcp_bind(&srv->listener, (const struct sockaddr *)&ss, 0)) < 0)
        return err;
    if ((err = uv_listen((uv_stream_t *)&srv->listener, HTTP_BACKLOG, srv_on_connection)) < 0)
        return err;
    srv->is_listening = true;
    sweep = srv->opt.write_timeout_ms / 2;
    if (sweep > HTTP_WRITE_SWEEP_MS)
        sweep = HTTP_WRITE_SWEEP_MS;
    uv_timer_start(&srv->write_timer, srv_on_write_sweep, sweep ? sweep : 1, sweep ? sweep : 1);
    uv_unref((uv_handle_t *)&srv->write_timer);    /* a sweep alone keeps no loop alive */
    bd_log(BD_LOG_DEBUG, "http", "listening on %s:%d", host, bd_http_server_get_port(srv));
    return BD_OK;
}

int bd_http_server_get_port(const struct bd_http_server *srv)
{
    struct sockaddr_storage ss;
    int len = (int)sizeof(ss);

    if (!srv->is_listening || srv->is_closing)
        return -1;
    if (uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&ss, &len) < 0)
        return -1;
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

unsigned bd_http_server_get_connections(const struct bd_http_server *srv)
{
    return srv->conn_count;
}

/* The close's deadline: whatever is still open is cut (a stream whose client stopped
 * reading, an event stream, a response held by a slow handler). */
static void srv_on_close_deadline(uv_timer_t *t)
{
    struct bd_http_server *srv = t->data;
    struct http_conn *conn, *next;
    unsigned n = 0;

    for (conn = srv->conns; conn != NULL; conn = next) {
        next = conn->next;
        if (!conn->is_closing) {
            bd__http_conn_close_now(conn);
            n++;
        }
    }
    if (n > 0)
        bd_log(BD_LOG_WARN, "http", "event=shutdown_cut connections=%u after_ms=%llu", n,
               (unsigned long long)srv->opt.shutdown_timeout_ms);
}

void bd_http_server_close(struct bd_http_server *srv, bd_http_closed_cb cb, void *arg)
{
    struct http_conn *conn, *next;

    assert(!srv->is_closing);
    srv->is_closing = true;
    srv->closed_cb = cb;
    srv->closed_arg = arg;
    uv_timer_start(&srv->close_timer, srv_on_close_deadline, srv->opt.shutdown_timeout_ms, 0);
    uv_close((uv_handle_t *)&srv->listener, srv_on_listener_closed);
    for (conn = srv->conns; conn != NULL; conn = next) {
        next = conn->next;
        if (conn->is_closing)
            continue;
        conn->is_input_done = true;
        bd__http_conn_stop_reading(conn);
        if (conn->parsing != NULL && conn->parsing->is_taken) {
            bd__http_conn_close_now(conn);         /* a body that will never end: abort */
            continue;
        }
        if (conn->parsing != NULL) {               /* a request not yet complete is dropped */
            bd__http_req_unref(conn->parsing);
            conn->parsing = NULL;
        }
        if (conn->is_lingering || (conn->head == NULL && conn->write_bytes == 0))
            bd__http_conn_close_now(conn);
        else if (conn->head == NULL)
            bd__http_conn_close_graceful(conn);     /* let the last response reach the client */
        else
            bd__http_conn_update_timer(conn);
    }
}
