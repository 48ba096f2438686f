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

#include "batchd/job_engine.h"   /* enum bd_job_state, enum bd_job_operation */

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
typedef void (*bd_store_job_cb)(int status, const struct bd_job_row *row,
                                const char *pg_message, void *arg);
int bd_store_get_job(struct bd_pg *pg, const char *job_id, bd_store_job_cb cb, void *arg);

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
typedef void (*bd_store_job_detail_cb)(int status, const struct bd_job_detail *job,
                                       const char *pg_message, void *arg);
int bd_store_get_job_detail(struct bd_pg *pg, const char *job_id, bd_store_job_detail_cb cb,
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
typedef void (*bd_store_job_debug_cb)(int status, const struct bd_job_debug *dbg,
                                      const char *pg_message, void *arg);
int bd_store_get_job_debug(struct bd_pg *pg, const char *job_id, unsigned max_batches,
                           bd_store_job_debug_cb cb, void *arg);

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
typedef void (*bd_store_jobs_cb)(int status, const struct bd_job_row *rows, size_t count,
                                 bool has_more, const char *pg_message, void *arg);
int bd_store_list_jobs(struct bd_pg *pg, const struct bd_job_filter *filter,
                       bd_store_jobs_cb cb, void *arg);

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
typedef void (*bd_store_items_cb)(int status, const struct bd_item_page *page,
                                  const char *pg_message, void *arg);
/* Items with index >= from_index, at most limit (>= 1). */
int bd_store_list_items(struct bd_pg *pg, const char *job_id, enum bd_item_filter filter,
                        long long from_index, unsigned limit, bd_store_items_cb cb, void *arg);

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
typedef void (*bd_store_results_cb)(int status, const struct bd_result_page *page,
                                    const char *pg_message, void *arg);
int bd_store_list_results(struct bd_pg *pg, const char *job_id, long long from_index,
                          unsigned limit, bd_store_results_cb cb, void *arg);

/* Prometheus: jobs in each state (all processes). counts[state]. */
typedef void (*bd_store_state_counts_cb)(int status, const long long *counts,
                                         const char *pg_message, void *arg);
int bd_store_count_jobs_by_state(struct bd_pg *pg, bd_store_state_counts_cb cb, void *arg);

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
typedef void (*bd_store_job_groups_cb)(int status, const struct bd_job_group *groups,
                                       size_t count, const char *pg_message, void *arg);
int bd_store_get_job_groups(struct bd_pg *pg, bd_store_job_groups_cb cb, void *arg);

/* Items checkpointed in the last window_s seconds (any job, any process), and the seconds
 * from the start of the first of those batches (or the window's start, if earlier) to now. */
typedef void (*bd_store_window_cb)(int status, long long items, double span_s,
                                   const char *pg_message, void *arg);
int bd_store_get_recent_items(struct bd_pg *pg, unsigned window_s, bd_store_window_cb cb,
                              void *arg);

#endif
