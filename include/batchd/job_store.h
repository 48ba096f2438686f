/* job_store.h -- every statement on jobs, job_batches, job_item_errors and the embedding
 * cache, with typed rows and named columns.
 *
 * The one owner of the schema's SQL text: API handlers and the job state machine call the
 * functions here and never write SQL themselves. Statements run on the nonblocking pool of
 * pg_store.h; each function that takes a callback follows the callback contract (returns
 * < 0 and never calls back, or returns 0 and calls back exactly once, asynchronously).
 * Loop thread only. Write side in job_store.c, read side in job_store_read.c.
 */
#ifndef BATCHD_JOB_STORE_H
#define BATCHD_JOB_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "batchd/job_types.h"

struct bd_pg;
struct bd_pg_conn;

/* ------------------------------------------------------------------------------------
 * Writes: start, checkpoint, finish, cancel, retry, maintenance.
 * ------------------------------------------------------------------------------------ */

struct bd_buf;
struct bd_buf;

/* Why a statement failed, for logs and for deciding on a retry. Borrowed during the
 * callback; message is never NULL. Permanent errors (a value the server refuses, a
 * constraint) fail the same way again; transient ones (connection, serialization,
 * deadlock, resources) may pass on a retry. */
struct bd_job_store_err {
    const char *message;
    bool is_permanent;
};

/* Result of a statement that returns no row the caller needs. err is NULL on success. */
typedef void (*bd_job_store_done_cb)(int status, const struct bd_job_store_err *err, void *arg);

/* What the state machine needs of a job when it starts (or takes over) a run. */
struct bd_job_start_row {
    enum bd_job_operation op;
    char model[129];                  /* "" for bulk_insert without a model */
    char collection[64];
    unsigned total_items, total_batches;
    double timeout_s;                 /* < 0: not set on the job */
    int max_retries;                  /* < 0: not set on the job */
    bool is_cancel_requested;
    double run_started_unix;          /* start of the current run (reset by retry) */
    int run_attempt;
    unsigned dim;                     /* bulk_insert: the dimension given at submit */
    long collection_dim;              /* the output collection's dimension; -1: it raced */
};
/* row NULL with status BD_OK: the job is not startable (terminal or gone). */
typedef void (*bd_job_store_start_cb)(int status, const struct bd_job_start_row *row,
                                      const struct bd_job_store_err *err, void *arg);

/* Start a run: compare-and-set jobs.status from one of `sources` (a text[] literal from
 * bd_job_event_sources) to 'processing', owner worker_id, and make sure the collection
 * exists (created with the job's dimension when missing; an existing one is only read).
 * The run's start time is reset when the job comes from 'queued'. */
int bd_job_store_start(struct bd_pg *pg, const char *job_id, const char *worker_id,
                       const char *sources, bd_job_store_start_cb cb, void *arg);

/* The first pending batch of a job, with the job's cancel flag. Borrowed during cb. */
struct bd_job_batch_row {
    bool has_batch;                   /* false: no pending batch left */
    bool is_cancel_requested;         /* read from jobs at every batch (cancel via PG) */
    int batch_no;
    unsigned first_index, item_count, attempts;
    const char *items_json;           /* bulk_embed: JSON array of the items, or NULL */
    size_t items_len;
    const char *payload;              /* bulk_insert: packed items (job_batch.h), or NULL */
    size_t payload_len;
};
typedef void (*bd_job_store_batch_cb)(int status, const struct bd_job_batch_row *row,
                                      const struct bd_job_store_err *err, void *arg);
int bd_job_store_load_batch(struct bd_pg *pg, const char *job_id, bd_job_store_batch_cb cb,
                            void *arg);

/* Make a batch's attempts and last error visible (/debug) while it is retried. */
int bd_job_store_record_attempt(struct bd_pg *pg, const char *job_id, int batch_no,
                                unsigned attempts, const char *message,
                                bd_job_store_done_cb cb, void *arg);

/* Embedding cache: rows for the given keys (hex SHA-256). hits[i] borrowed during cb. */
struct bd_job_cache_hit {
    const char *hash;                 /* 64 hex digits */
    const char *embedding;            /* binary real[] (bd_pg_float4_array_decode) */
    int embedding_len;
};
typedef void (*bd_job_store_cache_cb)(int status, const struct bd_job_cache_hit *hits,
                                      unsigned count, const struct bd_job_store_err *err,
                                      void *arg);
/* keys: count hex digests of 64 chars each, at keys + i * stride. sql is a scratch buffer
 * the caller owns (reused across batches). */
int bd_job_store_cache_lookup(struct bd_pg *pg, struct bd_buf *sql, const char *keys,
                              size_t stride, unsigned count, bd_job_store_cache_cb cb,
                              void *arg);

/* ---- a batch's write: one transaction on a leased connection --------------------------
 * begin (lock the batch row, check it is still pending) -> stage rows by binary COPY ->
 * checkpoint (upsert vectors, cache new vectors, item errors, batch done, job counters)
 * -> COMMIT. Releasing the connection before the commit rolls everything back. */
