//! The lifecycle of a server: serving → draining → stopped.
//!
//! A [`Handle`] requests the drain (or forces it); a [`Drain`] watches it. Both
//! are cheap to clone and refer to the same state, which the server's
//! [`drive`] future moves forward: announce, close the listener, let
//! connections finish, cut what remains at the deadline.

mod drive;
mod signal;

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    os::fd::OwnedFd,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
};

use futures_util::task::AtomicWaker;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::{
    sync::{CancellationToken, WaitForCancellationFutureOwned},
    task::TaskTracker,
};

use crate::{
    Config,
    handoff::UpgradeError,
    stats::{Counts, Stats, Totals},
};

pub(crate) use drive::drive;
pub use signal::listen_for_signals;

/// Where a server stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Serving normally; `/readyz` answers 200.
    Serving,
    /// A drain was requested: everything still works, new connections
    /// included, but `/readyz` answers 503 so load balancers move away.
    Announcing,
    /// The listener is closed; connections are finishing what they hold.
    Draining,
    /// The deadline passed (or a second signal came): what remains is cut.
    Forcing,
    /// Every connection is gone.
    Stopped,
}

impl Phase {
    /// The phase's name as it appears in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Serving => "serving",
            Phase::Announcing => "announcing",
            Phase::Draining => "draining",
            Phase::Forcing => "forcing",
            Phase::Stopped => "stopped",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a drain started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "detail")]
#[non_exhaustive]
pub enum DrainReason {
    /// A signal, by name (`SIGTERM`, `SIGINT`).
    Signal(&'static str),
    /// The process is being replaced by a new copy of itself: WebSockets
    /// are closed with 1012 (Service Restart) instead of 1001 (Going Away).
    Restart,
    /// A programmatic request, with a short description of its source.
    Requested(String),
}

impl DrainReason {
    /// Whether the service comes back right away (a restart or an upgrade),
    /// which clients are told through the WebSocket close code.
    pub fn is_restart(&self) -> bool {
        matches!(self, DrainReason::Restart)
    }
}

impl fmt::Display for DrainReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DrainReason::Signal(name) => write!(f, "signal {name}"),
            DrainReason::Restart => f.write_str("restart"),
            DrainReason::Requested(source) => write!(f, "requested by {source}"),
        }
    }
}

/// The state shared by a server, its handles and its watchers.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) stats: Stats,
    /// Counts every open connection, upgraded ones included, until its socket
    /// is dropped; closed once the listener is gone.
    pub(crate) tracker: TaskTracker,
    phase: watch::Sender<Phase>,
    reason: OnceLock<DrainReason>,
    drain_requested: CancellationToken,
    force_requested: CancellationToken,
    /// Cancelled when the announce period ends: the accept loop takes what
    /// is queued and closes the listener.
    pub(crate) stop_accepting: CancellationToken,
    /// Cancelled by the accept loop once the listener is closed.
    pub(crate) listener_closed: CancellationToken,
    /// Cancelled once the listener is closed: connections must go. Not
    /// before, so that clients told to reconnect find the listener closed
    /// (or, after a handoff, the new process) rather than a queue that is
    /// about to be reset.
    pub(crate) draining: CancellationToken,
    /// Cancelled at the deadline: whatever remains is cut.
    pub(crate) forcing: CancellationToken,
    /// The [`DrainWaiter`]s to wake when the drain starts.
    waiters: Mutex<Waiters>,
    /// `draining` and `forcing` as plain flags for the hot paths (every
    /// read, write and response): `CancellationToken::is_cancelled` takes a
    /// lock shared by every clone of the token.
    is_draining: AtomicBool,
    is_forcing: AtomicBool,
    /// Set while an upgrade runs: one at a time.
    upgrading: AtomicBool,
    /// Where [`Handle::upgrade`] sends its requests; set by a server that
    /// was given an upgrade configuration.
    pub(crate) upgrades: OnceLock<mpsc::UnboundedSender<UpgradeRequest>>,
    /// A copy of the listening socket for successors. The accept loop drops
    /// it with its own listener: a copy left open would keep the socket
    /// listening with nobody accepting, and connections made during the
    /// drain would be queued, then reset, instead of refused.
    pub(crate) upgrade_socket: Mutex<Option<OwnedFd>>,
    /// When the drain started.
    pub(crate) drain_started: OnceLock<std::time::Instant>,
    /// The first task the drain depends on that panicked.
    panicked: OnceLock<&'static str>,
    /// Open HTTP connections, for the timer sweep.
    pub(crate) conns: Mutex<HashMap<usize, std::sync::Weak<crate::server::ConnState>>>,
    /// A coarse clock, in milliseconds since the server started, advanced by
    /// the timer sweep: reading it is one atomic load.
    pub(crate) clock_ms: std::sync::atomic::AtomicU64,
}

