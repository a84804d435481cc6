#!/usr/bin/env bash
# Installs the Debian package (scripts/package.sh) with dpkg and exercises
# it with nothing but PostgreSQL's own tools: no Rust toolchain on the PATH.
# In a database of its own: CREATE EXTENSION at the current version, a
# protected table with two tenants' rows, a trusted context that sees one
# tenant's rows only, no context refused; the released 0.1.0 installed and
# updated in place. Exits non-zero on any difference.
set -euo pipefail
cd "$(dirname "$0")/.."

deb="$(bash scripts/package.sh | tail -1)"
dpkg -i "${deb}" >/dev/null
echo "installed $(dpkg-query -W -f='${Package} ${Version}' postgresql-15-tenancy)"

# From here on, only the system's programs.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PGOPTIONS="-c client_min_messages=warning"
if command -v cargo >/dev/null 2>&1 || command -v rustc >/dev/null 2>&1; then
    echo "a Rust toolchain is on the PATH" >&2
    exit 1
fi

PG_URL="${TENANCY_PG_URL:-postgres://postgres:postgres@127.0.0.1:5432}"
db="tenancy_pkg_$$"
role="tenancy_pkg_app_$$"
cleanup() {
    psql "${PG_URL}/postgres" -qc "DROP DATABASE IF EXISTS ${db}" >/dev/null 2>&1 || true
    # The SET privileges on tenancy's parameters are the cluster's.
    psql "${PG_URL}/postgres" -qc "REVOKE SET ON PARAMETER tenancy.tenant_id, tenancy.user_id FROM ${role}" >/dev/null 2>&1 || true
    psql "${PG_URL}/postgres" -qc "DROP ROLE IF EXISTS ${role}" >/dev/null 2>&1 || true
}
trap cleanup EXIT
psql "${PG_URL}/postgres" -qc "CREATE DATABASE ${db}"
psql "${PG_URL}/postgres" -qc "CREATE ROLE ${role} LOGIN PASSWORD 'pkg'"

q() { psql "${PG_URL}/${db}" -qAtX -v ON_ERROR_STOP=1 -c "$1"; }
expect() {
    if [ "$2" != "$3" ]; then echo "FAIL: $1: expected '$3', got '$2'" >&2; exit 1; fi
    echo "ok: $1"
}

q "CREATE EXTENSION tenancy" >/dev/null
expect "installed version" "$(q "SELECT extversion FROM pg_extension WHERE extname = 'tenancy'")" \
    "$(sed -nE 's/^version = "([^"]+)"/\1/p' Cargo.toml | head -1)"
acme="$(q "SELECT tenancy.create_tenant('acme', 'Acme')")"
globex="$(q "SELECT tenancy.create_tenant('globex', 'Globex')")"
q "CREATE TABLE notes (tenant_id uuid NOT NULL, id int, body text, PRIMARY KEY (tenant_id, id));
   SELECT tenancy.protect('notes');
   GRANT SELECT, INSERT ON notes TO ${role};
   SELECT tenancy.grant_context_setter('${role}');" >/dev/null
q "BEGIN; SET LOCAL tenancy.tenant_id = '${acme}'; INSERT INTO notes VALUES ('${acme}', 1, 'a'); COMMIT;
   BEGIN; SET LOCAL tenancy.tenant_id = '${globex}'; INSERT INTO notes VALUES ('${globex}', 1, 'g'); COMMIT;"

as_app() { PGPASSWORD=pkg psql "postgres://${role}@127.0.0.1:5432/${db}" -qAtX -v ON_ERROR_STOP=1 -c "$1" 2>&1; }
expect "acme's context sees acme's row only" \
    "$(as_app "BEGIN; SET LOCAL tenancy.tenant_id = '${acme}'; SELECT string_agg(body, ',') FROM notes; COMMIT;")" "a"
expect "globex's context sees globex's row only" \
    "$(as_app "BEGIN; SET LOCAL tenancy.tenant_id = '${globex}'; SELECT string_agg(body, ',') FROM notes; COMMIT;")" "g"
expect "no context is refused" \
    "$(as_app "SELECT count(*) FROM notes" | grep -o 'tenant context required')" "tenant context required"
expect "the lint runs" "$(q "SELECT count(*) FROM tenancy.lint() WHERE severity = 'error'")" "0"

q "DROP EXTENSION tenancy CASCADE; CREATE EXTENSION tenancy VERSION '0.1.0'" >/dev/null
expect "the released version installs" "$(q "SELECT extversion FROM pg_extension WHERE extname = 'tenancy'")" "0.1.0"
q "ALTER EXTENSION tenancy UPDATE" >/dev/null
expect "and updates in place" "$(q "SELECT count(*) FROM pg_proc WHERE proname = 'lint'")" "1"
echo "package: all checks passed"
