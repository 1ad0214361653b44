//! One claimed job: runs its handler, keeps its lease alive, and records how
//! it ended.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, sleep, sleep_until},
};
use tokio_util::sync::CancellationToken;

use super::{JobContext, JobError, PoolConfig, Registered, Stats};
use crate::{Claimed, Journal, JournalError, Lease};

/// Writes that end a job are retried this many times while the journal is
/// unavailable; past that the lease expires and the job is run again
/// (at-least-once).
const END_WRITE_TRIES: u32 = 5;

/// What every job of a pool shares.
#[derive(Clone)]
pub(super) struct Run {
    pub(super) journal: Arc<dyn Journal>,
    pub(super) handlers: Arc<HashMap<String, Registered>>,
    pub(super) config: Arc<PoolConfig>,
    pub(super) stats: Arc<Stats>,
    pub(super) stop: CancellationToken,
    pub(super) force: CancellationToken,
    /// Permits for writes that end a job (complete, fail, release): a
    /// job's slot is handed on as soon as its handler returns, and the
    /// write holds one of these instead, so the next job runs while the
    /// last one's write commits. As many as slots: a journal that falls
    /// behind holds the slots back.
    pub(super) ending: Arc<Semaphore>,
}

enum Ending {
    Returned(Result<serde_json::Value, JobError>),
    Panicked(String),
    /// Dropped at the drain timeout or on a forced stop.
    Abandoned,
    LeaseLost,
}

/// Held for as long as the job runs: its pool slot, and its place in the
/// server's counts.
type Held = (OwnedSemaphorePermit, Option<lameduck::JobGuard>);

