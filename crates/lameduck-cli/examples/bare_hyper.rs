//! The benchmark baseline: a bare hyper server (hyper-util's auto builder,
//! HTTP/1.1 + h2c) with the same `GET /ping` as `lameduck serve`, and no
//! drain logic at all.
//!
//! Usage: `bare_hyper [ADDR]` (default 127.0.0.1:0); prints `listening ADDR`.

use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};

#[path = "shared/ping.rs"]
mod shared;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening {}", listener.local_addr()?);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(_) => continue,
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service_fn(shared::ping))
                .await;
        });
    }
}
