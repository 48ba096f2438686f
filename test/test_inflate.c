/* test_inflate.c -- streaming gzip inflate (src/inflate.c): round trips whole, byte by byte
 * and under an output budget; concatenated members; a 1 GiB zero bomb stopped at 16 MiB in
 * bounded time and memory; corrupt, truncated and trailing input; sticky callback errors.
 *
 * All gzip data is made here with zlib's deflate. The bomb is built without deflating
 * 1 GiB (seconds of CPU): after Z_FULL_FLUSH deflate forgets its history, so each further
 * MiB of zeros compresses to the same bytes; one such segment is repeated and the trailer
 * (CRC-32 and length of the whole) is computed with crc32_combine. A smaller bomb inflated
 * to its end proves the construction valid (zlib checks that trailer).
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
#include <sys/resource.h>
#include <time.h>
#include <zlib.h>

#include "batchd/buf.h"
#include "batchd/error.h"
#include "batchd/inflate.h"

#define MIB ((size_t)1 << 20)

/* -- helpers ----------------------------------------------------------------------- */

/* gzip of data[0..len) as one member (deflate, windowBits 15+16). Caller frees. */
static unsigned char *gz(const void *data, size_t len, size_t *out_len)
{
    z_stream s;
    memset(&s, 0, sizeof s);
    assert_int_equal(deflateInit2(&s, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY), Z_OK);
    size_t cap = deflateBound(&s, len) + 32;
    unsigned char *out = malloc(cap);
    assert_non_null(out);
    s.next_in = (Bytef *)data;
    s.avail_in = (uInt)len;
    s.next_out = out;
    s.avail_out = (uInt)cap;
    assert_int_equal(deflate(&s, Z_FINISH), Z_STREAM_END);
    *out_len = cap - s.avail_out;
    deflateEnd(&s);
    return out;
}

/* len bytes of text that compresses well but not trivially (so output comes in many
 * 64 KiB pieces from a short input). Caller frees. */
static char *sample_text(size_t len)
{
    char *t = malloc(len);
    uint32_t x = 12345;
    assert_non_null(t);
    for (size_t i = 0; i < len; i++) {
        x = x * 1103515245u + 12345u;
        t[i] = (x >> 16) % 7 == 0 ? '\n' : (char)('a' + (x >> 20) % 16);
    }
    return t;
}

/* What the output callback saw. */
struct sink {
    struct bd_buf got;       /* the bytes, unless is_counting_only */
    bool is_counting_only;   /* big outputs: count and check for zeros, keep nothing */
    bool is_all_zero;
    size_t total;
    size_t calls;
    size_t max_piece;
    size_t fail_after;       /* 0: never; else return fail_with on call number fail_after */
    int fail_with;
};

static void sink_init(struct sink *k)
{
    memset(k, 0, sizeof *k);
    bd_buf_init(&k->got);
    k->is_all_zero = true;
}

static int sink_on_data(void *arg, const char *out, size_t n)
{
    struct sink *k = arg;

    assert_true(n > 0 && n <= BD_INFLATE_CHUNK);
    k->calls++;
    k->total += n;
    if (n > k->max_piece)
        k->max_piece = n;
    if (k->is_counting_only) {
        for (size_t i = 0; i < n; i++)
            if (out[i] != 0)
                k->is_all_zero = false;
    } else {
        bd_buf_append(&k->got, out, n);
        assert_false(k->got.is_failed);
    }
    if (k->fail_after != 0 && k->calls == k->fail_after)
        return k->fail_with;
    return BD_OK;
}

/* Feed in whole at once, or in pieces of `step` bytes; returns the first error or end's. */
static int inflate_all(struct bd_inflate *z, const unsigned char *in, size_t len, size_t step,
                       struct sink *k)
{
    if (step == 0)
        step = len ? len : 1;
    for (size_t at = 0; at < len; at += step) {
        size_t n = len - at < step ? len - at : step;
        int rc = bd_inflate_feed(z, in + at, n, sink_on_data, k);
        if (rc != BD_OK)
            return rc;
    }
    return bd_inflate_end(z);
}

