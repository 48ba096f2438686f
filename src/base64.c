/* base64.c -- base64 (RFC 4648, standard alphabet) in both directions, side by side.
 *
 * Owns nothing. Pure computation, any thread, no allocation.  SPDX-License-Identifier: MIT
 */
#include "batchd/base64.h"
#include "batchd/error.h"

#include <stdint.h>

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t bd_base64_encoded_len(size_t n)
{
    return (n + 2) / 3 * 4;
}

size_t bd_base64_encode(const void *src, size_t n, char *out)
{
    const unsigned char *p = src;
    size_t o = 0, i = 0;

    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        out[o++] = b64_alphabet[v >> 18];
        out[o++] = b64_alphabet[(v >> 12) & 63];
        out[o++] = b64_alphabet[(v >> 6) & 63];
        out[o++] = b64_alphabet[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0);
        out[o++] = b64_alphabet[v >> 18];
        out[o++] = b64_alphabet[(v >> 12) & 63];
        out[o++] = i + 1 < n ? b64_alphabet[(v >> 6) & 63] : '=';
        out[o++] = '=';
    }
    out[o] = '\0';
    return o;
}

size_t bd_base64_decoded_max(size_t len)
{
    return (len + 3) / 4 * 3;
}

static int b64_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

int bd_base64_decode(const char *s, size_t len, unsigned char *out, size_t outcap, size_t *outlen)
{
    uint32_t acc = 0;
    unsigned bits = 0;
    size_t o = 0;

    /* Padding only completes the last group of four. */
    if (len % 4 == 0 && len > 0 && s[len - 1] == '=')
        len -= (len > 1 && s[len - 2] == '=') ? 2 : 1;
    if (len % 4 == 1)
        return BD_EINVAL;
    for (size_t i = 0; i < len; i++) {
        int v = b64_value(s[i]);
        if (v < 0)
            return BD_EINVAL;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o == outcap)
                return BD_EINVAL;
            out[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (acc != 0) /* bits that belong to no byte must be zero */
        return BD_EINVAL;
    *outlen = o;
    return BD_OK;
}
