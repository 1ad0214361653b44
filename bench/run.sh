#!/usr/bin/env bash
# Benchmarks of issue #2, in one invocation, against a baseline measured in
# the same run:
#   1. keep-alive /ping throughput with wrk, servers interleaved round by
#      round: the lameduck library vs a bare hyper server with the same
#      service_fn, and `lameduck serve` vs its own Router, job pool and
#      stores under plain `axum::serve` (`serve --baseline-plain-axum`);
#      prints the ratios; then h2c with h2load, library vs bare hyper.
#   2. server RSS per idle WebSocket (5,000 sockets).
#   3. time from SIGTERM to exit with 5,000 idle keep-alive connections and
#      5,000 idle WebSockets, and how each one ended (a `lameduck drill`
#      run, scenario idle).
# Usage: bench/run.sh [SECONDS_PER_ROUND=10] [ROUNDS=3] [CONNECTIONS=64]
# Loopback only. Needs wrk (Debian package `wrk`).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
rounds=${2:-3}
conns=${3:-64}

command -v wrk >/dev/null || { echo "bench: wrk is missing (apt-get install wrk)" >&2; exit 1; }
command -v h2load >/dev/null || { echo "bench: h2load is missing (apt-get install nghttp2-client)" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cargo build --release -q -p lameduck-cli --bin lameduck --examples
bin=target/release/lameduck
examples=target/release/examples
out=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$out"; }
trap cleanup EXIT

wait_for() { # file pattern -> first match
  for _ in $(seq 1 100); do
    if m=$(grep -o -m1 "$2" "$1" 2>/dev/null); then echo "$m"; return 0; fi
    sleep 0.1
  done
  echo "bench: server did not start; see $1" >&2; exit 1
}

start_server() { # name command... -> sets addr_<name> and pid_<name>
  local name=$1; shift
  "$@" >"$out/$name.log" 2>&1 &
  pids+=($!)
  printf -v "pid_$name" '%s' "$!"
  local addr
  # The service's own line: `serve` logs its admin listener first.
  addr=$(wait_for "$out/$name.log" '\(\(server\|baseline\)\.listening","addr":"[^"]*"\|listening [0-9.:]*\)' | sed 's/.*"addr":"\([^"]*\)"/\1/; s/listening //')
  printf -v "addr_$name" '%s' "$addr"
}
# Two pairs with the same handler on both sides: the library alone vs bare
# hyper (same service_fn), and the reference service vs plain axum (same
# Router). Both lameduck servers run with their defaults, header-read
# timeout included; lameduck_nt is the library without it (a hyper timer per
# request that the bare server does not pay).
start_server hyper "$examples/bare_hyper"
start_server lib "$examples/lameduck_minimal"
start_server lib_nt "$examples/lameduck_minimal" 127.0.0.1:0 --no-header-timeout
start_server axum "$examples/plain_axum"
start_server serve "$bin" serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --journal "sqlite:$out/bench.db" --log-format json --log-level warn,lameduck=info
# The same Router, job pool and stores as `serve`, under plain axum::serve.
start_server serve_base "$bin" serve --baseline-plain-axum --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --journal "sqlite:$out/base.db" --log-format json --log-level warn,lameduck=info
names=(hyper lib lib_nt axum serve serve_base)

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
measure() { # name -> "req/s cpu-us-per-request"
  local a="addr_$1" p="pid_$1" before after res
  before=$(cpu_ticks "${!p}")
  res=$(wrk -t1 -c"$conns" -d"${secs}s" "http://${!a}/ping")
  after=$(cpu_ticks "${!p}")
  awk -v b="$before" -v a="$after" -v hz="$hz" '
    /requests in/ {n = $1} /Requests\/sec/ {r = $2}
    END {printf "%s %.3f", r, (a - b) * 1e6 / hz / n}' <<<"$res"
}
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "== keep-alive /ping throughput: wrk -t1 -c$conns -d${secs}s per server, $rounds rounds, servers interleaved"
declare -A results
for n in "${names[@]}"; do a="addr_$n"; wrk -t1 -c"$conns" -d2s "http://${!a}/ping" >/dev/null; done
declare -A cpus
for r in $(seq 1 "$rounds"); do
  line="round $r:"
  for n in "${names[@]}"; do
    read -r v c <<<"$(measure "$n")"
    results[$n]="${results[$n]:-} $v"
    cpus[$n]="${cpus[$n]:-} $c"
    line="$line $n=${v}req/s,${c}us-cpu/req"
  done
  echo "$line"
done
for n in "${names[@]}"; do
  # shellcheck disable=SC2086
  printf -v "med_$n" '%s' "$(median ${results[$n]})"
  # shellcheck disable=SC2086
  printf -v "cpu_$n" '%s' "$(median ${cpus[$n]})"
done
echo "median server CPU per request (us): bare hyper $cpu_hyper | lameduck library $cpu_lib (no header timeout: $cpu_lib_nt) | plain axum /ping Router $cpu_axum | lameduck serve $cpu_serve | serve's Router under plain axum::serve $cpu_serve_base"
awk -v h="$med_hyper" -v l="$med_lib" -v lnt="$med_lib_nt" -v a="$med_axum" -v s="$med_serve" -v b="$med_serve_base" 'BEGIN {
  printf "median req/s: bare hyper %.0f | lameduck library %.0f (no header timeout: %.0f) | plain axum /ping Router %.0f | lameduck serve %.0f | serve'"'"'s Router under plain axum::serve %.0f\n", h, l, lnt, a, s, b
  printf "ratio lameduck library / bare hyper (same service_fn): %.3f (without header timeout: %.3f; target >= 0.97)\n", l / h, lnt / h
  printf "ratio lameduck serve / plain axum::serve, same Router: %.3f (target >= 0.97)\n", s / b
  printf "ratio lameduck serve / plain axum, /ping-only Router:  %.3f\n", s / a
}'

