//! The SQLite schema and its migrations, versioned by `PRAGMA user_version`.

use rusqlite::Connection;

use crate::JournalError;

/// Each entry takes the schema from version `i` to `i + 1`, with the oldest
/// version a build must know to read it after that step (kept in `meta`
/// from step 3; builds before it refuse any later file). Append only;
/// expand before contract: a step that only adds keeps `min_reader`, so
/// the previous build reads on beside the next during an upgrade.
const MIGRATIONS: &[(&str, u32)] = &[
    (
        // 1: jobs, with the indexes the claim, the lease sweep and the listing use.
        "CREATE TABLE jobs (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        kind             TEXT    NOT NULL,
        payload          TEXT    NOT NULL,
        state            TEXT    NOT NULL
                         CHECK (state IN ('pending', 'running', 'completed', 'dead')),
        attempts         INTEGER NOT NULL DEFAULT 0,
        max_attempts     INTEGER NOT NULL,
        ready_at         INTEGER NOT NULL,
        owner            TEXT,
        fence            INTEGER NOT NULL DEFAULT 0,
        lease_expires_at INTEGER,
        checkpoint       TEXT,
        result           TEXT,
        last_error       TEXT,
        idempotency_key  TEXT UNIQUE,
        created_at       INTEGER NOT NULL,
        updated_at       INTEGER NOT NULL
    );
    CREATE INDEX jobs_ready ON jobs (ready_at, id) WHERE state = 'pending';
    CREATE INDEX jobs_lease ON jobs (lease_expires_at) WHERE state = 'running';
    CREATE INDEX jobs_state ON jobs (state, id);",
        1,
    ),
    // 2: the digest of a keyed job's kind and payload, to tell a retry from
    // a key reused for another job. Only adds (NULL for older jobs, which
    // count as the same job).
    ("ALTER TABLE jobs ADD COLUMN payload_digest INTEGER;", 1),
    // 3: the version of each job's payload, and the oldest build that can
    // read the file. Only adds.
    (
        "ALTER TABLE jobs ADD COLUMN payload_version INTEGER NOT NULL DEFAULT 1;
         CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);",
        1,
    ),
];

/// The schema version this build writes.
pub(super) const VERSION: u32 = MIGRATIONS.len() as u32;

/// Brings the file to [`VERSION`], each step in its own transaction. A
/// file of a later build is used as it is when its `min_reader` allows
/// this build, and refused otherwise, rather than guessed at.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), JournalError> {
    let sql_err = |e| JournalError::unavailable("migrating the SQLite journal", e);
    let current: u32 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(sql_err)?;
    if current > VERSION {
        let min_reader: Option<u32> = conn
            .query_row("SELECT value FROM meta WHERE key = 'min_reader'", [], |r| {
                r.get(0)
            })
            .ok();
        let min_reader = min_reader.unwrap_or(current);
        if min_reader <= VERSION {
            return Ok(());
        }
        return Err(JournalError::Corrupt(format!(
            "the SQLite journal has schema version {current}, which this build (version \
             {VERSION}) cannot read: it needs at least version {min_reader}"
        )));
    }
    for (i, (sql, min_reader)) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction().map_err(sql_err)?;
        tx.execute_batch(sql).map_err(sql_err)?;
        if i + 1 >= 3 {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('min_reader', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [min_reader],
            )
            .map_err(sql_err)?;
        }
        tx.pragma_update(None, "user_version", i as u32 + 1)
            .map_err(sql_err)?;
        tx.commit().map_err(sql_err)?;
    }
    Ok(())
}
