/* it_tiny.c -- the round-trip savings for one-item jobs (issue 11, "tiny jobs"), against
 * the real Redis and PostgreSQL of the test stack: several jobs claimed per Redis round trip
 * (exactly once each, two processes racing), the one-statement write of a small batch
 * (exactly once: a repeat or a batch that is not pending writes nothing), and the start
 * that brings the job's first batch along.
 *
 * PostgreSQL cases work in a scratch schema it_tiny_<pid> (search_path in the pool's URL),
 * dropped when the suite ends; Redis cases under their own key prefix, deleted at the end.
 * Each case counts its callbacks, checks none ran before the call returned, and asserts
 * uv_loop_close() == 0.  SPDX-License-Identifier: MIT
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "batchd/buf.h"
#include "batchd/error.h"
#include "batchd/job_engine.h"
#include "batchd/job_store.h"
#include "batchd/log.h"
#include "batchd/pg_store.h"
#include "batchd/redis_queue.h"
#include "bd_it.h"

static char it_schema[64];          /* it_tiny_<pid> */
static char it_url[1024];           /* the test database with search_path = it_schema */

/* ---- loop helpers ------------------------------------------------------------------- */

static uv_loop_t *it_loop;

static void it_wake(void)
{
    if (it_loop != NULL)
        uv_stop(it_loop);
}

static void on_watchdog(uv_timer_t *t)
{
    (void)t;
    fail_msg("a callback did not come within 10 s");
}

/* Run the loop until *flag reaches want (a watchdog fails a lost callback). */
static void run_until(uv_loop_t *loop, const int *flag, int want)
{
    uv_timer_t dog;

    it_loop = loop;
    uv_timer_init(loop, &dog);
    uv_timer_start(&dog, on_watchdog, 10000, 0);
    while (*flag < want)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&dog, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
}

static void on_done(int status, void *arg)
{
    int *n = arg;
    assert_int_equal(status, BD_OK);
    (*n)++;
    it_wake();
}

static struct bd_pg *pool_open(uv_loop_t *loop, unsigned size)
{
    struct bd_pg_options opt = { it_url, size, 10, 0, false, false };
    struct bd_pg *pg = NULL;
    int migrated = 0;

    assert_int_equal(uv_loop_init(loop), 0);
    it_loop = loop;
    assert_int_equal(bd_pg_new(loop, &opt, &pg), BD_OK);
    while (bd_pg_get_connected(pg) < size)
        uv_run(loop, UV_RUN_ONCE);
    assert_int_equal(bd_pg_migrate(pg, on_done, &migrated), BD_OK);
    run_until(loop, &migrated, 1);
    return pg;
}

static void pool_close(uv_loop_t *loop, struct bd_pg *pg)
{
    int closed = 0;

    bd_pg_close(pg, on_done, &closed);
    while (uv_run(loop, UV_RUN_DEFAULT) != 0)
        ;
    assert_int_equal(closed, 1);
    assert_int_equal(uv_loop_close(loop), 0);
}

/* psql in the scratch schema. */
#define SQL(...) bd_it_psql_exec("SET search_path = %s;\n" __VA_ARGS__)
#define SQL_LONG(...) bd_it_psql_long("SET search_path = %s;\n" __VA_ARGS__)

/* A bulk_insert job in 'processing' with `batches` pending batches of `per` items each,
 * writing into collection tiny (dimension 3). */
static void make_job(const char *id, unsigned batches, unsigned per, const char *status)
{
    assert_int_equal(SQL("INSERT INTO collections (name, dimension) VALUES ('tiny', 3) "
                         "ON CONFLICT DO NOTHING;\n"
                         "INSERT INTO jobs (id, seq, operation, collection, status, priority, "
                         "batch_size, total_items, total_batches, options) VALUES ('%s', 1, "
                         "'bulk_insert', 'tiny', '%s', 1, %u, %u, %u, '{\"dimension\": 3}');\n"
                         "INSERT INTO job_batches (job_id, batch_no, first_index, item_count) "
                         "SELECT '%s', b, b * %u, %u FROM generate_series(0, %u) b;",
                         it_schema, id, status, per, batches * per, batches, id, per, per,
                         batches - 1), 0);
}

/* The staged rows of a batch at first_index: item 0 a vector, item 1 (when n > 1) a
 * failed item, and so on alternately. */
static void stage_rows(struct bd_buf *b, unsigned first_index, unsigned n, float base)
{
    bd_job_store_stage_begin(b);
    for (unsigned i = 0; i < n; i++) {
        char id[32];
        snprintf(id, sizeof(id), "v%u", first_index + i);
        if (i % 2 == 0) {
            float v[3] = { base + (float)i, 0.5f, -2.25f };
            bd_job_store_stage_vector(b, first_index + i, id, strlen(id), v, 3, NULL, 0,
                                      "{\"k\": 1}", 8, NULL);
        } else {
            bd_job_store_stage_error(b, first_index + i, id, strlen(id), "invalid_input",
                                     "wrong dimension");
        }
    }
    assert_int_equal(bd_job_store_stage_end(b), BD_OK);
}

/* ---- prepared statements ------------------------------------------------------------ */

struct pres {
    int calls;
    int status;
    char val[64];
    char sqlstate[8];
};

