//! The worker pool against a real SQLite journal in a temp dir: how jobs
//! end when they succeed, fail, panic, have no handler, ignore a drain, or
//! finish within it.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use lameduck_jobs::{
    JobError, JobId, JobState, Journal, JournalError, Lease, NewJob, PoolConfig, SqliteJournal,
    WorkerPool,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

fn journal() -> (tempfile::TempDir, Arc<SqliteJournal>) {
    let dir = tempfile::tempdir().unwrap();
    let j = Arc::new(SqliteJournal::open(dir.path().join("jobs.db")).unwrap());
    (dir, j)
}

fn fast_config() -> PoolConfig {
    let mut c = PoolConfig::default();
    c.poll_interval = Duration::from_millis(10);
    c.retry_base = Duration::from_millis(10);
    c.retry_max = Duration::from_millis(50);
    c.lease = Duration::from_secs(30);
    c
}

// A job of a payload version newer than its handler reads is left for a
// worker that knows it: given back with its attempt not counted, never
// failed; a pool that reads that version runs it, and sees its version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_versions_a_worker_does_not_know_go_back_unspent() {
    let (_dir, j) = journal();
    let id = j
        .enqueue(NewJob::new("mail", json!({"to": ["a", "b"]})).payload_version(2))
        .await
        .unwrap()
        .id;
    let old = WorkerPool::with_config(j.clone(), fast_config())
        .handler("mail", |_| async { Ok(json!("read as version 1")) });
    let stop = CancellationToken::new();
    let running = tokio::spawn(old.run(stop.clone()));
    // Claimed and given back several times (10 ms apart, the retry base).
    let deadline = Instant::now() + Duration::from_secs(10);
    while j.get(id).await.unwrap().unwrap().fence < 3 {
        assert!(
            Instant::now() < deadline,
            "the old pool never claimed the job"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.cancel();
    let report = running.await.unwrap();
    assert_eq!((report.completed, report.failed), (0, 0));
    let job = wait_state(&j, id, JobState::Pending).await;
    assert_eq!(job.attempts, 0);
    assert_eq!(job.max_attempts, NewJob::DEFAULT_MAX_ATTEMPTS);

    let new = WorkerPool::with_config(j.clone(), fast_config()).versioned_handler(
        "mail",
        2,
        |ctx| async move { Ok(json!({ "version": ctx.payload_version() })) },
    );
    let stop = CancellationToken::new();
    let running = tokio::spawn(new.run(stop.clone()));
    let done = wait_state(&j, id, JobState::Completed).await;
    assert_eq!(done.result, Some(json!({"version": 2})));
    stop.cancel();
    running.await.unwrap();
}

/// Waits (10 s at most) until job `id` is in `state`.
async fn wait_state(j: &SqliteJournal, id: JobId, state: JobState) -> lameduck_jobs::Job {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let job = j.get(id).await.unwrap().unwrap();
        if job.state == state {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} never reached {state}: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// A failing handler is retried with backoff until its attempts are used up,
// then the job is dead with the last error; a panic counts as a failure and
// the pool keeps running; a kind without handler fails the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_retry_then_die() {
    let (_dir, j) = journal();
    let failing = j
        .enqueue(NewJob::new("fails", json!(null)).max_attempts(3))
        .await
        .unwrap()
        .id;
    let panics = j
        .enqueue(NewJob::new("panics", json!(null)).max_attempts(2))
        .await
        .unwrap()
        .id;
    let orphan = j
        .enqueue(NewJob::new("nobody", json!(null)).max_attempts(2))
        .await
        .unwrap()
        .id;
    let ok = j.enqueue(NewJob::new("ok", json!(1))).await.unwrap().id;

    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    let pool = WorkerPool::with_config(j.clone(), fast_config())
        .handler("fails", move |ctx| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                Err(JobError::failed(format!(
                    "attempt {} failed",
                    ctx.attempt()
                )))
            }
        })
        .handler("panics", |_| async { panic!("handler bug") })
        .handler("ok", |_| async { Ok(json!("done")) });
    let stop = CancellationToken::new();
    let running = tokio::spawn(pool.run(stop.clone()));

    let dead = wait_state(&j, failing, JobState::Dead).await;
    assert_eq!(dead.attempts, 3);
    assert_eq!(dead.last_error.as_deref(), Some("attempt 3 failed"));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let dead = wait_state(&j, panics, JobState::Dead).await;
    assert!(dead.last_error.unwrap().contains("panic"));
    let dead = wait_state(&j, orphan, JobState::Dead).await;
    assert!(dead.last_error.unwrap().contains("no handler"));
    assert_eq!(
        wait_state(&j, ok, JobState::Completed).await.result,
        Some(json!("done"))
    );

    stop.cancel();
    let report = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.completed, 1);
    assert_eq!(report.failed, 3 + 2 + 2);
}

