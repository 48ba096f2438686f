#!/usr/bin/env bash
# run.sh -- batchd's benchmark: every scenario against its ceiling or peer, in one run.
#
#   bench/run.sh [--quick | --smoke] [--only s1,s2] [build-dir]     (make bench)
#
#   (default)  full run, 3 runs per measured point, medians; under 20 minutes
#   --quick    smaller sizes, 1 run; under 3 minutes
#   --smoke    tiny sizes against the stack that scripts/test.sh started (BATCH_REDIS_URL,
#              BATCH_POSTGRES_URL); no npm, nginx or gnuplot needed; seconds (ctest bench_smoke)
#   --only     a comma list of scenarios: insert,submit_rss,embed,lifecycle,api,scale,memory,
#              hostile,openai_batch (and insert_rss: only the big-vs-small RSS part of insert)
#   openai_batch  N one-input embedding requests (full 50,000, quick 20,000, smoke 500) through
#              the OpenAI Batch API (upload, create, poll, download the output file) and the
#              same inputs through a native streamed bulk_embed job (submit, wait, results as
#              NDJSON), on the built-in hashing model (384 dims); phases, peak RSS, loop lag.
#   hostile    1,000 keep-alive clients + 1,000 slowloris connections against one batchd for
#              60 s (quick: 15 s; `make load`); the run exits 1 if /healthz failed, batchd ran
#              out of descriptors, the job run meanwhile did not finish or SIGTERM took over
#              10 s. Not in --smoke unless named in --only. BD_HOSTILE_CLIENTS, _SLOW,
#              _DURATION, _MAX_CONNECTIONS (4096), _MIX (header,body_json,body_ndjson,noread
#              shares: 5,2,1,2) and _ARGS (more bench_hostile options) change it.
#
# Full and quick runs start their own Redis and PostgreSQL (scripts/stack.sh, name "bench",
# ports 16390 / 15440, or BD_BENCH_REDIS_PORT / BD_BENCH_PG_PORT for a second run on the
# machine; wiped first), the fake model server and Release batchd processes,
# install the Debian tools they need (scripts/deps.sh) and the BullMQ peer (npm ci), and
# stop everything they started on exit. Results go to bench/results/<UTC date>/:
# results.json, results.md, raw.ndjson (every measurement), *.png plots and logs/.
# All traffic stays on 127.0.0.1; every tool stops by itself (count, duration, timeout) and
# a watchdog ends the whole run if it overruns.
set -euo pipefail

mode=full
only=all
BENCH_REDIS_PORT=${BD_BENCH_REDIS_PORT:-16390}
BENCH_PG_PORT=${BD_BENCH_PG_PORT:-15440}
build=
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) mode=quick ;;
    --smoke) mode=smoke ;;
    --only) only=${2:?--only needs a list}; shift ;;
    -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "run.sh: unknown option $1" >&2; exit 2 ;;
    *) build=$1 ;;
  esac
  shift
done

