/* job_submit.c -- a job's creation (see job_submit.h): seq, id and room in one Redis call,
 * then the job row and its batches -- small jobs in one statement shared with the others
 * waiting (group commit), a big job in a transaction of its own -- (settled by a lookup when
 * the answer is lost), then the Redis enqueue (a group's in one call). A streamed job's own
 * steps are in job_submit_stream.c; the record and the steps they share, in
 * job_submit_internal.h.
 *
 * Owns each submit's record from bd_job_submit to its callback. Loop thread only; never
 * blocks. Reaches PostgreSQL only through job_store.h and Redis through redis_queue.h;
 * knows nothing of HTTP.  SPDX-License-Identifier: MIT
 */
#include "batchd/job_submit.h"

#include "batchd/buf.h"
#include "batchd/config.h"
#include "batchd/error.h"
#include "batchd/job_store.h"
#include "batchd/log.h"
#include "batchd/pg_store.h"
#include "batchd/redis_queue.h"
#include "batchd/job_engine.h"
#include "job_submit_internal.h"

#include <assert.h>
#include <ctype.h>
#include <jansson.h>
#include <math.h>
#include <stddef.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>


static void job_submit_on_unreserved(int status, long long items, void *arg)
{
    (void)status;
    (void)items;
    (void)arg;                        /* a reservation not given back lapses by itself */
}

void bd__job_submit_free(struct bd__job_submit *js)
{
    /* The job will not be enqueued (error, backpressure, Idempotency-Key race): give its
     * reserved items back at once instead of waiting for the reservation to lapse. */
    if (js->is_reserved)
        (void)bd_rq_unreserve_items(js->deps.rq, js->job_id, job_submit_on_unreserved, NULL);
    for (unsigned b = 0; js->batch && b < js->batches; b++)
        free(js->batch[b].data);
    free(js->batch);
    bd_buf_free(&js->copy);
    if (js->conn)
        bd_pg_release(js->conn);
    free(js->model);
    free(js->collection);
    free(js->metadata_json);
    free(js->idem_key);
    free(js);
}


double bd_job_submit_estimate(const struct bd_job_submit_deps *deps, enum bd_job_operation op,
                              const char *model, long long queued_ahead, unsigned items,
                              double created_unix)
{
    double rate = deps->engine ? bd_job_engine_get_throughput(deps->engine) : 0;

    if (!(rate > 0)) {
        const struct bd_model_config *mc = model ? bd_config_get_model(deps->cfg, model) : NULL;
        if (op == BD_OP_BULK_INSERT || mc == NULL)
            rate = BD_JOB_RATE_INSERT;
        else if (mc->provider == BD_PROVIDER_HASHING)
            rate = BD_JOB_RATE_HASHING;
        else
            rate = (double)mc->concurrency * mc->max_inputs_per_request /
                   (mc->timeout_s > 0 ? mc->timeout_s : 30.0);
    }
    if (!(rate > 0))
        rate = BD_JOB_RATE_INSERT;
    double ahead = queued_ahead > 0 ? (double)queued_ahead : 0;
    double secs = ceil((ahead + items) / rate);
    return created_unix + (secs < 1 ? 1 : secs);
}

void bd__job_submit_finish(struct bd__job_submit *js, int status)
{
    if (js->is_stream && js->cb == NULL) {  /* failed while opening: the open answers */
        bd__job_stream_done(js, status);
        return;
    }
    struct bd_job_submitted res = {
        .job_id = status == BD_OK ? js->job_id : NULL,
        .created_at = js->created_at,
        .created_unix = js->created_unix,
        .queue_position = js->queue_position,
        .queued_items = js->queued_items,
        .max_queued_items = js->deps.cfg->max_queued_items,
    };
    if (status == BD_OK)
        res.estimated_completion_unix =
            bd_job_submit_estimate(&js->deps, js->op, js->model, js->queued_items, js->items,
                                   js->created_unix);
    js->cb(status, &res, js->arg);
    bd__job_submit_free(js);
}

