/* api_submit_stream.c -- POST /api/v1/batch/jobs as a stream: a JSON Lines body (one item
 * per line, the job's fields in the query string) or a JSON body over STREAM_HOLD_MAX (the
 * job's fields as members, the items in "data"), gzip or not, validated and written batch
 * by batch while it uploads. A smaller JSON body is gathered and handed to the buffered
 * submit (api_submit.c), which commits small jobs with less work. A JSON body's members
 * are api_submit_json.c's; the line of uploads waiting for a connection,
 * api_submit_uploads.c's; the record they share is in api_submit_stream.h.
 *
 * Owns each streamed request's record from its headers to its answer. Loop thread only.
 * Memory is bounded by the batches in flight and one line, never by the body: full batches
 * go to PostgreSQL (bd_job_stream_put), all that are ready in one COPY; while one COPY is
 * in flight the body is read on until STREAM_READY_MAX of batches wait, then paused. A gzip
 * body is inflated a slice per loop turn. One transaction from the first byte to the COMMIT:
 * a 202 is still durable and all or nothing; bad input mid-stream is answered 400 naming
 * the line, and the transaction rolls back (nothing stored); so does a client that leaves.
 * SPDX-License-Identifier: MIT
 */
#include "batchd/api.h"
#include "api_submit.h"
#include "api_internal.h"
#include "api_submit_stream.h"

#include "batchd/buf.h"
#include "batchd/config.h"
#include "batchd/error.h"
#include "batchd/http_server.h"
#include "batchd/inflate.h"
#include "batchd/job_batch.h"
#include "batchd/job_engine.h"
#include "batchd/job_store.h"
#include "batchd/job_submit.h"
#include "batchd/log.h"
#include "batchd/router.h"
#include "batchd/server.h"
#include "batchd/sha256.h"
#include "batchd/submit_scan.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <uv.h>

static void stream_pump(struct bd__api_stream *st);

static void stream_free_ready(struct bd__api_stream *st)
{
    while (st->ready) {
        struct stream_ready *r = st->ready;
        st->ready = r->next;
        free(r->payload.data);
        free(r);
    }
    st->ready_tail = &st->ready;
    st->ready_bytes = 0;
}

/* The record goes when the request is answered and no job operation can call back. */
static void stream_on_drain_closed(uv_handle_t *h)
{
    free(h->data);
}

void bd__stream_maybe_free(struct bd__api_stream *st)
{
    if (!st->is_answered || st->is_writing || st->is_in_body || st->is_freeing)
        return;
    st->is_freeing = true;
    if (st->job) {
        bd_job_stream_abort(st->job);       /* nothing in flight: rolls back at once */
        st->job = NULL;
    }
    if (st->is_waiting)
        bd__stream_unwait(st);
    if (st->is_counted) {
        st->srv->submit_streams--;
        bd__stream_release_slot(st->srv);          /* the next waiting upload goes on */
    }
    if (st->has_sha) {
        unsigned char unused[32];
        (void)bd_sha256_final(&st->sha, unused);   /* frees its context */
    }
    json_decref(st->replay);
    json_decref(st->late);
    if (st->final)
        bd__api_submit_free(st->final);
    stream_free_ready(st);
    bd__api_batch_free(st->batch);
    bd_submit_scan_free(st->scan);
    bd_inflate_free(st->gz);
    bd_buf_free(&st->gz_rest);
    bd_buf_free(&st->hold);
    if (st->s)
        bd__api_submit_free(st->s);
    if (st->has_drain)
        uv_close((uv_handle_t *)&st->drain, stream_on_drain_closed);   /* frees st */
    else
        free(st);
}

/* Answer with err (message may be NULL) and give the job up: nothing of it stays. */
void bd__stream_fail(struct bd__api_stream *st, int err, const char *message,
                     const char *field)
{
    if (!st->is_answered) {
        st->is_answered = true;
        /* st may go before req does: req must not call back into it any more. */
        bd_http_set_abort_cb(st->req, NULL, NULL);
        bd_http_respond_err(st->req, err, message, field);
    }
    if (st->job && st->is_writing) {
        bd_job_stream_abort(st->job);       /* its callback comes with BD_ECANCELED */
        st->job = NULL;
    }
    bd__stream_maybe_free(st);
}

