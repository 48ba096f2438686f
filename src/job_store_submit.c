/* job_store_submit.c -- the statements of a job's creation: the collection and
 * Idempotency-Key lookups, the job row, its batches by binary COPY, the COMMIT, the one
 * statement that creates a group of small jobs with their batches, and the lookup that
 * settles a commit whose answer was lost.
 *
 * Part of the job store (job_store.h): the one place with this SQL text. Loop thread only;
 * runs on pg_store's nonblocking pool.  SPDX-License-Identifier: MIT
 */
#include "batchd/job_store.h"
#include "job_store_internal.h"

#include "batchd/buf.h"
#include "batchd/error.h"
#include "batchd/pg_store.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* SELECT dimension FROM collections: column 0. */
enum { COLLECTION_COL_DIMENSION };

static void store_on_collection(int status, PGresult *res, void *arg)
{
    struct bd__store_call *c = arg;
    struct bd_job_store_collection_row row = { false, 0 };

    if (status == BD_OK && PQntuples(res) > 0) {
        row.is_found = true;
        row.dimension = (unsigned)strtoul(PQgetvalue(res, 0, COLLECTION_COL_DIMENSION), NULL,
                                          10);
    }
    c->cb.collection(status < 0 ? BD_EPG : BD_OK, status < 0 ? NULL : &row, c->arg);
    free(c);
}

int bd_job_store_get_collection(struct bd_pg *pg, const char *name, bd_job_store_collection_cb cb,
                                void *arg)
{
    const char *params[1] = { name };

    return bd__store_query(pg, "SELECT dimension FROM collections WHERE name = $1", 1, params,
                           NULL, NULL, 0, store_on_collection, BD__STORE_CALL(collection));
}

static void store_on_idempotent(int status, PGresult *res, void *arg)
{
    struct bd__store_call *c = arg;
    struct bd_job_store_idem_row row = { false, NULL, NULL, NULL };
    struct bd_job_row job;
    int hash_col = status == BD_OK ? PQfnumber(res, "request_hash") : -1;

    if (status == BD_OK && PQntuples(res) > 0 && hash_col >= 0 &&
        bd_job_row_from_pg(res, 0, &job) == BD_OK)
        row = (struct bd_job_store_idem_row){ true, job.id, PQgetvalue(res, 0, hash_col), &job };
    c->cb.idem(status < 0 ? BD_EPG : BD_OK, status < 0 ? NULL : &row, c->arg);
    free(c);
}

int bd_job_store_find_idempotent(struct bd_pg *pg, const char *key, bd_job_store_idem_cb cb,
                                 void *arg)
{
    const char *params[1] = { key };

    return bd__store_query(pg,
                           "SELECT " BD_JOB_ROW_COLUMNS ", request_hash FROM jobs "
                           "WHERE idempotency_key = $1",
                           1, params, NULL, NULL, 0, store_on_idempotent,
                           BD__STORE_CALL(idem));
}

/* The INSERT's parameters, in order. */
enum {
    NEWJOB_ID, NEWJOB_SEQ, NEWJOB_OPERATION, NEWJOB_MODEL, NEWJOB_COLLECTION, NEWJOB_PRIORITY,
    NEWJOB_BATCH_SIZE, NEWJOB_TOTAL_ITEMS, NEWJOB_TOTAL_BATCHES, NEWJOB_TIMEOUT_S,
    NEWJOB_MAX_RETRIES, NEWJOB_OPTIONS, NEWJOB_METADATA, NEWJOB_IDEM_KEY, NEWJOB_REQUEST_HASH,
    NEWJOB_CREATED, NEWJOB_NPARAMS
};

/* The text of one job row's parameters: the numbers printed, the strings borrowed from job. */
struct store_new_job_text {
    char prio[16], bs[16], items[16], nb[16], seq[24], created[32], timeout[32], retries[16];
    const char *p[NEWJOB_NPARAMS];
};

