/* http_server.c -- HTTP/1.1 on uv_tcp + llhttp: keep-alive, pipelining, limits, timeouts.
 *
 * Owns the listening socket, every connection (struct http_conn: its uv_tcp_t, one uv_timer_t
 * for the idle/request/linger timeouts, the llhttp parser and a fixed input buffer) and every
 * request (struct http_req: its arena and any output buffered behind earlier responses).
 * Loop thread only; never blocks. Knows nothing of routes or jobs: each complete request goes
 * to opt.on_request. Must not free a connection outside its last close callback, nor a request
 * that a handler still holds.  SPDX-License-Identifier: MIT
 */
#include "batchd/http_server.h"
#include "batchd/error.h"
#include "batchd/log.h"
#include "batchd/url.h"

#include <assert.h>
#include <jansson.h>
#include <llhttp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

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
 * the head. Reading stops while HTTP_MAX_QUEUED requests wait, their bodies exceed
 * max_body_bytes, or HTTP_MAX_WRITE_QUEUE bytes are unwritten (a client that pipelines without
 * reading), and resumes from the server's idle handle, never from inside a handler's call.
 *
 * Every error the server produces itself (400, 408, 413, 414, 431, 503) is an ordinary
 * request answered with bd_http_respond_error(), queued behind earlier responses and marked
 * last: after it the connection shuts down its write side and lingers, reading and dropping
 * input until EOF or HTTP_LINGER_MS, so the client reads the error instead of a reset.
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

#define HTTP_IN_BUF          16384      /* per-connection read buffer */
#define HTTP_MAX_QUEUED      16         /* complete requests waiting before reading stops */
#define HTTP_MAX_WRITE_QUEUE (1u << 20) /* unwritten bytes before reading stops */
#define HTTP_LINGER_MS       1000
#define HTTP_ARENA_INLINE    2048       /* arena bytes inside struct http_req */
#define HTTP_ARENA_CHUNK     4096
#define HTTP_FREE_REQS       64         /* request structs kept for reuse */
#define HTTP_BACKLOG         511
#define HTTP_ALIGN           _Alignof(max_align_t)

#define HTTP_DEFAULT_MAX_CONNECTIONS  1024u
#define HTTP_DEFAULT_MAX_HEADER_BYTES (16u * 1024)
#define HTTP_DEFAULT_MAX_URL_BYTES    (8u * 1024)
#define HTTP_DEFAULT_MAX_BODY_BYTES   ((size_t)16 * 1024 * 1024)
#define HTTP_DEFAULT_IDLE_MS          60000u
#define HTTP_DEFAULT_REQUEST_MS       30000u

struct arena_chunk {
    struct arena_chunk *next;
    max_align_t data[];
};

/* Bump allocator: the first block is inside the request, the rest are malloc'ed chunks. */
struct http_arena {
    char *pos;
    char *end;
    struct arena_chunk *chunks;
};

/* One write: uv_write_t first, so the write callback can cast back. */
struct http_wbuf {
    uv_write_t wr;
    struct http_conn *conn;
    struct http_wbuf *next;
    size_t len;
    char data[];
};

enum conn_timer { CONN_TIMER_NONE, CONN_TIMER_IDLE, CONN_TIMER_REQUEST, CONN_TIMER_LINGER };

struct http_req {
    struct bd_http_request pub;        /* first: handlers get &pub */
    struct bd_http_server *srv;
    struct http_conn *conn;            /* NULL once popped or the connection is gone */
    struct http_req *next;             /* connection queue, or the server's free list */
    struct http_wbuf *out_head;        /* output held until this request is the head */
    struct http_wbuf *out_tail;
    size_t out_bytes;
    struct http_arena arena;
    struct bd_http_header *hdrs;
    unsigned hdrs_cap;
    char *body_buf;
    size_t body_cap;
    unsigned refs;
    int status;
    bd_http_abort_cb abort_cb;
    void *abort_arg;
    bd_http_drain_cb drain_cb;
    void *drain_arg;
    bool is_complete;                  /* on_message_complete seen */
    bool is_keep_alive;
    bool is_http10;
    bool is_head_method;
    bool is_last;                      /* the connection closes after this response */
    bool is_finished;                  /* the handler answered */
    bool is_streaming;
    bool is_raw_stream;                /* HTTP/1.0 stream: no chunking, ends with close */
    max_align_t inline_mem[HTTP_ARENA_INLINE / sizeof(max_align_t)];
};

