#!/usr/bin/env bash
# scripts/tls_bench.sh — pgshift and PgBouncer (session mode) terminating
# client TLS the same way and re-encrypting toward one throwaway Postgres
# with ssl = on (UPSTREAM_TLS=0: plain TCP upstream), in interleaved rounds:
# pgbench -S (prepared, simple) and tpcb-like with 8 clients, and new TLS
# connections per second (pgbench -C: a handshake and a startup per
# transaction). Prints every run, then medians and spreads.
#
#   scripts/tls_bench.sh [ROUNDS] [SECS]     (defaults 5 and 8; needs root
#   to run Postgres as postgres, openssl, pgbouncer, and a release build:
#   cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}; SECS=${2:-8}; UPSTREAM_TLS=${UPSTREAM_TLS:-1}
BIN=$(pg_config --bindir)
PGSHIFT=$PWD/target/release/pgshift
D=$(mktemp -d /tmp/pgshift-tls-bench.XXXX); chmod 755 "$D"; chown postgres "$D"
PG=55890; SHIFT=55891; BOUNCER=55892
cleanup() {
    pkill -f "pgshift serve --listen 127.0.0.1:$SHIFT" 2>/dev/null || true
    [ -f "$D/bouncer.pid" ] && kill "$(cat "$D/bouncer.pid")" 2>/dev/null || true
    su postgres -c "$BIN/pg_ctl -D $D/pg stop -m fast" >/dev/null 2>&1 || true
    rm -rf "$D"
}
trap cleanup EXIT
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$D/key.pem" -out "$D/cert.pem" -days 1 -subj /CN=localhost >/dev/null 2>&1
chown postgres "$D/key.pem" "$D/cert.pem"; chmod 600 "$D/key.pem"
su postgres -c "$BIN/initdb -D $D/pg -A trust -U postgres" >/dev/null
PGSSL=off; SHIFT_UP=disable; BOUNCER_UP=disable
if [ "$UPSTREAM_TLS" = 1 ]; then
    PGSSL="on -c ssl_cert_file=$D/cert.pem -c ssl_key_file=$D/key.pem"; SHIFT_UP=require; BOUNCER_UP=require
fi
su postgres -c "$BIN/pg_ctl -D $D/pg -o '-p $PG -c max_connections=300 -c fsync=off -c ssl=$PGSSL' -l $D/pg.log start -w" >/dev/null
"$BIN/pgbench" -h 127.0.0.1 -p $PG -U postgres -i -s 10 -q postgres >/dev/null 2>&1
"$PGSHIFT" serve --listen 127.0.0.1:$SHIFT --upstream 127.0.0.1:$PG --admin off --log-level warn \
    --upstream-tls $SHIFT_UP --tls-cert "$D/cert.pem" --tls-key "$D/key.pem" 2>"$D/pgshift.log" &
echo '"postgres" ""' > "$D/users.txt"
cat > "$D/bouncer.ini" <<INI
[databases]
* = host=127.0.0.1 port=$PG
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER
unix_socket_dir =
auth_type = trust
auth_file = $D/users.txt
pool_mode = session
max_client_conn = 2000
default_pool_size = 100
logfile = $D/bouncer.log
pidfile = $D/bouncer.pid
client_tls_sslmode = allow
client_tls_key_file = $D/key.pem
client_tls_cert_file = $D/cert.pem
server_tls_sslmode = $BOUNCER_UP
INI
chown postgres "$D/users.txt" "$D/bouncer.ini"
su postgres -c "pgbouncer -d $D/bouncer.ini"
sleep 1
out=$D/runs.txt
run() { # target port sslmode what args...
    local target=$1 port=$2 ssl=$3 what=$4; shift 4
    PGSSLMODE=$ssl "$BIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -T "$SECS" "$@" postgres 2>&1 |
        awk -v t="$target" -v w="$what" '/tps = / {print t, w, $3}' | tee -a "$out"
}
for r in $(seq 1 "$ROUNDS"); do
    for what in prepared simple tpcb connect; do
        for target in pgshift pgbouncer; do
            port=$SHIFT; [ $target = pgbouncer ] && port=$BOUNCER
            case $what in
                prepared) run $target-tls $port require $what -S -M prepared -c 8 -j 2 ;;
                simple) run $target-tls $port require $what -S -M simple -c 8 -j 2 ;;
                tpcb) run $target-tls $port require $what -M prepared -c 8 -j 2 ;;
                connect) run $target-tls $port require $what -S -C -c 4 -j 2 ;;
            esac
        done
    done
done
python3 - "$out" "$UPSTREAM_TLS" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    t, w, tps = line.split()
    runs[(w, t)].append(float(tps))
print("upstream TLS:", "on (both re-encrypt)" if sys.argv[2] == "1" else "off")
for w in ["prepared", "simple", "tpcb", "connect"]:
    s, b = runs[(w, "pgshift-tls")], runs[(w, "pgbouncer-tls")]
    ratios = [x / y for x, y in zip(s, b)]
    print(f"{w:9} pgshift {statistics.median(s):8.0f} ({min(s):.0f}–{max(s):.0f})  "
          f"pgbouncer {statistics.median(b):8.0f} ({min(b):.0f}–{max(b):.0f})  "
          f"pgshift/pgbouncer median {statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})")
PY
