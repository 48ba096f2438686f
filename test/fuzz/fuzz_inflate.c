/* fuzz_inflate.c -- fuzz target for the streaming gzip inflater (src/inflate.c),
 * differential: against itself fed in other pieces, and against a one-shot reference.
 *
 * Input: a request body sent with Content-Encoding: gzip, as is; max_out is 256 KiB (a small
 * zero bomb in the corpus passes it). Checks, for every input:
 *   1. the verdict (feeds then end) is BD_OK, BD_EINVAL or BD_ETOOLARGE, with a reason
 *      unless BD_OK, and no piece passed to the callback is empty or above BD_INFLATE_CHUNK;
 *   2. the same verdict, reason and output whether the body is fed whole, byte by byte, in
 *      two pieces split at every byte (the first 64 split points and 64 spread over the
 *      rest for longer inputs), or through bd_inflate_feed_some with budgets of 1 and 777
 *      bytes (never more output per call than the budget);
 *   3. the reference -- zlib's inflate run once per member over the whole rest of the body,
 *      into a buffer of max_out + 1 bytes -- gives the same verdict, and on BD_OK or
 *      BD_ETOOLARGE the same output (its first max_out bytes).
 * SPDX-License-Identifier: MIT
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "batchd/error.h"
#include "batchd/inflate.h"

#define FUZZ_MAX_OUT (256 * 1024)

#define FUZZ_NAME "fuzz_inflate"
#include "fuzz_check.h"

/* One run's result. The output buffers are static: they are large and reused. */
struct run {
    int verdict;
    char why[200];
    size_t len;
    unsigned char *out;      /* FUZZ_MAX_OUT bytes */
    size_t budget;           /* feed_some runs: the most one call may deliver */
    size_t given;            /* delivered in the current call */
};

static unsigned char first_out[FUZZ_MAX_OUT], this_out[FUZZ_MAX_OUT], ref_out[FUZZ_MAX_OUT + 1];

static int run_on_data(void *arg, const char *out, size_t n)
{
    struct run *r = arg;

    FUZZ_CHECK(n > 0 && n <= BD_INFLATE_CHUNK, "piece of %zu bytes", n);
    FUZZ_CHECK(r->len + n <= FUZZ_MAX_OUT, "%zu bytes past max_out", r->len + n);
    memcpy(r->out + r->len, out, n);
    r->len += n;
    r->given += n;
    FUZZ_CHECK(r->budget == 0 || r->given <= r->budget, "%zu bytes in one call, budget %zu",
               r->given, r->budget);
    return BD_OK;
}

static void run_finish(struct run *r, struct bd_inflate *z, int rc)
{
    if (rc == BD_OK)
        rc = bd_inflate_end(z);
    r->verdict = rc;
    snprintf(r->why, sizeof r->why, "%s", bd_inflate_why(z));
    FUZZ_CHECK(bd_inflate_total_out(z) == r->len, "total_out %zu, delivered %zu",
               bd_inflate_total_out(z), r->len);
    bd_inflate_free(z);
}

/* Feed data in pieces that end at each cut (ascending), then the rest. */
static void run_cuts(struct run *r, const uint8_t *data, size_t size, const size_t *cuts,
                     size_t ncuts)
{
    struct bd_inflate *z = bd_inflate_new(FUZZ_MAX_OUT, NULL);
    size_t at = 0;
    int rc = BD_OK;

    FUZZ_CHECK(z != NULL, "bd_inflate_new");
    for (size_t i = 0; i <= ncuts && rc == BD_OK; i++) {
        size_t end = i < ncuts ? cuts[i] : size;
        rc = bd_inflate_feed(z, data + at, end - at, run_on_data, r);
        at = end;
    }
    run_finish(r, z, rc);
}

static void run_bytes(struct run *r, const uint8_t *data, size_t size)
{
    struct bd_inflate *z = bd_inflate_new(FUZZ_MAX_OUT, NULL);
    int rc = BD_OK;

    FUZZ_CHECK(z != NULL, "bd_inflate_new");
    for (size_t i = 0; i < size && rc == BD_OK; i++)
        rc = bd_inflate_feed(z, data + i, 1, run_on_data, r);
    run_finish(r, z, rc);
}

