//! One suite, written against the `Journal` trait, run against every
//! backend: SQLite in a temp dir; the real Redis server at `REDIS_URL`
//! (default `redis://127.0.0.1:6379`), each test on its own key prefix,
//! deleted afterwards; the real Postgres at `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`), each test in its own
//! schema, dropped afterwards. Redis and Postgres tests fail, never skip,
//! when the server is absent.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use lameduck_jobs::{
    JobId, JobState, Journal, JournalError, Lease, NewJob, PostgresJournal, RedisConfig,
    RedisJournal, SqliteJournal,
};
use serde_json::json;

/// Two handles on one store (for Redis, two connections; for SQLite, two
/// writer threads on one file), and what cleans the store up.
struct Backend {
    a: Arc<dyn Journal>,
    b: Arc<dyn Journal>,
    _cleanup: Cleanup,
}

enum Cleanup {
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Redis { url: String, prefix: String },
    Postgres { schema: String },
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Cleanup::Postgres { schema } = self {
            // A thread of its own: the test's runtime is being dropped.
            let (url, schema) = (database_url(), schema.clone());
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Ok((client, conn)) =
                        tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                    {
                        tokio::spawn(conn);
                        let _ = client
                            .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                            .await;
                    }
                });
            })
            .join();
        }
        if let Cleanup::Redis { url, prefix } = self {
            let client = ::redis::Client::open(url.as_str()).expect("redis url");
            let mut conn = client.get_connection().expect("redis for cleanup");
            let keys: Vec<String> = ::redis::cmd("KEYS")
                .arg(format!("{prefix}:*"))
                .query(&mut conn)
                .expect("KEYS");
            for chunk in keys.chunks(500) {
                let _: () = ::redis::cmd("DEL")
                    .arg(chunk)
                    .query(&mut conn)
                    .expect("DEL");
            }
        }
    }
}

async fn sqlite_backend() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    Backend {
        a: Arc::new(SqliteJournal::open(&path).unwrap()),
        b: Arc::new(SqliteJournal::open(&path).unwrap()),
        _cleanup: Cleanup::Dir(dir),
    }
}

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn redis_backend() -> Backend {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let url = redis_url();
    let prefix = format!(
        "lameduck-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    // Fail loudly, never skip, when Redis is not there.
    let client = ::redis::Client::open(url.as_str()).unwrap();
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("Redis at {url} is required for these tests: {e}"));
    let _: String = ::redis::cmd("PING").query_async(&mut conn).await.unwrap();
    let open = || Arc::new(RedisJournal::connect(RedisConfig::new(&url).prefix(&prefix)).unwrap());
    Backend {
        a: open(),
        b: open(),
        _cleanup: Cleanup::Redis {
            url: url.clone(),
            prefix: prefix.clone(),
        },
    }
}

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

