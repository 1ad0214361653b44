#!/usr/bin/env bash
# TLS benchmarks (BENCHMARKS.md, "TLS"): full and resumed handshakes per
# second, and what a restart costs clients holding sessions, with the
# ticket-key handoff of an upgrade and without it (a stop and a start).
# Usage: bench/tls.sh [conns] [clients]
set -euo pipefail
cd "$(dirname "$0")/.."
conns="${1:-4000}"
clients="${2:-1000}"
cargo build --release -q -p lameduck-cli --bin lameduck --example tls_bench
exec ./target/release/examples/tls_bench target/release/lameduck --conns "$conns" --clients "$clients"
