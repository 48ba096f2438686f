/* job_engine.h -- claims jobs from the queue and moves each through its batches:
 * load batch -> execute (model call or given vectors) -> write rows + checkpoint -> next.
 *
 * A job is a state machine advanced only by callbacks on the loop. PostgreSQL is the
 * source of truth (jobs, job_batches, job_item_errors, collections, vectors); Redis is the
 * queue and lease index. Also owns the periodic work every process does: lease renewal,
 * the expired-lease reaper, queue rebuild from PostgreSQL, retention sweep.
 * Knows nothing of HTTP. Loop thread only.
 */
#ifndef BATCHD_JOB_ENGINE_H
#define BATCHD_JOB_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

struct bd_job_engine;
struct bd_config;
struct bd_pg;
struct bd_rq;
struct bd_metrics;
struct bd_model_client;
#include <uv.h>

#include "batchd/job_types.h"

/* ---- the one table of a job's life ------------------------------------------------------
 *
 *   queued     --start-->          processing
 *   processing --start-->          processing   (taken over after a lost lease or crash)
 *   processing --complete-->       completed    (every batch done; failed items counted)
 *   processing --fail-->           failed       (all items failed, timeout, fatal error)
 *   queued     --cancel-->         cancelled
 *   processing --cancel-->         processing + cancel requested
 *   processing --stop_cancelled--> cancelled    (the owner stopped after a cancel)
 *   completed | failed | cancelled --retry--> queued
 *
 * Everything else is refused (BD_ECONFLICT). No other module changes a job's state: the
 * API calls bd_job_cancel / bd_job_retry (and bd_job_submit), and the store's statements
 * are compare-and-set on the source states this table gives. */
enum bd_job_event {
    BD_JOB_EV_START = 0,
    BD_JOB_EV_COMPLETE,
    BD_JOB_EV_FAIL,
    BD_JOB_EV_CANCEL,
    BD_JOB_EV_STOP_CANCELLED,
    BD_JOB_EV_RETRY,
};
#define BD_JOB_EVENT_COUNT 6

/* The state a job in `from` moves to on ev; *sets_cancel (may be NULL) tells whether the
 * event records a cancel request. BD_OK, or BD_ECONFLICT when the table refuses. Pure. */
int bd_job_transition(enum bd_job_state from, bool is_cancel_requested, enum bd_job_event ev,
                      enum bd_job_state *to, bool *sets_cancel);

/* The states ev may leave, as a PostgreSQL text[] literal ("{queued,processing}") for the
 * store's compare-and-set statements. Constant string. */
const char *bd_job_event_sources(enum bd_job_event ev);
const char *bd_job_event_name(enum bd_job_event ev);

/* ---- the engine ---------------------------------------------------------------------- */

/* What the engine works with, all borrowed and outliving it. */
struct bd_job_deps {
    uv_loop_t *loop;
    const struct bd_config *cfg;
    struct bd_pg *pg;                  /* the engine's pool (asynchronous commit) */
    struct bd_pg *pg_sync;             /* synchronous commit: cancel and retry answers */
    struct bd_rq *rq;
    struct bd_model_client *models;
    struct bd_metrics *metrics;
};

/* Create the engine (not yet claiming). NULL with *err on failure. deps is copied. */
struct bd_job_engine *bd_job_engine_new(const struct bd_job_deps *deps, int *err);

/* Cancel a job (DELETE): queued -> cancelled at once; processing -> cancel requested,
 * recorded in PostgreSQL (read by the owner before every batch, wherever it runs) and
 * signalled to the owner (here directly, elsewhere through Redis). cb gets BD_OK with the
 * state after the call, BD_ENOTFOUND, BD_ECONFLICT (terminal, or already being cancelled;
 * `state` then says which) or a store error. Callback contract as usual. */
typedef void (*bd_job_changed_cb)(int status, enum bd_job_state state, bool is_cancel_requested,
                                  void *arg);
int bd_job_cancel(struct bd_job_engine *e, const char *job_id, bd_job_changed_cb cb, void *arg);

/* Retry a finished job's failed items and unfinished batches: terminal -> queued, then
 * queued in Redis. cb: BD_OK (state queued), BD_ENOTFOUND, BD_ECONFLICT (not finished, or
 * nothing to retry) or a store error. */
int bd_job_retry(struct bd_job_engine *e, const char *job_id, bd_job_changed_cb cb, void *arg);

/* Start claiming and the periodic timers (after PostgreSQL migrations completed). */
void bd_job_engine_start(struct bd_job_engine *e);

/* True once the schema migrations have been applied (the API may write jobs). */
bool bd_job_engine_is_ready(const struct bd_job_engine *e);

/* Items per second over jobs finished in the last 15 minutes (all processes sharing the
 * store), refreshed every 5 s; 0 when unknown. */
double bd_job_engine_get_throughput(const struct bd_job_engine *e);

/* Shutdown has begun: claim no more jobs from now on (running ones go on until
 * bd_job_engine_stop, which the server calls once HTTP has closed). */
