/* test_submit_scan.c -- unit tests for the resumable submit scanner (submit_scan.c).
 *
 * Each body's callbacks are recorded as text ("M key=value", "B", "I index line value",
 * "E items") and compared with the expected record; errors with their message. Bodies are
 * fed whole, in small chunks and byte by byte, which must give the same record. A 50 MB
 * body streamed in 64 KiB chunks checks the memory bound and prints the throughput. No
 * loop, no I/O.  SPDX-License-Identifier: MIT
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "batchd/buf.h"
#include "batchd/error.h"
#include "batchd/submit_scan.h"

struct rec {
    struct bd_buf text;
    int stop_at_item;      /* on_item returns BD_ECANCELED for this index (-1: never) */
    size_t calls;
};

static int rec_member(void *arg, const char *key, const char *value, size_t len)
{
    struct rec *r = arg;

    assert_int_equal(value[len], '\0');
    bd_buf_printf(&r->text, "M %s=%.*s\n", key, (int)len, value);
    r->calls++;
    return BD_OK;
}

static int rec_item(void *arg, size_t index, size_t line, const char *value, size_t len)
{
    struct rec *r = arg;

    assert_int_equal(value[len], '\0');
    bd_buf_printf(&r->text, "I %zu %zu %.*s\n", index, line, (int)len, value);
    r->calls++;
    return r->stop_at_item >= 0 && index == (size_t)r->stop_at_item ? BD_ECANCELED : BD_OK;
}

static int rec_begin(void *arg)
{
    struct rec *r = arg;

    bd_buf_puts(&r->text, "B\n");
    r->calls++;
    return BD_OK;
}

static int rec_end(void *arg, size_t items)
{
    struct rec *r = arg;

    bd_buf_printf(&r->text, "E %zu\n", items);
    r->calls++;
    return BD_OK;
}

static const struct bd_submit_scan_cbs rec_cbs = {
    .on_member = rec_member,
    .on_item = rec_item,
    .on_data_begin = rec_begin,
    .on_data_end = rec_end,
};

/* Scan body in chunks of `chunk` bytes (0: whole); the record ends with "= rc why". Caller
 * frees the result. */
static char *scan_chunked(enum bd_submit_format fmt, size_t limit, const char *body, size_t len,
                          size_t chunk, int stop_at_item)
{
    struct rec r = { .stop_at_item = stop_at_item };
    struct bd_submit_scan *s;
    int rc = BD_OK;

    bd_buf_init(&r.text);
    bd_buf_puts(&r.text, "");
    s = bd_submit_scan_new(fmt, limit, &rec_cbs, &r);
    assert_non_null(s);
    if (chunk == 0)
        chunk = len ? len : 1;
    for (size_t at = 0; at < len && rc == BD_OK; at += chunk)
        rc = bd_submit_scan_feed(s, body + at, len - at < chunk ? len - at : chunk);
    if (rc == BD_OK)
        rc = bd_submit_scan_end(s);
    bd_buf_printf(&r.text, "= %s %s", rc == BD_OK ? "OK" : bd_err_name(rc),
                  bd_submit_scan_why(s));
    bd_submit_scan_free(s);
    return bd_buf_steal(&r.text, NULL);
}

/* Scans body whole, in 7-byte chunks and byte by byte; all three must agree. */
static char *scan_fmt(enum bd_submit_format fmt, size_t limit, const char *body)
{
    size_t len = strlen(body);
    char *whole = scan_chunked(fmt, limit, body, len, 0, -1);
    char *seven = scan_chunked(fmt, limit, body, len, 7, -1);
    char *one = scan_chunked(fmt, limit, body, len, 1, -1);

    assert_string_equal(seven, whole);
    assert_string_equal(one, whole);
    free(seven);
    free(one);
    return whole;
}

#define EXPECT_SCAN(fmt, limit, body, expected)                                            \
    do {                                                                                   \
        char *got_ = scan_fmt((fmt), (limit), (body));                                     \
        assert_string_equal(got_, (expected));                                             \
        free(got_);                                                                        \
    } while (0)

