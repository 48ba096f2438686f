/* pg_store.c -- the PostgreSQL pool: leases, FIFO waiters, the operations on a leased
 * connection (query, COPY IN, pipeline), bd_pg_query, and the SQLSTATE classifier.
 *
 * Owns struct bd_pg, its array of connections, the FIFO of bd_pg_acquire waiters and the
 * pool's timers. One connection's life (connect, poll, read, reconnect) is in pg_conn.c,
 * the binary COPY encoder in pg_copy.c, the migrations in pg_schema.c. Loop thread only;
 * never blocks. Knows nothing of jobs or HTTP.  SPDX-License-Identifier: MIT
 */
#include "pg_internal.h"

#include "batchd/buf.h"
#include "batchd/error.h"
#include "batchd/log.h"

#include <arpa/inet.h>
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct bd__pg_waiter {
    struct bd__pg_waiter *next;
    uint64_t deadline;               /* uv_now() ms; UINT64_MAX = wait forever */
    bd_pg_conn_cb cb;
    void *arg;
};

/* ---- pool: waiters and dispatch ------------------------------------------------------ */

static struct bd_pg_conn *pool_free_conn(struct bd_pg *pg)
{
    for (unsigned i = 0; i < pg->pool_size; i++) {
        struct bd_pg_conn *c = &pg->conns[i];

        if (c->state == PG_CONN_READY && !c->is_leased && c->op.kind == PG_OP_NONE)
            return c;
    }
    return NULL;
}