top=$(cd "$(dirname "$0")/.." && pwd)
build=${build:-build-release}
case "$build" in /*) ;; *) build="$top/$build" ;; esac
BATCHD=${BD_BATCHD_BIN:-$build/batchd}
FAKE=${BD_FAKE_MODEL_BIN:-$build/test/fake_model/fake_model}
BIN=${BD_BENCH_BIN_DIR:-$build/bench}
for b in "$BATCHD" "$FAKE" "$BIN/bench_load" "$BIN/bench_jobs" "$BIN/bench_copy" "$BIN/bench_hostile" \
         "$BIN/bench_openai"; do
  [ -x "$b" ] || { echo "run.sh: $b not found: build first (make release)" >&2; exit 2; }
done

# ---- sizes ---------------------------------------------------------------------------------
# Each scenario's figures and its ceiling/peer are measured in the same run, RUNS times,
# interleaved (batchd, ceiling, peer, batchd, ...), and the median is reported.
case "$mode" in
  full)
    RUNS=3; LIMIT_S=1500
    INS_JOBS=20; INS_ITEMS=5000; INS_DIM=768; INS_BATCH=500; INS_CONC=4
    INSMEM_BIG=200000; INSMEM_SMALL=2000; INSMEM_DIM=768
    SUB_BIG=2000000000; SUB_SMALL=2000000; SUB_DIM=768; SUB_JSON_FALLBACK=240000000
    # batchd holds a JSON body whole while it scans it (2.6 GB peak for 200,000 x 768 floats,
    # see docs/PERFORMANCE.md): on a smaller machine measure 100,000 instead of failing.
    [ "$(awk '/MemAvailable/ { print int($2 / 1048576) }' /proc/meminfo)" -ge 18 ] || INSMEM_BIG=100000
    EMB_JOBS=20; EMB_ITEMS=2000; EMB_BATCH=100; EMB_CONC=4
    LIFE_JOBS=5000; LIFE_CONC=8; RB_N=200000
    API_RATES="1000 2500 5000 10000 15000 20000"; API_DUR=5; API_CONNS=64
    SCALE_RUNS=1
    MEM_BIG=1000000; MEM_SMALL=1000; MEM_DIM=8; MEM_BATCH=1000
    HOST_CLIENTS=1000; HOST_SLOW=1000; HOST_DUR=60
    OAI_LINES=50000
    ;;
  quick)
    RUNS=1; LIMIT_S=300
    INS_JOBS=4; INS_ITEMS=2000; INS_DIM=768; INS_BATCH=500; INS_CONC=4
    INSMEM_BIG=20000; INSMEM_SMALL=2000; INSMEM_DIM=768
    SUB_BIG=256000000; SUB_SMALL=2000000; SUB_DIM=768; SUB_JSON_FALLBACK=240000000
    EMB_JOBS=4; EMB_ITEMS=1000; EMB_BATCH=100; EMB_CONC=4
    LIFE_JOBS=1000; LIFE_CONC=8; RB_N=50000
    API_RATES="1000 5000 10000"; API_DUR=3; API_CONNS=64
    SCALE_RUNS=1
    MEM_BIG=100000; MEM_SMALL=1000; MEM_DIM=8; MEM_BATCH=1000
    HOST_CLIENTS=1000; HOST_SLOW=1000; HOST_DUR=15
    OAI_LINES=20000
    ;;
  smoke)
    RUNS=1; LIMIT_S=100
    INS_JOBS=2; INS_ITEMS=100; INS_DIM=8; INS_BATCH=50; INS_CONC=2
    INSMEM_BIG=2000; INSMEM_SMALL=100; INSMEM_DIM=8
    SUB_BIG=2000000; SUB_SMALL=100000; SUB_DIM=8; SUB_JSON_FALLBACK=1000000
    EMB_JOBS=1; EMB_ITEMS=200; EMB_BATCH=100; EMB_CONC=2
    LIFE_JOBS=40; LIFE_CONC=4; RB_N=2000
    API_RATES="200"; API_DUR=1; API_CONNS=8
    SCALE_RUNS=1
    MEM_BIG=5000; MEM_SMALL=100; MEM_DIM=8; MEM_BATCH=1000
    HOST_CLIENTS=50; HOST_SLOW=50; HOST_DUR=5
    OAI_LINES=500
    ;;
esac
want() { [ "$only" = all ] || [[ ",$only," == *",$1,"* ]]; }
# The hostile scenario's sizes can be set from outside (make load passes them through).
HOST_CLIENTS=${BD_HOSTILE_CLIENTS:-$HOST_CLIENTS}; HOST_SLOW=${BD_HOSTILE_SLOW:-$HOST_SLOW}
HOST_DUR=${BD_HOSTILE_DURATION:-$HOST_DUR}
HOST_MAXCONN=${BD_HOSTILE_MAX_CONNECTIONS:-4096}   # batchd's http.max_connections for it
OAI_LINES=${BD_OPENAI_BATCH_LINES:-$OAI_LINES}     # openai_batch's requests (50,000 at most)
HOST_MIX=${BD_HOSTILE_MIX:-5,2,1,2}   # slow connections: header,body_json,body_ndjson,noread
read -r -a HOST_ARGS <<<"${BD_HOSTILE_ARGS:-}"     # more bench_hostile options (--help)
HOSTILE_FAILED=0

# ---- output and cleanup ----------------------------------------------------------------------
stamp=$(date -u +%Y%m%dT%H%M%SZ)
# The commit measured: read now, not at the end (others may commit while the bench runs).
commit=$(git -C "$top" rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git -C "$top" status --porcelain -- src include 2>/dev/null | grep -q . && echo "+dirty" || true)
if [ "$mode" = smoke ]; then
  out=${BD_BENCH_OUT:-$(mktemp -d /tmp/batchd-bench-smoke.XXXXXX)}
else
  out="$top/bench/results/$stamp${mode:+-$mode}"
fi
mkdir -p "$out/logs"
work=$(mktemp -d /tmp/batchd-bench.XXXXXX)
chmod 755 "$work"
raw="$out/raw.ndjson"
: > "$raw"
tag="b$$"                                 # unique names for this run's tables and collections

# One full or quick run at a time: they share the stack's fixed ports and wipe it. (Taken
# before the watchdog starts, so waiting here does not eat the run's time.)
if [ "$mode" != smoke ]; then
  mkdir -p "$top/var"
  exec 9>"$top/var/bench.lock"
  if ! flock -n 9; then
    echo "bench: another bench run holds var/bench.lock; waiting (at most 15 minutes)" >&2
    flock -w 900 9 || { echo "run.sh: another bench run is still going" >&2; exit 1; }
  fi
fi

pids=()                                   # every process this script started
stack_started=0
watchdog=
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  if [ "$mode" = smoke ] && [ -n "${PGURL:-}" ]; then
    psql "$PGURL" -qAt -c "DROP TABLE IF EXISTS bench_bin_$tag, bench_txt_$tag" >/dev/null 2>&1 || true
  fi
  if [ $stack_started = 1 ]; then
    BD_REDIS_PORT=$BENCH_REDIS_PORT BD_PG_PORT=$BENCH_PG_PORT "$top/scripts/stack.sh" stop bench >/dev/null 2>&1 || true
  fi
  if [ -n "$watchdog" ]; then
    pkill -TERM -P "$watchdog" 2>/dev/null || true    # its sleep
    kill "$watchdog" 2>/dev/null || true
  fi
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT
trap 'echo "run.sh: interrupted" >&2; exit 130' INT TERM
# The watchdog: past the limit, end this script and the processes it started (its children).
( exec 9>&-                             # the watchdog must not hold the run lock
  sleep "$LIMIT_S" </dev/null >/dev/null 2>&1 &
  wait $!
  echo "run.sh: over the ${LIMIT_S} s limit, stopping" >&2
  kill -TERM $$; pkill -TERM -P $$ ) &
watchdog=$!

log() { printf '%s bench: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ---- tools -----------------------------------------------------------------------------------
# Debian packages for the peers and plots, asked for only when their command is missing (a
# node/npm from elsewhere must not be "replaced" by Debian's, which may conflict with it).
if [ "$mode" != smoke ]; then
  need=()
  for pair in jq:jq gnuplot:gnuplot-nox wrk:wrk nginx:nginx-light node:nodejs npm:npm \
              redis-benchmark:redis-tools; do
    command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
  done
  "$top/scripts/deps.sh" ${need[@]+"${need[@]}"}
fi
for t in jq psql curl redis-cli; do
  command -v $t >/dev/null || { echo "run.sh: $t is needed (scripts/deps.sh installs it)" >&2; exit 2; }
done
have_gnuplot=0; command -v gnuplot >/dev/null && have_gnuplot=1

# ---- the stack ---------------------------------------------------------------------------------
if [ "$mode" = smoke ]; then
  REDIS_URL=${BATCH_REDIS_URL:?smoke needs BATCH_REDIS_URL (make test sets it)}
  PGURL=${BATCH_POSTGRES_URL:?smoke needs BATCH_POSTGRES_URL (make test sets it)}
else
  log "starting the bench stack (Redis $BENCH_REDIS_PORT, PostgreSQL $BENCH_PG_PORT)"
  export BD_REDIS_PORT=$BENCH_REDIS_PORT BD_PG_PORT=$BENCH_PG_PORT
  "$top/scripts/stack.sh" wipe bench >/dev/null 2>&1 || true
  stack_started=1
  "$top/scripts/stack.sh" start bench 2>>"$out/logs/stack.log" 9>&-   # daemons must not keep the lock
  REDIS_URL=redis://127.0.0.1:$BENCH_REDIS_PORT/0
  PGURL=postgresql://batchd@127.0.0.1:$BENCH_PG_PORT/batchd
fi
REDIS_PORT=$(sed -E 's#.*:([0-9]+)(/.*)?$#\1#' <<<"$REDIS_URL")
unset BATCH_REDIS_URL BATCH_POSTGRES_URL   # batchd reads the YAML written below
pg() { psql "$PGURL" -qAtX -v ON_ERROR_STOP=1 "$@"; }

# A port nobody listens on, below the ephemeral range (where outgoing connections would
# take ports a connect test cannot see).
free_port() {
  local p lo
  lo=$(awk '{ print $1 }' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
  [ "$lo" -gt 21000 ] || lo=32768
  for _ in $(seq 1 100); do
    p=$(( 20000 + RANDOM % (lo - 20000) ))
    (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null || { echo $p; return; }
  done
  echo "run.sh: no free port" >&2; return 1
}

wait_http() {  # wait_http URL PID SECONDS
  local n=$(( $3 * 10 ))
  while ! curl -fsS -o /dev/null "$1" 2>/dev/null; do
    kill -0 "$2" 2>/dev/null || return 1
    n=$((n - 1)); [ $n -gt 0 ] || return 1
    sleep 0.1
  done
}

# ---- fake model and batchd -------------------------------------------------------------------
FAKE_PORT=
FAKE_PID=
start_fake() {
  FAKE_PORT=$(free_port)
  "$FAKE" --port "$FAKE_PORT" --dim 768 >"$out/logs/fake_model.log" 2>&1 &
  FAKE_PID=$!; pids+=("$FAKE_PID")
  wait_http "http://127.0.0.1:$FAKE_PORT/healthz" "$FAKE_PID" 10 || { echo "fake_model did not start" >&2; exit 1; }
}
fake_config() { curl -fsS -X POST -H 'Content-Type: application/json' -d "$1" \
                  "http://127.0.0.1:$FAKE_PORT/config" >/dev/null; }

declare -A BD_PID BD_PORT
# start_batchd NAME MAX_CONCURRENT_JOBS [default-limits|hostile] (three tries, in case a port
# is taken). The bench raises http.max_body_bytes to 8 GiB so that big JSON jobs fit; with
# "default-limits" batchd keeps its own default body limits (the submit_rss scenario
# measures what a stock batchd accepts); with "hostile" it keeps its default body limits and
# timeouts (request_timeout 30 s, idle_timeout 60 s: what slow clients meet) and serves
# HOST_MAXCONN connections.
start_batchd() {
  local try
  for try in 1 2 3; do
    start_batchd_once "$@" && return 0
    log "batchd $1 did not start (try $try); see logs/batchd-$1.log"
  done
  tail -n 20 "$out/logs/batchd-$1.log" >&2
  echo "run.sh: batchd $1 did not start" >&2
  exit 1
}
start_batchd_once() {
  local name=$1 jobs=$2 port conf body_limit="  max_body_bytes: 8589934592"
  local timeouts="  request_timeout: 600
  idle_timeout: 600"
  [ "${3:-}" = default-limits ] && body_limit="  # max_body_bytes: batchd's default"
  if [ "${3:-}" = hostile ]; then
    body_limit="  # max_body_bytes: batchd's default"
    timeouts="  # request_timeout, idle_timeout: batchd's defaults
  max_connections: $HOST_MAXCONN"
  fi
  port=$(free_port)
  conf="$work/batchd-$name.yaml"
  cat >"$conf" <<YAML
server:
  listen: 127.0.0.1:$port
  log_level: warn
  worker_id: bench-$name-$$
redis:
  url: $REDIS_URL
postgres:
  url: $PGURL
  pool_size: 4
jobs:
  max_concurrent_jobs: $jobs
  default_batch_size: 100
  processing_interval: 0.05
  retry_attempts: 3
  retry_delay: 0.5
  lease: 30
  progress_update_interval: 1
http:
$body_limit
$timeouts
metrics:
  enabled: true
models:
  - name: fake
    provider: ollama
    base_url: http://127.0.0.1:${FAKE_PORT:-9}
    dimensions: 768
    max_inputs_per_request: 100
    concurrency: $EMB_CONC
    timeout: 30
  - name: hash
    provider: hashing
    dimensions: 384
YAML
  "$BATCHD" --config "$conf" >>"$out/logs/batchd-$name.log" 2>&1 &
  BD_PID[$name]=$!; BD_PORT[$name]=$port; pids+=("${BD_PID[$name]}")
  # /readyz: Redis and PostgreSQL reachable and the schema migrated.
  if ! wait_http "http://127.0.0.1:$port/readyz" "${BD_PID[$name]}" 30; then
    stop_batchd "$name"
    return 1
  fi
}
stop_batchd() {
  local pid=${BD_PID[$1]}
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  unset "BD_PID[$1]"
  local keep=() p
  for p in "${pids[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
  pids=("${keep[@]}")
}
base() { echo "http://127.0.0.1:${BD_PORT[$1]}"; }

# Loop lag: the Prometheus histogram is cumulative; the largest lag seen between two scrapes
# lies in the smallest bucket whose count grew as much as the total did.
lag_scrape() { curl -fsS "$(base "$1")/metrics" | grep '^batchd_loop_lag_seconds_bucket' || true; }
busy_scrape() {  # slot-seconds the model "fake" has used so far (batchd_model_busy_seconds_total)
  curl -fsS "$(base "$1")/metrics" | awk '/^batchd_model_busy_seconds_total\{model="fake"\}/ { v = $2 } END { print v + 0 }'
}
lag_max_ms() {  # lag_max_ms BEFORE AFTER -> upper bound in ms, ">1000" past the last bound
  awk 'NR == FNR { b[$1] = $2; next }
       { d = $2 - b[$1]; le = $1; sub(/.*le="/, "", le); sub(/".*/, "", le)
         if (le == "+Inf") tot = d; else { n++; les[n] = le; ds[n] = d } }
       END { for (i = 1; i <= n; i++) if (ds[i] == tot) { printf "%g", les[i] * 1000; exit }
             printf ">1000" }' <(echo "$1") <(echo "$2")
}

