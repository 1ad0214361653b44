//! Live counts of connections, streams and requests.

use std::{
    cell::Cell,
    sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed},
};

use serde::Serialize;

/// What a tracked connection currently carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ConnKind {
    /// HTTP/1.x, including connections that have not sent a request yet.
    Http1,
    /// HTTP/2 (h2c).
    Http2,
    /// A connection upgraded away from HTTP (a WebSocket, in practice).
    Websocket,
}

impl ConnKind {
    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Http2,
            2 => Self::Websocket,
            _ => Self::Http1,
        }
    }

    pub(crate) fn as_u8(self) -> u8 {
        match self {
            Self::Http1 => 0,
            Self::Http2 => 1,
            Self::Websocket => 2,
        }
    }
}

/// A snapshot of what the server holds right now.
///
/// `http1 + http2 + websocket` is the number of open connections; `sse`
/// counts open SSE streams (each also holds its HTTP connection) and
/// `in_flight` the requests whose response has not been fully sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Counts {
    /// Open HTTP/1.x connections.
    pub http1: usize,
    /// Open HTTP/2 connections.
    pub http2: usize,
    /// Open upgraded (WebSocket) connections.
    pub websocket: usize,
    /// Open SSE streams made with [`crate::sse::SseStream`].
    pub sse: usize,
    /// Requests being handled or whose response body is still being sent.
    pub in_flight: usize,
    /// Background jobs running under a [`crate::JobGuard`].
    pub jobs: usize,
    /// Requests waiting for a place under [`crate::Config::max_in_flight`]
    /// (see [`crate::Config::max_in_flight_queue`]); counted in `in_flight`
    /// too, as a drain waits for them.
    pub queued: usize,
}

impl Counts {
    /// Open connections of every kind.
    pub fn connections(&self) -> usize {
        self.http1 + self.http2 + self.websocket
    }
}

/// Totals since the server started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Totals {
    /// Connections accepted.
    pub connections: u64,
    /// Of which, accepted from the kernel's queue after the drain began.
    pub accepted_during_drain: u64,
    /// Requests received.
    pub requests: u64,
    /// Connections upgraded (WebSockets).
    pub upgrades: u64,
    /// SSE streams opened.
    pub sse_streams: u64,
    /// Connections closed (upgraded ones when their socket is dropped).
    pub closed: u64,
    /// Connections cut when the drain was forced (its deadline passed, or
    /// it was forced at once).
    pub cut: u64,
    /// Connections refused with 503 past [`crate::Config::max_connections`].
    pub rejected_connections: u64,
    /// Requests refused with 503 past [`crate::Config::max_in_flight`]:
    /// the queue was full, or they waited the whole
    /// [`crate::Config::queue_timeout`].
    pub rejected_requests: u64,
    /// Of `rejected_requests`, those that waited the whole queue timeout.
    pub queue_timeouts: u64,
    /// Requests refused with 429 by [`crate::Config::rate_limit`].
    pub rate_limited: u64,
    /// New sessions refused with 503 by [`crate::Config::max_new_sessions`].
    pub sessions_refused: u64,
    /// Requests that waited in the queue, then were served.
    pub queue_waited: u64,
    /// Their total wait, in microseconds.
    pub queue_wait_micros: u64,
    /// TLS handshakes that failed (a bad client hello, no common protocol,
    /// a client that went away) or did not finish within the header-read
    /// timeout.
    pub tls_handshakes_failed: u64,
}

/// A counter written on every request by every worker thread. One shared
/// atomic would bounce its cache line between cores on each request; each
/// thread adds to its own slot instead, and readers (once a second, during
/// a drain) sum the slots.
#[derive(Debug, Default)]
struct Sharded([Slot; SHARDS]);

const SHARDS: usize = 16;

#[derive(Debug, Default)]
#[repr(align(128))]
struct Slot(AtomicI64);

thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

impl Sharded {
    fn slot(&self) -> &AtomicI64 {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let i = SHARD.with(|s| {
            if s.get() == usize::MAX {
                s.set(NEXT.fetch_add(1, Relaxed) % SHARDS);
            }
            s.get()
        });
        &self.0[i].0
    }

    fn add(&self, n: i64) {
        self.slot().fetch_add(n, Relaxed);
    }

    fn sum(&self) -> i64 {
        self.0.iter().map(|s| s.0.load(Relaxed)).sum()
    }
}

#[derive(Debug, Default)]
pub(crate) struct Stats {
    by_kind: [AtomicUsize; 3],
    sse: AtomicUsize,
    in_flight: Sharded,
    connections: AtomicU64,
    accepted_during_drain: AtomicU64,
    requests: Sharded,
    upgrades: AtomicU64,
    sse_streams: AtomicU64,
    jobs: AtomicUsize,
    closed: AtomicU64,
    cut: AtomicU64,
    rejected_connections: AtomicU64,
    rejected_requests: AtomicU64,
    tls_handshakes_failed: AtomicU64,
    /// Requests other than health probes received while announcing (only
    /// counted then).
    announce_traffic: AtomicU64,
}

