/* api_submit.c -- POST /api/v1/batch/jobs: the handler. Checks the request's headers,
 * has the body parsed and validated (api_submit_parse.c), checks the collection's
 * dimension and the Idempotency-Key, hands the job to bd_job_submit (job_submit.h), and
 * renders the answer.
 *
 * Owns each request's state record from the handler to its response. Loop thread only.
 * Everything is validated before anything is written. No SQL here (lookups go through
 * job_store.h) and no job state written here (bd_job_submit creates the job); statuses
 * of errors come from error.h's map.  SPDX-License-Identifier: MIT
 */
#include "batchd/api.h"
#include "api_submit.h"

#include "api_internal.h"

#include "batchd/buf.h"
#include "batchd/config.h"
#include "batchd/error.h"
#include "batchd/hashtab.h"
#include "batchd/http_server.h"
#include "batchd/job_engine.h"
#include "batchd/job_store.h"
#include "batchd/job_submit.h"
#include "batchd/json_scan.h"
#include "batchd/log.h"
#include "batchd/router.h"
#include "batchd/server.h"
#include "batchd/sha256.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* The answers that are not errors (errors take their status from error.h's map). */
#define API_STATUS_OK 200
#define API_STATUS_ACCEPTED 202

/* ---- collections' dimensions ---------------------------------------------------------------- */

#define API_COLLECTIONS_MAX 4096

struct bd_api_collections {
    struct bd_htab index;             /* name -> dimension; keys are names[] */
    char *names[API_COLLECTIONS_MAX];
    unsigned count;
};

bool bd__api_collection_get(const struct bd_server *srv, const char *name, unsigned *dim)
{
    for (unsigned i = 0; i < srv->cfg->models_count; i++) {
        char reserved[sizeof(((struct bd__api_submit *)0)->collection)];
        bd_job_default_collection(srv->cfg->models[i].name, reserved, sizeof(reserved));
        if (strcmp(name, reserved) == 0) {
            *dim = srv->cfg->models[i].dimensions;
            return true;
        }
    }
    const uint32_t *v = srv->api_collections
        ? bd_htab_get(&srv->api_collections->index, name, strlen(name)) : NULL;
    if (v)
        *dim = *v;
    return v != NULL;
}

void bd__api_collection_put(struct bd_server *srv, const char *name, unsigned dim)
{
    struct bd_api_collections *c = srv->api_collections;
    bool is_new = false;

    if (c == NULL && (c = srv->api_collections = calloc(1, sizeof(*c))) == NULL)
        return;
    if (c->count >= API_COLLECTIONS_MAX || bd_htab_get(&c->index, name, strlen(name)))
        return;
    char *key = strdup(name);
    uint32_t *v = key ? bd_htab_put(&c->index, key, strlen(key), &is_new) : NULL;
    if (v == NULL) {
        free(key);
        return;
    }
    *v = dim;
    c->names[c->count++] = key;
}

void bd__api_collections_free(struct bd_server *srv)
{
    struct bd_api_collections *c = srv->api_collections;
    if (c == NULL)
        return;
    bd_htab_free(&c->index);
    for (unsigned i = 0; i < c->count; i++)
        free(c->names[i]);
    free(c);
    srv->api_collections = NULL;
}

/* ---- the request's life ---------------------------------------------------------------- */

void bd__api_submit_free(struct bd__api_submit *s)
{
    bd__api_submit_parse_free(s);
    json_decref(s->metadata);
    free(s);
}

/* Answer with the error for err (message NULL: the map's generic one) and free s. */
static void api_submit_error(struct bd__api_submit *s, int err, const char *message,
                             const char *field)
{
    bd_http_respond_err(s->req, err, message, field);
    bd__api_submit_free(s);
}

static void api_submit_respond(struct bd__api_submit *s, const struct bd_job_submitted *res)
{
    char when[32];

    bd_time_rfc3339((long long)res->estimated_completion_unix * 1000, when, sizeof(when));
    json_t *j = json_pack("{s:s,s:s,s:s,s:s?,s:s,s:i,s:i,s:s,s:s,s:o,s:s,s:O}",
                          "job_id", res->job_id, "status", "queued",
                          "operation", bd_job_operation_name(s->op), "model", s->model,
                          "collection", s->collection, "items_count", (int)s->items,
                          "batch_size", (int)s->batch_size,
                          "priority", bd_job_priority_name(s->priority),
                          "estimated_completion", when,
                          "queue_position",
                          res->queue_position > 0 ? json_integer(res->queue_position)
                                                  : json_null(),
                          "created_at", res->created_at, "metadata", s->metadata);
    char loc[256];
    snprintf(loc, sizeof(loc), "Location: " BD_API_PREFIX "/jobs/%s\r\n", res->job_id);
    bd__api_respond_json(s->req, API_STATUS_ACCEPTED, j, loc);
    bd__api_submit_free(s);
}

static void api_submit_step_existing(struct bd__api_submit *s);

