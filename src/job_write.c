/* job_write.c -- the WRITE phases of a batch: a small batch (bd_job_store_is_small_batch)
 * in one statement that checkpoints it only if it is still pending; a larger one in one
 * transaction that stages the batch's rows by binary COPY, then upserts the vectors,
 * records item errors and checkpoints the batch and the job's counters.
 *
 * Part of the job module (job_internal.h); loop thread only, never blocks. A store error
 * is not the batch's fault: transient ones (connection, serialization, deadlock,
 * resources) are retried until PostgreSQL is back; one that PostgreSQL will repeat (a
 * value it refuses) is tried JOB_WRITE_PERMANENT_MAX times, then the batch's items are
 * marked failed with PostgreSQL's message and the job goes on (no poison batch).
 * SPDX-License-Identifier: MIT
 */
#include "job_internal.h"

#include "batchd/buf.h"
#include "batchd/config.h"
#include "batchd/error.h"
#include "batchd/job_store.h"
#include "batchd/log.h"
#include "batchd/metrics.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

/* Every item of the batch fails with the batch's error (retries ran out, or not
 * retryable). The write phases still run: they record the errors and the checkpoint. */
void bd__job_fail_batch(struct bd_job_slot *s, const char *code, const char *message)
{
    struct bd_job *job = s->job;

    snprintf(s->batch_error, sizeof(s->batch_error), "%s", message);
    s->batch_error_code = code;
    s->is_batch_failed = true;
    s->batch_ok = s->batch_failed = 0;
    for (unsigned i = 0; i < s->item_count; i++) {
        /* Items served from the embedding cache still have their vector. */
        if (job->op == BD_OP_BULK_EMBED && s->is_cached[i] && code != NULL &&
            strcmp(code, "store_error") != 0) {
            s->item_status[i] = BD_OK;
            s->batch_ok++;
            continue;
        }
        s->item_status[i] = BD_EMODEL;
        s->item_error[i] = s->batch_error;
        s->batch_failed++;
    }
    job->e->stats.batches_failed++;
    if (bd__job_slot_is_writing(s))         /* its turn comes again from the pump */
        job->writers--;
    s->phase = SLOT_READY;
    bd__job_pump(job);
}

/* The metadata stored with each vector: the item's metadata, plus "text" for bulk_embed.
 * Written into the job's reusable buffer (no allocation per item once it has grown). */
static void job_build_metadata(struct bd_job *job, struct bd_buf *b, json_t *item)
{
    json_t *meta = json_object_get(item, "metadata");
    bool has_meta = json_is_object(meta) && json_object_size(meta) > 0;

    bd_buf_reset(b);
    if (job->op == BD_OP_BULK_EMBED) {
        json_t *t = json_object_get(item, "text");
        bd_buf_puts(b, "{\"text\":");
        bd_buf_json_string(b, json_string_value(t) ? json_string_value(t) : "",
                           json_string_length(t));
        if (!has_meta) {
            bd_buf_puts(b, "}");
            return;
        }
        bd_buf_puts(b, ",");                    /* the item's members follow "text" */
    } else if (!has_meta) {
        bd_buf_puts(b, "{}");
        return;
    }
    size_t need = json_dumpb(meta, NULL, 0, JSON_COMPACT);
    if (bd_buf_reserve(b, need) != BD_OK)
        return;
    json_dumpb(meta, b->data + b->len, need, JSON_COMPACT);
    if (job->op == BD_OP_BULK_EMBED) {
        /* Drop the item object's own '{': its members continue ours. */
        memmove(b->data + b->len, b->data + b->len + 1, need - 1);
        b->len += need - 1;
    } else {
        b->len += need;
    }
    b->data[b->len] = '\0';
}

static int job_build_copy(struct bd_job_slot *s)
{
    struct bd_job *job = s->job;
    struct bd_buf *b = &s->copy;
    char genid[160];

    bd_job_store_stage_begin(b);
    for (unsigned i = 0; i < s->item_count; i++) {
        const struct bd_job_batch_item *pk = job->op == BD_OP_BULK_INSERT ? &s->packed[i] : NULL;
        json_t *item = pk ? NULL : json_array_get(s->items, i);
        const char *id = pk ? pk->id : json_string_value(json_object_get(item, "id"));
        size_t id_len = pk ? pk->id_len : json_string_length(json_object_get(item, "id"));
        unsigned index = s->first_index + i;
        if (id == NULL) {
            snprintf(genid, sizeof(genid), "%s:%u", job->id, index);
            id = genid;
            id_len = strlen(genid);
        }
        if (s->item_status[i] == BD_OK && pk) {
            bd_job_store_stage_vector(b, index, id, id_len, NULL, job->dim,
                                      (const char *)pk->vec, pk->vec_len, pk->meta,
                                      pk->meta_len, NULL);
        } else if (s->item_status[i] == BD_OK) {
            job_build_metadata(job, &s->meta, item);
            /* Only vectors the model just computed go into the cache. */
            bool to_cache = job->op == BD_OP_BULK_EMBED && !s->is_cached[i];
            bd_job_store_stage_vector(b, index, id, id_len, s->vectors + (size_t)i * job->dim,
                                      job->dim, NULL, 0, s->meta.data, s->meta.len,
                                      to_cache ? s->hashes + (size_t)i * 65 : NULL);
        } else {
            const char *code = "processing_error";
            if (s->item_status[i] == BD_EINVAL)
                code = job->op == BD_OP_BULK_EMBED ? "input_too_long" : "invalid_input";
            else if (s->batch_error_code)
                code = s->batch_error_code;
            /* An id PostgreSQL refuses (not UTF-8) is not stored with the error. */
            bool keep_id = bd_utf8_is_valid(id, id_len);
            bd_job_store_stage_error(b, index, keep_id ? id : NULL, id_len, code,
                                     s->item_error[i]);
        }
    }
    return s->meta.is_failed ? BD_ENOMEM : bd_job_store_stage_end(b);
}

