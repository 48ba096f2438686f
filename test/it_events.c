/* it_events.c -- integration tests for Server-Sent Events under load (api_events.c): many
 * streams of one job share one PostgreSQL poll, a reader that does not read costs bounded
 * memory and still gets the final event, and every stream of a job ends with it when the job
 * completes, is cancelled, or batchd stops. Against the real batchd binary and the test stack.
 *
 * Isolation: a PostgreSQL schema of its own ("itev_<pid>", through search_path; batchd
 * migrates it at start) and a Redis database of its own (BD_IT_EVENTS_REDIS_DB, default 21).
 * Jobs inserted with psql are marked in flight in Redis for a day first, so no engine claims
 * them. The PostgreSQL reads are counted by the server itself (pg_stat_user_indexes of the
 * schema's jobs table), not by batchd.  SPDX-License-Identifier: MIT
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "bd_it.h"

#define POLL_S        0.2             /* jobs.progress_update_interval of g_proc */
#define SHARED_N      50              /* streams on one job */
#define FAST_N        3               /* readers that keep up, beside the slow one */
#define SLOW_RCVBUF   4096
#define PENDING_MAX   (64 * 1024)     /* api_events.c: progress waits while this is unsent */

static struct bd_it_proc g_proc;
static bool g_started;
static struct bd_it_scratch g_scr;    /* schema itev_<pid>, own Redis db */
static char g_pfx[64];                /* job id prefix: itev_<pid>_ */

/* ---- helpers ------------------------------------------------------------------------ */

