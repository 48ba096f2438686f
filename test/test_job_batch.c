/* test_job_batch.c -- the packed bulk_insert batch codec: what the encoder writes the
 * decoder reads back exactly, and a truncated, corrupt or mis-dimensioned payload is
 * refused with a reason (never read past its end). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <endian.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batchd/buf.h"
#include "batchd/error.h"
#include "batchd/job_batch.h"
#include "batchd/pg_store.h"

static const float v3a[3] = { 0.5f, -1.25f, 3.4e38f };
static const float v3b[3] = { 1e-45f, 0.0f, -0.0f };

/* Two items (dim 3), the second with multi-byte text. */
static void encode_two(struct bd_buf *b)
{
    bd_buf_init(b);
    assert_int_equal(bd_job_batch_put(b, "a", 1, "{}", 2, v3a, 3), BD_OK);
    assert_int_equal(bd_job_batch_put(b, "caf\xc3\xa9", 5, "{\"k\":[1,2]}", 11, v3b, 3), BD_OK);
}

static void test_job_batch_round_trips_items_when_encoded_then_decoded(void **state)
{
    struct bd_buf b;
    struct bd_job_batch_item it[2];
    const char *why = "unset";
    (void)state;

    encode_two(&b);
    /* id field + meta field + real[] field (20-byte header, 8 bytes per element). */
    assert_int_equal(b.len, (4 + 1) + (4 + 2) + (4 + 20 + 24) + (4 + 5) + (4 + 11) + (4 + 20 + 24));
    assert_int_equal(bd_job_batch_unpack(b.data, b.len, 2, 3, it, &why), BD_OK);
    assert_null(why);
    assert_int_equal(it[0].id_len, 1);
    assert_memory_equal(it[0].id, "a", 1);
    assert_int_equal(it[0].meta_len, 2);
    assert_memory_equal(it[0].meta, "{}", 2);
    assert_int_equal(it[1].id_len, 5);
    assert_memory_equal(it[1].id, "caf\xc3\xa9", 5);
    assert_memory_equal(it[1].meta, "{\"k\":[1,2]}", 11);
    for (unsigned i = 0; i < 3; i++) {
        float x = bd_job_batch_item_get(&it[0], i), y = bd_job_batch_item_get(&it[1], i);
        assert_memory_equal(&x, &v3a[i], sizeof(float));          /* bit for bit */
        assert_memory_equal(&y, &v3b[i], sizeof(float));
        assert_int_equal(it[i % 2].dim, 3);
    }
    /* Zero-copy: the slices point into the payload; the vector is the whole real[] value,
     * which starts after the two text fields and its own length word. */
    assert_ptr_equal(it[0].id, b.data + 4);
    assert_ptr_equal(it[0].vec, (const unsigned char *)b.data + 4 + 1 + 4 + 2 + 4);
    assert_int_equal(it[0].vec_len, 20 + 24);

    /* The iterator gives the same items, then 0 (end), and 0 again. */
    struct bd_job_batch_reader r;
    struct bd_job_batch_item x;
    bd_job_batch_reader_init(&r, b.data, b.len);
    assert_int_equal(bd_job_batch_next(&r, &x), 1);
    assert_ptr_equal(x.id, it[0].id);
    assert_int_equal(bd_job_batch_next(&r, &x), 1);
    assert_ptr_equal(x.meta, it[1].meta);
    assert_int_equal(bd_job_batch_next(&r, &x), 0);
    assert_int_equal(bd_job_batch_next(&r, &x), 0);
    bd_buf_free(&b);
}

static void test_job_batch_rejects_payload_when_truncated_anywhere(void **state)
{
    struct bd_buf b;
    struct bd_job_batch_item it[2];
    (void)state;

    encode_two(&b);
    /* Every proper prefix is refused (the buffer is copied to an exact-size allocation, so
     * a read past the end would show under ASan). */
    for (size_t n = 0; n < b.len; n++) {
        char *copy = malloc(n ? n : 1);
        const char *why = NULL;
        memcpy(copy, b.data, n);
        assert_int_equal(bd_job_batch_unpack(copy, n, 2, 3, it, &why), BD_EINVAL);
        assert_non_null(why);
        free(copy);
    }
    /* One byte more than two items: trailing bytes. */
    char *longer = malloc(b.len + 1);
    const char *why = NULL;
    memcpy(longer, b.data, b.len);
    longer[b.len] = 0;
    assert_int_equal(bd_job_batch_unpack(longer, b.len + 1, 2, 3, it, &why), BD_EINVAL);
    assert_string_equal(why, "the packed payload is truncated");
    free(longer);
    /* Fewer items than the batch says, more items than the batch says. */
    assert_int_equal(bd_job_batch_unpack(b.data, b.len, 3, 0, it, &why), BD_EINVAL);
    assert_string_equal(why, "the packed payload holds fewer items than the batch");
    assert_int_equal(bd_job_batch_unpack(b.data, b.len, 1, 0, it, &why), BD_EINVAL);
    assert_string_equal(why, "the packed payload has trailing bytes");
    bd_buf_free(&b);
}