static void api_on_submitted(int status, const struct bd_job_submitted *res, void *arg)
{
    struct bd__api_submit *s = arg;

    if (status == BD_ECONFLICT) {       /* a concurrent submit with this key won the race */
        s->is_after_race = true;
        api_submit_step_existing(s);
        return;
    }
    bd__api_submit_answer(s, status, res);
}

void bd__api_submit_answer(struct bd__api_submit *s, int status,
                           const struct bd_job_submitted *res)
{
    switch (status) {
    case BD_OK:
        api_submit_respond(s, res);
        return;
    case BD_EBUSY: {
        char msg[160];
        snprintf(msg, sizeof(msg), "queue is full: %lld items queued, limit %llu; retry later",
                 res->queued_items, res->max_queued_items);
        bd_http_respond_error_ex(s->req, bd_err_http_status(BD_EBUSY), "Retry-After: 5\r\n",
                                 bd_err_api_code(BD_EBUSY), msg, NULL);
        bd__api_submit_free(s);
        return;
    }
    default:                            /* the job module logged the cause */
        api_submit_error(s, status, NULL, NULL);
        return;
    }
}

static void api_submit_step_create(struct bd__api_submit *s)
{
    const struct bd_server *srv = s->srv;
    struct bd_job_submit_deps deps = { srv->pg, srv->rq, srv->cfg, srv->jobs };
    char *metadata = json_dumps(s->metadata, JSON_COMPACT);
    struct bd_job_payload *batches = metadata ? bd__api_submit_payloads(s) : NULL;
    int rc = BD_ENOMEM;

    if (batches) {
        struct bd_job_spec spec = {
            .op = s->op,
            .model = s->model,
            .collection = s->collection,
            .priority = s->priority,
            .batch_size = s->batch_size,
            .items = s->items,
            .batches = s->batches,
            .dim = s->dim,
            .timeout_s = s->timeout_s,
            .max_retries = s->max_retries,
            .metadata_json = metadata,
            .idem_key = s->idem_key,
            .request_hash = s->idem_key ? s->request_hash : NULL,
        };
        rc = bd_job_submit(&deps, &spec, batches, api_on_submitted, s);
    }
    free(metadata);
    if (rc < 0) {
        bd_log(BD_LOG_WARN, "api", "event=submit_failed err=%s", bd_err_name(rc));
        api_submit_error(s, rc, NULL, NULL);
    }
}

/* An earlier submit with the same Idempotency-Key: same body -> the same job (200),
 * another body -> 409. */
static void api_on_existing(int status, const struct bd_job_store_idem_row *row, void *arg)
{
    struct bd__api_submit *s = arg;

    if (status < 0) {
        api_submit_error(s, status, NULL, NULL);
        return;
    }
    if (!row->is_found) {
        if (s->is_after_race)           /* the winner is gone again: do not loop */
            api_submit_error(s, BD_ECONFLICT, "Idempotency-Key is being used by another "
                             "request; retry", "Idempotency-Key");
        else
            api_submit_step_create(s);
        return;
    }
    if (strcmp(row->request_hash, s->request_hash) != 0) {
        api_submit_error(s, BD_ECONFLICT,
                         "Idempotency-Key was already used with a different request body",
                         "Idempotency-Key");
        return;
    }
    json_t *j = bd__api_status_json(row->job);
    if (j == NULL) {
        api_submit_error(s, BD_ENOMEM, NULL, NULL);
        return;
    }
    json_object_set_new(j, "idempotent_replay", json_true());
    char loc[256];
    snprintf(loc, sizeof(loc), "Location: " BD_API_PREFIX "/jobs/%s\r\n", row->job_id);
    bd__api_respond_json(s->req, API_STATUS_OK, j, loc);
    bd__api_submit_free(s);
}

static void api_submit_step_existing(struct bd__api_submit *s)
{
    int rc = bd_job_store_find_idempotent(s->srv->pg, s->idem_key, api_on_existing, s);
    if (rc < 0)
        api_submit_error(s, rc == BD_ENOMEM ? BD_ENOMEM : BD_EPG, NULL, NULL);
}

/* A collection that exists fixes the dimension of what goes into it. */
static void api_on_collection(int status, const struct bd_job_store_collection_row *row,
                              void *arg)
{
    struct bd__api_submit *s = arg;

    if (status < 0) {
        api_submit_error(s, status, NULL, NULL);
        return;
    }
    if (row->is_found)
        bd__api_collection_put(s->srv, s->collection, row->dimension);
    if (row->is_found && row->dimension != s->dim) {
        char msg[200];
        snprintf(msg, sizeof(msg), "collection '%s' holds %u-dimensional vectors; this "
                 "job's are %u-dimensional", s->collection, row->dimension, s->dim);
        api_submit_error(s, BD_EINVAL, msg,
                         s->op == BD_OP_BULK_INSERT ? "data[0].embedding" : "collection");
        return;
    }
    if (s->idem_key)
        api_submit_step_existing(s);
    else
        api_submit_step_create(s);
}

void bd__api_invalid_text(const struct bd__api_invalid *inv, const char *prefix, char *out,
                          size_t outlen)
{
    snprintf(out, outlen, "%s%s %s", prefix, inv->field, inv->message);
}