static void run_budget(struct run *r, const uint8_t *data, size_t size, size_t budget)
{
    struct bd_inflate *z = bd_inflate_new(FUZZ_MAX_OUT, NULL);
    size_t at = 0, used;
    int rc;

    FUZZ_CHECK(z != NULL, "bd_inflate_new");
    r->budget = budget;
    do {
        r->given = 0;
        rc = bd_inflate_feed_some(z, data + at, size - at, budget, &used, run_on_data, r);
        FUZZ_CHECK(used <= size - at, "used %zu of %zu", used, size - at);
        at += used;
    } while (rc == BD_INFLATE_AGAIN);
    FUZZ_CHECK(rc != BD_OK || at == size, "BD_OK with %zu bytes unused", size - at);
    run_finish(r, z, rc);
}

/* The reference: each member inflated in one call over all the rest of the body. */
static int reference(const uint8_t *data, size_t size, size_t *out_len)
{
    size_t pos = 0, len = 0;
    unsigned members = 0;

    for (;;) {
        if (pos == size)
            break;
        z_stream s;
        memset(&s, 0, sizeof s);
        FUZZ_CHECK(inflateInit2(&s, 15 + 16) == Z_OK, "inflateInit2");
        s.next_in = (Bytef *)(data + pos);
        s.avail_in = (uInt)(size - pos);
        s.next_out = ref_out + len;
        s.avail_out = (uInt)(FUZZ_MAX_OUT + 1 - len);
        int zrc = inflate(&s, Z_FINISH);
        pos += (size - pos) - s.avail_in;
        len += (FUZZ_MAX_OUT + 1 - len) - s.avail_out;
        bool is_full = s.avail_out == 0;
        inflateEnd(&s);
        *out_len = len;
        if (len > FUZZ_MAX_OUT)
            return BD_ETOOLARGE;
        if (zrc != Z_STREAM_END)
            return is_full ? BD_ETOOLARGE : BD_EINVAL;
        members++;
    }
    *out_len = len;
    return members > 0 ? BD_OK : BD_EINVAL;
}

static void same(const struct run *a, const struct run *b, const char *how)
{
    FUZZ_CHECK(a->verdict == b->verdict, "%s: verdict %s, whole %s (%s / %s)", how,
               bd_err_name(b->verdict), bd_err_name(a->verdict), b->why, a->why);
    FUZZ_CHECK(strcmp(a->why, b->why) == 0, "%s: \"%s\", whole \"%s\"", how, b->why, a->why);
    FUZZ_CHECK(a->len == b->len, "%s: %zu bytes out, whole %zu", how, b->len, a->len);
    FUZZ_CHECK(memcmp(a->out, b->out, a->len) == 0, "%s: other bytes out", how);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct run whole = { .out = first_out }, r;
    size_t cut;

    run_cuts(&whole, data, size, NULL, 0);
    FUZZ_CHECK(whole.verdict == BD_OK || whole.verdict == BD_EINVAL ||
               whole.verdict == BD_ETOOLARGE, "verdict %s", bd_err_name(whole.verdict));
    FUZZ_CHECK((whole.verdict == BD_OK) == (whole.why[0] == '\0'), "reason \"%s\" for %s",
               whole.why, bd_err_name(whole.verdict));
    FUZZ_CHECK(whole.verdict != BD_ETOOLARGE || whole.len == FUZZ_MAX_OUT,
               "too large after %zu bytes", whole.len);

    r = (struct run){ .out = this_out };
    run_bytes(&r, data, size);
    same(&whole, &r, "byte by byte");
    size_t ncuts = size < 2 ? 0 : size <= 129 ? size - 1 : 128;
    for (size_t i = 0; i < ncuts; i++) {
        cut = size <= 129 || i < 64 ? i + 1 : 64 + (i - 63) * (size - 64) / 65;
        r = (struct run){ .out = this_out };
        run_cuts(&r, data, size, &cut, 1);
        same(&whole, &r, "split");
    }
    r = (struct run){ .out = this_out };
    run_budget(&r, data, size, 1);
    same(&whole, &r, "budget 1");
    r = (struct run){ .out = this_out };
    run_budget(&r, data, size, 777);
    same(&whole, &r, "budget 777");

    size_t ref_len = 0;
    int ref = reference(data, size, &ref_len);
    FUZZ_CHECK(ref == whole.verdict, "reference %s, inflater %s (%s)", bd_err_name(ref),
               bd_err_name(whole.verdict), whole.why);
    FUZZ_CHECK(ref != BD_OK || ref_len == whole.len, "reference %zu bytes, inflater %zu",
               ref_len, whole.len);
    if (ref != BD_EINVAL) {
        FUZZ_CHECK(ref_len >= whole.len, "reference %zu bytes, inflater %zu", ref_len,
                   whole.len);
        FUZZ_CHECK(memcmp(ref_out, whole.out, whole.len) == 0, "other bytes than reference");
    }
    return 0;
}
