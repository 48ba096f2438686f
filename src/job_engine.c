/* job_engine.c -- the engine around the jobs: claiming, lease renewal, the expired-lease
 * reaper, queue rebuild from PostgreSQL, retention sweep, throughput, start and stop, and
 * the entry points the API calls to change a job (cancel, retry).
 *
 * Owns struct bd_job_engine. Loop thread only; never blocks. Reaches Redis and PostgreSQL
 * only through redis_queue.h and job_store.h; knows nothing of HTTP. One job's state
 * machine is in job_run.c (and job_write.c); the transition table is there too.
 * SPDX-License-Identifier: MIT
 */
#include "job_internal.h"

#include "batchd/config.h"
#include "batchd/error.h"
#include "batchd/job_store.h"
#include "batchd/log.h"
#include "batchd/model_client.h"
#include "batchd/random_id.h"
#include "batchd/redis_queue.h"

#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

static uint64_t engine_ms(double s)
{
    return s <= 0 ? 0 : (uint64_t)(s * 1000.0 + 0.5);
}

void bd__engine_maybe_stopped(struct bd_job_engine *e)
{
    engine_maybe_stopped(e);
}

/* ---- claiming ------------------------------------------------------------------------ */

/* One claim for every free slot: a round trip to Redis brings as many jobs as the engine
 * may run, instead of one each. The call record remembers how many were asked for: fewer
 * back means the queues are empty, and no empty claim needs to follow. */
struct engine_claim {
    struct bd_job_engine *e;
    unsigned asked;
};

static void engine_on_claimed(int status, const char *const *job_ids, unsigned count,
                              bool is_cut, void *arg)
{
    struct engine_claim *claim = arg;
    struct bd_job_engine *e = claim->e;
    unsigned asked = claim->asked;

    free(claim);
    e->is_claiming = false;
    if (e->is_stopping) {
        for (unsigned i = 0; status == BD_OK && i < count; i++) {
            /* Claimed just as we stop: hand it straight back. */
            struct bd_job *job = bd__job_new(e, job_ids[i]);
            if (job) {
                job->is_handing_back = true;
                job->phase = JOB_PHASE_RELEASE;
                bd__job_step(job);
            }
        }
        engine_maybe_stopped(e);
        return;
    }
    /* Nothing to claim (or Redis trouble): the repeating claim timer polls again; a claim
     * cut while it parked a paused model's jobs goes on at once. */
    if (status < 0 || (count == 0 && !is_cut))
        return;
    for (unsigned i = 0; i < count; i++) {
        if (bd__job_find(e, job_ids[i]))      /* ours, back through the reaper: keep going */
            continue;
        struct bd_job *job = bd__job_new(e, job_ids[i]);
        if (job == NULL)
            continue;                         /* its lease runs out; the reaper requeues it */
        e->stats.jobs_claimed++;
        job->phase = JOB_PHASE_START;
        bd__job_step(job);
    }
    if (count == asked || is_cut)
        bd__engine_pump(e);                   /* more capacity? claim again right away */
}

void bd__engine_pump(struct bd_job_engine *e)
{
    unsigned cap = e->d.cfg->max_concurrent_jobs;

    if (!e->is_ready || e->is_stopping || e->is_draining || e->is_claiming || e->active >= cap)
        return;
    /* Paused, or not yet known whether (a restart must not claim before it read it). */
    if (!e->pause.is_known || e->pause.is_paused)
        return;
    if (!bd_rq_is_up(e->d.rq))
        return;                               /* the claim timer tries again */
    unsigned want = cap - e->active;
    if (want > BD_RQ_CLAIM_MAX)
        want = BD_RQ_CLAIM_MAX;
    struct engine_claim *claim = malloc(sizeof(*claim));
    if (claim == NULL)
        return;                               /* the claim timer tries again */
    *claim = (struct engine_claim){ e, want };
    e->is_claiming = true;
    if (bd_rq_claim_many_skip(e->d.rq, want, e->skip_models, e->pause.models_count,
                              engine_on_claimed, claim) < 0) {
        e->is_claiming = false;
        free(claim);
    }
}

static void engine_on_claim_timer(uv_timer_t *t)
{
    bd__engine_pump(t->data);
}

void bd_job_engine_drain(struct bd_job_engine *e)
{
    e->is_draining = true;
    uv_timer_stop(&e->claim_timer);
}

