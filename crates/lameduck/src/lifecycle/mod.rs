//! The life of one server: its phase, why and when its drain started, and
//! its live counts.
//!
//! The phase is stored once, as one atomic that only moves forward
//! (serving → announcing → draining → forcing → stopped); every `is_*`
//! question is one load of it. The stored value tells a stop after a
//! forced drain from a clean one, so that [`Drain::forced`] never fires
//! for a drain that was not forced. Tasks that wait for a phase are woken by
//! [`Lifecycle::advance`]: connection tasks through their
//! [`DrainWaiter`], everything else through a [`PhaseFuture`].
//!
//! The drain's order (what moves the phase, and when) is in
//! `ARCHITECTURE.md` at the repository's root; the server's drain driver
//! runs it.

mod current;
mod drain;
mod reason;
mod waiter;

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU8, Ordering},
    },
    task::{Context, Poll},
    time::Instant,
};

use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    Config,
    limits::Limits,
    stats::{Counts, Stats, Totals},
};

pub(crate) use current::{RequestDrain, Scoped};
pub use drain::{Drain, JobGuard, Told};
pub use reason::{DrainReason, Signal};
use waiter::Waiters;
pub(crate) use waiter::{DrainWaiter, ToTell};

/// Where a server stands. Phases only move forward, in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Serving normally; `/readyz` answers 200.
    Serving,
    /// A drain was requested: everything still works, new connections
    /// included, but `/readyz` answers 503 so load balancers move away.
    /// Ends when the listener has closed.
    Announcing,
    /// The listener is closed and connections are asked to go; they are
    /// finishing what they hold.
    Draining,
    /// The drain was forced (deadline, second signal, [`crate::Handle::force`]):
    /// what remains is being cut.
    Forcing,
    /// The drain is over: every connection is gone, or was cut.
    Stopped,
}

impl Phase {
    const ALL: [Phase; 5] = [
        Phase::Serving,
        Phase::Announcing,
        Phase::Draining,
        Phase::Forcing,
        Phase::Stopped,
    ];

    /// The phase's name as it appears in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Serving => "serving",
            Phase::Announcing => "announcing",
            Phase::Draining => "draining",
            Phase::Forcing => "forcing",
            Phase::Stopped => "stopped",
        }
    }

    /// Every phase, in order.
    pub fn all() -> [Phase; 5] {
        Self::ALL
    }

    fn from_raw(raw: u8) -> Self {
        Self::ALL[usize::from(raw).min(Self::ALL.len() - 1)]
    }
}

/// The stored phase: a [`Phase`]'s index, but for the stop after a forced
/// drain, which is one more than the stop after a clean one.
const STOPPED_CLEAN: u8 = Phase::Stopped as u8;
const STOPPED_FORCED: u8 = STOPPED_CLEAN + 1;

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of one server's life, shared by the server, its handles and
/// its watchers.
#[derive(Debug)]
pub(crate) struct Lifecycle {
    /// Its number, for [`Drain::current`] (see `current.rs`).
    id: u32,
    config: Config,
    stats: Stats,
    limits: Limits,
    /// The phase (see [`STOPPED_FORCED`]); only ever raised.
    phase: AtomicU8,
    /// Woken at every change of `phase`, for [`PhaseFuture`]s.
    changed: Notify,
    /// Connection tasks parked until the drain or the cut.
    waiters: Waiters,
    reason: OnceLock<DrainReason>,
    /// When the drain was requested.
    started: OnceLock<Instant>,
    /// The first task the drain depends on that panicked.
    panicked: OnceLock<&'static str>,
    /// A request to cut at once, which the drain driver turns into
    /// [`Phase::Forcing`] at the point of the drain where it can.
    force: CancellationToken,
}

