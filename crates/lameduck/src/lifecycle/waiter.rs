//! Waking connection tasks at the drain and at the cut, cheaply.
//!
//! Connection tasks, WebSocket sessions and SSE streams check the drain on
//! every wake-up. When the drain is spread, each waiter registered when it
//! starts is told on its own, at its own instant ([`ToTell`]); one
//! registered later is told at once. Polling a `CancellationToken` (or a `Notify`) future
//! takes a lock that every connection of the server shares; a
//! [`DrainWaiter`] is polled with one atomic load and an `AtomicWaker`
//! registration. Registering and dropping take the registry's lock once
//! each.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
};

use futures_util::task::AtomicWaker;

use super::Lifecycle;

/// Every registered waiter's wakers, by id.
#[derive(Debug, Default)]
pub(super) struct Waiters {
    inner: Mutex<Registry>,
}

#[derive(Debug, Default)]
struct Registry {
    next: u64,
    wakers: HashMap<u64, Arc<Wakers>>,
}

/// The tasks to wake for one waiter: the one that waits for the drain, and
/// (for a connection's socket) the ones parked in a read or a write, which
/// the cut must wake to fail them.
#[derive(Debug, Default)]
struct Wakers {
    drain: AtomicWaker,
    read: AtomicWaker,
    write: AtomicWaker,
    /// Part of a spread drain: waits to be told, not for the phase alone.
    spread: AtomicBool,
    /// Told to go by the spread.
    told: AtomicBool,
    /// Set when no task waits for the drain through this waiter any more
    /// (a connection task that handed its socket to a WebSocket handler):
    /// a spread leaves it out, as there is nobody to tell.
    done_waiting: AtomicBool,
}

impl Wakers {
    /// Whether the drain asks this waiter's task to go: at the cut always;
    /// once draining, at once or, in a spread, when told.
    fn must_go(&self, lifecycle: &Lifecycle) -> bool {
        lifecycle.is_draining()
            && (!self.spread.load(Ordering::Acquire)
                || self.told.load(Ordering::Acquire)
                || lifecycle.is_forcing())
    }
}

/// One waiter of a spread drain, to be told to go at its instant.
#[derive(Debug)]
pub(crate) struct ToTell(Arc<Wakers>);

impl ToTell {
    /// Asks the waiter's task to go now.
    pub(crate) fn tell(&self) {
        self.0.told.store(true, Ordering::Release);
        self.0.drain.wake();
    }
}

impl Waiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes every task waiting for the drain.
    pub(super) fn wake_drain(&self) {
        for wakers in self.lock().wakers.values() {
            wakers.drain.wake();
        }
    }

    /// Marks every waiter registered now as part of a spread, and returns
    /// them: each waits until told (or the cut), while one registered later
    /// goes at once. Called before the phase moves to draining.
    pub(super) fn begin_spread(&self) -> Vec<ToTell> {
        self.lock()
            .wakers
            .values()
            .filter(|wakers| !wakers.done_waiting.load(Ordering::Acquire))
            .map(|wakers| {
                wakers.spread.store(true, Ordering::Release);
                ToTell(wakers.clone())
            })
            .collect()
    }

    /// Wakes every task parked in a read or a write, to fail it, and every
    /// task waiting for the drain (a spread's waiters go at the cut).
    pub(super) fn wake_parked(&self) {
        for wakers in self.lock().wakers.values() {
            wakers.read.wake();
            wakers.write.wake();
            wakers.drain.wake();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().wakers.len()
    }
}

/// Wakes its task when connections are asked to go, and its parked reads
/// and writes when they are cut.
#[derive(Debug)]
pub(crate) struct DrainWaiter {
    lifecycle: Arc<Lifecycle>,
    wakers: Arc<Wakers>,
    id: u64,
}