/* The log line of a PostgreSQL failure: its text goes to the log, once, never to a client. */
void bd__job_submit_log_pg(struct bd__job_submit *js, const char *step, const PGresult *res)
{
    const char *msg = res ? PQresultErrorMessage(res)
                          : js->conn ? bd_pg_conn_get_error(js->conn) : "no connection";
    size_t n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
        n--;
    bd_log(BD_LOG_WARN, "job", "job=%s event=submit_failed step=%s pg=\"%.*s\"", js->job_id,
           step, (int)n, msg);
}

/* ---- the Redis enqueue ----------------------------------------------------------------- */

static void job_submit_on_enqueued(int status, long long position, void *arg)
{
    struct bd__job_submit *js = arg;

    if (status == BD_OK)
        js->queue_position = position;
    else
        bd_log(BD_LOG_WARN, "job", "job=%s event=enqueue_failed err=%s "
               "note=queued_by_rebuild_from_postgres", js->job_id, bd_strerror(status));
    if (js->deps.engine)
        bd_job_engine_kick(js->deps.engine);
    bd_log(BD_LOG_INFO, "job", "job=%s event=submitted operation=%s items=%u batches=%u "
           "priority=%s", js->job_id, bd_job_operation_name(js->op), js->items, js->batches,
           bd_job_priority_name(js->priority));
    bd__job_submit_finish(js, BD_OK);
}

static void job_submit_enqueue(struct bd__job_submit *js)
{
    js->is_reserved = false;                /* the enqueue takes the reservation over */
    if (bd_rq_enqueue(js->deps.rq, js->job_id, (enum bd_priority)js->priority, js->seq,
                      js->model ? js->model : "", js->items, job_submit_on_enqueued, js) < 0)
        job_submit_on_enqueued(BD_EREDIS, 0, js);
}

/* ---- the transaction ------------------------------------------------------------------- */

/* A COMMIT whose answer never came: the job exists if and only if it committed. */
static void job_submit_on_exists(int status, bool is_found, void *arg)
{
    struct bd__job_submit *js = arg;

    if (status == BD_OK && is_found) {
        bd_log(BD_LOG_WARN, "job", "job=%s event=commit_answer_lost outcome=committed",
               js->job_id);
        job_submit_enqueue(js);
        return;
    }
    bd_log(BD_LOG_WARN, "job", "job=%s event=commit_answer_lost outcome=%s", js->job_id,
           status == BD_OK ? "rolled_back" : "unknown");
    bd__job_submit_finish(js, BD_EPG);
}

/* The transaction's last step answered: COMMIT done, or some step failed. */
void bd__job_submit_on_written(int status, PGresult *res, void *arg)
{
    struct bd__job_submit *js = arg;

    if (status < 0)
        bd__job_submit_log_pg(js, js->is_commit_sent ? "commit" : "write", res);
    bd_pg_release(js->conn);                /* rolls back when something failed */
    js->conn = NULL;
    bd_buf_free(&js->copy);
    if (status == BD_OK) {
        job_submit_enqueue(js);
    } else if (js->idem_key && bd_job_store_is_unique_violation(res)) {
        bd__job_submit_finish(js, BD_ECONFLICT);    /* a concurrent submit won the key */
    } else if (js->is_commit_sent) {
        /* The COMMIT may have been applied although its answer was lost: ask on a fresh
         * connection before telling the client anything. */
        if (bd_job_store_job_exists(js->deps.pg, js->job_id, job_submit_on_exists, js) < 0)
            bd__job_submit_finish(js, BD_EPG);
    } else {
        bd__job_submit_finish(js, BD_EPG);
    }
}

