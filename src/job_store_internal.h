/* job_store_internal.h -- what the job store's files share (job_store.c, the engine's
 * writes; job_store_submit.c, a job's creation; job_store_read.c, the reads): the one call
 * record of a statement in flight, and the helpers that send a statement with it.
 */
#ifndef BATCHD_JOB_STORE_INTERNAL_H
#define BATCHD_JOB_STORE_INTERNAL_H

#include "batchd/job_store.h"
#include "batchd/pg_store.h"

/* The caller's typed callback while its statement runs. The bd__store_* senders copy a
 * template (usually a compound literal) into a malloc'ed record; the statement's pg
 * callback calls the caller back and frees it (one allocation per statement, never per
 * item). */
struct bd__store_call {
    union {
        bd_job_store_done_cb done;
        bd_job_store_start_cb start;
        bd_job_store_written_cb written;
        bd_job_store_batch_cb batch;
        bd_job_store_cache_cb cache;
        bd_job_store_locked_cb locked;
        bd_job_store_finish_cb finish;
        bd_job_store_state_cb state;
        bd_job_store_changed_cb changed;
        bd_job_store_requeued_cb requeued;
        bd_job_store_active_cb active;
        bd_job_store_count_cb count;
        bd_job_store_rate_cb rate;
        bd_job_store_collection_cb collection;
        bd_job_store_idem_cb idem;
        bd_job_store_exists_cb exists;
        bd_job_store_job_cb job;
        bd_job_store_job_detail_cb detail;
        bd_job_store_job_debug_cb debug;
        bd_job_store_jobs_cb jobs;
        bd_job_store_items_cb items;
        bd_job_store_results_cb results;
        bd_job_store_state_counts_cb counts;
        bd_job_store_job_groups_cb groups;
        bd_job_store_window_cb window;
        bd_job_store_pauses_cb pauses;
        bd_job_store_ids_cb ids;
    } cb;
    void *arg;
    unsigned limit;                   /* pages: rows asked for (one more was fetched) */
};

/* The template of a call record for a function whose parameters are named cb and arg. */
#define BD__STORE_CALL(kind) (&(struct bd__store_call){ .cb.kind = cb, .arg = arg })

/* bd_pg_query / bd_pg_conn_query / bd_pg_conn_copy_in with a copy of tmpl as the
 * callback's argument. Same contract: < 0 and on_result never called (nothing left
 * allocated), or BD_OK and on_result called once with the record (which it frees). */
int bd__store_query(struct bd_pg *pg, const char *sql, int nparams, const char *const *values,
                    const int *lengths, const int *formats, int result_binary,
                    bd_pg_result_cb on_result, const struct bd__store_call *tmpl);
int bd__store_conn_query(struct bd_pg_conn *conn, const char *sql, int nparams,
                         const char *const *values, const int *lengths, const int *formats,
                         int result_binary, bd_pg_result_cb on_result,
                         const struct bd__store_call *tmpl);
int bd__store_copy_in(struct bd_pg_conn *conn, const char *copy_sql, const char *data,
                      size_t len, bd_pg_result_cb on_result, const struct bd__store_call *tmpl);

/* The error of a failed statement (res may be NULL: connection lost); message borrowed
 * from res. (job_store.c) */
struct bd_job_store_err bd__store_err(const PGresult *res);

/* A text-format column: its value, NULL for SQL NULL; as a number (dflt for NULL); a
 * boolean ('t'). Borrowed from res. (job_store.c) */
const char *bd__store_str(const PGresult *res, int row, int col);
long long bd__store_ll(const PGresult *res, int row, int col, long long dflt);
double bd__store_double(const PGresult *res, int row, int col, double dflt);
bool bd__store_bool(const PGresult *res, int row, int col);

#endif
