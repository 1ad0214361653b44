//! Restarts without a gap, on the real binary: SIGHUP upgrades under load,
//! broken upgrades that leave the old process serving, systemd socket
//! activation and sd_notify. Loopback only; every wait bounded; every
//! process (successors included) killed at the end.

use std::{
    collections::HashSet,
    net::SocketAddr,
    os::unix::net::UnixDatagram,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use lameduck_test_support::{Child, KeepAlive, Outcome, get, is_alive, raise_fd_limit, wait_gone};
use nix::{
    sys::signal::{Signal::SIGHUP, Signal::SIGTERM, kill},
    unistd::Pid,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};
use tokio_tungstenite::{
    client_async,
    tungstenite::{Message, protocol::frame::coding::CloseCode},
};

const BIN: &str = env!("CARGO_BIN_EXE_lameduck");
const SEC: Duration = Duration::from_secs(1);

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    kill(Pid::from_raw(pid as i32), sig).expect("signal");
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    refused: AtomicU64,
    lost: AtomicU64,
    problems: Mutex<Vec<String>>,
}

impl Tally {
    fn problem(&self, what: String) {
        self.problems.lock().unwrap().push(what);
    }
}

/// A keep-alive client looping `/ping`; reconnects when told to close.
async fn pinger(addr: SocketAddr, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut conn: Option<KeepAlive> = None;
    while !stop.load(Ordering::Relaxed) {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match KeepAlive::connect(addr).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    tally.refused.fetch_add(1, Ordering::Relaxed);
                    tally.problem(format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        match c.get("/ping", 10 * SEC).await {
            Outcome::Ok(res) => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
                if res.status != 200 {
                    tally.problem(format!("/ping answered {}", res.status));
                }
                if res.closes() {
                    conn = None;
                }
            }
            // Closed before we wrote: the request never left; retry it.
            Outcome::NotSent(_) => conn = None,
            Outcome::Lost(why) | Outcome::Cut(why) => {
                tally.lost.fetch_add(1, Ordering::Relaxed);
                tally.problem(format!("lost: {why}"));
                conn = None;
            }
        }
    }
}

