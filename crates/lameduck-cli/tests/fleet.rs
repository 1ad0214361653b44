//! A fleet behind a real load balancer: three `lameduck serve` instances
//! behind Debian's HAProxy, replaced one by one as Kubernetes does it,
//! while keep-alive HTTP clients, WebSocket echo clients and SSE clients
//! talk only to HAProxy. Nothing a client sees may fail, and the spread
//! drain turns each instance's reconnect storm into a trickle. Loopback
//! only; every wait bounded; HAProxy and every instance killed at the end.

use std::{
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use lameduck_test_support::{Child, Haproxy, KeepAlive, Outcome, free_port, raise_fd_limit};
use nix::sys::signal::Signal::SIGTERM;
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
/// Client counts: 24 keep-alive HTTP, 300 WebSocket and 60 SSE clients,
/// or as `LAMEDUCK_FLEET_CLIENTS=HTTP,WS,SSE` says (for measuring with
/// more than a test needs: `BENCHMARKS.md`).
fn clients() -> (usize, usize, usize) {
    let Ok(spec) = std::env::var("LAMEDUCK_FLEET_CLIENTS") else {
        return (24, 300, 60);
    };
    let n: Vec<usize> = spec
        .split(',')
        .map(|n| {
            n.trim()
                .parse()
                .expect("LAMEDUCK_FLEET_CLIENTS=HTTP,WS,SSE")
        })
        .collect();
    assert_eq!(n.len(), 3, "LAMEDUCK_FLEET_CLIENTS=HTTP,WS,SSE");
    (n[0], n[1], n[2])
}

/// What the clients saw.
#[derive(Default)]
struct Seen {
    ok: AtomicU64,
    http_5xx: AtomicU64,
    lost: AtomicU64,
    ws_echoed: AtomicU64,
    ws_closed: AtomicU64,
    ws_abrupt: AtomicU64,
    sse_events: AtomicU64,
    sse_clean: AtomicU64,
    sse_abrupt: AtomicU64,
    sse_gaps: AtomicU64,
    /// When each WebSocket or SSE reconnect happened, since the start.
    reconnects: Mutex<Vec<Duration>>,
    problems: Mutex<Vec<String>>,
    start: Option<Instant>,
}

impl Seen {
    fn problem(&self, what: String) {
        let mut problems = self.problems.lock().unwrap();
        if problems.len() < 50 {
            problems.push(what);
        }
    }

    fn reconnected(&self) {
        let at = self.start.expect("start").elapsed();
        self.reconnects.lock().unwrap().push(at);
    }

    /// The most reconnects in one 100 ms slice.
    fn reconnect_peak(&self) -> usize {
        self.reconnect_peak_within(Duration::ZERO, Duration::MAX)
    }

    /// The most reconnects in one 100 ms slice from `from` to `to`.
    fn reconnect_peak_within(&self, from: Duration, to: Duration) -> usize {
        let mut slices = std::collections::HashMap::<u128, usize>::new();
        for t in self.reconnects.lock().unwrap().iter() {
            if *t >= from && *t < to {
                *slices.entry(t.as_millis() / 100).or_default() += 1;
            }
        }
        slices.values().copied().max().unwrap_or(0)
    }
}

async fn http_client(front: std::net::SocketAddr, stop: Arc<AtomicBool>, seen: Arc<Seen>) {
    let mut conn: Option<KeepAlive> = None;
    while !stop.load(Ordering::Relaxed) {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match KeepAlive::connect(front).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    seen.problem(format!("http connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        match c.get("/ping", 10 * SEC).await {
            Outcome::Ok(res) => {
                if res.status >= 500 {
                    seen.http_5xx.fetch_add(1, Ordering::Relaxed);
                    seen.problem(format!("/ping answered {}", res.status));
                } else {
                    seen.ok.fetch_add(1, Ordering::Relaxed);
                }
                if res.closes() {
                    conn = None;
                }
            }
            Outcome::NotSent(_) => conn = None,
            Outcome::Lost(why) | Outcome::Cut(why) => {
                seen.lost.fetch_add(1, Ordering::Relaxed);
                seen.problem(format!("http lost: {why}"));
                conn = None;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Numbered messages, one at a time, each checked against its echo; on
/// the server's Close, reconnects at once and resends what was not echoed.
async fn ws_client(front: std::net::SocketAddr, id: usize, stop: Arc<AtomicBool>, seen: Arc<Seen>) {
    let mut next = 0u64;
    let mut had_session = false;
    'connect: while !stop.load(Ordering::Relaxed) {
        let Ok(tcp) = TcpStream::connect(front).await else {
            seen.problem(format!("ws {id}: connect refused by haproxy"));
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let mut ws = match timeout(10 * SEC, client_async(format!("ws://{front}/ws"), tcp)).await {
            Ok(Ok((ws, _))) => ws,
            other => {
                seen.problem(format!("ws {id} handshake: {other:?}"));
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        if had_session {
            seen.reconnected();
        }
        had_session = true;
        while !stop.load(Ordering::Relaxed) {
            let text = format!("{id}-{next}");
            if ws.send(Message::text(text.clone())).await.is_err() {
                // The socket ended under the send: what it reads next says
                // how.
            }
            loop {
                match timeout(10 * SEC, ws.next()).await {
                    Ok(Some(Ok(Message::Text(echo)))) => {
                        if echo.as_str() != text {
                            seen.problem(format!("ws {id}: sent {text}, got {echo}"));
                        }
                        seen.ws_echoed.fetch_add(1, Ordering::Relaxed);
                        next += 1;
                        break;
                    }
                    Ok(Some(Ok(Message::Close(frame)))) => {
                        let code = frame.map(|f| f.code);
                        if code != Some(CloseCode::Away) {
                            seen.problem(format!("ws {id}: close code {code:?}"));
                        }
                        seen.ws_closed.fetch_add(1, Ordering::Relaxed);
                        let _ = timeout(2 * SEC, ws.close(None)).await;
                        continue 'connect;
                    }
                    Ok(Some(Ok(_))) => {}
                    other => {
                        seen.ws_abrupt.fetch_add(1, Ordering::Relaxed);
                        seen.problem(format!("ws {id}: ended without a Close: {other:?}"));
                        continue 'connect;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = timeout(2 * SEC, ws.close(None)).await;
    }
}

/// Reads streams of `/events`, resuming with `Last-Event-ID`; an id that
/// does not follow the last one is a gap; a stream that ends without the
/// chunked body's end is abrupt.
async fn sse_client(
    front: std::net::SocketAddr,
    id: usize,
    stop: Arc<AtomicBool>,
    seen: Arc<Seen>,
) {
    let mut last = 0u64;
    let mut had_stream = false;
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut tcp) = TcpStream::connect(front).await else {
            seen.problem(format!("sse {id}: connect refused by haproxy"));
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let resume = if last > 0 {
            format!("Last-Event-ID: {last}\r\n")
        } else {
            String::new()
        };
        let request =
            format!("GET /events?interval_ms=100 HTTP/1.1\r\nHost: fleet\r\n{resume}\r\n");
        if tcp.write_all(request.as_bytes()).await.is_err() {
            continue;
        }
        if had_stream {
            seen.reconnected();
        }
        had_stream = true;
        let mut pending = String::new();
        let mut buf = [0u8; 8192];
        let clean = loop {
            let n = match timeout(10 * SEC, tcp.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => 0,
            };
            if n == 0 {
                break false;
            }
            if stop.load(Ordering::Relaxed) {
                return;
            }
            pending.push_str(&String::from_utf8_lossy(&buf[..n]));
            if pending.contains("\r\n0\r\n\r\n") {
                break true;
            }
            while let Some(end) = pending.find('\n') {
                let line: String = pending.drain(..=end).collect();
                if let Some(v) = line.trim_end().strip_prefix("id: ") {
                    match v.parse::<u64>() {
                        Ok(n) if n == last + 1 => {
                            last = n;
                            seen.sse_events.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            seen.sse_gaps.fetch_add(1, Ordering::Relaxed);
                            seen.problem(format!("sse {id}: id {v} after {last}"));
                        }
                    }
                }
            }
        };
        if clean {
            seen.sse_clean.fetch_add(1, Ordering::Relaxed);
        } else {
            seen.sse_abrupt.fetch_add(1, Ordering::Relaxed);
            seen.problem(format!("sse {id}: stream ended without its end"));
        }
    }
}

/// `lameduck serve` on `port`, its journal in `dir`.
fn instance(port: u16, dir: &std::path::Path, extra: &[&str]) -> Child {
    let mut command = Command::new(BIN);
    command
        .args([
            "serve",
            "--log-format",
            "json",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--journal")
        .arg(format!(
            "sqlite:{}",
            dir.join(format!("jobs-{port}.db")).display()
        ))
        .args(extra);
    Child::spawn(command, None)
}

/// The outcome of one rolling deploy.
struct Deploy {
    seen: Arc<Seen>,
    /// Seconds from SIGTERM to exit, per replaced instance.
    drains: Vec<f64>,
    /// When each SIGTERM was sent, since the clients started.
    steps: Vec<Duration>,
}

impl Deploy {
    /// The reconnect peak per 100 ms of each step (from its SIGTERM to the
    /// next one).
    fn peaks_per_step(&self) -> Vec<usize> {
        let ends = self.steps.iter().skip(1).copied().chain([Duration::MAX]);
        self.steps
            .iter()
            .zip(ends)
            .map(|(from, to)| self.seen.reconnect_peak_within(*from, to))
            .collect()
    }
}

/// Three instances behind HAProxy, replaced one by one while the clients
/// run: start the new instance on a spare slot, wait until HAProxy has it
/// UP, SIGTERM the old one, take it out of rotation (`disable server`) a
/// second later, wait for its exit (code 0).
async fn rolling_deploy(extra: &[&str]) -> Deploy {
    raise_fd_limit(16_384);
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
    let mut old: Vec<Child> = ports[..3]
        .iter()
        .map(|p| instance(*p, dir.path(), extra))
        .collect();
    let haproxy = Haproxy::start(&ports, 3);
    for slot in 0..3 {
        tokio::task::block_in_place(|| haproxy.wait_up(slot, 10 * SEC));
    }
    let front = haproxy.front;

    let seen = Arc::new(Seen {
        start: Some(Instant::now()),
        ..Seen::default()
    });
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    let (http, ws, sse) = self::clients();
    for _ in 0..http {
        clients.push(tokio::spawn(http_client(front, stop.clone(), seen.clone())));
    }
    for id in 0..ws {
        clients.push(tokio::spawn(ws_client(
            front,
            id,
            stop.clone(),
            seen.clone(),
        )));
    }
    for id in 0..sse {
        clients.push(tokio::spawn(sse_client(
            front,
            id,
            stop.clone(),
            seen.clone(),
        )));
    }
    tokio::time::sleep(2 * SEC).await;

    let mut new = Vec::new();
    let mut drains = Vec::new();
    let mut steps = Vec::new();
    for (i, mut gone) in old.drain(..).enumerate() {
        let slot = 3 + i;
        new.push(instance(ports[slot], dir.path(), extra));
        haproxy.command(&format!("enable server be/s{slot}"));
        tokio::task::block_in_place(|| haproxy.wait_up(slot, 10 * SEC));
        let signalled = Instant::now();
        steps.push(seen.start.expect("start").elapsed());
        gone.signal(SIGTERM);
        tokio::time::sleep(SEC).await;
        haproxy.command(&format!("disable server be/s{i}"));
        let status = gone.expect_exit(30 * SEC);
        drains.push(signalled.elapsed().as_secs_f64());
        assert_eq!(
            status.code(),
            Some(0),
            "instance {i}: {:#?}",
            gone.events("shutdown.complete")
        );
        tokio::time::sleep(SEC).await;
    }
    tokio::time::sleep(SEC).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let _ = timeout(20 * SEC, client).await;
    }
    drop(new);
    Deploy {
        seen,
        drains,
        steps,
    }
}

fn assert_nothing_failed(label: &str, d: &Deploy) {
    let s = &d.seen;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let problems = s.problems.lock().unwrap().clone();
    assert!(problems.is_empty(), "{label}: {problems:#?}");
    assert_eq!(get(&s.http_5xx), 0, "{label}");
    assert_eq!(get(&s.lost), 0, "{label}");
    assert_eq!(get(&s.ws_abrupt), 0, "{label}");
    assert_eq!(get(&s.sse_abrupt), 0, "{label}");
    assert_eq!(get(&s.sse_gaps), 0, "{label}");
    assert!(get(&s.ok) > 100, "{label}: {} requests", get(&s.ok));
    let (_, ws, sse) = clients();
    assert!(get(&s.ws_closed) >= ws as u64, "{label}");
    assert!(get(&s.sse_clean) >= sse as u64, "{label}");
    eprintln!(
        "{label}: {} requests, {} echoes, {} SSE events; 0 errors; reconnect peaks per 100 ms by step {:?}",
        get(&s.ok),
        get(&s.ws_echoed),
        get(&s.sse_events),
        d.peaks_per_step()
    );
}

// A rolling replacement of three instances behind HAProxy loses nothing a
// client can see (no 5xx, no lost request, every WebSocket closed with
// 1001, every SSE stream ended cleanly and resumed without a gap, every old
// instance exiting 0), with the drain spread over 3 s and with no spread;
// and the spread is what keeps the reconnects down: with 0 s the busiest
// 100 ms holds at least 5 times as many as with 3 s, and with 3 s no more
// than twice the even rate (the instance's connections over 30 slices,
// floor 10). Then the same with `--drain-announce auto` and `5s`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_deploy_behind_haproxy_loses_nothing_and_spreads_reconnects() {
    let spread = rolling_deploy(&["--drain-spread", "3s"]).await;
    assert_nothing_failed("spread 3s", &spread);
    let burst = rolling_deploy(&["--drain-spread", "0s"]).await;
    assert_nothing_failed("spread 0s", &burst);

    let (p3, p0) = (spread.seen.reconnect_peak(), burst.seen.reconnect_peak());
    let (_, ws, sse) = clients();
    let per_instance = (ws + sse) / 3;
    let even = (per_instance / 30).max(10);
    eprintln!(
        "reconnect peak per 100 ms: spread 3s {p3}, spread 0s {p0} (even rate {even}); \
         drains (s): 3s {:?}, 0s {:?}",
        spread.drains, burst.drains
    );
    assert!(
        p0 >= 5 * p3,
        "no storm without the spread: 0s {p0}, 3s {p3}"
    );
    assert!(p3 <= 2 * even, "spread 3s peaked at {p3} per 100 ms");

    // The announce period ends by itself once HAProxy has stopped sending
    // (its health checks take the instance out within a second): nothing
    // fails, and each old instance is gone sooner than with a fixed 5 s.
    let auto = rolling_deploy(&["--drain-spread", "0s", "--drain-announce", "auto"]).await;
    assert_nothing_failed("announce auto", &auto);
    let fixed = rolling_deploy(&["--drain-spread", "0s", "--drain-announce", "5s"]).await;
    assert_nothing_failed("announce 5s", &fixed);
    eprintln!(
        "drains (s): announce auto {:?}, announce 5s {:?}",
        auto.drains, fixed.drains
    );
    for (a, f) in auto.drains.iter().zip(&fixed.drains) {
        assert!(
            a < f,
            "auto {:?} not sooner than 5s {:?}",
            auto.drains,
            fixed.drains
        );
    }
}
