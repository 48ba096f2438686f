/* batch_store.c -- every statement on batches and batch_lines (batch_store.h), and the one
 * derivation of a batch's OpenAI status from its row and its job's.
 *
 * Owns each call's small record until its callback. Loop thread only; never blocks.
 * Reaches PostgreSQL only through pg_store.h.  SPDX-License-Identifier: MIT
 */
#include "batchd/batch_store.h"

#include "batchd/buf.h"
#include "batchd/error.h"
#include "batchd/job_engine.h"
#include "batchd/job_types.h"
#include "batchd/pg_store.h"
#include "batchd/random_id.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

/* A job has ended when a retry may leave its state: the job engine's transition table is
 * the one list of those states ($3 below, bd_job_event_sources(BD_JOB_EV_RETRY)). */
#define BATCH_TERMINAL_SOURCES bd_job_event_sources(BD_JOB_EV_RETRY)

#define BATCH_EPOCH(col) "extract(epoch FROM b." col ")::bigint AS " col

/* The row's columns, by the names the decoder looks up. */
#define BATCH_COLUMNS                                                                      \
    "b.id, b.input_file_id, b.endpoint, b.completion_window, b.model,"                      \
    " b.metadata::text AS metadata, b.errors::text AS errors, b.job_id, b.final_status,"    \
    " b.output_file_id, b.error_file_id, b.lines, " BATCH_EPOCH("created_at") ", "         \
    BATCH_EPOCH("expires_at") ", " BATCH_EPOCH("cancelling_at") ", "                       \
    BATCH_EPOCH("expired_at") ", " BATCH_EPOCH("finalizing_at") ", "                       \
    BATCH_EPOCH("finalized_at") ", b.request_completed, b.request_failed,"                  \
    " j.status AS job_status, j.total_items, j.processed_items, j.failed_items"            \
    " FROM batches b LEFT JOIN jobs j ON j.id = b.job_id"

enum batch_col {
    BC_ID, BC_INPUT, BC_ENDPOINT, BC_WINDOW, BC_MODEL, BC_METADATA, BC_ERRORS, BC_JOB,
    BC_FINAL, BC_OUTPUT, BC_ERRFILE, BC_LINES, BC_CREATED, BC_EXPIRES, BC_CANCELLING,
    BC_EXPIRED, BC_FINALIZING, BC_FINALIZED, BC_REQ_DONE, BC_REQ_FAILED, BC_JOB_STATUS,
    BC_JOB_ITEMS, BC_JOB_PROCESSED, BC_JOB_FAILED, BC_COUNT
};
static const char *const batch_col_names[BC_COUNT] = {
    "id", "input_file_id", "endpoint", "completion_window", "model", "metadata", "errors",
    "job_id", "final_status", "output_file_id", "error_file_id", "lines", "created_at",
    "expires_at", "cancelling_at", "expired_at", "finalizing_at", "finalized_at",
    "request_completed", "request_failed", "job_status", "total_items", "processed_items",
    "failed_items",
};

int bd_batch_new_id(char *out)
{
    memcpy(out, "batch_", 6);
    return bd_random_hex(out + 6, (BD_BATCH_ID_LEN - 6) / 2);
}

/* ---- the status, one place -------------------------------------------------------------- */

static bool batch_job_is_terminal(const char *s)
{
    enum bd_job_state st, to;

    return s && bd_job_state_parse(s, &st) == BD_OK &&
           bd_job_transition(st, false, BD_JOB_EV_RETRY, &to, NULL) == BD_OK;
}

const char *bd_batch_status(const struct bd_batch_row *b)
{
    if (b->final_status)
        return b->final_status;
    if (b->job_id == NULL)
        return "failed";                       /* its job is gone before it was final */
    if (b->cancelling_at || b->expired_at)
        return b->expired_at && batch_job_is_terminal(b->job_status) ? "finalizing"
                                                                      : "cancelling";
    if (batch_job_is_terminal(b->job_status))
        return "finalizing";
    return "in_progress";
}

