/* redis_queue.c -- the job queue, leases, reservations and counters in Redis: every key
 * and every Lua script of batchd, and the queue operations built on them.
 *
 * Owns the key layout under the configured prefix (redis_queue.h lists it) and the script
 * bodies; sends through rq_conn.c (bd__rq_eval, bd__rq_command) and turns each reply into
 * what the caller's callback takes (bd__rq_deliver). Loop thread only; never blocks.
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

/* ---------------------------------------------------------------------------------------
 * Lua scripts. Each gets ARGV[1] = key prefix; keys are built from it inside the script
 * (job and model keys are data-dependent, so this is a standalone-Redis design, not
 * cluster-safe). Deadlines come from the server's TIME so that every process agrees.
 * Counters are only changed through helpers that never let them go below zero.
 *
 * The prelude's helpers: model_add_name/model_add change a per-model count and delete the
 * model's hash and its name in {p}models when both counts reach zero (free-form names
 * must not pile up keys); requeue puts a job that is in no queue and not in flight back in
 * its queue at its seq and counts it as pending again (false when its hash lacks priority
 * or seq); unreserve drops a job's item reservation and gives its size; reserved_total
 * drops expired reservations and sums the live ones.
 * ------------------------------------------------------------------------------------- */

#define RQ_LUA_PRELUDE                                                                     \
    "local P = ARGV[1]\n"                                                                  \
    "local PRIOS = {'high', 'normal', 'low'}\n"                                            \
    "local function now_ms()\n"                                                            \
    "  local t = redis.call('TIME')\n"                                                     \
    "  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"                 \
    "end\n"                                                                                \
    "local function int(n) return string.format('%d', n) end\n"                            \
    "local function num(v) return tonumber(v or '0') or 0 end\n"                           \
    "local function hadd(key, field, n)\n"                                                 \
    "  local v = num(redis.call('HGET', key, field))\n"                                    \
    "  if v + n < 0 then n = -v end\n"                                                     \
    "  if n ~= 0 then redis.call('HINCRBY', key, field, int(n)) end\n"                     \
    "end\n"                                                                                \
    "local function add(key, n)\n"                                                         \
    "  local v = num(redis.call('GET', key))\n"                                            \
    "  if v + n < 0 then n = -v end\n"                                                     \
    "  if n ~= 0 then redis.call('INCRBY', key, int(n)) end\n"                             \
    "end\n"                                                                                \
    "local function model_add_name(m, field, n)\n"                                         \
    "  if not m or m == '' then return end\n"                                              \
    "  local mk = P .. 'model:' .. m\n"                                                    \
    "  hadd(mk, field, n)\n"                                                               \
    "  local v = redis.call('HMGET', mk, 'pending', 'processing')\n"                       \
    "  if num(v[1]) <= 0 and num(v[2]) <= 0 then\n"                                        \
    "    redis.call('DEL', mk)\n"                                                          \
    "    redis.call('SREM', P .. 'models', m)\n"                                           \
    "  else\n"                                                                             \
    "    redis.call('SADD', P .. 'models', m)\n"                                           \
    "  end\n"                                                                              \
    "end\n"                                                                                \
    "local function model_add(jk, field, n)\n"                                             \
    "  model_add_name(redis.call('HGET', jk, 'model'), field, n)\n"                        \
    "end\n"                                                                                \
    "local function items_of(jk) return num(redis.call('HGET', jk, 'items')) end\n"        \
    "local function parked_key(prio, m) return P .. 'pq:' .. prio .. ':' .. m end\n"       \
    "local function queued_in(id)\n"                                                       \
    "  for _, p in ipairs(PRIOS) do\n"                                                     \
    "    if redis.call('ZSCORE', P .. 'q:' .. p, id) then return p end\n"                  \
    "  end\n"                                                                              \
    "  local m = redis.call('HGET', P .. 'job:' .. id, 'model')\n"                         \
    "  if m and redis.call('SISMEMBER', P .. 'parked', m) == 1 then\n"                     \
    "    for _, p in ipairs(PRIOS) do\n"                                                   \
    "      if redis.call('ZSCORE', parked_key(p, m), id) then return p end\n"              \
    "    end\n"                                                                            \
    "  end\n"                                                                              \
    "  return nil\n"                                                                       \
    "end\n"                                                                                \
    "local function position(prio, id)\n"                                                  \
    "  local pos = 0\n"                                                                    \
    "  for _, p in ipairs(PRIOS) do\n"                                                     \
    "    local q = P .. 'q:' .. p\n"                                                       \
    "    if p == prio then\n"                                                              \
    "      local r = redis.call('ZRANK', q, id)\n"                                         \
    "      if r then return pos + r + 1 end\n"                                             \
    "      return pos + redis.call('ZCARD', q) + 1\n"   /* parked: behind its queue */     \
    "    end\n"                                                                            \
    "    pos = pos + redis.call('ZCARD', q)\n"                                             \
    "  end\n"                                                                              \
    "  return 0\n"                                                                         \
    "end\n"                                                                                \
    "local function requeue(jk, id)\n"                                                     \
    "  local v = redis.call('HMGET', jk, 'priority', 'seq')\n"                             \
    "  if not v[1] or not v[2] then return false end\n"                                    \
    "  redis.call('HDEL', jk, 'requeue')\n"                                                \
    "  redis.call('ZADD', P .. 'q:' .. v[1], v[2], id)\n"                                  \
    "  model_add(jk, 'pending', 1)\n"                                                      \
    "  add(P .. 'queued_items', items_of(jk))\n"                                           \
    "  return true\n"                                                                      \
    "end\n"                                                                                \
    "local function unreserve(id)\n"                                                       \
    "  local n = redis.call('HGET', P .. 'reserved_items', id)\n"                          \
    "  if not n then return 0 end\n"                                                       \
    "  redis.call('HDEL', P .. 'reserved_items', id)\n"                                    \
    "  redis.call('ZREM', P .. 'reserved', id)\n"                                          \
    "  return num(n)\n"                                                                    \
    "end\n"                                                                                \
    "local function reserved_total()\n"                                                    \
    "  local gone = redis.call('ZRANGEBYSCORE', P .. 'reserved', '-inf', int(now_ms()))\n" \
    "  for _, id in ipairs(gone) do unreserve(id) end\n"                                   \
    "  local total = 0\n"                                                                  \
    "  for _, n in ipairs(redis.call('HVALS', P .. 'reserved_items')) do total = total + num(n) end\n"\
    "  return total\n"                                                                     \
    "end\n"

