/* redis_queue.c -- the job queue, leases and counters in Redis, over one hiredis async
 * connection on the libuv adapter.
 *
 * Owns the redisAsyncContext, the SHAs of the Lua scripts, a free list of call records and
 * two timers: `tick` (deadlines of pending commands, then the close step) and `retry`
 * (reconnect backoff). Loop thread only; never blocks: host names are resolved with
 * uv_getaddrinfo, and hiredis 0.14's missing command timeout is made up for by `tick`.
 * Must not call redisAsyncFree from inside a hiredis callback: the context is freed only
 * from our own timer callbacks (reset on timeout, close), and hiredis frees it itself on
 * connect failure and on disconnect.  SPDX-License-Identifier: MIT
 */
#include "batchd/redis_queue.h"
#include "batchd/error.h"
#include "batchd/log.h"

#include <hiredis/adapters/libuv.h>
#include <hiredis/async.h>

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RQ_DEFAULT_PREFIX     "bd:"
#define RQ_DEFAULT_LEASE_S    30.0
#define RQ_DEFAULT_TIMEOUT_S  5.0
#define RQ_BACKOFF_MIN_MS     100
#define RQ_BACKOFF_MAX_MS     5000
#define RQ_MAX_ARGS           12    /* EVALSHA sha numkeys prefix + at most 8 script args */
#define RQ_FREE_LIST_MAX      256   /* call records kept for reuse; more are freed */
#define RQ_REAP_LIMIT         "1000" /* jobs returned per reap call, keeps the script short */

/* ---------------------------------------------------------------------------------------
 * Lua scripts. Each gets ARGV[1] = key prefix; keys are built from it inside the script
 * (job and model keys are data-dependent, so this is a standalone-Redis design, not
 * cluster-safe). Deadlines come from the server's TIME so that every process agrees.
 * Counters are only changed through helpers that never let them go below zero.
 * ------------------------------------------------------------------------------------- */

#define RQ_LUA_PRELUDE                                                                     \
    "local P = ARGV[1]\n"                                                                  \
    "local PRIOS = {'high', 'normal', 'low'}\n"                                            \
    "local function now_ms()\n"                                                            \
    "  local t = redis.call('TIME')\n"                                                     \
    "  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"                 \
    "end\n"                                                                                \
    "local function int(n) return string.format('%d', n) end\n"                           \
    "local function hadd(key, field, n)\n"                                                 \
    "  local v = tonumber(redis.call('HGET', key, field) or '0') or 0\n"                   \
    "  if v + n < 0 then n = -v end\n"                                                     \
    "  if n ~= 0 then redis.call('HINCRBY', key, field, int(n)) end\n"                     \
    "end\n"                                                                                \
    "local function add(key, n)\n"                                                         \
    "  local v = tonumber(redis.call('GET', key) or '0') or 0\n"                           \
    "  if v + n < 0 then n = -v end\n"                                                     \
    "  if n ~= 0 then redis.call('INCRBY', key, int(n)) end\n"                             \
    "end\n"                                                                                \
    "local function model_add(jk, field, n)\n"                                             \
    "  local m = redis.call('HGET', jk, 'model')\n"                                        \
    "  if m and m ~= '' then hadd(P .. 'model:' .. m, field, n) end\n"                     \
    "end\n"                                                                                \
    "local function items_of(jk)\n"                                                        \
    "  return tonumber(redis.call('HGET', jk, 'items') or '0') or 0\n"                     \
    "end\n"                                                                                \
    "local function queued_in(id)\n"                                                       \
    "  for _, p in ipairs(PRIOS) do\n"                                                     \
    "    if redis.call('ZSCORE', P .. 'q:' .. p, id) then return p end\n"                  \
    "  end\n"                                                                              \
    "  return nil\n"                                                                       \
    "end\n"                                                                                \
    "local function position(prio, id)\n"                                                  \
    "  local pos = 0\n"                                                                    \
    "  for _, p in ipairs(PRIOS) do\n"                                                     \
    "    local q = P .. 'q:' .. p\n"                                                       \
    "    if p == prio then return pos + redis.call('ZRANK', q, id) + 1 end\n"              \
    "    pos = pos + redis.call('ZCARD', q)\n"                                             \
    "  end\n"                                                                              \
    "  return 0\n"                                                                         \
    "end\n"                                                                                \
    /* Put a job that is in no queue and not in flight back into its queue at its original \
     * seq and count it as pending again. false when its hash lacks priority or seq. */    \
    "local function requeue(jk, id)\n"                                                     \
    "  local v = redis.call('HMGET', jk, 'priority', 'seq')\n"                             \
    "  if not v[1] or not v[2] then return false end\n"                                    \
    "  redis.call('ZADD', P .. 'q:' .. v[1], v[2], id)\n"                                  \
    "  model_add(jk, 'pending', 1)\n"                                                      \
    "  add(P .. 'queued_items', items_of(jk))\n"                                           \
    "  return true\n"                                                                      \
    "end\n"

