#!/usr/bin/env bash
# Installs Citus 13.2.2 into the system PostgreSQL 15 when it is missing,
# built from its source (AGPL-3.0; no Debian package provides it): about 7
# minutes on 2 cores, once per machine. The source tarball is looked for in
# TENANCY_CITUS_SOURCE, else ../shared/vendor/ beside the checkout. Without
# it, this says so and fails: the scale-out tests then fail saying Citus is
# absent, they never pass without it.
set -euo pipefail

PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
VERSION=13.2.2
log() { printf '[citus] %s\n' "$*" >&2; }
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

if [ -f "$("${PG_CONFIG}" --pkglibdir)/citus.so" ] \
    && grep -q "default_version = '13.2" "$("${PG_CONFIG}" --sharedir)/extension/citus.control" 2>/dev/null; then
    exit 0
fi

here="$(cd "$(dirname "$0")/.." && pwd)"
source="${TENANCY_CITUS_SOURCE:-}"
if [ -z "${source}" ]; then
    for candidate in "${here}/../shared/vendor/citus-${VERSION}.tar.gz" "/work/shared/vendor/citus-${VERSION}.tar.gz"; do
        if [ -f "${candidate}" ]; then source="${candidate}"; break; fi
    done
fi
if [ -z "${source}" ] || [ ! -f "${source}" ]; then
    log "Citus ${VERSION} is not installed and its source was not found (set TENANCY_CITUS_SOURCE to citus-${VERSION}.tar.gz)"
    exit 1
fi

install_packages liblz4-dev libzstd-dev libssl-dev libkrb5-dev libxslt1-dev libpam0g-dev libreadline-dev libselinux1-dev make gcc

build="$(mktemp -d /tmp/tenancy-citus-build.XXXXXX)"
trap 'rm -rf "${build}"' EXIT
log "building Citus ${VERSION} from ${source} (about 7 minutes on 2 cores)"
tar -xzf "${source}" -C "${build}" --strip-components=1
# PostgreSQL 15.20 has its own have_createdb_privilege(); Citus' copy for
# older minor versions collides with it: drop Citus' static definition
# where the server declares one.
if grep -q "have_createdb_privilege" "$("${PG_CONFIG}" --includedir-server)/commands/dbcommands.h"; then
python3 - "${build}/src/include/pg_version_compat.h" <<'PY'
import re, sys
path = sys.argv[1]
text = open(path).read()
patched = re.sub(r"static inline bool\s+have_createdb_privilege\(void\)\s*\{.*?\n\}\n", "", text, count=1, flags=re.S)
open(path, "w").write(patched)
PY
fi
(
    cd "${build}"
    ./configure --without-libcurl PG_CONFIG="${PG_CONFIG}" >/dev/null
    make -j"$(nproc)" -s >/dev/null
    as_root make install -s >/dev/null
)
log "installed Citus ${VERSION}"
