/* api_events.c -- a job's progress as Server-Sent Events (GET /jobs/{id}/events) and the
 * operator's view of one job (GET /debug/job/{id}).
 *
 * Owns one watch per job that event streams follow (heap: a timer, an engine listener and
 * the newest answer, shared by the job's streams; in srv->event_watches), each stream's
 * state (heap; freed when it ends) and each /debug request's state (in the request's arena). Loop thread only; never blocks. Reads
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

#include <assert.h>
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

/* Every stream of a job in this process shares one watch: one PostgreSQL read at a time
 * (on the watch's timer, at a checkpoint of the job when it runs here, and when a stream
 * joins; whatever asks while a read is in flight gets one read right after it), one engine
 * listener and one timer. Each answer is formatted once, as an event, and each stream sends
 * it when it differs from what that stream sent last. So N streams of a job cost what one
 * does in PostgreSQL and in timers; only the writes are per stream. */

/* One SSE client. Heap; freed when it ends (it holds no handle and no query). */
struct api_sse {
    struct api_sse *next, *prev;      /* its watch's streams */
    struct bd__api_watch *w;
    struct bd_http_request *req;
    uint64_t need;                    /* the first answer of w it may be served from */
    bool is_started;
    bool is_aborted;
    bool is_head;                     /* HEAD: headers only, never wait for changes */
    bool has_sent;
    enum bd_job_state last_status;    /* what the client saw last */
    long long last_next_batch, last_processed, last_failed;
};

/* One watched job. Heap; from its first stream's arrival until its last stream has ended,
 * its timer is closed and no query is in flight (it leaves srv->event_watches when its last
 * stream ends, so no stream joins a watch that is closing). */
struct bd__api_watch {
    struct bd__api_watch *next, *prev; /* srv->event_watches */
    struct bd_server *srv;
    struct api_sse *streams;
    uv_timer_t timer;                 /* poll (jobs running elsewhere) and keepalives */
    struct bd_job_listener listener;  /* checkpoints of the job when it runs here */
    struct bd_buf event;              /* the newest answer as an event, sent by every stream */
    uint64_t sent;                    /* reads sent; the n-th answer is answer n */
    unsigned ticks, beat_ticks;       /* a keepalive every beat_ticks ticks */
    bool is_query_in_flight;
    bool is_dirty;                    /* asked again while a read was in flight */
    bool is_listening;
    bool is_closing;
    bool is_timer_closed;
    bool is_terminal;                 /* of the newest answer: */
    enum bd_job_state status;
    long long next_batch, processed, failed;
    char job_id[BD__API_JOB_ID_MAX + 1];
};

static void api_watch_maybe_free(struct bd__api_watch *w)
{
    if (!w->is_closing || !w->is_timer_closed || w->is_query_in_flight)
        return;
    bd_buf_free(&w->event);
    free(w);
}

static void api_watch_on_timer_closed(uv_handle_t *h)
{
    struct bd__api_watch *w = h->data;

    w->is_timer_closed = true;
    api_watch_maybe_free(w);
}

/* The last stream has ended: leave the server's list, stop listening, close the timer. The
 * memory goes once the timer has closed and the read in flight (if any) has answered. */
static void api_watch_close(struct bd__api_watch *w)
{
    struct bd_server *srv = w->srv;

    assert(w->streams == NULL && !w->is_closing);
    w->is_closing = true;
    if (w->prev != NULL)
        w->prev->next = w->next;
    else
        srv->event_watches = w->next;
    if (w->next != NULL)
        w->next->prev = w->prev;
    w->next = w->prev = NULL;
    if (w->is_listening) {
        bd_job_engine_unlisten(srv->jobs, &w->listener);
        w->is_listening = false;
    }
    uv_close((uv_handle_t *)&w->timer, api_watch_on_timer_closed);
}

