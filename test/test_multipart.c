/* test_multipart.c -- the incremental multipart/form-data parser (src/multipart.c): the same
 * parts whether the body comes whole, byte by byte, or split in two or three at every
 * pair of points; preamble and epilogue; content that nearly holds a delimiter; part
 * headers (quoted, escaped, RFC 8187 filenames); refused bodies with their reasons; the
 * header and part limits; a callback that stops the parser; the Content-Type boundary.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batchd/buf.h"
#include "batchd/error.h"
#include "batchd/multipart.h"

/* What the callbacks saw, as text: B[name|filename|type|disposition] content E per part.
 * Content pieces are concatenated; pieces counts them (none may be empty). */
struct rec {
    struct bd_buf log;
    unsigned pieces;
    int stop_at_begin;                /* > 0: the n-th on_part_begin returns this error */
    unsigned begins;
};

static int rec_on_begin(void *arg, const struct bd_multipart_part *p)
{
    struct rec *r = arg;
    bd_buf_printf(&r->log, "B[%s|%s|%s|%s]", p->name ? p->name : "-",
                  p->filename ? p->filename : "-", p->content_type ? p->content_type : "-",
                  p->disposition ? p->disposition : "-");
    r->begins++;
    if (r->stop_at_begin > 0 && r->begins == (unsigned)r->stop_at_begin)
        return BD_ETOOLARGE;
    return BD_OK;
}

static int rec_on_data(void *arg, const char *d, size_t n)
{
    struct rec *r = arg;
    assert_true(n > 0);
    r->pieces++;
    bd_buf_append(&r->log, d, n);
    return BD_OK;
}

static int rec_on_end(void *arg)
{
    struct rec *r = arg;
    bd_buf_puts(&r->log, "E");
    return BD_OK;
}

static const struct bd_multipart_cbs rec_cbs = { rec_on_begin, rec_on_data, rec_on_end };

/* Parse body cut at the given offsets (sorted, each within the body); the verdict of the
 * feeds and the end, and the log in *out (caller frees). */
static int parse_split(const char *boundary, const char *body, size_t len, const size_t *cuts,
                       unsigned ncuts, char **out)
{
    struct rec r = { .pieces = 0 };
    struct bd_multipart *mp;
    size_t at = 0;
    int rc = BD_OK;

    bd_buf_init(&r.log);
    mp = bd_multipart_new(boundary, NULL, &rec_cbs, &r);
    assert_non_null(mp);
    for (unsigned i = 0; i <= ncuts && rc == BD_OK; i++) {
        size_t to = i < ncuts ? cuts[i] : len;
        rc = bd_multipart_feed(mp, body + at, to - at);
        at = to;
    }
    if (rc == BD_OK)
        rc = bd_multipart_end(mp);
    bd_buf_puts(&r.log, "");
    *out = bd_buf_steal(&r.log, NULL);
    if (*out == NULL)
        *out = strdup("");
    bd_multipart_free(mp);
    return rc;
}

static int parse_whole(const char *boundary, const char *body, char **out)
{
    return parse_split(boundary, body, strlen(body), NULL, 0, out);
}

/* The body the Node SDK sends (boundary "openai-..."), with a preamble and an epilogue,
 * content holding CR, LF, "--", and a line that starts like the delimiter but is not one. */
#define B "openai-3f9a0c1b2d"
static const char sample[] =
    "preamble, ignored\r\n"
    "--" B "\r\n"
    "Content-Disposition: form-data; name=\"purpose\"\r\n"
    "\r\n"
    "batch\r\n"
    "--" B "  \t\r\n"                 /* transport padding */
    "Content-Disposition: form-data; name=\"file\"; filename=\"in put.jsonl\"\r\n"
    "Content-Type: application/jsonl\r\n"
    "\r\n"
    "{\"a\":1}\r\n\r\n--openai-3f9a0c1b2X is not\r\n-- -\r\r\n--openai\n"
    "\r\n--" B "\r\n"
    "Content-Disposition: form-data; name=\"empty\"\r\n"
    "\r\n"
    "\r\n"
    "--" B "--\r\n"
    "epilogue --" B "\r\n";
