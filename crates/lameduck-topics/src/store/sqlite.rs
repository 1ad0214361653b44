//! Topics in a SQLite file (WAL): the embedded default. History survives
//! restarts and upgrades (the successor opens the same file and continues
//! the same epoch), and two processes sharing the file during an upgrade
//! append to one log, serialized by SQLite's write lock.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{
    Changes, Head, MAX_MESSAGE, Message, NewMessage, Published, Retention, Store, digest,
    is_session, now_ms, random_session,
};
use crate::{Epoch, Position, TopicError, TopicName};

/// Each entry takes the schema from version `i` to `i + 1`, and says the
/// oldest schema version a build must know to read the file after it.
/// Append only, and expand before contract: a process of the previous
/// build shares the file during an upgrade or a rolling deploy, so a step
/// that only adds keeps that minimum (older builds read on), and only a
/// later step that removes or changes raises it.
const MIGRATIONS: &[(&str, u32)] = &[
    (
        // 1: topics (epoch and last offset together, so a file restored from
        // an older copy carries its own epoch), messages, idempotency keys.
        "CREATE TABLE topics (
        name  TEXT    PRIMARY KEY,
        epoch INTEGER NOT NULL,
        last  INTEGER NOT NULL
    );
    CREATE TABLE messages (
        topic        TEXT    NOT NULL,
        offset       INTEGER NOT NULL,
        payload      BLOB    NOT NULL,
        content_type TEXT,
        published_at INTEGER NOT NULL,
        PRIMARY KEY (topic, offset)
    ) WITHOUT ROWID;
    CREATE TABLE idempotency (
        topic      TEXT    NOT NULL,
        key        TEXT    NOT NULL,
        offset     INTEGER NOT NULL,
        digest     INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (topic, key)
    ) WITHOUT ROWID;
    CREATE INDEX idempotency_age ON idempotency (created_at);",
        1,
    ),
    // 2: publisher sessions (WebSocket clients), so that a successor knows
    // the sessions its predecessor issued. Only adds: a process of build 1
    // sharing the file during an upgrade reads on as before.
    (
        "CREATE TABLE sessions (
        id         TEXT    PRIMARY KEY,
        created_at INTEGER NOT NULL
    ) WITHOUT ROWID;",
        1,
    ),
    // 3: the oldest schema a reader must know, so that a build meeting a
    // file of a later build can tell whether it may read it.
    (
        "CREATE TABLE schema_meta (
        key   TEXT    PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO schema_meta (key, value) VALUES ('min_reader', 1);",
        1,
    ),
];

/// The schema version this build writes.
pub(super) const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Topics in a SQLite file.
///
/// Publishes are committed in groups: one writer thread takes every
/// publish waiting when it starts a transaction (up to
/// [`MAX_GROUP`](Self::MAX_GROUP)) and commits them with one `fsync`, and
/// each is answered once its group is durable. Under load that is the
/// difference between one publish per `fsync` and hundreds; a lone publish
/// waits for nothing more ([`SqliteStore::max_group`] sets the size; 1
/// turns grouping off). Reads use a connection of their own.
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    key_window: Duration,
    conn: Arc<Mutex<Connection>>,
    writer: std::sync::mpsc::Sender<Job>,
    max_group: Arc<std::sync::atomic::AtomicUsize>,
    changes: Changes,
}

/// A publish waiting for the writer thread.
#[derive(Debug)]
struct Job {
    topic: String,
    message: NewMessage,
    reply: tokio::sync::oneshot::Sender<Result<Published, TopicError>>,
}

fn sql(context: &'static str) -> impl Fn(rusqlite::Error) -> TopicError {
    move |e| TopicError::unavailable(context, e)
}

impl SqliteStore {
    /// Opens (creating it if missing) the file at `path`, keeping
    /// `retention` of each topic and idempotency keys for 24 hours.
    ///
    /// # Errors
    ///
    /// When the file cannot be opened or migrated, or carries a schema
    /// from a newer build ([`TopicError::Corrupt`]).
    pub fn open(path: impl AsRef<Path>, retention: Retention) -> Result<Self, TopicError> {
        Self::open_with(path, retention, Duration::from_secs(24 * 3600))
    }

