/* it_http.c -- integration tests for http_server.c + router.c, in process.
 *
 * Each case runs a bd_http_server on its own uv loop in a second thread and talks to it from
 * the test thread with plain blocking sockets (test/support's raw client, bd_it_raw_*):
 * keep-alive, pipelining (slow async head included), chunked bodies, 100-continue, limits
 * (413/414/431/503), timeouts (idle, 408), malformed input, 404/405, streams, many sequential
 * and concurrent connections, aborts and a graceful close; streamed request bodies (a streaming
 * route, POST /upload: 100 MB chunked in bounded memory, pause/resume, an answer mid-body,
 * a client leaving mid-body, per-request limits, pipelining behind a streamed body). Every case counts its callbacks
 * and asserts, after the loop has stopped, that bd_http_server_close() called back once and
 * uv_loop_close() == 0.
 * SPDX-License-Identifier: MIT
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <uv.h>

#include "batchd/buf.h"
#include "batchd/error.h"
#include "batchd/http_server.h"
#include "batchd/log.h"
#include "batchd/router.h"
#include "bd_it.h"

#define SLOW_MS 200
#define HTTP_TEST_IN_BUF 16384         /* the server's read buffer: the largest piece */

/* cmocka's assert_*() longjmp: only the test thread may use them. The loop thread aborts. */
#define LOOP_CHECK(cond)                                                          \
    do {                                                                          \
        if (!(cond)) {                                                            \
            fprintf(stderr, "%s:%d: loop thread check failed: %s\n", __FILE__,    \
                    __LINE__, #cond);                                             \
            abort();                                                              \
        }                                                                         \
    } while (0)

/* ---- The server under test, on its own loop thread --------------------------------- */

struct it_srv {
    uv_loop_t loop;
    uv_async_t stop_async;
    pthread_t thread;
    struct bd_http_server *srv;
    struct bd_router *router;
    int port;
    int loop_close_rc;
    atomic_uint requests;              /* on_request */
    atomic_uint responses;             /* on_response */
    atomic_uint aborts;
    atomic_uint slow_started;
    atomic_uint slow_fired;
    atomic_uint drains;
    atomic_uint closed;
    atomic_int last_status;
    atomic_uint uploads;               /* streamed uploads that started */
    atomic_uint upload_ends;           /* on_body's final call */
    atomic_uint upload_aborts;
    atomic_ullong upload_bytes;        /* body bytes the last upload received */
    atomic_uint upload_pauses;
    atomic_uint bigs;                  /* GET /big answered */
    atomic_uint flood_aborts;
};

/* One streamed upload (POST /upload): counts bytes and a checksum of the body. */
struct upload {
    struct it_srv *s;
    struct bd_http_request *req;
    uv_timer_t timer;                  /* resumes a paused body */
    uint64_t bytes;
    uint64_t sum;                      /* FNV-1a 64 of the body, order-sensitive */
    uint64_t fail_at;                  /* answer 400 once this many bytes arrived (0: never) */
    bool is_pausing;                   /* pause after each piece, resume from the timer */
    uint64_t pause_ms;
    bool is_paused;
    bool is_in_resume;
    bool is_answered;
    bool is_aborted;
};

struct slow_call {
    uv_timer_t timer;
    struct bd_http_request *req;
    struct it_srv *s;
};

static void on_request(struct bd_http_request *req, void *arg)
{
    struct it_srv *s = arg;

    atomic_fetch_add(&s->requests, 1);
    bd_router_dispatch(req, s->router);
}

static void on_response(const struct bd_http_request *req, int status, uint64_t duration_ns,
                        void *arg)
{
    struct it_srv *s = arg;

    (void)req;
    (void)duration_ns;
    atomic_store(&s->last_status, status);
    atomic_fetch_add(&s->responses, 1);
}

static void h_healthz(struct bd_http_request *req, void *arg)
{
    static const char body[] = "{\"status\":\"ok\"}";

    (void)arg;
    bd_http_respond(req, 200, "application/json", NULL, body, sizeof(body) - 1);
}

static void h_job(struct bd_http_request *req, void *arg)
{
    const char *q = bd_http_query_get(req, "q");
    json_t *doc = json_pack("{s:s, s:s, s:s*}", "id", req->params[0], "method", req->method,
                            "q", q);
    char *body = json_dumps(doc, JSON_COMPACT);

    (void)arg;
    LOOP_CHECK(body != NULL);
    bd_http_respond(req, 200, "application/json", NULL, body, strlen(body));
    free(body);
    json_decref(doc);
}

static void h_echo(struct bd_http_request *req, void *arg)
{
    (void)arg;
    bd_http_respond(req, 200, "application/octet-stream", NULL, req->body, req->body_len);
}

static void h_err(struct bd_http_request *req, void *arg)
{
    (void)arg;
    bd_http_respond_error(req, 422, "validation_error", "data must not be empty", "data");
}

static void slow_on_abort(struct bd_http_request *req, void *arg)
{
    struct slow_call *call = arg;

    (void)req;
    atomic_fetch_add(&call->s->aborts, 1);
}

static void slow_on_closed(uv_handle_t *handle)
{
    free(handle->data);
}

static void slow_on_timer(uv_timer_t *timer)
{
    struct slow_call *call = timer->data;

    atomic_fetch_add(&call->s->slow_fired, 1);
    bd_http_respond(call->req, 200, "text/plain", NULL, "slow", 4);  /* client may be gone */
    uv_close((uv_handle_t *)&call->timer, slow_on_closed);
}

static void h_slow(struct bd_http_request *req, void *arg)
{
    struct it_srv *s = arg;
    struct slow_call *call = calloc(1, sizeof(*call));

    LOOP_CHECK(call != NULL);
    call->req = req;
    call->s = s;
    call->timer.data = call;
    atomic_fetch_add(&s->slow_started, 1);
    bd_http_set_abort_cb(req, slow_on_abort, call);
    LOOP_CHECK(uv_timer_init(&s->loop, &call->timer) == 0);
    LOOP_CHECK(uv_timer_start(&call->timer, slow_on_timer, SLOW_MS, 0) == 0);
}

static void stream_on_drain(struct bd_http_request *req, void *arg)
{
    struct it_srv *s = arg;

    atomic_fetch_add(&s->drains, 1);
    bd_http_stream_write(req, "part2\n", 6);
    bd_http_stream_end(req);
}

static void h_stream(struct bd_http_request *req, void *arg)
{
    struct it_srv *s = arg;

    if (bd_http_stream_begin(req, 200, "text/plain", "X-Stream: 1\r\n") < 0 ||
        bd_http_stream_write(req, "part1\n", 6) < 0) {
        bd_http_stream_end(req);
        return;
    }
    bd_http_stream_set_drain_cb(req, stream_on_drain, s);
}

/* GET /forever: a stream that never ends by itself (an event stream, or a client that
 * stopped reading): only the abort callback ends it. */
static void forever_on_abort(struct bd_http_request *req, void *arg)
{
    struct it_srv *s = arg;

    atomic_fetch_add(&s->aborts, 1);
    bd_http_stream_end(req);
}

static void h_forever(struct bd_http_request *req, void *arg)
{
    struct it_srv *s = arg;

    bd_http_set_abort_cb(req, forever_on_abort, s);
    if (bd_http_stream_begin(req, 200, "text/plain", NULL) < 0 ||
        bd_http_stream_write(req, "tick\n", 5) < 0)
        return;                                    /* the abort callback ends it */
    atomic_fetch_add(&s->slow_started, 1);
}

/* GET /big: a 600 KiB answer at once (a results page). */
#define BIG_BYTES (600 * 1024)

static void h_big(struct bd_http_request *req, void *arg)
{
    struct it_srv *s = arg;
    char *body = malloc(BIG_BYTES);

    LOOP_CHECK(body != NULL);
    memset(body, 'b', BIG_BYTES);
    atomic_fetch_add(&s->bigs, 1);
    bd_http_respond(req, 200, "text/plain", NULL, body, BIG_BYTES);
    free(body);
}

/* GET /flood: an endless download that writes 64 KiB more each time the socket drained
 * (a results stream that keeps up with any reader); only the abort callback ends it. */
static void flood_write(struct bd_http_request *req, struct it_srv *s);

static void flood_on_drain(struct bd_http_request *req, void *arg)
{
    flood_write(req, arg);
}

static void flood_on_abort(struct bd_http_request *req, void *arg)
{
    struct it_srv *s = arg;

    atomic_fetch_add(&s->flood_aborts, 1);
    bd_http_stream_end(req);
}

static void flood_write(struct bd_http_request *req, struct it_srv *s)
{
    static char chunk[64 * 1024];

    memset(chunk, 'f', sizeof(chunk));
    if (bd_http_stream_write(req, chunk, sizeof(chunk)) < 0)
        return;                                    /* the abort callback ends it */
    bd_http_stream_set_drain_cb(req, flood_on_drain, s);
}

static void h_flood(struct bd_http_request *req, void *arg)
{
    struct it_srv *s = arg;

    bd_http_set_abort_cb(req, flood_on_abort, s);
    if (bd_http_stream_begin(req, 200, "text/plain", NULL) < 0)
        return;
    atomic_fetch_add(&s->slow_started, 1);
    flood_write(req, s);
}

#define FNV_OFFSET 0xcbf29ce484222325ull
#define FNV_PRIME  0x100000001b3ull

static uint64_t fnv1a(uint64_t h, const char *data, size_t len)
{
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)data[i]) * FNV_PRIME;
    return h;
}

static void upload_on_timer_closed(uv_handle_t *handle)
{
    free(handle->data);
}

