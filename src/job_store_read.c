/* job_store_read.c -- the read side of the schema: every statement that only reads jobs,
 * job_batches, job_item_errors and vectors for the API (status, job document, list, items,
 * results, /debug, the metrics' aggregates), and the decoding of its rows.
 *
 * Owns the SQL text of those reads and the names of their columns: each select list sits
 * next to the table of names its decoder looks up (PQfnumber, once per result), so no
 * column is ever read by a bare number. Rows are handed to the caller typed, with strings
 * borrowed from the PGresult for the duration of the callback (see job_store.h). Loop
 * thread only; runs parameterized statements on the nonblocking pool of pg_store.h and
 * never blocks; writes nothing.  SPDX-License-Identifier: MIT
 */
#include "batchd/job_store.h"
#include "job_store_internal.h"

#include "batchd/buf.h"
#include "batchd/error.h"
#include "batchd/pg_store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- columns by name ------------------------------------------------------------------ */

/* Resolve names[0..n) to column numbers of res. BD_EINTERNAL when one is missing. */
static int store_cols(const PGresult *res, const char *const *names, int n, int *cols)
{
    for (int i = 0; i < n; i++)
        if ((cols[i] = PQfnumber(res, names[i])) < 0)
            return BD_EINTERNAL;
    return BD_OK;
}

static size_t store_len(const PGresult *res, int row, int col)
{
    return (size_t)PQgetlength(res, row, col);
}

/* ---- the job row ------------------------------------------------------------------------ */

/* The names BD_JOB_ROW_COLUMNS (job_store.h) gives its columns. */
enum store_job_col {
    JC_ID, JC_STATUS, JC_OPERATION, JC_MODEL, JC_COLLECTION, JC_TOTAL_ITEMS, JC_PROCESSED,
    JC_FAILED, JC_NEXT_BATCH, JC_TOTAL_BATCHES, JC_STORED, JC_CACHE_HITS, JC_PROCESSING_MS,
    JC_ERROR_CODE, JC_ERROR_MESSAGE, JC_CANCEL_REQUESTED, JC_SEQ, JC_CREATED_MS, JC_STARTED_MS,
    JC_COMPLETED_MS, JC_NOW_MS,
    JC_COUNT
};
static const char *const store_job_col_names[JC_COUNT] = {
    "id", "status", "operation", "model", "collection", "total_items", "processed_items",
    "failed_items", "next_batch", "total_batches", "stored_vectors", "cache_hits",
    "processing_ms", "error_code", "error_message", "cancel_requested", "seq", "created_ms",
    "started_ms", "completed_ms", "now_ms",
};
_Static_assert(JC_COUNT == BD_JOB_ROW_NCOLUMNS, "BD_JOB_ROW_COLUMNS and its names disagree");

static int store_job_row(const PGresult *res, int row, const int *c, struct bd_job_row *out)
{
    memset(out, 0, sizeof(*out));
    if (bd_job_state_parse(bd__store_str(res, row, c[JC_STATUS]), &out->status) < 0 ||
        bd_job_operation_parse(bd__store_str(res, row, c[JC_OPERATION]), &out->operation) < 0)
        return BD_EINTERNAL;
    out->id = PQgetvalue(res, row, c[JC_ID]);
    out->model = bd__store_str(res, row, c[JC_MODEL]);
    out->collection = PQgetvalue(res, row, c[JC_COLLECTION]);
    out->total_items = bd__store_ll(res, row, c[JC_TOTAL_ITEMS], 0);
    out->processed_items = bd__store_ll(res, row, c[JC_PROCESSED], 0);
    out->failed_items = bd__store_ll(res, row, c[JC_FAILED], 0);
    out->next_batch = bd__store_ll(res, row, c[JC_NEXT_BATCH], 0);
    out->total_batches = bd__store_ll(res, row, c[JC_TOTAL_BATCHES], 0);
    out->stored_vectors = bd__store_ll(res, row, c[JC_STORED], 0);
    out->cache_hits = bd__store_ll(res, row, c[JC_CACHE_HITS], 0);
    out->processing_ms = bd__store_ll(res, row, c[JC_PROCESSING_MS], 0);
    out->error_code = bd__store_str(res, row, c[JC_ERROR_CODE]);
    out->error_message = bd__store_str(res, row, c[JC_ERROR_MESSAGE]);
    out->is_cancel_requested = bd__store_bool(res, row, c[JC_CANCEL_REQUESTED]);
    out->seq = bd__store_ll(res, row, c[JC_SEQ], 0);
    out->created_ms = bd__store_ll(res, row, c[JC_CREATED_MS], 0);
    out->has_started = !PQgetisnull(res, row, c[JC_STARTED_MS]);
    out->started_ms = bd__store_ll(res, row, c[JC_STARTED_MS], 0);
    out->has_completed = !PQgetisnull(res, row, c[JC_COMPLETED_MS]);
    out->completed_ms = bd__store_ll(res, row, c[JC_COMPLETED_MS], 0);
    out->now_ms = bd__store_ll(res, row, c[JC_NOW_MS], 0);
    return BD_OK;
}

