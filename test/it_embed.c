/* it_embed.c -- bulk_embed end to end: the real batchd binary, the test stack's Redis and
 * PostgreSQL, and the project's fake model server (test/fake_model/). Wire formats (Ollama,
 * OpenAI with shuffled answers and a key, TEI), stored vectors bit-compared with
 * fake_vector(), 500s, hangs, 429 + Retry-After, malformed bodies and wrong dimensions,
 * cancel during a model call, the per-model concurrency cap, pipelined batches (one job
 * fills every model slot, cancel and SIGKILL with batches in flight, the dispatcher's
 * priority order), request splitting, overlong
 * texts, the embedding cache, unknown models and the seed's example on conf/dev.yaml.
 *
 * Isolation: every case starts its own fake model server(s) and its own batchd, and stops
 * both (batchd must exit 0 on SIGTERM). The suite runs in a private PostgreSQL database and
 * Redis db of the test stack (created here, dropped at the end), because other suites'
 * batchd processes on the same stack would otherwise claim these jobs and fail them as
 * "unknown model" (and ours would take theirs). BD_IT_EMBED_SHARED_DB=1 turns that off;
 * collection names are unique per run (ite<pid>_...) either way. Model versions are unique
 * per run, so the embedding cache never serves vectors from an earlier run.
 *
 * Test code: blocking calls (libcurl easy, psql through popen) are fine here.
 * SPDX-License-Identifier: MIT
 */
#define _GNU_SOURCE                    /* strcasestr, getline */
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
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "bd_it.h"
#include "batchd/buf.h"
#include "fake_model/fake_model_client.h"
#include "fake_model/fake_vectors.h"

#define ITE_MAX_FAKES  2
#define ITE_TOLERANCE  1e-6            /* per component; float32 round trips are exact */
#define ITE_NO_SKIP    ((unsigned)-1)

static char ite_prefix[32];            /* "ite<pid>": collections and model names */
static char ite_version[64];           /* model version: unique per run (embedding cache) */
static char ite_orig_pg[512];          /* the stack's own URLs, restored at the end */
static char ite_orig_redis[512];
static char ite_private_db[64];        /* "" when running on the shared database */

/* One case's processes; the teardown stops whatever an aborted case left running. */
struct ite_ctx {
    pid_t fm_pid[ITE_MAX_FAKES];
    int fm_port[ITE_MAX_FAKES];
    unsigned fm_count;
    struct bd_it_proc p;
};

/* The items of one job: texts, optional ids (NULL = default id), optional metadata. */
struct ite_items {
    unsigned n;
    char **texts;
    char **ids;
    json_t **metas;
};

/* ---- processes -------------------------------------------------------------------------- */

static int ite_setup(void **state)
{
    struct ite_ctx *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return -1;
    *state = c;
    return 0;
}

static int ite_teardown(void **state)
{
    struct ite_ctx *c = *state;

    if (c->p.pid > 0)
        bd_it_stop(&c->p, SIGTERM, 20);
    for (unsigned i = 0; i < c->fm_count; i++)
        if (c->fm_pid[i] > 0)
            fake_model_stop(c->fm_pid[i]);
    free(c);
    return 0;
}

/* Start a fake model server with the flags given (NULL-terminated); returns its port. */
static int ite_fake(struct ite_ctx *c, ...)
{
    const char *args[FAKE_MODEL_MAX_ARGS + 1];
    unsigned n = 0;
    va_list ap;

    va_start(ap, c);
    for (const char *a; (a = va_arg(ap, const char *)) != NULL && n < FAKE_MODEL_MAX_ARGS;)
        args[n++] = a;
    va_end(ap);
    args[n] = NULL;
    assert_true(c->fm_count < ITE_MAX_FAKES);
    unsigned i = c->fm_count;
    assert_int_equal(fake_model_spawn(NULL, args, &c->fm_pid[i], &c->fm_port[i]), 0);
    c->fm_count++;
    return c->fm_port[i];
}

/* Start batchd and wait until it is ready (Redis and PostgreSQL reachable), not only
 * alive: the first start in a fresh database also migrates the schema. */
static void ite_batchd(struct ite_ctx *c, const char *yaml)
{
    long st = 0;

    assert_int_equal(bd_it_start(&c->p, yaml, NULL), 0);
    double deadline = bd_it_now() + 20;
    while (bd_it_now() < deadline) {
        json_decref(bd_it_json(&c->p, "GET", "/readyz", NULL, &st));
        if (st == 200)
            break;
        bd_it_sleep_ms(50);
    }
    assert_int_equal(st, 200);
}

/* Stop batchd and the fakes; batchd must exit 0 on SIGTERM, the fakes cleanly. */
static void ite_finish(struct ite_ctx *c)
{
    assert_int_equal(bd_it_stop(&c->p, SIGTERM, 20), 0);
    for (unsigned i = 0; i < c->fm_count; i++) {
        pid_t pid = c->fm_pid[i];
        c->fm_pid[i] = 0;
        assert_int_equal(fake_model_stop(pid), 0);
    }
}

/* ---- fake model server ------------------------------------------------------------------ */

/* The fake server's JSON answer on path, or NULL unless it answered 200 with JSON. */
static json_t *fm_json(int port, const char *method, const char *path, const char *body)
{
    char url[128];
    long st = 0;

    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", port, path);
    json_t *j = bd_it_json_url(method, url, body, &st);
    if (st != 200) {
        json_decref(j);
        return NULL;
    }
    return j;
}

static long fm_stat(int port, const char *key)
{
    json_t *j = fm_json(port, "GET", "/stats", NULL);
    assert_non_null(j);
    long v = (long)json_integer_value(json_object_get(j, key));
    json_decref(j);
    return v;
}

static long fm_route_requests(int port, const char *route)
{
    json_t *j = fm_json(port, "GET", "/stats", NULL);
    assert_non_null(j);
    long v = (long)json_integer_value(json_object_get(json_object_get(j, "requests_by_route"),
                                                      route));
    json_decref(j);
    return v;
}

static void fm_stats_reset(int port)
{
    json_t *j = fm_json(port, "POST", "/stats/reset", "{}");
    assert_non_null(j);
    json_decref(j);
}

static void fm_dump_stats(int port, const char *what)
{
    json_t *j = fm_json(port, "GET", "/stats", NULL);
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    fprintf(stderr, "  fake stats (%s): %s\n", what, s ? s : "(none)");
    free(s);
    json_decref(j);
}

/* ---- config ----------------------------------------------------------------------------- */

/* "jobs:" with fast polling and the given retry policy, then "models:". */
static void yaml_jobs(struct bd_buf *b, unsigned retry_attempts, const char *retry_delay)
{
    bd_buf_printf(b,
                  "jobs:\n"
                  "  max_concurrent_jobs: 2\n"
                  "  processing_interval: 0.05\n"
                  "  retry_attempts: %u\n"
                  "  retry_delay: %s\n"
                  "  lease: 5\n"
                  "  reaper_interval: 1\n"
                  "models:\n",
                  retry_attempts, retry_delay);
}

/* One model entry; extra: more "    key: value\n" lines, or NULL. */
static void yaml_model(struct bd_buf *b, const char *name, const char *provider, int port,
                       unsigned dim, const char *extra)
{
    bd_buf_printf(b, "  - name: %s\n    provider: %s\n", name, provider);
    if (port > 0)
        bd_buf_printf(b, "    base_url: http://127.0.0.1:%d\n", port);
    bd_buf_printf(b, "    dimensions: %u\n    version: %s\n", dim, ite_version);
    if (extra)
        bd_buf_puts(b, extra);
}

static void model_name(char *out, size_t len, const char *what)
{
    snprintf(out, len, "%s_%s", ite_prefix, what);
}

/* ---- items and bodies ------------------------------------------------------------------- */

/* n items of kind: fancy texts need JSON escaping and UTF-8 every 5th item; with_ids_meta
 * gives every 2nd item an id and every 3rd metadata. */
static void items_make(struct ite_items *it, unsigned n, const char *kind, bool fancy,
                       bool with_ids_meta)
{
    it->n = n;
    it->texts = calloc(n, sizeof(char *));
    it->ids = calloc(n, sizeof(char *));
    it->metas = calloc(n, sizeof(json_t *));
    assert_non_null(it->texts);
    assert_non_null(it->ids);
    assert_non_null(it->metas);
    for (unsigned i = 0; i < n; i++) {
        char t[256];
        if (fancy && i % 5 == 0)
            snprintf(t, sizeof(t), "%s %u: na\xc3\xafve caf\xc3\xa9 \"quoted\" back\\slash "
                     "tab\there\nnew line \xf0\x9f\x98\x80 end", kind, i);
        else
            snprintf(t, sizeof(t), "%s text number %u", kind, i);
        it->texts[i] = strdup(t);
        if (with_ids_meta && i % 2 == 0) {
            char id[64];
            snprintf(id, sizeof(id), "doc-%u", i);
            it->ids[i] = strdup(id);
        }
        if (with_ids_meta && i % 3 == 0)
            it->metas[i] = json_pack("{s:i, s:s, s:{s:b}}", "n", (int)i, "src", "it_embed",
                                     "nested", "ok", 1);
    }
}

