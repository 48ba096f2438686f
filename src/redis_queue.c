/* redis_queue.c -- the job queue, leases, reservations and counters in Redis: the queue
 * operations built on the Lua scripts of rq_scripts.c.
 *
 * Sends the scripts through rq_conn.c (bd__rq_eval, bd__rq_command) and turns each reply
 * into what the caller's callback takes (bd__rq_deliver). Loop thread only; never blocks.
 * Must not touch the connection itself: that is rq_conn.c's.  SPDX-License-Identifier: MIT
 */
#include "rq_internal.h"

#include "batchd/buf.h"
#include "batchd/error.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RQ_REAP_LIMIT "1000"        /* jobs returned per reap call, keeps the script short */

static const char *const rq_prio_names[BD_PRIO_COUNT] = { "high", "normal", "low" };

/* ---------------------------------------------------------------------------------------
 * Replies
 * ------------------------------------------------------------------------------------- */

static bool rq_reply_to_ll(const redisReply *reply, long long *out)
{
    char *end;

    if (reply->type == REDIS_REPLY_INTEGER) {
        *out = reply->integer;
        return true;
    }
    if (reply->type == REDIS_REPLY_NIL) {
        *out = 0;
        return true;
    }
    if (reply->type == REDIS_REPLY_STRING && reply->len > 0) {
        errno = 0;
        *out = strtoll(reply->str, &end, 10);
        return errno == 0 && *end == '\0';
    }
    return false;
}

static bool rq_parse_used_memory(const redisReply *reply, long long *out)
{
    const char *p;

    if (reply->type != REDIS_REPLY_STRING && reply->type != REDIS_REPLY_STATUS)
        return false;
    p = strstr(reply->str, "\nused_memory:");
    if (p != NULL)
        p += 1;
    else if (strncmp(reply->str, "used_memory:", 12) == 0)
        p = reply->str;
    else
        return false;
    *out = strtoll(p + 12, NULL, 10);
    return true;
}

/* An array reply of exactly n integers into out. */
static bool rq_reply_to_lls(const redisReply *reply, long long *out, size_t n)
{
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!rq_reply_to_ll(reply->element[i], &out[i]))
            return false;
    return true;
}

static void rq_deliver_counts(struct bd__rq_call *call, int status, const redisReply *reply)
{
    struct bd_rq_counts c;
    long long f[6];

    if (status == BD_OK && !rq_reply_to_lls(reply, f, 6))
        status = BD_EREDIS;
    if (status != BD_OK) {
        call->cb.counts(status, NULL, call->arg);
        return;
    }
    for (int i = 0; i < BD_PRIO_COUNT; i++)
        c.pending[i] = f[i];
    c.inflight = f[3];
    c.queued_items = f[4];
    c.reserved_items = f[5];
    call->cb.counts(BD_OK, &c, call->arg);
}

/* [deadline_ms, owner]: a bulk string (RESP2) or a double (RESP3) and a string, or nils. */
static void rq_deliver_lease(struct bd__rq_call *call, int status, const redisReply *reply)
{
    const redisReply *d, *o;
    double deadline = -1.0;
    const char *owner = NULL;
    char *end;

    if (status == BD_OK && (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2))
        status = BD_EREDIS;
    if (status == BD_OK) {
        d = reply->element[0];
        o = reply->element[1];
        if (d->type == REDIS_REPLY_STRING && d->len > 0) {
            deadline = strtod(d->str, &end) / 1000.0;
            if (*end != '\0')
                status = BD_EREDIS;
        } else if (d->type == REDIS_REPLY_INTEGER) {
            deadline = (double)d->integer / 1000.0;
        } else if (d->type != REDIS_REPLY_NIL) {
            status = BD_EREDIS;
        }
        if (status == BD_OK && deadline >= 0 && o->type == REDIS_REPLY_STRING)
            owner = o->str;
    }
    if (status != BD_OK)
        deadline = -1.0;
    call->cb.lease(status, deadline, owner, call->arg);
}

