/* job_submit_stream.c -- a streamed job (job_submit.h, bd_job_stream_*): its row first, then
 * its batches one COPY at a time as the body arrives, the fields the end of the body gives
 * (amend, and a re-cut of the batches), then job_submit.c's close: totals, room, COMMIT,
 * enqueue. One transaction from open to close.
 *
 * Owns each streamed job's record from open to close's callback (or abort). Loop thread
 * only. Reaches PostgreSQL only through job_store.h.  SPDX-License-Identifier: MIT
 */
#include "batchd/job_submit.h"
#include "job_submit_internal.h"

#include "batchd/buf.h"
#include "batchd/config.h"
#include "batchd/error.h"
#include "batchd/job_batch.h"
#include "batchd/job_store.h"
#include "batchd/log.h"
#include "batchd/pg_store.h"
#include "batchd/redis_queue.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- a streamed job -------------------------------------------------------------------- */

/* The open's or a put's outcome. An abort that came meanwhile is carried out now, after
 * the callback was told BD_ECANCELED. */
void bd__job_stream_done(struct bd__job_submit *js, int status)
{
    bd_job_stream_cb cb = js->stream_cb;
    void *arg = js->stream_arg;

    js->is_busy = false;
    js->stream_cb = NULL;
    if (js->is_aborted) {
        if (cb)
            cb(BD_ECANCELED, arg);
        bd__job_submit_free(js);
        return;
    }
    if (cb)
        cb(status, arg);
}

int bd_job_stream_open(const struct bd_job_submit_deps *deps, const struct bd_job_spec *spec,
                       bd_job_stream_cb cb, void *arg, struct bd_job_stream **out)
{
    struct bd_job_spec open = *spec;
    struct bd__job_submit *js;
    int rc;

    open.items = open.batches = 0;          /* written when the body has ended */
    if ((js = bd__job_submit_new(deps, &open)) == NULL)
        return BD_ENOMEM;
    js->is_stream = true;
    js->is_busy = true;
    js->stream_cb = cb;
    js->stream_arg = arg;
    if ((rc = bd__job_submit_start(js)) < 0) {
        bd__job_submit_free(js);
        return rc == BD_ENOMEM ? BD_ENOMEM : BD_EREDIS;
    }
    *out = (struct bd_job_stream *)js;
    return BD_OK;
}

const char *bd_job_stream_get_id(const struct bd_job_stream *st)
{
    return ((const struct bd__job_submit *)st)->job_id;
}

struct bd_pg_conn *bd_job_stream_get_conn(struct bd_job_stream *st)
{
    struct bd__job_submit *js = (struct bd__job_submit *)st;
    return js->is_busy ? NULL : js->conn;
}

static void job_stream_on_copied(int status, PGresult *res, void *arg)
{
    struct bd__job_submit *js = arg;

    if (status < 0)
        bd__job_submit_log_pg(js, "copy", res);
    bd__job_stream_done(js, status < 0 ? BD_EPG : BD_OK);
}

int bd_job_stream_put(struct bd_job_stream *st, struct bd_job_payload *payloads,
                      const unsigned *items, unsigned n, bd_job_stream_cb cb, void *arg)
{
    struct bd__job_submit *js = (struct bd__job_submit *)st;
    bool is_insert = js->op == BD_OP_BULK_INSERT;
    bool is_valid = !js->is_busy && js->conn != NULL && n > 0;
    unsigned next = js->next_index;
    int rc = BD_OK;

    for (unsigned i = 0; i < n; i++)
        is_valid = is_valid && items[i] > 0;
    bd_buf_reset(&js->copy);
    bd_pg_copy_begin(&js->copy);
    for (unsigned i = 0; i < n; i++) {
        struct bd_job_payload *p = &payloads[i];
        if (is_valid)
            bd_job_store_put_batch(&js->copy, js->job_id, js->batches + i, next, items[i],
                                   is_insert ? NULL : p->data, is_insert ? 0 : p->len,
                                   is_insert ? p->data : NULL, is_insert ? p->len : 0);
        next += is_valid ? items[i] : 0;
        free(p->data);                      /* copied into the COPY stream */
        p->data = NULL;
    }
    if (!is_valid)
        return BD_EINVAL;
    rc = bd_pg_copy_end(&js->copy);
    if (rc == BD_OK)
        rc = bd_job_store_copy_batches(js->conn, &js->copy, job_stream_on_copied, js);
    if (rc < 0)
        return rc == BD_ENOMEM ? BD_ENOMEM : BD_EPG;
    js->batches += n;
    js->next_index = next;
    js->items = next;
    js->is_busy = true;
    js->stream_cb = cb;
    js->stream_arg = arg;
    return BD_OK;
}

/* ---- a streamed job's fields from the end of its body ---------------------------------- */

