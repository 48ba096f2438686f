/* model_wire.c -- the embedding wire formats of ollama, openai and tei: request bodies and
 * response parsing with validation.
 *
 * Owns nothing: bodies go into the caller's reusable buffer, responses are parsed with
 * jansson into the caller's float array and the tree is freed before returning. Pure
 * functions, any thread; no I/O, no logging. Must not trust a response: every shape, count,
 * dimension and number is checked before a float is accepted.  SPDX-License-Identifier: MIT
 *
 *   ollama  POST {base}/api/embed      {"model": m, "input": [..]}   -> {"embeddings": [[..]]}
 *   openai  POST {base}/v1/embeddings  {"model": m, "input": [..],
 *                                       "encoding_format": "float"}  -> {"data": [{"index": i,
 *                                                                          "embedding": [..]}]}
 *   tei     POST {base}/embed          {"inputs": [..]}              -> [[..], ..]
 */
#include "model_internal.h"

#include "batchd/error.h"
#include "batchd/json_scan.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *bd__model_wire_path(enum bd_model_provider p)
{
    switch (p) {
    case BD_PROVIDER_OLLAMA: return "/api/embed";
    case BD_PROVIDER_OPENAI: return "/v1/embeddings";
    case BD_PROVIDER_TEI:    return "/embed";
    default:                 return NULL;
    }
}

size_t bd__model_utf8_cut(const char *text, size_t len, size_t max)
{
    if (len <= max)
        return len;
    /* text[max] is the first byte left out; if it continues a sequence, that sequence
     * started inside the prefix and must go too. A lead byte is at most 3 bytes back. */
    size_t cut = max;
    for (unsigned k = 0; k < 4 && cut > 0 && ((unsigned char)text[cut] & 0xC0) == 0x80; k++)
        cut--;
    return cut;
}

void bd__model_wire_begin(struct bd_buf *b, enum bd_model_provider p, const char *remote_model)
{
    if (p == BD_PROVIDER_TEI) {
        bd_buf_puts(b, "{\"inputs\":[");
        return;
    }
    bd_buf_puts(b, "{\"model\":");
    bd_buf_json_string(b, remote_model ? remote_model : "",
                            remote_model ? strlen(remote_model) : 0);
    if (p == BD_PROVIDER_OPENAI)
        bd_buf_puts(b, ",\"encoding_format\":\"float\"");
    bd_buf_puts(b, ",\"input\":[");
}

void bd__model_wire_add(struct bd_buf *b, const char *text, size_t len, bool is_first)
{
    if (!is_first)
        bd_buf_append(b, ",", 1);
    bd_buf_json_string(b, text, len);
}

void bd__model_wire_end(struct bd_buf *b, enum bd_model_provider p)
{
    (void)p;
    bd_buf_puts(b, "]}");
}

static int wire_bad(char *msg, size_t msglen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int wire_bad(char *msg, size_t msglen, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, msglen, fmt, ap);
    va_end(ap);
    return BD_EMODELBAD;
}

/* One vector: exactly dim finite numbers (integers are numbers too) into row. */
static int wire_vector(const json_t *v, unsigned idx, unsigned dim, float *row, char *msg,
                       size_t msglen)
{
    if (!json_is_array(v))
        return wire_bad(msg, msglen, "vector %u is not an array", idx);
    size_t n = json_array_size(v);
    if (n != dim)
        return wire_bad(msg, msglen, "vector %u has %zu dimensions, expected %u", idx, n, dim);
    for (unsigned j = 0; j < dim; j++) {
        const json_t *x = json_array_get(v, j);
        if (!json_is_number(x))
            return wire_bad(msg, msglen, "vector %u component %u is not a number", idx, j);
        /* jansson refuses NaN/Infinity and overflowing doubles already; a double beyond
         * float's range would still become inf here. */
        float f = (float)json_number_value(x);
        if (!isfinite(f))
            return wire_bad(msg, msglen, "vector %u component %u is not finite (%g)", idx, j,
                            json_number_value(x));
        row[j] = f;
    }
    return BD_OK;
}

/* An array of n vectors, in order. */
static int wire_rows(const json_t *arr, unsigned n, unsigned dim, float *out, char *msg,
                     size_t msglen)
{
    size_t got = json_array_size(arr);

    if (got != n)
        return wire_bad(msg, msglen, "model returned %zu vectors for %u inputs", got, n);
    for (unsigned i = 0; i < n; i++) {
        int rc = wire_vector(json_array_get(arr, i), i, dim, out + (size_t)i * dim, msg, msglen);
        if (rc < 0)
            return rc;
    }
    return BD_OK;
}