static void put_be32(char *p, uint32_t v)
{
    v = htobe32(v);
    memcpy(p, &v, 4);
}

static void test_job_batch_rejects_payload_when_corrupt(void **state)
{
    struct bd_buf b;
    struct bd_job_batch_item it[2];
    const char *why = NULL;
    /* Offsets in the first item: its real[] field's length word, then the header words. */
    enum { arr = 4 + 1 + 4 + 2, hdr = arr + 4 };
    static const struct {
        size_t off;
        uint32_t value;
        const char *why;
    } cases[] = {
        { 0, 0xffffffffu, "the packed payload is truncated" },           /* id length */
        { hdr + 0, 2, "an embedding is not a one-dimensional real[]" },  /* ndim */
        { hdr + 4, 1, "an embedding is not a one-dimensional real[]" },  /* has nulls */
        { hdr + 8, 701, "an embedding is not a one-dimensional real[]" }, /* float8 */
        { hdr + 16, 0, "an embedding is not a one-dimensional real[]" }, /* lower bound */
        { hdr + 12, 4, "an embedding's dimension disagrees with its length" },
        { hdr + 12, 0, "an embedding's dimension disagrees with its length" },
        { hdr + 20, 8, "an embedding holds an element that is not a float4" },
        { arr, 19, "an embedding is not a one-dimensional real[]" },    /* shorter than header */
    };
    (void)state;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        encode_two(&b);
        put_be32(b.data + cases[i].off, cases[i].value);
        assert_int_equal(bd_job_batch_unpack(b.data, b.len, 2, 0, it, &why), BD_EINVAL);
        assert_string_equal(why, cases[i].why);
        /* The reader stays failed. */
        struct bd_job_batch_reader r;
        struct bd_job_batch_item x;
        bd_job_batch_reader_init(&r, b.data, b.len);
        assert_int_equal(bd_job_batch_next(&r, &x), BD_EINVAL);
        assert_int_equal(bd_job_batch_next(&r, &x), BD_EINVAL);
        bd_buf_free(&b);
    }
}

static void test_job_batch_reports_dimension_when_it_differs_from_expected(void **state)
{
    struct bd_buf b;
    struct bd_job_batch_item it[2];
    const float v4[4] = { 1, 2, 3, 4 };
    const char *why = NULL;
    (void)state;

    bd_buf_init(&b);
    assert_int_equal(bd_job_batch_put(&b, "a", 1, "{}", 2, v3a, 3), BD_OK);
    assert_int_equal(bd_job_batch_put(&b, "b", 1, "{}", 2, v4, 4), BD_OK);
    /* Any dimension: each item says its own. */
    assert_int_equal(bd_job_batch_unpack(b.data, b.len, 2, 0, it, &why), BD_OK);
    assert_int_equal(it[0].dim, 3);
    assert_int_equal(it[1].dim, 4);
    assert_true(bd_job_batch_item_get(&it[1], 3) == 4.0f);
    /* An expected dimension: the mismatch is refused. */
    assert_int_equal(bd_job_batch_unpack(b.data, b.len, 2, 3, it, &why), BD_EINVAL);
    assert_string_equal(why, "an embedding has the wrong dimension");
    assert_int_equal(bd_job_batch_unpack(b.data, b.len, 2, 4, it, &why), BD_EINVAL);
    /* The encoder refuses dimension 0 and above the maximum, and the error sticks. */
    bd_buf_reset(&b);
    assert_int_equal(bd_job_batch_put(&b, "a", 1, "{}", 2, v3a, 0), BD_EINVAL);
    assert_true(b.is_failed);
    assert_int_equal(bd_job_batch_put(&b, "a", 1, "{}", 2, v3a, 3), BD_ENOMEM);
    bd_buf_reset(&b);
    assert_int_equal(bd_job_batch_put(&b, "a", 1, "{}", 2, v3a, BD_JOB_BATCH_DIM_MAX + 1),
                     BD_EINVAL);
    bd_buf_free(&b);
}

/* Bug: the batch count was items + batch_size - 1 in 32 bits, which wraps near
 * max_items_per_job's top (4,294,967,295): 0 batches for a job of 4,294,967,295 items. */
static void test_job_batch_counts_batches_in_64_bits_when_items_near_uint_max(void **state)
{
    (void)state;
    assert_int_equal(bd_job_batch_count(1, 1), 1);
    assert_int_equal(bd_job_batch_count(100, 10), 10);
    assert_int_equal(bd_job_batch_count(101, 10), 11);
    assert_int_equal(bd_job_batch_count(4294967295u, 1000), 4294968u);
    assert_int_equal(bd_job_batch_count(4294967295u, 1000000), 4295u);
    assert_int_equal(bd_job_batch_count(4294967295u, 1), 4294967295u);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_job_batch_round_trips_items_when_encoded_then_decoded),
        cmocka_unit_test(test_job_batch_rejects_payload_when_truncated_anywhere),
        cmocka_unit_test(test_job_batch_rejects_payload_when_corrupt),
        cmocka_unit_test(test_job_batch_reports_dimension_when_it_differs_from_expected),
        cmocka_unit_test(test_job_batch_counts_batches_in_64_bits_when_items_near_uint_max),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
