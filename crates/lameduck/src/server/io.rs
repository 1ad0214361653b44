//! The socket of a tracked connection.

use std::{
    io,
    mem::MaybeUninit,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::Notify,
};
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::registry::{Registry, Timed};
use crate::{
    lifecycle::{DrainWaiter, Lifecycle},
    stats::ConnKind,
};

/// One accepted connection, shared by its socket and by hyper's connection
/// state. It counts as open until both are gone, which for an upgraded
/// connection means until the WebSocket handler drops the socket: the hole in
/// shutdowns that stop tracking a connection once hyper lets go of it.
#[derive(Debug)]
pub(crate) struct ConnState {
    lifecycle: Arc<Lifecycle>,
    registry: Arc<Registry>,
    kind: AtomicU8,
    /// Requests on this connection whose response is not fully sent.
    busy: AtomicUsize,
    /// Woken when a request starts, for the idle grace of a drain.
    pub(crate) request_started: Notify,
    /// Wakes the connection's task when the drain starts (or a timer
    /// expires).
    pub(crate) drain: DrainWaiter,
    /// Coarse clock time (see `Registry::now_ms`) when the current request
    /// head started to arrive; 0 when none is under way.
    head_since: AtomicU64,
    /// Coarse clock time of the last read, or of the end of a response.
    last_active: AtomicU64,
    /// Coarse clock time of the end of the last response (or of the
    /// connection's start): an HTTP/2 connection's reads (PINGs, window
    /// updates) do not make it busy, its streams do.
    last_done: AtomicU64,
    /// Whether a request has been received (before the first one, the
    /// header-read timeout runs from the connection's start).
    had_request: AtomicBool,
    /// Set by the timer sweep: the connection must close.
    pub(crate) expired: AtomicBool,
    /// Whether the sweep knows this connection.
    timed: bool,
    _token: TaskTrackerToken,
}

impl ConnState {
    pub(crate) fn new(
        lifecycle: Arc<Lifecycle>,
        registry: Arc<Registry>,
        during_drain: bool,
    ) -> Arc<Self> {
        lifecycle.stats().conn_opened(ConnKind::Http1, during_drain);
        let token = registry.token();
        let drain = DrainWaiter::new(lifecycle.clone());
        let now = registry.now_ms();
        let config = lifecycle.config();
        let timed = config.header_read_timeout.is_some() || config.keep_alive_timeout.is_some();
        let state = Arc::new(Self {
            lifecycle,
            registry,
            kind: AtomicU8::new(ConnKind::Http1.as_u8()),
            busy: AtomicUsize::new(0),
            request_started: Notify::new(),
            drain,
            head_since: AtomicU64::new(0),
            last_active: AtomicU64::new(now),
            last_done: AtomicU64::new(now),
            had_request: AtomicBool::new(false),
            expired: AtomicBool::new(false),
            timed,
            _token: token,
        });
        if timed {
            let weak: std::sync::Weak<dyn Timed> = Arc::downgrade(&state) as _;
            state.registry.time(Arc::as_ptr(&state) as usize, weak);
        }
        state
    }

    pub(crate) fn lifecycle(&self) -> &Arc<Lifecycle> {
        &self.lifecycle
    }

    /// Data came in: the connection is alive, and if no request is in
    /// flight, a request head has started.
    fn on_read(&self) {
        let now = self.registry.now_ms();
        self.last_active.store(now, Ordering::Relaxed);
        if !self.is_busy() && self.head_since.load(Ordering::Relaxed) == 0 {
            self.head_since.store(now, Ordering::Relaxed);
        }
    }

    pub(crate) fn kind(&self) -> ConnKind {
        ConnKind::from_u8(self.kind.load(Ordering::Relaxed))
    }

    pub(crate) fn set_kind(&self, kind: ConnKind) {
        let old = ConnKind::from_u8(self.kind.swap(kind.as_u8(), Ordering::Relaxed));
        self.lifecycle.stats().conn_changed(old, kind);
    }

    pub(crate) fn is_busy(&self) -> bool {
        // SeqCst: see `request_started`.
        self.busy.load(Ordering::SeqCst) > 0
    }

    pub(crate) fn request_started(&self) {
        self.busy.fetch_add(1, Ordering::SeqCst);
        self.head_since.store(0, Ordering::Relaxed);
        if !self.had_request.load(Ordering::Relaxed) {
            self.had_request.store(true, Ordering::Relaxed);
        }
        self.lifecycle.stats().request_started();
        // Only a draining connection task waits for this (its idle grace),
        // and `notify_waiters` takes a lock: skipped while serving. A task
        // in its grace saw the drain and then read `busy`; this thread
        // wrote `busy` and then reads the phase. All four SeqCst, one of the
        // two sees the other's write, so a request never slips by unseen.
        if self.lifecycle.is_draining_seqcst() {
            self.request_started.notify_waiters();
        }
    }

