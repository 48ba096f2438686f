/* api.h -- the REST API: JSON in and out, one place that maps errors to HTTP.
 *
 * api_admin.c: /healthz, /readyz, Prometheus /metrics.
 * api_metrics.c: queue status and JSON metrics under /api/v1/batch.
 * api_jobs.c:  submit, cancel and retry under /api/v1/batch/jobs.
 * api_jobs_read.c: the read side: status, lists, items, results, events, /debug/job.
 * Handlers reach jobs only through job_engine.h, and stores through their headers.
 */
#ifndef BATCHD_API_H
#define BATCHD_API_H

#include <jansson.h>

struct bd_router;
struct bd_server;
struct bd_http_request;

#define BD_API_PREFIX "/api/v1/batch"

/* Register every route on r; handlers get srv as their argument. BD_OK or an error. */
int bd_api_register(struct bd_router *r, struct bd_server *srv);

/* Register the admin routes (api_admin.c) / job routes (api_jobs.c). */
int bd__api_register_admin(struct bd_router *r, struct bd_server *srv);
int bd__api_register_jobs(struct bd_router *r, struct bd_server *srv);
/* Register POST /api/v1/batch/jobs (api_submit.c). */
int bd__api_register_submit(struct bd_router *r, struct bd_server *srv);

/* Register the read-only job routes (api_jobs_read.c): GET /jobs, /jobs/{id}, /jobs/{id}/status,
 * /jobs/{id}/items, /jobs/{id}/results, /jobs/{id}/events and /debug/job/{id}. */
int bd__api_register_jobs_read(struct bd_router *r, struct bd_server *srv);

/* Register GET /api/v1/batch/queue/status and GET /api/v1/batch/metrics (api_metrics.c). */
int bd__api_register_metrics(struct bd_router *r, struct bd_server *srv);

/* 1 when id is a valid job id (^[A-Za-z0-9_-]{1,128}$), else 0. */
#define BD__API_JOB_ID_MAX 128
int bd__api_is_job_id_valid(const char *id);

/* The canonical select list for one jobs row, as bd__api_job_status_json reads it: put it
 * FIRST in the select list ("SELECT " BD__API_JOB_COLUMNS ", more FROM jobs WHERE id = $1",
 * or "UPDATE jobs SET ... RETURNING " BD__API_JOB_COLUMNS); the builder reads columns
 * 0..BD__API_JOB_NCOLUMNS-1 by position. Column names are unqualified, so use it only where
 * they resolve to jobs. Timestamps come back as epoch milliseconds; the last column is the
 * database's now() so that durations never mix two clocks. */
#define BD__API_JOB_COLUMNS                                                                 \
    "id, status, operation, model, collection, total_items, processed_items, failed_items, " \
    "next_batch, total_batches, stored_vectors, cache_hits, processing_ms, error_code, "    \
    "error_message, cancel_requested, seq, "                                                \
    "(extract(epoch FROM created_at) * 1000)::int8, "                                       \
    "(extract(epoch FROM started_at) * 1000)::int8, "                                       \
    "(extract(epoch FROM completed_at) * 1000)::int8, "                                     \
    "(extract(epoch FROM now()) * 1000)::int8"
#define BD__API_JOB_NCOLUMNS 21

/* The status object of GET /jobs/{id}/status built from row `row` of res, which must hold
 * BD__API_JOB_COLUMNS first (text format). res is borrowed. Returns a new reference (caller
 * json_decref()s), or NULL on ENOMEM. Allocates. */
struct pg_result;
json_t *bd__api_job_status_json(const struct pg_result *res, int row);

/* Free what the API keeps between requests (the status cache). Call once no request is
 * in progress (after the HTTP server closed). */
void bd_api_free(struct bd_server *srv);

/* Forget the cached status of job_id (it just changed through this process). */
void bd__api_status_cache_drop(struct bd_server *srv, const char *job_id);

/* Answer req with json (steals the reference) and status. */
void bd__api_respond_json(struct bd_http_request *req, int status, json_t *json,
                          const char *extra_headers);

/* Reject requests without a valid API key when keys are configured (401 answered here).
 * Returns 1 when the request may proceed. */
int bd__api_check_auth(struct bd_http_request *req, struct bd_server *srv);

#endif
