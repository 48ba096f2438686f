/* fuzz_submit_scan.c -- fuzz target for the resumable submit scanner (src/submit_scan.c),
 * split-invariance and differential against jansson.
 *
 * Input: byte 0 picks the form (bit 0: NDJSON) and the piece limit (bits 1-7: 0..63 give
 * 1 + 4 * n bytes, above that 1 MiB); the rest is a POST /jobs body. Every callback is
 * recorded into a buffer (kind, index, line, key, value), with the verdict (code and
 * message) last. An item whose text is exactly "stop" (with the quotes) makes the callback
 * return BD_ECANCELED, so a consumer's stop is fuzzed too. Checks, for every input:
 *   1. the body fed whole, then split at every byte position into two feeds (plus an empty
 *      feed), then fed byte by byte, gives the same record each time;
 *   2. the verdict is BD_OK, BD_EINVAL, BD_ETOOLARGE or the consumer's BD_ECANCELED, with
 *      a message exactly when it is not BD_OK;
 *   3. every piece passed is NUL-terminated and is a JSON value to jansson (JSON_DECODE_ANY;
 *      numbers beyond jansson's range excepted), within the limit;
 *   4. a JSON-form body the scanner accepts is accepted by jansson (same exception); a body
 *      jansson accepts is refused by the scanner only for a documented reason (shape of the
 *      JSON form, limits); for NDJSON, the same per line. (Not for inputs holding a NUL
 *      byte, where jansson stops reading.)
 * SPDX-License-Identifier: MIT
 */
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batchd/buf.h"
#include "batchd/error.h"
#include "batchd/submit_scan.h"

#define FUZZ_NAME "fuzz_submit_scan"
#include "fuzz_check.h"

struct run {
    struct bd_buf rec;   /* the callbacks and the verdict */
    size_t limit;
    int verdict;
    char why[600];
    bool saw_overflow;   /* a piece jansson refused only for a number's range */
};

static bool is_overflow(const json_error_t *err)
{
    return json_error_code(err) == json_error_numeric_overflow;
}

static void check_piece(struct run *r, const char *v, size_t n)
{
    json_error_t jerr;
    json_t *j;

    FUZZ_CHECK(n >= 1 && n <= r->limit, "piece of %zu bytes, limit %zu", n, r->limit);
    FUZZ_CHECK(v[n] == '\0', "piece not NUL-terminated");
    FUZZ_CHECK(memchr(v, '\0', n) == NULL, "NUL inside a piece");
    j = json_loadb(v, n, JSON_DECODE_ANY, &jerr);
    if (j == NULL && is_overflow(&jerr)) {
        r->saw_overflow = true;
        return;
    }
    FUZZ_CHECK(j != NULL, "jansson refuses a piece: %s: %.*s", jerr.text, (int)(n < 200 ? n : 200),
               v);
    json_decref(j);
}

static int on_member(void *arg, const char *key, const char *value, size_t len)
{
    struct run *r = arg;

    check_piece(r, value, len);
    FUZZ_CHECK(strlen(key) <= BD_SUBMIT_SCAN_KEY_MAX, "key too long");
    FUZZ_CHECK(strcmp(key, "data") != 0, "data passed as a member");
    FUZZ_CHECK(bd_utf8_is_valid(key, strlen(key)), "key not UTF-8");
    bd_buf_printf(&r->rec, "M %zu:%s %zu:", strlen(key), key, len);
    bd_buf_append(&r->rec, value, len);
    bd_buf_puts(&r->rec, "\n");
    return BD_OK;
}

static int on_item(void *arg, size_t index, size_t line, const char *value, size_t len)
{
    struct run *r = arg;

    check_piece(r, value, len);
    bd_buf_printf(&r->rec, "I %zu %zu %zu:", index, line, len);
    bd_buf_append(&r->rec, value, len);
    bd_buf_puts(&r->rec, "\n");
    if (len == 6 && memcmp(value, "\"stop\"", 6) == 0)
        return BD_ECANCELED;
    return BD_OK;
}

static int on_data_begin(void *arg)
{
    struct run *r = arg;

    bd_buf_puts(&r->rec, "B\n");
    return BD_OK;
}

static int on_data_end(void *arg, size_t items)
{
    struct run *r = arg;

    bd_buf_printf(&r->rec, "E %zu\n", items);
    return BD_OK;
}

static const struct bd_submit_scan_cbs cbs = {
    .on_member = on_member,
    .on_item = on_item,
    .on_data_begin = on_data_begin,
    .on_data_end = on_data_end,
};

