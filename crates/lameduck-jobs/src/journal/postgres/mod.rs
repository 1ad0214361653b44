//! The Postgres backend: many instances sharing one queue in one database,
//! each journal in a schema of its own (`?schema=NAME`, default
//! `lameduck`).
//!
//! Driver: tokio-postgres with a deadpool pool. It is the asynchronous
//! Postgres client the rest of the ecosystem builds on, with no macros or
//! compile-time database; the pool bounds connections and replaces broken
//! ones. Every operation is one statement in its own transaction; claims
//! take rows with `FOR UPDATE SKIP LOCKED`, so concurrent claimers never
//! wait on each other or take the same job. Enqueues and completions made
//! while one of their kind is in flight go together in the next statement
//! (group commit: one WAL flush, and one notification, for the group).
//! Times (ready, lease expiry) are the database's clock, so instances with
//! skewed clocks agree.

mod batch;
mod notices;
mod schema;
mod writes;

use std::{fmt, sync::Arc, time::Duration};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde_json::Value;
use tokio_postgres::{NoTls, Row, types::ToSql};

use self::batch::Batcher;
use crate::{
    Claimed, Enqueued, Job, JobId, JobState, Journal, JournalError, Lease, NewJob, StateCounts,
    job::ms,
};

/// A [`Journal`] in Postgres, shared by every instance using the same
/// database and schema. "Durable" means committed (with Postgres's
/// `synchronous_commit`, on disk).
///
/// # Examples
///
/// ```
/// use lameduck_jobs::{Journal, NewJob, PostgresJournal};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// # let url = std::env::var("DATABASE_URL").unwrap_or("postgres://postgres@127.0.0.1:5432/test".into());
/// let journal = PostgresJournal::connect(&url, "doc_example").await?;
/// let queued = journal.enqueue(NewJob::new("invoice", serde_json::json!({"order": 7}))).await?;
/// assert!(journal.get(queued.id).await?.is_some());
/// # Ok::<_, lameduck_jobs::JournalError>(()) }).unwrap();
/// ```
pub struct PostgresJournal {
    db: Arc<Db>,
    schema: String,
    notices: Arc<notices::Notices>,
    listener: tokio::task::JoinHandle<()>,
    enqueues: Batcher<NewJob, Enqueued>,
    completions: Batcher<(Lease, Option<String>), ()>,
}

/// What every statement needs; shared with the group-commit tasks.
pub(super) struct Db {
    pool: Pool,
    /// The schema, quoted, for statements.
    s: String,
    /// The job id sequence, for `nextval`.
    sequence: String,
    /// The `NOTIFY` channel of this journal.
    channel: String,
}