void bd_batch_request_counts(const struct bd_batch_row *b, int64_t *total, int64_t *completed,
                             int64_t *failed)
{
    *total = b->lines;
    if (b->final_status || b->job_id == NULL || b->job_items <= 0) {
        *completed = b->request_completed > 0 ? b->request_completed : 0;
        *failed = b->request_failed > 0 ? b->request_failed : 0;
        return;
    }
    if (b->job_items == b->lines) {
        *completed = b->job_processed;
        *failed = b->job_failed;
        return;
    }
    /* Lines of several inputs: in proportion to the items, never more than the lines. */
    *completed = (int64_t)((double)b->job_processed * (double)b->lines / (double)b->job_items);
    *failed = b->job_failed < b->lines - *completed ? b->job_failed : b->lines - *completed;
}

/* ---- calls ------------------------------------------------------------------------------ */

struct batch_call {
    union {
        bd_batch_store_done_cb done;
        bd_batch_store_row_cb row;
        bd_batch_store_list_cb list;
        bd_batch_store_claim_cb claim;
        bd_batch_store_lines_cb lines;
        bd_batch_store_vectors_cb vectors;
    } cb;
    void *arg;
    unsigned limit;                   /* list: the page size asked for */
    bool is_not_found_on_zero;        /* done: no row changed is BD_ENOTFOUND */
};

static struct batch_call *batch_call_new(void *arg)
{
    struct batch_call *c = calloc(1, sizeof(*c));
    if (c)
        c->arg = arg;
    return c;
}

static const char *batch_message(const PGresult *res)
{
    const char *m = res ? PQresultErrorMessage(res) : NULL;
    return m && *m ? m : "connection lost";
}

static int batch_status_of(int status)
{
    return status == BD_ECANCELED ? BD_ECANCELED : status < 0 ? BD_EPG : BD_OK;
}

static int batch_query(struct bd_pg *pg, const char *sql, int n, const char *const *values,
                       bd_pg_result_cb on, struct batch_call *c)
{
    int rc = bd_pg_query(pg, sql, n, values, NULL, NULL, 0, on, c);

    if (rc < 0) {
        free(c);
        return rc == BD_ENOMEM || rc == BD_ECANCELED ? rc : BD_EPG;
    }
    return BD_OK;
}

/* On conn when it is not NULL (a connection the caller holds), else on the pool. */
static int batch_query_on(struct bd_pg *pg, struct bd_pg_conn *conn, const char *sql, int n,
                          const char *const *values, bd_pg_result_cb on, struct batch_call *c)
{
    int rc;

    if (conn == NULL)
        return batch_query(pg, sql, n, values, on, c);
    rc = bd_pg_conn_query(conn, sql, n, values, NULL, NULL, 0, on, c);
    if (rc < 0) {
        free(c);
        return rc == BD_ENOMEM ? BD_ENOMEM : BD_EPG;
    }
    return BD_OK;
}

static const char *batch_str(const PGresult *res, int r, int c)
{
    return PQgetisnull(res, r, c) ? NULL : PQgetvalue(res, r, c);
}

static int64_t batch_int(const PGresult *res, int r, int c, int64_t null_value)
{
    return PQgetisnull(res, r, c) ? null_value : strtoll(PQgetvalue(res, r, c), NULL, 10);
}

static int batch_rows(const PGresult *res, struct bd_batch_row *rows, int n)
{
    int k[BC_COUNT];

    for (int i = 0; i < BC_COUNT; i++)
        if ((k[i] = PQfnumber(res, batch_col_names[i])) < 0)
            return BD_EINTERNAL;
    for (int r = 0; r < n; r++) {
        rows[r] = (struct bd_batch_row){
            .id = batch_str(res, r, k[BC_ID]),
            .input_file_id = batch_str(res, r, k[BC_INPUT]),
            .endpoint = batch_str(res, r, k[BC_ENDPOINT]),
            .completion_window = batch_str(res, r, k[BC_WINDOW]),
            .model = batch_str(res, r, k[BC_MODEL]),
            .metadata_json = batch_str(res, r, k[BC_METADATA]),
            .errors_json = batch_str(res, r, k[BC_ERRORS]),
            .job_id = batch_str(res, r, k[BC_JOB]),
            .final_status = batch_str(res, r, k[BC_FINAL]),
            .output_file_id = batch_str(res, r, k[BC_OUTPUT]),
            .error_file_id = batch_str(res, r, k[BC_ERRFILE]),
            .lines = batch_int(res, r, k[BC_LINES], 0),
            .created_at = batch_int(res, r, k[BC_CREATED], 0),
            .expires_at = batch_int(res, r, k[BC_EXPIRES], 0),
            .cancelling_at = batch_int(res, r, k[BC_CANCELLING], 0),
            .expired_at = batch_int(res, r, k[BC_EXPIRED], 0),
            .finalizing_at = batch_int(res, r, k[BC_FINALIZING], 0),
            .finalized_at = batch_int(res, r, k[BC_FINALIZED], 0),
            .request_completed = batch_int(res, r, k[BC_REQ_DONE], -1),
            .request_failed = batch_int(res, r, k[BC_REQ_FAILED], -1),
            .job_status = batch_str(res, r, k[BC_JOB_STATUS]),
            .job_items = batch_int(res, r, k[BC_JOB_ITEMS], 0),
            .job_processed = batch_int(res, r, k[BC_JOB_PROCESSED], 0),
            .job_failed = batch_int(res, r, k[BC_JOB_FAILED], 0),
        };
    }
    return BD_OK;
}