static void job_submit_on_batches_copied(int status, PGresult *res, void *arg)
{
    struct bd__job_submit *js = arg;

    if (status < 0) {
        bd__job_submit_on_written(status, res, js);
        return;
    }
    js->is_commit_sent = true;
    if (bd_job_store_commit(js->conn, bd__job_submit_on_written, js) < 0) {
        js->is_commit_sent = false;             /* never sent: nothing to settle */
        bd__job_submit_on_written(BD_EPG, NULL, js);
    }
}

/* One COPY row per batch; each payload is freed once copied, to keep the peak at one
 * copy of the job. */
static int job_submit_build_copy(struct bd__job_submit *js)
{
    bd_pg_copy_begin(&js->copy);
    for (unsigned b = 0; b < js->batches; b++) {
        unsigned first = b * js->batch_size;
        unsigned cnt = js->items - first < js->batch_size ? js->items - first : js->batch_size;
        const struct bd_job_payload *p = &js->batch[b];
        bool is_insert = js->op == BD_OP_BULK_INSERT;
        bd_job_store_put_batch(&js->copy, js->job_id, b, first, cnt,
                               is_insert ? NULL : p->data, is_insert ? 0 : p->len,
                               is_insert ? p->data : NULL, is_insert ? p->len : 0);
        free(js->batch[b].data);
        js->batch[b].data = NULL;
    }
    return bd_pg_copy_end(&js->copy);
}

static void job_submit_on_job_row(int status, PGresult *res, void *arg)
{
    struct bd__job_submit *js = arg;
    int rc;

    if (js->is_stream) {                    /* the row is in: batches come one at a time */
        if (status < 0 && js->idem_key && bd_job_store_is_unique_violation(res)) {
            bd__job_stream_done(js, BD_ECONFLICT);  /* another request holds the key */
            return;
        }
        if (status < 0)
            bd__job_submit_log_pg(js, "write", res);
        bd__job_stream_done(js, status < 0 ? BD_EPG : BD_OK);
        return;
    }
    if (status < 0) {
        bd__job_submit_on_written(status, res, js);
        return;
    }
    rc = job_submit_build_copy(js);
    if (rc == BD_OK)
        rc = bd_job_store_copy_batches(js->conn, &js->copy, job_submit_on_batches_copied, js);
    if (rc < 0) {
        bd_log(BD_LOG_WARN, "job", "job=%s event=submit_failed step=copy err=%s", js->job_id,
               bd_err_name(rc));
        bd_pg_release(js->conn);
        js->conn = NULL;
        bd__job_submit_finish(js, rc == BD_ENOMEM ? BD_ENOMEM : BD_EPG);
    }
}

/* The job row's options object as JSON text (malloc'ed), or NULL on ENOMEM. */
char *bd__job_submit_options(const struct bd__job_submit *js)
{
    json_t *opt = json_pack("{s:i,s:s,s:f,s:i,s:i}", "batch_size", (int)js->batch_size,
                            "priority", bd_job_priority_name(js->priority), "timeout_s",
                            js->timeout_s, "max_retries", js->max_retries, "dimension",
                            (int)js->dim);
    char *options = opt ? json_dumps(opt, JSON_COMPACT) : NULL;
    json_decref(opt);
    return options;
}

/* The job's row as the store writes it (options: bd__job_submit_options's). */
struct bd_job_store_new_job bd__job_submit_row(const struct bd__job_submit *js,
                                                  const char *options)
{
    return (struct bd_job_store_new_job){
        .id = js->job_id,
        .seq = js->seq,
        .operation = bd_job_operation_name(js->op),
        .model = js->model,
        .collection = js->collection,
        .priority = js->priority,
        .batch_size = js->batch_size,
        .total_items = js->items,
        .total_batches = js->batches,
        .timeout_s = js->timeout_s,
        .max_retries = js->max_retries,
        .options_json = options,
        .metadata_json = js->metadata_json,
        .idempotency_key = js->idem_key,
        .request_hash = js->idem_key ? js->request_hash : NULL,
        .created_unix = js->created_unix,
    };
}

