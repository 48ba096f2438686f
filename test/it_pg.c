/* it_pg.c -- integration suite for the pg store (pg_store.h) against the real PostgreSQL
 * of the test stack ($BATCH_POSTGRES_URL): queries, errors and their classes, COPY (text,
 * binary, large), pipelines, the pool (timeouts, FIFO, rollback on release, reconnect,
 * close) and schema migrations.
 *
 * Every case runs its own uv loop, counts its callbacks, checks that none ran before the
 * call that started it returned, and asserts uv_loop_close() == 0 at the end. Everything
 * lives in scratch schemas it_pg_<pid>[_m1|_m2] (search_path set through the URL), dropped
 * when the suite ends, so the shared test database is left as it was.
 * SPDX-License-Identifier: MIT
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <endian.h>
#include <arpa/inet.h>
#include <errno.h>
#include <dirent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "batchd/buf.h"
#include "batchd/error.h"
#include "batchd/log.h"
#include "batchd/pg_store.h"
#include "bd_it.h"

static const char *it_base_url;     /* BATCH_POSTGRES_URL */
static char it_schema[64];          /* it_pg_<pid> */
static char it_schema_m1[80];
static char it_schema_m2[80];

/* ---------------------------------------------------------------------------------------
 * helpers
 */

/* The loop the current case runs. Callbacks call it_wake(): libuv 1.44 runs timers before
 * it blocks for I/O within one UV_RUN_ONCE turn, so a callback fired by a timer would
 * otherwise leave uv_run waiting for an event that never comes; uv_stop makes that turn's
 * poll non-blocking. */
static uv_loop_t *it_loop;

static void it_wake(void)
{
    if (it_loop != NULL)
        uv_stop(it_loop);
}

/* Run until nothing is left on the loop (a stop requested by it_wake ends one uv_run). */
static void run_dry(uv_loop_t *loop)
{
    while (uv_run(loop, UV_RUN_DEFAULT) != 0)
        ;
}

static int it_loop_init(uv_loop_t *loop)
{
    it_loop = loop;
    return uv_loop_init(loop);
}

static void run_until(uv_loop_t *loop, const int *flag)
{
    it_loop = loop;
    while (*flag == 0)
        uv_run(loop, UV_RUN_ONCE);
}

static struct bd_pg *pool_open_url(uv_loop_t *loop, const char *url, unsigned size,
                                   double acquire_timeout_s, double statement_timeout_s,
                                   bool wait_up)
{
    struct bd_pg_options opt = { url, size, acquire_timeout_s, statement_timeout_s, false, false };
    struct bd_pg *pg = NULL;

    assert_int_equal(bd_pg_new(loop, &opt, &pg), BD_OK);
    assert_non_null(pg);
    while (wait_up && bd_pg_get_connected(pg) < size)
        uv_run(loop, UV_RUN_ONCE);
    return pg;
}

static struct bd_pg *pool_open(uv_loop_t *loop, unsigned size, double acquire_timeout_s,
                               double statement_timeout_s)
{
    char url[1024];

    bd_it_pg_schema_url(url, sizeof(url), it_base_url, it_schema);
    return pool_open_url(loop, url, size, acquire_timeout_s, statement_timeout_s, true);
}

static void on_closed(int status, void *arg)
{
    int *n = arg;

    assert_int_equal(status, BD_OK);
    (*n)++;
    it_wake();
}

/* Close the pool, run the loop dry, and check nothing is left on it. */
static void pool_close_and_finish(uv_loop_t *loop, struct bd_pg *pg)
{
    int closed = 0;

    bd_pg_close(pg, on_closed, &closed);
    assert_int_equal(closed, 0);                 /* never synchronously */
    run_dry(loop);
    assert_int_equal(closed, 1);
    assert_int_equal(uv_loop_close(loop), 0);
}

struct acq {
    int called;
    int status;
    int order;                       /* position among several waiters */
    int *counter;
    struct bd_pg_conn *conn;
};

static void on_acq(int status, struct bd_pg_conn *conn, void *arg)
{
    struct acq *a = arg;

    it_wake();
    a->called++;
    a->status = status;
    a->conn = conn;
    if (a->counter != NULL)
        a->order = ++*a->counter;
    if (status == BD_OK)
        assert_non_null(conn);
    else
        assert_null(conn);
}

static struct bd_pg_conn *acquire(uv_loop_t *loop, struct bd_pg *pg)
{
    struct acq a = { 0 };

    assert_int_equal(bd_pg_acquire(pg, on_acq, &a), BD_OK);
    assert_int_equal(a.called, 0);
    run_until(loop, &a.called);
    assert_int_equal(a.called, 1);
    assert_int_equal(a.status, BD_OK);
    return a.conn;
}

struct qr {
    int called;
    int status;
    bool has_res;
    int cls;                         /* bd_pg_classify_error when status is BD_EPG, else -1 */
    ExecStatusType est;
    char sqlstate[8];
    char cmd_tuples[32];
    int ntuples;
    int nfields;
    char val[8][256];                /* row 0, fields 0..7, text */
    bool isnull[8];
    int len0;
    unsigned char bin0[16];          /* row 0 field 0 raw bytes (binary results) */
};

static void on_q(int status, PGresult *res, void *arg)
{
    struct qr *q = arg;

    it_wake();
    q->called++;
    q->status = status;
    q->has_res = res != NULL;
    q->cls = status == BD_EPG ? (int)bd_pg_classify_error(res) : -1;
    if (res == NULL)
        return;
    q->est = PQresultStatus(res);
    if (PQresultErrorField(res, PG_DIAG_SQLSTATE) != NULL)
        snprintf(q->sqlstate, sizeof(q->sqlstate), "%s", PQresultErrorField(res, PG_DIAG_SQLSTATE));
    snprintf(q->cmd_tuples, sizeof(q->cmd_tuples), "%s", PQcmdTuples(res));
    q->ntuples = PQntuples(res);
    q->nfields = PQnfields(res);
    if (q->ntuples > 0) {
        for (int i = 0; i < q->nfields && i < 8; i++) {
            q->isnull[i] = PQgetisnull(res, 0, i);
            snprintf(q->val[i], sizeof(q->val[i]), "%s", PQgetvalue(res, 0, i));
        }
        q->len0 = PQgetlength(res, 0, 0);
        if (q->len0 > 0 && q->len0 <= (int)sizeof(q->bin0))
            memcpy(q->bin0, PQgetvalue(res, 0, 0), (size_t)q->len0);
    }
}

static struct qr query_params(uv_loop_t *loop, struct bd_pg_conn *conn, const char *sql,
                              int nparams, const char *const *values, const int *lengths,
                              const int *formats, int result_binary)
{
    struct qr q;

    memset(&q, 0, sizeof(q));
    assert_int_equal(bd_pg_conn_query(conn, sql, nparams, values, lengths, formats,
                                      result_binary, on_q, &q), BD_OK);
    assert_int_equal(q.called, 0);
    run_until(loop, &q.called);
    assert_int_equal(q.called, 1);
    return q;
}

static struct qr query(uv_loop_t *loop, struct bd_pg_conn *conn, const char *sql)
{
    return query_params(loop, conn, sql, 0, NULL, NULL, NULL, 0);
}

/* Run sql and expect success; returns the first value of the first row. */
static struct qr query_ok(uv_loop_t *loop, struct bd_pg_conn *conn, const char *sql)
{
    struct qr q = query(loop, conn, sql);

    if (q.status != BD_OK)
        fail_msg("query failed: %s: status=%d sqlstate=%s err=%s", sql, q.status, q.sqlstate,
                 bd_pg_conn_get_error(conn));
    return q;
}

