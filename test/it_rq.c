/* it_rq.c -- redis_queue.c against the real Redis of the test stack (BATCH_REDIS_URL).
 *
 * Every case gets its own loop and key prefix ("bdtest:<pid>:<n>:"), deletes its keys at
 * the end, counts the callbacks it started and received, checks that no callback ran
 * synchronously, and asserts uv_loop_close() == 0. Waiting is done by running the loop
 * until a callback count is reached, with a watchdog timer so a lost callback fails the
 * case instead of hanging it. The test looks at and stirs Redis (keys, SCRIPT FLUSH, CLIENT
 * KILL/PAUSE) through its own blocking hiredis connection, never through the module under
 * test. CLIENT PAUSE (the timeout case) briefly stalls every client of that Redis.
 * SPDX-License-Identifier: MIT
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <curl/curl.h>
#include <hiredis/hiredis.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <dirent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bd_it.h"
#include "batchd/error.h"
#include "batchd/log.h"
#include "batchd/redis_queue.h"

#define WAIT_S 5.0

struct ctx {
    uv_loop_t loop;
    uv_timer_t watchdog;
    bool is_timed_out;
    char prefix[64];
    struct bd_rq *rq;               /* worker "w1", opened by setup */
    redisContext *sync;             /* the test's own blocking connection (sync_cmd) */
    int started;                    /* operations that returned BD_OK */
    int finished;                   /* their callbacks */
};

struct rq_state {
    int ups;
    int downs;
    struct bd_rq *rq;
    int probe_err;                  /* what a claim returned from inside the down callback */
    int probe_calls;                /* must stay 0: a refused call never calls back */
    bool probe_is_up;
};

struct ires {
    struct ctx *c;
    int calls;
    int status;
    long long v;
};

struct cres {
    struct ctx *c;
    int calls;
    int status;
    char id[128];
    bool is_null;
};

struct nres {
    struct ctx *c;
    int calls;
    int status;
    struct bd_rq_counts counts;
};

struct rres {
    struct ctx *c;
    int calls;
    int status;
    int type;
    long long integer;
    char text[512];                 /* string reply, or an array flattened with spaces */
};

struct lres {
    struct ctx *c;
    int calls;
    int status;
    double deadline;
    char owner[64];
    bool has_owner;
};

struct vres {
    struct ctx *c;
    int calls;
    int status;
    bool is_granted;
    long long after;
};

static const char *redis_url(void)
{
    return bd_it_env("BATCH_REDIS_URL", "redis://127.0.0.1:16380/0");
}

/* A blocking connection to the stack's Redis (db from the URL, or db when >= 0). */
static redisContext *sync_open(int db)
{
    CURLU *u = curl_url();
    char *host = NULL, *port = NULL, *path = NULL;
    redisContext *ctx;
    redisReply *r;

    assert_non_null(u);
    assert_int_equal(curl_url_set(u, CURLUPART_URL, redis_url(), CURLU_NON_SUPPORT_SCHEME), 0);
    assert_int_equal(curl_url_get(u, CURLUPART_HOST, &host, 0), 0);
    curl_url_get(u, CURLUPART_PORT, &port, 0);
    curl_url_get(u, CURLUPART_PATH, &path, 0);
    ctx = redisConnect(host, port != NULL ? atoi(port) : 6379);
    assert_non_null(ctx);
    assert_int_equal(ctx->err, 0);
    if (db < 0)
        db = path != NULL && path[0] == '/' ? atoi(path + 1) : 0;
    r = redisCommand(ctx, "SELECT %d", db);
    assert_non_null(r);
    assert_int_not_equal(r->type, REDIS_REPLY_ERROR);
    freeReplyObject(r);
    curl_free(host);
    curl_free(port);
    curl_free(path);
    curl_url_cleanup(u);
    return ctx;
}

/* One command on the test's own connection; caller frees the reply (never NULL). */
static redisReply *sync_cmd(struct ctx *c, const char *fmt, ...)
{
    redisReply *r;
    va_list ap;

    if (c->sync == NULL)
        c->sync = sync_open(-1);
    va_start(ap, fmt);
    r = redisvCommand(c->sync, fmt, ap);
    va_end(ap);
    assert_non_null(r);
    return r;
}

/* One command whose integer (or nil: -1, or number in a string) reply is returned. */
static long long sync_ll(struct ctx *c, const char *fmt, ...)
{
    redisReply *r;
    long long v = -1;
    va_list ap;

    if (c->sync == NULL)
        c->sync = sync_open(-1);
    va_start(ap, fmt);
    r = redisvCommand(c->sync, fmt, ap);
    va_end(ap);
    assert_non_null(r);
    if (r->type == REDIS_REPLY_INTEGER)
        v = r->integer;
    else if (r->type == REDIS_REPLY_STRING)
        v = atoll(r->str);
    else
        assert_int_equal(r->type, REDIS_REPLY_NIL);
    freeReplyObject(r);
    return v;
}

/* Keys of this case's prefix that match pattern (appended to the prefix). */
static long long count_keys(struct ctx *c, const char *pattern)
{
    redisReply *r = sync_cmd(c, "KEYS %s%s", c->prefix, pattern);
    long long n;

    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    n = (long long)r->elements;
    freeReplyObject(r);
    return n;
}

/* ---------------------------------------------------------------------------------------
 * Loop helpers
 * ------------------------------------------------------------------------------------- */

static void on_watchdog(uv_timer_t *t)
{
    struct ctx *c = t->data;

    c->is_timed_out = true;
}

/* Run the loop until *calls >= want; fail the case after timeout_s. */
static void wait_calls(struct ctx *c, const int *calls, int want, double timeout_s)
{
    c->is_timed_out = false;
    uv_timer_start(&c->watchdog, on_watchdog, (uint64_t)(timeout_s * 1000), 0);
    while (*calls < want && !c->is_timed_out)
        uv_run(&c->loop, UV_RUN_ONCE);
    uv_timer_stop(&c->watchdog);
    if (*calls < want)
        fail_msg("timed out waiting for a callback (%d of %d)", *calls, want);
}

static void on_sleep(uv_timer_t *t)
{
    (*(int *)t->data)++;
}

static void loop_sleep(struct ctx *c, unsigned ms)
{
    uv_timer_t t;
    int fired = 0;

    uv_timer_init(&c->loop, &t);
    t.data = &fired;
    uv_timer_start(&t, on_sleep, ms, 0);
    wait_calls(c, &fired, 1, ms / 1000.0 + WAIT_S);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&c->loop, UV_RUN_NOWAIT);    /* runs the close before t goes out of scope */
}

/* ---------------------------------------------------------------------------------------
 * Callbacks
 * ------------------------------------------------------------------------------------- */

static void on_probe_claim(int status, const char *job_id, void *arg)
{
    struct rq_state *st = arg;

    (void)status;
    (void)job_id;
    st->probe_calls++;
}

static void on_state(bool up, void *arg)
{
    struct rq_state *st = arg;

    if (up) {
        st->ups++;
        return;
    }
    st->downs++;
    st->probe_is_up = bd_rq_is_up(st->rq);
    st->probe_err = bd_rq_claim(st->rq, on_probe_claim, st);
}

static void on_int(int status, long long v, void *arg)
{
    struct ires *r = arg;

    r->calls++;
    r->c->finished++;
    r->status = status;
    r->v = v;
}

static void on_claim(int status, const char *job_id, void *arg)
{
    struct cres *r = arg;

    r->calls++;
    r->c->finished++;
    r->status = status;
    r->is_null = job_id == NULL;
    snprintf(r->id, sizeof(r->id), "%s", job_id != NULL ? job_id : "");
}

static void on_counts(int status, const struct bd_rq_counts *counts, void *arg)
{
    struct nres *r = arg;

    r->calls++;
    r->c->finished++;
    r->status = status;
    if (counts != NULL)
        r->counts = *counts;
}

static void on_lease(int status, double deadline_unix, const char *owner, void *arg)
{
    struct lres *r = arg;

    r->calls++;
    r->c->finished++;
    r->status = status;
    r->deadline = deadline_unix;
    r->has_owner = owner != NULL;
    snprintf(r->owner, sizeof(r->owner), "%s", owner != NULL ? owner : "");
}

static void on_reserve(int status, bool is_granted, long long queued_after, void *arg)
{
    struct vres *r = arg;

    r->calls++;
    r->c->finished++;
    r->status = status;
    r->is_granted = is_granted;
    r->after = queued_after;
}

static void on_reply(int status, const redisReply *reply, void *arg)
{
    struct rres *r = arg;
    size_t off = 0;

    r->calls++;
    r->c->finished++;
    r->status = status;
    r->text[0] = '\0';
    if (reply == NULL)
        return;
    r->type = reply->type;
    r->integer = reply->integer;
    if (reply->type == REDIS_REPLY_STRING || reply->type == REDIS_REPLY_STATUS) {
        snprintf(r->text, sizeof(r->text), "%s", reply->str);
        return;
    }
    for (size_t i = 0; reply->type == REDIS_REPLY_ARRAY && i < reply->elements; i++) {
        const redisReply *e = reply->element[i];
        int n = e->type == REDIS_REPLY_INTEGER
                    ? snprintf(r->text + off, sizeof(r->text) - off, "%s%lld", i ? " " : "",
                               e->integer)
                    : snprintf(r->text + off, sizeof(r->text) - off, "%s%s", i ? " " : "",
                               e->str != NULL ? e->str : "(nil)");
        if (n < 0 || (size_t)n >= sizeof(r->text) - off)
            break;
        off += (size_t)n;
    }
}

/* ---------------------------------------------------------------------------------------
 * Operations, run to completion (each asserts BD_OK, no synchronous callback, one call)
 * ------------------------------------------------------------------------------------- */

#define STARTED(c, err, r)                                                                 \
    do {                                                                                   \
        assert_int_equal((err), BD_OK);                                                    \
        assert_int_equal((r).calls, 0); /* never synchronous */                            \
        (c)->started++;                                                                    \
        wait_calls((c), &(r).calls, 1, WAIT_S);                                            \
        assert_int_equal((r).calls, 1);                                                    \
    } while (0)