static void items_free(struct ite_items *it)
{
    for (unsigned i = 0; i < it->n; i++) {
        free(it->texts[i]);
        free(it->ids[i]);
        json_decref(it->metas[i]);
    }
    free(it->texts);
    free(it->ids);
    free(it->metas);
    memset(it, 0, sizeof(*it));
}

/* A bulk_embed body; coll NULL leaves the collection to the default. Caller frees. */
static char *embed_body(const char *model, const char *coll, const struct ite_items *it,
                        unsigned batch_size)
{
    json_t *data = json_array();
    for (unsigned i = 0; i < it->n; i++) {
        json_t *item = json_pack("{s:s}", "text", it->texts[i]);
        if (it->ids[i])
            json_object_set_new(item, "id", json_string(it->ids[i]));
        if (it->metas[i])
            json_object_set(item, "metadata", it->metas[i]);
        json_array_append_new(data, item);
    }
    json_t *body = json_pack("{s:s, s:s, s:o, s:{s:i, s:s}}", "operation", "bulk_embed",
                             "model", model, "data", data, "options", "batch_size",
                             (int)batch_size, "priority", "normal");
    if (coll)
        json_object_set_new(body, "collection", json_string(coll));
    char *s = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    assert_non_null(s);
    return s;
}

/* POST a job, expect 202; returns its id (caller frees). A 503 (the shared stack's
 * PostgreSQL or Redis briefly away, e.g. another suite restarting it) is retried for 10 s. */
static char *submit(struct bd_it_proc *p, const char *body)
{
    long st;
    double deadline = bd_it_now() + 10;
    char *id = bd_it_submit(p, body, &st);
    while (st == 503 && bd_it_now() < deadline) {
        fprintf(stderr, "  submit: 503, retrying\n");
        free(id);
        bd_it_sleep_ms(200);
        id = bd_it_submit(p, body, &st);
    }
    assert_int_equal(st, 202);
    assert_non_null(id);
    return id;
}

static json_t *job_get(struct bd_it_proc *p, const char *fmt, const char *id)
{
    char path[512];
    long st;
    snprintf(path, sizeof(path), fmt, id);
    json_t *j = bd_it_json(p, "GET", path, NULL, &st);
    assert_int_equal(st, 200);
    assert_non_null(j);
    return j;
}

/* Wait until the job ends (or timeout_s), then assert it ended as want. Returns the final
 * status object (caller decrefs). */
static json_t *wait_end(struct bd_it_proc *p, const char *id, const char *want,
                        double timeout_s)
{
    return bd_it_expect_status(p, id, want, timeout_s);
}

static long jint(json_t *j, const char *obj, const char *field)
{
    json_t *o = obj ? json_object_get(j, obj) : j;
    json_t *v = json_object_get(o, field);
    if (!json_is_integer(v)) {
        fprintf(stderr, "field %s.%s is not an integer\n", obj ? obj : "", field);
        fail();
    }
    return (long)json_integer_value(v);
}

/* ---- PostgreSQL ------------------------------------------------------------------------- */

/* The stored rows of job, index order: {"i", "id", "e", "m", "c"}. */
static json_t *job_rows(const char *job)
{
    return bd_it_psql_json_rows("SELECT json_build_object('i', item_index, 'id', id, "
                                "'e', embedding, 'm', metadata, 'c', collection) FROM vectors "
                                "WHERE job_id = '%s' ORDER BY item_index", job);
}

/* ---- expectations ----------------------------------------------------------------------- */

/* Whether emb equals fake_vector(text[0..len), dim), component by component. */
static bool vec_matches(json_t *emb, const char *text, size_t len, unsigned dim,
                        const char *what)
{
    float want[1024];

    assert_true(dim <= 1024);
    if (!json_is_array(emb) || json_array_size(emb) != dim) {
        fprintf(stderr, "%s: embedding has %zu components, want %u\n", what,
                json_is_array(emb) ? json_array_size(emb) : 0, dim);
        return false;
    }
    fake_vector(text, len, dim, want);
    for (unsigned k = 0; k < dim; k++) {
        double got = json_number_value(json_array_get(emb, k));
        if (!json_is_number(json_array_get(emb, k)) || fabs(got - (double)want[k]) >
                                                           ITE_TOLERANCE) {
            fprintf(stderr, "%s: component %u is %.9g, want %.9g\n", what, k, got,
                    (double)want[k]);
            return false;
        }
    }
    return true;
}

static void expect_id(const char *got, const char *job, const struct ite_items *it,
                      unsigned i)
{
    char def[256];
    snprintf(def, sizeof(def), "%s:%u", job, i);
    const char *want = it->ids[i] ? it->ids[i] : def;
    if (got == NULL || strcmp(got, want) != 0)
        fprintf(stderr, "item %u: id %s, want %s\n", i, got ? got : "(null)", want);
    assert_non_null(got);
    assert_string_equal(got, want);
}

static void expect_metadata(json_t *got, const struct ite_items *it, unsigned i)
{
    json_t *want = json_pack("{s:s}", "text", it->texts[i]);
    if (it->metas[i])
        json_object_update(want, it->metas[i]);
    if (!json_equal(got, want)) {
        char *g = got ? json_dumps(got, JSON_COMPACT) : NULL;
        char *w = json_dumps(want, JSON_COMPACT);
        fprintf(stderr, "item %u: metadata %s, want %s\n", i, g ? g : "(null)", w);
        free(g);
        free(w);
    }
    assert_true(json_equal(got, want));
    json_decref(want);
}

/* Every item of it stored by job in PostgreSQL with its id, metadata and the fake's vector
 * of its text (of its first max_chars bytes when max_chars is not 0), except item skip. */
static void expect_stored(const char *job, const struct ite_items *it, unsigned dim,
                          unsigned max_chars, unsigned skip, const char *coll)
{
    json_t *rows = job_rows(job);
    size_t want_rows = it->n - (skip < it->n ? 1 : 0);
    size_t k;
    json_t *row;

    if (json_array_size(rows) != want_rows)
        fprintf(stderr, "job %s: %zu rows stored, want %zu\n", job, json_array_size(rows),
                want_rows);
    assert_int_equal(json_array_size(rows), want_rows);
    json_array_foreach(rows, k, row) {
        unsigned i = (unsigned)json_integer_value(json_object_get(row, "i"));
        char what[64];
        assert_true(i < it->n);
        assert_true(i != skip);
        snprintf(what, sizeof(what), "job %s item %u", job, i);
        size_t len = strlen(it->texts[i]);
        if (max_chars && len > max_chars)
            len = max_chars;
        expect_id(json_string_value(json_object_get(row, "id")), job, it, i);
        expect_metadata(json_object_get(row, "m"), it, i);
        assert_true(vec_matches(json_object_get(row, "e"), it->texts[i], len, dim, what));
        if (coll)
            assert_string_equal(json_string_value(json_object_get(row, "c")), coll);
    }
    json_decref(rows);
}

/* The same through GET /jobs/{id}/results (one page of up to 1000). */
static void expect_results_api(struct bd_it_proc *p, const char *job, const struct ite_items *it,
                               unsigned dim)
{
    json_t *j = job_get(p, "/api/v1/batch/jobs/%s/results?limit=1000", job);
    json_t *res = json_object_get(j, "results"), *r;
    size_t k;

    assert_int_equal(json_array_size(res), it->n);
    json_array_foreach(res, k, r) {
        unsigned i = (unsigned)json_integer_value(json_object_get(r, "index"));
        char what[64];
        assert_int_equal(i, k);
        snprintf(what, sizeof(what), "results API item %u", i);
        expect_id(json_string_value(json_object_get(r, "id")), job, it, i);
        expect_metadata(json_object_get(r, "metadata"), it, i);
        assert_true(vec_matches(json_object_get(r, "embedding"), it->texts[i],
                                strlen(it->texts[i]), dim, what));
    }
    json_decref(j);
}

/* GET /jobs/{id}/items?status=failed: the items array (caller decrefs the returned doc). */
static json_t *failed_items(struct bd_it_proc *p, const char *job)
{
    return job_get(p, "/api/v1/batch/jobs/%s/items?status=failed&limit=1000", job);
}

/* Every failed item of doc has code (when not NULL) and a message containing needle
 * (case-insensitive; when not NULL); returns how many there are. */
static size_t expect_failed_items(json_t *doc, const char *code, const char *needle)
{
    json_t *items = json_object_get(doc, "items"), *item;
    size_t k;

    json_array_foreach(items, k, item) {
        json_t *err = json_object_get(item, "error");
        const char *c = json_string_value(json_object_get(err, "code"));
        const char *m = json_string_value(json_object_get(err, "message"));
        assert_string_equal(json_string_value(json_object_get(item, "status")), "failed");
        assert_non_null(c);
        assert_non_null(m);
        if ((code && strcmp(c, code) != 0) || (needle && strcasestr(m, needle) == NULL))
            fprintf(stderr, "item %lld: code %s message \"%s\" (want %s / \"%s\")\n",
                    json_integer_value(json_object_get(item, "index")), c, m,
                    code ? code : "-", needle ? needle : "-");
        if (code)
            assert_string_equal(c, code);
        if (needle)
            assert_non_null(strcasestr(m, needle));
    }
    return json_array_size(items);
}

