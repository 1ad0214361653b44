//! The server: an accept loop and per-connection tasks driving hyper-util's
//! HTTP/1.1 + HTTP/2 connection builder, every connection tracked in the
//! server's [`registry`], and the drain driver that takes them through the
//! lifecycle's phases.

mod accept;
mod conn;
mod drain;
mod io;
mod registry;
mod service;
mod timers;
mod tls_io;

use std::{fmt, net::SocketAddr, os::fd::AsFd, sync::Arc};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tower::Service;

use service::BoxError;

use crate::{
    Config, Handle,
    error::Error,
    handoff::{self, UpgradeConfig, Upgrades},
    lifecycle::Lifecycle,
    report::DrainReport,
    signal,
};

/// Watches the tasks the drain depends on. One that panics would leave a
/// process that ignores its signals (the signal task) or never closes its
/// listener (the accept loop): the drain is forced instead, and the report
/// (and so the exit code) says so. Never returns.
async fn supervise(
    lifecycle: Arc<Lifecycle>,
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
                lifecycle.task_panicked(name);
            }
        }
    }
    std::future::pending().await
}

/// Serves a `tower::Service` (an axum `Router`, typically) until a drain
/// completes, and returns its [`DrainReport`].
///
/// What a drain does to each kind of connection, in which order, is the
/// drain contract in `ARCHITECTURE.md` at the repository's root (and in
/// brief in the crate's documentation).
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
    lifecycle: Arc<Lifecycle>,
    upgrades: Arc<Upgrades>,
    signals: bool,
    upgrade: Option<UpgradeConfig>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("listener", &self.listener)
            .field("config", self.lifecycle.config())
            .field("signals", &self.signals)
            .field("upgrade", &self.upgrade)
            .field("tls", &self.tls.is_some())
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
            lifecycle: Lifecycle::new(config),
            upgrades: Arc::default(),
            signals: true,
            upgrade: None,
            tls: None,
        }
    }

    /// Enables upgrades: on `SIGHUP` (or [`Handle::upgrade`]) the server
    /// starts its successor on the same listening socket and drains once
    /// the successor is ready (see [`crate::handoff`]). Without it, `SIGHUP`
    /// is ignored (an `upgrade.ignored` line is logged).
    pub fn with_upgrade(mut self, config: UpgradeConfig) -> Self {
        self.upgrade = Some(config);
        self
    }

    /// Terminates TLS with `config` (rustls; the crate re-exports it as
    /// `lameduck::rustls`, so that versions match). HTTP/2 and HTTP/1.1 are
    /// offered by ALPN unless the configuration names its own protocols,
    /// and 0-RTT early data is turned off (it can be replayed). The
    /// handshake counts against [`Config::header_read_timeout`]; a failed
    /// one is counted in [`Totals::tls_handshakes_failed`](crate::Totals)
    /// and logged at debug level (`tls.handshake_failed`). Every connection
    /// the drain closes gets a TLS `close_notify` before its FIN.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use lameduck::{Server, rustls};
    ///
    /// # async fn run(certs: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// #              key: rustls::pki_types::PrivateKeyDer<'static>) -> Result<(), Box<dyn std::error::Error>> {
    /// let tls = rustls::ServerConfig::builder()
    ///     .with_no_client_auth()
    ///     .with_single_cert(certs, key)?;
    /// let listener = tokio::net::TcpListener::bind("0.0.0.0:443").await?;
    /// let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello over TLS" }));
    /// Server::new(listener).with_tls(Arc::new(tls)).serve(app).await?;
    /// # Ok(()) }
    /// # let _ = run;
    /// ```
    pub fn with_tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(crate::tls::acceptor(config));
        self
    }

    /// Does not listen for signals: the drain starts only through a
    /// [`Handle`] (or [`crate::signal::listen`]). For tests, and for
    /// programs that own their signals.
    pub fn without_signals(mut self) -> Self {
        self.signals = false;
        self
    }

    /// A handle to start, force and observe the drain.
    pub fn handle(&self) -> Handle {
        Handle::new(self.lifecycle.clone(), self.upgrades.clone())
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
    /// Each request's future finds its server's [`crate::Drain`] with
    /// [`crate::Drain::current`] (the axum extractor does), and the request
    /// carries axum's `ConnectInfo<SocketAddr>` in its extensions when
    /// [`Config::connect_info`] is set. When a client goes away,
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
        let handle = self.handle();
        let Server {
            listener,
            lifecycle,
            upgrades,
            signals,
            upgrade,
            tls,
        } = self;
        let addr = listener.local_addr().map_err(Error::LocalAddr)?;
        let registry = Arc::new(registry::Registry::default());
        let mut tasks = Vec::new();
        if let Some(config) = upgrade {
            // A copy of the socket, to give to successors; it is
            // close-on-exec, so only the child it is mapped into gets it.
            let fd = listener
                .as_fd()
                .try_clone_to_owned()
                .map_err(Error::Upgrade)?;
            tasks.push(("upgrades", upgrades.enable(fd, config, lifecycle.clone())));
        }
        if signals {
            tasks.push(("signals", signal::listen(handle).map_err(Error::Signals)?));
        }

        let mut builder = conn::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .max_buf_size(lifecycle.config().max_header_bytes.max(8192))
            // A client may send its request and then its FIN (`nc -N`,
            // `curl --http1.0` scripts, some proxies); hyper's default drops
            // such a request unanswered.
            .half_close(true);
        // The header-read timeout is the timer sweep's (see `timers`), not
        // hyper's, whose timer would also bound keep-alive idle time.
        builder.http1().header_read_timeout(None);
        // HTTP/2 gets HTTP/1's bounds: the sweep closes a connection with no
        // open stream at the keep-alive timeout (GOAWAY first); PINGs find a
        // dead peer under open streams; streams, header lists and resets are
        // bounded (rapid reset, CONTINUATION floods).
        let ping = lifecycle.config().http2_ping_interval;
        builder
            .http2()
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(ping)
            .keep_alive_timeout(ping.unwrap_or(std::time::Duration::from_secs(20)))
            .max_concurrent_streams(H2_MAX_STREAMS)
            .max_header_list_size(lifecycle.config().max_header_bytes.max(8192) as u32)
            .max_pending_accept_reset_streams(Some(H2_MAX_PENDING_RESETS))
            .max_local_error_reset_streams(Some(H2_MAX_ERROR_RESETS));
        let ctx = conn::Ctx {
            builder: Arc::new(builder),
            lifecycle: lifecycle.clone(),
            registry: registry.clone(),
            tls,
        };

        tracing::info!(addr = %addr, pid = std::process::id(), "server.listening");

        let acceptor = accept::Acceptor {
            lifecycle: lifecycle.clone(),
            registry: registry.clone(),
            upgrades,
        };
        tasks.push((
            "accept",
            tokio::spawn(accept::run(
                listener,
                acceptor,
                move |stream, peer, during_drain| {
                    conn::spawn(ctx.clone(), service.clone(), stream, peer, during_drain)
                },
            )),
        ));
        tasks.push((
            "timers",
            tokio::spawn(timers::sweep(lifecycle.config().clone(), registry.clone())),
        ));
        handoff::notify::ready();

        let aborts: Vec<_> = tasks.iter().map(|(_, task)| task.abort_handle()).collect();
        let report = tokio::select! {
            report = drain::drive(&lifecycle, &registry) => report,
            never = supervise(lifecycle.clone(), tasks) => match never {},
        };
        for task in aborts {
            task.abort();
        }
        Ok(report)
    }
}