static struct qr pool_query(uv_loop_t *loop, struct bd_pg *pg, const char *sql, int nparams,
                            const char *const *values)
{
    struct qr q;

    memset(&q, 0, sizeof(q));
    assert_int_equal(bd_pg_query(pg, sql, nparams, values, NULL, NULL, 0, on_q, &q), BD_OK);
    assert_int_equal(q.called, 0);
    run_until(loop, &q.called);
    assert_int_equal(q.called, 1);
    return q;
}

static struct qr copy_in(uv_loop_t *loop, struct bd_pg_conn *conn, const char *sql,
                         const char *data, size_t len)
{
    struct qr q;

    memset(&q, 0, sizeof(q));
    assert_int_equal(bd_pg_conn_copy_in(conn, sql, data, len, on_q, &q), BD_OK);
    assert_int_equal(q.called, 0);
    run_until(loop, &q.called);
    assert_int_equal(q.called, 1);
    return q;
}

/* ---------------------------------------------------------------------------------------
 * cases
 */

static void connects_and_runs_a_simple_query(void **state)
{
    uv_loop_t loop;
    struct bd_pg *pg;
    struct bd_pg_conn *conn;
    struct qr q;

    (void)state;
    assert_int_equal(it_loop_init(&loop), 0);
    pg = pool_open(&loop, 2, 5.0, 5.0);
    assert_true(bd_pg_is_up(pg));
    assert_int_equal(bd_pg_get_connected(pg), 2);
    assert_int_equal(bd_pg_get_pool_size(pg), 2);
    assert_int_equal(bd_pg_get_waiting(pg), 0);

    conn = acquire(&loop, pg);
    assert_true(bd_pg_conn_get_backend_pid(conn) > 0);
    q = query_ok(&loop, conn, "SELECT 1");
    assert_int_equal(q.est, PGRES_TUPLES_OK);
    assert_string_equal(q.val[0], "1");
    q = query_ok(&loop, conn, "SHOW application_name");
    assert_string_equal(q.val[0], "batchd");
    q = query_ok(&loop, conn, "SHOW statement_timeout");
    assert_string_equal(q.val[0], "5s");
    bd_pg_release(conn);

    /* the acquire/query/release shorthand */
    {
        const char *v[1] = { "41" };

        q = pool_query(&loop, pg, "SELECT $1::int + 1", 1, v);
        assert_int_equal(q.status, BD_OK);
        assert_string_equal(q.val[0], "42");
    }
    pool_close_and_finish(&loop, pg);
}

/* The pool's TCP connections to PostgreSQL (this process's sockets whose peer port is the
 * server's), each checked for the options a half-open link needs: keepalives and a user
 * timeout; with the URL's own keepalives_idle kept. Returns how many were found. */
static int check_pg_sockets(int pg_port, int want_idle)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    int found = 0;

    assert_non_null(d);
    while ((e = readdir(d)) != NULL) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        int fd = atoi(e->d_name), on = 0, idle = 0, count = 0;
        unsigned user_ms = 0;
        socklen_t il = sizeof(int), ul = sizeof(user_ms);

        if (fd <= 2 || getpeername(fd, (struct sockaddr *)&ss, &len) < 0 ||
            ss.ss_family != AF_INET || ntohs(((struct sockaddr_in *)&ss)->sin_port) != pg_port)
            continue;
        assert_int_equal(getsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, &il), 0);
        assert_int_equal(getsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, &il), 0);
        assert_int_equal(getsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, &il), 0);
        assert_int_equal(getsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_ms, &ul), 0);
        assert_int_equal(on, 1);
        assert_int_equal(idle, want_idle);
        assert_int_equal(count, 3);
        assert_int_equal(user_ms, 60000);
        found++;
    }
    closedir(d);
    return found;
}

/* Every connection has TCP keepalives and a user timeout (a PostgreSQL host that vanished
 * without a FIN breaks the connection in about a minute, not after TCP's two hours); a URL
 * that sets its own keepalives_idle keeps it. (Before: the OS defaults, no keepalive.) */
static void sets_tcp_keepalives_and_user_timeout(void **state)
{
    uv_loop_t loop;
    struct bd_pg *pg;
    char url[1200], base[1024];
    const char *port_s;

    (void)state;
    bd_it_pg_schema_url(base, sizeof(base), it_base_url, it_schema);
    port_s = strrchr(strstr(it_base_url, "@") ? strstr(it_base_url, "@") : it_base_url, ':');
    assert_non_null(port_s);
    int port = atoi(port_s + 1);
    assert_int_equal(it_loop_init(&loop), 0);
    pg = pool_open(&loop, 2, 5.0, 5.0);
    assert_int_equal(check_pg_sockets(port, 30), 2);
    pool_close_and_finish(&loop, pg);

    snprintf(url, sizeof(url), "%s%ckeepalives_idle=7", base, strchr(base, '?') ? '&' : '?');
    assert_int_equal(it_loop_init(&loop), 0);
    pg = pool_open_url(&loop, url, 1, 5.0, 5.0, true);
    assert_int_equal(check_pg_sockets(port, 7), 1);
    pool_close_and_finish(&loop, pg);
}

static void passes_text_binary_and_null_params(void **state)
{
    uv_loop_t loop;
    struct bd_pg *pg;
    struct bd_pg_conn *conn;
    struct qr q;
    uint32_t seven = htobe32(7);
    const char *values[3] = { "h\xc3\xa9llo 'quoted'", (const char *)&seven, NULL };
    int lengths[3] = { 0, 4, 0 };
    int formats[3] = { 0, 1, 0 };

    (void)state;
    assert_int_equal(it_loop_init(&loop), 0);
    pg = pool_open(&loop, 1, 5.0, 0);
    conn = acquire(&loop, pg);

    q = query_params(&loop, conn, "SELECT $1::text, $2::int4 * 6, $3::text IS NULL, $3::text",
                     3, values, lengths, formats, 0);
    assert_int_equal(q.status, BD_OK);
    assert_int_equal(q.nfields, 4);
    assert_string_equal(q.val[0], "h\xc3\xa9llo 'quoted'");
    assert_string_equal(q.val[1], "42");
    assert_string_equal(q.val[2], "t");
    assert_true(q.isnull[3]);

    /* binary results */
    {
        const char *v[1] = { "258" };
        uint32_t got;

        q = query_params(&loop, conn, "SELECT $1::int4", 1, v, NULL, NULL, 1);
        assert_int_equal(q.status, BD_OK);
        assert_int_equal(q.len0, 4);
        memcpy(&got, q.bin0, 4);
        assert_int_equal(be32toh(got), 258);
    }
    /* the shorthand copies binary parameters too */
    bd_pg_release(conn);
    {
        struct qr q2;

        memset(&q2, 0, sizeof(q2));
        assert_int_equal(bd_pg_query(pg, "SELECT $1::int4 + 1, $2::text IS NULL", 2,
                                     (const char *const[]){ (const char *)&seven, NULL },
                                     (const int[]){ 4, 0 }, (const int[]){ 1, 0 }, 0, on_q,
                                     &q2), BD_OK);
        run_until(&loop, &q2.called);
        assert_int_equal(q2.status, BD_OK);
        assert_string_equal(q2.val[0], "8");
        assert_string_equal(q2.val[1], "t");
    }
    pool_close_and_finish(&loop, pg);
}

