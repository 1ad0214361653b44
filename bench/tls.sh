#!/usr/bin/env bash
# TLS benchmarks (BENCHMARKS.md, "TLS"):
# 1. full and resumed handshakes per second, and what a restart costs
#    clients holding sessions, with the ticket-key handoff of an upgrade and
#    without it (a stop and a start): examples/tls_bench.rs;
# 2. h2 over TLS throughput with h2load (Debian's nghttp2-client) against
#    bare hyper + rustls, the library alone, and `lameduck serve`, same
#    certificate, servers interleaved round by round.
# Usage: bench/tls.sh [conns] [clients] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
conns="${1:-4000}"
clients="${2:-1000}"
rounds="${3:-3}"
cargo build --release -q -p lameduck-cli --bin lameduck --examples
./target/release/examples/tls_bench target/release/lameduck --conns "$conns" --clients "$clients"

command -v h2load >/dev/null || { echo "h2load missing (Debian: nghttp2-client)"; exit 1; }
dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$dir"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$dir/key.pem" -out "$dir/cert.pem" -days 1 -subj /CN=localhost 2>/dev/null
./target/release/examples/bare_hyper 127.0.0.1:18441 --tls "$dir/cert.pem" "$dir/key.pem" >/dev/null &
pids+=($!)
./target/release/examples/lameduck_minimal 127.0.0.1:18442 --tls "$dir/cert.pem" "$dir/key.pem" >/dev/null &
pids+=($!)
./target/release/lameduck serve --listen 127.0.0.1:18443 --admin-listen 127.0.0.1:0 \
  --tls-cert "$dir/cert.pem" --tls-key "$dir/key.pem" --journal "sqlite:$dir/jobs.db" \
  --topics memory --log-level warn 2>/dev/null &
pids+=($!)
sleep 1
declare -A results
declare -A names=([18441]="bare hyper + rustls" [18442]="lameduck library" [18443]="lameduck serve")
for round in $(seq "$rounds"); do
  for port in 18441 18442 18443; do
    rps=$(h2load -n 100000 -c 32 -m 10 -t 1 "https://127.0.0.1:$port/ping" 2>/dev/null \
      | awk '/^finished in/ { gsub(",", "", $4); print $4 }')
    results[$port]+="$rps "
  done
done
echo
echo "h2load -n 100000 -c 32 -m 10 -t 1 https://ADDR/ping, $rounds rounds"
echo "| server | req/s by round | median |"
echo "|---|---|---|"
for port in 18441 18442 18443; do
  median=$(tr ' ' '\n' <<<"${results[$port]}" | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  echo "| ${names[$port]} | ${results[$port]}| $median |"
done
