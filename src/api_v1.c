/* api_v1.c -- what the OpenAI-compatible handlers under /v1 share: the request id, OpenAI's
 * error shape {"error":{"message","type","param","code"}}, the x-request-id and
 * x-should-retry headers, and the admission of a /v1 request from its headers (the API key
 * as a Bearer token, no cross-site form POST).
 *
 * Owns nothing beyond a call: no state. Loop thread only. Statuses come from the error map
 * (error.h), never as literals.  SPDX-License-Identifier: MIT
 */
#include "api_v1.h"
#include "api_internal.h"

#include "batchd/config.h"
#include "batchd/error.h"
#include "batchd/http_server.h"
#include "batchd/random_id.h"
#include "batchd/server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

void bd__v1_request_id(char *out)
{
    /* unique within this process is enough for an id that ties an answer to a log line */
    memcpy(out, "req_", 4);
    bd_random_hex_or_clock(out + 4, (BD__V1_REQUEST_ID_LEN - 4) / 2);
}

bool bd__v1_is_path(const char *path)
{
    size_t n = sizeof(BD__V1_PREFIX) - 1;
    return strncmp(path, BD__V1_PREFIX, n) == 0 && (path[n] == '/' || path[n] == '\0');
}

void bd__v1_headers(const char *request_id, int status, char *out, size_t outlen)
{
    bool is_final = status >= 400 && status < 500 && status != 408 && status != 409 &&
                    status != 429;
    snprintf(out, outlen, "x-request-id: %s\r\n%s", request_id,
             is_final ? "x-should-retry: false\r\n" : "");
}

void bd__v1_respond_error(struct bd_http_request *req, const char *request_id, int err,
                          const char *message, const char *param, const char *code,
                          const char *extra)
{
    int status = bd_err_http_status(err);
    char rid[BD__V1_REQUEST_ID_LEN + 1], headers[512];
    json_t *e, *body;

    if (status == 0)                           /* an internal-only code reached an answer */
        status = bd_err_http_status(BD_EINTERNAL);
    if (request_id == NULL) {
        bd__v1_request_id(rid);
        request_id = rid;
    }
    bd__v1_headers(request_id, status, headers, sizeof(headers));
    if (extra)
        snprintf(headers + strlen(headers), sizeof(headers) - strlen(headers), "%s", extra);
    e = json_pack("{s:s, s:s, s:s?, s:s?}", "message", message ? message : bd_strerror(err),
                  "type", status < 500 ? "invalid_request_error" : "server_error",
                  "param", param, "code", code);
    body = e ? json_pack("{s:o}", "error", e) : NULL;
    bd__api_respond_json(req, status, body, headers);
}

void bd__v1_respond_json(struct bd_http_request *req, const char *request_id, int status,
                         json_t *json)
{
    char rid[BD__V1_REQUEST_ID_LEN + 1], headers[160];

    if (request_id == NULL) {
        bd__v1_request_id(rid);
        request_id = rid;
    }
    bd__v1_headers(request_id, status, headers, sizeof(headers));
    bd__api_respond_json(req, status, json, headers);
}

void bd__v1_respond_list(struct bd_http_request *req, json_t *data, const char *first_id,
                         const char *last_id, bool has_more)
{
    bool failed = data == NULL;
    json_t *page = json_object();

    bd__api_set(page, "object", json_string("list"), &failed);
    bd__api_set(page, "data", data, &failed);
    bd__api_set(page, "first_id", first_id ? json_string(first_id) : json_null(), &failed);
    bd__api_set(page, "last_id", last_id ? json_string(last_id) : json_null(), &failed);
    bd__api_set(page, "has_more", json_boolean(has_more), &failed);
    if (failed) {
        json_decref(page);
        page = NULL;
    }
    bd__v1_respond_json(req, NULL, 200, page);
}

bool bd__v1_get_limit(struct bd_http_request *req, unsigned def, unsigned max, unsigned *out)
{
    const char *limit = bd_http_query_get(req, "limit");
    char *end, msg[80];
    unsigned long v;

    *out = def;
    if (limit == NULL)
        return true;
    v = strtoul(limit, &end, 10);
    if (*limit < '0' || *limit > '9' || *end != '\0' || v < 1 || v > max) {
        snprintf(msg, sizeof(msg), "limit must be an integer from 1 to %u", max);
        bd__v1_respond_error(req, NULL, BD_EINVAL, msg, "limit", NULL, NULL);
        return false;
    }
    *out = (unsigned)v;
    return true;
}

bool bd__v1_admit(struct bd_http_request *req, struct bd_server *srv)
{
    if (!bd__api_is_key_valid(req, srv)) {
        bool has_key = bd_http_header_get(req, "Authorization") != NULL ||
                       bd_http_header_get(req, "X-API-Key") != NULL;
        bd__v1_respond_error(req, NULL, BD_EUNAUTH,
                             has_key ? "Incorrect API key provided."
                                     : "You didn't provide an API key. Send it as "
                                       "'Authorization: Bearer <key>'.",
                             NULL, "invalid_api_key", "WWW-Authenticate: Bearer\r\n");
        return false;
    }
    if (bd__api_is_simple_post(req)) {
        bd__v1_respond_error(req, NULL, BD_EMEDIATYPE,
                             "a POST under /v1 needs an Authorization (or X-API-Key) header: "
                             "a form on another site cannot send one", NULL, NULL, NULL);
        return false;
    }
    return true;
}