typedef void (*bd_job_store_locked_cb)(int status, bool is_pending,
                                       const struct bd_job_store_err *err, void *arg);
int bd_job_store_write_begin(struct bd_pg_conn *conn, struct bd_buf *sql, const char *job_id,
                             int batch_no, bd_job_store_locked_cb cb, void *arg);

/* Staged rows, built into a COPY payload: begin, one row per item, end. */
void bd_job_store_stage_begin(struct bd_buf *b);
/* A stored vector: embedding either as floats (dim of them) or as a ready binary real[]
 * (real_array, real_array_len); meta is JSON text; text_hash (64 hex) or NULL: the vector
 * also goes into the embedding cache under that key. */
void bd_job_store_stage_vector(struct bd_buf *b, unsigned item_index, const char *id,
                               size_t id_len, const float *v, unsigned dim,
                               const char *real_array, size_t real_array_len,
                               const char *meta, size_t meta_len, const char *text_hash);
/* A failed item: id may be NULL (not stored), code and message are text. */
void bd_job_store_stage_error(struct bd_buf *b, unsigned item_index, const char *id,
                              size_t id_len, const char *code, const char *message);
int bd_job_store_stage_end(struct bd_buf *b);
int bd_job_store_write_stage(struct bd_pg_conn *conn, const struct bd_buf *b,
                             bd_job_store_done_cb cb, void *arg);

/* The checkpoint's figures. */
struct bd_job_checkpoint {
    const char *job_id, *collection;
    int batch_no, run_attempt;
    unsigned first_index, item_count;
    unsigned ok, failed, cache_hits, attempts, duration_ms;
};
int bd_job_store_write_commit(struct bd_pg_conn *conn, struct bd_buf *sql,
                              const struct bd_job_checkpoint *cp, bd_job_store_done_cb cb,
                              void *arg);

/* End a run: compare-and-set from 'processing' to the final state. final_state is the
 * state machine's decision (BD_JOB_COMPLETED means "by the counters": every item failed
 * -> failed); a cancel recorded in PostgreSQL turns a completion into 'cancelled'.
 * row NULL: the job was not processing any more. */
struct bd_job_finish_row {
    enum bd_job_state state;
    long long processed, failed;
};
typedef void (*bd_job_store_finish_cb)(int status, const struct bd_job_finish_row *row,
                                       const struct bd_job_store_err *err, void *arg);
int bd_job_store_finish(struct bd_pg *pg, const char *job_id, enum bd_job_state final_state,
                        const char *error_code, const char *error_message,
                        bd_job_store_finish_cb cb, void *arg);

/* A job's state, for cancel and retry. row NULL: no such job. */
struct bd_job_state_row {
    enum bd_job_state state;
    bool is_cancel_requested;
};
typedef void (*bd_job_store_state_cb)(int status, const struct bd_job_state_row *row,
                                      const struct bd_job_store_err *err, void *arg);
int bd_job_store_get_state(struct bd_pg *pg, const char *job_id, bd_job_store_state_cb cb,
                           void *arg);

/* Cancel: compare-and-set (from, not yet cancel-requested) -> to, with cancel_requested
 * set; a terminal `to` also stamps completed_at. changed false: the job moved meanwhile. */
typedef void (*bd_job_store_changed_cb)(int status, bool is_changed,
                                        const struct bd_job_store_err *err, void *arg);
int bd_job_store_cancel(struct bd_pg *pg, const char *job_id, enum bd_job_state from,
                        enum bd_job_state to, bd_job_store_changed_cb cb, void *arg);

/* Retry: compare-and-set from `from` (terminal) to 'queued' when the job has failed items
 * or unfinished batches; batches with failed items go back to pending and their counts
 * come off the job's. row NULL: nothing to retry (or the job moved). */
struct bd_job_queue_row {
    char id[129];
    int priority;
    long long seq;
    char model[129];
    long long total_items;
    int run_attempt;
};
typedef void (*bd_job_store_requeued_cb)(int status, const struct bd_job_queue_row *row,
                                         const struct bd_job_store_err *err, void *arg);
int bd_job_store_retry(struct bd_pg *pg, const char *job_id, enum bd_job_state from,
                       bd_job_store_requeued_cb cb, void *arg);

/* ---- maintenance ----------------------------------------------------------------------- */

/* Every queued or processing job in queue order, then the largest sequence ever used.
 * rows borrowed during cb. */
typedef void (*bd_job_store_active_cb)(int status, const struct bd_job_queue_row *rows,
                                       unsigned count, long long max_seq,
                                       const struct bd_job_store_err *err, void *arg);
int bd_job_store_list_active(struct bd_pg *pg, bd_job_store_active_cb cb, void *arg);

/* Delete terminal jobs (and their batches/errors) and cache rows older than age_s. */
typedef void (*bd_job_store_count_cb)(int status, long long n, const struct bd_job_store_err *err,
                                      void *arg);
int bd_job_store_sweep(struct bd_pg *pg, double age_s, bd_job_store_count_cb cb, void *arg);

