/* it_lifecycle.c -- a job's life across its owners, end to end (real batchd, Redis,
 * PostgreSQL): a batch PostgreSQL refuses does not hold a job forever, a retry's timeout
 * counts from its own start, and a cancel recorded only in PostgreSQL (the answering
 * process cannot reach Redis) still stops the job in the process that runs it.
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
#include <sys/stat.h>
#include <unistd.h>

#include "bd_it.h"
#include "batchd/buf.h"

static const char *it_config =
    "jobs:\n"
    "  max_concurrent_jobs: 2\n"
    "  processing_interval: 0.1\n"
    "  retry_delay: 0.05\n"
    "  lease: 2\n"
    "  reaper_interval: 0.5\n";

static char it_prefix[64];

/* n vectors of dimension 4 in batches of `batch`; item `poison` (if < n) carries metadata
 * PostgreSQL's jsonb refuses (a \u0000 escape: valid JSON, not storable). */
static char *lc_insert_body(const char *coll, unsigned n, unsigned batch, unsigned poison,
                            const char *extra_options)
{
    struct bd_buf b;
    bd_buf_init(&b);
    bd_buf_printf(&b, "{\"operation\":\"bulk_insert\",\"collection\":\"%s\",\"options\":"
                      "{\"batch_size\":%u%s},\"data\":[", coll, batch, extra_options);
    for (unsigned i = 0; i < n; i++)
        bd_buf_printf(&b, "%s{\"id\":\"v%u\",\"embedding\":[%u,1,2,3],\"metadata\":"
                          "{\"note\":\"%s\"}}", i ? "," : "", i, i % 7,
                      i == poison ? "nul\\u0000here" : "fine");
    bd_buf_puts(&b, "]}");
    return bd_buf_steal(&b, NULL);
}

/* Submit; the test fails unless the answer is 202 with a job id (caller frees). */
static char *lc_submit(struct bd_it_proc *p, const char *body)
{
    long st = 0;
    char *id = bd_it_submit(p, body, &st);
    assert_int_equal(st, 202);
    assert_non_null(id);
    return id;
}

static long lc_progress(json_t *j, const char *field)
{
    return (long)json_integer_value(json_object_get(json_object_get(j, "progress"), field));
}

/* Wait until the job leaves queued/processing; returns its last status document. */
static json_t *lc_wait_terminal(struct bd_it_proc *p, const char *id, double timeout_s)
{
    char path[256];
    double deadline = bd_it_now() + timeout_s;
    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%s/status", id);
    for (;;) {
        json_t *j = bd_it_json(p, "GET", path, NULL, NULL);
        const char *st = json_string_value(json_object_get(j, "status"));
        if ((st && strcmp(st, "queued") != 0 && strcmp(st, "processing") != 0) ||
            bd_it_now() > deadline)
            return j;
        json_decref(j);
        bd_it_sleep_ms(50);
    }
}

/* Bug: a batch PostgreSQL refuses was retried forever, the job stayed processing and
 * held a worker slot (and came back after every restart). Submit validates what it can,
 * so the batch is spoiled in storage here, as a job stored by an older batchd would be:
 * the first id of batch 1 gets a byte that is not UTF-8 (SQLSTATE 22021 on write). Now the
 * batch's items fail with the store's message and the job goes on. */
static void test_lifecycle_fail_batch_items_when_store_refuses_batch(void **state)
{
    struct bd_it_proc p;
    char coll[96], block[96], path[256];
    long st;
    static const char *serial =
        "jobs:\n"
        "  max_concurrent_jobs: 1\n"
        "  processing_interval: 0.1\n"
        "  retry_delay: 0.05\n"
        "  lease: 2\n"
        "  reaper_interval: 0.5\n";
    (void)state;

    assert_int_equal(bd_it_start(&p, serial, NULL), 0);
    snprintf(block, sizeof(block), "%s_poison_blocker", it_prefix);
    snprintf(coll, sizeof(coll), "%s_poison", it_prefix);
    char *body = lc_insert_body(block, 40000, 50, 1u << 30, "");
    char *blocker = lc_submit(&p, body);
    free(body);
    json_t *j = bd_it_wait_status(&p, blocker, "processing", 20);
    json_decref(j);
    body = lc_insert_body(coll, 30, 10, 1u << 30, "");
    char *id = lc_submit(&p, body);
    free(body);
    /* Still queued behind the blocker (one job at a time): spoil it, then let it run. */
    assert_int_equal(bd_it_psql_long("UPDATE job_batches SET payload = overlay(payload placing "
                                  "'\\xff'::bytea from 5 for 1) WHERE job_id = '%s' AND "
                                  "batch_no = 1 AND status = 'pending' RETURNING 1", id), 1);
    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%s", blocker);
    j = bd_it_json(&p, "DELETE", path, NULL, &st);
    json_decref(j);
    assert_int_equal(st, 200);

    j = lc_wait_terminal(&p, id, 60);
    const char *s = json_string_value(json_object_get(j, "status"));
    if (s == NULL || strcmp(s, "completed") != 0) {
        char *dump = json_dumps(j, 0);
        fprintf(stderr, "poisoned job: %s\n", dump ? dump : "(none)");
        free(dump);
    }
    assert_string_equal(s, "completed");
    assert_int_equal(lc_progress(j, "processed_items"), 20);
    assert_int_equal(lc_progress(j, "failed_items"), 10);
    json_decref(j);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM vectors WHERE collection = '%s'", coll),
                     20);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM job_item_errors WHERE job_id = '%s' "
                                  "AND code = 'store_error' AND item_index BETWEEN 10 AND 19",
                                  id), 10);
    /* The refused id is not stored with its error; the others are. */
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM job_item_errors WHERE job_id = '%s' "
                                  "AND item_id IS NULL", id), 1);
    free(id);
    free(blocker);
    assert_int_equal(bd_it_stop(&p, SIGTERM, 20), 0);
}