int bd_job_row_from_pg(const PGresult *res, int row, struct bd_job_row *out)
{
    int cols[JC_COUNT];

    if (res == NULL || row < 0 || row >= PQntuples(res) ||
        store_cols(res, store_job_col_names, JC_COUNT, cols) < 0)
        return BD_EINTERNAL;
    return store_job_row(res, row, cols, out);
}

static void store_on_jobs(int status, PGresult *res, void *arg);

/* ---- one call record per statement ------------------------------------------------------ */

/* One statement with a copy of tmpl as its call record (job_store_internal.h). */
static int store_send(struct bd_pg *pg, const char *sql, int nparams, const char *const *values,
                      bd_pg_result_cb on_result, const struct bd__store_call *tmpl)
{
    if (pg == NULL)
        return BD_EPG;
    return bd__store_query(pg, sql, nparams, values, NULL, NULL, 0, on_result, tmpl);
}

/* The server's message of a failed statement, or NULL. */
static const char *store_pg_message(int status, const PGresult *res)
{
    return status < 0 && res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
}

/* ---- one job: status row, detail, debug ------------------------------------------------ */

static const char store_sql_job[] = "SELECT " BD_JOB_ROW_COLUMNS " FROM jobs WHERE id = $1";

static void store_on_job(int status, PGresult *res, void *arg)
{
    struct bd__store_call *call = arg;
    int cols[JC_COUNT];
    struct bd_job_row row;

    if (status == BD_OK && PQntuples(res) == 0)
        status = BD_ENOTFOUND;
    else if (status == BD_OK && (store_cols(res, store_job_col_names, JC_COUNT, cols) < 0 ||
                                 store_job_row(res, 0, cols, &row) < 0))
        status = BD_EINTERNAL;
    call->cb.job(status, status == BD_OK ? &row : NULL, store_pg_message(status, res),
                 call->arg);
    free(call);
}

int bd_job_store_get_job(struct bd_pg *pg, const char *job_id, bd_job_store_job_cb cb, void *arg)
{
    struct bd__store_call tmpl = { .cb.job = cb, .arg = arg };
    const char *values[1] = { job_id };

    return store_send(pg, store_sql_job, 1, values, store_on_job, &tmpl);
}

/* Several jobs' rows in one statement (the status cache's refreshes): one round trip and
 * one plan for up to a few hundred ids instead of one each. The ids go as one text[]
 * literal, every element quoted. */
static const char store_sql_jobs_by_id[] =
    "SELECT " BD_JOB_ROW_COLUMNS " FROM jobs WHERE id = ANY($1::text[])";

int bd_job_store_get_jobs(struct bd_pg *pg, const char *const *ids, size_t count,
                          bd_job_store_jobs_cb cb, void *arg)
{
    struct bd__store_call tmpl = { .cb.jobs = cb, .arg = arg, .limit = (unsigned)count };
    struct bd_buf lit;
    const char *values[1];
    int rc;

    if (count == 0 || count > BD_JOB_STORE_GET_JOBS_MAX)
        return BD_EINVAL;
    bd_buf_init(&lit);
    bd_buf_puts(&lit, "{");
    for (size_t i = 0; i < count; i++) {
        bd_buf_puts(&lit, i ? ",\"" : "\"");
        for (const char *p = ids[i]; *p; p++) {
            if (*p == '"' || *p == '\\')
                bd_buf_append(&lit, "\\", 1);
            bd_buf_append(&lit, p, 1);
        }
        bd_buf_puts(&lit, "\"");
    }
    bd_buf_puts(&lit, "}");
    if (lit.is_failed) {
        bd_buf_free(&lit);
        return BD_ENOMEM;
    }
    values[0] = lit.data;
    rc = store_send(pg, store_sql_jobs_by_id, 1, values, store_on_jobs, &tmpl);
    bd_buf_free(&lit);                        /* libpq copied the parameter */
    return rc;
}

/* The job document's columns after the row's, and /debug's after those. */
#define STORE_DETAIL_COLUMNS                                                                \
    BD_JOB_ROW_COLUMNS ", priority, batch_size, options::text AS options, "                 \
    "metadata::text AS metadata, idempotency_key, run_attempt, timeout_s, max_retries, "     \
    "(SELECT count(*) FROM job_item_errors e WHERE e.job_id = jobs.id) AS errors_count, "  \
    "(SELECT coalesce(json_agg(json_build_object('item_index', e.item_index, "              \
    "'item_id', e.item_id, 'code', e.code, 'message', e.message) "                          \
    "ORDER BY e.run_attempt DESC, e.item_index DESC), '[]')::text "                         \
    "FROM (SELECT item_index, item_id, code, message, run_attempt FROM job_item_errors e "  \
    "WHERE e.job_id = jobs.id ORDER BY run_attempt DESC, item_index DESC "                  \
    "LIMIT " STORE_STR(BD_STORE_LAST_ERRORS) ") e) AS last_errors"
