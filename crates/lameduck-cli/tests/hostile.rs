//! Hostile input over raw TCP, against the real binary: malformed request
//! lines and header bytes, conflicting or broken framing (nothing can be
//! smuggled: a refusal with 400, or one answer and the connection closed),
//! pipelining across a drain, half-closed and reset connections. The server
//! never panics, answers with the right status, its live connection count
//! returns to zero, and its drain still ends with exit code 0.
//! A dead WebSocket peer — one that never reads, even while the server
//! has echoes to send it — is dropped after the pong timeout.
//! (WebSocket frame abuse — bad opcodes, reserved bits, unmasked and
//! fragmented control frames — is in `limits.rs`.)

use std::{net::SocketAddr, time::Duration};

use lameduck_test_support::{Child, get, raw_ws, rss_kib};
use nix::sys::signal::Signal::SIGTERM;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};

const BIN: &str = env!("CARGO_BIN_EXE_lameduck");
const SEC: Duration = Duration::from_secs(1);

/// How a raw exchange ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The server closed the connection (FIN).
    Closed,
    /// The server reset it.
    Reset,
    /// Still open when the test stopped reading.
    Open,
}

/// What came back: the status of every response, in order, and the end.
#[derive(Debug)]
struct Seen {
    statuses: Vec<u16>,
    text: String,
    end: End,
}

/// Writes `bytes`, half-closes if `shut`, and reads for at most `wait`.
async fn exchange(addr: SocketAddr, bytes: &[u8], shut: bool, wait: Duration) -> Seen {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    // The server may refuse before reading everything: a failed write is
    // part of what is observed, not a test failure.
    let _ = tcp.write_all(bytes).await;
    if shut {
        let _ = tcp.shutdown().await;
    }
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + wait;
    let end = loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => break End::Open,
            Ok(Ok(0)) => break End::Closed,
            Ok(Ok(n)) => raw.extend_from_slice(&buf[..n]),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => break End::Reset,
            Ok(Err(e)) => panic!("read: {e}"),
        }
    };
    let text = String::from_utf8_lossy(&raw).into_owned();
    Seen {
        statuses: statuses(&text),
        text,
        end,
    }
}

/// The status of each response in `text` (bodies here are short JSON, never
/// holding a status line).
fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

