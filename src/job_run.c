/* job_run.c -- a job's life: the transition table, and the state machine that moves one
 * job through its batches (start, load, cache lookup, execute, finish, release).
 *
 * Owns struct bd_job from claim to release. Loop thread only; never blocks. Reaches Redis,
 * PostgreSQL and the models only through redis_queue.h, job_store.h and model_client.h;
 * knows nothing of HTTP. The WRITE phases live in job_write.c, the engine's periodic work
 * in job_maint.c.
 *
 * Exactly-once accounting: a batch's vectors, its item errors, its "done" mark and the
 * job's counters are written in one transaction that first locks the batch row and checks
 * it is still pending. A batch redone after a crash or a lost lease therefore never counts
 * twice, and vectors are upserted by (collection, id) so it adds no duplicate row.
 * SPDX-License-Identifier: MIT
 */
#include "job_internal.h"

#include "batchd/buf.h"
#include "batchd/config.h"
#include "batchd/error.h"
#include "batchd/hashtab.h"
#include "batchd/job_store.h"
#include "batchd/log.h"
#include "batchd/metrics.h"
#include "batchd/model_client.h"
#include "batchd/redis_queue.h"
#include "batchd/sha256.h"

#include <assert.h>
#include <endian.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- the transition table ------------------------------------------------------------ */

#define NO_MOVE (-1)

/* to[event][from]: the state after the event, or NO_MOVE. "cancel" from processing stays
 * processing and records the request (bd_job_transition's *sets_cancel). */
#define Q BD_JOB_QUEUED
#define P BD_JOB_PROCESSING
#define C BD_JOB_COMPLETED
#define F BD_JOB_FAILED
#define X BD_JOB_CANCELLED
#define NO NO_MOVE
static const int job_table[BD_JOB_EVENT_COUNT][BD_JOB_STATE_COUNT] = {
    /* from:                      queued  processing  completed  failed  cancelled */
    [BD_JOB_EV_START]          = { P,      P,          NO,        NO,     NO },
    [BD_JOB_EV_COMPLETE]       = { NO,     C,          NO,        NO,     NO },
    [BD_JOB_EV_FAIL]           = { NO,     F,          NO,        NO,     NO },
    [BD_JOB_EV_CANCEL]         = { X,      P,          NO,        NO,     NO },
    [BD_JOB_EV_STOP_CANCELLED] = { NO,     X,          NO,        NO,     NO },
    [BD_JOB_EV_RETRY]          = { NO,     NO,         Q,         Q,      Q  },
};
#undef Q
#undef P
#undef C
#undef F
#undef X
#undef NO

/* The same table's columns as text[] literals, for compare-and-set in SQL; test_job_run
 * checks they agree with job_table. */
static const char *const job_sources[BD_JOB_EVENT_COUNT] = {
    [BD_JOB_EV_START] = "{queued,processing}",
    [BD_JOB_EV_COMPLETE] = "{processing}",
    [BD_JOB_EV_FAIL] = "{processing}",
    [BD_JOB_EV_CANCEL] = "{queued,processing}",
    [BD_JOB_EV_STOP_CANCELLED] = "{processing}",
    [BD_JOB_EV_RETRY] = "{completed,failed,cancelled}",
};

static const char *const job_event_names[BD_JOB_EVENT_COUNT] = {
    "start", "complete", "fail", "cancel", "stop_cancelled", "retry",
};

int bd_job_transition(enum bd_job_state from, bool is_cancel_requested, enum bd_job_event ev,
                      enum bd_job_state *to, bool *sets_cancel)
{
    if ((unsigned)from >= BD_JOB_STATE_COUNT || (unsigned)ev >= BD_JOB_EVENT_COUNT)
        return BD_EINVAL;
    int next = job_table[ev][from];
    if (next == NO_MOVE)
        return BD_ECONFLICT;
    bool cancel = ev == BD_JOB_EV_CANCEL;
    /* A cancel already requested is not requested again; the owner is stopping. */
    if (cancel && from == BD_JOB_PROCESSING && is_cancel_requested)
        return BD_ECONFLICT;
    if (to)
        *to = (enum bd_job_state)next;
    if (sets_cancel)
        *sets_cancel = cancel;
    return BD_OK;
}

const char *bd_job_event_sources(enum bd_job_event ev)
{
    return (unsigned)ev < BD_JOB_EVENT_COUNT ? job_sources[ev] : "{}";
}

const char *bd_job_event_name(enum bd_job_event ev)
{
    return (unsigned)ev < BD_JOB_EVENT_COUNT ? job_event_names[ev] : "unknown";
}

static const char *const job_phase_names[] = {
    "start", "run", "finish", "release", "done",
};

static const char *const slot_phase_names[] = {
    "free", "cache", "execute", "ready", "write_acquire", "write_one", "write_begin",
    "write_stage", "write_commit",
};

const char *bd__job_phase_name(enum job_phase phase)
{
    return job_phase_names[phase];
}

const char *bd__job_slot_phase_name(enum slot_phase phase)
{
    return slot_phase_names[phase];
}

/* ---- references, timers, listeners --------------------------------------------------- */

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

/* The job's outcome, decided by an event of the table (fail, stop_cancelled) with its
 * error; the first decision stands. */
void bd__job_decide(struct bd_job *job, enum bd_job_event ev, const char *code,
                    const char *fmt, ...)
{
    enum bd_job_state to;
    va_list ap;

    if (job->has_final_state || bd_job_transition(BD_JOB_PROCESSING, false, ev, &to, NULL) < 0)
        return;
    job->has_final_state = true;
    job->final_state = to;
    if (code == NULL)
        return;
    snprintf(job->error_code, sizeof(job->error_code), "%s", code);
    va_start(ap, fmt);
    vsnprintf(job->error_message, sizeof(job->error_message), fmt, ap);
    va_end(ap);
}