impl Lifecycle {
    pub(crate) fn new(config: Config) -> Arc<Self> {
        let lifecycle = Arc::new(Self {
            id: current::next_id(),
            stats: Stats::default(),
            limits: Limits::new(&config),
            config,
            phase: AtomicU8::new(Phase::Serving as u8),
            changed: Notify::new(),
            waiters: Waiters::default(),
            reason: OnceLock::new(),
            started: OnceLock::new(),
            panicked: OnceLock::new(),
            force: CancellationToken::new(),
        });
        current::register(&lifecycle);
        lifecycle
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn stats(&self) -> &Stats {
        &self.stats
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// What the server holds now, the limits' queue included.
    pub(crate) fn counts(&self) -> Counts {
        let mut counts = self.stats.counts();
        self.limits.add_counts(&mut counts);
        counts
    }

    /// Totals since the start, the limits' refusals included.
    pub(crate) fn totals(&self) -> Totals {
        let mut totals = self.stats.totals();
        self.limits.add_totals(&mut totals);
        totals
    }

    fn raw(&self) -> u8 {
        self.phase.load(Ordering::Acquire)
    }

    /// The current phase; one atomic load.
    pub(crate) fn phase(&self) -> Phase {
        Phase::from_raw(self.raw())
    }

    /// Whether the drain was forced (it may be over since).
    fn was_forced(raw: u8) -> bool {
        raw == Phase::Forcing as u8 || raw == STOPPED_FORCED
    }

    /// Whether the drain is in its announce period.
    pub(crate) fn is_announcing(&self) -> bool {
        self.raw() == Phase::Announcing as u8
    }

    /// Whether the service wants traffic: while serving, and through a
    /// restart's drain (its successor shares the listening socket and
    /// serves; a probe answered 503 here would take the socket out of
    /// rotation) until it is forced.
    pub(crate) fn is_ready(&self) -> bool {
        let raw = self.raw();
        raw == Phase::Serving as u8
            || (raw < Phase::Forcing as u8 && self.reason().is_some_and(DrainReason::is_restart))
    }

    /// Whether connections have been asked to go. (The stored value orders
    /// as the phases do, so one load and one compare.)
    pub(crate) fn is_draining(&self) -> bool {
        self.raw() >= Phase::Draining as u8
    }

    /// [`Lifecycle::is_draining`], for a reader that pairs it with its own
    /// write to another atomic (see `ConnState::request_started`).
    pub(crate) fn is_draining_seqcst(&self) -> bool {
        self.phase.load(Ordering::SeqCst) >= Phase::Draining as u8
    }

    /// Whether what remains is being cut (or the drain is over).
    pub(crate) fn is_forcing(&self) -> bool {
        self.raw() >= Phase::Forcing as u8
    }

    pub(crate) fn reason(&self) -> Option<&DrainReason> {
        self.reason.get()
    }

    /// When the drain was requested.
    pub(crate) fn started(&self) -> Option<Instant> {
        self.started.get().copied()
    }

    pub(crate) fn panicked(&self) -> Option<&'static str> {
        self.panicked.get().copied()
    }

    /// Requests the drain: the phase moves to [`Phase::Announcing`] at once
    /// (readiness fails from this instant). Returns `false` when a drain
    /// was already requested; the first reason is kept.
    pub(crate) fn request(&self, reason: DrainReason) -> bool {
        if self.reason.set(reason).is_err() {
            return false;
        }
        let _ = self.started.set(Instant::now());
        self.advance(Phase::Announcing);
        true
    }

    /// Requests the drain (if it was not) and asks to cut what remains now.
    /// The force comes first: a drain that this call starts must never be
    /// seen without it (it would end clean, and never be forced).
    pub(crate) fn request_force(&self, reason: DrainReason) {
        self.force.cancel();
        self.request(reason);
    }

    /// Resolves once cutting at once was asked for.
    pub(crate) async fn force_requested(&self) {
        self.force.cancelled().await;
    }

    /// A task the drain depends on panicked: a process left without its
    /// signal task would ignore SIGTERM, one without its accept loop would
    /// never close its listener. The drain is forced, and reported.
    pub(crate) fn task_panicked(&self, task: &'static str) {
        let _ = self.panicked.set(task);
        self.request_force(DrainReason::Requested(format!("{task} task panicked")));
    }

    /// Moves the phase forward to `to` (never back), and wakes whoever
    /// waits for it: connection tasks when connections must go (draining)
    /// and when they are cut (forcing), every [`PhaseFuture`] at any change.
    ///
    /// Only the drain driver moves the phase past announcing, so reading
    /// the phase to pick which stop it is cannot race.
    pub(crate) fn advance(&self, to: Phase) {
        let raw = match to {
            Phase::Stopped if Self::was_forced(self.raw()) => STOPPED_FORCED,
            _ => to as u8,
        };
        // SeqCst: `is_draining_seqcst` pairs with it.
        let from = Phase::from_raw(self.phase.fetch_max(raw, Ordering::SeqCst));
        if from >= to {
            return;
        }
        if from < Phase::Draining && to >= Phase::Draining {
            self.waiters.wake_drain();
        }
        if from < Phase::Forcing && to >= Phase::Forcing {
            self.waiters.wake_parked();
        }
        self.changed.notify_waiters();
    }

    /// Moves to [`Phase::Draining`]. With `spread`, the connection tasks
    /// waiting now are not woken by it: each is returned, to be told at its
    /// own instant (tasks that start waiting later go at once).
    pub(crate) fn start_draining(&self, spread: bool) -> Vec<ToTell> {
        let told = if spread {
            self.waiters.begin_spread()
        } else {
            Vec::new()
        };
        self.advance(Phase::Draining);
        told
    }

    /// Resolves once the phase is `phase` or later; for
    /// [`Phase::Forcing`], only if the drain is forced (never after a clean
    /// stop).
    pub(crate) fn reached(self: &Arc<Self>, phase: Phase) -> PhaseFuture {
        let lifecycle = self.clone();
        PhaseFuture {
            inner: Box::pin(async move {
                loop {
                    let changed = lifecycle.changed.notified();
                    tokio::pin!(changed);
                    // Registered before the check, so that a change in
                    // between still wakes us.
                    changed.as_mut().enable();
                    let raw = lifecycle.raw();
                    if phase == Phase::Forcing && raw == STOPPED_CLEAN {
                        // Drained without being forced: it never will be.
                        std::future::pending::<()>().await;
                    }
                    if Phase::from_raw(raw) >= phase {
                        return;
                    }
                    changed.await;
                }
            }),
        }
    }

    /// Resolves at the next change of phase after `current`, with the new
    /// phase.
    pub(crate) async fn changed_from(&self, current: Phase) -> Phase {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let now = self.phase();
            if now != current {
                return now;
            }
            changed.await;
        }
    }
}