async fn open_connections(admin: SocketAddr) -> Option<u64> {
    let text = String::from_utf8(get(admin, "/metrics", 5 * SEC).await.ok()?.body).ok()?;
    let sum = text
        .lines()
        .filter(|l| l.starts_with("lameduck_connections{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>();
    Some(sum as u64)
}

/// Waits (10 s at most) for the server's live connection count to be 0.
async fn connections_return_to_zero(server: &Child) {
    let admin = server.admin_addr.expect("admin address");
    let deadline = std::time::Instant::now() + 10 * SEC;
    let mut last = None;
    while std::time::Instant::now() < deadline {
        last = open_connections(admin).await;
        if last == Some(0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("connections still open: {last:?}");
}

fn no_panic(server: &Child) {
    let logs = server.logs();
    assert!(
        !logs.iter().any(|l| l.to_string().contains("panicked")),
        "a panic was logged: {logs:#?}"
    );
}

/// A request the server must refuse: a 400-class answer, then the
/// connection closed; the pipelined request after it is never answered.
const REFUSED: &[(&str, &[u8], u16)] = &[
    ("no method", b"/ping HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("bad method byte", b"G\x01T /ping HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("no version", b"GET /ping\r\nHost: t\r\n\r\n", 400),
    ("bad version", b"GET /ping HTTP/1.7\r\nHost: t\r\n\r\n", 400),
    ("NUL in the target", b"GET /pi\x00ng HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("space in a header name", b"GET /ping HTTP/1.1\r\nHost: t\r\nBad Name: x\r\n\r\n", 400),
    ("control byte in a value", b"GET /ping HTTP/1.1\r\nHost: t\r\nX: a\x01b\r\n\r\n", 400),
    ("header without colon", b"GET /ping HTTP/1.1\r\nHost: t\r\nNoColon\r\n\r\n", 400),
    ("obsolete line folding", b"GET /ping HTTP/1.1\r\nHost: t\r\nX: a\r\n b\r\n\r\n", 400),
    ("bare LF then junk", b"GET /ping HTTP/1.1\nHost: t\n\x7f\x7f\n\n", 400),
    (
        "two different Content-Lengths",
        b"POST /jobs HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\n{}\n",
        400,
    ),
    (
        "Content-Length not a number",
        b"POST /jobs HTTP/1.1\r\nHost: t\r\nContent-Length: 1e3\r\n\r\n",
        400,
    ),
    (
        "negative Content-Length",
        b"POST /jobs HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n",
        400,
    ),
    (
        "Transfer-Encoding not ending in chunked",
        b"POST /jobs HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "unknown Transfer-Encoding",
        b"POST /jobs HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        400,
    ),
];

// Each malformed request: refused with its status and the connection
// closed, so a request pipelined behind it is never seen; the server keeps
// serving others, its connection count returns to zero, it drains with 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused_and_closed() {
    let server = Child::serve(BIN, &[]);
    let addr = server.addr;
    for (name, bytes, status) in REFUSED {
        let mut raw = bytes.to_vec();
        raw.extend_from_slice(b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n");
        let seen = exchange(addr, &raw, false, 5 * SEC).await;
        assert_eq!(seen.statuses, vec![*status], "{name}: {seen:?}");
        assert_ne!(seen.end, End::Open, "{name}: left open: {seen:?}");
        assert!(!seen.text.contains("smuggled"), "{name}: {seen:?}");
        assert_eq!(
            get(addr, "/ping", 5 * SEC).await.unwrap().status,
            200,
            "{name}"
        );
    }
    connections_return_to_zero(&server).await;
    server.drains_cleanly();
}

// Content-Length and Transfer-Encoding together (the classic smuggling
// pair), and chunk sizes that overflow or exceed the body limit: either a
// refusal, or one answer with the connection closed: what the attacker
// hid in the body is never answered as a request of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_conflicts_cannot_smuggle() {
    let server = Child::serve(BIN, &[]);
    let addr = server.addr;
    let hidden = "GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n";
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "CL.TE",
            format!(
                "POST /jobs HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{hidden}",
                5 + hidden.len()
            )
            .into_bytes(),
        ),
        (
            "TE.CL",
            format!(
                "POST /jobs HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{:x}\r\n{hidden}\r\n0\r\n\r\n",
                hidden.len()
            )
            .into_bytes(),
        ),
        (
            "chunk size overflowing 64 bits",
            format!(
                "POST /jobs HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n{hidden}"
            )
            .into_bytes(),
        ),
        (
            // Refused once more than the body limit (64 KiB) has come.
            "chunk larger than the body limit",
            format!(
                "POST /jobs HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n7fffffff\r\n{hidden}{}",
                " ".repeat(70 * 1024)
            )
            .into_bytes(),
        ),
        (
            "bad chunk size",
            format!(
                "POST /jobs HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{hidden}"
            )
            .into_bytes(),
        ),
    ];
    for (name, bytes) in cases {
        let seen = exchange(addr, &bytes, false, 5 * SEC).await;
        assert!(!seen.text.contains("smuggled"), "{name}: {seen:?}");
        match seen.statuses.as_slice() {
            [] => assert_ne!(seen.end, End::Open, "{name}: no answer, left open"),
            [status] => {
                assert!((400..500).contains(status), "{name}: {seen:?}");
                assert_ne!(
                    seen.end,
                    End::Open,
                    "{name}: answered and left open: {seen:?}"
                );
            }
            more => panic!("{name}: several answers {more:?}: {seen:?}"),
        }
        assert_eq!(
            get(addr, "/ping", 5 * SEC).await.unwrap().status,
            200,
            "{name}"
        );
    }
    connections_return_to_zero(&server).await;
    server.drains_cleanly();
}

// Half-closed and reset connections: a request followed by the client's
// FIN is still answered; a connection reset before, during and after its
// request leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_closed_and_reset_connections() {
    let server = Child::serve(BIN, &[]);
    let addr = server.addr;

    let seen = exchange(
        addr,
        b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n",
        true,
        5 * SEC,
    )
    .await;
    assert_eq!(seen.statuses, vec![200], "{seen:?}");
    assert_eq!(seen.end, End::Closed, "{seen:?}");

    for (i, bytes) in [
        &b""[..],
        b"GET /ping HTTP/1.1\r\nHo",
        b"GET /slow?ms=300 HTTP/1.1\r\nHost: t\r\n\r\n",
        b"POST /jobs HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"kind\"",
    ]
    .iter()
    .enumerate()
    {
        for _ in 0..20 {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let mut tcp = tcp;
            tcp.write_all(bytes).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
            // SO_LINGER 0: close() sends RST.
            tcp.set_zero_linger().unwrap();
            drop(tcp);
        }
        assert_eq!(get(addr, "/ping", 5 * SEC).await.unwrap().status, 200, "case {i}");
    }
    // Nothing was enqueued from the cut job bodies.
    let counts = get(addr, "/jobs/counts", 5 * SEC).await.unwrap().json();
    assert_eq!(counts["pending"], 0, "{counts}");
    connections_return_to_zero(&server).await;
    server.drains_cleanly();
}

// Pipelined requests across a drain: every response that comes back is
// whole and in order, the last one says `Connection: close`, and the
// connection ends with a FIN, never a reset that would destroy answers the
// client has not read yet. Requests after the last answer were not handled
// (a client retries them, RFC 9112 §9.3.2): none of them was half-done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_across_a_drain() {
    let mut server = Child::serve(BIN, &["--drain-idle-grace", "200ms"]);
    let addr = server.addr;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut pipeline = Vec::new();
    pipeline.extend_from_slice(b"GET /slow?ms=600 HTTP/1.1\r\nHost: t\r\n\r\n");
    for _ in 0..20 {
        pipeline.extend_from_slice(b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n");
    }
    tcp.write_all(&pipeline).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.signal(SIGTERM);
    let mut raw = Vec::new();
    let read = timeout(10 * SEC, tcp.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let ended = read.expect("closed within 10 s");
    assert!(ended.is_ok(), "ended with {ended:?} after {text:?}");
    let got = statuses(&text);
    assert!(
        !got.is_empty(),
        "the request in progress was answered: {text:?}"
    );
    assert!(got.iter().all(|s| *s == 200), "{text:?}");
    // Every response is whole: as many bodies as status lines.
    let bodies = text.matches("\"slept_ms\":600").count() + text.matches("\r\n\r\npong").count();
    assert_eq!(bodies, got.len(), "{text:?}");
    let last = text.rsplit("HTTP/1.1 ").next().unwrap();
    assert!(
        last.to_ascii_lowercase().contains("connection: close"),
        "the last answer announces the close: {last:?}"
    );
    let status = server.expect_exit(30 * SEC);
    no_panic(&server);
    assert_eq!(status.code(), Some(0), "logs: {:#?}", server.logs());
}

// Dead WebSocket peers: 20 clients upgrade, send 16 MiB each to be echoed,
// and never read a byte, so the server's echoes (and pings) cannot be
// written. Each is dropped after the ping interval and pong timeout, its
// session and connection gone from the counts; the drain then ends with 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_websocket_peers_are_dropped() {
    let server = Child::serve(
        BIN,
        &["--ws-ping-interval", "200ms", "--ws-pong-timeout", "1s"],
    );
    let addr = server.addr;
    let admin = server.admin_addr.unwrap();
    let message = raw_ws::frame(0x82, &vec![7u8; 256 * 1024], false);
    let mut peers = Vec::new();
    for _ in 0..20 {
        let (mut tcp, head) = raw_ws::handshake(addr, None).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let message = message.clone();
        // Writes until the server stops reading (its echoes are stuck), for
        // 10 s at most; the socket is kept open, unread, until the end.
        peers.push(tokio::spawn(async move {
            let _ = timeout(10 * SEC, async {
                for _ in 0..64 {
                    if tcp.write_all(&message).await.is_err() {
                        break;
                    }
                }
            })
            .await;
            tcp
        }));
    }
    let before = rss_kib(server.pid());
    let deadline = std::time::Instant::now() + 20 * SEC;
    let mut text = String::new();
    while std::time::Instant::now() < deadline {
        text = String::from_utf8(get(admin, "/metrics", 5 * SEC).await.unwrap().body).unwrap();
        if text.contains("lameduck_connections{kind=\"websocket\"} 0")
            && text.contains("lameduck_connections{kind=\"http1\"} 0")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        text.contains("lameduck_connections{kind=\"websocket\"} 0"),
        "dead peers still held: {text}"
    );
    eprintln!(
        "server RSS with 20 stuck peers: {before} KiB; after they were dropped: {} KiB",
        rss_kib(server.pid())
    );
    connections_return_to_zero(&server).await;
    for peer in peers {
        drop(peer.await.unwrap());
    }
    server.drains_cleanly();
}