void bd__job_ref(struct bd_job *job)
{
    job->refs++;
}

static void job_slot_free_memory(struct bd_job_slot *s)
{
    json_decref(s->items);
    free(s->vectors);
    free(s->item_status);
    free(s->item_error);
    free(s->inputs);
    free(s->packed);
    bd_buf_free(&s->payload);
    free(s->hashes);
    free(s->is_cached);
    free(s->miss_index);
    bd_htab_free(&s->cache_index);
    free(s->ht_next);
    bd_buf_free(&s->sql);
    bd_buf_free(&s->copy);
    bd_buf_free(&s->meta);
    bd_buf_free(&s->wsql);
}

/* The job's timer and its slots' timers are embedded: the memory goes once the last one
 * has closed. */
static void job_closed_one(struct bd_job *job)
{
    struct bd_job_engine *e = job->e;

    if (--job->pending_closes > 0)
        return;
    for (unsigned i = 0; i < job->slots_ready; i++)
        job_slot_free_memory(&job->slots[i]);
    free(job);
    e->jobs_alive--;
    bd__engine_maybe_stopped(e);
}

static void job_on_timer_closed(uv_handle_t *h)
{
    job_closed_one(h->data);
}

static void job_on_slot_timer_closed(uv_handle_t *h)
{
    job_closed_one(((struct bd_job_slot *)h->data)->job);
}

void bd__job_unref(struct bd_job *job)
{
    assert(job->refs > 0);
    if (--job->refs > 0)
        return;
    /* Last reference: the job has left the engine's list (JOB_PHASE_DONE). */
    assert(job->phase == JOB_PHASE_DONE);
    job->pending_closes = 1 + job->slots_ready;
    for (unsigned i = 0; i < job->slots_ready; i++)
        uv_close((uv_handle_t *)&job->slots[i].timer, job_on_slot_timer_closed);
    uv_close((uv_handle_t *)&job->timer, job_on_timer_closed);
}

void bd__job_notify(struct bd_job_engine *e, const char *job_id, bool is_final)
{
    struct bd_job_listener *l = e->listeners, *next;
    for (; l != NULL; l = next) {
        next = l->next;                 /* a listener may unregister itself */
        if (l->job_id == NULL || strcmp(l->job_id, job_id) == 0)
            l->cb(job_id, is_final, l->arg);
    }
}

/* Back-off for the batch's n-th retry: retry_delay * 2^(n-1), plus up to 50% jitter. */
static double job_backoff_s(const struct bd_job_engine *e, unsigned attempt)
{
    double d = e->d.cfg->retry_delay_s * pow(2.0, attempt > 0 ? attempt - 1 : 0);
    d *= 1.0 + 0.5 * ((double)rand() / (double)RAND_MAX);
    return d > JOB_RETRY_DELAY_MAX_S ? JOB_RETRY_DELAY_MAX_S : d;
}

static void job_on_timer(uv_timer_t *t)
{
    struct bd_job *job = t->data;
    job->has_timer_armed = false;
    bd__job_step(job);
    bd__job_unref(job);                 /* the reference the armed timer held */
}

void bd__job_arm_timer(struct bd_job *job, double seconds)
{
    bd__job_ref(job);
    job->has_timer_armed = true;
    uv_timer_start(&job->timer, job_on_timer, job_ms(seconds), 0);
}

static void job_slot_on_timer(uv_timer_t *t)
{
    struct bd_job_slot *s = t->data;
    struct bd_job *job = s->job;
    s->has_timer_armed = false;
    bd__job_slot_step(s);
    bd__job_unref(job);
}

void bd__job_slot_arm_timer(struct bd_job_slot *s, double seconds)
{
    bd__job_ref(s->job);
    s->has_timer_armed = true;
    uv_timer_start(&s->timer, job_slot_on_timer, job_ms(seconds), 0);
}

/* Cancel, lost lease or shutdown: cut short what can be cut (model calls, back-off waits);
 * each slot then ends at its next step and the pump winds the job down. A write in flight
 * finishes (it commits its checkpoint or rolls back). */
void bd__job_interrupt(struct bd_job *job)
{
    if (job->has_timer_armed) {
        uv_timer_stop(&job->timer);
        uv_timer_start(&job->timer, job_on_timer, 0, 0);
    }
    for (unsigned i = 0; i < job->slots_ready; i++) {
        struct bd_job_slot *s = &job->slots[i];
        if (s->model_call)
            bd_model_abort(s->model_call);
        if (s->has_timer_armed) {
            uv_timer_stop(&s->timer);
            uv_timer_start(&s->timer, job_slot_on_timer, 0, 0);
        }
    }
}

/* Between operations: should the job stop going through batches? */
bool bd__job_should_stop(struct bd_job *job)
{
    if (job->is_handing_back || job->is_lease_lost)
        return true;
    if (job->is_cancel_requested) {
        bd__job_decide(job, BD_JOB_EV_STOP_CANCELLED, NULL, NULL);
        return true;
    }
    if (job->has_final_state)
        return true;
    if (job->timeout_s > 0 && job->run_started_unix > 0 &&
        job_now_unix() > job->run_started_unix + job->timeout_s) {
        bd__job_decide(job, BD_JOB_EV_FAIL, "timeout", "job exceeded its timeout of %.0f s",
                       job->timeout_s);
        return true;
    }
    return false;
}

