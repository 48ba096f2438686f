#!/usr/bin/env bash
# test.sh -- start a throw-away test stack, run every ctest suite, stop the stack.
#   scripts/test.sh <build-dir> [ctest args...]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-build}; shift || true
cd "$top"

scripts/stack.sh wipe test >/dev/null 2>&1 || true
trap '"$top/scripts/stack.sh" stop test >/dev/null 2>&1 || true' EXIT
scripts/stack.sh start test
eval "$(scripts/stack.sh env test)"
export BATCH_REDIS_URL BATCH_POSTGRES_URL
cd "$build"
ctest --output-on-failure --timeout 900 -j 2 "$@"