// On drain, a job that ignores its cancellation is dropped at the drain
// timeout and released with its last checkpoint (counted as forced); one that
// finishes within the timeout completes; one that stops on cancellation is
// released at once. None uses up an attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_releases_or_completes() {
    let (_dir, j) = journal();
    let stubborn = j
        .enqueue(NewJob::new("stubborn", json!(null)))
        .await
        .unwrap()
        .id;
    let finisher = j
        .enqueue(NewJob::new("finisher", json!(null)))
        .await
        .unwrap()
        .id;
    let polite = j
        .enqueue(NewJob::new("polite", json!(null)))
        .await
        .unwrap()
        .id;

    let mut config = fast_config();
    config.drain_timeout = Duration::from_millis(500);
    let pool = WorkerPool::with_config(j.clone(), config)
        .handler("stubborn", |ctx| async move {
            ctx.checkpoint(&json!({"step": 1})).await?;
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(json!("never"))
        })
        .handler("finisher", |ctx| async move {
            ctx.cancelled().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(json!("finished during the drain"))
        })
        .handler("polite", |ctx| async move {
            ctx.checkpoint(&json!({"step": 7})).await?;
            ctx.cancelled().await;
            Err(JobError::Cancelled)
        });
    let stop = CancellationToken::new();
    let running = tokio::spawn(pool.run(stop.clone()));
    for id in [stubborn, finisher, polite] {
        wait_state(&j, id, JobState::Running).await;
    }
    // Let the handlers store their checkpoints.
    let deadline = Instant::now() + Duration::from_secs(10);
    while j.get(stubborn).await.unwrap().unwrap().checkpoint.is_none()
        || j.get(polite).await.unwrap().unwrap().checkpoint.is_none()
    {
        assert!(Instant::now() < deadline, "handlers did not checkpoint");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    stop.cancel();
    let report = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (report.completed, report.released, report.forced),
        (1, 1, 1),
        "{report:?}"
    );

    let s = j.get(stubborn).await.unwrap().unwrap();
    assert_eq!((s.state, s.attempts), (JobState::Pending, 0));
    assert_eq!(s.checkpoint, Some(json!({"step": 1})));
    let p = j.get(polite).await.unwrap().unwrap();
    assert_eq!((p.state, p.attempts), (JobState::Pending, 0));
    assert_eq!(p.checkpoint, Some(json!({"step": 7})));
    let f = j.get(finisher).await.unwrap().unwrap();
    assert_eq!(f.state, JobState::Completed);
    assert_eq!(f.result, Some(json!("finished during the drain")));
}

// A pool renews its leases: a job that runs for several lease periods is
// never reclaimed by another pool sweeping the same journal, and completes
// once, under its first claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_renewed_while_a_job_runs() {
    let (_dir, j) = journal();
    let id = j
        .enqueue(NewJob::new("long", json!(null)))
        .await
        .unwrap()
        .id;
    let mut config = fast_config();
    // Several lease periods long, with a lease that a loaded machine (the
    // other tests of this binary run at the same time) renews in time.
    config.lease = Duration::from_secs(1);
    let runs = Arc::new(AtomicU32::new(0));
    let make_pool = |runs: Arc<AtomicU32>| {
        WorkerPool::with_config(j.clone(), config.clone()).handler("long", move |_| {
            runs.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_millis(3500)).await;
                Ok(json!("ok"))
            }
        })
    };
    let stop = CancellationToken::new();
    let first = tokio::spawn(make_pool(runs.clone()).run(stop.clone()));
    wait_state(&j, id, JobState::Running).await;
    // A second pool sweeps every half lease and would take the job the
    // moment its lease expired.
    let second = tokio::spawn(make_pool(runs.clone()).run(stop.clone()));
    let done = wait_state(&j, id, JobState::Completed).await;
    stop.cancel();
    for pool in [first, second] {
        tokio::time::timeout(Duration::from_secs(10), pool)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "run once");
    assert_eq!((done.fence, done.attempts), (1, 1), "claimed once");
}

/// A server with no connections on a loopback port, its handle, and its
/// serve task.
async fn idle_server() -> (
    lameduck::Handle,
    tokio::task::JoinHandle<Result<lameduck::DrainReport, lameduck::Error>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = lameduck::Server::new(listener).without_signals();
    let handle = server.handle();
    (handle, tokio::spawn(server.serve(axum::Router::new())))
}

