//! What the clients saw, as it happens: outcome counts, latencies by phase,
//! and a timeline in 100 ms buckets.

use std::{
    collections::BTreeMap,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Width of a timeline bucket.
pub const BUCKET: Duration = Duration::from_millis(100);

/// Every outcome the drill tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Class {
    /// A complete HTTP response with a status below 500.
    Ok,
    /// A complete response with a 5xx status.
    Http5xx,
    /// The connection was refused before the final stop (or during a
    /// restart): the request was never accepted.
    Refused,
    /// The connection was refused after the final stop was sent: a service
    /// with no successor closes its listener, and nothing can avoid that.
    /// Not a failure.
    RefusedAfterStop,
    /// The request could not be written on a kept-alive connection the
    /// server had closed, or (HTTP/2) its stream was refused by the
    /// server's GOAWAY; retried on a new one (what every HTTP client does).
    Retried,
    /// An HTTP/2 connection the server ended with GOAWAY (`--http2`). Not a
    /// failure: the graceful end of an HTTP/2 connection.
    H2Goaway,
    /// The request was written and not one byte of a response came back.
    Lost,
    /// A response began and the connection ended before it was complete.
    Cut,
    /// An idle keep-alive connection closed by the server with a FIN.
    IdleClosed,
    /// An idle keep-alive connection reset by the server.
    IdleReset,
    /// A WebSocket closed by the server with a Close frame.
    WsClosed,
    /// A WebSocket that ended without a Close frame (EOF or reset).
    WsAbrupt,
    /// A WebSocket message echoed back.
    WsEchoed,
    /// A WebSocket message sent that never came back, on a socket that then
    /// broke or stayed silent.
    WsUnechoed,
    /// A WebSocket message that crossed the server's Close: sent before the
    /// Close arrived, not echoed. RFC 6455 forbids data after a Close, so
    /// no server can answer it; the client must resend it elsewhere.
    WsCrossed,
    /// An SSE stream the server ended cleanly (the chunked body's end).
    SseClean,
    /// An SSE stream that ended without the body's end (EOF or reset).
    SseAbrupt,
    /// An SSE event received.
    SseEvent,
    /// An SSE event id that skipped one or more ids (on one stream, or
    /// across a reconnect with `Last-Event-ID`).
    SseGap,
    /// A WebSocket or SSE client that had a session opened a new one (its
    /// last one ended): what a drain sends to the rest of a fleet. Not a
    /// failure; its peak per 100 ms shows a reconnect storm.
    Reconnect,
    /// A restart that did not go through: no process of a spawned service
    /// was left; a service that speaks sd_notify said nothing before the
    /// next restart was due, or no `READY=1` within the restart timeout; or
    /// the health path did not answer 200 after it.
    RestartFailed,
    /// The service was told to stop and was still running when the drill's
    /// time limit came.
    NoExit,
}

impl Class {
    /// Every class, in report order.
    pub const ALL: [Class; 22] = [
        Class::Ok,
        Class::Http5xx,
        Class::Refused,
        Class::RefusedAfterStop,
        Class::Retried,
        Class::H2Goaway,
        Class::Lost,
        Class::Cut,
        Class::IdleClosed,
        Class::IdleReset,
        Class::WsClosed,
        Class::WsAbrupt,
        Class::WsEchoed,
        Class::WsUnechoed,
        Class::WsCrossed,
        Class::SseClean,
        Class::SseAbrupt,
        Class::SseEvent,
        Class::SseGap,
        Class::Reconnect,
        Class::RestartFailed,
        Class::NoExit,
    ];

    /// The name used in the table, the JSON and `--allow`.
    pub fn name(self) -> &'static str {
        match self {
            Class::Ok => "ok",
            Class::Http5xx => "http_5xx",
            Class::Refused => "refused",
            Class::RefusedAfterStop => "refused_after_stop",
            Class::Retried => "retried",
            Class::H2Goaway => "h2_goaway",
            Class::Lost => "lost",
            Class::Cut => "cut",
            Class::IdleClosed => "idle_closed",
            Class::IdleReset => "idle_reset",
            Class::WsClosed => "ws_closed",
            Class::WsAbrupt => "ws_abrupt",
            Class::WsEchoed => "ws_echoed",
            Class::WsUnechoed => "ws_unechoed",
            Class::WsCrossed => "ws_crossed",
            Class::SseClean => "sse_clean",
            Class::SseAbrupt => "sse_abrupt",
            Class::SseEvent => "sse_event",
            Class::SseGap => "sse_gap",
            Class::Reconnect => "reconnect",
            Class::RestartFailed => "restart_failed",
            Class::NoExit => "no_exit",
        }
    }

    /// Whether a count above zero is a failure unless allowed.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            Class::Http5xx
                | Class::Refused
                | Class::Lost
                | Class::Cut
                | Class::IdleReset
                | Class::WsAbrupt
                | Class::WsUnechoed
                | Class::SseAbrupt
                | Class::SseGap
                | Class::RestartFailed
                | Class::NoExit
        )
    }

    /// The class named `name`, as `--allow` takes it.
    pub fn from_name(name: &str) -> Option<Class> {
        Class::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// Kinds of open connections on the timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// HTTP/1.1 connections (load, in-flight, idle).
    Http,
    /// WebSockets.
    Ws,
    /// SSE streams.
    Sse,
}

