//! Errors of the topics.

/// What went wrong with a topic operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// A topic name that is not 1 to 128 of `A-Z a-z 0-9 . _ -`.
    #[error("bad topic name {0:?}: 1 to 128 of A-Z a-z 0-9 . _ -")]
    BadName(String),
    /// A position that is not `EPOCH-OFFSET` (16 hex digits, a dash, a
    /// decimal number).
    #[error("bad position {0:?}: EPOCH-OFFSET expected (16 hex digits, a dash, a number)")]
    BadPosition(String),
    /// A message larger than the store takes.
    #[error("the message is {size} bytes; at most {max}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// An idempotency key used before for another message.
    #[error("the idempotency key was used for another message")]
    KeyConflict,
    /// The store cannot be reached or failed; nothing was stored.
    #[error("the topic store is unavailable: {context}")]
    Unavailable {
        /// What was being done.
        context: String,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A store configuration that cannot work (a malformed URL, an empty
    /// key prefix).
    #[error("invalid topic store settings: {0}")]
    Invalid(String),
    /// The store holds something this build cannot read (a schema from a
    /// newer build, say).
    #[error("the topic store cannot be read: {0}")]
    Corrupt(String),
}

impl TopicError {
    pub(crate) fn unavailable(
        context: &str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Unavailable {
            context: context.to_owned(),
            source: source.into(),
        }
    }
}