impl Drop for PostgresJournal {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl fmt::Debug for PostgresJournal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresJournal")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

/// Most calls of one kind (enqueues, completions) written by one statement.
const MAX_GROUP: usize = 512;

const COLUMNS: &str = "id, kind, payload, state, attempts, max_attempts, checkpoint, result, \
     last_error, owner, fence, lease_expires_at, ready_at, created_at, updated_at, idempotency_key, \
     payload_version";

/// Longest wait for a connection from the pool, or for a new one.
const CONNECT_WAIT: Duration = Duration::from_secs(2);

fn pg(context: &'static str) -> impl Fn(tokio_postgres::Error) -> JournalError {
    move |e| JournalError::unavailable(format!("Postgres {context}"), e)
}

impl PostgresJournal {
    /// Connects to the database at `url` (`postgres://USER@HOST:PORT/DB`,
    /// libpq's URL form; TLS is not used) and brings `schema` (created if
    /// missing) to this build's version.
    ///
    /// # Errors
    ///
    /// [`JournalError::Invalid`] for a malformed URL or schema name,
    /// [`JournalError::Unavailable`] when the database does not answer,
    /// [`JournalError::Corrupt`] for a schema of a later build this one
    /// cannot read.
    pub async fn connect(url: &str, schema: &str) -> Result<Self, JournalError> {
        if schema.is_empty() || schema.len() > 63 {
            return Err(JournalError::Invalid(format!(
                "Postgres schema name {schema:?}: 1 to 63 characters"
            )));
        }
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| JournalError::Invalid(format!("Postgres URL {url:?}: {e}")))?;
        config.connect_timeout(CONNECT_WAIT);
        let notices = Arc::new(notices::Notices::default());
        let channel = notices::channel(schema);
        let listener = tokio::spawn(notices::listen(
            config.clone(),
            channel.clone(),
            notices.clone(),
        ));
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(16)
            .wait_timeout(Some(CONNECT_WAIT))
            .create_timeout(Some(CONNECT_WAIT))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| JournalError::Invalid(format!("Postgres pool: {e}")))?;
        let s = schema::quote(schema);
        let db = Arc::new(Db {
            pool,
            sequence: format!("{s}.jobs_id_seq"),
            s,
            channel,
        });
        let mut client = db.client().await?;
        schema::migrate(&mut client, schema).await?;
        drop(client);
        let enqueues = Batcher::spawn(MAX_GROUP, {
            let db = db.clone();
            move |jobs: Vec<NewJob>| {
                let db = db.clone();
                async move { db.enqueue_pooled(&jobs).await }
            }
        });
        let completions = Batcher::spawn(MAX_GROUP, {
            let db = db.clone();
            move |done: Vec<(Lease, Option<String>)>| {
                let db = db.clone();
                async move {
                    let n = done.len();
                    db.complete_group(&done)
                        .await
                        .unwrap_or_else(|e| each(n, &e))
                }
            }
        });
        Ok(Self {
            db,
            schema: schema.to_owned(),
            notices,
            listener,
            enqueues,
            completions,
        })
    }

    /// The schema the journal lives in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Enqueues `job` inside the caller's own transaction (or on any
    /// client): commit, and the job exists and idle workers are told (the
    /// notice is delivered at commit); roll back, and it never did. The
    /// `tokio_postgres` to use is the one this crate re-exports
    /// (`lameduck_jobs::tokio_postgres`), so that the types match.
    ///
    /// # Errors
    ///
    /// [`JournalError::Invalid`] for a bad job, [`JournalError::Unavailable`]
    /// when a statement fails (the caller's transaction is then aborted, as
    /// with any failed statement in it).
    ///
    /// # Examples
    ///
    /// ```
    /// use lameduck_jobs::{Journal, NewJob, PostgresJournal, tokio_postgres};
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let url = std::env::var("DATABASE_URL").unwrap_or("postgres://postgres@127.0.0.1:5432/test".into());
    /// let journal = PostgresJournal::connect(&url, "doc_in_tx").await?;
    /// let (mut client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    /// tokio::spawn(conn);
    ///
    /// // Rolled back with the order it belongs to: the job never existed.
    /// let tx = client.transaction().await.unwrap();
    /// let gone = journal.enqueue_in(&tx, NewJob::new("invoice", serde_json::json!({"order": 7}))).await?;
    /// tx.rollback().await.unwrap();
    /// assert!(journal.get(gone.id).await?.is_none());
    ///
    /// // Committed with it: the job is there.
    /// let tx = client.transaction().await.unwrap();
    /// let kept = journal.enqueue_in(&tx, NewJob::new("invoice", serde_json::json!({"order": 8}))).await?;
    /// tx.commit().await.unwrap();
    /// assert!(journal.get(kept.id).await?.is_some());
    /// # Ok::<_, lameduck_jobs::JournalError>(()) }).unwrap();
    /// ```
    pub async fn enqueue_in(
        &self,
        client: &impl tokio_postgres::GenericClient,
        job: NewJob,
    ) -> Result<Enqueued, JournalError> {
        crate::journal::validate(&job)?;
        let stmt = client
            .prepare(&self.db.sql(writes::ENQUEUE))
            .await
            .map_err(pg("enqueueing"))?;
        let mut answers = self.db.enqueue_group(client, &stmt, &[job]).await?;
        answers.pop().unwrap_or_else(|| {
            Err(JournalError::Corrupt(
                "an enqueue of one job answered none".into(),
            ))
        })
    }
}

/// `e` for each of `n` callers of one group.
fn each<T>(n: usize, e: &JournalError) -> Vec<Result<T, JournalError>> {
    (0..n)
        .map(|_| {
            Err(match e {
                JournalError::Corrupt(m) => JournalError::Corrupt(m.clone()),
                JournalError::Unavailable { context, source } => {
                    JournalError::unavailable(context.clone(), chain(&**source))
                }
                other => JournalError::unavailable("Postgres journal", other.to_string()),
            })
        })
        .collect()
}

/// An error with its causes, as one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