static long long op_enqueue(struct ctx *c, struct bd_rq *rq, const char *id,
                            enum bd_priority prio, int64_t seq, const char *model,
                            long long items)
{
    struct ires r = { .c = c };

    STARTED(c, bd_rq_enqueue(rq, id, prio, seq, model, items, on_int, &r), r);
    assert_int_equal(r.status, BD_OK);
    return r.v;
}

/* Returns the claimed id in buf ("" when none). */
static const char *op_claim(struct ctx *c, struct bd_rq *rq, char *buf, size_t len)
{
    struct cres r = { .c = c };

    STARTED(c, bd_rq_claim(rq, on_claim, &r), r);
    assert_int_equal(r.status, BD_OK);
    snprintf(buf, len, "%s", r.id);
    return buf;
}

static long long op_renew(struct ctx *c, struct bd_rq *rq, const char *id)
{
    struct ires r = { .c = c };

    STARTED(c, bd_rq_renew(rq, id, on_int, &r), r);
    assert_int_equal(r.status, BD_OK);
    return r.v;
}

/* A rebuild's begin or end with token: the cb value. */
static long long op_rebuild(struct ctx *c, struct bd_rq *rq, bool is_begin, const char *token)
{
    struct ires r = { .c = c };

    STARTED(c, (is_begin ? bd_rq_rebuild_begin : bd_rq_rebuild_end)(rq, token, on_int, &r), r);
    assert_int_equal(r.status, BD_OK);
    return r.v;
}

/* Redis is whole: a rebuild's begin and end with nothing between, as batchd does first. */
static void op_mark_alive(struct ctx *c, struct bd_rq *rq)
{
    assert_int_equal(op_rebuild(c, rq, true, "t0"), 1);
    assert_int_equal(op_rebuild(c, rq, false, "t0"), 1);
}

static long long op_release(struct ctx *c, struct bd_rq *rq, const char *id, bool requeue)
{
    struct ires r = { .c = c };

    STARTED(c, bd_rq_release(rq, id, requeue, on_int, &r), r);
    assert_int_equal(r.status, BD_OK);
    return r.v;
}

static long long op_cancel(struct ctx *c, struct bd_rq *rq, const char *id)
{
    struct ires r = { .c = c };

    STARTED(c, bd_rq_cancel(rq, id, on_int, &r), r);
    assert_int_equal(r.status, BD_OK);
    return r.v;
}

static long long op_reap(struct ctx *c, struct bd_rq *rq)
{
    struct ires r = { .c = c };

    STARTED(c, bd_rq_reap(rq, on_int, &r), r);
    assert_int_equal(r.status, BD_OK);
    return r.v;
}

static long long op_adopt(struct ctx *c, struct bd_rq *rq, const char *id,
                          enum bd_priority prio, int64_t seq, const char *model,
                          long long items)
{
    struct ires r = { .c = c };

    STARTED(c, bd_rq_adopt(rq, id, prio, seq, model, items, on_int, &r), r);
    assert_int_equal(r.status, BD_OK);
    return r.v;
}

static long long op_seq(struct ctx *c, struct bd_rq *rq)
{
    struct ires r = { .c = c };

    STARTED(c, bd_rq_next_seq(rq, on_int, &r), r);
    assert_int_equal(r.status, BD_OK);
    return r.v;
}

static struct bd_rq_counts op_counts(struct ctx *c, struct bd_rq *rq)
{
    struct nres r = { .c = c };

    STARTED(c, bd_rq_get_counts(rq, on_counts, &r), r);
    assert_int_equal(r.status, BD_OK);
    return r.counts;
}

/* Per-model counts flattened: "m1 1 0 m2 0 1". */
static void op_model_counts(struct ctx *c, struct bd_rq *rq, char *buf, size_t len)
{
    struct rres r = { .c = c };

    STARTED(c, bd_rq_get_model_counts(rq, on_reply, &r), r);
    assert_int_equal(r.status, BD_OK);
    assert_int_equal(r.type, REDIS_REPLY_ARRAY);
    snprintf(buf, len, "%s", r.text);
}

static void assert_counts(struct ctx *c, struct bd_rq *rq, long long high, long long normal,
                          long long low, long long inflight, long long queued_items)
{
    struct bd_rq_counts n = op_counts(c, rq);

    assert_int_equal(n.pending[BD_PRIO_HIGH], high);
    assert_int_equal(n.pending[BD_PRIO_NORMAL], normal);
    assert_int_equal(n.pending[BD_PRIO_LOW], low);
    assert_int_equal(n.inflight, inflight);
    assert_int_equal(n.queued_items, queued_items);
}

static void assert_models(struct ctx *c, struct bd_rq *rq, const char *want)
{
    char got[512];

    op_model_counts(c, rq, got, sizeof(got));
    assert_string_equal(got, want);
}

/* ---------------------------------------------------------------------------------------
 * Opening and closing
 * ------------------------------------------------------------------------------------- */

static struct bd_rq *rq_open_url(struct ctx *c, const char *url, const char *worker,
                                 double lease_s, double timeout_s, struct rq_state *st)
{
    struct bd_rq_options o = {
        .url = url, .worker_id = worker, .prefix = c->prefix,
        .lease_s = lease_s, .command_timeout_s = timeout_s,
    };
    struct bd_rq *rq = NULL;

    memset(st, 0, sizeof(*st));
    assert_int_equal(bd_rq_new(&c->loop, &o, &rq), BD_OK);
    assert_non_null(rq);
    st->rq = rq;
    bd_rq_set_state_cb(rq, on_state, st);
    return rq;
}

static struct bd_rq *rq_open(struct ctx *c, const char *worker, double lease_s,
                             double timeout_s, struct rq_state *st)
{
    struct bd_rq *rq = rq_open_url(c, redis_url(), worker, lease_s, timeout_s, st);

    assert_false(bd_rq_is_up(rq));  /* up only once the handshake is answered */
    wait_calls(c, &st->ups, 1, WAIT_S);
    assert_true(bd_rq_is_up(rq));
    return rq;
}

static void on_closed(int status, void *arg)
{
    struct ires *r = arg;

    r->calls++;
    r->status = status;
}

static void rq_close_wait(struct ctx *c, struct bd_rq *rq)
{
    struct ires r = { .c = c };

    bd_rq_close(rq, on_closed, &r);
    assert_int_equal(r.calls, 0);
    wait_calls(c, &r.calls, 1, WAIT_S);
    assert_int_equal(r.status, BD_OK);
}

static int setup(void **state)
{
    static int n;
    struct ctx *c = calloc(1, sizeof(*c));
    static struct rq_state st;

    assert_non_null(c);
    assert_int_equal(uv_loop_init(&c->loop), 0);
    uv_timer_init(&c->loop, &c->watchdog);
    c->watchdog.data = c;
    snprintf(c->prefix, sizeof(c->prefix), "bdtest:%d:%d:", (int)getpid(), ++n);
    c->rq = rq_open(c, "w1", 30.0, 5.0, &st);
    *state = c;
    return 0;
}

/* Delete every key of this case's prefix: its end, or Redis losing the keys (as a FLUSHDB
 * would, without touching the suites that share the database). */
static void del_prefix_keys(struct ctx *c)
{
    redisReply *r = sync_cmd(c, "EVAL %s 0 %s",
                             "for _, k in ipairs(redis.call('KEYS', ARGV[1] .. '*')) do\n"
                             "  redis.call('DEL', k)\n"
                             "end\n"
                             "return 0\n", c->prefix);

    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    freeReplyObject(r);
}

static int teardown(void **state)
{
    struct ctx *c = *state;

    del_prefix_keys(c);
    redisFree(c->sync);
    if (c->rq != NULL)
        rq_close_wait(c, c->rq);
    uv_close((uv_handle_t *)&c->watchdog, NULL);
    /* Not UV_RUN_DEFAULT: a case that failed half-way leaves a client open, and the loop
     * would never end; this way uv_loop_close reports it instead. */
    for (int i = 0; i < 200 && uv_run(&c->loop, UV_RUN_NOWAIT) != 0; i++)
        bd_it_sleep_ms(5);
    assert_int_equal(c->finished, c->started);     /* each callback exactly once */
    assert_int_equal(uv_loop_close(&c->loop), 0);  /* no handle leaked */
    free(c);
    return 0;
}

/* ---------------------------------------------------------------------------------------
 * Cases
 * ------------------------------------------------------------------------------------- */

static void seq_increases_across_instances(void **state)
{
    struct ctx *c = *state;
    struct rq_state st2;
    struct bd_rq *rq2 = rq_open(c, "w2", 30.0, 5.0, &st2);
    struct ires r1 = { .c = c }, r2 = { .c = c };

    long long a = op_seq(c, c->rq);
    long long b = op_seq(c, rq2);
    long long d = op_seq(c, c->rq);
    assert_true(a >= 1);
    assert_true(b > a);
    assert_true(d > b);

    /* Concurrent: two "processes" never get the same number. */
    assert_int_equal(bd_rq_next_seq(c->rq, on_int, &r1), BD_OK);
    assert_int_equal(bd_rq_next_seq(rq2, on_int, &r2), BD_OK);
    c->started += 2;
    wait_calls(c, &r1.calls, 1, WAIT_S);
    wait_calls(c, &r2.calls, 1, WAIT_S);
    assert_true(r1.v > d && r2.v > d && r1.v != r2.v);
    rq_close_wait(c, rq2);
}

/* The queue's connection has TCP keepalives and a 30 s user timeout, so a Redis host that
 * vanished without a FIN breaks it instead of leaving it open for TCP's two hours. (The
 * test's own blocking connections have neither; before, no socket to Redis had them.) */
static void connection_has_keepalive_and_user_timeout(void **state)
{
    struct ctx *c = *state;
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    int tuned = 0;

    (void)c;
    assert_non_null(d);
    while ((e = readdir(d)) != NULL) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss), il = sizeof(int), ul = sizeof(unsigned);
        int fd = atoi(e->d_name), on = 0;
        unsigned ms = 0;

        if (fd <= 2 || getpeername(fd, (struct sockaddr *)&ss, &len) < 0 ||
            ss.ss_family != AF_INET ||
            getsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &ms, &ul) < 0 || ms != 30000)
            continue;
        assert_int_equal(getsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, &il), 0);
        assert_int_equal(on, 1);
        tuned++;
    }
    closedir(d);
    assert_true(tuned >= 1);
}

