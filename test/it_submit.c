/* it_submit.c -- the submit path end to end (POST /api/v1/batch/jobs): UTF-8 validation of
 * item ids, metadata and texts (bug 1), a broken connection after COMMIT (bug 5), the
 * configured model names on bulk_insert (bug 7), and the completion estimate of a 202
 * (bug 8), against the real batchd binary and the test stack.
 *
 * Isolation: a PostgreSQL schema of its own ("itsub_<pid>", through search_path in the
 * URL) and a Redis database of its own (BD_IT_SUBMIT_REDIS_DB, default 19), so the first
 * job of this suite really is the first job its batchd has seen (no recent throughput).
 * batchd reaches PostgreSQL through a small TCP proxy in this process, which can drop a
 * connection right after the server answered its COMMIT: the commit happened, the client
 * never hears of it -- deterministically, with no test-only branch in batchd.
 * SPDX-License-Identifier: MIT
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bd_it.h"

static const char *it_config =
    "jobs:\n"
    "  max_concurrent_jobs: 2\n"
    "  processing_interval: 0.1\n"
    "  retry_delay: 0.05\n"
    "models:\n"
    "  - name: hashmodel\n"
    "    provider: hashing\n"
    "    dimensions: 4\n";

static struct bd_it_proc g_proc;
static bool g_started;
static struct bd_it_scratch g_scr;  /* own schema and Redis db; g_scr.pg_url is direct */
static char g_pg_url[640];          /* through the proxy, with our search_path */


/* ---- helpers ------------------------------------------------------------------------- */

#define psql_long(...) bd_it_psql_long_url(g_scr.pg_url, __VA_ARGS__)

/* POST body (raw bytes, may hold invalid UTF-8); returns the parsed answer (caller
 * json_decref()s) and the status in *status. */
static json_t *post(const char *body, long *status)
{
    char url[256];
    struct bd_it_resp r;
    const char *hdrs[] = { "Content-Type: application/json", NULL };

    snprintf(url, sizeof(url), "%s/api/v1/batch/jobs", g_proc.base);
    if (bd_it_http("POST", url, body, hdrs, &r) != 0)
        return NULL;
    *status = r.status;
    json_t *j = json_loads(r.body, 0, NULL);
    if (j == NULL)
        fprintf(stderr, "answer is not JSON: %ld %s\n", r.status, r.body);
    bd_it_resp_free(&r);
    return j;
}

static const char *error_field(json_t *j)
{
    return json_string_value(json_object_get(json_object_get(j, "error"), "field"));
}

/* Seconds since the epoch of an RFC 3339 UTC time "YYYY-MM-DDTHH:MM:SSZ", or -1. */
static long long rfc3339(const char *s)
{
    struct tm tm = { 0 };
    const char *end = s ? strptime(s, "%Y-%m-%dT%H:%M:%S", &tm) : NULL;
    if (end == NULL)
        return -1;
    if (*end == '.')
        for (end++; *end >= '0' && *end <= '9'; end++)
            ;
    if (strcmp(end, "Z") != 0)
        return -1;
    return (long long)timegm(&tm);
}

static void wait_status(const char *id, const char *want)
{
    json_t *j = bd_it_wait_status(&g_proc, id, want, 20);
    const char *st = json_string_value(json_object_get(j, "status"));
    if (st == NULL || strcmp(st, want) != 0)
        fprintf(stderr, "job %s is %s, not %s\n", id, st ? st : "(no answer)", want);
    assert_non_null(st);
    assert_string_equal(st, want);
    json_decref(j);
}

/* ---- cases ------------------------------------------------------------------------------ */

/* Bug 8: on a stack that has finished no job, the 202 still carries an RFC 3339 estimate,
 * and it lies after the job's creation. Runs first: nothing has finished yet. */
static void test_submit_estimates_completion_when_first_job_on_fresh_stack(void **state)
{
    long st = 0;
    (void)state;

    assert_int_equal(psql_long("SELECT count(*) FROM jobs"), 0);
    json_t *j = post("{\"operation\":\"bulk_insert\",\"collection\":\"itsub_eta\",\"data\":["
                     "{\"id\":\"a\",\"embedding\":[1,2,3,4]},"
                     "{\"id\":\"b\",\"embedding\":[1,2,3,5]}]}", &st);
    assert_int_equal(st, 202);
    const char *eta = json_string_value(json_object_get(j, "estimated_completion"));
    const char *created = json_string_value(json_object_get(j, "created_at"));
    if (eta == NULL)
        fprintf(stderr, "estimated_completion: %s\n",
                json_is_null(json_object_get(j, "estimated_completion")) ? "null" : "absent");
    assert_non_null(eta);
    long long t_eta = rfc3339(eta), t_created = rfc3339(created);
    assert_true(t_eta > 0);
    assert_true(t_created > 0);
    assert_true(t_eta > t_created);
    assert_true(t_eta + 1 >= (long long)time(NULL));
    /* bulk_embed on the configured model, before any embed job ran: also an estimate. */
    json_t *k = post("{\"operation\":\"bulk_embed\",\"model\":\"hashmodel\",\"data\":["
                     "{\"text\":\"a\"},{\"text\":\"b\"}]}", &st);
    assert_int_equal(st, 202);
    assert_true(rfc3339(json_string_value(json_object_get(k, "estimated_completion"))) >
                rfc3339(json_string_value(json_object_get(k, "created_at"))));
    wait_status(json_string_value(json_object_get(j, "job_id")), "completed");
    wait_status(json_string_value(json_object_get(k, "job_id")), "completed");
    json_decref(j);
    json_decref(k);
}

