//! The drain contract of ARCHITECTURE.md, checked on the real binary: real
//! sockets on 127.0.0.1, real signals, every wait bounded, the child killed
//! whatever happens (`Child` kills on drop).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt, future::join_all};
use lameduck_test_support::{Child, EXIT_FORCED, KeepAlive, Outcome, get, raise_fd_limit};
use nix::sys::signal::Signal::SIGTERM;
use tokio::{io::AsyncReadExt, io::AsyncWriteExt, net::TcpStream, time::timeout};
use tokio_tungstenite::{WebSocketStream, client_async, tungstenite::Message};

const BIN: &str = env!("CARGO_BIN_EXE_lameduck");
const SEC: Duration = Duration::from_secs(1);

type Ws = WebSocketStream<TcpStream>;

/// The drain's events came in the contract's order (ARCHITECTURE.md):
/// begin, listener closed, draining, complete. (`shutdown.complete` was
/// once logged before `shutdown.listener_closed`.)
fn assert_contract_order(server: &Child) {
    let names: Vec<String> = server
        .logs()
        .iter()
        .filter_map(|l| l["message"].as_str())
        .filter(|m| m.starts_with("shutdown."))
        .map(str::to_owned)
        .collect();
    let pos = |name: &str| {
        names
            .iter()
            .position(|m| m == name)
            .unwrap_or_else(|| panic!("no {name} in {names:?}"))
    };
    let order = [
        "shutdown.begin",
        "shutdown.listener_closed",
        "shutdown.draining",
        "shutdown.complete",
    ];
    for pair in order.windows(2) {
        assert!(
            pos(pair[0]) < pos(pair[1]),
            "{pair:?} out of order: {names:?}"
        );
    }
}

async fn ws_connect(addr: SocketAddr) -> Ws {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (ws, res) = timeout(10 * SEC, client_async(format!("ws://{addr}/ws"), tcp))
        .await
        .expect("handshake in time")
        .expect("handshake");
    assert_eq!(res.status(), 101);
    ws
}

/// How a WebSocket ended, from the client's side.
#[derive(Debug, PartialEq)]
enum WsEnd {
    /// A Close frame with this code, and the closing handshake completed.
    Close(u16),
    /// End of stream or error without a Close frame.
    Abrupt(String),
}

/// Reads until the server's Close (answering it), returning the data
/// messages seen and how the socket ended.
async fn ws_read_to_close(
    rx: &mut (impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
    limit: Duration,
) -> (Vec<String>, WsEnd) {
    let mut seen = Vec::new();
    let read = async {
        loop {
            match rx.next().await {
                Some(Ok(Message::Text(t))) => seen.push(t.to_string()),
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map(|f| u16::from(f.code)).unwrap_or(1005);
                    // Reading on sends our reply Close and sees the end.
                    let _ = timeout(5 * SEC, async {
                        while let Some(Ok(_)) = rx.next().await {}
                    })
                    .await;
                    return WsEnd::Close(code);
                }
                Some(Ok(_)) => {}
                Some(Err(err)) => return WsEnd::Abrupt(err.to_string()),
                None => return WsEnd::Abrupt("end of stream without Close".into()),
            }
        }
    };
    let end = timeout(limit, read)
        .await
        .unwrap_or_else(|_| WsEnd::Abrupt("no Close in time".into()));
    (seen, end)
}

// Idle keep-alive connections and idle WebSockets are all closed by
// the server (WebSockets with Close 1001), and the drain completes without
// forcing anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_cleanly() {
    raise_fd_limit(8192);
    let mut server = Child::serve(BIN, &["--drain-timeout", "30s"]);
    let addr = server.addr;

    let mut http = Vec::new();
    for _ in 0..200 {
        let mut conn = KeepAlive::connect(addr).await.unwrap();
        match conn.get("/ping", 10 * SEC).await {
            Outcome::Ok(res) => assert_eq!(res.status, 200),
            other => panic!("warm-up request failed: {other:?}"),
        }
        http.push(conn);
    }
    let mut sockets = Vec::new();
    for _ in 0..200 {
        sockets.push(ws_connect(addr).await);
    }

    server.signal(SIGTERM);

    let ends = join_all(sockets.iter_mut().map(|ws| ws_read_to_close(ws, 20 * SEC))).await;
    for (i, (_, end)) in ends.iter().enumerate() {
        assert_eq!(*end, WsEnd::Close(1001), "websocket {i}");
    }
    let closed = join_all(http.iter_mut().map(|c| c.closed_by_server(20 * SEC))).await;
    assert!(
        closed.iter().all(|c| *c),
        "{} of 200 HTTP connections left open",
        closed.iter().filter(|c| !**c).count()
    );

    let status = server.expect_exit(40 * SEC);
    assert_eq!(status.code(), Some(0), "logs: {:#?}", server.logs());
    let complete = server.expect_event("shutdown.complete", SEC);
    assert_eq!(complete["cut"], 0);
    assert_eq!(complete["upgrades"], 200);
    assert_contract_order(&server);
}