// Driven by a server's drain: a clean drain (nothing to cut, so the
// server stops at once) leaves running jobs their own drain timeout, and a
// job that finishes on cancellation completes; a forced drain releases a
// job that ignores its cancellation at once, long before that timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_forced_server_drain_cuts_jobs_short() {
    // Clean: the server is stopped before the job is done.
    let (_dir, j) = journal();
    let id = j
        .enqueue(NewJob::new("finisher", json!(null)))
        .await
        .unwrap()
        .id;
    let mut config = fast_config();
    config.drain_timeout = Duration::from_secs(30);
    let pool =
        WorkerPool::with_config(j.clone(), config.clone()).handler("finisher", |ctx| async move {
            ctx.cancelled().await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(json!("finished after the server stopped"))
        });
    let (handle, serving) = idle_server().await;
    let running = tokio::spawn(pool.run_until_drained(handle.watcher()));
    wait_state(&j, id, JobState::Running).await;
    handle.drain(lameduck::DrainReason::Requested("test".into()));
    let server = tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(server.is_clean());
    let report = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((report.completed, report.forced), (1, 0), "{report:?}");
    assert_eq!(j.get(id).await.unwrap().unwrap().state, JobState::Completed);

    // Forced: the job is released at once with its checkpoint.
    let (_dir, j) = journal();
    let id = j
        .enqueue(NewJob::new("stubborn", json!(null)))
        .await
        .unwrap()
        .id;
    let pool = WorkerPool::with_config(j.clone(), config).handler("stubborn", |ctx| async move {
        ctx.checkpoint(&json!({"step": 3})).await?;
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(json!("never"))
    });
    let (handle, serving) = idle_server().await;
    let running = tokio::spawn(pool.run_until_drained(handle.watcher()));
    wait_state(&j, id, JobState::Running).await;
    let started = Instant::now();
    handle.force();
    let report = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("released long before the pool's 30 s drain timeout")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(report.forced, 1, "{report:?}");
    let job = j.get(id).await.unwrap().unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Pending, 0));
    let _ = serving.await;
}

/// The SQLite journal, its claims counted.
#[derive(Debug)]
struct CountedClaims {
    inner: Arc<SqliteJournal>,
    claims: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl Journal for CountedClaims {
    async fn enqueue(&self, job: NewJob) -> Result<lameduck_jobs::Enqueued, JournalError> {
        self.inner.enqueue(job).await
    }
    async fn claim(
        &self,
        owner: &str,
        lease: Duration,
        max: usize,
    ) -> Result<Vec<lameduck_jobs::Claimed>, JournalError> {
        self.claims.fetch_add(1, Ordering::SeqCst);
        self.inner.claim(owner, lease, max).await
    }
    async fn renew(&self, lease: &Lease, duration: Duration) -> Result<Lease, JournalError> {
        self.inner.renew(lease, duration).await
    }
    async fn checkpoint(&self, lease: &Lease, checkpoint: &Value) -> Result<(), JournalError> {
        self.inner.checkpoint(lease, checkpoint).await
    }
    async fn complete(&self, lease: &Lease, result: Option<&Value>) -> Result<(), JournalError> {
        self.inner.complete(lease, result).await
    }
    async fn fail(
        &self,
        lease: &Lease,
        error: &str,
        retry_in: Duration,
    ) -> Result<JobState, JournalError> {
        self.inner.fail(lease, error, retry_in).await
    }
    async fn release(&self, lease: &Lease) -> Result<(), JournalError> {
        self.inner.release(lease).await
    }
    async fn reclaim_expired(&self) -> Result<usize, JournalError> {
        self.inner.reclaim_expired().await
    }
    async fn get(&self, id: JobId) -> Result<Option<lameduck_jobs::Job>, JournalError> {
        self.inner.get(id).await
    }
    async fn list(
        &self,
        state: Option<JobState>,
        after: Option<JobId>,
        limit: usize,
    ) -> Result<Vec<lameduck_jobs::Job>, JournalError> {
        self.inner.list(state, after, limit).await
    }
    async fn counts(&self) -> Result<lameduck_jobs::StateCounts, JournalError> {
        self.inner.counts().await
    }
    async fn purge(&self, older_than: Duration, max: usize) -> Result<usize, JournalError> {
        self.inner.purge(older_than, max).await
    }
}

// An idle pool polls less and less (each claim that finds nothing doubles
// the wait, up to `idle_poll_max`), so that an idle server costs next to
// nothing; a wake (an enqueue in this process) still starts a job at once.
// With 10 ms polls and no ceiling past them, an idle second would be about
// 200 claims (two claims in flight); with a 160 ms ceiling, a few dozen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_pool_polls_less_and_less_and_wakes_at_once() {
    let (_dir, j) = journal();
    let counted = Arc::new(CountedClaims {
        inner: j.clone(),
        claims: Default::default(),
    });
    let mut config = fast_config();
    config.idle_poll_max = Duration::from_millis(160);
    let pool = WorkerPool::with_config(counted.clone(), config)
        .handler("ok", |_| async { Ok(json!("done")) });
    let wake = pool.handle();
    let stop = CancellationToken::new();
    let running = tokio::spawn(pool.run(stop.clone()));

    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = counted.claims.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_second = counted.claims.load(Ordering::SeqCst) - before;
    assert!(
        (1..=40).contains(&idle_second),
        "{idle_second} claims in an idle second"
    );

    // Enqueued and woken: it runs long before the idle ceiling would
    // have let a poll find it (bounded wait, generous on a busy machine).
    let id = j.enqueue(NewJob::new("ok", json!(1))).await.unwrap().id;
    wake.wake();
    assert_eq!(
        wait_state(&j, id, JobState::Completed).await.result,
        Some(json!("done"))
    );
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap()
        .unwrap();
}
