/* rq_conn.c -- the Redis queue's connection: one hiredis async context on the libuv
 * adapter, its call records, reconnect with backoff and command timeouts.
 *
 * Owns the redisAsyncContext, the SHAs of the Lua scripts, a free list of call records and
 * two timers: `tick` (deadlines of pending commands, then the close step) and `retry`
 * (reconnect backoff). Loop thread only; never blocks: host names are resolved with
 * uv_getaddrinfo, and hiredis 0.14's missing command timeout is made up for by `tick`.
 * Must not call redisAsyncFree from inside a hiredis callback: the context is freed only
 * from our own timer callbacks (reset on timeout, close), and hiredis frees it itself on
 * connect failure and on disconnect. Knows no key and no script body: those are
 * redis_queue.c's.  SPDX-License-Identifier: MIT
 */
#include "rq_internal.h"

#include "batchd/error.h"
#include "batchd/log.h"
#include "batchd/url.h"

#include <hiredis/adapters/libuv.h>

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define RQ_DEFAULT_PREFIX       "bd:"
#define RQ_DEFAULT_LEASE_S      30.0
#define RQ_DEFAULT_TIMEOUT_S    5.0
#define RQ_DEFAULT_RESERVE_TTL_S 60.0
#define RQ_BACKOFF_MIN_MS       100
#define RQ_BACKOFF_MAX_MS       5000
#define RQ_FREE_LIST_MAX        256   /* call records kept for reuse; more are freed */

static void rq_connect(struct bd_rq *rq);
static void rq_on_reply(redisAsyncContext *ac, void *r, void *privdata);
static void rq_on_tick(uv_timer_t *timer);
static void rq_on_retry(uv_timer_t *timer);
static void rq_close_unref(struct bd_rq *rq);

/* ---------------------------------------------------------------------------------------
 * Call records
 * ------------------------------------------------------------------------------------- */

static struct bd__rq_call *rq_call_get(struct bd_rq *rq)
{
    struct bd__rq_call *call = rq->free_list;

    if (call != NULL) {
        rq->free_list = call->next;
        rq->nfree--;
    } else {
        call = calloc(1, sizeof(*call));
        if (call == NULL)
            return NULL;
    }
    call->next = call->prev = NULL;
    call->rq = rq;
    call->conv = BD__RQ_CONV_RAW;
    call->arg = NULL;
    call->script = -1;
    call->is_retried = false;
    call->argc = 0;
    return call;
}

static void rq_call_put(struct bd_rq *rq, struct bd__rq_call *call)
{
    if (rq->nfree >= RQ_FREE_LIST_MAX) {
        free(call->buf);
        free(call);
        return;
    }
    call->next = rq->free_list;
    rq->free_list = call;
    rq->nfree++;
}

static void rq_pending_add(struct bd_rq *rq, struct bd__rq_call *call)
{
    call->sent_ms = uv_now(rq->loop);
    call->next = NULL;
    call->prev = rq->pending_tail;
    if (rq->pending_tail != NULL)
        rq->pending_tail->next = call;
    else
        rq->pending_head = call;
    rq->pending_tail = call;
    if (!rq->is_closing && !uv_is_active((uv_handle_t *)&rq->tick))
        uv_timer_start(&rq->tick, rq_on_tick, rq->tick_ms, rq->tick_ms);
}

static void rq_pending_remove(struct bd_rq *rq, struct bd__rq_call *call)
{
    if (call->prev != NULL)
        call->prev->next = call->next;
    else
        rq->pending_head = call->next;
    if (call->next != NULL)
        call->next->prev = call->prev;
    else
        rq->pending_tail = call->prev;
    call->next = call->prev = NULL;
}

/* Copy argv[first..argc) into call->buf so that a NOSCRIPT retry can send them again;
 * argv[0..first) must point at storage that outlives the call (rq's strings, literals). */