    /// Whether a response ended within the last [`LINGER_AFTER_MS`] (or
    /// the connection is that young).
    fn answered_lately(&self) -> bool {
        let since = self
            .registry
            .now_ms()
            .saturating_sub(self.last_done.load(Ordering::Relaxed));
        self.is_busy() || since <= LINGER_AFTER_MS
    }

    pub(crate) fn request_finished(&self) {
        let now = self.registry.now_ms();
        self.last_active.store(now, Ordering::Relaxed);
        self.last_done.store(now, Ordering::Relaxed);
        self.busy.fetch_sub(1, Ordering::AcqRel);
        self.lifecycle.stats().request_finished();
    }
}

/// Idle HTTP/1 and HTTP/2 connections time out; busy and upgraded ones
/// never.
impl Timed for ConnState {
    /// The head of a request took longer than `header`, or the connection
    /// stayed idle longer than `idle` (or `header`, before its first
    /// request).
    fn timed_out(&self, now: u64, header: Option<u64>, idle: Option<u64>) -> bool {
        if self.is_busy() {
            return false;
        }
        match self.kind() {
            ConnKind::Http1 => {}
            // No open stream for the keep-alive timeout: its task sends
            // GOAWAY and closes it (HTTP/2 has no request head to time).
            ConnKind::Http2 => {
                let quiet = now.saturating_sub(self.last_done.load(Ordering::Relaxed));
                return idle.is_some_and(|i| quiet > i);
            }
            ConnKind::Websocket => return false,
        }
        let head = self.head_since.load(Ordering::Relaxed);
        if head != 0 {
            return header.is_some_and(|h| now.saturating_sub(head) > h);
        }
        let quiet = now.saturating_sub(self.last_active.load(Ordering::Relaxed));
        if self.had_request.load(Ordering::Relaxed) {
            idle.is_some_and(|i| quiet > i)
        } else {
            header.is_some_and(|h| quiet > h)
        }
    }

    fn expire(&self) {
        self.expired.store(true, Ordering::Release);
        self.drain.wake();
    }
}

impl Drop for ConnState {
    fn drop(&mut self) {
        self.lifecycle.stats().conn_closed(self.kind());
        if self.timed {
            self.registry.untime(self as *const Self as usize);
        }
    }
}

/// How long a closed connection keeps reading what its client still sends
/// (its last frames, its TLS `close_notify`, its FIN).
const LINGER: Duration = Duration::from_secs(2);

/// A connection whose last response ended longer ago than this closes
/// without lingering (see [`TrackedIo`]). Read on the coarse clock, which
/// ticks every 500 ms: a response counts as recent when it ended less than
/// a second ago, so a connection closed after the drain's idle grace
/// (1 s) never lingers, as before lingering existed. With a 1.0–1.5 s
/// window the fleet test behind HAProxy lost one request in one CI run (not
/// reproduced in three runs alone); a request a proxy sends as the server
/// closes would then be read and dropped rather than reset.
const LINGER_AFTER_MS: u64 = 500;

/// Most bytes read and thrown away while lingering.
const LINGER_BYTES: usize = 256 * 1024;

/// An upgraded connection's reads of fewer bytes than this go through a
/// read-ahead (see [`TrackedIo`]); larger ones (hyper's, rustls's) go
/// straight to the socket.
const READ_AHEAD: usize = 8 * 1024;

/// A socket that keeps its connection counted while it lives and fails
/// every read and write once the drain is forced, so that a handler that
/// holds an upgraded socket and ignores the drain still lets go of it.
///
/// Dropped soon after a response, it closes gracefully: it sends its FIN
/// and reads on until the client's (at most [`LINGER`], cut by a forced
/// drain), because closing a socket with unread bytes, or with bytes still
/// on their way, makes the kernel answer with a reset, which can destroy
/// the last response before the client has read it (a test's HTTP/2 client
/// over TLS once saw a broken pipe at a drain; `drain.rs` shows the reset
/// without lingering). A connection still lingering counts as open. One idle for
/// longer than [`LINGER_AFTER_MS`] (closed by the drain after its idle grace,
/// or by the keep-alive timeout) has no response left to lose: what its
/// client might send now would not be served either way, so it closes at
/// once (lingering cost 120 to 190 ms at the end of a drain of 19,000 idle
/// connections).
///
/// An upgraded connection that is asked for fewer than [`READ_AHEAD`] bytes
/// reads up to that many into a buffer on the stack and keeps what the
/// reader did not take, in an allocation of that size that lives only
/// until it is taken. This lets a WebSocket's own read buffer be small
/// (tungstenite allocates it whole for every socket, and holds it while
/// the socket idles) without a system call for every few hundred bytes of
/// a large message.
pub(crate) struct TrackedIo {
    /// `None` only once dropped.
    inner: Option<TcpStream>,
    conn: Arc<ConnState>,
    /// Read from the socket, not yet by the reader; empty (and allocating
    /// nothing) between bursts.
    ahead: Bytes,
}