/* Bug 1: text that is not valid UTF-8 is refused at the door with the item's field, in the
 * fast bulk_insert path, the jansson path and bulk_embed, and no job is written. */
static void test_submit_rejects_invalid_utf8_naming_the_item(void **state)
{
    static const struct {
        const char *body;
        const char *field;
    } cases[] = {
        /* fast path: a plain id with a stray byte */
        { "{\"operation\":\"bulk_insert\",\"collection\":\"itsub_utf\",\"data\":["
          "{\"id\":\"ok\",\"embedding\":[1,2,3,4]},{\"id\":\"bad\xff\",\"embedding\":[1,2,3,4]}]}",
          "data[1].id" },
        /* fast path: a truncated sequence at the end of the id */
        { "{\"operation\":\"bulk_insert\",\"collection\":\"itsub_utf\",\"data\":["
          "{\"id\":\"x\xc3\",\"embedding\":[1,2,3,4]}]}", "data[0].id" },
        /* an overlong encoding of '/' */
        { "{\"operation\":\"bulk_insert\",\"collection\":\"itsub_utf\",\"data\":["
          "{\"id\":\"\xc0\xaf\",\"embedding\":[1,2,3,4]}]}", "data[0].id" },
        /* jansson path for the item (an escape in the id) */
        { "{\"operation\":\"bulk_insert\",\"collection\":\"itsub_utf\",\"data\":["
          "{\"id\":\"\\u0041\xfe\",\"embedding\":[1,2,3,4]}]}", "data[0].id" },
        /* metadata strings */
        { "{\"operation\":\"bulk_insert\",\"collection\":\"itsub_utf\",\"data\":["
          "{\"id\":\"m\",\"embedding\":[1,2,3,4],\"metadata\":{\"t\":\"\xed\xa0\x80\"}}]}",
          "data[0].metadata" },
        /* bulk_embed: text and id */
        { "{\"operation\":\"bulk_embed\",\"model\":\"hashmodel\",\"data\":["
          "{\"text\":\"fine\"},{\"text\":\"caf\xe9\"}]}", "data[1].text" },
        { "{\"operation\":\"bulk_embed\",\"model\":\"hashmodel\",\"data\":["
          "{\"text\":\"fine\",\"id\":\"\xf8\x88\x80\x80\x80\"}]}", "data[0].id" },
    };
    (void)state;

    long before = psql_long("SELECT count(*) FROM jobs");
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        long st = 0;
        json_t *j = post(cases[i].body, &st);
        const char *field = error_field(j);
        if (st != 400 || field == NULL || strcmp(field, cases[i].field) != 0) {
            char *dump = j ? json_dumps(j, 0) : NULL;
            fprintf(stderr, "case %zu: %ld %s (want 400 %s)\n", i, st, dump ? dump : "-",
                    cases[i].field);
            free(dump);
        }
        assert_int_equal(st, 400);
        assert_non_null(field);
        assert_string_equal(field, cases[i].field);
        json_decref(j);
    }
    assert_int_equal(psql_long("SELECT count(*) FROM jobs"), before);
    /* Valid multi-byte text still passes. */
    long st = 0;
    json_t *j = post("{\"operation\":\"bulk_insert\",\"collection\":\"itsub_utf\",\"data\":["
                     "{\"id\":\"caf\xc3\xa9-\xf0\x9f\x98\x80\",\"embedding\":[1,2,3,4],"
                     "\"metadata\":{\"t\":\"\xe2\x82\xac\"}}]}", &st);
    assert_int_equal(st, 202);
    wait_status(json_string_value(json_object_get(j, "job_id")), "completed");
    json_decref(j);
}

