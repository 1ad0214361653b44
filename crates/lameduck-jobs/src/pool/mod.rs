//! The worker pool: claims jobs, runs their handlers, renews their leases,
//! and on drain stops claiming and gives back what it cannot finish.

mod claim;
mod context;
mod supervise;

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use serde::Serialize;
use serde_json::Value;
use tokio::{
    sync::{Notify, Semaphore},
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use context::{JobContext, JobError};

use crate::Journal;

type BoxFuture = Pin<Box<dyn Future<Output = Result<Value, JobError>> + Send>>;
type Handler = Arc<dyn Fn(JobContext) -> BoxFuture + Send + Sync>;

/// A kind's handler, and the newest payload version it reads.
#[derive(Clone)]
pub(crate) struct Registered {
    handler: Handler,
    max_version: u32,
}

/// Settings of a [`WorkerPool`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PoolConfig {
    /// Jobs run at once.
    pub concurrency: usize,
    /// Lease taken on each claim; renewed every third of it.
    pub lease: Duration,
    /// On drain, how long running jobs get to finish (or checkpoint and
    /// return [`JobError::Cancelled`]) before they are dropped and released.
    pub drain_timeout: Duration,
    /// Wait between claims when no job is ready (an enqueue through
    /// [`PoolHandle::wake`], or a Postgres notice, cuts it short). Each
    /// claim that finds nothing doubles it, up to [`Self::idle_poll_max`];
    /// one that finds a job, or a wake, brings it back.
    pub poll_interval: Duration,
    /// Longest wait between claims of an idle pool: what an idle server
    /// spends polling (a SQLite claim is a transaction), against how late
    /// it sees a job that another process enqueued (on SQLite and Redis,
    /// which have no notices; a wake within the process is immediate).
    pub idle_poll_max: Duration,
    /// Backoff after the first failure; doubles with each attempt.
    pub retry_base: Duration,
    /// Longest backoff.
    pub retry_max: Duration,
    /// Who claims, as recorded on leases: unique per process.
    pub owner: String,
    /// Completed and dead jobs older than this are deleted (with their
    /// idempotency keys) at each lease sweep, in batches of
    /// [`PURGE_BATCH`]; `None` keeps them.
    pub retention: Option<Duration>,
}

/// Jobs deleted by one purge statement; a sweep runs at most 10.
pub const PURGE_BATCH: usize = 1000;

impl Default for PoolConfig {
    /// 4 workers, 30 s leases, 20 s to drain, polls from 200 ms to 2 s
    /// when idle, retries from
    /// 1 s to 5 min, owner `lameduck-<pid>-<start time hex>`, finished jobs
    /// kept 7 days.
    fn default() -> Self {
        Self {
            concurrency: 4,
            lease: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(20),
            poll_interval: Duration::from_millis(200),
            idle_poll_max: Duration::from_secs(2),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            owner: default_owner(),
            retention: Some(Duration::from_secs(7 * 86_400)),
        }
    }
}

fn default_owner() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("lameduck-{}-{nanos:08x}", std::process::id())
}

impl PoolConfig {
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(30));
        self.retry_base.saturating_mul(factor).min(self.retry_max)
    }
}

/// What a pool did, returned when it stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PoolReport {
    /// Jobs completed.
    pub completed: u64,
    /// Attempts that failed (retried later or dead).
    pub failed: u64,
    /// Jobs given back to the journal on drain, handler having stopped.
    pub released: u64,
    /// Jobs given back after their handler was dropped at the drain
    /// timeout (or on a forced stop).
    pub forced: u64,
    /// Jobs whose lease was lost to another worker.
    pub lease_lost: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Stats {
    completed: AtomicU64,
    failed: AtomicU64,
    released: AtomicU64,
    forced: AtomicU64,
    lease_lost: AtomicU64,
}

impl Stats {
    fn report(&self) -> PoolReport {
        PoolReport {
            completed: self.completed.load(Relaxed),
            failed: self.failed.load(Relaxed),
            released: self.released.load(Relaxed),
            forced: self.forced.load(Relaxed),
            lease_lost: self.lease_lost.load(Relaxed),
        }
    }
}

