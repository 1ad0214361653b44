//! Where topics are kept: one trait, one backend a module.

mod memory;
mod redis;
mod sqlite;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::{Epoch, Position, TopicError, TopicName};

pub use memory::MemoryStore;
pub use redis::{RedisStore, RedisStoreConfig};
pub use sqlite::SqliteStore;

/// A message of a topic.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Message {
    /// Where it stands.
    pub position: Position,
    /// Its bytes.
    pub payload: Bytes,
    /// Its content type, when the publisher gave one.
    pub content_type: Option<String>,
    /// When it was stored, in ms since the Unix epoch.
    pub published_at_ms: u64,
}

/// A message to publish.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NewMessage {
    /// Its bytes.
    pub payload: Bytes,
    /// Its content type.
    pub content_type: Option<String>,
    /// A key that makes retries safe: a message published again with the
    /// same key (within the store's idempotency window) is stored once and
    /// answered with the first position.
    pub idempotency_key: Option<String>,
}

impl NewMessage {
    /// A message of `payload`, with no content type and no key.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Self {
            payload: payload.into(),
            content_type: None,
            idempotency_key: None,
        }
    }

    /// With an idempotency key.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// With a content type.
    pub fn content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }
}

/// What a publish did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Published {
    /// The message's position.
    pub position: Position,
    /// Whether it was stored before (same idempotency key): nothing new was
    /// stored.
    pub duplicate: bool,
}

/// A topic's current state: its history and the offsets it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Head {
    /// The current history.
    pub epoch: Epoch,
    /// The oldest offset still retained (`last + 1` when none is).
    pub first: u64,
    /// The newest offset (0 before the first message).
    pub last: u64,
}

/// How much history a topic keeps: at most `max_messages`, none older than
/// `max_age`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Retention {
    /// Messages kept at most.
    pub max_messages: u64,
    /// Age of the oldest message kept.
    pub max_age: Duration,
}

impl Default for Retention {
    /// 10,000 messages and one hour.
    fn default() -> Self {
        Self {
            max_messages: 10_000,
            max_age: Duration::from_secs(3600),
        }
    }
}

impl Retention {
    /// `max_messages` and `max_age`.
    pub fn new(max_messages: u64, max_age: Duration) -> Self {
        Self {
            max_messages,
            max_age,
        }
    }
}

/// Largest message a store takes.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// A topic store. Every backend passes the same conformance suite
/// (`tests/conformance.rs`).
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Appends a message and returns its position once it is stored as
    /// durably as the backend allows. The first publish to a topic starts
    /// its history (a new epoch).
    ///
    /// # Errors
    ///
    /// [`TopicError::TooLarge`], [`TopicError::KeyConflict`] (the key was
    /// used for another payload), [`TopicError::Unavailable`].
    async fn publish(
        &self,
        topic: &TopicName,
        message: NewMessage,
    ) -> Result<Published, TopicError>;

    /// The topic's head; a topic never published to gets its epoch here.
    ///
    /// # Errors
    ///
    /// [`TopicError::Unavailable`].
    async fn head(&self, topic: &TopicName) -> Result<Head, TopicError>;

    /// Up to `limit` messages after `after` in the current history, in
    /// order; with the head, so that a reader sees whether the history it
    /// reads is still the current one and whether `after` is still
    /// retained.
    ///
    /// # Errors
    ///
    /// [`TopicError::Unavailable`].
    async fn read(
        &self,
        topic: &TopicName,
        after: u64,
        limit: usize,
    ) -> Result<(Head, Vec<Message>), TopicError>;

    /// Issues a new publisher session: 128 random bits from the operating
    /// system, as 32 hex digits, that nobody else can guess, so that the
    /// idempotency keys a WebSocket client derives from it (session and
    /// message id) cannot be claimed by another client. Remembered for the
    /// idempotency window, by every process sharing the store.
    ///
    /// # Errors
    ///
    /// [`TopicError::Unavailable`].
    async fn new_session(&self) -> Result<String, TopicError>;

    /// Whether `session` was issued by [`Store::new_session`] (and is still
    /// remembered).
    ///
    /// # Errors
    ///
    /// [`TopicError::Unavailable`].
    async fn session_known(&self, session: &str) -> Result<bool, TopicError>;

    /// How many publishes this store object has seen so far (its own, and
    /// for a shared backend that announces them, those of other
    /// processes): taken before a read, it lets [`Store::changed`] tell
    /// whether one came in between.
    fn version(&self) -> u64;

    /// Resolves when the topic may have new messages: at once if a publish
    /// was seen since `version`, or after `poll` at the latest (another
    /// process may write to the same store unannounced).
    async fn changed(&self, topic: &TopicName, version: u64, poll: Duration);
}

/// Publishes counted, and tasks woken, by a store object: the in-process
/// half of [`Store::changed`].
#[derive(Debug, Default)]
pub(crate) struct Changes {
    version: std::sync::atomic::AtomicU64,
    notify: tokio::sync::Notify,
}

impl Changes {
    pub(crate) fn published(&self) {
        self.version
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.notify.notify_waiters();
    }

    pub(crate) fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) async fn changed(&self, version: u64, poll: Duration) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        // Registered before the check: a publish in between still wakes us.
        notified.as_mut().enable();
        if self.version() != version {
            return;
        }
        let _ = tokio::time::timeout(poll, notified).await;
    }
}

/// 128 bits from the operating system's random source, as 32 hex digits.
pub(crate) fn random_session() -> Result<String, TopicError> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| TopicError::unavailable("reading /dev/urandom for a session id", e))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether `s` looks like a session id (32 hex digits).
pub(crate) fn is_session(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A stable 64-bit digest of a message (FNV-1a), to tell a retry from a
/// reused key once the message itself may be gone.
pub(crate) fn digest(message: &NewMessage) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let ct = message.content_type.as_deref().unwrap_or("").as_bytes();
    for b in message.payload.iter().chain(&[0xff]).chain(ct) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
