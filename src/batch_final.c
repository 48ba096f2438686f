/* batch_final.c -- the batch finalizer (batch.h): expiry, lost cancels, and the output and
 * error files of batches whose job has ended.
 *
 * One finalizer per process, one batch at a time: a timer claims a batch that needs
 * attention (batch_store.h's lease, so processes never work on the same one). An expired
 * batch's job is cancelled (what finished stays); a batch whose job has ended is written
 * out in two passes over its lines, page by page: the output file (lines whose every input
 * has its vector) and then the error file (lines with a failed input, and lines that never
 * ran because the batch was cancelled or expired), each one upload (file_store.h: one
 * transaction, chunk by chunk), and at last the batch's final row. File ids derive from the
 * batch's, and a pass first deletes what a finalizer that died midway committed, so the
 * next holder of the lease simply does it all again.
 *
 * Owns the finalizer and the run in progress. Memory: a page of lines and vectors, and
 * about one chunk per file. Loop thread only.  SPDX-License-Identifier: MIT
 */
#include "batchd/batch.h"

#include "batchd/base64.h"
#include "batchd/buf.h"
#include "batchd/error.h"
#include "batchd/file_store.h"
#include "batchd/job_engine.h"
#include "batchd/log.h"
#include "batchd/pg_store.h"
#include "batchd/sha256.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* A claim's lease, renewed between pages: what a batch waits after its finalizer died
 * (SIGKILL; a restart gets a new worker id). A lost release costs nothing: the owner's
 * next claim takes its own stale lease back (bd_batch_store_claim). */
#define FINAL_LEASE_S 120.0
/* A run renews its lease when this much of it has passed. */
#define FINAL_RENEW_MS 30000u
/* A finalize that failed is retried after this, other batches first. */
#define FINAL_RETRY_S 30.0
/* Claims a kick starts are at least this far apart (a stream of tiny jobs ending must not
 * turn into a stream of claim statements). */
#define FINAL_KICK_SPACING_MS 50
/* A page: at most this many lines, and lines starting within this many items. */
#define FINAL_PAGE_LINES 256u
#define FINAL_PAGE_ITEMS 1024u

enum final_pass { PASS_OUTPUT = 0, PASS_ERROR = 1 };

/* A line of the page in hand, copied out of its result. */
struct final_line {
    int32_t ord, first_item, items, vectors;
    bool is_base64;
    char *custom_id;
    char *error_code;
    char *error_message;
};

struct final_run {
    char id[BD_BATCH_ID_LEN + 1];
    char job_id[64];
    char model[128];
    char *job_error_code, *job_error_message;
    bool is_expired, is_cancelled;
    bool has_not_run;                 /* a line neither succeeded nor failed */
    bool is_cancel_path;              /* the run only asked the job to stop */
    uint64_t renewed_ms;              /* the lease's last renewal (uv_now), or its claim */
    int64_t lines;                    /* the batch's lines (requests) */
    enum final_pass pass;
    char file_id[2][BD_FILE_ID_LEN + 1];
    bool has_file[2];
    struct bd_file_upload *up;
    struct bd_buf out;                /* formatted lines not yet put */
    struct bd_buf scratch;            /* one vector's float32 bytes (base64 lines) */
    int64_t bytes, newlines;          /* of the current file, put or not */
    int64_t put_newlines;             /* newlines in the chunks put */
    int64_t counts[2];                /* lines written: output (completed), error (failed) */
    int32_t next_ord;
    struct final_line *page;
    unsigned page_n;
    bool is_page_last;
    struct bd_batch_vector *vec;      /* the page's vectors, by item index */
    unsigned vec_n;
    char *vec_store;                  /* their texts, back to back */
};

struct bd_batch_finalizer {
    struct bd_batch_final_deps deps;
    uv_timer_t timer;
    struct bd_job_listener ended;     /* every job's end here kicks a look */
    uint64_t last_claim_ms;
    struct final_run *run;
    bool is_busy;                     /* a claim or a run is in flight */
    bool is_stopping;
    bool is_kicked;
    void (*stop_cb)(void *arg);
    void *stop_arg;
};

