//! The Redis backend, for many instances sharing one queue.
//!
//! Key layout, under a configurable prefix `P` (default `lameduck`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:job:<id>` | HASH | kind, payload, state, attempts, max_attempts, fence, owner, lease_expires_at, ready_at, checkpoint, result, last_error, idempotency_key, payload_digest (of a keyed job's kind and payload), payload_version, created_at, updated_at |
//! | `P:jobs:layout` | HASH | `version` of this key layout, and `min_reader`, the oldest build's layout that can read it |
//! | `P:ready` | ZSET | pending job ids, scored by ready-at (ms) |
//! | `P:leases` | ZSET | running job ids, scored by lease expiry (ms) |
//! | `P:state:<state>` | ZSET | job ids in that state, scored by id (counts and paging) |
//! | `P:idem:<key>` | STRING | the job id an idempotency key was first used for |
//! | `P:seq` | STRING | the last job id given out |
//!
//! Every write is one Lua script, so it is atomic; times come from the
//! server's `TIME`. The scripts compute key names, so Redis Cluster is not
//! supported (one primary, with replicas or Sentinel, is).

use std::{collections::HashMap, fmt, time::Duration};

use async_trait::async_trait;
use redis::{
    AsyncCommands, Client, Script,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use serde_json::Value;

use crate::{
    Claimed, Enqueued, Job, JobId, JobState, Journal, JournalError, Lease, NewJob, StateCounts,
    job::ms,
};

/// Settings of a [`RedisJournal`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RedisConfig {
    /// `redis://HOST:PORT[/DB]`.
    pub url: String,
    /// Prefix of every key (instances that share work share it).
    pub prefix: String,
    /// Longest wait for one operation, connecting included; past it the
    /// operation fails as unavailable.
    pub timeout: Duration,
}

impl RedisConfig {
    /// The prefix used when none is given.
    pub const DEFAULT_PREFIX: &'static str = "lameduck";

    /// Defaults for the server at `url`: prefix `lameduck`, 2 s timeout.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: Self::DEFAULT_PREFIX.to_owned(),
            timeout: Duration::from_secs(2),
        }
    }

    /// Sets the key prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }
}

/// The key layout this build writes (`P:jobs:layout`). Raise it with a
/// change a build of this layout could misread, and set `min_reader` to
/// it only once the change is one older builds cannot read.
const LAYOUT_VERSION: u32 = 1;

struct Scripts {
    enqueue: Script,
    claim: Script,
    renew: Script,
    checkpoint: Script,
    complete: Script,
    fail: Script,
    release: Script,
    reclaim: Script,
    purge: Script,
}

impl Scripts {
    fn load() -> Self {
        let with_common =
            |body: &str| Script::new(&format!("{}\n{body}", include_str!("scripts/common.lua")));
        Self {
            enqueue: with_common(include_str!("scripts/enqueue.lua")),
            claim: with_common(include_str!("scripts/claim.lua")),
            renew: with_common(include_str!("scripts/renew.lua")),
            checkpoint: with_common(include_str!("scripts/checkpoint.lua")),
            complete: with_common(include_str!("scripts/complete.lua")),
            fail: with_common(include_str!("scripts/fail.lua")),
            release: with_common(include_str!("scripts/release.lua")),
            reclaim: with_common(include_str!("scripts/reclaim.lua")),
            purge: with_common(include_str!("scripts/purge.lua")),
        }
    }
}

/// A [`Journal`] in Redis, shared by every instance that uses the same
/// server and prefix.
///
/// "Durable" means acknowledged by the Redis server: how much survives a
/// crash of Redis itself is Redis's persistence setting (`appendonly yes`
/// with `appendfsync always` for no loss; `everysec` may lose the last
/// second).
///
/// # Examples
///
/// ```no_run
/// use lameduck_jobs::{Journal, NewJob, RedisConfig, RedisJournal};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let journal = RedisJournal::connect(RedisConfig::new("redis://127.0.0.1:6379").prefix("shop"))?;
/// let queued = journal.enqueue(NewJob::new("invoice", serde_json::json!({"order": 7}))).await?;
/// println!("job {} accepted", queued.id);
/// # Ok(()) }
/// ```
pub struct RedisJournal {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    scripts: Scripts,
}