# Every collection gets one 1-item job before the clock: creating it is not what is measured,
# and before cb41dfb the first jobs to start at once on a new collection failed ("holds
# 0-dimensional vectors").
warm() {  # warm BASE insert|embed COLLECTION DIM
  "$BIN/bench_jobs" --base "$1" --op "$2" --jobs 1 --items 1 --dim "$4" --batch-size 1 \
    --collection "$3" --model fake --nonce "warm$tag" --job-offset 999999 --poll-ms 20 \
    --label warmup --timeout 60 >/dev/null
}

# record SCENARIO VARIANT RUN [key=value...] < one JSON object -> raw.ndjson
record() {
  local s=$1 v=$2 r=$3 line extra='{}'
  shift 3
  for kv in "$@"; do extra=$(jq -c --arg k "${kv%%=*}" --arg v "${kv#*=}" \
      '. + {($k): ($v | tonumber? // .)}' <<<"$extra"); done
  line=$(cat)
  [ -n "$line" ] || { echo "run.sh: $s/$v produced no result" >&2; return 1; }
  jq -c --arg s "$s" --arg v "$v" --argjson r "$r" --argjson x "$extra" \
    '. + {scenario: $s, variant: $v, run: $r} + $x' <<<"$line" | tee -a "$raw" >&2
}
elapsed_json() {  # elapsed_json LABEL ITEMS START END
  awk -v l="$1" -v n="$2" -v s="$3" -v e="$4" \
    'BEGIN { t = e - s; printf "{\"label\":\"%s\",\"rows\":%d,\"total_s\":%.3f,\"items_per_s\":%.1f}\n", l, n, t, n / t }'
}
now_s() { date +%s.%N; }

if [ "$mode" != smoke ]; then
  pg -c "ALTER SYSTEM SET max_wal_size = '4GB'" -c "SELECT pg_reload_conf()" >/dev/null
fi
reset_tables() {  # between measured insert runs (never on the shared test stack)
  [ "$mode" = smoke ] && return 0
  pg -c "TRUNCATE vectors, job_item_errors, job_batches" -c "CHECKPOINT" >/dev/null
}

start_fake
ALL_T0=$(now_s)

# ================================================================================================
# 1. insert
# ================================================================================================
INS_ROWS=$(( INS_JOBS * INS_ITEMS ))
# Each scenario runs with its own batchd processes only: every process on the stack claims
# jobs, so one left running would add its workers (and its model slots) to the next
# scenario's figures.
if want insert; then
  start_batchd ins "$INS_CONC"
fi
if want insert; then
  log "insert: $INS_JOBS jobs x $INS_ITEMS vectors of dim $INS_DIM (batch $INS_BATCH), $RUNS run(s)"
  bin_t=bench_bin_$tag; txt_t=bench_txt_$tag; bull_t=bench_bull_$tag
  pg -c "CREATE TABLE $bin_t (LIKE vectors INCLUDING ALL)" \
     -c "CREATE TABLE $txt_t (LIKE vectors INCLUDING ALL)" >/dev/null
  "$BIN/bench_copy" --format text --out "$work/rows.txt" --jobs "$INS_JOBS" --items "$INS_ITEMS" \
    --dim "$INS_DIM" --collection "ins_$tag"
  has_node=0
  if [ "$mode" != smoke ]; then
    log "insert: installing the BullMQ peer (npm ci)"
    if (cd "$top/bench/peers/bullmq" && npm ci --no-audit --no-fund --loglevel=error >"$out/logs/npm.log" 2>&1); then
      has_node=1
      pg -c "CREATE TABLE $bull_t (LIKE vectors INCLUDING ALL)" >/dev/null
    else
      log "insert: npm ci failed (see logs/npm.log); BullMQ figures skipped"
    fi
  fi
  for r in $(seq 1 "$RUNS"); do
    reset_tables
    warm "$(base ins)" insert "ins_$tag" "$INS_DIM"
    before=$(lag_scrape ins)
    res=$("$BIN/bench_jobs" --base "$(base ins)" --op insert --jobs "$INS_JOBS" --items "$INS_ITEMS" \
      --dim "$INS_DIM" --batch-size "$INS_BATCH" --concurrency "$INS_CONC" \
      --collection "ins_$tag" --label batchd_insert --progress "$out/insert_progress_r$r.tsv" \
      --rss-pid "${BD_PID[ins]}" --timeout 900)
    echo "$res" | record insert batchd "$r" loop_lag_max_ms="$(lag_max_ms "$before" "$(lag_scrape ins)")"
    pg -c "TRUNCATE $bin_t" -c "CHECKPOINT" >/dev/null
    "$BIN/bench_copy" --conninfo "$PGURL" --table "$bin_t" --format binary --jobs "$INS_JOBS" \
      --items "$INS_ITEMS" --dim "$INS_DIM" --collection "ins_$tag" | record insert copy_binary "$r"
    pg -c "TRUNCATE $txt_t" -c "CHECKPOINT" >/dev/null
    t0=$(now_s)
    pg -c "\\copy $txt_t (collection, id, embedding, job_id, item_index) FROM '$work/rows.txt'" >/dev/null
    elapsed_json copy_text "$INS_ROWS" "$t0" "$(now_s)" | record insert copy_text "$r"
    if [ $has_node = 1 ]; then
      pg -c "TRUNCATE $bull_t" -c "CHECKPOINT" >/dev/null
      (cd "$top/bench/peers/bullmq" && node --max-old-space-size=8192 insert.js \
        --redis-port "$REDIS_PORT" --pg "$PGURL" --table "$bull_t" --jobs "$INS_JOBS" \
        --items "$INS_ITEMS" --dim "$INS_DIM" --batch "$INS_BATCH" --concurrency "$INS_CONC" \
        --collection "ins_$tag" --timeout 600 2>>"$out/logs/bullmq.log") | record insert bullmq "$r"
    fi
  done
  # The same rows everywhere: batchd's vectors equal the binary ceiling's.
  diff_rows=$(pg -c "SELECT count(*) FROM (SELECT id, embedding FROM $bin_t EXCEPT
                     SELECT id, embedding FROM vectors WHERE collection = 'ins_$tag') d")
  echo "{\"label\":\"same_rows_check\",\"rows_differing\":$diff_rows}" | record insert check 1
  pg -c "DROP TABLE $txt_t" >/dev/null
  [ $has_node = 1 ] && pg -c "DROP TABLE $bull_t" >/dev/null
  rm -f "$work/rows.txt"
fi
if want insert || want insert_rss; then
  [ -n "${BD_PID[ins]:-}" ] || start_batchd ins "$INS_CONC"
  # Peak RSS of a big job against a small one (same dim, same batch size): a fresh process
  # each, VmHWM read after the submit (parsing the request) and again at the end, the peak
  # having been reset once the first batch was stored (so the second figure is the
  # processing alone).
  for n in "$INSMEM_SMALL" "$INSMEM_BIG"; do
    stop_batchd ins; reset_tables; start_batchd ins "$INS_CONC"
    log "insert: peak RSS for one job of $n vectors of dim $INSMEM_DIM"
    warm "$(base ins)" insert "insmem_${n}_$tag" "$INSMEM_DIM"
    "$BIN/bench_jobs" --base "$(base ins)" --op insert --jobs 1 --items "$n" --dim "$INSMEM_DIM" \
      --batch-size "$INS_BATCH" --collection "insmem_${n}_$tag" --label batchd_insert_rss \
      --rss-pid "${BD_PID[ins]}" --reset-hwm --poll-ms 200 --timeout 900 \
      --progress "$out/insert_rss_$n.tsv" | record insert_rss "items_$n" 1
  done
fi
[ -n "${BD_PID[ins]:-}" ] && stop_batchd ins
want insert && pg -c "DROP TABLE bench_bin_$tag" >/dev/null

# ================================================================================================
# 1b. submit_rss: peak RSS while batchd accepts one big streamed body vs one small one
# ================================================================================================
# One bulk_insert job of about SUB_BIG bytes vs one of SUB_SMALL (dim SUB_DIM, batch
# INS_BATCH), generated on the fly by bench_upload and sent chunked (never held whole by the
# client, nor written to disk), in both forms: JSON Lines and the JSON document (fields
# before "data"). Each upload runs on a fresh batchd with its default body limits; the peak
# (VmHWM, reset just before the first byte) is read the moment the answer arrives, and the
# loop lag over the upload is scraped from /metrics. After the 202 the job is cancelled and
# the process stopped, and the tables are emptied: nothing of it is processed or kept.
# A JSON body over http.max_body_bytes gets 413 from a batchd that reads JSON whole; the
# JSON form is then measured at SUB_JSON_FALLBACK (under the 256 MiB default) and marked
# so ("fallback_from"); once batchd accepts the big JSON body, the big size is measured.
SUB_STATUS=
sub_upload() {  # sub_upload FORM BYTES VARIANT [key=value...]
  local form=$1 bytes=$2 variant=$3 res before lag id
  shift 3
  start_batchd sub 1 default-limits
  before=$(lag_scrape sub)
  res=$("$BIN/bench_upload" --base "$(base sub)" --form "$form" --bytes "$bytes" --dim "$SUB_DIM" \
    --batch-size "$INS_BATCH" --collection "sub_${form}_${bytes}_$tag" --rss-pid "${BD_PID[sub]}" \
    --timeout 900 --label "batchd_submit_$form") || true
  lag=$(lag_max_ms "$before" "$(lag_scrape sub)")
  SUB_STATUS=$(jq -r '.status // 0' <<<"$res" 2>/dev/null || echo 0)
  id=$(jq -r '.job_id // empty' <<<"$res" 2>/dev/null || true)
  [ -n "$id" ] && curl -fsS -o /dev/null -X DELETE "$(base sub)/api/v1/batch/jobs/$id" 2>/dev/null || true
  [ "$SUB_STATUS" = 413 ] && variant="${variant}_refused"     # kept in raw, not in a row
  echo "$res" | record submit_rss "$variant" 1 loop_lag_max_ms="$lag" "$@"
  stop_batchd sub
  reset_tables
}
if want submit_rss; then
  for form in ndjson json; do
    log "submit_rss: one $form body of $SUB_SMALL bytes, then one of $SUB_BIG (dim $SUB_DIM), fresh batchd each"
    sub_upload "$form" "$SUB_SMALL" "${form}_small"
    if [ "$form" = json ]; then
      sub_upload json "$SUB_BIG" json_big
      if [ "$SUB_STATUS" = 413 ] && [ "$SUB_JSON_FALLBACK" -lt "$SUB_BIG" ]; then
        log "submit_rss: a JSON body of $SUB_BIG bytes got 413 (read whole); measuring $SUB_JSON_FALLBACK instead"
        sub_upload json "$SUB_JSON_FALLBACK" json_big fallback_from="$SUB_BIG"
      fi
    else
      sub_upload ndjson "$SUB_BIG" ndjson_big
    fi
  done
