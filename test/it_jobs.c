/* it_jobs.c -- the job engine end to end: the real batchd binary, the real Redis and
 * PostgreSQL of the test stack. bulk_insert lifecycle, progress, priority, cancel,
 * validation, idempotency, backpressure, crash recovery (SIGKILL, two processes), Redis
 * flushed, PostgreSQL restarted, results while running.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <curl/curl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bd_it.h"
#include "batchd/buf.h"
#include "fake_model/fake_model_client.h"

static const char *it_config =
    "jobs:\n"
    "  max_concurrent_jobs: 2\n"
    "  processing_interval: 0.1\n"
    "  retry_delay: 0.05\n"
    "  lease: 2\n"
    "  reaper_interval: 0.5\n"
    "models:\n"
    "  - name: hashmodel\n"
    "    provider: hashing\n"
    "    dimensions: 16\n";

static const char *it_config_serial =
    "jobs:\n"
    "  max_concurrent_jobs: 1\n"
    "  processing_interval: 0.1\n"
    "  retry_delay: 0.05\n"
    "  lease: 2\n"
    "  reaper_interval: 0.5\n"
    "models:\n"
    "  - name: hashmodel\n"
    "    provider: hashing\n"
    "    dimensions: 16\n";

static char it_prefix[64];

/* A bulk_insert body with n vectors of dim d in collection coll. Caller frees. */
static char *insert_body(const char *coll, unsigned n, unsigned d, unsigned batch,
                         const char *priority)
{
    struct bd_buf b;
    bd_buf_init(&b);
    bd_buf_printf(&b, "{\"operation\":\"bulk_insert\",\"collection\":\"%s\",\"options\":"
                      "{\"batch_size\":%u,\"priority\":\"%s\"},\"data\":[",
                  coll, batch, priority);
    for (unsigned i = 0; i < n; i++) {
        bd_buf_printf(&b, "%s{\"id\":\"v%u\",\"embedding\":[", i ? "," : "", i);
        for (unsigned k = 0; k < d; k++)
            bd_buf_printf(&b, "%s%.4f", k ? "," : "", (double)((i * 31 + k) % 97) / 97.0);
        bd_buf_printf(&b, "],\"metadata\":{\"n\":%u}}", i);
    }
    bd_buf_puts(&b, "]}");
    return bd_buf_steal(&b, NULL);
}

static long status_field(struct bd_it_proc *p, const char *id, const char *obj,
                         const char *field)
{
    char path[256];
    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%s/status", id);
    json_t *j = bd_it_json(p, "GET", path, NULL, NULL);
    long v = (long)json_integer_value(json_object_get(json_object_get(j, obj), field));
    json_decref(j);
    return v;
}

static void wait_completed(struct bd_it_proc *p, const char *id, double timeout_s)
{
    json_decref(bd_it_expect_status(p, id, "completed", timeout_s));
}

static void coll_name(char *out, size_t len, const char *what)
{
    snprintf(out, len, "%s_%s", it_prefix, what);
}

/* ---- cases ------------------------------------------------------------------------------ */

static void test_jobs_seed_insert_completes_when_submitted(void **state)
{
    struct bd_it_proc p;
    char coll[96], body[1024], path[256];
    long st;
    (void)state;

    assert_int_equal(bd_it_start(&p, it_config, NULL), 0);
    coll_name(coll, sizeof(coll), "seed");
    snprintf(body, sizeof(body),
             "{\"operation\":\"bulk_insert\",\"collection\":\"%s\",\"data\":["
             "{\"id\":\"vec_001\",\"embedding\":[0.1,0.2,0.3],\"metadata\":{\"text\":\"example 1\"}},"
             "{\"id\":\"vec_002\",\"embedding\":[0.4,0.5,0.6],\"metadata\":{\"text\":\"example 2\"}}]}",
             coll);
    json_t *j = bd_it_json(&p, "POST", "/api/v1/batch/jobs", body, &st);
    assert_int_equal(st, 202);
    const char *id = json_string_value(json_object_get(j, "job_id"));
    assert_non_null(id);
    assert_true(strncmp(id, "batch_insert_", 13) == 0);
    assert_string_equal(json_string_value(json_object_get(j, "status")), "queued");
    assert_string_equal(json_string_value(json_object_get(j, "operation")), "bulk_insert");
    assert_int_equal(json_integer_value(json_object_get(j, "items_count")), 2);
    assert_string_equal(json_string_value(json_object_get(j, "priority")), "normal");
    assert_non_null(json_object_get(j, "created_at"));
    assert_non_null(json_object_get(j, "queue_position"));
    assert_non_null(json_object_get(j, "estimated_completion"));
    assert_non_null(json_object_get(json_object_get(j, "metadata"), "submitted_by"));
    assert_non_null(json_object_get(json_object_get(j, "metadata"), "integration_pattern"));
    char *jid = strdup(id);
    json_decref(j);

    wait_completed(&p, jid, 30);
    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%s/status", jid);
    j = bd_it_json(&p, "GET", path, NULL, &st);
    assert_int_equal(st, 200);
    json_t *res = json_object_get(j, "results");
    assert_int_equal(json_integer_value(json_object_get(res, "stored_vectors")), 2);
    assert_string_equal(json_string_value(json_object_get(res, "output_collection")), coll);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "progress"),
                                                        "processed_items")), 2);
    json_decref(j);

    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM vectors WHERE collection = '%s'", coll),
                     2);
    char meta[256];
    bd_it_psql_str(meta, sizeof(meta),
             "SELECT metadata->>'text' || '|' || embedding::text FROM vectors "
             "WHERE collection = '%s' AND id = 'vec_002'", coll);
    assert_string_equal(meta, "example 2|{0.4,0.5,0.6}");
    free(jid);
    assert_int_equal(bd_it_stop(&p, SIGTERM, 20), 0);
}

/* Progress sampled while a 10,000-item job runs never goes back, and passes through several
 * values strictly between 0 and the total: a job that jumps from 0 to 10,000 fails. The
 * model (the fake server, one request per 500-item batch) answers after 50 ms, so each of
 * the 20 checkpoints stays visible for at least that long to a sampler polling every 5 ms. */