impl fmt::Debug for RedisJournal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisJournal")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisJournal {
    /// Makes a journal for `config`. Connects on first use (and reconnects
    /// after errors), so this only fails on a malformed URL or prefix. Must
    /// be called within a Tokio runtime.
    pub fn connect(config: RedisConfig) -> Result<Self, JournalError> {
        if config.prefix.is_empty() {
            return Err(JournalError::Invalid("empty Redis key prefix".into()));
        }
        let client = Client::open(config.url.as_str())
            .map_err(|e| JournalError::Invalid(format!("Redis URL {:?}: {e}", config.url)))?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_lazy_with_config(client, manager)
            .map_err(|e| JournalError::unavailable("creating the Redis connection", e))?;
        Ok(Self {
            conn,
            prefix: config.prefix,
            timeout: config.timeout,
            scripts: Scripts::load(),
        })
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Checks that this build can read the key layout under the prefix,
    /// recording its own when the prefix is new: a process of a later
    /// build may have changed it during a rolling deploy. [`open`](crate::open)
    /// calls it, so that a service refuses to start rather than misread.
    ///
    /// # Errors
    ///
    /// [`JournalError::Corrupt`] for a layout this build cannot read,
    /// [`JournalError::Unavailable`] when Redis does not answer.
    pub async fn check_layout(&self) -> Result<(), JournalError> {
        let key = format!("{}:jobs:layout", self.prefix);
        let script = Script::new(
            "redis.call('HSETNX', KEYS[1], 'version', ARGV[1])
             redis.call('HSETNX', KEYS[1], 'min_reader', ARGV[1])
             return redis.call('HMGET', KEYS[1], 'version', 'min_reader')",
        );
        let mut invoke = script.prepare_invoke();
        invoke.key(&key).arg(LAYOUT_VERSION);
        let mut conn = self.conn.clone();
        let (version, min_reader): (Option<u32>, Option<u32>) = self
            .bounded("reading the key layout", invoke.invoke_async(&mut conn))
            .await?;
        let (Some(version), Some(min_reader)) = (version, min_reader) else {
            return Err(JournalError::Corrupt(format!(
                "{key} is not a layout record"
            )));
        };
        if min_reader > LAYOUT_VERSION {
            return Err(JournalError::Corrupt(format!(
                "the jobs under Redis prefix {:?} have key layout {version}, which this build \
                 (layout {LAYOUT_VERSION}) cannot read: it needs at least layout {min_reader}",
                self.prefix
            )));
        }
        Ok(())
    }

    /// Runs `fut` with the journal's timeout, mapping errors to
    /// [`JournalError::Unavailable`].
    async fn bounded<T>(
        &self,
        what: &'static str,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, JournalError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(JournalError::unavailable(format!("Redis {what}"), e)),
            Err(_) => Err(JournalError::unavailable(
                format!("Redis {what}"),
                format!("no answer within {:?}", self.timeout),
            )),
        }
    }

    /// Runs a lease-guarded script; maps its status to a result.
    async fn guarded(
        &self,
        what: &'static str,
        script: &Script,
        lease: &Lease,
        extra: &[String],
    ) -> Result<String, JournalError> {
        let mut inv = script.prepare_invoke();
        inv.arg(&self.prefix)
            .arg(lease.job.0)
            .arg(&lease.owner)
            .arg(lease.fence);
        for a in extra {
            inv.arg(a);
        }
        let mut conn = self.conn.clone();
        let status: String = self.bounded(what, inv.invoke_async(&mut conn)).await?;
        match status.as_str() {
            "stale" => Err(JournalError::StaleLease {
                job: lease.job,
                fence: lease.fence,
            }),
            "missing" => Err(JournalError::NotFound(lease.job)),
            s if s == "ok" || s.starts_with("ok:") => Ok(s
                .trim_start_matches("ok")
                .trim_start_matches(':')
                .to_owned()),
            other => Err(JournalError::Corrupt(format!(
                "Redis {what} answered {other:?}"
            ))),
        }
    }

    fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.prefix)
    }

    async fn load(&self, ids: &[u64]) -> Result<Vec<Job>, JournalError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.hgetall(self.key(&format!("job:{id}")));
        }
        let mut conn = self.conn.clone();
        let maps: Vec<HashMap<String, String>> =
            self.bounded("read", pipe.query_async(&mut conn)).await?;
        ids.iter()
            .zip(maps)
            .filter(|(_, m)| !m.is_empty())
            .map(|(id, m)| job_from_map(JobId(*id), &m))
            .collect()
    }
}

