/* bench_http.c -- HTTP/1.1 keep-alive client connections for the bench tools (libuv +
 * llhttp).
 *
 * Owns each struct bh_conn: its socket, parser and read buffer. Loop thread only. A
 * connection that breaks is closed; its pending callback runs from the close callback,
 * and the next request opens a new socket. Bench code only.  SPDX-License-Identifier: MIT
 */
#include "bench_http.h"
#include "bench_common.h"

#include <arpa/inet.h>
#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BH_READ_BUF (64u << 10)

enum bh_state { BH_DOWN, BH_CONNECTING, BH_UP, BH_CLOSING };

struct bh_conn {
    uv_loop_t *loop;
    struct sockaddr_in addr;
    uv_tcp_t tcp;
    uv_connect_t connect_req;
    uv_write_t write_req;
    llhttp_t parser;
    llhttp_settings_t settings;
    enum bh_state state;
    bool is_freeing;                   /* bh_conn_free called: free after the close */

    /* The request in flight. */
    bool is_busy;
    bool is_complete;                  /* a whole response was parsed */
    bool is_written;
    bool keep_body;
    int error;                         /* first failure of this request, 0 if none */
    char head[1024];
    size_t head_len;
    const void *body;
    size_t body_len;
    bh_response_cb cb;
    void *arg;

    struct bb_buf resp;                /* response body when keep_body */
    size_t resp_len;                   /* response body length either way */
    char *rbuf;
};

static void conn_close(struct bh_conn *c, int error);

static int conn_on_body(llhttp_t *p, const char *at, size_t len)
{
    struct bh_conn *c = p->data;
    if (c->keep_body)
        bb_put(&c->resp, at, len);
    c->resp_len += len;
    return 0;
}

static int conn_on_message_complete(llhttp_t *p)
{
    struct bh_conn *c = p->data;
    c->is_complete = true;
    return HPE_PAUSED;                 /* stop here; the callback may start the next request */
}

/* Delivers the response of the request in flight and makes the connection idle. */
static void conn_deliver(struct bh_conn *c, int status)
{
    bh_response_cb cb = c->cb;
    void *arg = c->arg;
    const char *body = c->keep_body ? (c->resp.p ? c->resp.p : "") : NULL;
    size_t len = c->resp_len;

    c->is_busy = false;
    c->cb = NULL;
    cb(c, status, body, len, arg);
}

static void conn_on_closed(uv_handle_t *h)
{
    struct bh_conn *c = h->data;

    c->state = BH_DOWN;
    if (c->is_busy)
        conn_deliver(c, c->error ? c->error : UV_ECONNRESET);
    if (c->is_freeing) {
        bb_free(&c->resp);
        free(c->rbuf);
        free(c);
    }
}

static void conn_close(struct bh_conn *c, int error)
{
    if (c->state == BH_CLOSING || c->state == BH_DOWN)
        return;
    if (c->error == 0)
        c->error = error;
    c->state = BH_CLOSING;
    uv_close((uv_handle_t *)&c->tcp, conn_on_closed);
}

static void conn_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct bh_conn *c = h->data;
    (void)suggested;
    buf->base = c->rbuf;
    buf->len = BH_READ_BUF;
}

static void conn_finish_if_done(struct bh_conn *c)
{
    if (!c->is_busy || !c->is_complete || !c->is_written)
        return;
    int status = c->parser.status_code;
    bool keep = llhttp_should_keep_alive(&c->parser);
    if (!keep) {
        /* The server closes after this response: deliver it, then reconnect next time. */
        c->error = status;
        conn_close(c, status);
        return;
    }
    llhttp_resume(&c->parser);
    conn_deliver(c, status);
}

static void conn_on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct bh_conn *c = s->data;

    if (n < 0) {
        conn_close(c, (int)n == UV_EOF ? UV_ECONNRESET : (int)n);
        return;
    }
    if (n == 0)
        return;
    if (!c->is_busy || c->is_complete) {
        conn_close(c, UV_EPROTO);      /* bytes nobody asked for */
        return;
    }
    llhttp_errno_t e = llhttp_execute(&c->parser, buf->base, (size_t)n);
    if (e != HPE_OK && e != HPE_PAUSED) {
        fprintf(stderr, "bench_http: bad response: %s\n", llhttp_errno_name(e));
        conn_close(c, UV_EPROTO);
        return;
    }
    conn_finish_if_done(c);
}