static void test_jobs_progress_rises_through_each_batch_when_embedding_10000(void **state)
{
    enum { TOTAL = 10000, BATCH = 500, MIN_SEEN = 3 };
    const char *const fake_args[] = { "--dim", "16", "--latency-ms", "50", NULL };
    struct bd_it_proc p;
    struct bd_buf yaml, body;
    char coll[96];
    long st, last = 0, seen[TOTAL / BATCH];
    unsigned n_seen = 0, samples = 0;
    pid_t fake_pid = 0;
    int fake_port = 0;
    (void)state;

    assert_int_equal(fake_model_spawn(NULL, fake_args, &fake_pid, &fake_port), 0);
    bd_buf_init(&yaml);
    bd_buf_printf(&yaml,
                  "jobs:\n  max_concurrent_jobs: 2\n  processing_interval: 0.1\n"
                  "  retry_delay: 0.05\n  lease: 5\n  reaper_interval: 0.5\n"
                  "models:\n  - name: slowfake\n    provider: ollama\n"
                  "    base_url: http://127.0.0.1:%d\n    dimensions: 16\n"
                  "    max_inputs_per_request: %d\n    timeout: 10\n",
                  fake_port, BATCH);
    assert_int_equal(bd_it_start(&p, yaml.data, NULL), 0);
    bd_buf_free(&yaml);

    /* Texts unique to this run: the embedding cache must not answer for the model. */
    coll_name(coll, sizeof(coll), "progress");
    bd_buf_init(&body);
    bd_buf_printf(&body, "{\"operation\":\"bulk_embed\",\"model\":\"slowfake\",\"collection\":"
                         "\"%s\",\"options\":{\"batch_size\":%d},\"data\":[", coll, BATCH);
    for (unsigned i = 0; i < TOTAL; i++)
        bd_buf_printf(&body, "%s{\"text\":\"%s progress text %u\"}", i ? "," : "", it_prefix, i);
    bd_buf_puts(&body, "]}");
    char *id = bd_it_submit(&p, body.data, &st);
    bd_buf_free(&body);
    assert_int_equal(st, 202);

    double deadline = bd_it_now() + 120;
    for (;;) {
        long done = status_field(&p, id, "progress", "processed_items");
        samples++;
        if (done < last)
            fail_msg("processed_items went back from %ld to %ld", last, done);
        if (done > 0 && done < TOTAL && done != last && n_seen < TOTAL / BATCH)
            seen[n_seen++] = done;
        last = done;
        if (done == TOTAL || bd_it_now() > deadline)
            break;
        bd_it_sleep_ms(5);
    }
    fprintf(stderr, "progress: %u samples, %u distinct values between 0 and %d:", samples,
            n_seen, TOTAL);
    for (unsigned i = 0; i < n_seen; i++)
        fprintf(stderr, " %ld", seen[i]);
    fprintf(stderr, "\n");
    assert_int_equal(last, TOTAL);
    assert_true(n_seen >= MIN_SEEN);
    wait_completed(&p, id, 30);
    assert_int_equal(status_field(&p, id, "progress", "total_batches"), TOTAL / BATCH);
    assert_int_equal(status_field(&p, id, "progress", "current_batch"), TOTAL / BATCH);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM vectors WHERE job_id = '%s'", id),
                     TOTAL);
    free(id);
    assert_int_equal(bd_it_stop(&p, SIGTERM, 20), 0);
    assert_int_equal(fake_model_stop(fake_pid), 0);
}

static void test_jobs_run_high_before_normal_before_low_when_saturated(void **state)
{
    struct bd_it_proc p;
    char coll[96], small[96];
    long st;
    (void)state;

    assert_int_equal(bd_it_start(&p, it_config_serial, NULL), 0);
    coll_name(coll, sizeof(coll), "prio_block");
    coll_name(small, sizeof(small), "prio");
    char *body = insert_body(coll, 20000, 16, 50, "normal");
    char *blocker = bd_it_submit(&p, body, &st);
    free(body);
    assert_non_null(blocker);
    /* Wait until the blocker runs, then queue the others behind it. */
    json_decref(bd_it_wait_status(&p, blocker, "processing", 20));
    const char *order[] = { "low", "normal", "high", "normal", "high", "low" };
    char *ids[6];
    for (int i = 0; i < 6; i++) {
        body = insert_body(small, 3, 4, 10, order[i]);
        /* same ids across jobs: upserts into one collection, fine */
        ids[i] = bd_it_submit(&p, body, &st);
        free(body);
        assert_int_equal(st, 202);
    }
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM jobs WHERE id = '%s' AND status = "
                               "'processing'", blocker), 1);
    wait_completed(&p, blocker, 60);
    for (int i = 0; i < 6; i++)
        wait_completed(&p, ids[i], 30);
    /* Expected start order: high(2), high(4), normal(1), normal(3), low(0), low(5). */
    const int want[] = { 2, 4, 1, 3, 0, 5 };
    char got[512], expect[512] = "";
    bd_it_psql_str(got, sizeof(got),
             "SELECT string_agg(id, ',' ORDER BY started_at, seq) FROM jobs WHERE id IN "
             "('%s','%s','%s','%s','%s','%s')", ids[0], ids[1], ids[2], ids[3], ids[4], ids[5]);
    for (int i = 0; i < 6; i++) {
        strcat(expect, ids[want[i]]);
        if (i < 5)
            strcat(expect, ",");
    }
    assert_string_equal(got, expect);
    for (int i = 0; i < 6; i++)
        free(ids[i]);
    free(blocker);
    assert_int_equal(bd_it_stop(&p, SIGTERM, 20), 0);
}

static void test_jobs_cancel_queued_and_processing_when_deleted(void **state)
{
    struct bd_it_proc p;
    char coll[96], path[256];
    long st;
    (void)state;

    assert_int_equal(bd_it_start(&p, it_config_serial, NULL), 0);
    coll_name(coll, sizeof(coll), "cancel");
    char *body = insert_body(coll, 20000, 16, 50, "normal");
    char *running = bd_it_submit(&p, body, &st);
    free(body);
    json_decref(bd_it_wait_status(&p, running, "processing", 20));
    body = insert_body(coll, 10, 16, 5, "low");
    char *queued = bd_it_submit(&p, body, &st);
    free(body);

    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%s", queued);
    json_t *j = bd_it_json(&p, "DELETE", path, NULL, &st);
    assert_int_equal(st, 200);
    assert_string_equal(json_string_value(json_object_get(j, "status")), "cancelled");
    json_decref(j);
    j = bd_it_json(&p, "DELETE", path, NULL, &st);
    assert_int_equal(st, 409);
    assert_non_null(json_object_get(json_object_get(j, "error"), "code"));
    json_decref(j);

    /* wait for some progress, then cancel the running one */
    double deadline = bd_it_now() + 20;
    while (status_field(&p, running, "progress", "processed_items") < 500 &&
           bd_it_now() < deadline)
        bd_it_sleep_ms(10);
    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%s", running);
    double t0 = bd_it_now();
    j = bd_it_json(&p, "DELETE", path, NULL, &st);
    assert_int_equal(st, 200);
    json_decref(j);
    j = bd_it_wait_status(&p, running, "cancelled", 10);
    assert_string_equal(json_string_value(json_object_get(j, "status")), "cancelled");
    json_decref(j);
    assert_true(bd_it_now() - t0 < 5.0);
    long done = status_field(&p, running, "progress", "processed_items");
    assert_true(done > 0 && done < 20000);
    /* rows already written stay, and exactly those */
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM vectors WHERE job_id = '%s'", running),
                     done);
    j = bd_it_json(&p, "DELETE", path, NULL, &st);
    assert_int_equal(st, 409);
    json_decref(j);
    j = bd_it_json(&p, "DELETE", "/api/v1/batch/jobs/no_such_job_123", NULL, &st);
    assert_int_equal(st, 404);
    json_decref(j);
    /* the queued job never ran */
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM jobs WHERE id = '%s' AND started_at IS "
                               "NULL AND status = 'cancelled'", queued), 1);

    /* retry resumes the cancelled job's unfinished batches */
    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%s/retry", running);
    j = bd_it_json(&p, "POST", path, NULL, &st);
    assert_int_equal(st, 202);
    json_decref(j);
    wait_completed(&p, running, 60);
    assert_int_equal(status_field(&p, running, "progress", "processed_items"), 20000);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM vectors WHERE job_id = '%s'", running),
                     20000);
    free(running);
    free(queued);
    assert_int_equal(bd_it_stop(&p, SIGTERM, 20), 0);
}

