//! End-to-end job throughput through the worker pool: `--jobs` no-op jobs
//! enqueued by 64 submitters while a pool of `--workers` slots claims,
//! runs and completes them, for each backend; jobs per second from the
//! first enqueue to the last completion.
//!
//! `cargo run --release -p lameduck-jobs --example pool_throughput -- [JOBS] [WORKERS...]`
//! (defaults: 100000 jobs; 8 and 64 workers; Redis at `$REDIS_URL`,
//! Postgres at `$DATABASE_URL`; `BACKEND=postgres` runs one backend).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use lameduck_jobs::{
    Journal, NewJob, PoolConfig, PostgresJournal, RedisConfig, RedisJournal, SqliteJournal,
    WorkerPool,
};
use tokio_util::sync::CancellationToken;

#[path = "shared/stores.rs"]
mod shared;

const SUBMITTERS: u64 = 64;

async fn run(journal: Arc<dyn Journal>, jobs: u64, workers: usize) -> f64 {
    let mut config = PoolConfig::default();
    config.concurrency = workers;
    // Counted by the handler, so that the journal is asked for its counts
    // only at the end: a count is a scan of the whole table, and asked
    // every few milliseconds it would take the cores the run measures.
    let handled = Arc::new(AtomicU64::new(0));
    let pool = WorkerPool::with_config(journal.clone(), config).handler("noop", {
        let handled = handled.clone();
        move |_| {
            handled.fetch_add(1, Relaxed);
            async { Ok(serde_json::Value::Null) }
        }
    });
    let handle = pool.handle();
    let stop = CancellationToken::new();
    let began = Instant::now();
    let running = tokio::spawn(pool.run(stop.clone()));
    let submitters: Vec<_> = (0..SUBMITTERS)
        .map(|s| {
            let (journal, handle) = (journal.clone(), handle.clone());
            tokio::spawn(async move {
                for i in (s..jobs).step_by(SUBMITTERS as usize) {
                    journal
                        .enqueue(NewJob::new("noop", serde_json::json!(i)))
                        .await
                        .expect("enqueue");
                    handle.wake();
                }
            })
        })
        .collect();
    for s in submitters {
        s.await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while handled.load(Relaxed) < jobs {
        assert!(Instant::now() < deadline, "not all jobs ran");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    loop {
        let c = journal.counts().await.expect("counts");
        if c.completed >= jobs {
            break;
        }
        assert!(Instant::now() < deadline, "not all jobs completed: {c:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rate = jobs as f64 / began.elapsed().as_secs_f64();
    stop.cancel();
    let _ = running.await;
    rate
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let jobs: u64 = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(100_000);
    let mut workers: Vec<usize> = args.map(|a| a.parse()).collect::<Result<_, _>>()?;
    if workers.is_empty() {
        workers = vec![8, 64];
    }
    let (redis_url, database_url) = (shared::redis_url(), shared::database_url());
    let only = std::env::var("BACKEND").ok();
    println!("{jobs} no-op jobs, enqueued by {SUBMITTERS} submitters while the pool runs them");
    println!("| backend | workers | jobs/s (first enqueue to last completion) |");
    println!("|---|---|---|");
    for &w in &workers {
        let dir = tempfile::tempdir()?;
        let tag = format!("{}_{w}", std::process::id());
        let prefix = format!("lameduck-e2e-{tag}");
        let schema = format!("lameduck_e2e_{tag}");
        let backends: Vec<(&str, Arc<dyn Journal>)> = vec![
            (
                "SQLite",
                Arc::new(SqliteJournal::open(dir.path().join("jobs.db"))?),
            ),
            (
                "Redis",
                Arc::new(RedisJournal::connect(
                    RedisConfig::new(&redis_url).prefix(&prefix),
                )?),
            ),
            (
                "Postgres",
                Arc::new(PostgresJournal::connect(&database_url, &schema).await?),
            ),
        ];
        for (name, journal) in backends {
            if only.as_ref().is_some_and(|o| !o.eq_ignore_ascii_case(name)) {
                continue;
            }
            let rate = run(journal, jobs, w).await;
            println!("| {name} | {w} | {rate:.0} |");
        }
        shared::clean(&database_url, &schema, &redis_url, &prefix).await?;
    }
    Ok(())
}
