/* test_batchctl_args.c -- batchctl's command line (src/batchctl/args.c) and the pure
 * formatters of its progress bars (src/batchctl/progress.c): defaults and the environment,
 * options anywhere, the format from the file name, the operation JSON Lines implies, each
 * refusal with its reason; bars, sizes and durations.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "batchctl/args.h"
#include "batchctl/progress.h"

#define ARGV(...) ((char *[]){"batchctl", __VA_ARGS__, NULL})
#define ARGC(...) ((int)(sizeof((char *[]){"batchctl", __VA_ARGS__}) / sizeof(char *)))

static char g_err[256];

/* Parse argv with the given environment; fails the test when it is refused. */
#define PARSE_OK(a, env_url, env_key, ...)                                                   \
    do {                                                                                     \
        if (bctl_args_parse(a, ARGC(__VA_ARGS__), ARGV(__VA_ARGS__), env_url, env_key,        \
                            g_err, sizeof(g_err)) != 0)                                      \
            fail_msg("refused: %s", g_err);                                                  \
    } while (0)

/* Parse argv; fails the test unless it is refused with a reason containing want. */
#define PARSE_FAIL(want, ...)                                                                \
    do {                                                                                     \
        struct bctl_args a_;                                                                 \
        if (bctl_args_parse(&a_, ARGC(__VA_ARGS__), ARGV(__VA_ARGS__), NULL, NULL, g_err,     \
                            sizeof(g_err)) != -1)                                            \
            fail_msg("accepted, expected a refusal with '%s'", want);                         \
        if (strstr(g_err, want) == NULL)                                                     \
            fail_msg("reason '%s' does not say '%s'", g_err, want);                           \
    } while (0)

static void test_args_uses_defaults_then_env_then_options_when_given(void **state)
{
    struct bctl_args a;
    (void)state;

    PARSE_OK(&a, NULL, NULL, "queue");
    assert_int_equal(a.cmd, BCTL_CMD_QUEUE);
    assert_string_equal(a.url, "http://127.0.0.1:8000");
    assert_null(a.api_key);
    assert_true(a.timeout_s == 30.0);

    PARSE_OK(&a, "http://h:1/base/", "k1", "queue");
    assert_int_equal(a.url_len, strlen("http://h:1/base"));       /* trailing '/' dropped */
    assert_string_equal(a.api_key, "k1");

    PARSE_OK(&a, "http://h:1", "k1", "--url=https://x:2", "queue", "--api-key", "k2",
             "--timeout", "2.5");
    assert_string_equal(a.url, "https://x:2");
    assert_string_equal(a.api_key, "k2");
    assert_true(a.timeout_s == 2.5);

    PARSE_OK(&a, "", "", "queue");                                /* empty = unset */
    assert_string_equal(a.url, "http://127.0.0.1:8000");
    assert_null(a.api_key);
}

static void test_args_takes_options_anywhere_when_command_has_operand(void **state)
{
    struct bctl_args a;
    (void)state;

    PARSE_OK(&a, NULL, NULL, "--json", "results", "-o", "out.jsonl", "batch_x_1", "-q");
    assert_int_equal(a.cmd, BCTL_CMD_RESULTS);
    assert_string_equal(a.id, "batch_x_1");
    assert_string_equal(a.output, "out.jsonl");
    assert_true(a.is_json);
    assert_true(a.is_quiet);

    PARSE_OK(&a, NULL, NULL, "list", "--status=failed", "--model", "m", "--limit", "5", "-a");
    assert_string_equal(a.status, "failed");
    assert_string_equal(a.model, "m");
    assert_int_equal(a.limit, 5);
    assert_true(a.is_all);

    /* After "--" an operand may start with '-' (a file named so). */
    PARSE_OK(&a, NULL, NULL, "submit", "--", "-odd.json");
    assert_string_equal(a.file, "-odd.json");
    PARSE_OK(&a, NULL, NULL, "submit", "-", "--format", "jsonl", "--model", "m");
    assert_string_equal(a.file, "-");                              /* standard input */
    assert_int_equal(a.format, BCTL_FORMAT_JSONL);
}

