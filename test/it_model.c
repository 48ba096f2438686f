/* it_model.c -- integration suite for the model client (model_client.h) against the fake
 * model server: wire formats, splitting, concurrency, faults (5xx, 429, hang, malformed,
 * wrong dimension, 4xx), abort, circuit breaker, overlong texts, the hashing model and its
 * loop friendliness, keep-alive reuse, close with calls in flight.
 *
 * One fake server ($BD_FAKE_MODEL_BIN, fake_model_client.h) is shared by every case; each
 * case resets its settings and stats with POST /config {"reset":true,...} and POST
 * /stats/reset. Each case runs its own uv loop, counts its callbacks, and ends with the
 * client closed and uv_loop_close() == 0. The fake's admin routes are reached through
 * test/support (bd_it_fake_*, blocking libcurl: test code only).  SPDX-License-Identifier: MIT
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
#include <uv.h>

#include "batchd/config.h"
#include "batchd/error.h"
#include "batchd/model_client.h"
#include "fake_model/fake_model_client.h"
#include "fake_model/fake_vectors.h"
#include "bd_it.h"

#define IT_DIM 16

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_UNDEFINED__)
#define IT_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define IT_SANITIZED 1
#endif
#endif
#ifndef IT_SANITIZED
#define IT_SANITIZED 0
#endif

/* The shared fake server. */
static pid_t it_fake_pid;
static int it_fake_port;
static char it_base[64];

/* ---------------------------------------------------------------------------------------
 * A test environment: loop, config, client
 */

struct it_env {
    uv_loop_t loop;
    struct bd_config cfg;
    struct bd_model_config models[4];
    struct bd_model_client *mc;
    struct bd_model_tuning tuning;
    int closed;
};

static struct bd_model_config *env_model(struct it_env *e, const char *name,
                                         enum bd_model_provider p)
{
    struct bd_model_config *m = &e->models[e->cfg.models_count++];

    *m = (struct bd_model_config){
        .name = (char *)name,
        .provider = p,
        .base_url = p == BD_PROVIDER_HASHING ? NULL : it_base,
        .remote_model = (char *)"fake-embed",
        .dimensions = IT_DIM,
        .max_inputs_per_request = 32,
        .max_chars_per_request = 200000,
        .max_input_chars = 8192,
        .overlong = BD_OVERLONG_TRUNCATE,
        .concurrency = 4,
        .timeout_s = 10,
        .rate_limit_rps = 0,
    };
    return m;
}

static void env_init(struct it_env *e)
{
    memset(e, 0, sizeof *e);
    assert_int_equal(uv_loop_init(&e->loop), 0);
    e->cfg.models = e->models;
    bd_model_tuning_init(&e->tuning);
}

static void env_start(struct it_env *e)
{
    int err = 0;

    e->mc = bd_model_client_new(&e->loop, &e->cfg, &err);
    assert_non_null(e->mc);
    bd_model_client_set_tuning(e->mc, &e->tuning);
}

static void on_closed(void *arg)
{
    (*(int *)arg)++;
}

/* Close the client, run the loop dry, check that everything closed. */
static void env_finish(struct it_env *e)
{
    bd_model_client_close(e->mc, on_closed, &e->closed);
    assert_int_equal(e->closed, 0);                 /* never synchronous */
    uv_run(&e->loop, UV_RUN_DEFAULT);
    assert_int_equal(e->closed, 1);
    assert_int_equal(uv_loop_close(&e->loop), 0);
}

/* What one embed callback saw (copied: res is borrowed). */
struct it_call {
    int calls;
    bool is_returned;               /* bd_model_embed has returned */
    bool was_sync;                  /* the callback ran before it returned */
    int status;
    bool is_retryable;
    char message[512];
    unsigned count;
    unsigned dim;
    unsigned truncated;
    unsigned requests;
    unsigned rate_limited;
    double model_seconds;
    float *vectors;
    int *item_status;
    double t_start;
    double t_done;
};

static void it_on_embed(int status, const struct bd_embed_result *res, const char *message,
                        bool is_retryable, void *arg)
{
    struct it_call *c = arg;

    c->calls++;
    c->was_sync |= !c->is_returned;
    c->status = status;
    c->is_retryable = is_retryable;
    c->t_done = bd_it_now();
    assert_non_null(message);
    snprintf(c->message, sizeof c->message, "%s", message);
    if (status == BD_OK) {
        assert_non_null(res);
        c->count = res->count;
        c->dim = res->dim;
        c->truncated = res->truncated;
        c->requests = res->requests;
        c->rate_limited = res->rate_limited;
        c->model_seconds = res->model_seconds;
        size_t n = (size_t)res->count * res->dim;
        c->vectors = malloc(n ? n * sizeof(float) : 1);
        c->item_status = malloc(res->count ? res->count * sizeof(int) : 1);
        if (n > 0)
            memcpy(c->vectors, res->vectors, n * sizeof(float));
        if (res->count > 0)
            memcpy(c->item_status, res->item_status, res->count * sizeof(int));
    } else {
        assert_null(res);
    }
}

static void it_call_free(struct it_call *c)
{
    free(c->vectors);
    free(c->item_status);
    c->vectors = NULL;
    c->item_status = NULL;
}

/* Start an embed call and check the contract's first half. */
static void it_embed(struct it_env *e, const char *model, const struct bd_embed_input *in,
                     unsigned n, struct it_call *c, struct bd_model_call **h)
{
    memset(c, 0, sizeof *c);
    c->t_start = bd_it_now();
    assert_int_equal(bd_model_embed(e->mc, model, in, n, NULL, it_on_embed, c, h), BD_OK);
    c->is_returned = true;
    assert_int_equal(c->calls, 0);
}

/* Run the loop until c's callback ran. */
static void it_wait(struct it_env *e, struct it_call *c)
{
    while (c->calls == 0)
        assert_true(uv_run(&e->loop, UV_RUN_ONCE) != 0 || c->calls > 0);
    assert_int_equal(c->calls, 1);
    assert_false(c->was_sync);
}

/* Texts "text number <i> ..." of various lengths, kept in one arena. */
struct it_texts {
    char *arena;
    struct bd_embed_input *in;
    unsigned n;
};

static void it_texts_make(struct it_texts *t, unsigned n, unsigned extra_words)
{
    static const char *const words[] = {"alpha", "beta", "gamma", "delta", "epsilon",
                                        "zeta", "eta", "theta", "iota", "kappa"};
    size_t cap = (size_t)n * (32 + extra_words * 9);
    size_t off = 0;

    t->arena = malloc(cap);
    t->in = calloc(n, sizeof *t->in);
    t->n = n;
    for (unsigned i = 0; i < n; i++) {
        char *s = t->arena + off;
        int k = snprintf(s, cap - off, "text number %u", i);
        for (unsigned w = 0; w < extra_words; w++)
            k += snprintf(s + k, cap - off - (size_t)k, " %s", words[(i * 7 + w * 3) % 10]);
        t->in[i] = (struct bd_embed_input){s, (size_t)k};
        off += (size_t)k + 1;
    }
}

