//! `lameduck drill`, run as a real process: against `lameduck serve` (it
//! spawns, or finds running) nothing is lost, across a stop or repeated
//! restarts; against a careless server it reports the losses and fails; a
//! service that ignores the stop is bounded by the limit and killed; its
//! JSON and HTML hold the figures; bad arguments get clear errors and leave
//! no process behind.

use std::{
    path::{Path, PathBuf},
    process::{Output, Stdio},
    time::Duration,
};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_lameduck");

fn example(name: &str) -> PathBuf {
    // Examples are built by `cargo test`, next to the binary.
    Path::new(BIN).parent().unwrap().join("examples").join(name)
}

/// Runs `lameduck drill ARGS` (killed after 90 s) and returns its output.
async fn drill(args: &[&str]) -> Output {
    let child = tokio::process::Command::new(BIN)
        .arg("drill")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the drill");
    tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .expect("the drill ends within 90 s")
        .expect("drill output")
}

/// `lameduck serve` as the drill spawns it (on `{port}`; on SIGHUP it
/// upgrades to itself), with its journal in `dir`; and that journal's path,
/// which finds its processes.
fn serve_command(dir: &Path) -> (String, String) {
    let journal = dir.join("jobs.db").display().to_string();
    // No probation: the restart tests SIGHUP every second, and each wants
    // the replaced process gone (and its exit code) before the drill ends.
    let serve = format!(
        "{BIN} serve --listen 127.0.0.1:{{port}} --admin-listen 127.0.0.1:0 \
         --upgrade-probation 0s --journal sqlite:{journal}"
    );
    (serve, journal)
}

/// The drill's `--json` report.
fn read_report(path: &Path) -> Value {
    let json = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("no report at {}: {e}", path.display()));
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("report is not JSON: {e}: {json}"))
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

const SMALL: &[&str] = &[
    "--load-clients",
    "8",
    "--inflight",
    "20",
    "--slow-for",
    "1s",
    "--idle-http",
    "50",
    "--idle-ws",
    "50",
    "--ws-clients",
    "20",
    "--sse-clients",
    "10",
];

