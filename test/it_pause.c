/* it_pause.c -- integration tests for pausing the queue (POST /queue/pause, /queue/resume,
 * job_pause.c) and the bulk retry (POST /jobs/retry-failed), against the real stack, two
 * batchd processes and the fake model:
 *   - a pause answered by one process stops the other's claims within a second; a job
 *     submitted while paused stays queued and runs after the resume;
 *   - a running job lets its batch at the model finish (no aborted request), then waits in
 *     the queue; it ends completed, every item done, after the resume;
 *   - a model's pause leaves the other models running;
 *   - the pause survives a restart of batchd (PostgreSQL holds it);
 *   - an unknown model is refused with 400; pausing twice is 200 (idempotent);
 *   - the bulk retry takes only the finished jobs with failed items, bounded per call.
 *
 * Isolation: a PostgreSQL schema of its own ("itpa_<pid>", through search_path in the URL;
 * batchd migrates it) and a Redis database of its own (BD_IT_PAUSE_REDIS_DB, default 10),
 * both dropped at the end. SPDX-License-Identifier: MIT
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bd_it.h"
#include "fake_model/fake_model_client.h"

static struct bd_it_scratch g_scr;   /* own schema and Redis db */
static pid_t g_fm_pid = -1;
static int g_fm_port;

#define Q "/api/v1/batch/queue"

/* Models ma, mb and mc, all on the fake; a fast claim timer. */
static void it_yaml(char *out, size_t len, unsigned concurrency)
{
    snprintf(out, len,
             "jobs:\n  max_concurrent_jobs: 4\n  processing_interval: 0.1\n"
             "  reaper_interval: 0.5\n  retry_delay: 0.05\n"
             "models:\n"
             "  - name: ma\n    provider: ollama\n    base_url: http://127.0.0.1:%d\n"
             "    dimensions: 4\n    concurrency: %u\n    timeout: 30\n"
             "  - name: mb\n    provider: ollama\n    base_url: http://127.0.0.1:%d\n"
             "    dimensions: 4\n    timeout: 30\n"
             "  - name: mc\n    provider: ollama\n    base_url: http://127.0.0.1:%d\n"
             "    dimensions: 4\n    timeout: 30\n",
             g_fm_port, concurrency, g_fm_port, g_fm_port);
}

static char *it_submit(struct bd_it_proc *p, const char *model, unsigned items,
                       unsigned batch_size, int max_retries)
{
    static unsigned seq;               /* texts of their own: no embedding cache hit */
    char body[8192];
    size_t n;
    long st = 0;

    seq++;

    n = (size_t)snprintf(body, sizeof(body), "{\"operation\":\"bulk_embed\",\"model\":\"%s\","
                         "\"collection\":\"itpa_%s\",\"data\":[", model, model);
    for (unsigned i = 0; i < items; i++)
        n += (size_t)snprintf(body + n, sizeof(body) - n, "%s{\"text\":\"t%u %s %d %u\"}",
                              i ? "," : "", i, model, (int)getpid(), seq);
    if (max_retries >= 0)
        snprintf(body + n, sizeof(body) - n,
                 "],\"options\":{\"batch_size\":%u,\"max_retries\":%d}}", batch_size,
                 max_retries);
    else
        snprintf(body + n, sizeof(body) - n, "],\"options\":{\"batch_size\":%u}}", batch_size);
    char *id = bd_it_submit(p, body, &st);
    assert_int_equal(st, 202);
    assert_non_null(id);
    return id;
}

/* POST path; fails unless the answer has status want and is JSON. Caller decrefs. */
static json_t *it_post(struct bd_it_proc *p, const char *path, long want)
{
    long st = 0;
    json_t *j = bd_it_json(p, "POST", path, NULL, &st);
    if (st != want || j == NULL)
        fail_msg("POST %s -> %ld, want %ld", path, st, want);
    return j;
}

static bool it_is_true(json_t *j, const char *path)
{
    json_t *v = bd_it_at(j, path);
    if (v == NULL || !json_is_boolean(v))
        fail_msg("%s is not a boolean", path);
    return json_is_true(v);
}

static json_t *it_job_status(struct bd_it_proc *p, const char *id)
{
    return bd_it_get_ok(p, "/api/v1/batch/jobs/%s/status", id);
}