static void store_new_job_text(const struct bd_job_store_new_job *job,
                               struct store_new_job_text *t)
{
    snprintf(t->seq, sizeof(t->seq), "%lld", job->seq);
    snprintf(t->prio, sizeof(t->prio), "%d", job->priority);
    snprintf(t->bs, sizeof(t->bs), "%u", job->batch_size);
    snprintf(t->items, sizeof(t->items), "%u", job->total_items);
    snprintf(t->nb, sizeof(t->nb), "%u", job->total_batches);
    snprintf(t->timeout, sizeof(t->timeout), "%.3f", job->timeout_s);
    snprintf(t->retries, sizeof(t->retries), "%d", job->max_retries);
    snprintf(t->created, sizeof(t->created), "%.3f", job->created_unix);
    t->p[NEWJOB_ID] = job->id;
    t->p[NEWJOB_SEQ] = t->seq;
    t->p[NEWJOB_OPERATION] = job->operation;
    t->p[NEWJOB_MODEL] = job->model;
    t->p[NEWJOB_COLLECTION] = job->collection;
    t->p[NEWJOB_PRIORITY] = t->prio;
    t->p[NEWJOB_BATCH_SIZE] = t->bs;
    t->p[NEWJOB_TOTAL_ITEMS] = t->items;
    t->p[NEWJOB_TOTAL_BATCHES] = t->nb;
    t->p[NEWJOB_TIMEOUT_S] = t->timeout;
    t->p[NEWJOB_MAX_RETRIES] = t->retries;
    t->p[NEWJOB_OPTIONS] = job->options_json;
    t->p[NEWJOB_METADATA] = job->metadata_json;
    t->p[NEWJOB_IDEM_KEY] = job->idempotency_key;
    t->p[NEWJOB_REQUEST_HASH] = job->idempotency_key ? job->request_hash : NULL;
    t->p[NEWJOB_CREATED] = t->created;
}

#define STORE_NEW_JOB_INSERT                                                               \
    "INSERT INTO jobs (id, seq, operation, model, collection, status, priority, "          \
    "batch_size, total_items, total_batches, timeout_s, max_retries, options, "            \
    "metadata, idempotency_key, request_hash, created_at, updated_at) VALUES "

/* One row's VALUES tuple, its parameters numbered from base + 1 (printf arguments: base
 * sixteen times, in NEWJOB order). */
#define STORE_NEW_JOB_TUPLE                                                                \
    "($%d, $%d::int8, $%d, $%d, $%d, 'queued', $%d::int2, $%d::int, $%d::int, $%d::int, "   \
    "$%d::float8, $%d::int, $%d::jsonb, $%d::jsonb, $%d, $%d, to_timestamp($%d::float8), now())"

int bd_job_store_begin_job(struct bd_pg_conn *conn, const struct bd_job_store_new_job *job,
                           bd_pg_result_cb cb, void *arg)
{
    struct store_new_job_text t;

    store_new_job_text(job, &t);
    const char *const sqls[2] = {
        "BEGIN",
        STORE_NEW_JOB_INSERT
        "($1, $2::int8, $3, $4, $5, 'queued', $6::int2, $7::int, $8::int, $9::int, "
        "$10::float8, $11::int, $12::jsonb, $13::jsonb, $14, $15, "
        "to_timestamp($16::float8), now())",
    };
    const int np[2] = { 0, NEWJOB_NPARAMS };
    const char *const *params[2] = { NULL, t.p };
    return bd_pg_conn_pipeline(conn, 2, sqls, np, params, cb, arg);
}

/* ---- bd_job_store_create_jobs: rows and batches in one statement -------------------------
 * The job rows and the batch rows come as binary arrays, one per column (unnest zips
 * them). The batches' INSERT is the statement and the jobs' INSERT its CTE; the scalar
 * subquery on the CTE is evaluated before the first batch row is produced, so every job
 * row is in before any batch row (a trigger on job_batches sees its job; the foreign key
 * is checked at the statement's end in any case). */
