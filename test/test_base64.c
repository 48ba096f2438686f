/* test_base64.c -- the base64 codec against RFC 4648's test vectors, both directions, and
 * the inputs the decoder must refuse.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "batchd/base64.h"
#include "batchd/error.h"

static void test_base64_matches_rfc4648_when_encoding_and_decoding(void **state)
{
    static const char *const plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *const coded[] = {"",         "Zg==",     "Zm8=",    "Zm9v",
                                        "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    char out[16];
    unsigned char dec[16];
    size_t n;

    (void)state;
    for (int i = 0; i < 7; i++) {
        assert_int_equal(bd_base64_encoded_len(strlen(plain[i])), strlen(coded[i]));
        assert_int_equal(bd_base64_encode(plain[i], strlen(plain[i]), out), strlen(coded[i]));
        assert_string_equal(out, coded[i]);
        assert_int_equal(bd_base64_decode(coded[i], strlen(coded[i]), dec, sizeof(dec), &n), BD_OK);
        assert_int_equal(n, strlen(plain[i]));
        assert_memory_equal(dec, plain[i], n);
    }
    /* Without padding, as some secrets are written. */
    assert_int_equal(bd_base64_decode("Zm9vYg", 6, dec, sizeof(dec), &n), BD_OK);
    assert_int_equal(n, 4);
    assert_memory_equal(dec, "foob", 4);
}

static void test_base64_round_trips_when_bytes_are_all_values(void **state)
{
    unsigned char raw[256], dec[256];
    char out[400];
    size_t n;

    (void)state;
    for (int i = 0; i < 256; i++)
        raw[i] = (unsigned char)(255 - i);
    for (size_t len = 0; len <= 256; len += 37) {
        size_t e = bd_base64_encode(raw, len, out);
        assert_true(bd_base64_decoded_max(e) >= len);
        assert_int_equal(bd_base64_decode(out, e, dec, sizeof(dec), &n), BD_OK);
        assert_int_equal(n, len);
        assert_memory_equal(dec, raw, len);
    }
}

static void test_base64_refuses_input_when_not_base64(void **state)
{
    static const char *const bad[] = {"Zm9v!", "Zm9v Yg==", "Z",    "Zm9vY", "Zg=a",
                                      "Z===",  "Zh==",      "Zm9-", "Zm_v",  "=Zm9"};
    unsigned char dec[16];
    size_t n;

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(bd_base64_decode(bad[i], strlen(bad[i]), dec, sizeof(dec), &n), BD_EINVAL);
    /* Too small an output buffer is refused, not overrun. */
    assert_int_equal(bd_base64_decode("Zm9vYmFy", 8, dec, 5, &n), BD_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_base64_matches_rfc4648_when_encoding_and_decoding),
        cmocka_unit_test(test_base64_round_trips_when_bytes_are_all_values),
        cmocka_unit_test(test_base64_refuses_input_when_not_base64),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
