//! A second benchmark baseline: the same `GET /ping` as `lameduck serve`,
//! through axum's own `axum::serve`, to tell axum's cost from lameduck's.
//!
//! Usage: `plain_axum [ADDR]` (default 127.0.0.1:0); prints `listening ADDR`.

use axum::{Router, routing::get};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening {}", listener.local_addr()?);
    let app = Router::new().route("/ping", get(|| async { "pong" }));
    axum::serve(listener, app).await
}