/* enqueue(id, prio name, seq, model ('' = none), items, retry ('1'/'0')): queue one job.
 * Returns the 1-based position; 0 when the job is in flight. The job's reservation, if
 * any, is taken over by the job's own count (or dropped when it is counted already). A
 * retry of a job still in flight under its previous run is marked 'requeue': the old
 * owner's release (or the reaper) puts it in the queue with these values. */
#define RQ_LUA_ENQUEUE_FN                                                                  \
    "local function enqueue(id, prio, seq, model, items, retry)\n"                        \
    "  unreserve(id)\n"                                                                   \
    "  local q = queued_in(id)\n"                                                         \
    "  if q then return position(q, id) end\n"                                            \
    "  local jk = P .. 'job:' .. id\n"                                                    \
    "  if redis.call('ZSCORE', P .. 'inflight', id) then\n"                               \
    "    if retry ~= '1' then return 0 end\n"                                             \
    "    if (redis.call('HGET', jk, 'model') or '') ~= model then\n"                      \
    "      model_add(jk, 'processing', -1)\n"                                             \
    "      redis.call('HSET', jk, 'model', model)\n"                                      \
    "      model_add(jk, 'processing', 1)\n"                                              \
    "    end\n"                                                                           \
    "    redis.call('HSET', jk, 'priority', prio, 'seq', seq, 'items', items, 'requeue', '1')\n"\
    "    return 0\n"                                                                      \
    "  end\n"                                                                             \
    "  redis.call('DEL', jk)\n"                                                           \
    "  redis.call('HSET', jk, 'priority', prio, 'seq', seq, 'model', model, 'items', items)\n"\
    "  redis.call('ZADD', P .. 'q:' .. prio, seq, id)\n"                                  \
    "  model_add_name(model, 'pending', 1)\n"                                             \
    "  add(P .. 'queued_items', num(items))\n"                                            \
    "  return position(prio, id)\n"                                                       \
    "end\n"

/* ARGV: prefix, id, prio name, seq, model, items, retry: enqueue() of one job. */
static const char rq_lua_enqueue[] = RQ_LUA_PRELUDE RQ_LUA_ENQUEUE_FN
    "return enqueue(ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])\n";

/* ARGV: prefix, jobs: every job's id, prio name, seq, model and items, each field a
 * netstring-like "<length>:<bytes>" (so a model name may hold any byte), five per job.
 * enqueue() of each job in order (not a retry); returns their positions in that order. */