// Every stop scenario against `lameduck serve`: zero lost, cut, abrupt or
// refused before the stop; exit code 0 with nothing allowed. The JSON holds every
// figure of the table; the HTML is one self-contained page with its SVG.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lameduck_serve_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let html = dir.path().join("report.html");
    let (serve, _) = serve_command(dir.path());
    let mut args = vec![
        "--spawn",
        &serve,
        "--scenario",
        "idle,inflight,load,websocket,sse",
    ];
    args.extend_from_slice(SMALL);
    let (json_s, html_s) = (json.display().to_string(), html.display().to_string());
    args.extend_from_slice(&["--json", &json_s, "--html", &html_s]);
    let out = drill(&args).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let report = read_report(&json);
    let count = |name: &str| {
        report["counts"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("{name} in {report}"))
    };
    for bad in [
        "lost",
        "cut",
        "http_5xx",
        "idle_reset",
        "ws_abrupt",
        "ws_unechoed",
        "sse_abrupt",
        "sse_gap",
    ] {
        assert_eq!(count(bad), 0, "{bad}: {}", text(&out));
    }
    assert!(count("ok") > 1000, "{}", text(&out));
    assert_eq!(count("idle_closed"), 50, "{}", text(&out));
    // Idle and chatting sockets all got the server's Close 1001.
    assert_eq!(count("ws_closed"), 70, "{}", text(&out));
    assert_eq!(report["close_codes"]["1001"], 70, "{report}");
    assert!(count("ws_echoed") > 20, "{}", text(&out));
    assert_eq!(count("sse_clean"), 10, "{}", text(&out));
    assert!(count("sse_event") > 10, "{}", text(&out));
    assert_eq!(report["exit_code"], 0);
    assert!(report["exit_after_ms"].as_u64().is_some());
    assert_eq!(report["passed"], true);
    assert_eq!(report["allowed"], serde_json::json!([]));
    assert_eq!(count("refused"), 0, "{}", text(&out));

    // Every figure the table shows is in the JSON.
    let table = String::from_utf8_lossy(&out.stdout);
    for (label, name) in [
        ("ok", "ok"),
        ("refused", "refused"),
        ("LOST", "lost"),
        ("cut", "cut"),
        ("5xx", "http_5xx"),
        ("retried", "retried"),
        ("echoed", "ws_echoed"),
        ("unechoed", "ws_unechoed"),
        ("crossed", "ws_crossed"),
        ("events", "sse_event"),
        ("gaps", "sse_gap"),
        ("restart_failed", "restart_failed"),
        ("no_exit", "no_exit"),
        ("WS+SSE", "reconnect"),
    ] {
        let shown = format!("{label} {:>7}", count(name));
        assert!(table.contains(&shown), "table shows {shown:?}: {table}");
    }
    let peak = format!(
        "peak/100ms {:>7}",
        report["reconnect_peak_per_100ms"].as_u64().unwrap()
    );
    assert!(table.contains(&peak), "table shows {peak:?}: {table}");
    for phase in ["before", "during", "after"] {
        assert!(
            report["latency"][phase]["count"].is_u64(),
            "{phase}: {report}"
        );
    }
    let before = &report["latency"]["before"];
    assert!(
        table.contains(&format!("(n={})", before["count"])),
        "{table}"
    );
    assert!(!report["timeline"].as_array().unwrap().is_empty());

    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
    assert_balanced(&page);
    assert_eq!(page.matches("<svg").count(), 1);
    assert!(page.contains("<polyline"), "the chart has lines");
    assert!(page.contains(">signal</text>") && page.contains(">exit</text>"));
    // Nothing outside itself: the only URL is the SVG namespace.
    let without_ns = page.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
    for outside in ["http://", "https://", "src=", "href=", "@import", "url("] {
        assert!(!without_ns.contains(outside), "references {outside}");
    }
    assert!(page.contains("PASS: nothing lost"));
}

/// Every element opened is closed, in order (void elements aside).
fn assert_balanced(page: &str) {
    let mut open: Vec<String> = Vec::new();
    let mut rest = page;
    while let Some(start) = rest.find('<') {
        let end = rest[start..].find('>').expect("tag closed") + start;
        let tag = &rest[start + 1..end];
        rest = &rest[end + 1..];
        if tag.starts_with('!') || tag.ends_with('/') {
            continue;
        }
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        if name == "meta" {
            continue;
        }
        if tag.starts_with('/') {
            assert_eq!(open.pop().as_deref(), Some(name.as_str()), "closing {name}");
        } else {
            open.push(name);
        }
    }
    assert!(open.is_empty(), "unclosed: {open:?}");
}

// A server that exits at once on SIGTERM: the drill reports lost
// requests and abrupt WebSocket and SSE ends, and exits 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn careless_server_fails_the_drill() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let careless = example("careless").display().to_string();
    let json_s = json.display().to_string();
    let mut args = vec![
        "--spawn",
        &careless,
        "--scenario",
        "inflight,websocket,sse",
        "--json",
        &json_s,
    ];
    args.extend_from_slice(SMALL);
    let out = drill(&args).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let report = read_report(&json);
    let count = |name: &str| report["counts"][name].as_u64().unwrap();
    assert!(
        count("lost") + count("cut") >= 20,
        "every in-flight request: {}",
        text(&out)
    );
    assert_eq!(count("ws_abrupt"), 20, "{}", text(&out));
    assert_eq!(count("sse_abrupt"), 10, "{}", text(&out));
    assert_eq!(report["passed"], false);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("FAIL:") && stdout.contains("ws_abrupt 20"),
        "{stdout}"
    );
}

const RESTART_SMALL: &[&str] = &[
    "--restart-load",
    "8",
    "--restart-ws",
    "10",
    "--restart-sse",
    "5",
    "--restart-every",
    "1s",
    "--before",
    "1s",
];

