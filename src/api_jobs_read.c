/* api_jobs_read.c -- the read side of the job API: status, the whole job, the job list,
 * per-item outcomes, stored results (paged JSON or streamed JSON Lines), progress events
 * (Server-Sent Events) and /debug/job/{id}.
 *
 * Owns the per-request state of its handlers: one-query handlers keep theirs in the
 * request's arena; the two long-lived streams (JSON Lines results, SSE) malloc theirs and
 * free it once the stream has ended, no query is in flight and their timers are closed.
 * Loop thread only; never blocks. Reads PostgreSQL through pg_store.h (parameterized
 * statements only), Redis through redis_queue.h and live job state through job_engine.h;
 * never writes anything.  SPDX-License-Identifier: MIT
 */
#include "batchd/api.h"

#include "batchd/buf.h"
#include "batchd/config.h"
#include "batchd/error.h"
#include "batchd/http_server.h"
#include "batchd/job_engine.h"
#include "batchd/log.h"
#include "batchd/pg_store.h"
#include "batchd/redis_queue.h"
#include "batchd/router.h"
#include "batchd/server.h"

#include <libpq-fe.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Reals such as 66.7 print as "66.7", not jansson's default 17-digit "66.700000000000003". */
#define API_READ_JSON_FLAGS      (JSON_COMPACT | JSON_REAL_PRECISION(15))
#define API_READ_PAGE_MAX        1000           /* largest limit= on every paged endpoint */
#define API_READ_LIST_DEFAULT    50
#define API_READ_ITEMS_DEFAULT   100
#define API_READ_RESULTS_DEFAULT 100
#define API_READ_MODEL_MAX       256
#define API_READ_STREAM_PAGE     500            /* rows per query while streaming results */
#define API_READ_STREAM_CHUNK    (64u * 1024)   /* JSON Lines bytes per stream write */
#define API_READ_STREAM_HIGH     (1u << 20)     /* pending bytes above which we wait to drain */
#define API_READ_SSE_BEAT_MS     15000
#define API_READ_SSE_POLL_MIN_MS 100
#define API_READ_SSE_POLL_MAX_MS 5000
#define API_READ_DEBUG_BATCHES   1000           /* /debug lists at most this many batches */
#define API_READ_RQ_INFLIGHT     "bd:inflight"  /* redis_queue.h's default prefix + key */
#define API_READ_STR_(x)         #x
#define API_READ_STR(x)          API_READ_STR_(x)

/* ---- SQL ------------------------------------------------------------------------------ */

/* Column positions of BD__API_JOB_COLUMNS (api.h). GET /jobs/{id} shows the 10 most recent
 * item errors (latest run first). */
enum api_read_job_col {
    JC_ID, JC_STATUS, JC_OPERATION, JC_MODEL, JC_COLLECTION, JC_TOTAL_ITEMS, JC_PROCESSED,
    JC_FAILED, JC_NEXT_BATCH, JC_TOTAL_BATCHES, JC_STORED, JC_CACHE_HITS, JC_PROCESSING_MS,
    JC_ERROR_CODE, JC_ERROR_MESSAGE, JC_CANCEL_REQUESTED, JC_SEQ, JC_CREATED_MS, JC_STARTED_MS,
    JC_COMPLETED_MS, JC_NOW_MS,
    JC_COUNT,
    /* GET /jobs/{id} adds these after the status columns ... */
    JF_PRIORITY = JC_COUNT, JF_BATCH_SIZE, JF_OPTIONS, JF_METADATA, JF_IDEMPOTENCY_KEY,
    JF_RUN_ATTEMPT, JF_TIMEOUT_S, JF_MAX_RETRIES, JF_ERRORS_COUNT, JF_LAST_ERRORS,
    JF_COUNT,
    /* ... and /debug/job/{id} these after those. */
    JD_LEASE_OWNER = JF_COUNT, JD_BATCHES_COUNT, JD_BATCHES,
};
_Static_assert(JC_COUNT == BD__API_JOB_NCOLUMNS, "BD__API_JOB_COLUMNS and enum disagree");

#define API_READ_JOB_FULL_COLUMNS                                                            \
    BD__API_JOB_COLUMNS ", priority, batch_size, options::text, metadata::text, "            \
    "idempotency_key, run_attempt, timeout_s, max_retries, "                                 \
    "(SELECT count(*) FROM job_item_errors e WHERE e.job_id = jobs.id), "                    \
    "(SELECT coalesce(json_agg(json_build_object('item_index', e.item_index, "               \
    "'item_id', e.item_id, 'code', e.code, 'message', e.message) "                           \
    "ORDER BY e.run_attempt DESC, e.item_index DESC), '[]')::text "                          \
    "FROM (SELECT item_index, item_id, code, message, run_attempt FROM job_item_errors e "   \
    "WHERE e.job_id = jobs.id ORDER BY run_attempt DESC, item_index DESC LIMIT 10) e)"

static const char api_read_sql_status[] =
    "SELECT " BD__API_JOB_COLUMNS " FROM jobs WHERE id = $1";

static const char api_read_sql_job[] =
    "SELECT " API_READ_JOB_FULL_COLUMNS " FROM jobs WHERE id = $1";

static const char api_read_sql_debug[] =
    "SELECT " API_READ_JOB_FULL_COLUMNS ", lease_owner, "
    "(SELECT count(*) FROM job_batches b WHERE b.job_id = jobs.id), "
    "(SELECT coalesce(json_agg(json_build_object('batch_no', b.batch_no, "
    "'first_index', b.first_index, 'item_count', b.item_count, 'status', b.status, "
    "'attempts', b.attempts, 'processed', b.processed, 'failed', b.failed, "
    "'last_error', b.last_error, 'duration_ms', b.duration_ms, 'updated_at', "
    "to_char(b.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')) "
    "ORDER BY b.batch_no), '[]')::text "
    "FROM (SELECT batch_no, first_index, item_count, status, attempts, processed, failed, "
    "last_error, duration_ms, updated_at FROM job_batches b WHERE b.job_id = jobs.id "
    "ORDER BY batch_no LIMIT " API_READ_STR(API_READ_DEBUG_BATCHES) ") b) "
    "FROM jobs WHERE id = $1";

/* The planner sees the actual parameters (unnamed statement), so the "IS NULL OR" filters
 * fold away and the (status, seq DESC) / (seq DESC) indexes apply. */
static const char api_read_sql_list[] =
    "SELECT " BD__API_JOB_COLUMNS " FROM jobs "
    "WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR model = $2) "
    "AND ($3::text IS NULL OR operation = $3) AND ($4::int8 IS NULL OR seq < $4) "
    "ORDER BY seq DESC LIMIT $5";

/* Items and results join the job so that one round trip tells "no such job" (no row) from
 * "no items yet" (one row whose item columns are NULL). Columns: 0 job status, 1 item index,
 * 2 item id, 3 error code (NULL when the item succeeded), 4 error message. */
enum api_read_items_filter { ITEMS_FAILED = 0, ITEMS_SUCCEEDED, ITEMS_ALL };
static const char *const api_read_items_filter_names[] = { "failed", "succeeded", "all" };

static const char *const api_read_sql_items[] = {
    [ITEMS_FAILED] =
        "SELECT j.status, x.item_index, x.item_id, x.code, x.message FROM jobs j "
        "LEFT JOIN LATERAL (SELECT item_index, item_id, code, message FROM job_item_errors e "
        "WHERE e.job_id = j.id AND e.item_index >= $2 ORDER BY item_index LIMIT $3) x ON true "
        "WHERE j.id = $1 ORDER BY x.item_index",
    [ITEMS_SUCCEEDED] =
        "SELECT j.status, x.item_index, x.id, NULL::text, NULL::text FROM jobs j "
        "LEFT JOIN LATERAL (SELECT item_index, id FROM vectors v "
        "WHERE v.job_id = j.id AND v.item_index >= $2 ORDER BY item_index LIMIT $3) x ON true "
        "WHERE j.id = $1 ORDER BY x.item_index",
    /* Each side is cut to $3 rows before the merge, which is enough for the first $3 of the
     * union. An item that failed once and succeeded on a retry is reported as succeeded. */
    [ITEMS_ALL] =
        "SELECT j.status, x.idx, x.id, x.code, x.message FROM jobs j "
        "LEFT JOIN LATERAL (SELECT DISTINCT ON (u.idx) u.idx, u.id, u.code, u.message FROM ("
        "(SELECT item_index AS idx, item_id AS id, code, message FROM job_item_errors e "
        "WHERE e.job_id = j.id AND e.item_index >= $2 ORDER BY item_index LIMIT $3) "
        "UNION ALL "
        "(SELECT item_index, id, NULL, NULL FROM vectors v "
        "WHERE v.job_id = j.id AND v.item_index >= $2 ORDER BY item_index LIMIT $3)) u "
        "ORDER BY u.idx, (u.code IS NULL) DESC LIMIT $3) x ON true "
        "WHERE j.id = $1 ORDER BY x.idx",
};

