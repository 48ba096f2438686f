/* http_internal.h -- what the HTTP server's three files share; not a public header.
 *
 * http_server.c: connections, requests and their arenas, the server's lifecycle.
 * http_parse.c: the llhttp callbacks that turn bytes into a struct http_req.
 * http_response.c: ordered output, bd_http_respond*() and bd_http_stream_*().
 * Loop thread only. Everything here is bd__http_ (libuv's uv__ rule); nothing outside
 * these three files includes it.  SPDX-License-Identifier: MIT
 */
#ifndef BATCHD_HTTP_INTERNAL_H
#define BATCHD_HTTP_INTERNAL_H

#include "batchd/http_server.h"

#include <llhttp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HTTP_IN_BUF          16384      /* per-connection read buffer */
#define HTTP_MAX_QUEUED      16         /* complete requests waiting before reading stops */
#define HTTP_MAX_WRITE_QUEUE (1u << 20) /* unwritten bytes before reading stops */
#define HTTP_LINGER_MS       1000
#define HTTP_ARENA_INLINE    2048       /* arena bytes inside struct http_req */
#define HTTP_ARENA_CHUNK     4096
#define HTTP_FREE_REQS       64         /* request structs kept for reuse */
#define HTTP_BACKLOG         511
#define HTTP_ALIGN           _Alignof(max_align_t)

#define HTTP_DEFAULT_MAX_CONNECTIONS  4096u
#define HTTP_DEFAULT_MAX_HEADER_BYTES (16u * 1024)
#define HTTP_DEFAULT_MAX_URL_BYTES    (8u * 1024)
#define HTTP_DEFAULT_MAX_BODY_BYTES   ((size_t)16 * 1024 * 1024)
#define HTTP_DEFAULT_IDLE_MS          60000u
#define HTTP_DEFAULT_REQUEST_MS       30000u
#define HTTP_DEFAULT_SHUTDOWN_MS      5000u
#define HTTP_DEFAULT_WRITE_MS         60000u
#define HTTP_DEFAULT_MIN_BODY_RATE    1024u     /* bytes/s a long streamed body averages */
#define HTTP_WRITE_SWEEP_MS           1000u     /* how often stalled writes are looked for */
#define HTTP_EVICT_AGE_MS             1000u     /* silent this long: may make room (srv_evict) */

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
    bd_http_body_cb body_cb;           /* streamed body: the handler's receiver */
    void *body_arg;
    uint64_t content_length;           /* declared, when has_content_length */
    uint64_t body_limit;               /* 0: opt.max_body_bytes */
    uint64_t body_received;            /* streamed bytes so far */
    uint64_t timeout_ms;               /* 0: opt.request_timeout_ms */
    uint64_t paused_ns;                /* time the body was paused, before the current pause */
    uint64_t pause_start_ns;
    int body_status;                   /* for on_body's final call */
    bool has_body;                     /* chunked, or Content-Length > 0 */
    bool has_content_length;
    bool is_headers_pending;           /* on_headers not yet called */
    bool is_in_headers_cb;             /* on_headers is on the stack */
    bool is_taken;                     /* queued and handed to the handler at headers time */
    bool is_body_stream;               /* body goes to body_cb */
    bool is_body_paused;
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
    size_t held_bytes;                 /* output of later requests held behind the head */
    size_t write_left;                 /* tcp.write_queue_size at the last sweep */
    size_t write_unacked;              /* the kernel's unacknowledged bytes then */
    uint64_t write_progress_ns;        /* last time the socket took some of our output */
    uint64_t input_ns;                 /* last time bytes arrived (or a paused body resumed) */
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
    bool is_parse_held;                /* a request is in its handler: parse no further */
    bool is_processing;                /* conn_process_input() is on the stack */
    bool is_shutting;                  /* uv_shutdown() requested */
    bool is_lingering;                 /* write side shut; dropping input until EOF */
    bool is_closing;                   /* uv_close() requested */
    bool is_service_pending;
    bool is_body_resumed;              /* service must restart a paused body */
    bool is_parser_pending;            /* llhttp was paused: it may have work without input */
    const char *body_at;               /* streamed piece llhttp just handed over (in in[]) */
    size_t body_at_len;
    size_t in_off;
    size_t in_len;
    char in[HTTP_IN_BUF];
};

