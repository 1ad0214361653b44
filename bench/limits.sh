#!/usr/bin/env bash
# Benchmarks of issue #6 (hardening), in one invocation:
#   1. keep-alive /ping throughput with wrk while N_SLOW slowloris
#      connections are held open (each trickles a header byte a second and
#      reconnects when the header timeout closes it) vs undisturbed, rounds
#      interleaved on the same server; prints the ratio (target >= 0.9).
#   2. server RSS per idle keep-alive connection (N_IDLE connections).
#   3. time to shed N_SHED connections past --max-connections (each answered
#      503 and closed), against serving as many new connections in the same
#      run.
# Usage: bench/limits.sh [SECONDS_PER_ROUND=10] [ROUNDS=3] [N_SLOW=2000]
#                        [N_IDLE=20000] [N_SHED=5000]
# Loopback only. Needs wrk (Debian package `wrk`); N_IDLE needs about
# 2 x N_IDLE file descriptors (raised here when the shell may).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
rounds=${2:-3}
n_slow=${3:-2000}
n_idle=${4:-20000}
n_shed=${5:-5000}

command -v wrk >/dev/null || { echo "bench: wrk is missing (apt-get install wrk)" >&2; exit 1; }
# The client and the server each hold one descriptor per connection.
want=$((n_idle + 1000))
ulimit -Hn "$want" 2>/dev/null || true
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" -lt "$want" ]; then
  n_idle=$(($(ulimit -n) - 1000))
  echo "bench: the open-file limit here is $(ulimit -n) and cannot be raised: measuring $n_idle idle connections" >&2
fi

cargo build --release -q -p lameduck-cli --bin lameduck --examples
bin=target/release/lameduck
client=target/release/examples/bench_client
out=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$out"; }
trap cleanup EXIT

"$bin" serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --journal "sqlite:$out/bench.db" \
  --log-format json --log-level warn,lameduck=info >"$out/serve.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do grep -q server.listening "$out/serve.log" && break; sleep 0.1; done
addr=$(grep server.listening "$out/serve.log" | grep -o '"addr":"[^"]*"' | sed 's/"addr":"\(.*\)"/\1/')
[ -n "$addr" ] || { echo "bench: server did not start" >&2; cat "$out/serve.log" >&2; exit 1; }

rps() { wrk -t1 -c64 -d"${secs}s" "http://$addr/ping" | awk '/Requests\/sec/ {print $2}'; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "== /ping with $n_slow slowloris connections vs without: wrk -t1 -c64 -d${secs}s, $rounds rounds"
wrk -t1 -c64 -d2s "http://$addr/ping" >/dev/null
calm=() stormy=()
for r in $(seq 1 "$rounds"); do
  c=$(rps)
  "$client" slowloris "$addr" "$n_slow" $((secs + 5)) >"$out/slow.$r" &
  slow=$!
  pids+=($slow)
  sleep 4
  s=$(rps)
  # The attacker shares this machine's two cores with the server and wrk.
  slow_cpu=$(awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$slow/stat" 2>/dev/null || echo "?")
  wait "$slow" || true
  calm+=("$c") stormy+=("$s")
  echo "round $r: undisturbed ${c} req/s, with slowloris ${s} req/s; $(cat "$out/slow.$r"), using ${slow_cpu} s of CPU"
done
awk -v c="$(median "${calm[@]}")" -v s="$(median "${stormy[@]}")" 'BEGIN {
  printf "median req/s: undisturbed %.0f | with slowloris %.0f | ratio %.3f (target >= 0.9)\n", c, s, s / c }'
for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
pids=()

echo "== memory per idle keep-alive connection"
"$client" idle-rss "$bin" "$n_idle" target/release/examples/{bare_hyper,lameduck_minimal,plain_axum}
echo "== shedding connections past the limit"
"$client" shed "$bin" 1000 "$n_shed"