static const char sample_log[] =
    "B[purpose|-|-|form-data]batchE"
    "B[file|in put.jsonl|application/jsonl|form-data]"
    "{\"a\":1}\r\n\r\n--openai-3f9a0c1b2X is not\r\n-- -\r\r\n--openai\nE"
    "B[empty|-|-|form-data]E";

static void test_multipart_gives_parts_when_fed_whole_or_byte_by_byte(void **state)
{
    size_t len = sizeof(sample) - 1;
    size_t *cuts = malloc(len * sizeof(*cuts));
    char *log;
    (void)state;

    assert_int_equal(parse_whole(B, sample, &log), BD_OK);
    assert_string_equal(log, sample_log);
    free(log);
    for (size_t i = 0; i < len; i++)
        cuts[i] = i;
    assert_int_equal(parse_split(B, sample, len, cuts, (unsigned)len, &log), BD_OK);
    assert_string_equal(log, sample_log);
    free(log);
    free(cuts);
}

static void test_multipart_gives_same_parts_when_split_at_every_pair_of_points(void **state)
{
    size_t len = sizeof(sample) - 1;
    (void)state;

    for (size_t a = 0; a <= len; a++) {
        for (size_t b = a; b <= len; b++) {
            size_t cuts[2] = { a, b };
            char *log;
            int rc = parse_split(B, sample, len, cuts, 2, &log);
            if (rc != BD_OK || strcmp(log, sample_log) != 0)
                fail_msg("split at %zu and %zu: rc %d log %s", a, b, rc, log);
            free(log);
        }
    }
}

/* Content handed over without copies: a large part fed whole comes as one piece. */
static void test_multipart_hands_content_in_one_piece_when_fed_whole(void **state)
{
    struct bd_buf body;
    struct rec r = { .pieces = 0 };
    (void)state;

    bd_buf_init(&body);
    bd_buf_init(&r.log);
    bd_buf_puts(&body, "--xyz\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n");
    for (int i = 0; i < 100000; i++)
        bd_buf_puts(&body, "line\n");
    bd_buf_puts(&body, "\r\n--xyz--");
    struct bd_multipart *mp = bd_multipart_new("xyz", NULL, &rec_cbs, &r);
    assert_int_equal(bd_multipart_feed(mp, body.data, body.len), BD_OK);
    assert_int_equal(bd_multipart_end(mp), BD_OK);
    assert_int_equal(r.pieces, 1);
    assert_int_equal(r.log.len, strlen("B[file|-|-|form-data]") + 500000 + 1);
    bd_multipart_free(mp);
    bd_buf_free(&body);
    bd_buf_free(&r.log);
}

static void test_multipart_reads_headers_when_quoted_escaped_or_extended(void **state)
{
    char *log;
    (void)state;

    assert_int_equal(parse_whole("b",
        "--b\r\n"
        "content-disposition:form-data;name=\"a\\\"q\";FILENAME=\"x\\\\y;z.jsonl\"\r\n"
        "CONTENT-TYPE:  text/plain  \r\n\r\nv\r\n"
        "--b\r\n"
        "Content-Disposition: form-data; name=plain; filename*=UTF-8''na%C3%AFve%20f.jsonl\r\n"
        "X-Other: whatever\r\n\r\nw\r\n"
        "--b\r\n\r\nno headers\r\n"
        "--b--", &log), BD_OK);
    assert_string_equal(log, "B[a\"q|x\\y;z.jsonl|text/plain|form-data]vE"
                             "B[plain|na\xc3\xaf" "ve f.jsonl|-|form-data]wE"
                             "B[-|-|-|-]no headersE");
    free(log);
}

