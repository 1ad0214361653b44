//! Errors of the server.

/// Why [`crate::Server::serve`] could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The `SIGTERM`/`SIGINT` handlers could not be installed.
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
    /// The listener has no local address (it is not bound).
    #[error("cannot read the listener's address")]
    LocalAddr(#[source] std::io::Error),
    /// The listening socket could not be duplicated for upgrades.
    #[error("cannot prepare the listening socket for upgrades")]
    Upgrade(#[source] std::io::Error),
}
