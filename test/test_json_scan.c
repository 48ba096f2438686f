/* test_json_scan.c -- the fast JSON scanner: numbers equal strtod's, structure checks
 * accept what JSON accepts and refuse the rest, float arrays count and stop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batchd/json_scan.h"

static const char *scan_end(const char *s)
{
    return s + strlen(s);
}

static void test_json_scan_numbers_equal_strtod_when_printed_by_g9(void **state)
{
    char buf[64];
    uint64_t x = 88172645463325252ULL;
    (void)state;
    for (int i = 0; i < 200000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        float f;
        uint32_t bits = (uint32_t)x;
        memcpy(&f, &bits, 4);
        if (!isfinite(f))
            continue;
        snprintf(buf, sizeof(buf), "%.9g", f);
        double d;
        const char *e = bd_json_parse_number(buf, scan_end(buf), &d);
        assert_non_null(e);
        assert_ptr_equal(e, scan_end(buf));
        /* The float the server meant comes back exactly. */
        assert_true((float)d == f);
    }
}

static void test_json_scan_numbers_parse_every_json_form_when_valid(void **state)
{
    static const struct { const char *s; double want; } ok[] = {
        { "0", 0 }, { "-0", -0.0 }, { "12", 12 }, { "-3.25", -3.25 }, { "1e3", 1000 },
        { "1E-3", 0.001 }, { "2.5e+2", 250 }, { "0.000001", 1e-6 },
        { "123456789012345678901234", 1.2345678901234568e23 }, { "1e-30", 1e-30 },
        { "0.12345678901234567890123", 0.12345678901234568 },
        /* longer than any stack copy: the magnitude must survive */
        { "1000000000000000000000000000000000000000000000000000000000000000000000000", 1e72 },
    };
    static const char *const bad[] = { "", "-", "+1", ".5", "1.", "1e", "1e+", "-x", "a" };
    (void)state;
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        double d = -1;
        const char *e = bd_json_parse_number(ok[i].s, scan_end(ok[i].s), &d);
        assert_ptr_equal(e, scan_end(ok[i].s));
        assert_true(fabs(d - ok[i].want) <= fabs(ok[i].want) * 1e-15);
        assert_int_equal(signbit(d) != 0, signbit(ok[i].want) != 0);   /* "-0" is -0.0 */
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        double d;
        assert_null(bd_json_parse_number(bad[i], scan_end(bad[i]), &d));
    }
}

static void test_json_scan_skip_value_follows_json_when_scanning(void **state)
{
    static const char *const ok[] = {
        "{}", "[]", "\"a\\\"b\"", "true", "false", "null", "-1.5e3",
        "{\"a\":[1,2,{\"b\":null}],\"c\":\"x\"}", " [ 1 , [ ] , { } ] ",
    };
    static const char *const bad[] = {
        "{", "[1,", "[1 2]", "{\"a\" 1}", "{a:1}", "\"abc", "tru", "[1,]", "{\"a\":1,}",
        "\"a\nb\"", "]", "{\"a\":1]",
    };
    (void)state;
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        const char *e = bd_json_skip_value(ok[i], scan_end(ok[i]));
        assert_non_null(e);
        assert_ptr_equal(bd_json_skip_ws(e, scan_end(ok[i])), scan_end(ok[i]));
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *e = bd_json_skip_value(bad[i], scan_end(bad[i]));
        assert_true(e == NULL || bd_json_skip_ws(e, scan_end(bad[i])) != scan_end(bad[i]));
    }
}

static void test_json_scan_float_array_counts_and_stops_when_longer_than_max(void **state)
{
    float out[3] = { 0 };
    unsigned n = 0;
    const char *a = "[1, 2.5 ,-3e1, 4]";
    (void)state;
    assert_ptr_equal(bd_json_parse_float_array(a, scan_end(a), out, 3, &n), scan_end(a));
    assert_int_equal(n, 4);
    assert_true(out[0] == 1.0f && out[1] == 2.5f && out[2] == -30.0f);
    const char *e = "[]";
    assert_ptr_equal(bd_json_parse_float_array(e, scan_end(e), out, 3, &n), scan_end(e));
    assert_int_equal(n, 0);
    static const char *const bad[] = { "[1,\"2\"]", "[1,[2]]", "[1e39]", "[1,", "1", "[1 2]" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_null(bd_json_parse_float_array(bad[i], scan_end(bad[i]), out, 3, &n));
}

static void test_json_scan_find_member_returns_value_when_key_present(void **state)
{
    const char *o = "{\"model\":\"m\",\"emb\":{\"x\":1},\"embeddings\":[[1]]}";
    (void)state;
    const char *v = bd_json_find_member(o, scan_end(o), "embeddings");
    assert_ptr_equal(v, strstr(o, "[[1]]"));   /* the value of "embeddings", not of "emb" */
    assert_ptr_equal(bd_json_find_member(o, scan_end(o), "emb"), strstr(o, "{\"x\""));
    assert_null(bd_json_find_member(o, scan_end(o), "missing"));
    assert_null(bd_json_find_member("[1]", scan_end("[1]"), "a"));
    assert_null(bd_json_find_member("{}", scan_end("{}"), "a"));
    /* The key ends the text: no value to point at (the caller would read past the end). */
    assert_null(bd_json_find_member("{\"a\" : ", scan_end("{\"a\" : "), "a"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_scan_numbers_equal_strtod_when_printed_by_g9),
        cmocka_unit_test(test_json_scan_numbers_parse_every_json_form_when_valid),
        cmocka_unit_test(test_json_scan_skip_value_follows_json_when_scanning),
        cmocka_unit_test(test_json_scan_float_array_counts_and_stops_when_longer_than_max),
        cmocka_unit_test(test_json_scan_find_member_returns_value_when_key_present),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