static int rq_call_keep_args(struct bd__rq_call *call, int argc, const char **argv,
                             const size_t *argvlen, int first)
{
    size_t need = 0;
    char *p;

    assert(argc <= BD__RQ_MAX_ARGS);
    for (int i = first; i < argc; i++)
        need += argvlen[i] + 1;
    if (need > call->bufcap) {
        char *nb = realloc(call->buf, need);
        if (nb == NULL)
            return BD_ENOMEM;
        call->buf = nb;
        call->bufcap = need;
    }
    p = call->buf;
    for (int i = 0; i < argc; i++) {
        call->argvlen[i] = argvlen[i];
        if (i < first) {
            call->argv[i] = argv[i];
            continue;
        }
        memcpy(p, argv[i], argvlen[i]);
        p[argvlen[i]] = '\0';
        call->argv[i] = p;
        p += argvlen[i] + 1;
    }
    call->argc = argc;
    return BD_OK;
}

/* ---------------------------------------------------------------------------------------
 * Sending
 * ------------------------------------------------------------------------------------- */

/* True when a command handed to hiredis now will be written to a live connection. */
static bool rq_is_usable(const struct bd_rq *rq)
{
    return !rq->is_closing && rq->is_up && rq->ac != NULL &&
           !(rq->ac->c.flags & (REDIS_DISCONNECTING | REDIS_FREEING));
}

/* Hand call (with argv) to hiredis on ac and track its deadline. */
static int rq_send_on(struct bd_rq *rq, redisAsyncContext *ac, struct bd__rq_call *call,
                      int argc, const char **argv, const size_t *argvlen)
{
    if (redisAsyncCommandArgv(ac, rq_on_reply, call, argc, argv, argvlen) != REDIS_OK)
        return BD_EREDIS;
    rq_pending_add(rq, call);
    return BD_OK;
}

int bd__rq_command(struct bd_rq *rq, enum bd__rq_conv conv, union bd__rq_cb cb, void *arg,
                   int argc, const char **argv, const size_t *argvlen)
{
    size_t lens[BD__RQ_MAX_ARGS];
    struct bd__rq_call *call;
    int err;

    if (rq->is_closing)
        return BD_ECANCELED;
    if (!rq_is_usable(rq))
        return BD_EREDIS;
    if (argvlen == NULL) {
        assert(argc <= BD__RQ_MAX_ARGS);
        for (int i = 0; i < argc; i++)
            lens[i] = strlen(argv[i]);
        argvlen = lens;
    }
    call = rq_call_get(rq);
    if (call == NULL)
        return BD_ENOMEM;
    call->conv = conv;
    call->cb = cb;
    call->arg = arg;
    err = rq_send_on(rq, rq->ac, call, argc, argv, argvlen);
    if (err < 0)
        rq_call_put(rq, call);
    return err;
}

int bd__rq_eval(struct bd_rq *rq, enum bd__rq_script script, enum bd__rq_conv conv,
                union bd__rq_cb cb, void *arg, int nargs, const char **args)
{
    const char *argv[BD__RQ_MAX_ARGS];
    size_t argvlen[BD__RQ_MAX_ARGS];
    struct bd__rq_call *call;
    int argc = 0;
    int err;

    assert(nargs + 4 <= BD__RQ_MAX_ARGS);
    if (rq->is_closing)
        return BD_ECANCELED;
    if (!rq_is_usable(rq))
        return BD_EREDIS;
    argv[argc++] = "EVALSHA";
    argv[argc++] = rq->sha[script];
    argv[argc++] = "0";
    argv[argc++] = rq->prefix;
    for (int i = 0; i < nargs; i++)
        argv[argc++] = args[i];
    for (int i = 0; i < argc; i++)
        argvlen[i] = strlen(argv[i]);

    call = rq_call_get(rq);
    if (call == NULL)
        return BD_ENOMEM;
    err = rq_call_keep_args(call, argc, argv, argvlen, 4);
    if (err < 0)
        goto fail;
    call->conv = conv;
    call->cb = cb;
    call->arg = arg;
    call->script = (int)script;
    err = rq_send_on(rq, rq->ac, call, call->argc, call->argv, call->argvlen);
    if (err < 0)
        goto fail;
    return BD_OK;

fail:
    rq_call_put(rq, call);
    return err;
}

