#!/usr/bin/env bash
# A Citus cluster on this machine for the scale-out tests: a coordinator and
# two workers, each its own PostgreSQL 15 data directory with
# shared_preload_libraries = 'citus', on 127.0.0.1 ports 9700 (coordinator),
# 9701 and 9702, trust authentication, run as the postgres user.
#
#   scripts/citus-cluster.sh start   # creates (first time) and starts it
#   scripts/citus-cluster.sh stop
#
# Citus itself is installed by scripts/citus.sh. Databases are made by the
# tests; the nodes know nothing about each other until a test adds them.
set -euo pipefail

BIN=/usr/lib/postgresql/15/bin
ROOT="${TENANCY_CITUS_DIR:-/tmp/tenancy-citus}"
PORTS=(9700 9701 9702)
NAMES=(coordinator worker1 worker2)

as_postgres() {
    if [ "$(id -un)" = postgres ]; then
        "$@"
    elif [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        sudo -u postgres -- "$@"
    fi
}

start() {
    if [ ! -d "${ROOT}" ]; then
        as_postgres mkdir -p "${ROOT}"
    fi
    for i in 0 1 2; do
        dir="${ROOT}/${NAMES[$i]}"
        port="${PORTS[$i]}"
        if [ ! -f "${dir}/PG_VERSION" ]; then
            as_postgres "${BIN}/initdb" -D "${dir}" -A trust -U postgres --no-sync >/dev/null
            cat >>"${dir}/postgresql.conf" <<CONF
port = ${port}
listen_addresses = '127.0.0.1'
unix_socket_directories = '${ROOT}'
shared_preload_libraries = 'citus'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
max_prepared_transactions = 100
wal_level = logical
CONF
        fi
        if ! "${BIN}/pg_isready" -q -h 127.0.0.1 -p "${port}"; then
            as_postgres env RUST_BACKTRACE=1 "${BIN}/pg_ctl" -D "${dir}" -l "${ROOT}/${NAMES[$i]}.log" -w -t 60 start >/dev/null
        fi
    done
}

stop() {
    for i in 0 1 2; do
        dir="${ROOT}/${NAMES[$i]}"
        if [ -f "${dir}/postmaster.pid" ]; then
            as_postgres "${BIN}/pg_ctl" -D "${dir}" -m fast -w stop >/dev/null || true
        fi
    done
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