/* openai: data[k] = {"index": i, "embedding": [..]}; rows placed by index, which must be a
 * permutation of 0..n-1 (servers may answer out of order). A missing index means position. */
static int wire_openai(const json_t *root, unsigned n, unsigned dim, float *out, char *msg,
                       size_t msglen)
{
    const json_t *data = json_object_get(root, "data");
    int rc = BD_OK;

    if (!json_is_array(data))
        return wire_bad(msg, msglen, "response has no \"data\" array");
    size_t got = json_array_size(data);
    if (got != n)
        return wire_bad(msg, msglen, "model returned %zu vectors for %u inputs", got, n);
    unsigned char *seen = calloc((size_t)n / 8 + 1, 1);
    if (seen == NULL)
        return BD_ENOMEM;
    for (unsigned k = 0; k < n; k++) {
        const json_t *item = json_array_get(data, k);
        if (!json_is_object(item)) {
            rc = wire_bad(msg, msglen, "data[%u] is not an object", k);
            break;
        }
        const json_t *jidx = json_object_get(item, "index");
        json_int_t idx = k;
        if (jidx != NULL) {
            if (!json_is_integer(jidx)) {
                rc = wire_bad(msg, msglen, "data[%u].index is not an integer", k);
                break;
            }
            idx = json_integer_value(jidx);
        }
        if (idx < 0 || idx >= (json_int_t)n) {
            rc = wire_bad(msg, msglen, "data[%u].index %lld is out of range for %u inputs", k,
                          (long long)idx, n);
            break;
        }
        if (seen[idx / 8] & (1u << (idx % 8))) {
            rc = wire_bad(msg, msglen, "data[%u].index %lld appears twice", k, (long long)idx);
            break;
        }
        seen[idx / 8] |= (unsigned char)(1u << (idx % 8));
        const json_t *emb = json_object_get(item, "embedding");
        if (emb == NULL) {
            rc = wire_bad(msg, msglen, "data[%u] has no \"embedding\"", k);
            break;
        }
        rc = wire_vector(emb, (unsigned)idx, dim, out + (size_t)idx * dim, msg, msglen);
        if (rc < 0)
            break;
    }
    free(seen);
    return rc;
}

/* n arrays of exactly dim numbers, p at '[' of the outer array. */
static const char *wire_fast_rows(const char *p, const char *end, unsigned n, unsigned dim,
                                  float *out)
{
    unsigned i = 0, count;

    if (p == end || *p != '[')
        return NULL;
    p = bd_json_skip_ws(p + 1, end);
    if (p < end && *p == ']')
        return n == 0 ? p + 1 : NULL;
    for (;;) {
        if (i >= n)
            return NULL;
        p = bd_json_parse_float_array(p, end, out + (size_t)i * dim, dim, &count);
        if (p == NULL || count != dim)
            return NULL;
        i++;
        p = bd_json_skip_ws(p, end);
        if (p < end && *p == ']')
            return i == n ? p + 1 : NULL;
        if (p == end || *p != ',')
            return NULL;
        p = bd_json_skip_ws(p + 1, end);
    }
}

/* openai's data[]: objects with "index" and "embedding", in any order. */
static const char *wire_fast_openai(const char *p, const char *end, unsigned n, unsigned dim,
                                    float *out)
{
    unsigned k = 0, count;

    if (p == end || *p != '[' || n > 65536)
        return NULL;
    unsigned char seen[8192] = { 0 };
    p = bd_json_skip_ws(p + 1, end);
    while (p < end && *p == '{') {
        const char *obj = p, *v;
        double idx = k;
        if ((v = bd_json_find_member(obj, end, "index")) != NULL &&
            bd_json_parse_number(v, end, &idx) == NULL)
            return NULL;
        /* Range first: converting a negative, huge or infinite double is undefined. */
        if (!(idx >= 0 && idx < n) || idx != floor(idx) ||
            (seen[(unsigned)idx / 8] & (1u << ((unsigned)idx % 8))))
            return NULL;
        seen[(unsigned)idx / 8] |= (unsigned char)(1u << ((unsigned)idx % 8));
        v = bd_json_find_member(obj, end, "embedding");
        if (v == NULL ||
            bd_json_parse_float_array(v, end, out + (size_t)idx * dim, dim, &count) == NULL ||
            count != dim)
            return NULL;
        if ((p = bd_json_skip_value(obj, end)) == NULL)
            return NULL;
        k++;
        p = bd_json_skip_ws(p, end);
        if (p < end && *p == ',')
            p = bd_json_skip_ws(p + 1, end);
        else
            break;
    }
    if (p == end || *p != ']' || k != n)
        return NULL;
    return p + 1;
}

