#!/usr/bin/env bash
# pkg_unit.sh -- the systemd unit (packaging/batchd.service) as systemd reads it:
#   1. `systemd-analyze verify` has nothing to say about it (unknown keys and bad values are
#      only warnings there, exit 0, so any line about the unit fails the test);
#   2. `systemd-analyze security --offline=true` scores its exposure at most MAX_EXPOSURE,
#      1.2: the score reached (systemd 252; 0 is fully locked down, 10 not at all). What is
#      left is PrivateNetwork, IPAddressDeny (batchd serves and calls the network) and the
#      read access to /dev/rtc that PrivateDevices keeps. A weaker unit fails here;
#   3. the config it starts batchd with (conf/batchd.yaml, installed as
#      /etc/batchd/batchd.yaml) passes `batchd --check-config`, with the unit's own flags.
# Exit 77 (ctest: skipped) only when systemd-analyze is missing (scripts/deps.sh installs
# the systemd package). Env: BD_SOURCE_DIR, BD_BATCHD_BIN (ctest sets both); BD_UNIT and
# BD_CONFIG check another unit and config (packaging/deb.sh: those of the built .deb).
set -euo pipefail
MAX_EXPOSURE=${MAX_EXPOSURE:-1.2}
src=${BD_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
bin=$(realpath "${BD_BATCHD_BIN:-$src/build/batchd}")
unit=${BD_UNIT:-$src/packaging/batchd.service}
config=${BD_CONFIG:-$src/conf/batchd.yaml}

if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "pkg_unit: SKIP: systemd-analyze not found (install the 'systemd' package)"
  exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# verify checks that ExecStart's program exists: point it at the binary just built.
sed "s|/usr/bin/batchd|$bin|g" "$unit" > "$tmp/batchd.service"
out=$(systemd-analyze verify --man=no "$tmp/batchd.service" 2>&1) || {
  echo "pkg_unit: FAIL: systemd-analyze verify exited non-zero:"; echo "$out"; exit 1; }
if printf '%s\n' "$out" | grep -q 'batchd.service'; then
  echo "pkg_unit: FAIL: systemd-analyze verify complains about the unit:"; echo "$out"; exit 1
fi
echo "pkg_unit: systemd-analyze verify: clean"

sec=$(systemd-analyze security --offline=true "$tmp/batchd.service" 2>&1) || true
score=$(printf '%s\n' "$sec" | sed -n 's/.*Overall exposure level for batchd.service: \([0-9.]*\).*/\1/p')
if [ -z "$score" ]; then
  echo "pkg_unit: FAIL: no exposure score from systemd-analyze security:"; echo "$sec"; exit 1
fi
if awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s > m) }'; then
  printf '%s\n' "$sec" | grep '✗' || true
  echo "pkg_unit: FAIL: exposure $score > $MAX_EXPOSURE (the ✗ lines above say why)"; exit 1
fi
echo "pkg_unit: systemd-analyze security: exposure $score (at most $MAX_EXPOSURE)"

exec_line=$(sed -n 's/^ExecStart=//p' "$unit")
case "$exec_line" in
  "/usr/bin/batchd --config /etc/batchd/batchd.yaml") ;;
  *) echo "pkg_unit: FAIL: unexpected ExecStart=$exec_line"; exit 1 ;;
esac
"$bin" --config "$config" --check-config
echo "pkg_unit: ok"