#define STORE_STR_(x) #x
#define STORE_STR(x) STORE_STR_(x)

enum store_detail_col {
    DC_PRIORITY, DC_BATCH_SIZE, DC_OPTIONS, DC_METADATA, DC_IDEMPOTENCY_KEY, DC_RUN_ATTEMPT,
    DC_TIMEOUT_S, DC_MAX_RETRIES, DC_ERRORS_COUNT, DC_LAST_ERRORS,
    /* /debug only */
    DC_LEASE_OWNER, DC_BATCHES_COUNT, DC_BATCHES,
    DC_COUNT,
    DC_DETAIL_COUNT = DC_LEASE_OWNER
};
static const char *const store_detail_col_names[DC_COUNT] = {
    "priority", "batch_size", "options", "metadata", "idempotency_key", "run_attempt",
    "timeout_s", "max_retries", "errors_count", "last_errors",
    "lease_owner", "batches_count", "batches",
};

static const char store_sql_job_detail[] =
    "SELECT " STORE_DETAIL_COLUMNS " FROM jobs WHERE id = $1";

static const char store_sql_job_debug[] =
    "SELECT " STORE_DETAIL_COLUMNS ", lease_owner, "
    "(SELECT count(*) FROM job_batches b WHERE b.job_id = jobs.id) AS batches_count, "
    "(SELECT coalesce(json_agg(json_build_object('batch_no', b.batch_no, "
    "'first_index', b.first_index, 'item_count', b.item_count, 'status', b.status, "
    "'attempts', b.attempts, 'processed', b.processed, 'failed', b.failed, "
    "'last_error', b.last_error, 'duration_ms', b.duration_ms, 'updated_at', "
    "to_char(b.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')) "
    "ORDER BY b.batch_no), '[]')::text "
    "FROM (SELECT batch_no, first_index, item_count, status, attempts, processed, failed, "
    "last_error, duration_ms, updated_at FROM job_batches b WHERE b.job_id = jobs.id "
    "ORDER BY batch_no LIMIT $2) b) AS batches "
    "FROM jobs WHERE id = $1";

/* Decode the detail (and, with is_debug, the /debug columns) of row 0. */
static int store_job_detail(const PGresult *res, bool is_debug, struct bd_job_debug *out)
{
    int jc[JC_COUNT], dc[DC_COUNT];
    struct bd_job_detail *d = &out->job;

    memset(out, 0, sizeof(*out));
    if (store_cols(res, store_job_col_names, JC_COUNT, jc) < 0 ||
        store_cols(res, store_detail_col_names, is_debug ? DC_COUNT : DC_DETAIL_COUNT, dc) < 0 ||
        store_job_row(res, 0, jc, &d->row) < 0)
        return BD_EINTERNAL;
    d->priority = (int)bd__store_ll(res, 0, dc[DC_PRIORITY], 0);
    d->batch_size = bd__store_ll(res, 0, dc[DC_BATCH_SIZE], 0);
    d->options_json = bd__store_str(res, 0, dc[DC_OPTIONS]);
    d->metadata_json = bd__store_str(res, 0, dc[DC_METADATA]);
    d->idempotency_key = bd__store_str(res, 0, dc[DC_IDEMPOTENCY_KEY]);
    d->run_attempt = bd__store_ll(res, 0, dc[DC_RUN_ATTEMPT], 0);
    d->has_timeout_s = !PQgetisnull(res, 0, dc[DC_TIMEOUT_S]);
    d->timeout_s = bd__store_double(res, 0, dc[DC_TIMEOUT_S], 0.0);
    d->has_max_retries = !PQgetisnull(res, 0, dc[DC_MAX_RETRIES]);
    d->max_retries = bd__store_ll(res, 0, dc[DC_MAX_RETRIES], 0);
    d->errors_count = bd__store_ll(res, 0, dc[DC_ERRORS_COUNT], 0);
    d->last_errors_json = bd__store_str(res, 0, dc[DC_LAST_ERRORS]);
    if (is_debug) {
        out->lease_owner = bd__store_str(res, 0, dc[DC_LEASE_OWNER]);
        out->batches_count = bd__store_ll(res, 0, dc[DC_BATCHES_COUNT], 0);
        out->batches_json = bd__store_str(res, 0, dc[DC_BATCHES]);
    }
    return BD_OK;
}

static void store_on_job_detail(int status, PGresult *res, void *arg)
{
    struct bd__store_call *call = arg;
    struct bd_job_debug dbg;

    if (status == BD_OK && PQntuples(res) == 0)
        status = BD_ENOTFOUND;
    else if (status == BD_OK && store_job_detail(res, false, &dbg) < 0)
        status = BD_EINTERNAL;
    call->cb.detail(status, status == BD_OK ? &dbg.job : NULL, store_pg_message(status, res),
                    call->arg);
    free(call);
}

int bd_job_store_get_job_detail(struct bd_pg *pg, const char *job_id, bd_job_store_job_detail_cb cb,
                            void *arg)
{
    struct bd__store_call tmpl = { .cb.detail = cb, .arg = arg };
    const char *values[1] = { job_id };

    return store_send(pg, store_sql_job_detail, 1, values, store_on_job_detail, &tmpl);
}

