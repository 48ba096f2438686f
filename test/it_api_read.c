/* it_api_read.c -- integration tests for the read side of the job API (api_jobs_read.c):
 * status, the whole job, the list, items, results (paged and JSON Lines), Server-Sent
 * Events and /debug/job, against the real batchd binary and the test stack.
 *
 * Isolation: the stack is shared, so this suite works in a PostgreSQL schema of its own
 * ("itread_<pid>", through search_path in the URL; batchd migrates it at start) and a Redis
 * database of its own (BD_IT_READ_REDIS_DB, default 11). Fixture jobs that are not terminal
 * are marked in flight in Redis with a lease a day long before they are inserted, so the
 * job engine's queue rebuild leaves them alone. Everything is dropped at the end.
 * SPDX-License-Identifier: MIT
 */
#define _GNU_SOURCE                    /* vasprintf */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "bd_it.h"

#define BIG_ROWS  10000
#define BIG_DIMS  64
#define LIST_JOBS 25

static struct bd_it_proc g_proc;
static bool g_started;
static struct bd_it_scratch g_scr;    /* schema itread_<pid>, our Redis database */
static char g_pfx[64];                /* job id prefix: itread_<pid>_ */

/* ---- helpers ------------------------------------------------------------------------ */

static int it_psql_url(const char *url, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Run SQL with psql against url (bd_it_psql_url). The SQL may use the psql variables :'pfx'
 * (job id prefix), :pid, :big (BIG_ROWS), :dims (BIG_DIMS) and :nlist (LIST_JOBS).
 * 0, or -1 when psql failed. */
static int it_psql_url(const char *url, const char *fmt, ...)
{
    char vars[256], *sql = NULL;
    va_list ap;

    va_start(ap, fmt);
    int n = vasprintf(&sql, fmt, ap);
    va_end(ap);
    if (n < 0)
        return -1;
    snprintf(vars, sizeof(vars), "-v pfx=%s -v pid=%d -v big=%d -v dims=%d -v nlist=%d", g_pfx,
             (int)getpid(), BIG_ROWS, BIG_DIMS, LIST_JOBS);
    char *out = bd_it_psql_url(url, vars, "%s", sql);
    int rc = out ? 0 : -1;
    free(sql);
    free(out);
    return rc;
}

#define it_psql(...) it_psql_url(g_scr.pg_url, __VA_ARGS__)

static long long it_now_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (long long)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

/* Mark id in flight in our Redis database for a day, so no engine claims it. */
static void it_hold(const char *id)
{
    assert_int_equal(bd_it_sh("redis-cli -u '%s' ZADD bd:inflight %lld '%s' >/dev/null",
                              g_scr.redis_url, it_now_ms() + 86400000LL, id),
                     0);
}

static json_t *it_get(const char *path, long *status)
{
    return bd_it_json(&g_proc, "GET", path, NULL, status);
}

/* GET path, expect status; returns the raw response (caller frees). */
static void it_get_raw(const char *path, const char *const *headers, long want,
                       struct bd_it_resp *r)
{
    char url[1024];
    snprintf(url, sizeof(url), "%s%s", g_proc.base, path);
    assert_int_equal(bd_it_http("GET", url, NULL, headers, r), 0);
    if (r->status != want)
        fprintf(stderr, "GET %s -> %ld: %.300s\n", path, r->status, r->body);
    assert_int_equal(r->status, want);
}

/* Expect an error answer: status, {"error":{"code":code,...,"field":field}}. */
static void it_expect_error(const char *path, long want, const char *code, const char *field)
{
    long status = 0;
    json_t *j = it_get(path, &status);
    json_t *err = json_object_get(j, "error");

    if (status != want)
        fprintf(stderr, "GET %s -> %ld (want %ld)\n", path, status, want);
    assert_int_equal(status, want);
    assert_non_null(err);
    assert_string_equal(json_string_value(json_object_get(err, "code")), code);
    assert_non_null(json_string_value(json_object_get(err, "message")));
    if (field != NULL)
        assert_string_equal(json_string_value(json_object_get(err, "field")), field);
    json_decref(j);
}

/* ---- fixtures ----------------------------------------------------------------------- */

/* The fixture rows; see it_fixtures. The job "done" finished at fixed times in the future:
 * one finished in the past would be deleted by batchd's retention sweep (every 60 s, jobs
 * finished over cleanup_interval = 1 day ago) while the suite runs, which takes over 60 s in
 * the sanitizer build. */
static const char it_fixture_sql[] =
    "INSERT INTO collections (name, dimension) VALUES ('itread_c', 3), ('itread_big', :dims);\n"
    "INSERT INTO jobs (id, seq, operation, model, collection, status, priority, batch_size,"
    " total_items, total_batches, next_batch, processed_items, failed_items,"
    " stored_vectors, cache_hits, processing_ms, options, metadata, idempotency_key,"
    " created_at, started_at, completed_at, run_attempt, timeout_s, max_retries) VALUES"
    " (:'pfx' || 'done', 1001, 'bulk_embed', 'mixtral', 'itread_c', 'completed', 0, 3, 5, 2,"
    "  2, 4, 1, 4, 1, 1000, '{\"batch_size\":3,\"priority\":\"high\"}',"
    "  '{\"submitted_by\":\"api_gateway\",\"integration_pattern\":\"bulk_only\"}',"
    "  'k-' || :'pid', '2099-07-15 14:30:00+00', '2099-07-15 14:32:00+00',"
    "  '2099-07-15 14:34:30+00', 1, 600, 2),"
    " (:'pfx' || 'run', 1002, 'bulk_embed', 'mixtral', 'itread_c', 'processing', 1, 2, 10, 5,"
    "  2, 3, 1, 3, 0, 800, '{}', '{}', NULL, now() - interval '60 s',"
    "  now() - interval '40 s', NULL, 1, NULL, NULL),"
    " (:'pfx' || 'q', 1003, 'bulk_embed', 'mixtral', 'itread_c', 'queued', 2, 10, 3, 1, 0,"
    "  0, 0, 0, 0, 0, '{}', '{}', NULL, now(), NULL, NULL, 1, NULL, NULL),"
    " (:'pfx' || 'fail', 1004, 'bulk_embed', 'yi34', 'itread_c', 'failed', 1, 10, 3, 1, 1,"
    "  0, 3, 0, 0, 300, '{}', '{}', NULL, now() - interval '10 s',"
    "  now() - interval '9 s', now() - interval '5 s', 1, NULL, NULL),"
    " (:'pfx' || 'third', 1005, 'bulk_embed', 'mixtral', 'itread_c', 'processing', 1, 10, 3,"
    "  1, 0, 2, 0, 2, 0, 3000, '{}', '{}', NULL, now(), now(), NULL, 1, NULL, NULL),"
    " (:'pfx' || 'big', 1006, 'bulk_insert', NULL, 'itread_big', 'completed', 1, 500, :big,"
    "  :big / 500, :big / 500, :big, 0, :big, 0, 5000, '{}', '{}', NULL, now(), now(), now(),"
    "  1, NULL, NULL);\n"
    "UPDATE jobs SET cancel_requested = true, lease_owner = 'other-worker'"
    " WHERE id = :'pfx' || 'run';\n"
    "UPDATE jobs SET error_code = 'timeout_error', error_message = 'job timed out'"
    " WHERE id = :'pfx' || 'fail';\n"
    "INSERT INTO vectors (collection, id, embedding, metadata, job_id, item_index) VALUES"
    " ('itread_c', 'vec_0', '{0.1,0.2,0.3}', '{\"text\":\"example 0\"}', :'pfx' || 'done', 0),"
    " ('itread_c', 'vec_1', '{0.4,0.5,0.6}', '{\"text\":\"example 1\"}', :'pfx' || 'done', 1),"
    " ('itread_c', 'vec_2', '{-1.5,2.5e-07,3e+20}', '{}', :'pfx' || 'done', 2),"
    " ('itread_c', 'vec_4', '{NaN,Infinity,-Infinity}', '{\"n\":[1,2]}', :'pfx' || 'done', 4),"
    " ('itread_c', 'run_0', '{1,2,3}', '{}', :'pfx' || 'run', 0);\n"
    "INSERT INTO job_item_errors (job_id, item_index, item_id, code, message) VALUES"
    " (:'pfx' || 'done', 3, 'vec_3', 'dimension_mismatch', 'expected 3 dimensions, got 2'),"
    " (:'pfx' || 'run', 1, NULL, 'model_error', 'model said \"no\"');\n"
    "INSERT INTO job_batches (job_id, batch_no, first_index, item_count, items, status,"
    " attempts, processed, failed, last_error, duration_ms, updated_at) VALUES"
    " (:'pfx' || 'run', 0, 0, 2, '[]', 'done', 1, 1, 1, NULL, 400, now()),"
    " (:'pfx' || 'run', 1, 2, 2, '[]', 'done', 2, 2, 0, 'timeout', 400, now()),"
    " (:'pfx' || 'run', 2, 4, 2, '[]', 'pending', 0, 0, 0, NULL, NULL, NULL),"
    " (:'pfx' || 'done', 0, 0, 3, '[]', 'done', 1, 3, 0, NULL, 100, now()),"
    " (:'pfx' || 'done', 1, 3, 2, '[]', 'done', 1, 1, 1, NULL, 100, now());\n"
    "INSERT INTO vectors (collection, id, embedding, metadata, job_id, item_index)"
    " SELECT 'itread_big', 'b' || i, array_fill(((i % 97)::real / 7), ARRAY[:dims]),"
    " jsonb_build_object('i', i), :'pfx' || 'big', i FROM generate_series(0, :big - 1) i;\n"
    "INSERT INTO jobs (id, seq, operation, model, collection, status, priority, batch_size,"
    " total_items, total_batches)"
    " SELECT :'pfx' || 'l' || lpad(i::text, 2, '0'), 2000 + i,"
    " CASE WHEN i % 5 = 0 THEN 'bulk_insert' ELSE 'bulk_embed' END, 'itread_list',"
    " 'itread_c', CASE WHEN i % 3 = 0 THEN 'failed' ELSE 'completed' END, 1, 10, 1, 1"
    " FROM generate_series(0, :nlist - 1) i;\n";

/*  <pfx>done   completed bulk_embed, 5 items: 0,1,2,4 stored, 3 failed; the seed's times
 *  <pfx>run    processing, 3 + 1 of 10 done, started 40 s ago, cancel requested; held
 *  <pfx>q      queued, nothing done; held
 *  <pfx>fail   failed with an error
 *  <pfx>third  processing, 2 of 3 done (66.7 %); held
 *  <pfx>big    completed bulk_insert with BIG_ROWS vectors of BIG_DIMS floats
 *  <pfx>l00..  LIST_JOBS jobs of model itread_list, for paging */
static void it_fixtures(void)
{
    char id[128];
    const char *held[] = { "run", "q", "third", "sse", "sse2", "gone" };

    for (size_t i = 0; i < sizeof(held) / sizeof(held[0]); i++) {
        snprintf(id, sizeof(id), "%s%s", g_pfx, held[i]);
        it_hold(id);
    }
    assert_int_equal(it_psql("%s", it_fixture_sql), 0);
}

static int it_setup(void **state)
{
    double deadline;

    (void)state;
    snprintf(g_pfx, sizeof(g_pfx), "itread_%d_", (int)getpid());
    if (bd_it_scratch_open(&g_scr, "itread", "BD_IT_READ_REDIS_DB", "11") != 0)
        return -1;
    if (bd_it_start(&g_proc, "jobs:\n  max_concurrent_jobs: 1\n  progress_update_interval: 0.2\n",
                    NULL) != 0)
        return -1;
    g_started = true;
    /* Ready means the migrations ran (into our schema). */
    deadline = bd_it_now() + 20;
    for (;;) {
        long status = 0;
        json_t *j = it_get("/readyz", &status);
        json_decref(j);
        if (status == 200)
            break;
        if (bd_it_now() > deadline) {
            fprintf(stderr, "batchd did not become ready\n");
            return -1;
        }
        bd_it_sleep_ms(50);
    }
    it_fixtures();
    return 0;
}

static int it_teardown(void **state)
{
    (void)state;
    if (g_started)
        bd_it_stop(&g_proc, SIGTERM, 20);
    bd_it_scratch_close(&g_scr);
    {
        char path[128];
        snprintf(path, sizeof(path), "/tmp/itread_%d.sql", (int)getpid());
        unlink(path);
    }
    bd_it_sh("redis-cli -u '%s' --scan --pattern 'bd:*' | grep -v '^$' | "
             "xargs -r redis-cli -u '%s' DEL >/dev/null", g_scr.redis_url, g_scr.redis_url);
    return 0;
}

/* ---- status ------------------------------------------------------------------------- */

static void status_has_seed_shape_when_completed(void **state)
{
    json_t *j;
    struct bd_it_resp r;
    char path[256];

    (void)state;
    j = bd_it_get_ok(&g_proc, "/api/v1/batch/jobs/%sdone/status", g_pfx);
    assert_true(strstr(bd_it_str(j, "job_id"), "done") != NULL);
    assert_string_equal(bd_it_str(j, "status"), "completed");
    assert_string_equal(bd_it_str(j, "operation"), "bulk_embed");
    assert_string_equal(bd_it_str(j, "model"), "mixtral");
    assert_int_equal(bd_it_int(j, "progress.total_items"), 5);
    assert_int_equal(bd_it_int(j, "progress.processed_items"), 4);
    assert_int_equal(bd_it_int(j, "progress.failed_items"), 1);
    assert_true(bd_it_real(j, "progress.percentage") == 100.0);
    assert_int_equal(bd_it_int(j, "progress.current_batch"), 2);
    assert_int_equal(bd_it_int(j, "progress.total_batches"), 2);
    assert_string_equal(bd_it_str(j, "timing.created_at"), "2099-07-15T14:30:00Z");
    assert_string_equal(bd_it_str(j, "timing.started_at"), "2099-07-15T14:32:00Z");
    assert_string_equal(bd_it_str(j, "timing.completed_at"), "2099-07-15T14:34:30Z");
    assert_int_equal(bd_it_int(j, "timing.total_processing_time_ms"), 150000);
    assert_null(bd_it_at(j, "timing.estimated_completion"));
    assert_null(bd_it_at(j, "timing.processing_time_ms"));
    assert_int_equal(bd_it_int(j, "results.completed_embeddings"), 4);
    assert_true(bd_it_real(j, "results.average_processing_time_ms") == 200.0);
    assert_true(bd_it_real(j, "results.success_rate") == 80.0);
    assert_string_equal(bd_it_str(j, "results.output_collection"), "itread_c");
    assert_int_equal(bd_it_int(j, "results.stored_vectors"), 4);
    assert_int_equal(bd_it_int(j, "results.cache_hits"), 1);
    assert_null(bd_it_at(j, "error"));
    assert_null(bd_it_at(j, "cancel_requested"));
    json_decref(j);

    /* Reals print with one decimal, as in the seed. */
    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%sdone/status", g_pfx);
    it_get_raw(path, NULL, 200, &r);
    assert_non_null(strstr(r.body, "\"percentage\":100.0,"));
    assert_non_null(strstr(r.body, "\"success_rate\":80.0,"));
    bd_it_resp_free(&r);
}

static void status_extrapolates_when_processing(void **state)
{
    json_t *j;
    struct bd_it_resp r;
    char path[256];
    long long ms;

    (void)state;
    j = bd_it_get_ok(&g_proc, "/api/v1/batch/jobs/%srun/status", g_pfx);
    assert_string_equal(bd_it_str(j, "status"), "processing");
    assert_true(bd_it_real(j, "progress.percentage") == 40.0);
    assert_non_null(bd_it_str(j, "timing.started_at"));
    /* started 40 s ago, 4 of 10 done: about 60 s to go. */
    assert_non_null(bd_it_str(j, "timing.estimated_completion"));
    assert_true(strlen(bd_it_str(j, "timing.estimated_completion")) == 20);
    assert_true(strcmp(bd_it_str(j, "timing.estimated_completion"),
                       bd_it_str(j, "timing.started_at")) > 0);
    ms = bd_it_int(j, "timing.processing_time_ms");
    assert_true(ms >= 39000 && ms <= 60000);
    assert_null(bd_it_at(j, "timing.completed_at"));
    assert_true(bd_it_real(j, "results.success_rate") == 75.0);
    assert_true(bd_it_real(j, "results.average_processing_time_ms") == 200.0);
    assert_true(json_is_true(bd_it_at(j, "cancel_requested")));
    json_decref(j);

    j = bd_it_get_ok(&g_proc, "/api/v1/batch/jobs/%sthird/status", g_pfx);
    assert_true(bd_it_real(j, "progress.percentage") == 66.7);
    assert_true(bd_it_real(j, "results.average_processing_time_ms") == 1500.0);
    json_decref(j);
    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%sthird/status", g_pfx);
    it_get_raw(path, NULL, 200, &r);
    assert_non_null(strstr(r.body, "\"percentage\":66.7,"));
    bd_it_resp_free(&r);
}

static void status_has_nulls_when_queued(void **state)
{
    json_t *j;

    (void)state;
    j = bd_it_get_ok(&g_proc, "/api/v1/batch/jobs/%sq/status", g_pfx);
    assert_string_equal(bd_it_str(j, "status"), "queued");
    assert_true(bd_it_real(j, "progress.percentage") == 0.0);
    assert_true(json_is_null(bd_it_at(j, "timing.started_at")));
    assert_true(json_is_null(bd_it_at(j, "timing.estimated_completion")));
    assert_null(bd_it_at(j, "timing.processing_time_ms"));
    assert_true(bd_it_real(j, "results.success_rate") == 100.0);
    json_decref(j);
}

static void status_has_error_when_failed(void **state)
{
    json_t *j;

    (void)state;
    j = bd_it_get_ok(&g_proc, "/api/v1/batch/jobs/%sfail/status", g_pfx);
    assert_string_equal(bd_it_str(j, "status"), "failed");
    assert_string_equal(bd_it_str(j, "error.code"), "timeout_error");
    assert_string_equal(bd_it_str(j, "error.message"), "job timed out");
    assert_true(bd_it_real(j, "results.success_rate") == 0.0);
    assert_int_equal(bd_it_int(j, "timing.total_processing_time_ms"), 4000);
    json_decref(j);
}

static void bad_requests_get_json_errors(void **state)
{
    char path[512], longid[200];

    (void)state;
    memset(longid, 'a', 129);
    longid[129] = '\0';
    it_expect_error("/api/v1/batch/jobs/bad%24id/status", 400, "validation_error", "job_id");
    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%s", longid);
    it_expect_error(path, 400, "validation_error", "job_id");
    it_expect_error("/api/v1/batch/jobs/no.dots/items", 400, "validation_error", "job_id");
    it_expect_error("/api/v1/batch/debug/job/a%20b", 400, "validation_error", "job_id");
    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%snope/status", g_pfx);
    it_expect_error(path, 404, "not_found", NULL);
    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%snope", g_pfx);
    it_expect_error(path, 404, "not_found", NULL);
    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%snope/items", g_pfx);
    it_expect_error(path, 404, "not_found", NULL);
    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%snope/results", g_pfx);
    it_expect_error(path, 404, "not_found", NULL);
    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%snope/results?format=ndjson", g_pfx);
    it_expect_error(path, 404, "not_found", NULL);
    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%snope/events", g_pfx);
    it_expect_error(path, 404, "not_found", NULL);
    snprintf(path, sizeof(path), "/api/v1/batch/debug/job/%snope", g_pfx);
    it_expect_error(path, 404, "not_found", NULL);

    it_expect_error("/api/v1/batch/jobs?limit=0", 400, "validation_error", "limit");
    it_expect_error("/api/v1/batch/jobs?limit=1001", 400, "validation_error", "limit");
    it_expect_error("/api/v1/batch/jobs?limit=abc", 400, "validation_error", "limit");
    it_expect_error("/api/v1/batch/jobs?limit=-5", 400, "validation_error", "limit");
    it_expect_error("/api/v1/batch/jobs?status=running", 400, "validation_error", "status");
    it_expect_error("/api/v1/batch/jobs?operation=embed", 400, "validation_error", "operation");
    it_expect_error("/api/v1/batch/jobs?cursor=x12", 400, "validation_error", "cursor");
    it_expect_error("/api/v1/batch/jobs?cursor=s", 400, "validation_error", "cursor");
    it_expect_error("/api/v1/batch/jobs?cursor=s12x", 400, "validation_error", "cursor");
    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%sdone/items?status=bogus", g_pfx);
    it_expect_error(path, 400, "validation_error", "status");
    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%sdone/items?cursor=s5", g_pfx);
    it_expect_error(path, 400, "validation_error", "cursor");
    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%sdone/results?limit=5000", g_pfx);
    it_expect_error(path, 400, "validation_error", "limit");
    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%sdone/results?format=xml", g_pfx);
    it_expect_error(path, 400, "validation_error", "format");
}

/* ---- whole job, list -------------------------------------------------------------- */

static void job_has_options_metadata_and_errors(void **state)
{
    json_t *j, *e;
    char key[32];

    (void)state;
    j = bd_it_get_ok(&g_proc, "/api/v1/batch/jobs/%sdone", g_pfx);
    assert_string_equal(bd_it_str(j, "status"), "completed");
    assert_non_null(bd_it_at(j, "progress.percentage"));
    assert_string_equal(bd_it_str(j, "collection"), "itread_c");
    assert_string_equal(bd_it_str(j, "priority"), "high");
    assert_int_equal(bd_it_int(j, "batch_size"), 3);
    assert_int_equal(bd_it_int(j, "options.batch_size"), 3);
    assert_string_equal(bd_it_str(j, "metadata.integration_pattern"), "bulk_only");
    snprintf(key, sizeof(key), "k-%d", (int)getpid());
    assert_string_equal(bd_it_str(j, "idempotency_key"), key);
    assert_int_equal(bd_it_int(j, "run_attempt"), 1);
    assert_true(bd_it_real(j, "timeout_s") == 600.0);
    assert_int_equal(bd_it_int(j, "max_retries"), 2);
    assert_int_equal(bd_it_int(j, "errors_count"), 1);
    assert_int_equal(json_array_size(bd_it_at(j, "last_errors")), 1);
    e = json_array_get(bd_it_at(j, "last_errors"), 0);
    assert_int_equal(bd_it_int(e, "item_index"), 3);
    assert_string_equal(bd_it_str(e, "item_id"), "vec_3");
    assert_string_equal(bd_it_str(e, "code"), "dimension_mismatch");
    json_decref(j);

    j = bd_it_get_ok(&g_proc, "/api/v1/batch/jobs/%sq", g_pfx);
    assert_string_equal(bd_it_str(j, "priority"), "low");
    assert_true(json_is_null(bd_it_at(j, "idempotency_key")));
    assert_true(json_is_null(bd_it_at(j, "timeout_s")));
    assert_int_equal(bd_it_int(j, "errors_count"), 0);
    assert_int_equal(json_array_size(bd_it_at(j, "last_errors")), 0);
    json_decref(j);
}

static void list_pages_cover_every_job_once(void **state)
{
    char seen[LIST_JOBS] = { 0 };
    char cursor[64] = "";
    long long last_seq_idx = LIST_JOBS;
    int pages = 0, total = 0;

    (void)state;
    for (;;) {
        json_t *j = bd_it_get_ok(&g_proc, "/api/v1/batch/jobs?model=itread_list&limit=7%s%s",
                              cursor[0] ? "&cursor=" : "", cursor);
        json_t *jobs = bd_it_at(j, "jobs");
        size_t i;
        json_t *job;

        pages++;
        assert_int_equal(bd_it_int(j, "limit"), 7);
        assert_int_equal(bd_it_int(j, "count"), (long long)json_array_size(jobs));
        json_array_foreach(jobs, i, job) {
            const char *id = bd_it_str(job, "job_id");
            int n = atoi(id + strlen(g_pfx) + 1);
            assert_true(strncmp(id, g_pfx, strlen(g_pfx)) == 0);
            assert_true(n >= 0 && n < LIST_JOBS);
            assert_int_equal(seen[n], 0);
            assert_true(n < last_seq_idx);             /* newest (highest seq) first */
            last_seq_idx = n;
            seen[n] = 1;
            total++;
            assert_non_null(bd_it_at(job, "progress"));
        }
        if (json_is_null(bd_it_at(j, "next_cursor"))) {
            json_decref(j);
            break;
        }
        snprintf(cursor, sizeof(cursor), "%s", bd_it_str(j, "next_cursor"));
        json_decref(j);
        assert_true(pages < 10);
    }
    assert_int_equal(total, LIST_JOBS);
    assert_int_equal(pages, 4);                     /* 7 + 7 + 7 + 4 */
}

static void list_filters_by_status_and_operation(void **state)
{
    json_t *j, *job;
    size_t i;

    (void)state;
    /* i % 3 == 0 failed: 0,3,...,24 -> 9 jobs. */
    j = bd_it_get_ok(&g_proc, "/api/v1/batch/jobs?model=itread_list&status=failed&limit=100");
    assert_int_equal(bd_it_int(j, "count"), 9);
    json_array_foreach(bd_it_at(j, "jobs"), i, job)
        assert_string_equal(bd_it_str(job, "status"), "failed");
    assert_true(json_is_null(bd_it_at(j, "next_cursor")));
    json_decref(j);
    /* i % 5 == 0 bulk_insert: 0,5,...,20 -> 5 jobs. */
    j = bd_it_get_ok(&g_proc, "/api/v1/batch/jobs?model=itread_list&operation=bulk_insert");
    assert_int_equal(bd_it_int(j, "count"), 5);
    assert_int_equal(bd_it_int(j, "limit"), 50);
    json_array_foreach(bd_it_at(j, "jobs"), i, job)
        assert_string_equal(bd_it_str(job, "operation"), "bulk_insert");
    json_decref(j);
    j = bd_it_get_ok(&g_proc, "/api/v1/batch/jobs?status=all&model=itread_list&"
                              "operation=bulk_insert&status=all");
    assert_int_equal(bd_it_int(j, "count"), 5);
    json_decref(j);
    /* Everything in our schema: the list endpoint without filters. */
    j = bd_it_get_ok(&g_proc, "/api/v1/batch/jobs?status=processing");
    assert_int_equal(bd_it_int(j, "count"), 2);
    json_decref(j);
}

/* ---- items ------------------------------------------------------------------------ */

static void items_report_failed_succeeded_and_all(void **state)
{
    json_t *j, *it;
    int want_all[] = { 0, 1, 2, 3, 4 };
    char cursor[64] = "";
    int n = 0;

    (void)state;
    j = bd_it_get_ok(&g_proc, "/api/v1/batch/jobs/%sdone/items", g_pfx);   /* default: all */
    assert_int_equal(json_array_size(bd_it_at(j, "items")), 5);
    json_decref(j);
    j = bd_it_get_ok(&g_proc, "/api/v1/batch/jobs/%sdone/items?status=failed", g_pfx);
    assert_int_equal(json_array_size(bd_it_at(j, "items")), 1);
    it = json_array_get(bd_it_at(j, "items"), 0);
    assert_int_equal(bd_it_int(it, "index"), 3);
    assert_string_equal(bd_it_str(it, "id"), "vec_3");
    assert_string_equal(bd_it_str(it, "status"), "failed");
    assert_string_equal(bd_it_str(it, "error.code"), "dimension_mismatch");
    assert_string_equal(bd_it_str(it, "error.message"), "expected 3 dimensions, got 2");
    assert_true(json_is_null(bd_it_at(j, "next_cursor")));          /* terminal and complete */
    json_decref(j);

    j = bd_it_get_ok(&g_proc, "/api/v1/batch/jobs/%sdone/items?status=succeeded", g_pfx);
    assert_int_equal(json_array_size(bd_it_at(j, "items")), 4);
    it = json_array_get(bd_it_at(j, "items"), 3);
    assert_int_equal(bd_it_int(it, "index"), 4);
    assert_string_equal(bd_it_str(it, "status"), "succeeded");
    assert_null(bd_it_at(it, "error"));
    json_decref(j);

    /* all, two at a time: 0,1 | 2,3 | 4 */
    for (int page = 0; page < 5; page++) {
        size_t i;
        j = bd_it_get_ok(&g_proc, "/api/v1/batch/jobs/%sdone/items?status=all&limit=2%s%s", g_pfx,
                      cursor[0] ? "&cursor=" : "", cursor);
        json_array_foreach(bd_it_at(j, "items"), i, it) {
            assert_true(n < 5);
            assert_int_equal(bd_it_int(it, "index"), want_all[n]);
            assert_string_equal(bd_it_str(it, "status"), n == 3 ? "failed" : "succeeded");
            n++;
        }
        if (json_is_null(bd_it_at(j, "next_cursor"))) {
            json_decref(j);
            break;
        }
        snprintf(cursor, sizeof(cursor), "%s", bd_it_str(j, "next_cursor"));
        json_decref(j);
    }
    assert_int_equal(n, 5);

    /* A running job keeps a cursor to poll from, even on its last page. */
    j = bd_it_get_ok(&g_proc, "/api/v1/batch/jobs/%srun/items?status=failed", g_pfx);
    it = json_array_get(bd_it_at(j, "items"), 0);
    assert_true(json_is_null(bd_it_at(it, "id")));
    assert_string_equal(bd_it_str(it, "error.message"), "model said \"no\"");
    assert_string_equal(bd_it_str(j, "next_cursor"), "i2");
    assert_true(json_is_false(bd_it_at(j, "has_more")));
    json_decref(j);
}

/* ---- results ---------------------------------------------------------------------- */

static void results_convert_embeddings_and_metadata(void **state)
{
    json_t *j, *r, *emb;

    (void)state;
    j = bd_it_get_ok(&g_proc, "/api/v1/batch/jobs/%sdone/results", g_pfx);
    assert_string_equal(bd_it_str(j, "status"), "completed");
    assert_string_equal(bd_it_str(j, "collection"), "itread_c");
    assert_int_equal(json_array_size(bd_it_at(j, "results")), 4);
    r = json_array_get(bd_it_at(j, "results"), 0);
    assert_int_equal(bd_it_int(r, "index"), 0);
    assert_string_equal(bd_it_str(r, "id"), "vec_0");
    emb = bd_it_at(r, "embedding");
    assert_int_equal(json_array_size(emb), 3);
    assert_true(fabs(json_real_value(json_array_get(emb, 1)) - 0.2) < 1e-6);
    assert_string_equal(bd_it_str(r, "metadata.text"), "example 0");
    r = json_array_get(bd_it_at(j, "results"), 2);
    emb = bd_it_at(r, "embedding");
    assert_true(json_real_value(json_array_get(emb, 0)) == -1.5);
    assert_true(fabs(json_real_value(json_array_get(emb, 2)) - 3e20) < 1e14);
    r = json_array_get(bd_it_at(j, "results"), 3);      /* NaN/Infinity cannot be JSON */
    assert_int_equal(bd_it_int(r, "index"), 4);
    emb = bd_it_at(r, "embedding");
    assert_true(json_is_null(json_array_get(emb, 0)));
    assert_true(json_is_null(json_array_get(emb, 1)));
    assert_true(json_is_null(json_array_get(emb, 2)));
    assert_int_equal(json_array_size(bd_it_at(r, "metadata.n")), 2);
    assert_true(json_is_null(bd_it_at(j, "next_cursor")));
    json_decref(j);
}

static void results_pages_cover_every_vector_once(void **state)
{
    static char seen[BIG_ROWS];
    char cursor[64] = "";
    int total = 0, pages = 0;

    (void)state;
    memset(seen, 0, sizeof(seen));
    for (;;) {
        json_t *j = bd_it_get_ok(&g_proc, "/api/v1/batch/jobs/%sbig/results?limit=1000%s%s", g_pfx,
                              cursor[0] ? "&cursor=" : "", cursor);
        json_t *r;
        size_t i;

        pages++;
        json_array_foreach(bd_it_at(j, "results"), i, r) {
            long long idx = bd_it_int(r, "index");
            assert_true(idx >= 0 && idx < BIG_ROWS);
            assert_int_equal(seen[idx], 0);
            seen[idx] = 1;
            total++;
            assert_int_equal(json_array_size(bd_it_at(r, "embedding")), BIG_DIMS);
            assert_int_equal(bd_it_int(r, "metadata.i"), idx);
        }
        if (json_is_null(bd_it_at(j, "next_cursor"))) {
            json_decref(j);
            break;
        }
        snprintf(cursor, sizeof(cursor), "%s", bd_it_str(j, "next_cursor"));
        json_decref(j);
        assert_true(pages <= BIG_ROWS / 1000 + 1);
    }
    assert_int_equal(total, BIG_ROWS);
    assert_int_equal(pages, BIG_ROWS / 1000);
}

static void results_stream_as_json_lines(void **state)
{
    const char *hdrs[] = { "Accept: application/x-ndjson", NULL };
    struct bd_it_resp r;
    char path[256], ct[128];
    const char *line;
    int n = 0;

    (void)state;
    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%sbig/results", g_pfx);
    it_get_raw(path, hdrs, 200, &r);
    assert_non_null(bd_it_resp_header(&r, "Content-Type", ct, sizeof(ct)));
    assert_string_equal(ct, "application/x-ndjson");
    line = r.body;
    while (*line) {
        const char *nl = strchr(line, '\n');
        json_t *j;
        assert_non_null(nl);
        j = json_loadb(line, (size_t)(nl - line), 0, NULL);
        assert_non_null(j);
        assert_int_equal(bd_it_int(j, "index"), n);
        assert_int_equal(json_array_size(bd_it_at(j, "embedding")), BIG_DIMS);
        json_decref(j);
        n++;
        line = nl + 1;
    }
    assert_int_equal(n, BIG_ROWS);
    bd_it_resp_free(&r);

    /* From a cursor, through ?format=ndjson. */
    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%sbig/results?format=ndjson&cursor=i9990",
             g_pfx);
    it_get_raw(path, NULL, 200, &r);
    assert_int_equal(bd_it_count(r.body, "\n"), 10);
    assert_true(strncmp(r.body, "{\"index\":9990,", 14) == 0);
    bd_it_resp_free(&r);
}