impl Db {
    /// Enqueues a group on a pooled connection. Should the statement fail
    /// for something in the data rather than the connection, each job is
    /// tried alone, so that one bad job fails alone.
    async fn enqueue_pooled(&self, jobs: &[NewJob]) -> Vec<Result<Enqueued, JournalError>> {
        let client = match self.client().await {
            Ok(c) => c,
            Err(e) => return each(jobs.len(), &e),
        };
        let stmt = match client.prepare_cached(&self.sql(writes::ENQUEUE)).await {
            Ok(stmt) => stmt,
            Err(e) => return each(jobs.len(), &pg("enqueueing")(e)),
        };
        match self.enqueue_group(&**client, &stmt, jobs).await {
            Ok(answers) => answers,
            Err(_) if jobs.len() > 1 && !client.is_closed() => {
                let mut answers = Vec::with_capacity(jobs.len());
                for job in jobs {
                    let one = std::slice::from_ref(job);
                    answers.push(match self.enqueue_group(&**client, &stmt, one).await {
                        Ok(mut a) => a.pop().unwrap_or_else(|| {
                            Err(JournalError::Corrupt("an enqueue answered no row".into()))
                        }),
                        Err(e) => Err(e),
                    });
                }
                answers
            }
            Err(e) => each(jobs.len(), &e),
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, JournalError> {
        self.pool
            .get()
            .await
            .map_err(|e| JournalError::unavailable("Postgres connection", e.to_string()))
    }

    /// `sql` with `{s}` as the schema.
    fn sql(&self, sql: &str) -> String {
        sql.replace("{s}", &self.s)
    }

    async fn query(
        &self,
        what: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, JournalError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&self.sql(sql))
            .await
            .map_err(pg(what))?;
        client.query(&stmt, params).await.map_err(pg(what))
    }

    /// Runs the claim statement `sql` in a transaction that allows only
    /// index scans in order. The plan of a prepared statement is made
    /// once, often when the table is nearly empty; then reading every
    /// pending job by bitmap and sorting them looks cheapest, and stays
    /// the plan (claims of 3 ms each on a 20,000-job queue, against well
    /// under one with the index walk). Walking the ready index in order stops after
    /// `LIMIT` rows however long the queue. The transaction's statements
    /// are sent at once (pipelined): it costs no extra round trip.
    async fn claim(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, JournalError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&self.sql(sql))
            .await
            .map_err(pg("claiming"))?;
        let (_, rows, _) = futures_util::try_join!(
            client.batch_execute(
                "BEGIN; SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off"
            ),
            client.query(&stmt, params),
            client.batch_execute("COMMIT"),
        )
        .map_err(pg("claiming"))?;
        Ok(rows)
    }

    /// `UPDATE jobs SET {set}, updated_at = now` if `lease` is the job's
    /// current lease (in `set`, `$4`... are `extra`); the updated rows.
    async fn update_held(
        &self,
        what: &'static str,
        lease: &Lease,
        set: &str,
        extra: &[&(dyn ToSql + Sync)],
        returning: &str,
    ) -> Result<Row, JournalError> {
        let sql = format!(
            "UPDATE {{s}}.jobs SET {set}, updated_at = {{s}}.now_ms()
             WHERE id = $1 AND state = 'running' AND fence = $2 AND owner = $3
             RETURNING {returning}"
        );
        let (id, fence) = (lease.job.0 as i64, lease.fence as i64);
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&id, &fence, &lease.owner];
        params.extend_from_slice(extra);
        let mut rows = self.query(what, &sql, &params).await?;
        match rows.pop() {
            Some(row) => Ok(row),
            None => Err(self.refusal(lease).await?),
        }
    }

    /// Why a write guarded by `lease` changed nothing.
    async fn refusal(&self, lease: &Lease) -> Result<JournalError, JournalError> {
        let id = lease.job.0 as i64;
        let rows = self
            .query(
                "reading a job",
                "SELECT id FROM {s}.jobs WHERE id = $1",
                &[&id],
            )
            .await?;
        Ok(if rows.is_empty() {
            JournalError::NotFound(lease.job)
        } else {
            JournalError::StaleLease {
                job: lease.job,
                fence: lease.fence,
            }
        })
    }
}

fn parse_state(s: &str) -> Result<JobState, JournalError> {
    s.parse()
        .map_err(|e: crate::job::UnknownState| JournalError::Corrupt(e.to_string()))
}

fn parse_json(what: &str, text: Option<String>) -> Result<Option<Value>, JournalError> {
    text.map(|t| {
        serde_json::from_str(&t).map_err(|e| JournalError::Corrupt(format!("{what}: {e}")))
    })
    .transpose()
}