bool bd__job_is_paused(const struct bd_job *job)
{
    const struct bd_job_pause_state *p = &job->e->pause;

    if (p->is_paused)
        return true;
    if (p->models_count == 0 || job->op != BD_OP_BULK_EMBED)
        return false;
    return bd_job_pause_model_at(p, job->model) != 0;
}

/* From now on this run sends no new batch: batches at the model finish and are written, a
 * model retry's back-off is cut short (the slot then ends at its step, its batch left
 * pending), and once nothing is in flight the pump hands the job back. Sticky for the run:
 * a resume meanwhile only means the job is claimed again sooner. */
static void job_begin_pause(struct bd_job *job)
{
    job->is_pausing = true;
    bd_log(BD_LOG_INFO, "job", "job=%s event=pausing model=%s", job->id,
           *job->model ? job->model : "-");
    for (unsigned i = 0; i < job->slots_ready; i++) {
        struct bd_job_slot *s = &job->slots[i];
        if (s->has_timer_armed && s->phase == SLOT_EXECUTE) {
            uv_timer_stop(&s->timer);
            uv_timer_start(&s->timer, job_slot_on_timer, 0, 0);
        }
    }
}

void bd__job_pause_check(struct bd_job *job)
{
    if (job->phase == JOB_PHASE_RUN && !job->is_pausing && bd__job_is_paused(job))
        bd__job_pump(job);
}

/* Go to FINISH (terminal state) or RELEASE (hand back), from between operations. */
static void job_wind_down(struct bd_job *job)
{
    if (job->is_handing_back || job->is_lease_lost)
        job->phase = JOB_PHASE_RELEASE;
    else
        job->phase = JOB_PHASE_FINISH;
    bd__job_step(job);
}

/* ---- the window ------------------------------------------------------------------------ */

static int job_slot_reserve(struct bd_job_slot *s, unsigned n)
{
    struct bd_job *job = s->job;
    /* bulk_insert vectors stay in their packed form: no float buffer needed. */
    size_t need = job->op == BD_OP_BULK_EMBED ? (size_t)n * job->dim : 0;
    if (need > s->vectors_cap) {
        float *v = realloc(s->vectors, need * sizeof(float));
        if (v == NULL)
            return BD_ENOMEM;
        s->vectors = v;
        s->vectors_cap = need;
    }
    if (n <= s->items_cap)
        return BD_OK;
#define SLOT_GROW(field, size)                                                                \
    do {                                                                                      \
        void *p_ = realloc(s->field, (size_t)n * (size));                                     \
        if (p_ == NULL)                                                                       \
            return BD_ENOMEM;                                                                 \
        s->field = p_;                                                                        \
    } while (0)
    SLOT_GROW(item_status, sizeof(int));
    SLOT_GROW(item_error, sizeof(char *));
    SLOT_GROW(inputs, sizeof(*s->inputs));
    SLOT_GROW(hashes, 65);
    SLOT_GROW(is_cached, 1);
    SLOT_GROW(miss_index, sizeof(unsigned));
    SLOT_GROW(ht_next, sizeof(int32_t));
    SLOT_GROW(packed, sizeof(*s->packed));
#undef SLOT_GROW
    s->items_cap = n;
    return BD_OK;
}

/* The window's size: enough batches for every concurrency slot of the job's model plus the
 * one being loaded or written (bulk_embed), or one written while the next is loaded
 * (bulk_insert); never more than the job has batches. Slots are set up on first use. */
static void job_open_window(struct bd_job *job)
{
    unsigned w = JOB_WINDOW_INSERT;
    if (job->op == BD_OP_BULK_EMBED) {
        const struct bd_model_config *mc = bd_config_get_model(job->e->d.cfg, job->model);
        w = (mc ? mc->concurrency : 1) + 1;
    }
    if (w > JOB_WINDOW_MAX)
        w = JOB_WINDOW_MAX;
    if (job->total_batches > 0 && w > job->total_batches)
        w = job->total_batches;
    if (w < 1)
        w = 1;
    for (; job->slots_ready < w; job->slots_ready++) {
        struct bd_job_slot *s = &job->slots[job->slots_ready];
        s->job = job;
        bd_buf_init(&s->payload);
        bd_buf_init(&s->sql);
        bd_buf_init(&s->copy);
        bd_buf_init(&s->meta);
        bd_buf_init(&s->wsql);
        bd_htab_init(&s->cache_index);
        uv_timer_init(job->e->d.loop, &s->timer);
        s->timer.data = s;
    }
    job->window = w;
    job->busy = 0;
    job->at_model = 0;
    job->cursor = -1;
    job->is_exhausted = false;
    job->is_interrupted = false;
    job->writers = 0;
}

/* A slot is done with its batch (checkpointed, found done by someone else, or dropped
 * because the job stops): free it and let the pump go on. */
void bd__job_slot_end(struct bd_job_slot *s)
{
    struct bd_job *job = s->job;

    assert(s->phase != SLOT_FREE && job->busy > 0);
    if (bd__job_slot_is_writing(s))
        job->writers--;
    s->phase = SLOT_FREE;
    json_decref(s->items);
    s->items = NULL;
    job->busy--;
    bd__job_pump(job);
}

/* Copy the batch's packed payload (the row dies with the callback) and slice it into
 * items (job_batch.h). Returns NULL, or why the payload cannot be read. */