int bd__stream_fail_invalid(struct bd__api_stream *st, int rc, const struct bd__api_invalid *inv,
                            const char *prefix)
{
    char msg[BD__API_INVALID_TEXT_MAX];

    if (rc != BD_EINVAL) {
        bd__stream_fail(st, rc, NULL, NULL);
        return rc;
    }
    bd__api_invalid_text(inv, prefix, msg, sizeof(msg));
    bd__stream_fail(st, BD_EINVAL, msg, inv->field);
    return rc;
}

static void stream_on_abort(struct bd_http_request *req, void *arg)
{
    struct bd__api_stream *st = arg;
    (void)req;
    bd_log(BD_LOG_INFO, "api", "event=submit_stream_abandoned lines=%zu", st->line_no);
    bd__stream_fail(st, BD_ECANCELED, "client went away", NULL);
}

/* ---- items into batches ----------------------------------------------------------------- */

static int stream_take_batch(struct bd__api_stream *st)
{
    struct stream_ready *r = calloc(1, sizeof(*r));
    unsigned n = bd__api_batch_count(st->batch);

    if (r == NULL)
        return BD_ENOMEM;
    if (bd__api_batch_take(st->s, st->batch, &r->payload) < 0) {
        free(r);
        return BD_ENOMEM;
    }
    r->items = n;
    *st->ready_tail = r;
    st->ready_tail = &r->next;
    st->ready_bytes += r->payload.len;
    return BD_OK;
}

/* One item, a line's JSON value (the scanner checked its syntax). BD_OK, or < 0 after
 * answering. */
int bd__stream_on_item(void *arg, size_t index, size_t line, const char *p, size_t n)
{
    struct bd__api_stream *st = arg;
    struct bd__api_invalid inv = { { 0 }, { 0 } };
    const struct bd_config *cfg = st->srv->cfg;
    char msg[400];
    int rc;

    st->line_no = line;
    if (st->is_answered)                       /* the fields were refused at "data" */
        return BD_ECANCELED;
    if (index >= cfg->max_items_per_job) {
        if (st->is_ndjson)
            snprintf(msg, sizeof(msg), "line %zu: the job has more than %u items (the limit "
                     "per job)", line, cfg->max_items_per_job);
        else
            snprintf(msg, sizeof(msg), "data has more than %u items (the limit per job)",
                     cfg->max_items_per_job);
        bd__stream_fail(st, BD_EINVAL, msg, "data");
        return BD_EINVAL;
    }
    rc = bd__api_batch_add(st->s, st->batch, p, n, index, &inv);
    if (rc < 0) {
        char prefix[40] = "";
        if (st->is_ndjson)
            snprintf(prefix, sizeof(prefix), "line %zu: ", line);
        return bd__stream_fail_invalid(st, rc, &inv, prefix);
    }
    st->items = index + 1;
    if (bd__api_batch_count(st->batch) >= st->s->batch_size &&
        (rc = stream_take_batch(st)) < 0) {
        bd__stream_fail(st, rc, NULL, NULL);
        return rc;
    }
    return BD_OK;
}

/* The scanner's verdict on the body's framing (a line that is not one JSON value, a line
 * over the limit): answered here unless an item's own error was answered already. */
int bd__stream_scan_failed(struct bd__api_stream *st, int rc)
{
    if (!st->is_answered)
        bd__stream_fail(st, rc == BD_ETOOLARGE ? BD_ETOOLARGE : rc == BD_ENOMEM ? BD_ENOMEM
                                                                              : BD_EINVAL,
                    bd_submit_scan_why(st->scan), "data");
    return rc;
}