/// Runs jobs from a [`Journal`].
///
/// # Examples
///
/// ```
/// use lameduck_jobs::{Journal, JobState, NewJob, SqliteJournal, WorkerPool};
/// use tokio_util::sync::CancellationToken;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// let journal = std::sync::Arc::new(SqliteJournal::open(dir.path().join("jobs.db"))?);
/// let id = journal.enqueue(NewJob::new("double", serde_json::json!(21))).await?.id;
///
/// let pool = WorkerPool::new(journal.clone()).handler("double", |ctx| async move {
///     Ok(serde_json::json!(ctx.payload().as_i64().unwrap_or(0) * 2))
/// });
/// let stop = CancellationToken::new();
/// let running = tokio::spawn(pool.run(stop.clone()));
/// while journal.get(id).await?.unwrap().state != JobState::Completed {
///     tokio::time::sleep(std::time::Duration::from_millis(20)).await;
/// }
/// stop.cancel();
/// let report = running.await?;
/// assert_eq!(report.completed, 1);
/// assert_eq!(journal.get(id).await?.unwrap().result, Some(serde_json::json!(42)));
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
pub struct WorkerPool {
    journal: Arc<dyn Journal>,
    handlers: HashMap<String, Registered>,
    config: PoolConfig,
    wake: Arc<Notify>,
}

impl fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerPool")
            .field("journal", &self.journal)
            .field("kinds", &self.handlers.keys().collect::<Vec<_>>())
            .field("config", &self.config)
            .finish()
    }
}

/// Wakes a pool that is waiting for work; cheap to clone.
#[derive(Clone, Debug)]
pub struct PoolHandle {
    wake: Arc<Notify>,
}

impl PoolHandle {
    /// Tells the pool a job was just enqueued, so it claims now instead of
    /// at its next poll.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

impl WorkerPool {
    /// A pool over `journal` with the default settings and no handlers.
    pub fn new(journal: Arc<dyn Journal>) -> Self {
        Self::with_config(journal, PoolConfig::default())
    }

