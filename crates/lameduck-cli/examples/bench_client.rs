//! Benchmark client for what a load tool cannot measure. It starts the
//! server itself with the test harness's `Child` (so it can read its
//! memory), on a loopback port. The drain with thousands of idle
//! connections is measured by `lameduck drill` (see `bench/run.sh`).
//!
//! - `bench_client ws-rss BIN N [AT_ONCE=100]`: opens N idle WebSockets to
//!   `BIN serve`, AT_ONCE handshakes at a time, and prints the server's RSS
//!   growth per socket.
//! - `bench_client ping ADDR N CONNS`: sends N `GET /ping` over CONNS
//!   keep-alive connections to a running server (for instruction counts
//!   under callgrind, where a fixed number of requests matters).
//! - `bench_client idle-rss BIN N [OTHER...]`: opens N keep-alive
//!   connections (one `/ping` each, then idle) and prints the server's RSS
//!   growth per connection; then the same for each OTHER example server
//!   (`bare_hyper`, `lameduck_minimal`, `plain_axum`), one at a time.
//! - `bench_client slowloris ADDR N SECS`: holds N connections that trickle
//!   a header byte a second to a running server, reconnecting each one the
//!   server closes, for SECS seconds.
//! - `bench_client ws-echo ADDR PATH CONNS SECS BYTES`: CONNS WebSockets to
//!   `ws://ADDR/PATH` each send a BYTES-byte binary message and wait for its
//!   echo, again and again, for SECS seconds; prints the echoes per second.
//! - `bench_client shed BIN HELD N`: with `--max-connections HELD` filled,
//!   N more connections (1,000 at a time) each send `GET /ping`; prints the
//!   time until every one was answered 503 and closed, and, as a baseline
//!   in the same run, the time for N connections served 200 with
//!   `Connection: close` by a server with room.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::future::join_all;
use lameduck_test_support::{Child, KeepAlive, Outcome, raise_fd_limit, rss_kib};
use tokio::{net::TcpStream, sync::Semaphore, time::timeout};
use tokio_tungstenite::{WebSocketStream, client_async};

type Ws = WebSocketStream<TcpStream>;

/// A baseline server example (`bare_hyper`, `plain_axum`): prints
/// `listening ADDR` on stdout; killed on drop.
struct Baseline {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Baseline {
    fn start(program: &str) -> Self {
        let mut child = Command::new(program)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start baseline server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("baseline address");
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        Self { child, addr }
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn open_websockets(addr: SocketAddr, n: usize, at_once: usize) -> Vec<Ws> {
    let gate = Arc::new(Semaphore::new(at_once.max(1)));
    let tasks = (0..n).map(|_| {
        let gate = gate.clone();
        tokio::spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            let tcp = TcpStream::connect(addr).await.expect("connect");
            let (ws, _) = timeout(
                Duration::from_secs(30),
                client_async(format!("ws://{addr}/ws"), tcp),
            )
            .await
            .expect("handshake in time")
            .expect("handshake");
            ws
        })
    });
    join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect()
}

async fn open_keepalive(addr: SocketAddr, n: usize) -> Vec<KeepAlive> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut conn = KeepAlive::connect(addr).await.expect("connect");
        match conn.get("/ping", Duration::from_secs(10)).await {
            Outcome::Ok(res) if res.status == 200 => conns.push(conn),
            other => panic!("warm-up failed: {other:?}"),
        }
    }
    conns
}