struct bad_case {
    const char *body;
    const char *content_type;
    long status;
    const char *field;
};

static void test_jobs_reject_each_invalid_body_when_submitted(void **state)
{
    struct bd_it_proc p;
    char url[256];
    (void)state;

    static const struct bad_case cases[] = {
        { "{", NULL, 400, "body" },
        { "[]", NULL, 400, "body" },
        { "{\"operation\":\"bulk_nope\",\"data\":[{\"text\":\"a\"}]}", NULL, 400, "operation" },
        { "{\"data\":[{\"text\":\"a\"}]}", NULL, 400, "operation" },
        { "{\"operation\":\"bulk_embed\",\"data\":[{\"text\":\"a\"}]}", NULL, 400, "model" },
        { "{\"operation\":\"bulk_embed\",\"model\":\"nope\",\"data\":[{\"text\":\"a\"}]}", NULL,
          400, "model" },
        { "{\"operation\":\"bulk_embed\",\"model\":\"hashmodel\",\"data\":[]}", NULL, 400,
          "data" },
        { "{\"operation\":\"bulk_embed\",\"model\":\"hashmodel\",\"data\":\"x\"}", NULL, 400,
          "data" },
        { "{\"operation\":\"bulk_embed\",\"model\":\"hashmodel\",\"data\":[{\"text\":\"\"}]}",
          NULL, 400, "data[0].text" },
        { "{\"operation\":\"bulk_embed\",\"model\":\"hashmodel\",\"data\":[{\"text\":5}]}",
          NULL, 400, "data[0].text" },
        { "{\"operation\":\"bulk_embed\",\"model\":\"hashmodel\",\"data\":[{\"text\":\"a\","
          "\"id\":\"x\"},{\"text\":\"b\",\"id\":\"x\"}]}", NULL, 400, "data[1].id" },
        { "{\"operation\":\"bulk_embed\",\"model\":\"hashmodel\",\"data\":[{\"text\":\"a\","
          "\"metadata\":3}]}", NULL, 400, "data[0].metadata" },
        { "{\"operation\":\"bulk_embed\",\"model\":\"hashmodel\",\"data\":[{\"text\":\"a\","
          "\"bogus\":1}]}", NULL, 400, "data[0].bogus" },
        { "{\"operation\":\"bulk_embed\",\"model\":\"hashmodel\",\"data\":[{\"text\":\"a\"}],"
          "\"options\":{\"batch_size\":0}}", NULL, 400, "options.batch_size" },
        { "{\"operation\":\"bulk_embed\",\"model\":\"hashmodel\",\"data\":[{\"text\":\"a\"}],"
          "\"options\":{\"batch_size\":\"10\"}}", NULL, 400, "options.batch_size" },
        { "{\"operation\":\"bulk_embed\",\"model\":\"hashmodel\",\"data\":[{\"text\":\"a\"}],"
          "\"options\":{\"priority\":\"urgent\"}}", NULL, 400, "options.priority" },
        { "{\"operation\":\"bulk_embed\",\"model\":\"hashmodel\",\"data\":[{\"text\":\"a\"}],"
          "\"options\":{\"timeout_s\":-1}}", NULL, 400, "options.timeout_s" },
        { "{\"operation\":\"bulk_embed\",\"model\":\"hashmodel\",\"data\":[{\"text\":\"a\"}],"
          "\"options\":{\"max_retries\":1000}}", NULL, 400, "options.max_retries" },
        { "{\"operation\":\"bulk_embed\",\"model\":\"hashmodel\",\"data\":[{\"text\":\"a\"}],"
          "\"options\":{\"colour\":1}}", NULL, 400, "options.colour" },
        { "{\"operation\":\"bulk_embed\",\"model\":\"hashmodel\",\"collection\":\"Bad-Name\","
          "\"data\":[{\"text\":\"a\"}]}", NULL, 400, "collection" },
        { "{\"operation\":\"bulk_embed\",\"model\":\"hashmodel\",\"data\":[{\"text\":\"a\"}],"
          "\"extra\":1}", NULL, 400, "extra" },
        { "{\"operation\":\"bulk_insert\",\"data\":[{\"id\":\"a\",\"embedding\":[1]}]}", NULL,
          400, "collection" },
        { "{\"operation\":\"bulk_insert\",\"collection\":\"c_x\",\"data\":[{\"embedding\":[1]}]}",
          NULL, 400, "data[0].id" },
        { "{\"operation\":\"bulk_insert\",\"collection\":\"c_x\",\"data\":[{\"id\":\"a\","
          "\"embedding\":[]}]}", NULL, 400, "data[0].embedding" },
        { "{\"operation\":\"bulk_insert\",\"collection\":\"c_x\",\"data\":[{\"id\":\"a\","
          "\"embedding\":[1,2]},{\"id\":\"b\",\"embedding\":[1]}]}", NULL, 400,
          "data[1].embedding" },
        { "{\"operation\":\"bulk_insert\",\"collection\":\"c_x\",\"data\":[{\"id\":\"a\","
          "\"embedding\":[1,\"x\"]}]}", NULL, 400, "data[0].embedding[1]" },
        { "{\"operation\":\"bulk_insert\",\"collection\":\"c_x\",\"data\":[{\"id\":\"a\","
          "\"embedding\":[1e39]}]}", NULL, 400, "data[0].embedding[0]" },
        { "{\"operation\":\"bulk_insert\",\"collection\":\"c_x\",\"data\":[{\"id\":\"a\","
          "\"embedding\":[1]}]}", "text/plain", 415, NULL },
        { "{\"operation\":\"bulk_insert\",\"collection\":\"c_x\",\"data\":[{\"id\":\"a\","
          "\"embedding\":[1]},{\"id\":\"a\",\"embedding\":[2]}]}", NULL, 400, "data[1].id" },
        { "{\"operation\":\"bulk_insert\",\"collection\":\"c_x\",\"data\":[{\"id\":\"a\","
          "\"embedding\":[1],\"x\":1}]}", NULL, 400, "data[0].x" },
        { "{\"operation\":\"bulk_insert\",\"collection\":\"c_x\",\"data\":[{\"id\":\"a\","
          "\"embedding\":[1],\"metadata\":[1]}]}", NULL, 400, "data[0].metadata" },
        { "{\"operation\":\"bulk_insert\",\"collection\":\"c_x\",\"data\":[]}", NULL, 400,
          "data" },
        { "{\"operation\":\"bulk_insert\",\"collection\":\"c_x\",\"data\":[{\"id\":\"a\","
          "\"embedding\":[1]}],}", NULL, 400, "body" },
        { "{\"operation\":\"bulk_insert\",\"collection\" \"c_x\",\"data\":[{\"id\":\"a\","
          "\"embedding\":[1]}]}", NULL, 400, "body" },
        { "{\"operation\":\"bulk_insert\" \"collection\":\"c_x\",\"data\":[{\"id\":\"a\","
          "\"embedding\":[1]}]}", NULL, 400, "body" },
        { "{\"operation\":\"bulk_insert\",\"collection\":\"c_x\",\"data\":[{\"id\":\"a\" "
          "\"embedding\":[1]}]}", NULL, 400, "body" },
        { "{\"operation\":\"bulk_insert\",\"operation\":\"bulk_embed\",\"model\":\"hashmodel\","
          "\"data\":[{\"id\":\"a\",\"embedding\":[1]}]}", NULL, 400, "data[0].embedding" },
        { "{\"operation\":\"bulk_insert\",\"collection\":\"c_x\",\"data\":[{\"id\":\"a\","
          "\"embedding\":[1]}]} x", NULL, 400, "body" },
        { "{\"operation\":\"bulk_insert\",\"collection\":\"c_x\",\"data\":[{\"id\":\"a\","
          "\"embedding\":[1]},5]}", NULL, 400, "data[1]" },
    };
    assert_int_equal(bd_it_start(&p, it_config, NULL), 0);
    long before = bd_it_psql_long("SELECT count(*) FROM jobs");
    snprintf(url, sizeof(url), "%s/api/v1/batch/jobs", p.base);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct bad_case *c = &cases[i];
        char ct[128];
        snprintf(ct, sizeof(ct), "Content-Type: %s",
                 c->content_type ? c->content_type : "application/json");
        const char *hdrs[] = { ct, NULL };
        struct bd_it_resp r;
        assert_int_equal(bd_it_http("POST", url, c->body, hdrs, &r), 0);
        json_t *j = json_loads(r.body, 0, NULL);
        json_t *err = json_object_get(j, "error");
        if (r.status != c->status || err == NULL ||
            (c->field && (json_string_value(json_object_get(err, "field")) == NULL ||
                          strcmp(json_string_value(json_object_get(err, "field")), c->field))))
            fprintf(stderr, "case %zu: body %s -> %ld %s\n", i, c->body, r.status, r.body);
        assert_int_equal(r.status, c->status);
        assert_non_null(json_object_get(err, "code"));
        assert_non_null(json_object_get(err, "message"));
        if (c->field)
            assert_string_equal(json_string_value(json_object_get(err, "field")), c->field);
        json_decref(j);
        bd_it_resp_free(&r);
    }
    /* a collection that exists with another dimension */
    char coll[96], body[512];
    long st;
    coll_name(coll, sizeof(coll), "dims");
    snprintf(body, sizeof(body), "{\"operation\":\"bulk_insert\",\"collection\":\"%s\","
             "\"data\":[{\"id\":\"a\",\"embedding\":[1,2,3]}]}", coll);
    char *id = bd_it_submit(&p, body, &st);
    assert_int_equal(st, 202);
    wait_completed(&p, id, 20);
    free(id);
    before = bd_it_psql_long("SELECT count(*) FROM jobs");
    snprintf(body, sizeof(body), "{\"operation\":\"bulk_insert\",\"collection\":\"%s\","
             "\"data\":[{\"id\":\"a\",\"embedding\":[1,2]}]}", coll);
    json_t *j = bd_it_json(&p, "POST", "/api/v1/batch/jobs", body, &st);
    assert_int_equal(st, 400);
    json_decref(j);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM jobs"), before);
    assert_int_equal(bd_it_stop(&p, SIGTERM, 20), 0);
}