/* ARGV: prefix, id, prio name, seq, model ('' = none), items.
 * Returns the 1-based position; 0 when the job is in flight. */
static const char rq_lua_enqueue[] = RQ_LUA_PRELUDE
    "local id, prio, seq, model = ARGV[2], ARGV[3], ARGV[4], ARGV[5]\n"
    "local q = queued_in(id)\n"
    "if q then return position(q, id) end\n"
    "if redis.call('ZSCORE', P .. 'inflight', id) then return 0 end\n"
    "local jk = P .. 'job:' .. id\n"
    "redis.call('DEL', jk)\n"
    "redis.call('HSET', jk, 'priority', prio, 'seq', seq, 'model', model, 'items', ARGV[6])\n"
    "redis.call('ZADD', P .. 'q:' .. prio, seq, id)\n"
    "if model ~= '' then\n"
    "  redis.call('SADD', P .. 'models', model)\n"
    "  hadd(P .. 'model:' .. model, 'pending', 1)\n"
    "end\n"
    "add(P .. 'queued_items', tonumber(ARGV[6]) or 0)\n"
    "return position(prio, id)\n";

/* ARGV: prefix, worker, lease_ms. Returns the claimed id or nil. */
static const char rq_lua_claim[] = RQ_LUA_PRELUDE
    "for _, p in ipairs(PRIOS) do\n"
    "  local r = redis.call('ZPOPMIN', P .. 'q:' .. p)\n"
    "  if r[1] then\n"
    "    local id = r[1]\n"
    "    local jk = P .. 'job:' .. id\n"
    "    redis.call('ZADD', P .. 'inflight', int(now_ms() + tonumber(ARGV[3])), id)\n"
    "    redis.call('HSET', jk, 'owner', ARGV[2])\n"
    "    model_add(jk, 'pending', -1)\n"
    "    model_add(jk, 'processing', 1)\n"
    "    add(P .. 'queued_items', -items_of(jk))\n"
    "    return id\n"
    "  end\n"
    "end\n"
    "return false\n";

/* ARGV: prefix, id, worker, lease_ms. Returns 1 renewed, 2 renewed + cancel, 0 lost. */
static const char rq_lua_renew[] = RQ_LUA_PRELUDE
    "local id = ARGV[2]\n"
    "local jk = P .. 'job:' .. id\n"
    "if not redis.call('ZSCORE', P .. 'inflight', id) then return 0 end\n"
    "if redis.call('HGET', jk, 'owner') ~= ARGV[3] then return 0 end\n"
    "redis.call('ZADD', P .. 'inflight', 'XX', int(now_ms() + tonumber(ARGV[4])), id)\n"
    "if redis.call('HGET', jk, 'cancel') == '1' then return 2 end\n"
    "return 1\n";

/* ARGV: prefix, id, worker, requeue ('1'/'0'). Returns 1 done, 0 not ours (or nothing to
 * requeue). A job no longer in flight (its lease was reaped) but waiting in a queue belongs
 * to whoever claims it next and is left alone. */
static const char rq_lua_release[] = RQ_LUA_PRELUDE
    "local id, requeue_it = ARGV[2], ARGV[4] == '1'\n"
    "local jk = P .. 'job:' .. id\n"
    "if redis.call('ZSCORE', P .. 'inflight', id) then\n"
    "  if redis.call('HGET', jk, 'owner') ~= ARGV[3] then return 0 end\n"
    "  redis.call('ZREM', P .. 'inflight', id)\n"
    "  redis.call('HDEL', jk, 'owner')\n"
    "  model_add(jk, 'processing', -1)\n"
    "elseif queued_in(id) then\n"
    "  return 0\n"
    "elseif requeue_it and redis.call('EXISTS', jk) == 0 then\n"
    "  return 0\n"
    "end\n"
    "if requeue_it and requeue(jk, id) then return 1 end\n"
    "redis.call('DEL', jk)\n"
    "return 1\n";