/* Columns: 0 job status, 1 collection, 2 item index, 3 id, 4 embedding, 5 metadata. */
#define RC_INDEX 2
static const char api_read_sql_results[] =
    "SELECT j.status, j.collection, x.item_index, x.id, x.embedding::text, x.metadata::text "
    "FROM jobs j LEFT JOIN LATERAL (SELECT item_index, id, embedding, metadata FROM vectors v "
    "WHERE v.job_id = j.id AND v.item_index >= $2 ORDER BY item_index LIMIT $3) x ON true "
    "WHERE j.id = $1 ORDER BY x.item_index";

/* ---- Small helpers -------------------------------------------------------------------- */

int bd__api_is_job_id_valid(const char *id)
{
    size_t n;

    if (id == NULL)
        return 0;
    for (n = 0; id[n] != '\0'; n++) {
        char c = id[n];
        bool is_ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                     (c >= '0' && c <= '9') || c == '_' || c == '-';
        if (!is_ok || n >= BD__API_JOB_ID_MAX)
            return 0;
    }
    return n > 0;
}

static const char *api_read_col(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? NULL : PQgetvalue(res, row, col);
}

static long long api_read_col_ll(const PGresult *res, int row, int col)
{
    const char *v = api_read_col(res, row, col);
    return v ? strtoll(v, NULL, 10) : 0;
}

static json_t *api_read_col_str(const PGresult *res, int row, int col)
{
    const char *v = api_read_col(res, row, col);
    return v ? json_stringn(v, (size_t)PQgetlength(res, row, col)) : json_null();
}

static json_t *api_read_col_int(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? json_null() : json_integer(api_read_col_ll(res, row, col));
}

/* A json/jsonb column in text form, parsed; fallback() when NULL or unparseable (a number
 * beyond jansson's 64-bit integers, say). */
static json_t *api_read_col_json(const PGresult *res, int row, int col, json_t *(*fallback)(void))
{
    const char *v = api_read_col(res, row, col);
    json_t *j = v ? json_loadb(v, (size_t)PQgetlength(res, row, col), JSON_DECODE_ANY, NULL)
                  : NULL;
    return j ? j : fallback();
}

