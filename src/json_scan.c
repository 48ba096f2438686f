/* json_scan.c -- structural JSON scanning and fast number arrays (see json_scan.h).
 *
 * Pure functions over caller memory; any thread; no allocation.  SPDX-License-Identifier: MIT
 */
#include "batchd/json_scan.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SCAN_MAX_DEPTH 64

const char *bd_json_skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
        p++;
    return p;
}

static const char *scan_string(const char *p, const char *end)
{
    for (p++; p < end; p++) {
        if (*p == '"')
            return p + 1;
        if (*p == '\\' && ++p == end)
            return NULL;
        if ((unsigned char)*p < 0x20)
            return NULL;
    }
    return NULL;
}

static const double scan_pow10[] = { 1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                     1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                     1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22 };

const char *bd_json_parse_number(const char *p, const char *end, double *out)
{
    const char *start = p;
    uint64_t m = 0;
    int digits = 0, exp10 = 0, is_neg = 0;

    if (p < end && *p == '-') {
        is_neg = 1;
        p++;
    }
    if (p == end || *p < '0' || *p > '9')
        return NULL;
    if (*p == '0') {
        p++;
    } else {
        for (; p < end && *p >= '0' && *p <= '9'; p++) {
            if (digits < 19)
                m = m * 10 + (uint64_t)(*p - '0');
            else
                exp10++;                        /* digits beyond 19 only scale */
            digits += m != 0 || digits > 0;
        }
    }
    if (p < end && *p == '.') {
        p++;
        if (p == end || *p < '0' || *p > '9')
            return NULL;
        for (; p < end && *p >= '0' && *p <= '9'; p++) {
            if (digits < 19) {
                m = m * 10 + (uint64_t)(*p - '0');
                exp10--;
                digits += m != 0 || digits > 0;
            }
        }
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        int e = 0, is_eneg = 0;
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            is_eneg = *p++ == '-';
        if (p == end || *p < '0' || *p > '9')
            return NULL;
        for (; p < end && *p >= '0' && *p <= '9'; p++)
            if (e < 100000)
                e = e * 10 + (*p - '0');
        exp10 += is_eneg ? -e : e;
    }
    if (m <= (1ULL << 53) && exp10 >= -22 && exp10 <= 22) {
        /* m and 10^|exp10| are exact doubles: one correctly rounded operation. */
        double d = (double)m;
        d = exp10 < 0 ? d / scan_pow10[-exp10] : d * scan_pow10[exp10];
        *out = is_neg ? -d : d;
        return p;
    }
    char buf[512];
    size_t n = (size_t)(p - start);
    if (n >= sizeof(buf)) {
        /* Absurdly long numbers: the 19 digits kept and the exponent give the value to
         * double precision; never truncate the text (that would change the magnitude). */
        double d = (double)m * pow(10.0, exp10);
        *out = is_neg ? -d : d;
        return p;
    }
    memcpy(buf, start, n);
    buf[n] = '\0';
    *out = strtod(buf, NULL);
    return p;
}

static const char *scan_digits(const char *p, const char *end)
{
    const char *start = p;
    while (p < end && *p >= '0' && *p <= '9')
        p++;
    return p > start ? p : NULL;
}

/* A number's syntax without its value: skipping is the hot part of scanning a vector. */
static const char *scan_number(const char *p, const char *end)
{
    if (p < end && *p == '-')
        p++;
    if (p < end && *p == '0')
        p++;
    else if ((p = scan_digits(p, end)) == NULL)
        return NULL;
    if (p < end && *p == '.' && (p = scan_digits(p + 1, end)) == NULL)
        return NULL;
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        if ((p = scan_digits(p, end)) == NULL)
            return NULL;
    }
    return p;
}

/* p at a member's key: returns the byte after its ':' (NULL when malformed). */
static const char *scan_key(const char *p, const char *end)
{
    if (p == end || *p != '"' || (p = scan_string(p, end)) == NULL)
        return NULL;
    p = bd_json_skip_ws(p, end);
    return p < end && *p == ':' ? p + 1 : NULL;
}

