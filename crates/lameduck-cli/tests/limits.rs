//! Limits, seen by real clients of the real binary: connections and
//! requests past their maximum get 503 with Retry-After, oversized heads
//! 431, oversized bodies 413, WebSocket abuse the right close code (1009,
//! 1007, 1002), foreign origins 403. After each, the drain still completes
//! with exit code 0.

use std::time::Duration;

use lameduck_test_support::{Child, KeepAlive, Outcome, get, raw_ws, send};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};

const BIN: &str = env!("CARGO_BIN_EXE_lameduck");
const SEC: Duration = Duration::from_secs(1);

/// Reads a whole HTTP/1.1 response from a connection the server closes.
async fn read_to_close(tcp: &mut TcpStream) -> String {
    let mut raw = Vec::new();
    timeout(5 * SEC, tcp.read_to_end(&mut raw))
        .await
        .expect("closed in time")
        .expect("read");
    String::from_utf8_lossy(&raw).into_owned()
}

// Past --max-connections a new connection is answered 503 with Retry-After
// and closed; once one leaves, new ones are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_get_503() {
    let server = Child::serve(BIN, &["--max-connections", "5"]);
    let addr = server.addr;
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut c = KeepAlive::connect(addr).await.unwrap();
        assert!(matches!(c.get("/ping", 5 * SEC).await, Outcome::Ok(r) if r.status == 200));
        held.push(c);
    }
    for _ in 0..3 {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let res = read_to_close(&mut tcp).await;
        assert!(res.starts_with("HTTP/1.1 503"), "{res}");
        assert!(res.contains("Retry-After: 1"), "{res}");
        assert!(res.contains("\"error\""), "{res}");
    }
    let m = get(server.admin_addr.unwrap(), "/metrics", 5 * SEC)
        .await
        .unwrap();
    let text = String::from_utf8(m.body).unwrap();
    assert!(
        text.contains("lameduck_rejected_total{reason=\"max_connections\"} 3"),
        "{text}"
    );

    held.pop();
    let deadline = std::time::Instant::now() + 10 * SEC;
    loop {
        if let Ok(res) = get(addr, "/ping", 5 * SEC).await {
            if res.status == 200 {
                break;
            }
        }
        assert!(std::time::Instant::now() < deadline, "never served again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(held);
    server.drains_cleanly();
}

// Past --max-in-flight a request gets 503 with Retry-After (JSON), without
// reaching the application; the requests in flight complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_in_flight_limit_get_503() {
    let server = Child::serve(BIN, &["--max-in-flight", "2"]);
    let addr = server.addr;
    let slow: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(async move { get(addr, "/slow?ms=2000", 10 * SEC).await.unwrap().status })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let res = get(addr, "/ping", 5 * SEC).await.unwrap();
    assert_eq!(res.status, 503);
    assert_eq!(res.header("retry-after"), Some("1"));
    assert!(res.json()["error"].is_string());
    for s in slow {
        assert_eq!(s.await.unwrap(), 200);
    }
    assert_eq!(get(addr, "/ping", 5 * SEC).await.unwrap().status, 200);
    server.drains_cleanly();
}