#define EXPECT_JSON(body, expected) EXPECT_SCAN(BD_SUBMIT_JSON, 1 << 20, body, expected)
#define EXPECT_NDJSON(body, expected) EXPECT_SCAN(BD_SUBMIT_NDJSON, 1 << 20, body, expected)

static void submit_scan_passes_members_and_items_when_bulk_embed(void **state)
{
    (void)state;
    EXPECT_JSON("{\"operation\":\"bulk_embed\",\"model\":\"m\",\"data\":[{\"text\":\"a\"},"
                "{\"text\":\"b\",\"id\":\"x\",\"metadata\":{}}],\"options\":{\"priority\":"
                "\"high\"}}",
                "M operation=\"bulk_embed\"\n"
                "M model=\"m\"\n"
                "B\n"
                "I 0 0 {\"text\":\"a\"}\n"
                "I 1 0 {\"text\":\"b\",\"id\":\"x\",\"metadata\":{}}\n"
                "E 2\n"
                "M options={\"priority\":\"high\"}\n"
                "= OK ");
}

static void submit_scan_passes_options_after_data_when_bulk_insert(void **state)
{
    (void)state;
    EXPECT_JSON(" {\n  \"operation\" : \"bulk_insert\" ,\"collection\":\"docs\",\n"
                "  \"data\" : [ {\"id\":\"a\",\"embedding\":[1,2.5e-3,-0.0,4E+2],\n"
                "     \"metadata\":{\"k\":\"v\",\"tags\":[1,{\"x\":null}],\"deep\":{\"a\":"
                "{\"b\":[]}}}} ,\n"
                "   {\"id\":\"b\",\"embedding\":[0,1,2,3]} ] ,\n"
                "  \"options\" : {\"batch_size\":2,\"timeout_s\":30} }\r\n",
                "M operation=\"bulk_insert\"\n"
                "M collection=\"docs\"\n"
                "B\n"
                "I 0 0 {\"id\":\"a\",\"embedding\":[1,2.5e-3,-0.0,4E+2],\n"
                "     \"metadata\":{\"k\":\"v\",\"tags\":[1,{\"x\":null}],\"deep\":{\"a\":"
                "{\"b\":[]}}}}\n"
                "I 1 0 {\"id\":\"b\",\"embedding\":[0,1,2,3]}\n"
                "E 2\n"
                "M options={\"batch_size\":2,\"timeout_s\":30}\n"
                "= OK ");
}

static void submit_scan_passes_any_value_when_member_or_item(void **state)
{
    (void)state;
    EXPECT_JSON("{\"data\":[],\"n\":-12.5E-3,\"t\":true,\"f\":false,\"z\":null,\"s\":\"x\","
                "\"a\":[[],{}]}",
                "B\nE 0\nM n=-12.5E-3\nM t=true\nM f=false\nM z=null\nM s=\"x\"\n"
                "M a=[[],{}]\n= OK ");
    EXPECT_JSON("{\"data\":[0,-1,\"s\",null,[1,[2]],{\"a\":{}}]}",
                "B\nI 0 0 0\nI 1 0 -1\nI 2 0 \"s\"\nI 3 0 null\nI 4 0 [1,[2]]\n"
                "I 5 0 {\"a\":{}}\nE 6\n= OK ");
}

static void submit_scan_unescapes_key_when_escaped(void **state)
{
    (void)state;
    /* The key is unescaped (e, U+00E9, U+1F600 from a surrogate pair); values stay raw. */
    EXPECT_JSON("{\"op\\u0065r\\u00e9\\ud83d\\ude00\\n\":\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u0041\","
                "\"data\":[{\"text\":\"caf\xc3\xa9 \\ud834\\udd1e\"}]}",
                "M oper\xc3\xa9\xf0\x9f\x98\x80\n=\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u0041\"\n"
                "B\nI 0 0 {\"text\":\"caf\xc3\xa9 \\ud834\\udd1e\"}\nE 1\n= OK ");
}

struct bad {
    const char *body;
    const char *expected; /* the record, ending with the verdict */
};

