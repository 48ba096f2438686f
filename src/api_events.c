/* api_events.c -- a job's progress as Server-Sent Events (GET /jobs/{id}/events) and the
 * operator's view of one job (GET /debug/job/{id}).
 *
 * Owns each SSE client's state (heap: two timers and an engine listener; freed once the
 * stream has ended, both timers are closed and no query is in flight) and each /debug
 * request's state (in the request's arena). Loop thread only; never blocks. Reads
 * PostgreSQL through job_store.h, Redis through redis_queue.h and live job state through
 * job_engine.h; never writes anything.  SPDX-License-Identifier: MIT
 */
#include "api_internal.h"

#include "batchd/buf.h"
#include "batchd/config.h"
#include "batchd/error.h"
#include "batchd/http_server.h"
#include "batchd/job_engine.h"
#include "batchd/job_store.h"
#include "batchd/log.h"
#include "batchd/redis_queue.h"
#include "batchd/router.h"
#include "batchd/server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define API_SSE_BEAT_MS      15000
#define API_SSE_POLL_MIN_MS  100
#define API_SSE_POLL_MAX_MS  5000
#define API_DEBUG_BATCHES    1000           /* /debug lists at most this many batches */
/* A progress event is skipped while this much of the stream is still unsent (a slow
 * reader gets the newest progress once it catches up; the final event always goes). */
#define API_SSE_PENDING_MAX  (64 * 1024)

/* ---- Server-Sent Events ----------------------------------------------------------------- */

/* One SSE client. */
struct api_sse {
    struct bd_http_request *req;      /* NULL once finished */
    struct bd_server *srv;
    uv_timer_t poll_timer;            /* PostgreSQL poll: jobs running in other processes */
    uv_timer_t beat_timer;            /* ": keepalive" comments for proxies and clients */
    struct bd_job_listener listener;  /* checkpoints of the job when it runs here */
    struct bd_buf out;                /* one event, reused */
    unsigned pending_closes;
    bool has_timers;
    bool is_listening;
    bool is_started;
    bool is_finished;
    bool is_aborted;
    bool is_query_in_flight;
    bool is_dirty;                    /* a change was signalled while a query was in flight */
    bool has_snapshot;
    bool is_head;                     /* HEAD: headers only, never wait for changes */
    enum bd_job_state last_status;    /* what the client saw last */
    long long last_next_batch, last_processed, last_failed;
    char job_id[BD__API_JOB_ID_MAX + 1];
};

static void api_sse_maybe_free(struct api_sse *st)
{
    if (!st->is_finished || st->pending_closes > 0 || st->is_query_in_flight)
        return;
    st->srv->event_streams--;
    bd_buf_free(&st->out);
    free(st);
}

static void api_sse_on_timer_closed(uv_handle_t *h)
{
    struct api_sse *st = h->data;

    st->pending_closes--;
    api_sse_maybe_free(st);
}

/* Write "event: <event>\ndata: <doc>\n\n" (doc stolen). BD_OK, or < 0 when the client is
 * gone or memory ran out. */
static int api_sse_emit(struct api_sse *st, const char *event, json_t *doc)
{
    char *data = doc ? json_dumps(doc, BD__API_JSON_FLAGS) : NULL;

    json_decref(doc);
    if (data == NULL)
        return BD_ENOMEM;
    bd_buf_reset(&st->out);
    bd_buf_printf(&st->out, "event: %s\ndata: %s\n\n", event, data);
    free(data);
    if (st->out.is_failed)
        return BD_ENOMEM;
    return bd_http_stream_write(st->req, st->out.data, st->out.len);
}

/* End the request exactly once. Before the stream started err < 0 becomes the HTTP error
 * (pg_message for the log); after, BD_ENOTFOUND becomes an "error" event. */
