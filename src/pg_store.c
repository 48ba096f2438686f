/* pg_store.c -- the PostgreSQL pool: nonblocking libpq connections watched by uv_poll,
 * async queries, COPY IN, pipelines, schema migrations and a binary COPY encoder.
 *
 * Owns the PGconn of every pooled connection, its uv_poll and uv_timer, the FIFO of
 * bd_pg_acquire waiters and the PGresults of operations in flight. Loop thread only.
 * Never blocks: no PQexec, PQconnectdb, PQcancel or PQreset; host names are resolved with
 * uv_getaddrinfo and handed to libpq as hostaddr, so libpq never calls getaddrinfo itself.
 * Knows nothing of jobs or HTTP.  SPDX-License-Identifier: MIT
 */
#include "batchd/pg_store.h"
#include "batchd/error.h"
#include "batchd/log.h"

#include <arpa/inet.h>
#include <assert.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PG_BACKOFF_MIN_MS 100
#define PG_BACKOFF_MAX_MS 5000
#define PG_CONNECT_TIMEOUT_MS 10000   /* libpq's connect_timeout only works when it blocks */
#define PG_COPY_CHUNK (64 * 1024)     /* bytes per PQputCopyData call */
#define PG_COPY_SLICE (1024 * 1024)   /* bytes fed per loop turn before yielding to others */
#define PG_MAX_ADDRS 8                /* resolved addresses handed to libpq, tried in order */
#define PG_MIGRATE_LOCK_KEY "7236281245920100001"   /* pg_advisory_xact_lock key (bigint) */

enum pg_conn_state {
    CONN_DOWN,        /* no PGconn; retry timer armed (or about to be) */
    CONN_RESOLVING,   /* uv_getaddrinfo in flight */
    CONN_CONNECTING,  /* PQconnectPoll in progress */
    CONN_SETUP,       /* connected; SET statements in flight */
    CONN_READY,       /* usable: free, leased, or rolling back */
    CONN_BROKEN,      /* lost while leased; reconnects when released */
    CONN_CLOSED       /* pool closing */
};

enum pg_op_kind { OP_NONE, OP_QUERY, OP_COPY, OP_PIPELINE, OP_SETUP, OP_ROLLBACK };
enum pg_copy_phase { COPY_WAIT, COPY_FEED, COPY_DONE };
enum pg_poll_state { POLL_NONE, POLL_OPEN, POLL_CLOSING };

struct pg_op {
    enum pg_op_kind kind;
    bd_pg_result_cb cb;
    void *arg;
    PGresult *last;                  /* last successful result */
    PGresult *err;                   /* first error result */
    enum pg_copy_phase copy_phase;
    const char *data;                /* COPY payload, borrowed until cb */
    size_t len;
    size_t off;
};

struct bd_pg_conn {
    struct bd_pg *pg;
    PGconn *pq;
    unsigned index;
    enum pg_conn_state state;
    bool is_leased;
    bool is_flushing;                /* PQflush returned 1: wait for writability */
    uv_poll_t poll;
    enum pg_poll_state poll_state;
    int poll_fd;                     /* the fd poll was initialised with */
    int poll_events;                 /* events poll is started with */
    int want_events;                 /* what to watch once poll is reopened */
    uv_timer_t timer;                /* reconnect backoff, and connect timeout */
    uint64_t backoff_ms;
    uv_getaddrinfo_t gai;
    bool is_resolving;
    struct pg_op op;
    char errbuf[256];
};

struct pg_waiter {
    struct pg_waiter *next;
    uint64_t deadline;               /* uv_now() ms; UINT64_MAX = wait forever */
    bd_pg_conn_cb cb;
    void *arg;
};

struct bd_pg {
    uv_loop_t *loop;
    char *conninfo;
    char *resolve_host;              /* host to resolve ourselves, or NULL */
    char url_log[256];               /* conninfo with the password redacted */
    unsigned pool_size;
    uint64_t acquire_timeout_ms;     /* 0 = wait forever */
    uint64_t statement_timeout_ms;   /* 0 = server default */
    bool is_async_commit;            /* SET synchronous_commit = off on each connection */
    struct bd_pg_conn *conns;
    struct pg_waiter *wait_head;
    struct pg_waiter *wait_tail;
    unsigned waiting;
    unsigned connected;
    unsigned leased;
    uv_timer_t dispatch_timer;       /* zero timer: hands free connections to waiters */
    uv_timer_t acquire_timer;        /* fires at the head waiter's deadline */
    unsigned pending_closes;
    unsigned pending_reqs;
    bool is_closing;
    bool is_close_started;
    bool is_down_logged;
    bool has_been_up;
    bd_pg_done_cb close_cb;
    void *close_arg;
};

static void conn_start(struct bd_pg_conn *conn);
static void conn_break(struct bd_pg_conn *conn, const char *why);
static void conn_read(struct bd_pg_conn *conn);
static void conn_on_poll(uv_poll_t *handle, int status, int events);
static void pool_maybe_free(struct bd_pg *pg);

/* ---- small helpers ----------------------------------------------------------------- */

/* Keep a one-line copy of an error text: trailing newline dropped, inner ones flattened. */
static void conn_set_error(struct bd_pg_conn *conn, const char *msg)
{
    char tmp[sizeof(conn->errbuf)];
    size_t n;

    snprintf(tmp, sizeof(tmp), "%s", msg != NULL && msg[0] != '\0' ? msg : "unknown error");
    n = strlen(tmp);
    while (n > 0 && (tmp[n - 1] == '\n' || tmp[n - 1] == ' '))
        tmp[--n] = '\0';
    for (size_t i = 0; i < n; i++)
        if (tmp[i] == '\n' || tmp[i] == '\t' || tmp[i] == '"')
            tmp[i] = tmp[i] == '"' ? '\'' : ' ';
    memcpy(conn->errbuf, tmp, n + 1);
}

static void pg_on_notice(void *arg, const char *message)
{
    struct bd_pg_conn *conn = arg;
    size_t n = strlen(message);

    while (n > 0 && message[n - 1] == '\n')
        n--;
    bd_log(BD_LOG_DEBUG, "pg", "conn=%u notice=\"%.*s\"", conn->index, (int)n, message);
}

static int conn_events(const struct bd_pg_conn *conn)
{
    bool feeding = conn->op.kind == OP_COPY && conn->op.copy_phase == COPY_FEED;

    return UV_READABLE | (conn->is_flushing || feeding ? UV_WRITABLE : 0);
}

/* ---- the poll handle ----------------------------------------------------------------- */

static void conn_on_poll_closed(uv_handle_t *handle)
{
    struct bd_pg_conn *conn = handle->data;
    struct bd_pg *pg = conn->pg;

    pg->pending_closes--;
    conn->poll_state = POLL_NONE;
    if (pg->is_closing) {
        pool_maybe_free(pg);
        return;
    }
    /* The socket changed while the old handle was closing: watch the new one now. */
    if (conn->pq != NULL && conn->want_events != 0) {
        int fd = PQsocket(conn->pq);
        int err = fd < 0 ? UV_EBADF : uv_poll_init(pg->loop, &conn->poll, fd);

        if (err == 0) {
            conn->poll.data = conn;
            conn->poll_fd = fd;
            conn->poll_state = POLL_OPEN;
            conn->poll_events = conn->want_events;
            err = uv_poll_start(&conn->poll, conn->want_events, conn_on_poll);
        }
        if (err < 0)
            conn_break(conn, uv_strerror(err));
    }
}

