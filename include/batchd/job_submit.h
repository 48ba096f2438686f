/* job_submit.h -- a job's creation: the queue's room is checked, the job gets its id, its
 * row and batches are written in one PostgreSQL transaction, then it is queued in Redis.
 *
 * The API validates a request and calls bd_job_submit; it never writes a job itself.
 * PostgreSQL holds the truth: a job whose enqueue failed is still created (the engine's
 * rebuild queues it), and a COMMIT whose answer was lost is settled by looking the job up.
 * Small jobs (batches of at most 256 KiB in all) submitted while another group's statement
 * is in flight share the next one (group commit, job_submit.c, in the pool's group): still
 * durable at the 202 and all or nothing per job, and a failure of one job (an
 * Idempotency-Key conflict, a refused value) fails that job alone.
 * Loop thread only. Callback contract of STYLE.md.
 */
#ifndef BATCHD_JOB_SUBMIT_H
#define BATCHD_JOB_SUBMIT_H

#include <stddef.h>

#include "batchd/job_engine.h"       /* enum bd_job_operation */

struct bd_pg;
struct bd_pg_conn;
struct bd_rq;
struct bd_config;

/* What a submit needs, borrowed; each must outlive every submit in flight. */
struct bd_job_submit_deps {
    struct bd_pg *pg;                 /* a synchronous-commit pool: a 202 is durable */
    struct bd_rq *rq;
    const struct bd_config *cfg;      /* max_queued_items, models (for the estimate) */
    struct bd_job_engine *engine;     /* kicked after an enqueue; its throughput for the
                                       * estimate. May be NULL */
};

/* A validated job. Strings are borrowed for the call (bd_job_submit copies them). */
struct bd_job_spec {
    enum bd_job_operation op;
    const char *model;                /* a configured model's name, or NULL (bulk_insert) */
    const char *collection;
    int priority;                     /* enum bd_priority */
    unsigned batch_size;
    unsigned items;
    unsigned batches;                 /* ceil(items / batch_size) */
    unsigned dim;                     /* vector length (0 when unknown) */
    double timeout_s;
    int max_retries;
    const char *metadata_json;        /* the job's metadata object, JSON text */
    const char *idem_key;             /* Idempotency-Key, or NULL */
    const char *request_hash;         /* hex SHA-256 of the body when idem_key, else NULL */
};

/* One batch's stored form: bulk_embed, the JSON array text of its items; bulk_insert, its
 * packed payload (job_batch.h). data is malloc'ed. */
struct bd_job_payload {
    char *data;
    size_t len;
};

/* The outcome of a submit, borrowed for the callback. */
struct bd_job_submitted {
    const char *job_id;               /* set when status is BD_OK */
    const char *created_at;           /* RFC 3339 */
    double created_unix;
    long long queue_position;         /* 1-based across priorities; 0: not in Redis yet */
    double estimated_completion_unix; /* always set on BD_OK, after created_unix */
    long long queued_items;           /* items queued before this job (the room check) */
    unsigned long long max_queued_items;
};

/* Called once with BD_OK (the job exists), BD_EBUSY (the queue has no room for the job's
 * items: queued_items and max_queued_items say why), BD_ECONFLICT (a concurrent submit
 * created a job with this Idempotency-Key first: look it up), BD_EREDIS or BD_EPG (the job
 * was not created), or BD_ENOMEM. res is never NULL. */
typedef void (*bd_job_submitted_cb)(int status, const struct bd_job_submitted *res, void *arg);

/* Create the job of spec with its spec->batches batches. Takes ownership of batches (the
 * array, malloc'ed, and every data), also when it returns an error. Returns BD_OK and calls
 * cb exactly once, asynchronously; or returns < 0 (BD_ENOMEM, BD_EREDIS) and never calls
 * it. PostgreSQL's error text is logged here, once; none reaches cb. Allocates. */
int bd_job_submit(const struct bd_job_submit_deps *deps, const struct bd_job_spec *spec,
                  struct bd_job_payload *batches, bd_job_submitted_cb cb, void *arg);

/* ---- a streamed job: its row first, then its batches as the body arrives ----------------
 * One transaction from open to close: BEGIN and the job's row (totals 0), then each batch by
 * its own COPY while the upload goes on, then the totals, the item reservation (the queue's
 * room is checked when the items are known), COMMIT, the Redis enqueue. Nothing is visible
 * to anyone before the COMMIT; an abort (bad input mid-stream, client gone) rolls it all
 * back. Memory: the batch being written. Loop thread only; one operation at a time. */
