/* test_batchctl_sse.c -- batchctl's Server-Sent Events parser (src/batchctl/sse.c): the
 * events of a stream are the same however its bytes are split; every line end; data lines
 * joined; comments, unknown fields and a byte order mark skipped; the callback's stop; the
 * bound on an event's size.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batchctl/sse.h"
#include "batchd/buf.h"

/* Every event as "<type>|<data>\n", to compare with an expected text. */
struct seen {
    struct bd_buf log;
    int stop_at;                      /* return 7 at this event (1-based); 0: never */
    int n;
};

static int on_event(const char *type, const char *data, size_t len, void *arg)
{
    struct seen *s = arg;

    assert_int_equal(strlen(data), len);          /* NUL-terminated at len */
    bd_buf_printf(&s->log, "%s|%s\n", type, data);
    s->n++;
    return s->stop_at == s->n ? 7 : 0;
}

/* Parse input fed in pieces of at most step bytes (0: whole); the events as text (caller
 * frees) and the last feed's answer into *rc. */
static char *parse(const char *input, size_t len, size_t step, size_t max_event, int *rc)
{
    struct bctl_sse p;
    struct seen s = {0};

    bd_buf_init(&s.log);
    bd_buf_puts(&s.log, "");
    bctl_sse_init(&p, max_event, on_event, &s);
    *rc = 0;
    for (size_t i = 0; i < len && *rc == 0;) {
        size_t n = step == 0 || len - i < step ? len - i : step;
        *rc = bctl_sse_feed(&p, input + i, n);
        i += n;
    }
    bctl_sse_free(&p);
    return bd_buf_steal(&s.log, NULL);
}

static void expect_events(const char *input, const char *want)
{
    size_t len = strlen(input);
    int rc;

    for (size_t step = 0; step <= len; step++) {
        char *got = parse(input, len, step, 0, &rc);
        assert_int_equal(rc, 0);
        if (strcmp(got, want) != 0)
            fail_msg("fed in pieces of %zu: got\n%s\nwant\n%s", step, got, want);
        free(got);
    }
    /* Split in two at every position. */
    for (size_t cut = 0; cut <= len; cut++) {
        struct bctl_sse p;
        struct seen s = {0};
        bd_buf_init(&s.log);
        bd_buf_puts(&s.log, "");
        bctl_sse_init(&p, 0, on_event, &s);
        assert_int_equal(bctl_sse_feed(&p, input, cut), 0);
        assert_int_equal(bctl_sse_feed(&p, input + cut, len - cut), 0);
        if (strcmp(s.log.data, want) != 0)
            fail_msg("cut at %zu: got\n%s\nwant\n%s", cut, s.log.data, want);
        bctl_sse_free(&p);
        bd_buf_free(&s.log);
    }
}

static void test_sse_same_events_when_batchd_stream_is_split_anywhere(void **state)
{
    (void)state;
    /* What batchd sends (docs/api.md, GET /jobs/{id}/events). */
    expect_events("event: progress\ndata: {\"status\":\"processing\",\"p\":1}\n\n"
                  ": keepalive\n\n"
                  "event: progress\ndata: {\"status\":\"processing\",\"p\":2}\n\n"
                  "event: final\ndata: {\"status\":\"completed\"}\n\n",
                  "progress|{\"status\":\"processing\",\"p\":1}\n"
                  "progress|{\"status\":\"processing\",\"p\":2}\n"
                  "final|{\"status\":\"completed\"}\n");
}

static void test_sse_accepts_every_line_end_when_mixed(void **state)
{
    (void)state;
    expect_events("event: a\r\ndata: 1\r\n\r\nevent: b\rdata: 2\r\rdata: 3\n\n",
                  "a|1\nb|2\nmessage|3\n");
}

static void test_sse_joins_data_lines_when_event_has_several(void **state)
{
    (void)state;
    /* One space after the colon goes, no more; "data" alone is an empty line. */
    expect_events("data: one\ndata:two\ndata:  three\ndata\n\n", "message|one\ntwo\n three\n\n");
}

static void test_sse_skips_comments_and_unknown_fields_when_present(void **state)
{
    (void)state;
    expect_events(": hello\nid: 7\nretry: 1000\nfoo: bar\nevent: x\ndata: y\n\n", "x|y\n");
}

static void test_sse_dispatches_nothing_when_event_has_no_data(void **state)
{
    (void)state;
    /* The name of an event without data does not carry over to the next one. */
    expect_events("event: lonely\n\ndata: z\n\n", "message|z\n");
}

static void test_sse_drops_event_when_stream_ends_before_blank_line(void **state)
{
    (void)state;
    expect_events("data: done\n\ndata: cut", "message|done\n");
}

static void test_sse_skips_bom_when_at_stream_start_only(void **state)
{
    (void)state;
    expect_events("\xef\xbb\xbf" "data: a\n\n", "message|a\n");
    /* Later, it is data like any other bytes. */
    expect_events("data: a\n\ndata: \xef\xbb\xbf" "b\n\n", "message|a\nmessage|\xef\xbb\xbf" "b\n");
}

static void test_sse_stops_when_callback_returns_nonzero(void **state)
{
    const char *in = "data: 1\n\ndata: 2\n\ndata: 3\n\n";
    struct bctl_sse p;
    struct seen s = {.stop_at = 2};
    (void)state;

    bd_buf_init(&s.log);
    bctl_sse_init(&p, 0, on_event, &s);
    assert_int_equal(bctl_sse_feed(&p, in, strlen(in)), 7);
    assert_int_equal(s.n, 2);
    assert_int_equal(bctl_sse_feed(&p, in, strlen(in)), 7);   /* sticky, reads nothing */
    assert_int_equal(s.n, 2);
    bctl_sse_free(&p);
    bd_buf_free(&s.log);
}

static void test_sse_fails_when_event_passes_max_event(void **state)
{
    char big[200];
    int rc;
    (void)state;

    /* A line longer than the bound, whole or in pieces. */
    memset(big, 'x', sizeof(big));
    memcpy(big, "data: ", 6);
    for (size_t step = 1; step <= sizeof(big); step *= 3) {
        free(parse(big, sizeof(big), step, 64, &rc));
        assert_int_equal(rc, -1);
    }
    /* Many short data lines that add up past it. */
    struct bd_buf in;
    bd_buf_init(&in);
    for (int i = 0; i < 20; i++)
        bd_buf_puts(&in, "data: 0123456789\n");
    bd_buf_puts(&in, "\n");
    free(parse(in.data, in.len, 0, 64, &rc));
    assert_int_equal(rc, -1);
    /* Under the bound it passes. */
    free(parse(in.data, in.len, 0, 1024, &rc));
    assert_int_equal(rc, 0);
    bd_buf_free(&in);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sse_same_events_when_batchd_stream_is_split_anywhere),
        cmocka_unit_test(test_sse_accepts_every_line_end_when_mixed),
        cmocka_unit_test(test_sse_joins_data_lines_when_event_has_several),
        cmocka_unit_test(test_sse_skips_comments_and_unknown_fields_when_present),
        cmocka_unit_test(test_sse_dispatches_nothing_when_event_has_no_data),
        cmocka_unit_test(test_sse_drops_event_when_stream_ends_before_blank_line),
        cmocka_unit_test(test_sse_skips_bom_when_at_stream_start_only),
        cmocka_unit_test(test_sse_stops_when_callback_returns_nonzero),
        cmocka_unit_test(test_sse_fails_when_event_passes_max_event),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