static void batch_on_done(int status, PGresult *res, void *arg)
{
    struct batch_call *c = arg;
    int st = batch_status_of(status);

    if (st == BD_OK && c->is_not_found_on_zero && res &&
        strtol(PQcmdTuples(res), NULL, 10) == 0)
        st = BD_ENOTFOUND;
    c->cb.done(st, st == BD_EPG ? batch_message(res) : NULL, c->arg);
    free(c);
}

static void batch_conn_on_done(int status, PGresult *res, void *arg)
{
    batch_on_done(status, res, arg);
}

/* ---- creation --------------------------------------------------------------------------- */

#define BATCH_INSERT_COLUMNS                                                               \
    "id, input_file_id, endpoint, completion_window, model, metadata, lines, expires_at"
#define BATCH_INSERT_VALUES                                                                \
    "$1, $2, $3, $4, $5, $6::jsonb, $7::int, now() + $8::float8 * interval '1 second'"

static void batch_new_values(const struct bd_batch_new *b, char lines[24], char window[40],
                             const char *values[8])
{
    snprintf(lines, 24, "%" PRId64, b->lines);
    snprintf(window, 40, "%.3f", b->window_s);
    values[0] = b->id;
    values[1] = b->input_file_id;
    values[2] = b->endpoint;
    values[3] = b->completion_window;
    values[4] = b->model;
    values[5] = b->metadata_json;
    values[6] = lines;
    values[7] = window;
}

int bd_batch_store_insert(struct bd_pg_conn *conn, const struct bd_batch_new *b,
                          const char *job_id, bd_batch_store_done_cb cb, void *arg)
{
    static const char sql[] = "INSERT INTO batches (" BATCH_INSERT_COLUMNS ", job_id)"
                              " VALUES (" BATCH_INSERT_VALUES ", $9)";
    char lines[24], window[40];
    const char *values[9];
    struct batch_call *c = batch_call_new(arg);
    int rc;

    if (c == NULL)
        return BD_ENOMEM;
    c->cb.done = cb;
    batch_new_values(b, lines, window, values);
    values[8] = job_id;
    rc = bd_pg_conn_query(conn, sql, 9, values, NULL, NULL, 0, batch_conn_on_done, c);
    if (rc < 0) {
        free(c);
        return rc == BD_ENOMEM ? BD_ENOMEM : BD_EPG;
    }
    return BD_OK;
}

int bd_batch_store_insert_failed(struct bd_pg *pg, const struct bd_batch_new *b,
                                 const char *errors_json, bd_batch_store_done_cb cb, void *arg)
{
    static const char sql[] = "INSERT INTO batches (" BATCH_INSERT_COLUMNS
                              ", errors, final_status, finalized_at, request_completed,"
                              " request_failed) VALUES (" BATCH_INSERT_VALUES
                              ", $9::jsonb, 'failed', now(), 0, 0)";
    char lines[24], window[40];
    const char *values[9];
    struct batch_call *c = batch_call_new(arg);

    if (c == NULL)
        return BD_ENOMEM;
    c->cb.done = cb;
    batch_new_values(b, lines, window, values);
    values[8] = errors_json;
    return batch_query(pg, sql, 9, values, batch_on_done, c);
}

