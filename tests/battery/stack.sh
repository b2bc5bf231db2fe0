#!/usr/bin/env bash
# stack.sh — owns the battery's throwaway servers: a Postgres cluster and a pgshift in front of it.
#
#   stack.sh up   [DIR]   initdb (once) and start Postgres, recreate database `battery` with
#                         schema.sql, write DIR/pgshift.toml and (re)start pgshift on it
#   stack.sh down [DIR]   stop pgshift and Postgres and remove DIR
#
# DIR defaults to /tmp/bat. Ports: BATTERY_PG_PORT (55432), BATTERY_PROXY_PORT (56432),
# BATTERY_ADMIN_PORT (59432). The pgshift binary: PGSHIFT_BIN (/work/pgshift-bin/pgshift-main).
# Logs: DIR/postgres.log (every ERROR with its STATEMENT and application name) and
# DIR/pgshift.log (pgshift's own log: refusals are `refused a statement` lines);
# run.py --pg-log/--pgshift-log read them into its report.
set -euo pipefail

cmd=${1:-}
dir=${2:-/tmp/bat}
here=$(cd "$(dirname "$0")" && pwd)
pg_port=${BATTERY_PG_PORT:-55432}
proxy_port=${BATTERY_PROXY_PORT:-56432}
admin_port=${BATTERY_ADMIN_PORT:-59432}
pgshift_bin=${PGSHIFT_BIN:-/work/pgshift-bin/pgshift-main}
bindir=${PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}

as_postgres() {
    if [ "$(id -u)" = 0 ]; then su postgres -c "$*"; else bash -c "$*"; fi
}

stop_pgshift() {
    if [ -f "$dir/pgshift.pid" ]; then
        local pid
        pid=$(cat "$dir/pgshift.pid")
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid"
            for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        fi
        rm -f "$dir/pgshift.pid"
    fi
}

psql_pg() { PGOPTIONS="-c client_min_messages=warning" "$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$pg_port" -U postgres "$@"; }

up() {
    mkdir -p "$dir"
    chmod 777 "$dir"
    if [ ! -f "$dir/pg/PG_VERSION" ]; then
        mkdir -p "$dir/pg"
        chown postgres "$dir/pg" 2>/dev/null || true
        as_postgres "$bindir/initdb -D $dir/pg -U postgres -A trust -E UTF8 >$dir/initdb.log 2>&1"
    fi
    if ! as_postgres "$bindir/pg_ctl -D $dir/pg status" >/dev/null 2>&1; then
        touch "$dir/postgres.log"
        chown postgres "$dir/postgres.log" 2>/dev/null || true
        as_postgres "$bindir/pg_ctl -D $dir/pg -l $dir/postgres.log -w -o \"-p $pg_port -k /tmp \
            -c listen_addresses=127.0.0.1 -c max_connections=300 \
            -c log_line_prefix='%m [%p] app=%a ' -c log_min_error_statement=error\" start" >/dev/null
    fi
    stop_pgshift
    psql_pg -d postgres -c "drop database if exists battery with (force)" -c "create database battery"
    psql_pg -d battery -f "$here/schema.sql"
    cat >"$dir/pgshift.toml" <<EOF
listen = "127.0.0.1:$proxy_port"
upstream = "127.0.0.1:$pg_port"
admin = "127.0.0.1:$admin_port"

[control]
database = "battery"
user = "postgres"

[[migrations]]
id = "users_full_name"
table = "app.users"
from = "name"
to = "full_name"

[[migrations]]
id = "orders_amount_decimal"
table = "app.orders"
from = "amount"
to = "amount_decimal"
type = "numeric(12,2)"
up = "amount::numeric / 100"
down = "(amount_decimal * 100)::integer"

[[migrations]]
id = "orgs_slug"
op = "add_column"
table = "app.orgs"
column = "slug"
type = "text"
not_null = true
default = "''"
up = "lower(name)"

[[migrations]]
id = "users_login_count_bigint"
op = "change_type"
table = "app.users"
from = "login_count"
type = "bigint"
up = "login_count::bigint"
down = "login_count::integer"
new_shape = { application_name = "%-new-%" }
EOF
    : >"$dir/pgshift.log"
    setsid "$pgshift_bin" serve --config "$dir/pgshift.toml" >>"$dir/pgshift.log" 2>&1 &
    echo $! >"$dir/pgshift.pid"
    for _ in $(seq 1 100); do
        if curl -sf "http://127.0.0.1:$admin_port/status" >/dev/null 2>&1; then
            echo "Postgres on 127.0.0.1:$pg_port, pgshift on 127.0.0.1:$proxy_port, admin http://127.0.0.1:$admin_port"
            return
        fi
        sleep 0.1
    done
    echo "pgshift did not answer on its admin port; see $dir/pgshift.log" >&2
    exit 1
}

down() {
    stop_pgshift
    if [ -f "$dir/pg/PG_VERSION" ]; then
        as_postgres "$bindir/pg_ctl -D $dir/pg -m fast -w stop" >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
}

case "$cmd" in
    up) up ;;
    down) down ;;
    *) echo "usage: $0 up|down [DIR]" >&2; exit 2 ;;
esac
