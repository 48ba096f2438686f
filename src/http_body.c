/* http_body.c -- streamed request bodies: the on_headers hook, delivery of each piece to
 * the handler, pause and resume (flow control), per-request limits and timeouts.
 *
 * Part of the HTTP server (http_internal.h); loop thread only. A handler that streams a
 * body owns the request from its headers on; the connection stops reading while the
 * handler has paused it, and never delivers from inside bd_http_body_resume.
 * SPDX-License-Identifier: MIT
 */
#include "http_internal.h"

#include "batchd/error.h"
#include "batchd/http_server.h"
#include "batchd/log.h"

#include <assert.h>


void bd__http_conn_stop_request_timer(struct http_conn *conn)
{
    if (conn->timer_mode == CONN_TIMER_REQUEST) {
        conn->timer_mode = CONN_TIMER_NONE;
        uv_timer_stop(&conn->timer);
    }
}

/* Queue r and hand it to the handler: the queue's reference and the handler's. */
static void conn_take(struct http_conn *conn, struct http_req *r)
{
    bd__http_conn_queue_push(conn, r);
    r->refs += 2;
    r->is_taken = true;
}

/* Undo conn_take() for r, the tail, which the handler did not keep. */
static void conn_untake(struct http_conn *conn, struct http_req *r)
{
    struct http_req **pp = &conn->head;

    assert(conn->tail == r && !r->is_finished && r->refs > 2);
    while (*pp != r)
        pp = &(*pp)->next;
    *pp = NULL;
    conn->tail = NULL;
    for (struct http_req *q = conn->head; q != NULL; q = q->next)
        conn->tail = q;
    conn->queued--;
    r->refs -= 2;
    r->is_taken = false;
}

void bd__http_conn_abandon_body(struct http_conn *conn, struct http_req *r)
{
    if (conn->parsing != r)
        return;
    conn->parsing = NULL;
    conn->is_input_done = true;
    conn->body_at = NULL;
    r->is_last = true;
    if (r->is_body_paused) {
        r->is_body_paused = false;
        r->paused_ns += uv_hrtime() - r->pause_start_ns;
    }
    bd__http_conn_stop_reading(conn);
    bd__http_conn_stop_request_timer(conn);
    bd__http_req_unref(r);                         /* the parsing reference; others remain */
}

/* The handler's last call for a streamed body: on_body(NULL, 0), unless it answered. */
void bd__http_req_body_end(struct http_req *r)
{
    if (r->is_body_stream && !r->is_finished && r->body_cb != NULL) {
        bd_http_body_cb cb = r->body_cb;

        r->body_cb = NULL;
        cb(&r->pub, NULL, 0, r->body_arg);
    }
}

/* A streamed body failed (limit, framing, timeout): stop reading, tell the handler. */
void bd__http_conn_body_fail(struct http_conn *conn, struct http_req *r, int err)
{
    bd_log(BD_LOG_DEBUG, "http", "conn=%llu streamed body failed: %s", conn->id,
           bd_err_name(err));
    r->refs++;
    r->body_status = err;
    bd__http_conn_abandon_body(conn, r);
    bd__http_req_body_end(r);
    bd__http_req_unref(r);
}

/* Hand the piece llhttp just gave (conn->body_at) to r's receiver. */
void bd__http_conn_deliver_body(struct http_conn *conn, struct http_req *r)
{
    const char *at = conn->body_at;
    size_t len = conn->body_at_len;

    conn->body_at = NULL;
    if (r->is_finished || r->body_cb == NULL || len == 0)
        return;
    r->refs++;                                     /* whatever the callback finishes */
    if (r->body_cb(&r->pub, at, len, r->body_arg) < 0) {
        r->body_cb = NULL;
        bd__http_conn_abandon_body(conn, r);
    }
    bd__http_req_unref(r);
}

/* llhttp stopped after r's headers: run on_headers, then finish the headers. */
void bd__http_conn_on_headers(struct http_conn *conn)
{
    struct bd_http_server *srv = conn->srv;
    struct http_req *r = conn->parsing;
    int err;

    r->is_headers_pending = false;
    r->refs++;                                     /* whatever the hook finishes */
    conn_take(conn, r);
    r->is_in_headers_cb = true;
    srv->opt.on_headers(&r->pub, srv->opt.on_headers_arg);
    r->is_in_headers_cb = false;
    if (!r->is_finished && !r->is_body_stream && r->conn != NULL)
        conn_untake(conn, r);
    if (conn->parsing == r && !r->is_finished && !conn->is_closing &&
        (err = bd__http_headers_finish(conn, r)) < 0)
        bd__http_conn_fail(conn, err, NULL);
    bd__http_req_unref(r);
}

int bd_http_body_stream(struct bd_http_request *req, bd_http_body_cb on_body, void *arg)
{
    struct http_req *r = bd__http_req_of(req);

    if (!r->is_in_headers_cb || on_body == NULL || r->is_finished)
        return BD_EINVAL;
    r->is_body_stream = true;
    r->body_cb = on_body;
    r->body_arg = arg;
    r->pub.body = NULL;
    return BD_OK;
}

void bd_http_body_pause(struct bd_http_request *req)
{
    struct http_req *r = bd__http_req_of(req);
    struct http_conn *conn = r->conn;

    if (r->is_body_paused || conn == NULL || conn->parsing != r || !r->is_body_stream ||
        !r->has_body)
        return;
    r->is_body_paused = true;
    r->pause_start_ns = uv_hrtime();
    bd__http_conn_stop_reading(conn);      /* conn_process_input() also stops before the next piece */
    if (!conn->is_processing)
        bd__http_conn_update_timer(conn);
}

void bd_http_body_resume(struct bd_http_request *req)
{
    struct http_req *r = bd__http_req_of(req);
    struct http_conn *conn = r->conn;

    if (!r->is_body_paused)
        return;
    r->is_body_paused = false;
    r->paused_ns += uv_hrtime() - r->pause_start_ns;
    if (conn != NULL && !conn->is_closing) {
        conn->input_ns = uv_hrtime();              /* the client's idle clock restarts */
        conn->is_body_resumed = true;
        bd__http_conn_schedule_service(conn);      /* delivers from the loop, not from here */
    }
}

void bd_http_body_set_limit(struct bd_http_request *req, uint64_t bytes)
{
    bd__http_req_of(req)->body_limit = bytes;
}

void bd_http_body_set_timeout(struct bd_http_request *req, uint64_t ms)
{
    bd__http_req_of(req)->timeout_ms = ms;
}

int bd_http_body_get_status(const struct bd_http_request *req)
{
    return bd__http_req_of(req)->body_status;
}

uint64_t bd_http_body_get_received(const struct bd_http_request *req)
{
    return bd__http_req_of(req)->body_received;
}