/* An internal command whose reply is handled by rq_on_reply's own branches. */
static int rq_send_internal(struct bd_rq *rq, redisAsyncContext *ac, enum bd__rq_conv conv,
                            int script, int argc, const char **argv)
{
    size_t argvlen[BD__RQ_MAX_ARGS];
    struct bd__rq_call *call = rq_call_get(rq);
    int err;

    if (call == NULL)
        return BD_ENOMEM;
    for (int i = 0; i < argc; i++)
        argvlen[i] = strlen(argv[i]);
    call->conv = conv;
    call->script = script;
    err = rq_send_on(rq, ac, call, argc, argv, argvlen);
    if (err < 0)
        rq_call_put(rq, call);
    return err;
}

/* ---------------------------------------------------------------------------------------
 * Replies
 * ------------------------------------------------------------------------------------- */

static void rq_set_up(struct bd_rq *rq)
{
    rq->is_up = true;
    rq->attempts = 0;
    rq->backoff_ms = RQ_BACKOFF_MIN_MS;
    bd_log(BD_LOG_INFO, "rq", "event=up url=%s worker=%s scripts=%d", rq->url_redacted,
           rq->worker_id, BD__RQ_SCRIPT_COUNT);
    if (rq->state_cb != NULL)
        rq->state_cb(true, rq->state_arg);
}

static void rq_on_handshake_reply(struct bd_rq *rq, redisAsyncContext *ac, struct bd__rq_call *call,
                                  const redisReply *reply)
{
    if (ac != rq->ac || rq->is_closing)
        return;                     /* an old connection's flush, or we are closing */
    if (reply == NULL)
        return;                     /* the loss itself is handled by on_disconnect/reset */
    if (rq->is_handshake_failed)
        return;
    if (reply->type == REDIS_REPLY_ERROR ||
        (call->script >= 0 && (reply->type != REDIS_REPLY_STRING || reply->len != 40))) {
        if (rq->attempts < 3 || rq->attempts % 12 == 0)   /* paced like connect_failed */
            bd_log(BD_LOG_ERROR, "rq", "event=handshake_failed step=%s error=\"%s\"",
                   call->script >= 0 ? bd__rq_scripts[call->script].name : "auth/select",
                   reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply");
        rq->is_handshake_failed = true;
        /* From inside a hiredis callback only the graceful disconnect is allowed; it drops
         * the connection once the remaining handshake replies are in, and on_disconnect
         * then arms the reconnect. */
        redisAsyncDisconnect(ac);
        return;
    }
    if (call->script >= 0)
        memcpy(rq->sha[call->script], reply->str, 41);
    if (--rq->handshake_left == 0)
        rq_set_up(rq);
}

/* EVALSHA answered NOSCRIPT (SCRIPT FLUSH, or a failover to a replica without the script):
 * load the script and send the same EVALSHA again, once, on the same connection so that
 * the load is sure to run first. */
static int rq_retry_noscript(struct bd_rq *rq, redisAsyncContext *ac, struct bd__rq_call *call)
{
    const char *load[3] = { "SCRIPT", "LOAD", bd__rq_scripts[call->script].body };
    int err;

    if (ac != rq->ac || !rq_is_usable(rq))
        return BD_EREDIS;
    bd_log(BD_LOG_INFO, "rq", "event=noscript script=%s action=reload",
           bd__rq_scripts[call->script].name);
    err = rq_send_internal(rq, ac, BD__RQ_CONV_INTERNAL, call->script, 3, load);
    if (err < 0)
        return err;
    call->is_retried = true;
    return rq_send_on(rq, ac, call, call->argc, call->argv, call->argvlen);
}

static void rq_on_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    struct bd__rq_call *call = privdata;
    struct bd_rq *rq = call->rq;
    const redisReply *reply = r;
    int status = BD_OK;

    rq_pending_remove(rq, call);
    if (call->conv == BD__RQ_CONV_HANDSHAKE) {
        rq_on_handshake_reply(rq, ac, call, reply);
        rq_call_put(rq, call);
        return;
    }
    if (call->conv == BD__RQ_CONV_INTERNAL) {
        rq_call_put(rq, call);
        return;
    }

    if (rq->is_closing) {
        status = BD_ECANCELED;
    } else if (reply == NULL) {
        status = BD_EREDIS;         /* disconnect or reset: hiredis flushes with NULL */
    } else if (reply->type == REDIS_REPLY_ERROR) {
        if (call->script >= 0 && !call->is_retried && strncmp(reply->str, "NOSCRIPT", 8) == 0 &&
            rq_retry_noscript(rq, ac, call) == BD_OK)
            return;                 /* call is pending again */
        bd_log(BD_LOG_DEBUG, "rq", "event=error_reply script=%s error=\"%s\"",
               call->script >= 0 ? bd__rq_scripts[call->script].name : "-", reply->str);
        status = BD_EREDIS;
    }
    bd__rq_deliver(call, status, reply);    /* reply is borrowed: callers copy what they keep */
    rq_call_put(rq, call);
}