static void test_args_picks_format_from_name_when_not_given(void **state)
{
    static const struct {
        const char *file;
        enum bctl_format want;
    } cases[] = {
        {"job.json", BCTL_FORMAT_JSON},     {"job.jsonl", BCTL_FORMAT_JSONL},
        {"job.ndjson", BCTL_FORMAT_JSONL},  {"job.jsonl.gz", BCTL_FORMAT_JSONL},
        {"job.json.gz", BCTL_FORMAT_JSON},  {"job.txt", BCTL_FORMAT_JSON},
        {".jsonl", BCTL_FORMAT_JSON},
    };
    struct bctl_args a;
    (void)state;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *file = (char *)cases[i].file;       /* argv is not const */
        PARSE_OK(&a, NULL, NULL, "submit", file);
        if (a.format != cases[i].want)
            fail_msg("%s: format %d, want %d", cases[i].file, a.format, cases[i].want);
    }
    PARSE_OK(&a, NULL, NULL, "submit", "job.txt", "--format", "ndjson", "--collection", "c");
    assert_int_equal(a.format, BCTL_FORMAT_JSONL);
    PARSE_OK(&a, NULL, NULL, "submit", "job.jsonl", "--format", "json");
    assert_int_equal(a.format, BCTL_FORMAT_JSON);
}

static void test_args_implies_operation_when_json_lines_omit_it(void **state)
{
    struct bctl_args a;
    (void)state;

    PARSE_OK(&a, NULL, NULL, "submit", "x.jsonl", "--model", "m");
    assert_string_equal(a.operation, "bulk_embed");
    PARSE_OK(&a, NULL, NULL, "submit", "x.jsonl", "--collection", "c");
    assert_string_equal(a.operation, "bulk_insert");
    PARSE_OK(&a, NULL, NULL, "submit", "x.jsonl", "--model", "m", "--collection", "c");
    assert_string_equal(a.operation, "bulk_embed");
    PARSE_OK(&a, NULL, NULL, "submit", "x.jsonl", "--operation", "bulk_insert",
             "--collection", "c", "--batch-size", "50", "--priority", "low", "--gzip", "-w",
             "--max-retries", "0", "--job-timeout", "90.5");
    assert_string_equal(a.operation, "bulk_insert");
    assert_int_equal(a.batch_size, 50);
    assert_string_equal(a.max_retries_s, "0");
    assert_string_equal(a.job_timeout, "90.5");
    assert_string_equal(a.priority, "low");
    assert_true(a.is_gzip);
    assert_true(a.is_wait);
    PARSE_OK(&a, NULL, NULL, "submit", "x.json");
    assert_null(a.operation);                                      /* the file says */
}

static void test_args_refuses_with_reason_when_line_is_wrong(void **state)
{
    (void)state;
    PARSE_FAIL("no command", "--json");
    PARSE_FAIL("unknown command 'stats'", "stats");
    PARSE_FAIL("unknown option '--colour'", "list", "--colour");
    PARSE_FAIL("--gzip does not apply to 'list'", "list", "--gzip");
    PARSE_FAIL("--output does not apply to 'status'", "status", "x", "-o", "f");
    PARSE_FAIL("'status' needs exactly one job ID", "status");
    PARSE_FAIL("'status' needs exactly one job ID", "status", "a", "b");
    PARSE_FAIL("'submit' needs exactly one FILE", "submit");
    PARSE_FAIL("'queue' takes no argument", "queue", "x");
    PARSE_FAIL("is not a job id", "status", "../etc");
    PARSE_FAIL("is not a job id", "cancel", "a b");
    PARSE_FAIL("--limit", "list", "--limit", "0");
    PARSE_FAIL("--limit", "list", "--limit", "1001");
    PARSE_FAIL("--limit", "list", "--limit", "5x");
    PARSE_FAIL("--status", "list", "--status", "done");
    PARSE_FAIL("--priority", "submit", "x.jsonl", "--priority", "urgent");
    PARSE_FAIL("--batch-size", "submit", "x.jsonl", "--batch-size", "0");
    PARSE_FAIL("--max-retries", "submit", "x.jsonl", "--max-retries", "-1");
    PARSE_FAIL("--job-timeout", "submit", "x.jsonl", "--job-timeout", "0");
    PARSE_FAIL("--job-timeout", "submit", "x.jsonl", "--job-timeout", "1h");
    PARSE_FAIL("are for JSON Lines", "submit", "x.json", "--max-retries", "2");
    PARSE_FAIL("--operation", "submit", "x.jsonl", "--operation", "embed");
    PARSE_FAIL("--format", "submit", "x", "--format", "csv");
    PARSE_FAIL("--timeout", "queue", "--timeout", "0");
    PARSE_FAIL("--timeout", "queue", "--timeout", "nan");
    PARSE_FAIL("--url", "queue", "--url", "ftp://x");
    PARSE_FAIL("--url needs a value", "queue", "--url");
    PARSE_FAIL("--json takes no value", "queue", "--json=1");
    PARSE_FAIL("are for JSON Lines", "submit", "job.json", "--model", "m");
}

