//! Each journal operation as SQL, run inside the writer's transaction.
//!
//! Invariant the writer relies on: an operation writes with one statement at
//! most, and a refusal (stale lease, unknown job) is decided before or by a
//! write that changed nothing, so a refused or failed operation leaves no
//! trace in the batch it shares with others.

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::{Claimed, Enqueued, Job, JobId, JobState, JournalError, Lease, NewJob, StateCounts};

/// What a request asks of the writer.
#[derive(Debug)]
pub(super) enum Op {
    Enqueue(NewJob),
    Claim {
        owner: String,
        lease_ms: u64,
        max: usize,
    },
    Renew {
        lease: Lease,
        lease_ms: u64,
    },
    Checkpoint {
        lease: Lease,
        checkpoint: String,
    },
    Complete {
        lease: Lease,
        result: Option<String>,
    },
    Fail {
        lease: Lease,
        error: String,
        retry_ms: u64,
    },
    Release(Lease),
    Reclaim,
    Purge {
        older_ms: u64,
        max: usize,
    },
    Get(JobId),
    List {
        state: Option<JobState>,
        after: Option<JobId>,
        limit: usize,
    },
    Counts,
}

/// What the writer answers.
#[derive(Debug)]
pub(super) enum Reply {
    Enqueued(Enqueued),
    Claimed(Vec<Claimed>),
    Lease(Lease),
    Done,
    State(JobState),
    Reclaimed(usize),
    Job(Option<Box<Job>>),
    Jobs(Vec<Job>),
    Counts(StateCounts),
}

/// Why an operation did not happen: a refusal (stale lease, bad input)
/// leaves the transaction usable; a SQL error does not.
#[derive(Debug)]
pub(super) enum OpError {
    Refused(JournalError),
    Sql(rusqlite::Error),
}

impl From<rusqlite::Error> for OpError {
    fn from(e: rusqlite::Error) -> Self {
        OpError::Sql(e)
    }
}

impl From<JournalError> for OpError {
    fn from(e: JournalError) -> Self {
        OpError::Refused(e)
    }
}

type OpResult = Result<Reply, OpError>;

const COLUMNS: &str = "id, kind, payload, state, attempts, max_attempts, checkpoint, result, \
     last_error, owner, fence, lease_expires_at, ready_at, created_at, updated_at, idempotency_key, \
     payload_version";