static const char *job_unpack_batch(struct bd_job_slot *s, const struct bd_job_batch_row *row)
{
    struct bd_buf *b = &s->payload;
    const char *why = NULL;

    if (row->payload == NULL)
        return "it has no packed payload";
    bd_buf_reset(b);
    bd_buf_append(b, row->payload, row->payload_len);
    if (b->is_failed)
        return "out of memory";
    /* Any dimension: an item whose dimension is not the collection's fails alone. */
    if (bd_job_batch_unpack(b->data, b->len, s->item_count, 0, s->packed, &why) < 0)
        return why ? why : "the packed payload cannot be read";
    return NULL;
}

/* A loaded batch takes the free slot s and starts through its phases. */
static void job_slot_begin(struct bd_job_slot *s, const struct bd_job_batch_row *row)
{
    struct bd_job *job = s->job;
    const char *why = NULL;

    s->phase = job->op == BD_OP_BULK_EMBED ? SLOT_CACHE : SLOT_EXECUTE;
    job->busy++;
    s->batch_no = row->batch_no;
    s->first_index = row->first_index;
    s->item_count = row->item_count;
    s->attempts = row->attempts;
    s->batch_start_ns = uv_hrtime();
    s->batch_cache_hits = 0;
    s->batch_error[0] = '\0';
    s->batch_error_code = NULL;
    s->is_batch_failed = false;
    s->write_failures = 0;
    s->write_permanent = 0;
    s->miss_count = 0;
    if (job_slot_reserve(s, s->item_count) != BD_OK) {
        why = "out of memory";
    } else if (job->op == BD_OP_BULK_INSERT) {
        why = job_unpack_batch(s, row);
    } else {
        json_error_t jerr;
        s->items = row->items_json ? json_loadb(row->items_json, row->items_len, 0, &jerr)
                                   : NULL;
        if (s->items == NULL || !json_is_array(s->items) ||
            json_array_size(s->items) != s->item_count)
            why = "its items are not a JSON array of the right length";
    }
    if (why) {
        bd__job_decide(job, BD_JOB_EV_FAIL, "corrupt_batch",
                       "batch %d of the job cannot be read: %s", s->batch_no, why);
        bd__job_slot_end(s);
        return;
    }
    bd__job_slot_step(s);
}

/* A loaded batch (or the news that none is left after the cursor) into a free slot. */
static void job_take_loaded(struct bd_job *job, const struct bd_job_batch_row *row)
{
    if (row->is_cancel_requested && !job->is_cancel_requested) {
        /* Recorded in PostgreSQL by a DELETE that could not reach us through Redis. */
        bd_log(BD_LOG_INFO, "job", "job=%s event=cancel_seen_in_store", job->id);
        job->is_cancel_requested = true;
        bd__job_interrupt(job);
    }
    if (!row->has_batch) {
        job->is_exhausted = true;
    } else if (!bd__job_should_stop(job) && !job->is_pausing) {
        struct bd_job_slot *s = NULL;
        for (unsigned i = 0; i < job->window && s == NULL; i++)
            if (job->slots[i].phase == SLOT_FREE)
                s = &job->slots[i];
        assert(s != NULL);                  /* loads go only into a free slot */
        job->cursor = row->batch_no;
        job_slot_begin(s, row);
    }
}

static void job_on_batch_loaded(int status, const struct bd_job_batch_row *row,
                                const struct bd_job_store_err *err, void *arg)
{
    struct bd_job *job = arg;

    job->is_loading = false;
    if (status < 0) {
        job->job_failures++;
        bd_log(BD_LOG_WARN, "job", "job=%s event=load_failed err=%s", job->id, err->message);
        bd__job_arm_timer(job, fmin(0.1 * job->job_failures, JOB_WRITE_RETRY_MAX_S));
        bd__job_unref(job);
        return;
    }
    job->job_failures = 0;
    job_take_loaded(job, row);
    bd__job_pump(job);
    bd__job_unref(job);
}

/* The next pending batch after the cursor. The batches are numbered 0..total_batches-1,
 * so past the last one there is nothing to ask for. */
static void job_load_next(struct bd_job *job)
{
    if (job->total_batches > 0 && job->cursor >= (int)job->total_batches - 1) {
        job->is_exhausted = true;
        return;
    }
    job->is_loading = true;
    bd__job_ref(job);
    if (bd_job_store_load_batch(job->e->d.pg, job->id, job->cursor, job_on_batch_loaded,
                                job) < 0) {
        job->is_loading = false;
        bd__job_unref(job);
        bd_log(BD_LOG_WARN, "job", "job=%s event=step_failed phase=load", job->id);
        bd__job_arm_timer(job, 1.0);        /* the store is down: try again soon */
    }
}

/* One pass of the window: hand free writers to the ready batches with the lowest numbers,
 * fill free slots with the next pending batches (one load at a time, in batch order), and
 * end the run once it should stop (or every batch is through) and nothing is in flight.
 *
 * Each batch is written in its own transaction that checks the batch is still pending:
 * every checkpoint is exactly once whatever the order, and a crash never skips a batch (a
 * batch not checkpointed stays pending and is redone). */
