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

/* One POST /jobs from the handler to its answer (calloc'ed by the handler). */
struct bd__api_submit {
    struct bd_http_request *req;
    struct bd_server *srv;
    json_t *body;                     /* the parsed request (owns the items) */
    size_t body_len;
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

/* Free what bd__api_submit_parse allocated (not s itself). */
void bd__api_submit_parse_free(struct bd__api_submit *s);

#endif