static void store_on_job_debug(int status, PGresult *res, void *arg)
{
    struct bd__store_call *call = arg;
    struct bd_job_debug dbg;

    if (status == BD_OK && PQntuples(res) == 0)
        status = BD_ENOTFOUND;
    else if (status == BD_OK && store_job_detail(res, true, &dbg) < 0)
        status = BD_EINTERNAL;
    call->cb.debug(status, status == BD_OK ? &dbg : NULL, store_pg_message(status, res),
                   call->arg);
    free(call);
}

int bd_job_store_get_job_debug(struct bd_pg *pg, const char *job_id, unsigned max_batches,
                           bd_job_store_job_debug_cb cb, void *arg)
{
    struct bd__store_call tmpl = { .cb.debug = cb, .arg = arg };
    char limit[16];
    const char *values[2] = { job_id, limit };

    snprintf(limit, sizeof(limit), "%u", max_batches);
    return store_send(pg, store_sql_job_debug, 2, values, store_on_job_debug, &tmpl);
}

/* ---- the queue rebuild's pages -----------------------------------------------------------
 * One page: the active jobs of one status and one priority bucket after a seq, by seq, with
 * max(seq) over every job. An index range scan on (status, seq) per page; the LEFT JOIN
 * keeps one row (NULL id) when the page is empty, so max_seq still comes back. */

static const char store_sql_active_page[] =
    "SELECT m.max_seq, j.id, j.priority, j.seq, j.model, j.total_items, j.run_attempt "
    "FROM (SELECT max(seq) AS max_seq FROM jobs) m LEFT JOIN LATERAL ("
    "SELECT id, priority, seq, COALESCE(model, '') AS model, total_items, run_attempt "
    "FROM jobs WHERE status = $1 AND seq > $2::int8 AND CASE $3::int "
    "WHEN 0 THEN priority <= 0 WHEN 1 THEN priority = 1 ELSE priority >= 2 END "
    "ORDER BY seq LIMIT $4::int) j ON true ORDER BY j.seq";

enum store_active_col { AC_MAX_SEQ, AC_ID, AC_PRIORITY, AC_SEQ, AC_MODEL, AC_TOTAL_ITEMS,
                        AC_RUN_ATTEMPT, AC_COUNT };
static const char *const store_active_col_names[AC_COUNT] = {
    "max_seq", "id", "priority", "seq", "model", "total_items", "run_attempt",
};

static void store_on_active_page(int status, PGresult *res, void *arg)
{
    struct bd__store_call *call = arg;
    struct bd_job_queue_row *rows = NULL;
    int cols[AC_COUNT], n = status == BD_OK ? PQntuples(res) : 0;
    unsigned count = 0;
    long long max_seq = 0;

    if (status == BD_OK && n > 0 && store_cols(res, store_active_col_names, AC_COUNT, cols) < 0)
        status = BD_EINTERNAL;
    else if (status == BD_OK && n > 0 && (rows = calloc((size_t)n, sizeof(*rows))) == NULL)
        status = BD_ENOMEM;
    for (int i = 0; status == BD_OK && i < n; i++) {
        struct bd_job_queue_row *r = &rows[count];
        max_seq = bd__store_ll(res, i, cols[AC_MAX_SEQ], 0);
        if (PQgetisnull(res, i, cols[AC_ID]))   /* an empty page's one row */
            continue;
        if (store_len(res, i, cols[AC_ID]) >= sizeof(r->id) ||
            store_len(res, i, cols[AC_MODEL]) >= sizeof(r->model)) {
            status = BD_EINTERNAL;
            break;
        }
        memcpy(r->id, PQgetvalue(res, i, cols[AC_ID]), store_len(res, i, cols[AC_ID]) + 1);
        memcpy(r->model, PQgetvalue(res, i, cols[AC_MODEL]),
               store_len(res, i, cols[AC_MODEL]) + 1);
        r->priority = (int)bd__store_ll(res, i, cols[AC_PRIORITY], 1);
        r->seq = bd__store_ll(res, i, cols[AC_SEQ], 0);
        r->total_items = bd__store_ll(res, i, cols[AC_TOTAL_ITEMS], 0);
        r->run_attempt = (int)bd__store_ll(res, i, cols[AC_RUN_ATTEMPT], 1);
        count++;
    }
    if (status < 0) {
        struct bd_job_store_err e = { .message = store_pg_message(status, res) };
        call->cb.active(status, NULL, 0, 0, &e, call->arg);
    } else {
        call->cb.active(BD_OK, rows, count, max_seq, NULL, call->arg);
    }
    free(rows);
    free(call);
}