static int it_sql(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Run SQL in our schema; :'pfx' is the job id prefix. 0, or -1 when psql failed. */
static int it_sql(const char *fmt, ...)
{
    char vars[128], *sql = NULL;
    va_list ap;

    va_start(ap, fmt);
    int n = vasprintf(&sql, fmt, ap);
    va_end(ap);
    if (n < 0)
        return -1;
    snprintf(vars, sizeof(vars), "-v pfx=%s", g_pfx);
    char *out = bd_it_psql_url(g_scr.pg_url, vars, "%s", sql);
    int rc = out ? 0 : -1;
    free(sql);
    free(out);
    return rc;
}

static long long it_now_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (long long)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

/* A job <pfx><name> in state, 10 items in 5 batches, 2 done, that no engine claims. */
static void it_job(const char *name, const char *state, int seq)
{
    char id[128];

    snprintf(id, sizeof(id), "%s%s", g_pfx, name);
    assert_int_equal(bd_it_sh("redis-cli -u '%s' ZADD bd:inflight %lld '%s' >/dev/null",
                              g_scr.redis_url, it_now_ms() + 86400000LL, id),
                     0);
    assert_int_equal(
        it_sql("INSERT INTO collections (name, dimension) VALUES ('itev_c', 3)"
               " ON CONFLICT DO NOTHING;"
               "INSERT INTO jobs (id, seq, operation, model, collection, status, priority,"
               " batch_size, total_items, total_batches, next_batch, processed_items,"
               " started_at) VALUES (:'pfx' || '%s', %d, 'bulk_embed', 'mixtral', 'itev_c',"
               " '%s', 1, 2, 10, 5, 1, 2, CASE WHEN '%s' = 'queued' THEN NULL ELSE now() END);",
               name, seq, state, state),
        0);
}

/* Lookups of a job by id in our jobs table so far (scans of its primary key), as PostgreSQL
 * counts them: the status read of an event stream is one; the engine's periodic statements
 * on jobs (throughput, reaper, sweep) use other paths. Each backend reports its counts
 * within about a second. */
static long it_job_reads(void)
{
    long n = bd_it_psql_long("SELECT coalesce(idx_scan, 0) FROM pg_stat_user_indexes"
                             " WHERE schemaname = '%s' AND indexrelname = 'jobs_pkey'",
                             g_scr.schema);
    assert_true(n >= 0);
    return n;
}

static void it_events_path(char *out, size_t outlen, const char *job_id)
{
    snprintf(out, outlen, "/api/v1/batch/jobs/%s/events", job_id);
}

/* Open n streams on job_id and wait for each one's first event. */
static void it_open_streams(struct bd_it_raw *c, int n, int port, const char *job_id)
{
    char path[256];

    it_events_path(path, sizeof(path), job_id);
    for (int i = 0; i < n; i++)
        bd_it_raw_open(&c[i], port, "GET", path, NULL, 0);
    for (int i = 0; i < n; i++)
        if (bd_it_raw_wait(&c[i], "event: progress\ndata: {", 0, 5) < 0)
            fail_msg("stream %d of %s: no first event within 5 s (%zu bytes)", i, job_id,
                     c[i].len);
}

/* Wait until every stream has the final event with "status":want and has ended. */
static void it_expect_final(struct bd_it_raw *c, int n, const char *want, double timeout_s)
{
    char status[64];
    double deadline = bd_it_now() + timeout_s;

    snprintf(status, sizeof(status), "\"status\":\"%s\"", want);
    for (int i = 0; i < n; i++) {
        long at = bd_it_raw_wait(&c[i], "event: final\ndata: {", 0,
                                 deadline - bd_it_now() > 0.1 ? deadline - bd_it_now() : 0.1);
        if (at < 0)
            fail_msg("stream %d: no final event within %.1f s (%zu bytes)", i, timeout_s,
                     c[i].len);
        if (strstr(c[i].buf + at, status) == NULL)
            fail_msg("stream %d: final event without %s: %.300s", i, status, c[i].buf + at);
        if (bd_it_raw_wait(&c[i], "0\r\n\r\n", (size_t)at, 2) < 0)
            fail_msg("stream %d: did not end after its final event", i);
        assert_int_equal(bd_it_count(c[i].buf, "event: final"), 1);
    }
}

/* A bulk_insert job of n items in batches of batch_size, run by g_proc; its id (caller
 * frees). */
static char *it_submit_insert(int n, int batch_size, const char *tag)
{
    char *body = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&body, &len);
    long status = 0;

    assert_non_null(f);
    fprintf(f, "{\"operation\":\"bulk_insert\",\"collection\":\"itev_%s\","
               "\"options\":{\"batch_size\":%d},\"data\":[", tag, batch_size);
    for (int i = 0; i < n; i++)
        fprintf(f, "%s{\"id\":\"%s_%d\",\"embedding\":[%d,0.5,0.25]}", i ? "," : "", tag, i, i);
    fprintf(f, "]}");
    fclose(f);
    char *id = bd_it_submit(&g_proc, body, &status);
    free(body);
    assert_non_null(id);
    return id;
}

/* Bytes of the connection from batchd's port to our local port that the kernel still
 * holds on batchd's side (unsent or unacknowledged: /proc/net/tcp tx_queue), or -1. */
static long it_server_txq(int server_port, int client_fd)
{
    struct sockaddr_in me;
    socklen_t melen = sizeof(me);
    char line[512];
    long found = -1;
    FILE *f;

    if (getsockname(client_fd, (struct sockaddr *)&me, &melen) != 0 ||
        (f = fopen("/proc/net/tcp", "r")) == NULL)
        return -1;
    while (fgets(line, sizeof(line), f) != NULL) {
        unsigned lport, rport, st;
        unsigned long txq, rxq;
        if (sscanf(line, " %*d: %*8X:%X %*8X:%X %X %lX:%lX", &lport, &rport, &st, &txq, &rxq)
                == 5 &&
            (int)lport == server_port && rport == ntohs(me.sin_port)) {
            found = (long)txq;
            break;
        }
    }
    fclose(f);
    return found;
}

/* Open a stream on path that reads nothing: a small receive buffer and a small segment size
 * (TCP_MAXSEG before connect: the MSS batchd may send), so the kernel holds little of what
 * batchd writes (on loopback its send buffer would otherwise grow to megabytes) and the
 * rest stays in batchd, where the test can tell it apart. */
