//! The accept loop, and the hand-over from accepting to draining.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::{TcpListener, TcpStream};

use crate::lifecycle::Shared;

/// Upper bound on connections taken from the kernel's queue once the drain
/// starts, so that a flood of new connections cannot keep the loop going.
const MAX_FROM_QUEUE: usize = 1 << 16;

/// Accepts until the drain starts, then takes every connection already in
/// the kernel's accept queue (they are served, with `Connection: close`,
/// instead of being reset when the listener closes), closes the listener,
/// and closes the connection tracker.
pub(crate) async fn run(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut on_conn: impl FnMut(TcpStream, SocketAddr, bool),
) {
    loop {
        tokio::select! {
            biased;
            () = shared.stop_accepting.cancelled() => break,
            res = listener.accept() => match res {
                Ok((stream, peer)) => on_conn(stream, peer, false),
                Err(err) if is_connection_error(&err) => {}
                Err(err) => {
                    // Out of file descriptors, most likely: retrying at once
                    // would spin. Connections wait in the queue meanwhile.
                    tracing::error!(error = %err, "accept.error");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                        () = shared.stop_accepting.cancelled() => break,
                    }
                }
            },
        }
    }

    let from_queue = match listener.into_std() {
        Ok(listener) => {
            let taken = drain_queue(&listener, &mut on_conn);
            // The copy kept for upgrades goes with our listener (the socket
            // stays open only in a successor, if there is one).
            drop(
                shared
                    .upgrade_socket
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take(),
            );
            taken
        }
        Err(err) => {
            tracing::error!(error = %err, "accept.queue_error");
            0
        }
    };
    shared.tracker.close();
    shared.listener_closed.cancel();
    tracing::info!(accepted_from_queue = from_queue, "shutdown.listener_closed");
}

/// Accepts, with real non-blocking syscalls (the reactor's readiness could be
/// stale), until the queue is empty.
fn drain_queue(
    listener: &std::net::TcpListener,
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