static void final_schedule(struct bd_batch_finalizer *f, uint64_t ms);
static void final_next_page(struct bd_batch_finalizer *f);
static void final_begin_pass(struct bd_batch_finalizer *f);

void bd_batch_file_id(const char *batch_id, bool is_error, char *out)
{
    struct bd_sha256 h;
    unsigned char d[32];
    static const char hex[] = "0123456789abcdef";

    bd_sha256_init(&h);
    bd_sha256_update(&h, batch_id, strlen(batch_id));
    bd_sha256_update(&h, is_error ? ":error" : ":output", is_error ? 6 : 7);
    bd_sha256_final(&h, d);
    memcpy(out, "file-", 5);
    for (int i = 0; i < 12; i++) {
        out[5 + 2 * i] = hex[d[i] >> 4];
        out[6 + 2 * i] = hex[d[i] & 15];
    }
    out[BD_FILE_ID_LEN] = '\0';
}

/* ---- a run's memory ---------------------------------------------------------------------- */

static void final_page_free(struct final_run *r)
{
    for (unsigned i = 0; i < r->page_n; i++) {
        free(r->page[i].custom_id);
        free(r->page[i].error_code);
        free(r->page[i].error_message);
    }
    free(r->page);
    r->page = NULL;
    r->page_n = 0;
    free(r->vec);
    free(r->vec_store);
    r->vec = NULL;
    r->vec_store = NULL;
    r->vec_n = 0;
}

static void final_run_free(struct final_run *r)
{
    if (r == NULL)
        return;
    if (r->up)
        bd_file_upload_abort(r->up);
    final_page_free(r);
    bd_buf_free(&r->out);
    bd_buf_free(&r->scratch);
    free(r->job_error_code);
    free(r->job_error_message);
    free(r);
}

/* The run ended (err < 0: it failed and the lease runs out; another sweep retries). */
static void final_on_release_ignored(int status, const char *message, void *arg)
{
    (void)status;
    (void)message;
    (void)arg;
}

/* The run ended. After a failure (err < 0; also a stop midway) the lease is given back, so
 * this or another process starts the batch again at a later sweep; what this run wrote
 * rolls back with its upload. */
static void final_run_end(struct bd_batch_finalizer *f, int err, const char *what,
                          const char *message)
{
    struct final_run *r = f->run;
    bool is_slow = err < 0 || (r && r->is_cancel_path);

    if (err < 0 && err != BD_ECANCELED)
        bd_log(BD_LOG_WARN, "batch", "batch=%s event=finalize_failed step=%s error=%s%s%s",
               r ? r->id : "-", what, bd_strerror(err), message ? " message=" : "",
               message ? message : "");
    if (err < 0 && r && r->id[0])          /* a stop gives it back at once */
        (void)bd_batch_store_release(f->deps.pg, r->id, f->deps.owner,
                                     err == BD_ECANCELED ? 0 : FINAL_RETRY_S,
                                     final_on_release_ignored, NULL);
    final_run_free(r);
    f->run = NULL;
    f->is_busy = false;
    /* after a failure or a cancel wait an interval; after a batch finished look again now */
    final_schedule(f, is_slow ? (uint64_t)(f->deps.interval_s * 1000.0) : 0);
}

/* ---- formatting -------------------------------------------------------------------------- */

/* A deterministic id for the line's request: prefix + 24 hex of SHA-256(batch, ord, kind). */
static void final_line_id(const struct final_run *r, int32_t ord, const char *prefix,
                          struct bd_buf *b)
{
    char in[96], hex[65];
    int n = snprintf(in, sizeof(in), "%s:%d:%s", r->id, ord, prefix);

    bd_sha256_hex(in, (size_t)n, hex);
    bd_buf_printf(b, "\"%s%.24s\"", prefix, hex);
}

/* A stored vector's text ("{0.1,-2e-05}") as OpenAI's base64: its float32s, little-endian.
 * float4out wrote the shortest text that reads back as the same float, so strtof gives
 * back exactly the stored value. */
