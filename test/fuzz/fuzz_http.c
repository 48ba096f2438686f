/* fuzz_http.c -- fuzz target for the HTTP/1.1 request side of src/http_server.c (llhttp,
 * header/URL gathering, chunked bodies, pipelining, limits, 100-continue, errors, linger,
 * streams and their drain callbacks, closing the server mid-request) together with the
 * router's dispatch and the per-request helpers handlers use.
 *
 * The server only takes connections from its listening socket, so each input travels over
 * a real loopback TCP connection to a server on a private loop that outlives the input
 * (created on the first input). Per input:
 *   connect; wait for the accept; send the input, split at each "<SPLIT>" marker (removed)
 *   with loop turns between pieces so the server reads each piece on its own (a token or
 *   a chunk header cut in two); at the first "<CLOSE>" marker (removed) call
 *   bd_http_server_close() with the connection open, and start a new server for the next
 *   input; shut the write side; run the loop until the server has closed the connection
 *   (or, after <CLOSE>, called back and freed itself) and every async handler has finished.
 * The client end is a plain non-blocking socket drained by a uv_poll, so the server never
 * blocks on a full socket buffer. A watchdog aborts when one input is not done after 5 s:
 * a connection the server never closes after EOF, or a server close that never completes.
 *
 * Routes (small limits so the fuzzer reaches 413/414/431 with small inputs):
 *   GET  /                     200, sync
 *   POST /echo                 body echoed, sync
 *   GET  /items/{id}           query parameters and job-id check, JSON, sync
 *   GET  /items/stats          literal beats {id}
 *   DELETE /items/{id}         204, sync
 *   POST /jobs                 JSON body parsed (as submit does), 202/400/415, sync
 *   POST|GET /async/{status}   answered with that status from a zero timer (also after the
 *                              client has gone: the handler must still finish)
 *   GET  /stream/{n}           chunked stream of n pieces driven by the drain callback
 *   POST /upload/{mode}        a streaming route (on_headers): the body is counted as it
 *                              arrives; mode "pause" pauses after each piece and resumes from
 *                              a zero timer, "fail" answers 400 at the first piece (the
 *                              connection then closes), "limit" allows 16 bytes, "buffer"
 *                              declines the stream (on_echo answers the buffered body)
 * HEAD is served by GET routes. SIGPIPE is ignored, as batchd does.
 * SPDX-License-Identifier: MIT
 */
#define _GNU_SOURCE                      /* memmem */
#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "batchd/api.h"
#include "batchd/error.h"
#include "batchd/http_server.h"
#include "batchd/log.h"
#include "batchd/router.h"

#define FUZZ_SPLIT "<SPLIT>"
#define FUZZ_CLOSE "<CLOSE>"
#define FUZZ_WATCHDOG_MS 5000
#define FUZZ_TURNS_PER_PIECE 3

#define FUZZ_NAME "fuzz_http"
#include "fuzz_check.h"

/* The harness: one loop and server for the process (test code, not batchd). */
struct fuzz_http {
    uv_loop_t loop;
    struct bd_http_server *srv;
    struct bd_router *router;
    int port;
    unsigned pending;                  /* async handlers that have not finished */
    uv_timer_t watchdog;
    uv_poll_t client_poll;
    int client_fd;
    bool is_client_eof;
    bool is_poll_closed;
    bool is_verbose;                   /* BD_FUZZ_LOG set: server log and responses to stderr */
    bool is_setup;
    bool is_srv_closing;               /* bd_http_server_close() called for fz.srv */
};

static struct fuzz_http fz;

/* ---- Handlers ------------------------------------------------------------------------ */

static void on_root(struct bd_http_request *req, void *arg)
{
    (void)arg;
    bd_http_respond(req, 200, "text/plain", NULL, "batchd fuzz\n", 12);
}

static void on_echo(struct bd_http_request *req, void *arg)
{
    (void)arg;
    (void)bd_http_header_get(req, "Content-Type");
    bd_http_respond(req, 200, "application/octet-stream", "X-Echo: 1\r\n", req->body,
                    req->body_len);
}

