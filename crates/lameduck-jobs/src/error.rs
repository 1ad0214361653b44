//! What can go wrong with a journal.

use crate::JobId;

/// A journal operation that did not happen. Nothing was written unless the
/// variant says otherwise.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// The lease is no longer held: the job was reclaimed, claimed again
    /// (with a higher fencing token), released or finished. The worker must
    /// stop working on it; its write was refused.
    #[error("stale lease on job {job} (fence {fence}): the job was reclaimed or claimed again")]
    StaleLease {
        /// The job.
        job: JobId,
        /// The fencing token the refused write carried.
        fence: u64,
    },
    /// No such job.
    #[error("no job {0}")]
    NotFound(JobId),
    /// The idempotency key was first used for another job (another kind
    /// or payload); nothing was written.
    #[error("the idempotency key was used for job {first}, with another payload")]
    KeyConflict {
        /// The job the key went to.
        first: JobId,
    },
    /// The request itself is wrong (an empty kind, zero attempts, ...).
    #[error("invalid job: {0}")]
    Invalid(String),
    /// The journal cannot be reached or cannot write (disk, network,
    /// timeout). The operation may be retried; for an enqueue, the job is
    /// not accepted.
    #[error("journal unavailable: {context}")]
    Unavailable {
        /// What was being done.
        context: String,
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The stored data cannot be read back (a schema from a newer version,
    /// a corrupt record).
    #[error("journal data is unreadable: {0}")]
    Corrupt(String),
}

impl JournalError {
    pub(crate) fn unavailable(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        JournalError::Unavailable {
            context: context.into(),
            source: source.into(),
        }
    }

    /// Whether retrying later may succeed (the journal was unreachable).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, JournalError::Unavailable { .. })
    }
}