static const char rq_lua_enqueue_many[] = RQ_LUA_PRELUDE RQ_LUA_ENQUEUE_FN
    "local s, i, f = ARGV[2], 1, {}\n"
    "while i <= #s do\n"
    "  local c = string.find(s, ':', i, true)\n"
    "  local n = tonumber(string.sub(s, i, c - 1))\n"
    "  f[#f + 1] = string.sub(s, c + 1, c + n)\n"
    "  i = c + n + 1\n"
    "end\n"
    "local out = {}\n"
    "for k = 1, #f - 4, 5 do\n"
    "  out[#out + 1] = enqueue(f[k], f[k + 1], f[k + 2], f[k + 3], f[k + 4], '0')\n"
    "end\n"
    "return out\n";

/* ARGV: prefix, worker, lease_ms[, max[, skip]]. Takes jobs in queue order (high, normal,
 * low; oldest first within one) and puts each in flight with its own lease. Without max:
 * the claimed id or nil (bd_rq_claim). With max (bd_rq_claim_many): an array of at most max
 * ids, empty when every queue is empty. skip: model names, each "<length>:<bytes>", whose
 * jobs are not taken (paused models): a job of one met at the head of a queue is parked,
 * moved to {p}pq:<prio>:<model> with its seq, so it is looked at once, not on every claim;
 * each run parks at most RQ_CLAIM_SCAN jobs (a model lookup each), the next run goes on
 * (without skip: one ZPOPMIN per queue, as ever). First, the parked jobs of every model
 * not in skip (resumed) go back in their queues, RQ_UNPARK_MAX per model and priority per
 * run, in seq order. Parked jobs stay pending: in the counts, cancellable, found by
 * queued_in. One script run, so each id is taken exactly once however many processes
 * claim at the same time. */
#define RQ_CLAIM_SCAN "1000"
#define RQ_UNPARK_MAX "5000"
static const char rq_lua_claim[] = RQ_LUA_PRELUDE
    "local limit = tonumber(ARGV[4] or '1')\n"
    "local deadline = int(now_ms() + tonumber(ARGV[3]))\n"
    "local out = {}\n"
    "local skip, cut = nil, false\n"
    "if ARGV[5] and ARGV[5] ~= '' then\n"
    "  skip = {}\n"
    "  local s, i = ARGV[5], 1\n"
    "  while i <= #s do\n"
    "    local c = string.find(s, ':', i, true)\n"
    "    local n = tonumber(string.sub(s, i, c - 1))\n"
    "    skip[string.sub(s, c + 1, c + n)] = true\n"
    "    i = c + n + 1\n"
    "  end\n"
    "end\n"
    "for _, m in ipairs(redis.call('SMEMBERS', P .. 'parked')) do\n"
    "  if not (skip and skip[m]) then\n"
    "    local left = false\n"
    "    for _, p in ipairs(PRIOS) do\n"
    "      local pk = parked_key(p, m)\n"
    "      local r = redis.call('ZRANGE', pk, 0, " RQ_UNPARK_MAX " - 1, 'WITHSCORES')\n"
    "      for i = 1, #r, 2 do redis.call('ZADD', P .. 'q:' .. p, r[i + 1], r[i]) end\n"
    "      if #r > 0 then redis.call('ZREMRANGEBYRANK', pk, 0, #r / 2 - 1) end\n"
    "      if redis.call('EXISTS', pk) == 1 then left = true end\n"
    "    end\n"
    "    if not left then redis.call('SREM', P .. 'parked', m) end\n"
    "  end\n"
    "end\n"
    "local function take(id)\n"
    "  local jk = P .. 'job:' .. id\n"
    "  redis.call('ZADD', P .. 'inflight', deadline, id)\n"
    "  redis.call('HSET', jk, 'owner', ARGV[2])\n"
    "  redis.call('HDEL', jk, 'requeue')\n"
    "  model_add(jk, 'processing', 1)\n"
    "  model_add(jk, 'pending', -1)\n"
    "  add(P .. 'queued_items', -items_of(jk))\n"
    "  out[#out + 1] = id\n"
    "end\n"
    "for _, p in ipairs(PRIOS) do\n"
    "  if #out >= limit then break end\n"
    "  local q = P .. 'q:' .. p\n"
    "  if not skip then\n"
    "    local r = redis.call('ZPOPMIN', q, limit - #out)\n"
    "    for i = 1, #r, 2 do take(r[i]) end\n"
    "  elseif not cut then\n"
    "    local seen = 0\n"
    "    while #out < limit and seen < " RQ_CLAIM_SCAN " do\n"
    "      local r = redis.call('ZRANGE', q, 0, 63, 'WITHSCORES')\n"
    "      if #r == 0 then break end\n"
    "      for i = 1, #r, 2 do\n"
    "        if #out >= limit or seen >= " RQ_CLAIM_SCAN " then break end\n"
    "        local id = r[i]\n"
    "        local m = redis.call('HGET', P .. 'job:' .. id, 'model') or ''\n"
    "        seen = seen + 1\n"
    "        redis.call('ZREM', q, id)\n"
    "        if skip[m] then\n"
    "          redis.call('ZADD', parked_key(p, m), r[i + 1], id)\n"
    "          redis.call('SADD', P .. 'parked', m)\n"
    "        else\n"
    "          take(id)\n"
    "        end\n"
    "      end\n"
    "    end\n"
    "    cut = #out < limit and seen >= " RQ_CLAIM_SCAN "\n"
    "  end\n"
    "end\n"
    "if ARGV[4] then\n"
    "  if cut then out[#out + 1] = '' end\n"   /* not an id: the scan bound was hit */
    "  return out\n"
    "end\n"
    "return out[1] or false\n";