static void conn_poll_close(struct bd_pg_conn *conn)
{
    if (conn->poll_state != POLL_OPEN)
        return;
    uv_poll_stop(&conn->poll);
    uv_close((uv_handle_t *)&conn->poll, conn_on_poll_closed);
    conn->poll_state = POLL_CLOSING;
    conn->pg->pending_closes++;
}

/* Watch PQsocket for events. libpq may replace its socket while connecting (another host
 * or address, SSL or GSS fallback): a different fd means a new handle, so the old one is
 * closed and its close callback starts the new one. rearm forces the epoll registration to
 * be renewed even when the fd number is unchanged, because a socket closed and reopened
 * under the same number is a new file the kernel no longer watches for us. */
static int conn_watch(struct bd_pg_conn *conn, int events, bool rearm)
{
    int fd = PQsocket(conn->pq);
    int err;

    conn->want_events = events;
    if (fd < 0)
        return UV_EBADF;
    switch (conn->poll_state) {
    case POLL_CLOSING:
        return 0;
    case POLL_OPEN:
        if (conn->poll_fd != fd) {
            bd_log(BD_LOG_DEBUG, "pg", "conn=%u socket changed fd=%d->%d", conn->index,
                   conn->poll_fd, fd);
            conn_poll_close(conn);
            return 0;
        }
        if (rearm)
            uv_poll_stop(&conn->poll);
        else if (conn->poll_events == events && uv_is_active((uv_handle_t *)&conn->poll))
            return 0;
        break;
    case POLL_NONE:
        err = uv_poll_init(conn->pg->loop, &conn->poll, fd);
        if (err < 0)
            return err;
        conn->poll.data = conn;
        conn->poll_fd = fd;
        conn->poll_state = POLL_OPEN;
        break;
    }
    conn->poll_events = events;
    return uv_poll_start(&conn->poll, events, conn_on_poll);
}

/* ---- pool: waiters and dispatch ------------------------------------------------------ */

static struct bd_pg_conn *pool_free_conn(struct bd_pg *pg)
{
    for (unsigned i = 0; i < pg->pool_size; i++) {
        struct bd_pg_conn *c = &pg->conns[i];

        if (c->state == CONN_READY && !c->is_leased && c->op.kind == OP_NONE)
            return c;
    }
    return NULL;
}

static struct pg_waiter *pool_pop_waiter(struct bd_pg *pg)
{
    struct pg_waiter *w = pg->wait_head;

    if (w != NULL) {
        pg->wait_head = w->next;
        if (pg->wait_head == NULL)
            pg->wait_tail = NULL;
        pg->waiting--;
    }
    return w;
}

static void pool_on_acquire_timeout(uv_timer_t *timer);

/* Waiters share one timeout, so FIFO order is deadline order: one timer for the head. */
static void pool_arm_acquire_timer(struct bd_pg *pg)
{
    struct pg_waiter *w = pg->wait_head;
    uint64_t now = uv_now(pg->loop);

    if (w == NULL || w->deadline == UINT64_MAX) {
        uv_timer_stop(&pg->acquire_timer);
        return;
    }
    uv_timer_start(&pg->acquire_timer, pool_on_acquire_timeout,
                   w->deadline > now ? w->deadline - now : 0, 0);
}

static void pool_on_acquire_timeout(uv_timer_t *timer)
{
    struct bd_pg *pg = timer->data;
    uint64_t now = uv_now(pg->loop);

    while (!pg->is_closing && pg->wait_head != NULL && pg->wait_head->deadline <= now) {
        struct pg_waiter *w = pool_pop_waiter(pg);
        bd_pg_conn_cb cb = w->cb;
        void *arg = w->arg;

        free(w);
        cb(BD_EPG, NULL, arg);
    }
    if (!pg->is_closing)
        pool_arm_acquire_timer(pg);
}

static void pool_on_dispatch(uv_timer_t *timer)
{
    struct bd_pg *pg = timer->data;
    struct bd_pg_conn *conn;

    /* Callbacks may acquire, release or close the pool: re-read everything each turn. */
    while (!pg->is_closing && pg->wait_head != NULL && (conn = pool_free_conn(pg)) != NULL) {
        struct pg_waiter *w = pool_pop_waiter(pg);
        bd_pg_conn_cb cb = w->cb;
        void *arg = w->arg;

        free(w);
        conn->is_leased = true;
        pg->leased++;
        cb(BD_OK, conn, arg);
    }
    if (!pg->is_closing)
        pool_arm_acquire_timer(pg);
}

/* Match waiters with free connections on the next loop turn, never inside the caller. */
static void pool_kick(struct bd_pg *pg)
{
    if (!pg->is_closing && pg->wait_head != NULL)
        uv_timer_start(&pg->dispatch_timer, pool_on_dispatch, 0, 0);
}

/* ---- connection lifecycle ------------------------------------------------------------ */

static void conn_on_timer(uv_timer_t *timer)
{
    struct bd_pg_conn *conn = timer->data;

    switch (conn->state) {
    case CONN_DOWN:
        conn_start(conn);
        break;
    case CONN_CONNECTING:
    case CONN_SETUP:
        conn_break(conn, "connect timed out");
        break;
    default:
        break;
    }
}

static void conn_arm_retry(struct bd_pg_conn *conn)
{
    if (conn->pg->is_closing)
        return;
    uv_timer_start(&conn->timer, conn_on_timer, conn->backoff_ms, 0);
    conn->backoff_ms *= 2;
    if (conn->backoff_ms > PG_BACKOFF_MAX_MS)
        conn->backoff_ms = PG_BACKOFF_MAX_MS;
}

/* Finish the operation in flight: detach it first (its callback may start the next one on
 * this connection, release it or close the pool), deliver, then PQclear. */
static void conn_op_done(struct bd_pg_conn *conn, int status)
{
    struct pg_op op = conn->op;
    PGresult *res = NULL;

    memset(&conn->op, 0, sizeof(conn->op));
    if (conn->pq != NULL && status != BD_ECANCELED)
        res = status == BD_OK ? op.last : op.err;
    if (op.last != res)
        PQclear(op.last);
    if (op.err != res)
        PQclear(op.err);

    switch (op.kind) {
    case OP_SETUP:
        if (status == BD_OK) {
            struct bd_pg *pg = conn->pg;

            uv_timer_stop(&conn->timer);
            conn->state = CONN_READY;
            conn->backoff_ms = PG_BACKOFF_MIN_MS;
            pg->connected++;
            if (!pg->has_been_up || pg->is_down_logged)
                bd_log(BD_LOG_INFO, "pg", "postgres up url=%s conn=%u connected=%u/%u",
                       pg->url_log, conn->index, pg->connected, pg->pool_size);
            else
                bd_log(BD_LOG_DEBUG, "pg", "connection up conn=%u connected=%u/%u",
                       conn->index, pg->connected, pg->pool_size);
            pg->has_been_up = true;
            pg->is_down_logged = false;
            pool_kick(pg);
        } else if (conn->pq != NULL) {
            conn_break(conn, res != NULL ? PQresultErrorMessage(res) : NULL);
        }
        PQclear(res);
        break;
    case OP_ROLLBACK:
        if (status == BD_OK && PQtransactionStatus(conn->pq) == PQTRANS_IDLE)
            pool_kick(conn->pg);
        else if (conn->pq != NULL)
            conn_break(conn, "rollback on release failed");
        PQclear(res);
        break;
    case OP_QUERY:
    case OP_COPY:
    case OP_PIPELINE:
        op.cb(status, res, op.arg);
        PQclear(res);
        break;
    case OP_NONE:
        break;
    }
}