static void it_texts_free(struct it_texts *t)
{
    free(t->arena);
    free(t->in);
}

/* Row i of c equals the fake's vector of text[0..len). */
static void assert_fake_row(const struct it_call *c, unsigned i, const char *text, size_t len)
{
    float want[IT_DIM];

    fake_vector(text, len, IT_DIM, want);
    for (unsigned j = 0; j < IT_DIM; j++) {
        if (c->vectors[(size_t)i * IT_DIM + j] != want[j])
            fail_msg("row %u component %u: got %.9g want %.9g", i, j,
                     (double)c->vectors[(size_t)i * IT_DIM + j], (double)want[j]);
    }
}

static const struct bd_model_stats *it_stats(struct it_env *e, unsigned i)
{
    const struct bd_model_stats *s = bd_model_client_get_stats(e->mc, i);

    assert_non_null(s);
    return s;
}

/* ---------------------------------------------------------------------------------------
 * Wire formats
 */

#define IT_IN(s) {s, sizeof(s) - 1}
static const struct bd_embed_input wire_inputs[] = {
    IT_IN("hello world"),
    IT_IN("quotes \" and \\ backslash"),
    IT_IN("line\nbreak\ttab"),
    IT_IN("unicode: caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"),
    IT_IN(""),
    IT_IN("a"),
};
#define WIRE_N (sizeof wire_inputs / sizeof wire_inputs[0])

static void run_wire(enum bd_model_provider p, const char *extra)
{
    struct it_env e;
    struct it_call c;

    bd_it_fake_reset(it_fake_port, extra);
    env_init(&e);
    env_model(&e, "m", p);
    env_start(&e);
    it_embed(&e, "m", wire_inputs, WIRE_N, &c, NULL);
    it_wait(&e, &c);
    assert_int_equal(c.status, BD_OK);
    assert_string_equal(c.message, "");
    assert_int_equal(c.count, WIRE_N);
    assert_int_equal(c.dim, IT_DIM);
    assert_int_equal(c.requests, 1);
    for (unsigned i = 0; i < WIRE_N; i++) {
        assert_int_equal(c.item_status[i], BD_OK);
        assert_fake_row(&c, i, wire_inputs[i].text, wire_inputs[i].len);
    }
    assert_int_equal(bd_it_fake_stat(it_fake_port, "requests_total"), 1);
    assert_int_equal(bd_it_fake_stat(it_fake_port, "inputs_total"), WIRE_N);
    const struct bd_model_stats *s = it_stats(&e, 0);
    assert_int_equal(s->requests, 1);
    assert_int_equal(s->inputs, WIRE_N);
    assert_int_equal(s->in_flight, 0);
    assert_int_equal(s->request_seconds.count, 1);
    it_call_free(&c);
    env_finish(&e);
}

static void test_wire_ollama(void **state)
{
    (void)state;
    run_wire(BD_PROVIDER_OLLAMA, "");
}

static void test_wire_openai_sorted_by_index(void **state)
{
    (void)state;
    run_wire(BD_PROVIDER_OPENAI, ",\"shuffle_openai\":true");
}

static void test_wire_tei(void **state)
{
    (void)state;
    run_wire(BD_PROVIDER_TEI, "");
}

static void test_openai_api_key(void **state)
{
    struct it_env e;
    struct it_call ok, bad;

    (void)state;
    bd_it_fake_reset(it_fake_port, ",\"api_key\":\"sekrit\"");
    env_init(&e);
    env_model(&e, "good", BD_PROVIDER_OPENAI)->api_key = (char *)"sekrit";
    env_model(&e, "bad", BD_PROVIDER_OPENAI)->api_key = (char *)"wrong";
    env_start(&e);
    it_embed(&e, "good", wire_inputs, 2, &ok, NULL);
    it_embed(&e, "bad", wire_inputs, 2, &bad, NULL);
    it_wait(&e, &ok);
    it_wait(&e, &bad);
    assert_int_equal(ok.status, BD_OK);
    assert_fake_row(&ok, 1, wire_inputs[1].text, wire_inputs[1].len);
    assert_int_equal(bad.status, BD_EFATAL);
    assert_false(bad.is_retryable);
    assert_non_null(strstr(bad.message, "401"));
    it_call_free(&ok);
    env_finish(&e);
}

/* ---------------------------------------------------------------------------------------
 * Splitting, concurrency, reuse
 */

static void test_split_250_into_8_requests(void **state)
{
    struct it_env e;
    struct it_call c;
    struct it_texts t;

    (void)state;
    bd_it_fake_reset(it_fake_port, "");
    it_texts_make(&t, 250, 3);
    env_init(&e);
    env_model(&e, "m", BD_PROVIDER_OLLAMA)->max_inputs_per_request = 32;
    env_start(&e);
    it_embed(&e, "m", t.in, t.n, &c, NULL);
    it_wait(&e, &c);
    assert_int_equal(c.status, BD_OK);
    assert_int_equal(c.requests, 8);
    assert_int_equal(bd_it_fake_stat(it_fake_port, "requests_total"), 8);
    assert_int_equal(bd_it_fake_stat(it_fake_port, "inputs_total"), 250);
    for (unsigned i = 0; i < t.n; i++)
        assert_fake_row(&c, i, t.in[i].text, t.in[i].len);
    it_call_free(&c);
    env_finish(&e);
    it_texts_free(&t);
}

static void test_split_by_chars(void **state)
{
    struct it_env e;
    struct it_call c;
    char texts[10][101];
    struct bd_embed_input in[10];

    (void)state;
    bd_it_fake_reset(it_fake_port, "");
    for (unsigned i = 0; i < 10; i++) {
        memset(texts[i], 'a' + (int)i, 100);
        texts[i][100] = '\0';
        in[i] = (struct bd_embed_input){texts[i], 100};
    }
    env_init(&e);
    env_model(&e, "m", BD_PROVIDER_TEI)->max_chars_per_request = 250;  /* 2 texts each */
    env_start(&e);
    it_embed(&e, "m", in, 10, &c, NULL);
    it_wait(&e, &c);
    assert_int_equal(c.status, BD_OK);
    assert_int_equal(c.requests, 5);
    assert_int_equal(bd_it_fake_stat(it_fake_port, "requests_total"), 5);
    for (unsigned i = 0; i < 10; i++)
        assert_fake_row(&c, i, in[i].text, in[i].len);
    it_call_free(&c);
    env_finish(&e);
}