/* Decoded body bytes: framed into members and items, or gathered (a JSON body's start). */
static int stream_on_plain(void *arg, const char *data, size_t len)
{
    struct bd__api_stream *st = arg;
    int rc;

    if (st->is_answered)
        return BD_ECANCELED;
    if (!st->is_scanning) {
        bd_buf_append(&st->hold, data, len);
        if (st->hold.is_failed)
            return BD_ENOMEM;
        if (st->hold.len <= STREAM_HOLD_MAX)
            return BD_OK;
        rc = bd__stream_start_scan(st);
    } else {
        rc = bd_submit_scan_feed(st->scan, data, len);
    }
    return rc < 0 ? bd__stream_scan_failed(st, rc) : BD_OK;
}

/* The body's hex SHA-256 (the Idempotency-Key's fingerprint); "" when it cannot be had. */
static void stream_hash_end(struct bd__api_stream *st, char out[65])
{
    unsigned char d[32];
    static const char hex[] = "0123456789abcdef";

    out[0] = '\0';
    if (!st->has_sha)
        return;
    st->has_sha = false;
    if (bd_sha256_final(&st->sha, d) != BD_OK)
        return;
    for (int i = 0; i < 32; i++) {
        out[2 * i] = hex[d[i] >> 4];
        out[2 * i + 1] = hex[d[i] & 15];
    }
    out[64] = '\0';
}

/* The key named an earlier job: the same body is that job again (200), another is 409. */
static void stream_answer_replay(struct bd__api_stream *st)
{
    char hash[65], loc[256];

    stream_hash_end(st, hash);
    if (hash[0] == '\0' || strcmp(hash, st->replay_hash) != 0) {
        bd__stream_fail(st, BD_ECONFLICT, "Idempotency-Key was already used with a different "
                    "request body", "Idempotency-Key");
        return;
    }
    json_t *j = st->replay;
    st->replay = NULL;
    json_object_set_new(j, "idempotent_replay", json_true());
    snprintf(loc, sizeof(loc), "Location: " BD_API_PREFIX "/jobs/%s\r\n",
             json_string_value(json_object_get(j, "job_id")));
    st->is_answered = true;
    bd_http_set_abort_cb(st->req, NULL, NULL);
    bd__api_respond_json(st->req, 200, j, loc);
    bd__stream_maybe_free(st);
}

/* ---- the body --------------------------------------------------------------------------- */

static void stream_body_end(struct bd__api_stream *st)
{
    int rc = bd_http_body_get_status(st->req);

    if (rc < 0) {
        bd__stream_fail(st, rc, NULL, NULL);
        return;
    }
    if (st->replay) {                          /* only the raw body's hash counts: the */
        stream_answer_replay(st);              /* inflater was not fed since the lookup */
        return;
    }
    if (st->gz && (rc = bd_inflate_end(st->gz)) < 0) {
        bd__stream_fail(st, BD_EINVAL, bd_inflate_why(st->gz), "body");
        return;
    }
    if (!st->is_scanning) {                    /* a small JSON body: the buffered submit */
        struct bd_http_request *req = st->req;
        struct bd_server *srv = st->srv;
        const char *key = st->idem_key;        /* req's header: outlives st */
        struct bd_buf body = st->hold;
        bd_buf_init(&st->hold);
        st->is_answered = true;                /* the buffered path answers from here on */
        bd_http_set_abort_cb(req, NULL, NULL);
        bd__stream_maybe_free(st);
        bd__api_submit_body(req, srv, key, body.data, body.len);
        bd_buf_free(&body);
        return;
    }
    if ((rc = bd_submit_scan_end(st->scan)) < 0) {   /* a last line without its newline */
        bd__stream_scan_failed(st, rc);
        return;
    }
    if (st->items == 0) {
        bd__stream_fail(st, BD_EINVAL, st->is_ndjson ? "the body holds no item (one JSON object "
                                                   "per line)"
                                                 : "data must be a non-empty array", "data");
        return;
    }
    if (!st->is_ndjson && (rc = bd__stream_final_fields(st)) < 0)
        return;                                /* answered */
    if (bd__api_batch_count(st->batch) > 0 && (rc = stream_take_batch(st)) < 0) {
        bd__stream_fail(st, rc, NULL, NULL);
        return;
    }
    st->is_body_done = true;
    st->s->items = (unsigned)st->items;
    st->s->batches = bd_job_batch_count(st->items, st->s->batch_size);
    stream_pump(st);
}

