/* it_batches.c -- OpenAI-compatible batches end to end (POST/GET /v1/batches, cancel,
 * the finalizer's output and error files) against the real stack and the fake model.
 *
 * The official openai npm package runs a whole batch (test/openai/batches.mjs); the C cases
 * cover what a script does not reach easily: validation errors with line numbers, refusals,
 * the line limit, expiry keeping what finished, a batch that survives batchd's SIGKILL
 * mid-run, the job underneath visible in the native API, and finalization done once with two
 * processes. Own schema and Redis db, like it_files.  SPDX-License-Identifier: MIT
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <curl/curl.h>
#include <jansson.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bd_it.h"
#include "fake_model/fake_model_client.h"

#define AUTH "Authorization: Bearer sk-anything"
#define MODEL "fakeemb"
#define DIM 16

static struct bd_it_proc g_proc;       /* the default limits */
static struct bd_it_proc g_small;      /* max_batch_lines 5, batch_expiry 3 s, batch_size 5 */
static bool g_started, g_small_started;
static pid_t g_fake_pid;
static int g_fake_port;
static struct bd_it_scratch g_scr;   /* own schema and Redis db */
static char g_models_yaml[1024];

#define psql_long(...) bd_it_psql_long_url(g_scr.pg_url, __VA_ARGS__)

/* ---- helpers ------------------------------------------------------------------------- */

static size_t it_collect(char *ptr, size_t size, size_t n, void *arg)
{
    struct bd_it_resp *r = arg;
    size_t len = size * n;
    char *p = realloc(r->body, r->len + len + 1);

    if (p == NULL)
        return 0;
    memcpy(p + r->len, ptr, len);
    r->body = p;
    r->len += len;
    p[r->len] = '\0';
    return len;
}

/* Upload data as a batch input file; returns its id (static buffer per call site). */
static void upload(struct bd_it_proc *p, const char *data, char *id_out, size_t idlen)
{
    char url[256];
    struct bd_it_resp r = { 0 };
    CURL *h = curl_easy_init();
    curl_mime *mime = curl_mime_init(h);
    curl_mimepart *part;
    struct curl_slist *hdrs = curl_slist_append(NULL, AUTH);
    long status = 0;
    json_t *j;

    part = curl_mime_addpart(mime);
    curl_mime_name(part, "purpose");
    curl_mime_data(part, "batch", CURL_ZERO_TERMINATED);
    part = curl_mime_addpart(mime);
    curl_mime_name(part, "file");
    curl_mime_filename(part, "input.jsonl");
    curl_mime_data(part, data, strlen(data));
    snprintf(url, sizeof(url), "%s/v1/files", p->base);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_MIMEPOST, mime);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, it_collect);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &r);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 60L);
    assert_int_equal(curl_easy_perform(h), CURLE_OK);
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_mime_free(mime);
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(h);
    j = json_loads(r.body ? r.body : "", 0, NULL);
    if (status != 200 || bd_it_str(j, "id") == NULL)
        fail_msg("upload: %ld %s", status, r.body ? r.body : "");
    snprintf(id_out, idlen, "%s", bd_it_str(j, "id"));
    json_decref(j);
    free(r.body);
}

/* method path with the Bearer key and an optional JSON body; the answer's JSON. */
static json_t *v1(struct bd_it_proc *p, const char *method, const char *path, const char *body,
                  long *status)
{
    char url[512];
    const char *hdrs[] = { AUTH, "Content-Type: application/json", NULL };
    struct bd_it_resp r = { 0 };
    json_t *j;

    snprintf(url, sizeof(url), "%s%s", p->base, path);
    if (bd_it_http(method, url, body, hdrs, &r) != 0)
        fail_msg("%s %s: no answer", method, path);
    if (status)
        *status = r.status;
    j = json_loads(r.body ? r.body : "", 0, NULL);
    bd_it_resp_free(&r);
    return j;
}

/* POST /v1/batches for file; fails the test unless 200. Returns the batch (caller decrefs). */
static json_t *create_batch(struct bd_it_proc *p, const char *file_id)
{
    char body[256];
    long st = 0;
    json_t *b;

    snprintf(body, sizeof(body), "{\"input_file_id\":\"%s\",\"endpoint\":\"/v1/embeddings\","
             "\"completion_window\":\"24h\"}", file_id);
    b = v1(p, "POST", "/v1/batches", body, &st);
    if (st != 200 || bd_it_str(b, "id") == NULL)
        fail_msg("create: %ld %s", st, b ? json_dumps(b, 0) : "(not JSON)");
    return b;
}