/* Wide vectors (40 of 16,384 random floats, 64 KiB each as stored): a page stops at the row
 * that reaches 1 MiB of stored data (~3.5 MB of JSON), with has_more and a cursor, and the
 * pages still cover every vector once; the JSON Lines stream delivers them all. Before, a
 * page of limit=1000 such rows would be read, built and queued whole (250 MB at 65,536
 * dimensions, three times over). */
#define WIDE_ROWS 40
#define WIDE_DIMS 16384

static void results_pages_are_cut_by_bytes_when_vectors_are_wide(void **state)
{
    char cursor[64] = "", path[256];
    int total = 0, pages = 0;
    size_t max_page = 0;
    struct bd_it_resp r;

    (void)state;
    assert_int_equal(it_psql(
        "INSERT INTO collections (name, dimension) VALUES ('itread_wide', %d);"
        "INSERT INTO jobs (id, seq, operation, model, collection, status, priority, batch_size,"
        " total_items, total_batches, next_batch, processed_items, failed_items,"
        " stored_vectors, created_at, started_at, completed_at) VALUES"
        " (:'pfx' || 'wide', 1007, 'bulk_insert', NULL, 'itread_wide', 'completed', 1, %d, %d,"
        "  1, 1, %d, 0, %d, now(), now(), now());"
        "INSERT INTO vectors (collection, id, embedding, metadata, job_id, item_index)"
        " SELECT 'itread_wide', 'w' || i, ARRAY(SELECT (random() * 2 - 1)::real"
        "  FROM generate_series(1, %d) WHERE i >= 0), jsonb_build_object('i', i),"
        " :'pfx' || 'wide', i FROM generate_series(0, %d) i;",
        WIDE_DIMS, WIDE_ROWS, WIDE_ROWS, WIDE_ROWS, WIDE_ROWS, WIDE_DIMS, WIDE_ROWS - 1), 0);
    for (;;) {
        long status = 0;
        snprintf(path, sizeof(path), "/api/v1/batch/jobs/%swide/results?limit=1000%s%s", g_pfx,
                 cursor[0] ? "&cursor=" : "", cursor);
        json_t *j = it_get(path, &status), *row;
        size_t i, n;

        assert_int_equal(status, 200);
        n = json_array_size(bd_it_at(j, "results"));
        pages++;
        if (n > max_page)
            max_page = n;
        json_array_foreach(bd_it_at(j, "results"), i, row) {
            assert_int_equal(bd_it_int(row, "index"), total);
            assert_int_equal(json_array_size(bd_it_at(row, "embedding")), WIDE_DIMS);
            total++;
        }
        if (json_is_null(bd_it_at(j, "next_cursor"))) {
            assert_true(json_is_false(bd_it_at(j, "has_more")));
            json_decref(j);
            break;
        }
        if (total < WIDE_ROWS)
            assert_true(json_is_true(bd_it_at(j, "has_more")));
        snprintf(cursor, sizeof(cursor), "%s", bd_it_str(j, "next_cursor"));
        json_decref(j);
        assert_true(pages <= WIDE_ROWS);
    }
    print_message("    %d wide vectors in %d pages, at most %zu a page\n", total, pages, max_page);
    assert_int_equal(total, WIDE_ROWS);
    assert_true(pages >= 3);
    assert_true(max_page <= 20);

    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%swide/results?format=ndjson", g_pfx);
    it_get_raw(path, NULL, 200, &r);
    assert_int_equal(bd_it_count(r.body, "\n"), WIDE_ROWS);
    assert_null(strstr(r.body, "\"error\""));
    bd_it_resp_free(&r);
}