static void test_concurrency_cap_respected(void **state)
{
    struct it_env e;
    struct it_call c1, c2;
    struct it_texts t;

    (void)state;
    bd_it_fake_reset(it_fake_port, ",\"latency_ms\":50");
    it_texts_make(&t, 40, 1);
    env_init(&e);
    struct bd_model_config *m = env_model(&e, "m", BD_PROVIDER_OLLAMA);
    m->max_inputs_per_request = 2;
    m->concurrency = 3;
    env_start(&e);
    /* Two calls share the model's FIFO and its cap: 40 requests, at most 3 at a time. */
    it_embed(&e, "m", t.in, 20, &c1, NULL);
    it_embed(&e, "m", t.in + 20, 20, &c2, NULL);
    assert_int_equal(it_stats(&e, 0)->in_flight, 3);
    it_wait(&e, &c1);
    it_wait(&e, &c2);
    assert_int_equal(c1.status, BD_OK);
    assert_int_equal(c2.status, BD_OK);
    long long max_in_flight = bd_it_fake_stat(it_fake_port, "max_in_flight");
    print_message("    concurrency: fake max_in_flight=%lld cap=3, 20 requests took %.3f s\n",
                  max_in_flight, c2.t_done - c1.t_start);
    assert_true(max_in_flight <= 3);
    assert_int_equal(max_in_flight, 3);
    assert_int_equal(bd_it_fake_stat(it_fake_port, "requests_total"), 20);
    /* 20 requests of 50 ms, 3 at a time: at least 7 rounds. */
    assert_true(c2.t_done - c1.t_start >= 0.33);
    const struct bd_model_stats *s = it_stats(&e, 0);
    assert_int_equal(s->in_flight, 0);
    assert_int_equal(s->concurrency_limit, 3);
    for (unsigned i = 0; i < 20; i++) {
        assert_fake_row(&c1, i, t.in[i].text, t.in[i].len);
        assert_fake_row(&c2, i, t.in[20 + i].text, t.in[20 + i].len);
    }
    it_call_free(&c1);
    it_call_free(&c2);
    env_finish(&e);
    it_texts_free(&t);
}

/* The dispatcher's order when every slot is taken: priority first (0 high), then rank (the
 * caller's calls already at the model), then arrival. One slot: a first call takes it,
 * six more wait, and their callbacks come in dispatch order. */
struct order_log {
    int seen[8];
    int n;
};
struct order_call {
    struct it_call c;
    struct order_log *log;
    int tag;
};

static void on_order_embed(int status, const struct bd_embed_result *res, const char *message,
                           bool is_retryable, void *arg)
{
    struct order_call *oc = arg;
    it_on_embed(status, res, message, is_retryable, &oc->c);
    oc->log->seen[oc->log->n++] = oc->tag;
}

static void test_dispatch_orders_by_priority_then_rank_then_arrival(void **state)
{
    static const struct { int priority; unsigned rank; } waiting[6] = {
        { 1, 2 }, { 1, 0 }, { 0, 5 }, { 2, 0 }, { 1, 0 }, { 0, 1 },
    };
    static const int want[7] = { 0, 6, 3, 2, 5, 1, 4 };
    struct it_env e;
    struct it_texts t;
    struct order_log log = { .n = 0 };
    struct order_call calls[7];

    (void)state;
    bd_it_fake_reset(it_fake_port, ",\"latency_ms\":30");
    it_texts_make(&t, 7, 1);
    env_init(&e);
    struct bd_model_config *m = env_model(&e, "m", BD_PROVIDER_OLLAMA);
    m->concurrency = 1;
    env_start(&e);
    memset(calls, 0, sizeof(calls));
    for (int k = 0; k < 7; k++) {
        struct bd_model_order o = { .priority = 1, .rank = 0 };
        if (k > 0) {
            o.priority = waiting[k - 1].priority;
            o.rank = waiting[k - 1].rank;
        }
        calls[k].log = &log;
        calls[k].tag = k;
        calls[k].c.is_returned = true;
        assert_int_equal(bd_model_embed(e.mc, "m", &t.in[k], 1, &o, on_order_embed, &calls[k],
                                        NULL), BD_OK);
    }
    assert_int_equal(it_stats(&e, 0)->in_flight, 1);
    while (log.n < 7)
        assert_true(uv_run(&e.loop, UV_RUN_ONCE) != 0 || log.n == 7);
    for (int k = 0; k < 7; k++) {
        if (log.seen[k] != want[k])
            print_message("    position %d: call %d, want %d\n", k, log.seen[k], want[k]);
        assert_int_equal(log.seen[k], want[k]);
        assert_int_equal(calls[k].c.status, BD_OK);
        assert_fake_row(&calls[k].c, 0, t.in[k].text, t.in[k].len);
        it_call_free(&calls[k].c);
    }
    assert_int_equal(bd_it_fake_stat(it_fake_port, "max_in_flight"), 1);
    env_finish(&e);
    it_texts_free(&t);
}

static void test_connections_reused(void **state)
{
    struct it_env e;
    struct it_call c;
    struct it_texts t;

    (void)state;
    bd_it_fake_reset(it_fake_port, "");
    it_texts_make(&t, 64, 2);
    env_init(&e);
    struct bd_model_config *m = env_model(&e, "m", BD_PROVIDER_OLLAMA);
    m->max_inputs_per_request = 2;
    m->concurrency = 2;
    env_start(&e);
    for (int round = 0; round < 3; round++) {
        it_embed(&e, "m", t.in, t.n, &c, NULL);
        it_wait(&e, &c);
        assert_int_equal(c.status, BD_OK);
        it_call_free(&c);
    }
    const struct bd_model_stats *s = it_stats(&e, 0);
    print_message("    keep-alive: %llu requests over %llu connections\n",
                  (unsigned long long)s->requests, (unsigned long long)s->connections);
    assert_int_equal(s->requests, 96);
    assert_true(s->connections >= 1);
    assert_true(s->connections <= 2 * m->concurrency);
    env_finish(&e);
    it_texts_free(&t);
}

/* ---------------------------------------------------------------------------------------
 * Faults
 */

/* One call of 3 texts against the fake configured by extra; returns the finished call. */
static void run_fault(const char *extra, double timeout_s, struct it_call *c,
                      struct it_env *e)
{
    bd_it_fake_reset(it_fake_port, extra);
    env_init(e);
    env_model(e, "m", BD_PROVIDER_OLLAMA)->timeout_s = timeout_s;
    env_start(e);
    it_embed(e, "m", wire_inputs, 3, c, NULL);
    it_wait(e, c);
}

static void test_5xx_is_retryable_model_error(void **state)
{
    struct it_env e;
    struct it_call c;

    (void)state;
    run_fault(",\"fail_rate\":1", 10, &c, &e);
    assert_int_equal(c.status, BD_EMODEL);
    assert_true(c.is_retryable);
    assert_non_null(strstr(c.message, "500"));
    assert_non_null(strstr(c.message, "injected failure"));
    assert_int_equal(it_stats(&e, 0)->errors[BD_MODEL_ERR_PROCESSING], 1);
    assert_int_equal(it_stats(&e, 0)->requests, 1);
    env_finish(&e);
}

static void on_lift_429(uv_timer_t *t)
{
    (void)t;
    bd_it_fake_config(it_fake_port, "{\"rate_429\":0}");
}

