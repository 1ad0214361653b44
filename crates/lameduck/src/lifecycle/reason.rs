//! Why a drain started.

use std::fmt;

use serde::{Serialize, Serializer};

/// Why a drain started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "detail")]
#[non_exhaustive]
pub enum DrainReason {
    /// A process signal (`SIGTERM`, `SIGINT`).
    Signal(Signal),
    /// The process is being replaced by a new copy of itself: WebSockets
    /// are closed with 1012 (Service Restart) instead of 1001 (Going Away).
    Restart,
    /// A programmatic request, with a short description of its source.
    Requested(String),
}

impl DrainReason {
    /// Whether the service comes back right away (a restart or an upgrade),
    /// which clients are told through the WebSocket close code.
    pub fn is_restart(&self) -> bool {
        matches!(self, DrainReason::Restart)
    }
}

impl fmt::Display for DrainReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DrainReason::Signal(signal) => write!(f, "signal {signal}"),
            DrainReason::Restart => f.write_str("restart"),
            DrainReason::Requested(source) => write!(f, "requested by {source}"),
        }
    }
}

/// A process signal a server acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Signal {
    /// `SIGTERM`: drain (a second one forces).
    Terminate,
    /// `SIGINT` (Ctrl-C; the only one on non-unix consoles): as `SIGTERM`.
    Interrupt,
    /// `SIGHUP`: upgrade, when upgrades are enabled; ignored otherwise.
    Hangup,
}

impl Signal {
    /// The signal's conventional name, as logged (`SIGTERM`).
    pub fn name(self) -> &'static str {
        match self {
            Signal::Terminate => "SIGTERM",
            Signal::Interrupt => "SIGINT",
            Signal::Hangup => "SIGHUP",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Signal {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}
