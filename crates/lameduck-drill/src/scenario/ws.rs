//! WebSocket clients: the idle half of `idle`, and `websocket` (numbered
//! messages, each echoed before the next is sent).

use futures_util::{SinkExt, StreamExt};
use tokio::{net::TcpStream, task::JoinSet};
use tokio_tungstenite::{WebSocketStream, client_async, tungstenite::Message};

use super::Ctx;
use crate::record::{Class, Kind};

type Ws = WebSocketStream<TcpStream>;

async fn open(ctx: &Ctx) -> Option<Ws> {
    let Ok(tcp) = TcpStream::connect(ctx.addr).await else {
        ctx.rec.count(Class::Refused);
        return None;
    };
    let url = format!("ws://{}{}", ctx.addr, ctx.settings.ws);
    match tokio::time::timeout(ctx.settings.request_timeout, client_async(url, tcp)).await {
        Ok(Ok((ws, _))) => {
            ctx.rec.open(Kind::Ws, 1);
            Some(ws)
        }
        // The handshake is a request: written, and no 101 came back.
        _ => {
            ctx.rec.count(Class::Lost);
            None
        }
    }
}

/// How a socket ended, from the server's side.
enum End {
    Closed(u16),
    Abrupt,
    Stopped,
}

fn record_end(ctx: &Ctx, end: End) {
    match end {
        End::Closed(code) => ctx.rec.close_code(code),
        End::Abrupt => ctx.rec.count(Class::WsAbrupt),
        End::Stopped => {}
    }
    ctx.rec.open(Kind::Ws, -1);
}

/// Reads until the server's Close (pings are answered by reading).
async fn next_end(ws: &mut Ws) -> End {
    loop {
        match ws.next().await {
            Some(Ok(Message::Close(frame))) => {
                return End::Closed(frame.map_or(1005, |f| u16::from(f.code)));
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return End::Abrupt,
        }
    }
}

/// The WebSocket half of `idle`.
pub(super) async fn idle(ctx: &Ctx, tasks: &mut JoinSet<()>) {
    for _ in 0..ctx.settings.idle_ws {
        let Some(mut ws) = open(ctx).await else {
            continue;
        };
        let ctx = ctx.clone();
        tasks.spawn(async move {
            let end = tokio::select! {
                end = next_end(&mut ws) => end,
                () = ctx.stop.cancelled() => End::Stopped,
            };
            // Completes the closing handshake the server started.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), ws.close(None)).await;
            record_end(&ctx, end);
        });
    }
}

/// `websocket`: each client sends `1`, `2`, ... and waits for each echo.
pub(super) async fn chat(ctx: &Ctx, tasks: &mut JoinSet<()>) {
    for _ in 0..ctx.settings.ws_clients {
        let Some(mut ws) = open(ctx).await else {
            continue;
        };
        let ctx = ctx.clone();
        tasks.spawn(async move {
            let mut n: u64 = 0;
            let end = loop {
                if ctx.stop.is_cancelled() {
                    break End::Stopped;
                }
                n += 1;
                if ws.send(Message::text(n.to_string())).await.is_err() {
                    // Not written: the socket was already gone.
                    break next_end(&mut ws).await;
                }
                let echo = tokio::time::timeout(ctx.settings.request_timeout, async {
                    loop {
                        match ws.next().await {
                            Some(Ok(Message::Text(t))) => return Ok(t),
                            Some(Ok(Message::Close(frame))) => {
                                return Err(End::Closed(frame.map_or(1005, |f| u16::from(f.code))));
                            }
                            Some(Ok(_)) => {}
                            Some(Err(_)) | None => return Err(End::Abrupt),
                        }
                    }
                })
                .await;
                match echo {
                    Ok(Ok(text)) if text.as_str() == n.to_string() => {
                        ctx.rec.count(Class::WsEchoed)
                    }
                    Ok(Ok(_)) => ctx.rec.count(Class::WsUnechoed),
                    Ok(Err(end)) => {
                        ctx.rec.count(match end {
                            End::Closed(_) => Class::WsCrossed,
                            _ => Class::WsUnechoed,
                        });
                        break end;
                    }
                    Err(_) => {
                        ctx.rec.count(Class::WsUnechoed);
                        break End::Abrupt;
                    }
                }
                // Between messages, still read: a Close that comes now ends
                // the session before another message is sent into it.
                let pause = tokio::time::sleep(ctx.settings.ws_interval);
                tokio::pin!(pause);
                let ended = loop {
                    tokio::select! {
                        () = &mut pause => break None,
                        () = ctx.stop.cancelled() => break None,
                        msg = ws.next() => match msg {
                            Some(Ok(Message::Close(frame))) => {
                                break Some(End::Closed(frame.map_or(1005, |f| u16::from(f.code))));
                            }
                            Some(Ok(_)) => {}
                            Some(Err(_)) | None => break Some(End::Abrupt),
                        },
                    }
                };
                if let Some(end) = ended {
                    break end;
                }
            };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), ws.close(None)).await;
            record_end(&ctx, end);
        });
    }
}
