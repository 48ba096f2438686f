/* api_status.c -- one job's status (with a micro-cache that coalesces hot polling), the
 * whole job document, and the job list: GET /jobs/{id}/status, GET /jobs/{id}, GET /jobs.
 *
 * Owns the status cache (srv->api_cache, heap, freed by bd_api_free) and the per-request
 * state of its handlers (in the request's arena). Loop thread only; never blocks. Reads
 * jobs only through job_store.h; never writes anything.  SPDX-License-Identifier: MIT
 */
#include "api_internal.h"

#include "batchd/config.h"
#include "batchd/error.h"
#include "batchd/http_server.h"
#include "batchd/job_engine.h"
#include "batchd/job_store.h"
#include "batchd/log.h"
#include "batchd/router.h"
#include "batchd/server.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define API_STATUS_LIST_DEFAULT 50
#define API_STATUS_MODEL_MAX    256

/* ---- the status object ------------------------------------------------------------------ */

static json_t *api_str_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

json_t *bd__api_status_json(const struct bd_job_row *row)
{
    bool is_terminal = bd__api_is_terminal(row->status);
    long long done = row->processed_items + row->failed_items;
    long long elapsed = row->has_started && row->now_ms > row->started_ms
                            ? row->now_ms - row->started_ms : 0;
    json_t *doc = json_object(), *progress = json_object(), *timing = json_object();
    json_t *results = json_object();
    bool is_failed = false;
    double pct;

    if (row->total_items > 0)
        pct = bd__api_round1(100.0 * (double)done / (double)row->total_items);
    else
        pct = row->status == BD_JOB_COMPLETED ? 100.0 : 0.0;

    bd__api_set(doc, "job_id", json_string(row->id), &is_failed);
    bd__api_set(doc, "status", json_string(bd_job_state_name(row->status)), &is_failed);
    bd__api_set(doc, "operation", json_string(bd_job_operation_name(row->operation)),
                &is_failed);
    bd__api_set(doc, "model", api_str_or_null(row->model), &is_failed);

    bd__api_set(progress, "total_items", json_integer(row->total_items), &is_failed);
    bd__api_set(progress, "processed_items", json_integer(row->processed_items), &is_failed);
    bd__api_set(progress, "failed_items", json_integer(row->failed_items), &is_failed);
    bd__api_set(progress, "percentage", json_real(pct), &is_failed);
    bd__api_set(progress, "current_batch", json_integer(row->next_batch), &is_failed);
    bd__api_set(progress, "total_batches", json_integer(row->total_batches), &is_failed);
    bd__api_set(doc, "progress", progress, &is_failed);

    bd__api_set(timing, "created_at", bd__api_time_json(row->created_ms), &is_failed);
    bd__api_set(timing, "started_at",
                row->has_started ? bd__api_time_json(row->started_ms) : json_null(),
                &is_failed);
    if (!is_terminal) {
        /* Linear extrapolation from the items finished so far. */
        json_t *eta = json_null();
        if (row->has_started && done > 0 && row->total_items > 0)
            eta = bd__api_time_json(row->started_ms +
                                    (long long)((double)elapsed * (double)row->total_items /
                                                (double)done));
        bd__api_set(timing, "estimated_completion", eta, &is_failed);
        if (row->status == BD_JOB_PROCESSING && row->has_started)
            bd__api_set(timing, "processing_time_ms", json_integer(elapsed), &is_failed);
    } else {
        long long spent = row->has_started && row->has_completed &&
                                  row->completed_ms > row->started_ms
                              ? row->completed_ms - row->started_ms : 0;
        bd__api_set(timing, "completed_at",
                    row->has_completed ? bd__api_time_json(row->completed_ms) : json_null(),
                    &is_failed);
        bd__api_set(timing, "total_processing_time_ms", json_integer(spent), &is_failed);
    }
    bd__api_set(doc, "timing", timing, &is_failed);

    bd__api_set(results, "completed_embeddings", json_integer(row->processed_items),
                &is_failed);
    bd__api_set(results, "average_processing_time_ms",
                json_real(bd__api_round1((double)row->processing_ms /
                                         (double)(done > 0 ? done : 1))),
                &is_failed);
    /* Nothing finished yet means nothing failed yet: 100.0, so the type never changes. */
    bd__api_set(results, "success_rate",
                json_real(done > 0 ? bd__api_round1(100.0 * (double)row->processed_items /
                                                    (double)done)
                                   : 100.0),
                &is_failed);
    bd__api_set(results, "output_collection", json_string(row->collection), &is_failed);
    bd__api_set(results, "stored_vectors", json_integer(row->stored_vectors), &is_failed);
    bd__api_set(results, "cache_hits", json_integer(row->cache_hits), &is_failed);
    bd__api_set(doc, "results", results, &is_failed);

    if (row->error_code != NULL) {
        json_t *err = json_object();
        bd__api_set(err, "code", json_string(row->error_code), &is_failed);
        bd__api_set(err, "message", api_str_or_null(row->error_message), &is_failed);
        bd__api_set(doc, "error", err, &is_failed);
    }
    if (!is_terminal && row->is_cancel_requested)
        bd__api_set(doc, "cancel_requested", json_true(), &is_failed);

    if (is_failed) {
        json_decref(doc);
        return NULL;
    }
    return doc;
}