/// `lameduck_rejected_total{reason}` from the server's `/metrics`.
async fn rejected(server: &Child, reason: &str) -> u64 {
    let admin = server.admin_addr.expect("admin address");
    let metrics = String::from_utf8(get(admin, "/metrics", 5 * SEC).await.unwrap().body).unwrap();
    let sample = format!("lameduck_rejected_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&sample))
        .unwrap_or_else(|| panic!("no {sample} in {metrics}"))
        .parse()
        .unwrap()
}

/// `n` parallel `GET path` (each on its own connection); their statuses
/// and `Retry-After` headers, in the order they were sent.
async fn burst(
    addr: std::net::SocketAddr,
    path: &'static str,
    n: usize,
) -> Vec<tokio::task::JoinHandle<(u16, Option<String>)>> {
    let mut sent = Vec::new();
    for _ in 0..n {
        sent.push(tokio::spawn(async move {
            let res = get(addr, path, 30 * SEC).await.unwrap();
            (res.status, res.header("retry-after").map(str::to_owned))
        }));
        // In this order into the queue.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sent
}

// --max-in-flight 2 --max-in-flight-queue 10: twelve parallel slow requests
// are all served (two at once, ten waiting in order); a thirteenth finds
// the queue full and gets 503 at once (Retry-After: 1); the metrics count
// the waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_waits_in_the_queue_and_past_it_gets_503() {
    let server = Child::serve(
        BIN,
        &[
            "--max-in-flight",
            "2",
            "--max-in-flight-queue",
            "10",
            "--queue-timeout",
            "20s",
        ],
    );
    let addr = server.addr;
    let twelve = burst(addr, "/slow?ms=400", 12).await;
    let res = get(addr, "/ping", 5 * SEC).await.unwrap();
    assert_eq!(res.status, 503, "the queue is full");
    assert_eq!(res.header("retry-after"), Some("1"));
    assert!(res.json()["error"].is_string());
    for (i, r) in twelve.into_iter().enumerate() {
        assert_eq!(r.await.unwrap(), (200, None), "request {i}");
    }
    assert_eq!(get(addr, "/ping", 5 * SEC).await.unwrap().status, 200);
    let admin = server.admin_addr.expect("admin address");
    let metrics = String::from_utf8(get(admin, "/metrics", 5 * SEC).await.unwrap().body).unwrap();
    assert!(
        metrics.contains("lameduck_queue_waited_total 10\n"),
        "{metrics}"
    );
    assert_eq!(rejected(&server, "max_in_flight").await, 1);
    server.drains_cleanly();
}

// A request that waited in the queue passed the rate limit (and the
// new-session rate) when it arrived: it is not charged again when its turn
// comes. With a burst of 3 at 1 a second, three slow requests through one
// place in flight are all served, none 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_requests_are_not_charged_twice_by_the_rate_limit() {
    let server = Child::serve(
        BIN,
        &[
            "--max-in-flight",
            "1",
            "--max-in-flight-queue",
            "10",
            "--rate-limit",
            "1:3",
        ],
    );
    let sent = burst(server.addr, "/slow?ms=400", 3).await;
    for (i, r) in sent.into_iter().enumerate() {
        assert_eq!(r.await.unwrap(), (200, None), "request {i}");
    }
    assert_eq!(rejected(&server, "rate_limit").await, 0);
    server.drains_cleanly();
}

// With --queue-timeout 100ms, requests still queued after it get 503 with
// Retry-After (the timeout rounded up to a second); the ones in flight
// finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_requests_past_the_queue_timeout_get_503() {
    let server = Child::serve(
        BIN,
        &[
            "--max-in-flight",
            "2",
            "--max-in-flight-queue",
            "10",
            "--queue-timeout",
            "100ms",
        ],
    );
    let addr = server.addr;
    let sent = burst(addr, "/slow?ms=2000", 5).await;
    let answers: Vec<_> = futures_util::future::join_all(sent)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let ok = answers.iter().filter(|a| a.0 == 200).count();
    let refused: Vec<_> = answers.iter().filter(|a| a.0 == 503).collect();
    assert_eq!((ok, refused.len()), (2, 3), "{answers:?}");
    assert!(
        refused.iter().all(|a| a.1.as_deref() == Some("1")),
        "{answers:?}"
    );
    assert_eq!(rejected(&server, "queue_timeout").await, 3);
    server.drains_cleanly();
}

// Requests waiting in the queue when SIGTERM comes were accepted: the drain
// serves every one (no 503, no reset), reports them as queued in
// shutdown.progress, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_requests_are_served_across_a_drain() {
    let server = Child::serve(
        BIN,
        &[
            "--max-in-flight",
            "1",
            "--max-in-flight-queue",
            "10",
            "--queue-timeout",
            "20s",
            "--drain-announce",
            "0s",
            "--drain-timeout",
            "20s",
        ],
    );
    let addr = server.addr;
    let sent = burst(addr, "/slow?ms=500", 6).await;
    server.signal(nix::sys::signal::Signal::SIGTERM);
    let progress = server
        .wait_for_event("shutdown.progress", 10 * SEC)
        .expect("shutdown.progress while requests wait");
    for (i, r) in sent.into_iter().enumerate() {
        assert_eq!(r.await.unwrap(), (200, None), "request {i}");
    }
    assert!(progress["queued"].as_u64().is_some(), "{progress}");
    let queued_seen = server
        .events("shutdown.progress")
        .iter()
        .filter_map(|e| e["queued"].as_u64())
        .max()
        .unwrap_or(0);
    assert!(queued_seen >= 1, "a progress event saw the queue");
    let mut server = server;
    assert_eq!(server.expect_exit(30 * SEC).code(), Some(0));
}

