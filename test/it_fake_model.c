/* it_fake_model.c -- integration suite for the fake model server itself: wire formats,
 * vectors equal to fake_vector(), faults, /stats and /config.
 *
 * Spawns $BD_FAKE_MODEL_BIN with fake_model_client.h and talks to it with blocking libcurl
 * (test code: blocking is fine here). Needs neither Redis nor PostgreSQL nor batchd. Every
 * case starts from POST /config {"reset":true} and POST /stats/reset on the shared server.
 * SPDX-License-Identifier: MIT
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <curl/curl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "bd_it.h"
#include "fake_model/fake_model_client.h"
#include "fake_model/fake_vectors.h"

/* The server shared by every case (set up once by the group). */
struct it_fm {
    pid_t pid;
    int port;
};

/* ---------------------------------------------------------------------------------------
 * HTTP helpers (on bd_it_http_ex from test/support)
 */

/* One request to the fake server, auth: NULL or an "Authorization: ..." header. Returns the
 * curl code; the status, body, headers and time taken are in r (free with bd_it_resp_free). */
static CURLcode it_http_ex(const struct it_fm *fm, const char *method, const char *path,
                           const char *body, const char *auth, long timeout_ms,
                           struct bd_it_resp *r)
{
    char url[256];
    const char *const headers[] = { auth, NULL };

    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", fm->port, path);
    bd_it_http_ex(method, url, body, headers, timeout_ms, r);
    return (CURLcode)r->curl_code;
}

static long it_http(const struct it_fm *fm, const char *method, const char *path,
                    const char *body, struct bd_it_resp *r)
{
    assert_int_equal(it_http_ex(fm, method, path, body, NULL, 10000, r), CURLE_OK);
    return r->status;
}

/* POST body to path, expect 200 and JSON; returns the parsed body (caller decrefs). */
static json_t *it_post_json(const struct it_fm *fm, const char *path, const char *body)
{
    struct bd_it_resp r;
    json_error_t err;

    assert_int_equal(it_http(fm, "POST", path, body, &r), 200);
    json_t *j = json_loads(r.body, 0, &err);
    if (j == NULL)
        fail_msg("not JSON (%s): %.200s", err.text, r.body);
    bd_it_resp_free(&r);
    return j;
}

static void it_config(const struct it_fm *fm, const char *json)
{
    json_decref(it_post_json(fm, "/config", json));
}

static json_t *it_stats(const struct it_fm *fm)
{
    struct bd_it_resp r;

    assert_int_equal(it_http(fm, "GET", "/stats", NULL, &r), 200);
    json_t *j = json_loads(r.body, 0, NULL);
    assert_non_null(j);
    bd_it_resp_free(&r);
    return j;
}

static long long it_stat(const struct it_fm *fm, const char *name)
{
    json_t *s = it_stats(fm);
    json_t *v = json_object_get(s, name);

    assert_true(json_is_integer(v));
    long long n = json_integer_value(v);
    json_decref(s);
    return n;
}

/* Assert that the JSON array vec is exactly fake_vector(text, dim). */
static void it_assert_vector(json_t *vec, const char *text, size_t len, unsigned dim)
{
    float want[1024];

    assert_true(dim <= 1024);
    assert_true(json_is_array(vec));
    assert_int_equal(json_array_size(vec), dim);
    fake_vector(text, len, dim, want);
    for (unsigned i = 0; i < dim; i++) {
        json_t *x = json_array_get(vec, i);
        assert_true(json_is_number(x));
        float got = (float)json_number_value(x);
        if (got != want[i])
            fail_msg("text '%s' dim %u component %u: got %.9g want %.9g", text, dim, i,
                     (double)got, (double)want[i]);
    }
}

/* ---------------------------------------------------------------------------------------
 * Cases
 */

static const char *const texts[] = {"hello", "world", "quote \" back\\ tab\t", "ünïcödé ✓", ""};
static const char texts_json[] =
    "[\"hello\",\"world\",\"quote \\\" back\\\\ tab\\t\",\"ünïcödé ✓\",\"\"]";
#define N_TEXTS (sizeof texts / sizeof texts[0])

