/* job_store.c -- the write side of the schema: every statement that creates or changes a
 * row of jobs, job_batches, job_item_errors or the embedding cache.
 *
 * Owns the SQL text and the column order of what it reads back (named, never by bare
 * number). Loop thread only; runs statements on the nonblocking pool of pg_store.h and
 * never blocks. Knows nothing of HTTP or of the job state machine's rules: it stores
 * what the state machine decided.  SPDX-License-Identifier: MIT
 */
#include "batchd/job_store.h"
#include "job_store_internal.h"

#include "batchd/buf.h"
#include "batchd/error.h"
#include "batchd/pg_store.h"

#include <endian.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- call records and result helpers ------------------------------------------------- */

static struct bd__store_call *store_call_copy(const struct bd__store_call *tmpl)
{
    struct bd__store_call *c = malloc(sizeof(*c));
    if (c)
        *c = *tmpl;
    return c;
}

int bd__store_query(struct bd_pg *pg, const char *sql, int nparams, const char *const *values,
                    const int *lengths, const int *formats, int result_binary,
                    bd_pg_result_cb on_result, const struct bd__store_call *tmpl)
{
    struct bd__store_call *c = store_call_copy(tmpl);
    if (c == NULL)
        return BD_ENOMEM;
    int rc = bd_pg_query(pg, sql, nparams, values, lengths, formats, result_binary, on_result,
                         c);
    if (rc < 0)
        free(c);
    return rc;
}

int bd__store_conn_query(struct bd_pg_conn *conn, const char *sql, int nparams,
                         const char *const *values, const int *lengths, const int *formats,
                         int result_binary, bd_pg_result_cb on_result,
                         const struct bd__store_call *tmpl)
{
    struct bd__store_call *c = store_call_copy(tmpl);
    if (c == NULL)
        return BD_ENOMEM;
    int rc = bd_pg_conn_query(conn, sql, nparams, values, lengths, formats, result_binary,
                              on_result, c);
    if (rc < 0)
        free(c);
    return rc;
}

int bd__store_copy_in(struct bd_pg_conn *conn, const char *copy_sql, const char *data,
                      size_t len, bd_pg_result_cb on_result, const struct bd__store_call *tmpl)
{
    struct bd__store_call *c = store_call_copy(tmpl);
    if (c == NULL)
        return BD_ENOMEM;
    int rc = bd_pg_conn_copy_in(conn, copy_sql, data, len, on_result, c);
    if (rc < 0)
        free(c);
    return rc;
}

/* The error of a failed statement: its text, and whether a retry could pass. */
static struct bd_job_store_err store_err(const PGresult *res)
{
    struct bd_job_store_err e = { .message = "connection lost" };
    if (res != NULL) {
        const char *msg = PQresultErrorMessage(res);
        const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        e.message = msg && *msg ? msg : "statement failed";
        e.is_parent_lost = state != NULL && strcmp(state, "23503") == 0;
    }
    e.is_permanent = bd_pg_classify_error(res) == BD_PG_ERR_PERMANENT;
    return e;
}

struct bd_job_store_err bd__store_err(const PGresult *res)
{
    return store_err(res);
}

const char *bd__store_str(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? NULL : PQgetvalue(res, row, col);
}

long long bd__store_ll(const PGresult *res, int row, int col, long long dflt)
{
    const char *v = bd__store_str(res, row, col);
    return v ? strtoll(v, NULL, 10) : dflt;
}

double bd__store_double(const PGresult *res, int row, int col, double dflt)
{
    const char *v = bd__store_str(res, row, col);
    return v ? strtod(v, NULL) : dflt;
}

bool bd__store_bool(const PGresult *res, int row, int col)
{
    const char *v = bd__store_str(res, row, col);
    return v && v[0] == 't';
}

/* An int4 column of a binary-format result. */
static int store_int4(const PGresult *res, int row, int col)
{
    uint32_t v;
    if (PQgetisnull(res, row, col) || PQgetlength(res, row, col) != 4)
        return 0;
    memcpy(&v, PQgetvalue(res, row, col), 4);
    return (int)be32toh(v);
}

/* An integer column of a binary-format result (int2, int4 or int8); dflt for NULL. */
static long long store_bin_ll(const PGresult *res, int row, int col, long long dflt)
{
    const unsigned char *p = (const unsigned char *)PQgetvalue(res, row, col);
    int len = PQgetlength(res, row, col);
    uint64_t v = 0;

    if (PQgetisnull(res, row, col) || (len != 2 && len != 4 && len != 8))
        return dflt;
    for (int i = 0; i < len; i++)
        v = (v << 8) | p[i];
    if (len == 2)
        return (int16_t)v;
    if (len == 4)
        return (int32_t)v;
    return (long long)v;
}

/* A float8 column of a binary-format result; dflt for NULL. */
static double store_bin_double(const PGresult *res, int row, int col, double dflt)
{
    uint64_t v;
    double d;

    if (PQgetisnull(res, row, col) || PQgetlength(res, row, col) != 8)
        return dflt;
    memcpy(&v, PQgetvalue(res, row, col), 8);
    v = be64toh(v);
    memcpy(&d, &v, 8);
    return d;
}

/* A bool column of a binary-format result (false for NULL). */
static bool store_bin_bool(const PGresult *res, int row, int col)
{
    return !PQgetisnull(res, row, col) && PQgetlength(res, row, col) == 1 &&
           PQgetvalue(res, row, col)[0] == 1;
}

static void store_copy_str(char *out, size_t outlen, const char *v)
{
    snprintf(out, outlen, "%s", v ? v : "");
}

static enum bd_job_state store_state(const char *v)
{
    enum bd_job_state st = BD_JOB_QUEUED;
    (void)bd_job_state_parse(v, &st);
    return st;
}

/* ---- job start, checkpoint, finish --------------------------------------------------- */

/* The start statement's select list, in enum start_col's order, with fixed types so the
 * binary result reads the same on every server version. */
enum start_col {
    START_OPERATION, START_MODEL, START_COLLECTION, START_TOTAL_ITEMS, START_TOTAL_BATCHES,
    START_TIMEOUT_S, START_MAX_RETRIES, START_CANCEL_REQUESTED, START_RUN_STARTED,
    START_RUN_ATTEMPT, START_DIM, START_PRIORITY, START_COLLECTION_DIM, START_NCOLUMNS
};

/* One round trip: mark the job processing and make sure its output collection exists
 * with the job's dimension (stored in options at submit). An existing collection is only
 * read, never rewritten (jobs starting on one collection do not queue on its row). When
 * another transaction created it after this statement's snapshot, neither branch sees
 * it and the dimension comes back NULL: the caller simply starts again. A run that
 * begins from 'queued' (first run, or a retry) restarts the run clock: timeout_s counts
 * from the start of the current run. $1 job id, $2 worker id, $3 sources (text[]). */
#define STORE_START_SET                                                                     \
    "status = 'processing', started_at = CASE WHEN status = 'queued' OR started_at IS NULL " \
    "THEN now() ELSE started_at END, updated_at = now() "
#define STORE_START_RETURNING                                                               \
    "RETURNING jobs.id, operation, model, collection, total_items, total_batches, "         \
    "timeout_s, max_retries, cancel_requested, "                                            \
    "extract(epoch FROM started_at)::float8 AS run_started, run_attempt, "                  \
    "COALESCE((options->>'dimension')::int, 0) AS dim, priority"
#define STORE_START_COLLECTION                                                              \
    "c AS (INSERT INTO collections (name, dimension) SELECT DISTINCT ON (collection) "      \
    "collection, dim FROM j WHERE NOT EXISTS (SELECT 1 FROM collections x "                 \
    "WHERE x.name = j.collection) ON CONFLICT (name) DO NOTHING "                           \
    "RETURNING name, dimension) "