struct http_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_shutdown_t shutdown;
    llhttp_t parser;
    struct bd_http_server *srv;
    struct http_conn *prev;            /* srv->conns */
    struct http_conn *next;
    struct http_conn *service_next;    /* srv->service */
    struct http_req *parsing;          /* request being parsed, or NULL */
    struct http_req *head;             /* complete requests, oldest first */
    struct http_req *tail;
    unsigned queued;
    size_t queued_body_bytes;          /* bodies held by queued requests */
    size_t write_bytes;                /* passed to uv_write, not yet called back */
    unsigned long long id;
    enum conn_timer timer_mode;
    int parse_err;                     /* BD_E* from a parser callback that stopped llhttp */
    char *scratch;                     /* token being gathered (URL, header name or value) */
    size_t scratch_len;
    size_t scratch_cap;
    const char *hdr_name;              /* arena copy of the header name awaiting its value */
    size_t hdr_bytes;
    unsigned pending_closes;
    bool is_reject;                    /* over max_connections: 503, then close */
    bool is_input_done;                /* parse no more requests */
    bool is_reading;
    bool is_paused;                    /* reading stopped for backpressure */
    bool is_processing;                /* conn_process_input() is on the stack */
    bool is_shutting;                  /* uv_shutdown() requested */
    bool is_lingering;                 /* write side shut; dropping input until EOF */
    bool is_closing;                   /* uv_close() requested */
    bool is_service_pending;
    size_t in_off;
    size_t in_len;
    char in[HTTP_IN_BUF];
};

struct bd_http_server {
    uv_loop_t *loop;
    uv_tcp_t listener;
    uv_idle_t service_idle;            /* runs deferred work: resumed reads, drain callbacks */
    struct bd_http_options opt;
    llhttp_settings_t settings;
    struct http_conn *conns;
    struct http_conn *service;
    struct http_req *free_reqs;
    unsigned free_count;
    unsigned conn_count;               /* all open connections */
    unsigned serving_count;            /* those counted against max_connections */
    unsigned req_count;                /* live requests, attached or not */
    unsigned long long next_conn_id;
    bool is_listening;
    bool is_closing;
    bool is_listener_closed;
    bool is_finishing;
    bd_http_closed_cb closed_cb;
    void *closed_arg;
};

static void conn_close_now(struct http_conn *conn);
static void conn_close_graceful(struct http_conn *conn);
static void conn_process_input(struct http_conn *conn);
static void conn_update_timer(struct http_conn *conn);
static void srv_maybe_finish_close(struct bd_http_server *srv);
static void srv_on_service(uv_idle_t *idle);
static void conn_on_timer(uv_timer_t *timer);

/* ---- Arena ------------------------------------------------------------------------ */

static void *arena_alloc(struct http_arena *a, size_t size)
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

static struct http_req *req_new(struct http_conn *conn)
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

static void req_unref(struct http_req *r)
{
    assert(r->refs > 0);
    if (--r->refs == 0)
        req_free(r);
}

static struct http_req *req_of(const struct bd_http_request *pub)
{
    return (struct http_req *)((char *)pub - offsetof(struct http_req, pub));
}

static void req_report(struct http_req *r)
{
    struct bd_http_server *srv = r->srv;

    if (srv->opt.on_response != NULL)
        srv->opt.on_response(&r->pub, r->status, uv_hrtime() - r->pub.start_ns,
                             srv->opt.on_response_arg);
}

/* ---- Output ----------------------------------------------------------------------- */

static struct http_wbuf *wbuf_new(size_t cap)
{
    struct http_wbuf *w = malloc(sizeof(*w) + cap);

    if (w != NULL) {
        w->next = NULL;
        w->len = 0;
    }
    return w;
}

/* Bounds what one connection holds: requests, their bodies and unwritten output. */
static bool conn_must_pause(const struct http_conn *conn)
{
    return conn->queued >= HTTP_MAX_QUEUED || conn->write_bytes >= HTTP_MAX_WRITE_QUEUE ||
           conn->queued_body_bytes > conn->srv->opt.max_body_bytes;
}

static void conn_schedule_service(struct http_conn *conn)
{
    struct bd_http_server *srv = conn->srv;

    if (conn->is_service_pending || conn->is_closing)
        return;
    conn->is_service_pending = true;
    conn->service_next = srv->service;
    srv->service = conn;
    uv_idle_start(&srv->service_idle, srv_on_service);
}

static void conn_on_write(uv_write_t *wr, int status)
{
    struct http_wbuf *w = (struct http_wbuf *)wr;
    struct http_conn *conn = w->conn;
    struct http_req *r;

    conn->write_bytes -= w->len;
    free(w);
    if (conn->is_closing)
        return;
    if (status < 0) {
        bd_log(BD_LOG_DEBUG, "http", "conn=%llu write failed: %s", conn->id, uv_strerror(status));
        conn_close_now(conn);
        return;
    }
    if (conn->timer_mode == CONN_TIMER_IDLE)        /* progress: a slow reader is not idle */
        uv_timer_again(&conn->timer);
    if (conn->is_paused && !conn_must_pause(conn))
        conn_schedule_service(conn);
    r = conn->head;
    if (conn->write_bytes == 0 && r != NULL && r->drain_cb != NULL && r->out_bytes == 0) {
        bd_http_drain_cb cb = r->drain_cb;

        r->drain_cb = NULL;                        /* one-shot; the handler re-arms */
        cb(&r->pub, r->drain_arg);
    }
}