static bool is_terminal(const char *s)
{
    return s && (!strcmp(s, "completed") || !strcmp(s, "failed") || !strcmp(s, "expired") ||
                 !strcmp(s, "cancelled"));
}

/* Poll the batch until it is terminal (timeout_s); fails the test otherwise. */
static json_t *wait_batch(struct bd_it_proc *p, const char *id, double timeout_s)
{
    char path[128];
    double deadline = bd_it_now() + timeout_s;
    json_t *b = NULL;

    snprintf(path, sizeof(path), "/v1/batches/%s", id);
    while (bd_it_now() < deadline) {
        json_decref(b);
        b = v1(p, "GET", path, NULL, NULL);
        if (is_terminal(bd_it_str(b, "status")))
            return b;
        bd_it_sleep_ms(100);
    }
    fail_msg("batch %s not finished after %.0f s: %s", id, timeout_s,
             b ? json_dumps(b, 0) : "(none)");
    return NULL;
}

/* A file's content as JSON lines (an array; caller decrefs). */
static json_t *content_lines(struct bd_it_proc *p, const char *file_id)
{
    char url[256];
    const char *hdrs[] = { AUTH, NULL };
    struct bd_it_resp r = { 0 };
    json_t *arr = json_array();

    snprintf(url, sizeof(url), "%s/v1/files/%s/content", p->base, file_id);
    assert_int_equal(bd_it_http("GET", url, NULL, hdrs, &r), 0);
    assert_int_equal(r.status, 200);
    for (char *line = r.body, *nl; line && *line; line = nl + 1) {
        json_error_t e;
        nl = strchr(line, '\n');
        if (nl == NULL)
            fail_msg("content does not end with a newline");
        json_t *j = json_loadb(line, (size_t)(nl - line), 0, &e);
        if (j == NULL)
            fail_msg("content line not JSON: %s", e.text);
        json_array_append_new(arr, j);
    }
    bd_it_resp_free(&r);
    return arr;
}

/* n requests "tag-i", each one input (or "bad" JSON where asked). malloc'ed. */
static char *requests(unsigned n, const char *tag, const char *model)
{
    size_t cap = (size_t)n * 200 + 1, len = 0;
    char *s = malloc(cap);

    assert_non_null(s);
    s[0] = '\0';
    for (unsigned i = 0; i < n; i++)
        len += (size_t)snprintf(s + len, cap - len, "{\"custom_id\":\"%s-%u\",\"method\":\"POST\","
                                "\"url\":\"/v1/embeddings\",\"body\":{\"model\":\"%s\","
                                "\"input\":\"%s text %u\"}}\n", tag, i, model, tag, i);
    return s;
}

/* ---- cases ------------------------------------------------------------------------------ */

