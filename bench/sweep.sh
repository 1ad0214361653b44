#!/usr/bin/env bash
# The timer sweep with many idle connections (issue #15): `lameduck serve`
# holds N idle keep-alive connections (one /ping each) for 10 s; its
# `timers.sweep` debug events (twice a second) say how long each sweep ran
# and the longest it held one of its maps' locks, which is the longest a
# connection being accepted can wait for it (connections add themselves
# from their own task, never from the accept loop).
# Usage: bench/sweep.sh [N=19000]   (after a release build; the hard
# open-file limit must allow N)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-19000}
ulimit -n "$(ulimit -Hn)"
tmp=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
target/release/lameduck serve --listen "127.0.0.1:$port" --admin-listen 127.0.0.1:0 \
  --journal "sqlite:$tmp/jobs.db" --keep-alive-timeout 600s \
  --log-format json --log-level warn,lameduck=debug >"$tmp/log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$tmp"' EXIT
for _ in $(seq 1 100); do grep -q server.listening "$tmp/log" && break; sleep 0.1; done
python3 - "$port" "$n" <<'PY'
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
socks = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n")
    socks.append(s)
for s in socks:
    s.settimeout(10)
    s.recv(1024)
time.sleep(10)
PY
python3 - "$tmp/log" "$n" <<'PY'
import json, sys
n = int(sys.argv[2])
rows = []
for line in open(sys.argv[1]):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if e.get("message") == "timers.sweep" and e.get("timed", 0) >= n:
        rows.append(e)
def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]
sweep = [r["micros"] for r in rows]
hold = [r["longest_hold_micros"] for r in rows]
print(f"{len(rows)} sweeps over {n} connections: sweep median {pct(sweep, 0.5)} us, "
      f"p99 {pct(sweep, 0.99)} us, max {max(sweep)} us; longest lock hold median "
      f"{pct(hold, 0.5)} us, p99 {pct(hold, 0.99)} us, max {max(hold)} us")
PY
