/* test_log.c -- bd_log_redact_url: the one place that keeps secrets out of logs and of
 * stored error text (store URLs, model base URLs, conninfo strings).
 * SPDX-License-Identifier: MIT
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

/* Logging to a file: with JOURNAL_STREAM naming that file (as systemd names the journal's
 * stream), each line starts with its syslog priority; with another file's, it does not. */
static void test_log_prefixes_priority_when_stderr_is_the_journal(void **state)
{
    char path[64], env[64], buf[512];
    struct stat st;
    int saved = dup(fileno(stderr));
    FILE *f;

    (void)state;
    snprintf(path, sizeof(path), "/tmp/test_log_%d.txt", (int)getpid());
    assert_non_null(freopen(path, "w", stderr));
    assert_int_equal(fstat(fileno(stderr), &st), 0);
    snprintf(env, sizeof(env), "%llu:%llu", (unsigned long long)st.st_dev,
             (unsigned long long)st.st_ino);
    setenv("JOURNAL_STREAM", env, 1);
    bd_log_reset_journal();
    bd_log(BD_LOG_WARN, "test", "event=one");
    bd_log(BD_LOG_ERROR, "test", "event=two");
    snprintf(env, sizeof(env), "%llu:%llu", (unsigned long long)st.st_dev,
             (unsigned long long)st.st_ino + 1);
    setenv("JOURNAL_STREAM", env, 1);
    bd_log_reset_journal();
    bd_log(BD_LOG_WARN, "test", "event=three");
    fflush(stderr);
    dup2(saved, fileno(stderr));
    close(saved);
    unsetenv("JOURNAL_STREAM");
    bd_log_reset_journal();
    assert_non_null(f = fopen(path, "r"));
    assert_non_null(fgets(buf, sizeof(buf), f));
    assert_int_equal(strncmp(buf, "<4>ts=", 6), 0);
    assert_non_null(fgets(buf, sizeof(buf), f));
    assert_int_equal(strncmp(buf, "<3>ts=", 6), 0);
    assert_non_null(fgets(buf, sizeof(buf), f));
    assert_int_equal(strncmp(buf, "ts=", 3), 0);
    fclose(f);
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_log_redacts_userinfo_password_when_url),
        cmocka_unit_test(test_log_redacts_password_when_it_holds_at_or_sits_in_query_or_quotes),
        cmocka_unit_test(test_log_redaction_stays_in_its_buffer_when_output_is_short),
        cmocka_unit_test(test_log_prefixes_priority_when_stderr_is_the_journal),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
