/* job_engine.c -- moves each job through its batches: load, execute, write, checkpoint.
 *
 * Owns struct bd_job from claim to release, and the engine's periodic work (claim poll,
 * lease renewal, expired-lease reaper, queue rebuild from PostgreSQL, retention sweep).
 * Loop thread only; never blocks. Reaches Redis, PostgreSQL and the models only through
 * redis_queue.h, pg_store.h and model_client.h; knows nothing of HTTP.
 *
 * A job is a state machine: job->phase names the operation in flight, job_step() starts
 * it, and its callback records the outcome and then moves the phase on (job_step again),
 * arms the retry timer, or finishes the job. Each operation in flight holds one reference.
 *
 * Exactly-once accounting: a batch's vectors, its item errors, its "done" mark and the
 * job's counters are written in one transaction that first locks the batch row and checks
 * it is still pending. A batch redone after a crash or a lost lease therefore never counts
 * twice, and vectors are upserted by (collection, id) so it adds no duplicate row.
 * SPDX-License-Identifier: MIT
 */
#include "batchd/job_engine.h"

#include "batchd/buf.h"
#include "batchd/config.h"
#include "batchd/error.h"
#include "batchd/log.h"
#include "batchd/metrics.h"
#include "batchd/model_client.h"
#include "batchd/pg_store.h"
#include "batchd/redis_queue.h"
#include "batchd/server.h"
#include "batchd/sha256.h"

#include <assert.h>
#include <stdarg.h>
#include <unistd.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define JOB_REBUILD_INTERVAL_S 60.0
#define JOB_WRITE_RETRY_MAX_S 5.0
#define JOB_RETRY_DELAY_MAX_S 300.0

enum job_phase {
    JOB_PHASE_START,          /* mark processing, read the job, ensure its collection */
    JOB_PHASE_LOAD_BATCH,     /* read the first pending batch */
    JOB_PHASE_CACHE,          /* bulk_embed: vectors of texts already embedded by the model */
    JOB_PHASE_EXECUTE,        /* model call (bulk_embed) or take given vectors (bulk_insert) */
    JOB_PHASE_WRITE,          /* one transaction: vectors, item errors, checkpoint */
    JOB_PHASE_FINISH,         /* terminal status in PostgreSQL */
    JOB_PHASE_RELEASE,        /* drop (or hand back) the Redis lease */
    JOB_PHASE_DONE,
};

static const char *const job_phase_names[] = { "start",  "load_batch", "cache",
                                               "execute", "write",     "finish",
                                               "release", "done" };

enum job_write_step { WRITE_ACQUIRE, WRITE_BEGIN, WRITE_COPY, WRITE_COMMIT };

/* One bulk_insert item inside a batch's packed payload: the id and metadata text and the
 * embedding as a ready binary-COPY real[] value (see api_jobs.c, api_pack_insert_batch). */
struct job_packed {
    const char *id, *meta, *arr;
    uint32_t id_len, meta_len, arr_len;
};

struct bd_job {
    struct bd_job_engine *e;
    struct bd_job *next, *prev;
    unsigned refs;
    enum job_phase phase;

    char id[129];
    enum bd_job_operation op;
    char model[129];
    char collection[64];
    unsigned dim;
    unsigned total_items, total_batches;
    unsigned max_retries;
    double timeout_s;
    double started_unix;       /* started_at as seconds since the epoch */
    int run_attempt;
    uint64_t claimed_ns;

    /* outcome flags, checked between batches */
    bool is_cancel_requested;
    bool is_lease_lost;
    bool is_fatal;
    bool is_timed_out;
    bool is_handing_back;     /* engine stopping or lease lost: give the job back */
    bool has_timer_armed;
    bool is_timer_closed;
    char final_state[16];     /* explicit terminal state, "" = decided by the counters */
    char error_code[48];
    char error_message[512];

    /* current batch */
    int batch_no;
    unsigned first_index;
    unsigned item_count;
    unsigned attempts;
    json_t *items;            /* bulk_embed: the batch's input items (JSON array) */
    struct bd_buf payload;    /* bulk_insert: the batch's packed items (job_batches.payload) */
    struct job_packed *packed; /* bulk_insert: per item, slices of payload */
    float *vectors;           /* item_count * dim, reused across batches */
    size_t vectors_cap;
    int *item_status;         /* per item: BD_OK or an error code */
    const char **item_error;  /* per item: message when failed (static or in error_buf) */
    size_t items_cap;
    char batch_error[512];    /* message shared by the items of a failed batch */
    bool is_batch_failed;     /* retries ran out: the last failed try is in attempts */
    const char *batch_error_code;
    uint64_t batch_start_ns;
    unsigned batch_ok, batch_failed, batch_cache_hits;
    struct bd_model_call *model_call;
    struct bd_embed_input *inputs;
    char *hashes;             /* item_count * 65: cache key (hex SHA-256) per item */
    unsigned char *is_cached; /* per item: vector came from the cache */
    unsigned *miss_index;     /* model input i is batch item miss_index[i] */
    unsigned miss_count;
    int32_t *ht;              /* hash -> first item index (-1 empty), 2^k slots */
    int32_t *ht_next;         /* next item with the same hash */
    size_t ht_cap;
    char cache_prefix[65];    /* SHA-256 state input: model, version, input limit */

    /* write transaction */
    struct bd_pg_conn *conn;
    enum job_write_step write_step;
    unsigned write_failures;
    struct bd_pg_copybuf copy; /* binary COPY payload, reused */
    struct bd_buf meta;       /* one item's metadata JSON, reused */
    struct bd_buf sql;        /* statement text, reused */

    uv_timer_t timer;         /* retry / backoff */

    /* totals this process contributed (for logs) */
    unsigned batches_run;
};

struct bd_job_engine {
    struct bd_server *srv;
    struct bd_pg *pg;         /* the engine's pool (asynchronous commit, see server.c) */
    uv_loop_t *loop;
    const struct bd_config *cfg;
    struct bd_job *jobs;
    unsigned active;
    struct bd_job_listener *listeners;

    uv_timer_t claim_timer;
    uv_timer_t renew_timer;
    uv_timer_t reap_timer;
    uv_timer_t sweep_timer;
    uv_timer_t rebuild_timer;
    uv_timer_t migrate_timer;
    uv_timer_t tput_timer;
    unsigned pending_closes;
    unsigned pending_ops;     /* engine-level store calls whose callback is still due */
    unsigned jobs_alive;      /* struct bd_job not yet freed (active or winding down) */
    double throughput;        /* items/s over recently finished jobs, all processes */

    bool is_ready;            /* migrations applied */
    bool is_started;
    bool is_claiming;
    bool is_rebuilding;
    bool is_renewing;
    bool is_stopping;
    bool has_closed_timers;
    bd_job_engine_stopped_cb stopped_cb;
    void *stopped_arg;

    struct bd_job_engine_stats stats;
};

static void job_step(struct bd_job *job);
static void job_finish(struct bd_job *job);
static void engine_pump(struct bd_job_engine *e);
static void engine_maybe_stopped(struct bd_job_engine *e);

/* Engine-level calls into Redis/PostgreSQL hold the engine until their callback ran, so
 * a stop never frees it under a pending callback (the stores close after the engine). */
static void engine_op_begin(struct bd_job_engine *e)
{
    e->pending_ops++;
}

/* Returns true when the caller may go on using e for more work (not stopping). */
static bool engine_op_end(struct bd_job_engine *e)
{
    e->pending_ops--;
    if (e->is_stopping) {
        engine_maybe_stopped(e);
        return false;
    }
    return true;
}

/* ---- small helpers ------------------------------------------------------------------- */