/// Streams open at once on one HTTP/2 connection.
const H2_MAX_STREAMS: u32 = 256;
/// Streams a client may open and reset before the server has accepted them
/// (rapid reset, CVE-2023-44487): past it, GOAWAY.
const H2_MAX_PENDING_RESETS: usize = 20;
/// Streams the server may reset for the client's protocol errors before it
/// ends the connection.
const H2_MAX_ERROR_RESETS: usize = 1024;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{Config, Phase};

    // A task the drain depends on that panics (the signal task, here)
    // forces the drain instead of leaving a process that ignores its
    // signals; one that ends normally changes nothing.
    #[tokio::test]
    async fn a_panicked_task_forces_the_drain() {
        let lifecycle = Lifecycle::new(Config::default());
        let done = tokio::spawn(async {});
        let panics = tokio::spawn(async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            panic!("a task the drain depends on panicked (as this test wants)");
        });
        let watching = tokio::spawn(supervise(
            lifecycle.clone(),
            vec![("accept", done), ("signals", panics)],
        ));
        tokio::time::timeout(Duration::from_secs(5), lifecycle.force_requested())
            .await
            .expect("the panic forces the drain");
        assert_eq!(lifecycle.panicked(), Some("signals"));
        assert_eq!(lifecycle.phase(), Phase::Announcing);
        assert!(!watching.is_finished(), "supervise never returns");
        watching.abort();
    }
}