static void final_put_base64(struct bd_buf *b, struct bd_buf *scratch, const char *s, size_t len)
{
    const char *p = s + 1, *end = s + len;
    size_t enc;

    bd_buf_reset(scratch);
    while (p < end && *p != '}') {
        char *e;
        float v = strtof(p, &e);
        uint32_t u;
        unsigned char le[4];
        memcpy(&u, &v, 4);
        for (int k = 0; k < 4; k++)
            le[k] = (unsigned char)(u >> (8 * k));
        bd_buf_append(scratch, le, 4);
        p = e < end && *e == ',' ? e + 1 : (e == p ? end : e);
    }
    if (scratch->is_failed) {
        b->is_failed = true;
        return;
    }
    enc = bd_base64_encoded_len(scratch->len);
    if (bd_buf_reserve(b, enc + 2) == BD_OK) {
        b->data[b->len++] = '"';
        b->len += bd_base64_encode(scratch->data, scratch->len, b->data + b->len);
        b->data[b->len++] = '"';
        b->data[b->len] = '\0';
    }
}

/* An output line: every input's vector, in input order. */
static void final_put_output(struct final_run *r, const struct final_line *l,
                             const struct bd_batch_vector *v)
{
    struct bd_buf *b = &r->out;

    bd_buf_puts(b, "{\"id\":");
    final_line_id(r, l->ord, "batch_req_", b);
    bd_buf_puts(b, ",\"custom_id\":");
    bd_buf_json_string(b, l->custom_id, strlen(l->custom_id));
    bd_buf_puts(b, ",\"response\":{\"status_code\":200,\"request_id\":");
    final_line_id(r, l->ord, "req_", b);
    bd_buf_puts(b, ",\"body\":{\"object\":\"list\",\"data\":[");
    for (int32_t i = 0; i < l->items; i++) {
        bd_buf_printf(b, "%s{\"object\":\"embedding\",\"index\":%d,\"embedding\":",
                      i ? "," : "", (int)i);
        if (l->is_base64)
            final_put_base64(b, &r->scratch, v[i].text, v[i].len);
        else
            bd_pg_real_array_to_json(b, v[i].text, v[i].len);
        bd_buf_puts(b, "}");
    }
    bd_buf_puts(b, "],\"model\":");
    bd_buf_json_string(b, r->model, strlen(r->model));
    /* batchd does not count tokens (the model servers' counts are not kept) */
    bd_buf_puts(b, ",\"usage\":null}},\"error\":null}\n");
}

/* An error line: a failed input's error as the endpoint would have answered it, or, for a
 * line that never ran, the reason in "error". */
static void final_put_error(struct final_run *r, const struct final_line *l)
{
    struct bd_buf *b = &r->out;
    bool is_client = l->error_code && strcmp(l->error_code, "input_too_long") == 0;

    bd_buf_puts(b, "{\"id\":");
    final_line_id(r, l->ord, "batch_req_", b);
    bd_buf_puts(b, ",\"custom_id\":");
    bd_buf_json_string(b, l->custom_id, strlen(l->custom_id));
    if (l->error_code) {
        bd_buf_printf(b, ",\"response\":{\"status_code\":%d,\"request_id\":",
                      is_client ? 400 : 500);
        final_line_id(r, l->ord, "req_", b);
        bd_buf_puts(b, ",\"body\":{\"error\":{\"message\":");
        bd_buf_json_string(b, l->error_message ? l->error_message : "",
                           l->error_message ? strlen(l->error_message) : 0);
        bd_buf_printf(b, ",\"type\":\"%s\",\"param\":null,\"code\":",
                      is_client ? "invalid_request_error" : "server_error");
        bd_buf_json_string(b, l->error_code, strlen(l->error_code));
        bd_buf_puts(b, "}}},\"error\":null}\n");
        return;
    }
    const char *code = r->is_expired ? "batch_expired"
                       : r->is_cancelled ? "batch_cancelled"
                       : r->job_error_code ? r->job_error_code : "not_processed";
    const char *msg = r->is_expired ? "the batch expired before this request ran"
                      : r->is_cancelled ? "the batch was cancelled before this request ran"
                      : r->job_error_message ? r->job_error_message
                                             : "this request was not processed";
    bd_buf_puts(b, ",\"response\":null,\"error\":{\"code\":");
    bd_buf_json_string(b, code, strlen(code));
    bd_buf_puts(b, ",\"message\":");
    bd_buf_json_string(b, msg, strlen(msg));
    bd_buf_puts(b, "}}\n");
}