impl Drop for Lifecycle {
    fn drop(&mut self) {
        current::unregister(self.id);
    }
}

/// Resolves once a server's drain reaches a phase: made by
/// [`Drain::requested`], [`Drain::drained`] and [`Drain::forced`]. It owns
/// what it needs (it can be stored, or moved into a task), and resolves at
/// once if the phase was already reached.
#[must_use = "futures do nothing unless polled"]
pub struct PhaseFuture {
    inner: Pin<Box<dyn Future<Output = ()> + Send + Sync>>,
}

impl fmt::Debug for PhaseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PhaseFuture").finish_non_exhaustive()
    }
}

impl Future for PhaseFuture {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.inner.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    // The phase only moves forward, and every `is_*` follows it.
    #[test]
    fn phase_moves_forward_only() {
        let lc = Lifecycle::new(Config::default());
        assert_eq!(lc.phase(), Phase::Serving);
        assert!(lc.request(DrainReason::Restart));
        assert!(!lc.request(DrainReason::Requested("again".into())));
        assert_eq!(lc.reason(), Some(&DrainReason::Restart));
        assert_eq!(lc.phase(), Phase::Announcing);
        assert!(!lc.is_draining());
        lc.advance(Phase::Forcing);
        assert!(lc.is_draining() && lc.is_forcing());
        lc.advance(Phase::Draining);
        assert_eq!(lc.phase(), Phase::Forcing, "never moves back");
    }

    // A clean drain ends stopped, and a wait for the forced drain never
    // resolves; a forced one ends stopped too, and the wait resolves.
    #[tokio::test]
    async fn forced_only_after_a_forced_drain() {
        let clean = Lifecycle::new(Config::default());
        clean.request(DrainReason::Restart);
        clean.advance(Phase::Draining);
        clean.advance(Phase::Stopped);
        assert_eq!(clean.phase(), Phase::Stopped);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), clean.reached(Phase::Forcing))
                .await
                .is_err(),
            "a clean drain is never forced"
        );
        let forced = Lifecycle::new(Config::default());
        forced.request(DrainReason::Restart);
        forced.advance(Phase::Draining);
        forced.advance(Phase::Forcing);
        forced.advance(Phase::Stopped);
        assert_eq!(forced.phase(), Phase::Stopped);
        tokio::time::timeout(Duration::from_secs(1), forced.reached(Phase::Forcing))
            .await
            .expect("the drain was forced");
    }

    // A wait made before the phase resolves when it comes; one made after
    // resolves at once.
    #[tokio::test]
    async fn phase_futures_resolve_at_their_phase() {
        let lc = Lifecycle::new(Config::default());
        let drained = tokio::spawn(lc.reached(Phase::Draining));
        let forced = tokio::spawn(lc.reached(Phase::Forcing));
        lc.request(DrainReason::Requested("test".into()));
        tokio::task::yield_now().await;
        assert!(!drained.is_finished());
        lc.advance(Phase::Draining);
        tokio::time::timeout(Duration::from_secs(5), drained)
            .await
            .expect("woken at draining")
            .unwrap();
        assert!(!forced.is_finished());
        tokio::time::timeout(Duration::from_secs(1), lc.reached(Phase::Announcing))
            .await
            .expect("already reached");
        forced.abort();
    }
}