/* Sum of attempts over the job's batches as /debug/job reports them. */
static long debug_attempts(struct bd_it_proc *p, const char *job)
{
    json_t *j = job_get(p, "/api/v1/batch/debug/job/%s", job);
    json_t *batches = json_object_get(j, "batches"), *b;
    size_t k;
    long sum = 0;

    assert_true(json_is_array(batches));
    json_array_foreach(batches, k, b)
        sum += (long)json_integer_value(json_object_get(b, "attempts"));
    json_decref(j);
    return sum;
}

/* ---- 1. wire formats -------------------------------------------------------------------- */

/* A 50-text job through provider's wire format: every stored vector is the fake's, with the
 * item's id (or <job_id>:<index>) and metadata plus "text"; the status reports it. */
static void run_provider_case(struct ite_ctx *c, const char *provider, const char *route,
                              bool is_openai, bool give_collection)
{
    const unsigned dim = 24;
    char model[64], coll[96], key[64], extra[256];
    struct bd_buf y;
    struct ite_items it;

    snprintf(key, sizeof(key), "sk-it-%d", (int)getpid());
    int port = is_openai ? ite_fake(c, "--dim", "24", "--latency-ms", "20", "--seed", "7",
                                    "--shuffle-openai", "--api-key", key, NULL)
                         : ite_fake(c, "--dim", "24", "--latency-ms", "20", "--seed", "7", NULL);
    model_name(model, sizeof(model), provider);
    snprintf(extra, sizeof(extra), "    max_inputs_per_request: 4\n%s%s%s",
             is_openai ? "    api_key: " : "", is_openai ? key : "", is_openai ? "\n" : "");
    bd_buf_init(&y);
    yaml_jobs(&y, 3, "0.05");
    yaml_model(&y, model, provider, port, dim, extra);
    ite_batchd(c, y.data);
    bd_buf_free(&y);

    if (give_collection)
        snprintf(coll, sizeof(coll), "%s_given", model);
    else
        snprintf(coll, sizeof(coll), "%s_embeddings", model);
    items_make(&it, 50, provider, true, true);
    char *body = embed_body(model, give_collection ? coll : NULL, &it, 10);
    char *id = submit(&c->p, body);
    free(body);

    json_t *st = wait_end(&c->p, id, "completed", 30);
    assert_int_equal(jint(st, "progress", "processed_items"), 50);
    assert_int_equal(jint(st, "progress", "failed_items"), 0);
    assert_int_equal(jint(st, "progress", "total_batches"), 5);
    json_t *res = json_object_get(st, "results");
    assert_int_equal(jint(res, NULL, "completed_embeddings"), 50);
    assert_int_equal(jint(res, NULL, "stored_vectors"), 50);
    assert_true(json_is_number(json_object_get(res, "average_processing_time_ms")));
    assert_true(json_number_value(json_object_get(res, "average_processing_time_ms")) > 0.0);
    assert_string_equal(json_string_value(json_object_get(res, "output_collection")), coll);
    assert_string_equal(json_string_value(json_object_get(st, "model")), model);
    assert_string_equal(json_string_value(json_object_get(st, "operation")), "bulk_embed");
    json_decref(st);

    expect_stored(id, &it, dim, 0, ITE_NO_SKIP, coll);
    expect_results_api(&c->p, id, &it, dim);

    /* Everything went through this provider's route: 5 batches of 10 in requests of 4. */
    long total = fm_stat(port, "requests_total");
    if (total != 15 || fm_route_requests(port, route) != 15)
        fm_dump_stats(port, provider);
    assert_int_equal(total, 15);
    assert_int_equal(fm_route_requests(port, route), 15);
    assert_int_equal(fm_stat(port, "inputs_total"), 50);
    assert_int_equal(fm_stat(port, "unauthorized_401"), 0);
    assert_int_equal(fm_stat(port, "bad_request_400"), 0);

    free(id);
    items_free(&it);
    ite_finish(c);
}

static void test_embed_stores_fake_vectors_when_provider_is_ollama(void **state)
{
    run_provider_case(*state, "ollama", "/api/embed", false, false);
}

static void test_embed_stores_fake_vectors_when_openai_answers_shuffled_with_key(void **state)
{
    run_provider_case(*state, "openai", "/v1/embeddings", true, false);
}

static void test_embed_stores_fake_vectors_when_provider_is_tei(void **state)
{
    run_provider_case(*state, "tei", "/embed", false, true);
}

/* ---- 2. 500s ---------------------------------------------------------------------------- */

static void test_embed_embeds_every_item_when_30pct_of_requests_fail(void **state)
{
    struct ite_ctx *c = *state;
    char model[64];
    struct bd_buf y;
    struct ite_items it;

    int port = ite_fake(c, "--dim", "16", "--fail-rate", "0.3", "--seed", "11", NULL);
    model_name(model, sizeof(model), "flaky");
    bd_buf_init(&y);
    yaml_jobs(&y, 10, "0.01");
    yaml_model(&y, model, "ollama", port, 16, NULL);
    ite_batchd(c, y.data);
    bd_buf_free(&y);

    items_make(&it, 100, "flaky", false, false);
    char *body = embed_body(model, NULL, &it, 10);
    char *id = submit(&c->p, body);
    free(body);
    json_t *st = wait_end(&c->p, id, "completed", 40);
    assert_int_equal(jint(st, "progress", "processed_items"), 100);
    assert_int_equal(jint(st, "progress", "failed_items"), 0);
    json_decref(st);
    expect_stored(id, &it, 16, 0, ITE_NO_SKIP, NULL);

    /* A batch's attempts count its tries, the successful one included: one request per
     * batch, so the 10 batches took 10 tries plus one per 500. */
    long errors = fm_stat(port, "errors_500");
    long dbg = debug_attempts(&c->p, id);
    long pg = bd_it_psql_long("SELECT COALESCE(sum(attempts), 0) FROM job_batches "
                              "WHERE job_id = '%s'",
                        id);
    long retried = bd_it_psql_long("SELECT count(*) FROM job_batches WHERE job_id = '%s' AND "
                             "attempts > 1", id);
    fprintf(stderr, "  500s sent %ld, attempts: /debug %ld, job_batches %ld, batches retried "
            "%ld\n", errors, dbg, pg, retried);
    assert_true(errors > 0);                     /* the seed makes some requests fail */
    assert_true(retried > 0);
    assert_int_equal(dbg, 10 + errors);
    assert_int_equal(pg, 10 + errors);
    assert_int_equal(fm_stat(port, "requests_total"), 10 + errors);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM job_item_errors WHERE job_id = '%s'",
                                     id),
                     0);
    free(id);
    items_free(&it);
    ite_finish(c);
}

/* ---- 3. hangs --------------------------------------------------------------------------- */

static void test_embed_retries_timed_out_requests_when_model_hangs_sometimes(void **state)
{
    struct ite_ctx *c = *state;
    char model[64];
    struct bd_buf y;
    struct ite_items it;

    int port = ite_fake(c, "--dim", "16", "--hang-rate", "0.3", "--seed", "5", NULL);
    model_name(model, sizeof(model), "hangy");
    bd_buf_init(&y);
    yaml_jobs(&y, 10, "0.01");
    yaml_model(&y, model, "ollama", port, 16, "    timeout: 0.5\n");
    ite_batchd(c, y.data);
    bd_buf_free(&y);

    items_make(&it, 40, "hangy", false, false);
    char *body = embed_body(model, NULL, &it, 10);
    char *id = submit(&c->p, body);
    free(body);
    json_t *st = wait_end(&c->p, id, "completed", 30);
    assert_int_equal(jint(st, "progress", "processed_items"), 40);
    assert_int_equal(jint(st, "progress", "failed_items"), 0);
    json_decref(st);
    expect_stored(id, &it, 16, 0, ITE_NO_SKIP, NULL);

    long hangs = fm_stat(port, "hangs");
    long disconnects = fm_stat(port, "disconnects");
    fprintf(stderr, "  hangs %ld, disconnects %ld, attempts %ld\n", hangs, disconnects,
            debug_attempts(&c->p, id));
    assert_true(hangs > 0);                      /* the seed makes some requests hang */
    assert_int_equal(disconnects, hangs);        /* each hung request was given up */
    /* Tries: one per batch (4, one request each) plus one per timed-out request. */
    assert_int_equal(debug_attempts(&c->p, id), 4 + hangs);
    assert_int_equal(fm_stat(port, "requests_total"), 4 + hangs);
    free(id);
    items_free(&it);
    ite_finish(c);
}

