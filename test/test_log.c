/* test_log.c -- bd_log_redact_url: the one place that keeps secrets out of logs and of
 * stored error text (store URLs, model base URLs, conninfo strings).
 * SPDX-License-Identifier: MIT
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "batchd/log.h"

static void expect_redacted(const char *in, const char *want)
{
    char out[512];
    const char *got = bd_log_redact_url(in, out, sizeof(out));
    if (strcmp(got, want) != 0)
        print_message("redact(%s) = %s, want %s\n", in ? in : "(null)", got, want);
    assert_string_equal(got, want);
}

static void test_log_redacts_userinfo_password_when_url(void **state)
{
    (void)state;
    expect_redacted("postgresql://batchd:secret@127.0.0.1:5432/db",
                    "postgresql://batchd:***@127.0.0.1:5432/db");
    expect_redacted("http://user:s3cret@127.0.0.1:43539/api/embed",
                    "http://user:***@127.0.0.1:43539/api/embed");
    expect_redacted("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0");
    expect_redacted("postgresql://batchd@127.0.0.1/db", "postgresql://batchd@127.0.0.1/db");
    expect_redacted(NULL, "(null)");
}

/* Bugs: the userinfo ended at the first '@', so a password with an '@' leaked its tail; a
 * password given as ?password= next to a user without one was kept; a quoted conninfo
 * password leaked after its first space. */
static void test_log_redacts_password_when_it_holds_at_or_sits_in_query_or_quotes(void **state)
{
    (void)state;
    expect_redacted("redis://:p@ss@host:6379/0", "redis://:***@host:6379/0");
    expect_redacted("redis://user:a@b@c@host", "redis://user:***@host");
    expect_redacted("postgresql://user@host/db?password=secret&sslmode=require",
                    "postgresql://user@host/db?password=***&sslmode=require");
    expect_redacted("postgresql://u:pw@host/db?sslmode=require&password=x",
                    "postgresql://u:***@host/db?sslmode=require&password=***");
    expect_redacted("host=x password='se cret\\' q' user=y", "host=x password=*** user=y");
    expect_redacted("host=x password=abc user=y", "host=x password=*** user=y");
    expect_redacted("password=abc", "password=***");
    expect_redacted("host=x mypassword=keep", "host=x mypassword=keep");
}

static void test_log_redaction_stays_in_its_buffer_when_output_is_short(void **state)
{
    char out[12];
    (void)state;
    bd_log_redact_url("postgresql://batchd:secret@127.0.0.1:5432/db", out, sizeof(out));
    assert_int_equal(strlen(out), sizeof(out) - 1);
    assert_null(strstr(out, "secret"));
    bd_log_redact_url("host=x password='long secret value'", out, 1);
    assert_string_equal(out, "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_log_redacts_userinfo_password_when_url),
        cmocka_unit_test(test_log_redacts_password_when_it_holds_at_or_sits_in_query_or_quotes),
        cmocka_unit_test(test_log_redaction_stays_in_its_buffer_when_output_is_short),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