void bd_job_engine_kick(struct bd_job_engine *e)
{
    bd__engine_pump(e);
}

/* ---- lease renewal ------------------------------------------------------------------- */

struct renew_call {
    struct bd_job_engine *e;
    char id[129];
};

static void engine_rebuild(struct bd_job_engine *e);

/* A rebuild now, unless one failed or was undone twice lately: then not before
 * rebuild_retry_ms (the reaper's check starts it while the marker is missing). */
static void engine_rebuild_soon(struct bd_job_engine *e)
{
    if (uv_now(e->reap_timer.loop) >= e->rebuild_retry_ms)
        engine_rebuild(e);
}

static void engine_on_renewed(int status, long long value, void *arg)
{
    struct renew_call *rc = arg;
    struct bd_job_engine *e = rc->e;
    struct bd_job *job = bd__job_find(e, rc->id);

    e->pending_ops--;
    if (job && status == BD_OK) {
        if (value == 0 && !job->is_lease_lost) {
            bd_log(BD_LOG_WARN, "job", "job=%s event=lease_lost", job->id);
            rc->e->stats.leases_lost++;
            job->is_lease_lost = true;
            bd__job_interrupt(job);
        } else if (value == 2 && !job->is_cancel_requested) {
            bd_job_engine_cancel_local(e, job->id);
        } else if (value == 3) {
            /* Redis lost its keys, the lease with them: not lost to another worker. The
             * rebuild (under way, or started by the reaper's check) adopts the job. */
            bd_log(BD_LOG_DEBUG, "job", "job=%s event=lease_unknown note=redis_lost_keys",
                   job->id);
            engine_rebuild_soon(e);
        }
    }
    free(rc);
    if (e->is_stopping)
        engine_maybe_stopped(e);
}

static void engine_on_renew_timer(uv_timer_t *t)
{
    struct bd_job_engine *e = t->data;

    if (!bd_rq_is_up(e->d.rq))
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
        if (bd_rq_renew(e->d.rq, j->id, engine_on_renewed, rc) < 0) {
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
        bd__engine_pump(e);
    }
}

/* Redis lost its keys (FLUSHALL, or a restart without persistence) while the connection
 * stayed up: the marker key is gone, so rebuild the queue from PostgreSQL. */
static void engine_on_empty_checked(int status, long long is_empty, void *arg)
{
    struct bd_job_engine *e = arg;
    if (!engine_op_end(e))
        return;
    if (status == BD_OK && is_empty == 1 && !e->is_rebuilding &&
        uv_now(e->reap_timer.loop) >= e->rebuild_retry_ms) {
        bd_log(BD_LOG_WARN, "job", "event=redis_state_lost action=rebuild_from_postgres");
        engine_rebuild(e);
    }
}

static void engine_on_reap_timer(uv_timer_t *t)
{
    struct bd_job_engine *e = t->data;
    if (!bd_rq_is_up(e->d.rq))
        return;
    engine_op_begin(e);
    if (bd_rq_reap(e->d.rq, engine_on_reaped, e) < 0)
        e->pending_ops--;
    if (!e->is_rebuilding) {
        engine_op_begin(e);
        if (bd_rq_is_empty(e->d.rq, engine_on_empty_checked, e) < 0)
            e->pending_ops--;
    }
}

/* The rebuild's end: marked alive (1), or its mark was gone (0: a FLUSHALL during the
 * rebuild took the jobs queued so far, or a rebuild under the same worker id replaced it),
 * so the queue is rebuilt once more at once; a second undone rebuild in a row waits
 * JOB_REBUILD_RETRY_S (two processes sharing a worker id would otherwise undo each other's
 * without end). */
static void engine_on_rebuild_ended(int status, long long is_marked, void *arg)
{
    struct bd_job_engine *e = arg;

    e->is_rebuilding = false;
    if (!engine_op_end(e))
        return;
    if (status == BD_OK && is_marked == 0) {
        bool is_again = e->rebuilds_undone++ > 0;
        bd_log(BD_LOG_WARN, "job", "event=rebuild_mark_lost action=rebuild_again%s",
               is_again ? " delay_s=5 note=check_worker_ids_are_unique" : "");
        if (is_again)
            e->rebuild_retry_ms = uv_now(e->reap_timer.loop) + engine_ms(JOB_REBUILD_RETRY_S);
        else
            engine_rebuild(e);
    } else if (status == BD_OK) {
        e->rebuilds_undone = 0;
    }
    bd__engine_pump(e);
}

