//! WebSocket clients: the idle half of `idle`, and `websocket` (numbered
//! messages, each echoed before the next is sent).

use futures_util::{SinkExt, StreamExt};
use tokio::task::JoinSet;
use tokio_tungstenite::{
    WebSocketStream, client_async_with_config,
    tungstenite::{Message, protocol::WebSocketConfig},
};

use super::Ctx;
use crate::{
    record::{Class, Kind},
    wire::Conn,
};

type Ws = WebSocketStream<Conn>;

async fn open(ctx: &Ctx) -> Option<Ws> {
    let Ok(tcp) = ctx.dialer.connect().await else {
        ctx.rec.count(Class::Refused);
        return None;
    };
    let scheme = if ctx.dialer.is_tls() { "wss" } else { "ws" };
    let url = format!("{scheme}://{}{}", ctx.host, ctx.settings.ws);
    // The drill's messages are small, and it may hold thousands of idle
    // sockets: 4 KiB buffers, not the default 128 KiB each.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let handshake = client_async_with_config(url, tcp, Some(config));
    match tokio::time::timeout(ctx.settings.request_timeout, handshake).await {
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

/// `websocket` (and the WebSocket part of `restart`): each client sends `1`,
/// `2`, ... and waits for each echo. With `reconnect`, a client whose socket
/// ends opens a new one and resends the message that was not echoed, as a
/// real client would.
pub(super) async fn chat(ctx: &Ctx, clients: usize, reconnect: bool, tasks: &mut JoinSet<()>) {
    for _ in 0..clients {
        let first = open(ctx).await;
        if first.is_none() && !reconnect {
            continue;
        }
        let ctx = ctx.clone();
        tasks.spawn(async move {
            let mut next: u64 = 1;
            let mut had_session = first.is_some();
            let mut ws = first;
            while !ctx.stop.is_cancelled() {
                let mut sock = match ws.take() {
                    Some(sock) => sock,
                    None => match open(&ctx).await {
                        Some(sock) => {
                            if had_session {
                                ctx.rec.count(Class::Reconnect);
                            }
                            had_session = true;
                            sock
                        }
                        None if ctx.pause().await => continue,
                        None => break,
                    },
                };
                let next_before = next;
                let end = session(&ctx, &mut sock, &mut next).await;
                // Completes the closing handshake the server started.
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(1), sock.close(None)).await;
                record_end(&ctx, end);
                if !reconnect {
                    break;
                }
                // A socket closed before one echo (a server that refuses the
                // session, say) is not reopened in a tight loop.
                if (next == next_before) && !ctx.pause().await {
                    break;
                }
            }
        });
    }
}

/// One socket's messages, from `next` on, until it ends.
async fn session(ctx: &Ctx, ws: &mut Ws, next: &mut u64) -> End {
    loop {
        if ctx.stop.is_cancelled() {
            return End::Stopped;
        }
        if ws.send(Message::text(next.to_string())).await.is_err() {
            // Not written: the socket was already gone.
            return next_end(ws).await;
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
            Ok(Ok(text)) => {
                ctx.rec.count(if text.as_str() == next.to_string() {
                    Class::WsEchoed
                } else {
                    Class::WsUnechoed
                });
                *next += 1;
            }
            Ok(Err(end)) => {
                ctx.rec.count(match end {
                    End::Closed(_) => Class::WsCrossed,
                    _ => Class::WsUnechoed,
                });
                return end;
            }
            Err(_) => {
                ctx.rec.count(Class::WsUnechoed);
                return End::Abrupt;
            }
        }
        // Between messages, still read: a Close that comes now ends the
        // session before another message is sent into it.
        let pause = tokio::time::sleep(ctx.settings.ws_interval);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                () = &mut pause => break,
                () = ctx.stop.cancelled() => return End::Stopped,
                msg = ws.next() => match msg {
                    Some(Ok(Message::Close(frame))) => {
                        return End::Closed(frame.map_or(1005, |f| u16::from(f.code)));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return End::Abrupt,
                },
            }
        }
    }
}