static void it_open_slow(struct bd_it_raw *c, int port, const char *path)
{
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    int rcvbuf = SLOW_RCVBUF, mss = 536;
    char req[512];

    memset(c, 0, sizeof(*c));
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(c->fd >= 0);
    assert_int_equal(setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)), 0);
    assert_int_equal(setsockopt(c->fd, IPPROTO_TCP, TCP_MAXSEG, &mss, sizeof(mss)), 0);
    assert_int_equal(connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", path);
    assert_int_equal(send(c->fd, req, (size_t)n, 0), n);
}

/* ---- setup -------------------------------------------------------------------------- */

static int it_setup(void **state)
{

    (void)state;
    snprintf(g_pfx, sizeof(g_pfx), "itev_%d_", (int)getpid());
    if (bd_it_scratch_open(&g_scr, "itev", "BD_IT_EVENTS_REDIS_DB", "21") != 0)
        return -1;
    if (bd_it_start(&g_proc, "jobs:\n  max_concurrent_jobs: 2\n  progress_update_interval: 0.2\n",
                    NULL) != 0)
        return -1;
    g_started = true;
    return 0;
}

static int it_teardown(void **state)
{
    (void)state;
    if (g_started)
        bd_it_stop(&g_proc, SIGTERM, 20);
    bd_it_scratch_close(&g_scr);
    return 0;
}

/* ---- cases -------------------------------------------------------------------------- */

/* SHARED_N streams on a job that runs elsewhere: PostgreSQL sees about one read of the job
 * per poll interval, not one per stream; a change reaches every stream within a few polls,
 * and so does the end. */
static void streams_of_a_job_share_one_poll(void **state)
{
    static struct bd_it_raw c[SHARED_N];
    char id[128];
    const double window_s = 3.0;

    (void)state;
    it_job("shared", "processing", 100);
    snprintf(id, sizeof(id), "%sshared", g_pfx);
    it_open_streams(c, SHARED_N, g_proc.port, id);

    bd_it_sleep_ms(1500);                          /* the joins' reads reported */
    long s0 = it_job_reads();
    bd_it_sleep_ms((unsigned)(window_s * 1000));
    long reads = it_job_reads() - s0;
    double polls = window_s / POLL_S;              /* 15 polls of one shared reader */
    fprintf(stderr, "%d streams, %.1f s: %ld reads of the job (%.1f per poll interval)\n",
            SHARED_N, window_s, reads, (double)reads / polls);
    assert_true(reads >= (long)(polls / 3));       /* the counter does count our reads */
    assert_true(reads <= (long)(polls * 2.5));     /* per stream it would be SHARED_N * polls */

    /* Another process checkpoints (psql plays it): every stream gets the new progress. */
    assert_int_equal(it_sql("UPDATE jobs SET processed_items = 6, next_batch = 3"
                            " WHERE id = :'pfx' || 'shared';"), 0);
    double t0 = bd_it_now();
    for (int i = 0; i < SHARED_N; i++)
        if (bd_it_raw_wait(&c[i], "\"processed_items\":6", 0, 3) < 0)
            fail_msg("stream %d did not get the new progress", i);
    assert_true(bd_it_now() - t0 < 2.0);
    for (int i = 0; i < SHARED_N; i++)
        assert_int_equal(bd_it_count(c[i].buf, "event: progress"), 2);

    assert_int_equal(it_sql("UPDATE jobs SET status = 'completed', processed_items = 10,"
                            " next_batch = 5, completed_at = now()"
                            " WHERE id = :'pfx' || 'shared';"), 0);
    it_expect_final(c, SHARED_N, "completed", 5);
    for (int i = 0; i < SHARED_N; i++)
        bd_it_raw_close(&c[i]);
}

