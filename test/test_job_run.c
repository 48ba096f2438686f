/* test_job_run.c -- unit tests for the job's transition table (job_run.c): every allowed
 * move, every refused one, and the compare-and-set source lists the store uses, checked
 * against the table. No loop, no stores.
 * SPDX-License-Identifier: MIT
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "batchd/error.h"
#include "batchd/job_engine.h"

/* The expected table, written out independently of job_run.c's. -1: refused. */
static const int expected[BD_JOB_EVENT_COUNT][BD_JOB_STATE_COUNT] = {
    /*                 queued            processing         completed      failed         cancelled */
    [BD_JOB_EV_START] = { BD_JOB_PROCESSING, BD_JOB_PROCESSING, -1, -1, -1 },
    [BD_JOB_EV_COMPLETE] = { -1, BD_JOB_COMPLETED, -1, -1, -1 },
    [BD_JOB_EV_FAIL] = { -1, BD_JOB_FAILED, -1, -1, -1 },
    [BD_JOB_EV_CANCEL] = { BD_JOB_CANCELLED, BD_JOB_PROCESSING, -1, -1, -1 },
    [BD_JOB_EV_STOP_CANCELLED] = { -1, BD_JOB_CANCELLED, -1, -1, -1 },
    [BD_JOB_EV_RETRY] = { -1, -1, BD_JOB_QUEUED, BD_JOB_QUEUED, BD_JOB_QUEUED },
};

static void job_moves_as_table_says_when_cancel_not_requested(void **state)
{
    (void)state;
    for (int ev = 0; ev < BD_JOB_EVENT_COUNT; ev++) {
        for (int from = 0; from < BD_JOB_STATE_COUNT; from++) {
            enum bd_job_state to = (enum bd_job_state)99;
            bool sets = true;
            int rc = bd_job_transition((enum bd_job_state)from, false, (enum bd_job_event)ev, &to,
                                       &sets);
            if (expected[ev][from] < 0) {
                assert_int_equal(rc, BD_ECONFLICT);
                assert_int_equal(to, 99);           /* untouched when refused */
            } else {
                assert_int_equal(rc, BD_OK);
                assert_int_equal(to, expected[ev][from]);
                assert_int_equal(sets, ev == BD_JOB_EV_CANCEL);
            }
        }
    }
}

static void job_refuses_second_cancel_when_already_requested(void **state)
{
    enum bd_job_state to;
    (void)state;
    assert_int_equal(bd_job_transition(BD_JOB_PROCESSING, true, BD_JOB_EV_CANCEL, &to, NULL),
                     BD_ECONFLICT);
    /* The owner stopping after the request is allowed, and so is finishing the run. */
    assert_int_equal(bd_job_transition(BD_JOB_PROCESSING, true, BD_JOB_EV_STOP_CANCELLED, &to,
                                       NULL), BD_OK);
    assert_int_equal(to, BD_JOB_CANCELLED);
    assert_int_equal(bd_job_transition(BD_JOB_PROCESSING, true, BD_JOB_EV_FAIL, &to, NULL),
                     BD_OK);
    assert_int_equal(to, BD_JOB_FAILED);
}

static void job_keeps_terminal_states_when_anything_but_retry(void **state)
{
    (void)state;
    for (int from = BD_JOB_COMPLETED; from < BD_JOB_STATE_COUNT; from++)
        for (int ev = 0; ev < BD_JOB_EVENT_COUNT; ev++) {
            enum bd_job_state to;
            int rc = bd_job_transition((enum bd_job_state)from, false, (enum bd_job_event)ev,
                                       &to, NULL);
            assert_int_equal(rc == BD_OK, ev == BD_JOB_EV_RETRY);
        }
}

static void job_rejects_out_of_range_when_state_or_event_unknown(void **state)
{
    enum bd_job_state to;
    (void)state;
    assert_int_equal(bd_job_transition((enum bd_job_state)BD_JOB_STATE_COUNT, false,
                                       BD_JOB_EV_START, &to, NULL), BD_EINVAL);
    assert_int_equal(bd_job_transition(BD_JOB_QUEUED, false,
                                       (enum bd_job_event)BD_JOB_EVENT_COUNT, &to, NULL),
                     BD_EINVAL);
    assert_string_equal(bd_job_event_sources((enum bd_job_event)BD_JOB_EVENT_COUNT), "{}");
}

/* The store's compare-and-set statements use these lists: each must name exactly the
 * states the table lets the event leave. */
static void job_sources_match_table_when_built_from_it(void **state)
{
    (void)state;
    for (int ev = 0; ev < BD_JOB_EVENT_COUNT; ev++) {
        char want[128] = "{";
        for (int from = 0; from < BD_JOB_STATE_COUNT; from++) {
            if (expected[ev][from] < 0)
                continue;
            if (want[1] != '\0')
                strcat(want, ",");
            strcat(want, bd_job_state_name((enum bd_job_state)from));
        }
        strcat(want, "}");
        assert_string_equal(bd_job_event_sources((enum bd_job_event)ev), want);
    }
}

static void job_names_events_when_asked(void **state)
{
    (void)state;
    assert_string_equal(bd_job_event_name(BD_JOB_EV_RETRY), "retry");
    assert_string_equal(bd_job_event_name(BD_JOB_EV_STOP_CANCELLED), "stop_cancelled");
    assert_string_equal(bd_job_event_name((enum bd_job_event)42), "unknown");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(job_moves_as_table_says_when_cancel_not_requested),
        cmocka_unit_test(job_refuses_second_cancel_when_already_requested),
        cmocka_unit_test(job_keeps_terminal_states_when_anything_but_retry),
        cmocka_unit_test(job_rejects_out_of_range_when_state_or_event_unknown),
        cmocka_unit_test(job_sources_match_table_when_built_from_it),
        cmocka_unit_test(job_names_events_when_asked),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