/// `GET path` from the source address `from` on a connection of its own
/// (closed after the answer), with `extra` header lines; the status, the
/// `Retry-After` value and the body.
async fn get_from(
    from: &str,
    to: std::net::SocketAddr,
    path: &str,
    extra: &str,
) -> (u16, Option<String>, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut tcp = timeout(5 * SEC, socket.connect(to)).await.unwrap().unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{extra}\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let answer = read_to_close(&mut tcp).await;
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let retry_after = answer
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .map(str::to_owned);
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, retry_after, body)
}

// --rate-limit 1:5: a burst of five from one client is served and the
// sixth gets 429 with Retry-After and a JSON error; another address has
// its own bucket; a forwarding header from an untrusted peer changes
// nothing, while one from a --trust-proxy peer names the client (each
// named client its own bucket); health probes are never limited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_per_client_and_trust_only_listed_proxies() {
    let server = Child::serve(
        BIN,
        &["--rate-limit", "1:5", "--trust-proxy", "127.0.0.1/32"],
    );
    let addr = server.addr;
    for i in 0..5 {
        assert_eq!(
            get_from("127.0.0.2", addr, "/ping", "").await.0,
            200,
            "request {i}"
        );
    }
    let (status, retry_after, body) = get_from("127.0.0.2", addr, "/ping", "").await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert!(body.contains("\"error\""), "{body}");
    let spoofed = "X-Forwarded-For: 203.0.113.99\r\n";
    assert_eq!(
        get_from("127.0.0.2", addr, "/ping", spoofed).await.0,
        429,
        "an untrusted header is ignored"
    );
    assert_eq!(
        get_from("127.0.0.2", addr, "/readyz", "").await.0,
        200,
        "health probes are not limited"
    );
    assert_eq!(
        get_from("127.0.0.3", addr, "/ping", "").await.0,
        200,
        "another address, another bucket"
    );

    let client_a = "X-Forwarded-For: 203.0.113.5\r\n";
    for i in 0..5 {
        assert_eq!(
            get_from("127.0.0.1", addr, "/ping", client_a).await.0,
            200,
            "request {i}"
        );
    }
    assert_eq!(get_from("127.0.0.1", addr, "/ping", client_a).await.0, 429);
    let client_b = "Forwarded: for=203.0.113.6\r\n";
    assert_eq!(
        get_from("127.0.0.1", addr, "/ping", client_b).await.0,
        200,
        "a trusted proxy's client has its own bucket"
    );

    assert_eq!(rejected(&server, "rate_limit").await, 3);
    server.drains_cleanly();
}

