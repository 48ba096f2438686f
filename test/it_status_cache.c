/* it_status_cache.c -- integration tests for the status cache of GET /jobs/{id}/status
 * (api_status.c): answers renewed ahead of their expiry while a job is polled, and many
 * hot jobs held at once without evicting each other.
 *
 * Isolation: fixture jobs are terminal rows inserted straight into the shared stack's jobs
 * table under ids of this process ("itsc<pid>_..."), which nothing else touches (the engine
 * only moves queued and processing jobs); they are deleted at the end.
 * SPDX-License-Identifier: MIT
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

#define HOT_JOBS 128

static char g_pfx[64];

/* Insert n completed jobs <pfx><tag>0 .. <pfx><tag>(n-1), each with processed_items 3. */
static void it_insert_jobs(const char *tag, int n)
{
    assert_int_equal(bd_it_psql_exec(
        "INSERT INTO jobs (id, seq, operation, model, collection, status, priority, batch_size,"
        " total_items, total_batches, next_batch, processed_items, stored_vectors,"
        " started_at, completed_at)"
        " SELECT '%s%s' || i, 900000000 + i, 'bulk_insert', NULL, 'itsc', 'completed', 1, 10,"
        " 3, 1, 1, 3, 3, now(), now() FROM generate_series(0, %d) i",
        g_pfx, tag, n - 1), 0);
}

static long long it_processed(struct bd_it_proc *p, const char *id)
{
    json_t *j = bd_it_get_ok(p, "/api/v1/batch/jobs/%s/status", id);
    long long v = bd_it_int(j, "progress.processed_items");
    json_decref(j);
    return v;
}

/* A job polled without pause keeps a fresh answer: the cache reads its row again in the
 * last quarter of the answer's life (here after 3 s of 4), so a change made behind
 * batchd's back shows before the answer would have expired (4 s), and not before 3/4 of
 * it: the answer is still reused while fresh. Before refresh-ahead it showed only at
 * expiry, when a request had to wait for the read. */
static void status_renewed_before_expiry_when_polled_in_last_quarter(void **state)
{
    struct bd_it_proc p;
    const char *env[] = { "BATCH_STATUS_CACHE_MS=4000", NULL };
    char id[96];
    (void)state;

    assert_int_equal(bd_it_start(&p, NULL, env), 0);    /* migrates a fresh stack */
    it_insert_jobs("ahead", 1);
    snprintf(id, sizeof(id), "%sahead0", g_pfx);
    assert_int_equal(it_processed(&p, id), 3);      /* read and kept */
    double t0 = bd_it_now();
    assert_int_equal(bd_it_psql_exec("UPDATE jobs SET processed_items = 12345 WHERE id = '%s'",
                                     id), 0);
    double seen = -1;
    while (bd_it_now() - t0 < 6) {
        if (it_processed(&p, id) == 12345) {
            seen = bd_it_now() - t0;
            break;
        }
        bd_it_sleep_ms(25);
    }
    fprintf(stderr, "new value seen after %.3f s (refresh from 3 s, expiry at 4 s)\n", seen);
    assert_true(seen >= 2.9);                        /* fresh answers are reused */
    assert_true(seen < 3.9);                         /* renewed before it expired */
    assert_int_equal(bd_it_stop(&p, SIGTERM, 20), 0);
}

/* HOT_JOBS jobs polled in turn are all answered from the cache: after one round, rows
 * changed behind batchd's back still show the old answers (5 s cache) for every job.
 * With one slot per hash, jobs whose ids hashed alike evicted each other on every request
 * (a read each time: the new value showed at once). */
static void status_cached_for_every_job_when_many_are_polled(void **state)
{
    struct bd_it_proc p;
    const char *env[] = { "BATCH_STATUS_CACHE_MS=5000", NULL };
    char id[96];
    (void)state;

    assert_int_equal(bd_it_start(&p, NULL, env), 0);
    it_insert_jobs("hot", HOT_JOBS);
    double t0 = bd_it_now();
    for (int i = 0; i < HOT_JOBS; i++) {
        snprintf(id, sizeof(id), "%shot%d", g_pfx, i);
        assert_int_equal(it_processed(&p, id), 3);
    }
    assert_int_equal(bd_it_psql_exec("UPDATE jobs SET processed_items = 12345 WHERE id LIKE "
                                     "'%shot%%'", g_pfx), 0);
    int changed = 0;
    for (int i = 0; i < HOT_JOBS; i++) {
        snprintf(id, sizeof(id), "%shot%d", g_pfx, i);
        if (it_processed(&p, id) != 3)
            changed++;
    }
    double spent = bd_it_now() - t0;
    fprintf(stderr, "%d of %d answers read again within %.2f s\n", changed, HOT_JOBS, spent);
    if (spent < 3.5)                                 /* else the first answers near expiry */
        assert_int_equal(changed, 0);
    assert_int_equal(bd_it_stop(&p, SIGTERM, 20), 0);
}

static int it_cleanup(void **state)
{
    (void)state;
    bd_it_psql_exec("DELETE FROM jobs WHERE id LIKE '%s%%'", g_pfx);
    return 0;
}

int main(void)
{
    bd_it_apply_filter();
    snprintf(g_pfx, sizeof(g_pfx), "itsc%d_", (int)getpid());
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(status_renewed_before_expiry_when_polled_in_last_quarter,
                                  bd_it_teardown),
        cmocka_unit_test_teardown(status_cached_for_every_job_when_many_are_polled,
                                  bd_it_teardown),
    };
    return cmocka_run_group_tests_name("it_status_cache", tests, NULL, it_cleanup);
}
