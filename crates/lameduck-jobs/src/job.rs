//! What the journal stores: jobs, their states and the leases on them.

use std::{
    fmt,
    str::FromStr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A job's identifier, unique within one journal (SQLite file or Redis
/// prefix). Ids grow with every enqueue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for JobId {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(JobId)
    }
}

/// Where a job stands. A retry waits in `Pending` with a later `ready_at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting to be claimed once `ready_at` has passed.
    Pending,
    /// Claimed by a worker that holds a lease on it.
    Running,
    /// Finished successfully; never run again.
    Completed,
    /// Failed `max_attempts` times (or lost its lease that often); never run
    /// again.
    Dead,
}

impl JobState {
    /// Every state, in lifecycle order.
    pub const ALL: [JobState; 4] = [
        JobState::Pending,
        JobState::Running,
        JobState::Completed,
        JobState::Dead,
    ];

    /// The state's name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Dead => "dead",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not a state's name.
#[derive(Debug, thiserror::Error)]
#[error("unknown job state {0:?} (expected pending, running, completed or dead)")]
pub struct UnknownState(pub String);

impl FromStr for JobState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

/// A job to enqueue.
///
/// # Examples
///
/// ```
/// use lameduck_jobs::NewJob;
///
/// let job = NewJob::new("email", serde_json::json!({"to": "a@example.org"}))
///     .idempotency_key("signup-42")
///     .max_attempts(3);
/// assert_eq!(job.kind, "email");
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct NewJob {
    /// Which handler runs it.
    pub kind: String,
    /// The handler's input.
    pub payload: Value,
    /// Enqueueing again with the same key returns the first job's id and
    /// writes nothing.
    pub idempotency_key: Option<String>,
    /// Attempts before the job is declared dead (at least 1).
    pub max_attempts: u32,
    /// Not claimable before this much time has passed.
    pub delay: Duration,
    /// The version of the payload's layout (from 1): a producer that
    /// changes what it puts in a kind's payload raises it, and a worker
    /// leaves alone the versions it does not know
    /// ([`WorkerPool::versioned_handler`](crate::WorkerPool::versioned_handler)).
    pub payload_version: u32,
}

impl NewJob {
    /// Attempts allowed when not set otherwise.
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

    /// A job of `kind` with `payload`, no idempotency key, the default
    /// number of attempts, ready at once.
    pub fn new(kind: impl Into<String>, payload: Value) -> Self {
        Self {
            kind: kind.into(),
            payload,
            idempotency_key: None,
            payload_version: 1,
            max_attempts: Self::DEFAULT_MAX_ATTEMPTS,
            delay: Duration::ZERO,
        }
    }

    /// Sets the payload's version (1 when not set).
    pub fn payload_version(mut self, version: u32) -> Self {
        self.payload_version = version;
        self
    }

    /// Sets the idempotency key.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Sets the number of attempts before the job is dead.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// Makes the job claimable only after `delay`.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// The answer to an enqueue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Enqueued {
    /// The job's id (the first job's, for a repeated idempotency key).
    pub id: JobId,
    /// `false` when an earlier job with the same idempotency key was found
    /// and nothing was written.
    pub created: bool,
}

/// A job as stored. Times are milliseconds since the Unix epoch, taken from
/// the journal's clock (the Redis server's for Redis, so that instances with
/// skewed clocks agree on lease expiry).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Job {
    /// The job's id.
    pub id: JobId,
    /// Which handler runs it.
    pub kind: String,
    /// The handler's input.
    pub payload: Value,
    /// Where it stands.
    pub state: JobState,
    /// Claims that counted as attempts (a release on drain does not count).
    pub attempts: u32,
    /// Attempts before the job is dead.
    pub max_attempts: u32,
    /// The last checkpoint a lease holder stored.
    pub checkpoint: Option<Value>,
    /// What the handler returned, once completed.
    pub result: Option<Value>,
    /// The last failure's message.
    pub last_error: Option<String>,
    /// The lease holder, while running.
    pub owner: Option<String>,
    /// The fencing token of the latest claim (0 before the first).
    pub fence: u64,
    /// When the lease expires, while running.
    pub lease_expires_at_ms: Option<u64>,
    /// Not claimable before this.
    pub ready_at_ms: u64,
    /// When it was enqueued.
    pub created_at_ms: u64,
    /// Its last change.
    pub updated_at_ms: u64,
    /// The key it was enqueued with.
    pub idempotency_key: Option<String>,
    /// The version of the payload's layout (1 for jobs stored before
    /// versions were kept).
    pub payload_version: u32,
}

/// The right to run one job, given by a claim. Every write a worker makes
/// about the job carries it; the journal refuses the write once another
/// claim has taken the job (its fencing token is then higher) or the job
/// was reclaimed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Lease {
    /// The job it is for.
    pub job: JobId,
    /// Who holds it.
    pub owner: String,
    /// The fencing token: grows with every claim of this job.
    pub fence: u64,
    /// When it expires unless renewed.
    pub expires_at_ms: u64,
}

/// A claimed job and the lease to run it.
#[derive(Clone, Debug, PartialEq)]
pub struct Claimed {
    /// The job, as it was when claimed (state `Running`).
    pub job: Job,
    /// The lease on it.
    pub lease: Lease,
}

/// How many jobs are in each state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StateCounts {
    /// Waiting, retries included.
    pub pending: u64,
    /// Claimed.
    pub running: u64,
    /// Done.
    pub completed: u64,
    /// Given up.
    pub dead: u64,
}

impl StateCounts {
    /// Jobs in any state.
    pub fn total(&self) -> u64 {
        self.pending + self.running + self.completed + self.dead
    }

    /// The count for one state.
    pub fn get(&self, state: JobState) -> u64 {
        match state {
            JobState::Pending => self.pending,
            JobState::Running => self.running,
            JobState::Completed => self.completed,
            JobState::Dead => self.dead,
        }
    }

    pub(crate) fn set(&mut self, state: JobState, n: u64) {
        match state {
            JobState::Pending => self.pending = n,
            JobState::Running => self.running = n,
            JobState::Completed => self.completed = n,
            JobState::Dead => self.dead = n,
        }
    }
}

/// Milliseconds since the Unix epoch, by this machine's clock.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