/* One transaction: BEGIN and the job row (pipelined), the batches (binary COPY), COMMIT.
 * The job is therefore wholly there or not at all. */
static void job_submit_on_conn(int status, struct bd_pg_conn *conn, void *arg)
{
    struct bd__job_submit *js = arg;
    int rc = BD_ENOMEM;

    if (status < 0) {
        bd_log(BD_LOG_WARN, "job", "job=%s event=submit_failed step=acquire err=%s",
               js->job_id, bd_err_name(status));
        bd__job_submit_finish(js, BD_EPG);
        return;
    }
    js->conn = conn;
    char *options = bd__job_submit_options(js);
    if (options) {
        struct bd_job_store_new_job row = bd__job_submit_row(js, options);
        rc = bd_job_store_begin_job(conn, &row, job_submit_on_job_row, js);
    }
    free(options);
    if (rc < 0) {
        bd_pg_release(js->conn);
        js->conn = NULL;
        bd__job_submit_finish(js, rc == BD_ENOMEM ? BD_ENOMEM : BD_EPG);
    }
}

/* ---- group commit ------------------------------------------------------------------------
 * Small jobs share one statement: whatever was reserved while the last group's statement
 * was in flight goes into the next one -- every job row and every batch row of the group in
 * one INSERT (bd_job_store_create_jobs: one round trip, no explicit transaction, one WAL
 * flush), then every job's enqueue in one Redis script call (bd_rq_enqueue_many). The
 * waiting happens in the pool's group of kind BD_JOB_STORE_GROUP_SUBMIT (bd_pg_group_add): the
 * submits reserved in one loop turn leave together on the next, and while a group's
 * statement is in flight the next group fills up, so the batching grows with the load and
 * costs one loop turn when there is none. synchronous_commit stays on: a job is answered
 * only after the statement that holds it returned (and after its enqueue, or the enqueue's
 * failure), so each 202 is still durable, and each job is still all or nothing.
 *
 * Failure isolation: a statement that PostgreSQL refused wrote nothing. When the error is
 * one the same rows would meet again (a permanent one: an Idempotency-Key taken, a value
 * PostgreSQL refuses) each job of the group is retried alone in a transaction of its own
 * (the path of a big job), so only the job at fault fails (an Idempotency-Key conflict
 * answers BD_ECONFLICT as before). A transient refusal (PostgreSQL shutting down, out of
 * resources) fails every job of the group with BD_EPG, as each would have failed alone. A
 * statement that got no answer (connection lost after it was sent; the pool cannot tell
 * that from no connection within its acquire timeout) may have committed: it is settled per
 * job by the lookup of job_submit_on_exists. Each job keeps its own item reservation:
 * taken over by its enqueue, given back by bd__job_submit_free on failure.
 *
 * Jobs bigger than JOB_GROUP_JOB_MAX_BYTES keep a transaction of their own (their COPY is
 * long; the peak memory of one copy of the job is kept). */
#define JOB_GROUP_JOB_MAX_BYTES (256u * 1024)
#define JOB_GROUP_MAX_JOBS 512u
#define JOB_GROUP_MAX_BYTES (8u * 1024 * 1024)

_Static_assert(JOB_GROUP_MAX_JOBS <= BD_RQ_ENQUEUE_MAX, "a group's enqueue is one call");
_Static_assert(JOB_GROUP_MAX_JOBS <= BD_JOB_STORE_NEW_JOBS_MAX, "a group is one statement");

/* One group from its statement to its enqueue's answer. */
struct job_group {
    struct bd_pg *pg;
    struct bd__job_submit *jobs;          /* linked by group_next, in arrival order */
    unsigned n;
};

static struct bd__job_submit *job_group_of(struct bd_pg_link *l)
{
    return (struct bd__job_submit *)((char *)l - offsetof(struct bd__job_submit, group_link));
}

static size_t job_submit_payload_bytes(const struct bd__job_submit *js)
{
    size_t n = 0;
    for (unsigned b = 0; js->batch && b < js->batches; b++)
        n += js->batch[b].len;
    return n;
}