/* The connection is gone (or never came up): drop the PGconn, fail the operation in flight
 * with BD_EPG and no result, and reconnect with backoff -- unless a caller holds the lease,
 * in which case it stays CONN_BROKEN until bd_pg_release. */
static void conn_break(struct bd_pg_conn *conn, const char *why)
{
    struct bd_pg *pg = conn->pg;
    bool was_ready = conn->state == CONN_READY;

    conn_set_error(conn, why != NULL ? why
                         : conn->pq != NULL ? PQerrorMessage(conn->pq) : "connection lost");
    conn_poll_close(conn);
    conn->want_events = 0;
    if (conn->pq != NULL) {
        PQfinish(conn->pq);
        conn->pq = NULL;
    }
    conn->is_flushing = false;
    uv_timer_stop(&conn->timer);

    if (was_ready) {
        pg->connected--;
        if (!pg->is_down_logged)
            bd_log(BD_LOG_WARN, "pg", "postgres connection lost url=%s conn=%u connected=%u/%u "
                   "err=\"%s\"", pg->url_log, conn->index, pg->connected, pg->pool_size,
                   conn->errbuf);
        else
            bd_log(BD_LOG_DEBUG, "pg", "connection lost conn=%u err=\"%s\"", conn->index,
                   conn->errbuf);
        pg->is_down_logged = true;
    } else if (!pg->is_down_logged && pg->connected == 0) {
        bd_log(BD_LOG_WARN, "pg", "postgres unreachable url=%s err=\"%s\" (retrying)",
               pg->url_log, conn->errbuf);
        pg->is_down_logged = true;
    } else {
        bd_log(BD_LOG_DEBUG, "pg", "connect failed conn=%u err=\"%s\"", conn->index,
               conn->errbuf);
    }

    if (conn->is_leased) {
        conn->state = CONN_BROKEN;
    } else {
        conn->state = CONN_DOWN;
        conn_arm_retry(conn);
    }
    if (conn->op.kind != OP_NONE)
        conn_op_done(conn, BD_EPG);    /* last: the callback may release the lease */
}

static void conn_start_pq(struct bd_pg_conn *conn, const char *hosts, const char *addrs)
{
    struct bd_pg *pg = conn->pg;
    const char *kw[4] = { "dbname", NULL, NULL, NULL };
    const char *val[4] = { pg->conninfo, NULL, NULL, NULL };
    int err;

    /* Keywords after an expanded dbname override what the conninfo string said. */
    if (addrs != NULL) {
        kw[1] = "host";
        val[1] = hosts;
        kw[2] = "hostaddr";
        val[2] = addrs;
    }
    conn->pq = PQconnectStartParams(kw, val, 1);
    if (conn->pq == NULL) {
        conn_break(conn, "out of memory");
        return;
    }
    PQsetNoticeProcessor(conn->pq, pg_on_notice, conn);
    if (PQstatus(conn->pq) == CONNECTION_BAD) {
        conn_break(conn, NULL);
        return;
    }
    conn->state = CONN_CONNECTING;
    uv_timer_start(&conn->timer, conn_on_timer, PG_CONNECT_TIMEOUT_MS, 0);
    /* libpq: behave as if PQconnectPoll had just returned PGRES_POLLING_WRITING. */
    err = conn_watch(conn, UV_WRITABLE, true);
    if (err < 0)
        conn_break(conn, err == UV_EBADF ? NULL : uv_strerror(err));   /* NULL: libpq's text */
}

static void conn_on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct bd_pg_conn *conn = req->data;
    struct bd_pg *pg = conn->pg;
    char hosts[PG_MAX_ADDRS * 256];
    char addrs[PG_MAX_ADDRS * (INET6_ADDRSTRLEN + 1)];
    size_t hn = 0, an = 0;
    unsigned count = 0;

    conn->is_resolving = false;
    pg->pending_reqs--;
    if (pg->is_closing) {
        uv_freeaddrinfo(res);
        pool_maybe_free(pg);
        return;
    }
    if (status < 0) {
        char msg[192];

        snprintf(msg, sizeof(msg), "resolve %s: %s", pg->resolve_host, uv_strerror(status));
        conn_break(conn, msg);
        return;
    }
    /* Hand every address to libpq as a host list so it tries each in order, as it would
     * have done after its own (blocking) getaddrinfo. */
    hosts[0] = addrs[0] = '\0';
    for (struct addrinfo *ai = res; ai != NULL && count < PG_MAX_ADDRS; ai = ai->ai_next) {
        char ip[INET6_ADDRSTRLEN];
        int n;

        if (ai->ai_family == AF_INET)
            uv_ip4_name((const struct sockaddr_in *)ai->ai_addr, ip, sizeof(ip));
        else if (ai->ai_family == AF_INET6)
            uv_ip6_name((const struct sockaddr_in6 *)ai->ai_addr, ip, sizeof(ip));
        else
            continue;
        if (strstr(addrs, ip) != NULL)
            continue;                   /* getaddrinfo repeats addresses per socktype */
        n = snprintf(hosts + hn, sizeof(hosts) - hn, "%s%s", count ? "," : "", pg->resolve_host);
        if (n < 0 || (size_t)n >= sizeof(hosts) - hn)
            break;
        hn += (size_t)n;
        n = snprintf(addrs + an, sizeof(addrs) - an, "%s%s", count ? "," : "", ip);
        if (n < 0 || (size_t)n >= sizeof(addrs) - an)
            break;
        an += (size_t)n;
        count++;
    }
    uv_freeaddrinfo(res);
    if (count == 0) {
        conn_break(conn, "host name resolved to no usable address");
        return;
    }
    conn_start_pq(conn, hosts, addrs);
}

static void conn_start(struct bd_pg_conn *conn)
{
    struct bd_pg *pg = conn->pg;

    if (pg->resolve_host != NULL) {
        struct addrinfo hints;
        int err;

        memset(&hints, 0, sizeof(hints));
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        conn->gai.data = conn;
        err = uv_getaddrinfo(pg->loop, &conn->gai, conn_on_resolved, pg->resolve_host, NULL,
                             &hints);
        if (err < 0) {
            conn_break(conn, uv_strerror(err));
            return;
        }
        conn->is_resolving = true;
        conn->state = CONN_RESOLVING;
        pg->pending_reqs++;
        return;
    }
    conn_start_pq(conn, NULL, NULL);
}

/* Flush what libpq buffered and watch for what comes next. Returns < 0 when broken. */
static int conn_flush_watch(struct bd_pg_conn *conn)
{
    int r = PQflush(conn->pq);

    if (r < 0)
        return BD_EPG;
    conn->is_flushing = r == 1;
    return conn_watch(conn, conn_events(conn), false) < 0 ? BD_EPG : BD_OK;
}

static void conn_on_connected(struct bd_pg_conn *conn)
{
    struct bd_pg *pg = conn->pg;
    char sql[192];

    if (PQsetnonblocking(conn->pq, 1) != 0) {
        conn_break(conn, NULL);
        return;
    }
    snprintf(sql, sizeof(sql), "SET application_name = 'batchd'%s",
             pg->is_async_commit ? "; SET synchronous_commit = off" : "");
    if (pg->statement_timeout_ms > 0)
        snprintf(sql + strlen(sql), sizeof(sql) - strlen(sql), "; SET statement_timeout = %llu",
                 (unsigned long long)pg->statement_timeout_ms);
    if (!PQsendQuery(conn->pq, sql)) {
        conn_break(conn, NULL);
        return;
    }
    conn->state = CONN_SETUP;
    conn->op.kind = OP_SETUP;
    if (conn_flush_watch(conn) < 0)
        conn_break(conn, NULL);
}

