/* fuzz_model_wire.c -- fuzz target for the model wire formats (src/model_wire.c).
 *
 * Input: byte 0 chooses the shape, the rest is a model server's response body.
 *   dim = (byte0 & 0x0f) + 1   (1..16 numbers per vector)
 *   n   =  byte0 >> 4          (0..15 inputs)
 * The body goes through bd__model_wire_parse() for ollama, openai, tei and hashing (which
 * has no wire format), into an array of exactly n*dim floats so ASan sees any write past
 * it; on BD_OK every float must be finite. A reference parser built on jansson (below)
 * decides whether the body is a valid answer of that shape; whenever jansson can read the
 * body without duplicate keys, bd__model_wire_parse() (its scanner fast path or its
 * jansson path) must agree with the reference, value for value. It then goes through
 * bd__model_wire_error_text() with several output sizes (always NUL-terminated, shorter
 * than the buffer, no control bytes, never empty) and bd__model_utf8_cut().
 *
 * The same bytes, split at 0x1e (ASCII record separator) into a model name and texts, also
 * build a request body for each provider (bd__model_wire_begin/add/end): it must be valid
 * JSON, hold every text, and give back every text that was valid UTF-8 byte for byte.
 * Pure functions: no loop, no I/O.  SPDX-License-Identifier: MIT
 */
#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batchd/buf.h"
#include "batchd/error.h"
#include "model_internal.h"

#define FUZZ_MAX_TEXTS 64

/* printf arguments for "%.*s": at most 300 bytes of a buffer that has no NUL. */
#define SHOW(s, len) (int)((len) < 300 ? (len) : 300), (s)

/* Fail loudly with what broke; abort() is what libFuzzer and the replay driver catch. */
#define FUZZ_NAME "fuzz_model_wire"
#include "fuzz_check.h"

static const enum bd_model_provider providers[] = {
    BD_PROVIDER_OLLAMA, BD_PROVIDER_OPENAI, BD_PROVIDER_TEI, BD_PROVIDER_HASHING,
};

/* One vector the way the documentation states it: exactly dim numbers, finite as float. */
static bool ref_vector(const json_t *v, unsigned dim, float *row)
{
    if (!json_is_array(v) || json_array_size(v) != dim)
        return false;
    for (unsigned j = 0; j < dim; j++) {
        const json_t *x = json_array_get(v, j);
        if (!json_is_number(x) || !isfinite((float)json_number_value(x)))
            return false;
        row[j] = (float)json_number_value(x);
    }
    return true;
}

/* The reference: 1 and ref[0..n*dim) when body is a valid answer of provider p's shape,
 * 0 when it is JSON but not such an answer, -1 when jansson cannot read it (or it has a
 * duplicate key, where "first" and "last" readings may both be defended). An openai index
 * may be written as an integral number (1 or 1.0): the fast path reads numbers, and the
 * difference is not worth failing a batch for. */
static int ref_parse(enum bd_model_provider p, const char *body, size_t len, unsigned n,
                     unsigned dim, float *ref)
{
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, NULL);
    const json_t *arr;
    int ok = 1;

    if (root == NULL)
        return -1;
    switch (p) {
    case BD_PROVIDER_OLLAMA:
    case BD_PROVIDER_TEI:
        arr = p == BD_PROVIDER_TEI ? root : json_object_get(root, "embeddings");
        if (!json_is_array(arr) || json_array_size(arr) != n)
            ok = 0;
        for (unsigned i = 0; ok && i < n; i++)
            ok = ref_vector(json_array_get(arr, i), dim, ref + (size_t)i * dim);
        break;
    case BD_PROVIDER_OPENAI: {
        unsigned char seen[16] = { 0 };          /* n <= 15 */
        arr = json_object_get(root, "data");
        if (!json_is_array(arr) || json_array_size(arr) != n)
            ok = 0;
        for (unsigned k = 0; ok && k < n; k++) {
            const json_t *item = json_array_get(arr, k);
            const json_t *jidx = json_object_get(item, "index");
            double idx = k;
            if (!json_is_object(item) || (jidx != NULL && !json_is_number(jidx))) {
                ok = 0;
                break;
            }
            if (jidx != NULL)
                idx = json_number_value(jidx);
            if (!(idx >= 0 && idx < n) || idx != floor(idx) || seen[(unsigned)idx]) {
                ok = 0;
                break;
            }
            seen[(unsigned)idx] = 1;
            ok = ref_vector(json_object_get(item, "embedding"), dim,
                            ref + (size_t)idx * dim);
        }
        break;
    }
    default:
        ok = 0;
    }
    json_decref(root);
    return ok;
}