/* Every kind of bad line is reported with its line number; no job is created. */
static void test_batch_fails_validation_with_line_numbers(void **state)
{
    static const char file[] =
        "{\"custom_id\":\"a\",\"method\":\"POST\",\"url\":\"/v1/embeddings\",\"body\":{\"model\":\"" MODEL "\",\"input\":\"x\"}}\n"
        "{\"custom_id\":\"a\",\"method\":\"POST\",\"url\":\"/v1/embeddings\",\"body\":{\"model\":\"" MODEL "\",\"input\":\"y\"}}\n"
        "{\"custom_id\":\"c\",\"method\":\"POST\",\"url\":\"/v1/embeddings\",\"body\":{\"model\"\n"
        "{\"custom_id\":\"d\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":{\"model\":\"" MODEL "\",\"input\":\"x\"}}\n"
        "{\"custom_id\":\"e\",\"method\":\"POST\",\"url\":\"/v1/embeddings\",\"body\":{\"model\":\"hashmodel\",\"input\":\"x\"}}\n"
        "   \n"
        "{\"custom_id\":\"g\",\"method\":\"POST\",\"url\":\"/v1/embeddings\",\"body\":{\"model\":\"" MODEL "\",\"input\":[1,2,3]}}\n"
        "{\"custom_id\":\"h\",\"method\":\"GET\",\"url\":\"/v1/embeddings\",\"body\":{\"model\":\"" MODEL "\",\"input\":\"x\"}}\n"
        "{\"custom_id\":\"i\",\"method\":\"POST\",\"url\":\"/v1/embeddings\",\"body\":{\"model\":\"" MODEL "\",\"input\":\"x\",\"dimensions\":3}}\n"
        "{\"custom_id\":\"j\\u0000\",\"method\":\"POST\",\"url\":\"/v1/embeddings\",\"body\":{\"model\":\"" MODEL "\",\"input\":\"x\"}}";
    static const struct { int line; const char *code; } want[] = {
        { 2, "duplicate_custom_id" }, { 3, "invalid_json_line" }, { 4, "invalid_url" },
        { 5, "mismatched_model" }, { 7, "invalid_request" }, { 8, "invalid_request" },
        { 9, "invalid_request" }, { 10, "invalid_request" },      /* \u0000: NUL */
    };
    char fid[64];
    long jobs_before = psql_long("SELECT count(*) FROM jobs");

    (void)state;
    upload(&g_proc, file, fid, sizeof(fid));
    json_t *b = create_batch(&g_proc, fid);
    assert_string_equal(bd_it_str(b, "status"), "failed");
    assert_true(json_is_integer(bd_it_at(b, "failed_at")));
    assert_true(json_is_null(bd_it_at(b, "output_file_id")));
    json_t *errs = bd_it_at(b, "errors.data");
    assert_int_equal(json_array_size(errs), sizeof(want) / sizeof(want[0]));
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        json_t *e = json_array_get(errs, i);
        if (bd_it_int(e, "line") != want[i].line || strcmp(bd_it_str(e, "code"), want[i].code))
            fail_msg("error %zu: want line %d %s, got %s", i, want[i].line, want[i].code,
                     json_dumps(e, 0));
    }
    assert_non_null(strstr(bd_it_str(json_array_get(errs, 0), "message"), "line 1"));
    assert_non_null(strstr(bd_it_str(json_array_get(errs, 7), "message"), "(NUL)"));
    assert_int_equal(psql_long("SELECT count(*) FROM jobs"), jobs_before);
    json_decref(b);
    /* Only blank lines: an error of the whole file, with no line. */
    upload(&g_proc, "\n  \n\n", fid, sizeof(fid));
    b = create_batch(&g_proc, fid);
    assert_string_equal(bd_it_str(b, "status"), "failed");
    assert_string_equal(bd_it_str(b, "errors.data.0.code"), "empty_file");
    assert_true(json_is_null(bd_it_at(b, "errors.data.0.line")));
    json_decref(b);
}

/* Requests batchd cannot take are refused with OpenAI's error shape, and nothing is made. */
static void test_batch_refuses_bad_requests(void **state)
{
    char fid[64], body[512];
    long st = 0;
    long before = psql_long("SELECT count(*) FROM batches");
    char *reqs = requests(2, "ref", MODEL);
    static const char *const bad[] = {
        "{\"input_file_id\":\"%s\",\"endpoint\":\"/v1/chat/completions\",\"completion_window\":\"24h\"}",
        "{\"input_file_id\":\"%s\",\"endpoint\":\"/v1/embeddings\",\"completion_window\":\"1h\"}",
        "{\"input_file_id\":\"%s\",\"endpoint\":\"/v1/embeddings\",\"completion_window\":\"24h\",\"metadata\":{\"a\":1}}",
        "{\"input_file_id\":\"%s\",\"endpoint\":\"/v1/embeddings\",\"completion_window\":\"24h\",\"metadata\":{\"priority\":\"urgent\"}}",
        "{\"endpoint\":\"/v1/embeddings\",\"completion_window\":\"24h\",\"x\":\"%s\"}",
        "[\"%s\"]",
    };

    (void)state;
    upload(&g_proc, reqs, fid, sizeof(fid));
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(body, sizeof(body), bad[i], fid);
        json_t *e = v1(&g_proc, "POST", "/v1/batches", body, &st);
        if (st != 400 || bd_it_str(e, "error.message") == NULL)
            fail_msg("case %zu: %ld %s", i, st, e ? json_dumps(e, 0) : "-");
        json_decref(e);
    }
    /* metadata limits count characters: 300 "é" (600 bytes) pass, 513 do not */
    for (int n = 300; n <= 513; n += 213) {
        char big[1600];
        int len = snprintf(big, sizeof(big), "{\"input_file_id\":\"%s\",\"endpoint\":"
                           "\"/v1/embeddings\",\"completion_window\":\"24h\",\"metadata\":"
                           "{\"k\":\"", fid);
        for (int i = 0; i < n; i++)
            len += snprintf(big + len, sizeof(big) - (size_t)len, "\xc3\xa9");
        snprintf(big + len, sizeof(big) - (size_t)len, "\"}}");
        json_t *r = v1(&g_proc, "POST", "/v1/batches", big, &st);
        assert_int_equal(st, n == 300 ? 200 : 400);
        if (n == 300) {                    /* a real batch: cancel it, nothing to run */
            char path[128];
            snprintf(path, sizeof(path), "/v1/batches/%s/cancel", bd_it_str(r, "id"));
            json_decref(v1(&g_proc, "POST", path, NULL, &st));
            assert_int_equal(st, 200);
        }
        json_decref(r);
    }
    before = psql_long("SELECT count(*) FROM batches");
    json_t *e = v1(&g_proc, "POST", "/v1/batches", "{\"input_file_id\":\"file-000000000000000000000000\","
                   "\"endpoint\":\"/v1/embeddings\",\"completion_window\":\"24h\"}", &st);
    assert_int_equal(st, 404);
    assert_string_equal(bd_it_str(e, "error.param"), "input_file_id");
    json_decref(e);
    e = v1(&g_proc, "GET", "/v1/batches/batch_zz", NULL, &st);
    assert_int_equal(st, 404);
    json_decref(e);
    e = v1(&g_proc, "POST", "/v1/batches/batch_000000000000000000000000/cancel", NULL, &st);
    assert_int_equal(st, 404);
    json_decref(e);
    e = v1(&g_proc, "GET", "/v1/batches?limit=0", NULL, &st);
    assert_int_equal(st, 400);
    json_decref(e);
    assert_int_equal(psql_long("SELECT count(*) FROM batches"), before);
    free(reqs);
}

