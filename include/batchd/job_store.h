/* job_store.h -- every statement on jobs, job_batches, job_item_errors and the embedding
 * cache, with typed rows and named columns.
 *
 * The one owner of the schema's SQL text: API handlers and the job state machine call the
 * functions here and never write SQL themselves. Statements run on the nonblocking pool of
 * pg_store.h; each function that takes a callback follows the callback contract (returns
 * < 0 and never calls back, or returns 0 and calls back exactly once, asynchronously).
 * Loop thread only. The engine's writes are in job_store.c, a job's creation in
 * job_store_submit.c, the reads in job_store_read.c.
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
    bool is_parent_lost;     /* 23503: a row the write needs is gone (the job's start, which
                              * creates its collection, lost with an asynchronous commit) */
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
    int priority;                     /* enum bd_priority: 0 high, 1 normal, 2 low */
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

/* The first pending batch of a job numbered above after_batch_no (-1: the first pending
 * batch), with the job's cancel flag. Borrowed during cb. */
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
int bd_job_store_load_batch(struct bd_pg *pg, const char *job_id, int after_batch_no,
                            bd_job_store_batch_cb cb, void *arg);

/* START and the job's first pending batch in one round trip: as bd_job_store_start, and,
 * when the job was started (row not NULL), its first pending batch as
 * bd_job_store_load_batch(after_batch_no -1) would give it right after (batch->has_batch
 * false: none left; batch->is_cancel_requested is row->is_cancel_requested). row and batch
 * are NULL together (the job is not startable); both borrowed during cb. */
typedef void (*bd_job_store_start_load_cb)(int status, const struct bd_job_start_row *row,
                                           const struct bd_job_batch_row *batch,
                                           const struct bd_job_store_err *err, void *arg);
int bd_job_store_start_load(struct bd_pg *pg, const char *job_id, const char *worker_id,
                            const char *sources, bd_job_store_start_load_cb cb, void *arg);

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

/* The pool group kinds (bd_pg_group_add) the job module's statements use: one list, so no
 * two callers ever share a kind. start and finish run on the engine's pool, submit on the
 * API's; all below BD_PG_GROUP_KINDS. */
enum bd_job_store_group_kind {
    BD_JOB_STORE_GROUP_START,         /* bd_job_store_start_load (job_store.c) */
    BD_JOB_STORE_GROUP_FINISH,        /* bd_job_store_finish (job_store.c) */
    BD_JOB_STORE_GROUP_SUBMIT,        /* small submits' group commit (job_submit.c) */
};

/* ---- a small batch's write: one statement, no staging table, no leased connection -----
 * For a batch that bd_job_store_is_small_batch accepts: the rows staged as for
 * bd_job_store_write_stage (stage_begin .. stage_end, into `stage`) go to PostgreSQL as
 * arrays in ONE statement that checkpoints the batch only if it is still pending (the
 * batch row's update takes its lock and re-reads its status, in the same statement) and
 * writes the vectors, cache rows, item errors and the job's counters only then: all or
 * nothing, exactly once. One round trip on a pooled connection (no BEGIN/COMMIT, no COPY,
 * no temp table). sql is a scratch buffer the caller owns (its arrays are copied before the
 * call returns). cp as for bd_job_store_write_commit. */
#define BD_JOB_STORE_SMALL_ITEMS 128          /* items of a "small" batch, at most */
#define BD_JOB_STORE_SMALL_BYTES (512 * 1024) /* bytes of its staged rows, at most */
bool bd_job_store_is_small_batch(const struct bd_buf *stage, unsigned item_count);

struct bd_job_write_row {
    bool is_pending;             /* false: the batch was not pending; nothing was written */
    bool has_more;               /* another batch of the job is still pending */
    bool is_cancel_requested;    /* the job's cancel flag (after a write; else false) */
};
/* row borrowed during cb, NULL when status < 0. */
typedef void (*bd_job_store_written_cb)(int status, const struct bd_job_write_row *row,
                                        const struct bd_job_store_err *err, void *arg);
/* BD_EINVAL when stage is not a staged payload of this module's rows. */
int bd_job_store_write_small(struct bd_pg *pg, struct bd_buf *sql, const struct bd_buf *stage,
                             const struct bd_job_checkpoint *cp, bd_job_store_written_cb cb,
                             void *arg);