#define STORE_START_SELECT                                                                  \
    "SELECT j.operation, j.model, j.collection, j.total_items::int8, "                      \
    "j.total_batches::int8, j.timeout_s::float8, j.max_retries::int8, j.cancel_requested, " \
    "j.run_started, j.run_attempt::int8, j.dim::int8, j.priority::int8, "                   \
    "COALESCE((SELECT dimension FROM c WHERE c.name = j.collection), (SELECT dimension "    \
    "FROM collections x WHERE x.name = j.collection))::int8 "
#define STORE_START_SQL                                                                     \
    "WITH j AS (UPDATE jobs SET " STORE_START_SET ", lease_owner = $2 "                     \
    "WHERE id = $1 AND status = ANY($3::text[]) " STORE_START_RETURNING "), "               \
    STORE_START_COLLECTION STORE_START_SELECT

/* Row `row` of a start result (binary) into *out. */
static void store_start_row(const PGresult *res, int r, struct bd_job_start_row *out)
{
    memset(out, 0, sizeof(*out));
    (void)bd_job_operation_parse(bd__store_str(res, r, START_OPERATION), &out->op);
    store_copy_str(out->model, sizeof(out->model), bd__store_str(res, r, START_MODEL));
    store_copy_str(out->collection, sizeof(out->collection),
                   bd__store_str(res, r, START_COLLECTION));
    out->total_items = (unsigned)store_bin_ll(res, r, START_TOTAL_ITEMS, 0);
    out->total_batches = (unsigned)store_bin_ll(res, r, START_TOTAL_BATCHES, 0);
    out->timeout_s = store_bin_double(res, r, START_TIMEOUT_S, -1);
    out->max_retries = (int)store_bin_ll(res, r, START_MAX_RETRIES, -1);
    out->is_cancel_requested = store_bin_bool(res, r, START_CANCEL_REQUESTED);
    out->run_started_unix = store_bin_double(res, r, START_RUN_STARTED, 0);
    out->run_attempt = (int)store_bin_ll(res, r, START_RUN_ATTEMPT, 1);
    out->dim = (unsigned)store_bin_ll(res, r, START_DIM, 0);
    out->priority = (int)store_bin_ll(res, r, START_PRIORITY, 1);
    out->collection_dim = (long)store_bin_ll(res, r, START_COLLECTION_DIM, -1);
}

static void store_on_started(int status, PGresult *res, void *arg)
{
    struct bd__store_call *c = arg;
    struct bd_job_start_row row;

    if (status < 0) {
        struct bd_job_store_err e = store_err(res);
        c->cb.start(status, NULL, &e, c->arg);
    } else if (PQntuples(res) == 0) {
        c->cb.start(BD_OK, NULL, NULL, c->arg);
    } else {
        store_start_row(res, 0, &row);
        c->cb.start(BD_OK, &row, NULL, c->arg);
    }
    free(c);
}

int bd_job_store_start(struct bd_pg *pg, const char *job_id, const char *worker_id,
                       const char *sources, bd_job_store_start_cb cb, void *arg)
{
    const char *params[3] = { job_id, worker_id, sources };
    return bd__store_query(pg, STORE_START_SQL "FROM j", 3, params, NULL, NULL, 1,
                           store_on_started, BD__STORE_CALL(start));
}

enum batch_col {
    BATCH_CANCEL_REQUESTED, BATCH_NO, BATCH_FIRST_INDEX, BATCH_ITEM_COUNT, BATCH_ITEMS,
    BATCH_ATTEMPTS, BATCH_PAYLOAD,
};

/* The batch columns (binary) of row 0 of res, BATCH_NO.. at base + (col - BATCH_NO), into
 * *out (whose cancel flag the caller sets). Borrowed from res. */
static void store_batch_row(const PGresult *res, int r, int base,
                            struct bd_job_batch_row *out)
{
#define BCOL(col) (base + (col) - BATCH_NO)
    out->has_batch = !PQgetisnull(res, r, BCOL(BATCH_NO));
    if (!out->has_batch)
        return;
    out->batch_no = store_int4(res, r, BCOL(BATCH_NO));
    out->first_index = (unsigned)store_int4(res, r, BCOL(BATCH_FIRST_INDEX));
    out->item_count = (unsigned)store_int4(res, r, BCOL(BATCH_ITEM_COUNT));
    out->attempts = (unsigned)store_int4(res, r, BCOL(BATCH_ATTEMPTS));
    if (!PQgetisnull(res, r, BCOL(BATCH_ITEMS))) {
        out->items_json = PQgetvalue(res, r, BCOL(BATCH_ITEMS));
        out->items_len = (size_t)PQgetlength(res, r, BCOL(BATCH_ITEMS));
    }
    if (!PQgetisnull(res, r, BCOL(BATCH_PAYLOAD))) {
        out->payload = PQgetvalue(res, r, BCOL(BATCH_PAYLOAD));
        out->payload_len = (size_t)PQgetlength(res, r, BCOL(BATCH_PAYLOAD));
    }
#undef BCOL
}

/* The first pending batch after $2 of the job j.id, as the columns BATCH_NO.. */
#define STORE_BATCH_COLUMNS                                                                 \
    "b.batch_no, b.first_index, b.item_count, b.items::text, b.attempts, b.payload "
#define STORE_BATCH_JOIN(after)                                                             \
    "LEFT JOIN LATERAL (SELECT * FROM job_batches x WHERE x.job_id = j.id "                 \
    "AND x.status = 'pending' AND x.batch_no > " after " "                                  \
    "ORDER BY x.batch_no LIMIT 1) b ON true "

static void store_on_batch(int status, PGresult *res, void *arg)
{
    struct bd__store_call *c = arg;
    struct bd_job_batch_row row;

    if (status < 0) {
        struct bd_job_store_err e = store_err(res);
        c->cb.batch(status, NULL, &e, c->arg);
    } else if (PQntuples(res) == 0) {
        /* The job row itself is gone (retention, or deleted): nothing to run. */
        memset(&row, 0, sizeof(row));
        c->cb.batch(BD_OK, &row, NULL, c->arg);
    } else {
        memset(&row, 0, sizeof(row));
        row.is_cancel_requested = store_bin_bool(res, 0, BATCH_CANCEL_REQUESTED);
        store_batch_row(res, 0, BATCH_NO, &row);
        c->cb.batch(BD_OK, &row, NULL, c->arg);
    }
    free(c);
}

/* The job's cancel flag rides along with every batch load, so a cancel recorded only in
 * PostgreSQL (Redis unreachable) still stops a job running in any process before its
 * next batch. Binary results: items is jsonb (version byte 1, then the text). */
int bd_job_store_load_batch(struct bd_pg *pg, const char *job_id, int after_batch_no,
                            bd_job_store_batch_cb cb, void *arg)
{
    char after[16];
    snprintf(after, sizeof(after), "%d", after_batch_no);
    const char *params[2] = { job_id, after };
    return bd__store_query(pg,
                           "SELECT j.cancel_requested, " STORE_BATCH_COLUMNS "FROM jobs j "
                           STORE_BATCH_JOIN("$2::int") "WHERE j.id = $1",
                           2, params, NULL, NULL, 1, store_on_batch, BD__STORE_CALL(batch));
}