impl Stats {
    pub(crate) fn counts(&self) -> Counts {
        Counts {
            http1: self.by_kind[0].load(Relaxed),
            http2: self.by_kind[1].load(Relaxed),
            websocket: self.by_kind[2].load(Relaxed),
            sse: self.sse.load(Relaxed),
            // A request can end on another thread than it began: only the
            // sum is meaningful, and it is never negative once settled.
            in_flight: self.in_flight.sum().max(0) as usize,
            jobs: self.jobs.load(Relaxed),
            // Filled in by the limits (see `Limits::add_counts`).
            queued: 0,
        }
    }

    pub(crate) fn totals(&self) -> Totals {
        Totals {
            connections: self.connections.load(Relaxed),
            accepted_during_drain: self.accepted_during_drain.load(Relaxed),
            requests: self.requests.sum().max(0) as u64,
            upgrades: self.upgrades.load(Relaxed),
            sse_streams: self.sse_streams.load(Relaxed),
            closed: self.closed.load(Relaxed),
            cut: self.cut.load(Relaxed),
            rejected_connections: self.rejected_connections.load(Relaxed),
            rejected_requests: self.rejected_requests.load(Relaxed),
            // These five are filled in by the limits (`Limits::add_totals`).
            queue_timeouts: 0,
            queue_waited: 0,
            queue_wait_micros: 0,
            rate_limited: 0,
            sessions_refused: 0,
            tls_handshakes_failed: self.tls_handshakes_failed.load(Relaxed),
        }
    }

    pub(crate) fn conn_opened(&self, kind: ConnKind, during_drain: bool) {
        self.connections.fetch_add(1, Relaxed);
        if during_drain {
            self.accepted_during_drain.fetch_add(1, Relaxed);
        }
        self.by_kind[kind.as_u8() as usize].fetch_add(1, Relaxed);
    }

    /// A request other than a health probe arrived during the announce
    /// period.
    pub(crate) fn announce_traffic(&self) {
        self.announce_traffic.fetch_add(1, Relaxed);
    }

    /// Requests counted by [`Stats::announce_traffic`].
    pub(crate) fn announce_traffic_seen(&self) -> u64 {
        self.announce_traffic.load(Relaxed)
    }

    /// Counts a refused connection; returns how many there have been.
    pub(crate) fn tls_handshake_failed(&self) {
        self.tls_handshakes_failed.fetch_add(1, Relaxed);
    }

    pub(crate) fn conn_rejected(&self) -> u64 {
        self.rejected_connections.fetch_add(1, Relaxed) + 1
    }

    /// Counts a request refused under the in-flight limit.
    pub(crate) fn request_rejected(&self) {
        self.rejected_requests.fetch_add(1, Relaxed);
    }

    pub(crate) fn conns_cut(&self, n: usize) {
        self.cut.fetch_add(n as u64, Relaxed);
    }

    pub(crate) fn conn_closed(&self, kind: ConnKind) {
        self.closed.fetch_add(1, Relaxed);
        self.by_kind[kind.as_u8() as usize].fetch_sub(1, Relaxed);
    }

    pub(crate) fn conn_changed(&self, from: ConnKind, to: ConnKind) {
        if from != to {
            self.by_kind[to.as_u8() as usize].fetch_add(1, Relaxed);
            self.by_kind[from.as_u8() as usize].fetch_sub(1, Relaxed);
            if to == ConnKind::Websocket {
                self.upgrades.fetch_add(1, Relaxed);
            }
        }
    }

    pub(crate) fn request_started(&self) {
        self.requests.add(1);
        self.in_flight.add(1);
    }

    pub(crate) fn request_finished(&self) {
        self.in_flight.add(-1);
    }

    pub(crate) fn sse_opened(&self) {
        self.sse_streams.fetch_add(1, Relaxed);
        self.sse.fetch_add(1, Relaxed);
    }

    pub(crate) fn sse_closed(&self) {
        self.sse.fetch_sub(1, Relaxed);
    }

    pub(crate) fn job_started(&self) {
        self.jobs.fetch_add(1, Relaxed);
    }

    pub(crate) fn job_ended(&self) {
        self.jobs.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Requests that start on one thread and finish on another still add up.
    #[test]
    fn sharded_counts_add_up_across_threads() {
        let stats = std::sync::Arc::new(Stats::default());
        let starters: Vec<_> = (0..4)
            .map(|_| {
                let stats = stats.clone();
                std::thread::spawn(move || (0..1000).for_each(|_| stats.request_started()))
            })
            .collect();
        starters.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(stats.counts().in_flight, 4000);
        let finishers: Vec<_> = (0..3)
            .map(|_| {
                let stats = stats.clone();
                std::thread::spawn(move || (0..1000).for_each(|_| stats.request_finished()))
            })
            .collect();
        finishers.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(stats.counts().in_flight, 1000);
        assert_eq!(stats.totals().requests, 4000);
    }
}