static void fake_model_ollama_returns_fake_vectors_when_input_is_list(void **state)
{
    const struct it_fm *fm = *state;
    char body[512];

    snprintf(body, sizeof body, "{\"model\":\"mini\",\"input\":%s}", texts_json);
    json_t *j = it_post_json(fm, "/api/embed", body);
    assert_string_equal(json_string_value(json_object_get(j, "model")), "mini");
    json_t *embs = json_object_get(j, "embeddings");
    assert_int_equal(json_array_size(embs), N_TEXTS);
    for (size_t i = 0; i < N_TEXTS; i++)
        it_assert_vector(json_array_get(embs, i), texts[i], strlen(texts[i]), 8);
    json_decref(j);
}

static void fake_model_ollama_returns_one_vector_when_input_is_string(void **state)
{
    const struct it_fm *fm = *state;

    json_t *j = it_post_json(fm, "/api/embed", "{\"model\":\"m\",\"input\":\"a\\u0000b\"}");
    json_t *embs = json_object_get(j, "embeddings");
    assert_int_equal(json_array_size(embs), 1);
    it_assert_vector(json_array_get(embs, 0), "a\0b", 3, 8);   /* NUL bytes are text too */
    json_decref(j);
}

static void fake_model_openai_returns_indexed_vectors_when_shuffled(void **state)
{
    const struct it_fm *fm = *state;
    char body[512];

    it_config(fm, "{\"shuffle_openai\":true}");
    snprintf(body, sizeof body, "{\"model\":\"text-embedding-3-small\",\"input\":%s}",
             texts_json);
    json_t *j = it_post_json(fm, "/v1/embeddings", body);
    assert_string_equal(json_string_value(json_object_get(j, "object")), "list");
    assert_string_equal(json_string_value(json_object_get(j, "model")),
                        "text-embedding-3-small");
    json_t *data = json_object_get(j, "data");
    assert_int_equal(json_array_size(data), N_TEXTS);
    for (size_t k = 0; k < N_TEXTS; k++) {
        json_t *item = json_array_get(data, k);
        size_t index = (size_t)json_integer_value(json_object_get(item, "index"));
        assert_int_equal(index, N_TEXTS - 1 - k);                 /* reversed */
        assert_string_equal(json_string_value(json_object_get(item, "object")), "embedding");
        it_assert_vector(json_object_get(item, "embedding"), texts[index],
                         strlen(texts[index]), 8);
    }
    json_t *usage = json_object_get(j, "usage");
    json_int_t min_tokens = (json_int_t)N_TEXTS;
    assert_true(json_integer_value(json_object_get(usage, "prompt_tokens")) >= min_tokens);
    assert_true(json_integer_value(json_object_get(usage, "total_tokens")) >= min_tokens);
    json_decref(j);
}

static void fake_model_openai_honours_dimensions_when_requested(void **state)
{
    const struct it_fm *fm = *state;

    json_t *j = it_post_json(fm, "/v1/embeddings",
                             "{\"model\":\"m\",\"input\":\"x\",\"dimensions\":3}");
    json_t *item = json_array_get(json_object_get(j, "data"), 0);
    assert_int_equal(json_integer_value(json_object_get(item, "index")), 0);
    it_assert_vector(json_object_get(item, "embedding"), "x", 1, 3);
    json_decref(j);
}

static void fake_model_tei_returns_bare_arrays(void **state)
{
    const struct it_fm *fm = *state;
    char body[512];

    snprintf(body, sizeof body, "{\"inputs\":%s}", texts_json);
    json_t *j = it_post_json(fm, "/embed", body);
    assert_int_equal(json_array_size(j), N_TEXTS);
    for (size_t i = 0; i < N_TEXTS; i++)
        it_assert_vector(json_array_get(j, i), texts[i], strlen(texts[i]), 8);
    json_decref(j);

    j = it_post_json(fm, "/embed", "{\"inputs\":\"solo\"}");
    assert_int_equal(json_array_size(j), 1);
    it_assert_vector(json_array_get(j, 0), "solo", 4, 8);
    json_decref(j);
}

static void fake_model_config_changes_dimension_when_posted(void **state)
{
    const struct it_fm *fm = *state;

    it_config(fm, "{\"dim\":384, \"model_dims\":{\"tiny\":2}}");
    json_t *j = it_post_json(fm, "/api/embed", "{\"model\":\"big\",\"input\":[\"a\",\"b\"]}");
    it_assert_vector(json_array_get(json_object_get(j, "embeddings"), 0), "a", 1, 384);
    it_assert_vector(json_array_get(json_object_get(j, "embeddings"), 1), "b", 1, 384);
    json_decref(j);
    j = it_post_json(fm, "/api/embed", "{\"model\":\"tiny\",\"input\":\"a\"}");
    it_assert_vector(json_array_get(json_object_get(j, "embeddings"), 0), "a", 1, 2);
    json_decref(j);

    /* reset restores the flags */
    it_config(fm, "{\"reset\":true}");
    j = it_post_json(fm, "/api/embed", "{\"model\":\"big\",\"input\":\"a\"}");
    it_assert_vector(json_array_get(json_object_get(j, "embeddings"), 0), "a", 1, 8);
    json_decref(j);
}