static void delivers_sql_errors_with_their_sqlstate(void **state)
{
    uv_loop_t loop;
    struct bd_pg *pg;
    struct bd_pg_conn *conn;
    struct qr q;

    (void)state;
    assert_int_equal(it_loop_init(&loop), 0);
    pg = pool_open(&loop, 1, 5.0, 0);
    conn = acquire(&loop, pg);

    q = query(&loop, conn, "SELECT 1/0");
    assert_int_equal(q.status, BD_EPG);
    assert_true(q.has_res);
    assert_int_equal(q.est, PGRES_FATAL_ERROR);
    assert_string_equal(q.sqlstate, "22012");

    q = query_ok(&loop, conn, "CREATE TEMP TABLE uq (k int PRIMARY KEY)");
    q = query_ok(&loop, conn, "INSERT INTO uq VALUES (1)");
    assert_string_equal(q.cmd_tuples, "1");
    q = query(&loop, conn, "INSERT INTO uq VALUES (1)");
    assert_int_equal(q.status, BD_EPG);
    assert_string_equal(q.sqlstate, "23505");

    q = query(&loop, conn, "SELEC nonsense");
    assert_int_equal(q.status, BD_EPG);
    assert_string_equal(q.sqlstate, "42601");

    /* the connection is still good */
    q = query_ok(&loop, conn, "SELECT 2");
    assert_string_equal(q.val[0], "2");
    bd_pg_release(conn);
    pool_close_and_finish(&loop, pg);
}

/* Errors as the server sends them: each SQLSTATE raised for real (RAISE ... USING ERRCODE
 * gives a genuine error result with that code), plus a real statement_timeout and a real
 * invalid UTF-8 conversion, the error of a poison bulk_insert batch. */
static void classifies_server_errors_by_their_sqlstate(void **state)
{
    static const struct {
        const char *condition;
        const char *sqlstate;
        enum bd_pg_error_class cls;
    } raised[] = {
        { "serialization_failure", "40001", BD_PG_ERR_TRANSIENT },
        { "deadlock_detected", "40P01", BD_PG_ERR_TRANSIENT },
        { "lock_not_available", "55P03", BD_PG_ERR_TRANSIENT },
        { "disk_full", "53100", BD_PG_ERR_TRANSIENT },
        { "too_many_connections", "53300", BD_PG_ERR_TRANSIENT },
        { "admin_shutdown", "57P01", BD_PG_ERR_TRANSIENT },
        { "connection_failure", "08006", BD_PG_ERR_TRANSIENT },
        { "character_not_in_repertoire", "22021", BD_PG_ERR_PERMANENT },
        { "not_null_violation", "23502", BD_PG_ERR_PERMANENT },
        { "undefined_table", "42P01", BD_PG_ERR_PERMANENT },
        { "configuration_limit_exceeded", "53400", BD_PG_ERR_PERMANENT },
    };
    uv_loop_t loop;
    struct bd_pg *pg;
    struct bd_pg_conn *conn;
    struct qr q;
    char sql[256];

    (void)state;
    assert_int_equal(it_loop_init(&loop), 0);
    pg = pool_open(&loop, 1, 5.0, 0);
    conn = acquire(&loop, pg);

    for (size_t i = 0; i < sizeof(raised) / sizeof(raised[0]); i++) {
        snprintf(sql, sizeof(sql), "DO $$BEGIN RAISE EXCEPTION 'raised' USING ERRCODE = '%s';"
                 " END$$", raised[i].condition);
        q = query(&loop, conn, sql);
        assert_int_equal(q.status, BD_EPG);
        assert_true(q.has_res);
        assert_string_equal(q.sqlstate, raised[i].sqlstate);
        if (q.cls != (int)raised[i].cls)
            fail_msg("%s (%s) classified %d, want %d", raised[i].condition, q.sqlstate, q.cls,
                     (int)raised[i].cls);
    }

    q = query(&loop, conn, "SELECT convert_from('\\xff'::bytea, 'UTF8')");
    assert_int_equal(q.status, BD_EPG);
    assert_string_equal(q.sqlstate, "22021");
    assert_int_equal(q.cls, BD_PG_ERR_PERMANENT);
    q = query(&loop, conn, "SELECT 1/0");
    assert_string_equal(q.sqlstate, "22012");
    assert_int_equal(q.cls, BD_PG_ERR_PERMANENT);

    /* The poison batch as the engine writes it: an id that is not UTF-8, by binary COPY. */
    {
        struct bd_buf b;

        q = query_ok(&loop, conn, "CREATE TEMP TABLE poison (id text)");
        bd_buf_init(&b);
        bd_pg_copy_begin(&b);
        bd_pg_copy_row(&b, 1);
        bd_pg_copy_text(&b, "bad\xff", 4);
        assert_int_equal(bd_pg_copy_end(&b), BD_OK);
        q = copy_in(&loop, conn, "COPY poison (id) FROM STDIN WITH (FORMAT binary)", b.data,
                    b.len);
        bd_buf_free(&b);
        assert_int_equal(q.status, BD_EPG);
        assert_string_equal(q.sqlstate, "22021");
        assert_int_equal(q.cls, BD_PG_ERR_PERMANENT);
    }

    q = query_ok(&loop, conn, "SET statement_timeout = '50ms'");
    q = query(&loop, conn, "SELECT pg_sleep(10)");
    assert_int_equal(q.status, BD_EPG);
    assert_string_equal(q.sqlstate, "57014");
    assert_int_equal(q.cls, BD_PG_ERR_TRANSIENT);
    q = query_ok(&loop, conn, "RESET statement_timeout");

    q = query_ok(&loop, conn, "SELECT 2");                /* the connection is still good */
    assert_int_equal(q.cls, -1);
    bd_pg_release(conn);
    pool_close_and_finish(&loop, pg);
}

static void runs_multi_statement_strings(void **state)
{
    uv_loop_t loop;
    struct bd_pg *pg;
    struct bd_pg_conn *conn;
    struct qr q;

    (void)state;
    assert_int_equal(it_loop_init(&loop), 0);
    pg = pool_open(&loop, 1, 5.0, 0);
    conn = acquire(&loop, pg);

    q = query_ok(&loop, conn, "CREATE TEMP TABLE m (a int); INSERT INTO m VALUES (1), (2), (3);"
                              " SELECT sum(a) FROM m");
    assert_int_equal(q.est, PGRES_TUPLES_OK);
    assert_string_equal(q.val[0], "6");

    q = query(&loop, conn, "SELECT 1; SELECT 1/0; SELECT 3");
    assert_int_equal(q.status, BD_EPG);
    assert_string_equal(q.sqlstate, "22012");

    q = query_ok(&loop, conn, "SELECT count(*) FROM m");
    assert_string_equal(q.val[0], "3");
    bd_pg_release(conn);
    pool_close_and_finish(&loop, pg);
}

static void on_migrated(int status, void *arg)
{
    int *n = arg;

    assert_int_equal(status, BD_OK);
    (*n)++;
    it_wake();
}

static void check_schema(uv_loop_t *loop, struct bd_pg *pg)
{
    struct bd_pg_conn *conn = acquire(loop, pg);
    struct qr q;

    /* Versions 1..N each exactly once (N grows with the schema; 3 is packed_batches). */
    q = query_ok(loop, conn, "SELECT count(*), min(version), max(version) FROM schema_migrations");
    assert_string_equal(q.val[0], q.val[2]);
    assert_string_equal(q.val[1], "1");
    assert_true(atoi(q.val[2]) >= 3);
    q = query_ok(loop, conn,
                 "SELECT count(*) FROM information_schema.tables WHERE table_schema ="
                 " current_schema() AND table_name IN ('jobs', 'job_batches',"
                 " 'job_item_errors', 'collections', 'vectors')");
    assert_string_equal(q.val[0], "5");
    q = query_ok(loop, conn,
                 "SELECT string_agg(attstorage::text, '' ORDER BY attrelid::regclass::text)"
                 " FROM pg_attribute WHERE (attrelid = 'vectors'::regclass AND attname ="
                 " 'embedding') OR (attrelid = 'job_batches'::regclass AND attname = 'items')");
    assert_string_equal(q.val[0], "ee");
    /* Version 5: no statistics of vectors, rows kept in their heap page. */
    q = query_ok(loop, conn,
                 "SELECT attstattarget FROM pg_attribute WHERE attrelid = 'vectors'::regclass"
                 " AND attname = 'embedding'");
    assert_string_equal(q.val[0], "0");
    q = query_ok(loop, conn,
                 "SELECT array_to_string(reloptions, ',') FROM pg_class"
                 " WHERE oid = 'embedding_cache'::regclass");
    assert_string_equal(q.val[0], "toast_tuple_target=8160");
    bd_pg_release(conn);
}