static void test_embed_fails_items_with_timeout_error_when_model_always_hangs(void **state)
{
    struct ite_ctx *c = *state;
    char model[64];
    struct bd_buf y;
    struct ite_items it;

    int port = ite_fake(c, "--dim", "16", "--hang-rate", "1", NULL);
    model_name(model, sizeof(model), "dead");
    bd_buf_init(&y);
    yaml_jobs(&y, 2, "0.01");
    yaml_model(&y, model, "ollama", port, 16, "    timeout: 0.3\n");
    ite_batchd(c, y.data);
    bd_buf_free(&y);

    /* One batch: three attempts stay under the circuit breaker's threshold (5), so every
     * failure is the request's own timeout. */
    items_make(&it, 10, "dead", false, false);
    char *body = embed_body(model, NULL, &it, 10);
    double t0 = bd_it_now();
    char *id = submit(&c->p, body);
    free(body);
    json_t *st = wait_end(&c->p, id, "failed", 15);
    double took = bd_it_now() - t0;
    fprintf(stderr, "  failed after %.2f s\n", took);
    assert_true(took < 15.0);
    assert_int_equal(jint(st, "progress", "failed_items"), 10);
    assert_int_equal(jint(st, "progress", "processed_items"), 0);
    json_decref(st);

    json_t *doc = failed_items(&c->p, id);
    assert_int_equal(expect_failed_items(doc, "timeout_error", NULL), 10);
    json_decref(doc);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM vectors WHERE job_id = '%s'", id), 0);
    /* 1 try + retry_attempts 2, each abandoned by batchd. */
    assert_int_equal(fm_stat(port, "requests_total"), 3);
    assert_int_equal(fm_stat(port, "hangs"), 3);
    assert_int_equal(fm_stat(port, "disconnects"), 3);
    free(id);
    items_free(&it);
    ite_finish(c);
}

/* A batch that runs out of retries reports as many attempts as it made tries (the docs'
 * /debug example: "attempts": 3 with "... after 3 attempts"), as a successful batch does. */
static void test_embed_debug_counts_each_try_when_batch_runs_out_of_retries(void **state)
{
    struct ite_ctx *c = *state;
    char model[64];
    struct bd_buf y;
    struct ite_items it;

    int port = ite_fake(c, "--dim", "16", "--fail-rate", "1", NULL);
    model_name(model, sizeof(model), "broken");
    bd_buf_init(&y);
    yaml_jobs(&y, 2, "0.01");
    yaml_model(&y, model, "ollama", port, 16, NULL);
    ite_batchd(c, y.data);
    bd_buf_free(&y);

    items_make(&it, 4, "broken", false, false);
    char *body = embed_body(model, NULL, &it, 10);
    char *id = submit(&c->p, body);
    free(body);
    json_decref(wait_end(&c->p, id, "failed", 15));
    json_t *doc = failed_items(&c->p, id);
    assert_int_equal(expect_failed_items(doc, "processing_error", "500"), 4);
    json_decref(doc);
    assert_int_equal(fm_stat(port, "requests_total"), 3);
    long dbg = debug_attempts(&c->p, id);
    long pg = bd_it_psql_long("SELECT attempts FROM job_batches WHERE job_id = '%s'", id);
    fprintf(stderr, "  3 requests made; attempts: /debug %ld, job_batches %ld\n", dbg, pg);
    assert_int_equal(pg, 3);
    assert_int_equal(dbg, 3);
    free(id);
    items_free(&it);
    ite_finish(c);
}

/* ---- 4. 429 ----------------------------------------------------------------------------- */

static void test_embed_completes_without_failures_when_model_answers_429(void **state)
{
    struct ite_ctx *c = *state;
    char model[64];
    struct bd_buf y;
    struct ite_items it;

    int port = ite_fake(c, "--dim", "16", "--rate-429", "0.5", "--retry-after", "1",
                        "--seed", "3", NULL);
    model_name(model, sizeof(model), "limited");
    bd_buf_init(&y);
    yaml_jobs(&y, 1, "0.01");                    /* 429s must not spend batch attempts */
    yaml_model(&y, model, "ollama", port, 16, NULL);
    ite_batchd(c, y.data);
    bd_buf_free(&y);

    items_make(&it, 30, "limited", false, false);
    char *body = embed_body(model, NULL, &it, 10);
    double t0 = bd_it_now();
    char *id = submit(&c->p, body);
    free(body);
    json_t *st = wait_end(&c->p, id, "completed", 30);
    double took = bd_it_now() - t0;
    assert_int_equal(jint(st, "progress", "processed_items"), 30);
    assert_int_equal(jint(st, "progress", "failed_items"), 0);
    json_decref(st);
    expect_stored(id, &it, 16, 0, ITE_NO_SKIP, NULL);

    long n429 = fm_stat(port, "rate_limited_429");
    fprintf(stderr, "  429s %ld, job took %.2f s\n", n429, took);
    assert_true(n429 > 0);                       /* the seed makes some requests 429 */
    /* One request at a time (one per batch), so each 429 costs its Retry-After second. */
    assert_true(took >= 0.9 * (double)n429);
    assert_int_equal(fm_stat(port, "requests_total"), 3 + n429);
    free(id);
    items_free(&it);
    ite_finish(c);
}

/* ---- 5. malformed bodies, wrong dimensions ---------------------------------------------- */

static void run_bad_answer_case(struct ite_ctx *c, const char *what, const char *flag,
                                const char *needle)
{
    char model[64];
    struct bd_buf y;
    struct ite_items it;

    int port = ite_fake(c, "--dim", "16", flag, "1", NULL);
    model_name(model, sizeof(model), what);
    bd_buf_init(&y);
    yaml_jobs(&y, 1, "0.01");
    yaml_model(&y, model, "ollama", port, 16, NULL);
    ite_batchd(c, y.data);
    bd_buf_free(&y);

    items_make(&it, 12, what, false, false);
    char *body = embed_body(model, NULL, &it, 6);
    char *id = submit(&c->p, body);
    free(body);
    json_t *st = wait_end(&c->p, id, "failed", 20);
    assert_int_equal(jint(st, "progress", "failed_items"), 12);
    json_decref(st);

    json_t *doc = failed_items(&c->p, id);
    assert_int_equal(expect_failed_items(doc, NULL, needle), 12);
    json_decref(doc);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM vectors WHERE job_id = '%s'", id), 0);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM job_batches WHERE job_id = '%s' AND "
                               "last_error ILIKE '%%%s%%'", id, needle), 2);
    /* Two batches, each tried twice (retry_attempts 1). */
    assert_int_equal(fm_stat(port, "requests_total"), 4);
    free(id);
    items_free(&it);
    ite_finish(c);
}

static void test_embed_fails_batches_naming_json_when_bodies_are_malformed(void **state)
{
    run_bad_answer_case(*state, "malformed", "--malformed-rate", "JSON");
}

static void test_embed_fails_batches_naming_dimension_when_dimension_is_wrong(void **state)
{
    run_bad_answer_case(*state, "wrongdim", "--wrong-dim-rate", "dimension");
}

/* ---- 6. cancel -------------------------------------------------------------------------- */

/* A config of one model with the given concurrency, 10 inputs per request, timeout 30 s. */
static void yaml_one_model(struct bd_buf *y, const char *model, int port, unsigned dim,
                           unsigned concurrency, unsigned max_jobs)
{
    char extra[160];
    bd_buf_printf(y,
                  "jobs:\n"
                  "  max_concurrent_jobs: %u\n"
                  "  processing_interval: 0.05\n"
                  "  retry_attempts: 3\n"
                  "  retry_delay: 0.05\n"
                  "  lease: 3\n"
                  "  reaper_interval: 1\n"
                  "models:\n", max_jobs);
    snprintf(extra, sizeof(extra), "    concurrency: %u\n    max_inputs_per_request: 10\n"
             "    timeout: 30\n", concurrency);
    yaml_model(y, model, "ollama", port, dim, extra);
}

/* A job at a model that takes 5 s per request, cancelled (DELETE) once `at_model` of its
 * batches of 10 are in flight: cancelled within 1 s, every request aborted (the model sees
 * as many disconnects), nothing stored. */
static void run_cancel_case(struct ite_ctx *c, const char *what, unsigned items,
                            unsigned at_model)
{
    char model[64], path[256];
    struct bd_buf y;
    struct ite_items it;
    long st;

    int port = ite_fake(c, "--dim", "16", "--latency-ms", "5000", NULL);
    model_name(model, sizeof(model), what);
    bd_buf_init(&y);
    yaml_one_model(&y, model, port, 16, 4, 1);
    ite_batchd(c, y.data);
    bd_buf_free(&y);

    items_make(&it, items, what, false, false);
    char *body = embed_body(model, NULL, &it, 10);
    char *id = submit(&c->p, body);
    free(body);
    double deadline = bd_it_now() + 10;
    while (fm_stat(port, "in_flight") < (long)at_model && bd_it_now() < deadline)
        bd_it_sleep_ms(10);
    assert_int_equal(fm_stat(port, "in_flight"), at_model);

    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%s", id);
    double t0 = bd_it_now();
    json_t *j = bd_it_json(&c->p, "DELETE", path, NULL, &st);
    assert_int_equal(st, 200);
    json_decref(j);
    json_decref(wait_end(&c->p, id, "cancelled", 1.0));
    double took = bd_it_now() - t0;
    fprintf(stderr, "  cancelled %.3f s after the DELETE\n", took);
    assert_true(took < 1.0);
    deadline = bd_it_now() + 1;
    while (fm_stat(port, "disconnects") < (long)at_model && bd_it_now() < deadline)
        bd_it_sleep_ms(10);
    assert_int_equal(fm_stat(port, "disconnects"), at_model);
    assert_int_equal(fm_stat(port, "in_flight"), 0);
    assert_int_equal(fm_stat(port, "requests_total"), at_model);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM vectors WHERE job_id = '%s'", id), 0);
    free(id);
    items_free(&it);
    ite_finish(c);
}

static void test_embed_cancels_within_1s_when_deleted_during_slow_model_call(void **state)
{
    run_cancel_case(*state, "slow", 5, 1);
}