/* Bug 7: bulk_insert's model, when given, must be a configured one. */
static void test_submit_rejects_unconfigured_model_when_bulk_insert(void **state)
{
    long st = 0;
    (void)state;

    long before = psql_long("SELECT count(*) FROM jobs");
    json_t *j = post("{\"operation\":\"bulk_insert\",\"model\":\"free-form-1\",\"collection\":"
                     "\"itsub_model\",\"data\":[{\"id\":\"a\",\"embedding\":[1,2,3,4]}]}", &st);
    assert_int_equal(st, 400);
    assert_non_null(error_field(j));
    assert_string_equal(error_field(j), "model");
    json_decref(j);
    assert_int_equal(psql_long("SELECT count(*) FROM jobs"), before);
    j = post("{\"operation\":\"bulk_insert\",\"model\":\"hashmodel\",\"collection\":"
             "\"itsub_model\",\"data\":[{\"id\":\"a\",\"embedding\":[1,2,3,4]}]}", &st);
    assert_int_equal(st, 202);
    wait_status(json_string_value(json_object_get(j, "job_id")), "completed");
    json_decref(j);
    j = post("{\"operation\":\"bulk_insert\",\"collection\":\"itsub_model\",\"data\":["
             "{\"id\":\"b\",\"embedding\":[1,2,3,4]}]}", &st);
    assert_int_equal(st, 202);
    json_decref(j);
}

/* Bug: the first job into a collection fixed its dimension, so a bulk_insert of 1-dimensional
 * vectors into "hashmodel_embeddings" broke every later default bulk_embed of hashmodel.
 * A configured model's default collection has the model's dimension, from the start. */
static void test_submit_rejects_squatting_a_models_default_collection(void **state)
{
    long st = 0;
    (void)state;

    long before = psql_long("SELECT count(*) FROM jobs");
    json_t *j = post("{\"operation\":\"bulk_insert\",\"collection\":\"hashmodel_embeddings\","
                     "\"data\":[{\"id\":\"x\",\"embedding\":[1]}]}", &st);
    assert_int_equal(st, 400);
    assert_non_null(error_field(j));
    assert_string_equal(error_field(j), "data[0].embedding");
    json_decref(j);
    assert_int_equal(psql_long("SELECT count(*) FROM jobs"), before);
    j = post("{\"operation\":\"bulk_embed\",\"model\":\"hashmodel\",\"data\":["
             "{\"text\":\"a squatter-free collection\"}]}", &st);
    assert_int_equal(st, 202);
    wait_status(json_string_value(json_object_get(j, "job_id")), "completed");
    json_decref(j);
    j = post("{\"operation\":\"bulk_insert\",\"collection\":\"hashmodel_embeddings\","
             "\"data\":[{\"id\":\"y\",\"embedding\":[1,2,3,4]}]}", &st);
    assert_int_equal(st, 202);
    json_decref(j);
}

/* Bug 5: the connection breaks after PostgreSQL committed the job but before batchd heard
 * so: the job exists, so the client gets the 202 (not a 503 that invites a duplicate), and
 * the job runs to the end. */
static void test_submit_answers_202_when_connection_breaks_after_commit(void **state)
{
    long st = 0;
    (void)state;

    int fired = bd_it_pgproxy_fired();
    bd_it_pgproxy_arm();
    json_t *j = post("{\"operation\":\"bulk_insert\",\"collection\":\"itsub_commit\",\"data\":["
                     "{\"id\":\"a\",\"embedding\":[1,2,3,4]},"
                     "{\"id\":\"b\",\"embedding\":[4,3,2,1]}]}", &st);
    bd_it_pgproxy_disarm();
    assert_int_equal(bd_it_pgproxy_fired(), fired + 1);     /* the answer really was lost */
    if (st != 202) {
        char *dump = j ? json_dumps(j, 0) : NULL;
        fprintf(stderr, "answer: %ld %s\n", st, dump ? dump : "-");
        free(dump);
    }
    assert_int_equal(st, 202);
    const char *id = json_string_value(json_object_get(j, "job_id"));
    assert_non_null(id);
    assert_int_equal(psql_long("SELECT count(*) FROM jobs WHERE collection = 'itsub_commit'"), 1);
    wait_status(id, "completed");
    assert_int_equal(psql_long("SELECT processed_items FROM jobs WHERE id = '%s'", id), 2);
    json_decref(j);
}

/* ---- setup ------------------------------------------------------------------------------ */

static int it_setup(void **state)
{
    (void)state;
    if (bd_it_scratch_open(&g_scr, "itsub", "BD_IT_SUBMIT_REDIS_DB", "19") != 0 ||
        bd_it_scratch_proxy(&g_scr, NULL, g_pg_url, sizeof(g_pg_url)) != 0)
        return -1;
    if (bd_it_start(&g_proc, it_config, NULL) != 0)
        return -1;
    g_started = true;
    return 0;
}

static int it_teardown(void **state)
{
    int rc = 0;
    (void)state;
    /* A clean exit (0) also means no leak report under ASan. */
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
        cmocka_unit_test(test_submit_estimates_completion_when_first_job_on_fresh_stack),
        cmocka_unit_test(test_submit_rejects_invalid_utf8_naming_the_item),
        cmocka_unit_test(test_submit_rejects_unconfigured_model_when_bulk_insert),
        cmocka_unit_test(test_submit_rejects_squatting_a_models_default_collection),
        cmocka_unit_test(test_submit_answers_202_when_connection_breaks_after_commit),
    };
    return cmocka_run_group_tests(tests, it_setup, it_teardown);
}
