/* it_rebuild.c -- integration test for the queue rebuild from PostgreSQL (job_engine.c):
 * a rebuild of many queued jobs puts every one of them in the Redis queue and never keeps
 * the loop busy for long (read page by page, sent a page at a time).
 *
 * Isolation: a PostgreSQL schema of its own ("itrb_<pid>", through search_path in the URL;
 * batchd migrates it) and a Redis database of its own (BD_IT_REBUILD_REDIS_DB, default 13),
 * both dropped at the end.  SPDX-License-Identifier: MIT
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

#define REBUILD_JOBS 200000

static struct bd_it_scratch g_scr;   /* own schema and Redis db */

/* The loop-lag histogram's cumulative bucket counts (le = 0.001 ... 1, +Inf) from /metrics. */
#define LAG_BUCKETS 11
static void it_lag_scrape(struct bd_it_proc *p, long long counts[LAG_BUCKETS])
{
    char url[128];
    struct bd_it_resp r;
    int n = 0;

    snprintf(url, sizeof(url), "http://127.0.0.1:%d/metrics", p->port);
    assert_int_equal(bd_it_http("GET", url, NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    for (const char *s = r.body; (s = strstr(s, "batchd_loop_lag_seconds_bucket{")) != NULL;
         s++) {
        const char *sp = strchr(s, ' ');
        assert_non_null(sp);
        assert_true(n < LAG_BUCKETS);
        counts[n++] = strtoll(sp + 1, NULL, 10);
    }
    assert_int_equal(n, LAG_BUCKETS);
    bd_it_resp_free(&r);
}

static long long it_redis_long(const char *cmd)
{
    char out[64];
    bd_it_sh_out(out, sizeof(out), "redis-cli -u '%s' %s", g_scr.redis_url, cmd);
    return strtoll(out, NULL, 10);
}

/* Scripts Redis ran so far (all clients: the stack is shared, so a bound, not a count). */
static long long it_redis_script_calls(void)
{
    char out[256];
    long long n = 0;
    bd_it_sh_out(out, sizeof(out), "redis-cli -u '%s' INFO commandstats | "
                 "sed -n 's/^cmdstat_evalsha:calls=\\([0-9]*\\).*/\\1/p'", g_scr.redis_url);
    n = strtoll(out, NULL, 10);
    return n;
}

/* REBUILD_JOBS queued jobs (a third of each priority) that are in PostgreSQL but not in
 * Redis (FLUSHDB, as after a Redis restart without persistence): the engine notices the
 * lost marker and rebuilds; flushed again in the middle of that rebuild, it rebuilds once
 * more. Every job ends in its priority's queue, in one Redis script run
 * per page of 1,000 (not one per job), and no loop-lag probe
 * during the rebuild fired more than 100 ms late (the bound is generous: one statement of
 * every active job, copied and sent in one loop turn, made it 250 to 500 ms). Only one
 * job runs at a time and it hangs at the fake model, so none leaves the queue meanwhile. */
static void rebuild_queues_every_job_in_pages_when_redis_lost_its_keys(void **state)
{
    struct bd_it_proc p;
    pid_t fm_pid = -1;
    int fm_port = 0;
    char yaml[512], body[256];
    long long before[LAG_BUCKETS], after[LAG_BUCKETS];
    long st;
    const char *const fm_args[] = { "--dim", "4", NULL };
    (void)state;

    assert_int_equal(fake_model_spawn(NULL, fm_args, &fm_pid, &fm_port), 0);
    bd_it_fake_config(fm_port, "{\"latency_ms\":600000}");
    snprintf(yaml, sizeof(yaml),
             "jobs:\n  max_concurrent_jobs: 1\n  processing_interval: 0.1\n"
             "  reaper_interval: 0.2\n"
             "models:\n  - name: slow\n    provider: ollama\n"
             "    base_url: http://127.0.0.1:%d\n    dimensions: 4\n    timeout: 600\n",
             fm_port);
    assert_int_equal(bd_it_start(&p, yaml, NULL), 0);
    /* The one job slot: taken by a job that waits at the model. */
    snprintf(body, sizeof(body), "{\"operation\":\"bulk_embed\",\"model\":\"slow\","
             "\"collection\":\"itrb\",\"data\":[{\"id\":\"a\",\"text\":\"a\"}]}");
    char *blocker = bd_it_submit(&p, body, &st);
    assert_int_equal(st, 202);
    json_decref(bd_it_wait_status(&p, blocker, "processing", 20));
    free(blocker);

    char *out = bd_it_psql_url(g_scr.pg_url, NULL,
        "INSERT INTO jobs (id, seq, operation, model, collection, status, priority,"
        " batch_size, total_items, total_batches)"
        " SELECT 'rb' || i, 1000 + i, 'bulk_embed', 'slow', 'itrb', 'queued', i %% 3, 10, 1, 1"
        " FROM generate_series(1, %d) i", REBUILD_JOBS);
    assert_non_null(out);
    free(out);
    it_lag_scrape(&p, before);
    long long calls0 = it_redis_script_calls();
    double t0 = bd_it_now();
    assert_int_equal(bd_it_sh("redis-cli -u '%s' FLUSHDB >/dev/null", g_scr.redis_url), 0);
    /* Flushed again once the rebuild is under way (some pages in, no marker yet): the pages
     * sent before it are gone, so that rebuild must not mark the queue whole; it starts
     * over. */
    while ((it_redis_long("ZCARD bd:q:high") == 0 || it_redis_long("EXISTS bd:alive") == 1) &&
           bd_it_now() - t0 < 120)
        bd_it_sleep_ms(5);
    assert_int_equal(it_redis_long("EXISTS bd:alive"), 0);
    assert_int_equal(bd_it_sh("redis-cli -u '%s' FLUSHDB >/dev/null", g_scr.redis_url), 0);
    /* The marker comes back when the rebuild sent its last page. */
    while (it_redis_long("EXISTS bd:alive") != 1 && bd_it_now() - t0 < 120)
        bd_it_sleep_ms(50);
    assert_int_equal(it_redis_long("EXISTS bd:alive"), 1);
    double spent = bd_it_now() - t0;
    long long calls = it_redis_script_calls() - calls0;
    it_lag_scrape(&p, after);
    long long queued = it_redis_long("ZCARD bd:q:high") + it_redis_long("ZCARD bd:q:normal") +
                       it_redis_long("ZCARD bd:q:low");
    long long late = after[LAG_BUCKETS - 1] - before[LAG_BUCKETS - 1] -
                     (after[6] - before[6]);          /* probes over le=0.1 */
    fprintf(stderr, "rebuilt %lld jobs in %.2f s with %lld script runs; probes over 100 ms "
                    "late: %lld; within 25 ms: %lld of %lld\n", queued, spent, calls, late,
            after[4] - before[4], after[LAG_BUCKETS - 1] - before[LAG_BUCKETS - 1]);
    assert_int_equal(queued, REBUILD_JOBS);
    assert_int_equal(it_redis_long("ZCARD bd:q:high"), REBUILD_JOBS / 3);
    assert_int_equal(late, 0);
    /* The job holding the only slot kept it through both flushes (its renewals answered
     * "unknown", not "lost"), so nothing else was claimed and left the queue meanwhile. */
    assert_int_equal(bd_it_metric(&p, "batchd_engine_events_total{event=\"lease_lost\"}"), 0);
    assert_int_equal(bd_it_metric(&p, "batchd_engine_events_total{event=\"job_claimed\"}"), 1);
    /* A page's jobs go in one script run: ~200 runs here (other suites share the server,
     * hence the loose bound; one run per job made it 200,000). */
    assert_true(calls < REBUILD_JOBS / 4);
    assert_int_equal(bd_it_stop(&p, SIGTERM, 20), 0);
    fake_model_stop(fm_pid);
}

static int it_setup(void **state)
{
    
    (void)state;
    if (bd_it_scratch_open(&g_scr, "itrb", "BD_IT_REBUILD_REDIS_DB", "13") != 0)
        return -1;
    return 0;
}

static int it_teardown(void **state)
{
    (void)state;
    bd_it_scratch_close(&g_scr);
    return 0;
}

int main(void)
{
    bd_it_apply_filter();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(rebuild_queues_every_job_in_pages_when_redis_lost_its_keys,
                                  bd_it_teardown),
    };
    return cmocka_run_group_tests_name("it_rebuild", tests, it_setup, it_teardown);
}