/* A batch held finalizing by another process's lease cannot be cancelled (400: a cancel
 * recorded then would turn it back to cancelling and it would still end completed). And a
 * finalizer whose lease release was lost (the connection dropped as it sent it) takes its
 * own batch back at its next claim instead of leaving it finalizing until the lease runs
 * out. Both leases are set by hand on the batch's row, an hour ahead. */
static void test_batch_finalized_when_its_lease_release_was_lost(void **state)
{
    struct bd_it_proc p;
    char fid[64], path[128];
    long st = 0;
    const char *const env[] = { "BATCH_WORKER_ID=itb-own-lease", NULL };
    char *reqs = requests(10, "own", "hashmodel");

    (void)state;
    assert_int_equal(bd_it_start(&p, g_models_yaml, env), 0);
    json_decref(bd_it_json(&p, "POST", "/api/v1/batch/queue/pause", "", &st));
    assert_int_equal(st, 200);
    upload(&p, reqs, fid, sizeof(fid));
    json_t *b = create_batch(&p, fid);
    const char *id = bd_it_str(b, "id");
    free(bd_it_psql_url(g_scr.pg_url, NULL, "UPDATE batches SET lease_owner = 'itb-elsewhere',"
                        " lease_until = now() + interval '1 hour' WHERE id = '%s'", id));
    json_decref(bd_it_json(&p, "POST", "/api/v1/batch/queue/resume", "", &st));
    assert_int_equal(st, 200);
    double t0 = bd_it_now();
    while (psql_long("SELECT count(*) FROM jobs WHERE id = '%s' AND status = 'completed'",
                     bd_it_str(b, "batchd_job_id")) != 1 && bd_it_now() - t0 < 30)
        bd_it_sleep_ms(50);
    snprintf(path, sizeof(path), "/v1/batches/%s/cancel", id);
    json_t *e = v1(&p, "POST", path, NULL, &st);
    assert_int_equal(st, 400);
    assert_string_equal(bd_it_str(e, "error.code"), "batch_not_cancellable");
    json_decref(e);
    snprintf(path, sizeof(path), "/v1/batches/%s", id);
    e = v1(&p, "GET", path, NULL, &st);
    assert_string_equal(bd_it_str(e, "status"), "finalizing");
    json_decref(e);

    free(bd_it_psql_url(g_scr.pg_url, NULL, "UPDATE batches SET lease_owner = 'itb-own-lease'"
                        " WHERE id = '%s'", id));
    json_t *done = wait_batch(&p, id, 30);
    assert_string_equal(bd_it_str(done, "status"), "completed");
    assert_int_equal(bd_it_int(done, "request_counts.completed"), 10);
    json_decref(done);
    json_decref(b);
    free(reqs);
    assert_int_equal(bd_it_stop(&p, SIGTERM, 20), 0);
}

/* GET /v1/models lists the configured models in their order, in OpenAI's shape (owned_by:
 * the provider); GET /v1/models/{id} is one of them, an unknown one 404 model_not_found. */
