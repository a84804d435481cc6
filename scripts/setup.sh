#!/usr/bin/env bash
# Idempotent machine setup for tenancy: installs what is missing (Debian
# packages, cargo-pgrx), starts PostgreSQL 15 and Redis if they are not
# running. Fast when everything is already there.
set -euo pipefail
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

PG_MAJOR=15
PGRX_VERSION=0.18.0
PG_CONFIG=/usr/lib/postgresql/${PG_MAJOR}/bin/pg_config

log() { printf '[setup] %s\n' "$*" >&2; }

# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

install_packages postgresql-${PG_MAJOR} postgresql-server-dev-${PG_MAJOR} libclang-dev clang sudo redis-server pkg-config libssl-dev python3

if ! cargo pgrx --version 2>/dev/null | grep -q "${PGRX_VERSION}"; then
    log "installing cargo-pgrx ${PGRX_VERSION} (a few minutes)"
    cargo install cargo-pgrx --version "${PGRX_VERSION}" --locked
fi

if [ ! -f "${PGRX_HOME:-$HOME/.pgrx}/config.toml" ] || ! grep -q "pg${PG_MAJOR}" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
    log "registering PostgreSQL ${PG_MAJOR} with pgrx"
    cargo pgrx init --pg${PG_MAJOR} "${PG_CONFIG}"
fi

# PostgreSQL: the system cluster on 127.0.0.1:5432.
if ! pg_lsclusters -h 2>/dev/null | grep -q "^${PG_MAJOR} "; then
    log "creating cluster ${PG_MAJOR}/main"
    as_root pg_createcluster ${PG_MAJOR} main
fi
# The cluster runs with RUST_BACKTRACE=1: the tests prove that even then no
# Rust backtrace reaches a client (tests/e2e/attack_tenancy_admin.rs).
PG_ENV_FILE=/etc/postgresql/${PG_MAJOR}/main/environment
if [ -f "${PG_ENV_FILE}" ] && ! grep -q '^RUST_BACKTRACE' "${PG_ENV_FILE}"; then
    log "setting RUST_BACKTRACE=1 for cluster ${PG_MAJOR}/main"
    echo "RUST_BACKTRACE = '1'" | as_root tee -a "${PG_ENV_FILE}" >/dev/null
    if pg_isready -q -h 127.0.0.1 -p 5432; then
        as_root pg_ctlcluster --skip-systemctl-redirect ${PG_MAJOR} main restart
    fi
fi
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    log "starting PostgreSQL ${PG_MAJOR}"
    as_root pg_ctlcluster --skip-systemctl-redirect ${PG_MAJOR} main start
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi

# Redis on 127.0.0.1:6379.
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    log "starting Redis"
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
        --dir /tmp --logfile /tmp/tenancy-redis.log
    for _ in $(seq 1 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 1; done
fi

# The tests and the demo connect over TCP as postgres with password
# "postgres" (trust auth ignores it; a stock Debian cluster needs it).
PG_URL="${TENANCY_PG_URL:-postgres://postgres:postgres@127.0.0.1:5432}"
if ! psql "${PG_URL}/postgres" -qAtc 'SELECT 1' >/dev/null 2>&1; then
    log "giving the postgres role a local password for TCP connections"
    (cd / && runuser -u postgres -- psql -qc "ALTER ROLE postgres PASSWORD 'postgres'")
fi

# Build and install the extension into the system PostgreSQL.
if [ "${TENANCY_SKIP_INSTALL:-0}" != "1" ]; then
    log "building and installing the tenancy extension (${TENANCY_PROFILE:-debug})"
    profile_flag=()
    [ "${TENANCY_PROFILE:-debug}" = "release" ] && profile_flag=(--release)
    (cd "$(dirname "$0")/../extension" && cargo pgrx install --pg-config "${PG_CONFIG}" "${profile_flag[@]}" >/dev/null)
    # Released versions, frozen, beside the current one: databases created
    # with them update with ALTER EXTENSION tenancy UPDATE (the update
    # scripts in extension/sql are installed by cargo pgrx).
    install -m 644 "$(dirname "$0")"/../extension/versions/tenancy--*.sql "$("${PG_CONFIG}" --sharedir)/extension/"
fi

log "ready: PostgreSQL $(pg_config --version | awk '{print $2}'), $(redis-server --version | awk '{print $3}'), cargo-pgrx ${PGRX_VERSION}"
