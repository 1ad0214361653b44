//! The connections of one server: each counted until its socket is
//! dropped, the ones with timers known to the sweep, and the accept loop's
//! stop.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio_util::{
    sync::CancellationToken,
    task::{TaskTracker, task_tracker::TaskTrackerToken},
};

/// A connection with timers, as the sweep sees it.
pub(super) trait Timed: Send + Sync {
    /// Whether a timer has run out at coarse time `now` (milliseconds),
    /// given the header-read and keep-alive limits.
    fn timed_out(&self, now: u64, header: Option<u64>, idle: Option<u64>) -> bool;
    /// Closes the connection (through its own task).
    fn expire(&self);
}

type TimedMap = HashMap<usize, Weak<dyn Timed>>;

/// What one sweep found, and how long it held a lock at most.
pub(super) struct Swept {
    pub(super) expired: Vec<Arc<dyn Timed>>,
    pub(super) timed: usize,
    pub(super) longest_hold: std::time::Duration,
}

/// How many maps the timed connections are spread over (a power of two).
/// Measured with 19,000 idle connections (`bench/sweep.sh`, BENCHMARKS.md):
/// one map held its lock 2.2 ms a sweep (3.9 ms at most); with 32, the
/// longest hold was 124 µs (245 µs at p99).
const SHARDS: usize = 32;

#[derive(Debug)]
pub(crate) struct Registry {
    /// Counts every open connection, upgraded ones included, until its
    /// socket is dropped; closed once the listener is gone.
    tracker: TaskTracker,
    /// Open connections with timers, for the sweep, by address, in
    /// [`SHARDS`] maps: the sweep holds one lock at a time, so a connection
    /// being accepted (which adds itself) waits for a thirty-second of a
    /// sweep at most, not for all of it.
    timed: Box<[Mutex<TimedMap>]>,
    /// A coarse clock, in milliseconds since the server started, advanced by
    /// the timer sweep: reading it is one atomic load. Starts at 1: 0 means
    /// "no request head under way".
    clock_ms: AtomicU64,
    /// Cancelled when the announce period ends: the accept loop takes what
    /// is queued and closes the listener.
    stop_accepting: CancellationToken,
    /// Cancelled by the accept loop once the listener is closed.
    listener_closed: CancellationToken,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            tracker: TaskTracker::new(),
            timed: (0..SHARDS).map(|_| Mutex::default()).collect(),
            clock_ms: AtomicU64::new(1),
            stop_accepting: CancellationToken::new(),
            listener_closed: CancellationToken::new(),
        }
    }
}

impl Registry {
    /// The map that holds `key`: a Fibonacci hash of the address, whose
    /// low bits are alignment.
    fn shard(&self, key: usize) -> std::sync::MutexGuard<'_, TimedMap> {
        let i = ((key as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize % SHARDS;
        self.timed[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a connection open until the token drops.
    pub(crate) fn token(&self) -> TaskTrackerToken {
        self.tracker.token()
    }

    /// Open connections.
    pub(crate) fn open(&self) -> usize {
        self.tracker.len()
    }

    /// Resolves once the listener is closed and every connection is gone.
    pub(crate) async fn all_closed(&self) {
        self.tracker.wait().await;
    }

    /// The coarse clock (see the field).
    pub(crate) fn now_ms(&self) -> u64 {
        self.clock_ms.load(Ordering::Relaxed)
    }

    pub(super) fn set_now_ms(&self, ms: u64) {
        self.clock_ms.store(ms, Ordering::Relaxed);
    }

    /// Makes `conn` known to the timer sweep, under `key` (its address),
    /// until [`Registry::untime`].
    pub(super) fn time(&self, key: usize, conn: Weak<dyn Timed>) {
        self.shard(key).insert(key, conn);
    }

    pub(super) fn untime(&self, key: usize) {
        self.shard(key).remove(&key);
    }

    /// The connections with timers, alive now, whose timer ran out.
    pub(super) fn timed_out(&self, now: u64, header: Option<u64>, idle: Option<u64>) -> Swept {
        let mut swept = Swept {
            expired: Vec::new(),
            timed: 0,
            longest_hold: std::time::Duration::ZERO,
        };
        for shard in &self.timed {
            let held = std::time::Instant::now();
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            swept.timed += shard.len();
            swept.expired.extend(
                shard
                    .values()
                    .filter_map(Weak::upgrade)
                    .filter(|conn| conn.timed_out(now, header, idle)),
            );
            drop(shard);
            swept.longest_hold = swept.longest_hold.max(held.elapsed());
        }
        swept
    }

    /// Tells the accept loop to take what is queued and close the listener.
    pub(crate) fn stop_accepting(&self) {
        self.stop_accepting.cancel();
    }

    pub(super) async fn accepting_stopped(&self) {
        self.stop_accepting.cancelled().await;
    }

    /// The listener is closed: no connection comes any more.
    pub(super) fn listener_is_closed(&self) {
        self.tracker.close();
        self.listener_closed.cancel();
    }

    /// Resolves once the listener is closed.
    pub(crate) async fn listener_closed(&self) {
        self.listener_closed.cancelled().await;
    }

    #[cfg(test)]
    pub(super) fn is_accepting_stopped(&self) -> bool {
        self.stop_accepting.is_cancelled()
    }

    #[cfg(test)]
    pub(super) fn is_listener_closed(&self) -> bool {
        self.listener_closed.is_cancelled()
    }
}