static void test_models_list_the_configured_models(void **state)
{
    long st = 0;

    (void)state;
    json_t *l = v1(&g_proc, "GET", "/v1/models", NULL, &st);
    assert_int_equal(st, 200);
    assert_string_equal(bd_it_str(l, "object"), "list");
    json_t *data = json_object_get(l, "data");
    assert_int_equal(json_array_size(data), 2);
    assert_string_equal(bd_it_str(json_array_get(data, 0), "id"), MODEL);
    assert_string_equal(bd_it_str(json_array_get(data, 0), "object"), "model");
    assert_string_equal(bd_it_str(json_array_get(data, 0), "owned_by"), "openai");
    assert_true(json_integer_value(json_object_get(json_array_get(data, 0), "created")) >
                1700000000);
    assert_string_equal(bd_it_str(json_array_get(data, 1), "id"), "hashmodel");
    assert_string_equal(bd_it_str(json_array_get(data, 1), "owned_by"), "hashing");
    json_decref(l);
    json_t *m = v1(&g_proc, "GET", "/v1/models/hashmodel", NULL, &st);
    assert_int_equal(st, 200);
    assert_string_equal(bd_it_str(m, "id"), "hashmodel");
    json_decref(m);
    json_t *e = v1(&g_proc, "GET", "/v1/models/gpt-4o", NULL, &st);
    assert_int_equal(st, 404);
    assert_string_equal(bd_it_str(e, "error.code"), "model_not_found");
    assert_string_equal(bd_it_str(e, "error.param"), "model");
    json_decref(e);
    e = v1(&g_proc, "GET", "/v1/models/%FF%FE", NULL, &st);       /* not UTF-8: still 404 */
    assert_int_equal(st, 404);
    assert_string_equal(bd_it_str(e, "error.code"), "model_not_found");
    json_decref(e);
}

/* A batch is a batchd job: it shows in the native API with its batch's id; its output file
 * has one line per request in file order, and a completed batch cannot be cancelled. */
static void test_batch_is_a_job_and_completes_in_order(void **state)
{
    char fid[64], path[160];
    char *reqs = requests(57, "ord", MODEL);
    long st = 0;

    (void)state;
    upload(&g_proc, reqs, fid, sizeof(fid));
    json_t *b = create_batch(&g_proc, fid);
    const char *id = bd_it_str(b, "id");
    const char *job = bd_it_str(b, "batchd_job_id");
    assert_non_null(job);
    json_t *j = bd_it_get_ok(&g_proc, "/api/v1/batch/jobs/%s", job);
    assert_string_equal(bd_it_str(j, "metadata.openai_batch_id"), id);
    assert_string_equal(bd_it_str(j, "operation"), "bulk_embed");
    json_decref(j);
    json_t *done = wait_batch(&g_proc, id, 60);
    assert_string_equal(bd_it_str(done, "status"), "completed");
    assert_int_equal(bd_it_int(done, "request_counts.completed"), 57);
    assert_true(json_is_null(bd_it_at(done, "error_file_id")));
    json_t *out = content_lines(&g_proc, bd_it_str(done, "output_file_id"));
    assert_int_equal(json_array_size(out), 57);
    for (size_t i = 0; i < 57; i++) {
        char want[32];
        snprintf(want, sizeof(want), "ord-%zu", i);
        assert_string_equal(bd_it_str(json_array_get(out, i), "custom_id"), want);
        assert_int_equal(json_array_size(bd_it_at(json_array_get(out, i),
                                                  "response.body.data.0.embedding")), DIM);
    }
    json_t *f = v1(&g_proc, "GET", "/v1/files?purpose=batch_output", NULL, &st);
    assert_int_equal(st, 200);
    json_decref(f);
    snprintf(path, sizeof(path), "/v1/batches/%s/cancel", id);
    json_t *c = v1(&g_proc, "POST", path, NULL, &st);
    assert_int_equal(st, 400);
    assert_string_equal(bd_it_str(c, "error.code"), "batch_not_cancellable");
    json_decref(c);
    json_decref(out);
    json_decref(done);
    json_decref(b);
    free(reqs);
}

/* openai.max_batch_lines: the first line beyond the limit is reported. */
static void test_batch_refuses_more_lines_than_the_limit(void **state)
{
    char fid[64];
    char *reqs = requests(7, "lim", MODEL);

    (void)state;
    upload(&g_small, reqs, fid, sizeof(fid));
    json_t *b = create_batch(&g_small, fid);
    assert_string_equal(bd_it_str(b, "status"), "failed");
    assert_string_equal(bd_it_str(b, "errors.data.0.code"), "too_many_requests");
    assert_int_equal(bd_it_int(b, "errors.data.0.line"), 6);
    json_decref(b);
    free(reqs);
}

/* A batch not finished by expires_at ends expired: what finished is in the output, the rest
 * in the error file as batch_expired, and the counts add up. */