static void on_pq(int status, PGresult *res, void *arg)
{
    struct pres *p = arg;
    p->calls++;
    p->status = status;
    p->val[0] = p->sqlstate[0] = '\0';
    if (res && status == BD_OK && PQntuples(res) > 0)
        snprintf(p->val, sizeof(p->val), "%s", PQgetvalue(res, 0, 0));
    if (res && PQresultErrorField(res, PG_DIAG_SQLSTATE))
        snprintf(p->sqlstate, sizeof(p->sqlstate), "%s", PQresultErrorField(res, PG_DIAG_SQLSTATE));
    it_wake();
}

static struct pres prepared(uv_loop_t *loop, struct bd_pg *pg, const char *name,
                            const char *sql, const char *param)
{
    struct pres p = { 0 };
    const char *values[1] = { param };
    assert_int_equal(bd_pg_query_prepared(pg, name, sql, 1, values, NULL, NULL, 0, on_pq, &p),
                     BD_OK);
    assert_int_equal(p.calls, 0);
    run_until(loop, &p.calls, 1);
    return p;
}

static const char div_name[] = "it_div";
static const char bad_name[] = "it_bad";

static void prepares_once_and_recovers_from_failed_runs(void **state)
{
    uv_loop_t loop;
    (void)state;

    struct bd_pg *pg = pool_open(&loop, 1);
    const char *div = "SELECT 100 / $1::int";
    /* First run on the connection: prepare + execute; the execute fails (division by
     * zero) after the prepare passed, so the server keeps a statement the pool cannot be
     * sure of: the next run prepares under a new name instead of failing on the old one. */
    struct pres p = prepared(&loop, pg, div_name, div, "0");
    assert_int_equal(p.status, BD_EPG);
    assert_string_equal(p.sqlstate, "22012");
    for (int i = 1; i <= 4; i++) {
        char arg[8];
        snprintf(arg, sizeof(arg), "%d", i);
        p = prepared(&loop, pg, div_name, div, arg);
        assert_int_equal(p.status, BD_OK);
        assert_int_equal(atoi(p.val), 100 / i);
    }
    /* Executed by name now: the server lists the name of each generation. */
    p = prepared(&loop, pg, div_name, div, "5");
    assert_string_equal(p.val, "20");
    struct pres q = { 0 };
    const char *none[1] = { "it_div%" };
    assert_int_equal(bd_pg_query(pg, "SELECT count(*) FROM pg_prepared_statements WHERE "
                                 "name LIKE $1", 1, none, NULL, NULL, 0, on_pq, &q), BD_OK);
    run_until(&loop, &q.calls, 1);
    assert_int_equal(q.status, BD_OK);
    assert_true(atoi(q.val) >= 1 && atoi(q.val) <= 2);

    /* A statement the server refuses to prepare fails every time, cleanly. */
    for (int i = 0; i < 2; i++) {
        p = prepared(&loop, pg, bad_name, "SELEC 1 + $1::int", "1");
        assert_int_equal(p.status, BD_EPG);
        assert_string_equal(p.sqlstate, "42601");
    }
    /* The connection still serves others. */
    p = prepared(&loop, pg, div_name, div, "50");
    assert_string_equal(p.val, "2");
    pool_close(&loop, pg);
}

/* ---- the small write ---------------------------------------------------------------- */

struct wres {
    int calls;
    int status;
    struct bd_job_write_row row;
};

static void on_written(int status, const struct bd_job_write_row *row,
                       const struct bd_job_store_err *err, void *arg)
{
    struct wres *w = arg;
    w->calls++;
    w->status = status;
    if (status < 0)
        print_error("write failed: %s\n", err ? err->message : "?");
    else
        w->row = *row;
    it_wake();
}

static struct bd_job_checkpoint checkpoint(const char *job, int batch_no, unsigned first,
                                           unsigned n)
{
    struct bd_job_checkpoint cp = {
        .job_id = job, .collection = "tiny", .batch_no = batch_no, .run_attempt = 1,
        .first_index = first, .item_count = n, .ok = (n + 1) / 2, .failed = n / 2,
        .cache_hits = 0, .attempts = 1, .duration_ms = 7,
    };
    return cp;
}

static struct wres write_small(uv_loop_t *loop, struct bd_pg *pg, struct bd_buf *sql,
                               const struct bd_buf *stage, const struct bd_job_checkpoint *cp)
{
    struct wres w = { 0 };
    assert_int_equal(bd_job_store_write_small(pg, sql, stage, cp, on_written, &w), BD_OK);
    assert_int_equal(w.calls, 0);
    run_until(loop, &w.calls, 1);
    assert_int_equal(w.calls, 1);
    return w;
}

