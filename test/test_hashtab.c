/* test_hashtab.c -- unit tests for the one hash table (hashtab.c): lookups against an
 * expected index, growth past the reserved size, reset keeping memory, known FNV-1a values.
 * SPDX-License-Identifier: MIT
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "batchd/hashtab.h"

static void hashtab_hashes_known_values_when_fnv1a(void **state)
{
    (void)state;
    /* Published FNV-1a 64-bit test vectors. */
    assert_true(bd_hash_bytes("", 0) == 0xcbf29ce484222325ULL);
    assert_true(bd_hash_bytes("a", 1) == 0xaf63dc4c8601ec8cULL);
    assert_true(bd_hash_bytes("foobar", 6) == 0x85944171f73967e8ULL);
}

static void hashtab_finds_every_key_when_grown_past_reserve(void **state)
{
    static char keys[5000][16];
    struct bd_htab t;
    (void)state;
    bd_htab_init(&t);
    assert_int_equal(bd_htab_reset(&t, 8), 0);
    for (unsigned i = 0; i < 5000; i++) {
        bool is_new = false;
        snprintf(keys[i], sizeof(keys[i]), "id-%u", i);
        uint32_t *v = bd_htab_put(&t, keys[i], strlen(keys[i]), &is_new);
        assert_non_null(v);
        assert_true(is_new);
        *v = i * 3;
    }
    assert_int_equal(t.count, 5000);
    for (unsigned i = 0; i < 5000; i++) {
        uint32_t *v = bd_htab_get(&t, keys[i], strlen(keys[i]));
        assert_non_null(v);
        assert_int_equal(*v, i * 3);
    }
    assert_null(bd_htab_get(&t, "id-5000", 7));
    assert_null(bd_htab_get(&t, "id-1", 3));        /* a prefix is another key */
    bd_htab_free(&t);
}

static void hashtab_reports_existing_when_key_added_twice(void **state)
{
    struct bd_htab t;
    bool is_new = true;
    char copy[8];
    (void)state;
    bd_htab_init(&t);
    assert_null(bd_htab_get(&t, "x", 1));           /* empty table, no memory yet */
    *bd_htab_put(&t, "doc-1", 5, &is_new) = 7;
    assert_true(is_new);
    memcpy(copy, "doc-1", 6);                       /* same bytes, other memory */
    uint32_t *v = bd_htab_put(&t, copy, 5, &is_new);
    assert_false(is_new);
    assert_int_equal(*v, 7);
    assert_int_equal(t.count, 1);
    bd_htab_free(&t);
}

static void hashtab_empties_and_keeps_memory_when_reset(void **state)
{
    struct bd_htab t;
    (void)state;
    bd_htab_init(&t);
    assert_int_equal(bd_htab_reset(&t, 100), 0);
    struct bd_htab_slot *mem = t.slots;
    *bd_htab_put(&t, "a", 1, NULL) = 1;
    assert_int_equal(bd_htab_reset(&t, 50), 0);
    assert_ptr_equal(t.slots, mem);
    assert_int_equal(t.count, 0);
    assert_null(bd_htab_get(&t, "a", 1));
    bd_htab_free(&t);
    assert_null(t.slots);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(hashtab_hashes_known_values_when_fnv1a),
        cmocka_unit_test(hashtab_finds_every_key_when_grown_past_reserve),
        cmocka_unit_test(hashtab_reports_existing_when_key_added_twice),
        cmocka_unit_test(hashtab_empties_and_keeps_memory_when_reset),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