    /// As [`SqliteStore::open`], remembering idempotency keys for
    /// `key_window` (independently of how long messages are kept).
    ///
    /// # Errors
    ///
    /// As [`SqliteStore::open`].
    pub fn open_with(
        path: impl AsRef<Path>,
        retention: Retention,
        key_window: Duration,
    ) -> Result<Self, TopicError> {
        let path = path.as_ref().to_path_buf();
        let mut conn = connect(&path)?;
        migrate(&mut conn)?;
        let mut writer_conn = connect(&path)?;
        let (writer, jobs) = std::sync::mpsc::channel();
        let max_group = Arc::new(std::sync::atomic::AtomicUsize::new(Self::MAX_GROUP));
        let group = max_group.clone();
        std::thread::Builder::new()
            .name("lameduck-topics-sqlite".into())
            .spawn(move || write_groups(&mut writer_conn, &jobs, &group, retention, key_window))
            .map_err(|e| TopicError::unavailable("starting the SQLite writer thread", e))?;
        Ok(Self {
            path,
            key_window,
            conn: Arc::new(Mutex::new(conn)),
            writer,
            max_group,
            changes: Changes::default(),
        })
    }

    /// Most publishes committed in one transaction, by default.
    pub const MAX_GROUP: usize = 512;

    /// Commits at most `n` publishes in one transaction (at least 1: each
    /// publish its own transaction and `fsync`).
    pub fn max_group(self, n: usize) -> Self {
        self.max_group
            .store(n.max(1), std::sync::atomic::Ordering::Relaxed);
        self
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the connection, off the async threads.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, TopicError> + Send + 'static,
    ) -> Result<T, TopicError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(|e| TopicError::unavailable("running a SQLite operation", e))?
    }
}

/// A connection to the topics file: WAL, every commit synced, waiting up
/// to 5 s for another process's write lock.
fn connect(path: &Path) -> Result<Connection, TopicError> {
    let conn = Connection::open(path).map_err(sql("opening the topics file"))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(sql("setting the busy timeout"))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(sql("turning WAL on"))?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(sql("setting synchronous"))?;
    Ok(conn)
}

/// The writer thread: each transaction takes every publish waiting (up
/// to the store's `max_group`), and all are answered after its commit.
/// A publish refused on its own (a reused key) is answered so and the
/// others go on; a failing statement or commit fails the whole group,
/// which then stored nothing. Ends when the store is dropped.
fn write_groups(
    conn: &mut Connection,
    jobs: &std::sync::mpsc::Receiver<Job>,
    max_group: &std::sync::atomic::AtomicUsize,
    retention: Retention,
    key_window: Duration,
) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        let max = max_group.load(std::sync::atomic::Ordering::Relaxed);
        while group.len() < max {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let outcome = (|| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql("starting a publish"))?;
            let mut results = Vec::with_capacity(group.len());
            for job in &group {
                match publish_in(&tx, &job.topic, &job.message, retention, key_window) {
                    Err(TopicError::KeyConflict) => results.push(Err(TopicError::KeyConflict)),
                    other => results.push(Ok(other?)),
                }
            }
            tx.commit().map_err(sql("committing a publish"))?;
            Ok::<_, TopicError>(results)
        })();
        match outcome {
            Ok(results) => {
                for (job, result) in group.into_iter().zip(results) {
                    let _ = job.reply.send(result);
                }
            }
            Err(e) => {
                let reason = e.to_string();
                for job in group {
                    let _ = job.reply.send(Err(TopicError::unavailable(
                        "publishing to SQLite",
                        reason.clone(),
                    )));
                }
            }
        }
    }
}