/* Whether js (reserved, not yet written) is written in a group: a buffered job (not a
 * stream) small enough. */
static bool job_group_is_for(const struct bd__job_submit *js)
{
    return !js->is_stream && job_submit_payload_bytes(js) <= JOB_GROUP_JOB_MAX_BYTES;
}

static void job_group_on_flush(struct bd_pg *pg, struct bd_pg_link *items, unsigned n);

/* Wait for the next group's statement. */
static void job_group_add(struct bd__job_submit *js)
{
    int rc = bd_pg_group_add(js->deps.pg, BD_JOB_STORE_GROUP_SUBMIT, &js->group_link,
                             job_group_on_flush);
    if (rc < 0) {
        bd_log(BD_LOG_WARN, "job", "job=%s event=submit_failed step=write err=%s", js->job_id,
               bd_err_name(rc));
        bd__job_submit_finish(js, BD_EPG);
    }
}

/* The group's jobs, each answered as after its own bd_rq_enqueue. */
static void job_group_on_enqueued(int status, const long long *positions, unsigned n,
                                  void *arg)
{
    struct job_group *g = arg;
    struct bd__job_submit *js = g->jobs, *next;

    (void)n;
    free(g);
    for (unsigned i = 0; js; js = next, i++) {
        next = js->group_next;
        js->group_next = NULL;
        job_submit_on_enqueued(status, status == BD_OK ? positions[i] : 0, js);
    }
}

/* The group's jobs are in PostgreSQL: all their enqueues in one script call. */
static void job_group_enqueue(struct job_group *g)
{
    struct bd_rq_enqueue_job *jobs = malloc(g->n * sizeof(*jobs));
    struct bd__job_submit *js = g->jobs;
    unsigned i = 0;
    int rc = BD_ENOMEM;

    for (; jobs && js; js = js->group_next, i++) {
        js->is_reserved = false;            /* the enqueue takes the reservation over */
        jobs[i] = (struct bd_rq_enqueue_job){ js->job_id, (enum bd_priority)js->priority,
                                              js->seq, js->model ? js->model : "", js->items };
    }
    if (jobs)
        rc = bd_rq_enqueue_many(js ? NULL : g->jobs->deps.rq, jobs, g->n,
                                job_group_on_enqueued, g);
    free(jobs);
    if (rc < 0)
        job_group_on_enqueued(BD_EREDIS, NULL, g->n, g);
}

/* The group's statement answered (res: the error result, or NULL when none came). */
static void job_group_on_written(int status, PGresult *res, void *arg)
{
    struct job_group *g = arg;

    bd_pg_group_done(g->pg, BD_JOB_STORE_GROUP_SUBMIT);     /* the next group may go */
    if (status == BD_OK) {
        /* A group of one is a lone submit's: its "submitted" line says enough. */
        bd_log(g->n > 1 ? BD_LOG_INFO : BD_LOG_DEBUG, "job",
               "job=%s event=group_committed jobs=%u", g->jobs->job_id, g->n);
        job_group_enqueue(g);
        return;
    }
    const char *msg = res ? PQresultErrorMessage(res) : "no answer";
    size_t len = strlen(msg);
    unsigned n = g->n;
    bool is_lost = res == NULL && status != BD_ENOMEM;
    /* A permanent error says one job's rows cannot pass: retry each alone. */
    bool is_isolated = n > 1 && res != NULL && bd_pg_classify_error(res) == BD_PG_ERR_PERMANENT;
    bool is_conflict = n == 1 && g->jobs->idem_key && bd_job_store_is_unique_violation(res);
    const char *outcome = is_lost ? "settle_each" : is_isolated ? "retry_each_alone"
                          : is_conflict ? "conflict" : "failed";

    while (len > 0 && (msg[len - 1] == '\n' || msg[len - 1] == ' '))
        len--;
    bd_log(BD_LOG_WARN, "job", "job=%s event=group_submit_failed jobs=%u step=write outcome=%s "
           "err=%s pg=\"%.*s\"", g->jobs->job_id, n, outcome, bd_err_name(status), (int)len,
           msg);
    struct bd__job_submit *js = g->jobs, *next;
    free(g);
    for (; js; js = next) {
        next = js->group_next;
        js->group_next = NULL;
        if (is_lost) {
            /* The statement may have committed: each job asks whether its row exists. */
            if (bd_job_store_job_exists(js->deps.pg, js->job_id, job_submit_on_exists, js) < 0)
                bd__job_submit_finish(js, BD_EPG);
        } else if (is_isolated) {
            if (bd_pg_acquire(js->deps.pg, job_submit_on_conn, js) < 0)
                bd__job_submit_finish(js, BD_EPG);
        } else {
            bd__job_submit_finish(js, is_conflict ? BD_ECONFLICT
                                  : status == BD_ENOMEM ? BD_ENOMEM : BD_EPG);
        }
    }
}

