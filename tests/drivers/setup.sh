#!/usr/bin/env bash
# tests/drivers/setup.sh — installs what tests/drivers/run.sh needs, once, from the
# package registries (PyPI, npm): nothing is fetched when run.sh runs.
#
#   target/drivers/venv          Python venv: asyncpg, psycopg (+ binary, pool), pytest and
#                                the suites' test dependencies, pinned
#   target/drivers/asyncpg/tests asyncpg's own test suite, from its PyPI sdist (same version)
#   target/drivers/node          node-postgres (pg) and its test suite's dependencies, pinned
#
# node-postgres's and psycopg's tests are not in their registry packages: they are
# vendored under tests/drivers/vendor/ (see README.md for the commits).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${DRIVERS_OUT:-$root/target/drivers}
mkdir -p "$out"

ASYNCPG=0.32.0
PSYCOPG=3.3.4       # the version of the vendored psycopg tests (tag 3.3.4)
PSYCOPG_POOL=3.3.1  # psycopg_pool's version at that commit
PG_NODE=8.23.1      # the first pg release after the vendored tests' commit

if [ ! -x "$out/venv/bin/python" ]; then
    python3 -m venv "$out/venv"
fi
"$out/venv/bin/pip" install -q --disable-pip-version-check \
    "asyncpg==$ASYNCPG" "psycopg==$PSYCOPG" "psycopg-binary==$PSYCOPG" "psycopg-pool==$PSYCOPG_POOL" \
    pytest==9.2.0 pytest-timeout==2.4.0 anyio==4.16.0 pproxy==2.7.9 distro==1.9.0

# asyncpg's tests, from the sdist of the installed version (only tests/ is kept: the
# sdist's asyncpg/ is uncompiled source and must not shadow the installed wheel).
if [ ! -f "$out/asyncpg/tests/.version-$ASYNCPG" ]; then
    tmp=$(mktemp -d)
    "$out/venv/bin/pip" download -q --disable-pip-version-check --no-deps --no-binary :all: \
        -d "$tmp" "asyncpg==$ASYNCPG"
    rm -rf "$out/asyncpg"
    mkdir -p "$out/asyncpg"
    tar xzf "$tmp/asyncpg-$ASYNCPG.tar.gz" -C "$out/asyncpg" --strip-components=1 "asyncpg-$ASYNCPG/tests"
    touch "$out/asyncpg/tests/.version-$ASYNCPG"
    rm -rf "$tmp"
fi

mkdir -p "$out/node"
cat >"$out/node/package.json" <<EOF
{
  "name": "pgshift-driver-tests",
  "private": true,
  "dependencies": {
    "pg": "$PG_NODE",
    "async": "2.6.4",
    "bluebird": "3.7.2",
    "co": "4.6.0",
    "pg-copy-streams": "0.3.0"
  }
}
EOF
(cd "$out/node" && npm install --no-audit --no-fund --loglevel=error)
echo "drivers: setup done in $out"
