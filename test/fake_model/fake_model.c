/* fake_model.c -- the fake embedding model server for tests and benchmarks: main, the
 * listening socket and HTTP/1.1 connections (libuv + llhttp).
 *
 * Owns the loop, the listener, the signal handles and every struct fm_conn. Single thread;
 * never blocks. What to answer is decided by fake_model_routes.c; this file only parses,
 * delays (uv_timer), sends (one uv_write per response) and notices clients that go away.
 * Standalone: it must not link batchd_core, so tests never share bugs with the code under
 * test.  SPDX-License-Identifier: MIT
 *
 * Usage: fake_model [--port N] [--host ADDR] [--dim N] [--latency-ms N] [--jitter-ms N]
 *        [--fail-rate P] [--rate-429 P] [--retry-after S] [--hang-rate P] [--malformed-rate P]
 *        [--wrong-dim-rate P] [--max-inputs N] [--shuffle-openai] [--api-key K] [--seed N]
 *        [--model-dim NAME=N]...
 * Prints "fake_model listening port=N" on stdout once it accepts connections.
 *
 * A connection handles one request at a time: llhttp is paused at the end of each message,
 * the reply is sent (now, after a timer, or never for a hang), and only then is the next
 * pipelined request parsed, so replies leave in request order. Reading goes on while a
 * request is pending, so a client that closes during a delay or a hang is seen at once
 * (counted in "disconnects"); bytes it pipelined meanwhile wait in the input buffer.
 */
#include "fake_model.h"

#include <arpa/inet.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define CONN_READ_MIN   (16u << 10)    /* free space offered to each read */
#define CONN_URL_MAX    8192
#define CONN_FIELD_MAX  256
#define CONN_VALUE_MAX  8192

struct fm_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;                  /* fires a delayed reply */
    llhttp_t parser;
    struct fm_server *srv;
    struct fm_conn *prev;
    struct fm_conn *next;
    int pending_closes;

    struct fm_buf in;                  /* received bytes; [in_pos, in.len) not yet parsed */
    size_t in_pos;

    /* The request being parsed. */
    struct fm_buf url;
    struct fm_buf body;
    struct fm_buf field;
    struct fm_buf value;
    struct fm_buf auth;
    bool has_expect_continue;
    bool is_too_large;
    bool is_keep_alive;
    int method;

    /* The request being answered. */
    bool is_pending;                   /* parsed, not yet answered (delayed or hanging) */
    bool is_pending_embed;             /* ... and counted in stats.in_flight */
    struct fm_reply reply;             /* the delayed reply while is_pending and not hanging */

    bool is_draining;                  /* "Connection: close" reply sent: parse nothing more */
    bool is_closing;
};

struct fm_write {
    uv_write_t req;
    struct fm_conn *conn;
    char *mem;                         /* freed after the write; NULL for static bytes */
    bool is_last;                      /* close the connection once written */
};

static void conn_process(struct fm_conn *c);

/* ---------------------------------------------------------------------------------------
 * Small buffers
 */

static void sbuf_append(struct fm_buf *b, const char *at, size_t n, size_t max)
{
    if (b->len + n > max)
        n = max > b->len ? max - b->len : 0;
    if (n == 0)
        return;
    if (b->cap - b->len < n + 1) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap - b->len < n + 1)
            cap *= 2;
        b->p = fm_xrealloc(b->p, cap);
        b->cap = cap;
    }
    memcpy(b->p + b->len, at, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sbuf_free(struct fm_buf *b)
{
    free(b->p);
    *b = (struct fm_buf){0};
}

/* ---------------------------------------------------------------------------------------
 * Connection lifetime
 */

static void conn_on_close(uv_handle_t *h)
{
    struct fm_conn *c = h->data;

    if (--c->pending_closes > 0)
        return;
    sbuf_free(&c->in);
    sbuf_free(&c->url);
    sbuf_free(&c->body);
    sbuf_free(&c->field);
    sbuf_free(&c->value);
    sbuf_free(&c->auth);
    free(c->reply.buf.p);
    free(c);
}

/* Close c (idempotent). Writes still queued are cancelled by libuv and freed in their
 * callbacks, which run before conn_on_close. */
static void conn_close(struct fm_conn *c)
{
    struct fm_server *srv = c->srv;

    if (c->is_closing)
        return;
    c->is_closing = true;
    if (c->is_pending_embed && srv->stats.in_flight > 0)
        srv->stats.in_flight--;
    c->is_pending = false;
    c->is_pending_embed = false;
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, conn_on_close);
    uv_close((uv_handle_t *)&c->tcp, conn_on_close);
}