#[async_trait]
impl Journal for RedisJournal {
    async fn enqueue(&self, job: NewJob) -> Result<Enqueued, JournalError> {
        crate::journal::validate(&job)?;
        let mut inv = self.scripts.enqueue.prepare_invoke();
        inv.arg(&self.prefix)
            .arg(&job.kind)
            .arg(job.payload.to_string())
            .arg(job.max_attempts)
            .arg(ms(job.delay))
            .arg(job.idempotency_key.as_deref().unwrap_or(""))
            .arg(crate::journal::payload_digest(&job).to_string())
            .arg(job.payload_version);
        let mut conn = self.conn.clone();
        let (id, created): (u64, i64) =
            self.bounded("enqueue", inv.invoke_async(&mut conn)).await?;
        if created == 2 {
            return Err(JournalError::KeyConflict { first: JobId(id) });
        }
        Ok(Enqueued {
            id: JobId(id),
            created: created == 1,
        })
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
        let mut inv = self.scripts.claim.prepare_invoke();
        inv.arg(&self.prefix).arg(owner).arg(ms(lease)).arg(max);
        let mut conn = self.conn.clone();
        let json: String = self.bounded("claim", inv.invoke_async(&mut conn)).await?;
        let maps: Vec<HashMap<String, String>> = serde_json::from_str(&json)
            .map_err(|e| JournalError::Corrupt(format!("Redis claim answer: {e}")))?;
        maps.iter()
            .map(|m| {
                let id = field::<u64>(m, "id")?;
                let job = job_from_map(JobId(id), m)?;
                let lease = Lease {
                    job: job.id,
                    owner: owner.to_owned(),
                    fence: job.fence,
                    expires_at_ms: job.lease_expires_at_ms.unwrap_or_default(),
                };
                Ok(Claimed { job, lease })
            })
            .collect()
    }

    async fn renew(&self, lease: &Lease, duration: Duration) -> Result<Lease, JournalError> {
        let out = self
            .guarded(
                "renew",
                &self.scripts.renew,
                lease,
                &[ms(duration).to_string()],
            )
            .await?;
        let expires_at_ms = out
            .parse()
            .map_err(|_| JournalError::Corrupt(format!("Redis renew answered {out:?}")))?;
        Ok(Lease {
            expires_at_ms,
            ..lease.clone()
        })
    }

    async fn checkpoint(&self, lease: &Lease, checkpoint: &Value) -> Result<(), JournalError> {
        self.guarded(
            "checkpoint",
            &self.scripts.checkpoint,
            lease,
            &[checkpoint.to_string()],
        )
        .await
        .map(drop)
    }

    async fn complete(&self, lease: &Lease, result: Option<&Value>) -> Result<(), JournalError> {
        let result = result.map(Value::to_string).unwrap_or_default();
        self.guarded("complete", &self.scripts.complete, lease, &[result])
            .await
            .map(drop)
    }

    async fn fail(
        &self,
        lease: &Lease,
        error: &str,
        retry_in: Duration,
    ) -> Result<JobState, JournalError> {
        let out = self
            .guarded(
                "fail",
                &self.scripts.fail,
                lease,
                &[error.to_owned(), ms(retry_in).to_string()],
            )
            .await?;
        out.parse()
            .map_err(|e: crate::job::UnknownState| JournalError::Corrupt(e.to_string()))
    }

    async fn release(&self, lease: &Lease) -> Result<(), JournalError> {
        self.guarded("release", &self.scripts.release, lease, &[])
            .await
            .map(drop)
    }

    async fn reclaim_expired(&self) -> Result<usize, JournalError> {
        let mut inv = self.scripts.reclaim.prepare_invoke();
        inv.arg(&self.prefix);
        let mut conn = self.conn.clone();
        self.bounded("reclaim", inv.invoke_async(&mut conn)).await
    }

