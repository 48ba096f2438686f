/* test_model_wire.c -- the model wire formats (model_wire.c): request bodies for ollama,
 * openai and tei, response parsing of good bodies, and one case per malformation, each
 * checking the message; plus error-text extraction and UTF-8 cutting.
 *
 * Pure functions: no loop, no network.  SPDX-License-Identifier: MIT
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "batchd/buf.h"
#include "batchd/error.h"
#include "model_internal.h"

/* Parse body for n vectors of dim; returns the code and leaves the message in msg. */
static int parse(enum bd_model_provider p, const char *body, unsigned n, unsigned dim,
                 float *out, char *msg)
{
    msg[0] = '\0';
    return bd__model_wire_parse(p, body, strlen(body), n, dim, out, msg, 256);
}

static void expect_bad(enum bd_model_provider p, const char *body, unsigned n, unsigned dim,
                       const char *want)
{
    float out[64];
    char msg[256];

    assert_int_equal(parse(p, body, n, dim, out, msg), BD_EMODELBAD);
    if (strstr(msg, want) == NULL)
        fail_msg("body %s: message \"%s\" lacks \"%s\"", body, msg, want);
}

/* ---------------------------------------------------------------------------------------
 * Request bodies
 */

static json_t *build(enum bd_model_provider p, const char *const *texts, const size_t *lens,
                     unsigned n)
{
    struct bd_buf b;
    json_error_t err;

    bd_buf_init(&b);
    bd__model_wire_begin(&b, p, "my \"model\"");
    for (unsigned i = 0; i < n; i++)
        bd__model_wire_add(&b, texts[i], lens[i], i == 0);
    bd__model_wire_end(&b, p);
    assert_false(b.is_failed);
    json_t *j = json_loadb(b.data, b.len, JSON_ALLOW_NUL, &err);
    if (j == NULL)
        fail_msg("body is not JSON (%s): %s", err.text, b.data);
    bd_buf_free(&b);
    return j;
}

static const char *const body_texts[] = {
    "plain", "q\"uote\\", "ctl\n\t\x01", "caf\xc3\xa9", ("bad\xff" "byte"), "nul\0in",
};
static const size_t body_lens[] = {5, 7, 6, 5, 8, 6};
#define BODY_N 6

static void check_inputs(json_t *arr)
{
    assert_true(json_is_array(arr));
    assert_int_equal(json_array_size(arr), BODY_N);
    assert_string_equal(json_string_value(json_array_get(arr, 0)), "plain");
    assert_string_equal(json_string_value(json_array_get(arr, 1)), "q\"uote\\");
    assert_string_equal(json_string_value(json_array_get(arr, 2)), "ctl\n\t\x01");
    assert_string_equal(json_string_value(json_array_get(arr, 3)), "caf\xc3\xa9");
    /* Invalid UTF-8 becomes U+FFFD so the body stays valid JSON. */
    assert_string_equal(json_string_value(json_array_get(arr, 4)), "bad\xef\xbf\xbd" "byte");
    /* NUL travels escaped as \u0000. */
    assert_int_equal(json_string_length(json_array_get(arr, 5)), 6);
    assert_memory_equal(json_string_value(json_array_get(arr, 5)), "nul\0in", 6);
}

static void test_body_ollama(void **state)
{
    (void)state;
    json_t *j = build(BD_PROVIDER_OLLAMA, body_texts, body_lens, BODY_N);
    assert_string_equal(json_string_value(json_object_get(j, "model")), "my \"model\"");
    check_inputs(json_object_get(j, "input"));
    assert_int_equal(json_object_size(j), 2);
    json_decref(j);
    assert_string_equal(bd__model_wire_path(BD_PROVIDER_OLLAMA), "/api/embed");
}

