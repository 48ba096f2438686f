/* job_internal.h -- what the files of the job module share: struct bd_job, the engine,
 * the phases. Private to src/job_run.c, src/job_write.c and src/job_maint.c.
 *
 * A job is a state machine: job->phase names where it is (start, run, finish, release).
 * While it runs, its batches move through a window of slots, each a small state machine of
 * its own (load, cache lookup, model, write): bd__job_pump() fills free slots with the
 * next pending batches, hands the one writer to a batch that is ready, and winds the job
 * down once it should stop and nothing is in flight. Each operation in flight (the job's
 * or a slot's) holds one reference on the job, taken when it starts and dropped by its
 * callback.
 */
#ifndef BATCHD_JOB_INTERNAL_H
#define BATCHD_JOB_INTERNAL_H

#include "batchd/buf.h"
#include "batchd/hashtab.h"
#include "batchd/job_batch.h"
#include "batchd/job_engine.h"
#include "batchd/pg_store.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#define JOB_REBUILD_INTERVAL_S 60.0
#define JOB_REBUILD_RETRY_S 5.0         /* after a rebuild whose enqueue failed */
#define JOB_WRITE_RETRY_MAX_S 5.0
#define JOB_RETRY_DELAY_MAX_S 300.0
/* A batch whose write PostgreSQL refuses for a reason a retry cannot fix (a value the
 * server rejects) is tried this many times, then its items are marked failed. */
#define JOB_WRITE_PERMANENT_MAX 3

/* A job's window: at most this many batches in flight at once (loaded, at the model, or
 * waiting to be written). bulk_embed uses the model's concurrency + 1 up to this bound, so
 * one job can keep every slot of its model busy while its next batch is loaded; bulk_insert
 * uses JOB_WINDOW_INSERT (one batch written while the next is loaded: a third slot and a
 * second writer gained nothing measurable, their buffers cost ~10 MiB). */
#define JOB_WINDOW_MAX 16
#define JOB_WINDOW_INSERT 2
/* Batches of one job written at once, each in its own transaction: the heavy part of one
 * (the COPY, the upserts) overlaps the other's; they meet only at the job row's counters,
 * which the second updates once the first has committed. */
#define JOB_WRITERS_MAX 2

enum job_phase {
    JOB_PHASE_START,          /* mark processing, read the job, ensure its collection */
    JOB_PHASE_RUN,            /* batches through the window (struct bd_job_slot) */
    JOB_PHASE_FINISH,         /* terminal status in PostgreSQL */
    JOB_PHASE_RELEASE,        /* drop (or hand back) the Redis lease */
    JOB_PHASE_DONE,
};

/* One batch of the window, from its load to its checkpoint. A slot's operations hold a
 * reference on the job (not on the slot, which lives in the job's allocation). */
enum slot_phase {
    SLOT_FREE,
    SLOT_CACHE,               /* bulk_embed: vectors of texts already embedded by the model */
    SLOT_EXECUTE,             /* model call in flight or backing off (bulk_embed) */
    SLOT_READY,               /* vectors or item errors in hand: waits for the job's writer */
    SLOT_WRITE_ACQUIRE,       /* stage the rows; a small batch goes in one statement
                               * (SLOT_WRITE_ONE), else lease a connection for its
                               * transaction */
    SLOT_WRITE_ONE,           /* the one-statement write of a small batch */
    SLOT_WRITE_BEGIN,         /* BEGIN, lock the batch row, check it is still pending */
    SLOT_WRITE_STAGE,         /* stage the rows by binary COPY */
    SLOT_WRITE_COMMIT,        /* vectors, item errors, checkpoint, COMMIT */
};

struct bd_job_slot {
    struct bd_job *job;
    enum slot_phase phase;
    int batch_no;
    unsigned first_index;
    unsigned item_count;
    unsigned attempts;
    json_t *items;            /* bulk_embed: the batch's input items (JSON array) */
    struct bd_buf payload;    /* bulk_insert: the batch's packed items (job_batches.payload) */
    struct bd_job_batch_item *packed; /* bulk_insert: per item, slices of payload */
    float *vectors;           /* item_count * dim, reused across batches */
    size_t vectors_cap;
    int *item_status;         /* per item: BD_OK or an error code */
    const char **item_error;  /* per item: message when failed (static or in batch_error) */
    size_t items_cap;
    char batch_error[512];    /* message shared by the items of a failed batch */
    bool is_batch_failed;     /* retries ran out: the last failed try is in attempts */
    bool has_timer_armed;
    const char *batch_error_code;
    uint64_t batch_start_ns;
    unsigned batch_ok, batch_failed, batch_cache_hits;
    struct bd_model_call *model_call;
    struct bd_embed_input *inputs;
    char *hashes;             /* item_count * 65: cache key (hex SHA-256) per item */
    unsigned char *is_cached; /* per item: vector came from the cache */
    unsigned *miss_index;     /* model input i is batch item miss_index[i] */
    unsigned miss_count;
    struct bd_htab cache_index; /* cache key -> first item with it (keys in hashes) */
    int32_t *ht_next;         /* next item with the same cache key, -1 at the end */
    struct bd_buf sql;        /* the cache lookup's statement, reused */
    unsigned write_failures;
    unsigned write_permanent; /* failures PostgreSQL will repeat (bad value, constraint) */
    struct bd_pg_conn *conn;  /* the write transaction's connection */
    struct bd_buf copy;       /* binary COPY payload, reused */
    struct bd_buf meta;       /* one item's metadata JSON, reused */
    struct bd_buf wsql;       /* the write's statement text, reused */
    uv_timer_t timer;         /* model back-off, write retry */
};

