#!/usr/bin/env bash
# scripts/cpu_per_tx.sh A [B ...] [-- MODES] — where pgshift's CPU per
# transaction goes, for pgshift binaries or git revisions A, B, … (a path
# to a binary is used as it is; anything else is built at that revision).
#
# For each mode (default: simple extended prepared) and each target:
#   1. instructions per transaction: pgshift under `valgrind --tool=callgrind`,
#      `pgbench -S -M MODE -c 8 -j 2 -t 2000` (16,000 transactions, the
#      sessions' start included) — deterministic to a few per cent, so a
#      change's cost shows without the ±10 % noise of timings;
#   2. CPU µs per transaction, user and system apart, read from
#      /proc/PID/stat around `pgbench -S -M MODE -c 8 -j 2 -T 5`, 3
#      interleaved rounds, PgBouncer (session mode) beside when installed.
# The callgrind files stay in the printed directory for callgrind_annotate.
# Needs root (Postgres runs as postgres), pgbench and valgrind.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGETS=(); MODES=(simple extended prepared)
while [ $# -gt 0 ]; do
    if [ "$1" = "--" ]; then shift; MODES=("$@"); break; fi
    TARGETS+=("$1"); shift
done
[ ${#TARGETS[@]} -gt 0 ] || { echo "usage: $0 A [B ...] [-- MODES]" >&2; exit 2; }
BIN=$(pg_config --bindir)
D=$(mktemp -d /tmp/pgshift-cpu.XXXX); chmod 755 "$D"; chown postgres "$D"
PG=55995; BOUNCER=55994
cleanup() {
    pkill -f "serve --listen 127.0.0.1:559[6-9]" 2>/dev/null || true
    [ -f "$D/bouncer.pid" ] && kill "$(cat "$D/bouncer.pid")" 2>/dev/null || true
    su postgres -c "$BIN/pg_ctl -D $D/pg stop -m fast" >/dev/null 2>&1 || true
    git worktree remove --force "$D/src" >/dev/null 2>&1 || true
}
trap cleanup EXIT
TARGET=$PWD/target/ab   # shared by the builds: only pgshift itself is rebuilt
bins=()
for i in "${!TARGETS[@]}"; do
    t=${TARGETS[$i]}
    if [ -f "$t" ]; then cp "$t" "$D/pgshift-$i"; else
        git worktree add --detach "$D/src" "$t" >/dev/null 2>&1
        (cd "$D/src" && CARGO_TARGET_DIR=$TARGET cargo build --release -q)
        cp "$TARGET/release/pgshift" "$D/pgshift-$i"
        git worktree remove --force "$D/src"
    fi
    bins+=("$D/pgshift-$i")
done
su postgres -c "$BIN/initdb -D $D/pg -A trust -U postgres" >/dev/null
su postgres -c "$BIN/pg_ctl -D $D/pg -o '-p $PG -c max_connections=100 -c fsync=off' -l $D/pg.log start -w" >/dev/null
"$BIN/pgbench" -h 127.0.0.1 -p $PG -U postgres -i -s 10 -q postgres >/dev/null 2>&1
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.2; done; }
# (exec: the caller's $! is pgshift's own pid, whose CPU is read.)
serve() { exec "$1" serve --listen "127.0.0.1:$2" --upstream "127.0.0.1:$PG" --admin off --log-level warn --upstream-tls disable; }

echo "== instructions per transaction (callgrind, 16,000 transactions)"
for mode in "${MODES[@]}"; do
    for i in "${!bins[@]}"; do
        port=$((55996 + i)); out="$D/callgrind.$i.$mode"
        valgrind --tool=callgrind --callgrind-out-file="$out" "${bins[$i]}" serve --listen "127.0.0.1:$port" \
            --upstream "127.0.0.1:$PG" --admin off --log-level warn --upstream-tls disable 2>/dev/null &
        pid=$!; wait_port $port
        "$BIN/pgbench" -h 127.0.0.1 -p $port -U postgres -S -M "$mode" -c 8 -j 2 -t 2000 postgres >/dev/null 2>&1
        kill -INT $pid; wait $pid || true
        total=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
        echo "$mode ${TARGETS[$i]}: $((total / 16000)) instructions/tx"
    done
done

echo "== CPU µs per transaction (user + system), 3 interleaved rounds of 5 s"
names=(); pids=(); ports=()
for i in "${!bins[@]}"; do
    port=$((55996 + i)); serve "${bins[$i]}" $port 2>/dev/null &
    pids+=($!); ports+=($port); names+=("${TARGETS[$i]}"); wait_port $port
done
if command -v pgbouncer >/dev/null; then
    echo '"postgres" ""' >"$D/users.txt"
    printf '[databases]\n* = host=127.0.0.1 port=%s\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = %s\nauth_type = trust\nauth_file = %s\npool_mode = session\ndefault_pool_size = 50\nlogfile = %s\npidfile = %s\n' \
        $PG $BOUNCER "$D/users.txt" "$D/bouncer.log" "$D/bouncer.pid" >"$D/bouncer.ini"
    chown postgres "$D"/users.txt "$D"/bouncer.ini
    su postgres -c "pgbouncer -d $D/bouncer.ini"; wait_port $BOUNCER
    pids+=("$(cat "$D/bouncer.pid")"); ports+=($BOUNCER); names+=(pgbouncer)
fi
ticks=$(getconf CLK_TCK)
cpu() { awk '{ sub(/.*\) /, ""); print $12, $13 }' "/proc/$1/stat"; }
for mode in "${MODES[@]}"; do
    for r in 1 2 3; do
        for i in "${!pids[@]}"; do
            read -r u0 s0 < <(cpu "${pids[$i]}")
            tx=$("$BIN/pgbench" -h 127.0.0.1 -p "${ports[$i]}" -U postgres -S -M "$mode" -c 8 -j 2 -T 5 postgres 2>&1 |
                awk '/actually processed/ {split($6, a, "/"); print a[1]}')
            read -r u1 s1 < <(cpu "${pids[$i]}")
            awk -v n="${names[$i]}" -v m="$mode" -v r=$r -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v tx="$tx" -v t="$ticks" \
                'BEGIN { printf "%s round %d %s: %d tx, %.2f µs/tx (user %.2f, system %.2f)\n", m, r, n, tx, (u+s)*1e6/t/tx, u*1e6/t/tx, s*1e6/t/tx }'
        done
    done
done
echo "(callgrind files in $D)"
trap - EXIT; cleanup
