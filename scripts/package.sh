#!/usr/bin/env bash
# Builds an installable Debian package of the extension for PostgreSQL 15:
# what `cargo pgrx package` produces (release build: control file, library,
# the current version's SQL and the update scripts), plus the released
# versions kept in extension/versions, wrapped with dpkg-deb.
# Prints the path of the .deb on its last line.
set -euo pipefail
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
cd "$(dirname "$0")/.."

PG_CONFIG="${PG_CONFIG:-$(command -v pg_config)}"
PG_MAJOR="$("${PG_CONFIG}" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')"
version="$(sed -nE 's/^version = "([^"]+)"/\1/p' Cargo.toml | head -1)"
arch="$(dpkg --print-architecture)"
root="target/package/postgresql-${PG_MAJOR}-tenancy"

rm -rf "${root}"
(cd extension && cargo pgrx package --pg-config "${PG_CONFIG}" --out-dir "../${root}" >/dev/null)
install -m 644 extension/versions/tenancy--*.sql "${root}$("${PG_CONFIG}" --sharedir)/extension/"

mkdir -p "${root}/DEBIAN"
cat > "${root}/DEBIAN/control" <<CONTROL
Package: postgresql-${PG_MAJOR}-tenancy
Version: ${version}
Architecture: ${arch}
Maintainer: tenancy <tenancy@localhost>
Depends: postgresql-${PG_MAJOR}
Section: database
Priority: optional
Description: multi-tenant isolation enforced inside PostgreSQL
 The tenancy extension: a tenant catalog, a signed per-transaction tenant
 context verified by PostgreSQL itself, and row-level-security helpers
 (CREATE EXTENSION tenancy). Includes the released versions and the
 scripts to update between them (ALTER EXTENSION tenancy UPDATE).
CONTROL

deb="target/package/postgresql-${PG_MAJOR}-tenancy_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "${root}" "${deb}" >/dev/null
echo "${deb}"