static struct bd__pg_waiter *pool_pop_waiter(struct bd_pg *pg)
{
    struct bd__pg_waiter *w = pg->wait_head;

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
    struct bd__pg_waiter *w = pg->wait_head;
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
        struct bd__pg_waiter *w = pool_pop_waiter(pg);
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
        struct bd__pg_waiter *w = pool_pop_waiter(pg);
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
void bd__pg_pool_kick(struct bd_pg *pg)
{
    if (!pg->is_closing && pg->wait_head != NULL)
        uv_timer_start(&pg->dispatch_timer, pool_on_dispatch, 0, 0);
}

/* ---- groups -------------------------------------------------------------------------- */

/* Hand kind's items to its flush (the kind starts empty and is in flight until done). */
static void group_flush(struct bd_pg *pg, unsigned k)
{
    struct bd_pg_link *items = pg->groups[k].head;
    unsigned n = pg->groups[k].n;

    if (n == 0)
        return;
    pg->groups[k].head = pg->groups[k].tail = NULL;
    pg->groups[k].n = 0;
    pg->groups[k].is_in_flight = true;
    pg->groups[k].flush(pg, items, n);
}

static void group_on_timer(uv_timer_t *timer)
{
    struct bd_pg *pg = timer->data;

    for (unsigned k = 0; k < BD_PG_GROUP_KINDS && !pg->is_closing; k++)
        if (!pg->groups[k].is_in_flight)
            group_flush(pg, k);
}

int bd_pg_group_add(struct bd_pg *pg, unsigned kind, struct bd_pg_link *item,
                    bd_pg_group_flush_cb flush)
{
    if (pg == NULL || kind >= BD_PG_GROUP_KINDS || item == NULL || flush == NULL)
        return BD_EINVAL;
    if (pg->is_closing)
        return BD_ECANCELED;
    item->next = NULL;
    if (pg->groups[kind].tail)
        pg->groups[kind].tail->next = item;
    else
        pg->groups[kind].head = item;
    pg->groups[kind].tail = item;
    pg->groups[kind].flush = flush;
    if (pg->groups[kind].n++ == 0 && !pg->groups[kind].is_in_flight)
        uv_timer_start(&pg->group_timer, group_on_timer, 0, 0);
    return BD_OK;
}

void bd_pg_group_done(struct bd_pg *pg, unsigned kind)
{
    if (kind >= BD_PG_GROUP_KINDS)
        return;
    pg->groups[kind].is_in_flight = false;
    if (pg->groups[kind].n > 0 && !pg->is_closing)
        uv_timer_start(&pg->group_timer, group_on_timer, 0, 0);
}

/* ---- pool lifecycle ------------------------------------------------------------------ */

static void pool_on_handle_closed(uv_handle_t *handle)
{
    struct bd_pg *pg = handle->data;

    pg->pending_closes--;
    bd__pg_pool_maybe_free(pg);
}

static void conn_on_timer_closed(uv_handle_t *handle)
{
    struct bd_pg_conn *conn = handle->data;

    conn->pg->pending_closes--;
    bd__pg_pool_maybe_free(conn->pg);
}

void bd__pg_pool_maybe_free(struct bd_pg *pg)
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
    pg->is_webhooks_on = opt->is_webhooks_on;
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
    uv_timer_init(loop, &pg->group_timer);
    pg->dispatch_timer.data = pg;
    pg->acquire_timer.data = pg;
    pg->group_timer.data = pg;
    for (unsigned i = 0; i < pg->pool_size; i++) {
        struct bd_pg_conn *conn = &pg->conns[i];

        conn->pg = pg;
        conn->index = i;
        conn->state = PG_CONN_DOWN;
        conn->poll_fd = -1;
        conn->backoff_ms = PG_BACKOFF_MIN_MS;
        uv_timer_init(loop, &conn->timer);
        conn->timer.data = conn;
    }
    for (unsigned i = 0; i < pg->pool_size; i++)
        bd__pg_conn_start(&pg->conns[i]);
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

void bd_pg_close(struct bd_pg *pg, bd_pg_done_cb cb, void *arg)
{
    struct bd__pg_waiter *w;

    assert(!pg->is_closing);
    if (pg->is_closing)
        return;
    pg->is_closing = true;
    pg->close_cb = cb;
    pg->close_arg = arg;
    uv_timer_stop(&pg->dispatch_timer);
    uv_timer_stop(&pg->acquire_timer);
    uv_timer_stop(&pg->group_timer);

    /* Callbacks below may call back into the pool; every entry point checks is_closing. */
    while ((w = pool_pop_waiter(pg)) != NULL) {
        bd_pg_conn_cb wcb = w->cb;
        void *warg = w->arg;

        free(w);
        wcb(BD_ECANCELED, NULL, warg);
    }
    for (unsigned i = 0; i < pg->pool_size; i++) {
        struct bd__pg_op op = bd__pg_conn_shutdown(&pg->conns[i]);

        if (op.kind == PG_OP_QUERY || op.kind == PG_OP_COPY || op.kind == PG_OP_PIPELINE)
            op.cb(BD_ECANCELED, NULL, op.arg);
    }
    for (unsigned i = 0; i < pg->pool_size; i++) {
        uv_close((uv_handle_t *)&pg->conns[i].timer, conn_on_timer_closed);
        pg->pending_closes++;
    }
    uv_close((uv_handle_t *)&pg->dispatch_timer, pool_on_handle_closed);
    uv_close((uv_handle_t *)&pg->acquire_timer, pool_on_handle_closed);
    uv_close((uv_handle_t *)&pg->group_timer, pool_on_handle_closed);
    pg->pending_closes += 3;
    /* Queued group items are answered by their flush (its statements now fail with
     * BD_ECANCELED), in flight or not. */
    for (unsigned k = 0; k < BD_PG_GROUP_KINDS; k++)
        group_flush(pg, k);
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
    struct bd__pg_waiter *w;

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
        bd__pg_pool_kick(pg);
    return BD_OK;
}

void bd_pg_release(struct bd_pg_conn *conn)
{
    struct bd_pg *pg = conn->pg;

    assert(conn->is_leased);
    assert(conn->op.kind == PG_OP_NONE);
    if (!conn->is_leased)
        return;
    conn->is_leased = false;
    conn->deadline_ms = 0;                       /* a lease's own deadline ends with it */
    pg->leased--;
    if (pg->is_closing) {
        bd__pg_pool_maybe_free(pg);
        return;
    }
    if (conn->state == PG_CONN_BROKEN) {
        conn->state = PG_CONN_DOWN;
        bd__pg_conn_arm_retry(conn);
        return;
    }
    if (conn->state != PG_CONN_READY)
        return;
    switch (PQtransactionStatus(conn->pq)) {
    case PQTRANS_IDLE:
        bd__pg_pool_kick(pg);
        return;
    case PQTRANS_INTRANS:
    case PQTRANS_INERROR:
        /* Roll back before anyone else gets the connection; it stays out of the free list
         * (op in flight) until the ROLLBACK's result arrives. */
        if (!PQsendQuery(conn->pq, "ROLLBACK")) {
            bd__pg_conn_break(conn, NULL);
            return;
        }
        conn->op.kind = PG_OP_ROLLBACK;
        if (bd__pg_conn_flush_watch(conn) < 0) {
            memset(&conn->op, 0, sizeof(conn->op));
            bd__pg_conn_break(conn, NULL);
            return;
        }
        bd__pg_conn_arm_deadline(conn);
        return;
    default:
        bd__pg_conn_break(conn, "released with a statement still running");
        return;
    }
}

/* ---- operations on a leased connection ------------------------------------------------ */

void bd_pg_conn_set_deadline(struct bd_pg_conn *conn, double seconds)
{
    if (conn != NULL && conn->is_leased && seconds > 0)
        conn->deadline_ms = (uint64_t)(seconds * 1000.0 + 0.5);
}

static int conn_check_usable(struct bd_pg_conn *conn, const void *cb)
{
    if (conn == NULL || cb == NULL)
        return BD_EINVAL;
    if (conn->pg->is_closing)
        return BD_ECANCELED;
    if (!conn->is_leased || conn->op.kind != PG_OP_NONE)
        return BD_EINVAL;
    if (conn->state != PG_CONN_READY)
        return BD_EPG;
    return BD_OK;
}

/* libpq refused to queue a statement: if the connection died, mark it broken. No operation
 * is attached yet, so nobody is called back. */
static int conn_send_failed(struct bd_pg_conn *conn)
{
    if (PQstatus(conn->pq) == CONNECTION_BAD)
        bd__pg_conn_break(conn, NULL);
    else
        bd__pg_conn_set_error(conn, PQerrorMessage(conn->pq));
    return BD_EPG;
}

static int conn_op_begin(struct bd_pg_conn *conn, enum bd__pg_op_kind kind,
                         bd_pg_result_cb cb, void *arg)
{
    conn->op.kind = kind;
    conn->op.cb = cb;
    conn->op.arg = arg;
    if (bd__pg_conn_flush_watch(conn) < 0) {
        memset(&conn->op, 0, sizeof(conn->op));   /* we return an error: no callback */
        bd__pg_conn_break(conn, NULL);
        return BD_EPG;
    }
    bd__pg_conn_arm_deadline(conn);
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
    return conn_op_begin(conn, PG_OP_QUERY, cb, arg);
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
    conn->op.copy_phase = PG_COPY_WAIT;
    conn->op.data = data;
    conn->op.len = len;
    conn->op.off = 0;
    return conn_op_begin(conn, PG_OP_COPY, cb, arg);
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
    return conn_op_begin(conn, PG_OP_PIPELINE, cb, arg);

broken:
    /* Part of the pipeline is queued and cannot be taken back: start over on a new
     * connection rather than guess what the server will make of it. */
    bd__pg_conn_break(conn, NULL);
    return BD_EPG;
}

const char *bd_pg_conn_get_error(struct bd_pg_conn *conn)
{
    if (conn->pq != NULL)
        bd__pg_conn_set_error(conn, PQerrorMessage(conn->pq));
    return conn->errbuf;
}

int bd_pg_conn_get_backend_pid(const struct bd_pg_conn *conn)
{
    return conn->pq != NULL && conn->state == PG_CONN_READY ? PQbackendPID(conn->pq) : 0;
}

/* ---- bd_pg_query: acquire, query, release ----------------------------------------------- */

struct pg_query_rec {
    struct bd_pg_conn *conn;
    bd_pg_result_cb cb;
    void *arg;
    const char *name;                /* bd_pg_query_prepared: the statement's name */
    int slot;                        /* its slot in conn->prepared, or -1 */
    bool is_preparing;               /* this run carries the PQsendPrepare */
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

