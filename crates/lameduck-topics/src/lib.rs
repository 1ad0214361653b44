//! Resumable topics: nothing published is lost while a client reconnects.
//!
//! A topic is an append-only log of messages. Each message has a
//! [`Position`], `EPOCH-OFFSET`: the [`Epoch`] names one history of the
//! topic (random, and changed when that history is lost), the offset grows
//! by one per message. A client keeps the position of the last message it
//! saw and resumes after it ([`subscribe`]): the resume is either
//! recovered (every message after the position follows, with no gap and
//! no duplicate) or says it is not ([`Resume::NotRecovered`]: the position
//! is of another history, ahead of the head because the store was rolled
//! back, or older than what is retained), so the client reloads its state
//! instead of silently missing messages.
//!
//! Stores ([`Store`]): [`MemoryStore`] (one process, tests),
//! [`SqliteStore`] (the embedded default: history survives restarts and
//! upgrades, and two processes of an upgrade append to one log) and
//! [`RedisStore`] (Redis Streams: every instance of a fleet delivers every
//! message, and a flushed or rolled-back Redis is detected). Every
//! backend passes one conformance suite (`tests/conformance.rs`).

#![deny(missing_docs)]
#![doc(test(attr(deny(warnings))))]

mod error;
mod fanout;
pub mod http;
mod name;
mod position;
mod store;
mod subscribe;

pub use error::TopicError;
pub use fanout::Fanout;
pub use name::TopicName;
pub use position::{Epoch, Position};
pub use store::{
    Head, MAX_MESSAGE, MemoryStore, Message, NewMessage, Published, RedisStore, RedisStoreConfig,
    Retention, SqliteStore, Store,
};
pub use subscribe::{Event, Resume, SubscribeConfig, Unrecoverable, subscribe};
