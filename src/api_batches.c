/* api_batches.c -- OpenAI-compatible batches: POST /v1/batches, GET /v1/batches,
 * GET /v1/batches/{id}, POST /v1/batches/{id}/cancel.
 *
 * Owns each request's small record until its answer. The work is batch.h's (creation,
 * finalizer) and the SQL batch_store.h's; here requests are checked and batches rendered
 * in OpenAI's shapes (api_v1.c). A create reads the input file twice as a stream and holds
 * a PostgreSQL connection for its transaction meanwhile, so at most API_BATCH_CREATES run
 * at once; the next API_BATCH_WAITING wait in line (their requests open, first come first
 * served; a client that leaves drops out), more get 503 with Retry-After. Loop thread
 * only.
 * SPDX-License-Identifier: MIT
 */
#include "batchd/api.h"
#include "api_internal.h"
#include "api_v1.h"

#include "batchd/batch.h"
#include "batchd/buf.h"
#include "batchd/config.h"
#include "batchd/error.h"
#include "batchd/http_server.h"
#include "batchd/job_engine.h"
#include "batchd/job_submit.h"
#include "batchd/job_types.h"
#include "batchd/log.h"
#include "batchd/redis_queue.h"
#include "batchd/router.h"
#include "batchd/server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Batch creations in flight per process, and waiting for one of those places. */
#define API_BATCH_CREATES 2
#define API_BATCH_WAITING 64
/* GET /v1/batches: limit= from 1 to 100, default 20 (as OpenAI's). */
#define API_BATCH_PAGE_MAX 100
#define API_BATCH_PAGE_DEFAULT 20
/* metadata: at most 16 pairs, keys up to 64 and values up to 512 characters (OpenAI's). */
#define API_META_PAIRS 16
#define API_META_KEY 64
#define API_META_VALUE 512

static json_t *api_time_or_null(int64_t t)
{
    return t > 0 ? json_integer(t) : json_null();
}