static void api_sse_finish(struct api_sse *st, int err, const char *pg_message)
{
    struct bd_http_request *req = st->req;

    if (st->is_finished)
        return;
    st->is_finished = true;
    if (st->is_listening) {
        bd_job_engine_unlisten(st->srv->jobs, &st->listener);
        st->is_listening = false;
    }
    if (!st->is_started) {
        bd__api_fail_store(req, st->job_id, err < 0 ? err : BD_EINTERNAL, pg_message);
    } else {
        if (err == BD_ENOTFOUND && !st->is_aborted)
            api_sse_emit(st, "error",
                         json_pack("{s:{s:s,s:s}}", "error", "code",
                                   bd_err_api_code(BD_ENOTFOUND), "message",
                                   "job no longer exists"));
        bd_http_stream_end(req);
    }
    st->req = NULL;
    if (st->has_timers) {
        st->pending_closes = 2;
        uv_close((uv_handle_t *)&st->poll_timer, api_sse_on_timer_closed);
        uv_close((uv_handle_t *)&st->beat_timer, api_sse_on_timer_closed);
    }
    api_sse_maybe_free(st);
}

static void api_sse_on_row(int status, const struct bd_job_row *row, const char *pg_message,
                           void *arg);

/* Read the job now, or right after the query already in flight. */
static void api_sse_query(struct api_sse *st)
{
    int err;

    if (st->is_finished)
        return;
    if (st->is_query_in_flight) {
        st->is_dirty = true;
        return;
    }
    st->is_dirty = false;
    err = bd_job_store_get_job(st->srv->pg, st->job_id, api_sse_on_row, st);
    if (err < 0) {
        if (!st->is_started)
            api_sse_finish(st, err, NULL);
        else                           /* started: the next poll tries again */
            bd_log(BD_LOG_WARN, "api", "job=%s event=store_failed route=events err=%s",
                   st->job_id, bd_err_name(err));
        return;
    }
    st->is_query_in_flight = true;
}

static void api_sse_on_poll(uv_timer_t *t)
{
    struct api_sse *st = t->data;

    /* Shutdown waits for open streams; end ours so it does not wait for the job. EventSource
     * clients reconnect by themselves. */
    if (st->srv->is_stopping)
        api_sse_finish(st, BD_OK, NULL);
    else
        api_sse_query(st);
}

static void api_sse_on_beat(uv_timer_t *t)
{
    struct api_sse *st = t->data;
    static const char beat[] = ": keepalive\n\n";

    if (bd_http_stream_write(st->req, beat, sizeof(beat) - 1) < 0) {
        st->is_aborted = true;
        api_sse_finish(st, BD_OK, NULL);
    }
}

static void api_sse_on_progress(const char *job_id, bool is_final, void *arg)
{
    (void)job_id;
    (void)is_final;
    api_sse_query(arg);
}

static void api_sse_on_abort(struct bd_http_request *req, void *arg)
{
    struct api_sse *st = arg;

    (void)req;
    st->is_aborted = true;
    if (st->is_started)                /* before that, the first query's callback answers */
        api_sse_finish(st, BD_OK, NULL);
}

/* First row: start the stream, the timers and the listener. False when finished. */
static bool api_sse_start(struct api_sse *st)
{
    const struct bd_config *cfg = st->srv->cfg;
    double interval_s = cfg ? cfg->progress_update_interval_s : 1.0;
    uint64_t poll_ms = (uint64_t)(interval_s * 1000.0);

    if (poll_ms < API_SSE_POLL_MIN_MS)
        poll_ms = API_SSE_POLL_MIN_MS;
    if (poll_ms > API_SSE_POLL_MAX_MS)
        poll_ms = API_SSE_POLL_MAX_MS;
    st->is_started = true;
    if (bd_http_stream_begin(st->req, 200, "text/event-stream",
                             "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n") < 0) {
        st->is_aborted = true;
        api_sse_finish(st, BD_OK, NULL);
        return false;
    }
    uv_timer_init(st->srv->loop, &st->poll_timer);
    uv_timer_init(st->srv->loop, &st->beat_timer);
    st->poll_timer.data = st->beat_timer.data = st;
    st->has_timers = true;
    uv_timer_start(&st->poll_timer, api_sse_on_poll, poll_ms, poll_ms);
    uv_timer_start(&st->beat_timer, api_sse_on_beat, API_SSE_BEAT_MS, API_SSE_BEAT_MS);
    if (st->srv->jobs != NULL) {
        st->listener.job_id = st->job_id;
        st->listener.cb = api_sse_on_progress;
        st->listener.arg = st;
        bd_job_engine_listen(st->srv->jobs, &st->listener);
        st->is_listening = true;
    }
    return true;
}