/* The rows of the group's jobs and batches (borrowed from the jobs and opts), and the
 * statement sent. BD_OK, or < 0 and job_group_on_written never runs. */
static int job_group_send(struct job_group *g)
{
    struct bd_job_store_new_job *rows = calloc(g->n, sizeof(*rows));
    char **opts = calloc(g->n, sizeof(*opts));
    struct bd_job_store_new_batch *batches = NULL;
    unsigned nb = 0, i = 0;
    int rc = BD_ENOMEM;

    for (const struct bd__job_submit *js = g->jobs; js; js = js->group_next)
        nb += js->batches;
    if (nb > 0)
        batches = calloc(nb, sizeof(*batches));
    if (rows == NULL || opts == NULL || (nb > 0 && batches == NULL))
        goto out;
    nb = 0;
    for (const struct bd__job_submit *js = g->jobs; js; js = js->group_next, i++) {
        bool is_insert = js->op == BD_OP_BULK_INSERT;
        if ((opts[i] = bd__job_submit_options(js)) == NULL)
            goto out;
        rows[i] = bd__job_submit_row(js, opts[i]);
        for (unsigned b = 0; b < js->batches; b++) {
            unsigned first = b * js->batch_size;
            const struct bd_job_payload *p = &js->batch[b];
            batches[nb++] = (struct bd_job_store_new_batch){
                .job_id = js->job_id,
                .batch_no = b,
                .first_index = first,
                .item_count = js->items - first < js->batch_size ? js->items - first
                                                                 : js->batch_size,
                .items_json = is_insert ? NULL : p->data,
                .items_len = is_insert ? 0 : p->len,
                .payload = is_insert ? p->data : NULL,
                .payload_len = is_insert ? p->len : 0,
            };
        }
    }
    rc = bd_job_store_create_jobs(g->pg, rows, g->n, batches, nb, job_group_on_written, g);
out:
    for (unsigned k = 0; opts && k < g->n; k++)
        free(opts[k]);
    free(opts);
    free(rows);
    free(batches);
    return rc;
}

/* The pool's flush of the waiting submits: one group of them, within its limits, in
 * arrival order; the rest wait for the next (queued again first, so they keep their
 * turn). */
