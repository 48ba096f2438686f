/* test_metrics.c -- unit tests for metrics.c: job/batch/item recording, histogram counts,
 * label escaping, model slots, and the exposition's syntax (through promtool when it is
 * installed: scripts/deps.sh installs it). No loop, no stores.
 * SPDX-License-Identifier: MIT
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "batchd/buf.h"
#include "batchd/config.h"
#include "batchd/job_types.h"
#include "batchd/metrics.h"

static struct bd_model_config models[3];
static struct bd_config cfg;

static int setup(void **state)
{
    (void)state;
    memset(models, 0, sizeof(models));
    models[0].name = "mixtral";
    models[1].name = "we\"ird\\name\nx";       /* every character that needs escaping */
    models[2].name = "yi34";
    memset(&cfg, 0, sizeof(cfg));
    cfg.models = models;
    cfg.models_count = 3;
    return 0;
}

static char *render(struct bd_metrics *m)
{
    struct bd_buf out;
    bd_buf_init(&out);
    bd_metrics_render(m, &out, 1700000000);
    bd_metrics_render_jobs(m, &out, &cfg);
    bd_buf_append(&out, "", 1);
    assert_false(out.is_failed);
    return out.data;                           /* caller frees */
}

static double sample(const char *text, const char *key)
{
    size_t n = strlen(key);
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (strncmp(p, key, n) == 0 && p[n] == ' ')
            return strtod(p + n + 1, NULL);
    return -1;                                 /* absent */
}

static void metrics_slot_is_config_index_when_model_known(void **state)
{
    (void)state;
    assert_int_equal(bd_metrics_model_slot(&cfg, "mixtral"), 0);
    assert_int_equal(bd_metrics_model_slot(&cfg, "yi34"), 2);
    assert_int_equal(bd_metrics_model_slot(&cfg, ""), BD_METRICS_MODEL_NONE);
    assert_int_equal(bd_metrics_model_slot(&cfg, NULL), BD_METRICS_MODEL_NONE);
    assert_int_equal(bd_metrics_model_slot(&cfg, "nope"), BD_METRICS_MODEL_UNKNOWN);
}

