/* pg_copy.c -- the binary COPY encoder (on struct bd_buf, buf.h) and the decoder of the one
 * binary value we read back whole, real[].
 *
 * Builds "COPY ... FROM STDIN WITH (FORMAT binary)" payloads for bd_pg_conn_copy_in: the
 * signature and header, tuples of length-prefixed fields, the trailer. The caller owns the
 * buffer. Pure computation, no I/O; any thread.  SPDX-License-Identifier: MIT
 */
#include "batchd/pg_store.h"

#include "batchd/buf.h"
#include "batchd/error.h"

#include <endian.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const char pg_copy_signature[11] = { 'P', 'G', 'C', 'O', 'P', 'Y', '\n', '\377', '\r',
                                            '\n', '\0' };

/* Room for extra bytes; sticky: nothing more is written once the buffer failed. */
static int copy_grow(struct bd_buf *b, size_t extra)
{
    if (b->is_failed)
        return BD_ENOMEM;
    return bd_buf_reserve(b, extra);
}

/* A value the format cannot hold: the payload is spoiled like a failed allocation. */
static int copy_refuse(struct bd_buf *b)
{
    b->is_failed = 1;
    return BD_EINVAL;
}

static void copy_put16(struct bd_buf *b, uint16_t v)
{
    uint16_t n = htobe16(v);

    memcpy(b->data + b->len, &n, 2);
    b->len += 2;
}

static void copy_put32(struct bd_buf *b, uint32_t v)
{
    uint32_t n = htobe32(v);

    memcpy(b->data + b->len, &n, 4);
    b->len += 4;
}

static void copy_put64(struct bd_buf *b, uint64_t v)
{
    uint64_t n = htobe64(v);

    memcpy(b->data + b->len, &n, 8);
    b->len += 8;
}

int bd_pg_copy_begin(struct bd_buf *b)
{
    if (copy_grow(b, sizeof(pg_copy_signature) + 8) < 0)
        return BD_ENOMEM;
    memcpy(b->data + b->len, pg_copy_signature, sizeof(pg_copy_signature));
    b->len += sizeof(pg_copy_signature);
    copy_put32(b, 0);    /* flags: no OIDs */
    copy_put32(b, 0);    /* header extension length */
    return BD_OK;
}

int bd_pg_copy_row(struct bd_buf *b, unsigned ncols)
{
    if (ncols > INT16_MAX) {
        return copy_refuse(b);
    }
    if (copy_grow(b, 2) < 0)
        return BD_ENOMEM;
    copy_put16(b, (uint16_t)ncols);
    return BD_OK;
}

int bd_pg_copy_null(struct bd_buf *b)
{
    if (copy_grow(b, 4) < 0)
        return BD_ENOMEM;
    copy_put32(b, UINT32_MAX);    /* length -1 */
    return BD_OK;
}

int bd_pg_copy_bytes(struct bd_buf *b, const void *p, size_t len)
{
    if (len > INT32_MAX) {
        return copy_refuse(b);
    }
    if (copy_grow(b, 4 + len) < 0)
        return BD_ENOMEM;
    copy_put32(b, (uint32_t)len);
    if (len > 0)
        memcpy(b->data + b->len, p, len);
    b->len += len;
    return BD_OK;
}

int bd_pg_copy_text(struct bd_buf *b, const char *s, size_t len)
{
    return bd_pg_copy_bytes(b, s, len);   /* text's binary form is its bytes */
}

int bd_pg_copy_int4(struct bd_buf *b, int32_t v)
{
    if (copy_grow(b, 8) < 0)
        return BD_ENOMEM;
    copy_put32(b, 4);
    copy_put32(b, (uint32_t)v);
    return BD_OK;
}

int bd_pg_copy_int8(struct bd_buf *b, int64_t v)
{
    if (copy_grow(b, 12) < 0)
        return BD_ENOMEM;
    copy_put32(b, 8);
    copy_put64(b, (uint64_t)v);
    return BD_OK;
}

int bd_pg_copy_float8(struct bd_buf *b, double v)
{
    uint64_t bits;

    memcpy(&bits, &v, sizeof(bits));
    if (copy_grow(b, 12) < 0)
        return BD_ENOMEM;
    copy_put32(b, 8);
    copy_put64(b, bits);
    return BD_OK;
}

int bd_pg_copy_bool(struct bd_buf *b, bool v)
{
    if (copy_grow(b, 5) < 0)
        return BD_ENOMEM;
    copy_put32(b, 1);
    b->data[b->len++] = v ? 1 : 0;
    return BD_OK;
}

/* real[] in binary, both directions. Array binary format: ndim, has-null flag, element
 * type OID, then per dimension its size and lower bound, then each element as length +
 * value; all big-endian. An empty array has ndim 0 and no dimension entries. */

#define PG_FLOAT4_OID 700
#define PG_ARRAY_HEAD 20                /* ndim, flags, oid, size, lower bound */