/* The handler is done with req (answered or aborted): the timer goes, then u. */
static void upload_free(struct upload *u)
{
    uv_close((uv_handle_t *)&u->timer, upload_on_timer_closed);
}

static void upload_answer(struct upload *u, int status)
{
    char text[96];
    int n;

    LOOP_CHECK(!u->is_answered);
    u->is_answered = true;
    atomic_store(&u->s->upload_bytes, u->bytes);
    if (u->is_aborted)
        return;                                    /* answered (freed) by the abort callback */
    if (status < 0) {
        bd_http_respond_err(u->req, status, NULL, NULL);
    } else if (status == 400) {
        bd_http_respond_error(u->req, 400, "bad_request", "bad byte in body", NULL);
    } else {
        n = snprintf(text, sizeof(text), "bytes=%llu sum=%016llx",
                     (unsigned long long)u->bytes, (unsigned long long)u->sum);
        bd_http_respond(u->req, 200, "text/plain", NULL, text, (size_t)n);
    }
    upload_free(u);
}

static void upload_on_resume_timer(uv_timer_t *timer)
{
    struct upload *u = timer->data;

    if (u->is_answered)
        return;
    u->is_paused = false;
    u->is_in_resume = true;
    bd_http_body_resume(u->req);                   /* on_body must not run from in here */
    u->is_in_resume = false;
}

static int upload_on_body(struct bd_http_request *req, const char *data, size_t len, void *arg)
{
    struct upload *u = arg;

    LOOP_CHECK(req == u->req);
    LOOP_CHECK(!u->is_answered && !u->is_aborted && !u->is_paused && !u->is_in_resume);
    LOOP_CHECK(req->body == NULL && req->body_len == 0);   /* never buffered */
    if (data == NULL) {
        LOOP_CHECK(len == 0);
        atomic_fetch_add(&u->s->upload_ends, 1);
        LOOP_CHECK(bd_http_body_get_status(req) < 0 ||
                   bd_http_body_get_received(req) == u->bytes);
        upload_answer(u, bd_http_body_get_status(req));
        return 0;
    }
    LOOP_CHECK(len > 0);
    u->bytes += len;
    u->sum = fnv1a(u->sum, data, len);
    if (u->fail_at > 0 && u->bytes >= u->fail_at) {
        upload_answer(u, 400);                     /* mid-body: the connection closes */
        return -1;
    }
    if (u->is_pausing) {
        u->is_paused = true;
        atomic_fetch_add(&u->s->upload_pauses, 1);
        bd_http_body_pause(req);
        LOOP_CHECK(uv_timer_start(&u->timer, upload_on_resume_timer, u->pause_ms, 0) == 0);
    }
    return 0;
}

static void upload_on_abort(struct bd_http_request *req, void *arg)
{
    struct upload *u = arg;

    LOOP_CHECK(!u->is_aborted);
    u->is_aborted = true;
    atomic_fetch_add(&u->s->upload_aborts, 1);
    if (!u->is_answered) {                         /* the handler still finishes req */
        u->is_answered = true;
        atomic_store(&u->s->upload_bytes, u->bytes);
        bd_http_respond(req, 200, "text/plain", NULL, "", 0);
        upload_free(u);
    }
}

/* POST /upload?limit=N&pause=MS&fail_at=N&buffer=1: a streaming route. buffer=1 declines the
 * stream (the body is then buffered and h_echo answers it, as for any route). */
static void upload_on_headers(struct bd_http_request *req, void *arg)
{
    struct it_srv *s = arg;
    const char *limit = bd_http_query_get(req, "limit");
    const char *fail_at = bd_http_query_get(req, "fail_at");
    struct upload *u;

    LOOP_CHECK(strcmp(req->route, "/upload") == 0);
    bd_http_body_set_limit(req, limit ? strtoull(limit, NULL, 10) : 256ull << 20);
    if (bd_http_query_get(req, "timeout") != NULL)
        bd_http_body_set_timeout(req, strtoull(bd_http_query_get(req, "timeout"), NULL, 10));
    if (bd_http_query_get(req, "buffer") != NULL)
        return;
    LOOP_CHECK((u = calloc(1, sizeof(*u))) != NULL);
    u->s = s;
    u->req = req;
    u->sum = FNV_OFFSET;
    u->fail_at = fail_at ? strtoull(fail_at, NULL, 10) : 0;
    u->is_pausing = bd_http_query_get(req, "pause") != NULL;
    u->pause_ms = u->is_pausing ? strtoull(bd_http_query_get(req, "pause"), NULL, 10) : 0;
    u->timer.data = u;
    LOOP_CHECK(uv_timer_init(&s->loop, &u->timer) == 0);
    atomic_fetch_add(&s->uploads, 1);
    bd_http_set_abort_cb(req, upload_on_abort, u);
    LOOP_CHECK(bd_http_body_stream(req, upload_on_body, u) == BD_OK);
}

static void on_headers(struct bd_http_request *req, void *arg)
{
    struct it_srv *s = arg;

    bd_router_dispatch_headers(req, s->router);
}

static void *loop_thread(void *arg)
{
    struct it_srv *s = arg;

    uv_run(&s->loop, UV_RUN_DEFAULT);
    s->loop_close_rc = uv_loop_close(&s->loop);
    return NULL;
}

static void srv_on_closed(struct bd_http_server *srv, void *arg)
{
    struct it_srv *s = arg;

    LOOP_CHECK(srv == s->srv);
    atomic_fetch_add(&s->closed, 1);
}

static void stop_on_async(uv_async_t *async)
{
    struct it_srv *s = async->data;

    bd_http_server_close(s->srv, srv_on_closed, s);
    uv_close((uv_handle_t *)async, NULL);
}

static struct it_srv *srv_start(const struct bd_http_options *base)
{
    struct it_srv *s = calloc(1, sizeof(*s));
    struct bd_http_options opt = *base;

    assert_non_null(s);
    assert_int_equal(uv_loop_init(&s->loop), 0);
    s->router = bd_router_new();
    assert_non_null(s->router);
    assert_int_equal(bd_router_add(s->router, "GET", "/healthz", h_healthz, s), BD_OK);
    assert_int_equal(bd_router_add(s->router, "GET", "/api/v1/batch/jobs/{id}", h_job, s),
                     BD_OK);
    assert_int_equal(bd_router_add(s->router, "DELETE", "/api/v1/batch/jobs/{id}", h_job, s),
                     BD_OK);
    assert_int_equal(bd_router_add(s->router, "POST", "/echo", h_echo, s), BD_OK);
    assert_int_equal(bd_router_add(s->router, "GET", "/slow", h_slow, s), BD_OK);
    assert_int_equal(bd_router_add(s->router, "GET", "/stream", h_stream, s), BD_OK);
    assert_int_equal(bd_router_add(s->router, "GET", "/forever", h_forever, s), BD_OK);
    assert_int_equal(bd_router_add(s->router, "GET", "/err", h_err, s), BD_OK);
    assert_int_equal(bd_router_add(s->router, "GET", "/big", h_big, s), BD_OK);
    assert_int_equal(bd_router_add(s->router, "GET", "/flood", h_flood, s), BD_OK);
    assert_int_equal(bd_router_add_stream(s->router, "POST", "/upload", upload_on_headers,
                                          h_echo, s), BD_OK);
    opt.on_request = on_request;
    opt.on_headers = on_headers;                   /* every case runs with the hook on */
    opt.on_headers_arg = s;
    opt.on_request_arg = s;
    opt.on_response = on_response;
    opt.on_response_arg = s;
    assert_int_equal(bd_http_server_new(&s->loop, &opt, &s->srv), BD_OK);
    assert_int_equal(bd_http_server_listen(s->srv, "127.0.0.1", 0), BD_OK);
    s->port = bd_http_server_get_port(s->srv);
    assert_true(s->port > 0);
    assert_int_equal(uv_async_init(&s->loop, &s->stop_async, stop_on_async), 0);
    s->stop_async.data = s;
    assert_int_equal(pthread_create(&s->thread, NULL, loop_thread, s), 0);
    return s;
}

/* Close the server from its loop, wait for the loop to end, check it ended clean. */
static void srv_stop(struct it_srv *s)
{
    assert_int_equal(uv_async_send(&s->stop_async), 0);
    assert_int_equal(pthread_join(s->thread, NULL), 0);
    assert_int_equal(atomic_load(&s->closed), 1);
    assert_int_equal(s->loop_close_rc, 0);              /* no handle leaked */
    bd_router_free(s->router);
}

static void srv_free(struct it_srv *s)
{
    free(s);
}

/* ---- The client: test/support's raw socket client ------------------------------------ */

#define READ_TIMEOUT_MS 5000           /* per read: a response that stalls this long fails */

/* Read the next response on c into r (freeing what r held) and check that it is HTTP/1.1.
 * 0, or -1 on EOF or timeout before a full response. 1xx responses come back on their own. */
static int read_resp(struct bd_it_raw *c, struct bd_it_resp *r, bool is_head_request)
{
    bd_it_resp_free(r);
    if (bd_it_raw_response(c, r, is_head_request, READ_TIMEOUT_MS) != 0)
        return -1;
    assert_int_equal(strncmp(r->headers, "HTTP/1.1 ", 9), 0);
    return 0;
}

static void request(struct bd_it_raw *c, const char *raw, struct bd_it_resp *r)
{
    bd_it_raw_send(c, raw);
    assert_int_equal(read_resp(c, r, strncmp(raw, "HEAD ", 5) == 0), 0);
}