const char *bd_json_skip_value(const char *p, const char *end)
{
    char stack[SCAN_MAX_DEPTH];
    int depth = 0;

    for (;;) {
        p = bd_json_skip_ws(p, end);
        if (p == end)
            return NULL;
        switch (*p) {
        case '{':
        case '[':
            if (depth == SCAN_MAX_DEPTH)
                return NULL;
            stack[depth++] = *p == '{' ? '}' : ']';
            p = bd_json_skip_ws(p + 1, end);
            if (p < end && *p == stack[depth - 1]) {
                depth--;
                p++;
                goto after_value;
            }
            if (stack[depth - 1] == '}' && (p = scan_key(p, end)) == NULL)
                return NULL;
            continue;                           /* a value follows */
        case '"':
            if ((p = scan_string(p, end)) == NULL)
                return NULL;
            break;
        case 't':
            if (end - p < 4 || memcmp(p, "true", 4) != 0)
                return NULL;
            p += 4;
            break;
        case 'f':
            if (end - p < 5 || memcmp(p, "false", 5) != 0)
                return NULL;
            p += 5;
            break;
        case 'n':
            if (end - p < 4 || memcmp(p, "null", 4) != 0)
                return NULL;
            p += 4;
            break;
        default:
            if ((p = scan_number(p, end)) == NULL)
                return NULL;
        }
    after_value:
        for (;;) {
            if (depth == 0)
                return p;
            p = bd_json_skip_ws(p, end);
            if (p == end)
                return NULL;
            if (*p == stack[depth - 1]) {
                depth--;
                p++;
                continue;
            }
            if (*p != ',')
                return NULL;
            p++;
            if (stack[depth - 1] == '}' &&
                (p = scan_key(bd_json_skip_ws(p, end), end)) == NULL)
                return NULL;
            break;                              /* the next value */
        }
    }
}

const char *bd_json_find_member(const char *p, const char *end, const char *key)
{
    size_t klen = strlen(key);

    if (p == end || *p != '{')
        return NULL;
    p = bd_json_skip_ws(p + 1, end);
    if (p < end && *p == '}')
        return NULL;
    for (;;) {
        if (p == end || *p != '"')
            return NULL;
        const char *k = p + 1, *kend = scan_string(p, end);
        if (kend == NULL)
            return NULL;
        p = bd_json_skip_ws(kend, end);
        if (p == end || *p != ':')
            return NULL;
        p = bd_json_skip_ws(p + 1, end);
        if ((size_t)(kend - 1 - k) == klen && memcmp(k, key, klen) == 0)
            return p < end ? p : NULL;          /* no value after the colon: malformed */
        if ((p = bd_json_skip_value(p, end)) == NULL)
            return NULL;
        p = bd_json_skip_ws(p, end);
        if (p == end || *p != ',')
            return NULL;
        p = bd_json_skip_ws(p + 1, end);
    }
}

const char *bd_json_parse_float_array(const char *p, const char *end, float *out, unsigned max,
                                      unsigned *count)
{
    unsigned n = 0;

    *count = 0;
    if (p == end || *p != '[')
        return NULL;
    p = bd_json_skip_ws(p + 1, end);
    if (p < end && *p == ']')
        return p + 1;
    for (;;) {
        double d;
        if ((p = bd_json_parse_number(p, end, &d)) == NULL)
            return NULL;
        float f = (float)d;
        if (!isfinite(f))
            return NULL;
        if (n < max)
            out[n] = f;
        n++;
        p = bd_json_skip_ws(p, end);
        if (p == end)
            return NULL;
        if (*p == ']') {
            *count = n;
            return p + 1;
        }
        if (*p != ',')
            return NULL;
        p = bd_json_skip_ws(p + 1, end);
    }
}