static void submit_scan_names_where_when_body_invalid(void **state)
{
    static const struct bad cases[] = {
        { "{\"data\":[{\"text\":\"a\"},{\"text\":\"abc",
          "B\nI 0 0 {\"text\":\"a\"}\n= EINVAL data[1]: unterminated string at byte 30" },
        { "{\"data\":[{\"text\":\"a\\x\"}]}",
          "B\n= EINVAL data[0]: invalid escape '\\x' at byte 20" },
        { "{\"data\":[\"\\ud800x\"]}",
          "B\n= EINVAL data[0]: \\uD800 is not followed by a low surrogate at byte 16" },
        { "{\"data\":[\"\\ud800\\u0041\"]}",
          "B\n= EINVAL data[0]: \\uD800 is not followed by a low surrogate at byte 21" },
        { "{\"data\":[\"\\udc00\"]}",
          "B\n= EINVAL data[0]: lone low surrogate \\uDC00 at byte 15" },
        { "{\"data\":[\"\\u00g0\"]}",
          "B\n= EINVAL data[0]: unexpected 'g', expected a hex digit in \\uXXXX at byte 14" },
        { "{\"data\":[\"a\\u0000\"]}",
          "B\n= EINVAL data[0]: \\u0000 is not allowed in a string at byte 16" },
        { "{\"data\":[\"a\tb\"]}",
          "B\n= EINVAL data[0]: control byte 0x09 in a string (escape it) at byte 11" },
        { "{\"data\":[01]}",
          "B\n= EINVAL data[0]: unexpected '1', expected the number to end at byte 10" },
        { "{\"data\":[1.]}",
          "B\n= EINVAL data[0]: unexpected ']', expected a digit after '.' at byte 11" },
        { "{\"data\":[-]}",
          "B\n= EINVAL data[0]: unexpected ']', expected a digit after '-' at byte 10" },
        { "{\"data\":[1e+]}",
          "B\n= EINVAL data[0]: unexpected ']', expected a digit in the exponent at byte 12" },
        { "{\"data\":[1.5.2]}",
          "B\n= EINVAL data[0]: unexpected '.', expected the number to end at byte 12" },
        { "{\"data\":[tru]}",
          "B\n= EINVAL data[0]: invalid literal (expected 'true') at byte 12" },
        { "{\"data\":[{\"a\" 1}]}",
          "B\n= EINVAL data[0]: unexpected '1', expected ':' at byte 14" },
        { "{\"data\":[{\"a\":1 \"b\":2}]}",
          "B\n= EINVAL data[0]: unexpected '\"', expected ',' or '}' at byte 16" },
        { "{\"data\":[{\"a\":1,}]}",
          "B\n= EINVAL data[0]: unexpected '}', expected a member name at byte 16" },
        { "{\"data\":[1,]}",
          "B\nI 0 0 1\n= EINVAL data[1]: unexpected ']', expected a value at byte 11" },
        { "{\"data\":[1 2]}",
          "B\nI 0 0 1\n= EINVAL data: unexpected '2', expected ',' or ']' at byte 11" },
        { "{\"data\":[{\"text\":\"ok\"},{\"text\":\"caf\xe9\"}]}",
          "B\nI 0 0 {\"text\":\"ok\"}\n= EINVAL data[1]: a string is not valid UTF-8 in the value "
          "at byte 23" },
        { "{\"k\xff\":1,\"data\":[]}",
          "= EINVAL body: member name is not valid UTF-8 at byte 1" },
        { "{\"m\":\"\xed\xa0\x80\",\"data\":[]}",
          "= EINVAL member \"m\": a string is not valid UTF-8 in the value at byte 5" },
        { "[1]", "= EINVAL body: the body must be a JSON object at byte 0" },
        { "  ", "= EINVAL body: empty body (expected a JSON object) at byte 2" },
        { "{\"model\":\"m\"}", "M model=\"m\"\n= EINVAL body: no \"data\" array in the body at byte 12" },
        { "{\"data\":[],\"data\":[]}",
          "B\nE 0\n= EINVAL body: \"data\" appears twice at byte 11" },
        { "{\"data\":{}}", "= EINVAL body: \"data\" must be an array at byte 8" },
        { "{\"data\":[]} x",
          "B\nE 0\n= EINVAL body: unexpected 'x', expected nothing after the body's object at "
          "byte 12" },
        { "{\"data\":[]}{}",
          "B\nE 0\n= EINVAL body: unexpected '{', expected nothing after the body's object at "
          "byte 11" },
        { "{\"data\":[],}",
          "B\nE 0\n= EINVAL body: unexpected '}', expected a member name at byte 11" },
        { "{\"data\":[{\"a\":1}", "B\nI 0 0 {\"a\":1}\n= EINVAL data: unexpected end of body at byte 16" },
        { "{\"data\":[{\"a\":1", "B\n= EINVAL data[0]: unexpected end of body at byte 15" },
        { "{\"m\":1", "= EINVAL member \"m\": unexpected end of body at byte 6" },
        { "{\"data\":[\x01]}",
          "B\n= EINVAL data[0]: unexpected byte 0x01, expected a value at byte 9" },
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *got = scan_fmt(BD_SUBMIT_JSON, 1 << 20, cases[i].body);
        if (strcmp(got, cases[i].expected) != 0)
            fail_msg("case %zu: %s\n got: %s\nwant: %s", i, cases[i].body, got,
                     cases[i].expected);
        free(got);
    }
}

