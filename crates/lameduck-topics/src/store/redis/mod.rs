//! Topics in Redis: every instance of a fleet that shares the server and
//! prefix appends to, and delivers from, the same logs.
//!
//! Key layout, under a prefix `P` (default `lameduck`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:topic:<name>` | HASH | `epoch`, `last` (the newest offset) |
//! | `P:topic:<name>:log` | STREAM | one entry a message, id `<offset>-0`: `p` payload, `t` stored at (ms, the server's clock), `c` content type |
//! | `P:topic:<name>:key:<key>` | STRING | `epoch offset digest` of an idempotency key, expiring after the key window |
//! | `P:session:<id>` | STRING | an issued publisher session, expiring after the key window |
//! | `P:schema` | HASH | `version` (the layout's, written by the first build to use the prefix) and `min_reader` (the oldest layout a build must know to read it) |
//! | `P:published` | channel | the name of each topic published to, so that every instance wakes its subscribers |
//!
//! The epoch and the last offset live in one hash: a flushed Redis has no
//! epoch, so the next publish or read starts a new one, and a Redis
//! restored from an older snapshot carries the older offset with the same
//! epoch, so a client that saw later positions is told it is ahead of the
//! head. Every write is one Lua script; the scripts name their keys, but
//! one topic's keys do not share a hash slot, so Redis Cluster is not
//! supported (one primary, with replicas or Sentinel, is).

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use redis::{
    AsyncCommands, Client, Script, Value,
    aio::{ConnectionManager, ConnectionManagerConfig},
};

use super::{
    Changes, Head, MAX_MESSAGE, Message, NewMessage, Published, Retention, Store, digest,
    is_session, random_session,
};
use crate::{Epoch, Position, TopicError, TopicName};

/// Settings of a [`RedisStore`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RedisStoreConfig {
    /// `redis://HOST:PORT[/DB]`.
    pub url: String,
    /// Prefix of every key; instances that serve the same topics share it.
    pub prefix: String,
    /// How much of each topic is kept.
    pub retention: Retention,
    /// How long idempotency keys and publisher sessions are remembered.
    pub key_window: Duration,
    /// Longest wait for one operation, connecting included; past it the
    /// operation fails as unavailable.
    pub timeout: Duration,
}

impl RedisStoreConfig {
    /// Defaults for the server at `url`: prefix `lameduck`, the default
    /// [`Retention`], keys remembered for 24 hours, a 2 s timeout.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "lameduck".to_owned(),
            retention: Retention::default(),
            key_window: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(2),
        }
    }

    /// Settings from a URL that may name the key prefix in its query:
    /// `redis://HOST:PORT[/DB][?prefix=NAME]` (the convention of the jobs
    /// journal's `--journal`); other query pairs are kept for the client.
    ///
    /// # Errors
    ///
    /// [`TopicError::Invalid`] for a URL that does not parse or an empty
    /// prefix.
    ///
    /// # Examples
    ///
    /// ```
    /// use lameduck_topics::RedisStoreConfig;
    ///
    /// let config = RedisStoreConfig::from_url("redis://127.0.0.1:6379/2?prefix=chat").unwrap();
    /// assert_eq!(config.prefix, "chat");
    /// assert_eq!(config.url, "redis://127.0.0.1:6379/2");
    /// assert!(RedisStoreConfig::from_url("redis://127.0.0.1?prefix=").is_err());
    /// ```
    pub fn from_url(url: &str) -> Result<Self, TopicError> {
        let mut parsed = url::Url::parse(url)
            .map_err(|e| TopicError::Invalid(format!("Redis URL {url:?}: {e}")))?;
        let mut prefix = None;
        let kept: Vec<(String, String)> = parsed
            .query_pairs()
            .filter_map(|(k, v)| {
                if k == "prefix" {
                    prefix = Some(v.into_owned());
                    None
                } else {
                    Some((k.into_owned(), v.into_owned()))
                }
            })
            .collect();
        if kept.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(kept);
        }
        let mut config = Self::new(parsed.as_str());
        match prefix {
            Some(p) if p.is_empty() => Err(TopicError::Invalid("an empty Redis key prefix".into())),
            Some(p) => {
                config.prefix = p;
                Ok(config)
            }
            None => Ok(config),
        }
    }

    /// Sets the key prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets how much of each topic is kept.
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Sets how long idempotency keys and sessions are remembered.
    pub fn key_window(mut self, window: Duration) -> Self {
        self.key_window = window;
        self
    }

    /// Sets the timeout of one operation.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// The key layout this build writes. Changes expand before they contract,
