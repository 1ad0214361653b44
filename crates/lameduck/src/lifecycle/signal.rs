//! Process signals, and what each one means to a server.
//!
//! - `SIGTERM`: the orchestrator wants the process gone (Kubernetes, systemd,
//!   `docker stop`): drain.
//! - `SIGINT`: Ctrl-C in a terminal: drain, as for `SIGTERM`.
//! - A second `SIGTERM` or `SIGINT` during the drain: the operator will not
//!   wait; cut what remains now.
//! - `SIGHUP`: the conventional "reload" (systemd's `ExecReload=kill -HUP`):
//!   upgrade, handing the listening socket to a new copy of the program (see
//!   [`crate::handoff`]). Ignored, with a log line, when upgrades are not
//!   enabled or one is under way; it never stops the process.

use super::{DrainReason, Handle};
use crate::handoff::UpgradeError;

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
pub fn listen_for_signals(handle: Handle) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut signals = Signals::new()?;
    Ok(tokio::spawn(async move {
        let mut drain_started = false;
        loop {
            let name = signals.recv().await;
            if name == "SIGHUP" {
                tracing::info!(signal = name, "signal.received");
                let handle = handle.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle.upgrade().await {
                        if matches!(
                            e,
                            UpgradeError::InProgress
                                | UpgradeError::NotEnabled
                                | UpgradeError::Draining
                        ) {
                            tracing::warn!(reason = %e, "upgrade.ignored");
                        }
                    }
                });
                continue;
            }
            if drain_started {
                tracing::warn!(signal = name, "shutdown.second_signal");
                handle.force();
            } else {
                tracing::info!(signal = name, "signal.received");
                drain_started = true;
                if !handle.drain(DrainReason::Signal(name)) {
                    // Already draining for another reason: the signal is the
                    // operator's first word; the next one forces.
                    tracing::info!(signal = name, "drain already under way");
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

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
            _ = self.hup.recv() => "SIGHUP",
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

    async fn recv(&mut self) -> &'static str {
        // Ctrl-C is the only termination request a non-unix console sends.
        let _ = tokio::signal::ctrl_c().await;
        "CTRL_C"
    }
}