/* ---- a gzip body, a slice per loop turn ----------------------------------------------- */

static bool stream_gz_pending(const struct bd__api_stream *st)
{
    return st->gz && (st->gz_pos < st->gz_rest.len || st->is_gz_again);
}

/* Inflate at most STREAM_INFLATE_SLICE bytes of what waits in gz_rest and hand them on.
 * BD_OK, or < 0 after answering. */
static int stream_inflate_slice(struct bd__api_stream *st)
{
    size_t used = 0;
    int rc = BD_OK;

    if (!st->replay)                           /* a replay only hashes the raw body */
        rc = bd_inflate_feed_some(st->gz, st->gz_rest.data + st->gz_pos,
                                  st->gz_rest.len - st->gz_pos, STREAM_INFLATE_SLICE, &used,
                                  stream_on_plain, st);
    else
        used = st->gz_rest.len - st->gz_pos;
    st->gz_pos += used;
    st->is_gz_again = rc == BD_INFLATE_AGAIN;
    if (st->gz_pos == st->gz_rest.len && !st->is_gz_again) {
        bd_buf_reset(&st->gz_rest);
        st->gz_pos = 0;
    }
    if (rc == BD_ETOOLARGE && !st->is_answered)
        bd__stream_fail(st, BD_ETOOLARGE, "the decompressed body is over the limit", "body");
    else if (rc == BD_ENOMEM && !st->is_answered)
        bd__stream_fail(st, BD_ENOMEM, NULL, NULL);
    else if (rc < 0 && !st->is_answered)       /* an inflate error, not a line's */
        bd__stream_fail(st, BD_EINVAL, bd_inflate_why(st->gz), "body");
    return rc < 0 ? rc : BD_OK;
}

static void stream_on_drain(uv_timer_t *t)
{
    struct bd__api_stream *st = t->data;

    st->is_in_body = true;
    if (!st->is_answered && stream_inflate_slice(st) == BD_OK) {
        stream_pump(st);
        bd__stream_flow(st);
    }
    st->is_in_body = false;
    bd__stream_maybe_free(st);                     /* st may be gone now */
}

/* Whether the body may be read on: not while STREAM_READY_MAX of batches wait for their
 * turn to be written (or the upload waits for a slot), nor while inflated output is left
 * over (the next slice is then inflated on the next loop turn, unless the batches ahead
 * must go first). */
void bd__stream_flow(struct bd__api_stream *st)
{
    bool is_blocked = st->ready_bytes >= STREAM_READY_MAX || st->is_waiting;

    if (st->is_answered)
        return;
    if (stream_gz_pending(st) && !is_blocked) {
        if (!st->has_drain) {
            uv_timer_init(st->srv->loop, &st->drain);   /* cannot fail */
            st->drain.data = st;
            st->has_drain = true;
        }
        if (!uv_is_active((uv_handle_t *)&st->drain))
            uv_timer_start(&st->drain, stream_on_drain, 0, 0);
    }
    bool must_wait = is_blocked || stream_gz_pending(st);
    if (must_wait && !st->is_paused) {
        st->is_paused = true;
        bd_http_body_pause(st->req);
    } else if (!must_wait && st->is_paused) {
        st->is_paused = false;
        bd_http_body_resume(st->req);
    }
}

static int stream_on_body_pieces(struct bd__api_stream *st, const char *data, size_t len)
{
    int rc;

    if (st->is_answered)
        return -1;
    if (data == NULL) {
        stream_body_end(st);
        return BD_OK;
    }
    if (st->has_sha)
        bd_sha256_update(&st->sha, data, len);
    if (st->replay)
        return BD_OK;                          /* only its hash matters now */
    if (st->gz) {
        bd_buf_append(&st->gz_rest, data, len);   /* the body waits while this is left */
        rc = st->gz_rest.is_failed ? BD_ENOMEM : stream_inflate_slice(st);
    } else {
        rc = stream_on_plain(st, data, len);
    }
    if (rc < 0) {
        if (!st->is_answered)                  /* out of memory gathering the body */
            bd__stream_fail(st, rc == BD_ENOMEM ? BD_ENOMEM : BD_EINTERNAL, NULL, NULL);
        return -1;
    }
    stream_pump(st);
    bd__stream_flow(st);
    return BD_OK;
}

