#!/usr/bin/env bash
# tests/drivers/setup.sh — installs what tests/drivers/run.sh needs, once, from the
# package registries (PyPI, npm); run.sh itself fetches nothing.
#
#   target/drivers/venv           Python venv: asyncpg, psycopg (+ binary, pool), pytest and
#                                 the suites' test dependencies (requirements.txt, pinned)
#   target/drivers/asyncpg/tests  asyncpg's own test suite, from its PyPI sdist (same version)
#   target/drivers/node           node-postgres (pg) and its test suite's dependencies
#                                 (node/package.json, node/package-lock.json)
#
# node-postgres's and psycopg's tests are not in their registry packages: they are
# vendored under tests/drivers/vendor/ (README.md names the commits).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${DRIVERS_OUT:-$root/target/drivers}
mkdir -p "$out"

ASYNCPG=$(sed -n 's/^asyncpg==//p' "$here/requirements.txt")

[ -x "$out/venv/bin/python" ] || python3 -m venv "$out/venv"
"$out/venv/bin/pip" install -q --disable-pip-version-check -r "$here/requirements.txt"

# asyncpg's tests, from the sdist of the installed version. Only tests/ is kept: the
# sdist's asyncpg/ is uncompiled source and must not shadow the installed wheel.
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
if ! cmp -s "$here/node/package-lock.json" "$out/node/package-lock.json" \
    || [ ! -f "$out/node/node_modules/pg/package.json" ]; then
    cp "$here/node/package.json" "$here/node/package-lock.json" "$out/node/"
    (cd "$out/node" && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "drivers: setup done in $out"
