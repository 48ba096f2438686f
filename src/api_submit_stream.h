/* api_submit_stream.h -- private to the streamed submit (api_submit_stream.c: the record's
 * life, the body, the job in PostgreSQL; api_submit_json.c: a JSON body's members;
 * api_submit_uploads.c: the line of uploads waiting for a connection): one streamed
 * request's record and the steps the three files share. Loop thread only.
 */
#ifndef BATCHD_API_SUBMIT_STREAM_H
#define BATCHD_API_SUBMIT_STREAM_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "api_submit.h"
#include "batchd/buf.h"
#include "batchd/job_submit.h"
#include "batchd/sha256.h"

struct bd_http_request;
struct bd_inflate;
struct bd_server;
struct bd_submit_scan;

/* One line holds one item: a text of at most 1 MiB (6 MiB escaped) or 65536 numbers. */
#define STREAM_LINE_MAX (8u << 20)
/* A JSON body up to this size (decoded) is gathered and submitted whole; a larger one is
 * scanned as it arrives, with the job's fields as they stand when "data" opens. */
#define STREAM_HOLD_MAX (1u << 20)
/* Batches gathered while the ones before them are written, at most (then the body waits):
 * the next COPY takes them all. */
#define STREAM_READY_MAX (2u << 20)
/* Inflated bytes handed on per loop turn: a gzip body is inflated in slices of this size, so
 * one small piece of a highly compressed body never holds the loop for long. */
#define STREAM_INFLATE_SLICE (1u << 20)
/* Streamed submits that may wait for a connection of their own (beyond: 503). Each holds
 * what arrived before it had to wait (at most about 3 MiB: a JSON body's first MiB and
 * its batches), so the line is kept short. */
#define STREAM_WAITING_MAX 64
/* A streamed body's client time, first byte to last, paused time excluded: one hour (a
 * 16 GiB upload at 5 MB/s). */
#define STREAM_TIMEOUT_MS (3600u * 1000u)

/* A batch gathered and waiting for its turn to be written. */
struct stream_ready {
    struct stream_ready *next;
    struct bd_job_payload payload;
    unsigned items;
};

struct bd__api_stream {
    struct bd_http_request *req;
    struct bd_server *srv;
    struct bd__api_submit *s;         /* fields, dimension, metadata; answered through it */
    struct bd_inflate *gz;            /* Content-Encoding: gzip */
    struct bd_buf gz_rest;            /* compressed bytes not inflated yet (from gz_pos) */
    size_t gz_pos;
    bool is_gz_again;                 /* the inflater holds output for what it consumed */
    uv_timer_t drain;                 /* inflates the next slice on a later loop turn */
    bool has_drain;                   /* drain is initialised (closed before st goes) */
    bool is_ndjson;                   /* else a JSON body */
    bool is_scanning;                 /* a JSON body past STREAM_HOLD_MAX (NDJSON: always) */
    struct bd_submit_scan *scan;      /* frames the body into members and items */
    struct bd_buf hold;               /* a JSON body, gathered up to STREAM_HOLD_MAX */
    json_t *late;                     /* JSON: the members after "data" */
    bool is_in_data;                  /* JSON: "data" has opened */
    struct bd__api_submit *final;     /* JSON: the fields with the late members, to amend */
    size_t line_no;                   /* the line of the last item */
    size_t items;                     /* items accepted */
    struct bd__api_batch *batch;      /* the batch being filled */
    struct stream_ready *ready, **ready_tail;
    size_t ready_bytes;               /* their payloads' size */
    struct bd_job_stream *job;        /* NULL once closed (its callback ran) or never opened */
    bool is_open;                     /* the job's row is written */
    bool is_writing;                  /* an open, put or close is in flight */
    bool is_paused;
    bool is_body_done;
    bool is_closing;
    bool is_answered;
    bool is_in_body;                  /* inside on_body: st must outlive the call */
    bool is_counted;                  /* one of srv->submit_streams */
    bool is_waiting;                  /* in srv->uploads_waiting (its body paused) */
    struct bd__api_stream *wait_next;
    bool is_freeing;

    /* Idempotency-Key: the body's hash, computed as it arrives */
    const char *idem_key;             /* req's header, NULL: none */
    struct bd_sha256 sha;
    bool has_sha;                     /* sha initialised and not finished */
    json_t *replay;                   /* the key's earlier job (its status): read, compare */
    char replay_hash[65];
};

/* api_submit_stream.c */
/* Free st once it is answered and nothing of it is in flight (no-op before). */
void bd__stream_maybe_free(struct bd__api_stream *st);
/* Answer with err (message may be NULL) and give the job up: nothing of it stays. */
void bd__stream_fail(struct bd__api_stream *st, int err, const char *message,
                     const char *field);
/* The same for a validation step's rc: BD_EINVAL answers inv's text (prefix as for
 * bd__api_invalid_text), another error its own message. Returns rc. */
int bd__stream_fail_invalid(struct bd__api_stream *st, int rc, const struct bd__api_invalid *inv,
                            const char *prefix);
/* Pause or resume the body, and schedule the next gzip slice, as st's state asks. */
void bd__stream_flow(struct bd__api_stream *st);
/* The scanner's on_item: one item, validated and batched. */
int bd__stream_on_item(void *arg, size_t index, size_t line, const char *p, size_t n);
/* The scanner's verdict rc answered (unless an item's error was); returns rc. */
int bd__stream_scan_failed(struct bd__api_stream *st, int rc);
/* The job's open, or first its Idempotency-Key's earlier job. */
void bd__stream_open_job(struct bd__api_stream *st);
void bd__stream_find_key(struct bd__api_stream *st);

/* api_submit_json.c */
/* The gathered start of a JSON body passed STREAM_HOLD_MAX: scan it and the rest. */
int bd__stream_start_scan(struct bd__api_stream *st);
/* Members after "data": the job's final fields into st->final. BD_OK or < 0 answered. */
int bd__stream_final_fields(struct bd__api_stream *st);

/* api_submit_uploads.c */
/* Whether another upload may start or wait in line. */
/* Long uploads (streamed submits and file uploads) that may hold an API connection at once:
 * half the pool, at least one. */
unsigned bd__stream_max_uploads(const struct bd_server *srv);

bool bd__stream_has_room(const struct bd_server *srv);
/* A slot for st (BD_OK: counted), a place in line (1), or BD_EUPLOADS. */
int bd__stream_take_slot(struct bd__api_stream *st);
/* The job's first statement, once st holds a slot. */
void bd__stream_begin(struct bd__api_stream *st);
void bd__stream_unwait(struct bd__api_stream *st);
/* A slot freed: the uploads first in line go on. */
void bd__stream_release_slot(struct bd_server *srv);
/* 503 too_many_uploads with Retry-After. */
void bd__stream_refuse_upload(struct bd_http_request *req);

#endif