/// as the SQLite schema's do: one that only adds (a new field, a new key)
/// keeps `min_reader`, so the previous build reads on beside the next.
pub(super) const LAYOUT_VERSION: u64 = 1;

/// Topics in Redis Streams, shared by every instance using the same
/// server and prefix.
///
/// "Stored" means acknowledged by the Redis server: how much survives a
/// crash of Redis itself is its persistence setting (`appendonly yes` with
/// `appendfsync always` loses nothing; `everysec` may lose the last
/// second, which readers then see as a rollback: positions ahead of the
/// head, not recovered).
///
/// # Examples
///
/// ```
/// use lameduck_topics::{NewMessage, RedisStore, RedisStoreConfig, Store, TopicName};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// # let url = std::env::var("REDIS_URL").unwrap_or("redis://127.0.0.1:6379".into());
/// let config = RedisStoreConfig::from_url(&url)?.prefix("doc-example");
/// let store = RedisStore::connect(config)?;
/// let room = TopicName::new("room-7")?;
/// let stored = store.publish(&room, NewMessage::new("hello")).await?;
/// println!("stored at {}", stored.position);
/// # Ok::<_, lameduck_topics::TopicError>(()) }).unwrap();
/// ```
#[derive(Debug)]
pub struct RedisStore {
    conn: ConnectionManager,
    config: RedisStoreConfig,
    channel: String,
    publish: Script,
    read: Script,
    changes: Arc<Changes>,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

fn redis_error(context: &'static str) -> impl Fn(redis::RedisError) -> TopicError {
    move |e| TopicError::unavailable(context, e)
}

impl RedisStore {
    /// Makes a store for `config`. Connects on first use (and reconnects
    /// after errors), so this fails only on a malformed URL or an empty
    /// prefix. Must be called within a Tokio runtime: a task listens for
    /// the publishes of other instances.
    ///
    /// # Errors
    ///
    /// [`TopicError::Invalid`] for a malformed URL or an empty prefix.
    pub fn connect(config: RedisStoreConfig) -> Result<Self, TopicError> {
        if config.prefix.is_empty() {
            return Err(TopicError::Invalid("an empty Redis key prefix".into()));
        }
        let client = Client::open(config.url.as_str())
            .map_err(|e| TopicError::Invalid(format!("Redis URL {:?}: {e}", config.url)))?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager)
            .map_err(redis_error("creating the Redis connection"))?;
        let channel = format!("{}:published", config.prefix);
        let changes = Arc::new(Changes::default());
        let listener = tokio::spawn(listen(
            client,
            channel.clone(),
            config.timeout,
            changes.clone(),
        ));
        Ok(Self {
            conn,
            config,
            channel,
            publish: Script::new(include_str!("scripts/publish.lua")),
            read: Script::new(include_str!("scripts/read.lua")),
            changes,
            listener,
        })
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.config.prefix
    }

    /// Checks, once the server answers, that this build can read the key
    /// layout under the prefix (recording its own when the prefix is new):
    /// a process of a later build may have changed it during a rolling
    /// deploy. Call it at start, to refuse to serve rather than misread.
    ///
    /// # Errors
    ///
    /// [`TopicError::Corrupt`] for a layout this build cannot read,
    /// [`TopicError::Unavailable`] when Redis does not answer.
    pub async fn check_layout(&self) -> Result<(), TopicError> {
        let key = format!("{}:schema", self.config.prefix);
        let mut conn = self.conn.clone();
        let script = Script::new(
            "redis.call('HSETNX', KEYS[1], 'version', ARGV[1])
             redis.call('HSETNX', KEYS[1], 'min_reader', ARGV[1])
             return redis.call('HMGET', KEYS[1], 'version', 'min_reader')",
        );
        let mut invoke = script.prepare_invoke();
        invoke.key(&key).arg(LAYOUT_VERSION);
        let reply: Value = self
            .bounded(
                "reading the key layout in Redis",
                invoke.invoke_async(&mut conn),
            )
            .await?;
        let reply = array(reply)?;
        let (Some(version), Some(min_reader)) = (reply.first(), reply.get(1)) else {
            return Err(TopicError::Corrupt(format!("{key} is not a layout record")));
        };
        let version = number(version, "the key layout's version")?;
        let min_reader = number(min_reader, "the key layout's min_reader")?;
        if min_reader > LAYOUT_VERSION {
            return Err(TopicError::Corrupt(format!(
                "the topics under prefix {:?} have key layout {version}, which this build \
                 (layout {LAYOUT_VERSION}) cannot read: it needs at least layout {min_reader}",
                self.config.prefix
            )));
        }
        Ok(())
    }