static const char store_create_name[] = "bd_submit_jobs";
static const char store_create_sql[] =
    "WITH j AS (INSERT INTO jobs (id, seq, operation, model, collection, status, priority, "
    "batch_size, total_items, total_batches, timeout_s, max_retries, options, metadata, "
    "idempotency_key, request_hash, created_at, updated_at) "
    "SELECT id, seq, op, model, coll, 'queued', prio::int2, bs, items, nb, timeout, "
    "retries, opt::jsonb, meta::jsonb, ikey, rhash, to_timestamp(created), now() "
    "FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::int4[], "
    "$7::int4[], $8::int4[], $9::int4[], $10::float8[], $11::int4[], $12::text[], "
    "$13::text[], $14::text[], $15::text[], $16::float8[]) AS t(id, seq, op, model, coll, "
    "prio, bs, items, nb, timeout, retries, opt, meta, ikey, rhash, created) RETURNING 1) "
    "INSERT INTO job_batches (job_id, batch_no, first_index, item_count, items, payload) "
    "SELECT * FROM unnest($17::text[], $18::int4[], $19::int4[], $20::int4[], $21::text[], "
    "$22::bytea[]) WHERE (SELECT count(*) FROM j) > 0";
enum { CREATE_JOB_ARRAYS = 16, CREATE_NPARAMS = 22 };

/* The element types the arrays need beyond pg_store.h's. */
#define STORE_INT8_OID 20u
#define STORE_FLOAT8_OID 701u
#define STORE_BYTEA_OID 17u

static void store_elem_text(struct bd_buf *b, const char *s)
{
    bd_pg_array_elem(b, s, s ? strlen(s) : 0);
}

static void store_elem_int8(struct bd_buf *b, long long v)
{
    unsigned char be[8];
    uint64_t u = (uint64_t)v;
    for (int i = 7; i >= 0; i--, u >>= 8)
        be[i] = (unsigned char)(u & 0xff);
    bd_pg_array_elem(b, be, sizeof(be));
}

static void store_elem_float8(struct bd_buf *b, double v)
{
    uint64_t u;
    memcpy(&u, &v, sizeof(u));
    store_elem_int8(b, (long long)u);
}

/* Array col of the job rows (NEWJOB order) appended to b. */
static void store_create_job_array(struct bd_buf *b, int col,
                                   const struct bd_job_store_new_job *jobs, unsigned n)
{
    static const uint32_t oid[CREATE_JOB_ARRAYS] = {
        [NEWJOB_ID] = BD_PG_TEXT_OID, [NEWJOB_SEQ] = STORE_INT8_OID,
        [NEWJOB_OPERATION] = BD_PG_TEXT_OID, [NEWJOB_MODEL] = BD_PG_TEXT_OID,
        [NEWJOB_COLLECTION] = BD_PG_TEXT_OID, [NEWJOB_PRIORITY] = BD_PG_INT4_OID,
        [NEWJOB_BATCH_SIZE] = BD_PG_INT4_OID, [NEWJOB_TOTAL_ITEMS] = BD_PG_INT4_OID,
        [NEWJOB_TOTAL_BATCHES] = BD_PG_INT4_OID, [NEWJOB_TIMEOUT_S] = STORE_FLOAT8_OID,
        [NEWJOB_MAX_RETRIES] = BD_PG_INT4_OID, [NEWJOB_OPTIONS] = BD_PG_TEXT_OID,
        [NEWJOB_METADATA] = BD_PG_TEXT_OID, [NEWJOB_IDEM_KEY] = BD_PG_TEXT_OID,
        [NEWJOB_REQUEST_HASH] = BD_PG_TEXT_OID, [NEWJOB_CREATED] = STORE_FLOAT8_OID,
    };

    bd_pg_array_begin(b, oid[col], n);
    for (unsigned i = 0; i < n; i++) {
        const struct bd_job_store_new_job *j = &jobs[i];
        switch (col) {
        case NEWJOB_ID: store_elem_text(b, j->id); break;
        case NEWJOB_SEQ: store_elem_int8(b, j->seq); break;
        case NEWJOB_OPERATION: store_elem_text(b, j->operation); break;
        case NEWJOB_MODEL: store_elem_text(b, j->model); break;
        case NEWJOB_COLLECTION: store_elem_text(b, j->collection); break;
        case NEWJOB_PRIORITY: bd_pg_array_int4(b, j->priority); break;
        case NEWJOB_BATCH_SIZE: bd_pg_array_int4(b, (int32_t)j->batch_size); break;
        case NEWJOB_TOTAL_ITEMS: bd_pg_array_int4(b, (int32_t)j->total_items); break;
        case NEWJOB_TOTAL_BATCHES: bd_pg_array_int4(b, (int32_t)j->total_batches); break;
        case NEWJOB_TIMEOUT_S: store_elem_float8(b, j->timeout_s); break;
        case NEWJOB_MAX_RETRIES: bd_pg_array_int4(b, j->max_retries); break;
        case NEWJOB_OPTIONS: store_elem_text(b, j->options_json); break;
        case NEWJOB_METADATA: store_elem_text(b, j->metadata_json); break;
        case NEWJOB_IDEM_KEY: store_elem_text(b, j->idempotency_key); break;
        case NEWJOB_REQUEST_HASH:
            store_elem_text(b, j->idempotency_key ? j->request_hash : NULL);
            break;
        case NEWJOB_CREATED: store_elem_float8(b, j->created_unix); break;
        }
    }
}