static void fuzz_parse(const char *body, size_t len, unsigned n, unsigned dim)
{
    /* Exactly n*dim floats (one when n is 0, so malloc never returns NULL legitimately). */
    size_t count = (size_t)n * dim;
    float *out = malloc((count ? count : 1) * sizeof(float));
    float *ref = malloc((count ? count : 1) * sizeof(float));
    char msg[256];

    if (out == NULL || ref == NULL) {
        free(out);
        free(ref);
        return;
    }
    for (size_t p = 0; p < sizeof(providers) / sizeof(providers[0]); p++) {
        int rc;

        msg[0] = '\0';
        rc = bd__model_wire_parse(providers[p], body, len, n, dim, out, msg, sizeof(msg));
        FUZZ_CHECK(rc == BD_OK || rc == BD_EMODELBAD || rc == BD_ENOMEM, "rc=%d", rc);
        if (rc == BD_EMODELBAD)
            FUZZ_CHECK(msg[0] != '\0', "provider %d: BD_EMODELBAD without a message",
                       (int)providers[p]);
        if (rc == BD_OK) {
            FUZZ_CHECK(providers[p] != BD_PROVIDER_HASHING, "hashing parsed a body");
            for (size_t i = 0; i < count; i++)
                FUZZ_CHECK(isfinite(out[i]), "provider %d: out[%zu] = %g",
                           (int)providers[p], i, (double)out[i]);
        }
        if (rc == BD_ENOMEM)
            continue;
        int want = ref_parse(providers[p], body, len, n, dim, ref);
        if (want < 0)
            continue;                              /* jansson cannot judge it either */
        FUZZ_CHECK((rc == BD_OK) == (want == 1),
                   "provider %d, n %u, dim %u: parse says %d (%s), the reference %s: %.*s",
                   (int)providers[p], n, dim, rc, msg, want ? "accepts" : "refuses",
                   SHOW(body, len));
        for (size_t i = 0; rc == BD_OK && i < count; i++)
            FUZZ_CHECK(out[i] == ref[i], "provider %d: out[%zu] = %.9g, the reference %.9g: "
                       "%.*s", (int)providers[p], i, (double)out[i], (double)ref[i],
                       SHOW(body, len));
    }
    free(ref);
    free(out);
}

static void fuzz_error_text(const char *body, size_t len)
{
    static const size_t sizes[] = { 1, 2, 5, 17, 256 };

    for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
        size_t outlen = sizes[s];
        char *out = malloc(outlen);
        size_t n;

        if (out == NULL)
            return;
        memset(out, 'x', outlen);
        bd__model_wire_error_text(body, len, out, outlen);
        n = strnlen(out, outlen);
        FUZZ_CHECK(n < outlen, "outlen %zu: not NUL-terminated", outlen);
        /* "(empty body)" is cut to fit too, so a one-byte buffer holds just the NUL. */
        FUZZ_CHECK(n > 0 || outlen == 1, "outlen %zu: empty text", outlen);
        for (size_t i = 0; i < n; i++)
            FUZZ_CHECK((unsigned char)out[i] >= 0x20 && out[i] != 0x7f,
                       "outlen %zu: control byte 0x%02x at %zu", outlen,
                       (unsigned char)out[i], i);
        free(out);
    }
}

static void fuzz_utf8_cut(const char *text, size_t len)
{
    for (size_t max = 0; max <= 8 && max <= len + 1; max++) {
        size_t cut = bd__model_utf8_cut(text, len, max);

        FUZZ_CHECK(cut <= len, "cut %zu > len %zu", cut, len);
        FUZZ_CHECK(len <= max ? cut == len : cut <= max, "cut %zu, len %zu, max %zu", cut,
                   len, max);
    }
}