static void test_body_openai(void **state)
{
    (void)state;
    json_t *j = build(BD_PROVIDER_OPENAI, body_texts, body_lens, BODY_N);
    assert_string_equal(json_string_value(json_object_get(j, "model")), "my \"model\"");
    assert_string_equal(json_string_value(json_object_get(j, "encoding_format")), "float");
    check_inputs(json_object_get(j, "input"));
    json_decref(j);
    assert_string_equal(bd__model_wire_path(BD_PROVIDER_OPENAI), "/v1/embeddings");
}

static void test_body_tei(void **state)
{
    (void)state;
    json_t *j = build(BD_PROVIDER_TEI, body_texts, body_lens, BODY_N);
    assert_null(json_object_get(j, "model"));
    check_inputs(json_object_get(j, "inputs"));
    json_decref(j);
    assert_string_equal(bd__model_wire_path(BD_PROVIDER_TEI), "/embed");
    assert_null(bd__model_wire_path(BD_PROVIDER_HASHING));
}

/* Build a TEI body of one text into b (appended: the caller resets). */
static void build_one(struct bd_buf *b, const char *text)
{
    bd__model_wire_begin(b, BD_PROVIDER_TEI, NULL);
    bd__model_wire_add(b, text, strlen(text), true);
    bd__model_wire_end(b, BD_PROVIDER_TEI);
    assert_false(b->is_failed);
}

/* A request body built into a reset buffer reuses its memory: a second request of equal
 * (or smaller) size neither moves nor grows it, and the buffer holds that request only. */
static void test_body_buffer_is_reused(void **state)
{
    struct bd_buf b;

    (void)state;
    bd_buf_init(&b);
    build_one(&b, "first request, the longest of the three");
    assert_string_equal(b.data, "{\"inputs\":[\"first request, the longest of the three\"]}");
    const char *data = b.data;
    size_t cap = b.cap;
    assert_non_null(data);

    const char *const next[] = { "second request, just as long as before!",
                                 "third, shorter" };
    const char *const want[] = { "{\"inputs\":[\"second request, just as long as before!\"]}",
                                 "{\"inputs\":[\"third, shorter\"]}" };
    assert_int_equal(strlen(next[0]), strlen("first request, the longest of the three"));
    for (int round = 0; round < 2; round++) {
        bd_buf_reset(&b);
        assert_ptr_equal(b.data, data);          /* the reset keeps the memory */
        assert_int_equal(b.cap, cap);
        build_one(&b, next[round]);
        assert_ptr_equal(b.data, data);          /* same memory, not a new allocation */
        assert_int_equal(b.cap, cap);            /* and no growth */
        assert_int_equal(b.len, strlen(want[round]));
        assert_memory_equal(b.data, want[round], b.len + 1);   /* this body only, NUL-ended */
    }
    bd_buf_free(&b);
}

/* ---------------------------------------------------------------------------------------
 * Good responses
 */

static void test_parse_ollama(void **state)
{
    float out[6];
    char msg[256];

    (void)state;
    assert_int_equal(parse(BD_PROVIDER_OLLAMA,
                           "{\"model\":\"m\",\"embeddings\":[[1,2.5,-3],[0.125,0,1e-3]],"
                           "\"total_duration\":1}", 2, 3, out, msg), BD_OK);
    const float want[6] = {1, 2.5f, -3, 0.125f, 0, 1e-3f};
    assert_memory_equal(out, want, sizeof want);
}

static void test_parse_openai_sorted_by_index(void **state)
{
    float out[6];
    char msg[256];

    (void)state;
    assert_int_equal(parse(BD_PROVIDER_OPENAI,
                           "{\"object\":\"list\",\"data\":["
                           "{\"index\":2,\"embedding\":[3,3]},"
                           "{\"index\":0,\"embedding\":[1,1]},"
                           "{\"index\":1,\"embedding\":[2,2]}],\"usage\":{}}",
                           3, 2, out, msg), BD_OK);
    const float want[6] = {1, 1, 2, 2, 3, 3};
    assert_memory_equal(out, want, sizeof want);
}