static void claim_follows_priority_then_fifo(void **state)
{
    struct ctx *c = *state;
    char id[128];

    op_enqueue(c, c->rq, "a-low", BD_PRIO_LOW, 1, "m", 1);
    op_enqueue(c, c->rq, "b-normal", BD_PRIO_NORMAL, 2, "m", 1);
    op_enqueue(c, c->rq, "c-high", BD_PRIO_HIGH, 3, "m", 1);
    op_enqueue(c, c->rq, "d-normal2", BD_PRIO_NORMAL, 4, "m", 1);
    assert_string_equal(op_claim(c, c->rq, id, sizeof(id)), "c-high");
    assert_string_equal(op_claim(c, c->rq, id, sizeof(id)), "b-normal");
    assert_string_equal(op_claim(c, c->rq, id, sizeof(id)), "d-normal2");
    assert_string_equal(op_claim(c, c->rq, id, sizeof(id)), "a-low");
    assert_string_equal(op_claim(c, c->rq, id, sizeof(id)), "");
}

static void claim_returns_null_when_queues_empty(void **state)
{
    struct ctx *c = *state;
    struct cres r = { .c = c };

    STARTED(c, bd_rq_claim(c->rq, on_claim, &r), r);
    assert_int_equal(r.status, BD_OK);
    assert_true(r.is_null);
    assert_counts(c, c->rq, 0, 0, 0, 0, 0);
}

static void enqueue_is_idempotent_and_reports_position(void **state)
{
    struct ctx *c = *state;
    char id[128];

    assert_int_equal(op_enqueue(c, c->rq, "a", BD_PRIO_LOW, 1, "m", 10), 1);
    assert_int_equal(op_enqueue(c, c->rq, "b", BD_PRIO_NORMAL, 2, "m", 10), 1);
    assert_int_equal(op_enqueue(c, c->rq, "c", BD_PRIO_HIGH, 3, "m", 10), 1);
    assert_int_equal(op_enqueue(c, c->rq, "d", BD_PRIO_NORMAL, 4, "m", 10), 3);
    /* Again, even with another priority and seq: left where it is, position reported. */
    assert_int_equal(op_enqueue(c, c->rq, "a", BD_PRIO_HIGH, 99, "m", 10), 4);
    assert_int_equal(op_enqueue(c, c->rq, "b", BD_PRIO_NORMAL, 2, "m", 10), 2);
    assert_counts(c, c->rq, 1, 2, 1, 0, 40);
    assert_models(c, c->rq, "m 4 0");
    /* In flight: left alone, position 0. */
    assert_string_equal(op_claim(c, c->rq, id, sizeof(id)), "c");
    assert_int_equal(op_enqueue(c, c->rq, "c", BD_PRIO_HIGH, 3, "m", 10), 0);
    assert_counts(c, c->rq, 0, 2, 1, 1, 30);
    assert_models(c, c->rq, "m 3 1");
}

static void renew_reports_owner_and_cancel(void **state)
{
    struct ctx *c = *state;
    struct rq_state st2;
    struct bd_rq *rq2 = rq_open(c, "w2", 30.0, 5.0, &st2);
    char id[128];

    op_mark_alive(c, c->rq);
    op_enqueue(c, c->rq, "j", BD_PRIO_NORMAL, 1, "m", 3);
    assert_string_equal(op_claim(c, c->rq, id, sizeof(id)), "j");
    assert_int_equal(op_renew(c, c->rq, "j"), 1);
    assert_int_equal(op_adopt(c, c->rq, "j", BD_PRIO_NORMAL, 1, "m", 3), 1); /* ours */
    assert_int_equal(op_adopt(c, rq2, "j", BD_PRIO_NORMAL, 1, "m", 3), 0);
    op_enqueue(c, c->rq, "q", BD_PRIO_LOW, 2, "m", 1);
    assert_int_equal(op_adopt(c, c->rq, "q", BD_PRIO_LOW, 2, "m", 1), 0);   /* queued */
    assert_int_equal(op_cancel(c, c->rq, "q"), 1);
    assert_int_equal(op_renew(c, rq2, "j"), 0);          /* another worker's job */
    assert_int_equal(op_release(c, rq2, "j", false), 0); /* not its to release either */
    assert_int_equal(op_renew(c, c->rq, "nope"), 0);
    assert_int_equal(op_cancel(c, rq2, "j"), 2);         /* any process may ask */
    assert_int_equal(op_renew(c, c->rq, "j"), 2);
    assert_int_equal(op_renew(c, c->rq, "j"), 2);        /* the flag stays */
    assert_int_equal(op_release(c, c->rq, "j", false), 1);
    assert_int_equal(op_renew(c, c->rq, "j"), 0);
    assert_counts(c, c->rq, 0, 0, 0, 0, 0);
    assert_models(c, c->rq, "");                       /* keys gone at zero */
    rq_close_wait(c, rq2);
}

static void cancel_removes_queued_job(void **state)
{
    struct ctx *c = *state;
    char id[128];

    op_enqueue(c, c->rq, "j", BD_PRIO_HIGH, 1, "m", 5);
    assert_counts(c, c->rq, 1, 0, 0, 0, 5);
    assert_int_equal(op_cancel(c, c->rq, "j"), 1);
    assert_string_equal(op_claim(c, c->rq, id, sizeof(id)), "");
    assert_int_equal(op_cancel(c, c->rq, "j"), 0);
    assert_counts(c, c->rq, 0, 0, 0, 0, 0);
    assert_models(c, c->rq, "");                       /* keys gone at zero */
}

static void release_requeue_puts_job_first_in_its_priority(void **state)
{
    struct ctx *c = *state;
    char id[128];

    op_enqueue(c, c->rq, "a", BD_PRIO_NORMAL, 10, "m", 2);
    op_enqueue(c, c->rq, "b", BD_PRIO_NORMAL, 11, "m", 3);
    op_enqueue(c, c->rq, "z", BD_PRIO_LOW, 1, "m", 4);
    assert_string_equal(op_claim(c, c->rq, id, sizeof(id)), "a");
    assert_counts(c, c->rq, 0, 1, 1, 1, 7);
    assert_int_equal(op_release(c, c->rq, "a", true), 1);
    assert_counts(c, c->rq, 0, 2, 1, 0, 9);
    assert_models(c, c->rq, "m 3 0");
    assert_string_equal(op_claim(c, c->rq, id, sizeof(id)), "a");
    assert_string_equal(op_claim(c, c->rq, id, sizeof(id)), "b");
    assert_string_equal(op_claim(c, c->rq, id, sizeof(id)), "z");
    /* Releasing twice changes nothing the second time. */
    assert_int_equal(op_release(c, c->rq, "a", false), 1);
    assert_int_equal(op_release(c, c->rq, "a", false), 1);
    assert_int_equal(op_release(c, c->rq, "a", true), 0);  /* nothing left to requeue */
    assert_counts(c, c->rq, 0, 0, 0, 2, 0);
    assert_models(c, c->rq, "m 0 2");
}

static void reap_returns_expired_lease_to_queue(void **state)
{
    struct ctx *c = *state;
    struct rq_state st_short, st2;
    struct bd_rq *rq_short = rq_open(c, "w-short", 0.2, 5.0, &st_short);
    struct bd_rq *rq2 = rq_open(c, "w2", 30.0, 5.0, &st2);
    char id[128];

    op_enqueue(c, c->rq, "j", BD_PRIO_NORMAL, 1, "m", 6);
    op_enqueue(c, c->rq, "k", BD_PRIO_NORMAL, 2, "m", 1);
    assert_string_equal(op_claim(c, rq_short, id, sizeof(id)), "j");
    assert_int_equal(op_reap(c, c->rq), 0);               /* lease still running */
    loop_sleep(c, 350);
    assert_int_equal(op_reap(c, c->rq), 1);
    assert_counts(c, c->rq, 0, 2, 0, 0, 7);
    assert_models(c, c->rq, "m 2 0");
    assert_int_equal(op_renew(c, rq_short, "j"), 0);      /* the lease is lost */
    assert_string_equal(op_claim(c, rq2, id, sizeof(id)), "j"); /* back at the head */
    assert_int_equal(op_renew(c, rq2, "j"), 1);
    assert_int_equal(op_release(c, rq_short, "j", false), 0);
    assert_counts(c, c->rq, 0, 1, 0, 1, 1);
    assert_models(c, c->rq, "m 1 1");
    assert_int_equal(op_reap(c, c->rq), 0);
    rq_close_wait(c, rq_short);
    rq_close_wait(c, rq2);
}

static void counts_stay_consistent_through_a_sequence(void **state)
{
    struct ctx *c = *state;
    char id[128];

    op_enqueue(c, c->rq, "j1", BD_PRIO_HIGH, 1, "m1", 10);
    op_enqueue(c, c->rq, "j2", BD_PRIO_NORMAL, 2, "m1", 20);
    op_enqueue(c, c->rq, "j3", BD_PRIO_LOW, 3, "m2", 5);
    op_enqueue(c, c->rq, "j4", BD_PRIO_NORMAL, 4, "m2", 7);
    op_enqueue(c, c->rq, "i1", BD_PRIO_LOW, 5, NULL, 100);    /* bulk_insert: no model */
    assert_counts(c, c->rq, 1, 2, 2, 0, 142);
    assert_models(c, c->rq, "m1 2 0 m2 2 0");

    assert_string_equal(op_claim(c, c->rq, id, sizeof(id)), "j1");
    assert_int_equal(op_cancel(c, c->rq, "j3"), 1);
    assert_counts(c, c->rq, 0, 2, 1, 1, 127);
    assert_models(c, c->rq, "m1 1 1 m2 1 0");

    assert_int_equal(op_release(c, c->rq, "j1", true), 1);
    assert_counts(c, c->rq, 1, 2, 1, 0, 137);
    assert_models(c, c->rq, "m1 2 0 m2 1 0");

    assert_string_equal(op_claim(c, c->rq, id, sizeof(id)), "j1");
    assert_int_equal(op_release(c, c->rq, "j1", false), 1);
    assert_string_equal(op_claim(c, c->rq, id, sizeof(id)), "j2");
    assert_int_equal(op_cancel(c, c->rq, "j2"), 2);
    assert_int_equal(op_release(c, c->rq, "j2", false), 1);
    assert_counts(c, c->rq, 0, 1, 1, 0, 107);
    assert_models(c, c->rq, "m2 1 0");

    /* Repeats and unknown ids leave every counter where it is (never below zero). */
    assert_int_equal(op_release(c, c->rq, "j2", false), 1);
    assert_int_equal(op_cancel(c, c->rq, "j2"), 0);
    assert_int_equal(op_cancel(c, c->rq, "ghost"), 0);
    assert_int_equal(op_reap(c, c->rq), 0);
    assert_counts(c, c->rq, 0, 1, 1, 0, 107);
    assert_models(c, c->rq, "m2 1 0");

    assert_string_equal(op_claim(c, c->rq, id, sizeof(id)), "j4");
    assert_string_equal(op_claim(c, c->rq, id, sizeof(id)), "i1");
    assert_counts(c, c->rq, 0, 0, 0, 2, 0);
    assert_models(c, c->rq, "m2 0 1");
    assert_int_equal(op_release(c, c->rq, "j4", false), 1);
    assert_int_equal(op_release(c, c->rq, "i1", false), 1);
    assert_counts(c, c->rq, 0, 0, 0, 0, 0);
    assert_models(c, c->rq, "");
    assert_int_equal(count_keys(c, "model*"), 0);
}