static void engine_on_seq_restored(int status, long long seq, void *arg)
{
    (void)status;
    (void)seq;
    engine_op_end(arg);
}

/* Job ids and FIFO order come from Redis' sequence: after Redis lost its keys it would
 * start again at 1, so raise it to at least the largest sequence PostgreSQL has. */
static void engine_restore_seq(struct bd_job_engine *e, long long max_seq)
{
    if (max_seq <= 0)
        return;
    engine_op_begin(e);
    if (bd_rq_restore_seq(e->d.rq, max_seq, engine_on_seq_restored, e) < 0)
        e->pending_ops--;
}

/* ---- the rebuild, page by page -------------------------------------------------------
 *
 * PostgreSQL is the source of truth: every job it says is queued or processing is put in
 * the Redis queue (enqueue leaves jobs already queued or in flight where they are). The
 * jobs come JOB_REBUILD_PAGE at a time (bd_job_store_list_active_page), a page's queued
 * jobs in one script run (bd_rq_enqueue_many; before, one command each: a million queued
 * jobs were a million commands every minute), and the next page is read when every reply
 * of the last one came back: the loop serves
 * HTTP and runs jobs between pages. One result of every active job, decoded, copied and
 * sent in one loop turn, kept it busy for a quarter of a second at 200,000 queued jobs,
 * every JOB_REBUILD_INTERVAL_S (docs/perf/latency-tail.md). Processing jobs come first
 * (few; this process's own are adopted before a lease renewal can find them gone), then the
 * queued ones by priority (high first), then seq: a claim between two pages takes a job no
 * later page would have beaten. The rebuild sets this worker's mark first and ends by
 * marking Redis alive only if the mark survived (bd_rq_rebuild_begin/_end): a flush in the
 * middle would otherwise leave the queue without the pages sent before it, looking whole.
 * An enqueue that failed leaves the marker unset, so the reaper's check rebuilds again. */

#define JOB_REBUILD_PAGE 1000

/* One rebuild under way: heap, freed when it ends. */
struct engine_rebuild {
    struct bd_job_engine *e;
    int state;                                /* 0: processing, 1: queued, 2: done */
    int bucket;                               /* priority bucket of the page being read */
    long long after_seq;
    unsigned inflight;                        /* commands whose reply is due */
    unsigned sent;
    long long max_seq;
    bool is_failed;                           /* an enqueue or adopt failed */
    char token[17];                           /* this rebuild's mark in Redis */
};

static void engine_rebuild_next(struct engine_rebuild *rb);

static void engine_on_enqueued(int status, long long pos, void *arg)
{
    struct engine_rebuild *rb = arg;

    (void)pos;
    if (status < 0)
        rb->is_failed = true;
    rb->inflight--;
    if (!engine_op_end(rb->e)) {              /* stopping: read nothing more */
        if (rb->inflight == 0)
            free(rb);
        return;
    }
    if (rb->inflight == 0)
        engine_rebuild_next(rb);
}

static void engine_on_enqueued_many(int status, const long long *positions, unsigned n,
                                    void *arg)
{
    (void)positions;
    (void)n;
    engine_on_enqueued(status, 0, arg);
}

