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

# A sanitizer build (configured with BATCHD_ASAN or BATCHD_UBSAN, e.g. `make test-asan`):
# every process -- the suites, the batchd and fake model they start -- writes its reports
# under <build>/sanitizer/ (report.<program>.<pid>), and any report fails the run. batchd's
# stderr reaches a suite only when it exits non-zero in bd_it_stop; a report of a batchd
# that the test then SIGKILLs would otherwise go unseen. Options given in ASAN_OPTIONS /
# UBSAN_OPTIONS come after these defaults, so they win.
reports=""
if grep -qE '^BATCHD_(ASAN|UBSAN):BOOL=ON' CMakeCache.txt 2>/dev/null; then
  reports="$PWD/sanitizer"
  rm -rf "$reports" && mkdir -p "$reports"
  san_log="log_path=$reports/report:log_exe_name=1"
  # allow_addr2line: file:line from binutils' addr2line where llvm-symbolizer is absent.
  common="$san_log:allow_addr2line=1:print_summary=1"
  export ASAN_OPTIONS="$common:halt_on_error=1:detect_leaks=1:detect_stack_use_after_return=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
  export UBSAN_OPTIONS="$common:halt_on_error=1:print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
fi

rc=0
ctest --output-on-failure --timeout 900 -j 2 "$@" || rc=$?
if [ -n "$reports" ]; then
  # A finding ends with a SUMMARY line; LSan also writes a file that only lists the
  # suppressions a program used (bench_load's), which is not one.
  found=$(grep -l '^SUMMARY: ' "$reports"/* 2>/dev/null || true)
  for f in $found; do
    echo "==== sanitizer report $f ====" >&2
    cat "$f" >&2
  done
  if [ -n "$found" ]; then
    echo "test.sh: $(echo "$found" | wc -l) sanitizer report(s) above, in $reports" >&2
    [ "$rc" -ne 0 ] || rc=1
  fi
fi
exit "$rc"