/* ---------------------------------------------------------------------------------------
 * Connection life
 * ------------------------------------------------------------------------------------- */

/* The current connection is gone (rq->ac already NULL). Tell the owner and arm a reconnect. */
static void rq_on_lost(struct bd_rq *rq, const char *why)
{
    bool was_up = rq->is_up;

    rq->is_up = false;
    rq->is_handshake_failed = false;
    if (rq->is_closing)
        return;
    rq->attempts++;
    if (was_up) {
        bd_log(BD_LOG_WARN, "rq", "event=down reason=\"%s\" retry_ms=%" PRIu64, why,
               rq->backoff_ms);
        if (rq->state_cb != NULL)
            rq->state_cb(false, rq->state_arg);
        if (rq->is_closing)         /* the state callback closed us */
            return;
    } else {
        rq->addr_pick++;            /* this address did not work: try the next one */
        if (rq->attempts <= 3 || rq->attempts % 12 == 0)
            bd_log(BD_LOG_WARN, "rq", "event=connect_failed reason=\"%s\" attempt=%u "
                   "retry_ms=%" PRIu64, why, rq->attempts, rq->backoff_ms);
    }
    uv_timer_start(&rq->retry, rq_on_retry, rq->backoff_ms, 0);
    rq->backoff_ms *= 2;
    if (rq->backoff_ms > RQ_BACKOFF_MAX_MS)
        rq->backoff_ms = RQ_BACKOFF_MAX_MS;
}

/* Drop the connection from one of our own timer callbacks (never from inside hiredis):
 * redisAsyncFree runs every pending callback with NULL, so each caller gets BD_EREDIS (or
 * BD_ECANCELED when closing) exactly once. */
static void rq_drop(struct bd_rq *rq)
{
    redisAsyncContext *ac = rq->ac;

    if (ac == NULL)
        return;
    rq->ac = NULL;                  /* on_disconnect ignores it; commands now fail fast */
    redisAsyncFree(ac);
}

static void rq_on_connect(const redisAsyncContext *ac, int status)
{
    struct bd_rq *rq = ac->data;

    if (status == REDIS_OK) {
        bd_log(BD_LOG_DEBUG, "rq", "event=connected host=%s port=%d", rq->host, rq->port);
        return;
    }
    /* hiredis frees ac right after this returns and flushes the handshake with NULL. */
    if (rq->ac != ac)
        return;
    rq->ac = NULL;
    rq_on_lost(rq, ac->c.err != 0 ? ac->c.errstr : "connect failed");
}

static void rq_on_disconnect(const redisAsyncContext *ac, int status)
{
    struct bd_rq *rq = ac->data;

    (void)status;
    if (rq->ac != ac)
        return;                     /* we dropped it ourselves (timeout reset or close) */
    rq->ac = NULL;
    rq_on_lost(rq, ac->c.err != 0 ? ac->c.errstr :
                   rq->is_handshake_failed ? "handshake failed" : "connection closed");
}