/* ---- writing a file ---------------------------------------------------------------------- */

static size_t final_count_newlines(const char *p, size_t n)
{
    size_t c = 0;
    for (const char *e = p + n; (p = memchr(p, '\n', (size_t)(e - p))) != NULL; p++)
        c++;
    return c;
}

static void final_on_put(int status, const char *message, void *arg);

/* Put a chunk when a whole one is ready (or, at the pass's end, what is left). Returns
 * true when a put is in flight (its callback goes on). */
static bool final_put_chunk(struct bd_batch_finalizer *f, bool is_end)
{
    struct final_run *r = f->run;
    size_t n = r->out.len < BD_FILE_CHUNK_BYTES ? r->out.len : BD_FILE_CHUNK_BYTES;
    int rc;

    if (n == 0 || (!is_end && r->out.len < BD_FILE_CHUNK_BYTES))
        return false;
    rc = bd_file_upload_put(r->up, r->out.data, n, r->put_newlines, final_on_put, f);
    if (rc < 0) {
        final_run_end(f, rc, "put", NULL);
        return true;
    }
    r->put_newlines += (int64_t)final_count_newlines(r->out.data, n);
    memmove(r->out.data, r->out.data + n, r->out.len - n);
    r->out.len -= n;
    return true;
}

static void final_on_finished(int status, const char *message, void *arg)
{
    struct bd_batch_finalizer *f = arg;
    struct final_run *r = f->run;

    if (status == BD_ENOTFOUND)          /* final already, or the lease was lost */
        bd_log(BD_LOG_WARN, "batch", "batch=%s event=finalize_lost (final already or lease "
               "taken over): this run's files are kept only if its row names them", r->id);
    if (status == BD_OK)
        bd_log(BD_LOG_INFO, "batch", "batch=%s job=%s event=finalized completed=%lld "
               "failed=%lld", r->id, r->job_id, (long long)r->counts[PASS_OUTPUT],
               (long long)r->counts[PASS_ERROR]);
    final_run_end(f, status == BD_ENOTFOUND ? BD_OK : status, "finish", message);
}

static void final_finish(struct bd_batch_finalizer *f)
{
    struct final_run *r = f->run;
    const char *status = r->is_expired ? "expired" : r->is_cancelled ? "cancelled" : "completed";
    char *errors = NULL;
    int rc;

    /* A job that failed as a whole (not item by item) before some lines ran: failed. */
    if (!r->is_expired && !r->is_cancelled && r->job_error_code &&
        r->counts[PASS_ERROR] > 0 && r->has_not_run) {
        json_t *e = json_pack("[{s:s, s:s, s:n, s:n}]", "code", r->job_error_code, "message",
                              r->job_error_message ? r->job_error_message : "", "param",
                              "line");
        status = "failed";
        errors = e ? json_dumps(e, JSON_COMPACT) : NULL;
        json_decref(e);
    }
    struct bd_batch_final fin = {
        .id = r->id, .owner = f->deps.owner, .final_status = status,
        .output_file_id = r->has_file[PASS_OUTPUT] ? r->file_id[PASS_OUTPUT] : NULL,
        .error_file_id = r->has_file[PASS_ERROR] ? r->file_id[PASS_ERROR] : NULL,
        .errors_json = errors,
        .request_completed = r->counts[PASS_OUTPUT], .request_failed = r->counts[PASS_ERROR],
    };
    rc = bd_batch_store_finish(f->deps.pg, &fin, final_on_finished, f);
    free(errors);
    if (rc < 0)
        final_run_end(f, rc, "finish", NULL);
}

/* The pass's file is committed (has) or was not kept (no line). */
static void final_after_file(struct bd_batch_finalizer *f, bool has)
{
    struct final_run *r = f->run;

    r->has_file[r->pass] = has;
    if (r->pass == PASS_OUTPUT) {
        r->pass = PASS_ERROR;
        final_begin_pass(f);
        return;
    }
    final_finish(f);
}

