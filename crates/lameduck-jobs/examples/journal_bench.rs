//! Journal throughput, every backend in one run:
//!
//! - durable enqueues from 64 concurrent submitters: SQLite with group
//!   commit, SQLite with one commit (one fsync) per job, Redis, Postgres;
//! - claim + complete with 8 workers, one job per claim, and again with
//!   claims of up to 32 jobs (the batch against one at a time, same run).
//!
//! `cargo run --release -p lameduck-jobs --example journal_bench -- [JOBS] [REDIS_URL]`
//! (defaults: 20000 jobs, `$REDIS_URL` or `redis://127.0.0.1:6379`;
//! Postgres at `$DATABASE_URL` or `postgres://postgres@127.0.0.1:5432/test`,
//! in a schema of its own, dropped at the end). The
//! SQLite file goes in a temp dir under `$TMPDIR` (use a real disk: on tmpfs
//! an fsync costs nothing and group commit shows no gain).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use lameduck_jobs::{
    Journal, NewJob, PostgresJournal, RedisConfig, RedisJournal, SqliteConfig, SqliteJournal,
};

#[path = "shared/stores.rs"]
mod shared;

const SUBMITTERS: usize = 64;
const WORKERS: usize = 8;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let jobs: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(20_000);
    let redis_url = args.next().unwrap_or_else(shared::redis_url);

    println!(
        "| backend | enqueue/s (64 submitters) | claim+complete/s (8 workers, 1 a claim) | claim+complete/s (8 workers, up to 32 a claim) |"
    );
    println!("|---|---|---|---|");

    let dir = tempfile::tempdir()?;
    let group = Arc::new(SqliteJournal::open_with(SqliteConfig::new(
        dir.path().join("group.db"),
    ))?);
    // One commit per job is slow: measure it on a tenth of the jobs.
    let mut single_config = SqliteConfig::new(dir.path().join("single.db"));
    single_config.max_batch = 1;
    let single = Arc::new(SqliteJournal::open_with(single_config)?);
    let prefix = format!("lameduck-bench-{}", std::process::id());
    let redis = Arc::new(RedisJournal::connect(
        RedisConfig::new(&redis_url).prefix(&prefix),
    )?);

    let database_url = shared::database_url();
    let schema = format!("lameduck_bench_{}", std::process::id());
    let postgres = Arc::new(PostgresJournal::connect(&database_url, &schema).await?);

    let runs: [(&str, Arc<dyn Journal>, usize); 4] = [
        ("sqlite, group commit", group, jobs),
        (
            "sqlite, commit per job",
            single,
            (jobs / 10).max(SUBMITTERS),
        ),
        ("redis", redis, jobs),
        ("postgres", postgres, jobs),
    ];
    let mut rates = Vec::new();
    for (name, journal, n) in runs {
        let enqueue = rate(n, enqueue_all(journal.clone(), n).await?);
        let single = rate(n, claim_complete_all(journal.clone(), n, 1).await?);
        enqueue_all(journal.clone(), n).await?;
        let batch = rate(n, claim_complete_all(journal.clone(), n, 32).await?);
        println!("| {name} | {enqueue:.0} | {single:.0} | {batch:.0} |");
        rates.push(enqueue);
    }
    println!();
    println!(
        "group commit / commit per job (enqueue): {:.1}x",
        rates[0] / rates[1]
    );
    shared::clean(&database_url, &schema, &redis_url, &prefix).await?;
    Ok(())
}

fn rate(n: usize, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64()
}

async fn enqueue_all(
    journal: Arc<dyn Journal>,
    n: usize,
) -> Result<Duration, Box<dyn std::error::Error>> {
    let start = Instant::now();
    let tasks: Vec<_> = (0..SUBMITTERS)
        .map(|s| {
            let journal = journal.clone();
            tokio::spawn(async move {
                for i in (s..n).step_by(SUBMITTERS) {
                    journal
                        .enqueue(NewJob::new("bench", serde_json::json!({ "i": i })))
                        .await?;
                }
                Ok::<_, lameduck_jobs::JournalError>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(start.elapsed())
}

async fn claim_complete_all(
    journal: Arc<dyn Journal>,
    n: usize,
    per_claim: usize,
) -> Result<Duration, Box<dyn std::error::Error>> {
    let start = Instant::now();
    let tasks: Vec<_> = (0..WORKERS)
        .map(|w| {
            let journal = journal.clone();
            tokio::spawn(async move {
                let owner = format!("bench-{w}");
                let mut done = 0usize;
                loop {
                    let claimed = journal
                        .claim(&owner, Duration::from_secs(60), per_claim)
                        .await?;
                    if claimed.is_empty() {
                        break;
                    }
                    for c in claimed {
                        journal.complete(&c.lease, None).await?;
                        done += 1;
                    }
                }
                Ok::<_, lameduck_jobs::JournalError>(done)
            })
        })
        .collect();
    let mut done = 0;
    for t in tasks {
        done += t.await??;
    }
    assert_eq!(done, n, "every job claimed and completed once");
    Ok(start.elapsed())
}