// The `restart` scenario against a spawned `lameduck serve` that upgrades
// on SIGHUP: three restarts, each followed through sd_notify to a new pid,
// and nothing refused, lost, cut or abrupt; every socket closed with 1012
// and reconnected; every SSE stream resumed without a gap; the replaced
// processes exited 0; nothing left running afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_of_lameduck_serve_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let html = dir.path().join("report.html");
    let (serve, journal) = serve_command(dir.path());
    let (json_s, html_s) = (json.display().to_string(), html.display().to_string());
    let mut args = vec![
        "--spawn",
        &serve,
        "--scenario",
        "restart",
        "--restarts",
        "3",
        "--json",
        &json_s,
        "--html",
        &html_s,
    ];
    args.extend_from_slice(RESTART_SMALL);
    let out = drill(&args).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!running(&journal), "a lameduck process was left running");

    let report = read_report(&json);
    let count = |name: &str| report["counts"][name].as_u64().unwrap();
    for bad in [
        "refused",
        "lost",
        "cut",
        "http_5xx",
        "ws_abrupt",
        "ws_unechoed",
        "sse_abrupt",
        "sse_gap",
        "restart_failed",
    ] {
        assert_eq!(count(bad), 0, "{bad}: {}", text(&out));
    }
    assert!(count("ok") > 1000, "{}", text(&out));
    // 10 sockets and 5 streams, closed by each of 3 restarts and reopened.
    assert_eq!(count("ws_closed"), 30, "{}", text(&out));
    assert_eq!(report["close_codes"], serde_json::json!({"1012": 30}));
    assert_eq!(count("sse_clean"), 15, "{}", text(&out));
    assert!(count("sse_event") > 15, "{}", text(&out));
    assert!(count("ws_echoed") > 30, "{}", text(&out));
    // Each of the 15 clients reconnected once per restart, and the storm
    // metric saw it.
    assert_eq!(count("reconnect"), 45, "{}", text(&out));
    let peak = report["reconnect_peak_per_100ms"].as_u64().unwrap();
    assert!((1..=45).contains(&peak), "{report}");
    assert!(report["reconnect_peak_at_ms"].is_u64(), "{report}");

    let restarts = report["restarts"].as_array().unwrap();
    assert_eq!(restarts.len(), 3, "{report}");
    let mut pids = vec![restarts[0]["pid_before"].as_u64().unwrap()];
    for r in restarts {
        assert_eq!(r["means"], "SIGHUP", "{r}");
        assert!(r["ready_after_ms"].is_u64(), "{r}");
        assert_eq!(r["pid_before"].as_u64(), pids.last().copied(), "{r}");
        let new = r["pid_after"].as_u64().unwrap();
        assert!(!pids.contains(&new), "a new process each time: {r}");
        pids.push(new);
        assert_eq!(r["old_exit_status"], "exit code 0", "{r}");
        assert!(r["failure"].is_null(), "{r}");
    }
    // Restarts only: the service is not stopped.
    assert!(report["signal_at_ms"].is_null(), "{report}");

    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("restart 3 (SIGHUP) at "), "{table}");
    assert!(table.contains(&format!("as pid {}", pids[3])), "{table}");
    let page = std::fs::read_to_string(&html).unwrap();
    assert_balanced(&page);
    for n in 1..=3 {
        assert!(page.contains(&format!(">restart {n}</text>")), "marker {n}");
    }
}