/* End the request exactly once and free st (and close its watch when st was the last).
 * Before the stream started err < 0 becomes the HTTP error (pg_message for the log); after,
 * BD_ENOTFOUND becomes an "error" event. */
static void api_sse_finish(struct api_sse *st, int err, const char *pg_message)
{
    struct bd__api_watch *w = st->w;
    struct bd_http_request *req = st->req;

    if (st->prev != NULL)
        st->prev->next = st->next;
    else
        w->streams = st->next;
    if (st->next != NULL)
        st->next->prev = st->prev;
    w->srv->event_streams--;
    if (!st->is_started && err == BD_ESHUTDOWN) {
        bd_http_respond_err(req, err, NULL, NULL);
    } else if (!st->is_started) {
        bd__api_fail_store(req, w->job_id, err < 0 ? err : BD_EINTERNAL, pg_message);
    } else {
        if (err == BD_ENOTFOUND && !st->is_aborted) {
            json_t *doc = json_pack("{s:{s:s,s:s}}", "error", "code",
                                    bd_err_api_code(BD_ENOTFOUND), "message",
                                    "job no longer exists");
            char *data = doc ? json_dumps(doc, BD__API_JSON_FLAGS) : NULL;
            struct bd_buf out;

            bd_buf_init(&out);
            if (data != NULL)
                bd_buf_printf(&out, "event: error\ndata: %s\n\n", data);
            if (data != NULL && !out.is_failed)
                bd_http_stream_write(req, out.data, out.len);
            bd_buf_free(&out);
            free(data);
            json_decref(doc);
        }
        bd_http_stream_end(req);
    }
    free(st);
    if (w->streams == NULL && !w->is_closing)
        api_watch_close(w);
}

/* A read failed (err; answer: the answer it was, or the one that could not be sent): the
 * streams still waiting for their first answer are answered with the error; started ones
 * keep going, and the next poll reads again. */
static void api_watch_fail(struct bd__api_watch *w, int err, const char *pg_message,
                           uint64_t answer)
{
    struct api_sse *st, *next;
    bool is_logged = false;

    for (st = w->streams; st != NULL; st = next) {
        next = st->next;
        if (!st->is_started && st->need <= answer)
            api_sse_finish(st, err, pg_message);
        else if (st->is_started && !is_logged) {
            bd_log(BD_LOG_WARN, "api", "job=%s event=store_failed route=events err=%s "
                   "pg=\"%s\"", w->job_id, bd_err_name(err), pg_message ? pg_message : "");
            is_logged = true;
        }
    }
}

static void api_watch_on_row(int status, const struct bd_job_row *row, const char *pg_message,
                             void *arg);

/* Read the job now, or right after the read already in flight. */
static void api_watch_query(struct bd__api_watch *w)
{
    int err;

    if (w->is_closing)
        return;
    if (w->is_query_in_flight) {
        w->is_dirty = true;
        return;
    }
    w->is_dirty = false;
    err = bd_job_store_get_job(w->srv->pg, w->job_id, api_watch_on_row, w);
    if (err < 0) {
        api_watch_fail(w, err, NULL, w->sent + 1);
        return;
    }
    w->is_query_in_flight = true;
    w->sent++;
}

/* Send the newest answer to st when it differs from what st sent last, and end st when the
 * job has ended (or st is a HEAD). */