/* ---- 7. concurrency cap ----------------------------------------------------------------- */

static void test_embed_keeps_at_most_2_requests_in_flight_when_concurrency_is_2(void **state)
{
    struct ite_ctx *c = *state;
    char model[64];
    struct bd_buf y;
    struct ite_items a, b;

    int port = ite_fake(c, "--dim", "16", "--latency-ms", "50", NULL);
    model_name(model, sizeof(model), "capped");
    bd_buf_init(&y);
    yaml_jobs(&y, 3, "0.05");
    yaml_model(&y, model, "ollama", port, 16,
               "    concurrency: 2\n    max_inputs_per_request: 10\n");
    ite_batchd(c, y.data);
    bd_buf_free(&y);

    /* Two jobs at once (max_concurrent_jobs 2), 10 requests per batch each: far more work
     * than slots, so only the cap holds in-flight requests down. Separate collections:
     * two jobs creating one new collection at once is another case (see the race one). */
    items_make(&a, 400, "capped-a", false, false);
    items_make(&b, 400, "capped-b", false, false);
    char ca[96], cb[96];
    snprintf(ca, sizeof(ca), "%s_capped_a", ite_prefix);
    snprintf(cb, sizeof(cb), "%s_capped_b", ite_prefix);
    char *body = embed_body(model, ca, &a, 100);
    char *ida = submit(&c->p, body);
    free(body);
    body = embed_body(model, cb, &b, 100);
    char *idb = submit(&c->p, body);
    free(body);
    json_decref(wait_end(&c->p, ida, "completed", 30));
    json_decref(wait_end(&c->p, idb, "completed", 30));
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM vectors WHERE job_id = '%s'", ida), 400);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM vectors WHERE job_id = '%s'", idb), 400);

    long max_in_flight = fm_stat(port, "max_in_flight");
    fprintf(stderr, "  max_in_flight %ld\n", max_in_flight);
    assert_true(max_in_flight >= 1);
    assert_true(max_in_flight <= 2);
    assert_int_equal(fm_stat(port, "requests_total"), 80);
    assert_int_equal(fm_stat(port, "inputs_total"), 800);
    free(ida);
    free(idb);
    items_free(&a);
    items_free(&b);
    ite_finish(c);
}

/* ---- 8. pipelined batches and the model's dispatcher -------------------------------------- */

/* One big job alone keeps every one of the model's 4 slots busy: its window holds the
 * model's concurrency + 1 batches (max_concurrent_jobs does not cap it). */
static void test_embed_one_job_fills_all_4_model_slots_when_concurrency_is_4(void **state)
{
    struct ite_ctx *c = *state;
    char model[64];
    struct bd_buf y;
    struct ite_items it;

    int port = ite_fake(c, "--dim", "16", "--latency-ms", "150", NULL);
    model_name(model, sizeof(model), "wide");
    bd_buf_init(&y);
    yaml_one_model(&y, model, port, 16, 4, 1);
    ite_batchd(c, y.data);
    bd_buf_free(&y);

    items_make(&it, 240, "wide", false, true);
    char *body = embed_body(model, NULL, &it, 10);
    char *id = submit(&c->p, body);
    free(body);
    json_t *st = wait_end(&c->p, id, "completed", 60);
    assert_int_equal(jint(st, "progress", "processed_items"), 240);
    json_decref(st);
    expect_stored(id, &it, 16, 0, ITE_NO_SKIP, NULL);
    long max_in_flight = fm_stat(port, "max_in_flight");
    fprintf(stderr, "  max_in_flight %ld (model concurrency 4)\n", max_in_flight);
    assert_int_equal(max_in_flight, 4);
    assert_int_equal(fm_stat(port, "requests_total"), 24);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM job_batches WHERE job_id = '%s' "
                                     "AND status = 'done' AND processed = 10", id), 24);
    free(id);
    items_free(&it);
    ite_finish(c);
}

/* Cancel while 4 batches of one job are at the model: every request is aborted (the model
 * sees 4 disconnects) and the job is cancelled within 1 s, nothing stored. */
static void test_embed_cancels_within_1s_when_4_batches_are_at_the_model(void **state)
{
    run_cancel_case(*state, "slow4", 80, 4);
}

/* SIGTERM while clients hold streams that would never end by themselves: a results
 * stream (NDJSON) whose client stopped reading (batchd waits for the socket to drain) and
 * a job's event stream, with a batch at a model that takes a minute. batchd stops claiming,
 * cuts the streams after its shutdown deadline, hands the running job back and exits 0
 * within 10 s. (Before: it kept running as long as the reader stayed.) */
static void test_embed_exits_within_10s_when_sigterm_with_stalled_streams(void **state)
{
    struct ite_ctx *c = *state;
    char slow[64], fast[64], path[256];
    struct bd_buf y;
    struct ite_items big, small;
    struct bd_it_raw res, sse;

    int port = ite_fake(c, "--dim", "16", "--latency-ms", "60000", NULL);
    model_name(slow, sizeof(slow), "term");
    model_name(fast, sizeof(fast), "termh");
    bd_buf_init(&y);
    yaml_one_model(&y, slow, port, 16, 4, 2);
    yaml_model(&y, fast, "hashing", 0, 384, NULL);
    ite_batchd(c, y.data);
    bd_buf_free(&y);

    /* A finished job with ~20 MB of results (6,000 vectors of 384 numbers). */
    items_make(&big, 6000, "termh", false, false);
    char *body = embed_body(fast, NULL, &big, 500);
    char *done_id = submit(&c->p, body);
    free(body);
    json_decref(wait_end(&c->p, done_id, "completed", 60));
    items_make(&small, 20, "term", false, false);
    body = embed_body(slow, NULL, &small, 10);
    char *run_id = submit(&c->p, body);
    free(body);
    double deadline = bd_it_now() + 10;
    while (fm_stat(port, "in_flight") < 2 && bd_it_now() < deadline)
        bd_it_sleep_ms(10);
    assert_int_equal(fm_stat(port, "in_flight"), 2);

    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%s/results?format=ndjson", done_id);
    bd_it_raw_open(&res, c->p.port, "GET", path, NULL, 4096);   /* and never read on */
    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%s/events", run_id);
    bd_it_raw_open(&sse, c->p.port, "GET", path, NULL, 0);
    assert_true(bd_it_raw_wait(&sse, "event:", 0, 5.0) >= 0);  /* the stream is live */
    bd_it_sleep_ms(500);                        /* the results stream fills the socket */

    double t0 = bd_it_now();
    int rc = bd_it_stop(&c->p, SIGTERM, 15);
    double took = bd_it_now() - t0;
    fprintf(stderr, "  exit %d %.2f s after SIGTERM\n", rc, took);
    assert_int_equal(rc, 0);
    assert_true(took < 10.0);
    char st[32];
    bd_it_psql_str(st, sizeof(st), "SELECT status FROM jobs WHERE id = '%s'", run_id);
    assert_string_equal(st, "processing");      /* handed back: the next claim restarts it */
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM job_batches WHERE job_id = '%s' "
                                     "AND status = 'pending'", run_id), 2);
    bd_it_raw_close(&res);
    bd_it_raw_close(&sse);
    free(done_id);
    free(run_id);
    items_free(&big);
    items_free(&small);
    for (unsigned i = 0; i < c->fm_count; i++) {
        pid_t pid = c->fm_pid[i];
        c->fm_pid[i] = 0;
        fake_model_stop(pid);
    }
}

/* Slots scarce (concurrency 1), three jobs running at once, queued low first: the model's
 * dispatcher serves high before normal before low, whatever the order the requests came
 * in, so the jobs end in priority order. */
static void test_embed_serves_high_before_normal_before_low_when_model_slots_are_scarce(
    void **state)
{
    struct ite_ctx *c = *state;
    static const char *const prio[3] = { "low", "normal", "high" };
    char model[64], *ids[3];
    struct bd_buf y;
    struct ite_items it[3];

    int port = ite_fake(c, "--dim", "16", "--latency-ms", "100", NULL);
    model_name(model, sizeof(model), "prio");
    bd_buf_init(&y);
    yaml_one_model(&y, model, port, 16, 1, 3);
    ite_batchd(c, y.data);
    bd_buf_free(&y);

    for (int k = 0; k < 3; k++) {
        items_make(&it[k], 60, prio[k], false, false);
        char *body = embed_body(model, NULL, &it[k], 10);
        json_t *b = json_loads(body, 0, NULL);
        free(body);
        json_object_set_new(json_object_get(b, "options"), "priority", json_string(prio[k]));
        body = json_dumps(b, JSON_COMPACT);
        json_decref(b);
        ids[k] = submit(&c->p, body);
        free(body);
        /* The low job is at the model before the others arrive. */
        double deadline = bd_it_now() + 10;
        while (k == 0 && fm_stat(port, "requests_total") < 1 && bd_it_now() < deadline)
            bd_it_sleep_ms(5);
    }
    for (int k = 0; k < 3; k++)
        json_decref(wait_end(&c->p, ids[k], "completed", 60));
    assert_int_equal(fm_stat(port, "max_in_flight"), 1);
    long order = bd_it_psql_long(
        "SELECT ((SELECT completed_at FROM jobs WHERE id = '%s') < "
        "(SELECT completed_at FROM jobs WHERE id = '%s') AND "
        "(SELECT completed_at FROM jobs WHERE id = '%s') < "
        "(SELECT completed_at FROM jobs WHERE id = '%s'))::int", ids[2], ids[1], ids[1], ids[0]);
    if (order != 1) {
        char got[256];
        bd_it_psql_str(got, sizeof(got), "SELECT string_agg(priority || '@' || completed_at, ' ' "
                       "ORDER BY completed_at) FROM jobs WHERE id IN ('%s', '%s', '%s')",
                       ids[0], ids[1], ids[2]);
        fprintf(stderr, "  completion order: %s\n", got);
    }
    assert_int_equal(order, 1);
    for (int k = 0; k < 3; k++) {
        free(ids[k]);
        items_free(&it[k]);
    }
    ite_finish(c);
}

