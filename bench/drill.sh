#!/usr/bin/env bash
# Is `lameduck drill` ever the bottleneck? (issue #5), in one invocation,
# against a release `lameduck serve` it did not start (--url/--pid), so that
# the drill's own CPU and memory are measured apart from the server's:
#   1. `load` (keep-alive clients looping /ping) vs wrk with as many
#      connections on the same server, rounds interleaved: requests/s of
#      each, their ratio, and CPU per request of each client;
#   2. N_WS idle WebSockets held by the drill (`idle`), then the SIGTERM:
#      every one must get its Close; the drill's peak RSS;
#   3. both at once: `load` while N_WS idle WebSockets are held.
# Usage: bench/drill.sh [SECONDS=10] [ROUNDS=3] [CLIENTS=64] [N_WS=5000]
# Loopback only. Needs wrk and GNU time (Debian packages `wrk`, `time`).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
rounds=${2:-3}
clients=${3:-64}
n_ws=${4:-5000}

command -v wrk >/dev/null || { echo "bench: wrk is missing (apt-get install wrk)" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "bench: GNU time is missing (apt-get install time)" >&2; exit 1; }
# The server holds one descriptor per WebSocket (the drill raises its own).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" -gt $((n_ws + 500)) ] || { echo "bench: open-file limit $(ulimit -n) is too low for $n_ws sockets" >&2; exit 1; }

cargo build --release -q -p lameduck-cli --bin lameduck
bin=target/release/lameduck
out=$(mktemp -d)
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$out"; }
trap cleanup EXIT

# Starts a server in the background: sets $server (pid) and $addr.
start_server() {
  rm -f "$out"/jobs.db*
  "$bin" serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --journal "sqlite:$out/jobs.db" \
    --log-format json --log-level warn,lameduck=info >"$out/serve.log" 2>&1 &
  server=$!
  for _ in $(seq 1 100); do grep -q server.listening "$out/serve.log" && break; sleep 0.1; done
  addr=$(grep server.listening "$out/serve.log" | grep -o '"addr":"[^"]*"' | sed 's/"addr":"\(.*\)"/\1/')
  [ -n "$addr" ] || { echo "bench: server did not start" >&2; cat "$out/serve.log" >&2; exit 1; }
}

stop_server() { kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; server=""; }

# `lameduck drill ARGS` against the running server, timed; the report is
# $out/report.json and the drill's usage "$out/time" (user sys maxrss_kib).
drill() {
  /usr/bin/time -o "$out/time" -f "%U %S %M" \
    "$bin" drill --url "http://$addr" --pid "$server" --after 0s \
    --json "$out/report.json" "$@" >"$out/table" 2>/dev/null || { cat "$out/table" >&2; exit 1; }
  wait "$server" 2>/dev/null || true
  server=""
}

# Requests/s before the signal, from the report's timeline (whole 100 ms
# slices only).
drill_rps() {
  python3 - "$out/report.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
end = r["signal_at_ms"] // 100 * 100
slices = [b for b in r["timeline"] if b["t_ms"] + 100 <= end]
# From the first slice with traffic: connecting is not load.
start = next(i for i, b in enumerate(slices) if b["counts"].get("ok", 0) > 0)
ok = sum(b["counts"].get("ok", 0) for b in slices[start:])
print(f"{ok / ((len(slices) - start) / 10):.0f} {ok}")
EOF
}

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
cpu() { awk '{printf "%.2f", $1 + $2}' "$out/time"; }

echo "== load: lameduck drill --scenario load --load-clients $clients --before ${secs}s vs wrk -t2 -c$clients -d${secs}s, $rounds rounds"
d_all=() w_all=()
for r in $(seq 1 "$rounds"); do
  start_server
  /usr/bin/time -o "$out/time" -f "%U %S %M" wrk -t2 -c"$clients" -d"${secs}s" "http://$addr/ping" >"$out/wrk"
  w=$(awk '/Requests\/sec/ {printf "%.0f", $2}' "$out/wrk")
  w_n=$(awk '/requests in/ {print $1}' "$out/wrk")
  w_cpu=$(cpu)
  drill --scenario load --load-clients "$clients" --before "${secs}s"
  read -r d d_n < <(drill_rps)
  d_cpu=$(cpu)
  d_all+=("$d") w_all+=("$w")
  awk -v d="$d" -v w="$w" -v dn="$d_n" -v wn="$w_n" -v dc="$d_cpu" -v wc="$w_cpu" -v r="$r" 'BEGIN {
    printf "round %d: drill %d req/s (%.1f us CPU/req), wrk %d req/s (%.1f us CPU/req), ratio %.3f\n",
      r, d, dc * 1e6 / dn, w, wc * 1e6 / wn, d / w }'
done
awk -v d="$(median "${d_all[@]}")" -v w="$(median "${w_all[@]}")" 'BEGIN {
  printf "median req/s: drill %.0f | wrk %.0f | ratio %.3f (target: drill >= 20000)\n", d, w, d / w }'

echo "== $n_ws idle WebSockets: lameduck drill --scenario idle --idle-http 0 --idle-ws $n_ws --before 3s"
start_server
drill --scenario idle --idle-http 0 --idle-ws "$n_ws" --before 3s
python3 - "$out/report.json" "$n_ws" <<'EOF'
import json, sys
r, n = json.load(open(sys.argv[1])), int(sys.argv[2])
held = max(b["open_ws"] for b in r["timeline"])
full = next((b["t_ms"] for b in r["timeline"] if b["open_ws"] >= n), None)
c = r["counts"]
print(f"held {held} of {n} (all open at {full} ms); at SIGTERM: closed {c['ws_closed']}, "
      f"codes {r['close_codes']}, abrupt {c['ws_abrupt']}, refused {c['refused']}, lost {c['lost']}; "
      f"server exited {r['exit_after_ms']} ms after the signal")
EOF
awk '{printf "drill: %.2f s CPU, peak RSS %.1f MiB\n", $1 + $2, $3 / 1024}' "$out/time"

echo "== both: --scenario idle,load --idle-ws $n_ws --load-clients $clients --before ${secs}s"
start_server
drill --scenario idle,load --idle-http 0 --idle-ws "$n_ws" --load-clients "$clients" --before "${secs}s"
read -r d d_n < <(drill_rps)
echo "load with $n_ws idle WebSockets held: $d req/s; $(grep '^WebSocket' "$out/table" | tr -s ' ')"
awk '{printf "drill: %.2f s CPU, peak RSS %.1f MiB\n", $1 + $2, $3 / 1024}' "$out/time"