/* End a run: compare-and-set from 'processing' to the final state. final_state is the
 * state machine's decision (BD_JOB_COMPLETED means "by the counters": every item failed
 * -> failed); a cancel recorded in PostgreSQL turns a completion into 'cancelled'.
 * row NULL: the job was not processing any more. row->state BD_JOB_PROCESSING: not
 * finished, a completion was asked but a batch is still pending in PostgreSQL (a
 * checkpoint lost in a PostgreSQL crash): the job must run again. */
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

/* Active jobs and the largest sequence ever used; rows borrowed during cb. */
typedef void (*bd_job_store_active_cb)(int status, const struct bd_job_queue_row *rows,
                                       unsigned count, long long max_seq,
                                       const struct bd_job_store_err *err, void *arg);

/* The queue rebuild, page by page (no loop turn decodes every active job): up to limit
 * jobs of status (queued or processing) in priority bucket prio_bucket (0: priority <= 0,
 * 1: priority 1, 2: >= 2) with seq > after_seq, by seq; max_seq is the largest seq of any
 * job (0 for none). A page shorter than limit is the bucket's last. BD_EINVAL (another
 * status, limit 0) or the pool's error: cb never called; else once, later. */
int bd_job_store_list_active_page(struct bd_pg *pg, enum bd_job_state status, int prio_bucket,
                                  long long after_seq, unsigned limit,
                                  bd_job_store_active_cb cb, void *arg);

/* Delete terminal jobs (and their batches/errors) and cache rows older than age_s. */
typedef void (*bd_job_store_count_cb)(int status, long long n, const struct bd_job_store_err *err,
                                      void *arg);
int bd_job_store_sweep(struct bd_pg *pg, double age_s, bd_job_store_count_cb cb, void *arg);

/* Items per second over jobs finished in the last 15 minutes (any process). */
typedef void (*bd_job_store_rate_cb)(int status, double items_per_s,
                                     const struct bd_job_store_err *err, void *arg);
int bd_job_store_throughput(struct bd_pg *pg, bd_job_store_rate_cb cb, void *arg);


/* ---- the queue's pause state and the bulk retry (job_store_queue.c) -------------------- */

/* One pause in force: model "" is the whole queue. Borrowed during the callback. */
struct bd_job_pause_row {
    const char *model;
    long long paused_at_ms;            /* PostgreSQL's clock, ms since the epoch */
};
typedef void (*bd_job_store_pauses_cb)(int status, const struct bd_job_pause_row *rows,
                                       unsigned count, const struct bd_job_store_err *err,
                                       void *arg);

/* Every pause in force (table queue_pauses), by model name ("" first). Callback contract
 * as usual; rows borrowed during cb. */
int bd_job_store_get_pauses(struct bd_pg *pg, bd_job_store_pauses_cb cb, void *arg);

/* Pause (is_paused) or resume model ("" = the whole queue): insert or delete its row. cb's
 * n is 1 when the row changed, 0 when it already was so. model borrowed for the call.
 * BD_EINVAL for a NULL model. */
int bd_job_store_set_pause(struct bd_pg *pg, const char *model, bool is_paused,
                           bd_job_store_count_cb cb, void *arg);

/* The jobs POST /jobs/retry-failed retries: ended in one of the states of state_mask (bit
 * 1u << enum bd_job_state; only completed, failed and cancelled count) and failed (status
 * failed, or failed_items > 0), of model (NULL: any) and operation (has_operation), newest
 * first, at most limit (>= 1). ids borrowed during cb; has_more: more matched. */
typedef void (*bd_job_store_ids_cb)(int status, const char *const *ids, unsigned count,
                                    bool has_more, const struct bd_job_store_err *err,
                                    void *arg);
int bd_job_store_list_retryable(struct bd_pg *pg, unsigned state_mask, const char *model,
                                bool has_operation, enum bd_job_operation operation,
                                unsigned limit, bd_job_store_ids_cb cb, void *arg);

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

struct bd_job_row;