int bd_job_store_list_active_page(struct bd_pg *pg, enum bd_job_state status, int prio_bucket,
                                  long long after_seq, unsigned limit,
                                  bd_job_store_active_cb cb, void *arg)
{
    struct bd__store_call tmpl = { .cb.active = cb, .arg = arg };
    char seq[32], bucket[16], lim[16];
    const char *values[4] = { bd_job_state_name(status), seq, bucket, lim };

    if (limit == 0 || (status != BD_JOB_QUEUED && status != BD_JOB_PROCESSING))
        return BD_EINVAL;
    snprintf(seq, sizeof(seq), "%lld", after_seq);
    snprintf(bucket, sizeof(bucket), "%d", prio_bucket);
    snprintf(lim, sizeof(lim), "%u", limit);
    return store_send(pg, store_sql_active_page, 4, values, store_on_active_page, &tmpl);
}

/* ---- the job list ------------------------------------------------------------------------ */

/* The planner sees the actual parameters (unnamed statement), so the "IS NULL OR" filters
 * fold away and the (status, seq DESC) / (seq DESC) indexes apply. */
static const char store_sql_jobs[] =
    "SELECT " BD_JOB_ROW_COLUMNS " FROM jobs "
    "WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR model = $2) "
    "AND ($3::text IS NULL OR operation = $3) AND ($4::int8 IS NULL OR seq < $4) "
    "ORDER BY seq DESC LIMIT $5";

/* Rows of a page: n fetched, one more than asked tells has_more. */
static size_t store_page_rows(const PGresult *res, unsigned limit, bool *has_more)
{
    size_t n = (size_t)PQntuples(res);

    *has_more = n > limit;
    return *has_more ? limit : n;
}

static void store_on_jobs(int status, PGresult *res, void *arg)
{
    struct bd__store_call *call = arg;
    struct bd_job_row *rows = NULL;
    int cols[JC_COUNT];
    size_t n = 0;
    bool has_more = false;

    if (status == BD_OK) {
        n = store_page_rows(res, call->limit, &has_more);
        if (store_cols(res, store_job_col_names, JC_COUNT, cols) < 0)
            status = BD_EINTERNAL;
        else if (n > 0 && (rows = calloc(n, sizeof(*rows))) == NULL)
            status = BD_ENOMEM;
        for (size_t i = 0; status == BD_OK && i < n; i++)
            if (store_job_row(res, (int)i, cols, &rows[i]) < 0)
                status = BD_EINTERNAL;
    }
    if (status < 0) {
        n = 0;
        has_more = false;
    }
    call->cb.jobs(status, status == BD_OK ? rows : NULL, n, has_more,
                  store_pg_message(status, res), call->arg);
    free(rows);
    free(call);
}

int bd_job_store_list_jobs(struct bd_pg *pg, const struct bd_job_filter *f, bd_job_store_jobs_cb cb,
                       void *arg)
{
    struct bd__store_call tmpl = { .cb.jobs = cb, .arg = arg, .limit = f->limit };
    char seq[32], limit[16];
    const char *values[5];

    snprintf(seq, sizeof(seq), "%lld", f->before_seq);
    snprintf(limit, sizeof(limit), "%u", f->limit + 1);
    values[0] = f->has_status ? bd_job_state_name(f->status) : NULL;
    values[1] = f->model;
    values[2] = f->has_operation ? bd_job_operation_name(f->operation) : NULL;
    values[3] = f->has_before_seq ? seq : NULL;
    values[4] = limit;
    return store_send(pg, store_sql_jobs, 5, values, store_on_jobs, &tmpl);
}

/* ---- items and results ------------------------------------------------------------------
 * Both join the job so that one round trip tells "no such job" (no row) from "no items
 * yet" (one row whose item columns are NULL). Parameters: $1 job id, $2 first item index,
 * $3 rows (one more than asked). */

/* Failed items: their job_item_errors rows. */
#define STORE_ITEMS_FAILED                                                                  \
    "SELECT e.item_index, e.item_id, e.code, e.message FROM job_item_errors e "             \
    "WHERE e.job_id = j.id AND e.item_index >= $2 ORDER BY e.item_index LIMIT $3"

/* Succeeded items: those of done batches without an error row. Batches are walked in
 * batch_no order (their first_index grows with it), so the LIMIT stops the walk early. The
 * id is the stored vector's, or, when a later job overwrote that vector, the one given
 * in the batch's items (bulk_embed; bulk_insert batches are packed, so NULL there). */
#define STORE_ITEMS_SUCCEEDED                                                               \
    "SELECT g.i AS item_index, COALESCE("                                                    \
    "(SELECT v.id FROM vectors v WHERE v.job_id = b.job_id AND v.item_index = g.i LIMIT 1), " \
    "(b.items::json -> (g.i - b.first_index)) ->> 'id') AS item_id, "                      \
    "NULL::text AS code, NULL::text AS message FROM job_batches b "                         \
    "CROSS JOIN LATERAL generate_series(GREATEST(b.first_index, $2::int), "                 \
    "b.first_index + b.item_count - 1) g(i) "                                                \
    "WHERE b.job_id = j.id AND b.status = 'done' AND b.first_index + b.item_count > $2 "    \
    "AND NOT EXISTS (SELECT 1 FROM job_item_errors e WHERE e.job_id = b.job_id "            \
    "AND e.item_index = g.i) ORDER BY b.batch_no, g.i LIMIT $3"