static void conn_connect_step(struct bd_pg_conn *conn)
{
    int err;

    switch (PQconnectPoll(conn->pq)) {
    case PGRES_POLLING_READING:
        err = conn_watch(conn, UV_READABLE, true);
        break;
    case PGRES_POLLING_WRITING:
        err = conn_watch(conn, UV_WRITABLE, true);
        break;
    case PGRES_POLLING_OK:
        conn_on_connected(conn);
        return;
    default:
        conn_break(conn, NULL);
        return;
    }
    if (err < 0)
        conn_break(conn, err == UV_EBADF ? NULL : uv_strerror(err));
}

/* ---- connection I/O ------------------------------------------------------------------ */

/* All results are in: deliver the last good one, or the first error. */
static void conn_op_complete(struct bd_pg_conn *conn)
{
    if (PQstatus(conn->pq) == CONNECTION_BAD) {
        conn_break(conn, NULL);
        return;
    }
    if (conn_watch(conn, conn_events(conn), false) < 0) {
        conn_break(conn, "poll failed");
        return;
    }
    conn_op_done(conn, conn->op.err != NULL ? BD_EPG : BD_OK);
}

/* Feed the COPY payload while the socket takes it. PQputCopyData only refuses data when
 * libpq cannot grow its buffer, so the pacing comes from PQflush: once it reports data
 * left over, stop and wait for writability; otherwise libpq would buffer the whole payload.
 * Each turn feeds at most PG_COPY_SLICE bytes so one large COPY cannot starve the loop. */
static void copy_feed(struct bd_pg_conn *conn)
{
    struct pg_op *op = &conn->op;
    size_t budget = PG_COPY_SLICE;
    int r;

    while (op->copy_phase == COPY_FEED) {
        if (op->off < op->len) {
            size_t n = op->len - op->off;

            if (budget == 0)
                goto wait;              /* writable again next turn; others run first */
            if (n > PG_COPY_CHUNK)
                n = PG_COPY_CHUNK;
            if (n > budget)
                n = budget;
            r = PQputCopyData(conn->pq, op->data + op->off, (int)n);
            if (r < 0)
                goto broken;
            if (r == 0) {
                conn->is_flushing = true;
                goto wait;
            }
            op->off += n;
            budget -= n;
        } else {
            r = PQputCopyEnd(conn->pq, NULL);
            if (r < 0)
                goto broken;
            if (r == 0) {
                conn->is_flushing = true;
                goto wait;
            }
            op->copy_phase = COPY_DONE;
        }
        r = PQflush(conn->pq);
        if (r < 0)
            goto broken;
        conn->is_flushing = r == 1;
        if (r == 1)
            goto wait;
    }
    conn_read(conn);
    return;

wait:
    if (conn_watch(conn, conn_events(conn), false) < 0)
        conn_break(conn, "poll failed");
    return;
broken:
    conn_break(conn, NULL);
}

static void conn_read(struct bd_pg_conn *conn)
{
    PGconn *pq = conn->pq;
    struct pg_op *op = &conn->op;
    unsigned nulls = 0;
    int r;

    while (!PQisBusy(pq)) {
        PGresult *res = PQgetResult(pq);

        if (res == NULL) {
            /* In pipeline mode NULL only ends one statement; the Sync result ends ours. */
            if (op->kind != OP_PIPELINE) {
                conn_op_complete(conn);
                return;
            }
            if (++nulls > 1) {
                conn_break(conn, "pipeline out of step");
                return;
            }
            continue;
        }
        nulls = 0;
        switch (PQresultStatus(res)) {
        case PGRES_COPY_IN:
            PQclear(res);
            if (op->kind == OP_COPY && op->copy_phase == COPY_WAIT) {
                op->copy_phase = COPY_FEED;
                copy_feed(conn);
                return;
            }
            /* A COPY FROM STDIN nobody asked to feed: refuse it; the server answers with
             * an error result for the statement. */
            if (PQputCopyEnd(pq, "batchd: unexpected COPY FROM STDIN") < 0 ||
                (r = PQflush(pq)) < 0) {
                conn_break(conn, NULL);
                return;
            }
            conn->is_flushing = r == 1;
            break;
        case PGRES_COPY_OUT:
        case PGRES_COPY_BOTH:
            PQclear(res);
            conn_break(conn, "unexpected COPY TO STDOUT");
            return;
        case PGRES_PIPELINE_SYNC:
            PQclear(res);
            if (!PQexitPipelineMode(pq)) {
                conn_break(conn, NULL);
                return;
            }
            conn_op_complete(conn);
            return;
        case PGRES_PIPELINE_ABORTED:
            PQclear(res);
            break;
        case PGRES_FATAL_ERROR:
        case PGRES_BAD_RESPONSE:
        case PGRES_NONFATAL_ERROR:
            if (op->err == NULL)
                op->err = res;
            else
                PQclear(res);
            break;
        default:
            if (op->err != NULL) {
                PQclear(res);
            } else {
                PQclear(op->last);
                op->last = res;
            }
            break;
        }
    }
    if (PQstatus(pq) == CONNECTION_BAD) {
        conn_break(conn, NULL);
        return;
    }
    if (conn_watch(conn, conn_events(conn), false) < 0)
        conn_break(conn, "poll failed");
}

static void conn_on_poll(uv_poll_t *handle, int status, int events)
{
    struct bd_pg_conn *conn = handle->data;
    PGnotify *notify;
    int r;

    if (conn->pq == NULL)
        return;                                     /* stale event after a break */
    if (status < 0) {
        /* libuv reports EPOLLERR as UV_EBADF and stops the handle. The socket has a
         * pending error: let libpq read it, for the real message (and, while connecting,
         * to move on to the next address). */
        if (conn->state == CONN_CONNECTING)
            conn_connect_step(conn);
        else
            conn_break(conn, PQconsumeInput(conn->pq) ? uv_strerror(status) : NULL);
        return;
    }
    if (conn->state == CONN_CONNECTING) {
        conn_connect_step(conn);
        return;
    }
    /* libpq: when flushing, read-ready means PQconsumeInput and then PQflush again. */
    if ((events & UV_READABLE) && !PQconsumeInput(conn->pq)) {
        conn_break(conn, NULL);
        return;
    }
    if (conn->is_flushing) {
        r = PQflush(conn->pq);
        if (r < 0) {
            conn_break(conn, NULL);
            return;
        }
        conn->is_flushing = r == 1;
    }
    switch (conn->op.kind) {
    case OP_NONE:
        while ((notify = PQnotifies(conn->pq)) != NULL)
            PQfreemem(notify);
        if (PQstatus(conn->pq) == CONNECTION_BAD) {
            conn_break(conn, NULL);
            return;
        }
        break;
    case OP_COPY:
        if (conn->op.copy_phase == COPY_FEED) {
            if (!conn->is_flushing) {
                copy_feed(conn);
                return;
            }
            break;
        }
        conn_read(conn);
        return;
    default:
        conn_read(conn);
        return;
    }
    if (conn_watch(conn, conn_events(conn), false) < 0)
        conn_break(conn, "poll failed");
}