static void conn_on_write(uv_write_t *req, int status)
{
    struct fm_write *w = req->data;
    struct fm_conn *c = w->conn;

    if (status < 0 || w->is_last)
        conn_close(c);
    free(w->mem);
    free(w);
}

/* Queue len bytes at base; mem (may be NULL) is freed once written. */
static void conn_write(struct fm_conn *c, char *base, size_t len, char *mem, bool is_last)
{
    struct fm_write *w = fm_xrealloc(NULL, sizeof *w);
    uv_buf_t b = uv_buf_init(base, (unsigned)len);

    *w = (struct fm_write){.conn = c, .mem = mem, .is_last = is_last};
    w->req.data = w;
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, conn_on_write) < 0) {
        free(mem);
        free(w);
        conn_close(c);
    }
}

/* Send rep (taking its buffer) and mark the current request answered. */
static void conn_send(struct fm_conn *c, struct fm_reply *rep)
{
    struct fm_server *srv = c->srv;
    bool is_keep_alive = c->is_keep_alive && !srv->is_stopping;
    size_t len;

    if (c->is_pending_embed && srv->stats.in_flight > 0)
        srv->stats.in_flight--;
    c->is_pending = false;
    c->is_pending_embed = false;
    char *start = fm_reply_finish(rep, is_keep_alive, &len);
    char *mem = rep->buf.p;
    rep->buf = (struct fm_buf){0};
    if (!is_keep_alive)
        c->is_draining = true;
    conn_write(c, start, len, mem, !is_keep_alive);
}

static void conn_on_timer(uv_timer_t *t)
{
    struct fm_conn *c = t->data;

    conn_send(c, &c->reply);
    conn_process(c);
}

/* The parser stopped at the end of a message: answer it. */
static void conn_dispatch(struct fm_conn *c)
{
    struct fm_server *srv = c->srv;
    const char *path = c->url.p ? c->url.p : "/";
    const char *q = strchr(path, '?');
    struct fm_request req = {
        .method = c->method,
        .path = path,
        .path_len = q ? (size_t)(q - path) : strlen(path),
        .body = c->body.p ? c->body.p : "",
        .body_len = c->body.len,
        .auth = c->auth.p ? c->auth.p : "",
        .auth_len = c->auth.len,
    };
    struct fm_reply *rep = &c->reply;

    if (c->is_closing)                 /* a failed 100-continue write closed it mid-parse */
        return;
    *rep = (struct fm_reply){0};
    fm_handle(srv, &req, rep);
    if (rep->is_embed) {
        c->is_pending_embed = true;
        if (++srv->stats.in_flight > srv->stats.max_in_flight)
            srv->stats.max_in_flight = srv->stats.in_flight;
    }
    switch (rep->when) {
    case FM_REPLY_HANG:
        free(rep->buf.p);
        rep->buf = (struct fm_buf){0};
        c->is_pending = true;
        break;
    case FM_REPLY_DELAYED:
        c->is_pending = true;
        uv_timer_start(&c->timer, conn_on_timer, rep->delay_ms, 0);
        break;
    case FM_REPLY_NOW:
        conn_send(c, rep);
        break;
    }
}

/* Parse buffered input until it runs out or a request is left pending. */
static void conn_process(struct fm_conn *c)
{
    while (!c->is_pending && !c->is_draining && !c->is_closing && c->in_pos < c->in.len) {
        const char *p = c->in.p + c->in_pos;
        size_t n = c->in.len - c->in_pos;
        enum llhttp_errno e = llhttp_execute(&c->parser, p, n);

        if (e == HPE_OK) {
            c->in_pos = c->in.len;
        } else if (e == HPE_PAUSED) {
            c->in_pos += (size_t)(llhttp_get_error_pos(&c->parser) - p);
            llhttp_resume(&c->parser);
            conn_dispatch(c);
        } else {
            struct fm_reply rep = {0};
            char msg[160];
            snprintf(msg, sizeof msg, "bad HTTP request: %s (%s)", llhttp_errno_name(e),
                     c->is_too_large ? "body too large" : llhttp_get_error_reason(&c->parser));
            fm_reply_error(&rep, c->is_too_large ? 413 : 400, msg);
            c->is_keep_alive = false;
            conn_send(c, &rep);
        }
    }
    if (c->in_pos == c->in.len)
        c->in_pos = c->in.len = 0;
}

