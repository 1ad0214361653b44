#!/usr/bin/env bash
# What a small WebSocket read buffer costs on echo throughput (issue #15):
# `examples/ws_echo` servers whose `/ws-session` route uses each read
# buffer size in SIZES, against `/ws-raw` (axum's socket, 4 KiB buffer),
# rounds interleaved; prints each round's echoes per second and ratios.
# Behind `lameduck::Server`, small reads are served from a read-ahead.
# Usage: bench/ws_buffers.sh [SECS=3] [ROUNDS=3] ["SIZES"="4096 512 256"] [BYTES=65536]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-3}
rounds=${2:-3}
sizes=${3:-4096 512 256}
bytes=${4:-65536}
cargo build --release -q -p lameduck-cli --examples
examples=target/release/examples
declare -A addr=()
pids=()
logs=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -f "${logs[@]}"' EXIT
for size in $sizes; do
  log=$(mktemp)
  logs+=("$log")
  WS_READ_BUFFER=$size "$examples/ws_echo" 127.0.0.1:0 >"$log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do grep -q listening "$log" && break; sleep 0.1; done
  addr[$size]=$(sed -n 's/^listening //p' "$log")
done
first=${sizes%% *}
for r in $(seq 1 "$rounds"); do
  raw=$("$examples/bench_client" ws-echo "${addr[$first]}" /ws-raw 64 "$secs" "$bytes" | awk '{print $(NF-1)}')
  line="round $r, $bytes-byte messages: raw (4 KiB) $raw/s"
  for size in $sizes; do
    got=$("$examples/bench_client" ws-echo "${addr[$size]}" /ws-session 64 "$secs" "$bytes" | awk '{print $(NF-1)}')
    line="$line | WsSession $size B $got/s ($(awk -v a="$got" -v b="$raw" 'BEGIN { printf "%.3f", a / b }'))"
  done
  echo "$line"
done