/* Start the handshake on a fresh context: commands are buffered by hiredis until the TCP
 * connect completes, and the connection counts as up when the last reply is in. */
static int rq_send_handshake(struct bd_rq *rq, redisAsyncContext *ac)
{
    char db[16];
    const char *argv[3];
    int err;

    rq->handshake_left = 0;
    rq->is_handshake_failed = false;
    if (rq->password != NULL) {
        int argc = 0;
        argv[argc++] = "AUTH";
        if (rq->user != NULL)
            argv[argc++] = rq->user;
        argv[argc++] = rq->password;
        err = rq_send_internal(rq, ac, BD__RQ_CONV_HANDSHAKE, -1, argc, argv);
        if (err < 0)
            return err;
        rq->handshake_left++;
    }
    if (rq->db != 0) {
        snprintf(db, sizeof(db), "%d", rq->db);
        argv[0] = "SELECT";
        argv[1] = db;
        err = rq_send_internal(rq, ac, BD__RQ_CONV_HANDSHAKE, -1, 2, argv);
        if (err < 0)
            return err;
        rq->handshake_left++;
    }
    for (int i = 0; i < BD__RQ_SCRIPT_COUNT; i++) {
        argv[0] = "SCRIPT";
        argv[1] = "LOAD";
        argv[2] = bd__rq_scripts[i].body;
        err = rq_send_internal(rq, ac, BD__RQ_CONV_HANDSHAKE, i, 3, argv);
        if (err < 0)
            return err;
        rq->handshake_left++;
    }
    return BD_OK;
}

/* hiredis 0.14's libuv adapter returns early when uv_poll reports an error (libuv reports
 * POLLERR -- a refused connect, a reset -- as status UV_EBADF and stops the handle), so the
 * context would hang until our command timeout. These hooks replace the adapter's four
 * event hooks (its struct, attach and cleanup are kept) and, as hiredis 1.0 does, let
 * hiredis read or write on an error so it finds the socket error and disconnects. */
static void rq_ev_poll(uv_poll_t *handle, int status, int events)
{
    redisLibuvEvents *p = handle->data;
    int ev = status != 0 ? p->events : events;

    if (p->context != NULL && (ev & UV_READABLE))
        redisAsyncHandleRead(p->context);
    if (p->context != NULL && (ev & UV_WRITABLE))
        redisAsyncHandleWrite(p->context);
}

static void rq_ev_update(redisLibuvEvents *p)
{
    if (p->events != 0)
        uv_poll_start(&p->handle, p->events, rq_ev_poll);
    else
        uv_poll_stop(&p->handle);
}

static void rq_ev_add_read(void *privdata)
{
    redisLibuvEvents *p = privdata;

    p->events |= UV_READABLE;
    rq_ev_update(p);
}

static void rq_ev_del_read(void *privdata)
{
    redisLibuvEvents *p = privdata;

    p->events &= ~UV_READABLE;
    rq_ev_update(p);
}

static void rq_ev_add_write(void *privdata)
{
    redisLibuvEvents *p = privdata;

    p->events |= UV_WRITABLE;
    rq_ev_update(p);
}

static void rq_ev_del_write(void *privdata)
{
    redisLibuvEvents *p = privdata;

    p->events &= ~UV_WRITABLE;
    rq_ev_update(p);
}

/* A Redis host that vanished without a FIN: keepalives (hiredis': idle 15 s) notice it on
 * an idle connection, and data Redis' host does not acknowledge for RQ_TCP_USER_TIMEOUT_MS
 * breaks the connection. A Redis that is alive but silent is the command timeout's case.
 * Best effort: a failure leaves the OS defaults. */
#define RQ_TCP_USER_TIMEOUT_MS 30000

