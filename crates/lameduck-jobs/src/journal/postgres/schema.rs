//! The Postgres schema and its migrations, versioned in `SCHEMA.meta`.

use deadpool_postgres::Client;

use crate::JournalError;

/// Each entry takes the schema from version `i` to `i + 1`, with the oldest
/// version a build must know to read it after that step. `{s}` is the
/// schema's quoted name. Append only; expand before contract (a step that
/// only adds keeps `min_reader`, so the previous build reads on beside the
/// next during an upgrade or a rolling deploy).
const MIGRATIONS: &[(&str, i32)] = &[
    (
        // 1: jobs, the indexes the claim, the lease sweep and the listing use,
        // and the database's clock in milliseconds (leases expire by it, so
        // instances with skewed clocks agree).
        "CREATE TABLE {s}.jobs (
        id               BIGSERIAL PRIMARY KEY,
        kind             TEXT    NOT NULL,
        payload          TEXT    NOT NULL,
        state            TEXT    NOT NULL
                         CHECK (state IN ('pending', 'running', 'completed', 'dead')),
        attempts         INTEGER NOT NULL DEFAULT 0,
        max_attempts     INTEGER NOT NULL,
        ready_at         BIGINT  NOT NULL,
        owner            TEXT,
        fence            BIGINT  NOT NULL DEFAULT 0,
        lease_expires_at BIGINT,
        checkpoint       TEXT,
        result           TEXT,
        last_error       TEXT,
        idempotency_key  TEXT UNIQUE,
        created_at       BIGINT  NOT NULL,
        updated_at       BIGINT  NOT NULL
    );
    CREATE INDEX jobs_ready ON {s}.jobs (ready_at, id) WHERE state = 'pending';
    CREATE INDEX jobs_lease ON {s}.jobs (lease_expires_at) WHERE state = 'running';
    CREATE INDEX jobs_state ON {s}.jobs (state, id);
    CREATE FUNCTION {s}.now_ms() RETURNS BIGINT LANGUAGE sql VOLATILE
        AS 'SELECT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT';",
        1,
    ),
    (
        // 2: the digest of a keyed job's kind and payload, to tell a retry
        // from a key reused for another job. Only adds.
        "ALTER TABLE {s}.jobs ADD COLUMN payload_digest BIGINT;",
        1,
    ),
    (
        // 3: the version of each job's payload. Only adds.
        "ALTER TABLE {s}.jobs ADD COLUMN payload_version INTEGER NOT NULL DEFAULT 1;",
        1,
    ),
];

/// The schema version this build writes.
pub(super) const VERSION: i32 = MIGRATIONS.len() as i32;

/// Brings `schema` (created if missing) to [`VERSION`], one step per
/// transaction under an advisory lock (instances starting at once do not
/// both apply a step). A schema of a later build is used as it is when its
/// `min_reader` allows this build, and refused otherwise.
pub(super) async fn migrate(client: &mut Client, schema: &str) -> Result<(), JournalError> {
    let q = quote(schema);
    let err = |e| JournalError::unavailable("migrating the Postgres journal", e);
    loop {
        let tx = client.transaction().await.map_err(err)?;
        tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&schema])
            .await
            .map_err(err)?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {q};
             CREATE TABLE IF NOT EXISTS {q}.meta (
                 key   TEXT    PRIMARY KEY,
                 value INTEGER NOT NULL
             );"
        ))
        .await
        .map_err(err)?;
        let read = |key: &'static str| {
            let tx = &tx;
            let q = q.clone();
            async move {
                tx.query_opt(
                    &format!("SELECT value FROM {q}.meta WHERE key = $1"),
                    &[&key],
                )
                .await
                .map(|row| row.map(|r| r.get::<_, i32>(0)))
            }
        };
        let current = read("version").await.map_err(err)?.unwrap_or(0);
        if current > VERSION {
            let min_reader = read("min_reader").await.map_err(err)?.unwrap_or(current);
            if min_reader <= VERSION {
                return Ok(());
            }
            return Err(JournalError::Corrupt(format!(
                "the Postgres journal in schema {schema:?} has version {current}, which this \
                 build (version {VERSION}) cannot read: it needs at least version {min_reader}"
            )));
        }
        let Some((step, min_reader)) = MIGRATIONS.get(current as usize) else {
            return Ok(());
        };
        tx.batch_execute(&step.replace("{s}", &q))
            .await
            .map_err(err)?;
        for (key, value) in [("version", current + 1), ("min_reader", *min_reader)] {
            tx.execute(
                &format!(
                    "INSERT INTO {q}.meta (key, value) VALUES ($1, $2)
                     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
                ),
                &[&key, &value],
            )
            .await
            .map_err(err)?;
        }
        tx.commit().await.map_err(err)?;
    }
}

/// `name` as a quoted SQL identifier.
pub(super) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