/* ARGV: prefix, id, worker, lease_ms. Returns 1 renewed, 2 renewed + cancel, 0 lost, 3 not
 * known: Redis lost its keys (no alive marker) and nobody queued the job since, so the
 * lease is not another worker's; the owner's rebuild adopts it. */
static const char rq_lua_renew[] = RQ_LUA_PRELUDE
    "local id = ARGV[2]\n"
    "local jk = P .. 'job:' .. id\n"
    "if not redis.call('ZSCORE', P .. 'inflight', id) then\n"
    "  if redis.call('EXISTS', P .. 'alive') == 0 and not queued_in(id) then return 3 end\n"
    "  return 0\n"
    "end\n"
    "if redis.call('HGET', jk, 'owner') ~= ARGV[3] then return 0 end\n"
    "redis.call('ZADD', P .. 'inflight', 'XX', int(now_ms() + tonumber(ARGV[4])), id)\n"
    "if redis.call('HGET', jk, 'cancel') == '1' then return 2 end\n"
    "return 1\n";

/* ARGV: prefix, id, worker, requeue ('1'/'0'). Returns 1 done, 0 not ours (or nothing to
 * requeue). Only the owner's release takes a job out of flight; a job marked 'requeue' (a
 * retry while this run was finishing) goes back in its queue whatever requeue says. A job
 * no longer in flight (its lease was reaped) but waiting in a queue belongs to whoever
 * claims it next and is left alone: a release never removes a queue entry. */
static const char rq_lua_release[] = RQ_LUA_PRELUDE
    "local id, requeue_it = ARGV[2], ARGV[4] == '1'\n"
    "local jk = P .. 'job:' .. id\n"
    "if redis.call('ZSCORE', P .. 'inflight', id) then\n"
    "  if redis.call('HGET', jk, 'owner') ~= ARGV[3] then return 0 end\n"
    "  redis.call('ZREM', P .. 'inflight', id)\n"
    "  redis.call('HDEL', jk, 'owner')\n"
    "  model_add(jk, 'processing', -1)\n"
    "  if redis.call('HGET', jk, 'requeue') == '1' then\n"
    "    redis.call('HDEL', jk, 'cancel')\n"
    "    requeue_it = true\n"
    "  end\n"
    "elseif queued_in(id) then\n"
    "  return 0\n"
    "elseif requeue_it and redis.call('EXISTS', jk) == 0 then\n"
    "  return 0\n"
    "end\n"
    "if requeue_it and requeue(jk, id) then return 1 end\n"
    "redis.call('DEL', jk)\n"
    "return 1\n";

/* ARGV: prefix, id. Returns 1 removed from its queue (or a pending retry of a job still in
 * flight dropped), 2 flagged in flight, 0 unknown. */
