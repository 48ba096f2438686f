/* hmac.c -- HMAC-SHA256 (RFC 2104) built on bd_sha256: the pads, the two passes.
 *
 * Owns the two digest contexts of a MAC in progress (init to final). Pure computation; any
 * thread. The padded key lives on the stack and is wiped after use.
 * SPDX-License-Identifier: MIT
 */
#include "batchd/hmac.h"
#include "batchd/error.h"

#include <string.h>

#define HMAC_BLOCK 64 /* SHA-256's block size */

/* A memset the compiler may not drop as a dead store. */
static void hmac_wipe(void *p, size_t n)
{
    volatile unsigned char *v = p;
    while (n-- > 0)
        *v++ = 0;
}

int bd_hmac_sha256_init(struct bd_hmac_sha256 *h, const void *key, size_t klen)
{
    unsigned char k[HMAC_BLOCK] = {0};
    unsigned char pad[HMAC_BLOCK];
    int err, err2;

    if (klen > HMAC_BLOCK) {
        struct bd_sha256 s;
        bd_sha256_init(&s);
        bd_sha256_update(&s, key, klen);
        err = bd_sha256_final(&s, k); /* 32 bytes, the rest stays zero */
    } else {
        if (klen > 0)
            memcpy(k, key, klen);
        err = BD_OK;
    }
    for (int i = 0; i < HMAC_BLOCK; i++)
        pad[i] = k[i] ^ 0x36;
    err2 = bd_sha256_init(&h->inner);
    bd_sha256_update(&h->inner, pad, sizeof(pad));
    for (int i = 0; i < HMAC_BLOCK; i++)
        pad[i] = k[i] ^ 0x5c;
    int err3 = bd_sha256_init(&h->outer);
    bd_sha256_update(&h->outer, pad, sizeof(pad));
    hmac_wipe(k, sizeof(k));
    hmac_wipe(pad, sizeof(pad));
    if (err < 0 && h->inner.err == BD_OK)
        h->inner.err = err; /* a failed key digest fails the MAC */
    return err < 0 ? err : err2 < 0 ? err2 : err3;
}

void bd_hmac_sha256_update(struct bd_hmac_sha256 *h, const void *data, size_t len)
{
    bd_sha256_update(&h->inner, data, len);
}

int bd_hmac_sha256_final(struct bd_hmac_sha256 *h, unsigned char out[32])
{
    unsigned char d[32];
    int err = bd_sha256_final(&h->inner, d);

    bd_sha256_update(&h->outer, d, sizeof(d));
    int err2 = bd_sha256_final(&h->outer, out);
    hmac_wipe(d, sizeof(d));
    if (err < 0 || err2 < 0) {
        memset(out, 0, 32);
        return err < 0 ? err : err2;
    }
    return BD_OK;
}

int bd_hmac_sha256(const void *key, size_t klen, const void *msg, size_t mlen,
                   unsigned char out[32])
{
    struct bd_hmac_sha256 h;

    bd_hmac_sha256_init(&h, key, klen);
    bd_hmac_sha256_update(&h, msg, mlen);
    return bd_hmac_sha256_final(&h, out);
}
