//! The server: an accept loop and per-connection tasks driving hyper-util's
//! HTTP/1.1 + HTTP/2 connection builder, with every connection tracked.

mod accept;
mod conn;
mod io;
mod service;
mod timers;

pub(crate) use io::ConnState;

use std::{fmt, net::SocketAddr, os::fd::AsFd, sync::Arc};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::TokioExecutor;
use tokio::{net::TcpListener, sync::mpsc};
use tower::Service;

use service::BoxError;
pub use service::TrackedBody;

use crate::{
    Config, DrainReason,
    error::Error,
    handoff::{self, UpgradeConfig},
    lifecycle::{self, Handle, Shared, UpgradeRequest},
    report::DrainReport,
};

/// Runs upgrades one at a time, as [`Handle::upgrade`] asks: on success the
/// server drains with [`DrainReason::Restart`]; on failure it keeps serving.
async fn upgrades(
    shared: Arc<Shared>,
    config: UpgradeConfig,
    mut requests: mpsc::UnboundedReceiver<UpgradeRequest>,
) {
    while let Some(reply) = requests.recv().await {
        handoff::notify::reloading();
        tracing::info!(
            timeout_ms = config.ready_timeout.as_millis() as u64,
            "upgrade.begin"
        );
        let socket = shared
            .upgrade_socket
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|fd| fd.try_clone());
        let outcome = match socket {
            None => Err(handoff::UpgradeError::Draining),
            Some(Err(e)) => Err(handoff::UpgradeError::Io(e)),
            Some(Ok(socket)) => {
                handoff::start_successor(socket, &config, shared.drain_requested()).await
            }
        };
        match &outcome {
            Ok(pid) => {
                tracing::info!(new_pid = pid, "upgrade.ready");
                Handle {
                    shared: shared.clone(),
                }
                .drain(DrainReason::Restart);
            }
            Err(e) => {
                let mut why = e.to_string();
                let mut source = std::error::Error::source(e);
                while let Some(s) = source {
                    why.push_str(&format!(": {s}"));
                    source = s.source();
                }
                tracing::warn!(error = %why, "upgrade.failed");
                handoff::notify::still_ready();
                shared.upgrade_finished();
            }
        }
        let done = outcome.is_ok();
        let _ = reply.send(outcome);
        if done {
            return;
        }
    }
}

/// Watches the tasks the drain depends on. One that panics would leave a
/// process that ignores its signals (the signal task) or never closes its
/// listener (the accept loop): the drain is forced instead, and the report
/// (and so the exit code) says so. Never returns.
async fn supervise(
    shared: Arc<Shared>,
    tasks: Vec<(&'static str, tokio::task::JoinHandle<()>)>,
) -> std::convert::Infallible {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let mut running: FuturesUnordered<_> = tasks
        .into_iter()
        .map(|(name, task)| async move { (name, task.await) })
        .collect();
    while let Some((name, result)) = running.next().await {
        if let Err(e) = result {
            if e.is_panic() {
                tracing::error!(task = name, "server.task_panicked");
                shared.task_panicked(name);
            }
        }
    }
    std::future::pending().await
}

/// Serves a `tower::Service` (an axum `Router`, typically) until a drain
/// completes, and returns its [`DrainReport`].
///
/// What a drain does, in order:
/// 1. `/readyz` (see [`crate::health`]) answers 503; for `drain_announce`
///    everything else keeps working, new connections included.
/// 2. Connections already in the kernel's accept queue are accepted, then
///    the listener closes.
/// 3. HTTP/1.1: keep-alive goes off; busy connections finish their request
///    and close, answering with `Connection: close`; idle ones are closed
///    after `idle_grace`, or after serving a request that arrived within it.
///    HTTP/2: GOAWAY, in-flight streams finish.
/// 4. Upgraded connections (WebSockets) stay counted until their socket is
///    dropped; [`crate::ws::WsSession`] closes them with 1001 or 1012.
/// 5. At `drain_timeout` (or on a second signal) whatever remains is cut,
///    and counted in [`DrainReport::forced`].
///
/// # Examples
///
/// Moving from `axum::serve(listener, app).with_graceful_shutdown(..)`:
///
/// ```no_run
/// use axum::{Router, routing::get};
///
/// #[tokio::main]
/// async fn main() -> Result<std::process::ExitCode, Box<dyn std::error::Error>> {
///     let app = Router::new().route("/", get(|| async { "hello" }));
///     let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
///     // Drains on the first SIGTERM/SIGINT, forces on the second.
///     let report = lameduck::Server::new(listener).serve(app).await?;
///     Ok(report.exit_code().into())
/// }
/// ```
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
    signals: bool,
    upgrade: Option<UpgradeConfig>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("listener", &self.listener)
            .field("config", &self.shared.config)
            .field("signals", &self.signals)
            .field("upgrade", &self.upgrade)
            .finish()
    }
}