static void job_pump_once(struct bd_job *job)
{
    if (bd__job_should_stop(job)) {
        if (!job->is_interrupted) {
            job->is_interrupted = true;
            bd__job_interrupt(job);
        }
        /* Ready batches are not written: the job stops within one write. */
        for (unsigned i = 0; i < job->window; i++)
            if (job->slots[i].phase == SLOT_READY)
                bd__job_slot_end(&job->slots[i]);
        if (job->busy == 0 && !job->is_loading && !job->has_timer_armed)
            job_wind_down(job);
        return;
    }
    if (!job->is_pausing && bd__job_is_paused(job))
        job_begin_pause(job);
    while (job->writers < JOB_WRITERS_MAX) {
        struct bd_job_slot *best = NULL;
        for (unsigned i = 0; i < job->window; i++) {
            struct bd_job_slot *s = &job->slots[i];
            if (s->phase == SLOT_READY && (best == NULL || s->batch_no < best->batch_no))
                best = s;
        }
        if (best == NULL)
            break;
        job->writers++;
        best->phase = SLOT_WRITE_ACQUIRE;
        bd__job_slot_step(best);
        if (job->phase != JOB_PHASE_RUN)
            return;
    }
    if (job->is_pausing) {
        /* Paused: what is at the model is written; then the job goes back to its queue. */
        if (job->busy == 0 && !job->is_loading && !job->has_timer_armed) {
            bd_log(BD_LOG_INFO, "job", "job=%s event=paused_hand_back batches_run=%u",
                   job->id, job->batches_run);
            job->is_handing_back = true;
            job_wind_down(job);
        }
        return;
    }
    if (!job->is_loading && !job->is_exhausted && !job->has_timer_armed &&
        job->busy < job->window)
        job_load_next(job);
    if (job->is_exhausted && job->busy == 0 && !job->is_loading && !job->has_timer_armed)
        job_wind_down(job);
}

void bd__job_pump(struct bd_job *job)
{
    if (job->phase != JOB_PHASE_RUN)
        return;
    if (job->is_pumping) {
        job->is_pump_again = true;
        return;
    }
    job->is_pumping = true;
    do {
        job->is_pump_again = false;
        job_pump_once(job);
    } while (job->is_pump_again && job->phase == JOB_PHASE_RUN);
    job->is_pumping = false;
}

/* ---- START: mark processing and read the job ------------------------------------------ */

/* The start comes with the job's first pending batch (one round trip for both). */
static void job_on_started(int status, const struct bd_job_start_row *row,
                           const struct bd_job_batch_row *batch,
                           const struct bd_job_store_err *err, void *arg)
{
    struct bd_job *job = arg;
    struct bd_job_engine *e = job->e;

    if (status < 0) {
        /* Could not even read the job: hand it back after a pause, so a store that keeps
         * failing is not hammered by an immediate claim-fail-release loop. */
        bd_log(BD_LOG_WARN, "job", "job=%s event=start_failed err=%s", job->id, err->message);
        job->is_handing_back = true;
        job->phase = JOB_PHASE_RELEASE;
        bd__job_arm_timer(job, 1.0);
    } else if (row == NULL) {
        /* Terminal or deleted: the queue entry was stale. Drop it without finishing. */
        bd_log(BD_LOG_DEBUG, "job", "job=%s event=stale_claim", job->id);
        job->phase = JOB_PHASE_RELEASE;
        bd__job_step(job);
    } else if (row->collection_dim < 0) {
        /* The collection appeared concurrently (see bd_job_store_start): start again. */
        bd_log(BD_LOG_DEBUG, "job", "job=%s event=collection_raced", job->id);
        bd__job_arm_timer(job, 0.02);
    } else {
        job->op = row->op;
        snprintf(job->model, sizeof(job->model), "%s", row->model);
        snprintf(job->collection, sizeof(job->collection), "%s", row->collection);
        job->total_items = row->total_items;
        job->total_batches = row->total_batches;
        job->priority = row->priority;
        job->timeout_s = row->timeout_s >= 0 ? row->timeout_s : e->d.cfg->job_timeout_s;
        job->max_retries = row->max_retries >= 0 ? (unsigned)row->max_retries
                                                 : e->d.cfg->retry_attempts;
        job->is_cancel_requested = row->is_cancel_requested;
        job->run_started_unix = row->run_started_unix > 0 ? row->run_started_unix
                                                          : job_now_unix();
        job->run_attempt = row->run_attempt;
        job->dim = row->dim;
        if (job->op == BD_OP_BULK_EMBED) {
            const struct bd_model_config *mc = bd_config_get_model(e->d.cfg, job->model);
            if (mc == NULL)
                bd__job_decide(job, BD_JOB_EV_FAIL, "unknown_model",
                               "model '%s' is not configured", job->model);
            else
                job->dim = mc->dimensions;
        }
        if (!job->has_final_state && row->collection_dim != (long)job->dim)
            bd__job_decide(job, BD_JOB_EV_FAIL, "dimension_mismatch",
                           "collection '%s' holds %ld-dimensional vectors, job has %u",
                           job->collection, row->collection_dim, job->dim);
        job_open_window(job);
        bd_log(BD_LOG_INFO, "job", "job=%s event=claimed operation=%s items=%u batches=%u "
               "window=%u", job->id, bd_job_operation_name(job->op), job->total_items,
               job->total_batches, job->window);
        job->phase = JOB_PHASE_RUN;
        if (batch != NULL)
            job_take_loaded(job, batch);
        bd__job_pump(job);
    }
    bd__job_unref(job);
}

/* ---- CACHE: texts this model already embedded (any job, any process) ------------------ */

/* Keys: SHA-256 of (model, version, max_input_chars, text). Builds the hash -> items table
 * used to scatter cached rows back (a text may appear several times in one batch). */
