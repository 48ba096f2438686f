/* job_store_queue.c -- the statements on the queue as a whole: its pause state (table
 * queue_pauses) and the choice of the jobs a bulk retry takes.
 *
 * Part of the job store (job_store.h): the one owner of this SQL text. Loop thread only;
 * every function sends one statement on the pool and calls back once (job_store_internal.h).
 * SPDX-License-Identifier: MIT
 */
#include "job_store_internal.h"

#include "batchd/error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- pause state -------------------------------------------------------------------------- */

static void store_on_pauses(int status, PGresult *res, void *arg)
{
    struct bd__store_call *c = arg;
    struct bd_job_pause_row *rows = NULL;
    int n = 0, col_model = -1, col_at = -1;

    if (status == BD_OK) {
        n = PQntuples(res);
        col_model = PQfnumber(res, "model");
        col_at = PQfnumber(res, "paused_at_ms");
        if (col_model < 0 || col_at < 0)
            status = BD_EINTERNAL;
        else if (n > 0 && (rows = calloc((size_t)n, sizeof(*rows))) == NULL)
            status = BD_ENOMEM;
    }
    if (status < 0) {
        struct bd_job_store_err e = bd__store_err(status == BD_EPG ? res : NULL);
        if (status != BD_EPG)
            e.message = bd_strerror(status);
        c->cb.pauses(status, NULL, 0, &e, c->arg);
        free(c);
        return;
    }
    for (int r = 0; r < n; r++)
        rows[r] = (struct bd_job_pause_row){ PQgetvalue(res, r, col_model),
                                             bd__store_ll(res, r, col_at, 0) };
    c->cb.pauses(BD_OK, rows, (unsigned)n, NULL, c->arg);
    free(rows);
    free(c);
}

int bd_job_store_get_pauses(struct bd_pg *pg, bd_job_store_pauses_cb cb, void *arg)
{
    return bd__store_query(pg,
                           "SELECT model, (extract(epoch FROM paused_at) * 1000)::int8 "
                           "AS paused_at_ms FROM queue_pauses ORDER BY model",
                           0, NULL, NULL, NULL, 0, store_on_pauses, BD__STORE_CALL(pauses));
}

static void store_on_pause_set(int status, PGresult *res, void *arg)
{
    struct bd__store_call *c = arg;

    if (status < 0) {
        struct bd_job_store_err e = bd__store_err(res);
        c->cb.count(status, 0, &e, c->arg);
    } else {
        const char *n = PQcmdTuples(res);
        c->cb.count(BD_OK, n && *n ? strtoll(n, NULL, 10) : 0, NULL, c->arg);
    }
    free(c);
}

int bd_job_store_set_pause(struct bd_pg *pg, const char *model, bool is_paused,
                           bd_job_store_count_cb cb, void *arg)
{
    const char *values[1] = { model };

    if (model == NULL || cb == NULL)
        return BD_EINVAL;
    return bd__store_query(pg,
                           is_paused ? "INSERT INTO queue_pauses (model) VALUES ($1) "
                                       "ON CONFLICT (model) DO NOTHING"
                                     : "DELETE FROM queue_pauses WHERE model = $1",
                           1, values, NULL, NULL, 0, store_on_pause_set, BD__STORE_CALL(count));
}

/* ---- the jobs a bulk retry takes ------------------------------------------------------- */

/* The (status, seq DESC) index serves each state of the array; the planner sees the actual
 * parameters, so the "IS NULL OR" filters fold away. */
static const char store_sql_retryable[] =
    "SELECT id FROM jobs WHERE status = ANY($1::text[]) "
    "AND (status = 'failed' OR failed_items > 0) "
    "AND ($2::text IS NULL OR model = $2) AND ($3::text IS NULL OR operation = $3) "
    "ORDER BY seq DESC LIMIT $4";

static void store_on_retryable(int status, PGresult *res, void *arg)
{
    struct bd__store_call *c = arg;
    const char **ids = NULL;
    unsigned n = 0;
    bool has_more = false;

    if (status == BD_OK) {
        n = (unsigned)PQntuples(res);
        has_more = n > c->limit;
        if (has_more)
            n = c->limit;
        if (n > 0 && (ids = calloc(n, sizeof(*ids))) == NULL)
            status = BD_ENOMEM;
        for (unsigned i = 0; ids && i < n; i++)
            ids[i] = PQgetvalue(res, (int)i, 0);
    }
    if (status < 0) {
        struct bd_job_store_err e = bd__store_err(status == BD_EPG ? res : NULL);
        if (status != BD_EPG)
            e.message = bd_strerror(status);
        c->cb.ids(status, NULL, 0, false, &e, c->arg);
    } else {
        c->cb.ids(BD_OK, ids, n, has_more, NULL, c->arg);
    }
    free(ids);
    free(c);
}

int bd_job_store_list_retryable(struct bd_pg *pg, unsigned state_mask, const char *model,
                                bool has_operation, enum bd_job_operation operation,
                                unsigned limit, bd_job_store_ids_cb cb, void *arg)
{
    static const enum bd_job_state ended[] = { BD_JOB_COMPLETED, BD_JOB_FAILED,
                                               BD_JOB_CANCELLED };
    char states[64] = "{", lim[16];
    const char *values[4];
    struct bd__store_call tmpl = { .cb.ids = cb, .arg = arg, .limit = limit };

    if (cb == NULL || limit == 0)
        return BD_EINVAL;
    for (size_t i = 0; i < sizeof(ended) / sizeof(ended[0]); i++) {
        if (!(state_mask & (1u << ended[i])))
            continue;
        if (states[1] != '\0')
            strcat(states, ",");
        strcat(states, bd_job_state_name(ended[i]));
    }
    if (states[1] == '\0')
        return BD_EINVAL;                     /* no state a retry could take */
    strcat(states, "}");
    snprintf(lim, sizeof(lim), "%u", limit + 1);
    values[0] = states;
    values[1] = model;
    values[2] = has_operation ? bd_job_operation_name(operation) : NULL;
    values[3] = lim;
    return bd__store_query(pg, store_sql_retryable, 4, values, NULL, NULL, 0,
                           store_on_retryable, &tmpl);
}
