/* test_sha256.c -- SHA-256 against the FIPS 180-4 / NIST example vectors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "batchd/sha256.h"

static void test_sha256_matches_nist_vectors_when_hashing_known_inputs(void **state)
{
    char hex[65];
    (void)state;
    bd_sha256_hex("", 0, hex);
    assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    bd_sha256_hex("abc", 3, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    bd_sha256_hex(m, strlen(m), hex);
    assert_string_equal(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

static void test_sha256_same_digest_when_fed_in_pieces(void **state)
{
    char a[1000];
    unsigned char d1[32], d2[32];
    struct bd_sha256 s;
    (void)state;
    memset(a, 'a', sizeof(a));
    bd_sha256_init(&s);
    for (int i = 0; i < 1000; i++)          /* 1,000,000 x 'a' */
        bd_sha256_update(&s, a, sizeof(a));
    bd_sha256_final(&s, d1);
    static const unsigned char want[32] = {
        0xcd, 0xc7, 0x6e, 0x5c, 0x99, 0x14, 0xfb, 0x92, 0x81, 0xa1, 0xc7, 0xe2, 0x84, 0xd7,
        0x3e, 0x67, 0xf1, 0x80, 0x9a, 0x48, 0xa4, 0x97, 0x20, 0x0e, 0x04, 0x6d, 0x39, 0xcc,
        0xc7, 0x11, 0x2c, 0xd0 };
    assert_memory_equal(d1, want, 32);
    bd_sha256_init(&s);
    for (int i = 0; i < 1000; i++)
        bd_sha256_update(&s, a, (size_t)(i % 7));
    bd_sha256_final(&s, d2);
    assert_memory_not_equal(d1, d2, 32);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sha256_matches_nist_vectors_when_hashing_known_inputs),
        cmocka_unit_test(test_sha256_same_digest_when_fed_in_pieces),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