// --max-new-sessions 1:3 (a reconnect storm): three WebSockets open, then
// new WebSocket and SSE sessions get 503 with Retry-After values that
// differ (spread, so the refused do not come back together), a browser's
// WebSocket (with Origin) is accepted and closed with 1013 and the seconds
// to wait, while the open sockets keep echoing and plain requests are
// served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_sessions_past_the_rate_get_503_with_spread_retry_after() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Error as WsError, Message};

    let server = Child::serve(BIN, &["--max-new-sessions", "1:3"]);
    let addr = server.addr;
    let mut open = Vec::new();
    for _ in 0..3 {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tcp)
            .await
            .unwrap();
        open.push(ws);
    }
    let mut afters = Vec::new();
    for _ in 0..12 {
        let tcp = TcpStream::connect(addr).await.unwrap();
        match tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tcp).await {
            Err(WsError::Http(res)) => {
                assert_eq!(res.status(), 503);
                let after: u64 = res.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                afters.push(after);
            }
            other => panic!("expected a 503, got {:?}", other.map(|_| ())),
        }
    }
    // A browser's upgrade (it sends Origin) cannot see a 503: it is
    // accepted and closed at once with 1013 and the seconds to wait.
    for _ in 0..2 {
        use tokio_tungstenite::tungstenite::{
            client::IntoClientRequest, protocol::frame::coding::CloseCode,
        };
        let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
        request
            .headers_mut()
            .insert("origin", format!("http://{addr}").parse().unwrap());
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut ws, res) = timeout(10 * SEC, tokio_tungstenite::client_async(request, tcp))
            .await
            .expect("a handshake in time")
            .expect("a browser's refused upgrade is accepted");
        assert_eq!(res.status(), 101);
        match timeout(5 * SEC, ws.next()).await.unwrap() {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(frame.code, CloseCode::Again, "{frame:?}");
                let after: u64 = frame
                    .reason
                    .strip_prefix("retry after ")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("{frame:?}"));
                assert_eq!(
                    res.headers()["retry-after"].to_str().unwrap(),
                    after.to_string()
                );
                afters.push(after);
            }
            other => panic!("expected a Close with 1013, got {other:?}"),
        }
    }
    let res = send(
        addr,
        "GET",
        "/events",
        &[("Accept", "text/event-stream")],
        b"",
        5 * SEC,
    )
    .await
    .unwrap();
    assert_eq!(res.status, 503, "a new SSE stream is a session too");
    assert!(res.header("retry-after").is_some());
    afters.sort_unstable();
    afters.dedup();
    assert!(
        afters.len() > 1,
        "Retry-After values are spread: {afters:?}"
    );
    assert!(afters.iter().all(|a| (1..=6).contains(a)), "{afters:?}");

    for ws in &mut open {
        ws.send(Message::text("still here")).await.unwrap();
        let echoed = timeout(5 * SEC, ws.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(echoed, Message::text("still here"));
    }
    assert_eq!(get(addr, "/ping", 5 * SEC).await.unwrap().status, 200);
    assert_eq!(rejected(&server, "new_sessions").await, 15);
    drop(open);
    server.drains_cleanly();
}

// A request head over --max-header-bytes gets 431; a body over the route's
// limit gets 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_and_bodies_are_refused() {
    let server = Child::serve(BIN, &["--max-header-bytes", "16384"]);
    let addr = server.addr;
    let big = "x".repeat(32 * 1024);
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(format!("GET /ping HTTP/1.1\r\nHost: t\r\nX-Big: {big}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let res = read_to_close(&mut tcp).await;
    assert!(res.starts_with("HTTP/1.1 431"), "{res}");
    // Just under the limit is fine.
    let fine = "x".repeat(8 * 1024);
    let res = send(addr, "GET", "/ping", &[("X-Fine", &fine)], b"", 5 * SEC)
        .await
        .unwrap();
    assert_eq!(res.status, 200);

    let body = vec![b'{'; 200 * 1024];
    let res = send(
        addr,
        "POST",
        "/jobs",
        &[("Content-Type", "application/json")],
        &body,
        5 * SEC,
    )
    .await
    .unwrap();
    assert_eq!(res.status, 413);
    server.drains_cleanly();
}

// WebSocket abuse gets the close code RFC 6455 names for it; a foreign
// Origin is refused with 403 unless listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_abuse_gets_the_right_close_code() {
    let server = Child::serve(
        BIN,
        &[
            "--ws-max-message",
            "1024",
            "--ws-allowed-origin",
            "https://friend.example",
        ],
    );
    let addr = server.addr;

    // Text message over the limit: 1009.
    let (mut tcp, head) = raw_ws::handshake(addr, None).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tcp.write_all(&raw_ws::frame(0x81, &[b'a'; 2000], false))
        .await
        .unwrap();
    assert_eq!(raw_ws::close_code(&mut tcp).await, Some(1009));

    // Invalid UTF-8 in a text message: 1007.
    let (mut tcp, _) = raw_ws::handshake(addr, None).await;
    tcp.write_all(&raw_ws::frame(0x81, &[0xff, 0xfe, 0x41], false))
        .await
        .unwrap();
    assert_eq!(raw_ws::close_code(&mut tcp).await, Some(1007));

    // Protocol errors: 1002.
    for (what, bytes) in [
        ("unmasked client frame", raw_ws::frame(0x81, b"hi", true)),
        (
            "reserved bits set",
            raw_ws::frame(0x81 | 0x40, b"hi", false),
        ),
        ("unknown opcode", raw_ws::frame(0x83, b"hi", false)),
        (
            "fragmented control frame",
            raw_ws::frame(0x09, b"hi", false),
        ),
    ] {
        let (mut tcp, _) = raw_ws::handshake(addr, None).await;
        tcp.write_all(&bytes).await.unwrap();
        assert_eq!(raw_ws::close_code(&mut tcp).await, Some(1002), "{what}");
    }

    // A well-formed message is still echoed.
    let (mut tcp, _) = raw_ws::handshake(addr, None).await;
    tcp.write_all(&raw_ws::frame(0x81, b"hello", false))
        .await
        .unwrap();
    let mut echo = [0u8; 7];
    timeout(5 * SEC, tcp.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"\x81\x05hello");

    // Origins: the service's own host and listed ones pass; others get 403.
    let (_, head) = raw_ws::handshake(addr, Some(&format!("http://{addr}"))).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (_, head) = raw_ws::handshake(addr, Some("https://friend.example")).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (_, head) = raw_ws::handshake(addr, Some("https://evil.example")).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");

    // Every refused socket was released: only the echo one and the two
    // accepted handshakes may still be open, and the drain ends cleanly.
    server.drains_cleanly();
}