/* A JSON text column (jsonb's output), parsed; fallback() when NULL or unparseable (a
 * number beyond jansson's 64-bit integers, say). */
static json_t *api_json_text(const char *text, json_t *(*fallback)(void))
{
    json_t *j = text ? json_loads(text, JSON_DECODE_ANY, NULL) : NULL;
    return j ? j : fallback();
}

/* The whole job (GET /jobs/{id}, and /debug's "job"). */
json_t *bd__api_job_json(const struct bd_job_detail *d)
{
    json_t *doc = bd__api_status_json(&d->row);
    bool is_failed = doc == NULL;

    bd__api_set(doc, "collection", json_string(d->row.collection), &is_failed);
    bd__api_set(doc, "priority", json_string(bd_job_priority_name(d->priority)), &is_failed);
    bd__api_set(doc, "batch_size", json_integer(d->batch_size), &is_failed);
    bd__api_set(doc, "options", api_json_text(d->options_json, json_object), &is_failed);
    bd__api_set(doc, "metadata", api_json_text(d->metadata_json, json_object), &is_failed);
    bd__api_set(doc, "idempotency_key", api_str_or_null(d->idempotency_key), &is_failed);
    bd__api_set(doc, "run_attempt", json_integer(d->run_attempt), &is_failed);
    bd__api_set(doc, "timeout_s", d->has_timeout_s ? json_real(d->timeout_s) : json_null(),
                &is_failed);
    bd__api_set(doc, "max_retries",
                d->has_max_retries ? json_integer(d->max_retries) : json_null(), &is_failed);
    bd__api_set(doc, "errors_count", json_integer(d->errors_count), &is_failed);
    bd__api_set(doc, "last_errors", api_json_text(d->last_errors_json, json_array),
                &is_failed);
    if (is_failed) {
        json_decref(doc);
        return NULL;
    }
    return doc;
}

/* ---- GET /jobs/{id}/status --------------------------------------------------------------
 *
 * Clients poll this endpoint hard (a progress bar per job). Each job's answer is kept for
 * http.status_cache_ms (default 50 ms; 0 keeps only the coalescing), and requests for a
 * job whose row is being read wait for that one read instead of starting their own
 * (request coalescing): a hot job costs at most one PostgreSQL query per interval, whatever
 * the request rate. Cancel and retry in this process drop the entry at once
 * (bd__api_status_cache_drop). The cache is direct-mapped and bounded; a slot busy with
 * another job's read is simply bypassed.
 *
 * Refresh ahead: a hit in the last quarter of an answer's life is answered from the cache
 * and puts the job in the next refresh, one statement for the rows of up to
 * API_STATUS_REFRESH_MAX jobs (bd_job_store_get_jobs), sent by the first status request
 * after a tenth of the interval (or at once when full, or when a request must wait for
 * one of its jobs). So a job polled faster than that keeps a fresh answer and none of its
 * requests waits for PostgreSQL, and a hundred hot jobs cost a few statements per interval
 * instead of a hundred. Before, every expiry made the requests of that moment wait for a
 * round trip (one request in ten at 10,000 req/s over 100 jobs: that was the p99), and the
 * statements took more CPU than batchd itself (docs/perf/latency-tail.md). No answer is
 * served past http.status_cache_ms after its read: the refresh only renews it earlier.
 * Refreshes use no timer: with no request coming nothing needs one, and a request that
 * would wait for a pending refresh sends it. */

/* Four ways per set: with one, two hot jobs that hash alike evicted each other on every
 * request (about one job in ten among a hundred polled ones), each request a read. */
