#!/usr/bin/env bash
# Topic benchmarks (BENCHMARKS.md, "Topics"): publish→delivery latency and
# fan-out with 1,000 subscribers for memory, SQLite and Redis against a
# plain tokio broadcast in the same run, a 100,000-message replay, and
# SQLite publishes/s with and without group commit. Redis: REDIS_URL or
# 127.0.0.1:6379, under a fresh key prefix.
# Usage: bench/topics.sh [subscribers] [replay]
set -euo pipefail
cd "$(dirname "$0")/.."
subscribers="${1:-1000}"
replay="${2:-100000}"
cargo build --release -q -p lameduck-topics --example topics_bench
exec ./target/release/examples/topics_bench --subscribers "$subscribers" --replay "$replay"
