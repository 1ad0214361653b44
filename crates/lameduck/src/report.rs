//! What a drain did, for logs and exit codes.

use std::time::Duration;

use serde::Serialize;

use crate::{lifecycle::DrainReason, stats::Totals};

/// Exit code of a process whose drain completed: every connection finished.
pub const EXIT_DRAINED: u8 = 0;
/// Exit code of a process whose drain had to cut connections (deadline
/// passed or second signal), or was forced because a task it depends on
/// panicked. Distinct from 1 (a failure to start or serve)
/// and 64 (bad usage), so that an orchestrator's logs tell them apart.
pub const EXIT_FORCED: u8 = 3;

/// The outcome of a server's drain, returned by [`crate::Server::serve`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DrainReport {
    /// Why the drain started.
    pub reason: DrainReason,
    /// From the drain request to the last connection closed (or cut).
    pub duration: Duration,
    /// Connections still open, and so cut, when the drain was forced; 0
    /// when everything drained by itself.
    pub cut: usize,
    /// A task the drain depends on (signals, accept loop, timers, upgrades)
    /// that panicked; the drain was then forced. `None` normally.
    pub panicked: Option<&'static str>,
    /// What the server did over its whole life.
    pub totals: Totals,
}

impl DrainReport {
    /// Whether every connection finished without being cut, and no task
    /// the drain depends on panicked.
    pub fn is_clean(&self) -> bool {
        self.cut == 0 && self.panicked.is_none()
    }

    /// [`EXIT_DRAINED`] or [`EXIT_FORCED`].
    pub fn exit_code(&self) -> u8 {
        if self.is_clean() {
            EXIT_DRAINED
        } else {
            EXIT_FORCED
        }
    }
}
