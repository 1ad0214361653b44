//! The SQLite backend: one file in WAL mode, written by one thread that
//! commits whatever requests are waiting in one transaction (group commit),
//! so 64 concurrent enqueues cost one fsync, not 64.

mod ops;
mod schema;

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::mpsc,
    time::Duration,
};

use async_trait::async_trait;
use rusqlite::{Connection, TransactionBehavior};
use serde_json::Value;
use tokio::sync::oneshot;

use self::ops::{Op, OpError, Reply};
use crate::{
    Claimed, Enqueued, Job, JobId, JobState, Journal, JournalError, Lease, NewJob, StateCounts,
    job::{ms, now_ms},
};

/// How hard SQLite works to keep a commit through a power cut.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Synchronous {
    /// Every commit is fsynced before the enqueue returns: an accepted job
    /// survives a power cut. The default.
    #[default]
    Full,
    /// WAL commits are fsynced at checkpoints only: an accepted job survives
    /// a crash of the process but may be lost with the machine's power.
    Normal,
}

/// Settings of a [`SqliteJournal`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SqliteConfig {
    /// The database file (created if missing).
    pub path: PathBuf,
    /// Durability of each commit.
    pub synchronous: Synchronous,
    /// Most requests committed in one transaction; 1 turns group commit off
    /// (one commit, and one fsync, per request).
    pub max_batch: usize,
    /// How long to wait for another process holding the write lock.
    pub busy_timeout: Duration,
}

impl SqliteConfig {
    /// Defaults for the file at `path`: `synchronous=FULL`, batches of up to
    /// 512 requests, 5 s busy timeout.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            synchronous: Synchronous::Full,
            max_batch: 512,
            busy_timeout: Duration::from_secs(5),
        }
    }
}

struct Request {
    op: Op,
    reply: oneshot::Sender<Result<Reply, JournalError>>,
}

/// A [`Journal`] in one SQLite file.
///
/// Several handles (and several processes) may open the same file; each
/// handle has its own writer thread, and SQLite's write lock orders them.
///
/// # Examples
///
/// ```
/// use lameduck_jobs::{Journal, NewJob, SqliteConfig, SqliteJournal};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// let mut config = SqliteConfig::new(dir.path().join("jobs.db"));
/// config.max_batch = 1; // no group commit: one fsync per request
/// let journal = SqliteJournal::open_with(config)?;
/// let first = journal.enqueue(NewJob::new("mail", serde_json::json!({})).idempotency_key("k")).await?;
/// let again = journal.enqueue(NewJob::new("mail", serde_json::json!({})).idempotency_key("k")).await?;
/// assert_eq!(first.id, again.id);
/// assert!(!again.created);
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
pub struct SqliteJournal {
    tx: mpsc::Sender<Request>,
    /// Reads (`get`, `list`, `counts`) go through a connection of their
    /// own: in WAL mode they see the last commit and never wait behind the
    /// writer's transaction or its fsync.
    reader: std::sync::Arc<std::sync::Mutex<Connection>>,
    path: PathBuf,
}

impl fmt::Debug for SqliteJournal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteJournal")
            .field("path", &self.path)
            .finish()
    }
}

impl SqliteJournal {
    /// Opens (creating and migrating if needed) the journal at `path` with
    /// the default settings.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, JournalError> {
        Self::open_with(SqliteConfig::new(path.as_ref()))
    }

    /// Opens the journal with `config`. Fails if the file cannot be opened
    /// or written, or holds a schema from a newer build.
    pub fn open_with(config: SqliteConfig) -> Result<Self, JournalError> {
        let path = config.path.clone();
        let context = || format!("opening SQLite journal {}", path.display());
        let mut conn =
            Connection::open(&path).map_err(|e| JournalError::unavailable(context(), e))?;
        configure(&conn, &config).map_err(|e| JournalError::unavailable(context(), e))?;
        schema::migrate(&mut conn)?;
        let reader =
            Connection::open(&path).map_err(|e| JournalError::unavailable(context(), e))?;
        configure(&reader, &config).map_err(|e| JournalError::unavailable(context(), e))?;

        let (tx, rx) = mpsc::channel();
        let max_batch = config.max_batch.max(1);
        std::thread::Builder::new()
            .name("lameduck-journal".into())
            .spawn(move || write_loop(conn, rx, max_batch))
            .map_err(|e| JournalError::unavailable("starting the journal writer thread", e))?;
        Ok(Self {
            tx,
            reader: std::sync::Arc::new(std::sync::Mutex::new(reader)),
            path,
        })
    }

    /// Runs a read-only `op` on the reader connection, off the async
    /// threads.
    async fn read(&self, op: Op) -> Result<Reply, JournalError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(|e| e.into_inner());
            match ops::apply(&conn, op, now_ms()) {
                Ok(reply) => Ok(reply),
                Err(OpError::Refused(e)) => Err(e),
                Err(OpError::Sql(e)) => Err(JournalError::unavailable("SQLite journal read", e)),
            }
        })
        .await
        .map_err(|e| JournalError::unavailable("SQLite journal read", e.to_string()))?
    }

    async fn call(&self, op: Op) -> Result<Reply, JournalError> {
        let (reply, rx) = oneshot::channel();
        let gone = || JournalError::unavailable("SQLite journal", "the writer thread has stopped");
        self.tx.send(Request { op, reply }).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

fn configure(conn: &Connection, config: &SqliteConfig) -> rusqlite::Result<()> {
    conn.busy_timeout(config.busy_timeout)?;
    // WAL: readers never block the writer, and a commit appends to one file.
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(journal_mode = %mode, "job.journal_not_wal");
    }
    let sync = match config.synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // One plan a statement whatever its bound values: the statements name
    // their indexes, and without it each new bound clock value made SQLite
    // (bundled with STAT4) prepare the claim again: 79 % of an idle
    // server's instructions (a claim poll every 200 ms, callgrind).
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

/// The writer thread: takes the first waiting request, then every other one
/// already queued (up to `max_batch`), runs them in one transaction, and
/// answers them all once the commit is on disk. Ends when every handle is
/// dropped. No savepoint per request is needed: each operation writes with
/// one statement at most, and refuses before writing.
fn write_loop(mut conn: Connection, rx: mpsc::Receiver<Request>, max_batch: usize) {
    let mut batch = Vec::with_capacity(max_batch);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        run_batch(&mut conn, &mut batch);
    }
}