static void test_batch_expires_keeping_what_finished(void **state)
{
    char fid[64];
    char *reqs = requests(5, "exp", MODEL);   /* the limit of g_small */

    (void)state;
    bd_it_fake_config(g_fake_port, "{\"latency_ms\":1500}");
    upload(&g_small, reqs, fid, sizeof(fid));
    /* batch_size 1 here: five model calls of 1.5 s with concurrency 2: about 4.5 s */
    json_t *b = create_batch(&g_small, fid);
    json_t *done = wait_batch(&g_small, bd_it_str(b, "id"), 30);
    bd_it_fake_reset(g_fake_port, "");
    assert_string_equal(bd_it_str(done, "status"), "expired");
    assert_true(json_is_integer(bd_it_at(done, "expired_at")));
    long long ok = bd_it_int(done, "request_counts.completed");
    long long failed = bd_it_int(done, "request_counts.failed");
    assert_int_equal(ok + failed, 5);
    assert_true(failed > 0);
    json_t *errs = content_lines(&g_small, bd_it_str(done, "error_file_id"));
    assert_int_equal((long long)json_array_size(errs), failed);
    assert_string_equal(bd_it_str(json_array_get(errs, 0), "error.code"), "batch_expired");
    assert_true(json_is_null(bd_it_at(json_array_get(errs, 0), "response")));
    if (ok > 0) {
        json_t *out = content_lines(&g_small, bd_it_str(done, "output_file_id"));
        assert_int_equal((long long)json_array_size(out), ok);
        json_decref(out);
    }
    json_decref(errs);
    json_decref(done);
    json_decref(b);
    free(reqs);
}

/* batchd SIGKILLed while a batch runs: after the restart the job resumes and the batch
 * completes with every request in its output once. */
static void test_batch_completes_after_sigkill_mid_run(void **state)
{
    char fid[64];
    char *reqs = requests(400, "kill", MODEL);

    (void)state;
    bd_it_fake_config(g_fake_port, "{\"latency_ms\":300}");
    upload(&g_proc, reqs, fid, sizeof(fid));
    json_t *b = create_batch(&g_proc, fid);
    bd_it_sleep_ms(500);
    /* 16 model calls of 0.3 s, 4 at a time: the job is midway now */
    long processed = psql_long("SELECT processed_items FROM jobs WHERE id = '%s'",
                               bd_it_str(b, "batchd_job_id"));
    assert_int_equal(bd_it_stop(&g_proc, SIGKILL, 10), 128 + SIGKILL);
    if (processed >= 400)
        fail_msg("the job had finished before the kill (processed %ld)", processed);
    g_started = false;
    assert_int_equal(bd_it_start(&g_proc, g_models_yaml, NULL), 0);
    g_started = true;
    bd_it_fake_reset(g_fake_port, "");
    json_t *done = wait_batch(&g_proc, bd_it_str(b, "id"), 90);
    assert_string_equal(bd_it_str(done, "status"), "completed");
    assert_int_equal(bd_it_int(done, "request_counts.completed"), 400);
    json_t *out = content_lines(&g_proc, bd_it_str(done, "output_file_id"));
    assert_int_equal(json_array_size(out), 400);
    for (size_t i = 0; i < 400; i++) {
        char want[32];
        snprintf(want, sizeof(want), "kill-%zu", i);
        assert_string_equal(bd_it_str(json_array_get(out, i), "custom_id"), want);
    }
    json_decref(out);
    json_decref(done);
    json_decref(b);
    free(reqs);
}

/* Two processes on one store: each batch is finalized once (one output file, one final row). */
static void test_batch_finalized_once_with_two_processes(void **state)
{
    char fid[64];
    char ids[6][64];
    char *reqs = requests(3, "two", MODEL);

    (void)state;
    /* g_small shares the store: both finalizers sweep the same batches table */
    upload(&g_proc, reqs, fid, sizeof(fid));
    for (int i = 0; i < 6; i++) {
        json_t *b = create_batch(i % 2 ? &g_small : &g_proc, fid);
        snprintf(ids[i], sizeof(ids[i]), "%s", bd_it_str(b, "id"));
        json_decref(b);
    }
    for (int i = 0; i < 6; i++) {
        json_t *d = wait_batch(&g_proc, ids[i], 60);
        assert_string_equal(bd_it_str(d, "status"), "completed");
        assert_int_equal(psql_long("SELECT count(*) FROM files WHERE id = '%s'",
                                   bd_it_str(d, "output_file_id")), 1);
        json_decref(d);
    }
    free(reqs);
}

/* Six batches created at once by a process whose API pool has two connections: two run at
 * a time, each holding one connection for its job's transaction and reading the input file
 * on it, so neither waits for the other's (before, both waited for a second connection
 * until the 5 s acquire timeout and answered 503); the other four wait in line and run
 * next (before, they got 503 too_many_uploads, which an SDK's two retries did not outlast).
 * The file is several chunks, so the second pass reads many times. */
