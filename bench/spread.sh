#!/usr/bin/env bash
# Reconnect storms (issue #13): N idle WebSockets on one `lameduck serve`,
# upgraded with SIGHUP so that its successor, a second instance, takes
# every reconnect; once with `--drain-spread auto`, once with `0s`. The
# clients are `lameduck drill --scenario restart` WebSockets (a message
# every 10 s, reconnecting at once when closed). Prints, for each: the
# reconnects and their peak per 100 ms (the drill's figure), the time from
# the old process's drain to its exit, and the CPU time the successor
# spent (user + system, from /proc) over the run.
# Usage: bench/spread.sh [N=5000]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-5000}
cargo build --release -q -p lameduck-cli --bin lameduck
bin=target/release/lameduck
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
out=$(mktemp -d)
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null || true
  pkill -f "$out/jobs" 2>/dev/null || true
  rm -rf "$out"
}
trap cleanup EXIT

for spread in auto 0s; do
  rm -f "$out"/jobs.db* "$out"/serve.log
  "$bin" serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --log-format json \
    --journal "sqlite:$out/jobs.db" --drain-spread "$spread" 2>"$out/serve.log" &
  server=$!
  for _ in $(seq 1 100); do grep -q server.listening "$out/serve.log" && break; sleep 0.1; done
  addr=$(grep -m1 server.listening "$out/serve.log" | sed 's/.*"addr":"\([^"]*\)".*/\1/')
  echo "== --drain-spread $spread: lameduck drill --url http://$addr --pid $server --scenario restart --restarts 1 --restart-ws $n --restart-load 0 --restart-sse 0 --ws-interval 10s --restart-every 20s --before 3s"
  "$bin" drill --url "http://$addr" --pid "$server" --scenario restart --restarts 1 \
    --restart-ws "$n" --restart-load 0 --restart-sse 0 --ws-interval 10s \
    --restart-every 20s --before 3s --after 0s --json "$out/report.json" >"$out/table" ||
    { cat "$out/table"; exit 1; }
  successor=$(grep server.listening "$out/serve.log" | sed -n 2p | sed 's/.*"pid":\([0-9]*\).*/\1/')
  python3 - "$out/report.json" "$out/serve.log" "$successor" <<'PY'
import json, os, sys
r = json.load(open(sys.argv[1]))
events = [json.loads(l) for l in open(sys.argv[2]) if l.startswith("{")]
def at(name):
    import datetime
    for e in events:
        if e.get("message") == name:
            return datetime.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00"))
begin, complete = at("shutdown.begin"), at("shutdown.complete")
spread = next((e for e in events if e.get("message") == "shutdown.spread"), None)
stat = open(f"/proc/{sys.argv[3]}/stat").read().rsplit(")", 1)[1].split()
cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
c = r["counts"]
print(f"reconnects {c['reconnect']}, peak {r['reconnect_peak_per_100ms']} per 100 ms; "
      f"spread window {spread['window_ms'] if spread else 0} ms over {spread['count'] if spread else 0} connections; "
      f"old process drained in {(complete - begin).total_seconds():.3f} s; "
      f"successor CPU {cpu:.2f} s; lost {c['lost']}, ws abrupt {c['ws_abrupt']}, ws unechoed {c['ws_unechoed']}")
PY
  kill "$successor" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  server=""
  sleep 1
done
