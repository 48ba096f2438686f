/* api_jobs.c -- the write side of the job API after submit: cancel and retry (submit is
 * in api_submit.c).
 *
 * Owns each request's small state record from the handler to its response. Loop thread
 * only. PostgreSQL holds the truth.
 * SPDX-License-Identifier: MIT
 */
#include "batchd/api.h"

#include "batchd/error.h"
#include "batchd/http_server.h"
#include "batchd/job_engine.h"
#include "batchd/job_store.h"
#include "batchd/router.h"
#include "batchd/server.h"

#include <stdio.h>
#include <stdlib.h>

/* ---- cancel and retry: the engine changes the job, the handler renders it ------------ */

struct api_job_call {
    struct bd_http_request *req;
    struct bd_server *srv;
    char id[BD__API_JOB_ID_MAX + 1];
    enum bd_job_event ev;
    bool is_cancel_requested;
    enum bd_job_state state;
};

static struct api_job_call *api_call_new(struct bd_http_request *req, struct bd_server *srv)
{
    if (!bd__api_check_auth(req, srv))
        return NULL;
    const char *id = req->params_count > 0 ? req->params[0] : "";
    if (!bd__api_is_job_id_valid(id)) {
        bd_http_respond_err(req, BD_EINVAL, "job_id must match ^[A-Za-z0-9_-]{1,128}$",
                            "job_id");
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

/* The answer is the job's status object as it stands after the change. */
static void api_on_rendered(int status, const struct bd_job_row *row, const char *pg_message,
                            void *arg)
{
    struct api_job_call *c = arg;

    (void)pg_message;                      /* logged by the store; never sent to clients */
    if (status < 0) {
        bd_http_respond_err(c->req, status, NULL, NULL);
        free(c);
        return;
    }
    json_t *j = bd__api_status_json(row);
    if (j && c->ev == BD_JOB_EV_CANCEL && c->state == BD_JOB_PROCESSING) {
        json_object_set_new(j, "cancel_requested", json_true());
        json_object_set_new(j, "message", json_string("cancellation requested; the job stops "
                                                      "before its next batch"));
    }
    bd__api_respond_json(c->req, c->ev == BD_JOB_EV_RETRY ? 202 : 200, j, NULL);
    free(c);
}

static void api_on_changed(int status, enum bd_job_state state, bool is_cancel_requested,
                           void *arg)
{
    struct api_job_call *c = arg;
    char msg[160];

    c->state = state;
    c->is_cancel_requested = is_cancel_requested;
    if (status == BD_ECONFLICT) {
        if (c->ev == BD_JOB_EV_CANCEL)
            snprintf(msg, sizeof(msg), "job is %s; only queued or processing jobs can be "
                     "cancelled", state == BD_JOB_PROCESSING ? "already being cancelled"
                                                             : bd_job_state_name(state));
        else
            snprintf(msg, sizeof(msg), "job is %s; only a finished job with failed or "
                     "unfinished items can be retried", bd_job_state_name(state));
        bd_http_respond_err(c->req, BD_ECONFLICT, msg, NULL);
        free(c);
        return;
    }
    if (status < 0) {
        bd_http_respond_err(c->req, status, status == BD_ENOTFOUND ? "no such job" : NULL, NULL);
        free(c);
        return;
    }
    bd__api_status_cache_drop(c->srv, c->id);
    if (bd_job_store_get_job(c->srv->pg, c->id, api_on_rendered, c) < 0) {
        bd_http_respond_err(c->req, BD_EPG, NULL, NULL);
        free(c);
    }
}

static void api_on_change(struct bd_http_request *req, struct bd_server *srv,
                          enum bd_job_event ev)
{
    struct api_job_call *c = api_call_new(req, srv);
    if (c == NULL)
        return;
    c->ev = ev;
    int rc = ev == BD_JOB_EV_CANCEL ? bd_job_cancel(srv->jobs, c->id, api_on_changed, c)
                                    : bd_job_retry(srv->jobs, c->id, api_on_changed, c);
    if (rc < 0) {
        bd_http_respond_err(req, rc, NULL, NULL);
        free(c);
    }
}

static void api_on_cancel(struct bd_http_request *req, void *arg)
{
    api_on_change(req, arg, BD_JOB_EV_CANCEL);
}

static void api_on_retry(struct bd_http_request *req, void *arg)
{
    api_on_change(req, arg, BD_JOB_EV_RETRY);
}

int bd__api_register_jobs(struct bd_router *r, struct bd_server *srv)
{
    int rc = BD_OK;
    rc = rc ? rc : bd_router_add(r, "DELETE", BD_API_PREFIX "/jobs/{id}", api_on_cancel, srv);
    rc = rc ? rc : bd_router_add(r, "POST", BD_API_PREFIX "/jobs/{id}/retry", api_on_retry,
                                 srv);
    return rc;
}