static void fake_model_config_rejects_bad_values(void **state)
{
    const struct it_fm *fm = *state;
    struct bd_it_resp r;

    assert_int_equal(it_http(fm, "POST", "/config", "{\"fail_rate\":1.5}", &r), 400);
    assert_non_null(strstr(r.body, "fail_rate"));
    bd_it_resp_free(&r);
    assert_int_equal(it_http(fm, "POST", "/config", "{\"dim\":8,\"nope\":1}", &r), 400);
    assert_non_null(strstr(r.body, "nope"));
    bd_it_resp_free(&r);
    /* all or nothing: dim was not applied either */
    json_t *j = it_post_json(fm, "/api/embed", "{\"model\":\"m\",\"input\":\"a\"}");
    it_assert_vector(json_array_get(json_object_get(j, "embeddings"), 0), "a", 1, 8);
    json_decref(j);
}

static void fake_model_fail_rate_one_returns_500(void **state)
{
    const struct it_fm *fm = *state;
    struct bd_it_resp r;

    it_config(fm, "{\"fail-rate\":1}");
    for (int i = 0; i < 3; i++) {
        assert_int_equal(it_http(fm, "POST", "/api/embed", "{\"model\":\"m\",\"input\":\"a\"}",
                                 &r), 500);
        json_t *j = json_loads(r.body, 0, NULL);
        assert_true(json_is_string(json_object_get(j, "error")));   /* Ollama's error shape */
        json_decref(j);
        bd_it_resp_free(&r);
    }
    assert_int_equal(it_stat(fm, "errors_500"), 3);
}

static void fake_model_rate_429_carries_retry_after(void **state)
{
    const struct it_fm *fm = *state;
    struct bd_it_resp r;

    it_config(fm, "{\"rate_429\":1, \"retry_after\":7}");
    assert_int_equal(it_http(fm, "POST", "/v1/embeddings", "{\"model\":\"m\",\"input\":\"a\"}",
                             &r), 429);
    char retry_after[32];
    assert_non_null(bd_it_resp_header(&r, "Retry-After", retry_after, sizeof retry_after));
    assert_string_equal(retry_after, "7");
    json_t *j = json_loads(r.body, 0, NULL);
    assert_true(json_is_string(json_object_get(json_object_get(j, "error"), "message")));
    json_decref(j);
    bd_it_resp_free(&r);
    assert_int_equal(it_stat(fm, "rate_limited_429"), 1);
}

static void fake_model_malformed_rate_one_returns_invalid_json(void **state)
{
    const struct it_fm *fm = *state;
    struct bd_it_resp r;

    it_config(fm, "{\"malformed_rate\":1}");
    assert_int_equal(it_http(fm, "POST", "/api/embed", "{\"model\":\"m\",\"input\":[\"a\",\"b\"]}",
                             &r), 200);
    assert_true(r.len > 0);
    assert_null(json_loads(r.body, 0, NULL));
    bd_it_resp_free(&r);
    assert_int_equal(it_stat(fm, "malformed"), 1);
}

static void fake_model_wrong_dim_rate_one_returns_dim_plus_one(void **state)
{
    const struct it_fm *fm = *state;

    it_config(fm, "{\"wrong_dim_rate\":1, \"dim\":16}");
    json_t *j = it_post_json(fm, "/embed", "{\"inputs\":[\"a\"]}");
    it_assert_vector(json_array_get(j, 0), "a", 1, 17);
    json_decref(j);
    assert_int_equal(it_stat(fm, "wrong_dim"), 1);
}