/* ARGV: prefix, id. Returns 1 removed from its queue, 2 flagged in flight, 0 unknown. */
static const char rq_lua_cancel[] = RQ_LUA_PRELUDE
    "local id = ARGV[2]\n"
    "local jk = P .. 'job:' .. id\n"
    "for _, p in ipairs(PRIOS) do\n"
    "  if redis.call('ZREM', P .. 'q:' .. p, id) == 1 then\n"
    "    model_add(jk, 'pending', -1)\n"
    "    add(P .. 'queued_items', -items_of(jk))\n"
    "    redis.call('DEL', jk)\n"
    "    return 1\n"
    "  end\n"
    "end\n"
    "if redis.call('ZSCORE', P .. 'inflight', id) then\n"
    "  redis.call('HSET', jk, 'cancel', '1')\n"
    "  return 2\n"
    "end\n"
    "return 0\n";

/* ARGV: prefix, limit. Returns the number of expired leases put back in their queues. */
static const char rq_lua_reap[] = RQ_LUA_PRELUDE
    "local ids = redis.call('ZRANGEBYSCORE', P .. 'inflight', '-inf', int(now_ms()),\n"
    "                       'LIMIT', 0, tonumber(ARGV[2]))\n"
    "for _, id in ipairs(ids) do\n"
    "  local jk = P .. 'job:' .. id\n"
    "  redis.call('ZREM', P .. 'inflight', id)\n"
    "  redis.call('HDEL', jk, 'owner')\n"
    "  model_add(jk, 'processing', -1)\n"
    "  if not requeue(jk, id) then redis.call('DEL', jk) end\n"
    "end\n"
    "return #ids\n";

/* ARGV: prefix. Returns [high, normal, low, inflight, queued_items]. */
static const char rq_lua_counts[] = RQ_LUA_PRELUDE
    "return { redis.call('ZCARD', P .. 'q:high'), redis.call('ZCARD', P .. 'q:normal'),\n"
    "         redis.call('ZCARD', P .. 'q:low'), redis.call('ZCARD', P .. 'inflight'),\n"
    "         tonumber(redis.call('GET', P .. 'queued_items') or '0') or 0 }\n";

/* ARGV: prefix. Returns [model, pending, processing, ...] sorted by model name. */
static const char rq_lua_model_counts[] = RQ_LUA_PRELUDE
    "local names = redis.call('SMEMBERS', P .. 'models')\n"
    "table.sort(names)\n"
    "local out = {}\n"
    "for _, m in ipairs(names) do\n"
    "  local v = redis.call('HMGET', P .. 'model:' .. m, 'pending', 'processing')\n"
    "  out[#out + 1] = m\n"
    "  out[#out + 1] = tonumber(v[1] or '0') or 0\n"
    "  out[#out + 1] = tonumber(v[2] or '0') or 0\n"
    "end\n"
    "return out\n";

/* ARGV: prefix, id. Returns [field, value, ...]: the job hash plus state and lease_ms_left. */
static const char rq_lua_job_info[] = RQ_LUA_PRELUDE
    "local id = ARGV[2]\n"
    "local out = redis.call('HGETALL', P .. 'job:' .. id)\n"
    "local state = 'absent'\n"
    "local deadline = redis.call('ZSCORE', P .. 'inflight', id)\n"
    "if deadline then\n"
    "  state = 'inflight'\n"
    "  out[#out + 1] = 'lease_ms_left'\n"
    "  out[#out + 1] = int(tonumber(deadline) - now_ms())\n"
    "elseif queued_in(id) then\n"
    "  state = 'queued'\n"
    "end\n"
    "out[#out + 1] = 'state'\n"
    "out[#out + 1] = state\n"
    "return out\n";

/* ARGV: prefix, id, prio name, seq, model, items, worker, lease_ms. For the rebuild after
 * Redis lost its data: put a job this worker is running straight in flight. Returns 1
 * adopted (or already ours, lease renewed), 0 queued or another worker's. */
