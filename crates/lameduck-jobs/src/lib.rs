//! Durable background jobs for services that drain, restart and redeploy.
//!
//! A [`Journal`] keeps every accepted job until it is done: in one SQLite
//! file ([`SqliteJournal`], the embedded default) or in Redis
//! ([`RedisJournal`], for many instances sharing work). A [`WorkerPool`]
//! claims jobs with a lease it renews, runs their handlers, and, when the
//! service drains, stops claiming, cancels running jobs and gives back
//! at once (with their last checkpoint) those that do not finish.
//!
//! # Guarantees
//!
//! - **Nothing accepted is lost.** [`Journal::enqueue`] returns only once
//!   the job is durable. A job leaves the journal's care only by being
//!   completed or declared dead.
//! - **At-least-once.** A worker that dies (crash, `kill -9`, lost machine)
//!   leaves leases that expire; any instance then takes the jobs back
//!   ([`Journal::reclaim_expired`], run by every pool at start and every half
//!   lease). The job runs again from its last checkpoint.
//! - **Never two live workers at once**, as long as leases are honoured:
//!   a claim gives the job a higher fencing token, and every write made under
//!   an older one is refused ([`JournalError::StaleLease`]); a pool whose
//!   renewal is refused cancels the job at once.
//! - **A drain costs nothing.** Jobs stopped by a drain are released at
//!   once, not left to expire, and the attempt does not count.
//!
//! # Examples
//!
//! ```
//! use std::sync::Arc;
//! use lameduck_jobs::{Journal, NewJob, SqliteJournal, WorkerPool};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let journal = Arc::new(SqliteJournal::open(dir.path().join("jobs.db"))?);
//! journal.enqueue(NewJob::new("greet", serde_json::json!("world"))).await?;
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let server = lameduck::Server::new(listener).without_signals();
//! let handle = server.handle();
//! let pool = WorkerPool::new(journal.clone())
//!     .handler("greet", |ctx| async move { Ok(format!("hello {}", ctx.payload()).into()) });
//! let jobs = tokio::spawn(pool.run_until_drained(handle.watcher()));
//! let http = tokio::spawn(server.serve(axum::Router::new()));
//!
//! handle.drain(lameduck::DrainReason::Requested("example".into()));
//! http.await??;
//! let report = jobs.await?;
//! assert_eq!(report.forced, 0);
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
//! ```

mod error;
mod job;
mod journal;
mod pool;

pub use error::JournalError;
pub use job::{Claimed, Enqueued, Job, JobId, JobState, Lease, NewJob, StateCounts, UnknownState};
pub use journal::{
    Journal, MAX_IDEMPOTENCY_KEY_LEN, MAX_KIND_LEN, PostgresJournal, RedisConfig, RedisJournal,
    SqliteConfig, SqliteJournal, Synchronous, open,
};
pub use pool::{JobContext, JobError, PURGE_BATCH, PoolConfig, PoolHandle, PoolReport, WorkerPool};
/// The Postgres driver of [`PostgresJournal`], for
/// [`PostgresJournal::enqueue_in`]: use this one, so that the types match.
pub use tokio_postgres;