/* ---- grouped start and finish ---------------------------------------------------------
 * Jobs claimed together start together, and jobs that end in the same loop turn finish
 * together: each call is queued in a pg group (bd_pg_group_add) and one statement answers
 * every call of the group -- UPDATE ... FROM unnest(the calls' arguments) RETURNING the id
 * with each row, so each caller gets its own row (or NULL when its job did not qualify).
 * A job id appears once per statement: a second call for the same id waits for the next. */

struct store_req {
    struct bd_pg_link link;           /* first: the group's list */
    union {
        bd_job_store_start_load_cb start;
        bd_job_store_finish_cb finish;
    } cb;
    void *arg;
    char job_id[129];
    const char *a, *b, *c;            /* start: worker, sources; finish: state, code, message */
    char text[];                      /* the strings a, b, c point into */
};

/* A flushed group's statement in flight: its requests, for the answer. */
struct store_group_call {
    struct bd_pg *pg;
    enum bd_job_store_group_kind kind;
    struct store_req **reqs;
    unsigned n;
};

static struct store_req *store_req_new(const char *job_id, const char *a, const char *b,
                                       const char *c)
{
    size_t la = strlen(a) + 1, lb = strlen(b) + 1, lc = strlen(c) + 1;
    struct store_req *r;

    if (strlen(job_id) >= sizeof(r->job_id))
        return NULL;
    r = malloc(sizeof(*r) + la + lb + lc);
    if (r == NULL)
        return NULL;
    snprintf(r->job_id, sizeof(r->job_id), "%s", job_id);
    memcpy(r->text, a, la);
    memcpy(r->text + la, b, lb);
    memcpy(r->text + la + lb, c, lc);
    r->a = r->text;
    r->b = r->text + la;
    r->c = r->text + la + lb;
    return r;
}

/* The row of res whose id column is id, or -1. */
static int store_find_row(const PGresult *res, int id_col, const char *id)
{
    for (int r = 0; r < PQntuples(res); r++)
        if (!PQgetisnull(res, r, id_col) && strcmp(PQgetvalue(res, r, id_col), id) == 0)
            return r;
    return -1;
}

/* Answer one request with status (and row r of res when r >= 0), then free it. */
static void store_req_answer(enum bd_job_store_group_kind kind, struct store_req *q, int status,
                             const PGresult *res, int r, const struct bd_job_store_err *e)
{
    if (kind == BD_JOB_STORE_GROUP_START) {
        struct bd_job_start_row row;
        struct bd_job_batch_row batch;
        if (status < 0 || r < 0) {
            q->cb.start(status, NULL, NULL, status < 0 ? e : NULL, q->arg);
        } else {
            store_start_row(res, r, &row);
            memset(&batch, 0, sizeof(batch));
            batch.is_cancel_requested = row.is_cancel_requested;
            store_batch_row(res, r, START_NCOLUMNS, &batch);
            q->cb.start(BD_OK, &row, &batch, NULL, q->arg);
        }
    } else {
        if (status < 0 || r < 0) {
            q->cb.finish(status, NULL, status < 0 ? e : NULL, q->arg);
        } else {
            struct bd_job_finish_row row = { store_state(PQgetvalue(res, r, 1)),
                                             bd__store_ll(res, r, 2, 0),
                                             bd__store_ll(res, r, 3, 0) };
            q->cb.finish(BD_OK, &row, NULL, q->arg);
        }
    }
    free(q);
}

/* The id column of each group's result. */
#define STORE_START_ID_COL (START_NCOLUMNS + (BATCH_PAYLOAD - BATCH_NO) + 1)
#define STORE_FINISH_ID_COL 0

static void store_on_group(int status, PGresult *res, void *arg)
{
    struct store_group_call *g = arg;
    struct bd_job_store_err e = { .message = NULL };
    int id_col = g->kind == BD_JOB_STORE_GROUP_START ? STORE_START_ID_COL : STORE_FINISH_ID_COL;

    if (status < 0)
        e = store_err(res);
    for (unsigned i = 0; i < g->n; i++) {
        int r = status < 0 ? -1 : store_find_row(res, id_col, g->reqs[i]->job_id);
        store_req_answer(g->kind, g->reqs[i], status, res, r, &e);
    }
    bd_pg_group_done(g->pg, g->kind);
    free(g->reqs);
    free(g);
}

static const char store_group_start_sql[] =
    "WITH u AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) "
    "AS u(id, worker, sources)), "
    "j AS (UPDATE jobs SET " STORE_START_SET ", lease_owner = u.worker FROM u "
    "WHERE jobs.id = u.id AND jobs.status = ANY(u.sources::text[]) "
    STORE_START_RETURNING "), " STORE_START_COLLECTION STORE_START_SELECT ", "
    STORE_BATCH_COLUMNS ", j.id FROM j " STORE_BATCH_JOIN("-1");

/* "completed" is a request to decide by the counters: every item failed -> failed (SPEC
 * "States"); a cancel that PostgreSQL recorded wins over a completion, so a job a 200
 * promised to stop never ends 'completed'. Per row: u.st '' (decide) or the state.
 * A job to decide that still has a pending batch is not finished but returned as
 * 'processing' (p): its run believed every batch checkpointed, but a checkpoint it was
 * told committed is gone -- the engine commits asynchronously, so a PostgreSQL crash loses
 * the last ones -- and the batch must run again. */
static const char store_group_finish_sql[] =
    "WITH u AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) "
    "AS u(id, st, code, msg)), "
    "p AS (SELECT jobs.id, jobs.status, jobs.processed_items, jobs.failed_items "
    "  FROM jobs JOIN u ON jobs.id = u.id WHERE u.st = '' AND jobs.status = 'processing' "
    "  AND NOT jobs.cancel_requested AND EXISTS (SELECT 1 FROM job_batches b "
    "  WHERE b.job_id = jobs.id AND b.status = 'pending')), "
    "f AS (UPDATE jobs SET "
    "status = CASE WHEN u.st <> '' THEN u.st "
    "  WHEN cancel_requested THEN 'cancelled' "
    "  WHEN processed_items = 0 AND failed_items > 0 THEN 'failed' "
    "  ELSE 'completed' END, "
    "error_code = CASE WHEN u.code <> '' THEN u.code "
    "  WHEN u.st = '' AND NOT cancel_requested AND processed_items = 0 "
    "  AND failed_items > 0 THEN 'all_items_failed' ELSE NULL END, "
    "error_message = CASE WHEN u.msg <> '' THEN u.msg "
    "  WHEN u.st = '' AND NOT cancel_requested AND processed_items = 0 "
    "  AND failed_items > 0 THEN 'every item of the job failed' "
    "  ELSE NULL END, "
    "completed_at = now(), lease_owner = NULL, updated_at = now() "
    "FROM u WHERE jobs.id = u.id AND jobs.status = 'processing' "
    "AND jobs.id NOT IN (SELECT id FROM p) "
    "RETURNING jobs.id, jobs.status, jobs.processed_items, jobs.failed_items) "
    "SELECT * FROM f UNION ALL SELECT * FROM p";

static void store_flush_start(struct bd_pg *pg, struct bd_pg_link *items, unsigned n);
static void store_flush_finish(struct bd_pg *pg, struct bd_pg_link *items, unsigned n);

/* Answer every request of a list with status (nothing was sent for them). */
static void store_answer_all(enum bd_job_store_group_kind kind, struct bd_pg_link *l, int status)
{
    struct bd_job_store_err e = { .message = status == BD_ECANCELED
                                                 ? "the store is closing"
                                                 : "could not send the statement" };
    for (struct bd_pg_link *next; l != NULL; l = next) {
        next = l->next;
        store_req_answer(kind, (struct store_req *)l, status, NULL, -1, &e);
    }
}