static void rq_tune_socket(redisAsyncContext *ac)
{
    unsigned ms = RQ_TCP_USER_TIMEOUT_MS;

    if (redisEnableKeepAlive(&ac->c) != REDIS_OK)
        bd_log(BD_LOG_DEBUG, "redis", "event=keepalive_failed");
    if (setsockopt(ac->c.fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &ms, sizeof(ms)) < 0)
        bd_log(BD_LOG_DEBUG, "redis", "event=user_timeout_failed errno=%d", errno);
}

static void rq_connect_ip(struct bd_rq *rq, const char *ip)
{
    redisAsyncContext *ac = redisAsyncConnect(ip, rq->port);
    char why[128];

    if (ac == NULL) {
        rq_on_lost(rq, "out of memory");
        return;
    }
    if (ac->err != 0) {
        snprintf(why, sizeof(why), "%s", ac->errstr);
        redisAsyncFree(ac);         /* not attached yet: no callbacks, no handles */
        rq_on_lost(rq, why);
        return;
    }
    rq_tune_socket(ac);
    ac->data = rq;
    if (redisLibuvAttach(ac, rq->loop) != REDIS_OK) {
        redisAsyncFree(ac);
        rq_on_lost(rq, "libuv attach failed");
        return;
    }
    ac->ev.addRead = rq_ev_add_read;
    ac->ev.delRead = rq_ev_del_read;
    ac->ev.addWrite = rq_ev_add_write;
    ac->ev.delWrite = rq_ev_del_write;
    redisAsyncSetConnectCallback(ac, rq_on_connect);
    redisAsyncSetDisconnectCallback(ac, rq_on_disconnect);
    rq->ac = ac;
    if (rq_send_handshake(rq, ac) < 0) {
        rq_drop(rq);                /* we are in a timer or getaddrinfo callback: safe */
        rq_on_lost(rq, "handshake could not be queued");
    }
}

static void rq_on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct bd_rq *rq = req->data;
    char ip[INET6_ADDRSTRLEN] = "";
    struct addrinfo *ai;
    unsigned n = 0;

    rq->is_resolving = false;
    if (rq->is_closing) {
        uv_freeaddrinfo(res);
        rq_close_unref(rq);
        return;
    }
    /* "localhost" is often ::1 and 127.0.0.1 while Redis listens on one of them: each failed
     * attempt moves on to the next address, and a working one is kept. */
    for (ai = res; status == 0 && ai != NULL; ai = ai->ai_next)
        n++;
    if (n > 0) {
        ai = res;
        for (unsigned i = rq->addr_pick % n; i > 0; i--)
            ai = ai->ai_next;
        if (ai->ai_family == AF_INET6)
            uv_ip6_name((const struct sockaddr_in6 *)ai->ai_addr, ip, sizeof(ip));
        else
            uv_ip4_name((const struct sockaddr_in *)ai->ai_addr, ip, sizeof(ip));
    }
    uv_freeaddrinfo(res);
    if (ip[0] == '\0') {
        rq_on_lost(rq, status < 0 ? uv_strerror(status) : "host not found");
        return;
    }
    bd_log(BD_LOG_DEBUG, "rq", "event=resolved host=%s ip=%s", rq->host, ip);
    rq_connect_ip(rq, ip);
}

/* Connect, resolving the host off the loop thread when it is not a literal address
 * (hiredis' own getaddrinfo would block). */
static void rq_connect(struct bd_rq *rq)
{
    struct in6_addr a6;
    struct in_addr a4;
    struct addrinfo hints;
    int err;

    if (inet_pton(AF_INET, rq->host, &a4) == 1 || inet_pton(AF_INET6, rq->host, &a6) == 1) {
        rq_connect_ip(rq, rq->host);
        return;
    }
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    err = uv_getaddrinfo(rq->loop, &rq->gai, rq_on_resolved, rq->host, NULL, &hints);
    if (err < 0) {
        rq_on_lost(rq, uv_strerror(err));
        return;
    }
    rq->is_resolving = true;
}

static void rq_on_retry(uv_timer_t *timer)
{
    struct bd_rq *rq = timer->data;

    if (!rq->is_closing && rq->ac == NULL && !rq->is_resolving)
        rq_connect(rq);
}