static void conn_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct fm_conn *c = h->data;
    struct fm_buf *in = &c->in;

    (void)suggested;
    /* Nothing keeps pointers into the input buffer between reads (llhttp callbacks copy),
     * so parsed bytes can be dropped and the rest moved to the front. */
    if (c->in_pos > 0) {
        memmove(in->p, in->p + c->in_pos, in->len - c->in_pos);
        in->len -= c->in_pos;
        c->in_pos = 0;
    }
    if (in->cap - in->len < CONN_READ_MIN) {
        size_t cap = in->cap ? in->cap * 2 : 4 * CONN_READ_MIN;
        while (cap - in->len < CONN_READ_MIN)
            cap *= 2;
        in->p = fm_xrealloc(in->p, cap);
        in->cap = cap;
    }
    *buf = uv_buf_init(in->p + in->len, (unsigned)(in->cap - in->len));
}

static void conn_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct fm_conn *c = s->data;

    (void)buf;
    if (nread < 0) {
        /* EOF or reset: a client that leaves before its answer is the case tests count. */
        if (c->is_pending)
            c->srv->stats.disconnects++;
        conn_close(c);
        return;
    }
    c->in.len += (size_t)nread;
    if (c->is_draining) {
        c->in_pos = c->in.len = 0;
        return;
    }
    if (c->is_pending) {
        if (c->in.len - c->in_pos > 2 * (size_t)FM_MAX_BODY)
            conn_close(c);            /* pipelining far ahead of a hang: give up */
        return;
    }
    conn_process(c);
}

/* ---------------------------------------------------------------------------------------
 * llhttp callbacks
 */

static int conn_on_message_begin(llhttp_t *p)
{
    struct fm_conn *c = p->data;

    c->url.len = c->body.len = c->field.len = c->value.len = c->auth.len = 0;
    c->has_expect_continue = false;
    c->is_too_large = false;
    return 0;
}

static int conn_on_url(llhttp_t *p, const char *at, size_t n)
{
    struct fm_conn *c = p->data;

    if (c->url.len + n > CONN_URL_MAX) {
        llhttp_set_error_reason(p, "URL too long");
        return HPE_USER;
    }
    sbuf_append(&c->url, at, n, CONN_URL_MAX);
    return 0;
}

static int conn_on_header_field(llhttp_t *p, const char *at, size_t n)
{
    struct fm_conn *c = p->data;

    sbuf_append(&c->field, at, n, CONN_FIELD_MAX);
    return 0;
}

static int conn_on_header_value(llhttp_t *p, const char *at, size_t n)
{
    struct fm_conn *c = p->data;

    sbuf_append(&c->value, at, n, CONN_VALUE_MAX);
    return 0;
}

static int conn_on_header_value_complete(llhttp_t *p)
{
    struct fm_conn *c = p->data;
    const char *f = c->field.p ? c->field.p : "";
    const char *v = c->value.p ? c->value.p : "";

    if (strcasecmp(f, "authorization") == 0) {
        c->auth.len = 0;
        sbuf_append(&c->auth, v, c->value.len, CONN_VALUE_MAX);
    } else if (strcasecmp(f, "expect") == 0 && strcasecmp(v, "100-continue") == 0) {
        c->has_expect_continue = true;
    }
    c->field.len = c->value.len = 0;
    return 0;
}

static int conn_on_headers_complete(llhttp_t *p)
{
    static char continue_line[] = "HTTP/1.1 100 Continue\r\n\r\n";
    struct fm_conn *c = p->data;

    /* curl waits a second for this before sending a large body; do not make it wait. */
    if (c->has_expect_continue)
        conn_write(c, continue_line, sizeof continue_line - 1, NULL, false);
    return 0;
}