static void migrates_once_when_run_twice(void **state)
{
    uv_loop_t loop;
    struct bd_pg *pg;
    char url[1024];
    int done = 0;

    (void)state;
    assert_int_equal(it_loop_init(&loop), 0);
    bd_it_pg_schema_url(url, sizeof(url), it_base_url, it_schema_m1);
    pg = pool_open_url(&loop, url, 1, 10.0, 0, false);    /* migrate waits for the conn */

    assert_int_equal(bd_pg_migrate(pg, on_migrated, &done), BD_OK);
    assert_int_equal(done, 0);
    run_until(&loop, &done);
    check_schema(&loop, pg);

    done = 0;
    assert_int_equal(bd_pg_migrate(pg, on_migrated, &done), BD_OK);
    run_until(&loop, &done);
    assert_int_equal(done, 1);
    check_schema(&loop, pg);
    pool_close_and_finish(&loop, pg);
}

static void migrates_once_when_two_pools_race(void **state)
{
    uv_loop_t loop;
    struct bd_pg *a, *b;
    char url[1024];
    int done = 0;

    (void)state;
    assert_int_equal(it_loop_init(&loop), 0);
    bd_it_pg_schema_url(url, sizeof(url), it_base_url, it_schema_m2);
    a = pool_open_url(&loop, url, 1, 10.0, 0, true);
    b = pool_open_url(&loop, url, 1, 10.0, 0, true);
    assert_int_equal(bd_pg_migrate(a, on_migrated, &done), BD_OK);
    assert_int_equal(bd_pg_migrate(b, on_migrated, &done), BD_OK);
    while (done < 2)
        uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(done, 2);
    check_schema(&loop, a);
    check_schema(&loop, b);
    {
        int closed = 0;

        bd_pg_close(b, on_closed, &closed);
        pool_close_and_finish(&loop, a);
        assert_int_equal(closed, 1);
    }
}

static void copies_50000_text_rows(void **state)
{
    uv_loop_t loop;
    struct bd_pg *pg;
    struct bd_pg_conn *conn;
    struct qr q;
    size_t cap = 50000 * 32, len = 0;
    char *data = malloc(cap);

    (void)state;
    assert_non_null(data);
    for (int i = 0; i < 50000; i++)
        len += (size_t)snprintf(data + len, cap - len, "%d\trow-%d\\t\n", i, i);
    assert_int_equal(it_loop_init(&loop), 0);
    pg = pool_open(&loop, 1, 5.0, 0);
    conn = acquire(&loop, pg);
    query_ok(&loop, conn, "DROP TABLE IF EXISTS copy_text; CREATE TABLE copy_text (a int, b text)");

    q = copy_in(&loop, conn, "COPY copy_text (a, b) FROM STDIN", data, len);
    assert_int_equal(q.status, BD_OK);
    assert_int_equal(q.est, PGRES_COMMAND_OK);
    assert_string_equal(q.cmd_tuples, "50000");
    q = query_ok(&loop, conn,
                 "SELECT count(*), sum(a), max(b) FILTER (WHERE a = 7) FROM copy_text");
    assert_string_equal(q.val[0], "50000");
    assert_string_equal(q.val[1], "1249975000");
    assert_string_equal(q.val[2], "row-7\t");

    /* bad data: the COPY fails with the server's error and the connection stays usable */
    q = copy_in(&loop, conn, "COPY copy_text (a, b) FROM STDIN", "1\tok\nx\tbad\n", 12);
    assert_int_equal(q.status, BD_EPG);
    assert_string_equal(q.sqlstate, "22P02");
    q = query_ok(&loop, conn, "SELECT count(*) FROM copy_text");
    assert_string_equal(q.val[0], "50000");

    /* an empty payload copies nothing */
    q = copy_in(&loop, conn, "COPY copy_text (a, b) FROM STDIN", NULL, 0);
    assert_int_equal(q.status, BD_OK);
    assert_string_equal(q.cmd_tuples, "0");

    query_ok(&loop, conn, "DROP TABLE copy_text");
    bd_pg_release(conn);
    pool_close_and_finish(&loop, pg);
    free(data);
}

static void copies_binary_rows_with_real_arrays(void **state)
{
    uv_loop_t loop;
    struct bd_pg *pg;
    struct bd_pg_conn *conn;
    struct bd_buf b;
    struct qr q;
    const unsigned nrows = 1000;

    (void)state;
    bd_buf_init(&b);
    assert_int_equal(bd_pg_copy_begin(&b), BD_OK);
    for (unsigned i = 0; i < nrows; i++) {
        char id[32], meta[64];
        float emb[3] = { 0.5f * (float)i, -2.25f, 1.0f / 1024.0f };
        int n = snprintf(id, sizeof(id), "r%u", i);
        int m = snprintf(meta, sizeof(meta), "{\"k\": \"v%u\", \"i\": %u}", i, i);

        bd_pg_copy_row(&b, 8);
        bd_pg_copy_text(&b, id, (size_t)n);
        bd_pg_copy_int4(&b, (int32_t)i - 500);
        bd_pg_copy_int8(&b, (int64_t)i * 10000000000LL);
        bd_pg_copy_float8(&b, (double)i + 0.125);
        bd_pg_copy_bool(&b, i % 2 == 0);
        if (i == 3)
            bd_pg_copy_float4_array(&b, emb, 0);
        else
            bd_pg_copy_float4_array(&b, emb, 3);
        bd_pg_copy_jsonb(&b, meta, (size_t)m);
        if (i % 10 == 0)
            bd_pg_copy_null(&b);
        else
            bd_pg_copy_text(&b, "n\xc3\xb6te", 5);
    }
    assert_int_equal(bd_pg_copy_end(&b), BD_OK);
    assert_false(b.is_failed);

    assert_int_equal(it_loop_init(&loop), 0);
    pg = pool_open(&loop, 1, 5.0, 0);
    conn = acquire(&loop, pg);
    query_ok(&loop, conn, "DROP TABLE IF EXISTS copy_bin; CREATE TABLE copy_bin (id text, n int,"
                          " big bigint, f double precision, ok boolean, emb real[], meta jsonb,"
                          " note text)");
    q = copy_in(&loop, conn, "COPY copy_bin (id, n, big, f, ok, emb, meta, note) FROM STDIN"
                             " WITH (FORMAT binary)", b.data, b.len);
    if (q.status != BD_OK)
        fail_msg("binary COPY failed: sqlstate=%s err=%s", q.sqlstate, bd_pg_conn_get_error(conn));
    assert_string_equal(q.cmd_tuples, "1000");

    q = query_ok(&loop, conn, "SELECT count(*), count(note), sum(n) FROM copy_bin");
    assert_string_equal(q.val[0], "1000");
    assert_string_equal(q.val[1], "900");
    assert_string_equal(q.val[2], "-500");
    q = query_ok(&loop, conn, "SELECT n, big, f, ok, emb::text, meta->>'k', meta->>'i', note"
                              " FROM copy_bin WHERE id = 'r7'");
    assert_int_equal(q.ntuples, 1);
    assert_string_equal(q.val[0], "-493");
    assert_string_equal(q.val[1], "70000000000");
    assert_string_equal(q.val[2], "7.125");
    assert_string_equal(q.val[3], "f");
    assert_string_equal(q.val[4], "{3.5,-2.25,0.0009765625}");
    assert_string_equal(q.val[5], "v7");
    assert_string_equal(q.val[6], "7");
    assert_string_equal(q.val[7], "n\xc3\xb6te");
    q = query_ok(&loop, conn, "SELECT emb::text, array_ndims(emb) IS NULL, note IS NULL"
                              " FROM copy_bin WHERE id = 'r3'");
    assert_string_equal(q.val[0], "{}");
    assert_string_equal(q.val[1], "t");
    q = query_ok(&loop, conn, "SELECT note IS NULL, array_lower(emb, 1), array_length(emb, 1)"
                              " FROM copy_bin WHERE id = 'r10'");
    assert_string_equal(q.val[0], "t");
    assert_string_equal(q.val[1], "1");
    assert_string_equal(q.val[2], "3");

    /* reuse: reset keeps the memory */
    {
        char *before = b.data;
        float one = 1.0f;

        bd_buf_reset(&b);
        assert_int_equal(b.len, 0);
        bd_pg_copy_begin(&b);
        bd_pg_copy_row(&b, 8);
        bd_pg_copy_text(&b, "again", 5);
        for (int i = 0; i < 4; i++)
            bd_pg_copy_null(&b);
        bd_pg_copy_float4_array(&b, &one, 1);
        bd_pg_copy_jsonb(&b, "[]", 2);
        bd_pg_copy_null(&b);
        assert_int_equal(bd_pg_copy_end(&b), BD_OK);
        assert_ptr_equal(b.data, before);
        q = copy_in(&loop, conn, "COPY copy_bin FROM STDIN WITH (FORMAT binary)", b.data, b.len);
        assert_int_equal(q.status, BD_OK);
        assert_string_equal(q.cmd_tuples, "1");
    }
    query_ok(&loop, conn, "DROP TABLE copy_bin");
    bd_pg_release(conn);
    pool_close_and_finish(&loop, pg);
    bd_buf_free(&b);
}

