/* it_http.c -- integration tests for http_server.c + router.c, in process.
 *
 * Each case runs a bd_http_server on its own uv loop in a second thread and talks to it from
 * the test thread with plain blocking sockets: keep-alive, pipelining (slow async head
 * included), chunked bodies, 100-continue, limits (413/414/431/503), timeouts (idle, 408),
 * malformed input, 404/405, streams, many sequential and concurrent connections, aborts and
 * a graceful close. Every case counts its callbacks and asserts, after the loop has stopped,
 * that bd_http_server_close() called back once and uv_loop_close() == 0.
 * SPDX-License-Identifier: MIT
 */
#define _GNU_SOURCE                    /* memmem */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "batchd/error.h"
#include "batchd/http_server.h"
#include "batchd/log.h"
#include "batchd/router.h"

#define SLOW_MS 200

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
    assert_int_equal(bd_router_add(s->router, "GET", "/err", h_err, s), BD_OK);
    opt.on_request = on_request;
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

/* ---- A blocking HTTP client ---------------------------------------------------------- */

struct cli {
    int fd;
    size_t len;
    char buf[1 << 17];
};

struct resp {
    int status;
    char head[8192];                   /* status line and headers, NUL-terminated */
    char body[1 << 16];
    size_t body_len;
};

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

    nanosleep(&ts, NULL);
}

static struct cli *cli_open(int port)
{
    struct cli *c = calloc(1, sizeof(*c));
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    struct timeval tv = { 5, 0 };
    int one = 1;

    assert_non_null(c);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(c->fd >= 0);
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    assert_int_equal(connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return c;
}

static void cli_close(struct cli *c)
{
    close(c->fd);
    free(c);
}

static void cli_send_n(struct cli *c, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);

        if (n < 0 && errno == EINTR)
            continue;
        assert_true(n > 0);
        data += n;
        len -= (size_t)n;
    }
}

static void cli_send(struct cli *c, const char *s)
{
    cli_send_n(c, s, strlen(s));
}

/* Read more into c->buf: bytes read, 0 on EOF, -1 on error or timeout. */
static ssize_t cli_fill(struct cli *c)
{
    ssize_t n;

    assert_true(c->len < sizeof(c->buf));
    do {
        n = recv(c->fd, c->buf + c->len, sizeof(c->buf) - c->len, 0);
    } while (n < 0 && errno == EINTR);
    if (n > 0)
        c->len += (size_t)n;
    return n;
}

static void cli_consume(struct cli *c, size_t n)
{
    memmove(c->buf, c->buf + n, c->len - n);
    c->len -= n;
}

/* Header value from r->head (case-insensitive), copied to out; NULL when absent. */
static const char *resp_header(const struct resp *r, const char *name, char *out, size_t outlen)
{
    const char *line = strstr(r->head, "\r\n");
    size_t nlen = strlen(name);

    while (line != NULL && line[2] != '\0') {
        const char *next;
        line += 2;
        next = strstr(line, "\r\n");
        if (strncasecmp(line, name, nlen) == 0 && line[nlen] == ':') {
            const char *v = line + nlen + 1;
            size_t vlen;

            while (*v == ' ')
                v++;
            vlen = (size_t)((next ? next : v + strlen(v)) - v);
            if (vlen >= outlen)
                vlen = outlen - 1;
            memcpy(out, v, vlen);
            out[vlen] = '\0';
            return out;
        }
        line = next;
    }
    return NULL;
}

/* Dechunk from c->buf at *off into r->body; 1 when complete, 0 when more bytes are needed. */
static int dechunk(struct cli *c, size_t *off, struct resp *r)
{
    for (;;) {
        char *line_end = memmem(c->buf + *off, c->len - *off, "\r\n", 2);
        unsigned long size;

        if (line_end == NULL)
            return 0;
        size = strtoul(c->buf + *off, NULL, 16);
        if ((size_t)(line_end + 2 - c->buf) + size + 2 > c->len)
            return 0;
        if (size == 0) {
            *off = (size_t)(line_end + 4 - c->buf);
            return 1;
        }
        assert_true(r->body_len + size < sizeof(r->body));
        memcpy(r->body + r->body_len, line_end + 2, size);
        r->body_len += size;
        *off = (size_t)(line_end + 2 - c->buf) + size + 2;
    }
}

