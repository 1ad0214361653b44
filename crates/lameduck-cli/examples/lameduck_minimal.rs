//! The library alone, for the benchmark: `lameduck::Server` serving the very
//! same `service_fn` as `bare_hyper`, so the ratio between the two is the
//! cost of lameduck's connection tracking and nothing else.
//!
//! Usage: `lameduck_minimal [ADDR] [--no-header-timeout]`; prints
//! `listening ADDR`.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let mut config = lameduck::Config::default();
    if args.iter().any(|a| a == "--no-header-timeout") {
        config.header_read_timeout = None;
    }
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening {}", listener.local_addr()?);
    let service = tower::service_fn(|req: Request<Incoming>| async move {
        let res = if req.uri().path() == "/ping" {
            Response::new(Full::new(Bytes::from_static(b"pong")))
        } else {
            let mut res = Response::new(Full::new(Bytes::new()));
            *res.status_mut() = StatusCode::NOT_FOUND;
            res
        };
        Ok::<_, Infallible>(res)
    });
    lameduck::Server::with_config(listener, config)
        .serve(service)
        .await?;
    Ok(())
}