/* A reader slower than the server: the stream waits for the socket to drain (backpressure)
 * and still delivers every line; a reader that leaves midway is cleaned up. */
static void results_stream_survives_slow_and_leaving_readers(void **state)
{
    struct bd_it_raw c;
    char path[256];
    double deadline;
    long end;

    (void)state;
    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%sbig/results", g_pfx);
    bd_it_raw_open(&c, g_proc.port, "GET", path, "Accept: application/x-ndjson\r\n", 16384);
    /* The server fills the socket, then waits: the bytes waiting for us stop growing (the
     * same for 300 ms) long before the stream could have been sent whole. */
    {
        size_t unread = 0;
        double stable_since = bd_it_now();
        deadline = stable_since + 20;
        for (;;) {
            size_t n = bd_it_raw_unread(&c);
            if (n != unread) {
                unread = n;
                stable_since = bd_it_now();
            } else if (n > 0 && bd_it_now() - stable_since >= 0.3) {
                break;
            }
            if (bd_it_now() > deadline)
                fail_msg("the stream did not stall on a reader that does not read "
                         "(%zu bytes unread)", n);
            bd_it_sleep_ms(20);
        }
        /* Only a part of the stream is here: its end is not among the bytes waiting. */
        char *peek = malloc(unread + 1);
        assert_non_null(peek);
        ssize_t got = recv(c.fd, peek, unread, MSG_PEEK);
        assert_true(got > 0);
        peek[got] = '\0';
        assert_null(strstr(peek, "0\r\n\r\n"));
        assert_true(bd_it_count(peek, "}\n") < BIG_ROWS);
        free(peek);
    }
    deadline = bd_it_now() + 60;
    while (!c.is_eof && bd_it_now() < deadline) {
        bd_it_raw_read(&c, 200, 16384);
        if (c.len > 5 && memcmp(c.buf + c.len - 5, "0\r\n\r\n", 5) == 0)
            break;
    }
    end = c.len >= 5 && memcmp(c.buf + c.len - 5, "0\r\n\r\n", 5) == 0;
    assert_true(end);
    assert_int_equal(bd_it_count(c.buf, "}\n"), BIG_ROWS);
    bd_it_raw_close(&c);

    for (int i = 0; i < 3; i++) {
        bd_it_raw_open(&c, g_proc.port, "GET", path, "Accept: application/x-ndjson\r\n", 8192);
        assert_true(bd_it_raw_wait(&c, "\"index\":10,", 0, 10) >= 0);
        bd_it_raw_close(&c);                /* gone with most of the stream unsent */
    }
    /* The server is fine, and so is the next stream. */
    json_decref(bd_it_get_ok(&g_proc, "/healthz"));
    bd_it_raw_open(&c, g_proc.port, "GET", path, "Accept: application/x-ndjson\r\n", 0);
    assert_true(bd_it_raw_wait(&c, "0\r\n\r\n", 0, 30) >= 0);
    assert_int_equal(bd_it_count(c.buf, "}\n"), BIG_ROWS);
    bd_it_raw_close(&c);
}

