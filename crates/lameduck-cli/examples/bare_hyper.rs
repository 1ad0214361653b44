//! The benchmark baseline: a bare hyper server (hyper-util's auto builder,
//! HTTP/1.1 + h2c) with the same `GET /ping` as `lameduck serve`, and no
//! drain logic at all.
//!
//! Usage: `bare_hyper [ADDR] [--tls CERT KEY]` (default 127.0.0.1:0; with
//! `--tls`, rustls through tokio-rustls, ALPN h2 and http/1.1); prints
//! `listening ADDR`.

use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};

#[path = "shared/ping.rs"]
mod shared;
#[path = "shared/tls.rs"]
mod tls;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = args
        .first()
        .filter(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let tls = tls::from_args(&args).map(tokio_rustls::TlsAcceptor::from);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening {}", listener.local_addr()?);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(_) => continue,
        };
        let _ = stream.set_nodelay(true);
        let tls = tls.clone();
        tokio::spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            let service = service_fn(shared::ping);
            let _ = match tls {
                None => {
                    builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await
                }
                Some(tls) => match tls.accept(stream).await {
                    Ok(stream) => {
                        builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), service)
                            .await
                    }
                    Err(_) => return,
                },
            };
        });
    }
}