static void job_stream_on_amended(int status, PGresult *res, void *arg)
{
    struct bd__job_submit *js = arg;

    if (status < 0)
        bd__job_submit_log_pg(js, "amend", res);
    bd__job_stream_done(js, status < 0 ? BD_EPG : BD_OK);
}

static int job_stream_send_amend(struct bd__job_submit *js)
{
    char *options = bd__job_submit_options(js);
    int rc = BD_ENOMEM;

    if (options) {
        struct bd_job_store_new_job row = bd__job_submit_row(js, options);
        rc = bd_job_store_amend_job(js->conn, &row, job_stream_on_amended, js);
    }
    free(options);
    return rc;
}

static void job_stream_on_rebatched(int status, PGresult *res, void *arg)
{
    struct bd__job_submit *js = arg;
    int rc;

    if (status < 0) {
        bd__job_submit_log_pg(js, "rebatch", res);
        bd__job_stream_done(js, BD_EPG);
        return;
    }
    if (js->is_aborted) {
        bd__job_stream_done(js, BD_ECANCELED);
        return;
    }
    if ((rc = job_stream_send_amend(js)) < 0)
        bd__job_stream_done(js, rc == BD_ENOMEM ? BD_ENOMEM : BD_EPG);
}

/* Swap in a string copy; false on ENOMEM (the old one stays). */
static bool job_stream_set_str(char **dst, const char *src)
{
    char *d = src ? strdup(src) : NULL;
    if (src && d == NULL)
        return false;
    free(*dst);
    *dst = d;
    return true;
}

int bd_job_stream_amend(struct bd_job_stream *st, const struct bd_job_spec *spec,
                        bd_job_stream_cb cb, void *arg)
{
    struct bd__job_submit *js = (struct bd__job_submit *)st;
    bool is_rebatch;
    int rc;

    if (js->is_busy || js->conn == NULL || js->items == 0 || spec->op != js->op ||
        spec->batch_size == 0 || spec->collection == NULL)
        return BD_EINVAL;
    if (!job_stream_set_str(&js->model, spec->model) ||
        !job_stream_set_str(&js->collection, spec->collection) ||
        !job_stream_set_str(&js->metadata_json,
                            spec->metadata_json ? spec->metadata_json : "{}"))
        return BD_ENOMEM;
    is_rebatch = spec->batch_size != js->batch_size;
    unsigned old_size = js->batch_size;
    js->priority = spec->priority;
    js->batch_size = spec->batch_size;
    js->timeout_s = spec->timeout_s;
    js->max_retries = spec->max_retries;
    js->dim = spec->dim;
    if (is_rebatch) {
        rc = bd_job_store_rebatch(js->conn, js->job_id, js->op == BD_OP_BULK_INSERT,
                                  old_size, js->batch_size, job_stream_on_rebatched, js);
        js->batches = bd_job_batch_count(js->items, js->batch_size);
    } else {
        rc = job_stream_send_amend(js);
    }
    if (rc < 0)
        return rc == BD_ENOMEM ? BD_ENOMEM : BD_EPG;
    js->is_busy = true;
    js->stream_cb = cb;
    js->stream_arg = arg;
    return BD_OK;
}

static void job_stream_on_totals(int status, PGresult *res, void *arg)
{
    struct bd__job_submit *js = arg;

    if (status < 0) {
        bd__job_submit_on_written(status, res, js);    /* rolls back, answers BD_EPG */
        return;
    }
    if (bd_rq_reserve_items(js->deps.rq, js->job_id, js->items, js->deps.cfg->max_queued_items,
                            bd__job_submit_on_reserved, js) < 0) {
        bd_log(BD_LOG_WARN, "job", "job=%s event=submit_failed step=reserve", js->job_id);
        bd__job_submit_finish(js, BD_EREDIS);
    }
}

int bd_job_stream_close(struct bd_job_stream *st, unsigned dim, const char *request_hash,
                        bd_job_submitted_cb cb, void *arg)
{
    struct bd__job_submit *js = (struct bd__job_submit *)st;

    if (js->is_busy || js->conn == NULL || js->items == 0)
        return BD_EINVAL;
    js->dim = dim;
    if (request_hash)
        snprintf(js->request_hash, sizeof(js->request_hash), "%s", request_hash);
    js->cb = cb;
    js->arg = arg;
    if (bd_job_store_set_totals(js->conn, js->job_id, js->items, js->batches, dim,
                                js->idem_key ? js->request_hash : NULL, job_stream_on_totals,
                                js) < 0) {
        js->cb = NULL;
        return BD_EPG;
    }
    js->is_closed = true;
    return BD_OK;
}

void bd_job_stream_abort(struct bd_job_stream *st)
{
    struct bd__job_submit *js = (struct bd__job_submit *)st;

    if (js->is_closed)                      /* a contract breach: the close finishes it */
        return;
    if (js->is_busy) {
        js->is_aborted = true;             /* freed when the operation in flight returns */
        return;
    }
    bd__job_submit_free(js);                    /* releasing the connection rolls back */
}