static void noscript_is_recovered_transparently(void **state)
{
    struct ctx *c = *state;
    struct ires e = { .c = c };
    struct nres n = { .c = c };
    redisReply *r;
    char id[128];

    r = sync_cmd(c, "SCRIPT FLUSH");
    assert_string_equal(r->str, "OK");
    freeReplyObject(r);
    /* Two different scripts pipelined: each reloads its own and is retried once. */
    assert_int_equal(bd_rq_enqueue(c->rq, "j", BD_PRIO_NORMAL, 1, "m", 2, on_int, &e), BD_OK);
    assert_int_equal(bd_rq_get_counts(c->rq, on_counts, &n), BD_OK);
    c->started += 2;
    wait_calls(c, &e.calls, 1, WAIT_S);
    wait_calls(c, &n.calls, 1, WAIT_S);
    assert_int_equal(e.status, BD_OK);
    assert_int_equal(e.v, 1);
    assert_int_equal(n.status, BD_OK);
    assert_int_equal(n.counts.pending[BD_PRIO_NORMAL], 1);

    freeReplyObject(sync_cmd(c, "SCRIPT FLUSH"));
    assert_string_equal(op_claim(c, c->rq, id, sizeof(id)), "j");
    assert_int_equal(op_release(c, c->rq, "j", false), 1);
}

/* The highest client id on the server other than skip (the test's own connection). */
static long long newest_client_id(struct ctx *c, long long skip)
{
    redisReply *r = sync_cmd(c, "CLIENT LIST");
    long long best = 0;

    assert_int_equal(r->type, REDIS_REPLY_STRING);
    for (const char *p = r->str; (p = strstr(p, "id=")) != NULL; p += 3) {
        long long id = (p == r->str || p[-1] == '\n') ? atoll(p + 3) : 0;
        if (id != skip && id > best)
            best = id;
    }
    freeReplyObject(r);
    return best;
}

static void reconnects_after_client_kill(void **state)
{
    struct ctx *c = *state;
    struct rq_state st1, st2;
    long long me = sync_ll(c, "CLIENT ID");
    long long before = newest_client_id(c, me);
    struct bd_rq *rq1 = rq_open(c, "w-kill", 30.0, 5.0, &st1);
    long long rq1_id = newest_client_id(c, me);     /* client ids only grow */
    struct bd_rq *rq2 = rq_open(c, "w2", 30.0, 5.0, &st2);
    char id[128];

    assert_true(rq1_id > before);
    assert_int_equal(sync_ll(c, "CLIENT KILL ID %lld", rq1_id), 1);

    wait_calls(c, &st1.downs, 1, WAIT_S);
    /* Inside the down callback commands already failed fast and is_up was false. */
    assert_false(st1.probe_is_up);
    assert_int_equal(st1.probe_err, BD_EREDIS);
    assert_int_equal(st1.probe_calls, 0);
    if (st1.ups == 1) {
        struct cres cr = { .c = c };
        assert_false(bd_rq_is_up(rq1));
        assert_int_equal(bd_rq_claim(rq1, on_claim, &cr), BD_EREDIS);
        assert_int_equal(cr.calls, 0);
    }
    wait_calls(c, &st1.ups, 2, WAIT_S);
    assert_int_equal(st1.downs, 1);
    assert_true(bd_rq_is_up(rq1));
    op_enqueue(c, rq1, "after-kill", BD_PRIO_NORMAL, 1, "m", 1);
    assert_string_equal(op_claim(c, rq1, id, sizeof(id)), "after-kill");
    assert_int_equal(op_release(c, rq1, "after-kill", false), 1);
    assert_int_equal(st2.downs, 0);
    rq_close_wait(c, rq1);
    rq_close_wait(c, rq2);
}

static void commands_fail_fast_when_redis_unreachable(void **state)
{
    struct ctx *c = *state;
    struct rq_state st;
    struct bd_rq *rq;
    struct cres cr = { .c = c };
    struct ires ir = { .c = c };
    char url[64];

    snprintf(url, sizeof(url), "redis://127.0.0.1:%d/0", bd_it_free_port());
    rq = rq_open_url(c, url, "w-nowhere", 30.0, 0.5, &st);
    assert_false(bd_rq_is_up(rq));
    assert_int_equal(bd_rq_claim(rq, on_claim, &cr), BD_EREDIS);
    assert_int_equal(bd_rq_next_seq(rq, on_int, &ir), BD_EREDIS);
    loop_sleep(c, 400);             /* a few reconnect attempts (100, 200 ms) */
    assert_int_equal(bd_rq_enqueue(rq, "j", BD_PRIO_LOW, 1, "m", 1, on_int, &ir), BD_EREDIS);
    assert_int_equal(cr.calls + ir.calls, 0);
    assert_int_equal(st.ups + st.downs, 0);  /* never up, so no transition to report */
    rq_close_wait(c, rq);
}

static void bad_arguments_are_refused(void **state)
{
    struct ctx *c = *state;
    static const char *const bad_urls[] = {
        "http://127.0.0.1:6379", "redis://", "redis://h:0", "redis://h:99999",
        "redis://h:12x", "redis://h:1/x", "redis://[::1", "redis://h:1?db=2",
    };
    struct bd_rq_options o = { .worker_id = "w", .prefix = c->prefix };
    struct bd_rq *rq = (struct bd_rq *)&o;
    struct ires ir = { .c = c };

    for (size_t i = 0; i < sizeof(bad_urls) / sizeof(bad_urls[0]); i++) {
        o.url = bad_urls[i];
        assert_int_equal(bd_rq_new(&c->loop, &o, &rq), BD_EINVAL);
        assert_null(rq);
    }
    o.url = redis_url();
    o.worker_id = NULL;
    assert_int_equal(bd_rq_new(&c->loop, &o, &rq), BD_EINVAL);
    assert_int_equal(bd_rq_enqueue(c->rq, NULL, BD_PRIO_LOW, 1, "m", 1, on_int, &ir), BD_EINVAL);
    assert_int_equal(bd_rq_enqueue(c->rq, "", BD_PRIO_LOW, 1, "m", 1, on_int, &ir), BD_EINVAL);
    assert_int_equal(bd_rq_enqueue(c->rq, "j", (enum bd_priority)3, 1, "m", 1, on_int, &ir),
                     BD_EINVAL);
    assert_int_equal(bd_rq_enqueue(c->rq, "j", BD_PRIO_LOW, 1, "m", -1, on_int, &ir),
                     BD_EINVAL);
    assert_int_equal(bd_rq_renew(c->rq, NULL, on_int, &ir), BD_EINVAL);
    assert_int_equal(bd_rq_enqueue_retry(c->rq, "", BD_PRIO_LOW, 1, "m", 1, on_int, &ir),
                     BD_EINVAL);
    assert_int_equal(bd_rq_restore_seq(c->rq, -1, on_int, &ir), BD_EINVAL);
    assert_int_equal(bd_rq_reserve_items(c->rq, "j", -1, 10, on_reserve, &ir), BD_EINVAL);
    assert_int_equal(bd_rq_reserve_items(c->rq, NULL, 1, 10, on_reserve, &ir), BD_EINVAL);
    assert_int_equal(bd_rq_unreserve_items(c->rq, "", on_int, &ir), BD_EINVAL);
    assert_int_equal(bd_rq_get_lease(c->rq, NULL, on_lease, &ir), BD_EINVAL);
    assert_int_equal(bd_rq_get_lease(c->rq, "j", NULL, &ir), BD_EINVAL);
    assert_int_equal(ir.calls, 0);
}

/* redis://user:password@host:port/db: AUTH with a user name (Redis 7's default user has no
 * password, so any password is accepted for it), a %-encoded password, SELECT of db 1. */
static void url_with_user_password_and_db(void **state)
{
    struct ctx *c = *state;
    struct rq_state st;
    struct bd_rq *rq;
    redisContext *db1;
    redisReply *r;
    const char *u = redis_url() + strlen("redis://");
    char url[256], key[96];

    if (strchr(u, '@') != NULL)
        skip();
    snprintf(url, sizeof(url), "redis://default:any%%40thing@%.*s/1", (int)strcspn(u, "/"), u);
    rq = rq_open_url(c, url, "w-db1", 30.0, 5.0, &st);
    wait_calls(c, &st.ups, 1, WAIT_S);
    assert_int_equal(op_seq(c, rq), 1);
    snprintf(key, sizeof(key), "%sseq", c->prefix);
    db1 = sync_open(1);
    r = redisCommand(db1, "GET %s", key);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    assert_string_equal(r->str, "1");
    freeReplyObject(r);
    if (strstr(redis_url(), "/1") == NULL)          /* the main client is on another db */
        assert_int_equal(sync_ll(c, "GET %s", key), -1);
    freeReplyObject(redisCommand(db1, "DEL %s", key));
    redisFree(db1);
    rq_close_wait(c, rq);
}