/* Epoch milliseconds as RFC 3339 UTC without fraction ("2025-07-15T14:30:00Z"). */
static json_t *api_read_time_json(long long ms)
{
    time_t t = (time_t)(ms >= 0 ? ms / 1000 : -((-ms + 999) / 1000));
    struct tm tm;
    char buf[40];

    if (gmtime_r(&t, &tm) == NULL || strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        return json_null();
    return json_string(buf);
}

static json_t *api_read_col_time(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? json_null()
                                      : api_read_time_json(api_read_col_ll(res, row, col));
}

static double api_read_round1(double x)
{
    return round(x * 10.0) / 10.0;
}

static bool api_read_is_terminal(const char *status)
{
    enum bd_job_state s;

    if (status == NULL || bd_job_state_parse(status, &s) < 0)
        return false;
    return s == BD_JOB_COMPLETED || s == BD_JOB_FAILED || s == BD_JOB_CANCELLED;
}

/* o[key] = v, stealing v even on failure (jansson does); a failure is remembered in *failed.
 * A NULL o or v counts as a failure, so builders can chain calls and check once. */
static void api_read_set(json_t *o, const char *key, json_t *v, bool *failed)
{
    if (json_object_set_new(o, key, v) < 0)
        *failed = true;
}

/* Finish req with doc (stolen) as JSON. */
static void api_read_respond(struct bd_http_request *req, int status, json_t *doc)
{
    char *body = doc ? json_dumps(doc, API_READ_JSON_FLAGS) : NULL;

    json_decref(doc);
    if (body == NULL) {
        bd_http_respond_err(req, BD_ENOMEM, "out of memory building the response", NULL);
        return;
    }
    bd_http_respond(req, status, "application/json", NULL, body, strlen(body));
    free(body);
}

/* PostgreSQL failed (or is unreachable): log once here, where the decision is made, and
 * answer 503. res may be NULL. */
static void api_read_fail_pg(struct bd_http_request *req, const char *job_id, int err,
                             const PGresult *res)
{
    const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;

    bd_log(BD_LOG_WARN, "api", "job=%s route=%s event=pg_failed err=%s pg=\"%s\"",
           job_id ? job_id : "-", req->route ? req->route : "-", bd_err_name(err),
           msg ? msg : "");
    bd_http_respond_err(req, BD_EPG, NULL, NULL);
}

static void api_read_not_found(struct bd_http_request *req)
{
    bd_http_respond_err(req, BD_ENOTFOUND, "no such job", NULL);
}

/* The {id} parameter, or NULL after answering 400. */
static const char *api_read_job_id(struct bd_http_request *req)
{
    const char *id = req->params_count > 0 ? req->params[0] : NULL;

    if (!bd__api_is_job_id_valid(id)) {
        bd_http_respond_err(req, BD_EINVAL, "job id must match ^[A-Za-z0-9_-]{1,128}$",
                            "job_id");
        return NULL;
    }
    return id;
}

/* Decimal digits only, within [min, max]. */
static bool api_read_parse_ll(const char *s, long long min, long long max, long long *out)
{
    long long v = 0;
    size_t n = 0;

    if (s == NULL || *s == '\0')
        return false;
    for (; s[n] != '\0'; n++) {
        if (s[n] < '0' || s[n] > '9' || n >= 18)
            return false;
        v = v * 10 + (s[n] - '0');
    }
    if (v < min || v > max)
        return false;
    *out = v;
    return true;
}

/* limit= in [1, API_READ_PAGE_MAX] or def when absent. False after answering 400. */
static bool api_read_get_limit(struct bd_http_request *req, long long def, long long *out)
{
    const char *s = bd_http_query_get(req, "limit");

    if (s == NULL) {
        *out = def;
        return true;
    }
    if (!api_read_parse_ll(s, 1, API_READ_PAGE_MAX, out)) {
        bd_http_respond_err(req, BD_EINVAL, "limit must be an integer from 1 to 1000", "limit");
        return false;
    }
    return true;
}

/* Cursors are opaque to clients: tag + decimal ("s1234": jobs with seq below 1234; "i50":
 * items with index 50 or more). cursor= absent or empty gives *has = false. False after
 * answering 400. */
static bool api_read_get_cursor(struct bd_http_request *req, char tag, long long max, bool *has,
                                long long *out)
{
    const char *s = bd_http_query_get(req, "cursor");

    *has = false;
    if (s == NULL || *s == '\0')
        return true;
    if (s[0] != tag || !api_read_parse_ll(s + 1, 0, max, out)) {
        bd_http_respond_err(req, BD_EINVAL, "cursor is not one this endpoint returned",
                            "cursor");
        return false;
    }
    *has = true;
    return true;
}

static json_t *api_read_cursor_json(char tag, long long v)
{
    char buf[32];
    snprintf(buf, sizeof(buf), "%c%lld", tag, v);
    return json_string(buf);
}

/* ---- Status object -------------------------------------------------------------------- */

json_t *bd__api_job_status_json(const struct pg_result *res, int row)
{
    const char *status = api_read_col(res, row, JC_STATUS);
    bool is_terminal = api_read_is_terminal(status);
    bool is_processing = status != NULL && strcmp(status, "processing") == 0;
    bool has_started = !PQgetisnull(res, row, JC_STARTED_MS);
    bool has_completed = !PQgetisnull(res, row, JC_COMPLETED_MS);
    long long total = api_read_col_ll(res, row, JC_TOTAL_ITEMS);
    long long processed = api_read_col_ll(res, row, JC_PROCESSED);
    long long failed = api_read_col_ll(res, row, JC_FAILED);
    long long done = processed + failed;
    long long started = api_read_col_ll(res, row, JC_STARTED_MS);
    long long completed = api_read_col_ll(res, row, JC_COMPLETED_MS);
    long long now = api_read_col_ll(res, row, JC_NOW_MS);
    long long elapsed = has_started && now > started ? now - started : 0;
    const char *error_code = api_read_col(res, row, JC_ERROR_CODE);
    const char *cancel = api_read_col(res, row, JC_CANCEL_REQUESTED);
    json_t *doc = json_object(), *progress = json_object(), *timing = json_object();
    json_t *results = json_object();
    bool is_failed = false;
    double pct;

    if (total > 0)
        pct = api_read_round1(100.0 * (double)done / (double)total);
    else
        pct = status != NULL && strcmp(status, "completed") == 0 ? 100.0 : 0.0;

    api_read_set(doc, "job_id", api_read_col_str(res, row, JC_ID), &is_failed);
    api_read_set(doc, "status", api_read_col_str(res, row, JC_STATUS), &is_failed);
    api_read_set(doc, "operation", api_read_col_str(res, row, JC_OPERATION), &is_failed);
    api_read_set(doc, "model", api_read_col_str(res, row, JC_MODEL), &is_failed);

    api_read_set(progress, "total_items", json_integer(total), &is_failed);
    api_read_set(progress, "processed_items", json_integer(processed), &is_failed);
    api_read_set(progress, "failed_items", json_integer(failed), &is_failed);
    api_read_set(progress, "percentage", json_real(pct), &is_failed);
    api_read_set(progress, "current_batch", api_read_col_int(res, row, JC_NEXT_BATCH),
                 &is_failed);
    api_read_set(progress, "total_batches", api_read_col_int(res, row, JC_TOTAL_BATCHES),
                 &is_failed);
    api_read_set(doc, "progress", progress, &is_failed);

    api_read_set(timing, "created_at", api_read_col_time(res, row, JC_CREATED_MS), &is_failed);
    api_read_set(timing, "started_at", api_read_col_time(res, row, JC_STARTED_MS), &is_failed);
    if (!is_terminal) {
        /* Linear extrapolation from the items finished so far. */
        json_t *eta = json_null();
        if (has_started && done > 0 && total > 0)
            eta = api_read_time_json(started + (long long)((double)elapsed * (double)total /
                                                           (double)done));
        api_read_set(timing, "estimated_completion", eta, &is_failed);
        if (is_processing && has_started)
            api_read_set(timing, "processing_time_ms", json_integer(elapsed), &is_failed);
    } else {
        long long spent = has_started && has_completed && completed > started
                              ? completed - started : 0;
        api_read_set(timing, "completed_at", api_read_col_time(res, row, JC_COMPLETED_MS),
                     &is_failed);
        api_read_set(timing, "total_processing_time_ms", json_integer(spent), &is_failed);
    }
    api_read_set(doc, "timing", timing, &is_failed);

    api_read_set(results, "completed_embeddings", json_integer(processed), &is_failed);
    api_read_set(results, "average_processing_time_ms",
                 json_real(api_read_round1((double)api_read_col_ll(res, row, JC_PROCESSING_MS) /
                                           (double)(done > 0 ? done : 1))),
                 &is_failed);
    /* Nothing finished yet means nothing failed yet: 100.0, so the type never changes. */
    api_read_set(results, "success_rate",
                 json_real(done > 0 ? api_read_round1(100.0 * (double)processed / (double)done)
                                    : 100.0),
                 &is_failed);
    api_read_set(results, "output_collection", api_read_col_str(res, row, JC_COLLECTION),
                 &is_failed);
    api_read_set(results, "stored_vectors", json_integer(api_read_col_ll(res, row, JC_STORED)),
                 &is_failed);
    api_read_set(results, "cache_hits", json_integer(api_read_col_ll(res, row, JC_CACHE_HITS)),
                 &is_failed);
    api_read_set(doc, "results", results, &is_failed);

    if (error_code != NULL) {
        json_t *err = json_object();
        api_read_set(err, "code", api_read_col_str(res, row, JC_ERROR_CODE), &is_failed);
        api_read_set(err, "message", api_read_col_str(res, row, JC_ERROR_MESSAGE), &is_failed);
        api_read_set(doc, "error", err, &is_failed);
    }
    if (!is_terminal && cancel != NULL && cancel[0] == 't')
        api_read_set(doc, "cancel_requested", json_true(), &is_failed);

    if (is_failed) {
        json_decref(doc);
        return NULL;
    }
    return doc;
}

/* The whole job (GET /jobs/{id}): res holds API_READ_JOB_FULL_COLUMNS. */
static json_t *api_read_job_json(const PGresult *res, int row)
{
    json_t *doc = bd__api_job_status_json(res, row);
    bool is_failed = doc == NULL;

    api_read_set(doc, "collection", api_read_col_str(res, row, JC_COLLECTION), &is_failed);
    api_read_set(doc, "priority",
                 json_string(bd_job_priority_name((int)api_read_col_ll(res, row, JF_PRIORITY))),
                 &is_failed);
    api_read_set(doc, "batch_size", api_read_col_int(res, row, JF_BATCH_SIZE), &is_failed);
    api_read_set(doc, "options", api_read_col_json(res, row, JF_OPTIONS, json_object),
                 &is_failed);
    api_read_set(doc, "metadata", api_read_col_json(res, row, JF_METADATA, json_object),
                 &is_failed);
    api_read_set(doc, "idempotency_key", api_read_col_str(res, row, JF_IDEMPOTENCY_KEY),
                 &is_failed);
    api_read_set(doc, "run_attempt", api_read_col_int(res, row, JF_RUN_ATTEMPT), &is_failed);
    api_read_set(doc, "timeout_s",
                 PQgetisnull(res, row, JF_TIMEOUT_S)
                     ? json_null()
                     : json_real(strtod(PQgetvalue(res, row, JF_TIMEOUT_S), NULL)),
                 &is_failed);
    api_read_set(doc, "max_retries", api_read_col_int(res, row, JF_MAX_RETRIES), &is_failed);
    api_read_set(doc, "errors_count", api_read_col_int(res, row, JF_ERRORS_COUNT), &is_failed);
    api_read_set(doc, "last_errors", api_read_col_json(res, row, JF_LAST_ERRORS, json_array),
                 &is_failed);
    if (is_failed) {
        json_decref(doc);
        return NULL;
    }
    return doc;
}

/* ---- One-query handlers --------------------------------------------------------------- */

/* State of a handler that runs one query (two for /debug) and answers; in req's arena. */
struct api_read_call {
    struct bd_http_request *req;
    struct bd_server *srv;
    const char *job_id;               /* req's arena; NULL for the list */
    long long limit;
    long long cursor;
    bool has_cursor;
    json_t *doc;                      /* /debug: the answer, while Redis is asked */
};

static struct api_read_call *api_read_call_new(struct bd_http_request *req,
                                               struct bd_server *srv, const char *job_id)
{
    struct api_read_call *call = bd_http_alloc(req, sizeof(*call));

    if (call == NULL) {
        bd_http_respond_err(req, BD_ENOMEM, NULL, NULL);
        return NULL;
    }
    memset(call, 0, sizeof(*call));
    call->req = req;
    call->srv = srv;
    call->job_id = job_id;
    return call;
}

/* Run sql; cb answers. On a synchronous failure answer 503 here (cb never runs). */
static void api_read_query(struct api_read_call *call, const char *sql, int nparams,
                           const char *const *values, bd_pg_result_cb cb)
{
    int err = call->srv->pg ? bd_pg_query(call->srv->pg, sql, nparams, values, NULL, NULL, 0,
                                          cb, call)
                            : BD_EPG;
    if (err < 0)
        api_read_fail_pg(call->req, call->job_id, err, NULL);
}

/* Common prologue: auth, {id}, state. NULL when already answered. */
static struct api_read_call *api_read_begin(struct bd_http_request *req, struct bd_server *srv)
{
    const char *id;

    if (!bd__api_check_auth(req, srv))
        return NULL;
    if ((id = api_read_job_id(req)) == NULL)
        return NULL;
    return api_read_call_new(req, srv, id);
}

/* GET /jobs/{id}/status
 *
 * Clients poll this endpoint hard (a progress bar per job). Each job's answer is kept for
 * http.status_cache_ms (default 50 ms; 0 keeps only the coalescing), and requests for a job whose row is being read wait for that one
 * read instead of starting their own (request coalescing): a hot job costs at most one
 * PostgreSQL query per interval, whatever the request rate. Cancel and retry in this
 * process drop the entry at once (bd__api_status_cache_drop). The cache is direct-mapped
 * and bounded; a slot busy with another job's read is simply bypassed. */

#define API_STATUS_CACHE_SLOTS 1024           /* power of two */

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
    bool is_reading;
    const void *reader;                       /* the call whose read the waiters share */
    struct api_status_waiter *waiters;
};