static void it_expect_queued_for(struct bd_it_proc *p, const char *id, unsigned ms)
{
    /* A negative can only be watched for a while: here 15 of the claim timer's ticks. */
    bd_it_sleep_ms(ms);
    json_t *s = it_job_status(p, id);
    assert_string_equal(bd_it_str(s, "status"), "queued");
    json_decref(s);
}

/* Seconds until p's queue status says paused == want (at most timeout_s; then fails). */
static double it_wait_paused(struct bd_it_proc *p, bool want, double timeout_s)
{
    double t0 = bd_it_now();
    for (;;) {
        json_t *s = bd_it_get_ok(p, Q "/status");
        bool is = it_is_true(s, "paused");
        json_decref(s);
        if (is == want)
            return bd_it_now() - t0;
        if (bd_it_now() - t0 > timeout_s)
            fail_msg("queue status never showed paused=%d", want);
        bd_it_sleep_ms(20);
    }
}

static char *it_prometheus(struct bd_it_proc *p)
{
    char url[128];
    struct bd_it_resp r;

    snprintf(url, sizeof(url), "%s/metrics", p->base);
    assert_int_equal(bd_it_http("GET", url, NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    char *body = strdup(r.body);
    bd_it_resp_free(&r);
    return body;
}

/* One process pauses; the other shows it and claims nothing within about a second (it polls
 * PostgreSQL twice a second); a job submitted there stays queued until the resume. */
static void pause_on_one_process_stops_claims_on_the_other(void **state)
{
    struct bd_it_proc a, b;
    char yaml[1024];
    (void)state;

    it_yaml(yaml, sizeof(yaml), 4);
    assert_int_equal(bd_it_start(&a, yaml, NULL), 0);
    assert_int_equal(bd_it_start(&b, yaml, NULL), 0);

    json_t *j = it_post(&a, Q "/pause", 200);
    assert_true(it_is_true(j, "paused"));
    assert_true(it_is_true(j, "changed"));
    assert_non_null(bd_it_str(j, "paused_at"));
    assert_int_equal(json_array_size(bd_it_at(j, "paused_models")), 0);
    json_decref(j);
    double seen = it_wait_paused(&b, true, 3.0);
    fprintf(stderr, "the other process saw the pause after %.3f s\n", seen);
    assert_true(seen < 1.2);
    /* Pausing a paused queue is not an error. */
    j = it_post(&b, Q "/pause", 200);
    assert_true(it_is_true(j, "paused"));
    assert_false(it_is_true(j, "changed"));
    json_decref(j);

    /* The state is in both metrics, driven by the real state. */
    char *prom = it_prometheus(&b);
    assert_non_null(strstr(prom, "\nbatchd_queue_paused 1\n"));
    assert_null(strstr(prom, "batchd_model_paused{"));    /* never paused: absent */
    free(prom);
    j = bd_it_get_ok(&b, "/api/v1/batch/metrics");
    assert_true(it_is_true(j, "batch_metrics.queue_pause.paused"));
    json_decref(j);

    char *id = it_submit(&b, "ma", 3, 10, -1);
    it_expect_queued_for(&b, id, 1500);

    j = it_post(&b, Q "/resume", 200);
    assert_false(it_is_true(j, "paused"));
    assert_true(it_is_true(j, "changed"));
    assert_true(json_is_null(bd_it_at(j, "paused_at")));
    json_decref(j);
    json_decref(bd_it_expect_status(&a, id, "completed", 20));
    it_wait_paused(&a, false, 1.2);                    /* the resume reached a as well */
    prom = it_prometheus(&a);
    assert_non_null(strstr(prom, "\nbatchd_queue_paused 0\n"));
    free(prom);
    free(id);
    assert_int_equal(bd_it_stop(&a, SIGTERM, 20), 0);
    assert_int_equal(bd_it_stop(&b, SIGTERM, 20), 0);
}

/* A running job: the batch at the model when the pause comes finishes (the fake sees no
 * request given up), then no batch follows and the job waits in the queue; after the
 * resume it ends completed with every item done. */
static void running_job_finishes_its_batch_then_waits_while_paused(void **state)
{
    struct bd_it_proc a;
    char yaml[1024];
    (void)state;

    bd_it_fake_reset(g_fm_port, ",\"latency_ms\":300");
    it_yaml(yaml, sizeof(yaml), 1);
    assert_int_equal(bd_it_start(&a, yaml, NULL), 0);
    char *id = it_submit(&a, "ma", 20, 1, -1);
    json_t *s;
    double t0 = bd_it_now();
    for (;;) {
        s = it_job_status(&a, id);
        long long done = bd_it_int(s, "progress.processed_items");
        json_decref(s);
        if (done >= 2)
            break;
        if (bd_it_now() - t0 > 20)
            fail_msg("the job never got going");
        bd_it_sleep_ms(20);
    }
    json_decref(it_post(&a, Q "/pause", 200));
    /* It stops within a batch or two (300 ms each): wait until two reads 1 s apart agree. */
    long long last = -1, now;
    t0 = bd_it_now();
    for (;;) {
        s = it_job_status(&a, id);
        now = bd_it_int(s, "progress.processed_items");
        json_decref(s);
        if (now == last)
            break;
        if (bd_it_now() - t0 > 10)
            fail_msg("the job kept going while paused");
        last = now;
        bd_it_sleep_ms(1000);
    }
    fprintf(stderr, "paused with %lld of 20 items done\n", now);
    assert_true(now < 20);
    assert_int_equal(bd_it_fake_stat(g_fm_port, "disconnects"), 0);
    /* Handed back: waiting in its queue, claimed by nobody. */
    char out[64];
    bd_it_sh_out(out, sizeof(out), "redis-cli -u '%s' ZSCORE bd:q:normal %s", g_scr.redis_url, id);
    assert_true(out[0] >= '0' && out[0] <= '9');

    json_decref(it_post(&a, Q "/resume", 200));
    s = bd_it_expect_status(&a, id, "completed", 30);
    assert_int_equal(bd_it_int(s, "progress.processed_items"), 20);
    assert_int_equal(bd_it_int(s, "progress.failed_items"), 0);
    json_decref(s);
    free(id);
    bd_it_fake_reset(g_fm_port, NULL);
    assert_int_equal(bd_it_stop(&a, SIGTERM, 20), 0);
}

/* Pausing one model: its jobs wait (claims skip them), the other models' jobs run. */
static void model_pause_leaves_other_models_running(void **state)
{
    struct bd_it_proc a;
    char yaml[1024];
    (void)state;

    it_yaml(yaml, sizeof(yaml), 4);
    assert_int_equal(bd_it_start(&a, yaml, NULL), 0);
    json_t *j = it_post(&a, Q "/pause?model=ma", 200);
    assert_false(it_is_true(j, "paused"));
    assert_true(it_is_true(j, "changed"));
    assert_int_equal(json_array_size(bd_it_at(j, "paused_models")), 1);
    assert_string_equal(bd_it_str(j, "paused_models.0"), "ma");
    json_decref(j);
    j = bd_it_get_ok(&a, Q "/status");
    assert_true(it_is_true(j, "model_queues.ma.paused"));
    assert_non_null(bd_it_str(j, "model_queues.ma.paused_at"));
    assert_false(it_is_true(j, "model_queues.mb.paused"));
    assert_false(it_is_true(j, "paused"));
    json_decref(j);
    char *prom = it_prometheus(&a);
    assert_non_null(strstr(prom, "batchd_model_paused{model=\"ma\"} 1\n"));
    assert_null(strstr(prom, "batchd_model_paused{model=\"mb\"}"));
    free(prom);

    /* ma's job first: it is ahead in the queue, and still mb's job is claimed. */
    char *ja = it_submit(&a, "ma", 2, 10, -1);
    char *jb = it_submit(&a, "mb", 2, 10, -1);
    json_decref(bd_it_expect_status(&a, jb, "completed", 20));
    it_expect_queued_for(&a, ja, 1000);

    j = it_post(&a, Q "/resume?model=ma", 200);
    assert_int_equal(json_array_size(bd_it_at(j, "paused_models")), 0);
    json_decref(j);
    prom = it_prometheus(&a);
    assert_non_null(strstr(prom, "batchd_model_paused{model=\"ma\"} 0\n"));
    free(prom);
    json_decref(bd_it_expect_status(&a, ja, "completed", 20));
    free(ja);
    free(jb);
    assert_int_equal(bd_it_stop(&a, SIGTERM, 20), 0);
}

/* A paused model's backlog deeper than one claim looks (1,000 jobs) does not hold back the
 * other models' jobs queued behind it (claims park it); resumed, every one of it runs. */
#define DEEP_BACKLOG 1200
static void model_pause_does_not_block_jobs_behind_a_deep_backlog(void **state)
{
    struct bd_it_proc a;
    char yaml[1024];
    (void)state;

    it_yaml(yaml, sizeof(yaml), 4);
    assert_int_equal(bd_it_start(&a, yaml, NULL), 0);
    json_decref(it_post(&a, Q "/pause?model=ma", 200));
    long seq0 = bd_it_psql_long_url(g_scr.pg_url, "SELECT COALESCE(max(seq), 0) FROM jobs");
    for (unsigned i = 0; i < DEEP_BACKLOG; i++)
        free(it_submit(&a, "ma", 1, 10, -1));
    char *jb = it_submit(&a, "mb", 1, 10, -1);
    json_decref(bd_it_expect_status(&a, jb, "completed", 30));
    json_t *j = bd_it_get_ok(&a, Q "/status");
    assert_int_equal(json_integer_value(bd_it_at(j, "model_queues.ma.pending")), DEEP_BACKLOG);
    json_decref(j);

    json_decref(it_post(&a, Q "/resume?model=ma", 200));
    double t0 = bd_it_now();
    long done = 0;
    while ((done = bd_it_psql_long_url(g_scr.pg_url, "SELECT count(*) FROM jobs WHERE model = "
                                       "'ma' AND status = 'completed' AND seq > %ld",
                                       seq0)) < DEEP_BACKLOG &&
           bd_it_now() - t0 < 120)
        bd_it_sleep_ms(200);
    assert_int_equal(done, DEEP_BACKLOG);
    free(jb);
    assert_int_equal(bd_it_stop(&a, SIGTERM, 20), 0);
}

/* PostgreSQL holds the pause: a restarted batchd is paused before it claims anything. */
static void pause_survives_a_restart(void **state)
{
    struct bd_it_proc a;
    char yaml[1024];
    (void)state;

    it_yaml(yaml, sizeof(yaml), 4);
    assert_int_equal(bd_it_start(&a, yaml, NULL), 0);
    char *id = it_submit(&a, "mb", 1, 10, -1);
    json_decref(bd_it_expect_status(&a, id, "completed", 20));
    free(id);
    json_decref(it_post(&a, Q "/pause", 200));
    id = it_submit(&a, "mb", 2, 10, -1);
    assert_int_equal(bd_it_stop(&a, SIGTERM, 20), 0);

    assert_int_equal(bd_it_start(&a, yaml, NULL), 0);
    it_wait_paused(&a, true, 2.0);
    it_expect_queued_for(&a, id, 1500);
    json_decref(it_post(&a, Q "/resume", 200));
    json_decref(bd_it_expect_status(&a, id, "completed", 20));
    free(id);
    assert_int_equal(bd_it_stop(&a, SIGTERM, 20), 0);
}

static void it_expect_400(struct bd_it_proc *p, const char *path, const char *field)
{
    json_t *j = it_post(p, path, 400);
    assert_string_equal(bd_it_str(j, "error.field"), field);
    assert_non_null(bd_it_str(j, "error.code"));
    assert_non_null(bd_it_str(j, "error.message"));
    json_decref(j);
}

static void unknown_model_or_filter_is_refused_with_400(void **state)
{
    struct bd_it_proc a;
    char yaml[1024];
    (void)state;

    it_yaml(yaml, sizeof(yaml), 4);
    assert_int_equal(bd_it_start(&a, yaml, NULL), 0);
    it_expect_400(&a, Q "/pause?model=nope", "model");
    it_expect_400(&a, Q "/resume?model=nope", "model");
    it_expect_400(&a, Q "/pause?model=", "model");        /* never the whole queue by mistake */
    it_expect_400(&a, "/api/v1/batch/jobs/retry-failed?status=queued", "status");
    it_expect_400(&a, "/api/v1/batch/jobs/retry-failed?operation=x", "operation");
    it_expect_400(&a, "/api/v1/batch/jobs/retry-failed?limit=0", "limit");
    json_t *s = bd_it_get_ok(&a, Q "/status");
    assert_false(it_is_true(s, "paused"));
    assert_false(it_is_true(s, "model_queues.ma.paused"));
    json_decref(s);
    assert_int_equal(bd_it_stop(&a, SIGTERM, 20), 0);
}

/* Only finished jobs with failed items are retried (a completed job without failures is
 * not), filters as the list, at most limit per call with has_more. */
static void retry_failed_retries_only_jobs_with_failed_items(void **state)
{
    struct bd_it_proc a;
    char yaml[1024];
    (void)state;

    it_yaml(yaml, sizeof(yaml), 4);
    assert_int_equal(bd_it_start(&a, yaml, NULL), 0);
    char *ok = it_submit(&a, "mc", 2, 10, 0);
    json_decref(bd_it_expect_status(&a, ok, "completed", 20));
    bd_it_fake_reset(g_fm_port, ",\"fail_rate\":1");
    char *f1 = it_submit(&a, "mc", 2, 10, 0);
    json_decref(bd_it_expect_status(&a, f1, "failed", 20));
    char *f2 = it_submit(&a, "mc", 2, 10, 0);
    json_decref(bd_it_expect_status(&a, f2, "failed", 20));
    bd_it_fake_reset(g_fm_port, NULL);

    json_t *j = it_post(&a, "/api/v1/batch/jobs/retry-failed?model=mc&operation=bulk_insert",
                        200);
    assert_int_equal(bd_it_int(j, "retried"), 0);
    json_decref(j);
    /* Newest first, one per call. */
    j = it_post(&a, "/api/v1/batch/jobs/retry-failed?model=mc&limit=1", 200);
    assert_int_equal(bd_it_int(j, "retried"), 1);
    assert_string_equal(bd_it_str(j, "job_ids.0"), f2);
    assert_true(it_is_true(j, "has_more"));
    json_decref(j);
    j = it_post(&a, "/api/v1/batch/jobs/retry-failed?model=mc&status=failed", 200);
    assert_int_equal(bd_it_int(j, "retried"), 1);
    assert_string_equal(bd_it_str(j, "job_ids.0"), f1);
    assert_false(it_is_true(j, "has_more"));
    json_decref(j);
    json_t *s = bd_it_expect_status(&a, f1, "completed", 20);
    assert_int_equal(bd_it_int(s, "progress.failed_items"), 0);
    json_decref(s);
    json_decref(bd_it_expect_status(&a, f2, "completed", 20));
    s = bd_it_get_ok(&a, "/api/v1/batch/jobs/%s", ok);
    assert_int_equal(bd_it_int(s, "run_attempt"), 1);        /* never retried */
    json_decref(s);
    s = bd_it_get_ok(&a, "/api/v1/batch/jobs/%s", f1);
    assert_int_equal(bd_it_int(s, "run_attempt"), 2);
    json_decref(s);
    j = it_post(&a, "/api/v1/batch/jobs/retry-failed?model=mc", 200);
    assert_int_equal(bd_it_int(j, "retried"), 0);
    assert_int_equal(json_array_size(bd_it_at(j, "job_ids")), 0);
    json_decref(j);
    free(ok);
    free(f1);
    free(f2);
    assert_int_equal(bd_it_stop(&a, SIGTERM, 20), 0);
}

/* Each case starts unpaused. */
static int it_case_teardown(void **state)
{
    bd_it_teardown(state);
    free(bd_it_psql_url(g_scr.pg_url, NULL, "DELETE FROM queue_pauses;"));
    return 0;
}

static int it_setup(void **state)
{
    const char *const fm_args[] = { "--dim", "4", NULL };

    (void)state;
    if (bd_it_scratch_open(&g_scr, "itpa", "BD_IT_PAUSE_REDIS_DB", "10") != 0)
        return -1;
    if (fake_model_spawn(NULL, fm_args, &g_fm_pid, &g_fm_port) < 0)
        return -1;
    return 0;
}

static int it_teardown(void **state)
{
    (void)state;
    if (g_fm_pid > 0)
        fake_model_stop(g_fm_pid);
    bd_it_scratch_close(&g_scr);
    return 0;
}

int main(void)
{
    bd_it_apply_filter();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(pause_on_one_process_stops_claims_on_the_other,
                                  it_case_teardown),
        cmocka_unit_test_teardown(running_job_finishes_its_batch_then_waits_while_paused,
                                  it_case_teardown),
        cmocka_unit_test_teardown(model_pause_leaves_other_models_running, it_case_teardown),
        cmocka_unit_test_teardown(model_pause_does_not_block_jobs_behind_a_deep_backlog,
                                  it_case_teardown),
        cmocka_unit_test_teardown(pause_survives_a_restart, it_case_teardown),
        cmocka_unit_test_teardown(unknown_model_or_filter_is_refused_with_400,
                                  it_case_teardown),
        cmocka_unit_test_teardown(retry_failed_retries_only_jobs_with_failed_items,
                                  it_case_teardown),
    };
    return cmocka_run_group_tests_name("it_pause", tests, it_setup, it_teardown);
}
