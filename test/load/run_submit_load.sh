#!/usr/bin/env bash
# run_submit_load.sh -- one-item submits/s of a batchd binary at given concurrencies, on the
# stack that `scripts/stack.sh start $STACK` runs (default "bench": fsync on, unlike "test";
# BD_REDIS_PORT / BD_PG_PORT honoured).
#   test/load/run_submit_load.sh BATCHD_BINARY N "8 32"
# Each run starts on empty stores: jobs table truncated, Redis database flushed.
# MODEL=hashmodel (default): the jobs also run (built-in hashing model), as in the bench.
# MODEL=heldmodel: the model never answers (a socket that listens and never accepts), so
# the engine holds max_concurrent_jobs jobs and the rest stay queued: the submit path alone.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
bin=${1:?batchd binary}; n=${2:-5000}; concs=${3:-"8 32"}
stack=${STACK:-bench}
eval "$("$top/scripts/stack.sh" env "$stack")"
cc -O2 -o /tmp/submit_load.$$ "$top/test/load/submit_load.c" -lcurl
port=$((20000 + $$ % 20000)); held=$((port + 1))
model=${MODEL:-hashmodel}
python3 -c "import socket,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', $held)); s.listen(64); time.sleep(100000)" &
hold_pid=$!
trap 'kill $hold_pid 2>/dev/null || true' EXIT
cfg=/tmp/submit_load.$$.yaml
cat >"$cfg" <<YAML
server:
  listen: 127.0.0.1:$port
  log_level: warn
redis:
  url: $BATCH_REDIS_URL
postgres:
  url: $BATCH_POSTGRES_URL
models:
  - name: hashmodel
    provider: hashing
    dimensions: 4
  - name: heldmodel
    provider: ollama
    base_url: http://127.0.0.1:$held
    dimensions: 4
    timeout: 600
YAML
for c in $concs; do
  psql "$BATCH_POSTGRES_URL" -qAtc "DO \$\$ BEGIN IF to_regclass('jobs') IS NOT NULL THEN
      TRUNCATE jobs CASCADE; END IF; END \$\$" >/dev/null
  redis-cli -u "$BATCH_REDIS_URL" FLUSHDB >/dev/null
  "$bin" --config "$cfg" 2>/tmp/submit_load.$$.log &
  pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
  /tmp/submit_load.$$ "http://127.0.0.1:$port" "$n" "$c" "$model" || true
  kill -TERM $pid; wait $pid || true
done
rm -f /tmp/submit_load.$$ "$cfg"