static void rq_on_tick(uv_timer_t *timer)
{
    struct bd_rq *rq = timer->data;
    uint64_t now = uv_now(rq->loop);

    if (rq->pending_head == NULL) {
        uv_timer_stop(timer);
        return;
    }
    if (now - rq->pending_head->sent_ms < rq->timeout_ms)
        return;
    bd_log(BD_LOG_WARN, "rq", "event=command_timeout waited_ms=%" PRIu64 " action=reconnect",
           now - rq->pending_head->sent_ms);
    rq_drop(rq);
    rq_on_lost(rq, "command timeout");
}

/* ---------------------------------------------------------------------------------------
 * Create and close
 * ------------------------------------------------------------------------------------- */

/* A copy of a URL part, NULL for an empty one. */
static int rq_part(const char *s, char **out)
{
    *out = NULL;
    if (s == NULL || s[0] == '\0')
        return BD_OK;
    *out = strdup(s);
    return *out != NULL ? BD_OK : BD_ENOMEM;
}

/* redis://[[user]:password@]host[:port][/db] into rq's host, port, db, user, password, by
 * url.h (libcurl's URL parser, the one of batchd); user and password are %-decoded.
 * "redis://secret@host" is a password alone (as redis-cli reads it). */
static int rq_parse_url(struct bd_rq *rq, const char *url)
{
    struct bd_url u;
    unsigned db;
    int err = bd_url_parse(url, bd_url_redis_schemes, &u, NULL, 0);

    if (err < 0)
        return err;
    if (u.query[0] != '\0' || bd_url_path_uint(&u, 1u << 20, &db) < 0) {
        bd_url_free(&u);
        return BD_EINVAL;
    }
    rq->port = u.port;
    rq->db = (int)db;
    bool is_password_only = u.password[0] == '\0';
    err = rq_part(u.host, &rq->host);
    if (err == BD_OK)
        err = rq_part(is_password_only ? NULL : u.user, &rq->user);
    if (err == BD_OK)
        err = rq_part(is_password_only ? u.user : u.password, &rq->password);
    bd_url_free(&u);
    return err;
}

static char *rq_concat(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    char *s = malloc(la + lb + 1);

    if (s != NULL) {
        memcpy(s, a, la);
        memcpy(s + la, b, lb + 1);
    }
    return s;
}

static void rq_free(struct bd_rq *rq)
{
    struct bd__rq_call *call;

    assert(rq->pending_head == NULL);
    while ((call = rq->free_list) != NULL) {
        rq->free_list = call->next;
        free(call->buf);
        free(call);
    }
    free(rq->host);
    free(rq->user);
    free(rq->password);
    free(rq->url_redacted);
    free(rq->worker_id);
    free(rq->prefix);
    free(rq->seq_key);
    free(rq->alive_key);
    free(rq);
}