static void writes_a_small_batch_exactly_once_when_sent_twice(void **state)
{
    uv_loop_t loop;
    struct bd_buf stage, sql;
    (void)state;

    struct bd_pg *pg = pool_open(&loop, 2);
    make_job("once", 1, 3, "processing");
    bd_buf_init(&stage);
    bd_buf_init(&sql);
    stage_rows(&stage, 0, 3, 1.0f);
    assert_true(bd_job_store_is_small_batch(&stage, 3));
    struct bd_job_checkpoint cp = checkpoint("once", 0, 0, 3);

    struct wres w = write_small(&loop, pg, &sql, &stage, &cp);
    assert_int_equal(w.status, BD_OK);
    assert_true(w.row.is_pending);
    assert_false(w.row.has_more);
    assert_false(w.row.is_cancel_requested);

    /* The same batch again (a lost answer, a second owner): nothing is written. */
    w = write_small(&loop, pg, &sql, &stage, &cp);
    assert_int_equal(w.status, BD_OK);
    assert_false(w.row.is_pending);

    assert_int_equal(SQL_LONG("SELECT count(*) FROM vectors WHERE job_id = 'once'", it_schema), 2);
    assert_int_equal(SQL_LONG("SELECT count(*) FROM vectors WHERE job_id = 'once' AND "
                              "embedding = '{3,0.5,-2.25}'::real[] AND id = 'v2' AND "
                              "item_index = 2 AND metadata = '{\"k\": 1}'", it_schema), 1);
    assert_int_equal(SQL_LONG("SELECT count(*) FROM job_item_errors WHERE job_id = 'once' "
                              "AND item_index = 1 AND item_id = 'v1' AND code = "
                              "'invalid_input' AND message = 'wrong dimension'", it_schema), 1);
    assert_int_equal(SQL_LONG("SELECT processed_items * 1000000 + failed_items * 10000 + "
                              "stored_vectors * 100 + next_batch FROM jobs WHERE id = 'once'",
                              it_schema), 2 * 1000000 + 1 * 10000 + 2 * 100 + 1);
    assert_int_equal(SQL_LONG("SELECT count(*) FROM job_batches WHERE job_id = 'once' AND "
                              "status = 'done' AND processed = 2 AND failed = 1 AND "
                              "attempts = 1 AND duration_ms = 7", it_schema), 1);
    bd_buf_free(&stage);
    bd_buf_free(&sql);
    pool_close(&loop, pg);
}

static void writes_nothing_when_the_batch_is_not_pending(void **state)
{
    uv_loop_t loop;
    struct bd_buf stage, sql;
    (void)state;

    struct bd_pg *pg = pool_open(&loop, 1);
    make_job("notpending", 2, 1, "processing");
    assert_int_equal(SQL("UPDATE job_batches SET status = 'done' WHERE job_id = 'notpending' "
                         "AND batch_no = 0", it_schema), 0);
    bd_buf_init(&stage);
    bd_buf_init(&sql);
    stage_rows(&stage, 0, 1, 1.0f);
    struct bd_job_checkpoint cp = checkpoint("notpending", 0, 0, 1);
    struct wres w = write_small(&loop, pg, &sql, &stage, &cp);
    assert_int_equal(w.status, BD_OK);
    assert_false(w.row.is_pending);
    assert_int_equal(SQL_LONG("SELECT count(*) FROM vectors WHERE job_id = 'notpending'",
                              it_schema), 0);
    assert_int_equal(SQL_LONG("SELECT processed_items + failed_items + next_batch FROM jobs "
                              "WHERE id = 'notpending'", it_schema), 0);

    /* Batch 1 is pending, and batch 0 is not: written, and nothing more is left. */
    stage_rows(&stage, 1, 1, 4.0f);
    cp = checkpoint("notpending", 1, 1, 1);
    w = write_small(&loop, pg, &sql, &stage, &cp);
    assert_true(w.row.is_pending);
    assert_false(w.row.has_more);
    bd_buf_free(&stage);
    bd_buf_free(&sql);
    pool_close(&loop, pg);
}

static void counts_a_batch_once_when_two_writes_race(void **state)
{
    uv_loop_t loop;
    struct bd_buf stage, sql1, sql2;
    (void)state;

    struct bd_pg *pg = pool_open(&loop, 2);
    make_job("race", 3, 2, "processing");
    bd_buf_init(&stage);
    bd_buf_init(&sql1);
    bd_buf_init(&sql2);
    stage_rows(&stage, 2, 2, 1.0f);
    struct bd_job_checkpoint cp = checkpoint("race", 1, 2, 2);
    struct wres a = { 0 }, b = { 0 };
    /* Both on the wire at once, on two connections: the batch row's lock orders them. */
    assert_int_equal(bd_job_store_write_small(pg, &sql1, &stage, &cp, on_written, &a), BD_OK);
    assert_int_equal(bd_job_store_write_small(pg, &sql2, &stage, &cp, on_written, &b), BD_OK);
    while (a.calls + b.calls < 2)
        uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(a.status, BD_OK);
    assert_int_equal(b.status, BD_OK);
    assert_int_equal((int)a.row.is_pending + (int)b.row.is_pending, 1);
    assert_true(a.row.has_more || !a.row.is_pending);
    assert_int_equal(SQL_LONG("SELECT processed_items * 100 + failed_items FROM jobs "
                              "WHERE id = 'race'", it_schema), 101);
    assert_int_equal(SQL_LONG("SELECT count(*) FROM job_item_errors WHERE job_id = 'race'",
                              it_schema), 1);
    bd_buf_free(&stage);
    bd_buf_free(&sql1);
    bd_buf_free(&sql2);
    pool_close(&loop, pg);
}

