/* fake_vectors.h -- the fake model server's deterministic embedding, so tests can recompute it.
 *
 * The fake model server (fake_model.c) answers every embedding request with this function's
 * output, and tests include this header to know, bit for bit, what batchd should have stored.
 * Header-only, no state, no allocation; needs libm (sqrt).  SPDX-License-Identifier: MIT
 *
 * The formula, for a text of len bytes and a dimension dim:
 *
 *     h     = FNV-1a 64 of the bytes     (offset basis 0xcbf29ce484222325, prime 0x100000001b3)
 *     z_i   = mix(h + (i + 1) * 0x9E3779B97F4A7C15)                       for i = 0 .. dim-1
 *             mix(z): z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;
 *                     z = (z ^ (z >> 27)) * 0x94D049BB133111EB;
 *                     return z ^ (z >> 31)                  (the splitmix64 finaliser)
 *     u_i   = (double)(z_i >> 11) * 2^-53 * 2.0 - 1.0       (a double in [-1, 1))
 *     norm  = sqrt(sum of u_i * u_i), summed in double from i = 0 upwards
 *     out_i = (float)(u_i / norm)                            (rounded to float once)
 *
 * All arithmetic is uint64 wrap-around and IEEE double, so every platform gets the same bits.
 * The server prints each out_i with 9 significant digits, which round-trips a float exactly:
 * (float)strtod(printed) == out_i.  If norm is 0 (never seen in practice) out is all zeros.
 */
#ifndef FAKE_VECTORS_H
#define FAKE_VECTORS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

/* FNV-1a 64 of text[0..len). */
static inline uint64_t fake_vector_hash(const char *text, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ull;

    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)text[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* u_i of the formula above: component i before normalisation, in [-1, 1). */
static inline double fake_vector_raw(uint64_t h, unsigned i)
{
    uint64_t z = h + (uint64_t)(i + 1) * 0x9E3779B97F4A7C15ull;

    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (double)(z >> 11) * (1.0 / 9007199254740992.0) * 2.0 - 1.0;
}

/* Fill out[0..dim) with the unit-length vector of text[0..len) (text need not be
 * NUL-terminated and may contain NULs). out is caller storage of dim floats. */
static inline void fake_vector(const char *text, size_t len, unsigned dim, float *out)
{
    uint64_t h = fake_vector_hash(text, len);
    double sum = 0.0;

    for (unsigned i = 0; i < dim; i++) {
        double u = fake_vector_raw(h, i);
        sum += u * u;
    }
    double norm = sqrt(sum);
    for (unsigned i = 0; i < dim; i++)
        out[i] = norm > 0.0 ? (float)(fake_vector_raw(h, i) / norm) : 0.0f;
}

#endif