/// Where in the drill an event happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Before the first signal.
    Before,
    /// From a signal until the service is through it: the stop until the
    /// exit; a restart until the new process is ready and the old one gone
    /// (for a service that reports neither, until the next restart).
    During,
    /// Outside those windows, after the first signal.
    After,
}

/// One 100 ms slice of the timeline.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Bucket {
    /// Milliseconds since the drill started.
    pub t_ms: u64,
    /// Outcomes counted in this slice, by class name (zeros left out).
    pub counts: BTreeMap<&'static str, u64>,
    /// Open HTTP connections at the end of the slice.
    pub open_http: i64,
    /// Open WebSockets at the end of the slice.
    pub open_ws: i64,
    /// Open SSE streams at the end of the slice.
    pub open_sse: i64,
}

/// Shared by every client task.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    phase: AtomicU8,
    /// Set when the final stop is sent: refusals are expected from then on.
    stopping: AtomicBool,
    totals: [AtomicU64; Class::ALL.len()],
    close_codes: Mutex<BTreeMap<u16, u64>>,
    latency: Mutex<[Histogram<u64>; 3]>,
    buckets: Mutex<Vec<Bucket>>,
    open: [AtomicI64; 3],
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// A recorder whose clock starts now.
    pub fn new() -> Self {
        let histogram = || Histogram::new_with_bounds(1, 600_000_000, 2).expect("valid bounds");
        Self {
            start: Instant::now(),
            phase: AtomicU8::new(0),
            stopping: AtomicBool::new(false),
            totals: Default::default(),
            close_codes: Mutex::default(),
            latency: Mutex::new([histogram(), histogram(), histogram()]),
            buckets: Mutex::default(),
            open: Default::default(),
        }
    }

    /// Time since the drill started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Moves to `phase` (for latencies recorded from now on).
    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            0 => Phase::Before,
            1 => Phase::During,
            _ => Phase::After,
        }
    }

    /// Counts one outcome of `class`.
    pub fn count(&self, class: Class) {
        self.count_n(class, 1);
    }

    /// The final stop is about to be sent: refusals counted from now on
    /// are [`Class::RefusedAfterStop`].
    pub fn final_stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Counts `n` outcomes of `class`.
    pub fn count_n(&self, class: Class, n: u64) {
        if n == 0 {
            return;
        }
        let class = match class {
            Class::Refused if self.stopping.load(Ordering::Relaxed) => Class::RefusedAfterStop,
            other => other,
        };
        self.totals[class as usize].fetch_add(n, Ordering::Relaxed);
        self.with_bucket(|b| *b.counts.entry(class.name()).or_default() += n);
    }

    /// Records a WebSocket close code received from the server.
    pub fn close_code(&self, code: u16) {
        self.count(Class::WsClosed);
        *self
            .close_codes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(code)
            .or_default() += 1;
    }

    /// Records a request's latency in the current phase.
    pub fn latency(&self, took: Duration) {
        let us = (took.as_micros() as u64).clamp(1, 600_000_000);
        let phase = self.phase() as usize;
        let mut h = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        let _ = h[phase].record(us);
    }

    /// A connection of `kind` opened (`+1`) or ended (`-1`).
    pub fn open(&self, kind: Kind, delta: i64) {
        self.open[kind as usize].fetch_add(delta, Ordering::Relaxed);
    }

    /// Open connections of `kind` now.
    pub fn open_now(&self, kind: Kind) -> i64 {
        self.open[kind as usize].load(Ordering::Relaxed)
    }

    /// Total of `class` so far.
    pub fn total(&self, class: Class) -> u64 {
        self.totals[class as usize].load(Ordering::Relaxed)
    }

    /// Writes the open-connection counts into the current bucket (called by
    /// the sampler every bucket).
    pub fn sample(&self) {
        let open = [Kind::Http, Kind::Ws, Kind::Sse].map(|k| self.open_now(k));
        self.with_bucket(|b| [b.open_http, b.open_ws, b.open_sse] = open);
    }

    /// Runs `f` on the bucket of this moment, creating the buckets up to it.
    fn with_bucket(&self, f: impl FnOnce(&mut Bucket)) {
        let slot = (self.start.elapsed().as_millis() / BUCKET.as_millis()) as usize;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() <= slot {
            // A slice the sampler has not reached yet shows the last counts
            // of open connections, not zeros.
            let open = buckets
                .last()
                .map_or((0, 0, 0), |b| (b.open_http, b.open_ws, b.open_sse));
            let from = buckets.len();
            buckets.extend((from..=slot).map(|i| Bucket {
                t_ms: i as u64 * BUCKET.as_millis() as u64,
                open_http: open.0,
                open_ws: open.1,
                open_sse: open.2,
                ..Bucket::default()
            }));
        }
        f(&mut buckets[slot]);
    }

    pub(crate) fn totals(&self) -> BTreeMap<&'static str, u64> {
        Class::ALL
            .into_iter()
            .map(|c| (c.name(), self.total(c)))
            .collect()
    }

    pub(crate) fn close_codes(&self) -> BTreeMap<u16, u64> {
        self.close_codes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn latencies(&self) -> [Latency; 3] {
        let h = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        [Latency::of(&h[0]), Latency::of(&h[1]), Latency::of(&h[2])]
    }

    pub(crate) fn timeline(&self) -> Vec<Bucket> {
        self.buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Latency percentiles of one phase, in milliseconds.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Latency {
    /// Requests timed.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}