/* ---- events --------------------------------------------------------------------------- */

static void events_follow_progress_to_final(void **state)
{
    struct bd_it_raw c;
    char path[256];
    long at;
    double t0;

    (void)state;
    assert_int_equal(
        it_psql("INSERT INTO jobs (id, seq, operation, model, collection, status, priority,"
                " batch_size, total_items, total_batches, next_batch, processed_items,"
                " started_at) VALUES (:'pfx' || 'sse', 3001, 'bulk_embed', 'mixtral', 'itread_c',"
                " 'processing', 1, 2, 10, 5, 1, 2, now());"),
        0);
    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%ssse/events", g_pfx);
    bd_it_raw_open(&c, g_proc.port, "GET", path, NULL, 0);
    at = bd_it_raw_wait(&c, "event: progress\ndata: {", 0, 5);
    assert_true(at >= 0);
    assert_non_null(strstr(c.buf, "Content-Type: text/event-stream"));
    assert_non_null(strstr(c.buf, "Cache-Control: no-cache"));
    assert_true(bd_it_raw_wait(&c, "\"processed_items\":2", (size_t)at, 2) >= 0);

    /* Nothing changes: no second event within a few polls. */
    bd_it_sleep_ms(700);
    bd_it_raw_read(&c, 10, 0);
    assert_int_equal(bd_it_count(c.buf, "event: "), 1);

    /* Another process checkpoints (we play it with psql): a progress event follows. */
    t0 = bd_it_now();
    assert_int_equal(it_psql("UPDATE jobs SET processed_items = 4, next_batch = 2"
                             " WHERE id = :'pfx' || 'sse';"),
                     0);
    at = bd_it_raw_wait(&c, "\"processed_items\":4", (size_t)at, 5);
    assert_true(at >= 0);
    assert_true(bd_it_now() - t0 < 2.0);           /* poll interval is 0.2 s */
    assert_int_equal(bd_it_count(c.buf, "event: progress"), 2);

    assert_int_equal(it_psql("UPDATE jobs SET status = 'completed', processed_items = 10,"
                             " next_batch = 5, completed_at = now() WHERE id = :'pfx' || 'sse';"),
                     0);
    at = bd_it_raw_wait(&c, "event: final\ndata: {", (size_t)at, 5);
    assert_true(at >= 0);
    assert_true(bd_it_raw_wait(&c, "\"status\":\"completed\"", (size_t)at, 2) >= 0);
    assert_true(bd_it_raw_wait(&c, "0\r\n\r\n", (size_t)at, 5) >= 0);   /* the stream ended */
    bd_it_raw_close(&c);
}