/// An upgrade request and where to send its outcome (the successor's pid).
pub(crate) type UpgradeRequest = oneshot::Sender<Result<u32, UpgradeError>>;

#[derive(Debug, Default)]
struct Waiters {
    next: u64,
    wakers: HashMap<u64, Arc<Wakers>>,
}

/// The tasks to wake for one waiter: the one that waits for the drain, and
/// (for a connection's socket) the ones parked in a read or a write, which
/// the deadline must wake to fail them.
#[derive(Debug, Default)]
struct Wakers {
    drain: AtomicWaker,
    read: AtomicWaker,
    write: AtomicWaker,
}

/// Wakes its task when connections are asked to go, and is cheap to poll
/// again and again: connection tasks, WebSocket sessions and SSE streams
/// check it on every wake-up. (Polling a `CancellationToken` future takes a
/// lock that every connection of the server shares.) Registering and
/// dropping take that lock once each.
#[derive(Debug)]
pub(crate) struct DrainWaiter {
    shared: Arc<Shared>,
    wakers: Arc<Wakers>,
    id: u64,
}

impl DrainWaiter {
    /// Wakes the task that waits for the drain, so it looks at its state
    /// again (the connection timers use it).
    pub(crate) fn wake(&self) {
        self.wakers.drain.wake();
    }

    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        let wakers = Arc::new(Wakers::default());
        let id = {
            let mut waiters = shared.waiters.lock().unwrap_or_else(|e| e.into_inner());
            waiters.next += 1;
            let id = waiters.next;
            waiters.wakers.insert(id, wakers.clone());
            id
        };
        Self { shared, wakers, id }
    }

    /// Ready once the drain has started. Registers before checking, so a
    /// drain starting in between still wakes the task.
    pub(crate) fn poll_drained(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        self.wakers.drain.register(cx.waker());
        if self.shared.is_draining() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    }

    /// For a read about to return `Pending`: registers the task to be woken
    /// at the cut, and tells whether the cut has come.
    pub(crate) fn read_parked_until_cut(&self, cx: &mut std::task::Context<'_>) -> bool {
        self.wakers.read.register(cx.waker());
        self.shared.is_forcing()
    }

    /// As [`DrainWaiter::read_parked_until_cut`], for a write.
    pub(crate) fn write_parked_until_cut(&self, cx: &mut std::task::Context<'_>) -> bool {
        self.wakers.write.register(cx.waker());
        self.shared.is_forcing()
    }
}

impl Drop for DrainWaiter {
    fn drop(&mut self) {
        let mut waiters = self
            .shared
            .waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        waiters.wakers.remove(&self.id);
    }
}

impl Shared {
    pub(crate) fn new(config: Config) -> Arc<Self> {
        Arc::new(Self {
            config,
            stats: Stats::default(),
            tracker: TaskTracker::new(),
            phase: watch::Sender::new(Phase::Serving),
            reason: OnceLock::new(),
            drain_requested: CancellationToken::new(),
            force_requested: CancellationToken::new(),
            stop_accepting: CancellationToken::new(),
            listener_closed: CancellationToken::new(),
            draining: CancellationToken::new(),
            forcing: CancellationToken::new(),
            waiters: Mutex::default(),
            is_draining: AtomicBool::new(false),
            is_forcing: AtomicBool::new(false),
            upgrading: AtomicBool::new(false),
            upgrades: OnceLock::new(),
            upgrade_socket: Mutex::new(None),
            drain_started: OnceLock::new(),
            panicked: OnceLock::new(),
            conns: Mutex::default(),
            clock_ms: std::sync::atomic::AtomicU64::new(1),
        })
    }

