#!/usr/bin/env bash
# A/B benchmark of tenant isolation in the database (pgbench, prepared statements).
#
#   A  RLS + signed context:  SELECT ... FROM items ORDER BY id LIMIT 50
#      (policy: tenant_id = (SELECT tenancy.current_tenant_id()), token set per transaction)
#   B  baseline, no RLS:      SELECT ... FROM items_plain WHERE tenant_id = <uuid> ORDER BY id LIMIT 50
#   C  RLS, bare policy form: policy tenant_id = tenancy.current_tenant_id() (why A uses the InitPlan form)
#
# Same data in each table (1M rows, 1,000 tenants), same round trips per
# transaction (BEGIN; one lookup by tenant number: A sets the token from it,
# B fetches the tenant uuid into a bind parameter; the list query; COMMIT).
# Runs interleave A, B, C for ROUNDS rounds and report median TPS and ratios.
#
# Usage: tests/bench/rls.sh   (REUSE_DATA=1 keeps the loaded database; env: ROUNDS=5 SECONDS_PER_RUN=10 CLIENTS=4 ROWS_PER_TENANT=1000 TENANTS=1000)
set -euo pipefail
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
cd "$(dirname "$0")/../.."

ROUNDS=${ROUNDS:-5}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
CLIENTS=${CLIENTS:-4}
TENANTS=${TENANTS:-1000}
ROWS_PER_TENANT=${ROWS_PER_TENANT:-1000}
PG_URL="${TENANCY_PG_URL:-postgres://postgres:postgres@127.0.0.1:5432}"
HOSTPORT="${PG_URL#*@}"
DB=tenancy_bench
KEY="bench-signing-secret-0123456789abcdef"

TENANCY_PROFILE=release bash scripts/setup.sh
cargo build --quiet --release -p tenancy-token --features cli --bin tenancy-sign

if [ "${REUSE_DATA:-0}" != "1" ]; then
psql "${PG_URL}/postgres" -qc "DROP DATABASE IF EXISTS ${DB} WITH (FORCE)" -c "CREATE DATABASE ${DB}"
psql "${PG_URL}/postgres" -qAt >/dev/null <<'SQL'
DO $$ BEGIN CREATE ROLE tenancy_bench_app LOGIN PASSWORD 'bench';
EXCEPTION WHEN duplicate_object THEN NULL; END $$;
SQL

echo "== loading ${TENANTS} tenants x ${ROWS_PER_TENANT} rows (three copies)"
psql "${PG_URL}/${DB}" -v ON_ERROR_STOP=1 -qAt >/dev/null <<SQL
CREATE EXTENSION tenancy;
SELECT tenancy.add_key('bench', 'HS256', '${KEY}');
INSERT INTO tenancy.tenants (id, slug, name, display_name)
SELECT ('00000000-0000-0000-0000-' || lpad(n::text, 12, '0'))::uuid, 't' || n, 'Tenant ' || n, 'Tenant ' || n
FROM generate_series(1, ${TENANTS}) n;
CREATE TABLE bench_tenants (n int PRIMARY KEY, tenant_id uuid NOT NULL, token text);
INSERT INTO bench_tenants (n, tenant_id)
SELECT n, ('00000000-0000-0000-0000-' || lpad(n::text, 12, '0'))::uuid FROM generate_series(1, ${TENANTS}) n;
CREATE TABLE items (tenant_id uuid NOT NULL, id bigint NOT NULL, payload text NOT NULL, PRIMARY KEY (tenant_id, id));
INSERT INTO items
SELECT t.tenant_id, t.n::bigint * 100000 + r, md5(r::text)
FROM bench_tenants t, generate_series(1, ${ROWS_PER_TENANT}) r;
CREATE TABLE items_plain (LIKE items INCLUDING ALL);
INSERT INTO items_plain SELECT * FROM items;
CREATE TABLE items_bare (LIKE items INCLUDING ALL);
INSERT INTO items_bare SELECT * FROM items;
SELECT tenancy.protect('items');
SELECT tenancy.protect('items_bare');
DROP POLICY tenancy_isolation ON items_bare;
CREATE POLICY tenancy_isolation ON items_bare USING (tenant_id = tenancy.current_tenant_id())
    WITH CHECK (tenant_id = tenancy.current_tenant_id());
