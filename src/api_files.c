/* api_files.c -- OpenAI-compatible files: POST /v1/files (multipart/form-data, streamed into
 * PostgreSQL), GET /v1/files, GET and DELETE /v1/files/{id}, GET /v1/files/{id}/content
 * (streamed out of PostgreSQL).
 *
 * Owns each upload's and each download's record from its headers to its answer (and to the
 * last store callback after it). Loop thread only. Memory is bounded by about two chunks
 * (file_store.h) per upload or download, never by the file: an upload's content is cut
 * into chunks as it arrives and each goes to PostgreSQL while the body is read on; the body
 * is paused while a chunk waits for the one before it. One transaction from the headers to
 * the COMMIT: a file is answered once durable, and a body cut midway, refused or too large
 * leaves nothing. A download reads a chunk, hands it to the socket and reads the next once
 * the client has taken most of it (the drain callback). Answers are in OpenAI's shapes
 * (api_v1.c); no SQL here (file_store.c).  SPDX-License-Identifier: MIT
 */
#include "batchd/api.h"
#include "api_internal.h"
#include "api_submit_stream.h"
#include "api_v1.h"

#include "batchd/buf.h"
#include "batchd/config.h"
#include "batchd/error.h"
#include "batchd/file_store.h"
#include "batchd/http_server.h"
#include "batchd/log.h"
#include "batchd/multipart.h"
#include "batchd/router.h"
#include "batchd/server.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Room in a body for the multipart framing and the other fields, beyond the file itself. */
#define FILES_BODY_SLACK (64u * 1024u)
/* An upload's client time, first byte to last, paused time excluded. */
#define FILES_TIMEOUT_MS (3600u * 1000u)
/* Longest filename kept (bytes); longer ones are refused. */
#define FILES_NAME_MAX 255
/* GET /v1/files: limit= from 1 to this, and its default (as OpenAI's). */
#define FILES_PAGE_MAX 10000
/* A download waits for the client when this much is still queued for it. */
#define FILES_STREAM_HIGH (1u << 20)

static const char files_purpose_batch[] = "batch";

/* The file object of the OpenAI API. NULL on ENOMEM. */
static json_t *files_object(const struct bd_file_row *f)
{
    return json_pack("{s:s, s:s, s:I, s:I, s:s, s:s, s:s, s:n, s:n}", "id", f->id,
                     "object", "file", "bytes", (json_int_t)f->bytes,
                     "created_at", (json_int_t)f->created_at, "filename", f->filename,
                     "purpose", f->purpose, "status", f->status, "status_details",
                     "expires_at");
}

/* A file id as we make them ("file-" and hex digits); anything else cannot name a file. */
static bool files_is_id(const char *id)
{
    size_t n = id ? strlen(id) : 0;

    if (n != BD_FILE_ID_LEN || strncmp(id, "file-", 5) != 0)
        return false;
    for (size_t i = 5; i < n; i++)
        if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f')))
            return false;
    return true;
}

static void files_not_found(struct bd_http_request *req, const char *id)
{
    char msg[160];

    snprintf(msg, sizeof(msg), "No such File object: %.64s", id ? id : "");
    bd__v1_respond_error(req, NULL, BD_ENOTFOUND, msg, "id", NULL, NULL);
}

/* A store call failed with err: logged once here, answered 503/500 (or 404). */
static void files_fail_store(struct bd_http_request *req, const char *rid, const char *id,
                             int err, const char *message)
{
    if (err == BD_ENOTFOUND) {
        files_not_found(req, id);
        return;
    }
    bd_log(BD_LOG_WARN, "api", "file=%s route=%s event=store_failed err=%s pg=\"%s\"",
           id ? id : "-", req->route ? req->route : "-", bd_err_name(err),
           message ? message : "");
    bd__v1_respond_error(req, rid, err == BD_ENOMEM || err == BD_EINTERNAL ? err : BD_EPG,
                         NULL, NULL, NULL, NULL);
}