/* The batch object of the OpenAI API. NULL on ENOMEM. */
static json_t *api_batch_object(const struct bd_batch_row *b)
{
    const char *status = bd_batch_status(b);
    bool failed = false;
    int64_t total, completed, nfailed;
    json_t *o = json_object(), *errors = json_null(), *meta = json_null();

    if (b->errors_json) {
        json_t *data = json_loads(b->errors_json, 0, NULL);
        errors = json_pack("{s:s, s:o}", "object", "list", "data",
                           data ? data : json_array());
    }
    if (b->metadata_json)
        meta = json_loads(b->metadata_json, 0, NULL);
    bd_batch_request_counts(b, &total, &completed, &nfailed);
    bd__api_set(o, "id", json_string(b->id), &failed);
    bd__api_set(o, "object", json_string("batch"), &failed);
    bd__api_set(o, "endpoint", json_string(b->endpoint), &failed);
    bd__api_set(o, "errors", errors, &failed);
    bd__api_set(o, "input_file_id", json_string(b->input_file_id), &failed);
    bd__api_set(o, "completion_window", json_string(b->completion_window), &failed);
    bd__api_set(o, "status", json_string(status), &failed);
    bd__api_set(o, "output_file_id", b->output_file_id ? json_string(b->output_file_id)
                                                       : json_null(), &failed);
    bd__api_set(o, "error_file_id", b->error_file_id ? json_string(b->error_file_id)
                                                     : json_null(), &failed);
    bd__api_set(o, "created_at", json_integer(b->created_at), &failed);
    /* validation is done when the create answers: a batch with a job is in progress since */
    bd__api_set(o, "in_progress_at", api_time_or_null(b->job_id ? b->created_at : 0), &failed);
    bd__api_set(o, "expires_at", api_time_or_null(b->expires_at), &failed);
    bd__api_set(o, "finalizing_at", api_time_or_null(b->finalizing_at), &failed);
    bd__api_set(o, "completed_at", api_time_or_null(strcmp(status, "completed") == 0
                                                    ? b->finalized_at : 0), &failed);
    bd__api_set(o, "failed_at", api_time_or_null(strcmp(status, "failed") == 0
                                                 ? (b->finalized_at ? b->finalized_at
                                                                    : b->created_at) : 0),
                &failed);
    bd__api_set(o, "expired_at", api_time_or_null(b->expired_at), &failed);
    bd__api_set(o, "cancelling_at", api_time_or_null(b->cancelling_at), &failed);
    bd__api_set(o, "cancelled_at", api_time_or_null(strcmp(status, "cancelled") == 0
                                                    ? b->finalized_at : 0), &failed);
    bd__api_set(o, "request_counts", json_pack("{s:I, s:I, s:I}", "total", (json_int_t)total,
                                               "completed", (json_int_t)completed, "failed",
                                               (json_int_t)nfailed), &failed);
    bd__api_set(o, "metadata", meta ? meta : json_null(), &failed);
    bd__api_set(o, "model", b->model ? json_string(b->model) : json_null(), &failed);
    /* batchd does not count tokens: the model servers' counts are not kept */
    bd__api_set(o, "usage", json_null(), &failed);
    bd__api_set(o, "batchd_job_id", b->job_id ? json_string(b->job_id) : json_null(), &failed);
    if (failed) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* "batch_" and 24 hex digits; anything else names no batch. */
static bool api_is_batch_id(const char *id)
{
    size_t n = id ? strlen(id) : 0;

    if (n != BD_BATCH_ID_LEN || strncmp(id, "batch_", 6) != 0)
        return false;
    for (size_t i = 6; i < n; i++)
        if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f')))
            return false;
    return true;
}

static void api_batch_not_found(struct bd_http_request *req, const char *id)
{
    char msg[160];

    snprintf(msg, sizeof(msg), "No such Batch object: %.64s", id ? id : "");
    bd__v1_respond_error(req, NULL, BD_ENOTFOUND, msg, "id", NULL, NULL);
}

static void api_batch_fail_store(struct bd_http_request *req, const char *id, int err,
                                 const char *message)
{
    if (err == BD_ENOTFOUND) {
        api_batch_not_found(req, id);
        return;
    }
    bd_log(BD_LOG_WARN, "api", "batch=%s route=%s event=store_failed err=%s pg=\"%s\"",
           id ? id : "-", req->route ? req->route : "-", bd_err_name(err),
           message ? message : "");
    bd__v1_respond_error(req, NULL, err == BD_ENOMEM || err == BD_EINTERNAL ? err : BD_EPG,
                         NULL, NULL, NULL, NULL);
}

static void api_on_batch_row(int status, const struct bd_batch_row *row, const char *message,
                             void *arg)
{
    struct bd_http_request *req = arg;

    if (status < 0) {
        api_batch_fail_store(req, req->params[0], status, message);
        return;
    }
    bd__v1_respond_json(req, NULL, 200, api_batch_object(row));
}

static const char *api_batch_param_id(struct bd_http_request *req)
{
    const char *id = req->params[0];

    if (!api_is_batch_id(id)) {
        api_batch_not_found(req, id);
        return NULL;
    }
    return id;
}

/* ==== GET /v1/batches/{id} ================================================================ */

static void api_on_batch_get(struct bd_http_request *req, void *arg)
{
    struct bd_server *srv = arg;
    const char *id = api_batch_param_id(req);
    int rc;

    if (id && (rc = bd_batch_store_get(srv->pg, id, api_on_batch_row, req)) < 0)
        api_batch_fail_store(req, id, rc, NULL);
}

/* ==== GET /v1/batches?after=&limit= ======================================================= */

static void api_on_batch_page(int status, const struct bd_batch_row *rows, unsigned n,
                              bool has_more, const char *message, void *arg)
{
    struct bd_http_request *req = arg;
    json_t *data;
    bool failed = false;

    if (status < 0) {
        api_batch_fail_store(req, NULL, status, message);
        return;
    }
    data = json_array();
    for (unsigned i = 0; data && i < n && !failed; i++)
        failed = json_array_append_new(data, api_batch_object(&rows[i])) < 0;
    if (failed) {
        json_decref(data);
        data = NULL;
    }
    bd__v1_respond_list(req, data, n ? rows[0].id : NULL, n ? rows[n - 1].id : NULL, has_more);
}

static void api_on_batch_list(struct bd_http_request *req, void *arg)
{
    struct bd_server *srv = arg;
    const char *after = bd_http_query_get(req, "after");
    unsigned n;
    int rc;

    if (!bd__v1_get_limit(req, API_BATCH_PAGE_DEFAULT, API_BATCH_PAGE_MAX, &n))
        return;
    if (after && *after && !api_is_batch_id(after)) {
        bd__v1_respond_error(req, NULL, BD_EINVAL, "after must be a batch id", "after", NULL,
                             NULL);
        return;
    }
    rc = bd_batch_store_list(srv->pg, after && *after ? after : NULL, n, api_on_batch_page, req);
    if (rc < 0)
        api_batch_fail_store(req, NULL, rc, NULL);
}

/* ==== POST /v1/batches/{id}/cancel ======================================================== */

struct api_cancel {
    struct bd_http_request *req;
    struct bd_server *srv;
    char id[BD_BATCH_ID_LEN + 1];
};

static void api_cancel_answer(struct api_cancel *c)
{
    int rc = bd_batch_store_get(c->srv->pg, c->id, api_on_batch_row, c->req);

    if (rc < 0)
        api_batch_fail_store(c->req, c->id, rc, NULL);
    free(c);
}

static void api_on_cancel_job(int status, enum bd_job_state state, bool is_cancel_requested,
                              void *arg)
{
    struct api_cancel *c = arg;

    (void)state;
    (void)is_cancel_requested;
    /* A job that ended meanwhile (ECONFLICT) is fine: the finalizer writes what finished;
     * a store failure is fine too: the finalizer redoes a cancel it finds not recorded. */
    if (status < 0 && status != BD_ECONFLICT && status != BD_ENOTFOUND)
        bd_log(BD_LOG_WARN, "api", "batch=%s event=cancel_job_failed err=%s", c->id,
               bd_err_name(status));
    bd_batch_finalizer_kick(c->srv->batches);
    api_cancel_answer(c);
}

static void api_on_cancel_final_row(int status, const struct bd_batch_row *row,
                                    const char *message, void *arg)
{
    struct bd_http_request *req = arg;
    char msg[160];

    if (status < 0) {
        api_batch_fail_store(req, req->params[0], status, message);
        return;
    }
    if (row->final_status && strcmp(row->final_status, "cancelled") == 0) {
        bd__v1_respond_json(req, NULL, 200, api_batch_object(row));   /* cancelled already */
        return;
    }
    snprintf(msg, sizeof(msg), "Cannot cancel a batch with status '%s'.", bd_batch_status(row));
    bd__v1_respond_error(req, NULL, BD_EINVAL, msg, NULL, "batch_not_cancellable", NULL);
}

static void api_on_cancel_row(int status, const struct bd_batch_row *row, const char *message,
                              void *arg)
{
    struct api_cancel *c = arg;
    int rc;

    if (status < 0 || row->job_id == NULL) {
        if (status < 0 && status != BD_ENOTFOUND)
            bd_log(BD_LOG_WARN, "api", "batch=%s event=cancel_read_failed err=%s pg=\"%s\"",
                   c->id, bd_err_name(status), message ? message : "");
        api_cancel_answer(c);
        return;
    }
    rc = bd_job_cancel(c->srv->jobs, row->job_id, api_on_cancel_job, c);
    if (rc < 0)
        api_on_cancel_job(rc, BD_JOB_QUEUED, false, c);
}

static void api_on_cancel_recorded(int status, const char *message, void *arg)
{
    struct api_cancel *c = arg;
    int rc;

    if (status == BD_ENOTFOUND) {            /* no such batch, or final already: which? */
        rc = bd_batch_store_get(c->srv->pg, c->id, api_on_cancel_final_row, c->req);
        if (rc < 0)
            api_batch_fail_store(c->req, c->id, rc, NULL);
        free(c);
        return;
    }
    if (status < 0) {
        api_batch_fail_store(c->req, c->id, status, message);
        free(c);
        return;
    }
    /* Recorded: the batch's row names its job, which is asked to stop. */
    rc = bd_batch_store_get(c->srv->pg, c->id, api_on_cancel_row, c);
    if (rc < 0) {
        api_batch_fail_store(c->req, c->id, rc, NULL);
        free(c);
    }
}

static void api_on_batch_cancel(struct bd_http_request *req, void *arg)
{
    struct bd_server *srv = arg;
    const char *id = api_batch_param_id(req);
    struct api_cancel *c;
    int rc;

    if (id == NULL)
        return;
    if ((c = calloc(1, sizeof(*c))) == NULL) {
        bd__v1_respond_error(req, NULL, BD_ENOMEM, NULL, NULL, NULL, NULL);
        return;
    }
    c->req = req;
    c->srv = srv;
    snprintf(c->id, sizeof(c->id), "%s", id);
    rc = bd_batch_store_request_cancel(srv->pg, id, api_on_cancel_recorded, c);
    if (rc < 0) {
        api_batch_fail_store(req, id, rc, NULL);
        free(c);
    }
}

/* ==== POST /v1/batches ==================================================================== */

struct bd__api_create {
    struct bd_http_request *req;
    struct bd_server *srv;
    struct bd_batch_create *bc;       /* until api_on_created */
    char *input_file_id;
    char *metadata_json;              /* NULL: none */
    int priority;
    struct bd__api_create *wait_next; /* in srv->batch_waiting */
    bool is_waiting;
};

static void api_create_free(struct bd__api_create *c)
{
    free(c->input_file_id);
    free(c->metadata_json);
    free(c);
}

static void api_create_unwait(struct bd__api_create *c)
{
    struct bd__api_create **p = &c->srv->batch_waiting;

    while (*p && *p != c)
        p = &(*p)->wait_next;
    if (*p)
        *p = c->wait_next;
    c->is_waiting = false;
    c->srv->batch_waiting_count--;
}

/* The client left (or the server is stopping and cut it): a running create stops, and its
 * callback then finishes the request; a waiting one leaves the line and is finished here. */
static void api_on_create_abort(struct bd_http_request *req, void *arg)
{
    struct bd__api_create *c = arg;

    if (c->is_waiting) {
        api_create_unwait(c);
        bd_http_set_abort_cb(req, NULL, NULL);
        api_create_free(c);
        bd__v1_respond_error(req, NULL, BD_ECANCELED, NULL, NULL, NULL, NULL);
        return;
    }
    if (c->bc)
        bd_batch_create_abort(c->bc);
}

static void api_create_start(struct bd__api_create *c);

/* A place freed: the creates first in line go on. */
static void api_create_next(struct bd_server *srv)
{
    /* stopping: the waiting ones are cut with their connections */
    while (srv->batch_waiting && srv->batch_creates < API_BATCH_CREATES && !srv->is_stopping) {
        struct bd__api_create *w = srv->batch_waiting;
        api_create_unwait(w);
        api_create_start(w);
    }
}

static void api_on_created(int status, const char *batch_id, const char *message, void *arg)
{
    struct bd__api_create *c = arg;
    struct bd_http_request *req = c->req;
    struct bd_server *srv = c->srv;
    int rc;

    srv->batch_creates--;
    bd_http_set_abort_cb(req, NULL, NULL);
    api_create_free(c);
    api_create_next(srv);
    switch (status) {
    case BD_OK:
        req->params[0] = bd_http_strdup(req, batch_id);
        if (req->params[0] == NULL) {
            bd__v1_respond_error(req, NULL, BD_ENOMEM, NULL, NULL, NULL, NULL);
            return;
        }
        if ((rc = bd_batch_store_get(srv->pg, batch_id, api_on_batch_row, req)) < 0)
            api_batch_fail_store(req, batch_id, rc, NULL);
        return;
    case BD_ENOTFOUND:
        bd__v1_respond_error(req, NULL, BD_ENOTFOUND, message, "input_file_id", NULL, NULL);
        return;
    case BD_EINVAL:
        bd__v1_respond_error(req, NULL, BD_EINVAL, message, "input_file_id", NULL, NULL);
        return;
    case BD_EBUSY:
        bd__v1_respond_error(req, NULL, BD_EBUSY, message, NULL, "queue_full",
                             "Retry-After: 5\r\n");
        return;
    default:
        bd__v1_respond_error(req, NULL, status == BD_ENOMEM ? BD_ENOMEM
                             : status == BD_EREDIS ? BD_EREDIS : BD_EPG, NULL, NULL, NULL, NULL);
        return;
    }
}

/* metadata: null, or an object of at most 16 string values (OpenAI's rule). NULL when it
 * is acceptable, else why not. */
static const char *api_check_metadata(json_t *m)
{
    const char *k;
    json_t *v;

    if (m == NULL || json_is_null(m))
        return NULL;
    if (!json_is_object(m) || json_object_size(m) > API_META_PAIRS)
        return "metadata must be an object of at most 16 key-value pairs";
    json_object_foreach(m, k, v) {
        /* characters, not bytes: "é" is one */
        if (bd_utf8_count(k, strlen(k)) > API_META_KEY || !json_is_string(v) ||
            bd_utf8_count(json_string_value(v), json_string_length(v)) > API_META_VALUE)
            return "metadata keys must be at most 64 characters and values strings of at "
                   "most 512";
    }
    return NULL;
}

static void api_on_batch_create(struct bd_http_request *req, void *arg)
{
    struct bd_server *srv = arg;
    json_error_t jerr;
    json_t *body = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &jerr);
    json_t *file = json_object_get(body, "input_file_id");
    json_t *endpoint = json_object_get(body, "endpoint");
    json_t *window = json_object_get(body, "completion_window");
    json_t *meta = json_object_get(body, "metadata");
    const char *bad_meta = api_check_metadata(meta);
    int priority = BD_PRIO_NORMAL;
    struct bd__api_create *c = NULL;

    if (!json_is_object(body)) {
        bd__v1_respond_error(req, NULL, BD_EINVAL, "the body must be a JSON object", NULL,
                             NULL, NULL);
        goto out;
    }
    if (!json_is_string(file)) {
        bd__v1_respond_error(req, NULL, BD_EINVAL, "input_file_id is required",
                             "input_file_id", NULL, NULL);
        goto out;
    }
    if (!json_is_string(endpoint) || strcmp(json_string_value(endpoint), BD_BATCH_ENDPOINT)) {
        bd__v1_respond_error(req, NULL, BD_EINVAL, "endpoint must be \"/v1/embeddings\": "
                             "batchd runs embeddings batches only", "endpoint", NULL, NULL);
        goto out;
    }
    if (!json_is_string(window) || strcmp(json_string_value(window), BD_BATCH_WINDOW)) {
        bd__v1_respond_error(req, NULL, BD_EINVAL, "completion_window must be \"24h\"",
                             "completion_window", NULL, NULL);
        goto out;
    }
    if (bad_meta) {
        bd__v1_respond_error(req, NULL, BD_EINVAL, bad_meta, "metadata", NULL, NULL);
        goto out;
    }
    /* batchd's own: metadata.priority (high, normal, low) sets the job's priority */
    json_t *prio = json_object_get(meta, "priority");
    if (prio && bd_job_priority_parse(json_string_value(prio), &priority) != BD_OK) {
        bd__v1_respond_error(req, NULL, BD_EINVAL, "metadata.priority must be high, normal or "
                             "low", "metadata", NULL, NULL);
        goto out;
    }
    bool is_now = srv->batch_creates < API_BATCH_CREATES && srv->batch_waiting == NULL;
    if (!is_now && srv->batch_waiting_count >= API_BATCH_WAITING) {
        bd__v1_respond_error(req, NULL, BD_EUPLOADS, "too many batches are being created at "
                             "once; retry shortly", NULL, NULL, "Retry-After: 5\r\n");
        goto out;
    }
    if ((c = calloc(1, sizeof(*c))) == NULL ||
        (c->input_file_id = strdup(json_string_value(file))) == NULL ||
        (json_is_object(meta) && (c->metadata_json = json_dumps(meta, JSON_COMPACT)) == NULL)) {
        if (c)
            api_create_free(c);
        bd__v1_respond_error(req, NULL, BD_ENOMEM, NULL, NULL, NULL, NULL);
        goto out;
    }
    c->req = req;
    c->srv = srv;
    c->priority = priority;
    bd_http_set_abort_cb(req, api_on_create_abort, c);
    if (is_now) {
        api_create_start(c);
        goto out;
    }
    struct bd__api_create **tail = &srv->batch_waiting;
    while (*tail)
        tail = &(*tail)->wait_next;
    *tail = c;
    c->is_waiting = true;
    srv->batch_waiting_count++;
    bd_log(BD_LOG_DEBUG, "api", "event=batch_create_waiting waiting=%u",
           srv->batch_waiting_count);
out:
    json_decref(body);
}