static void metrics_counts_equal_events_when_recorded(void **state)
{
    struct bd_metrics *m = bd_metrics_new();
    struct bd_metrics_job_totals t;
    char *text;

    (void)state;
    assert_non_null(m);
    for (int i = 0; i < 7; i++)
        bd_metrics_batch_done(m, BD_OP_BULK_EMBED, 0, 0.03 * i, 10, 2, 1);
    bd_metrics_batch_done(m, BD_OP_BULK_INSERT, BD_METRICS_MODEL_NONE, 0.002, 5, 0, 0);
    bd_metrics_job_finished(m, BD_OP_BULK_EMBED, 0, "completed", 12.5);
    bd_metrics_job_finished(m, BD_OP_BULK_EMBED, 0, "completed", 0.2);
    bd_metrics_job_finished(m, BD_OP_BULK_EMBED, 2, "failed", 3);
    bd_metrics_job_finished(m, BD_OP_BULK_INSERT, BD_METRICS_MODEL_NONE, "cancelled", 1);
    bd_metrics_job_finished(m, BD_OP_BULK_EMBED, 0, "processing", 1);   /* not terminal */
    bd_metrics_job_finished(m, BD_OP_BULK_EMBED, 0, "(not processing)", 1);
    bd_metrics_job_finished(m, BD_OP_BULK_EMBED, BD_METRICS_MODEL_UNKNOWN, "failed", 0);

    bd_metrics_get_job_totals(m, &t);
    assert_int_equal(t.jobs[BD_JOB_COMPLETED], 2);
    assert_int_equal(t.jobs[BD_JOB_FAILED], 2);
    assert_int_equal(t.jobs[BD_JOB_CANCELLED], 1);
    assert_int_equal(t.jobs[BD_JOB_PROCESSING], 0);
    assert_int_equal(t.batches, 8);
    assert_int_equal(t.items_ok, 75);
    assert_int_equal(t.items_failed, 14);
    assert_int_equal(t.cache_hits, 7);

    text = render(m);
    assert_true(sample(text, "batchd_jobs_total{operation=\"bulk_embed\",model=\"mixtral\","
                             "status=\"completed\"}") == 2);
    assert_true(sample(text, "batchd_jobs_total{operation=\"bulk_embed\",model=\"yi34\","
                             "status=\"failed\"}") == 1);
    assert_true(sample(text, "batchd_jobs_total{operation=\"bulk_insert\",model=\"\","
                             "status=\"cancelled\"}") == 1);
    assert_true(sample(text, "batchd_jobs_total{operation=\"bulk_embed\",model=\"_unknown\","
                             "status=\"failed\"}") == 1);
    assert_true(sample(text, "batchd_items_total{operation=\"bulk_embed\",model=\"mixtral\","
                             "outcome=\"succeeded\"}") == 70);
    assert_true(sample(text, "batchd_items_total{operation=\"bulk_embed\",model=\"mixtral\","
                             "outcome=\"failed\"}") == 14);
    assert_true(sample(text, "batchd_items_total{operation=\"bulk_insert\",model=\"\","
                             "outcome=\"succeeded\"}") == 5);
    assert_true(sample(text, "batchd_cache_hits_total{operation=\"bulk_embed\","
                             "model=\"mixtral\"}") == 7);
    /* Histograms: _count is the number of observations and equals the +Inf bucket;
     * buckets are cumulative. */
    assert_true(sample(text, "batchd_batch_duration_seconds_count{operation=\"bulk_embed\","
                             "model=\"mixtral\"}") == 7);
    assert_true(sample(text, "batchd_batch_duration_seconds_bucket{operation=\"bulk_embed\","
                             "model=\"mixtral\",le=\"+Inf\"}") == 7);
    assert_true(sample(text, "batchd_batch_duration_seconds_bucket{operation=\"bulk_embed\","
                             "model=\"mixtral\",le=\"0.1\"}") == 4);   /* 0, .03, .06, .09 */
    assert_true(sample(text, "batchd_job_duration_seconds_count{operation=\"bulk_embed\","
                             "model=\"mixtral\"}") == 2);
    assert_true(sample(text, "batchd_job_duration_seconds_bucket{operation=\"bulk_embed\","
                             "model=\"mixtral\",le=\"10\"}") == 1);
    assert_true(sample(text, "batchd_job_duration_seconds_sum{operation=\"bulk_embed\","
                             "model=\"mixtral\"}") == 12.7);
    /* A model with nothing recorded writes no series (its counters are 0 by absence). */
    assert_null(strstr(text, "model=\"we"));
    free(text);
    bd_metrics_free(m);
}

static void metrics_escapes_label_values_when_rendered(void **state)
{
    struct bd_metrics *m = bd_metrics_new();
    char *text;

    (void)state;
    bd_metrics_batch_done(m, BD_OP_BULK_EMBED, 1, 0.01, 1, 0, 0);
    bd_metrics_job_finished(m, BD_OP_BULK_EMBED, 1, "completed", 0.5);
    text = render(m);
    assert_non_null(strstr(text, "model=\"we\\\"ird\\\\name\\nx\""));
    assert_true(sample(text, "batchd_jobs_total{operation=\"bulk_embed\","
                             "model=\"we\\\"ird\\\\name\\nx\",status=\"completed\"}") == 1);
    free(text);
    bd_metrics_free(m);
}