fi

# ================================================================================================
# 2. embed
# ================================================================================================
if want embed; then
  start_batchd emb "$EMB_CONC"
  EMB_REQS=$(( EMB_JOBS * ( (EMB_ITEMS + EMB_BATCH - 1) / EMB_BATCH ) ))
  for lat in 0 50; do
    fake_config "{\"latency_ms\": $lat}"
    log "embed: $EMB_JOBS jobs x $EMB_ITEMS texts (batch $EMB_BATCH), model latency $lat ms, $RUNS run(s)"
    for r in $(seq 1 "$RUNS"); do
      nonce="r${r}l${lat}$tag"            # new texts every run: no embedding-cache hits
      [ $r = 1 ] && [ $lat = 0 ] && warm "$(base emb)" embed "emb_$tag" 768
      before=$(lag_scrape emb); busy0=$(busy_scrape emb)
      res=$("$BIN/bench_jobs" --base "$(base emb)" --op embed --jobs "$EMB_JOBS" --items "$EMB_ITEMS" \
        --batch-size "$EMB_BATCH" --concurrency "$EMB_CONC" --model fake --nonce "$nonce" \
        --collection "emb_$tag" --label batchd_embed --progress "$out/embed_${lat}ms_progress_r$r.tsv" \
        --rss-pid "${BD_PID[emb]}" --timeout 600)
      # How busy the model's slots were: slot-seconds used over concurrency x wall time.
      busy=$(jq -r --argjson b0 "$busy0" --argjson b1 "$(busy_scrape emb)" --argjson c "$EMB_CONC" \
        'if .total_s > 0 then ((($b1 - $b0) / ($c * .total_s)) * 1000 | round / 10) else 0 end' <<<"$res")
      echo "$res" | record embed "batchd_${lat}ms" "$r" latency_ms="$lat" \
        loop_lag_max_ms="$(lag_max_ms "$before" "$(lag_scrape emb)")" slots_busy_pct="$busy"
      "$BIN/bench_jobs" --op embed --jobs "$EMB_JOBS" --items "$EMB_ITEMS" --batch-size "$EMB_BATCH" \
        --nonce "$nonce" --model fake --emit-ollama "$work/ollama.ndjson"
      "$BIN/bench_load" --url "http://127.0.0.1:$FAKE_PORT/api/embed" -m POST \
        --bodies-file "$work/ollama.ndjson" -c "$EMB_CONC" -n "$EMB_REQS" -d 600 \
        --label direct_embed \
        | jq -c --argjson b "$EMB_BATCH" --argjson n "$(( EMB_JOBS * EMB_ITEMS ))" \
            '. + {items_per_s: (if .duration_s > 0 then $n / .duration_s else 0 end)}' \
        | record embed "direct_${lat}ms" "$r" latency_ms="$lat"
    done
  done
  fake_config '{"latency_ms": 0}'
  stop_batchd emb
fi

# ================================================================================================
# 3. lifecycle
# ================================================================================================
if want lifecycle || want api; then
  start_batchd life "$LIFE_CONC"
fi
if want lifecycle; then
  log "lifecycle: $LIFE_JOBS one-item jobs, concurrency $LIFE_CONC, $RUNS run(s)"
  has_node=0
  if [ "$mode" != smoke ] && [ -d "$top/bench/peers/bullmq/node_modules/bullmq" ]; then has_node=1
  elif [ "$mode" != smoke ] && (cd "$top/bench/peers/bullmq" && npm ci --no-audit --no-fund --loglevel=error >"$out/logs/npm.log" 2>&1); then has_node=1
  fi
  for r in $(seq 1 "$RUNS"); do
    warm "$(base life)" insert "life_${r}_$tag" 8
    "$BIN/bench_jobs" --base "$(base life)" --op insert --jobs "$LIFE_JOBS" --items 1 --dim 8 \
      --batch-size 1 --concurrency "$LIFE_CONC" --collection "life_${r}_$tag" --poll-ms 20 \
      --label batchd_lifecycle --timeout 600 | record lifecycle batchd "$r"
    if [ $has_node = 1 ]; then
      (cd "$top/bench/peers/bullmq" && node lifecycle.js --redis-port "$REDIS_PORT" \
        --jobs "$LIFE_JOBS" --concurrency "$LIFE_CONC" --timeout 300 2>>"$out/logs/bullmq.log") \
        | record lifecycle bullmq "$r"
    fi
    # Submits alone: the 202 (a durable commit) is the end, as Queue.add's answer is for
    # BullMQ (no worker). batchd's workers run meanwhile (it cannot pause them); the jobs
    # are waited for after the clock, so the next run starts on a quiet server.
    warm "$(base life)" insert "sub1_${r}_$tag" 8
    "$BIN/bench_jobs" --base "$(base life)" --op insert --jobs "$LIFE_JOBS" --items 1 --dim 8 \
      --batch-size 1 --concurrency "$LIFE_CONC" --collection "sub1_${r}_$tag" --poll-ms 20 \
      --submit-only --label batchd_submit --timeout 600 | record lifecycle batchd_submit "$r"
    if [ $has_node = 1 ]; then
      (cd "$top/bench/peers/bullmq" && node add.js --redis-port "$REDIS_PORT" \
        --jobs "$LIFE_JOBS" --concurrency "$LIFE_CONC" --timeout 300 2>>"$out/logs/bullmq.log") \
        | record lifecycle bullmq_add "$r"
    fi
  done
  redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -t lpush,rpop -n "$RB_N" -c "$LIFE_CONC" --csv 2>/dev/null \
    | awk -F'","' 'NR > 1 { gsub(/"/, "", $1); gsub(/"/, "", $2);
                            printf "{\"label\":\"redis_benchmark_%s\",\"rps\":%s}\n", tolower($1), $2 }' \
    | while read -r line; do echo "$line" | record lifecycle "$(jq -r .label <<<"$line")" 1; done
fi

# ================================================================================================
# 4. api
# ================================================================================================
if want api; then
  # Status GETs of existing jobs (the lifecycle's, or a few made here), round robin.
  if [ "$(pg -c "SELECT count(*) FROM jobs")" -lt 10 ]; then
    "$BIN/bench_jobs" --base "$(base life)" --op insert --jobs 50 --items 1 --dim 8 --batch-size 1 \
      --collection "api_$tag" --label api_setup --timeout 120 >/dev/null
  fi
  pg -c "SELECT '/api/v1/batch/jobs/' || id || '/status' FROM jobs ORDER BY seq DESC LIMIT 100" \
    > "$work/status_urls.txt"
  first_url=$(head -n 1 "$work/status_urls.txt")
  has_nginx=0
  if [ "$mode" != smoke ] && command -v nginx >/dev/null; then
    NGINX_PORT=$(free_port)
    mkdir -p "$work/nginx/www" "$work/nginx/tmp"
    curl -fsS "$(base life)$first_url" > "$work/nginx/www/status.json"   # same bytes as batchd's
    cat > "$work/nginx/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