/* Read one response (body framed by Content-Length, chunked, or close). 0, or -1 on EOF
 * or timeout before a full response. 1xx interim responses are returned like any other. */
static int cli_read(struct cli *c, struct resp *r, bool is_head_request)
{
    char value[64];
    char *end;
    size_t head_len;

    memset(r, 0, sizeof(*r));
    while ((end = memmem(c->buf, c->len, "\r\n\r\n", 4)) == NULL) {
        if (cli_fill(c) <= 0)
            return -1;
    }
    head_len = (size_t)(end - c->buf) + 4;
    assert_true(head_len < sizeof(r->head));
    memcpy(r->head, c->buf, head_len);
    r->head[head_len] = '\0';
    assert_int_equal(strncmp(r->head, "HTTP/1.1 ", 9), 0);
    r->status = atoi(r->head + 9);
    cli_consume(c, head_len);

    if (is_head_request || r->status < 200 || r->status == 204 || r->status == 304)
        return 0;
    if (resp_header(r, "Content-Length", value, sizeof(value)) != NULL) {
        size_t len = strtoul(value, NULL, 10);

        assert_true(len < sizeof(r->body));
        while (c->len < len) {
            if (cli_fill(c) <= 0)
                return -1;
        }
        memcpy(r->body, c->buf, len);
        r->body_len = len;
        cli_consume(c, len);
    } else if (resp_header(r, "Transfer-Encoding", value, sizeof(value)) != NULL) {
        size_t off = 0;

        while (!dechunk(c, &off, r)) {
            r->body_len = 0;
            off = 0;
            if (cli_fill(c) <= 0)
                return -1;
        }
        cli_consume(c, off);
    } else {                                        /* delimited by close */
        while (cli_fill(c) > 0)
            ;
        assert_true(c->len < sizeof(r->body));
        memcpy(r->body, c->buf, c->len);
        r->body_len = c->len;
        c->len = 0;
    }
    r->body[r->body_len] = '\0';
    return 0;
}

/* True when the server closes the connection within timeout_ms (EOF or reset). */
static bool cli_sees_close(struct cli *c, int timeout_ms)
{
    struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
    double deadline = now_s() + timeout_ms / 1000.0;

    for (;;) {
        int left = (int)((deadline - now_s()) * 1000);
        char tmp[4096];
        ssize_t n;

        if (left <= 0 || poll(&pfd, 1, left) <= 0)
            return false;
        n = recv(c->fd, tmp, sizeof(tmp), 0);
        if (n == 0 || (n < 0 && errno == ECONNRESET))
            return true;
        if (n < 0)
            return false;
    }
}

static void request(struct cli *c, const char *raw, struct resp *r)
{
    cli_send(c, raw);
    assert_int_equal(cli_read(c, r, strncmp(raw, "HEAD ", 5) == 0), 0);
}

/* Parse r's body as {"error":{"code":code,...}} and check the code. */
static void assert_json_error(const struct resp *r, const char *code)
{
    char ct[64];
    json_error_t jerr;
    json_t *doc = json_loadb(r->body, r->body_len, 0, &jerr);
    json_t *err = json_object_get(doc, "error");

    assert_non_null(resp_header(r, "Content-Type", ct, sizeof(ct)));
    assert_string_equal(ct, "application/json");
    assert_non_null(doc);
    assert_true(json_is_object(err));
    assert_string_equal(json_string_value(json_object_get(err, "code")), code);
    assert_true(json_is_string(json_object_get(err, "message")));
    json_decref(doc);
}