/// A row of [`COLUMNS`].
fn job_from_row(row: &Row) -> Result<Job, JournalError> {
    let corrupt = |e: tokio_postgres::Error| JournalError::Corrupt(e.to_string());
    let state: String = row.try_get(3).map_err(corrupt)?;
    Ok(Job {
        id: JobId(row.try_get::<_, i64>(0).map_err(corrupt)? as u64),
        kind: row.try_get(1).map_err(corrupt)?,
        payload: parse_json("payload", Some(row.try_get(2).map_err(corrupt)?))?.unwrap_or_default(),
        state: parse_state(&state)?,
        attempts: row.try_get::<_, i32>(4).map_err(corrupt)? as u32,
        max_attempts: row.try_get::<_, i32>(5).map_err(corrupt)? as u32,
        checkpoint: parse_json("checkpoint", row.try_get(6).map_err(corrupt)?)?,
        result: parse_json("result", row.try_get(7).map_err(corrupt)?)?,
        last_error: row.try_get(8).map_err(corrupt)?,
        owner: row.try_get(9).map_err(corrupt)?,
        fence: row.try_get::<_, i64>(10).map_err(corrupt)? as u64,
        lease_expires_at_ms: row
            .try_get::<_, Option<i64>>(11)
            .map_err(corrupt)?
            .map(|v| v as u64),
        ready_at_ms: row.try_get::<_, i64>(12).map_err(corrupt)? as u64,
        created_at_ms: row.try_get::<_, i64>(13).map_err(corrupt)? as u64,
        updated_at_ms: row.try_get::<_, i64>(14).map_err(corrupt)? as u64,
        idempotency_key: row.try_get(15).map_err(corrupt)?,
        payload_version: row.try_get::<_, i32>(16).map_err(corrupt)? as u32,
    })
}

#[async_trait]
impl Journal for PostgresJournal {
    async fn enqueue(&self, job: NewJob) -> Result<Enqueued, JournalError> {
        crate::journal::validate(&job)?;
        self.enqueues.call(job).await
    }

