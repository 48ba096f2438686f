/* model_hashing.c -- the built-in "hashing" model: deterministic feature hashing of a text
 * into a unit vector, so batchd does real embedding work with no model server.
 *
 * Owns nothing; no allocation, no state. Any thread. Callers on the loop thread must bound
 * the work per tick themselves (model_client.c computes it in slices).
 * SPDX-License-Identifier: MIT
 *
 * The features of a text, exactly:
 *   1. Normalise as a byte stream: ASCII letters to lower case, every run of ASCII
 *      whitespace to one space, one space of padding before and after (not doubled when the
 *      text already starts or ends with whitespace). Other bytes (UTF-8) pass unchanged.
 *   2. Word unigrams (weight 2): maximal runs of word bytes (ASCII letters and digits, and
 *      every byte >= 0x80, so UTF-8 letters stay inside words), lower-cased. Hash =
 *      mix(FNV-1a 64 of the byte 'w' then the word's bytes).
 *   3. Character 3-grams (weight 1): every 3 consecutive bytes of the normalised, padded
 *      stream ("hi" gives " hi" and "hi "). Hash = mix(FNV-1a 64 of 't' and the 3 bytes).
 *   Each feature adds sign * weight to out[h % dim], sign = -1 when bit 63 of h is set.
 *   mix is the splitmix64 finaliser, so the low bits used by h % dim are well spread.
 *   4. L2-normalise (sum of squares in double). No feature (empty or whitespace-only text)
 *      gives e0 = (1, 0, ..., 0): a zero vector has no direction, and cosine distance on it
 *      is undefined (NaN in pgvector), so a fixed unit vector is the safer answer.
 */
#include "batchd/model_client.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#define HASH_FNV_OFFSET 0xcbf29ce484222325ull
#define HASH_FNV_PRIME  0x100000001b3ull
#define HASH_WORD_WEIGHT 2.0f
#define HASH_GRAM_WEIGHT 1.0f

static inline uint64_t hash_step(uint64_t h, unsigned char c)
{
    return (h ^ c) * HASH_FNV_PRIME;
}

static inline uint64_t hash_mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline void hash_add(float *out, unsigned dim, uint64_t h, float weight)
{
    out[h % dim] += (h >> 63) ? -weight : weight;
}

static inline int hash_is_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

static inline int hash_is_word(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c >= 0x80;
}

/* The 3-gram state: the last two normalised bytes and how many have been seen. */
struct hash_grams {
    unsigned char a, b;
    unsigned seen;
};

static inline void hash_gram_push(struct hash_grams *g, unsigned char c, float *out,
                                  unsigned dim)
{
    if (g->seen >= 2) {
        uint64_t h = hash_step(HASH_FNV_OFFSET, 't');
        h = hash_step(h, g->a);
        h = hash_step(h, g->b);
        h = hash_step(h, c);
        hash_add(out, dim, hash_mix(h), HASH_GRAM_WEIGHT);
    }
    g->a = g->b;
    g->b = c;
    g->seen++;
}

void bd_model_hashing_embed(const char *text, size_t len, unsigned dim, float *out)
{
    struct hash_grams g = {0, 0, 0};
    uint64_t wh = 0;
    int in_word = 0;
    unsigned char last = ' ';
    double sum = 0.0;

    if (dim == 0)
        return;
    memset(out, 0, (size_t)dim * sizeof(*out));
    hash_gram_push(&g, ' ', out, dim);                 /* leading pad */
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c - 'A' + 'a');
        else if (hash_is_space(c))
            c = ' ';
        if (hash_is_word(c)) {
            if (!in_word) {
                wh = hash_step(HASH_FNV_OFFSET, 'w');
                in_word = 1;
            }
            wh = hash_step(wh, c);
        } else if (in_word) {
            hash_add(out, dim, hash_mix(wh), HASH_WORD_WEIGHT);
            in_word = 0;
        }
        if (c == ' ' && last == ' ')
            continue;                                  /* collapse whitespace runs */
        hash_gram_push(&g, c, out, dim);
        last = c;
    }
    if (in_word)
        hash_add(out, dim, hash_mix(wh), HASH_WORD_WEIGHT);
    if (last != ' ')
        hash_gram_push(&g, ' ', out, dim);             /* trailing pad */

    for (unsigned j = 0; j < dim; j++)
        sum += (double)out[j] * out[j];
    if (sum == 0.0) {
        out[0] = 1.0f;
        return;
    }
    double inv = 1.0 / sqrt(sum);
    for (unsigned j = 0; j < dim; j++)
        out[j] = (float)(out[j] * inv);
}
