//! [`Handle`]: starts, forces and observes a server's drain, and asks for
//! upgrades.

use std::{fmt, sync::Arc};

use crate::{
    handoff::{UpgradeError, Upgrades},
    lifecycle::{Drain, DrainReason, Lifecycle, Phase},
    stats::{Counts, Totals},
};

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
    lifecycle: Arc<Lifecycle>,
    upgrades: Arc<Upgrades>,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("phase", &self.phase())
            .field("reason", &self.lifecycle.reason())
            .finish()
    }
}

impl Handle {
    pub(crate) fn new(lifecycle: Arc<Lifecycle>, upgrades: Arc<Upgrades>) -> Self {
        Self {
            lifecycle,
            upgrades,
        }
    }

    /// Requests a drain: from this instant the phase is
    /// [`Phase::Announcing`] and readiness fails. Returns `true` if this call
    /// started it, `false` if a drain was already under way (its reason is
    /// kept).
    pub fn drain(&self, reason: DrainReason) -> bool {
        self.lifecycle.request(reason)
    }

    /// Forces the drain: cuts whatever remains now, without waiting for the
    /// deadline ([`Phase::Forcing`]). Starts the drain first if it was not
    /// under way (the reason is then `Requested("force")`).
    pub fn force(&self) {
        self.lifecycle
            .request_force(DrainReason::Requested("force".into()));
    }

    /// Starts a new copy of the program on the same listening socket (see
    /// [`crate::handoff`]); once it has reported ready and lived through
    /// its probation ([`crate::handoff::UpgradeConfig::probation`]), this
    /// server drains with [`DrainReason::Restart`]. Returns the new
    /// process's pid. `SIGHUP` does the same.
    ///
    /// # Errors
    ///
    /// When upgrades are not enabled ([`crate::Server::with_upgrade`]), one
    /// is under way already, the server is draining, two older generations
    /// still drain, or the new process fails to start, to become ready or
    /// to live through its probation; in every case this server keeps
    /// serving.
    pub async fn upgrade(&self) -> Result<u32, UpgradeError> {
        self.upgrades.request(&self.lifecycle).await
    }

    /// A watcher of this server's drain.
    pub fn watcher(&self) -> Drain {
        Drain::new(self.lifecycle.clone())
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.lifecycle.phase()
    }

    /// Waits until the phase changes from `current`, and returns the new one.
    pub async fn phase_changed(&self, current: Phase) -> Phase {
        self.lifecycle.changed_from(current).await
    }

    /// Live counts of connections, streams and requests.
    pub fn counts(&self) -> Counts {
        self.lifecycle.counts()
    }

    /// Totals since the server started.
    pub fn totals(&self) -> Totals {
        self.lifecycle.totals()
    }

    /// Time since the drain was requested; `None` before.
    pub fn drain_elapsed(&self) -> Option<std::time::Duration> {
        self.lifecycle.started().map(|t| t.elapsed())
    }
}