/* A URL with a password: this Redis has none, so AUTH is refused, the handshake fails, and
 * the client keeps retrying without ever reporting up. */
static void auth_failure_keeps_client_down(void **state)
{
    struct ctx *c = *state;
    struct rq_state st;
    struct bd_rq *rq;
    const char *u = redis_url();
    char url[256];

    if (strchr(u, '@') != NULL)
        skip();                      /* the stack's Redis has a password: not this case */
    snprintf(url, sizeof(url), "redis://:wrong%%21pw@%s", u + strlen("redis://"));
    rq = rq_open_url(c, url, "w-auth", 30.0, 1.0, &st);
    loop_sleep(c, 400);
    assert_int_equal(st.ups, 0);
    assert_false(bd_rq_is_up(rq));
    rq_close_wait(c, rq);
}

/* Redis itself restarts (a private redis-server, reached as "localhost" to go through the
 * resolver): the client reports down, fails fast while it is gone, comes back up on its
 * own, and is_empty tells the owner to rebuild. */
static void survives_redis_restart(void **state)
{
    struct ctx *c = *state;
    struct rq_state st;
    struct bd_rq *rq;
    struct ires ir = { .c = c };
    char url[64], id[128];
    double t0;
    int port = bd_it_free_port();
    const char *start = "redis-server --port %d --bind 127.0.0.1 --save '' --appendonly no "
                        "--daemonize yes --pidfile /tmp/bdtest-rq-%d.pid --logfile /dev/null";

    if (bd_it_sh("command -v redis-server >/dev/null && command -v redis-cli >/dev/null") != 0)
        skip();
    assert_int_equal(bd_it_sh(start, port, port), 0);
    snprintf(url, sizeof(url), "redis://localhost:%d/0", port);
    rq = rq_open_url(c, url, "w-restart", 30.0, 2.0, &st);
    wait_calls(c, &st.ups, 1, WAIT_S);
    op_mark_alive(c, rq);
    op_enqueue(c, rq, "j", BD_PRIO_NORMAL, 1, "m", 1);

    assert_int_equal(bd_it_sh("redis-cli -p %d shutdown nosave >/dev/null 2>&1", port), 0);
    wait_calls(c, &st.downs, 1, WAIT_S);
    assert_int_equal(bd_rq_enqueue(rq, "k", BD_PRIO_LOW, 2, "m", 1, on_int, &ir), BD_EREDIS);
    loop_sleep(c, 350);             /* some refused reconnects: still one down, no up */
    assert_int_equal(st.downs, 1);
    assert_int_equal(st.ups, 1);

    t0 = bd_it_now();
    assert_int_equal(bd_it_sh(start, port, port), 0);
    wait_calls(c, &st.ups, 2, 10.0);
    /* Refused reconnects are noticed at once (not at the 2 s command timeout), so the next
     * attempt comes after at most the current backoff (800 ms here). */
    assert_true(bd_it_now() - t0 < 1.6);
    ir.calls = 0;
    STARTED(c, bd_rq_is_empty(rq, on_int, &ir), ir);
    assert_int_equal(ir.v, 1);      /* started empty: the owner rebuilds from PostgreSQL */
    assert_string_equal(op_claim(c, rq, id, sizeof(id)), "");
    /* Its lease went with Redis, not to another worker: "unknown" (3), so the owner keeps
     * running it until its rebuild adopts it; once queued by someone (another process's
     * rebuild), it is lost (0). */
    assert_int_equal(op_renew(c, rq, "running"), 3);
    assert_int_equal(op_adopt(c, rq, "running", BD_PRIO_HIGH, 2, "m", 4), 1);
    assert_int_equal(op_renew(c, rq, "running"), 1);
    assert_int_equal(op_enqueue(c, rq, "other", BD_PRIO_LOW, 3, "m", 1), 1);
    assert_int_equal(op_renew(c, rq, "other"), 0);
    assert_int_equal(op_cancel(c, rq, "other"), 1);
    assert_int_equal(op_enqueue(c, rq, "j", BD_PRIO_NORMAL, 1, "m", 1), 1);
    assert_counts(c, rq, 0, 1, 0, 1, 1);
    assert_models(c, rq, "m 1 1");
    assert_string_equal(op_claim(c, rq, id, sizeof(id)), "j");
    rq_close_wait(c, rq);
    bd_it_sh("redis-cli -p %d shutdown nosave >/dev/null 2>&1", port);
}

static void command_timeout_fails_pending_and_recovers(void **state)
{
    struct ctx *c = *state;
    struct rq_state st_t;
    struct bd_rq *rq_t = rq_open(c, "w-timeout", 30.0, 0.5, &st_t);
    struct ires r[3] = { { .c = c }, { .c = c }, { .c = c } };
    struct cres cr = { .c = c };
    redisReply *pr;
    double t0, dt;

    pr = sync_cmd(c, "CLIENT PAUSE 1500 ALL");
    assert_int_equal(pr->type, REDIS_REPLY_STATUS);
    freeReplyObject(pr);
    t0 = bd_it_now();
    for (int i = 0; i < 3; i++)
        assert_int_equal(bd_rq_next_seq(rq_t, on_int, &r[i]), BD_OK);
    assert_int_equal(bd_rq_claim(rq_t, on_claim, &cr), BD_OK);
    c->started += 4;
    wait_calls(c, &cr.calls, 1, WAIT_S);
    dt = bd_it_now() - t0;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(r[i].calls, 1);
        assert_int_equal(r[i].status, BD_EREDIS);
    }
    assert_int_equal(cr.status, BD_EREDIS);
    assert_true(cr.is_null);
    assert_true(dt >= 0.45 && dt < 1.2);
    assert_int_equal(st_t.downs, 1);
    assert_false(bd_rq_is_up(rq_t));

    wait_calls(c, &st_t.ups, 2, WAIT_S);    /* back once the pause ends */
    assert_true(bd_it_now() - t0 >= 1.4);
    assert_true(op_seq(c, rq_t) > 0);
    assert_int_equal(st_t.downs, 1);
    rq_close_wait(c, rq_t);
}

static void close_fails_pending_with_canceled(void **state)
{
    struct ctx *c = *state;
    struct ires r[3] = { { .c = c }, { .c = c }, { .c = c } };
    struct ires closed = { .c = c };
    struct cres cr = { .c = c };

    assert_int_equal(bd_rq_enqueue(c->rq, "j", BD_PRIO_LOW, 1, "m", 1, on_int, &r[0]), BD_OK);
    assert_int_equal(bd_rq_next_seq(c->rq, on_int, &r[1]), BD_OK);
    assert_int_equal(bd_rq_renew(c->rq, "j", on_int, &r[2]), BD_OK);
    c->started += 3;
    bd_rq_close(c->rq, on_closed, &closed);
    assert_int_equal(bd_rq_claim(c->rq, on_claim, &cr), BD_ECANCELED);
    assert_int_equal(r[0].calls + r[1].calls + r[2].calls + closed.calls, 0);
    wait_calls(c, &closed.calls, 1, WAIT_S);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(r[i].calls, 1);
        assert_int_equal(r[i].status, BD_ECANCELED);
    }
    assert_int_equal(cr.calls, 0);
    c->rq = NULL;
}

/* bd_rq_close from inside a reply callback, with another command still pending. */
struct close_in_cb {
    struct ctx *c;
    struct bd_rq *rq;
    struct ires closed;
    int calls;
};

static void on_seq_then_close(int status, long long v, void *arg)
{
    struct close_in_cb *x = arg;

    (void)v;
    assert_int_equal(status, BD_OK);
    x->calls++;
    x->c->finished++;
    bd_rq_close(x->rq, on_closed, &x->closed);
}

static void close_from_inside_a_callback(void **state)
{
    struct ctx *c = *state;
    struct close_in_cb x = { .c = c, .rq = c->rq, .closed = { .c = c } };
    struct ires later = { .c = c };

    assert_int_equal(bd_rq_next_seq(c->rq, on_seq_then_close, &x), BD_OK);
    assert_int_equal(bd_rq_next_seq(c->rq, on_int, &later), BD_OK);
    c->started += 2;
    wait_calls(c, &x.closed.calls, 1, WAIT_S);
    assert_int_equal(x.calls, 1);
    assert_int_equal(later.calls, 1);
    assert_int_equal(later.status, BD_ECANCELED);
    c->rq = NULL;
}

static void on_claim_many_text(int status, const char *const *job_ids, unsigned count,
                               bool is_cut, void *arg)
{
    struct rres *r = arg;
    size_t len = 0;

    r->calls++;
    r->c->finished++;
    r->status = status;
    r->integer = is_cut;
    r->text[0] = '\0';
    for (unsigned i = 0; status == BD_OK && i < count && len < sizeof(r->text); i++)
        len += (size_t)snprintf(r->text + len, sizeof(r->text) - len, "%s%s", i ? " " : "",
                                job_ids[i]);
}

/* bd_rq_claim_many_skip: the claimed ids, space-separated, in buf; "+" appended when the
 * claim was cut at its scan bound. */
static const char *op_claim_skip(struct ctx *c, struct bd_rq *rq, unsigned max,
                                 const char *const *skip, unsigned skip_count, char *buf,
                                 size_t len)
{
    struct rres r = { .c = c };

    STARTED(c, bd_rq_claim_many_skip(rq, max, skip, skip_count, on_claim_many_text, &r), r);
    assert_int_equal(r.status, BD_OK);
    size_t n = strlen(r.text);
    if (n > len - 2)
        n = len - 2;
    memcpy(buf, r.text, n);
    if (r.integer)
        buf[n++] = '+';
    buf[n] = '\0';
    return buf;
}

/* A paused model's backlog deeper than one claim looks (1,000 jobs) no longer holds back the
 * jobs behind it: a claim parks the paused model's jobs it meets, so the next one reaches the
 * other model's job. Parked jobs stay pending (counted, cancellable, not queued twice), and
 * a claim without the model in its skip list (resumed) puts them back in their order. */