async fn postgres_backend() -> Backend {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let url = database_url();
    let schema = format!(
        "lameduck_test_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    // Fail loudly, never skip, when Postgres is not there.
    let open = || async {
        Arc::new(
            PostgresJournal::connect(&url, &schema)
                .await
                .unwrap_or_else(|e| panic!("Postgres at {url} is required for these tests: {e}")),
        )
    };
    Backend {
        a: open().await,
        b: open().await,
        _cleanup: Cleanup::Postgres {
            schema: schema.clone(),
        },
    }
}

const LEASE: Duration = Duration::from_secs(60);

fn job(n: u64) -> NewJob {
    NewJob::new("test", json!({ "n": n }))
}

async fn claim_one(j: &dyn Journal, owner: &str) -> (lameduck_jobs::Job, Lease) {
    let mut claimed = j.claim(owner, LEASE, 1).await.unwrap();
    assert_eq!(claimed.len(), 1, "one job to claim");
    let c = claimed.pop().unwrap();
    (c.job, c.lease)
}

fn assert_stale<T: std::fmt::Debug>(r: Result<T, JournalError>) {
    match r {
        Err(JournalError::StaleLease { .. }) => {}
        other => panic!("expected a stale-lease refusal, got {other:?}"),
    }
}

// === the suite ===

async fn enqueue_is_pending_and_readable(b: Backend) {
    let q = b.a.enqueue(job(1).max_attempts(3)).await.unwrap();
    assert!(q.created);
    let got =
        b.b.get(q.id)
            .await
            .unwrap()
            .expect("visible through the other handle");
    assert_eq!(got.state, JobState::Pending);
    assert_eq!(got.kind, "test");
    assert_eq!(got.payload, json!({"n": 1}));
    assert_eq!((got.attempts, got.max_attempts, got.fence), (0, 3, 0));
    assert_eq!(got.owner, None);
    assert!(got.created_at_ms > 0 && got.ready_at_ms >= got.created_at_ms);
    assert_eq!(b.a.counts().await.unwrap().pending, 1);
    assert!(b.a.get(JobId(q.id.0 + 1000)).await.unwrap().is_none());
}

async fn claim_takes_oldest_with_a_lease(b: Backend) {
    let first = b.a.enqueue(job(1)).await.unwrap().id;
    let second = b.a.enqueue(job(2)).await.unwrap().id;
    b.a.enqueue(job(3).delay(Duration::from_secs(3600)))
        .await
        .unwrap();

    let claimed = b.a.claim("w1", LEASE, 10).await.unwrap();
    let ids: Vec<_> = claimed.iter().map(|c| c.job.id).collect();
    assert_eq!(
        ids,
        vec![first, second],
        "ready jobs, oldest first; the delayed one waits"
    );
    for c in &claimed {
        assert_eq!(c.job.state, JobState::Running);
        assert_eq!(c.job.attempts, 1);
        assert_eq!(c.lease.fence, 1);
        assert_eq!(c.lease.owner, "w1");
        assert_eq!(c.job.owner.as_deref(), Some("w1"));
        assert!(c.lease.expires_at_ms >= c.job.updated_at_ms + 59_000);
    }
    assert!(
        b.b.claim("w2", LEASE, 10).await.unwrap().is_empty(),
        "nothing left to claim"
    );
    let counts = b.a.counts().await.unwrap();
    assert_eq!((counts.pending, counts.running), (1, 2));
    assert!(b.a.claim("w1", LEASE, 0).await.unwrap().is_empty());
}

async fn complete_stores_result_once(b: Backend) {
    let id = b.a.enqueue(job(1)).await.unwrap().id;
    let (_, lease) = claim_one(&*b.a, "w1").await;
    b.a.complete(&lease, Some(&json!({"ok": true})))
        .await
        .unwrap();
    let got = b.a.get(id).await.unwrap().unwrap();
    assert_eq!(got.state, JobState::Completed);
    assert_eq!(got.result, Some(json!({"ok": true})));
    assert_eq!((got.owner, got.lease_expires_at_ms), (None, None));
    assert_stale(b.a.complete(&lease, None).await);
    assert_stale(b.a.checkpoint(&lease, &json!(1)).await);
    assert!(
        b.a.claim("w1", LEASE, 1).await.unwrap().is_empty(),
        "never run again"
    );
    assert_eq!(b.a.counts().await.unwrap().completed, 1);
}

async fn release_keeps_checkpoint_and_attempt(b: Backend) {
    let id = b.a.enqueue(job(1)).await.unwrap().id;
    let (_, lease) = claim_one(&*b.a, "w1").await;
    b.a.checkpoint(&lease, &json!({"step": 4})).await.unwrap();
    b.a.release(&lease).await.unwrap();
    let got = b.a.get(id).await.unwrap().unwrap();
    assert_eq!(got.state, JobState::Pending);
    assert_eq!(got.attempts, 0, "a release does not use up an attempt");
    assert_eq!(got.checkpoint, Some(json!({"step": 4})));
    assert_stale(b.a.release(&lease).await);

    let (again, lease2) = claim_one(&*b.b, "w2").await;
    assert_eq!(
        again.checkpoint,
        Some(json!({"step": 4})),
        "the next claim resumes"
    );
    assert_eq!(lease2.fence, 2, "the fencing token grows with every claim");
    assert_eq!(again.attempts, 1);
}

async fn fail_retries_then_dies(b: Backend) {
    let id = b.a.enqueue(job(1).max_attempts(2)).await.unwrap().id;
    let (_, lease) = claim_one(&*b.a, "w1").await;
    let state =
        b.a.fail(&lease, "boom 1", Duration::from_secs(3600))
            .await
            .unwrap();
    assert_eq!(state, JobState::Pending);
    let got = b.a.get(id).await.unwrap().unwrap();
    assert_eq!(got.last_error.as_deref(), Some("boom 1"));
    assert!(
        got.ready_at_ms >= got.updated_at_ms + 3_599_000,
        "backoff sets ready_at"
    );
    assert!(
        b.a.claim("w1", LEASE, 1).await.unwrap().is_empty(),
        "not before its backoff"
    );
    assert_stale(b.a.fail(&lease, "again", Duration::ZERO).await);

    // A second job, failed with no backoff, is claimable at once and dies
    // at its last attempt.
    let id2 = b.a.enqueue(job(2).max_attempts(2)).await.unwrap().id;
    let (_, l1) = claim_one(&*b.a, "w1").await;
    assert_eq!(
        b.a.fail(&l1, "x", Duration::ZERO).await.unwrap(),
        JobState::Pending
    );
    let (j2, l2) = claim_one(&*b.a, "w1").await;
    assert_eq!((j2.id, j2.attempts), (id2, 2));
    assert_eq!(
        b.a.fail(&l2, "last", Duration::ZERO).await.unwrap(),
        JobState::Dead
    );
    let dead = b.a.get(id2).await.unwrap().unwrap();
    assert_eq!(
        (dead.state, dead.last_error.as_deref()),
        (JobState::Dead, Some("last"))
    );
    assert!(
        b.a.claim("w1", LEASE, 5).await.unwrap().is_empty(),
        "dead jobs never run"
    );
    let counts = b.a.counts().await.unwrap();
    assert_eq!((counts.pending, counts.dead), (1, 1));
}

async fn renew_extends_the_lease(b: Backend) {
    b.a.enqueue(job(1)).await.unwrap();
    let (_, lease) = claim_one(&*b.a, "w1").await;
    let renewed = b.a.renew(&lease, Duration::from_secs(600)).await.unwrap();
    assert!(renewed.expires_at_ms >= lease.expires_at_ms + 500_000);
    assert_eq!(renewed.fence, lease.fence);
    let other_owner = Lease {
        owner: "w2".into(),
        ..lease.clone()
    };
    assert_stale(b.a.renew(&other_owner, LEASE).await);
    let old_fence = Lease {
        fence: lease.fence - 1,
        ..lease
    };
    assert_stale(b.a.renew(&old_fence, LEASE).await);
}

async fn fencing_refuses_a_reclaimed_worker(b: Backend) {
    let id = b.a.enqueue(job(1)).await.unwrap().id;
    let slow =
        b.a.claim("slow", Duration::from_millis(1), 1)
            .await
            .unwrap()
            .pop()
            .unwrap()
            .lease;
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(b.b.reclaim_expired().await.unwrap(), 1);
    assert_eq!(b.b.get(id).await.unwrap().unwrap().state, JobState::Pending);
    let (_, fast) = claim_one(&*b.b, "fast").await;
    assert!(fast.fence > slow.fence);

    // The worker whose lease expired wakes up: every write it tries is refused.
    assert_stale(b.a.checkpoint(&slow, &json!("stale progress")).await);
    assert_stale(b.a.complete(&slow, Some(&json!("stale result"))).await);
    assert_stale(b.a.renew(&slow, LEASE).await);
    assert_stale(b.a.release(&slow).await);
    assert_stale(b.a.fail(&slow, "stale", Duration::ZERO).await);

    b.b.checkpoint(&fast, &json!("fresh")).await.unwrap();
    b.b.complete(&fast, Some(&json!("fresh result")))
        .await
        .unwrap();
    let got = b.a.get(id).await.unwrap().unwrap();
    assert_eq!(got.state, JobState::Completed);
    assert_eq!(got.checkpoint, Some(json!("fresh")));
    assert_eq!(got.result, Some(json!("fresh result")));
    assert_eq!(got.attempts, 2, "an expired lease counts as an attempt");
}

async fn reclaim_kills_a_job_out_of_attempts(b: Backend) {
    let id = b.a.enqueue(job(1).max_attempts(1)).await.unwrap().id;
    let _ =
        b.a.claim("dies", Duration::from_millis(1), 1)
            .await
            .unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(b.a.reclaim_expired().await.unwrap(), 1);
    let got = b.a.get(id).await.unwrap().unwrap();
    assert_eq!(got.state, JobState::Dead);
    assert!(got.last_error.is_some());
    assert_eq!(
        b.a.reclaim_expired().await.unwrap(),
        0,
        "nothing left to reclaim"
    );

    // A live lease is not reclaimed.
    b.a.enqueue(job(2)).await.unwrap();
    let _ = claim_one(&*b.a, "alive").await;
    assert_eq!(b.a.reclaim_expired().await.unwrap(), 0);
}

async fn idempotency_key_gives_one_job(b: Backend) {
    let first =
        b.a.enqueue(job(1).idempotency_key("order-7"))
            .await
            .unwrap();
    // A retry (the same job, through another instance): the first job.
    let again =
        b.b.enqueue(job(1).idempotency_key("order-7"))
            .await
            .unwrap();
    assert_eq!(first.id, again.id);
    assert!(first.created && !again.created);
    // The key reused for another payload: refused, naming the first job.
    let reused = b.b.enqueue(job(99).idempotency_key("order-7")).await;
    assert!(
        matches!(reused, Err(JournalError::KeyConflict { first: f }) if f == first.id),
        "{reused:?}"
    );
    let got = b.a.get(first.id).await.unwrap().unwrap();
    assert_eq!(got.payload, json!({"n": 1}), "the first payload is kept");
    assert_eq!(got.idempotency_key.as_deref(), Some("order-7"));

    // Many concurrent retries of one request: one job.
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let j = if i % 2 == 0 { b.a.clone() } else { b.b.clone() };
            tokio::spawn(async move { j.enqueue(job(7).idempotency_key("burst")).await.unwrap() })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    assert!(ids.iter().all(|e| e.id == ids[0].id));
    assert_eq!(ids.iter().filter(|e| e.created).count(), 1);
    assert_eq!(b.a.counts().await.unwrap().total(), 2);

    // Concurrent enqueues of one key with two payloads (a backend that
    // writes concurrent enqueues together sees them in one group): one
    // job; the calls with its payload get it, the others a conflict.
    let tasks: Vec<_> = (0..16u64)
        .map(|i| {
            let j = if i % 2 == 0 { b.a.clone() } else { b.b.clone() };
            let n = i % 3;
            tokio::spawn(async move { (n, j.enqueue(job(n).idempotency_key("mixed")).await) })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    let created: Vec<_> = answers
        .iter()
        .filter_map(|(n, a)| a.as_ref().ok().filter(|e| e.created).map(|e| (*n, e.id)))
        .collect();
    assert_eq!(created.len(), 1, "{answers:?}");
    let (winner, id) = created[0];
    for (n, answer) in &answers {
        match answer {
            Ok(e) => assert!(*n == winner && e.id == id, "{answers:?}"),
            Err(JournalError::KeyConflict { first }) => {
                assert!(*n != winner && *first == id, "{answers:?}")
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(b.a.counts().await.unwrap().total(), 3);
}

async fn invalid_jobs_write_nothing(b: Backend) {
    let bad = [
        NewJob::new("", json!({})),
        NewJob::new("k".repeat(129), json!({})),
        job(1).max_attempts(0),
        job(1).idempotency_key(""),
        NewJob::new("nul\0kind", json!({})),
        job(1).idempotency_key("nul\0key"),
        job(1).idempotency_key("x".repeat(256)),
    ];
    for j in bad {
        match b.a.enqueue(j.clone()).await {
            Err(JournalError::Invalid(_)) => {}
            other => panic!("{j:?} should be invalid, got {other:?}"),
        }
    }
    assert_eq!(b.a.counts().await.unwrap().total(), 0);
    let ghost = Lease {
        job: JobId(424242),
        owner: "w".into(),
        fence: 1,
        expires_at_ms: 0,
    };
    assert!(matches!(
        b.a.release(&ghost).await,
        Err(JournalError::NotFound(_))
    ));
    assert!(matches!(
        b.a.complete(&ghost, None).await,
        Err(JournalError::NotFound(_))
    ));
}

async fn list_pages_by_state(b: Backend) {
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(b.a.enqueue(job(n)).await.unwrap().id);
    }
    for c in b.a.claim("w", LEASE, 2).await.unwrap() {
        b.a.complete(&c.lease, None).await.unwrap();
    }
    let page1 = b.a.list(None, None, 2).await.unwrap();
    assert_eq!(page1.iter().map(|j| j.id).collect::<Vec<_>>(), ids[..2]);
    let page2 = b.a.list(None, Some(page1[1].id), 2).await.unwrap();
    assert_eq!(page2.iter().map(|j| j.id).collect::<Vec<_>>(), ids[2..4]);
    let last = b.a.list(None, Some(page2[1].id), 2).await.unwrap();
    assert_eq!(last.iter().map(|j| j.id).collect::<Vec<_>>(), ids[4..]);
    assert!(b.a.list(None, Some(ids[4]), 2).await.unwrap().is_empty());

    let done = b.a.list(Some(JobState::Completed), None, 10).await.unwrap();
    assert_eq!(done.iter().map(|j| j.id).collect::<Vec<_>>(), ids[..2]);
    let pending =
        b.a.list(Some(JobState::Pending), Some(ids[2]), 10)
            .await
            .unwrap();
    assert_eq!(pending.iter().map(|j| j.id).collect::<Vec<_>>(), ids[3..]);
    assert!(
        b.a.list(Some(JobState::Dead), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let counts = b.a.counts().await.unwrap();
    assert_eq!(
        (counts.pending, counts.completed, counts.total()),
        (3, 2, 5)
    );
}

/// 8 workers over 2 journal handles claim 5,000 jobs (enqueued by 64
/// concurrent submitters): each job is claimed once and completed once.
async fn race_completes_each_job_exactly_once(b: Backend) {
    const JOBS: u64 = 5_000;
    let submitters: Vec<_> = (0..64)
        .map(|s| {
            let j = b.a.clone();
            tokio::spawn(async move {
                for n in (s..JOBS).step_by(64) {
                    j.enqueue(job(n)).await.unwrap();
                }
            })
        })
        .collect();
    for s in submitters {
        s.await.unwrap();
    }
    assert_eq!(b.a.counts().await.unwrap().pending, JOBS);

    let completions: Arc<Mutex<HashMap<JobId, u32>>> = Arc::default();
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let j = if w % 2 == 0 { b.a.clone() } else { b.b.clone() };
            let completions = completions.clone();
            tokio::spawn(async move {
                let owner = format!("worker-{w}");
                let mut idle_rounds = 0;
                // Bounded: at most this many claims per worker.
                for _ in 0..JOBS {
                    let claimed = j.claim(&owner, LEASE, 16).await.unwrap();
                    if claimed.is_empty() {
                        idle_rounds += 1;
                        if idle_rounds > 3 {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    idle_rounds = 0;
                    for c in claimed {
                        j.complete(&c.lease, Some(&json!(owner))).await.unwrap();
                        *completions.lock().unwrap().entry(c.job.id).or_default() += 1;
                    }
                }
            })
        })
        .collect();
    let all = async {
        for w in workers {
            w.await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(180), all)
        .await
        .expect("the workers finish within 180 s");

    let completions = std::mem::take(&mut *completions.lock().unwrap());
    assert_eq!(completions.len() as u64, JOBS, "every job completed");
    assert!(
        completions.values().all(|&n| n == 1),
        "no job completed twice"
    );
    let counts = b.a.counts().await.unwrap();
    assert_eq!((counts.completed, counts.total()), (JOBS, JOBS));
    // Each job was claimed exactly once: its fencing token is 1.
    let mut after = None;
    let mut seen = 0;
    loop {
        let page =
            b.b.list(Some(JobState::Completed), after, 1000)
                .await
                .unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        for j in &page {
            assert_eq!(j.fence, 1, "job {} was claimed more than once", j.id);
        }
        seen += page.len() as u64;
    }
    assert_eq!(seen, JOBS);
}

/// Retention: finished jobs (completed, dead) older than the cut are
/// deleted, oldest first and at most `max` a call, with their idempotency
/// keys (a key can then be used again); pending and running ones, and
/// younger ones, stay; counts follow.
async fn purge_deletes_old_finished_jobs_and_their_keys(b: Backend) {
    let done = b.a.enqueue(job(1).idempotency_key("p-1")).await.unwrap();
    let mut dying = job(2);
    dying.max_attempts = 1;
    let dead = b.a.enqueue(dying).await.unwrap();
    let claimed = b.a.claim("w", LEASE, 2).await.unwrap();
    assert_eq!(claimed.len(), 2);
    for c in &claimed {
        if c.job.id == done.id {
            b.a.complete(&c.lease, None).await.unwrap();
        } else {
            let state = b.a.fail(&c.lease, "boom", Duration::ZERO).await.unwrap();
            assert_eq!(state, JobState::Dead);
        }
    }
    let pending = b.a.enqueue(job(3)).await.unwrap();
    let running = b.a.enqueue(job(4)).await.unwrap();
    b.a.claim("w", LEASE, 1).await.unwrap();

    // Young: nothing is old enough.
    assert_eq!(b.b.purge(Duration::from_secs(3600), 10).await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(30)).await;
    // At most `max` a call, oldest first.
    assert_eq!(b.b.purge(Duration::from_millis(10), 1).await.unwrap(), 1);
    assert!(b.a.get(done.id).await.unwrap().is_none());
    assert!(b.a.get(dead.id).await.unwrap().is_some());
    assert_eq!(b.b.purge(Duration::from_millis(10), 10).await.unwrap(), 1);
    assert!(b.a.get(dead.id).await.unwrap().is_none());
    assert!(b.a.get(pending.id).await.unwrap().is_some());
    assert!(b.a.get(running.id).await.unwrap().is_some());
    let counts = b.a.counts().await.unwrap();
    assert_eq!((counts.completed, counts.dead, counts.total()), (0, 0, 2));
    // The key went with its job: a new job takes it.
    let again = b.a.enqueue(job(9).idempotency_key("p-1")).await.unwrap();
    assert!(again.created && again.id != done.id);
}

/// A job's payload version is stored and read back (1 when not given);
/// a retry naming another version is another job.
async fn payload_versions_are_kept(b: Backend) {
    let old = b.a.enqueue(job(1)).await.unwrap();
    let new = b.a.enqueue(job(2).payload_version(3)).await.unwrap();
    assert_eq!(b.b.get(old.id).await.unwrap().unwrap().payload_version, 1);
    assert_eq!(b.b.get(new.id).await.unwrap().unwrap().payload_version, 3);
    let claimed = b.b.claim("w", LEASE, 2).await.unwrap();
    let versions: Vec<u32> = claimed.iter().map(|c| c.job.payload_version).collect();
    assert_eq!(versions, [1, 3]);
    let listed = b.a.list(None, None, 10).await.unwrap();
    assert_eq!(listed[1].payload_version, 3);

    let first = b.a.enqueue(job(5).idempotency_key("v")).await.unwrap();
    let retry = b.b.enqueue(job(5).idempotency_key("v")).await.unwrap();
    assert_eq!((retry.id, retry.created), (first.id, false));
    let other =
        b.b.enqueue(job(5).payload_version(2).idempotency_key("v"))
            .await;
    assert!(
        matches!(other, Err(JournalError::KeyConflict { first: f }) if f == first.id),
        "{other:?}"
    );
    assert!(matches!(
        b.a.enqueue(job(6).payload_version(0)).await,
        Err(JournalError::Invalid(_))
    ));
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::sqlite_backend().await).await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::redis_backend().await).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::postgres_backend().await).await
                }
            )*
        }
    };
}

conformance!(
    enqueue_is_pending_and_readable,
    claim_takes_oldest_with_a_lease,
    complete_stores_result_once,
    release_keeps_checkpoint_and_attempt,
    fail_retries_then_dies,
    renew_extends_the_lease,
    fencing_refuses_a_reclaimed_worker,
    reclaim_kills_a_job_out_of_attempts,
    idempotency_key_gives_one_job,
    invalid_jobs_write_nothing,
    list_pages_by_state,
    race_completes_each_job_exactly_once,
    purge_deletes_old_finished_jobs_and_their_keys,
    payload_versions_are_kept,
);

// === SQLite only ===

/// Jobs survive closing and reopening the file; a file from a newer build is
/// refused rather than misread.
#[tokio::test]
async fn sqlite_survives_reopen_and_refuses_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let id = {
        let j = SqliteJournal::open(&path).unwrap();
        let id = j.enqueue(job(1)).await.unwrap().id;
        let (_, lease) = claim_one(&j, "w").await;
        j.checkpoint(&lease, &json!({"step": 2})).await.unwrap();
        id
    };
    let j = SqliteJournal::open(&path).unwrap();
    let got = j.get(id).await.unwrap().unwrap();
    assert_eq!(got.state, JobState::Running);
    assert_eq!(got.checkpoint, Some(json!({"step": 2})));
    drop(j);

    // A later build's step that only adds (a column, and the version):
    // this build reads and writes on.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
         PRAGMA user_version = 99;",
    )
    .unwrap();
    drop(conn);
    let j = SqliteJournal::open(&path).unwrap();
    assert_eq!(
        j.get(id).await.unwrap().unwrap().checkpoint,
        Some(json!({"step": 2}))
    );
    let more = j.enqueue(job(2)).await.unwrap();
    assert!(j.get(more.id).await.unwrap().is_some());
    drop(j);

    // One that contracts: this build is too old to read it.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute("UPDATE meta SET value = 99 WHERE key = 'min_reader'", [])
        .unwrap();
    drop(conn);
    match SqliteJournal::open(&path) {
        Err(JournalError::Corrupt(msg)) => assert!(msg.contains("version 99"), "{msg}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A Redis key layout of a later build is used when it says this build
/// can read it, and refused by `open` otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_reads_a_later_layout_and_refuses_one_it_cannot_read() {
    let backend = redis_backend().await;
    let Cleanup::Redis { url, prefix } = &backend._cleanup else {
        unreachable!()
    };
    let journal_url = format!("{url}?prefix={prefix}");
    let open = || lameduck_jobs::open(&journal_url);
    let queued = open().await.unwrap().enqueue(job(1)).await.unwrap();
    let client = ::redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let layout = format!("{prefix}:jobs:layout");
    let recorded: (u32, u32) = ::redis::cmd("HMGET")
        .arg(&layout)
        .arg("version")
        .arg("min_reader")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(recorded, (1, 1), "a new prefix records this build's layout");

    let _: () = ::redis::cmd("HSET")
        .arg(&layout)
        .arg("version")
        .arg(99)
        .query_async(&mut conn)
        .await
        .unwrap();
    let later = open().await.unwrap();
    assert!(later.get(queued.id).await.unwrap().is_some());

    let _: () = ::redis::cmd("HSET")
        .arg(&layout)
        .arg("min_reader")
        .arg(99)
        .query_async(&mut conn)
        .await
        .unwrap();
    let refused = open().await;
    assert!(
        matches!(&refused, Err(JournalError::Corrupt(why)) if why.contains("layout 99")),
        "{refused:?}"
    );
}

/// An unwritable path is an error at open, not a panic.
#[tokio::test]
async fn sqlite_open_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let err = SqliteJournal::open(dir.path().join("missing-dir/jobs.db")).unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(lameduck_jobs::open("sqlite:").await.is_err());
    assert!(lameduck_jobs::open("mysql://x").await.is_err());
}