/// Appends `message` to `topic` within `tx`; refuses a reused key with
/// [`TopicError::KeyConflict`] before writing anything.
fn publish_in(
    tx: &rusqlite::Transaction<'_>,
    topic: &str,
    message: &NewMessage,
    retention: Retention,
    key_window: Duration,
) -> Result<Published, TopicError> {
    let now = now_ms() as i64;
    let window = key_window.as_millis() as i64;
    let digest = digest(message) as i64;
    let (epoch, _) = topic_row(tx, topic)?;
    if let Some(key) = &message.idempotency_key {
        let seen: Option<(i64, i64)> = tx
            .query_row(
                "SELECT offset, digest FROM idempotency
                 WHERE topic = ?1 AND key = ?2 AND created_at > ?3",
                params![topic, key, now - window],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(sql("reading an idempotency key"))?;
        if let Some((offset, seen_digest)) = seen {
            if seen_digest != digest {
                return Err(TopicError::KeyConflict);
            }
            return Ok(Published {
                position: Position::new(epoch, offset as u64),
                duplicate: true,
            });
        }
    }
    let last: i64 = tx
        .query_row(
            "UPDATE topics SET last = last + 1 WHERE name = ?1 RETURNING last",
            params![topic],
            |row| row.get(0),
        )
        .map_err(sql("taking an offset"))?;
    tx.prepare_cached(
        "INSERT INTO messages (topic, offset, payload, content_type, published_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            topic,
            last,
            &message.payload[..],
            message.content_type,
            now
        ])
    })
    .map_err(sql("storing a message"))?;
    if let Some(key) = &message.idempotency_key {
        tx.execute(
            "INSERT OR REPLACE INTO idempotency (topic, key, offset, digest, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![topic, key, last, digest, now],
        )
        .map_err(sql("storing an idempotency key"))?;
    }
    // By count through the primary key; by age among the 64 oldest only
    // (messages are stored in time order, and each publish trims up to 64,
    // which keeps up with any rate): a condition on the time alone would
    // scan the whole topic at every publish.
    tx.prepare_cached("DELETE FROM messages WHERE topic = ?1 AND offset <= ?2")
        .and_then(|mut stmt| {
            let keep = retention.max_messages.min(i64::MAX as u64) as i64;
            stmt.execute(params![topic, last.saturating_sub(keep)])
        })
        .map_err(sql("trimming a topic"))?;
    tx.prepare_cached(
        "DELETE FROM messages WHERE topic = ?1 AND published_at < ?2 AND offset IN (
             SELECT offset FROM messages WHERE topic = ?1 ORDER BY offset LIMIT 64)",
    )
    .and_then(|mut stmt| stmt.execute(params![topic, now - retention.max_age.as_millis() as i64]))
    .map_err(sql("trimming a topic"))?;
    tx.prepare_cached("DELETE FROM idempotency WHERE created_at <= ?1")
        .and_then(|mut stmt| stmt.execute(params![now - window]))
        .map_err(sql("forgetting old idempotency keys"))?;
    Ok(Published {
        position: Position::new(epoch, last as u64),
        duplicate: false,
    })
}

/// Brings the file to [`SCHEMA_VERSION`], one step per transaction. A
/// file of a later build is read as it is when that build says this one
/// still can (its `min_reader`), and refused otherwise. Each step takes
/// the write lock before it reads the version, so processes opening a new
/// file at once (an upgrade's two, tests) do not both apply a step.
fn migrate(conn: &mut Connection) -> Result<(), TopicError> {
    loop {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql("migrating"))?;
        let current: u32 = tx
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(sql("reading the schema version"))?;
        if current > SCHEMA_VERSION {
            let min_reader: Option<u32> = tx
                .query_row(
                    "SELECT value FROM schema_meta WHERE key = 'min_reader'",
                    [],
                    |row| row.get(0),
                )
                .optional()
                .unwrap_or(None);
            return match min_reader {
                Some(min) if min <= SCHEMA_VERSION => Ok(()),
                _ => Err(TopicError::Corrupt(format!(
                    "the topics file has schema version {current}, which this build \
                     (schema {SCHEMA_VERSION}) cannot read: it needs at least {}",
                    min_reader.map_or("a newer build".to_owned(), |m| format!("schema {m}"))
                ))),
            };
        }
        let Some((step, min_reader)) = MIGRATIONS.get(current as usize) else {
            return Ok(());
        };
        tx.execute_batch(step).map_err(sql("migrating"))?;
        tx.pragma_update(None, "user_version", current + 1)
            .map_err(sql("migrating"))?;
        let has_meta: bool = tx
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'schema_meta'",
                [],
                |row| row.get::<_, i64>(0),
            )
            .map_err(sql("migrating"))?
            > 0;
        if has_meta {
            tx.execute(
                "UPDATE schema_meta SET value = ?1 WHERE key = 'min_reader'",
                params![min_reader],
            )
            .map_err(sql("migrating"))?;
        }
        tx.commit().map_err(sql("migrating"))?;
    }
}

/// The topic's epoch and last offset, creating the topic (a new epoch) if
/// it has none.
fn topic_row(conn: &Connection, topic: &str) -> Result<(Epoch, u64), TopicError> {
    let read = || {
        conn.query_row(
            "SELECT epoch, last FROM topics WHERE name = ?1",
            params![topic],
            |row| {
                Ok((
                    Epoch::from_u64(row.get::<_, i64>(0)? as u64),
                    row.get::<_, i64>(1)? as u64,
                ))
            },
        )
        .optional()
        .map_err(sql("reading a topic"))
    };
    // Read first: an insert, even one that inserts nothing, takes the write
    // lock, and subscribers read often.
    if let Some(row) = read()? {
        return Ok(row);
    }
    conn.execute(
        "INSERT OR IGNORE INTO topics (name, epoch, last) VALUES (?1, ?2, 0)",
        params![topic, Epoch::random().as_u64() as i64],
    )
    .map_err(sql("creating a topic"))?;
    read()?.ok_or_else(|| TopicError::Corrupt(format!("topic {topic} vanished")))
}