static struct bd_inflate *new_inflate(size_t max_out)
{
    int err = -1;
    struct bd_inflate *z = bd_inflate_new(max_out, &err);
    assert_non_null(z);
    assert_int_equal(err, BD_OK);
    return z;
}

static long max_rss_kib(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Append what deflate makes of in[0..len) with the given flush to out (sized by the caller). */
static size_t deflate_piece(z_stream *s, const void *in, size_t len, int flush,
                            unsigned char *out, size_t cap)
{
    s->next_in = (Bytef *)in;
    s->avail_in = (uInt)len;
    s->next_out = out;
    s->avail_out = (uInt)cap;
    int rc = deflate(s, flush);
    assert_true(rc == Z_OK || rc == Z_STREAM_END);
    assert_int_equal(s->avail_in, 0);
    assert_true(s->avail_out > 0);   /* all of it fit: nothing left inside deflate */
    return cap - s->avail_out;
}

/* A valid gzip member holding mib MiB of zero bytes, about 1 KiB per MiB. Caller frees. */
static unsigned char *zero_bomb(size_t mib, size_t *out_len)
{
    const size_t cap = 64 * 1024;
    unsigned char *zeros = calloc(1, MIB);
    unsigned char *first = malloc(cap), *seg = malloc(cap), *again = malloc(cap);
    unsigned char *fin = malloc(cap);
    z_stream s;

    assert_true(zeros && first && seg && again && fin && mib >= 2);
    memset(&s, 0, sizeof s);
    assert_int_equal(deflateInit2(&s, 9, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY), Z_OK);
    size_t first_len = deflate_piece(&s, zeros, MIB, Z_FULL_FLUSH, first, cap); /* + header */
    size_t seg_len = deflate_piece(&s, zeros, MIB, Z_FULL_FLUSH, seg, cap);
    size_t again_len = deflate_piece(&s, zeros, MIB, Z_FULL_FLUSH, again, cap);
    assert_int_equal(seg_len, again_len);               /* the premise of the repetition */
    assert_memory_equal(seg, again, seg_len);
    size_t fin_len = deflate_piece(&s, NULL, 0, Z_FINISH, fin, cap);
    assert_true(fin_len > 8);
    fin_len -= 8;                                       /* drop the trailer for 3 MiB */
    deflateEnd(&s);

    uLong crc_mib = crc32(0L, zeros, (uInt)MIB), crc = crc_mib;
    for (size_t i = 1; i < mib; i++)
        crc = crc32_combine(crc, crc_mib, (z_off_t)MIB);
    uint32_t isize = (uint32_t)(mib * MIB);              /* mod 2^32, as RFC 1952 says */

    size_t len = first_len + (mib - 1) * seg_len + fin_len + 8;
    unsigned char *bomb = malloc(len), *p = bomb;
    assert_non_null(bomb);
    memcpy(p, first, first_len);
    p += first_len;
    for (size_t i = 1; i < mib; i++, p += seg_len)
        memcpy(p, seg, seg_len);
    memcpy(p, fin, fin_len);
    p += fin_len;
    for (int i = 0; i < 4; i++)
        *p++ = (unsigned char)(crc >> (8 * i));
    for (int i = 0; i < 4; i++)
        *p++ = (unsigned char)(isize >> (8 * i));
    assert_true((size_t)(p - bomb) == len);
    free(zeros), free(first), free(seg), free(again), free(fin);
    *out_len = len;
    return bomb;
}

/* -- cases ------------------------------------------------------------------------- */

/* Runs first (see main): the peak RSS of the process is still that of a fresh runner, so
 * growth of the peak measures this case alone. */
static void test_inflate_stops_bomb_when_output_passes_max_out(void **state)
{
    size_t len;
    unsigned char *bomb = zero_bomb(1024, &len);       /* 1 GiB of zeros */
    struct sink k;
    (void)state;

    assert_true(len < 2 * MIB);                        /* a bomb: > 500x */
    sink_init(&k);
    k.is_counting_only = true;
    struct bd_inflate *z = new_inflate(16 * MIB);
    long rss_before = max_rss_kib();
    double t0 = now_s();
    int rc = BD_OK;
    size_t at = 0;
    for (; at < len && rc == BD_OK; at += 64 * 1024)   /* as a socket would deliver it */
        rc = bd_inflate_feed(z, bomb + at, len - at < 64 * 1024 ? len - at : 64 * 1024,
                             sink_on_data, &k);
    double took = now_s() - t0;
    long rss_growth_kib = max_rss_kib() - rss_before;

    assert_int_equal(rc, BD_ETOOLARGE);
    assert_int_equal(bd_err_http_status(rc), 413);
    assert_true(at < len / 8);                         /* stopped early in the input */
    assert_int_equal(k.total, 16 * MIB);               /* exactly the limit, never more */
    assert_int_equal(bd_inflate_total_out(z), 16 * MIB);
    assert_true(k.is_all_zero);
    assert_true(k.max_piece <= BD_INFLATE_CHUNK);
    assert_non_null(strstr(bd_inflate_why(z), "16777216"));
    /* Generous: 16 MiB of zeros inflate in ~20 ms; memory is one 64 KiB buffer + zlib's. */
    assert_true(took < 5.0);
    assert_true(rss_growth_kib < 8 * 1024);
    /* Sticky: nothing more comes out. */
    assert_int_equal(bd_inflate_feed(z, bomb + at, 16, sink_on_data, &k), BD_ETOOLARGE);
    assert_int_equal(bd_inflate_end(z), BD_ETOOLARGE);
    assert_int_equal(k.total, 16 * MIB);
    bd_inflate_free(z);
    free(bomb);
    printf("# bomb: %zu compressed bytes, stopped at 16 MiB in %.3f s, max RSS +%ld KiB\n",
           len, took, rss_growth_kib);
}

/* The bomb construction is valid gzip: inflated to its end it passes zlib's CRC-32 and
 * length checks. Also the limit's edge: exactly max_out passes, one byte less does not. */
static void test_inflate_accepts_exact_limit_when_output_equals_max_out(void **state)
{
    size_t len;
    unsigned char *bomb = zero_bomb(64, &len);
    struct sink k;
    (void)state;

    sink_init(&k);
    k.is_counting_only = true;
    struct bd_inflate *z = new_inflate(64 * MIB);
    assert_int_equal(inflate_all(z, bomb, len, 0, &k), BD_OK);
    assert_int_equal(k.total, 64 * MIB);
    assert_true(k.is_all_zero);
    assert_int_equal(bd_inflate_members(z), 1);
    assert_string_equal(bd_inflate_why(z), "");
    bd_inflate_free(z);

    sink_init(&k);
    k.is_counting_only = true;
    z = new_inflate(64 * MIB - 1);
    assert_int_equal(inflate_all(z, bomb, len, 0, &k), BD_ETOOLARGE);
    assert_int_equal(k.total, 64 * MIB - 1);
    bd_inflate_free(z);
    free(bomb);

    /* Small and exact, with the bytes compared. */
    size_t glen;
    unsigned char *g = gz("hello, world", 12, &glen);
    sink_init(&k);
    z = new_inflate(12);
    assert_int_equal(inflate_all(z, g, glen, 1, &k), BD_OK);
    assert_int_equal(k.got.len, 12);
    bd_inflate_free(z);
    bd_buf_free(&k.got);
    sink_init(&k);
    z = new_inflate(11);
    assert_int_equal(inflate_all(z, g, glen, 0, &k), BD_ETOOLARGE);
    assert_int_equal(k.got.len, 11);
    assert_memory_equal(k.got.data, "hello, worl", 11);
    bd_inflate_free(z);
    bd_buf_free(&k.got);
    free(g);
}

static void test_inflate_round_trips_when_fed_whole_or_in_pieces(void **state)
{
    const size_t n = 300 * 1000;
    char *text = sample_text(n);
    size_t glen;
    unsigned char *g = gz(text, n, &glen);
    const size_t steps[] = { 0, 1, 2, 3, 7, 10, 4096, 65536 };
    (void)state;

    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        struct sink k;
        sink_init(&k);
        struct bd_inflate *z = new_inflate(SIZE_MAX);
        assert_int_equal(inflate_all(z, g, glen, steps[i], &k), BD_OK);
        assert_int_equal(k.got.len, n);
        assert_memory_equal(k.got.data, text, n);
        assert_int_equal(bd_inflate_total_out(z), n);
        assert_int_equal(bd_inflate_members(z), 1);
        assert_true(k.max_piece <= BD_INFLATE_CHUNK);
        if (steps[i] == 0)
            assert_int_equal(k.max_piece, BD_INFLATE_CHUNK);   /* whole: full pieces */
        bd_inflate_free(z);
        bd_buf_free(&k.got);
    }
    free(g);
    free(text);
}