$( [ "$(id -u)" -eq 0 ] && echo "user root;" )
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx/tmp/body;
  proxy_temp_path $work/nginx/tmp/proxy;
  fastcgi_temp_path $work/nginx/tmp/fastcgi;
  uwsgi_temp_path $work/nginx/tmp/uwsgi;
  scgi_temp_path $work/nginx/tmp/scgi;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    default_type application/json;
    location / { root $work/nginx/www; }
  }
}
NGINX
    nginx -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" >"$out/logs/nginx.log" 2>&1 &
    NGINX_PID=$!; pids+=("$NGINX_PID")
    if wait_http "http://127.0.0.1:$NGINX_PORT/status.json" "$NGINX_PID" 10; then has_nginx=1
    else log "api: nginx did not start (logs/nginx.log); nginx figures skipped"; fi
  fi
  log "api: closed loop ($API_CONNS connections, $API_DUR s) and open loop at $API_RATES req/s"
  # Each batchd run records the loop lag over it (loop_lag_max_ms, bucket bound, see lag_max_ms).
  before=$(lag_scrape life)
  res=$("$BIN/bench_load" --url "$(base life)/" --urls-file "$work/status_urls.txt" -c "$API_CONNS" \
    -d "$API_DUR" --warmup 1 --label batchd_status_max --timeseries "$out/api_batchd_max.tsv")
  echo "$res" | record api batchd_max 1 loop_lag_max_ms="$(lag_max_ms "$before" "$(lag_scrape life)")"
  if [ $has_nginx = 1 ]; then
    "$BIN/bench_load" --url "http://127.0.0.1:$NGINX_PORT/status.json" -c "$API_CONNS" \
      -d "$API_DUR" --warmup 1 --label nginx_static_max --timeseries "$out/api_nginx_max.tsv" \
      | record api nginx_max 1
    wrk -t2 -c"$API_CONNS" -d"${API_DUR}s" --latency "http://127.0.0.1:$NGINX_PORT/status.json" \
      > "$out/logs/wrk.txt" 2>&1 || true
    awk '/Requests\/sec/ { rps = $2 }
         /^ +50%/ { p50 = $2 } /^ +99%/ { p99 = $2 }
         function ms(s) { if (s ~ /us$/) return s / 1000; if (s ~ /ms$/) return s + 0; if (s ~ /s$/) return s * 1000; return s }
         END { printf "{\"label\":\"wrk_nginx\",\"rps\":%s,\"p50_ms\":%.3f,\"p99_ms\":%.3f}\n", rps + 0, ms(p50), ms(p99) }' \
      "$out/logs/wrk.txt" | record api wrk_nginx 1
  fi
  for rate in $API_RATES; do
    before=$(lag_scrape life)
    res=$("$BIN/bench_load" --url "$(base life)/" --urls-file "$work/status_urls.txt" -c "$API_CONNS" \
      -r "$rate" -d "$API_DUR" --warmup 1 --label batchd_status_open)
    echo "$res" | record api batchd_open 1 offered="$rate" \
      loop_lag_max_ms="$(lag_max_ms "$before" "$(lag_scrape life)")"
    if [ $has_nginx = 1 ]; then
      "$BIN/bench_load" --url "http://127.0.0.1:$NGINX_PORT/status.json" -c "$API_CONNS" \
        -r "$rate" -d "$API_DUR" --warmup 1 --label nginx_static_open | record api nginx_open 1 offered="$rate"
    fi
  done
fi

# ================================================================================================
# 5. scale: the same insert and lifecycle runs with two batchd processes on the same stack
# ================================================================================================
if want scale; then
  log "scale: insert and lifecycle with 2 batchd processes (2 cores: shows coordination cost)"
  [ -n "${BD_PID[life]:-}" ] && stop_batchd life
  start_batchd ins "$INS_CONC"
  start_batchd ins2 "$INS_CONC"
  for r in $(seq 1 "$SCALE_RUNS"); do
    reset_tables
    warm "$(base ins)" insert "scale_${r}_$tag" "$INS_DIM"
    "$BIN/bench_jobs" --base "$(base ins),$(base ins2)" --op insert --jobs "$INS_JOBS" \
      --items "$INS_ITEMS" --dim "$INS_DIM" --batch-size "$INS_BATCH" --concurrency "$INS_CONC" \
      --collection "scale_${r}_$tag" --label batchd_insert_2proc --timeout 900 \
      --progress "$out/scale_insert_progress_r$r.tsv" | record scale insert_2proc "$r"
  done
  stop_batchd ins2
  if ! want insert; then
    for r in $(seq 1 "$SCALE_RUNS"); do
      reset_tables
      warm "$(base ins)" insert "scale1_${r}_$tag" "$INS_DIM"
      "$BIN/bench_jobs" --base "$(base ins)" --op insert --jobs "$INS_JOBS" --items "$INS_ITEMS" \
        --dim "$INS_DIM" --batch-size "$INS_BATCH" --concurrency "$INS_CONC" \
        --collection "scale1_${r}_$tag" --label batchd_insert --timeout 900 | record insert batchd "$r"
    done
  fi
  stop_batchd ins
  start_batchd life "$LIFE_CONC"
  start_batchd life2 "$LIFE_CONC"
  for r in $(seq 1 "$SCALE_RUNS"); do
    warm "$(base life)" insert "scale_life_${r}_$tag" 8
    "$BIN/bench_jobs" --base "$(base life),$(base life2)" --op insert --jobs "$LIFE_JOBS" --items 1 \
      --dim 8 --batch-size 1 --concurrency "$LIFE_CONC" --collection "scale_life_${r}_$tag" --poll-ms 20 \
      --label batchd_lifecycle_2proc --timeout 600 | record scale lifecycle_2proc "$r"
  done
  stop_batchd life2
  if ! want lifecycle; then
    warm "$(base life)" insert "scale1_life_$tag" 8
    "$BIN/bench_jobs" --base "$(base life)" --op insert --jobs "$LIFE_JOBS" --items 1 --dim 8 \
      --batch-size 1 --concurrency "$LIFE_CONC" --collection "scale1_life_$tag" --poll-ms 20 \
      --label batchd_lifecycle --timeout 600 | record lifecycle batchd 1
  fi
fi
[ -n "${BD_PID[ins]:-}" ] && stop_batchd ins
[ -n "${BD_PID[life]:-}" ] && stop_batchd life

# ================================================================================================
# 6. memory: peak RSS of one huge bulk_insert job against a small one (small dims)
# ================================================================================================
if want memory; then
  for n in "$MEM_SMALL" "$MEM_BIG"; do
    reset_tables
    start_batchd mem 1
    log "memory: one job of $n vectors of dim $MEM_DIM (batch $MEM_BATCH)"
    warm "$(base mem)" insert "mem_${n}_$tag" "$MEM_DIM"
    "$BIN/bench_jobs" --base "$(base mem)" --op insert --jobs 1 --items "$n" --dim "$MEM_DIM" \
      --batch-size "$MEM_BATCH" --collection "mem_${n}_$tag" --label batchd_memory \
      --rss-pid "${BD_PID[mem]}" --reset-hwm --poll-ms 100 --timeout 900 \
      --progress "$out/memory_$n.tsv" | record memory "items_$n" 1
    stop_batchd mem
  done
fi
# ================================================================================================
# 7. hostile: keep-alive clients and slowloris connections at once (docs/reliability.md)
# ================================================================================================
# One batchd with its default timeouts; bench_hostile opens the slow connections first (the
# attack under way), then the keep-alive clients (a third each /healthz, a job's status, the
# queue status; a second's think time), submits a small bulk_embed job that must complete
# during the storm, asks /healthz on a fresh connection every second and at the end, and
# samples batchd's VmRSS and open descriptors every second.
if want hostile && { [ "$mode" != smoke ] || [ "$only" != all ]; }; then
  start_batchd host "$EMB_CONC" hostile
  "$BIN/bench_jobs" --base "$(base host)" --op insert --jobs 50 --items 1 --dim 8 --batch-size 1 \
    --collection "host_$tag" --label hostile_setup --timeout 120 >/dev/null
  pg -c "SELECT '/api/v1/batch/jobs/' || id || '/status' FROM jobs ORDER BY seq DESC LIMIT 100" \
    > "$work/host_status_urls.txt"
  log "hostile: $HOST_CLIENTS keep-alive clients + $HOST_SLOW slowloris connections ($HOST_MIX) for $HOST_DUR s (max_connections $HOST_MAXCONN)"
  host_rc=0
  "$BIN/bench_hostile" --base "$(base host)" --pid "${BD_PID[host]}" -c "$HOST_CLIENTS" \
    -s "$HOST_SLOW" --slow-mix "$HOST_MIX" -d "$HOST_DUR" --status-urls "$work/host_status_urls.txt" --model fake \
    --timeseries "$out/hostile.tsv" --label batchd_hostile --sigterm ${HOST_ARGS[@]+"${HOST_ARGS[@]}"} \
    > "$work/hostile.json" \
    2> "$out/logs/hostile.txt" || host_rc=$?
  cat "$out/logs/hostile.txt" >&2
  emfile=$(grep -ci 'too many open files\|EMFILE' "$out/logs/batchd-host.log" || true)
  # batchd logs its running totals once a second at most: the last line has them.
  full_line=$(grep 'event=connections_full' "$out/logs/batchd-host.log" | tail -n 1 || true)
  rejected=$(printf '%s' "$full_line" | sed -n 's/.* refused=\([0-9]*\).*/\1/p')
  evicted=$(printf '%s' "$full_line" | sed -n 's/.* evicted=\([0-9]*\).*/\1/p')
  rejected=${rejected:-0}
  evicted=${evicted:-0}
  # bench_hostile sent SIGTERM at the end (--sigterm): batchd must have exited, with 0.
  bd_rc=0
  if [ "$(jq -r '(.shutdown.exit_s // -1) >= 0' "$work/hostile.json" 2>/dev/null)" = true ]; then
    wait "${BD_PID[host]}" || bd_rc=$?
  else
    bd_rc=running
  fi
  record hostile batchd 1 max_connections="$HOST_MAXCONN" log_emfile="$emfile" \
    log_rejected="$rejected" log_evicted="$evicted" exit_code="$host_rc" batchd_exit="$bd_rc" < "$work/hostile.json" || host_rc=1
  if [ "$host_rc" != 0 ] || [ "$bd_rc" != 0 ]; then
    HOSTILE_FAILED=1
    log "hostile: FAILED (bench_hostile exit $host_rc, batchd exit $bd_rc); see logs/hostile.txt"
  fi
  stop_batchd host