static void test_429_waits_retry_after_then_succeeds(void **state)
{
    struct it_env e;
    struct it_call c;
    struct it_texts t;
    uv_timer_t lift;

    (void)state;
    bd_it_fake_reset(it_fake_port, ",\"rate_429\":1,\"retry_after\":1");
    it_texts_make(&t, 40, 1);
    env_init(&e);
    env_model(&e, "m", BD_PROVIDER_OPENAI)->max_inputs_per_request = 10;
    env_start(&e);
    uv_timer_init(&e.loop, &lift);
    uv_timer_start(&lift, on_lift_429, 300, 0);
    it_embed(&e, "m", t.in, t.n, &c, NULL);
    it_wait(&e, &c);
    uv_close((uv_handle_t *)&lift, NULL);
    assert_int_equal(c.status, BD_OK);
    assert_true(c.rate_limited >= 1);
    assert_true(c.t_done - c.t_start >= 1.0);
    const struct bd_model_stats *s = it_stats(&e, 0);
    print_message("    429: %u answers waited out, done after %.3f s, rate now %.2f rps\n",
                  c.rate_limited, c.t_done - c.t_start, s->rate_limit_rps);
    assert_int_equal(s->errors[BD_MODEL_ERR_RATE_LIMITED], c.rate_limited);
    assert_int_equal(s->errors[BD_MODEL_ERR_PROCESSING], 0);
    assert_false(s->is_circuit_open);
    assert_true(s->rate_limit_rps > 0);        /* unlimited model started limiting */
    assert_int_equal(c.requests, 4 + c.rate_limited);
    for (unsigned i = 0; i < t.n; i++)
        assert_fake_row(&c, i, t.in[i].text, t.in[i].len);
    it_call_free(&c);
    env_finish(&e);
    it_texts_free(&t);
}

static void test_429_gives_up_after_too_many(void **state)
{
    struct it_env e;
    struct it_call c;

    (void)state;
    bd_it_fake_reset(it_fake_port, ",\"rate_429\":1,\"retry_after\":0");
    env_init(&e);
    env_model(&e, "m", BD_PROVIDER_OLLAMA);
    e.tuning.max_consecutive_429 = 3;
    e.tuning.default_retry_after_s = 0.05;
    env_start(&e);
    it_embed(&e, "m", wire_inputs, 2, &c, NULL);
    it_wait(&e, &c);
    assert_int_equal(c.status, BD_EMODELRATE);
    assert_true(c.is_retryable);
    assert_int_equal(bd_it_fake_stat(it_fake_port, "rate_limited_429"), 3);
    assert_int_equal(it_stats(&e, 0)->errors[BD_MODEL_ERR_RATE_LIMITED], 3);
    assert_false(it_stats(&e, 0)->is_circuit_open);
    env_finish(&e);
}

static void test_hang_times_out(void **state)
{
    struct it_env e;
    struct it_call c;

    (void)state;
    run_fault(",\"hang_rate\":1", 0.5, &c, &e);
    double took = c.t_done - c.t_start;
    print_message("    hang: timed out after %.3f s (timeout 0.5 s)\n", took);
    assert_int_equal(c.status, BD_EMODELTIMEOUT);
    assert_true(c.is_retryable);
    assert_true(took >= 0.45 && took < 2.0);
    assert_int_equal(it_stats(&e, 0)->errors[BD_MODEL_ERR_TIMEOUT], 1);
    env_finish(&e);
}

static void test_malformed_is_bad_response(void **state)
{
    struct it_env e;
    struct it_call c;

    (void)state;
    run_fault(",\"malformed_rate\":1", 10, &c, &e);
    assert_int_equal(c.status, BD_EMODELBAD);
    assert_true(c.is_retryable);
    assert_non_null(strstr(c.message, "not valid JSON"));
    assert_int_equal(it_stats(&e, 0)->errors[BD_MODEL_ERR_PROCESSING], 1);
    env_finish(&e);
}

static void test_wrong_dimension_is_bad_response(void **state)
{
    struct it_env e;
    struct it_call c;

    (void)state;
    run_fault(",\"wrong_dim_rate\":1", 10, &c, &e);
    assert_int_equal(c.status, BD_EMODELBAD);
    assert_true(c.is_retryable);
    assert_non_null(strstr(c.message, "has 17 dimensions, expected 16"));
    env_finish(&e);
}

static void test_4xx_is_fatal(void **state)
{
    struct it_env e;
    struct it_call c;
    struct it_texts t;

    (void)state;
    bd_it_fake_reset(it_fake_port, ",\"max_inputs\":4");
    it_texts_make(&t, 8, 1);
    env_init(&e);
    env_model(&e, "m", BD_PROVIDER_OLLAMA)->max_inputs_per_request = 8;
    env_start(&e);
    it_embed(&e, "m", t.in, t.n, &c, NULL);
    it_wait(&e, &c);
    assert_int_equal(c.status, BD_EFATAL);
    assert_false(c.is_retryable);
    assert_non_null(strstr(c.message, "400"));
    assert_non_null(strstr(c.message, "max_inputs"));
    assert_false(it_stats(&e, 0)->is_circuit_open);
    env_finish(&e);
    it_texts_free(&t);
}

static void test_unreachable_is_connection_error(void **state)
{
    struct it_env e;
    struct it_call c;
    char url[96];

    (void)state;
    /* A port that was free a moment ago: nothing listens there (port 1 is not safe to
     * assume closed on every machine). */
    snprintf(url, sizeof(url), "http://user:s3cret@127.0.0.1:%d", bd_it_free_port());
    env_init(&e);
    env_model(&e, "m", BD_PROVIDER_OLLAMA)->base_url = url;
    env_start(&e);
    it_embed(&e, "m", wire_inputs, 2, &c, NULL);
    it_wait(&e, &c);
    assert_int_equal(c.status, BD_EMODELCONN);
    assert_true(c.is_retryable);
    /* The message is stored with the items and shown by the API: no password in it. */
    print_message("    message: %s\n", c.message);
    assert_null(strstr(c.message, "s3cret"));
    assert_non_null(strstr(c.message, "user:***@127.0.0.1"));
    assert_int_equal(it_stats(&e, 0)->errors[BD_MODEL_ERR_CONNECTION], 1);
    env_finish(&e);
}

static void on_flag_timer(uv_timer_t *t)
{
    *(int *)t->data = 1;
}

/* Out of descriptors (EMFILE) when a request needs a new connection: not the model's fault
 * nor the items'. The request waits and is sent again once a descriptor is free: the call
 * succeeds, no connection error is counted, the circuit stays closed. (Before: the call
 * failed at once as a connection error, spending the batch's attempt.) */