/* `cat a.gz b.gz empty.gz`: one body, the data of all members in order. */
static void test_inflate_joins_members_when_gzip_files_are_concatenated(void **state)
{
    const size_t na = 100 * 1000;
    char *a = sample_text(na);
    const char *b = "the second member\n";
    size_t la, lb, le;
    unsigned char *ga = gz(a, na, &la), *gb = gz(b, strlen(b), &lb), *ge = gz("", 0, &le);
    size_t len = la + lb + le;
    unsigned char *cat = malloc(len);
    (void)state;

    assert_non_null(cat);
    memcpy(cat, ga, la);
    memcpy(cat + la, gb, lb);
    memcpy(cat + la + lb, ge, le);
    const size_t steps[] = { 0, 1, 5, 1000 };
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        struct sink k;
        sink_init(&k);
        struct bd_inflate *z = new_inflate(SIZE_MAX);
        assert_int_equal(inflate_all(z, cat, len, steps[i], &k), BD_OK);
        assert_int_equal(bd_inflate_members(z), 3);
        assert_int_equal(k.got.len, na + strlen(b));
        assert_memory_equal(k.got.data, a, na);
        assert_memory_equal(k.got.data + na, b, strlen(b));
        bd_inflate_free(z);
        bd_buf_free(&k.got);
    }

    /* The limit counts all members together. */
    struct sink k;
    sink_init(&k);
    struct bd_inflate *z = new_inflate(na + 3);
    assert_int_equal(inflate_all(z, cat, len, 0, &k), BD_ETOOLARGE);
    assert_int_equal(k.got.len, na + 3);
    bd_inflate_free(z);
    bd_buf_free(&k.got);

    /* A body that ends exactly between members is complete. */
    sink_init(&k);
    z = new_inflate(SIZE_MAX);
    assert_int_equal(inflate_all(z, cat, la + lb, 0, &k), BD_OK);
    assert_int_equal(bd_inflate_members(z), 2);
    bd_inflate_free(z);
    bd_buf_free(&k.got);

    free(cat), free(ga), free(gb), free(ge), free(a);
}