/* The arrays of the group's statement (one text[] per argument) into b; values etc. point
 * into b once it is complete. */
static int store_group_params(struct bd_buf *b, struct store_req *const *reqs, unsigned m,
                              int ncols, const char **values, int *lengths)
{
    size_t off[4];
    for (int col = 0; col < ncols; col++) {
        off[col] = b->len;
        bd_pg_array_begin(b, BD_PG_TEXT_OID, m);
        for (unsigned i = 0; i < m; i++) {
            const char *v = col == 0 ? reqs[i]->job_id : col == 1 ? reqs[i]->a
                          : col == 2 ? reqs[i]->b : reqs[i]->c;
            bd_pg_array_elem(b, v, strlen(v));
        }
    }
    if (b->is_failed)
        return BD_ENOMEM;
    for (int col = 0; col < ncols; col++) {
        values[col] = b->data + off[col];
        lengths[col] = (int)((col + 1 < ncols ? off[col + 1] : b->len) - off[col]);
    }
    return BD_OK;
}

/* The names the statements sent on every job are prepared under (bd_pg_query_prepared). */
static const char store_group_start_name[] = "bd_group_start";
static const char store_group_finish_name[] = "bd_group_finish";
static const char store_small_name[] = "bd_small_write";

/* One statement for the requests of a group (pg_store's flush; the list is ours). */
static void store_group_flush(struct bd_pg *pg, struct bd_pg_link *items, unsigned n,
                              enum bd_job_store_group_kind kind)
{
    bd_pg_group_flush_cb flush = kind == BD_JOB_STORE_GROUP_START ? store_flush_start
                                                           : store_flush_finish;
    struct store_group_call *g = malloc(sizeof(*g));
    struct store_req **reqs = malloc(n * sizeof(*reqs));
    struct bd_pg_link *later = NULL, **later_tail = &later;
    int ncols = kind == BD_JOB_STORE_GROUP_START ? 3 : 4;
    const char *values[4];
    int lengths[4], formats[4] = { 1, 1, 1, 1 };
    struct bd_buf b;
    unsigned m = 0;
    int rc;

    if (g == NULL || reqs == NULL) {
        free(g);
        free(reqs);
        store_answer_all(kind, items, BD_ENOMEM);
        bd_pg_group_done(pg, kind);
        return;
    }
    /* Requests in order; a job id already in this statement waits for the next one. */
    for (struct bd_pg_link *l = items, *next; l != NULL; l = next) {
        struct store_req *q = (struct store_req *)l;
        bool is_dup = false;
        next = l->next;
        for (unsigned i = 0; i < m && !is_dup; i++)
            is_dup = strcmp(reqs[i]->job_id, q->job_id) == 0;
        if (is_dup) {
            l->next = NULL;
            *later_tail = l;
            later_tail = &l->next;
        } else {
            reqs[m++] = q;
        }
    }
    bd_buf_init(&b);
    *g = (struct store_group_call){ pg, kind, reqs, m };
    rc = store_group_params(&b, reqs, m, ncols, values, lengths);
    if (rc == BD_OK)
        rc = bd_pg_query_prepared(pg, kind == BD_JOB_STORE_GROUP_START ? store_group_start_name
                                                                : store_group_finish_name,
                                  kind == BD_JOB_STORE_GROUP_START ? store_group_start_sql
                                                            : store_group_finish_sql,
                                  ncols, values, lengths, formats, kind == BD_JOB_STORE_GROUP_START,
                                  store_on_group, g);
    bd_buf_free(&b);
    if (rc < 0) {
        /* Nothing was sent: each request hears it now (on the group's turn, after its own
         * call returned). */
        struct bd_job_store_err e = { .message = rc == BD_ECANCELED
                                                     ? "the store is closing"
                                                     : "could not send the statement" };
        for (unsigned i = 0; i < m; i++)
            store_req_answer(kind, reqs[i], rc, NULL, -1, &e);
        free(reqs);
        free(g);
        bd_pg_group_done(pg, kind);
    }
    for (struct bd_pg_link *l = later, *next; l != NULL; l = next) {
        next = l->next;
        int err = bd_pg_group_add(pg, kind, l, flush);
        if (err < 0) {
            l->next = NULL;
            store_answer_all(kind, l, err);
        }
    }
}

static void store_flush_start(struct bd_pg *pg, struct bd_pg_link *items, unsigned n)
{
    store_group_flush(pg, items, n, BD_JOB_STORE_GROUP_START);
}

static void store_flush_finish(struct bd_pg *pg, struct bd_pg_link *items, unsigned n)
{
    store_group_flush(pg, items, n, BD_JOB_STORE_GROUP_FINISH);
}

/* The start statement with the first pending batch joined on: the batch is read with the
 * statement's snapshot, as a load sent right after the start would read it (the job is
 * ours from here on, so nobody else checkpoints its batches meanwhile). Grouped. */
int bd_job_store_start_load(struct bd_pg *pg, const char *job_id, const char *worker_id,
                            const char *sources, bd_job_store_start_load_cb cb, void *arg)
{
    if (pg == NULL || job_id == NULL || worker_id == NULL || sources == NULL || cb == NULL)
        return BD_EINVAL;
    struct store_req *q = store_req_new(job_id, worker_id, sources, "");
    if (q == NULL)
        return BD_ENOMEM;
    q->cb.start = cb;
    q->arg = arg;
    int rc = bd_pg_group_add(pg, BD_JOB_STORE_GROUP_START, &q->link, store_flush_start);
    if (rc < 0)
        free(q);
    return rc;
}

static void store_on_done(int status, PGresult *res, void *arg)
{
    struct bd__store_call *c = arg;
    if (status < 0) {
        struct bd_job_store_err e = store_err(res);
        c->cb.done(status, &e, c->arg);
    } else {
        c->cb.done(BD_OK, NULL, c->arg);
    }
    free(c);
}

int bd_job_store_record_attempt(struct bd_pg *pg, const char *job_id, int batch_no,
                                unsigned attempts, const char *message,
                                bd_job_store_done_cb cb, void *arg)
{
    char batch[16], att[16];
    snprintf(batch, sizeof(batch), "%d", batch_no);
    snprintf(att, sizeof(att), "%u", attempts);
    const char *params[4] = { job_id, batch, att, message ? message : "" };
    int rc = bd__store_query(pg,
                         "UPDATE job_batches SET attempts = $3::int, last_error = $4, "
                         "updated_at = now() WHERE job_id = $1 AND batch_no = $2::int",
                         4, params, NULL, NULL, 0, store_on_done, BD__STORE_CALL(done));
    return rc;
}

/* ---- a batch's write transaction ------------------------------------------------------ */

static void store_on_locked(int status, PGresult *res, void *arg)
{
    struct bd__store_call *c = arg;
    if (status < 0) {
        struct bd_job_store_err e = store_err(res);
        c->cb.locked(status, false, &e, c->arg);
    } else {
        bool pending = PQntuples(res) > 0 && strcmp(PQgetvalue(res, 0, 0), "pending") == 0;
        c->cb.locked(BD_OK, pending, NULL, c->arg);
    }
    free(c);
}

/* The staging table keeps a row of a few thousand dimensions in its heap page: no TOAST
 * compression of every staged vector (3% of the CPU of the embed bench).
 * The statements of the write transaction inline the job id and collection name: both
 * are validated at submit (^[A-Za-z0-9_-]+$ and ^[a-z_][a-z0-9_]*$), so they cannot break
 * out of the quotes, and several statements go in one round trip. */