/// A WebSocket client sending numbered messages, one at a time, each
/// checked against its echo. On a close it checks the code is 1012,
/// reconnects and resends what was not echoed; the new connection must come
/// from another process.
async fn ws_client(addr: SocketAddr, id: usize, stop: Arc<AtomicBool>, tally: Arc<Tally>) -> usize {
    let mut next = 0u64;
    let mut reconnects = 0;
    let mut last_pid: Option<String> = None;
    'connect: while !stop.load(Ordering::Relaxed) {
        let tcp = match TcpStream::connect(addr).await {
            Ok(t) => t,
            Err(e) => {
                tally.refused.fetch_add(1, Ordering::Relaxed);
                tally.problem(format!("ws {id} connect: {e}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let (mut ws, response) =
            match timeout(10 * SEC, client_async(format!("ws://{addr}/ws"), tcp)).await {
                Ok(Ok(pair)) => pair,
                other => {
                    tally.problem(format!("ws {id} handshake: {other:?}"));
                    continue;
                }
            };
        let pid = response
            .headers()
            .get("x-lameduck-pid")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if let (Some(old), Some(new)) = (&last_pid, &pid) {
            if old == new {
                tally.problem(format!("ws {id} reconnected to the same process {new}"));
            }
        }
        last_pid = pid;
        while !stop.load(Ordering::Relaxed) {
            let text = format!("{id}-{next}");
            if ws.send(Message::text(text.clone())).await.is_err() {
                reconnects += 1;
                continue 'connect;
            }
            loop {
                match timeout(10 * SEC, ws.next()).await {
                    Ok(Some(Ok(Message::Text(echo)))) => {
                        if echo.as_str() != text {
                            tally.problem(format!("ws {id}: sent {text}, got {echo}"));
                        }
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                        next += 1;
                        break;
                    }
                    Ok(Some(Ok(Message::Close(frame)))) => {
                        let code = frame.map(|f| f.code);
                        if code != Some(CloseCode::Restart) {
                            tally.problem(format!("ws {id}: close code {code:?}, expected 1012"));
                        }
                        let _ = timeout(2 * SEC, ws.close(None)).await;
                        reconnects += 1;
                        continue 'connect;
                    }
                    Ok(Some(Ok(_))) => {}
                    other => {
                        tally.problem(format!(
                            "ws {id}: connection ended without a close: {other:?}"
                        ));
                        reconnects += 1;
                        continue 'connect;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = timeout(2 * SEC, ws.close(None)).await;
    }
    reconnects
}

/// An SSE client that reconnects with `Last-Event-ID` when its stream ends
/// and checks that the ids it sees have no gap.
async fn sse_client(
    addr: SocketAddr,
    id: usize,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> usize {
    let mut last = 0u64;
    let mut reconnects = 0;
    while !stop.load(Ordering::Relaxed) {
        let mut tcp = match TcpStream::connect(addr).await {
            Ok(t) => t,
            Err(e) => {
                tally.refused.fetch_add(1, Ordering::Relaxed);
                tally.problem(format!("sse {id} connect: {e}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let request = format!(
            "GET /events?interval_ms=20 HTTP/1.1\r\nHost: t\r\nLast-Event-ID: {last}\r\n\r\n"
        );
        if tcp.write_all(request.as_bytes()).await.is_err() {
            continue;
        }
        let mut pending = String::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = match timeout(10 * SEC, tcp.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                other => {
                    tally.problem(format!("sse {id}: read {other:?}"));
                    0
                }
            };
            if n == 0 || stop.load(Ordering::Relaxed) {
                break;
            }
            pending.push_str(&String::from_utf8_lossy(&buf[..n]));
            while let Some(end) = pending.find('\n') {
                let line: String = pending.drain(..=end).collect();
                if let Some(v) = line.trim_end().strip_prefix("id: ") {
                    match v.parse::<u64>() {
                        Ok(n) if n == last + 1 => {
                            last = n;
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => tally.problem(format!("sse {id}: id {v} after {last}")),
                    }
                }
            }
        }
        reconnects += 1;
    }
    reconnects
}

/// 32 keep-alive `/ping` loopers, 50 WebSocket clients and 20 SSE clients
/// run while the service is upgraded 5 times in a row (SIGHUP to the current
/// process, each once the previous upgrade has completed): no connection
/// refused, no request lost, every WebSocket closed with 1012 and
/// reconnected to the new process, no SSE event id missed, and every old
/// process gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_upgrades_under_load_lose_nothing() {
    raise_fd_limit(8192);
    // A short probation keeps five upgrades in a row quick.
    let server = Child::serve(
        BIN,
        &["--upgrade-timeout", "30s", "--upgrade-probation", "1s"],
    );
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());

    let pingers: Vec<_> = (0..32)
        .map(|_| tokio::spawn(pinger(addr, stop.clone(), tally.clone())))
        .collect();
    let sockets: Vec<_> = (0..50)
        .map(|i| tokio::spawn(ws_client(addr, i, stop.clone(), tally.clone())))
        .collect();
    let streams: Vec<_> = (0..20)
        .map(|i| tokio::spawn(sse_client(addr, i, stop.clone(), tally.clone())))
        .collect();
    tokio::time::sleep(SEC).await;

    let mut pids = vec![server.pid()];
    for round in 0..5 {
        server.upgrade(&mut pids, 30 * SEC);
        // Traffic on the new process before the next round.
        let before = tally.ok.load(Ordering::Relaxed);
        let deadline = Instant::now() + 10 * SEC;
        while tally.ok.load(Ordering::Relaxed) < before + 200 {
            assert!(
                Instant::now() < deadline,
                "no traffic after upgrade {round}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for p in pingers {
        timeout(20 * SEC, p).await.expect("pinger stops").unwrap();
    }
    let mut ws_reconnects = Vec::new();
    for s in sockets {
        ws_reconnects.push(
            timeout(20 * SEC, s)
                .await
                .expect("ws client stops")
                .unwrap(),
        );
    }
    let mut sse_reconnects = Vec::new();
    for s in streams {
        sse_reconnects.push(
            timeout(20 * SEC, s)
                .await
                .expect("sse client stops")
                .unwrap(),
        );
    }

    eprintln!(
        "upgrades {pids:?}: {} ok (pings, echoes, events), ws reconnects {ws_reconnects:?}, sse reconnects {sse_reconnects:?}",
        tally.ok.load(Ordering::Relaxed)
    );
    let problems = tally.problems.lock().unwrap().clone();
    assert!(
        problems.is_empty(),
        "{} problems, first: {:#?}",
        problems.len(),
        &problems[..problems.len().min(20)]
    );
    assert_eq!(tally.refused.load(Ordering::Relaxed), 0);
    assert_eq!(tally.lost.load(Ordering::Relaxed), 0);
    // Every WebSocket and SSE client was moved by every upgrade.
    assert!(
        ws_reconnects.iter().all(|&n| n >= 5),
        "ws reconnects {ws_reconnects:?}"
    );
    assert!(
        sse_reconnects.iter().all(|&n| n >= 5),
        "sse reconnects {sse_reconnects:?}"
    );
    let distinct: HashSet<u32> = pids.iter().copied().collect();
    assert_eq!(distinct.len(), 6, "six processes in turn: {pids:?}");
    for &old in &pids[..5] {
        assert!(!is_alive(old), "old process {old} still running");
    }
    let upgraded = server.events("upgrade.complete").len();
    assert_eq!(upgraded, 5);
    let restarts = server
        .events("shutdown.begin")
        .iter()
        .filter(|e| e["reason"] == "restart")
        .count();
    assert_eq!(restarts, 5, "each old process drained as a restart");
}

/// A new binary that exits at once, then one that never reports ready: the
/// old process kills what it started, logs why, and serves throughout
/// without a single failed request; a good upgrade afterwards still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_upgrades_keep_the_old_process_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mode = dir.path().join("mode");
    let script = dir.path().join("next-lameduck");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncase $(cat {mode}) in\n  exit) exit 3 ;;\n  hang) exec sleep 600 ;;\n  *) exec {BIN} \"$@\" ;;\nesac\n",
            mode = mode.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let script_arg = script.display().to_string();
    let server = Child::serve(
        BIN,
        &["--upgrade-binary", &script_arg, "--upgrade-timeout", "2s"],
    );
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let pingers: Vec<_> = (0..8)
        .map(|_| tokio::spawn(pinger(addr, stop.clone(), tally.clone())))
        .collect();

    for (i, broken) in ["exit", "hang"].into_iter().enumerate() {
        std::fs::write(&mode, broken).unwrap();
        signal(server.pid(), SIGHUP);
        let deadline = Instant::now() + 20 * SEC;
        while server.events("upgrade.failed").len() < i + 1 {
            assert!(
                Instant::now() < deadline,
                "{broken}: no upgrade.failed; logs {:#?}",
                server.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let failed = &server.events("upgrade.failed")[i];
        let why = failed["error"].as_str().unwrap_or_default().to_owned();
        match broken {
            "exit" => assert!(why.contains("exited"), "{why}"),
            _ => assert!(why.contains("not ready"), "{why}"),
        }
        assert!(is_alive(server.pid()));
        assert_eq!(get(addr, "/ping", 5 * SEC).await.unwrap().status, 200);
    }
    // The hung successor was killed.
    assert!(
        server
            .events("upgrade.started")
            .iter()
            .filter_map(|e| e["pid"].as_u64())
            .all(|p| !is_alive(p as u32))
    );

    // A second SIGHUP while one is under way is ignored.
    std::fs::write(&mode, "hang").unwrap();
    signal(server.pid(), SIGHUP);
    tokio::time::sleep(Duration::from_millis(200)).await;
    signal(server.pid(), SIGHUP);
    let ignored =
        tokio::task::block_in_place(|| server.wait_for_event("upgrade.ignored", 10 * SEC));
    assert!(ignored.is_some(), "second SIGHUP not reported as ignored");
    let deadline = Instant::now() + 20 * SEC;
    while server.events("upgrade.failed").len() < 3 {
        assert!(Instant::now() < deadline, "third upgrade did not end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    std::fs::write(&mode, "good").unwrap();
    signal(server.pid(), SIGHUP);
    let new = server.wait_new_pid(&[server.pid()], 30 * SEC);
    wait_gone(server.pid(), 30 * SEC);
    let res = get(addr, "/livez", 5 * SEC).await.unwrap();
    assert_eq!(res.json()["pid"].as_u64(), Some(u64::from(new)));

    stop.store(true, Ordering::Relaxed);
    for p in pingers {
        timeout(20 * SEC, p).await.unwrap().unwrap();
    }
    let problems = tally.problems.lock().unwrap().clone();
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(tally.ok.load(Ordering::Relaxed) > 0);
}

/// Starts the binary with `listener` as fd 3 and `LISTEN_FDS=1`, the way
/// systemd does; `listen_pid` is what `LISTEN_PID` says (`$$` is the
/// process itself: the shell's pid, kept by `exec`).
fn socket_activated(
    listener: std::net::TcpListener,
    listen_pid: &str,
    extra_env: &[(&str, String)],
) -> Command {
    use command_fds::{CommandFdExt, FdMapping};
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(format!("LISTEN_PID={listen_pid} exec \"$0\" \"$@\""))
        .arg(BIN)
        .args(["serve", "--listen", "127.0.0.1:1", "--log-format", "json"])
        .args(["--admin-listen", "127.0.0.1:0"])
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "service");
    for (k, v) in extra_env {
        command.env(k, v);
    }
    command
        .fd_mappings(vec![FdMapping {
            parent_fd: listener.into(),
            child_fd: 3,
        }])
        .unwrap();
    command
}

/// Socket activation: the service serves on the socket it was given (not on
/// `--listen`); a `LISTEN_PID` naming another process is refused with exit
/// 64.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_activation_serves_on_the_inherited_socket() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let journal = format!("sqlite:{}", dir.path().join("jobs.db").display());
    let mut command = socket_activated(listener, "$$", &[]);
    command.args(["--journal", &journal]);
    let server = Child::spawn(command, Some(dir));
    assert_eq!(server.addr, addr, "serves on the inherited socket");
    let res = get(addr, "/livez", 5 * SEC).await.unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["pid"].as_u64(), Some(u64::from(server.pid())));

    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = socket_activated(other, "1", &[]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("LISTEN_PID"));

    let out = Command::new(BIN)
        .args([
            "serve",
            "--log-format",
            "json",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .env("LISTEN_FDS", "zero")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

/// sd_notify: READY=1 arrives once the listener serves; STOPPING=1 when the
/// drain starts on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sd_notify_reports_ready_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(10 * SEC)).unwrap();
    let (mut command, journal_dir) = Child::serve_command(BIN, &[]);
    command.env("NOTIFY_SOCKET", &path);
    let mut server = Child::spawn(command, journal_dir);

    let mut buf = [0u8; 1024];
    let n = socket.recv(&mut buf).expect("a READY message");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg}");
    assert!(msg.contains(&format!("MAINPID={}", server.pid())), "{msg}");
    // Ready means serving.
    assert_eq!(
        get(server.addr, "/ping", 5 * SEC).await.unwrap().status,
        200
    );

    server.signal(SIGTERM);
    let deadline = Instant::now() + 10 * SEC;
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|m: &String| m.lines().any(|l| l == "STOPPING=1"))
    {
        assert!(Instant::now() < deadline, "no STOPPING=1; got {seen:?}");
        let n = socket.recv(&mut buf).expect("a STOPPING message");
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let status = server.expect_exit(10 * SEC);
    assert_eq!(status.code(), Some(0));
}

/// The admin socket is handed over with the service's: `/metrics` polled
/// every 50 ms through 3 SIGHUP upgrades is never refused or reset, and
/// once each old process is gone the successor answers on the same address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_socket_is_handed_over_on_upgrades() {
    let server = Child::serve(BIN, &["--drain-timeout", "5s", "--upgrade-probation", "1s"]);
    let admin = server.admin_addr.expect("admin address");
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let poller = {
        let (stop, tally) = (stop.clone(), tally.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match get(admin, "/metrics", 5 * SEC).await {
                    Ok(res) if res.status == 200 => {
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(res) => tally.problem(format!("/metrics answered {}", res.status)),
                    Err(e) => {
                        tally.lost.fetch_add(1, Ordering::Relaxed);
                        tally.problem(format!("/metrics: {e}"));
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let mut pids = vec![server.pid()];
    // Waits until the poller has had `n` more answers (10 s at most).
    let answered = |n: u64| {
        let target = tally.ok.load(Ordering::Relaxed) + n;
        let deadline = Instant::now() + 10 * SEC;
        while tally.ok.load(Ordering::Relaxed) < target && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    for round in 0..3 {
        tokio::task::block_in_place(|| answered(5));
        server.upgrade(&mut pids, 30 * SEC);
        // Only the successor holds the socket now.
        let res = get(admin, "/metrics", 5 * SEC)
            .await
            .unwrap_or_else(|e| panic!("round {round}: the successor does not answer: {e}"));
        let text = String::from_utf8_lossy(&res.body).into_owned();
        assert!(
            text.contains("lameduck_phase{phase=\"serving\"} 1"),
            "round {round}: {text}"
        );
    }
    tokio::task::block_in_place(|| answered(5));
    stop.store(true, Ordering::Relaxed);
    timeout(20 * SEC, poller).await.unwrap().unwrap();
    let problems = tally.problems.lock().unwrap().clone();
    assert!(problems.is_empty(), "{problems:#?}");
    let ok = tally.ok.load(Ordering::Relaxed);
    assert!(ok >= 20, "only {ok} scrapes answered");
    signal(*pids.last().unwrap(), SIGTERM);
    wait_gone(*pids.last().unwrap(), 30 * SEC);
}

/// systemd may pass the admin socket too: by name (`LISTEN_FDNAMES`, in
/// any order), the service and the admin plane each serve on their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_activation_passes_the_admin_socket_by_name() {
    use command_fds::{CommandFdExt, FdMapping};
    let service = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (service_addr, admin_addr) = (service.local_addr().unwrap(), admin.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let journal = format!("sqlite:{}", dir.path().join("jobs.db").display());
    let mut command = Command::new(BIN);
    command
        .args(["serve", "--listen", "127.0.0.1:1", "--log-format", "json"])
        .args(["--admin-listen", "127.0.0.1:1", "--journal", &journal])
        .env("LISTEN_FDS", "2")
        .env("LISTEN_FDNAMES", "admin:service")
        .fd_mappings(vec![
            FdMapping {
                parent_fd: admin.into(),
                child_fd: 3,
            },
            FdMapping {
                parent_fd: service.into(),
                child_fd: 4,
            },
        ])
        .unwrap();
    let server = Child::spawn(command, Some(dir));
    assert_eq!(server.addr, service_addr);
    assert_eq!(server.admin_addr, Some(admin_addr));
    let res = get(service_addr, "/ping", 5 * SEC).await.unwrap();
    assert_eq!(res.body, b"pong");
    let res = get(admin_addr, "/metrics", 5 * SEC).await.unwrap();
    assert_eq!(res.status, 200);
    assert!(String::from_utf8_lossy(&res.body).contains("lameduck_phase"));
}

/// A successor that reports ready and exits a second later without serving
/// (a Python stand-in for a binary that crashes just after its start).
fn crashing_successor(dir: &std::path::Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("crashes-after-ready.py");
    std::fs::write(
        &path,
        "#!/usr/bin/env python3\n\
         import os, socket, sys, time\n\
         s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
         s.sendto(f'READY=1\\nMAINPID={os.getpid()}\\n'.encode(), os.environ['LAMEDUCK_UPGRADE_READY'])\n\
         time.sleep(1)\n\
         sys.exit(1)\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

/// Requests on new connections (each one accepted from the listening
/// socket's queue), looping until `stop`; counts answers and failures.
async fn connector(addr: SocketAddr, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    while !stop.load(Ordering::Relaxed) {
        match get(addr, "/ping", 5 * SEC).await {
            Ok(res) if res.status == 200 => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(res) => tally.problem(format!("/ping answered {}", res.status)),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                tally.refused.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tally.lost.fetch_add(1, Ordering::Relaxed);
                tally.problem(format!("/ping: {e}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// SIGHUP to a server whose successor crashes a second after its READY,
/// under new-connection load for `secs`; returns what the clients saw.
async fn upgrade_to_a_crash(server: &Child, secs: u64) -> Arc<Tally> {
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..8)
        .map(|_| tokio::spawn(connector(server.addr, stop.clone(), tally.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(server.pid(), SIGHUP);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        timeout(20 * SEC, c).await.unwrap().unwrap();
    }
    tally
}

/// Upgrade probation: a successor that reports ready and exits a second
/// later costs nothing: the old process kept serving beside it, rolls the
/// upgrade back (`upgrade.rolled_back`), never drains, and is ready and
/// serving after it (0 refused, 0 lost over 6 s of new connections). With
/// no probation the same crash takes the service down: connections are
/// refused once both processes are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_that_crashes_after_ready_is_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let successor = crashing_successor(dir.path());

    let mut server = Child::serve(BIN, &["--upgrade-binary", &successor]);
    let tally = upgrade_to_a_crash(&server, 6).await;
    let problems = tally.problems.lock().unwrap().clone();
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(tally.refused.load(Ordering::Relaxed), 0);
    assert_eq!(tally.lost.load(Ordering::Relaxed), 0);
    assert!(tally.ok.load(Ordering::Relaxed) > 100);
    let rolled = server.expect_event("upgrade.rolled_back", 20 * SEC);
    assert!(
        rolled["error"]
            .as_str()
            .is_some_and(|e| e.contains("exit status: 1")),
        "{rolled}"
    );
    assert_eq!(
        server.events("upgrade.ready").len(),
        1,
        "the successor was ready"
    );
    assert!(
        server.events("shutdown.begin").is_empty(),
        "the old process never drained"
    );
    let ready = get(server.addr, "/readyz", 5 * SEC).await.unwrap();
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["pid"].as_u64(), Some(u64::from(server.pid())));
    server.signal(SIGTERM);
    assert_eq!(server.expect_exit(30 * SEC).code(), Some(0));

    let server = Child::serve(
        BIN,
        &["--upgrade-binary", &successor, "--upgrade-probation", "0s"],
    );
    let tally = upgrade_to_a_crash(&server, 6).await;
    assert!(
        tally.refused.load(Ordering::Relaxed) > 0,
        "without probation the crash should leave nothing listening"
    );
}

/// Upgrades that come faster than drains end do not pile processes up:
/// with two older generations still draining (each held by a slow
/// request), a third SIGHUP is refused (`upgrade.ignored`, saying why),
/// and the newest process keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_do_not_pile_up_generations() {
    let server = Child::serve(
        BIN,
        &["--upgrade-probation", "0s", "--drain-timeout", "30s"],
    );
    let addr = server.addr;
    let mut pids = vec![server.pid()];
    let mut slow = Vec::new();
    for _ in 0..2 {
        // A connection of the generation serving now (the only one that
        // accepts), which a slow request then keeps draining for 20 s.
        // Until the predecessor has closed its listener, the kernel may
        // still give it a new connection (it serves what it accepted):
        // connect again until the current generation answers.
        let current = *pids.last().unwrap();
        let mut conn = None;
        for _ in 0..50 {
            let mut c = KeepAlive::connect(addr).await.unwrap();
            match c.get("/livez", 10 * SEC).await {
                Outcome::Ok(res) if res.json()["pid"].as_u64() == Some(u64::from(current)) => {
                    conn = Some(c);
                    break;
                }
                Outcome::Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                other => panic!("/livez: {other:?}"),
            }
        }
        let mut conn = conn.expect("a connection to the current generation within 5 s");
        slow.push(tokio::spawn(async move {
            conn.get("/slow?ms=20000", 40 * SEC).await
        }));
        tokio::time::sleep(Duration::from_millis(300)).await;
        signal(current, SIGHUP);
        let new = server.wait_new_pid(&pids, 30 * SEC);
        pids.push(new);
    }
    assert!(is_alive(pids[0]) && is_alive(pids[1]), "{pids:?}");

    signal(pids[2], SIGHUP);
    let ignored = server.expect_event("upgrade.ignored", 10 * SEC);
    assert!(
        ignored["reason"]
            .as_str()
            .is_some_and(|r| r.contains("2 older generations are still draining")),
        "{ignored}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.listening_pids().len(), 3, "no fourth process");
    let ready = get(addr, "/readyz", 5 * SEC).await.unwrap();
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["pid"].as_u64(), Some(u64::from(pids[2])));
    for s in slow {
        s.abort();
    }
}