#define STORE_ITEMS_SQL(sub)                                                                \
    "SELECT j.status AS job_status, x.item_index, x.item_id, x.code, x.message FROM jobs j " \
    "LEFT JOIN LATERAL (" sub ") x ON true WHERE j.id = $1 ORDER BY x.item_index"

/* Each side is cut to $3 rows before the merge, which is enough for the first $3 of the
 * union; the two sides never hold the same item. */
static const char *const store_sql_items[] = {
    [BD_ITEMS_ALL] = STORE_ITEMS_SQL("(" STORE_ITEMS_FAILED ") UNION ALL ("
                                     STORE_ITEMS_SUCCEEDED ") ORDER BY item_index LIMIT $3"),
    [BD_ITEMS_FAILED] = STORE_ITEMS_SQL(STORE_ITEMS_FAILED),
    [BD_ITEMS_SUCCEEDED] = STORE_ITEMS_SQL(STORE_ITEMS_SUCCEEDED),
};

enum store_item_col { IC_JOB_STATUS, IC_INDEX, IC_ID, IC_CODE, IC_MESSAGE, IC_COUNT };
static const char *const store_item_col_names[IC_COUNT] = {
    "job_status", "item_index", "item_id", "code", "message",
};

/* Common to items and results: the job's status from row 0 and the number of item rows
 * (0 when the only row is the job's with NULL item columns). */
static int store_page_head(const PGresult *res, int status_col, int index_col, unsigned limit,
                           enum bd_job_state *job_status, size_t *n, bool *has_more)
{
    if (PQntuples(res) == 0)
        return BD_ENOTFOUND;
    if (bd_job_state_parse(PQgetvalue(res, 0, status_col), job_status) < 0)
        return BD_EINTERNAL;
    *n = store_page_rows(res, limit, has_more);
    if (*n == 1 && PQgetisnull(res, 0, index_col))
        *n = 0;
    return BD_OK;
}

static void store_on_items(int status, PGresult *res, void *arg)
{
    struct bd__store_call *call = arg;
    struct bd_item_page page = { 0 };
    struct bd_item_row *rows = NULL;
    int c[IC_COUNT];

    if (status == BD_OK && store_cols(res, store_item_col_names, IC_COUNT, c) < 0)
        status = BD_EINTERNAL;
    if (status == BD_OK)
        status = store_page_head(res, c[IC_JOB_STATUS], c[IC_INDEX], call->limit,
                                 &page.job_status, &page.count, &page.has_more);
    if (status == BD_OK && page.count > 0 && (rows = calloc(page.count, sizeof(*rows))) == NULL)
        status = BD_ENOMEM;
    for (size_t i = 0; status == BD_OK && i < page.count; i++) {
        rows[i].index = bd__store_ll(res, (int)i, c[IC_INDEX], 0);
        rows[i].id = bd__store_str(res, (int)i, c[IC_ID]);
        rows[i].error_code = bd__store_str(res, (int)i, c[IC_CODE]);
        rows[i].error_message = bd__store_str(res, (int)i, c[IC_MESSAGE]);
    }
    page.rows = rows;
    call->cb.items(status, status == BD_OK ? &page : NULL, store_pg_message(status, res),
                   call->arg);
    free(rows);
    free(call);
}

int bd_job_store_list_items(struct bd_pg *pg, const char *job_id, enum bd_item_filter filter,
                        long long from_index, unsigned limit, bd_job_store_items_cb cb, void *arg)
{
    struct bd__store_call tmpl = { .cb.items = cb, .arg = arg, .limit = limit };
    char from[32], lim[16];
    const char *values[3] = { job_id, from, lim };

    if ((unsigned)filter > BD_ITEMS_SUCCEEDED)
        return BD_EINVAL;
    snprintf(from, sizeof(from), "%lld", from_index);
    snprintf(lim, sizeof(lim), "%u", limit + 1);
    return store_send(pg, store_sql_items[filter], 3, values, store_on_items, &tmpl);
}

/* A page stops at limit rows or at the row that reaches $4 bytes of stored data, whichever
 * comes first (always at least one row): a page of 1,000 vectors of 65,536 floats would be
 * 250 MB in PostgreSQL's result, again as JSON and again in the socket's queue. is_cut says
 * rows were left out for the bytes: has_more. */
static const char store_sql_results[] =
    "SELECT j.status AS job_status, j.collection, x.item_index, x.id, "
    "x.embedding::text AS embedding, x.metadata::text AS metadata, x.is_cut "
    "FROM jobs j LEFT JOIN LATERAL (SELECT * FROM (SELECT w.*, "
    "bool_or(w.before >= $4) OVER () AS is_cut FROM (SELECT s.*, "
    "sum(s.size) OVER (ORDER BY s.item_index ROWS UNBOUNDED PRECEDING) - s.size AS before "
    "FROM (SELECT item_index, id, embedding, metadata, "
    "pg_column_size(embedding) + COALESCE(pg_column_size(metadata), 0) AS size "
    "FROM vectors v WHERE v.job_id = j.id AND v.item_index >= $2 ORDER BY item_index "
    "LIMIT $3) s) w) y WHERE y.before < $4 OR y.before = 0) x ON true "
    "WHERE j.id = $1 ORDER BY x.item_index";

