//! The accept loop, and the hand-over from accepting to draining.

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::registry::Registry;
use crate::{handoff::Upgrades, lifecycle::Lifecycle};

/// What the accept loop works with.
pub(crate) struct Acceptor {
    pub(crate) lifecycle: Arc<Lifecycle>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) upgrades: Arc<Upgrades>,
}

/// Upper bound on connections taken from the kernel's queue once the drain
/// starts, so that a flood of new connections cannot keep the loop going.
const MAX_FROM_QUEUE: usize = 1 << 16;

/// Accepts until the drain starts, then takes every connection already in
/// the kernel's accept queue (they are served, with `Connection: close`,
/// instead of being reset when the listener closes), closes the listener,
/// and closes the connection tracker.
pub(crate) async fn run(
    listener: TcpListener,
    ctx: Acceptor,
    mut on_conn: impl FnMut(TcpStream, SocketAddr, bool),
) {
    loop {
        tokio::select! {
            biased;
            () = ctx.registry.accepting_stopped() => break,
            res = listener.accept() => match res {
                Ok((stream, peer)) => {
                    if over_limit(&ctx) {
                        reject(stream, &ctx);
                    } else {
                        on_conn(stream, peer, false);
                    }
                }
                Err(err) if is_connection_error(&err) => {}
                Err(err) => {
                    // Out of file descriptors, most likely: retrying at once
                    // would spin. Connections wait in the queue meanwhile.
                    tracing::error!(error = %err, "accept.error");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                        () = ctx.registry.accepting_stopped() => break,
                    }
                }
            },
        }
    }

    let from_queue = match listener.into_std() {
        Ok(listener) => {
            let taken = drain_queue(&listener, &ctx, &mut on_conn);
            // The copy kept for upgrades goes with our listener (the socket
            // stays open only in a successor, if there is one).
            ctx.upgrades.release_socket();
            taken
        }
        Err(err) => {
            tracing::error!(error = %err, "accept.queue_error");
            0
        }
    };
    // Logged before the drain hears of it: the drain may end at once, and
    // its `shutdown.complete` must come after this line.
    tracing::info!(accepted_from_queue = from_queue, "shutdown.listener_closed");
    ctx.registry.listener_is_closed();
}

/// Accepts, with real non-blocking syscalls (the reactor's readiness could be
/// stale), until the queue is empty.
fn drain_queue(
    listener: &std::net::TcpListener,
    ctx: &Acceptor,
    on_conn: &mut impl FnMut(TcpStream, SocketAddr, bool),
) -> usize {
    let mut taken = 0;
    while taken < MAX_FROM_QUEUE {
        match listener.accept() {
            Ok((stream, peer)) => {
                let stream = stream
                    .set_nonblocking(true)
                    .and_then(|()| TcpStream::from_std(stream));
                match stream {
                    Ok(stream) if over_limit(ctx) => reject(stream, ctx),
                    Ok(stream) => {
                        taken += 1;
                        on_conn(stream, peer, true);
                    }
                    Err(err) => tracing::warn!(error = %err, "accept.queue_error"),
                }
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
            Err(err) if is_connection_error(&err) => {}
            Err(err) => {
                tracing::error!(error = %err, "accept.queue_error");
                break;
            }
        }
    }
    taken
}

/// Whether the server holds `max_connections` already.
fn over_limit(ctx: &Acceptor) -> bool {
    ctx.lifecycle
        .config()
        .max_connections
        .is_some_and(|max| ctx.registry.open() >= max)
}

/// Rejections being written at once; past this, a connection over the limit
/// is just closed (a flood must not make the server spawn without bound).
const MAX_REJECTING: usize = 1024;
static REJECTING: AtomicUsize = AtomicUsize::new(0);

const REJECTION: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
    Retry-After: 1\r\n\
    Content-Type: application/json\r\n\
    Content-Length: 52\r\n\
    Connection: close\r\n\r\n\
    {\"error\":\"too many connections; retry in a second\"}\n";

/// Answers a connection over `max_connections` with 503 and closes it,
/// without counting it as one of the server's connections. The response is
/// followed by a FIN, and what the client sends is read and dropped until it
/// closes (2 s at most), so that closing does not turn into a reset that
/// would destroy the response before the client reads it.
fn reject(mut stream: TcpStream, ctx: &Acceptor) {
    let n = ctx.lifecycle.stats().conn_rejected();
    if n.is_power_of_two() {
        tracing::warn!(
            rejected = n,
            max_connections = ctx.lifecycle.config().max_connections,
            "conn.limit_reached"
        );
    }
    if REJECTING.fetch_add(1, Ordering::Relaxed) >= MAX_REJECTING {
        REJECTING.fetch_sub(1, Ordering::Relaxed);
        return;
    }
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            stream.write_all(REJECTION).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 1024];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<_, io::Error>(())
        })
        .await;
        REJECTING.fetch_sub(1, Ordering::Relaxed);
    });
}

/// Errors that concern one connection, not the listener.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}
