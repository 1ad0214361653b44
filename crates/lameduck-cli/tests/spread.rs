//! The spread drain on the real binary: long-lived connections are told to
//! go one at a time over `--drain-spread`, not all at once, and the spread
//! never costs a forced cut. Loopback only; every wait bounded.

use std::time::{Duration, Instant};

use futures_util::{StreamExt, future::join_all};
use lameduck_test_support::{Child, raise_fd_limit};
use nix::sys::signal::Signal::SIGTERM;
use tokio::{net::TcpStream, time::timeout};
use tokio_tungstenite::{client_async, tungstenite::Message};

const BIN: &str = env!("CARGO_BIN_EXE_lameduck");
const SEC: Duration = Duration::from_secs(1);
const SOCKETS: usize = 100;

/// Opens `SOCKETS` idle WebSockets, sends SIGTERM, and returns when each
/// got its Close frame (from the signal), with the server's drain events.
async fn close_times(spread: &str) -> (Vec<Duration>, Child) {
    raise_fd_limit(4096);
    let mut server = Child::serve(BIN, &["--drain-spread", spread]);
    let addr = server.addr;
    let mut sockets = Vec::new();
    for _ in 0..SOCKETS {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (ws, _) = timeout(10 * SEC, client_async(format!("ws://{addr}/ws"), tcp))
            .await
            .expect("handshake in time")
            .expect("handshake");
        sockets.push(ws);
    }
    let start = Instant::now();
    server.signal(SIGTERM);
    let ends = join_all(sockets.into_iter().map(|mut ws| {
        tokio::spawn(async move {
            let end = timeout(20 * SEC, async {
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Close(frame))) => {
                            return Ok((start.elapsed(), frame.map(|f| u16::from(f.code))));
                        }
                        Some(Ok(_)) => {}
                        other => return Err(format!("{other:?}")),
                    }
                }
            })
            .await;
            // Answer the Close so that the server's handshake completes.
            let _ = timeout(5 * SEC, async {
                while let Some(Ok(_)) = ws.next().await {}
            })
            .await;
            end
        })
    }))
    .await;
    let mut at = Vec::new();
    for (i, end) in ends.into_iter().enumerate() {
        match end.unwrap() {
            Ok(Ok((t, Some(1001)))) => at.push(t),
            other => panic!("socket {i} ended without Close 1001: {other:?}"),
        }
    }
    let status = server.expect_exit(30 * SEC);
    assert_eq!(status.code(), Some(0), "{:#?}", server.logs());
    at.sort();
    (at, server)
}

/// The most closes within one 100 ms slice, counted from the first.
fn peak_per_100ms(at: &[Duration]) -> usize {
    at.iter()
        .map(|t| {
            at.iter()
                .filter(|u| **u >= *t && **u < *t + SEC / 10)
                .count()
        })
        .max()
        .unwrap_or(0)
}

// 100 idle WebSockets, spread over 2 s: the closes come over most of the
// window (not in one burst), the busiest 100 ms holds at most 4 times the
// even rate (5 per 100 ms), nothing is cut (exit 0, every socket got
// 1001), and `shutdown.spread` names the window and the count. With `0s`,
// the same sockets are closed in one burst: the measurement can see one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closes_are_spread_over_the_window() {
    let (at, server) = close_times("2s").await;
    let span = *at.last().unwrap() - at[0];
    assert!(span >= SEC * 3 / 2, "closes over {span:?} only: {at:?}");
    let peak = peak_per_100ms(&at);
    assert!(peak <= 20, "{peak} closes in one 100 ms: {at:?}");
    let spread = server.expect_event("shutdown.spread", SEC);
    assert_eq!(spread["window_ms"], 2000, "{spread}");
    assert_eq!(spread["count"], SOCKETS, "{spread}");
    let complete = server.expect_event("shutdown.complete", SEC);
    assert_eq!(complete["cut"], 0);

    let (at, server) = close_times("0s").await;
    let burst = peak_per_100ms(&at);
    assert!(
        burst >= 5 * peak && burst >= SOCKETS * 8 / 10,
        "no burst with 0s: {burst} in the busiest 100 ms (spread: {peak}): {at:?}"
    );
    assert!(server.events("shutdown.spread").is_empty());
    eprintln!("spread 2s: closes over {span:?}, peak {peak} per 100 ms; spread 0s: peak {burst}");
}

// A spread that leaves no room for the close handshakes inside the drain
// timeout is refused at start as bad usage.
#[test]
fn a_spread_that_does_not_fit_is_bad_usage() {
    let out = std::process::Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(["--drain-timeout", "10s", "--drain-spread", "9s"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("--drain-spread"), "{stderr}");
}