impl Server {
    /// A server on `listener` with the default [`Config`].
    pub fn new(listener: TcpListener) -> Self {
        Self::with_config(listener, Config::default())
    }

    /// A server on `listener` with the given timings.
    pub fn with_config(listener: TcpListener, config: Config) -> Self {
        Self {
            listener,
            shared: Shared::new(config),
            signals: true,
            upgrade: None,
        }
    }

    /// Enables upgrades: on `SIGHUP` (or [`Handle::upgrade`]) the server
    /// starts its successor on the same listening socket and drains once
    /// the successor is ready (see [`crate::handoff`]).
    pub fn with_upgrade(mut self, config: UpgradeConfig) -> Self {
        self.upgrade = Some(config);
        self
    }

    /// Does not listen for `SIGTERM`/`SIGINT`: the drain starts only through
    /// a [`Handle`]. For tests, and for programs that own their signals.
    pub fn without_signals(mut self) -> Self {
        self.signals = false;
        self
    }

    /// A handle to start, force and observe the drain.
    pub fn handle(&self) -> Handle {
        Handle {
            shared: self.shared.clone(),
        }
    }

    /// The address the listener is bound to.
    ///
    /// # Errors
    ///
    /// As [`TcpListener::local_addr`].
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `service` until the drain completes.
    ///
    /// Each request carries its server's [`crate::Drain`] in its extensions
    /// (see [`crate::Drain::from_extensions`]), and axum's
    /// `ConnectInfo<SocketAddr>` when [`Config::connect_info`] is set. When a client goes away,
    /// or the drain deadline cuts its connection, the request's future is
    /// dropped.
    ///
    /// # Errors
    ///
    /// When the signal handlers or the listener's address cannot be had.
    /// Errors on single connections are logged, never returned.
    pub async fn serve<S, B>(self, service: S) -> Result<DrainReport, Error>
    where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let Server {
            listener,
            shared,
            signals,
            upgrade,
        } = self;
        let addr = listener.local_addr().map_err(Error::LocalAddr)?;
        let upgrades = match upgrade {
            Some(config) => {
                // A copy of the socket, to give to successors; it is
                // close-on-exec, so only the child it is mapped into gets it.
                let fd = listener
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(Error::Upgrade)?;
                *shared
                    .upgrade_socket
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(fd);
                let (tx, rx) = mpsc::unbounded_channel();
                let _ = shared.upgrades.set(tx);
                Some(tokio::spawn(upgrades(shared.clone(), config, rx)))
            }
            None => None,
        };
        let signals = if signals {
            let handle = Handle {
                shared: shared.clone(),
            };
            Some(lifecycle::listen_for_signals(handle).map_err(Error::Signals)?)
        } else {
            None
        };

        let mut builder = conn::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .max_buf_size(shared.config.max_header_bytes.max(8192))
            // A client may send its request and then its FIN (`nc -N`,
            // `curl --http1.0` scripts, some proxies); hyper's default drops
            // such a request unanswered.
            .half_close(true);
        // The header-read timeout is the timer sweep's (see `timers`), not
        // hyper's, whose timer would also bound keep-alive idle time.
        builder.http1().header_read_timeout(None);
        let builder = Arc::new(builder);

        tracing::info!(addr = %addr, pid = std::process::id(), "server.listening");

        let accept = {
            let shared = shared.clone();
            tokio::spawn(accept::run(
                listener,
                shared.clone(),
                move |stream, peer, during_drain| {
                    conn::spawn(
                        builder.clone(),
                        shared.clone(),
                        service.clone(),
                        stream,
                        peer,
                        during_drain,
                    )
                },
            ))
        };

        let sweep = tokio::spawn(timers::sweep(shared.clone()));
        handoff::notify::ready();

        let mut tasks = vec![("accept", accept), ("timers", sweep)];
        tasks.extend(signals.map(|task| ("signals", task)));
        tasks.extend(upgrades.map(|task| ("upgrades", task)));
        let aborts: Vec<_> = tasks.iter().map(|(_, task)| task.abort_handle()).collect();
        let report = tokio::select! {
            report = lifecycle::drive(&shared) => report,
            never = supervise(shared.clone(), tasks) => match never {},
        };
        for task in aborts {
            task.abort();
        }
        Ok(report)
    }
}
