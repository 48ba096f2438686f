/* api_jobs.c -- the write side of the job API after submit: cancel and retry (submit is
 * in api_submit.c).
 *
 * Owns each request's small state record from the handler to its response. Loop thread
 * only. PostgreSQL holds the truth.
 * SPDX-License-Identifier: MIT
 */
#include "batchd/api.h"

#include "batchd/buf.h"
#include "batchd/config.h"
#include "batchd/error.h"
#include "batchd/http_server.h"
#include "batchd/job_engine.h"
#include "batchd/json_scan.h"
#include "batchd/log.h"
#include "batchd/pg_store.h"
#include "batchd/redis_queue.h"
#include "batchd/router.h"
#include "batchd/server.h"
#include "batchd/sha256.h"

#include <ctype.h>
#include <malloc.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>


/* ---- cancel ---------------------------------------------------------------------------- */

struct api_job_call {
    struct bd_http_request *req;
    struct bd_server *srv;
    char id[BD__API_JOB_ID_MAX + 1];
    int step;
};

static void api_call_free(struct api_job_call *c)
{
    free(c);
}

/* Answer c's request with the JSON error for err and free c. */
static void api_call_fail(struct api_job_call *c, int err, const char *message)
{
    bd_http_respond_err(c->req, err, message, NULL);
    api_call_free(c);
}

static struct api_job_call *api_call_new(struct bd_http_request *req, struct bd_server *srv)
{
    if (!bd__api_check_auth(req, srv))
        return NULL;
    const char *id = req->params_count > 0 ? req->params[0] : "";
    if (!bd__api_is_job_id_valid(id)) {
        bd_http_respond_error(req, 400, "validation_error",
                              "job_id must match ^[A-Za-z0-9_-]{1,128}$", "job_id");
        return NULL;
    }
    struct api_job_call *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        bd_http_respond_err(req, BD_ENOMEM, NULL, NULL);
        return NULL;
    }
    c->req = req;
    c->srv = srv;
    snprintf(c->id, sizeof(c->id), "%s", id);
    return c;
}

static void api_on_rq_cancelled(int status, long long v, void *arg)
{
    (void)status;
    (void)v;
    (void)arg;
}

static void api_on_cancel_updated(int status, PGresult *res, void *arg)
{
    struct api_job_call *c = arg;

    if (status < 0) {
        api_call_fail(c, BD_EPG, NULL);
        return;
    }
    if (PQntuples(res) == 0) {
        /* Not found, or already terminal (or raced into a terminal state). */
        if (c->step == 0) {
            bd_http_respond_err(c->req, BD_ENOTFOUND, "no such job", NULL);
        } else {
            char msg[160];
            snprintf(msg, sizeof(msg), "job is %s; only queued or processing jobs can be "
                     "cancelled", c->step == 2 ? "already being cancelled" : "finished");
            bd_http_respond_error(c->req, 409, "conflict", msg, NULL);
        }
        api_call_free(c);
        return;
    }
    json_t *j = bd__api_job_status_json(res, 0);
    const char *st = PQgetvalue(res, 0, 1);
    if (strcmp(st, "processing") == 0) {
        /* The owner aborts its model request and stops before the next batch: here at
         * once, elsewhere at its next lease renewal (Redis flag). */
        if (!bd_job_engine_cancel_local(c->srv->jobs, c->id))
            (void)bd_rq_cancel(c->srv->rq, c->id, api_on_rq_cancelled, NULL);
        json_object_set_new(j, "cancel_requested", json_true());
        json_object_set_new(j, "message", json_string("cancellation requested; the job stops "
                                                      "before its next batch"));
    } else {
        (void)bd_rq_cancel(c->srv->rq, c->id, api_on_rq_cancelled, NULL);
    }
    bd__api_status_cache_drop(c->srv, c->id);
    bd_log(BD_LOG_INFO, "api", "job=%s event=cancel status=%s", c->id, st);
    bd__api_respond_json(c->req, 200, j, NULL);
    api_call_free(c);
}

static void api_on_cancel_lookup(int status, PGresult *res, void *arg)
{
    struct api_job_call *c = arg;

    if (status < 0) {
        api_call_fail(c, BD_EPG, NULL);
        return;
    }
    if (PQntuples(res) == 0) {
        c->step = 0;
        api_on_cancel_updated(BD_OK, res, c);
        return;
    }
    const char *st = PQgetvalue(res, 0, 0);
    bool requested = strcmp(PQgetvalue(res, 0, 1), "t") == 0;
    const char *params[1] = { c->id };
    const char *sql;
    if (strcmp(st, "queued") == 0) {
        c->step = 1;
        sql = "UPDATE jobs SET status = 'cancelled', cancel_requested = true, "
              "completed_at = now(), updated_at = now() WHERE id = $1 AND status = 'queued' "
              "RETURNING " BD__API_JOB_COLUMNS;
    } else if (strcmp(st, "processing") == 0 && !requested) {
        c->step = 2;
        sql = "UPDATE jobs SET cancel_requested = true, updated_at = now() "
              "WHERE id = $1 AND status = 'processing' AND NOT cancel_requested "
              "RETURNING " BD__API_JOB_COLUMNS;
    } else {
        c->step = strcmp(st, "processing") == 0 ? 2 : 3;
        char msg[160];
        snprintf(msg, sizeof(msg), "job is %s; only queued or processing jobs can be cancelled",
                 c->step == 2 ? "already being cancelled" : st);
        bd_http_respond_error(c->req, 409, "conflict", msg, NULL);
        api_call_free(c);
        return;
    }
    if (bd_pg_query(c->srv->pg, sql, 1, params, NULL, NULL, 0, api_on_cancel_updated, c) < 0) {
        api_call_fail(c, BD_EPG, NULL);
    }
}