static void events_send_only_final_when_terminal(void **state)
{
    struct bd_it_raw c;
    char path[256];

    (void)state;
    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%sdone/events", g_pfx);
    bd_it_raw_open(&c, g_proc.port, "GET", path, NULL, 0);
    assert_true(bd_it_raw_wait(&c, "0\r\n\r\n", 0, 5) >= 0);
    assert_int_equal(bd_it_count(c.buf, "event: final\n"), 1);
    assert_int_equal(bd_it_count(c.buf, "event: progress"), 0);
    bd_it_raw_close(&c);
}

static void events_end_when_client_leaves_or_job_vanishes(void **state)
{
    struct bd_it_raw c;
    char path[256];

    (void)state;
    assert_int_equal(
        it_psql("INSERT INTO jobs (id, seq, operation, model, collection, status, priority,"
                " batch_size, total_items, total_batches) VALUES"
                " (:'pfx' || 'sse2', 3002, 'bulk_embed', 'mixtral', 'itread_c', 'queued', 1, 2,"
                " 10, 5), (:'pfx' || 'gone', 3003, 'bulk_embed', 'mixtral', 'itread_c', 'queued',"
                " 1, 2, 10, 5);"),
        0);
    /* Several clients come and go. */
    for (int i = 0; i < 5; i++) {
        snprintf(path, sizeof(path), "/api/v1/batch/jobs/%ssse2/events", g_pfx);
        bd_it_raw_open(&c, g_proc.port, "GET", path, NULL, 0);
        assert_true(bd_it_raw_wait(&c, "event: progress", 0, 5) >= 0);
        bd_it_raw_close(&c);
    }
    /* A job deleted while watched: an error event, then the end. */
    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%sgone/events", g_pfx);
    bd_it_raw_open(&c, g_proc.port, "GET", path, NULL, 0);
    assert_true(bd_it_raw_wait(&c, "event: progress", 0, 5) >= 0);
    assert_int_equal(it_psql("DELETE FROM jobs WHERE id = :'pfx' || 'gone';"), 0);
    assert_true(bd_it_raw_wait(&c, "event: error\ndata: {\"error\":{\"code\":\"not_found\"", 0, 5)
                >= 0);
    assert_true(bd_it_raw_wait(&c, "0\r\n\r\n", 0, 5) >= 0);
    bd_it_raw_close(&c);
    json_decref(bd_it_get_ok(&g_proc, "/healthz"));
}

