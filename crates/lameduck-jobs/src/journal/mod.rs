//! The [`Journal`] trait and its backends: SQLite, Redis and Postgres.

mod postgres;
mod redis;
mod sqlite;

use std::{fmt, sync::Arc, time::Duration};

use async_trait::async_trait;
use serde_json::Value;

pub use self::postgres::PostgresJournal;
pub use self::redis::{RedisConfig, RedisJournal};
pub use self::sqlite::{SqliteConfig, SqliteJournal, Synchronous};
use crate::{Claimed, Enqueued, Job, JobId, JobState, JournalError, Lease, NewJob, StateCounts};

/// Where accepted jobs live until they are done.
///
/// Every method is atomic. A job moves `pending → running` by [`claim`],
/// `running → completed` by [`complete`], `running → pending | dead` by
/// [`fail`] and [`reclaim_expired`], and `running → pending` by [`release`].
/// Writes about a running job carry its [`Lease`]; a lease whose fencing
/// token is no longer the job's latest (the job was reclaimed or claimed
/// again) gets [`JournalError::StaleLease`] and changes nothing, so a worker
/// that lost its lease cannot overwrite the work of the one that took over.
///
/// [`claim`]: Journal::claim
/// [`complete`]: Journal::complete
/// [`fail`]: Journal::fail
/// [`reclaim_expired`]: Journal::reclaim_expired
/// [`release`]: Journal::release
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use lameduck_jobs::{Journal, JobState, NewJob, SqliteJournal};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// let journal = SqliteJournal::open(dir.path().join("jobs.db"))?;
/// let queued = journal.enqueue(NewJob::new("resize", serde_json::json!({"w": 64}))).await?;
///
/// let claimed = journal.claim("worker-1", Duration::from_secs(30), 10).await?;
/// let lease = &claimed[0].lease;
/// journal.checkpoint(lease, &serde_json::json!({"done": 1})).await?;
/// journal.complete(lease, Some(&serde_json::json!("ok"))).await?;
///
/// let job = journal.get(queued.id).await?.unwrap();
/// assert_eq!(job.state, JobState::Completed);
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
#[async_trait]
pub trait Journal: Send + Sync + fmt::Debug {
    /// Stores a job; returns once it is durable (committed to disk for
    /// SQLite, acknowledged by the server for Redis). With an idempotency
    /// key already used, returns the first job's id and writes nothing.
    async fn enqueue(&self, job: NewJob) -> Result<Enqueued, JournalError>;

    /// Claims up to `max` ready jobs for `owner`, oldest `ready_at` first:
    /// each becomes `running` with a lease of `lease`, a fencing token one
    /// higher than its last, and one more attempt counted.
    async fn claim(
        &self,
        owner: &str,
        lease: Duration,
        max: usize,
    ) -> Result<Vec<Claimed>, JournalError>;

    /// Extends a lease to `lease` from now; returns the renewed lease.
    async fn renew(&self, lease: &Lease, duration: Duration) -> Result<Lease, JournalError>;

    /// Stores the job's progress; a later claim sees it.
    async fn checkpoint(&self, lease: &Lease, checkpoint: &Value) -> Result<(), JournalError>;

    /// Marks the job completed, with its result.
    async fn complete(&self, lease: &Lease, result: Option<&Value>) -> Result<(), JournalError>;

    /// Records a failed attempt. The job goes back to `pending`, ready after
    /// `retry_in`, or to `dead` when its attempts are used up; returns which.
    async fn fail(
        &self,
        lease: &Lease,
        error: &str,
        retry_in: Duration,
    ) -> Result<JobState, JournalError>;

    /// Gives the job back at once, keeping its checkpoint; the attempt does
    /// not count (the worker stopped, the job did not fail).
    async fn release(&self, lease: &Lease) -> Result<(), JournalError>;

    /// Takes back every job whose lease has expired (its worker died or
    /// hung): to `pending` at once, or to `dead` when its attempts are used
    /// up. Returns how many were taken back.
    async fn reclaim_expired(&self) -> Result<usize, JournalError>;