static void api_sse_on_row(int status, const struct bd_job_row *row, const char *pg_message,
                           void *arg)
{
    struct api_sse *st = arg;
    bool is_terminal, is_changed;

    st->is_query_in_flight = false;
    if (st->is_finished) {
        api_sse_maybe_free(st);
        return;
    }
    if (status < 0 && status != BD_ENOTFOUND) {
        if (!st->is_started) {
            api_sse_finish(st, status, pg_message);
        } else {                       /* started: transient; the next poll tries again */
            bd_log(BD_LOG_WARN, "api", "job=%s event=store_failed route=events err=%s "
                   "pg=\"%s\"", st->job_id, bd_err_name(status), pg_message ? pg_message : "");
        }
        return;
    }
    if (status == BD_ENOTFOUND) {
        api_sse_finish(st, BD_ENOTFOUND, NULL);
        return;
    }
    if (!st->is_started && !api_sse_start(st))
        return;
    is_terminal = bd__api_is_terminal(row->status);
    is_changed = !st->has_snapshot || st->last_status != row->status ||
                 st->last_next_batch != row->next_batch ||
                 st->last_processed != row->processed_items ||
                 st->last_failed != row->failed_items;
    if (is_changed) {
        st->last_status = row->status;
        st->last_next_batch = row->next_batch;
        st->last_processed = row->processed_items;
        st->last_failed = row->failed_items;
        st->has_snapshot = true;
        if (!is_terminal && bd_http_stream_get_pending(st->req) > API_SSE_PENDING_MAX) {
            st->has_snapshot = false;          /* the next poll sends the newest instead */
        } else if (api_sse_emit(st, is_terminal ? "final" : "progress",
                                bd__api_status_json(row)) < 0) {
            st->is_aborted = true;
            api_sse_finish(st, BD_OK, NULL);
            return;
        }
    }
    if (is_terminal || st->is_head) {
        api_sse_finish(st, BD_OK, NULL);
        return;
    }
    if (st->is_dirty)
        api_sse_query(st);
}

static void api_on_events(struct bd_http_request *req, void *arg)
{
    struct bd_server *srv = arg;
    struct api_sse *st;
    const char *id;

    if (!bd__api_check_auth(req, srv) || (id = bd__api_job_id(req)) == NULL)
        return;
    /* Each stream holds a connection, two timers and PostgreSQL polls: at most a quarter of
     * the connections may be event streams, so they cannot take the API's pool. */
    unsigned cap = srv->cfg->http_max_connections / 4 ? srv->cfg->http_max_connections / 4 : 1;
    if (srv->event_streams >= cap) {
        bd_http_respond_error_ex(req, bd_err_http_status(BD_ESTREAMS), "Retry-After: 5\r\n",
                                 bd_err_api_code(BD_ESTREAMS), bd_strerror(BD_ESTREAMS), NULL);
        return;
    }
    if ((st = calloc(1, sizeof(*st))) == NULL) {
        bd_http_respond_err(req, BD_ENOMEM, NULL, NULL);
        return;
    }
    srv->event_streams++;
    st->req = req;
    st->srv = srv;
    st->is_head = strcmp(req->method, "HEAD") == 0;
    snprintf(st->job_id, sizeof(st->job_id), "%s", id);
    bd_buf_init(&st->out);
    bd_http_set_abort_cb(req, api_sse_on_abort, st);
    api_sse_query(st);
}

/* ---- /debug/job/{id} -------------------------------------------------------------------- */

/* One /debug request; in req's arena. */
struct api_debug_call {
    struct bd_http_request *req;
    struct bd_server *srv;
    const char *job_id;               /* req's arena */
    json_t *doc;                      /* the answer, while Redis is asked */
};