// Requests in flight when SIGTERM arrives all complete with 200, and
// the process exits after them, with code 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_complete() {
    raise_fd_limit(8192);
    let mut server = Child::serve(BIN, &["--drain-timeout", "30s"]);
    let addr = server.addr;

    let requests: Vec<_> = (0..50)
        .map(|_| tokio::spawn(async move { get(addr, "/slow?ms=3000", 20 * SEC).await }))
        .collect();
    tokio::time::sleep(SEC).await;
    server.signal(SIGTERM);

    for (i, res) in join_all(requests).await.into_iter().enumerate() {
        let res = res.unwrap().unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(res.status, 200, "request {i}");
        assert!(
            res.closes(),
            "request {i} answered without Connection: close during the drain"
        );
    }
    // Every answer came from the draining process, so it exited after them;
    // exit 0 and `cut: 0` say it cut nothing to get there.
    assert_eq!(server.expect_exit(40 * SEC).code(), Some(0));
    let complete = server.expect_event("shutdown.complete", SEC);
    assert_eq!(complete["cut"], 0);
    assert_eq!(complete["requests"], 50);
    assert_contract_order(&server);
}

// Keep-alive clients looping /ping lose nothing across SIGTERM; once
// the listener is closed, the only error is a refused connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_lost_under_load() {
    raise_fd_limit(8192);
    let mut server = Child::serve(BIN, &["--drain-timeout", "30s"]);
    let addr = server.addr;

    #[derive(Debug, Default)]
    struct Tally {
        ok: u64,
        lost: Vec<String>,
        not_sent: u64,
        refused: bool,
    }
    let clients: Vec<_> = (0..32)
        .map(|_| {
            tokio::spawn(async move {
                let mut tally = Tally::default();
                let deadline = Instant::now() + 30 * SEC;
                'connect: while Instant::now() < deadline {
                    let mut conn = match KeepAlive::connect(addr).await {
                        Ok(conn) => conn,
                        Err(err) => {
                            assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
                            tally.refused = true;
                            break;
                        }
                    };
                    for _ in 0..1_000_000 {
                        if Instant::now() >= deadline {
                            break 'connect;
                        }
                        match conn.get("/ping", 10 * SEC).await {
                            Outcome::Ok(res) => {
                                assert_eq!(res.status, 200);
                                tally.ok += 1;
                                if res.closes() {
                                    continue 'connect;
                                }
                            }
                            Outcome::NotSent(_) => {
                                tally.not_sent += 1;
                                continue 'connect;
                            }
                            Outcome::Lost(why) | Outcome::Cut(why) => {
                                tally.lost.push(why);
                                continue 'connect;
                            }
                        }
                    }
                }
                tally
            })
        })
        .collect();

    tokio::time::sleep(SEC).await;
    server.signal(SIGTERM);
    let tallies: Vec<Tally> = join_all(clients)
        .await
        .into_iter()
        .map(|t| t.unwrap())
        .collect();
    let status = server.expect_exit(40 * SEC);
    assert_contract_order(&server);

    let ok: u64 = tallies.iter().map(|t| t.ok).sum();
    let lost: Vec<_> = tallies.iter().flat_map(|t| t.lost.clone()).collect();
    assert!(lost.is_empty(), "{} requests lost: {lost:?}", lost.len());
    assert!(ok > 32, "only {ok} requests served");
    assert!(
        tallies.iter().all(|t| t.refused),
        "every client ends refused by the closed listener"
    );
    assert_eq!(status.code(), Some(0));
}