static void test_emfile_waits_instead_of_failing(void **state)
{
    struct it_env e;
    struct it_call c;
    struct rlimit old, low;
    int fillers[4096], nfill = 0, open_now = 0, fired = 0;
    uv_timer_t t;
    DIR *d;

    (void)state;
    bd_it_fake_reset(it_fake_port, "");
    env_init(&e);
    env_model(&e, "m", BD_PROVIDER_OLLAMA);
    env_start(&e);
    assert_non_null(d = opendir("/proc/self/fd"));
    while (readdir(d) != NULL)
        open_now++;
    closedir(d);
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
    low = old;
    low.rlim_cur = (rlim_t)open_now + 16;
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
    while (nfill < (int)(sizeof(fillers) / sizeof(fillers[0]))) {
        int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            break;
        fillers[nfill++] = fd;
    }
    int open_errno = errno;
    if (open_errno != EMFILE) {
        for (int i = 0; i < nfill; i++)
            close(fillers[i]);
        setrlimit(RLIMIT_NOFILE, &old);
    }
    assert_int_equal(open_errno, EMFILE);
    it_embed(&e, "m", wire_inputs, 2, &c, NULL);
    uv_timer_init(&e.loop, &t);
    t.data = &fired;
    uv_timer_start(&t, on_flag_timer, 1500, 0);
    while (!fired)
        uv_run(&e.loop, UV_RUN_ONCE);
    unsigned calls_while_short = c.calls;
    for (int i = 0; i < nfill; i++)              /* first: a failed assert must not leave */
        close(fillers[i]);                       /* the later cases without descriptors */
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);
    print_message("    after 1.5 s without descriptors: %s\n",
                  calls_while_short ? c.message : "still waiting");
    assert_int_equal(calls_while_short, 0);
    it_wait(&e, &c);
    uv_close((uv_handle_t *)&t, NULL);
    assert_int_equal(c.status, BD_OK);
    assert_int_equal(c.count, 2);
    const struct bd_model_stats *s = it_stats(&e, 0);
    assert_int_equal(s->errors[BD_MODEL_ERR_CONNECTION], 0);
    assert_false(s->is_circuit_open);
    it_call_free(&c);
    env_finish(&e);
}

/* One failing sub-request fails the call at once and aborts its siblings: with hang_rate
 * 0.5 and fail_rate 1 every request either hangs or fails fast, so the call must end with
 * the first 500 and the fake must see each hung request's connection close. */
static void test_one_failure_aborts_siblings(void **state)
{
    struct it_env e;
    struct it_call c;
    struct it_texts t;

    (void)state;
    bd_it_fake_reset(it_fake_port, ",\"hang_rate\":0.5,\"fail_rate\":1,\"seed\":11");
    it_texts_make(&t, 16, 1);
    env_init(&e);
    struct bd_model_config *m = env_model(&e, "m", BD_PROVIDER_OLLAMA);
    m->max_inputs_per_request = 2;
    m->concurrency = 8;
    m->timeout_s = 5;
    env_start(&e);
    it_embed(&e, "m", t.in, t.n, &c, NULL);
    it_wait(&e, &c);
    assert_int_equal(c.status, BD_EMODEL);
    assert_true(c.t_done - c.t_start < 1.0);
    assert_int_equal(it_stats(&e, 0)->in_flight, 0);
    long long hangs = bd_it_fake_stat(it_fake_port, "hangs"), disconnects = 0;
    for (int i = 0; i < 100 && disconnects < hangs; i++) {
        disconnects = bd_it_fake_stat(it_fake_port, "disconnects");
        if (disconnects < hangs)
            uv_sleep(10);
    }
    print_message("    siblings: %lld requests, %lld hung and were aborted (%lld disconnects)\n",
                  bd_it_fake_stat(it_fake_port, "requests_total"), hangs, disconnects);
    assert_true(hangs >= 1);
    assert_int_equal(disconnects, hangs);
    env_finish(&e);
    it_texts_free(&t);
}

/* ---------------------------------------------------------------------------------------
 * Abort and close
 */

struct abort_ctx {
    struct bd_model_call *call;
    double t_abort;
};

static void on_abort_timer(uv_timer_t *t)
{
    struct abort_ctx *a = t->data;

    a->t_abort = bd_it_now();
    bd_model_abort(a->call);
    uv_close((uv_handle_t *)t, NULL);
}

static void test_abort_slow_call(void **state)
{
    struct it_env e;
    struct it_call c;
    struct it_texts t;
    struct abort_ctx a;
    uv_timer_t timer;

    (void)state;
    bd_it_fake_reset(it_fake_port, ",\"latency_ms\":3000");
    it_texts_make(&t, 64, 1);
    env_init(&e);
    env_model(&e, "m", BD_PROVIDER_OLLAMA)->max_inputs_per_request = 16;
    env_start(&e);
    it_embed(&e, "m", t.in, t.n, &c, &a.call);
    assert_non_null(a.call);
    uv_timer_init(&e.loop, &timer);
    timer.data = &a;
    uv_timer_start(&timer, on_abort_timer, 150, 0);
    it_wait(&e, &c);
    double took = c.t_done - a.t_abort;
    assert_int_equal(c.status, BD_ECANCELED);
    assert_false(c.is_retryable);
    assert_true(took < 0.1);
    assert_int_equal(it_stats(&e, 0)->in_flight, 0);
    /* The fake notices the closed connections (4 requests were in flight). */
    long long disconnects = 0;
    for (int i = 0; i < 100 && disconnects < 4; i++) {
        disconnects = bd_it_fake_stat(it_fake_port, "disconnects");
        if (disconnects < 4)
            uv_sleep(10);
    }
    print_message("    abort: callback %.1f ms after abort, fake saw %lld disconnects\n",
                  took * 1000, disconnects);
    assert_int_equal(disconnects, 4);
    env_finish(&e);
    it_texts_free(&t);
}

static void test_close_cancels_calls_in_flight(void **state)
{
    struct it_env e;
    struct it_call c1, c2, c3;
    struct it_texts t;

    (void)state;
    bd_it_fake_reset(it_fake_port, ",\"latency_ms\":2000");
    it_texts_make(&t, 100, 1);
    env_init(&e);
    struct bd_model_config *m = env_model(&e, "m", BD_PROVIDER_OLLAMA);
    m->max_inputs_per_request = 10;
    m->concurrency = 2;
    env_model(&e, "h", BD_PROVIDER_HASHING);
    env_start(&e);
    it_embed(&e, "m", t.in, t.n, &c1, NULL);            /* 2 in flight, 8 waiting */
    it_embed(&e, "m", t.in, 5, &c2, NULL);
    it_embed(&e, "h", t.in, t.n, &c3, NULL);
    uv_run(&e.loop, UV_RUN_NOWAIT);
    double t0 = bd_it_now();
    bd_model_client_close(e.mc, on_closed, &e.closed);
    struct bd_model_call *late = (struct bd_model_call *)1;
    assert_int_equal(bd_model_embed(e.mc, "m", t.in, 1, NULL, it_on_embed, &c1, &late),
                     BD_ESHUTDOWN);
    assert_null(late);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    assert_true(bd_it_now() - t0 < 0.5);
    assert_int_equal(c1.calls, 1);
    assert_int_equal(c2.calls, 1);
    assert_int_equal(c3.calls, 1);
    assert_int_equal(c1.status, BD_ECANCELED);
    assert_int_equal(c2.status, BD_ECANCELED);
    assert_int_equal(c3.status, BD_ECANCELED);
    assert_int_equal(e.closed, 1);
    assert_int_equal(uv_loop_close(&e.loop), 0);
    it_texts_free(&t);
}