/* An empty payload is fine (a member of zero bytes); an empty body is not gzip. */
static void test_inflate_refuses_empty_body_when_no_member_was_sent(void **state)
{
    struct sink k;
    (void)state;

    sink_init(&k);
    struct bd_inflate *z = new_inflate(SIZE_MAX);
    assert_int_equal(bd_inflate_end(z), BD_EINVAL);
    assert_non_null(strstr(bd_inflate_why(z), "empty body"));
    bd_inflate_free(z);

    z = new_inflate(SIZE_MAX);
    assert_int_equal(bd_inflate_feed(z, NULL, 0, sink_on_data, &k), BD_OK);
    assert_int_equal(bd_inflate_feed(z, "", 0, sink_on_data, &k), BD_OK);
    assert_int_equal(bd_inflate_end(z), BD_EINVAL);
    assert_int_equal(k.calls, 0);
    bd_inflate_free(z);

    size_t le;
    unsigned char *ge = gz("", 0, &le);
    z = new_inflate(0);
    assert_int_equal(inflate_all(z, ge, le, 1, &k), BD_OK);
    assert_int_equal(k.calls, 0);
    assert_int_equal(bd_inflate_members(z), 1);
    bd_inflate_free(z);
    free(ge);
    bd_buf_free(&k.got);
}