static void test_args_answers_help_and_version_when_asked(void **state)
{
    struct bctl_args a;
    (void)state;

    PARSE_OK(&a, NULL, NULL, "help");
    assert_int_equal(a.cmd, BCTL_CMD_HELP);
    assert_null(a.help_topic);
    PARSE_OK(&a, NULL, NULL, "help", "submit");
    assert_string_equal(a.help_topic, "submit");
    PARSE_OK(&a, NULL, NULL, "submit", "--help");                  /* no operand needed */
    assert_int_equal(a.cmd, BCTL_CMD_HELP);
    assert_string_equal(a.help_topic, "submit");
    PARSE_OK(&a, NULL, NULL, "--version");
    assert_int_equal(a.cmd, BCTL_CMD_VERSION);
    assert_non_null(strstr(bctl_args_usage("submit"), "--gzip"));
    assert_non_null(strstr(bctl_args_usage(NULL), "exit codes"));
    assert_string_equal(bctl_args_cmd_name(BCTL_CMD_RESULTS), "results");
}

static void test_progress_formats_bar_bytes_and_time_when_given_values(void **state)
{
    char s[64];
    (void)state;

    assert_string_equal(bctl_progress_bar(s, sizeof(s), 10, 0.0), "[          ]");
    assert_string_equal(bctl_progress_bar(s, sizeof(s), 10, 0.45), "[####      ]");
    assert_string_equal(bctl_progress_bar(s, sizeof(s), 10, 1.0), "[##########]");
    assert_string_equal(bctl_progress_bar(s, sizeof(s), 10, 7.0), "[##########]");
    assert_string_equal(bctl_progress_bar(s, sizeof(s), 4, -1), "[    ]");
    assert_string_equal(bctl_progress_bar(s, sizeof(s), 10, 0.3), "[###       ]");
    assert_string_equal(bctl_progress_fmt_bytes(s, sizeof(s), 512), "512 B");
    assert_string_equal(bctl_progress_fmt_bytes(s, sizeof(s), 1536), "1.5 KiB");
    assert_string_equal(bctl_progress_fmt_bytes(s, sizeof(s), 20.0 * 1048576), "20.0 MiB");
    assert_string_equal(bctl_progress_fmt_bytes(s, sizeof(s), 3.25 * 1073741824.0), "3.2 GiB");
    assert_string_equal(bctl_progress_fmt_duration(s, sizeof(s), 45.2), "45s");
    assert_string_equal(bctl_progress_fmt_duration(s, sizeof(s), 185), "3m05s");
    assert_string_equal(bctl_progress_fmt_duration(s, sizeof(s), 7800), "2h10m");
    assert_string_equal(bctl_progress_fmt_duration(s, sizeof(s), -1), "?");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_args_uses_defaults_then_env_then_options_when_given),
        cmocka_unit_test(test_args_takes_options_anywhere_when_command_has_operand),
        cmocka_unit_test(test_args_picks_format_from_name_when_not_given),
        cmocka_unit_test(test_args_implies_operation_when_json_lines_omit_it),
        cmocka_unit_test(test_args_refuses_with_reason_when_line_is_wrong),
        cmocka_unit_test(test_args_answers_help_and_version_when_asked),
        cmocka_unit_test(test_progress_formats_bar_bytes_and_time_when_given_values),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