static void job_write_failed(struct bd_job_slot *s, const char *what,
                             const struct bd_job_store_err *err)
{
    struct bd_job *job = s->job;
    const char *msg = err ? err->message : "could not send";

    s->write_failures++;
    bd_log(BD_LOG_WARN, "job", "job=%s batch=%d event=write_failed step=%s attempt=%u "
           "permanent=%d err=%s", job->id, s->batch_no, what, s->write_failures,
           err && err->is_permanent, msg);
    if (s->conn) {
        bd_pg_release(s->conn);                 /* rolls the transaction back */
        s->conn = NULL;
    }
    s->phase = SLOT_WRITE_ACQUIRE;
    if (err && err->is_parent_lost && !job->is_handing_back) {
        /* The collection row is gone: the job's start, which created it, was committed
         * asynchronously and lost in a PostgreSQL crash. Not the items' fault: hand the job
         * back; the next claim starts it again (and creates the row) and redoes the batch. */
        bd_log(BD_LOG_WARN, "job", "job=%s batch=%d event=write_parent_lost "
               "action=hand_back note=start_lost_rerun", job->id, s->batch_no);
        job->is_handing_back = true;
        bd__job_interrupt(job);
    }
    if (bd__job_should_stop(job)) {
        bd__job_slot_end(s);                    /* the batch is redone by the next owner */
        return;
    }
    if (err && err->is_permanent && ++s->write_permanent >= JOB_WRITE_PERMANENT_MAX) {
        if (s->write_permanent >= 2 * JOB_WRITE_PERMANENT_MAX) {
            /* Even the batch's errors cannot be stored: stop the job, do not spin. */
            bd__job_decide(job, BD_JOB_EV_FAIL, "store_error",
                           "batch %d cannot be written: %s", s->batch_no, msg);
            bd__job_slot_end(s);
            return;
        }
        if (!s->is_batch_failed || s->write_permanent == JOB_WRITE_PERMANENT_MAX) {
            char m[512];
            snprintf(m, sizeof(m), "the store refused the batch: %s", msg);
            s->write_failures = 0;
            bd__job_fail_batch(s, "store_error", m);
            return;
        }
    }
    /* Retry the write (the vectors are kept) until PostgreSQL is back; the slot stays one
     * of the job's writers meanwhile. */
    bd__job_slot_arm_timer(s, fmin(0.1 * (1u << (s->write_failures > 6 ? 6 : s->write_failures)),
                                   JOB_WRITE_RETRY_MAX_S));
}

/* The batch's checkpoint: its counts and its time so far. */
static struct bd_job_checkpoint job_checkpoint(const struct bd_job_slot *s)
{
    const struct bd_job *job = s->job;
    return (struct bd_job_checkpoint){
        .job_id = job->id, .collection = job->collection, .batch_no = s->batch_no,
        .run_attempt = job->run_attempt, .first_index = s->first_index,
        .item_count = s->item_count, .ok = s->batch_ok, .failed = s->batch_failed,
        .cache_hits = s->batch_cache_hits,
        .attempts = s->attempts + (s->is_batch_failed ? 0 : 1),
        .duration_ms = (unsigned)((uv_hrtime() - s->batch_start_ns) / 1000000u),
    };
}

/* The batch is checkpointed (by either write): count it, tell the listeners, free the slot. */
static void job_checkpointed(struct bd_job_slot *s)
{
    struct bd_job *job = s->job;
    struct bd_job_engine *e = job->e;

    job->batches_run++;
    e->stats.batches_done++;
    bd_metrics_batch_done(e->d.metrics, job->op, bd_metrics_model_slot(e->d.cfg, job->model),
                          (double)(uv_hrtime() - s->batch_start_ns) / 1e9, s->batch_ok,
                          s->batch_failed, s->batch_cache_hits);
    bd_log(BD_LOG_DEBUG, "job", "job=%s batch=%d event=checkpoint ok=%u failed=%u ms=%.1f",
           job->id, s->batch_no, s->batch_ok, s->batch_failed,
           (double)(uv_hrtime() - s->batch_start_ns) / 1e6);
    bd__job_notify(e, job->id, false);
    bd__job_slot_end(s);
}

