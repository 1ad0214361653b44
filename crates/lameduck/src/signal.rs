//! Process signals, and what each one means to a server.
//!
//! - `SIGTERM`: the orchestrator wants the process gone (Kubernetes, systemd,
//!   `docker stop`): drain.
//! - `SIGINT`: Ctrl-C in a terminal: drain, as for `SIGTERM`.
//! - A second `SIGTERM` or `SIGINT` during the drain: the operator will not
//!   wait; cut what remains now.
//! - `SIGHUP`: the conventional "reload" (systemd's `ExecReload=kill -HUP`):
//!   upgrade, handing the listening socket to a new copy of the program (see
//!   [`crate::handoff`]). Ignored, with an `upgrade.ignored` log line, when
//!   upgrades are not enabled ([`crate::Server::with_upgrade`]) or one is
//!   under way; it never stops the process.

pub use crate::lifecycle::Signal;
use crate::{DrainReason, Handle, handoff::UpgradeError};

/// Listens for `SIGTERM` and `SIGINT`: the first starts a drain through
/// `handle`, the next one forces it; and for `SIGHUP`, which starts an
/// upgrade. [`crate::Server`] calls this unless told
/// [`without_signals`](crate::Server::without_signals).
///
/// The returned task runs until aborted.
///
/// # Errors
///
/// When the signal handlers cannot be installed.
///
/// # Examples
///
/// ```no_run
/// # #[allow(dead_code)]
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// // Signals handled by hand, here with the same meaning as the default.
/// let server = lameduck::Server::new(listener).without_signals();
/// let signals = lameduck::signal::listen(server.handle())?;
/// server.serve(axum::Router::new()).await?;
/// signals.abort();
/// # Ok(()) }
/// ```
pub fn listen(handle: Handle) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut signals = Signals::new()?;
    Ok(tokio::spawn(async move {
        let mut drain_started = false;
        loop {
            let signal = signals.recv().await;
            match signal {
                Signal::Hangup => {
                    tracing::info!(signal = signal.name(), "signal.received");
                    let handle = handle.clone();
                    tokio::spawn(async move {
                        if let Err(
                            e @ (UpgradeError::InProgress
                            | UpgradeError::NotEnabled
                            | UpgradeError::Draining
                            | UpgradeError::TooManyGenerations(_)),
                        ) = handle.upgrade().await
                        {
                            tracing::warn!(reason = %e, "upgrade.ignored");
                        }
                    });
                }
                Signal::Terminate | Signal::Interrupt if drain_started => {
                    tracing::warn!(signal = signal.name(), "shutdown.second_signal");
                    handle.force();
                }
                Signal::Terminate | Signal::Interrupt => {
                    tracing::info!(signal = signal.name(), "signal.received");
                    drain_started = true;
                    if !handle.drain(DrainReason::Signal(signal)) {
                        // Already draining for another reason: the signal is
                        // the operator's first word; the next one forces.
                        tracing::info!(signal = signal.name(), "signal.already_draining");
                    }
                }
            }
        }
    }))
}

#[cfg(unix)]
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Terminate,
            _ = self.int.recv() => Signal::Interrupt,
            _ = self.hup.recv() => Signal::Hangup,
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Self)
    }

    async fn recv(&mut self) -> Signal {
        // Ctrl-C is the only termination request a non-unix console sends.
        let _ = tokio::signal::ctrl_c().await;
        Signal::Interrupt
    }
}