static int stream_on_body(struct bd_http_request *req, const char *data, size_t len, void *arg)
{
    struct bd__api_stream *st = arg;

    (void)req;
    /* Answering from inside (a bad line) must not free st under the scanner's feet. */
    st->is_in_body = true;
    int rc = stream_on_body_pieces(st, data, len);
    st->is_in_body = false;
    bd__stream_maybe_free(st);                     /* st may be gone now */
    return rc;
}

/* ---- the job in PostgreSQL -------------------------------------------------------------- */

static void stream_on_submitted(int status, const struct bd_job_submitted *res, void *arg)
{
    struct bd__api_stream *st = arg;
    struct bd__api_submit *s = st->s;

    st->is_writing = false;
    st->job = NULL;                            /* the job module freed it */
    st->s = NULL;
    if (st->is_answered) {
        bd__api_submit_free(s);
    } else {
        st->is_answered = true;
        bd_http_set_abort_cb(st->req, NULL, NULL);
        bd__api_submit_answer(s, status, res); /* 202, 429 or the error; frees s */
    }
    bd__stream_maybe_free(st);
}

/* A store call of st's returned with status: false when st was answered meanwhile (it is
 * freed now, if nothing else holds it) or the call failed (answered now). */
static bool stream_store_returned(struct bd__api_stream *st, int status)
{
    st->is_writing = false;
    if (st->is_answered) {
        bd__stream_maybe_free(st);
        return false;
    }
    if (status < 0) {
        bd__stream_fail(st, status, NULL, NULL);
        return false;
    }
    return true;
}

static void stream_on_collection(int status, const struct bd_job_store_collection_row *row,
                                 void *arg)
{
    struct bd__api_stream *st = arg;
    char msg[200];

    if (!stream_store_returned(st, status))
        return;
    if (row->is_found)
        bd__api_collection_put(st->srv, st->s->collection, row->dimension);
    if (row->is_found && row->dimension != st->s->dim) {
        snprintf(msg, sizeof(msg), "collection '%s' holds %u-dimensional vectors; this job's "
                 "are %u-dimensional", st->s->collection, row->dimension, st->s->dim);
        bd__stream_fail(st, BD_EINVAL, msg,
                    st->s->op == BD_OP_BULK_INSERT ? "data[0].embedding" : "collection");
        return;
    }
    char hash[65];
    stream_hash_end(st, hash);
    if (st->idem_key && hash[0] == '\0') {
        bd__stream_fail(st, BD_ENOMEM, NULL, NULL);
        return;
    }
    st->is_writing = true;
    int rc = bd_job_stream_close(st->job, st->s->dim, st->idem_key ? hash : NULL,
                                 stream_on_submitted, st);
    if (rc < 0) {
        st->is_writing = false;
        bd__stream_fail(st, rc, NULL, NULL);
        return;
    }
    /* The close owns the job now: a client leaving meanwhile must not abort it (its
     * statements are in flight, and the COMMIT may already be); it ends through
     * stream_on_submitted, which frees what is left. */
    st->job = NULL;
}

static void stream_on_written(int status, void *arg);

/* The job has its final fields: they answer the request from now on. */
static void stream_on_amended(int status, void *arg)
{
    struct bd__api_stream *st = arg;

    if (status == BD_OK && !st->is_answered) {
        struct bd__api_submit *f = st->final;
        f->items = st->s->items;
        f->batches = bd_job_batch_count(f->items, f->batch_size);
        bd__api_submit_free(st->s);
        st->s = f;
        st->final = NULL;
    }
    stream_on_written(status, arg);
}

