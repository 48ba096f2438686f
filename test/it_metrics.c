/* it_metrics.c -- integration tests for monitoring: the Prometheus exposition at /metrics,
 * the JSON metrics and queue status under /api/v1/batch, BATCH_METRICS_ENABLED=false, and
 * scripts/test_batch_processing.sh, against the real batchd binary, the test stack and the
 * fake model server.
 *
 * The workload is known exactly: three jobs of ten items, on two built-in hashing models
 * and one Ollama model served by a fake server that fails every request (--fail-rate 1);
 * with retry_attempts 1 its one batch is tried twice and its ten items fail. Every counter,
 * histogram count and JSON total is then asserted to equal what was run.
 *
 * Isolation: the stack is shared, so the suite works in a PostgreSQL schema of its own
 * ("itmon_<pid>", through search_path in the URL; batchd migrates it at start) and a Redis
 * database of its own (BD_IT_METRICS_REDIS_DB, default 17); both are dropped at the end.
 * SPDX-License-Identifier: MIT
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bd_it.h"
#include "fake_model/fake_model_client.h"

#define DIM 16

static struct bd_it_proc g_proc;
static bool g_started;
static struct bd_it_proc g_aux;        /* a second batchd some tests start; stopped in teardown */
static bool g_aux_started;
static pid_t g_fake_pid;
static struct bd_it_scratch g_scr;   /* own schema and Redis db */

/* ---- helpers ------------------------------------------------------------------------ */