// === Postgres only ===

/// A schema of a later build that only added (a column, version 99 that
/// this build may read) is used as it is, jobs and all; one that raised `min_reader` past
/// this build is refused at connect, before anything is misread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reads_a_later_additive_schema_and_refuses_a_contracting_one() {
    let backend = postgres_backend().await;
    let Cleanup::Postgres { schema } = &backend._cleanup else {
        unreachable!()
    };
    let queued = backend
        .a
        .enqueue(NewJob::new("k", json!({"n": 1})))
        .await
        .unwrap();
    let (client, conn) = tokio_postgres::connect(&database_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(&format!(
            "ALTER TABLE \"{schema}\".jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
             UPDATE \"{schema}\".meta SET value = 99 WHERE key = 'version';"
        ))
        .await
        .unwrap();
    let later = PostgresJournal::connect(&database_url(), schema)
        .await
        .unwrap();
    let job = later.get(queued.id).await.unwrap().unwrap();
    assert_eq!(job.payload, json!({"n": 1}));
    let claimed = later.claim("w", LEASE, 1).await.unwrap();
    assert_eq!(claimed.len(), 1);
    client
        .batch_execute(&format!(
            "UPDATE \"{schema}\".meta SET value = 99 WHERE key = 'min_reader'"
        ))
        .await
        .unwrap();
    let refused = PostgresJournal::connect(&database_url(), schema).await;
    assert!(
        matches!(&refused, Err(JournalError::Corrupt(why)) if why.contains("version 99")),
        "{refused:?}"
    );
}