struct ticker {
    uv_timer_t timer;
    int ticks;
    const int *stop;
};

static void on_tick(uv_timer_t *t)
{
    struct ticker *tk = t->data;

    if (*tk->stop == 0)
        tk->ticks++;
}

static void copies_20_mb_without_blocking_the_loop(void **state)
{
    uv_loop_t loop;
    struct bd_pg *pg;
    struct bd_pg_conn *conn;
    struct qr q;
    struct ticker tk;
    const size_t rows = 100000;
    size_t cap = rows * 220, len = 0;
    char *data = malloc(cap);
    char pad[201];

    (void)state;
    assert_non_null(data);
    memset(pad, 'x', 200);
    pad[200] = '\0';
    for (size_t i = 0; i < rows; i++)
        len += (size_t)snprintf(data + len, cap - len, "%zu\t%s\n", i, pad);
    assert_true(len > 20u * 1000 * 1000);

    assert_int_equal(it_loop_init(&loop), 0);
    pg = pool_open(&loop, 1, 5.0, 0);
    conn = acquire(&loop, pg);
    query_ok(&loop, conn, "DROP TABLE IF EXISTS copy_big; CREATE TABLE copy_big (a int, b text)");

    memset(&q, 0, sizeof(q));
    memset(&tk, 0, sizeof(tk));
    tk.stop = &q.called;
    tk.timer.data = &tk;
    assert_int_equal(uv_timer_init(&loop, &tk.timer), 0);
    assert_int_equal(uv_timer_start(&tk.timer, on_tick, 1, 1), 0);
    assert_int_equal(bd_pg_conn_copy_in(conn, "COPY copy_big FROM STDIN", data, len, on_q, &q),
                     BD_OK);
    assert_int_equal(q.called, 0);
    run_until(&loop, &q.called);
    uv_close((uv_handle_t *)&tk.timer, NULL);
    assert_int_equal(q.status, BD_OK);
    assert_string_equal(q.cmd_tuples, "100000");
    /* The loop kept turning while the payload went out piece by piece. */
    assert_true(tk.ticks >= 3);
    print_message("[   INFO   ] 20 MB COPY: %d timer ticks while it ran\n", tk.ticks);

    q = query_ok(&loop, conn, "SELECT count(*), sum(length(b)) FROM copy_big");
    assert_string_equal(q.val[0], "100000");
    assert_string_equal(q.val[1], "20000000");
    query_ok(&loop, conn, "DROP TABLE copy_big");
    bd_pg_release(conn);
    pool_close_and_finish(&loop, pg);
    free(data);
}

static struct qr pipeline(uv_loop_t *loop, struct bd_pg_conn *conn, unsigned count,
                          const char *const *sqls, const int *nparams,
                          const char *const *const *params)
{
    struct qr q;

    memset(&q, 0, sizeof(q));
    assert_int_equal(bd_pg_conn_pipeline(conn, count, sqls, nparams, params, on_q, &q), BD_OK);
    assert_int_equal(q.called, 0);
    run_until(loop, &q.called);
    assert_int_equal(q.called, 1);
    return q;
}

static void runs_pipelines_and_reports_the_first_error(void **state)
{
    uv_loop_t loop;
    struct bd_pg *pg;
    struct bd_pg_conn *conn;
    struct qr q;

    (void)state;
    assert_int_equal(it_loop_init(&loop), 0);
    pg = pool_open(&loop, 1, 5.0, 0);
    conn = acquire(&loop, pg);
    query_ok(&loop, conn, "DROP TABLE IF EXISTS pipe; CREATE TABLE pipe (a int)");

    {
        const char *sqls[3] = { "INSERT INTO pipe VALUES ($1)", "INSERT INTO pipe VALUES ($1)",
                                "SELECT count(*), sum(a) FROM pipe" };
        const int np[3] = { 1, 1, 0 };
        const char *p0[1] = { "10" }, *p1[1] = { "32" };
        const char *const *params[3] = { p0, p1, NULL };

        q = pipeline(&loop, conn, 3, sqls, np, params);
        assert_int_equal(q.status, BD_OK);
        assert_int_equal(q.est, PGRES_TUPLES_OK);
        assert_string_equal(q.val[0], "2");
        assert_string_equal(q.val[1], "42");
    }
    {
        const char *sqls[3] = { "INSERT INTO pipe VALUES ($1)", "SELECT 1/0",
                                "INSERT INTO pipe VALUES ($1)" };
        const int np[3] = { 1, 0, 1 };
        const char *p0[1] = { "100" }, *p2[1] = { "200" };
        const char *const *params[3] = { p0, NULL, p2 };

        q = pipeline(&loop, conn, 3, sqls, np, params);
        assert_int_equal(q.status, BD_EPG);
        assert_true(q.has_res);
        assert_string_equal(q.sqlstate, "22012");
    }
    /* out of pipeline mode, and the implicit transaction took the first insert back */
    q = query_ok(&loop, conn, "SELECT count(*), sum(a) FROM pipe");
    assert_string_equal(q.val[0], "2");
    assert_string_equal(q.val[1], "42");
    {
        const char *sqls[1] = { "SELECT 'solo'" };

        q = pipeline(&loop, conn, 1, sqls, NULL, NULL);
        assert_int_equal(q.status, BD_OK);
        assert_string_equal(q.val[0], "solo");
    }
    query_ok(&loop, conn, "DROP TABLE pipe");
    bd_pg_release(conn);
    pool_close_and_finish(&loop, pg);
}

/* ---- a PostgreSQL that stops answering ------------------------------------------------ */

/* A server that speaks just enough of the protocol to let libpq connect and the pool set
 * its connection up (the first simple query), then reads everything and answers nothing:
 * what a SIGSTOPped PostgreSQL or a half-open link looks like from the client. */
struct silent_pg {
    int lfd, port, cfd;
    pthread_t thread;
};

