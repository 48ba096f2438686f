/* test_job_submit.c -- the submit path's pure parts: the completion estimate of a 202
 * (from the engine's recent rate, else the model's configured rate, always after the
 * job's creation) and the UTF-8 check that keeps text PostgreSQL would refuse out of a job
 * (bd_utf8_is_valid, RFC 3629). No loop, no stores. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "batchd/buf.h"
#include "batchd/config.h"
#include "batchd/job_submit.h"
#include "batchd/json_scan.h"

static char name_remote[] = "remote";
static char name_hash[] = "hash";

static void test_job_submit_estimate_uses_configured_rate_when_engine_has_none(void **state)
{
    struct bd_model_config models[2] = {
        { .name = name_remote, .provider = BD_PROVIDER_OPENAI, .dimensions = 8,
          .max_inputs_per_request = 10, .concurrency = 2, .timeout_s = 4 },
        { .name = name_hash, .provider = BD_PROVIDER_HASHING, .dimensions = 8 },
    };
    struct bd_config cfg = { .models = models, .models_count = 2 };
    struct bd_job_submit_deps deps = { .cfg = &cfg };     /* no engine: no recent rate */
    const double t0 = 1765000000.0;
    (void)state;

    /* remote: 2 x 10 / 4 = 5 items/s; 100 ahead + 50 own = 30 s. */
    assert_true(bd_job_submit_estimate(&deps, BD_OP_BULK_EMBED, "remote", 100, 50, t0) ==
                t0 + 30);
    /* Rounded up to whole seconds: 1 item at 5/s is 0.2 s -> 1 s. */
    assert_true(bd_job_submit_estimate(&deps, BD_OP_BULK_EMBED, "remote", 0, 1, t0) == t0 + 1);
    /* Hashing and bulk_insert use their fixed rates; never before creation + 1 s. */
    assert_true(bd_job_submit_estimate(&deps, BD_OP_BULK_EMBED, "hash", 0, 1, t0) == t0 + 1);
    assert_true(bd_job_submit_estimate(&deps, BD_OP_BULK_EMBED, "hash", 0,
                                       (unsigned)(BD_JOB_RATE_HASHING * 3), t0) == t0 + 3);
    assert_true(bd_job_submit_estimate(&deps, BD_OP_BULK_INSERT, NULL, 0,
                                       (unsigned)(BD_JOB_RATE_INSERT * 2), t0) == t0 + 2);
    assert_true(bd_job_submit_estimate(&deps, BD_OP_BULK_INSERT, "remote", -5, 1, t0) ==
                t0 + 1);
}

static void test_job_submit_utf8_accepts_only_rfc3629_when_checked(void **state)
{
    static const struct {
        const char *s;
        size_t len;
        int ok;
    } cases[] = {
        { "", 0, 1 },
        { "plain ascii", 11, 1 },
        { "caf\xc3\xa9", 5, 1 },
        { "\xe2\x82\xac", 3, 1 },                  /* U+20AC */
        { "\xf0\x9f\x98\x80", 4, 1 },              /* U+1F600 */
        { "\xf4\x8f\xbf\xbf", 4, 1 },              /* U+10FFFF */
        { "\xed\x9f\xbf", 3, 1 },                  /* U+D7FF, just below the surrogates */
        { "a\0b", 3, 1 },                          /* NUL is UTF-8 (JSON escapes refuse it) */
        { "\xff", 1, 0 },
        { "\x80", 1, 0 },                          /* a lone continuation byte */
        { "\xc3", 1, 0 },                          /* truncated */
        { "x\xe2\x82", 3, 0 },                     /* truncated at the end */
        { "\xc0\xaf", 2, 0 },                      /* overlong '/' */
        { "\xc1\xbf", 2, 0 },                      /* overlong */
        { "\xe0\x80\xaf", 3, 0 },                  /* overlong */
        { "\xf0\x80\x80\xaf", 4, 0 },              /* overlong */
        { "\xed\xa0\x80", 3, 0 },                  /* U+D800, a surrogate */
        { "\xed\xbf\xbf", 3, 0 },                  /* U+DFFF */
        { "\xf4\x90\x80\x80", 4, 0 },              /* U+110000 */
        { "\xf5\x80\x80\x80", 4, 0 },
        { "\xf8\x88\x80\x80\x80", 5, 0 },          /* the old 5-byte form */
        { "\xe2\x28\xa1", 3, 0 },                  /* a bad second byte */
        { "\xe2\x82\x28", 3, 0 },                  /* a bad third byte */
    };
    (void)state;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (bd_utf8_is_valid(cases[i].s, cases[i].len) != (cases[i].ok != 0))
            fail_msg("case %zu: expected %s", i, cases[i].ok ? "valid" : "invalid");
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_job_submit_estimate_uses_configured_rate_when_engine_has_none),
        cmocka_unit_test(test_job_submit_utf8_accepts_only_rfc3629_when_checked),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