#define BATCH_LINES_COPY_SQL                                                               \
    "COPY batch_lines (batch_id, ord, line, custom_id, first_item, items, is_base64) "     \
    "FROM STDIN WITH (FORMAT binary)"

void bd_batch_store_put_line(struct bd_buf *copy, const char *batch_id, int32_t ord,
                             int32_t line, const char *custom_id, size_t custom_id_len,
                             int32_t first_item, int32_t items, bool is_base64)
{
    bd_pg_copy_row(copy, 7);
    bd_pg_copy_text(copy, batch_id, strlen(batch_id));
    bd_pg_copy_int4(copy, ord);
    bd_pg_copy_int4(copy, line);
    bd_pg_copy_text(copy, custom_id, custom_id_len);
    bd_pg_copy_int4(copy, first_item);
    bd_pg_copy_int4(copy, items);
    bd_pg_copy_bool(copy, is_base64);
}

int bd_batch_store_copy_lines(struct bd_pg_conn *conn, const struct bd_buf *copy,
                              bd_batch_store_done_cb cb, void *arg)
{
    struct batch_call *c = batch_call_new(arg);
    int rc;

    if (c == NULL)
        return BD_ENOMEM;
    c->cb.done = cb;
    rc = bd_pg_conn_copy_in(conn, BATCH_LINES_COPY_SQL, copy->data, copy->len,
                            batch_conn_on_done, c);
    if (rc < 0) {
        free(c);
        return rc == BD_ENOMEM ? BD_ENOMEM : BD_EPG;
    }
    return BD_OK;
}

/* ---- reads and the cancel -------------------------------------------------------------- */

static void batch_on_row(int status, PGresult *res, void *arg)
{
    struct batch_call *c = arg;
    struct bd_batch_row row;
    int st = batch_status_of(status);

    if (st == BD_OK && PQntuples(res) == 0)
        st = BD_ENOTFOUND;
    if (st == BD_OK)
        st = batch_rows(res, &row, 1);
    c->cb.row(st, st == BD_OK ? &row : NULL, st == BD_EPG ? batch_message(res) : NULL, c->arg);
    free(c);
}

int bd_batch_store_get(struct bd_pg *pg, const char *id, bd_batch_store_row_cb cb, void *arg)
{
    static const char sql[] = "SELECT " BATCH_COLUMNS " WHERE b.id = $1";
    const char *values[1] = { id };
    struct batch_call *c = batch_call_new(arg);

    if (c == NULL)
        return BD_ENOMEM;
    c->cb.row = cb;
    return batch_query(pg, sql, 1, values, batch_on_row, c);
}

static void batch_on_list(int status, PGresult *res, void *arg)
{
    struct batch_call *c = arg;
    int st = batch_status_of(status);
    int n = st == BD_OK ? PQntuples(res) : 0;
    bool has_more = (unsigned)n > c->limit;
    struct bd_batch_row *rows = NULL;

    if (has_more)
        n = (int)c->limit;
    if (st == BD_OK && n > 0 && (rows = malloc((size_t)n * sizeof(*rows))) == NULL)
        st = BD_ENOMEM;
    if (st == BD_OK)
        st = batch_rows(res, rows, n);
    c->cb.list(st, rows, st == BD_OK ? (unsigned)n : 0, has_more,
               st == BD_EPG ? batch_message(res) : NULL, c->arg);
    free(rows);
    free(c);
}

int bd_batch_store_list(struct bd_pg *pg, const char *after, unsigned limit,
                        bd_batch_store_list_cb cb, void *arg)
{
    static const char sql[] = "SELECT " BATCH_COLUMNS
        " WHERE ($1::text IS NULL OR b.seq < (SELECT seq FROM batches WHERE id = $1))"
        " ORDER BY b.seq DESC LIMIT $2::int";
    char lim[16];
    const char *values[2] = { after, lim };
    struct batch_call *c = batch_call_new(arg);

    if (c == NULL)
        return BD_ENOMEM;
    c->cb.list = cb;
    c->limit = limit;
    snprintf(lim, sizeof(lim), "%u", limit + 1);
    return batch_query(pg, sql, 2, values, batch_on_list, c);
}