static void stream_on_written(int status, void *arg)
{
    struct bd__api_stream *st = arg;

    st->is_writing = false;
    if (status == BD_ECANCELED || st->is_answered) {
        if (status == BD_ECANCELED)
            st->job = NULL;                    /* abort freed it after this callback */
        bd__stream_maybe_free(st);
        return;
    }
    if (status == BD_ECONFLICT) {
        bd__stream_fail(st, BD_ECONFLICT, "Idempotency-Key is being used by another request; "
                    "retry", "Idempotency-Key");
        return;
    }
    if (status < 0) {
        bd__stream_fail(st, status, NULL, NULL);
        return;
    }
    st->is_open = true;
    stream_pump(st);
}

/* Move the job on: the next ready batch, or, once the body ended and everything is
 * written, the collection check and the COMMIT. Resumes the body when nothing waits. */
static void stream_pump(struct bd__api_stream *st)
{
    int rc;

    if (st->is_answered || st->is_writing || !st->is_open || st->is_closing)
        return;
    if (st->ready) {                           /* every batch ready, in one COPY */
        unsigned n = 0;
        for (struct stream_ready *r = st->ready; r; r = r->next)
            n++;
        struct bd_job_payload *payloads = malloc(n * sizeof(*payloads));
        unsigned *items = malloc(n * sizeof(*items));
        if (payloads == NULL || items == NULL) {
            free(payloads);
            free(items);
            bd__stream_fail(st, BD_ENOMEM, NULL, NULL);
            return;
        }
        for (unsigned i = 0; i < n; i++) {
            struct stream_ready *r = st->ready;
            st->ready = r->next;
            payloads[i] = r->payload;
            items[i] = r->items;
            free(r);
        }
        st->ready_tail = &st->ready;
        st->ready_bytes = 0;
        st->is_writing = true;
        rc = bd_job_stream_put(st->job, payloads, items, n, stream_on_written, st);
        free(payloads);
        free(items);
        if (rc < 0) {
            st->is_writing = false;
            bd__stream_fail(st, rc, NULL, NULL);   /* st may be gone */
            return;
        }
        bd__stream_flow(st);                       /* the body may go on meanwhile */
        return;
    }
    bd__stream_flow(st);
    if (!st->is_body_done)
        return;
    if (st->final) {                           /* fields after "data": amend the job first */
        struct bd__api_submit *f = st->final;
        char *metadata = json_dumps(f->metadata, JSON_COMPACT);
        struct bd_job_spec spec = {
            .op = f->op, .model = f->model, .collection = f->collection,
            .priority = f->priority, .batch_size = f->batch_size, .dim = f->dim,
            .timeout_s = f->timeout_s, .max_retries = f->max_retries,
            .metadata_json = metadata,
        };
        st->is_writing = true;
        rc = metadata ? bd_job_stream_amend(st->job, &spec, stream_on_amended, st) : BD_ENOMEM;
        free(metadata);
        if (rc < 0) {
            st->is_writing = false;
            bd__stream_fail(st, rc, NULL, NULL);
        }
        return;
    }
    st->is_closing = true;
    st->is_writing = true;
    unsigned dim;
    if (bd__api_collection_get(st->srv, st->s->collection, &dim)) {
        struct bd_job_store_collection_row row = { true, dim };
        stream_on_collection(BD_OK, &row, st);  /* (st stays: it is writing until then) */
        return;
    }
    rc = bd_job_store_get_collection(st->srv->pg, st->s->collection, stream_on_collection, st);
    if (rc < 0) {
        st->is_writing = false;
        bd__stream_fail(st, rc == BD_ENOMEM ? BD_ENOMEM : BD_EPG, NULL, NULL);
    }
}

/* ---- the request's headers -------------------------------------------------------------- */

/* The job's fields from the query string, as the JSON form would give them. Numbers that
 * do not parse stay strings, so that validation names the field. */
