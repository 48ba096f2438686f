#!/usr/bin/env bash
# run.sh -- start the dev stack and batchd in the foreground; Ctrl-C stops both.
#   scripts/run.sh <batchd-binary> <config>
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-build/batchd}; conf=${2:-conf/dev.yaml}
cd "$top"

scripts/stack.sh start dev
eval "$(scripts/stack.sh env dev)"
export BATCH_REDIS_URL BATCH_POSTGRES_URL
listen=${BATCH_LISTEN:-$(sed -n 's/^ *listen: *//p' "$conf" | head -n 1)}
base="http://${listen:-127.0.0.1:8000}"

pid=
stop() {
  trap - INT TERM EXIT
  [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  scripts/stack.sh stop dev
  echo "stopped batchd and the dev stack" >&2
}
trap stop INT TERM EXIT

"$bin" --config "$conf" &
pid=$!
for _ in $(seq 1 100); do
  curl -fsS "$base/healthz" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { echo "batchd exited; see the log above" >&2; exit 1; }
  sleep 0.1
done
cat <<MSG

batchd is running at $base   (Ctrl-C stops it and the dev stack)

  curl -s -X POST $base/api/v1/batch/jobs -H 'Content-Type: application/json' -d '{
    "operation": "bulk_embed", "model": "mixtral",
    "data": [{"text": "First text to embed"}, {"text": "Second text to embed"}],
    "options": {"batch_size": 10, "priority": "normal"}}'
  curl -s $base/api/v1/batch/queue/status

  dashboard:     $base/ui
  command line:  $(dirname "$bin")/batchctl --url $base queue
  OpenAI SDKs:   baseURL $base/v1   (docs/openai-compat.md)

MSG
wait "$pid"
