/* sha256.h -- SHA-256 for idempotency request hashes and the embedding cache key, computed
 * by OpenSSL's libcrypto (EVP). Any thread; each struct bd_sha256 used by one at a time.
 *
 * Memory: bd_sha256_init allocates an EVP_MD_CTX that bd_sha256_final frees, always (also
 * when it reports a failure). So every init is paired with exactly one final, even when the
 * caller gives up on the digest half-way; nothing else frees it.
 *
 * Failures (out of memory, or libcrypto refusing) are sticky: update after one is a no-op,
 * and final reports it. A caller that keys anything on the digest must check final's (or
 * bd_sha256_hex's) result: on failure the output is not a digest.
 */
#ifndef BATCHD_SHA256_H
#define BATCHD_SHA256_H

#include <stddef.h>

struct evp_md_ctx_st;                /* OpenSSL's EVP_MD_CTX, kept out of this header */

struct bd_sha256 {
    struct evp_md_ctx_st *ctx;       /* owned: from init until final; NULL after a failure */
    int err;                         /* BD_OK or the first failure */
};

/* Start a digest. Returns BD_OK, or BD_ENOMEM / BD_EINTERNAL (then s->ctx is NULL and final
 * returns the same error). Allocates. */
int bd_sha256_init(struct bd_sha256 *s);

/* Feed len bytes (data may be NULL when len is 0). No-op after a failure. */
void bd_sha256_update(struct bd_sha256 *s, const void *data, size_t len);

/* Write the 32-byte digest to out and free the context. Returns BD_OK, or the failure of
 * init/update/final (out is then all zero bytes, which is not a digest). */
int bd_sha256_final(struct bd_sha256 *s, unsigned char out[32]);

/* One shot, lower-case hex into out (65 bytes with the NUL). Returns BD_OK, or an error
 * with out set to "" (never a valid hex digest). */
int bd_sha256_hex(const void *data, size_t len, char out[65]);

#endif