/* GET /metrics (root) into a malloc'ed string; asserts 200 and the 0.0.4 content type. */
static char *it_scrape(struct bd_it_proc *p)
{
    struct bd_it_resp r;
    char url[128], ct[128];

    snprintf(url, sizeof(url), "%s/metrics", p->base);
    assert_int_equal(bd_it_http("GET", url, NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(bd_it_resp_header(&r, "Content-Type", ct, sizeof(ct)));
    assert_non_null(strstr(ct, "version=0.0.4"));
    char *body = strdup(r.body);
    bd_it_resp_free(&r);
    assert_non_null(body);
    return body;
}

static bool it_has_sample(const char *text, const char *key)
{
    char k[512];
    snprintf(k, sizeof(k), "\n%s ", key);
    return strstr(text, k) != NULL;
}

/* Sum of every sample of family name (lines starting "name{" or "name "). */
static double it_family_sum(const char *text, const char *name)
{
    size_t n = strlen(name);
    const char *p = text;
    double sum = 0;

    while (p && *p) {
        if (strncmp(p, name, n) == 0 && (p[n] == '{' || p[n] == ' ')) {
            const char *sp = p[n] == ' ' ? p + n : strstr(p, "} ");
            if (sp)
                sum += strtod(sp + (p[n] == ' ' ? 1 : 2), NULL);
        }
        p = strchr(p, '\n');
        if (p)
            p++;
    }
    return sum;
}

/* Pipe text through `promtool check metrics`: asserts exit 0 and no complaint. */
static void it_promtool_ok(const char *text)
{
    char in[128], out[128], buf[4096];
    FILE *f;
    size_t n;
    int rc;

    snprintf(in, sizeof(in), "/tmp/itmon_%d.prom", (int)getpid());
    snprintf(out, sizeof(out), "/tmp/itmon_%d.promtool", (int)getpid());
    f = fopen(in, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    rc = bd_it_sh("promtool check metrics < %s > %s 2>&1", in, out);
    f = fopen(out, "r");
    assert_non_null(f);
    n = fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = '\0';
    fclose(f);
    unlink(in);
    unlink(out);
    if (rc != 0 || n != 0)
        fprintf(stderr, "promtool check metrics (exit %d):\n%s\n", rc, buf);
    assert_int_equal(rc, 0);
    assert_int_equal(n, 0);
}

/* Submit n items of bulk_embed on model in batches of batch_size; returns the job id
 * (caller frees). */
static char *it_submit(struct bd_it_proc *p, const char *model, unsigned n,
                       unsigned batch_size)
{
    json_t *data = json_array(), *body, *resp;
    long status = 0;
    char *text, *id;

    for (unsigned i = 0; i < n; i++) {
        char t[128];
        snprintf(t, sizeof(t), "itmon %d %s item %u", (int)getpid(), model, i);
        json_array_append_new(data, json_pack("{s:s}", "text", t));
    }
    body = json_pack("{s:s,s:s,s:o,s:{s:i}}", "operation", "bulk_embed", "model", model, "data",
                     data, "options", "batch_size", (int)batch_size);
    text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    resp = bd_it_json(p, "POST", "/api/v1/batch/jobs", text, &status);
    free(text);
    if (status != 202)
        fprintf(stderr, "submit on %s -> %ld\n", model, status);
    assert_int_equal(status, 202);
    id = strdup(json_string_value(json_object_get(resp, "job_id")));
    json_decref(resp);
    return id;
}

static void it_wait(struct bd_it_proc *p, const char *id, const char *want)
{
    json_decref(bd_it_expect_status(p, id, want, 20));
}

/* Requests the fake model server at port is answering right now. */
static long long fm_in_flight(int port)
{
    char url[128];
    long status = 0;

    snprintf(url, sizeof(url), "http://127.0.0.1:%d/stats", port);
    json_t *j = bd_it_json_url("GET", url, NULL, &status);
    assert_int_equal(status, 200);
    long long n = bd_it_int(j, "in_flight");
    json_decref(j);
    return n;
}

/* ---- setup ---------------------------------------------------------------------------- */

static int it_setup(void **state)
{
    const char *const fake_args[] = { "--dim", "16", "--fail-rate", "1", NULL };
    char yaml[2048];
    int fake_port = 0;
    double deadline;

    (void)state;
    if (bd_it_scratch_open(&g_scr, "itmon", "BD_IT_METRICS_REDIS_DB", "17") != 0)
        return -1;
    if (fake_model_spawn(NULL, fake_args, &g_fake_pid, &fake_port) != 0)
        return -1;

    snprintf(yaml, sizeof(yaml),
             "jobs:\n  max_concurrent_jobs: 2\n  retry_attempts: 1\n  retry_delay: 0.01\n"
             "  processing_interval: 0.1\n"
             "models:\n"
             "  - name: itmon_a\n    provider: hashing\n    dimensions: %d\n"
             "  - name: itmon_b\n    provider: hashing\n    dimensions: %d\n"
             "  - name: itmon_broken\n    provider: ollama\n    base_url: http://127.0.0.1:%d\n"
             "    dimensions: %d\n    timeout: 5\n",
             DIM, DIM, fake_port, DIM);
    if (bd_it_start(&g_proc, yaml, NULL) != 0)
        return -1;
    g_started = true;
    deadline = bd_it_now() + 20;
    for (;;) {
        long status = 0;
        json_t *j = bd_it_json(&g_proc, "GET", "/readyz", NULL, &status);
        json_decref(j);
        if (status == 200)
            return 0;
        if (bd_it_now() > deadline) {
            fprintf(stderr, "batchd did not become ready\n");
            return -1;
        }
        bd_it_sleep_ms(50);
    }
}

static int it_teardown(void **state)
{
    (void)state;
    if (g_started)
        bd_it_stop(&g_proc, SIGTERM, 20);
    if (g_aux_started)                  /* a test failed before stopping it */
        bd_it_stop(&g_aux, SIGTERM, 20);
    if (g_fake_pid > 0)
        fake_model_stop(g_fake_pid);
    bd_it_scratch_close(&g_scr);
    return 0;
}

/* ---- the exposition ------------------------------------------------------------------ */

static void prometheus_parses_when_idle(void **state)
{
    char *text;

    (void)state;
    text = it_scrape(&g_proc);
    it_promtool_ok(text);
    /* The families the operators' dashboards are built on, present before any job ran. */
    static const char *const families[] = {
        "batchd_jobs_total", "batchd_items_total", "batchd_jobs_in_state",
        "batchd_queue_depth", "batchd_model_queue_jobs", "batchd_job_duration_seconds",
        "batchd_batch_duration_seconds", "batchd_model_request_duration_seconds",
        "batchd_model_errors_total", "batchd_model_circuit_open", "batchd_http_requests_total",
        "batchd_http_request_duration_seconds", "batchd_loop_lag_seconds", "batchd_redis_up",
        "batchd_postgres_up", "batchd_postgres_pool_connections", "process_cpu_seconds_total",
        "process_resident_memory_bytes", "process_open_fds", "process_start_time_seconds",
    };
    for (size_t i = 0; i < sizeof(families) / sizeof(families[0]); i++) {
        char help[128], type[128];
        snprintf(help, sizeof(help), "# HELP %s ", families[i]);
        snprintf(type, sizeof(type), "# TYPE %s ", families[i]);
        if (strstr(text, help) == NULL || strstr(text, type) == NULL)
            fprintf(stderr, "family %s has no HELP/TYPE\n", families[i]);
        assert_non_null(strstr(text, help));
        assert_non_null(strstr(text, type));
    }
    assert_true(bd_it_sample(text, "batchd_redis_up") == 1);
    assert_true(bd_it_sample(text, "batchd_postgres_up") == 1);
    assert_true(bd_it_sample(text, "batchd_postgres_pool_connections{state=\"connected\"}") >= 1);
    assert_true(bd_it_sample(text, "process_resident_memory_bytes") > 1e6);
    assert_true(bd_it_sample(text, "process_open_fds") > 3);
    assert_true(bd_it_sample(text, "process_start_time_seconds") > 1.6e9);
    assert_true(bd_it_sample(text, "batchd_model_circuit_open{model=\"itmon_broken\"}") == 0);
    assert_true(it_has_sample(text, "batchd_jobs_in_state{state=\"queued\"}"));
    assert_true(it_has_sample(text, "batchd_queue_depth{priority=\"high\"}"));
    free(text);
}

/* The known workload; its job ids, for the tests that follow. */
static char *g_job_a, *g_job_b, *g_job_broken;
static char *g_before;                 /* the exposition before it ran */

static void counters_rise_by_the_workload_when_three_jobs_ran(void **state)
{
    char *after;

    (void)state;
    g_before = it_scrape(&g_proc);
    g_job_a = it_submit(&g_proc, "itmon_a", 10, 5);            /* two batches */
    g_job_b = it_submit(&g_proc, "itmon_b", 10, 10);           /* one batch */
    g_job_broken = it_submit(&g_proc, "itmon_broken", 10, 10); /* one batch, tried twice */
    it_wait(&g_proc, g_job_a, "completed");
    it_wait(&g_proc, g_job_b, "completed");
    it_wait(&g_proc, g_job_broken, "failed");

    after = it_scrape(&g_proc);
    it_promtool_ok(after);

#define DELTA(key) (bd_it_sample(after, key) - bd_it_sample(g_before, key))
    assert_true(DELTA("batchd_jobs_total{operation=\"bulk_embed\",model=\"itmon_a\","
                      "status=\"completed\"}") == 1);
    assert_true(DELTA("batchd_jobs_total{operation=\"bulk_embed\",model=\"itmon_b\","
                      "status=\"completed\"}") == 1);
    assert_true(DELTA("batchd_jobs_total{operation=\"bulk_embed\",model=\"itmon_broken\","
                      "status=\"failed\"}") == 1);
    assert_true(it_family_sum(after, "batchd_jobs_total") -
                    it_family_sum(g_before, "batchd_jobs_total") == 3);

    assert_true(DELTA("batchd_items_total{operation=\"bulk_embed\",model=\"itmon_a\","
                      "outcome=\"succeeded\"}") == 10);
    assert_true(DELTA("batchd_items_total{operation=\"bulk_embed\",model=\"itmon_b\","
                      "outcome=\"succeeded\"}") == 10);
    assert_true(DELTA("batchd_items_total{operation=\"bulk_embed\",model=\"itmon_broken\","
                      "outcome=\"failed\"}") == 10);
    assert_true(DELTA("batchd_items_total{operation=\"bulk_embed\",model=\"itmon_broken\","
                      "outcome=\"succeeded\"}") == 0);
    assert_true(it_family_sum(after, "batchd_items_total") -
                    it_family_sum(g_before, "batchd_items_total") == 30);
    assert_true(DELTA("batchd_batches_total{operation=\"bulk_embed\",model=\"itmon_a\"}") == 2);

    /* Histograms: one observation per job and per batch, and _count == +Inf bucket. */
    assert_true(DELTA("batchd_job_duration_seconds_count{operation=\"bulk_embed\","
                      "model=\"itmon_a\"}") == 1);
    assert_true(DELTA("batchd_job_duration_seconds_bucket{operation=\"bulk_embed\","
                      "model=\"itmon_a\",le=\"+Inf\"}") == 1);
    assert_true(it_family_sum(after, "batchd_job_duration_seconds_count") -
                    it_family_sum(g_before, "batchd_job_duration_seconds_count") == 3);
    assert_true(it_family_sum(after, "batchd_batch_duration_seconds_count") -
                    it_family_sum(g_before, "batchd_batch_duration_seconds_count") == 4);
    assert_true(DELTA("batchd_batch_duration_seconds_count{operation=\"bulk_embed\","
                      "model=\"itmon_a\"}") == 2);
    assert_true(bd_it_sample(after, "batchd_job_duration_seconds_sum{operation=\"bulk_embed\","
                                 "model=\"itmon_a\"}") > 0);

    /* The failing model: two requests (first try and one retry), both processing errors,
     * each observed once by the request histogram. */
    assert_true(DELTA("batchd_model_requests_total{model=\"itmon_broken\"}") == 2);
    assert_true(DELTA("batchd_model_errors_total{model=\"itmon_broken\","
                      "kind=\"processing_error\"}") == 2);
    assert_true(DELTA("batchd_model_errors_total{model=\"itmon_broken\","
                      "kind=\"timeout_error\"}") == 0);
    assert_true(DELTA("batchd_model_request_duration_seconds_count{model=\"itmon_broken\"}") ==
                2);
    assert_true(bd_it_sample(after, "batchd_model_circuit_open{model=\"itmon_broken\"}") == 0);
    assert_true(DELTA("batchd_model_inputs_total{model=\"itmon_a\"}") == 10);

    /* HTTP: three submits answered 202; the duration histogram saw every response. */
    assert_true(DELTA("batchd_http_requests_total{route=\"/api/v1/batch/jobs\",method=\"POST\","
                      "code=\"202\"}") == 3);
    assert_true(bd_it_sample(after, "batchd_http_request_duration_seconds_count") ==
                it_family_sum(after, "batchd_http_requests_total"));
    assert_true(bd_it_sample(after, "batchd_loop_lag_seconds_count") ==
                bd_it_sample(after, "batchd_loop_lag_seconds_bucket{le=\"+Inf\"}"));

    /* The store's view (this suite's own schema): exactly the workload. */
    assert_true(bd_it_sample(after, "batchd_jobs_in_state{state=\"completed\"}") == 2);
    assert_true(bd_it_sample(after, "batchd_jobs_in_state{state=\"failed\"}") == 1);
    assert_true(bd_it_sample(after, "batchd_jobs_in_state{state=\"queued\"}") == 0);
    assert_true(bd_it_sample(after, "batchd_queue_depth{priority=\"normal\"}") == 0);
    assert_true(bd_it_sample(after, "batchd_model_queue_jobs{model=\"itmon_a\","
                                 "state=\"processing\"}") == 0);
#undef DELTA
    free(after);
}

/* ---- JSON metrics and queue status ---------------------------------------------------- */

static void json_metrics_match_the_workload_when_three_jobs_ran(void **state)
{
    json_t *j, *m;

    (void)state;
    assert_non_null(g_job_broken);              /* runs after the workload */
    j = bd_it_get_ok(&g_proc, "/api/v1/batch/metrics");
    m = bd_it_at(j, "batch_metrics");
    assert_non_null(m);

    assert_int_equal(bd_it_int(m, "performance.total_jobs_processed"), 3);
    assert_int_equal(bd_it_int(m, "performance.total_items_processed"), 30);
    assert_true(bd_it_num(m, "performance.average_throughput_items_per_minute") > 0);
    assert_true(bd_it_num(m, "performance.average_job_processing_time_seconds") >= 0);
    assert_true(fabs(bd_it_num(m, "performance.success_rate") - 66.7) < 1e-9);

    assert_true(bd_it_num(m, "resource_utilization.cpu_usage_percent") >= 0);
    assert_true(bd_it_num(m, "resource_utilization.memory_usage_mb") > 1);
    assert_true(bd_it_num(m, "resource_utilization.redis_memory_usage_mb") > 0);
    assert_true(bd_it_int(m, "resource_utilization.postgres_connections") >= 1);

    assert_int_equal(bd_it_int(m, "error_statistics.total_errors"), 2);
    assert_int_equal(bd_it_int(m, "error_statistics.timeout_errors"), 0);
    assert_int_equal(bd_it_int(m, "error_statistics.connection_errors"), 0);
    assert_int_equal(bd_it_int(m, "error_statistics.processing_errors"), 2);
    assert_string_equal(bd_it_str(m, "error_statistics.most_common_error"),
                        "processing_error");

    assert_int_equal(bd_it_int(m, "model_performance.itmon_a.jobs_processed"), 1);
    assert_int_equal(bd_it_int(m, "model_performance.itmon_a.items_processed"), 10);
    assert_true(bd_it_num(m, "model_performance.itmon_a.avg_processing_time_ms") >= 0);
    assert_true(bd_it_num(m, "model_performance.itmon_a.success_rate") == 100.0);
    assert_int_equal(bd_it_int(m, "model_performance.itmon_b.items_processed"), 10);
    assert_int_equal(bd_it_int(m, "model_performance.itmon_broken.jobs_processed"), 1);
    assert_int_equal(bd_it_int(m, "model_performance.itmon_broken.items_processed"), 10);
    assert_true(bd_it_num(m, "model_performance.itmon_broken.success_rate") == 0.0);
    json_decref(j);
}

static void queue_status_matches_the_workload_when_three_jobs_ran(void **state)
{
    json_t *j;

    (void)state;
    assert_non_null(g_job_broken);
    j = bd_it_get_ok(&g_proc, "/api/v1/batch/queue/status");
    assert_int_equal(bd_it_int(j, "queue_status.total_jobs"), 3);
    assert_int_equal(bd_it_int(j, "queue_status.pending_jobs"), 0);
    assert_int_equal(bd_it_int(j, "queue_status.processing_jobs"), 0);
    assert_int_equal(bd_it_int(j, "queue_status.completed_jobs"), 2);
    assert_int_equal(bd_it_int(j, "queue_status.failed_jobs"), 1);
    assert_int_equal(bd_it_int(j, "queue_status.cancelled_jobs"), 0);

    assert_int_equal(bd_it_int(j, "processing_capacity.max_concurrent_jobs"), 2);
    assert_int_equal(bd_it_int(j, "processing_capacity.active_workers"), 0);
    assert_int_equal(bd_it_int(j, "processing_capacity.available_workers"), 2);

    assert_true(bd_it_num(j, "queue_health.average_wait_time_seconds") >= 0);
    assert_true(bd_it_num(j, "queue_health.average_processing_time_seconds") >= 0);
    assert_true(bd_it_num(j, "queue_health.throughput_items_per_minute") > 0);
    assert_true(fabs(bd_it_num(j, "queue_health.success_rate") - 66.7) < 1e-9);

    static const char *const models[] = { "itmon_a", "itmon_b", "itmon_broken" };
    for (size_t i = 0; i < 3; i++) {
        char path[128];
        snprintf(path, sizeof(path), "model_queues.%s.pending", models[i]);
        assert_int_equal(bd_it_int(j, path), 0);
        snprintf(path, sizeof(path), "model_queues.%s.processing", models[i]);
        assert_int_equal(bd_it_int(j, path), 0);
        snprintf(path, sizeof(path), "model_queues.%s.avg_time_seconds", models[i]);
        assert_true(bd_it_num(j, path) >= 0);
    }
    assert_int_equal(bd_it_int(j, "queue_depth.normal"), 0);
    json_decref(j);
}

/* While a job waits behind a busy worker, queue status and the exposition count it. Runs
 * last: it stops the suite's process, which would otherwise claim the waiting job. */
static void queue_status_counts_waiting_jobs_when_workers_are_busy(void **state)
{
    struct bd_it_proc *p = &g_aux;
    json_t *j;
    char *text, *slow1, *slow2;
    const char *const env[] = { "BATCH_MAX_CONCURRENT_JOBS=1", NULL };
    const char *const slow_args[] = { "--dim", "16", "--latency-ms", "3000", NULL };
    char yaml[1024];
    pid_t slow_pid = -1;
    int slow_port = 0;

    (void)state;
    assert_int_equal(fake_model_spawn(NULL, slow_args, &slow_pid, &slow_port), 0);
    snprintf(yaml, sizeof(yaml),
             "jobs:\n  processing_interval: 0.1\n"
             "models:\n"
             "  - name: itmon_slow\n    provider: ollama\n    base_url: http://127.0.0.1:%d\n"
             "    dimensions: %d\n    timeout: 5\n",
             slow_port, DIM);
    bd_it_stop(&g_proc, SIGTERM, 20);
    g_started = false;
    /* Another process on the same schema and Redis database, one job at a time, whose
     * model answers after 3 s. */
    assert_int_equal(bd_it_start(p, yaml, env), 0);
    g_aux_started = true;
    slow1 = it_submit(p, "itmon_slow", 2, 2);
    slow2 = it_submit(p, "itmon_slow", 2, 2);
    /* Wait until the first job's one batch is at the model (the fake server counts it in
     * flight): from then on for 3 s that job is processing and the second one waits. */
    double deadline = bd_it_now() + 15;
    while (fm_in_flight(slow_port) != 1) {
        if (bd_it_now() > deadline)
            fail_msg("no request reached the model within 15 s");
        bd_it_sleep_ms(20);
    }
    json_decref(bd_it_expect_status(p, slow1, "processing", 1));

    j = bd_it_get_ok(p, "/api/v1/batch/queue/status");
    assert_int_equal(bd_it_int(j, "queue_status.processing_jobs"), 1);
    assert_int_equal(bd_it_int(j, "queue_status.pending_jobs"), 1);
    assert_int_equal(bd_it_int(j, "processing_capacity.max_concurrent_jobs"), 1);
    assert_int_equal(bd_it_int(j, "processing_capacity.active_workers"), 1);
    assert_int_equal(bd_it_int(j, "processing_capacity.available_workers"), 0);
    assert_int_equal(bd_it_int(j, "model_queues.itmon_slow.pending"), 1);
    assert_int_equal(bd_it_int(j, "model_queues.itmon_slow.processing"), 1);
    assert_int_equal(bd_it_int(j, "queue_depth.normal"), 1);
    assert_int_equal(bd_it_int(j, "queue_depth.in_flight"), 1);
    /* This process's slots for the slow model: one request in flight of its limit. */
    assert_int_equal(bd_it_int(j, "model_queues.itmon_slow.slots.in_flight"), 1);
    assert_true(bd_it_int(j, "model_queues.itmon_slow.slots.limit") >= 1);
    json_decref(j);
    double t_first = bd_it_now();

    text = it_scrape(p);
    it_promtool_ok(text);
    assert_true(bd_it_sample(text, "batchd_jobs_in_state{state=\"processing\"}") == 1);
    assert_true(bd_it_sample(text, "batchd_jobs_in_state{state=\"queued\"}") == 1);
    assert_true(bd_it_sample(text, "batchd_queue_depth{priority=\"normal\"}") == 1);
    assert_true(bd_it_sample(text, "batchd_model_queue_jobs{model=\"itmon_slow\","
                                "state=\"pending\"}") == 1);
    assert_true(bd_it_sample(text, "batchd_model_queue_jobs{model=\"itmon_slow\","
                                "state=\"processing\"}") == 1);
    assert_true(bd_it_sample(text, "batchd_model_in_flight{model=\"itmon_slow\"}") == 1);
    assert_true(bd_it_sample(text, "batchd_jobs_active") == 1);
    assert_true(bd_it_sample(text, "batchd_jobs_capacity") == 1);
    free(text);
    /* Still inside the window: the figures above were read while the job was running. */
    assert_int_equal(fm_in_flight(slow_port), 1);

    it_wait(p, slow1, "completed");
    it_wait(p, slow2, "completed");
    free(slow1);
    free(slow2);
    /* The first job's request held a slot for its 3 s (the second job's texts are the same
     * and come from the embedding cache): the counter says at least that, and never more
     * than the time since the request was seen in flight plus the part before (< 3 s). */
    double span = bd_it_now() - t_first;
    text = it_scrape(p);
    double busy = bd_it_sample(text, "batchd_model_busy_seconds_total{model=\"itmon_slow\"}");
    free(text);
    if (!(busy >= 2.9 && busy <= span + 3.0))
        fail_msg("busy seconds %.3f for a 3 s request, %.3f s after it was seen", busy, span);
    j = bd_it_get_ok(p, "/api/v1/batch/queue/status");
    assert_int_equal(bd_it_int(j, "model_queues.itmon_slow.slots.in_flight"), 0);
    double busy_json =
        json_number_value(bd_it_at(j, "model_queues.itmon_slow.slots.busy_seconds_total"));
    json_decref(j);
    assert_true(busy_json >= 2.9 && busy_json <= span + 3.0);
    g_aux_started = false;
    assert_int_equal(bd_it_stop(p, SIGTERM, 20), 0);
    assert_int_equal(fake_model_stop(slow_pid), 0);
}

/* ---- BATCH_METRICS_ENABLED=false ------------------------------------------------------ */

static void metrics_answer_404_when_disabled(void **state)
{
    struct bd_it_proc *p = &g_aux;
    const char *const env[] = { "BATCH_METRICS_ENABLED=false", NULL };
    struct bd_it_resp r;
    char url[1024];
    json_t *j;
    long status = 0;

    (void)state;
    assert_int_equal(bd_it_start(p, "models:\n  - name: itmon_a\n    provider: hashing\n"
                                     "    dimensions: 16\n", env), 0);
    g_aux_started = true;
    snprintf(url, sizeof(url), "%s/metrics", p->base);
    assert_int_equal(bd_it_http("GET", url, NULL, NULL, &r), 0);
    assert_int_equal(r.status, 404);
    bd_it_resp_free(&r);
    j = bd_it_json(p, "GET", "/api/v1/batch/metrics", NULL, &status);
    assert_int_equal(status, 404);
    json_decref(j);
    for (int i = 0; i < 100; i++) {          /* queue status stays: wait for the schema */
        j = bd_it_json(p, "GET", "/api/v1/batch/queue/status", NULL, &status);
        json_decref(j);
        if (status == 200)
            break;
        bd_it_sleep_ms(50);
    }
    assert_int_equal(status, 200);
    assert_int_equal(bd_it_stop(p, SIGTERM, 20), 0);
}

/* ---- scripts/test_batch_processing.sh -------------------------------------------------- */

static void batch_test_script_totals_equal_the_api_when_run(void **state)
{
    char out[256], report[256], line[512];
    json_t *sum, *jobs, *v;
    json_error_t err;
    size_t i;
    long long ok = 0, failed = 0, total = 0;
    int rc;
    FILE *f;
    bool saw_items = false, saw_completed = false;

    (void)state;
    snprintf(out, sizeof(out), "/tmp/itmon_%d_summary.json", (int)getpid());
    snprintf(report, sizeof(report), "/tmp/itmon_%d_report.txt", (int)getpid());
    rc = bd_it_sh("'%s/scripts/test_batch_processing.sh' --jobs=3 --items-per-job=20 "
                  "--models=itmon_a,itmon_b --batch-size=5 --base-url=%s --json-out=%s "
                  "--timeout=30 > %s 2>/dev/null",
                  bd_it_env("BD_SOURCE_DIR", "."), g_proc.base, out, report);
    if (rc != 0)
        bd_it_sh("cat %s >&2", report);
    assert_int_equal(rc, 0);

    sum = json_load_file(out, 0, &err);
    assert_non_null(sum);
    jobs = json_object_get(sum, "jobs");
    assert_int_equal(json_array_size(jobs), 3);
    json_array_foreach(jobs, i, v) {
        char path[256];
        json_t *st;
        snprintf(path, sizeof(path), "/api/v1/batch/jobs/%s/status",
                 json_string_value(json_object_get(v, "job_id")));
        st = bd_it_get_ok(&g_proc, "%s", path);
        assert_string_equal(json_string_value(json_object_get(v, "status")),
                            json_string_value(json_object_get(st, "status")));
        assert_int_equal(json_integer_value(json_object_get(v, "processed_items")),
                         bd_it_int(st, "progress.processed_items"));
        assert_int_equal(json_integer_value(json_object_get(v, "failed_items")),
                         bd_it_int(st, "progress.failed_items"));
        assert_int_equal(json_integer_value(json_object_get(v, "total_processing_time_ms")),
                         bd_it_int(st, "timing.total_processing_time_ms"));
        ok += bd_it_int(st, "progress.processed_items");
        failed += bd_it_int(st, "progress.failed_items");
        total += bd_it_int(st, "progress.total_items");
        json_decref(st);
    }
    assert_int_equal(total, 60);
    assert_int_equal(ok, 60);
    assert_int_equal(bd_it_int(sum, "processing.items_processed"), ok);
    assert_int_equal(bd_it_int(sum, "processing.items_failed"), failed);
    assert_int_equal(bd_it_int(sum, "processing.completed"), 3);
    assert_int_equal(bd_it_int(sum, "submission.accepted"), 3);
    json_decref(sum);

    /* The printed report says the same. */
    f = fopen(report, "r");
    assert_non_null(f);
    while (fgets(line, sizeof(line), f)) {
        if (strstr(line, "Total items processed: 60/60 (100%)"))
            saw_items = true;
        if (strstr(line, "Jobs completed: 3/3 (100%)"))
            saw_completed = true;
    }
    fclose(f);
    assert_true(saw_items);
    assert_true(saw_completed);
    unlink(out);
    unlink(report);
}

int main(void)
{
    bd_it_apply_filter();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(prometheus_parses_when_idle),
        cmocka_unit_test(counters_rise_by_the_workload_when_three_jobs_ran),
        cmocka_unit_test(json_metrics_match_the_workload_when_three_jobs_ran),
        cmocka_unit_test(queue_status_matches_the_workload_when_three_jobs_ran),
        cmocka_unit_test(batch_test_script_totals_equal_the_api_when_run),
        cmocka_unit_test(metrics_answer_404_when_disabled),
        cmocka_unit_test(queue_status_counts_waiting_jobs_when_workers_are_busy),
    };
    return cmocka_run_group_tests_name("it_metrics", tests, it_setup, it_teardown);
}