/* The job's metadata: the request's, plus who submitted it and how. */
int bd__api_submit_metadata(struct bd__api_submit *s)
{
    json_t *meta = json_object_get(s->body, "metadata");
    s->metadata = json_is_object(meta) ? json_deep_copy(meta) : json_object();
    if (s->metadata == NULL)
        return BD_ENOMEM;
    if (json_object_get(s->metadata, "submitted_by") == NULL) {
        const char *by = bd_http_header_get(s->req, "X-Submitted-By");
        if (by && !bd_utf8_is_valid(by, strlen(by)))
            by = NULL;
        json_object_set_new(s->metadata, "submitted_by", json_string(by ? by : "api"));
    }
    if (json_object_get(s->metadata, "integration_pattern") == NULL)
        json_object_set_new(s->metadata, "integration_pattern", json_string("bulk_only"));
    return BD_OK;
}

/* Auth, shutdown and readiness of a submit; false when req was answered. */
static bool api_submit_precheck(struct bd_http_request *req, struct bd_server *srv)
{
    if (!bd__api_check_auth(req, srv))
        return false;
    if (srv->is_stopping) {
        bd_http_respond_err(req, BD_ESHUTDOWN, NULL, NULL);
        return false;
    }
    if (!bd_job_engine_is_ready(srv->jobs)) {
        bd_http_respond_error_ex(req, bd_err_http_status(BD_ENOTREADY), "Retry-After: 1\r\n",
                                 bd_err_api_code(BD_ENOTREADY), bd_strerror(BD_ENOTREADY),
                                 NULL);
        return false;
    }
    return true;
}

bool bd__api_submit_headers_ok(struct bd_http_request *req, struct bd_server *srv,
                               bool *is_ndjson, const char **key)
{
    const char *ct = bd_http_header_get(req, "Content-Type");

    if (!api_submit_precheck(req, srv))
        return false;
    *is_ndjson = ct && (strncasecmp(ct, "application/x-ndjson", 20) == 0 ||
                        strncasecmp(ct, "application/jsonl", 17) == 0);
    if (!*is_ndjson && (ct == NULL || strncasecmp(ct, "application/json", 16) != 0)) {
        bd_http_respond_err(req, BD_EMEDIATYPE, "Content-Type must be application/json, "
                            "application/x-ndjson or application/jsonl", NULL);
        return false;
    }
    *key = bd_http_header_get(req, "Idempotency-Key");
    if (*key && (strlen(*key) == 0 || strlen(*key) > 255 ||
                 !bd_utf8_is_valid(*key, strlen(*key)))) {
        bd_http_respond_err(req, BD_EINVAL, "Idempotency-Key must be 1 to 255 characters",
                            "Idempotency-Key");
        return false;
    }
    return true;
}

/* The route's handler at message-complete: reached only if the headers hook left a body
 * buffered, which it does for no Content-Type it accepts; answered as a whole JSON body. */
void bd__api_submit_on_request(struct bd_http_request *req, void *arg)
{
    struct bd_server *srv = arg;
    const char *key;
    bool is_ndjson;

    if (bd__api_submit_headers_ok(req, srv, &is_ndjson, &key))
        bd__api_submit_body(req, srv, key, req->body, req->body_len);
}

void bd__api_submit_body(struct bd_http_request *req, struct bd_server *srv, const char *key,
                         const char *body, size_t body_len)
{
    struct bd__api_invalid inv = { { 0 }, { 0 } };
    struct bd__api_submit *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        bd_http_respond_err(req, BD_ENOMEM, NULL, NULL);
        return;
    }
    s->req = req;
    s->srv = srv;
    s->idem_key = key;
    int rc = bd__api_submit_parse(s, body, body_len, &inv);
    if (rc == BD_EINVAL || rc == BD_EJSON) {
        char msg[BD__API_INVALID_TEXT_MAX];
        if (rc == BD_EINVAL)
            bd__api_invalid_text(&inv, "", msg, sizeof(msg));
        else
            snprintf(msg, sizeof(msg), "%s", inv.message);
        api_submit_error(s, rc, msg, inv.field);
        return;
    }
    if (rc == BD_OK)
        rc = bd__api_submit_metadata(s);
    if (rc < 0) {
        api_submit_error(s, rc, NULL, NULL);
        return;
    }
    /* Only an Idempotency-Key needs the body's hash (to tell a replay from a conflict);
     * hashing a big body costs more than parsing it. */
    if (key && (rc = bd_sha256_hex(body, body_len, s->request_hash)) < 0) {
        api_submit_error(s, rc, NULL, NULL);   /* without the hash a replay is not safe */
        return;
    }
    unsigned dim;
    if (bd__api_collection_get(srv, s->collection, &dim)) {
        struct bd_job_store_collection_row row = { true, dim };
        api_on_collection(BD_OK, &row, s);
        return;
    }
    rc = bd_job_store_get_collection(srv->pg, s->collection, api_on_collection, s);
    if (rc < 0)
        api_submit_error(s, rc == BD_ENOMEM ? BD_ENOMEM : BD_EPG, NULL, NULL);
}