/* Call the caller's callback for call with status and (when status is BD_OK) reply. */
void bd__rq_deliver(struct bd__rq_call *call, int status, const redisReply *reply)
{
    long long v = 0;

    switch (call->conv) {
    case BD__RQ_CONV_RAW:
        call->cb.raw(status, status == BD_OK ? reply : NULL, call->arg);
        return;
    case BD__RQ_CONV_INT:
    case BD__RQ_CONV_NOT:
        if (status == BD_OK && !rq_reply_to_ll(reply, &v))
            status = BD_EREDIS;
        if (status == BD_OK && call->conv == BD__RQ_CONV_NOT)
            v = (v == 0);
        call->cb.num(status, status == BD_OK ? v : 0, call->arg);
        return;
    case BD__RQ_CONV_OK:
        if (status == BD_OK && reply->type != REDIS_REPLY_STATUS)
            status = BD_EREDIS;
        call->cb.num(status, status == BD_OK, call->arg);
        return;
    case BD__RQ_CONV_MEMORY:
        if (status == BD_OK && !rq_parse_used_memory(reply, &v))
            status = BD_EREDIS;
        call->cb.num(status, status == BD_OK ? v : 0, call->arg);
        return;
    case BD__RQ_CONV_CLAIM:
        if (status == BD_OK && reply->type == REDIS_REPLY_STRING)
            call->cb.claim(BD_OK, reply->str, call->arg);
        else if (status == BD_OK && reply->type == REDIS_REPLY_NIL)
            call->cb.claim(BD_OK, NULL, call->arg);
        else
            call->cb.claim(status == BD_OK ? BD_EREDIS : status, NULL, call->arg);
        return;
    case BD__RQ_CONV_COUNTS:
        rq_deliver_counts(call, status, reply);
        return;
    case BD__RQ_CONV_LEASE:
        rq_deliver_lease(call, status, reply);
        return;
    case BD__RQ_CONV_RESERVE: {
        long long f[2] = { 0, 0 };
        if (status == BD_OK && !rq_reply_to_lls(reply, f, 2))
            status = BD_EREDIS;
        call->cb.reserve(status, status == BD_OK && f[0] == 1, f[1], call->arg);
        return;
    }
    case BD__RQ_CONV_HANDSHAKE:
    case BD__RQ_CONV_INTERNAL:
        break;
    }
    assert(!"not a caller's call");
}


/* ---------------------------------------------------------------------------------------
 * Commands
 * ------------------------------------------------------------------------------------- */

#define RQ_CB(field, fn) ((union bd__rq_cb){ .field = (fn) })

static bool rq_id_ok(const char *id)
{
    return id != NULL && id[0] != '\0';
}

int bd_rq_next_seq(struct bd_rq *rq, bd_rq_int_cb cb, void *arg)
{
    const char *argv[2] = { "INCR", rq->seq_key };

    if (cb == NULL)
        return BD_EINVAL;
    return bd__rq_command(rq, BD__RQ_CONV_INT, RQ_CB(num, cb), arg, 2, argv, NULL);
}

int bd_rq_restore_seq(struct bd_rq *rq, long long at_least, bd_rq_int_cb cb, void *arg)
{
    char n[24];
    const char *args[1] = { n };

    if (at_least < 0 || cb == NULL)
        return BD_EINVAL;
    snprintf(n, sizeof(n), "%lld", at_least);
    return bd__rq_eval(rq, BD__RQ_S_RESTORE_SEQ, BD__RQ_CONV_INT, RQ_CB(num, cb), arg, 1, args);
}

/* Enqueue and enqueue-retry share one script; retry ('1') marks a job still in flight. */
static int rq_enqueue(struct bd_rq *rq, const char *job_id, enum bd_priority prio, int64_t seq,
                      const char *model, long long items, bool is_retry, bd_rq_int_cb cb,
                      void *arg)
{
    char seq_s[24], items_s[24];
    const char *args[6];

    if (!rq_id_ok(job_id) || (unsigned)prio >= BD_PRIO_COUNT || items < 0 || cb == NULL)
        return BD_EINVAL;
    snprintf(seq_s, sizeof(seq_s), "%" PRId64, seq);
    snprintf(items_s, sizeof(items_s), "%lld", items);
    args[0] = job_id;
    args[1] = rq_prio_names[prio];
    args[2] = seq_s;
    args[3] = model != NULL ? model : "";
    args[4] = items_s;
    args[5] = is_retry ? "1" : "0";
    return bd__rq_eval(rq, BD__RQ_S_ENQUEUE, BD__RQ_CONV_INT, RQ_CB(num, cb), arg, 6, args);
}