/* Parse r's body as {"error":{"code":code,...}} and check the code. */
static void assert_json_error(const struct bd_it_resp *r, const char *code)
{
    char ct[64];
    json_error_t jerr;
    json_t *doc = json_loadb(r->body, r->len, 0, &jerr);
    json_t *err = json_object_get(doc, "error");

    assert_non_null(bd_it_resp_header(r, "Content-Type", ct, sizeof(ct)));
    assert_string_equal(ct, "application/json");
    assert_non_null(doc);
    assert_true(json_is_object(err));
    assert_string_equal(json_string_value(json_object_get(err, "code")), code);
    assert_true(json_is_string(json_object_get(err, "message")));
    json_decref(doc);
}

static bool has_close(const struct bd_it_resp *r)
{
    char v[32];

    return bd_it_resp_header(r, "Connection", v, sizeof(v)) != NULL &&
           strcasecmp(v, "close") == 0;
}

static const struct bd_http_options default_opt = {
    .max_connections = 256,
    .max_header_bytes = 4096,
    .max_url_bytes = 1024,
    .max_body_bytes = 64 * 1024,
    .idle_timeout_ms = 5000,
    .request_timeout_ms = 5000,
};

#define GET_HEALTHZ "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"

/* ---- Cases --------------------------------------------------------------------------- */

