//! Starting the successor and waiting for it to be ready.

use std::{
    ffi::OsString,
    os::fd::{AsFd, OwnedFd},
    path::PathBuf,
    process::{ExitStatus, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use command_fds::{CommandFdExt, FdMapping};
use tokio::net::UnixDatagram;

use super::READY_SOCKET_ENV;

/// How a server starts its successor on `SIGHUP` or
/// [`crate::Handle::upgrade`].
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
///
/// # #[allow(dead_code)]
/// # async fn run(listener: tokio::net::TcpListener) -> Result<(), lameduck::Error> {
/// let mut upgrade = lameduck::handoff::UpgradeConfig::default();
/// upgrade.ready_timeout = Duration::from_secs(10);
/// // SIGHUP now starts a new copy of this binary on the same socket.
/// lameduck::Server::new(listener).with_upgrade(upgrade).serve(axum::Router::new()).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct UpgradeConfig {
    /// The program to start; this process's own executable when `None`
    /// (as it is on disk now: a deploy replaces the file, then sends
    /// `SIGHUP`).
    pub binary: Option<PathBuf>,
    /// Its arguments; this process's own when `None`.
    pub args: Option<Vec<OsString>>,
    /// How long the successor gets to report ready before it is killed and
    /// this process keeps serving.
    pub ready_timeout: Duration,
    /// After the successor reported ready, how long this process keeps
    /// serving beside it before it drains (default 5 s). If the successor
    /// exits within it (a binary that crashes a second after it starts),
    /// the upgrade is rolled back: this process never stopped accepting,
    /// so no connection is refused, and it serves on as before.
    pub probation: Duration,
    /// Other sockets the successor inherits after the service's, by name.
    sockets: Vec<(String, Arc<OwnedFd>)>,
}

impl UpgradeConfig {
    /// Hands `socket` (an admin listener, say) to successors too, after the
    /// service's socket: they find it named `name` in `LISTEN_FDNAMES`
    /// (the service's socket is named `service`), see
    /// [`crate::handoff::inherited_listeners`]. A copy is kept for as long
    /// as the configuration lives, so the socket never closes between the
    /// two processes: connections queue for whichever accepts first.
    ///
    /// # Errors
    ///
    /// When `name` is `service`, empty, longer than 255 bytes, or has a
    /// `:` or a control character (systemd's rules for socket names), or
    /// the socket cannot be duplicated.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn run() -> std::io::Result<()> {
    /// let admin = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let mut upgrade = lameduck::handoff::UpgradeConfig::default();
    /// upgrade.hand_over("admin", &admin)?;
    /// # Ok(()) }
    /// # run().unwrap();
    /// ```
    pub fn hand_over(&mut self, name: &str, socket: &impl AsFd) -> std::io::Result<()> {
        let bad = name.is_empty()
            || name == SERVICE_SOCKET
            || name.len() > 255
            || name.chars().any(|c| c == ':' || c.is_control())
            || self.sockets.iter().any(|(n, _)| n == name);
        if bad {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{name:?} cannot name a handed-over socket"),
            ));
        }
        let fd = socket.as_fd().try_clone_to_owned()?;
        self.sockets.push((name.to_owned(), Arc::new(fd)));
        Ok(())
    }
}

/// The name of the service's listening socket in `LISTEN_FDNAMES`.
pub(crate) const SERVICE_SOCKET: &str = "service";

impl Default for UpgradeConfig {
    /// This binary, these arguments, 30 s to be ready.
    fn default() -> Self {
        Self {
            binary: None,
            args: None,
            ready_timeout: Duration::from_secs(30),
            probation: Duration::from_secs(5),
            sockets: Vec::new(),
        }
    }
}