struct bd_http_server {
    uv_loop_t *loop;
    uv_tcp_t listener;
    uv_idle_t service_idle;            /* runs deferred work: resumed reads, drain callbacks */
    uv_timer_t close_timer;            /* bd_http_server_close's deadline */
    uv_timer_t write_timer;            /* sweep: connections whose output stalled */
    unsigned handles_closing;          /* at the end: service_idle, close_timer, write_timer */
    struct bd_http_options opt;
    llhttp_settings_t settings;
    struct http_conn *conns;
    struct http_conn *service;
    struct http_req *free_reqs;
    unsigned free_count;
    unsigned conn_count;               /* all open connections */
    unsigned serving_count;            /* those counted against max_connections */
    unsigned req_count;                /* live requests, attached or not */
    unsigned long long rejected;       /* connections refused for max_connections */
    unsigned long long evicted;        /* connections closed to make room (srv_evict) */
    uint64_t full_logged_ns;           /* last "connections_full" warning */
    unsigned long long next_conn_id;
    bool is_listening;
    bool is_closing;
    bool is_listener_closed;
    bool is_finishing;
    bd_http_closed_cb closed_cb;
    void *closed_arg;
};

/* ---- http_server.c ------------------------------------------------------------------ */

/* The request behind a handler's pointer. */
static inline struct http_req *bd__http_req_of(const struct bd_http_request *pub)
{
    return (struct http_req *)((char *)pub - offsetof(struct http_req, pub));
}

/* Arena memory for one request, aligned to max_align_t; NULL on ENOMEM. Freed with the
 * request. */
void *bd__http_arena_alloc(struct http_arena *a, size_t size);

/* A request for conn holding the connection's reference (from the free list or malloc);
 * NULL on ENOMEM. */
struct http_req *bd__http_req_new(struct http_conn *conn);

/* Drop one reference; the last one frees the request (output it never sent included). */
void bd__http_req_unref(struct http_req *r);

/* True when conn holds as much as it may (requests, bodies, unwritten output, or a full
 * input buffer while a request is in its handler). */
bool bd__http_conn_must_pause(const struct http_conn *conn);

/* True when the last request parsed is still in its handler: the next is parsed after. */
bool bd__http_conn_is_busy(const struct http_conn *conn);

/* Run conn's deferred work (resumed reads, drain callbacks) from the server's idle handle. */
void bd__http_conn_schedule_service(struct http_conn *conn);

/* Close now (both handles); requests a handler holds are detached and aborted in the close
 * callback. Idempotent. */
void bd__http_conn_close_now(struct http_conn *conn);

/* Close after everything queued has been written: shut the write side, then linger. */
void bd__http_conn_close_graceful(struct http_conn *conn);

/* Arm the idle or request timer for conn's current state (or stop it). */
void bd__http_conn_update_timer(struct http_conn *conn);

/* r (taken at headers time) was answered before its body ended, or wants no more of it:
 * parse nothing more on conn, and close it after r's answer. No-op unless r is being parsed. */
void bd__http_conn_abandon_body(struct http_conn *conn, struct http_req *r);

/* The body limit that applies to r. */
uint64_t bd__http_req_body_limit(const struct http_req *r);

/* ---- http_parse.c ------------------------------------------------------------------- */

/* Fill s with the llhttp callbacks; each parser's data points at its struct http_conn. */
void bd__http_parser_settings_init(llhttp_settings_t *s);

/* What follows complete headers once r's body mode is known: the Content-Length check
 * against r's limit, the body buffer (buffered bodies only), "100 Continue". BD_OK or
 * BD_ETOOLARGE/BD_ENOMEM (nothing answered). */
int bd__http_headers_finish(struct http_conn *conn, struct http_req *r);

/* ---- http_response.c ---------------------------------------------------------------- */

/* A write buffer with room for cap bytes (len 0); NULL on ENOMEM. Freed by the write. */
struct http_wbuf *bd__http_wbuf_new(size_t cap);

/* Hand w to the socket now (takes ownership of w); on failure closes conn. */
void bd__http_conn_write(struct http_conn *conn, struct http_wbuf *w);

/* http_server.c, used by http_body.c */
void bd__http_conn_queue_push(struct http_conn *conn, struct http_req *r);
void bd__http_conn_stop_reading(struct http_conn *conn);
void bd__http_conn_fail(struct http_conn *conn, int err, const char *reason);

/* http_body.c: streamed bodies */
void bd__http_conn_stop_request_timer(struct http_conn *conn);
void bd__http_req_body_end(struct http_req *r);
void bd__http_conn_body_fail(struct http_conn *conn, struct http_req *r, int err);
void bd__http_conn_deliver_body(struct http_conn *conn, struct http_req *r);
void bd__http_conn_on_headers(struct http_conn *conn);

#endif