static void claim_skip_parks_paused_backlog_and_unparks_on_resume(void **state)
{
    struct ctx *c = *state;
    const char *const paused[] = { "paused" };
    char got[512], id[32];

    for (int i = 1; i <= 1500; i++) {
        snprintf(id, sizeof(id), "p%d", i);
        op_enqueue(c, c->rq, id, BD_PRIO_NORMAL, i, "paused", 2);
    }
    op_enqueue(c, c->rq, "other", BD_PRIO_NORMAL, 2000, "free", 1);
    op_enqueue(c, c->rq, "hi", BD_PRIO_HIGH, 3000, "paused", 1);
    /* The first parks 1,000 and says it was cut (claim again at once); the next parks the
     * rest and takes the other model's job. */
    assert_string_equal(op_claim_skip(c, c->rq, 4, paused, 1, got, sizeof(got)), "+");
    assert_string_equal(op_claim_skip(c, c->rq, 4, paused, 1, got, sizeof(got)), "other");
    assert_int_equal(sync_ll(c, "ZCARD %spq:normal:paused", c->prefix), 1500);
    assert_counts(c, c->rq, 1, 1500, 0, 1, 3001);
    assert_int_equal(op_cancel(c, c->rq, "p7"), 1);             /* a parked job cancelled */
    assert_counts(c, c->rq, 1, 1499, 0, 1, 2999);
    assert_true(op_enqueue(c, c->rq, "p3", BD_PRIO_NORMAL, 3, "paused", 2) > 0);
    assert_counts(c, c->rq, 1, 1499, 0, 1, 2999);               /* not queued twice */
    assert_string_equal(op_claim_skip(c, c->rq, 4, paused, 1, got, sizeof(got)), "");

    /* Resumed: back in their queues, high first, then by seq. */
    assert_string_equal(op_claim_skip(c, c->rq, 4, NULL, 0, got, sizeof(got)), "hi p1 p2 p3");
    assert_string_equal(op_claim_skip(c, c->rq, 4, NULL, 0, got, sizeof(got)), "p4 p5 p6 p8");
    assert_int_equal(sync_ll(c, "EXISTS %spq:normal:paused", c->prefix), 0);
    assert_int_equal(sync_ll(c, "SCARD %sparked", c->prefix), 0);
    assert_counts(c, c->rq, 0, 1492, 0, 9, 2984);
}

static void alive_marker_and_memory(void **state)
{
    struct ctx *c = *state;
    struct ires r = { .c = c };

    STARTED(c, bd_rq_is_empty(c->rq, on_int, &r), r);
    assert_int_equal(r.status, BD_OK);
    assert_int_equal(r.v, 1);
    /* A rebuild that saw Redis flushed in its middle marks nothing: the jobs it queued
     * before the flush are gone, so the queue is not whole. */
    assert_int_equal(op_rebuild(c, c->rq, true, "a1"), 1);
    op_enqueue(c, c->rq, "before-flush", BD_PRIO_NORMAL, 1, "m", 1);
    del_prefix_keys(c);
    assert_int_equal(op_rebuild(c, c->rq, false, "a1"), 0);
    r.calls = 0;
    STARTED(c, bd_rq_is_empty(c->rq, on_int, &r), r);
    assert_int_equal(r.v, 1);
    /* The mark has no TTL (under a volatile-* eviction policy it would be the one key Redis
     * may evict); a mark replaced by another rebuild of the same worker id, or a wrong
     * token, marks nothing; another worker's rebuild is its own. */
    struct rq_state st2;
    struct bd_rq *other = rq_open(c, "w-other", 30.0, 5.0, &st2);
    assert_int_equal(op_rebuild(c, c->rq, true, "b1"), 1);
    assert_int_equal(sync_ll(c, "TTL %srebuilding", c->prefix), -1);
    assert_int_equal(op_rebuild(c, other, true, "o1"), 1);
    assert_int_equal(op_rebuild(c, c->rq, true, "b2"), 1);
    assert_int_equal(op_rebuild(c, c->rq, false, "b1"), 0);
    assert_int_equal(op_rebuild(c, c->rq, false, "b"), 0);
    assert_int_equal(op_rebuild(c, other, false, "o1"), 1);
    assert_int_equal(op_rebuild(c, c->rq, false, "b2"), 1);
    assert_int_equal(sync_ll(c, "HLEN %srebuilding", c->prefix), 0);
    rq_close_wait(c, other);
    r.calls = 0;
    STARTED(c, bd_rq_is_empty(c->rq, on_int, &r), r);
    assert_int_equal(r.v, 0);
    /* A second end without a begin marks nothing; a bad token is refused. */
    assert_int_equal(op_rebuild(c, c->rq, false, "b2"), 0);
    assert_int_equal(bd_rq_rebuild_begin(c->rq, "x:y", on_int, &r), BD_EINVAL);
    assert_int_equal(bd_rq_rebuild_end(c->rq, "", on_int, &r), BD_EINVAL);
    /* A mark over a day old (its process died mid-rebuild) goes at the next begin. */
    freeReplyObject(sync_cmd(c, "HSET %srebuilding dead x:1000", c->prefix));
    assert_int_equal(op_rebuild(c, c->rq, true, "c1"), 1);
    assert_int_equal(sync_ll(c, "HEXISTS %srebuilding dead", c->prefix), 0);
    r.calls = 0;
    STARTED(c, bd_rq_get_used_memory(c->rq, on_int, &r), r);
    assert_int_equal(r.status, BD_OK);
    assert_true(r.v > 0);
}

static double unix_now(void)
{
    struct timeval tv;

    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + tv.tv_usec / 1e6;
}

static struct lres op_lease(struct ctx *c, struct bd_rq *rq, const char *id)
{
    struct lres r = { .c = c };

    STARTED(c, bd_rq_get_lease(rq, id, on_lease, &r), r);
    assert_int_equal(r.status, BD_OK);
    return r;
}

/* The lease as /debug shows it: deadline (Redis clock, same host here) and owner while in
 * flight, nothing otherwise; read under the configured prefix, not a fixed "bd:". */
static void lease_reports_deadline_and_owner(void **state)
{
    struct ctx *c = *state;
    struct lres l;
    char id[128];
    double now;

    l = op_lease(c, c->rq, "j");
    assert_true(l.deadline < 0);
    assert_false(l.has_owner);
    op_enqueue(c, c->rq, "j", BD_PRIO_HIGH, 7, "m", 3);
    l = op_lease(c, c->rq, "j");                        /* queued: no lease yet */
    assert_true(l.deadline < 0);
    assert_false(l.has_owner);
    assert_string_equal(op_claim(c, c->rq, id, sizeof(id)), "j");
    now = unix_now();
    l = op_lease(c, c->rq, "j");
    assert_true(fabs(l.deadline - (now + 30.0)) < 2.0);  /* lease_s of setup's client */
    assert_string_equal(l.owner, "w1");
    assert_int_equal(op_release(c, c->rq, "j", false), 1);
    l = op_lease(c, c->rq, "j");
    assert_true(l.deadline < 0);
    assert_false(l.has_owner);
}

/* Job ids must not restart at 1 after Redis lost its keys: the sequence is raised to what
 * PostgreSQL has, never lowered, under the configured prefix. */
static void restore_seq_raises_never_lowers(void **state)
{
    struct ctx *c = *state;
    struct ires r = { .c = c };
    long long other = sync_ll(c, "GET bd:seq");

    assert_int_equal(op_seq(c, c->rq), 1);
    STARTED(c, bd_rq_restore_seq(c->rq, 100, on_int, &r), r);
    assert_int_equal(r.status, BD_OK);
    assert_int_equal(r.v, 100);
    assert_int_equal(op_seq(c, c->rq), 101);
    r.calls = 0;
    STARTED(c, bd_rq_restore_seq(c->rq, 50, on_int, &r), r);
    assert_int_equal(r.v, 101);
    assert_int_equal(op_seq(c, c->rq), 102);
    assert_int_equal(sync_ll(c, "GET %sseq", c->prefix), 102);
    assert_int_equal(sync_ll(c, "GET bd:seq"), other);  /* the default prefix's is not ours */
}

/* Bug 4: a retry (terminal -> queued in PostgreSQL) while the old run's lease is still in
 * flight. The old owner's release used to delete the job, leaving it queued in PostgreSQL
 * but in no Redis queue; now it must still be claimable afterwards. */
static void retry_while_in_flight_is_queued_after_old_release(void **state)
{
    struct ctx *c = *state;
    struct rq_state st2;
    struct bd_rq *rq2 = rq_open(c, "w2", 30.0, 5.0, &st2);
    struct ires r = { .c = c };
    char id[128];

    op_enqueue(c, c->rq, "j", BD_PRIO_NORMAL, 5, "m", 4);
    assert_string_equal(op_claim(c, c->rq, id, sizeof(id)), "j");     /* worker A = w1 */
    STARTED(c, bd_rq_enqueue_retry(c->rq, "j", BD_PRIO_HIGH, 5, "m", 3, on_int, &r), r);
    assert_int_equal(r.status, BD_OK);
    assert_int_equal(r.v, 0);                       /* waits for the old run's release */
    assert_int_equal(op_release(c, rq2, "j", false), 0);  /* not w2's lease: untouched */
    assert_int_equal(op_release(c, c->rq, "j", false), 1);
    assert_counts(c, c->rq, 1, 0, 0, 0, 3);         /* the retry's priority and items */
    assert_models(c, c->rq, "m 1 0");
    assert_string_equal(op_claim(c, rq2, id, sizeof(id)), "j");
    assert_int_equal(op_renew(c, rq2, "j"), 1);     /* no cancel left over from the old run */
    assert_int_equal(op_release(c, rq2, "j", false), 1);
    assert_string_equal(op_claim(c, c->rq, id, sizeof(id)), "");       /* once, not twice */
    assert_counts(c, c->rq, 0, 0, 0, 0, 0);
    assert_models(c, c->rq, "");
    rq_close_wait(c, rq2);
}

/* The other ways out of the mark: the old lease expires (reaper), or the retried job is
 * cancelled before the old run lets go. A plain enqueue (the rebuild) never marks: a job
 * in flight and processing must not run again after it finishes. */