static bool has_close(const struct resp *r)
{
    char v[32];

    return resp_header(r, "Connection", v, sizeof(v)) != NULL && strcasecmp(v, "close") == 0;
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
    struct cli *c = cli_open(s->port);
    struct resp r;
    char v[64];

    (void)state;
    for (int i = 0; i < 5; i++) {
        request(c, GET_HEALTHZ, &r);
        assert_int_equal(r.status, 200);
        assert_string_equal(r.body, "{\"status\":\"ok\"}");
        assert_false(has_close(&r));
    }
    /* HEAD: the length of the GET body, no body bytes (the next response must parse). */
    request(c, "HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(resp_header(&r, "Content-Length", v, sizeof(v)), "15");
    request(c, "GET /api/v1/batch/jobs/a%2Fb%20c?q=x+y%21&z=1 HTTP/1.1\r\nHost: t\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "{\"id\":\"a/b c\",\"method\":\"GET\",\"q\":\"x y!\"}");
    request(c, "DELETE /api/v1/batch/jobs/j1 HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
            &r);
    assert_string_equal(r.body, "{\"id\":\"j1\",\"method\":\"DELETE\"}");
    /* Connection: close from the client is honoured. */
    request(c, "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", &r);
    assert_true(has_close(&r));
    assert_true(cli_sees_close(c, 2000));
    cli_close(c);
    srv_stop(s);
    assert_int_equal(atomic_load(&s->requests), 9);
    assert_int_equal(atomic_load(&s->responses), 9);
    srv_free(s);
}

static void http_answers_pipeline_in_order_when_head_is_slow(void **state)
{
    struct it_srv *s = srv_start(&default_opt);
    struct cli *c = cli_open(s->port);
    struct resp r;
    double t0 = now_s();

    (void)state;
    cli_send(c, "GET /slow HTTP/1.1\r\nHost: t\r\n\r\n"
                GET_HEALTHZ
                "GET /api/v1/batch/jobs/third HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_int_equal(cli_read(c, &r, false), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "slow");
    assert_true(now_s() - t0 >= SLOW_MS / 1000.0 * 0.9);
    assert_int_equal(cli_read(c, &r, false), 0);
    assert_string_equal(r.body, "{\"status\":\"ok\"}");
    assert_int_equal(cli_read(c, &r, false), 0);
    assert_string_equal(r.body, "{\"id\":\"third\",\"method\":\"GET\"}");

    /* Three fast ones in one send, then one more on the same connection. */
    cli_send(c, GET_HEALTHZ "GET /api/v1/batch/jobs/2 HTTP/1.1\r\nHost: t\r\n\r\n" GET_HEALTHZ);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(cli_read(c, &r, false), 0);
        assert_int_equal(r.status, 200);
        assert_string_equal(r.body, i == 1 ? "{\"id\":\"2\",\"method\":\"GET\"}"
                                           : "{\"status\":\"ok\"}");
    }
    cli_close(c);
    srv_stop(s);
    assert_int_equal(atomic_load(&s->requests), 6);
    assert_int_equal(atomic_load(&s->responses), 6);
    assert_int_equal(atomic_load(&s->slow_fired), 1);
    assert_int_equal(atomic_load(&s->aborts), 0);
    srv_free(s);
}

/* More than the 16 queued requests that stop reading: all answered, in order. */
static void http_answers_long_pipeline_when_queue_limit_exceeded(void **state)
{
    struct it_srv *s = srv_start(&default_opt);
    struct cli *c = cli_open(s->port);
    static char batch[200 * 64];
    size_t len = 0;
    struct resp r;
    char want[64];

    (void)state;
    len += (size_t)snprintf(batch, sizeof(batch), "GET /slow HTTP/1.1\r\nHost: t\r\n\r\n");
    for (int i = 0; i < 200; i++)
        len += (size_t)snprintf(batch + len, sizeof(batch) - len,
                                "DELETE /api/v1/batch/jobs/%d HTTP/1.1\r\n\r\n", i);
    cli_send_n(c, batch, len);
    assert_int_equal(cli_read(c, &r, false), 0);
    assert_string_equal(r.body, "slow");
    for (int i = 0; i < 200; i++) {
        assert_int_equal(cli_read(c, &r, false), 0);
        snprintf(want, sizeof(want), "{\"id\":\"%d\",\"method\":\"DELETE\"}", i);
        assert_string_equal(r.body, want);
    }
    cli_close(c);
    srv_stop(s);
    assert_int_equal(atomic_load(&s->requests), 201);
    assert_int_equal(atomic_load(&s->responses), 201);
    srv_free(s);
}

/* Queued bodies over max_body_bytes also stop reading; everything is still answered. */
static void http_answers_pipelined_bodies_when_over_body_budget(void **state)
{
    struct it_srv *s = srv_start(&default_opt);            /* max_body_bytes 64 KiB */
    struct cli *c = cli_open(s->port);
    static char body[40 * 1024];
    char head[128];
    struct resp r;

    (void)state;
    cli_send(c, "GET /slow HTTP/1.1\r\n\r\n");
    for (int i = 0; i < 6; i++) {
        memset(body, 'a' + i, sizeof(body));
        snprintf(head, sizeof(head), "POST /echo HTTP/1.1\r\nContent-Length: %zu\r\n\r\n",
                 sizeof(body));
        cli_send(c, head);
        cli_send_n(c, body, sizeof(body));
    }
    assert_int_equal(cli_read(c, &r, false), 0);
    assert_string_equal(r.body, "slow");
    for (int i = 0; i < 6; i++) {
        assert_int_equal(cli_read(c, &r, false), 0);
        assert_int_equal(r.body_len, sizeof(body));
        assert_int_equal(r.body[0], 'a' + i);
        assert_int_equal(r.body[sizeof(body) - 1], 'a' + i);
    }
    cli_close(c);
    srv_stop(s);
    assert_int_equal(atomic_load(&s->requests), 7);
    srv_free(s);
}

static void http_echoes_body_when_chunked(void **state)
{
    struct it_srv *s = srv_start(&default_opt);
    struct cli *c = cli_open(s->port);
    struct resp r;

    (void)state;
    cli_send(c, "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                "5\r\nhello\r\n");
    sleep_ms(20);
    cli_send(c, "1\r\n \r\n6\r\nwor");
    sleep_ms(20);
    cli_send(c, "ld!\r\n0\r\n\r\n");
    assert_int_equal(cli_read(c, &r, false), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "hello world!");

    /* Content-Length body, and an empty chunked one. */
    request(c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc", &r);
    assert_string_equal(r.body, "abc");
    request(c, "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, 0);
    cli_close(c);
    srv_stop(s);
    assert_int_equal(atomic_load(&s->requests), 3);
    srv_free(s);
}

static void http_sends_continue_when_expect_100(void **state)
{
    struct it_srv *s = srv_start(&default_opt);
    struct cli *c = cli_open(s->port);
    struct resp r;

    (void)state;
    cli_send(c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n"
                "Expect: 100-continue\r\n\r\n");
    assert_int_equal(cli_read(c, &r, false), 0);
    assert_int_equal(r.status, 100);
    cli_send(c, "ping");
    assert_int_equal(cli_read(c, &r, false), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "ping");
    cli_close(c);
    srv_stop(s);
    srv_free(s);
}

static void http_rejects_body_with_413_when_over_limit(void **state)
{
    struct bd_http_options opt = default_opt;
    struct it_srv *s;
    struct cli *c;
    struct resp r;
    static char big[3000];

    (void)state;
    opt.max_body_bytes = 1024;
    s = srv_start(&opt);

    /* Declared length: refused before the body is read (even with 100-continue). */
    c = cli_open(s->port);
    cli_send(c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2048\r\n"
                "Expect: 100-continue\r\n\r\n");
    assert_int_equal(cli_read(c, &r, false), 0);
    assert_int_equal(r.status, 413);
    assert_json_error(&r, "payload_too_large");
    assert_true(has_close(&r));
    assert_true(cli_sees_close(c, 2000));
    cli_close(c);

    /* Chunked: refused as it grows past the limit. */
    c = cli_open(s->port);
    memset(big, 'x', sizeof(big));
    cli_send(c, "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                "400\r\n");
    cli_send_n(c, big, 1024);
    cli_send(c, "\r\n10\r\n0123456789abcdef\r\n");
    assert_int_equal(cli_read(c, &r, false), 0);
    assert_int_equal(r.status, 413);
    assert_json_error(&r, "payload_too_large");
    assert_true(cli_sees_close(c, 2000));
    cli_close(c);

    /* Exactly at the limit is fine, and the server still serves new connections. */
    c = cli_open(s->port);
    cli_send(c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1024\r\n\r\n");
    cli_send_n(c, big, 1024);
    assert_int_equal(cli_read(c, &r, false), 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, 1024);
    request(c, GET_HEALTHZ, &r);
    assert_int_equal(r.status, 200);
    cli_close(c);
    srv_stop(s);
    assert_int_equal(atomic_load(&s->requests), 2);     /* the 413s never reach a handler */
    assert_int_equal(atomic_load(&s->responses), 4);
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
    struct resp r;

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct cli *c = cli_open(s->port);

        cli_send(c, bad[i]);
        assert_int_equal(cli_read(c, &r, false), 0);
        assert_int_equal(r.status, 400);
        assert_json_error(&r, "bad_request");
        assert_true(has_close(&r));
        assert_true(cli_sees_close(c, 2000));
        cli_close(c);
    }
    /* A good request followed by garbage: the good one is answered first. */
    {
        struct cli *c = cli_open(s->port);

        cli_send(c, GET_HEALTHZ "\x01\x02 nonsense\r\n\r\n");
        assert_int_equal(cli_read(c, &r, false), 0);
        assert_int_equal(r.status, 200);
        assert_int_equal(cli_read(c, &r, false), 0);
        assert_int_equal(r.status, 400);
        assert_true(cli_sees_close(c, 2000));
        cli_close(c);
    }
    srv_stop(s);
    assert_int_equal(atomic_load(&s->requests), 1);
    assert_int_equal(atomic_load(&s->responses), 7);
    srv_free(s);
}

static void http_rejects_with_414_when_url_too_long(void **state)
{
    struct bd_http_options opt = default_opt;
    struct it_srv *s;
    struct cli *c;
    struct resp r;
    char req[2048];

    (void)state;
    opt.max_url_bytes = 256;
    s = srv_start(&opt);
    c = cli_open(s->port);
    snprintf(req, sizeof(req), "GET /api/v1/batch/jobs/%0300d HTTP/1.1\r\nHost: t\r\n\r\n", 7);
    cli_send(c, req);
    assert_int_equal(cli_read(c, &r, false), 0);
    assert_int_equal(r.status, 414);
    assert_json_error(&r, "uri_too_long");
    assert_true(cli_sees_close(c, 2000));
    cli_close(c);
    srv_stop(s);
    assert_int_equal(atomic_load(&s->requests), 0);
    srv_free(s);
}

static void http_rejects_with_431_when_headers_too_large(void **state)
{
    struct bd_http_options opt = default_opt;
    struct it_srv *s;
    struct cli *c;
    struct resp r;
    char req[4096];

    (void)state;
    opt.max_header_bytes = 512;
    s = srv_start(&opt);
    c = cli_open(s->port);
    snprintf(req, sizeof(req), "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: %0600d\r\n\r\n", 1);
    cli_send(c, req);
    assert_int_equal(cli_read(c, &r, false), 0);
    assert_int_equal(r.status, 431);
    assert_json_error(&r, "header_too_large");
    assert_true(cli_sees_close(c, 2000));
    cli_close(c);

    /* Many small headers add up too. */
    c = cli_open(s->port);
    cli_send(c, "GET /healthz HTTP/1.1\r\n");
    for (int i = 0; i < 60; i++)
        cli_send(c, "X-Small: 0123456789\r\n");
    cli_send(c, "\r\n");
    assert_int_equal(cli_read(c, &r, false), 0);
    assert_int_equal(r.status, 431);
    cli_close(c);
    srv_stop(s);
    srv_free(s);
}

static void http_answers_json_404_405_400_when_route_wrong(void **state)
{
    struct it_srv *s = srv_start(&default_opt);
    struct cli *c = cli_open(s->port);
    struct resp r;
    char v[64];
    json_t *doc;

    (void)state;
    request(c, "GET /nope HTTP/1.1\r\nHost: t\r\n\r\n", &r);
    assert_int_equal(r.status, 404);
    assert_json_error(&r, "not_found");
    assert_false(has_close(&r));                        /* router errors keep the connection */

    request(c, "GET /healthz/ HTTP/1.1\r\nHost: t\r\n\r\n", &r);   /* trailing slash */
    assert_int_equal(r.status, 404);

    request(c, "POST /api/v1/batch/jobs/x HTTP/1.1\r\nContent-Length: 0\r\n\r\n", &r);
    assert_int_equal(r.status, 405);
    assert_json_error(&r, "method_not_allowed");
    assert_non_null(resp_header(&r, "Allow", v, sizeof(v)));
    assert_string_equal(v, "GET, DELETE");

    request(c, "GET /api/v1/batch/jobs/a%zz HTTP/1.1\r\n\r\n", &r);
    assert_int_equal(r.status, 400);
    assert_json_error(&r, "bad_request");

    request(c, "GET /err HTTP/1.1\r\n\r\n", &r);
    assert_int_equal(r.status, 422);
    doc = json_loadb(r.body, r.body_len, 0, NULL);
    assert_non_null(doc);
    assert_string_equal(json_string_value(json_object_get(json_object_get(doc, "error"),
                                                          "field")), "data");
    assert_int_equal(json_object_size(json_object_get(doc, "error")), 3);
    assert_int_equal(json_object_size(doc), 1);
    json_decref(doc);

    request(c, GET_HEALTHZ, &r);
    assert_int_equal(r.status, 200);
    cli_close(c);
    srv_stop(s);
    assert_int_equal(atomic_load(&s->requests), 6);
    assert_int_equal(atomic_load(&s->responses), 6);
    srv_free(s);
}

static void http_streams_chunks_when_handler_streams(void **state)
{
    struct it_srv *s = srv_start(&default_opt);
    struct cli *c = cli_open(s->port);
    struct resp r;
    char v[64];

    (void)state;
    /* Behind a slow request, so the stream's output is held, then flushed in order. */
    cli_send(c, "GET /slow HTTP/1.1\r\n\r\nGET /stream HTTP/1.1\r\n\r\n" GET_HEALTHZ);
    assert_int_equal(cli_read(c, &r, false), 0);
    assert_string_equal(r.body, "slow");
    assert_int_equal(cli_read(c, &r, false), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(resp_header(&r, "Transfer-Encoding", v, sizeof(v)), "chunked");
    assert_string_equal(resp_header(&r, "X-Stream", v, sizeof(v)), "1");
    assert_string_equal(r.body, "part1\npart2\n");
    assert_int_equal(cli_read(c, &r, false), 0);
    assert_int_equal(r.status, 200);
    cli_close(c);

    /* HTTP/1.0 has no chunks: the body ends with the connection. */
    c = cli_open(s->port);
    cli_send(c, "GET /stream HTTP/1.0\r\n\r\n");
    assert_int_equal(cli_read(c, &r, false), 0);
    assert_true(has_close(&r));
    assert_null(resp_header(&r, "Transfer-Encoding", v, sizeof(v)));
    assert_string_equal(r.body, "part1\npart2\n");
    cli_close(c);
    srv_stop(s);
    assert_int_equal(atomic_load(&s->drains), 2);
    assert_int_equal(atomic_load(&s->responses), 4);
    srv_free(s);
}

static void http_closes_after_response_when_http10(void **state)
{
    struct it_srv *s = srv_start(&default_opt);
    struct cli *c = cli_open(s->port);
    struct resp r;
    char v[64];

    (void)state;
    request(c, "GET /healthz HTTP/1.0\r\n\r\n", &r);
    assert_true(has_close(&r));
    assert_true(cli_sees_close(c, 2000));
    cli_close(c);

    c = cli_open(s->port);
    request(c, "GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", &r);
    assert_string_equal(resp_header(&r, "Connection", v, sizeof(v)), "keep-alive");
    request(c, "GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    cli_close(c);
    srv_stop(s);
    assert_int_equal(atomic_load(&s->requests), 3);
    srv_free(s);
}

static void http_answers_all_when_1000_sequential_connections(void **state)
{
    struct it_srv *s = srv_start(&default_opt);
    struct resp r;

    (void)state;
    for (int i = 0; i < 1000; i++) {
        struct cli *c = cli_open(s->port);

        request(c, i % 2 ? GET_HEALTHZ : "GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n",
                &r);
        assert_int_equal(r.status, 200);
        cli_close(c);
    }
    srv_stop(s);
    assert_int_equal(atomic_load(&s->requests), 1000);
    assert_int_equal(atomic_load(&s->responses), 1000);
    srv_free(s);
}

static void http_answers_all_when_100_concurrent_connections(void **state)
{
    struct it_srv *s = srv_start(&default_opt);
    struct cli *c[100];
    struct resp r;
    char path[64], want[64];

    (void)state;
    for (int i = 0; i < 100; i++)
        c[i] = cli_open(s->port);
    for (int i = 0; i < 100; i++) {
        snprintf(path, sizeof(path), "GET /api/v1/batch/jobs/c%d HTTP/1.1\r\n\r\n", i);
        cli_send(c[i], i % 10 == 0 ? "GET /slow HTTP/1.1\r\n\r\n" : path);
    }
    for (int i = 99; i >= 0; i--) {                    /* read in the reverse order */
        assert_int_equal(cli_read(c[i], &r, false), 0);
        assert_int_equal(r.status, 200);
        snprintf(want, sizeof(want), "{\"id\":\"c%d\",\"method\":\"GET\"}", i);
        assert_string_equal(r.body, i % 10 == 0 ? "slow" : want);
    }
    /* Leave them open: bd_http_server_close() must close idle connections itself. */
    srv_stop(s);
    for (int i = 0; i < 100; i++) {
        assert_true(cli_sees_close(c[i], 2000));
        cli_close(c[i]);
    }
    assert_int_equal(atomic_load(&s->requests), 100);
    assert_int_equal(atomic_load(&s->slow_fired), 10);
    srv_free(s);
}

static void http_closes_connection_when_idle_timeout(void **state)
{
    struct bd_http_options opt = default_opt;
    struct it_srv *s;
    struct cli *c;
    struct resp r;
    double t0, waited;

    (void)state;
    opt.idle_timeout_ms = 300;
    s = srv_start(&opt);
    c = cli_open(s->port);
    request(c, GET_HEALTHZ, &r);
    /* Activity restarts the clock: a request every 150 ms keeps the connection. */
    for (int i = 0; i < 3; i++) {
        sleep_ms(150);
        request(c, GET_HEALTHZ, &r);
        assert_int_equal(r.status, 200);
    }
    t0 = now_s();
    assert_true(cli_sees_close(c, 3000));
    waited = now_s() - t0;
    assert_true(waited > 0.2 && waited < 1.5);
    cli_close(c);

    /* A connection that never sends a byte is idle too. */
    c = cli_open(s->port);
    assert_true(cli_sees_close(c, 3000));
    cli_close(c);
    srv_stop(s);
    assert_int_equal(atomic_load(&s->requests), 4);
    srv_free(s);
}

static void http_answers_408_when_request_never_completes(void **state)
{
    struct bd_http_options opt = default_opt;
    struct it_srv *s;
    struct cli *c;
    struct resp r;
    double t0;

    (void)state;
    opt.request_timeout_ms = 300;
    s = srv_start(&opt);
    c = cli_open(s->port);
    t0 = now_s();
    cli_send(c, "GET /healthz HTTP/1.1\r\nHost: t\r\n");
    sleep_ms(100);
    cli_send(c, "X-Trickle: 1\r\n");                   /* bytes do not restart the clock */
    assert_int_equal(cli_read(c, &r, false), 0);
    assert_int_equal(r.status, 408);
    assert_json_error(&r, "request_timeout");
    assert_true(has_close(&r));
    assert_true(now_s() - t0 < 1.5);
    assert_true(cli_sees_close(c, 2000));
    cli_close(c);

    /* Each pipelined request has its own clock: the second starts in the read that ends the
     * first (still being handled), 250 ms after the first began, and is not cut off 50 ms
     * later. */
    c = cli_open(s->port);
    cli_send(c, "GET /slow HTTP/1.1\r\n");
    sleep_ms(250);
    cli_send(c, "Host: t\r\n\r\nGET /healthz HTTP/1.1\r\n");
    sleep_ms(150);
    cli_send(c, "Host: t\r\n\r\n");
    assert_int_equal(cli_read(c, &r, false), 0);
    assert_string_equal(r.body, "slow");
    assert_int_equal(cli_read(c, &r, false), 0);
    assert_int_equal(r.status, 200);
    cli_close(c);

    /* A body that stalls times out the same way. */
    c = cli_open(s->port);
    cli_send(c, "POST /echo HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc");
    assert_int_equal(cli_read(c, &r, false), 0);
    assert_int_equal(r.status, 408);
    cli_close(c);
    srv_stop(s);
    assert_int_equal(atomic_load(&s->requests), 2);
    srv_free(s);
}

static void http_answers_503_when_over_max_connections(void **state)
{
    struct bd_http_options opt = default_opt;
    struct it_srv *s;
    struct cli *c[4], *extra;
    struct resp r;
    char v[32];
    bool is_served = false;

    (void)state;
    opt.max_connections = 4;
    s = srv_start(&opt);
    for (int i = 0; i < 4; i++) {                      /* accepted and counted, in order */
        c[i] = cli_open(s->port);
        request(c[i], GET_HEALTHZ, &r);
        assert_int_equal(r.status, 200);
    }
    extra = cli_open(s->port);
    cli_send(extra, GET_HEALTHZ);
    assert_int_equal(cli_read(extra, &r, false), 0);
    assert_int_equal(r.status, 503);
    assert_json_error(&r, "server_busy");
    assert_true(has_close(&r));
    assert_string_equal(resp_header(&r, "Retry-After", v, sizeof(v)), "1");
    assert_true(cli_sees_close(extra, 2000));
    cli_close(extra);

    /* Once one closes, a new connection is served again. */
    cli_close(c[0]);
    for (double t0 = now_s(); !is_served && now_s() - t0 < 3;) {
        extra = cli_open(s->port);
        cli_send(extra, GET_HEALTHZ);
        assert_int_equal(cli_read(extra, &r, false), 0);
        is_served = r.status == 200;
        cli_close(extra);
        if (!is_served)
            sleep_ms(20);
    }
    assert_true(is_served);
    for (int i = 1; i < 4; i++)
        cli_close(c[i]);
    srv_stop(s);
    srv_free(s);
}

static void http_calls_abort_when_client_leaves_early(void **state)
{
    struct it_srv *s = srv_start(&default_opt);
    struct cli *c = cli_open(s->port);

    (void)state;
    cli_send(c, "GET /slow HTTP/1.1\r\n\r\n");
    while (atomic_load(&s->slow_started) == 0)
        sleep_ms(5);
    cli_close(c);
    for (double t0 = now_s(); atomic_load(&s->aborts) == 0 && now_s() - t0 < 2;)
        sleep_ms(5);
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
    struct cli *c = cli_open(s->port);
    struct cli *idle = cli_open(s->port);
    struct resp r;

    (void)state;
    request(idle, GET_HEALTHZ, &r);
    cli_send(c, "GET /slow HTTP/1.1\r\n\r\n");
    while (atomic_load(&s->slow_started) == 0)
        sleep_ms(5);
    assert_int_equal(uv_async_send(&s->stop_async), 0);
    assert_true(cli_sees_close(idle, 1000));            /* idle ones go at once */
    assert_int_equal(cli_read(c, &r, false), 0);         /* in-flight ones are answered */
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "slow");
    assert_true(has_close(&r));
    assert_true(cli_sees_close(c, 2000));
    assert_int_equal(pthread_join(s->thread, NULL), 0);
    assert_int_equal(atomic_load(&s->closed), 1);
    assert_int_equal(s->loop_close_rc, 0);
    assert_int_equal(atomic_load(&s->aborts), 0);
    bd_router_free(s->router);
    cli_close(c);
    cli_close(idle);
    srv_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
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
        cmocka_unit_test(http_calls_abort_when_client_leaves_early),
        cmocka_unit_test(http_finishes_inflight_request_when_server_closes),
    };

    signal(SIGPIPE, SIG_IGN);              /* as batchd does: libuv writes with write(2) */
    bd_log_set_level(getenv("BD_TEST_DEBUG") ? BD_LOG_DEBUG : BD_LOG_ERROR);
    return cmocka_run_group_tests_name("it_http", tests, NULL, NULL);
}