static void test_jobs_idempotency_key_replays_or_conflicts_when_reused(void **state)
{
    struct bd_it_proc p;
    char url[256], key[128], coll[96];
    struct bd_it_resp r1, r2, r3;
    (void)state;

    assert_int_equal(bd_it_start(&p, it_config, NULL), 0);
    coll_name(coll, sizeof(coll), "idem");
    snprintf(url, sizeof(url), "%s/api/v1/batch/jobs", p.base);
    snprintf(key, sizeof(key), "Idempotency-Key: %s-key", it_prefix);
    const char *hdrs[] = { key, NULL };
    char *body = insert_body(coll, 5, 4, 10, "normal");
    char *other = insert_body(coll, 6, 4, 10, "normal");
    assert_int_equal(bd_it_http("POST", url, body, hdrs, &r1), 0);
    assert_int_equal(r1.status, 202);
    assert_int_equal(bd_it_http("POST", url, body, hdrs, &r2), 0);
    assert_int_equal(r2.status, 200);
    json_t *a = json_loads(r1.body, 0, NULL), *b = json_loads(r2.body, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(a, "job_id")),
                        json_string_value(json_object_get(b, "job_id")));
    assert_int_equal(bd_it_http("POST", url, other, hdrs, &r3), 0);
    assert_int_equal(r3.status, 409);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM jobs WHERE idempotency_key = '%s-key'",
                               it_prefix), 1);
    json_decref(a);
    json_decref(b);
    bd_it_resp_free(&r1);
    bd_it_resp_free(&r2);
    bd_it_resp_free(&r3);
    free(body);
    free(other);
    assert_int_equal(bd_it_stop(&p, SIGTERM, 20), 0);
}

static void test_jobs_answer_429_with_retry_after_when_queue_full(void **state)
{
    struct bd_it_proc p;
    char url[256], coll[96], ra[32];
    struct bd_it_resp r;
    const char *env[] = { "BATCH_MAX_QUEUED_ITEMS=100", NULL };
    (void)state;

    assert_int_equal(bd_it_start(&p, it_config, env), 0);
    coll_name(coll, sizeof(coll), "bp");
    snprintf(url, sizeof(url), "%s/api/v1/batch/jobs", p.base);
    long before = bd_it_psql_long("SELECT count(*) FROM jobs");
    char *body = insert_body(coll, 150, 4, 10, "normal");
    assert_int_equal(bd_it_http("POST", url, body, NULL, &r), 0);
    assert_int_equal(r.status, 429);
    assert_non_null(bd_it_resp_header(&r, "Retry-After", ra, sizeof(ra)));
    assert_true(atoi(ra) > 0);
    assert_non_null(strstr(r.body, "queue_full"));
    bd_it_resp_free(&r);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM jobs"), before);
    free(body);
    assert_int_equal(bd_it_stop(&p, SIGTERM, 20), 0);
}

/* A bulk_embed body of n texts for model (unique to this run). Caller frees. */
static char *embed_body(const char *model, const char *coll, unsigned n, const char *tag)
{
    struct bd_buf b;
    bd_buf_init(&b);
    bd_buf_printf(&b, "{\"operation\":\"bulk_embed\",\"model\":\"%s\",\"collection\":\"%s\","
                      "\"data\":[", model, coll);
    for (unsigned i = 0; i < n; i++)
        bd_buf_printf(&b, "%s{\"text\":\"%s %s %u\"}", i ? "," : "", it_prefix, tag, i);
    bd_buf_puts(&b, "]}");
    return bd_buf_steal(&b, NULL);
}

