/* pg_conn.c -- one pooled PostgreSQL connection: resolve, connect, watch the socket, read
 * results, feed COPY data, break and reconnect with backoff.
 *
 * Owns each connection's PGconn, its uv_poll and its uv_getaddrinfo request, and the
 * PGresults of the operation in flight until they are delivered. The pool, leases and the
 * public operations are in pg_store.c; the two share pg_internal.h. Loop thread only.
 * Never blocks: no PQexec, PQconnectdb, PQcancel or PQreset; host names are resolved with
 * uv_getaddrinfo and handed to libpq as hostaddr, so libpq never calls getaddrinfo itself.
 * Knows nothing of jobs or HTTP.  SPDX-License-Identifier: MIT
 */
#include "pg_internal.h"

#include "batchd/error.h"
#include "batchd/log.h"

#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#define PG_BACKOFF_MAX_MS 5000
#define PG_CONNECT_TIMEOUT_MS 10000   /* libpq's connect_timeout only works when it blocks */
#define PG_COPY_CHUNK (64 * 1024)     /* bytes per PQputCopyData call */
#define PG_COPY_SLICE (1024 * 1024)   /* bytes fed per loop turn before yielding to others */
#define PG_MAX_ADDRS 8                /* resolved addresses handed to libpq, tried in order */

static void conn_read(struct bd_pg_conn *conn);
static void conn_on_poll(uv_poll_t *handle, int status, int events);

/* ---- small helpers ----------------------------------------------------------------- */

/* Keep a one-line copy of an error text: trailing newline dropped, inner ones flattened. */
void bd__pg_conn_set_error(struct bd_pg_conn *conn, const char *msg)
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
    bool feeding = conn->op.kind == PG_OP_COPY && conn->op.copy_phase == PG_COPY_FEED;

    return UV_READABLE | (conn->is_flushing || feeding ? UV_WRITABLE : 0);
}

/* ---- the poll handle ----------------------------------------------------------------- */

static void conn_on_poll_closed(uv_handle_t *handle)
{
    struct bd_pg_conn *conn = handle->data;
    struct bd_pg *pg = conn->pg;

    pg->pending_closes--;
    conn->poll_state = PG_POLL_NONE;
    if (pg->is_closing) {
        bd__pg_pool_maybe_free(pg);
        return;
    }
    /* The socket changed while the old handle was closing: watch the new one now. */
    if (conn->pq != NULL && conn->want_events != 0) {
        int fd = PQsocket(conn->pq);
        int err = fd < 0 ? UV_EBADF : uv_poll_init(pg->loop, &conn->poll, fd);

        if (err == 0) {
            conn->poll.data = conn;
            conn->poll_fd = fd;
            conn->poll_state = PG_POLL_OPEN;
            conn->poll_events = conn->want_events;
            err = uv_poll_start(&conn->poll, conn->want_events, conn_on_poll);
        }
        if (err < 0)
            bd__pg_conn_break(conn, uv_strerror(err));
    }
}

static void conn_poll_close(struct bd_pg_conn *conn)
{
    if (conn->poll_state != PG_POLL_OPEN)
        return;
    uv_poll_stop(&conn->poll);
    uv_close((uv_handle_t *)&conn->poll, conn_on_poll_closed);
    conn->poll_state = PG_POLL_CLOSING;
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
    case PG_POLL_CLOSING:
        return 0;
    case PG_POLL_OPEN:
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
    case PG_POLL_NONE:
        err = uv_poll_init(conn->pg->loop, &conn->poll, fd);
        if (err < 0)
            return err;
        conn->poll.data = conn;
        conn->poll_fd = fd;
        conn->poll_state = PG_POLL_OPEN;
        break;
    }
    conn->poll_events = events;
    return uv_poll_start(&conn->poll, events, conn_on_poll);
}

/* ---- connection lifecycle ------------------------------------------------------------ */

static void conn_on_timer(uv_timer_t *timer)
{
    struct bd_pg_conn *conn = timer->data;

    switch (conn->state) {
    case PG_CONN_DOWN:
        bd__pg_conn_start(conn);
        break;
    case PG_CONN_CONNECTING:
    case PG_CONN_SETUP:
        bd__pg_conn_break(conn, "connect timed out");
        break;
    case PG_CONN_READY:
        if (conn->op.kind != PG_OP_NONE) {
            /* Bytes came since the timer was armed: the deadline counts from them. */
            uint64_t ms = bd__pg_conn_deadline_ms(conn);
            uint64_t quiet = uv_now(conn->pg->loop) - conn->progress_ms;
            if (quiet < ms) {
                uv_timer_start(&conn->timer, conn_on_timer, ms - quiet, 0);
                break;
            }
            /* PostgreSQL stopped (SIGSTOP), or the link is half open: TCP alone would
             * wait for hours. The operation fails as a lost connection. */
            char why[96];
            snprintf(why, sizeof(why), "no answer from PostgreSQL within %.1f s",
                     (double)bd__pg_conn_deadline_ms(conn) / 1000.0);
            bd__pg_conn_break(conn, why);
        }
        break;
    default:
        break;
    }
}