/* Items per second over jobs finished in the last 15 minutes (any process). */
typedef void (*bd_job_store_rate_cb)(int status, double items_per_s,
                                     const struct bd_job_store_err *err, void *arg);
int bd_job_store_throughput(struct bd_pg *pg, bd_job_store_rate_cb cb, void *arg);


/* ------------------------------------------------------------------------------------
 * Writes: submit (the job row, its batches, idempotency lookups).
 * ------------------------------------------------------------------------------------ */

/* (submit: declarations follow) */

#include "batchd/pg_store.h"      /* bd_pg_result_cb, struct bd_buf */

/* The collection a job writes into, as far as submit needs it. */
struct bd_job_store_collection_row {
    bool is_found;                    /* false: the first job creates it */
    unsigned dimension;               /* its vectors' length (when found) */
};
typedef void (*bd_job_store_collection_cb)(int status,
                                           const struct bd_job_store_collection_row *row,
                                           void *arg);

/* Look up collection name (borrowed for the call). cb gets BD_OK and the row (borrowed for
 * the callback), or BD_EPG and NULL. */
int bd_job_store_get_collection(struct bd_pg *pg, const char *name, bd_job_store_collection_cb cb,
                                void *arg);

/* The job an Idempotency-Key already names. */
struct bd_job_store_idem_row {
    bool is_found;
    const char *job_id;               /* borrowed for the callback */
    const char *request_hash;         /* hex SHA-256 of the body that created it */
    /* The job's status row for the replay answer: res holds BD__API_JOB_COLUMNS (api.h)
     * first, row 0, as bd__api_job_status_json reads it. Transitional: it goes once the read
     * section owns a typed status row. Borrowed for the callback. */
    const PGresult *status_res;
};
typedef void (*bd_job_store_idem_cb)(int status, const struct bd_job_store_idem_row *row,
                                     void *arg);

/* Find the job created with Idempotency-Key key (borrowed for the call). cb gets BD_OK and
 * the row, or BD_EPG and NULL. */
int bd_job_store_find_idempotent(struct bd_pg *pg, const char *key, bd_job_store_idem_cb cb,
                                 void *arg);

/* A new job's row, as submit writes it (status queued). Strings borrowed for the call. */
struct bd_job_store_new_job {
    const char *id;
    long long seq;
    const char *operation;            /* "bulk_embed" | "bulk_insert" */
    const char *model;                /* NULL: none */
    const char *collection;
    int priority;                     /* enum bd_priority */
    unsigned batch_size, total_items, total_batches;
    double timeout_s;
    int max_retries;
    const char *options_json;         /* JSON object text */
    const char *metadata_json;        /* JSON object text */
    const char *idempotency_key;      /* NULL: none */
    const char *request_hash;         /* NULL unless idempotency_key */
    double created_unix;
};

/* Open the submit's transaction on conn and insert the job row, in one round trip (BEGIN
 * and the INSERT pipelined). cb as bd_pg_conn_pipeline's: an Idempotency-Key taken by a
 * concurrent submit comes back as BD_EPG with SQLSTATE 23505 (see
 * bd_job_store_is_unique_violation). */
int bd_job_store_begin_job(struct bd_pg_conn *conn, const struct bd_job_store_new_job *job,
                           bd_pg_result_cb cb, void *arg);

/* Append one job_batches row to copy, a binary COPY stream that bd_job_store_copy_batches
 * sends (bd_pg_copy_begin before the first row, bd_pg_copy_end after the last). A
 * batch has either items_json (bulk_embed: a JSON array of the items) or payload
 * (bulk_insert: the packed batch of job_batch.h); the other is NULL. Returns copy's sticky
 * error. Allocates. */
int bd_job_store_put_batch(struct bd_buf *copy, const char *job_id, unsigned batch_no,
                           unsigned first_index, unsigned item_count, const char *items_json,
                           size_t items_len, const void *payload, size_t payload_len);

/* Send the batches (copy->data, borrowed until cb) in the open transaction on conn. */
int bd_job_store_copy_batches(struct bd_pg_conn *conn, const struct bd_buf *copy,
                              bd_pg_result_cb cb, void *arg);

/* COMMIT the transaction on conn. */
int bd_job_store_commit(struct bd_pg_conn *conn, bd_pg_result_cb cb, void *arg);

/* Whether job job_id (borrowed for the call) has a row, on a connection of its own from
 * the pool: how submit learns the outcome of a COMMIT whose answer was lost. cb gets BD_OK
 * and is_found, or BD_EPG. */
typedef void (*bd_job_store_exists_cb)(int status, bool is_found, void *arg);
int bd_job_store_job_exists(struct bd_pg *pg, const char *job_id, bd_job_store_exists_cb cb,
                            void *arg);

/* True when res (may be NULL) is a unique-constraint violation (SQLSTATE 23505). */
bool bd_job_store_is_unique_violation(const PGresult *res);


/* ------------------------------------------------------------------------------------
 * Reads: status, job document, list, items, results, events, debug.
 * ------------------------------------------------------------------------------------ */

/* (read side: declarations follow) */


#endif