/* ==== POST /v1/files ===================================================================== */

enum files_part { PART_NONE, PART_FILE, PART_PURPOSE, PART_OTHER };

struct files_upload {
    struct bd_http_request *req;
    struct bd_server *srv;
    struct bd_multipart *mp;
    struct bd_file_upload *up;        /* NULL once closed, aborted or never opened */
    char id[BD_FILE_ID_LEN + 1];
    char rid[BD__V1_REQUEST_ID_LEN + 1];
    size_t max_bytes;                 /* the file's limit (openai.max_file_bytes) */
    enum files_part part;
    bool has_file, has_purpose;
    char purpose[32];
    size_t purpose_len;
    char *filename;
    struct bd_buf chunk;              /* content not written yet; a chunk goes at a time */
    int64_t bytes;                    /* content received */
    int64_t lines_written;            /* newlines in the chunks sent */
    char last_byte;
    bool is_open;                     /* BEGIN done */
    bool is_writing;                  /* a store call is in flight: the record stays */
    bool is_paused;
    bool is_body_done;
    bool is_closing;
    bool is_answered;
    bool is_in_body;                  /* inside on_body: the record must outlive the call */
    bool is_counted;                  /* one of srv->submit_streams */
    bool is_freeing;
};

static void upload_pump(struct files_upload *u);

/* Give the upload's slot back once it is answered: what it still holds (a connection
 * rolling back, a COMMIT's answer) comes back within moments, and a client that goes on at
 * once with its next upload must not find the slot taken. */
static void upload_uncount(struct files_upload *u)
{
    if (!u->is_counted)
        return;
    u->is_counted = false;
    u->srv->submit_streams--;
    bd__stream_release_slot(u->srv);   /* a streamed submit waiting in line goes on */
}

static void upload_maybe_free(struct files_upload *u)
{
    if (!u->is_answered || u->is_writing || u->is_in_body || u->is_freeing)
        return;
    u->is_freeing = true;
    if (u->up) {
        bd_file_upload_abort(u->up);   /* nothing in flight: rolls back now */
        u->up = NULL;
    }
    upload_uncount(u);
    bd_multipart_free(u->mp);
    bd_buf_free(&u->chunk);
    free(u->filename);
    free(u);
}

/* Answer with err in OpenAI's shape and give the file up: nothing of it stays. */
static void upload_fail(struct files_upload *u, int err, const char *message, const char *param)
{
    if (!u->is_answered) {
        u->is_answered = true;
        bd_http_set_abort_cb(u->req, NULL, NULL);
        if (err == BD_EPG || err == BD_EINTERNAL)
            bd_log(BD_LOG_WARN, "api", "file=%s event=upload_failed err=%s pg=\"%s\"", u->id,
                   bd_err_name(err), message ? message : "");
        bd__v1_respond_error(u->req, u->rid, err, err == BD_EPG ? NULL : message, param, NULL,
                             err == BD_EUPLOADS ? "Retry-After: 5\r\n" : NULL);
        upload_uncount(u);
    }
    /* The COMMIT in flight is let be: it ends through upload_on_committed, which frees
     * what is left (the client is gone or answered; the file may or may not have been
     * stored, as with any answer lost on the way). */
    if (u->up && u->is_writing && !u->is_closing) {
        bd_file_upload_abort(u->up);   /* its callback comes with BD_ECANCELED */
        u->up = NULL;
    }
    upload_maybe_free(u);
}

static void upload_on_abort(struct bd_http_request *req, void *arg)
{
    struct files_upload *u = arg;

    (void)req;
    bd_log(BD_LOG_INFO, "api", "file=%s event=upload_abandoned bytes=%" PRId64, u->id, u->bytes);
    upload_fail(u, BD_ECANCELED, "client went away", NULL);
}