/* The answer deadline: this lease's, or the pool's statement timeout plus a grace (the
 * server cancels a statement at its timeout and answers; only a server that cannot answer
 * at all runs past the grace). 0: none. */
uint64_t bd__pg_conn_deadline_ms(const struct bd_pg_conn *conn)
{
    uint64_t t = conn->pg->statement_timeout_ms;
    if (conn->deadline_ms > 0)
        return conn->deadline_ms;
    return t > 0 ? t + 1000 + t / 10 : 0;
}

void bd__pg_conn_arm_deadline(struct bd_pg_conn *conn)
{
    uint64_t ms = bd__pg_conn_deadline_ms(conn);
    conn->progress_ms = uv_now(conn->pg->loop);
    if (conn->state == PG_CONN_READY && ms > 0)
        uv_timer_start(&conn->timer, conn_on_timer, ms, 0);
}

void bd__pg_conn_arm_retry(struct bd_pg_conn *conn)
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
    struct bd__pg_op op = conn->op;
    PGresult *res = NULL;

    if (conn->state == PG_CONN_READY)
        uv_timer_stop(&conn->timer);            /* the answer's deadline */

    memset(&conn->op, 0, sizeof(conn->op));
    if (conn->pq != NULL && status != BD_ECANCELED)
        res = status == BD_OK ? op.last : op.err;
    if (op.last != res)
        PQclear(op.last);
    if (op.err != res)
        PQclear(op.err);

    switch (op.kind) {
    case PG_OP_SETUP:
        if (status == BD_OK) {
            struct bd_pg *pg = conn->pg;

            uv_timer_stop(&conn->timer);
            conn->state = PG_CONN_READY;
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
            bd__pg_pool_kick(pg);
        } else if (conn->pq != NULL) {
            bd__pg_conn_break(conn, res != NULL ? PQresultErrorMessage(res) : NULL);
        }
        PQclear(res);
        break;
    case PG_OP_ROLLBACK:
        if (status == BD_OK && PQtransactionStatus(conn->pq) == PQTRANS_IDLE)
            bd__pg_pool_kick(conn->pg);
        else if (conn->pq != NULL)
            bd__pg_conn_break(conn, "rollback on release failed");
        PQclear(res);
        break;
    case PG_OP_QUERY:
    case PG_OP_COPY:
    case PG_OP_PIPELINE:
        op.cb(status, res, op.arg);
        PQclear(res);
        break;
    case PG_OP_NONE:
        break;
    }
}

/* The connection is gone (or never came up): drop the PGconn, fail the operation in flight
 * with BD_EPG and no result, and reconnect with backoff -- unless a caller holds the lease,
 * in which case it stays PG_CONN_BROKEN until bd_pg_release. */
void bd__pg_conn_break(struct bd_pg_conn *conn, const char *why)
{
    struct bd_pg *pg = conn->pg;
    bool was_ready = conn->state == PG_CONN_READY;

    bd__pg_conn_set_error(conn, why != NULL ? why
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
        conn->state = PG_CONN_BROKEN;
    } else {
        conn->state = PG_CONN_DOWN;
        bd__pg_conn_arm_retry(conn);
    }
    if (conn->op.kind != PG_OP_NONE)
        conn_op_done(conn, BD_EPG);    /* last: the callback may release the lease */
}

/* TCP settings every connection gets unless the URL says otherwise (keywords before an
 * expanded dbname are overridden by it). A peer that vanished without a FIN (a half-open
 * link, a host that lost power) is noticed by keepalives within ~60 s when idle
 * (30 s + 3 probes 10 s apart), and data PostgreSQL's host does not acknowledge for 60 s
 * breaks the connection (tcp_user_timeout); a PostgreSQL that is alive but silent is the
 * client deadline's case (bd__pg_conn_arm_deadline). */
static const char *const pg_tcp_kw[] = { "keepalives", "keepalives_idle",
                                         "keepalives_interval", "keepalives_count",
                                         "tcp_user_timeout" };