/* Someone else checkpointed this batch (we lost the job for a while): it is not counted
 * again, and the window goes on with the next batches. */
static void job_already_done(struct bd_job_slot *s)
{
    bd_log(BD_LOG_INFO, "job", "job=%s batch=%d event=batch_already_done", s->job->id,
           s->batch_no);
    bd__job_slot_end(s);
}

/* The one-statement write of a small batch. */
static void job_on_written(int status, const struct bd_job_write_row *row,
                           const struct bd_job_store_err *err, void *arg)
{
    struct bd_job_slot *s = arg;
    struct bd_job *job = s->job;

    if (status < 0) {
        job_write_failed(s, "write", err);
    } else if (!row->is_pending) {
        job_already_done(s);
    } else {
        if (row->is_cancel_requested && !job->is_cancel_requested) {
            bd_log(BD_LOG_INFO, "job", "job=%s event=cancel_seen_in_store", job->id);
            job->is_cancel_requested = true;
            bd__job_interrupt(job);
        }
        if (!row->has_more)
            job->is_exhausted = true;       /* no final load to learn it */
        job_checkpointed(s);
    }
    bd__job_unref(job);
}

static void job_on_committed(int status, const struct bd_job_store_err *err, void *arg)
{
    struct bd_job_slot *s = arg;
    struct bd_job *job = s->job;

    if (status < 0) {
        job_write_failed(s, "commit", err);
        bd__job_unref(job);
        return;
    }
    bd_pg_release(s->conn);
    s->conn = NULL;
    job_checkpointed(s);
    bd__job_unref(job);
}

static void job_on_staged(int status, const struct bd_job_store_err *err, void *arg)
{
    struct bd_job_slot *s = arg;
    struct bd_job *job = s->job;

    if (status < 0) {
        job_write_failed(s, "copy", err);
    } else {
        s->phase = SLOT_WRITE_COMMIT;
        bd__job_slot_step(s);
    }
    bd__job_unref(job);
}

static void job_on_locked(int status, bool is_pending, const struct bd_job_store_err *err,
                          void *arg)
{
    struct bd_job_slot *s = arg;
    struct bd_job *job = s->job;

    if (status < 0) {
        job_write_failed(s, "begin", err);
    } else if (!is_pending) {
        bd_pg_release(s->conn);               /* rolls back */
        s->conn = NULL;
        job_already_done(s);
    } else {
        s->phase = SLOT_WRITE_STAGE;
        bd__job_slot_step(s);
    }
    bd__job_unref(job);
}

static void job_on_conn(int status, struct bd_pg_conn *conn, void *arg)
{
    struct bd_job_slot *s = arg;
    struct bd_job *job = s->job;

    if (status < 0) {
        job_write_failed(s, "acquire", NULL);
    } else {
        s->conn = conn;
        s->phase = SLOT_WRITE_BEGIN;
        bd__job_slot_step(s);
    }
    bd__job_unref(job);
}

/* Start the slot's WRITE phase's operation (the caller holds the operation's reference).
 * Only the job's writers write (at most JOB_WRITERS_MAX at once, each on its connection).
 * A failure to even send is handled here (retry or end) and reported as BD_OK, since the
 * phase moved on; the caller's reference is then dropped here too. */
int bd__job_write_step(struct bd_job_slot *s)
{
    struct bd_job *job = s->job;
    int rc;

    assert(bd__job_slot_is_writing(s));
    switch (s->phase) {
    case SLOT_WRITE_ACQUIRE:
        /* Staged afresh at every try: a failed batch's items changed since the last. */
        rc = job_build_copy(s);
        if (rc == BD_OK && bd_job_store_is_small_batch(&s->copy, s->item_count)) {
            struct bd_job_checkpoint cp = job_checkpoint(s);
            s->phase = SLOT_WRITE_ONE;
            rc = bd_job_store_write_small(job->e->d.pg, &s->wsql, &s->copy, &cp,
                                          job_on_written, s);
        } else if (rc == BD_OK) {
            rc = bd_pg_acquire(job->e->d.pg, job_on_conn, s);
        }
        break;
    case SLOT_WRITE_BEGIN:
        rc = bd_job_store_write_begin(s->conn, &s->wsql, job->id, s->batch_no,
                                      job_on_locked, s);
        break;
    case SLOT_WRITE_STAGE:
        rc = bd_job_store_write_stage(s->conn, &s->copy, job_on_staged, s);
        break;
    case SLOT_WRITE_COMMIT: {
        struct bd_job_checkpoint cp = job_checkpoint(s);
        rc = bd_job_store_write_commit(s->conn, &s->wsql, &cp, job_on_committed, s);
        break;
    }
    default:
        assert(!"not a write phase");
        rc = BD_EINTERNAL;
    }
    if (rc < 0) {                              /* callee promised not to call back */
        job_write_failed(s, "send", NULL);
        bd__job_unref(job);
    }
    return BD_OK;
}