static void test_parse_tei(void **state)
{
    float out[4];
    char msg[256];

    (void)state;
    assert_int_equal(parse(BD_PROVIDER_TEI, " [[0.5,-0.5],[1,0]] ", 2, 2, out, msg), BD_OK);
    const float want[4] = {0.5f, -0.5f, 1, 0};
    assert_memory_equal(out, want, sizeof want);
}

/* ---------------------------------------------------------------------------------------
 * Malformations
 */

static void test_parse_not_json(void **state)
{
    (void)state;
    expect_bad(BD_PROVIDER_OLLAMA, "{\"embeddings\":[[1,2]", 1, 2, "response is not valid JSON");
    expect_bad(BD_PROVIDER_TEI, "<html>502</html>", 1, 2, "response is not valid JSON");
    expect_bad(BD_PROVIDER_TEI, "", 1, 2, "response is empty");
    expect_bad(BD_PROVIDER_TEI, "[[NaN,1]]", 1, 2, "not valid JSON");
}

static void test_parse_wrong_shape(void **state)
{
    (void)state;
    expect_bad(BD_PROVIDER_OLLAMA, "[[1,2]]", 1, 2, "not a JSON object");
    expect_bad(BD_PROVIDER_OLLAMA, "{\"embedding\":[1,2]}", 1, 2, "no \"embeddings\" array");
    expect_bad(BD_PROVIDER_OPENAI, "{\"data\":{}}", 1, 2, "no \"data\" array");
    expect_bad(BD_PROVIDER_OPENAI, "[]", 1, 2, "not a JSON object");
    expect_bad(BD_PROVIDER_OPENAI, "{\"data\":[[1,2]]}", 1, 2, "data[0] is not an object");
    expect_bad(BD_PROVIDER_OPENAI, "{\"data\":[{\"index\":0}]}", 1, 2, "no \"embedding\"");
    expect_bad(BD_PROVIDER_TEI, "{\"embeddings\":[[1,2]]}", 1, 2, "not a JSON array");
    expect_bad(BD_PROVIDER_TEI, "[{\"a\":1}]", 1, 2, "vector 0 is not an array");
}

static void test_parse_wrong_count(void **state)
{
    (void)state;
    expect_bad(BD_PROVIDER_TEI, "[[1],[2],[3]]", 4, 1, "model returned 3 vectors for 4 inputs");
    expect_bad(BD_PROVIDER_OLLAMA, "{\"embeddings\":[[1],[2]]}", 1, 1,
               "model returned 2 vectors for 1 inputs");
    expect_bad(BD_PROVIDER_OPENAI, "{\"data\":[]}", 1, 1, "model returned 0 vectors for 1");
}

static void test_parse_wrong_dimension(void **state)
{
    (void)state;
    expect_bad(BD_PROVIDER_TEI, "[[1,2,3],[1,2,3,4]]", 2, 3,
               "vector 1 has 4 dimensions, expected 3");
    expect_bad(BD_PROVIDER_OLLAMA, "{\"embeddings\":[[1,2]]}", 1, 3,
               "vector 0 has 2 dimensions, expected 3");
    expect_bad(BD_PROVIDER_OPENAI, "{\"data\":[{\"index\":0,\"embedding\":[1]}]}", 1, 2,
               "vector 0 has 1 dimensions, expected 2");
}

static void test_parse_bad_numbers(void **state)
{
    (void)state;
    expect_bad(BD_PROVIDER_TEI, "[[1,\"2\"]]", 1, 2, "vector 0 component 1 is not a number");
    expect_bad(BD_PROVIDER_TEI, "[[1,null]]", 1, 2, "vector 0 component 1 is not a number");
    expect_bad(BD_PROVIDER_TEI, "[[1e300,1]]", 1, 2, "vector 0 component 0 is not finite");
    expect_bad(BD_PROVIDER_TEI, "[[1,1e999]]", 1, 2, "not valid JSON");  /* jansson overflow */
}