#define CREATES 6
static void test_batch_creates_do_not_wait_on_each_other_with_small_pool(void **state)
{
    static const char *const env[] = { "BATCH_POSTGRES_POOL_SIZE=2", NULL };
    struct bd_it_proc p;
    char fid[64], url[256], body[256];
    const char *hdrs[] = { AUTH, "Content-Type: application/json", NULL };
    struct bd_it_resp r[CREATES] = { { 0 } };
    CURL *h[CREATES];
    CURLM *m = curl_multi_init();
    int running = 0;
    size_t cap = (size_t)30000 * 200 + 1, len = 0;
    char *reqs = malloc(cap);

    (void)state;
    assert_non_null(reqs);
    for (unsigned i = 0; i < 30000; i++)   /* ~5 MB: five chunks */
        len += (size_t)snprintf(reqs + len, cap - len, "{\"custom_id\":\"pool-%u\","
                                "\"method\":\"POST\",\"url\":\"/v1/embeddings\",\"body\":"
                                "{\"model\":\"hashmodel\",\"input\":\"a text long enough "
                                "to fill the file, number %u\"}}\n", i, i);
    assert_int_equal(bd_it_start(&p, g_models_yaml, env), 0);
    upload(&p, reqs, fid, sizeof(fid));
    snprintf(url, sizeof(url), "%s/v1/batches", p.base);
    snprintf(body, sizeof(body), "{\"input_file_id\":\"%s\",\"endpoint\":\"/v1/embeddings\","
             "\"completion_window\":\"24h\"}", fid);
    for (int i = 0; i < CREATES; i++) {
        assert_non_null(h[i] = bd_it_easy_new("POST", url, body, hdrs, 60000, &r[i]));
        curl_multi_add_handle(m, h[i]);
    }
    do {
        curl_multi_perform(m, &running);
        if (running)
            curl_multi_poll(m, NULL, 0, 100, NULL);
    } while (running);
    for (int i = 0; i < CREATES; i++) {
        CURLMsg *msg;
        int left;
        while ((msg = curl_multi_info_read(m, &left)) != NULL) {
            if (msg->msg != CURLMSG_DONE)
                continue;
            curl_multi_remove_handle(m, msg->easy_handle);
            bd_it_easy_finish(msg->easy_handle, msg->data.result);
        }
    }
    curl_multi_cleanup(m);
    for (int i = 0; i < CREATES; i++) {
        if (r[i].status != 200)
            fail_msg("create %d: %ld %s", i, r[i].status, r[i].body ? r[i].body : "");
        json_t *b = json_loads(r[i].body, 0, NULL);
        assert_string_equal(bd_it_str(b, "status"), "in_progress");
        json_decref(b);
        bd_it_resp_free(&r[i]);
    }
    assert_int_equal(bd_it_stop(&p, SIGTERM, 20), 0);
    free(reqs);
}

/* The client leaves while its batch is being created (a big file, two passes): the create
 * stops at its next step and rolls back: no batch, no job, no lines. */
static void test_batch_create_stops_when_client_leaves(void **state)
{
    char fid[64], head[512], body[256];
    size_t cap = (size_t)60000 * 200 + 1, len = 0;
    char *reqs = malloc(cap);
    struct bd_it_raw c;

    (void)state;
    assert_non_null(reqs);
    for (unsigned i = 0; i < 60000; i++)   /* ~11 MB: two passes of eleven chunks */
        len += (size_t)snprintf(reqs + len, cap - len, "{\"custom_id\":\"gone-%u\","
                                "\"method\":\"POST\",\"url\":\"/v1/embeddings\",\"body\":"
                                "{\"model\":\"hashmodel\",\"input\":\"a text long enough "
                                "to fill the file, number %u\"}}\n", i, i);
    upload(&g_proc, reqs, fid, sizeof(fid));
    long before = psql_long("SELECT count(*) FROM jobs");
    snprintf(body, sizeof(body), "{\"input_file_id\":\"%s\",\"endpoint\":\"/v1/embeddings\","
             "\"completion_window\":\"24h\"}", fid);
    snprintf(head, sizeof(head), "POST /v1/batches HTTP/1.1\r\nHost: t\r\n" AUTH "\r\n"
             "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
             strlen(body), body);
    bd_it_raw_connect(&c, g_proc.port);
    bd_it_raw_send(&c, head);
    bd_it_sleep_ms(50);
    bd_it_raw_close(&c);
    /* the create notices at its next step (a slice, a chunk) and rolls back */
    double deadline = bd_it_now() + 20;
    while (bd_it_now() < deadline &&
           bd_it_sh("grep -q 'file=%s event=create' %s", fid, g_proc.log_path) != 0)
        bd_it_sleep_ms(100);
    assert_int_equal(bd_it_sh("grep -q 'file=%s event=create_cancelled' %s", fid,
                              g_proc.log_path), 0);
    assert_int_equal(psql_long("SELECT count(*) FROM batches WHERE input_file_id = '%s'", fid), 0);
    assert_int_equal(psql_long("SELECT count(*) FROM jobs"), before);
    free(reqs);
}