// The drill's default verdict is right: `--scenario all` against
// `lameduck serve` passes with nothing allowed. The connections refused
// once the final stop closed the only listener are counted apart
// (`refused_after_stop`: nothing can avoid them), while a refusal before
// the stop or during a restart would still fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_scenarios_pass_lameduck_serve_with_nothing_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let (serve, journal) = serve_command(dir.path());
    let json_s = json.display().to_string();
    let mut args = vec![
        "--spawn",
        &serve,
        "--scenario",
        "all",
        "--restarts",
        "1",
        "--after",
        "1s",
        "--json",
        &json_s,
    ];
    args.extend_from_slice(SMALL);
    args.extend_from_slice(RESTART_SMALL);
    let out = drill(&args).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!running(&journal), "a lameduck process was left running");
    let report = read_report(&json);
    let count = |name: &str| report["counts"][name].as_u64().unwrap();
    assert_eq!(report["allowed"], serde_json::json!([]));
    assert_eq!(count("refused"), 0, "{}", text(&out));
    assert!(count("refused_after_stop") > 0, "{}", text(&out));
    assert_eq!(report["passed"], true);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("refused after stop"), "{table}");
}

// The drill sees a reconnect storm, and the spread drain removes it: one
// upgrade of `lameduck serve` under 40 WebSocket and 10 SSE clients that
// reconnect at once; with `--drain-spread 0s` the busiest 100 ms holds at
// least 3 times the reconnects it holds with `--drain-spread 2s`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drill_sees_the_storm_that_the_spread_removes() {
    let mut peaks = Vec::new();
    for spread in ["0s", "2s"] {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("report.json");
        let (serve, journal) = serve_command(dir.path());
        let serve = format!("{serve} --drain-spread {spread}");
        let json_s = json.display().to_string();
        let args = [
            "--spawn",
            &serve,
            "--scenario",
            "restart",
            "--restarts",
            "1",
            "--restart-every",
            "4s",
            "--restart-load",
            "2",
            "--restart-ws",
            "40",
            "--restart-sse",
            "10",
            "--before",
            "1s",
            "--json",
            &json_s,
        ];
        let out = drill(&args).await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(!running(&journal), "a lameduck process was left running");
        let report = read_report(&json);
        assert_eq!(report["counts"]["reconnect"], 50, "{}", text(&out));
        peaks.push(report["reconnect_peak_per_100ms"].as_u64().unwrap());
    }
    assert!(peaks[0] >= 3 * peaks[1].max(1), "peaks (0s, 2s): {peaks:?}");
    eprintln!("reconnect peaks per 100 ms, spread 0s and 2s: {peaks:?}");
}

// A careless server dies of SIGHUP: the restart fails, and what it cut is
// counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn careless_server_fails_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let careless = example("careless").display().to_string();
    let json_s = json.display().to_string();
    let mut args = vec![
        "--spawn",
        &careless,
        "--scenario",
        "restart",
        "--json",
        &json_s,
    ];
    args.extend_from_slice(RESTART_SMALL);
    let out = drill(&args).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let report = read_report(&json);
    let count = |name: &str| report["counts"][name].as_u64().unwrap();
    assert_eq!(count("restart_failed"), 1, "{}", text(&out));
    assert_eq!(count("ws_abrupt"), 10, "{}", text(&out));
    assert_eq!(count("sse_abrupt"), 5, "{}", text(&out));
    assert!(count("refused") > 0, "{}", text(&out));
    // Nothing left to restart after the first.
    let restarts = report["restarts"].as_array().unwrap();
    assert_eq!(restarts.len(), 1, "{report}");
    assert!(
        restarts[0]["failure"]
            .as_str()
            .unwrap()
            .contains("no process of the service is left"),
        "{report}"
    );
}

