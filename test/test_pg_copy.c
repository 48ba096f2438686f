/* test_pg_copy.c -- the binary COPY encoder against hand-computed bytes (PostgreSQL's
 * "Binary Format" of COPY, all integers big-endian), its sticky errors, and the real[]
 * codec in both directions.  SPDX-License-Identifier: MIT
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "batchd/buf.h"
#include "batchd/error.h"
#include "batchd/pg_store.h"

#define S(lit) lit, sizeof(lit) - 1   /* bytes of a string literal, without its NUL */

static void expect_bytes(const struct bd_buf *b, const char *want, size_t len)
{
    assert_false(b->is_failed);
    assert_int_equal(b->len, len);
    assert_memory_equal(b->data, want, len);
}

static void test_pg_copy_writes_header_fields_and_trailer_when_encoding_rows(void **state)
{
    static const char want[] =
        "PGCOPY\n\377\r\n\0"                        /* signature */
        "\0\0\0\0" "\0\0\0\0"                       /* flags, header extension */
        "\0\x09"                                    /* tuple: 9 fields */
        "\0\0\0\x04" "\0\0\x01\x02"                 /* int4 258 */
        "\xff\xff\xff\xff"                          /* NULL */
        "\0\0\0\x03" "h\xc3\xa9"                    /* text "hé" */
        "\0\0\0\x02" "\x00\xff"                     /* bytea 00 ff */
        "\0\0\0\x08" "\xff\xff\xff\xff\xff\xff\xff\xfe"   /* int8 -2 */
        "\0\0\0\x08" "\x3f\xf8\0\0\0\0\0\0"         /* float8 1.5 */
        "\0\0\0\x01" "\x01"                         /* bool true */
        "\0\0\0\x03" "\x01{}"                       /* jsonb version 1, "{}" */
        "\0\0\0\x24"                                /* real[] {1,-2}: 36 bytes */
        "\0\0\0\x01" "\0\0\0\0" "\0\0\x02\xbc"      /* ndim 1, no nulls, oid 700 */
        "\0\0\0\x02" "\0\0\0\x01"                   /* 2 elements from index 1 */
        "\0\0\0\x04" "\x3f\x80\0\0"                 /* 1.0f */
        "\0\0\0\x04" "\xc0\0\0\0"                   /* -2.0f */
        "\xff\xff";                                 /* trailer */
    static const float v[2] = { 1.0f, -2.0f };
    struct bd_buf b;

    (void)state;
    bd_buf_init(&b);
    assert_int_equal(bd_pg_copy_begin(&b), BD_OK);
    assert_int_equal(bd_pg_copy_row(&b, 9), BD_OK);
    assert_int_equal(bd_pg_copy_int4(&b, 258), BD_OK);
    assert_int_equal(bd_pg_copy_null(&b), BD_OK);
    assert_int_equal(bd_pg_copy_text(&b, S("h\xc3\xa9")), BD_OK);
    assert_int_equal(bd_pg_copy_bytes(&b, S("\x00\xff")), BD_OK);
    assert_int_equal(bd_pg_copy_int8(&b, -2), BD_OK);
    assert_int_equal(bd_pg_copy_float8(&b, 1.5), BD_OK);
    assert_int_equal(bd_pg_copy_bool(&b, true), BD_OK);
    assert_int_equal(bd_pg_copy_jsonb(&b, S("{}")), BD_OK);
    assert_int_equal(bd_pg_copy_float4_array(&b, v, 2), BD_OK);
    assert_int_equal(bd_pg_copy_end(&b), BD_OK);
    expect_bytes(&b, want, sizeof(want) - 1);

    /* reset keeps the memory and starts over */
    {
        char *data = b.data;
        static const char empty_array[] = "\0\0\0\x0c" "\0\0\0\0" "\0\0\0\0" "\0\0\x02\xbc";

        bd_buf_reset(&b);
        assert_int_equal(b.len, 0);
        assert_int_equal(bd_pg_copy_float4_array(&b, v, 0), BD_OK);   /* '{}' */
        expect_bytes(&b, empty_array, sizeof(empty_array) - 1);
        assert_ptr_equal(b.data, data);
    }
    bd_buf_free(&b);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
}

