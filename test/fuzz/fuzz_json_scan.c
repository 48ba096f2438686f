/* fuzz_json_scan.c -- fuzz target for the JSON scanner (src/json_scan.c), differential
 * against jansson and strtod.
 *
 * The scanner is the fast path for model responses and bulk_insert submit bodies; jansson
 * is the reference it falls back to. The whole input is one JSON text (inputs holding a
 * NUL byte are skipped: jansson stops reading there), and:
 *   skip_value   jansson accepts it (nesting at most 64) => the scanner accepts it and ends
 *                where the text ends; the scanner accepts a text with no string in it =>
 *                jansson accepts it too, unless a number is beyond jansson's range.
 *   find_member  on an object (no duplicate keys) the value found for "data", "index",
 *                "embedding", "id" or "" spans exactly jansson's value of that member.
 *   parse_number on a number, the value is strtod's (to 1e-15 relative) and it ends where
 *                the number ends.
 *   parse_float_array  on an array of numbers, every number is stored (into a buffer of
 *                exactly `max` floats, max from the input length) as (float) of jansson's
 *                value, count is the array's size; an array with anything else is refused.
 * Pure functions, no allocation in the code under test.  SPDX-License-Identifier: MIT
 */
#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batchd/json_scan.h"

#define SCAN_MAX_DEPTH 64              /* json_scan.c's nesting limit */

/* printf arguments for "%.*s": at most 200 bytes of a buffer that has no NUL. */
#define SHOW(s, len) (int)((len) < 200 ? (len) : 200), (s)

#define FUZZ_NAME "fuzz_json_scan"
#include "fuzz_check.h"

/* Containers on the deepest path (a scalar is 0). */
static int depth_of(const json_t *v)
{
    int max = 0;

    if (json_is_array(v)) {
        size_t i;
        json_t *x;
        json_array_foreach(v, i, x) {
            int d = depth_of(x);
            if (d > max)
                max = d;
        }
        return max + 1;
    }
    if (json_is_object(v)) {
        const char *k;
        json_t *x;
        json_object_foreach((json_t *)v, k, x) {
            int d = depth_of(x);
            if (d > max)
                max = d;
        }
        return max + 1;
    }
    return 0;
}

static bool is_overflow(const json_error_t *err)
{
    return json_error_code(err) == json_error_numeric_overflow;
}

static void check_skip_value(const char *text, size_t len, const json_t *root,
                             const json_error_t *err)
{
    const char *end = text + len;
    const char *p = bd_json_skip_ws(text, end);
    const char *after = p == end ? NULL : bd_json_skip_value(p, end);
    bool is_scanned = after != NULL && bd_json_skip_ws(after, end) == end;

    FUZZ_CHECK(after == NULL || (after > p && after <= end), "skip_value ran outside the text");
    if (root != NULL && depth_of(root) <= SCAN_MAX_DEPTH)
        FUZZ_CHECK(is_scanned, "jansson accepts, the scanner does not: %.*s", SHOW(text, len));
    if (is_scanned && root == NULL && memchr(text, '"', len) == NULL && !is_overflow(err))
        FUZZ_CHECK(false, "the scanner accepts what jansson refuses (%s): %.*s", err->text,
                   SHOW(text, len));
}

static void check_find_member(const char *text, size_t len, const json_t *unique_root)
{
    static const char *const keys[] = { "data", "index", "embedding", "id", "" };
    const char *end = text + len;
    const char *p = bd_json_skip_ws(text, end);

    if (p == end || *p != '{')
        return;
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        const char *v = bd_json_find_member(p, end, keys[i]);
        const char *vend;
        json_t *want, *got;

        if (v == NULL || unique_root == NULL || depth_of(unique_root) > SCAN_MAX_DEPTH)
            continue;
        FUZZ_CHECK(v > p && v < end, "member value outside the text");
        want = json_object_get(unique_root, keys[i]);
        FUZZ_CHECK(want != NULL, "found \"%s\", which jansson does not have: %.*s", keys[i],
                   SHOW(text, len));
        vend = bd_json_skip_value(v, end);
        FUZZ_CHECK(vend != NULL, "member \"%s\" value does not scan", keys[i]);
        got = json_loadb(v, (size_t)(vend - v), JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        FUZZ_CHECK(got != NULL && json_equal(got, want), "member \"%s\" is not jansson's: %.*s",
                   keys[i], (int)(vend - v), v);
        json_decref(got);
    }
}