void bd_job_engine_drain(struct bd_job_engine *e);

/* Wake the claimer now (a job was just queued by this process). */
void bd_job_engine_kick(struct bd_job_engine *e);

/* Stop claiming; let each running job finish its current batch and checkpoint, hand it
 * back to the queue, close timers, then call cb once (async). */
typedef void (*bd_job_engine_stopped_cb)(void *arg);
void bd_job_engine_stop(struct bd_job_engine *e, bd_job_engine_stopped_cb cb, void *arg);

/* Free a stopped engine. */
void bd_job_engine_free(struct bd_job_engine *e);

/* A cancel was recorded in PostgreSQL for job_id: if this process runs it, abort its
 * in-flight model request and stop before the next batch. Returns true if it ran here. */
bool bd_job_engine_cancel_local(struct bd_job_engine *e, const char *job_id);

/* Jobs running in this process / the configured maximum. */
unsigned bd_job_engine_get_active(const struct bd_job_engine *e);
unsigned bd_job_engine_get_capacity(const struct bd_job_engine *e);

/* Progress listeners (SSE): called after each checkpoint of a job running in this process
 * and once more when it ends (is_final). job_id borrowed. */
typedef void (*bd_job_progress_cb)(const char *job_id, bool is_final, void *arg);
struct bd_job_listener {
    struct bd_job_listener *next, *prev;      /* engine's list; caller storage */
    const char *job_id;                       /* borrowed while registered; NULL: every job */
    bd_job_progress_cb cb;
    void *arg;
};
void bd_job_engine_listen(struct bd_job_engine *e, struct bd_job_listener *l);
void bd_job_engine_unlisten(struct bd_job_engine *e, struct bd_job_listener *l);

/* In-memory state of a job running here, as JSON (for /debug), or NULL if not local.
 * Caller json_decref()s. */
struct json_t;
struct json_t *bd_job_engine_debug_json(const struct bd_job_engine *e, const char *job_id);

/* ---- pausing the queue (job_pause.c) ---------------------------------------------------
 *
 * PostgreSQL holds the pause state (every process, surviving restarts); each engine reads
 * it every BD_JOB_PAUSE_POLL_MS and keeps a copy, which is all the claim path looks at.
 * Whole queue paused: no claim, and no running job sends a new batch anywhere. One model
 * paused: no new batch goes to that model (bulk_embed jobs naming it), and claims skip its
 * queued jobs. A running job that is paused lets its batches at the model finish and be
 * written, then hands its lease back (its job goes back to its queue, still processing in
 * PostgreSQL, and resumes at its first batch not checkpointed once claimed again). */
#define BD_JOB_PAUSE_POLL_MS 500
#define BD_JOB_PAUSED_MODELS_MAX 64       /* models paused one by one (more are ignored) */

struct bd_job_paused_model {
    char name[129];
    long long paused_at_ms;
};
struct bd_job_pause_state {
    bool is_known;                        /* read from PostgreSQL at least once */
    bool is_paused;                       /* the whole queue */
    long long paused_at_ms;               /* when the whole queue was paused; 0 if not */
    unsigned models_count;                /* models paused one by one, sorted by name */
    struct bd_job_paused_model models[BD_JOB_PAUSED_MODELS_MAX];
};

/* This process's copy of the pause state (at most BD_JOB_PAUSE_POLL_MS old, or the state
 * this process just wrote). Borrowed, valid until the next loop turn. */
const struct bd_job_pause_state *bd_job_engine_get_pause(const struct bd_job_engine *e);

/* When model was paused on its own in p, or 0 when it is not. */
long long bd_job_pause_model_at(const struct bd_job_pause_state *p, const char *model);

/* Pause (is_paused) or resume model (NULL: the whole queue) for every process: written
 * to PostgreSQL (synchronous commit), then the state is read back, applied here at once
 * and handed to cb with is_changed (false when it already was so). The caller validates
 * model (a configured one). cb: BD_OK, or BD_EPG (nothing changed, or the change is made
 * but could not be read back: state is then this process's copy). Callback contract as
 * usual; state borrowed during cb. */
typedef void (*bd_job_pause_cb)(int status, const struct bd_job_pause_state *state,
                                bool is_changed, void *arg);
int bd_job_pause(struct bd_job_engine *e, const char *model, bool is_paused,
                 bd_job_pause_cb cb, void *arg);

/* Counters since start for /metrics (monotonic). */
struct bd_job_engine_stats {
    uint64_t jobs_claimed;
    uint64_t batches_done;
    uint64_t batches_failed;
    uint64_t batch_retries;
    uint64_t leases_lost;
    uint64_t reaped;
    uint64_t rebuilt;
    uint64_t swept;
    uint64_t cache_hits;      /* bulk_embed items served from the embedding cache */
    uint64_t cache_misses;    /* bulk_embed items sent to a model */
};
const struct bd_job_engine_stats *bd_job_engine_get_stats(const struct bd_job_engine *e);

#endif