/* Closing from inside an embed callback. */
static struct it_env *close_env;

static void on_embed_then_close(int status, const struct bd_embed_result *res,
                                const char *message, bool is_retryable, void *arg)
{
    it_on_embed(status, res, message, is_retryable, arg);
    bd_model_client_close(close_env->mc, on_closed, &close_env->closed);
}

static void test_close_from_callback(void **state)
{
    struct it_env e;
    struct it_call c1, c2;

    (void)state;
    bd_it_fake_reset(it_fake_port, ",\"latency_ms\":1000");
    env_init(&e);
    close_env = &e;
    env_model(&e, "h", BD_PROVIDER_HASHING);
    env_model(&e, "m", BD_PROVIDER_OLLAMA);
    env_start(&e);
    memset(&c1, 0, sizeof c1);
    assert_int_equal(bd_model_embed(e.mc, "h", wire_inputs, WIRE_N, NULL, on_embed_then_close, &c1,
                                    NULL), BD_OK);
    c1.is_returned = true;
    it_embed(&e, "m", wire_inputs, WIRE_N, &c2, NULL);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    assert_int_equal(c1.calls, 1);
    assert_int_equal(c1.status, BD_OK);
    assert_int_equal(c2.calls, 1);
    assert_int_equal(c2.status, BD_ECANCELED);
    assert_int_equal(e.closed, 1);
    assert_int_equal(uv_loop_close(&e.loop), 0);
    it_call_free(&c1);
}

/* ---------------------------------------------------------------------------------------
 * Circuit breaker
 */

static void on_wait_timer(uv_timer_t *t)
{
    uv_close((uv_handle_t *)t, NULL);
}

static void test_circuit_opens_and_recovers(void **state)
{
    struct it_env e;
    struct it_call c;
    uv_timer_t wait;

    (void)state;
    bd_it_fake_reset(it_fake_port, ",\"fail_rate\":1");
    env_init(&e);
    env_model(&e, "m", BD_PROVIDER_OLLAMA);
    e.tuning.breaker_threshold = 3;
    e.tuning.breaker_cooldown_s = 0.3;
    env_start(&e);
    for (int i = 0; i < 3; i++) {
        it_embed(&e, "m", wire_inputs, 2, &c, NULL);
        it_wait(&e, &c);
        assert_int_equal(c.status, BD_EMODEL);
    }
    assert_true(it_stats(&e, 0)->is_circuit_open);

    /* Open: fails fast without a request. */
    it_embed(&e, "m", wire_inputs, 2, &c, NULL);
    it_wait(&e, &c);
    print_message("    circuit: open, failed fast in %.3f ms: %s\n",
                  (c.t_done - c.t_start) * 1000, c.message);
    assert_int_equal(c.status, BD_EMODELCONN);
    assert_true(c.is_retryable);
    assert_non_null(strstr(c.message, "circuit open"));
    assert_true(c.t_done - c.t_start < 0.05);
    assert_int_equal(bd_it_fake_stat(it_fake_port, "requests_total"), 3);

    /* After the cool-down one probe goes; the model works again, so it closes. */
    bd_it_fake_config(it_fake_port, "{\"fail_rate\":0}");
    uv_timer_init(&e.loop, &wait);
    uv_timer_start(&wait, on_wait_timer, 350, 0);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    it_embed(&e, "m", wire_inputs, 2, &c, NULL);
    it_wait(&e, &c);
    assert_int_equal(c.status, BD_OK);
    assert_false(it_stats(&e, 0)->is_circuit_open);
    assert_int_equal(bd_it_fake_stat(it_fake_port, "requests_total"), 4);
    it_call_free(&c);
    env_finish(&e);
}

static void test_circuit_probe_failure_reopens(void **state)
{
    struct it_env e;
    struct it_call c;
    struct it_texts t;
    uv_timer_t wait;

    (void)state;
    bd_it_fake_reset(it_fake_port, ",\"fail_rate\":1");
    it_texts_make(&t, 8, 1);
    env_init(&e);
    env_model(&e, "m", BD_PROVIDER_OLLAMA)->max_inputs_per_request = 2;
    e.tuning.breaker_threshold = 1;
    e.tuning.breaker_cooldown_s = 0.2;
    env_start(&e);
    it_embed(&e, "m", t.in, 2, &c, NULL);
    it_wait(&e, &c);
    assert_true(it_stats(&e, 0)->is_circuit_open);
    uv_timer_init(&e.loop, &wait);
    uv_timer_start(&wait, on_wait_timer, 250, 0);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    /* Half-open: 4 requests wait behind one probe; the probe fails, so the call fails and
     * the fake sees exactly one more request. */
    it_embed(&e, "m", t.in, t.n, &c, NULL);
    it_wait(&e, &c);
    assert_int_equal(c.status, BD_EMODEL);
    assert_int_equal(bd_it_fake_stat(it_fake_port, "requests_total"), 2);
    assert_true(it_stats(&e, 0)->is_circuit_open);
    env_finish(&e);
    it_texts_free(&t);
}

/* ---------------------------------------------------------------------------------------
 * Overlong texts
 */

/* 5 texts, limit 10 bytes: "short" fits; 16 ASCII bytes; 14 bytes of 2-byte characters (cut
 * at 10 is a boundary); 9 ASCII + a 2-byte character (cut at 10 would split it: 9); 10. */
static const struct bd_embed_input long_inputs[] = {
    {"short", 5},
    {"0123456789abcdef", 16},
    {"\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9", 14},
    {"aaaaaaaaa\xc3\xa9", 11},
    {"0123456789", 10},
};
static const size_t long_cut[] = {5, 10, 10, 9, 10};
#define LONG_N (sizeof long_inputs / sizeof long_inputs[0])

static void test_overlong_truncate(void **state)
{
    struct it_env e;
    struct it_call c;

    (void)state;
    bd_it_fake_reset(it_fake_port, "");
    env_init(&e);
    env_model(&e, "m", BD_PROVIDER_OLLAMA)->max_input_chars = 10;
    env_start(&e);
    it_embed(&e, "m", long_inputs, LONG_N, &c, NULL);
    it_wait(&e, &c);
    assert_int_equal(c.status, BD_OK);
    assert_int_equal(c.truncated, 3);
    for (unsigned i = 0; i < LONG_N; i++) {
        assert_int_equal(c.item_status[i], BD_OK);
        assert_fake_row(&c, i, long_inputs[i].text, long_cut[i]);
    }
    assert_int_equal(bd_it_fake_stat(it_fake_port, "inputs_total"), LONG_N);
    it_call_free(&c);
    env_finish(&e);
}