static void job_group_on_flush(struct bd_pg *pg, struct bd_pg_link *items, unsigned n)
{
    struct job_group *g = calloc(1, sizeof(*g));
    struct bd__job_submit **tail;
    struct bd_pg_link *l = items, *next;
    size_t bytes = 0;
    int rc;

    (void)n;
    if (g == NULL) {
        for (; l; l = next) {
            next = l->next;
            bd__job_submit_finish(job_group_of(l), BD_ENOMEM);
        }
        bd_pg_group_done(pg, BD_JOB_STORE_GROUP_SUBMIT);
        return;
    }
    g->pg = pg;
    tail = &g->jobs;
    for (; l && g->n < JOB_GROUP_MAX_JOBS; l = next) {
        struct bd__job_submit *js = job_group_of(l);
        size_t sz = job_submit_payload_bytes(js);
        if (g->n > 0 && bytes + sz > JOB_GROUP_MAX_BYTES)
            break;
        next = l->next;
        assert(js->deps.pg == pg);
        js->group_next = NULL;
        *tail = js;
        tail = &js->group_next;
        bytes += sz;
        g->n++;
    }
    for (; l; l = next) {                   /* over the limits: the next group's */
        next = l->next;
        job_group_add(job_group_of(l));
    }
    if ((rc = job_group_send(g)) < 0) {
        bd_log(BD_LOG_WARN, "job", "job=%s event=group_submit_failed jobs=%u step=write "
               "outcome=failed err=%s", g->jobs->job_id, g->n, bd_err_name(rc));
        bd_pg_group_done(pg, BD_JOB_STORE_GROUP_SUBMIT);
        struct bd__job_submit *js = g->jobs, *jn;
        free(g);
        for (; js; js = jn) {
            jn = js->group_next;
            js->group_next = NULL;
            bd__job_submit_finish(js, rc == BD_ENOMEM ? BD_ENOMEM : BD_EPG);
        }
    }
}

/* ---- id and room ----------------------------------------------------------------------- */

/* Backpressure: the items of queued jobs, of reservations not yet enqueued, and this job's
 * must stay within max_queued_items. Checked and reserved in one Redis script, so parallel
 * submits cannot pass the limit together. */
void bd__job_submit_on_reserved(int status, bool is_granted, long long queued_after,
                                   void *arg)
{
    struct bd__job_submit *js = arg;

    if (status < 0) {
        bd_log(BD_LOG_WARN, "job", "job=%s event=submit_failed step=reserve err=%s",
               js->job_id, bd_err_name(status));
        bd__job_submit_finish(js, BD_EREDIS);
        return;
    }
    if (!is_granted) {
        js->queued_items = queued_after;
        bd_log(BD_LOG_INFO, "job", "event=backpressure queued_items=%lld items=%u limit=%u",
               queued_after, js->items, js->deps.cfg->max_queued_items);
        bd__job_submit_finish(js, BD_EBUSY);
        return;
    }
    js->is_reserved = true;
    js->queued_items = queued_after - js->items;
    if (js->is_stream) {                    /* row and batches are written: commit */
        job_submit_on_batches_copied(BD_OK, NULL, js);
        return;
    }
    if (job_group_is_for(js)) {             /* a small job: a transaction shared with others */
        job_group_add(js);
        return;
    }
    if (bd_pg_acquire(js->deps.pg, job_submit_on_conn, js) < 0) {
        bd_log(BD_LOG_WARN, "job", "job=%s event=submit_failed step=acquire", js->job_id);
        bd__job_submit_finish(js, BD_EPG);
    }
}

/* Redis's answer: the job's seq and id, and (a buffered job) its room. */
static void job_submit_on_reserved_next(int status, long long seq, const char *job_id,
                                        bool is_granted, long long queued_after, void *arg)
{
    struct bd__job_submit *js = arg;

    if (status == BD_OK &&
        (size_t)snprintf(js->job_id, sizeof(js->job_id), "%s", job_id) >= sizeof(js->job_id))
        status = BD_EREDIS;                 /* cannot be: the prefix leaves room for any seq */
    if (status < 0) {
        bd_log(BD_LOG_WARN, "job", "event=submit_failed step=reserve_next err=%s",
               bd_err_name(status));
        bd__job_submit_finish(js, BD_EREDIS);
        return;
    }
    js->seq = seq;
    if (js->is_stream) {
        /* Its items are not known yet: they are reserved when the body has ended. */
        if (bd_pg_acquire(js->deps.pg, job_submit_on_conn, js) < 0)
            bd__job_submit_finish(js, BD_EPG);
        return;
    }
    bd__job_submit_on_reserved(BD_OK, is_granted, queued_after, js);
}

