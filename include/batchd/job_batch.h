/* job_batch.h -- the packed bulk_insert batch (job_batches.payload): one codec, both
 * directions.
 *
 * A batch is its items back to back; each item is three binary-COPY fields (a big-endian
 * int32 length, then the bytes): the id (UTF-8 text), the metadata (a JSON object as text)
 * and the embedding as a binary real[] value (ndim 1, no NULLs, element type float4, lower
 * bound 1, then per element a length 4 and the float's bits, all big-endian). The
 * embedding field is therefore ready to go into a binary COPY as it is: the floats are
 * parsed once, at submit, and never formatted or parsed again. The item count is not in
 * the payload (job_batches.item_count holds it).
 *
 * Pure functions over caller memory; any thread. The encoder allocates (it grows the
 * buffer); the decoder never does (items are slices of the payload).
 */
#ifndef BATCHD_JOB_BATCH_H
#define BATCHD_JOB_BATCH_H

#include <stddef.h>
#include <stdint.h>

struct bd_buf;

/* Most dimensions an embedding may have (submit checks it; the decoder enforces it). */
#define BD_JOB_BATCH_DIM_MAX 65536u

/* How many batches of batch_size (>= 1) items hold items: ceil(items / batch_size), counted
 * in 64 bits (items + batch_size - 1 overflows 32 near max_items_per_job's top). The one
 * place this is computed. */
static inline unsigned bd_job_batch_count(unsigned long long items, unsigned batch_size)
{
    return (unsigned)((items + batch_size - 1) / batch_size);
}

/* Append one item to out (which is not a COPY stream: no header, no row markers). id,
 * meta and v are borrowed for the call; meta must be a JSON object's text, v dim floats.
 * Returns BD_OK, or out's sticky error (BD_ENOMEM; BD_EINVAL for dim 0 or above
 * BD_JOB_BATCH_DIM_MAX or a field too long). Allocates. */
int bd_job_batch_put(struct bd_buf *out, const char *id, size_t id_len, const char *meta,
                     size_t meta_len, const float *v, unsigned dim);

/* One decoded item: slices of the payload, valid while the payload is. */
struct bd_job_batch_item {
    const char *id;
    size_t id_len;
    const char *meta;                 /* a JSON object's text (not NUL-terminated) */
    size_t meta_len;
    const unsigned char *vec;         /* the whole binary real[] value, for COPY as it is */
    size_t vec_len;
    unsigned dim;                     /* its element count */
};

/* Iterates a payload item by item. */
struct bd_job_batch_reader {
    const unsigned char *p, *end;
    const char *why;                  /* set when bd_job_batch_next returned BD_EINVAL */
};

/* Start reading payload[0..len) (borrowed for as long as items are used). */
void bd_job_batch_reader_init(struct bd_job_batch_reader *r, const void *payload, size_t len);

/* Decode the next item into *item. Returns 1 (an item), 0 (the payload is finished) or
 * BD_EINVAL when it is truncated or corrupt (a field longer than what is left, an
 * embedding that is not a one-dimensional float4 array without NULLs, a dimension that
 * disagrees with the array's length); r->why then says which, in a few words, and every
 * later call returns BD_EINVAL too. */
int bd_job_batch_next(struct bd_job_batch_reader *r, struct bd_job_batch_item *item);

/* Decode exactly count items of payload into items[0..count). Returns BD_OK, or BD_EINVAL
 * when the payload is corrupt, holds fewer or more than count items, or an item's
 * dimension is not expect_dim (0: any); *why (may be NULL) then gets a short reason. */
int bd_job_batch_unpack(const void *payload, size_t len, unsigned count, unsigned expect_dim,
                        struct bd_job_batch_item *items, const char **why);

/* Element i (< item->dim) of a decoded item's embedding. */
float bd_job_batch_item_get(const struct bd_job_batch_item *item, unsigned i);

#endif
