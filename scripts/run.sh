#!/usr/bin/env bash
# The main job: set up the machine, install the extension into a local
# database (tenancy_demo) and show isolation working on a demo schema, as
# the application role, with signed tokens; then start the service
# (database tenancy) with demo tenants and users, show a few calls with
# curl, and keep serving on 127.0.0.1:8080 until Ctrl-C.
set -euo pipefail
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cargo build --quiet -p tenancy-token --features cli --bin tenancy-sign

PG_URL="${TENANCY_PG_URL:-postgres://postgres:postgres@127.0.0.1:5432}"
DB=tenancy_demo
export TENANCY_SIGNING_KEY="demo-signing-secret-change-me-0123456789"
su() { psql "${PG_URL}/${DB}" -v ON_ERROR_STOP=1 -qAt "$@"; }
as_app() { psql "postgres://tenancy_demo_app:demo@${PG_URL#*@}/${DB}" -q "$@"; }
sign() { target/debug/tenancy-sign --kid demo --tenant "$1" --user "$2"; }

psql "${PG_URL}/postgres" -qc "DROP DATABASE IF EXISTS ${DB} WITH (FORCE)" -c "CREATE DATABASE ${DB}"
psql "${PG_URL}/postgres" -qAt >/dev/null <<'SQL'
DO $$ BEGIN
  CREATE ROLE tenancy_demo_owner LOGIN PASSWORD 'demo';
EXCEPTION WHEN duplicate_object THEN NULL; END $$;
DO $$ BEGIN
  CREATE ROLE tenancy_demo_app LOGIN PASSWORD 'demo';
EXCEPTION WHEN duplicate_object THEN NULL; END $$;
SQL
su >/dev/null <<SQL
CREATE EXTENSION tenancy;
SELECT tenancy.grant_table_owner('tenancy_demo_owner');
GRANT CREATE ON SCHEMA public TO tenancy_demo_owner;
SELECT tenancy.add_key('demo', 'HS256', '${TENANCY_SIGNING_KEY}');
-- Load the library at connect, so a forged SET is refused at once.
ALTER DATABASE ${DB} SET session_preload_libraries = 'tenancy';
SQL
psql "postgres://tenancy_demo_owner:demo@${PG_URL#*@}/${DB}" -v ON_ERROR_STOP=1 -qAt \
    -f tests/fixtures/schema.sql \
    -c "GRANT SELECT, INSERT, UPDATE, DELETE ON projects, tasks TO tenancy_demo_app" >/dev/null

ACME=$(su -c "SELECT tenancy.create_tenant('acme', 'Acme Corp')")
GLOBEX=$(su -c "SELECT tenancy.create_tenant('globex', 'Globex')")
ALICE=$(cat /proc/sys/kernel/random/uuid)
BOB=$(cat /proc/sys/kernel/random/uuid)
ACME_TOKEN=$(sign "$ACME" "$ALICE")
GLOBEX_TOKEN=$(sign "$GLOBEX" "$BOB")

# Sets a token without putting it in statement text (other sessions of the
# role can read that): psql 15 cannot bind parameters, so the token travels
# as COPY data into a temporary table and tenancy.set_token() reads it there.
with_token() {
    local file
    file=$(mktemp)
    printf '%s\n' "$1" > "$file"
    chmod 644 "$file"
    { printf 'BEGIN;\nCREATE TEMP TABLE demo_context (token text) ON COMMIT DROP;\n\\copy demo_context FROM %s\nSELECT tenancy.set_token(token) IS NULL AS ok FROM demo_context \\gset\n' "$file"; cat; } | as_app "${@:2}"
    rm -f "$file"
}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Tenants acme ($ACME) and globex ($GLOBEX); projects and tasks are protected"
su -c "SELECT relation_name, tenant_column, rls_enabled, rls_forced, tenant_index FROM tenancy.protected_tables" -P footer=off -F ' | '

step "As the application role with acme's signed token: insert and read"
with_token "${ACME_TOKEN}" <<SQL
INSERT INTO projects (name) VALUES ('Rocket');
INSERT INTO tasks (project_id, title) SELECT id, 'Build the rocket' FROM projects;
SELECT tenant_id, name FROM projects;
COMMIT;
SQL

step "As the application role with globex's signed token: insert and read"
with_token "${GLOBEX_TOKEN}" <<SQL
INSERT INTO projects (name) VALUES ('Laser');
SELECT tenant_id, name FROM projects;
SELECT count(*) AS tasks_visible_to_globex FROM tasks;
COMMIT;
SQL

step "No context: the query fails loudly"
as_app -c "SELECT * FROM projects" 2>&1 || true

step "Forged trusted context: refused"
as_app -c "SET tenancy.tenant_id = '${ACME}'" -c "SELECT * FROM projects" 2>&1 || true

step "Tampered token (globex's signature, acme's payload): refused"
TAMPERED="$(cut -d. -f1 <<<"$GLOBEX_TOKEN").$(cut -d. -f2 <<<"$ACME_TOKEN").$(cut -d. -f3 <<<"$GLOBEX_TOKEN")"
with_token "${TAMPERED}" 2>&1 <<SQL || true
SELECT * FROM projects;
SQL

step "Naming another tenant on insert: refused"
with_token "${ACME_TOKEN}" 2>&1 <<SQL || true
INSERT INTO projects (tenant_id, name) VALUES ('${GLOBEX}', 'Planted');
SQL

step "Suspending acme: its token stops working at once"
su -c "SELECT tenancy.set_tenant_status('${ACME}', 'suspended')" >/dev/null
with_token "${ACME_TOKEN}" 2>&1 <<SQL || true
SELECT * FROM projects;
SQL

printf '\nDemo database: postgres://tenancy_demo_app:demo@%s/%s\nSign more tokens with:\n' "${PG_URL#*@}" "${DB}"
printf '  TENANCY_SIGNING_KEY=%s target/debug/tenancy-sign --kid demo --tenant %s\n' "$TENANCY_SIGNING_KEY" "$GLOBEX"

[ "${TENANCY_NO_SERVE:-0}" = "1" ] && exit 0
bash scripts/serve-demo.sh