fn run_batch(conn: &mut Connection, batch: &mut Vec<Request>) {
    let now = now_ms();
    let mut answers = Vec::with_capacity(batch.len());
    let committed = (|| -> rusqlite::Result<()> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for request in batch.iter_mut() {
            let op = std::mem::replace(&mut request.op, Op::Counts);
            let answer = match ops::apply(&tx, op, now) {
                Ok(reply) => Ok(reply),
                Err(OpError::Refused(e)) => Err(e),
                Err(OpError::Sql(e)) => {
                    // SQLite undoes a failed statement by itself, but some
                    // errors (I/O, disk full) undo the whole transaction:
                    // then nothing in this batch is durable.
                    if tx.is_autocommit() {
                        return Err(e);
                    }
                    Err(JournalError::unavailable("SQLite journal", e))
                }
            };
            answers.push(answer);
        }
        tx.commit()
    })();
    match committed {
        Ok(()) => {
            for (request, answer) in batch.drain(..).zip(answers) {
                let _ = request.reply.send(answer);
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, requests = batch.len(), "job.journal_commit_failed");
            let msg = e.to_string();
            for request in batch.drain(..) {
                let _ = request.reply.send(Err(JournalError::unavailable(
                    "SQLite journal commit",
                    msg.clone(),
                )));
            }
        }
    }
}

fn unexpected(reply: Reply) -> JournalError {
    JournalError::Corrupt(format!("unexpected writer reply {reply:?}"))
}

#[async_trait]
impl Journal for SqliteJournal {
    async fn enqueue(&self, job: NewJob) -> Result<Enqueued, JournalError> {
        crate::journal::validate(&job)?;
        match self.call(Op::Enqueue(job)).await? {
            Reply::Enqueued(e) => Ok(e),
            other => Err(unexpected(other)),
        }
    }

    async fn claim(
        &self,
        owner: &str,
        lease: Duration,
        max: usize,
    ) -> Result<Vec<Claimed>, JournalError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let op = Op::Claim {
            owner: owner.to_owned(),
            lease_ms: ms(lease),
            max,
        };
        match self.call(op).await? {
            Reply::Claimed(c) => Ok(c),
            other => Err(unexpected(other)),
        }
    }

    async fn renew(&self, lease: &Lease, duration: Duration) -> Result<Lease, JournalError> {
        let op = Op::Renew {
            lease: lease.clone(),
            lease_ms: ms(duration),
        };
        match self.call(op).await? {
            Reply::Lease(l) => Ok(l),
            other => Err(unexpected(other)),
        }
    }

    async fn checkpoint(&self, lease: &Lease, checkpoint: &Value) -> Result<(), JournalError> {
        let op = Op::Checkpoint {
            lease: lease.clone(),
            checkpoint: checkpoint.to_string(),
        };
        match self.call(op).await? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn complete(&self, lease: &Lease, result: Option<&Value>) -> Result<(), JournalError> {
        let op = Op::Complete {
            lease: lease.clone(),
            result: result.map(Value::to_string),
        };
        match self.call(op).await? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn fail(
        &self,
        lease: &Lease,
        error: &str,
        retry_in: Duration,
    ) -> Result<JobState, JournalError> {
        let op = Op::Fail {
            lease: lease.clone(),
            error: error.to_owned(),
            retry_ms: ms(retry_in),
        };
        match self.call(op).await? {
            Reply::State(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<(), JournalError> {
        match self.call(Op::Release(lease.clone())).await? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn reclaim_expired(&self) -> Result<usize, JournalError> {
        match self.call(Op::Reclaim).await? {
            Reply::Reclaimed(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    async fn get(&self, id: JobId) -> Result<Option<Job>, JournalError> {
        match self.read(Op::Get(id)).await? {
            Reply::Job(j) => Ok(j.map(|j| *j)),
            other => Err(unexpected(other)),
        }
    }

    async fn list(
        &self,
        state: Option<JobState>,
        after: Option<JobId>,
        limit: usize,
    ) -> Result<Vec<Job>, JournalError> {
        match self
            .read(Op::List {
                state,
                after,
                limit,
            })
            .await?
        {
            Reply::Jobs(j) => Ok(j),
            other => Err(unexpected(other)),
        }
    }

    async fn purge(&self, older_than: Duration, max: usize) -> Result<usize, JournalError> {
        let op = Op::Purge {
            older_ms: crate::job::ms(older_than),
            max,
        };
        match self.call(op).await? {
            Reply::Reclaimed(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    async fn counts(&self) -> Result<StateCounts, JournalError> {
        match self.read(Op::Counts).await? {
            Reply::Counts(c) => Ok(c),
            other => Err(unexpected(other)),
        }
    }
}
