/* batch_create.c -- POST /v1/batches underneath (batch.h, bd_batch_create): an uploaded
 * JSON Lines file becomes a bulk_embed job.
 *
 * Two passes over the file, chunk by chunk (file_store.h), never holding it whole: the
 * first validates every line (JSON, custom_id unique, method, url, one configured model,
 * inputs, encoding_format, dimensions) and collects the first errors with their line
 * numbers; a file with errors becomes a failed batch and no job. The second cuts the inputs
 * into the job's batches as a streamed job (job_submit.h: one transaction) and writes the
 * batch's lines and row on that transaction's connection (batch_store.h), so the job and
 * its batch commit together or not at all.
 *
 * Owns each create's record from the call to its callback. Memory: a chunk's lines and
 * batches at a time, plus the set of custom_ids (bounded by openai.max_batch_lines).
 * Loop thread only.  SPDX-License-Identifier: MIT
 */
#include "batchd/batch.h"

#include "batchd/buf.h"
#include "batchd/config.h"
#include "batchd/error.h"
#include "batchd/file_store.h"
#include "batchd/hashtab.h"
#include "batchd/job_submit.h"
#include "batchd/job_types.h"
#include "batchd/log.h"
#include "batchd/pg_store.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Longest line kept (a line with 2,048 inputs of a few KiB each fits easily). */
#define CREATE_LINE_MAX (32u << 20)
#define CREATE_CUSTOM_ID_MAX 512
#define CREATE_INPUTS_MAX 2048
#define CREATE_TEXT_MAX (1u << 20)
/* Arena blocks for custom_ids. */
#define CREATE_ARENA_BLOCK (64u * 1024u)
/* A chunk's lines are parsed this many bytes per loop turn (about 400 lines, a few ms), so
 * a 1 MiB chunk never holds the loop for its whole parse. */
#define CREATE_SLICE_BYTES (64u * 1024u)

struct create_arena {
    struct create_arena *next;
    size_t used;
    char data[];
};

/* One line's request, valid while its JSON is. */
struct create_line {
    const char *custom_id;
    size_t custom_id_len;
    json_t *input;                    /* a string or an array of strings */
    unsigned inputs;
    bool is_base64;
};

struct bd_batch_create {
    struct bd_job_submit_deps deps;
    uv_timer_t slice_timer;           /* the next slice of the chunk in hand, next turn */
    struct bd_buf chunk;              /* the chunk in hand (the store's is borrowed) */
    size_t chunk_pos;
    bd_batch_created_cb cb;
    void *arg;
    char id[BD_BATCH_ID_LEN + 1];
    char file_id[BD_FILE_ID_LEN + 1];
    char *metadata_json;
    int priority;
    unsigned chunks, next_chunk;
    int pass;                         /* 1: validate, 2: build */
    struct bd_buf carry;              /* a line cut by a chunk's end */
    bool is_skipping;                 /* an overlong line: drop bytes up to its newline */
    int32_t line_no;                  /* file line of the next line (from 1) */
    /* pass 1 */
    struct bd_htab ids;               /* custom_id -> line */
    struct create_arena *arena;
    json_t *errors;
    unsigned error_count;             /* all of them, kept or not */
    char model[128];
    unsigned dim;
    int64_t lines, items;
    /* pass 2 */
    struct bd_job_stream *st;
    unsigned batch_size;
    struct bd_buf batch;              /* the batch being filled: a JSON array's text */
    unsigned batch_items;
    struct bd_job_payload *pending;   /* full batches waiting for the stream */
    unsigned *pending_items;
    unsigned pending_count, pending_cap;
    struct bd_buf copy;               /* batch_lines rows waiting */
    unsigned copy_rows;
    int32_t ord, next_item;
    bool is_last_chunk;
    bool is_aborted;                  /* bd_batch_create_abort: stop at the next step */
    int failed;                       /* pass 2: the first error (< 0) */
};

static void create_read_next(struct bd_batch_create *bc);
static void create_flush(struct bd_batch_create *bc);