struct bd_job_stream;
typedef void (*bd_job_stream_cb)(int status, void *arg);

/* Open a job of spec (spec->items, ->batches and ->request_hash are ignored; the hash comes
 * with close). cb once: BD_OK (ready for batches), BD_ECONFLICT (another request's job holds
 * spec->idem_key), BD_EREDIS / BD_EPG / BD_ENOMEM (then call bd_job_stream_abort), or
 * BD_ECANCELED when aborted meanwhile (st is then gone). *out is valid at once. */
int bd_job_stream_open(const struct bd_job_submit_deps *deps, const struct bd_job_spec *spec,
                       bd_job_stream_cb cb, void *arg, struct bd_job_stream **out);

/* The job's id (valid once open's cb said BD_OK). Borrowed from st. */
const char *bd_job_stream_get_id(const struct bd_job_stream *st);

/* The stream's connection, inside the job's transaction, for rows of the same job that
 * other stores own (an OpenAI batch's, batch_store.h), so they commit or roll back with
 * it: use it only while no operation of the stream is in flight, one statement at a time,
 * and wait for that statement's callback before the stream's next operation. NULL before
 * open's cb said BD_OK. Borrowed from st. */
struct bd_pg_conn *bd_job_stream_get_conn(struct bd_job_stream *st);

/* Write the next n batches, in order, in one COPY (batch i holds items[i] > 0 items;
 * payloads as bd_job_submit's, their data taken: freed here, also on error; the arrays are
 * borrowed for the call). cb once: BD_OK, BD_EPG (then abort), BD_ECANCELED (aborted
 * meanwhile). BD_EINVAL at once when an operation is in flight, n is 0 or a count is 0. */
int bd_job_stream_put(struct bd_job_stream *st, struct bd_job_payload *payloads,
                      const unsigned *items, unsigned n, bd_job_stream_cb cb, void *arg);

/* The job's fields as the whole body gave them, when some came after its items (a JSON
 * body with "options" or "metadata" after "data"): model, collection, priority, timeout_s,
 * max_retries, metadata_json and dim replace the open's; a different batch_size cuts the
 * batches written so far again, inside PostgreSQL (bd_job_store_rebatch). spec->op must be
 * the open's; items, batches, idem_key and request_hash are ignored. cb once, as put's.
 * BD_EINVAL at once when an operation is in flight, nothing was put, or op differs. */
int bd_job_stream_amend(struct bd_job_stream *st, const struct bd_job_spec *spec,
                        bd_job_stream_cb cb, void *arg);

/* The body ended: write the totals (dim, the vectors' length; request_hash, the body's hex
 * SHA-256 when the job has an Idempotency-Key, else NULL), reserve the items, COMMIT,
 * enqueue. cb once, exactly as bd_job_submit's (BD_EBUSY when the queue has no room: nothing
 * is kept). st is freed after cb; never touch it again once this returned BD_OK. */
int bd_job_stream_close(struct bd_job_stream *st, unsigned dim, const char *request_hash,
                        bd_job_submitted_cb cb, void *arg);

/* Give up: roll back and free st. While an open or put is in flight, its cb gets
 * BD_ECANCELED and st goes after it. Not after close (once close returned BD_OK the job
 * belongs to it; an abort then does nothing). */
void bd_job_stream_abort(struct bd_job_stream *st);

/* The estimated completion of a job of items items with queued_ahead items before it,
 * created at created_unix: from the engine's recent throughput when it has one, else from
 * the model's configured rate (concurrency x max_inputs_per_request / timeout_s; the
 * built-in hashing provider and bulk_insert use fixed rates, BD_JOB_RATE_HASHING and
 * BD_JOB_RATE_INSERT items per second). Whole seconds, at least one after created_unix. */
#define BD_JOB_RATE_HASHING 20000.0
#define BD_JOB_RATE_INSERT 20000.0
double bd_job_submit_estimate(const struct bd_job_submit_deps *deps, enum bd_job_operation op,
                              const char *model, long long queued_ahead, unsigned items,
                              double created_unix);

#endif