/* batchd with one worker and a model "hangfake" whose server never answers: the first job
 * holds the worker, the rest stay queued. The fake's pid goes to *fake_pid. */
static void start_with_hanging_model(struct bd_it_proc *p, const char *const *env,
                                     pid_t *fake_pid)
{
    const char *const fake_args[] = { "--dim", "16", "--hang-rate", "1", NULL };
    struct bd_buf yaml;
    int fake_port = 0;

    assert_int_equal(fake_model_spawn(NULL, fake_args, fake_pid, &fake_port), 0);
    bd_buf_init(&yaml);
    bd_buf_printf(&yaml,
                  "jobs:\n  max_concurrent_jobs: 1\n  processing_interval: 0.1\n"
                  "  lease: 5\n  reaper_interval: 0.5\n"
                  "models:\n  - name: hangfake\n    provider: ollama\n"
                  "    base_url: http://127.0.0.1:%d\n    dimensions: 16\n    timeout: 120\n",
                  fake_port);
    assert_int_equal(bd_it_start(p, yaml.data, env), 0);
    bd_buf_free(&yaml);
}

/* Jobs waiting in the queue add up: with max_queued_items 100 and the one worker held by a
 * job whose model never answers, two jobs of 40 items are queued; once the queue holds their
 * 80 items, a third of 40 gets 429 with Retry-After and writes nothing, and one of 20 (up to
 * the limit exactly) is still accepted. */
static void test_jobs_answer_429_when_queued_jobs_fill_the_queue(void **state)
{
    const char *env[] = { "BATCH_MAX_QUEUED_ITEMS=100", NULL };
    struct bd_it_proc p;
    struct bd_it_resp r;
    char coll[96], url[256], ra[32], path[256];
    char *ids[4] = { NULL };
    unsigned n_ids = 0;
    pid_t fake_pid = 0;
    long st;
    (void)state;

    start_with_hanging_model(&p, env, &fake_pid);
    coll_name(coll, sizeof(coll), "bpq");

    /* The worker takes the first job and waits on the model. */
    char *body = embed_body("hangfake", coll, 10, "holder");
    ids[n_ids++] = bd_it_submit(&p, body, &st);
    free(body);
    assert_int_equal(st, 202);
    json_decref(bd_it_expect_status(&p, ids[0], "processing", 20));

    for (int i = 0; i < 2; i++) {
        char tag[16];
        snprintf(tag, sizeof(tag), "queued%d", i);
        body = embed_body("hangfake", coll, 40, tag);
        ids[n_ids++] = bd_it_submit(&p, body, &st);
        free(body);
        assert_int_equal(st, 202);
    }
    /* Wait until the queue holds both (80 of 100 items). */
    double deadline = bd_it_now() + 10;
    for (;;) {
        json_t *q = bd_it_get_ok(&p, "/api/v1/batch/queue/status");
        long long pending = bd_it_int(q, "queue_status.pending_jobs");
        json_decref(q);
        if (pending == 2)
            break;
        if (bd_it_now() > deadline)
            fail_msg("queue status shows %lld pending jobs, want 2", pending);
        bd_it_sleep_ms(20);
    }

    long before = bd_it_psql_long("SELECT count(*) FROM jobs");
    snprintf(url, sizeof(url), "%s/api/v1/batch/jobs", p.base);
    body = embed_body("hangfake", coll, 40, "over");
    assert_int_equal(bd_it_http("POST", url, body, NULL, &r), 0);
    free(body);
    if (r.status != 429)
        fail_msg("80 queued + 40 > 100: got %ld %.200s", r.status, r.body);
    assert_non_null(bd_it_resp_header(&r, "Retry-After", ra, sizeof(ra)));
    assert_true(atoi(ra) > 0);
    assert_non_null(strstr(r.body, "queue_full"));
    bd_it_resp_free(&r);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM jobs"), before);

    body = embed_body("hangfake", coll, 20, "fits");
    ids[n_ids++] = bd_it_submit(&p, body, &st);
    free(body);
    assert_int_equal(st, 202);

    /* Leave nothing queued behind for the next cases. The queued jobs go first: cancelling
     * the holder first frees the worker, which then claims a queued job while it is being
     * cancelled (that race can answer 409 today; it is the API's, not this test's, subject). */
    for (unsigned i = n_ids; i-- > 0;) {
        snprintf(path, sizeof(path), "/api/v1/batch/jobs/%s", ids[i]);
        json_t *j = bd_it_json(&p, "DELETE", path, NULL, &st);
        if (st != 200) {
            char *d = j ? json_dumps(j, JSON_COMPACT) : NULL;
            fail_msg("DELETE %s -> %ld %s", ids[i], st, d ? d : "");
        }
        json_decref(j);
        json_decref(bd_it_expect_status(&p, ids[i], "cancelled", 20));
        free(ids[i]);
    }
    assert_int_equal(bd_it_stop(&p, SIGTERM, 20), 0);
    assert_int_equal(fake_model_stop(fake_pid), 0);
}

/* Backpressure is one atomic step: ten submits of 30 items sent at once against
 * max_queued_items 100 (the one worker held by a job whose model never answers) admit
 * exactly three. Before, each read the queue's count and then wrote, so most passed. */
static void test_jobs_admit_only_up_to_limit_when_submits_race(void **state)
{
    const char *env[] = { "BATCH_MAX_QUEUED_ITEMS=100", NULL };
    enum { RACERS = 10 };
    struct bd_it_proc p;
    struct bd_it_resp r[RACERS];
    char coll[96], url[256], path[256];
    char *bodies[RACERS];
    pid_t fake_pid = 0;
    int admitted = 0, refused = 0, running = 0;
    long st;
    (void)state;

    start_with_hanging_model(&p, env, &fake_pid);
    coll_name(coll, sizeof(coll), "bprace");
    char *body = embed_body("hangfake", coll, 10, "holder");
    char *holder = bd_it_submit(&p, body, &st);
    free(body);
    assert_int_equal(st, 202);
    json_decref(bd_it_expect_status(&p, holder, "processing", 20));

    snprintf(url, sizeof(url), "%s/api/v1/batch/jobs", p.base);
    CURLM *multi = curl_multi_init();
    assert_non_null(multi);
    for (int i = 0; i < RACERS; i++) {
        char tag[16];
        snprintf(tag, sizeof(tag), "race%d", i);
        bodies[i] = embed_body("hangfake", coll, 30, tag);
        CURL *h = bd_it_easy_new("POST", url, bodies[i], NULL, 20000, &r[i]);
        assert_non_null(h);
        curl_multi_add_handle(multi, h);
    }
    do {
        curl_multi_perform(multi, &running);
        curl_multi_poll(multi, NULL, 0, 100, NULL);
    } while (running > 0);
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        curl_multi_remove_handle(multi, msg->easy_handle);
        assert_int_equal(bd_it_easy_finish(msg->easy_handle, (int)msg->data.result), 0);
    }
    curl_multi_cleanup(multi);
    for (int i = 0; i < RACERS; i++) {
        if (r[i].status == 202)
            admitted++;
        else if (r[i].status == 429)
            refused++;
        else
            fail_msg("racer %d: %ld %.200s", i, r[i].status, r[i].body ? r[i].body : "");
        free(bodies[i]);
    }
    assert_int_equal(admitted, 3);
    assert_int_equal(refused, RACERS - 3);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM jobs WHERE collection = '%s' "
                                     "AND status = 'queued'", coll), 3);
    for (int i = 0; i < RACERS; i++) {
        json_t *j = r[i].status == 202 ? json_loads(r[i].body, 0, NULL) : NULL;
        const char *id = json_string_value(json_object_get(j, "job_id"));
        if (id) {
            snprintf(path, sizeof(path), "/api/v1/batch/jobs/%s", id);
            json_decref(bd_it_json(&p, "DELETE", path, NULL, &st));
            assert_int_equal(st, 200);
        }
        json_decref(j);
        bd_it_resp_free(&r[i]);
    }
    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%s", holder);
    json_decref(bd_it_json(&p, "DELETE", path, NULL, &st));
    assert_int_equal(st, 200);
    free(holder);
    assert_int_equal(bd_it_stop(&p, SIGTERM, 20), 0);
    assert_int_equal(fake_model_stop(fake_pid), 0);
}