    /// One job, if it exists.
    async fn get(&self, id: JobId) -> Result<Option<Job>, JournalError>;

    /// Jobs by id order, optionally in one state, with ids above `after`;
    /// at most `limit`.
    async fn list(
        &self,
        state: Option<JobState>,
        after: Option<JobId>,
        limit: usize,
    ) -> Result<Vec<Job>, JournalError>;

    /// How many jobs are in each state.
    async fn counts(&self) -> Result<StateCounts, JournalError>;

    /// Deletes up to `max` completed or dead jobs last updated more than
    /// `older_than` ago (oldest ids first), with their idempotency keys,
    /// which can then be used again. Returns how many were deleted; call
    /// again while it returns `max`.
    async fn purge(&self, older_than: Duration, max: usize) -> Result<usize, JournalError>;

    /// How many "jobs may be ready" notices this journal object has seen
    /// (enqueues anywhere, for a backend that announces them; always 0 for
    /// one that does not). Taken before a claim that finds nothing, it
    /// lets [`Journal::wait_for_jobs`] tell whether one came in between.
    fn notices(&self) -> u64 {
        0
    }

    /// Resolves when a notice newer than `seen` arrives, or after `poll`
    /// (the safety net: a notice can be lost with its connection).
    async fn wait_for_jobs(&self, seen: u64, poll: Duration) {
        let _ = seen;
        tokio::time::sleep(poll).await;
    }
}

/// Opens the journal a URL names: `sqlite:PATH` (or `sqlite://PATH`),
/// `redis://HOST:PORT[/DB]` (`rediss://` too) with a `prefix` query
/// parameter for Redis keys (default `lameduck`), or
/// `postgres://USER@HOST:PORT/DB` (`postgresql://` too) with a `schema`
/// query parameter (default `lameduck`).
///
/// A SQLite file is opened (and migrated) at once. The schema (or Redis key
/// layout) found is checked: one of a later build that this build cannot
/// read is refused ([`JournalError::Corrupt`]). A service starts while
/// Redis is down (its layout is then checked at the next start) and
/// answers 503 until it is back.
///
/// # Examples
///
/// ```
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// let url = format!("sqlite:{}", dir.path().join("jobs.db").display());
/// let journal = lameduck_jobs::open(&url).await?;
/// assert_eq!(journal.counts().await?.total(), 0);
/// assert!(lameduck_jobs::open("mysql://x").await.is_err());
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
pub async fn open(url: &str) -> Result<Arc<dyn Journal>, JournalError> {
    if let Some(path) = url.strip_prefix("sqlite:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        if path.is_empty() {
            return Err(JournalError::Invalid(
                "sqlite journal URL has no path (expected sqlite:PATH)".into(),
            ));
        }
        return Ok(Arc::new(SqliteJournal::open(path)?));
    }
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        let (base, prefix) = split_prefix(url)?;
        let config = RedisConfig::new(base).prefix(prefix);
        let journal = RedisJournal::connect(config)?;
        match journal.check_layout().await {
            // Started while Redis is down: it answers 503 until Redis is
            // back; the layout is checked at the next start.
            Err(e) if e.is_unavailable() => {
                tracing::warn!(error = %e, "job.journal_layout_unchecked");
            }
            other => other?,
        }
        return Ok(Arc::new(journal));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let (base, schema) = split_query(url, "schema", "lameduck")?;
        return Ok(Arc::new(PostgresJournal::connect(&base, &schema).await?));
    }
    Err(JournalError::Invalid(format!(
        "unknown journal {url:?} (expected sqlite:PATH, redis://HOST:PORT or \
         postgres://USER@HOST:PORT/DB)"
    )))
}

/// A stable 64-bit digest (FNV-1a) of a job's kind and payload, kept with
/// its idempotency key: a retry with the same key and the same job is told
/// the first job's id, one with another job is refused. The payload is
/// serialized with its keys in order, so equal JSON gives equal digests.
/// A version other than 1 is part of it (version 1 is left out, so that
/// keys stored before versions were kept still match their retries).
pub(crate) fn payload_digest(job: &NewJob) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let payload = job.payload.to_string();
    let version = match job.payload_version {
        1 => String::new(),
        v => format!("v{v}"),
    };
    let bytes = job.kind.bytes().chain([0xff]).chain(version.bytes());
    for b in bytes.chain(payload.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h as i64
}

