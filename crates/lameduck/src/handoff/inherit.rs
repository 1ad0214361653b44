//! Listening sockets inherited from systemd or from the process this one
//! replaces, following `sd_listen_fds(3)`: `LISTEN_FDS` sockets from fd 3,
//! for this process if `LISTEN_PID` names it (or is absent, as after a
//! handoff, where the parent cannot know the child's pid before it runs).

use std::net::TcpListener;

/// Why the inherited sockets cannot be used. A service started with a bad
/// socket environment must not silently bind elsewhere: the caller should
/// stop (the reference binary exits 64).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InheritError {
    /// `LISTEN_FDS` is not a count of sockets.
    #[error("LISTEN_FDS={0:?} is not a number of sockets (1 to 64)")]
    BadCount(String),
    /// `LISTEN_PID` names another process: the sockets are not ours.
    #[error("LISTEN_PID={listen_pid} but this process is {pid}: the sockets are not for it")]
    WrongPid {
        /// What the environment says.
        listen_pid: String,
        /// This process.
        pid: u32,
    },
    /// An fd announced by `LISTEN_FDS` is not a listening TCP socket.
    #[error("inherited fd {fd} is not a TCP listening socket")]
    NotTcp {
        /// The fd.
        fd: i32,
        /// What was found.
        #[source]
        source: std::io::Error,
    },
}

/// The listening sockets a process inherited, in fd order, with their
/// names from `LISTEN_FDNAMES` when it gives them. A predecessor names its
/// service socket `service` and the ones it was told to hand over by their
/// names (see [`UpgradeConfig::hand_over`]); systemd uses each socket's
/// `FileDescriptorName=`.
///
/// [`UpgradeConfig::hand_over`]: crate::handoff::UpgradeConfig::hand_over
#[derive(Debug, Default)]
pub struct Inherited {
    sockets: Vec<(Option<String>, TcpListener)>,
    /// Named regular files (memory-only ones, such as TLS ticket keys)
    /// handed over with the sockets.
    files: Vec<(String, std::fs::File)>,
}

impl Inherited {
    /// How many sockets are left.
    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    /// Whether none is left.
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// Takes the first socket named `name`.
    pub fn take(&mut self, name: &str) -> Option<TcpListener> {
        let i = self
            .sockets
            .iter()
            .position(|(n, _)| n.as_deref() == Some(name))?;
        Some(self.sockets.remove(i).1)
    }

    /// Takes the first socket left, whatever its name.
    pub fn take_first(&mut self) -> Option<TcpListener> {
        (!self.sockets.is_empty()).then(|| self.sockets.remove(0).1)
    }

    /// Takes the file handed over as `name` (a regular or memory-only file
    /// passed with the sockets, such as [`TICKET_KEYS`]).
    ///
    /// [`TICKET_KEYS`]: crate::tls::TICKET_KEYS
    pub fn take_file(&mut self, name: &str) -> Option<std::fs::File> {
        let i = self.files.iter().position(|(n, _)| n == name)?;
        Some(self.files.remove(i).1)
    }

    /// The names of the sockets left, in fd order (`None` where
    /// `LISTEN_FDNAMES` gives none).
    pub fn names(&self) -> Vec<Option<&str>> {
        self.sockets.iter().map(|(n, _)| n.as_deref()).collect()
    }
}

/// The listening sockets this process inherited; empty when `LISTEN_FDS` is
/// not set.
///
/// Call it once, at the start of `main`, before any thread is started: like
/// `sd_listen_fds(1)`, it removes `LISTEN_PID` and `LISTEN_FDS` from the
/// environment (so that children do not inherit sockets meant for this
/// process), and changing the environment while other threads run is unsound.
/// The sockets are set close-on-exec and non-blocking, ready for
/// `tokio::net::TcpListener::from_std`.
///
/// # Errors
///
/// See [`InheritError`].
///
/// # Examples
///
/// ```no_run
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let mut inherited = lameduck::handoff::inherited_listeners()?;
///     let service = inherited.take("service").or_else(|| inherited.take_first());
///     let runtime = tokio::runtime::Runtime::new()?;
///     runtime.block_on(async {
///         let listener = match service {
///             Some(std) => tokio::net::TcpListener::from_std(std)?,
///             None => tokio::net::TcpListener::bind("127.0.0.1:8080").await?,
///         };
///         let app = axum::Router::new();
///         lameduck::Server::new(listener).serve(app).await?;
///         Ok(())
///     })
/// }
/// ```
pub fn inherited_listeners() -> Result<Inherited, InheritError> {
    let Ok(count) = std::env::var("LISTEN_FDS") else {
        return Ok(Inherited::default());
    };
    let n: usize = match count.trim().parse() {
        Ok(n) if (1..=64).contains(&n) => n,
        _ => return Err(InheritError::BadCount(count)),
    };
    let pid = std::process::id();
    if let Ok(listen_pid) = std::env::var("LISTEN_PID") {
        if !listen_pid.is_empty() && listen_pid.trim().parse() != Ok(pid) {
            return Err(InheritError::WrongPid { listen_pid, pid });
        }
    }
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|names| names.split(':').map(str::to_owned).collect())
        .unwrap_or_default();
    let mut fds = listenfd::ListenFd::from_env();
    let mut files = Vec::new();
    let mut sockets = Vec::with_capacity(n);
    for i in 0..n {
        let fd = 3 + i as i32;
        let name = names.get(i).filter(|n| !n.is_empty()).cloned();
        if let Some(name) = &name {
            if let Some(file) = take_file(fd) {
                files.push((name.clone(), file));
                continue;
            }
        }
        sockets.push(take_socket(&mut fds, i, fd, name)?);
    }
    Ok(Inherited { sockets, files })
}

/// A named descriptor that is a regular file (not a socket): opened anew
/// through `/proc/self/fd` (close-on-exec, as std opens files), and the
/// inherited descriptor closed, so that no child inherits it.
fn take_file(fd: i32) -> Option<std::fs::File> {
    let path = format!("/proc/self/fd/{fd}");
    if !std::fs::metadata(&path).ok()?.file_type().is_file() {
        return None;
    }
    let file = std::fs::File::open(&path).ok()?;
    let _ = nix::unistd::close(fd);
    Some(file)
}

fn take_socket(
    fds: &mut listenfd::ListenFd,
    i: usize,
    fd: i32,
    name: Option<String>,
) -> Result<(Option<String>, TcpListener), InheritError> {
    let listener = fds
        .take_tcp_listener(i)
        .and_then(|l| l.ok_or_else(|| std::io::Error::other("fd not passed")))
        .map_err(|source| InheritError::NotTcp { fd, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| InheritError::NotTcp { fd, source })?;
    Ok((name, listener))
}
