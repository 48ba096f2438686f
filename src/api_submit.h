/* api_submit.h -- private to api_submit.c and api_submit_parse.c: one submit request's
 * state, and the parser's interface. Loop thread only.
 */
#ifndef BATCHD_API_SUBMIT_PRIVATE_H
#define BATCHD_API_SUBMIT_PRIVATE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "batchd/buf.h"
#include "batchd/job_engine.h"
#include "batchd/job_submit.h"
#include "batchd/pg_store.h"

struct bd_http_request;
struct bd_server;

/* Why a request was refused: the field (data[3].id) and what is wrong with it. */
struct bd__api_invalid {
    char field[96];
    char message[256];
};

/* The one text of a validation error: "<prefix><field> <message>" (prefix: "" or, for
 * JSON Lines, "line N: "), into out (always NUL-terminated). */
void bd__api_invalid_text(const struct bd__api_invalid *inv, const char *prefix, char *out,
                          size_t outlen);
#define BD__API_INVALID_TEXT_MAX (sizeof(((struct bd__api_invalid *)0)->field) +             \
                                  sizeof(((struct bd__api_invalid *)0)->message) + 64)

/* One POST /jobs from the handler to its answer (calloc'ed by the handler). */
struct bd__api_submit {
    struct bd_http_request *req;
    struct bd_server *srv;
    json_t *body;                     /* the parsed request (owns the items) */
    json_t *data;                     /* borrowed from body (the jansson path) */
    const char *data_raw;             /* fast path: the "data" array in the request body */
    const char *body_end;
    struct bd_buf *packed;     /* bulk_insert: batches, packed per batch (job_batch.h) */
    json_t *kept;                     /* fast path: items parsed by jansson (ids live here) */
    enum bd_job_operation op;
    const char *model;                /* borrowed from body; NULL when none */
    char collection[64];
    int priority;
    unsigned batch_size;
    double timeout_s;
    int max_retries;
    unsigned items;
    unsigned batches;
    unsigned dim;
    const char *idem_key;             /* header, arena */
    char request_hash[65];
    bool is_after_race;               /* the key's job was created by a concurrent submit */
    json_t *metadata;                 /* {submitted_by, integration_pattern, ...} (owned) */
};

/* Parse body[0..len) (the fast bulk_insert path, or jansson) and validate every field of
 * the job into s (s->srv and s->req set). Returns BD_OK; BD_EINVAL with inv filled (field
 * and the reason, "is not valid UTF-8" for text PostgreSQL would refuse); BD_EJSON when the
 * body is not JSON (inv->message is the whole message, inv->field "body"); or BD_ENOMEM.
 * Allocates (the body's tree, the packed batches), freed by bd__api_submit_parse_free. */
int bd__api_submit_parse(struct bd__api_submit *s, const char *body, size_t len,
                         struct bd__api_invalid *inv);

/* The job's batches in their stored form for bd_job_submit (which takes them), or NULL on
 * ENOMEM. Moves the packed bulk_insert batches out of s. */
struct bd_job_payload *bd__api_submit_payloads(struct bd__api_submit *s);

/* ---- the handler's parts that a streamed submit shares (api_submit.c) ------------------ */
/* s->metadata from the request's (s->body's) metadata plus submitted_by (X-Submitted-By)
 * and integration_pattern. BD_OK or BD_ENOMEM. */
int bd__api_submit_metadata(struct bd__api_submit *s);
/* Answer s's request with the outcome of its creation (202 with the job, 429 with
 * Retry-After, or the error's status) and free s. */
void bd__api_submit_answer(struct bd__api_submit *s, int status,
                           const struct bd_job_submitted *res);
/* A submit's headers: auth, shutdown and readiness, then Content-Type (JSON, or JSON Lines:
 * *is_ndjson) and Idempotency-Key (*key, NULL when none; borrowed from req). false when
 * req was answered (401, 503, 415, 400). */
bool bd__api_submit_headers_ok(struct bd_http_request *req, struct bd_server *srv,
                               bool *is_ndjson, const char **key);
/* The buffered submit: a JSON body, whole (body is read only during the call), its headers
 * checked (key: bd__api_submit_headers_ok's). Answers req. */
void bd__api_submit_body(struct bd_http_request *req, struct bd_server *srv, const char *key,
                         const char *body, size_t body_len);
/* The route's handler at message-complete. */
void bd__api_submit_on_request(struct bd_http_request *req, void *arg);
/* Free s and what it holds (the request is not answered here). */
void bd__api_submit_free(struct bd__api_submit *s);

/* ---- a streamed job (api_submit_stream.c) ----------------------------------------------
 * The job's fields come as a JSON object without "data" (built from the query string of a
 * JSON Lines submit); items come one at a time and are gathered into batches. */
int bd__api_submit_fields(struct bd__api_submit *s, json_t *fields,
                          struct bd__api_invalid *inv);
struct bd__api_batch;
/* An empty batch (allocates; bounded by one batch), or NULL on ENOMEM. */
struct bd__api_batch *bd__api_batch_new(const struct bd__api_submit *s);
void bd__api_batch_free(struct bd__api_batch *b);
unsigned bd__api_batch_count(const struct bd__api_batch *b);
/* Validate one item (JSON text[0..len), item number index of the job) and add it: BD_OK,
 * BD_EINVAL (inv names data[index] and the field), BD_ENOMEM. s->dim is set by the first
 * bulk_insert item and checked on the others. */
int bd__api_batch_add(struct bd__api_submit *s, struct bd__api_batch *b, const char *text,
                      size_t len, size_t index, struct bd__api_invalid *inv);
/* The batch's stored form (the caller owns out->data); b is empty again after. */
int bd__api_batch_take(struct bd__api_submit *s, struct bd__api_batch *b,
                       struct bd_job_payload *out);

/* Free what bd__api_submit_parse allocated (not s itself). */
void bd__api_submit_parse_free(struct bd__api_submit *s);

#endif