static void final_on_file_closed(int status, const char *message, void *arg)
{
    struct bd_batch_finalizer *f = arg;

    f->run->up = NULL;                      /* freed by its close, whatever the status */
    if (status < 0) {
        final_run_end(f, status, "close", message);
        return;
    }
    final_after_file(f, true);
}

/* The pass read every line: the rest goes out, then the file's row and COMMIT (a file with
 * no line is not kept: the batch then has no such file, as OpenAI's). */
static void final_end_pass(struct bd_batch_finalizer *f)
{
    struct final_run *r = f->run;
    int rc;

    if (final_put_chunk(f, true))
        return;                             /* back here once it is put */
    if (r->counts[r->pass] == 0) {
        bd_file_upload_abort(r->up);
        r->up = NULL;
        final_after_file(f, false);
        return;
    }
    struct bd_file_new nf = {
        .purpose = "batch_output",
        .filename = r->pass == PASS_OUTPUT ? "batch_output.jsonl" : "batch_errors.jsonl",
        .bytes = r->bytes, .lines = r->newlines, .created_at = (int64_t)time(NULL),
    };
    rc = bd_file_upload_close(r->up, &nf, final_on_file_closed, f);
    if (rc < 0)
        final_run_end(f, rc, "close", NULL);
}

/* After a page or a put: put the next full chunk, else read on, else end the pass. */
static void final_go_on(struct bd_batch_finalizer *f)
{
    if (final_put_chunk(f, false))
        return;
    if (f->run->is_page_last)
        final_end_pass(f);
    else
        final_next_page(f);
}

static void final_on_put(int status, const char *message, void *arg)
{
    struct bd_batch_finalizer *f = arg;

    if (status < 0) {
        if (status == BD_ECANCELED)
            f->run->up = NULL;              /* the upload is gone after this callback */
        final_run_end(f, status, "put", message);
        return;
    }
    final_go_on(f);
}

/* ---- the pages of lines ------------------------------------------------------------------ */

static bool final_line_is_ok(const struct final_line *l)
{
    return l->vectors == l->items;
}

/* Format the page in hand into the current file, then put what fills chunks. */
static void final_format_page(struct bd_batch_finalizer *f)
{
    struct final_run *r = f->run;
    unsigned v = 0;
    size_t before = r->out.len;

    for (unsigned i = 0; i < r->page_n; i++) {
        const struct final_line *l = &r->page[i];
        bool is_ok = final_line_is_ok(l);

        if (r->pass == PASS_OUTPUT && is_ok) {
            while (v < r->vec_n && r->vec[v].item_index < l->first_item)
                v++;
            for (int32_t k = 0; is_ok && k < l->items; k++)
                is_ok = v + (unsigned)k < r->vec_n &&
                        r->vec[v + (unsigned)k].item_index == l->first_item + k;
            if (!is_ok) {
                /* a vector went missing between the two reads (a retry of the job?): the
                 * line is not written rather than written with another line's vectors */
                bd_log(BD_LOG_WARN, "batch", "batch=%s line=%d event=vectors_changed",
                       r->id, (int)l->ord);
            } else {
                final_put_output(r, l, &r->vec[v]);
                v += (unsigned)l->items;
                r->counts[PASS_OUTPUT]++;
            }
        } else if (r->pass == PASS_ERROR && !is_ok) {
            final_put_error(r, l);
            r->counts[PASS_ERROR]++;
            if (l->error_code == NULL)
                r->has_not_run = true;
        }
    }
    if (r->out.is_failed) {
        final_run_end(f, BD_ENOMEM, "format", NULL);
        return;
    }
    if (r->out.len > before) {              /* out.data is NULL until a first line */
        r->bytes += (int64_t)(r->out.len - before);
        r->newlines += (int64_t)final_count_newlines(r->out.data + before,
                                                     r->out.len - before);
    }
    final_page_free(r);
    final_go_on(f);
}