/* Each malformed body: refused with BD_EINVAL and a reason, fed whole or byte by byte. */
static void test_multipart_refuses_body_when_malformed(void **state)
{
    static const struct { const char *body, *why; } bad[] = {
        { "", "no boundary delimiter" },
        { "just text\r\n", "no boundary delimiter" },
        { "--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nv", "before the closing" },
        { "--b\r\n\r\nv\r\n--b", "before the closing" },
        { "--bx\r\n\r\n--b--", "other bytes" },
        { "--b-\r\n", "single '-'" },
        { "--b\rx", "without CRLF" },
        { "--b \tx", "other bytes" },
        { "--b\r\nName: v\n\r\n--b--", "without CRLF" },
        { "--b\r\nName v\r\n\r\n--b--", "Name: value" },
        { "--b\r\n: v\r\n\r\n--b--", "Name: value" },
        { "--b\r\nA: v\r\n folded\r\n\r\n--b--", "folded" },
        { "--b\r\nA: v\rw\r\n\r\n--b--", "bare CR" },
        { "--b\r\nContent-Disposition: form-data; name=\"a\r\n\r\n--b--", "Content-Disp" },
        { "--b\r\nContent-Disposition: form-data; name\r\n\r\n--b--", "Content-Disp" },
        { "--b\r\nContent-Disposition: form-data; filename*=x\r\n\r\n--b--", "Content-Disp" },
    };
    (void)state;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        size_t len = strlen(bad[i].body);
        for (int mode = 0; mode < 2; mode++) {
            struct rec r = { .pieces = 0 };
            bd_buf_init(&r.log);
            struct bd_multipart *mp = bd_multipart_new("b", NULL, &rec_cbs, &r);
            int rc = BD_OK;
            if (mode == 0)
                rc = bd_multipart_feed(mp, bad[i].body, len);
            for (size_t k = 0; mode == 1 && k < len && rc == BD_OK; k++)
                rc = bd_multipart_feed(mp, bad[i].body + k, 1);
            if (rc == BD_OK)
                rc = bd_multipart_end(mp);
            if (rc != BD_EINVAL || strstr(bd_multipart_why(mp), bad[i].why) == NULL)
                fail_msg("body %zu mode %d: rc %d why \"%s\"", i, mode, rc,
                         bd_multipart_why(mp));
            /* Sticky: a later feed gives the same error and no callback. */
            unsigned begins = r.begins;
            assert_int_equal(bd_multipart_feed(mp, "--b\r\n\r\n", 7), BD_EINVAL);
            assert_int_equal(r.begins, begins);
            bd_multipart_free(mp);
            bd_buf_free(&r.log);
        }
    }
}

static void test_multipart_refuses_body_when_over_limits(void **state)
{
    struct bd_multipart_limits lim = { .max_header_bytes = 64, .max_parts = 2 };
    struct rec r = { .pieces = 0 };
    struct bd_multipart *mp;
    char hdr[200];
    (void)state;

    bd_buf_init(&r.log);
    mp = bd_multipart_new("b", &lim, &rec_cbs, &r);
    snprintf(hdr, sizeof(hdr), "--b\r\nX-Long: %060d\r\n\r\n", 0);
    assert_int_equal(bd_multipart_feed(mp, hdr, strlen(hdr)), BD_EINVAL);
    assert_non_null(strstr(bd_multipart_why(mp), "over 64 bytes"));
    bd_multipart_free(mp);

    /* 64 bytes of headers exactly pass. */
    mp = bd_multipart_new("b", &lim, &rec_cbs, &r);
    snprintf(hdr, sizeof(hdr), "--b\r\nX-Long: %052d\r\n\r\n", 0);
    assert_int_equal(strlen(hdr) - 5, 64);
    assert_int_equal(bd_multipart_feed(mp, hdr, strlen(hdr)), BD_OK);
    bd_multipart_free(mp);

    mp = bd_multipart_new("b", &lim, &rec_cbs, &r);
    static const char three[] = "--b\r\n\r\n1\r\n--b\r\n\r\n2\r\n--b\r\n\r\n3\r\n--b--";
    assert_int_equal(bd_multipart_feed(mp, three, sizeof(three) - 1), BD_EINVAL);
    assert_non_null(strstr(bd_multipart_why(mp), "more than 2 parts"));
    assert_int_equal(bd_multipart_get_parts(mp), 2);
    bd_multipart_free(mp);
    bd_buf_free(&r.log);
}