static void submit_scan_refuses_key_when_longer_than_limit(void **state)
{
    char body[600];
    char *got;

    (void)state;
    memset(body, 'k', sizeof(body));
    body[0] = '{';
    body[1] = '"';
    /* 256 bytes of name: accepted. */
    snprintf(body + 2 + BD_SUBMIT_SCAN_KEY_MAX, sizeof(body) - 2 - BD_SUBMIT_SCAN_KEY_MAX,
             "\":1,\"data\":[]}");
    got = scan_fmt(BD_SUBMIT_JSON, 1 << 20, body);
    assert_string_equal(got + strlen(got) - 5, "= OK ");
    free(got);
    /* 257: refused at the byte that passes the limit. */
    memset(body + 2, 'k', BD_SUBMIT_SCAN_KEY_MAX + 1);
    snprintf(body + 3 + BD_SUBMIT_SCAN_KEY_MAX, sizeof(body) - 3 - BD_SUBMIT_SCAN_KEY_MAX,
             "\":1,\"data\":[]}");
    got = scan_fmt(BD_SUBMIT_JSON, 1 << 20, body);
    assert_string_equal(got, "= EINVAL body: member name longer than 256 bytes at byte 258");
    free(got);
}

static void submit_scan_refuses_nesting_when_deeper_than_limit(void **state)
{
    char body[300];
    size_t n = 0;
    char *got;

    (void)state;
    /* 62 levels inside an item: the body's 64th level; accepted. */
    n += (size_t)snprintf(body, sizeof(body), "{\"data\":[");
    memset(body + n, '[', 62);
    memset(body + n + 62, ']', 62);
    snprintf(body + n + 124, sizeof(body) - n - 124, "]}");
    got = scan_fmt(BD_SUBMIT_JSON, 1 << 20, body);
    assert_string_equal(got + strlen(got) - 9, "E 1\n= OK ");
    free(got);
    memset(body + n, '[', 63);
    memset(body + n + 63, ']', 63);
    snprintf(body + n + 126, sizeof(body) - n - 126, "]}");
    got = scan_fmt(BD_SUBMIT_JSON, 1 << 20, body);
    assert_string_equal(got, "B\n= EINVAL data[0]: nested deeper than 64 levels at byte 71");
    free(got);
}

static void submit_scan_counts_lines_when_ndjson_has_blank_lines_and_crlf(void **state)
{
    (void)state;
    EXPECT_NDJSON("{\"text\":\"a\"}\r\n"
                  "\r\n"
                  "   \t \n"
                  "  {\"text\":\"b\", \"id\":\"x\"}  \r\n"
                  "\n"
                  "{\"text\":\"c\"}",
                  "I 0 1 {\"text\":\"a\"}\n"
                  "I 1 4 {\"text\":\"b\", \"id\":\"x\"}\n"
                  "I 2 6 {\"text\":\"c\"}\n"
                  "= OK ");
    /* A number or literal on the last line, with and without a newline. */
    EXPECT_NDJSON("12\n-3.5e2", "I 0 1 12\nI 1 2 -3.5e2\n= OK ");
    EXPECT_NDJSON("true\nnull\n", "I 0 1 true\nI 1 2 null\n= OK ");
    EXPECT_NDJSON("", "= OK ");
    EXPECT_NDJSON("\n\r\n \n", "= OK ");
}