// A running service the drill did not start, restarted and stopped by
// trigger commands (here through lameduck's admin API, as one would with
// `systemctl reload` and `systemctl stop`): nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_service_by_triggers() {
    let dir = tempfile::tempdir().unwrap();
    // A fixed admin port: each successor inherits the same socket, where
    // the next trigger finds it.
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let (mut command, journal_dir) =
        lameduck_test_support::Child::serve_command(BIN, &["--admin-listen", &admin]);
    command.env("LAMEDUCK_ADMIN_TOKEN", "t0ken");
    let server = lameduck_test_support::Child::spawn(command, journal_dir);
    let post = |path: &str| {
        format!(
            "python3 -c \"import urllib.request as u; u.urlopen(u.Request('http://{admin}{path}', method='POST', headers={{'Authorization': 'Bearer t0ken'}}), timeout=30)\""
        )
    };
    let (upgrade, drain) = (post("/admin/upgrade"), post("/admin/drain"));
    let url = format!("http://{}", server.addr);

    // A trigger that fails: the drill says how, with the end of its stderr.
    let out = drill(&[
        "--url",
        &url,
        "--trigger",
        "echo permission denied >&2; exit 4",
        "--scenario",
        "load",
        "--load-clients",
        "2",
        "--before",
        "500ms",
    ])
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("failed: exit code 4: permission denied"),
        "{}",
        text(&out)
    );

    let json = dir.path().join("report.json");
    let json_s = json.display().to_string();
    let mut args = vec![
        "--url",
        &url,
        "--restart-trigger",
        &upgrade,
        "--trigger",
        &drain,
        "--scenario",
        "load,restart",
        "--restarts",
        "2",
        "--json",
        &json_s,
    ];
    args.extend_from_slice(RESTART_SMALL);
    let out = drill(&args).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = read_report(&json);
    let count = |name: &str| report["counts"][name].as_u64().unwrap();
    for bad in ["lost", "cut", "ws_abrupt", "sse_abrupt", "sse_gap"] {
        assert_eq!(count(bad), 0, "{bad}: {}", text(&out));
    }
    assert_eq!(report["close_codes"]["1012"], 20, "{report}");
    let restarts = report["restarts"].as_array().unwrap();
    assert_eq!(restarts.len(), 2, "{report}");
    assert!(
        restarts[0]["means"]
            .as_str()
            .unwrap()
            .starts_with("trigger `python3")
    );
    assert!(report["trigger"].as_str().unwrap().contains("/admin/drain"));
    // Every process that served (the first and its two successors) is gone.
    let pids = server.listening_pids();
    assert_eq!(pids.len(), 3, "{pids:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while pids.iter().any(|&p| lameduck_test_support::is_alive(p)) {
        assert!(
            std::time::Instant::now() < deadline,
            "still running: {pids:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// Restarting by --pid a service that comes back under a new pid: the first
// restart is followed (the health path still answers), then the drill says
// it cannot go on, rather than call the restart failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_by_pid_stops_when_the_pid_changes() {
    // Dropped at the end, it kills the successors too.
    let server = lameduck_test_support::Child::serve(
        BIN,
        &["--upgrade-binary", BIN, "--upgrade-probation", "0s"],
    );
    // By name: `localhost` may resolve to ::1 first; the drill finds the
    // address that accepts.
    let url = format!("http://localhost:{}", server.addr.port());
    let pid = server.pid().to_string();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let json_s = json.display().to_string();
    let mut args = vec![
        "--url",
        &url,
        "--pid",
        &pid,
        "--scenario",
        "restart",
        "--json",
        &json_s,
    ];
    args.extend_from_slice(RESTART_SMALL);
    let out = drill(&args).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = read_report(&json);
    assert_eq!(report["restarts"].as_array().unwrap().len(), 1, "{report}");
    assert!(report["restarts"][0]["failure"].is_null(), "{report}");
    assert_eq!(report["counts"]["restart_failed"], 0, "{report}");
    assert_eq!(report["counts"]["lost"], 0, "{report}");
    let note = report["notes"][0].as_str().unwrap();
    assert!(
        note.contains(&format!("pid {pid} is gone")) && note.contains("--restart-trigger"),
        "{note}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(note));
}

// A service that speaks sd_notify but ignores SIGHUP (a Python server, not
// lameduck): each restart is failed at the next restart's time, without
// waiting for the READY timeout, since the service said nothing at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_that_starts_nothing_fails() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("deaf.py");
    std::fs::write(
        &script,
        r#"import http.server, os, signal, socket
signal.signal(signal.SIGHUP, signal.SIG_IGN)
os.chdir(os.path.dirname(os.path.abspath(__file__)))
server = http.server.ThreadingHTTPServer(
    ("127.0.0.1", int(os.environ["PORT"])), http.server.SimpleHTTPRequestHandler)
notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
notify.sendto(b"READY=1\nMAINPID=%d\n" % os.getpid(), os.environ["NOTIFY_SOCKET"])
server.serve_forever()
"#,
    )
    .unwrap();
    let spawn = format!("python3 {}", script.display());
    let json = dir.path().join("report.json");
    let json_s = json.display().to_string();
    let args = [
        "--spawn",
        &spawn,
        "--scenario",
        "restart",
        "--restarts",
        "2",
        "--restart-every",
        "1s",
        "--restart-load",
        "2",
        "--restart-ws",
        "0",
        "--restart-sse",
        "0",
        "--health",
        "/deaf.py",
        "--ping",
        "/deaf.py",
        // Less than one READY timeout (30 s): both restarts fit only if
        // neither waits for it.
        "--limit",
        "20s",
        "--json",
        &json_s,
    ];
    let out = drill(&args).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let report = read_report(&json);
    let restarts = report["restarts"].as_array().unwrap();
    assert_eq!(restarts.len(), 2, "{}", text(&out));
    for r in restarts {
        assert!(
            r["failure"]
                .as_str()
                .is_some_and(|f| f.contains("the signal started no restart")),
            "{r}: {}",
            text(&out)
        );
    }
    assert_eq!(report["counts"]["restart_failed"], 2, "{}", text(&out));
    assert!(
        report["counts"]["ok"].as_u64().unwrap() > 0,
        "{}",
        text(&out)
    );
}

// A service that ignores SIGTERM (Python's http.server, not lameduck): the
// drill's limit bounds the run, it reports `no_exit`, and the service's
// group is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_ignores_the_stop_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().display().to_string();
    // An ignored signal stays ignored across exec.
    let spawn = format!(
        "sh -c \"trap '' TERM; exec python3 -m http.server {{port}} --bind 127.0.0.1 --directory {marker}\""
    );
    let json = dir.path().join("report.json");
    let json_s = json.display().to_string();
    let args = [
        "--spawn",
        &spawn,
        "--scenario",
        "load",
        "--health",
        "/",
        "--ping",
        "/",
        "--load-clients",
        "2",
        "--before",
        "1s",
        "--limit",
        "5s",
        "--json",
        &json_s,
    ];
    let out = drill(&args).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(!running(&marker), "the service was left running");
    let report = read_report(&json);
    assert_eq!(report["counts"]["no_exit"], 1, "{report}");
    assert!(report["exit_at_ms"].is_null(), "{report}");
    assert!(report["counts"]["ok"].as_u64().unwrap() > 0, "{report}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("FAIL: no_exit 1"), "{stdout}");
}

// The drill killed with SIGKILL mid-run (nothing of it runs to clean up):
// its watchdog still kills the service it spawned, successors included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_drill_leaves_no_service() {
    let dir = tempfile::tempdir().unwrap();
    let (serve, journal) = serve_command(dir.path());
    let mut drill = tokio::process::Command::new(BIN)
        .args(["drill", "--spawn", &serve, "--scenario", "restart"])
        .args(["--restarts", "100", "--restart-every", "300ms"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let services = || processes(&format!("{BIN} serve "), &journal);
    // Should this test fail, what the drill left is killed all the same.
    struct Strays<F: Fn() -> Vec<u32>>(F);
    impl<F: Fn() -> Vec<u32>> Drop for Strays<F> {
        fn drop(&mut self) {
            for pid in (self.0)() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    let _strays = Strays(services);
    // Serving, then upgraded at least once (a second process seen).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 2 {
        assert!(std::time::Instant::now() < deadline, "no upgrade seen");
        seen.extend(services());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drill.start_kill().unwrap();
    drill.wait().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !services().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "left running: {:?}",
            services()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// Ctrl-C (SIGINT) mid-drill: the drill ends early, prints and writes the
// report of what happened, kills the service, and exits 130.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_ends_the_drill_with_a_report() {
    let dir = tempfile::tempdir().unwrap();
    let (serve, journal) = serve_command(dir.path());
    let json = dir.path().join("report.json");
    let drill = tokio::process::Command::new(BIN)
        .args(["drill", "--spawn", &serve, "--scenario", "load,websocket"])
        .args([
            "--load-clients",
            "4",
            "--ws-clients",
            "4",
            "--before",
            "60s",
        ])
        .arg("--json")
        .arg(&json)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let services = || processes(&format!("{BIN} serve "), &journal);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while services().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the service never ran"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Some traffic first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = nix::unistd::Pid::from_raw(drill.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let out = tokio::time::timeout(Duration::from_secs(30), drill.wait_with_output())
        .await
        .expect("the drill ends soon after Ctrl-C")
        .unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("note: interrupted at"), "{stdout}");
    assert!(
        stdout.contains("SIGTERM not sent: the drill was interrupted"),
        "{stdout}"
    );
    let report = read_report(&json);
    assert!(report["counts"]["ok"].as_u64().unwrap() > 0, "{report}");
    assert!(
        report["counts"]["ws_echoed"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert_eq!(report["counts"]["no_exit"], 0, "{report}");
    assert!(services().is_empty(), "the service was left running");
}

/// Pids of running processes whose command line starts with `prefix` and
/// contains `marker`.
fn processes(prefix: &str, marker: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (cmdline.starts_with(prefix) && cmdline.contains(marker)).then_some(pid)
        })
        .collect()
}

/// Whether a process whose command line contains `marker` is running.
fn running(marker: &str) -> bool {
    !processes("", marker).is_empty()
}

// Bad arguments get a clear error and a non-zero exit, and leave no
// process behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_are_clear_errors() {
    let out = drill(&["--spawn", "true", "--scenario", "stampede"]).await;
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(
        text(&out).contains("unknown scenario \"stampede\""),
        "{}",
        text(&out)
    );

    let out = drill(&["--scenario", "load"]).await;
    assert_eq!(out.status.code(), Some(64), "no target: {}", text(&out));

    let out = drill(&["--url", "http://127.0.0.1:1"]).await;
    assert_eq!(
        out.status.code(),
        Some(64),
        "--url without --pid or --trigger: {}",
        text(&out)
    );

    let out = drill(&[
        "--url",
        "http://127.0.0.1:1",
        "--trigger",
        "true",
        "--scenario",
        "restart",
    ])
    .await;
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(
        text(&out).contains("needs --pid or --restart-trigger"),
        "{}",
        text(&out)
    );
    let out = drill(&["--spawn", "true", "--restart-signal", "WAKE"]).await;
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(
        text(&out).contains("unknown signal \"WAKE\""),
        "{}",
        text(&out)
    );

    // More sockets than the hard open-file limit allows: refused up front,
    // not counted as refusals by the service.
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 300 && exec {BIN} drill --spawn 'sleep 30.5' --scenario idle --idle-ws 500"
        ))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("hold up to 764 sockets but this process may open only 300 files"),
        "{}",
        text(&out)
    );
    assert!(!running("sleep 30.5"), "nothing was started");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = drill(&["--spawn", "sleep 30", "--port", &port]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("port {port} is not free")),
        "{}",
        text(&out)
    );

    // Never healthy: the drill gives up and kills what it started.
    let out = drill(&["--spawn", "sleep 31.25", "--startup", "1s"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("never answered 200 on /ping"),
        "{}",
        text(&out)
    );
    assert!(
        !running("sleep 31.25"),
        "the spawned command was left running"
    );

    // Exits before it is healthy; what it said is in --service-log.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("service.log").display().to_string();
    let out = drill(&[
        "--spawn",
        "sh -c 'echo cannot bind >&2; exit 7'",
        "--startup",
        "5s",
        "--service-log",
        &log,
    ])
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "exited before it was healthy (exit code 7); its output is in {log}"
        )),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "cannot bind\n");
}