static void fake_model_max_inputs_rejects_large_request(void **state)
{
    const struct it_fm *fm = *state;
    struct bd_it_resp r;

    it_config(fm, "{\"max_inputs\":2}");
    assert_int_equal(it_http(fm, "POST", "/v1/embeddings",
                             "{\"model\":\"m\",\"input\":[\"a\",\"b\",\"c\"]}", &r), 400);
    assert_non_null(strstr(r.body, "max_inputs"));
    bd_it_resp_free(&r);
    json_decref(it_post_json(fm, "/v1/embeddings", "{\"model\":\"m\",\"input\":[\"a\",\"b\"]}"));
    assert_int_equal(it_stat(fm, "bad_request_400"), 1);
}

static void fake_model_api_key_required_when_set(void **state)
{
    const struct it_fm *fm = *state;
    struct bd_it_resp r;
    const char *body = "{\"model\":\"m\",\"input\":\"a\"}";

    it_config(fm, "{\"api_key\":\"sekrit\"}");
    assert_int_equal(it_http(fm, "POST", "/v1/embeddings", body, &r), 401);
    json_t *j = json_loads(r.body, 0, NULL);
    assert_true(json_is_string(json_object_get(json_object_get(j, "error"), "message")));
    json_decref(j);
    bd_it_resp_free(&r);
    it_http_ex(fm, "POST", "/v1/embeddings", body, "Authorization: Bearer wrong", 5000, &r);
    assert_int_equal(r.status, 401);
    bd_it_resp_free(&r);
    it_http_ex(fm, "POST", "/v1/embeddings", body, "Authorization: Bearer sekrit", 5000, &r);
    assert_int_equal(r.status, 200);
    bd_it_resp_free(&r);
}

static void fake_model_latency_delays_reply(void **state)
{
    const struct it_fm *fm = *state;
    struct bd_it_resp r;

    it_config(fm, "{\"latency_ms\":250}");
    assert_int_equal(it_http(fm, "POST", "/api/embed", "{\"model\":\"m\",\"input\":\"a\"}", &r),
                     200);
    assert_true(r.seconds >= 0.24);
    bd_it_resp_free(&r);
    assert_int_equal(it_stat(fm, "in_flight"), 0);
}