static void replaces_old_item_errors_on_a_rerun(void **state)
{
    uv_loop_t loop;
    struct bd_buf stage, sql;
    (void)state;

    /* A retry: the batch runs again; item 0 failed last time and now succeeds, item 1
     * fails again with another message. */
    struct bd_pg *pg = pool_open(&loop, 1);
    make_job("rerun", 1, 2, "processing");
    assert_int_equal(SQL("INSERT INTO job_item_errors (job_id, item_index, item_id, code, "
                         "message) VALUES ('rerun', 0, 'v0', 'processing_error', 'old'), "
                         "('rerun', 1, 'v1', 'processing_error', 'old')", it_schema), 0);
    bd_buf_init(&stage);
    bd_buf_init(&sql);
    stage_rows(&stage, 0, 2, 1.0f);
    struct bd_job_checkpoint cp = checkpoint("rerun", 0, 0, 2);
    cp.run_attempt = 2;
    struct wres w = write_small(&loop, pg, &sql, &stage, &cp);
    assert_true(w.row.is_pending);
    assert_int_equal(SQL_LONG("SELECT count(*) FROM job_item_errors WHERE job_id = 'rerun'",
                              it_schema), 1);
    assert_int_equal(SQL_LONG("SELECT count(*) FROM job_item_errors WHERE job_id = 'rerun' "
                              "AND item_index = 1 AND message = 'wrong dimension' AND "
                              "run_attempt = 2", it_schema), 1);
    bd_buf_free(&stage);
    bd_buf_free(&sql);
    pool_close(&loop, pg);
}

static void refuses_a_buffer_that_is_not_staged_rows(void **state)
{
    uv_loop_t loop;
    struct bd_buf stage, sql;
    struct wres w = { 0 };
    (void)state;

    struct bd_pg *pg = pool_open(&loop, 1);
    bd_buf_init(&stage);
    bd_buf_init(&sql);
    bd_buf_puts(&stage, "not a COPY payload at all");
    struct bd_job_checkpoint cp = checkpoint("none", 0, 0, 1);
    assert_int_equal(bd_job_store_write_small(pg, &sql, &stage, &cp, on_written, &w),
                     BD_EINVAL);
    stage_rows(&stage, 0, 1, 1.0f);
    stage.len -= 3;                                    /* cut inside the trailer and a field */
    assert_int_equal(bd_job_store_write_small(pg, &sql, &stage, &cp, on_written, &w),
                     BD_EINVAL);
    assert_int_equal(w.calls, 0);
    bd_buf_free(&stage);
    bd_buf_free(&sql);
    pool_close(&loop, pg);
}

/* ---- start with the first batch ------------------------------------------------------ */

struct sres {
    int calls;
    int status;
    bool has_row, has_batch_row;
    struct bd_job_start_row row;
    struct bd_job_batch_row batch;
    size_t payload_len;
};

static void on_started_load(int status, const struct bd_job_start_row *row,
                            const struct bd_job_batch_row *batch,
                            const struct bd_job_store_err *err, void *arg)
{
    struct sres *s = arg;
    s->calls++;
    s->status = status;
    if (status < 0)
        print_error("start failed: %s\n", err ? err->message : "?");
    s->has_row = row != NULL;
    s->has_batch_row = batch != NULL;
    if (row)
        s->row = *row;
    if (batch) {
        s->batch = *batch;
        s->batch.payload = NULL;                        /* borrowed: only its length */
        s->batch.items_json = NULL;
        s->payload_len = batch->payload_len;
    }
    it_wake();
}

static void on_started(int status, const struct bd_job_start_row *row,
                       const struct bd_job_store_err *err, void *arg)
{
    on_started_load(status, row, NULL, err, arg);
}

static void starts_a_job_with_its_first_pending_batch(void **state)
{
    uv_loop_t loop;
    const char *sources = bd_job_event_sources(BD_JOB_EV_START);
    (void)state;

    struct bd_pg *pg = pool_open(&loop, 2);
    make_job("sl", 3, 2, "queued");
    assert_int_equal(SQL("UPDATE job_batches SET status = 'done' WHERE job_id = 'sl' AND "
                         "batch_no = 0; UPDATE job_batches SET payload = '\\x0102', attempts = 2 "
                         "WHERE job_id = 'sl' AND batch_no = 1; UPDATE jobs SET timeout_s = "
                         "12.5, priority = 2 WHERE id = 'sl'", it_schema), 0);
    make_job("sl_gone", 1, 1, "completed");

    struct sres s = { 0 };
    assert_int_equal(bd_job_store_start_load(pg, "sl", "w1", sources, on_started_load, &s),
                     BD_OK);
    assert_int_equal(s.calls, 0);
    run_until(&loop, &s.calls, 1);
    assert_int_equal(s.status, BD_OK);
    assert_true(s.has_row);
    assert_true(s.has_batch_row);
    assert_int_equal(s.row.op, BD_OP_BULK_INSERT);
    assert_string_equal(s.row.collection, "tiny");
    assert_int_equal(s.row.total_items, 6);
    assert_int_equal(s.row.total_batches, 3);
    assert_true(s.row.timeout_s > 12.49 && s.row.timeout_s < 12.51);
    assert_int_equal(s.row.max_retries, -1);
    assert_int_equal(s.row.dim, 3);
    assert_int_equal(s.row.priority, 2);
    assert_int_equal(s.row.collection_dim, 3);
    assert_int_equal(s.row.run_attempt, 1);
    assert_true(s.row.run_started_unix > 1.7e9);
    assert_true(s.batch.has_batch);
    assert_int_equal(s.batch.batch_no, 1);
    assert_int_equal(s.batch.first_index, 2);
    assert_int_equal(s.batch.item_count, 2);
    assert_int_equal(s.batch.attempts, 2);
    assert_int_equal(s.payload_len, 2);
    assert_int_equal(SQL_LONG("SELECT count(*) FROM jobs WHERE id = 'sl' AND status = "
                              "'processing' AND lease_owner = 'w1'", it_schema), 1);

    /* Not startable (terminal): neither row. */
    memset(&s, 0, sizeof(s));
    assert_int_equal(bd_job_store_start_load(pg, "sl_gone", "w1", sources, on_started_load, &s),
                     BD_OK);
    run_until(&loop, &s.calls, 1);
    assert_int_equal(s.status, BD_OK);
    assert_false(s.has_row);
    assert_false(s.has_batch_row);

    /* The plain start reads the same row (binary results). */
    memset(&s, 0, sizeof(s));
    assert_int_equal(SQL("UPDATE jobs SET status = 'queued', max_retries = 4 WHERE id = 'sl'",
                         it_schema), 0);
    assert_int_equal(bd_job_store_start(pg, "sl", "w2", sources, on_started, &s), BD_OK);
    run_until(&loop, &s.calls, 1);
    assert_true(s.has_row);
    assert_int_equal(s.row.total_items, 6);
    assert_int_equal(s.row.max_retries, 4);
    assert_int_equal(s.row.collection_dim, 3);
    assert_int_equal(s.row.priority, 2);
    pool_close(&loop, pg);
}