struct bd_api_cache {
    struct api_status_slot slots[API_STATUS_CACHE_SLOTS];
};

static struct api_status_slot *api_status_slot(struct bd_server *srv, const char *id)
{
    uint32_t h = 2166136261u;
    for (const char *p = id; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    return srv->api_cache ? &srv->api_cache->slots[h & (API_STATUS_CACHE_SLOTS - 1)] : NULL;
}

void bd__api_status_cache_drop(struct bd_server *srv, const char *job_id)
{
    struct api_status_slot *slot = api_status_slot(srv, job_id);
    if (slot && strcmp(slot->id, job_id) == 0)
        slot->expires_ns = 0;
}

void bd_api_free(struct bd_server *srv)
{
    if (srv->api_cache == NULL)
        return;
    for (unsigned i = 0; i < API_STATUS_CACHE_SLOTS; i++)
        free(srv->api_cache->slots[i].body);
    free(srv->api_cache);
    srv->api_cache = NULL;
}

static void api_read_on_status_row(int status, PGresult *res, void *arg)
{
    struct api_read_call *call = arg;
    struct api_status_slot *slot = api_status_slot(call->srv, call->job_id);
    /* Only the call that started the slot's read answers its waiters: a call that read
     * alone (the slot was busy) may finish while the slot serves a later read of the same
     * job, and must not take that read's waiters. */
    bool is_coalesced = slot && slot->is_reading && slot->reader == call;
    char *body = NULL;
    int http = 200;

    if (status == BD_OK && PQntuples(res) == 0) {
        http = 404;
        body = strdup("{\"error\":{\"code\":\"not_found\",\"message\":\"no such job\"}}");
    } else if (status == BD_OK) {
        json_t *doc = bd__api_job_status_json(res, 0);
        body = doc ? json_dumps(doc, API_READ_JSON_FLAGS) : NULL;
        json_decref(doc);
    }
    if (!is_coalesced) {                      /* this request read alone (slot was busy) */
        if (body)
            bd_http_respond(call->req, http, "application/json", NULL, body, strlen(body));
        else
            api_read_fail_pg(call->req, call->job_id, status < 0 ? status : BD_ENOMEM, res);
        free(body);
        return;
    }
    /* Each answer frees its request's arena (the waiter record, and call->job_id when it
     * is call->req's): copy the id and read next before answering. */
    char id[BD__API_JOB_ID_MAX + 1];
    snprintf(id, sizeof(id), "%s", call->job_id);
    struct api_status_waiter *w = slot->waiters, *next;
    slot->waiters = NULL;
    slot->is_reading = false;
    slot->reader = NULL;
    free(slot->body);
    slot->body = body;
    slot->len = body ? strlen(body) : 0;
    slot->http_status = http;
    slot->expires_ns = body ? uv_hrtime() + call->srv->cfg->http_status_cache_ms * 1000000ULL
                            : 0;
    for (; w != NULL; w = next) {             /* call->req is one of them */
        next = w->next;
        if (body)
            bd_http_respond(w->req, http, "application/json", NULL, body, slot->len);
        else
            api_read_fail_pg(w->req, id, status < 0 ? status : BD_ENOMEM, res);
    }
}

static void api_read_on_status(struct bd_http_request *req, void *arg)
{
    struct api_read_call *call = api_read_begin(req, arg);
    const char *values[1];

    if (call == NULL)
        return;
    struct api_status_slot *slot = api_status_slot(call->srv, call->job_id);
    bool is_mine = slot && strcmp(slot->id, call->job_id) == 0;
    if (is_mine && slot->body && uv_hrtime() < slot->expires_ns) {
        bd_http_respond(req, slot->http_status, "application/json", NULL, slot->body,
                        slot->len);
        return;
    }
    if (slot && (is_mine || !slot->is_reading)) {
        struct api_status_waiter *w = bd_http_alloc(req, sizeof(*w));
        if (w == NULL) {
            bd_http_respond_err(req, BD_ENOMEM, NULL, NULL);
            return;
        }
        w->req = req;
        w->next = slot->waiters;
        slot->waiters = w;
        if (is_mine && slot->is_reading)
            return;                           /* answered when the read in flight ends */
        snprintf(slot->id, sizeof(slot->id), "%s", call->job_id);
        slot->is_reading = true;
        slot->reader = call;
        slot->expires_ns = 0;
    }
    values[0] = call->job_id;
    int err = call->srv->pg ? bd_pg_query(call->srv->pg, api_read_sql_status, 1, values, NULL,
                                          NULL, 0, api_read_on_status_row, call)
                            : BD_EPG;
    if (err < 0) {
        /* No read started: answer everyone who queued on this slot. */
        struct api_status_waiter *w = slot && slot->reader == call ? slot->waiters : NULL;
        if (w) {
            char id[BD__API_JOB_ID_MAX + 1];
            snprintf(id, sizeof(id), "%s", call->job_id);
            slot->waiters = NULL;
            slot->is_reading = false;
            slot->reader = NULL;
            for (struct api_status_waiter *next; w; w = next) {
                next = w->next;
                api_read_fail_pg(w->req, id, err, NULL);
            }
        } else {
            api_read_fail_pg(req, call->job_id, err, NULL);
        }
    }
}

/* GET /jobs/{id} */

static void api_read_on_job_row(int status, PGresult *res, void *arg)
{
    struct api_read_call *call = arg;

    if (status < 0)
        api_read_fail_pg(call->req, call->job_id, status, res);
    else if (PQntuples(res) == 0)
        api_read_not_found(call->req);
    else
        api_read_respond(call->req, 200, api_read_job_json(res, 0));
}

static void api_read_on_job(struct bd_http_request *req, void *arg)
{
    struct api_read_call *call = api_read_begin(req, arg);
    const char *values[1];

    if (call == NULL)
        return;
    values[0] = call->job_id;
    api_read_query(call, api_read_sql_job, 1, values, api_read_on_job_row);
}

/* GET /jobs?status=&model=&operation=&limit=&cursor= */

static void api_read_on_list_rows(int status, PGresult *res, void *arg)
{
    struct api_read_call *call = arg;
    json_t *doc, *jobs;
    bool is_failed = false, has_more;
    int n;

    if (status < 0) {
        api_read_fail_pg(call->req, NULL, status, res);
        return;
    }
    n = PQntuples(res);
    has_more = n > call->limit;            /* one row more than asked was fetched */
    if (has_more)
        n = (int)call->limit;
    doc = json_object();
    jobs = json_array();
    for (int i = 0; i < n; i++)
        if (json_array_append_new(jobs, bd__api_job_status_json(res, i)) < 0)
            is_failed = true;
    api_read_set(doc, "jobs", jobs, &is_failed);
    api_read_set(doc, "count", json_integer(n), &is_failed);
    api_read_set(doc, "next_cursor",
                 has_more ? api_read_cursor_json('s', api_read_col_ll(res, n - 1, JC_SEQ))
                          : json_null(),
                 &is_failed);
    api_read_set(doc, "limit", json_integer(call->limit), &is_failed);
    if (is_failed) {
        json_decref(doc);
        doc = NULL;
    }
    api_read_respond(call->req, 200, doc);
}

static void api_read_on_list(struct bd_http_request *req, void *arg)
{
    struct bd_server *srv = arg;
    const char *status, *model, *op;
    char cursor_buf[32], limit_buf[32];
    const char *values[5];
    struct api_read_call *call;
    enum bd_job_state st;
    enum bd_job_operation opv;

    if (!bd__api_check_auth(req, srv))
        return;
    status = bd_http_query_get(req, "status");
    model = bd_http_query_get(req, "model");
    op = bd_http_query_get(req, "operation");
    if (status != NULL && (*status == '\0' || strcmp(status, "all") == 0))
        status = NULL;
    if (status != NULL && bd_job_state_parse(status, &st) < 0) {
        bd_http_respond_err(req, BD_EINVAL, "status must be one of all, queued, processing, "
                            "completed, failed, cancelled", "status");
        return;
    }
    if (op != NULL && *op == '\0')
        op = NULL;
    if (op != NULL && bd_job_operation_parse(op, &opv) < 0) {
        bd_http_respond_err(req, BD_EINVAL, "operation must be bulk_embed or bulk_insert",
                            "operation");
        return;
    }
    if (model != NULL && *model == '\0')
        model = NULL;
    if (model != NULL && strlen(model) > API_READ_MODEL_MAX) {
        bd_http_respond_err(req, BD_EINVAL, "model is too long", "model");
        return;
    }
    if ((call = api_read_call_new(req, srv, NULL)) == NULL)
        return;
    if (!api_read_get_limit(req, API_READ_LIST_DEFAULT, &call->limit) ||
        !api_read_get_cursor(req, 's', INT64_MAX / 16, &call->has_cursor, &call->cursor))
        return;
    snprintf(cursor_buf, sizeof(cursor_buf), "%lld", call->cursor);
    snprintf(limit_buf, sizeof(limit_buf), "%lld", call->limit + 1);
    values[0] = status;
    values[1] = model;
    values[2] = op;
    values[3] = call->has_cursor ? cursor_buf : NULL;
    values[4] = limit_buf;
    api_read_query(call, api_read_sql_list, 5, values, api_read_on_list_rows);
}

/* GET /jobs/{id}/items?status=failed|succeeded|all&limit=&cursor= */

/* Page bookkeeping shared by items and results: rows holds the item rows (0 when the only
 * row is the job's with NULL item columns); one row more than asked tells has_more. While
 * the job can still produce items next_cursor stays set, so a client can keep polling from
 * where it is; it is null only once the job is terminal and everything was read. */
static json_t *api_read_page(const PGresult *res, int index_col, const struct api_read_call *call,
                             int *rows, bool *has_more)
{
    int n = PQntuples(res);
    long long next = call->has_cursor ? call->cursor : 0;

    *rows = (n == 1 && PQgetisnull(res, 0, index_col)) ? 0 : n;
    *has_more = *rows > call->limit;
    if (*has_more)
        *rows = (int)call->limit;
    if (*rows > 0)
        next = api_read_col_ll(res, *rows - 1, index_col) + 1;
    if (*has_more || !api_read_is_terminal(PQgetvalue(res, 0, 0)))
        return api_read_cursor_json('i', next);
    return json_null();
}

static bool api_read_get_item_page(struct bd_http_request *req, struct api_read_call *call,
                                   long long def_limit, char *cursor_buf, char *limit_buf,
                                   size_t buflen)
{
    if (!api_read_get_limit(req, def_limit, &call->limit) ||
        !api_read_get_cursor(req, 'i', INT32_MAX, &call->has_cursor, &call->cursor))
        return false;
    snprintf(cursor_buf, buflen, "%lld", call->has_cursor ? call->cursor : 0);
    snprintf(limit_buf, buflen, "%lld", call->limit + 1);
    return true;
}

static void api_read_on_items_rows(int status, PGresult *res, void *arg)
{
    struct api_read_call *call = arg;
    json_t *doc, *items, *next;
    bool is_failed = false, has_more;
    int rows;

    if (status < 0) {
        api_read_fail_pg(call->req, call->job_id, status, res);
        return;
    }
    if (PQntuples(res) == 0) {
        api_read_not_found(call->req);
        return;
    }
    next = api_read_page(res, 1, call, &rows, &has_more);
    items = json_array();
    for (int i = 0; i < rows; i++) {
        json_t *item = json_object();
        bool is_error = !PQgetisnull(res, i, 3);

        api_read_set(item, "index", api_read_col_int(res, i, 1), &is_failed);
        api_read_set(item, "id", api_read_col_str(res, i, 2), &is_failed);
        api_read_set(item, "status", json_string(is_error ? "failed" : "succeeded"),
                     &is_failed);
        if (is_error) {
            json_t *err = json_object();
            api_read_set(err, "code", api_read_col_str(res, i, 3), &is_failed);
            api_read_set(err, "message", api_read_col_str(res, i, 4), &is_failed);
            api_read_set(item, "error", err, &is_failed);
        }
        if (json_array_append_new(items, item) < 0)
            is_failed = true;
    }
    doc = json_object();
    api_read_set(doc, "job_id", json_string(call->job_id), &is_failed);
    api_read_set(doc, "items", items, &is_failed);
    api_read_set(doc, "count", json_integer(rows), &is_failed);
    api_read_set(doc, "has_more", json_boolean(has_more), &is_failed);
    api_read_set(doc, "next_cursor", next, &is_failed);
    if (is_failed) {
        json_decref(doc);
        doc = NULL;
    }
    api_read_respond(call->req, 200, doc);
}

static void api_read_on_items(struct bd_http_request *req, void *arg)
{
    struct api_read_call *call = api_read_begin(req, arg);
    const char *filter_s;
    int filter = -1;
    char cursor_buf[32], limit_buf[32];
    const char *values[3];

    if (call == NULL)
        return;
    filter_s = bd_http_query_get(req, "status");
    if (filter_s == NULL || *filter_s == '\0')
        filter = ITEMS_FAILED;
    for (int i = 0; filter < 0 && i < 3; i++)
        if (strcmp(filter_s, api_read_items_filter_names[i]) == 0)
            filter = i;
    if (filter < 0) {
        bd_http_respond_err(req, BD_EINVAL, "status must be failed, succeeded or all", "status");
        return;
    }
    if (!api_read_get_item_page(req, call, API_READ_ITEMS_DEFAULT, cursor_buf, limit_buf,
                                sizeof(cursor_buf)))
        return;
    values[0] = call->job_id;
    values[1] = cursor_buf;
    values[2] = limit_buf;
    api_read_query(call, api_read_sql_items[filter], 3, values, api_read_on_items_rows);
}

/* ---- Results: paged JSON and streamed JSON Lines ------------------------------------- */

/* Append PostgreSQL's text form of a real[] ("{0.1,-2e-05,NaN}") as a JSON array
 * ("[0.1,-2e-05,null]"). No allocation beyond the buffer's: float4out already writes the
 * shortest exact decimal, which is valid JSON, so the text is copied once and its braces
 * turned into brackets in place. Only NaN, Infinity and NULL elements, which JSON cannot
 * express, need a second, token-by-token pass (they become null). */
static void api_read_put_real_array(struct bd_buf *b, const char *s, size_t len)
{
    size_t start = b->len, i = 0;
    bool is_special = false;
    char *p;

    bd_buf_append(b, s, len);
    if (b->is_failed)
        return;
    p = b->data + start;
    for (i = 0; i < len; i++) {
        switch (p[i]) {
        case '{': p[i] = '['; break;
        case '}': p[i] = ']'; break;
        case 'N': case 'I': case '"': is_special = true; break;
        default: break;
        }
    }
    if (!is_special)
        return;
    b->len = start;
    for (i = 0; i < len;) {
        char c = s[i];
        size_t j = i;

        if (c == '{' || c == '}' || c == ',') {
            bd_buf_append(b, c == '{' ? "[" : c == '}' ? "]" : ",", 1);
            i++;
            continue;
        }
        while (j < len && s[j] != ',' && s[j] != '}')
            j++;
        if ((c >= '0' && c <= '9') || (c == '-' && i + 1 < j && s[i + 1] >= '0' && s[i + 1] <= '9'))
            bd_buf_append(b, s + i, j - i);
        else
            bd_buf_append(b, "null", 4);
        i = j;
    }
}

/* {"index":N,"id":"..","embedding":[..],"metadata":{..}} from the results columns of row. The
 * metadata is jsonb's own text output, already JSON: it is copied, not parsed. */
static void api_read_put_result(struct bd_buf *b, const PGresult *res, int row)
{
    bd_buf_puts(b, "{\"index\":");
    bd_buf_puts(b, PQgetvalue(res, row, RC_INDEX));
    bd_buf_puts(b, ",\"id\":");
    bd_buf_json_string(b, PQgetvalue(res, row, RC_INDEX + 1),
                       (size_t)PQgetlength(res, row, RC_INDEX + 1));
    bd_buf_puts(b, ",\"embedding\":");
    if (PQgetisnull(res, row, RC_INDEX + 2))
        bd_buf_puts(b, "null");
    else
        api_read_put_real_array(b, PQgetvalue(res, row, RC_INDEX + 2),
                                (size_t)PQgetlength(res, row, RC_INDEX + 2));
    bd_buf_puts(b, ",\"metadata\":");
    if (PQgetisnull(res, row, RC_INDEX + 3))
        bd_buf_puts(b, "null");
    else
        bd_buf_append(b, PQgetvalue(res, row, RC_INDEX + 3),
                      (size_t)PQgetlength(res, row, RC_INDEX + 3));
    bd_buf_puts(b, "}");
}

/* A JSON value (stolen) appended to b in compact form. */
static void api_read_put_json(struct bd_buf *b, json_t *v)
{
    char *s = v ? json_dumps(v, API_READ_JSON_FLAGS | JSON_ENCODE_ANY) : NULL;

    json_decref(v);
    if (s == NULL) {
        b->is_failed = 1;
        return;
    }
    bd_buf_puts(b, s);
    free(s);
}

/* The paged answer is written by hand, not through jansson: a page may hold 1000 vectors of
 * thousands of floats, and building a json_t per float would cost far more than copying
 * PostgreSQL's text. */
static void api_read_on_results_rows(int status, PGresult *res, void *arg)
{
    struct api_read_call *call = arg;
    struct bd_buf b;
    json_t *next;
    bool has_more;
    int rows;

    if (status < 0) {
        api_read_fail_pg(call->req, call->job_id, status, res);
        return;
    }
    if (PQntuples(res) == 0) {
        api_read_not_found(call->req);
        return;
    }
    next = api_read_page(res, RC_INDEX, call, &rows, &has_more);
    bd_buf_init(&b);
    bd_buf_reserve(&b, 256 + (size_t)rows * 64);
    bd_buf_puts(&b, "{\"job_id\":");
    bd_buf_json_string(&b, call->job_id, strlen(call->job_id));
    bd_buf_puts(&b, ",\"status\":");
    bd_buf_json_string(&b, PQgetvalue(res, 0, 0), (size_t)PQgetlength(res, 0, 0));
    bd_buf_puts(&b, ",\"collection\":");
    bd_buf_json_string(&b, PQgetvalue(res, 0, 1), (size_t)PQgetlength(res, 0, 1));
    bd_buf_puts(&b, ",\"results\":[");
    for (int i = 0; i < rows; i++) {
        if (i > 0)
            bd_buf_append(&b, ",", 1);
        api_read_put_result(&b, res, i);
    }
    bd_buf_printf(&b, "],\"count\":%d,\"has_more\":%s,\"next_cursor\":", rows,
                  has_more ? "true" : "false");
    api_read_put_json(&b, next);
    bd_buf_puts(&b, "}");
    if (b.is_failed)
        bd_http_respond_err(call->req, BD_ENOMEM, "out of memory building the response", NULL);
    else
        bd_http_respond(call->req, 200, "application/json", NULL, b.data, b.len);
    bd_buf_free(&b);
}

/* Streaming state (JSON Lines). malloc'ed: it outlives a single callback and may outlive the
 * request itself by one query (freed when that query's callback arrives). */
struct api_read_ndjson {
    struct bd_http_request *req;      /* NULL once finished */
    struct bd_server *srv;
    struct bd_buf out;                /* lines not yet handed to the stream, reused */
    long long next_index;             /* keyset: next page starts at this item index */
    unsigned long long rows;
    bool is_started;                  /* bd_http_stream_begin called */
    bool is_finished;                 /* stream ended / request answered */
    bool is_aborted;                  /* client went away */
    bool is_query_in_flight;
    bool is_head;                     /* HEAD: headers only, so one page decides the status */
    char job_id[BD__API_JOB_ID_MAX + 1];
};

static void api_ndjson_maybe_free(struct api_read_ndjson *st)
{
    if (!st->is_finished || st->is_query_in_flight)
        return;
    bd_buf_free(&st->out);
    free(st);
}

/* End the request exactly once. err < 0: before the stream started it becomes the HTTP
 * error; after, a last line {"error":{...}} tells the client the stream is incomplete. */
static void api_ndjson_finish(struct api_read_ndjson *st, int err)
{
    struct bd_http_request *req = st->req;

    if (st->is_finished)
        return;
    st->is_finished = true;
    st->req = NULL;
    if (!st->is_started) {
        if (err == BD_ENOTFOUND)
            api_read_not_found(req);
        else
            bd_http_respond_err(req, err < 0 ? err : BD_EINTERNAL, NULL, NULL);
    } else {
        if (err < 0 && !st->is_aborted) {
            char line[160];
            int n = snprintf(line, sizeof(line),
                             "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}\n",
                             bd_err_api_code(err), bd_strerror(err));
            bd_http_stream_write(req, line, (size_t)n);
        }
        bd_http_stream_end(req);
    }
    bd_log(BD_LOG_DEBUG, "api", "job=%s event=results_stream_end rows=%llu err=%s",
           st->job_id, st->rows, bd_err_name(err));
    api_ndjson_maybe_free(st);
}

static void api_ndjson_on_rows(int status, PGresult *res, void *arg);

static void api_ndjson_next(struct api_read_ndjson *st)
{
    char from[32], limit[16];
    const char *values[3] = { st->job_id, from, limit };
    int err;

    if (st->srv->is_stopping) {
        api_ndjson_finish(st, BD_ESHUTDOWN);
        return;
    }
    snprintf(from, sizeof(from), "%lld", st->next_index);
    snprintf(limit, sizeof(limit), "%d", API_READ_STREAM_PAGE);
    err = st->srv->pg ? bd_pg_query(st->srv->pg, api_read_sql_results, 3, values, NULL, NULL, 0,
                                    api_ndjson_on_rows, st)
                      : BD_EPG;
    if (err < 0) {
        bd_log(BD_LOG_WARN, "api", "job=%s event=pg_failed err=%s", st->job_id,
               bd_err_name(err));
        api_ndjson_finish(st, BD_EPG);
        return;
    }
    st->is_query_in_flight = true;
}

/* Hand the buffered lines to the stream. False when the stream is finished (client gone or
 * out of memory). */
static bool api_ndjson_flush(struct api_read_ndjson *st)
{
    if (st->out.is_failed) {
        api_ndjson_finish(st, BD_ENOMEM);
        return false;
    }
    if (st->out.len == 0)
        return true;
    if (bd_http_stream_write(st->req, st->out.data, st->out.len) < 0) {
        st->is_aborted = true;
        api_ndjson_finish(st, BD_OK);
        return false;
    }
    bd_buf_reset(&st->out);
    return true;
}

static void api_ndjson_on_drain(struct bd_http_request *req, void *arg)
{
    (void)req;
    api_ndjson_next(arg);
}

static void api_ndjson_on_abort(struct bd_http_request *req, void *arg)
{
    struct api_read_ndjson *st = arg;

    (void)req;
    st->is_aborted = true;
    /* Before the stream started the first page's callback answers (the server discards
     * it); after, end now -- a query in flight then only frees st. A drain callback cannot
     * follow: ending the stream drops it. */
    if (st->is_started)
        api_ndjson_finish(st, BD_OK);
}

static void api_ndjson_on_rows(int status, PGresult *res, void *arg)
{
    struct api_read_ndjson *st = arg;
    int n, rows;

    st->is_query_in_flight = false;
    if (st->is_finished) {
        api_ndjson_maybe_free(st);
        return;
    }
    if (status < 0) {
        const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
        bd_log(BD_LOG_WARN, "api", "job=%s event=pg_failed err=%s pg=\"%s\"", st->job_id,
               bd_err_name(status), msg ? msg : "");
        api_ndjson_finish(st, BD_EPG);
        return;
    }
    n = PQntuples(res);
    if (n == 0) {                      /* no such job (or it was deleted while we streamed) */
        api_ndjson_finish(st, BD_ENOTFOUND);
        return;
    }
    if (!st->is_started) {
        st->is_started = true;
        if (bd_http_stream_begin(st->req, 200, "application/x-ndjson",
                                 "Cache-Control: no-cache\r\n") < 0) {
            st->is_aborted = true;
            api_ndjson_finish(st, BD_OK);
            return;
        }
    }
    rows = (n == 1 && PQgetisnull(res, 0, RC_INDEX)) ? 0 : n;
    for (int i = 0; i < rows; i++) {
        api_read_put_result(&st->out, res, i);
        bd_buf_append(&st->out, "\n", 1);
        if (st->out.len >= API_READ_STREAM_CHUNK && !api_ndjson_flush(st))
            return;
    }
    if (!api_ndjson_flush(st))
        return;
    st->rows += (unsigned long long)rows;
    if (rows < API_READ_STREAM_PAGE || st->is_head) {
        api_ndjson_finish(st, BD_OK);
        return;
    }
    st->next_index = api_read_col_ll(res, rows - 1, RC_INDEX) + 1;
    /* Backpressure: a slow reader holds at most ~1 MiB plus one page here, whatever the
     * size of the job. */
    if (bd_http_stream_get_pending(st->req) > API_READ_STREAM_HIGH) {
        bd_log(BD_LOG_DEBUG, "api", "job=%s event=results_stream_wait pending=%zu rows=%llu",
               st->job_id, bd_http_stream_get_pending(st->req), st->rows);
        bd_http_stream_set_drain_cb(st->req, api_ndjson_on_drain, st);
        return;
    }
    api_ndjson_next(st);
}

static void api_read_start_ndjson(struct api_read_call *call)
{
    struct api_read_ndjson *st = calloc(1, sizeof(*st));

    if (st == NULL) {
        bd_http_respond_err(call->req, BD_ENOMEM, NULL, NULL);
        return;
    }
    st->req = call->req;
    st->srv = call->srv;
    st->next_index = call->has_cursor ? call->cursor : 0;
    st->is_head = strcmp(call->req->method, "HEAD") == 0;
    snprintf(st->job_id, sizeof(st->job_id), "%s", call->job_id);
    bd_buf_init(&st->out);
    bd_http_set_abort_cb(st->req, api_ndjson_on_abort, st);
    api_ndjson_next(st);
}

/* Accept: application/x-ndjson (or application/jsonl), or ?format=ndjson. */
static bool api_read_wants_ndjson(struct bd_http_request *req, bool *is_bad)
{
    const char *accept = bd_http_header_get(req, "Accept");
    const char *format = bd_http_query_get(req, "format");

    *is_bad = false;
    if (format != NULL && *format != '\0') {
        if (strcmp(format, "ndjson") == 0 || strcmp(format, "jsonl") == 0)
            return true;
        if (strcmp(format, "json") != 0)
            *is_bad = true;
        return false;
    }
    return accept != NULL &&
           (strstr(accept, "application/x-ndjson") != NULL ||
            strstr(accept, "application/jsonl") != NULL);
}

static void api_read_on_results(struct bd_http_request *req, void *arg)
{
    struct api_read_call *call = api_read_begin(req, arg);
    char cursor_buf[32], limit_buf[32];
    const char *values[3];
    bool is_ndjson, is_bad;

    if (call == NULL)
        return;
    is_ndjson = api_read_wants_ndjson(req, &is_bad);
    if (is_bad) {
        bd_http_respond_err(req, BD_EINVAL, "format must be json or ndjson", "format");
        return;
    }
    if (!api_read_get_item_page(req, call, API_READ_RESULTS_DEFAULT, cursor_buf, limit_buf,
                                sizeof(cursor_buf)))
        return;
    if (is_ndjson) {
        api_read_start_ndjson(call);
        return;
    }
    values[0] = call->job_id;
    values[1] = cursor_buf;
    values[2] = limit_buf;
    api_read_query(call, api_read_sql_results, 3, values, api_read_on_results_rows);
}

/* ---- Server-Sent Events ------------------------------------------------------------- */

/* One SSE client. Two timers (poll, heartbeat) and an engine listener; freed once the
 * stream has ended, both timers are closed and no query is in flight. */
struct api_read_sse {
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
    char last_status[16];             /* what the client saw last */
    long long last_next_batch, last_processed, last_failed;
    char job_id[BD__API_JOB_ID_MAX + 1];
};

static void api_sse_maybe_free(struct api_read_sse *st)
{
    if (!st->is_finished || st->pending_closes > 0 || st->is_query_in_flight)
        return;
    bd_buf_free(&st->out);
    free(st);
}

static void api_sse_on_timer_closed(uv_handle_t *h)
{
    struct api_read_sse *st = h->data;

    st->pending_closes--;
    api_sse_maybe_free(st);
}

/* Write "event: <event>\ndata: <doc>\n\n" (doc stolen). BD_OK, or < 0 when the client is
 * gone or memory ran out. */
static int api_sse_emit(struct api_read_sse *st, const char *event, json_t *doc)
{
    char *data = doc ? json_dumps(doc, API_READ_JSON_FLAGS) : NULL;

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

/* End the request exactly once; err as for api_ndjson_finish (BD_ENOTFOUND after the start
 * becomes an "error" event). */
static void api_sse_finish(struct api_read_sse *st, int err)
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
        if (err == BD_ENOTFOUND)
            api_read_not_found(req);
        else
            bd_http_respond_err(req, err < 0 ? err : BD_EINTERNAL, NULL, NULL);
    } else {
        if (err == BD_ENOTFOUND && !st->is_aborted)
            api_sse_emit(st, "error", json_pack("{s:{s:s,s:s}}", "error", "code", "not_found",
                                            "message", "job no longer exists"));
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

static void api_sse_on_row(int status, PGresult *res, void *arg);

/* Read the job now, or right after the query already in flight. */
static void api_sse_query(struct api_read_sse *st)
{
    const char *values[1] = { st->job_id };
    int err;

    if (st->is_finished)
        return;
    if (st->is_query_in_flight) {
        st->is_dirty = true;
        return;
    }
    st->is_dirty = false;
    err = st->srv->pg ? bd_pg_query(st->srv->pg, api_read_sql_status, 1, values, NULL, NULL, 0,
                                    api_sse_on_row, st)
                      : BD_EPG;
    if (err < 0) {
        bd_log(BD_LOG_WARN, "api", "job=%s event=pg_failed route=events err=%s", st->job_id,
               bd_err_name(err));
        if (!st->is_started)
            api_sse_finish(st, BD_EPG);
        return;                        /* started: the next poll tries again */
    }
    st->is_query_in_flight = true;
}

static void api_sse_on_poll(uv_timer_t *t)
{
    struct api_read_sse *st = t->data;

    /* Shutdown waits for open streams; end ours so it does not wait for the job. EventSource
     * clients reconnect by themselves. */
    if (st->srv->is_stopping)
        api_sse_finish(st, BD_OK);
    else
        api_sse_query(st);
}

static void api_sse_on_beat(uv_timer_t *t)
{
    struct api_read_sse *st = t->data;
    static const char beat[] = ": keepalive\n\n";

    if (bd_http_stream_write(st->req, beat, sizeof(beat) - 1) < 0) {
        st->is_aborted = true;
        api_sse_finish(st, BD_OK);
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
    struct api_read_sse *st = arg;

    (void)req;
    st->is_aborted = true;
    if (st->is_started)                /* before that, the first query's callback answers */
        api_sse_finish(st, BD_OK);
}

/* First row: start the stream, the timers and the listener. False when finished. */
static bool api_sse_start(struct api_read_sse *st)
{
    const struct bd_config *cfg = st->srv->cfg;
    double interval_s = cfg ? cfg->progress_update_interval_s : 1.0;
    uint64_t poll_ms = (uint64_t)(interval_s * 1000.0);

    if (poll_ms < API_READ_SSE_POLL_MIN_MS)
        poll_ms = API_READ_SSE_POLL_MIN_MS;
    if (poll_ms > API_READ_SSE_POLL_MAX_MS)
        poll_ms = API_READ_SSE_POLL_MAX_MS;
    st->is_started = true;
    if (bd_http_stream_begin(st->req, 200, "text/event-stream",
                             "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n") < 0) {
        st->is_aborted = true;
        api_sse_finish(st, BD_OK);
        return false;
    }
    uv_timer_init(st->srv->loop, &st->poll_timer);
    uv_timer_init(st->srv->loop, &st->beat_timer);
    st->poll_timer.data = st->beat_timer.data = st;
    st->has_timers = true;
    uv_timer_start(&st->poll_timer, api_sse_on_poll, poll_ms, poll_ms);
    uv_timer_start(&st->beat_timer, api_sse_on_beat, API_READ_SSE_BEAT_MS, API_READ_SSE_BEAT_MS);
    if (st->srv->jobs != NULL) {
        st->listener.job_id = st->job_id;
        st->listener.cb = api_sse_on_progress;
        st->listener.arg = st;
        bd_job_engine_listen(st->srv->jobs, &st->listener);
        st->is_listening = true;
    }
    return true;
}

static void api_sse_on_row(int status, PGresult *res, void *arg)
{
    struct api_read_sse *st = arg;
    const char *job_status;
    long long next_batch, processed, failed;
    bool is_terminal, is_changed;

    st->is_query_in_flight = false;
    if (st->is_finished) {
        api_sse_maybe_free(st);
        return;
    }
    if (status < 0) {
        const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
        bd_log(BD_LOG_WARN, "api", "job=%s event=pg_failed route=events err=%s pg=\"%s\"",
               st->job_id, bd_err_name(status), msg ? msg : "");
        if (!st->is_started)
            api_sse_finish(st, BD_EPG);
        return;                        /* started: transient; the next poll tries again */
    }
    if (PQntuples(res) == 0) {
        api_sse_finish(st, BD_ENOTFOUND);
        return;
    }
    if (!st->is_started && !api_sse_start(st))
        return;
    job_status = PQgetvalue(res, 0, JC_STATUS);
    next_batch = api_read_col_ll(res, 0, JC_NEXT_BATCH);
    processed = api_read_col_ll(res, 0, JC_PROCESSED);
    failed = api_read_col_ll(res, 0, JC_FAILED);
    is_terminal = api_read_is_terminal(job_status);
    is_changed = !st->has_snapshot || strcmp(st->last_status, job_status) != 0 ||
                 st->last_next_batch != next_batch || st->last_processed != processed ||
                 st->last_failed != failed;
    if (is_changed) {
        snprintf(st->last_status, sizeof(st->last_status), "%s", job_status);
        st->last_next_batch = next_batch;
        st->last_processed = processed;
        st->last_failed = failed;
        st->has_snapshot = true;
        if (api_sse_emit(st, is_terminal ? "final" : "progress",
                         bd__api_job_status_json(res, 0)) < 0) {
            st->is_aborted = true;
            api_sse_finish(st, BD_OK);
            return;
        }
    }
    if (is_terminal || st->is_head) {
        api_sse_finish(st, BD_OK);
        return;
    }
    if (st->is_dirty)
        api_sse_query(st);
}

static void api_read_on_events(struct bd_http_request *req, void *arg)
{
    struct api_read_call *call = api_read_begin(req, arg);
    struct api_read_sse *st;

    if (call == NULL)
        return;
    if ((st = calloc(1, sizeof(*st))) == NULL) {
        bd_http_respond_err(req, BD_ENOMEM, NULL, NULL);
        return;
    }
    st->req = req;
    st->srv = call->srv;
    st->is_head = strcmp(req->method, "HEAD") == 0;
    snprintf(st->job_id, sizeof(st->job_id), "%s", call->job_id);
    bd_buf_init(&st->out);
    bd_http_set_abort_cb(req, api_sse_on_abort, st);
    api_sse_query(st);
}

/* ---- /debug/job/{id} ---------------------------------------------------------------- */

static void api_read_on_debug_lease(int status, const redisReply *reply, void *arg)
{
    struct api_read_call *call = arg;
    json_t *lease = json_object_get(call->doc, "lease");
    bool is_failed = false;

    if (status < 0 || reply == NULL) {
        api_read_set(lease, "redis_error", json_string(bd_strerror(status < 0 ? status
                                                                              : BD_EREDIS)),
                     &is_failed);
    } else if (reply->type == REDIS_REPLY_NIL) {
        api_read_set(lease, "in_flight", json_false(), &is_failed);
    } else if (reply->type == REDIS_REPLY_STRING
#ifdef REDIS_REPLY_DOUBLE
               || reply->type == REDIS_REPLY_DOUBLE
#endif
    ) {
        double score = strtod(reply->str, NULL);
        api_read_set(lease, "in_flight", json_true(), &is_failed);
        api_read_set(lease, "deadline_ms", json_integer((json_int_t)score), &is_failed);
    }
    (void)is_failed;                   /* a missing lease detail is not worth a 500 */
    api_read_respond(call->req, 200, call->doc);
}

static void api_read_on_debug_row(int status, PGresult *res, void *arg)
{
    struct api_read_call *call = arg;
    struct bd_server *srv = call->srv;
    json_t *doc, *lease, *local = NULL;
    bool is_failed = false;
    long long batches_total;

    if (status < 0) {
        api_read_fail_pg(call->req, call->job_id, status, res);
        return;
    }
    if (PQntuples(res) == 0) {
        api_read_not_found(call->req);
        return;
    }
    batches_total = api_read_col_ll(res, 0, JD_BATCHES_COUNT);
    doc = json_object();
    lease = json_object();
    api_read_set(lease, "owner", api_read_col_str(res, 0, JD_LEASE_OWNER), &is_failed);
    api_read_set(lease, "in_flight", json_null(), &is_failed);
    api_read_set(lease, "deadline_ms", json_null(), &is_failed);
    if (srv->jobs != NULL)
        local = bd_job_engine_debug_json(srv->jobs, call->job_id);
    api_read_set(doc, "job", api_read_job_json(res, 0), &is_failed);
    api_read_set(doc, "batches", api_read_col_json(res, 0, JD_BATCHES, json_array), &is_failed);
    api_read_set(doc, "batches_total", json_integer(batches_total), &is_failed);
    api_read_set(doc, "batches_truncated", json_boolean(batches_total > API_READ_DEBUG_BATCHES),
                 &is_failed);
    api_read_set(doc, "lease", lease, &is_failed);
    api_read_set(doc, "local", local ? local : json_null(), &is_failed);
    if (is_failed) {
        json_decref(doc);
        api_read_respond(call->req, 200, NULL);
        return;
    }
    call->doc = doc;
    if (srv->rq != NULL && bd_rq_is_up(srv->rq)) {
        const char *argv[3] = { "ZSCORE", API_READ_RQ_INFLIGHT, call->job_id };
        size_t lens[3] = { 6, sizeof(API_READ_RQ_INFLIGHT) - 1, strlen(call->job_id) };
        if (bd_rq_command_argv(srv->rq, 3, argv, lens, api_read_on_debug_lease, call) == BD_OK)
            return;
    }
    api_read_set(lease, "redis_error", json_string(bd_strerror(BD_EREDIS)), &is_failed);
    api_read_respond(call->req, 200, doc);
}

static void api_read_on_debug(struct bd_http_request *req, void *arg)
{
    struct api_read_call *call = api_read_begin(req, arg);
    const char *values[1];

    if (call == NULL)
        return;
    values[0] = call->job_id;
    api_read_query(call, api_read_sql_debug, 1, values, api_read_on_debug_row);
}

/* ---- Registration ------------------------------------------------------------------- */

int bd__api_register_jobs_read(struct bd_router *r, struct bd_server *srv)
{
    if (srv->api_cache == NULL && (srv->api_cache = calloc(1, sizeof(*srv->api_cache))) == NULL)
        return BD_ENOMEM;
    static const struct {
        const char *pattern;
        bd_http_request_cb handler;
    } routes[] = {
        { BD_API_PREFIX "/jobs", api_read_on_list },
        { BD_API_PREFIX "/jobs/{id}", api_read_on_job },
        { BD_API_PREFIX "/jobs/{id}/status", api_read_on_status },
        { BD_API_PREFIX "/jobs/{id}/items", api_read_on_items },
        { BD_API_PREFIX "/jobs/{id}/results", api_read_on_results },
        { BD_API_PREFIX "/jobs/{id}/events", api_read_on_events },
        { BD_API_PREFIX "/debug/job/{id}", api_read_on_debug },
    };

    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
        int rc = bd_router_add(r, "GET", routes[i].pattern, routes[i].handler, srv);
        if (rc < 0)
            return rc;
    }
    return BD_OK;
}