static void test_inflate_refuses_header_when_not_gzip(void **state)
{
    const char *plain = "{\"items\": []}";
    unsigned char zlib_data[64];
    uLongf zlen = sizeof zlib_data;
    struct sink k;
    (void)state;

    sink_init(&k);
    struct bd_inflate *z = new_inflate(SIZE_MAX);
    assert_int_equal(bd_inflate_feed(z, plain, strlen(plain), sink_on_data, &k), BD_EINVAL);
    assert_non_null(strstr(bd_inflate_why(z), "not a gzip body"));
    assert_int_equal(bd_inflate_end(z), BD_EINVAL);    /* sticky */
    bd_inflate_free(z);

    /* A zlib stream (RFC 1950) is not what Content-Encoding: gzip names. */
    assert_int_equal(compress(zlib_data, &zlen, (const Bytef *)plain, strlen(plain)), Z_OK);
    z = new_inflate(SIZE_MAX);
    assert_int_equal(bd_inflate_feed(z, zlib_data, zlen, sink_on_data, &k), BD_EINVAL);
    bd_inflate_free(z);

    /* The gzip magic, then an unknown compression method (CM must be 8). */
    size_t glen;
    unsigned char *g = gz(plain, strlen(plain), &glen);
    g[2] = 7;
    z = new_inflate(SIZE_MAX);
    assert_int_equal(inflate_all(z, g, glen, 1, &k), BD_EINVAL);
    assert_non_null(strstr(bd_inflate_why(z), "not a gzip body"));
    bd_inflate_free(z);
    free(g);
    assert_int_equal(k.calls, 0);
    bd_buf_free(&k.got);
}

/* Each member's trailer is checked: a wrong CRC-32 or length, or damaged deflate data. */
static void test_inflate_refuses_data_when_check_fails(void **state)
{
    const size_t n = 50 * 1000;
    char *text = sample_text(n);
    size_t glen;
    unsigned char *g = gz(text, n, &glen);
    struct sink k;
    (void)state;

    g[glen - 8] ^= 0x01;                               /* CRC-32 */
    sink_init(&k);
    struct bd_inflate *z = new_inflate(SIZE_MAX);
    assert_int_equal(inflate_all(z, g, glen, 0, &k), BD_EINVAL);
    assert_string_equal(bd_inflate_why(z), "gzip member 1: incorrect data check");
    assert_int_equal(k.got.len, n);                    /* delivered, then refused: provisional */
    bd_inflate_free(z);
    bd_buf_free(&k.got);
    g[glen - 8] ^= 0x01;

    g[glen - 1] ^= 0x10;                               /* ISIZE */
    sink_init(&k);
    z = new_inflate(SIZE_MAX);
    assert_int_equal(inflate_all(z, g, glen, 3, &k), BD_EINVAL);
    assert_string_equal(bd_inflate_why(z), "gzip member 1: incorrect length check");
    bd_inflate_free(z);
    bd_buf_free(&k.got);
    g[glen - 1] ^= 0x10;

    /* Damage in the deflate data: zlib finds a bad code or the CRC differs; either way the
     * body is refused, by a feed or at the end. */
    for (size_t at = 10; at < glen - 8; at += glen / 37) {
        g[at] ^= 0x55;
        sink_init(&k);
        z = new_inflate(SIZE_MAX);
        assert_int_equal(inflate_all(z, g, glen, 0, &k), BD_EINVAL);
        assert_true(strlen(bd_inflate_why(z)) > 0);
        bd_inflate_free(z);
        bd_buf_free(&k.got);
        g[at] ^= 0x55;
    }
    free(g);
    free(text);
}