static void on_item(struct bd_http_request *req, void *arg)
{
    const char *limit = bd_http_query_get(req, "limit");
    const char *cursor = bd_http_query_get(req, "cursor");
    const char *id = req->params_count > 0 ? req->params[0] : "";
    json_t *doc;
    char *text;

    (void)arg;
    FUZZ_CHECK(req->params_count == 1 && req->route != NULL, "params %u", req->params_count);
    id = bd_http_strdup(req, id);                  /* arena copy, freed with the request */
    if (id == NULL || !bd__api_is_job_id_valid(id)) {
        char msg[300];
        /* The raw parameter goes into the message: not UTF-8 exercises the fallback body. */
        snprintf(msg, sizeof(msg), "bad id '%.200s'", id ? id : "");
        bd_http_respond_error(req, 400, "validation_error", msg, "id");
        return;
    }
    doc = json_pack("{s:s, s:s?, s:s?, s:s}", "id", id, "limit", limit, "cursor", cursor,
                    "query", req->query);
    text = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    json_decref(doc);
    if (text == NULL) {                            /* a query value that is not UTF-8 */
        bd_http_respond_err(req, BD_EINVAL, "query is not UTF-8", "query");
        return;
    }
    bd_http_respond(req, 200, "application/json", NULL, text, strlen(text));
    free(text);
}

/* A literal segment that must win over /items/{id}. */
static void on_item_stats(struct bd_http_request *req, void *arg)
{
    (void)arg;
    FUZZ_CHECK(req->params_count == 0, "/items/stats matched as {id}");
    bd_http_respond(req, 200, "application/json", NULL, "{\"items\":0}", 11);
}

static void on_item_delete(struct bd_http_request *req, void *arg)
{
    (void)arg;
    bd_http_respond(req, 204, NULL, NULL, "ignored", 7);   /* 204: the body is dropped */
}

static void on_submit(struct bd_http_request *req, void *arg)
{
    const char *ct = bd_http_header_get(req, "Content-Type");
    json_error_t jerr;
    json_t *body;

    (void)arg;
    if (ct == NULL || strncasecmp(ct, "application/json", 16) != 0) {
        bd_http_respond_err(req, BD_EMEDIATYPE, "Content-Type must be application/json", NULL);
        return;
    }
    body = json_loadb(req->body, req->body_len, 0, &jerr);
    if (body == NULL) {
        char msg[256];
        snprintf(msg, sizeof(msg), "body is not valid JSON: %s (line %d, column %d)",
                 jerr.text, jerr.line, jerr.column);
        bd_http_respond_error(req, 400, "invalid_json", msg, "body");
        return;
    }
    json_decref(body);
    bd_http_respond(req, 202, "application/json", "Location: /jobs/x\r\n", "{}", 2);
}

/* Answered from a zero timer: after the request's connection may be gone. */
struct async_call {
    uv_timer_t timer;
    struct bd_http_request *req;
    int status;                        /* from the path: 200..599, else 200 */
    bool is_aborted;
};

static void async_on_closed(uv_handle_t *h)
{
    free(h->data);
    fz.pending--;
}

static void async_on_timer(uv_timer_t *t)
{
    struct async_call *c = t->data;

    if (c->status >= 400)                          /* JSON error body, reason from the table */
        bd_http_respond_error(c->req, c->status, "fuzz", NULL, c->is_aborted ? "gone" : NULL);
    else
        bd_http_respond(c->req, c->status, "text/plain", NULL, "later\n", 6);
    uv_close((uv_handle_t *)&c->timer, async_on_closed);
}

static void async_on_abort(struct bd_http_request *req, void *arg)
{
    struct async_call *c = arg;

    (void)req;
    c->is_aborted = true;                          /* still answered, from the timer */
}

static void on_async(struct bd_http_request *req, void *arg)
{
    struct async_call *c = calloc(1, sizeof(*c));

    (void)arg;
    if (c == NULL) {
        bd_http_respond_err(req, BD_ENOMEM, NULL, NULL);
        return;
    }
    c->req = req;
    c->status = atoi(req->params[0]);
    if (c->status < 200 || c->status > 599)
        c->status = 200;
    uv_timer_init(&fz.loop, &c->timer);
    c->timer.data = c;
    bd_http_set_abort_cb(req, async_on_abort, c);
    uv_timer_start(&c->timer, async_on_timer, 0, 0);
    fz.pending++;
}

/* A chunked stream of n pieces, two at a time once the previous ones have drained. Every
 * third round first re-arms the drain callback with nothing pending, which the server must
 * answer on a later loop turn. */
struct stream_call {
    struct bd_http_request *req;
    unsigned left;
    unsigned rounds;
};

static void stream_finish(struct stream_call *s)
{
    bd_http_stream_end(s->req);
    free(s);
    fz.pending--;
}

