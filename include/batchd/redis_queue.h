/* redis_queue.h -- the job queue, leases and counters in Redis, through hiredis async on
 * the libuv adapter.
 *
 * Keys (prefix default "bd:"):
 *   {p}seq                 INCR: job id sequence shared by every process
 *   {p}q:high|normal|low   ZSET job_id -> seq (FIFO within a priority)
 *   {p}inflight            ZSET job_id -> lease deadline (ms, Redis server time)
 *   {p}job:<id>            HASH priority, seq, model, items, owner, cancel, requeue
 *   {p}models              SET of model names with a job queued or in flight
 *   {p}model:<m>           HASH pending, processing (per-model counts); the hash and the
 *                          name in {p}models are deleted when both counts reach zero
 *   {p}queued_items        counter of items in queued jobs (backpressure)
 *   {p}reserved            ZSET job_id -> reservation deadline (ms, Redis server time)
 *   {p}reserved_items      HASH job_id -> items reserved for a job being submitted
 *   {p}pq:<prio>:<model>   ZSET job_id -> seq: jobs of a paused model, parked by a claim
 *   {p}parked              SET of model names with parked jobs
 *   {p}alive               marker: absent after Redis lost its data (bd_rq_is_empty)
 *   {p}rebuilding          HASH worker -> "<token>:<ms>": rebuilds under way
 * No other module names a key: everything goes through bd_rq_* (STYLE.md).
 * Atomic operations are Lua scripts loaded once (SCRIPT LOAD, EVALSHA, reloaded on
 * NOSCRIPT). The connection is re-established with backoff when Redis goes away; the owner
 * is told through the state callback so it can rebuild the queue from PostgreSQL.
 * Loop thread only.
 *
 * Callback contract (STYLE.md): returns < 0 and never calls cb, or returns BD_OK and calls
 * cb exactly once, asynchronously (BD_EREDIS on error/disconnect, BD_ECANCELED on close).
 */
#ifndef BATCHD_REDIS_QUEUE_H
#define BATCHD_REDIS_QUEUE_H

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

struct bd_rq;

enum bd_priority { BD_PRIO_HIGH = 0, BD_PRIO_NORMAL = 1, BD_PRIO_LOW = 2 };
#define BD_PRIO_COUNT 3

struct bd_rq_options {
    const char *url;                 /* redis://[:password@]host:port[/db]; copied */
    const char *worker_id;           /* lease owner name; copied */
    const char *prefix;              /* key prefix, NULL = "bd:" (tests use their own) */
    double lease_s;                  /* lease length */
    double command_timeout_s;        /* a command unanswered this long fails with BD_EREDIS
                                      * and the connection is reset (hiredis 0.14 has no
                                      * per-command timeout) */
    double reserve_ttl_s;            /* an item reservation not taken over by its job's
                                      * enqueue within this long lapses (a submitter that
                                      * died); <= 0 means 60 s */
};

/* Called on every transition: up=true after (re)connect and scripts loaded; false on loss. */
typedef void (*bd_rq_state_cb)(bool up, void *arg);
typedef void (*bd_rq_done_cb)(int status, void *arg);
/* Generic reply; reply is borrowed (freed by hiredis when the callback returns), NULL on error. */
typedef void (*bd_rq_reply_cb)(int status, const redisReply *reply, void *arg);
typedef void (*bd_rq_int_cb)(int status, long long value, void *arg);
/* job_id is borrowed (NULL when nothing to claim). */
typedef void (*bd_rq_claim_cb)(int status, const char *job_id, void *arg);
/* deadline_unix: the lease's end in seconds since the epoch (Redis server clock), < 0 when
 * the job is not in flight or on error; owner: the lease owner's worker id, borrowed (valid
 * during the callback), NULL when not in flight. */
typedef void (*bd_rq_lease_cb)(int status, double deadline_unix, const char *owner,
                               void *arg);
/* is_granted: the items were reserved. queued_after: items of queued jobs plus live
 * reservations, including this one when granted, as they stand when refused. */
typedef void (*bd_rq_reserve_cb)(int status, bool is_granted, long long queued_after,
                                 void *arg);

struct bd_rq_counts {
    long long pending[BD_PRIO_COUNT];
    long long inflight;
    long long queued_items;          /* items of queued jobs */
    long long reserved_items;        /* items reserved by submits not yet enqueued */
};
typedef void (*bd_rq_counts_cb)(int status, const struct bd_rq_counts *counts, void *arg);

