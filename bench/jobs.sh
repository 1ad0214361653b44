#!/usr/bin/env bash
# Job journal throughput: durable enqueues from 64 submitters (SQLite with
# group commit, SQLite with one commit per job, Redis, Postgres) and
# claim+complete with 8 workers, one job a claim and up to 32 a claim, all
# in one run. Usage: bench/jobs.sh [JOBS] [ROUNDS]
# Needs Redis at $REDIS_URL (default redis://127.0.0.1:6379) and Postgres at
# $DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test). The SQLite
# files go under $TMPDIR: keep it on a real disk.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${1:-20000}
rounds=${2:-3}
cargo build --release -q -p lameduck-jobs --example journal_bench --example start_latency --example pool_throughput
for r in $(seq 1 "$rounds"); do
  echo "== round $r: journal_bench $jobs"
  target/release/examples/journal_bench "$jobs"
done
echo "== enqueue -> start latency from another instance"
target/release/examples/start_latency 200
echo "== end to end through the worker pool"
for r in $(seq 1 "$rounds"); do
  echo "== round $r: pool_throughput 100000 8 64"
  target/release/examples/pool_throughput 100000 8 64
done
