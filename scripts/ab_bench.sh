#!/usr/bin/env bash
# scripts/ab_bench.sh REV_A REV_B [ROUNDS] [SECS] — pgshift built at two git
# revisions, each in front of the same throwaway Postgres, in interleaved
# rounds of pgbench -S (-M prepared, -M simple, 8 clients): what a change
# costs on the relay's hot path. Prints every run, then medians, spreads
# and B/A per round. Needs root (Postgres runs as postgres) and pgbench.
set -euo pipefail
cd "$(dirname "$0")/.."
A=$1; B=$2; ROUNDS=${3:-5}; SECS=${4:-10}
BIN=$(pg_config --bindir)
D=$(mktemp -d /tmp/pgshift-ab.XXXX); chmod 755 "$D"; chown postgres "$D"
PG=55895; PORT_A=55896; PORT_B=55897
cleanup() {
    pkill -f "pgshift serve --listen 127.0.0.1:5589[67]" 2>/dev/null || true
    su postgres -c "$BIN/pg_ctl -D $D/pg stop -m fast" >/dev/null 2>&1 || true
    git worktree remove --force "$D/src" >/dev/null 2>&1 || true
    rm -rf "$D"
}
trap cleanup EXIT
TARGET=$PWD/target/ab   # shared by both builds: only pgshift itself is rebuilt
for rev in A B; do
    git worktree add --detach "$D/src" "${!rev}" >/dev/null 2>&1
    (cd "$D/src" && CARGO_TARGET_DIR=$TARGET cargo build --release -q)
    cp "$TARGET/release/pgshift" "$D/pgshift-$rev"
    git worktree remove --force "$D/src"
done
su postgres -c "$BIN/initdb -D $D/pg -A trust -U postgres" >/dev/null
su postgres -c "$BIN/pg_ctl -D $D/pg -o '-p $PG -c max_connections=100 -c fsync=off' -l $D/pg.log start -w" >/dev/null
"$BIN/pgbench" -h 127.0.0.1 -p $PG -U postgres -i -s 10 -q postgres >/dev/null 2>&1
"$D/pgshift-A" serve --listen 127.0.0.1:$PORT_A --upstream 127.0.0.1:$PG --admin off --log-level warn --upstream-tls disable 2>"$D/a.log" &
"$D/pgshift-B" serve --listen 127.0.0.1:$PORT_B --upstream 127.0.0.1:$PG --admin off --log-level warn --upstream-tls disable 2>"$D/b.log" &
sleep 1
out=$D/runs.txt
for r in $(seq 1 "$ROUNDS"); do
    for mode in prepared simple; do
        for rev in A B; do
            port=$PORT_A; [ $rev = B ] && port=$PORT_B
            "$BIN/pgbench" -h 127.0.0.1 -p $port -U postgres -S -M $mode -c 8 -j 2 -T "$SECS" postgres 2>&1 |
                awk -v r=$rev -v m=$mode '/tps = / {print r, m, $3}' | tee -a "$out"
        done
    done
done
python3 - "$out" "$A" "$B" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    rev, mode, tps = line.split()
    runs[(mode, rev)].append(float(tps))
for mode in ["prepared", "simple"]:
    a, b = runs[(mode, "A")], runs[(mode, "B")]
    ratios = [y / x for x, y in zip(a, b)]
    print(f"{mode:9} A={sys.argv[2]} {statistics.median(a):8.0f} ({min(a):.0f}–{max(a):.0f})  "
          f"B={sys.argv[3]} {statistics.median(b):8.0f} ({min(b):.0f}–{max(b):.0f})  "
          f"B/A median {statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})")
PY
