/* api_queue.c -- the queue's controls: POST /queue/pause and /queue/resume (whole queue or
 * ?model=), and POST /jobs/retry-failed (the single-job retry for every finished job with
 * something failed, chosen with the list's filters, bounded per call).
 *
 * Handlers validate, call bd_job_pause / bd_job_retry (job_engine.h), and render; the jobs
 * a bulk retry takes come from bd_job_store_list_retryable. Each request's state lives in
 * its arena. Loop thread only. SPDX-License-Identifier: MIT
 */
#include "api_internal.h"

#include "batchd/config.h"
#include "batchd/error.h"
#include "batchd/http_server.h"
#include "batchd/job_engine.h"
#include "batchd/job_store.h"
#include "batchd/router.h"
#include "batchd/server.h"

#include <stdio.h>
#include <string.h>

#define API_RETRY_ALL_DEFAULT 100

/* ---- pause and resume ------------------------------------------------------------------ */

json_t *bd__api_pause_json(const struct bd_job_pause_state *st)
{
    json_t *j = json_object(), *models = json_array();
    bool is_failed = false;

    for (unsigned i = 0; models && i < st->models_count; i++)
        if (json_array_append_new(models, json_string(st->models[i].name)) < 0)
            is_failed = true;
    bd__api_set(j, "paused", json_boolean(st->is_paused), &is_failed);
    bd__api_set(j, "paused_at", st->is_paused ? bd__api_time_json(st->paused_at_ms) : json_null(),
                &is_failed);
    bd__api_set(j, "paused_models", models, &is_failed);
    if (is_failed) {
        json_decref(j);
        return NULL;
    }
    return j;
}

static void api_on_paused(int status, const struct bd_job_pause_state *st, bool is_changed,
                          void *arg)
{
    struct bd_http_request *req = arg;

    if (status < 0) {
        bd_http_respond_err(req, status, status == BD_EPG ? "store unavailable; the pause "
                            "state may or may not have changed (repeat the call)" : NULL, NULL);
        return;
    }
    json_t *j = bd__api_pause_json(st);
    if (j && json_object_set_new(j, "changed", json_boolean(is_changed)) < 0) {
        json_decref(j);
        j = NULL;
    }
    bd__api_respond_json(req, 200, j, NULL);
}

static void api_on_pause_change(struct bd_http_request *req, struct bd_server *srv,
                                bool is_paused)
{
    const char *model;
    int rc;

    if (!bd__api_check_auth(req, srv))
        return;
    model = bd_http_query_get(req, "model");
    if (model != NULL && bd_config_get_model(srv->cfg, model) == NULL) {
        /* An empty model= is refused too: a script whose variable came out empty must not
         * pause the whole queue. */
        bd_http_respond_err(req, BD_EINVAL, "model must name a configured model", "model");
        return;
    }
    if (srv->jobs == NULL || !bd_job_engine_is_ready(srv->jobs)) {
        bd_http_respond_err(req, BD_ENOTREADY, NULL, NULL);
        return;
    }
    if ((rc = bd_job_pause(srv->jobs, model, is_paused, api_on_paused, req)) < 0)
        bd_http_respond_err(req, rc, NULL, NULL);
}

static void api_on_pause(struct bd_http_request *req, void *arg)
{
    api_on_pause_change(req, arg, true);
}

static void api_on_resume(struct bd_http_request *req, void *arg)
{
    api_on_pause_change(req, arg, false);
}

/* ---- retry all failed ------------------------------------------------------------------ */

struct api_retry_all {
    struct bd_http_request *req;
    struct bd_server *srv;
    char **ids;                        /* the chosen jobs (arena) */
    unsigned count, next;
    bool has_more;
    json_t *done;                      /* ids retried */
};

static void api_retry_all_next(struct api_retry_all *c);

static void api_retry_all_respond(struct api_retry_all *c)
{
    json_t *j = json_object();
    bool is_failed = false;

    bd__api_set(j, "retried", json_integer((json_int_t)json_array_size(c->done)), &is_failed);
    bd__api_set(j, "job_ids", c->done, &is_failed);
    bd__api_set(j, "has_more", json_boolean(c->has_more), &is_failed);
    c->done = NULL;
    if (is_failed) {
        json_decref(j);
        j = NULL;
    }
    bd__api_respond_json(c->req, 200, j, NULL);
}

static void api_on_retried_one(int status, enum bd_job_state state, bool is_cancel_requested,
                               void *arg)
{
    struct api_retry_all *c = arg;
    const char *id = c->ids[c->next - 1];

    (void)state;
    (void)is_cancel_requested;
    if (status == BD_OK) {
        bd__api_status_cache_drop(c->srv, id);
        if (json_array_append_new(c->done, json_string(id)) < 0) {
            json_decref(c->done);
            bd_http_respond_err(c->req, BD_ENOMEM, NULL, NULL);
            return;
        }
    } else if (status != BD_ECONFLICT && status != BD_ENOTFOUND) {
        /* The store failed: the jobs retried so far stay retried (logged by the engine). */
        json_decref(c->done);
        bd_http_respond_err(c->req, status, NULL, NULL);
        return;
    }
    /* A job retried or deleted since it was chosen is skipped. */
    api_retry_all_next(c);
}