    /// Whether connections have been asked to go; one atomic load.
    pub(crate) fn is_draining(&self) -> bool {
        self.is_draining.load(Ordering::Acquire)
    }

    /// Whether what remains is being cut; one atomic load.
    pub(crate) fn is_forcing(&self) -> bool {
        self.is_forcing.load(Ordering::Acquire)
    }

    /// Cuts whatever remains: sockets fail (tasks parked in a read or a
    /// write are woken to see it), connection tasks drop.
    pub(crate) fn start_forcing(&self) {
        self.is_forcing.store(true, Ordering::Release);
        self.forcing.cancel();
        let waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        for wakers in waiters.wakers.values() {
            wakers.read.wake();
            wakers.write.wake();
        }
    }

    /// Starts the drain of every connection: sets the flag that
    /// [`DrainWaiter`]s check, then wakes them (one registered after the
    /// wake sees the flag).
    pub(crate) fn start_draining(&self) {
        self.is_draining.store(true, Ordering::Release);
        self.draining.cancel();
        let waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        for wakers in waiters.wakers.values() {
            wakers.drain.wake();
        }
    }

    pub(crate) fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    pub(crate) fn set_phase(&self, phase: Phase) {
        self.phase.send_replace(phase);
    }

    pub(crate) fn reason(&self) -> Option<&DrainReason> {
        self.reason.get()
    }

    /// Cancelled when a drain is requested.
    pub(crate) fn drain_requested(&self) -> &CancellationToken {
        &self.drain_requested
    }

    /// A task the drain depends on panicked: a process left without its
    /// signal task would ignore SIGTERM, one without its accept loop would
    /// never close its listener. The drain is forced, and reported.
    pub(crate) fn task_panicked(&self, task: &'static str) {
        let _ = self.panicked.set(task);
        let _ = self
            .reason
            .set(DrainReason::Requested(format!("{task} task panicked")));
        self.drain_requested.cancel();
        self.force_requested.cancel();
    }

    /// The first task that panicked, if any.
    pub(crate) fn panicked(&self) -> Option<&'static str> {
        self.panicked.get().copied()
    }

    pub(crate) fn upgrade_finished(&self) {
        self.upgrading.store(false, Ordering::Release);
    }
}

// === impl Handle ===

/// Starts or forces the drain of a server, and reads its state.
///
/// Unlike a one-shot trigger, a `Handle` is `Clone`: a drain can be asked for
/// from several places at once (signals, an admin endpoint, a parent
/// process), and asking twice is harmless, the first reason wins. What is not
/// shared is the drain itself, which only the server's `serve` future runs.
///
/// # Examples
///
/// ```
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let server = lameduck::Server::new(listener).without_signals();
/// let handle = server.handle();
/// let serving = tokio::spawn(server.serve(axum::Router::new()));
///
/// assert!(handle.drain(lameduck::DrainReason::Requested("example".into())));
/// let report = serving.await??;
/// assert_eq!(report.exit_code(), 0);
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
#[derive(Clone)]
pub struct Handle {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("phase", &self.phase())
            .field("reason", &self.shared.reason())
            .finish()
    }
}

impl Handle {
    /// Requests a drain. Returns `true` if this call started it, `false` if a
    /// drain was already under way (its reason is kept).
    pub fn drain(&self, reason: DrainReason) -> bool {
        if self.shared.reason.set(reason).is_err() {
            return false;
        }
        self.shared.drain_requested.cancel();
        true
    }