/* Event streams are capped at a quarter of max_connections (each holds a connection, two
 * timers and PostgreSQL polls): with max_connections 8, the third stream gets 503
 * too_many_streams with Retry-After, and a stream that ends makes room again. */
static void events_are_capped_at_a_quarter_of_the_connections(void **state)
{
    struct bd_it_proc p;
    struct bd_it_raw c[3];
    struct bd_it_resp r;
    char path[256];

    (void)state;
    assert_int_equal(bd_it_start(&p, "http:\n  max_connections: 8\n", NULL), 0);
    /* After p's start (its queue rebuild would queue it): a job nobody runs. */
    assert_int_equal(
        it_psql("INSERT INTO jobs (id, seq, operation, model, collection, status, priority,"
                " batch_size, total_items, total_batches) VALUES"
                " (:'pfx' || 'capped', 3010, 'bulk_embed', 'mixtral', 'itread_c', 'queued', 1,"
                " 2, 10, 5);"),
        0);
    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%scapped/events", g_pfx);
    for (int i = 0; i < 2; i++) {
        bd_it_raw_open(&c[i], p.port, "GET", path, NULL, 0);
        assert_true(bd_it_raw_wait(&c[i], "event: progress", 0, 5) >= 0);
    }
    bd_it_raw_open(&c[2], p.port, "GET", path, NULL, 0);
    assert_int_equal(bd_it_raw_response(&c[2], &r, false, 5000), 0);
    assert_int_equal(r.status, 503);
    assert_non_null(strstr(r.body, "too_many_streams"));
    char ra[16];
    assert_non_null(bd_it_resp_header(&r, "Retry-After", ra, sizeof(ra)));
    bd_it_resp_free(&r);
    bd_it_raw_close(&c[2]);
    bd_it_raw_close(&c[0]);                     /* one ends: room for another */
    bool is_open = false;
    for (double deadline = bd_it_now() + 5; !is_open && bd_it_now() < deadline;) {
        bd_it_raw_open(&c[2], p.port, "GET", path, NULL, 0);
        is_open = bd_it_raw_wait(&c[2], "event: progress", 0, 2) >= 0;
        bd_it_raw_close(&c[2]);
        if (!is_open)
            bd_it_sleep_ms(100);
    }
    assert_true(is_open);
    bd_it_raw_close(&c[1]);
    assert_int_equal(it_psql("DELETE FROM jobs WHERE id = :'pfx' || 'capped';"), 0);
    assert_int_equal(bd_it_stop(&p, SIGTERM, 20), 0);
}

/* HEAD answers at once, with the headers a GET would get and nothing after them, and is
 * done: a GET of the same events would stream for as long as the job runs (sse2 is queued
 * and held) and a GET of the results sends BIG_ROWS rows, yet the head, and then the answer
 * to a second request on the same connection, arrive within HEAD_BOUND_S. */