#define API_STATUS_CACHE_WAYS  4
#define API_STATUS_CACHE_SETS  1024           /* power of two; 4096 slots, about 800 KiB */
#define API_STATUS_CACHE_SLOTS (API_STATUS_CACHE_WAYS * API_STATUS_CACHE_SETS)
#define API_STATUS_REFRESH_MAX 128            /* <= BD_JOB_STORE_GET_JOBS_MAX */

struct api_status_waiter {
    struct bd_http_request *req;
    struct api_status_waiter *next;           /* req's arena */
};

struct api_status_slot {
    char id[BD__API_JOB_ID_MAX + 1];
    char *body;                               /* owned; NULL when empty */
    size_t len;
    int http_status;
    uint64_t expires_ns;
    uint64_t refresh_ns;                      /* a hit after this queues a refresh */
    bool is_reading;
    bool is_dropped;                          /* dropped while reading: do not keep that read */
    const void *reader;                       /* the call or refresh the waiters share */
    struct api_status_waiter *waiters;
};

/* One refresh statement: heap; the cache's pending one until sent, then its callback's. */
struct api_status_refresh {
    struct bd_server *srv;
    uint64_t send_ns;                         /* sent by the first status request after this */
    unsigned count;
    char ids[API_STATUS_REFRESH_MAX][BD__API_JOB_ID_MAX + 1];
};

struct bd_api_cache {
    struct api_status_slot slots[API_STATUS_CACHE_SLOTS];
    struct api_status_refresh *pending;       /* owned; NULL when none is gathering */
};

/* One status request's read; in req's arena. */
struct api_status_call {
    struct bd_http_request *req;
    struct bd_server *srv;
    const char *job_id;                       /* req's arena */
};

