/* http_parse.c -- the llhttp callbacks: bytes on a connection into a struct http_req.
 *
 * Gathers the URL and each header in the connection's scratch buffer (a callback may see
 * a token in pieces) and copies it into the request's arena when complete; enforces
 * max_url_bytes, max_header_bytes and each request's body limit; answers "Expect:
 * 100-continue". It pauses llhttp where http_server.c must run a handler: after the headers
 * when on_headers is set, after each piece of a streamed body, at message-complete.
 * A callback that fails records a BD_E* in conn->parse_err for http_server.c to answer.
 * Loop thread only; called only from inside llhttp_execute().  SPDX-License-Identifier: MIT
 */
#include "http_internal.h"
#include "batchd/error.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

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
    char *s = bd__http_arena_alloc(&conn->parsing->arena, conn->scratch_len + 1);

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
    if ((conn->parsing = bd__http_req_new(conn)) == NULL) {
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
        char *path = bd__http_arena_alloc(&r->arena, n + 1);

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
        struct bd_http_header *h = bd__http_arena_alloc(&r->arena, cap * sizeof(*h));

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

int bd__http_headers_finish(struct http_conn *conn, struct http_req *r)
{
    const char *expect;

    if (r->has_content_length && r->content_length > bd__http_req_body_limit(r))
        return BD_ETOOLARGE;
    if (r->has_content_length && r->content_length > 0 && !r->is_body_stream) {
        r->body_cap = (size_t)r->content_length + 1;
        if ((r->body_buf = bd__http_arena_alloc(&r->arena, r->body_cap)) == NULL)
            return BD_ENOMEM;
    }
    /* A taken request is already queued: nothing earlier pends when it is the head. */
    expect = bd_http_header_get(&r->pub, "Expect");
    if (expect != NULL && strcasecmp(expect, "100-continue") == 0 && !r->is_http10 &&
        (conn->head == NULL || conn->head == r)) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        struct http_wbuf *w = bd__http_wbuf_new(sizeof(cont) - 1);

        if (w != NULL) {
            memcpy(w->data, cont, sizeof(cont) - 1);
            w->len = sizeof(cont) - 1;
            bd__http_conn_write(conn, w);
        }
    }
    return BD_OK;
}

static int on_headers_complete(llhttp_t *p)
{
    struct http_conn *conn = p->data;
    struct http_req *r = conn->parsing;
    int err;

    r->pub.method = llhttp_method_name((llhttp_method_t)llhttp_get_method(p));
    r->is_head_method = llhttp_get_method(p) == HTTP_HEAD;
    r->is_http10 = llhttp_get_http_major(p) == 1 && llhttp_get_http_minor(p) == 0;
    r->is_keep_alive = llhttp_should_keep_alive(p) && !llhttp_get_upgrade(p);
    r->has_content_length = (p->flags & F_CONTENT_LENGTH) != 0;
    r->content_length = r->has_content_length ? p->content_length : 0;
    r->has_body = (p->flags & F_CHUNKED) || r->content_length > 0;
    if (conn->srv->opt.on_headers != NULL) {
        r->is_headers_pending = true;              /* http_server.c calls it, then finishes */
        return HPE_PAUSED;
    }
    if ((err = bd__http_headers_finish(conn, r)) < 0) {
        parse_fail(p, err, err == BD_ETOOLARGE ? "request body too large" : "out of memory");
        return -1;
    }
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct http_conn *conn = p->data;
    struct http_req *r = conn->parsing;
    uint64_t limit = bd__http_req_body_limit(r);
    size_t need = r->pub.body_len + len + 1;

    if (len == 0)                                  /* a span cut at the end of the input */
        return 0;
    if (r->is_body_stream) {
        /* Handed to the handler outside llhttp: pausing here leaves the parser just past
         * this piece, and the bytes after it wait in conn->in. */
        if (len > limit - r->body_received)
            return parse_fail(p, BD_ETOOLARGE, "request body too large");
        r->body_received += len;
        conn->body_at = at;
        conn->body_at_len = len;
        return HPE_PAUSED;
    }
    if (r->pub.body_len + len > limit)
        return parse_fail(p, BD_ETOOLARGE, "request body too large");
    if (need > r->body_cap) {                      /* chunked: grow by doubling */
        size_t cap = r->body_cap ? r->body_cap * 2 : 1024;
        char *b;

        while (cap < need)
            cap *= 2;
        if ((b = bd__http_arena_alloc(&r->arena, cap)) == NULL)
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

void bd__http_parser_settings_init(llhttp_settings_t *s)
{
    llhttp_settings_init(s);
    s->on_message_begin = on_message_begin;
    s->on_url = on_url;
    s->on_url_complete = on_url_complete;
    s->on_header_field = on_header_field;
    s->on_header_field_complete = on_header_field_complete;
    s->on_header_value = on_header_value;
    s->on_header_value_complete = on_header_value_complete;
    s->on_headers_complete = on_headers_complete;
    s->on_body = on_body;
    s->on_message_complete = on_message_complete;
}