/* SIGKILL while several batches of a job are at the model and earlier ones are written:
 * the next run redoes exactly the batches not checkpointed. Every item stored once, every
 * batch done once, counters exact. */
static void test_embed_stores_each_item_once_when_killed_with_batches_in_flight(void **state)
{
    struct ite_ctx *c = *state;
    char model[64];
    struct bd_buf y;
    struct ite_items it;

    int port = ite_fake(c, "--dim", "16", "--latency-ms", "200", "--jitter-ms", "150", NULL);
    model_name(model, sizeof(model), "killed");
    bd_buf_init(&y);
    yaml_one_model(&y, model, port, 16, 4, 1);
    ite_batchd(c, y.data);

    items_make(&it, 300, "killed", false, true);
    char *body = embed_body(model, NULL, &it, 10);
    char *id = submit(&c->p, body);
    free(body);
    double deadline = bd_it_now() + 20;
    while ((bd_it_psql_long("SELECT processed_items FROM jobs WHERE id = '%s'", id) < 50 ||
            fm_stat(port, "in_flight") < 3) && bd_it_now() < deadline)
        bd_it_sleep_ms(5);
    long in_flight = fm_stat(port, "in_flight");
    assert_int_equal(bd_it_stop(&c->p, SIGKILL, 5), 128 + SIGKILL);
    long done_before = bd_it_psql_long("SELECT count(*) FROM job_batches WHERE job_id = '%s' "
                                       "AND status = 'done'", id);
    fprintf(stderr, "  killed with %ld requests in flight, %ld of 30 batches done\n",
            in_flight, done_before);
    assert_true(in_flight >= 3);
    assert_true(done_before >= 5 && done_before < 30);

    ite_batchd(c, y.data);                  /* the lease runs out, the job runs again */
    bd_buf_free(&y);
    json_t *st = wait_end(&c->p, id, "completed", 60);
    assert_int_equal(jint(st, "progress", "processed_items"), 300);
    assert_int_equal(jint(st, "progress", "failed_items"), 0);
    json_decref(st);
    expect_stored(id, &it, 16, 0, ITE_NO_SKIP, NULL);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM job_batches WHERE job_id = '%s' "
                                     "AND status = 'done' AND processed = 10", id), 30);
    assert_int_equal(bd_it_psql_long("SELECT count(DISTINCT item_index) FROM vectors "
                                     "WHERE job_id = '%s'", id), 300);
    free(id);
    items_free(&it);
    ite_finish(c);
}

/* A job whose new collection another process is creating at that very moment (another
 * batchd starting a job for it: several processes share one PostgreSQL) must find the
 * collection once that creation commits, not fail. The other process is played by psql:
 * it inserts the collection row and holds its transaction open for 1.5 s while batchd
 * starts the job. */
static void test_embed_completes_when_another_process_creates_the_collection(void **state)
{
    struct ite_ctx *c = *state;
    char model[64], coll[96];
    struct bd_buf y;
    struct ite_items it;

    model_name(model, sizeof(model), "race");
    snprintf(coll, sizeof(coll), "%s_race", ite_prefix);
    bd_buf_init(&y);
    yaml_jobs(&y, 3, "0.05");
    yaml_model(&y, model, "hashing", 0, 16, NULL);
    ite_batchd(c, y.data);
    bd_buf_free(&y);

    assert_int_equal(bd_it_sh("(psql '%s' -Atqc \"BEGIN; INSERT INTO collections (name, "
                              "dimension) VALUES ('%s', 16); SELECT pg_sleep(1.5); COMMIT;\" "
                              ">/dev/null 2>&1 &)", bd_it_pg_url(), coll), 0);
    double deadline = bd_it_now() + 5;
    while (bd_it_psql_long("SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = "
                     "l.pid WHERE a.query LIKE '%%pg_sleep(1.5)%%' AND l.locktype = "
                     "'transactionid'") < 1 && bd_it_now() < deadline)
        bd_it_sleep_ms(20);

    items_make(&it, 3, "race", false, false);
    char *body = embed_body(model, coll, &it, 10);
    char *id = submit(&c->p, body);
    free(body);
    json_decref(wait_end(&c->p, id, "completed", 20));
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM vectors WHERE job_id = '%s' AND "
                               "collection = '%s'", id, coll), 3);
    free(id);
    items_free(&it);
    ite_finish(c);
}

/* The job's collection row vanishes under a running job, as when PostgreSQL crashes and
 * loses the job's start (the engine commits asynchronously; the start is what creates the
 * row): the batch write is refused with a foreign-key error (23503). That is not the
 * items' fault: the job is handed back, started again (the row is created again) and
 * every item is stored, none failed. (Before: the batch was tried 3 times, then its items
 * failed with store_error; found by it_chaos.) */
static void test_embed_reruns_start_when_collection_row_is_lost(void **state)
{
    struct ite_ctx *c = *state;
    char model[64], coll[96];
    struct bd_buf y;
    struct ite_items it;

    int port = ite_fake(c, "--dim", "16", "--latency-ms", "800", NULL);
    model_name(model, sizeof(model), "lostc");
    snprintf(coll, sizeof(coll), "%s_lostc", ite_prefix);
    bd_buf_init(&y);
    yaml_one_model(&y, model, port, 16, 1, 1);
    ite_batchd(c, y.data);
    bd_buf_free(&y);

    items_make(&it, 20, "lostc", false, false);
    char *body = embed_body(model, coll, &it, 10);
    char *id = submit(&c->p, body);
    free(body);
    double deadline = bd_it_now() + 10;
    while (fm_stat(port, "in_flight") < 1 && bd_it_now() < deadline)
        bd_it_sleep_ms(10);
    assert_int_equal(fm_stat(port, "in_flight"), 1);          /* batch 0 at the model */
    assert_int_equal(bd_it_psql_long("WITH d AS (DELETE FROM collections WHERE name = '%s' "
                                     "RETURNING 1) SELECT count(*) FROM d", coll), 1);
    json_t *st = wait_end(&c->p, id, "completed", 30);
    assert_int_equal(jint(st, "progress", "processed_items"), 20);
    assert_int_equal(jint(st, "progress", "failed_items"), 0);
    json_decref(st);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM vectors WHERE job_id = '%s' AND "
                                     "collection = '%s'", id, coll), 20);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM collections WHERE name = '%s'",
                                     coll), 1);
    free(id);
    items_free(&it);
    ite_finish(c);
}

/* A model down for a few seconds opens its circuit (5 failures in a row), which refuses
 * calls without a request until its cooldown (5 s) ends. A batch's retry waits for the
 * circuit rather than spend its attempts on refusals: once the model is back, every item
 * is stored and none failed. (Before: the retries, 50 ms apart, were all refused while the
 * circuit was open and the items failed after a 1 s outage; seen in it_chaos.) */
static void test_embed_survives_short_outage_when_circuit_opens(void **state)
{
    struct ite_ctx *c = *state;
    char model[64];
    struct bd_buf y;
    struct ite_items it;

    int port = ite_fake(c, "--dim", "16", "--fail-rate", "1", NULL);
    model_name(model, sizeof(model), "outage");
    bd_buf_init(&y);
    yaml_one_model(&y, model, port, 16, 1, 1);
    ite_batchd(c, y.data);
    bd_buf_free(&y);

    items_make(&it, 60, "outage", false, false);
    char *body = embed_body(model, NULL, &it, 10);
    char *id = submit(&c->p, body);
    free(body);
    double deadline = bd_it_now() + 10;
    while (fm_stat(port, "requests_total") < 5 && bd_it_now() < deadline)
        bd_it_sleep_ms(10);
    assert_true(fm_stat(port, "requests_total") >= 5);          /* the circuit opens */
    bd_it_sleep_ms(1000);
    bd_it_fake_config(port, "{\"fail_rate\":0}");              /* the model is back */
    json_t *st = wait_end(&c->p, id, "completed", 40);
    fprintf(stderr, "  requests %ld; processed %ld, failed %ld\n",
            fm_stat(port, "requests_total"), jint(st, "progress", "processed_items"),
            jint(st, "progress", "failed_items"));
    assert_int_equal(jint(st, "progress", "failed_items"), 0);
    assert_int_equal(jint(st, "progress", "processed_items"), 60);
    json_decref(st);
    free(id);
    items_free(&it);
    ite_finish(c);
}

/* ---- 8. splitting, overlong texts ------------------------------------------------------- */