/* ---- pool lifecycle ------------------------------------------------------------------ */

static void pool_on_handle_closed(uv_handle_t *handle)
{
    struct bd_pg *pg = handle->data;

    pg->pending_closes--;
    pool_maybe_free(pg);
}

static void conn_on_timer_closed(uv_handle_t *handle)
{
    struct bd_pg_conn *conn = handle->data;

    conn->pg->pending_closes--;
    pool_maybe_free(conn->pg);
}

static void pool_maybe_free(struct bd_pg *pg)
{
    bd_pg_done_cb cb;
    void *arg;

    if (!pg->is_close_started || pg->pending_closes > 0 || pg->pending_reqs > 0 ||
        pg->leased > 0)
        return;
    cb = pg->close_cb;
    arg = pg->close_arg;
    free(pg->conns);
    free(pg->conninfo);
    free(pg->resolve_host);
    free(pg);
    if (cb != NULL)
        cb(BD_OK, arg);
}

int bd_pg_new(uv_loop_t *loop, const struct bd_pg_options *opt, struct bd_pg **out)
{
    struct bd_pg *pg;
    PQconninfoOption *ci;
    char *errmsg = NULL;
    int err = BD_ENOMEM;

    if (loop == NULL || opt == NULL || opt->conninfo == NULL || opt->pool_size == 0 ||
        out == NULL || !(opt->acquire_timeout_s >= 0) || !(opt->statement_timeout_s >= 0))
        return BD_EINVAL;
    ci = PQconninfoParse(opt->conninfo, &errmsg);
    if (ci == NULL) {
        if (errmsg == NULL)
            return BD_ENOMEM;
        PQfreemem(errmsg);
        return BD_EINVAL;
    }

    pg = calloc(1, sizeof(*pg));
    if (pg == NULL)
        goto fail_pg;
    pg->loop = loop;
    pg->pool_size = opt->pool_size;
    pg->acquire_timeout_ms = (uint64_t)(opt->acquire_timeout_s * 1000.0 + 0.5);
    pg->statement_timeout_ms = (uint64_t)(opt->statement_timeout_s * 1000.0 + 0.5);
    pg->is_async_commit = opt->is_async_commit;
    if (opt->statement_timeout_s > 0 && pg->statement_timeout_ms == 0)
        pg->statement_timeout_ms = 1;
    if (opt->acquire_timeout_s > 0 && pg->acquire_timeout_ms == 0)
        pg->acquire_timeout_ms = 1;
    bd_log_redact_url(opt->conninfo, pg->url_log, sizeof(pg->url_log));
    pg->conninfo = strdup(opt->conninfo);
    if (pg->conninfo == NULL)
        goto fail_conninfo;

    /* A host name (not an address, a socket directory or a list) is resolved here with
     * uv_getaddrinfo: libpq would otherwise call getaddrinfo inside PQconnectPoll. */
    for (PQconninfoOption *o = ci; o->keyword != NULL; o++) {
        if (strcmp(o->keyword, "hostaddr") == 0 && o->val != NULL && o->val[0] != '\0') {
            free(pg->resolve_host);
            pg->resolve_host = NULL;
            break;
        }
        if (strcmp(o->keyword, "host") == 0 && o->val != NULL && o->val[0] != '\0' &&
            o->val[0] != '/' && o->val[0] != '@' && strchr(o->val, ',') == NULL) {
            unsigned char buf[sizeof(struct in6_addr)];

            if (inet_pton(AF_INET, o->val, buf) != 1 && inet_pton(AF_INET6, o->val, buf) != 1) {
                pg->resolve_host = strdup(o->val);
                if (pg->resolve_host == NULL)
                    goto fail_conns;
            }
        }
    }
    pg->conns = calloc(pg->pool_size, sizeof(*pg->conns));
    if (pg->conns == NULL)
        goto fail_conns;
    PQconninfoFree(ci);

    uv_timer_init(loop, &pg->dispatch_timer);
    uv_timer_init(loop, &pg->acquire_timer);
    pg->dispatch_timer.data = pg;
    pg->acquire_timer.data = pg;
    for (unsigned i = 0; i < pg->pool_size; i++) {
        struct bd_pg_conn *conn = &pg->conns[i];

        conn->pg = pg;
        conn->index = i;
        conn->state = CONN_DOWN;
        conn->poll_fd = -1;
        conn->backoff_ms = PG_BACKOFF_MIN_MS;
        uv_timer_init(loop, &conn->timer);
        conn->timer.data = conn;
    }
    for (unsigned i = 0; i < pg->pool_size; i++)
        conn_start(&pg->conns[i]);
    *out = pg;
    return BD_OK;

fail_conns:
    free(pg->resolve_host);
    free(pg->conninfo);
fail_conninfo:
    free(pg);
fail_pg:
    PQconninfoFree(ci);
    return err;
}

/* Close one connection for good; the operation in flight, if any, is returned detached so
 * the caller can cancel it once the connection is in a consistent state. */
static struct pg_op conn_shutdown(struct bd_pg_conn *conn)
{
    struct bd_pg *pg = conn->pg;
    struct pg_op op = conn->op;

    memset(&conn->op, 0, sizeof(conn->op));
    PQclear(op.last);
    PQclear(op.err);
    op.last = op.err = NULL;
    conn_poll_close(conn);
    conn->want_events = 0;
    if (conn->pq != NULL) {
        PQfinish(conn->pq);
        conn->pq = NULL;
    }
    if (conn->state == CONN_READY)
        pg->connected--;
    conn->state = CONN_CLOSED;
    if (conn->is_resolving)
        uv_cancel((uv_req_t *)&conn->gai);   /* failing is fine: its callback still comes */
    uv_timer_stop(&conn->timer);
    return op;
}

void bd_pg_close(struct bd_pg *pg, bd_pg_done_cb cb, void *arg)
{
    struct pg_waiter *w;

    assert(!pg->is_closing);
    if (pg->is_closing)
        return;
    pg->is_closing = true;
    pg->close_cb = cb;
    pg->close_arg = arg;
    uv_timer_stop(&pg->dispatch_timer);
    uv_timer_stop(&pg->acquire_timer);

    /* Callbacks below may call back into the pool; every entry point checks is_closing. */
    while ((w = pool_pop_waiter(pg)) != NULL) {
        bd_pg_conn_cb wcb = w->cb;
        void *warg = w->arg;

        free(w);
        wcb(BD_ECANCELED, NULL, warg);
    }
    for (unsigned i = 0; i < pg->pool_size; i++) {
        struct pg_op op = conn_shutdown(&pg->conns[i]);

        if (op.kind == OP_QUERY || op.kind == OP_COPY || op.kind == OP_PIPELINE)
            op.cb(BD_ECANCELED, NULL, op.arg);
    }
    for (unsigned i = 0; i < pg->pool_size; i++) {
        uv_close((uv_handle_t *)&pg->conns[i].timer, conn_on_timer_closed);
        pg->pending_closes++;
    }
    uv_close((uv_handle_t *)&pg->dispatch_timer, pool_on_handle_closed);
    uv_close((uv_handle_t *)&pg->acquire_timer, pool_on_handle_closed);
    pg->pending_closes += 2;
    pg->is_close_started = true;
    if (pg->connected == 0 && pg->has_been_up)
        bd_log(BD_LOG_DEBUG, "pg", "pool closed url=%s", pg->url_log);
}