#define HEAD_BOUND_S 2.0
static void head_arrives_alone(const char *path, const char *extra_headers, const char *ct)
{
    struct bd_it_raw c;
    char want_ct[128];

    double t0 = bd_it_now();
    bd_it_raw_open(&c, g_proc.port, "HEAD", path, extra_headers, 0);
    long end = bd_it_raw_wait(&c, "\r\n\r\n", 0, HEAD_BOUND_S);
    if (end < 0)
        fail_msg("HEAD %s: no complete head within %.1f s (got %zu bytes)", path, HEAD_BOUND_S,
                 c.len);
    assert_true(strncmp(c.buf, "HTTP/1.1 200 ", 13) == 0);
    snprintf(want_ct, sizeof(want_ct), "\r\nContent-Type: %s\r\n", ct);
    if (strstr(c.buf, want_ct) == NULL)
        fail_msg("HEAD %s: no \"Content-Type: %s\" in %.*s", path, ct, (int)end, c.buf);

    /* The HEAD answer is over: the server answers the next request on the connection, and
     * no byte of a body comes between the two. */
    bd_it_raw_send(&c, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    long next = bd_it_raw_wait(&c, "HTTP/1.1 200 ", (size_t)end + 4,
                               HEAD_BOUND_S - (bd_it_now() - t0));
    double took = bd_it_now() - t0;
    if (next < 0)
        fail_msg("HEAD %s: the next request got no answer within %.1f s (HEAD not done)",
                 path, HEAD_BOUND_S);
    assert_true(took < HEAD_BOUND_S);
    if (next != end + 4)
        fail_msg("HEAD %s: %ld body bytes after the head: %.80s", path, next - (end + 4),
                 c.buf + end + 4);
    bd_it_raw_close(&c);
}

static void streams_answer_head_at_once(void **state)
{
    char path[512];

    (void)state;
    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%ssse2/events", g_pfx);
    head_arrives_alone(path, NULL, "text/event-stream");
    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%sbig/results", g_pfx);
    head_arrives_alone(path, "Accept: application/x-ndjson\r\n", "application/x-ndjson");
}

/* SIGTERM while a client watches a job that will not finish: the stream ends (the client
 * reconnects elsewhere) and the process exits cleanly instead of waiting for the job. */
static void events_end_when_server_stops(void **state)
{
    struct bd_it_proc p;
    struct bd_it_raw c;
    char path[256];
    double t0;

    (void)state;
    assert_int_equal(bd_it_start(&p, "jobs:\n  progress_update_interval: 1\n", NULL), 0);
    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%ssse2/events", g_pfx);
    memset(&c, 0, sizeof(c));
    bd_it_raw_open(&c, p.port, "GET", path, NULL, 0);
    assert_true(bd_it_raw_wait(&c, "event: progress", 0, 5) >= 0);
    t0 = bd_it_now();
    assert_int_equal(bd_it_stop(&p, SIGTERM, 15), 0);
    assert_true(bd_it_now() - t0 < 5.0);
    assert_true(bd_it_raw_wait(&c, "0\r\n\r\n", 0, 2) >= 0 || c.is_eof);
    bd_it_raw_close(&c);
}

/* A job this process runs (bulk_insert needs no model): events come from the engine's
 * checkpoints. Skipped when submit is not available in this build. */
static void events_follow_a_job_run_here(void **state)
{
    struct bd_it_resp r;
    struct { char *p; size_t n; } body = { NULL, 0 };
    struct bd_it_raw c;
    char url[256], path[256];
    const char *job_id;
    json_t *j;
    FILE *f;

    (void)state;
    f = open_memstream(&body.p, &body.n);
    fprintf(f, "{\"operation\":\"bulk_insert\",\"collection\":\"itread_rt\","
               "\"options\":{\"batch_size\":50},\"data\":[");
    for (int i = 0; i < 2000; i++)
        fprintf(f, "%s{\"id\":\"rt_%d\",\"embedding\":[%d,0.5,0.25]}", i ? "," : "", i, i);
    fprintf(f, "]}");
    fclose(f);
    snprintf(url, sizeof(url), "%s/api/v1/batch/jobs", g_proc.base);
    assert_int_equal(bd_it_http("POST", url, body.p, NULL, &r), 0);
    free(body.p);
    if (r.status != 202 && r.status != 200) {
        fprintf(stderr, "submit answered %ld (%.200s): skipping\n", r.status, r.body);
        bd_it_resp_free(&r);
        skip();
    }
    j = json_loads(r.body, 0, NULL);
    bd_it_resp_free(&r);
    assert_non_null(j);
    job_id = bd_it_str(j, "job_id");
    assert_non_null(job_id);
    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%s/events", job_id);
    bd_it_raw_open(&c, g_proc.port, "GET", path, NULL, 0);
    assert_true(bd_it_raw_wait(&c, "event: final\ndata: {", 0, 30) >= 0);
    assert_true(bd_it_raw_wait(&c, "\"processed_items\":2000", 0, 1) >= 0);
    assert_true(bd_it_raw_wait(&c, "0\r\n\r\n", 0, 5) >= 0);
    bd_it_raw_close(&c);
    json_decref(j);
}

/* ---- debug ---------------------------------------------------------------------------- */

static void debug_shows_batches_and_lease(void **state)
{
    json_t *j, *b;

    (void)state;
    j = bd_it_get_ok(&g_proc, "/api/v1/batch/debug/job/%srun", g_pfx);
    assert_string_equal(bd_it_str(j, "job.status"), "processing");
    assert_int_equal(bd_it_int(j, "job.errors_count"), 1);
    assert_int_equal(json_array_size(bd_it_at(j, "batches")), 3);
    assert_int_equal(bd_it_int(j, "batches_total"), 3);
    assert_true(json_is_false(bd_it_at(j, "batches_truncated")));
    b = json_array_get(bd_it_at(j, "batches"), 1);
    assert_int_equal(bd_it_int(b, "batch_no"), 1);
    assert_int_equal(bd_it_int(b, "first_index"), 2);
    assert_int_equal(bd_it_int(b, "item_count"), 2);
    assert_string_equal(bd_it_str(b, "status"), "done");
    assert_int_equal(bd_it_int(b, "attempts"), 2);
    assert_string_equal(bd_it_str(b, "last_error"), "timeout");
    assert_int_equal(bd_it_int(b, "duration_ms"), 400);
    assert_int_equal(strlen(bd_it_str(b, "updated_at")), 20);
    b = json_array_get(bd_it_at(j, "batches"), 2);
    assert_true(json_is_null(bd_it_at(b, "duration_ms")));
    assert_string_equal(bd_it_str(j, "lease.owner"), "other-worker");
    assert_true(json_is_true(bd_it_at(j, "lease.in_flight")));
    assert_true(bd_it_int(j, "lease.deadline_ms") > it_now_ms());
    assert_true(json_is_null(bd_it_at(j, "local")));
    json_decref(j);

    j = bd_it_get_ok(&g_proc, "/api/v1/batch/debug/job/%sdone", g_pfx);
    assert_true(json_is_false(bd_it_at(j, "lease.in_flight")));
    assert_true(json_is_null(bd_it_at(j, "lease.owner")));
    assert_int_equal(json_array_size(bd_it_at(j, "batches")), 2);
    json_decref(j);
}

/* ---- PostgreSQL down ------------------------------------------------------------------ */

static void every_read_route_answers_503_when_postgres_is_down(void **state)
{
    /* One route per code path (each costs the pool's 5 s acquire timeout): one query, the
     * list, the JSON Lines stream and the event stream. */
    const char *routes[] = { "/jobs", "/jobs/x1/status", "/jobs/x1/results?format=ndjson",
                             "/jobs/x1/events" };
    struct bd_it_proc p;

    (void)state;
    /* Nothing listens on port 1: every query fails after the pool's acquire timeout. */
    setenv("BATCH_POSTGRES_URL", "postgresql://batchd@127.0.0.1:1/batchd?connect_timeout=1", 1);
    setenv("BD_IT_WAIT", "healthz", 1);              /* it will never be ready */
    assert_int_equal(bd_it_start(&p, NULL, NULL), 0);
    unsetenv("BD_IT_WAIT");
    setenv("BATCH_POSTGRES_URL", g_scr.pg_url, 1);
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
        char url[512];
        struct bd_it_resp r;
        json_t *j;

        snprintf(url, sizeof(url), "%s/api/v1/batch%s", p.base, routes[i]);
        assert_int_equal(bd_it_http("GET", url, NULL, NULL, &r), 0);
        if (r.status != 503)
            fprintf(stderr, "%s -> %ld %.200s\n", url, r.status, r.body);
        assert_int_equal(r.status, 503);
        j = json_loads(r.body, 0, NULL);
        assert_string_equal(bd_it_str(j, "error.code"), "store_unavailable");
        json_decref(j);
        bd_it_resp_free(&r);
    }
    assert_int_equal(bd_it_stop(&p, SIGTERM, 20), 0);
}

/* ---- auth ----------------------------------------------------------------------------- */