pub(super) fn apply(conn: &Connection, op: Op, now: u64) -> OpResult {
    match op {
        Op::Enqueue(job) => enqueue(conn, job, now),
        Op::Claim {
            owner,
            lease_ms,
            max,
        } => claim(conn, &owner, lease_ms, max, now),
        Op::Renew { lease, lease_ms } => {
            let expires = now.saturating_add(lease_ms);
            update_held(
                conn,
                &lease,
                now,
                "lease_expires_at = ?5",
                params![expires as i64],
            )?;
            Ok(Reply::Lease(Lease {
                expires_at_ms: expires,
                ..lease
            }))
        }
        Op::Checkpoint { lease, checkpoint } => {
            update_held(conn, &lease, now, "checkpoint = ?5", params![checkpoint])?;
            Ok(Reply::Done)
        }
        Op::Complete { lease, result } => {
            update_held(
                conn,
                &lease,
                now,
                "state = 'completed', result = ?5, owner = NULL, lease_expires_at = NULL",
                params![result],
            )?;
            Ok(Reply::Done)
        }
        Op::Fail {
            lease,
            error,
            retry_ms,
        } => {
            let state: Option<String> = conn
                .prepare_cached(
                    "UPDATE jobs SET
                         state = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'pending' END,
                         ready_at = ?1, last_error = ?2, owner = NULL, lease_expires_at = NULL,
                         updated_at = ?3
                     WHERE id = ?4 AND state = 'running' AND fence = ?5 AND owner = ?6
                     RETURNING state",
                )?
                .query_row(
                    params![
                        now.saturating_add(retry_ms) as i64,
                        error,
                        now as i64,
                        lease.job.0 as i64,
                        lease.fence as i64,
                        lease.owner
                    ],
                    |row| row.get(0),
                )
                .optional()?;
            let Some(state) = state else {
                held(conn, &lease, 0)?;
                return Err(OpError::Refused(JournalError::StaleLease {
                    job: lease.job,
                    fence: lease.fence,
                }));
            };
            Ok(Reply::State(parse_state(&state)?))
        }
        Op::Release(lease) => {
            update_held(
                conn,
                &lease,
                now,
                "state = 'pending', ready_at = ?4, attempts = MAX(attempts - 1, 0),
                 owner = NULL, lease_expires_at = NULL",
                params![],
            )?;
            Ok(Reply::Done)
        }
        Op::Reclaim => {
            let n = conn
                .prepare_cached(
                    "UPDATE jobs INDEXED BY jobs_lease SET
                         state = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'pending' END,
                         last_error = CASE WHEN attempts >= max_attempts
                             THEN 'lease expired on the last attempt' ELSE last_error END,
                         ready_at = ?1, owner = NULL, lease_expires_at = NULL, updated_at = ?1
                     WHERE state = 'running' AND lease_expires_at <= ?1",
                )?
                .execute(params![now as i64])?;
            Ok(Reply::Reclaimed(n))
        }
        Op::Purge { older_ms, max } => {
            let n = conn
                .prepare_cached(
                    "DELETE FROM jobs WHERE id IN (
                         SELECT id FROM jobs
                         WHERE state IN ('completed', 'dead') AND updated_at < ?1
                         ORDER BY id LIMIT ?2)",
                )?
                .execute(params![
                    now.saturating_sub(older_ms) as i64,
                    max.min(i64::MAX as usize) as i64
                ])?;
            Ok(Reply::Reclaimed(n))
        }
        Op::Get(id) => {
            let job = conn
                .prepare_cached(&format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"))?
                .query_row(params![id.0 as i64], job_from_row)
                .optional()?
                .transpose()?;
            Ok(Reply::Job(job.map(Box::new)))
        }
        Op::List {
            state,
            after,
            limit,
        } => {
            let after = after.map_or(0, |id| id.0 as i64);
            let limit = limit.min(i64::MAX as usize) as i64;
            let rows = match state {
                Some(state) => conn
                    .prepare_cached(&format!(
                        "SELECT {COLUMNS} FROM jobs WHERE state = ?1 AND id > ?2 ORDER BY id LIMIT ?3"
                    ))?
                    .query_map(params![state.as_str(), after, limit], job_from_row)?
                    .collect::<Result<Vec<_>, _>>()?,
                None => conn
                    .prepare_cached(&format!(
                        "SELECT {COLUMNS} FROM jobs WHERE id > ?1 ORDER BY id LIMIT ?2"
                    ))?
                    .query_map(params![after, limit], job_from_row)?
                    .collect::<Result<Vec<_>, _>>()?,
            };
            let jobs = rows.into_iter().collect::<Result<Vec<_>, _>>()?;
            Ok(Reply::Jobs(jobs))
        }
        Op::Counts => {
            let mut counts = StateCounts::default();
            let mut stmt =
                conn.prepare_cached("SELECT state, COUNT(*) FROM jobs GROUP BY state")?;
            let rows = stmt.query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })?;
            for row in rows {
                let (state, n) = row?;
                counts.set(parse_state(&state)?, n as u64);
            }
            Ok(Reply::Counts(counts))
        }
    }
}

fn enqueue(conn: &Connection, job: NewJob, now: u64) -> OpResult {
    let digest = crate::journal::payload_digest(&job);
    if let Some(key) = &job.idempotency_key {
        let existing: Option<(i64, Option<i64>)> = conn
            .prepare_cached("SELECT id, payload_digest FROM jobs WHERE idempotency_key = ?1")?
            .query_row(params![key], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        if let Some((id, first)) = existing {
            if first.is_some_and(|first| first != digest) {
                return Err(OpError::Refused(JournalError::KeyConflict {
                    first: JobId(id as u64),
                }));
            }
            return Ok(Reply::Enqueued(Enqueued {
                id: JobId(id as u64),
                created: false,
            }));
        }
    }
    let payload = job.payload.to_string();
    let ready_at = now.saturating_add(crate::job::ms(job.delay));
    conn.prepare_cached(
        "INSERT INTO jobs (kind, payload, state, max_attempts, ready_at, idempotency_key,
             created_at, updated_at, payload_digest, payload_version)
         VALUES (?1, ?2, 'pending', ?3, ?4, ?5, ?6, ?6, ?7, ?8)",
    )?
    .execute(params![
        job.kind,
        payload,
        job.max_attempts,
        ready_at as i64,
        job.idempotency_key,
        now as i64,
        job.idempotency_key.as_ref().map(|_| digest),
        job.payload_version
    ])?;
    Ok(Reply::Enqueued(Enqueued {
        id: JobId(conn.last_insert_rowid() as u64),
        created: true,
    }))
}