/* SIGKILL mid-job, start again: the job resumes at its first unfinished batch and every
 * item is stored and counted exactly once. */
static void test_jobs_resume_exactly_once_when_killed_mid_job(void **state)
{
    struct bd_it_proc p;
    char coll[96];
    long st;
    (void)state;

    assert_int_equal(bd_it_start(&p, it_config, NULL), 0);
    coll_name(coll, sizeof(coll), "crash");
    char *body = insert_body(coll, 20000, 16, 50, "normal");
    char *id = bd_it_submit(&p, body, &st);
    free(body);
    assert_int_equal(st, 202);
    double deadline = bd_it_now() + 30;
    long done = 0;
    while ((done = status_field(&p, id, "progress", "processed_items")) < 2000 &&
           bd_it_now() < deadline)
        bd_it_sleep_ms(2);
    assert_true(done >= 2000);
    assert_int_equal(bd_it_stop(&p, SIGKILL, 5), 128 + SIGKILL);
    long at_kill = bd_it_psql_long("SELECT processed_items FROM jobs WHERE id = '%s'", id);
    assert_true(at_kill < 20000);

    assert_int_equal(bd_it_start(&p, it_config, NULL), 0);
    wait_completed(&p, id, 60);
    assert_int_equal(bd_it_psql_long("SELECT count(DISTINCT id) FROM vectors WHERE collection = "
                               "'%s'", coll), 20000);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM vectors WHERE collection = '%s'", coll),
                     20000);
    assert_int_equal(bd_it_psql_long("SELECT processed_items FROM jobs WHERE id = '%s'", id),
                     20000);
    assert_int_equal(bd_it_psql_long("SELECT failed_items FROM jobs WHERE id = '%s'", id), 0);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM job_batches WHERE job_id = '%s' AND "
                               "status = 'done'", id), 400);
    free(id);
    assert_int_equal(bd_it_stop(&p, SIGTERM, 20), 0);
}

/* Two processes share the stack; the one running the job dies; the other takes it over
 * after the lease expires. */
static void test_jobs_taken_over_by_peer_when_owner_dies(void **state)
{
    struct bd_it_proc a, b;
    char coll[96], owner[128];
    long st;
    (void)state;

    assert_int_equal(bd_it_start(&a, it_config, NULL), 0);
    assert_int_equal(bd_it_start(&b, it_config, NULL), 0);
    coll_name(coll, sizeof(coll), "peer");
    char *body = insert_body(coll, 20000, 16, 50, "normal");
    char *id = bd_it_submit(&a, body, &st);
    free(body);
    assert_int_equal(st, 202);
    double deadline = bd_it_now() + 30;
    while (status_field(&a, id, "progress", "processed_items") < 2000 && bd_it_now() < deadline)
        bd_it_sleep_ms(2);
    bd_it_psql_str(owner, sizeof(owner), "SELECT lease_owner FROM jobs WHERE id = '%s'", id);
    /* The default worker id: "<host>-<pid>-<4 hex>". */
    char *dash = strrchr(owner, '-');
    assert_non_null(dash);
    *dash = '\0';
    dash = strrchr(owner, '-');
    assert_non_null(dash);
    int pid = atoi(dash + 1);
    assert_true(pid == a.pid || pid == b.pid);
    struct bd_it_proc *victim = pid == a.pid ? &a : &b;
    struct bd_it_proc *survivor = pid == a.pid ? &b : &a;
    assert_int_equal(bd_it_stop(victim, SIGKILL, 5), 128 + SIGKILL);
    wait_completed(survivor, id, 60);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM vectors WHERE collection = '%s'", coll),
                     20000);
    assert_int_equal(bd_it_psql_long("SELECT processed_items FROM jobs WHERE id = '%s'", id),
                     20000);
    free(id);
    assert_int_equal(bd_it_stop(survivor, SIGTERM, 20), 0);
}

static void test_jobs_rebuilt_from_postgres_when_redis_flushed(void **state)
{
    struct bd_it_proc p;
    char coll[96], small[96];
    long st;
    (void)state;

    assert_int_equal(bd_it_start(&p, it_config_serial, NULL), 0);
    coll_name(coll, sizeof(coll), "flush_block");
    coll_name(small, sizeof(small), "flush");
    char *body = insert_body(coll, 20000, 16, 50, "normal");
    char *blocker = bd_it_submit(&p, body, &st);
    free(body);
    json_decref(bd_it_wait_status(&p, blocker, "processing", 20));
    char *ids[3];
    for (int i = 0; i < 3; i++) {
        body = insert_body(small, 20, 4, 10, "normal");
        ids[i] = bd_it_submit(&p, body, &st);
        free(body);
        assert_int_equal(st, 202);
    }
    /* FLUSHDB, not FLUSHALL: the suites running alongside keep their own databases. */
    assert_int_equal(bd_it_sh("redis-cli -u '%s' FLUSHDB >/dev/null",
                              bd_it_env("BATCH_REDIS_URL", "redis://127.0.0.1:16380/0")), 0);
    wait_completed(&p, blocker, 90);
    for (int i = 0; i < 3; i++) {
        wait_completed(&p, ids[i], 60);
        free(ids[i]);
    }
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM vectors WHERE collection = '%s'", coll),
                     20000);
    assert_int_equal(bd_it_psql_long("SELECT processed_items FROM jobs WHERE id = '%s'", blocker),
                     20000);
    /* The id sequence was restored from PostgreSQL: a new job sorts after the old ones. */
    body = insert_body(small, 2, 4, 10, "normal");
    char *later = bd_it_submit(&p, body, &st);
    free(body);
    assert_int_equal(st, 202);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM jobs a, jobs b WHERE a.id = '%s' AND "
                               "b.id = '%s' AND a.seq > b.seq", later, blocker), 1);
    free(later);
    free(blocker);
    assert_int_equal(bd_it_stop(&p, SIGTERM, 20), 0);
}