static void test_multipart_stops_when_callback_refuses(void **state)
{
    struct rec r = { .stop_at_begin = 2 };
    struct bd_multipart *mp;
    (void)state;

    bd_buf_init(&r.log);
    mp = bd_multipart_new(B, NULL, &rec_cbs, &r);
    assert_int_equal(bd_multipart_feed(mp, sample, sizeof(sample) - 1), BD_ETOOLARGE);
    assert_int_equal(r.begins, 2);
    assert_int_equal(bd_multipart_end(mp), BD_ETOOLARGE);
    bd_multipart_free(mp);
    bd_buf_free(&r.log);
}

static void test_multipart_finds_boundary_when_content_type_names_one(void **state)
{
    char b[BD_MULTIPART_BOUNDARY_MAX + 1];
    char long_ct[200];
    (void)state;

    assert_int_equal(bd_multipart_boundary("multipart/form-data; boundary=openai-12", b), BD_OK);
    assert_string_equal(b, "openai-12");
    assert_int_equal(bd_multipart_boundary("Multipart/Form-Data;charset=x; BOUNDARY=\"a b;c\"",
                                           b), BD_OK);
    assert_string_equal(b, "a b;c");
    assert_int_equal(bd_multipart_boundary("multipart/form-data;boundary=--x ; a=b", b), BD_OK);
    assert_string_equal(b, "--x");
    assert_int_equal(bd_multipart_boundary("application/json", b), BD_EMEDIATYPE);
    assert_int_equal(bd_multipart_boundary("multipart/form-datax; boundary=a", b), BD_EMEDIATYPE);
    assert_int_equal(bd_multipart_boundary(NULL, b), BD_EMEDIATYPE);
    assert_int_equal(bd_multipart_boundary("multipart/form-data", b), BD_EINVAL);
    assert_int_equal(bd_multipart_boundary("multipart/form-data; boundary=", b), BD_EINVAL);
    assert_int_equal(bd_multipart_boundary("multipart/form-data; boundary=\"x", b), BD_EINVAL);
    snprintf(long_ct, sizeof(long_ct), "multipart/form-data; boundary=%071d", 0);
    assert_int_equal(bd_multipart_boundary(long_ct, b), BD_EINVAL);
    snprintf(long_ct, sizeof(long_ct), "multipart/form-data; boundary=%070d", 0);
    assert_int_equal(bd_multipart_boundary(long_ct, b), BD_OK);
    assert_int_equal(strlen(b), 70);
    assert_null(bd_multipart_new("", NULL, NULL, NULL));
    assert_null(bd_multipart_new("a\rb", NULL, NULL, NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_multipart_gives_parts_when_fed_whole_or_byte_by_byte),
        cmocka_unit_test(test_multipart_gives_same_parts_when_split_at_every_pair_of_points),
        cmocka_unit_test(test_multipart_hands_content_in_one_piece_when_fed_whole),
        cmocka_unit_test(test_multipart_reads_headers_when_quoted_escaped_or_extended),
        cmocka_unit_test(test_multipart_refuses_body_when_malformed),
        cmocka_unit_test(test_multipart_refuses_body_when_over_limits),
        cmocka_unit_test(test_multipart_stops_when_callback_refuses),
        cmocka_unit_test(test_multipart_finds_boundary_when_content_type_names_one),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