static void api_sse_deliver(struct api_sse *st)
{
    struct bd__api_watch *w = st->w;
    bool is_changed;

    if (!st->is_started) {
        st->is_started = true;
        if (bd_http_stream_begin(st->req, 200, "text/event-stream",
                                 "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n") < 0) {
            st->is_aborted = true;
            api_sse_finish(st, BD_OK, NULL);
            return;
        }
    }
    is_changed = !st->has_sent || st->last_status != w->status ||
                 st->last_next_batch != w->next_batch || st->last_processed != w->processed ||
                 st->last_failed != w->failed;
    /* A progress event waits while too much of the stream is unsent: a later answer sends
     * the newest once the reader catches up. The final event always goes. */
    if (is_changed &&
        (w->is_terminal || bd_http_stream_get_pending(st->req) <= API_SSE_PENDING_MAX)) {
        if (bd_http_stream_write(st->req, w->event.data, w->event.len) < 0) {
            st->is_aborted = true;
            api_sse_finish(st, BD_OK, NULL);
            return;
        }
        st->has_sent = true;
        st->last_status = w->status;
        st->last_next_batch = w->next_batch;
        st->last_processed = w->processed;
        st->last_failed = w->failed;
    }
    if (w->is_terminal || st->is_head)
        api_sse_finish(st, BD_OK, NULL);
}

/* Format the answer as the event every stream sends. BD_OK or BD_ENOMEM. */
static int api_watch_take(struct bd__api_watch *w, const struct bd_job_row *row)
{
    json_t *doc = bd__api_status_json(row);
    char *data = doc ? json_dumps(doc, BD__API_JSON_FLAGS) : NULL;

    json_decref(doc);
    if (data == NULL)
        return BD_ENOMEM;
    w->status = row->status;
    w->next_batch = row->next_batch;
    w->processed = row->processed_items;
    w->failed = row->failed_items;
    w->is_terminal = bd__api_is_terminal(row->status);
    bd_buf_reset(&w->event);
    bd_buf_printf(&w->event, "event: %s\ndata: %s\n\n", w->is_terminal ? "final" : "progress",
                  data);
    free(data);
    return w->event.is_failed ? BD_ENOMEM : BD_OK;
}

static void api_watch_on_row(int status, const struct bd_job_row *row, const char *pg_message,
                             void *arg)
{
    struct bd__api_watch *w = arg;
    uint64_t answer = w->sent;
    struct api_sse *st, *next;

    w->is_query_in_flight = false;
    if (w->is_closing) {
        api_watch_maybe_free(w);
        return;
    }
    if (status == BD_OK)
        status = api_watch_take(w, row);
    if (status == BD_ENOTFOUND) {
        for (st = w->streams; st != NULL; st = next) {
            next = st->next;
            if (st->need <= answer)
                api_sse_finish(st, BD_ENOTFOUND, NULL);
        }
    } else if (status < 0) {
        api_watch_fail(w, status, pg_message, answer);
    } else {
        /* A stream that ends here only unlinks itself (and, the last, starts closing w,
         * whose memory outlives this callback until its timer's close callback). */
        for (st = w->streams; st != NULL; st = next) {
            next = st->next;
            if (st->need <= answer)
                api_sse_deliver(st);
        }
    }
    if (w->is_dirty)
        api_watch_query(w);
}

static void api_watch_on_tick(uv_timer_t *t)
{
    struct bd__api_watch *w = t->data;
    static const char beat[] = ": keepalive\n\n";
    struct api_sse *st, *next;

    /* Shutdown waits for open streams; end ours so it does not wait for the job. EventSource
     * clients reconnect by themselves. */
    if (w->srv->is_stopping) {
        for (st = w->streams; st != NULL; st = next) {
            next = st->next;
            api_sse_finish(st, st->is_started ? BD_OK : BD_ESHUTDOWN, NULL);
        }
        return;
    }
    /* Keepalives for proxies and clients; a stream with bytes still unsent needs none (and a
     * reader that does not read gets no more). */
    if (++w->ticks >= w->beat_ticks) {
        w->ticks = 0;
        for (st = w->streams; st != NULL; st = next) {
            next = st->next;
            if (!st->is_started || bd_http_stream_get_pending(st->req) > 0)
                continue;
            if (bd_http_stream_write(st->req, beat, sizeof(beat) - 1) < 0) {
                st->is_aborted = true;
                api_sse_finish(st, BD_OK, NULL);
            }
        }
    }
    api_watch_query(w);
}

