/* sha256.c -- SHA-256 through OpenSSL's EVP interface, behind batchd's small API.
 *
 * Owns one EVP_MD_CTX per digest in progress (init to final). Pure computation; any
 * thread.  SPDX-License-Identifier: MIT
 */
#include "batchd/sha256.h"
#include "batchd/error.h"

#include <openssl/evp.h>
#include <string.h>

/* Drop the context after a failure; the error sticks until final reports it. */
static void sha256_fail(struct bd_sha256 *s, int err)
{
    EVP_MD_CTX_free(s->ctx);
    s->ctx = NULL;
    s->err = err;
}

int bd_sha256_init(struct bd_sha256 *s)
{
    s->err = BD_OK;
    s->ctx = EVP_MD_CTX_new();
    if (s->ctx == NULL) {
        s->err = BD_ENOMEM;
        return s->err;
    }
    if (EVP_DigestInit_ex(s->ctx, EVP_sha256(), NULL) != 1)
        sha256_fail(s, BD_EINTERNAL);
    return s->err;
}

void bd_sha256_update(struct bd_sha256 *s, const void *data, size_t len)
{
    if (s->ctx == NULL || len == 0)
        return;
    if (EVP_DigestUpdate(s->ctx, data, len) != 1)
        sha256_fail(s, BD_EINTERNAL);
}

int bd_sha256_final(struct bd_sha256 *s, unsigned char out[32])
{
    unsigned int n = 0;

    if (s->ctx != NULL && (EVP_DigestFinal_ex(s->ctx, out, &n) != 1 || n != 32))
        s->err = BD_EINTERNAL;
    else if (s->ctx == NULL && s->err == BD_OK)
        s->err = BD_EINVAL;              /* a second final on the same digest */
    EVP_MD_CTX_free(s->ctx);
    s->ctx = NULL;
    if (s->err < 0)
        memset(out, 0, 32);
    return s->err;
}

int bd_sha256_hex(const void *data, size_t len, char out[65])
{
    static const char hex[] = "0123456789abcdef";
    struct bd_sha256 s;
    unsigned char d[32];
    int err;

    bd_sha256_init(&s);
    bd_sha256_update(&s, data, len);
    err = bd_sha256_final(&s, d);
    if (err < 0) {
        out[0] = '\0';
        return err;
    }
    for (int i = 0; i < 32; i++) {
        out[2 * i] = hex[d[i] >> 4];
        out[2 * i + 1] = hex[d[i] & 15];
    }
    out[64] = '\0';
    return BD_OK;
}
