//! WebSocket echo for the benchmark (`bench/ws.sh`): one axum Router served
//! by `lameduck::Server` with two echo routes behind the same upgrade, so
//! that their ratio is the cost of `WsSession` (its drain watch and
//! heartbeat) over axum's socket, which is tokio-tungstenite:
//!
//! - `/ws-session`: through `lameduck::ws::WsSession`;
//! - `/ws-raw`: axum's `WebSocket`, read and written directly.
//!
//! Usage: `ws_echo [ADDR]`; prints `listening ADDR`. `/ws-session` uses
//! the read buffer `lameduck serve` uses (`lameduck::ws::READ_BUFFER`, or
//! `WS_READ_BUFFER` bytes from the environment, for comparing sizes);
//! `/ws-raw` keeps 4 KiB, the size `serve` used before it read ahead.

use axum::{
    Router,
    extract::ws::{WebSocket, WebSocketUpgrade},
    response::Response,
    routing::get,
};
use lameduck::{Drain, ws::WsSession};

const RAW_READ_BUFFER: usize = 4 * 1024;

fn session_read_buffer() -> usize {
    std::env::var("WS_READ_BUFFER")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(lameduck::ws::READ_BUFFER)
}

async fn session(upgrade: WebSocketUpgrade, drain: Drain) -> Response {
    upgrade
        .read_buffer_size(session_read_buffer())
        .on_upgrade(move |socket| {
            let mut ws = WsSession::new(socket, drain);
            async move {
                while let Some(msg) = ws.recv().await {
                    if ws.send(msg).await.is_err() {
                        break;
                    }
                }
            }
        })
}

async fn raw(upgrade: WebSocketUpgrade) -> Response {
    upgrade
        .read_buffer_size(RAW_READ_BUFFER)
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
