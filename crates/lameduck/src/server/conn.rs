//! Serving one connection, and draining it without losing a request.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    task::Poll,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpStream;
use tower::Service;
use tracing::Instrument;

use super::{
    io::{ConnState, TrackedIo},
    registry::Registry,
    service::{BoxError, ConnService},
    tls_io::TlsIo,
};
use crate::{
    lifecycle::{Lifecycle, Phase, RequestDrain},
    stats::ConnKind,
};

/// What every connection task gets.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub(crate) builder: Arc<Builder>,
    pub(crate) lifecycle: Arc<Lifecycle>,
    pub(crate) registry: Arc<Registry>,
    /// Set when the server terminates TLS.
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("lifecycle", &self.lifecycle)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

pub(crate) type Builder = auto::Builder<TokioExecutor>;

/// Spawns the task that serves `stream` until it closes, the drain closes it
/// or the deadline cuts it.
pub(crate) fn spawn<S, B>(
    ctx: Ctx,
    service: S,
    stream: TcpStream,
    peer: SocketAddr,
    during_drain: bool,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let _ = stream.set_nodelay(true);
    let span = tracing::debug_span!("conn", client.addr = %peer);
    tokio::spawn(serve(ctx, service, stream, peer, during_drain).instrument(span));
}

async fn serve<S, B>(ctx: Ctx, service: S, stream: TcpStream, peer: SocketAddr, during_drain: bool)
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let Ctx {
        builder,
        lifecycle,
        registry,
        tls,
    } = ctx;
    let state = ConnState::new(lifecycle.clone(), registry, during_drain);
    let service = ConnService {
        inner: service,
        conn: state.clone(),
        drain: RequestDrain::of(&lifecycle),
        peer,
    };
    // Tracked below TLS: the timers see the bytes on the wire, so a slow or
    // stalled handshake counts against the header-read timeout, as a slow
    // request head does.
    let io = TrackedIo::new(stream, state.clone());
    let Some(tls) = tls else {
        return serve_io(&builder, &lifecycle, &state, service, TokioIo::new(io)).await;
    };
    // Boxed: a task's future is as large as its largest state, and the
    // handshake's (rustls's connection state) would make every plain
    // connection's task that large too.
    Box::pin(serve_tls(builder, lifecycle, state, service, io, tls)).await;
}

/// The TLS handshake (bounded by the header-read timeout), then serving.
async fn serve_tls<S, B>(
    builder: Arc<Builder>,
    lifecycle: Arc<Lifecycle>,
    state: Arc<ConnState>,
    service: ConnService<S>,
    io: TrackedIo,
    tls: tokio_rustls::TlsAcceptor,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let limit = lifecycle
        .config()
        .header_read_timeout
        .unwrap_or(std::time::Duration::MAX);
    let handshake = tokio::select! {
        res = tokio::time::timeout(limit, tls.accept(io)) => res,
        () = lifecycle.reached(Phase::Forcing) => {
            state.drain.done_waiting();
            return;
        }
    };
    match handshake {
        Ok(Ok(stream)) => {
            let io = TokioIo::new(TlsIo::new(stream));
            serve_io(&builder, &lifecycle, &state, service, io).await;
        }
        failed => {
            lifecycle.stats().tls_handshake_failed();
            state.drain.done_waiting();
            match failed {
                Ok(Err(err)) => tracing::debug!(error = %err, "tls.handshake_failed"),
                _ => tracing::debug!(error = "timed out", "tls.handshake_failed"),
            }
        }
    }
}

/// How long an idle HTTP/2 connection told GOAWAY gets to see it through
/// (its client's last streams, the PING round trip) before it is closed.
const H2_CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves an accepted (and, with TLS, handshaken) connection until it
/// closes, the drain closes it or the deadline cuts it.
async fn serve_io<I, S, B>(
    builder: &Builder,
    lifecycle: &Arc<Lifecycle>,
    state: &Arc<ConnState>,
    service: ConnService<S>,
    io: I,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);

    // Serving: the connection is polled, and the drain flag checked with one
    // atomic load; the drain wakes this task through its waiter.
    // A timer that ran out also wakes this task through the waiter.
    let served = std::future::poll_fn(|cx| {
        if let Poll::Ready(res) = conn.as_mut().poll(cx) {
            return Poll::Ready(Some(res));
        }
        if state.expired.load(Ordering::Acquire) {
            return Poll::Ready(Some(Ok(())));
        }
        state.drain.poll_drained(cx).map(|()| None)
    })
    .await;
    if let Some(res) = served {
        // Closed, timed out, or upgraded: in the last case the socket lives
        // on in the handler (which watches the drain itself), and a spread
        // drain must not count this task as one to tell.
        state.drain.done_waiting();
        if state.expired.load(Ordering::Acquire) {
            // Idle, or sending its request head too slowly: nothing in
            // flight is lost by closing.
            tracing::debug!(kind = ?state.kind(), "conn.timeout");
            if state.kind() == ConnKind::Http2 {
                // GOAWAY, so that the client opens its next stream on a
                // new connection instead of seeing this one reset; a stream
                // it opened meanwhile is still served.
                conn.as_mut().graceful_shutdown();
                tokio::select! {
                    res = conn.as_mut() => return finished(res),
                    () = tokio::time::sleep(H2_CLOSE_WAIT) => {}
                    () = lifecycle.reached(Phase::Forcing) => {}
                }
                return;
            }
        }
        return finished(res);
    }

    // Draining. A busy HTTP/1 connection, or any HTTP/2 one, is told at once
    // (keep-alive off, or GOAWAY). An idle HTTP/1 connection gets the idle
    // grace: its client may be sending a request right now, and closing
    // under it would lose that request. A request that starts within the
    // grace is answered with `Connection: close`.
    let grace = async {
        let started = state.request_started.notified();
        tokio::pin!(started);
        // Registered before the check, so a request starting in between
        // still wakes us.
        started.as_mut().enable();
        if state.kind() == ConnKind::Http1 && !state.is_busy() {
            let _ = tokio::time::timeout(lifecycle.config().idle_grace, started).await;
        }
    };
    tokio::select! {
        res = conn.as_mut() => return finished(res),
        () = grace => {}
    }
    conn.as_mut().graceful_shutdown();

    tokio::select! {
        res = conn.as_mut() => finished(res),
        () = lifecycle.reached(Phase::Forcing) => {
            tracing::debug!(kind = ?state.kind(), busy = state.is_busy(), "conn.cut");
        }
    }
}

fn finished(res: Result<(), BoxError>) {
    if let Err(err) = res {
        // Clients going away mid-request are routine; keep them out of the
        // default log level.
        tracing::debug!(error = %err, "conn.error");
    }
}