/* Every proper prefix of a member is a truncated body: feeds succeed, end refuses. */
static void test_inflate_refuses_end_when_stream_is_truncated(void **state)
{
    const char *text = "a short text, compressed, then cut at every byte";
    size_t glen;
    unsigned char *g = gz(text, strlen(text), &glen);
    (void)state;

    for (size_t cut = 1; cut < glen; cut++) {
        struct sink k;
        sink_init(&k);
        struct bd_inflate *z = new_inflate(SIZE_MAX);
        assert_int_equal(bd_inflate_feed(z, g, cut, sink_on_data, &k), BD_OK);
        assert_int_equal(bd_inflate_end(z), BD_EINVAL);
        assert_string_equal(bd_inflate_why(z), "gzip body ends inside member 1 (truncated)");
        bd_inflate_free(z);
        bd_buf_free(&k.got);
    }
    free(g);
}

/* Bytes after the last member must make a whole member: garbage, a lone byte and zero
 * padding are all refused (after the first member's data was delivered). */
static void test_inflate_refuses_trailing_bytes_when_not_a_member(void **state)
{
    const char *text = "payload";
    size_t glen;
    unsigned char *g = gz(text, strlen(text), &glen);
    const struct {
        const char *tail;
        size_t len;
        const char *why;
    } cases[] = {
        { "garbage!", 8, "data after gzip member 1 is not a gzip member: incorrect header check" },
        { "x", 1, "1 bytes after gzip member 1 do not make a gzip member" },
        { "\0\0\0\0\0\0\0\0", 8, "data after gzip member 1 is not a gzip member" },
        { "\x1f\x8b\x08", 3, "3 bytes after gzip member 1 do not make a gzip member" },
    };
    (void)state;

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        for (size_t step = 0; step <= 1; step++) {
            unsigned char *body = malloc(glen + cases[i].len);
            assert_non_null(body);
            memcpy(body, g, glen);
            memcpy(body + glen, cases[i].tail, cases[i].len);
            struct sink k;
            sink_init(&k);
            struct bd_inflate *z = new_inflate(SIZE_MAX);
            assert_int_equal(inflate_all(z, body, glen + cases[i].len, step, &k), BD_EINVAL);
            assert_non_null(strstr(bd_inflate_why(z), cases[i].why));
            assert_int_equal(k.got.len, strlen(text));
            assert_int_equal(bd_inflate_members(z), 1);
            bd_inflate_free(z);
            bd_buf_free(&k.got);
            free(body);
        }
    }
    free(g);
}

/* The callback's error stops the feed, is returned, and stays: no more output. */
static void test_inflate_keeps_callback_error_when_reader_refuses(void **state)
{
    const size_t n = 500 * 1000;
    char *text = sample_text(n);
    size_t glen;
    unsigned char *g = gz(text, n, &glen);
    struct sink k;
    (void)state;

    sink_init(&k);
    k.fail_after = 2;
    k.fail_with = BD_EPG;
    struct bd_inflate *z = new_inflate(SIZE_MAX);
    assert_int_equal(bd_inflate_feed(z, g, glen / 2, sink_on_data, &k), BD_EPG);
    assert_int_equal(k.calls, 2);
    assert_int_equal(bd_inflate_total_out(z), k.got.len);
    assert_int_equal(bd_inflate_feed(z, g + glen / 2, glen - glen / 2, sink_on_data, &k),
                     BD_EPG);
    assert_int_equal(bd_inflate_end(z), BD_EPG);
    assert_int_equal(k.calls, 2);
    assert_non_null(strstr(bd_inflate_why(z), "EPG"));
    bd_inflate_free(z);
    bd_buf_free(&k.got);
    free(g);
    free(text);
}