/* 1 when s[0..len) is valid UTF-8 (jansson's rules, which are RFC 3629's). */
static int is_utf8(const char *s, size_t len)
{
    json_t *j = json_stringn(s, len);
    int ok = j != NULL;

    json_decref(j);
    return ok;
}

static void fuzz_build(const char *data, size_t size)
{
    const char *texts[FUZZ_MAX_TEXTS];
    size_t lens[FUZZ_MAX_TEXTS];
    unsigned ntexts = 0;
    char *model;
    const char *p = data, *end = data + size, *sep;
    struct bd_buf b;

    /* First piece: the remote model name (a C string: cut at a NUL, as config gives it). */
    sep = memchr(p, 0x1e, (size_t)(end - p));
    model = strndup(p, sep ? (size_t)(sep - p) : (size_t)(end - p));
    if (model == NULL)
        return;
    p = sep ? sep + 1 : end;
    while (p < end && ntexts < FUZZ_MAX_TEXTS) {
        sep = memchr(p, 0x1e, (size_t)(end - p));
        texts[ntexts] = p;
        lens[ntexts] = sep ? (size_t)(sep - p) : (size_t)(end - p);
        ntexts++;
        p = sep ? sep + 1 : end;
    }

    bd_buf_init(&b);
    for (size_t pi = 0; pi < 3; pi++) {                /* hashing has no request body */
        enum bd_model_provider prov = providers[pi];
        json_error_t jerr;
        json_t *root, *arr, *jm;

        bd_buf_reset(&b);
        bd__model_wire_begin(&b, prov, model);
        for (unsigned i = 0; i < ntexts; i++)
            bd__model_wire_add(&b, texts[i], lens[i], i == 0);
        bd__model_wire_end(&b, prov);
        if (b.is_failed)
            continue;                                  /* ENOMEM: nothing to check */
        root = json_loadb(b.data, b.len, JSON_ALLOW_NUL, &jerr);
        FUZZ_CHECK(root != NULL, "provider %d: body is not JSON (%s): %.200s", (int)prov,
                   jerr.text, b.data);
        arr = json_object_get(root, prov == BD_PROVIDER_TEI ? "inputs" : "input");
        FUZZ_CHECK(json_is_array(arr) && json_array_size(arr) == ntexts,
                   "provider %d: %zu inputs for %u texts", (int)prov, json_array_size(arr),
                   ntexts);
        for (unsigned i = 0; i < ntexts; i++) {
            json_t *s = json_array_get(arr, i);

            FUZZ_CHECK(json_is_string(s), "provider %d: input %u is not a string", (int)prov,
                       i);
            if (is_utf8(texts[i], lens[i]))
                FUZZ_CHECK(json_string_length(s) == lens[i] &&
                               memcmp(json_string_value(s), texts[i], lens[i]) == 0,
                           "provider %d: text %u did not survive", (int)prov, i);
        }
        if (prov != BD_PROVIDER_TEI) {
            jm = json_object_get(root, "model");
            FUZZ_CHECK(json_is_string(jm), "provider %d: no model", (int)prov);
            if (is_utf8(model, strlen(model)))
                FUZZ_CHECK(strcmp(json_string_value(jm), model) == 0,
                           "provider %d: model name did not survive", (int)prov);
        }
        json_decref(root);
    }
    bd_buf_free(&b);
    free(model);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *body;
    size_t len;
    unsigned dim, n;

    if (size == 0)
        return 0;
    dim = (data[0] & 0x0fu) + 1;
    n = data[0] >> 4;
    body = (const char *)data + 1;
    len = size - 1;

    fuzz_parse(body, len, n, dim);
    fuzz_error_text(body, len);
    fuzz_utf8_cut(body, len);
    fuzz_build(body, len);
    for (size_t p = 0; p < sizeof(providers) / sizeof(providers[0]); p++)
        (void)bd__model_wire_path(providers[p]);
    return 0;
}