/// Longest job kind accepted.
pub const MAX_KIND_LEN: usize = 128;
/// Longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// Checks what every backend refuses before writing anything.
pub(crate) fn validate(job: &NewJob) -> Result<(), JournalError> {
    if job.kind.is_empty() || job.kind.len() > MAX_KIND_LEN {
        return Err(JournalError::Invalid(format!(
            "kind must be 1 to {MAX_KIND_LEN} bytes"
        )));
    }
    // Postgres text cannot hold NUL; refused on every backend alike.
    if job.kind.contains('\0')
        || job
            .idempotency_key
            .as_deref()
            .is_some_and(|k| k.contains('\0'))
    {
        return Err(JournalError::Invalid(
            "kind and idempotency key must not contain NUL".into(),
        ));
    }
    if job.payload_version == 0 || job.payload_version > i32::MAX as u32 {
        return Err(JournalError::Invalid(
            "payload_version must be 1 to 2147483647".into(),
        ));
    }
    if job.max_attempts == 0 {
        return Err(JournalError::Invalid(
            "max_attempts must be at least 1".into(),
        ));
    }
    if let Some(key) = &job.idempotency_key {
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
            return Err(JournalError::Invalid(format!(
                "idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} bytes"
            )));
        }
    }
    Ok(())
}

/// Takes `prefix=...` out of a Redis URL's query.
fn split_prefix(url: &str) -> Result<(String, String), JournalError> {
    split_query(url, "prefix", RedisConfig::DEFAULT_PREFIX)
}

/// Takes `name=...` out of a URL's query (`default` without it); the URL
/// keeps its other parameters.
fn split_query(url: &str, name: &str, default: &str) -> Result<(String, String), JournalError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), default.to_owned()));
    };
    let mut prefix = default.to_owned();
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((key, value)) if key == name && !value.is_empty() => prefix = value.to_owned(),
            Some((key, _)) if key == name => {
                return Err(JournalError::Invalid(format!("empty `{name}` in {url:?}")));
            }
            _ => rest.push(pair),
        }
    }
    let base = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((base, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_prefix_is_taken_from_the_query() {
        let (base, prefix) = split_prefix("redis://127.0.0.1:6379/2?prefix=app1").unwrap();
        assert_eq!(base, "redis://127.0.0.1:6379/2");
        assert_eq!(prefix, "app1");
        let (base, prefix) = split_prefix("redis://h?protocol=resp3&prefix=p").unwrap();
        assert_eq!(base, "redis://h?protocol=resp3");
        assert_eq!(prefix, "p");
        let (_, prefix) = split_prefix("redis://h").unwrap();
        assert_eq!(prefix, "lameduck");
        assert!(split_prefix("redis://h?prefix=").is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]

        // Any journal URL's query: a prefix that is never empty and a base
        // that keeps every other parameter, or a refusal; never a panic.
        #[test]
        fn redis_url_queries(query in "[a-z=&?%0-9]{0,30}", prefix in "[a-z0-9:_-]{1,12}") {
            if let Ok((base, p)) = split_prefix(&format!("redis://h?{query}")) {
                proptest::prop_assert!(!p.is_empty());
                proptest::prop_assert!(base.starts_with("redis://h"));
                let kept = base.split_once('?').map_or("", |(_, q)| q);
                proptest::prop_assert!(kept.split('&').all(|pair| !pair.starts_with("prefix=")), "{}", base);
            }
            let (base, p) = split_prefix(&format!("redis://h:1/0?a=1&prefix={prefix}")).unwrap();
            proptest::prop_assert_eq!((base.as_str(), p.as_str()), ("redis://h:1/0?a=1", prefix.as_str()));
        }
    }
}