    /// Cuts whatever remains now, without waiting for the deadline. Starts the
    /// drain first if it was not under way (the reason is then
    /// `Requested("force")`).
    pub fn force(&self) {
        self.drain(DrainReason::Requested("force".into()));
        self.shared.force_requested.cancel();
    }

    /// Starts a new copy of the program on the same listening socket (see
    /// [`crate::handoff`]); once it reports ready, this server drains with
    /// [`DrainReason::Restart`]. Returns the new process's pid. `SIGHUP` does
    /// the same.
    ///
    /// # Errors
    ///
    /// When upgrades are not enabled ([`crate::Server::with_upgrade`]), one
    /// is under way already, the server is draining, or the new process
    /// fails to start or to become ready; in every case this server keeps
    /// serving.
    pub async fn upgrade(&self) -> Result<u32, UpgradeError> {
        if self.shared.reason().is_some() {
            return Err(UpgradeError::Draining);
        }
        let Some(requests) = self.shared.upgrades.get() else {
            return Err(UpgradeError::NotEnabled);
        };
        if self.shared.upgrading.swap(true, Ordering::AcqRel) {
            return Err(UpgradeError::InProgress);
        }
        let (reply, outcome) = oneshot::channel();
        if requests.send(reply).is_err() {
            self.shared.upgrade_finished();
            return Err(UpgradeError::Draining);
        }
        outcome.await.unwrap_or(Err(UpgradeError::Draining))
    }

    /// A watcher of this server's drain.
    pub fn watcher(&self) -> Drain {
        Drain {
            shared: self.shared.clone(),
        }
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.shared.phase()
    }

    /// Live counts of connections, streams and requests.
    pub fn counts(&self) -> Counts {
        self.shared.stats.counts()
    }

    /// Totals since the server started.
    pub fn totals(&self) -> Totals {
        self.shared.stats.totals()
    }

    /// Time since the drain started; `None` before it starts.
    pub fn drain_elapsed(&self) -> Option<std::time::Duration> {
        self.shared.drain_started.get().map(|t| t.elapsed())
    }

    /// Waits until the phase changes from `current`, and returns the new one.
    pub async fn phase_changed(&self, current: Phase) -> Phase {
        let mut rx = self.shared.phase.subscribe();
        match rx.wait_for(|p| *p != current).await {
            Ok(p) => *p,
            // The sender lives in `Shared`, which `self` keeps alive.
            Err(_) => self.phase(),
        }
    }
}

// === impl Drain ===

/// Watches the drain from inside a handler: it is an axum extractor, and
/// [`Drain::from_extensions`] finds it in any request served by
/// [`crate::Server`] (for plain tower services).
///
/// `drained()` resolves when the connections are asked to go (after the
/// announce period), `forced()` at the deadline, when whatever remains is cut.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use lameduck::Drain;
///
/// // A long request that stops early, with a partial answer, when the
/// // server drains.
/// async fn report(drain: Drain) -> String {
///     tokio::select! {
///         _ = tokio::time::sleep(Duration::from_secs(30)) => "complete".into(),
///         _ = drain.drained() => "partial: server draining".into(),
///     }
/// }
/// let _app: axum::Router = axum::Router::new().route("/report", axum::routing::get(report));
/// ```
#[derive(Clone)]
pub struct Drain {
    shared: Arc<Shared>,
}

impl fmt::Debug for Drain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Drain")
            .field("phase", &self.phase())
            .finish()
    }
}

impl Drain {
    /// A watcher that is not attached to any server and never drains; for
    /// calling handlers directly in tests.
    pub fn detached() -> Self {
        Self {
            shared: Shared::new(Config::default()),
        }
    }

    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Whether connections have been asked to go.
    pub fn is_draining(&self) -> bool {
        self.shared.is_draining()
    }

    /// Whether the server should be taken out of rotation (any phase but
    /// [`Phase::Serving`]).
    pub fn is_ready(&self) -> bool {
        self.shared.phase() == Phase::Serving
    }