static const char *const pg_tcp_val[] = { "1", "30", "10", "3", "60000" };
#define PG_TCP_N (sizeof(pg_tcp_kw) / sizeof(pg_tcp_kw[0]))

static void conn_start_pq(struct bd_pg_conn *conn, const char *hosts, const char *addrs)
{
    struct bd_pg *pg = conn->pg;
    const char *kw[PG_TCP_N + 4] = { 0 };
    const char *val[PG_TCP_N + 4] = { 0 };
    size_t n = 0;
    int err;

    for (; n < PG_TCP_N; n++) {
        kw[n] = pg_tcp_kw[n];
        val[n] = pg_tcp_val[n];
    }
    kw[n] = "dbname";
    val[n++] = pg->conninfo;
    /* Keywords after an expanded dbname override what the conninfo string said. */
    if (addrs != NULL) {
        kw[n] = "host";
        val[n++] = hosts;
        kw[n] = "hostaddr";
        val[n++] = addrs;
    }
    memset(conn->prepared, 0, sizeof(conn->prepared));   /* a new session prepares anew */
    conn->pq = PQconnectStartParams(kw, val, 1);
    if (conn->pq == NULL) {
        bd__pg_conn_break(conn, "out of memory");
        return;
    }
    PQsetNoticeProcessor(conn->pq, pg_on_notice, conn);
    if (PQstatus(conn->pq) == CONNECTION_BAD) {
        bd__pg_conn_break(conn, NULL);
        return;
    }
    conn->state = PG_CONN_CONNECTING;
    uv_timer_start(&conn->timer, conn_on_timer, PG_CONNECT_TIMEOUT_MS, 0);
    /* libpq: behave as if PQconnectPoll had just returned PGRES_POLLING_WRITING. */
    err = conn_watch(conn, UV_WRITABLE, true);
    if (err < 0)   /* NULL: libpq's own text */
        bd__pg_conn_break(conn, err == UV_EBADF ? NULL : uv_strerror(err));
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
        bd__pg_pool_maybe_free(pg);
        return;
    }
    if (status < 0) {
        char msg[192];

        snprintf(msg, sizeof(msg), "resolve %s: %s", pg->resolve_host, uv_strerror(status));
        bd__pg_conn_break(conn, msg);
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
        bd__pg_conn_break(conn, "host name resolved to no usable address");
        return;
    }
    conn_start_pq(conn, hosts, addrs);
}

void bd__pg_conn_start(struct bd_pg_conn *conn)
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
            bd__pg_conn_break(conn, uv_strerror(err));
            return;
        }
        conn->is_resolving = true;
        conn->state = PG_CONN_RESOLVING;
        pg->pending_reqs++;
        return;
    }
    conn_start_pq(conn, NULL, NULL);
}

/* Flush what libpq buffered and watch for what comes next. Returns < 0 when broken. */
int bd__pg_conn_flush_watch(struct bd_pg_conn *conn)
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
    char sql[256];

    if (PQsetnonblocking(conn->pq, 1) != 0) {
        bd__pg_conn_break(conn, NULL);
        return;
    }
    snprintf(sql, sizeof(sql), "SET application_name = 'batchd'%s%s",
             pg->is_async_commit ? "; SET synchronous_commit = off" : "",
             pg->is_webhooks_on ? "; SET batchd.webhooks = on" : "");
    if (pg->statement_timeout_ms > 0)
        snprintf(sql + strlen(sql), sizeof(sql) - strlen(sql), "; SET statement_timeout = %llu",
                 (unsigned long long)pg->statement_timeout_ms);
    if (!PQsendQuery(conn->pq, sql)) {
        bd__pg_conn_break(conn, NULL);
        return;
    }
    conn->state = PG_CONN_SETUP;
    conn->op.kind = PG_OP_SETUP;
    if (bd__pg_conn_flush_watch(conn) < 0)
        bd__pg_conn_break(conn, NULL);
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
        bd__pg_conn_break(conn, NULL);
        return;
    }
    if (err < 0)
        bd__pg_conn_break(conn, err == UV_EBADF ? NULL : uv_strerror(err));
}

/* ---- connection I/O ------------------------------------------------------------------ */