/* The fast path: no jansson tree (a batch's response holds count*dim numbers, one
 * allocation each in jansson). It accepts only well-formed answers of the expected shape;
 * anything else returns false and the jansson path below reports precisely what is wrong. */
static bool wire_fast(enum bd_model_provider p, const char *body, size_t len, unsigned n,
                      unsigned dim, float *out)
{
    const char *end = body + len, *root = bd_json_skip_ws(body, end), *v;
    const char *after = root == end ? NULL : bd_json_skip_value(root, end);

    if (after == NULL || bd_json_skip_ws(after, end) != end)
        return false;
    switch (p) {
    case BD_PROVIDER_OLLAMA:
        v = *root == '{' ? bd_json_find_member(root, end, "embeddings") : NULL;
        return v && wire_fast_rows(v, end, n, dim, out) != NULL;
    case BD_PROVIDER_OPENAI:
        v = *root == '{' ? bd_json_find_member(root, end, "data") : NULL;
        return v && wire_fast_openai(v, end, n, dim, out) != NULL;
    case BD_PROVIDER_TEI:
        return wire_fast_rows(root, end, n, dim, out) != NULL;
    default:
        return false;
    }
}

int bd__model_wire_parse(enum bd_model_provider p, const char *body, size_t len, unsigned n,
                         unsigned dim, float *out, char *msg, size_t msglen)
{
    json_error_t jerr;
    json_t *root;
    int rc;

    if (len == 0)
        return wire_bad(msg, msglen, "response is empty");
    if (wire_fast(p, body, len, n, dim, out))
        return BD_OK;
    root = json_loadb(body, len, 0, &jerr);
    if (root == NULL) {
        if (json_error_code(&jerr) == json_error_out_of_memory)
            return BD_ENOMEM;
        return wire_bad(msg, msglen, "response is not valid JSON: %s (line %d, column %d)",
                        jerr.text, jerr.line, jerr.column);
    }
    switch (p) {
    case BD_PROVIDER_OLLAMA: {
        const json_t *arr = json_object_get(root, "embeddings");
        if (!json_is_object(root))
            rc = wire_bad(msg, msglen, "response is not a JSON object");
        else if (!json_is_array(arr))
            rc = wire_bad(msg, msglen, "response has no \"embeddings\" array");
        else
            rc = wire_rows(arr, n, dim, out, msg, msglen);
        break;
    }
    case BD_PROVIDER_OPENAI:
        if (!json_is_object(root))
            rc = wire_bad(msg, msglen, "response is not a JSON object");
        else
            rc = wire_openai(root, n, dim, out, msg, msglen);
        break;
    case BD_PROVIDER_TEI:
        if (!json_is_array(root))
            rc = wire_bad(msg, msglen, "response is not a JSON array of vectors");
        else
            rc = wire_rows(root, n, dim, out, msg, msglen);
        break;
    default:
        rc = wire_bad(msg, msglen, "provider has no wire format");
        break;
    }
    json_decref(root);
    return rc;
}

/* Copy s[0..n) into out as one printable line: control bytes become spaces, runs of spaces
 * collapse, the cut falls on a UTF-8 boundary. */
static void wire_excerpt(const char *s, size_t n, char *out, size_t outlen)
{
    size_t o = 0;

    if (outlen == 0)
        return;
    n = bd__model_utf8_cut(s, n, outlen - 1);
    for (size_t i = 0; i < n; i++) {
        char c = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? ' ' : s[i];
        if (c == ' ' && (o == 0 || out[o - 1] == ' '))
            continue;
        out[o++] = c;
    }
    while (o > 0 && out[o - 1] == ' ')
        o--;
    out[o] = '\0';
}

void bd__model_wire_error_text(const char *body, size_t len, char *out, size_t outlen)
{
    json_t *root = len ? json_loadb(body, len, JSON_DECODE_ANY, NULL) : NULL;
    const json_t *v = NULL;

    if (outlen == 0)
        return;
    if (json_is_object(root)) {
        const json_t *e = json_object_get(root, "error");
        if (json_is_string(e))
            v = e;
        else if (json_is_object(e) && json_is_string(json_object_get(e, "message")))
            v = json_object_get(e, "message");
        else if (json_is_string(json_object_get(root, "message")))
            v = json_object_get(root, "message");
        else if (json_is_string(json_object_get(root, "detail")))
            v = json_object_get(root, "detail");
    } else if (json_is_string(root))
        v = root;
    if (v != NULL)
        wire_excerpt(json_string_value(v), json_string_length(v), out, outlen);
    else
        wire_excerpt(body ? body : "", len, out, outlen);
    if (out[0] == '\0')
        snprintf(out, outlen, "(empty body)");
    json_decref(root);
}