static void upload_too_large(struct files_upload *u)
{
    char msg[160];

    snprintf(msg, sizeof(msg), "the file is larger than %zu bytes (openai.max_file_bytes)",
             u->max_bytes);
    upload_fail(u, BD_ETOOLARGE, msg, "file");
}

/* ---- the parts ------------------------------------------------------------------------- */

static int upload_on_part_begin(void *arg, const struct bd_multipart_part *p)
{
    struct files_upload *u = arg;

    u->part = PART_OTHER;
    if (p->name && strcmp(p->name, "file") == 0) {
        const char *name = p->filename ? p->filename : "file";
        size_t n = strlen(name);
        if (u->has_file) {
            upload_fail(u, BD_EINVAL, "the body holds more than one 'file' part", "file");
            return BD_EINVAL;
        }
        if (n == 0 || n > FILES_NAME_MAX || !bd_utf8_is_valid(name, n)) {
            upload_fail(u, BD_EINVAL, "the file's filename must be 1 to 255 bytes of UTF-8",
                        "file");
            return BD_EINVAL;
        }
        if ((u->filename = strdup(name)) == NULL) {
            upload_fail(u, BD_ENOMEM, NULL, NULL);
            return BD_ENOMEM;
        }
        u->has_file = true;
        u->part = PART_FILE;
    } else if (p->name && strcmp(p->name, "purpose") == 0) {
        if (u->has_purpose) {
            upload_fail(u, BD_EINVAL, "the body holds more than one 'purpose' part", "purpose");
            return BD_EINVAL;
        }
        u->has_purpose = true;
        u->part = PART_PURPOSE;
    }
    return BD_OK;
}

static int upload_on_part_data(void *arg, const char *d, size_t n)
{
    struct files_upload *u = arg;

    if (u->part == PART_PURPOSE) {
        size_t room = sizeof(u->purpose) - 1 - u->purpose_len;
        memcpy(u->purpose + u->purpose_len, d, n < room ? n : room);
        u->purpose_len += n < room ? n : room;
        if (n > room)
            u->purpose_len = sizeof(u->purpose);     /* marks it too long */
        return BD_OK;
    }
    if (u->part != PART_FILE)
        return BD_OK;
    if ((uint64_t)u->bytes + n > u->max_bytes) {
        upload_too_large(u);
        return BD_ETOOLARGE;
    }
    bd_buf_append(&u->chunk, d, n);
    if (u->chunk.is_failed) {
        upload_fail(u, BD_ENOMEM, NULL, NULL);
        return BD_ENOMEM;
    }
    u->bytes += (int64_t)n;
    u->last_byte = d[n - 1];
    return BD_OK;
}

/* The purpose, once its part ended: only "batch" (the one purpose batchd has a use for). */
static bool upload_purpose_ok(struct files_upload *u)
{
    char msg[200];

    if (u->purpose_len < sizeof(u->purpose)) {
        u->purpose[u->purpose_len] = '\0';
        if (strcmp(u->purpose, files_purpose_batch) == 0)
            return true;
    }
    snprintf(msg, sizeof(msg), "'%.31s' is not a supported purpose: batchd accepts 'batch'",
             u->purpose_len < sizeof(u->purpose) ? u->purpose : "(too long)");
    upload_fail(u, BD_EINVAL, msg, "purpose");
    return false;
}

static int upload_on_part_end(void *arg)
{
    struct files_upload *u = arg;
    enum files_part part = u->part;

    u->part = PART_NONE;
    if (part == PART_PURPOSE && !upload_purpose_ok(u))
        return BD_EINVAL;
    return BD_OK;
}

static const struct bd_multipart_cbs upload_cbs = {
    upload_on_part_begin, upload_on_part_data, upload_on_part_end,
};

/* ---- the file in PostgreSQL ------------------------------------------------------------- */