// WebSocket clients sending a numbered message every 50 ms get, on
// SIGTERM, the echoes of what the server read (in order, no gap), then
// Close 1001; none is cut without a Close frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_traffic_ends_with_close_1001() {
    raise_fd_limit(8192);
    let mut server = Child::serve(BIN, &["--drain-timeout", "30s"]);
    let addr = server.addr;

    let clients: Vec<_> = (0..100)
        .map(|_| {
            tokio::spawn(async move {
                let ws = ws_connect(addr).await;
                let (mut tx, mut rx) = ws.split();
                let stop = Arc::new(AtomicBool::new(false));
                let writer = {
                    let stop = stop.clone();
                    tokio::spawn(async move {
                        let mut sent = 0u64;
                        for n in 1..=1200u64 {
                            if stop.load(Ordering::Relaxed)
                                || tx.send(Message::text(n.to_string())).await.is_err()
                            {
                                break;
                            }
                            sent = n;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        sent
                    })
                };
                let (echoes, end) = ws_read_to_close(&mut rx, 40 * SEC).await;
                stop.store(true, Ordering::Relaxed);
                let sent = writer.await.unwrap();
                (echoes, end, sent)
            })
        })
        .collect();

    tokio::time::sleep(2 * SEC).await;
    server.signal(SIGTERM);

    for (i, client) in join_all(clients).await.into_iter().enumerate() {
        let (echoes, end, sent) = client.unwrap();
        assert_eq!(end, WsEnd::Close(1001), "client {i}");
        assert!(!echoes.is_empty(), "client {i} got no echo");
        let expected: Vec<String> = (1..=echoes.len() as u64).map(|n| n.to_string()).collect();
        assert_eq!(
            echoes, expected,
            "client {i}: echoes out of order or with gaps"
        );
        assert!(echoes.len() as u64 <= sent);
    }
    assert_eq!(server.expect_exit(40 * SEC).code(), Some(0));
}

// SSE streams end with `event: drain` and a proper end of the
// chunked response, and the drain completes by itself (exit 0, not forced).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_end_with_drain_event() {
    raise_fd_limit(8192);
    let mut server = Child::serve(BIN, &["--drain-timeout", "30s"]);
    let addr = server.addr;

    let mut streams = Vec::new();
    for _ in 0..50 {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(
            b"GET /events?interval_ms=50 HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n",
        )
        .await
        .unwrap();
        streams.push(tcp);
    }
    tokio::time::sleep(SEC).await;
    server.signal(SIGTERM);

    let bodies = join_all(streams.iter_mut().map(|tcp| async move {
        let mut raw = Vec::new();
        let read = timeout(20 * SEC, tcp.read_to_end(&mut raw)).await;
        (
            read.map(|r| r.is_ok()).unwrap_or(false),
            String::from_utf8_lossy(&raw).into_owned(),
        )
    }))
    .await;
    for (i, (ended, raw)) in bodies.iter().enumerate() {
        assert!(ended, "stream {i} neither ended nor closed cleanly: {raw}");
        assert!(raw.starts_with("HTTP/1.1 200"), "stream {i}: {raw}");
        assert!(raw.contains("id: 1\n"), "stream {i} had no events");
        assert!(
            raw.contains("event: drain\n"),
            "stream {i} had no drain event"
        );
        assert!(raw.contains("retry: "), "stream {i} had no retry hint");
        assert!(
            raw.ends_with("0\r\n\r\n"),
            "stream {i} not terminated as a chunked body"
        );
    }
    assert_eq!(server.expect_exit(40 * SEC).code(), Some(0));
    assert_eq!(
        server.expect_event("shutdown.complete", SEC)["sse_streams"],
        50
    );
}