static void test_jobs_complete_when_postgres_restarts_mid_job(void **state)
{
    struct bd_it_proc p;
    char coll[96];
    long st;
    (void)state;

    assert_int_equal(bd_it_start(&p, it_config, NULL), 0);
    coll_name(coll, sizeof(coll), "pgrestart");
    char *body = insert_body(coll, 20000, 16, 50, "normal");
    char *id = bd_it_submit(&p, body, &st);
    free(body);
    double deadline = bd_it_now() + 30;
    while (status_field(&p, id, "progress", "processed_items") < 1000 && bd_it_now() < deadline)
        bd_it_sleep_ms(2);
    assert_int_equal(bd_it_sh("%s/scripts/stack.sh restart-pg test >/dev/null 2>&1",
                              bd_it_env("BD_SOURCE_DIR", ".")), 0);
    wait_completed(&p, id, 90);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM vectors WHERE collection = '%s'", coll),
                     20000);
    assert_int_equal(bd_it_psql_long("SELECT processed_items FROM jobs WHERE id = '%s'", id),
                     20000);
    free(id);
    assert_int_equal(bd_it_stop(&p, SIGTERM, 20), 0);
}

static void test_jobs_results_readable_while_running_and_streamed_when_done(void **state)
{
    struct bd_it_proc p;
    char coll[96], path[256], url[512];
    long st;
    (void)state;

    assert_int_equal(bd_it_start(&p, it_config, NULL), 0);
    coll_name(coll, sizeof(coll), "results");
    char *body = insert_body(coll, 10000, 8, 100, "normal");
    char *id = bd_it_submit(&p, body, &st);
    free(body);
    double deadline = bd_it_now() + 30;
    long done;
    while ((done = status_field(&p, id, "progress", "processed_items")) < 100 &&
           bd_it_now() < deadline)
        bd_it_sleep_ms(2);
    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%s/results?limit=50", id);
    json_t *j = bd_it_json(&p, "GET", path, NULL, &st);
    assert_int_equal(st, 200);
    assert_int_equal(json_array_size(json_object_get(j, "results")), 50);
    json_decref(j);
    wait_completed(&p, id, 60);

    snprintf(url, sizeof(url), "%s/api/v1/batch/jobs/%s/results", p.base, id);
    const char *hdrs[] = { "Accept: application/x-ndjson", NULL };
    struct bd_it_resp r;
    assert_int_equal(bd_it_http("GET", url, NULL, hdrs, &r), 0);
    assert_int_equal(r.status, 200);
    long lines = 0;
    for (size_t i = 0; i < r.len; i++)
        lines += r.body[i] == '\n';
    assert_int_equal(lines, 10000);
    bd_it_resp_free(&r);
    free(id);
    assert_int_equal(bd_it_stop(&p, SIGTERM, 20), 0);
}

/* bulk_insert bodies take the scanner path: escaped ids and nested metadata come through
 * exactly, integers and exponents are numbers, and items the scanner hands to jansson
 * (an escaped id) are stored like the others. */
static void test_jobs_insert_stores_exact_values_when_body_has_escapes(void **state)
{
    struct bd_it_proc p;
    char coll[96], body[1024], out[256];
    long st;
    (void)state;

    assert_int_equal(bd_it_start(&p, it_config, NULL), 0);
    coll_name(coll, sizeof(coll), "escapes");
    snprintf(body, sizeof(body),
             "{ \"collection\" : \"%s\", \"operation\":\"bulk_insert\", \"data\": [ "
             "{\"embedding\": [1, -2.5e-1, 3E2], \"id\": \"plain\", "
             "\"metadata\": {\"a\": {\"b\": [1, \"x\\ty\"]}, \"u\": \"\\u00e9\"}},"
             "{\"id\": \"q\\\"uote\", \"embedding\": [0, 0.5, 1]} ] }", coll);
    char *id = bd_it_submit(&p, body, &st);
    assert_int_equal(st, 202);
    wait_completed(&p, id, 20);
    bd_it_psql_str(out, sizeof(out), "SELECT embedding::text || '|' || (metadata->'a'->'b'->>1) || "
             "'|' || (metadata->>'u') FROM vectors WHERE collection = '%s' AND id = 'plain'",
             coll);
    assert_string_equal(out, "{1,-0.25,300}|x\ty|\xc3\xa9");
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM vectors WHERE collection = '%s' AND "
                                     "id = 'q\"uote' AND embedding = '{0,0.5,1}'", coll),
                     1);
    free(id);
    assert_int_equal(bd_it_stop(&p, SIGTERM, 20), 0);
}

/* SIGTERM mid-job: batchd lets the batch in flight commit, hands the job back to the head of
 * its queue (no lease wait) and exits 0; the next process resumes it at once. */
static void test_jobs_handed_back_when_stopped_gracefully(void **state)
{
    struct bd_it_proc p;
    char coll[96];
    long st;
    const char *env[] = { "BATCH_LEASE_SECONDS=60", NULL };
    (void)state;

    assert_int_equal(bd_it_start(&p, it_config, env), 0);
    coll_name(coll, sizeof(coll), "handback");
    char *body = insert_body(coll, 20000, 16, 50, "normal");
    char *id = bd_it_submit(&p, body, &st);
    free(body);
    double deadline = bd_it_now() + 30;
    while (status_field(&p, id, "progress", "processed_items") < 2000 && bd_it_now() < deadline)
        bd_it_sleep_ms(2);
    double t0 = bd_it_now();
    assert_int_equal(bd_it_stop(&p, SIGTERM, 20), 0);
    assert_true(bd_it_now() - t0 < 5.0);
    long done = bd_it_psql_long("SELECT processed_items FROM jobs WHERE id = '%s'", id);
    assert_true(done >= 2000 && done < 20000);
    /* Back in the queue, not in flight: a new process takes it without waiting for the
     * 60 s lease to expire. */
    char zs[64];
    bd_it_sh_out(zs, sizeof(zs), "redis-cli -u '%s' ZSCORE bd:inflight '%s'",
                 bd_it_env("BATCH_REDIS_URL", "redis://127.0.0.1:16380/0"), id);
    assert_string_equal(zs, "");
    assert_int_equal(bd_it_start(&p, it_config, env), 0);
    wait_completed(&p, id, 30);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM vectors WHERE collection = '%s'", coll),
                     20000);
    assert_int_equal(bd_it_psql_long("SELECT processed_items FROM jobs WHERE id = '%s'", id),
                     20000);
    free(id);
    assert_int_equal(bd_it_stop(&p, SIGTERM, 20), 0);
}

/* GET status answers are reused for http.status_cache_ms: a row changed behind batchd's
 * back shows only after that (5 s here), and at once with the cache off. */