/* feed_some: never more than the budget per call; the pieces add up to the whole; AGAIN
 * with all input used still means "call again". */
static void test_inflate_bounds_output_per_call_when_given_a_budget(void **state)
{
    const size_t n = 300 * 1000;
    char *text = sample_text(n);
    size_t glen;
    unsigned char *g = gz(text, n, &glen);
    const size_t budgets[] = { 1, 1000, BD_INFLATE_CHUNK, 3 * BD_INFLATE_CHUNK + 5 };
    (void)state;

    for (size_t b = 0; b < sizeof budgets / sizeof budgets[0]; b++) {
        for (size_t step = 1; step <= glen; step = step * 16 + 3) {
            struct sink k;
            size_t calls = 0, again_all_used = 0;
            sink_init(&k);
            struct bd_inflate *z = new_inflate(SIZE_MAX);
            for (size_t at = 0; at < glen;) {
                size_t piece = glen - at < step ? glen - at : step, off = 0;
                int rc;
                do {
                    size_t used, before = k.total;
                    rc = bd_inflate_feed_some(z, g + at + off, piece - off, budgets[b], &used,
                                              sink_on_data, &k);
                    assert_true(rc == BD_OK || rc == BD_INFLATE_AGAIN);
                    assert_true(k.total - before <= budgets[b]);
                    assert_true(used <= piece - off);
                    if (rc == BD_INFLATE_AGAIN && used == piece - off)
                        again_all_used++;
                    off += used;
                    calls++;
                } while (rc == BD_INFLATE_AGAIN);
                assert_int_equal(off, piece);
                at += piece;
            }
            assert_int_equal(bd_inflate_end(z), BD_OK);
            assert_int_equal(k.got.len, n);
            assert_memory_equal(k.got.data, text, n);
            assert_true(calls >= n / budgets[b]);
            if (budgets[b] < 1000)
                assert_true(again_all_used > 0);   /* output waited inside zlib */
            bd_inflate_free(z);
            bd_buf_free(&k.got);
        }
    }
    free(g);
    free(text);
}

/* A bomb under a budget: one small input never yields more than the budget in one call. */
static void test_inflate_bounds_bomb_per_call_when_given_a_budget(void **state)
{
    size_t len, used;
    unsigned char *bomb = zero_bomb(64, &len);
    struct sink k;
    (void)state;

    sink_init(&k);
    k.is_counting_only = true;
    struct bd_inflate *z = new_inflate(SIZE_MAX);
    assert_int_equal(bd_inflate_feed_some(z, bomb, 2048, 100 * 1000, &used, sink_on_data, &k),
                     BD_INFLATE_AGAIN);
    assert_int_equal(k.total, 100 * 1000);
    assert_true(used < 2048);
    bd_inflate_free(z);
    free(bomb);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        /* First: it measures the growth of the process's peak RSS. */
        cmocka_unit_test(test_inflate_stops_bomb_when_output_passes_max_out),
        cmocka_unit_test(test_inflate_accepts_exact_limit_when_output_equals_max_out),
        cmocka_unit_test(test_inflate_round_trips_when_fed_whole_or_in_pieces),
        cmocka_unit_test(test_inflate_joins_members_when_gzip_files_are_concatenated),
        cmocka_unit_test(test_inflate_refuses_empty_body_when_no_member_was_sent),
        cmocka_unit_test(test_inflate_refuses_header_when_not_gzip),
        cmocka_unit_test(test_inflate_refuses_data_when_check_fails),
        cmocka_unit_test(test_inflate_refuses_end_when_stream_is_truncated),
        cmocka_unit_test(test_inflate_refuses_trailing_bytes_when_not_a_member),
        cmocka_unit_test(test_inflate_keeps_callback_error_when_reader_refuses),
        cmocka_unit_test(test_inflate_bounds_output_per_call_when_given_a_budget),
        cmocka_unit_test(test_inflate_bounds_bomb_per_call_when_given_a_budget),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