static double job_now_unix(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t job_ms(double s)
{
    return s <= 0 ? 0 : (uint64_t)(s * 1000.0 + 0.5);
}

static const char *job_pg_val(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? NULL : PQgetvalue(res, row, col);
}

static long job_pg_long(const PGresult *res, int row, int col, long dflt)
{
    const char *v = job_pg_val(res, row, col);
    return v ? strtol(v, NULL, 10) : dflt;
}

static double job_pg_double(const PGresult *res, int row, int col, double dflt)
{
    const char *v = job_pg_val(res, row, col);
    return v ? strtod(v, NULL) : dflt;
}

static void job_set_error(struct bd_job *job, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void job_set_error(struct bd_job *job, const char *code, const char *fmt, ...)
{
    va_list ap;
    snprintf(job->error_code, sizeof(job->error_code), "%s", code);
    va_start(ap, fmt);
    vsnprintf(job->error_message, sizeof(job->error_message), fmt, ap);
    va_end(ap);
}

static void job_ref(struct bd_job *job)
{
    job->refs++;
}

static void job_on_timer_closed(uv_handle_t *h)
{
    struct bd_job *job = h->data;
    struct bd_job_engine *e = job->e;

    json_decref(job->items);
    free(job->vectors);
    free(job->item_status);
    free(job->item_error);
    free(job->inputs);
    free(job->packed);
    bd_buf_free(&job->payload);
    free(job->hashes);
    free(job->is_cached);
    free(job->miss_index);
    free(job->ht);
    free(job->ht_next);
    bd_pg_copybuf_free(&job->copy);
    bd_buf_free(&job->meta);
    bd_buf_free(&job->sql);
    free(job);
    e->jobs_alive--;
    engine_maybe_stopped(e);
}

static void job_unref(struct bd_job *job)
{
    assert(job->refs > 0);
    if (--job->refs > 0)
        return;
    /* Last reference: the job has left the engine's list (JOB_PHASE_DONE). The timer is
     * embedded, so the memory goes only in its close callback. */
    assert(job->phase == JOB_PHASE_DONE);
    uv_close((uv_handle_t *)&job->timer, job_on_timer_closed);
}

static void job_notify(struct bd_job_engine *e, const char *job_id, bool is_final)
{
    struct bd_job_listener *l = e->listeners, *next;
    for (; l != NULL; l = next) {
        next = l->next;                 /* a listener may unregister itself */
        if (strcmp(l->job_id, job_id) == 0)
            l->cb(job_id, is_final, l->arg);
    }
}

/* Back-off for the batch's n-th retry: retry_delay * 2^(n-1), plus up to 50% jitter. */
static double job_backoff_s(const struct bd_job_engine *e, unsigned attempt)
{
    double d = e->cfg->retry_delay_s * pow(2.0, attempt > 0 ? attempt - 1 : 0);
    d *= 1.0 + 0.5 * ((double)rand() / (double)RAND_MAX);
    return d > JOB_RETRY_DELAY_MAX_S ? JOB_RETRY_DELAY_MAX_S : d;
}

static void job_on_timer(uv_timer_t *t)
{
    struct bd_job *job = t->data;
    job->has_timer_armed = false;
    job_step(job);
    job_unref(job);                     /* the reference the armed timer held */
}

static void job_arm_timer(struct bd_job *job, double seconds)
{
    job_ref(job);
    job->has_timer_armed = true;
    uv_timer_start(&job->timer, job_on_timer, job_ms(seconds), 0);
}

/* Stop an armed retry timer and run the step now (cancel or shutdown). */
static void job_fire_timer_now(struct bd_job *job)
{
    if (!job->has_timer_armed)
        return;
    uv_timer_stop(&job->timer);
    uv_timer_start(&job->timer, job_on_timer, 0, 0);
}

/* Between operations: should the job stop going through batches? */
static bool job_should_stop(struct bd_job *job)
{
    if (job->is_handing_back || job->is_lease_lost)
        return true;
    if (job->is_cancel_requested) {
        snprintf(job->final_state, sizeof(job->final_state), "cancelled");
        return true;
    }
    if (job->is_fatal)
        return true;
    if (job->timeout_s > 0 && job->started_unix > 0 &&
        job_now_unix() > job->started_unix + job->timeout_s) {
        job->is_timed_out = true;
        snprintf(job->final_state, sizeof(job->final_state), "failed");
        job_set_error(job, "timeout", "job exceeded its timeout of %.0f s", job->timeout_s);
        return true;
    }
    return false;
}

/* Go to FINISH (terminal state) or RELEASE (hand back), from between operations. */
static void job_wind_down(struct bd_job *job)
{
    if (job->is_handing_back || job->is_lease_lost)
        job->phase = JOB_PHASE_RELEASE;
    else
        job->phase = JOB_PHASE_FINISH;
    job_step(job);
}

/* ---- START: mark processing and read the job ------------------------------------------ */

static void job_on_started(int status, PGresult *res, void *arg)
{
    struct bd_job *job = arg;
    struct bd_job_engine *e = job->e;

    if (status < 0) {
        /* Could not even read the job: give it back, another try will pick it up. */
        bd_log(BD_LOG_WARN, "job", "job=%s event=start_failed err=%s", job->id,
               res ? PQresultErrorMessage(res) : "connection lost");
        /* Hand it back after a pause, so a store that keeps failing is not hammered by
         * an immediate claim-fail-release loop. */
        job->is_handing_back = true;
        job->phase = JOB_PHASE_RELEASE;
        job_arm_timer(job, 1.0);
    } else if (PQntuples(res) == 0) {
        /* Terminal or deleted: the queue entry was stale. Drop it without finishing. */
        bd_log(BD_LOG_DEBUG, "job", "job=%s event=stale_claim", job->id);
        job->phase = JOB_PHASE_RELEASE;
        job_step(job);
    } else {
        const char *op = job_pg_val(res, 0, 0), *model = job_pg_val(res, 0, 1);
        (void)bd_job_operation_parse(op, &job->op);
        snprintf(job->model, sizeof(job->model), "%s", model ? model : "");
        snprintf(job->collection, sizeof(job->collection), "%s", job_pg_val(res, 0, 2));
        job->total_items = (unsigned)job_pg_long(res, 0, 3, 0);
        job->total_batches = (unsigned)job_pg_long(res, 0, 4, 0);
        job->timeout_s = job_pg_double(res, 0, 5, e->cfg->job_timeout_s);
        job->max_retries = (unsigned)job_pg_long(res, 0, 6, (long)e->cfg->retry_attempts);
        job->is_cancel_requested = strcmp(job_pg_val(res, 0, 7), "t") == 0;
        job->started_unix = job_pg_double(res, 0, 8, job_now_unix());
        job->run_attempt = (int)job_pg_long(res, 0, 9, 1);
        job->dim = (unsigned)job_pg_long(res, 0, 10, 0);
        if (PQgetisnull(res, 0, 11)) {
            /* The collection appeared concurrently (see job_start_query): start again. */
            bd_log(BD_LOG_DEBUG, "job", "job=%s event=collection_raced", job->id);
            job_arm_timer(job, 0.02);
            job_unref(job);
            return;
        }
        if (job->op == BD_OP_BULK_EMBED) {
            const struct bd_model_config *mc = bd_config_get_model(e->cfg, job->model);
            if (mc == NULL) {
                job->is_fatal = true;
                snprintf(job->final_state, sizeof(job->final_state), "failed");
                job_set_error(job, "unknown_model", "model '%s' is not configured",
                              job->model);
            } else {
                job->dim = mc->dimensions;
            }
        }
        long have = job_pg_long(res, 0, 11, 0);
        if (!job->is_fatal && have != (long)job->dim) {
            job->is_fatal = true;
            snprintf(job->final_state, sizeof(job->final_state), "failed");
            job_set_error(job, "dimension_mismatch",
                          "collection '%s' holds %ld-dimensional vectors, job has %u",
                          job->collection, have, job->dim);
        }
        bd_log(BD_LOG_INFO, "job", "job=%s event=claimed operation=%s items=%u batches=%u",
               job->id, bd_job_operation_name(job->op), job->total_items, job->total_batches);
        if (job_should_stop(job)) {
            job_wind_down(job);
        } else {
            job->phase = JOB_PHASE_LOAD_BATCH;
            job_step(job);
        }
    }
    job_unref(job);
}

/* One round trip: mark the job processing and make sure its output collection exists
 * with the job's dimension (stored in options at submit). An existing collection is only
 * read, never rewritten (jobs starting on one collection do not queue on its row). When
 * another transaction created it after this statement's snapshot, neither branch sees
 * it and the dimension comes back NULL: job_on_started simply runs the start again. */
static int job_start_query(struct bd_job *job)
{
    const char *params[2] = { job->id, job->e->cfg->worker_id };
    return bd_pg_query(job->e->pg,
                       "WITH j AS (UPDATE jobs SET status = 'processing', "
                       "started_at = COALESCE(started_at, now()), lease_owner = $2, "
                       "updated_at = now() WHERE id = $1 AND status IN ('queued','processing') "
                       "RETURNING operation, model, collection, total_items, total_batches, "
                       "timeout_s, max_retries, cancel_requested, "
                       "extract(epoch FROM started_at) AS started, run_attempt, "
                       "COALESCE((options->>'dimension')::int, 0) AS dim), "
                       "c AS (INSERT INTO collections (name, dimension) SELECT collection, dim "
                       "FROM j WHERE NOT EXISTS (SELECT 1 FROM collections x "
                       "WHERE x.name = j.collection) ON CONFLICT (name) DO NOTHING "
                       "RETURNING dimension) "
                       "SELECT j.*, COALESCE((SELECT dimension FROM c), (SELECT dimension "
                       "FROM collections x WHERE x.name = j.collection)) FROM j",
                       2, params, NULL, NULL, 0, job_on_started, job);
}

/* ---- LOAD_BATCH ---------------------------------------------------------------------- */

static int job_reserve_batch(struct bd_job *job, unsigned n)
{
    /* bulk_insert vectors stay in their packed form: no float buffer needed. */
    size_t need = job->op == BD_OP_BULK_EMBED ? (size_t)n * job->dim : 0;
    if (need > job->vectors_cap) {
        float *v = realloc(job->vectors, need * sizeof(float));
        if (v == NULL)
            return BD_ENOMEM;
        job->vectors = v;
        job->vectors_cap = need;
    }
    if (n > job->items_cap) {
        int *st = realloc(job->item_status, n * sizeof(int));
        if (st == NULL)
            return BD_ENOMEM;
        job->item_status = st;
        const char **er = realloc(job->item_error, n * sizeof(char *));
        if (er == NULL)
            return BD_ENOMEM;
        job->item_error = er;
        struct bd_embed_input *in = realloc(job->inputs, n * sizeof(*in));
        if (in == NULL)
            return BD_ENOMEM;
        job->inputs = in;
        char *h = realloc(job->hashes, (size_t)n * 65);
        if (h == NULL)
            return BD_ENOMEM;
        job->hashes = h;
        unsigned char *c = realloc(job->is_cached, n);
        if (c == NULL)
            return BD_ENOMEM;
        job->is_cached = c;
        unsigned *mi = realloc(job->miss_index, n * sizeof(unsigned));
        if (mi == NULL)
            return BD_ENOMEM;
        job->miss_index = mi;
        int32_t *nx = realloc(job->ht_next, n * sizeof(int32_t));
        if (nx == NULL)
            return BD_ENOMEM;
        job->ht_next = nx;
        struct job_packed *pk = realloc(job->packed, n * sizeof(*pk));
        if (pk == NULL)
            return BD_ENOMEM;
        job->packed = pk;
        job->items_cap = n;
    }
    return BD_OK;
}

static uint32_t job_be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* An int4 column of a binary-format result. */
static int job_pg_int4(const PGresult *res, int row, int col)
{
    if (PQgetisnull(res, row, col) || PQgetlength(res, row, col) != 4)
        return 0;
    return (int)job_be32((const unsigned char *)PQgetvalue(res, row, col));
}

/* Copy the batch's packed payload (the result dies with the callback) and slice it into
 * items. Returns NULL, or why the payload cannot be read. */
static const char *job_unpack_batch(struct bd_job *job, const PGresult *res)
{
    struct bd_buf *b = &job->payload;

    if (PQgetisnull(res, 0, 5))
        return "it has no packed payload";
    bd_buf_reset(b);
    bd_buf_append(b, PQgetvalue(res, 0, 5), (size_t)PQgetlength(res, 0, 5));
    if (b->is_failed)
        return "out of memory";
    const unsigned char *p = (const unsigned char *)b->data, *end = p + b->len;
    for (unsigned i = 0; i < job->item_count; i++) {
        const char *field[3];
        uint32_t len[3];
        for (int f = 0; f < 3; f++) {
            if (end - p < 4 || (len[f] = job_be32(p)) > (uint32_t)(end - p - 4))
                return "the packed payload is truncated";
            field[f] = (const char *)p + 4;
            p += 4 + len[f];
        }
        job->packed[i] = (struct job_packed){ field[0], field[1], field[2],
                                              len[0], len[1], len[2] };
    }
    return p == end ? NULL : "the packed payload has trailing bytes";
}

static void job_on_batch_loaded(int status, PGresult *res, void *arg)
{
    struct bd_job *job = arg;

    if (status < 0) {
        job->write_failures++;
        bd_log(BD_LOG_WARN, "job", "job=%s event=load_failed err=%s", job->id,
               res ? PQresultErrorMessage(res) : "connection lost");
        job_arm_timer(job, fmin(0.1 * job->write_failures, JOB_WRITE_RETRY_MAX_S));
        job_unref(job);
        return;
    }
    job->write_failures = 0;
    if (PQntuples(res) == 0) {                /* no pending batch left */
        job->phase = JOB_PHASE_FINISH;
        job_step(job);
        job_unref(job);
        return;
    }
    const char *why = NULL;
    json_decref(job->items);
    job->items = NULL;
    job->batch_no = job_pg_int4(res, 0, 0);
    job->first_index = (unsigned)job_pg_int4(res, 0, 1);
    job->item_count = (unsigned)job_pg_int4(res, 0, 2);
    job->attempts = (unsigned)job_pg_int4(res, 0, 4);
    job->batch_start_ns = uv_hrtime();
    job->batch_cache_hits = 0;
    job->batch_error[0] = '\0';
    job->batch_error_code = NULL;
    job->is_batch_failed = false;
    if (job_reserve_batch(job, job->item_count) != BD_OK) {
        why = "out of memory";
    } else if (job->op == BD_OP_BULK_INSERT) {
        why = job_unpack_batch(job, res);
    } else {
        json_error_t jerr;
        job->items = PQgetisnull(res, 0, 3)
                         ? NULL
                         : json_loadb(PQgetvalue(res, 0, 3), (size_t)PQgetlength(res, 0, 3), 0,
                                      &jerr);
        if (job->items == NULL || !json_is_array(job->items) ||
            json_array_size(job->items) != job->item_count)
            why = "its items are not a JSON array of the right length";
    }
    if (why) {
        job->is_fatal = true;
        snprintf(job->final_state, sizeof(job->final_state), "failed");
        job_set_error(job, "corrupt_batch", "batch %d of the job cannot be read: %s",
                      job->batch_no, why);
        job_wind_down(job);
    } else {
        job->phase = job->op == BD_OP_BULK_EMBED ? JOB_PHASE_CACHE : JOB_PHASE_EXECUTE;
        job_step(job);
    }
    job_unref(job);
}

static int job_load_query(struct bd_job *job)
{
    const char *params[1] = { job->id };
    return bd_pg_query(job->e->pg,
                       "SELECT batch_no, first_index, item_count, items, attempts, payload "
                       "FROM job_batches WHERE job_id = $1 AND status = 'pending' "
                       "ORDER BY batch_no LIMIT 1",
                       1, params, NULL, NULL, 1, job_on_batch_loaded, job);
}

/* ---- CACHE: texts this model already embedded (any job, any process) ------------------ */

static uint32_t job_hex_hash(const char *hex)
{
    uint32_t h = 0;
    for (int i = 0; i < 8; i++)
        h = (h << 4) | (uint32_t)(hex[i] <= '9' ? hex[i] - '0' : hex[i] - 'a' + 10);
    return h;
}

/* Keys: SHA-256 of (model, version, max_input_chars, text). Builds the hash -> items table
 * used to scatter cached rows back (a text may appear several times in one batch). */
static int job_cache_prepare(struct bd_job *job)
{
    const struct bd_model_config *mc = bd_config_get_model(job->e->cfg, job->model);
    size_t cap = 16;

    while (cap < (size_t)job->item_count * 2)
        cap <<= 1;
    if (cap > job->ht_cap) {
        int32_t *ht = realloc(job->ht, cap * sizeof(int32_t));
        if (ht == NULL)
            return BD_ENOMEM;
        job->ht = ht;
        job->ht_cap = cap;
    }
    memset(job->ht, 0xff, job->ht_cap * sizeof(int32_t));
    for (unsigned i = 0; i < job->item_count; i++) {
        json_t *t = json_object_get(json_array_get(job->items, i), "text");
        struct bd_sha256 sh;
        unsigned char d[32];
        char *hex = job->hashes + (size_t)i * 65;
        static const char digits[] = "0123456789abcdef";

        bd_sha256_init(&sh);
        bd_sha256_update(&sh, job->model, strlen(job->model) + 1);
        if (mc) {
            char lim[24];
            const char *ver = mc->version ? mc->version : "";
            bd_sha256_update(&sh, ver, strlen(ver) + 1);
            snprintf(lim, sizeof(lim), "%u", mc->max_input_chars);
            bd_sha256_update(&sh, lim, strlen(lim) + 1);
        }
        bd_sha256_update(&sh, json_string_value(t) ? json_string_value(t) : "",
                         json_string_length(t));
        bd_sha256_final(&sh, d);
        for (int k = 0; k < 32; k++) {
            hex[2 * k] = digits[d[k] >> 4];
            hex[2 * k + 1] = digits[d[k] & 15];
        }
        hex[64] = '\0';
        job->is_cached[i] = 0;
        size_t slot = job_hex_hash(hex) & (job->ht_cap - 1);
        while (job->ht[slot] >= 0 && strcmp(job->hashes + (size_t)job->ht[slot] * 65, hex) != 0)
            slot = (slot + 1) & (job->ht_cap - 1);
        job->ht_next[i] = job->ht[slot];      /* chain items with the same text */
        job->ht[slot] = (int32_t)i;
    }
    return BD_OK;
}

/* real[] in binary: ndim, flags, elemtype, (dim, lbound) per dimension, then (len, value)
 * per element, all big-endian. Returns 0 when it is a 1-D array of exactly dim floats. */
static int job_decode_float4_array(const unsigned char *p, int len, unsigned dim, float *out)
{
    uint32_t v[5];
    if (len < 20)
        return -1;
    for (int i = 0; i < 5; i++)
        v[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    if (v[0] != 1 || v[1] != 0 || v[2] != 700 || v[3] != dim ||
        (size_t)len != 20 + 8 * (size_t)dim)
        return -1;
    p += 20;
    for (unsigned i = 0; i < dim; i++, p += 8) {
        uint32_t bits = (uint32_t)p[4] << 24 | (uint32_t)p[5] << 16 | (uint32_t)p[6] << 8 | p[7];
        memcpy(&out[i], &bits, 4);
    }
    return 0;
}

static void job_on_cache_rows(int status, PGresult *res, void *arg)
{
    struct bd_job *job = arg;

    /* A cache that cannot be read is only a lost saving: embed everything. */
    if (status < 0)
        bd_log(BD_LOG_WARN, "job", "job=%s batch=%d event=cache_lookup_failed err=%s",
               job->id, job->batch_no, res ? PQresultErrorMessage(res) : "connection lost");
    int rows = status < 0 ? 0 : PQntuples(res);
    for (int r = 0; r < rows; r++) {
        const char *hex = PQgetvalue(res, r, 0);
        if (PQgetlength(res, r, 0) != 64)
            continue;
        size_t slot = job_hex_hash(hex) & (job->ht_cap - 1);
        while (job->ht[slot] >= 0 &&
               memcmp(job->hashes + (size_t)job->ht[slot] * 65, hex, 64) != 0)
            slot = (slot + 1) & (job->ht_cap - 1);
        for (int32_t i = job->ht[slot]; i >= 0; i = job->ht_next[i]) {
            float *row = job->vectors + (size_t)i * job->dim;
            if (job_decode_float4_array((const unsigned char *)PQgetvalue(res, r, 1),
                                        PQgetlength(res, r, 1), job->dim, row) == 0)
                job->is_cached[i] = 1;
        }
    }
    job->miss_count = 0;
    job->batch_cache_hits = 0;
    for (unsigned i = 0; i < job->item_count; i++) {
        if (job->is_cached[i])
            job->batch_cache_hits++;
        else
            job->miss_index[job->miss_count++] = i;
    }
    job->e->stats.cache_hits += job->batch_cache_hits;
    job->e->stats.cache_misses += job->miss_count;
    job->phase = JOB_PHASE_EXECUTE;
    job_step(job);
    job_unref(job);
}

static int job_cache_query(struct bd_job *job)
{
    struct bd_buf *q = &job->sql;
    int rc = job_cache_prepare(job);
    if (rc < 0)
        return rc;
    /* The keys are hex digests, so the array literal needs no quoting. */
    bd_buf_reset(q);
    bd_buf_puts(q, "{");
    for (unsigned i = 0; i < job->item_count; i++) {
        if (i)
            bd_buf_puts(q, ",");
        bd_buf_append(q, job->hashes + (size_t)i * 65, 64);
    }
    bd_buf_puts(q, "}");
    if (q->is_failed)
        return BD_ENOMEM;
    const char *params[1] = { q->data };
    return bd_pg_query(job->e->pg,
                       "SELECT text_hash, embedding FROM embedding_cache "
                       "WHERE text_hash = ANY($1::text[])",
                       1, params, NULL, NULL, 1, job_on_cache_rows, job);
}

/* ---- EXECUTE ------------------------------------------------------------------------- */

/* Every item of the batch fails with the batch's error (retries ran out, or not
 * retryable). The write phase still runs: it records the errors and the checkpoint. */
static void job_fail_batch(struct bd_job *job, const char *code, const char *message)
{
    snprintf(job->batch_error, sizeof(job->batch_error), "%s", message);
    job->batch_error_code = code;
    job->is_batch_failed = true;
    job->batch_ok = job->batch_failed = 0;
    for (unsigned i = 0; i < job->item_count; i++) {
        /* Items served from the embedding cache still have their vector. */
        if (job->op == BD_OP_BULK_EMBED && job->is_cached[i]) {
            job->item_status[i] = BD_OK;
            job->batch_ok++;
            continue;
        }
        job->item_status[i] = BD_EMODEL;
        job->item_error[i] = job->batch_error;
        job->batch_failed++;
    }
    job->e->stats.batches_failed++;
    job->phase = JOB_PHASE_WRITE;
    job->write_step = WRITE_ACQUIRE;
    job_step(job);
}

static void job_record_attempt(struct bd_job *job, const char *message);

/* Cached items are already in place; the model's rows (for the misses only, in order)
 * are scattered to their items. res is borrowed. */
static void job_take_model_vectors(struct bd_job *job, const struct bd_embed_result *res)
{
    job->batch_ok = job->batch_failed = 0;
    for (unsigned i = 0; i < job->item_count; i++) {
        if (job->is_cached[i]) {
            job->item_status[i] = BD_OK;
            job->batch_ok++;
        }
    }
    for (unsigned m = 0; res && m < job->miss_count; m++) {
        unsigned i = job->miss_index[m];
        job->item_status[i] = res->item_status[m];
        if (res->item_status[m] == BD_OK) {
            memcpy(job->vectors + (size_t)i * job->dim, res->vectors + (size_t)m * job->dim,
                   job->dim * sizeof(float));
            job->batch_ok++;
        } else {
            job->item_error[i] = "text is longer than the model's max_input_chars";
            job->batch_failed++;
        }
    }
}

static void job_on_model_done(int status, const struct bd_embed_result *res, const char *message,
                              bool is_retryable, void *arg)
{
    struct bd_job *job = arg;
    struct bd_job_engine *e = job->e;

    job->model_call = NULL;
    if (status == BD_ECANCELED || job->is_cancel_requested || job->is_handing_back ||
        job->is_lease_lost) {
        if (job->is_cancel_requested)
            snprintf(job->final_state, sizeof(job->final_state), "cancelled");
        job_wind_down(job);
    } else if (status < 0) {
        job->attempts++;
        job_record_attempt(job, message);
        bd_log(BD_LOG_WARN, "job", "job=%s batch=%d event=model_error err=%s attempt=%u/%u "
               "retryable=%d msg=\"%s\"", job->id, job->batch_no, bd_err_api_code(status),
               job->attempts, job->max_retries + 1, is_retryable, message ? message : "");
        if (is_retryable && job->attempts <= job->max_retries) {
            e->stats.batch_retries++;
            job_arm_timer(job, job_backoff_s(e, job->attempts));
        } else {
            char msg[512];
            snprintf(msg, sizeof(msg), "%s", message ? message : bd_strerror(status));
            job_fail_batch(job, bd_err_api_code(status), msg);
        }
    } else {
        job_take_model_vectors(job, res);
        job->phase = JOB_PHASE_WRITE;
        job->write_step = WRITE_ACQUIRE;
        job_step(job);
    }
    job_unref(job);
}

/* bulk_insert: the vectors came with the job, validated at submit and stored as binary
 * real[] values; an item whose stored dimension is not the collection's fails alone. */
static void job_take_given_vectors(struct bd_job *job)
{
    job->batch_ok = job->batch_failed = 0;
    for (unsigned i = 0; i < job->item_count; i++) {
        const struct job_packed *pk = &job->packed[i];
        if (pk->arr_len != 20 + 8 * (size_t)job->dim ||
            job_be32((const unsigned char *)pk->arr + 12) != job->dim) {
            job->item_status[i] = BD_EINVAL;
            job->item_error[i] = "embedding has the wrong dimension";
            job->batch_failed++;
            continue;
        }
        job->item_status[i] = BD_OK;
        job->batch_ok++;
    }
}

static int job_execute(struct bd_job *job)
{
    if (job->op == BD_OP_BULK_INSERT) {
        job_take_given_vectors(job);
        job->phase = JOB_PHASE_WRITE;
        job->write_step = WRITE_ACQUIRE;
        /* Continue on the next turn: the write's callback chain holds its own refs. */
        job_arm_timer(job, 0);
        return BD_OK;
    }
    if (job->miss_count == 0) {             /* every text came from the cache */
        job_take_model_vectors(job, NULL);
        job->phase = JOB_PHASE_WRITE;
        job->write_step = WRITE_ACQUIRE;
        job_arm_timer(job, 0);
        job_unref(job);                      /* job_step's reference: no call in flight */
        return BD_OK;
    }
    for (unsigned m = 0; m < job->miss_count; m++) {
        json_t *t = json_object_get(json_array_get(job->items, job->miss_index[m]), "text");
        job->inputs[m].text = json_string_value(t) ? json_string_value(t) : "";
        job->inputs[m].len = json_string_length(t);
    }
    return bd_model_embed(job->e->srv->models, job->model, job->inputs, job->miss_count,
                          job_on_model_done, job, &job->model_call);
}

static void job_on_attempt_recorded(int status, PGresult *res, void *arg)
{
    (void)status;
    (void)res;
    job_unref(arg);
}

/* Make attempts and the last error visible in /debug while the batch is retried. */
static void job_record_attempt(struct bd_job *job, const char *message)
{
    char batch[16], attempts[16];
    snprintf(batch, sizeof(batch), "%d", job->batch_no);
    snprintf(attempts, sizeof(attempts), "%u", job->attempts);
    const char *params[4] = { job->id, batch, attempts, message ? message : "" };
    job_ref(job);
    if (bd_pg_query(job->e->pg,
                    "UPDATE job_batches SET attempts = $3::int, last_error = $4, "
                    "updated_at = now() WHERE job_id = $1 AND batch_no = $2::int",
                    4, params, NULL, NULL, 0, job_on_attempt_recorded, job) < 0)
        job_unref(job);
}

/* ---- WRITE: stage rows by binary COPY, then upsert + checkpoint in one transaction ---- */

/* The metadata stored with each vector: the item's metadata, plus "text" for bulk_embed.
 * Written into the job's reusable buffer (no allocation per item once it has grown). */
static void job_build_metadata(struct bd_job *job, struct bd_buf *b, json_t *item)
{
    json_t *meta = json_object_get(item, "metadata");
    bool has_meta = json_is_object(meta) && json_object_size(meta) > 0;

    bd_buf_reset(b);
    if (job->op == BD_OP_BULK_EMBED) {
        json_t *t = json_object_get(item, "text");
        bd_buf_puts(b, "{\"text\":");
        bd_buf_json_string(b, json_string_value(t) ? json_string_value(t) : "",
                           json_string_length(t));
        if (!has_meta) {
            bd_buf_puts(b, "}");
            return;
        }
        bd_buf_puts(b, ",");                    /* the item's members follow "text" */
    } else if (!has_meta) {
        bd_buf_puts(b, "{}");
        return;
    }
    size_t need = json_dumpb(meta, NULL, 0, JSON_COMPACT);
    if (bd_buf_reserve(b, need) != BD_OK)
        return;
    json_dumpb(meta, b->data + b->len, need, JSON_COMPACT);
    if (job->op == BD_OP_BULK_EMBED) {
        /* Drop the item object's own '{': its members continue ours. */
        memmove(b->data + b->len, b->data + b->len + 1, need - 1);
        b->len += need - 1;
    } else {
        b->len += need;
    }
    b->data[b->len] = '\0';
}

/* Stage rows: (item_index int4, id text, embedding float4[], metadata jsonb,
 * err_code text, err_msg text); failed items have a NULL embedding. */
static int job_build_copy(struct bd_job *job)
{
    struct bd_pg_copybuf *b = &job->copy;
    char genid[160];

    bd_pg_copybuf_reset(b);
    bd_pg_copybuf_begin(b);
    for (unsigned i = 0; i < job->item_count; i++) {
        const struct job_packed *pk = job->op == BD_OP_BULK_INSERT ? &job->packed[i] : NULL;
        json_t *item = pk ? NULL : json_array_get(job->items, i);
        const char *id = pk ? pk->id : json_string_value(json_object_get(item, "id"));
        size_t id_len = pk ? pk->id_len : json_string_length(json_object_get(item, "id"));
        unsigned index = job->first_index + i;
        if (id == NULL) {
            snprintf(genid, sizeof(genid), "%s:%u", job->id, index);
            id = genid;
            id_len = strlen(genid);
        }
        bd_pg_copybuf_row(b, 7);
        bd_pg_copybuf_int4(b, (int32_t)index);
        bd_pg_copybuf_text(b, id, id_len);
        if (job->item_status[i] == BD_OK && pk) {
            bd_pg_copybuf_bytes(b, pk->arr, pk->arr_len);  /* already a binary real[] */
            bd_pg_copybuf_jsonb(b, pk->meta, pk->meta_len);
            bd_pg_copybuf_null(b);
            bd_pg_copybuf_null(b);
            bd_pg_copybuf_null(b);
        } else if (job->item_status[i] == BD_OK) {
            job_build_metadata(job, &job->meta, item);
            bd_pg_copybuf_float4_array(b, job->vectors + (size_t)i * job->dim, job->dim);
            bd_pg_copybuf_jsonb(b, job->meta.data, job->meta.len);
            bd_pg_copybuf_null(b);
            bd_pg_copybuf_null(b);
            /* Only vectors the model just computed go into the cache. */
            if (job->op == BD_OP_BULK_EMBED && !job->is_cached[i])
                bd_pg_copybuf_text(b, job->hashes + (size_t)i * 65, 64);
            else
                bd_pg_copybuf_null(b);
        } else {
            const char *code = "processing_error";
            if (job->item_status[i] == BD_EINVAL)
                code = job->op == BD_OP_BULK_EMBED ? "input_too_long" : "invalid_input";
            else if (job->batch_error_code)
                code = job->batch_error_code;
            bd_pg_copybuf_null(b);
            bd_pg_copybuf_null(b);
            bd_pg_copybuf_text(b, code, strlen(code));
            bd_pg_copybuf_text(b, job->item_error[i], strlen(job->item_error[i]));
            bd_pg_copybuf_null(b);
        }
    }
    return job->meta.is_failed ? BD_ENOMEM : bd_pg_copybuf_end(b);
}

static void job_write_step(struct bd_job *job);

static void job_write_failed(struct bd_job *job, const char *what, PGresult *res)
{
    job->write_failures++;
    bd_log(BD_LOG_WARN, "job", "job=%s batch=%d event=write_failed step=%s attempt=%u err=%s",
           job->id, job->batch_no, what, job->write_failures,
           res ? PQresultErrorMessage(res) : "connection lost");
    if (job->conn) {
        bd_pg_release(job->conn);               /* rolls the transaction back */
        job->conn = NULL;
    }
    job->write_step = WRITE_ACQUIRE;
    if (job_should_stop(job)) {
        job_wind_down(job);                     /* the batch is redone by the next owner */
        return;
    }
    /* A store error is not the batch's fault: retry the write (the vectors are kept)
     * until PostgreSQL is back, unless the job is being stopped. */
    job_arm_timer(job, fmin(0.1 * (1u << (job->write_failures > 6 ? 6 : job->write_failures)),
                            JOB_WRITE_RETRY_MAX_S));
}

static void job_on_committed(int status, PGresult *res, void *arg)
{
    struct bd_job *job = arg;
    struct bd_job_engine *e = job->e;

    if (status < 0) {
        job_write_failed(job, "commit", res);
        job_unref(job);
        return;
    }
    bd_pg_release(job->conn);
    job->conn = NULL;
    job->write_failures = 0;
    job->batches_run++;
    e->stats.batches_done++;
    bd_metrics_batch_done(e->srv->metrics, job->op, bd_metrics_model_slot(e->cfg, job->model),
                          (double)(uv_hrtime() - job->batch_start_ns) / 1e9, job->batch_ok,
                          job->batch_failed, job->batch_cache_hits);
    bd_log(BD_LOG_DEBUG, "job", "job=%s batch=%d event=checkpoint ok=%u failed=%u ms=%.1f",
           job->id, job->batch_no, job->batch_ok, job->batch_failed,
           (double)(uv_hrtime() - job->batch_start_ns) / 1e6);
    job_notify(e, job->id, false);
    if (job_should_stop(job)) {
        job_wind_down(job);
    } else {
        job->phase = JOB_PHASE_LOAD_BATCH;
        job_step(job);
    }
    job_unref(job);
}

static void job_on_copied(int status, PGresult *res, void *arg)
{
    struct bd_job *job = arg;
    if (status < 0) {
        job_write_failed(job, "copy", res);
    } else {
        job->write_step = WRITE_COMMIT;
        job_write_step(job);
    }
    job_unref(job);
}

static void job_on_begun(int status, PGresult *res, void *arg)
{
    struct bd_job *job = arg;

    if (status < 0) {
        job_write_failed(job, "begin", res);
    } else if (PQntuples(res) == 0 || strcmp(PQgetvalue(res, 0, 0), "pending") != 0) {
        /* Someone else checkpointed this batch (we lost the job for a while): do not
         * count it again. Roll back and look for the next pending batch. */
        bd_log(BD_LOG_INFO, "job", "job=%s batch=%d event=batch_already_done", job->id,
               job->batch_no);
        bd_pg_release(job->conn);
        job->conn = NULL;
        job->phase = JOB_PHASE_LOAD_BATCH;
        job_step(job);
    } else {
        job->write_step = WRITE_COPY;
        job_write_step(job);
    }
    job_unref(job);
}

static void job_on_conn(int status, struct bd_pg_conn *conn, void *arg)
{
    struct bd_job *job = arg;
    if (status < 0) {
        job_write_failed(job, "acquire", NULL);
    } else {
        job->conn = conn;
        job->write_step = WRITE_BEGIN;
        job_write_step(job);
    }
    job_unref(job);
}

/* The statements inline the job id and collection name: both are validated at submit
 * (^[A-Za-z0-9_-]+$ and ^[a-z_][a-z0-9_]*$), so they cannot break out of the quotes. */
static void job_write_step(struct bd_job *job)
{
    struct bd_buf *q = &job->sql;
    int rc;

    job_ref(job);
    switch (job->write_step) {
    case WRITE_ACQUIRE:
        rc = bd_pg_acquire(job->e->pg, job_on_conn, job);
        break;
    case WRITE_BEGIN:
        bd_buf_reset(q);
        bd_buf_printf(q,
                      "BEGIN; "
                      "CREATE TEMP TABLE IF NOT EXISTS bd_stage (item_index int, id text, "
                      "embedding real[], metadata jsonb, err_code text, err_msg text, "
                      "text_hash text) ON COMMIT DELETE ROWS; "
                      "SELECT status FROM job_batches WHERE job_id = '%s' AND batch_no = %d "
                      "FOR UPDATE",
                      job->id, job->batch_no);
        rc = bd_pg_conn_query(job->conn, q->data, 0, NULL, NULL, NULL, 0, job_on_begun, job);
        break;
    case WRITE_COPY:
        rc = job_build_copy(job);
        if (rc == BD_OK)
            rc = bd_pg_conn_copy_in(job->conn, "COPY bd_stage FROM STDIN WITH (FORMAT binary)",
                                    job->copy.data, job->copy.len, job_on_copied, job);
        break;
    case WRITE_COMMIT: {
        unsigned ms = (unsigned)((uv_hrtime() - job->batch_start_ns) / 1000000u);
        bd_buf_reset(q);
        bd_buf_printf(q,
                      "INSERT INTO vectors (collection, id, embedding, metadata, job_id, "
                      "item_index) SELECT '%s', id, embedding, metadata, '%s', item_index "
                      "FROM bd_stage WHERE embedding IS NOT NULL "
                      "ON CONFLICT (collection, id) DO UPDATE SET embedding = "
                      "EXCLUDED.embedding, metadata = EXCLUDED.metadata, job_id = "
                      "EXCLUDED.job_id, item_index = EXCLUDED.item_index, updated_at = now(); "
                      "INSERT INTO embedding_cache (text_hash, embedding) SELECT text_hash, "
                      "embedding FROM bd_stage WHERE text_hash IS NOT NULL "
                      "ON CONFLICT (text_hash) DO NOTHING; "
                      "DELETE FROM job_item_errors WHERE job_id = '%s' AND item_index >= %u "
                      "AND item_index < %u; "
                      "INSERT INTO job_item_errors (job_id, item_index, item_id, code, message, "
                      "run_attempt) SELECT '%s', item_index, id, err_code, err_msg, %d "
                      "FROM bd_stage WHERE embedding IS NULL; "
                      "UPDATE job_batches SET status = CASE WHEN %u = 0 AND %u > 0 "
                      "THEN 'failed' ELSE 'done' END, processed = %u, failed = %u, "
                      "attempts = %u, duration_ms = %u, updated_at = now() "
                      "WHERE job_id = '%s' AND batch_no = %d; "
                      "UPDATE jobs SET next_batch = next_batch + 1, "
                      "processed_items = processed_items + %u, "
                      "failed_items = failed_items + %u, stored_vectors = stored_vectors + %u, "
                      "cache_hits = cache_hits + %u, processing_ms = processing_ms + %u, "
                      "updated_at = now() WHERE id = '%s'; "
                      "COMMIT",
                      job->collection, job->id, job->id, job->first_index,
                      job->first_index + job->item_count, job->id, job->run_attempt,
                      job->batch_ok, job->batch_failed, job->batch_ok, job->batch_failed,
                      job->attempts + (job->is_batch_failed ? 0 : 1), ms, job->id,
                      job->batch_no, job->batch_ok, job->batch_failed, job->batch_ok,
                      job->batch_cache_hits, ms, job->id);
        rc = q->is_failed ? BD_ENOMEM
                          : bd_pg_conn_query(job->conn, q->data, 0, NULL, NULL, NULL, 0,
                                             job_on_committed, job);
        break;
    }
    default:
        assert(!"bad write step");
        rc = BD_EINTERNAL;
    }
    if (rc < 0) {                              /* callee promised not to call back */
        job_write_failed(job, "send", NULL);
        job_unref(job);
    }
}

/* ---- FINISH and RELEASE -------------------------------------------------------------- */

static void job_on_finished(int status, PGresult *res, void *arg)
{
    struct bd_job *job = arg;

    if (status < 0) {
        job->write_failures++;
        bd_log(BD_LOG_WARN, "job", "job=%s event=finish_failed err=%s", job->id,
               res ? PQresultErrorMessage(res) : "connection lost");
        if (job->is_handing_back) {
            job->phase = JOB_PHASE_RELEASE;     /* shutting down: the next owner finishes */
            job_step(job);
        } else {
            job_arm_timer(job, fmin(0.1 * job->write_failures, JOB_WRITE_RETRY_MAX_S));
        }
    } else {
        const char *st = PQntuples(res) ? PQgetvalue(res, 0, 0) : "(not processing)";
        bd_log(BD_LOG_INFO, "job", "job=%s event=finished status=%s processed=%s failed=%s "
               "batches_here=%u error=%s", job->id, st,
               PQntuples(res) ? PQgetvalue(res, 0, 1) : "-",
               PQntuples(res) ? PQgetvalue(res, 0, 2) : "-", job->batches_run,
               job->error_code[0] ? job->error_code : "-");
        bd_metrics_job_finished(job->e->srv->metrics, job->op,
                                bd_metrics_model_slot(job->e->cfg, job->model), st,
                                job_now_unix() - job->started_unix);
        job->phase = JOB_PHASE_RELEASE;
        job_step(job);
    }
    job_unref(job);
}

static int job_finish_query(struct bd_job *job)
{
    const char *params[4] = { job->id, job->final_state, job->error_code, job->error_message };
    /* With no explicit state the counters decide: every item failed -> failed,
     * otherwise completed (failed items are counted, SPEC "States"). */
    return bd_pg_query(job->e->pg,
                       "UPDATE jobs SET "
                       "status = CASE WHEN $2 <> '' THEN $2 "
                       "  WHEN processed_items = 0 AND failed_items > 0 THEN 'failed' "
                       "  ELSE 'completed' END, "
                       "error_code = CASE WHEN $3 <> '' THEN $3 "
                       "  WHEN $2 = '' AND processed_items = 0 AND failed_items > 0 "
                       "  THEN 'all_items_failed' ELSE NULL END, "
                       "error_message = CASE WHEN $4 <> '' THEN $4 "
                       "  WHEN $2 = '' AND processed_items = 0 AND failed_items > 0 "
                       "  THEN 'every item of the job failed' ELSE NULL END, "
                       "completed_at = now(), lease_owner = NULL, updated_at = now() "
                       "WHERE id = $1 AND status = 'processing' "
                       "RETURNING status, processed_items, failed_items",
                       4, params, NULL, NULL, 0, job_on_finished, job);
}

static void job_remove(struct bd_job *job)
{
    struct bd_job_engine *e = job->e;

    if (job->prev)
        job->prev->next = job->next;
    else
        e->jobs = job->next;
    if (job->next)
        job->next->prev = job->prev;
    job->next = job->prev = NULL;
    e->active--;
}

static void job_on_released(int status, long long value, void *arg)
{
    struct bd_job *job = arg;
    struct bd_job_engine *e = job->e;

    (void)value;
    if (status < 0)
        bd_log(BD_LOG_WARN, "job", "job=%s event=release_failed err=%s "
               "note=lease_expires_and_reaper_returns_it", job->id, bd_strerror(status));
    job->phase = JOB_PHASE_DONE;
    job_remove(job);
    job_notify(e, job->id, true);
    job_unref(job);                           /* this operation's reference */
    job_unref(job);                           /* the engine's reference */
    if (e->is_stopping)
        engine_maybe_stopped(e);
    else
        engine_pump(e);
}

static int job_release(struct bd_job *job)
{
    if (job->is_lease_lost) {
        /* Not ours any more: nothing to release. Finish on the next turn. */
        job_arm_timer(job, 0);
        job->phase = JOB_PHASE_DONE;
        return BD_OK;
    }
    return bd_rq_release(job->e->srv->rq, job->id, job->is_handing_back, job_on_released, job);
}

static void job_finish(struct bd_job *job)
{
    job->phase = JOB_PHASE_FINISH;
    job_step(job);
}

/* ---- the step dispatcher ------------------------------------------------------------- */

static void job_step(struct bd_job *job)
{
    int err = BD_OK;

    if (job->phase == JOB_PHASE_DONE) {
        /* Reached only through job_release's lease-lost path (timer). */
        job_on_released(BD_OK, 0, job);
        return;
    }
    if (job->phase == JOB_PHASE_WRITE) {
        job_write_step(job);
        return;
    }
    if ((job->phase == JOB_PHASE_LOAD_BATCH ||
         job->phase == JOB_PHASE_CACHE || job->phase == JOB_PHASE_EXECUTE) &&
        job_should_stop(job)) {
        job_wind_down(job);
        return;
    }
    if (job->phase == JOB_PHASE_EXECUTE && job->op == BD_OP_BULK_INSERT) {
        err = job_execute(job);               /* arms the timer itself (holds its ref) */
        if (err < 0)
            goto fail;
        return;
    }
    job_ref(job);
    switch (job->phase) {
    case JOB_PHASE_START:
        err = job_start_query(job);
        break;
    case JOB_PHASE_LOAD_BATCH:
        err = job_load_query(job);
        break;
    case JOB_PHASE_CACHE:
        err = job_cache_query(job);
        break;
    case JOB_PHASE_EXECUTE:
        err = job_execute(job);
        break;
    case JOB_PHASE_FINISH:
        err = job_finish_query(job);
        break;
    case JOB_PHASE_RELEASE:
        err = job_release(job);
        break;
    default:
        assert(!"phase has no async operation");
        err = BD_EINTERNAL;
    }
    if (err >= 0)
        return;
    job_unref(job);                           /* the callee will not call back */
fail:
    bd_log(BD_LOG_WARN, "job", "job=%s event=step_failed phase=%s err=%s", job->id,
           job_phase_names[job->phase], bd_strerror(err));
    if (job->phase == JOB_PHASE_EXECUTE) {
        char msg[128];
        snprintf(msg, sizeof(msg), "could not start the model request: %s", bd_strerror(err));
        if (err == BD_ENOTFOUND) {
            job->is_fatal = true;
            snprintf(job->final_state, sizeof(job->final_state), "failed");
            job_set_error(job, "unknown_model", "model '%s' is not configured", job->model);
            job_finish(job);
        } else {
            job_fail_batch(job, "processing_error", msg);
        }
    } else if (job->phase == JOB_PHASE_RELEASE) {
        job_ref(job);                          /* job_on_released drops an operation ref */
        job_on_released(err, 0, job);
    } else {
        /* A store call could not even be sent (store down): try this phase again soon. */
        job_arm_timer(job, 1.0);
    }
}

static struct bd_job *job_new(struct bd_job_engine *e, const char *id)
{
    struct bd_job *job = calloc(1, sizeof(*job));
    if (job == NULL)
        return NULL;
    job->e = e;
    job->refs = 1;                            /* the engine's reference */
    snprintf(job->id, sizeof(job->id), "%s", id);
    job->claimed_ns = uv_hrtime();
    bd_pg_copybuf_init(&job->copy);
    bd_buf_init(&job->meta);
    bd_buf_init(&job->sql);
    uv_timer_init(e->loop, &job->timer);
    job->timer.data = job;
    job->next = e->jobs;
    if (e->jobs)
        e->jobs->prev = job;
    e->jobs = job;
    e->active++;
    e->jobs_alive++;
    return job;
}

static struct bd_job *engine_find(const struct bd_job_engine *e, const char *id)
{
    for (struct bd_job *j = e->jobs; j; j = j->next)
        if (strcmp(j->id, id) == 0)
            return j;
    return NULL;
}

/* ---- claiming ------------------------------------------------------------------------ */

static void engine_on_claimed(int status, const char *job_id, void *arg)
{
    struct bd_job_engine *e = arg;

    e->is_claiming = false;
    if (e->is_stopping) {
        if (status == BD_OK && job_id) {
            /* Claimed just as we stop: hand it straight back. */
            struct bd_job *job = job_new(e, job_id);
            if (job) {
                job->is_handing_back = true;
                job->phase = JOB_PHASE_RELEASE;
                job_step(job);
            }
        }
        engine_maybe_stopped(e);
        return;
    }
    /* Nothing to claim (or Redis trouble): the repeating claim timer polls again. */
    if (status < 0 || job_id == NULL)
        return;
    if (engine_find(e, job_id))               /* ours, back through the reaper: keep going */
        return;
    struct bd_job *job = job_new(e, job_id);
    if (job == NULL)
        return;
    e->stats.jobs_claimed++;
    job->phase = JOB_PHASE_START;
    job_step(job);
    engine_pump(e);                           /* more capacity? claim again right away */
}

static void engine_pump(struct bd_job_engine *e)
{
    if (!e->is_ready || e->is_stopping || e->is_claiming ||
        e->active >= e->cfg->max_concurrent_jobs)
        return;
    if (!bd_rq_is_up(e->srv->rq))
        return;                               /* the claim timer tries again */
    e->is_claiming = true;
    if (bd_rq_claim(e->srv->rq, engine_on_claimed, e) < 0)
        e->is_claiming = false;
}

static void engine_on_claim_timer(uv_timer_t *t)
{
    engine_pump(t->data);
}

void bd_job_engine_kick(struct bd_job_engine *e)
{
    engine_pump(e);
}

/* ---- lease renewal ------------------------------------------------------------------- */

struct renew_call {
    struct bd_job_engine *e;
    char id[129];
};

static void engine_on_renewed(int status, long long value, void *arg)
{
    struct renew_call *rc = arg;
    struct bd_job_engine *e = rc->e;
    struct bd_job *job = engine_find(e, rc->id);

    e->pending_ops--;
    if (job && status == BD_OK) {
        if (value == 0 && !job->is_lease_lost) {
            bd_log(BD_LOG_WARN, "job", "job=%s event=lease_lost", job->id);
            rc->e->stats.leases_lost++;
            job->is_lease_lost = true;
            if (job->model_call)
                bd_model_abort(job->model_call);
            job_fire_timer_now(job);
        } else if (value == 2 && !job->is_cancel_requested) {
            bd_job_engine_cancel_local(e, job->id);
        }
    }
    free(rc);
    if (e->is_stopping)
        engine_maybe_stopped(e);
}

static void engine_on_renew_timer(uv_timer_t *t)
{
    struct bd_job_engine *e = t->data;

    if (!bd_rq_is_up(e->srv->rq))
        return;
    for (struct bd_job *j = e->jobs; j; j = j->next) {
        if (j->phase == JOB_PHASE_RELEASE || j->phase == JOB_PHASE_DONE || j->is_lease_lost)
            continue;
        struct renew_call *rc = malloc(sizeof(*rc));
        if (rc == NULL)
            continue;
        rc->e = e;
        snprintf(rc->id, sizeof(rc->id), "%s", j->id);
        engine_op_begin(e);
        if (bd_rq_renew(e->srv->rq, j->id, engine_on_renewed, rc) < 0) {
            e->pending_ops--;
            free(rc);
        }
    }
}

/* ---- reaper, rebuild, sweep ---------------------------------------------------------- */

static void engine_on_reaped(int status, long long n, void *arg)
{
    struct bd_job_engine *e = arg;
    if (!engine_op_end(e))
        return;
    if (status == BD_OK && n > 0) {
        e->stats.reaped += (uint64_t)n;
        bd_log(BD_LOG_INFO, "job", "event=leases_expired requeued=%lld", n);
        engine_pump(e);
    }
}

static void engine_rebuild(struct bd_job_engine *e);

/* Redis lost its keys (FLUSHALL, or a restart without persistence) while the connection
 * stayed up: the marker key is gone, so rebuild the queue from PostgreSQL. */
static void engine_on_empty_checked(int status, long long is_empty, void *arg)
{
    struct bd_job_engine *e = arg;
    if (!engine_op_end(e))
        return;
    if (status == BD_OK && is_empty == 1) {
        bd_log(BD_LOG_WARN, "job", "event=redis_state_lost action=rebuild_from_postgres");
        engine_rebuild(e);
    }
}

static void engine_on_reap_timer(uv_timer_t *t)
{
    struct bd_job_engine *e = t->data;
    if (!bd_rq_is_up(e->srv->rq))
        return;
    engine_op_begin(e);
    if (bd_rq_reap(e->srv->rq, engine_on_reaped, e) < 0)
        e->pending_ops--;
    if (!e->is_rebuilding) {
        engine_op_begin(e);
        if (bd_rq_is_empty(e->srv->rq, engine_on_empty_checked, e) < 0)
            e->pending_ops--;
    }
}

static void engine_on_enqueued(int status, long long pos, void *arg)
{
    (void)status;
    (void)pos;
    engine_op_end(arg);
}

static void engine_on_marked(int status, long long v, void *arg)
{
    struct bd_job_engine *e = arg;
    (void)status;
    (void)v;
    e->is_rebuilding = false;
    if (engine_op_end(e))
        engine_pump(e);
}

static void engine_on_seq_restored(int status, const redisReply *reply, void *arg)
{
    (void)status;
    (void)reply;
    engine_op_end(arg);
}

/* Job ids and FIFO order come from Redis' sequence: after Redis lost its keys it would
 * start again at 1, so raise it to at least the largest sequence PostgreSQL has. */
static void engine_restore_seq(struct bd_job_engine *e, const PGresult *res)
{
    static const char script[] =
        "local c = tonumber(redis.call('GET', KEYS[1]) or '0') "
        "if c < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end return 0";
    const char *max = PQntuples(res) > 0 ? PQgetvalue(res, 0, 5) : NULL;

    if (max == NULL || *max == '\0')
        return;
    const char *argv[5] = { "EVAL", script, "1", "bd:seq", max };
    size_t lens[5] = { 4, sizeof(script) - 1, 1, 6, strlen(max) };
    engine_op_begin(e);
    if (bd_rq_command_argv(e->srv->rq, 5, argv, lens, engine_on_seq_restored, e) < 0)
        e->pending_ops--;
}

/* PostgreSQL is the source of truth: every job it says is queued or processing is put in
 * the Redis queue (enqueue leaves jobs already queued or in flight where they are). */
static void engine_on_rebuild_rows(int status, PGresult *res, void *arg)
{
    struct bd_job_engine *e = arg;

    if (!engine_op_end(e) || status < 0 || !bd_rq_is_up(e->srv->rq)) {
        e->is_rebuilding = false;
        return;
    }
    int n = PQntuples(res), queued = 0;
    for (int i = 0; i < n; i++) {
        if (PQgetisnull(res, i, 0))
            continue;                     /* no active job: the row only carries max_seq */
        const char *id = PQgetvalue(res, i, 0);
        struct bd_job *mine = engine_find(e, id);
        /* A job this process is running goes straight back in flight under our lease
         * (else its next renewal would report the lease lost); the rest are queued. */
        bool adopt = mine && !mine->is_lease_lost && mine->phase != JOB_PHASE_RELEASE &&
                     mine->phase != JOB_PHASE_DONE;
        engine_op_begin(e);
        int rc = (adopt ? bd_rq_adopt : bd_rq_enqueue)(
            e->srv->rq, id, (enum bd_priority)job_pg_long(res, i, 1, 1),
            (int64_t)strtoll(PQgetvalue(res, i, 2), NULL, 10),
            job_pg_val(res, i, 3) ? PQgetvalue(res, i, 3) : "", job_pg_long(res, i, 4, 0),
            engine_on_enqueued, e);
        if (rc == BD_OK)
            queued++;
        else
            e->pending_ops--;
    }
    e->stats.rebuilt += (uint64_t)queued;
    engine_restore_seq(e, res);
    if (n > 0)
        bd_log(BD_LOG_DEBUG, "job", "event=queue_rebuilt jobs=%d", queued);
    engine_op_begin(e);
    if (bd_rq_mark_alive(e->srv->rq, engine_on_marked, e) < 0) {
        e->pending_ops--;
        e->is_rebuilding = false;
    }
}

static void engine_rebuild(struct bd_job_engine *e)
{
    if (e->is_rebuilding || !e->is_ready || e->is_stopping)
        return;
    e->is_rebuilding = true;
    engine_op_begin(e);
    if (bd_pg_query(e->pg,
                    "SELECT j.id, j.priority, j.seq, COALESCE(j.model, ''), j.total_items, "
                    "m.max_seq FROM (SELECT max(seq) AS max_seq FROM jobs) m "
                    "LEFT JOIN jobs j ON j.status IN ('queued', 'processing') ORDER BY j.seq",
                    0, NULL, NULL, NULL, 0, engine_on_rebuild_rows, e) < 0) {
        e->pending_ops--;
        e->is_rebuilding = false;
    }
}

static void engine_on_rebuild_timer(uv_timer_t *t)
{
    engine_rebuild(t->data);
}

static void engine_on_redis_state(bool up, void *arg)
{
    struct bd_job_engine *e = arg;
    if (up) {
        /* Redis came back (perhaps empty after a restart or FLUSHALL): rebuild. */
        engine_rebuild(e);
        engine_pump(e);
    }
}

static void engine_on_swept(int status, PGresult *res, void *arg)
{
    struct bd_job_engine *e = arg;
    if (!engine_op_end(e))
        return;
    if (status == BD_OK) {
        long n = strtol(PQcmdTuples(res), NULL, 10);
        if (n > 0) {
            e->stats.swept += (uint64_t)n;
            bd_log(BD_LOG_INFO, "job", "event=retention_sweep deleted_jobs=%ld", n);
        }
    }
}

static void engine_on_sweep_timer(uv_timer_t *t)
{
    struct bd_job_engine *e = t->data;
    char secs[32];
    snprintf(secs, sizeof(secs), "%.3f", e->cfg->cleanup_interval_s);
    const char *params[1] = { secs };
    engine_op_begin(e);
    if (bd_pg_query(e->pg,
                      "WITH c AS (DELETE FROM embedding_cache "
                      "WHERE created_at < now() - make_interval(secs => $1::float8)) "
                      "DELETE FROM jobs WHERE status IN ('completed', 'failed', 'cancelled') "
                      "AND completed_at < now() - make_interval(secs => $1::float8)",
                      1, params, NULL, NULL, 0, engine_on_swept, e) < 0)
        e->pending_ops--;
}

/* Throughput over jobs that finished in the last 15 minutes, in any process: their items
 * over the wall time from the first start to the last completion. */
static void engine_on_throughput(int status, PGresult *res, void *arg)
{
    struct bd_job_engine *e = arg;
    if (engine_op_end(e) && status == BD_OK && PQntuples(res) == 1)
        e->throughput = job_pg_double(res, 0, 0, 0);
}

static void engine_on_tput_timer(uv_timer_t *t)
{
    struct bd_job_engine *e = t->data;
    engine_op_begin(e);
    if (bd_pg_query(e->pg,
                      "SELECT COALESCE(sum(processed_items + failed_items) / NULLIF(extract("
                      "epoch FROM max(completed_at) - min(started_at)), 0), 0) FROM jobs "
                      "WHERE completed_at > now() - interval '15 minutes' "
                      "AND started_at IS NOT NULL",
                      0, NULL, NULL, NULL, 0, engine_on_throughput, e) < 0)
        e->pending_ops--;
}

double bd_job_engine_get_throughput(const struct bd_job_engine *e)
{
    return e->throughput;
}

/* ---- start / stop ---------------------------------------------------------------------- */

static void engine_on_migrated(int status, void *arg);

static void engine_on_migrate_timer(uv_timer_t *t)
{
    struct bd_job_engine *e = t->data;
    if (e->is_stopping)
        return;
    engine_op_begin(e);
    if (bd_pg_migrate(e->pg, engine_on_migrated, e) < 0) {
        e->pending_ops--;
        uv_timer_start(&e->migrate_timer, engine_on_migrate_timer, 1000, 0);
    }
}

static void engine_on_migrated(int status, void *arg)
{
    struct bd_job_engine *e = arg;
    const struct bd_config *cfg = e->cfg;

    if (!engine_op_end(e))
        return;
    if (status < 0) {
        bd_log(BD_LOG_WARN, "job", "event=migrate_failed err=%s retry_in_s=1",
               bd_strerror(status));
        uv_timer_start(&e->migrate_timer, engine_on_migrate_timer, 1000, 0);
        return;
    }
    e->is_ready = true;
    bd_log(BD_LOG_INFO, "job", "event=ready max_concurrent_jobs=%u", cfg->max_concurrent_jobs);
    double renew_s = fmin(1.0, cfg->lease_s / 3.0);
    uv_timer_start(&e->claim_timer, engine_on_claim_timer, 0,
                   job_ms(cfg->processing_interval_s));
    uv_timer_start(&e->renew_timer, engine_on_renew_timer, job_ms(renew_s), job_ms(renew_s));
    uv_timer_start(&e->reap_timer, engine_on_reap_timer, job_ms(cfg->reaper_interval_s),
                   job_ms(cfg->reaper_interval_s));
    double sweep = fmin(cfg->cleanup_interval_s, 60.0);
    uv_timer_start(&e->sweep_timer, engine_on_sweep_timer, job_ms(sweep), job_ms(sweep));
    uv_timer_start(&e->rebuild_timer, engine_on_rebuild_timer, 0,
                   job_ms(JOB_REBUILD_INTERVAL_S));
    uv_timer_start(&e->tput_timer, engine_on_tput_timer, 0, 5000);
}

struct bd_job_engine *bd_job_engine_new(struct bd_server *srv, int *err)
{
    struct bd_job_engine *e = calloc(1, sizeof(*e));
    if (e == NULL) {
        *err = BD_ENOMEM;
        return NULL;
    }
    e->srv = srv;
    e->pg = srv->pg_jobs ? srv->pg_jobs : srv->pg;
    e->loop = srv->loop;
    e->cfg = srv->cfg;
    uv_timer_t *timers[] = { &e->claim_timer, &e->renew_timer, &e->reap_timer,
                             &e->sweep_timer, &e->rebuild_timer, &e->migrate_timer, &e->tput_timer };
    for (size_t i = 0; i < sizeof(timers) / sizeof(timers[0]); i++) {
        uv_timer_init(e->loop, timers[i]);
        timers[i]->data = e;
    }
    srand((unsigned)(uv_hrtime() ^ (uint64_t)getpid()));
    return e;
}

void bd_job_engine_start(struct bd_job_engine *e)
{
    if (e->is_started)
        return;
    e->is_started = true;
    bd_rq_set_state_cb(e->srv->rq, engine_on_redis_state, e);
    engine_on_migrate_timer(&e->migrate_timer);
}

bool bd_job_engine_is_ready(const struct bd_job_engine *e)
{
    return e->is_ready;
}

static void engine_on_timer_closed(uv_handle_t *h)
{
    struct bd_job_engine *e = h->data;
    e->pending_closes--;
    engine_maybe_stopped(e);
}

static void engine_maybe_stopped(struct bd_job_engine *e)
{
    if (!e->is_stopping || e->active > 0 || e->jobs_alive > 0 || e->is_claiming ||
        e->pending_ops > 0)
        return;
    if (!e->has_closed_timers) {
        e->has_closed_timers = true;
        uv_timer_t *timers[] = { &e->claim_timer, &e->renew_timer, &e->reap_timer,
                                 &e->sweep_timer, &e->rebuild_timer, &e->migrate_timer, &e->tput_timer };
        for (size_t i = 0; i < sizeof(timers) / sizeof(timers[0]); i++) {
            e->pending_closes++;
            uv_close((uv_handle_t *)timers[i], engine_on_timer_closed);
        }
        return;
    }
    if (e->pending_closes == 0 && e->stopped_cb) {
        bd_job_engine_stopped_cb cb = e->stopped_cb;
        e->stopped_cb = NULL;
        bd_log(BD_LOG_INFO, "job", "event=engine_stopped");
        cb(e->stopped_arg);
    }
}

void bd_job_engine_stop(struct bd_job_engine *e, bd_job_engine_stopped_cb cb, void *arg)
{
    e->is_stopping = true;
    e->stopped_cb = cb;
    e->stopped_arg = arg;
    uv_timer_stop(&e->claim_timer);
    uv_timer_stop(&e->reap_timer);
    uv_timer_stop(&e->sweep_timer);
    uv_timer_stop(&e->rebuild_timer);
    uv_timer_stop(&e->migrate_timer);
    uv_timer_stop(&e->tput_timer);
    bd_log(BD_LOG_INFO, "job", "event=engine_stopping active=%u", e->active);
    /* Jobs finish the operation in flight (a write commits its checkpoint), then hand
     * themselves back to the queue. Model calls and back-off waits are cut short: the
     * batch is simply redone by the next owner. */
    for (struct bd_job *j = e->jobs; j; j = j->next) {
        j->is_handing_back = true;
        if (j->model_call)
            bd_model_abort(j->model_call);
        job_fire_timer_now(j);
    }
    engine_maybe_stopped(e);
}

void bd_job_engine_free(struct bd_job_engine *e)
{
    free(e);
}

bool bd_job_engine_cancel_local(struct bd_job_engine *e, const char *job_id)
{
    struct bd_job *job = engine_find(e, job_id);
    if (job == NULL)
        return false;
    if (!job->is_cancel_requested) {
        bd_log(BD_LOG_INFO, "job", "job=%s event=cancel_requested phase=%s", job->id,
               job_phase_names[job->phase]);
        job->is_cancel_requested = true;
        if (job->model_call)
            bd_model_abort(job->model_call);
        job_fire_timer_now(job);
    }
    return true;
}

unsigned bd_job_engine_get_active(const struct bd_job_engine *e)
{
    return e->active;
}

unsigned bd_job_engine_get_capacity(const struct bd_job_engine *e)
{
    return e->cfg->max_concurrent_jobs;
}

void bd_job_engine_listen(struct bd_job_engine *e, struct bd_job_listener *l)
{
    l->prev = NULL;
    l->next = e->listeners;
    if (e->listeners)
        e->listeners->prev = l;
    e->listeners = l;
}

void bd_job_engine_unlisten(struct bd_job_engine *e, struct bd_job_listener *l)
{
    if (l->prev)
        l->prev->next = l->next;
    else if (e->listeners == l)
        e->listeners = l->next;
    if (l->next)
        l->next->prev = l->prev;
    l->next = l->prev = NULL;
}

struct json_t *bd_job_engine_debug_json(const struct bd_job_engine *e, const char *job_id)
{
    const struct bd_job *job = engine_find(e, job_id);
    if (job == NULL)
        return NULL;
    json_t *model = json_null();
    for (unsigned i = 0; job->op == BD_OP_BULK_EMBED && i < e->cfg->models_count; i++) {
        const struct bd_model_stats *ms;
        if (strcmp(e->cfg->models[i].name, job->model) != 0 ||
            (ms = bd_model_client_get_stats(e->srv->models, i)) == NULL)
            continue;
        json_decref(model);
        model = json_pack("{s:s,s:b,s:i,s:i,s:f,s:I,s:{s:I,s:I,s:I,s:I}}", "name", job->model,
                          "circuit_open", ms->is_circuit_open, "in_flight", (int)ms->in_flight,
                          "concurrency_limit", (int)ms->concurrency_limit,
                          "rate_limit_rps", ms->rate_limit_rps, "requests",
                          (json_int_t)ms->requests, "errors", "timeout_error",
                          (json_int_t)ms->errors[BD_MODEL_ERR_TIMEOUT], "connection_error",
                          (json_int_t)ms->errors[BD_MODEL_ERR_CONNECTION], "processing_error",
                          (json_int_t)ms->errors[BD_MODEL_ERR_PROCESSING], "rate_limited",
                          (json_int_t)ms->errors[BD_MODEL_ERR_RATE_LIMITED]);
    }
    json_t *j = json_pack("{s:s,s:s,s:i,s:i,s:i,s:i,s:b,s:b,s:b,s:b,s:f,s:i,s:s?}",
                     "worker", e->cfg->worker_id, "phase", job_phase_names[job->phase],
                     "batch_no", job->batch_no, "batch_attempts", (int)job->attempts,
                     "batches_run_here", (int)job->batches_run,
                     "write_failures", (int)job->write_failures,
                     "cancel_requested", job->is_cancel_requested,
                     "lease_lost", job->is_lease_lost, "handing_back", job->is_handing_back,
                     "model_call_in_flight", job->model_call != NULL,
                     "seconds_since_claim", (double)(uv_hrtime() - job->claimed_ns) / 1e9,
                     "dimension", (int)job->dim,
                     "last_error", job->batch_error[0] ? job->batch_error : NULL);
    if (j)
        json_object_set_new(j, "model", model ? model : json_null());
    else
        json_decref(model);
    return j;
}

const struct bd_job_engine_stats *bd_job_engine_get_stats(const struct bd_job_engine *e)
{
    return &e->stats;
}