async fn ws_rss(bin: &str, n: usize, at_once: usize) {
    let server = Child::serve(bin, &[]);
    // Warm up the allocator and the runtime's worker threads first.
    drop(open_websockets(server.addr, 50, at_once).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(server.pid());
    let sockets = open_websockets(server.addr, n, at_once).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(server.pid());
    let per = (after.saturating_sub(before)) as f64 * 1024.0 / n as f64;
    println!(
        "ws-rss: {n} idle WebSockets ({at_once} handshakes at a time): server RSS {before} KiB -> {after} KiB, {:.1} KiB per socket",
        per / 1024.0
    );
    drop(sockets);
}

async fn ping(addr: SocketAddr, n: usize, conns: usize) {
    let per = n / conns.max(1);
    let tasks = (0..conns.max(1)).map(|_| {
        tokio::spawn(async move {
            let mut conn = KeepAlive::connect(addr).await.expect("connect");
            for _ in 0..per {
                match conn.get("/ping", Duration::from_secs(60)).await {
                    Outcome::Ok(res) if res.status == 200 => {}
                    other => panic!("request failed: {other:?}"),
                }
            }
        })
    });
    join_all(tasks).await.into_iter().for_each(|r| r.unwrap());
    println!("ping: {} requests", per * conns.max(1));
}

/// RSS growth per idle keep-alive connection of a server at `addr`.
async fn rss_per_idle(addr: SocketAddr, pid: u32, n: usize) -> (u64, u64, f64) {
    drop(open_keepalive(addr, 100).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid);
    let conns = open_keepalive(addr, n).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(pid);
    drop(conns);
    (
        before,
        after,
        after.saturating_sub(before) as f64 / n as f64,
    )
}

async fn idle_rss(bin: &str, n: usize, baselines: &[String]) {
    let server = Child::serve(bin, &[]);
    let (before, after, per) = rss_per_idle(server.addr, server.pid(), n).await;
    drop(server);
    println!(
        "idle-rss: {n} idle keep-alive connections: lameduck serve RSS {before} KiB -> {after} KiB, {per:.1} KiB per connection"
    );
    for program in baselines {
        let base = Baseline::start(program);
        let (b0, b1, bper) = rss_per_idle(base.addr, base.child.id(), n).await;
        println!(
            "idle-rss: {program}: RSS {b0} KiB -> {b1} KiB, {bper:.1} KiB per connection; lameduck serve / this {:.2}",
            per / bper
        );
    }
}

async fn slowloris(addr: SocketAddr, n: usize, secs: u64) {
    use tokio::io::AsyncWriteExt;
    let until = Instant::now() + Duration::from_secs(secs);
    let reconnects = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let tasks = (0..n).map(|_| {
        let reconnects = reconnects.clone();
        tokio::spawn(async move {
            'connect: while Instant::now() < until {
                let Ok(mut tcp) = TcpStream::connect(addr).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                if tcp
                    .write_all(b"GET /ping HTTP/1.1\r\nHost: b\r\nX-Slow: ")
                    .await
                    .is_err()
                {
                    continue;
                }
                while Instant::now() < until {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if tcp.write_all(b"a").await.is_err() {
                        reconnects.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        continue 'connect;
                    }
                }
            }
        })
    });
    join_all(tasks).await;
    println!(
        "slowloris: {n} connections held for {secs} s, {} reconnects after the server closed one",
        reconnects.load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// Opens `n` connections (1,000 at a time), each sending `GET /ping` and
/// reading until the server closes; returns the elapsed time and the count
/// answered with `status`.
async fn burst(addr: SocketAddr, n: usize, status: &'static str) -> (Duration, usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gate = Arc::new(Semaphore::new(1000));
    let start = Instant::now();
    let tasks = (0..n).map(|_| {
        let gate = gate.clone();
        tokio::spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            let mut tcp = TcpStream::connect(addr).await.ok()?;
            tcp.write_all(b"GET /ping HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
                .await
                .ok()?;
            let mut raw = Vec::new();
            timeout(Duration::from_secs(30), tcp.read_to_end(&mut raw))
                .await
                .ok()?
                .ok()?;
            raw.starts_with(status.as_bytes()).then_some(())
        })
    });
    let ok = join_all(tasks)
        .await
        .into_iter()
        .filter(|r| matches!(r, Ok(Some(()))))
        .count();
    (start.elapsed(), ok)
}

async fn shed(bin: &str, held: usize, n: usize) {
    let baseline = Child::serve(bin, &[]);
    let (served_in, served) = burst(baseline.addr, n, "HTTP/1.1 200").await;
    drop(baseline);
    let limit = held.to_string();
    let server = Child::serve(bin, &["--max-connections", &limit]);
    let conns = open_keepalive(server.addr, held).await;
    let (shed_in, shed) = burst(server.addr, n, "HTTP/1.1 503").await;
    println!(
        "shed: {shed}/{n} connections past the limit ({held} held) answered 503 and closed in {:.3} s ({:.0}/s); \
         baseline: {served}/{n} served 200 with Connection: close in {:.3} s ({:.0}/s); shed/served time {:.2}",
        shed_in.as_secs_f64(),
        n as f64 / shed_in.as_secs_f64(),
        served_in.as_secs_f64(),
        n as f64 / served_in.as_secs_f64(),
        shed_in.as_secs_f64() / served_in.as_secs_f64()
    );
    drop(conns);
}

async fn ws_echo(addr: SocketAddr, path: &str, conns: usize, secs: u64, bytes: usize) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let end = Instant::now() + Duration::from_secs(secs);
    let tasks = (0..conns.max(1)).map(|_| {
        let url = format!("ws://{addr}{path}");
        tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.expect("connect");
            let (mut ws, _) = client_async(url, tcp).await.expect("handshake");
            let payload = vec![7u8; bytes];
            let mut echoed = 0u64;
            while Instant::now() < end {
                ws.send(Message::binary(payload.clone()))
                    .await
                    .expect("send");
                match timeout(Duration::from_secs(10), ws.next()).await {
                    Ok(Some(Ok(Message::Binary(b)))) if b.len() == bytes => echoed += 1,
                    other => panic!("no echo: {other:?}"),
                }
            }
            let _ = ws.close(None).await;
            echoed
        })
    });
    let started = Instant::now();
    let total: u64 = join_all(tasks).await.into_iter().map(|r| r.unwrap()).sum();
    println!(
        "ws-echo: {conns} connections, {bytes}-byte messages: {:.0} echoes/s",
        total as f64 / started.elapsed().as_secs_f64()
    );
}

#[tokio::main]
async fn main() {
    raise_fd_limit(200_000);
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: bench_client ws-rss BIN N [AT_ONCE] | bench_client ping ADDR N CONNS | bench_client idle-rss BIN N [OTHER...] | bench_client slowloris ADDR N SECS | bench_client shed BIN HELD N | bench_client ws-echo ADDR PATH CONNS SECS BYTES";
    let num = |i: usize| -> usize { args.get(i).and_then(|s| s.parse().ok()).expect(usage) };
    match args.get(1).map(String::as_str) {
        Some("ws-rss") => ws_rss(&args[2], num(3), args.get(4).map_or(100, |_| num(4))).await,
        Some("ping") => ping(args[2].parse().expect(usage), num(3), num(4)).await,
        Some("idle-rss") => idle_rss(&args[2], num(3), args.get(4..).unwrap_or_default()).await,
        Some("slowloris") => slowloris(args[2].parse().expect(usage), num(3), num(4) as u64).await,
        Some("shed") => shed(&args[2], num(3), num(4)).await,
        Some("ws-echo") => {
            ws_echo(
                args[2].parse().expect(usage),
                &args[3],
                num(4),
                num(5) as u64,
                num(6),
            )
            .await
        }
        _ => {
            eprintln!("{usage}");
            std::process::exit(64);
        }
    }
}