int bd_job_store_write_begin(struct bd_pg_conn *conn, struct bd_buf *q, const char *job_id,
                             int batch_no, bd_job_store_locked_cb cb, void *arg)
{
    bd_buf_reset(q);
    bd_buf_printf(q,
                  "BEGIN; "
                  "CREATE TEMP TABLE IF NOT EXISTS bd_stage (item_index int, id text, "
                  "embedding real[], metadata jsonb, err_code text, err_msg text, "
                  "text_hash text) WITH (toast_tuple_target = 8160) ON COMMIT DELETE ROWS; "
                  "SELECT status FROM job_batches WHERE job_id = '%s' AND batch_no = %d "
                  "FOR UPDATE",
                  job_id, batch_no);
    int rc = q->is_failed ? BD_ENOMEM
                          : bd__store_conn_query(conn, q->data, 0, NULL, NULL, NULL, 0,
                                             store_on_locked, BD__STORE_CALL(locked));
    return rc;
}

/* Stage rows: (item_index int4, id text, embedding real[], metadata jsonb, err_code text,
 * err_msg text, text_hash text); failed items have a NULL embedding. */
#define STAGE_COLUMNS 7

void bd_job_store_stage_begin(struct bd_buf *b)
{
    bd_buf_reset(b);
    bd_pg_copy_begin(b);
}

void bd_job_store_stage_vector(struct bd_buf *b, unsigned item_index, const char *id,
                               size_t id_len, const float *v, unsigned dim,
                               const char *real_array, size_t real_array_len,
                               const char *meta, size_t meta_len, const char *text_hash)
{
    bd_pg_copy_row(b, STAGE_COLUMNS);
    bd_pg_copy_int4(b, (int32_t)item_index);
    bd_pg_copy_text(b, id, id_len);
    if (real_array)
        bd_pg_copy_bytes(b, real_array, real_array_len);   /* already a binary real[] */
    else
        bd_pg_copy_float4_array(b, v, dim);
    bd_pg_copy_jsonb(b, meta, meta_len);
    bd_pg_copy_null(b);
    bd_pg_copy_null(b);
    if (text_hash)
        bd_pg_copy_text(b, text_hash, 64);
    else
        bd_pg_copy_null(b);
}

void bd_job_store_stage_error(struct bd_buf *b, unsigned item_index, const char *id,
                              size_t id_len, const char *code, const char *message)
{
    bd_pg_copy_row(b, STAGE_COLUMNS);
    bd_pg_copy_int4(b, (int32_t)item_index);
    if (id)
        bd_pg_copy_text(b, id, id_len);
    else
        bd_pg_copy_null(b);
    bd_pg_copy_null(b);
    bd_pg_copy_null(b);
    bd_pg_copy_text(b, code, strlen(code));
    bd_pg_copy_text(b, message, strlen(message));
    bd_pg_copy_null(b);
}

int bd_job_store_stage_end(struct bd_buf *b)
{
    return bd_pg_copy_end(b);
}

int bd_job_store_write_stage(struct bd_pg_conn *conn, const struct bd_buf *b,
                             bd_job_store_done_cb cb, void *arg)
{
    int rc = bd__store_copy_in(conn, "COPY bd_stage FROM STDIN WITH (FORMAT binary)", b->data,
                                b->len, store_on_done, BD__STORE_CALL(done));
    return rc;
}

int bd_job_store_write_commit(struct bd_pg_conn *conn, struct bd_buf *q,
                              const struct bd_job_checkpoint *cp, bd_job_store_done_cb cb,
                              void *arg)
{
    bd_buf_reset(q);
    /* DISTINCT ON: a batch may repeat an id (a streamed job's batches cut again by
     * bd_job_store_rebatch); the later item wins, as it does across batches. Rows go in in
     * key order (vectors by id, cache rows by hash), so two writes that share keys (two
     * batches of one job written at once, or two jobs) wait on each other in one order and
     * never deadlock. */
    bd_buf_printf(q,
                  "INSERT INTO vectors (collection, id, embedding, metadata, job_id, "
                  "item_index) SELECT DISTINCT ON (id) '%s', id, embedding, metadata, '%s', "
                  "item_index FROM bd_stage WHERE embedding IS NOT NULL "
                  "ORDER BY id, item_index DESC ON CONFLICT (collection, id) DO UPDATE SET embedding = "
                  "EXCLUDED.embedding, metadata = EXCLUDED.metadata, job_id = "
                  "EXCLUDED.job_id, item_index = EXCLUDED.item_index, updated_at = now(); "
                  "INSERT INTO embedding_cache (text_hash, embedding) SELECT text_hash, "
                  "embedding FROM bd_stage WHERE text_hash IS NOT NULL "
                  "ORDER BY text_hash ON CONFLICT (text_hash) DO NOTHING; "
                  "DELETE FROM job_item_errors WHERE job_id = '%s' AND item_index >= %u "
                  "AND item_index < %u; "
                  "INSERT INTO job_item_errors (job_id, item_index, item_id, code, message, "
                  "run_attempt) SELECT '%s', item_index, id, err_code, err_msg, %d "
                  "FROM bd_stage WHERE embedding IS NULL; "
                  "UPDATE job_batches SET status = CASE WHEN %u = 0 AND %u > 0 "
                  "THEN 'failed' ELSE 'done' END, processed = %u, failed = %u, "
                  "attempts = %u, duration_ms = %u, updated_at = now() "
                  "WHERE job_id = '%s' AND batch_no = %d; "
                  "UPDATE jobs SET next_batch = next_batch + 1, "
                  "processed_items = processed_items + %u, "
                  "failed_items = failed_items + %u, stored_vectors = stored_vectors + %u, "
                  "cache_hits = cache_hits + %u, processing_ms = processing_ms + %u, "
                  "updated_at = now() WHERE id = '%s'; "
                  "COMMIT",
                  cp->collection, cp->job_id, cp->job_id, cp->first_index,
                  cp->first_index + cp->item_count, cp->job_id, cp->run_attempt, cp->ok,
                  cp->failed, cp->ok, cp->failed, cp->attempts, cp->duration_ms, cp->job_id,
                  cp->batch_no, cp->ok, cp->failed, cp->ok, cp->cache_hits, cp->duration_ms,
                  cp->job_id);
    int rc = q->is_failed ? BD_ENOMEM
                          : bd__store_conn_query(conn, q->data, 0, NULL, NULL, NULL, 0,
                                             store_on_done, BD__STORE_CALL(done));
    return rc;
}

/* ---- a small batch's write: the staged rows as arrays, in one statement --------------- */

/* A staged row's fields (the stage columns, in order); len -1 is SQL NULL. */
enum stage_col { STAGE_INDEX, STAGE_ID, STAGE_EMBEDDING, STAGE_META, STAGE_CODE, STAGE_MSG,
                 STAGE_HASH };
struct stage_field {
    const char *p;
    int32_t len;
};

static uint32_t stage_get32(const char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return be32toh(v);
}

/* The offset of the first row of a staged payload, or 0 when it is not one. */
static size_t stage_first_row(const struct bd_buf *b)
{
    static const char sig[11] = "PGCOPY\n\377\r\n";   /* with its NUL: 11 bytes */
    if (b->is_failed || b->len < 19 + 2 || memcmp(b->data, sig, 11) != 0)
        return 0;
    uint32_t ext = stage_get32(b->data + 15);
    return ext > b->len - 21 ? 0 : 19 + ext;
}