static void retry_mark_is_reaped_cancelled_and_not_set_by_enqueue(void **state)
{
    struct ctx *c = *state;
    struct rq_state st_short;
    struct bd_rq *rq_short = rq_open(c, "w-short", 0.2, 5.0, &st_short);
    struct ires r = { .c = c };
    char id[128];

    op_enqueue(c, c->rq, "j", BD_PRIO_NORMAL, 1, "m", 2);
    assert_string_equal(op_claim(c, rq_short, id, sizeof(id)), "j");
    STARTED(c, bd_rq_enqueue_retry(c->rq, "j", BD_PRIO_NORMAL, 1, "m", 2, on_int, &r), r);
    assert_int_equal(r.v, 0);
    loop_sleep(c, 350);
    assert_int_equal(op_reap(c, c->rq), 1);
    assert_counts(c, c->rq, 0, 1, 0, 0, 2);
    assert_string_equal(op_claim(c, c->rq, id, sizeof(id)), "j");

    r.calls = 0;                                    /* w1 runs it; retried again meanwhile */
    STARTED(c, bd_rq_enqueue_retry(c->rq, "j", BD_PRIO_NORMAL, 1, "m", 2, on_int, &r), r);
    assert_int_equal(op_cancel(c, c->rq, "j"), 1);  /* the queued run is gone */
    assert_int_equal(op_release(c, c->rq, "j", false), 1);
    assert_string_equal(op_claim(c, c->rq, id, sizeof(id)), "");

    op_enqueue(c, c->rq, "k", BD_PRIO_LOW, 2, "m", 1);
    assert_string_equal(op_claim(c, c->rq, id, sizeof(id)), "k");
    assert_int_equal(op_enqueue(c, c->rq, "k", BD_PRIO_LOW, 2, "m", 1), 0);  /* rebuild */
    assert_int_equal(op_release(c, c->rq, "k", false), 1);
    assert_string_equal(op_claim(c, c->rq, id, sizeof(id)), "");
    assert_counts(c, c->rq, 0, 0, 0, 0, 0);
    assert_models(c, c->rq, "");
    rq_close_wait(c, rq_short);
}

static struct vres op_reserve(struct ctx *c, struct bd_rq *rq, const char *id, long long n,
                              long long max)
{
    struct vres r = { .c = c };

    STARTED(c, bd_rq_reserve_items(rq, id, n, max, on_reserve, &r), r);
    assert_int_equal(r.status, BD_OK);
    return r;
}

static long long op_unreserve(struct ctx *c, struct bd_rq *rq, const char *id)
{
    struct ires r = { .c = c };

    STARTED(c, bd_rq_unreserve_items(rq, id, on_int, &r), r);
    assert_int_equal(r.status, BD_OK);
    return r.v;
}

static long long reserved_now(struct ctx *c, struct bd_rq *rq)
{
    return op_counts(c, rq).reserved_items;
}

/* Bug 6: 10 submits of 30 items race for max 100 from two processes; exactly
 * floor(100 / 30) = 3 are admitted, and the reservations are then converted (enqueue),
 * released (unreserve) or counted once, never twice. */
static void parallel_reservations_admit_exactly_what_fits(void **state)
{
    struct ctx *c = *state;
    struct rq_state st2;
    struct bd_rq *rq2 = rq_open(c, "w2", 30.0, 5.0, &st2);
    struct vres r[10];
    char ids[10][16], id[128];
    int granted = 0, done = 0;
    const char *won[3];

    for (int i = 0; i < 10; i++) {
        r[i] = (struct vres){ .c = c };
        snprintf(ids[i], sizeof(ids[i]), "s%d", i);
        assert_int_equal(bd_rq_reserve_items(i % 2 ? rq2 : c->rq, ids[i], 30, 100, on_reserve,
                                             &r[i]), BD_OK);
        c->started++;
    }
    for (int i = 0; i < 10; i++)
        assert_int_equal(r[i].calls, 0);            /* never synchronous */
    for (int i = 0; i < 10; i++) {
        wait_calls(c, &r[i].calls, 1, WAIT_S);
        assert_int_equal(r[i].status, BD_OK);
        if (r[i].is_granted) {
            assert_true(granted < 3);
            won[granted++] = ids[i];
            assert_int_equal(r[i].after, 30 * granted);  /* replies come in order */
        } else {
            assert_int_equal(r[i].after, 90);
        }
        done++;
    }
    assert_int_equal(done, 10);
    assert_int_equal(granted, 3);
    assert_counts(c, c->rq, 0, 0, 0, 0, 0);
    assert_int_equal(reserved_now(c, c->rq), 90);

    /* Enqueue takes the reservation over: 30 queued, 60 still reserved (not 120 in all). */
    assert_int_equal(op_enqueue(c, c->rq, won[0], BD_PRIO_NORMAL, 1, "m", 30), 1);
    assert_counts(c, c->rq, 0, 1, 0, 0, 30);
    assert_int_equal(reserved_now(c, c->rq), 60);
    assert_int_equal(op_enqueue(c, c->rq, won[0], BD_PRIO_NORMAL, 1, "m", 30), 1);  /* again */
    assert_counts(c, c->rq, 0, 1, 0, 0, 30);
    /* A submit that failed gives its items back; twice is harmless; a refused one had none. */
    assert_int_equal(op_unreserve(c, c->rq, won[1]), 30);
    assert_int_equal(op_unreserve(c, c->rq, won[1]), 0);
    assert_int_equal(op_unreserve(c, c->rq, strcmp(won[0], "s0") && strcmp(won[1], "s0") &&
                                            strcmp(won[2], "s0") ? "s0" : "s9"), 0);
    assert_int_equal(reserved_now(c, c->rq), 30);
    assert_true(op_reserve(c, c->rq, "t1", 40, 100).is_granted);    /* 30 + 30 + 40 */
    struct vres full = op_reserve(c, rq2, "t2", 1, 100);
    assert_false(full.is_granted);
    assert_int_equal(full.after, 100);
    /* Claim, release: the queued count follows the job, the reservations stay. */
    assert_string_equal(op_claim(c, c->rq, id, sizeof(id)), won[0]);
    assert_counts(c, c->rq, 0, 0, 0, 1, 0);
    assert_int_equal(op_release(c, c->rq, won[0], false), 1);
    assert_int_equal(reserved_now(c, c->rq), 70);
    assert_int_equal(op_unreserve(c, c->rq, won[2]), 30);
    assert_int_equal(op_unreserve(c, c->rq, "t1"), 40);
    assert_int_equal(reserved_now(c, c->rq), 0);
    assert_int_equal(count_keys(c, "reserved*"), 0);
    rq_close_wait(c, rq2);
}

/* bd_rq_reserve_next's answer, copied. */
struct xres {
    struct ctx *c;
    int calls;
    int status;
    long long seq;
    char id[160];
    bool is_granted;
    long long after;
};

static void on_reserve_next(int status, long long seq, const char *job_id, bool is_granted,
                            long long queued_after, void *arg)
{
    struct xres *r = arg;

    r->calls++;
    r->c->finished++;
    r->status = status;
    r->seq = seq;
    snprintf(r->id, sizeof(r->id), "%s", job_id ? job_id : "(null)");
    r->is_granted = is_granted;
    r->after = queued_after;
}

static struct xres op_reserve_next(struct ctx *c, struct bd_rq *rq, const char *prefix,
                                   long long n, long long max)
{
    struct xres r = { .c = c };

    STARTED(c, bd_rq_reserve_next(rq, prefix, n, max, on_reserve_next, &r), r);
    assert_int_equal(r.status, BD_OK);
    return r;
}

/* Issue 11: the seq, the id and the room in one script. 10 submits of 30 items race for max
 * 100 from two processes: each gets its own seq and the id made of it (zero-padded to
 * three digits, as job ids always were), exactly 3 are admitted, the refused ones keep no
 * reservation; the seq alone (n < 0, a stream) reserves nothing; a seq past 999 is not
 * cut. */
static void reserve_next_names_jobs_and_admits_exactly_what_fits(void **state)
{
    struct ctx *c = *state;
    struct rq_state st2;
    struct bd_rq *rq2 = rq_open(c, "w2", 30.0, 5.0, &st2);
    const char *prefix = "batch_m_20260101_000000_";
    struct xres r[10];
    bool seen[11] = { false };
    int granted = 0;

    for (int i = 0; i < 10; i++) {
        r[i] = (struct xres){ .c = c };
        assert_int_equal(bd_rq_reserve_next(i % 2 ? rq2 : c->rq, prefix, 30, 100,
                                            on_reserve_next, &r[i]), BD_OK);
        c->started++;
    }
    for (int i = 0; i < 10; i++)
        assert_int_equal(r[i].calls, 0);            /* never synchronous */
    for (int i = 0; i < 10; i++) {
        char want[64];
        wait_calls(c, &r[i].calls, 1, WAIT_S);
        assert_int_equal(r[i].status, BD_OK);
        assert_true(r[i].seq >= 1 && r[i].seq <= 10 && !seen[r[i].seq]);
        seen[r[i].seq] = true;
        snprintf(want, sizeof(want), "%s%03lld", prefix, r[i].seq);
        assert_string_equal(r[i].id, want);
        if (r[i].is_granted) {
            granted++;
            assert_int_equal(sync_ll(c, "HGET %sreserved_items %s", c->prefix, r[i].id), 30);
        } else {
            assert_int_equal(r[i].after, 90);
            assert_int_equal(sync_ll(c, "HGET %sreserved_items %s", c->prefix, r[i].id), -1);
        }
    }
    assert_int_equal(granted, 3);
    assert_int_equal(reserved_now(c, c->rq), 90);
    assert_counts(c, c->rq, 0, 0, 0, 0, 0);

    /* The seq only: named, nothing reserved, even with the queue full. */
    struct xres s = op_reserve_next(c, c->rq, prefix, -1, 0);
    assert_int_equal(s.seq, 11);
    assert_string_equal(s.id, "batch_m_20260101_000000_011");
    assert_true(s.is_granted);
    assert_int_equal(s.after, 0);
    assert_int_equal(reserved_now(c, c->rq), 90);
    /* Refused seqs are used up too, and the ids share the sequence of bd_rq_next_seq. */
    assert_int_equal(op_seq(c, c->rq), 12);
    freeReplyObject(sync_cmd(c, "SET %sseq 12344", c->prefix));
    s = op_reserve_next(c, rq2, "x_", 11, 100);
    assert_int_equal(s.seq, 12345);
    assert_string_equal(s.id, "x_12345");
    assert_false(s.is_granted);                     /* 90 + 11 > 100 */
    assert_int_equal(s.after, 90);
    s = op_reserve_next(c, rq2, "x_", 10, 100);     /* 90 + 10 fits exactly */
    assert_true(s.is_granted);
    assert_int_equal(s.after, 100);
    assert_string_equal(s.id, "x_12346");
    rq_close_wait(c, rq2);
}