int bd_batch_store_request_cancel(struct bd_pg *pg, const char *id, bd_batch_store_done_cb cb,
                                  void *arg)
{
    /* Not once its job ended (but for a cancel): the batch is finalizing, and a cancel
     * recorded now would turn its status back to cancelling and still end completed. */
    static const char sql[] = "UPDATE batches b SET cancelling_at = COALESCE(b.cancelling_at,"
                              " now()) WHERE b.id = $1 AND b.finalized_at IS NULL"
                              " AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = b.job_id"
                              " AND j.status = ANY($2::text[]) AND j.status <> 'cancelled')";
    const char *values[2] = { id, BATCH_TERMINAL_SOURCES };
    struct batch_call *c = batch_call_new(arg);

    if (c == NULL)
        return BD_ENOMEM;
    c->cb.done = cb;
    c->is_not_found_on_zero = true;
    return batch_query(pg, sql, 2, values, batch_on_done, c);
}

/* ---- the finalizer ---------------------------------------------------------------------- */

static void batch_on_claim(int status, PGresult *res, void *arg)
{
    struct batch_call *c = arg;
    int st = batch_status_of(status);
    struct bd_batch_claim cl;
    bool has = st == BD_OK && PQntuples(res) == 1 && PQnfields(res) == 10;

    if (has) {
        cl = (struct bd_batch_claim){
            .id = PQgetvalue(res, 0, 0),
            .job_id = PQgetvalue(res, 0, 1),
            .model = batch_str(res, 0, 2),
            .lines = batch_int(res, 0, 3, 0),
            .job_status = PQgetvalue(res, 0, 4),
            .job_error_code = batch_str(res, 0, 5),
            .job_error_message = batch_str(res, 0, 6),
            .is_job_terminal = PQgetvalue(res, 0, 7)[0] == 't',
            .is_expired = PQgetvalue(res, 0, 8)[0] == 't',
            .is_cancelling = PQgetvalue(res, 0, 9)[0] == 't',
        };
    }
    c->cb.claim(st, has ? &cl : NULL, st == BD_EPG ? batch_message(res) : NULL, c->arg);
    free(c);
}

int bd_batch_store_claim(struct bd_pg *pg, const char *owner, double lease_s,
                         bd_batch_store_claim_cb cb, void *arg)
{
    /* A batch needs attention when its job ended (finalize), when it is past expires_at
     * (expire: cancel the job), or when a cancel or expiry was recorded but the job's
     * cancel was not (the process that recorded it died in between). A lease still held
     * by owner is stale (the caller claims only when it has no run): its release was
     * lost, so the batch is the owner's to take again. */
    static const char sql[] =
        "WITH c AS (SELECT b.id FROM batches b JOIN jobs j ON j.id = b.job_id"
        " WHERE b.finalized_at IS NULL"
        " AND (b.lease_until IS NULL OR b.lease_until < now() OR b.lease_owner = $1)"
        " AND (j.status = ANY($3::text[])"
        " OR (b.expires_at <= now() AND b.expired_at IS NULL)"
        " OR ((b.expired_at IS NOT NULL OR b.cancelling_at IS NOT NULL)"
        " AND NOT j.cancel_requested))"
        " ORDER BY b.expires_at LIMIT 1 FOR UPDATE OF b SKIP LOCKED)"
        " UPDATE batches b SET lease_owner = $1,"
        " lease_until = now() + $2::float8 * interval '1 second',"
        " expired_at = CASE WHEN b.expired_at IS NULL AND b.expires_at <= now()"
        " AND j.status <> ALL($3::text[]) THEN now() ELSE b.expired_at END,"
        " finalizing_at = CASE WHEN j.status = ANY($3::text[])"
        " THEN COALESCE(b.finalizing_at, now()) ELSE b.finalizing_at END"
        " FROM c, jobs j WHERE b.id = c.id AND j.id = b.job_id"
        " RETURNING b.id, b.job_id, b.model, b.lines, j.status, j.error_code,"
        " j.error_message, j.status = ANY($3::text[]), b.expired_at IS NOT NULL,"
        " b.cancelling_at IS NOT NULL";
    char lease[40];
    const char *values[3] = { owner, lease, BATCH_TERMINAL_SOURCES };
    struct batch_call *c = batch_call_new(arg);

    if (c == NULL)
        return BD_ENOMEM;
    c->cb.claim = cb;
    snprintf(lease, sizeof(lease), "%.3f", lease_s);
    return batch_query(pg, sql, 3, values, batch_on_claim, c);
}