static const char rq_lua_cancel[] = RQ_LUA_PRELUDE
    "local id = ARGV[2]\n"
    "local jk = P .. 'job:' .. id\n"
    "local m = redis.call('HGET', jk, 'model') or ''\n"
    "for _, p in ipairs(PRIOS) do\n"
    "  if redis.call('ZREM', P .. 'q:' .. p, id) == 1 or\n"
    "     redis.call('ZREM', parked_key(p, m), id) == 1 then\n"
    "    model_add(jk, 'pending', -1)\n"
    "    add(P .. 'queued_items', -items_of(jk))\n"
    "    redis.call('DEL', jk)\n"
    "    return 1\n"
    "  end\n"
    "end\n"
    "if redis.call('ZSCORE', P .. 'inflight', id) then\n"
    "  redis.call('HSET', jk, 'cancel', '1')\n"
    "  if redis.call('HDEL', jk, 'requeue') == 1 then return 1 end\n"
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
    "  if redis.call('HGET', jk, 'requeue') == '1' then redis.call('HDEL', jk, 'cancel') end\n"
    "  if not requeue(jk, id) then redis.call('DEL', jk) end\n"
    "end\n"
    "return #ids\n";

/* ARGV: prefix. Returns [high, normal, low, inflight, queued_items, reserved_items]. */
static const char rq_lua_counts[] = RQ_LUA_PRELUDE
    "local reserved = reserved_total()\n"
    "local n = {}\n"
    "for i, p in ipairs(PRIOS) do n[i] = redis.call('ZCARD', P .. 'q:' .. p) end\n"
    "for _, m in ipairs(redis.call('SMEMBERS', P .. 'parked')) do\n"
    "  for i, p in ipairs(PRIOS) do n[i] = n[i] + redis.call('ZCARD', parked_key(p, m)) end\n"
    "end\n"
    "return { n[1], n[2], n[3], redis.call('ZCARD', P .. 'inflight'),\n"
    "         num(redis.call('GET', P .. 'queued_items')), reserved }\n";

/* ARGV: prefix. Returns [model, pending, processing, ...] sorted by model name: only the
 * models with a job queued or in flight (the others' keys are gone). */
static const char rq_lua_model_counts[] = RQ_LUA_PRELUDE
    "local names = redis.call('SMEMBERS', P .. 'models')\n"
    "table.sort(names)\n"
    "local out = {}\n"
    "for _, m in ipairs(names) do\n"
    "  local v = redis.call('HMGET', P .. 'model:' .. m, 'pending', 'processing')\n"
    "  out[#out + 1] = m\n"
    "  out[#out + 1] = num(v[1])\n"
    "  out[#out + 1] = num(v[2])\n"
    "end\n"
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
    "model_add_name(model, 'processing', 1)\n"
    "return 1\n";

/* ARGV: prefix, at_least. Raises {p}seq to at least at_least; returns the sequence. */
static const char rq_lua_restore_seq[] = RQ_LUA_PRELUDE
    "local want = tonumber(ARGV[2])\n"
    "local cur = num(redis.call('GET', P .. 'seq'))\n"
    "if cur < want then\n"
    "  redis.call('SET', P .. 'seq', ARGV[2])\n"
    "  cur = want\n"
    "end\n"
    "return cur\n";

/* ARGV: prefix, id. Returns [deadline_ms, owner], nil for each when not in flight. */
static const char rq_lua_lease[] = RQ_LUA_PRELUDE
    "local d = redis.call('ZSCORE', P .. 'inflight', ARGV[2])\n"
    "if not d then return { false, false } end\n"
    "return { d, redis.call('HGET', P .. 'job:' .. ARGV[2], 'owner') }\n";

/* reserve(id, n, max, ttl_ms): check and reserve in one step: granted when the items of
 * queued jobs plus live reservations plus n stay within max. A repeat for the same id
 * replaces its earlier reservation. Returns granted (0/1) and the total after (or now,
 * refused). */
#define RQ_LUA_RESERVE_FN                                                                  \
    "local function reserve(id, n, max, ttl)\n"                                           \
    "  unreserve(id)\n"                                                                   \
    "  local total = num(redis.call('GET', P .. 'queued_items')) + reserved_total()\n"     \
    "  if total + n > max then return 0, total end\n"                                     \
    "  redis.call('ZADD', P .. 'reserved', int(now_ms() + ttl), id)\n"                    \
    "  redis.call('HSET', P .. 'reserved_items', id, int(n))\n"                           \
    "  return 1, total + n\n"                                                             \
    "end\n"

/* ARGV: prefix, id, n, max, ttl_ms. Returns [granted 0/1, total]: reserve(). */
static const char rq_lua_reserve[] = RQ_LUA_PRELUDE RQ_LUA_RESERVE_FN
    "local granted, total = reserve(ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]),\n"
    "                               tonumber(ARGV[5]))\n"
    "return { granted, total }\n";