/* Hand w to the socket now (takes ownership of w). */
static void conn_write(struct http_conn *conn, struct http_wbuf *w)
{
    uv_buf_t buf = { .base = w->data, .len = w->len };   /* uv_buf_init() takes unsigned */
    int err;

    if (conn->is_closing) {
        free(w);
        return;
    }
    w->conn = conn;
    err = uv_write(&w->wr, (uv_stream_t *)&conn->tcp, &buf, 1, conn_on_write);
    if (err < 0) {
        free(w);
        bd_log(BD_LOG_DEBUG, "http", "conn=%llu write failed: %s", conn->id, uv_strerror(err));
        conn_close_now(conn);
        return;
    }
    conn->write_bytes += w->len;
}

/* Write r's output now if r is the head, else keep it until r becomes the head. */
static void req_output(struct http_req *r, struct http_wbuf *w)
{
    struct http_conn *conn = r->conn;

    if (conn == NULL || conn->is_closing) {
        free(w);
    } else if (conn->head == r) {
        conn_write(conn, w);
    } else {
        if (r->out_tail != NULL)
            r->out_tail->next = w;
        else
            r->out_head = w;
        r->out_tail = w;
        r->out_bytes += w->len;
    }
}

static void conn_queue_push(struct http_conn *conn, struct http_req *r)
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

/* Pop every finished request at the head, flushing the output of the next one. */
static void conn_advance(struct http_conn *conn)
{
    struct http_req *r;

    while (!conn->is_closing && (r = conn->head) != NULL && r->is_finished) {
        bool is_last = r->is_last;

        conn->head = r->next;
        if (conn->head == NULL)
            conn->tail = NULL;
        conn->queued--;
        conn->queued_body_bytes -= r->pub.body_len;
        r->next = NULL;
        r->conn = NULL;
        req_unref(r);
        if (is_last) {
            conn->is_input_done = true;
            conn_close_graceful(conn);
            return;
        }
        if ((r = conn->head) != NULL) {
            struct http_wbuf *w = r->out_head;

            r->out_head = r->out_tail = NULL;
            r->out_bytes = 0;
            while (w != NULL) {
                struct http_wbuf *next = w->next;
                w->next = NULL;
                conn_write(conn, w);
                w = next;
            }
        }
    }
    if (conn->is_closing)
        return;
    if (conn->head == NULL && conn->is_input_done && conn->parsing == NULL)
        conn_close_graceful(conn);
    else if (conn->is_paused && !conn_must_pause(conn))
        conn_schedule_service(conn);
    conn_update_timer(conn);
}

/* The handler (or the server) is done with r. */
static void req_finish(struct http_req *r)
{
    assert(!r->is_finished);
    r->is_finished = true;
    r->abort_cb = NULL;
    r->drain_cb = NULL;
    if (r->conn != NULL && r->conn->head == r)
        conn_advance(r->conn);
    req_unref(r);                                  /* the handler's */
}

/* Decide whether the connection closes after r's response (decided when the response starts). */
static void req_decide_last(struct http_req *r)
{
    struct http_conn *conn = r->conn;

    if (!r->is_keep_alive || conn->srv->is_closing)
        r->is_last = true;
    else if (conn->is_input_done && r->next == NULL && conn->parsing == NULL)
        r->is_last = true;
}

/* Status line and headers in a new buffer with room bytes to spare; NULL on ENOMEM. */
static struct http_wbuf *resp_head(struct http_req *r, int status, const char *content_type,
                                   const char *extra, const char *framing, size_t room)
{
    const char *reason = bd_http_status_text(status);
    const char *connection = r->is_last     ? "Connection: close\r\n"
                             : r->is_http10 ? "Connection: keep-alive\r\n"
                                            : "";
    size_t cap = 48 + strlen(reason) + strlen(framing) + strlen(connection) + room;
    struct http_wbuf *w;
    int n;

    assert(status >= 100 && status <= 999);
    assert(extra == NULL || extra[0] == '\0' || strstr(extra, "\r\n") != NULL);
    if (content_type != NULL)
        cap += strlen(content_type) + 16;
    if (extra != NULL)
        cap += strlen(extra);
    if ((w = wbuf_new(cap)) == NULL)
        return NULL;
    n = snprintf(w->data, cap, "HTTP/1.1 %d %s\r\n%s%s%s%s%s%s\r\n", status, reason,
                 content_type ? "Content-Type: " : "", content_type ? content_type : "",
                 content_type ? "\r\n" : "", framing, connection, extra ? extra : "");
    assert(n > 0 && (size_t)n < cap);
    w->len = (size_t)n;
    return w;
}