    /// Resolves once connections are asked to go (at once if they already
    /// are).
    pub async fn drained(&self) {
        self.shared.draining.cancelled().await
    }

    /// Resolves as soon as a drain is requested, before the announce period
    /// (for work that no load balancer routes, such as background jobs).
    pub fn requested(&self) -> impl Future<Output = ()> + Send + 'static {
        self.shared.drain_requested.clone().cancelled_owned()
    }

    /// Counts a background job in this server's [`Counts::jobs`] (and so in
    /// the `shutdown.progress` events) until the guard is dropped. The drain
    /// does not wait for it: whoever runs the job decides when to stop.
    pub fn track_job(&self) -> JobGuard {
        self.shared.stats.job_started();
        JobGuard {
            shared: self.shared.clone(),
        }
    }

    /// Like [`Drain::drained`], but owns what it needs, so it can be stored.
    pub fn drained_owned(&self) -> WaitForCancellationFutureOwned {
        self.shared.draining.clone().cancelled_owned()
    }

    /// Resolves when the deadline passes (or the drain is forced): whatever
    /// is still open is being cut.
    pub fn forced(&self) -> impl Future<Output = ()> + Send + 'static {
        self.shared.forcing.clone().cancelled_owned()
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.shared.phase()
    }

    /// Why the drain started, once it has.
    pub fn reason(&self) -> Option<DrainReason> {
        self.shared.reason().cloned()
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

/// A running background job, counted in its server's [`Counts::jobs`]
/// until dropped; made by [`Drain::track_job`].
#[must_use = "the job is counted only while the guard is held"]
pub struct JobGuard {
    shared: Arc<Shared>,
}

impl fmt::Debug for JobGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobGuard").finish_non_exhaustive()
    }
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        self.shared.stats.job_ended();
    }
}

/// Rejection of the [`Drain`] extractor when the request was not served by
/// [`crate::Server`].
#[derive(Debug, thiserror::Error)]
#[error("no lameduck::Drain in the request extensions: serve the app with lameduck::Server")]
pub struct MissingDrain;

impl axum::response::IntoResponse for MissingDrain {
    fn into_response(self) -> axum::response::Response {
        (http::StatusCode::INTERNAL_SERVER_ERROR, self.to_string()).into_response()
    }
}

/// What the server puts in each request's extensions: one per connection,
/// so that cloning it per request touches that connection's reference count,
/// not the server-wide one that every thread shares.
#[derive(Clone, Debug)]
pub(crate) struct DrainExt(pub(crate) Arc<Drain>);

impl Drain {
    /// The watcher of the server that served this request, if it was served
    /// by [`crate::Server`] (or carries a `Drain` inserted by hand).
    pub fn from_extensions(extensions: &http::Extensions) -> Option<Drain> {
        extensions
            .get::<DrainExt>()
            .map(|ext| Drain::clone(&ext.0))
            .or_else(|| extensions.get::<Drain>().cloned())
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Drain {
    type Rejection = MissingDrain;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Drain::from_extensions(&parts.extensions).ok_or(MissingDrain)
    }
}

#[cfg(test)]
mod tests {
    use std::{future::poll_fn, task::Poll, time::Duration};

    use super::*;

    // A waiter parked before the drain is woken by it; one made after is
    // ready at once; dropped waiters leave the registry.
    #[tokio::test]
    async fn drain_waiter_wakes_and_unregisters() {
        let shared = Shared::new(Config::default());
        let waiter = DrainWaiter::new(shared.clone());
        let parked = tokio::spawn(async move { poll_fn(|cx| waiter.poll_drained(cx)).await });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!parked.is_finished());

        shared.start_draining();
        tokio::time::timeout(Duration::from_secs(5), parked)
            .await
            .expect("woken by the drain")
            .unwrap();

        let late = DrainWaiter::new(shared.clone());
        assert!(
            poll_fn(|cx| Poll::Ready(late.poll_drained(cx)))
                .await
                .is_ready()
        );
        drop(late);
        assert!(shared.waiters.lock().unwrap().wakers.is_empty());
    }
}
