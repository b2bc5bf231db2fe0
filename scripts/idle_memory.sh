#!/usr/bin/env bash
# scripts/idle_memory.sh — what an idle client session costs pgshift in
# memory, with and without TLS: opens N idle sessions (a finished startup,
# then nothing) through pgshift against a throwaway Postgres, and reads
# pgshift's resident set (VmRSS) before and after; plain TCP first, then
# TLS (SSLRequest, then the handshake). Prints KiB per session.
#
#   scripts/idle_memory.sh [N]     (default 500; needs root to run Postgres
#   as postgres, openssl, python3, and a release build: cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-500}
BIN=$(pg_config --bindir)
PGSHIFT=$PWD/target/release/pgshift
D=$(mktemp -d /tmp/pgshift-idle-mem.XXXX); chmod 755 "$D"; chown postgres "$D"
PG=55893; SHIFT=55894
cleanup() {
    [ -n "${SHIFT_PID:-}" ] && kill "$SHIFT_PID" 2>/dev/null || true
    su postgres -c "$BIN/pg_ctl -D $D/pg stop -m fast" >/dev/null 2>&1 || true
    rm -rf "$D"
}
trap cleanup EXIT
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$D/key.pem" -out "$D/cert.pem" -days 1 -subj /CN=localhost >/dev/null 2>&1
su postgres -c "$BIN/initdb -D $D/pg -A trust -U postgres" >/dev/null
su postgres -c "$BIN/pg_ctl -D $D/pg -o '-p $PG -c max_connections=$((2 * N + 20)) -c shared_buffers=32MB' -l $D/pg.log start -w" >/dev/null
"$PGSHIFT" serve --listen 127.0.0.1:$SHIFT --upstream 127.0.0.1:$PG --admin off --log-level warn \
    --upstream-tls disable --max-client-connections $((2 * N + 10)) \
    --tls-cert "$D/cert.pem" --tls-key "$D/key.pem" 2>"$D/pgshift.log" &
SHIFT_PID=$!
sleep 1
python3 - "$SHIFT" "$N" "$SHIFT_PID" <<'PY'
import socket, ssl, struct, sys, time
port, n, pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]

def rss_kib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

def startup(tls):
    s = socket.create_connection(("127.0.0.1", port))
    if tls:
        s.sendall(struct.pack("!ii", 8, 80877103))
        assert s.recv(1) == b"S"
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        s = ctx.wrap_socket(s, server_hostname="localhost")
    body = struct.pack("!i", 196608) + b"user\0postgres\0database\0postgres\0\0"
    s.sendall(struct.pack("!i", len(body) + 4) + body)
    buf = b""
    while True:  # until ReadyForQuery
        chunk = s.recv(65536)
        assert chunk, "closed during startup"
        buf += chunk
        while len(buf) >= 5:
            tag, length = buf[0:1], struct.unpack("!i", buf[1:5])[0]
            if len(buf) < 1 + length:
                break
            if tag == b"E":
                raise SystemExit(f"startup failed: {buf[5:1 + length]!r}")
            if tag == b"Z":
                return s
            buf = buf[1 + length:]

held = []
for tls in (False, True):
    time.sleep(1)
    before = rss_kib()
    for _ in range(n):
        held.append(startup(tls))
    time.sleep(2)
    after = rss_kib()
    kind = "TLS" if tls else "plain"
    print(f"{kind:5}: {n} idle sessions, pgshift RSS {before} -> {after} KiB: "
          f"{(after - before) / n:.1f} KiB per session")
PY