int bd_rq_enqueue(struct bd_rq *rq, const char *job_id, enum bd_priority prio, int64_t seq,
                  const char *model, long long items, bd_rq_int_cb cb, void *arg)
{
    return rq_enqueue(rq, job_id, prio, seq, model, items, false, cb, arg);
}

int bd_rq_enqueue_retry(struct bd_rq *rq, const char *job_id, enum bd_priority prio,
                        int64_t seq, const char *model, long long items, bd_rq_int_cb cb,
                        void *arg)
{
    return rq_enqueue(rq, job_id, prio, seq, model, items, true, cb, arg);
}

int bd_rq_adopt(struct bd_rq *rq, const char *job_id, enum bd_priority prio, int64_t seq,
                const char *model, long long items, bd_rq_int_cb cb, void *arg)
{
    char seq_s[24], items_s[24];
    const char *args[7];

    if (!rq_id_ok(job_id) || (unsigned)prio >= BD_PRIO_COUNT || items < 0 || cb == NULL)
        return BD_EINVAL;
    snprintf(seq_s, sizeof(seq_s), "%" PRId64, seq);
    snprintf(items_s, sizeof(items_s), "%lld", items);
    args[0] = job_id;
    args[1] = rq_prio_names[prio];
    args[2] = seq_s;
    args[3] = model != NULL ? model : "";
    args[4] = items_s;
    args[5] = rq->worker_id;
    args[6] = rq->lease_ms;
    return bd__rq_eval(rq, BD__RQ_S_ADOPT, BD__RQ_CONV_INT, RQ_CB(num, cb), arg, 7, args);
}

int bd_rq_claim(struct bd_rq *rq, bd_rq_claim_cb cb, void *arg)
{
    const char *args[2] = { rq->worker_id, rq->lease_ms };

    if (cb == NULL)
        return BD_EINVAL;
    return bd__rq_eval(rq, BD__RQ_S_CLAIM, BD__RQ_CONV_CLAIM, RQ_CB(claim, cb), arg, 2, args);
}

/* bd_rq_claim_many's call: the caller's callback, and the ids handed to it. */
struct rq_claim_many {
    bd_rq_claim_many_cb cb;
    void *arg;
};

static void rq_on_claimed_many(int status, const redisReply *reply, void *arg)
{
    struct rq_claim_many *cm = arg;
    const char *ids[BD_RQ_CLAIM_MAX];
    unsigned n = 0;
    bool is_cut = false;

    if (status == BD_OK && (reply->type != REDIS_REPLY_ARRAY ||
                            reply->elements > BD_RQ_CLAIM_MAX + 1))
        status = BD_EREDIS;
    for (size_t i = 0; status == BD_OK && i < reply->elements; i++) {
        const redisReply *el = reply->element[i];
        if (el->type == REDIS_REPLY_STRING && el->len == 0 && i + 1 == reply->elements)
            is_cut = true;                    /* the scan bound's mark, not an id */
        else if (el->type != REDIS_REPLY_STRING || el->len == 0 || n == BD_RQ_CLAIM_MAX)
            status = BD_EREDIS;
        else
            ids[n++] = el->str;
    }
    /* A reply we cannot read claimed jobs we cannot name: their leases run out and the
     * reaper puts them back (as for a reply lost with the connection). */
    cm->cb(status, ids, status == BD_OK ? n : 0, status == BD_OK && is_cut, cm->arg);
    free(cm);
}

