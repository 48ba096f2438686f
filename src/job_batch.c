/* job_batch.c -- the packed bulk_insert batch: encoder and decoder side by side (format in
 * job_batch.h).
 *
 * The encoder writes through pg_store.h's binary-COPY field encoder (the one owner of the
 * binary real[] layout); the decoder reads that layout back and checks every length
 * against what is left. Pure functions; any thread; the decoder never allocates.
 * SPDX-License-Identifier: MIT
 */
#include "batchd/job_batch.h"

#include "batchd/buf.h"
#include "batchd/error.h"
#include "batchd/pg_store.h"

#include <endian.h>
#include <string.h>

#define BATCH_FLOAT4_OID 700u
#define BATCH_ARRAY_HEADER 20u        /* ndim, has-null, oid, dimension, lower bound */

/* ---- encoder ------------------------------------------------------------------------- */

int bd_job_batch_put(struct bd_buf *out, const char *id, size_t id_len, const char *meta,
                     size_t meta_len, const float *v, unsigned dim)
{
    if (dim == 0 || dim > BD_JOB_BATCH_DIM_MAX) {
        out->is_failed = 1;             /* sticky, as the COPY encoder's own refusals */
        return BD_EINVAL;
    }
    bd_pg_copy_text(out, id, id_len);
    bd_pg_copy_text(out, meta, meta_len);
    return bd_pg_copy_float4_array(out, v, dim);
}

/* ---- decoder ------------------------------------------------------------------------- */

static uint32_t batch_be32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof(v));
    return be32toh(v);
}

void bd_job_batch_reader_init(struct bd_job_batch_reader *r, const void *payload, size_t len)
{
    r->p = payload;
    r->end = r->p + len;
    r->why = NULL;
}

static int batch_corrupt(struct bd_job_batch_reader *r, const char *why)
{
    r->why = why;
    r->p = r->end = NULL;
    return BD_EINVAL;
}

/* One field: its length word and bytes. */
static int batch_field(struct bd_job_batch_reader *r, const unsigned char **data, size_t *len)
{
    if (r->end - r->p < 4)
        return batch_corrupt(r, "the packed payload is truncated");
    uint32_t n = batch_be32(r->p);
    if (n > (uint32_t)INT32_MAX || n > (size_t)(r->end - r->p - 4))
        return batch_corrupt(r, "the packed payload is truncated");
    *data = r->p + 4;
    *len = n;
    r->p += 4 + (size_t)n;
    return BD_OK;
}

int bd_job_batch_next(struct bd_job_batch_reader *r, struct bd_job_batch_item *item)
{
    const unsigned char *id, *meta, *vec;
    size_t id_len, meta_len, vec_len;

    if (r->why != NULL)
        return BD_EINVAL;
    if (r->p == r->end)
        return 0;
    if (batch_field(r, &id, &id_len) < 0 || batch_field(r, &meta, &meta_len) < 0 ||
        batch_field(r, &vec, &vec_len) < 0)
        return BD_EINVAL;
    if (vec_len < BATCH_ARRAY_HEADER || batch_be32(vec) != 1 || batch_be32(vec + 4) != 0 ||
        batch_be32(vec + 8) != BATCH_FLOAT4_OID || batch_be32(vec + 16) != 1)
        return batch_corrupt(r, "an embedding is not a one-dimensional real[]");
    uint32_t dim = batch_be32(vec + 12);
    if (dim == 0 || dim > BD_JOB_BATCH_DIM_MAX ||
        vec_len != BATCH_ARRAY_HEADER + 8 * (size_t)dim)
        return batch_corrupt(r, "an embedding's dimension disagrees with its length");
    for (uint32_t i = 0; i < dim; i++)
        if (batch_be32(vec + BATCH_ARRAY_HEADER + 8 * (size_t)i) != 4)
            return batch_corrupt(r, "an embedding holds an element that is not a float4");
    *item = (struct bd_job_batch_item){ (const char *)id, id_len, (const char *)meta, meta_len,
                                        vec, vec_len, dim };
    return 1;
}

int bd_job_batch_unpack(const void *payload, size_t len, unsigned count, unsigned expect_dim,
                        struct bd_job_batch_item *items, const char **why)
{
    struct bd_job_batch_reader r;
    struct bd_job_batch_item extra;
    const char *reason = NULL;

    bd_job_batch_reader_init(&r, payload, len);
    for (unsigned i = 0; i < count && reason == NULL; i++) {
        int rc = bd_job_batch_next(&r, &items[i]);
        if (rc < 0)
            reason = r.why;
        else if (rc == 0)
            reason = "the packed payload holds fewer items than the batch";
        else if (expect_dim != 0 && items[i].dim != expect_dim)
            reason = "an embedding has the wrong dimension";
    }
    if (reason == NULL) {
        int rc = bd_job_batch_next(&r, &extra);
        if (rc != 0)
            reason = rc < 0 ? r.why : "the packed payload has trailing bytes";
    }
    if (why)
        *why = reason;
    return reason ? BD_EINVAL : BD_OK;
}

float bd_job_batch_item_get(const struct bd_job_batch_item *item, unsigned i)
{
    uint32_t bits = batch_be32(item->vec + BATCH_ARRAY_HEADER + 8 * (size_t)i + 4);
    float f;
    memcpy(&f, &bits, sizeof(f));
    return f;
}
