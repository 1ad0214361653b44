#!/usr/bin/env bash
# User-space instructions per keep-alive /ping request, counted by
# callgrind: repeatable whatever else the machine is doing, unlike requests
# per second on a shared 2-core box. Each server runs twice under callgrind
# (2,000 and 12,000 requests over 8 connections); the difference divided by
# 10,000 removes start-up. Kernel time (the syscalls) is not counted.
# Usage: bench/instructions.sh   (run after bench/run.sh has built the examples)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "bench: valgrind is missing" >&2; exit 1; }
examples=target/release/examples
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

count() { # n command... -> total instructions after n requests
  local n=$1; shift
  valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.$n" "$@" >"$tmp/log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 300); do grep -q listening "$tmp/log" && break; sleep 0.1; done
  "$examples/bench_client" ping "127.0.0.1:$port" "$n" 8 >/dev/null
  callgrind_control -d "$pid" >/dev/null 2>&1
  sleep 1
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  grep -h -E '^(summary|totals):' "$tmp"/cg."$n"* | awk '{print $2}' | sort -n | tail -1
  rm -f "$tmp"/cg."$n"*
}
per_request() { # label command...
  local label=$1; shift
  local a b
  a=$(count 2000 "$@" "127.0.0.1:$port")
  b=$(count 12000 "$@" "127.0.0.1:$port")
  echo "$label: $(( (b - a) / 10000 )) instructions per request"
}
echo "== user-space instructions per /ping (callgrind, 8 keep-alive connections)"
per_request "bare hyper                          " "$examples/bare_hyper"
per_request "lameduck library                    " "$examples/lameduck_minimal"
per_request "lameduck library, no header timeout " "$examples/lameduck_minimal" --no-header-timeout
per_request "library, --rate-limit (never hit)   " "$examples/lameduck_minimal" --rate-limit
per_request "library, --max-in-flight + queue    " "$examples/lameduck_minimal" --max-in-flight
per_request "library, --max-new-sessions         " "$examples/lameduck_minimal" --max-new-sessions
per_request "plain axum::serve, /ping Router     " "$examples/plain_axum"
per_request "serve's Router, plain axum::serve   " target/release/lameduck serve --baseline-plain-axum --admin-listen 127.0.0.1:0 --journal "sqlite:$tmp/base.db" --listen
per_request "lameduck serve (every route, jobs)  " target/release/lameduck serve --admin-listen 127.0.0.1:0 --journal "sqlite:$tmp/jobs.db" --listen
per_request "lameduck serve --no-trace-context   " target/release/lameduck serve --no-trace-context --admin-listen 127.0.0.1:0 --journal "sqlite:$tmp/jobs2.db" --listen