static void check_number(const char *text, size_t len, const json_t *root)
{
    const char *end = text + len;
    const char *p = bd_json_skip_ws(text, end);
    const char *stop, *scan_end;
    char *copy;
    double d = 12345, want;

    if (root == NULL || !json_is_number(root))
        return;
    stop = bd_json_parse_number(p, end, &d);
    scan_end = bd_json_skip_value(p, end);
    FUZZ_CHECK(stop != NULL && stop == scan_end, "number %.*s: parse ends at %td, scan at %td",
               SHOW(text, len), stop ? stop - text : -1, scan_end ? scan_end - text : -1);
    if ((copy = strndup(p, (size_t)(stop - p))) == NULL)
        return;
    want = strtod(copy, NULL);
    FUZZ_CHECK(d == want || fabs(d - want) <= 1e-15 * fabs(want),
               "number %.200s: %.17g, strtod %.17g", copy, d, want);
    free(copy);
}

static void check_float_array(const char *text, size_t len, const json_t *root,
                              const json_error_t *err)
{
    const char *end = text + len;
    const char *p = bd_json_skip_ws(text, end);
    unsigned max = (unsigned)(len % 7), count = 99;
    float *out = malloc((max ? max : 1) * sizeof(float));
    const char *after;
    bool is_numbers = json_is_array(root);
    size_t i;
    json_t *x;

    if (out == NULL)
        return;
    after = bd_json_parse_float_array(p, end, out, max, &count);
    FUZZ_CHECK(after == NULL || (after > p && after <= end), "parse ran outside the text");
    if (after != NULL)
        for (unsigned k = 0; k < count && k < max; k++)
            FUZZ_CHECK(isfinite(out[k]), "out[%u] = %g", k, (double)out[k]);
    if (is_numbers) {
        json_array_foreach(root, i, x) {
            if (!json_is_number(x) || !isfinite((float)json_number_value(x)))
                is_numbers = false;
        }
    }
    if (json_is_array(root)) {
        if (is_numbers) {
            FUZZ_CHECK(after != NULL && bd_json_skip_ws(after, end) == end,
                       "an array of numbers is refused: %.*s", SHOW(text, len));
            FUZZ_CHECK(count == json_array_size(root), "count %u, jansson %zu", count,
                       json_array_size(root));
            json_array_foreach(root, i, x) {
                float want = (float)json_number_value(x);
                if (i >= max)
                    break;
                FUZZ_CHECK(out[i] == want || fabsf(out[i] - want) <= 1e-6f * fabsf(want),
                           "element %zu: %.9g, jansson %.9g: %.*s", i, (double)out[i],
                           (double)want, SHOW(text, len));
            }
        } else {
            FUZZ_CHECK(after == NULL, "an array holding a non-number is accepted: %.*s",
                       SHOW(text, len));
        }
    } else if (after != NULL && bd_json_skip_ws(after, end) == end && root == NULL &&
               !is_overflow(err)) {
        FUZZ_CHECK(false, "float array accepted where jansson refuses (%s): %.*s", err->text,
                   SHOW(text, len));
    }
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    json_error_t err, err2;

    /* jansson's json_loadb() stops at a NUL byte as if the text ended there ("[1]\0x" is
     * accepted); the scanner sees every byte. Compare them only on text without NUL. */
    if (memchr(data, 0, size) != NULL)
        return 0;
    json_t *root = json_loadb(text, size, JSON_DECODE_ANY, &err);
    json_t *unique = json_loadb(text, size, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &err2);

    check_skip_value(text, size, root, &err);
    check_find_member(text, size, unique);
    check_number(text, size, root);
    check_float_array(text, size, root, &err);
    json_decref(unique);
    json_decref(root);
    return 0;
}