/* c holds a place now: the create runs, and its callback finishes the request. */
static void api_create_start(struct bd__api_create *c)
{
    struct bd_server *srv = c->srv;
    struct bd_http_request *req = c->req;
    struct bd_job_submit_deps deps = { srv->pg, srv->rq, srv->cfg, srv->jobs };
    struct bd_batch_request br = { .loop = srv->loop, .input_file_id = c->input_file_id,
                                   .metadata_json = c->metadata_json,
                                   .priority = c->priority };
    int rc = bd_batch_create(&deps, &br, api_on_created, c, &c->bc);

    if (rc < 0) {
        char msg[160];
        snprintf(msg, sizeof(msg), "No such File object: %.64s", c->input_file_id);
        bd_http_set_abort_cb(req, NULL, NULL);
        api_create_free(c);
        if (rc == BD_ENOTFOUND)
            bd__v1_respond_error(req, NULL, BD_ENOTFOUND, msg, "input_file_id", NULL, NULL);
        else
            bd__v1_respond_error(req, NULL, rc == BD_ENOMEM ? BD_ENOMEM : BD_EPG, NULL, NULL,
                                 NULL, NULL);
        return;
    }
    srv->batch_creates++;
}

int bd__api_register_batches(struct bd_router *r, struct bd_server *srv)
{
    int rc = bd_router_add(r, "POST", BD__V1_PREFIX "/batches", api_on_batch_create, srv);

    rc = rc ? rc : bd_router_add(r, "GET", BD__V1_PREFIX "/batches", api_on_batch_list, srv);
    rc = rc ? rc : bd_router_add(r, "GET", BD__V1_PREFIX "/batches/{id}", api_on_batch_get, srv);
    rc = rc ? rc : bd_router_add(r, "POST", BD__V1_PREFIX "/batches/{id}/cancel",
                                 api_on_batch_cancel, srv);
    return rc;
}