impl TrackedIo {
    pub(crate) fn new(inner: TcpStream, conn: Arc<ConnState>) -> Self {
        Self {
            inner: Some(inner),
            conn,
            ahead: Bytes::new(),
        }
    }

    pub(crate) fn get_ref(&self) -> &TcpStream {
        self.inner.as_ref().expect("only taken on drop")
    }

    fn stream(&mut self) -> Pin<&mut TcpStream> {
        Pin::new(self.inner.as_mut().expect("only taken on drop"))
    }
}

impl Drop for TrackedIo {
    fn drop(&mut self) {
        let Some(stream) = self.inner.take() else {
            return;
        };
        if self.conn.lifecycle.is_forcing() || !self.conn.answered_lately() {
            return;
        }
        // The client closed first and all it sent was read, or the
        // connection is already broken: nothing to wait for.
        let mut buf = [0u8; 512];
        match stream.try_read(&mut buf) {
            Ok(0) => return,
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => return,
            _ => {}
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(linger(stream, self.conn.clone()));
        }
    }
}

/// Sends the FIN (if hyper did not), then reads and throws away what comes
/// until the client's FIN, for at most [`LINGER`] and [`LINGER_BYTES`].
async fn linger(mut stream: TcpStream, conn: Arc<ConnState>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let read_to_end = async {
        let _ = stream.shutdown().await;
        let mut buf = [0u8; 4096];
        let mut left = LINGER_BYTES;
        while let Ok(n @ 1..) = stream.read(&mut buf).await {
            left = left.saturating_sub(n);
            if left == 0 {
                break;
            }
        }
    };
    tokio::select! {
        _ = tokio::time::timeout(LINGER, read_to_end) => {}
        () = conn.lifecycle.reached(crate::Phase::Forcing) => {}
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

impl AsyncRead for TrackedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.conn.lifecycle.is_forcing() {
            return Poll::Ready(Err(cut()));
        }
        if !self.ahead.is_empty() {
            let n = self.ahead.len().min(buf.remaining());
            buf.put_slice(&self.ahead.split_to(n));
            if self.ahead.is_empty() {
                // Let go of the allocation, not just of its bytes.
                self.ahead = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() < READ_AHEAD && self.conn.kind() == ConnKind::Websocket {
            return self.poll_read_ahead(cx, buf);
        }
        let before = buf.filled().len();
        match self.stream().poll_read(cx, buf) {
            Poll::Pending if self.conn.drain.read_parked_until_cut(cx) => Poll::Ready(Err(cut())),
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.conn.on_read();
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl TrackedIo {
    /// Reads up to [`READ_AHEAD`] bytes, gives the reader what fits and
    /// keeps the rest in `ahead`. Never inlined: its buffer on the stack
    /// would make every read's frame 8 KiB, which costs a stack probe.
    #[inline(never)]
    fn poll_read_ahead(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_AHEAD];
        let mut chunk = ReadBuf::uninit(&mut chunk);
        match self.stream().poll_read(cx, &mut chunk) {
            Poll::Pending if self.conn.drain.read_parked_until_cut(cx) => Poll::Ready(Err(cut())),
            Poll::Ready(Ok(())) => {
                let got = chunk.filled();
                if !got.is_empty() {
                    self.conn.on_read();
                }
                let n = got.len().min(buf.remaining());
                buf.put_slice(&got[..n]);
                if n < got.len() {
                    self.ahead = Bytes::copy_from_slice(&got[n..]);
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.conn.lifecycle.is_forcing() {
            return Poll::Ready(Err(cut()));
        }
        match self.stream().poll_write(cx, buf) {
            Poll::Pending if self.conn.drain.write_parked_until_cut(cx) => Poll::Ready(Err(cut())),
            other => other,
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.conn.lifecycle.is_forcing() {
            return Poll::Ready(Err(cut()));
        }
        match self.stream().poll_write_vectored(cx, bufs) {
            Poll::Pending if self.conn.drain.write_parked_until_cut(cx) => Poll::Ready(Err(cut())),
            other => other,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.get_ref().is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_shutdown(cx)
    }
}