/* Read on while the next chunk is not yet full or has somewhere to go. */
static void upload_flow(struct files_upload *u)
{
    bool must_wait = u->chunk.len >= BD_FILE_CHUNK_BYTES && (u->is_writing || !u->is_open);

    if (u->is_answered || u->is_body_done)
        return;
    if (must_wait && !u->is_paused) {
        u->is_paused = true;
        bd_http_body_pause(u->req);
    } else if (!must_wait && u->is_paused) {
        u->is_paused = false;
        bd_http_body_resume(u->req);
    }
}

/* A store call returned with status: false when the record was answered meanwhile (it is
 * freed now, if nothing else holds it) or the call failed (answered now). */
static bool upload_store_returned(struct files_upload *u, int status, const char *message)
{
    u->is_writing = false;
    if (status == BD_ECANCELED || u->is_answered) {
        if (status == BD_ECANCELED)
            u->up = NULL;              /* the store freed it after this callback */
        if (!u->is_answered)
            upload_fail(u, BD_ESHUTDOWN, NULL, NULL);
        upload_maybe_free(u);
        return false;
    }
    if (status < 0) {
        upload_fail(u, status, message, NULL);
        return false;
    }
    return true;
}

static void upload_on_written(int status, const char *message, void *arg)
{
    struct files_upload *u = arg;

    if (!upload_store_returned(u, status, message))
        return;
    u->is_open = true;
    upload_pump(u);
    upload_flow(u);
}

static void upload_on_committed(int status, const char *message, void *arg)
{
    struct files_upload *u = arg;

    u->up = NULL;                      /* the store frees the upload after this callback */
    if (!upload_store_returned(u, status, message))
        return;
    struct bd_file_row row = {
        .id = u->id, .purpose = files_purpose_batch, .filename = u->filename,
        .status = "processed", .bytes = u->bytes,
        .lines = u->lines_written + (u->bytes > 0 && u->last_byte != '\n'),
        .created_at = (int64_t)time(NULL),
    };
    bd_log(BD_LOG_INFO, "api", "file=%s event=file_created bytes=%" PRId64 " lines=%" PRId64,
           u->id, u->bytes, row.lines);
    u->is_answered = true;
    bd_http_set_abort_cb(u->req, NULL, NULL);
    bd__v1_respond_json(u->req, u->rid, 200, files_object(&row));
    upload_uncount(u);
    upload_maybe_free(u);
}

static int64_t upload_count_lines(const char *p, size_t n)
{
    int64_t lines = 0;
    const char *end = p + n;

    while ((p = memchr(p, '\n', (size_t)(end - p))) != NULL) {
        lines++;
        p++;
    }
    return lines;
}

/* The next chunk when one is full (or the body has ended), then the row and the COMMIT. */
static void upload_pump(struct files_upload *u)
{
    int rc;

    if (u->is_answered || u->is_writing || !u->is_open || u->up == NULL)
        return;
    if (u->chunk.len >= BD_FILE_CHUNK_BYTES || (u->is_body_done && u->chunk.len > 0)) {
        size_t n = u->chunk.len < BD_FILE_CHUNK_BYTES ? u->chunk.len : BD_FILE_CHUNK_BYTES;
        u->is_writing = true;
        rc = bd_file_upload_put(u->up, u->chunk.data, n, u->lines_written, upload_on_written, u);
        if (rc < 0) {
            u->is_writing = false;
            upload_fail(u, rc, NULL, NULL);
            return;
        }
        /* libpq copied the chunk: the buffer is free again. */
        u->lines_written += upload_count_lines(u->chunk.data, n);
        memmove(u->chunk.data, u->chunk.data + n, u->chunk.len - n);
        u->chunk.len -= n;
        return;
    }
    if (!u->is_body_done)
        return;
    struct bd_file_new f = {
        .purpose = files_purpose_batch, .filename = u->filename, .bytes = u->bytes,
        .lines = u->lines_written + (u->bytes > 0 && u->last_byte != '\n'),
        .created_at = (int64_t)time(NULL),
    };
    u->is_closing = true;
    u->is_writing = true;
    rc = bd_file_upload_close(u->up, &f, upload_on_committed, u);
    if (rc < 0) {
        u->is_writing = false;
        upload_fail(u, rc, NULL, NULL);
    }
}