/* One of the job's writers: from the writer's hand-over (SLOT_WRITE_ACQUIRE, kept while
 * a failed write backs off) to its end. */
static inline bool bd__job_slot_is_writing(const struct bd_job_slot *s)
{
    return s->phase >= SLOT_WRITE_ACQUIRE;
}

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
    int priority;             /* enum bd_priority: orders its model requests */
    unsigned total_items, total_batches;
    unsigned max_retries;
    double timeout_s;
    double run_started_unix;   /* start of the current run: timeout_s counts from here */
    int run_attempt;
    uint64_t claimed_ns;

    /* outcome flags, checked between operations */
    bool is_cancel_requested;
    bool is_lease_lost;
    bool is_handing_back;     /* engine stopping or lease lost: give the job back */
    bool is_pausing;          /* the queue or the job's model paused: no new batch; hand
                               * the job back once nothing is in flight (sticky per run) */
    bool has_timer_armed;
    bool has_final_state;     /* final_state decided (fatal error, timeout, cancel) */
    enum bd_job_state final_state;
    char error_code[48];
    char error_message[512];

    /* the window (JOB_PHASE_RUN) */
    struct bd_job_slot slots[JOB_WINDOW_MAX];
    unsigned window;          /* slots in use at most */
    unsigned slots_ready;     /* slots set up (buffers, timer), from the first */
    unsigned busy;            /* slots not SLOT_FREE */
    unsigned at_model;        /* slots whose model call is in flight */
    int cursor;               /* highest batch_no loaded this run (-1: none yet) */
    bool is_loading;          /* a load is in flight */
    bool is_exhausted;        /* no pending batch after cursor */
    bool is_pumping, is_pump_again;
    bool is_interrupted;      /* the stop's interrupt was sent (once per run) */
    unsigned writers;         /* slots writing (at most JOB_WRITERS_MAX) */

    uv_timer_t timer;         /* job-level retries (start, load, finish) */
    unsigned job_failures;    /* consecutive failed job-level store calls */
    unsigned pending_closes;  /* slot timers still closing at the end */

    unsigned batches_run;     /* batches this process checkpointed (for logs) */
};

struct bd_job_engine {
    struct bd_job_deps d;     /* the engine's dependencies, borrowed */
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
    uv_timer_t pause_timer;   /* reads the pause state (job_pause.c) */
    unsigned pending_closes;
    unsigned pending_ops;     /* engine-level store calls whose callback is still due */
    unsigned jobs_alive;      /* struct bd_job not yet freed (active or winding down) */
    double throughput;        /* items/s over recently finished jobs, all processes */

    bool is_ready;            /* migrations applied */
    bool is_started;
    bool is_claiming;
    bool is_rebuilding;
    uint64_t rebuild_retry_ms; /* loop time before which the reaper's empty check does not
                                * start another rebuild (one whose enqueue failed) */
    unsigned rebuilds_undone;  /* rebuilds in a row whose mark was gone at their end */
    bool is_stopping;
    bool is_draining;         /* shutting down: claim nothing more (bd_job_engine_drain) */
    bool has_closed_timers;
    bd_job_engine_stopped_cb stopped_cb;
    void *stopped_arg;

    struct bd_job_engine_stats stats;

    /* The pause state (job_pause.c): this process's copy, and the paused models' names
     * as the claim's skip list (pointing into pause.models). */
    struct bd_job_pause_state pause;
    const char *skip_models[BD_JOB_PAUSED_MODELS_MAX];
    bool is_pause_reading;
};

/* job_run.c */
void bd__job_ref(struct bd_job *job);
void bd__job_unref(struct bd_job *job);
void bd__job_step(struct bd_job *job);
void bd__job_arm_timer(struct bd_job *job, double seconds);
void bd__job_interrupt(struct bd_job *job);
bool bd__job_should_stop(struct bd_job *job);
void bd__job_pump(struct bd_job *job);
void bd__job_decide(struct bd_job *job, enum bd_job_event ev, const char *code,
                    const char *fmt, ...) __attribute__((format(printf, 4, 5)));
struct bd_job *bd__job_new(struct bd_job_engine *e, const char *id);
struct bd_job *bd__job_find(const struct bd_job_engine *e, const char *id);
const char *bd__job_phase_name(enum job_phase phase);
const char *bd__job_slot_phase_name(enum slot_phase phase);
void bd__job_notify(struct bd_job_engine *e, const char *job_id, bool is_final);
void bd__job_slot_step(struct bd_job_slot *s);
void bd__job_slot_arm_timer(struct bd_job_slot *s, double seconds);
void bd__job_slot_end(struct bd_job_slot *s);

/* job_write.c: the WRITE phases of one slot. */
int bd__job_write_step(struct bd_job_slot *s);
void bd__job_fail_batch(struct bd_job_slot *s, const char *code, const char *message);

/* job_run.c: the job is paused (whole queue, or its model for bulk_embed). Cheap: two
 * loads when nothing is paused. */
bool bd__job_is_paused(const struct bd_job *job);
/* The pause state changed: pause the jobs it concerns (they hand themselves back). */
void bd__job_pause_check(struct bd_job *job);

/* job_pause.c */
void bd__engine_pause_start(struct bd_job_engine *e);   /* first read now, then every poll */

/* job_maint.c */
void bd__engine_pump(struct bd_job_engine *e);
void bd__engine_maybe_stopped(struct bd_job_engine *e);

#endif