fi
# ================================================================================================
# 8. openai_batch: the OpenAI Batch API path against the native streamed job, same inputs
# ================================================================================================
# OAI_LINES one-input /v1/embeddings requests on the built-in hashing model (384 dims: no
# model server, so the figures are batchd's and PostgreSQL's own work, and the model is the
# same in every run). Per run, on one batchd: (a) upload the JSON Lines file, create the
# batch, poll it every 50 ms to completed, download the output file; (b) the same texts (a
# new nonce: no embedding-cache hits) as a streamed JSON Lines bulk_embed job, polled to
# completed, every result downloaded as NDJSON. From PostgreSQL afterwards: how the finalize
# splits into waiting for the finalizer's sweep (job completed_at -> batch finalizing_at)
# and writing the files (finalizing_at -> finalized_at).
if want openai_batch; then
  start_batchd oai 2
  log "openai_batch: $OAI_LINES requests, OpenAI Batch API vs native streamed job, $RUNS run(s)"
  for r in $(seq 1 "$RUNS"); do
    for path in openai native; do
      reset_tables
      res=$("$BIN/bench_openai" --base "$(base oai)" --path "$path" --lines "$OAI_LINES" \
        --model hash --nonce "oai${r}${path}$tag" --rss-pid "${BD_PID[oai]}" --poll-ms 50 \
        --timeout 600 --label "batchd_$path") || log "openai_batch: $path run $r failed"
      if [ "$path" = openai ]; then
        split=$(pg -F ' ' -c "SELECT round(extract(epoch FROM b.finalizing_at - j.completed_at)::numeric, 3),
                                     round(extract(epoch FROM b.finalized_at - b.finalizing_at)::numeric, 3)
                              FROM batches b JOIN jobs j ON j.id = b.job_id
                              WHERE b.id = '$(jq -r '.batch_id // ""' <<<"$res")'" 2>/dev/null || true)
        extra=()
        [[ "$split" =~ ^[0-9.]+\ [0-9.]+$ ]] && extra=(sweep_wait_s="${split%% *}" write_s="${split##* }")
        echo "$res" | record openai_batch openai "$r" ${extra[@]+"${extra[@]}"}
      else
        echo "$res" | record openai_batch native "$r"
      fi
    done
  done
  stop_batchd oai
fi
ALL_T1=$(now_s)

# ================================================================================================
# Summary: results.json, results.md, plots
# ================================================================================================
log "summarising into $out"
machine=$(jq -n --arg cpu "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')" \
  --arg cores "$(nproc)" --arg mem_gib "$(awk '/MemTotal/ { printf "%.1f", $2 / 1048576 }' /proc/meminfo)" \
  --arg kernel "$(uname -r)" --arg os "$(. /etc/os-release 2>/dev/null; echo "${PRETTY_NAME:-}")" \
  --arg pg "$(pg -c 'SHOW server_version')" --arg redis "$(redis-cli -p "$REDIS_PORT" info server | sed -n 's/^redis_version:\(.*\)\r*$/\1/p' | tr -d '\r')" \
  --arg node "$(node --version 2>/dev/null || echo none)" --arg nginx "$(nginx -v 2>&1 | sed 's/.*\///' || echo none)" \
  '{cpu: $cpu, cores: ($cores | tonumber), mem_gib: ($mem_gib | tonumber), kernel: $kernel, os: $os,
    postgresql: $pg, redis: $redis, node: $node, nginx: $nginx}')

# Medians over runs, then one row per compared figure. target: "ratio>=X" or "abs<=X".
jq -s --arg mode "$mode" --arg stamp "$stamp" --arg commit "$commit$dirty" --argjson machine "$machine" \
  --argjson runs "$RUNS" --argjson wall "$(awk -v a="$ALL_T0" -v b="$ALL_T1" 'BEGIN { printf "%.0f", b - a }')" '
  def median: sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor]
                     else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  def pick(s; v; f): [.[] | select(.scenario == s and .variant == v) | f | select(. != null)] | median;
  def pickw(s; v; w; f): [.[] | select(.scenario == s and .variant == v and w) | f | select(. != null)] | median;
  def r1: if . == null then null else (. * 10 | round) / 10 end;
  def r3: if . == null then null else (. * 1000 | round) / 1000 end;
  def ratio(a; b): if a == null or b == null or b == 0 then null else (a / b * 1000 | round) / 1000 end;
  def row(s; m; u; a; pn; p; t; tv; note):
    { scenario: s, metric: m, unit: u, batchd: a, peer_name: pn, peer: p,
      ratio: (if pn == null then null else ratio(a; p) end), target: t,
      met: (if tv == null or a == null or ((t | startswith("ratio")) and p == null) then null
            elif t | startswith("ratio>=") then (ratio(a; p) // -1) >= tv
            elif t | startswith("ratio<=") then (ratio(a; p) // 1e18) <= tv
            elif t | startswith("abs<=") then a <= tv
            elif t | startswith("abs<") then a < tv else null end),
      note: note };
  . as $raw
  | ($raw | pick("insert"; "batchd"; .items_per_s) | r1) as $ins
  | ($raw | pick("insert"; "copy_binary"; .items_per_s) | r1) as $bin
  | ($raw | pick("insert"; "copy_text"; .items_per_s) | r1) as $txt
  | ($raw | pick("insert"; "bullmq"; .items_per_s) | r1) as $bull
  | ($raw | [.[] | select(.scenario == "insert" and .variant == "batchd") | .loop_lag_max_ms | tostring]) as $ilags
  | ($raw | [.[] | select(.scenario == "insert_rss")] | sort_by(.items)) as $irss
  | ($raw | [.[] | select(.scenario == "memory")] | sort_by(.items)) as $mem
  | ($raw | pick("embed"; "batchd_0ms"; .items_per_s) | r1) as $e0
  | ($raw | pick("embed"; "direct_0ms"; .items_per_s) | r1) as $d0
  | ($raw | pick("embed"; "batchd_50ms"; .items_per_s) | r1) as $e50
  | ($raw | pick("embed"; "direct_50ms"; .items_per_s) | r1) as $d50
  | ($raw | [.[] | select(.scenario == "embed" and (.variant | startswith("batchd"))) | .loop_lag_max_ms] | map(tostring)) as $lags
  | ($raw | pick("lifecycle"; "batchd"; .jobs_per_s) | r1) as $life
  | ($raw | pick("lifecycle"; "bullmq"; .jobs_per_s) | r1) as $lbull
  | ($raw | pick("lifecycle"; "batchd_submit"; .submits_per_s) | r1) as $subs
  | ($raw | pick("lifecycle"; "bullmq_add"; .adds_per_s) | r1) as $adds
  | ($raw | [.[] | select(.scenario == "lifecycle" and .variant == "batchd_submit") | .concurrency][0]) as $subc
  | ($raw | [.[] | select(.scenario == "submit_rss")]) as $srss
  | def mb: (. / 1e6 * 10 | round) / 10;
    # What the old submit-RSS rows show about a JSON body (sent whole, Content-Length):
    # read off their own figures, so the note stays true when the code changes.
    def json_note(b; s): ((b.hwm_submit_kb - s.hwm_submit_kb) / 1024 | r1) as $grow
      | (b.body_bytes / 1048576) as $body
      | "JSON body of \(b.body_bytes | mb) MB (Content-Length); peak - small \($grow) MiB"
        + (if $body < 16 then "" elif $grow >= 0.5 * $body then ": held whole while it is scanned"
           else ": not held whole" end);
    def sub_rows(f; fname):
      ($srss | map(select(.variant == "\(f)_small")) | .[0]) as $sm
      | ($srss | map(select(.variant == "\(f)_big")) | .[0]) as $bg
      | if $sm == null or $bg == null then empty else
          ($sm.status == 202 and $bg.status == 202) as $ok
          | row("submit"; "peak RSS accepting one \(fname) body, \($bg.body_bytes | mb) MB vs \($sm.body_bytes | mb) MB"; "MiB";
                ($bg.hwm_submit_kb / 1024 | r1); "same, \($sm.body_bytes | mb) MB"; ($sm.hwm_submit_kb / 1024 | r1);
                (if $ok then "ratio<=1.25" else "-" end); (if $ok then 1.25 else null end);
                (if $bg.fallback_from != null then "FALLBACK: a \($bg.fallback_from | mb) MB JSON body got 413 (read whole, over http.max_body_bytes), so measured at \($bg.body_bytes | mb) MB; " else "" end)
                + (if $ok then "" else "NOT ACCEPTED (statuses \($sm.status), \($bg.status)); " end)
                + "sent chunked, generated on the fly; big - small \((($bg.hwm_submit_kb - $sm.hwm_submit_kb) / 1024) | r1) MiB; loop lag max \($bg.loop_lag_max_ms) ms (bucket bound)"),
            row("submit"; "upload MB/s, \(fname), \($bg.body_bytes | mb) MB"; "MB/s"; $bg.upload_mb_s;
                "same, \($sm.body_bytes | mb) MB"; $sm.upload_mb_s; "-"; null; "first byte to the 202 (COMMIT included)")
        end;
    .
  | ($raw | pick("api"; "batchd_max"; .rps) | r1) as $amax
  | ($raw | pick("api"; "nginx_max"; .rps) | r1) as $nmax
  | ($raw | pick("api"; "wrk_nginx"; .rps) | r1) as $wrk
  | ($raw | [.[] | select(.scenario == "api" and .variant == "batchd_open")] | max_by(.offered) // null) as $atop
  | ($raw | [.[] | select(.scenario == "api" and .variant == "batchd_open" and .offered == 10000)] | .[0] // $atop) as $a10k
  | ($raw | [.[] | select(.scenario == "api" and .variant == "nginx_open" and .offered == ($a10k.offered // -1))] | .[0]) as $n10k
  | ($raw | [.[] | select(.scenario == "api" and (.variant == "batchd_max" or .variant == "batchd_open"))
             | {label: (if .variant == "batchd_max" then "max" else "\(.offered)/s" end), lag: (.loop_lag_max_ms | tostring)}]
             | map(select(.lag != "null"))) as $alags
  | ($raw | pick("scale"; "insert_2proc"; .items_per_s) | r1) as $ins2
  | ($raw | pick("scale"; "lifecycle_2proc"; .jobs_per_s) | r1) as $life2
  | def lagnum: if type == "string" then ltrimstr(">") | tonumber else . end;
    def oai(v; f): $raw | pick("openai_batch"; v; f);
    .
  | ($raw | [.[] | select(.scenario == "openai_batch")] | .[0].lines // null) as $oan
  | [ row("insert"; "items/s (\($raw | [.[] | select(.scenario == "insert" and .variant == "batchd")][0].items // 0) vectors)"; "items/s"; $ins; "binary COPY"; $bin; "ratio>=0.5"; 0.5; "ceiling: one COPY, one connection"),
      row("insert"; "items/s, same rows"; "items/s"; $ins; "text COPY (psql \\copy)"; $txt; "-"; null; "ceiling"),
      row("insert"; "items/s, same rows"; "items/s"; $ins; "BullMQ + node-pg COPY"; $bull; "ratio>=5"; 5; "peer"),
      row("insert"; "max loop lag during the insert runs (ms, bucket bound)"; "ms";
          ($ilags | map(ltrimstr(">") | tonumber) | max); null; null; "abs<=10"; 10; "per run: \($ilags | join(", "))"),
      (if ($irss | length) == 2 then
        row("insert"; "peak RSS, processing (\($irss[1].items) vs \($irss[0].items) items, dim \($irss[1].dim))"; "MiB";
            ($irss[1].hwm_process_kb / 1024 | r1); "same, \($irss[0].items) items"; ($irss[0].hwm_process_kb / 1024 | r1); "ratio<=1.25"; 1.25; "memory bounded by batch size"),
        row("insert"; "peak RSS, submit (\($irss[1].items) vs \($irss[0].items) items)"; "MiB";
            ($irss[1].hwm_submit_kb / 1024 | r1); "same, \($irss[0].items) items"; ($irss[0].hwm_submit_kb / 1024 | r1); "-"; null; json_note($irss[1]; $irss[0]))
       else empty end),
      sub_rows("ndjson"; "JSON Lines"),
      sub_rows("json"; "JSON document"),
      row("embed"; "items/s, model latency 0 ms"; "items/s"; $e0; "direct to the fake model"; $d0; "ratio>=0.6"; 0.6; "same bodies, same concurrency; the fake model, PostgreSQL and batchd share the cores"),
      row("embed"; "items/s, model latency 50 ms"; "items/s"; $e50; "direct to the fake model"; $d50; "ratio>=0.95"; 0.95; "same bodies, same concurrency"),
      row("embed"; "model slots busy, 50 ms (% of concurrency x wall time)"; "%"; pick("embed"; "batchd_50ms"; .slots_busy_pct); null; null; "-"; null; "batchd_model_busy_seconds_total over the run"),
      row("embed"; "max loop lag (ms, bucket bound)"; "ms"; ($lags | map(ltrimstr(">") | tonumber) | max); null; null; "-"; null; "per run: \($lags | join(", "))"),
      row("lifecycle"; "1-item jobs/s"; "jobs/s"; $life; "BullMQ no-op jobs"; $lbull; "ratio>=1"; 1; "batchd jobs are durable in PostgreSQL"),
      row("lifecycle"; "1-item submits/s (the 202 is the end)"; "jobs/s"; $subs; "BullMQ Queue.add, no worker"; $adds; "ratio>=1"; 1;
          "\($subc) in flight each; a 202 is a PostgreSQL commit (synchronous_commit on), an add a Redis write (no persistence)"),
      ($raw | [.[] | select(.scenario == "lifecycle" and (.variant | startswith("redis_benchmark")))] | .[] |
        row("lifecycle"; .label; "ops/s"; null; "redis-benchmark"; .rps; "-"; null; "context")),
      row("api"; "status GET max req/s (closed loop)"; "req/s"; $amax; "nginx static file (same client)"; $nmax; "ratio>=0.5"; 0.5; "wrk vs nginx: \($wrk)"),
      (if $a10k != null then
        row("api"; "p99 ms at \($a10k.offered) req/s offered"; "ms"; $a10k.p99_ms; "nginx static file"; $n10k.p99_ms; "ratio<=2"; 2; "achieved \($a10k.rps | r1) req/s; p50 \($a10k.p50_ms) ms, p99.9 \($a10k.p999_ms) ms")
       else empty end),
      (if ($alags | length) > 0 then
        row("api"; "max loop lag during the status GET runs (ms, bucket bound)"; "ms";
            ($alags | map(.lag | ltrimstr(">") | tonumber) | max); null; null; "abs<=5"; 5;
            "per run: \($alags | map("\(.label) \(.lag)") | join(", "))")
       else empty end),
      row("scale"; "insert items/s, 2 processes vs 1"; "items/s"; $ins2; "1 process"; $ins; "-"; null; "2 cores: coordination cost, not speed-up"),
      row("scale"; "lifecycle jobs/s, 2 processes vs 1"; "jobs/s"; $life2; "1 process"; $life; "-"; null; "2 cores: coordination cost, not speed-up"),
      ($raw | [.[] | select(.scenario == "hostile")] | .[0] // null) as $h
      | (if $h != null then
        row("hostile"; "/healthz ok of answered (\($h.clients) keep-alive + \($h.slow) slow connections, \($h.duration_s) s)"; "%";
            (if $h.healthz_total > 0 then ($h.healthz_ok / $h.healthz_total * 1000 | round) / 10 else null end);
            null; null; "abs>=100"; null;
            "\($h.healthz_ok)/\($h.healthz_total); fresh probes \($h.fresh_probes.ok)/\($h.fresh_probes.total); final fresh \($h.final_fresh.status); refused \($h.refused)"),
        row("hostile"; "job status GET p99 under the storm"; "ms"; $h.status_p99_ms; null; null; "-"; null;
            "p50 \($h.status_p50_ms) ms, max \($h.status_max_ms) ms"),
        row("hostile"; "peak open fds (limit \($h.batchd.fd_limit))"; "fds"; $h.batchd.fds_peak; null; null; "-"; null;
            "start \($h.batchd.fds_start), end \($h.batchd.fds_end)"),
        row("hostile"; "peak RSS"; "MiB"; ($h.batchd.rss_peak_kb / 1024 | r1); null; null; "-"; null;
            "start \($h.batchd.rss_start_kb / 1024 | r1), end \($h.batchd.rss_end_kb / 1024 | r1) MiB; check job \($h.job.status) after \($h.job.completed_after_s) s")
       else empty end),
      (if $oan != null then
        row("openai_batch"; "seconds for \($oan) requests, upload to output downloaded (OpenAI Batch API)"; "s";
            (oai("openai"; .total_s) | r3); "native streamed job, same inputs"; (oai("native"; .total_s) | r3); "-"; null;
            "upload \(oai("openai"; .upload_s) | r3), create \(oai("openai"; .create_s) | r3), job \(oai("openai"; .job_s) | r3), finalize \(oai("openai"; .finalize_s) | r3) (sweep wait \(oai("openai"; .sweep_wait_s) | r3) + writing \(oai("openai"; .write_s) | r3)), download \(oai("openai"; .download_s) | r3) s; native: submit \(oai("native"; .upload_s) | r3), job \(oai("native"; .job_s) | r3), NDJSON results \(oai("native"; .download_s) | r3) s; hashing model, 384 dims"),
        row("openai_batch"; "finalize: output file MB/s (job completed to batch completed)"; "MB/s";
            (oai("openai"; .finalize_mb_s) | r1); null; null; "-"; null;
            "output file \(oai("openai"; .output_bytes) / 1e6 | r1) MB; writing alone (finalizing_at to finalized_at) \(oai("openai"; if (.write_s | type) == "number" and .write_s > 0 then .output_bytes / 1e6 / .write_s else null end) | r1) MB/s; native NDJSON results \(oai("native"; if .download_s > 0 then .output_bytes / 1e6 / .download_s else null end) | r1) MB/s"),
        row("openai_batch"; "peak RSS during the run"; "MiB"; (oai("openai"; .hwm_kb) / 1024 | r1);
            "native streamed job"; (oai("native"; .hwm_kb) / 1024 | r1); "-"; null; "VmHWM, reset at the first byte of each run"),
        row("openai_batch"; "loop lag max during the run (ms, bucket bound)"; "ms";
            ($raw | [.[] | select(.scenario == "openai_batch" and .variant == "openai") | .loop_lag_max_ms | lagnum] | max);
            "native streamed job"; ($raw | [.[] | select(.scenario == "openai_batch" and .variant == "native") | .loop_lag_max_ms | lagnum] | max);
            "-"; null;
            ($raw | [.[] | select(.scenario == "openai_batch" and .variant == "openai")][0] as $o
             | [.[] | select(.scenario == "openai_batch" and .variant == "native")][0] as $n
             | "p99 \($o.loop_lag_p99_ms) (native \($n.loop_lag_p99_ms)); max by phase: upload \($o.upload_loop_lag_max_ms), create \($o.create_loop_lag_max_ms), job \($o.job_loop_lag_max_ms), finalize \($o.finalize_loop_lag_max_ms) (p99 \($o.finalize_loop_lag_p99_ms)), download \($o.download_loop_lag_max_ms); native: submit \($n.upload_loop_lag_max_ms), job \($n.job_loop_lag_max_ms), results \($n.download_loop_lag_max_ms) (first run)"))
       else empty end),
      (if ($mem | length) == 2 then
        row("memory"; "peak RSS, processing (\($mem[1].items) vs \($mem[0].items) items, dim \($mem[1].dim))"; "MiB";
            ($mem[1].hwm_process_kb / 1024 | r1); "same, \($mem[0].items) items"; ($mem[0].hwm_process_kb / 1024 | r1); "ratio<=1.25"; 1.25; "batch \($mem[1].batch_size)"),
        row("memory"; "peak RSS, submit (\($mem[1].items) vs \($mem[0].items) items)"; "MiB";
            ($mem[1].hwm_submit_kb / 1024 | r1); "same, \($mem[0].items) items"; ($mem[0].hwm_submit_kb / 1024 | r1); "-"; null; json_note($mem[1]; $mem[0]))
       else empty end)
    ] | map(select(.batchd != null or .peer != null)) as $rows
  | { date: $stamp, mode: $mode, commit: $commit, runs: $runs, wall_s: $wall, machine: $machine,
      rows: $rows,
      api_curve: ($raw | [.[] | select(.scenario == "api" and (.variant | endswith("_open")))
                  | {variant, offered, rps, p50_ms, p99_ms, p999_ms, loop_lag_max_ms}]),
      raw: $raw }' "$raw" > "$out/results.json"

{
  echo "# batchd bench — $stamp ($mode, commit $(jq -r .commit "$out/results.json"))"
  echo
  echo "Medians of $RUNS run(s) per figure; ratio = batchd / ceiling-or-peer (for RSS rows: big job / small job)."
  echo "Machine: $(jq -r '.machine | "\(.cpu), \(.cores) cores, \(.mem_gib) GiB, \(.os), PostgreSQL \(.postgresql), Redis \(.redis)"' "$out/results.json")."
  echo
  echo "| scenario | figure | batchd | ceiling / peer | its figure | ratio | target | met | note |"
  echo "|---|---|---:|---|---:|---:|---|---|---|"
  jq -r '.rows[] | "| \(.scenario) | \(.metric) | \(.batchd // "–") | \(.peer_name // "–") | \(.peer // "–") | \(.ratio // "–") | \(.target) | \(if .met == true then "yes" elif .met == false then "**no**" else "–" end) | \(.note // "") |"' "$out/results.json"
  if jq -e '.api_curve | length > 0' "$out/results.json" >/dev/null; then
    echo
    echo "Open-loop status GETs (latency from the intended send time):"
    echo
    echo "| target | offered req/s | achieved req/s | p50 ms | p99 ms | p99.9 ms | loop lag max ms |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    jq -r '.api_curve | sort_by(.variant, .offered)[] | "| \(.variant | sub("_open"; "")) | \(.offered) | \(.rps) | \(.p50_ms) | \(.p99_ms) | \(.p999_ms) | \(.loop_lag_max_ms // "–") |"' "$out/results.json"
  fi
} > "$out/results.md"

# ---- plots ------------------------------------------------------------------------------------
if [ $have_gnuplot = 1 ]; then
  gp() { gnuplot -e "set terminal pngcairo size 800,450 font ',10' noenhanced; set output '$out/$1'; set grid; set key left top; set offsets 0, 0, graph 0.05, 0; $2" \
           2>>"$out/logs/gnuplot.log" || log "plot $1 failed (logs/gnuplot.log)"; }
  series() { local f s=""; for f in "$@"; do [ -s "$f" ] && s="$s${s:+, }'$f' using 1:2 with lines lw 2 title '$(basename "$f" .tsv)'"; done; echo "$s"; }
  s=$(series "$out"/insert_progress_r*.tsv "$out"/scale_insert_progress_r*.tsv)
  [ -n "$s" ] && gp insert_throughput.png "set title 'insert: vectors stored over time'; set xlabel 's since first submit'; set ylabel 'items done'; plot $s"
  s=$(series "$out"/embed_*ms_progress_r*.tsv)
  [ -n "$s" ] && gp embed_throughput.png "set title 'embed: texts embedded and stored over time'; set xlabel 's since first submit'; set ylabel 'items done'; plot $s"
  s=""; for f in "$out"/memory_*.tsv "$out"/insert_rss_*.tsv; do
    [ -s "$f" ] && s="$s${s:+, }'$f' using 1:(\$4/1024) with lines lw 2 title '$(basename "$f" .tsv)'"; done
  [ -n "$s" ] && gp memory_rss.png "set title 'batchd RSS while one job runs'; set xlabel 's since submit'; set ylabel 'RSS MiB'; set logscale y; plot $s"
  s=""; for f in "$out"/api_*_max.tsv; do
    [ -s "$f" ] && s="$s${s:+, }'$f' using 1:2 with lines lw 2 title '$(basename "$f" .tsv)'"; done
  [ -n "$s" ] && gp api_throughput.png "set title 'api: closed-loop req/s over time ($API_CONNS connections)'; set xlabel 's'; set ylabel 'req/s (100 ms buckets)'; plot $s"
  jq -r '.api_curve[] | "\(.variant) \(.offered) \(.p50_ms) \(.p99_ms) \(.p999_ms)"' "$out/results.json" > "$work/curve.dat"
  if [ -s "$work/curve.dat" ]; then
    for v in batchd_open nginx_open; do grep "^$v " "$work/curve.dat" | sort -k2 -n > "$work/$v.dat" || true; done
    s=""
    for v in batchd_open nginx_open; do
      [ -s "$work/$v.dat" ] || continue
      s="$s${s:+, }'$work/$v.dat' using 2:3 with linespoints lw 2 title '${v%_open} p50', '$work/$v.dat' using 2:4 with linespoints lw 2 title '${v%_open} p99', '$work/$v.dat' using 2:5 with linespoints lw 2 title '${v%_open} p99.9'"
    done
    gp api_latency.png "set title 'api: status GET latency at fixed offered load (open loop)'; set xlabel 'offered req/s'; set ylabel 'ms'; set logscale y; plot $s"
  fi
fi

[ "$mode" = smoke ] || ln -sfn "$(basename "$out")" "$(dirname "$out")/latest" 2>/dev/null || true
cat "$out/results.md"
log "done in $(awk -v a="$ALL_T0" -v b="$(now_s)" 'BEGIN { printf "%.0f", b - a }') s: $out"

# Every job of every measured run must have completed with every item stored.
bad=$(jq -c '[.raw[] | select((.op != null and (.jobs_failed > 0 or .failed_items > 0 or .submit_errors > 0
                                              or .timed_out == true))
                              or (.scenario == "submit_rss" and (.variant | endswith("_refused") | not)
                                  and .status != 202)
                              or (.scenario == "openai_batch" and .ok != true))] | length' "$out/results.json")
if [ "$bad" != 0 ]; then
  log "WARNING: $bad measured run(s) had failed jobs or items (see raw.ndjson)"
  echo "**Warning: $bad measured run(s) had failed jobs or items; see raw.ndjson.**" >> "$out/results.md"
fi

if [ "$HOSTILE_FAILED" = 1 ]; then
  echo "**hostile: FAILED: see logs/hostile.txt and raw.ndjson.**" >> "$out/results.md"
  log "hostile: FAILED"
  exit 1
fi

# The smoke run checks that every scenario produced a figure.
if [ "$mode" = smoke ]; then
  [ "$bad" = 0 ] || { echo "bench smoke: jobs failed" >&2; exit 1; }
  if [ "$only" = all ]; then      # (--smoke --only hostile: its own checks, above)
    jq -e '[.rows[] | select(.batchd != null and .batchd > 0)] | length >= 6' "$out/results.json" >/dev/null \
      || { echo "bench smoke: too few figures in results.json" >&2; exit 1; }
    jq -e '[.rows[] | select(.scenario == "submit" and .unit == "MiB" and .batchd > 0)] | length == 2' \
      "$out/results.json" >/dev/null || { echo "bench smoke: no submit RSS rows" >&2; exit 1; }
    jq -e '[.raw[] | select(.scenario == "insert" and .variant == "check")][0].rows_differing == 0' \
      "$out/results.json" >/dev/null || { echo "bench smoke: batchd and COPY rows differ" >&2; exit 1; }
    jq -e '[.raw[] | select(.scenario == "openai_batch" and .ok == true)] | length == 2' \
      "$out/results.json" >/dev/null || { echo "bench smoke: no openai_batch figures" >&2; exit 1; }
  fi
  echo "bench smoke: 1 passed, 0 failed"
  # A passing smoke leaves nothing behind in /tmp unless BD_BENCH_OUT chose the folder.
  [ -n "${BD_BENCH_OUT:-}" ] || rm -rf "$out"
fi
