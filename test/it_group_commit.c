/* it_group_commit.c -- group commit of small submits (issues 10 and 11), end to end against
 * the real batchd binary and the test stack: concurrent one-item submits share statements
 * (a group's rows and batches in one statement, its enqueues in one Redis call) and all
 * run; an Idempotency-Key collision inside a group fails only the collider, answered as
 * before (replay 200 or 409); a group whose statement PostgreSQL refuses answers 503 and
 * leaves neither rows nor item reservations; a job whose batch is refused fails alone; the
 * queue's room (429) is exact under concurrency; a group statement whose answer is lost is
 * settled job by job (batchd reaches PostgreSQL through a small proxy in this process that
 * commits a marked group's statement and then drops the connection instead of its answer,
 * as it_submit.c's does for one job).
 *
 * Determinism: a "plug" job is held inside its INSERT by a trigger waiting on an advisory
 * lock that this test holds (in a psql session of its own), so the one group in flight is
 * the plug's; the burst that follows waits in batchd's committer -- the test waits until
 * Redis shows every burst job's item reservation -- and becomes one group when the lock is
 * let go. Failures come from triggers too (a transient SQLSTATE 53100 for collection
 * itgrp_full, a permanent 22023 on the batches of collection itgrp_bad): no test-only
 * branch in batchd.
 *
 * Isolation: a PostgreSQL schema of its own ("itgrp_<pid>", through search_path in the URL)
 * and a Redis database of its own (BD_IT_GROUP_REDIS_DB, default 14; the 429 case a second
 * schema and the database after it). Redis is read with redis-cli (the reservation hash
 * "bd:reserved_items", the "bd:queued_items" counter) only to wait and to check accounts.
 * SPDX-License-Identifier: MIT
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <curl/curl.h>
#include <jansson.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bd_it.h"

#define LOCK_KEY 77201               /* the advisory lock the plug's trigger waits on */

static const char *it_config =
    "jobs:\n"
    "  max_concurrent_jobs: 3\n"
    "  processing_interval: 0.1\n"
    "  retry_delay: 0.05\n"
    "models:\n"
    "  - name: hashmodel\n"
    "    provider: hashing\n"
    "    dimensions: 4\n";

static struct bd_it_proc g_proc;
static bool g_started;
static struct bd_it_scratch g_scr;  /* own schema and Redis db; g_scr.pg_url is direct */
static char g_pg_proxied[640];      /* batchd's: through the proxy, with our search_path */

/* The proxy (bd_it_pgproxy) loses the answer that ends every transaction whose messages
 * carried LOST_MARKER, the metadata of the jobs whose group must not hear of its commit, so
 * the engine's own statements pass. */
#define LOST_MARKER "itgrp-lost-commit-marker"


/* ---- helpers ------------------------------------------------------------------------- */

