//! The in-flight limit and its burst queue: past
//! [`Config::max_in_flight`](crate::Config::max_in_flight) a request waits,
//! first come first served, for up to
//! [`Config::queue_timeout`](crate::Config::queue_timeout) in a queue of
//! [`Config::max_in_flight_queue`](crate::Config::max_in_flight_queue)
//! places; past that it is refused.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What a request arriving now gets.
pub(crate) enum Admit {
    /// A place at once.
    Now(OwnedSemaphorePermit),
    /// A place in the queue: call [`Admission::wait`].
    Queued,
    /// Neither: refuse it.
    Full,
}

#[derive(Debug)]
pub(crate) struct Admission {
    /// One permit a request in flight. Tokio's semaphore serves waiters
    /// in order and gives a freed permit to the first of them, never to a
    /// newcomer: the queue is FIFO.
    permits: Arc<Semaphore>,
    max_queue: usize,
    timeout: Duration,
    queued: AtomicUsize,
    /// Requests that waited in the queue, then got a place.
    waited: AtomicU64,
    /// Their total wait, in microseconds.
    waited_us: AtomicU64,
    /// Requests refused after waiting the whole timeout.
    timed_out: AtomicU64,
}

/// The queue's figures, for metrics and `shutdown.progress`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct QueueStats {
    pub(crate) queued: usize,
    pub(crate) waited: u64,
    pub(crate) waited_us: u64,
    pub(crate) timed_out: u64,
}

impl Admission {
    pub(crate) fn new(max_in_flight: usize, max_queue: usize, timeout: Duration) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max_in_flight.min(Semaphore::MAX_PERMITS))),
            max_queue,
            timeout,
            queued: AtomicUsize::new(0),
            waited: AtomicU64::new(0),
            waited_us: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
        }
    }

    pub(crate) fn try_admit(&self) -> Admit {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Admit::Now(permit);
        }
        let max = self.max_queue;
        match self
            .queued
            .fetch_update(Relaxed, Relaxed, |q| (q < max).then_some(q + 1))
        {
            Ok(_) => Admit::Queued,
            Err(_) => Admit::Full,
        }
    }

    /// Waits in the queue (after [`Admit::Queued`]) for a place, up to the
    /// timeout; `None` past it. Not cut short by a drain: a queued request
    /// was accepted, and is served.
    pub(crate) async fn wait(&self) -> Option<OwnedSemaphorePermit> {
        let started = Instant::now();
        let permit = tokio::time::timeout(self.timeout, self.permits.clone().acquire_owned()).await;
        self.queued.fetch_sub(1, Relaxed);
        match permit {
            Ok(Ok(permit)) => {
                self.waited.fetch_add(1, Relaxed);
                self.waited_us
                    .fetch_add(started.elapsed().as_micros() as u64, Relaxed);
                Some(permit)
            }
            // The semaphore is never closed.
            Ok(Err(_)) | Err(_) => {
                self.timed_out.fetch_add(1, Relaxed);
                None
            }
        }
    }

    pub(crate) fn stats(&self) -> QueueStats {
        QueueStats {
            queued: self.queued.load(Relaxed),
            waited: self.waited.load(Relaxed),
            waited_us: self.waited_us.load(Relaxed),
            timed_out: self.timed_out.load(Relaxed),
        }
    }

    /// The `Retry-After` to give: the queue's timeout, rounded up to whole
    /// seconds (at least 1).
    pub(crate) fn retry_after_secs(&self) -> u64 {
        self.timeout.as_millis().div_ceil(1000).max(1) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn places_then_a_fifo_queue_then_refusals() {
        let a = Arc::new(Admission::new(2, 2, Duration::from_secs(5)));
        let (Admit::Now(first), Admit::Now(_second)) = (a.try_admit(), a.try_admit()) else {
            panic!("two places");
        };
        assert!(matches!(a.try_admit(), Admit::Queued));
        assert!(matches!(a.try_admit(), Admit::Queued));
        assert!(matches!(a.try_admit(), Admit::Full));
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for i in 0..2 {
            let (a, order) = (a.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let permit = a.wait().await;
                order.lock().unwrap().push(i);
                permit
            }));
            tokio::task::yield_now().await;
        }
        assert_eq!(a.stats().queued, 2);
        drop(first);
        let got = waiters.remove(0).await.unwrap();
        assert!(got.is_some());
        assert_eq!(*order.lock().unwrap(), [0], "the first in the queue first");
        drop(got);
        assert!(waiters.remove(0).await.unwrap().is_some());
        let s = a.stats();
        assert_eq!((s.queued, s.waited, s.timed_out), (0, 2, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_request_times_out() {
        let a = Admission::new(1, 1, Duration::from_millis(100));
        let Admit::Now(_held) = a.try_admit() else {
            panic!("one place")
        };
        assert!(matches!(a.try_admit(), Admit::Queued));
        assert!(a.wait().await.is_none());
        assert_eq!(a.stats().timed_out, 1);
        assert_eq!(a.stats().queued, 0);
        assert_eq!(a.retry_after_secs(), 1);
    }
}