/* ---- the body --------------------------------------------------------------------------- */

static void upload_body_end(struct files_upload *u)
{
    int rc = bd_http_body_get_status(u->req);

    if (rc == BD_ETOOLARGE) {
        upload_too_large(u);
        return;
    }
    if (rc < 0) {
        upload_fail(u, rc, rc == BD_EINVAL ? "the request body's chunked framing is malformed"
                                           : NULL, NULL);
        return;
    }
    if ((rc = bd_multipart_end(u->mp)) < 0) {
        upload_fail(u, BD_EINVAL, bd_multipart_why(u->mp), NULL);
        return;
    }
    if (!u->has_file) {
        upload_fail(u, BD_EINVAL, "the body has no 'file' part", "file");
        return;
    }
    if (!u->has_purpose) {
        upload_fail(u, BD_EINVAL, "the body has no 'purpose' part", "purpose");
        return;
    }
    if (u->bytes == 0) {
        upload_fail(u, BD_EINVAL, "the file is empty", "file");
        return;
    }
    u->is_body_done = true;
    upload_pump(u);
}

static int upload_on_body(struct bd_http_request *req, const char *data, size_t len, void *arg)
{
    struct files_upload *u = arg;
    int rc = BD_OK;

    (void)req;
    u->is_in_body = true;              /* answering below must not free u under us */
    if (u->is_answered) {
        rc = -1;
    } else if (data == NULL) {
        upload_body_end(u);
    } else if ((rc = bd_multipart_feed(u->mp, data, len)) < 0) {
        if (!u->is_answered)           /* the framing; a part's own error was answered */
            upload_fail(u, rc == BD_EINVAL ? BD_EINVAL : rc,
                        rc == BD_EINVAL ? bd_multipart_why(u->mp) : NULL, NULL);
    } else {
        upload_pump(u);
        upload_flow(u);
    }
    u->is_in_body = false;
    upload_maybe_free(u);              /* u may be gone now */
    return rc < 0 ? -1 : BD_OK;
}

static void files_on_upload_headers(struct bd_http_request *req, void *arg)
{
    struct bd_server *srv = arg;
    char boundary[BD_MULTIPART_BOUNDARY_MAX + 1];
    char rid[BD__V1_REQUEST_ID_LEN + 1];
    struct files_upload *u;
    int rc;

    bd__v1_request_id(rid);
    rc = bd_multipart_boundary(bd_http_header_get(req, "Content-Type"), boundary);
    if (rc == BD_EMEDIATYPE) {
        bd__v1_respond_error(req, rid, BD_EMEDIATYPE, "the body must be multipart/form-data "
                             "with 'file' and 'purpose' parts", NULL, NULL, NULL);
        return;
    }
    if (rc < 0) {
        bd__v1_respond_error(req, rid, BD_EINVAL, "Content-Type has no usable boundary "
                             "(1 to 70 characters)", NULL, NULL, NULL);
        return;
    }
    if (srv->is_stopping) {
        bd__v1_respond_error(req, rid, BD_ESHUTDOWN, NULL, NULL, NULL, NULL);
        return;
    }
    if (srv->submit_streams >= bd__stream_max_uploads(srv) || srv->uploads_waiting != NULL) {
        bd__v1_respond_error(req, rid, BD_EUPLOADS, "too many uploads in progress; retry",
                             NULL, NULL, "Retry-After: 5\r\n");
        return;
    }
    if ((u = calloc(1, sizeof(*u))) == NULL) {
        bd__v1_respond_error(req, rid, BD_ENOMEM, NULL, NULL, NULL, NULL);
        return;
    }
    u->req = req;
    u->srv = srv;
    memcpy(u->rid, rid, sizeof(rid));
    u->max_bytes = srv->cfg->openai_max_file_bytes;
    bd_buf_init(&u->chunk);
    if ((rc = bd_file_new_id(u->id)) < 0 ||
        (u->mp = bd_multipart_new(boundary, NULL, &upload_cbs, u)) == NULL) {
        u->is_answered = true;
        bd__v1_respond_error(req, rid, rc < 0 ? BD_EINTERNAL : BD_ENOMEM, NULL, NULL, NULL,
                             NULL);
        upload_maybe_free(u);
        return;
    }
    bd_http_body_set_limit(req, u->max_bytes + FILES_BODY_SLACK);
    bd_http_body_set_timeout(req, FILES_TIMEOUT_MS);
    if (bd_http_body_stream(req, upload_on_body, u) < 0) {
        u->is_answered = true;
        bd__v1_respond_error(req, rid, BD_EINTERNAL, NULL, NULL, NULL, NULL);
        upload_maybe_free(u);
        return;
    }
    bd_http_set_abort_cb(req, upload_on_abort, u);
    u->is_counted = true;
    srv->submit_streams++;
    u->is_writing = true;
    rc = bd_file_upload_open(srv->pg, u->id, upload_on_written, u, &u->up);
    if (rc < 0) {
        u->is_writing = false;
        u->up = NULL;
        upload_fail(u, rc, NULL, NULL);
    }
}