/* The row at *off into f[]: 1 and *off moved past it, 0 at the trailer, -1 malformed. */
static int stage_next_row(const struct bd_buf *b, size_t *off, struct stage_field *f)
{
    size_t o = *off;
    if (o + 2 > b->len)
        return -1;
    uint16_t n = (uint16_t)(((unsigned char)b->data[o] << 8) | (unsigned char)b->data[o + 1]);
    o += 2;
    if (n == UINT16_MAX)
        return 0;
    if (n != STAGE_COLUMNS)
        return -1;
    for (unsigned i = 0; i < STAGE_COLUMNS; i++) {
        if (o + 4 > b->len)
            return -1;
        f[i].len = (int32_t)stage_get32(b->data + o);
        o += 4;
        f[i].p = b->data + o;
        if (f[i].len < -1 || (f[i].len > 0 && (size_t)f[i].len > b->len - o))
            return -1;
        if (f[i].len > 0)
            o += (size_t)f[i].len;
    }
    *off = o;
    return 1;
}

/* The elements of a staged binary real[] (one dimension, or empty): their count, and in
 * *data the (length, value) pairs, which are also the element section of the flat array
 * the statement slices. -1 when it is not such an array. */
static long stage_vector(const struct stage_field *f, const char **data)
{
    if (f->len < 12 || stage_get32(f->p + 8) != BD_PG_FLOAT4_OID)
        return -1;
    uint32_t ndim = stage_get32(f->p);
    if (ndim == 0) {
        *data = f->p + 12;
        return 0;
    }
    if (ndim != 1 || f->len < 20)
        return -1;
    uint32_t n = stage_get32(f->p + 12);
    if ((size_t)f->len - 20 != (size_t)n * 8)
        return -1;
    *data = f->p + 20;
    return (long)n;
}

bool bd_job_store_is_small_batch(const struct bd_buf *stage, unsigned item_count)
{
    return item_count <= BD_JOB_STORE_SMALL_ITEMS && stage->len <= BD_JOB_STORE_SMALL_BYTES;
}

static void store_on_written(int status, PGresult *res, void *arg)
{
    struct bd__store_call *c = arg;
    if (status < 0) {
        struct bd_job_store_err e = store_err(res);
        c->cb.written(status, NULL, &e, c->arg);
    } else {
        struct bd_job_write_row row = { false, false, false };
        if (PQntuples(res) == 1) {
            row.is_pending = bd__store_bool(res, 0, 0);
            row.has_more = bd__store_bool(res, 0, 1);
            row.is_cancel_requested = bd__store_bool(res, 0, 2);
        }
        c->cb.written(BD_OK, &row, NULL, c->arg);
    }
    free(c);
}

/* The arrays of the statement, in parameter order from $12. */
enum small_array { SMALL_INDEX, SMALL_ID, SMALL_OFFSET, SMALL_LENGTH, SMALL_META, SMALL_CODE,
                   SMALL_MSG, SMALL_HASH, SMALL_FLAT, SMALL_NARRAYS };

/* Every array of the statement into q, one after another; where each starts in off[]. */
static int store_small_arrays(struct bd_buf *q, const struct bd_buf *stage, size_t first,
                              unsigned rows, unsigned floats, size_t *off)
{
    static const uint32_t oids[SMALL_NARRAYS] = {
        BD_PG_INT4_OID, BD_PG_TEXT_OID, BD_PG_INT4_OID, BD_PG_INT4_OID, BD_PG_TEXT_OID,
        BD_PG_TEXT_OID, BD_PG_TEXT_OID, BD_PG_TEXT_OID, BD_PG_FLOAT4_OID };
    struct stage_field f[STAGE_COLUMNS];

    bd_buf_reset(q);
    for (int a = 0; a < SMALL_NARRAYS; a++) {
        size_t o = first;
        int32_t next = 1;                     /* 1-based index of a row's first float */
        off[a] = q->len;
        bd_pg_array_begin(q, oids[a], a == SMALL_FLAT ? floats : rows);
        while (stage_next_row(stage, &o, f) == 1) {
            const char *data = NULL;
            long n = f[STAGE_EMBEDDING].len < 0 ? -1 : stage_vector(&f[STAGE_EMBEDDING], &data);
            const struct stage_field *t = NULL;
            switch (a) {
            case SMALL_INDEX:
                bd_pg_array_int4(q, (int32_t)stage_get32(f[STAGE_INDEX].p));
                break;
            case SMALL_OFFSET:
                bd_pg_array_int4(q, next);
                break;
            case SMALL_LENGTH:
                if (n < 0)
                    bd_pg_array_elem(q, NULL, 0);
                else
                    bd_pg_array_int4(q, (int32_t)n);
                break;
            case SMALL_FLAT:
                if (n > 0)
                    bd_buf_append(q, data, (size_t)n * 8);   /* (4, bits) pairs as they are */
                break;
            case SMALL_META:                   /* jsonb: version byte 1, then the text */
                if (f[STAGE_META].len >= 1)
                    bd_pg_array_elem(q, f[STAGE_META].p + 1, (size_t)f[STAGE_META].len - 1);
                else
                    bd_pg_array_elem(q, NULL, 0);
                break;
            default:
                t = &f[a == SMALL_ID ? STAGE_ID : a == SMALL_CODE ? STAGE_CODE
                       : a == SMALL_MSG ? STAGE_MSG : STAGE_HASH];
                bd_pg_array_elem(q, t->len < 0 ? NULL : t->p, t->len < 0 ? 0 : (size_t)t->len);
                break;
            }
            if (n > 0)
                next += (int32_t)n;
        }
    }
    return q->is_failed ? BD_ENOMEM : BD_OK;
}

/* Every write below is gated on b, the batch row's update: UPDATE takes the row's lock,
 * waits for a concurrent writer and re-reads the committed status, so when another owner
 * checkpointed the batch first b is empty and nothing is written (the same check as the
 * transaction's SELECT ... FOR UPDATE). The errors of items that now succeeded are
 * deleted and the new ones upserted, so the two touch different rows in the one statement.
 * The last column looks for pending batches other than this one, so that a one-batch job
 * needs no further load to learn it is done. */
static const char store_small_sql[] =
    "WITH b AS (UPDATE job_batches SET status = CASE WHEN $7::int = 0 AND $8::int > 0 "
    "THEN 'failed' ELSE 'done' END, processed = $7::int, failed = $8::int, "
    "attempts = $9::int, duration_ms = $10::int, updated_at = now() "
    "WHERE job_id = $1 AND batch_no = $2::int AND status = 'pending' RETURNING batch_no), "
    "s AS MATERIALIZED (SELECT u.i, u.id, CASE WHEN u.n IS NULL THEN NULL "
    "ELSE ($20::real[])[u.o : u.o + u.n - 1] END AS emb, u.meta, u.code, u.msg, u.hash "
    "FROM unnest($12::int4[], $13::text[], $14::int4[], $15::int4[], $16::text[], "
    "$17::text[], $18::text[], $19::text[]) AS u(i, id, o, n, meta, code, msg, hash) "
    "WHERE EXISTS (SELECT 1 FROM b)), "
    "v AS (INSERT INTO vectors (collection, id, embedding, metadata, job_id, item_index) "
    "SELECT DISTINCT ON (id) $3, id, emb, meta::jsonb, $1, i FROM s WHERE emb IS NOT NULL "
    "ORDER BY id, i DESC ON CONFLICT (collection, id) DO UPDATE SET embedding = "
    "EXCLUDED.embedding, metadata = EXCLUDED.metadata, job_id = EXCLUDED.job_id, "
    "item_index = EXCLUDED.item_index, updated_at = now()), "
    "vc AS (INSERT INTO embedding_cache (text_hash, embedding) SELECT hash, emb FROM s "
    "WHERE hash IS NOT NULL AND emb IS NOT NULL ORDER BY hash "
    "ON CONFLICT (text_hash) DO NOTHING), "
    "de AS (DELETE FROM job_item_errors WHERE job_id = $1 AND item_index >= $4::int "
    "AND item_index < $5::int AND EXISTS (SELECT 1 FROM b) "
    "AND item_index NOT IN (SELECT i FROM s WHERE emb IS NULL)), "
    "ie AS (INSERT INTO job_item_errors (job_id, item_index, item_id, code, message, "
    "run_attempt) SELECT $1, i, id, code, msg, $6::int FROM s WHERE emb IS NULL "
    "ON CONFLICT (job_id, item_index) DO UPDATE SET item_id = EXCLUDED.item_id, "
    "code = EXCLUDED.code, message = EXCLUDED.message, run_attempt = EXCLUDED.run_attempt), "
    "j AS (UPDATE jobs SET next_batch = next_batch + 1, "
    "processed_items = processed_items + $7::int, failed_items = failed_items + $8::int, "
    "stored_vectors = stored_vectors + $7::int, cache_hits = cache_hits + $11::int, "
    "processing_ms = processing_ms + $10::int, updated_at = now() "
    "WHERE id = $1 AND EXISTS (SELECT 1 FROM b) RETURNING cancel_requested) "
    "SELECT EXISTS (SELECT 1 FROM b), EXISTS (SELECT 1 FROM job_batches x "
    "WHERE x.job_id = $1 AND x.status = 'pending' AND x.batch_no <> $2::int), "
    "COALESCE((SELECT cancel_requested FROM j), false)";