static void submit_scan_names_line_when_ndjson_invalid(void **state)
{
    (void)state;
    EXPECT_NDJSON("{\"text\":\"a\"}\n\n{\"text\":\"b\"} {\"text\":\"c\"}\n",
                  "I 0 1 {\"text\":\"a\"}\nI 1 3 {\"text\":\"b\"}\n"
                  "= EINVAL line 3: unexpected '{', expected the end of the line (one value a "
                  "line) at byte 27");
    EXPECT_NDJSON("{\"text\":\n\"a\"}\n",
                  "= EINVAL line 1: the line ends inside a value at byte 8");
    EXPECT_NDJSON("1\n{\"text\":\"a", "I 0 1 1\n= EINVAL line 2: unterminated string at byte 10");
    EXPECT_NDJSON("1\n2\n{\"t\":\"\xc3\x28\"}",
                  "I 0 1 1\nI 1 2 2\n= EINVAL line 3: a string is not valid UTF-8 in the value "
                  "at byte 4");
    EXPECT_NDJSON("1\n-\n", "I 0 1 1\n= EINVAL line 2: unexpected byte 0x0a, expected a digit "
                            "after '-' at byte 3");
}

static void submit_scan_refuses_piece_when_over_limit(void **state)
{
    const char *body = "{\"data\":[{\"t\":\"12345678\"},{\"t\":\"123456789\"}],\"x\":1}";
    struct rec r = { .stop_at_item = -1 };
    struct bd_submit_scan *s;
    char *got;

    (void)state;
    /* Item 0 is 16 bytes (accepted), item 1 17: refused at its 17th byte. */
    got = scan_fmt(BD_SUBMIT_JSON, 16, body);
    assert_string_equal(got, "B\nI 0 0 {\"t\":\"12345678\"}\n"
                             "= ETOOLARGE data[1]: value longer than 16 bytes at byte 42");
    free(got);
    /* Numbers end on the byte after them: one of exactly the limit is accepted. */
    got = scan_fmt(BD_SUBMIT_JSON, 3, "{\"data\":[123,1234]}");
    assert_string_equal(got, "B\nI 0 0 123\n= ETOOLARGE data[1]: value longer than 3 bytes "
                             "at byte 16");
    free(got);
    got = scan_fmt(BD_SUBMIT_NDJSON, 3, "123\n1234");
    assert_string_equal(got, "I 0 1 123\n= ETOOLARGE line 2: value longer than 3 bytes at "
                             "byte 7");
    free(got);
    got = scan_fmt(BD_SUBMIT_JSON, 3, "{\"data\":[],\"m\":\"ab\"}");
    assert_string_equal(got, "B\nE 0\n= ETOOLARGE member \"m\": value longer than 3 bytes at "
                             "byte 18");
    free(got);

    /* Immediately: the feed that passes the limit fails, the piece not yet ended. */
    bd_buf_init(&r.text);
    s = bd_submit_scan_new(BD_SUBMIT_JSON, 1000, &rec_cbs, &r);
    assert_non_null(s);
    assert_int_equal(bd_submit_scan_feed(s, "{\"data\":[\"", 10), BD_OK);
    for (int i = 0; i < 99; i++)
        assert_int_equal(bd_submit_scan_feed(s, "0123456789", 10), BD_OK);
    assert_int_equal(bd_submit_scan_feed(s, "0123456789", 10), BD_ETOOLARGE);
    assert_string_equal(bd_submit_scan_why(s), "data[0]: value longer than 1000 bytes at byte 1009");
    assert_true(bd_submit_scan_get_memory(s) <= 2 * 1000 + 4096);
    bd_submit_scan_free(s);
    bd_buf_free(&r.text);
}