static void api_on_cancel(struct bd_http_request *req, void *arg)
{
    struct api_job_call *c = api_call_new(req, arg);
    if (c == NULL)
        return;
    const char *params[1] = { c->id };
    if (bd_pg_query(c->srv->pg, "SELECT status, cancel_requested FROM jobs WHERE id = $1", 1,
                    params, NULL, NULL, 0, api_on_cancel_lookup, c) < 0) {
        api_call_fail(c, BD_EPG, NULL);
    }
}

/* ---- retry ----------------------------------------------------------------------------- */

static void api_on_retry_enqueued(int status, long long pos, void *arg)
{
    struct api_job_call *c = arg;
    (void)status;
    (void)pos;
    bd_job_engine_kick(c->srv->jobs);
    api_call_free(c);
}

static void api_on_retry_done(int status, PGresult *res, void *arg)
{
    struct api_job_call *c = arg;

    if (status < 0) {
        api_call_fail(c, BD_EPG, NULL);
        return;
    }
    if (PQntuples(res) == 0) {
        bd_http_respond_error(c->req, 409, "conflict",
                              "job is not finished, or has no failed or unfinished items to "
                              "retry", NULL);
        api_call_free(c);
        return;
    }
    json_t *j = bd__api_job_status_json(res, 0);
    int prio = (int)strtol(PQgetvalue(res, 0, BD__API_JOB_NCOLUMNS), NULL, 10);
    long long seq = strtoll(PQgetvalue(res, 0, 16), NULL, 10);
    long items = strtol(PQgetvalue(res, 0, 5), NULL, 10);
    const char *model = PQgetisnull(res, 0, 3) ? "" : PQgetvalue(res, 0, 3);
    json_object_set_new(j, "run_attempt",
                        json_integer(strtol(PQgetvalue(res, 0, BD__API_JOB_NCOLUMNS + 1), NULL,
                                            10)));
    bd__api_status_cache_drop(c->srv, c->id);
    bd_log(BD_LOG_INFO, "api", "job=%s event=retry", c->id);
    bd__api_respond_json(c->req, 202, j, NULL);
    c->req = NULL;
    if (bd_rq_enqueue(c->srv->rq, c->id, (enum bd_priority)prio, seq, model, items,
                      api_on_retry_enqueued, c) < 0)
        api_call_free(c);
}

static void api_on_retry_lookup(int status, PGresult *res, void *arg)
{
    struct api_job_call *c = arg;

    if (status < 0 || PQntuples(res) == 0) {
        bd_http_respond_err(c->req, status < 0 ? BD_EPG : BD_ENOTFOUND,
                            status < 0 ? NULL : "no such job", NULL);
        api_call_free(c);
        return;
    }
    const char *params[1] = { c->id };
    /* Batches with failed items go back to pending (their counts are taken off the job's,
     * since the whole batch runs again and its vectors are upserted); unfinished batches
     * (cancelled or timed-out jobs) simply stay pending. */
    int rc = bd_pg_query(
        c->srv->pg,
        "WITH j0 AS (SELECT id FROM jobs WHERE id = $1 AND status IN ('completed', 'failed', "
        "'cancelled') FOR UPDATE), "
        "old AS (SELECT b.batch_no, b.processed, b.failed FROM job_batches b JOIN j0 "
        "ON b.job_id = j0.id WHERE b.failed > 0 FOR UPDATE OF b), "
        "pend AS (SELECT count(*) AS n FROM job_batches b JOIN j0 ON b.job_id = j0.id "
        "WHERE b.status = 'pending'), "
        "reset AS (UPDATE job_batches b SET status = 'pending', processed = 0, failed = 0, "
        "attempts = 0, last_error = NULL, updated_at = now() FROM old "
        "WHERE b.job_id = $1 AND b.batch_no = old.batch_no RETURNING 1) "
        "UPDATE jobs SET status = 'queued', run_attempt = run_attempt + 1, "
        "processed_items = processed_items - (SELECT COALESCE(sum(processed), 0) FROM old), "
        "failed_items = failed_items - (SELECT COALESCE(sum(failed), 0) FROM old), "
        "stored_vectors = stored_vectors - (SELECT COALESCE(sum(processed), 0) FROM old), "
        "next_batch = next_batch - (SELECT count(*) FROM old), "
        "error_code = NULL, error_message = NULL, completed_at = NULL, "
        "cancel_requested = false, lease_owner = NULL, updated_at = now() "
        "WHERE id IN (SELECT id FROM j0) AND ((SELECT count(*) FROM old) > 0 "
        "OR (SELECT n FROM pend) > 0) "
        "RETURNING " BD__API_JOB_COLUMNS ", priority, run_attempt",
        1, params, NULL, NULL, 0, api_on_retry_done, c);
    if (rc < 0) {
        api_call_fail(c, BD_EPG, NULL);
    }
}

static void api_on_retry(struct bd_http_request *req, void *arg)
{
    struct api_job_call *c = api_call_new(req, arg);
    if (c == NULL)
        return;
    const char *params[1] = { c->id };
    if (bd_pg_query(c->srv->pg, "SELECT status FROM jobs WHERE id = $1", 1, params, NULL,
                    NULL, 0, api_on_retry_lookup, c) < 0) {
        api_call_fail(c, BD_EPG, NULL);
    }
}

int bd__api_register_jobs(struct bd_router *r, struct bd_server *srv)
{
    int rc = BD_OK;
    rc = rc ? rc : bd_router_add(r, "DELETE", BD_API_PREFIX "/jobs/{id}", api_on_cancel, srv);
    rc = rc ? rc : bd_router_add(r, "POST", BD_API_PREFIX "/jobs/{id}/retry", api_on_retry,
                                 srv);
    return rc;
}