/* The body was buffered instead (on_headers answered or could not stream): never reached
 * in practice, since on_headers always takes or answers the request. */
static void files_on_upload(struct bd_http_request *req, void *arg)
{
    (void)arg;
    bd__v1_respond_error(req, NULL, BD_EINTERNAL, NULL, NULL, NULL, NULL);
}

/* ==== GET /v1/files/{id} and DELETE /v1/files/{id} ======================================== */

static const char *files_param_id(struct bd_http_request *req)
{
    const char *id = req->params_count > 0 ? req->params[0] : NULL;

    if (!files_is_id(id)) {
        files_not_found(req, id);
        return NULL;
    }
    return id;
}

static void files_on_row(int status, const struct bd_file_row *row, const char *message,
                         void *arg)
{
    struct bd_http_request *req = arg;

    if (status < 0) {
        files_fail_store(req, NULL, req->params[0], status, message);
        return;
    }
    bd__v1_respond_json(req, NULL, 200, files_object(row));
}

static void files_on_get(struct bd_http_request *req, void *arg)
{
    struct bd_server *srv = arg;
    const char *id = files_param_id(req);
    int rc;

    if (id && (rc = bd_file_store_get(srv->pg, id, files_on_row, req)) < 0)
        files_fail_store(req, NULL, id, rc, NULL);
}

static void files_on_deleted(int status, const char *message, void *arg)
{
    struct bd_http_request *req = arg;

    if (status < 0) {
        files_fail_store(req, NULL, req->params[0], status, message);
        return;
    }
    bd_log(BD_LOG_INFO, "api", "file=%s event=file_deleted", req->params[0]);
    bd__v1_respond_json(req, NULL, 200,
                        json_pack("{s:s, s:s, s:b}", "id", req->params[0], "object", "file",
                                  "deleted", 1));
}

static void files_on_delete(struct bd_http_request *req, void *arg)
{
    struct bd_server *srv = arg;
    const char *id = files_param_id(req);
    int rc;

    if (id && (rc = bd_file_store_delete(srv->pg, id, files_on_deleted, req)) < 0)
        files_fail_store(req, NULL, id, rc, NULL);
}

/* ==== GET /v1/files?after=&limit=&order=&purpose= ========================================== */

static void files_on_page(int status, const struct bd_file_row *rows, unsigned n,
                          bool has_more, const char *message, void *arg)
{
    struct bd_http_request *req = arg;
    json_t *data;
    bool failed = false;

    if (status < 0) {
        files_fail_store(req, NULL, NULL, status, message);
        return;
    }
    data = json_array();
    for (unsigned i = 0; data && i < n && !failed; i++)
        failed = json_array_append_new(data, files_object(&rows[i])) < 0;
    if (failed) {
        json_decref(data);
        data = NULL;
    }
    bd__v1_respond_list(req, data, n ? rows[0].id : NULL, n ? rows[n - 1].id : NULL, has_more);
}