// The drill speaks TLS and HTTP/2: every scenario (and a restart) against
// `lameduck serve --tls-cert --tls-key`, the load over h2 (by ALPN) and
// the rest over HTTPS and wss, trusting the service's certificate with
// --ca, passes with nothing allowed; the HTTP/2 connections end by GOAWAY;
// the report names the protocols. Idle connections closed without
// close_notify would count as `idle_reset`, so this also checks every close
// of the drain over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_scenarios_pass_over_tls_and_http2() {
    let dir = tempfile::tempdir().unwrap();
    let lameduck_test_support::TestCert {
        cert: cert_path,
        key: key_path,
        ..
    } = lameduck_test_support::TestCert::new_in(dir.path());
    let json = dir.path().join("report.json");
    let (serve, journal) = serve_command(dir.path());
    let serve = format!(
        "{serve} --tls-cert {} --tls-key {}",
        cert_path.display(),
        key_path.display()
    );
    let (json_s, ca) = (json.display().to_string(), cert_path.display().to_string());
    let mut args = vec![
        "--spawn",
        &serve,
        "--tls",
        "--http2",
        "--ca",
        &ca,
        "--scenario",
        "all",
        "--restarts",
        "1",
        "--after",
        "1s",
        "--json",
        &json_s,
    ];
    args.extend_from_slice(SMALL);
    args.extend_from_slice(RESTART_SMALL);
    let out = drill(&args).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!running(&journal), "a lameduck process was left running");
    let report = read_report(&json);
    assert_eq!(report["passed"], true, "{}", text(&out));
    let protocol = report["protocol"].as_str().unwrap();
    assert!(protocol.contains("HTTP/2 over TLS"), "{protocol}");
    let count = |name: &str| report["counts"][name].as_u64().unwrap_or(0);
    assert!(count("h2_goaway") > 0, "{}", text(&out));
    assert!(count("ok") > 100, "{}", text(&out));
    assert!(count("idle_closed") > 0, "{}", text(&out));
    assert_eq!(count("idle_reset"), 0, "{}", text(&out));
}