/* Bug: a retry more than timeout_s after the job first started failed at once with
 * "timeout", left the reset batches pending and the counters short. */
static void test_lifecycle_retry_runs_whole_timeout_when_first_run_long_ago(void **state)
{
    struct bd_it_proc p;
    char coll[96], path[256];
    long st;
    (void)state;

    assert_int_equal(bd_it_start(&p, it_config, NULL), 0);
    snprintf(coll, sizeof(coll), "%s_retry_timeout", it_prefix);
    /* 400 batches: long enough to be cancelled while processing. */
    char *body = lc_insert_body(coll, 40000, 100, 1u << 30, ",\"timeout_s\":6");
    char *id = lc_submit(&p, body);
    free(body);
    json_t *j = bd_it_wait_status(&p, id, "processing", 20);
    json_decref(j);
    double started = bd_it_now();
    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%s", id);
    j = bd_it_json(&p, "DELETE", path, NULL, &st);
    json_decref(j);
    assert_int_equal(st, 200);
    j = lc_wait_terminal(&p, id, 30);
    assert_string_equal(json_string_value(json_object_get(j, "status")), "cancelled");
    assert_true(lc_progress(j, "processed_items") < 40000);
    json_decref(j);
    /* Let the first run's timeout pass entirely, then retry. */
    while (bd_it_now() < started + 6.5)
        bd_it_sleep_ms(100);
    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%s/retry", id);
    j = bd_it_json(&p, "POST", path, "", &st);
    json_decref(j);
    assert_int_equal(st, 202);
    j = lc_wait_terminal(&p, id, 60);
    const char *s = json_string_value(json_object_get(j, "status"));
    if (strcmp(s, "completed") != 0) {
        char *dump = json_dumps(j, 0);
        fprintf(stderr, "after retry: %s\n", dump);
        free(dump);
    }
    assert_string_equal(s, "completed");
    assert_int_equal(lc_progress(j, "processed_items"), 40000);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM job_batches WHERE job_id = '%s' "
                                  "AND status = 'pending'", id), 0);
    json_decref(j);
    free(id);
    assert_int_equal(bd_it_stop(&p, SIGTERM, 20), 0);
}

/* Bug: with Redis out of reach of the process that answers DELETE, it said 200
 * "cancel_requested" and the job, running in another process, completed. Now the
 * request is read from PostgreSQL before every batch. */
static void test_lifecycle_cancel_stops_peer_job_when_answerer_has_no_redis(void **state)
{
    struct bd_it_proc runner, answerer;
    char coll[96], path[256], redis_env[128];
    long st;
    (void)state;

    assert_int_equal(bd_it_start(&runner, it_config, NULL), 0);
    snprintf(redis_env, sizeof(redis_env), "BATCH_REDIS_URL=redis://127.0.0.1:%d/0",
             bd_it_free_port());
    const char *env[] = { redis_env, NULL };
    setenv("BD_IT_WAIT", "healthz", 1);
    int rc = bd_it_start(&answerer, it_config, env);
    unsetenv("BD_IT_WAIT");
    assert_int_equal(rc, 0);

    snprintf(coll, sizeof(coll), "%s_cancel_pg", it_prefix);
    char *body = lc_insert_body(coll, 40000, 50, 1u << 30, "");
    char *id = lc_submit(&runner, body);
    free(body);
    json_t *j = bd_it_wait_status(&runner, id, "processing", 20);
    json_decref(j);
    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%s", id);
    j = bd_it_json(&answerer, "DELETE", path, NULL, &st);
    assert_int_equal(st, 200);
    json_decref(j);
    j = lc_wait_terminal(&runner, id, 60);
    assert_string_equal(json_string_value(json_object_get(j, "status")), "cancelled");
    assert_true(lc_progress(j, "processed_items") < 40000);
    json_decref(j);
    free(id);
    assert_int_equal(bd_it_stop(&answerer, SIGTERM, 20), 0);
    assert_int_equal(bd_it_stop(&runner, SIGTERM, 20), 0);
}

