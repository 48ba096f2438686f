#!/usr/bin/env bash
# stack.sh -- start/stop a private Redis and PostgreSQL for development or tests.
#
#   scripts/stack.sh start|stop|status|env|wipe [dev|test]
#
# Data lives under var/<name>/ (git-ignored); both servers listen on 127.0.0.1 only, on
# ports that do not clash with system services (dev: Redis 16379, PostgreSQL 15432;
# test: 16380 and 15433; override with BD_REDIS_PORT / BD_PG_PORT). When run as root,
# initdb and pg_ctl run as the unprivileged 'postgres' user. `env` prints the URLs as
# shell exports.
set -euo pipefail

cmd=${1:-status}
name=${2:-dev}
top=$(cd "$(dirname "$0")/.." && pwd)

case "$name" in
  dev)  redis_port=${BD_REDIS_PORT:-16379}; pg_port=${BD_PG_PORT:-15432} ;;
  test) redis_port=${BD_REDIS_PORT:-16380}; pg_port=${BD_PG_PORT:-15433} ;;
  *)    redis_port=${BD_REDIS_PORT:?set BD_REDIS_PORT}; pg_port=${BD_PG_PORT:?set BD_PG_PORT} ;;
esac

var="$top/var/$name"
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
db=batchd
pg_user=batchd

as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# PostgreSQL's data must be reachable by the user it runs as. Under root that is
# 'postgres', which may not traverse the checkout's parent folders (e.g. a 0700 home);
# then the cluster lives in /tmp instead and var/<name>/pg is a symlink to it.
pg_dir() {
  local d="$var/pg"
  if [ -L "$d" ]; then readlink "$d"; return; fi
  if [ "$(id -u)" -eq 0 ] && ! runuser -u postgres -- test -x "$var" 2>/dev/null; then
    local alt
    alt="/tmp/batchd-pg-$(printf '%s' "$var" | cksum | cut -d' ' -f1)"
    mkdir -p "$alt"; ln -sfn "$alt" "$d"; echo "$alt"; return
  fi
  echo "$d"
}

redis_url="redis://127.0.0.1:$redis_port/0"
pg_url="postgresql://$pg_user@127.0.0.1:$pg_port/$db"

redis_up() { redis-cli -h 127.0.0.1 -p "$redis_port" ping 2>/dev/null | grep -q PONG; }
pg_up() { "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port" 2>/dev/null; }

wait_for() {  # wait_for <what> <check-fn> <seconds>
  local what=$1 fn=$2 n=$(( $3 * 10 ))
  while ! $fn; do
    n=$((n - 1))
    if [ $n -le 0 ]; then echo "stack: $what did not become ready" >&2; return 1; fi
    sleep 0.1
  done
}

start_redis() {
  if redis_up; then echo "stack: redis already up on $redis_port" >&2; return; fi
  mkdir -p "$var/redis"
  local persist=(--save "" --appendonly no)
  [ "$name" = dev ] && persist=(--save "" --appendonly yes)
  # 32 databases: the test suites take one each (test/support/bd_it.h).
  redis-server --port "$redis_port" --bind 127.0.0.1 --daemonize yes --databases 32 \
    --dir "$var/redis" --pidfile "$var/redis/redis.pid" --logfile "$var/redis/redis.log" \
    "${persist[@]}" >/dev/null
  wait_for redis redis_up 10
}

start_pg() {
  if pg_up; then echo "stack: postgresql already up on $pg_port" >&2; return; fi
  mkdir -p "$var"
  local d
  d=$(pg_dir)
  mkdir -p "$d"
  [ "$(id -u)" -eq 0 ] && chown postgres: "$d"
  chmod 700 "$d"
  if [ ! -f "$d/data/PG_VERSION" ]; then
    as_pg "$pg_bin/initdb" -D "$d/data" -U "$pg_user" --auth=trust -E UTF8 \
      --locale=C.UTF-8 >"$d/initdb.log" 2>&1 || { cat "$d/initdb.log" >&2; exit 1; }
  fi
  local opts="-p $pg_port -k $d -c listen_addresses=127.0.0.1 -c max_connections=200"
  [ "$name" = test ] && opts="$opts -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  as_pg "$pg_bin/pg_ctl" -D "$d/data" -o "$opts" -l "$d/postgres.log" -w -t 30 start >/dev/null \
    || { tail -n 30 "$d/postgres.log" >&2; exit 1; }
  wait_for postgresql pg_up 30
  if ! "$pg_bin/psql" -h 127.0.0.1 -p "$pg_port" -U "$pg_user" -d postgres -Atqc \
      "SELECT 1 FROM pg_database WHERE datname='$db'" | grep -q 1; then
    "$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U "$pg_user" "$db"
  fi
}

stop_all() {
  if [ -f "$var/redis/redis.pid" ]; then
    redis-cli -h 127.0.0.1 -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
    rm -f "$var/redis/redis.pid"
  fi
  local d
  d=$(pg_dir 2>/dev/null || true)
  if [ -n "$d" ] && [ -f "$d/data/postmaster.pid" ]; then
    as_pg "$pg_bin/pg_ctl" -D "$d/data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
  fi
}

case "$cmd" in
  start)
    start_redis
    start_pg
    echo "stack: redis      $redis_url" >&2
    echo "stack: postgresql $pg_url" >&2
    ;;
  stop)  stop_all ;;
  restart-pg)   # tests: PostgreSQL goes away and comes back with its data
    # Ask the server where its data is: the stack may have been started by another
    # checkout (a reused test stack).
    data=$("$pg_bin/psql" -h 127.0.0.1 -p "$pg_port" -U "$pg_user" -d postgres -Atqc \
      "SHOW data_directory")
    as_pg "$pg_bin/pg_ctl" -D "$data" -m fast -w -t 30 restart >/dev/null
    wait_for postgresql pg_up 30
    ;;
  restart-redis)  # tests: Redis restarts empty (no persistence in the test stack)
    redis-cli -h 127.0.0.1 -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
    sleep 0.2
    start_redis
    ;;
  wipe)
    stop_all
    d=$(pg_dir 2>/dev/null || true)
    [ -n "$d" ] && [ "$d" != "$var/pg" ] && rm -rf "$d"
    rm -rf "$var"
    ;;
  env)
    echo "export BATCH_REDIS_URL=$redis_url"
    echo "export BATCH_POSTGRES_URL=$pg_url"
    ;;
  status)
    redis_up && echo "redis: up ($redis_url)" || echo "redis: down"
    pg_up && echo "postgresql: up ($pg_url)" || echo "postgresql: down"
    ;;
  *) echo "usage: $0 start|stop|status|env|wipe|restart-pg|restart-redis [dev|test]" >&2; exit 2 ;;
esac
