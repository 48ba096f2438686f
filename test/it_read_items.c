/* it_read_items.c -- GET /jobs/{id}/items end to end (SPEC §2): every item by default, the
 * status filter, paging, and outcomes taken from the job's own batches and item errors
 * (not from the collection's vectors, which a later job may overwrite). The real batchd
 * binary, the test stack's Redis and PostgreSQL, the built-in hashing model.
 * SPDX-License-Identifier: MIT
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bd_it.h"

static const char *it_config =
    "jobs:\n"
    "  max_concurrent_jobs: 2\n"
    "  processing_interval: 0.1\n"
    "models:\n"
    "  - name: itr_hash\n"
    "    provider: hashing\n"
    "    dimensions: 8\n";

static struct bd_it_proc g_proc;
static bool g_started;
static char g_coll[64];               /* itr_<pid> */

/* A bulk_embed job of n items into g_coll, batch_size 3; item i has id "<pfx><i>", except
 * no_id (if < n), which has none. Waits until it completed; returns its id (caller frees). */
static char *it_run_job(const char *pfx, unsigned n, unsigned no_id)
{
    json_t *data = json_array(), *body, *j, *st;
    char *text, *id;
    long status = 0;

    for (unsigned i = 0; i < n; i++) {
        char buf[96], t[128];
        snprintf(buf, sizeof(buf), "%s%u", pfx, i);
        snprintf(t, sizeof(t), "text %s %u %d", pfx, i, (int)getpid());
        json_t *item = json_pack("{s:s}", "text", t);
        if (i != no_id)
            json_object_set_new(item, "id", json_string(buf));
        json_array_append_new(data, item);
    }
    body = json_pack("{s:s,s:s,s:s,s:o,s:{s:i}}", "operation", "bulk_embed", "model",
                     "itr_hash", "collection", g_coll, "data", data, "options", "batch_size",
                     3);
    text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    j = bd_it_json(&g_proc, "POST", "/api/v1/batch/jobs", text, &status);
    free(text);
    if (status != 202)
        fprintf(stderr, "submit -> %ld\n", status);
    assert_int_equal(status, 202);
    id = strdup(json_string_value(json_object_get(j, "job_id")));
    json_decref(j);
    st = bd_it_wait_status(&g_proc, id, "completed", 30);
    assert_non_null(st);
    assert_string_equal(json_string_value(json_object_get(st, "status")), "completed");
    json_decref(st);
    return id;
}

static json_t *it_items(const char *job_id, const char *query, long want)
{
    char path[512];
    long status = 0;
    json_t *j;

    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%s/items%s", job_id, query);
    j = bd_it_json(&g_proc, "GET", path, NULL, &status);
    if (status != want)
        fprintf(stderr, "GET %s -> %ld\n", path, status);
    assert_int_equal(status, want);
    assert_non_null(j);
    return j;
}

/* Item i of j's "items" is index want_index with status want_status (and id want_id when
 * not NULL). */
static void it_expect_item(json_t *j, size_t i, long long want_index, const char *want_status,
                           const char *want_id)
{
    json_t *it = json_array_get(json_object_get(j, "items"), i);

    assert_non_null(it);
    assert_int_equal(json_integer_value(json_object_get(it, "index")), want_index);
    assert_string_equal(json_string_value(json_object_get(it, "status")), want_status);
    if (want_id != NULL)
        assert_string_equal(json_string_value(json_object_get(it, "id")), want_id);
    if (strcmp(want_status, "failed") == 0)
        assert_non_null(json_object_get(it, "error"));
    else
        assert_null(json_object_get(it, "error"));
}

static void items_lists_every_item_by_default_when_job_finished(void **state)
{
    char pfx[64], want[160];
    char *id;
    json_t *j;

    (void)state;
    snprintf(pfx, sizeof(pfx), "itr%d_a", (int)getpid());
    id = it_run_job(pfx, 7, 5);

    /* No status= means all (SPEC §2): a finished job without failures lists its 7 items. */
    j = it_items(id, "", 200);
    assert_int_equal(json_integer_value(json_object_get(j, "count")), 7);
    assert_int_equal(json_array_size(json_object_get(j, "items")), 7);
    for (unsigned i = 0; i < 7; i++) {
        if (i == 5)
            snprintf(want, sizeof(want), "%s:5", id);      /* the id batchd gave it */
        else
            snprintf(want, sizeof(want), "%s%u", pfx, i);
        it_expect_item(j, i, i, "succeeded", want);
    }
    assert_true(json_is_false(json_object_get(j, "has_more")));
    assert_true(json_is_null(json_object_get(j, "next_cursor")));
    json_decref(j);

    j = it_items(id, "?status=all", 200);
    assert_int_equal(json_integer_value(json_object_get(j, "count")), 7);
    json_decref(j);
    j = it_items(id, "?status=succeeded", 200);
    assert_int_equal(json_integer_value(json_object_get(j, "count")), 7);
    json_decref(j);
    j = it_items(id, "?status=failed", 200);
    assert_int_equal(json_integer_value(json_object_get(j, "count")), 0);
    json_decref(j);

    /* Three at a time: 0-2 | 3-5 | 6, each item once, in order. */
    char query[128] = "?limit=3";
    unsigned seen = 0;
    for (int page = 0; page < 5; page++) {
        size_t n;
        j = it_items(id, query, 200);
        n = json_array_size(json_object_get(j, "items"));
        for (size_t i = 0; i < n; i++)
            it_expect_item(j, i, seen + i, "succeeded", NULL);
        seen += (unsigned)n;
        if (json_is_null(json_object_get(j, "next_cursor"))) {
            json_decref(j);
            break;
        }
        snprintf(query, sizeof(query), "?limit=3&cursor=%s",
                 json_string_value(json_object_get(j, "next_cursor")));
        json_decref(j);
    }
    assert_int_equal(seen, 7);
    free(id);
}