static void final_on_vectors(int status, const struct bd_batch_vector *v, unsigned n,
                             const char *message, void *arg)
{
    struct bd_batch_finalizer *f = arg;
    struct final_run *r = f->run;
    size_t total = 0, at = 0;

    if (status < 0) {
        final_run_end(f, status, "read_vectors", message);
        return;
    }
    for (unsigned i = 0; i < n; i++)
        total += v[i].len + 1;
    if (n > 0 && ((r->vec = malloc(n * sizeof(*r->vec))) == NULL ||
                  (r->vec_store = malloc(total)) == NULL)) {
        final_run_end(f, BD_ENOMEM, "read_vectors", NULL);
        return;
    }
    for (unsigned i = 0; i < n; i++) {
        memcpy(r->vec_store + at, v[i].text, v[i].len);
        r->vec_store[at + v[i].len] = '\0';
        r->vec[i] = (struct bd_batch_vector){ v[i].item_index, r->vec_store + at, v[i].len };
        at += v[i].len + 1;
    }
    r->vec_n = n;
    final_format_page(f);
}

static char *final_dup(const char *s)
{
    return s ? strdup(s) : NULL;
}

static void final_on_lines(int status, const struct bd_batch_line *lines, unsigned n,
                           const char *message, void *arg)
{
    struct bd_batch_finalizer *f = arg;
    struct final_run *r = f->run;
    int32_t from = -1, to = -1;
    int rc;

    if (status < 0) {
        final_run_end(f, status, "read_lines", message);
        return;
    }
    if (n > 0 && (r->page = calloc(n, sizeof(*r->page))) == NULL) {
        final_run_end(f, BD_ENOMEM, "read_lines", NULL);
        return;
    }
    for (unsigned i = 0; i < n; i++) {
        const struct bd_batch_line *l = &lines[i];
        struct final_line *p = &r->page[i];
        *p = (struct final_line){ .ord = l->ord, .first_item = l->first_item,
                                  .items = l->items, .vectors = l->vectors,
                                  .is_base64 = l->is_base64,
                                  .custom_id = final_dup(l->custom_id),
                                  .error_code = final_dup(l->error_code),
                                  .error_message = final_dup(l->error_message) };
        r->page_n = i + 1;
        if (p->custom_id == NULL || (l->error_code && p->error_code == NULL) ||
            (l->error_message && p->error_message == NULL)) {
            final_run_end(f, BD_ENOMEM, "read_lines", NULL);
            return;
        }
        if (final_line_is_ok(p)) {
            from = from < 0 ? p->first_item : from;
            to = p->first_item + p->items;
        }
    }
    r->is_page_last = n == 0;
    if (n > 0)
        r->next_ord = r->page[n - 1].ord + 1;
    if (n == 0) {
        final_end_pass(f);
        return;
    }
    if (r->pass == PASS_ERROR || from < 0) {
        final_format_page(f);
        return;
    }
    rc = bd_batch_store_read_vectors(f->deps.pg, bd_file_upload_get_conn(r->up), r->job_id, from,
                                     to, final_on_vectors, f);
    if (rc < 0)
        final_run_end(f, rc, "read_vectors", NULL);
}

static void final_next_page(struct bd_batch_finalizer *f)
{
    struct final_run *r = f->run;
    int rc;

    if (f->is_stopping) {                   /* shutdown: give the batch back, promptly */
        final_run_end(f, BD_ECANCELED, "stop", NULL);
        return;
    }
    /* Every line went to the output file: the error pass would read them all again to
     * find none, so it ends here, with no error file, as it would have. */
    if (r->pass == PASS_ERROR && r->counts[PASS_OUTPUT] == r->lines) {
        final_end_pass(f);
        return;
    }
    if (uv_now(f->deps.loop) - r->renewed_ms >= FINAL_RENEW_MS) {   /* a long finalize */
        r->renewed_ms = uv_now(f->deps.loop);
        (void)bd_batch_store_renew(f->deps.pg, r->id, f->deps.owner, FINAL_LEASE_S,
                                   final_on_release_ignored, NULL);
    }
    rc = bd_batch_store_read_lines(f->deps.pg, bd_file_upload_get_conn(r->up), r->id, r->job_id,
                                   r->next_ord, FINAL_PAGE_LINES, FINAL_PAGE_ITEMS,
                                   final_on_lines, f);
    if (rc < 0)
        final_run_end(f, rc, "read_lines", NULL);
}

static void final_on_upload_open(int status, const char *message, void *arg)
{
    struct bd_batch_finalizer *f = arg;

    if (status < 0) {
        if (status == BD_ECANCELED)
            f->run->up = NULL;
        final_run_end(f, status, "open", message);
        return;
    }
    final_next_page(f);
}

