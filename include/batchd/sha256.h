/* sha256.h -- SHA-256 (FIPS 180-4) for idempotency request hashes and the embedding cache
 * key. Any thread; no allocation.
 */
#ifndef BATCHD_SHA256_H
#define BATCHD_SHA256_H

#include <stddef.h>
#include <stdint.h>

struct bd_sha256 {
    uint32_t h[8];
    uint64_t total;
    unsigned char block[64];
    size_t used;
};

void bd_sha256_init(struct bd_sha256 *s);
void bd_sha256_update(struct bd_sha256 *s, const void *data, size_t len);
void bd_sha256_final(struct bd_sha256 *s, unsigned char out[32]);
/* One shot, lower-case hex into out (65 bytes with the NUL). */
void bd_sha256_hex(const void *data, size_t len, char out[65]);

#endif
