/* rq_internal.h -- what the files of the Redis queue module share (not a public header).
 *
 * rq_conn.c owns the connection: call records, sending, reply dispatch (with the NOSCRIPT
 * retry), reconnect, command timeouts, create and close. rq_scripts.c owns the keys: the
 * Lua scripts. redis_queue.c the queue operations and the conversion of each reply into
 * what the caller's callback takes. Loop thread only.  SPDX-License-Identifier: MIT
 */
#ifndef BATCHD_RQ_INTERNAL_H
#define BATCHD_RQ_INTERNAL_H

#include "batchd/redis_queue.h"

#include <hiredis/async.h>

#define BD__RQ_MAX_ARGS 12          /* EVALSHA sha numkeys prefix + at most 8 script args */

/* The Lua scripts (rq_scripts.c), loaded by rq_conn.c at every (re)connect. */
enum bd__rq_script {
    BD__RQ_S_ENQUEUE,
    BD__RQ_S_CLAIM,
    BD__RQ_S_RENEW,
    BD__RQ_S_RELEASE,
    BD__RQ_S_CANCEL,
    BD__RQ_S_REAP,
    BD__RQ_S_COUNTS,
    BD__RQ_S_MODEL_COUNTS,
    BD__RQ_S_ADOPT,
    BD__RQ_S_RESTORE_SEQ,
    BD__RQ_S_LEASE,
    BD__RQ_S_RESERVE,
    BD__RQ_S_UNRESERVE,
    BD__RQ_S_RESERVE_NEXT,
    BD__RQ_S_ENQUEUE_MANY,
    BD__RQ_S_REBUILD_BEGIN,
    BD__RQ_S_REBUILD_END,
    BD__RQ_SCRIPT_COUNT
};

struct bd__rq_script_def {
    const char *name;
    const char *body;
};
extern const struct bd__rq_script_def bd__rq_scripts[BD__RQ_SCRIPT_COUNT];

/* How a reply is turned into what the caller's callback takes (bd__rq_deliver). */
enum bd__rq_conv {
    BD__RQ_CONV_RAW,        /* bd_rq_reply_cb, reply as is */
    BD__RQ_CONV_INT,        /* bd_rq_int_cb, integer reply */
    BD__RQ_CONV_OK,         /* bd_rq_int_cb, status reply "OK" -> 1 */
    BD__RQ_CONV_NOT,        /* bd_rq_int_cb, integer reply, 1 when it is 0 (EXISTS) */
    BD__RQ_CONV_MEMORY,     /* bd_rq_int_cb, used_memory from INFO memory */
    BD__RQ_CONV_CLAIM,      /* bd_rq_claim_cb, bulk string or nil */
    BD__RQ_CONV_COUNTS,     /* bd_rq_counts_cb, array of 6 integers */
    BD__RQ_CONV_LEASE,      /* bd_rq_lease_cb, [deadline_ms or nil, owner or nil] */
    BD__RQ_CONV_RESERVE,    /* bd_rq_reserve_cb, [granted 0/1, total items] */
    BD__RQ_CONV_HANDSHAKE,  /* rq_conn.c's own: AUTH, SELECT, SCRIPT LOAD after connect */
    BD__RQ_CONV_INTERNAL,   /* rq_conn.c's own: reply ignored (SCRIPT LOAD before a retry) */
};

union bd__rq_cb {
    bd_rq_reply_cb raw;
    bd_rq_int_cb num;
    bd_rq_claim_cb claim;
    bd_rq_counts_cb counts;
    bd_rq_lease_cb lease;
    bd_rq_reserve_cb reserve;
};

/* One command in flight: hiredis' privdata. Lives on rq's pending list from send to reply,
 * then goes back to the free list (its buffer is kept, so steady state allocates nothing
 * of ours per command). */
struct bd__rq_call {
    struct bd__rq_call *next;
    struct bd__rq_call *prev;
    struct bd_rq *rq;
    enum bd__rq_conv conv;
    union bd__rq_cb cb;
    void *arg;
    uint64_t sent_ms;               /* uv_now() when handed to hiredis */
    int script;                     /* enum bd__rq_script, or -1 when not an EVALSHA */
    bool is_retried;                /* NOSCRIPT retry used up */
    int argc;                       /* EVALSHA argv, kept for the NOSCRIPT retry */
    const char *argv[BD__RQ_MAX_ARGS];
    size_t argvlen[BD__RQ_MAX_ARGS];
    char *buf;                      /* copies of the variable arguments */
    size_t bufcap;
};

struct bd_rq {
    uv_loop_t *loop;
    redisAsyncContext *ac;          /* NULL while down; the one we send on */
    uv_timer_t tick;                /* command deadlines; then the close step */
    uv_timer_t retry;               /* reconnect backoff */
    uv_getaddrinfo_t gai;
    bool is_resolving;
    bool is_up;                     /* connected, authenticated, scripts loaded */
    bool is_closing;
    bool is_handshake_failed;
    int handshake_left;
    unsigned attempts;              /* failed connects since last up, for log pacing */
    unsigned addr_pick;             /* which resolved address to try; moves on on failure */
    uint64_t backoff_ms;
    uint64_t tick_ms;
    uint64_t timeout_ms;
    int pending_closes;

    char *host;
    int port;
    int db;
    char *user;                     /* NULL: AUTH <password> */
    char *password;                 /* NULL: no AUTH */
    char *url_redacted;

    char *worker_id;
    char *prefix;
    char *seq_key;
    char *alive_key;
    char lease_ms[24];
    char reserve_ttl_ms[24];
    char sha[BD__RQ_SCRIPT_COUNT][41];

    struct bd__rq_call *pending_head;   /* send order: head is the oldest */
    struct bd__rq_call *pending_tail;
    struct bd__rq_call *free_list;
    unsigned nfree;

    bd_rq_state_cb state_cb;
    void *state_arg;
    bd_rq_done_cb close_cb;
    void *close_arg;
};

/* rq_conn.c: a plain command (argvlen NULL = strlen of each). Returns BD_ECANCELED once
 * closing, BD_EREDIS while down, BD_ENOMEM; then cb never runs. */
int bd__rq_command(struct bd_rq *rq, enum bd__rq_conv conv, union bd__rq_cb cb, void *arg,
                   int argc, const char **argv, const size_t *argvlen);

/* rq_conn.c: EVALSHA script with ARGV = prefix, args[0..nargs) (no KEYS); the arguments
 * are copied (kept for a NOSCRIPT retry). Errors as bd__rq_command. */
int bd__rq_eval(struct bd_rq *rq, enum bd__rq_script script, enum bd__rq_conv conv,
                union bd__rq_cb cb, void *arg, int nargs, const char **args);

/* redis_queue.c: call the caller's callback of call (conv RAW..RESERVE) with status and,
 * when status is BD_OK, the reply (borrowed). Exactly once per caller's call. */
void bd__rq_deliver(struct bd__rq_call *call, int status, const redisReply *reply);

#endif
