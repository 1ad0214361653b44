//! What a drill found: every figure, the verdict, and their renderings
//! (table, JSON, HTML).

mod html;
mod table;

use std::collections::BTreeMap;

use serde::Serialize;

pub use html::html;
pub use table::table;

use crate::record::{Bucket, Class, Latency};

/// Every figure of a drill.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// What was drilled (the command or the URL).
    pub target: String,
    /// The scenarios run.
    pub scenarios: Vec<String>,
    /// The protocol every scenario spoke: `HTTP/1.1` or `HTTP/1.1 over
    /// TLS` (WebSockets `ws` or `wss`).
    pub protocol: String,
    /// What stopped the service: `SIGTERM` or the trigger command (empty
    /// when the drill only restarted it).
    pub trigger: String,
    /// When the stop signal was sent, in ms since the drill started.
    pub signal_at_ms: Option<u64>,
    /// When the process was seen gone, in ms since the drill started.
    pub exit_at_ms: Option<u64>,
    /// Signal to exit, in ms.
    pub exit_after_ms: Option<u64>,
    /// How the process ended (`exit code 0`), when the drill started it.
    pub exit_status: Option<String>,
    /// The exit code, when there is one.
    pub exit_code: Option<i32>,
    /// The restarts made (`restart` scenario), in order.
    pub restarts: Vec<Restart>,
    /// What the drill could not do (a restart or stop it did not send).
    pub notes: Vec<String>,
    /// When the drill ended, in ms.
    pub end_ms: u64,
    /// Outcomes by class name.
    pub counts: BTreeMap<&'static str, u64>,
    /// WebSocket close codes received, with their counts.
    pub close_codes: BTreeMap<u16, u64>,
    /// WebSockets and SSE streams still open when the drill stopped.
    pub still_open: StillOpen,
    /// Latency of the fast requests (the ping path; slow ones are slow on
    /// purpose) before the first signal, in the signal windows, outside them.
    pub latency: Phases,
    /// 100 ms slices.
    pub timeline: Vec<Bucket>,
    /// The most WebSocket and SSE reconnects in one 100 ms slice (the
    /// series is `reconnect` in the timeline's counts): a drain that
    /// closes everything at once shows here as a storm.
    pub reconnect_peak_per_100ms: u64,
    /// When that slice started, in ms since the drill started.
    pub reconnect_peak_at_ms: Option<u64>,
    /// Classes tolerated by `--allow`.
    pub allowed: Vec<String>,
    /// Failure classes with a count above zero, not allowed.
    pub failures: Vec<String>,
    /// True when nothing failed.
    pub passed: bool,
}

/// One restart and what the drill saw of it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Restart {
    /// 1, 2, ...
    pub n: u32,
    /// The signal sent to the main process, or the trigger command.
    pub means: String,
    /// When, in ms since the drill started.
    pub at_ms: u64,
    /// The main process before it.
    pub pid_before: Option<u32>,
    /// When the service reported `READY=1` again, in ms after the restart
    /// (only for a service that reports it).
    pub ready_after_ms: Option<u64>,
    /// The main process it reported then.
    pub pid_after: Option<u32>,
    /// When the replaced process exited, in ms after the restart.
    pub old_exit_after_ms: Option<u64>,
    /// How it exited (when the drill could reap it).
    pub old_exit_status: Option<String>,
    /// Why it counted as `restart_failed`, if it did.
    pub failure: Option<String>,
}

/// Connections open at the end, by kind.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StillOpen {
    /// HTTP connections.
    pub http: i64,
    /// WebSockets.
    pub websocket: i64,
    /// SSE streams.
    pub sse: i64,
}

/// Latencies by phase.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Phases {
    /// Before the signal.
    pub before: Latency,
    /// From the signal to the exit.
    pub during: Latency,
    /// After the exit.
    pub after: Latency,
}

impl Report {
    /// Sets the reconnect peak from the timeline.
    pub(crate) fn find_reconnect_peak(&mut self) {
        let name = Class::Reconnect.name();
        let peak = self
            .timeline
            .iter()
            .map(|b| (b.counts.get(name).copied().unwrap_or(0), b.t_ms))
            .max_by_key(|&(n, t)| (n, std::cmp::Reverse(t)))
            .filter(|&(n, _)| n > 0);
        self.reconnect_peak_per_100ms = peak.map_or(0, |(n, _)| n);
        self.reconnect_peak_at_ms = peak.map(|(_, t)| t);
    }

    /// Sets `failures` and `passed` from the counts and `allowed`.
    pub(crate) fn judge(&mut self) {
        self.failures = Class::ALL
            .into_iter()
            .filter(|c| c.is_failure())
            .filter(|c| self.counts.get(c.name()).copied().unwrap_or(0) > 0)
            .map(|c| c.name().to_owned())
            .filter(|name| !self.allowed.contains(name))
            .collect();
        self.passed = self.failures.is_empty();
    }
}