static void metrics_http_counts_match_histogram_when_observed(void **state)
{
    static const char route[] = "/api/v1/batch/jobs";
    struct bd_metrics *m = bd_metrics_new();
    char *text;

    (void)state;
    for (int i = 0; i < 5; i++)
        bd_metrics_observe_http(m, route, "POST", 202, 0.001);
    bd_metrics_observe_http(m, NULL, "GET", 404, 0.0001);
    bd_metrics_observe_http(m, route, "BREW", 405, 0.0001);
    text = render(m);
    assert_true(sample(text, "batchd_http_requests_total{route=\"/api/v1/batch/jobs\","
                             "method=\"POST\",code=\"202\"}") == 5);
    assert_true(sample(text, "batchd_http_requests_total{route=\"unmatched\",method=\"GET\","
                             "code=\"404\"}") == 1);
    assert_true(sample(text, "batchd_http_requests_total{route=\"/api/v1/batch/jobs\","
                             "method=\"OTHER\",code=\"405\"}") == 1);
    assert_true(sample(text, "batchd_http_request_duration_seconds_count") == 7);
    free(text);
    bd_metrics_free(m);
}

static void metrics_exposition_passes_promtool_when_rendered(void **state)
{
    struct bd_metrics *m = bd_metrics_new();
    char path[64], cmd[256], *text;
    FILE *f;
    int rc;

    (void)state;
    if (system("command -v promtool >/dev/null 2>&1") != 0) {
        fprintf(stderr, "promtool not installed (scripts/deps.sh installs it): skipped\n");
        bd_metrics_free(m);
        skip();
    }
    bd_metrics_batch_done(m, BD_OP_BULK_EMBED, 0, 0.2, 10, 0, 0);
    bd_metrics_batch_done(m, BD_OP_BULK_EMBED, 1, 0.2, 10, 0, 0);
    bd_metrics_job_finished(m, BD_OP_BULK_EMBED, 1, "failed", 1);
    bd_metrics_observe_http(m, "/healthz", "GET", 200, 0.0002);
    bd_metrics_observe_loop_lag(m, 0.003);
    text = render(m);
    snprintf(path, sizeof(path), "/tmp/test_metrics_%d.prom", (int)getpid());
    f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    snprintf(cmd, sizeof(cmd), "promtool check metrics < %s", path);
    rc = system(cmd);
    unlink(path);
    assert_int_equal(rc, 0);
    free(text);
    bd_metrics_free(m);
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static double wall_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The CPU percentage equals the CPU time this process used over the wall time since the
 * metrics were made (measured here around a busy loop of 0.2 CPU seconds), not just any
 * number between 0 and 100 per core. */
static void metrics_cpu_percent_matches_cpu_used_when_sampled(void **state)
{
    struct bd_metrics *m = bd_metrics_new();
    volatile double x = 0;

    (void)state;
    double c0 = cpu_seconds(), w0 = wall_seconds();
    while (cpu_seconds() - c0 < 0.2 && wall_seconds() - w0 < 20)
        for (int i = 0; i < 100000; i++)
            x += i * 0.5;
    (void)x; /* only the CPU time spent counts */
    double c1 = cpu_seconds(), w1 = wall_seconds();
    double pct = bd_metrics_sample_cpu_percent(m);
    double want = (c1 - c0) / (w1 - w0) * 100.0;
    if (!(pct > 0 && pct >= want * 0.9 - 2 && pct <= want * 1.1 + 2))
        fail_msg("cpu percent %.2f, expected about %.2f (%.3f s CPU in %.3f s)", pct, want,
                 c1 - c0, w1 - w0);
    assert_true(bd_metrics_get_rss_bytes() > 0);
    bd_metrics_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(metrics_slot_is_config_index_when_model_known),
        cmocka_unit_test(metrics_counts_equal_events_when_recorded),
        cmocka_unit_test(metrics_escapes_label_values_when_rendered),
        cmocka_unit_test(metrics_http_counts_match_histogram_when_observed),
        cmocka_unit_test(metrics_exposition_passes_promtool_when_rendered),
        cmocka_unit_test(metrics_cpu_percent_matches_cpu_used_when_sampled),
    };
    return cmocka_run_group_tests_name("metrics", tests, setup, NULL);
}