static void fake_model_hang_counts_disconnect_when_client_gives_up(void **state)
{
    const struct it_fm *fm = *state;
    struct bd_it_resp r;

    it_config(fm, "{\"hang_rate\":1}");
    assert_int_equal(it_http_ex(fm, "POST", "/api/embed", "{\"model\":\"m\",\"input\":\"a\"}",
                                NULL, 300, &r), CURLE_OPERATION_TIMEDOUT);
    bd_it_resp_free(&r);
    /* The server learns of the close asynchronously: poll briefly. */
    long long disconnects = 0;
    for (int i = 0; i < 100 && disconnects == 0; i++) {
        disconnects = it_stat(fm, "disconnects");
        if (disconnects == 0) {
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    assert_int_equal(disconnects, 1);
    assert_int_equal(it_stat(fm, "hangs"), 1);
    assert_int_equal(it_stat(fm, "in_flight"), 0);
}

static void fake_model_max_in_flight_counts_concurrent_requests(void **state)
{
    const struct it_fm *fm = *state;
    enum { N = 6 };
    struct bd_it_resp r[N];
    int codes[N];
    CURL *e[N];
    CURLM *m = curl_multi_init();
    int running = 0, left;
    char url[128];

    it_config(fm, "{\"latency_ms\":300}");
    snprintf(url, sizeof url, "http://127.0.0.1:%d/api/embed", fm->port);
    for (int i = 0; i < N; i++) {
        e[i] = bd_it_easy_new("POST", url, "{\"model\":\"m\",\"input\":\"a\"}", NULL, 10000,
                              &r[i]);
        assert_non_null(e[i]);
        codes[i] = -1;
        curl_multi_add_handle(m, e[i]);
    }
    bool has_seen_all = false;
    do {
        curl_multi_perform(m, &running);
        for (CURLMsg *msg; (msg = curl_multi_info_read(m, &left)) != NULL;)
            for (int i = 0; i < N; i++)
                if (msg->msg == CURLMSG_DONE && msg->easy_handle == e[i])
                    codes[i] = (int)msg->data.result;
        curl_multi_poll(m, NULL, 0, 20, NULL);
        if (!has_seen_all && running == N && it_stat(fm, "in_flight") == N)
            has_seen_all = true;
    } while (running > 0);
    for (CURLMsg *msg; (msg = curl_multi_info_read(m, &left)) != NULL;)
        for (int i = 0; i < N; i++)
            if (msg->msg == CURLMSG_DONE && msg->easy_handle == e[i])
                codes[i] = (int)msg->data.result;
    for (int i = 0; i < N; i++) {
        curl_multi_remove_handle(m, e[i]);
        assert_int_equal(bd_it_easy_finish(e[i], codes[i]), 0);
        assert_int_equal(r[i].status, 200);
        bd_it_resp_free(&r[i]);
    }
    curl_multi_cleanup(m);
    assert_true(has_seen_all);
    assert_int_equal(it_stat(fm, "max_in_flight"), N);
    assert_int_equal(it_stat(fm, "in_flight"), 0);
}

static void fake_model_stats_count_requests_and_reset(void **state)
{
    const struct it_fm *fm = *state;
    struct bd_it_resp r;

    json_decref(it_post_json(fm, "/api/embed", "{\"model\":\"a\",\"input\":[\"x\",\"y\"]}"));
    json_decref(it_post_json(fm, "/api/embed", "{\"model\":\"a\",\"input\":\"x\"}"));
    json_decref(it_post_json(fm, "/v1/embeddings", "{\"model\":\"b\",\"input\":[\"x\"]}"));
    json_decref(it_post_json(fm, "/embed", "{\"inputs\":[\"x\",\"y\",\"z\"]}"));
    assert_int_equal(it_http(fm, "GET", "/healthz", NULL, &r), 200);
    bd_it_resp_free(&r);
    assert_int_equal(it_http(fm, "GET", "/nope", NULL, &r), 404);
    bd_it_resp_free(&r);

    json_t *s = it_stats(fm);
    assert_int_equal(json_integer_value(json_object_get(s, "requests_total")), 4);
    assert_int_equal(json_integer_value(json_object_get(s, "inputs_total")), 7);
    assert_int_equal(json_integer_value(json_object_get(s, "ok_200")), 4);
    json_t *routes = json_object_get(s, "requests_by_route");
    assert_int_equal(json_integer_value(json_object_get(routes, "/api/embed")), 2);
    assert_int_equal(json_integer_value(json_object_get(routes, "/v1/embeddings")), 1);
    assert_int_equal(json_integer_value(json_object_get(routes, "/embed")), 1);
    json_t *models = json_object_get(s, "by_model");
    assert_int_equal(json_integer_value(json_object_get(models, "a")), 2);
    assert_int_equal(json_integer_value(json_object_get(models, "b")), 1);
    static const char *const zero[] = {"in_flight", "errors_500", "rate_limited_429", "hangs",
                                       "malformed", "wrong_dim", "disconnects"};
    for (size_t i = 0; i < sizeof zero / sizeof zero[0]; i++)
        assert_int_equal(json_integer_value(json_object_get(s, zero[i])), 0);
    json_decref(s);

    json_decref(it_post_json(fm, "/stats/reset", ""));
    s = it_stats(fm);
    assert_int_equal(json_integer_value(json_object_get(s, "requests_total")), 0);
    assert_int_equal(json_object_size(json_object_get(s, "by_model")), 0);
    json_decref(s);
}

static void fake_model_faults_repeat_when_seed_is_reset(void **state)
{
    const struct it_fm *fm = *state;
    long first[20];
    struct bd_it_resp r;
    int n500 = 0;

    for (int round = 0; round < 2; round++) {
        it_config(fm, "{\"fail_rate\":0.5, \"seed\":42}");
        for (int i = 0; i < 20; i++) {
            long status = it_http(fm, "POST", "/embed", "{\"inputs\":\"a\"}", &r);
            bd_it_resp_free(&r);
            if (round == 0) {
                first[i] = status;
                n500 += status == 500;
            } else {
                assert_int_equal(status, first[i]);
            }
        }
    }
    assert_true(n500 > 0 && n500 < 20);
}

/* Two requests in one write, on a raw socket: answered both, in order. */
static void fake_model_pipelined_requests_answered_in_order(void **state)
{
    const struct it_fm *fm = *state;
    const char req[] = "POST /embed HTTP/1.1\r\nHost: x\r\nContent-Length: 14\r\n\r\n"
                       "{\"inputs\":\"a\"}"
                       "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)fm->port)};
    char buf[8192];
    size_t len = 0;
    ssize_t n;

    it_config(fm, "{\"latency_ms\":50}");      /* the second request arrives while pending */
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(write(fd, req, sizeof req - 1), (ssize_t)(sizeof req - 1));
    while (len < sizeof buf - 1 && (n = read(fd, buf + len, sizeof buf - 1 - len)) > 0)
        len += (size_t)n;
    close(fd);
    buf[len] = '\0';
    char *first = strstr(buf, "HTTP/1.1 200");
    assert_non_null(first);
    char *second = strstr(first + 1, "HTTP/1.1 200");
    assert_non_null(second);
    assert_non_null(strstr(first, "[["));                   /* the embedding came first */
    assert_true(strstr(first, "[[") < second);
    assert_non_null(strstr(second, "\"status\":\"ok\""));
}

/* Flags given to fake_model_spawn() reach the server. */
static void fake_model_spawn_passes_flags(void **state)
{
    const char *const args[] = {"--dim", "5", "--api-key", "k1", "--shuffle-openai", NULL};
    struct it_fm other = { 0 };
    struct bd_it_resp r;

    (void)state;
    assert_int_equal(fake_model_spawn(NULL, args, &other.pid, &other.port), 0);
    it_http_ex(&other, "POST", "/v1/embeddings", "{\"model\":\"m\",\"input\":[\"a\",\"b\"]}",
               "Authorization: Bearer k1", 5000, &r);
    assert_int_equal(r.status, 200);
    json_t *j = json_loads(r.body, 0, NULL);
    json_t *item = json_array_get(json_object_get(j, "data"), 0);
    assert_int_equal(json_integer_value(json_object_get(item, "index")), 1);
    it_assert_vector(json_object_get(item, "embedding"), "b", 1, 5);
    json_decref(j);
    bd_it_resp_free(&r);
    assert_int_equal(fake_model_stop(other.pid), 0);
}

/* ---------------------------------------------------------------------------------------
 * Fixtures
 */

static int it_group_setup(void **state)
{
    static struct it_fm fm;
    const char *const args[] = {"--seed", "7", NULL};

    curl_global_init(CURL_GLOBAL_DEFAULT);
    if (fake_model_spawn(NULL, args, &fm.pid, &fm.port) < 0)
        return -1;
    *state = &fm;
    return 0;
}

static int it_group_teardown(void **state)
{
    struct it_fm *fm = *state;
    int rc = fm ? fake_model_stop(fm->pid) : 0;

    curl_global_cleanup();
    if (rc != 0)
        fprintf(stderr, "fake_model exited with %d\n", rc);
    return rc == 0 ? 0 : -1;
}

static int it_setup(void **state)
{
    const struct it_fm *fm = *state;

    it_config(fm, "{\"reset\":true}");
    json_decref(it_post_json(fm, "/stats/reset", ""));
    return 0;
}

#define IT_CASE(f) cmocka_unit_test_setup(f, it_setup)

int main(void)
{
    const struct CMUnitTest tests[] = {
        IT_CASE(fake_model_ollama_returns_fake_vectors_when_input_is_list),
        IT_CASE(fake_model_ollama_returns_one_vector_when_input_is_string),
        IT_CASE(fake_model_openai_returns_indexed_vectors_when_shuffled),
        IT_CASE(fake_model_openai_honours_dimensions_when_requested),
        IT_CASE(fake_model_tei_returns_bare_arrays),
        IT_CASE(fake_model_config_changes_dimension_when_posted),
        IT_CASE(fake_model_config_rejects_bad_values),
        IT_CASE(fake_model_fail_rate_one_returns_500),
        IT_CASE(fake_model_rate_429_carries_retry_after),
        IT_CASE(fake_model_malformed_rate_one_returns_invalid_json),
        IT_CASE(fake_model_wrong_dim_rate_one_returns_dim_plus_one),
        IT_CASE(fake_model_max_inputs_rejects_large_request),
        IT_CASE(fake_model_api_key_required_when_set),
        IT_CASE(fake_model_latency_delays_reply),
        IT_CASE(fake_model_hang_counts_disconnect_when_client_gives_up),
        IT_CASE(fake_model_max_in_flight_counts_concurrent_requests),
        IT_CASE(fake_model_stats_count_requests_and_reset),
        IT_CASE(fake_model_faults_repeat_when_seed_is_reset),
        IT_CASE(fake_model_pipelined_requests_answered_in_order),
        IT_CASE(fake_model_spawn_passes_flags),
    };

    return cmocka_run_group_tests_name("it_fake_model", tests, it_group_setup,
                                       it_group_teardown);
}