static long psql_long_url(const char *url, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static long psql_long_url(const char *url, const char *fmt, ...)
{
    char sql[2048], out[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof(sql), fmt, ap);
    va_end(ap);
    if (bd_it_sh_out(out, sizeof(out), "psql '%s' -Atqc \"%s\"", url, sql) != 0)
        return -1;
    return strtol(out, NULL, 10);
}
#define psql_long(...) psql_long_url(g_scr.pg_url, __VA_ARGS__)

static long redis_long(const char *redis_url, const char *cmd)
{
    char out[64];
    if (bd_it_sh_out(out, sizeof(out), "redis-cli -u '%s' %s", redis_url, cmd) != 0)
        return -1;
    return strtol(out, NULL, 10);
}

/* Wait until the SQL's number equals want (timeout_s); fails the test otherwise. */
static void wait_sql(long want, double timeout_s, const char *sql)
{
    double end = bd_it_now() + timeout_s;
    long got = -1;
    while ((got = psql_long("%s", sql)) != want && bd_it_now() < end)
        bd_it_sleep_ms(20);
    if (got != want)
        fprintf(stderr, "%s: %ld, want %ld\n", sql, got, want);
    assert_int_equal(got, want);
}

static void wait_redis(const char *redis_url, const char *cmd, long want, double timeout_s)
{
    double end = bd_it_now() + timeout_s;
    long got = -1;
    while ((got = redis_long(redis_url, cmd)) != want && bd_it_now() < end)
        bd_it_sleep_ms(10);
    if (got != want)
        fprintf(stderr, "redis %s: %ld, want %ld\n", cmd, got, want);
    assert_int_equal(got, want);
}

/* Lines of batchd's log holding every one of the (up to two) needles. */
static long log_count(const struct bd_it_proc *p, const char *a, const char *b)
{
    char out[64];
    if (bd_it_sh_out(out, sizeof(out), "grep -F '%s' '%s' | grep -cF '%s'", a, p->log_path,
                     b ? b : a) > 1)
        return -1;
    return strtol(out, NULL, 10);
}

/* One submit, run on a thread of its own so that many are in flight at once. */
struct req {
    const struct bd_it_proc *proc;
    char body[512];
    char idem[64];                  /* Idempotency-Key, "" for none */
    long status;
    char job_id[160];
    char code[64];                  /* error.code of an error answer */
    pthread_t thread;
};

static void *req_main(void *arg)
{
    struct req *r = arg;
    char url[256], key[128];
    const char *hdrs[3] = { "Content-Type: application/json", NULL, NULL };
    struct bd_it_resp resp;

    snprintf(url, sizeof(url), "%s/api/v1/batch/jobs", r->proc->base);
    if (r->idem[0]) {
        snprintf(key, sizeof(key), "Idempotency-Key: %s", r->idem);
        hdrs[1] = key;
    }
    r->status = -1;
    if (bd_it_http_ex("POST", url, r->body, hdrs, 60000, &resp) != 0)
        return NULL;
    r->status = resp.status;
    json_t *j = json_loads(resp.body, 0, NULL);
    const char *id = json_string_value(json_object_get(j, "job_id"));
    const char *code = json_string_value(json_object_get(json_object_get(j, "error"), "code"));
    snprintf(r->job_id, sizeof(r->job_id), "%s", id ? id : "");
    snprintf(r->code, sizeof(r->code), "%s", code ? code : "");
    if (j == NULL)
        fprintf(stderr, "answer is not JSON: %ld %s\n", resp.status, resp.body);
    json_decref(j);
    bd_it_resp_free(&resp);
    return NULL;
}

/* A one-item bulk_embed job on model in collection coll; text makes bodies differ. */
static void req_init_model(struct req *r, const struct bd_it_proc *p, const char *model,
                           const char *coll, const char *text, const char *idem)
{
    memset(r, 0, sizeof(*r));
    r->proc = p;
    snprintf(r->body, sizeof(r->body), "{\"operation\":\"bulk_embed\",\"model\":\"%s\","
             "\"collection\":\"%s\",\"data\":[{\"id\":\"x\",\"text\":\"%s\"}]}", model, coll,
             text);
    snprintf(r->idem, sizeof(r->idem), "%s", idem ? idem : "");
}

static void req_init(struct req *r, const struct bd_it_proc *p, const char *coll,
                     const char *text, const char *idem)
{
    req_init_model(r, p, "hashmodel", coll, text, idem);
}

/* The same with the proxy's LOST_MARKER in the job's metadata. */
static void req_init_marked(struct req *r, const struct bd_it_proc *p, const char *coll,
                            const char *text)
{
    memset(r, 0, sizeof(*r));
    r->proc = p;
    snprintf(r->body, sizeof(r->body), "{\"operation\":\"bulk_embed\",\"model\":\"hashmodel\","
             "\"collection\":\"%s\",\"metadata\":{\"m\":\"" LOST_MARKER "\"},"
             "\"data\":[{\"id\":\"x\",\"text\":\"%s\"}]}", coll, text);
}

static void reqs_start(struct req *r, size_t n)
{
    for (size_t i = 0; i < n; i++)
        assert_int_equal(pthread_create(&r[i].thread, NULL, req_main, &r[i]), 0);
}

static void reqs_join(struct req *r, size_t n)
{
    for (size_t i = 0; i < n; i++)
        pthread_join(r[i].thread, NULL);
}

/* ---- the plug: one group held in flight --------------------------------------------- */

static struct req g_plug;

/* Take the advisory lock in a psql session of our own, send the plug job and wait until its
 * INSERT waits on the lock: from here on, every submit waits in the committer. */
static void plug_begin(void)
{
    bd_it_sh("PGAPPNAME=itgrp_hold psql '%s' -Atqc 'SELECT pg_advisory_lock(%d); "
             "SELECT pg_sleep(300)' >/dev/null 2>&1 &", g_scr.pg_url, LOCK_KEY);
    wait_sql(1, 10, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = "
                    "77201 AND granted");
    req_init(&g_plug, &g_proc, "itgrp_plug", "plug", NULL);
    reqs_start(&g_plug, 1);
    wait_sql(1, 10, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = "
                    "77201 AND NOT granted");
}

/* Wait until waiting jobs (besides the plug) hold their reservations -- they are all in the
 * committer then --, let the plug go and check it was created. */
static void plug_release(long waiting)
{
    char cmd[64];
    snprintf(cmd, sizeof(cmd), "HLEN bd:reserved_items");
    wait_redis(g_scr.redis_url, cmd, 1 + waiting, 20);
    assert_int_equal(psql_long("SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM "
                               "pg_stat_activity WHERE application_name = 'itgrp_hold') t"), 1);
    reqs_join(&g_plug, 1);
    assert_int_equal(g_plug.status, 202);
}

/* ---- cases ------------------------------------------------------------------------------ */

/* Many concurrent one-item submits: every one answered 202, in PostgreSQL with its batch,
 * run to completion; and some transactions held several jobs (a shared commit is logged). */
static void test_group_commits_concurrent_one_item_submits_and_runs_them(void **state)
{
    enum { THREADS = 32, EACH = 8, N = THREADS * EACH };
    static struct req r[N];
    (void)state;

    long shared_before = log_count(&g_proc, "event=group_committed", NULL);
    for (int i = 0; i < N; i++) {
        char text[32];
        snprintf(text, sizeof(text), "t%d", i);
        req_init(&r[i], &g_proc, "itgrp_many", text, NULL);
    }
    /* THREADS at a time, each wave started when the last ended: a closed loop. */
    for (int w = 0; w < EACH; w++) {
        reqs_start(&r[w * THREADS], THREADS);
        reqs_join(&r[w * THREADS], THREADS);
    }
    for (int i = 0; i < N; i++) {
        if (r[i].status != 202)
            fprintf(stderr, "submit %d: %ld %s\n", i, r[i].status, r[i].code);
        assert_int_equal(r[i].status, 202);
        assert_true(r[i].job_id[0] != '\0');
    }
    assert_int_equal(psql_long("SELECT count(*) FROM jobs WHERE collection = 'itgrp_many' "
                               "AND total_items = 1 AND total_batches = 1"), N);
    assert_int_equal(psql_long("SELECT count(*) FROM job_batches b JOIN jobs j ON "
                               "j.id = b.job_id WHERE j.collection = 'itgrp_many' AND "
                               "b.item_count = 1"), N);
    assert_true(log_count(&g_proc, "event=group_committed", NULL) > shared_before);
    wait_sql(N, 60, "SELECT count(*) FROM jobs WHERE collection = 'itgrp_many' AND "
                    "status = 'completed' AND processed_items = 1");
    wait_redis(g_scr.redis_url, "HLEN bd:reserved_items", 0, 5);
}

/* Two new requests with one Idempotency-Key and the same body, and two with another key
 * and different bodies, in one group with plain jobs: the group's INSERT hits the unique
 * key; each job is then written alone, so the plain ones are created, one request of each
 * key wins (202) and the others are answered as before: the same body a replay (200, the
 * winner's job), a different body 409. */
static void test_group_isolates_idempotency_key_collision(void **state)
{
    enum { PLAIN = 12, N = PLAIN + 3 + 2 };
    static struct req r[N];
    char key_same[64], key_diff[64];
    (void)state;

    snprintf(key_same, sizeof(key_same), "itgrp-same-%d", (int)getpid());
    snprintf(key_diff, sizeof(key_diff), "itgrp-diff-%d", (int)getpid());
    long isolated_before = log_count(&g_proc, "event=group_submit_failed", "retry_each_alone");
    for (int i = 0; i < PLAIN; i++) {
        char text[32];
        snprintf(text, sizeof(text), "p%d", i);
        req_init(&r[i], &g_proc, "itgrp_idem", text, NULL);
    }
    for (int i = PLAIN; i < PLAIN + 3; i++)
        req_init(&r[i], &g_proc, "itgrp_idem", "same body", key_same);
    req_init(&r[PLAIN + 3], &g_proc, "itgrp_idem", "body one", key_diff);
    req_init(&r[PLAIN + 4], &g_proc, "itgrp_idem", "body two", key_diff);

    plug_begin();
    reqs_start(r, N);
    plug_release(N);
    reqs_join(r, N);

    for (int i = 0; i < PLAIN; i++)
        assert_int_equal(r[i].status, 202);
    int won = 0, replayed = 0;
    const char *winner = NULL;
    for (int i = PLAIN; i < PLAIN + 3; i++) {
        if (r[i].status == 202) {
            won++;
            winner = r[i].job_id;
        } else {
            if (r[i].status != 200)
                fprintf(stderr, "same-key request: %ld %s\n", r[i].status, r[i].code);
            assert_int_equal(r[i].status, 200);
            replayed++;
        }
    }
    assert_int_equal(won, 1);
    assert_int_equal(replayed, 2);
    for (int i = PLAIN; i < PLAIN + 3; i++)
        assert_string_equal(r[i].job_id, winner);
    long d1 = r[PLAIN + 3].status, d2 = r[PLAIN + 4].status;
    assert_true((d1 == 202 && d2 == 409) || (d1 == 409 && d2 == 202));
    assert_string_equal(d1 == 409 ? r[PLAIN + 3].code : r[PLAIN + 4].code, "conflict");
    /* The collision really was met inside a group, which was then written job by job. */
    assert_true(log_count(&g_proc, "event=group_submit_failed", "retry_each_alone") >
                isolated_before);
    assert_int_equal(psql_long("SELECT count(*) FROM jobs WHERE collection = 'itgrp_idem'"),
                     PLAIN + 2);
    assert_int_equal(psql_long("SELECT count(*) FROM job_batches b JOIN jobs j ON "
                               "j.id = b.job_id WHERE j.collection = 'itgrp_idem'"), PLAIN + 2);
    wait_sql(PLAIN + 2, 60, "SELECT count(*) FROM jobs WHERE collection = 'itgrp_idem' AND "
                            "status = 'completed'");
    wait_redis(g_scr.redis_url, "HLEN bd:reserved_items", 0, 5);
}

/* A group whose statement PostgreSQL refuses with a transient error (53100, as a full
 * disk would): every job of it is answered 503, none is left behind, not a row nor a
 * batch, and every item reservation is given back at once. */
static void test_group_failing_answers_503_and_leaves_nothing(void **state)
{
    enum { N = 10 };
    static struct req r[N];
    (void)state;

    long queued_before = redis_long(g_scr.redis_url, "GET bd:queued_items");
    for (int i = 0; i < N; i++) {
        char text[32];
        snprintf(text, sizeof(text), "f%d", i);
        req_init(&r[i], &g_proc, "itgrp_full", text, NULL);
    }
    plug_begin();
    reqs_start(r, N);
    plug_release(N);
    reqs_join(r, N);
    for (int i = 0; i < N; i++) {
        if (r[i].status != 503)
            fprintf(stderr, "submit %d: %ld %s\n", i, r[i].status, r[i].code);
        assert_int_equal(r[i].status, 503);
    }
    char jobs_n[32];
    snprintf(jobs_n, sizeof(jobs_n), "jobs=%d ", N);
    assert_true(log_count(&g_proc, "event=group_submit_failed", jobs_n) >= 1);
    assert_int_equal(psql_long("SELECT count(*) FROM jobs WHERE collection = 'itgrp_full'"), 0);
    assert_int_equal(psql_long("SELECT count(*) FROM job_batches b LEFT JOIN jobs j ON "
                               "j.id = b.job_id WHERE j.id IS NULL"), 0);
    wait_redis(g_scr.redis_url, "HLEN bd:reserved_items", 0, 5);
    /* The plug's item ran and left the queue: nothing else was counted. */
    wait_redis(g_scr.redis_url, "GET bd:queued_items", queued_before < 0 ? 0 : queued_before, 20);
}

/* One job of a group whose batch PostgreSQL refuses (a permanent error on the batch rows of
 * the group's statement; the trigger sees the job rows the same statement wrote first):
 * only that job fails (503); the others of its group are created and run. */
static void test_group_isolates_refused_batch(void **state)
{
    enum { N = 8 };
    static struct req r[N];
    (void)state;

    for (int i = 0; i < N; i++) {
        char text[32];
        snprintf(text, sizeof(text), "b%d", i);
        req_init(&r[i], &g_proc, i == 3 ? "itgrp_bad" : "itgrp_good", text, NULL);
    }
    plug_begin();
    reqs_start(r, N);
    plug_release(N);
    reqs_join(r, N);
    for (int i = 0; i < N; i++)
        assert_int_equal(r[i].status, i == 3 ? 503 : 202);
    assert_true(log_count(&g_proc, "step=write", "retry_each_alone") >= 1);
    assert_int_equal(psql_long("SELECT count(*) FROM jobs WHERE collection = 'itgrp_bad'"), 0);
    assert_int_equal(psql_long("SELECT count(*) FROM jobs WHERE collection = 'itgrp_good'"),
                     N - 1);
    wait_sql(N - 1, 60, "SELECT count(*) FROM jobs WHERE collection = 'itgrp_good' AND "
                        "status = 'completed'");
    wait_redis(g_scr.redis_url, "HLEN bd:reserved_items", 0, 5);
}

/* The answer to a group's statement is lost (the proxy drops the connection once
 * PostgreSQL committed it and said so): each job of the group is looked up, found, enqueued
 * and answered 202 -- no 503 inviting a duplicate --, and each runs. */
static void test_group_settles_lost_commit_answer_per_job(void **state)
{
    enum { N = 6 };
    static struct req r[N];
    (void)state;

    int fired = bd_it_pgproxy_fired();
    for (int i = 0; i < N; i++) {
        char text[32];
        snprintf(text, sizeof(text), "l%d", i);
        req_init_marked(&r[i], &g_proc, "itgrp_lost", text);
    }
    plug_begin();
    reqs_start(r, N);
    plug_release(N);
    reqs_join(r, N);
    assert_int_equal(bd_it_pgproxy_fired(), fired + 1);     /* one group, one answer lost */
    for (int i = 0; i < N; i++) {
        if (r[i].status != 202)
            fprintf(stderr, "submit %d: %ld %s\n", i, r[i].status, r[i].code);
        assert_int_equal(r[i].status, 202);
    }
    char jobs_n[32];
    snprintf(jobs_n, sizeof(jobs_n), "jobs=%d ", N);
    assert_true(log_count(&g_proc, jobs_n, "outcome=settle_each") >= 1);
    assert_int_equal(psql_long("SELECT count(*) FROM jobs WHERE collection = 'itgrp_lost'"), N);
    wait_sql(N, 60, "SELECT count(*) FROM jobs WHERE collection = 'itgrp_lost' AND "
                    "status = 'completed'");
    wait_redis(g_scr.redis_url, "HLEN bd:reserved_items", 0, 5);
}

/* The queue's room under concurrency: with max_queued_items 10 and the one worker held by a
 * job whose model never answers, 40 concurrent one-item submits get exactly 10 202s and 30
 * 429s; Redis counts exactly those 10 items, no reservation is left, PostgreSQL has exactly
 * those jobs. Its own batchd, schema and Redis database (nothing else claims its jobs). */
static void test_group_keeps_queue_room_exact_under_concurrency(void **state)
{
    enum { N = 40, ROOM = 10 };
    static struct req r[N];
    struct bd_it_proc p;
    char schema[80], pg_url[700], redis_url[256], yaml[1024];
    struct sockaddr_in a = { 0 };
    socklen_t alen = sizeof(a);
    (void)state;

    /* A model server that takes connections and never answers. */
    int held = socket(AF_INET, SOCK_STREAM, 0);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(held, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(held, 16), 0);
    assert_int_equal(getsockname(held, (struct sockaddr *)&a, &alen), 0);

    snprintf(schema, sizeof(schema), "%s_q", g_scr.schema);
    bd_it_pg_schema_url(pg_url, sizeof(pg_url), g_scr.pg_base, schema);
    const char *slash = strrchr(g_scr.redis_url, '/');
    snprintf(redis_url, sizeof(redis_url), "%.*s/%ld", (int)(slash - g_scr.redis_url),
             g_scr.redis_url, strtol(slash + 1, NULL, 10) + 1);
    assert_int_equal(bd_it_sh("psql '%s' -Atqc 'DROP SCHEMA IF EXISTS %s CASCADE; CREATE "
                              "SCHEMA %s;' >/dev/null", g_scr.pg_base, schema, schema), 0);
    bd_it_sh("redis-cli -u '%s' FLUSHDB >/dev/null", redis_url);
    snprintf(yaml, sizeof(yaml),
             "jobs:\n"
             "  max_concurrent_jobs: 1\n"
             "  max_queued_items: %d\n"
             "models:\n"
             "  - name: hashmodel\n"
             "    provider: hashing\n"
             "    dimensions: 4\n"
             "  - name: heldmodel\n"
             "    provider: ollama\n"
             "    base_url: http://127.0.0.1:%d\n"
             "    dimensions: 4\n"
             "    timeout: 300\n", ROOM, ntohs(a.sin_port));
    char *saved_pg = strdup(getenv("BATCH_POSTGRES_URL")), *saved_rd = strdup(getenv(
        "BATCH_REDIS_URL"));
    setenv("BATCH_POSTGRES_URL", pg_url, 1);
    setenv("BATCH_REDIS_URL", redis_url, 1);
    int started = bd_it_start(&p, yaml, NULL);
    setenv("BATCH_POSTGRES_URL", saved_pg, 1);
    setenv("BATCH_REDIS_URL", saved_rd, 1);
    free(saved_pg);
    free(saved_rd);
    assert_int_equal(started, 0);

    /* The one worker takes the held job and keeps it. */
    struct req hold;
    req_init_model(&hold, &p, "heldmodel", "itgrp_q", "held", NULL);
    reqs_start(&hold, 1);
    reqs_join(&hold, 1);
    assert_int_equal(hold.status, 202);
    json_t *st = bd_it_expect_status(&p, hold.job_id, "processing", 20);
    json_decref(st);
    long queued0 = redis_long(redis_url, "GET bd:queued_items");
    assert_true(queued0 >= 0 && queued0 < ROOM);

    for (int i = 0; i < N; i++) {
        char text[32];
        snprintf(text, sizeof(text), "q%d", i);
        req_init(&r[i], &p, "itgrp_q", text, NULL);
    }
    reqs_start(r, N);
    reqs_join(r, N);
    int ok = 0, full = 0;
    for (int i = 0; i < N; i++) {
        ok += r[i].status == 202;
        full += r[i].status == 429;
        if (r[i].status != 202 && r[i].status != 429)
            fprintf(stderr, "submit %d: %ld %s\n", i, r[i].status, r[i].code);
    }
    assert_int_equal(ok, ROOM - queued0);
    assert_int_equal(full, N - (ROOM - queued0));
    assert_int_equal(redis_long(redis_url, "GET bd:queued_items"), ROOM);
    assert_int_equal(redis_long(redis_url, "HLEN bd:reserved_items"), 0);
    assert_int_equal(psql_long_url(pg_url, "SELECT count(*) FROM jobs WHERE collection = "
                                           "'itgrp_q' AND model = 'hashmodel'"),
                     ROOM - queued0);

    bd_it_stop(&p, SIGKILL, 5);     /* the held model call would delay a clean stop */
    close(held);
    bd_it_sh("psql '%s' -Atqc 'DROP SCHEMA IF EXISTS %s CASCADE;' >/dev/null", g_scr.pg_base,
             schema);
    bd_it_sh("redis-cli -u '%s' FLUSHDB >/dev/null", redis_url);
}

/* ---- setup ------------------------------------------------------------------------------ */

static const char *it_triggers =
    "CREATE FUNCTION itgrp_gate() RETURNS trigger LANGUAGE plpgsql AS \\$\\$ BEGIN "
    "IF NEW.collection = 'itgrp_plug' THEN PERFORM pg_advisory_xact_lock(77201); END IF; "
    "IF NEW.collection = 'itgrp_full' THEN "
    "RAISE EXCEPTION 'itgrp: no room' USING ERRCODE = '53100'; END IF; "
    "RETURN NEW; END \\$\\$; "
    "CREATE TRIGGER itgrp_gate BEFORE INSERT ON jobs FOR EACH ROW "
    "EXECUTE FUNCTION itgrp_gate(); "
    "CREATE FUNCTION itgrp_refuse() RETURNS trigger LANGUAGE plpgsql AS \\$\\$ BEGIN "
    "IF EXISTS (SELECT 1 FROM jobs WHERE id = NEW.job_id AND collection = 'itgrp_bad') THEN "
    "RAISE EXCEPTION 'itgrp: refused batch' USING ERRCODE = '22023'; END IF; "
    "RETURN NEW; END \\$\\$; "
    "CREATE TRIGGER itgrp_refuse BEFORE INSERT ON job_batches FOR EACH ROW "
    "EXECUTE FUNCTION itgrp_refuse();";

static int it_setup(void **state)
{
    (void)state;
    curl_global_init(CURL_GLOBAL_ALL);  /* before any thread makes a handle */
    if (bd_it_scratch_open(&g_scr, "itgrp", "BD_IT_GROUP_REDIS_DB", "14") != 0 ||
        bd_it_scratch_proxy(&g_scr, LOST_MARKER, g_pg_proxied, sizeof(g_pg_proxied)) != 0)
        return -1;
    if (bd_it_start(&g_proc, it_config, NULL) != 0)
        return -1;
    g_started = true;
    /* batchd made the schema; the triggers go on its tables. */
    if (bd_it_sh("psql '%s' -Atqc \"%s\" >/dev/null", g_scr.pg_url, it_triggers) != 0) {
        fprintf(stderr, "cannot create the test triggers\n");
        return -1;
    }
    return 0;
}

static int it_teardown(void **state)
{
    int rc = 0;
    (void)state;
    bd_it_sh("psql '%s' -Atqc \"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
             "WHERE application_name = 'itgrp_hold'\" >/dev/null 2>&1", g_scr.pg_url);
    if (g_started && bd_it_stop(&g_proc, SIGTERM, 20) != 0) {
        fprintf(stderr, "batchd did not exit cleanly; log: %s\n", g_proc.log_path);
        rc = -1;
    }
    bd_it_pgproxy_stop();
    bd_it_scratch_close(&g_scr);
    return rc;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_group_commits_concurrent_one_item_submits_and_runs_them),
        cmocka_unit_test(test_group_isolates_idempotency_key_collision),
        cmocka_unit_test(test_group_failing_answers_503_and_leaves_nothing),
        cmocka_unit_test(test_group_isolates_refused_batch),
        cmocka_unit_test(test_group_settles_lost_commit_answer_per_job),
        cmocka_unit_test(test_group_keeps_queue_room_exact_under_concurrency),
    };
    bd_it_apply_filter();
    return cmocka_run_group_tests(tests, it_setup, it_teardown);
}