static int job_cache_prepare(struct bd_job_slot *s)
{
    struct bd_job *job = s->job;
    const struct bd_model_config *mc = bd_config_get_model(job->e->d.cfg, job->model);

    if (bd_htab_reset(&s->cache_index, s->item_count) != BD_OK)
        return BD_ENOMEM;
    for (unsigned i = 0; i < s->item_count; i++) {
        json_t *t = json_object_get(json_array_get(s->items, i), "text");
        struct bd_sha256 sh;
        unsigned char d[32];
        char *hex = s->hashes + (size_t)i * 65;
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
        if (bd_sha256_final(&sh, d) != BD_OK)
            return BD_ENOMEM;                 /* the step is tried again shortly */
        for (int k = 0; k < 32; k++) {
            hex[2 * k] = digits[d[k] >> 4];
            hex[2 * k + 1] = digits[d[k] & 15];
        }
        hex[64] = '\0';
        s->is_cached[i] = 0;
        bool is_new;
        uint32_t *first = bd_htab_put(&s->cache_index, hex, 64, &is_new);
        if (first == NULL)
            return BD_ENOMEM;
        s->ht_next[i] = is_new ? -1 : (int32_t)*first;   /* chain items with one text */
        *first = i;
    }
    return BD_OK;
}

static void job_on_cache_rows(int status, const struct bd_job_cache_hit *hits, unsigned count,
                              const struct bd_job_store_err *err, void *arg)
{
    struct bd_job_slot *s = arg;
    struct bd_job *job = s->job;

    /* A cache that cannot be read is only a lost saving: embed everything. */
    if (status < 0)
        bd_log(BD_LOG_WARN, "job", "job=%s batch=%d event=cache_lookup_failed err=%s",
               job->id, s->batch_no, err->message);
    for (unsigned r = 0; status == BD_OK && r < count; r++) {
        const uint32_t *first = bd_htab_get(&s->cache_index, hits[r].hash, 64);
        for (int32_t i = first ? (int32_t)*first : -1; i >= 0; i = s->ht_next[i]) {
            float *v = s->vectors + (size_t)i * job->dim;
            if (bd_pg_float4_array_decode(hits[r].embedding, (size_t)hits[r].embedding_len,
                                          job->dim, v) == BD_OK)
                s->is_cached[i] = 1;
        }
    }
    s->miss_count = 0;
    s->batch_cache_hits = 0;
    for (unsigned i = 0; i < s->item_count; i++) {
        if (s->is_cached[i])
            s->batch_cache_hits++;
        else
            s->miss_index[s->miss_count++] = i;
    }
    job->e->stats.cache_hits += s->batch_cache_hits;
    job->e->stats.cache_misses += s->miss_count;
    s->phase = SLOT_EXECUTE;
    bd__job_slot_step(s);
    bd__job_unref(job);
}

static int job_cache_query(struct bd_job_slot *s)
{
    int rc = job_cache_prepare(s);
    if (rc < 0)
        return rc;
    return bd_job_store_cache_lookup(s->job->e->d.pg, &s->sql, s->hashes, 65, s->item_count,
                                     job_on_cache_rows, s);
}

/* ---- EXECUTE ------------------------------------------------------------------------- */

/* Cached items are already in place; the model's rows (for the misses only, in order)
 * are scattered to their items. res is borrowed. */
static void job_take_model_vectors(struct bd_job_slot *s, const struct bd_embed_result *res)
{
    unsigned dim = s->job->dim;

    s->batch_ok = s->batch_failed = 0;
    for (unsigned i = 0; i < s->item_count; i++) {
        if (s->is_cached[i]) {
            s->item_status[i] = BD_OK;
            s->batch_ok++;
        }
    }
    for (unsigned m = 0; res && m < s->miss_count; m++) {
        unsigned i = s->miss_index[m];
        s->item_status[i] = res->item_status[m];
        if (res->item_status[m] == BD_OK) {
            memcpy(s->vectors + (size_t)i * dim, res->vectors + (size_t)m * dim,
                   dim * sizeof(float));
            s->batch_ok++;
        } else {
            s->item_error[i] = "text is longer than the model's max_input_chars";
            s->batch_failed++;
        }
    }
}

static void job_on_attempt_recorded(int status, const struct bd_job_store_err *err, void *arg)
{
    (void)status;
    (void)err;
    bd__job_unref(arg);
}

/* Make attempts and the last error visible in /debug while the batch is retried. */
static void job_record_attempt(struct bd_job_slot *s, const char *message)
{
    struct bd_job *job = s->job;
    bd__job_ref(job);
    if (bd_job_store_record_attempt(job->e->d.pg, job->id, s->batch_no, s->attempts, message,
                                    job_on_attempt_recorded, job) < 0)
        bd__job_unref(job);
}

/* The batch has its vectors (or its items' errors): it waits for the job's writer. */
static void job_slot_ready(struct bd_job_slot *s)
{
    s->phase = SLOT_READY;
    bd__job_pump(s->job);
}

static void job_on_model_done(int status, const struct bd_embed_result *res, const char *message,
                              bool is_retryable, void *arg)
{
    struct bd_job_slot *s = arg;
    struct bd_job *job = s->job;
    struct bd_job_engine *e = job->e;

    s->model_call = NULL;
    job->at_model--;
    if (status == BD_ECANCELED || bd__job_should_stop(job)) {
        bd__job_slot_end(s);                /* the batch is redone by whoever runs it next */
    } else if (status < 0) {
        s->attempts++;
        job_record_attempt(s, message);
        bd_log(BD_LOG_WARN, "job", "job=%s batch=%d event=model_error err=%s attempt=%u/%u "
               "retryable=%d msg=\"%s\"", job->id, s->batch_no, bd_err_api_code(status),
               s->attempts, job->max_retries + 1, is_retryable, message ? message : "");
        if (is_retryable && s->attempts <= job->max_retries) {
            /* Not before the model's circuit lets a request through again: a retry refused
             * by an open circuit would spend an attempt without trying the model, and a
             * short outage would fail the batch's items. */
            double wait = job_backoff_s(e, s->attempts);
            double open_s = bd_model_get_wait_s(e->d.models, job->model);
            e->stats.batch_retries++;
            bd__job_slot_arm_timer(s, open_s > wait ? open_s + 0.1 * wait : wait);
        } else {
            char msg[512];
            snprintf(msg, sizeof(msg), "%s", message ? message : bd_strerror(status));
            bd__job_fail_batch(s, bd_err_api_code(status), msg);
        }
    } else {
        job_take_model_vectors(s, res);
        job_slot_ready(s);
    }
    bd__job_unref(job);
}