static json_t *stream_fields(struct bd_http_request *req)
{
    static const char *const strings[] = { "operation", "model", "collection" };
    static const char *const options[] = { "batch_size", "priority", "timeout_s",
                                           "max_retries" };
    json_t *f = json_object(), *o = json_object();

    for (size_t i = 0; f && i < sizeof(strings) / sizeof(strings[0]); i++) {
        const char *v = bd_http_query_get(req, strings[i]);
        if (v)
            json_object_set_new(f, strings[i], json_string(v));
    }
    for (size_t i = 0; o && i < sizeof(options) / sizeof(options[0]); i++) {
        const char *v = bd_http_query_get(req, options[i]);
        char *end;
        if (v == NULL)
            continue;
        errno = 0;
        double d = strtod(v, &end);
        bool is_number = *v && *end == '\0' && errno == 0 && strcmp(options[i], "priority");
        if (is_number && d == (double)(long long)d && strcmp(options[i], "timeout_s"))
            json_object_set_new(o, options[i], json_integer((json_int_t)d));
        else if (is_number)
            json_object_set_new(o, options[i], json_real(d));
        else
            json_object_set_new(o, options[i], json_string(v));
    }
    if (f && o)
        json_object_set_new(f, "options", o);
    else
        json_decref(o);
    return f;
}

/* Content-Encoding: gzip, or none. BD_EMEDIATYPE for anything else. */
static int stream_encoding(struct bd_http_request *req, bool *is_gzip)
{
    const char *ce = bd_http_header_get(req, "Content-Encoding");
    *is_gzip = ce && (strcasecmp(ce, "gzip") == 0 || strcasecmp(ce, "x-gzip") == 0);
    if (ce && !*is_gzip && strcasecmp(ce, "identity") != 0)
        return BD_EMEDIATYPE;
    return BD_OK;
}

void bd__stream_open_job(struct bd__api_stream *st)
{
    struct bd__api_submit *s = st->s;
    const struct bd_server *srv = st->srv;
    struct bd_job_submit_deps deps = { srv->pg, srv->rq, srv->cfg, srv->jobs };
    char *metadata = json_dumps(s->metadata, JSON_COMPACT);
    int rc = BD_ENOMEM;

    if (metadata) {
        struct bd_job_spec spec = {
            .op = s->op, .model = s->model, .collection = s->collection,
            .priority = s->priority, .batch_size = s->batch_size, .dim = s->dim,
            .timeout_s = s->timeout_s, .max_retries = s->max_retries,
            .metadata_json = metadata, .idem_key = st->idem_key,
        };
        st->is_writing = true;
        rc = bd_job_stream_open(&deps, &spec, stream_on_written, st, &st->job);
        free(metadata);
    }
    if (rc < 0) {
        st->is_writing = false;
        st->job = NULL;
        bd__stream_fail(st, rc, NULL, NULL);
    }
}

/* An Idempotency-Key: its earlier job, if any, before a new one is opened. */
static void stream_on_key(int status, const struct bd_job_store_idem_row *row, void *arg)
{
    struct bd__api_stream *st = arg;

    if (!stream_store_returned(st, status))
        return;
    if (!row->is_found) {
        bd__stream_open_job(st);
        return;
    }
    /* The earlier job: read the rest of the body for its hash, then answer. */
    snprintf(st->replay_hash, sizeof(st->replay_hash), "%s", row->request_hash);
    st->replay = bd__api_status_json(row->job);
    stream_free_ready(st);                     /* nothing of this body is stored */
    if (st->replay == NULL) {
        bd__stream_fail(st, BD_ENOMEM, NULL, NULL);
        return;
    }
    bd__stream_flow(st);
    if (st->is_body_done)
        stream_answer_replay(st);
}

void bd__stream_find_key(struct bd__api_stream *st)
{
    st->is_writing = true;                     /* a store call is in flight: st stays */
    if (bd_job_store_find_idempotent(st->srv->pg, st->idem_key, stream_on_key, st) < 0) {
        st->is_writing = false;
        bd__stream_fail(st, BD_EPG, NULL, NULL);
    }
}