// Slowloris: 500 connections trickling a request head byte by byte are all
// closed after the header-read timeout, while a normal client keeps being
// served; the live connection count returns to zero, and the drain is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_at_the_header_timeout() {
    lameduck_test_support::raise_fd_limit(4096);
    let server = Child::serve(BIN, &["--header-read-timeout", "2s"]);
    let addr = server.addr;
    let started = std::time::Instant::now();
    let trickles: Vec<_> = (0..500)
        .map(|_| {
            tokio::spawn(async move {
                let mut tcp = TcpStream::connect(addr).await.unwrap();
                tcp.write_all(b"GET /ping HTTP/1.1\r\nHost: t\r\nX-Slow: ")
                    .await
                    .unwrap();
                // One byte every 200 ms, for at most 15 s; returns when the
                // server closes the connection.
                for _ in 0..75 {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if tcp.write_all(b"a").await.is_err() {
                        return true;
                    }
                    let mut probe = [0u8; 64];
                    match timeout(Duration::from_millis(1), tcp.read(&mut probe)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => return true,
                        Ok(Ok(_)) => return true,
                        Err(_) => {}
                    }
                }
                false
            })
        })
        .collect();
    // Meanwhile, normal requests are served.
    for _ in 0..10 {
        assert_eq!(get(addr, "/ping", 5 * SEC).await.unwrap().status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for t in trickles {
        assert!(t.await.unwrap(), "a trickling connection was never closed");
    }
    assert!(
        started.elapsed() >= 2 * SEC,
        "closed by the timeout, not at once"
    );
    let admin = server.admin_addr.unwrap();
    let deadline = std::time::Instant::now() + 10 * SEC;
    loop {
        let text = String::from_utf8(get(admin, "/metrics", 5 * SEC).await.unwrap().body).unwrap();
        if text.contains("lameduck_connections{kind=\"http1\"} 0") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "connections still open: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.drains_cleanly();
}

// --request-timeout: a handler that takes longer gets 504 (JSON); streams
// are not cut by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_answers_504() {
    let server = Child::serve(BIN, &["--request-timeout", "500ms"]);
    let addr = server.addr;
    let res = get(addr, "/slow?ms=3000", 10 * SEC).await.unwrap();
    assert_eq!(res.status, 504);
    assert!(res.json()["error"].as_str().unwrap().contains("timeout"));
    assert_eq!(get(addr, "/slow?ms=10", 5 * SEC).await.unwrap().status, 200);

    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /events?interval_ms=400 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 1024];
    while !seen.contains("id: 3\n") {
        let n = timeout(5 * SEC, tcp.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "stream cut: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    drop(tcp);
    server.drains_cleanly();
}

// The header-read and keep-alive timeouts are separate: a keep-alive
// connection idle for longer than the header timeout stays open until the
// keep-alive timeout; a connection that never sends a byte is closed at the
// header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_idle_is_not_the_header_timeout() {
    let server = Child::serve(
        BIN,
        &["--header-read-timeout", "1s", "--keep-alive-timeout", "4s"],
    );
    let addr = server.addr;
    let mut idle = KeepAlive::connect(addr).await.unwrap();
    assert!(matches!(idle.get("/ping", 5 * SEC).await, Outcome::Ok(r) if r.status == 200));
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let opened = std::time::Instant::now();

    // The silent one goes at the header timeout (1 s, seen within 10 s).
    let mut byte = [0u8; 1];
    let end = timeout(10 * SEC, silent.read(&mut byte))
        .await
        .expect("closed");
    assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
    assert!(opened.elapsed() >= SEC);

    // The idle keep-alive one is still usable after 2 s, past the header
    // timeout...
    tokio::time::sleep(2 * SEC).await;
    assert!(matches!(idle.get("/ping", 5 * SEC).await, Outcome::Ok(r) if r.status == 200));
    // ...and closed once idle for the keep-alive timeout.
    let idle_since = std::time::Instant::now();
    assert!(
        idle.closed_by_server(15 * SEC).await,
        "idle connection never closed"
    );
    assert!(idle_since.elapsed() >= 4 * SEC);
    server.drains_cleanly();
}

// HTTP/2 gets HTTP/1's keep-alive limit: an h2c connection that finished
// its stream and went quiet is told GOAWAY and closed at the keep-alive
// timeout (it was still open 12 s later before), and a new stream on it is
// refused; one with a stream still open is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_get_goaway_at_the_keep_alive_timeout() {
    let server = Child::serve(BIN, &["--keep-alive-timeout", "2s"]);
    let addr = server.addr;
    let ping = || {
        http::Request::get(format!("http://{addr}/ping"))
            .body(())
            .unwrap()
    };

    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let (res, _) = client.send_request(ping(), true).unwrap();
    assert_eq!(timeout(5 * SEC, res).await.unwrap().unwrap().status(), 200);
    let started = std::time::Instant::now();
    let ended = timeout(10 * SEC, driver)
        .await
        .expect("the idle HTTP/2 connection was closed within 10 s")
        .unwrap();
    assert!(ended.is_ok(), "closed by GOAWAY, not reset: {ended:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "not before the timeout"
    );
    let refused = match client.send_request(ping(), true) {
        Err(err) => Some(err),
        Ok((res, _)) => timeout(5 * SEC, res).await.unwrap().err(),
    };
    assert!(refused.is_some(), "a stream was accepted after GOAWAY");

    // A long stream keeps its connection: busy is not idle.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let slow = http::Request::get(format!("http://{addr}/slow?ms=4000"))
        .body(())
        .unwrap();
    let (res, _) = client.send_request(slow, true).unwrap();
    let res = timeout(10 * SEC, res).await.unwrap().unwrap();
    assert_eq!(res.status(), 200, "served past the keep-alive timeout");
    drop(client);
    let _ = timeout(10 * SEC, driver).await;
    server.drains_cleanly();
}