static void files_on_list(struct bd_http_request *req, void *arg)
{
    struct bd_server *srv = arg;
    const char *order = bd_http_query_get(req, "order");
    const char *after = bd_http_query_get(req, "after");
    const char *purpose = bd_http_query_get(req, "purpose");
    struct bd_file_list_query q = { .limit = FILES_PAGE_MAX, .is_asc = false };
    int rc;

    if (!bd__v1_get_limit(req, FILES_PAGE_MAX, FILES_PAGE_MAX, &q.limit))
        return;
    if (order && strcmp(order, "asc") != 0 && strcmp(order, "desc") != 0) {
        bd__v1_respond_error(req, NULL, BD_EINVAL, "order must be 'asc' or 'desc'", "order",
                             NULL, NULL);
        return;
    }
    q.is_asc = order && strcmp(order, "asc") == 0;
    q.after = after && *after ? after : NULL;
    q.purpose = purpose && *purpose ? purpose : NULL;
    if ((q.after && !bd_utf8_is_valid(q.after, strlen(q.after))) ||
        (q.purpose && !bd_utf8_is_valid(q.purpose, strlen(q.purpose)))) {
        bd__v1_respond_error(req, NULL, BD_EINVAL, "after and purpose must be UTF-8", NULL,
                             NULL, NULL);
        return;
    }
    if ((rc = bd_file_store_list(srv->pg, &q, files_on_page, req)) < 0)
        files_fail_store(req, NULL, NULL, rc, NULL);
}

/* ==== GET /v1/files/{id}/content =========================================================== */

/* A download's record. malloc'ed: it may outlive the request by one read (freed when that
 * read's callback arrives). */
struct files_download {
    struct bd_http_request *req;      /* NULL once finished */
    struct bd_server *srv;
    char id[BD_FILE_ID_LEN + 1];
    char rid[BD__V1_REQUEST_ID_LEN + 1];
    unsigned chunks, next;
    int64_t bytes, sent;
    bool is_started;
    bool is_finished;
    bool is_aborted;
    bool is_in_flight;
    bool is_head;
};

static void download_maybe_free(struct files_download *d)
{
    if (d->is_finished && !d->is_in_flight)
        free(d);
}

/* End the request exactly once. Before the stream started err < 0 is the answer; after, a
 * stream cut short is logged (the client sees fewer bytes than the file object's). */
static void download_finish(struct files_download *d, int err, const char *message)
{
    struct bd_http_request *req = d->req;

    if (d->is_finished)
        return;
    d->is_finished = true;
    d->req = NULL;
    if (!d->is_started && d->is_aborted) {
        bd__v1_respond_error(req, d->rid, BD_ECANCELED, NULL, NULL, NULL, NULL);   /* unheard */
    } else if (!d->is_started) {
        files_fail_store(req, d->rid, d->id, err < 0 ? err : BD_EINTERNAL, message);
    } else {
        if (err < 0)
            bd_log(BD_LOG_WARN, "api", "file=%s event=content_cut err=%s sent=%" PRId64
                   " bytes=%" PRId64 " pg=\"%s\"", d->id, bd_err_name(err), d->sent, d->bytes,
                   message ? message : "");
        bd_http_stream_end(req);
    }
    download_maybe_free(d);
}

static void download_next(struct files_download *d);

static void download_on_drain(struct bd_http_request *req, void *arg)
{
    (void)req;
    download_next(arg);
}

static void download_on_abort(struct bd_http_request *req, void *arg)
{
    struct files_download *d = arg;

    (void)req;
    d->is_aborted = true;
    if (d->is_started)                 /* before: the read in flight answers, unheard */
        download_finish(d, BD_OK, NULL);
}