static void stream_on_drain(struct bd_http_request *req, void *arg)
{
    struct stream_call *s = arg;
    char piece[64];
    int n;

    (void)req;
    if (s->rounds++ % 3 == 2 && s->left > 0) {
        bd_http_stream_set_drain_cb(s->req, stream_on_drain, s);
        return;
    }
    while (s->left > 0) {
        for (int k = 0; k < 2 && s->left > 0; k++) {
            n = snprintf(piece, sizeof(piece), "piece %u\n", s->left--);
            if (bd_http_stream_write(s->req, piece, (size_t)n) < 0) {
                stream_finish(s);                  /* client gone: end now */
                return;
            }
        }
        if (bd_http_stream_get_pending(s->req) > 0) {
            bd_http_stream_set_drain_cb(s->req, stream_on_drain, s);
            return;
        }
    }
    stream_finish(s);
}

static void stream_on_abort(struct bd_http_request *req, void *arg)
{
    (void)req;
    stream_finish(arg);                            /* the drain callback will never come */
}

static void on_stream(struct bd_http_request *req, void *arg)
{
    struct stream_call *s = calloc(1, sizeof(*s));

    (void)arg;
    if (s == NULL) {
        bd_http_respond_err(req, BD_ENOMEM, NULL, NULL);
        return;
    }
    s->req = req;
    s->left = (unsigned)strtoul(req->params[0], NULL, 10) % 9;
    fz.pending++;
    bd_http_set_abort_cb(req, stream_on_abort, s);
    if (bd_http_stream_begin(req, 200, "text/plain", "Cache-Control: no-store\r\n") < 0) {
        stream_finish(s);
        return;
    }
    bd_http_stream_set_drain_cb(req, stream_on_drain, s);   /* called back on a later turn */
}

/* A streamed upload: counts the body, answers at its end (or at once for "fail"). */
struct upload_call {
    uv_timer_t timer;                  /* resumes a paused body */
    struct bd_http_request *req;
    size_t bytes;
    bool is_pausing;
    bool is_paused;
    bool is_failing;
    bool is_done;                      /* answered */
};

static void upload_on_closed(uv_handle_t *h)
{
    free(h->data);
    fz.pending--;
}

static void upload_finish(struct upload_call *u, int status)
{
    char text[48];
    int n;

    FUZZ_CHECK(!u->is_done, "upload answered twice");
    u->is_done = true;
    if (status < 0) {
        bd_http_respond_err(u->req, status, NULL, NULL);
    } else {
        n = snprintf(text, sizeof(text), "%zu\n", u->bytes);
        bd_http_respond(u->req, status, "text/plain", NULL, text, (size_t)n);
    }
    uv_close((uv_handle_t *)&u->timer, upload_on_closed);
}

static void upload_on_timer(uv_timer_t *t)
{
    struct upload_call *u = t->data;

    u->is_paused = false;
    bd_http_body_resume(u->req);
}

static int upload_on_body(struct bd_http_request *req, const char *data, size_t len, void *arg)
{
    struct upload_call *u = arg;

    FUZZ_CHECK(!u->is_done && !u->is_paused, "on_body after the answer or while paused");
    FUZZ_CHECK(req->body == NULL, "streamed body buffered");
    if (data == NULL) {
        upload_finish(u, bd_http_body_get_status(req) < 0 ? bd_http_body_get_status(req) : 200);
        return 0;
    }
    u->bytes += len;
    if (u->is_failing) {
        bd_http_respond_error(req, 400, "bad_request", "fuzz", NULL);
        u->is_done = true;
        uv_close((uv_handle_t *)&u->timer, upload_on_closed);
        return -1;
    }
    if (u->is_pausing) {
        u->is_paused = true;
        bd_http_body_pause(req);
        uv_timer_start(&u->timer, upload_on_timer, 0, 0);
    }
    return 0;
}

static void upload_on_abort(struct bd_http_request *req, void *arg)
{
    struct upload_call *u = arg;

    (void)req;
    if (!u->is_done)
        upload_finish(u, 200);                     /* the handler still finishes req */
}

static void on_upload_headers(struct bd_http_request *req, void *arg)
{
    const char *mode = req->params[0];
    struct upload_call *u;

    (void)arg;
    if (strcmp(mode, "buffer") == 0)
        return;                                    /* on_echo at message-complete */
    if (strcmp(mode, "limit") == 0)
        bd_http_body_set_limit(req, 16);
    if ((u = calloc(1, sizeof(*u))) == NULL) {
        bd_http_respond_err(req, BD_ENOMEM, NULL, NULL);
        return;
    }
    u->req = req;
    u->is_pausing = strcmp(mode, "pause") == 0;
    u->is_failing = strcmp(mode, "fail") == 0;
    uv_timer_init(&fz.loop, &u->timer);
    u->timer.data = u;
    fz.pending++;
    bd_http_set_abort_cb(req, upload_on_abort, u);
    FUZZ_CHECK(bd_http_body_stream(req, upload_on_body, u) == BD_OK, "body_stream");
}

