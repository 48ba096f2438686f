/* test_pg_error.c -- bd_pg_classify_sqlstate / bd_pg_classify_error: which failed writes
 * are worth retrying (transient) and which fail the same way every time (permanent).
 *
 * Pure unit test, no server: the SQLSTATEs are the ones PostgreSQL documents (Appendix A);
 * test/it_pg.c checks the same classes against errors a real server sends.
 * SPDX-License-Identifier: MIT
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>

#include "batchd/pg_store.h"

struct case_ {
    const char *sqlstate;
    enum bd_pg_error_class want;
    const char *why;
};

static void check_cases(const struct case_ *cases, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        enum bd_pg_error_class got = bd_pg_classify_sqlstate(cases[i].sqlstate);

        if (got != cases[i].want)
            fail_msg("%s (%s): got %s", cases[i].sqlstate ? cases[i].sqlstate : "NULL",
                     cases[i].why, got == BD_PG_ERR_TRANSIENT ? "transient" : "permanent");
    }
}

static void test_pg_error_transient_when_connection_or_contention_or_resources(void **state)
{
    static const struct case_ cases[] = {
        { "08000", BD_PG_ERR_TRANSIENT, "connection_exception" },
        { "08003", BD_PG_ERR_TRANSIENT, "connection_does_not_exist" },
        { "08006", BD_PG_ERR_TRANSIENT, "connection_failure" },
        { "08001", BD_PG_ERR_TRANSIENT, "sqlclient_unable_to_establish_sqlconnection" },
        { "08P01", BD_PG_ERR_TRANSIENT, "protocol_violation" },
        { "40000", BD_PG_ERR_TRANSIENT, "transaction_rollback" },
        { "40001", BD_PG_ERR_TRANSIENT, "serialization_failure" },
        { "40002", BD_PG_ERR_TRANSIENT, "transaction_integrity_constraint_violation" },
        { "40003", BD_PG_ERR_TRANSIENT, "statement_completion_unknown" },
        { "40P01", BD_PG_ERR_TRANSIENT, "deadlock_detected" },
        { "53000", BD_PG_ERR_TRANSIENT, "insufficient_resources" },
        { "53100", BD_PG_ERR_TRANSIENT, "disk_full" },
        { "53200", BD_PG_ERR_TRANSIENT, "out_of_memory" },
        { "53300", BD_PG_ERR_TRANSIENT, "too_many_connections" },
        { "57000", BD_PG_ERR_TRANSIENT, "operator_intervention" },
        { "57014", BD_PG_ERR_TRANSIENT, "query_canceled (statement_timeout)" },
        { "57P01", BD_PG_ERR_TRANSIENT, "admin_shutdown" },
        { "57P02", BD_PG_ERR_TRANSIENT, "crash_shutdown" },
        { "57P03", BD_PG_ERR_TRANSIENT, "cannot_connect_now" },
        { "55P03", BD_PG_ERR_TRANSIENT, "lock_not_available" },
    };

    (void)state;
    check_cases(cases, sizeof(cases) / sizeof(cases[0]));
}

static void test_pg_error_permanent_when_the_data_or_statement_is_wrong(void **state)
{
    static const struct case_ cases[] = {
        { "22021", BD_PG_ERR_PERMANENT, "character_not_in_repertoire (the poison batch)" },
        { "22P02", BD_PG_ERR_PERMANENT, "invalid_text_representation" },
        { "22012", BD_PG_ERR_PERMANENT, "division_by_zero" },
        { "22001", BD_PG_ERR_PERMANENT, "string_data_right_truncation" },
        { "23502", BD_PG_ERR_PERMANENT, "not_null_violation" },
        { "23503", BD_PG_ERR_PERMANENT, "foreign_key_violation" },
        { "23505", BD_PG_ERR_PERMANENT, "unique_violation" },
        { "42601", BD_PG_ERR_PERMANENT, "syntax_error" },
        { "42P01", BD_PG_ERR_PERMANENT, "undefined_table" },
        { "42703", BD_PG_ERR_PERMANENT, "undefined_column" },
        { "42501", BD_PG_ERR_PERMANENT, "insufficient_privilege" },
        { "53400", BD_PG_ERR_PERMANENT, "configuration_limit_exceeded: the same again" },
        { "55000", BD_PG_ERR_PERMANENT, "object_not_in_prerequisite_state" },
        { "55006", BD_PG_ERR_PERMANENT, "object_in_use" },
        { "54000", BD_PG_ERR_PERMANENT, "program_limit_exceeded" },
        { "XX000", BD_PG_ERR_PERMANENT, "internal_error" },
        { "25P02", BD_PG_ERR_PERMANENT, "in_failed_sql_transaction" },
    };

    (void)state;
    check_cases(cases, sizeof(cases) / sizeof(cases[0]));
}

static void test_pg_error_transient_when_there_is_no_sqlstate(void **state)
{
    static const struct case_ cases[] = {
        { NULL, BD_PG_ERR_TRANSIENT, "libpq's own error: the connection is gone" },
        { "", BD_PG_ERR_TRANSIENT, "empty" },
        { "4000", BD_PG_ERR_TRANSIENT, "too short to be a SQLSTATE" },
    };

    (void)state;
    check_cases(cases, sizeof(cases) / sizeof(cases[0]));
}

static void test_pg_error_transient_when_the_result_is_null_or_from_libpq(void **state)
{
    PGresult *res;

    (void)state;
    /* A NULL result is what a bd_pg_result_cb gets when the connection broke. */
    assert_int_equal(bd_pg_classify_error(NULL), BD_PG_ERR_TRANSIENT);
    /* An error result libpq made itself carries no SQLSTATE field. */
    res = PQmakeEmptyPGresult(NULL, PGRES_FATAL_ERROR);
    assert_non_null(res);
    assert_null(PQresultErrorField(res, PG_DIAG_SQLSTATE));
    assert_int_equal(bd_pg_classify_error(res), BD_PG_ERR_TRANSIENT);
    PQclear(res);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pg_error_transient_when_connection_or_contention_or_resources),
        cmocka_unit_test(test_pg_error_permanent_when_the_data_or_statement_is_wrong),
        cmocka_unit_test(test_pg_error_transient_when_there_is_no_sqlstate),
        cmocka_unit_test(test_pg_error_transient_when_the_result_is_null_or_from_libpq),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