/* bd_rq_enqueue_many's answer, copied. */
struct mres {
    struct ctx *c;
    int calls;
    int status;
    unsigned n;
    long long pos[8];
    bool has_pos;
};

static void on_enqueued_many(int status, const long long *positions, unsigned n, void *arg)
{
    struct mres *r = arg;

    r->calls++;
    r->c->finished++;
    r->status = status;
    r->n = n;
    r->has_pos = positions != NULL;
    for (unsigned i = 0; positions && i < n && i < 8; i++)
        r->pos[i] = positions[i];
}

static struct mres op_enqueue_many(struct ctx *c, struct bd_rq *rq,
                                   const struct bd_rq_enqueue_job *jobs, unsigned n)
{
    struct mres r = { .c = c };

    STARTED(c, bd_rq_enqueue_many(rq, jobs, n, on_enqueued_many, &r), r);
    assert_int_equal(r.status, BD_OK);
    assert_true(r.has_pos);
    assert_int_equal(r.n, n);
    return r;
}

/* Issue 11: a group's enqueues in one script call, each as its own bd_rq_enqueue: the
 * positions in order, reservations taken over, a model name with the packing's own
 * characters intact, a job already queued or in flight left where it is; bad arguments
 * refused without a call. */
static void enqueue_many_queues_each_as_enqueue_would(void **state)
{
    struct ctx *c = *state;
    struct mres ir = { .c = c };
    char id[128];

    assert_true(op_reserve(c, c->rq, "a", 30, 1000).is_granted);
    assert_true(op_reserve(c, c->rq, "b", 20, 1000).is_granted);
    assert_int_equal(reserved_now(c, c->rq), 50);
    const struct bd_rq_enqueue_job jobs[3] = {
        { "a", BD_PRIO_NORMAL, 1, "m 5:x|y", 30 },
        { "b", BD_PRIO_HIGH, 2, "", 20 },
        { "c", BD_PRIO_LOW, 3, NULL, 1 },
    };
    struct mres r = op_enqueue_many(c, c->rq, jobs, 3);
    assert_int_equal(r.pos[0], 1);                  /* a: alone in normal */
    assert_int_equal(r.pos[1], 1);                  /* b: high goes first */
    assert_int_equal(r.pos[2], 3);                  /* c: after b and a */
    assert_counts(c, c->rq, 1, 1, 1, 0, 51);
    assert_int_equal(reserved_now(c, c->rq), 0);    /* taken over, not counted twice */
    assert_models(c, c->rq, "m 5:x|y 1 0");
    assert_int_equal(sync_ll(c, "HGET %sjob:a seq", c->prefix), 1);
    assert_int_equal(sync_ll(c, "ZSCORE %sq:low c", c->prefix), 3);

    /* Again, with b in flight and a new one: a and c stay, b is left alone (0). */
    assert_string_equal(op_claim(c, c->rq, id, sizeof(id)), "b");
    const struct bd_rq_enqueue_job again[4] = {
        { "a", BD_PRIO_HIGH, 99, "m 5:x|y", 30 },
        { "b", BD_PRIO_HIGH, 2, "", 20 },
        { "d", BD_PRIO_NORMAL, 4, "m2", 2 },
        { "c", BD_PRIO_LOW, 3, NULL, 1 },
    };
    r = op_enqueue_many(c, c->rq, again, 4);
    assert_int_equal(r.pos[0], 1);
    assert_int_equal(r.pos[1], 0);
    assert_int_equal(r.pos[2], 2);
    assert_int_equal(r.pos[3], 3);
    assert_counts(c, c->rq, 0, 2, 1, 1, 33);
    assert_models(c, c->rq, "m 5:x|y 1 0 m2 1 0");

    /* Refused at once: nothing to send, no callback. */
    const struct bd_rq_enqueue_job bad[2] = { { "e", BD_PRIO_LOW, 5, "m", 1 },
                                              { "", BD_PRIO_LOW, 6, "m", 1 } };
    assert_int_equal(bd_rq_enqueue_many(c->rq, bad, 2, on_enqueued_many, &ir), BD_EINVAL);
    assert_int_equal(bd_rq_enqueue_many(c->rq, bad, 0, on_enqueued_many, &ir), BD_EINVAL);
    assert_int_equal(bd_rq_enqueue_many(c->rq, bad, BD_RQ_ENQUEUE_MAX + 1, on_enqueued_many,
                                        &ir), BD_EINVAL);
    assert_int_equal(bd_rq_enqueue_many(c->rq, bad, 1, NULL, &ir), BD_EINVAL);
    assert_int_equal(ir.calls, 0);
    assert_int_equal(sync_ll(c, "ZSCORE %sq:low e", c->prefix), -1);
}

/* A submitter that died between reserve and enqueue: its reservation lapses. */
static void reservation_lapses_after_its_ttl(void **state)
{
    struct ctx *c = *state;
    struct bd_rq_options o = {
        .url = redis_url(), .worker_id = "w-ttl", .prefix = c->prefix,
        .reserve_ttl_s = 0.2,
    };
    struct rq_state st;
    struct bd_rq *rq = NULL;

    memset(&st, 0, sizeof(st));
    assert_int_equal(bd_rq_new(&c->loop, &o, &rq), BD_OK);
    st.rq = rq;
    bd_rq_set_state_cb(rq, on_state, &st);
    wait_calls(c, &st.ups, 1, WAIT_S);
    assert_true(op_reserve(c, rq, "gone", 10, 10).is_granted);
    assert_false(op_reserve(c, rq, "next", 1, 10).is_granted);
    loop_sleep(c, 350);
    assert_int_equal(reserved_now(c, rq), 0);
    assert_true(op_reserve(c, rq, "next", 10, 10).is_granted);
    /* Enqueued after its reservation lapsed: counted once, by the enqueue. */
    assert_int_equal(op_enqueue(c, rq, "gone", BD_PRIO_LOW, 1, NULL, 10), 1);
    assert_counts(c, rq, 0, 0, 1, 0, 10);
    assert_int_equal(reserved_now(c, rq), 10);
    rq_close_wait(c, rq);
}

/* Bug 7: free-form model names must not pile up keys: a model's hash and its entry in the
 * model list are gone once it has no job queued or in flight, by every way out. */
static void model_keys_are_removed_at_zero(void **state)
{
    struct ctx *c = *state;
    struct rq_state st_short;
    struct bd_rq *rq_short = rq_open(c, "w-short", 0.2, 5.0, &st_short);
    char id[128], name[32];

    for (int i = 0; i < 20; i++) {
        snprintf(name, sizeof(name), "free-%02d", i);
        snprintf(id, sizeof(id), "j%02d", i);
        op_enqueue(c, c->rq, id, BD_PRIO_NORMAL, i + 1, name, 1);
    }
    assert_int_equal(count_keys(c, "model:*"), 20);
    for (int i = 0; i < 5; i++) {                   /* cancelled while queued */
        snprintf(id, sizeof(id), "j%02d", i);
        assert_int_equal(op_cancel(c, c->rq, id), 1);
    }
    for (int i = 5; i < 10; i++) {                  /* run and finished */
        assert_string_equal(op_claim(c, c->rq, id, sizeof(id)), (snprintf(name, sizeof(name),
                            "j%02d", i), name));
        assert_int_equal(op_release(c, c->rq, id, false), 1);
    }
    assert_string_equal(op_claim(c, rq_short, id, sizeof(id)), "j10");  /* lease expires */
    loop_sleep(c, 350);
    assert_int_equal(op_reap(c, c->rq), 1);
    assert_int_equal(count_keys(c, "model:*"), 10);
    assert_int_equal(sync_ll(c, "SCARD %smodels", c->prefix), 10);
    while (op_claim(c, c->rq, id, sizeof(id))[0] != '\0')
        assert_int_equal(op_release(c, c->rq, id, false), 1);
    assert_models(c, c->rq, "");
    assert_int_equal(count_keys(c, "model*"), 0);   /* model:<m> and models */
    rq_close_wait(c, rq_short);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
        T(seq_increases_across_instances),
        T(connection_has_keepalive_and_user_timeout),
        T(claim_follows_priority_then_fifo),
        T(claim_returns_null_when_queues_empty),
        T(enqueue_is_idempotent_and_reports_position),
        T(renew_reports_owner_and_cancel),
        T(cancel_removes_queued_job),
        T(release_requeue_puts_job_first_in_its_priority),
        T(reap_returns_expired_lease_to_queue),
        T(counts_stay_consistent_through_a_sequence),
        T(noscript_is_recovered_transparently),
        T(reconnects_after_client_kill),
        T(commands_fail_fast_when_redis_unreachable),
        T(bad_arguments_are_refused),
        T(url_with_user_password_and_db),
        T(auth_failure_keeps_client_down),
        T(survives_redis_restart),
        T(command_timeout_fails_pending_and_recovers),
        T(close_fails_pending_with_canceled),
        T(close_from_inside_a_callback),
        T(alive_marker_and_memory),
        T(claim_skip_parks_paused_backlog_and_unparks_on_resume),
        T(lease_reports_deadline_and_owner),
        T(restore_seq_raises_never_lowers),
        T(retry_while_in_flight_is_queued_after_old_release),
        T(retry_mark_is_reaped_cancelled_and_not_set_by_enqueue),
        T(parallel_reservations_admit_exactly_what_fits),
        T(reservation_lapses_after_its_ttl),
        T(reserve_next_names_jobs_and_admits_exactly_what_fits),
        T(enqueue_many_queues_each_as_enqueue_would),
        T(model_keys_are_removed_at_zero),
#undef T
    };
    const char *level = getenv("BD_TEST_LOG");
    enum bd_log_level lv = BD_LOG_ERROR;

    if (level != NULL)
        bd_log_level_parse(level, &lv);
    bd_log_set_level(lv);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