/// One raw HTTP/2 frame.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// `:method GET`, `:scheme http`, `:path /` from HPACK's static table.
const H2_GET_ROOT: &[u8] = &[0x82, 0x86, 0x84];

/// Reads one raw HTTP/2 frame: its 9-byte head and its payload; `None` at
/// the end of the connection; `Err` past `deadline`.
async fn h2_read_frame(
    tcp: &mut (impl tokio::io::AsyncRead + Unpin),
    deadline: tokio::time::Instant,
) -> Result<Option<([u8; 9], Vec<u8>)>, tokio::time::error::Elapsed> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 9];
    if tokio::time::timeout_at(deadline, tcp.read_exact(&mut head))
        .await?
        .is_err()
    {
        return Ok(None);
    }
    let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    if tokio::time::timeout_at(deadline, tcp.read_exact(&mut payload))
        .await?
        .is_err()
    {
        return Ok(None);
    }
    Ok(Some((head, payload)))
}

/// Reads frames until a GOAWAY (its error code) or the end of the
/// connection (`None`), 10 s at most.
async fn h2_read_until_goaway(tcp: &mut (impl tokio::io::AsyncRead + Unpin)) -> Option<u32> {
    let deadline = tokio::time::Instant::now() + 10 * SEC;
    loop {
        let (head, payload) = h2_read_frame(tcp, deadline)
            .await
            .expect("neither GOAWAY nor the end of the connection within 10 s")?;
        if head[3] == 0x7 && payload.len() >= 8 {
            return Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
        }
    }
}

