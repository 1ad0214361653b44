//! The job durability contract (docs/jobs.md), checked on the real binary with
//! a real SQLite file, the real Redis server and the real Postgres: jobs
//! survive a drain, a `kill -9` and a rolling deploy on every backend; bad
//! input and a dead journal never get a 202. Every wait is bounded and every
//! child is killed on drop.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    time::{Duration, Instant},
};

use lameduck_jobs::{JobId, JobState, Journal};
use lameduck_test_support::{
    Child, PostgresServer, RedisServer, database_url, get, post_json, redis_url, run_to_exit, send,
};
use nix::sys::signal::Signal::{SIGKILL, SIGTERM};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_lameduck");
const HTTP: Duration = Duration::from_secs(10);

fn sleep_job(steps: u32, step_ms: u64) -> String {
    format!(r#"{{"kind":"sleep","steps":{steps},"step_ms":{step_ms}}}"#)
}

async fn submit(addr: SocketAddr, body: &str) -> u64 {
    let res = post_json(addr, "/jobs", &[], body, HTTP)
        .await
        .expect("POST /jobs");
    assert_eq!(res.status, 202, "{}", String::from_utf8_lossy(&res.body));
    res.json()["id"].as_u64().expect("id in the 202")
}

/// Submits `n` jobs from 8 concurrent clients; returns their ids.
async fn submit_many(addrs: &[SocketAddr], n: usize, body: &str) -> Vec<u64> {
    let tasks: Vec<_> = (0..8)
        .map(|c| {
            let addrs = addrs.to_vec();
            let body = body.to_owned();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in (c..n).step_by(8) {
                    ids.push(submit(addrs[i % addrs.len()], &body).await);
                }
                ids
            })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    ids.sort_unstable();
    ids
}

async fn counts(addr: SocketAddr) -> Value {
    let res = get(addr, "/jobs/counts", HTTP)
        .await
        .expect("GET /jobs/counts");
    assert_eq!(res.status, 200);
    res.json()
}

/// Polls `/jobs/counts` until `state` reaches `n` (bounded by `limit`).
async fn wait_count(addr: SocketAddr, state: &str, n: u64, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let c = counts(addr).await;
        if c[state].as_u64() >= Some(n) {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "{state} did not reach {n} within {limit:?}: {c}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn job(addr: SocketAddr, id: u64) -> Value {
    let res = get(addr, &format!("/jobs/{id}"), HTTP)
        .await
        .expect("GET /jobs/{id}");
    assert_eq!(res.status, 200);
    res.json()
}

/// The `job.id` of a job event (logged as a string).
fn event_job(e: &Value) -> u64 {
    e["job.id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| e["job.id"].as_u64())
        .unwrap_or_else(|| panic!("no job.id in {e}"))
}

/// A journal of each backend for one test, removed afterwards: a SQLite
/// file in a temp dir, a Redis key prefix, a Postgres schema.
struct Store {
    url: String,
    _cleanup: Cleanup,
}

enum Cleanup {
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Redis(#[allow(dead_code)] RedisKeys),
    Postgres(String),
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Cleanup::Postgres(schema) = self {
            let _ = std::process::Command::new("psql")
                .arg(database_url())
                .args([
                    "-qc",
                    &format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"),
                ])
                .output();
        }
    }
}

impl Store {
    fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self {
            url: format!("sqlite:{}", dir.path().join("jobs.db").display()),
            _cleanup: Cleanup::Dir(dir),
        }
    }

    fn redis(name: &str) -> Self {
        let keys = RedisKeys {
            prefix: format!("lameduck-{name}-{}", std::process::id()),
        };
        Self {
            url: format!("{}?prefix={}", redis_url(), keys.prefix),
            _cleanup: Cleanup::Redis(keys),
        }
    }

    fn postgres(name: &str) -> Self {
        let schema = format!("lameduck_{name}_{}", std::process::id());
        Self {
            url: format!("{}?schema={schema}", database_url()),
            _cleanup: Cleanup::Postgres(schema),
        }
    }

    /// The journal, opened as another process would.
    async fn open(&self) -> std::sync::Arc<dyn Journal> {
        lameduck_jobs::open(&self.url).await.unwrap()
    }
}

/// A journal that a later build has changed in a way this one cannot read
/// (its schema's `min_reader`, or the Redis key layout's, is above this
/// build's): `serve` refuses to start, exits 1 and says why, on every
/// backend, rather than misread the jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_journal_it_cannot_read() {
    let stores = [
        Store::sqlite(),
        Store::redis("unreadable"),
        Store::postgres("unreadable"),
    ];
    for store in &stores {
        drop(store.open().await);
        if let Some(path) = store.url.strip_prefix("sqlite:") {
            let conn = rusqlite::Connection::open(path).unwrap();
            conn.execute_batch(
                "UPDATE meta SET value = 99 WHERE key = 'min_reader'; PRAGMA user_version = 99;",
            )
            .unwrap();
        } else if let Some((url, prefix)) = store.url.split_once("?prefix=") {
            let client = redis::Client::open(url).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let _: () = redis::cmd("HSET")
                .arg(format!("{prefix}:jobs:layout"))
                .arg("version")
                .arg(99)
                .arg("min_reader")
                .arg(99)
                .query_async(&mut conn)
                .await
                .unwrap();
        } else {
            let (url, schema) = store.url.split_once("?schema=").unwrap();
            let (client, conn) =
                lameduck_jobs::tokio_postgres::connect(url, lameduck_jobs::tokio_postgres::NoTls)
                    .await
                    .unwrap();
            tokio::spawn(conn);
            client
                .batch_execute(&format!(
                    "UPDATE \"{schema}\".meta SET value = 99 WHERE key IN ('version', 'min_reader')"
                ))
                .await
                .unwrap();
        }
        let mut serve = std::process::Command::new(BIN);
        serve
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .args(["--journal", &store.url]);
        let (status, stderr) = run_to_exit(serve, Duration::from_secs(20));
        assert_eq!(status.code(), Some(1), "{}: {stderr}", store.url);
        assert!(stderr.contains("cannot read"), "{}: {stderr}", store.url);
        assert!(stderr.contains("99"), "{}: {stderr}", store.url);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_releases_and_restart_resumes_on_sqlite() {
    drain_releases_jobs_with_checkpoints_and_restart_resumes_them(Store::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_releases_and_restart_resumes_on_postgres() {
    drain_releases_jobs_with_checkpoints_and_restart_resumes_them(Store::postgres("drain")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_releases_and_restart_resumes_on_redis() {
    drain_releases_jobs_with_checkpoints_and_restart_resumes_them(Store::redis("drain")).await;
}

/// 20 sleep jobs (10 × 300 ms) are running; SIGTERM: each is released with
/// its checkpoint within the drain, and the process exits 0. A new process on
/// the same journal completes all 20, resuming: per job, at most steps + 1
/// step executions in total, and the steps done before the drain are kept.
async fn drain_releases_jobs_with_checkpoints_and_restart_resumes_them(store: Store) {
    let journal = store.url.clone();
    let args = ["--journal", &journal, "--jobs-concurrency", "32"];

    let mut first = Child::serve(BIN, &args);
    let ids = submit_many(&[first.addr], 20, &sleep_job(10, 300)).await;
    // Every job has finished at least one step (and checkpointed it).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stepped: HashSet<u64> = first.events("job.step").iter().map(event_job).collect();
        if stepped.len() == 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "jobs did not start: {:#?}",
            first.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.signal(SIGTERM);
    let status = first.expect_exit(Duration::from_secs(30));
    assert_eq!(
        status.code(),
        Some(0),
        "released jobs are not forced; logs: {:#?}",
        first.logs()
    );
    let released: HashSet<u64> = first.events("job.released").iter().map(event_job).collect();
    assert_eq!(
        released,
        ids.iter().copied().collect(),
        "every running job is released"
    );

    // Between the two processes, the journal itself says: pending,
    // checkpointed.
    {
        let stored = store.open().await;
        for &id in &ids {
            let j = stored.get(JobId(id)).await.unwrap().unwrap();
            assert_eq!(j.state, JobState::Pending, "job {id}");
            assert_eq!(j.attempts, 0, "a drain does not use up an attempt");
            let next = j.checkpoint.as_ref().and_then(|c| c["next_step"].as_u64());
            assert!(
                next.is_some_and(|n| (1..10).contains(&n)),
                "job {id}: {:?}",
                j.checkpoint
            );
        }
    }

    let second = Child::serve(BIN, &args);
    wait_count(second.addr, "completed", 20, Duration::from_secs(60)).await;
    let mut started: HashMap<u64, usize> = HashMap::new();
    for e in first
        .events("job.step_started")
        .iter()
        .chain(&second.events("job.step_started"))
    {
        *started.entry(event_job(e)).or_default() += 1;
    }
    for &id in &ids {
        let j = job(second.addr, id).await;
        assert_eq!(j["state"], "completed");
        let log = j["result"]["log"].as_array().expect("result log");
        let steps: Vec<u64> = log.iter().map(|s| s["step"].as_u64().unwrap()).collect();
        assert_eq!(
            steps,
            (0..10).collect::<Vec<_>>(),
            "job {id}: each step once, in order"
        );
        let pids: HashSet<u64> = log.iter().map(|s| s["pid"].as_u64().unwrap()).collect();
        assert!(
            pids.contains(&u64::from(first.pid())),
            "job {id} kept its first steps"
        );
        assert!(
            pids.contains(&u64::from(second.pid())),
            "job {id} was resumed by the second"
        );
        assert!(
            started[&id] <= 11,
            "job {id} ran {} steps for 10",
            started[&id]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loses_no_job_on_sqlite() {
    crash_loses_no_job(Store::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loses_no_job_on_postgres() {
    crash_loses_no_job(Store::postgres("crash")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loses_no_job_on_redis() {
    crash_loses_no_job(Store::redis("crash")).await;
}

/// 1,000 jobs; `kill -9` while they are processed; a new process on the same
/// journal takes back the dead one's leases when they expire and completes
/// every job: none lost, none dead.
async fn crash_loses_no_job(store: Store) {
    let journal = store.url.clone();
    let args = [
        "--journal",
        &journal,
        "--jobs-concurrency",
        "16",
        "--jobs-lease",
        "2s",
    ];

    let first = Child::serve(BIN, &args);
    let ids = submit_many(&[first.addr], 1000, &sleep_job(2, 20)).await;
    assert_eq!(ids.len(), 1000);
    wait_count(first.addr, "completed", 100, Duration::from_secs(60)).await;
    first.signal(SIGKILL);
    let mut first = first;
    first.expect_exit(Duration::from_secs(10));

    let at_crash = store.open().await.counts().await.unwrap();
    assert_eq!(
        at_crash.total(),
        1000,
        "every accepted job is in the journal"
    );
    assert!(
        at_crash.completed < 1000,
        "the crash came mid-way: {at_crash:?}"
    );

    let second = Child::serve(BIN, &args);
    let done = wait_count(second.addr, "completed", 1000, Duration::from_secs(120)).await;
    assert_eq!(done["dead"], 0, "{done}");
    assert_eq!(
        done["pending"].as_u64().unwrap() + done["running"].as_u64().unwrap(),
        0
    );
    if at_crash.running > 0 {
        assert!(
            !second.events("job.reclaimed").is_empty(),
            "the crashed process's leases were taken back"
        );
    }
}

/// Deletes a test's Redis keys, whatever happens.
struct RedisKeys {
    prefix: String,
}

impl Drop for RedisKeys {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(redis_url()) else {
            return;
        };
        let Ok(mut conn) = client.get_connection() else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.prefix))
            .query(&mut conn)
            .unwrap_or_default();
        for chunk in keys.chunks(500) {
            let _: Result<(), _> = redis::cmd("DEL").arg(chunk).query(&mut conn);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_deploy_on_redis_hands_jobs_over() {
    rolling_deploy_hands_jobs_over(Store::redis("roll")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_deploy_on_postgres_hands_jobs_over() {
    rolling_deploy_hands_jobs_over(Store::postgres("roll")).await;
}

/// Two instances on one journal share 500 jobs; instance A drains while B
/// runs. A's running jobs are released and B takes them at once (the lease
/// is 120 s, longer than the test may take, so waiting for expiry would
/// fail it); all 500 complete; and no job's steps ever ran in two processes
/// at overlapping times.
async fn rolling_deploy_hands_jobs_over(store: Store) {
    let journal = store.url.clone();
    let args = [
        "--journal",
        &journal,
        "--jobs-concurrency",
        "16",
        "--jobs-lease",
        "120s",
    ];
    let mut a = Child::serve(BIN, &args);
    let b = Child::serve(BIN, &args);

    let ids = submit_many(&[a.addr, b.addr], 500, &sleep_job(3, 50)).await;
    assert_eq!(ids.len(), 500);
    wait_count(b.addr, "completed", 100, Duration::from_secs(60)).await;
    a.signal(SIGTERM);
    assert_eq!(a.expect_exit(Duration::from_secs(30)).code(), Some(0));
    let released: HashSet<u64> = a.events("job.released").iter().map(event_job).collect();
    assert!(
        !released.is_empty(),
        "A held running jobs when it drained: {:#?}",
        a.logs()
    );

    let done = wait_count(b.addr, "completed", 500, Duration::from_secs(60)).await;
    assert_eq!(done["dead"], 0);
    for &id in &released {
        let j = job(b.addr, id).await;
        assert_eq!(j["state"], "completed");
        let steps: Vec<u64> = j["result"]["log"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["step"].as_u64().unwrap())
            .collect();
        assert_eq!(steps, vec![0, 1, 2], "job {id} resumed, each step once");
    }

    // Every step execution, finished or interrupted, from both processes:
    // per job, intervals from different processes never overlap.
    let mut runs: BTreeMap<u64, Vec<(u64, u64, u64)>> = BTreeMap::new();
    for child in [&a, &b] {
        for name in ["job.step", "job.step_interrupted"] {
            for e in child.events(name) {
                let (pid, start, end) = (
                    e["pid"].as_u64().unwrap(),
                    e["start_ms"].as_u64().unwrap(),
                    e["end_ms"].as_u64().unwrap(),
                );
                runs.entry(event_job(&e))
                    .or_default()
                    .push((pid, start, end));
            }
        }
    }
    assert_eq!(runs.len(), 500, "every job ran steps");
    let mut both = 0;
    for (id, mut r) in runs {
        r.sort_by_key(|&(_, start, _)| start);
        let pids: HashSet<u64> = r.iter().map(|&(pid, _, _)| pid).collect();
        both += usize::from(pids.len() > 1);
        for w in r.windows(2) {
            let ((p1, _, end1), (p2, start2, _)) = (w[0], w[1]);
            assert!(
                p1 == p2 || end1 <= start2,
                "job {id}: pid {p1} until {end1} overlaps pid {p2} from {start2}"
            );
        }
    }
    assert!(both > 0, "some jobs ran in both processes (handed over)");
}

/// Bad requests get a 4xx JSON error and write nothing to the journal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_job_requests_are_refused_and_write_nothing() {
    let server = Child::serve(BIN, &[]);
    let addr = server.addr;
    let json = [("Content-Type", "application/json")];
    let long_key = "k".repeat(300);
    // (what, headers, body, expected status)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u16);
    let cases: Vec<Case> = vec![
        ("malformed JSON", json.to_vec(), b"{\"kind\":".to_vec(), 400),
        ("not an object", json.to_vec(), b"[1,2]".to_vec(), 400),
        (
            "unknown kind",
            json.to_vec(),
            br#"{"kind":"mine","steps":1,"step_ms":1}"#.to_vec(),
            400,
        ),
        (
            "no kind",
            json.to_vec(),
            br#"{"steps":1,"step_ms":1}"#.to_vec(),
            400,
        ),
        (
            "negative steps",
            json.to_vec(),
            br#"{"kind":"sleep","steps":-1,"step_ms":1}"#.to_vec(),
            400,
        ),
        (
            "zero steps",
            json.to_vec(),
            br#"{"kind":"sleep","steps":0,"step_ms":1}"#.to_vec(),
            400,
        ),
        (
            "huge steps",
            json.to_vec(),
            br#"{"kind":"sleep","steps":99999999999,"step_ms":1}"#.to_vec(),
            400,
        ),
        (
            "huge step_ms",
            json.to_vec(),
            br#"{"kind":"sleep","steps":1,"step_ms":3600001}"#.to_vec(),
            400,
        ),
        (
            "float",
            json.to_vec(),
            br#"{"kind":"sleep","steps":1.5,"step_ms":1}"#.to_vec(),
            400,
        ),
        (
            "extra field",
            json.to_vec(),
            br#"{"kind":"sleep","steps":1,"step_ms":1,"x":1}"#.to_vec(),
            400,
        ),
        ("empty body", json.to_vec(), Vec::new(), 400),
        (
            "wrong content type",
            vec![("Content-Type", "text/plain")],
            sleep_job(1, 1).into_bytes(),
            415,
        ),
        ("no content type", vec![], sleep_job(1, 1).into_bytes(), 415),
        ("oversized body", json.to_vec(), vec![b' '; 100 * 1024], 413),
        (
            "bad idempotency key",
            vec![
                ("Content-Type", "application/json"),
                ("Idempotency-Key", &long_key),
            ],
            sleep_job(1, 1).into_bytes(),
            400,
        ),
    ];
    for (what, headers, body, status) in cases {
        let res = send(addr, "POST", "/jobs", &headers, &body, HTTP)
            .await
            .expect(what);
        assert_eq!(
            res.status,
            status,
            "{what}: {}",
            String::from_utf8_lossy(&res.body)
        );
        assert!(res.json()["error"].is_string(), "{what}: a JSON error");
    }
    for (path, status) in [
        ("/jobs/abc", 400),
        ("/jobs/-1", 400),
        ("/jobs/123456", 404),
        ("/jobs?state=done", 400),
        ("/jobs?limit=0", 400),
        ("/jobs?limit=100000", 400),
        ("/jobs?after=x", 400),
    ] {
        let res = get(addr, path, HTTP).await.unwrap();
        assert_eq!(res.status, status, "{path}");
        assert!(res.json()["error"].is_string(), "{path}: a JSON error");
    }
    let c = counts(addr).await;
    assert_eq!(
        c,
        serde_json::json!({"pending":0,"running":0,"completed":0,"dead":0})
    );

    // The same key twice: one job.
    let key = [("Idempotency-Key", "order-1")];
    let one = post_json(addr, "/jobs", &key, &sleep_job(1, 1), HTTP)
        .await
        .unwrap();
    let two = post_json(addr, "/jobs", &key, &sleep_job(1, 1), HTTP)
        .await
        .unwrap();
    assert_eq!((one.status, two.status), (202, 202));
    assert_eq!(one.json()["id"], two.json()["id"]);
    assert_eq!(two.json()["created"], false);
    // The same key for another job: 422, naming the first, nothing stored.
    let other = post_json(addr, "/jobs", &key, &sleep_job(2, 1), HTTP)
        .await
        .unwrap();
    assert_eq!(
        other.status,
        422,
        "{}",
        String::from_utf8_lossy(&other.body)
    );
    assert_eq!(other.json()["job"], one.json()["id"]);
    assert!(other.json()["error"].is_string());
    let listed = get(addr, "/jobs", HTTP).await.unwrap().json();
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 1);
}

/// With Redis gone, a submission gets 503 with Retry-After, never 202, and
/// the service keeps serving its other routes; when Redis is back, jobs are
/// accepted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_down_means_503_never_202() {
    let mut redis = RedisServer::start();
    let journal = redis.url();
    let server = Child::serve(BIN, &["--journal", &journal]);
    let addr = server.addr;
    submit(addr, &sleep_job(1, 1)).await;

    tokio::task::block_in_place(|| redis.stop());
    for _ in 0..3 {
        let res = post_json(addr, "/jobs", &[], &sleep_job(1, 1), HTTP)
            .await
            .unwrap();
        assert_eq!(res.status, 503, "{}", String::from_utf8_lossy(&res.body));
        assert!(res.header("retry-after").is_some());
        assert!(res.json()["error"].is_string());
        assert_eq!(get(addr, "/ping", HTTP).await.unwrap().status, 200);
        assert_eq!(get(addr, "/livez", HTTP).await.unwrap().status, 200);
        assert_eq!(get(addr, "/jobs/counts", HTTP).await.unwrap().status, 503);
    }

    // A process started while its journal is down serves, and refuses jobs.
    let orphan = Child::serve(BIN, &["--journal", &journal]);
    let res = post_json(orphan.addr, "/jobs", &[], &sleep_job(1, 1), HTTP)
        .await
        .unwrap();
    assert_eq!(res.status, 503);
    assert_eq!(get(orphan.addr, "/ping", HTTP).await.unwrap().status, 200);
    drop(orphan);

    // Redis back on the same port: accepted again (the connection is remade).
    let port = redis.addr.port();
    let _back = tokio::task::block_in_place(|| RedisServer::start_on(port));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let res = post_json(addr, "/jobs", &[], &sleep_job(1, 1), HTTP)
            .await
            .unwrap();
        if res.status == 202 {
            break;
        }
        assert_eq!(res.status, 503);
        assert!(
            Instant::now() < deadline,
            "jobs not accepted after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Retention on the binary: with `--jobs-retention 1s`, a completed job is
/// deleted at a later lease sweep (every half lease), its counts with it;
/// a pending one stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_are_deleted_after_the_retention() {
    let store = Store::sqlite();
    let args = [
        "--journal",
        &store.url,
        "--jobs-retention",
        "1s",
        "--jobs-lease",
        "2s",
    ];
    let server = Child::serve(BIN, &args);
    let addr = server.addr;
    let id = submit(addr, &sleep_job(1, 1)).await;
    wait_count(addr, "completed", 1, Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let res = get(addr, &format!("/jobs/{id}"), HTTP).await.unwrap();
        if res.status == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "job {id} never purged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(counts(addr).await["completed"], 0);
    assert!(!server.events("job.purged").is_empty());
}

/// With Postgres gone (a private cluster stopped at once, as in a crash),
/// a submission gets 503 with Retry-After, never 202, and the service keeps
/// serving its other routes; when Postgres is back on the same port and
/// data, jobs are accepted again (the pool replaces broken connections),
/// and the job accepted before is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_means_503_never_202() {
    let mut pg = tokio::task::block_in_place(PostgresServer::start);
    let journal = pg.url();
    let server = Child::serve(BIN, &["--journal", &journal]);
    let addr = server.addr;
    let first = submit(addr, &sleep_job(1, 1)).await;

    tokio::task::block_in_place(|| pg.stop());
    for _ in 0..3 {
        let res = post_json(addr, "/jobs", &[], &sleep_job(1, 1), HTTP)
            .await
            .unwrap();
        assert_eq!(res.status, 503, "{}", String::from_utf8_lossy(&res.body));
        assert!(res.header("retry-after").is_some());
        assert!(res.json()["error"].is_string());
        assert_eq!(get(addr, "/ping", HTTP).await.unwrap().status, 200);
        assert_eq!(get(addr, "/jobs/counts", HTTP).await.unwrap().status, 503);
    }

    tokio::task::block_in_place(|| pg.resume());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let res = post_json(addr, "/jobs", &[], &sleep_job(1, 1), HTTP)
            .await
            .unwrap();
        if res.status == 202 {
            break;
        }
        assert_eq!(res.status, 503);
        assert!(
            Instant::now() < deadline,
            "jobs not accepted after Postgres came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(job(addr, first).await["id"], first);
}
