//! The `Drain` a handler gets is its own server's, found without a request
//! extension (`Drain::current`, set for the task that polls the
//! application's future): it follows the server's phase, and is absent in
//! tasks the handler spawns and outside any request. Real loopback sockets,
//! every wait bounded.

use std::time::Duration;

use axum::{Router, routing::get};
use lameduck::{Config, Drain, DrainReason, Server};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};

const SEC: Duration = Duration::from_secs(1);

/// `GET path` on a new connection; the response's body.
async fn body(addr: std::net::SocketAddr, path: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut text = String::new();
    timeout(5 * SEC, tcp.read_to_string(&mut text))
        .await
        .expect("an answer in time")
        .unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_get_their_servers_drain_without_an_extension() {
    let app = Router::new()
        .route(
            "/phase",
            get(|drain: Drain| async move { format!("{:?}", drain.phase()) }),
        )
        .route(
            "/current",
            get(|| async {
                let here = Drain::current().is_some();
                let spawned = tokio::spawn(async { Drain::current().is_some() })
                    .await
                    .unwrap();
                format!("{here} {spawned}")
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = Config::default().drain_announce(Duration::from_secs(3));
    let server = Server::with_config(listener, config).without_signals();
    let handle = server.handle();
    let served = tokio::spawn(server.serve(app));

    assert_eq!(body(addr, "/phase").await, "Serving");
    assert_eq!(
        body(addr, "/current").await,
        "true false",
        "in the handler, not in what it spawns"
    );
    assert!(Drain::current().is_none(), "not outside a request");

    // The announce period still accepts and serves: the handler's Drain
    // is the server's, so it sees the phase move.
    handle.drain(DrainReason::Requested("test".into()));
    assert_eq!(body(addr, "/phase").await, "Announcing");

    let report = timeout(20 * SEC, served)
        .await
        .expect("the drain ends")
        .unwrap()
        .unwrap();
    assert_eq!(report.cut, 0);
}