static void submit_scan_stops_and_sticks_when_callback_fails(void **state)
{
    const char *body = "{\"data\":[1,2,3]}";
    struct rec r = { .stop_at_item = 1 };
    struct bd_submit_scan *s;

    (void)state;
    bd_buf_init(&r.text);
    s = bd_submit_scan_new(BD_SUBMIT_JSON, 100, &rec_cbs, &r);
    assert_non_null(s);
    assert_int_equal(bd_submit_scan_feed(s, body, strlen(body)), BD_ECANCELED);
    assert_int_equal(r.calls, 3); /* B, item 0, item 1 (which stopped it) */
    assert_int_equal(bd_submit_scan_feed(s, "", 0), BD_ECANCELED);
    assert_int_equal(bd_submit_scan_end(s), BD_ECANCELED);
    assert_int_equal(r.calls, 3);
    assert_string_equal(bd_submit_scan_why(s), "data[1]: stopped by the consumer (ECANCELED) "
                                               "at byte 12");
    bd_submit_scan_free(s);
    bd_buf_free(&r.text);
}

static void submit_scan_gives_same_callbacks_when_fed_byte_by_byte(void **state)
{
    static const char *const bodies[] = {
        "{\"operation\":\"bulk_insert\",\"collection\":\"c\",\"data\":[{\"id\":\"a\","
        "\"embedding\":[1,2,3e-2],\"metadata\":{\"k\":\"\\u00e9\\ud83d\\ude00\"}},"
        "{\"id\":\"b\",\"embedding\":[-0.5,2,3]}],\"options\":{\"batch_size\":1}}",
        "{\"data\":[1,22,333,4.5e6,true,\"x\"],\"n\":12345}",
        "{\"data\":[{\"a\":1},{\"a\":2},{\"b\":\"\\ud800\"}]}",
    };

    (void)state;
    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        size_t len = strlen(bodies[i]);
        char *whole = scan_chunked(BD_SUBMIT_JSON, 1 << 20, bodies[i], len, 0, -1);
        for (size_t chunk = 1; chunk <= 13; chunk++) {
            char *got = scan_chunked(BD_SUBMIT_JSON, 1 << 20, bodies[i], len, chunk, -1);
            assert_string_equal(got, whole);
            free(got);
        }
        free(whole);
    }
}

/* ---- a big body, generated as it is fed ---------------------------------------------- */

struct big_gen {
    char item[2048];      /* one item's text, repeated */
    size_t item_len;
    size_t items_total;
    size_t items_done;    /* items fully written */
    size_t item_at;       /* bytes of the current item written */
    int phase;            /* 0 head, 1 items, 2 tail, 3 done */
    size_t at;            /* bytes of head/tail written */
};

static const char big_head[] = "{\"operation\":\"bulk_insert\",\"collection\":\"docs\",\"data\":[";
static const char big_tail[] = "],\"options\":{\"batch_size\":500}}";

static size_t big_fill(struct big_gen *g, char *out, size_t cap)
{
    size_t n = 0;

    while (n < cap && g->phase < 3) {
        const char *src;
        size_t src_len, *at;

        if (g->phase == 0) {
            src = big_head, src_len = sizeof(big_head) - 1, at = &g->at;
        } else if (g->phase == 2) {
            src = big_tail, src_len = sizeof(big_tail) - 1, at = &g->at;
        } else {
            src = g->item, src_len = g->item_len, at = &g->item_at;
            /* the separator comes before every item but the first */
            if (g->items_done == 0 && g->item_at == 0 && g->item[0] == ',') {
                g->item_at = 1;
            }
        }
        size_t take = src_len - *at < cap - n ? src_len - *at : cap - n;
        memcpy(out + n, src + *at, take);
        n += take;
        *at += take;
        if (*at == src_len) {
            *at = 0;
            if (g->phase == 1 && ++g->items_done < g->items_total)
                continue;
            g->phase++;
            g->at = 0;
        }
    }
    return n;
}

struct big_count {
    size_t items, bytes, members;
};

static int big_item(void *arg, size_t index, size_t line, const char *value, size_t len)
{
    struct big_count *c = arg;

    (void)line;
    if (index != c->items || value[0] != '{' || value[len - 1] != '}')
        return BD_EINTERNAL;
    c->items++;
    c->bytes += len;
    return BD_OK;
}

