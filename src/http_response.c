/* http_response.c -- what leaves a connection: ordered output, responses and streams.
 *
 * Responses leave strictly in request order: only the queue's head writes to the socket,
 * a later request answered first keeps its output until it becomes the head
 * (http_server.c explains the whole design). Owns nothing of its own: writes into the
 * struct http_conn and struct http_req of http_internal.h. Loop thread only; never blocks;
 * never frees a connection (that is http_server.c's close callback).
 * SPDX-License-Identifier: MIT
 */
#include "http_internal.h"
#include "batchd/error.h"
#include "batchd/log.h"
#include "batchd/url.h"

#include <assert.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- Output ----------------------------------------------------------------------- */

static void req_report(struct http_req *r)
{
    struct bd_http_server *srv = r->srv;

    if (srv->opt.on_response != NULL)
        srv->opt.on_response(&r->pub, r->status, uv_hrtime() - r->pub.start_ns,
                             srv->opt.on_response_arg);
}

struct http_wbuf *bd__http_wbuf_new(size_t cap)
{
    struct http_wbuf *w = malloc(sizeof(*w) + cap);

    if (w != NULL) {
        w->next = NULL;
        w->len = 0;
    }
    return w;
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
    conn->write_progress_ns = uv_hrtime();
    if (status < 0) {
        bd_log(BD_LOG_DEBUG, "http", "conn=%llu write failed: %s", conn->id, uv_strerror(status));
        bd__http_conn_close_now(conn);
        return;
    }
    if (conn->timer_mode == CONN_TIMER_IDLE)        /* progress: a slow reader is not idle */
        uv_timer_again(&conn->timer);
    if (conn->is_paused && !bd__http_conn_must_pause(conn))
        bd__http_conn_schedule_service(conn);
    r = conn->head;
    if (conn->write_bytes == 0 && r != NULL && r->drain_cb != NULL && r->out_bytes == 0) {
        bd_http_drain_cb cb = r->drain_cb;

        r->drain_cb = NULL;                        /* one-shot; the handler re-arms */
        cb(&r->pub, r->drain_arg);
    }
}

/* Hand w to the socket now (takes ownership of w). */
void bd__http_conn_write(struct http_conn *conn, struct http_wbuf *w)
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
        bd__http_conn_close_now(conn);
        return;
    }
    if (conn->write_bytes == 0) {                  /* the write clock starts now */
        conn->write_progress_ns = uv_hrtime();
        conn->write_left = 0;
        conn->write_unacked = 0;
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
        bd__http_conn_write(conn, w);
    } else {
        if (r->out_tail != NULL)
            r->out_tail->next = w;
        else
            r->out_head = w;
        r->out_tail = w;
        r->out_bytes += w->len;
        conn->held_bytes += w->len;
    }
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
        bd__http_req_unref(r);
        if (is_last) {
            conn->is_input_done = true;
            bd__http_conn_close_graceful(conn);
            return;
        }
        if ((r = conn->head) != NULL) {
            struct http_wbuf *w = r->out_head;

            r->out_head = r->out_tail = NULL;
            conn->held_bytes -= r->out_bytes;
            r->out_bytes = 0;
            while (w != NULL) {
                struct http_wbuf *next = w->next;
                w->next = NULL;
                bd__http_conn_write(conn, w);
                w = next;
            }
        }
    }
    if (conn->is_closing)
        return;
    if (conn->head == NULL && conn->is_input_done && conn->parsing == NULL)
        bd__http_conn_close_graceful(conn);
    else if ((conn->is_paused && !bd__http_conn_must_pause(conn)) ||
             (conn->is_parse_held && !bd__http_conn_is_busy(conn)))
        bd__http_conn_schedule_service(conn);
    bd__http_conn_update_timer(conn);
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
    bd__http_req_unref(r);                                  /* the handler's */
}

/* Decide whether the connection closes after r's response (decided when the response starts).
 * A streamed body still arriving is abandoned: the connection closes after this answer. */
static void req_decide_last(struct http_req *r)
{
    struct http_conn *conn = r->conn;

    if (r->is_taken && r->has_body && conn->parsing == r)
        bd__http_conn_abandon_body(conn, r);
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
    if ((w = bd__http_wbuf_new(cap)) == NULL)
        return NULL;
    n = snprintf(w->data, cap, "HTTP/1.1 %d %s\r\n%s%s%s%s%s%s\r\n", status, reason,
                 content_type ? "Content-Type: " : "", content_type ? content_type : "",
                 content_type ? "\r\n" : "", framing, connection, extra ? extra : "");
    assert(n > 0 && (size_t)n < cap);
    w->len = (size_t)n;
    return w;
}

/* ---- Per-request helpers ---------------------------------------------------------- */

void *bd_http_alloc(struct bd_http_request *req, size_t size)
{
    return bd__http_arena_alloc(&bd__http_req_of(req)->arena, size);
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
    struct http_req *r = bd__http_req_of(req);

    r->abort_cb = cb;
    r->abort_arg = arg;
}

void bd_http_respond(struct bd_http_request *req, int status, const char *content_type,
                     const char *extra_headers, const char *body, size_t body_len)
{
    struct http_req *r = bd__http_req_of(req);
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
            bd__http_conn_close_now(conn);
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
    struct http_req *r = bd__http_req_of(req);
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
        bd__http_conn_close_now(conn);
        return BD_ENOMEM;
    }
    req_output(r, w);
    return BD_OK;
}

int bd_http_stream_write(struct bd_http_request *req, const char *data, size_t len)
{
    struct http_req *r = bd__http_req_of(req);
    struct http_conn *conn = r->conn;
    struct http_wbuf *w;

    assert(r->is_streaming && !r->is_finished);
    if (conn == NULL || conn->is_closing)
        return UV_ECONNRESET;
    if (len == 0 || r->is_head_method)             /* an empty chunk would end the stream */
        return BD_OK;
    if ((w = bd__http_wbuf_new(len + 24)) == NULL)
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
    const struct http_req *r = bd__http_req_of(req);

    if (r->conn == NULL)
        return 0;
    return r->conn->head == r ? r->conn->write_bytes : r->out_bytes;
}

void bd_http_stream_set_drain_cb(struct bd_http_request *req, bd_http_drain_cb cb, void *arg)
{
    struct http_req *r = bd__http_req_of(req);

    r->drain_cb = cb;
    r->drain_arg = arg;
    /* Already drained: call back on the next loop turn, never from here. */
    if (cb != NULL && r->conn != NULL && bd_http_stream_get_pending(req) == 0)
        bd__http_conn_schedule_service(r->conn);
}

void bd_http_stream_end(struct bd_http_request *req)
{
    struct http_req *r = bd__http_req_of(req);

    assert(r->is_streaming && !r->is_finished);
    if (r->conn != NULL && !r->conn->is_closing && !r->is_raw_stream && !r->is_head_method) {
        struct http_wbuf *w = bd__http_wbuf_new(5);

        if (w == NULL) {
            bd__http_conn_close_now(r->conn);
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
    case 421: return "Misdirected Request";
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