pub(super) async fn supervise(run: Run, claimed: Claimed, held: Held) {
    let (slot, _guard) = held;
    let Claimed { job, mut lease } = claimed;
    let (id, kind, attempt) = (job.id, job.kind.clone(), job.attempts);
    let Some(Registered {
        handler,
        max_version,
    }) = run.handlers.get(&kind).cloned()
    else {
        let retry_in = run.config.backoff(attempt);
        let msg = format!("no handler for kind {kind:?} in this worker");
        tracing::warn!(job.id = %id, job.kind = %kind, "job.no_handler");
        run.stats
            .failed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // On error the lease expires and another worker (maybe one with the
        // handler) gets the job: nothing is lost.
        let _ = end_write(|| run.journal.fail(&lease, &msg, retry_in), "fail").await;
        return;
    };

    if job.payload_version > max_version {
        tracing::warn!(
            job.id = %id, job.kind = %kind, payload_version = job.payload_version,
            max_version, "job.payload_version_unknown"
        );
        // Held a while before it goes back, so that this worker does not
        // claim it again at once while a worker that knows the version
        // may be free.
        tokio::select! {
            () = run.stop.cancelled() => {}
            () = sleep(run.config.retry_base) => {}
        }
        give_back(&*run.journal, &lease, "payload version unknown").await;
        return;
    }

    let started = Instant::now();
    let cancel = run.stop.child_token();
    let ctx = JobContext::new(job, lease.clone(), run.journal.clone(), cancel.clone());
    tracing::debug!(job.id = %id, job.kind = %kind, attempt, "job.started");
    let mut task = tokio::spawn(handler(ctx));

    let every = (run.config.lease / 3).max(Duration::from_millis(10));
    let mut renew_at = Instant::now() + every;
    let mut give_up_at: Option<Instant> = None;
    let ending = loop {
        tokio::select! {
            biased;
            res = &mut task => break match res {
                Ok(r) => Ending::Returned(r),
                Err(e) => Ending::Panicked(e.to_string()),
            },
            () = run.force.cancelled() => {
                task.abort();
                break Ending::Abandoned;
            }
            () = sleep_until(give_up_at.unwrap_or(renew_at)), if give_up_at.is_some() => {
                task.abort();
                break Ending::Abandoned;
            }
            () = cancel.cancelled(), if give_up_at.is_none() => {
                give_up_at = Some(Instant::now() + run.config.drain_timeout);
            }
            () = sleep_until(renew_at) => {
                match run.journal.renew(&lease, run.config.lease).await {
                    Ok(renewed) => lease = renewed,
                    Err(JournalError::StaleLease { .. } | JournalError::NotFound(_)) => {
                        cancel.cancel();
                        task.abort();
                        break Ending::LeaseLost;
                    }
                    Err(e) => tracing::warn!(job.id = %id, error = %e, "job.renew_failed"),
                }
                renew_at = Instant::now() + every;
            }
        }
    };

    let elapsed_ms = started.elapsed().as_millis() as u64;
    let _ending = run
        .ending
        .clone()
        .acquire_owned()
        .await
        .expect("the semaphore is never closed");
    drop(slot);
    let stats = &run.stats;
    let inc =
        |c: &std::sync::atomic::AtomicU64| c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    match ending {
        Ending::Returned(Ok(result)) => {
            match end_write(|| run.journal.complete(&lease, Some(&result)), "complete").await {
                Ok(()) => {
                    inc(&stats.completed);
                    tracing::info!(job.id = %id, job.kind = %kind, attempt, elapsed_ms, "job.completed");
                }
                Err(JournalError::StaleLease { .. }) => {
                    inc(&stats.lease_lost);
                    tracing::warn!(job.id = %id, "job.lease_lost");
                }
                Err(_) => {}
            }
        }
        Ending::Returned(Err(JobError::LeaseLost)) | Ending::LeaseLost => {
            inc(&stats.lease_lost);
            tracing::warn!(job.id = %id, job.kind = %kind, elapsed_ms, "job.lease_lost");
        }
        // A handler that errs while the pool drains most likely erred
        // because of the cancellation: give the job back rather than spend
        // an attempt.
        Ending::Returned(Err(JobError::Cancelled)) => {
            if give_back(&*run.journal, &lease, "cancelled").await {
                inc(&stats.released);
            }
        }
        Ending::Returned(Err(JobError::Failed(_))) if run.stop.is_cancelled() => {
            if give_back(&*run.journal, &lease, "failed while draining").await {
                inc(&stats.released);
            }
        }
        Ending::Returned(Err(JobError::Failed(msg))) | Ending::Panicked(msg) => {
            inc(&stats.failed);
            let retry_in = run.config.backoff(attempt);
            if let Ok(state) = end_write(|| run.journal.fail(&lease, &msg, retry_in), "fail").await
            {
                tracing::warn!(
                    job.id = %id, job.kind = %kind, attempt, error = %msg,
                    state = %state, retry_in_ms = retry_in.as_millis() as u64,
                    "job.failed"
                );
            }
        }
        Ending::Abandoned => {
            // Let the aborted task unwind (it may hold the lease's checkpoint
            // write in flight) before releasing.
            let _ = tokio::time::timeout(Duration::from_secs(1), &mut task).await;
            if give_back(&*run.journal, &lease, "drain timeout").await {
                inc(&stats.forced);
            }
        }
    }
}

/// Releases a job on drain. Returns whether it was released.
pub(super) async fn give_back(journal: &dyn Journal, lease: &Lease, why: &'static str) -> bool {
    match end_write(|| journal.release(lease), "release").await {
        Ok(()) => {
            tracing::info!(job.id = %lease.job, why, "job.released");
            true
        }
        Err(_) => false,
    }
}

/// Retries a write that ends a job while the journal is unavailable.
async fn end_write<T, F, Fut>(mut write: F, what: &'static str) -> Result<T, JournalError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, JournalError>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match write().await {
            Err(e) if e.is_unavailable() && tries < END_WRITE_TRIES => {
                sleep(Duration::from_millis(100) * 2u32.pow(tries)).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, what, tries, "job.write_failed");
                return Err(e);
            }
            ok => return ok,
        }
    }
}
