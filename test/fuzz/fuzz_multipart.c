/* fuzz_multipart.c -- fuzz target for the incremental multipart/form-data parser
 * (src/multipart.c), differential against itself fed in other pieces.
 *
 * Input: a request body as is, parsed with the boundary "openai-fz" (the corpus and the
 * mutations keep it), the header limit at 256 bytes and 8 parts. Checks, for every input:
 *   1. the verdict (feeds then end) is BD_OK or BD_EINVAL, with a reason when BD_EINVAL;
 *      no content piece is empty; on_part_begin/end alternate (every part begun is ended
 *      before the next, and all are ended on BD_OK); at most 8 parts; a part's header
 *      fields are NUL-terminated strings shorter than the header limit;
 *   2. the same verdict, reason, parts and content whether the body is fed whole, byte by
 *      byte, or in two pieces split at every byte (the first 64 split points and 64 spread
 *      over the rest for longer inputs);
 *   3. on BD_OK the content is never longer than the body, and content fed whole comes in
 *      at most one piece per part plus one per CR in the body (zero-copy: content is cut
 *      only where a delimiter might begin).
 * SPDX-License-Identifier: MIT
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batchd/error.h"
#include "batchd/multipart.h"

#define FUZZ_NAME "fuzz_multipart"
#include "fuzz_check.h"

#define FUZZ_BOUNDARY "openai-fz"
#define FUZZ_HDR_MAX 256
#define FUZZ_PARTS 8
#define FUZZ_LOG_MAX (1u << 20)

/* One run's record: a log of the events with the content, the verdict and reason. */
struct run {
    char *log;                        /* FUZZ_LOG_MAX bytes */
    size_t len;
    size_t content;
    unsigned pieces, begins, ends;
    bool is_in_part;
    int verdict;
    char why[200];
};

static char first_log[FUZZ_LOG_MAX], this_log[FUZZ_LOG_MAX];

static void run_put(struct run *r, const char *p, size_t n)
{
    if (r->len + n > FUZZ_LOG_MAX)
        n = FUZZ_LOG_MAX - r->len;
    memcpy(r->log + r->len, p, n);
    r->len += n;
}

static void run_putc(struct run *r, char c)
{
    if (r->len < FUZZ_LOG_MAX)
        r->log[r->len++] = c;
}

static void run_field(struct run *r, const char *s)
{
    size_t n = s ? strlen(s) : 0;
    FUZZ_CHECK(n < FUZZ_HDR_MAX, "header field of %zu bytes", n);
    run_putc(r, s ? '[' : '-');
    if (s) {
        run_put(r, s, n);
        run_putc(r, '\0');            /* so fields cannot run together */
    }
}

static int run_on_begin(void *arg, const struct bd_multipart_part *p)
{
    struct run *r = arg;

    FUZZ_CHECK(!r->is_in_part, "part %u begun inside another", p->index);
    FUZZ_CHECK(p->index == r->begins, "part index %u, expected %u", p->index, r->begins);
    r->is_in_part = true;
    r->begins++;
    run_putc(r, 'B');
    run_field(r, p->disposition);
    run_field(r, p->name);
    run_field(r, p->filename);
    run_field(r, p->content_type);
    return BD_OK;
}

static int run_on_data(void *arg, const char *d, size_t n)
{
    struct run *r = arg;

    FUZZ_CHECK(n > 0, "empty content piece");
    FUZZ_CHECK(r->is_in_part, "content outside a part");
    r->pieces++;
    r->content += n;
    run_put(r, d, n);
    return BD_OK;
}

static int run_on_end(void *arg)
{
    struct run *r = arg;

    FUZZ_CHECK(r->is_in_part, "end without a part");
    r->is_in_part = false;
    r->ends++;
    run_putc(r, 'E');
    return BD_OK;
}

static const struct bd_multipart_cbs run_cbs = { run_on_begin, run_on_data, run_on_end };