impl DrainWaiter {
    pub(crate) fn new(lifecycle: Arc<Lifecycle>) -> Self {
        let wakers = Arc::new(Wakers::default());
        let id = {
            let mut registry = lifecycle.waiters.lock();
            registry.next += 1;
            let id = registry.next;
            registry.wakers.insert(id, wakers.clone());
            id
        };
        Self {
            lifecycle,
            wakers,
            id,
        }
    }

    /// No task waits for the drain through this waiter any more; it still
    /// wakes parked reads and writes at the cut.
    pub(crate) fn done_waiting(&self) {
        self.wakers.done_waiting.store(true, Ordering::Release);
        // A waker keeps its task's memory alive. An upgraded connection's
        // waiter lives as long as the WebSocket, and would otherwise keep
        // the finished connection task (2.4 KiB) for as long.
        drop(self.wakers.drain.take());
    }

    /// Wakes the task that waits for the drain, so it looks at its state
    /// again (the connection timers use it).
    pub(crate) fn wake(&self) {
        self.wakers.drain.wake();
    }

    /// Ready once this waiter's task is asked to go (see the module's
    /// docs). Registers before checking, so a drain starting (or a tell)
    /// in between still wakes the task.
    pub(crate) fn poll_drained(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.wakers.drain.register(cx.waker());
        if self.wakers.must_go(&self.lifecycle) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// For a read about to return `Pending`: registers the task to be woken
    /// at the cut, and tells whether the cut has come.
    pub(crate) fn read_parked_until_cut(&self, cx: &mut Context<'_>) -> bool {
        self.wakers.read.register(cx.waker());
        self.lifecycle.is_forcing()
    }

    /// As [`DrainWaiter::read_parked_until_cut`], for a write.
    pub(crate) fn write_parked_until_cut(&self, cx: &mut Context<'_>) -> bool {
        self.wakers.write.register(cx.waker());
        self.lifecycle.is_forcing()
    }
}

impl Drop for DrainWaiter {
    fn drop(&mut self) {
        self.lifecycle.waiters.lock().wakers.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::{future::poll_fn, time::Duration};

    use super::*;
    use crate::{Config, DrainReason, Phase};

    // A waiter parked before the drain is woken by it; one made after is
    // ready at once; dropped waiters leave the registry.
    #[tokio::test]
    async fn drain_waiter_wakes_and_unregisters() {
        let lifecycle = Lifecycle::new(Config::default());
        let waiter = DrainWaiter::new(lifecycle.clone());
        let parked = tokio::spawn(async move { poll_fn(|cx| waiter.poll_drained(cx)).await });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!parked.is_finished());

        lifecycle.request(DrainReason::Requested("test".into()));
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(
            !parked.is_finished(),
            "announcing does not ask connections to go"
        );
        lifecycle.advance(Phase::Draining);
        tokio::time::timeout(Duration::from_secs(5), parked)
            .await
            .expect("woken by the drain")
            .unwrap();

        let late = DrainWaiter::new(lifecycle.clone());
        assert!(
            poll_fn(|cx| Poll::Ready(late.poll_drained(cx)))
                .await
                .is_ready()
        );
        drop(late);
        assert_eq!(lifecycle.waiters.len(), 0);
    }

    /// Counts the live clones of a waker.
    struct Counted;

    impl futures_util::task::ArcWake for Counted {
        fn wake_by_ref(_: &Arc<Self>) {}
    }

    // A connection task that hands its socket to a WebSocket handler stops
    // waiting; its waker (and so its task's memory) must not live on in the
    // waiter, which lives as long as the socket.
    #[test]
    fn done_waiting_lets_go_of_the_waker() {
        let lifecycle = Lifecycle::new(Config::default());
        let waiter = DrainWaiter::new(lifecycle);
        let task = Arc::new(Counted);
        let waker = futures_util::task::waker(task.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(waiter.poll_drained(&mut cx).is_pending());
        drop(waker);
        assert_eq!(Arc::strong_count(&task), 2, "registered");
        waiter.done_waiting();
        assert_eq!(Arc::strong_count(&task), 1, "let go");
    }
}
