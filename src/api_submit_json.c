/* api_submit_json.c -- a JSON body of POST /jobs past its first MiB (api_submit_stream.c
 * gathers that much): its top-level members, the job opened when "data" begins, and the
 * fields of members after "data", validated at the end for the job's amend.
 *
 * Works on the streamed request's record (api_submit_stream.h); loop thread only.
 * SPDX-License-Identifier: MIT
 */
#include "batchd/api.h"
#include "api_submit.h"
#include "api_internal.h"
#include "api_submit_stream.h"

#include "batchd/config.h"
#include "batchd/error.h"
#include "batchd/http_server.h"
#include "batchd/log.h"
#include "batchd/server.h"
#include "batchd/submit_scan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- a JSON body's members ---------------------------------------------------------------- */

/* A top-level member but "data": before "data" it is one of the job's fields (s->body);
 * after, it is kept for the end (st->late), when the job is amended with it. */
static int stream_on_member(void *arg, const char *key, const char *value, size_t len)
{
    struct bd__api_stream *st = arg;
    json_t *into = st->is_in_data ? st->late : st->s->body;
    char msg[300];

    if (json_object_get(st->s->body, key) || json_object_get(st->late, key)) {
        snprintf(msg, sizeof(msg), "%.256s appears twice", key);
        bd__stream_fail(st, BD_EINVAL, msg, key);
        return BD_EINVAL;
    }
    json_t *v = json_loadb(value, len, JSON_DECODE_ANY, NULL);   /* the scanner checked it */
    if (v == NULL || json_object_set_new(into, key, v) != 0) {
        bd__stream_fail(st, BD_ENOMEM, NULL, NULL);
        return BD_ENOMEM;
    }
    return BD_OK;
}

/* "data" opens: the members so far are the job's fields (a later "options" or "metadata"
 * amends them at the end). The job is opened now, and the items follow into batches. */
static int stream_on_data_begin(void *arg)
{
    struct bd__api_stream *st = arg;
    struct bd__api_invalid inv = { { 0 }, { 0 } };
    char msg[BD__API_INVALID_TEXT_MAX + 128];
    int rc;

    st->is_in_data = true;
    rc = bd__api_submit_fields(st->s, st->s->body, &inv);
    if (rc == BD_EINVAL) {
        /* A required field may be further on: say what a big body needs. */
        bd__api_invalid_text(&inv, "", msg, sizeof(msg));
        if (strstr(inv.message, "is required"))
            snprintf(msg + strlen(msg), sizeof(msg) - strlen(msg), "%s",
                     " (before \"data\": a JSON body over 1 MiB is read as a stream, and "
                     "its job is opened when \"data\" begins)");
        bd__stream_fail(st, BD_EINVAL, msg, inv.field);
        return BD_EINVAL;
    }
    if (rc == BD_OK)
        rc = bd__api_submit_metadata(st->s);
    if (rc == BD_OK && (st->batch = bd__api_batch_new(st->s)) == NULL)
        rc = BD_ENOMEM;
    if (rc == BD_OK && (st->late = json_object()) == NULL)
        rc = BD_ENOMEM;
    if (rc < 0) {
        bd__stream_fail(st, rc, NULL, NULL);
        return rc;
    }
    rc = bd__stream_take_slot(st);
    if (rc == BD_EUPLOADS) {
        st->is_answered = true;
        bd_http_set_abort_cb(st->req, NULL, NULL);
        bd__stream_refuse_upload(st->req);
        return BD_EUPLOADS;
    }
    if (rc == BD_OK)
        bd__stream_begin(st);
    return st->is_answered ? BD_ECANCELED : BD_OK;
}

/* The gathered start of a JSON body passed STREAM_HOLD_MAX: scan it, and from now on the
 * rest as it comes. */
int bd__stream_start_scan(struct bd__api_stream *st)
{
    static const struct bd_submit_scan_cbs cbs = { .on_member = stream_on_member,
                                                   .on_item = bd__stream_on_item,
                                                   .on_data_begin = stream_on_data_begin };
    struct bd_buf held = st->hold;
    int rc;

    if ((st->scan = bd_submit_scan_new(BD_SUBMIT_JSON, STREAM_LINE_MAX, &cbs, st)) == NULL)
        return BD_ENOMEM;
    st->is_scanning = true;
    bd_buf_init(&st->hold);
    rc = bd_submit_scan_feed(st->scan, held.data, held.len);
    bd_buf_free(&held);
    return rc;
}

/* A JSON body with members after "data": the job's fields from the whole body, validated
 * as a buffered body's are, into st->final (the pump amends the job with them). BD_OK, or
 * < 0 after answering. */
int bd__stream_final_fields(struct bd__api_stream *st)
{
    struct bd__api_invalid inv = { { 0 }, { 0 } };
    struct bd__api_submit *f;
    int rc;

    if (json_object_size(st->late) == 0)
        return BD_OK;
    if ((f = calloc(1, sizeof(*f))) == NULL) {
        bd__stream_fail(st, BD_ENOMEM, NULL, NULL);
        return BD_ENOMEM;
    }
    st->final = f;
    f->req = st->req;
    f->srv = st->srv;
    f->body = json_copy(st->s->body);
    rc = f->body && json_object_update(f->body, st->late) == 0 ? BD_OK : BD_ENOMEM;
    if (rc == BD_OK)
        rc = bd__api_submit_fields(f, f->body, &inv);
    if (rc == BD_OK)
        rc = bd__api_submit_metadata(f);
    if (rc < 0)
        return bd__stream_fail_invalid(st, rc, &inv, "");
    if (f->op == BD_OP_BULK_INSERT)
        f->dim = st->s->dim;                   /* the items' */
    return BD_OK;
}