bool bd_pg_is_up(const struct bd_pg *pg)
{
    return pg->connected > 0;
}

unsigned bd_pg_get_connected(const struct bd_pg *pg)
{
    return pg->connected;
}

unsigned bd_pg_get_pool_size(const struct bd_pg *pg)
{
    return pg->pool_size;
}

unsigned bd_pg_get_waiting(const struct bd_pg *pg)
{
    return pg->waiting;
}

int bd_pg_acquire(struct bd_pg *pg, bd_pg_conn_cb cb, void *arg)
{
    struct pg_waiter *w;

    if (pg == NULL || cb == NULL)
        return BD_EINVAL;
    if (pg->is_closing)
        return BD_ECANCELED;
    w = malloc(sizeof(*w));
    if (w == NULL)
        return BD_ENOMEM;
    w->next = NULL;
    w->cb = cb;
    w->arg = arg;
    w->deadline = pg->acquire_timeout_ms > 0 ? uv_now(pg->loop) + pg->acquire_timeout_ms
                                             : UINT64_MAX;
    if (pg->wait_tail != NULL)
        pg->wait_tail->next = w;
    else
        pg->wait_head = w;
    pg->wait_tail = w;
    pg->waiting++;
    if (pg->wait_head == w)
        pool_arm_acquire_timer(pg);
    if (pool_free_conn(pg) != NULL)
        pool_kick(pg);
    return BD_OK;
}

void bd_pg_release(struct bd_pg_conn *conn)
{
    struct bd_pg *pg = conn->pg;

    assert(conn->is_leased);
    assert(conn->op.kind == OP_NONE);
    if (!conn->is_leased)
        return;
    conn->is_leased = false;
    pg->leased--;
    if (pg->is_closing) {
        pool_maybe_free(pg);
        return;
    }
    if (conn->state == CONN_BROKEN) {
        conn->state = CONN_DOWN;
        conn_arm_retry(conn);
        return;
    }
    if (conn->state != CONN_READY)
        return;
    switch (PQtransactionStatus(conn->pq)) {
    case PQTRANS_IDLE:
        pool_kick(pg);
        return;
    case PQTRANS_INTRANS:
    case PQTRANS_INERROR:
        /* Roll back before anyone else gets the connection; it stays out of the free list
         * (op in flight) until the ROLLBACK's result arrives. */
        if (!PQsendQuery(conn->pq, "ROLLBACK")) {
            conn_break(conn, NULL);
            return;
        }
        conn->op.kind = OP_ROLLBACK;
        if (conn_flush_watch(conn) < 0) {
            memset(&conn->op, 0, sizeof(conn->op));
            conn_break(conn, NULL);
        }
        return;
    default:
        conn_break(conn, "released with a statement still running");
        return;
    }
}

/* ---- operations on a leased connection ------------------------------------------------ */

static int conn_check_usable(struct bd_pg_conn *conn, const void *cb)
{
    if (conn == NULL || cb == NULL)
        return BD_EINVAL;
    if (conn->pg->is_closing)
        return BD_ECANCELED;
    if (!conn->is_leased || conn->op.kind != OP_NONE)
        return BD_EINVAL;
    if (conn->state != CONN_READY)
        return BD_EPG;
    return BD_OK;
}

/* libpq refused to queue a statement: if the connection died, mark it broken. No operation
 * is attached yet, so nobody is called back. */
static int conn_send_failed(struct bd_pg_conn *conn)
{
    if (PQstatus(conn->pq) == CONNECTION_BAD)
        conn_break(conn, NULL);
    else
        conn_set_error(conn, PQerrorMessage(conn->pq));
    return BD_EPG;
}

static int conn_op_begin(struct bd_pg_conn *conn, enum pg_op_kind kind, bd_pg_result_cb cb,
                         void *arg)
{
    conn->op.kind = kind;
    conn->op.cb = cb;
    conn->op.arg = arg;
    if (conn_flush_watch(conn) < 0) {
        memset(&conn->op, 0, sizeof(conn->op));   /* we return an error: no callback */
        conn_break(conn, NULL);
        return BD_EPG;
    }
    return BD_OK;
}

int bd_pg_conn_query(struct bd_pg_conn *conn, const char *sql, int nparams,
                     const char *const *values, const int *lengths, const int *formats,
                     int result_binary, bd_pg_result_cb cb, void *arg)
{
    int err = conn_check_usable(conn, (const void *)cb);
    int ok;

    if (err < 0)
        return err;
    if (sql == NULL || nparams < 0 || (nparams > 0 && values == NULL))
        return BD_EINVAL;
    if (nparams == 0 && !result_binary)
        ok = PQsendQuery(conn->pq, sql);
    else
        ok = PQsendQueryParams(conn->pq, sql, nparams, NULL, values, lengths, formats,
                               result_binary ? 1 : 0);
    if (!ok)
        return conn_send_failed(conn);
    return conn_op_begin(conn, OP_QUERY, cb, arg);
}

int bd_pg_conn_copy_in(struct bd_pg_conn *conn, const char *copy_sql, const char *data,
                       size_t len, bd_pg_result_cb cb, void *arg)
{
    int err = conn_check_usable(conn, (const void *)cb);

    if (err < 0)
        return err;
    if (copy_sql == NULL || (data == NULL && len > 0))
        return BD_EINVAL;
    if (!PQsendQuery(conn->pq, copy_sql))
        return conn_send_failed(conn);
    conn->op.copy_phase = COPY_WAIT;
    conn->op.data = data;
    conn->op.len = len;
    conn->op.off = 0;
    return conn_op_begin(conn, OP_COPY, cb, arg);
}

int bd_pg_conn_pipeline(struct bd_pg_conn *conn, unsigned count, const char *const *sqls,
                        const int *nparams, const char *const *const *params,
                        bd_pg_result_cb cb, void *arg)
{
    int err = conn_check_usable(conn, (const void *)cb);

    if (err < 0)
        return err;
    if (count == 0 || sqls == NULL)
        return BD_EINVAL;
    for (unsigned i = 0; i < count; i++) {
        int np = nparams != NULL ? nparams[i] : 0;

        if (sqls[i] == NULL || np < 0 || (np > 0 && (params == NULL || params[i] == NULL)))
            return BD_EINVAL;
    }
    if (!PQenterPipelineMode(conn->pq))
        return conn_send_failed(conn);
    for (unsigned i = 0; i < count; i++) {
        int np = nparams != NULL ? nparams[i] : 0;

        if (!PQsendQueryParams(conn->pq, sqls[i], np, NULL, np > 0 ? params[i] : NULL,
                               NULL, NULL, 0))
            goto broken;
    }
    if (!PQpipelineSync(conn->pq))
        goto broken;
    return conn_op_begin(conn, OP_PIPELINE, cb, arg);

broken:
    /* Part of the pipeline is queued and cannot be taken back: start over on a new
     * connection rather than guess what the server will make of it. */
    conn_break(conn, NULL);
    return BD_EPG;
}

const char *bd_pg_conn_get_error(struct bd_pg_conn *conn)
{
    if (conn->pq != NULL)
        conn_set_error(conn, PQerrorMessage(conn->pq));
    return conn->errbuf;
}

int bd_pg_conn_get_backend_pid(const struct bd_pg_conn *conn)
{
    return conn->pq != NULL && conn->state == CONN_READY ? PQbackendPID(conn->pq) : 0;
}

/* ---- bd_pg_query: acquire, query, release ----------------------------------------------- */

