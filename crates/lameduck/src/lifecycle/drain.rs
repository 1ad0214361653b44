//! [`Drain`]: the drain as a handler sees it.

use std::{
    fmt,
    sync::{Arc, OnceLock},
};

use super::{DrainReason, Lifecycle, Phase, PhaseFuture};
use crate::Config;

/// Watches the drain from inside a handler: it is an axum extractor, and
/// [`Drain::current`] finds it while any request served by
/// [`crate::Server`] is being handled (for plain tower services).
///
/// The server does not put it in the request's extensions (that cost an
/// allocation of the extension map a request, more than the rest of the
/// server's work on it): it is set on the thread while the application's
/// future is polled, where the extractor finds it. A middleware that
/// hands the request to another task before the handler takes its `Drain`
/// (tower's `Buffer`, say) must carry it along: insert
/// `Drain::current()` into the request's extensions first; the extractor
/// and [`Drain::from_extensions`] look there before anything else.
///
/// What each phase means, and when it comes, is the drain contract in
/// `ARCHITECTURE.md`: [`Drain::requested`] resolves at the drain request,
/// [`Drain::drained`] when connections are asked to go (after the announce
/// period), [`Drain::forced`] when whatever remains is being cut.
///
/// A request that was not served by [`crate::Server`] (a router called with
/// `tower::ServiceExt::oneshot` in a unit test, say) gets a detached
/// `Drain` that never drains, and a warning is logged once
/// (`drain.detached`).
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
///
/// Testing a router that uses it, without a server:
///
/// ```
/// use axum::{Router, body::Body, routing::get};
/// use tower::ServiceExt;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let app = Router::new().route("/readyz", get(lameduck::health::readyz));
/// let res = app
///     .oneshot(http::Request::get("/readyz").body(Body::empty()).unwrap())
///     .await
///     .unwrap();
/// assert_eq!(res.status(), 200);
/// # });
/// ```
#[derive(Clone)]
pub struct Drain {
    lifecycle: Arc<Lifecycle>,
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
            lifecycle: Lifecycle::new(Config::default()),
        }
    }

    pub(crate) fn new(lifecycle: Arc<Lifecycle>) -> Self {
        Self { lifecycle }
    }

    pub(crate) fn lifecycle(&self) -> &Arc<Lifecycle> {
        &self.lifecycle
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.lifecycle.phase()
    }

    /// Whether the server wants new traffic: while [`Phase::Serving`].
    /// From a drain request on it does not, and readiness probes should
    /// fail (as [`crate::health::readyz`] does); but a restart's drain (an
    /// upgrade, whose successor serves on the same socket) stays ready
    /// until it is forced.
    pub fn is_ready(&self) -> bool {
        self.lifecycle.is_ready()
    }

    /// Whether connections have been asked to go ([`Phase::Draining`] or
    /// later).
    pub fn is_draining(&self) -> bool {
        self.lifecycle.is_draining()
    }

    /// Why the drain started, once it has.
    pub fn reason(&self) -> Option<DrainReason> {
        self.lifecycle.reason().cloned()
    }

    /// Resolves as soon as a drain is requested ([`Phase::Announcing`]),
    /// before the announce period: for work that no load balancer routes,
    /// such as background jobs.
    pub fn requested(&self) -> PhaseFuture {
        self.lifecycle.reached(Phase::Announcing)
    }

    /// Resolves once connections are asked to go ([`Phase::Draining`]): a
    /// long handler should finish early.
    pub fn drained(&self) -> PhaseFuture {
        self.lifecycle.reached(Phase::Draining)
    }

    /// Resolves once the drain is forced ([`Phase::Forcing`]: the deadline
    /// passed, a second signal came, or [`crate::Handle::force`] was
    /// called): whatever is still open is being cut. Never resolves for a
    /// drain that completed without being forced.
    pub fn forced(&self) -> PhaseFuture {
        self.lifecycle.reached(Phase::Forcing)
    }

    /// Resolves when the caller is told to go: at once when the server's
    /// connections are asked to go, or at the caller's own instant of a
    /// spread drain (see [`crate::Config::drain_spread`]), like a
    /// connection. Registered when called: call it when a long-lived
    /// session starts, and keep the future, for a handler that takes over
    /// the drain of its session ([`crate::ws::WsConfig::handler_drains`]).
    pub fn told(&self) -> Told {
        Told {
            waiter: super::DrainWaiter::new(self.lifecycle.clone()),
        }
    }

    /// Counts a background job in this server's [`crate::Counts::jobs`]
    /// (and so in the `shutdown.progress` events) until the guard is
    /// dropped. The drain does not wait for it: whoever runs the job
    /// decides when to stop.
    pub fn track_job(&self) -> JobGuard {
        self.lifecycle.stats().job_started();
        JobGuard {
            lifecycle: self.lifecycle.clone(),
        }
    }

    /// The watcher of the server that serves this request: a `Drain`
    /// inserted into its extensions by hand, else [`Drain::current`].
    pub fn from_extensions(extensions: &http::Extensions) -> Option<Drain> {
        extensions.get::<Drain>().cloned().or_else(Drain::current)
    }

    /// The watcher of the server whose request is being handled on this
    /// task: `Some` inside the application's future of a request served
    /// by [`crate::Server`] (and in nothing it spawns), `None` elsewhere.
    ///
    /// ```
    /// // Outside any request.
    /// assert!(lameduck::Drain::current().is_none());
    /// ```
    pub fn current() -> Option<Drain> {
        super::current::lifecycle().map(Drain::new)
    }

    /// The drain of requests no server of ours served: detached, logged
    /// once.
    fn fallback() -> Drain {
        static DETACHED: OnceLock<Drain> = OnceLock::new();
        DETACHED
            .get_or_init(|| {
                tracing::warn!(
                    detail = "a handler took lameduck::Drain in a request not served by \
                              lameduck::Server; it gets a Drain that never drains",
                    "drain.detached"
                );
                Drain::detached()
            })
            .clone()
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Drain {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Drain::from_extensions(&parts.extensions).unwrap_or_else(Drain::fallback))
    }
}

/// Resolves when its holder is told to go; made by [`Drain::told`].
#[must_use = "futures do nothing unless polled"]
pub struct Told {
    waiter: super::DrainWaiter,
}

impl fmt::Debug for Told {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Told").finish_non_exhaustive()
    }
}

impl std::future::Future for Told {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        self.waiter.poll_drained(cx)
    }
}

/// A running background job, counted in its server's
/// [`crate::Counts::jobs`] until dropped; made by [`Drain::track_job`].
#[must_use = "the job is counted only while the guard is held"]
pub struct JobGuard {
    lifecycle: Arc<Lifecycle>,
}

impl fmt::Debug for JobGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobGuard").finish_non_exhaustive()
    }
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        self.lifecycle.stats().job_ended();
    }
}