// A running TLS service reached by `--url https://localhost:PORT`, with
// `--insecure` (no CA given: any certificate is accepted, the connection
// is still TLS), stopped with `--pid`: the load passes; without --ca or
// --insecure the drill refuses to start, saying what it needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_https_service_is_drilled_by_url() {
    let dir = tempfile::tempdir().unwrap();
    let lameduck_test_support::TestCert {
        cert: cert_path,
        key: key_path,
        ..
    } = lameduck_test_support::TestCert::new_in(dir.path());
    let server = lameduck_test_support::Child::serve(
        BIN,
        &[
            "--tls-cert",
            cert_path.to_str().unwrap(),
            "--tls-key",
            key_path.to_str().unwrap(),
        ],
    );
    let url = format!("https://localhost:{}", server.addr.port());
    let pid = server.pid().to_string();
    let out = drill(&["--url", &url, "--pid", &pid, "--scenario", "load"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("--ca FILE"), "{}", text(&out));

    let json = dir.path().join("report.json");
    let json_s = json.display().to_string();
    let out = drill(&[
        "--url",
        &url,
        "--insecure",
        "--pid",
        &pid,
        "--scenario",
        "load",
        "--load-clients",
        "4",
        "--json",
        &json_s,
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = read_report(&json);
    assert_eq!(report["passed"], true, "{}", text(&out));
    assert!(
        report["counts"]["ok"].as_u64().unwrap() > 10,
        "{}",
        text(&out)
    );
    assert!(report["target"].as_str().unwrap().starts_with("https://"));
}