/* ---- the official SDK ------------------------------------------------------------------- */

static void test_batches_work_with_the_official_openai_sdk(void **state)
{
    char env[256];

    (void)state;
    snprintf(env, sizeof(env), "BATCHD_URL='%s' BATCHD_KEY=sk-anything BATCHD_MODEL=" MODEL
             " FAKE_URL=http://127.0.0.1:%d", g_proc.base, g_fake_port);
    assert_int_equal(bd_it_openai_sdk("batches.mjs", env), 0);
}

/* ---- setup ------------------------------------------------------------------------------ */

static int it_setup(void **state)
{
    const char *const fake_args[] = { "--dim", "16", NULL };
    char small_yaml[1400];

    (void)state;
    if (bd_it_scratch_open(&g_scr, "itbatches", "BD_IT_BATCHES_REDIS_DB", "12") != 0)
        return -1;
    if (fake_model_spawn(NULL, fake_args, &g_fake_pid, &g_fake_port) != 0)
        return -1;
    snprintf(g_models_yaml, sizeof(g_models_yaml),
             "jobs:\n  lease: 3\n  reaper_interval: 1\n  retry_delay: 0.2\n"
             "models:\n  - name: " MODEL "\n    provider: openai\n"
             "    base_url: http://127.0.0.1:%d\n    dimensions: %d\n"
             "    max_input_chars: 2000\n    overlong: fail\n    concurrency: 4\n"
             "  - name: hashmodel\n    provider: hashing\n    dimensions: 4\n",
             g_fake_port, DIM);
    if (bd_it_start(&g_proc, g_models_yaml, NULL) != 0)
        return -1;
    g_started = true;
    snprintf(small_yaml, sizeof(small_yaml),
             "openai:\n  max_batch_lines: 5\n  batch_expiry: 3\n"
             "jobs:\n  default_batch_size: 1\n  lease: 3\n  reaper_interval: 1\n"
             "models:\n  - name: " MODEL "\n    provider: openai\n"
             "    base_url: http://127.0.0.1:%d\n    dimensions: %d\n    concurrency: 2\n"
             "    max_input_chars: 2000\n    overlong: fail\n"
             "  - name: hashmodel\n    provider: hashing\n    dimensions: 4\n",
             g_fake_port, DIM);
    /* Both processes claim from the same queue, so MODEL refuses long inputs in both
     * (the SDK run's line 136 fails whichever runs it). */
    if (bd_it_start(&g_small, small_yaml, NULL) != 0)
        return -1;
    g_small_started = true;
    return 0;
}

static int it_teardown(void **state)
{
    int rc = 0;
    (void)state;
    rc |= bd_it_stop_started(&g_proc, &g_started);
    rc |= bd_it_stop_started(&g_small, &g_small_started);
    if (g_fake_pid > 0)
        fake_model_stop(g_fake_pid);
    bd_it_scratch_close(&g_scr);
    return rc;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batch_fails_validation_with_line_numbers),
        cmocka_unit_test(test_batch_refuses_bad_requests),
        cmocka_unit_test(test_models_list_the_configured_models),
        cmocka_unit_test(test_batch_finalized_when_its_lease_release_was_lost),
        cmocka_unit_test(test_batch_is_a_job_and_completes_in_order),
        cmocka_unit_test(test_batch_refuses_more_lines_than_the_limit),
        cmocka_unit_test(test_batch_expires_keeping_what_finished),
        cmocka_unit_test(test_batch_finalized_once_with_two_processes),
        cmocka_unit_test(test_batch_completes_after_sigkill_mid_run),
        cmocka_unit_test(test_batch_creates_do_not_wait_on_each_other_with_small_pool),
        cmocka_unit_test(test_batch_create_stops_when_client_leaves),
        cmocka_unit_test(test_batches_work_with_the_official_openai_sdk),
    };
    bd_it_apply_filter();
    return cmocka_run_group_tests(tests, it_setup, it_teardown);
}