echo "== h2c /ping throughput: h2load -n 200000 -c 32 -m 10 -t 1 per server, $rounds rounds, interleaved"
# The library's default sends HTTP/2 PINGs (dead peers under open streams),
# which bare hyper does not: hyper then reads the clock and polls a timer at
# every poll of the connection. lib_np is the library without them.
start_server lib_np "$examples/lameduck_minimal" 127.0.0.1:0 --no-h2-ping
declare -A h2
for r in $(seq 1 "$rounds"); do
  line="round $r:"
  for n in hyper lib lib_np; do
    a="addr_$n"
    v=$(h2load -n 200000 -c 32 -m 10 -t 1 "http://${!a}/ping" 2>/dev/null | awk '/^finished in/ { gsub(",", "", $4); print $4 }')
    h2[$n]="${h2[$n]:-} $v"
    line="$line $n=${v}req/s"
  done
  echo "$line"
done
# shellcheck disable=SC2086
awk -v h="$(median ${h2[hyper]})" -v l="$(median ${h2[lib]})" -v n="$(median ${h2[lib_np]})" 'BEGIN {
  printf "h2c median req/s: bare hyper %.0f | lameduck library %.0f (without PINGs: %.0f) | ratio %.3f (without PINGs: %.3f; target >= 0.95)\n", h, l, n, l / h, n / h
}'
for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
pids=()

echo "== memory per idle WebSocket"
"$examples/bench_client" ws-rss "$bin" 5000
echo "== drain time: SIGTERM to exit, --drain-spread 0s (target <= idle grace 1 s + 0.5 s)"
"$bin" drill --scenario idle --idle-http 5000 --idle-ws 5000 --before 1s --after 0s \
  --spawn "$bin serve --listen 127.0.0.1:{port} --admin-listen 127.0.0.1:0 --journal sqlite:$out/drain.db --drain-spread 0s" \
  --json "$out/drain.json" >/dev/null || { echo "bench: the drain drill failed" >&2; exit 1; }
python3 - "$out/drain.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
c = r["counts"]
print(f"drain: 5000 idle keep-alive + 5000 idle WebSockets: exit code {r['exit_code']} "
      f"{r['exit_after_ms'] / 1000:.3f} s after SIGTERM; "
      f"WebSockets closed {c['ws_closed']} (codes {r['close_codes']}), abrupt {c['ws_abrupt']}; "
      f"keep-alive closed {c['idle_closed']}, reset {c['idle_reset']}")
EOF

if command -v valgrind >/dev/null; then
  bench/instructions.sh
else
  echo "(valgrind not installed: instruction counts skipped)"
fi
