//! WebSocket echo for the benchmark (`bench/ws.sh`): one axum Router served
//! by `lameduck::Server` with two echo routes behind the same upgrade, so
//! that their ratio is the cost of `WsSession` (its drain watch and
//! heartbeat) over axum's socket, which is tokio-tungstenite:
//!
//! - `/ws-session`: through `lameduck::ws::WsSession`;
//! - `/ws-raw`: axum's `WebSocket`, read and written directly.
//!
//! Usage: `ws_echo [ADDR]`; prints `listening ADDR`. Both routes use the
//! read buffer `lameduck serve` uses (4 KiB).

use axum::{
    Router,
    extract::ws::{WebSocket, WebSocketUpgrade},
    response::Response,
    routing::get,
};
use lameduck::{Drain, ws::WsSession};

const READ_BUFFER: usize = 4 * 1024;

async fn session(upgrade: WebSocketUpgrade, drain: Drain) -> Response {
    upgrade
        .read_buffer_size(READ_BUFFER)
        .on_upgrade(move |socket| async move {
            let mut ws = WsSession::new(socket, drain);
            while let Some(msg) = ws.recv().await {
                if ws.send(msg).await.is_err() {
                    break;
                }
            }
        })
}

async fn raw(upgrade: WebSocketUpgrade) -> Response {
    upgrade
        .read_buffer_size(READ_BUFFER)
        .on_upgrade(|mut socket: WebSocket| async move {
            while let Some(Ok(msg)) = socket.recv().await {
                if socket.send(msg).await.is_err() {
                    break;
                }
            }
        })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let app = Router::new()
        .route("/ws-session", get(session))
        .route("/ws-raw", get(raw));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening {}", listener.local_addr()?);
    lameduck::Server::new(listener).serve(app).await?;
    Ok(())
}
