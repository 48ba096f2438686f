/* api_internal.h -- helpers shared by the API's source files (api_common.c), private to the
 * API module: answering, auth, {id} and paging parameters, times as JSON.
 *
 * Every function here that answers a request finishes it (the caller must not touch req
 * again) and takes its HTTP status and error code from the error map (error.h). Loop
 * thread only.
 */
#ifndef BATCHD_API_INTERNAL_H
#define BATCHD_API_INTERNAL_H

#include "batchd/api.h"
#include "batchd/log.h"
#include "batchd/job_engine.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

struct bd_http_request;

/* Reals such as 66.7 print as "66.7", not jansson's default 17-digit "66.700000000000003". */
#define BD__API_JSON_FLAGS (JSON_COMPACT | JSON_REAL_PRECISION(15))

/* Largest limit= on every paged endpoint. */
#define BD__API_PAGE_MAX 1000

/* o[key] = v, stealing v even on failure (jansson does); a failure is remembered in *failed.
 * A NULL o or v counts as a failure, so builders can chain calls and check once. */
void bd__api_set(json_t *o, const char *key, json_t *v, bool *failed);

/* Collections' dimensions (api_submit.c). A configured model's default collection
 * ("<model>_embeddings") has the model's dimension, whoever writes to it first, so a job
 * cannot squat it with another; other collections are as PostgreSQL gave them. A
 * collection's dimension never changes and batchd never drops one, so once seen it is kept
 * and a submit into it skips the lookup. get: true with *dim when known. put: remembers one
 * (at most 4096; out of memory just means not remembered). free: from bd_api_free. */
bool bd__api_collection_get(const struct bd_server *srv, const char *name, unsigned *dim);
void bd__api_collection_put(struct bd_server *srv, const char *name, unsigned dim);
void bd__api_collections_free(struct bd_server *srv);

/* True for the states a job ends in (completed, failed, cancelled). */
bool bd__api_is_terminal(enum bd_job_state s);

/* x rounded to one decimal, as every real in the API is. */
double bd__api_round1(double x);

/* bd_time_rfc3339 (log.h) as a JSON string; JSON null when the time cannot be shown, NULL on ENOMEM. */
json_t *bd__api_time_json(long long unix_ms);

/* A job-store read failed with err (see job_store.h): BD_ENOTFOUND answers "no such job";
 * anything else is logged here, once, with pg_message (may be NULL) and answered with the
 * map's status: BD_EINTERNAL / BD_ENOMEM as themselves, every other error as BD_EPG. */
void bd__api_fail_store(struct bd_http_request *req, const char *job_id, int err,
                        const char *pg_message);

/* The {id} route parameter, or NULL after answering EINVAL. Borrowed from req. */
const char *bd__api_job_id(struct bd_http_request *req);

/* limit= in [1, BD__API_PAGE_MAX], or def when absent. False after answering EINVAL. */
bool bd__api_get_limit(struct bd_http_request *req, unsigned def, unsigned *out);

/* Cursors are opaque to clients: tag + decimal ("s1234": jobs with seq below 1234; "i50":
 * items with index 50 or more). cursor= absent or empty gives *has = false. False after
 * answering EINVAL. */
bool bd__api_get_cursor(struct bd_http_request *req, char tag, long long max, bool *has,
                        long long *out);

/* The queue's pause state as the API shows it: {"paused", "paused_at", "paused_models"}
 * (api_queue.c). A new reference, NULL on ENOMEM. */
struct bd_job_pause_state;
json_t *bd__api_pause_json(const struct bd_job_pause_state *st);

/* Register POST /queue/pause, /queue/resume and /jobs/retry-failed (api_queue.c; called
 * from bd__api_register_metrics, next to the queue's other routes). */
struct bd_router;
int bd__api_register_queue(struct bd_router *r, struct bd_server *srv);

/* The cursor tag + v as a JSON string (NULL on ENOMEM). */
json_t *bd__api_cursor_json(char tag, long long v);

#endif
