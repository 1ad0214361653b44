#!/usr/bin/env bash
# CPU an idle `lameduck serve` spends (no traffic, job pool idle, default
# SQLite journal and topics): the time its threads ran, from
# /proc/PID/task/*/schedstat (nanoseconds, user and kernel), over a window
# after a warm-up. Target (issue #15): < 0.1 % of a core.
# Usage: bench/idle.sh [SECONDS=60]   (after a release build; LAMEDUCK_BIN=
# another binary to compare)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
bin=${LAMEDUCK_BIN:-target/release/lameduck}
tmp=$(mktemp -d)
"$bin" serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
  --journal "sqlite:$tmp/jobs.db" --topics "sqlite:$tmp/topics.db" >"$tmp/log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$tmp"' EXIT
ran() { cat /proc/"$pid"/task/*/schedstat | awk '{ns += $1} END {print ns}'; }
sleep 5
a=$(ran)
sleep "$secs"
b=$(ran)
awk -v a="$a" -v b="$b" -v s="$secs" 'BEGIN {
  printf "idle lameduck serve: %.1f ms of CPU in %d s = %.3f %% of a core (target < 0.1 %%)\n", (b - a) / 1e6, s, (b - a) / 1e9 / s * 100
}'
