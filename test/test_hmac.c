/* test_hmac.c -- HMAC-SHA256 against the RFC 4231 test vectors (cases 1 to 7), fed whole
 * and in pieces, and a key of exactly one block; the webhook signature against Standard
 * Webhooks' published example (the one its libraries test with).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "batchd/error.h"
#include "batchd/hmac.h"
#include "batchd/webhook.h"

static void to_hex(const unsigned char *d, size_t n, char *hex)
{
    for (size_t i = 0; i < n; i++)
        snprintf(hex + 2 * i, 3, "%02x", d[i]);
}

struct rfc4231_case {
    unsigned char key[131];
    size_t klen;
    const char *data; /* NULL: data_byte repeated data_len times */
    unsigned char data_byte;
    size_t data_len;
    const char *want; /* hex; case 5 is truncated to 128 bits */
};

static void hmac_case(const struct rfc4231_case *c, size_t piece)
{
    unsigned char data[200];
    unsigned char mac[32];
    char hex[65];
    size_t dlen = c->data ? strlen(c->data) : c->data_len;
    struct bd_hmac_sha256 h;

    if (c->data)
        memcpy(data, c->data, dlen);
    else
        memset(data, c->data_byte, dlen);
    if (piece == 0) {
        assert_int_equal(bd_hmac_sha256(c->key, c->klen, data, dlen, mac), 0);
    } else {
        assert_int_equal(bd_hmac_sha256_init(&h, c->key, c->klen), 0);
        for (size_t at = 0; at < dlen; at += piece)
            bd_hmac_sha256_update(&h, data + at, at + piece <= dlen ? piece : dlen - at);
        assert_int_equal(bd_hmac_sha256_final(&h, mac), 0);
    }
    to_hex(mac, strlen(c->want) / 2, hex);
    assert_string_equal(hex, c->want);
}

static void test_hmac_matches_rfc4231_when_given_its_vectors(void **state)
{
    static struct rfc4231_case cases[7] = {
        {.klen = 20,
         .data = "Hi There",
         .want = "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"},
        {.key = "Jefe",
         .klen = 4,
         .data = "what do ya want for nothing?",
         .want = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"},
        {.klen = 20,
         .data_byte = 0xdd,
         .data_len = 50,
         .want = "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"},
        {.klen = 25,
         .data_byte = 0xcd,
         .data_len = 50,
         .want = "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"},
        {.klen = 20, .data = "Test With Truncation", .want = "a3b6167473100ee06e0c796c2955552b"},
        {.klen = 131,
         .data = "Test Using Larger Than Block-Size Key - Hash Key First",
         .want = "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"},
        {.klen = 131,
         .data = "This is a test using a larger than block-size key and a larger than "
                 "block-size data. The key needs to be hashed before being used by the HMAC "
                 "algorithm.",
         .want = "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"},
    };
    (void)state;
    memset(cases[0].key, 0x0b, 20);
    memset(cases[2].key, 0xaa, 20);
    for (int i = 0; i < 25; i++)
        cases[3].key[i] = (unsigned char)(i + 1);
    memset(cases[4].key, 0x0c, 20);
    memset(cases[5].key, 0xaa, 131);
    memset(cases[6].key, 0xaa, 131);
    for (int i = 0; i < 7; i++) {
        hmac_case(&cases[i], 0);
        hmac_case(&cases[i], 1);
        hmac_case(&cases[i], 7);
    }
}

/* The key of exactly one block is used as it is (no hashing): the boundary of RFC 2104's
 * "longer than B" rule. Checked against a 64-byte key's MAC computed by OpenSSL:
 *   printf 'msg' | openssl dgst -sha256 -mac HMAC -macopt hexkey:$(printf 'aa%.0s' {1..64}) */
static void test_hmac_uses_key_as_is_when_exactly_one_block(void **state)
{
    unsigned char key[64];
    unsigned char mac[32];
    char hex[65];

    (void)state;
    memset(key, 0xaa, sizeof(key));
    assert_int_equal(bd_hmac_sha256(key, sizeof(key), "msg", 3, mac), 0);
    to_hex(mac, 32, hex);
    assert_string_equal(hex, "135c4f4927b552d74e271423f4aec0f70f321b38aa3a5b9d213bb9d81658818a");
}

/* standard-webhooks' example: secret, msg id, timestamp and payload with their signature
 * (also checked with `openssl dgst -sha256 -mac HMAC ... | base64`). */
static void test_hmac_signs_like_standard_webhooks_when_given_its_example(void **state)
{
    static const char body[] = "{\"test\": 2432232314}";
    unsigned char key[BD_WEBHOOK_KEY_MAX];
    size_t klen = 0;
    char sig[BD_WEBHOOK_SIGNATURE_LEN + 1];

    (void)state;
    assert_int_equal(bd_webhook_secret_decode("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", key, &klen),
                     BD_OK);
    assert_int_equal(klen, 24);
    assert_int_equal(bd_webhook_sign(key, klen, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body,
                                     strlen(body), sig),
                     BD_OK);
    assert_string_equal(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    assert_int_equal(bd_webhook_secret_decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", key, &klen),
                     BD_EINVAL);
    assert_int_equal(bd_webhook_secret_decode("whsec_Mf!Q", key, &klen), BD_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hmac_matches_rfc4231_when_given_its_vectors),
        cmocka_unit_test(test_hmac_uses_key_as_is_when_exactly_one_block),
        cmocka_unit_test(test_hmac_signs_like_standard_webhooks_when_given_its_example),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