/* The job's lease in Redis (bd_rq_get_lease): whether it is in flight and until when. */
static void api_debug_on_lease(int status, double deadline_unix, const char *owner, void *arg)
{
    struct api_debug_call *call = arg;
    json_t *lease = json_object_get(call->doc, "lease");
    bool is_failed = false;
    bool is_in_flight = deadline_unix >= 0;

    (void)owner;                       /* the owner shown is PostgreSQL's lease_owner */
    if (status < 0) {
        bd__api_set(lease, "redis_error", json_string(bd_strerror(status)), &is_failed);
    } else {
        bd__api_set(lease, "in_flight", json_boolean(is_in_flight), &is_failed);
        if (is_in_flight)
            bd__api_set(lease, "deadline_ms",
                        json_integer((json_int_t)(deadline_unix * 1000.0 + 0.5)), &is_failed);
    }
    (void)is_failed;                   /* a missing lease detail is not worth a 500 */
    bd__api_respond_json(call->req, 200, call->doc, NULL);
}

static void api_debug_on_job(int status, const struct bd_job_debug *dbg,
                             const char *pg_message, void *arg)
{
    struct api_debug_call *call = arg;
    struct bd_server *srv = call->srv;
    json_t *doc, *lease, *local = NULL, *batches = NULL;
    bool is_failed = false;

    if (status < 0) {
        bd__api_fail_store(call->req, call->job_id, status, pg_message);
        return;
    }
    doc = json_object();
    lease = json_object();
    bd__api_set(lease, "owner", dbg->lease_owner ? json_string(dbg->lease_owner) : json_null(),
                &is_failed);
    bd__api_set(lease, "in_flight", json_null(), &is_failed);
    bd__api_set(lease, "deadline_ms", json_null(), &is_failed);
    if (srv->jobs != NULL)
        local = bd_job_engine_debug_json(srv->jobs, call->job_id);
    if (dbg->batches_json != NULL)
        batches = json_loads(dbg->batches_json, 0, NULL);
    bd__api_set(doc, "job", bd__api_job_json(&dbg->job), &is_failed);
    bd__api_set(doc, "batches", batches ? batches : json_array(), &is_failed);
    bd__api_set(doc, "batches_total", json_integer(dbg->batches_count), &is_failed);
    bd__api_set(doc, "batches_truncated", json_boolean(dbg->batches_count > API_DEBUG_BATCHES),
                &is_failed);
    bd__api_set(doc, "lease", lease, &is_failed);
    bd__api_set(doc, "local", local ? local : json_null(), &is_failed);
    if (is_failed) {
        json_decref(doc);
        bd__api_respond_json(call->req, 200, NULL, NULL);
        return;
    }
    call->doc = doc;
    if (srv->rq && bd_rq_is_up(srv->rq) &&
        bd_rq_get_lease(srv->rq, call->job_id, api_debug_on_lease, call) == BD_OK)
        return;
    bd__api_set(lease, "redis_error", json_string(bd_strerror(BD_EREDIS)), &is_failed);
    bd__api_respond_json(call->req, 200, doc, NULL);
}

static void api_on_debug(struct bd_http_request *req, void *arg)
{
    struct bd_server *srv = arg;
    struct api_debug_call *call;
    const char *id;
    int err;

    if (!bd__api_check_auth(req, srv) || (id = bd__api_job_id(req)) == NULL)
        return;
    if ((call = bd_http_alloc(req, sizeof(*call))) == NULL) {
        bd_http_respond_err(req, BD_ENOMEM, NULL, NULL);
        return;
    }
    *call = (struct api_debug_call){ req, srv, id, NULL };
    err = bd_job_store_get_job_debug(srv->pg, id, API_DEBUG_BATCHES, api_debug_on_job, call);
    if (err < 0)
        bd__api_fail_store(req, id, err, NULL);
}

int bd__api_register_events(struct bd_router *r, struct bd_server *srv)
{
    int rc = BD_OK;

    rc = rc ? rc : bd_router_add(r, "GET", BD_API_PREFIX "/jobs/{id}/events", api_on_events,
                                 srv);
    rc = rc ? rc : bd_router_add(r, "GET", BD_API_PREFIX "/debug/job/{id}", api_on_debug, srv);
    return rc;
}