/* All results are in: deliver the last good one, or the first error. */
static void conn_op_complete(struct bd_pg_conn *conn)
{
    if (PQstatus(conn->pq) == CONNECTION_BAD) {
        bd__pg_conn_break(conn, NULL);
        return;
    }
    if (conn_watch(conn, conn_events(conn), false) < 0) {
        bd__pg_conn_break(conn, "poll failed");
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
    struct bd__pg_op *op = &conn->op;
    size_t budget = PG_COPY_SLICE;
    int r;

    while (op->copy_phase == PG_COPY_FEED) {
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
            op->copy_phase = PG_COPY_DONE;
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
        bd__pg_conn_break(conn, "poll failed");
    return;
broken:
    bd__pg_conn_break(conn, NULL);
}

static void conn_read(struct bd_pg_conn *conn)
{
    PGconn *pq = conn->pq;
    struct bd__pg_op *op = &conn->op;
    unsigned nulls = 0;
    int r;

    while (!PQisBusy(pq)) {
        PGresult *res = PQgetResult(pq);

        if (res == NULL) {
            /* In pipeline mode NULL only ends one statement; the Sync result ends ours. */
            if (op->kind != PG_OP_PIPELINE) {
                conn_op_complete(conn);
                return;
            }
            if (++nulls > 1) {
                bd__pg_conn_break(conn, "pipeline out of step");
                return;
            }
            continue;
        }
        nulls = 0;
        switch (PQresultStatus(res)) {
        case PGRES_COPY_IN:
            PQclear(res);
            if (op->kind == PG_OP_COPY && op->copy_phase == PG_COPY_WAIT) {
                op->copy_phase = PG_COPY_FEED;
                copy_feed(conn);
                return;
            }
            /* A COPY FROM STDIN nobody asked to feed: refuse it; the server answers with
             * an error result for the statement. */
            if (PQputCopyEnd(pq, "batchd: unexpected COPY FROM STDIN") < 0 ||
                (r = PQflush(pq)) < 0) {
                bd__pg_conn_break(conn, NULL);
                return;
            }
            conn->is_flushing = r == 1;
            break;
        case PGRES_COPY_OUT:
        case PGRES_COPY_BOTH:
            PQclear(res);
            bd__pg_conn_break(conn, "unexpected COPY TO STDOUT");
            return;
        case PGRES_PIPELINE_SYNC:
            PQclear(res);
            if (!PQexitPipelineMode(pq)) {
                bd__pg_conn_break(conn, NULL);
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
        bd__pg_conn_break(conn, NULL);
        return;
    }
    if (conn_watch(conn, conn_events(conn), false) < 0)
        bd__pg_conn_break(conn, "poll failed");
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
        if (conn->state == PG_CONN_CONNECTING)
            conn_connect_step(conn);
        else
            bd__pg_conn_break(conn, PQconsumeInput(conn->pq) ? uv_strerror(status) : NULL);
        return;
    }
    if (conn->state == PG_CONN_CONNECTING) {
        conn_connect_step(conn);
        return;
    }
    /* libpq: when flushing, read-ready means PQconsumeInput and then PQflush again. */
    if ((events & UV_READABLE) && !PQconsumeInput(conn->pq)) {
        bd__pg_conn_break(conn, NULL);
        return;
    }
    conn->progress_ms = uv_now(conn->pg->loop); /* the deadline counts from here */
    if (conn->is_flushing) {
        r = PQflush(conn->pq);
        if (r < 0) {
            bd__pg_conn_break(conn, NULL);
            return;
        }
        conn->is_flushing = r == 1;
    }
    switch (conn->op.kind) {
    case PG_OP_NONE:
        while ((notify = PQnotifies(conn->pq)) != NULL)
            PQfreemem(notify);
        if (PQstatus(conn->pq) == CONNECTION_BAD) {
            bd__pg_conn_break(conn, NULL);
            return;
        }
        break;
    case PG_OP_COPY:
        if (conn->op.copy_phase == PG_COPY_FEED) {
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
        bd__pg_conn_break(conn, "poll failed");
}

/* ---- shutdown --------------------------------------------------------------------------- */

/* Close one connection for good; the operation in flight, if any, is returned detached so
 * the caller can cancel it once the connection is in a consistent state. */
struct bd__pg_op bd__pg_conn_shutdown(struct bd_pg_conn *conn)
{
    struct bd_pg *pg = conn->pg;
    struct bd__pg_op op = conn->op;

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
    if (conn->state == PG_CONN_READY)
        pg->connected--;
    conn->state = PG_CONN_CLOSED;
    if (conn->is_resolving)
        uv_cancel((uv_req_t *)&conn->gai);   /* failing is fine: its callback still comes */
    uv_timer_stop(&conn->timer);
    return op;
}