int bd_rq_new(uv_loop_t *loop, const struct bd_rq_options *opt, struct bd_rq **out)
{
    struct bd_rq *rq;
    double lease_s, timeout_s, ttl_s;
    char redacted[512];
    int err;

    *out = NULL;
    if (opt == NULL || opt->url == NULL || opt->worker_id == NULL || opt->worker_id[0] == '\0')
        return BD_EINVAL;
    rq = calloc(1, sizeof(*rq));
    if (rq == NULL)
        return BD_ENOMEM;
    rq->loop = loop;
    err = rq_parse_url(rq, opt->url);
    if (err < 0)
        goto fail;

    err = BD_ENOMEM;
    rq->url_redacted = strdup(bd_log_redact_url(opt->url, redacted, sizeof(redacted)));
    rq->worker_id = strdup(opt->worker_id);
    rq->prefix = strdup(opt->prefix != NULL ? opt->prefix : RQ_DEFAULT_PREFIX);
    if (rq->url_redacted == NULL || rq->worker_id == NULL || rq->prefix == NULL)
        goto fail;
    rq->seq_key = rq_concat(rq->prefix, "seq");
    rq->alive_key = rq_concat(rq->prefix, "alive");
    if (rq->seq_key == NULL || rq->alive_key == NULL)
        goto fail;

    lease_s = opt->lease_s > 0 ? opt->lease_s : RQ_DEFAULT_LEASE_S;
    timeout_s = opt->command_timeout_s > 0 ? opt->command_timeout_s : RQ_DEFAULT_TIMEOUT_S;
    ttl_s = opt->reserve_ttl_s > 0 ? opt->reserve_ttl_s : RQ_DEFAULT_RESERVE_TTL_S;
    snprintf(rq->lease_ms, sizeof(rq->lease_ms), "%lld", (long long)(lease_s * 1000.0 + 0.5));
    snprintf(rq->reserve_ttl_ms, sizeof(rq->reserve_ttl_ms), "%lld",
             (long long)(ttl_s * 1000.0 + 0.5));
    rq->timeout_ms = (uint64_t)(timeout_s * 1000.0 + 0.5);
    if (rq->timeout_ms == 0)
        rq->timeout_ms = 1;
    /* Check often enough that a timeout fires within ~10% of its length (at most 20 wakeups a
     * second, and only while commands are pending). */
    rq->tick_ms = rq->timeout_ms / 10;
    if (rq->tick_ms > 50)
        rq->tick_ms = 50;
    if (rq->tick_ms < 5)
        rq->tick_ms = 5;
    rq->backoff_ms = RQ_BACKOFF_MIN_MS;

    uv_timer_init(loop, &rq->tick);     /* cannot fail: only links the handle in */
    uv_timer_init(loop, &rq->retry);
    rq->tick.data = rq;
    rq->retry.data = rq;
    rq->gai.data = rq;

    rq_connect(rq);
    *out = rq;
    return BD_OK;

fail:
    rq_free(rq);
    return err;
}

void bd_rq_set_state_cb(struct bd_rq *rq, bd_rq_state_cb cb, void *arg)
{
    rq->state_cb = cb;
    rq->state_arg = arg;
}

bool bd_rq_is_up(const struct bd_rq *rq)
{
    return rq_is_usable(rq);
}

/* One of the close steps is done; the last one frees rq and calls the close callback. */
static void rq_close_unref(struct bd_rq *rq)
{
    bd_rq_done_cb cb;
    void *arg;

    if (--rq->pending_closes > 0)
        return;
    cb = rq->close_cb;
    arg = rq->close_arg;
    rq_free(rq);
    if (cb != NULL)
        cb(BD_OK, arg);
}

static void rq_on_handle_closed(uv_handle_t *handle)
{
    rq_close_unref(handle->data);
}

/* Runs from the loop (a zero timeout on tick), so never inside a hiredis callback. */
static void rq_on_close_step(uv_timer_t *timer)
{
    struct bd_rq *rq = timer->data;

    uv_timer_stop(&rq->retry);
    rq_drop(rq);                    /* pending callbacks run now, with BD_ECANCELED */
    assert(rq->pending_head == NULL);
    rq->pending_closes = 2;
    if (rq->is_resolving) {
        /* The getaddrinfo callback runs either way (UV_ECANCELED when the cancel worked)
         * and counts itself out. */
        rq->pending_closes++;
        uv_cancel((uv_req_t *)&rq->gai);
    }
    uv_close((uv_handle_t *)&rq->tick, rq_on_handle_closed);
    uv_close((uv_handle_t *)&rq->retry, rq_on_handle_closed);
}

void bd_rq_close(struct bd_rq *rq, bd_rq_done_cb cb, void *arg)
{
    assert(!rq->is_closing);
    rq->is_closing = true;
    rq->close_cb = cb;
    rq->close_arg = arg;
    /* Deferred: we may be inside a hiredis callback, where redisAsyncFree is not allowed
     * and where the caller expects its callback later anyway. */
    uv_timer_start(&rq->tick, rq_on_close_step, 0, 0);
}