/* bulk_insert: the vectors came with the job, validated at submit and stored as binary
 * real[] values; an item whose stored dimension is not the collection's fails alone. */
static void job_take_given_vectors(struct bd_job_slot *s)
{
    s->batch_ok = s->batch_failed = 0;
    for (unsigned i = 0; i < s->item_count; i++) {
        if (s->packed[i].dim != s->job->dim) {
            s->item_status[i] = BD_EINVAL;
            s->item_error[i] = "embedding has the wrong dimension";
            s->batch_failed++;
            continue;
        }
        s->item_status[i] = BD_OK;
        s->batch_ok++;
    }
}

/* Returns BD_OK when the slot moved on by itself (no call in flight: the step's reference
 * is dropped here), 1 when a model call is in flight, or an error. The model's dispatcher
 * orders the call by the job's priority, then by how many of the job's calls are already
 * at the model (jobs of one priority take turns). */
static int job_execute(struct bd_job_slot *s)
{
    struct bd_job *job = s->job;

    if (job->op == BD_OP_BULK_INSERT || s->miss_count == 0) {
        if (job->op == BD_OP_BULK_INSERT)
            job_take_given_vectors(s);
        else
            job_take_model_vectors(s, NULL);    /* every text came from the cache */
        bd__job_unref(job);                     /* the step's reference: nothing in flight */
        job_slot_ready(s);
        return BD_OK;
    }
    for (unsigned m = 0; m < s->miss_count; m++) {
        json_t *t = json_object_get(json_array_get(s->items, s->miss_index[m]), "text");
        s->inputs[m].text = json_string_value(t) ? json_string_value(t) : "";
        s->inputs[m].len = json_string_length(t);
    }
    struct bd_model_order order = { .priority = job->priority, .rank = job->at_model };
    int rc = bd_model_embed(job->e->d.models, job->model, s->inputs, s->miss_count, &order,
                            job_on_model_done, s, &s->model_call);
    if (rc < 0)
        return rc;
    job->at_model++;
    return 1;
}

/* ---- a slot's step --------------------------------------------------------------------- */

/* Start the operation of the slot's phase. The reference taken here belongs to the
 * operation; its callback drops it. A slot that has not yet opened a transaction stops
 * here when the job should stop. */
void bd__job_slot_step(struct bd_job_slot *s)
{
    struct bd_job *job = s->job;
    int err;

    if ((s->phase == SLOT_CACHE || s->phase == SLOT_EXECUTE ||
         s->phase == SLOT_WRITE_ACQUIRE) && bd__job_should_stop(job)) {
        bd__job_slot_end(s);
        return;
    }
    if ((s->phase == SLOT_CACHE || s->phase == SLOT_EXECUTE) &&
        (job->is_pausing || bd__job_is_paused(job))) {
        if (!job->is_pausing)
            job_begin_pause(job);
        bd__job_slot_end(s);                  /* not sent: the batch stays pending */
        return;
    }
    if (s->phase == SLOT_READY) {
        bd__job_pump(job);
        return;
    }
    bd__job_ref(job);
    switch (s->phase) {
    case SLOT_CACHE:
        err = job_cache_query(s);
        break;
    case SLOT_EXECUTE:
        err = job_execute(s);
        break;
    case SLOT_WRITE_ACQUIRE:
    case SLOT_WRITE_ONE:
    case SLOT_WRITE_BEGIN:
    case SLOT_WRITE_STAGE:
    case SLOT_WRITE_COMMIT:
        err = bd__job_write_step(s);
        break;
    default:
        assert(!"slot phase has no async operation");
        err = BD_EINTERNAL;
    }
    if (err >= 0)
        return;
    bd__job_unref(job);                       /* the callee will not call back */
    bd_log(BD_LOG_WARN, "job", "job=%s batch=%d event=step_failed phase=%s err=%s", job->id,
           s->batch_no, slot_phase_names[s->phase], bd_strerror(err));
    if (s->phase == SLOT_EXECUTE && err == BD_ENOTFOUND) {
        bd__job_decide(job, BD_JOB_EV_FAIL, "unknown_model", "model '%s' is not configured",
                       job->model);
        bd__job_slot_end(s);
    } else if (s->phase == SLOT_EXECUTE) {
        char msg[128];
        snprintf(msg, sizeof(msg), "could not start the model request: %s", bd_strerror(err));
        bd__job_fail_batch(s, "processing_error", msg);
    } else {
        /* A store call could not even be sent (store down): try this phase again soon. */
        bd__job_slot_arm_timer(s, 1.0);
    }
}

/* ---- FINISH and RELEASE -------------------------------------------------------------- */