int bd_job_store_write_small(struct bd_pg *pg, struct bd_buf *q, const struct bd_buf *stage,
                             const struct bd_job_checkpoint *cp, bd_job_store_written_cb cb,
                             void *arg)
{
    struct stage_field f[STAGE_COLUMNS];
    size_t first = stage_first_row(stage), o = first, off[SMALL_NARRAYS];
    unsigned rows = 0, floats = 0;
    int r;

    if (first == 0)
        return BD_EINVAL;
    while ((r = stage_next_row(stage, &o, f)) == 1) {
        const char *data;
        long n = f[STAGE_EMBEDDING].len < 0 ? 0 : stage_vector(&f[STAGE_EMBEDDING], &data);
        if (n < 0 || f[STAGE_INDEX].len != 4 || rows >= INT32_MAX / 2 ||
            (unsigned long)n > (unsigned long)(INT32_MAX / 8) - floats)
            return BD_EINVAL;
        rows++;
        floats += (unsigned)n;
    }
    if (r < 0)
        return BD_EINVAL;
    int err = store_small_arrays(q, stage, first, rows, floats, off);
    if (err < 0)
        return err;

    char num[11][16];
    const char *values[20];
    int lengths[20], formats[20];
    unsigned nums[11] = { 0, (unsigned)cp->batch_no, 0, cp->first_index,
                          cp->first_index + cp->item_count, (unsigned)cp->run_attempt, cp->ok,
                          cp->failed, cp->attempts, cp->duration_ms, cp->cache_hits };
    for (int i = 0; i < 11; i++) {
        if (i == 1 || i == 5)
            snprintf(num[i], sizeof(num[i]), "%d", (int)nums[i]);
        else
            snprintf(num[i], sizeof(num[i]), "%u", nums[i]);
        values[i] = num[i];
        lengths[i] = 0;
        formats[i] = 0;
    }
    values[0] = cp->job_id;
    values[2] = cp->collection;
    for (int a = 0; a < SMALL_NARRAYS; a++) {
        size_t end = a + 1 < SMALL_NARRAYS ? off[a + 1] : q->len;
        values[11 + a] = q->data + off[a];
        lengths[11 + a] = (int)(end - off[a]);
        formats[11 + a] = 1;
    }
    struct bd__store_call *c = store_call_copy(BD__STORE_CALL(written));
    if (c == NULL)
        return BD_ENOMEM;
    int rc = bd_pg_query_prepared(pg, store_small_name, store_small_sql, 20, values, lengths,
                                  formats, 0, store_on_written, c);
    if (rc < 0)
        free(c);
    return rc;
}

/* Grouped (see "grouped start and finish"): jobs ending in the same loop turn share one
 * UPDATE. */
int bd_job_store_finish(struct bd_pg *pg, const char *job_id, enum bd_job_state final_state,
                        const char *error_code, const char *error_message,
                        bd_job_store_finish_cb cb, void *arg)
{
    if (pg == NULL || job_id == NULL || cb == NULL)
        return BD_EINVAL;
    struct store_req *q = store_req_new(job_id,
                                        final_state == BD_JOB_COMPLETED
                                            ? "" : bd_job_state_name(final_state),
                                        error_code ? error_code : "",
                                        error_message ? error_message : "");
    if (q == NULL)
        return BD_ENOMEM;
    q->cb.finish = cb;
    q->arg = arg;
    int rc = bd_pg_group_add(pg, BD_JOB_STORE_GROUP_FINISH, &q->link, store_flush_finish);
    if (rc < 0)
        free(q);
    return rc;
}

/* ---- cancel and retry ----------------------------------------------------------------- */

static void store_on_state(int status, PGresult *res, void *arg)
{
    struct bd__store_call *c = arg;
    if (status < 0) {
        struct bd_job_store_err e = store_err(res);
        c->cb.state(status, NULL, &e, c->arg);
    } else if (PQntuples(res) == 0) {
        c->cb.state(BD_OK, NULL, NULL, c->arg);
    } else {
        struct bd_job_state_row row = { store_state(PQgetvalue(res, 0, 0)),
                                        bd__store_bool(res, 0, 1) };
        c->cb.state(BD_OK, &row, NULL, c->arg);
    }
    free(c);
}

int bd_job_store_get_state(struct bd_pg *pg, const char *job_id, bd_job_store_state_cb cb,
                           void *arg)
{
    const char *params[1] = { job_id };
    int rc = bd__store_query(pg, "SELECT status, cancel_requested FROM jobs WHERE id = $1", 1,
                         params, NULL, NULL, 0, store_on_state, BD__STORE_CALL(state));
    return rc;
}

static void store_on_changed(int status, PGresult *res, void *arg)
{
    struct bd__store_call *c = arg;
    if (status < 0) {
        struct bd_job_store_err e = store_err(res);
        c->cb.changed(status, false, &e, c->arg);
    } else {
        c->cb.changed(BD_OK, strtol(PQcmdTuples(res), NULL, 10) > 0, NULL, c->arg);
    }
    free(c);
}

int bd_job_store_cancel(struct bd_pg *pg, const char *job_id, enum bd_job_state from,
                        enum bd_job_state to, bd_job_store_changed_cb cb, void *arg)
{
    const char *params[3] = { job_id, bd_job_state_name(from), bd_job_state_name(to) };
    int rc = bd__store_query(pg,
                         "UPDATE jobs SET status = $3, cancel_requested = true, "
                         "completed_at = CASE WHEN $3 IN ('completed', 'failed', 'cancelled') "
                         "THEN now() ELSE completed_at END, updated_at = now() "
                         "WHERE id = $1 AND status = $2 AND NOT cancel_requested",
                         3, params, NULL, NULL, 0, store_on_changed, BD__STORE_CALL(changed));
    return rc;
}

enum queue_col { QUEUE_ID, QUEUE_PRIORITY, QUEUE_SEQ, QUEUE_MODEL, QUEUE_TOTAL_ITEMS,
                 QUEUE_RUN_ATTEMPT, QUEUE_MAX_SEQ };