static void test_embed_sends_8_requests_when_250_texts_split_by_32(void **state)
{
    struct ite_ctx *c = *state;
    char model[64];
    struct bd_buf y;
    struct ite_items it;

    int port = ite_fake(c, "--dim", "16", NULL);
    model_name(model, sizeof(model), "split");
    bd_buf_init(&y);
    yaml_jobs(&y, 3, "0.05");
    yaml_model(&y, model, "ollama", port, 16, "    max_inputs_per_request: 32\n");
    ite_batchd(c, y.data);
    bd_buf_free(&y);

    items_make(&it, 250, "split", false, false);
    char *body = embed_body(model, NULL, &it, 250);
    fm_stats_reset(port);
    char *id = submit(&c->p, body);
    free(body);
    json_t *st = wait_end(&c->p, id, "completed", 30);
    assert_int_equal(jint(st, "progress", "total_batches"), 1);
    json_decref(st);
    expect_stored(id, &it, 16, 0, ITE_NO_SKIP, NULL);
    assert_int_equal(fm_stat(port, "requests_total"), 8);     /* ceil(250 / 32) */
    assert_int_equal(fm_stat(port, "inputs_total"), 250);
    free(id);
    items_free(&it);
    ite_finish(c);
}

/* Items of short texts (at most 20 bytes) with item long_at 70 bytes long. */
static void items_with_long_one(struct ite_items *it, unsigned n, unsigned long_at)
{
    items_make(it, n, "s", false, false);
    for (unsigned i = 0; i < n; i++) {
        char t[128];
        if (i == long_at)
            snprintf(t, sizeof(t), "LONG %u: this text runs well past the twenty byte cap", i);
        else
            snprintf(t, sizeof(t), "short %u", i);
        free(it->texts[i]);
        it->texts[i] = strdup(t);
        assert_true(i == long_at ? strlen(t) > 20 : strlen(t) <= 20);
    }
}

static void test_embed_truncates_overlong_text_when_overlong_is_truncate(void **state)
{
    struct ite_ctx *c = *state;
    char model[64];
    struct bd_buf y;
    struct ite_items it;

    int port = ite_fake(c, "--dim", "16", NULL);
    model_name(model, sizeof(model), "trunc");
    bd_buf_init(&y);
    yaml_jobs(&y, 3, "0.05");
    yaml_model(&y, model, "ollama", port, 16,
               "    max_input_chars: 20\n    overlong: truncate\n");
    ite_batchd(c, y.data);
    bd_buf_free(&y);

    items_with_long_one(&it, 6, 3);
    char *body = embed_body(model, NULL, &it, 10);
    char *id = submit(&c->p, body);
    free(body);
    json_t *st = wait_end(&c->p, id, "completed", 20);
    assert_int_equal(jint(st, "progress", "processed_items"), 6);
    assert_int_equal(jint(st, "progress", "failed_items"), 0);
    json_decref(st);
    /* The long item's vector is the fake's of its first 20 bytes; the others are whole. */
    expect_stored(id, &it, 16, 20, ITE_NO_SKIP, NULL);
    assert_int_equal(fm_stat(port, "inputs_total"), 6);
    free(id);
    items_free(&it);
    ite_finish(c);
}

static void test_embed_fails_only_overlong_item_when_overlong_is_fail(void **state)
{
    struct ite_ctx *c = *state;
    char model[64];
    struct bd_buf y;
    struct ite_items it;

    int port = ite_fake(c, "--dim", "16", NULL);
    model_name(model, sizeof(model), "strict");
    bd_buf_init(&y);
    yaml_jobs(&y, 3, "0.05");
    yaml_model(&y, model, "ollama", port, 16, "    max_input_chars: 20\n    overlong: fail\n");
    ite_batchd(c, y.data);
    bd_buf_free(&y);

    items_with_long_one(&it, 6, 2);
    char *body = embed_body(model, NULL, &it, 10);
    char *id = submit(&c->p, body);
    free(body);
    json_t *st = wait_end(&c->p, id, "completed", 20);
    assert_int_equal(jint(st, "progress", "processed_items"), 5);
    assert_int_equal(jint(st, "progress", "failed_items"), 1);
    json_decref(st);

    json_t *doc = failed_items(&c->p, id);
    json_t *items = json_object_get(doc, "items");
    assert_int_equal(json_array_size(items), 1);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(items, 0), "index")), 2);
    const char *msg = json_string_value(json_object_get(json_object_get(json_array_get(items, 0),
                                                                        "error"), "message"));
    assert_non_null(msg);
    fprintf(stderr, "  overlong item: \"%s\"\n", msg);
    assert_true(strcasestr(msg, "long") || strcasestr(msg, "length") ||
                strcasestr(msg, "max_input_chars"));
    json_decref(doc);
    expect_stored(id, &it, 16, 0, 2, NULL);
    assert_int_equal(fm_stat(port, "inputs_total"), 5);       /* never sent to the model */
    free(id);
    items_free(&it);
    ite_finish(c);
}

/* ---- 9. embedding cache ----------------------------------------------------------------- */

static void test_embed_sends_no_request_when_same_texts_are_embedded_again(void **state)
{
    struct ite_ctx *c = *state;
    char model[64];
    struct bd_buf y;
    struct ite_items it;

    int port = ite_fake(c, "--dim", "16", NULL);
    model_name(model, sizeof(model), "cached");
    bd_buf_init(&y);
    yaml_jobs(&y, 3, "0.05");
    yaml_model(&y, model, "ollama", port, 16, "    max_inputs_per_request: 32\n");
    ite_batchd(c, y.data);
    bd_buf_free(&y);

    items_make(&it, 1000, "cached", true, false);
    char *body = embed_body(model, NULL, &it, 100);
    char *id1 = submit(&c->p, body);
    json_t *st = wait_end(&c->p, id1, "completed", 30);
    assert_int_equal(jint(st, "results", "cache_hits"), 0);
    json_decref(st);
    long after_first = fm_stat(port, "requests_total");
    assert_int_equal(after_first, 40);                        /* 10 batches x 4 requests */

    char *id2 = submit(&c->p, body);
    free(body);
    st = wait_end(&c->p, id2, "completed", 30);
    long hits = jint(st, "results", "cache_hits");
    long after_second = fm_stat(port, "requests_total");
    fprintf(stderr, "  requests: %ld after job 1, %ld after job 2; cache_hits %ld\n",
            after_first, after_second, hits);
    assert_int_equal(jint(st, "progress", "processed_items"), 1000);
    json_decref(st);
    assert_int_equal(after_second, after_first);
    assert_int_equal(hits, 1000);

    expect_stored(id2, &it, 16, 0, ITE_NO_SKIP, NULL);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM vectors a JOIN vectors b "
                               "ON a.item_index = b.item_index WHERE a.job_id = '%s' AND "
                               "b.job_id = '%s' AND a.embedding = b.embedding", id1, id2),
                     1000);
    free(id1);
    free(id2);
    items_free(&it);
    ite_finish(c);
}

/* ---- 10. unknown model ------------------------------------------------------------------ */

static void test_embed_rejects_submit_when_model_is_unknown(void **state)
{
    struct ite_ctx *c = *state;
    char known[64], unknown[64], body[512];
    struct bd_buf y;
    long st;

    model_name(known, sizeof(known), "known");
    model_name(unknown, sizeof(unknown), "nosuchmodel");
    bd_buf_init(&y);
    yaml_jobs(&y, 3, "0.05");
    yaml_model(&y, known, "hashing", 0, 16, NULL);
    ite_batchd(c, y.data);
    bd_buf_free(&y);

    snprintf(body, sizeof(body), "{\"operation\":\"bulk_embed\",\"model\":\"%s\","
             "\"data\":[{\"text\":\"a\"},{\"text\":\"b\"}]}", unknown);
    json_t *j = bd_it_json(&c->p, "POST", "/api/v1/batch/jobs", body, &st);
    assert_int_equal(st, 400);
    json_t *err = json_object_get(j, "error");
    assert_non_null(err);
    assert_string_equal(json_string_value(json_object_get(err, "field")), "model");
    assert_non_null(json_string_value(json_object_get(err, "code")));
    assert_non_null(json_string_value(json_object_get(err, "message")));
    json_decref(j);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM jobs WHERE model = '%s'", unknown), 0);

    /* The same body with the configured model is accepted. */
    snprintf(body, sizeof(body), "{\"operation\":\"bulk_embed\",\"model\":\"%s\","
             "\"data\":[{\"text\":\"a\"},{\"text\":\"b\"}]}", known);
    char *id = submit(&c->p, body);
    json_decref(wait_end(&c->p, id, "completed", 20));
    free(id);
    ite_finish(c);
}

/* ---- 11. the seed's example on conf/dev.yaml's models ----------------------------------- */

/* conf/dev.yaml's "models:" section, verbatim (caller frees). */
static char *dev_yaml_models(void)
{
    char path[1024], line[1024];
    struct bd_buf b;
    bool in_models = false;

    snprintf(path, sizeof(path), "%s/conf/dev.yaml", bd_it_env("BD_SOURCE_DIR", "."));
    FILE *f = fopen(path, "r");
    if (f == NULL)
        fprintf(stderr, "cannot open %s (set BD_SOURCE_DIR)\n", path);
    assert_non_null(f);
    bd_buf_init(&b);
    while (fgets(line, sizeof(line), f)) {
        bool is_top = line[0] != ' ' && line[0] != '\t' && line[0] != '#' && line[0] != '\n' &&
                      line[0] != '-';
        if (is_top)
            in_models = strncmp(line, "models:", 7) == 0;
        if (in_models)
            bd_buf_puts(&b, line);
    }
    fclose(f);
    assert_true(b.len > 8);
    return bd_buf_steal(&b, NULL);
}

