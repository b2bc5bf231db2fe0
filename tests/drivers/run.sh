#!/usr/bin/env bash
# tests/drivers/run.sh — three PostgreSQL drivers' own test suites (node-postgres,
# asyncpg, psycopg 3), each run directly against a throwaway Postgres and through
# pgshift in front of the same Postgres; prints per suite and run the tests passed /
# failed / skipped, and the tests whose result differs from the direct run.
#
#   tests/drivers/setup.sh     # once: installs the drivers and test deps under target/drivers
#   tests/drivers/run.sh       # needs root (runs Postgres as `postgres`), openssl, node
#
# Environment:
#   PGSHIFT_BIN          the pgshift binary (target/release/pgshift)
#   DRIVERS_SUITES       which suites, in order ("node-postgres asyncpg psycopg")
#   DRIVERS_DIRECT_RUNS  direct runs per suite (1); 2 shows the tests that are flaky direct
#   DRIVERS_PG_PORT / DRIVERS_PGSHIFT_PORT   loopback ports (55442 / 56442)
#   DRIVERS_OUT          where results go (target/drivers): results/<suite>/<run>.jsonl,
#                        .log (the suite's output), .meta.json; pgshift and Postgres logs
#   DRIVERS_KEEP=1       keep the cluster's directory (printed) after the run
# Exit status: 0 when no test's result differs between runs, 1 otherwise.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
here=$root/tests/drivers
out=${DRIVERS_OUT:-$root/target/drivers}
PGSHIFT_BIN=${PGSHIFT_BIN:-$root/target/release/pgshift}
suites=${DRIVERS_SUITES:-"node-postgres asyncpg psycopg"}
direct_runs=${DRIVERS_DIRECT_RUNS:-1}
pg_port=${DRIVERS_PG_PORT:-55442}
shift_port=${DRIVERS_PGSHIFT_PORT:-56442}
bindir=${PG_BINDIR:-$(pg_config --bindir 2>/dev/null || ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
# Time limits, seconds, per run of a suite.
t_node=${DRIVERS_TIMEOUT_NODE:-240}
t_asyncpg=${DRIVERS_TIMEOUT_ASYNCPG:-240}
t_psycopg=${DRIVERS_TIMEOUT_PSYCOPG:-420}
# psycopg's selection (pytest arguments). By default not: its mypy tests (static typing, and
# mypy is not installed), its memory-leak tests (test_leak, *_leaks: gc counts, ~270 s), the
# waiting-loop test_wait_r (40 s) and tests/pool (psycopg_pool's timing, ~100 s) -- see README.
psycopg_default='-m "not mypy" -k "not test_leak and not _leaks and not test_wait_r" --ignore=tests/pool'
psycopg_select=${DRIVERS_PSYCOPG_ARGS:-$psycopg_default}
eval "psycopg_args=($psycopg_select)"
PASSWORD=postgres

py=$out/venv/bin/python
for need in "$py" "$out/node/node_modules/pg/lib/index.js" "$out/asyncpg/tests/__init__.py"; do
    [ -e "$need" ] || { echo "missing $need: run tests/drivers/setup.sh first" >&2; exit 2; }
done
[ -x "$PGSHIFT_BIN" ] || { echo "no pgshift binary at $PGSHIFT_BIN (set PGSHIFT_BIN or cargo build --release)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "run as root (Postgres runs as the postgres user)" >&2; exit 2; }

D=$(mktemp -d /tmp/pgshift-drivers.XXXX)
chmod 755 "$D"
chown postgres "$D"
shift_pid=
stop_pgshift() {
    if [ -n "$shift_pid" ]; then
        kill -TERM "$shift_pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$shift_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$shift_pid" 2>/dev/null || true
        wait "$shift_pid" 2>/dev/null || true
        shift_pid=
    fi
}
cleanup() {
    stop_pgshift
    runuser -u postgres -- "$bindir/pg_ctl" -D "$D/pg" -m immediate -w stop >/dev/null 2>&1 || true
    if [ -n "${DRIVERS_KEEP:-}" ]; then echo "kept $D"; else rm -rf "$D"; fi
}
trap cleanup EXIT

# ---- the cluster: one for every suite and run, set up the way the suites' CI set up theirs
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$D/server.key" -out "$D/server.crt" \
    -days 2 -subj /CN=localhost >/dev/null 2>&1
chown postgres "$D/server.key" "$D/server.crt"
chmod 600 "$D/server.key"
echo "$PASSWORD" >"$D/pwfile"
chown postgres "$D/pwfile"
runuser -u postgres -- "$bindir/initdb" -D "$D/pg" -U postgres --pwfile="$D/pwfile" -E UTF8 \
    --locale=C.UTF-8 --auth-local=trust --auth-host=md5 >"$D/initdb.log" 2>&1
# host lines: md5, as node-postgres's CI (POSTGRES_HOST_AUTH_METHOD md5); with passwords
# stored as SCRAM (password_encryption's default) that is a SCRAM exchange, as psycopg's CI.
cat >"$D/pg/pg_hba.conf" <<EOF
local all all trust
host  all all 127.0.0.1/32 md5
host  all all ::1/128 md5
EOF
cat >>"$D/pg/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $pg_port
unix_socket_directories = '$D'
max_connections = 300
max_prepared_transactions = 10
ssl = on
ssl_cert_file = '$D/server.crt'
ssl_key_file = '$D/server.key'
jit = off
authentication_timeout = 10s
log_line_prefix = '%m [%p] %a '
log_min_error_statement = panic
log_min_messages = warning
fsync = off
EOF
runuser -u postgres -- "$bindir/pg_ctl" -D "$D/pg" -l "$D/postgres.log" -w start >/dev/null
psql_su() { "$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h "$D" -p "$pg_port" -U postgres "$@"; }
# node-postgres's CI: the scram roles of its workflow.
psql_su -d postgres \
    -c "SET password_encryption = 'scram-sha-256'" \
    -c "CREATE ROLE scram_test LOGIN PASSWORD 'test4scram'" \
    -c "CREATE ROLE scram_unicode_test LOGIN PASSWORD U&'IX-\\2168'"

# Every run of a suite starts from a new database (dropped and created again), and
# pgshift is started on it before the run, direct or not: it creates its `pgshift`
# schema there, so both runs see the same database. Only the port differs.
fresh_db() {
    local db
    for db in "$@"; do
        PGOPTIONS="-c client_min_messages=warning" psql_su -d template1 \
            -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"
    done
    psql_su -d template1 -c "CREATE DATABASE $1"
}
start_pgshift() {
    local db=$1 log=$2
    "$PGSHIFT_BIN" serve --listen "127.0.0.1:$shift_port" --upstream "127.0.0.1:$pg_port" \
        --admin off --database "$db" --control-user postgres --control-password-file "$D/pwfile" \
        --tls-cert "$D/server.crt" --tls-key "$D/server.key" --log-level info >>"$log" 2>&1 &
    shift_pid=$!
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$shift_port") 2>/dev/null; then return; fi
        kill -0 "$shift_pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "pgshift did not start; see $log" >&2
    tail -20 "$log" >&2
    exit 1
}

run_suite() {
    local suite=$1 label=$2 port=$3 res=$out/results/$1/$2.jsonl
    case $suite in
    node-postgres)
        # The suite's tests beside the installed pg's lib/, where they require it from.
        rm -rf "$out/node/node_modules/pg/test"
        cp -r "$here/vendor/node-postgres/test" "$out/node/node_modules/pg/test"
        # node-postgres's CI environment (.github/workflows/ci.yml).
        env PGUSER=postgres PGPASSWORD=$PASSWORD PGHOST=127.0.0.1 PGPORT=$port PGDATABASE=ci_db_test \
            PGTESTNOSSL=true SCRAM_TEST_PGUSER=scram_test SCRAM_TEST_PGPASSWORD=test4scram \
            SCRAM_TEST_PGUSER_UNICODE=scram_unicode_test SCRAM_TEST_PGPASSWORD_UNICODE=$'IX-\u2168' \
            "$py" "$here/lib/drivers.py" node "$out/node" "$res" "$t_node"
        ;;
    asyncpg)
        # PGHOST set: asyncpg's test base uses this running cluster (its RunningCluster)
        # instead of starting its own; the tests that need to manage a cluster skip.
        env PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres PGPASSWORD=$PASSWORD PGDATABASE=postgres \
            PGVERSION=15 PGINSTALLATION="$bindir" \
            "$py" "$here/lib/drivers.py" unittest "$out/asyncpg" "$res" "$t_asyncpg"
        ;;
    psycopg)
        rm -rf "$out/psycopg"
        cp -r "$here/vendor/psycopg" "$out/psycopg"
        # psycopg's CI: PSYCOPG_TEST_DSN, the C implementation (here psycopg-binary), pytest
        # -bb. Its random order (pytest-randomly) is left out, so both runs share one order.
        env PSYCOPG_IMPL=binary PATH="$out/venv/bin:$PATH" \
            PSYCOPG_TEST_DSN="host=127.0.0.1 port=$port user=postgres password=$PASSWORD dbname=psycopg_test" \
            "$py" "$here/lib/drivers.py" pytest "$out/psycopg" "$res" "$t_psycopg" \
            -q --timeout=45 "${psycopg_args[@]}"
        ;;
    esac
    "$py" "$here/lib/drivers.py" summary "$res" "$label"
}

rm -rf "$out/results"
for suite in $suites; do
    case $suite in
    node-postgres) db=ci_db_test ;;
    asyncpg) db=postgres ;;  # its tests assume `postgres` (test_cache_invalidation)
    psycopg) db=psycopg_test ;;
    *) echo "unknown suite $suite" >&2; exit 2 ;;
    esac
    mkdir -p "$out/results/$suite"
    echo "== $suite"
    labels=
    for i in $(seq 1 "$direct_runs"); do
        if [ "$direct_runs" = 1 ]; then labels="$labels direct"; else labels="$labels direct$i"; fi
    done
    for label in $labels pgshift; do
        stop_pgshift
        # asyncpg's test_type_cache_invalidation_in_pool creates testdb and may leave it.
        fresh_db "$db" $([ "$suite" = asyncpg ] && echo testdb)
        start_pgshift "$db" "$out/results/$suite/$label.pgshift.log"
        if [ "$label" = pgshift ]; then port=$shift_port; else port=$pg_port; fi
        run_suite "$suite" "$label" "$port"
    done
    stop_pgshift
done
cp "$D/postgres.log" "$out/results/postgres.log" 2>/dev/null || true
echo
"$py" "$here/lib/drivers.py" report "$out/results"