/// Why an upgrade did not happen. The server keeps serving in every case.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// Another upgrade is under way; this request is ignored.
    #[error("an upgrade is already under way")]
    InProgress,
    /// The server is draining already.
    #[error("the server is draining")]
    Draining,
    /// The server was not given an [`UpgradeConfig`].
    #[error("upgrades are not enabled for this server")]
    NotEnabled,
    /// The successor could not be started.
    #[error("cannot start {binary:?}")]
    Spawn {
        /// The program.
        binary: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The successor exited before reporting ready.
    #[error("the new process exited before it was ready ({0})")]
    Exited(ExitStatus),
    /// The successor did not report ready in time; it was killed.
    #[error("the new process was not ready within {0:?}; killed")]
    Timeout(Duration),
    /// Setting up the handoff failed (socket, fd duplication).
    #[error("cannot set up the handoff")]
    Io(#[source] std::io::Error),
    /// Older generations of this program are still draining (this many,
    /// the limit): another upgrade would add one more. Upgrades that come
    /// faster than drains end would pile processes up.
    #[error("{0} older generations are still draining; wait for them to exit")]
    TooManyGenerations(usize),
    /// The successor reported ready, then exited within the probation
    /// window: this process serves on, as before the upgrade.
    #[error("the new process exited {0} within its probation; rolled back")]
    RolledBack(String),
}

/// Starts the successor with `listener` (a copy, given to the child and
/// closed here once it is started) as fd 3, the handed-over sockets after
/// it, and waits until it reports
/// ready; returns it. On failure, or when `cancel` resolves first (a drain
/// began), the successor is killed and reaped.
pub(super) async fn start_successor(
    listener: OwnedFd,
    config: &UpgradeConfig,
    cancel: impl Future<Output = ()>,
) -> Result<tokio::process::Child, UpgradeError> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let binary = match &config.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe().map_err(UpgradeError::Io)?,
    };
    let args: Vec<OsString> = match &config.args {
        Some(a) => a.clone(),
        None => std::env::args_os().skip(1).collect(),
    };
    let path = std::env::temp_dir().join(format!(
        "lameduck-upgrade-{}-{}.sock",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&path);
    let reports = UnixDatagram::bind(&path).map_err(UpgradeError::Io)?;
    let _remove = RemoveOnDrop(path.clone());

    let mut names = vec![SERVICE_SOCKET];
    let mut mappings = vec![FdMapping {
        parent_fd: listener,
        child_fd: 3,
    }];
    for (name, fd) in &config.sockets {
        names.push(name);
        mappings.push(FdMapping {
            parent_fd: fd.try_clone().map_err(UpgradeError::Io)?,
            child_fd: 3 + mappings.len() as i32,
        });
    }
    let mut command = std::process::Command::new(&binary);
    command
        .args(&args)
        .env("LISTEN_FDS", names.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env_remove("LISTEN_PID")
        .env(READY_SOCKET_ENV, &path)
        .stdin(Stdio::null());
    command
        .fd_mappings(mappings)
        .map_err(|e| UpgradeError::Io(std::io::Error::other(e)))?;
    // The command (and with it our copy of the socket) is dropped as soon as
    // the child has started.
    let mut child = tokio::process::Command::from(command)
        .spawn()
        .map_err(|source| UpgradeError::Spawn {
            binary: binary.clone(),
            source,
        })?;
    let pid = child.id().unwrap_or(0);
    tracing::info!(pid, binary = %binary.display(), "upgrade.started");

    let outcome = tokio::select! {
        ready = wait_ready(&reports) => ready.map_err(UpgradeError::Io),
        status = child.wait() => Err(match status {
            Ok(status) => UpgradeError::Exited(status),
            Err(e) => UpgradeError::Io(e),
        }),
        () = tokio::time::sleep(config.ready_timeout) => Err(UpgradeError::Timeout(config.ready_timeout)),
        () = cancel => Err(UpgradeError::Draining),
    };
    match outcome {
        Ok(()) => Ok(child),
        Err(e) => {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
            Err(e)
        }
    }
}

/// Reads reports until one says `READY=1`.
async fn wait_ready(reports: &UnixDatagram) -> std::io::Result<()> {
    let mut buf = [0u8; 512];
    loop {
        let n = reports.recv(&mut buf).await?;
        let msg = String::from_utf8_lossy(&buf[..n]);
        if msg.lines().any(|l| l.trim() == "READY=1") {
            return Ok(());
        }
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