static int big_member(void *arg, const char *key, const char *value, size_t len)
{
    struct big_count *c = arg;

    (void)key, (void)value, (void)len;
    c->members++;
    return BD_OK;
}

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void submit_scan_keeps_memory_bounded_when_body_is_50mb(void **state)
{
    const struct bd_submit_scan_cbs cbs = { .on_member = big_member, .on_item = big_item };
    struct big_gen g = { .phase = 0 };
    struct big_count count = { 0 };
    const size_t limit = 64 * 1024;
    size_t n = 0, total = 0, max_mem = 0, chunk_cap = 64 * 1024;
    char *chunk = malloc(chunk_cap);
    struct bd_submit_scan *s;
    double t0, dt;

    (void)state;
    assert_non_null(chunk);
    /* ~1 KB item: an id, 96 floats, metadata with an escape. */
    n += (size_t)snprintf(g.item, sizeof(g.item), ",{\"id\":\"doc-000123\",\"embedding\":[");
    for (int d = 0; d < 96; d++)
        n += (size_t)snprintf(g.item + n, sizeof(g.item) - n, "%s%.6f", d ? "," : "",
                              (d * 37 % 101) / 101.0 - 0.5);
    n += (size_t)snprintf(g.item + n, sizeof(g.item) - n,
                          "],\"metadata\":{\"title\":\"caf\xc3\xa9 \\\"n\\\" \\u00e9\",\"n\":7}}");
    g.item_len = n;
    g.items_total = (50u << 20) / n;

    s = bd_submit_scan_new(BD_SUBMIT_JSON, limit, &cbs, &count);
    assert_non_null(s);
    t0 = now_s();
    for (;;) {
        size_t got = big_fill(&g, chunk, chunk_cap);
        if (got == 0)
            break;
        total += got;
        assert_int_equal(bd_submit_scan_feed(s, chunk, got), BD_OK);
        if (bd_submit_scan_get_memory(s) > max_mem)
            max_mem = bd_submit_scan_get_memory(s);
    }
    assert_int_equal(bd_submit_scan_end(s), BD_OK);
    dt = now_s() - t0;
    assert_int_equal(count.items, g.items_total);
    assert_int_equal(count.members, 3);
    assert_int_equal(count.bytes, g.items_total * (g.item_len - 1));
    assert_true(total > (49u << 20));
    /* The scanner holds one piece: its buffer grew to the item's size, never the body's. */
    assert_true(max_mem <= 2 * limit + 4096);
    print_message("submit_scan: %zu bytes, %zu items in %.3f s: %.0f MB/s (64 KiB feeds), "
                  "scanner memory %zu bytes\n",
                  total, count.items, dt, total / dt / 1e6, max_mem);
    bd_submit_scan_free(s);
    free(chunk);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(submit_scan_passes_members_and_items_when_bulk_embed),
        cmocka_unit_test(submit_scan_passes_options_after_data_when_bulk_insert),
        cmocka_unit_test(submit_scan_passes_any_value_when_member_or_item),
        cmocka_unit_test(submit_scan_unescapes_key_when_escaped),
        cmocka_unit_test(submit_scan_names_where_when_body_invalid),
        cmocka_unit_test(submit_scan_refuses_key_when_longer_than_limit),
        cmocka_unit_test(submit_scan_refuses_nesting_when_deeper_than_limit),
        cmocka_unit_test(submit_scan_counts_lines_when_ndjson_has_blank_lines_and_crlf),
        cmocka_unit_test(submit_scan_names_line_when_ndjson_invalid),
        cmocka_unit_test(submit_scan_refuses_piece_when_over_limit),
        cmocka_unit_test(submit_scan_stops_and_sticks_when_callback_fails),
        cmocka_unit_test(submit_scan_gives_same_callbacks_when_fed_byte_by_byte),
        cmocka_unit_test(submit_scan_keeps_memory_bounded_when_body_is_50mb),
    };

    return cmocka_run_group_tests_name("submit_scan", tests, NULL, NULL);
}