enum store_result_col {
    RC_JOB_STATUS, RC_COLLECTION, RC_INDEX, RC_ID, RC_EMBEDDING, RC_METADATA, RC_IS_CUT,
    RC_COUNT
};
static const char *const store_result_col_names[RC_COUNT] = {
    "job_status", "collection", "item_index", "id", "embedding", "metadata", "is_cut",
};

static void store_on_results(int status, PGresult *res, void *arg)
{
    struct bd__store_call *call = arg;
    struct bd_result_page page = { 0 };
    struct bd_result_row *rows = NULL;
    int c[RC_COUNT];

    if (status == BD_OK && store_cols(res, store_result_col_names, RC_COUNT, c) < 0)
        status = BD_EINTERNAL;
    if (status == BD_OK)
        status = store_page_head(res, c[RC_JOB_STATUS], c[RC_INDEX], call->limit,
                                 &page.job_status, &page.count, &page.has_more);
    if (status == BD_OK && page.count > 0 && (rows = calloc(page.count, sizeof(*rows))) == NULL)
        status = BD_ENOMEM;
    if (status == BD_OK)
        page.collection = PQgetvalue(res, 0, c[RC_COLLECTION]);
    if (status == BD_OK && page.count > 0 && PQgetvalue(res, 0, c[RC_IS_CUT])[0] == 't')
        page.has_more = true;
    for (size_t i = 0; status == BD_OK && i < page.count; i++) {
        int r = (int)i;
        rows[i].index = bd__store_ll(res, r, c[RC_INDEX], 0);
        rows[i].id = PQgetvalue(res, r, c[RC_ID]);
        rows[i].id_len = store_len(res, r, c[RC_ID]);
        rows[i].embedding = bd__store_str(res, r, c[RC_EMBEDDING]);
        rows[i].embedding_len = store_len(res, r, c[RC_EMBEDDING]);
        rows[i].metadata_json = bd__store_str(res, r, c[RC_METADATA]);
        rows[i].metadata_len = store_len(res, r, c[RC_METADATA]);
    }
    page.rows = rows;
    call->cb.results(status, status == BD_OK ? &page : NULL, store_pg_message(status, res),
                     call->arg);
    free(rows);
    free(call);
}

int bd_job_store_list_results(struct bd_pg *pg, const char *job_id, long long from_index,
                              unsigned limit, size_t max_bytes, bd_job_store_results_cb cb,
                              void *arg)
{
    struct bd__store_call tmpl = { .cb.results = cb, .arg = arg, .limit = limit };
    char from[32], lim[16], bytes[32];
    const char *values[4] = { job_id, from, lim, bytes };

    snprintf(from, sizeof(from), "%lld", from_index);
    snprintf(lim, sizeof(lim), "%u", limit + 1);
    snprintf(bytes, sizeof(bytes), "%zu", max_bytes);
    return store_send(pg, store_sql_results, 4, values, store_on_results, &tmpl);
}

/* ---- aggregates for the metrics ---------------------------------------------------------- */

static const char store_sql_state_counts[] =
    "SELECT status, count(*) AS jobs FROM jobs GROUP BY status";

enum store_count_col { CC_STATUS, CC_JOBS, CC_COUNT };
static const char *const store_count_col_names[CC_COUNT] = { "status", "jobs" };

static void store_on_state_counts(int status, PGresult *res, void *arg)
{
    struct bd__store_call *call = arg;
    long long counts[BD_JOB_STATE_COUNT] = { 0 };
    int c[CC_COUNT];

    if (status == BD_OK && store_cols(res, store_count_col_names, CC_COUNT, c) < 0)
        status = BD_EINTERNAL;
    for (int r = 0; status == BD_OK && r < PQntuples(res); r++) {
        enum bd_job_state st;
        if (bd_job_state_parse(PQgetvalue(res, r, c[CC_STATUS]), &st) == BD_OK)
            counts[st] = bd__store_ll(res, r, c[CC_JOBS], 0);
    }
    call->cb.counts(status, status == BD_OK ? counts : NULL, store_pg_message(status, res),
                    call->arg);
    free(call);
}

int bd_job_store_count_jobs_by_state(struct bd_pg *pg, bd_job_store_state_counts_cb cb, void *arg)
{
    struct bd__store_call tmpl = { .cb.counts = cb, .arg = arg };

    return store_send(pg, store_sql_state_counts, 0, NULL, store_on_state_counts, &tmpl);
}

