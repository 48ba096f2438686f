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

struct bd_server;
struct bd_job_engine;

/* Job states as stored in jobs.status. */
enum bd_job_state {
    BD_JOB_QUEUED = 0,
    BD_JOB_PROCESSING,
    BD_JOB_COMPLETED,
    BD_JOB_FAILED,
    BD_JOB_CANCELLED,
};
#define BD_JOB_STATE_COUNT 5

enum bd_job_operation { BD_OP_BULK_EMBED = 0, BD_OP_BULK_INSERT };

/* "queued", "processing", ... / "bulk_embed", "bulk_insert" / "high", "normal", "low". */
const char *bd_job_state_name(enum bd_job_state s);
int bd_job_state_parse(const char *s, enum bd_job_state *out);       /* BD_OK / BD_EINVAL */
const char *bd_job_operation_name(enum bd_job_operation op);
int bd_job_operation_parse(const char *s, enum bd_job_operation *out);
const char *bd_job_priority_name(int prio);
int bd_job_priority_parse(const char *s, int *out);

/* Create the engine (not yet claiming). NULL with *err on failure. srv is borrowed and
 * must outlive the engine; it reaches rq, pg, models and metrics through it. */
struct bd_job_engine *bd_job_engine_new(struct bd_server *srv, int *err);

/* Start claiming and the periodic timers (after PostgreSQL migrations completed). */
void bd_job_engine_start(struct bd_job_engine *e);

/* True once the schema migrations have been applied (the API may write jobs). */
bool bd_job_engine_is_ready(const struct bd_job_engine *e);

/* Items per second over jobs finished in the last 15 minutes (all processes sharing the
 * store), refreshed every 5 s; 0 when unknown. */
double bd_job_engine_get_throughput(const struct bd_job_engine *e);

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
    const char *job_id;                       /* borrowed while registered */
    bd_job_progress_cb cb;
    void *arg;
};
void bd_job_engine_listen(struct bd_job_engine *e, struct bd_job_listener *l);
void bd_job_engine_unlisten(struct bd_job_engine *e, struct bd_job_listener *l);

/* In-memory state of a job running here, as JSON (for /debug), or NULL if not local.
 * Caller json_decref()s. */
struct json_t;
struct json_t *bd_job_engine_debug_json(const struct bd_job_engine *e, const char *job_id);

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