static void final_on_stale_deleted(int status, const char *message, void *arg)
{
    struct bd_batch_finalizer *f = arg;
    struct final_run *r = f->run;
    int rc;

    if (status < 0 && status != BD_ENOTFOUND) {
        final_run_end(f, status, "delete_stale", message);
        return;
    }
    rc = bd_file_upload_open(f->deps.pg, r->file_id[r->pass], final_on_upload_open, f, &r->up);
    if (rc < 0) {
        r->up = NULL;
        final_run_end(f, rc, "open", NULL);
    }
}

/* A pass: the file a finalizer that died may have committed goes, a new upload begins. */
static void final_begin_pass(struct bd_batch_finalizer *f)
{
    struct final_run *r = f->run;
    int rc;

    r->next_ord = 0;
    r->bytes = r->newlines = r->put_newlines = 0;
    r->is_page_last = false;
    bd_buf_reset(&r->out);
    rc = bd_file_store_delete(f->deps.pg, r->file_id[r->pass], final_on_stale_deleted, f);
    if (rc < 0)
        final_run_end(f, rc, "delete_stale", NULL);
}

/* ---- claims ------------------------------------------------------------------------------ */

static void final_on_released(int status, const char *message, void *arg)
{
    struct bd_batch_finalizer *f = arg;

    final_run_end(f, status, "release", message);
}

/* The job of an expired or cancelled batch was asked to stop: the lease goes back, and the
 * batch is finalized once the job has ended. */
static void final_on_job_cancelled(int status, enum bd_job_state state, bool is_cancel_requested,
                                   void *arg)
{
    struct bd_batch_finalizer *f = arg;
    struct final_run *r = f->run;
    int rc;

    (void)state;
    (void)is_cancel_requested;
    if (status < 0 && status != BD_ECONFLICT && status != BD_ENOTFOUND) {
        final_run_end(f, status, "cancel_job", NULL);
        return;
    }
    bd_log(BD_LOG_INFO, "batch", "batch=%s job=%s event=%s", r->id, r->job_id,
           r->is_expired ? "expired" : "cancel_redone");
    rc = bd_batch_store_release(f->deps.pg, r->id, f->deps.owner, 0, final_on_released, f);
    if (rc < 0)
        final_run_end(f, rc, "release", NULL);
}

static void final_on_claim(int status, const struct bd_batch_claim *c, const char *message,
                           void *arg)
{
    struct bd_batch_finalizer *f = arg;
    struct final_run *r;
    int rc;

    if (status == BD_OK && c != NULL && f->is_stopping)   /* claimed as the stop came */
        (void)bd_batch_store_release(f->deps.pg, c->id, f->deps.owner, 0,
                                     final_on_release_ignored, NULL);
    if (status < 0 || c == NULL || f->is_stopping) {
        if (status < 0 && status != BD_ECANCELED)
            bd_log(BD_LOG_WARN, "batch", "event=claim_failed error=%s%s%s", bd_strerror(status),
                   message ? " message=" : "", message ? message : "");
        f->is_busy = false;
        /* nothing to do, or the claim failed (a store down, read-only): wait an interval;
         * a kick that came meanwhile looks again at once */
        final_schedule(f, status == BD_OK && f->is_kicked && !f->is_stopping
                              ? 0 : (uint64_t)(f->deps.interval_s * 1000.0));
        return;
    }
    if ((r = calloc(1, sizeof(*r))) == NULL ||
        (c->job_error_code && (r->job_error_code = strdup(c->job_error_code)) == NULL) ||
        (c->job_error_message && (r->job_error_message = strdup(c->job_error_message)) == NULL)) {
        f->run = r;
        final_run_end(f, BD_ENOMEM, "claim", NULL);
        return;
    }
    f->run = r;
    bd_buf_init(&r->out);
    bd_buf_init(&r->scratch);
    r->renewed_ms = uv_now(f->deps.loop);
    snprintf(r->id, sizeof(r->id), "%s", c->id);
    snprintf(r->job_id, sizeof(r->job_id), "%s", c->job_id);
    snprintf(r->model, sizeof(r->model), "%s", c->model ? c->model : "");
    r->lines = c->lines;
    r->is_expired = c->is_expired;
    r->is_cancelled = c->is_cancelling || strcmp(c->job_status, "cancelled") == 0;
    if (!c->is_job_terminal) {
        r->is_cancel_path = true;
        rc = bd_job_cancel(f->deps.jobs, r->job_id, final_on_job_cancelled, f);
        if (rc < 0)
            final_run_end(f, rc, "cancel_job", NULL);
        return;
    }
    bd_batch_file_id(r->id, false, r->file_id[PASS_OUTPUT]);
    bd_batch_file_id(r->id, true, r->file_id[PASS_ERROR]);
    r->pass = PASS_OUTPUT;
    final_begin_pass(f);
}