static void api_on_submit_headers(struct bd_http_request *req, void *arg)
{
    struct bd_server *srv = arg;
    struct bd__api_invalid inv = { { 0 }, { 0 } };
    const char *key;
    bool is_gzip = false, is_ndjson;
    int rc;

    if (stream_encoding(req, &is_gzip) < 0) {
        bd_http_respond_err(req, BD_EMEDIATYPE, "Content-Encoding must be gzip or identity",
                            "Content-Encoding");
        return;
    }
    if (!bd__api_submit_headers_ok(req, srv, &is_ndjson, &key))
        return;                                /* answered */
    if (is_ndjson && !bd__stream_has_room(srv)) {
        bd__stream_refuse_upload(req);
        return;
    }
    struct bd__api_stream *st = calloc(1, sizeof(*st));
    if (st == NULL || (st->s = calloc(1, sizeof(*st->s))) == NULL) {
        free(st);
        bd_http_respond_err(req, BD_ENOMEM, NULL, NULL);
        return;
    }
    st->req = req;
    st->srv = srv;
    st->is_ndjson = is_ndjson;
    st->is_scanning = is_ndjson;
    st->idem_key = key;
    if (key && bd_sha256_init(&st->sha) == BD_OK)
        st->has_sha = true;
    st->ready_tail = &st->ready;
    st->s->req = req;
    st->s->srv = srv;
    bd_buf_init(&st->hold);
    if (is_gzip && (st->gz = bd_inflate_new(srv->cfg->http_max_stream_bytes, &rc)) == NULL) {
        st->is_answered = true;
        bd_http_respond_err(req, BD_ENOMEM, NULL, NULL);
        bd__stream_maybe_free(st);
        return;
    }
    if (is_ndjson) {
        /* The fields stay as s->body: s->model and friends point into it. */
        st->s->body = stream_fields(req);
        rc = st->s->body ? bd__api_submit_fields(st->s, st->s->body, &inv) : BD_ENOMEM;
        if (rc == BD_OK)
            rc = bd__api_submit_metadata(st->s);
        if (rc == BD_OK && (st->batch = bd__api_batch_new(st->s)) == NULL)
            rc = BD_ENOMEM;
        static const struct bd_submit_scan_cbs cbs = { .on_item = bd__stream_on_item };
        if (rc == BD_OK &&
            (st->scan = bd_submit_scan_new(BD_SUBMIT_NDJSON, STREAM_LINE_MAX, &cbs, st)) == NULL)
            rc = BD_ENOMEM;
        if (rc < 0) {
            char msg[BD__API_INVALID_TEXT_MAX];
            bd__api_invalid_text(&inv, "", msg, sizeof(msg));
            st->is_answered = true;
            bd_http_respond_err(req, rc, rc == BD_EINVAL ? msg : NULL,
                                rc == BD_EINVAL ? inv.field : NULL);
            bd__stream_maybe_free(st);
            return;
        }
    } else if ((st->s->body = json_object()) == NULL) {   /* the members, as they come */
        st->is_answered = true;
        bd_http_respond_err(req, BD_ENOMEM, NULL, NULL);
        bd__stream_maybe_free(st);
        return;
    }
    bd_http_body_set_limit(req, srv->cfg->http_max_stream_bytes);
    bd_http_body_set_timeout(req, STREAM_TIMEOUT_MS);
    if (bd_http_body_stream(req, stream_on_body, st) < 0) {
        st->is_answered = true;
        bd_http_respond_err(req, BD_EINTERNAL, NULL, NULL);
        bd__stream_maybe_free(st);
        return;
    }
    bd_http_set_abort_cb(req, stream_on_abort, st);
    if (!is_ndjson)
        return;                                /* the job opens when "data" does */
    /* (Room was checked above.) A waiting upload's body is paused by its first piece. */
    if (bd__stream_take_slot(st) == BD_OK)
        bd__stream_begin(st);
}

int bd__api_register_submit(struct bd_router *r, struct bd_server *srv)
{
    return bd_router_add_stream(r, "POST", BD_API_PREFIX "/jobs", api_on_submit_headers,
                                bd__api_submit_on_request, srv);
}