    fn topic_key(&self, topic: &TopicName) -> String {
        format!("{}:topic:{}", self.config.prefix, topic.as_str())
    }

    fn session_key(&self, session: &str) -> String {
        format!("{}:session:{session}", self.config.prefix)
    }

    /// Runs `fut` with the store's timeout.
    async fn bounded<T>(
        &self,
        what: &'static str,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, TopicError> {
        match tokio::time::timeout(self.config.timeout, fut).await {
            Ok(result) => result.map_err(redis_error(what)),
            Err(_) => Err(TopicError::unavailable(
                what,
                format!("no answer from Redis within {:?}", self.config.timeout),
            )),
        }
    }
}

/// Wakes this process's subscribers when any instance publishes; on a
/// lost connection it wakes them too (a notice may have been missed; they
/// read the log, which is the truth) and reconnects with back-off.
async fn listen(client: Client, channel: String, timeout: Duration, changes: Arc<Changes>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let subscribed = tokio::time::timeout(timeout, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await;
        match subscribed {
            Ok(Ok(pubsub)) => {
                backoff = Duration::from_millis(100);
                changes.published();
                let mut messages = pubsub.into_on_message();
                while messages.next().await.is_some() {
                    changes.published();
                }
                tracing::warn!(error = "closed", "topic.redis_notices_lost");
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "topic.redis_notices_lost"),
            Err(_) => tracing::warn!(error = "no answer in time", "topic.redis_notices_lost"),
        }
        changes.published();
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// A reply value as text (bulk strings and integers).
fn text(value: &Value) -> Result<String, TopicError> {
    match value {
        Value::BulkString(b) => Ok(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Ok(s.clone()),
        Value::Int(i) => Ok(i.to_string()),
        other => Err(TopicError::Corrupt(format!(
            "unexpected Redis reply {other:?}"
        ))),
    }
}

fn number(value: &Value, what: &str) -> Result<u64, TopicError> {
    let t = text(value)?;
    t.parse()
        .map_err(|_| TopicError::Corrupt(format!("{what} in Redis is {t:?}, not a number")))
}

fn array(value: Value) -> Result<Vec<Value>, TopicError> {
    match value {
        Value::Array(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(TopicError::Corrupt(format!(
            "unexpected Redis reply {other:?}"
        ))),
    }
}

/// The offset of a stream id `<offset>-0`.
fn offset_of(id: &str) -> Result<u64, TopicError> {
    id.split_once('-')
        .and_then(|(ms, _)| ms.parse().ok())
        .ok_or_else(|| TopicError::Corrupt(format!("a topic log entry has id {id:?}")))
}

fn message(epoch: Epoch, entry: Value) -> Result<Message, TopicError> {
    let mut entry = array(entry)?.into_iter();
    let (Some(id), Some(fields)) = (entry.next(), entry.next()) else {
        return Err(TopicError::Corrupt(
            "a topic log entry without fields".into(),
        ));
    };
    let offset = offset_of(&text(&id)?)?;
    let mut payload = None;
    let mut content_type = None;
    let mut published_at_ms = 0;
    let mut fields = array(fields)?.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        match (text(&name)?.as_str(), value) {
            ("p", Value::BulkString(b)) => payload = Some(Bytes::from(b)),
            ("c", v) => content_type = Some(text(&v)?),
            ("t", v) => published_at_ms = number(&v, "a message's time")?,
            _ => {}
        }
    }
    Ok(Message {
        position: Position::new(epoch, offset),
        payload: payload.ok_or_else(|| {
            TopicError::Corrupt(format!("topic log entry {offset} has no payload"))
        })?,
        content_type,
        published_at_ms,
    })
}

#[async_trait]
impl Store for RedisStore {
    async fn publish(
        &self,
        topic: &TopicName,
        message: NewMessage,
    ) -> Result<Published, TopicError> {
        if message.payload.len() > MAX_MESSAGE {
            return Err(TopicError::TooLarge {
                size: message.payload.len(),
                max: MAX_MESSAGE,
            });
        }
        let key = self.topic_key(topic);
        let mut invoke = self.publish.prepare_invoke();
        invoke
            .key(&key)
            .key(format!("{key}:log"))
            .key(format!(
                "{key}:key:{}",
                message.idempotency_key.as_deref().unwrap_or("")
            ))
            .arg(Epoch::random().as_u64().to_string())
            .arg(&message.payload[..])
            .arg(message.content_type.as_deref().unwrap_or(""))
            .arg(if message.content_type.is_some() {
                "1"
            } else {
                "0"
            })
            .arg(digest(&message).to_string())
            .arg(self.config.key_window.as_millis().max(1) as u64)
            .arg(self.config.retention.max_messages.max(1))
            .arg(self.config.retention.max_age.as_millis() as u64)
            .arg(if message.idempotency_key.is_some() {
                "1"
            } else {
                "0"
            })
            .arg(&self.channel)
            .arg(topic.as_str());
        let mut conn = self.conn.clone();
        let reply: Value = self
            .bounded("publishing to Redis", invoke.invoke_async(&mut conn))
            .await?;
        let reply = array(reply)?;
        let status = reply.first().map(text).transpose()?.unwrap_or_default();
        let position = |reply: &[Value]| -> Result<Position, TopicError> {
            match reply {
                [_, epoch, offset] => Ok(Position::new(
                    Epoch::from_u64(number(epoch, "a topic's epoch")?),
                    number(offset, "a topic's offset")?,
                )),
                _ => Err(TopicError::Corrupt(format!(
                    "unexpected reply to a publish: {reply:?}"
                ))),
            }
        };
        let published = match status.as_str() {
            "conflict" => return Err(TopicError::KeyConflict),
            "duplicate" => Published {
                position: position(&reply)?,
                duplicate: true,
            },
            "new" => Published {
                position: position(&reply)?,
                duplicate: false,
            },
            other => {
                return Err(TopicError::Corrupt(format!(
                    "unexpected reply to a publish: {other:?}"
                )));
            }
        };
        if !published.duplicate {
            self.changes.published();
        }
        Ok(published)
    }

    async fn head(&self, topic: &TopicName) -> Result<Head, TopicError> {
        self.read(topic, 0, 0).await.map(|(head, _)| head)
    }

    async fn read(
        &self,
        topic: &TopicName,
        after: u64,
        limit: usize,
    ) -> Result<(Head, Vec<Message>), TopicError> {
        let key = self.topic_key(topic);
        let mut invoke = self.read.prepare_invoke();
        invoke
            .key(&key)
            .key(format!("{key}:log"))
            .arg(Epoch::random().as_u64().to_string())
            .arg(format!("{}-0", after.saturating_add(1)))
            .arg(limit);
        let mut conn = self.conn.clone();
        let reply: Value = self
            .bounded("reading from Redis", invoke.invoke_async(&mut conn))
            .await?;
        let mut reply = array(reply)?.into_iter();
        let (Some(epoch), Some(last), Some(first), Some(messages)) =
            (reply.next(), reply.next(), reply.next(), reply.next())
        else {
            return Err(TopicError::Corrupt("unexpected reply to a read".into()));
        };
        let epoch = Epoch::from_u64(number(&epoch, "a topic's epoch")?);
        let last = number(&last, "a topic's offset")?;
        let first = match text(&first)?.as_str() {
            "" => last + 1,
            id => offset_of(id)?,
        };
        let messages = array(messages)?
            .into_iter()
            .map(|entry| message(epoch, entry))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((Head { epoch, first, last }, messages))
    }

    async fn new_session(&self) -> Result<String, TopicError> {
        let session = random_session()?;
        let mut conn = self.conn.clone();
        let window = self.config.key_window.as_millis().max(1) as u64;
        let key = self.session_key(&session);
        self.bounded(
            "storing a session in Redis",
            conn.pset_ex::<_, _, ()>(&key, 1, window),
        )
        .await?;
        Ok(session)
    }

    async fn session_known(&self, session: &str) -> Result<bool, TopicError> {
        if !is_session(session) {
            return Ok(false);
        }
        let mut conn = self.conn.clone();
        let key = self.session_key(session);
        self.bounded("reading a session from Redis", conn.exists(&key))
            .await
    }

    fn version(&self) -> u64 {
        self.changes.version()
    }

    async fn changed(&self, _topic: &TopicName, version: u64, poll: Duration) {
        self.changes.changed(version, poll).await;
    }
}
