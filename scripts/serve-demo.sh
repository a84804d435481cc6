#!/usr/bin/env bash
# Starts tenancy-server against a fresh local database "tenancy" with demo
# tenants and users, shows login and a few calls with curl, then keeps
# serving on 127.0.0.1:8080 until Ctrl-C. Assumes scripts/setup.sh ran.
set -euo pipefail
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
cd "$(dirname "$0")/.."

PG_URL="${TENANCY_PG_URL:-postgres://postgres:postgres@127.0.0.1:5432}"
HOSTPORT="${PG_URL#*@}"
export DATABASE_URL="postgres://tenancy_app:tenancy_app@${HOSTPORT}/tenancy"
export DATABASE_OWNER_URL="postgres://tenancy_owner:tenancy_owner@${HOSTPORT}/tenancy"
export TENANCY_JWT_SECRET="${TENANCY_JWT_SECRET:-demo-access-token-secret-change-me-0000}"
export TENANCY_CONTEXT_SECRET="${TENANCY_CONTEXT_SECRET:-demo-context-secret-change-me-00000000}"
# The demo's platform key; a real one: `openssl rand -base64 32`, kept out of the database.
export TENANCY_DATA_KEY="${TENANCY_DATA_KEY:-ZGVtby1wbGF0Zm9ybS1rZXktY2hhbmdlLW1lLTAwMDA=}"
export TENANCY_BASE_DOMAIN="${TENANCY_BASE_DOMAIN:-tenancy.localhost}"
export TENANCY_PASSWORD="demo-password"
LISTEN="${TENANCY_LISTEN:-127.0.0.1:8080}"
export TENANCY_LISTEN="$LISTEN"

cargo build --quiet -p tenancy-server
SERVER=target/debug/tenancy-server

psql "${PG_URL}/postgres" -qAt >/dev/null <<'SQL'
DO $$ BEGIN CREATE ROLE tenancy_owner LOGIN PASSWORD 'tenancy_owner';
EXCEPTION WHEN duplicate_object THEN NULL; END $$;
DO $$ BEGIN CREATE ROLE tenancy_app LOGIN PASSWORD 'tenancy_app';
EXCEPTION WHEN duplicate_object THEN NULL; END $$;
DROP DATABASE IF EXISTS tenancy WITH (FORCE);
CREATE DATABASE tenancy OWNER tenancy_owner;
SQL
psql "${PG_URL}/tenancy" -v ON_ERROR_STOP=1 -qAt >/dev/null <<'SQL'
CREATE EXTENSION tenancy;
GRANT tenancy_admin TO tenancy_owner;
SELECT tenancy.grant_table_owner('tenancy_owner');
ALTER DATABASE tenancy SET session_preload_libraries = 'tenancy';
SQL

$SERVER migrate
read -r ACME _ < <($SERVER create-tenant --slug acme --name "Acme Corp" --owner-email alice@acme.test)
read -r GLOBEX _ < <($SERVER create-tenant --slug globex --name "Globex" --owner-email gus@globex.test)
$SERVER add-member --tenant "$ACME" --email bob@acme.test --role member >/dev/null
$SERVER add-member --tenant "$ACME" --email carol@example.test --role admin >/dev/null
$SERVER add-member --tenant "$GLOBEX" --email carol@example.test --role member >/dev/null
$SERVER create-super-admin --email root@platform.test >/dev/null

$SERVER serve &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null' EXIT INT TERM
for _ in $(seq 1 50); do curl -fs "http://${LISTEN}/readyz" >/dev/null && break; sleep 0.2; done

step() { printf '\n\033[1m== %s\033[0m\n$ %s\n' "$1" "$2"; eval "$2"; echo; }
login() { curl -s "http://${LISTEN}/auth/token" -H 'content-type: application/json' \
    -d "{\"email\":\"$1\",\"password\":\"demo-password\"}" | sed -E 's/.*"access_token":"([^"]+)".*/\1/'; }

step "Log in as alice (owner of acme)" \
    "curl -s http://${LISTEN}/auth/token -H 'content-type: application/json' -d '{\"email\":\"alice@acme.test\",\"password\":\"demo-password\"}'"
ALICE=$(login alice@acme.test)
GUS=$(login gus@globex.test)
CAROL=$(login carol@example.test)
step "Alice lists acme's workspaces" "curl -s http://${LISTEN}/api/workspaces -H \"authorization: Bearer \$ALICE\""
step "Alice creates a workspace" \
    "curl -s http://${LISTEN}/api/workspaces -H \"authorization: Bearer \$ALICE\" -H 'content-type: application/json' -d '{\"name\":\"Launch\"}'"
step "Gus (globex) sees only globex" "curl -s http://${LISTEN}/api/workspaces -H \"authorization: Bearer \$GUS\""
step "Gus asks for acme by header: not a member" \
    "curl -s http://${LISTEN}/api/workspaces -H \"authorization: Bearer \$GUS\" -H 'x-tenant-id: ${ACME}'"
step "Carol belongs to two tenants: she picks one by subdomain" \
    "curl -s http://${LISTEN}/api/tenant -H \"authorization: Bearer \$CAROL\" -H 'host: globex.${TENANCY_BASE_DOMAIN}'"

cat <<EOT

Service on http://${LISTEN} (Ctrl-C to stop). Users (password demo-password):
  alice@acme.test (acme owner), bob@acme.test (acme member), gus@globex.test (globex owner),
  carol@example.test (acme admin, globex member), root@platform.test (super admin)
EOT
wait $PID