static void test_overlong_fail(void **state)
{
    struct it_env e;
    struct it_call c;

    (void)state;
    bd_it_fake_reset(it_fake_port, "");
    env_init(&e);
    struct bd_model_config *m = env_model(&e, "m", BD_PROVIDER_OLLAMA);
    m->max_input_chars = 10;
    m->overlong = BD_OVERLONG_FAIL;
    env_start(&e);
    it_embed(&e, "m", long_inputs, LONG_N, &c, NULL);
    it_wait(&e, &c);
    assert_int_equal(c.status, BD_OK);
    assert_int_equal(c.truncated, 0);
    for (unsigned i = 0; i < LONG_N; i++) {
        bool is_long = long_inputs[i].len > 10;
        assert_int_equal(c.item_status[i], is_long ? BD_EINVAL : BD_OK);
        if (is_long) {
            for (unsigned j = 0; j < IT_DIM; j++)
                assert_true(c.vectors[i * IT_DIM + j] == 0.0f);
        } else {
            assert_fake_row(&c, i, long_inputs[i].text, long_inputs[i].len);
        }
    }
    assert_int_equal(bd_it_fake_stat(it_fake_port, "inputs_total"), 2);
    it_call_free(&c);

    /* Nothing left to send: completes without a request. */
    it_embed(&e, "m", long_inputs + 1, 3, &c, NULL);
    it_wait(&e, &c);
    assert_int_equal(c.status, BD_OK);
    assert_int_equal(c.requests, 0);
    assert_int_equal(c.item_status[0], BD_EINVAL);
    assert_int_equal(bd_it_fake_stat(it_fake_port, "requests_total"), 1);
    it_call_free(&c);
    env_finish(&e);
}

/* ---------------------------------------------------------------------------------------
 * Hashing model
 */

static double it_cos(const float *a, const float *b, unsigned dim)
{
    double s = 0;

    for (unsigned i = 0; i < dim; i++)
        s += (double)a[i] * b[i];
    return s;
}

static void test_hashing_embedder(void **state)
{
    enum { D = 384 };
    static const char *const s1 = "The quick brown fox jumps over the lazy dog";
    static const char *const s2 = "the quick brown fox jumped over a lazy dog!";
    static const char *const s3 = "Quarterly revenue grew by twelve percent in Europe";
    float a[D], a2[D], b[D], c[D], z[D];

    (void)state;
    bd_model_hashing_embed(s1, strlen(s1), D, a);
    bd_model_hashing_embed(s1, strlen(s1), D, a2);
    bd_model_hashing_embed(s2, strlen(s2), D, b);
    bd_model_hashing_embed(s3, strlen(s3), D, c);
    assert_memory_equal(a, a2, sizeof a);
    assert_true(fabs(it_cos(a, a, D) - 1.0) < 1e-5);
    assert_true(fabs(it_cos(b, b, D) - 1.0) < 1e-5);
    assert_true(fabs(it_cos(c, c, D) - 1.0) < 1e-5);
    double sim = it_cos(a, b, D), unrel = it_cos(a, c, D);
    print_message("    hashing: cos(similar)=%.3f cos(unrelated)=%.3f\n", sim, unrel);
    assert_true(sim > 0.6);
    assert_true(sim > unrel + 0.3);
    /* Case and whitespace runs do not matter. */
    bd_model_hashing_embed("  THE quick\tbrown  fox jumps over the lazy dog \n", 48, D, b);
    assert_memory_equal(a, b, sizeof a);
    /* No features: the fixed unit vector e0. */
    bd_model_hashing_embed("", 0, D, z);
    assert_true(z[0] == 1.0f);
    for (unsigned i = 1; i < D; i++)
        assert_true(z[i] == 0.0f);
    bd_model_hashing_embed(" \t\n", 3, D, b);
    assert_memory_equal(z, b, sizeof z);
}

static void test_hashing_provider_matches_function(void **state)
{
    struct it_env e;
    struct it_call c;
    struct it_texts t;
    float want[IT_DIM];

    (void)state;
    it_texts_make(&t, 200, 4);
    env_init(&e);
    env_model(&e, "h", BD_PROVIDER_HASHING);
    env_start(&e);
    it_embed(&e, "h", t.in, t.n, &c, NULL);
    it_wait(&e, &c);
    assert_int_equal(c.status, BD_OK);
    assert_int_equal(c.requests, 0);
    for (unsigned i = 0; i < t.n; i++) {
        bd_model_hashing_embed(t.in[i].text, t.in[i].len, IT_DIM, want);
        assert_memory_equal(c.vectors + i * IT_DIM, want, sizeof want);
    }
    const struct bd_model_stats *s = it_stats(&e, 0);
    assert_int_equal(s->inputs, 200);
    assert_int_equal(s->requests, 0);
    assert_true(s->request_seconds.count >= 200 / 64);
    it_call_free(&c);
    env_finish(&e);
    it_texts_free(&t);
}

/* A 1 ms repeating timer: how late does it run while 10,000 texts are hashed? */
struct lag_probe {
    uv_timer_t timer;
    uint64_t last;
    uint64_t max_gap;
    unsigned ticks;
};

static void on_lag_tick(uv_timer_t *t)
{
    struct lag_probe *p = t->data;
    uint64_t now = uv_hrtime();

    if (p->last && now - p->last > p->max_gap)
        p->max_gap = now - p->last;
    p->last = now;
    p->ticks++;
}

/* The callback checks a sample of rows in place and stops the probe: copying 15 MB here
 * would be the test's own stall, not the client's. */
struct lag_call {
    struct lag_probe *probe;
    const struct it_texts *texts;
    int calls;
    int status;
    unsigned mismatches;
    double t_done;
};

static void on_lag_embed(int status, const struct bd_embed_result *res, const char *message,
                         bool is_retryable, void *arg)
{
    struct lag_call *lc = arg;
    float want[384];

    (void)message;
    (void)is_retryable;
    lc->calls++;
    lc->status = status;
    lc->t_done = bd_it_now();
    uv_timer_stop(&lc->probe->timer);
    if (status != BD_OK)
        return;
    for (unsigned i = 0; i < lc->texts->n; i += 997) {
        bd_model_hashing_embed(lc->texts->in[i].text, lc->texts->in[i].len, 384, want);
        lc->mismatches += memcmp(res->vectors + (size_t)i * 384, want, sizeof want) != 0;
    }
}

static void on_turn(uv_check_t *c)
{
    (*(unsigned *)c->data)++;
}