fn head_of(conn: &Connection, topic: &str) -> Result<Head, TopicError> {
    let (epoch, last) = topic_row(conn, topic)?;
    let first: Option<i64> = conn
        .query_row(
            "SELECT MIN(offset) FROM messages WHERE topic = ?1",
            params![topic],
            |row| row.get(0),
        )
        .map_err(sql("reading a topic's oldest message"))?;
    Ok(Head {
        epoch,
        first: first.map_or(last + 1, |f| f as u64),
        last,
    })
}

#[async_trait]
impl Store for SqliteStore {
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
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.writer
            .send(Job {
                topic: topic.as_str().to_owned(),
                message,
                reply,
            })
            .map_err(|_| {
                TopicError::unavailable("publishing to SQLite", "the writer thread ended")
            })?;
        let published = answer.await.map_err(|_| {
            TopicError::unavailable("publishing to SQLite", "the writer thread ended")
        })??;
        if !published.duplicate {
            self.changes.published();
        }
        Ok(published)
    }

    async fn head(&self, topic: &TopicName) -> Result<Head, TopicError> {
        let topic = topic.as_str().to_owned();
        self.with(move |conn| head_of(conn, &topic)).await
    }

    async fn read(
        &self,
        topic: &TopicName,
        after: u64,
        limit: usize,
    ) -> Result<(Head, Vec<Message>), TopicError> {
        let topic = topic.as_str().to_owned();
        self.with(move |conn| {
            let tx = conn.transaction().map_err(sql("starting a read"))?;
            let head = head_of(&tx, &topic)?;
            let mut stmt = tx
                .prepare_cached(
                    "SELECT offset, payload, content_type, published_at FROM messages
                     WHERE topic = ?1 AND offset > ?2 ORDER BY offset LIMIT ?3",
                )
                .map_err(sql("reading messages"))?;
            let rows = stmt
                .query_map(
                    params![topic, after.min(i64::MAX as u64) as i64, limit as i64],
                    |row| {
                        Ok(Message {
                            position: Position::new(head.epoch, row.get::<_, i64>(0)? as u64),
                            payload: Bytes::from(row.get::<_, Vec<u8>>(1)?),
                            content_type: row.get(2)?,
                            published_at_ms: row.get::<_, i64>(3)? as u64,
                        })
                    },
                )
                .map_err(sql("reading messages"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(sql("reading messages"))?;
            drop(stmt);
            tx.commit().map_err(sql("ending a read"))?;
            Ok((head, rows))
        })
        .await
    }

    async fn new_session(&self) -> Result<String, TopicError> {
        let session = random_session()?;
        let id = session.clone();
        let window = self.key_window.as_millis() as i64;
        self.with(move |conn| {
            let now = now_ms() as i64;
            conn.execute(
                "DELETE FROM sessions WHERE created_at <= ?1",
                params![now - window],
            )
            .map_err(sql("forgetting old sessions"))?;
            conn.execute(
                "INSERT INTO sessions (id, created_at) VALUES (?1, ?2)",
                params![id, now],
            )
            .map_err(sql("storing a session"))?;
            Ok(())
        })
        .await?;
        Ok(session)
    }

    async fn session_known(&self, session: &str) -> Result<bool, TopicError> {
        if !is_session(session) {
            return Ok(false);
        }
        let id = session.to_owned();
        let window = self.key_window.as_millis() as i64;
        self.with(move |conn| {
            conn.query_row(
                "SELECT 1 FROM sessions WHERE id = ?1 AND created_at > ?2",
                params![id, now_ms() as i64 - window],
                |_| Ok(()),
            )
            .optional()
            .map(|found| found.is_some())
            .map_err(sql("reading a session"))
        })
        .await
    }

    fn version(&self) -> u64 {
        self.changes.version()
    }

    async fn changed(&self, _topic: &TopicName, version: u64, poll: Duration) {
        self.changes.changed(version, poll).await;
    }
}
