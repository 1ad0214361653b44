#!/usr/bin/env bash
# Upgrades under load (issue #4): CONNS keep-alive clients loop /ping as fast
# as they can against `lameduck serve`; after 3 s of steady state, UPGRADES
# SIGHUP upgrades in a row, one second apart. Prints failed requests, p50/p99
# latency in the steady state and inside the upgrade windows, and the time
# from SIGHUP to the new process serving. Usage:
#   bench/upgrade.sh [CONNS=64] [UPGRADES=10] [ROUNDS=3]
set -euo pipefail
cd "$(dirname "$0")/.."
conns=${1:-64}
upgrades=${2:-10}
rounds=${3:-3}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release -q -p lameduck-cli --bin lameduck --examples
for r in $(seq 1 "$rounds"); do
  echo "== round $r: bench_client upgrade target/release/lameduck $conns $upgrades"
  target/release/examples/bench_client upgrade target/release/lameduck "$conns" "$upgrades"
done