int bd_rq_claim_many_skip(struct bd_rq *rq, unsigned max, const char *const *skip_models,
                          unsigned skip_count, bd_rq_claim_many_cb cb, void *arg)
{
    char max_s[16];
    char skip_small[512];
    char *skip = skip_small;
    size_t skip_len = 0, need = 1;
    const char *args[4] = { rq->worker_id, rq->lease_ms, max_s, "" };
    struct rq_claim_many *cm;
    int err;

    if (cb == NULL || max == 0 || max > BD_RQ_CLAIM_MAX || (skip_count > 0 && !skip_models))
        return BD_EINVAL;
    snprintf(max_s, sizeof(max_s), "%u", max);
    for (unsigned i = 0; i < skip_count; i++)
        need += 24 + strlen(skip_models[i]);
    if (need > sizeof(skip_small) && (skip = malloc(need)) == NULL)
        return BD_ENOMEM;
    skip[0] = '\0';
    for (unsigned i = 0; i < skip_count; i++)
        skip_len += (size_t)snprintf(skip + skip_len, need - skip_len, "%zu:%s",
                                     strlen(skip_models[i]), skip_models[i]);
    args[3] = skip;
    cm = malloc(sizeof(*cm));
    if (cm == NULL) {
        err = BD_ENOMEM;
        goto out;
    }
    cm->cb = cb;
    cm->arg = arg;
    /* Without a skip list the script gets the three arguments it always had. */
    err = bd__rq_eval(rq, BD__RQ_S_CLAIM, BD__RQ_CONV_RAW, RQ_CB(raw, rq_on_claimed_many), cm,
                      skip_count > 0 ? 4 : 3, args);
    if (err < 0)
        free(cm);
out:
    if (skip != skip_small)
        free(skip);
    return err;
}

int bd_rq_claim_many(struct bd_rq *rq, unsigned max, bd_rq_claim_many_cb cb, void *arg)
{
    return bd_rq_claim_many_skip(rq, max, NULL, 0, cb, arg);
}

int bd_rq_renew(struct bd_rq *rq, const char *job_id, bd_rq_int_cb cb, void *arg)
{
    const char *args[3] = { job_id, rq->worker_id, rq->lease_ms };

    if (!rq_id_ok(job_id) || cb == NULL)
        return BD_EINVAL;
    return bd__rq_eval(rq, BD__RQ_S_RENEW, BD__RQ_CONV_INT, RQ_CB(num, cb), arg, 3, args);
}

int bd_rq_release(struct bd_rq *rq, const char *job_id, bool requeue, bd_rq_int_cb cb,
                  void *arg)
{
    const char *args[3] = { job_id, rq->worker_id, requeue ? "1" : "0" };

    if (!rq_id_ok(job_id) || cb == NULL)
        return BD_EINVAL;
    return bd__rq_eval(rq, BD__RQ_S_RELEASE, BD__RQ_CONV_INT, RQ_CB(num, cb), arg, 3, args);
}

int bd_rq_cancel(struct bd_rq *rq, const char *job_id, bd_rq_int_cb cb, void *arg)
{
    const char *args[1] = { job_id };

    if (!rq_id_ok(job_id) || cb == NULL)
        return BD_EINVAL;
    return bd__rq_eval(rq, BD__RQ_S_CANCEL, BD__RQ_CONV_INT, RQ_CB(num, cb), arg, 1, args);
}

int bd_rq_reap(struct bd_rq *rq, bd_rq_int_cb cb, void *arg)
{
    const char *args[1] = { RQ_REAP_LIMIT };

    if (cb == NULL)
        return BD_EINVAL;
    return bd__rq_eval(rq, BD__RQ_S_REAP, BD__RQ_CONV_INT, RQ_CB(num, cb), arg, 1, args);
}

int bd_rq_reserve_items(struct bd_rq *rq, const char *job_id, long long n, long long max,
                        bd_rq_reserve_cb cb, void *arg)
{
    char n_s[24], max_s[24];
    const char *args[4] = { job_id, n_s, max_s, rq->reserve_ttl_ms };

    if (!rq_id_ok(job_id) || n < 0 || cb == NULL)
        return BD_EINVAL;
    snprintf(n_s, sizeof(n_s), "%lld", n);
    snprintf(max_s, sizeof(max_s), "%lld", max);
    return bd__rq_eval(rq, BD__RQ_S_RESERVE, BD__RQ_CONV_RESERVE, RQ_CB(reserve, cb), arg, 4,
                       args);
}

/* bd_rq_reserve_next's call: the caller's callback. */
struct rq_reserve_next {
    bd_rq_reserve_next_cb cb;
    void *arg;
};