/* The job's creation time and the first part of its id: "batch_insert_<UTC stamp>_" for
 * bulk_insert, "batch_<model>_<UTC stamp>_" otherwise (the model's characters other than
 * letters, digits, '-' and '_' as '_'); Redis appends the seq (bd_rq_reserve_next). */
int bd__job_submit_start(struct bd__job_submit *js)
{
    char stamp[32], model[64], prefix[sizeof(js->job_id) - 24];
    struct tm tm;
    time_t t;

    js->created_unix = (double)time(NULL);
    t = (time_t)js->created_unix;
    gmtime_r(&t, &tm);
    strftime(stamp, sizeof(stamp), "%Y%m%d_%H%M%S", &tm);
    bd_time_rfc3339((long long)js->created_unix * 1000, js->created_at, sizeof(js->created_at));
    if (js->op == BD_OP_BULK_INSERT) {
        snprintf(prefix, sizeof(prefix), "batch_insert_%s_", stamp);
    } else {
        size_t n = 0;
        for (const char *p = js->model; p && *p && n + 1 < sizeof(model); p++)
            model[n++] = (isalnum((unsigned char)*p) || *p == '-' || *p == '_') ? *p : '_';
        model[n] = '\0';
        snprintf(prefix, sizeof(prefix), "batch_%s_%s_", model, stamp);
    }
    return bd_rq_reserve_next(js->deps.rq, prefix, js->is_stream ? -1 : (long long)js->items,
                              js->deps.cfg->max_queued_items, job_submit_on_reserved_next, js);
}

static char *job_submit_strdup(const char *s, bool *is_failed)
{
    char *d = s ? strdup(s) : NULL;
    if (s && d == NULL)
        *is_failed = true;
    return d;
}

/* A submit's record from a spec (strings copied), or NULL on ENOMEM. */
struct bd__job_submit *bd__job_submit_new(const struct bd_job_submit_deps *deps,
                                         const struct bd_job_spec *spec)
{
    struct bd__job_submit *js = calloc(1, sizeof(*js));
    bool is_failed = false;

    if (js == NULL)
        return NULL;
    js->deps = *deps;
    js->op = spec->op;
    js->model = job_submit_strdup(spec->model, &is_failed);
    js->collection = job_submit_strdup(spec->collection, &is_failed);
    js->metadata_json = job_submit_strdup(spec->metadata_json ? spec->metadata_json : "{}",
                                          &is_failed);
    js->idem_key = job_submit_strdup(spec->idem_key, &is_failed);
    if (spec->idem_key && spec->request_hash)
        snprintf(js->request_hash, sizeof(js->request_hash), "%s", spec->request_hash);
    js->priority = spec->priority;
    js->batch_size = spec->batch_size;
    js->items = spec->items;
    js->batches = spec->batches;
    js->dim = spec->dim;
    js->timeout_s = spec->timeout_s;
    js->max_retries = spec->max_retries;
    bd_buf_init(&js->copy);
    if (is_failed) {
        bd__job_submit_free(js);
        return NULL;
    }
    return js;
}

int bd_job_submit(const struct bd_job_submit_deps *deps, const struct bd_job_spec *spec,
                  struct bd_job_payload *batches, bd_job_submitted_cb cb, void *arg)
{
    struct bd__job_submit *js = bd__job_submit_new(deps, spec);
    int rc;

    if (js == NULL) {
        for (unsigned b = 0; batches && b < spec->batches; b++)
            free(batches[b].data);
        free(batches);
        return BD_ENOMEM;
    }
    js->batch = batches;
    js->cb = cb;
    js->arg = arg;
    if ((rc = bd__job_submit_start(js)) < 0) {
        bd__job_submit_free(js);
        return rc == BD_ENOMEM ? BD_ENOMEM : BD_EREDIS;
    }
    return BD_OK;
}