int bd_batch_store_release(struct bd_pg *pg, const char *id, const char *owner,
                           double retry_after_s, bd_batch_store_done_cb cb, void *arg)
{
    static const char sql[] = "UPDATE batches SET lease_owner = NULL, lease_until = CASE"
                              " WHEN $3::float8 > 0 THEN now() + $3::float8 * interval '1 second'"
                              " END WHERE id = $1 AND lease_owner = $2";
    char after[40];
    const char *values[3] = { id, owner, after };
    struct batch_call *c = batch_call_new(arg);

    if (c == NULL)
        return BD_ENOMEM;
    c->cb.done = cb;
    snprintf(after, sizeof(after), "%.3f", retry_after_s);
    return batch_query(pg, sql, 3, values, batch_on_done, c);
}

int bd_batch_store_renew(struct bd_pg *pg, const char *id, const char *owner, double lease_s,
                         bd_batch_store_done_cb cb, void *arg)
{
    static const char sql[] = "UPDATE batches SET lease_until = now() + $3::float8 *"
                              " interval '1 second' WHERE id = $1 AND lease_owner = $2"
                              " AND finalized_at IS NULL";
    char lease[40];
    const char *values[3] = { id, owner, lease };
    struct batch_call *c = batch_call_new(arg);

    if (c == NULL)
        return BD_ENOMEM;
    c->cb.done = cb;
    c->is_not_found_on_zero = true;
    snprintf(lease, sizeof(lease), "%.3f", lease_s);
    return batch_query(pg, sql, 3, values, batch_on_done, c);
}

static void batch_on_lines(int status, PGresult *res, void *arg)
{
    struct batch_call *c = arg;
    int st = batch_status_of(status);
    int n = st == BD_OK ? PQntuples(res) : 0;
    struct bd_batch_line *lines = NULL;

    if (st == BD_OK && n > 0 && PQnfields(res) != 9)
        st = BD_EINTERNAL;
    if (st == BD_OK && n > 0 && (lines = malloc((size_t)n * sizeof(*lines))) == NULL)
        st = BD_ENOMEM;
    for (int r = 0; st == BD_OK && r < n; r++) {
        lines[r] = (struct bd_batch_line){
            .ord = (int32_t)batch_int(res, r, 0, 0),
            .line = (int32_t)batch_int(res, r, 1, 0),
            .custom_id = PQgetvalue(res, r, 2),
            .first_item = (int32_t)batch_int(res, r, 3, 0),
            .items = (int32_t)batch_int(res, r, 4, 0),
            .is_base64 = PQgetvalue(res, r, 5)[0] == 't',
            .vectors = (int32_t)batch_int(res, r, 6, 0),
            .error_code = batch_str(res, r, 7),
            .error_message = batch_str(res, r, 8),
        };
    }
    c->cb.lines(st, lines, st == BD_OK ? (unsigned)n : 0,
                st == BD_EPG ? batch_message(res) : NULL, c->arg);
    free(lines);
    free(c);
}