static void on_response(const struct bd_http_request *req, int status, uint64_t duration_ns,
                        void *arg)
{
    (void)req;
    (void)duration_ns;
    (void)arg;
    FUZZ_CHECK(status >= 100 && status <= 599, "status %d", status);
}

/* ---- Harness ------------------------------------------------------------------------- */

static void on_watchdog(uv_timer_t *t)
{
    (void)t;
    fprintf(stderr, "fuzz_http: input not finished after %d ms: the server neither read "
            "it all nor closed the connection (connections=%u pending=%u client_eof=%d)\n",
            FUZZ_WATCHDOG_MS,
            fz.srv && !fz.is_srv_closing ? bd_http_server_get_connections(fz.srv) : 0,
            fz.pending, (int)fz.is_client_eof);
    abort();
}

static void fuzz_setup(void)
{
    static const struct {
        const char *method, *pattern;
        bd_http_request_cb cb;
    } routes[] = {
        { "GET", "/", on_root },
        { "POST", "/echo", on_echo },
        { "GET", "/items/{id}", on_item },
        { "GET", "/items/stats", on_item_stats },
        { "DELETE", "/items/{id}", on_item_delete },
        { "POST", "/jobs", on_submit },
        { "POST", "/async/{x}", on_async },
        { "GET", "/async/{x}", on_async },
        { "GET", "/stream/{n}", on_stream },
    };

    signal(SIGPIPE, SIG_IGN);
    fz.is_verbose = getenv("BD_FUZZ_LOG") != NULL;
    bd_log_set_level(fz.is_verbose ? BD_LOG_DEBUG : BD_LOG_OFF);
    FUZZ_CHECK(uv_loop_init(&fz.loop) == 0, "uv_loop_init");
    FUZZ_CHECK((fz.router = bd_router_new()) != NULL, "router");
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++)
        FUZZ_CHECK(bd_router_add(fz.router, routes[i].method, routes[i].pattern, routes[i].cb,
                                 NULL) == BD_OK, "route %s", routes[i].pattern);
    FUZZ_CHECK(bd_router_add_stream(fz.router, "POST", "/upload/{mode}", on_upload_headers,
                                    on_echo, NULL) == BD_OK, "route /upload/{mode}");
    uv_timer_init(&fz.loop, &fz.watchdog);
    fz.is_poll_closed = true;
    fz.is_setup = true;
}

/* A new server on a new port: at the start, and after an input closed the last one. */
static void server_start(void)
{
    struct bd_http_options opt = {
        .max_header_bytes = 2048,
        .max_url_bytes = 256,
        .max_body_bytes = 8192,
        .on_request = bd_router_dispatch,
        .on_request_arg = fz.router,
        .on_headers = bd_router_dispatch_headers,
        .on_headers_arg = fz.router,
        .on_response = on_response,
    };

    FUZZ_CHECK(bd_http_server_new(&fz.loop, &opt, &fz.srv) == BD_OK, "server");
    FUZZ_CHECK(bd_http_server_listen(fz.srv, "127.0.0.1", 0) == BD_OK, "listen");
    fz.port = bd_http_server_get_port(fz.srv);
    fz.is_srv_closing = false;
}

static void server_on_closed(struct bd_http_server *srv, void *arg)
{
    (void)arg;
    FUZZ_CHECK(srv == fz.srv && fz.is_srv_closing, "closed callback for another server");
    fz.srv = NULL;                                 /* freed once this returns */
}

/* The connection is done: closed by the server and (when closing) the server is gone. */
static bool is_input_done(void)
{
    if (fz.pending > 0)
        return false;
    if (fz.is_srv_closing)
        return fz.srv == NULL;
    return bd_http_server_get_connections(fz.srv) == 0;
}

