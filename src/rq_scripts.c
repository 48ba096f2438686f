/* rq_scripts.c -- every Lua script of the Redis queue (redis_queue.c's operations send
 * them; rq_conn.c loads them at each connect): the table bd__rq_scripts.
 *
 * Owns the script bodies and with them the key layout under the configured prefix
 * (redis_queue.h lists the keys). No code runs here: constant data, any thread.
 * SPDX-License-Identifier: MIT
 */
#include "rq_internal.h"

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
