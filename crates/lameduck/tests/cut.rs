//! The deadline cuts what a handler holds even when the handler ignores the
//! drain: an upgraded socket parked in a read is woken and fails. In-process
//! server on a real loopback socket; every wait bounded.

use std::time::Duration;

use axum::{Router, extract::ws::WebSocketUpgrade, response::Response, routing::get};
use futures_util::StreamExt;
use lameduck::{Config, DrainReason, Server};
use tokio::{net::TcpStream, sync::oneshot, time::timeout};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_cuts_an_upgraded_socket_whose_handler_ignores_the_drain() {
    let (ended_tx, ended_rx) = oneshot::channel::<&'static str>();
    let ended_tx = std::sync::Arc::new(std::sync::Mutex::new(Some(ended_tx)));
    let app = Router::new().route(
        "/raw",
        get(move |upgrade: WebSocketUpgrade| {
            let ended_tx = ended_tx.clone();
            async move {
                let ended_tx = ended_tx.lock().unwrap().take();
                let response: Response = upgrade.on_upgrade(move |mut socket| async move {
                    // Never looks at the drain: reads until the socket fails.
                    let end = loop {
                        match socket.recv().await {
                            Some(Ok(_)) => continue,
                            Some(Err(_)) => break "error",
                            None => break "end",
                        }
                    };
                    if let Some(tx) = ended_tx {
                        let _ = tx.send(end);
                    }
                });
                response
            }
        }),
    );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = Config::default();
    config.drain_timeout = Duration::from_millis(500);
    let server = Server::with_config(listener, config).without_signals();
    let handle = server.handle();
    let serving = tokio::spawn(server.serve(app));

    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut client, _) = timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(format!("ws://{addr}/raw"), tcp),
    )
    .await
    .unwrap()
    .unwrap();
    // The handler is parked in its read before the drain begins.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(handle.counts().websocket, 1);

    handle.drain(DrainReason::Requested("test".into()));
    let report = timeout(Duration::from_secs(10), serving)
        .await
        .expect("drain ends")
        .unwrap()
        .unwrap();
    assert_eq!(report.cut, 1);
    assert_eq!(report.exit_code(), lameduck::EXIT_FORCED);

    // The handler saw its socket fail, so it let go of it.
    let end = timeout(Duration::from_secs(5), ended_rx)
        .await
        .expect("handler woken by the cut")
        .unwrap();
    assert_eq!(end, "error");
    assert_eq!(handle.counts().websocket, 0);
    // The client sees the end of the connection (no Close frame: it was cut).
    let next = timeout(Duration::from_secs(5), client.next())
        .await
        .expect("client sees the cut");
    assert!(!matches!(
        next,
        Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_)))
    ));
}