static void engine_on_active_page(int status, const struct bd_job_queue_row *rows,
                                  unsigned count, long long max_seq,
                                  const struct bd_job_store_err *err, void *arg)
{
    struct engine_rebuild *rb = arg;
    struct bd_job_engine *e = rb->e;
    struct bd_rq_enqueue_job *jobs;
    unsigned queued = 0, sent_before = rb->sent;

    (void)err;
    if (!engine_op_end(e)) {
        free(rb);
        return;
    }
    if (status < 0 || !bd_rq_is_up(e->d.rq)) {
        e->is_rebuilding = false;             /* the next timer, or Redis' return, retries */
        free(rb);
        return;
    }
    rb->max_seq = max_seq;
    jobs = count > 0 ? malloc(count * sizeof(*jobs)) : NULL;
    for (unsigned i = 0; i < count; i++) {
        const struct bd_job_queue_row *r = &rows[i];
        struct bd_job *mine = bd__job_find(e, r->id);
        /* As the pages' buckets: 0 and below high, 2 and above low. */
        enum bd_priority prio = r->priority <= 0 ? BD_PRIO_HIGH
                                : r->priority >= 2 ? BD_PRIO_LOW : BD_PRIO_NORMAL;
        /* A job this process is running goes straight back in flight under our lease
         * (else its next renewal would report the lease lost); the rest are queued, the
         * page's in one script run. */
        bool adopt = mine && !mine->is_lease_lost && mine->phase != JOB_PHASE_RELEASE &&
                     mine->phase != JOB_PHASE_DONE;
        int rc;

        if (!adopt && jobs != NULL) {
            jobs[queued++] = (struct bd_rq_enqueue_job){
                .job_id = r->id, .prio = prio, .seq = r->seq,
                .model = r->model, .items = r->total_items,
            };
            continue;
        }
        engine_op_begin(e);
        rc = (adopt ? bd_rq_adopt : bd_rq_enqueue)(e->d.rq, r->id, prio, r->seq, r->model,
                                                   r->total_items, engine_on_enqueued, rb);
        if (rc == BD_OK) {
            rb->inflight++;
            rb->sent++;
        } else {
            e->pending_ops--;
            rb->is_failed = true;
        }
    }
    if (queued > 0) {
        engine_op_begin(e);
        if (bd_rq_enqueue_many(e->d.rq, jobs, queued, engine_on_enqueued_many, rb) == BD_OK) {
            rb->inflight++;
            rb->sent += queued;
        } else {
            e->pending_ops--;
            rb->is_failed = true;
        }
    }
    free(jobs);
    e->stats.rebuilt += rb->sent - sent_before;
    if (count == JOB_REBUILD_PAGE) {
        rb->after_seq = rows[count - 1].seq;
    } else {                                  /* that (status, bucket) is done */
        rb->after_seq = LLONG_MIN;
        if (++rb->bucket == BD_PRIO_COUNT) {
            rb->bucket = 0;
            rb->state++;
        }
    }
    if (rb->inflight == 0)
        engine_rebuild_next(rb);
}

/* Read the next page, or end the rebuild: the sequence and the marker go after every
 * enqueue on the same connection. */
static void engine_rebuild_next(struct engine_rebuild *rb)
{
    struct bd_job_engine *e = rb->e;

    if (!bd_rq_is_up(e->d.rq)) {
        e->is_rebuilding = false;             /* Redis' return rebuilds */
        free(rb);
        return;
    }
    if (rb->state < 2) {
        engine_op_begin(e);
        if (bd_job_store_list_active_page(e->d.pg, rb->state ? BD_JOB_QUEUED : BD_JOB_PROCESSING,
                                          rb->bucket, rb->after_seq, JOB_REBUILD_PAGE,
                                          engine_on_active_page, rb) < 0) {
            e->pending_ops--;
            e->is_rebuilding = false;
            free(rb);
        }
        return;
    }
    engine_restore_seq(e, rb->max_seq);
    if (rb->is_failed) {
        bd_log(BD_LOG_WARN, "job", "event=queue_rebuild_incomplete jobs=%u "
               "note=an_enqueue_failed_rebuilt_again_later", rb->sent);
        e->rebuild_retry_ms = uv_now(e->reap_timer.loop) + engine_ms(JOB_REBUILD_RETRY_S);
        e->is_rebuilding = false;
        free(rb);
        return;
    }
    if (rb->sent > 0)
        bd_log(BD_LOG_DEBUG, "job", "event=queue_rebuilt jobs=%u", rb->sent);
    char token[sizeof(rb->token)];
    memcpy(token, rb->token, sizeof(token));
    free(rb);
    engine_op_begin(e);
    if (bd_rq_rebuild_end(e->d.rq, token, engine_on_rebuild_ended, e) < 0) {
        e->pending_ops--;
        e->is_rebuilding = false;
    }
}

static void engine_on_rebuild_begun(int status, long long v, void *arg)
{
    struct engine_rebuild *rb = arg;

    (void)v;
    if (!engine_op_end(rb->e)) {
        free(rb);
        return;
    }
    if (status < 0) {
        rb->e->is_rebuilding = false;         /* the next timer, or Redis' return, retries */
        free(rb);
        return;
    }
    engine_rebuild_next(rb);
}