int bd_pg_copy_float4_array(struct bd_buf *b, const float *v, size_t n)
{
    size_t body = n > 0 ? PG_ARRAY_HEAD + n * 8 : 12;

    if (n > (INT32_MAX - PG_ARRAY_HEAD) / 8) {
        return copy_refuse(b);
    }
    if (copy_grow(b, 4 + body) < 0)
        return BD_ENOMEM;
    copy_put32(b, (uint32_t)body);
    copy_put32(b, n > 0 ? 1 : 0);    /* ndim */
    copy_put32(b, 0);                /* has nulls */
    copy_put32(b, PG_FLOAT4_OID);
    if (n > 0) {
        copy_put32(b, (uint32_t)n);  /* dimension */
        copy_put32(b, 1);            /* lower bound */
    }
    for (size_t i = 0; i < n; i++) {
        uint32_t bits;

        memcpy(&bits, &v[i], sizeof(bits));
        copy_put32(b, 4);
        copy_put32(b, bits);
    }
    return BD_OK;
}

static uint32_t pg_get32(const unsigned char *p)
{
    uint32_t n;

    memcpy(&n, p, 4);
    return be32toh(n);
}

int bd_pg_float4_array_decode(const char *p, size_t len, size_t n, float *out)
{
    const unsigned char *u = (const unsigned char *)p;

    if (p == NULL)
        return BD_EINVAL;
    if (n == 0)                         /* '{}' is ndim 0; a 1-D array of 0 also decodes */
        return len == 12 && pg_get32(u) == 0 && pg_get32(u + 8) == PG_FLOAT4_OID
                   ? BD_OK
                   : BD_EINVAL;
    if (n > (SIZE_MAX - PG_ARRAY_HEAD) / 8 || len != PG_ARRAY_HEAD + 8 * n)
        return BD_EINVAL;
    if (pg_get32(u) != 1 || pg_get32(u + 4) != 0 || pg_get32(u + 8) != PG_FLOAT4_OID ||
        pg_get32(u + 12) != n)
        return BD_EINVAL;
    u += PG_ARRAY_HEAD;
    for (size_t i = 0; i < n; i++, u += 8) {
        uint32_t bits;

        if (pg_get32(u) != 4)           /* -1 would be a NULL element */
            return BD_EINVAL;
        bits = pg_get32(u + 4);
        memcpy(&out[i], &bits, 4);
    }
    return BD_OK;
}

int bd_pg_copy_jsonb(struct bd_buf *b, const char *json, size_t len)
{
    if (len > INT32_MAX - 1) {
        return copy_refuse(b);
    }
    if (copy_grow(b, 5 + len) < 0)
        return BD_ENOMEM;
    copy_put32(b, (uint32_t)(len + 1));
    b->data[b->len++] = 1;              /* jsonb binary format version */
    if (len > 0)
        memcpy(b->data + b->len, json, len);
    b->len += len;
    return BD_OK;
}

int bd_pg_copy_end(struct bd_buf *b)
{
    if (copy_grow(b, 2) < 0)
        return BD_ENOMEM;
    copy_put16(b, UINT16_MAX);       /* field count -1: end of data */
    return BD_OK;
}

/* Append PostgreSQL's text form of a real[] ("{0.1,-2e-05,NaN}") as a JSON array
 * ("[0.1,-2e-05,null]"). No allocation beyond the buffer's: float4out already writes the
 * shortest exact decimal, which is valid JSON, so the text is copied once and its braces
 * turned into brackets in place. Only NaN, Infinity and NULL elements, which JSON cannot
 * express, need a second, token-by-token pass (they become null). */
void bd_pg_real_array_to_json(struct bd_buf *b, const char *s, size_t len)
{
    size_t start = b->len, i = 0;
    bool is_special = false;
    char *p;

    bd_buf_append(b, s, len);
    if (b->is_failed)
        return;
    p = b->data + start;
    for (i = 0; i < len; i++) {
        switch (p[i]) {
        case '{': p[i] = '['; break;
        case '}': p[i] = ']'; break;
        case 'N': case 'I': case '"': is_special = true; break;
        default: break;
        }
    }
    if (!is_special)
        return;
    b->len = start;
    for (i = 0; i < len;) {
        char c = s[i];
        size_t j = i;

        if (c == '{' || c == '}' || c == ',') {
            bd_buf_append(b, c == '{' ? "[" : c == '}' ? "]" : ",", 1);
            i++;
            continue;
        }
        while (j < len && s[j] != ',' && s[j] != '}')
            j++;
        if ((c >= '0' && c <= '9') || (c == '-' && i + 1 < j && s[i + 1] >= '0' && s[i + 1] <= '9'))
            bd_buf_append(b, s + i, j - i);
        else
            bd_buf_append(b, "null", 4);
        i = j;
    }
}