/* Feed body in the pieces cuts[0..ncuts) marks (positions, ascending), end, and record. */
static void run_split(struct run *r, enum bd_submit_format fmt, const char *body, size_t n,
                      const size_t *cuts, size_t ncuts, bool bytewise)
{
    struct bd_submit_scan *s = bd_submit_scan_new(fmt, r->limit, &cbs, r);
    size_t at = 0;
    int rc = BD_OK;

    FUZZ_CHECK(s != NULL, "alloc");
    bd_buf_reset(&r->rec);
    if (bytewise) {
        for (size_t i = 0; i < n && rc == BD_OK; i++)
            rc = bd_submit_scan_feed(s, body + i, 1);
    } else {
        for (size_t c = 0; c <= ncuts && rc == BD_OK; c++) {
            size_t to = c < ncuts ? cuts[c] : n;
            rc = bd_submit_scan_feed(s, body + at, to - at);
            at = to;
        }
    }
    if (rc == BD_OK)
        rc = bd_submit_scan_end(s);
    else /* sticky: a later feed or end gives the same answer */
        FUZZ_CHECK(bd_submit_scan_feed(s, "x", 1) == rc && bd_submit_scan_end(s) == rc,
                   "error not sticky");
    r->verdict = rc;
    snprintf(r->why, sizeof(r->why), "%s", bd_submit_scan_why(s));
    bd_buf_printf(&r->rec, "= %d %s\n", rc, bd_submit_scan_why(s));
    FUZZ_CHECK(rc == BD_OK || rc == BD_EINVAL || rc == BD_ETOOLARGE || rc == BD_ECANCELED,
               "unexpected verdict %d", rc);
    FUZZ_CHECK((rc == BD_OK) == (bd_submit_scan_why(s)[0] == '\0'), "message iff error: %s",
               bd_submit_scan_why(s));
    FUZZ_CHECK(!r->rec.is_failed, "alloc");
    bd_submit_scan_free(s);
}

/* A refusal of a body jansson accepts must be one of the scanner's own rules. */
static bool is_documented_refusal(int rc, const char *why)
{
    static const char *const reasons[] = {
        "\"data\" appears twice", "\"data\" must be an array", "no \"data\" array",
        "the body must be a JSON object", "member name longer", "nested deeper",
    };

    if (rc == BD_ETOOLARGE || rc == BD_ECANCELED)
        return true;
    for (size_t i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++)
        if (strstr(why, reasons[i]) != NULL)
            return true;
    return false;
}

static bool is_blank(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r')
            return false;
    return true;
}

static void check_jansson(const struct run *r, enum bd_submit_format fmt, const char *body,
                          size_t n, const char *why)
{
    /* jansson stops reading at a NUL byte (it takes "1\0x" for "1"): only the scanner's
     * acceptances are checked against it then. */
    bool has_nul = memchr(body, '\0', n) != NULL;
    json_error_t jerr;

    if (fmt == BD_SUBMIT_JSON) {
        json_t *j = json_loadb(body, n, 0, &jerr);
        if (r->verdict == BD_OK)
            FUZZ_CHECK(j != NULL || is_overflow(&jerr), "scanner accepts, jansson refuses: %s",
                       jerr.text);
        if (j != NULL && !has_nul)
            FUZZ_CHECK(r->verdict == BD_OK || is_documented_refusal(r->verdict, why),
                       "jansson accepts, scanner refuses: %s", why);
        json_decref(j);
        return;
    }
    /* NDJSON: every non-blank line a value to jansson => the scanner accepts. (The other
     * way, each piece was checked as it was passed.) */
    bool all_ok = !has_nul;
    for (size_t at = 0; at <= n && all_ok;) {
        const char *nl = memchr(body + at, '\n', n - at);
        size_t end = nl ? (size_t)(nl - body) : n;
        if (!is_blank(body + at, end - at)) {
            json_t *j = json_loadb(body + at, end - at, JSON_DECODE_ANY, &jerr);
            all_ok = j != NULL;
            json_decref(j);
        }
        at = end + 1;
    }
    if (all_ok)
        FUZZ_CHECK(r->verdict == BD_OK || is_documented_refusal(r->verdict, why),
                   "jansson accepts every line, scanner refuses: %s", why);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct run whole = { 0 }, other = { 0 };
    enum bd_submit_format fmt;
    const char *body;
    char *ref;
    size_t n, cuts[2];

    if (size < 1)
        return 0;
    fmt = (data[0] & 1) ? BD_SUBMIT_NDJSON : BD_SUBMIT_JSON;
    whole.limit = (data[0] >> 1) < 64 ? 1 + 4 * (size_t)(data[0] >> 1) : (size_t)1 << 20;
    other.limit = whole.limit;
    body = (const char *)data + 1;
    n = size - 1;
    bd_buf_init(&whole.rec);
    bd_buf_init(&other.rec);

    run_split(&whole, fmt, body, n, NULL, 0, false);
    ref = whole.rec.data;
    check_jansson(&whole, fmt, body, n, whole.why);

    for (size_t k = 0; k <= n; k++) {
        cuts[0] = k;
        cuts[1] = k; /* an empty feed between the two halves */
        run_split(&other, fmt, body, n, cuts, 2, false);
        FUZZ_CHECK(other.rec.len == whole.rec.len && memcmp(other.rec.data, ref, whole.rec.len) == 0,
                   "split at %zu differs:\n--- whole\n%s--- split\n%s", k, ref, other.rec.data);
    }
    run_split(&other, fmt, body, n, NULL, 0, true);
    FUZZ_CHECK(other.rec.len == whole.rec.len && memcmp(other.rec.data, ref, whole.rec.len) == 0,
               "byte by byte differs:\n--- whole\n%s--- bytewise\n%s", ref, other.rec.data);

    bd_buf_free(&whole.rec);
    bd_buf_free(&other.rec);
    return 0;
}