static int conn_on_body(llhttp_t *p, const char *at, size_t n)
{
    struct fm_conn *c = p->data;

    if (c->body.len + n > FM_MAX_BODY) {
        c->is_too_large = true;
        llhttp_set_error_reason(p, "body too large");
        return HPE_USER;
    }
    sbuf_append(&c->body, at, n, FM_MAX_BODY);
    return 0;
}

static int conn_on_message_complete(llhttp_t *p)
{
    struct fm_conn *c = p->data;

    c->is_keep_alive = llhttp_should_keep_alive(p);
    c->method = llhttp_get_method(p);
    return HPE_PAUSED;                 /* conn_process answers, then resumes */
}

/* ---------------------------------------------------------------------------------------
 * Server
 */

static void srv_on_connection(uv_stream_t *listener, int status)
{
    struct fm_server *srv = listener->data;

    if (status < 0 || srv->is_stopping)
        return;
    struct fm_conn *c = fm_xrealloc(NULL, sizeof *c);
    memset(c, 0, sizeof *c);
    c->srv = srv;
    uv_tcp_init(srv->loop, &c->tcp);
    uv_timer_init(srv->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->pending_closes = 2;
    llhttp_init(&c->parser, HTTP_REQUEST, &srv->settings);
    c->parser.data = c;
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) < 0) {
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    if (uv_read_start((uv_stream_t *)&c->tcp, conn_on_alloc, conn_on_read) < 0)
        conn_close(c);
}

static void srv_stop(struct fm_server *srv)
{
    if (srv->is_stopping)
        return;
    srv->is_stopping = true;
    uv_close((uv_handle_t *)&srv->listener, NULL);
    uv_close((uv_handle_t *)&srv->sig_int, NULL);
    uv_close((uv_handle_t *)&srv->sig_term, NULL);
    while (srv->conns)
        conn_close(srv->conns);
}

static void srv_on_signal(uv_signal_t *h, int signum)
{
    (void)signum;
    srv_stop(h->data);
}

static int srv_listen(struct fm_server *srv, const char *host, int port)
{
    struct sockaddr_storage ss;
    struct sockaddr_storage bound;
    int len = sizeof bound;
    int err;

    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) < 0 &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss) < 0) {
        fprintf(stderr, "fake_model: bad --host '%s'\n", host);
        return -1;
    }
    uv_tcp_init(srv->loop, &srv->listener);
    srv->listener.data = srv;
    if ((err = uv_tcp_bind(&srv->listener, (struct sockaddr *)&ss, 0)) < 0 ||
        (err = uv_listen((uv_stream_t *)&srv->listener, 1024, srv_on_connection)) < 0 ||
        (err = uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&bound, &len)) < 0) {
        fprintf(stderr, "fake_model: cannot listen on %s:%d: %s\n", host, port,
                uv_strerror(err));
        uv_close((uv_handle_t *)&srv->listener, NULL);
        return -1;
    }
    int actual = bound.ss_family == AF_INET6
                     ? ntohs(((struct sockaddr_in6 *)&bound)->sin6_port)
                     : ntohs(((struct sockaddr_in *)&bound)->sin_port);
    printf("fake_model listening port=%d\n", actual);
    fflush(stdout);
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: fake_model [--port N] [--host ADDR] [--dim N] [--latency-ms N] "
            "[--jitter-ms N]\n"
            "       [--fail-rate P] [--rate-429 P] [--retry-after S] [--hang-rate P]\n"
            "       [--malformed-rate P] [--wrong-dim-rate P] [--max-inputs N] "
            "[--shuffle-openai]\n"
            "       [--api-key K] [--seed N] [--model-dim NAME=N]...\n"
            "Routes: POST /api/embed (Ollama), POST /v1/embeddings (OpenAI), POST /embed (TEI),\n"
            "        GET /stats, POST /stats/reset, GET|POST /config, GET /healthz\n");
}

enum { OPT_PORT = 'p', OPT_HOST = 'H', OPT_HELP = 'h', OPT_MODEL_DIM = 0x200, OPT_KEY = 0x100 };

