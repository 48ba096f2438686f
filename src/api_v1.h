/* api_v1.h -- what the OpenAI-compatible handlers under /v1 share (api_v1.c), private to the
 * API module: the request id every /v1 answer carries, OpenAI's error shape, JSON answers
 * with those headers, and the admission of a /v1 request from its headers.
 *
 * Every function here that answers a request finishes it (the caller must not touch req
 * again) and takes the HTTP status from the error map (error.h). Loop thread only.
 */
#ifndef BATCHD_API_V1_H
#define BATCHD_API_V1_H

#include <jansson.h>
#include <stdbool.h>

struct bd_http_request;
struct bd_server;

#define BD__V1_PREFIX "/v1"

/* "req_" and 32 hex digits. */
#define BD__V1_REQUEST_ID_LEN 36

/* A new request id into out[BD__V1_REQUEST_ID_LEN + 1]. Never fails (a clock-and-counter
 * id when the system's random source does not answer). */
void bd__v1_request_id(char *out);

/* True when path is /v1 or under it. */
bool bd__v1_is_path(const char *path);

/* The headers every /v1 answer of status carries, into out (size at least 160):
 * "x-request-id: <id>\r\n", plus "x-should-retry: false\r\n" for a 4xx other than 408, 409
 * and 429 (the OpenAI SDKs retry 408, 409, 429 and 5xx unless told not to). */
void bd__v1_headers(const char *request_id, int status, char *out, size_t outlen);

/* Answer {"error":{"message","type","param","code"}} with err's status from the error map.
 * message NULL: bd_strerror(err); param and code may be NULL (JSON null). type is
 * invalid_request_error for a 4xx, server_error otherwise. extra (NULL or header lines) is
 * added (Retry-After, WWW-Authenticate). request_id NULL: a new one. */
void bd__v1_respond_error(struct bd_http_request *req, const char *request_id, int err,
                          const char *message, const char *param, const char *code,
                          const char *extra);

/* Answer json (stolen; NULL answers ENOMEM) with status and the /v1 headers. */
void bd__v1_respond_json(struct bd_http_request *req, const char *request_id, int status,
                         json_t *json);

/* Answer a page in OpenAI's list shape, {"object": "list", "data", "first_id", "last_id",
 * "has_more"}, 200: data (stolen; NULL answers ENOMEM) holds the page's objects, first_id
 * and last_id their ids (NULL for an empty page; borrowed). */
void bd__v1_respond_list(struct bd_http_request *req, json_t *data, const char *first_id,
                         const char *last_id, bool has_more);

/* limit= in [1, max], or def when absent, into *out. False after answering 400 (param
 * limit). */
bool bd__v1_get_limit(struct bd_http_request *req, unsigned def, unsigned max, unsigned *out);

/* From the server's on_headers, for a /v1 request: with API keys configured, one must come
 * as "Authorization: Bearer <key>" (or X-API-Key) -- else 401 in OpenAI's shape; and a POST
 * a browser could send cross-site without a preflight (no key header, a form or no
 * Content-Type) is refused 415. Returns true when the request may go on (not answered). */
bool bd__v1_admit(struct bd_http_request *req, struct bd_server *srv);

#endif