int bd_batch_store_read_lines(struct bd_pg *pg, struct bd_pg_conn *conn, const char *batch_id,
                              const char *job_id, int32_t from_ord, unsigned max_lines,
                              unsigned max_items, bd_batch_store_lines_cb cb, void *arg)
{
    /* ords are dense from 0 and every line has at least one item, so a line starting
     * within max_items items of line $3 has ord < $3 + max_items: the bound on ord (implied
     * by the first_item test; <= keeps line $3 when max_items is 0) keeps the index range
     * to the page, where the first_item test alone scanned every line after $3 (quadratic
     * in the batch's lines; a bitmap scan of all of them while the table's statistics are
     * stale, as right after the batch's COPY). */
    static const char sql[] =
        "SELECT l.ord, l.line, l.custom_id, l.first_item, l.items, l.is_base64,"
        " (SELECT count(*) FROM vectors v WHERE v.job_id = $2"
        " AND v.item_index >= l.first_item AND v.item_index < l.first_item + l.items)::int,"
        " e.code, e.message"
        " FROM batch_lines l LEFT JOIN LATERAL (SELECT x.code, x.message FROM job_item_errors x"
        " WHERE x.job_id = $2 AND x.item_index >= l.first_item"
        " AND x.item_index < l.first_item + l.items ORDER BY x.item_index LIMIT 1) e ON true"
        " WHERE l.batch_id = $1 AND l.ord >= $3::int AND l.ord <= $3::int + $5::int"
        " AND (l.ord = $3::int OR l.first_item < (SELECT f.first_item FROM batch_lines f"
        " WHERE f.batch_id = $1 AND f.ord = $3::int) + $5::int)"
        " ORDER BY l.ord LIMIT $4::int";
    char from[16], lim[16], items[16];
    const char *values[5] = { batch_id, job_id, from, lim, items };
    struct batch_call *c = batch_call_new(arg);

    if (c == NULL)
        return BD_ENOMEM;
    c->cb.lines = cb;
    snprintf(from, sizeof(from), "%" PRId32, from_ord);
    snprintf(lim, sizeof(lim), "%u", max_lines);
    snprintf(items, sizeof(items), "%u", max_items);
    return batch_query_on(pg, conn, sql, 5, values, batch_on_lines, c);
}

static void batch_on_vectors(int status, PGresult *res, void *arg)
{
    struct batch_call *c = arg;
    int st = batch_status_of(status);
    int n = st == BD_OK ? PQntuples(res) : 0;
    struct bd_batch_vector *v = NULL;

    if (st == BD_OK && n > 0 && (v = malloc((size_t)n * sizeof(*v))) == NULL)
        st = BD_ENOMEM;
    for (int r = 0; st == BD_OK && r < n; r++) {
        v[r] = (struct bd_batch_vector){
            .item_index = (int32_t)batch_int(res, r, 0, 0),
            .text = PQgetvalue(res, r, 1),
            .len = (size_t)PQgetlength(res, r, 1),
        };
    }
    c->cb.vectors(st, v, st == BD_OK ? (unsigned)n : 0,
                  st == BD_EPG ? batch_message(res) : NULL, c->arg);
    free(v);
    free(c);
}

int bd_batch_store_read_vectors(struct bd_pg *pg, struct bd_pg_conn *conn, const char *job_id,
                                int32_t from, int32_t to, bd_batch_store_vectors_cb cb,
                                void *arg)
{
    static const char sql[] = "SELECT item_index, embedding::text FROM vectors"
                              " WHERE job_id = $1 AND item_index >= $2::int"
                              " AND item_index < $3::int ORDER BY item_index";
    char f[16], t[16];
    const char *values[3] = { job_id, f, t };
    struct batch_call *c = batch_call_new(arg);

    if (c == NULL)
        return BD_ENOMEM;
    c->cb.vectors = cb;
    snprintf(f, sizeof(f), "%" PRId32, from);
    snprintf(t, sizeof(t), "%" PRId32, to);
    return batch_query_on(pg, conn, sql, 3, values, batch_on_vectors, c);
}

int bd_batch_store_finish(struct bd_pg *pg, const struct bd_batch_final *f,
                          bd_batch_store_done_cb cb, void *arg)
{
    static const char sql[] =
        "UPDATE batches SET final_status = $3, finalized_at = now(),"
        " finalizing_at = COALESCE(finalizing_at, now()), output_file_id = $4,"
        " error_file_id = $5, errors = COALESCE($6::jsonb, errors),"
        " request_completed = $7::int, request_failed = $8::int,"
        " lease_owner = NULL, lease_until = NULL"
        " WHERE id = $1 AND finalized_at IS NULL AND lease_owner = $2";
    char done[24], failed[24];
    const char *values[8] = { f->id, f->owner, f->final_status, f->output_file_id,
                              f->error_file_id, f->errors_json, done, failed };
    struct batch_call *c = batch_call_new(arg);

    if (c == NULL)
        return BD_ENOMEM;
    c->cb.done = cb;
    c->is_not_found_on_zero = true;
    snprintf(done, sizeof(done), "%" PRId64, f->request_completed);
    snprintf(failed, sizeof(failed), "%" PRId64, f->request_failed);
    return batch_query(pg, sql, 8, values, batch_on_done, c);
}