/* Create and start connecting (async). Returns BD_OK and *out or a negative error. */
int bd_rq_new(uv_loop_t *loop, const struct bd_rq_options *opt, struct bd_rq **out);

/* Register the up/down callback (one). */
void bd_rq_set_state_cb(struct bd_rq *rq, bd_rq_state_cb cb, void *arg);

/* Fail pending commands with BD_ECANCELED, disconnect, free, then cb (async; may be NULL). */
void bd_rq_close(struct bd_rq *rq, bd_rq_done_cb cb, void *arg);

bool bd_rq_is_up(const struct bd_rq *rq);

/* Next job sequence number (INCR {p}seq). */
int bd_rq_next_seq(struct bd_rq *rq, bd_rq_int_cb cb, void *arg);

/* Raise {p}seq to at least at_least (after Redis lost its keys the sequence would start
 * again at 1; the caller passes the largest seq PostgreSQL has). Never lowers it. cb value:
 * the sequence afterwards. BD_EINVAL for at_least < 0. */
int bd_rq_restore_seq(struct bd_rq *rq, long long at_least, bd_rq_int_cb cb, void *arg);

/* Queue job_id at prio with FIFO key seq; records model and item count for counters.
 * Idempotent: a job already queued or in flight is left where it is (this is what the
 * rebuild from PostgreSQL relies on). A reservation made for job_id (bd_rq_reserve_items)
 * is taken over by the job's own count, or dropped when the job is counted already, so
 * reserved items are never counted twice.
 * cb's value is the job's 1-based position across all priorities (jobs ahead + 1). */
int bd_rq_enqueue(struct bd_rq *rq, const char *job_id, enum bd_priority prio, int64_t seq,
                  const char *model, long long items, bd_rq_int_cb cb, void *arg);

/* One job of bd_rq_enqueue_many: bd_rq_enqueue's arguments (strings borrowed for the
 * call). */
struct bd_rq_enqueue_job {
    const char *job_id;
    enum bd_priority prio;
    int64_t seq;
    const char *model;               /* NULL or "": none */
    long long items;
};
/* positions[0..n): each job's bd_rq_enqueue value, in the order given (NULL on error;
 * borrowed during the callback). */
typedef void (*bd_rq_enqueue_many_cb)(int status, const long long *positions, unsigned n,
                                      void *arg);
#define BD_RQ_ENQUEUE_MAX 1024

/* bd_rq_enqueue of each of jobs[0..n) (1..BD_RQ_ENQUEUE_MAX), in order, in one round trip
 * (one script run: each job behaves exactly as its own bd_rq_enqueue, its reservation
 * taken over, one already queued or in flight left where it is). On an error (connection
 * lost, timeout) any of them may or may not be queued, as for a failed bd_rq_enqueue of
 * each (the rebuild from PostgreSQL queues what is missing). BD_EINVAL for n out of
 * range, a NULL cb, or a job bd_rq_enqueue would refuse. Allocates the packed arguments
 * and one record for the call. */
int bd_rq_enqueue_many(struct bd_rq *rq, const struct bd_rq_enqueue_job *jobs, unsigned n,
                       bd_rq_enqueue_many_cb cb, void *arg);

/* As bd_rq_enqueue, for a job that PostgreSQL moved from a terminal state back to queued
 * (retry). Its previous run may not have released it yet: a job still in flight is marked
 * 'requeue' (with these prio, seq, model and items), and the owner's bd_rq_release -- with
 * or without requeue -- or the reaper, when the lease runs out, puts it in its queue
 * instead of deleting it; bd_rq_cancel drops the mark. cb value: the position, or 0 when
 * the job was marked (it is queued when the old run lets go). Only for a retry: the rebuild
 * must use bd_rq_enqueue, since a job that is in flight and processing must not be queued
 * a second time when it finishes. */
int bd_rq_enqueue_retry(struct bd_rq *rq, const char *job_id, enum bd_priority prio,
                        int64_t seq, const char *model, long long items, bd_rq_int_cb cb,
                        void *arg);

/* Backpressure, atomically: in one script, grant when (items of queued jobs + items of live
 * reservations + n) <= max and then reserve n items for job_id, else refuse and change
 * nothing. Parallel submits therefore never pass max together. The reservation is taken
 * over when job_id is enqueued; release it with bd_rq_unreserve_items when the job will not
 * be enqueued (its transaction failed, an Idempotency-Key repeat); one that is neither
 * lapses after reserve_ttl_s. A repeat for the same job_id replaces the earlier one.
 * BD_EINVAL for an empty job_id or n < 0. */