static void final_on_timer(uv_timer_t *t)
{
    struct bd_batch_finalizer *f = t->data;
    int rc;

    if (f->is_busy || f->is_stopping)
        return;
    if (!bd_job_engine_is_ready(f->deps.jobs)) {     /* the schema is not there yet */
        final_schedule(f, (uint64_t)(f->deps.interval_s * 1000.0));
        return;
    }
    f->is_kicked = false;
    f->is_busy = true;
    f->last_claim_ms = uv_now(f->deps.loop);
    rc = bd_batch_store_claim(f->deps.pg, f->deps.owner, FINAL_LEASE_S, final_on_claim, f);
    if (rc < 0) {
        f->is_busy = false;
        final_schedule(f, (uint64_t)(f->deps.interval_s * 1000.0));
    }
}

static void final_on_timer_closed(uv_handle_t *h)
{
    struct bd_batch_finalizer *f = h->data;
    void (*cb)(void *) = f->stop_cb;
    void *arg = f->stop_arg;

    free(f);
    if (cb)
        cb(arg);
}

static void final_schedule(struct bd_batch_finalizer *f, uint64_t ms)
{
    if (f->is_stopping) {
        if (!f->is_busy && !uv_is_closing((uv_handle_t *)&f->timer))
            uv_close((uv_handle_t *)&f->timer, final_on_timer_closed);
        return;
    }
    uv_timer_start(&f->timer, final_on_timer, ms, 0);
}

/* A job that ran here ended: if it was a batch's, its batch can be finalized now rather
 * than at the next sweep. */
static void final_on_job_progress(const char *job_id, bool is_final, void *arg)
{
    (void)job_id;
    if (is_final)
        bd_batch_finalizer_kick(arg);
}

struct bd_batch_finalizer *bd_batch_finalizer_start(const struct bd_batch_final_deps *deps)
{
    struct bd_batch_finalizer *f = calloc(1, sizeof(*f));

    if (f == NULL)
        return NULL;
    f->deps = *deps;
    uv_timer_init(deps->loop, &f->timer);
    f->timer.data = f;
    f->ended = (struct bd_job_listener){ .job_id = NULL, .cb = final_on_job_progress, .arg = f };
    bd_job_engine_listen(deps->jobs, &f->ended);
    final_schedule(f, (uint64_t)(deps->interval_s * 1000.0));
    return f;
}

void bd_batch_finalizer_kick(struct bd_batch_finalizer *f)
{
    uint64_t since, wait;

    if (f == NULL || f->is_stopping || f->is_kicked)
        return;
    f->is_kicked = true;                    /* a claim in flight looks again after it */
    if (f->is_busy)
        return;
    since = uv_now(f->deps.loop) - f->last_claim_ms;
    wait = since >= FINAL_KICK_SPACING_MS ? 0 : FINAL_KICK_SPACING_MS - since;
    uv_timer_start(&f->timer, final_on_timer, wait, 0);
}

void bd_batch_finalizer_stop(struct bd_batch_finalizer *f, void (*cb)(void *arg), void *arg)
{
    f->is_stopping = true;
    f->stop_cb = cb;
    f->stop_arg = arg;
    bd_job_engine_unlisten(f->deps.jobs, &f->ended);
    uv_timer_stop(&f->timer);
    if (!f->is_busy)
        uv_close((uv_handle_t *)&f->timer, final_on_timer_closed);
}