/* Bug: max_connections (1024) equalled systemd's default soft RLIMIT_NOFILE, so idle
 * clients could take every descriptor: the accept itself failed (the client saw its
 * connection dropped without an answer) and PostgreSQL, Redis and model connections could
 * not be opened. batchd now raises the soft limit to the hard one and serves at most the
 * limit minus a reserve: with a hard limit of 256 and 400 clients, every client is either
 * served or answered 503, and a job still runs meanwhile. */
static void test_lifecycle_answers_503_not_emfile_when_clients_exceed_fd_limit(void **state)
{
    struct bd_it_proc p;
    char coll[96], wrapper[256];
    enum { CLIENTS = 400 };
    static struct bd_it_raw c[CLIENTS];

    (void)state;
    /* batchd under a hard limit of 256 descriptors (the test process keeps its own). */
    snprintf(wrapper, sizeof(wrapper), "/tmp/bd_it_nofile_%d.sh", (int)getpid());
    FILE *f = fopen(wrapper, "w");
    assert_non_null(f);
    fprintf(f, "#!/bin/sh\nexec prlimit --nofile=256:256 -- '%s' \"$@\"\n",
            bd_it_env("BD_BATCHD_BIN", "./batchd"));
    fclose(f);
    assert_int_equal(chmod(wrapper, 0755), 0);
    char *real = strdup(bd_it_env("BD_BATCHD_BIN", "./batchd"));
    setenv("BD_BATCHD_BIN", wrapper, 1);
    int rc = bd_it_start(&p, it_config, NULL);
    setenv("BD_BATCHD_BIN", real, 1);
    free(real);
    unlink(wrapper);
    assert_int_equal(rc, 0);

    unsigned served = 0, refused = 0, dropped = 0;
    for (int i = 0; i < CLIENTS; i++) {
        bd_it_raw_connect(&c[i], p.port);
        if (i % 16 == 15)
            bd_it_sleep_ms(10);                 /* clients arrive, not one burst */
    }
    bd_it_sleep_ms(500);
    for (int i = 0; i < CLIENTS; i++) {
        /* A refused client has its 503 waiting; a served one has nothing yet. */
        int r = bd_it_raw_read(&c[i], 20, 0);
        if (r == 0 && strstr(c[i].buf, " 503 ") != NULL)
            refused++;
        else if (r == 1 || r == 0)
            dropped++;
        else
            served++;
    }
    fprintf(stderr, "  %d clients: %u served, %u answered 503, %u dropped\n", CLIENTS, served,
            refused, dropped);
    /* A job still runs: its PostgreSQL and Redis connections were never starved. */
    snprintf(coll, sizeof(coll), "%s_fd", it_prefix);
    for (int i = 0; i < CLIENTS / 2; i++)
        bd_it_raw_close(&c[i]);                 /* room for the submit's connection */
    char *body = lc_insert_body(coll, 50, 10, 1000, "");
    long st = 0;
    char *id = NULL;
    for (double deadline = bd_it_now() + 5; st != 202 && bd_it_now() < deadline;) {
        free(id);
        id = bd_it_submit(&p, body, &st);     /* the closes above are seen shortly */
        if (st != 202)
            bd_it_sleep_ms(50);
    }
    free(body);
    assert_int_equal(st, 202);
    json_t *j = lc_wait_terminal(&p, id, 30);
    assert_string_equal(json_string_value(json_object_get(j, "status")), "completed");
    json_decref(j);
    free(id);
    for (int i = CLIENTS / 2; i < CLIENTS; i++)
        bd_it_raw_close(&c[i]);
    assert_int_equal(dropped, 0);
    assert_true(refused > 0);
    assert_true(served > 0 && served < 256);
    assert_int_equal(bd_it_stop(&p, SIGTERM, 20), 0);
}

int main(void)
{
    snprintf(it_prefix, sizeof(it_prefix), "lc%d", (int)getpid());
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_lifecycle_fail_batch_items_when_store_refuses_batch,
                                  bd_it_teardown),
        cmocka_unit_test_teardown(test_lifecycle_retry_runs_whole_timeout_when_first_run_long_ago,
                                  bd_it_teardown),
        cmocka_unit_test_teardown(test_lifecycle_cancel_stops_peer_job_when_answerer_has_no_redis,
                                  bd_it_teardown),
        cmocka_unit_test_teardown(
            test_lifecycle_answers_503_not_emfile_when_clients_exceed_fd_limit, bd_it_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
