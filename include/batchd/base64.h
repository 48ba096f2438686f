/* base64.h -- the one base64 codec (RFC 4648 section 4, standard alphabet "+/" with "="
 * padding): webhook secrets ("whsec_<base64>") and signatures, and any other base64 batchd
 * writes or reads. Pure functions, no allocation; any thread.
 */
#ifndef BATCHD_BASE64_H
#define BATCHD_BASE64_H

#include <stddef.h>

/* Characters the encoding of n bytes takes, padding included, without the NUL: 4*ceil(n/3). */
size_t bd_base64_encoded_len(size_t n);

/* Encode src[0..n) into out, which holds bd_base64_encoded_len(n) + 1 bytes; out is
 * NUL-terminated. Returns the length written (without the NUL). src may be NULL when n is 0. */
size_t bd_base64_encode(const void *src, size_t n, char *out);

/* The most bytes len characters of base64 decode to (3 per 4, rounded up). */
size_t bd_base64_decoded_max(size_t len);

/* Decode s[0..len) into out (outcap bytes; bd_base64_decoded_max(len) always suffices).
 * Accepts the standard alphabet with "=" padding, or without padding; refuses anything else
 * (whitespace, "-_", a lone trailing character, padding in the middle, non-zero bits left
 * over in the last character). Returns BD_OK with *outlen set, or BD_EINVAL (out may then be
 * partly written). */
int bd_base64_decode(const char *s, size_t len, unsigned char *out, size_t outcap, size_t *outlen);

#endif