/// An enqueue through one instance wakes the idle workers of another at
/// once (`LISTEN/NOTIFY`), not at their next poll: the waiter is parked
/// with an hour-long poll before each enqueue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_enqueues_wake_the_workers_of_every_instance() {
    let backend = postgres_backend().await;
    let (a, b) = (backend.a.clone(), backend.b.clone());
    // The listener connects in the background, and counts a notice when it
    // is listening.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while b.notices() == 0 {
        assert!(std::time::Instant::now() < deadline, "never listening");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..5 {
        let seen = b.notices();
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.wait_for_jobs(seen, Duration::from_secs(3600)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        a.enqueue(NewJob::new("k", json!(i))).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("woken by the enqueue's notice, not by the hour-long poll")
            .unwrap();
    }
}

/// SQLite reads do not wait behind the writer: with another process holding
/// the file's write lock (so the writer thread is stuck in its busy wait),
/// `get`, `list` and `counts` answer from the last commit at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_reads_do_not_wait_behind_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let journal = Arc::new(SqliteJournal::open(&path).unwrap());
    let first = journal.enqueue(job(1)).await.unwrap();

    let locker = rusqlite::Connection::open(&path).unwrap();
    locker.execute_batch("BEGIN IMMEDIATE").unwrap();
    // A write now waits for the lock (the busy timeout, seconds).
    let blocked = tokio::spawn({
        let journal = journal.clone();
        async move { journal.enqueue(job(2)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!blocked.is_finished(), "the write waits for the lock");
    let quick = Duration::from_millis(500);
    let got = tokio::time::timeout(quick, journal.get(first.id))
        .await
        .expect("get answers while the writer waits")
        .unwrap();
    assert!(got.is_some());
    let counts = tokio::time::timeout(quick, journal.counts())
        .await
        .expect("counts answer while the writer waits")
        .unwrap();
    assert_eq!(counts.total(), 1, "the last commit");
    tokio::time::timeout(quick, journal.list(None, None, 10))
        .await
        .expect("list answers while the writer waits")
        .unwrap();
    locker.execute_batch("ROLLBACK").unwrap();
    blocked.await.unwrap().unwrap();
}