static void test_jobs_status_served_from_cache_when_polled_again(void **state)
{
    struct bd_it_proc p;
    char coll[96];
    long st;
    (void)state;

    for (int cached = 1; cached >= 0; cached--) {
        const char *env[] = { cached ? "BATCH_STATUS_CACHE_MS=5000" : "BATCH_STATUS_CACHE_MS=0",
                              NULL };
        assert_int_equal(bd_it_start(&p, it_config, env), 0);
        coll_name(coll, sizeof(coll), "statuscache");
        char *body = insert_body(coll, 3, 4, 10, "normal");
        char *id = bd_it_submit(&p, body, &st);
        free(body);
        double deadline = bd_it_now() + 20;
        while (bd_it_psql_long("SELECT count(*) FROM jobs WHERE id = '%s' AND status = 'completed'",
                         id) != 1 && bd_it_now() < deadline)
            bd_it_sleep_ms(20);
        assert_int_equal(status_field(&p, id, "progress", "processed_items"), 3);
        assert_int_equal(bd_it_psql_long("WITH u AS (UPDATE jobs SET processed_items = 12345 WHERE "
                                   "id = '%s' RETURNING 1) SELECT count(*) FROM u", id), 1);
        assert_int_equal(status_field(&p, id, "progress", "processed_items"),
                         cached ? 3 : 12345);
        free(id);
        assert_int_equal(bd_it_stop(&p, SIGTERM, 20), 0);
    }
}

/* options.timeout_s: a job still running after it is failed between batches with
 * error.code "timeout"; the batches already written stay. */
static void test_jobs_fail_with_timeout_when_running_past_timeout_s(void **state)
{
    struct bd_it_proc p;
    char coll[96], path[256];
    long st;
    (void)state;

    assert_int_equal(bd_it_start(&p, it_config, NULL), 0);
    coll_name(coll, sizeof(coll), "timeout");
    char *body = insert_body(coll, 20000, 16, 50, "normal");
    /* insert_body sets options {batch_size, priority}: add timeout_s after batch_size */
    char *opt = strstr(body, "\"batch_size\":50");
    assert_non_null(opt);
    size_t len = strlen(body);
    char *with = malloc(len + 32);
    size_t head = (size_t)(opt - body);
    memcpy(with, body, head);
    strcpy(with + head, "\"timeout_s\":0.1,");
    strcat(with, opt);
    free(body);
    char *id = bd_it_submit(&p, with, &st);
    free(with);
    assert_int_equal(st, 202);
    json_t *j = bd_it_wait_status(&p, id, "failed", 30);
    assert_string_equal(json_string_value(json_object_get(j, "status")), "failed");
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "error"), "code")),
                        "timeout");
    long done = (long)json_integer_value(json_object_get(json_object_get(j, "progress"),
                                                         "processed_items"));
    json_decref(j);
    assert_true(done < 20000);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM vectors WHERE job_id = '%s'", id), done);
    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%s", id);
    j = bd_it_json(&p, "DELETE", path, NULL, &st);
    assert_int_equal(st, 409);                       /* terminal */
    json_decref(j);
    free(id);
    assert_int_equal(bd_it_stop(&p, SIGTERM, 20), 0);
}

/* Retention: terminal jobs and their batches go after cleanup_interval; vectors stay. */
static void test_jobs_deleted_after_cleanup_interval_when_finished(void **state)
{
    struct bd_it_proc p;
    char coll[96];
    long st;
    const char *env[] = { "BATCH_CLEANUP_INTERVAL=1", NULL };
    (void)state;

    assert_int_equal(bd_it_start(&p, it_config, env), 0);
    coll_name(coll, sizeof(coll), "retention");
    char *body = insert_body(coll, 30, 4, 10, "normal");
    char *id = bd_it_submit(&p, body, &st);
    free(body);
    assert_int_equal(st, 202);
    wait_completed(&p, id, 20);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM job_batches WHERE job_id = '%s'", id),
                     3);
    double deadline = bd_it_now() + 10;
    while (bd_it_psql_long("SELECT count(*) FROM jobs WHERE id = '%s'", id) != 0 &&
           bd_it_now() < deadline)
        bd_it_sleep_ms(200);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM jobs WHERE id = '%s'", id), 0);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM job_batches WHERE job_id = '%s'", id),
                     0);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM vectors WHERE collection = '%s'", coll),
                     30);
    long code;
    char path[256];
    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%s/status", id);
    json_t *j = bd_it_json(&p, "GET", path, NULL, &code);
    assert_int_equal(code, 404);
    json_decref(j);
    free(id);
    assert_int_equal(bd_it_stop(&p, SIGTERM, 20), 0);
}

int main(void)
{
    bd_it_apply_filter();
    snprintf(it_prefix, sizeof(it_prefix), "itj%d", (int)getpid());
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_jobs_seed_insert_completes_when_submitted, bd_it_teardown),
        cmocka_unit_test_teardown(test_jobs_progress_rises_through_each_batch_when_embedding_10000,
                                  bd_it_teardown),
        cmocka_unit_test_teardown(test_jobs_run_high_before_normal_before_low_when_saturated, bd_it_teardown),
        cmocka_unit_test_teardown(test_jobs_cancel_queued_and_processing_when_deleted, bd_it_teardown),
        cmocka_unit_test_teardown(test_jobs_reject_each_invalid_body_when_submitted, bd_it_teardown),
        cmocka_unit_test_teardown(test_jobs_idempotency_key_replays_or_conflicts_when_reused, bd_it_teardown),
        cmocka_unit_test_teardown(test_jobs_answer_429_with_retry_after_when_queue_full, bd_it_teardown),
        cmocka_unit_test_teardown(test_jobs_answer_429_when_queued_jobs_fill_the_queue,
                                  bd_it_teardown),
        cmocka_unit_test_teardown(test_jobs_admit_only_up_to_limit_when_submits_race, bd_it_teardown),
        cmocka_unit_test_teardown(test_jobs_resume_exactly_once_when_killed_mid_job, bd_it_teardown),
        cmocka_unit_test_teardown(test_jobs_taken_over_by_peer_when_owner_dies, bd_it_teardown),
        cmocka_unit_test_teardown(test_jobs_rebuilt_from_postgres_when_redis_flushed, bd_it_teardown),
        cmocka_unit_test_teardown(test_jobs_complete_when_postgres_restarts_mid_job, bd_it_teardown),
        cmocka_unit_test_teardown(test_jobs_results_readable_while_running_and_streamed_when_done, bd_it_teardown),
        cmocka_unit_test_teardown(test_jobs_insert_stores_exact_values_when_body_has_escapes,
                                  bd_it_teardown),
        cmocka_unit_test_teardown(test_jobs_handed_back_when_stopped_gracefully, bd_it_teardown),
        cmocka_unit_test_teardown(test_jobs_fail_with_timeout_when_running_past_timeout_s,
                                  bd_it_teardown),
        cmocka_unit_test_teardown(test_jobs_status_served_from_cache_when_polled_again,
                                  bd_it_teardown),
        cmocka_unit_test_teardown(test_jobs_deleted_after_cleanup_interval_when_finished,
                                  bd_it_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