/* ARGV: prefix, id_prefix, n ('' = take the seq only), max, ttl_ms. The next seq, the job
 * id it makes (id_prefix, then the seq zero-padded to three digits at least) and, when n
 * is given, reserve() of n items under that id, in one step. Returns [seq, id, granted
 * 0/1, total] (granted 1 and total 0 without n). */
static const char rq_lua_reserve_next[] = RQ_LUA_PRELUDE RQ_LUA_RESERVE_FN
    "local seq = redis.call('INCR', P .. 'seq')\n"
    "local id = ARGV[2] .. string.format('%03d', seq)\n"
    "if ARGV[3] == '' then return { seq, id, 1, 0 } end\n"
    "local granted, total = reserve(id, tonumber(ARGV[3]), tonumber(ARGV[4]),\n"
    "                               tonumber(ARGV[5]))\n"
    "return { seq, id, granted, total }\n";

/* ARGV: prefix, id. Returns the items the dropped reservation held (0: none). */
static const char rq_lua_unreserve[] = RQ_LUA_PRELUDE
    "return unreserve(ARGV[2])\n";

/* ARGV: prefix, worker, token. A rebuild's start: this worker's mark, field worker of the
 * hash {p}rebuilding = "<token>:<ms>", which a FLUSHALL during the rebuild takes away with
 * the jobs queued so far. No TTL (a volatile-* eviction policy would evict the only key
 * with one); marks over a day old (a process that died mid-rebuild) are dropped here.
 * Returns 1. */
static const char rq_lua_rebuild_begin[] = RQ_LUA_PRELUDE
    "local h, now = P .. 'rebuilding', now_ms()\n"
    "local all = redis.call('HGETALL', h)\n"
    "for i = 1, #all, 2 do\n"
    "  local t = tonumber(string.match(all[i + 1], ':(%d+)$') or '0')\n"
    "  if t < now - 86400000 then redis.call('HDEL', h, all[i]) end\n"
    "end\n"
    "redis.call('HSET', h, ARGV[2], ARGV[3] .. ':' .. int(now))\n"
    "return 1\n";

/* ARGV: prefix, worker, token. A rebuild's end: the alive marker goes in only when the
 * worker's mark with this token is still there. Returns 1 marked, 0 when Redis lost its
 * keys during the rebuild (or another rebuild under the same worker id took the mark). */
static const char rq_lua_rebuild_end[] = RQ_LUA_PRELUDE
    "local h = P .. 'rebuilding'\n"
    "local v = redis.call('HGET', h, ARGV[2])\n"
    "if not v or string.sub(v, 1, #ARGV[3] + 1) ~= ARGV[3] .. ':' then return 0 end\n"
    "redis.call('HDEL', h, ARGV[2])\n"
    "redis.call('SET', P .. 'alive', '1')\n"
    "return 1\n";

const struct bd__rq_script_def bd__rq_scripts[BD__RQ_SCRIPT_COUNT] = {
    [BD__RQ_S_ENQUEUE] = { "enqueue", rq_lua_enqueue },
    [BD__RQ_S_CLAIM] = { "claim", rq_lua_claim },
    [BD__RQ_S_RENEW] = { "renew", rq_lua_renew },
    [BD__RQ_S_RELEASE] = { "release", rq_lua_release },
    [BD__RQ_S_CANCEL] = { "cancel", rq_lua_cancel },
    [BD__RQ_S_REAP] = { "reap", rq_lua_reap },
    [BD__RQ_S_COUNTS] = { "counts", rq_lua_counts },
    [BD__RQ_S_MODEL_COUNTS] = { "model_counts", rq_lua_model_counts },
    [BD__RQ_S_ADOPT] = { "adopt", rq_lua_adopt },
    [BD__RQ_S_RESTORE_SEQ] = { "restore_seq", rq_lua_restore_seq },
    [BD__RQ_S_LEASE] = { "lease", rq_lua_lease },
    [BD__RQ_S_RESERVE] = { "reserve", rq_lua_reserve },
    [BD__RQ_S_UNRESERVE] = { "unreserve", rq_lua_unreserve },
    [BD__RQ_S_RESERVE_NEXT] = { "reserve_next", rq_lua_reserve_next },
    [BD__RQ_S_ENQUEUE_MANY] = { "enqueue_many", rq_lua_enqueue_many },
    [BD__RQ_S_REBUILD_BEGIN] = { "rebuild_begin", rq_lua_rebuild_begin },
    [BD__RQ_S_REBUILD_END] = { "rebuild_end", rq_lua_rebuild_end },
};

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