static const char rq_lua_adopt[] = RQ_LUA_PRELUDE
    "local id, model, worker = ARGV[2], ARGV[5], ARGV[7]\n"
    "local jk = P .. 'job:' .. id\n"
    "local deadline = int(now_ms() + tonumber(ARGV[8]))\n"
    "if queued_in(id) then return 0 end\n"
    "if redis.call('ZSCORE', P .. 'inflight', id) then\n"
    "  if redis.call('HGET', jk, 'owner') ~= worker then return 0 end\n"
    "  redis.call('ZADD', P .. 'inflight', 'XX', deadline, id)\n"
    "  return 1\n"
    "end\n"
    "redis.call('DEL', jk)\n"
    "redis.call('HSET', jk, 'priority', ARGV[3], 'seq', ARGV[4], 'model', model,\n"
    "           'items', ARGV[6], 'owner', worker)\n"
    "redis.call('ZADD', P .. 'inflight', deadline, id)\n"
    "if model ~= '' then\n"
    "  redis.call('SADD', P .. 'models', model)\n"
    "  hadd(P .. 'model:' .. model, 'processing', 1)\n"
    "end\n"
    "return 1\n";

enum rq_script {
    RQ_S_ENQUEUE,
    RQ_S_CLAIM,
    RQ_S_RENEW,
    RQ_S_RELEASE,
    RQ_S_CANCEL,
    RQ_S_REAP,
    RQ_S_COUNTS,
    RQ_S_MODEL_COUNTS,
    RQ_S_JOB_INFO,
    RQ_S_ADOPT,
    RQ_SCRIPT_COUNT
};

static const struct {
    const char *name;
    const char *body;
} rq_scripts[RQ_SCRIPT_COUNT] = {
    [RQ_S_ENQUEUE] = { "enqueue", rq_lua_enqueue },
    [RQ_S_CLAIM] = { "claim", rq_lua_claim },
    [RQ_S_RENEW] = { "renew", rq_lua_renew },
    [RQ_S_RELEASE] = { "release", rq_lua_release },
    [RQ_S_CANCEL] = { "cancel", rq_lua_cancel },
    [RQ_S_REAP] = { "reap", rq_lua_reap },
    [RQ_S_COUNTS] = { "counts", rq_lua_counts },
    [RQ_S_MODEL_COUNTS] = { "model_counts", rq_lua_model_counts },
    [RQ_S_JOB_INFO] = { "job_info", rq_lua_job_info },
    [RQ_S_ADOPT] = { "adopt", rq_lua_adopt },
};

static const char *const rq_prio_names[BD_PRIO_COUNT] = { "high", "normal", "low" };

/* ---------------------------------------------------------------------------------------
 * Types
 * ------------------------------------------------------------------------------------- */

/* How a reply is turned into what the caller's callback takes. */
enum rq_conv {
    RQ_CONV_RAW,        /* bd_rq_reply_cb, reply as is */
    RQ_CONV_INT,        /* bd_rq_int_cb, integer reply */
    RQ_CONV_OK,         /* bd_rq_int_cb, status reply "OK" -> 1 */
    RQ_CONV_NOT,        /* bd_rq_int_cb, integer reply, 1 when it is 0 (EXISTS -> is_empty) */
    RQ_CONV_MEMORY,     /* bd_rq_int_cb, used_memory from INFO memory */
    RQ_CONV_CLAIM,      /* bd_rq_claim_cb, bulk string or nil */
    RQ_CONV_COUNTS,     /* bd_rq_counts_cb, array of 5 integers */
    RQ_CONV_HANDSHAKE,  /* ours: AUTH, SELECT, SCRIPT LOAD after (re)connect */
    RQ_CONV_INTERNAL,   /* ours: reply ignored (SCRIPT LOAD before a NOSCRIPT retry) */
};

union rq_cb {
    bd_rq_reply_cb raw;
    bd_rq_int_cb num;
    bd_rq_claim_cb claim;
    bd_rq_counts_cb counts;
};

/* One command in flight: hiredis' privdata. Lives on rq's pending list from send to reply,
 * then goes back to the free list (its buffer is kept, so steady state allocates nothing
 * of ours per command). */
struct rq_call {
    struct rq_call *next;
    struct rq_call *prev;
    struct bd_rq *rq;
    enum rq_conv conv;
    union rq_cb cb;
    void *arg;
    uint64_t sent_ms;               /* uv_now() when handed to hiredis */
    int script;                     /* enum rq_script, or -1 when not an EVALSHA */
    bool is_retried;                /* NOSCRIPT retry used up */
    int argc;                       /* EVALSHA argv, kept for the NOSCRIPT retry */
    const char *argv[RQ_MAX_ARGS];
    size_t argvlen[RQ_MAX_ARGS];
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
    char sha[RQ_SCRIPT_COUNT][41];

    struct rq_call *pending_head;   /* send order: head is the oldest */
    struct rq_call *pending_tail;
    struct rq_call *free_list;
    unsigned nfree;