static void test_pg_copy_stops_writing_when_a_value_is_too_large(void **state)
{
    struct bd_buf b;
    size_t len;

    (void)state;
    bd_buf_init(&b);
    assert_int_equal(bd_pg_copy_begin(&b), BD_OK);
    len = b.len;
    assert_int_equal(bd_pg_copy_row(&b, 40000), BD_EINVAL);   /* > INT16_MAX fields */
    assert_true(b.is_failed);
    assert_int_equal(bd_pg_copy_int4(&b, 1), BD_ENOMEM);      /* sticky: payload spoiled */
    assert_int_equal(bd_pg_copy_end(&b), BD_ENOMEM);
    assert_int_equal(b.len, len);                                /* nothing more written */
    bd_buf_reset(&b);
    assert_int_equal(bd_pg_copy_end(&b), BD_OK);
    bd_buf_free(&b);
}

/* Encode with the COPY encoder, skip the field's length word, decode: the same floats. */
static void test_pg_copy_decodes_what_it_encodes_when_reading_real_arrays(void **state)
{
    float v[5] = { 0.0f, -0.5f, 3.25f, 1e-30f, 65504.0f };
    float out[5];
    struct bd_buf b;

    (void)state;
    bd_buf_init(&b);
    assert_int_equal(bd_pg_copy_float4_array(&b, v, 5), BD_OK);
    assert_int_equal(b.len, 4 + 20 + 5 * 8);
    memset(out, 0xee, sizeof(out));
    assert_int_equal(bd_pg_float4_array_decode(b.data + 4, b.len - 4, 5, out), BD_OK);
    assert_memory_equal(out, v, sizeof(v));

    bd_buf_reset(&b);
    assert_int_equal(bd_pg_copy_float4_array(&b, v, 0), BD_OK);
    assert_int_equal(bd_pg_float4_array_decode(b.data + 4, b.len - 4, 0, out), BD_OK);
    bd_buf_free(&b);
}

static void test_pg_copy_rejects_real_arrays_when_shape_or_type_differ(void **state)
{
    static const char two[] =                       /* real[] {1,-2} */
        "\0\0\0\x01" "\0\0\0\0" "\0\0\x02\xbc" "\0\0\0\x02" "\0\0\0\x01"
        "\0\0\0\x04" "\x3f\x80\0\0" "\0\0\0\x04" "\xc0\0\0\0";
    char buf[sizeof(two)];
    float out[3];

    (void)state;
    assert_int_equal(bd_pg_float4_array_decode(two, sizeof(two) - 1, 2, out), BD_OK);
    assert_true(out[0] == 1.0f && out[1] == -2.0f);
    /* a different count than asked for */
    assert_int_equal(bd_pg_float4_array_decode(two, sizeof(two) - 1, 3, out), BD_EINVAL);
    assert_int_equal(bd_pg_float4_array_decode(two, sizeof(two) - 1, 1, out), BD_EINVAL);
    assert_int_equal(bd_pg_float4_array_decode(two, sizeof(two) - 1, 0, out), BD_EINVAL);
    /* truncated */
    assert_int_equal(bd_pg_float4_array_decode(two, sizeof(two) - 2, 2, out), BD_EINVAL);
    assert_int_equal(bd_pg_float4_array_decode(two, 8, 2, out), BD_EINVAL);
    /* float8[] (oid 701) */
    memcpy(buf, two, sizeof(two));
    buf[11] = '\xbd';
    assert_int_equal(bd_pg_float4_array_decode(buf, sizeof(two) - 1, 2, out), BD_EINVAL);
    /* a NULL element (length -1) */
    memcpy(buf, two, sizeof(two));
    memcpy(buf + 28, "\xff\xff\xff\xff", 4);
    assert_int_equal(bd_pg_float4_array_decode(buf, sizeof(two) - 1, 2, out), BD_EINVAL);
    /* two dimensions */
    memcpy(buf, two, sizeof(two));
    buf[3] = 2;
    assert_int_equal(bd_pg_float4_array_decode(buf, sizeof(two) - 1, 2, out), BD_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pg_copy_writes_header_fields_and_trailer_when_encoding_rows),
        cmocka_unit_test(test_pg_copy_stops_writing_when_a_value_is_too_large),
        cmocka_unit_test(test_pg_copy_decodes_what_it_encodes_when_reading_real_arrays),
        cmocka_unit_test(test_pg_copy_rejects_real_arrays_when_shape_or_type_differ),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
