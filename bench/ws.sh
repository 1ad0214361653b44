#!/usr/bin/env bash
# WebSocket echo throughput (issue #15): 64 connections each sending a
# message and waiting for its echo, for SECS seconds, through
# `lameduck::ws::WsSession` and through axum's socket (tokio-tungstenite)
# behind the same upgrade in the same server (examples/ws_echo.rs); rounds
# interleaved, medians and their ratio, for 16-byte and 8 KiB messages.
# Usage: bench/ws.sh [SECS=4] [ROUNDS=3] [CONNS=64]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-4}
rounds=${2:-3}
conns=${3:-64}
cargo build --release -q -p lameduck-cli --examples
examples=target/release/examples
log=$(mktemp)
"$examples/ws_echo" 127.0.0.1:0 >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 100); do grep -q listening "$log" && break; sleep 0.1; done
addr=$(sed -n 's/^listening //p' "$log")
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for bytes in 16 8192; do
  declare -A got=()
  for r in $(seq 1 "$rounds"); do
    for path in /ws-raw /ws-session; do
      v=$("$examples/bench_client" ws-echo "$addr" "$path" "$conns" "$secs" "$bytes" | awk '{print $(NF-1)}')
      got[$path]="${got[$path]:-} $v"
    done
  done
  # shellcheck disable=SC2086
  awk -v raw="$(median ${got[/ws-raw]})" -v ses="$(median ${got[/ws-session]})" -v b="$bytes" -v c="$conns" 'BEGIN {
    printf "ws echo, %d connections, %d-byte messages: raw axum socket %.0f/s | WsSession %.0f/s | ratio %.3f (target >= 0.95)\n", c, b, raw, ses, ses / raw
  }'
done