/* ---- Connections ------------------------------------------------------------------ */

static void conn_start_reading(struct http_conn *conn);

static void conn_stop_reading(struct http_conn *conn)
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
        req_unref(conn->parsing);
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
        req_unref(r);                              /* the extra one */
        req_unref(r);                              /* the connection's */
    }
    free(conn->scratch);
    free(conn);
    srv_maybe_finish_close(srv);
}

static void conn_close_now(struct http_conn *conn)
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
    if (status < 0 || conn->srv->is_closing) {
        conn_close_now(conn);
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
static void conn_close_graceful(struct http_conn *conn)
{
    if (conn->is_closing || conn->is_shutting)
        return;
    conn->is_shutting = true;
    conn->is_input_done = true;
    conn_stop_reading(conn);
    conn->shutdown.data = conn;
    if (uv_shutdown(&conn->shutdown, (uv_stream_t *)&conn->tcp, conn_on_shutdown) < 0)
        conn_close_now(conn);
    else
        conn_update_timer(conn);
}

static void conn_update_timer(struct http_conn *conn)
{
    const struct bd_http_options *opt = &conn->srv->opt;
    enum conn_timer mode = CONN_TIMER_NONE;
    uint64_t ms = 0;

    if (conn->is_closing || conn->is_lingering)
        return;
    if (conn->parsing != NULL && !conn->is_input_done && !conn->is_paused) {
        uint64_t elapsed = (uv_hrtime() - conn->parsing->pub.start_ns) / 1000000;
        mode = CONN_TIMER_REQUEST;
        ms = elapsed < opt->request_timeout_ms ? opt->request_timeout_ms - elapsed : 0;
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
static void conn_fail(struct http_conn *conn, int err, const char *reason)
{
    struct http_req *r = conn->parsing;

    conn->parsing = NULL;
    conn->is_input_done = true;
    conn_stop_reading(conn);
    if (r == NULL && (r = req_new(conn)) == NULL) {
        conn_close_now(conn);
        return;
    }
    conn_queue_push(conn, r);
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

    conn->timer_mode = CONN_TIMER_NONE;
    uv_timer_stop(timer);
    switch (mode) {
    case CONN_TIMER_IDLE:
        bd_log(BD_LOG_DEBUG, "http", "conn=%llu idle timeout", conn->id);
        conn_close_now(conn);
        break;
    case CONN_TIMER_REQUEST:
        conn_fail(conn, BD_ETIMEOUT, NULL);
        break;
    case CONN_TIMER_LINGER:
        conn_close_now(conn);
        break;
    case CONN_TIMER_NONE:
        break;
    }
}

/* Hand the request that llhttp just completed to the handler. */
static void conn_dispatch(struct http_conn *conn)
{
    struct bd_http_server *srv = conn->srv;
    struct http_req *r = conn->parsing;

    conn->parsing = NULL;
    if (conn->timer_mode == CONN_TIMER_REQUEST) {  /* the next request gets its own clock */
        conn->timer_mode = CONN_TIMER_NONE;
        uv_timer_stop(&conn->timer);
    }
    conn_queue_push(conn, r);
    if (!r->is_keep_alive) {
        r->is_last = true;
        conn->is_input_done = true;
        conn_stop_reading(conn);
    }
    r->refs++;                                     /* the handler's */
    srv->opt.on_request(&r->pub, srv->opt.on_request_arg);
}

static void conn_process_input(struct http_conn *conn)
{
    if (conn->is_processing)
        return;
    conn->is_processing = true;
    while (conn->in_off < conn->in_len && !conn->is_closing && !conn->is_input_done) {
        const char *data = conn->in + conn->in_off;
        llhttp_errno_t e;

        if (conn_must_pause(conn)) {
            bd_log(BD_LOG_DEBUG, "http", "conn=%llu paused queued=%u body=%zu unwritten=%zu",
                   conn->id, conn->queued, conn->queued_body_bytes, conn->write_bytes);
            conn->is_paused = true;
            conn_stop_reading(conn);
            break;
        }
        e = llhttp_execute(&conn->parser, data, conn->in_len - conn->in_off);
        if (conn->is_closing)
            break;
        if (e == HPE_OK) {
            conn->in_off = conn->in_len;
        } else if (e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) {
            conn->in_off += (size_t)(llhttp_get_error_pos(&conn->parser) - data);
            if (e == HPE_PAUSED) {
                llhttp_resume(&conn->parser);
            } else {
                conn->is_input_done = true;        /* we speak no other protocol */
                conn_stop_reading(conn);
            }
            if (conn->parsing != NULL && conn->parsing->is_complete)
                conn_dispatch(conn);
        } else {
            conn_fail(conn, conn->parse_err ? conn->parse_err : BD_EINVAL,
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
    conn_update_timer(conn);
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
    if (conn->is_paused && !conn_must_pause(conn)) {
        conn->is_paused = false;
        conn_process_input(conn);
        if (!conn->is_paused && !conn->is_input_done && !conn->is_closing)
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
        conn_close_now(conn);
        return;
    }
    if (conn->is_lingering)
        return;                                    /* dropped: we have said our last word */
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
        conn_close_now(conn);
        return;
    }
    conn->is_reading = true;
}

/* Over max_connections: answer 503 and close, without parsing. */
static void conn_reject(struct http_conn *conn)
{
    struct http_req *r;

    conn->is_reject = true;
    conn->is_input_done = true;
    if ((r = req_new(conn)) == NULL) {
        conn_close_now(conn);
        return;
    }
    conn_queue_push(conn, r);
    r->is_last = true;
    r->refs++;
    bd_log(BD_LOG_WARN, "http", "conn=%llu rejected: %u connections open (max_connections)",
           conn->id, conn->srv->serving_count);
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
        conn_close_now(conn);
        return;
    }
    uv_tcp_nodelay(&conn->tcp, 1);
    if (srv->serving_count >= srv->opt.max_connections) {
        conn_reject(conn);
        return;
    }
    srv->serving_count++;
    bd_log(BD_LOG_DEBUG, "http", "conn=%llu open (%u open)", conn->id, srv->conn_count);
    conn_start_reading(conn);
    conn_update_timer(conn);
}

/* ---- llhttp callbacks ------------------------------------------------------------- */

static int parse_fail(llhttp_t *p, int err, const char *reason)
{
    struct http_conn *conn = p->data;

    conn->parse_err = err;
    llhttp_set_error_reason(p, reason);
    return HPE_USER;
}

static int conn_scratch_add(struct http_conn *conn, const char *at, size_t len)
{
    if (conn->scratch_len + len + 1 > conn->scratch_cap) {
        size_t cap = conn->scratch_cap ? conn->scratch_cap : 256;
        char *p;

        while (cap < conn->scratch_len + len + 1)
            cap *= 2;
        if ((p = realloc(conn->scratch, cap)) == NULL)
            return BD_ENOMEM;
        conn->scratch = p;
        conn->scratch_cap = cap;
    }
    memcpy(conn->scratch + conn->scratch_len, at, len);
    conn->scratch_len += len;
    return BD_OK;
}

/* The gathered token as a NUL-terminated arena string; NULL on ENOMEM. */
static char *conn_scratch_take(struct http_conn *conn)
{
    char *s = arena_alloc(&conn->parsing->arena, conn->scratch_len + 1);

    if (s != NULL) {
        if (conn->scratch_len > 0)
            memcpy(s, conn->scratch, conn->scratch_len);
        s[conn->scratch_len] = '\0';
    }
    conn->scratch_len = 0;
    return s;
}

static int on_message_begin(llhttp_t *p)
{
    struct http_conn *conn = p->data;

    assert(conn->parsing == NULL);
    conn->scratch_len = 0;
    conn->hdr_bytes = 0;
    conn->hdr_name = NULL;
    conn->parse_err = BD_OK;
    if ((conn->parsing = req_new(conn)) == NULL) {
        conn->parse_err = BD_ENOMEM;
        return -1;
    }
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    struct http_conn *conn = p->data;

    if (conn->scratch_len + len > conn->srv->opt.max_url_bytes)
        return parse_fail(p, BD_EURITOOLONG, "URI too long");
    if (conn_scratch_add(conn, at, len) < 0)
        return parse_fail(p, BD_ENOMEM, "out of memory");
    return 0;
}

static int on_url_complete(llhttp_t *p)
{
    struct http_conn *conn = p->data;
    struct http_req *r = conn->parsing;
    char *target = conn_scratch_take(conn);
    char *q;

    if (target == NULL)
        return parse_fail(p, BD_ENOMEM, "out of memory");
    r->pub.target = target;
    r->pub.path = target;
    if ((q = strchr(target, '?')) != NULL) {
        size_t n = (size_t)(q - target);
        char *path = arena_alloc(&r->arena, n + 1);

        if (path == NULL)
            return parse_fail(p, BD_ENOMEM, "out of memory");
        memcpy(path, target, n);
        path[n] = '\0';
        r->pub.path = path;
        r->pub.query = q + 1;
    }
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct http_conn *conn = p->data;

    conn->hdr_bytes += len;
    if (conn->hdr_bytes > conn->srv->opt.max_header_bytes)
        return parse_fail(p, BD_EHDRTOOLARGE, "header fields too large");
    if (conn_scratch_add(conn, at, len) < 0)
        return parse_fail(p, BD_ENOMEM, "out of memory");
    return 0;
}

static int on_header_field_complete(llhttp_t *p)
{
    struct http_conn *conn = p->data;

    if ((conn->hdr_name = conn_scratch_take(conn)) == NULL)
        return parse_fail(p, BD_ENOMEM, "out of memory");
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    return on_header_field(p, at, len);            /* same limit, same scratch */
}

static int on_header_value_complete(llhttp_t *p)
{
    struct http_conn *conn = p->data;
    struct http_req *r = conn->parsing;
    char *value = conn_scratch_take(conn);

    if (value == NULL)
        return parse_fail(p, BD_ENOMEM, "out of memory");
    if (r->pub.headers_count == r->hdrs_cap) {
        unsigned cap = r->hdrs_cap ? r->hdrs_cap * 2 : 16;
        struct bd_http_header *h = arena_alloc(&r->arena, cap * sizeof(*h));

        if (h == NULL)
            return parse_fail(p, BD_ENOMEM, "out of memory");
        if (r->pub.headers_count > 0)
            memcpy(h, r->hdrs, r->pub.headers_count * sizeof(*h));
        r->hdrs = h;
        r->hdrs_cap = cap;
        r->pub.headers = h;
    }
    r->hdrs[r->pub.headers_count++] = (struct bd_http_header){ conn->hdr_name, value };
    conn->hdr_name = NULL;
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    struct http_conn *conn = p->data;
    struct http_req *r = conn->parsing;
    const char *expect;

    r->pub.method = llhttp_method_name((llhttp_method_t)llhttp_get_method(p));
    r->is_head_method = llhttp_get_method(p) == HTTP_HEAD;
    r->is_http10 = llhttp_get_http_major(p) == 1 && llhttp_get_http_minor(p) == 0;
    r->is_keep_alive = llhttp_should_keep_alive(p) && !llhttp_get_upgrade(p);
    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0) {
        if (p->content_length > conn->srv->opt.max_body_bytes) {
            parse_fail(p, BD_ETOOLARGE, "request body too large");
            return -1;
        }
        r->body_cap = (size_t)p->content_length + 1;
        if ((r->body_buf = arena_alloc(&r->arena, r->body_cap)) == NULL) {
            parse_fail(p, BD_ENOMEM, "out of memory");
            return -1;
        }
    }
    expect = bd_http_header_get(&r->pub, "Expect");
    if (expect != NULL && strcasecmp(expect, "100-continue") == 0 && !r->is_http10 &&
        conn->head == NULL) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        struct http_wbuf *w = wbuf_new(sizeof(cont) - 1);

        if (w != NULL) {
            memcpy(w->data, cont, sizeof(cont) - 1);
            w->len = sizeof(cont) - 1;
            conn_write(conn, w);
        }
    }
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct http_conn *conn = p->data;
    struct http_req *r = conn->parsing;
    size_t need = r->pub.body_len + len + 1;

    if (r->pub.body_len + len > conn->srv->opt.max_body_bytes)
        return parse_fail(p, BD_ETOOLARGE, "request body too large");
    if (need > r->body_cap) {                      /* chunked: grow by doubling */
        size_t cap = r->body_cap ? r->body_cap * 2 : 1024;
        char *b;

        while (cap < need)
            cap *= 2;
        if ((b = arena_alloc(&r->arena, cap)) == NULL)
            return parse_fail(p, BD_ENOMEM, "out of memory");
        if (r->pub.body_len > 0)
            memcpy(b, r->body_buf, r->pub.body_len);
        r->body_buf = b;
        r->body_cap = cap;
    }
    memcpy(r->body_buf + r->pub.body_len, at, len);
    r->pub.body_len += len;
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    struct http_conn *conn = p->data;
    struct http_req *r = conn->parsing;

    if (r->body_buf != NULL) {
        r->body_buf[r->pub.body_len] = '\0';
        r->pub.body = r->body_buf;
    }
    r->is_complete = true;
    return HPE_PAUSED;                             /* dispatched outside llhttp_execute() */
}

/* ---- Server ----------------------------------------------------------------------- */

static void srv_on_idle_closed(uv_handle_t *handle)
{
    struct bd_http_server *srv = handle->data;
    bd_http_closed_cb cb = srv->closed_cb;
    void *arg = srv->closed_arg;

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

    llhttp_settings_init(&srv->settings);
    srv->settings.on_message_begin = on_message_begin;
    srv->settings.on_url = on_url;
    srv->settings.on_url_complete = on_url_complete;
    srv->settings.on_header_field = on_header_field;
    srv->settings.on_header_field_complete = on_header_field_complete;
    srv->settings.on_header_value = on_header_value;
    srv->settings.on_header_value_complete = on_header_value_complete;
    srv->settings.on_headers_complete = on_headers_complete;
    srv->settings.on_body = on_body;
    srv->settings.on_message_complete = on_message_complete;

    /* uv_tcp_init with AF_UNSPEC registers nothing when it fails, so free() is enough. */
    if ((err = uv_tcp_init(loop, &srv->listener)) < 0) {
        free(srv);
        return err;
    }
    uv_idle_init(loop, &srv->service_idle);        /* cannot fail */
    srv->listener.data = srv;
    srv->service_idle.data = srv;
    *out = srv;
    return BD_OK;
}

int bd_http_server_listen(struct bd_http_server *srv, const char *host, int port)
{
    struct sockaddr_storage ss;
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

void bd_http_server_close(struct bd_http_server *srv, bd_http_closed_cb cb, void *arg)
{
    struct http_conn *conn, *next;

    assert(!srv->is_closing);
    srv->is_closing = true;
    srv->closed_cb = cb;
    srv->closed_arg = arg;
    uv_close((uv_handle_t *)&srv->listener, srv_on_listener_closed);
    for (conn = srv->conns; conn != NULL; conn = next) {
        next = conn->next;
        if (conn->is_closing)
            continue;
        conn->is_input_done = true;
        conn_stop_reading(conn);
        if (conn->parsing != NULL) {               /* a request not yet complete is dropped */
            req_unref(conn->parsing);
            conn->parsing = NULL;
        }
        if (conn->is_lingering || (conn->head == NULL && conn->write_bytes == 0))
            conn_close_now(conn);
        else if (conn->head == NULL)
            conn_close_graceful(conn);             /* let the last response reach the client */
        else
            conn_update_timer(conn);
    }
}

/* ---- Per-request helpers ---------------------------------------------------------- */

void *bd_http_alloc(struct bd_http_request *req, size_t size)
{
    return arena_alloc(&req_of(req)->arena, size);
}

char *bd_http_strdup(struct bd_http_request *req, const char *s)
{
    size_t n = strlen(s);
    char *p = bd_http_alloc(req, n + 1);

    if (p != NULL)
        memcpy(p, s, n + 1);
    return p;
}

const char *bd_http_header_get(const struct bd_http_request *req, const char *name)
{
    for (unsigned i = 0; i < req->headers_count; i++) {
        if (strcasecmp(req->headers[i].name, name) == 0)
            return req->headers[i].value;
    }
    return NULL;
}

/* A query key with a bad escape never matches; a value with one reads as absent (NULL). */
const char *bd_http_query_get(struct bd_http_request *req, const char *name)
{
    const char *p = req->query;

    while (*p != '\0') {
        const char *amp = strchr(p, '&');
        const char *end = amp ? amp : p + strlen(p);
        const char *eq = memchr(p, '=', (size_t)(end - p));
        const char *key_end = eq ? eq : end;
        char key[256];

        if (bd_url_decode(p, (size_t)(key_end - p), key, sizeof(key), 1) >= 0 &&
            strcmp(key, name) == 0) {
            const char *v = eq ? eq + 1 : end;
            size_t vlen = (size_t)(end - v);
            char *out = bd_http_alloc(req, vlen + 1);

            if (out == NULL || bd_url_decode(v, vlen, out, vlen + 1, 1) < 0)
                return NULL;
            return out;
        }
        p = amp ? amp + 1 : end;
    }
    return NULL;
}

void bd_http_set_abort_cb(struct bd_http_request *req, bd_http_abort_cb cb, void *arg)
{
    struct http_req *r = req_of(req);

    r->abort_cb = cb;
    r->abort_arg = arg;
}

void bd_http_respond(struct bd_http_request *req, int status, const char *content_type,
                     const char *extra_headers, const char *body, size_t body_len)
{
    struct http_req *r = req_of(req);
    struct http_conn *conn = r->conn;

    assert(!r->is_finished && !r->is_streaming);
    r->status = status;
    if (conn != NULL && !conn->is_closing) {
        /* 1xx, 204 and 304 carry neither body nor Content-Length; HEAD keeps the length. */
        bool is_bodyless = status < 200 || status == 204 || status == 304;
        size_t send_len = is_bodyless || r->is_head_method ? 0 : body_len;
        char framing[48] = "";
        struct http_wbuf *w;

        if (!is_bodyless)
            snprintf(framing, sizeof(framing), "Content-Length: %zu\r\n", body_len);
        req_decide_last(r);
        w = resp_head(r, status, content_type, extra_headers, framing, send_len);
        if (w == NULL) {
            bd_log(BD_LOG_WARN, "http", "conn=%llu response: %s", conn->id,
                   bd_strerror(BD_ENOMEM));
            conn_close_now(conn);
        } else {
            if (send_len > 0)
                memcpy(w->data + w->len, body, send_len);
            w->len += send_len;
            req_output(r, w);
        }
    }
    req_report(r);
    req_finish(r);
}

void bd_http_respond_error_ex(struct bd_http_request *req, int status, const char *extra_headers,
                              const char *code, const char *message, const char *field)
{
    static const char fallback[] =
        "{\"error\":{\"code\":\"internal_error\",\"message\":\"internal error\"}}";
    json_t *doc;
    char *body = NULL;

    assert(code != NULL);
    if (message == NULL)
        message = bd_http_status_text(status);
    doc = json_pack("{s:{s:s, s:s}}", "error", "code", code, "message", message);
    if (doc != NULL && field != NULL &&
        json_object_set_new(json_object_get(doc, "error"), "field", json_string(field)) < 0) {
        json_decref(doc);
        doc = NULL;
    }
    if (doc != NULL)
        body = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    if (body != NULL)
        bd_http_respond(req, status, "application/json", extra_headers, body, strlen(body));
    else                                           /* ENOMEM, or a message not UTF-8 */
        bd_http_respond(req, status, "application/json", extra_headers, fallback,
                        sizeof(fallback) - 1);
    free(body);
}

void bd_http_respond_error(struct bd_http_request *req, int status, const char *code,
                           const char *message, const char *field)
{
    bd_http_respond_error_ex(req, status, NULL, code, message, field);
}

void bd_http_respond_err(struct bd_http_request *req, int err, const char *message,
                         const char *field)
{
    int status = bd_err_http_status(err);

    if (status == 0)                               /* internal-only codes never reach HTTP */
        status = 500;
    bd_http_respond_error_ex(req, status, NULL, bd_err_api_code(err),
                             message ? message : bd_strerror(err), field);
}

int bd_http_stream_begin(struct bd_http_request *req, int status, const char *content_type,
                         const char *extra_headers)
{
    struct http_req *r = req_of(req);
    struct http_conn *conn = r->conn;
    struct http_wbuf *w;

    assert(!r->is_finished && !r->is_streaming);
    r->is_streaming = true;
    r->status = status;
    if (conn == NULL || conn->is_closing)
        return UV_ECONNRESET;
    /* HTTP/1.0 has no chunked coding: the body ends when the connection closes. */
    if (r->is_http10) {
        r->is_raw_stream = true;
        r->is_last = true;
    }
    req_decide_last(r);
    w = resp_head(r, status, content_type, extra_headers,
                  r->is_raw_stream ? "" : "Transfer-Encoding: chunked\r\n", 0);
    if (w == NULL) {
        conn_close_now(conn);
        return BD_ENOMEM;
    }
    req_output(r, w);
    return BD_OK;
}

int bd_http_stream_write(struct bd_http_request *req, const char *data, size_t len)
{
    struct http_req *r = req_of(req);
    struct http_conn *conn = r->conn;
    struct http_wbuf *w;

    assert(r->is_streaming && !r->is_finished);
    if (conn == NULL || conn->is_closing)
        return UV_ECONNRESET;
    if (len == 0 || r->is_head_method)             /* an empty chunk would end the stream */
        return BD_OK;
    if ((w = wbuf_new(len + 24)) == NULL)
        return BD_ENOMEM;
    if (!r->is_raw_stream)
        w->len = (size_t)snprintf(w->data, 24, "%zx\r\n", len);
    memcpy(w->data + w->len, data, len);
    w->len += len;
    if (!r->is_raw_stream) {
        memcpy(w->data + w->len, "\r\n", 2);
        w->len += 2;
    }
    req_output(r, w);
    return BD_OK;
}

size_t bd_http_stream_get_pending(const struct bd_http_request *req)
{
    const struct http_req *r = req_of(req);

    if (r->conn == NULL)
        return 0;
    return r->conn->head == r ? r->conn->write_bytes : r->out_bytes;
}

void bd_http_stream_set_drain_cb(struct bd_http_request *req, bd_http_drain_cb cb, void *arg)
{
    struct http_req *r = req_of(req);

    r->drain_cb = cb;
    r->drain_arg = arg;
    /* Already drained: call back on the next loop turn, never from here. */
    if (cb != NULL && r->conn != NULL && bd_http_stream_get_pending(req) == 0)
        conn_schedule_service(r->conn);
}

void bd_http_stream_end(struct bd_http_request *req)
{
    struct http_req *r = req_of(req);

    assert(r->is_streaming && !r->is_finished);
    if (r->conn != NULL && !r->conn->is_closing && !r->is_raw_stream && !r->is_head_method) {
        struct http_wbuf *w = wbuf_new(5);

        if (w == NULL) {
            conn_close_now(r->conn);
        } else {
            memcpy(w->data, "0\r\n\r\n", 5);
            w->len = 5;
            req_output(r, w);
        }
    }
    req_report(r);
    req_finish(r);
}

const char *bd_http_status_text(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default:  return "Unknown";
    }
}