// A hostile HTTP/2 corpus, raw frames: a rapid reset (streams opened and
// reset at once, by the hundred) ends its connection with GOAWAY
// ENHANCE_YOUR_CALM, a CONTINUATION flood (a header block that never ends,
// far past the header limit) with GOAWAY PROTOCOL_ERROR, and the server
// keeps serving everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_http2_frames_end_their_connection_only() {
    let server = Child::serve(BIN, &[]);
    let addr = server.addr;

    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut burst = H2_PREFACE.to_vec();
    burst.extend(h2_frame(0x4, 0, 0, &[]));
    for i in 0..500u32 {
        let stream = 2 * i + 1;
        burst.extend(h2_frame(0x1, 0x5, stream, H2_GET_ROOT));
        burst.extend(h2_frame(0x3, 0, stream, &8u32.to_be_bytes()));
    }
    let _ = tcp.write_all(&burst).await;
    let code = h2_read_until_goaway(&mut tcp).await;
    assert_eq!(code, Some(0xb), "rapid reset: GOAWAY ENHANCE_YOUR_CALM");

    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut start = H2_PREFACE.to_vec();
    start.extend(h2_frame(0x4, 0, 0, &[]));
    start.extend(h2_frame(0x1, 0x1, 1, H2_GET_ROOT));
    tcp.write_all(&start).await.unwrap();
    // Literal headers "x-flood: aaaa...", 4 KiB a CONTINUATION frame, up to
    // 8 MiB: far past any header limit.
    let mut literal = vec![0x40, 7];
    literal.extend_from_slice(b"x-flood");
    literal.extend_from_slice(&[0x7f, 0x81, 0x1f]);
    literal.extend(std::iter::repeat_n(b'a', 4096 - literal.len()));
    let flood = h2_frame(0x9, 0, 1, &literal);
    let (mut read, mut write) = tcp.into_split();
    let writer = tokio::spawn(async move {
        for _ in 0..2048 {
            if write.write_all(&flood).await.is_err() {
                break;
            }
        }
    });
    let reader = tokio::spawn(async move { h2_read_until_goaway(&mut read).await });
    let code = timeout(30 * SEC, reader).await.unwrap().unwrap();
    writer.abort();
    assert_eq!(code, Some(0x1), "CONTINUATION flood: GOAWAY PROTOCOL_ERROR");

    assert_eq!(get(addr, "/ping", 5 * SEC).await.unwrap().status, 200);
    server.drains_cleanly();
}

/// Opens a raw h2c connection with one long stream (`/slow?ms=6000`) and
/// reads frames for `window`: whether the server sent a PING meanwhile.
async fn h2_pinged_within(addr: std::net::SocketAddr, window: Duration) -> bool {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let path = b"/slow?ms=6000";
    // `:method GET`, `:scheme http`, then `:path` as a literal (name 4).
    let mut headers = vec![0x82, 0x86, 0x44, path.len() as u8];
    headers.extend_from_slice(path);
    let mut start = H2_PREFACE.to_vec();
    start.extend(h2_frame(0x4, 0, 0, &[]));
    start.extend(h2_frame(0x1, 0x5, 1, &headers));
    tcp.write_all(&start).await.unwrap();
    let deadline = tokio::time::Instant::now() + window;
    loop {
        let Ok(frame) = h2_read_frame(&mut tcp, deadline).await else {
            return false;
        };
        let (head, _) = frame.expect("the connection ended before the window did");
        match (head[3], head[4] & 0x1) {
            // The server's SETTINGS: acknowledged, as a client does.
            (0x4, 0) => tcp.write_all(&h2_frame(0x4, 0x1, 0, &[])).await.unwrap(),
            (0x6, 0) => return true,
            _ => {}
        }
    }
}

// HTTP/2 PINGs find a dead peer under open streams: with
// `--h2-ping-interval 1s`, a connection with a long stream is sent a PING
// within 3 s; with `0s` none comes in as long (they cost about 3 % of an
// h2c request, so a service may turn them off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_pings_come_at_their_interval_and_can_be_turned_off() {
    let server = Child::serve(BIN, &["--h2-ping-interval", "1s"]);
    assert!(
        h2_pinged_within(server.addr, 3 * SEC).await,
        "no PING within 3 s at a 1 s interval"
    );
    server.drains_cleanly();

    let server = Child::serve(BIN, &["--h2-ping-interval", "0s"]);
    assert!(
        !h2_pinged_within(server.addr, 3 * SEC).await,
        "a PING with PINGs turned off"
    );
    server.drains_cleanly();
}