/* Array col (0: job_id .. 5: payload) of the batch rows appended to b. */
static void store_create_batch_array(struct bd_buf *b, int col,
                                     const struct bd_job_store_new_batch *batches, unsigned nb)
{
    static const uint32_t oid[6] = { BD_PG_TEXT_OID, BD_PG_INT4_OID, BD_PG_INT4_OID,
                                     BD_PG_INT4_OID, BD_PG_TEXT_OID, STORE_BYTEA_OID };

    bd_pg_array_begin(b, oid[col], nb);
    for (unsigned i = 0; i < nb; i++) {
        const struct bd_job_store_new_batch *t = &batches[i];
        switch (col) {
        case 0: store_elem_text(b, t->job_id); break;
        case 1: bd_pg_array_int4(b, (int32_t)t->batch_no); break;
        case 2: bd_pg_array_int4(b, (int32_t)t->first_index); break;
        case 3: bd_pg_array_int4(b, (int32_t)t->item_count); break;
        case 4: bd_pg_array_elem(b, t->items_json, t->items_len); break;
        case 5: bd_pg_array_elem(b, t->payload, t->payload_len); break;
        }
    }
}

int bd_job_store_create_jobs(struct bd_pg *pg, const struct bd_job_store_new_job *jobs,
                             unsigned n, const struct bd_job_store_new_batch *batches,
                             unsigned nb, bd_pg_result_cb cb, void *arg)
{
    const char *values[CREATE_NPARAMS];
    int lengths[CREATE_NPARAMS], formats[CREATE_NPARAMS];
    size_t off[CREATE_NPARAMS + 1];
    struct bd_buf b;
    int rc;

    if (n == 0 || n > BD_JOB_STORE_NEW_JOBS_MAX || (nb > 0 && batches == NULL))
        return BD_EINVAL;
    bd_buf_init(&b);
    for (int col = 0; col < CREATE_NPARAMS; col++) {
        off[col] = b.len;
        if (col < CREATE_JOB_ARRAYS)
            store_create_job_array(&b, col, jobs, n);
        else
            store_create_batch_array(&b, col - CREATE_JOB_ARRAYS, batches, nb);
    }
    off[CREATE_NPARAMS] = b.len;
    if (b.is_failed || b.len > INT32_MAX) {
        rc = b.is_failed ? BD_ENOMEM : BD_EINVAL;
        bd_buf_free(&b);
        return rc;
    }
    for (int col = 0; col < CREATE_NPARAMS; col++) {
        values[col] = b.data + off[col];
        lengths[col] = (int)(off[col + 1] - off[col]);
        formats[col] = 1;
    }
    rc = bd_pg_query_prepared(pg, store_create_name, store_create_sql, CREATE_NPARAMS, values,
                              lengths, formats, 0, cb, arg);
    bd_buf_free(&b);
    return rc;
}