int bd_rq_reserve_items(struct bd_rq *rq, const char *job_id, long long n, long long max,
                        bd_rq_reserve_cb cb, void *arg);

/* bd_rq_reserve_next's answer: the job's seq and id (job_id borrowed, valid during the
 * callback), and the reservation's outcome as bd_rq_reserve_cb's (is_granted true and
 * queued_after 0 when none was asked). On error seq is 0 and job_id NULL. */
typedef void (*bd_rq_reserve_next_cb)(int status, long long seq, const char *job_id,
                                      bool is_granted, long long queued_after, void *arg);

/* A new job's seq, id and room in one round trip (one script run): take the next seq (as
 * bd_rq_next_seq), name the job id_prefix followed by the seq in decimal, zero-padded to
 * three digits at least (printf's "%s%03lld": the suffix rule of every job id is here),
 * and, when n >= 0, reserve n items for that id exactly as bd_rq_reserve_items would (the
 * same check, in the same script run, so racing submits still never pass max together).
 * n < 0 takes the seq and names the job only (a streamed job: its items are reserved with
 * bd_rq_reserve_items once known). A refused reservation still uses its seq up.
 * BD_EINVAL for a NULL id_prefix or cb. Allocates one small record for the call. */
int bd_rq_reserve_next(struct bd_rq *rq, const char *id_prefix, long long n, long long max,
                       bd_rq_reserve_next_cb cb, void *arg);

/* Drop job_id's reservation. cb value: the items it held (0: there was none). */
int bd_rq_unreserve_items(struct bd_rq *rq, const char *job_id, bd_rq_int_cb cb, void *arg);

/* Atomically take the oldest job of the highest non-empty priority, put it in flight with a
 * lease of lease_s owned by worker_id. cb gets the id, or NULL when all queues are empty. */
int bd_rq_claim(struct bd_rq *rq, bd_rq_claim_cb cb, void *arg);

/* bd_rq_claim_many: job_ids[0..count) borrowed during the callback; count 0 when every
 * queue is empty (or on error). is_cut: a claim with a skip list stopped at its scan bound
 * (it parked that many jobs) before it had max jobs: jobs may wait behind, claim again at
 * once rather than at the next poll. */
#define BD_RQ_CLAIM_MAX 64
typedef void (*bd_rq_claim_many_cb)(int status, const char *const *job_ids, unsigned count,
                                    bool is_cut, void *arg);

/* As bd_rq_claim, for up to max jobs (1..BD_RQ_CLAIM_MAX) in one round trip: one script
 * takes them in the order bd_rq_claim would, one after another, each with its own lease
 * (renewed, released and reaped one by one as before). Each id goes to exactly one
 * caller, whichever process claims. BD_EINVAL for max out of range or a NULL cb.
 * Allocates one small record for the call. */
int bd_rq_claim_many(struct bd_rq *rq, unsigned max, bd_rq_claim_many_cb cb, void *arg);

/* bd_rq_claim_many that takes no job of skip_models[0..skip_count) (paused models;
 * borrowed for the call, may be NULL when skip_count is 0): such a job met at the head of
 * a queue is parked ({p}pq:<prio>:<model>), up to 1000 per call (a model lookup each), so
 * a paused model's backlog is looked at once and the jobs behind it are claimed. Every
 * claim first puts the parked jobs of models not in its skip list (resumed) back in their
 * queues in their order (5,000 per model and priority per call). Parked jobs stay pending:
 * counted, cancellable, never lost. With skip_count 0 it is bd_rq_claim_many (which also
 * unparks). Also allocates the packed list when long. */
int bd_rq_claim_many_skip(struct bd_rq *rq, unsigned max, const char *const *skip_models,
                          unsigned skip_count, bd_rq_claim_many_cb cb, void *arg);

/* Extend the lease of job_id if this worker still owns it. cb value: 1 renewed, 0 lost
 * (not in flight or another owner), 2 renewed and a cancel was requested for the job, 3
 * unknown: Redis lost its keys (bd_rq_is_empty would give 1) and the job is neither in
 * flight nor queued, so keep running it and rebuild (bd_rq_adopt puts it back in flight). */