    bd_rq_state_cb state_cb;
    void *state_arg;
    bd_rq_done_cb close_cb;
    void *close_arg;
};

static void rq_connect(struct bd_rq *rq);
static void rq_on_reply(redisAsyncContext *ac, void *r, void *privdata);
static void rq_on_tick(uv_timer_t *timer);
static void rq_on_retry(uv_timer_t *timer);
static void rq_close_unref(struct bd_rq *rq);

/* ---------------------------------------------------------------------------------------
 * Call records
 * ------------------------------------------------------------------------------------- */

static struct rq_call *rq_call_get(struct bd_rq *rq)
{
    struct rq_call *call = rq->free_list;

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
    call->conv = RQ_CONV_RAW;
    call->arg = NULL;
    call->script = -1;
    call->is_retried = false;
    call->argc = 0;
    return call;
}

static void rq_call_put(struct bd_rq *rq, struct rq_call *call)
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

static void rq_pending_add(struct bd_rq *rq, struct rq_call *call)
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

static void rq_pending_remove(struct bd_rq *rq, struct rq_call *call)
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
static int rq_call_keep_args(struct rq_call *call, int argc, const char **argv,
                             const size_t *argvlen, int first)
{
    size_t need = 0;
    char *p;

    assert(argc <= RQ_MAX_ARGS);
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
static int rq_send_on(struct bd_rq *rq, redisAsyncContext *ac, struct rq_call *call, int argc,
                      const char **argv, const size_t *argvlen)
{
    if (redisAsyncCommandArgv(ac, rq_on_reply, call, argc, argv, argvlen) != REDIS_OK)
        return BD_EREDIS;
    rq_pending_add(rq, call);
    return BD_OK;
}

/* Plain command for a caller. On error the call is returned and cb never runs. */
static int rq_command(struct bd_rq *rq, enum rq_conv conv, union rq_cb cb, void *arg, int argc,
                      const char **argv, const size_t *argvlen)
{
    struct rq_call *call;
    int err;

    if (rq->is_closing)
        return BD_ECANCELED;
    if (!rq_is_usable(rq))
        return BD_EREDIS;
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

/* EVALSHA script with ARGV = prefix, args... (no KEYS). */
static int rq_eval(struct bd_rq *rq, enum rq_script script, enum rq_conv conv, union rq_cb cb,
                   void *arg, int nargs, const char **args)
{
    const char *argv[RQ_MAX_ARGS];
    size_t argvlen[RQ_MAX_ARGS];
    struct rq_call *call;
    int argc = 0;
    int err;

    assert(nargs + 4 <= RQ_MAX_ARGS);
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
static int rq_send_internal(struct bd_rq *rq, redisAsyncContext *ac, enum rq_conv conv,
                            int script, int argc, const char **argv)
{
    size_t argvlen[RQ_MAX_ARGS];
    struct rq_call *call = rq_call_get(rq);
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

/* Call the caller's callback for call with status and (when status is BD_OK) reply. */
static void rq_deliver(struct rq_call *call, int status, const redisReply *reply)
{
    long long v = 0;

    switch (call->conv) {
    case RQ_CONV_RAW:
        call->cb.raw(status, status == BD_OK ? reply : NULL, call->arg);
        return;
    case RQ_CONV_INT:
    case RQ_CONV_NOT:
        if (status == BD_OK && !rq_reply_to_ll(reply, &v))
            status = BD_EREDIS;
        if (status == BD_OK && call->conv == RQ_CONV_NOT)
            v = (v == 0);
        call->cb.num(status, status == BD_OK ? v : 0, call->arg);
        return;
    case RQ_CONV_OK:
        if (status == BD_OK && reply->type != REDIS_REPLY_STATUS)
            status = BD_EREDIS;
        call->cb.num(status, status == BD_OK, call->arg);
        return;
    case RQ_CONV_MEMORY:
        if (status == BD_OK && !rq_parse_used_memory(reply, &v))
            status = BD_EREDIS;
        call->cb.num(status, status == BD_OK ? v : 0, call->arg);
        return;
    case RQ_CONV_CLAIM:
        if (status == BD_OK && reply->type == REDIS_REPLY_STRING)
            call->cb.claim(BD_OK, reply->str, call->arg);
        else if (status == BD_OK && reply->type == REDIS_REPLY_NIL)
            call->cb.claim(BD_OK, NULL, call->arg);
        else
            call->cb.claim(status == BD_OK ? BD_EREDIS : status, NULL, call->arg);
        return;
    case RQ_CONV_COUNTS: {
        struct bd_rq_counts c;
        long long f[5];
        if (status == BD_OK) {
            if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 5)
                status = BD_EREDIS;
            for (size_t i = 0; status == BD_OK && i < 5; i++)
                if (!rq_reply_to_ll(reply->element[i], &f[i]))
                    status = BD_EREDIS;
        }
        if (status != BD_OK) {
            call->cb.counts(status, NULL, call->arg);
            return;
        }
        for (int i = 0; i < BD_PRIO_COUNT; i++)
            c.pending[i] = f[i];
        c.inflight = f[3];
        c.queued_items = f[4];
        call->cb.counts(BD_OK, &c, call->arg);
        return;
    }
    case RQ_CONV_HANDSHAKE:
    case RQ_CONV_INTERNAL:
        break;
    }
    assert(!"not a caller's call");
}

static void rq_set_up(struct bd_rq *rq)
{
    rq->is_up = true;
    rq->attempts = 0;
    rq->backoff_ms = RQ_BACKOFF_MIN_MS;
    bd_log(BD_LOG_INFO, "rq", "event=up url=%s worker=%s scripts=%d", rq->url_redacted,
           rq->worker_id, RQ_SCRIPT_COUNT);
    if (rq->state_cb != NULL)
        rq->state_cb(true, rq->state_arg);
}

static void rq_on_handshake_reply(struct bd_rq *rq, redisAsyncContext *ac, struct rq_call *call,
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
                   call->script >= 0 ? rq_scripts[call->script].name : "auth/select",
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
static int rq_retry_noscript(struct bd_rq *rq, redisAsyncContext *ac, struct rq_call *call)
{
    const char *load[3] = { "SCRIPT", "LOAD", rq_scripts[call->script].body };
    int err;

    if (ac != rq->ac || !rq_is_usable(rq))
        return BD_EREDIS;
    bd_log(BD_LOG_INFO, "rq", "event=noscript script=%s action=reload",
           rq_scripts[call->script].name);
    err = rq_send_internal(rq, ac, RQ_CONV_INTERNAL, call->script, 3, load);
    if (err < 0)
        return err;
    call->is_retried = true;
    return rq_send_on(rq, ac, call, call->argc, call->argv, call->argvlen);
}

static void rq_on_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    struct rq_call *call = privdata;
    struct bd_rq *rq = call->rq;
    const redisReply *reply = r;
    int status = BD_OK;

    rq_pending_remove(rq, call);
    if (call->conv == RQ_CONV_HANDSHAKE) {
        rq_on_handshake_reply(rq, ac, call, reply);
        rq_call_put(rq, call);
        return;
    }
    if (call->conv == RQ_CONV_INTERNAL) {
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
               call->script >= 0 ? rq_scripts[call->script].name : "-", reply->str);
        status = BD_EREDIS;
    }
    rq_deliver(call, status, reply);    /* reply is borrowed: callers copy what they keep */
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
        err = rq_send_internal(rq, ac, RQ_CONV_HANDSHAKE, -1, argc, argv);
        if (err < 0)
            return err;
        rq->handshake_left++;
    }
    if (rq->db != 0) {
        snprintf(db, sizeof(db), "%d", rq->db);
        argv[0] = "SELECT";
        argv[1] = db;
        err = rq_send_internal(rq, ac, RQ_CONV_HANDSHAKE, -1, 2, argv);
        if (err < 0)
            return err;
        rq->handshake_left++;
    }
    for (int i = 0; i < RQ_SCRIPT_COUNT; i++) {
        argv[0] = "SCRIPT";
        argv[1] = "LOAD";
        argv[2] = rq_scripts[i].body;
        err = rq_send_internal(rq, ac, RQ_CONV_HANDSHAKE, i, 3, argv);
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

static int rq_hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* strndup with %XX decoding (userinfo of a URL). */
static char *rq_strndup_decoded(const char *s, size_t n)
{
    char *out = malloc(n + 1);
    size_t j = 0;

    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        int hi = i + 2 < n ? rq_hexval((unsigned char)s[i + 1]) : -1;
        int lo = i + 2 < n ? rq_hexval((unsigned char)s[i + 2]) : -1;

        if (s[i] == '%' && hi >= 0 && lo >= 0) {
            out[j++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            out[j++] = s[i];
        }
    }
    out[j] = '\0';
    return out;
}

static bool rq_parse_uint(const char *s, size_t n, long max, long *out)
{
    long v = 0;

    if (n == 0 || n > 10)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    if (v > max)
        return false;
    *out = v;
    return true;
}

/* redis://[[user]:password@]host[:port][/db] into rq's host, port, db, user, password. */
static int rq_parse_url(struct bd_rq *rq, const char *url)
{
    const char *p, *slash, *at, *host, *host_end, *port = NULL;
    size_t host_len;
    long v;

    if (strncmp(url, "redis://", 8) != 0)
        return BD_EINVAL;
    p = url + 8;
    slash = strchr(p, '/');
    at = memchr(p, '@', slash != NULL ? (size_t)(slash - p) : strlen(p));
    if (at != NULL) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (colon == NULL) {
            rq->password = rq_strndup_decoded(p, (size_t)(at - p));
        } else {
            if (colon > p)
                rq->user = rq_strndup_decoded(p, (size_t)(colon - p));
            rq->password = rq_strndup_decoded(colon + 1, (size_t)(at - colon - 1));
        }
        if (rq->password == NULL || (colon != NULL && colon > p && rq->user == NULL))
            return BD_ENOMEM;
        p = at + 1;
    }
    if (*p == '[') {
        host = p + 1;
        host_end = strchr(host, ']');
        if (host_end == NULL)
            return BD_EINVAL;
        p = host_end + 1;
    } else {
        host = p;
        host_end = p + strcspn(p, ":/");
        p = host_end;
    }
    host_len = (size_t)(host_end - host);
    if (host_len == 0)
        return BD_EINVAL;
    if (*p == ':') {
        port = ++p;
        p += strcspn(p, "/");
        if (!rq_parse_uint(port, (size_t)(p - port), 65535, &v) || v == 0)
            return BD_EINVAL;
        rq->port = (int)v;
    } else {
        rq->port = 6379;
    }
    if (*p == '/') {
        p++;
        if (*p != '\0') {
            if (!rq_parse_uint(p, strlen(p), 1 << 20, &v))
                return BD_EINVAL;
            rq->db = (int)v;
        }
    } else if (*p != '\0') {
        return BD_EINVAL;
    }
    rq->host = strndup(host, host_len);
    return rq->host != NULL ? BD_OK : BD_ENOMEM;
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
    struct rq_call *call;

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
    double lease_s, timeout_s;
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
    snprintf(rq->lease_ms, sizeof(rq->lease_ms), "%lld", (long long)(lease_s * 1000.0 + 0.5));
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

/* ---------------------------------------------------------------------------------------
 * Commands
 * ------------------------------------------------------------------------------------- */

int bd_rq_command_argv(struct bd_rq *rq, int argc, const char **argv, const size_t *argvlen,
                       bd_rq_reply_cb cb, void *arg)
{
    if (argc <= 0 || argv == NULL || cb == NULL)
        return BD_EINVAL;
    return rq_command(rq, RQ_CONV_RAW, (union rq_cb){ .raw = cb }, arg, argc, argv, argvlen);
}

int bd_rq_next_seq(struct bd_rq *rq, bd_rq_int_cb cb, void *arg)
{
    const char *argv[2] = { "INCR", rq->seq_key };

    if (cb == NULL)
        return BD_EINVAL;
    return rq_command(rq, RQ_CONV_INT, (union rq_cb){ .num = cb }, arg, 2, argv, NULL);
}

static bool rq_id_ok(const char *id)
{
    return id != NULL && id[0] != '\0';
}

int bd_rq_enqueue(struct bd_rq *rq, const char *job_id, enum bd_priority prio, int64_t seq,
                  const char *model, long long items, bd_rq_int_cb cb, void *arg)
{
    char seq_s[24], items_s[24];
    const char *args[5];

    if (!rq_id_ok(job_id) || (unsigned)prio >= BD_PRIO_COUNT || items < 0 || cb == NULL)
        return BD_EINVAL;
    snprintf(seq_s, sizeof(seq_s), "%" PRId64, seq);
    snprintf(items_s, sizeof(items_s), "%lld", items);
    args[0] = job_id;
    args[1] = rq_prio_names[prio];
    args[2] = seq_s;
    args[3] = model != NULL ? model : "";
    args[4] = items_s;
    return rq_eval(rq, RQ_S_ENQUEUE, RQ_CONV_INT, (union rq_cb){ .num = cb }, arg, 5, args);
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
    return rq_eval(rq, RQ_S_ADOPT, RQ_CONV_INT, (union rq_cb){ .num = cb }, arg, 7, args);
}

int bd_rq_claim(struct bd_rq *rq, bd_rq_claim_cb cb, void *arg)
{
    const char *args[2] = { rq->worker_id, rq->lease_ms };

    if (cb == NULL)
        return BD_EINVAL;
    return rq_eval(rq, RQ_S_CLAIM, RQ_CONV_CLAIM, (union rq_cb){ .claim = cb }, arg, 2, args);
}

int bd_rq_renew(struct bd_rq *rq, const char *job_id, bd_rq_int_cb cb, void *arg)
{
    const char *args[3] = { job_id, rq->worker_id, rq->lease_ms };

    if (!rq_id_ok(job_id) || cb == NULL)
        return BD_EINVAL;
    return rq_eval(rq, RQ_S_RENEW, RQ_CONV_INT, (union rq_cb){ .num = cb }, arg, 3, args);
}

int bd_rq_release(struct bd_rq *rq, const char *job_id, bool requeue, bd_rq_int_cb cb,
                  void *arg)
{
    const char *args[3] = { job_id, rq->worker_id, requeue ? "1" : "0" };

    if (!rq_id_ok(job_id) || cb == NULL)
        return BD_EINVAL;
    return rq_eval(rq, RQ_S_RELEASE, RQ_CONV_INT, (union rq_cb){ .num = cb }, arg, 3, args);
}

int bd_rq_cancel(struct bd_rq *rq, const char *job_id, bd_rq_int_cb cb, void *arg)
{
    const char *args[1] = { job_id };

    if (!rq_id_ok(job_id) || cb == NULL)
        return BD_EINVAL;
    return rq_eval(rq, RQ_S_CANCEL, RQ_CONV_INT, (union rq_cb){ .num = cb }, arg, 1, args);
}

int bd_rq_reap(struct bd_rq *rq, bd_rq_int_cb cb, void *arg)
{
    const char *args[1] = { RQ_REAP_LIMIT };

    if (cb == NULL)
        return BD_EINVAL;
    return rq_eval(rq, RQ_S_REAP, RQ_CONV_INT, (union rq_cb){ .num = cb }, arg, 1, args);
}

int bd_rq_get_counts(struct bd_rq *rq, bd_rq_counts_cb cb, void *arg)
{
    if (cb == NULL)
        return BD_EINVAL;
    return rq_eval(rq, RQ_S_COUNTS, RQ_CONV_COUNTS, (union rq_cb){ .counts = cb }, arg, 0,
                   NULL);
}

int bd_rq_get_model_counts(struct bd_rq *rq, bd_rq_reply_cb cb, void *arg)
{
    if (cb == NULL)
        return BD_EINVAL;
    return rq_eval(rq, RQ_S_MODEL_COUNTS, RQ_CONV_RAW, (union rq_cb){ .raw = cb }, arg, 0,
                   NULL);
}

int bd_rq_get_job_info(struct bd_rq *rq, const char *job_id, bd_rq_reply_cb cb, void *arg)
{
    const char *args[1] = { job_id };

    if (!rq_id_ok(job_id) || cb == NULL)
        return BD_EINVAL;
    return rq_eval(rq, RQ_S_JOB_INFO, RQ_CONV_RAW, (union rq_cb){ .raw = cb }, arg, 1, args);
}

int bd_rq_get_used_memory(struct bd_rq *rq, bd_rq_int_cb cb, void *arg)
{
    const char *argv[2] = { "INFO", "memory" };

    if (cb == NULL)
        return BD_EINVAL;
    return rq_command(rq, RQ_CONV_MEMORY, (union rq_cb){ .num = cb }, arg, 2, argv, NULL);
}

int bd_rq_is_empty(struct bd_rq *rq, bd_rq_int_cb cb, void *arg)
{
    const char *argv[2] = { "EXISTS", rq->alive_key };

    if (cb == NULL)
        return BD_EINVAL;
    return rq_command(rq, RQ_CONV_NOT, (union rq_cb){ .num = cb }, arg, 2, argv, NULL);
}

int bd_rq_mark_alive(struct bd_rq *rq, bd_rq_int_cb cb, void *arg)
{
    const char *argv[3] = { "SET", rq->alive_key, "1" };

    if (cb == NULL)
        return BD_EINVAL;
    return rq_command(rq, RQ_CONV_OK, (union rq_cb){ .num = cb }, arg, 3, argv, NULL);
}