static void api_watch_on_progress(const char *job_id, bool is_final, void *arg)
{
    (void)job_id;
    (void)is_final;
    api_watch_query(arg);
}

/* The watch of job_id, created (timer started, listening) when there is none. NULL on
 * ENOMEM. */
static struct bd__api_watch *api_watch_get(struct bd_server *srv, const char *job_id)
{
    const struct bd_config *cfg = srv->cfg;
    double interval_s = cfg ? cfg->progress_update_interval_s : 1.0;
    uint64_t poll_ms = (uint64_t)(interval_s * 1000.0);
    struct bd__api_watch *w;

    /* A list: there are at most as many watches as streams, a quarter of the connections,
     * and a stream looks once, when it arrives. */
    for (w = srv->event_watches; w != NULL; w = w->next)
        if (strcmp(w->job_id, job_id) == 0)
            return w;
    if ((w = calloc(1, sizeof(*w))) == NULL)
        return NULL;
    if (poll_ms < API_SSE_POLL_MIN_MS)
        poll_ms = API_SSE_POLL_MIN_MS;
    if (poll_ms > API_SSE_POLL_MAX_MS)
        poll_ms = API_SSE_POLL_MAX_MS;
    w->srv = srv;
    snprintf(w->job_id, sizeof(w->job_id), "%s", job_id);
    bd_buf_init(&w->event);
    w->beat_ticks = (unsigned)((API_SSE_BEAT_MS + poll_ms - 1) / poll_ms);
    uv_timer_init(srv->loop, &w->timer);
    w->timer.data = w;
    uv_timer_start(&w->timer, api_watch_on_tick, poll_ms, poll_ms);
    if (srv->jobs != NULL) {
        w->listener.job_id = w->job_id;
        w->listener.cb = api_watch_on_progress;
        w->listener.arg = w;
        bd_job_engine_listen(srv->jobs, &w->listener);
        w->is_listening = true;
    }
    w->next = srv->event_watches;
    if (w->next != NULL)
        w->next->prev = w;
    srv->event_watches = w;
    return w;
}

static void api_sse_on_abort(struct bd_http_request *req, void *arg)
{
    struct api_sse *st = arg;

    (void)req;
    st->is_aborted = true;
    if (st->is_started)                /* before that, its first answer ends it */
        api_sse_finish(st, BD_OK, NULL);
}

static void api_on_events(struct bd_http_request *req, void *arg)
{
    struct bd_server *srv = arg;
    struct bd__api_watch *w;
    struct api_sse *st;
    const char *id;

    if (!bd__api_check_auth(req, srv) || (id = bd__api_job_id(req)) == NULL)
        return;
    /* Each stream holds a connection: at most a quarter of the connections may be event
     * streams, so they cannot take the API's pool. */
    unsigned cap = srv->cfg->http_max_connections / 4 ? srv->cfg->http_max_connections / 4 : 1;
    if (srv->event_streams >= cap) {
        bd_http_respond_error_ex(req, bd_err_http_status(BD_ESTREAMS), "Retry-After: 5\r\n",
                                 bd_err_api_code(BD_ESTREAMS), bd_strerror(BD_ESTREAMS), NULL);
        return;
    }
    if ((st = calloc(1, sizeof(*st))) == NULL || (w = api_watch_get(srv, id)) == NULL) {
        free(st);
        bd_http_respond_err(req, BD_ENOMEM, NULL, NULL);
        return;
    }
    srv->event_streams++;
    st->w = w;
    st->req = req;
    st->is_head = strcmp(req->method, "HEAD") == 0;
    /* Served from a read sent after it arrived, never from one already in flight. */
    st->need = w->sent + 1;
    st->next = w->streams;
    if (st->next != NULL)
        st->next->prev = st;
    w->streams = st;
    bd_http_set_abort_cb(req, api_sse_on_abort, st);
    api_watch_query(w);
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