static void create_on_timer_closed(uv_handle_t *h)
{
    struct bd_batch_create *bc = h->data;

    while (bc->arena) {
        struct create_arena *n = bc->arena->next;
        free(bc->arena);
        bc->arena = n;
    }
    bd_htab_free(&bc->ids);
    json_decref(bc->errors);
    bd_buf_free(&bc->carry);
    bd_buf_free(&bc->batch);
    bd_buf_free(&bc->copy);
    for (unsigned i = 0; i < bc->pending_count; i++)
        free(bc->pending[i].data);
    free(bc->pending);
    free(bc->pending_items);
    free(bc->metadata_json);
    bd_buf_free(&bc->chunk);
    free(bc);
}

/* The record goes once its timer has closed (next loop turn). */
static void create_free(struct bd_batch_create *bc)
{
    uv_close((uv_handle_t *)&bc->slice_timer, create_on_timer_closed);
}

static void create_finish(struct bd_batch_create *bc, int status, const char *message)
{
    if (bc->st) {
        bd_job_stream_abort(bc->st);
        bc->st = NULL;
    }
    if (status < 0 && status != BD_ENOTFOUND && status != BD_EINVAL && status != BD_EBUSY &&
        status != BD_ECANCELED)
        bd_log(BD_LOG_WARN, "batch", "batch=%s file=%s event=create_failed error=%s%s%s",
               bc->id, bc->file_id, bd_strerror(status), message ? " message=" : "",
               message ? message : "");
    if (status == BD_ECANCELED)
        bd_log(BD_LOG_INFO, "batch", "batch=%s file=%s event=create_cancelled pass=%d",
               bc->id, bc->file_id, bc->pass);
    bc->cb(status, status == BD_OK ? bc->id : NULL, message, bc->arg);
    create_free(bc);
}

/* A copy of s[0..n) that lives as long as bc (the custom_id set's keys). */
static const char *create_keep(struct bd_batch_create *bc, const char *s, size_t n)
{
    struct create_arena *a = bc->arena;

    if (a == NULL || CREATE_ARENA_BLOCK - a->used < n) {
        size_t cap = n > CREATE_ARENA_BLOCK ? n : CREATE_ARENA_BLOCK;
        if ((a = malloc(sizeof(*a) + cap)) == NULL)
            return NULL;
        a->used = 0;
        a->next = bc->arena;
        bc->arena = a;
    }
    char *p = a->data + a->used;
    memcpy(p, s, n);
    a->used += n;
    return p;
}

/* ---- one line ---------------------------------------------------------------------------- */