int bd_job_store_set_totals(struct bd_pg_conn *conn, const char *job_id, unsigned items,
                            unsigned batches, unsigned dim, const char *request_hash,
                            bd_pg_result_cb cb, void *arg)
{
    char n_items[16], n_batches[16], n_dim[16];
    snprintf(n_items, sizeof(n_items), "%u", items);
    snprintf(n_batches, sizeof(n_batches), "%u", batches);
    snprintf(n_dim, sizeof(n_dim), "%u", dim);
    const char *params[5] = { job_id, n_items, n_batches, n_dim, request_hash };
    return bd_pg_conn_query(conn,
                            "UPDATE jobs SET total_items = $2::int, total_batches = $3::int, "
                            "options = jsonb_set(options, '{dimension}', to_jsonb($4::int)), "
                            "request_hash = COALESCE($5, request_hash) WHERE id = $1",
                            5, params, NULL, NULL, 0, cb, arg);
}

int bd_job_store_amend_job(struct bd_pg_conn *conn, const struct bd_job_store_new_job *job,
                           bd_pg_result_cb cb, void *arg)
{
    char prio[16], bs[16], timeout[32], retries[16];
    snprintf(prio, sizeof(prio), "%d", job->priority);
    snprintf(bs, sizeof(bs), "%u", job->batch_size);
    snprintf(timeout, sizeof(timeout), "%.3f", job->timeout_s);
    snprintf(retries, sizeof(retries), "%d", job->max_retries);
    const char *params[9] = { job->id, job->model, job->collection, prio, bs, timeout,
                              retries, job->options_json, job->metadata_json };
    return bd_pg_conn_query(conn,
                            "UPDATE jobs SET model = $2, collection = $3, priority = $4::int2, "
                            "batch_size = $5::int, timeout_s = $6::float8, "
                            "max_retries = $7::int, options = $8::jsonb, metadata = $9::jsonb "
                            "WHERE id = $1",
                            9, params, NULL, NULL, 0, cb, arg);
}

/* The new batches go in under negative numbers (-1 - n) beside the old ones, the old ones
 * go, and the new ones take their numbers: no key is ever taken twice. When the new size is
 * a multiple of the old, whole batches are joined (their bytes concatenated); otherwise
 * the items are taken apart (batchd_packed_items, json_array_elements) and regrouped. */
int bd_job_store_rebatch(struct bd_pg_conn *conn, const char *job_id, bool is_insert,
                         unsigned old_size, unsigned batch_size, bd_pg_result_cb cb, void *arg)
{
    char n[16];
    bool is_join = old_size > 0 && batch_size % old_size == 0;
    /* $2: old batches per new one (joining), or the new size (regrouping items) */
    snprintf(n, sizeof(n), "%u", is_join ? batch_size / old_size : batch_size);
    const char *p[2] = { job_id, n };
    const char *regroup;

    if (is_join && is_insert)
        regroup = "INSERT INTO job_batches (job_id, batch_no, first_index, item_count, payload) "
                  "SELECT $1, -1 - batch_no / $2::int, min(first_index), sum(item_count), "
                  "string_agg(payload, ''::bytea ORDER BY batch_no) FROM job_batches "
                  "WHERE job_id = $1 AND batch_no >= 0 GROUP BY batch_no / $2::int";
    else if (is_join)                       /* "[a,b]" + "[c]" -> "[a,b,c]" */
        regroup = "INSERT INTO job_batches (job_id, batch_no, first_index, item_count, items) "
                  "SELECT $1, -1 - batch_no / $2::int, min(first_index), sum(item_count), "
                  "'[' || string_agg(substr(items, 2, length(items) - 2), ',' "
                  "ORDER BY batch_no) || ']' FROM job_batches "
                  "WHERE job_id = $1 AND batch_no >= 0 GROUP BY batch_no / $2::int";
    else if (is_insert)
        regroup = "INSERT INTO job_batches (job_id, batch_no, first_index, item_count, payload) "
                  "SELECT $1, -1 - i.idx / $2::int, min(i.idx), count(*), "
                  "string_agg(i.item, ''::bytea ORDER BY i.idx) FROM (SELECT b.first_index + "
                  "p.ord AS idx, p.item FROM job_batches b, batchd_packed_items(b.payload) p "
                  "WHERE b.job_id = $1 AND b.batch_no >= 0) i GROUP BY i.idx / $2::int";
    else
        regroup = "INSERT INTO job_batches (job_id, batch_no, first_index, item_count, items) "
                  "SELECT $1, -1 - i.idx / $2::int, min(i.idx), count(*), "
                  "'[' || string_agg(i.item::text, ',' ORDER BY i.idx) || ']' FROM (SELECT "
                  "b.first_index + e.ord - 1 AS idx, e.item FROM job_batches b, "
                  "json_array_elements(b.items::json) WITH ORDINALITY e(item, ord) "
                  "WHERE b.job_id = $1 AND b.batch_no >= 0) i GROUP BY i.idx / $2::int";
    /* A big job's re-cut takes PostgreSQL about as long as writing its batches did (~10 s
     * per GB here): past the pool's statement timeout for the biggest jobs. The upload's
     * own limit (an hour) bounds it instead, for the rest of this transaction only. */
    const char *const sqls[4] = {
        "SET LOCAL statement_timeout = '3600s'",
        regroup,
        "DELETE FROM job_batches WHERE job_id = $1 AND batch_no >= 0",
        "UPDATE job_batches SET batch_no = -1 - batch_no WHERE job_id = $1",
    };
    const int np[4] = { 0, 2, 1, 1 };
    const char *const *params[4] = { NULL, p, p, p };
    bd_pg_conn_set_deadline(conn, 3600.0 + 60.0);   /* the client's deadline follows it */
    return bd_pg_conn_pipeline(conn, 4, sqls, np, params, cb, arg);
}