static void items_keep_their_outcome_when_a_later_job_overwrites_vectors(void **state)
{
    char pfx[64], want[96];
    char *first, *second;
    json_t *j;

    (void)state;
    snprintf(pfx, sizeof(pfx), "itr%d_b", (int)getpid());
    first = it_run_job(pfx, 3, 99);
    /* The same ids into the same collection: the vectors now belong to the second job. */
    second = it_run_job(pfx, 2, 99);

    j = it_items(first, "?status=succeeded", 200);
    assert_int_equal(json_integer_value(json_object_get(j, "count")), 3);
    for (unsigned i = 0; i < 3; i++) {
        snprintf(want, sizeof(want), "%s%u", pfx, i);
        it_expect_item(j, i, i, "succeeded", want);
    }
    json_decref(j);

    /* An item with an error row failed, whatever the collection holds. */
    assert_int_equal(bd_it_sh("psql '%s' -X -q -v ON_ERROR_STOP=1 -c \"INSERT INTO "
                              "job_item_errors (job_id, item_index, item_id, code, message) "
                              "VALUES ('%s', 1, '%s1', 'processing_error', 'it failed')\" "
                              ">/dev/null",
                              bd_it_env("BATCH_POSTGRES_URL", ""), first, pfx),
                     0);
    j = it_items(first, "", 200);
    assert_int_equal(json_integer_value(json_object_get(j, "count")), 3);
    it_expect_item(j, 0, 0, "succeeded", NULL);
    it_expect_item(j, 1, 1, "failed", NULL);
    it_expect_item(j, 2, 2, "succeeded", NULL);
    json_decref(j);
    j = it_items(first, "?status=succeeded", 200);
    assert_int_equal(json_integer_value(json_object_get(j, "count")), 2);
    it_expect_item(j, 0, 0, "succeeded", NULL);
    it_expect_item(j, 1, 2, "succeeded", NULL);
    json_decref(j);
    j = it_items(first, "?status=failed", 200);
    assert_int_equal(json_integer_value(json_object_get(j, "count")), 1);
    it_expect_item(j, 0, 1, "failed", NULL);
    json_decref(j);
    free(first);
    free(second);
}

static void items_answer_errors_from_the_error_map(void **state)
{
    json_t *j, *err;

    (void)state;
    j = it_items("itr_no_such_job", "", 404);
    err = json_object_get(j, "error");
    assert_string_equal(json_string_value(json_object_get(err, "code")), "not_found");
    json_decref(j);
    j = it_items("itr_no_such_job", "?status=bogus", 400);
    err = json_object_get(j, "error");
    assert_string_equal(json_string_value(json_object_get(err, "code")), "validation_error");
    assert_string_equal(json_string_value(json_object_get(err, "field")), "status");
    json_decref(j);
}

static int it_setup(void **state)
{
    (void)state;
    snprintf(g_coll, sizeof(g_coll), "itr_%d", (int)getpid());
    if (bd_it_start(&g_proc, it_config, NULL) != 0)
        return -1;
    g_started = true;
    return 0;
}

static int it_teardown(void **state)
{
    (void)state;
    if (g_started)
        bd_it_stop(&g_proc, SIGTERM, 20);
    bd_it_sh("psql '%s' -X -q -c \"DELETE FROM vectors WHERE collection = '%s'; "
             "DELETE FROM jobs WHERE collection = '%s'; "
             "DELETE FROM collections WHERE name = '%s'\" >/dev/null 2>&1",
             bd_it_env("BATCH_POSTGRES_URL", ""), g_coll, g_coll, g_coll);
    bd_it_kill_all();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(items_lists_every_item_by_default_when_job_finished),
        cmocka_unit_test(items_keep_their_outcome_when_a_later_job_overwrites_vectors),
        cmocka_unit_test(items_answer_errors_from_the_error_map),
    };

    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests_name("it_read_items", tests, it_setup, it_teardown);
}