VACUUM ANALYZE;
GRANT SELECT ON items, items_plain, items_bare, bench_tenants TO tenancy_bench_app;
SQL

echo "== signing ${TENANTS} tokens"
export TENANCY_SIGNING_KEY="$KEY"
{
    for n in $(seq 1 "$TENANTS"); do
        tenant=$(printf '00000000-0000-0000-0000-%012d' "$n")
        printf '%s\t%s\n' "$n" "$(target/release/tenancy-sign --kid bench --tenant "$tenant" --ttl 7200)"
    done
} | psql "${PG_URL}/${DB}" -v ON_ERROR_STOP=1 -qc "CREATE TEMP TABLE tok (n int, token text);
    COPY tok FROM STDIN;
    UPDATE bench_tenants b SET token = tok.token FROM tok WHERE tok.n = b.n;"
fi

SCRIPTS=$(mktemp -d)
cat > "$SCRIPTS/a.sql" <<'SQL'
\set n random(1, :tenants)
BEGIN;
SELECT tenancy.set_token(token) IS NULL AS ok FROM bench_tenants WHERE n = :n \gset
SELECT id, payload FROM items ORDER BY id LIMIT 50;
COMMIT;
SQL
cat > "$SCRIPTS/b.sql" <<'SQL'
\set n random(1, :tenants)
BEGIN;
SELECT tenant_id AS tid FROM bench_tenants WHERE n = :n \gset
SELECT id, payload FROM items_plain WHERE tenant_id = :tid ORDER BY id LIMIT 50;
COMMIT;
SQL
sed 's/FROM items ORDER/FROM items_bare ORDER/' "$SCRIPTS/a.sql" > "$SCRIPTS/c.sql"

run() {
    PGPASSWORD=bench pgbench -n -M prepared -c "$CLIENTS" -j 2 -T "$SECONDS_PER_RUN" \
        -D tenants="$TENANTS" -h "${HOSTPORT%:*}" -p "${HOSTPORT#*:}" -U tenancy_bench_app \
        -f "$SCRIPTS/$1.sql" "$DB" 2>&1 | awk '/^tps/ {print $3; exit}'
}

# Each run must actually return rows: check once, as the benchmark role.
rows=$(PGPASSWORD=bench psql -h "${HOSTPORT%:*}" -p "${HOSTPORT#*:}" -U tenancy_bench_app -d "$DB" -qAt \
    -c "BEGIN" -c "SELECT tenancy.set_token(token) FROM bench_tenants WHERE n = 7" \
    -c "SELECT count(*) FROM (SELECT id FROM items ORDER BY id LIMIT 50) s" -c "COMMIT" | tail -n 1)
[ "$rows" = "50" ] || { echo "sanity check failed: RLS query returned '$rows' rows" >&2; exit 1; }

echo "== ${ROUNDS} interleaved rounds of A, B, C (${SECONDS_PER_RUN}s each, ${CLIENTS} clients, prepared)"
A=(); B=(); C=()
for round in $(seq 1 "$ROUNDS"); do
    a=$(run a); b=$(run b); c=$(run c)
    A+=("$a"); B+=("$b"); C+=("$c")
    printf 'round %d: A %.0f  B %.0f  C %.0f tps\n' "$round" "$a" "$b" "$c"
done
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
ma=$(median "${A[@]}"); mb=$(median "${B[@]}"); mc=$(median "${C[@]}")
printf '\nmedian TPS  A (RLS, signed context): %.0f\n' "$ma"
printf 'median TPS  B (explicit WHERE, no RLS): %.0f\n' "$mb"
printf 'median TPS  C (RLS, bare policy form): %.0f\n' "$mc"
awk -v a="$ma" -v b="$mb" -v c="$mc" 'BEGIN {
    printf "ratio A/B = %.3f   (target >= 0.95)\n", a / b
    printf "ratio C/B = %.3f\n", c / b }'
rm -rf "$SCRIPTS"