static void download_on_chunk(int status, const char *data, size_t len, const char *message,
                              void *arg)
{
    struct files_download *d = arg;

    d->is_in_flight = false;
    if (d->is_finished) {
        download_maybe_free(d);
        return;
    }
    if (status < 0) {
        download_finish(d, status, message);
        return;
    }
    if (bd_http_stream_write(d->req, data, len) < 0) {
        d->is_aborted = true;
        download_finish(d, BD_OK, NULL);
        return;
    }
    d->sent += (int64_t)len;
    d->next++;
    if (bd_http_stream_get_pending(d->req) > FILES_STREAM_HIGH) {
        bd_http_stream_set_drain_cb(d->req, download_on_drain, d);
        return;
    }
    download_next(d);
}

static void download_next(struct files_download *d)
{
    int rc;

    if (d->next >= d->chunks || d->is_head) {
        download_finish(d, d->sent == d->bytes || d->is_head ? BD_OK : BD_EINTERNAL, NULL);
        return;
    }
    if (d->srv->is_stopping) {
        download_finish(d, BD_ESHUTDOWN, NULL);
        return;
    }
    rc = bd_file_store_read_chunk(d->srv->pg, d->id, d->next, download_on_chunk, d);
    if (rc < 0) {
        download_finish(d, rc, NULL);
        return;
    }
    d->is_in_flight = true;
}

static void download_on_row(int status, const struct bd_file_row *row, const char *message,
                            void *arg)
{
    struct files_download *d = arg;
    char headers[200];

    d->is_in_flight = false;
    if (status < 0 || d->is_aborted) {
        download_finish(d, status < 0 ? status : BD_ECANCELED, message);
        return;
    }
    d->chunks = row->chunks;
    d->bytes = row->bytes;
    d->is_started = true;
    bd__v1_headers(d->rid, 200, headers, sizeof(headers));
    if (bd_http_stream_begin(d->req, 200, "application/octet-stream", headers) < 0) {
        d->is_aborted = true;
        download_finish(d, BD_OK, NULL);
        return;
    }
    download_next(d);
}

static void files_on_content(struct bd_http_request *req, void *arg)
{
    struct bd_server *srv = arg;
    const char *id = files_param_id(req);
    struct files_download *d;
    int rc;

    if (id == NULL)
        return;
    if ((d = calloc(1, sizeof(*d))) == NULL) {
        bd__v1_respond_error(req, NULL, BD_ENOMEM, NULL, NULL, NULL, NULL);
        return;
    }
    d->req = req;
    d->srv = srv;
    d->is_head = strcmp(req->method, "HEAD") == 0;
    snprintf(d->id, sizeof(d->id), "%s", id);
    bd__v1_request_id(d->rid);
    rc = bd_file_store_get(srv->pg, id, download_on_row, d);
    if (rc < 0) {
        files_fail_store(req, d->rid, id, rc, NULL);
        free(d);
        return;
    }
    d->is_in_flight = true;
    bd_http_set_abort_cb(req, download_on_abort, d);
}

int bd__api_register_files(struct bd_router *r, struct bd_server *srv)
{
    int rc = BD_OK;

    rc = rc ? rc : bd_router_add_stream(r, "POST", BD__V1_PREFIX "/files",
                                        files_on_upload_headers, files_on_upload, srv);
    rc = rc ? rc : bd_router_add(r, "GET", BD__V1_PREFIX "/files", files_on_list, srv);
    rc = rc ? rc : bd_router_add(r, "GET", BD__V1_PREFIX "/files/{id}", files_on_get, srv);
    rc = rc ? rc : bd_router_add(r, "DELETE", BD__V1_PREFIX "/files/{id}", files_on_delete,
                                 srv);
    rc = rc ? rc : bd_router_add(r, "GET", BD__V1_PREFIX "/files/{id}/content",
                                 files_on_content, srv);
    return rc;
}