// A request longer than the drain timeout is cut at the deadline;
// the exit code says so, and shutdown.complete counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_forces_and_reports() {
    let mut server = Child::serve(BIN, &["--drain-timeout", "2s"]);
    let addr = server.addr;
    let slow = tokio::spawn(async move {
        let mut conn = KeepAlive::connect(addr).await.unwrap();
        conn.get("/slow?ms=60000", 30 * SEC).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let signalled = Instant::now();
    server.signal(SIGTERM);
    let status = server.expect_exit(20 * SEC);
    assert!(signalled.elapsed() >= 2 * SEC, "forced before the deadline");
    assert_eq!(status.code(), Some(EXIT_FORCED));
    let complete = server.expect_event("shutdown.complete", SEC);
    assert_eq!(complete["cut"], 1);
    assert_eq!(complete["outcome"], "forced");
    assert!(matches!(slow.await.unwrap(), Outcome::Lost(_)));
}

// A second SIGTERM during the drain forces at once, long before the
// 60 s deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_signal_forces() {
    let mut server = Child::serve(BIN, &["--drain-timeout", "60s"]);
    let addr = server.addr;
    let _slow = tokio::spawn(async move {
        let mut conn = KeepAlive::connect(addr).await.unwrap();
        conn.get("/slow?ms=60000", 70 * SEC).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.signal(SIGTERM);
    server.expect_event("shutdown.draining", 10 * SEC);
    server.signal(SIGTERM);
    let status = server.expect_exit(20 * SEC);
    assert_eq!(status.code(), Some(EXIT_FORCED));
    assert_eq!(server.events("shutdown.second_signal").len(), 1);
    assert_eq!(
        server.expect_event("shutdown.forcing", SEC)["why"],
        "forced"
    );
}

// During the announce period /readyz answers 503 at once while /ping
// keeps answering, new connections included; then the listener closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announce_keeps_serving_while_not_ready() {
    let mut server = Child::serve(BIN, &["--drain-announce", "2s", "--drain-timeout", "10s"]);
    let addr = server.addr;
    assert_eq!(get(addr, "/readyz", 5 * SEC).await.unwrap().status, 200);

    server.signal(SIGTERM);
    server.expect_event("shutdown.begin", 10 * SEC);
    let ready = get(addr, "/readyz", 5 * SEC).await.unwrap();
    assert_eq!(ready.status, 503);
    assert_eq!(get(addr, "/livez", 5 * SEC).await.unwrap().status, 200);

    // New connections keep being served until the listener closes; a
    // refused one is allowed only once the server says it closed it.
    let mut pings = 0;
    for _ in 0..200 {
        match get(addr, "/ping", 5 * SEC).await {
            Ok(res) => {
                assert_eq!(res.status, 200);
                if res.closes() {
                    // Allowed only for a connection the drain reached (one
                    // taken from the accept queue as the listener closed).
                    server.expect_event("shutdown.draining", 5 * SEC);
                }
                pings += 1;
            }
            Err(err) => {
                assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
                server.expect_event("shutdown.listener_closed", 5 * SEC);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(pings > 0, "no /ping during the announce period");
    server.expect_event("shutdown.listener_closed", 10 * SEC);
    let refused = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    assert_eq!(server.expect_exit(20 * SEC).code(), Some(0));
}

// HTTP/2 (h2c, prior knowledge): the in-flight stream finishes, and
// the client is told GOAWAY: no new stream is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_goaway_lets_streams_finish() {
    let mut server = Child::serve(BIN, &["--drain-timeout", "20s"]);
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();

    let request = http::Request::get(format!("http://{}/slow?ms=2000", server.addr))
        .body(())
        .unwrap();
    let (in_flight, _) = client.send_request(request, true).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.signal(SIGTERM);
    server.expect_event("shutdown.draining", 10 * SEC);

    let response = timeout(10 * SEC, in_flight).await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = timeout(10 * SEC, body.data()).await.unwrap() {
        bytes.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(String::from_utf8_lossy(&bytes), r#"{"slept_ms":2000}"#);

    // The connection ends by the server's GOAWAY, not an error.
    let ended = timeout(10 * SEC, driver)
        .await
        .expect("connection ended")
        .unwrap();
    assert!(ended.is_ok(), "connection error: {ended:?}");
    let late = http::Request::get(format!("http://{}/ping", server.addr))
        .body(())
        .unwrap();
    let refused = match client.send_request(late, true) {
        Err(err) => Some(err),
        Ok((res, _)) => timeout(5 * SEC, res).await.unwrap().err(),
    };
    assert!(refused.is_some(), "a new stream was accepted after GOAWAY");
    assert_eq!(server.expect_exit(30 * SEC).code(), Some(0));
}

// Heartbeat: a peer that stops reading (so never answers pings) is dropped
// after the pong timeout, without waiting for any drain; a peer that reads
// (tungstenite answers pings as it reads) stays connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_heartbeat_drops_dead_peers() {
    let mut server = Child::serve(
        BIN,
        &[
            "--ws-ping-interval",
            "200ms",
            "--ws-pong-timeout",
            "500ms",
            "--drain-timeout",
            "10s",
        ],
    );
    let mut dead = ws_connect(server.addr).await;
    let mut alive = ws_connect(server.addr).await;

    // `alive` reads (and so answers pings) for 2 s; `dead` reads nothing.
    let reader = async {
        let mut pings = 0;
        let _ = timeout(2 * SEC, async {
            while let Some(Ok(msg)) = alive.next().await {
                if matches!(msg, Message::Ping(_)) {
                    pings += 1;
                }
            }
        })
        .await;
        pings
    };
    let pings = reader.await;
    assert!(pings >= 2, "live peer saw only {pings} pings");

    // The dead peer's socket was dropped by the server: what is buffered is
    // pings, then the end of the stream, with no Close frame.
    let mut pings_to_dead = 0;
    let end = timeout(5 * SEC, async {
        loop {
            match dead.next().await {
                Some(Ok(Message::Ping(_))) => pings_to_dead += 1,
                Some(Ok(other)) => return format!("unexpected {other:?}"),
                Some(Err(_)) | None => return "ended".to_owned(),
            }
        }
    })
    .await
    .expect("the dead peer's socket is closed by the server");
    assert_eq!(end, "ended");
    assert!(pings_to_dead >= 1);

    // The live one is still served, and gets its Close 1001 on drain.
    alive.send(Message::text("still here")).await.unwrap();
    server.signal(SIGTERM);
    let (echoes, end) = ws_read_to_close(&mut alive, 10 * SEC).await;
    assert_eq!(echoes, vec!["still here".to_owned()]);
    assert_eq!(end, WsEnd::Close(1001));
    assert_eq!(server.expect_exit(20 * SEC).code(), Some(0));
}

// The reference service's endpoints and its answers to bad input; bad flags
// are usage errors (exit 64), before anything listens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_service_endpoints_and_bad_input() {
    let mut server = Child::serve(BIN, &["--drain-timeout", "5s"]);
    let addr = server.addr;
    let ping = get(addr, "/ping", 5 * SEC).await.unwrap();
    assert_eq!((ping.status, ping.body.as_slice()), (200, &b"pong"[..]));

    let livez: serde_json::Value =
        serde_json::from_slice(&get(addr, "/livez", 5 * SEC).await.unwrap().body).unwrap();
    assert_eq!(livez["pid"], server.pid());

    for (path, status) in [
        ("/slow?ms=abc", 400),
        ("/slow?ms=600001", 400),
        ("/events?interval_ms=0", 400),
        ("/no/such/path", 404),
    ] {
        let res = get(addr, path, 5 * SEC).await.unwrap();
        assert_eq!(res.status, status, "{path}");
        assert_eq!(
            res.header("content-type"),
            Some("application/json"),
            "{path}"
        );
        let body: serde_json::Value = serde_json::from_slice(&res.body).unwrap();
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{path}: {body}"
        );
    }
    let res = get(addr, "/slow?ms=10", 5 * SEC).await.unwrap();
    assert_eq!(res.status, 200);

    // A Last-Event-ID that is not a number.
    let res = {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(
            b"GET /events HTTP/1.1\r\nHost: t\r\nLast-Event-ID: x1\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let mut raw = Vec::new();
        timeout(5 * SEC, tcp.read_to_end(&mut raw))
            .await
            .unwrap()
            .unwrap();
        String::from_utf8_lossy(&raw).into_owned()
    };
    assert!(res.starts_with("HTTP/1.1 400"), "{res}");

    server.signal(SIGTERM);
    assert_eq!(server.expect_exit(20 * SEC).code(), Some(0));

    for args in [
        &["serve", "--bogus"][..],
        &["serve", "--drain-timeout", "soon"],
        &["serve", "--log-format", "xml"],
        &["nope"],
    ] {
        let out = std::process::Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}: no message");
    }
}

// A server that closes a connection while its client is still sending
// must not answer with a reset: a reset makes the client's kernel throw
// away a response it has not read yet. Here the client asks with
// `Connection: close`, lets the server answer and close, sends more bytes
// (as an HTTP/2 client's last WINDOW_UPDATE or PING ack would), and only
// then reads: it must find the whole response and a clean end, and the
// server must still be reading (a second write goes through).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closing_connection_reads_on_instead_of_resetting() {
    let server = Child::serve(BIN, &[]);
    for round in 0..5 {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(b"GET /ping HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        // The server answers and closes its side meanwhile.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let late = tcp.write_all(&[b'x'; 1024]).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut response = Vec::new();
        let read = timeout(5 * SEC, tcp.read_to_end(&mut response))
            .await
            .expect("the server ended the connection");
        let text = String::from_utf8_lossy(&response);
        assert!(
            late.is_ok() && read.is_ok(),
            "round {round}: write {late:?}, read {read:?}, got {text:?}"
        );
        assert!(
            text.starts_with("HTTP/1.1 200") && text.ends_with("pong"),
            "round {round}: {text:?}"
        );
        let again = tcp.write_all(&[b'y'; 1024]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let again2 = tcp.write_all(&[b'z'; 1024]).await;
        assert!(
            again.is_ok() && again2.is_ok(),
            "round {round}: the server reset instead of reading on: {again:?} {again2:?}"
        );
    }
    server.drains_cleanly();
}