static void test_hashing_10000_never_blocks_loop(void **state)
{
    uv_check_t turns_check;
    unsigned turns = 0;
    struct it_env e;
    struct it_texts t;
    struct lag_probe p = {0};
    struct lag_call lc = {0};

    (void)state;
    it_texts_make(&t, 10000, 40);                   /* ~250 bytes each, 2.4 MB in all */
    env_init(&e);
    env_model(&e, "h", BD_PROVIDER_HASHING)->dimensions = 384;
    env_start(&e);
    uv_timer_init(&e.loop, &p.timer);
    p.timer.data = &p;
    lc.probe = &p;
    lc.texts = &t;
    uv_timer_start(&p.timer, on_lag_tick, 1, 1);
    uv_check_init(&e.loop, &turns_check);
    turns_check.data = &turns;
    uv_run(&e.loop, UV_RUN_NOWAIT);                 /* the probe's first tick */
    double t0 = bd_it_now();
    uv_check_start(&turns_check, on_turn);
    assert_int_equal(bd_model_embed(e.mc, "h", t.in, t.n, NULL, on_lag_embed, &lc, NULL), BD_OK);
    while (lc.calls == 0)
        uv_run(&e.loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&p.timer, NULL);
    uv_close((uv_handle_t *)&turns_check, NULL);
    double took = lc.t_done - t0;
    double max_lag_ms = (double)p.max_gap / 1e6 - 1.0;
    print_message("    hashing 10000 x ~%zu B dim 384: %.3f s (%.0f texts/s), "
                  "max loop lag %.2f ms over %u probe ticks\n",
                  t.in[t.n - 1].len, took, t.n / took, max_lag_ms, p.ticks);
    assert_int_equal(lc.calls, 1);
    assert_int_equal(lc.status, BD_OK);
    assert_int_equal(lc.mismatches, 0);
    /* The structural property: the work is cut into slices of at most 64 texts, each in its
     * own loop turn, so 10,000 texts take at least 10000/64 turns. The lag bound is only a
     * generous sanity check (timing depends on the machine's load). */
    print_message("    loop turns during the call: %u\n", turns);
    assert_true(turns >= 10000 / 64);
    assert_true(max_lag_ms < (IT_SANITIZED ? 250.0 : 100.0));
    env_finish(&e);
    it_texts_free(&t);
}

/* ---------------------------------------------------------------------------------------
 * Contract edges
 */

static void test_contract_edges(void **state)
{
    struct it_env e;
    struct it_call c;
    struct bd_model_call *h = (struct bd_model_call *)1;

    (void)state;
    bd_it_fake_reset(it_fake_port, "");
    env_init(&e);
    env_model(&e, "m", BD_PROVIDER_OLLAMA);
    env_start(&e);
    memset(&c, 0, sizeof c);
    assert_int_equal(bd_model_embed(e.mc, "nope", wire_inputs, 1, NULL, it_on_embed, &c, &h),
                     BD_ENOTFOUND);
    assert_null(h);
    assert_int_equal(bd_model_embed(e.mc, "m", wire_inputs, 1, NULL, NULL, &c, NULL), BD_EINVAL);
    struct bd_embed_input bad = {NULL, 3};
    assert_int_equal(bd_model_embed(e.mc, "m", &bad, 1, NULL, it_on_embed, &c, NULL), BD_EINVAL);
    assert_int_equal(c.calls, 0);

    /* count 0: an empty success, still asynchronous, no request. */
    it_embed(&e, "m", NULL, 0, &c, NULL);
    it_wait(&e, &c);
    assert_int_equal(c.status, BD_OK);
    assert_int_equal(c.count, 0);
    it_call_free(&c);

    /* Abort after it finished but before its callback: delivered as cancelled, once. */
    it_embed(&e, "m", NULL, 0, &c, &h);
    bd_model_abort(h);
    it_wait(&e, &c);
    assert_int_equal(c.status, BD_ECANCELED);
    assert_int_equal(bd_it_fake_stat(it_fake_port, "requests_total"), 0);
    assert_null(bd_model_client_get_stats(e.mc, 1));
    assert_string_equal(bd_model_error_kind_name(BD_MODEL_ERR_TIMEOUT), "timeout_error");
    assert_string_equal(bd_model_error_kind_name(BD_MODEL_ERR_RATE_LIMITED), "rate_limited");
    env_finish(&e);
}

static void test_rate_limit_paces_requests(void **state)
{
    struct it_env e;
    struct it_call c;
    struct it_texts t;

    (void)state;
    bd_it_fake_reset(it_fake_port, "");
    it_texts_make(&t, 60, 1);
    env_init(&e);
    struct bd_model_config *m = env_model(&e, "m", BD_PROVIDER_OLLAMA);
    m->max_inputs_per_request = 1;
    m->rate_limit_rps = 40;                  /* a burst of 40 tokens, then 40 per second */
    m->concurrency = 4;
    env_start(&e);
    assert_true(it_stats(&e, 0)->rate_limit_rps == 40.0);
    it_embed(&e, "m", t.in, t.n, &c, NULL);
    it_wait(&e, &c);
    double took = c.t_done - c.t_start;
    print_message("    rate limit 40 rps: 60 requests took %.3f s (expected ~0.5)\n", took);
    assert_int_equal(c.status, BD_OK);
    assert_true(took >= 0.4 && took < 2.0);
    assert_true(it_stats(&e, 0)->rate_limit_rps == 40.0);   /* never above the ceiling */
    it_call_free(&c);
    env_finish(&e);
    it_texts_free(&t);
}

/* ---------------------------------------------------------------------------------------
 * Suite
 */

static int group_setup(void **state)
{
    const char *const args[] = {"--dim", "16", "--seed", "7", NULL};

    (void)state;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return -1;
    if (fake_model_spawn(NULL, args, &it_fake_pid, &it_fake_port) < 0)
        return -1;
    snprintf(it_base, sizeof it_base, "http://127.0.0.1:%d", it_fake_port);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    int rc = fake_model_stop(it_fake_pid);
    curl_global_cleanup();
    return rc == 0 ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wire_ollama),
        cmocka_unit_test(test_wire_openai_sorted_by_index),
        cmocka_unit_test(test_wire_tei),
        cmocka_unit_test(test_openai_api_key),
        cmocka_unit_test(test_split_250_into_8_requests),
        cmocka_unit_test(test_split_by_chars),
        cmocka_unit_test(test_concurrency_cap_respected),
        cmocka_unit_test(test_dispatch_orders_by_priority_then_rank_then_arrival),
        cmocka_unit_test(test_connections_reused),
        cmocka_unit_test(test_5xx_is_retryable_model_error),
        cmocka_unit_test(test_429_waits_retry_after_then_succeeds),
        cmocka_unit_test(test_429_gives_up_after_too_many),
        cmocka_unit_test(test_hang_times_out),
        cmocka_unit_test(test_malformed_is_bad_response),
        cmocka_unit_test(test_wrong_dimension_is_bad_response),
        cmocka_unit_test(test_4xx_is_fatal),
        cmocka_unit_test(test_unreachable_is_connection_error),
        cmocka_unit_test(test_emfile_waits_instead_of_failing),
        cmocka_unit_test(test_one_failure_aborts_siblings),
        cmocka_unit_test(test_abort_slow_call),
        cmocka_unit_test(test_close_cancels_calls_in_flight),
        cmocka_unit_test(test_close_from_callback),
        cmocka_unit_test(test_circuit_opens_and_recovers),
        cmocka_unit_test(test_circuit_probe_failure_reopens),
        cmocka_unit_test(test_overlong_truncate),
        cmocka_unit_test(test_overlong_fail),
        cmocka_unit_test(test_hashing_embedder),
        cmocka_unit_test(test_hashing_provider_matches_function),
        cmocka_unit_test(test_hashing_10000_never_blocks_loop),
        cmocka_unit_test(test_contract_edges),
        cmocka_unit_test(test_rate_limit_paces_requests),
    };

    return cmocka_run_group_tests_name("it_model", tests, group_setup, group_teardown);
}