    if (rec->slot >= 0 && rec->is_preparing) {
        if (status == BD_OK)
            rec->conn->prepared[rec->slot].is_prepared = true;
        else
            rec->conn->prepared[rec->slot].gen++;    /* whatever the server kept: a new name */
    }
    rec->cb(status, res, rec->arg);
    bd_pg_release(rec->conn);
    free(rec);
}

/* The slot of name on conn (taken when new), or -1 when every slot is taken. */
static int conn_prepared_slot(struct bd_pg_conn *conn, const char *name)
{
    for (int i = 0; i < BD__PG_PREPARED_MAX; i++) {
        if (conn->prepared[i].name == name)
            return i;
        if (conn->prepared[i].name == NULL) {
            conn->prepared[i].name = name;
            conn->prepared[i].gen = 0;
            conn->prepared[i].is_prepared = false;
            return i;
        }
    }
    return -1;
}

/* Execute rec's statement by name on conn, preparing it first (in one pipeline, one round
 * trip) when this connection has not yet. */
static int conn_query_prepared(struct bd_pg_conn *conn, struct pg_query_rec *rec)
{
    char stmt[80];
    int err = conn_check_usable(conn, (const void *)query_on_result);

    if (err < 0)
        return err;
    snprintf(stmt, sizeof(stmt), "%.60s_%u", rec->name, conn->prepared[rec->slot].gen);
    rec->is_preparing = !conn->prepared[rec->slot].is_prepared;
    if (!rec->is_preparing) {
        if (!PQsendQueryPrepared(conn->pq, stmt, rec->nparams, rec->values, rec->lengths,
                                 rec->formats, rec->result_binary ? 1 : 0))
            return conn_send_failed(conn);
        return conn_op_begin(conn, PG_OP_QUERY, query_on_result, rec);
    }
    if (!PQenterPipelineMode(conn->pq))
        return conn_send_failed(conn);
    if (!PQsendPrepare(conn->pq, stmt, rec->sql, rec->nparams, NULL) ||
        !PQsendQueryPrepared(conn->pq, stmt, rec->nparams, rec->values, rec->lengths,
                             rec->formats, rec->result_binary ? 1 : 0) ||
        !PQpipelineSync(conn->pq)) {
        /* Part of the pipeline is queued: start over on a new connection. */
        bd__pg_conn_break(conn, NULL);
        return BD_EPG;
    }
    return conn_op_begin(conn, PG_OP_PIPELINE, query_on_result, rec);
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
    rec->slot = rec->name != NULL ? conn_prepared_slot(conn, rec->name) : -1;
    if (rec->slot >= 0)
        err = conn_query_prepared(conn, rec);
    else
        err = bd_pg_conn_query(conn, rec->sql, rec->nparams, rec->values, rec->lengths,
                               rec->formats, rec->result_binary, query_on_result, rec);
    if (err < 0) {
        bd_pg_release(conn);
        rec->cb(err, NULL, rec->arg);
        free(rec);
    }
}

static int pg_query(struct bd_pg *pg, const char *name, const char *sql, int nparams,
                    const char *const *values, const int *lengths, const int *formats,
                    int result_binary, bd_pg_result_cb cb, void *arg);

int bd_pg_query(struct bd_pg *pg, const char *sql, int nparams, const char *const *values,
                const int *lengths, const int *formats, int result_binary,
                bd_pg_result_cb cb, void *arg)
{
    return pg_query(pg, NULL, sql, nparams, values, lengths, formats, result_binary, cb, arg);
}

int bd_pg_query_prepared(struct bd_pg *pg, const char *name, const char *sql, int nparams,
                         const char *const *values, const int *lengths, const int *formats,
                         int result_binary, bd_pg_result_cb cb, void *arg)
{
    if (name == NULL || name[0] == '\0')
        return BD_EINVAL;
    return pg_query(pg, name, sql, nparams, values, lengths, formats, result_binary, cb, arg);
}

static int pg_query(struct bd_pg *pg, const char *name, const char *sql, int nparams,
                    const char *const *values, const int *lengths, const int *formats,
                    int result_binary, bd_pg_result_cb cb, void *arg)
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
    rec->name = name;
    rec->slot = -1;
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


/* ---- binary array parameters ------------------------------------------------------------- */

static void array_put32(struct bd_buf *b, uint32_t v)
{
    v = htonl(v);
    bd_buf_append(b, &v, sizeof(v));
}

int bd_pg_array_begin(struct bd_buf *b, uint32_t elem_oid, unsigned n)
{
    if (n > INT32_MAX)
        return BD_EINVAL;
    if (bd_buf_reserve(b, 20) != BD_OK)
        return BD_ENOMEM;
    array_put32(b, n > 0 ? 1 : 0);   /* ndim */
    array_put32(b, 0);               /* has-nulls flag: the server reads -1 lengths anyway */
    array_put32(b, elem_oid);
    if (n > 0) {
        array_put32(b, n);           /* dimension */
        array_put32(b, 1);           /* lower bound */
    }
    return b->is_failed ? BD_ENOMEM : BD_OK;
}

int bd_pg_array_elem(struct bd_buf *b, const void *p, size_t len)
{
    if (p != NULL && len > INT32_MAX)
        return BD_EINVAL;
    if (bd_buf_reserve(b, 4 + (p ? len : 0)) != BD_OK)
        return BD_ENOMEM;
    array_put32(b, p ? (uint32_t)len : UINT32_MAX);
    if (p != NULL && len > 0)
        bd_buf_append(b, p, len);
    return b->is_failed ? BD_ENOMEM : BD_OK;
}

int bd_pg_array_int4(struct bd_buf *b, int32_t v)
{
    uint32_t be = htonl((uint32_t)v);
    return bd_pg_array_elem(b, &be, 4);
}

/* ---- error classes ------------------------------------------------------------------------ */

enum bd_pg_error_class bd_pg_classify_sqlstate(const char *sqlstate)
{
    /* No SQLSTATE: libpq made the error itself, which it does when the connection is lost
     * (or cannot be made). */
    if (sqlstate == NULL || strlen(sqlstate) != 5)
        return BD_PG_ERR_TRANSIENT;
    /* 55P03 lock_not_available: a NOWAIT or lock_timeout lock that another session held. */
    if (strcmp(sqlstate, "55P03") == 0)
        return BD_PG_ERR_TRANSIENT;
    /* 53400 configuration_limit_exceeded: the statement hit a server limit that the same
     * statement will hit again, unlike the rest of class 53 (memory, disk, connections). */
    if (strcmp(sqlstate, "53400") == 0)
        return BD_PG_ERR_PERMANENT;
    if (strncmp(sqlstate, "08", 2) == 0 ||      /* connection exception */
        strncmp(sqlstate, "40", 2) == 0 ||      /* transaction rollback: 40001, 40P01, ... */
        strncmp(sqlstate, "53", 2) == 0 ||      /* insufficient resources */
        strncmp(sqlstate, "57", 2) == 0)        /* operator intervention: shutdown, cancel */
        return BD_PG_ERR_TRANSIENT;
    return BD_PG_ERR_PERMANENT;
}

enum bd_pg_error_class bd_pg_classify_error(const PGresult *res)
{
    if (res == NULL)
        return BD_PG_ERR_TRANSIENT;
    return bd_pg_classify_sqlstate(PQresultErrorField(res, PG_DIAG_SQLSTATE));
}