static void test_embed_completes_seed_example_when_models_come_from_dev_yaml(void **state)
{
    struct ite_ctx *c = *state;
    static const char *const texts[] = { "First text to embed", "Second text to embed",
                                         "Third text to embed" };
    static const char seed_body[] =
        "{\"operation\": \"bulk_embed\", \"model\": \"mixtral\", \"data\": ["
        "{\"text\": \"First text to embed\"}, {\"text\": \"Second text to embed\"}, "
        "{\"text\": \"Third text to embed\"}], "
        "\"options\": {\"batch_size\": 10, \"priority\": \"normal\"}}";
    struct bd_buf y;
    long st;

    char *models = dev_yaml_models();
    bd_buf_init(&y);
    bd_buf_puts(&y, "jobs:\n  max_concurrent_jobs: 2\n  processing_interval: 0.05\n"
                    "  lease: 5\n  reaper_interval: 1\n");
    bd_buf_puts(&y, models);
    free(models);
    ite_batchd(c, y.data);
    bd_buf_free(&y);

    json_t *j = bd_it_json(&c->p, "POST", "/api/v1/batch/jobs", seed_body, &st);
    assert_int_equal(st, 202);
    const char *jid = json_string_value(json_object_get(j, "job_id"));
    assert_non_null(jid);
    assert_true(strncmp(jid, "batch_mixtral_", 14) == 0);
    assert_string_equal(json_string_value(json_object_get(j, "status")), "queued");
    assert_string_equal(json_string_value(json_object_get(j, "operation")), "bulk_embed");
    assert_string_equal(json_string_value(json_object_get(j, "model")), "mixtral");
    assert_int_equal(json_integer_value(json_object_get(j, "items_count")), 3);
    assert_int_equal(json_integer_value(json_object_get(j, "batch_size")), 10);
    assert_string_equal(json_string_value(json_object_get(j, "priority")), "normal");
    char *id = strdup(jid);
    json_decref(j);

    j = wait_end(&c->p, id, "completed", 20);
    json_t *res = json_object_get(j, "results");
    assert_int_equal(jint(res, NULL, "stored_vectors"), 3);
    assert_int_equal(jint(res, NULL, "completed_embeddings"), 3);
    assert_string_equal(json_string_value(json_object_get(res, "output_collection")),
                        "mixtral_embeddings");
    json_decref(j);

    json_t *rows = job_rows(id);
    json_t *row;
    size_t k;
    assert_int_equal(json_array_size(rows), 3);
    json_array_foreach(rows, k, row) {
        json_t *e = json_object_get(row, "e"), *x;
        size_t d;
        double norm = 0;
        assert_string_equal(json_string_value(json_object_get(row, "c")), "mixtral_embeddings");
        assert_int_equal(json_array_size(e), 384);
        json_array_foreach(e, d, x)
            norm += json_number_value(x) * json_number_value(x);
        assert_true(fabs(sqrt(norm) - 1.0) < 1e-4);     /* hashing vectors are L2-normalised */
        assert_string_equal(json_string_value(json_object_get(json_object_get(row, "m"),
                                                              "text")), texts[k]);
    }
    json_decref(rows);
    free(id);
    ite_finish(c);
}

/* ---- suite: private database ------------------------------------------------------------ */

/* url with its last path segment (the database or db number) replaced by what. */
static void url_with_db(char *out, size_t len, const char *url, const char *what)
{
    const char *slash = strrchr(url, '/');
    const char *query = strchr(url, '?');
    int head = slash && slash > strstr(url, "//") + 1 ? (int)(slash - url) : (int)strlen(url);
    snprintf(out, len, "%.*s/%s%s", head, url, what, query ? query : "");
}

static void ite_isolate(void)
{
    char db[64], url[600], rdb[16];

    snprintf(ite_orig_pg, sizeof(ite_orig_pg), "%s", bd_it_pg_url());
    snprintf(ite_orig_redis, sizeof(ite_orig_redis), "%s",
             bd_it_env("BATCH_REDIS_URL", "redis://127.0.0.1:16380/0"));
    if (strcmp(bd_it_env("BD_IT_EMBED_SHARED_DB", "0"), "1") == 0)
        return;
    snprintf(db, sizeof(db), "%s_%ld", ite_prefix, (long)time(NULL) % 1000000);
    char *out = bd_it_psql_url(ite_orig_pg, NULL, "CREATE DATABASE %s;", db);
    if (out == NULL) {
        fprintf(stderr, "it_embed: cannot create a private database; using the shared one\n");
        return;
    }
    free(out);
    snprintf(ite_private_db, sizeof(ite_private_db), "%s", db);
    url_with_db(url, sizeof(url), ite_orig_pg, db);
    setenv("BATCH_POSTGRES_URL", url, 1);
    snprintf(rdb, sizeof(rdb), "%s", bd_it_env("BD_IT_EMBED_REDIS_DB", "20"));
    url_with_db(url, sizeof(url), ite_orig_redis, rdb);
    setenv("BATCH_REDIS_URL", url, 1);
    bd_it_sh("redis-cli -u '%s' FLUSHDB >/dev/null 2>&1", url);
    fprintf(stderr, "it_embed: private database %s, redis %s\n", db, url);
}

static void ite_unisolate(void)
{
    if (ite_private_db[0] == '\0')
        return;
    bd_it_sh("redis-cli -u '%s' FLUSHDB >/dev/null 2>&1", bd_it_env("BATCH_REDIS_URL", ""));
    setenv("BATCH_POSTGRES_URL", ite_orig_pg, 1);
    setenv("BATCH_REDIS_URL", ite_orig_redis, 1);
    char *out = bd_it_psql_url(ite_orig_pg, NULL, "DROP DATABASE IF EXISTS %s WITH (FORCE);",
                               ite_private_db);
    if (out == NULL)
        fprintf(stderr, "it_embed: could not drop database %s\n", ite_private_db);
    free(out);
}

#define ITE_TEST(fn) cmocka_unit_test_setup_teardown(fn, ite_setup, ite_teardown)

int main(void)
{
    bd_it_apply_filter();
    snprintf(ite_prefix, sizeof(ite_prefix), "ite%d", (int)getpid());
    snprintf(ite_version, sizeof(ite_version), "v%d_%ld", (int)getpid(), (long)time(NULL));
    const struct CMUnitTest tests[] = {
        ITE_TEST(test_embed_stores_fake_vectors_when_provider_is_ollama),
        ITE_TEST(test_embed_stores_fake_vectors_when_openai_answers_shuffled_with_key),
        ITE_TEST(test_embed_stores_fake_vectors_when_provider_is_tei),
        ITE_TEST(test_embed_embeds_every_item_when_30pct_of_requests_fail),
        ITE_TEST(test_embed_retries_timed_out_requests_when_model_hangs_sometimes),
        ITE_TEST(test_embed_fails_items_with_timeout_error_when_model_always_hangs),
        ITE_TEST(test_embed_debug_counts_each_try_when_batch_runs_out_of_retries),
        ITE_TEST(test_embed_completes_without_failures_when_model_answers_429),
        ITE_TEST(test_embed_fails_batches_naming_json_when_bodies_are_malformed),
        ITE_TEST(test_embed_fails_batches_naming_dimension_when_dimension_is_wrong),
        ITE_TEST(test_embed_cancels_within_1s_when_deleted_during_slow_model_call),
        ITE_TEST(test_embed_keeps_at_most_2_requests_in_flight_when_concurrency_is_2),
        ITE_TEST(test_embed_one_job_fills_all_4_model_slots_when_concurrency_is_4),
        ITE_TEST(test_embed_cancels_within_1s_when_4_batches_are_at_the_model),
        ITE_TEST(test_embed_exits_within_10s_when_sigterm_with_stalled_streams),
        ITE_TEST(test_embed_serves_high_before_normal_before_low_when_model_slots_are_scarce),
        ITE_TEST(test_embed_stores_each_item_once_when_killed_with_batches_in_flight),
        ITE_TEST(test_embed_completes_when_another_process_creates_the_collection),
        ITE_TEST(test_embed_reruns_start_when_collection_row_is_lost),
        ITE_TEST(test_embed_survives_short_outage_when_circuit_opens),
        ITE_TEST(test_embed_sends_8_requests_when_250_texts_split_by_32),
        ITE_TEST(test_embed_truncates_overlong_text_when_overlong_is_truncate),
        ITE_TEST(test_embed_fails_only_overlong_item_when_overlong_is_fail),
        ITE_TEST(test_embed_sends_no_request_when_same_texts_are_embedded_again),
        ITE_TEST(test_embed_rejects_submit_when_model_is_unknown),
        ITE_TEST(test_embed_completes_seed_example_when_models_come_from_dev_yaml),
    };
    ite_isolate();
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    ite_unisolate();
    return failed;
}
