//! Enqueue→start latency of a job enqueued by another instance: a worker
//! pool on one journal object, the enqueues through another (as from
//! another process), so that only what the backend tells the pool (Postgres
//! `LISTEN/NOTIFY`) or its poll (200 ms, the default) starts the job.
//! For each backend, `--jobs` jobs enqueued 20 ms apart (idle), then as
//! many enqueued at once (under load); p50 and p99 of the time from the
//! enqueue's return to the handler's start, in ms.
//!
//! `cargo run --release -p lameduck-jobs --example start_latency -- [JOBS]`
//! (default 200; Redis at `$REDIS_URL`, Postgres at `$DATABASE_URL`).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use lameduck_jobs::{
    Journal, NewJob, PoolConfig, PostgresJournal, RedisConfig, RedisJournal, SqliteJournal,
    WorkerPool,
};
use tokio_util::sync::CancellationToken;

#[path = "shared/stores.rs"]
mod shared;

type Starts = Arc<Mutex<Vec<(u64, Instant)>>>;

/// A backend's name, the pool's journal object and the enqueuer's.
type Backend = (&'static str, Arc<dyn Journal>, Arc<dyn Journal>);

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Enqueues `n` jobs through `enqueuer` (`gap` apart) while a pool on
/// `worker` runs them; the latencies in ms, sorted.
async fn measure(
    worker: Arc<dyn Journal>,
    enqueuer: Arc<dyn Journal>,
    first: u64,
    n: u64,
    gap: Duration,
) -> Vec<f64> {
    let starts: Starts = Arc::default();
    let mut config = PoolConfig::default();
    config.concurrency = 8;
    let pool = WorkerPool::with_config(worker, config).handler("lat", {
        let starts = starts.clone();
        move |ctx| {
            let starts = starts.clone();
            async move {
                let i = ctx.payload().as_u64().unwrap_or(0);
                starts.lock().unwrap().push((i, Instant::now()));
                Ok(serde_json::Value::Null)
            }
        }
    });
    let stop = CancellationToken::new();
    let running = tokio::spawn(pool.run(stop.clone()));
    // Let the pool start (and a Postgres listener connect).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut enqueued = Vec::new();
    for i in first..first + n {
        enqueuer
            .enqueue(NewJob::new("lat", serde_json::json!(i)))
            .await
            .expect("enqueue");
        enqueued.push((i, Instant::now()));
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while (starts.lock().unwrap().len() as u64) < n {
        assert!(Instant::now() < deadline, "jobs did not all start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    let _ = running.await;
    let starts = starts.lock().unwrap().clone();
    let mut ms: Vec<f64> = enqueued
        .iter()
        .filter_map(|(i, at)| {
            let (_, started) = starts.iter().find(|(j, _)| j == i)?;
            Some(started.saturating_duration_since(*at).as_secs_f64() * 1e3)
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    ms
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(200);
    let (redis_url, database_url) = (shared::redis_url(), shared::database_url());
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("jobs.db");
    let prefix = format!("lameduck-latency-{}", std::process::id());
    let schema = format!("lameduck_latency_{}", std::process::id());
    let backends: Vec<Backend> = vec![
        (
            "SQLite (poll)",
            Arc::new(SqliteJournal::open(&db)?),
            Arc::new(SqliteJournal::open(&db)?),
        ),
        (
            "Redis (poll)",
            Arc::new(RedisJournal::connect(
                RedisConfig::new(&redis_url).prefix(&prefix),
            )?),
            Arc::new(RedisJournal::connect(
                RedisConfig::new(&redis_url).prefix(&prefix),
            )?),
        ),
        (
            "Postgres (LISTEN/NOTIFY)",
            Arc::new(PostgresJournal::connect(&database_url, &schema).await?),
            Arc::new(PostgresJournal::connect(&database_url, &schema).await?),
        ),
    ];
    println!("| backend | idle p50 ms | idle p99 ms | under load p50 ms | under load p99 ms |");
    println!("|---|---|---|---|---|");
    for (name, worker, enqueuer) in backends {
        let idle = measure(
            worker.clone(),
            enqueuer.clone(),
            0,
            n,
            Duration::from_millis(20),
        )
        .await;
        let load = measure(worker, enqueuer, n, n, Duration::ZERO).await;
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} |",
            percentile(&idle, 0.5),
            percentile(&idle, 0.99),
            percentile(&load, 0.5),
            percentile(&load, 0.99)
        );
    }
    shared::clean(&database_url, &schema, &redis_url, &prefix).await?;
    Ok(())
}
