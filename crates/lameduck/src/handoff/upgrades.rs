//! The upgrades of one server: asked for by [`crate::Handle::upgrade`] (or
//! `SIGHUP`), run one at a time by a task of their own.

use std::{
    os::fd::OwnedFd,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::sync::{mpsc, oneshot};

use super::{UpgradeConfig, UpgradeError, notify, upgrade::start_successor};
use crate::lifecycle::{DrainReason, Lifecycle, Phase};

/// Generations that may drain at once: this process, once it upgrades,
/// and one older.
const MAX_DRAINING: usize = 2;

/// Older generations of this program still running: its parent, the
/// parent's parent, and so on, while they run with the same arguments
/// (each successor is its predecessor's child, started with its
/// arguments, until the predecessor exits and it goes to init or a
/// subreaper). They are in their probation or draining.
fn draining_ancestors() -> usize {
    // The arguments after the program's name: a successor may be another
    // binary (a deploy's new path), never other arguments.
    let args = |pid: u32| {
        let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        Some(
            raw.split(|b| *b == 0)
                .skip(1)
                .map(<[u8]>::to_vec)
                .collect::<Vec<_>>(),
        )
    };
    let parent = |pid: u32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The fields after the command name (in parentheses, which may
        // itself hold spaces): state, then the parent's pid.
        let rest = stat.rsplit_once(')')?.1;
        rest.split_whitespace().nth(1)?.parse::<u32>().ok()
    };
    let me = std::process::id();
    let Some(mine) = args(me) else {
        return 0;
    };
    let mut count = 0;
    let mut pid = me;
    // Bounded: a chain of generations is short.
    for _ in 0..64 {
        match parent(pid) {
            Some(p) if p > 1 && args(p).as_ref() == Some(&mine) => {
                count += 1;
                pid = p;
            }
            _ => break,
        }
    }
    count
}

/// The successor reported ready: this process keeps serving beside it for
/// the probation window, and the upgrade completes (with the successor's
/// pid) only if it is still running at the end. A drain requested
/// meanwhile (SIGTERM) ends the probation: the successor has served that
/// long, and this process goes as asked.
async fn probation(
    mut child: tokio::process::Child,
    config: &UpgradeConfig,
    lifecycle: &Arc<Lifecycle>,
) -> Result<u32, UpgradeError> {
    let pid = child.id().unwrap_or(0);
    tracing::info!(
        new_pid = pid,
        probation_ms = config.probation.as_millis() as u64,
        "upgrade.ready"
    );
    tokio::select! {
        status = child.wait() => Err(UpgradeError::RolledBack(match status {
            Ok(status) => status.to_string(),
            Err(e) => format!("(cannot tell how: {e})"),
        })),
        () = tokio::time::sleep(config.probation) => Ok(pid),
        () = lifecycle.reached(Phase::Announcing) => Ok(pid),
    }
}

/// An upgrade request, and where to send its outcome (the successor's pid).
type Request = oneshot::Sender<Result<u32, UpgradeError>>;

/// Whether upgrades are enabled, whether one is under way, and the copy of
/// the listening socket that successors get.
#[derive(Debug, Default)]
pub(crate) struct Upgrades {
    /// Set while an upgrade runs: one at a time.
    in_progress: AtomicBool,
    /// Where requests go; set when the server starts with upgrades enabled.
    requests: OnceLock<mpsc::UnboundedSender<Request>>,
    /// A copy of the listening socket for successors. Released with the
    /// server's own listener: a copy left open would keep the socket
    /// listening with nobody accepting, and connections made during the
    /// drain would be queued, then reset, instead of refused.
    socket: Mutex<Option<OwnedFd>>,
}

impl Upgrades {
    fn socket(&self) -> std::sync::MutexGuard<'_, Option<OwnedFd>> {
        self.socket.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Enables upgrades with `socket` (a copy of the listening socket) and
    /// starts the task that runs them; on success it drains `lifecycle`
    /// with [`DrainReason::Restart`], on failure the server keeps serving.
    pub(crate) fn enable(
        self: &Arc<Self>,
        socket: OwnedFd,
        config: UpgradeConfig,
        lifecycle: Arc<Lifecycle>,
    ) -> tokio::task::JoinHandle<()> {
        *self.socket() = Some(socket);
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.requests.set(tx);
        tokio::spawn(self.clone().run(config, lifecycle, rx))
    }

    /// Closes the copy of the listening socket (the server's listener is
    /// closing); later upgrades fail with [`UpgradeError::Draining`].
    pub(crate) fn release_socket(&self) {
        drop(self.socket().take());
    }

    /// Asks for an upgrade and waits for its outcome.
    pub(crate) async fn request(&self, lifecycle: &Lifecycle) -> Result<u32, UpgradeError> {
        if lifecycle.reason().is_some() {
            return Err(UpgradeError::Draining);
        }
        let Some(requests) = self.requests.get() else {
            return Err(UpgradeError::NotEnabled);
        };
        let older = draining_ancestors();
        if older >= MAX_DRAINING {
            return Err(UpgradeError::TooManyGenerations(older));
        }
        if self.in_progress.swap(true, Ordering::AcqRel) {
            return Err(UpgradeError::InProgress);
        }
        let (reply, outcome) = oneshot::channel();
        if requests.send(reply).is_err() {
            self.in_progress.store(false, Ordering::Release);
            return Err(UpgradeError::Draining);
        }
        outcome.await.unwrap_or(Err(UpgradeError::Draining))
    }

    async fn run(
        self: Arc<Self>,
        config: UpgradeConfig,
        lifecycle: Arc<Lifecycle>,
        mut requests: mpsc::UnboundedReceiver<Request>,
    ) {
        while let Some(reply) = requests.recv().await {
            notify::reloading();
            tracing::info!(
                timeout_ms = config.ready_timeout.as_millis() as u64,
                "upgrade.begin"
            );
            let socket = self.socket().as_ref().map(|fd| fd.try_clone());
            let outcome = match socket {
                None => Err(UpgradeError::Draining),
                Some(Err(e)) => Err(UpgradeError::Io(e)),
                Some(Ok(socket)) => {
                    match start_successor(socket, &config, lifecycle.reached(Phase::Announcing))
                        .await
                    {
                        Ok(child) => probation(child, &config, &lifecycle).await,
                        Err(e) => Err(e),
                    }
                }
            };
            match &outcome {
                Ok(pid) => {
                    tracing::info!(new_pid = pid, "upgrade.complete");
                    lifecycle.request(DrainReason::Restart);
                }
                Err(e) => {
                    let mut why = e.to_string();
                    let mut source = std::error::Error::source(e);
                    while let Some(s) = source {
                        why.push_str(&format!(": {s}"));
                        source = s.source();
                    }
                    if matches!(e, UpgradeError::RolledBack(_)) {
                        tracing::warn!(error = %why, "upgrade.rolled_back");
                        notify::main_again();
                    } else {
                        tracing::warn!(error = %why, "upgrade.failed");
                        notify::still_ready();
                    }
                    self.in_progress.store(false, Ordering::Release);
                }
            }
            let done = outcome.is_ok();
            let _ = reply.send(outcome);
            if done {
                return;
            }
        }
    }
}
