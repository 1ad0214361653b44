//! Restarting without a gap: serving on inherited listening sockets
//! (systemd socket activation, or a predecessor's handoff), starting a
//! successor that inherits ours, and telling systemd where we stand.
//!
//! The sequence of an upgrade (`SIGHUP`, or [`crate::Handle::upgrade`]):
//! 1. The running process starts a new copy of its binary with the
//!    listening socket as fd 3 (`LISTEN_FDS=1`, `LISTEN_FDNAMES=service`;
//!    sockets given to [`UpgradeConfig::hand_over`] follow it, by name),
//!    and a private datagram socket to report on. Both processes now
//!    accept from the same socket: the kernel queue is shared, nothing is
//!    refused.
//! 2. The new process serves, then reports ready (and tells systemd its pid).
//! 3. Both serve for [`UpgradeConfig::probation`]; if the new process exits
//!    meanwhile, the upgrade is rolled back and the old one serves on.
//! 4. Only then does the old process drain, with [`DrainReason::Restart`]
//!    (WebSockets get 1012): it takes what is queued, closes its copy of the
//!    socket, and finishes what it holds. The socket stays open in the new
//!    process.
//!
//! If the new process exits or is not ready within the timeout, it is
//! killed and the old process keeps serving: a broken build never takes the
//! service down.
//!
//! There is no `unsafe` here: turning inherited fds into sockets (`listenfd`)
//! and placing the socket at fd 3 in the child between fork and exec
//! (`command-fds`) are done by small, widely used crates.
//!
//! [`DrainReason::Restart`]: crate::DrainReason::Restart

mod inherit;
pub(crate) mod notify;
mod upgrade;
mod upgrades;

pub use inherit::{InheritError, Inherited, inherited_listeners};
pub use upgrade::{UpgradeConfig, UpgradeError};
pub(crate) use upgrades::Upgrades;

/// The environment variable naming the datagram socket a successor reports
/// ready on.
pub const READY_SOCKET_ENV: &str = "LAMEDUCK_UPGRADE_READY";