static void http_keeps_connection_alive_when_http11(void **state)
{
    struct it_srv *s = srv_start(&default_opt);
    struct bd_it_raw c;
    struct bd_it_resp r = { 0 };
    char v[64];

    (void)state;
    bd_it_raw_connect(&c, s->port);
    for (int i = 0; i < 5; i++) {
        request(&c, GET_HEALTHZ, &r);
        assert_int_equal(r.status, 200);
        assert_string_equal(r.body, "{\"status\":\"ok\"}");
        assert_false(has_close(&r));
    }
    /* HEAD: the length of the GET body, no body bytes (the next response must parse). */
    request(&c, "HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(bd_it_resp_header(&r, "Content-Length", v, sizeof(v)), "15");
    request(&c, "GET /api/v1/batch/jobs/a%2Fb%20c?q=x+y%21&z=1 HTTP/1.1\r\nHost: t\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "{\"id\":\"a/b c\",\"method\":\"GET\",\"q\":\"x y!\"}");
    request(&c, "DELETE /api/v1/batch/jobs/j1 HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
             &r);
    assert_string_equal(r.body, "{\"id\":\"j1\",\"method\":\"DELETE\"}");
    /* Connection: close from the client is honoured. */
    request(&c, "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", &r);
    assert_true(has_close(&r));
    assert_true(bd_it_raw_sees_close(&c, 2000));
    bd_it_raw_close(&c);
    srv_stop(s);
    assert_int_equal(atomic_load(&s->requests), 9);
    assert_int_equal(atomic_load(&s->responses), 9);
    bd_it_resp_free(&r);
    srv_free(s);
}

static void http_answers_pipeline_in_order_when_head_is_slow(void **state)
{
    struct it_srv *s = srv_start(&default_opt);
    struct bd_it_raw c;
    struct bd_it_resp r = { 0 };
    double t0;

    (void)state;
    bd_it_raw_connect(&c, s->port);
    t0 = bd_it_now();
    bd_it_raw_send(&c, "GET /slow HTTP/1.1\r\nHost: t\r\n\r\n"
                   GET_HEALTHZ
                   "GET /api/v1/batch/jobs/third HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_int_equal(read_resp(&c, &r, false), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "slow");
    assert_true(bd_it_now() - t0 >= SLOW_MS / 1000.0 * 0.9);
    assert_int_equal(read_resp(&c, &r, false), 0);
    assert_string_equal(r.body, "{\"status\":\"ok\"}");
    assert_int_equal(read_resp(&c, &r, false), 0);
    assert_string_equal(r.body, "{\"id\":\"third\",\"method\":\"GET\"}");

    /* Three fast ones in one send, then one more on the same connection. */
    bd_it_raw_send(&c, GET_HEALTHZ "GET /api/v1/batch/jobs/2 HTTP/1.1\r\nHost: t\r\n\r\n"
                       GET_HEALTHZ);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(read_resp(&c, &r, false), 0);
        assert_int_equal(r.status, 200);
        assert_string_equal(r.body, i == 1 ? "{\"id\":\"2\",\"method\":\"GET\"}"
                                           : "{\"status\":\"ok\"}");
    }
    bd_it_raw_close(&c);
    srv_stop(s);
    assert_int_equal(atomic_load(&s->requests), 6);
    assert_int_equal(atomic_load(&s->responses), 6);
    assert_int_equal(atomic_load(&s->slow_fired), 1);
    assert_int_equal(atomic_load(&s->aborts), 0);
    bd_it_resp_free(&r);
    srv_free(s);
}

/* More than the 16 queued requests that stop reading: all answered, in order. */
static void http_answers_long_pipeline_when_queue_limit_exceeded(void **state)
{
    struct it_srv *s = srv_start(&default_opt);
    struct bd_it_raw c;
    static char batch[200 * 64];
    size_t len = 0;
    struct bd_it_resp r = { 0 };
    char want[64];

    (void)state;
    bd_it_raw_connect(&c, s->port);
    len += (size_t)snprintf(batch, sizeof(batch), "GET /slow HTTP/1.1\r\nHost: t\r\n\r\n");
    for (int i = 0; i < 200; i++)
        len += (size_t)snprintf(batch + len, sizeof(batch) - len,
                                "DELETE /api/v1/batch/jobs/%d HTTP/1.1\r\n\r\n", i);
    bd_it_raw_send_n(&c, batch, len);
    assert_int_equal(read_resp(&c, &r, false), 0);
    assert_string_equal(r.body, "slow");
    for (int i = 0; i < 200; i++) {
        assert_int_equal(read_resp(&c, &r, false), 0);
        snprintf(want, sizeof(want), "{\"id\":\"%d\",\"method\":\"DELETE\"}", i);
        assert_string_equal(r.body, want);
    }
    bd_it_raw_close(&c);
    srv_stop(s);
    assert_int_equal(atomic_load(&s->requests), 201);
    assert_int_equal(atomic_load(&s->responses), 201);
    bd_it_resp_free(&r);
    srv_free(s);
}

/* Queued bodies over max_body_bytes also stop reading; everything is still answered. */
static void http_answers_pipelined_bodies_when_over_body_budget(void **state)
{
    struct it_srv *s = srv_start(&default_opt);            /* max_body_bytes 64 KiB */
    struct bd_it_raw c;
    static char body[40 * 1024];
    char head[128];
    struct bd_it_resp r = { 0 };

    (void)state;
    bd_it_raw_connect(&c, s->port);
    bd_it_raw_send(&c, "GET /slow HTTP/1.1\r\n\r\n");
    for (int i = 0; i < 6; i++) {
        memset(body, 'a' + i, sizeof(body));
        snprintf(head, sizeof(head), "POST /echo HTTP/1.1\r\nContent-Length: %zu\r\n\r\n",
                 sizeof(body));
        bd_it_raw_send(&c, head);
        bd_it_raw_send_n(&c, body, sizeof(body));
    }
    assert_int_equal(read_resp(&c, &r, false), 0);
    assert_string_equal(r.body, "slow");
    for (int i = 0; i < 6; i++) {
        assert_int_equal(read_resp(&c, &r, false), 0);
        assert_int_equal(r.len, sizeof(body));
        assert_int_equal(r.body[0], 'a' + i);
        assert_int_equal(r.body[sizeof(body) - 1], 'a' + i);
    }
    bd_it_raw_close(&c);
    srv_stop(s);
    assert_int_equal(atomic_load(&s->requests), 7);
    bd_it_resp_free(&r);
    srv_free(s);
}

static void http_echoes_body_when_chunked(void **state)
{
    struct it_srv *s = srv_start(&default_opt);
    struct bd_it_raw c;
    struct bd_it_resp r = { 0 };

    (void)state;
    bd_it_raw_connect(&c, s->port);
    bd_it_raw_send(&c, "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                   "5\r\nhello\r\n");
    bd_it_sleep_ms(20);
    bd_it_raw_send(&c, "1\r\n \r\n6\r\nwor");
    bd_it_sleep_ms(20);
    bd_it_raw_send(&c, "ld!\r\n0\r\n\r\n");
    assert_int_equal(read_resp(&c, &r, false), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "hello world!");

    /* Content-Length body, and an empty chunked one. */
    request(&c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc", &r);
    assert_string_equal(r.body, "abc");
    request(&c, "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.len, 0);
    bd_it_raw_close(&c);
    srv_stop(s);
    assert_int_equal(atomic_load(&s->requests), 3);
    bd_it_resp_free(&r);
    srv_free(s);
}

static void http_sends_continue_when_expect_100(void **state)
{
    struct it_srv *s = srv_start(&default_opt);
    struct bd_it_raw c;
    struct bd_it_resp r = { 0 };

    (void)state;
    bd_it_raw_connect(&c, s->port);
    bd_it_raw_send(&c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n"
                   "Expect: 100-continue\r\n\r\n");
    assert_int_equal(read_resp(&c, &r, false), 0);
    assert_int_equal(r.status, 100);
    bd_it_raw_send(&c, "ping");
    assert_int_equal(read_resp(&c, &r, false), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "ping");
    bd_it_raw_close(&c);
    srv_stop(s);
    bd_it_resp_free(&r);
    srv_free(s);
}

static void http_rejects_body_with_413_when_over_limit(void **state)
{
    struct bd_http_options opt = default_opt;
    struct it_srv *s;
    struct bd_it_raw c;
    struct bd_it_resp r = { 0 };
    static char big[3000];

    (void)state;
    opt.max_body_bytes = 1024;
    s = srv_start(&opt);

    /* Declared length: refused before the body is read (even with 100-continue). */
    bd_it_raw_connect(&c, s->port);
    bd_it_raw_send(&c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2048\r\n"
                   "Expect: 100-continue\r\n\r\n");
    assert_int_equal(read_resp(&c, &r, false), 0);
    assert_int_equal(r.status, 413);
    assert_json_error(&r, "payload_too_large");
    assert_true(has_close(&r));
    assert_true(bd_it_raw_sees_close(&c, 2000));
    bd_it_raw_close(&c);

    /* Chunked: refused as it grows past the limit. */
    bd_it_raw_connect(&c, s->port);
    memset(big, 'x', sizeof(big));
    bd_it_raw_send(&c, "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                   "400\r\n");
    bd_it_raw_send_n(&c, big, 1024);
    bd_it_raw_send(&c, "\r\n10\r\n0123456789abcdef\r\n");
    assert_int_equal(read_resp(&c, &r, false), 0);
    assert_int_equal(r.status, 413);
    assert_json_error(&r, "payload_too_large");
    assert_true(bd_it_raw_sees_close(&c, 2000));
    bd_it_raw_close(&c);

    /* Exactly at the limit is fine, and the server still serves new connections. */
    bd_it_raw_connect(&c, s->port);
    bd_it_raw_send(&c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1024\r\n\r\n");
    bd_it_raw_send_n(&c, big, 1024);
    assert_int_equal(read_resp(&c, &r, false), 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.len, 1024);
    request(&c, GET_HEALTHZ, &r);
    assert_int_equal(r.status, 200);
    bd_it_raw_close(&c);
    srv_stop(s);
    assert_int_equal(atomic_load(&s->requests), 2);     /* the 413s never reach a handler */
    assert_int_equal(atomic_load(&s->responses), 4);
    bd_it_resp_free(&r);
    srv_free(s);
}

static void http_rejects_with_400_and_closes_when_malformed(void **state)
{
    struct it_srv *s = srv_start(&default_opt);
    static const char *const bad[] = {
        "GARBAGE\r\n\r\n",
        "GET / HTTP/9.9\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nBad Header\r\n\r\n",
        "POST /echo HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    };
    struct bd_it_resp r = { 0 };

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct bd_it_raw c;

        bd_it_raw_connect(&c, s->port);

        bd_it_raw_send(&c, bad[i]);
        assert_int_equal(read_resp(&c, &r, false), 0);
        assert_int_equal(r.status, 400);
        assert_json_error(&r, "bad_request");
        assert_true(has_close(&r));
        assert_true(bd_it_raw_sees_close(&c, 2000));
        bd_it_raw_close(&c);
    }
    /* A good request followed by garbage: the good one is answered first. */
    {
        struct bd_it_raw c;

        bd_it_raw_connect(&c, s->port);

        bd_it_raw_send(&c, GET_HEALTHZ "\x01\x02 nonsense\r\n\r\n");
        assert_int_equal(read_resp(&c, &r, false), 0);
        assert_int_equal(r.status, 200);
        assert_int_equal(read_resp(&c, &r, false), 0);
        assert_int_equal(r.status, 400);
        assert_true(bd_it_raw_sees_close(&c, 2000));
        bd_it_raw_close(&c);
    }
    srv_stop(s);
    assert_int_equal(atomic_load(&s->requests), 1);
    assert_int_equal(atomic_load(&s->responses), 7);
    bd_it_resp_free(&r);
    srv_free(s);
}

static void http_rejects_with_414_when_url_too_long(void **state)
{
    struct bd_http_options opt = default_opt;
    struct it_srv *s;
    struct bd_it_raw c;
    struct bd_it_resp r = { 0 };
    char req[2048];

    (void)state;
    opt.max_url_bytes = 256;
    s = srv_start(&opt);
    bd_it_raw_connect(&c, s->port);
    snprintf(req, sizeof(req), "GET /api/v1/batch/jobs/%0300d HTTP/1.1\r\nHost: t\r\n\r\n", 7);
    bd_it_raw_send(&c, req);
    assert_int_equal(read_resp(&c, &r, false), 0);
    assert_int_equal(r.status, 414);
    assert_json_error(&r, "uri_too_long");
    assert_true(bd_it_raw_sees_close(&c, 2000));
    bd_it_raw_close(&c);
    srv_stop(s);
    assert_int_equal(atomic_load(&s->requests), 0);
    bd_it_resp_free(&r);
    srv_free(s);
}

static void http_rejects_with_431_when_headers_too_large(void **state)
{
    struct bd_http_options opt = default_opt;
    struct it_srv *s;
    struct bd_it_raw c;
    struct bd_it_resp r = { 0 };
    char req[4096];

    (void)state;
    opt.max_header_bytes = 512;
    s = srv_start(&opt);
    bd_it_raw_connect(&c, s->port);
    snprintf(req, sizeof(req), "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: %0600d\r\n\r\n", 1);
    bd_it_raw_send(&c, req);
    assert_int_equal(read_resp(&c, &r, false), 0);
    assert_int_equal(r.status, 431);
    assert_json_error(&r, "header_too_large");
    assert_true(bd_it_raw_sees_close(&c, 2000));
    bd_it_raw_close(&c);

    /* Many small headers add up too. */
    bd_it_raw_connect(&c, s->port);
    bd_it_raw_send(&c, "GET /healthz HTTP/1.1\r\n");
    for (int i = 0; i < 60; i++)
        bd_it_raw_send(&c, "X-Small: 0123456789\r\n");
    bd_it_raw_send(&c, "\r\n");
    assert_int_equal(read_resp(&c, &r, false), 0);
    assert_int_equal(r.status, 431);
    bd_it_raw_close(&c);
    srv_stop(s);
    bd_it_resp_free(&r);
    srv_free(s);
}

static void http_answers_json_404_405_400_when_route_wrong(void **state)
{
    struct it_srv *s = srv_start(&default_opt);
    struct bd_it_raw c;
    struct bd_it_resp r = { 0 };
    char v[64];
    json_t *doc;

    (void)state;
    bd_it_raw_connect(&c, s->port);
    request(&c, "GET /nope HTTP/1.1\r\nHost: t\r\n\r\n", &r);
    assert_int_equal(r.status, 404);
    assert_json_error(&r, "not_found");
    assert_false(has_close(&r));                        /* router errors keep the connection */

    request(&c, "GET /healthz/ HTTP/1.1\r\nHost: t\r\n\r\n", &r);   /* trailing slash */
    assert_int_equal(r.status, 404);

    request(&c, "POST /api/v1/batch/jobs/x HTTP/1.1\r\nContent-Length: 0\r\n\r\n", &r);
    assert_int_equal(r.status, 405);
    assert_json_error(&r, "method_not_allowed");
    assert_non_null(bd_it_resp_header(&r, "Allow", v, sizeof(v)));
    assert_string_equal(v, "GET, DELETE");

    request(&c, "GET /api/v1/batch/jobs/a%zz HTTP/1.1\r\n\r\n", &r);
    assert_int_equal(r.status, 400);
    assert_json_error(&r, "bad_request");

    request(&c, "GET /err HTTP/1.1\r\n\r\n", &r);
    assert_int_equal(r.status, 422);
    doc = json_loadb(r.body, r.len, 0, NULL);
    assert_non_null(doc);
    assert_string_equal(json_string_value(json_object_get(json_object_get(doc, "error"),
                                                          "field")), "data");
    assert_int_equal(json_object_size(json_object_get(doc, "error")), 3);
    assert_int_equal(json_object_size(doc), 1);
    json_decref(doc);

    request(&c, GET_HEALTHZ, &r);
    assert_int_equal(r.status, 200);
    bd_it_raw_close(&c);
    srv_stop(s);
    assert_int_equal(atomic_load(&s->requests), 6);
    assert_int_equal(atomic_load(&s->responses), 6);
    bd_it_resp_free(&r);
    srv_free(s);
}

static void http_streams_chunks_when_handler_streams(void **state)
{
    struct it_srv *s = srv_start(&default_opt);
    struct bd_it_raw c;
    struct bd_it_resp r = { 0 };
    char v[64];

    (void)state;
    bd_it_raw_connect(&c, s->port);
    /* Behind a slow request, so the stream's output is held, then flushed in order. */
    bd_it_raw_send(&c, "GET /slow HTTP/1.1\r\n\r\nGET /stream HTTP/1.1\r\n\r\n" GET_HEALTHZ);
    assert_int_equal(read_resp(&c, &r, false), 0);
    assert_string_equal(r.body, "slow");
    assert_int_equal(read_resp(&c, &r, false), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(bd_it_resp_header(&r, "Transfer-Encoding", v, sizeof(v)), "chunked");
    assert_string_equal(bd_it_resp_header(&r, "X-Stream", v, sizeof(v)), "1");
    assert_string_equal(r.body, "part1\npart2\n");
    assert_int_equal(read_resp(&c, &r, false), 0);
    assert_int_equal(r.status, 200);
    bd_it_raw_close(&c);

    /* HTTP/1.0 has no chunks: the body ends with the connection. */
    bd_it_raw_connect(&c, s->port);
    bd_it_raw_send(&c, "GET /stream HTTP/1.0\r\n\r\n");
    assert_int_equal(read_resp(&c, &r, false), 0);
    assert_true(has_close(&r));
    assert_null(bd_it_resp_header(&r, "Transfer-Encoding", v, sizeof(v)));
    assert_string_equal(r.body, "part1\npart2\n");
    bd_it_raw_close(&c);
    srv_stop(s);
    assert_int_equal(atomic_load(&s->drains), 2);
    assert_int_equal(atomic_load(&s->responses), 4);
    bd_it_resp_free(&r);
    srv_free(s);
}

static void http_closes_after_response_when_http10(void **state)
{
    struct it_srv *s = srv_start(&default_opt);
    struct bd_it_raw c;
    struct bd_it_resp r = { 0 };
    char v[64];

    (void)state;
    bd_it_raw_connect(&c, s->port);
    request(&c, "GET /healthz HTTP/1.0\r\n\r\n", &r);
    assert_true(has_close(&r));
    assert_true(bd_it_raw_sees_close(&c, 2000));
    bd_it_raw_close(&c);

    bd_it_raw_connect(&c, s->port);
    request(&c, "GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", &r);
    assert_string_equal(bd_it_resp_header(&r, "Connection", v, sizeof(v)), "keep-alive");
    request(&c, "GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    bd_it_raw_close(&c);
    srv_stop(s);
    assert_int_equal(atomic_load(&s->requests), 3);
    bd_it_resp_free(&r);
    srv_free(s);
}

static void http_answers_all_when_1000_sequential_connections(void **state)
{
    struct it_srv *s = srv_start(&default_opt);
    struct bd_it_resp r = { 0 };

    (void)state;
    for (int i = 0; i < 1000; i++) {
        struct bd_it_raw c;

        bd_it_raw_connect(&c, s->port);

        request(&c, i % 2 ? GET_HEALTHZ : "GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n",
                 &r);
        assert_int_equal(r.status, 200);
        bd_it_raw_close(&c);
    }
    srv_stop(s);
    assert_int_equal(atomic_load(&s->requests), 1000);
    assert_int_equal(atomic_load(&s->responses), 1000);
    bd_it_resp_free(&r);
    srv_free(s);
}

static void http_answers_all_when_100_concurrent_connections(void **state)
{
    struct it_srv *s = srv_start(&default_opt);
    struct bd_it_raw c[100];
    struct bd_it_resp r = { 0 };
    char path[64], want[64];

    (void)state;
    for (int i = 0; i < 100; i++)
        bd_it_raw_connect(&c[i], s->port);
    for (int i = 0; i < 100; i++) {
        snprintf(path, sizeof(path), "GET /api/v1/batch/jobs/c%d HTTP/1.1\r\n\r\n", i);
        bd_it_raw_send(&c[i], i % 10 == 0 ? "GET /slow HTTP/1.1\r\n\r\n" : path);
    }
    for (int i = 99; i >= 0; i--) {                    /* read in the reverse order */
        assert_int_equal(read_resp(&c[i], &r, false), 0);
        assert_int_equal(r.status, 200);
        snprintf(want, sizeof(want), "{\"id\":\"c%d\",\"method\":\"GET\"}", i);
        assert_string_equal(r.body, i % 10 == 0 ? "slow" : want);
    }
    /* Leave them open: bd_http_server_close() must close idle connections itself. */
    srv_stop(s);
    for (int i = 0; i < 100; i++) {
        assert_true(bd_it_raw_sees_close(&c[i], 2000));
        bd_it_raw_close(&c[i]);
    }
    assert_int_equal(atomic_load(&s->requests), 100);
    assert_int_equal(atomic_load(&s->slow_fired), 10);
    bd_it_resp_free(&r);
    srv_free(s);
}

static void http_closes_connection_when_idle_timeout(void **state)
{
    struct bd_http_options opt = default_opt;
    struct it_srv *s;
    struct bd_it_raw c;
    struct bd_it_resp r = { 0 };
    double t0, waited;

    (void)state;
    opt.idle_timeout_ms = 300;
    s = srv_start(&opt);
    bd_it_raw_connect(&c, s->port);
    request(&c, GET_HEALTHZ, &r);
    /* Activity restarts the clock: a request every 150 ms keeps the connection. */
    for (int i = 0; i < 3; i++) {
        bd_it_sleep_ms(150);
        request(&c, GET_HEALTHZ, &r);
        assert_int_equal(r.status, 200);
    }
    t0 = bd_it_now();
    assert_true(bd_it_raw_sees_close(&c, 3000));
    waited = bd_it_now() - t0;
    assert_true(waited > 0.2 && waited < 1.5);
    bd_it_raw_close(&c);

    /* A connection that never sends a byte is idle too. */
    bd_it_raw_connect(&c, s->port);
    assert_true(bd_it_raw_sees_close(&c, 3000));
    bd_it_raw_close(&c);
    srv_stop(s);
    assert_int_equal(atomic_load(&s->requests), 4);
    bd_it_resp_free(&r);
    srv_free(s);
}

static void http_answers_408_when_request_never_completes(void **state)
{
    struct bd_http_options opt = default_opt;
    struct it_srv *s;
    struct bd_it_raw c;
    struct bd_it_resp r = { 0 };
    double t0;

    (void)state;
    opt.request_timeout_ms = 300;
    s = srv_start(&opt);
    bd_it_raw_connect(&c, s->port);
    t0 = bd_it_now();
    bd_it_raw_send(&c, "GET /healthz HTTP/1.1\r\nHost: t\r\n");
    bd_it_sleep_ms(100);
    bd_it_raw_send(&c, "X-Trickle: 1\r\n");                   /* bytes do not restart the clock */
    assert_int_equal(read_resp(&c, &r, false), 0);
    assert_int_equal(r.status, 408);
    assert_json_error(&r, "request_timeout");
    assert_true(has_close(&r));
    assert_true(bd_it_now() - t0 < 1.5);
    assert_true(bd_it_raw_sees_close(&c, 2000));
    bd_it_raw_close(&c);

    /* Each pipelined request has its own clock: the second starts in the read that ends the
     * first (still being handled), 250 ms after the first began, and is not cut off 50 ms
     * later. */
    bd_it_raw_connect(&c, s->port);
    bd_it_raw_send(&c, "GET /slow HTTP/1.1\r\n");
    bd_it_sleep_ms(250);
    bd_it_raw_send(&c, "Host: t\r\n\r\nGET /healthz HTTP/1.1\r\n");
    bd_it_sleep_ms(150);
    bd_it_raw_send(&c, "Host: t\r\n\r\n");
    assert_int_equal(read_resp(&c, &r, false), 0);
    assert_string_equal(r.body, "slow");
    assert_int_equal(read_resp(&c, &r, false), 0);
    assert_int_equal(r.status, 200);
    bd_it_raw_close(&c);

    /* A body that stalls times out the same way. */
    bd_it_raw_connect(&c, s->port);
    bd_it_raw_send(&c, "POST /echo HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc");
    assert_int_equal(read_resp(&c, &r, false), 0);
    assert_int_equal(r.status, 408);
    bd_it_raw_close(&c);
    srv_stop(s);
    assert_int_equal(atomic_load(&s->requests), 2);
    bd_it_resp_free(&r);
    srv_free(s);
}

static void http_answers_503_when_over_max_connections(void **state)
{
    struct bd_http_options opt = default_opt;
    struct it_srv *s;
    struct bd_it_raw c[4], extra;
    struct bd_it_resp r = { 0 };
    char v[32];
    bool is_served = false;

    (void)state;
    opt.max_connections = 4;
    s = srv_start(&opt);
    for (int i = 0; i < 4; i++) {    /* each busy with a request: none can be made room of */
        bd_it_raw_connect(&c[i], s->port);
        bd_it_raw_send(&c[i], "GET /forever HTTP/1.1\r\nHost: t\r\n\r\n");
        while (atomic_load(&s->slow_started) < (unsigned)i + 1)
            bd_it_sleep_ms(5);
    }
    bd_it_raw_connect(&extra, s->port);
    bd_it_raw_send(&extra, GET_HEALTHZ);
    assert_int_equal(read_resp(&extra, &r, false), 0);
    assert_int_equal(r.status, 503);
    assert_json_error(&r, "server_busy");
    assert_true(has_close(&r));
    assert_string_equal(bd_it_resp_header(&r, "Retry-After", v, sizeof(v)), "1");
    assert_true(bd_it_raw_sees_close(&extra, 2000));
    bd_it_raw_close(&extra);

    /* Once one closes, a new connection is served again. */
    bd_it_raw_close(&c[0]);
    for (double t0 = bd_it_now(); !is_served && bd_it_now() - t0 < 3;) {
        bd_it_raw_connect(&extra, s->port);
        bd_it_raw_send(&extra, GET_HEALTHZ);
        assert_int_equal(read_resp(&extra, &r, false), 0);
        is_served = r.status == 200;
        bd_it_raw_close(&extra);
        if (!is_served)
            bd_it_sleep_ms(20);
    }
    assert_true(is_served);
    for (int i = 1; i < 4; i++)
        bd_it_raw_close(&c[i]);
    srv_stop(s);
    bd_it_resp_free(&r);
    srv_free(s);
}

/* Full, a newcomer takes the place of the connection that has been sending its headers the
 * longest (slowloris), then of one with no request (idle keep-alive), once they have been
 * silent for a second; one busy with a request is never closed for it. (Before: every newcomer got 503 while 1,000 slowloris
 * connections held the server, bench_hostile.) */
static void http_evicts_slowloris_then_idle_when_full(void **state)
{
    struct bd_http_options opt = default_opt;
    struct bd_it_raw busy, slow_old, slow_new, idle, n1, n2, n3;
    struct bd_it_resp r = { 0 };

    (void)state;
    opt.max_connections = 4;
    struct it_srv *s = srv_start(&opt);
    bd_it_raw_connect(&slow_old, s->port);
    bd_it_raw_send(&slow_old, "GET /healthz HTTP/1.1\r\nHost: t\r\n");   /* never ends */
    bd_it_sleep_ms(50);
    bd_it_raw_connect(&slow_new, s->port);
    bd_it_raw_send(&slow_new, "GET /healthz HTTP/1.1\r\nX-A: 1\r\n");
    bd_it_raw_connect(&busy, s->port);
    bd_it_raw_send(&busy, "GET /forever HTTP/1.1\r\nHost: t\r\n\r\n");
    while (atomic_load(&s->slow_started) < 1)
        bd_it_sleep_ms(5);
    bd_it_raw_connect(&idle, s->port);
    request(&idle, GET_HEALTHZ, &r);
    assert_int_equal(r.status, 200);
    bd_it_raw_connect(&n1, s->port);                   /* all sent something < 1 s ago */
    bd_it_raw_send(&n1, GET_HEALTHZ);
    assert_int_equal(read_resp(&n1, &r, false), 0);
    assert_int_equal(r.status, 503);
    bd_it_raw_close(&n1);
    bd_it_sleep_ms(1100);

    bd_it_raw_connect(&n1, s->port);                   /* takes slow_old's place */
    request(&n1, GET_HEALTHZ, &r);
    assert_int_equal(r.status, 200);
    assert_true(bd_it_raw_sees_close(&slow_old, 2000));
    bd_it_raw_connect(&n2, s->port);                   /* then slow_new's */
    request(&n2, GET_HEALTHZ, &r);
    assert_int_equal(r.status, 200);
    assert_true(bd_it_raw_sees_close(&slow_new, 2000));
    bd_it_raw_connect(&n3, s->port);                   /* then an idle one's */
    request(&n3, GET_HEALTHZ, &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(atomic_load(&s->aborts), 0);      /* the busy request lives on */
    bd_it_raw_send(&busy, "");
    assert_false(bd_it_raw_sees_close(&busy, 200));
    bd_it_raw_close(&slow_old);
    bd_it_raw_close(&slow_new);
    bd_it_raw_close(&idle);
    bd_it_raw_close(&n1);
    bd_it_raw_close(&n2);
    bd_it_raw_close(&n3);
    bd_it_raw_close(&busy);
    srv_stop(s);
    bd_it_resp_free(&r);
    srv_free(s);
}

static void http_calls_abort_when_client_leaves_early(void **state)
{
    struct it_srv *s = srv_start(&default_opt);
    struct bd_it_raw c;

    (void)state;
    bd_it_raw_connect(&c, s->port);
    bd_it_raw_send(&c, "GET /slow HTTP/1.1\r\n\r\n");
    while (atomic_load(&s->slow_started) == 0)
        bd_it_sleep_ms(5);
    bd_it_raw_close(&c);
    for (double t0 = bd_it_now(); atomic_load(&s->aborts) == 0 && bd_it_now() - t0 < 2;)
        bd_it_sleep_ms(5);
    assert_int_equal(atomic_load(&s->aborts), 1);
    assert_int_equal(atomic_load(&s->slow_fired), 0);  /* the abort came first */
    srv_stop(s);                                        /* waits for the handler to finish */
    assert_int_equal(atomic_load(&s->slow_fired), 1);
    assert_int_equal(atomic_load(&s->responses), 1);
    srv_free(s);
}

static void http_finishes_inflight_request_when_server_closes(void **state)
{
    struct it_srv *s = srv_start(&default_opt);
    struct bd_it_raw c;
    struct bd_it_raw idle;
    struct bd_it_resp r = { 0 };

    (void)state;
    bd_it_raw_connect(&c, s->port);
    bd_it_raw_connect(&idle, s->port);
    request(&idle, GET_HEALTHZ, &r);
    bd_it_raw_send(&c, "GET /slow HTTP/1.1\r\n\r\n");
    while (atomic_load(&s->slow_started) == 0)
        bd_it_sleep_ms(5);
    assert_int_equal(uv_async_send(&s->stop_async), 0);
    assert_true(bd_it_raw_sees_close(&idle, 1000));            /* idle ones go at once */
    assert_int_equal(read_resp(&c, &r, false), 0);         /* in-flight ones are answered */
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "slow");
    assert_true(has_close(&r));
    assert_true(bd_it_raw_sees_close(&c, 2000));
    assert_int_equal(pthread_join(s->thread, NULL), 0);
    assert_int_equal(atomic_load(&s->closed), 1);
    assert_int_equal(s->loop_close_rc, 0);
    assert_int_equal(atomic_load(&s->aborts), 0);
    bd_router_free(s->router);
    bd_it_raw_close(&c);
    bd_it_raw_close(&idle);
    bd_it_resp_free(&r);
    srv_free(s);
}

/* A response that never ends (an event stream, or a client that stopped reading) cannot
 * hold the server's close: the connection is cut at shutdown_timeout_ms, its handler gets
 * the abort callback, and the server finishes closing. */
static void http_cuts_endless_stream_when_server_closes(void **state)
{
    struct bd_http_options opt = default_opt;
    struct bd_it_raw c;

    (void)state;
    opt.shutdown_timeout_ms = 300;
    struct it_srv *s = srv_start(&opt);
    bd_it_raw_connect(&c, s->port);
    bd_it_raw_send(&c, "GET /forever HTTP/1.1\r\n\r\n");
    while (atomic_load(&s->slow_started) == 0)
        bd_it_sleep_ms(5);
    double t0 = bd_it_now();
    assert_int_equal(uv_async_send(&s->stop_async), 0);
    while (atomic_load(&s->closed) == 0 && bd_it_now() < t0 + 3.0)
        bd_it_sleep_ms(5);
    double took = bd_it_now() - t0;
    print_message("    server closed %.3f s after the close (deadline 0.3 s)\n", took);
    assert_int_equal(atomic_load(&s->closed), 1);          /* before: never, while open */
    assert_true(took >= 0.25 && took < 2.0);
    assert_int_equal(pthread_join(s->thread, NULL), 0);
    assert_int_equal(s->loop_close_rc, 0);
    assert_int_equal(atomic_load(&s->aborts), 1);
    assert_true(bd_it_raw_sees_close(&c, 1000));
    bd_router_free(s->router);
    bd_it_raw_close(&c);
    srv_free(s);
}

/* A client that stops reading a download: once the socket has taken nothing for
 * write_timeout_ms the connection is cut and the handler aborted, although a handler holds
 * the request (before: no timer ran while a handler held a connection; the download stayed
 * open as long as the client did). */
static void http_cuts_download_when_client_stops_reading(void **state)
{
    struct bd_http_options opt = default_opt;
    struct bd_it_raw c;

    (void)state;
    opt.write_timeout_ms = 400;
    struct it_srv *s = srv_start(&opt);
    bd_it_raw_open(&c, s->port, "GET", "/flood", NULL, 4096);      /* and never read */
    while (atomic_load(&s->slow_started) == 0)
        bd_it_sleep_ms(5);
    double t0 = bd_it_now();
    while (atomic_load(&s->flood_aborts) == 0 && bd_it_now() < t0 + 10.0)
        bd_it_sleep_ms(10);
    double took = bd_it_now() - t0;
    print_message("    download cut %.2f s after it started (write timeout 0.4 s)\n", took);
    assert_int_equal(atomic_load(&s->flood_aborts), 1);
    assert_true(took < 5.0);
    assert_true(bd_it_raw_sees_close(&c, 2000));
    bd_it_raw_close(&c);
    srv_stop(s);
    srv_free(s);
}

/* The write timeout counts only output the socket does not take: a stream that writes
 * nothing for a while (an event stream between events) and a slow reader that keeps
 * reading are not cut. */
static void http_keeps_quiet_stream_and_slow_reader_when_write_timeout_short(void **state)
{
    struct bd_http_options opt = default_opt;
    struct bd_it_raw quiet, slow;
    char buf[16 * 1024];
    size_t got = 0;

    (void)state;
    opt.write_timeout_ms = 300;
    struct it_srv *s = srv_start(&opt);
    bd_it_raw_open(&quiet, s->port, "GET", "/forever", NULL, 0);
    bd_it_raw_open(&slow, s->port, "GET", "/flood", NULL, 4096);
    double t0 = bd_it_now();
    while (bd_it_now() < t0 + 1.5) {             /* reads a little every 100 ms */
        ssize_t n = recv(slow.fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (n > 0)
            got += (size_t)n;
        bd_it_sleep_ms(100);
    }
    print_message("    slow reader took %zu bytes in 1.5 s\n", got);
    assert_true(got > 64 * 1024);
    assert_int_equal(atomic_load(&s->aborts), 0);
    assert_int_equal(atomic_load(&s->flood_aborts), 0);
    bd_it_raw_close(&quiet);
    bd_it_raw_close(&slow);
    srv_stop(s);
    srv_free(s);
}

/* One request of a connection in a handler at a time: while a slow head is being answered,
 * none of the 15 requests pipelined behind it reaches its handler (before: all 15 were
 * dispatched at once, each free to hold a PostgreSQL query, and their 600 KiB answers were
 * built and held behind the head, 9 MiB). Every answer still arrives, in order. */
static void http_runs_one_pipelined_request_at_a_time_when_head_is_slow(void **state)
{
    struct it_srv *s = srv_start(&default_opt);
    struct bd_it_raw c;
    struct bd_it_resp r = { 0 };
    struct bd_buf req;

    (void)state;
    bd_buf_init(&req);
    bd_buf_puts(&req, "GET /slow HTTP/1.1\r\nHost: t\r\n\r\n");
    for (int i = 0; i < 15; i++)
        bd_buf_puts(&req, "GET /big HTTP/1.1\r\nHost: t\r\n\r\n");
    bd_it_raw_connect(&c, s->port);
    bd_it_raw_send(&c, req.data);
    bd_buf_free(&req);
    while (atomic_load(&s->slow_started) == 0)
        bd_it_sleep_ms(5);
    bd_it_sleep_ms(SLOW_MS / 2);
    unsigned held = atomic_load(&s->bigs);
    print_message("    requests answered behind the slow head: %u of 15\n", held);
    assert_int_equal(held, 0);
    for (int i = 0; i < 16; i++) {
        assert_int_equal(read_resp(&c, &r, false), 0);
        assert_int_equal(r.status, 200);
        assert_int_equal(r.len, i == 0 ? 4 : BIG_BYTES);
    }
    assert_int_equal(atomic_load(&s->bigs), 15);
    bd_it_resp_free(&r);
    bd_it_raw_close(&c);
    srv_stop(s);
    srv_free(s);
}

/* ---- Streamed request bodies ---------------------------------------------------------- */

/* The byte at offset i of every generated body. */
static char body_byte(uint64_t i)
{
    return (char)((i * 131u + (i >> 11)) & 0xff);
}

static void body_fill(char *buf, uint64_t off, size_t len)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = body_byte(off + i);
}

/* Send total generated bytes as chunks of varying sizes; returns the FNV-1a of the body. */
static uint64_t send_chunked_body(struct bd_it_raw *c, uint64_t total, size_t piece)
{
    static char buf[128 * 1024];
    uint64_t sum = FNV_OFFSET;
    char head[32];

    assert_true(piece + piece / 2 <= sizeof(buf));
    for (uint64_t off = 0, k = 0; off < total; k++) {
        size_t n = piece / 2 + (size_t)((k * 7919) % piece);

        if (n > total - off)
            n = (size_t)(total - off);
        body_fill(buf, off, n);
        sum = fnv1a(sum, buf, n);
        snprintf(head, sizeof(head), "%zx\r\n", n);
        bd_it_raw_send(c, head);
        bd_it_raw_send_n(c, buf, n);
        bd_it_raw_send(c, "\r\n");
        off += n;
    }
    bd_it_raw_send(c, "0\r\n\r\n");
    return sum;
}

/* Send total generated bytes, no framing (a Content-Length body). */
static uint64_t send_plain_body(struct bd_it_raw *c, uint64_t total)
{
    static char buf[64 * 1024];
    uint64_t sum = FNV_OFFSET;

    for (uint64_t off = 0; off < total;) {
        size_t n = total - off < sizeof(buf) ? (size_t)(total - off) : sizeof(buf);

        body_fill(buf, off, n);
        sum = fnv1a(sum, buf, n);
        bd_it_raw_send_n(c, buf, n);
        off += n;
    }
    return sum;
}

static void assert_upload_ok(const struct bd_it_resp *r, uint64_t bytes, uint64_t sum)
{
    char want[96];

    snprintf(want, sizeof(want), "bytes=%llu sum=%016llx", (unsigned long long)bytes,
             (unsigned long long)sum);
    assert_int_equal(r->status, 200);
    assert_string_equal(r->body, want);
}

static long maxrss_kib(void)
{
    struct rusage ru;

    assert_int_equal(getrusage(RUSAGE_SELF, &ru), 0);
    return ru.ru_maxrss;
}

/* 100 MB chunked, generated on the fly, against max_body_bytes 64 KiB (the route raises its
 * own limit): every byte arrives once and in order, and nothing buffers the body. */
static void http_streams_100mb_chunked_body_when_route_streams(void **state)
{
    struct it_srv *s = srv_start(&default_opt);
    const uint64_t total = 100ull << 20;
    struct bd_it_raw c;
    struct bd_it_resp r = { 0 };
    long rss0 = maxrss_kib();
    uint64_t sum;

    (void)state;
    bd_it_raw_connect(&c, s->port);
    bd_it_raw_send(&c, "POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    sum = send_chunked_body(&c, total, 64 * 1024);
    assert_int_equal(read_resp(&c, &r, false), 0);
    assert_upload_ok(&r, total, sum);
    assert_false(has_close(&r));
    /* Generous: the body is 100 MiB; a server that held it would grow by at least that. */
    assert_true(maxrss_kib() - rss0 < 24 * 1024);
    request(&c, GET_HEALTHZ, &r);                  /* the connection is still good */
    assert_int_equal(r.status, 200);
    bd_it_raw_close(&c);
    srv_stop(s);
    assert_int_equal(atomic_load(&s->uploads), 1);
    assert_int_equal(atomic_load(&s->upload_ends), 1);
    assert_int_equal(atomic_load(&s->requests), 1);    /* on_request: the GET only */
    bd_it_resp_free(&r);
    srv_free(s);
}

/* A Content-Length body streamed, with requests pipelined behind it in the same bytes: a GET,
 * a chunked streamed POST, a GET. All are answered, in order, on one connection. */
static void http_answers_pipelined_requests_when_after_streamed_body(void **state)
{
    struct it_srv *s = srv_start(&default_opt);
    const uint64_t total = 3u << 20;
    struct bd_it_raw c;
    struct bd_it_resp r = { 0 };
    char head[128];
    uint64_t sum, sum2;

    (void)state;
    bd_it_raw_connect(&c, s->port);
    snprintf(head, sizeof(head), "POST /upload HTTP/1.1\r\nContent-Length: %llu\r\n\r\n",
             (unsigned long long)total);
    bd_it_raw_send(&c, head);
    sum = send_plain_body(&c, total);
    bd_it_raw_send(&c, GET_HEALTHZ "POST /upload HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    sum2 = send_chunked_body(&c, 5000, 1000);
    bd_it_raw_send(&c, "GET /api/v1/batch/jobs/7 HTTP/1.1\r\n\r\n");
    assert_int_equal(read_resp(&c, &r, false), 0);
    assert_upload_ok(&r, total, sum);
    assert_int_equal(read_resp(&c, &r, false), 0);
    assert_string_equal(r.body, "{\"status\":\"ok\"}");
    assert_int_equal(read_resp(&c, &r, false), 0);
    assert_upload_ok(&r, 5000, sum2);
    assert_int_equal(read_resp(&c, &r, false), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "\"id\":\"7\""));
    assert_false(has_close(&r));
    bd_it_raw_close(&c);
    srv_stop(s);
    assert_int_equal(atomic_load(&s->uploads), 2);
    assert_int_equal(atomic_load(&s->upload_ends), 2);
    bd_it_resp_free(&r);
    srv_free(s);
}

/* The handler pauses after every piece and resumes from a timer: every byte arrives once, in
 * order; paused time (here well over request_timeout_ms in total) is not the client's. */
static void http_delivers_every_byte_once_when_handler_pauses(void **state)
{
    struct bd_http_options opt = default_opt;
    struct it_srv *s;
    const uint64_t total = 2u << 20;
    struct bd_it_raw c;
    struct bd_it_resp r = { 0 };
    uint64_t sum;

    (void)state;
    opt.request_timeout_ms = 300;
    s = srv_start(&opt);
    bd_it_raw_connect(&c, s->port);
    bd_it_raw_send(&c, "POST /upload?pause=1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    sum = send_chunked_body(&c, total, 10000);
    assert_int_equal(read_resp(&c, &r, false), 0);
    assert_upload_ok(&r, total, sum);
    assert_true(atomic_load(&s->upload_pauses) >= total / HTTP_TEST_IN_BUF);

    /* Long pauses: 4 pieces x 150 ms > the 300 ms request timeout, still no 408. */
    bd_it_raw_send(&c, "POST /upload?pause=150 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    for (int i = 0; i < 4; i++) {
        bd_it_raw_send(&c, "3\r\nabc\r\n");
        bd_it_sleep_ms(5);
    }
    bd_it_raw_send(&c, "0\r\n\r\n");
    assert_int_equal(read_resp(&c, &r, false), 0);
    assert_upload_ok(&r, 12, fnv1a(FNV_OFFSET, "abcabcabcabc", 12));

    /* A client that stalls (nothing paused) is still timed out: the handler answers 408. */
    bd_it_raw_send(&c, "POST /upload HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc");
    assert_int_equal(read_resp(&c, &r, false), 0);
    assert_int_equal(r.status, 408);
    assert_true(has_close(&r));
    assert_true(bd_it_raw_sees_close(&c, 3000));
    bd_it_raw_close(&c);
    srv_stop(s);
    assert_int_equal(atomic_load(&s->upload_ends), 3);
    bd_it_resp_free(&r);
    srv_free(s);
}

/* The handler answers 400 in the middle of a body: the client reads it, the connection then
 * closes (the rest of the body is not read), and the server serves the next connection. */
static void http_closes_after_answer_when_handler_rejects_mid_body(void **state)
{
    struct it_srv *s = srv_start(&default_opt);
    static char part[5000];
    struct bd_it_raw c;
    struct bd_it_resp r = { 0 };

    (void)state;
    bd_it_raw_connect(&c, s->port);
    bd_it_raw_send(&c, "POST /upload?fail_at=1000 HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n");
    body_fill(part, 0, sizeof(part));
    bd_it_raw_send_n(&c, part, sizeof(part));
    assert_int_equal(read_resp(&c, &r, false), 0);
    assert_int_equal(r.status, 400);
    assert_json_error(&r, "bad_request");
    assert_true(has_close(&r));
    assert_true(bd_it_raw_sees_close(&c, 3000));
    bd_it_raw_close(&c);

    bd_it_raw_connect(&c, s->port);
    request(&c, GET_HEALTHZ, &r);
    assert_int_equal(r.status, 200);
    bd_it_raw_close(&c);
    srv_stop(s);
    assert_int_equal(atomic_load(&s->upload_ends), 0);   /* on_body returned -1: no more */
    assert_true(atomic_load(&s->upload_bytes) >= 1000);
    bd_it_resp_free(&r);
    srv_free(s);
}

/* The client leaves mid-body: the abort callback runs once, on_body never again. */
static void http_calls_abort_when_client_leaves_mid_body(void **state)
{
    struct it_srv *s = srv_start(&default_opt);
    static char part[10000];
    struct bd_it_raw c;

    (void)state;
    bd_it_raw_connect(&c, s->port);
    bd_it_raw_send(&c, "POST /upload HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n");
    body_fill(part, 0, sizeof(part));
    bd_it_raw_send_n(&c, part, sizeof(part));
    while (atomic_load(&s->uploads) == 0)
        bd_it_sleep_ms(5);
    bd_it_raw_close(&c);
    for (double t0 = bd_it_now(); atomic_load(&s->upload_aborts) == 0 && bd_it_now() - t0 < 2;)
        bd_it_sleep_ms(5);
    assert_int_equal(atomic_load(&s->upload_aborts), 1);
    srv_stop(s);
    assert_int_equal(atomic_load(&s->upload_aborts), 1);
    assert_int_equal(atomic_load(&s->upload_ends), 0);
    assert_true(atomic_load(&s->upload_bytes) <= sizeof(part));
    srv_free(s);
}

/* A per-request limit below max_body_bytes: 413 by Content-Length before any byte is read,
 * and 413 for a chunked body once it passes the limit. A route may also decline to stream
 * (buffer=1): then its on_request gets the buffered body. */
/* A route may allow its body an hour (a big upload), but not an hour of silence nor of
 * trickling: a body with no byte for request_timeout_ms gets 408, and so does one slower
 * than min_body_rate on average after its first request_timeout_ms; one fast enough runs
 * past request_timeout_ms and completes. (Before: 200 trickled JSON bodies held their
 * connections, and the upload slots, for the route's whole hour.) */
static void http_cuts_silent_body_but_not_slow_one_when_route_allows_long(void **state)
{
    struct bd_http_options opt = default_opt;
    struct bd_it_raw c;
    struct bd_it_resp r = { 0 };

    (void)state;
    opt.request_timeout_ms = 400;
    opt.min_body_rate = 5;                       /* bytes/s after the first 0.4 s */
    struct it_srv *s = srv_start(&opt);

    bd_it_raw_connect(&c, s->port);
    double t0 = bd_it_now();
    bd_it_raw_send(&c, "POST /upload?timeout=60000 HTTP/1.1\r\nHost: t\r\n"
                       "Content-Length: 100\r\n\r\nabc");
    assert_int_equal(read_resp(&c, &r, false), 0);
    double took = bd_it_now() - t0;
    print_message("    silent body: %ld after %.2f s (idle limit 0.4 s, route 60 s)\n", r.status,
                  took);
    assert_int_equal(r.status, 408);
    assert_true(took < 3.0);
    bd_it_raw_close(&c);

    bd_it_raw_connect(&c, s->port);
    bd_it_raw_send(&c, "POST /upload?timeout=60000 HTTP/1.1\r\nHost: t\r\n"
                       "Content-Length: 10\r\n\r\n");
    for (int i = 0; i < 10; i++) {               /* 10 bytes over ~1.5 s: one per 150 ms */
        bd_it_sleep_ms(150);
        bd_it_raw_send(&c, "x");
    }
    assert_int_equal(read_resp(&c, &r, false), 0);
    assert_int_equal(r.status, 200);
    bd_it_raw_close(&c);

    /* Never silent for 0.4 s, but slower than 5 bytes/s on average: 408 once it falls
     * behind (about 1.2 s in), although the route allows a minute. */
    bd_it_raw_connect(&c, s->port);
    t0 = bd_it_now();
    bd_it_raw_send(&c, "POST /upload?timeout=60000 HTTP/1.1\r\nHost: t\r\n"
                       "Content-Length: 100\r\n\r\n");
    bool is_cut = false;
    for (int i = 0; i < 20 && !is_cut; i++) {    /* one byte per 300 ms: 3.3 bytes/s */
        bd_it_sleep_ms(300);
        is_cut = send(c.fd, "y", 1, MSG_NOSIGNAL) != 1 || bd_it_raw_read(&c, 0, 0) >= 0;
    }
    assert_int_equal(read_resp(&c, &r, false), 0);
    took = bd_it_now() - t0;
    print_message("    trickle at 3.3 bytes/s: %ld after %.2f s (minimum 5 bytes/s)\n", r.status,
                  took);
    assert_int_equal(r.status, 408);
    assert_true(took < 4.0);
    bd_it_raw_close(&c);
    bd_it_resp_free(&r);
    srv_stop(s);
    srv_free(s);
}

static void http_answers_413_when_streamed_body_over_route_limit(void **state)
{
    struct it_srv *s = srv_start(&default_opt);
    struct bd_it_raw c;
    struct bd_it_resp r = { 0 };

    (void)state;
    bd_it_raw_connect(&c, s->port);
    bd_it_raw_send(&c, "POST /upload?limit=1000 HTTP/1.1\r\nContent-Length: 3000\r\n\r\n");
    assert_int_equal(read_resp(&c, &r, false), 0);
    assert_int_equal(r.status, 413);
    assert_json_error(&r, bd_err_api_code(BD_ETOOLARGE));
    assert_true(has_close(&r));
    assert_true(bd_it_raw_sees_close(&c, 3000));
    bd_it_raw_close(&c);

    bd_it_raw_connect(&c, s->port);
    bd_it_raw_send(&c, "POST /upload?limit=1000 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    send_chunked_body(&c, 3000, 500);
    assert_int_equal(read_resp(&c, &r, false), 0);
    assert_int_equal(r.status, 413);
    assert_true(has_close(&r));
    bd_it_raw_close(&c);

    bd_it_raw_connect(&c, s->port);
    request(&c, "POST /upload?buffer=1 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "abc");
    bd_it_raw_close(&c);
    srv_stop(s);
    assert_int_equal(atomic_load(&s->upload_ends), 2);
    assert_true(atomic_load(&s->upload_bytes) <= 1000);
    assert_int_equal(atomic_load(&s->requests), 1);    /* buffer=1 went to on_request */
    bd_it_resp_free(&r);
    srv_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        /* First: its RSS bound compares with the peak before it. */
        cmocka_unit_test(http_streams_100mb_chunked_body_when_route_streams),
        cmocka_unit_test(http_keeps_connection_alive_when_http11),
        cmocka_unit_test(http_answers_pipeline_in_order_when_head_is_slow),
        cmocka_unit_test(http_answers_long_pipeline_when_queue_limit_exceeded),
        cmocka_unit_test(http_answers_pipelined_bodies_when_over_body_budget),
        cmocka_unit_test(http_echoes_body_when_chunked),
        cmocka_unit_test(http_sends_continue_when_expect_100),
        cmocka_unit_test(http_rejects_body_with_413_when_over_limit),
        cmocka_unit_test(http_rejects_with_400_and_closes_when_malformed),
        cmocka_unit_test(http_rejects_with_414_when_url_too_long),
        cmocka_unit_test(http_rejects_with_431_when_headers_too_large),
        cmocka_unit_test(http_answers_json_404_405_400_when_route_wrong),
        cmocka_unit_test(http_streams_chunks_when_handler_streams),
        cmocka_unit_test(http_closes_after_response_when_http10),
        cmocka_unit_test(http_answers_all_when_1000_sequential_connections),
        cmocka_unit_test(http_answers_all_when_100_concurrent_connections),
        cmocka_unit_test(http_closes_connection_when_idle_timeout),
        cmocka_unit_test(http_answers_408_when_request_never_completes),
        cmocka_unit_test(http_answers_503_when_over_max_connections),
        cmocka_unit_test(http_evicts_slowloris_then_idle_when_full),
        cmocka_unit_test(http_calls_abort_when_client_leaves_early),
        cmocka_unit_test(http_finishes_inflight_request_when_server_closes),
        cmocka_unit_test(http_cuts_endless_stream_when_server_closes),
        cmocka_unit_test(http_cuts_download_when_client_stops_reading),
        cmocka_unit_test(http_keeps_quiet_stream_and_slow_reader_when_write_timeout_short),
        cmocka_unit_test(http_runs_one_pipelined_request_at_a_time_when_head_is_slow),
        cmocka_unit_test(http_answers_pipelined_requests_when_after_streamed_body),
        cmocka_unit_test(http_delivers_every_byte_once_when_handler_pauses),
        cmocka_unit_test(http_closes_after_answer_when_handler_rejects_mid_body),
        cmocka_unit_test(http_calls_abort_when_client_leaves_mid_body),
        cmocka_unit_test(http_answers_413_when_streamed_body_over_route_limit),
        cmocka_unit_test(http_cuts_silent_body_but_not_slow_one_when_route_allows_long),
    };

    signal(SIGPIPE, SIG_IGN);              /* as batchd does: libuv writes with write(2) */
    bd_log_set_level(getenv("BD_TEST_DEBUG") ? BD_LOG_DEBUG : BD_LOG_ERROR);
    return cmocka_run_group_tests_name("it_http", tests, NULL, NULL);
}