/* One job at a time: each retry is a few statements on the API's synchronous pool, and a
 * call is bounded by limit, so the pool is never flooded by one request. */
static void api_retry_all_next(struct api_retry_all *c)
{
    if (c->next == c->count) {
        api_retry_all_respond(c);
        return;
    }
    int rc = bd_job_retry(c->srv->jobs, c->ids[c->next++], api_on_retried_one, c);
    if (rc < 0) {
        json_decref(c->done);
        bd_http_respond_err(c->req, rc, NULL, NULL);
    }
}

static void api_on_retryable(int status, const char *const *ids, unsigned count, bool has_more,
                             const struct bd_job_store_err *err, void *arg)
{
    struct api_retry_all *c = arg;

    if (status < 0) {
        bd__api_fail_store(c->req, NULL, status, err ? err->message : NULL);
        return;
    }
    c->has_more = has_more;
    c->done = json_array();
    c->ids = count > 0 ? bd_http_alloc(c->req, count * sizeof(*c->ids)) : NULL;
    if (c->done == NULL || (count > 0 && c->ids == NULL)) {
        json_decref(c->done);
        bd_http_respond_err(c->req, BD_ENOMEM, NULL, NULL);
        return;
    }
    for (unsigned i = 0; i < count; i++) {
        if ((c->ids[i] = bd_http_strdup(c->req, ids[i])) == NULL) {
            json_decref(c->done);
            bd_http_respond_err(c->req, BD_ENOMEM, NULL, NULL);
            return;
        }
    }
    c->count = count;
    api_retry_all_next(c);
}

static void api_on_retry_failed(struct bd_http_request *req, void *arg)
{
    struct bd_server *srv = arg;
    const char *status, *model, *op;
    unsigned mask = (1u << BD_JOB_COMPLETED) | (1u << BD_JOB_FAILED);
    enum bd_job_operation operation = BD_OP_BULK_EMBED;
    bool has_operation = false;
    unsigned limit;
    struct api_retry_all *c;
    int rc;

    if (!bd__api_check_auth(req, srv))
        return;
    status = bd_http_query_get(req, "status");
    model = bd_http_query_get(req, "model");
    op = bd_http_query_get(req, "operation");
    if (status != NULL && *status != '\0') {
        enum bd_job_state st;
        if (strcmp(status, "all") == 0) {
            mask |= 1u << BD_JOB_CANCELLED;
        } else if (bd_job_state_parse(status, &st) == 0 && bd__api_is_terminal(st)) {
            mask = 1u << st;
        } else {
            bd_http_respond_err(req, BD_EINVAL, "status must be one of all, completed, failed, "
                                "cancelled", "status");
            return;
        }
    }
    if (op != NULL && *op != '\0') {
        if (bd_job_operation_parse(op, &operation) < 0) {
            bd_http_respond_err(req, BD_EINVAL, "operation must be bulk_embed or bulk_insert",
                                "operation");
            return;
        }
        has_operation = true;
    }
    if (model != NULL && *model == '\0')
        model = NULL;
    if (model != NULL && strlen(model) > 128) {
        bd_http_respond_err(req, BD_EINVAL, "model is too long", "model");
        return;
    }
    if (!bd__api_get_limit(req, API_RETRY_ALL_DEFAULT, &limit))
        return;
    if ((c = bd_http_alloc(req, sizeof(*c))) == NULL) {
        bd_http_respond_err(req, BD_ENOMEM, NULL, NULL);
        return;
    }
    *c = (struct api_retry_all){ .req = req, .srv = srv };
    rc = bd_job_store_list_retryable(srv->pg, mask, model, has_operation, operation, limit,
                                     api_on_retryable, c);
    if (rc < 0)
        bd__api_fail_store(req, NULL, rc, NULL);
}

/* ---- registration ------------------------------------------------------------------------ */

int bd__api_register_queue(struct bd_router *r, struct bd_server *srv)
{
    int rc = BD_OK;
    rc = rc ? rc : bd_router_add(r, "POST", BD_API_PREFIX "/queue/pause", api_on_pause, srv);
    rc = rc ? rc : bd_router_add(r, "POST", BD_API_PREFIX "/queue/resume", api_on_resume, srv);
    rc = rc ? rc : bd_router_add(r, "POST", BD_API_PREFIX "/jobs/retry-failed",
                                 api_on_retry_failed, srv);
    return rc;
}