/// The claim and the lease sweep name their partial index: left to itself,
/// the planner prefers `jobs_state` and sorts every pending job on each claim.
fn claim(conn: &Connection, owner: &str, lease_ms: u64, max: usize, now: u64) -> OpResult {
    let expires = now.saturating_add(lease_ms);
    let max = max.min(i64::MAX as usize) as i64;
    let rows = conn
        .prepare_cached(&format!(
            "UPDATE jobs SET state = 'running', owner = ?1, fence = fence + 1,
                 attempts = attempts + 1, lease_expires_at = ?2, updated_at = ?3
             WHERE id IN (SELECT id FROM jobs INDEXED BY jobs_ready
                          WHERE state = 'pending' AND ready_at <= ?3
                          ORDER BY ready_at, id LIMIT ?4)
             RETURNING {COLUMNS}"
        ))?
        .query_map(
            params![owner, expires as i64, now as i64, max],
            job_from_row,
        )?
        .collect::<Result<Vec<_>, _>>()?;
    let mut claimed = rows
        .into_iter()
        .map(|job| {
            let job = job?;
            let lease = Lease {
                job: job.id,
                owner: owner.to_owned(),
                fence: job.fence,
                expires_at_ms: expires,
            };
            Ok(Claimed { job, lease })
        })
        .collect::<Result<Vec<_>, JournalError>>()?;
    // RETURNING gives rows in no promised order.
    claimed.sort_by_key(|c| (c.job.ready_at_ms, c.job.id));
    Ok(Reply::Claimed(claimed))
}

/// `UPDATE jobs SET {set}, updated_at = now` if `lease` is the job's current
/// lease; refuses otherwise. In `set`, `?4` is now and `?5`... are `extra`.
fn update_held(
    conn: &Connection,
    lease: &Lease,
    now: u64,
    set: &str,
    extra: &[&dyn rusqlite::ToSql],
) -> Result<(), OpError> {
    let sql = format!(
        "UPDATE jobs SET {set}, updated_at = ?4
         WHERE id = ?1 AND state = 'running' AND fence = ?2 AND owner = ?3"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let (id, fence, now) = (lease.job.0 as i64, lease.fence as i64, now as i64);
    let mut values: Vec<&dyn rusqlite::ToSql> = vec![&id, &fence, &lease.owner, &now];
    values.extend_from_slice(extra);
    let n = stmt.execute(values.as_slice())?;
    held(conn, lease, n)
}

/// After a write guarded by the lease: refuses with the precise reason when
/// it changed nothing.
fn held(conn: &Connection, lease: &Lease, updated: usize) -> Result<(), OpError> {
    if updated > 0 {
        return Ok(());
    }
    let exists: Option<i64> = conn
        .prepare_cached("SELECT id FROM jobs WHERE id = ?1")?
        .query_row(params![lease.job.0 as i64], |row| row.get(0))
        .optional()?;
    Err(OpError::Refused(match exists {
        None => JournalError::NotFound(lease.job),
        Some(_) => JournalError::StaleLease {
            job: lease.job,
            fence: lease.fence,
        },
    }))
}

fn parse_state(s: &str) -> Result<JobState, JournalError> {
    s.parse()
        .map_err(|e: crate::job::UnknownState| JournalError::Corrupt(e.to_string()))
}

fn parse_json(what: &str, text: Option<String>) -> Result<Option<serde_json::Value>, JournalError> {
    text.map(|t| {
        serde_json::from_str(&t).map_err(|e| JournalError::Corrupt(format!("{what}: {e}")))
    })
    .transpose()
}

/// A row of [`COLUMNS`]; the outer error is SQLite's, the inner one bad data.
fn job_from_row(row: &Row<'_>) -> rusqlite::Result<Result<Job, JournalError>> {
    let id = JobId(row.get::<_, i64>(0)? as u64);
    let payload: String = row.get(2)?;
    let state: String = row.get(3)?;
    let checkpoint: Option<String> = row.get(6)?;
    let result: Option<String> = row.get(7)?;
    let build = || -> Result<Job, JournalError> {
        Ok(Job {
            id,
            kind: row.get(1).map_err(corrupt)?,
            payload: parse_json("payload", Some(payload))?.unwrap_or_default(),
            state: parse_state(&state)?,
            attempts: row.get(4).map_err(corrupt)?,
            max_attempts: row.get(5).map_err(corrupt)?,
            checkpoint: parse_json("checkpoint", checkpoint)?,
            result: parse_json("result", result)?,
            last_error: row.get(8).map_err(corrupt)?,
            owner: row.get(9).map_err(corrupt)?,
            fence: row.get::<_, i64>(10).map_err(corrupt)? as u64,
            lease_expires_at_ms: row
                .get::<_, Option<i64>>(11)
                .map_err(corrupt)?
                .map(|v| v as u64),
            ready_at_ms: row.get::<_, i64>(12).map_err(corrupt)? as u64,
            created_at_ms: row.get::<_, i64>(13).map_err(corrupt)? as u64,
            updated_at_ms: row.get::<_, i64>(14).map_err(corrupt)? as u64,
            idempotency_key: row.get(15).map_err(corrupt)?,
            payload_version: row.get(16).map_err(corrupt)?,
        })
    };
    Ok(build())
}

fn corrupt(e: rusqlite::Error) -> JournalError {
    JournalError::Corrupt(e.to_string())
}