static void engine_rebuild(struct bd_job_engine *e)
{
    struct engine_rebuild *rb;

    if (e->is_rebuilding || !e->is_ready || e->is_stopping)
        return;
    if ((rb = calloc(1, sizeof(*rb))) == NULL)
        return;                               /* the next timer tries again */
    rb->e = e;
    rb->after_seq = LLONG_MIN;
    bd_random_hex_or_clock(rb->token, (sizeof(rb->token) - 1) / 2);
    e->is_rebuilding = true;
    engine_op_begin(e);
    if (bd_rq_rebuild_begin(e->d.rq, rb->token, engine_on_rebuild_begun, rb) < 0) {
        e->pending_ops--;
        e->is_rebuilding = false;
        free(rb);
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
        bd__engine_pump(e);
    }
}

static void engine_on_swept(int status, long long n, const struct bd_job_store_err *err,
                            void *arg)
{
    struct bd_job_engine *e = arg;
    (void)err;
    if (!engine_op_end(e))
        return;
    if (status == BD_OK && n > 0) {
        e->stats.swept += (uint64_t)n;
        bd_log(BD_LOG_INFO, "job", "event=retention_sweep deleted_jobs=%lld", n);
    }
}

static void engine_on_sweep_timer(uv_timer_t *t)
{
    struct bd_job_engine *e = t->data;
    engine_op_begin(e);
    if (bd_job_store_sweep(e->d.pg, e->d.cfg->cleanup_interval_s, engine_on_swept, e) < 0)
        e->pending_ops--;
}

static void engine_on_throughput(int status, double items_per_s,
                                 const struct bd_job_store_err *err, void *arg)
{
    struct bd_job_engine *e = arg;
    (void)err;
    if (engine_op_end(e) && status == BD_OK)
        e->throughput = items_per_s;
}

static void engine_on_tput_timer(uv_timer_t *t)
{
    struct bd_job_engine *e = t->data;
    engine_op_begin(e);
    if (bd_job_store_throughput(e->d.pg, engine_on_throughput, e) < 0)
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
    if (bd_pg_migrate(e->d.pg, engine_on_migrated, e) < 0) {
        e->pending_ops--;
        uv_timer_start(&e->migrate_timer, engine_on_migrate_timer, 1000, 0);
    }
}

static void engine_on_migrated(int status, void *arg)
{
    struct bd_job_engine *e = arg;
    const struct bd_config *cfg = e->d.cfg;

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
                   engine_ms(cfg->processing_interval_s));
    uv_timer_start(&e->renew_timer, engine_on_renew_timer, engine_ms(renew_s), engine_ms(renew_s));
    uv_timer_start(&e->reap_timer, engine_on_reap_timer, engine_ms(cfg->reaper_interval_s),
                   engine_ms(cfg->reaper_interval_s));
    double sweep = fmin(cfg->cleanup_interval_s, 60.0);
    uv_timer_start(&e->sweep_timer, engine_on_sweep_timer, engine_ms(sweep), engine_ms(sweep));
    uv_timer_start(&e->rebuild_timer, engine_on_rebuild_timer, 0,
                   engine_ms(JOB_REBUILD_INTERVAL_S));
    uv_timer_start(&e->tput_timer, engine_on_tput_timer, 0, 5000);
    bd__engine_pause_start(e);
}

struct bd_job_engine *bd_job_engine_new(const struct bd_job_deps *deps, int *err)
{
    struct bd_job_engine *e = calloc(1, sizeof(*e));
    if (e == NULL) {
        *err = BD_ENOMEM;
        return NULL;
    }
    e->d = *deps;
    uv_timer_t *timers[] = { &e->claim_timer, &e->renew_timer, &e->reap_timer,
                             &e->sweep_timer, &e->rebuild_timer, &e->migrate_timer,
                             &e->tput_timer, &e->pause_timer };
    for (size_t i = 0; i < sizeof(timers) / sizeof(timers[0]); i++) {
        uv_timer_init(e->d.loop, timers[i]);
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
    bd_rq_set_state_cb(e->d.rq, engine_on_redis_state, e);
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
                                 &e->sweep_timer, &e->rebuild_timer, &e->migrate_timer,
                                 &e->tput_timer, &e->pause_timer };
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
    uv_timer_stop(&e->pause_timer);
    bd_log(BD_LOG_INFO, "job", "event=engine_stopping active=%u", e->active);
    /* Jobs finish the operation in flight (a write commits its checkpoint), then hand
     * themselves back to the queue. Model calls and back-off waits are cut short: the
     * batch is simply redone by the next owner. */
    for (struct bd_job *j = e->jobs; j; j = j->next) {
        j->is_handing_back = true;
        bd__job_interrupt(j);
    }
    engine_maybe_stopped(e);
}