    async fn claim(
        &self,
        owner: &str,
        lease: Duration,
        max: usize,
    ) -> Result<Vec<Claimed>, JournalError> {
        let lease_ms = ms(lease) as i64;
        let max = max.min(i64::MAX as usize) as i64;
        let sql = format!(
            "WITH picked AS (
                 SELECT id FROM {{s}}.jobs
                 WHERE state = 'pending' AND ready_at <= {{s}}.now_ms()
                 ORDER BY ready_at, id LIMIT $3
                 FOR UPDATE SKIP LOCKED)
             UPDATE {{s}}.jobs j SET state = 'running', owner = $1, fence = j.fence + 1,
                 attempts = j.attempts + 1, lease_expires_at = {{s}}.now_ms() + $2,
                 updated_at = {{s}}.now_ms()
             FROM picked WHERE j.id = picked.id
             RETURNING {}",
            COLUMNS
                .split(", ")
                .map(|c| format!("j.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let rows = self.db.claim(&sql, &[&owner, &lease_ms, &max]).await?;
        let mut claimed = rows
            .iter()
            .map(|row| {
                let job = job_from_row(row)?;
                let lease = Lease {
                    job: job.id,
                    owner: owner.to_owned(),
                    fence: job.fence,
                    expires_at_ms: job.lease_expires_at_ms.unwrap_or_default(),
                };
                Ok(Claimed { job, lease })
            })
            .collect::<Result<Vec<_>, JournalError>>()?;
        // RETURNING gives rows in no promised order.
        claimed.sort_by_key(|c| (c.job.ready_at_ms, c.job.id));
        Ok(claimed)
    }

    async fn renew(&self, lease: &Lease, duration: Duration) -> Result<Lease, JournalError> {
        let lease_ms = ms(duration) as i64;
        let row = self
            .db
            .update_held(
                "renewing a lease",
                lease,
                "lease_expires_at = {s}.now_ms() + $4",
                &[&lease_ms],
                "lease_expires_at",
            )
            .await?;
        Ok(Lease {
            expires_at_ms: row.get::<_, i64>(0) as u64,
            ..lease.clone()
        })
    }

    async fn checkpoint(&self, lease: &Lease, checkpoint: &Value) -> Result<(), JournalError> {
        let checkpoint = checkpoint.to_string();
        self.db
            .update_held(
                "checkpointing",
                lease,
                "checkpoint = $4",
                &[&checkpoint],
                "id",
            )
            .await
            .map(drop)
    }

    async fn complete(&self, lease: &Lease, result: Option<&Value>) -> Result<(), JournalError> {
        let result = result.map(Value::to_string);
        self.completions.call((lease.clone(), result)).await
    }

    async fn fail(
        &self,
        lease: &Lease,
        error: &str,
        retry_in: Duration,
    ) -> Result<JobState, JournalError> {
        let retry_ms = ms(retry_in) as i64;
        let row = self
            .db
            .update_held(
                "failing a job",
                lease,
                "state = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'pending' END,
                 ready_at = {s}.now_ms() + $4, last_error = $5, owner = NULL,
                 lease_expires_at = NULL",
                &[&retry_ms, &error],
                "state",
            )
            .await?;
        parse_state(&row.get::<_, String>(0))
    }

    async fn release(&self, lease: &Lease) -> Result<(), JournalError> {
        self.db
            .update_held(
                "releasing a job",
                lease,
                "state = 'pending', ready_at = {s}.now_ms(), attempts = GREATEST(attempts - 1, 0),
             owner = NULL, lease_expires_at = NULL",
                &[],
                "id",
            )
            .await
            .map(drop)
    }

    async fn reclaim_expired(&self) -> Result<usize, JournalError> {
        let rows = self
            .db
            .query(
                "reclaiming expired leases",
                "UPDATE {s}.jobs SET
                     state = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'pending' END,
                     last_error = CASE WHEN attempts >= max_attempts
                         THEN 'lease expired on the last attempt' ELSE last_error END,
                     ready_at = {s}.now_ms(), owner = NULL, lease_expires_at = NULL,
                     updated_at = {s}.now_ms()
                 WHERE state = 'running' AND lease_expires_at <= {s}.now_ms()
                 RETURNING id",
                &[],
            )
            .await?;
        Ok(rows.len())
    }

    async fn get(&self, id: JobId) -> Result<Option<Job>, JournalError> {
        let id = id.0 as i64;
        let rows = self
            .db
            .query(
                "reading a job",
                &format!("SELECT {COLUMNS} FROM {{s}}.jobs WHERE id = $1"),
                &[&id],
            )
            .await?;
        rows.first().map(job_from_row).transpose()
    }

    async fn list(
        &self,
        state: Option<JobState>,
        after: Option<JobId>,
        limit: usize,
    ) -> Result<Vec<Job>, JournalError> {
        let after = after.map_or(0, |id| id.0 as i64);
        let limit = limit.min(i64::MAX as usize) as i64;
        let rows = match state {
            Some(state) => {
                self.db
                    .query(
                        "listing jobs",
                        &format!(
                            "SELECT {COLUMNS} FROM {{s}}.jobs WHERE state = $1 AND id > $2
                         ORDER BY id LIMIT $3"
                        ),
                        &[&state.as_str(), &after, &limit],
                    )
                    .await?
            }
            None => {
                self.db
                    .query(
                        "listing jobs",
                        &format!(
                            "SELECT {COLUMNS} FROM {{s}}.jobs WHERE id > $1 ORDER BY id LIMIT $2"
                        ),
                        &[&after, &limit],
                    )
                    .await?
            }
        };
        rows.iter().map(job_from_row).collect()
    }

    async fn purge(&self, older_than: Duration, max: usize) -> Result<usize, JournalError> {
        let (older, max) = (ms(older_than) as i64, max.min(i64::MAX as usize) as i64);
        let rows = self
            .db
            .query(
                "purging old jobs",
                "DELETE FROM {s}.jobs WHERE id = ANY(ARRAY(
                     SELECT id FROM {s}.jobs
                     WHERE state IN ('completed', 'dead') AND updated_at < {s}.now_ms() - $1
                     ORDER BY id LIMIT $2))
                 RETURNING id",
                &[&older, &max],
            )
            .await?;
        Ok(rows.len())
    }

    async fn counts(&self) -> Result<StateCounts, JournalError> {
        let rows = self
            .db
            .query(
                "counting jobs",
                "SELECT state, COUNT(*) FROM {s}.jobs GROUP BY state",
                &[],
            )
            .await?;
        let mut counts = StateCounts::default();
        for row in rows {
            counts.set(
                parse_state(&row.get::<_, String>(0))?,
                row.get::<_, i64>(1) as u64,
            );
        }
        Ok(counts)
    }

    fn notices(&self) -> u64 {
        self.notices.count()
    }

    async fn wait_for_jobs(&self, seen: u64, poll: Duration) {
        self.notices.wait(seen, poll).await;
    }
}