static bool sp_read(int fd, void *buf, size_t n)
{
    for (size_t got = 0; got < n;) {
        ssize_t r = read(fd, (char *)buf + got, n - got);
        if (r <= 0)
            return false;
        got += (size_t)r;
    }
    return true;
}

static uint32_t sp_be32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);                           /* p need not be aligned */
    return ntohl(v);
}

static void sp_put(struct bd_buf *b, char type, const void *body, uint32_t len)
{
    uint32_t be = htonl(len + 4);
    bd_buf_append(b, &type, 1);
    bd_buf_append(b, &be, 4);
    bd_buf_append(b, body, len);
}

static void sp_param(struct bd_buf *b, const char *k, const char *v)
{
    char kv[128];
    size_t n = (size_t)snprintf(kv, sizeof(kv), "%s%c%s", k, 0, v) + 1;
    sp_put(b, 'S', kv, (uint32_t)n);
}

static void *sp_main(void *arg)
{
    struct silent_pg *sp = arg;
    unsigned char hdr[8], msg[65536];
    int fd = accept(sp->lfd, NULL, NULL);

    sp->cfd = fd;
    for (;;) {                                  /* SSL/GSS requests, then the startup */
        if (fd < 0 || !sp_read(fd, hdr, 8))
            return NULL;
        uint32_t len = sp_be32(hdr), code = sp_be32(hdr + 4);
        if (len < 8 || len - 8 > sizeof(msg) || !sp_read(fd, msg, len - 8))
            return NULL;
        if (code == 80877103 || code == 80877104) {
            if (write(fd, "N", 1) != 1)
                return NULL;
            continue;
        }
        break;
    }
    struct bd_buf b;
    bd_buf_init(&b);
    uint32_t zero = 0, key[2] = { htonl(4242), htonl(1) };
    sp_put(&b, 'R', &zero, 4);                  /* AuthenticationOk */
    sp_param(&b, "server_version", "15.0");
    sp_param(&b, "client_encoding", "UTF8");
    sp_param(&b, "standard_conforming_strings", "on");
    sp_param(&b, "integer_datetimes", "on");
    sp_put(&b, 'K', key, 8);
    sp_put(&b, 'Z', "I", 1);
    bool ok = write(fd, b.data, b.len) == (ssize_t)b.len;
    /* The pool's setup: one simple query, answered. */
    if (ok && sp_read(fd, hdr, 5) && hdr[0] == 'Q') {
        uint32_t len = sp_be32(hdr + 1);
        ok = len >= 4 && len - 4 <= sizeof(msg) && sp_read(fd, msg, len - 4);
        bd_buf_reset(&b);
        sp_put(&b, 'C', "SET", 4);
        sp_put(&b, 'Z', "I", 1);
        ok = ok && write(fd, b.data, b.len) == (ssize_t)b.len;
    }
    bd_buf_free(&b);
    while (ok && read(fd, msg, sizeof(msg)) > 0)
        ;                                        /* and then: silence */
    return NULL;
}

static void silent_pg_start(struct silent_pg *sp)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t alen = sizeof(a);

    memset(sp, 0, sizeof(*sp));
    sp->cfd = -1;
    sp->lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(sp->lfd >= 0);
    assert_int_equal(bind(sp->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(sp->lfd, 4), 0);
    assert_int_equal(getsockname(sp->lfd, (struct sockaddr *)&a, &alen), 0);
    sp->port = ntohs(a.sin_port);
    assert_int_equal(pthread_create(&sp->thread, NULL, sp_main, sp), 0);
}

static void silent_pg_stop(struct silent_pg *sp)
{
    shutdown(sp->lfd, SHUT_RDWR);
    if (sp->cfd >= 0)
        shutdown(sp->cfd, SHUT_RDWR);
    pthread_join(sp->thread, NULL);
    close(sp->lfd);
    if (sp->cfd >= 0)
        close(sp->cfd);
}

/* Bug: with PostgreSQL stopped (SIGSTOP) or a half-open link, a statement waited until TCP
 * gave up (hours): requests, job writes and shutdown hung. Now an operation with no answer
 * within the statement timeout plus a grace fails with BD_EPG and the connection is
 * dropped (and reconnected). Statement timeout 1 s here: the deadline is 2.1 s. */
static void fails_a_statement_postgres_never_answers(void **state)
{
    uv_loop_t loop;
    struct silent_pg sp;
    char url[160];

    (void)state;
    silent_pg_start(&sp);
    snprintf(url, sizeof(url), "host=127.0.0.1 port=%d user=it dbname=it sslmode=disable "
             "gssencmode=disable", sp.port);
    assert_int_equal(it_loop_init(&loop), 0);
    struct bd_pg *pg = pool_open_url(&loop, url, 1, 5.0, 1.0, true);
    double t0 = bd_it_now();
    struct qr q = pool_query(&loop, pg, "SELECT 1", 0, NULL);
    double took = bd_it_now() - t0;
    print_message("    failed after %.2f s: status %d\n", took, q.status);
    assert_int_equal(q.status, BD_EPG);
    assert_true(took > 1.9 && took < 5.0);
    silent_pg_stop(&sp);
    pool_close_and_finish(&loop, pg);
}

static void times_out_acquire_and_serves_waiters_fifo(void **state)
{
    uv_loop_t loop;
    struct bd_pg *pg;
    struct bd_pg_conn *held;
    struct acq a = { 0 };
    uint64_t t0;

    (void)state;
    assert_int_equal(it_loop_init(&loop), 0);
    pg = pool_open(&loop, 1, 0.2, 0);
    held = acquire(&loop, pg);

    uv_update_time(&loop);
    t0 = uv_now(&loop);
    assert_int_equal(bd_pg_acquire(pg, on_acq, &a), BD_OK);
    assert_int_equal(bd_pg_get_waiting(pg), 1);
    run_until(&loop, &a.called);
    assert_int_equal(a.status, BD_EPG);
    assert_null(a.conn);
    assert_true(uv_now(&loop) - t0 >= 190);
    assert_int_equal(bd_pg_get_waiting(pg), 0);
    bd_pg_release(held);
    pool_close_and_finish(&loop, pg);

    /* FIFO: three waiters behind a held connection get it in the order they asked */
    assert_int_equal(it_loop_init(&loop), 0);
    pg = pool_open(&loop, 1, 10.0, 0);
    held = acquire(&loop, pg);
    {
        struct acq w[3];
        int counter = 0, got = 0;

        memset(w, 0, sizeof(w));
        for (int i = 0; i < 3; i++) {
            w[i].counter = &counter;
            assert_int_equal(bd_pg_acquire(pg, on_acq, &w[i]), BD_OK);
        }
        assert_int_equal(bd_pg_get_waiting(pg), 3);
        bd_pg_release(held);
        while (got < 3) {
            uv_run(&loop, UV_RUN_ONCE);
            for (int i = 0; i < 3; i++) {
                if (w[i].called == 1 && w[i].conn != NULL) {
                    assert_int_equal(w[i].status, BD_OK);
                    bd_pg_release(w[i].conn);
                    w[i].conn = NULL;
                    got++;
                }
            }
        }
        for (int i = 0; i < 3; i++) {
            assert_int_equal(w[i].called, 1);
            assert_int_equal(w[i].order, i + 1);
        }
    }
    pool_close_and_finish(&loop, pg);
}