static void conn_on_written(uv_write_t *w, int status)
{
    struct bh_conn *c = w->data;

    if (status < 0) {
        conn_close(c, status);
        return;
    }
    c->is_written = true;
    conn_finish_if_done(c);
}

static void conn_send(struct bh_conn *c)
{
    uv_buf_t bufs[2] = { uv_buf_init(c->head, (unsigned)c->head_len),
                         uv_buf_init((char *)c->body, 0) };
    unsigned nbufs = 1;

    bufs[1].len = c->body_len;         /* size_t on Unix: bodies over 4 GiB are fine */
    if (c->body_len > 0)
        nbufs = 2;
    int rc = uv_write(&c->write_req, (uv_stream_t *)&c->tcp, bufs, nbufs, conn_on_written);
    if (rc < 0)
        conn_close(c, rc);
}

static void conn_on_connected(uv_connect_t *req, int status)
{
    struct bh_conn *c = req->data;

    if (c->state == BH_CLOSING)
        return;
    if (status < 0) {
        conn_close(c, status);
        return;
    }
    c->state = BH_UP;
    uv_tcp_nodelay(&c->tcp, 1);
    int rc = uv_read_start((uv_stream_t *)&c->tcp, conn_on_alloc, conn_on_read);
    if (rc < 0) {
        conn_close(c, rc);
        return;
    }
    conn_send(c);
}

struct bh_conn *bh_conn_new(uv_loop_t *loop, const struct sockaddr_in *addr)
{
    struct bh_conn *c = bb_xmalloc(sizeof(*c));

    memset(c, 0, sizeof(*c));
    c->loop = loop;
    c->addr = *addr;
    c->rbuf = bb_xmalloc(BH_READ_BUF);
    llhttp_settings_init(&c->settings);
    c->settings.on_body = conn_on_body;
    c->settings.on_message_complete = conn_on_message_complete;
    c->state = BH_DOWN;
    return c;
}

bool bh_conn_is_busy(const struct bh_conn *c)
{
    return c->is_busy || c->state == BH_CLOSING;
}

int bh_conn_request(struct bh_conn *c, const char *method, const char *path,
                    const char *content_type, const void *body, size_t body_len,
                    bool keep_body, bh_response_cb cb, void *arg)
{
    if (bh_conn_is_busy(c) || c->is_freeing)
        return UV_EBUSY;
    int n;
    if (content_type)
        n = snprintf(c->head, sizeof(c->head),
                     "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: %s\r\n"
                     "Content-Length: %zu\r\n\r\n", method, path, content_type, body_len);
    else if (body_len > 0 || strcmp(method, "POST") == 0)
        n = snprintf(c->head, sizeof(c->head),
                     "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %zu\r\n\r\n",
                     method, path, body_len);
    else
        n = snprintf(c->head, sizeof(c->head), "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                     method, path);
    if (n < 0 || (size_t)n >= sizeof(c->head))
        return UV_EINVAL;
    c->head_len = (size_t)n;
    c->body = body;
    c->body_len = body_len;
    c->cb = cb;
    c->arg = arg;
    c->keep_body = keep_body;
    c->is_busy = true;
    c->is_complete = false;
    c->is_written = false;
    c->error = 0;
    c->resp.len = 0;
    if (c->resp.p)
        c->resp.p[0] = '\0';
    c->resp_len = 0;

    if (c->state == BH_UP) {
        conn_send(c);
        return 0;
    }
    /* BH_DOWN: a fresh socket and parser. */
    uv_tcp_init(c->loop, &c->tcp);
    c->tcp.data = c;
    c->connect_req.data = c;
    c->write_req.data = c;
    llhttp_init(&c->parser, HTTP_RESPONSE, &c->settings);
    c->parser.data = c;
    c->state = BH_CONNECTING;
    int rc = uv_tcp_connect(&c->connect_req, &c->tcp, (const struct sockaddr *)&c->addr,
                            conn_on_connected);
    if (rc < 0)
        conn_close(c, rc);             /* the callback runs from the close callback */
    return 0;
}

void bh_conn_free(struct bh_conn *c)
{
    c->is_freeing = true;
    if (c->state == BH_DOWN) {
        bb_free(&c->resp);
        free(c->rbuf);
        free(c);
        return;
    }
    conn_close(c, UV_ECANCELED);
}

int bh_addr(const char *host, int port, struct sockaddr_in *addr)
{
    return uv_ip4_addr(host, port, addr);
}
