//! What a job handler is given, and what it may answer.

use std::sync::Arc;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::{Job, JobId, Journal, JournalError, Lease};

/// Why a handler did not finish its job.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// The handler stopped because it was cancelled (the pool is draining):
    /// the job goes back to the journal at once, with its last checkpoint,
    /// and the attempt does not count.
    #[error("cancelled")]
    Cancelled,
    /// The job failed: it is retried after a backoff, or declared dead once
    /// its attempts are used up.
    #[error("{0}")]
    Failed(String),
    /// The worker no longer holds the job (its lease expired and another
    /// worker took it): nothing more is written about it from here.
    #[error("lease lost")]
    LeaseLost,
}

impl JobError {
    /// A failure with a message.
    pub fn failed(msg: impl std::fmt::Display) -> Self {
        JobError::Failed(msg.to_string())
    }
}

impl From<JournalError> for JobError {
    fn from(e: JournalError) -> Self {
        match e {
            JournalError::StaleLease { .. } | JournalError::NotFound(_) => JobError::LeaseLost,
            other => JobError::Failed(other.to_string()),
        }
    }
}

/// A running job, as its handler sees it.
///
/// # Examples
///
/// ```
/// use lameduck_jobs::{JobContext, JobError};
/// use serde_json::{Value, json};
///
/// // Counts to `n`, one step a second, resuming where it stopped.
/// async fn count(ctx: JobContext) -> Result<Value, JobError> {
///     let n = ctx.payload()["n"].as_u64().unwrap_or(10);
///     let mut i = ctx.last_checkpoint().and_then(|c| c["i"].as_u64()).unwrap_or(0);
///     while i < n {
///         tokio::select! {
///             _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
///             _ = ctx.cancelled() => return Err(JobError::Cancelled),
///         }
///         i += 1;
///         ctx.checkpoint(&json!({ "i": i })).await?;
///     }
///     Ok(json!({ "counted": n }))
/// }
/// ```
#[derive(Debug, Clone)]
pub struct JobContext {
    job: Arc<Job>,
    lease: Lease,
    journal: Arc<dyn Journal>,
    cancel: CancellationToken,
}

impl JobContext {
    pub(crate) fn new(
        job: Job,
        lease: Lease,
        journal: Arc<dyn Journal>,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            job: Arc::new(job),
            lease,
            journal,
            cancel,
        }
    }

    /// The job's id.
    pub fn id(&self) -> JobId {
        self.job.id
    }

    /// The job's kind.
    pub fn kind(&self) -> &str {
        &self.job.kind
    }

    /// The job's input.
    pub fn payload(&self) -> &Value {
        &self.job.payload
    }

    /// The version of the payload's layout (from 1).
    pub fn payload_version(&self) -> u32 {
        self.job.payload_version
    }

    /// Which attempt this is, from 1 (a release on drain does not count).
    pub fn attempt(&self) -> u32 {
        self.job.attempts
    }

    /// The progress stored by an earlier run, to resume from.
    pub fn last_checkpoint(&self) -> Option<&Value> {
        self.job.checkpoint.as_ref()
    }

    /// The worker's identity, as recorded on the lease.
    pub fn owner(&self) -> &str {
        &self.lease.owner
    }

    /// Stores progress. Fails with [`JobError::LeaseLost`] when another
    /// worker has taken the job: stop then, the other worker owns it.
    pub async fn checkpoint(&self, progress: &Value) -> Result<(), JobError> {
        self.journal
            .checkpoint(&self.lease, progress)
            .await
            .map_err(JobError::from)
    }

    /// Whether the job should stop (the pool is draining, or the lease was
    /// lost).
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Resolves when the job should stop.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// The cancellation token itself, to pass down.
    pub fn cancellation_token(&self) -> &CancellationToken {
        &self.cancel
    }
}