/* The COPY's columns, in the order bd_job_store_put_batch writes them. */
#define STORE_BATCH_COPY_SQL                                                               \
    "COPY job_batches (job_id, batch_no, first_index, item_count, items, payload) "        \
    "FROM STDIN WITH (FORMAT binary)"
#define STORE_BATCH_NCOLUMNS 6

int bd_job_store_put_batch(struct bd_buf *copy, const char *job_id, unsigned batch_no,
                           unsigned first_index, unsigned item_count, const char *items_json,
                           size_t items_len, const void *payload, size_t payload_len)
{
    bd_pg_copy_row(copy, STORE_BATCH_NCOLUMNS);
    bd_pg_copy_text(copy, job_id, strlen(job_id));
    bd_pg_copy_int4(copy, (int32_t)batch_no);
    bd_pg_copy_int4(copy, (int32_t)first_index);
    bd_pg_copy_int4(copy, (int32_t)item_count);
    if (items_json)
        bd_pg_copy_text(copy, items_json, items_len);
    else
        bd_pg_copy_null(copy);
    if (payload)
        return bd_pg_copy_bytes(copy, payload, payload_len);
    return bd_pg_copy_null(copy);
}

int bd_job_store_copy_batches(struct bd_pg_conn *conn, const struct bd_buf *copy,
                              bd_pg_result_cb cb, void *arg)
{
    return bd_pg_conn_copy_in(conn, STORE_BATCH_COPY_SQL, copy->data, copy->len, cb, arg);
}

int bd_job_store_commit(struct bd_pg_conn *conn, bd_pg_result_cb cb, void *arg)
{
    return bd_pg_conn_query(conn, "COMMIT", 0, NULL, NULL, NULL, 0, cb, arg);
}

static void store_on_exists(int status, PGresult *res, void *arg)
{
    struct bd__store_call *c = arg;

    c->cb.exists(status < 0 ? BD_EPG : BD_OK, status == BD_OK && PQntuples(res) > 0, c->arg);
    free(c);
}

int bd_job_store_job_exists(struct bd_pg *pg, const char *job_id, bd_job_store_exists_cb cb,
                            void *arg)
{
    const char *params[1] = { job_id };

    return bd__store_query(pg, "SELECT 1 FROM jobs WHERE id = $1", 1, params, NULL, NULL, 0,
                           store_on_exists, BD__STORE_CALL(exists));
}

bool bd_job_store_is_unique_violation(const PGresult *res)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    return state != NULL && strcmp(state, "23505") == 0;
}