/* The job an Idempotency-Key already names. */
struct bd_job_store_idem_row {
    bool is_found;
    const char *job_id;               /* borrowed for the callback */
    const char *request_hash;         /* hex SHA-256 of the body that created it */
    const struct bd_job_row *job;     /* the job's status row, for the replay answer */
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

/* The most jobs one group statement (bd_job_store_create_jobs) carries. */
#define BD_JOB_STORE_NEW_JOBS_MAX 4000

/* One batch of a job that bd_job_store_create_jobs writes: bd_job_store_put_batch's
 * fields (items_json for bulk_embed, payload for bulk_insert, the other NULL). Borrowed. */
struct bd_job_store_new_batch {
    const char *job_id;
    unsigned batch_no, first_index, item_count;
    const char *items_json;
    size_t items_len;
    const void *payload;
    size_t payload_len;
};

/* Create jobs[0..n) (1 <= n <= BD_JOB_STORE_NEW_JOBS_MAX), status queued, and their
 * batches[0..nb) in ONE statement, on a connection of the pool for its duration: one
 * round trip, no explicit transaction -- the statement is its own (the pool's
 * synchronous_commit applies: when cb hears BD_OK the rows are durable), so every row of it
 * is written or none. The statement is prepared on each connection once
 * (bd_pg_query_prepared, name "bd_submit_jobs") and takes the rows as binary arrays. cb
 * (bd_pg_result_cb) gets BD_OK; or BD_EPG with the error result, when PostgreSQL refused
 * the statement and wrote nothing (SQLSTATE 23505: an Idempotency-Key taken); or an error
 * with res NULL when no answer came (the connection was lost once it was sent, no
 * connection within the pool's acquire timeout, or BD_ECANCELED: the pool closing): the
 * rows may or may not be there then (bd_job_store_job_exists tells). Returns BD_EINVAL for
 * n out of range, BD_ENOMEM, BD_ECANCELED (cb then never runs). Copies the rows into the
 * call's parameters. */
int bd_job_store_create_jobs(struct bd_pg *pg, const struct bd_job_store_new_job *jobs,
                             unsigned n, const struct bd_job_store_new_batch *batches,
                             unsigned nb, bd_pg_result_cb cb, void *arg);

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

/* A streamed job whose fields came after its data (a JSON body with "options" last): its
 * row's fields as the whole body gave them (id, model, collection, priority, batch_size,
 * timeout_s, max_retries, options_json, metadata_json; the rest is ignored), in the open
 * transaction. cb as bd_pg_conn_query's. */
int bd_job_store_amend_job(struct bd_pg_conn *conn, const struct bd_job_store_new_job *job,
                           bd_pg_result_cb cb, void *arg);

/* Cut a streamed job's stored batches (old_size items each, the last maybe fewer) again,
 * batch_size items each (batch_no, first_index and item_count follow), in the open
 * transaction and inside PostgreSQL: the items are not read back. is_insert: packed
 * payloads (job_batch.h), else compact JSON arrays in items. The batches must be numbered
 * 0.. with first_index counting the job's items. Joining whole batches (batch_size a
 * multiple of old_size) costs a copy; anything else splits every item out and regroups.
 * cb as bd_pg_conn_pipeline's. */
int bd_job_store_rebatch(struct bd_pg_conn *conn, const char *job_id, bool is_insert,
                         unsigned old_size, unsigned batch_size, bd_pg_result_cb cb,
                         void *arg);

/* A streamed job's totals, known once its body ended (its row was written first with 0):
 * items, batches, the vectors' dimension (options.dimension) and, when not NULL, the body's
 * hash for its Idempotency-Key, in the open transaction. */
int bd_job_store_set_totals(struct bd_pg_conn *conn, const char *job_id, unsigned items,
                            unsigned batches, unsigned dim, const char *request_hash,
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

/* Read side (job_store_read.c). Rows are typed and their strings BORROWED: every callback
 * below gets rows whose `const char *` members point into the PGresult, valid only until
 * the callback returns (pg_store PQclear's it then); copy what you keep. Numbers and enums
 * are plain values. Times are unix milliseconds, with has_* telling a NULL column apart.
 * Each function returns < 0 without calling back (BD_EPG when pg is NULL or the query could
 * not be sent), or BD_OK and calls cb exactly once, asynchronously: status BD_OK with the
 * rows, BD_ENOTFOUND when there is no such job, BD_EPG when PostgreSQL failed (then
 * pg_message is the server's message or NULL: for the log, never for a client), or
 * BD_EINTERNAL when a row could not be decoded. Each call allocates one small record (and,
 * for pages, the row array), freed when cb returns. */


/* One row of jobs: what the status object of SPEC §2 shows. */
struct bd_job_row {
    const char *id;
    enum bd_job_state status;
    enum bd_job_operation operation;
    const char *model;                 /* NULL for bulk_insert */
    const char *collection;
    long long total_items, processed_items, failed_items;
    long long next_batch, total_batches;
    long long stored_vectors, cache_hits, processing_ms;
    const char *error_code;            /* NULL when the job has no error */
    const char *error_message;
    bool is_cancel_requested;
    long long seq;
    long long created_ms, started_ms, completed_ms;
    bool has_started, has_completed;
    long long now_ms;                  /* the database's now(): durations never mix clocks */
};

/* The select list of struct bd_job_row over jobs, for a write statement's RETURNING (or a
 * SELECT) that wants to answer with the status object: its columns carry names, and
 * bd_job_row_from_pg reads them by name, so they may sit anywhere in the list. Names are
 * unqualified: use it only where they resolve to jobs. */
#define BD_JOB_ROW_COLUMNS                                                                  \
    "id, status, operation, model, collection, total_items, processed_items, failed_items, " \
    "next_batch, total_batches, stored_vectors, cache_hits, processing_ms, error_code, "    \
    "error_message, cancel_requested, seq, "                                                \
    "(extract(epoch FROM created_at) * 1000)::int8 AS created_ms, "                         \
    "(extract(epoch FROM started_at) * 1000)::int8 AS started_ms, "                         \
    "(extract(epoch FROM completed_at) * 1000)::int8 AS completed_ms, "                     \
    "(extract(epoch FROM now()) * 1000)::int8 AS now_ms"
#define BD_JOB_ROW_NCOLUMNS 21

/* Fill *out from row `row` of res (text format), which holds BD_JOB_ROW_COLUMNS. Strings
 * are borrowed from res. BD_OK, or BD_EINTERNAL when a column is missing or a value is not
 * one we know (an unknown status). */
int bd_job_row_from_pg(const PGresult *res, int row, struct bd_job_row *out);

/* GET /jobs/{id}/status, SSE: one job's row. */
typedef void (*bd_job_store_job_cb)(int status, const struct bd_job_row *row,
                                const char *pg_message, void *arg);
int bd_job_store_get_job(struct bd_pg *pg, const char *job_id, bd_job_store_job_cb cb, void *arg);


/* GET /jobs/{id}: the row plus the job's settings and its latest item errors. */
struct bd_job_detail {
    struct bd_job_row row;
    int priority;                      /* enum bd_priority: 0 high, 1 normal, 2 low */
    long long batch_size, run_attempt;
    const char *options_json;          /* jsonb text; NULL when NULL */
    const char *metadata_json;
    const char *idempotency_key;       /* NULL when none */
    double timeout_s;
    bool has_timeout_s;
    long long max_retries;
    bool has_max_retries;
    long long errors_count;            /* rows in job_item_errors */
    const char *last_errors_json;      /* JSON array of the BD_STORE_LAST_ERRORS latest item
                                        * errors (latest run first): {item_index, item_id,
                                        * code, message} */
};
#define BD_STORE_LAST_ERRORS 10
typedef void (*bd_job_store_job_detail_cb)(int status, const struct bd_job_detail *job,
                                       const char *pg_message, void *arg);
int bd_job_store_get_job_detail(struct bd_pg *pg, const char *job_id, bd_job_store_job_detail_cb cb,
                            void *arg);

/* /debug/job/{id}: the detail plus the lease owner and the first max_batches batches. */
struct bd_job_debug {
    struct bd_job_detail job;
    const char *lease_owner;           /* NULL when none */
    long long batches_count;           /* all of the job's batches */
    const char *batches_json;          /* JSON array, by batch_no, at most max_batches:
                                        * {batch_no, first_index, item_count, status, attempts,
                                        * processed, failed, last_error, duration_ms,
                                        * updated_at (RFC 3339)} */
};
typedef void (*bd_job_store_job_debug_cb)(int status, const struct bd_job_debug *dbg,
                                      const char *pg_message, void *arg);
int bd_job_store_get_job_debug(struct bd_pg *pg, const char *job_id, unsigned max_batches,
                           bd_job_store_job_debug_cb cb, void *arg);

/* GET /jobs: newest first (by seq), filters optional. */
struct bd_job_filter {
    bool has_status;
    enum bd_job_state status;
    const char *model;                 /* NULL: any */
    bool has_operation;
    enum bd_job_operation operation;
    bool has_before_seq;               /* keyset: only jobs with seq < before_seq */
    long long before_seq;
    unsigned limit;                    /* rows wanted, >= 1 */
};
typedef void (*bd_job_store_jobs_cb)(int status, const struct bd_job_row *rows, size_t count,
                                 bool has_more, const char *pg_message, void *arg);
int bd_job_store_list_jobs(struct bd_pg *pg, const struct bd_job_filter *filter,
                       bd_job_store_jobs_cb cb, void *arg);

/* Most ids bd_job_store_get_jobs takes at once. */
#define BD_JOB_STORE_GET_JOBS_MAX 256

/* The rows of the jobs ids[0..count) that exist, in no particular order, in one statement
 * (the status cache's refreshes). An id without a row is simply absent from rows; cb's
 * has_more is always false. ids are borrowed for this call only. BD_EINVAL for count 0 or
 * over BD_JOB_STORE_GET_JOBS_MAX, BD_ENOMEM, or the pool's error: then cb is never called;
 * else cb is called once, asynchronously, with rows borrowed for the callback. */
int bd_job_store_get_jobs(struct bd_pg *pg, const char *const *ids, size_t count,
                          bd_job_store_jobs_cb cb, void *arg);

/* GET /jobs/{id}/items: per-item outcomes, by item index. An item failed when it has a
 * job_item_errors row; it succeeded when its batch is done and it has none. Items of
 * batches not yet run are in neither list. */
enum bd_item_filter { BD_ITEMS_ALL = 0, BD_ITEMS_FAILED, BD_ITEMS_SUCCEEDED };
struct bd_item_row {
    long long index;
    const char *id;                    /* NULL when unknown */
    const char *error_code;            /* NULL when the item succeeded */
    const char *error_message;
};
struct bd_item_page {
    enum bd_job_state job_status;
    const struct bd_item_row *rows;    /* count rows, index ascending */
    size_t count;
    bool has_more;                     /* items after the last row exist now */
};
typedef void (*bd_job_store_items_cb)(int status, const struct bd_item_page *page,
                                  const char *pg_message, void *arg);
/* Items with index >= from_index, at most limit (>= 1). */
int bd_job_store_list_items(struct bd_pg *pg, const char *job_id, enum bd_item_filter filter,
                        long long from_index, unsigned limit, bd_job_store_items_cb cb, void *arg);

/* GET /jobs/{id}/results: stored vectors of the job, by item index. */
struct bd_result_row {
    long long index;
    const char *id;
    size_t id_len;
    const char *embedding;             /* PostgreSQL's text form of real[] ("{0.1,NaN}") */
    size_t embedding_len;
    const char *metadata_json;         /* jsonb text; NULL when NULL */
    size_t metadata_len;
};
struct bd_result_page {
    enum bd_job_state job_status;
    const char *collection;
    const struct bd_result_row *rows;  /* count rows, index ascending */
    size_t count;
    bool has_more;
};
typedef void (*bd_job_store_results_cb)(int status, const struct bd_result_page *page,
                                    const char *pg_message, void *arg);
/* Rows with index >= from_index: at most limit (>= 1), and no more rows after the one that
 * reaches max_bytes of stored data (vector and metadata as PostgreSQL stores them; their
 * JSON is about 3 to 4 times bigger); at least one row. Rows left out: has_more. */
int bd_job_store_list_results(struct bd_pg *pg, const char *job_id, long long from_index,
                              unsigned limit, size_t max_bytes, bd_job_store_results_cb cb,
                              void *arg);

/* Prometheus: jobs in each state (all processes). counts[state]. */
typedef void (*bd_job_store_state_counts_cb)(int status, const long long *counts,
                                         const char *pg_message, void *arg);
int bd_job_store_count_jobs_by_state(struct bd_pg *pg, bd_job_store_state_counts_cb cb, void *arg);

/* Queue status and JSON metrics: jobs grouped by (model, status), with sums. */
struct bd_job_group {
    const char *model;                 /* "" for jobs without a model */
    bool is_known_state;               /* false: a status string we do not know */
    enum bd_job_state state;
    long long jobs;
    long long processed_items, failed_items;
    long long processing_ms;           /* batch time summed */
    long long started;                 /* jobs with started_at */
    double wait_s;                     /* sum of started_at - created_at over those */
    long long ran;                     /* jobs with started_at and completed_at */
    double run_s;                      /* sum of completed_at - started_at over those */
};
typedef void (*bd_job_store_job_groups_cb)(int status, const struct bd_job_group *groups,
                                       size_t count, const char *pg_message, void *arg);
int bd_job_store_get_job_groups(struct bd_pg *pg, bd_job_store_job_groups_cb cb, void *arg);

/* Items checkpointed in the last window_s seconds (any job, any process), and the seconds
 * from the start of the first of those batches (or the window's start, if earlier) to now. */
typedef void (*bd_job_store_window_cb)(int status, long long items, double span_s,
                                   const char *pg_message, void *arg);
int bd_job_store_get_recent_items(struct bd_pg *pg, unsigned window_s, bd_job_store_window_cb cb,
                              void *arg);

#endif