/* Read and drop whatever the server sent; note EOF or a reset. */
static void client_drain(void)
{
    char buf[65536];

    while (!fz.is_client_eof) {
        ssize_t n = recv(fz.client_fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (n > 0) {
            if (fz.is_verbose)
                fwrite(buf, 1, (size_t)n, stderr);
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        fz.is_client_eof = true;                   /* 0: EOF; else ECONNRESET and friends */
        uv_poll_stop(&fz.client_poll);
    }
}

static void client_on_poll(uv_poll_t *p, int status, int events)
{
    (void)p;
    (void)status;
    (void)events;
    client_drain();
}

static void client_on_poll_closed(uv_handle_t *h)
{
    (void)h;
    fz.is_poll_closed = true;
}

/* Send all of data, turning the loop while the socket is full. Returns false once the
 * server has closed or reset the connection. */
static bool client_send(const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fz.client_fd, data, len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n > 0) {
            data += n;
            len -= (size_t)n;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            uv_run(&fz.loop, UV_RUN_ONCE);
        } else {
            return false;                          /* EPIPE / ECONNRESET */
        }
    }
    return true;
}

static void client_connect(void)
{
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)fz.port) };
    int one = 1;

    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    fz.client_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    FUZZ_CHECK(fz.client_fd >= 0, "socket: %s", strerror(errno));
    setsockopt(fz.client_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    /* A connect to a loopback listener completes from the backlog, before accept. A signal
     * (libFuzzer's timer) can interrupt it; it then goes on by itself, so wait for it. */
    if (connect(fz.client_fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        struct pollfd pfd = { .fd = fz.client_fd, .events = POLLOUT };
        int err = errno;
        socklen_t len = sizeof(err);

        FUZZ_CHECK(err == EINTR, "connect: %s", strerror(err));
        while (poll(&pfd, 1, -1) < 0)
            FUZZ_CHECK(errno == EINTR, "poll: %s", strerror(errno));
        FUZZ_CHECK(getsockopt(fz.client_fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0,
                   "connect: %s", strerror(err));
    }
    fz.is_client_eof = false;
    fz.is_poll_closed = false;
    FUZZ_CHECK(uv_poll_init(&fz.loop, &fz.client_poll, fz.client_fd) == 0, "uv_poll_init");
    uv_poll_start(&fz.client_poll, UV_READABLE, client_on_poll);
    while (bd_http_server_get_connections(fz.srv) == 0)
        uv_run(&fz.loop, UV_RUN_ONCE);
}

static void client_close(void)
{
    uv_close((uv_handle_t *)&fz.client_poll, client_on_poll_closed);
    while (!fz.is_poll_closed)
        uv_run(&fz.loop, UV_RUN_NOWAIT);
    close(fz.client_fd);
    fz.client_fd = -1;
}

/* The next marker in p[0..end): *kind is 'S' for <SPLIT>, 'C' for <CLOSE>; NULL if none. */
static const char *next_marker(const char *p, const char *end, char *kind, size_t *mlen)
{
    const char *split = memmem(p, (size_t)(end - p), FUZZ_SPLIT, strlen(FUZZ_SPLIT));
    const char *close = memmem(p, (size_t)(end - p), FUZZ_CLOSE, strlen(FUZZ_CLOSE));

    if (split == NULL && close == NULL)
        return NULL;
    if (close == NULL || (split != NULL && split < close)) {
        *kind = 'S';
        *mlen = strlen(FUZZ_SPLIT);
        return split;
    }
    *kind = 'C';
    *mlen = strlen(FUZZ_CLOSE);
    return close;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data, *end = p + size;
    bool is_open = true;

    if (!fz.is_setup)
        fuzz_setup();
    if (fz.srv == NULL)
        server_start();
    FUZZ_CHECK(bd_http_server_get_connections(fz.srv) == 0 && fz.pending == 0,
               "previous input left connections=%u pending=%u",
               bd_http_server_get_connections(fz.srv), fz.pending);
    uv_update_time(&fz.loop);
    uv_timer_start(&fz.watchdog, on_watchdog, FUZZ_WATCHDOG_MS, 0);
    client_connect();

    while (is_open) {
        char kind = 0;
        size_t mlen = 0;
        const char *cut = next_marker(p, end, &kind, &mlen);
        const char *piece_end = cut ? cut : end;

        is_open = client_send(p, (size_t)(piece_end - p));
        for (int i = 0; i < FUZZ_TURNS_PER_PIECE; i++)
            uv_run(&fz.loop, UV_RUN_NOWAIT);
        if (cut == NULL)
            break;
        if (kind == 'C' && !fz.is_srv_closing) {
            fz.is_srv_closing = true;              /* the next input gets a new server */
            bd_http_server_close(fz.srv, server_on_closed, NULL);
        }
        p = cut + mlen;
    }
    shutdown(fz.client_fd, SHUT_WR);
    while (!is_input_done())
        uv_run(&fz.loop, UV_RUN_ONCE);
    client_close();
    uv_timer_stop(&fz.watchdog);
    return 0;
}
