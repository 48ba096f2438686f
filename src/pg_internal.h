/* pg_internal.h -- what the files of the PostgreSQL store share, and nothing else sees.
 *
 * pg_store.c (the pool, leases and the operations on a leased connection) and pg_conn.c
 * (one connection's life: resolve, connect, poll, read results, feed COPY, break and
 * reconnect) both work on struct bd_pg and struct bd_pg_conn, defined here. Helpers one
 * file calls in the other are named bd__pg_ (libuv's uv__ rule). Private to src/: never
 * include it from include/batchd/ or from outside the pg files.  SPDX-License-Identifier: MIT
 */
#ifndef BATCHD_PG_INTERNAL_H
#define BATCHD_PG_INTERNAL_H

#include "batchd/pg_store.h"

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#define PG_BACKOFF_MIN_MS 100
#define BD__PG_PREPARED_MAX 8         /* prepared statements kept per connection */         /* first reconnect delay, doubled to PG_BACKOFF_MAX_MS */

enum bd__pg_conn_state {
    PG_CONN_DOWN,        /* no PGconn; retry timer armed (or about to be) */
    PG_CONN_RESOLVING,   /* uv_getaddrinfo in flight */
    PG_CONN_CONNECTING,  /* PQconnectPoll in progress */
    PG_CONN_SETUP,       /* connected; SET statements in flight */
    PG_CONN_READY,       /* usable: free, leased, or rolling back */
    PG_CONN_BROKEN,      /* lost while leased; reconnects when released */
    PG_CONN_CLOSED       /* pool closing */
};

enum bd__pg_op_kind {
    PG_OP_NONE, PG_OP_QUERY, PG_OP_COPY, PG_OP_PIPELINE, PG_OP_SETUP, PG_OP_ROLLBACK
};
enum bd__pg_copy_phase { PG_COPY_WAIT, PG_COPY_FEED, PG_COPY_DONE };
enum bd__pg_poll_state { PG_POLL_NONE, PG_POLL_OPEN, PG_POLL_CLOSING };

struct bd__pg_op {
    enum bd__pg_op_kind kind;
    bd_pg_result_cb cb;
    void *arg;
    PGresult *last;                  /* last successful result */
    PGresult *err;                   /* first error result */
    enum bd__pg_copy_phase copy_phase;
    const char *data;                /* COPY payload, borrowed until cb */
    size_t len;
    size_t off;
};

struct bd_pg_conn {
    struct bd_pg *pg;
    PGconn *pq;
    unsigned index;
    enum bd__pg_conn_state state;
    bool is_leased;
    bool is_flushing;                /* PQflush returned 1: wait for writability */
    uv_poll_t poll;
    enum bd__pg_poll_state poll_state;
    int poll_fd;                     /* the fd poll was initialised with */
    int poll_events;                 /* events poll is started with */
    int want_events;                 /* what to watch once poll is reopened */
    uv_timer_t timer;                /* reconnect backoff, connect timeout, and (READY)
                                      * the answer deadline of the operation in flight */
    uint64_t deadline_ms;            /* this lease's answer deadline; 0 = the pool's */
    uint64_t progress_ms;            /* uv_now of the operation's send or last socket event */
    uint64_t backoff_ms;
    uv_getaddrinfo_t gai;
    bool is_resolving;
    struct bd__pg_op op;
    /* Statements prepared on this PGconn (bd_pg_query_prepared), cleared on every new
     * PGconn. gen goes into the server-side name and moves on when a prepare's pipeline
     * failed, so a statement the server may or may not have kept is never prepared twice
     * under one name. */
    struct {
        const char *name;            /* the caller's constant name; NULL: free slot */
        unsigned gen;
        bool is_prepared;
    } prepared[BD__PG_PREPARED_MAX];
    char errbuf[256];
};

struct bd__pg_waiter;               /* a bd_pg_acquire caller in the FIFO (pg_store.c) */

struct bd_pg {
    uv_loop_t *loop;
    char *conninfo;
    char *resolve_host;              /* host to resolve ourselves, or NULL */
    char url_log[256];               /* conninfo with the password redacted */
    unsigned pool_size;
    uint64_t acquire_timeout_ms;     /* 0 = wait forever */
    uint64_t statement_timeout_ms;   /* 0 = server default */
    bool is_async_commit;            /* SET synchronous_commit = off on each connection */
    bool is_webhooks_on;             /* SET batchd.webhooks = on on each connection */
    struct bd_pg_conn *conns;
    struct bd__pg_waiter *wait_head;
    struct bd__pg_waiter *wait_tail;
    unsigned waiting;
    unsigned connected;
    unsigned leased;
    uv_timer_t dispatch_timer;       /* zero timer: hands free connections to waiters */
    uv_timer_t acquire_timer;        /* fires at the head waiter's deadline */
    uv_timer_t group_timer;          /* zero timer: flushes the groups with items */
    struct {
        struct bd_pg_link *head, *tail;
        unsigned n;
        bd_pg_group_flush_cb flush;
        bool is_in_flight;           /* flushed; bd_pg_group_done not called yet */
    } groups[BD_PG_GROUP_KINDS];
    unsigned pending_closes;
    unsigned pending_reqs;
    bool is_closing;
    bool is_close_started;
    bool is_down_logged;
    bool has_been_up;
    bd_pg_done_cb close_cb;
    void *close_arg;
};

/* Defined in pg_conn.c: one connection. */

/* Start connecting conn (PG_CONN_DOWN): resolve the host with uv_getaddrinfo if needed,
 * then PQconnectStartParams. Failures go through bd__pg_conn_break, never to the caller. */
void bd__pg_conn_start(struct bd_pg_conn *conn);

/* The connection is gone (or never came up): drop the PGconn, fail the operation in flight
 * with BD_EPG and no result, and reconnect with backoff -- unless a caller holds the lease,
 * in which case it stays PG_CONN_BROKEN until bd_pg_release. why NULL: libpq's message. */
void bd__pg_conn_break(struct bd_pg_conn *conn, const char *why);

/* Arm the reconnect timer with the current backoff and double it (no-op when closing). */
void bd__pg_conn_arm_retry(struct bd_pg_conn *conn);
/* An operation was sent: start its deadline (bd__pg_conn_deadline_ms; 0 = none), which
 * counts from the last socket event (progress_ms) when the timer fires. */
void bd__pg_conn_arm_deadline(struct bd_pg_conn *conn);
uint64_t bd__pg_conn_deadline_ms(const struct bd_pg_conn *conn);

/* Flush what libpq buffered and watch for what comes next. Returns < 0 when broken (the
 * caller decides whether to break the connection). */
int bd__pg_conn_flush_watch(struct bd_pg_conn *conn);

/* Close one connection for good; the operation in flight, if any, is returned detached (its
 * results freed) so the caller can cancel it once the connection is in a consistent state. */
struct bd__pg_op bd__pg_conn_shutdown(struct bd_pg_conn *conn);

/* Keep a one-line copy of msg in conn->errbuf (NULL or empty: "unknown error"). */
void bd__pg_conn_set_error(struct bd_pg_conn *conn, const char *msg);

/* Defined in pg_store.c: the pool. */

/* Hand free connections to waiters on the next loop turn, never inside the caller. */
void bd__pg_pool_kick(struct bd_pg *pg);

/* Free the pool and call the close callback once bd_pg_close has started and every handle,
 * request and lease is gone; otherwise nothing. */
void bd__pg_pool_maybe_free(struct bd_pg *pg);

#endif