void bd_job_engine_free(struct bd_job_engine *e)
{
    free(e);
}

unsigned bd_job_engine_get_active(const struct bd_job_engine *e)
{
    return e->active;
}

unsigned bd_job_engine_get_capacity(const struct bd_job_engine *e)
{
    return e->d.cfg->max_concurrent_jobs;
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
    const struct bd_job *job = bd__job_find(e, job_id);
    if (job == NULL)
        return NULL;
    json_t *model = json_null();
    for (unsigned i = 0; job->op == BD_OP_BULK_EMBED && i < e->d.cfg->models_count; i++) {
        const struct bd_model_stats *ms;
        if (strcmp(e->d.cfg->models[i].name, job->model) != 0 ||
            (ms = bd_model_client_get_stats(e->d.models, i)) == NULL)
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
    /* The window: the batches in flight, oldest first as the job's slots hold them. */
    json_t *batches = json_array();
    const char *last_error = NULL;
    unsigned failures = job->job_failures;
    for (unsigned i = 0; batches && i < job->window; i++) {
        const struct bd_job_slot *s = &job->slots[i];
        if (s->phase == SLOT_FREE)
            continue;
        json_array_append_new(batches, json_pack("{s:i,s:s,s:i,s:i,s:b}", "batch_no",
                                                 s->batch_no, "phase",
                                                 bd__job_slot_phase_name(s->phase),
                                                 "attempts", (int)s->attempts,
                                                 "write_failures", (int)s->write_failures,
                                                 "model_call_in_flight",
                                                 s->model_call != NULL));
        if (s->batch_error[0])
            last_error = s->batch_error;
        failures += s->write_failures;
    }
    json_t *j = json_pack("{s:s,s:s,s:i,s:i,s:i,s:i,s:b,s:b,s:b,s:f,s:i,s:s?,s:o?}",
                     "worker", e->d.cfg->worker_id, "phase", bd__job_phase_name(job->phase),
                     "window", (int)job->window, "model_calls_in_flight", (int)job->at_model,
                     "batches_run_here", (int)job->batches_run,
                     "write_failures", (int)failures,
                     "cancel_requested", job->is_cancel_requested,
                     "lease_lost", job->is_lease_lost, "handing_back", job->is_handing_back,
                     "seconds_since_claim", (double)(uv_hrtime() - job->claimed_ns) / 1e9,
                     "dimension", (int)job->dim, "last_error", last_error,
                     "batches", batches);
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

/* ---- cancel and retry: the API's way to change a job ---------------------------------- */

struct change_call {
    struct bd_job_engine *e;
    char id[129];
    enum bd_job_event ev;
    bd_job_changed_cb cb;
    void *arg;
    enum bd_job_state from, to;
    unsigned tries;                   /* compare-and-set lost to a concurrent change */
};

static void change_lookup(struct change_call *c);

static void change_done(struct change_call *c, int status, enum bd_job_state state,
                        bool is_cancel_requested)
{
    struct bd_job_engine *e = c->e;
    c->cb(status, state, is_cancel_requested, c->arg);
    free(c);
    engine_op_end(e);
}

static void change_on_rq(int status, long long v, void *arg)
{
    struct change_call *c = arg;
    (void)v;
    if (status < 0)
        bd_log(BD_LOG_WARN, "job", "job=%s event=%s_signal_failed err=%s "
               "note=postgres_has_it", c->id, bd_job_event_name(c->ev), bd_strerror(status));
    if (c->ev == BD_JOB_EV_RETRY) {
        bd__engine_pump(c->e);
        change_done(c, BD_OK, BD_JOB_QUEUED, false);
    } else {
        change_done(c, BD_OK, c->to, true);
    }
}

static void change_on_cancelled(int status, bool is_changed, const struct bd_job_store_err *err,
                                void *arg)
{
    struct change_call *c = arg;

    if (status < 0) {
        bd_log(BD_LOG_WARN, "job", "job=%s event=cancel_failed err=%s", c->id, err->message);
        change_done(c, BD_EPG, c->from, false);
        return;
    }
    if (!is_changed) {                        /* the job moved meanwhile: look again */
        change_lookup(c);
        return;
    }
    bd_log(BD_LOG_INFO, "job", "job=%s event=cancel from=%s to=%s", c->id,
           bd_job_state_name(c->from), bd_job_state_name(c->to));
    /* PostgreSQL holds the request (the owner reads it before every batch, wherever it
     * runs). Here the owner stops at once; elsewhere Redis tells it at its next renewal,
     * and a queued job leaves the Redis queue. */
    if (c->to == BD_JOB_PROCESSING && bd_job_engine_cancel_local(c->e, c->id)) {
        change_done(c, BD_OK, c->to, true);
        return;
    }
    if (bd_rq_cancel(c->e->d.rq, c->id, change_on_rq, c) < 0)
        change_done(c, BD_OK, c->to, true);
}

static void change_on_requeued(int status, const struct bd_job_queue_row *row,
                               const struct bd_job_store_err *err, void *arg)
{
    struct change_call *c = arg;

    if (status < 0) {
        bd_log(BD_LOG_WARN, "job", "job=%s event=retry_failed err=%s", c->id, err->message);
        change_done(c, BD_EPG, c->from, false);
        return;
    }
    if (row == NULL) {
        /* Nothing failed and nothing is unfinished, or the job moved meanwhile. */
        if (++c->tries < 3) {
            change_lookup(c);
            return;
        }
        change_done(c, BD_ECONFLICT, c->from, false);
        return;
    }
    bd_log(BD_LOG_INFO, "job", "job=%s event=retry run_attempt=%d", c->id, row->run_attempt);
    /* Queued in PostgreSQL now; a failed enqueue is repaired by the periodic rebuild. The
     * old owner may still hold the lease (it releases just after finishing): the retry
     * enqueue then marks the job to be queued by that release, not dropped by it. */
    if (bd_rq_enqueue_retry(c->e->d.rq, row->id, (enum bd_priority)row->priority, row->seq,
                      row->model, row->total_items, change_on_rq, c) < 0) {
        bd__engine_pump(c->e);
        change_done(c, BD_OK, BD_JOB_QUEUED, false);
    }
}

static void change_on_state(int status, const struct bd_job_state_row *row,
                            const struct bd_job_store_err *err, void *arg)
{
    struct change_call *c = arg;
    enum bd_job_state to;
    int rc;

    if (status < 0) {
        bd_log(BD_LOG_WARN, "job", "job=%s event=%s_lookup_failed err=%s", c->id,
               bd_job_event_name(c->ev), err->message);
        change_done(c, BD_EPG, BD_JOB_QUEUED, false);
        return;
    }
    if (row == NULL) {
        change_done(c, BD_ENOTFOUND, BD_JOB_QUEUED, false);
        return;
    }
    if (bd_job_transition(row->state, row->is_cancel_requested, c->ev, &to, NULL) < 0 ||
        ++c->tries > 5) {
        change_done(c, BD_ECONFLICT, row->state, row->is_cancel_requested);
        return;
    }
    c->from = row->state;
    c->to = to;
    if (c->ev == BD_JOB_EV_CANCEL)
        rc = bd_job_store_cancel(c->e->d.pg_sync, c->id, c->from, c->to, change_on_cancelled, c);
    else
        rc = bd_job_store_retry(c->e->d.pg_sync, c->id, c->from, change_on_requeued, c);
    if (rc < 0)
        change_done(c, BD_EPG, row->state, row->is_cancel_requested);
}

static void change_lookup(struct change_call *c)
{
    if (bd_job_store_get_state(c->e->d.pg_sync, c->id, change_on_state, c) < 0)
        change_done(c, BD_EPG, c->from, false);
}

static int change_start(struct bd_job_engine *e, const char *job_id, enum bd_job_event ev,
                        bd_job_changed_cb cb, void *arg)
{
    struct change_call *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return BD_ENOMEM;
    *c = (struct change_call){ .e = e, .ev = ev, .cb = cb, .arg = arg };
    snprintf(c->id, sizeof(c->id), "%s", job_id);
    engine_op_begin(e);
    if (bd_job_store_get_state(e->d.pg_sync, c->id, change_on_state, c) < 0) {
        e->pending_ops--;
        free(c);
        return BD_EPG;
    }
    return BD_OK;
}

int bd_job_cancel(struct bd_job_engine *e, const char *job_id, bd_job_changed_cb cb, void *arg)
{
    return change_start(e, job_id, BD_JOB_EV_CANCEL, cb, arg);
}

int bd_job_retry(struct bd_job_engine *e, const char *job_id, bd_job_changed_cb cb, void *arg)
{
    return change_start(e, job_id, BD_JOB_EV_RETRY, cb, arg);
}