/* Record a validation error (the first BD_BATCH_MAX_ERRORS are kept). BD_OK or BD_ENOMEM. */
static int create_error(struct bd_batch_create *bc, const char *code, const char *param,
                        const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int create_error(struct bd_batch_create *bc, const char *code, const char *param,
                        const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    json_t *e;

    if (bc->error_count++ >= BD_BATCH_MAX_ERRORS)
        return BD_OK;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    /* line_no 0: an error of the whole file (line null) */
    e = json_pack("{s:s, s:s, s:s?, s:o}", "code", code, "message", msg, "param", param,
                  "line", bc->line_no > 0 ? json_integer(bc->line_no) : json_null());
    return e && json_array_append_new(bc->errors, e) == 0 ? BD_OK : BD_ENOMEM;
}

static bool create_is_text(json_t *t)
{
    return json_is_string(t) && json_string_length(t) > 0 &&
           json_string_length(t) <= CREATE_TEXT_MAX;
}

/* Check one parsed line into *out. BD_OK, BD_EINVAL (recorded in pass 1), BD_ENOMEM. */
static int create_check(struct bd_batch_create *bc, json_t *root, struct create_line *out)
{
    const struct bd_config *cfg = bc->deps.cfg;
    json_t *v, *body;
    const char *model;

    if (!json_is_object(root))
        return create_error(bc, "invalid_request", NULL, "line %d is not a JSON object",
                            bc->line_no) ?: BD_EINVAL;
    v = json_object_get(root, "custom_id");
    if (!json_is_string(v) || json_string_length(v) == 0 ||
        json_string_length(v) > CREATE_CUSTOM_ID_MAX)
        return create_error(bc, "invalid_request", "custom_id", "line %d: custom_id must be a "
                            "string of 1 to %d bytes", bc->line_no, CREATE_CUSTOM_ID_MAX)
               ?: BD_EINVAL;
    out->custom_id = json_string_value(v);
    out->custom_id_len = json_string_length(v);
    v = json_object_get(root, "method");
    if (!json_is_string(v) || strcmp(json_string_value(v), "POST") != 0)
        return create_error(bc, "invalid_request", "method", "line %d: method must be "
                            "\"POST\"", bc->line_no) ?: BD_EINVAL;
    v = json_object_get(root, "url");
    if (!json_is_string(v) || strcmp(json_string_value(v), BD_BATCH_ENDPOINT) != 0)
        return create_error(bc, "invalid_url", "url", "line %d: url must be \"%s\", the "
                            "batch's endpoint (the only one batchd runs)", bc->line_no,
                            BD_BATCH_ENDPOINT) ?: BD_EINVAL;
    body = json_object_get(root, "body");
    if (!json_is_object(body))
        return create_error(bc, "invalid_request", "body", "line %d: body must be an object",
                            bc->line_no) ?: BD_EINVAL;
    v = json_object_get(body, "model");
    model = json_string_value(v);
    if (model == NULL || bd_config_get_model(cfg, model) == NULL)
        return create_error(bc, "model_not_found", "body.model", "line %d: body.model must "
                            "name a model batchd serves (got %.64s)", bc->line_no,
                            model ? model : "none") ?: BD_EINVAL;
    if (bc->model[0] == '\0') {
        snprintf(bc->model, sizeof(bc->model), "%s", model);
        bc->dim = bd_config_get_model(cfg, model)->dimensions;
    } else if (strcmp(bc->model, model) != 0) {
        return create_error(bc, "mismatched_model", "body.model", "line %d: every request "
                            "of a batch must use one model (line 1's is %.64s, this is "
                            "%.64s)", bc->line_no, bc->model, model) ?: BD_EINVAL;
    }
    v = json_object_get(body, "input");
    out->input = v;
    if (create_is_text(v)) {
        out->inputs = 1;
    } else if (json_is_array(v) && json_array_size(v) > 0 &&
               json_array_size(v) <= CREATE_INPUTS_MAX) {
        size_t i;
        json_t *t;
        json_array_foreach(v, i, t) {
            if (!create_is_text(t))
                return create_error(bc, "invalid_request", "body.input", "line %d: "
                                    "body.input[%zu] must be a non-empty string of at most "
                                    "%u bytes (token arrays are not supported)", bc->line_no,
                                    i, CREATE_TEXT_MAX) ?: BD_EINVAL;
        }
        out->inputs = (unsigned)json_array_size(v);
    } else {
        return create_error(bc, "invalid_request", "body.input", "line %d: body.input must "
                            "be a non-empty string or an array of 1 to %d of them",
                            bc->line_no, CREATE_INPUTS_MAX) ?: BD_EINVAL;
    }
    v = json_object_get(body, "encoding_format");
    out->is_base64 = json_is_string(v) && strcmp(json_string_value(v), "base64") == 0;
    if (v && !json_is_null(v) && !out->is_base64 &&
        !(json_is_string(v) && strcmp(json_string_value(v), "float") == 0))
        return create_error(bc, "invalid_request", "body.encoding_format", "line %d: "
                            "encoding_format must be \"float\" or \"base64\"", bc->line_no)
               ?: BD_EINVAL;
    v = json_object_get(body, "dimensions");
    if (v && !json_is_null(v) &&
        (!json_is_integer(v) || json_integer_value(v) != (json_int_t)bc->dim))
        return create_error(bc, "invalid_request", "body.dimensions", "line %d: dimensions "
                            "must be the model's (%u) or absent: batchd does not shorten "
                            "vectors", bc->line_no, bc->dim) ?: BD_EINVAL;
    return BD_OK;
}

/* Pass 1: a valid line counts, and its custom_id must be new. */
static int create_validate_line(struct bd_batch_create *bc, const struct create_line *l)
{
    bool is_new;
    const char *key;
    uint32_t *slot;

    if ((uint64_t)bc->lines + 1 > bc->deps.cfg->openai_max_batch_lines) {
        bool is_first = bc->lines == bc->deps.cfg->openai_max_batch_lines;
        bc->lines++;
        return is_first ? create_error(bc, "too_many_requests", NULL, "line %d: a batch "
                                       "holds at most %u requests (openai.max_batch_lines)",
                                       bc->line_no, bc->deps.cfg->openai_max_batch_lines)
                        : BD_OK;
    }
    slot = bd_htab_get(&bc->ids, l->custom_id, l->custom_id_len);
    if (slot)
        return create_error(bc, "duplicate_custom_id", "custom_id", "line %d: custom_id "
                            "'%.128s' is used by line %u already; each must be unique",
                            bc->line_no, l->custom_id, *slot);
    if ((key = create_keep(bc, l->custom_id, l->custom_id_len)) == NULL ||
        (slot = bd_htab_put(&bc->ids, key, l->custom_id_len, &is_new)) == NULL)
        return BD_ENOMEM;
    *slot = (uint32_t)bc->line_no;
    bc->lines++;
    bc->items += l->inputs;
    return BD_OK;
}

/* Pass 2: the line's inputs join the batches, the line its COPY. */
static int create_build_line(struct bd_batch_create *bc, const struct create_line *l)
{
    for (unsigned i = 0; i < l->inputs; i++) {
        json_t *t = json_is_string(l->input) ? l->input : json_array_get(l->input, i);
        bd_buf_puts(&bc->batch, bc->batch_items ? ",{\"text\":" : "[{\"text\":");
        bd_buf_json_string(&bc->batch, json_string_value(t), json_string_length(t));
        bd_buf_puts(&bc->batch, "}");
        if (++bc->batch_items == bc->batch_size) {
            if (bc->pending_count == bc->pending_cap) {
                unsigned cap = bc->pending_cap ? bc->pending_cap * 2 : 16;
                struct bd_job_payload *p = realloc(bc->pending, cap * sizeof(*p));
                if (p)
                    bc->pending = p;
                unsigned *n = p ? realloc(bc->pending_items, cap * sizeof(*n)) : NULL;
                if (n == NULL)
                    return BD_ENOMEM;
                bc->pending_items = n;
                bc->pending_cap = cap;
            }
            bd_buf_puts(&bc->batch, "]");
            if (bc->batch.is_failed)
                return BD_ENOMEM;
            struct bd_job_payload *p = &bc->pending[bc->pending_count];
            p->data = bd_buf_steal(&bc->batch, &p->len);
            bc->pending_items[bc->pending_count++] = bc->batch_items;
            bc->batch_items = 0;
        }
    }
    if (bc->copy_rows == 0)
        bd_pg_copy_begin(&bc->copy);
    bd_batch_store_put_line(&bc->copy, bc->id, bc->ord, bc->line_no, l->custom_id,
                            l->custom_id_len, bc->next_item, (int32_t)l->inputs, l->is_base64);
    bc->copy_rows++;
    bc->ord++;
    bc->next_item += (int32_t)l->inputs;
    return bc->batch.is_failed || bc->copy.is_failed ? BD_ENOMEM : BD_OK;
}

/* One whole line (without its newline). BD_OK or BD_ENOMEM; in pass 2 any other failure
 * is a surprise (the file changed between the passes?) and stops the create. */
static int create_line(struct bd_batch_create *bc, const char *s, size_t n)
{
    json_error_t jerr;
    struct create_line l;
    json_t *root;
    size_t i = 0;
    int rc;

    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r'))
        i++;
    if (i == n)
        return BD_OK;                       /* blank lines are skipped, as OpenAI does */
    /* Without JSON_ALLOW_NUL a "\\u0000" is refused here, with its line: PostgreSQL's text
     * (custom_id) and jsonb (the vectors' metadata) cannot hold it. */
    root = json_loadb(s, n, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL && json_error_code(&jerr) == json_error_null_character) {
        rc = create_error(bc, "invalid_request", NULL, "line %d holds a string with \\u0000 "
                          "(NUL), which batchd cannot store", bc->line_no);
        return bc->pass == 1 ? rc : BD_EINVAL;
    }
    if (root == NULL) {
        rc = create_error(bc, "invalid_json_line", NULL, "line %d is not valid JSON: %s",
                          bc->line_no, jerr.text);
        return bc->pass == 1 ? rc : BD_EINVAL;
    }
    rc = create_check(bc, root, &l);
    if (rc == BD_OK)
        rc = bc->pass == 1 ? create_validate_line(bc, &l) : create_build_line(bc, &l);
    else if (rc == BD_EINVAL && bc->pass == 1)
        rc = BD_OK;
    json_decref(root);
    return rc;
}

/* A chunk's bytes: whole lines are handled, a cut one waits in carry. */
static int create_feed(struct bd_batch_create *bc, const char *data, size_t len)
{
    size_t pos = 0;
    int rc;

    while (pos < len) {
        const char *nl = memchr(data + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - data) : len;
        size_t piece = end - pos;

        if (bc->is_skipping) {
            /* the rest of an overlong line */
        } else if (bc->carry.len + piece > CREATE_LINE_MAX) {
            bd_buf_reset(&bc->carry);
            bc->is_skipping = true;
            if ((rc = create_error(bc, "line_too_long", NULL, "line %d is longer than %u bytes",
                                   bc->line_no, CREATE_LINE_MAX)) < 0)
                return rc;
            if (bc->pass == 2)
                return BD_EINVAL;
        } else if (nl && bc->carry.len == 0) {
            if ((rc = create_line(bc, data + pos, piece)) < 0)
                return rc;
        } else {
            bd_buf_append(&bc->carry, data + pos, piece);
            if (bc->carry.is_failed)
                return BD_ENOMEM;
            if (nl) {
                rc = create_line(bc, bc->carry.data, bc->carry.len);
                bd_buf_reset(&bc->carry);
                if (rc < 0)
                    return rc;
            }
        }
        if (nl) {
            bc->is_skipping = false;
            bc->line_no++;
        }
        pos = nl ? end + 1 : len;
    }
    return BD_OK;
}

/* The file ended: its last line may have had no newline. */
static int create_feed_end(struct bd_batch_create *bc)
{
    int rc = BD_OK;

    if (bc->carry.len > 0 && !bc->is_skipping)
        rc = create_line(bc, bc->carry.data, bc->carry.len);
    bd_buf_reset(&bc->carry);
    bc->is_skipping = false;
    return rc;
}

/* ---- pass 1's end: a failed batch, or pass 2 ------------------------------------------- */

static void create_on_failed_row(int status, const char *message, void *arg)
{
    struct bd_batch_create *bc = arg;

    if (status == BD_OK)
        bd_log(BD_LOG_INFO, "batch", "batch=%s file=%s event=invalid errors=%u", bc->id,
               bc->file_id, bc->error_count);
    create_finish(bc, status == BD_OK ? BD_OK : status, message);
}

static void create_fail_batch(struct bd_batch_create *bc)
{
    struct bd_batch_new b = {
        .id = bc->id, .input_file_id = bc->file_id, .endpoint = BD_BATCH_ENDPOINT,
        .completion_window = BD_BATCH_WINDOW, .model = bc->model[0] ? bc->model : NULL,
        .metadata_json = bc->metadata_json, .lines = bc->lines,
        .window_s = bc->deps.cfg->openai_batch_expiry_s,
    };
    char *errors = json_dumps(bc->errors, JSON_COMPACT);
    int rc = errors ? bd_batch_store_insert_failed(bc->deps.pg, &b, errors,
                                                   create_on_failed_row, bc)
                    : BD_ENOMEM;

    free(errors);
    if (rc < 0)
        create_finish(bc, rc, NULL);
}

/* A stream operation's failure ends the create (BD_ECANCELED: the stream is gone already).
 * True when it did. */
static bool create_stream_failed(struct bd_batch_create *bc, int status)
{
    if (status >= 0)
        return false;
    if (status == BD_ECANCELED)
        bc->st = NULL;
    create_finish(bc, status, NULL);
    return true;
}

static void create_on_stream_open(int status, void *arg)
{
    struct bd_batch_create *bc = arg;

    if (create_stream_failed(bc, status))
        return;
    bc->next_chunk = 0;
    create_read_next(bc);
}

static void create_start_pass2(struct bd_batch_create *bc)
{
    const struct bd_config *cfg = bc->deps.cfg;
    char collection[160];
    char meta[256];
    struct bd_job_spec spec;
    int rc;

    bd_job_default_collection(bc->model, collection, sizeof(collection));
    /* The job's metadata names its batch, so the native API shows where a job came from. */
    snprintf(meta, sizeof(meta), "{\"openai_batch_id\":\"%s\",\"openai_input_file_id\":\"%s\"}",
             bc->id, bc->file_id);
    bc->batch_size = cfg->default_batch_size ? cfg->default_batch_size : 100;
    spec = (struct bd_job_spec){
        .op = BD_OP_BULK_EMBED,
        .model = bc->model,
        .collection = collection,
        .priority = bc->priority,
        .batch_size = bc->batch_size,
        .dim = bc->dim,
        /* the batch's window bounds the job; expiry (batch_final.c) ends it first */
        .timeout_s = cfg->openai_batch_expiry_s > cfg->job_timeout_s ? cfg->openai_batch_expiry_s
                                                                    : cfg->job_timeout_s,
        .max_retries = (int)cfg->retry_attempts,
        .metadata_json = meta,
    };
    bc->pass = 2;
    bc->line_no = 1;
    rc = bd_job_stream_open(&bc->deps, &spec, create_on_stream_open, bc, &bc->st);
    if (rc < 0) {
        bc->st = NULL;
        create_finish(bc, rc, NULL);
    }
}

static void create_end_pass1(struct bd_batch_create *bc)
{
    bc->line_no = 0;                          /* what follows is about the whole file */
    if (bc->error_count == 0 && bc->lines == 0)
        create_error(bc, "empty_file", NULL, "the input file holds no requests");
    if (bc->error_count == 0 && (uint64_t)bc->items > bc->deps.cfg->max_items_per_job)
        create_error(bc, "too_many_inputs", "body.input", "the file's requests hold %lld "
                     "inputs in all; a batch holds at most %u (jobs.max_items_per_job)",
                     (long long)bc->items, bc->deps.cfg->max_items_per_job);
    if (bc->error_count > 0) {
        create_fail_batch(bc);
        return;
    }
    create_start_pass2(bc);
}

/* ---- pass 2's writes --------------------------------------------------------------------- */

static void create_on_closed(int status, const struct bd_job_submitted *res, void *arg)
{
    struct bd_batch_create *bc = arg;

    bc->st = NULL;                          /* close owns it, whatever the status */
    if (status == BD_OK)
        bd_log(BD_LOG_INFO, "batch", "batch=%s job=%s file=%s event=created lines=%lld "
               "items=%lld model=%s", bc->id, res->job_id, bc->file_id, (long long)bc->lines,
               (long long)bc->items, bc->model);
    create_finish(bc, status, status == BD_EBUSY ? "the queue has no room for the batch's "
                  "inputs now; retry later" : NULL);
}

static void create_on_row(int status, const char *message, void *arg)
{
    struct bd_batch_create *bc = arg;
    int rc;

    if (status < 0) {
        create_finish(bc, status, message);
        return;
    }
    rc = bd_job_stream_close(bc->st, bc->dim, NULL, create_on_closed, bc);
    if (rc < 0)
        create_finish(bc, rc, NULL);
}

static void create_write_row(struct bd_batch_create *bc)
{
    struct bd_batch_new b = {
        .id = bc->id, .input_file_id = bc->file_id, .endpoint = BD_BATCH_ENDPOINT,
        .completion_window = BD_BATCH_WINDOW, .model = bc->model,
        .metadata_json = bc->metadata_json, .lines = bc->ord,
        .window_s = bc->deps.cfg->openai_batch_expiry_s,
    };
    int rc = bd_batch_store_insert(bd_job_stream_get_conn(bc->st), &b,
                                   bd_job_stream_get_id(bc->st), create_on_row, bc);
    if (rc < 0)
        create_finish(bc, rc, NULL);
}

static void create_on_lines_copied(int status, const char *message, void *arg)
{
    struct bd_batch_create *bc = arg;

    bd_buf_reset(&bc->copy);                /* sent: the COPY borrowed it until now */
    if (status < 0) {
        create_finish(bc, status, message);
        return;
    }
    create_flush(bc);
}

static void create_on_put(int status, void *arg)
{
    struct bd_batch_create *bc = arg;

    if (create_stream_failed(bc, status))
        return;
    create_flush(bc);
}

/* Write what the chunk gave (its full batches, then its lines), then read on; after the
 * last chunk, the last partial batch, the lines, the batch's row and the COMMIT. */
static void create_flush(struct bd_batch_create *bc)
{
    int rc;

    if (bc->is_aborted) {
        create_finish(bc, BD_ECANCELED, NULL);
        return;
    }
    if (bc->is_last_chunk && bc->batch_items > 0 && bc->pending_count == 0) {
        bd_buf_puts(&bc->batch, "]");
        if (bc->batch.is_failed || (bc->pending == NULL &&
            ((bc->pending = malloc(sizeof(*bc->pending))) == NULL ||
             (bc->pending_items = malloc(sizeof(*bc->pending_items))) == NULL))) {
            create_finish(bc, BD_ENOMEM, NULL);
            return;
        }
        bc->pending_cap = bc->pending_cap ? bc->pending_cap : 1;
        bc->pending[0].data = bd_buf_steal(&bc->batch, &bc->pending[0].len);
        bc->pending_items[0] = bc->batch_items;
        bc->pending_count = 1;
        bc->batch_items = 0;
    }
    if (bc->pending_count > 0) {
        unsigned n = bc->pending_count;
        bc->pending_count = 0;              /* put takes the payloads, also on error */
        rc = bd_job_stream_put(bc->st, bc->pending, bc->pending_items, n, create_on_put, bc);
        if (rc < 0)
            create_finish(bc, rc, NULL);
        return;
    }
    if (bc->copy_rows > 0) {
        bc->copy_rows = 0;
        rc = bd_pg_copy_end(&bc->copy);
        if (rc == BD_OK)
            rc = bd_batch_store_copy_lines(bd_job_stream_get_conn(bc->st), &bc->copy,
                                           create_on_lines_copied, bc);
        if (rc < 0)
            create_finish(bc, rc, NULL);
        return;
    }
    if (bc->is_last_chunk) {
        create_write_row(bc);
        return;
    }
    create_read_next(bc);
}

/* ---- reading the file -------------------------------------------------------------------- */

/* The chunk in hand was parsed whole: on to the next, or to the pass's end. */
static void create_chunk_done(struct bd_batch_create *bc)
{
    int rc = BD_OK;

    if (bc->next_chunk == bc->chunks)
        rc = create_feed_end(bc);
    if (rc < 0) {
        create_finish(bc, rc, rc == BD_EINVAL ? "the input file changed while it was read"
                                              : NULL);
        return;
    }
    if (bc->pass == 1) {
        if (bc->next_chunk < bc->chunks)
            create_read_next(bc);
        else
            create_end_pass1(bc);
        return;
    }
    bc->is_last_chunk = bc->next_chunk == bc->chunks;
    create_flush(bc);
}

/* Parse the next slice of the chunk in hand: up to CREATE_SLICE_BYTES and on to the end
 * of the line there; the rest waits for the next loop turn. */
static void create_on_slice(uv_timer_t *t)
{
    struct bd_batch_create *bc = t->data;
    const char *p = bc->chunk.data + bc->chunk_pos;
    size_t left = bc->chunk.len - bc->chunk_pos, n = left;
    int rc;

    if (bc->is_aborted) {
        create_finish(bc, BD_ECANCELED, NULL);
        return;
    }
    if (left > CREATE_SLICE_BYTES) {
        const char *nl = memchr(p + CREATE_SLICE_BYTES, '\n', left - CREATE_SLICE_BYTES);
        n = nl ? (size_t)(nl - p) + 1 : left;
    }
    rc = create_feed(bc, p, n);
    if (rc < 0) {
        create_finish(bc, rc, rc == BD_EINVAL ? "the input file changed while it was read"
                                              : NULL);
        return;
    }
    bc->chunk_pos += n;
    if (bc->chunk_pos < bc->chunk.len) {
        uv_timer_start(&bc->slice_timer, create_on_slice, 0, 0);
        return;
    }
    create_chunk_done(bc);
}

static void create_on_chunk(int status, const char *data, size_t len, const char *message,
                            void *arg)
{
    struct bd_batch_create *bc = arg;

    if (status < 0) {
        /* the file was deleted between its row and this chunk */
        create_finish(bc, status == BD_ENOTFOUND ? BD_EINVAL : status,
                      status == BD_ENOTFOUND ? "the input file was deleted meanwhile" : message);
        return;
    }
    bc->next_chunk++;
    bd_buf_reset(&bc->chunk);
    bd_buf_append(&bc->chunk, data, len);
    if (bc->chunk.is_failed) {
        create_finish(bc, BD_ENOMEM, NULL);
        return;
    }
    bc->chunk_pos = 0;
    create_on_slice(&bc->slice_timer);
}

static void create_read_next(struct bd_batch_create *bc)
{
    int rc;

    if (bc->is_aborted) {
        create_finish(bc, BD_ECANCELED, NULL);
        return;
    }
    if (bc->next_chunk >= bc->chunks) {       /* an empty file: no chunk at all */
        if (bc->pass == 1) {
            create_end_pass1(bc);
        } else {
            bc->is_last_chunk = true;
            create_flush(bc);
        }
        return;
    }
    /* Pass 2 holds the job's transaction connection: it reads there too, never waiting
     * for a second connection of the same pool (two creates could wait on each other). */
    rc = bc->pass == 2 ? bd_file_store_read_chunk_on(bd_job_stream_get_conn(bc->st), bc->file_id,
                                                     bc->next_chunk, create_on_chunk, bc)
                       : bd_file_store_read_chunk(bc->deps.pg, bc->file_id, bc->next_chunk,
                                                  create_on_chunk, bc);
    if (rc < 0)
        create_finish(bc, rc, NULL);
}

static void create_on_file(int status, const struct bd_file_row *f, const char *message,
                           void *arg)
{
    struct bd_batch_create *bc = arg;
    char msg[160];

    if (status < 0) {
        if (status == BD_ENOTFOUND)
            snprintf(msg, sizeof(msg), "No such File object: %s", bc->file_id);
        create_finish(bc, status, status == BD_ENOTFOUND ? msg : message);
        return;
    }
    if (strcmp(f->purpose, "batch") != 0) {
        snprintf(msg, sizeof(msg), "the input file's purpose is '%.32s'; a batch's input must "
                 "be uploaded with purpose 'batch'", f->purpose);
        create_finish(bc, BD_EINVAL, msg);
        return;
    }
    bc->chunks = f->chunks;
    create_read_next(bc);
}

void bd_batch_create_abort(struct bd_batch_create *bc)
{
    bc->is_aborted = true;
}

int bd_batch_create(const struct bd_job_submit_deps *deps, const struct bd_batch_request *r,
                    bd_batch_created_cb cb, void *arg, struct bd_batch_create **out)
{
    struct bd_batch_create *bc;
    int rc;

    if (r->input_file_id == NULL || strlen(r->input_file_id) != BD_FILE_ID_LEN)
        return BD_ENOTFOUND;
    if ((bc = calloc(1, sizeof(*bc))) == NULL)
        return BD_ENOMEM;
    uv_timer_init(r->loop, &bc->slice_timer);
    bc->slice_timer.data = bc;
    bd_buf_init(&bc->chunk);
    bc->deps = *deps;
    bc->cb = cb;
    bc->arg = arg;
    bc->priority = r->priority;
    bc->pass = 1;
    bc->line_no = 1;
    memcpy(bc->file_id, r->input_file_id, BD_FILE_ID_LEN + 1);
    bd_buf_init(&bc->carry);
    bd_buf_init(&bc->batch);
    bd_buf_init(&bc->copy);
    bd_htab_init(&bc->ids);
    if ((rc = bd_batch_new_id(bc->id)) < 0 || (bc->errors = json_array()) == NULL ||
        (r->metadata_json && (bc->metadata_json = strdup(r->metadata_json)) == NULL)) {
        create_free(bc);
        return rc < 0 ? BD_EINTERNAL : BD_ENOMEM;
    }
    rc = bd_file_store_get(deps->pg, bc->file_id, create_on_file, bc);
    if (rc < 0) {
        create_free(bc);
        return rc;
    }
    *out = bc;
    return BD_OK;
}
