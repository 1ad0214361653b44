//! `WsSession` as an application uses it, on an in-process server over real
//! loopback sockets: `recv()` inside `select!` (a chat handler) loses no
//! message, and the close codes that depend on reading axum's errors as
//! tungstenite's are sent. Every wait bounded.

use std::time::Duration;

use axum::{Router, extract::ws::WebSocketUpgrade, response::Response, routing::get};
use futures_util::{SinkExt, StreamExt};
use lameduck::{Drain, DrainReason, Server, ws::WsSession};
use tokio::{net::TcpStream, time::timeout};
use tokio_tungstenite::tungstenite::{self as client, protocol::frame::coding::CloseCode};

const SEC: Duration = Duration::from_secs(1);

/// Serves `app` on a loopback port; returns the address and a handle.
async fn serve(app: Router) -> (std::net::SocketAddr, lameduck::Handle) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new(listener).without_signals();
    let handle = server.handle();
    tokio::spawn(server.serve(app));
    (addr, handle)
}

async fn connect(
    addr: std::net::SocketAddr,
    path: &str,
) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    timeout(
        10 * SEC,
        tokio_tungstenite::client_async(format!("ws://{addr}{path}"), tcp),
    )
    .await
    .expect("handshake in time")
    .expect("handshake")
    .0
}

// `recv()` is cancel-safe: a chat handler selects over it and a channel of
// messages from other tasks (here a timer firing every millisecond, so
// that `recv()` is dropped unfinished thousands of times). Every one of
// 2,000 numbered messages is echoed once, in order, and the drain still
// ends the session with Close 1001.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recv_in_select_loses_no_message() {
    let app = Router::new().route(
        "/chat",
        get(|upgrade: WebSocketUpgrade, drain: Drain| async move {
            let response: Response = upgrade.on_upgrade(|socket| async move {
                let mut ws = WsSession::new(socket, drain);
                let mut ticks = tokio::time::interval(Duration::from_millis(1));
                let mut ticked = 0u64;
                loop {
                    tokio::select! {
                        msg = ws.recv() => match msg {
                            Some(msg) => {
                                if ws.send(msg).await.is_err() {
                                    break;
                                }
                            }
                            None => break,
                        },
                        _ = ticks.tick() => ticked += 1,
                    }
                }
                assert!(ticked > 0);
            });
            response
        }),
    );
    let (addr, handle) = serve(app).await;
    let client = connect(addr, "/chat").await;

    const N: u32 = 2_000;
    let (mut tx, mut rx) = client.split();
    let sender = tokio::spawn(async move {
        for i in 0..N {
            tx.send(client::Message::text(i.to_string())).await.unwrap();
            if i % 100 == 0 {
                // Let the timer interleave with the reads.
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }
        tx
    });
    for i in 0..N {
        let msg = timeout(10 * SEC, rx.next())
            .await
            .unwrap_or_else(|_| panic!("echo {i} in time"))
            .expect("an echo")
            .expect("no error");
        assert_eq!(msg.into_text().unwrap().as_str(), i.to_string());
    }
    let _tx = sender.await.unwrap();

    handle.drain(DrainReason::Requested("test".into()));
    let close = timeout(10 * SEC, rx.next())
        .await
        .expect("closed in time")
        .expect("a Close frame")
        .expect("no error");
    match close {
        client::Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected Close 1001, got {other:?}"),
    }
}

// The close codes for refused input (1009 too big, 1007 bad UTF-8, 1002
// protocol error) come from reading axum's WebSocket errors as
// `tungstenite::Error`. If axum ever uses another tungstenite than the one
// lameduck names in its Cargo.toml, that reading fails and the session
// ends without them: this test fails then (a message over axum's limit
// must get 1009).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_codes_read_axums_own_tungstenite_errors() {
    let app = Router::new().route(
        "/small",
        get(|upgrade: WebSocketUpgrade, drain: Drain| async move {
            let response: Response = upgrade
                .max_message_size(64)
                .on_upgrade(|socket| async move {
                    let mut ws = WsSession::new(socket, drain);
                    while let Some(msg) = ws.recv().await {
                        if ws.send(msg).await.is_err() {
                            break;
                        }
                    }
                });
            response
        }),
    );
    let (addr, _handle) = serve(app).await;
    let mut client = connect(addr, "/small").await;
    client.send(client::Message::text("small")).await.unwrap();
    let echo = timeout(10 * SEC, client.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echo, client::Message::text("small"));
    client
        .send(client::Message::text("x".repeat(1_000)))
        .await
        .unwrap();
    let close = timeout(10 * SEC, client.next())
        .await
        .expect("closed in time")
        .expect("a Close frame")
        .expect("no error");
    match close {
        client::Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Size),
        other => panic!("expected Close 1009, got {other:?}"),
    }
}

// Behind `Server`, an upgraded connection's small reads are served from a
// read-ahead (`server/io.rs`), so that `READ_BUFFER` (512 bytes) costs no
// extra system calls. Whatever the read-ahead holds must reach the reader
// whole and in order: messages of sizes around the buffer's and the
// read-ahead's (8 KiB) edges, one much larger, and a burst of 300 small
// ones written before any echo is read (many frames in one read) all come
// back byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_read_buffers_lose_no_byte() {
    let app = Router::new().route(
        "/echo",
        get(|upgrade: WebSocketUpgrade, drain: Drain| async move {
            let response: Response = upgrade
                .read_buffer_size(lameduck::ws::READ_BUFFER)
                .on_upgrade(|socket| {
                    let mut ws = WsSession::new(socket, drain);
                    async move {
                        while let Some(msg) = ws.recv().await {
                            if ws.send(msg).await.is_err() {
                                break;
                            }
                        }
                    }
                });
            response
        }),
    );
    let (addr, _handle) = serve(app).await;
    let mut client = connect(addr, "/echo").await;

    let payload = |len: usize, seed: usize| -> Vec<u8> {
        (0..len)
            .map(|i| ((i * 31 + seed * 7) % 251) as u8)
            .collect()
    };
    let sizes = [
        0, 1, 13, 511, 512, 513, 4_095, 4_096, 8_191, 8_192, 8_193, 20_000, 300_000,
    ];
    for (seed, &len) in sizes.iter().enumerate() {
        let sent = payload(len, seed);
        client
            .send(client::Message::binary(sent.clone()))
            .await
            .unwrap();
        let echo = timeout(10 * SEC, client.next())
            .await
            .unwrap_or_else(|_| panic!("echo of {len} bytes in time"))
            .expect("an echo")
            .expect("no error");
        assert_eq!(echo.into_data().as_ref(), &sent[..], "{len} bytes");
    }

    // A burst: the server reads many frames at once.
    const BURST: usize = 300;
    for i in 0..BURST {
        client
            .feed(client::Message::binary(payload(100 + i * 37 % 900, i)))
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    for i in 0..BURST {
        let echo = timeout(10 * SEC, client.next())
            .await
            .unwrap_or_else(|_| panic!("echo {i} of the burst in time"))
            .expect("an echo")
            .expect("no error");
        assert_eq!(
            echo.into_data().as_ref(),
            &payload(100 + i * 37 % 900, i)[..],
            "message {i} of the burst"
        );
    }
}
