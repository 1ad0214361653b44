//! A deliberately careless server, for showing what `lameduck drill`
//! catches: the same endpoints as `lameduck serve` (`/ping`, `/slow?ms=N`,
//! `/ws` echo, `/events`), on plain `axum::serve` with no signal handling,
//! so SIGTERM ends it at once, mid-request.
//!
//! Usage: `PORT=8080 careless` (default: a free port); prints
//! `listening ADDR`.

use std::{convert::Infallible, time::Duration};

use axum::{
    Router,
    extract::{
        Query,
        ws::{WebSocket, WebSocketUpgrade},
    },
    response::{
        IntoResponse,
        sse::{Event, Sse},
    },
    routing::get,
};
use futures_util::stream;

#[derive(serde::Deserialize)]
struct Slow {
    ms: Option<u64>,
}

async fn slow(Query(q): Query<Slow>) -> &'static str {
    tokio::time::sleep(Duration::from_millis(q.ms.unwrap_or(1000).min(60_000))).await;
    "slept"
}

async fn ws(upgrade: WebSocketUpgrade) -> impl IntoResponse {
    upgrade.on_upgrade(|mut socket: WebSocket| async move {
        while let Some(Ok(msg)) = socket.recv().await {
            if socket.send(msg).await.is_err() {
                break;
            }
        }
    })
}

async fn events() -> impl IntoResponse {
    let ticks = stream::unfold(0u64, |n| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let n = n + 1;
        Some((
            Ok::<_, Infallible>(Event::default().id(n.to_string()).data(n.to_string())),
            n,
        ))
    });
    Sse::new(ticks)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port = std::env::var("PORT").unwrap_or_else(|_| "0".into());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!("listening {}", listener.local_addr()?);
    let app = Router::new()
        .route("/ping", get(|| async { "pong" }))
        .route("/slow", get(slow))
        .route("/ws", get(ws))
        .route("/events", get(events));
    axum::serve(listener, app).await
}
