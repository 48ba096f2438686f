/* http.h -- batchctl's HTTP: one libcurl easy handle, reused for every request of a run
 * (blocking, which is right in a command-line client), the API's URLs, and the mapping of
 * an answer to a message and an exit code.
 *
 * URLs are built with libcurl's URL API (the one URL parser): the base from --url, then
 * /api/v1/batch and the path, then query parameters, each percent-encoded.
 * SPDX-License-Identifier: MIT
 */
#ifndef BATCHCTL_HTTP_H
#define BATCHCTL_HTTP_H

#include "args.h"
#include "batchd/buf.h"

#include <curl/curl.h>
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

struct bctl_http {
    CURL *easy;
    const struct bctl_args *args;     /* borrowed for the handle's life */
    struct curl_slist *auth;          /* "X-API-Key: ..." or NULL */
    char errbuf[CURL_ERROR_SIZE];
};

/* Receives n bytes of a 2xx answer's body as they arrive (borrowed for the call). Return 0
 * to go on, anything else to stop the transfer: bctl_http_perform then returns with
 * resp->stopped set to that value. */
typedef int (*bctl_http_data_cb)(const char *data, size_t n, void *arg);

/* A request. Zero it, then fill what applies. */
struct bctl_xfer {
    const char *method;               /* "GET", "POST", "DELETE" */
    const char *url;                  /* from bctl_http_url */
    const char *content_type;         /* NULL: none (a POST without body gets JSON's) */
    const char *const *headers;       /* NULL or NULL-terminated "Name: value" */
    /* Upload: read is curl's read callback on read_arg; upload_size -1 sends chunked. */
    curl_read_callback read;
    void *read_arg;
    long long upload_size;
    /* Streams (uploads, SSE, NDJSON): no overall limit; idle_s without a byte is an error. */
    bool is_stream;
    double idle_s;                    /* 0: args->timeout_s */
    bctl_http_data_cb on_data;        /* NULL: the body is gathered into resp->body */
    void *data_arg;
    curl_xferinfo_callback progress;  /* NULL: none */
    void *progress_arg;
};

struct bctl_http_resp {
    long status;                      /* 0: no answer */
    struct bd_buf body;               /* the body, unless on_data took a 2xx body */
    int curl_code;                    /* CURLE_OK or why the transfer ended early */
    int stopped;                      /* on_data's non-zero answer */
    char retry_after[16];             /* the Retry-After header, "" when absent */
};

/* Create h for a (borrowed until bctl_http_close). 0, or -1 when libcurl cannot start. */
int bctl_http_init(struct bctl_http *h, const struct bctl_args *a);
void bctl_http_close(struct bctl_http *h);

/* The URL of path (under /api/v1/batch; starts with '/') with query parameters: query is
 * NULL or a NULL-terminated list of name, value pairs, where a NULL value skips its pair.
 * Caller frees with curl_free(); NULL when out of memory or --url is not a URL. */
char *bctl_http_url(const struct bctl_http *h, const char *path, const char *const *query);

/* Run x. Returns 0 when an answer arrived (any status; resp->status set), or -1 when none
 * did (resp->curl_code says why). A transfer that on_data stopped, or that broke after the
 * status arrived, returns 0 with curl_code set. resp is zeroed first; the caller frees it
 * with bctl_http_resp_free() in every case. */
int bctl_http_perform(struct bctl_http *h, const struct bctl_xfer *x, struct bctl_http_resp *resp);

void bctl_http_resp_free(struct bctl_http_resp *r);

/* The exit code of an HTTP status that is not a success (401/403 AUTH, 404 NOT_FOUND, other
 * 4xx REFUSED, else SERVER). */
int bctl_http_status_exit(long status);

/* Report a request that failed (what: "status batch_x_1"): a transport error (exit
 * BCTL_EXIT_CONNECT) or the server's error answer, as
 * "batchctl: <what>: <status> <code>: <message>" on stderr (always, even with --quiet:
 * errors are not chatter). With --json the server's JSON body also goes to stdout. Returns
 * the exit code. */
int bctl_http_fail(const struct bctl_http *h, const char *what, int rc,
                   const struct bctl_http_resp *r);

/* A GET or body-less POST/DELETE answered with JSON: runs it and parses the body. Returns
 * the parsed 2xx body (caller decrefs) with *exit_code 0, or NULL with *exit_code set and
 * the failure reported (bctl_http_fail). The raw body stays in resp for --json printing. */
json_t *bctl_http_json(struct bctl_http *h, const char *method, const char *url,
                       const char *what, struct bctl_http_resp *resp, int *exit_code);

#endif