    /// A pool over `journal` with `config`.
    pub fn with_config(journal: Arc<dyn Journal>, config: PoolConfig) -> Self {
        Self {
            journal,
            handlers: HashMap::new(),
            config,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Registers the handler for jobs of `kind` with payload version 1
    /// ([`NewJob::payload_version`](crate::NewJob::payload_version)). A
    /// claimed job whose kind has no handler fails (and is retried, then
    /// dead), so that a rolling deploy adding a kind should add the handler
    /// before the producers.
    pub fn handler<F, Fut>(self, kind: impl Into<String>, f: F) -> Self
    where
        F: Fn(JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, JobError>> + Send + 'static,
    {
        self.versioned_handler(kind, 1, f)
    }

    /// Registers the handler for jobs of `kind` with payload versions 1 to
    /// `max_version` ([`JobContext::payload_version`] tells which). A job
    /// of a later version, enqueued by a newer build during a rolling
    /// deploy, is left to the workers that know it: it goes back to the
    /// journal after [`PoolConfig::retry_base`], its attempt not counted.
    /// So a deploy changing a payload ships the workers that read both
    /// versions first, and the producers of the new one after.
    ///
    /// # Examples
    ///
    /// ```
    /// use lameduck_jobs::{JobContext, JobError, SqliteJournal, WorkerPool};
    ///
    /// # fn build() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let journal = std::sync::Arc::new(SqliteJournal::open(dir.path().join("jobs.db"))?);
    /// // Version 1 had `{"to": ADDRESS}`; version 2 has `{"to": [ADDRESSES]}`.
    /// let pool = WorkerPool::new(journal).versioned_handler("email", 2, |ctx: JobContext| async move {
    ///     let to: Vec<String> = match ctx.payload_version() {
    ///         1 => vec![ctx.payload()["to"].as_str().unwrap_or_default().to_owned()],
    ///         _ => serde_json::from_value(ctx.payload()["to"].clone()).map_err(JobError::failed)?,
    ///     };
    ///     Ok(serde_json::json!({ "sent": to.len() }))
    /// });
    /// # Ok(()) }
    /// # build().unwrap();
    /// ```
    pub fn versioned_handler<F, Fut>(
        mut self,
        kind: impl Into<String>,
        max_version: u32,
        f: F,
    ) -> Self
    where
        F: Fn(JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, JobError>> + Send + 'static,
    {
        self.handlers.insert(
            kind.into(),
            Registered {
                handler: Arc::new(move |ctx| Box::pin(f(ctx)) as BoxFuture),
                max_version,
            },
        );
        self
    }

    /// A handle to wake the pool.
    pub fn handle(&self) -> PoolHandle {
        PoolHandle {
            wake: self.wake.clone(),
        }
    }

    /// Runs until `stop` is cancelled, then drains: no more claims, running
    /// jobs see cancellation, those still running after
    /// [`PoolConfig::drain_timeout`] are dropped and released. Returns once
    /// every job is finished or back in the journal.
    pub async fn run(self, stop: CancellationToken) -> PoolReport {
        self.run_inner(stop, CancellationToken::new(), None).await
    }

    /// Runs until the server `drain` watches starts draining (as soon as
    /// the drain is requested, before the announce period: jobs need no
    /// load balancer to move away). At the server's deadline (or a second
    /// signal) whatever still runs is dropped and released at once. Running
    /// jobs appear as `jobs` in the server's `shutdown.progress` events.
    pub async fn run_until_drained(self, drain: lameduck::Drain) -> PoolReport {
        let stop = CancellationToken::new();
        let force = CancellationToken::new();
        let watch = {
            let (stop, force, drain) = (stop.clone(), force.clone(), drain.clone());
            tokio::spawn(async move {
                drain.requested().await;
                stop.cancel();
                drain.forced().await;
                force.cancel();
            })
        };
        let report = self.run_inner(stop, force, Some(drain)).await;
        watch.abort();
        report
    }

    async fn run_inner(
        self,
        stop: CancellationToken,
        force: CancellationToken,
        drain: Option<lameduck::Drain>,
    ) -> PoolReport {
        let config = Arc::new(self.config);
        let handlers = Arc::new(self.handlers);
        let journal = self.journal;
        let stats = Arc::new(Stats::default());
        let tracker = TaskTracker::new();
        let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
        let sweep_every = (config.lease / 2).max(Duration::from_millis(100));

        tracing::info!(
            owner = %config.owner,
            concurrency = config.concurrency,
            lease_ms = config.lease.as_millis() as u64,
            kinds = ?handlers.keys().collect::<Vec<_>>(),
            "job.pool_started"
        );
        sweep(&*journal, config.retention).await;
        let mut next_sweep = Instant::now() + sweep_every;
        let claims = Arc::new(claim::Claims::new(
            supervise::Run {
                journal: journal.clone(),
                handlers,
                config: config.clone(),
                stats: stats.clone(),
                stop: stop.clone(),
                force,
                ending: Arc::new(Semaphore::new(config.concurrency.max(1))),
            },
            self.wake.clone(),
            tracker.clone(),
            drain,
        ));
        let in_flight = Arc::new(Semaphore::new(claim::CLAIMS_IN_FLIGHT));

        while !stop.is_cancelled() {
            let first = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            let claiming = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                permit = in_flight.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            if Instant::now() >= next_sweep {
                sweep(&*journal, config.retention).await;
                next_sweep = Instant::now() + sweep_every;
            }
            // Every slot free now: only this loop takes slots.
            let mut free = vec![first];
            while let Ok(permit) = slots.clone().try_acquire_owned() {
                free.push(permit);
            }
            tracker.spawn(claims.clone().claim(free, claiming));
        }

        tracker.close();
        let running = tracker.len();
        tracing::info!(
            running,
            drain_timeout_ms = config.drain_timeout.as_millis() as u64,
            "job.pool_draining"
        );
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tokio::select! {
                () = tracker.wait() => break,
                _ = tick.tick() => tracing::info!(
                    running = tracker.len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "job.progress"
                ),
            }
        }
        let report = stats.report();
        tracing::info!(
            completed = report.completed,
            failed = report.failed,
            released = report.released,
            forced = report.forced,
            lease_lost = report.lease_lost,
            "job.pool_stopped"
        );
        report
    }
}

/// Takes back jobs whose lease expired (their worker died).
async fn sweep(journal: &dyn Journal, retention: Option<Duration>) {
    match journal.reclaim_expired().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(reclaimed = n, "job.reclaimed"),
        Err(e) => tracing::warn!(error = %e, "job.reclaim_failed"),
    }
    let Some(retention) = retention else { return };
    // Bounded: a backlog is worked off over several sweeps, never in one
    // long statement that would hold the journal.
    let mut purged = 0;
    for _ in 0..10 {
        match journal.purge(retention, PURGE_BATCH).await {
            Ok(n) => {
                purged += n;
                if n < PURGE_BATCH {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "job.purge_failed");
                break;
            }
        }
    }
    if purged > 0 {
        tracing::info!(purged, "job.purged");
    }
}
