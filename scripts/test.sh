#!/usr/bin/env bash
# Every test: lint, the token codec's unit tests, the end-to-end tests
# against the real PostgreSQL with the extension installed (and Redis, and
# a three-node Citus cluster started on this machine), and the extension's
# Debian package installed and exercised.
set -euo pipefail
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
cd "$(dirname "$0")/.."

bash scripts/setup.sh
# Citus for the scale-out tests: built from its source once per machine
# (about 7 minutes). Without it those tests fail saying Citus is absent.
bash scripts/citus.sh || echo "[citus] Citus is not installed: the Citus tests will fail saying so" >&2

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

PG_URL="${TENANCY_PG_URL:-postgres://postgres:postgres@127.0.0.1:5432}"
# Databases left by earlier runs (each test makes its own).
psql "${PG_URL}/postgres" -qAtc \
    "SELECT datname FROM pg_database WHERE datname LIKE 'tenancy\_t\_%'" |
    while read -r db; do psql "${PG_URL}/postgres" -qc "DROP DATABASE IF EXISTS \"$db\"" >/dev/null || true; done

echo "== cargo test"
# The extension crate is tested through SQL (tests/), not linked into a test binary.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --exclude tenancy --lib --bins --tests 2>&1 | tee "$log"
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tenancy tests: %d passed, %d failed\n", p, f }' "$log"

echo "== Debian package: built, installed with dpkg, exercised without the Rust toolchain"
bash scripts/test-package.sh
