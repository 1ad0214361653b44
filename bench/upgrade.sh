#!/usr/bin/env bash
# Upgrades under load (issue #4), measured with `lameduck drill`: CONNS
# keep-alive clients loop /ping as fast as they can against `lameduck
# serve`; after 3 s of steady state, UPGRADES SIGHUP upgrades one second
# apart (`--scenario restart`, WebSocket and SSE clients off). Prints, per
# round: requests and failures, p99 latency before the first upgrade and in
# the upgrade windows (SIGHUP until the new process reported READY=1 and
# the old one exited), and the time from SIGHUP to READY=1. Usage:
#   bench/upgrade.sh [CONNS=64] [UPGRADES=10] [ROUNDS=3]
set -euo pipefail
cd "$(dirname "$0")/.."
conns=${1:-64}
upgrades=${2:-10}
rounds=${3:-3}
cargo build --release -q -p lameduck-cli --bin lameduck
bin=target/release/lameduck
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for r in $(seq 1 "$rounds"); do
  rm -f "$out"/jobs.db*
  # No probation: upgrades one second apart measure the handoff itself.
  cmd=("$bin" drill --spawn "$bin serve --listen 127.0.0.1:{port} --admin-listen 127.0.0.1:0 --journal sqlite:$out/jobs.db --upgrade-binary $bin --upgrade-probation 0s"
    --scenario restart --restarts "$upgrades" --restart-every 1s --restart-load "$conns"
    --restart-ws 0 --restart-sse 0 --before 3s --after 0s --json "$out/report.json")
  echo "== round $r: lameduck drill --scenario restart --restarts $upgrades --restart-every 1s --restart-load $conns --restart-ws 0 --restart-sse 0 --before 3s"
  "${cmd[@]}" >"$out/table" || { cat "$out/table"; exit 1; }
  python3 - "$out/report.json" <<'PY'
import json, statistics, sys
r = json.load(open(sys.argv[1]))
c, lat = r["counts"], r["latency"]
failed = sum(c[k] for k in r["failures"]) + sum(
    c[k] for k in ("refused", "lost", "cut", "http_5xx", "restart_failed"))
ready = sorted(x["ready_after_ms"] for x in r["restarts"] if x["ready_after_ms"] is not None)
gone = [x["old_exit_after_ms"] for x in r["restarts"] if x["old_exit_after_ms"] is not None]
ratio = lat["during"]["p99_ms"] / lat["before"]["p99_ms"]
print(f"{c['ok']} requests ({c['ok'] / (r['end_ms'] / 1000):.0f}/s), {failed} failed, "
      f"{len(r['restarts'])} upgrades ({sum(1 for x in r['restarts'] if x['pid_after'] != x['pid_before'])} to a new pid)")
print(f"p99 before {lat['before']['p99_ms']:.2f} ms (n={lat['before']['count']}), "
      f"in upgrade windows {lat['during']['p99_ms']:.2f} ms (n={lat['during']['count']}), ratio {ratio:.2f}; "
      f"p50 {lat['before']['p50_ms']:.2f} -> {lat['during']['p50_ms']:.2f} ms")
print(f"SIGHUP to READY=1: median {statistics.median(ready)} ms, max {max(ready)} ms; "
      f"old process gone after {min(gone)}-{max(gone)} ms")
PY
done