/* Parse data fed in pieces: step is the size of every piece (0: whole), or split > 0 cuts
 * once at split. */
static void run_parse(struct run *r, char *log, const uint8_t *data, size_t size, size_t step,
                      size_t split)
{
    static const struct bd_multipart_limits lim = { FUZZ_HDR_MAX, FUZZ_PARTS };
    struct bd_multipart *mp;
    int rc = BD_OK;

    memset(r, 0, sizeof(*r));
    r->log = log;
    mp = bd_multipart_new(FUZZ_BOUNDARY, &lim, &run_cbs, r);
    FUZZ_CHECK(mp != NULL, "out of memory");
    if (split > 0) {
        rc = bd_multipart_feed(mp, (const char *)data, split);
        if (rc == BD_OK)
            rc = bd_multipart_feed(mp, (const char *)data + split, size - split);
    } else if (step == 0) {
        rc = bd_multipart_feed(mp, (const char *)data, size);
    } else {
        for (size_t i = 0; i < size && rc == BD_OK; i += step)
            rc = bd_multipart_feed(mp, (const char *)data + i, size - i < step ? size - i : step);
    }
    if (rc == BD_OK)
        rc = bd_multipart_end(mp);
    r->verdict = rc;
    snprintf(r->why, sizeof(r->why), "%s", bd_multipart_why(mp));
    FUZZ_CHECK(rc == BD_OK || rc == BD_EINVAL, "verdict %d", rc);
    FUZZ_CHECK(rc == BD_OK || r->why[0] != '\0', "refused without a reason");
    FUZZ_CHECK(r->begins <= FUZZ_PARTS, "%u parts", r->begins);
    FUZZ_CHECK(bd_multipart_get_parts(mp) == r->begins ||
               (rc < 0 && bd_multipart_get_parts(mp) == r->begins + 1),
               "parts %u, begun %u", bd_multipart_get_parts(mp), r->begins);
    if (rc == BD_OK) {
        FUZZ_CHECK(!r->is_in_part && r->ends == r->begins, "%u begun, %u ended", r->begins,
                   r->ends);
        FUZZ_CHECK(r->content <= size, "content %zu of a %zu-byte body", r->content, size);
    }
    bd_multipart_free(mp);
}

static void run_compare(const struct run *a, const struct run *b, const char *how, size_t at)
{
    FUZZ_CHECK(a->verdict == b->verdict, "%s %zu: verdict %d, whole %d", how, at, b->verdict,
               a->verdict);
    FUZZ_CHECK(strcmp(a->why, b->why) == 0, "%s %zu: why \"%s\", whole \"%s\"", how, at,
               b->why, a->why);
    /* A refused body may be refused after different amounts of content were handed on
     * (a piece ends earlier), so only a parsed one must log the same. */
    if (a->verdict == BD_OK)
        FUZZ_CHECK(a->len == b->len && memcmp(a->log, b->log, a->len) == 0,
                   "%s %zu: other parts or content", how, at);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct run whole, other;
    size_t crs = 0;

    run_parse(&whole, first_log, data, size, 0, 0);
    for (size_t i = 0; i < size; i++)
        crs += data[i] == '\r';
    if (whole.verdict == BD_OK)
        FUZZ_CHECK(whole.pieces <= whole.begins + crs, "%u pieces for %u parts and %zu CRs",
                   whole.pieces, whole.begins, crs);
    run_parse(&other, this_log, data, size, 1, 0);
    run_compare(&whole, &other, "byte by byte", 0);
    for (size_t k = 0; k < 128 && size > 1; k++) {
        size_t at = size <= 65 ? k + 1 : k < 64 ? k + 1 : 1 + (k - 64) * (size - 1) / 64;
        if (at >= size)
            break;
        run_parse(&other, this_log, data, size, 0, at);
        run_compare(&whole, &other, "split at", at);
    }
    return 0;
}