struct pg_query_rec {
    struct bd_pg_conn *conn;
    bd_pg_result_cb cb;
    void *arg;
    const char *sql;
    int nparams;
    int result_binary;
    const char **values;
    int *lengths;
    int *formats;
    /* values, lengths, formats, then the bytes of sql and every value follow */
};

static void query_on_result(int status, PGresult *res, void *arg)
{
    struct pg_query_rec *rec = arg;

    rec->cb(status, res, rec->arg);
    bd_pg_release(rec->conn);
    free(rec);
}

static void query_on_conn(int status, struct bd_pg_conn *conn, void *arg)
{
    struct pg_query_rec *rec = arg;
    int err;

    if (status < 0) {
        rec->cb(status, NULL, rec->arg);
        free(rec);
        return;
    }
    rec->conn = conn;
    err = bd_pg_conn_query(conn, rec->sql, rec->nparams, rec->values, rec->lengths,
                           rec->formats, rec->result_binary, query_on_result, rec);
    if (err < 0) {
        bd_pg_release(conn);
        rec->cb(err, NULL, rec->arg);
        free(rec);
    }
}

int bd_pg_query(struct bd_pg *pg, const char *sql, int nparams, const char *const *values,
                const int *lengths, const int *formats, int result_binary,
                bd_pg_result_cb cb, void *arg)
{
    struct pg_query_rec *rec;
    size_t n = (size_t)(nparams > 0 ? nparams : 0);
    size_t size, sql_len;
    char *p;
    int err;

    if (pg == NULL || sql == NULL || cb == NULL || nparams < 0 || (nparams > 0 && values == NULL))
        return BD_EINVAL;
    if (pg->is_closing)
        return BD_ECANCELED;
    /* The acquire is asynchronous but the parameters are borrowed only for this call:
     * copy them all into one block. */
    sql_len = strlen(sql) + 1;
    size = sizeof(*rec) + n * (sizeof(char *) + 2 * sizeof(int)) + sql_len;
    for (size_t i = 0; i < n; i++) {
        if (values[i] == NULL)
            continue;
        if (formats != NULL && formats[i] != 0) {
            if (lengths == NULL || lengths[i] < 0)
                return BD_EINVAL;
            size += (size_t)lengths[i];
        } else {
            size += strlen(values[i]) + 1;
        }
    }
    rec = malloc(size);
    if (rec == NULL)
        return BD_ENOMEM;
    memset(rec, 0, sizeof(*rec));
    rec->cb = cb;
    rec->arg = arg;
    rec->nparams = nparams;
    rec->result_binary = result_binary;
    rec->values = (const char **)(rec + 1);
    rec->lengths = (int *)(rec->values + n);
    rec->formats = rec->lengths + n;
    p = (char *)(rec->formats + n);
    memcpy(p, sql, sql_len);
    rec->sql = p;
    p += sql_len;
    for (size_t i = 0; i < n; i++) {
        size_t len;

        rec->formats[i] = formats != NULL ? formats[i] : 0;
        rec->lengths[i] = lengths != NULL ? lengths[i] : 0;
        if (values[i] == NULL) {
            rec->values[i] = NULL;
            continue;
        }
        len = rec->formats[i] != 0 ? (size_t)lengths[i] : strlen(values[i]) + 1;
        memcpy(p, values[i], len);
        rec->values[i] = p;
        p += len;
    }
    if (n == 0) {
        rec->values = NULL;
        rec->lengths = NULL;
        rec->formats = NULL;
    }
    err = bd_pg_acquire(pg, query_on_conn, rec);
    if (err < 0)
        free(rec);
    return err;
}

/* ---- migrations ------------------------------------------------------------------------ */

enum pg_mig_step { MIG_CHECK, MIG_APPLY, MIG_RECORD, MIG_COMMIT };

struct pg_migrate {
    struct bd_pg_conn *conn;
    bd_pg_done_cb cb;
    void *arg;
    unsigned index;
    enum pg_mig_step step;
};

static void migrate_on_result(int status, PGresult *res, void *arg);

static void migrate_finish(struct pg_migrate *m, int status)
{
    bd_pg_done_cb cb = m->cb;
    void *arg = m->arg;

    if (m->conn != NULL)
        bd_pg_release(m->conn);      /* rolls back a failed migration */
    free(m);
    cb(status, arg);
}

static void migrate_send(struct pg_migrate *m, enum pg_mig_step step, const char *sql,
                         int nparams, const char *const *values)
{
    int err;

    m->step = step;
    err = bd_pg_conn_query(m->conn, sql, nparams, values, NULL, NULL, 0, migrate_on_result, m);
    if (err < 0)
        migrate_finish(m, err);
}

/* Each migration: BEGIN, take the advisory lock (held to COMMIT, so a second process
 * waits here and then sees the version recorded), make sure schema_migrations exists,
 * look the version up; then apply and record it, or just commit. */
static void migrate_next(struct pg_migrate *m)
{
    char sql[768];

    if (m->index >= bd__pg_migrations_count) {
        migrate_finish(m, BD_OK);
        return;
    }
    snprintf(sql, sizeof(sql),
             "BEGIN; SELECT pg_advisory_xact_lock(" PG_MIGRATE_LOCK_KEY ");"
             " CREATE TABLE IF NOT EXISTS schema_migrations (version int PRIMARY KEY,"
             " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());"
             " SELECT count(*) FROM schema_migrations WHERE version = %d",
             bd__pg_migrations[m->index].version);
    migrate_send(m, MIG_CHECK, sql, 0, NULL);
}

static void migrate_on_result(int status, PGresult *res, void *arg)
{
    struct pg_migrate *m = arg;
    const struct bd__pg_migration *mig = &bd__pg_migrations[m->index];
    char version[16];
    const char *values[2];

    if (status < 0) {
        /* Only this function has the server's message, so it is logged here. */
        bd_log(BD_LOG_ERROR, "pg", "migration failed version=%d name=%s step=%d err=\"%s\"",
               mig->version, mig->name, (int)m->step,
               res != NULL ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY)
                           : bd_strerror(status));
        migrate_finish(m, status);
        return;
    }
    switch (m->step) {
    case MIG_CHECK:
        if (PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "0") != 0) {
            migrate_send(m, MIG_COMMIT, "COMMIT", 0, NULL);
            return;
        }
        migrate_send(m, MIG_APPLY, mig->sql, 0, NULL);
        return;
    case MIG_APPLY:
        snprintf(version, sizeof(version), "%d", mig->version);
        values[0] = version;
        values[1] = mig->name;
        migrate_send(m, MIG_RECORD,
                     "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", 2, values);
        return;
    case MIG_RECORD:
        bd_log(BD_LOG_INFO, "pg", "migration applied version=%d name=%s", mig->version,
               mig->name);
        migrate_send(m, MIG_COMMIT, "COMMIT", 0, NULL);
        return;
    case MIG_COMMIT:
        m->index++;
        migrate_next(m);
        return;
    }
}

static void migrate_on_conn(int status, struct bd_pg_conn *conn, void *arg)
{
    struct pg_migrate *m = arg;

    if (status < 0) {
        migrate_finish(m, status);
        return;
    }
    m->conn = conn;
    migrate_next(m);
}