static const char store_sql_job_groups[] =
    "SELECT COALESCE(model, '') AS model, status, count(*) AS jobs, "
    "COALESCE(sum(processed_items), 0)::int8 AS processed_items, "
    "COALESCE(sum(failed_items), 0)::int8 AS failed_items, "
    "COALESCE(sum(processing_ms), 0)::int8 AS processing_ms, count(started_at) AS started, "
    "COALESCE(sum(extract(epoch FROM started_at - created_at)), 0)::float8 AS wait_s, "
    "count(*) FILTER (WHERE started_at IS NOT NULL AND completed_at IS NOT NULL) AS ran, "
    "COALESCE(sum(extract(epoch FROM completed_at - started_at)), 0)::float8 AS run_s "
    "FROM jobs GROUP BY 1, 2";

enum store_group_col {
    GC_MODEL, GC_STATUS, GC_JOBS, GC_PROCESSED, GC_FAILED, GC_PROCESSING_MS, GC_STARTED,
    GC_WAIT_S, GC_RAN, GC_RUN_S, GC_COUNT
};
static const char *const store_group_col_names[GC_COUNT] = {
    "model", "status", "jobs", "processed_items", "failed_items", "processing_ms", "started",
    "wait_s", "ran", "run_s",
};

static void store_on_job_groups(int status, PGresult *res, void *arg)
{
    struct bd__store_call *call = arg;
    struct bd_job_group *g = NULL;
    size_t n = 0;
    int c[GC_COUNT];

    if (status == BD_OK && store_cols(res, store_group_col_names, GC_COUNT, c) < 0)
        status = BD_EINTERNAL;
    if (status == BD_OK && (n = (size_t)PQntuples(res)) > 0 &&
        (g = calloc(n, sizeof(*g))) == NULL)
        status = BD_ENOMEM;
    for (size_t i = 0; status == BD_OK && i < n; i++) {
        int r = (int)i;
        g[i].model = PQgetvalue(res, r, c[GC_MODEL]);
        g[i].is_known_state =
            bd_job_state_parse(PQgetvalue(res, r, c[GC_STATUS]), &g[i].state) == BD_OK;
        g[i].jobs = bd__store_ll(res, r, c[GC_JOBS], 0);
        g[i].processed_items = bd__store_ll(res, r, c[GC_PROCESSED], 0);
        g[i].failed_items = bd__store_ll(res, r, c[GC_FAILED], 0);
        g[i].processing_ms = bd__store_ll(res, r, c[GC_PROCESSING_MS], 0);
        g[i].started = bd__store_ll(res, r, c[GC_STARTED], 0);
        g[i].wait_s = bd__store_double(res, r, c[GC_WAIT_S], 0.0);
        g[i].ran = bd__store_ll(res, r, c[GC_RAN], 0);
        g[i].run_s = bd__store_double(res, r, c[GC_RUN_S], 0.0);
    }
    call->cb.groups(status, status == BD_OK ? g : NULL, status == BD_OK ? n : 0,
                    store_pg_message(status, res), call->arg);
    free(g);
    free(call);
}

int bd_job_store_get_job_groups(struct bd_pg *pg, bd_job_store_job_groups_cb cb, void *arg)
{
    struct bd__store_call tmpl = { .cb.groups = cb, .arg = arg };

    return store_send(pg, store_sql_job_groups, 0, NULL, store_on_job_groups, &tmpl);
}

/* $1: the window in seconds. */
static const char store_sql_recent_items[] =
    "SELECT COALESCE(sum(processed + failed), 0)::int8 AS items, "
    "extract(epoch FROM now() - GREATEST(min(updated_at - COALESCE(duration_ms, 0) * "
    "interval '1 millisecond'), now() - $1::int * interval '1 second'))::float8 AS span_s "
    "FROM job_batches WHERE status <> 'pending' "
    "AND updated_at > now() - $1::int * interval '1 second'";

enum store_window_col { WC_ITEMS, WC_SPAN_S, WC_COUNT };
static const char *const store_window_col_names[WC_COUNT] = { "items", "span_s" };

static void store_on_recent_items(int status, PGresult *res, void *arg)
{
    struct bd__store_call *call = arg;
    long long items = 0;
    double span_s = 0.0;
    int c[WC_COUNT];

    if (status == BD_OK && (PQntuples(res) != 1 ||
                            store_cols(res, store_window_col_names, WC_COUNT, c) < 0))
        status = BD_EINTERNAL;
    if (status == BD_OK) {
        items = bd__store_ll(res, 0, c[WC_ITEMS], 0);
        span_s = bd__store_double(res, 0, c[WC_SPAN_S], 0.0);
    }
    call->cb.window(status, items, span_s, store_pg_message(status, res), call->arg);
    free(call);
}

int bd_job_store_get_recent_items(struct bd_pg *pg, unsigned window_s, bd_job_store_window_cb cb,
                              void *arg)
{
    struct bd__store_call tmpl = { .cb.window = cb, .arg = arg };
    char win[16];
    const char *values[1] = { win };

    snprintf(win, sizeof(win), "%u", window_s);
    return store_send(pg, store_sql_recent_items, 1, values, store_on_recent_items, &tmpl);
}