/* ---- grouped start and finish ---------------------------------------------------------- */

struct fres {
    int calls;
    int status;
    bool has_row;
    struct bd_job_finish_row row;
};

static void on_finished(int status, const struct bd_job_finish_row *row,
                        const struct bd_job_store_err *err, void *arg)
{
    struct fres *f = arg;
    f->calls++;
    f->status = status;
    if (status < 0)
        print_error("finish failed: %s\n", err ? err->message : "?");
    f->has_row = row != NULL;
    if (row)
        f->row = *row;
    it_wake();
}

static void starts_a_group_with_one_statement_and_a_row_each(void **state)
{
    uv_loop_t loop;
    const char *sources = bd_job_event_sources(BD_JOB_EV_START);
    struct sres s[4];
    (void)state;

    struct bd_pg *pg = pool_open(&loop, 2);
    make_job("g1", 1, 1, "queued");
    make_job("g2", 2, 1, "queued");
    make_job("g3", 3, 1, "queued");
    make_job("g4", 1, 1, "completed");                  /* not startable */
    assert_int_equal(SQL("UPDATE job_batches SET status = 'done' WHERE job_id = 'g3' AND "
                         "batch_no < 2", it_schema), 0);
    memset(s, 0, sizeof(s));
    const char *ids[4] = { "g1", "g4", "g2", "g3" };
    for (int i = 0; i < 4; i++)
        assert_int_equal(bd_job_store_start_load(pg, ids[i], "w1", sources, on_started_load,
                                                 &s[i]), BD_OK);
    for (int i = 0; i < 4; i++)
        assert_int_equal(s[i].calls, 0);
    int total = 0;
    while (total < 4) {
        uv_run(&loop, UV_RUN_ONCE);
        total = s[0].calls + s[1].calls + s[2].calls + s[3].calls;
    }
    for (int i = 0; i < 4; i++) {
        assert_int_equal(s[i].calls, 1);
        assert_int_equal(s[i].status, BD_OK);
    }
    /* Each caller its own job: g1 has 1 item, g2 2, g3 3 (its pending batch is no. 2). */
    assert_true(s[0].has_row && s[2].has_row && s[3].has_row);
    assert_int_equal(s[0].row.total_items, 1);
    assert_int_equal(s[2].row.total_items, 2);
    assert_int_equal(s[3].row.total_items, 3);
    assert_true(s[0].batch.has_batch && s[0].batch.batch_no == 0);
    assert_true(s[2].batch.has_batch && s[2].batch.batch_no == 0);
    assert_true(s[3].batch.has_batch && s[3].batch.batch_no == 2);
    assert_int_equal(s[3].batch.first_index, 2);
    assert_false(s[1].has_row);
    assert_false(s[1].has_batch_row);
    /* One statement: one transaction, so one now() for every started job. */
    assert_int_equal(SQL_LONG("SELECT count(DISTINCT started_at) * 10 + count(*) FROM jobs "
                              "WHERE id IN ('g1', 'g2', 'g3') AND status = 'processing' AND "
                              "lease_owner = 'w1'", it_schema), 13);

    /* Finish: g1 completes by its counters (all failed -> failed), g2 is failed with a
     * code, g3 twice in one turn (the second waits for the next statement and finds it no
     * longer processing), g4 is not processing. */
    assert_int_equal(SQL("UPDATE jobs SET failed_items = 1 WHERE id = 'g1'", it_schema), 0);
    /* A completion by the counters needs every batch checkpointed: one still pending (its
     * checkpoint lost in a PostgreSQL crash) leaves the job processing, answered as such. */
    struct fres pending;
    memset(&pending, 0, sizeof(pending));
    assert_int_equal(bd_job_store_finish(pg, "g1", BD_JOB_COMPLETED, NULL, NULL, on_finished,
                                         &pending), BD_OK);
    while (pending.calls == 0)
        uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(pending.status, BD_OK);
    assert_true(pending.has_row);
    assert_int_equal(pending.row.state, BD_JOB_PROCESSING);
    assert_int_equal(SQL_LONG("SELECT count(*) FROM jobs WHERE id = 'g1' AND status = "
                              "'processing' AND lease_owner = 'w1'", it_schema), 1);
    assert_int_equal(SQL("UPDATE job_batches SET status = 'done' WHERE job_id IN ('g1', 'g3')",
                         it_schema), 0);
    struct fres f[5];
    memset(f, 0, sizeof(f));
    assert_int_equal(bd_job_store_finish(pg, "g1", BD_JOB_COMPLETED, NULL, NULL, on_finished,
                                         &f[0]), BD_OK);
    assert_int_equal(bd_job_store_finish(pg, "g2", BD_JOB_FAILED, "timeout", "too slow",
                                         on_finished, &f[1]), BD_OK);
    assert_int_equal(bd_job_store_finish(pg, "g3", BD_JOB_COMPLETED, NULL, NULL, on_finished,
                                         &f[2]), BD_OK);
    assert_int_equal(bd_job_store_finish(pg, "g3", BD_JOB_CANCELLED, NULL, NULL, on_finished,
                                         &f[3]), BD_OK);
    assert_int_equal(bd_job_store_finish(pg, "g4", BD_JOB_COMPLETED, NULL, NULL, on_finished,
                                         &f[4]), BD_OK);
    total = 0;
    while (total < 5) {
        uv_run(&loop, UV_RUN_ONCE);
        total = f[0].calls + f[1].calls + f[2].calls + f[3].calls + f[4].calls;
    }
    for (int i = 0; i < 5; i++) {
        assert_int_equal(f[i].calls, 1);
        assert_int_equal(f[i].status, BD_OK);
    }
    assert_true(f[0].has_row);
    assert_int_equal(f[0].row.state, BD_JOB_FAILED);
    assert_int_equal(f[0].row.failed, 1);
    assert_true(f[1].has_row);
    assert_int_equal(f[1].row.state, BD_JOB_FAILED);
    assert_true(f[2].has_row);
    assert_int_equal(f[2].row.state, BD_JOB_COMPLETED);
    assert_false(f[3].has_row);
    assert_false(f[4].has_row);
    assert_int_equal(SQL_LONG("SELECT count(*) FROM jobs WHERE id = 'g1' AND error_code = "
                              "'all_items_failed'", it_schema), 1);
    assert_int_equal(SQL_LONG("SELECT count(*) FROM jobs WHERE id = 'g2' AND error_code = "
                              "'timeout' AND error_message = 'too slow'", it_schema), 1);
    assert_int_equal(SQL_LONG("SELECT count(DISTINCT completed_at) * 10 + count(*) FROM jobs "
                              "WHERE id IN ('g1', 'g2', 'g3') AND lease_owner IS NULL",
                              it_schema), 13);
    assert_int_equal(SQL_LONG("SELECT count(*) FROM jobs WHERE id = 'g4' AND status = "
                              "'completed'", it_schema), 1);
    pool_close(&loop, pg);
}

