//! The socket of a tracked connection.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::Notify,
};
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::{
    lifecycle::{DrainWaiter, Shared},
    stats::ConnKind,
};

/// One accepted connection, shared by its socket and by hyper's connection
/// state. It counts as open until both are gone, which for an upgraded
/// connection means until the WebSocket handler drops the socket: the hole in
/// shutdowns that stop tracking a connection once hyper lets go of it.
#[derive(Debug)]
pub(crate) struct ConnState {
    pub(crate) shared: Arc<Shared>,
    kind: AtomicU8,
    /// Requests on this connection whose response is not fully sent.
    busy: AtomicUsize,
    /// Woken when a request starts, for the idle grace of a drain.
    pub(crate) request_started: Notify,
    /// Wakes the connection's task when the drain starts.
    pub(crate) drain: DrainWaiter,
    _token: TaskTrackerToken,
}

impl ConnState {
    pub(crate) fn new(shared: Arc<Shared>, during_drain: bool) -> Arc<Self> {
        shared.stats.conn_opened(ConnKind::Http1, during_drain);
        let token = shared.tracker.token();
        let drain = DrainWaiter::new(shared.clone());
        Arc::new(Self {
            shared,
            kind: AtomicU8::new(ConnKind::Http1.as_u8()),
            busy: AtomicUsize::new(0),
            request_started: Notify::new(),
            drain,
            _token: token,
        })
    }

    pub(crate) fn kind(&self) -> ConnKind {
        ConnKind::from_u8(self.kind.load(Ordering::Relaxed))
    }

    pub(crate) fn set_kind(&self, kind: ConnKind) {
        let old = ConnKind::from_u8(self.kind.swap(kind.as_u8(), Ordering::Relaxed));
        self.shared.stats.conn_changed(old, kind);
    }

    pub(crate) fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Acquire) > 0
    }

    pub(crate) fn request_started(&self) {
        self.busy.fetch_add(1, Ordering::AcqRel);
        self.shared.stats.request_started();
        self.request_started.notify_waiters();
    }

    pub(crate) fn request_finished(&self) {
        self.busy.fetch_sub(1, Ordering::AcqRel);
        self.shared.stats.request_finished();
    }
}

impl Drop for ConnState {
    fn drop(&mut self) {
        self.shared.stats.conn_closed(self.kind());
    }
}

pin_project_lite::pin_project! {
    /// A socket that keeps its connection counted while it lives and fails
    /// every read and write once the drain is forced, so that a handler that
    /// holds an upgraded socket and ignores the drain still lets go of it.
    pub(crate) struct TrackedIo<T> {
        #[pin]
        inner: T,
        conn: Arc<ConnState>,
    }
}

impl<T> TrackedIo<T> {
    pub(crate) fn new(inner: T, conn: Arc<ConnState>) -> Self {
        Self { inner, conn }
    }
}

fn cut() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection cut: the drain deadline passed",
    )
}

// Every operation checks the cut flag (one atomic load); one that is about
// to park registers its task to be woken at the cut (lock-free), then checks
// again, so a cut between the two is not missed.

impl<T: AsyncRead> AsyncRead for TrackedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if this.conn.shared.is_forcing() {
            return Poll::Ready(Err(cut()));
        }
        match this.inner.poll_read(cx, buf) {
            Poll::Pending if this.conn.drain.read_parked_until_cut(cx) => Poll::Ready(Err(cut())),
            other => other,
        }
    }
}

impl<T: AsyncWrite> AsyncWrite for TrackedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        if this.conn.shared.is_forcing() {
            return Poll::Ready(Err(cut()));
        }
        match this.inner.poll_write(cx, buf) {
            Poll::Pending if this.conn.drain.write_parked_until_cut(cx) => Poll::Ready(Err(cut())),
            other => other,
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        if this.conn.shared.is_forcing() {
            return Poll::Ready(Err(cut()));
        }
        match this.inner.poll_write_vectored(cx, bufs) {
            Poll::Pending if this.conn.drain.write_parked_until_cut(cx) => Poll::Ready(Err(cut())),
            other => other,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}
