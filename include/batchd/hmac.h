/* hmac.h -- HMAC-SHA256 (RFC 2104) on top of sha256.h: webhook signatures.
 *
 * Memory: as for sha256.h, init allocates two digest contexts that final frees, always; so
 * every init is paired with exactly one final. Failures are sticky and reported by final.
 * Any thread; each struct used by one at a time.
 */
#ifndef BATCHD_HMAC_H
#define BATCHD_HMAC_H

#include <stddef.h>

#include "batchd/sha256.h"

struct bd_hmac_sha256 {
    struct bd_sha256 inner; /* H((K ^ ipad) || message...) */
    struct bd_sha256 outer; /* H((K ^ opad) || inner digest), started at init */
};

/* Start a MAC under key[0..klen) (any length; a key over 64 bytes is hashed first, as RFC
 * 2104 says). Returns BD_OK or the failure final will also report. Allocates. */
int bd_hmac_sha256_init(struct bd_hmac_sha256 *h, const void *key, size_t klen);

/* Feed len bytes of the message (data may be NULL when len is 0). */
void bd_hmac_sha256_update(struct bd_hmac_sha256 *h, const void *data, size_t len);

/* Write the 32-byte MAC to out and free the contexts. BD_OK, or the first failure (out is
 * then all zero bytes, which is not a MAC). */
int bd_hmac_sha256_final(struct bd_hmac_sha256 *h, unsigned char out[32]);

/* One shot. */
int bd_hmac_sha256(const void *key, size_t klen, const void *msg, size_t mlen,
                   unsigned char out[32]);

#endif