static void every_read_route_checks_the_api_key(void **state)
{
    const char *env[] = { "BATCH_API_KEYS=itread-key", "BATCH_METRICS_REQUIRE_KEY=true", NULL };
    const char *key[] = { "X-API-Key: itread-key", NULL };
    const char *routes[] = { "/jobs", "/jobs/%sdone", "/jobs/%sdone/status",
                             "/jobs/%sdone/items", "/jobs/%sdone/results",
                             "/jobs/%sdone/events", "/debug/job/%sdone" };
    struct bd_it_proc p;
    struct bd_it_resp r;

    (void)state;
    assert_int_equal(bd_it_start(&p, NULL, env), 0);
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
        char route[256], url[512];
        snprintf(route, sizeof(route), routes[i], g_pfx);
        snprintf(url, sizeof(url), "%s/api/v1/batch%s", p.base, route);
        assert_int_equal(bd_it_http("GET", url, NULL, NULL, &r), 0);
        assert_int_equal(r.status, 401);
        bd_it_resp_free(&r);
        assert_int_equal(bd_it_http("GET", url, NULL, key, &r), 0);
        if (r.status != 200)
            fprintf(stderr, "%s -> %ld %.200s\n", url, r.status, r.body);
        assert_int_equal(r.status, 200);
        bd_it_resp_free(&r);
    }
    /* metrics.require_key: the Prometheus scrape needs the key too; health checks do not. */
    {
        char url[512];
        snprintf(url, sizeof(url), "%s/metrics", p.base);
        assert_int_equal(bd_it_http("GET", url, NULL, NULL, &r), 0);
        assert_int_equal(r.status, 401);
        bd_it_resp_free(&r);
        assert_int_equal(bd_it_http("GET", url, NULL, key, &r), 0);
        assert_int_equal(r.status, 200);
        assert_non_null(strstr(r.body, "batchd_jobs"));
        bd_it_resp_free(&r);
        snprintf(url, sizeof(url), "%s/healthz", p.base);
        assert_int_equal(bd_it_http("GET", url, NULL, NULL, &r), 0);
        assert_int_equal(r.status, 200);
        bd_it_resp_free(&r);
    }
    /* A key of the right length with one byte wrong, and a prefix of the key: 401. */
    const char *near[] = { "X-API-Key: itread-kez", "X-API-Key: itread-ke",
                           "Authorization: Bearer itread-key", NULL };
    for (int k = 0; k < 3; k++) {
        const char *h[] = { near[k], NULL };
        char url[512];
        snprintf(url, sizeof(url), "%s/api/v1/batch/jobs", p.base);
        assert_int_equal(bd_it_http("GET", url, NULL, h, &r), 0);
        assert_int_equal(r.status, k == 2 ? 200 : 401);
        bd_it_resp_free(&r);
    }
    /* Without a key, a request's body is never read: a POST announcing 50 MB gets its 401
     * from the headers alone (before: the server waited for the body, then 408). */
    struct bd_it_raw c;
    char path[256];
    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%sdone/retry", g_pfx);
    bd_it_raw_open(&c, p.port, "POST", path,
                   "Content-Type: application/json\r\nContent-Length: 50000000\r\n", 0);
    assert_int_equal(bd_it_raw_response(&c, &r, false, 2000), 0);
    assert_int_equal(r.status, 401);
    assert_true(r.seconds < 1.0);
    bd_it_resp_free(&r);
    bd_it_raw_close(&c);
    assert_int_equal(bd_it_stop(&p, SIGTERM, 20), 0);
}

/* http.allowed_hosts: a request must name an allowed host (any port, any case) or get a 421
 * before any handler runs -- a page on a rebound DNS name reaches 127.0.0.1 with its own
 * name in Host. Health probes answer whatever the Host. */
static void only_allowed_hosts_are_answered_when_list_set(void **state)
{
    const char *env[] = { "BATCH_ALLOWED_HOSTS=batchd.internal,127.0.0.1", NULL };
    static const struct { const char *path, *host; long want; } cases[] = {
        { "/api/v1/batch/jobs?limit=1", "127.0.0.1:%d", 200 },
        { "/api/v1/batch/jobs?limit=1", "BATCHD.Internal", 200 },
        { "/api/v1/batch/jobs?limit=1", "batchd.internal:%d", 200 },
        { "/api/v1/batch/jobs?limit=1", "evil.example:%d", 421 },
        { "/api/v1/batch/jobs?limit=1", "batchd.internal.evil.example", 421 },
        { "/api/v1/batch/queue/status", "127.0.0.2:%d", 421 },
        { "/metrics", "evil.example", 421 },
        { "/healthz", "evil.example", 200 },
        { "/readyz", "evil.example", 200 },
        { "/api/v1/batch/jobs?limit=1", NULL, 421 },           /* HTTP/1.0 without Host */
    };
    struct bd_it_proc p;
    struct bd_it_resp r;

    (void)state;
    assert_int_equal(bd_it_start(&p, NULL, env), 0);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct bd_it_raw c;
        char host[128], req[512];

        snprintf(host, sizeof(host), cases[i].host ? cases[i].host : "", p.port);
        if (cases[i].host)
            snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", cases[i].path,
                     host);
        else
            snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\n\r\n", cases[i].path);
        bd_it_raw_connect(&c, p.port);
        bd_it_raw_send(&c, req);
        assert_int_equal(bd_it_raw_response(&c, &r, false, 5000), 0);
        if (r.status != cases[i].want)
            fprintf(stderr, "%s Host %s -> %ld %.200s\n", cases[i].path, host, r.status, r.body);
        assert_int_equal(r.status, cases[i].want);
        if (cases[i].want == 421)
            assert_non_null(strstr(r.body, "\"host_not_allowed\""));
        bd_it_resp_free(&r);
        bd_it_raw_close(&c);
    }
    assert_int_equal(bd_it_stop(&p, SIGTERM, 20), 0);
}

/* A web page on another site can make a browser POST without asking first when the POST
 * has no Content-Type or a form type and no custom header: batchd refuses such POSTs (415)
 * before any handler runs, so a page cannot retry or cancel jobs. JSON, or a key header,
 * is what curl and SDKs send. */
static void post_without_json_or_key_is_refused_as_cross_site(void **state)
{
    static const char *const simple[] = {
        "Content-Length: 0\r\n",
        "Content-Type: text/plain\r\nContent-Length: 0\r\n",
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 0\r\n",
    };
    struct bd_it_resp r;
    struct bd_it_raw c;
    char path[256];

    (void)state;
    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%sdone/retry", g_pfx);
    for (size_t i = 0; i < sizeof(simple) / sizeof(simple[0]); i++) {
        bd_it_raw_open(&c, g_proc.port, "POST", path, simple[i], 0);
        assert_int_equal(bd_it_raw_response(&c, &r, false, 5000), 0);
        if (r.status != 415)
            fprintf(stderr, "%s-> %ld %.200s\n", simple[i], r.status, r.body);
        assert_int_equal(r.status, 415);
        json_t *j = json_loads(r.body, 0, NULL);
        assert_string_equal(bd_it_str(j, "error.field"), "Content-Type");
        json_decref(j);
        bd_it_resp_free(&r);
        bd_it_raw_close(&c);
    }
    /* The same POST with a JSON type, or with a key header, reaches the handler. */
    const char *ok[] = { "Content-Type: application/json\r\nContent-Length: 0\r\n",
                         "X-API-Key: anything\r\nContent-Length: 0\r\n" };
    for (size_t i = 0; i < 2; i++) {
        bd_it_raw_open(&c, g_proc.port, "POST", path, ok[i], 0);
        assert_int_equal(bd_it_raw_response(&c, &r, false, 5000), 0);
        assert_true(r.status != 415);
        bd_it_resp_free(&r);
        bd_it_raw_close(&c);
    }
}

int main(void)
{
    bd_it_apply_filter();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(status_has_seed_shape_when_completed),
        cmocka_unit_test(status_extrapolates_when_processing),
        cmocka_unit_test(status_has_nulls_when_queued),
        cmocka_unit_test(status_has_error_when_failed),
        cmocka_unit_test(bad_requests_get_json_errors),
        cmocka_unit_test(job_has_options_metadata_and_errors),
        cmocka_unit_test(list_pages_cover_every_job_once),
        cmocka_unit_test(list_filters_by_status_and_operation),
        cmocka_unit_test(items_report_failed_succeeded_and_all),
        cmocka_unit_test(results_convert_embeddings_and_metadata),
        cmocka_unit_test(results_pages_cover_every_vector_once),
        cmocka_unit_test(results_stream_as_json_lines),
        cmocka_unit_test(results_pages_are_cut_by_bytes_when_vectors_are_wide),
        cmocka_unit_test(results_stream_survives_slow_and_leaving_readers),
        cmocka_unit_test(events_follow_progress_to_final),
        cmocka_unit_test(events_send_only_final_when_terminal),
        cmocka_unit_test(events_end_when_client_leaves_or_job_vanishes),
        cmocka_unit_test(events_are_capped_at_a_quarter_of_the_connections),
        cmocka_unit_test(streams_answer_head_at_once),
        cmocka_unit_test(events_end_when_server_stops),
        cmocka_unit_test(events_follow_a_job_run_here),
        cmocka_unit_test(debug_shows_batches_and_lease),
        cmocka_unit_test(every_read_route_checks_the_api_key),
        cmocka_unit_test(only_allowed_hosts_are_answered_when_list_set),
        cmocka_unit_test(post_without_json_or_key_is_refused_as_cross_site),
        cmocka_unit_test(every_read_route_answers_503_when_postgres_is_down),
    };

    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests_name("it_api_read", tests, it_setup, it_teardown);
}