    async fn get(&self, id: JobId) -> Result<Option<Job>, JournalError> {
        Ok(self.load(&[id.0]).await?.pop())
    }

    async fn list(
        &self,
        state: Option<JobState>,
        after: Option<JobId>,
        limit: usize,
    ) -> Result<Vec<Job>, JournalError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let after = after.map_or(0, |id| id.0);
        let mut conn = self.conn.clone();
        let ids: Vec<u64> = match state {
            Some(state) => {
                let key = self.key(&format!("state:{state}"));
                let min = format!("({after}");
                self.bounded(
                    "list",
                    conn.zrangebyscore_limit(key, min, "+inf", 0, limit as isize),
                )
                .await?
            }
            // Ids are handed out in order and jobs are never deleted, so
            // the next page is the next ids.
            None => {
                let last: Option<u64> = self.bounded("list", conn.get(self.key("seq"))).await?;
                let last = last.unwrap_or(0);
                let end = last.min(after.saturating_add(limit as u64));
                (after + 1..=end).collect()
            }
        };
        self.load(&ids).await
    }

    async fn purge(&self, older_than: Duration, max: usize) -> Result<usize, JournalError> {
        if max == 0 {
            return Ok(0);
        }
        let mut inv = self.scripts.purge.prepare_invoke();
        inv.arg(&self.prefix).arg(ms(older_than)).arg(max);
        let mut conn = self.conn.clone();
        self.bounded("purge", inv.invoke_async(&mut conn)).await
    }

    async fn counts(&self) -> Result<StateCounts, JournalError> {
        let mut pipe = redis::pipe();
        for state in JobState::ALL {
            pipe.zcard(self.key(&format!("state:{state}")));
        }
        let mut conn = self.conn.clone();
        let ns: Vec<u64> = self.bounded("counts", pipe.query_async(&mut conn)).await?;
        let mut counts = StateCounts::default();
        for (state, n) in JobState::ALL.into_iter().zip(ns) {
            counts.set(state, n);
        }
        Ok(counts)
    }
}

fn field<T: std::str::FromStr>(m: &HashMap<String, String>, name: &str) -> Result<T, JournalError> {
    m.get(name)
        .ok_or_else(|| JournalError::Corrupt(format!("job hash has no {name}")))?
        .parse()
        .map_err(|_| JournalError::Corrupt(format!("job hash field {name} is not a number")))
}

fn opt_field<T: std::str::FromStr>(
    m: &HashMap<String, String>,
    name: &str,
) -> Result<Option<T>, JournalError> {
    m.contains_key(name).then(|| field(m, name)).transpose()
}

fn json_field(m: &HashMap<String, String>, name: &str) -> Result<Option<Value>, JournalError> {
    m.get(name)
        .map(|t| {
            serde_json::from_str(t).map_err(|e| JournalError::Corrupt(format!("job {name}: {e}")))
        })
        .transpose()
}

fn job_from_map(id: JobId, m: &HashMap<String, String>) -> Result<Job, JournalError> {
    let state = m
        .get("state")
        .ok_or_else(|| JournalError::Corrupt(format!("job {id} has no state")))?;
    Ok(Job {
        id,
        kind: m.get("kind").cloned().unwrap_or_default(),
        payload: json_field(m, "payload")?.unwrap_or_default(),
        state: state
            .parse()
            .map_err(|e: crate::job::UnknownState| JournalError::Corrupt(e.to_string()))?,
        attempts: field(m, "attempts")?,
        max_attempts: field(m, "max_attempts")?,
        checkpoint: json_field(m, "checkpoint")?,
        result: json_field(m, "result")?,
        last_error: m.get("last_error").cloned(),
        owner: m.get("owner").cloned(),
        fence: field(m, "fence")?,
        lease_expires_at_ms: opt_field(m, "lease_expires_at")?,
        ready_at_ms: field(m, "ready_at")?,
        created_at_ms: field(m, "created_at")?,
        updated_at_ms: field(m, "updated_at")?,
        idempotency_key: m.get("idempotency_key").cloned(),
        payload_version: opt_field(m, "payload_version")?.unwrap_or(1),
    })
}
