/* api.h -- the REST API: JSON in and out, one place that maps errors to HTTP.
 *
 * api_admin.c: /healthz, /readyz, Prometheus /metrics, the route registry.
 * api_metrics.c: queue status and JSON metrics under /api/v1/batch.
 * api_jobs.c:  submit, cancel and retry under /api/v1/batch/jobs.
 * api_status.c: GET /jobs, /jobs/{id}, /jobs/{id}/status (+ the status micro-cache).
 * api_results.c: GET /jobs/{id}/items and /jobs/{id}/results (paged JSON, JSON Lines).
 * api_events.c: GET /jobs/{id}/events (Server-Sent Events) and /debug/job/{id}.
 * api_common.c: helpers the handlers share (declared here and in src/api_internal.h).
 * api_files.c: the OpenAI-compatible files under /v1/files (api_v1.c: what /v1 shares).
 * Handlers reach jobs only through job_engine.h and job_store.h, Redis through
 * redis_queue.h; no SQL text and no literal HTTP error status in any of them.
 */
#ifndef BATCHD_API_H
#define BATCHD_API_H

#include <jansson.h>
#include <stdbool.h>

struct bd_router;
struct bd_server;
struct bd_http_request;

#define BD_API_PREFIX "/api/v1/batch"

/* Register every route on r; handlers get srv as their argument. BD_OK or an error. */
int bd_api_register(struct bd_router *r, struct bd_server *srv);

/* The HTTP server's on_headers hook (arg: srv): with API keys configured, a request under
 * BD_API_PREFIX without a valid key is answered 401 from its headers, before any byte of
 * its body is read; a POST under it that a browser could send cross-site without a
 * preflight (no Content-Type or a form type, no key header) is answered 415; a request
 * under /v1 gets the same two checks answered in OpenAI's error shape (api_v1.c); then
 * bd_router_dispatch_headers(req, srv->router). */
void bd_api_on_headers(struct bd_http_request *req, void *srv);

/* Register the admin routes (api_admin.c) / job routes (api_jobs.c). */
int bd__api_register_admin(struct bd_router *r, struct bd_server *srv);
int bd__api_register_jobs(struct bd_router *r, struct bd_server *srv);
/* Register POST /api/v1/batch/jobs (api_submit.c). */
int bd__api_register_submit(struct bd_router *r, struct bd_server *srv);

/* Register the read-only job routes: GET /jobs, /jobs/{id}, /jobs/{id}/status (api_status.c);
 * /jobs/{id}/items, /jobs/{id}/results (api_results.c); /jobs/{id}/events and
 * /debug/job/{id} (api_events.c). */
int bd__api_register_status(struct bd_router *r, struct bd_server *srv);
int bd__api_register_results(struct bd_router *r, struct bd_server *srv);
int bd__api_register_events(struct bd_router *r, struct bd_server *srv);

/* Register GET /api/v1/batch/queue/status and GET /api/v1/batch/metrics (api_metrics.c). */
int bd__api_register_metrics(struct bd_router *r, struct bd_server *srv);

/* Register the OpenAI-compatible files under /v1/files (api_files.c). */
int bd__api_register_files(struct bd_router *r, struct bd_server *srv);

/* Register the OpenAI-compatible batches under /v1/batches (api_batches.c). */
int bd__api_register_batches(struct bd_router *r, struct bd_server *srv);

/* Register the configured models under /v1/models (api_v1_models.c). */
int bd__api_register_models(struct bd_router *r, struct bd_server *srv);

/* 1 when id is a valid job id (^[A-Za-z0-9_-]{1,128}$), else 0. */
#define BD__API_JOB_ID_MAX 128
int bd__api_is_job_id_valid(const char *id);

/* The status object of GET /jobs/{id}/status (SPEC §2) built from a typed jobs row
 * (job_store.h; e.g. filled by bd_job_row_from_pg from a RETURNING BD_JOB_ROW_COLUMNS).
 * row is borrowed. Returns a new reference (caller json_decref()s), or NULL on ENOMEM. */
struct bd_job_row;
json_t *bd__api_status_json(const struct bd_job_row *row);

/* The whole job of GET /jobs/{id}: the status object plus the job's settings and latest
 * item errors. Same rules as bd__api_status_json. */
struct bd_job_detail;
json_t *bd__api_job_json(const struct bd_job_detail *job);

/* Free what the API keeps between requests (the status cache). Call once no request is
 * in progress (after the HTTP server closed). */
void bd_api_free(struct bd_server *srv);

/* Forget the cached status of job_id (it just changed through this process). */
void bd__api_status_cache_drop(struct bd_server *srv, const char *job_id);

/* Answer req with json (steals the reference) and status; a NULL json answers ENOMEM. */
void bd__api_respond_json(struct bd_http_request *req, int status, json_t *json,
                          const char *extra_headers);

/* Reject requests without a valid API key when keys are configured (EUNAUTH answered here).
 * Returns 1 when the request may proceed. */
int bd__api_check_auth(struct bd_http_request *req, struct bd_server *srv);

/* True when no keys are configured or req carries one (X-API-Key, or Authorization: Bearer),
 * compared in constant time. Answers nothing. */
bool bd__api_is_key_valid(const struct bd_http_request *req, const struct bd_server *srv);

/* True when req is a POST a web page on another site could make a browser send without a
 * preflight (no key header; no Content-Type, or a form or text/plain one). */
bool bd__api_is_simple_post(const struct bd_http_request *req);

#endif