static void rq_on_reserved_next(int status, const redisReply *reply, void *arg)
{
    struct rq_reserve_next *rn = arg;
    long long seq = 0, granted = 0, total = 0;
    const char *id = NULL;

    if (status == BD_OK && (reply->type != REDIS_REPLY_ARRAY || reply->elements != 4 ||
                            !rq_reply_to_ll(reply->element[0], &seq) ||
                            reply->element[1]->type != REDIS_REPLY_STRING ||
                            reply->element[1]->len == 0 ||
                            !rq_reply_to_ll(reply->element[2], &granted) ||
                            !rq_reply_to_ll(reply->element[3], &total)))
        status = BD_EREDIS;
    if (status == BD_OK)
        id = reply->element[1]->str;
    else
        seq = granted = total = 0;
    rn->cb(status, seq, id, granted == 1, total, rn->arg);
    free(rn);
}

int bd_rq_reserve_next(struct bd_rq *rq, const char *id_prefix, long long n, long long max,
                       bd_rq_reserve_next_cb cb, void *arg)
{
    char n_s[24], max_s[24];
    const char *args[4] = { id_prefix, n_s, max_s, rq->reserve_ttl_ms };
    struct rq_reserve_next *rn;
    int err;

    if (id_prefix == NULL || cb == NULL)
        return BD_EINVAL;
    if (n >= 0)
        snprintf(n_s, sizeof(n_s), "%lld", n);
    else
        n_s[0] = '\0';                         /* the seq only */
    snprintf(max_s, sizeof(max_s), "%lld", max);
    rn = malloc(sizeof(*rn));
    if (rn == NULL)
        return BD_ENOMEM;
    *rn = (struct rq_reserve_next){ cb, arg };
    err = bd__rq_eval(rq, BD__RQ_S_RESERVE_NEXT, BD__RQ_CONV_RAW,
                      RQ_CB(raw, rq_on_reserved_next), rn, 4, args);
    if (err < 0)
        free(rn);
    return err;
}

/* bd_rq_enqueue_many's call: the caller's callback and room for the positions. */
struct rq_enqueue_many {
    bd_rq_enqueue_many_cb cb;
    void *arg;
    unsigned n;
    long long pos[];
};

static void rq_on_enqueued_many(int status, const redisReply *reply, void *arg)
{
    struct rq_enqueue_many *em = arg;

    if (status == BD_OK && (reply->type != REDIS_REPLY_ARRAY || reply->elements != em->n))
        status = BD_EREDIS;
    for (unsigned i = 0; status == BD_OK && i < em->n; i++)
        if (!rq_reply_to_ll(reply->element[i], &em->pos[i]))
            status = BD_EREDIS;
    em->cb(status, status == BD_OK ? em->pos : NULL, em->n, em->arg);
    free(em);
}

/* One field of bd_rq_enqueue_many's packed argument: "<length>:<bytes>". */
static void rq_put_field(struct bd_buf *b, const char *s)
{
    size_t len = strlen(s);
    bd_buf_printf(b, "%zu:", len);
    bd_buf_append(b, s, len);
}

int bd_rq_enqueue_many(struct bd_rq *rq, const struct bd_rq_enqueue_job *jobs, unsigned n,
                       bd_rq_enqueue_many_cb cb, void *arg)
{
    struct rq_enqueue_many *em;
    struct bd_buf packed;
    char num[24];
    int err = BD_ENOMEM;

    if (jobs == NULL || n == 0 || n > BD_RQ_ENQUEUE_MAX || cb == NULL)
        return BD_EINVAL;
    for (unsigned i = 0; i < n; i++)
        if (!rq_id_ok(jobs[i].job_id) || (unsigned)jobs[i].prio >= BD_PRIO_COUNT ||
            jobs[i].items < 0)
            return BD_EINVAL;
    em = malloc(sizeof(*em) + n * sizeof(em->pos[0]));
    if (em == NULL)
        return BD_ENOMEM;
    *em = (struct rq_enqueue_many){ cb, arg, n };
    bd_buf_init(&packed);
    for (unsigned i = 0; i < n; i++) {
        rq_put_field(&packed, jobs[i].job_id);
        rq_put_field(&packed, rq_prio_names[jobs[i].prio]);
        snprintf(num, sizeof(num), "%" PRId64, jobs[i].seq);
        rq_put_field(&packed, num);
        rq_put_field(&packed, jobs[i].model != NULL ? jobs[i].model : "");
        snprintf(num, sizeof(num), "%lld", jobs[i].items);
        rq_put_field(&packed, num);
    }
    bd_buf_append(&packed, "", 1);             /* the NUL that ends the argument */
    if (!packed.is_failed) {
        const char *args[1] = { packed.data };
        err = bd__rq_eval(rq, BD__RQ_S_ENQUEUE_MANY, BD__RQ_CONV_RAW,
                          RQ_CB(raw, rq_on_enqueued_many), em, 1, args);
    }
    bd_buf_free(&packed);
    if (err < 0)
        free(em);
    return err;
}