/* The API_STATUS_CACHE_WAYS slots where id may live. */
static struct api_status_slot *api_status_set(struct bd_server *srv, const char *id)
{
    uint32_t h = 2166136261u;
    for (const char *p = id; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    return srv->api_cache ? &srv->api_cache->slots[(h & (API_STATUS_CACHE_SETS - 1)) *
                                                   API_STATUS_CACHE_WAYS]
                          : NULL;
}

/* id's slot, or NULL when it has none (or the cache is gone). */
static struct api_status_slot *api_status_slot(struct bd_server *srv, const char *id)
{
    struct api_status_slot *set = api_status_set(srv, id);
    for (unsigned i = 0; set != NULL && i < API_STATUS_CACHE_WAYS; i++)
        if (strcmp(set[i].id, id) == 0)
            return &set[i];
    return NULL;
}

/* A slot id (which has none) may take: an empty one, else the one not being read whose
 * answer expires first; NULL when every slot of its set is being read. */
static struct api_status_slot *api_status_victim(struct bd_server *srv, const char *id)
{
    struct api_status_slot *set = api_status_set(srv, id), *best = NULL;
    for (unsigned i = 0; i < API_STATUS_CACHE_WAYS; i++) {
        if (set[i].id[0] == '\0')
            return &set[i];
        if (!set[i].is_reading && (best == NULL || set[i].expires_ns < best->expires_ns))
            best = &set[i];
    }
    return best;
}

void bd__api_status_cache_drop(struct bd_server *srv, const char *job_id)
{
    struct api_status_slot *slot = api_status_slot(srv, job_id);
    if (slot && strcmp(slot->id, job_id) == 0) {
        slot->expires_ns = 0;
        slot->refresh_ns = 0;
        /* A read in flight may have seen the row before the change: it still answers the
         * requests waiting on it, but is not kept. */
        slot->is_dropped = slot->is_reading;
    }
}

void bd_api_free(struct bd_server *srv)
{
    bd__api_collections_free(srv);
    if (srv->api_cache == NULL)
        return;
    for (unsigned i = 0; i < API_STATUS_CACHE_SLOTS; i++)
        free(srv->api_cache->slots[i].body);
    free(srv->api_cache->pending);            /* a sent refresh is its callback's */
    free(srv->api_cache);
    srv->api_cache = NULL;
}

/* The answer to cache for a read that ended with status: its body (malloc'ed, NULL when it
 * must not be cached: the store failed, or out of memory) and HTTP status. */
static char *api_status_body(int status, const struct bd_job_row *row, int *http)
{
    json_t *doc;
    char *body;

    if (status == BD_OK) {
        *http = 200;
        doc = bd__api_status_json(row);
    } else if (status == BD_ENOTFOUND) {
        *http = bd_err_http_status(BD_ENOTFOUND);
        doc = json_pack("{s:{s:s,s:s}}", "error", "code", bd_err_api_code(BD_ENOTFOUND),
                        "message", "no such job");
    } else {
        return NULL;
    }
    body = doc ? json_dumps(doc, BD__API_JSON_FLAGS) : NULL;
    json_decref(doc);
    return body;
}

/* The read slot's waiters share ended with status (row when BD_OK): keep its answer (unless
 * it failed or the entry was dropped meanwhile) and answer every waiter. */
static void api_status_settle(struct bd_server *srv, struct api_status_slot *slot, int status,
                              const struct bd_job_row *row, const char *pg_message)
{
    int http = 0;
    char *body = api_status_body(status, row, &http);
    int err = status < 0 && status != BD_ENOTFOUND ? status : BD_ENOMEM;
    /* Each answer frees its request's arena (the waiter record, and the id when it is a
     * request's): copy the id and read next before answering. */
    char id[BD__API_JOB_ID_MAX + 1];
    snprintf(id, sizeof(id), "%s", slot->id);
    struct api_status_waiter *w = slot->waiters, *next;

    slot->waiters = NULL;
    slot->is_reading = false;
    slot->reader = NULL;
    free(slot->body);
    slot->body = body;
    slot->len = body ? strlen(body) : 0;
    slot->http_status = http;
    if (body == NULL || slot->is_dropped) {
        slot->expires_ns = slot->refresh_ns = 0;
    } else {
        uint64_t ttl_ns = srv->cfg->http_status_cache_ms * 1000000ULL;
        uint64_t now = uv_hrtime();
        slot->expires_ns = now + ttl_ns;
        slot->refresh_ns = now + ttl_ns - ttl_ns / 4;
    }
    slot->is_dropped = false;
    for (; w != NULL; w = next) {
        next = w->next;
        if (body)
            bd_http_respond(w->req, http, "application/json", NULL, body, slot->len);
        else
            bd__api_fail_store(w->req, id, err, pg_message);
    }
}

static void api_status_on_row(int status, const struct bd_job_row *row, const char *pg_message,
                              void *arg)
{
    struct api_status_call *call = arg;
    struct api_status_slot *slot = api_status_slot(call->srv, call->job_id);

    /* Only the call that started the slot's read answers its waiters: a call that read
     * alone (the slot was busy) may finish while the slot serves a later read of the same
     * job, and must not take that read's waiters. */
    if (slot && slot->is_reading && slot->reader == call) {
        api_status_settle(call->srv, slot, status, row, pg_message);
        return;
    }
    int http = 0;
    char *body = api_status_body(status, row, &http);
    if (body)
        bd_http_respond(call->req, http, "application/json", NULL, body, strlen(body));
    else
        bd__api_fail_store(call->req, call->job_id,
                           status < 0 && status != BD_ENOTFOUND ? status : BD_ENOMEM,
                           pg_message);
    free(body);
}

/* A refresh's rows: each job's slot (if it still waits for this refresh) takes its row; a
 * job without a row is gone (404 from now on); after a failure the answers are dropped and
 * the next request reads again. After shutdown (no cache) only the record is freed. */
static void api_status_on_refreshed(int status, const struct bd_job_row *rows, size_t count,
                                    bool has_more, const char *pg_message, void *arg)
{
    struct api_status_refresh *rf = arg;
    struct api_status_slot *slot;

    (void)has_more;
    for (size_t i = 0; status == BD_OK && i < count; i++) {
        slot = api_status_slot(rf->srv, rows[i].id);
        if (slot && slot->is_reading && slot->reader == rf && strcmp(slot->id, rows[i].id) == 0)
            api_status_settle(rf->srv, slot, BD_OK, &rows[i], NULL);
    }
    for (unsigned i = 0; i < rf->count; i++) {
        slot = api_status_slot(rf->srv, rf->ids[i]);
        if (slot && slot->is_reading && slot->reader == rf)
            api_status_settle(rf->srv, slot, status < 0 ? status : BD_ENOTFOUND, NULL,
                              pg_message);
    }
    free(rf);
}

/* Send the pending refresh. On failure its jobs' answers are dropped (and their waiters
 * answered with the error): the next request for each reads again. */
static void api_status_send_refresh(struct bd_server *srv)
{
    struct api_status_refresh *rf = srv->api_cache->pending;
    const char *ids[API_STATUS_REFRESH_MAX];
    int err;

    srv->api_cache->pending = NULL;
    for (unsigned i = 0; i < rf->count; i++)
        ids[i] = rf->ids[i];
    err = bd_job_store_get_jobs(srv->pg, ids, rf->count, api_status_on_refreshed, rf);
    if (err < 0) {
        for (unsigned i = 0; i < rf->count; i++) {
            struct api_status_slot *slot = api_status_slot(srv, rf->ids[i]);
            if (slot && slot->is_reading && slot->reader == rf)
                api_status_settle(srv, slot, err, NULL, NULL);
        }
        free(rf);
    }
}

/* Put slot's job (its answer still fresh, no read in flight) in the pending refresh. Out of
 * memory nothing changes: the answer expires as usual and the next request reads. */
static void api_status_queue_refresh(struct bd_server *srv, struct api_status_slot *slot,
                                     uint64_t now)
{
    struct api_status_refresh *rf = srv->api_cache->pending;

    if (rf == NULL) {
        if ((rf = malloc(sizeof(*rf))) == NULL)
            return;
        rf->srv = srv;
        rf->count = 0;
        rf->send_ns = now + srv->cfg->http_status_cache_ms * 100000ULL;   /* a tenth */
        srv->api_cache->pending = rf;
    }
    snprintf(rf->ids[rf->count++], sizeof(rf->ids[0]), "%s", slot->id);
    slot->is_reading = true;
    slot->is_dropped = false;
    slot->reader = rf;
    if (rf->count == API_STATUS_REFRESH_MAX)
        api_status_send_refresh(srv);
}

static void api_on_status(struct bd_http_request *req, void *arg)
{
    struct bd_server *srv = arg;
    struct api_status_call *call;
    const char *id;

    if (!bd__api_check_auth(req, srv) || (id = bd__api_job_id(req)) == NULL)
        return;
    if (srv->api_cache == NULL) {
        bd_http_respond_err(req, BD_ENOMEM, NULL, NULL);
        return;
    }
    uint64_t now = uv_hrtime();
    if (srv->api_cache->pending && now >= srv->api_cache->pending->send_ns)
        api_status_send_refresh(srv);
    struct api_status_slot *slot = api_status_slot(srv, id);
    bool is_mine = slot != NULL;
    if (is_mine && slot->body && now < slot->expires_ns) {
        bd_http_respond(req, slot->http_status, "application/json", NULL, slot->body,
                        slot->len);
        /* After the answer: a refresh that fills up is sent, and if that fails at once
         * the slot's answer is dropped. */
        if (now >= slot->refresh_ns && !slot->is_reading)
            api_status_queue_refresh(srv, slot, now);
        return;
    }
    if ((call = bd_http_alloc(req, sizeof(*call))) == NULL) {
        bd_http_respond_err(req, BD_ENOMEM, NULL, NULL);
        return;
    }
    *call = (struct api_status_call){ req, srv, id };
    if (!is_mine)
        slot = api_status_victim(srv, id);    /* NULL: every slot busy, read alone */
    if (slot != NULL) {
        struct api_status_waiter *w = bd_http_alloc(req, sizeof(*w));
        if (w == NULL) {
            bd_http_respond_err(req, BD_ENOMEM, NULL, NULL);
            return;
        }
        w->req = req;
        w->next = slot->waiters;
        slot->waiters = w;
        if (is_mine && slot->is_reading) {
            /* Answered when the read ends; a refresh still gathering goes now. */
            if (slot->reader == srv->api_cache->pending)
                api_status_send_refresh(srv);
            return;
        }
        snprintf(slot->id, sizeof(slot->id), "%s", id);
        slot->is_reading = true;
        slot->is_dropped = false;
        slot->reader = call;
        slot->expires_ns = 0;
    }
    int err = bd_job_store_get_job(srv->pg, id, api_status_on_row, call);
    if (err < 0) {
        /* No read started: answer everyone who queued on this slot. */
        if (slot != NULL && slot->reader == call)
            api_status_settle(srv, slot, err, NULL, NULL);
        else
            bd__api_fail_store(req, id, err, NULL);
    }
}

/* ---- GET /jobs/{id} ---------------------------------------------------------------------- */

static void api_on_job_detail(int status, const struct bd_job_detail *job,
                              const char *pg_message, void *arg)
{
    struct bd_http_request *req = arg;

    if (status < 0)
        bd__api_fail_store(req, req->params[0], status, pg_message);
    else
        bd__api_respond_json(req, 200, bd__api_job_json(job), NULL);
}

static void api_on_job(struct bd_http_request *req, void *arg)
{
    struct bd_server *srv = arg;
    const char *id;
    int err;

    if (!bd__api_check_auth(req, srv) || (id = bd__api_job_id(req)) == NULL)
        return;
    if ((err = bd_job_store_get_job_detail(srv->pg, id, api_on_job_detail, req)) < 0)
        bd__api_fail_store(req, id, err, NULL);
}

/* ---- GET /jobs?status=&model=&operation=&limit=&cursor= ---------------------------------- */

struct api_list_call {
    struct bd_http_request *req;
    unsigned limit;
};

static void api_on_list_rows(int status, const struct bd_job_row *rows, size_t count,
                             bool has_more, const char *pg_message, void *arg)
{
    struct api_list_call *call = arg;
    json_t *doc, *jobs;
    bool is_failed = false;

    if (status < 0) {
        bd__api_fail_store(call->req, NULL, status, pg_message);
        return;
    }
    doc = json_object();
    jobs = json_array();
    for (size_t i = 0; i < count; i++)
        if (json_array_append_new(jobs, bd__api_status_json(&rows[i])) < 0)
            is_failed = true;
    bd__api_set(doc, "jobs", jobs, &is_failed);
    bd__api_set(doc, "count", json_integer((json_int_t)count), &is_failed);
    bd__api_set(doc, "next_cursor",
                has_more && count > 0 ? bd__api_cursor_json('s', rows[count - 1].seq)
                                      : json_null(),
                &is_failed);
    bd__api_set(doc, "limit", json_integer(call->limit), &is_failed);
    if (is_failed) {
        json_decref(doc);
        doc = NULL;
    }
    bd__api_respond_json(call->req, 200, doc, NULL);
}

static void api_on_list(struct bd_http_request *req, void *arg)
{
    struct bd_server *srv = arg;
    struct bd_job_filter f = { 0 };
    struct api_list_call *call;
    const char *status, *model, *op;
    int err;

    if (!bd__api_check_auth(req, srv))
        return;
    status = bd_http_query_get(req, "status");
    model = bd_http_query_get(req, "model");
    op = bd_http_query_get(req, "operation");
    if (status != NULL && *status != '\0' && strcmp(status, "all") != 0) {
        if (bd_job_state_parse(status, &f.status) < 0) {
            bd_http_respond_err(req, BD_EINVAL, "status must be one of all, queued, "
                                "processing, completed, failed, cancelled", "status");
            return;
        }
        f.has_status = true;
    }
    if (op != NULL && *op != '\0') {
        if (bd_job_operation_parse(op, &f.operation) < 0) {
            bd_http_respond_err(req, BD_EINVAL, "operation must be bulk_embed or bulk_insert",
                                "operation");
            return;
        }
        f.has_operation = true;
    }
    if (model != NULL && *model != '\0') {
        if (strlen(model) > API_STATUS_MODEL_MAX) {
            bd_http_respond_err(req, BD_EINVAL, "model is too long", "model");
            return;
        }
        f.model = model;
    }
    if (!bd__api_get_limit(req, API_STATUS_LIST_DEFAULT, &f.limit) ||
        !bd__api_get_cursor(req, 's', INT64_MAX / 16, &f.has_before_seq, &f.before_seq))
        return;
    if ((call = bd_http_alloc(req, sizeof(*call))) == NULL) {
        bd_http_respond_err(req, BD_ENOMEM, NULL, NULL);
        return;
    }
    *call = (struct api_list_call){ req, f.limit };
    if ((err = bd_job_store_list_jobs(srv->pg, &f, api_on_list_rows, call)) < 0)
        bd__api_fail_store(req, NULL, err, NULL);
}

/* ---- registration ------------------------------------------------------------------------ */

int bd__api_register_status(struct bd_router *r, struct bd_server *srv)
{
    int rc = BD_OK;

    if (srv->api_cache == NULL && (srv->api_cache = calloc(1, sizeof(*srv->api_cache))) == NULL)
        return BD_ENOMEM;
    rc = rc ? rc : bd_router_add(r, "GET", BD_API_PREFIX "/jobs", api_on_list, srv);
    rc = rc ? rc : bd_router_add(r, "GET", BD_API_PREFIX "/jobs/{id}", api_on_job, srv);
    rc = rc ? rc : bd_router_add(r, "GET", BD_API_PREFIX "/jobs/{id}/status", api_on_status,
                                 srv);
    return rc;
}
