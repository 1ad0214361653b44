//! Claims: each takes as many jobs as it has free slots, and up to
//! [`CLAIMS_IN_FLIGHT`] run at once, so that the slots freed while one
//! claim commits are filled by the next instead of waiting for it.

use std::sync::{
    Arc,
    atomic::{AtomicU32, Ordering::Relaxed},
};

use tokio::{
    sync::{Notify, OwnedSemaphorePermit},
    time::sleep,
};
use tokio_util::task::TaskTracker;

use super::supervise::{self, Run};

/// Claims running at once. A claim is a commit (a WAL flush on Postgres,
/// a group commit on SQLite); with two in flight, the slots freed while one
/// commits go to the next. Measured end to end on Postgres with 8 slots
/// (BENCHMARKS.md): two 7,200 to 7,700 jobs/s, four 3,200 to 5,800 (the
/// claims then split the free slots into smaller, costlier batches).
pub(super) const CLAIMS_IN_FLIGHT: usize = 2;

/// What the claims of one pool share.
pub(super) struct Claims {
    pub(super) run: Run,
    pub(super) wake: Arc<Notify>,
    pub(super) tracker: TaskTracker,
    pub(super) drain: Option<lameduck::Drain>,
    /// Claims failed in a row; the pause after a failure grows with it.
    errors: AtomicU32,
    /// Claims in a row that found nothing; the wait before the next grows
    /// with it (see `PoolConfig::idle_poll_max`).
    empty: AtomicU32,
}

impl Claims {
    pub(super) fn new(
        run: Run,
        wake: Arc<Notify>,
        tracker: TaskTracker,
        drain: Option<lameduck::Drain>,
    ) -> Self {
        Self {
            run,
            wake,
            tracker,
            drain,
            errors: AtomicU32::new(0),
            empty: AtomicU32::new(0),
        }
    }

    /// Claims a job for each slot in `slots` and starts it; the slots left
    /// over are freed. A claim that finds nothing waits for a notice, a
    /// wake or the poll before it lets the next one start (it holds
    /// `_in_flight` until then); one that fails waits longer each time.
    ///
    /// Not raced against the pool's stop: a claim dropped half-way could
    /// still take jobs, which would then wait for lease expiry. Jobs
    /// claimed as the pool stops start cancelled and go back at once.
    pub(super) async fn claim(
        self: Arc<Self>,
        mut slots: Vec<OwnedSemaphorePermit>,
        _in_flight: OwnedSemaphorePermit,
    ) {
        let run = &self.run;
        let config = &run.config;
        let notices = run.journal.notices();
        let claimed = run
            .journal
            .claim(&config.owner, config.lease, slots.len())
            .await;

        let claimed = match claimed {
            Ok(claimed) => {
                let errors = self.errors.swap(0, Relaxed);
                if errors > 0 {
                    tracing::info!(after_errors = errors, "job.journal_recovered");
                }
                claimed
            }
            Err(e) => {
                let errors = self.errors.fetch_add(1, Relaxed) + 1;
                if errors == 1 || errors.is_power_of_two() {
                    tracing::warn!(error = %e, errors, "job.claim_failed");
                }
                drop(slots);
                let pause = config.poll_interval.saturating_mul(errors.min(25));
                tokio::select! {
                    () = run.stop.cancelled() => {}
                    () = sleep(pause) => {}
                }
                return;
            }
        };
        if claimed.is_empty() {
            drop(slots);
            let empty = self.empty.fetch_add(1, Relaxed);
            let wait = config
                .poll_interval
                .saturating_mul(2u32.saturating_pow(empty.min(16)))
                .min(config.idle_poll_max.max(config.poll_interval));
            tokio::select! {
                () = run.stop.cancelled() => {}
                () = run.journal.wait_for_jobs(notices, wait) => {}
                () = self.wake.notified() => self.empty.store(0, Relaxed),
            }
            return;
        }
        self.empty.store(0, Relaxed);
        for job in claimed {
            // The claim asked for no more jobs than it holds slots. Should a
            // backend ever answer more, the job goes back rather than wait
            // for its lease.
            let Some(slot) = slots.pop() else {
                supervise::give_back(&*run.journal, &job.lease, "no free slot").await;
                continue;
            };
            let guard = self.drain.as_ref().map(lameduck::Drain::track_job);
            self.tracker
                .spawn(supervise::supervise(run.clone(), job, (slot, guard)));
        }
    }
}