static void rolls_back_a_transaction_left_open_on_release(void **state)
{
    uv_loop_t loop;
    struct bd_pg *pg;
    struct bd_pg_conn *conn;
    struct qr q;

    (void)state;
    assert_int_equal(it_loop_init(&loop), 0);
    pg = pool_open(&loop, 1, 5.0, 0);
    conn = acquire(&loop, pg);
    query_ok(&loop, conn, "DROP TABLE IF EXISTS rb; CREATE TABLE rb (a int)");
    query_ok(&loop, conn, "BEGIN; INSERT INTO rb VALUES (1)");
    bd_pg_release(conn);                         /* INTRANS */

    conn = acquire(&loop, pg);
    q = query_ok(&loop, conn, "SELECT count(*) FROM rb");
    assert_string_equal(q.val[0], "0");
    query_ok(&loop, conn, "BEGIN; INSERT INTO rb VALUES (2)");
    q = query(&loop, conn, "SELECT 1/0");
    assert_int_equal(q.status, BD_EPG);
    bd_pg_release(conn);                         /* INERROR */

    conn = acquire(&loop, pg);
    q = query_ok(&loop, conn, "SELECT count(*) FROM rb");   /* 25P02 if not rolled back */
    assert_string_equal(q.val[0], "0");
    query_ok(&loop, conn, "DROP TABLE rb");
    bd_pg_release(conn);
    pool_close_and_finish(&loop, pg);
}

static void reconnects_after_the_backend_is_terminated(void **state)
{
    uv_loop_t loop;
    struct bd_pg *pg, *killer;
    struct bd_pg_conn *conn;
    struct qr q, kq;
    char pid[16], pid2[256];
    int closed = 0;

    (void)state;
    assert_int_equal(it_loop_init(&loop), 0);
    pg = pool_open(&loop, 1, 10.0, 0);
    killer = pool_open(&loop, 1, 10.0, 0);

    /* terminated while a statement runs: that statement fails with BD_EPG and no result */
    conn = acquire(&loop, pg);
    snprintf(pid, sizeof(pid), "%d", bd_pg_conn_get_backend_pid(conn));
    memset(&q, 0, sizeof(q));
    assert_int_equal(bd_pg_conn_query(conn, "SELECT pg_sleep(30)", 0, NULL, NULL, NULL, 0, on_q,
                                      &q), BD_OK);
    {
        const char *v[1] = { pid };

        kq = pool_query(&loop, killer, "SELECT pg_terminate_backend($1::int)", 1, v);
        assert_int_equal(kq.status, BD_OK);
        assert_string_equal(kq.val[0], "t");
    }
    run_until(&loop, &q.called);
    assert_int_equal(q.called, 1);
    assert_int_equal(q.status, BD_EPG);
    assert_false(q.has_res);
    assert_int_equal(q.cls, BD_PG_ERR_TRANSIENT);     /* a lost connection is worth a retry */
    assert_true(strlen(bd_pg_conn_get_error(conn)) > 0);
    /* a broken leased connection refuses new work without calling back */
    assert_int_equal(bd_pg_conn_query(conn, "SELECT 1", 0, NULL, NULL, NULL, 0, on_q, &q), BD_EPG);
    assert_int_equal(bd_pg_get_connected(pg), 0);
    bd_pg_release(conn);

    q = pool_query(&loop, pg, "SELECT pg_backend_pid()", 0, NULL);
    assert_int_equal(q.status, BD_OK);
    assert_string_not_equal(q.val[0], pid);
    snprintf(pid2, sizeof(pid2), "%s", q.val[0]);
    assert_true(bd_pg_is_up(pg));

    /* terminated while idle in the pool: noticed, reconnected, next query fine */
    {
        const char *v[1] = { pid2 };

        kq = pool_query(&loop, killer, "SELECT pg_terminate_backend($1::int)", 1, v);
        assert_int_equal(kq.status, BD_OK);
    }
    while (bd_pg_get_connected(pg) == 1)
        uv_run(&loop, UV_RUN_ONCE);
    q = pool_query(&loop, pg, "SELECT pg_backend_pid()", 0, NULL);
    assert_int_equal(q.status, BD_OK);
    assert_string_not_equal(q.val[0], pid2);

    bd_pg_close(killer, on_closed, &closed);
    pool_close_and_finish(&loop, pg);
    assert_int_equal(closed, 1);
}

static void on_acq_cancelled(int status, struct bd_pg_conn *conn, void *arg)
{
    on_acq(status, conn, arg);
    assert_int_equal(status, BD_ECANCELED);
}

struct held_op {
    struct qr q;
    struct bd_pg_conn *conn;
};

static void on_held_op(int status, PGresult *res, void *arg)
{
    struct held_op *h = arg;

    on_q(status, res, &h->q);
    assert_int_equal(status, BD_ECANCELED);
    /* calls on a closing pool fail at once */
    assert_int_equal(bd_pg_conn_query(h->conn, "SELECT 1", 0, NULL, NULL, NULL, 0, on_q, &h->q),
                     BD_ECANCELED);
    bd_pg_release(h->conn);
}

static void cancels_pending_work_on_close(void **state)
{
    uv_loop_t loop;
    struct bd_pg *pg;
    struct held_op h;
    struct acq waiters[2];
    int closed = 0;

    (void)state;
    assert_int_equal(it_loop_init(&loop), 0);
    pg = pool_open(&loop, 1, 30.0, 0);
    memset(&h, 0, sizeof(h));
    memset(waiters, 0, sizeof(waiters));
    h.conn = acquire(&loop, pg);
    assert_int_equal(bd_pg_conn_query(h.conn, "SELECT pg_sleep(30)", 0, NULL, NULL, NULL, 0,
                                      on_held_op, &h), BD_OK);
    for (int i = 0; i < 2; i++)
        assert_int_equal(bd_pg_acquire(pg, on_acq_cancelled, &waiters[i]), BD_OK);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(waiters[0].called + waiters[1].called + h.q.called, 0);

    bd_pg_close(pg, on_closed, &closed);
    assert_int_equal(waiters[0].called, 1);
    assert_int_equal(waiters[1].called, 1);
    assert_int_equal(h.q.called, 1);
    assert_int_equal(closed, 0);
    run_dry(&loop);
    assert_int_equal(closed, 1);
    assert_int_equal(uv_loop_close(&loop), 0);

    /* a lease still held at close keeps the pool until it is released */
    assert_int_equal(it_loop_init(&loop), 0);
    pg = pool_open(&loop, 1, 30.0, 0);
    {
        struct bd_pg_conn *conn = acquire(&loop, pg);

        closed = 0;
        bd_pg_close(pg, on_closed, &closed);
        assert_int_equal(bd_pg_acquire(pg, on_acq, &waiters[0]), BD_ECANCELED);
        run_dry(&loop);
        assert_int_equal(closed, 0);
        bd_pg_release(conn);
        assert_int_equal(closed, 1);
        assert_int_equal(uv_loop_close(&loop), 0);
    }
}

static void keeps_retrying_an_unreachable_server(void **state)
{
    uv_loop_t loop;
    struct bd_pg *pg;
    struct acq a = { 0 };
    struct qr q;

    (void)state;
    assert_int_equal(it_loop_init(&loop), 0);
    pg = pool_open_url(&loop, "postgresql://batchd@127.0.0.1:1/none?connect_timeout=1", 2, 0.4,
                       0, false);
    assert_int_equal(bd_pg_acquire(pg, on_acq, &a), BD_OK);
    run_until(&loop, &a.called);
    assert_int_equal(a.status, BD_EPG);
    assert_false(bd_pg_is_up(pg));
    memset(&q, 0, sizeof(q));
    assert_int_equal(bd_pg_query(pg, "SELECT 1", 0, NULL, NULL, NULL, 0, on_q, &q), BD_OK);
    run_until(&loop, &q.called);
    assert_int_equal(q.status, BD_EPG);
    pool_close_and_finish(&loop, pg);

    /* a bad conninfo is refused up front */
    {
        struct bd_pg_options opt = { "host='unterminated", 1, 1.0, 0, false, false };
        struct bd_pg *none = NULL;

        assert_int_equal(bd_pg_new(&loop, &opt, &none), BD_EINVAL);
        assert_null(none);
        opt.conninfo = "postgresql://x@127.0.0.1/db";
        opt.pool_size = 0;
        assert_int_equal(bd_pg_new(&loop, &opt, &none), BD_EINVAL);
    }
}

