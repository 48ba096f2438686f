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

struct bd_pg;
struct bd_pg_conn;

/* ------------------------------------------------------------------------------------
 * Writes: start, checkpoint, finish, cancel, retry, maintenance.
 * ------------------------------------------------------------------------------------ */

/* (engine write side: declarations follow) */


/* ------------------------------------------------------------------------------------
 * Writes: submit (the job row, its batches, idempotency lookups).
 * ------------------------------------------------------------------------------------ */

/* (submit: declarations follow) */

#include "batchd/pg_store.h"      /* bd_pg_result_cb, struct bd_pg_copybuf */

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
 * sends (bd_pg_copybuf_begin before the first row, bd_pg_copybuf_end after the last). A
 * batch has either items_json (bulk_embed: a JSON array of the items) or payload
 * (bulk_insert: the packed batch of job_batch.h); the other is NULL. Returns copy's sticky
 * error. Allocates. */
int bd_job_store_put_batch(struct bd_pg_copybuf *copy, const char *job_id, unsigned batch_no,
                           unsigned first_index, unsigned item_count, const char *items_json,
                           size_t items_len, const void *payload, size_t payload_len);

/* Send the batches (copy->data, borrowed until cb) in the open transaction on conn. */
int bd_job_store_copy_batches(struct bd_pg_conn *conn, const struct bd_pg_copybuf *copy,
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
