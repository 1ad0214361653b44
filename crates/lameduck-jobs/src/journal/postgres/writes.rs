//! The writes that go in groups: enqueues and completions, many jobs to a
//! statement (arrays unnested server-side), so that a group costs one
//! round trip and one commit whatever its size.

use std::collections::HashMap;

use tokio_postgres::{GenericClient, Statement};

use super::{Db, pg};
use crate::{Enqueued, JobId, JournalError, Lease, NewJob, job::ms};

/// Inserts a group of jobs, each with an id taken beforehand (so that the
/// answer says which rows went in: a keyed job whose key is taken does
/// not), and tells idle workers once if any went in (`NOTIFY` is delivered
/// at commit). Rows go in input order, so that of two jobs of one group
/// with the same key the first wins, as it would one after the other.
pub(super) const ENQUEUE: &str = "WITH input AS MATERIALIZED (
        SELECT nextval($1::text::regclass) AS id, {s}.now_ms() AS now, t.*
        FROM unnest($2::text[], $3::text[], $4::int[], $5::bigint[], $6::text[], $7::bigint[],
                $9::int[])
            WITH ORDINALITY AS t(kind, payload, max_attempts, delay, key, digest, version, n)),
    inserted AS (
        INSERT INTO {s}.jobs (id, kind, payload, state, max_attempts, ready_at,
            idempotency_key, created_at, updated_at, payload_digest, payload_version)
        SELECT id, kind, payload, 'pending', max_attempts, now + delay, key, now, now, digest,
            version
        FROM input ORDER BY n
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING id),
    notified AS (SELECT pg_notify($8, '') FROM (SELECT 1 FROM inserted LIMIT 1) AS any_row)
    SELECT input.n, input.id, inserted.id IS NOT NULL, (SELECT count(*) FROM notified)
    FROM input LEFT JOIN inserted USING (id)
    ORDER BY input.n";

/// Completes a group of jobs, each only if its lease is still the job's
/// current one; returns the ids completed.
const COMPLETE: &str = "UPDATE {s}.jobs j SET state = 'completed', result = t.result,
        owner = NULL, lease_expires_at = NULL, updated_at = {s}.now_ms()
    FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[]) AS t(id, fence, owner, result)
    WHERE j.id = t.id AND j.state = 'running' AND j.fence = t.fence AND j.owner = t.owner
    RETURNING j.id";

impl Db {
    /// Enqueues `jobs` (already validated) with `stmt` ([`ENQUEUE`] prepared
    /// on `client`),
    /// then reads the first job of every key that was taken. The outer
    /// error is the statement's: nothing of the group was written.
    pub(super) async fn enqueue_group(
        &self,
        client: &impl GenericClient,
        stmt: &Statement,
        jobs: &[NewJob],
    ) -> Result<Vec<Result<Enqueued, JournalError>>, JournalError> {
        let mut kinds = Vec::with_capacity(jobs.len());
        let mut payloads = Vec::with_capacity(jobs.len());
        let mut attempts = Vec::with_capacity(jobs.len());
        let mut delays = Vec::with_capacity(jobs.len());
        let mut keys = Vec::with_capacity(jobs.len());
        let mut digests = Vec::with_capacity(jobs.len());
        let mut versions = Vec::with_capacity(jobs.len());
        for job in jobs {
            versions.push(job.payload_version as i32);
            kinds.push(job.kind.as_str());
            payloads.push(job.payload.to_string());
            attempts.push(job.max_attempts.min(i32::MAX as u32) as i32);
            delays.push(ms(job.delay).min(i64::MAX as u64) as i64);
            keys.push(job.idempotency_key.as_deref());
            digests.push(
                job.idempotency_key
                    .as_ref()
                    .map(|_| crate::journal::payload_digest(job)),
            );
        }
        let rows = client
            .query(
                stmt,
                &[
                    &self.sequence,
                    &kinds,
                    &payloads,
                    &attempts,
                    &delays,
                    &keys,
                    &digests,
                    &self.channel,
                    &versions,
                ],
            )
            .await
            .map_err(pg("enqueueing"))?;
        if rows.len() != jobs.len() {
            return Err(JournalError::Corrupt(format!(
                "an enqueue of {} jobs answered {} rows",
                jobs.len(),
                rows.len()
            )));
        }
        let mut answers: Vec<Result<Enqueued, JournalError>> = rows
            .iter()
            .map(|row| {
                Ok(Enqueued {
                    id: JobId(row.get::<_, i64>(1) as u64),
                    created: row.get(2),
                })
            })
            .collect();
        // The keys that were taken, by another call or earlier in this
        // group: their first job, read after the insert (a key committed by
        // another transaction while it ran is visible to this statement).
        let taken: Vec<&str> = answers
            .iter()
            .zip(&keys)
            .filter(|(a, _)| matches!(a, Ok(e) if !e.created))
            .filter_map(|(_, k)| *k)
            .collect();
        if taken.is_empty() {
            return Ok(answers);
        }
        let rows = client
            .query(
                &self.sql(
                    "SELECT idempotency_key, id, payload_digest FROM {s}.jobs
                     WHERE idempotency_key = ANY($1)",
                ),
                &[&taken],
            )
            .await
            .map_err(pg("reading idempotency keys"))?;
        let first: HashMap<String, (JobId, Option<i64>)> = rows
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    (JobId(r.get::<_, i64>(1) as u64), r.get::<_, Option<i64>>(2)),
                )
            })
            .collect();
        for (answer, (key, digest)) in answers.iter_mut().zip(keys.iter().zip(&digests)) {
            let (Ok(Enqueued { created: false, .. }), Some(key)) = (&*answer, key) else {
                continue;
            };
            *answer = match first.get(*key) {
                // Stored before digests were kept: taken as the same job.
                Some((id, Some(d))) if Some(*d) != *digest => {
                    Err(JournalError::KeyConflict { first: *id })
                }
                Some((id, _)) => Ok(Enqueued {
                    id: *id,
                    created: false,
                }),
                // Purged between the insert and the read: the caller may
                // try again, and will then create the job.
                None => Err(JournalError::unavailable(
                    "reading an idempotency key",
                    "the first job with this key was just purged; try again",
                )),
            };
        }
        Ok(answers)
    }

    /// Completes every `(lease, result)` whose lease holds, in one
    /// statement; a lease that does not gets the reason it was refused.
    pub(super) async fn complete_group(
        &self,
        done: &[(Lease, Option<String>)],
    ) -> Result<Vec<Result<(), JournalError>>, JournalError> {
        let ids: Vec<i64> = done.iter().map(|(l, _)| l.job.0 as i64).collect();
        let fences: Vec<i64> = done.iter().map(|(l, _)| l.fence as i64).collect();
        let owners: Vec<&str> = done.iter().map(|(l, _)| l.owner.as_str()).collect();
        let results: Vec<Option<&str>> = done.iter().map(|(_, r)| r.as_deref()).collect();
        let rows = self
            .query(
                "completing jobs",
                COMPLETE,
                &[&ids, &fences, &owners, &results],
            )
            .await?;
        let completed: std::collections::HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
        let mut answers = Vec::with_capacity(done.len());
        for ((lease, _), id) in done.iter().zip(&ids) {
            answers.push(if completed.contains(id) {
                Ok(())
            } else {
                Err(self.refusal(lease).await.unwrap_or_else(|e| e))
            });
        }
        Ok(answers)
    }
}