int bd_pg_migrate(struct bd_pg *pg, bd_pg_done_cb cb, void *arg)
{
    struct pg_migrate *m;
    int err;

    if (pg == NULL || cb == NULL)
        return BD_EINVAL;
    m = calloc(1, sizeof(*m));
    if (m == NULL)
        return BD_ENOMEM;
    m->cb = cb;
    m->arg = arg;
    err = bd_pg_acquire(pg, migrate_on_conn, m);
    if (err < 0)
        free(m);
    return err;
}

/* ---- binary COPY encoder ---------------------------------------------------------------- */

static const char pg_copy_signature[11] = { 'P', 'G', 'C', 'O', 'P', 'Y', '\n', '\377', '\r',
                                            '\n', '\0' };

static int copybuf_grow(struct bd_pg_copybuf *b, size_t extra)
{
    size_t cap;
    char *data;

    if (b->err < 0)
        return b->err;
    if (b->cap - b->len >= extra)
        return BD_OK;
    cap = b->cap > 0 ? b->cap : 4096;
    while (cap - b->len < extra) {
        if (cap > SIZE_MAX / 2) {
            b->err = BD_ENOMEM;
            return b->err;
        }
        cap *= 2;
    }
    data = realloc(b->data, cap);
    if (data == NULL) {
        b->err = BD_ENOMEM;
        return b->err;
    }
    b->data = data;
    b->cap = cap;
    return BD_OK;
}

static void copybuf_put16(struct bd_pg_copybuf *b, uint16_t v)
{
    uint16_t n = htons(v);

    memcpy(b->data + b->len, &n, 2);
    b->len += 2;
}

static void copybuf_put32(struct bd_pg_copybuf *b, uint32_t v)
{
    uint32_t n = htonl(v);

    memcpy(b->data + b->len, &n, 4);
    b->len += 4;
}

static void copybuf_put64(struct bd_pg_copybuf *b, uint64_t v)
{
    copybuf_put32(b, (uint32_t)(v >> 32));
    copybuf_put32(b, (uint32_t)v);
}

void bd_pg_copybuf_init(struct bd_pg_copybuf *b)
{
    memset(b, 0, sizeof(*b));
}

void bd_pg_copybuf_reset(struct bd_pg_copybuf *b)
{
    b->len = 0;
    b->err = BD_OK;
}

void bd_pg_copybuf_free(struct bd_pg_copybuf *b)
{
    free(b->data);
    memset(b, 0, sizeof(*b));
}

int bd_pg_copybuf_reserve(struct bd_pg_copybuf *b, size_t bytes)
{
    return copybuf_grow(b, bytes);
}

int bd_pg_copybuf_begin(struct bd_pg_copybuf *b)
{
    if (copybuf_grow(b, sizeof(pg_copy_signature) + 8) < 0)
        return b->err;
    memcpy(b->data + b->len, pg_copy_signature, sizeof(pg_copy_signature));
    b->len += sizeof(pg_copy_signature);
    copybuf_put32(b, 0);    /* flags: no OIDs */
    copybuf_put32(b, 0);    /* header extension length */
    return BD_OK;
}

int bd_pg_copybuf_row(struct bd_pg_copybuf *b, unsigned ncols)
{
    if (ncols > INT16_MAX) {
        b->err = b->err < 0 ? b->err : BD_EINVAL;
        return b->err;
    }
    if (copybuf_grow(b, 2) < 0)
        return b->err;
    copybuf_put16(b, (uint16_t)ncols);
    return BD_OK;
}

int bd_pg_copybuf_null(struct bd_pg_copybuf *b)
{
    if (copybuf_grow(b, 4) < 0)
        return b->err;
    copybuf_put32(b, UINT32_MAX);    /* length -1 */
    return BD_OK;
}

int bd_pg_copybuf_bytes(struct bd_pg_copybuf *b, const void *p, size_t len)
{
    if (len > INT32_MAX) {
        b->err = b->err < 0 ? b->err : BD_EINVAL;
        return b->err;
    }
    if (copybuf_grow(b, 4 + len) < 0)
        return b->err;
    copybuf_put32(b, (uint32_t)len);
    if (len > 0)
        memcpy(b->data + b->len, p, len);
    b->len += len;
    return BD_OK;
}

int bd_pg_copybuf_text(struct bd_pg_copybuf *b, const char *s, size_t len)
{
    return bd_pg_copybuf_bytes(b, s, len);   /* text's binary form is its bytes */
}

int bd_pg_copybuf_int4(struct bd_pg_copybuf *b, int32_t v)
{
    if (copybuf_grow(b, 8) < 0)
        return b->err;
    copybuf_put32(b, 4);
    copybuf_put32(b, (uint32_t)v);
    return BD_OK;
}

int bd_pg_copybuf_int8(struct bd_pg_copybuf *b, int64_t v)
{
    if (copybuf_grow(b, 12) < 0)
        return b->err;
    copybuf_put32(b, 8);
    copybuf_put64(b, (uint64_t)v);
    return BD_OK;
}

int bd_pg_copybuf_float8(struct bd_pg_copybuf *b, double v)
{
    uint64_t bits;

    memcpy(&bits, &v, sizeof(bits));
    if (copybuf_grow(b, 12) < 0)
        return b->err;
    copybuf_put32(b, 8);
    copybuf_put64(b, bits);
    return BD_OK;
}

int bd_pg_copybuf_bool(struct bd_pg_copybuf *b, bool v)
{
    if (copybuf_grow(b, 5) < 0)
        return b->err;
    copybuf_put32(b, 1);
    b->data[b->len++] = v ? 1 : 0;
    return BD_OK;
}

int bd_pg_copybuf_float4_array(struct bd_pg_copybuf *b, const float *v, size_t n)
{
    /* Array binary format: ndim, has-null flag, element type OID, then per dimension its
     * size and lower bound, then each element as length + value. An empty array has
     * ndim 0 and no dimension entries. */
    size_t body = n > 0 ? 20 + n * 8 : 12;

    if (n > (INT32_MAX - 20) / 8) {
        b->err = b->err < 0 ? b->err : BD_EINVAL;
        return b->err;
    }
    if (copybuf_grow(b, 4 + body) < 0)
        return b->err;
    copybuf_put32(b, (uint32_t)body);
    copybuf_put32(b, n > 0 ? 1 : 0);    /* ndim */
    copybuf_put32(b, 0);                /* has nulls */
    copybuf_put32(b, 700);              /* float4 */
    if (n > 0) {
        copybuf_put32(b, (uint32_t)n);  /* dimension */
        copybuf_put32(b, 1);            /* lower bound */
    }
    for (size_t i = 0; i < n; i++) {
        uint32_t bits;

        memcpy(&bits, &v[i], sizeof(bits));
        copybuf_put32(b, 4);
        copybuf_put32(b, bits);
    }
    return BD_OK;
}

int bd_pg_copybuf_jsonb(struct bd_pg_copybuf *b, const char *json, size_t len)
{
    if (len > INT32_MAX - 1) {
        b->err = b->err < 0 ? b->err : BD_EINVAL;
        return b->err;
    }
    if (copybuf_grow(b, 5 + len) < 0)
        return b->err;
    copybuf_put32(b, (uint32_t)(len + 1));
    b->data[b->len++] = 1;              /* jsonb binary format version */
    if (len > 0)
        memcpy(b->data + b->len, json, len);
    b->len += len;
    return BD_OK;
}

int bd_pg_copybuf_end(struct bd_pg_copybuf *b)
{
    if (copybuf_grow(b, 2) < 0)
        return b->err;
    copybuf_put16(b, UINT16_MAX);       /* field count -1: end of data */
    return BD_OK;
}