static void test_parse_openai_bad_indices(void **state)
{
    (void)state;
    expect_bad(BD_PROVIDER_OPENAI,
               "{\"data\":[{\"index\":0,\"embedding\":[1]},{\"index\":0,\"embedding\":[2]}]}",
               2, 1, "data[1].index 0 appears twice");
    expect_bad(BD_PROVIDER_OPENAI, "{\"data\":[{\"index\":5,\"embedding\":[1]}]}", 1, 1,
               "data[0].index 5 is out of range");
    expect_bad(BD_PROVIDER_OPENAI, "{\"data\":[{\"index\":-1,\"embedding\":[1]}]}", 1, 1,
               "out of range");
    expect_bad(BD_PROVIDER_OPENAI, "{\"data\":[{\"index\":\"0\",\"embedding\":[1]}]}", 1, 1,
               "data[0].index is not an integer");
}

/* ---------------------------------------------------------------------------------------
 * Error text and UTF-8 cuts
 */

static void error_text(const char *body, char *out, size_t outlen)
{
    bd__model_wire_error_text(body, strlen(body), out, outlen);
}

static void test_error_text(void **state)
{
    char out[64];

    (void)state;
    error_text("{\"error\":\"model 'x' not found\"}", out, sizeof out);
    assert_string_equal(out, "model 'x' not found");
    error_text("{\"error\":{\"message\":\"Incorrect API key\",\"type\":\"invalid\"}}", out,
               sizeof out);
    assert_string_equal(out, "Incorrect API key");
    error_text("{\"error\":\"too long\",\"error_type\":\"Validation\"}", out, sizeof out);
    assert_string_equal(out, "too long");
    error_text("{\"detail\":\"Not Found\"}", out, sizeof out);
    assert_string_equal(out, "Not Found");
    error_text("<html>\r\n<b>Bad   Gateway</b>\n</html>", out, sizeof out);
    assert_string_equal(out, "<html> <b>Bad Gateway</b> </html>");
    error_text("", out, sizeof out);
    assert_string_equal(out, "(empty body)");
    error_text("{\"error\":\"\xc3\xa9\xc3\xa9\xc3\xa9\"}", out, 6);   /* room for 5 bytes */
    assert_string_equal(out, "\xc3\xa9\xc3\xa9");
}

static void test_utf8_cut(void **state)
{
    (void)state;
    assert_int_equal(bd__model_utf8_cut("abc", 3, 10), 3);
    assert_int_equal(bd__model_utf8_cut("abcdef", 6, 4), 4);
    assert_int_equal(bd__model_utf8_cut("a\xc3\xa9", 3, 2), 1);          /* inside é */
    assert_int_equal(bd__model_utf8_cut("\xe2\x82\xac\xe2\x82\xac", 6, 4), 3);
    assert_int_equal(bd__model_utf8_cut("\xe2\x82\xac\xe2\x82\xac", 6, 5), 3);
    assert_int_equal(bd__model_utf8_cut("\xf0\x9f\x98\x80x", 5, 3), 0);
    assert_int_equal(bd__model_utf8_cut("\xf0\x9f\x98\x80x", 5, 4), 4);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_body_ollama),
        cmocka_unit_test(test_body_openai),
        cmocka_unit_test(test_body_tei),
        cmocka_unit_test(test_body_buffer_is_reused),
        cmocka_unit_test(test_parse_ollama),
        cmocka_unit_test(test_parse_openai_sorted_by_index),
        cmocka_unit_test(test_parse_tei),
        cmocka_unit_test(test_parse_not_json),
        cmocka_unit_test(test_parse_wrong_shape),
        cmocka_unit_test(test_parse_wrong_count),
        cmocka_unit_test(test_parse_wrong_dimension),
        cmocka_unit_test(test_parse_bad_numbers),
        cmocka_unit_test(test_parse_openai_bad_indices),
        cmocka_unit_test(test_error_text),
        cmocka_unit_test(test_utf8_cut),
    };

    return cmocka_run_group_tests_name("model_wire", tests, NULL, NULL);
}