static void answers_queued_group_calls_when_the_pool_closes(void **state)
{
    uv_loop_t loop;
    const char *sources = bd_job_event_sources(BD_JOB_EV_START);
    struct sres s = { 0 };
    struct fres f = { 0 };
    int closed = 0;
    (void)state;

    struct bd_pg *pg = pool_open(&loop, 1);
    assert_int_equal(bd_job_store_start_load(pg, "x1", "w1", sources, on_started_load, &s),
                     BD_OK);
    assert_int_equal(bd_job_store_finish(pg, "x2", BD_JOB_COMPLETED, NULL, NULL, on_finished,
                                         &f), BD_OK);
    bd_pg_close(pg, on_done, &closed);
    assert_int_equal(s.calls, 1);                      /* from inside bd_pg_close */
    assert_int_equal(s.status, BD_ECANCELED);
    assert_int_equal(f.calls, 1);
    assert_int_equal(f.status, BD_ECANCELED);
    while (uv_run(&loop, UV_RUN_DEFAULT) != 0)
        ;
    assert_int_equal(closed, 1);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* ---- claiming several jobs per round trip ---------------------------------------------- */

#define CLAIM_JOBS 300
#define CLAIM_MAX 7

static char rq_prefix[64];

struct claimer {
    struct bd_rq *rq;
    int calls;                      /* claim round trips */
    int ups;
    bool is_drained;
    FILE *out;
};

static void on_rq_state(bool up, void *arg)
{
    struct claimer *c = arg;
    if (up)
        c->ups++;
    it_wake();
}

static void on_claimed_many(int status, const char *const *ids, unsigned count, bool is_cut,
                            void *arg)
{
    struct claimer *c = arg;
    if (status != BD_OK || is_cut)               /* no skip list: never cut */
        abort();
    c->calls++;
    if (count > CLAIM_MAX)
        abort();
    for (unsigned i = 0; i < count; i++)
        fprintf(c->out, "%s\n", ids[i]);
    if (count == 0)
        c->is_drained = true;
    else if (bd_rq_claim_many(c->rq, CLAIM_MAX, on_claimed_many, c) != BD_OK)
        abort();
    it_wake();
}

static struct bd_rq *rq_open(uv_loop_t *loop, const char *worker, struct claimer *c)
{
    struct bd_rq_options opt = { bd_it_env("BATCH_REDIS_URL", "redis://127.0.0.1:16380/0"),
                                 worker, rq_prefix, 30, 5, 60 };
    struct bd_rq *rq = NULL;

    if (bd_rq_new(loop, &opt, &rq) != BD_OK)
        return NULL;
    bd_rq_set_state_cb(rq, on_rq_state, c);
    while (c->ups == 0)
        uv_run(loop, UV_RUN_ONCE);
    return rq;
}

static void rq_close(uv_loop_t *loop, struct bd_rq *rq)
{
    bd_rq_close(rq, NULL, NULL);
    while (uv_run(loop, UV_RUN_DEFAULT) != 0)
        ;
}

/* A child process: wait for the go, claim until the queues are empty, write the ids. */
static void claim_child(const char *worker, int ready_fd, int go_fd, const char *path)
{
    uv_loop_t loop;
    struct claimer c = { 0 };
    char byte = 'r';

    c.out = fopen(path, "w");
    if (c.out == NULL || uv_loop_init(&loop) != 0)
        _exit(2);
    it_loop = &loop;
    c.rq = rq_open(&loop, worker, &c);
    if (c.rq == NULL || write(ready_fd, &byte, 1) != 1)
        _exit(3);
    if (read(go_fd, &byte, 1) != 0)                      /* the parent closes it: EOF */
        _exit(4);
    if (bd_rq_claim_many(c.rq, CLAIM_MAX, on_claimed_many, &c) != BD_OK)
        _exit(5);
    while (!c.is_drained)
        uv_run(&loop, UV_RUN_ONCE);
    fprintf(c.out, "calls %d\n", c.calls);
    fclose(c.out);
    rq_close(&loop, c.rq);
    _exit(uv_loop_close(&loop) == 0 ? 0 : 6);
}

static void on_enqueued(int status, long long v, void *arg)
{
    int *n = arg;
    (void)v;
    assert_int_equal(status, BD_OK);
    (*n)++;
    it_wake();
}

struct counts_res {
    int calls;
    struct bd_rq_counts c;
};

static void on_counts(int status, const struct bd_rq_counts *counts, void *arg)
{
    struct counts_res *r = arg;
    assert_int_equal(status, BD_OK);
    r->c = *counts;
    r->calls++;
    it_wake();
}

static void claims_each_job_once_when_two_processes_claim_many(void **state)
{
    uv_loop_t loop;
    struct claimer pc = { 0 };
    int enq = 0, ready[2], go[2];
    char paths[2][128];
    pid_t kids[2];
    (void)state;

    snprintf(rq_prefix, sizeof(rq_prefix), "bdtiny:%ld:", (long)getpid());
    assert_int_equal(uv_loop_init(&loop), 0);
    it_loop = &loop;
    struct bd_rq *rq = rq_open(&loop, "parent", &pc);
    assert_non_null(rq);
    /* Three priorities, so a claim crosses from one queue to the next. */
    for (int i = 0; i < CLAIM_JOBS; i++) {
        char id[32];
        snprintf(id, sizeof(id), "job%03d", i);
        assert_int_equal(bd_rq_enqueue(rq, id, (enum bd_priority)(i % 3), i, "m", 1,
                                       on_enqueued, &enq), BD_OK);
    }
    run_until(&loop, &enq, CLAIM_JOBS);
    rq_close(&loop, rq);
    assert_int_equal(uv_loop_close(&loop), 0);

    assert_int_equal(pipe(ready), 0);
    assert_int_equal(pipe(go), 0);
    for (int k = 0; k < 2; k++) {
        snprintf(paths[k], sizeof(paths[k]), "/tmp/it_tiny_%ld_%d.txt", (long)getpid(), k);
        kids[k] = fork();
        assert_true(kids[k] >= 0);
        if (kids[k] == 0) {
            close(ready[0]);
            close(go[1]);
            claim_child(k == 0 ? "w1" : "w2", ready[1], go[0], paths[k]);
        }
    }
    close(ready[1]);
    close(go[0]);
    char b[2];
    assert_int_equal(read(ready[0], b, 1), 1);
    assert_int_equal(read(ready[0], b + 1, 1), 1);
    close(go[1]);                                      /* go: both are connected */
    close(ready[0]);
    for (int k = 0; k < 2; k++) {
        int st = 0;
        assert_int_equal(waitpid(kids[k], &st, 0), kids[k]);
        assert_true(WIFEXITED(st));
        assert_int_equal(WEXITSTATUS(st), 0);
    }

    /* Every job exactly once over both processes, in fewer round trips than jobs. */
    int seen[CLAIM_JOBS] = { 0 };
    int total = 0, calls = 0;
    for (int k = 0; k < 2; k++) {
        FILE *f = fopen(paths[k], "r");
        char line[64];
        assert_non_null(f);
        while (fgets(line, sizeof(line), f)) {
            int n;
            if (sscanf(line, "calls %d", &n) == 1) {
                calls += n;
                continue;
            }
            assert_int_equal(sscanf(line, "job%d", &n), 1);
            assert_true(n >= 0 && n < CLAIM_JOBS);
            seen[n]++;
            total++;
        }
        fclose(f);
        unlink(paths[k]);
    }
    assert_int_equal(total, CLAIM_JOBS);
    for (int i = 0; i < CLAIM_JOBS; i++)
        assert_int_equal(seen[i], 1);
    /* At most CLAIM_MAX a call: ceil(300 / 7) = 43 full calls, plus one empty per process. */
    assert_true(calls <= CLAIM_JOBS / CLAIM_MAX + 1 + 2 + 2);
    assert_true(calls >= CLAIM_JOBS / CLAIM_MAX + 2);

    /* Each claimed job is in flight with its own lease; nothing is left queued. */
    struct counts_res cr = { 0 };
    memset(&pc, 0, sizeof(pc));
    assert_int_equal(uv_loop_init(&loop), 0);
    it_loop = &loop;
    rq = rq_open(&loop, "parent", &pc);
    assert_int_equal(bd_rq_get_counts(rq, on_counts, &cr), BD_OK);
    run_until(&loop, &cr.calls, 1);
    assert_int_equal(cr.c.inflight, CLAIM_JOBS);
    assert_int_equal(cr.c.pending[0] + cr.c.pending[1] + cr.c.pending[2], 0);
    assert_int_equal(cr.c.queued_items, 0);
    rq_close(&loop, rq);
    assert_int_equal(uv_loop_close(&loop), 0);
    assert_int_equal(bd_it_sh("redis-cli -u '%s' --scan --pattern '%s*' | xargs -r redis-cli "
                              "-u '%s' DEL >/dev/null",
                              bd_it_env("BATCH_REDIS_URL", "redis://127.0.0.1:16380/0"),
                              rq_prefix,
                              bd_it_env("BATCH_REDIS_URL", "redis://127.0.0.1:16380/0")), 0);
}

static void refuses_a_claim_of_zero_or_too_many(void **state)
{
    uv_loop_t loop;
    struct claimer pc = { 0 };
    (void)state;

    snprintf(rq_prefix, sizeof(rq_prefix), "bdtiny:%ld:z:", (long)getpid());
    assert_int_equal(uv_loop_init(&loop), 0);
    it_loop = &loop;
    struct bd_rq *rq = rq_open(&loop, "w", &pc);
    assert_int_equal(bd_rq_claim_many(rq, 0, on_claimed_many, &pc), BD_EINVAL);
    assert_int_equal(bd_rq_claim_many(rq, BD_RQ_CLAIM_MAX + 1, on_claimed_many, &pc),
                     BD_EINVAL);
    assert_int_equal(bd_rq_claim_many(rq, 1, NULL, &pc), BD_EINVAL);
    assert_int_equal(pc.calls, 0);
    rq_close(&loop, rq);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* ---- suite ------------------------------------------------------------------------------ */

static int suite_setup(void **state)
{
    (void)state;
    return bd_it_psql_exec("SET client_min_messages = warning;\n"
                           "DROP SCHEMA IF EXISTS %1$s CASCADE; CREATE SCHEMA %1$s;", it_schema);
}

static int suite_teardown(void **state)
{
    (void)state;
    return bd_it_psql_exec("SET client_min_messages = warning;\n"
                           "DROP SCHEMA IF EXISTS %s CASCADE;", it_schema);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(prepares_once_and_recovers_from_failed_runs),
        cmocka_unit_test(writes_a_small_batch_exactly_once_when_sent_twice),
        cmocka_unit_test(writes_nothing_when_the_batch_is_not_pending),
        cmocka_unit_test(counts_a_batch_once_when_two_writes_race),
        cmocka_unit_test(replaces_old_item_errors_on_a_rerun),
        cmocka_unit_test(refuses_a_buffer_that_is_not_staged_rows),
        cmocka_unit_test(starts_a_job_with_its_first_pending_batch),
        cmocka_unit_test(starts_a_group_with_one_statement_and_a_row_each),
        cmocka_unit_test(answers_queued_group_calls_when_the_pool_closes),
        cmocka_unit_test(claims_each_job_once_when_two_processes_claim_many),
        cmocka_unit_test(refuses_a_claim_of_zero_or_too_many),
    };
    const char *base = getenv("BATCH_POSTGRES_URL");
    const char *level = getenv("BD_TEST_LOG");
    enum bd_log_level lv = BD_LOG_WARN;

    if (base == NULL || base[0] == '\0') {
        fprintf(stderr, "it_tiny: BATCH_POSTGRES_URL is not set (start scripts/stack.sh); "
                        "skipping\n");
        return 0;
    }
    if (level != NULL)
        bd_log_level_parse(level, &lv);
    bd_log_set_level(lv);
    snprintf(it_schema, sizeof(it_schema), "it_tiny_%ld", (long)getpid());
    bd_it_pg_schema_url(it_url, sizeof(it_url), base, it_schema);
    bd_it_apply_filter();
    alarm(300);
    return cmocka_run_group_tests(tests, suite_setup, suite_teardown);
}