static void store_queue_row(const PGresult *res, int row, struct bd_job_queue_row *out)
{
    store_copy_str(out->id, sizeof(out->id), bd__store_str(res, row, QUEUE_ID));
    out->priority = (int)bd__store_ll(res, row, QUEUE_PRIORITY, 1);
    out->seq = bd__store_ll(res, row, QUEUE_SEQ, 0);
    store_copy_str(out->model, sizeof(out->model), bd__store_str(res, row, QUEUE_MODEL));
    out->total_items = bd__store_ll(res, row, QUEUE_TOTAL_ITEMS, 0);
    out->run_attempt = (int)bd__store_ll(res, row, QUEUE_RUN_ATTEMPT, 1);
}

static void store_on_requeued(int status, PGresult *res, void *arg)
{
    struct bd__store_call *c = arg;
    if (status < 0) {
        struct bd_job_store_err e = store_err(res);
        c->cb.requeued(status, NULL, &e, c->arg);
    } else if (PQntuples(res) == 0) {
        c->cb.requeued(BD_OK, NULL, NULL, c->arg);
    } else {
        struct bd_job_queue_row row;
        store_queue_row(res, 0, &row);
        c->cb.requeued(BD_OK, &row, NULL, c->arg);
    }
    free(c);
}

/* Batches with failed items go back to pending (their counts are taken off the job's,
 * since the whole batch runs again and its vectors are upserted); unfinished batches
 * (cancelled or timed-out jobs) simply stay pending. */
int bd_job_store_retry(struct bd_pg *pg, const char *job_id, enum bd_job_state from,
                       bd_job_store_requeued_cb cb, void *arg)
{
    const char *params[2] = { job_id, bd_job_state_name(from) };
    int rc = bd__store_query(
        pg,
        "WITH j0 AS (SELECT id FROM jobs WHERE id = $1 AND status = $2 FOR UPDATE), "
        "old AS (SELECT b.batch_no, b.processed, b.failed FROM job_batches b JOIN j0 "
        "ON b.job_id = j0.id WHERE b.failed > 0 FOR UPDATE OF b), "
        "pend AS (SELECT count(*) AS n FROM job_batches b JOIN j0 ON b.job_id = j0.id "
        "WHERE b.status = 'pending'), "
        "reset AS (UPDATE job_batches b SET status = 'pending', processed = 0, failed = 0, "
        "attempts = 0, last_error = NULL, updated_at = now() FROM old "
        "WHERE b.job_id = $1 AND b.batch_no = old.batch_no RETURNING 1) "
        "UPDATE jobs SET status = 'queued', run_attempt = run_attempt + 1, "
        "processed_items = processed_items - (SELECT COALESCE(sum(processed), 0) FROM old), "
        "failed_items = failed_items - (SELECT COALESCE(sum(failed), 0) FROM old), "
        "stored_vectors = stored_vectors - (SELECT COALESCE(sum(processed), 0) FROM old), "
        "next_batch = next_batch - (SELECT count(*) FROM old), "
        "error_code = NULL, error_message = NULL, completed_at = NULL, "
        "cancel_requested = false, lease_owner = NULL, updated_at = now() "
        "WHERE id IN (SELECT id FROM j0) AND ((SELECT count(*) FROM old) > 0 "
        "OR (SELECT n FROM pend) > 0) "
        "RETURNING id, priority, seq, COALESCE(model, ''), total_items, run_attempt",
        2, params, NULL, NULL, 0, store_on_requeued, BD__STORE_CALL(requeued));
    return rc;
}

/* ---- maintenance: reap, rebuild, retention, throughput -------------------------------- */

static void store_on_count(int status, PGresult *res, void *arg)
{
    struct bd__store_call *c = arg;
    if (status < 0) {
        struct bd_job_store_err e = store_err(res);
        c->cb.count(status, 0, &e, c->arg);
    } else {
        c->cb.count(BD_OK, strtoll(PQcmdTuples(res), NULL, 10), NULL, c->arg);
    }
    free(c);
}

int bd_job_store_sweep(struct bd_pg *pg, double age_s, bd_job_store_count_cb cb, void *arg)
{
    char secs[32];
    snprintf(secs, sizeof(secs), "%.3f", age_s);
    const char *params[1] = { secs };
    int rc = bd__store_query(pg,
                         "WITH c AS (DELETE FROM embedding_cache "
                         "WHERE created_at < now() - make_interval(secs => $1::float8)) "
                         "DELETE FROM jobs WHERE status IN ('completed', 'failed', 'cancelled') "
                         "AND completed_at < now() - make_interval(secs => $1::float8)",
                         1, params, NULL, NULL, 0, store_on_count, BD__STORE_CALL(count));
    return rc;
}

static void store_on_rate(int status, PGresult *res, void *arg)
{
    struct bd__store_call *c = arg;
    if (status < 0) {
        struct bd_job_store_err e = store_err(res);
        c->cb.rate(status, 0, &e, c->arg);
    } else {
        c->cb.rate(BD_OK, PQntuples(res) == 1 ? bd__store_double(res, 0, 0, 0) : 0, NULL, c->arg);
    }
    free(c);
}

/* Their items over the wall time from the first start to the last completion. */
int bd_job_store_throughput(struct bd_pg *pg, bd_job_store_rate_cb cb, void *arg)
{
    int rc = bd__store_query(pg,
                         "SELECT COALESCE(sum(processed_items + failed_items) / NULLIF(extract("
                         "epoch FROM max(completed_at) - min(started_at)), 0), 0) FROM jobs "
                         "WHERE completed_at > now() - interval '15 minutes' "
                         "AND started_at IS NOT NULL",
                         0, NULL, NULL, NULL, 0, store_on_rate, BD__STORE_CALL(rate));
    return rc;
}

/* ---- embedding cache ------------------------------------------------------------------ */

static void store_on_cache(int status, PGresult *res, void *arg)
{
    struct bd__store_call *c = arg;
    if (status < 0) {
        struct bd_job_store_err e = store_err(res);
        c->cb.cache(status, NULL, 0, &e, c->arg);
        free(c);
        return;
    }
    int n = PQntuples(res);
    struct bd_job_cache_hit *hits = n > 0 ? calloc((size_t)n, sizeof(*hits)) : NULL;
    unsigned count = 0;
    for (int r = 0; hits && r < n; r++) {
        if (PQgetlength(res, r, 0) != 64 || PQgetisnull(res, r, 1))
            continue;
        hits[count++] = (struct bd_job_cache_hit){
            PQgetvalue(res, r, 0), PQgetvalue(res, r, 1),
            PQgetlength(res, r, 1) };
    }
    /* No memory for the hits is only a lost saving: report none. */
    c->cb.cache(BD_OK, hits, count, NULL, c->arg);
    free(hits);
    free(c);
}

int bd_job_store_cache_lookup(struct bd_pg *pg, struct bd_buf *q, const char *keys,
                              size_t stride, unsigned count, bd_job_store_cache_cb cb,
                              void *arg)
{
    /* The keys are hex digests, so the array literal needs no quoting. */
    bd_buf_reset(q);
    bd_buf_puts(q, "{");
    for (unsigned i = 0; i < count; i++) {
        if (i)
            bd_buf_puts(q, ",");
        bd_buf_append(q, keys + (size_t)i * stride, 64);
    }
    bd_buf_puts(q, "}");
    if (q->is_failed)
        return BD_ENOMEM;
    const char *params[1] = { q->data };
    int rc = bd__store_query(pg,
                         "SELECT text_hash, embedding FROM embedding_cache "
                         "WHERE text_hash = ANY($1::text[])",
                         1, params, NULL, NULL, 1, store_on_cache, BD__STORE_CALL(cache));
    return rc;
}