/* A reader that reads nothing (small receive buffer) on a job with many checkpoints, run
 * here, beside FAST_N readers that keep up. batchd holds at most about 64 KiB for the slow
 * one (it skips intermediate progress events), which gets the final event once it reads; the
 * fast ones see the job's progress grow to the final event, in time. */
static void slow_reader_skips_progress_but_gets_final(void **state)
{
    struct bd_it_raw fast[FAST_N], slow;
    char path[256];
    double t_completed = 0, t_final[FAST_N] = { 0 };
    const int items = 8000;

    (void)state;
    char *id = it_submit_insert(items, 4, "slow");
    it_events_path(path, sizeof(path), id);
    it_open_slow(&slow, g_proc.port, path);
    for (int i = 0; i < FAST_N; i++)
        bd_it_raw_open(&fast[i], g_proc.port, "GET", path, NULL, 0);

    /* Read the fast ones until each has the final event; watch the status meanwhile. */
    double deadline = bd_it_now() + 120, next_status = 0;
    int done = 0;
    while (done < FAST_N && bd_it_now() < deadline) {
        for (int i = 0; i < FAST_N; i++) {
            if (t_final[i] > 0)
                continue;
            while (bd_it_raw_read(&fast[i], 2, 0) == 0)
                ;
            if (fast[i].buf != NULL && strstr(fast[i].buf, "event: final") != NULL) {
                t_final[i] = bd_it_now();
                done++;
            }
        }
        if (t_completed == 0 && bd_it_now() >= next_status) {
            long status = 0;
            char sp[256];
            snprintf(sp, sizeof(sp), "/api/v1/batch/jobs/%s/status", id);
            json_t *j = bd_it_json(&g_proc, "GET", sp, NULL, &status);
            const char *s = bd_it_str(j, "status");
            if (s != NULL && strcmp(s, "completed") == 0)
                t_completed = bd_it_now();
            json_decref(j);
            next_status = bd_it_now() + 0.1;
        }
    }
    if (done < FAST_N)
        fail_msg("only %d of %d fast readers got the final event", done, FAST_N);

    /* The slow reader has read nothing yet: what batchd still holds for it is what it will
     * read less what the kernel holds (its receive queue and batchd's send queue). */
    bd_it_sleep_ms(300);
    int unread = 0;
    assert_int_equal(ioctl(slow.fd, FIONREAD, &unread), 0);
    long txq = it_server_txq(g_proc.port, slow.fd);
    assert_true(txq >= 0);
    deadline = bd_it_now() + 30;
    while (!slow.is_eof && bd_it_now() < deadline &&
           !(slow.len > 5 && memcmp(slow.buf + slow.len - 5, "0\r\n\r\n", 5) == 0))
        bd_it_raw_read(&slow, 200, 0);
    long held = (long)slow.len - unread - txq;
    size_t fast_progress = bd_it_count(fast[0].buf, "event: progress");
    size_t slow_progress = bd_it_count(slow.buf, "event: progress");
    fprintf(stderr, "fast: %zu bytes, %zu progress events; slow: %zu bytes, %zu progress "
            "events (kernel held %d + %ld, batchd %ld)\n", fast[0].len, fast_progress, slow.len,
            slow_progress, unread, txq, held);
    assert_true(bd_it_raw_wait(&slow, "event: final\ndata: {", 0, 1) >= 0);
    assert_non_null(strstr(strstr(slow.buf, "event: final"), "\"status\":\"completed\""));
    assert_true(memcmp(slow.buf + slow.len - 5, "0\r\n\r\n", 5) == 0);
    /* The job made more events than the kernel could hold, and batchd kept few of them. */
    assert_true(slow_progress < fast_progress);
    assert_true(held <= PENDING_MAX + 16 * 1024);

    /* The fast readers: progress only grows, the final event comes at the job's end. */
    for (int i = 0; i < FAST_N; i++) {
        long long last = -1;
        const char *p = fast[i].buf;
        while ((p = strstr(p, "\"processed_items\":")) != NULL) {
            long long v = atoll(p + strlen("\"processed_items\":"));
            assert_true(v >= last);
            last = v;
            p++;
        }
        assert_int_equal(last, items);
        assert_true(bd_it_count(fast[i].buf, "event: progress") >= 2);
        if (t_completed > 0)
            assert_true(t_final[i] - t_completed < 1.0);
        bd_it_raw_close(&fast[i]);
    }
    bd_it_raw_close(&slow);
    free(id);
}