static void job_on_finished(int status, const struct bd_job_finish_row *row,
                            const struct bd_job_store_err *err, void *arg)
{
    struct bd_job *job = arg;

    if (status < 0) {
        job->job_failures++;
        bd_log(BD_LOG_WARN, "job", "job=%s event=finish_failed err=%s", job->id, err->message);
        if (job->is_handing_back) {
            job->phase = JOB_PHASE_RELEASE;     /* shutting down: the next owner finishes */
            bd__job_step(job);
        } else {
            bd__job_arm_timer(job, fmin(0.1 * job->job_failures, JOB_WRITE_RETRY_MAX_S));
        }
    } else if (row && row->state == BD_JOB_PROCESSING) {
        /* A batch this run checkpointed is pending again: PostgreSQL lost the commit (the
         * engine's are asynchronous) in a crash. Hand the job back to the head of its
         * queue; the next claim loads the pending batches and runs them. */
        bd_log(BD_LOG_WARN, "job", "job=%s event=finish_deferred reason=pending_batches "
               "processed=%lld failed=%lld note=checkpoint_lost_rerun", job->id,
               row->processed, row->failed);
        job->is_handing_back = true;
        job->phase = JOB_PHASE_RELEASE;
        bd__job_step(job);
    } else {
        const char *st = row ? bd_job_state_name(row->state) : "(not processing)";
        bd_log(BD_LOG_INFO, "job", "job=%s event=finished status=%s processed=%lld failed=%lld "
               "batches_here=%u error=%s", job->id, st, row ? row->processed : -1,
               row ? row->failed : -1, job->batches_run,
               job->error_code[0] ? job->error_code : "-");
        if (row)
            bd_metrics_job_finished(job->e->d.metrics, job->op,
                                    bd_metrics_model_slot(job->e->d.cfg, job->model), st,
                                    job_now_unix() - job->run_started_unix);
        job->phase = JOB_PHASE_RELEASE;
        bd__job_step(job);
    }
    bd__job_unref(job);
}

static int job_finish_query(struct bd_job *job)
{
    /* No decision yet: "complete", and the counters (and a cancel PostgreSQL recorded)
     * decide in the statement. */
    enum bd_job_state final = job->has_final_state ? job->final_state : BD_JOB_COMPLETED;
    return bd_job_store_finish(job->e->d.pg, job->id, final, job->error_code,
                               job->error_message, job_on_finished, job);
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
    bd__job_notify(e, job->id, true);
    bd__job_unref(job);                       /* this operation's reference */
    bd__job_unref(job);                       /* the engine's reference */
    if (e->is_stopping)
        bd__engine_maybe_stopped(e);
    else
        bd__engine_pump(e);
}

static int job_release(struct bd_job *job)
{
    if (job->is_lease_lost) {
        /* Not ours any more: nothing to release. Finish on the next turn. */
        job->phase = JOB_PHASE_DONE;
        bd__job_arm_timer(job, 0);
        bd__job_unref(job);                   /* the step's reference: nothing in flight */
        return BD_OK;
    }
    return bd_rq_release(job->e->d.rq, job->id, job->is_handing_back, job_on_released, job);
}

/* ---- the job's step -------------------------------------------------------------------- */

/* Start the operation of the job's phase. The reference taken here belongs to the
 * operation; its callback drops it. */
void bd__job_step(struct bd_job *job)
{
    int err = BD_OK;

    if (job->phase == JOB_PHASE_DONE) {
        /* Reached only through job_release's lease-lost path (timer). */
        bd__job_ref(job);
        job_on_released(BD_OK, 0, job);
        return;
    }
    if (job->phase == JOB_PHASE_RUN) {        /* a load retry's timer */
        bd__job_pump(job);
        return;
    }
    bd__job_ref(job);
    switch (job->phase) {
    case JOB_PHASE_START:
        err = bd_job_store_start_load(job->e->d.pg, job->id, job->e->d.cfg->worker_id,
                                      bd_job_event_sources(BD_JOB_EV_START), job_on_started,
                                      job);
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
    bd__job_unref(job);                       /* the callee will not call back */
    bd_log(BD_LOG_WARN, "job", "job=%s event=step_failed phase=%s err=%s", job->id,
           job_phase_names[job->phase], bd_strerror(err));
    if (job->phase == JOB_PHASE_RELEASE) {
        bd__job_ref(job);                     /* job_on_released drops an operation ref */
        job_on_released(err, 0, job);
    } else {
        /* A store call could not even be sent (store down): try this phase again soon. */
        bd__job_arm_timer(job, 1.0);
    }
}

struct bd_job *bd__job_new(struct bd_job_engine *e, const char *id)
{
    struct bd_job *job = calloc(1, sizeof(*job));
    if (job == NULL)
        return NULL;
    job->e = e;
    job->refs = 1;                            /* the engine's reference */
    snprintf(job->id, sizeof(job->id), "%s", id);
    job->claimed_ns = uv_hrtime();
    job->cursor = -1;
    uv_timer_init(e->d.loop, &job->timer);
    job->timer.data = job;
    job->next = e->jobs;
    if (e->jobs)
        e->jobs->prev = job;
    e->jobs = job;
    e->active++;
    e->jobs_alive++;
    return job;
}

struct bd_job *bd__job_find(const struct bd_job_engine *e, const char *id)
{
    for (struct bd_job *j = e->jobs; j; j = j->next)
        if (strcmp(j->id, id) == 0)
            return j;
    return NULL;
}

bool bd_job_engine_cancel_local(struct bd_job_engine *e, const char *job_id)
{
    struct bd_job *job = bd__job_find(e, job_id);
    if (job == NULL)
        return false;
    if (!job->is_cancel_requested) {
        bd_log(BD_LOG_INFO, "job", "job=%s event=cancel_requested phase=%s", job->id,
               job_phase_names[job->phase]);
        job->is_cancel_requested = true;
        bd__job_interrupt(job);
    }
    return true;
}
