#!/usr/bin/env bash
# setup.sh — prepares, idempotently, everything the battery's apps need under one directory
# (default target/battery in the repository): a Python venv from requirements.txt, node_modules from
# node/package-lock.json (npm ci), and JdbcApp.class compiled against Debian's pgjdbc
# (libpostgresql-jdbc-java, installed with apt-get when missing and run as root). A stamp file
# holds a hash of every input, so a second run with nothing changed returns at once.
#
#   tests/battery/setup.sh [DIR]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
dir=${1:-$here/../../target/battery}
jar=/usr/share/java/postgresql.jar
mkdir -p "$dir"
# One set-up at a time (two tests may ask for the environment at once).
exec 9>"$dir/.lock"
flock 9

inputs=("$here/requirements.txt" "$here/node/package.json" "$here/node/package-lock.json" "$here/java/JdbcApp.java")
hash=$(cat "${inputs[@]}" | sha256sum | cut -d' ' -f1)
if [ -f "$dir/stamp" ] && [ "$(cat "$dir/stamp")" = "$hash" ] && [ -f "$jar" ]; then
    echo "battery environment in $dir is up to date"
    exit 0
fi
rm -f "$dir/stamp"

echo "== Python venv ($dir/venv)"
[ -x "$dir/venv/bin/python" ] || python3 -m venv "$dir/venv"
"$dir/venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"

echo "== node_modules ($dir/node)"
mkdir -p "$dir/node"
cp "$here/node/package.json" "$here/node/package-lock.json" "$dir/node/"
(cd "$dir/node" && npm ci --no-audit --no-fund --loglevel=error)

echo "== JdbcApp ($dir/java)"
if [ ! -f "$jar" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "$jar is missing: install libpostgresql-jdbc-java (as root: apt-get install libpostgresql-jdbc-java)" >&2
        exit 1
    fi
    apt-get install -y -qq libpostgresql-jdbc-java >/dev/null || {
        apt-get update -qq && apt-get install -y -qq libpostgresql-jdbc-java >/dev/null
    }
fi
rm -rf "$dir/java"
mkdir -p "$dir/java"
javac -d "$dir/java" -cp "$jar" "$here/java/JdbcApp.java"

echo "$hash" >"$dir/stamp"
echo "battery environment ready in $dir"