/* Parses argv into srv->cfg, *host and *port. Returns 0, 1 for --help, -1 on error. */
static int parse_args(struct fm_server *srv, int argc, char **argv, const char **host,
                      int *port)
{
    /* One long option per setting, named like the setting with '-' for '_'; getopt_long
     * only reads opts during this call. */
    char names[32][32];
    struct option opts[40];
    size_t n = 0;
    char err[256];
    int idx = 0;
    int ch;

    opts[n++] = (struct option){"port", required_argument, NULL, OPT_PORT};
    opts[n++] = (struct option){"host", required_argument, NULL, OPT_HOST};
    opts[n++] = (struct option){"help", no_argument, NULL, OPT_HELP};
    opts[n++] = (struct option){"model-dim", required_argument, NULL, OPT_MODEL_DIM};
    for (size_t i = 0; fm_config_keys[i] && i < 32; i++) {
        snprintf(names[i], sizeof names[i], "%s", fm_config_keys[i]);
        for (char *s = names[i]; *s; s++)
            if (*s == '_')
                *s = '-';
        bool is_flag = strcmp(fm_config_keys[i], "shuffle_openai") == 0;
        opts[n++] = (struct option){names[i], is_flag ? optional_argument : required_argument,
                                    NULL, OPT_KEY};
    }
    opts[n] = (struct option){0};

    while ((ch = getopt_long(argc, argv, "h", opts, &idx)) != -1) {
        switch (ch) {
        case OPT_PORT: {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || v < 0 || v > 65535) {
                fprintf(stderr, "fake_model: bad --port '%s'\n", optarg);
                return -1;
            }
            *port = (int)v;
            break;
        }
        case OPT_HOST:
            *host = optarg;
            break;
        case OPT_HELP:
            return 1;
        case OPT_MODEL_DIM:
        case OPT_KEY:
            if (fm_config_set_arg(&srv->cfg, opts[idx].name, optarg, err, sizeof err) < 0) {
                fprintf(stderr, "fake_model: %s\n", err);
                return -1;
            }
            break;
        default:
            return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "fake_model: unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct fm_server srv;
    const char *host = "127.0.0.1";
    int port = 0;

    memset(&srv, 0, sizeof srv);
    fm_config_init(&srv.cfg);
    int rc = parse_args(&srv, argc, argv, &host, &port);
    if (rc != 0) {
        usage(rc > 0 ? stdout : stderr);
        fm_config_free(&srv.cfg);
        return rc > 0 ? 0 : 2;
    }
    fm_config_copy(&srv.cfg_start, &srv.cfg);
    srv.rng = srv.cfg.seed;
    srv.stats.by_model = json_object();

    llhttp_settings_init(&srv.settings);
    srv.settings.on_message_begin = conn_on_message_begin;
    srv.settings.on_url = conn_on_url;
    srv.settings.on_header_field = conn_on_header_field;
    srv.settings.on_header_value = conn_on_header_value;
    srv.settings.on_header_value_complete = conn_on_header_value_complete;
    srv.settings.on_headers_complete = conn_on_headers_complete;
    srv.settings.on_body = conn_on_body;
    srv.settings.on_message_complete = conn_on_message_complete;

    /* A client that closes while we write must not kill us; uv_write reports EPIPE. */
    signal(SIGPIPE, SIG_IGN);
    srv.loop = uv_default_loop();
    uv_signal_init(srv.loop, &srv.sig_int);
    uv_signal_init(srv.loop, &srv.sig_term);
    srv.sig_int.data = srv.sig_term.data = &srv;
    uv_signal_start(&srv.sig_int, srv_on_signal, SIGINT);
    uv_signal_start(&srv.sig_term, srv_on_signal, SIGTERM);

    rc = 0;
    if (srv_listen(&srv, host, port) < 0) {
        uv_close((uv_handle_t *)&srv.sig_int, NULL);
        uv_close((uv_handle_t *)&srv.sig_term, NULL);
        srv.is_stopping = true;
        rc = 1;
    }
    uv_run(srv.loop, UV_RUN_DEFAULT);
    if (uv_loop_close(srv.loop) != 0) {
        fprintf(stderr, "fake_model: handles left open at exit\n");
        rc = 1;
    }
    fm_config_free(&srv.cfg);
    fm_config_free(&srv.cfg_start);
    json_decref(srv.stats.by_model);
    free(srv.vec);
    free(srv.texts);
    return rc;
}
