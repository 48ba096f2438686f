#!/usr/bin/env bash
# deps.sh [--sanitizers] [--deb] [package...] -- install the Debian packages batchd needs to
# build, run and test (--sanitizers: also what `make test-asan` needs; --deb: also what
# `make deb` needs to build the Debian package; see below).
# Idempotent and silent when everything is already there. Debian 12 (bookworm).
set -euo pipefail

PKGS=(
  gcc make cmake pkg-config libc6-dev
  libuv1-dev node-llhttp libhiredis-dev libpq-dev libjansson-dev libcyaml-dev
  libcurl4-openssl-dev libcmocka-dev libssl-dev zlib1g-dev
  libsystemd-dev  # sd_notify: READY/STATUS/STOPPING/WATCHDOG under systemd (src/svc_notify.c)
  systemd     # systemd-analyze: test/pkg_unit.sh verifies and scores packaging/batchd.service
  redis-server redis-tools postgresql postgresql-client
  curl ca-certificates procps
  jq          # scripts/test_batch_processing.sh
  prometheus  # promtool: the metrics tests check the exposition with `promtool check metrics`
)
# --sanitizers (make test-asan): clang, and the ASan/UBSan/libFuzzer runtimes
# (libclang_rt.*.a), which clang-14 only recommends and recommends are not installed here.
SAN_PKGS=(clang libclang-rt-14-dev)
# --deb (make deb): dpkg-buildpackage and debhelper (compat 13). No fakeroot: the package
# says Rules-Requires-Root: no.
DEB_PKGS=(dpkg-dev debhelper)
while [ $# -gt 0 ]; do
  case "$1" in
    --sanitizers) PKGS+=("${SAN_PKGS[@]}") ;;
    --deb) PKGS+=("${DEB_PKGS[@]}") ;;
    *) break ;;
  esac
  shift
done
PKGS+=("$@")
# Node.js and npm run the official openai package against batchd (it_files); a node or npm
# installed some other way is used as it is, not replaced by Debian's.
command -v node >/dev/null 2>&1 || PKGS+=(nodejs)
command -v npm >/dev/null 2>&1 || PKGS+=(npm)
# Debian's chromium, driven by playwright-core, runs the dashboard test (it_ui; the test
# uses /usr/bin/chromium, since browser downloads are not possible here). Only when missing.
[ -x /usr/bin/chromium ] || PKGS+=(chromium)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "deps: installing ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "deps: missing packages (${missing[*]}) and not root; install them or run as root" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
# Do not let package installation start system-wide Redis/PostgreSQL services: the project
# runs its own private servers (scripts/stack.sh).
if [ ! -e /usr/sbin/policy-rc.d ] && [ -z "$SUDO" ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "deps: done" >&2