/* A job run here, cancelled while 10 streams watch it: each gets the final "cancelled". */
static void every_stream_gets_final_when_a_running_job_is_cancelled(void **state)
{
    struct bd_it_raw c[10];
    char url[256];
    struct bd_it_resp r;

    (void)state;
    char *id = it_submit_insert(20000, 2, "cancel");
    it_open_streams(c, 10, g_proc.port, id);
    snprintf(url, sizeof(url), "%s/api/v1/batch/jobs/%s", g_proc.base, id);
    assert_int_equal(bd_it_http("DELETE", url, NULL, NULL, &r), 0);
    assert_true(r.status == 200 || r.status == 202);
    bd_it_resp_free(&r);
    it_expect_final(c, 10, "cancelled", 10);
    for (int i = 0; i < 10; i++)
        bd_it_raw_close(&c[i]);
    free(id);
}

/* A queued job that runs nowhere, cancelled while 10 streams watch it (the poll sees it). */
static void every_stream_gets_final_when_a_queued_job_is_cancelled(void **state)
{
    struct bd_it_raw c[10];
    char id[128], url[256];
    struct bd_it_resp r;

    (void)state;
    it_job("queued", "queued", 101);
    snprintf(id, sizeof(id), "%squeued", g_pfx);
    it_open_streams(c, 10, g_proc.port, id);
    snprintf(url, sizeof(url), "%s/api/v1/batch/jobs/%s", g_proc.base, id);
    assert_int_equal(bd_it_http("DELETE", url, NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    bd_it_resp_free(&r);
    it_expect_final(c, 10, "cancelled", 5);
    for (int i = 0; i < 10; i++)
        bd_it_raw_close(&c[i]);
}

/* SIGTERM while 20 streams watch each of two jobs that will not end: every stream ends and
 * batchd exits 0 well within its shutdown deadline (10 s). */
static void every_stream_ends_when_batchd_stops(void **state)
{
    struct bd_it_proc p;
    struct bd_it_raw c[40];
    char id[2][128];

    (void)state;
    assert_int_equal(bd_it_start(&p, "jobs:\n  progress_update_interval: 1\n", NULL), 0);
    it_job("stop1", "processing", 102);
    it_job("stop2", "queued", 103);
    snprintf(id[0], sizeof(id[0]), "%sstop1", g_pfx);
    snprintf(id[1], sizeof(id[1]), "%sstop2", g_pfx);
    it_open_streams(c, 20, p.port, id[0]);
    it_open_streams(c + 20, 20, p.port, id[1]);
    double t0 = bd_it_now();
    assert_int_equal(bd_it_stop(&p, SIGTERM, 10), 0);
    assert_true(bd_it_now() - t0 < 10.0);
    for (int i = 0; i < 40; i++) {
        bool is_ended = bd_it_raw_wait(&c[i], "0\r\n\r\n", 0, 1) >= 0 || c[i].is_eof;
        if (!is_ended)
            fail_msg("stream %d did not end at shutdown", i);
        bd_it_raw_close(&c[i]);
    }
}

int main(void)
{
    bd_it_apply_filter();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(streams_of_a_job_share_one_poll),
        cmocka_unit_test(slow_reader_skips_progress_but_gets_final),
        cmocka_unit_test(every_stream_gets_final_when_a_running_job_is_cancelled),
        cmocka_unit_test(every_stream_gets_final_when_a_queued_job_is_cancelled),
        cmocka_unit_test(every_stream_ends_when_batchd_stops),
    };

    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests_name("it_events", tests, it_setup, it_teardown);
}