/* "localhost" goes through uv_getaddrinfo and libpq's host list; with ::1 first and the
 * server on 127.0.0.1 only, libpq also switches sockets mid-connect. */
static void connects_through_a_host_name(void **state)
{
    uv_loop_t loop;
    struct bd_pg *pg;
    struct qr q;
    char base[1024], url[1200];
    const char *ip = strstr(it_base_url, "127.0.0.1");

    (void)state;
    if (ip == NULL) {
        print_message("[   INFO   ] URL has no 127.0.0.1; host name case skipped\n");
        return;
    }
    snprintf(base, sizeof(base), "%.*slocalhost%s", (int)(ip - it_base_url), it_base_url,
             ip + strlen("127.0.0.1"));
    bd_it_pg_schema_url(url, sizeof(url), base, it_schema);
    assert_int_equal(it_loop_init(&loop), 0);
    pg = pool_open_url(&loop, url, 2, 5.0, 0, true);
    q = pool_query(&loop, pg, "SELECT current_schema()", 0, NULL);
    assert_int_equal(q.status, BD_OK);
    assert_string_equal(q.val[0], it_schema);
    pool_close_and_finish(&loop, pg);
}

/* A host list whose first entry refuses: libpq closes that socket and opens the next one
 * inside PQconnectPoll, usually under the same fd number, which must be re-registered. */
static void connects_to_the_second_host_of_a_list(void **state)
{
    uv_loop_t loop;
    struct bd_pg *pg;
    struct qr q;
    char base[1024], url[1200];
    const char *scheme = strstr(it_base_url, "://");
    const char *at, *hostpart;

    (void)state;
    if (scheme == NULL) {
        print_message("[   INFO   ] URL is not a URI; host list case skipped\n");
        return;
    }
    at = strchr(scheme + 3, '@');
    hostpart = at != NULL && (strchr(scheme + 3, '/') == NULL || at < strchr(scheme + 3, '/'))
               ? at + 1 : scheme + 3;
    snprintf(base, sizeof(base), "%.*s127.0.0.1:1,%s", (int)(hostpart - it_base_url),
             it_base_url, hostpart);
    bd_it_pg_schema_url(url, sizeof(url), base, it_schema);
    assert_int_equal(it_loop_init(&loop), 0);
    pg = pool_open_url(&loop, url, 2, 5.0, 0, true);
    q = pool_query(&loop, pg, "SELECT current_schema()", 0, NULL);
    assert_int_equal(q.status, BD_OK);
    assert_string_equal(q.val[0], it_schema);
    pool_close_and_finish(&loop, pg);
}

/* ---------------------------------------------------------------------------------------
 * suite
 */

/* Setup and teardown SQL goes through psql (test/support), not through the pool under test:
 * the scratch schemas must be made and dropped even when bd_pg is what is broken. */

/* Drop the scratch schemas of earlier runs whose process is gone (a run killed by a timeout
 * never reaches its teardown). Specific to this suite: whether a run is gone is known only
 * here, from kill(pid, 0) on the pid in the schema's name, so the names are read, filtered
 * and then dropped. 0, or -1 when psql failed. */
static int drop_stale_schemas(void)
{
    char *names = bd_it_psql_url(NULL, NULL, "SELECT nspname FROM pg_namespace"
                                             " WHERE nspname ~ '^it_pg_[0-9]+$'");
    struct bd_buf sql;
    int rc = 0;

    if (names == NULL)
        return -1;
    bd_buf_init(&sql);
    for (char *name = strtok(names, "\n"); name != NULL; name = strtok(NULL, "\n")) {
        long pid = strtol(name + strlen("it_pg_"), NULL, 10);

        if (pid <= 0 || kill((pid_t)pid, 0) == 0 || errno != ESRCH)
            continue;
        bd_buf_printf(&sql, "DROP SCHEMA IF EXISTS %1$s CASCADE; DROP SCHEMA IF EXISTS %1$s_m1"
                            " CASCADE; DROP SCHEMA IF EXISTS %1$s_m2 CASCADE;\n", name);
    }
    if (sql.is_failed)
        rc = -1;
    else if (sql.len > 0)
        rc = bd_it_psql_exec("SET client_min_messages = warning;\n%s", sql.data);
    bd_buf_free(&sql);
    free(names);
    return rc;
}

static int suite_setup(void **state)
{
    (void)state;
    if (drop_stale_schemas() != 0)
        return -1;
    return bd_it_psql_exec("SET client_min_messages = warning;\n"
                           "DROP SCHEMA IF EXISTS %1$s CASCADE; DROP SCHEMA IF EXISTS %2$s CASCADE;"
                           " DROP SCHEMA IF EXISTS %3$s CASCADE; CREATE SCHEMA %1$s;"
                           " CREATE SCHEMA %2$s; CREATE SCHEMA %3$s;",
                           it_schema, it_schema_m1, it_schema_m2);
}

static int suite_teardown(void **state)
{
    (void)state;
    return bd_it_psql_exec("SET client_min_messages = warning;\n"
                           "DROP SCHEMA IF EXISTS %s CASCADE; DROP SCHEMA IF EXISTS %s CASCADE;"
                           " DROP SCHEMA IF EXISTS %s CASCADE;",
                           it_schema, it_schema_m1, it_schema_m2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(connects_and_runs_a_simple_query),
        cmocka_unit_test(sets_tcp_keepalives_and_user_timeout),
        cmocka_unit_test(passes_text_binary_and_null_params),
        cmocka_unit_test(delivers_sql_errors_with_their_sqlstate),
        cmocka_unit_test(classifies_server_errors_by_their_sqlstate),
        cmocka_unit_test(runs_multi_statement_strings),
        cmocka_unit_test(migrates_once_when_run_twice),
        cmocka_unit_test(migrates_once_when_two_pools_race),
        cmocka_unit_test(copies_50000_text_rows),
        cmocka_unit_test(copies_binary_rows_with_real_arrays),
        cmocka_unit_test(copies_20_mb_without_blocking_the_loop),
        cmocka_unit_test(runs_pipelines_and_reports_the_first_error),
        cmocka_unit_test(times_out_acquire_and_serves_waiters_fifo),
        cmocka_unit_test(fails_a_statement_postgres_never_answers),
        cmocka_unit_test(rolls_back_a_transaction_left_open_on_release),
        cmocka_unit_test(reconnects_after_the_backend_is_terminated),
        cmocka_unit_test(cancels_pending_work_on_close),
        cmocka_unit_test(keeps_retrying_an_unreachable_server),
        cmocka_unit_test(connects_through_a_host_name),
        cmocka_unit_test(connects_to_the_second_host_of_a_list),
    };
    const char *level = getenv("BD_TEST_LOG");
    enum bd_log_level lv = BD_LOG_WARN;

    it_base_url = getenv("BATCH_POSTGRES_URL");
    if (it_base_url == NULL || it_base_url[0] == '\0') {
        fprintf(stderr, "it_pg: BATCH_POSTGRES_URL is not set (start scripts/stack.sh); "
                        "skipping\n");
        return 0;
    }
    if (level != NULL)
        bd_log_level_parse(level, &lv);
    bd_log_set_level(lv);
    snprintf(it_schema, sizeof(it_schema), "it_pg_%ld", (long)getpid());
    snprintf(it_schema_m1, sizeof(it_schema_m1), "%s_m1", it_schema);
    snprintf(it_schema_m2, sizeof(it_schema_m2), "%s_m2", it_schema);
    alarm(300);                       /* a hung case fails the suite instead of blocking CI */
    return cmocka_run_group_tests(tests, suite_setup, suite_teardown);
}