int bd_rq_renew(struct bd_rq *rq, const char *job_id, bd_rq_int_cb cb, void *arg);

/* Job finished (or handed back when requeue): drop it from in flight if we own it (another
 * worker's lease is never touched, and a job waiting in a queue is never removed); with
 * requeue, or when a retry marked it (bd_rq_enqueue_retry), put it back in its priority at
 * its seq. cb value 1 if done. */
int bd_rq_release(struct bd_rq *rq, const char *job_id, bool requeue, bd_rq_int_cb cb,
                  void *arg);

/* Cancel bookkeeping: if job_id is queued remove it (cb value 1); if in flight set its cancel
 * flag for the owner to see at its next renew (cb value 2, or 1 when a retry's requeue mark
 * was dropped as well: the queued run is gone); else 0. */
int bd_rq_cancel(struct bd_rq *rq, const char *job_id, bd_rq_int_cb cb, void *arg);

/* Return every job whose lease deadline passed to the head of its queue. cb value: count. */
int bd_rq_reap(struct bd_rq *rq, bd_rq_int_cb cb, void *arg);

/* Queue depths, in-flight count, queued and reserved items (backpressure). */
int bd_rq_get_counts(struct bd_rq *rq, bd_rq_counts_cb cb, void *arg);

/* Per-model pending/processing: reply is an array [model, pending, processing, ...] sorted
 * by name, listing only models with a job queued or in flight (O(M log M) in Redis). */
int bd_rq_get_model_counts(struct bd_rq *rq, bd_rq_reply_cb cb, void *arg);

/* INFO memory's used_memory in bytes. */
int bd_rq_get_used_memory(struct bd_rq *rq, bd_rq_int_cb cb, void *arg);

/* 1 when the queue keys are absent (Redis was flushed or restarted empty): the caller then
 * rebuilds from PostgreSQL. Uses a marker key {p}alive set by bd_rq_rebuild_end. */
int bd_rq_is_empty(struct bd_rq *rq, bd_rq_int_cb cb, void *arg);

/* A rebuild from PostgreSQL goes between these two, with one token (a fresh random word per
 * rebuild, no ':'). begin sets this worker's mark (field worker of {p}rebuilding = the
 * token; cb value 1); end, sent after the rebuild's last enqueue on the same connection,
 * sets the alive marker only when that mark survived: cb value 1 marked, 0 when Redis lost
 * its keys meanwhile (a FLUSHALL took the jobs queued so far with it, so the caller
 * rebuilds again rather than mark a partial queue whole) or another rebuild under the same
 * worker id replaced the mark. BD_EINVAL for a missing or bad token. */
int bd_rq_rebuild_begin(struct bd_rq *rq, const char *token, bd_rq_int_cb cb, void *arg);
int bd_rq_rebuild_end(struct bd_rq *rq, const char *token, bd_rq_int_cb cb, void *arg);

/* The lease of job_id, for GET /debug/job/{id}: its deadline and owner when in flight. */
int bd_rq_get_lease(struct bd_rq *rq, const char *job_id, bd_rq_lease_cb cb, void *arg);

/* Rebuild after Redis lost its data (bd_rq_is_empty gave 1). Puts job_id, which this
 * process is running, straight in flight under this worker with a fresh lease, so that
 * bd_rq_renew keeps answering 1 and no other process claims it (queued jobs are rebuilt with
 * bd_rq_enqueue). cb value: 1 adopted (or already ours: lease renewed), 0 when the job is
 * queued or in flight under another worker. model may be NULL (no per-model counts). */
int bd_rq_adopt(struct bd_rq *rq, const char *job_id, enum bd_priority prio, int64_t seq,
                const char *model, long long items, bd_rq_int_cb cb, void *arg);

/* Notes on the above: lease_s <= 0 means 30 s, command_timeout_s <= 0 means
 * 5 s. Functions return BD_EREDIS at once while the connection is down, BD_ECANCELED once
 * bd_rq_close was called, BD_EINVAL for a NULL/empty job_id or a NULL cb, BD_ENOMEM.
 * bd_rq_enqueue's value is 0 for a job already in flight. bd_rq_release of a job that is
 * neither in flight nor queued (its lease was reaped and it was claimed and finished
 * elsewhere, or a repeat) deletes what is left of it and gives 1. Error replies reach a
 * bd_rq_reply_cb as BD_EREDIS with reply NULL (logged at debug level). */

#endif