int bd_rq_unreserve_items(struct bd_rq *rq, const char *job_id, bd_rq_int_cb cb, void *arg)
{
    const char *args[1] = { job_id };

    if (!rq_id_ok(job_id) || cb == NULL)
        return BD_EINVAL;
    return bd__rq_eval(rq, BD__RQ_S_UNRESERVE, BD__RQ_CONV_INT, RQ_CB(num, cb), arg, 1, args);
}

int bd_rq_get_counts(struct bd_rq *rq, bd_rq_counts_cb cb, void *arg)
{
    if (cb == NULL)
        return BD_EINVAL;
    return bd__rq_eval(rq, BD__RQ_S_COUNTS, BD__RQ_CONV_COUNTS, RQ_CB(counts, cb), arg, 0, NULL);
}

int bd_rq_get_model_counts(struct bd_rq *rq, bd_rq_reply_cb cb, void *arg)
{
    if (cb == NULL)
        return BD_EINVAL;
    return bd__rq_eval(rq, BD__RQ_S_MODEL_COUNTS, BD__RQ_CONV_RAW, RQ_CB(raw, cb), arg, 0, NULL);
}

int bd_rq_get_lease(struct bd_rq *rq, const char *job_id, bd_rq_lease_cb cb, void *arg)
{
    const char *args[1] = { job_id };

    if (!rq_id_ok(job_id) || cb == NULL)
        return BD_EINVAL;
    return bd__rq_eval(rq, BD__RQ_S_LEASE, BD__RQ_CONV_LEASE, RQ_CB(lease, cb), arg, 1, args);
}

int bd_rq_get_used_memory(struct bd_rq *rq, bd_rq_int_cb cb, void *arg)
{
    const char *argv[2] = { "INFO", "memory" };

    if (cb == NULL)
        return BD_EINVAL;
    return bd__rq_command(rq, BD__RQ_CONV_MEMORY, RQ_CB(num, cb), arg, 2, argv, NULL);
}

int bd_rq_is_empty(struct bd_rq *rq, bd_rq_int_cb cb, void *arg)
{
    const char *argv[2] = { "EXISTS", rq->alive_key };

    if (cb == NULL)
        return BD_EINVAL;
    return bd__rq_command(rq, BD__RQ_CONV_NOT, RQ_CB(num, cb), arg, 2, argv, NULL);
}

static int rq_rebuild_mark(struct bd_rq *rq, enum bd__rq_script script, const char *token,
                           bd_rq_int_cb cb, void *arg)
{
    const char *args[2] = { rq->worker_id, token };

    if (cb == NULL || token == NULL || token[0] == '\0' || strchr(token, ':') != NULL)
        return BD_EINVAL;
    return bd__rq_eval(rq, script, BD__RQ_CONV_INT, RQ_CB(num, cb), arg, 2, args);
}

int bd_rq_rebuild_begin(struct bd_rq *rq, const char *token, bd_rq_int_cb cb, void *arg)
{
    return rq_rebuild_mark(rq, BD__RQ_S_REBUILD_BEGIN, token, cb, arg);
}

int bd_rq_rebuild_end(struct bd_rq *rq, const char *token, bd_rq_int_cb cb, void *arg)
{
    return rq_rebuild_mark(rq, BD__RQ_S_REBUILD_END, token, cb, arg);
}
