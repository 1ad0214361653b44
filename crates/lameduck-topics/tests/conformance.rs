//! One suite for every topic store: positions, idempotency, resumes that
//! are recovered or say they are not, live delivery with no gap and no
//! duplicate at the seam, lagging subscribers, concurrent publishers. Each
//! test runs against memory, a real SQLite file and the machine's real
//! Redis; Redis's own failures (a flush, a restore from an older
//! snapshot) run on a private `redis-server`. Every wait is bounded.

use std::{collections::HashSet, sync::Arc, time::Duration};

use futures_util::{Stream, StreamExt};
use lameduck_test_support::{RedisServer, free_port, redis_url};
use lameduck_topics::{
    Epoch, Event, Fanout, MemoryStore, NewMessage, Position, RedisStore, RedisStoreConfig, Resume,
    Retention, SqliteStore, Store, SubscribeConfig, TopicError, TopicName, Unrecoverable,
    subscribe,
};

const WAIT: Duration = Duration::from_secs(10);

/// What a store stands on, to open another store object on the same
/// data (a successor, another instance); the temp dir lives as long.
enum Backing {
    Memory,
    Sqlite(tempfile::TempDir, Retention),
    Redis(String, Retention),
}

impl Backing {
    /// Another store object on the same data, as another process would
    /// open it; none for memory.
    fn another(&self) -> Option<Arc<dyn Store>> {
        match self {
            Backing::Memory => None,
            Backing::Sqlite(dir, retention) => Some(Arc::new(
                SqliteStore::open(dir.path().join("topics.db"), *retention).unwrap(),
            )),
            Backing::Redis(prefix, retention) => Some(Arc::new(
                RedisStore::connect(
                    RedisStoreConfig::new(redis_url())
                        .prefix(prefix.clone())
                        .retention(*retention),
                )
                .unwrap(),
            )),
        }
    }
}

/// A key prefix no other test (or earlier run) uses.
fn fresh_prefix() -> String {
    format!("conformance-{:016x}", fastrand::u64(..))
}

/// A store of each kind, with `retention`: memory, a real SQLite file, the
/// real Redis of the machine (under a fresh prefix).
fn stores(retention: Retention) -> Vec<(&'static str, Arc<dyn Store>, Backing)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(dir.path().join("topics.db"), retention).unwrap();
    let redis = Backing::Redis(fresh_prefix(), retention);
    vec![
        (
            "memory",
            Arc::new(MemoryStore::new(retention)),
            Backing::Memory,
        ),
        ("sqlite", Arc::new(sqlite), Backing::Sqlite(dir, retention)),
        ("redis", redis.another().unwrap(), redis),
    ]
}

/// Publishes the numbers of `range` to `t`, one after the other, each as
/// its text; their positions.
async fn publish_numbers(
    store: &dyn Store,
    t: &TopicName,
    range: std::ops::RangeInclusive<u64>,
) -> Vec<Position> {
    let mut positions = Vec::new();
    for i in range {
        let published = store.publish(t, NewMessage::new(i.to_string())).await;
        positions.push(published.unwrap().position);
    }
    positions
}

fn topic(name: &str) -> TopicName {
    TopicName::new(name).unwrap()
}

async fn next_event(events: &mut (impl Stream<Item = Result<Event, TopicError>> + Unpin)) -> Event {
    tokio::time::timeout(WAIT, events.next())
        .await
        .expect("an event in time")
        .expect("the stream goes on")
        .expect("no store error")
}

fn payload(event: &Event) -> String {
    match event {
        Event::Message(m) => String::from_utf8(m.payload.to_vec()).unwrap(),
        other => panic!("expected a message, got {other:?}"),
    }
}

fn config() -> SubscribeConfig {
    let mut c = SubscribeConfig::default();
    c.poll = Duration::from_millis(20);
    c
}

// Offsets start at 1 and grow by one, in one epoch; the head follows.
#[tokio::test]
async fn positions_grow_by_one_in_one_epoch() {
    for (kind, store, _backing) in stores(Retention::default()) {
        let t = topic("t");
        let mut epoch = None;
        for i in 1..=5 {
            let p = store
                .publish(&t, NewMessage::new(format!("m{i}")))
                .await
                .unwrap();
            assert!(!p.duplicate, "{kind}");
            assert_eq!(p.position.offset, i, "{kind}");
            assert_eq!(
                *epoch.get_or_insert(p.position.epoch),
                p.position.epoch,
                "{kind}"
            );
        }
        let head = store.head(&t).await.unwrap();
        assert_eq!((head.first, head.last), (1, 5), "{kind}");
        // Topics are separate logs.
        let other = store
            .publish(&topic("u"), NewMessage::new("x"))
            .await
            .unwrap();
        assert_eq!(other.position.offset, 1, "{kind}");
        assert_ne!(
            Some(other.position.epoch),
            epoch,
            "{kind}: epochs are random"
        );
    }
}

// A retry with the same key is stored once and gets the first position; a
// key reused for another payload is refused; an oversized message is
// refused; neither stores anything.
#[tokio::test]
async fn idempotency_and_refusals_store_nothing() {
    for (kind, store, _backing) in stores(Retention::default()) {
        let t = topic("orders");
        let first = store
            .publish(&t, NewMessage::new("pay 5").key("k1"))
            .await
            .unwrap();
        let again = store
            .publish(&t, NewMessage::new("pay 5").key("k1"))
            .await
            .unwrap();
        assert_eq!(again.position, first.position, "{kind}");
        assert!(again.duplicate, "{kind}");
        assert!(
            matches!(
                store.publish(&t, NewMessage::new("pay 6").key("k1")).await,
                Err(TopicError::KeyConflict)
            ),
            "{kind}"
        );
        assert!(
            matches!(
                store
                    .publish(&t, NewMessage::new(vec![0u8; 64 * 1024 + 1]))
                    .await,
                Err(TopicError::TooLarge { .. })
            ),
            "{kind}"
        );
        assert_eq!(store.head(&t).await.unwrap().last, 1, "{kind}: stored once");
    }
}

// A resume after a position replays what follows it, then goes on live
// with messages published meanwhile: every one once, in order, across the
// seam between replay and live delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_resume_has_no_gap_and_no_duplicate() {
    for (kind, store, _backing) in stores(Retention::default()) {
        let t = topic("feed");
        let positions = publish_numbers(&*store, &t, 1..=50).await;
        let mut events = Box::pin(subscribe(
            store.clone(),
            t.clone(),
            Some(positions[19]),
            config(),
        ));
        let Event::Start { resume, from } = next_event(&mut events).await else {
            panic!("{kind}: no start");
        };
        assert_eq!((resume, from), (Resume::Recovered, positions[19]), "{kind}");
        // Publish the rest while the subscriber replays.
        let publisher = {
            let (store, t) = (store.clone(), t.clone());
            tokio::spawn(async move {
                publish_numbers(&*store, &t, 51..=200).await;
            })
        };
        for want in 21..=200 {
            assert_eq!(
                payload(&next_event(&mut events).await),
                want.to_string(),
                "{kind}"
            );
        }
        publisher.await.unwrap();
    }
}

// A fresh subscription starts at the head and sees only what comes after.
#[tokio::test]
async fn a_fresh_subscription_starts_at_the_head() {
    for (kind, store, _backing) in stores(Retention::default()) {
        let t = topic("live");
        store.publish(&t, NewMessage::new("old")).await.unwrap();
        let mut events = Box::pin(subscribe(store.clone(), t.clone(), None, config()));
        let Event::Start { resume, from } = next_event(&mut events).await else {
            panic!("{kind}");
        };
        assert_eq!((resume, from.offset), (Resume::Fresh, 1), "{kind}");
        store.publish(&t, NewMessage::new("new")).await.unwrap();
        assert_eq!(payload(&next_event(&mut events).await), "new", "{kind}");
    }
}

// What cannot be recovered is said, never served with a gap: a trimmed
// position, one of another epoch, one ahead of the head.
#[tokio::test]
async fn an_unrecoverable_resume_says_so() {
    for (kind, store, _backing) in stores(Retention::new(3, Duration::from_secs(3600))) {
        let t = topic("short");
        let positions = publish_numbers(&*store, &t, 1..=10).await;
        let head = store.head(&t).await.unwrap();
        assert_eq!((head.first, head.last), (8, 10), "{kind}: three kept");
        let epoch = head.epoch;
        for (since, why) in [
            (positions[1], Unrecoverable::Trimmed),
            (Position::new(Epoch::random(), 9), Unrecoverable::OtherEpoch),
            (Position::new(epoch, 15), Unrecoverable::AheadOfHead),
        ] {
            let mut events = Box::pin(subscribe(store.clone(), t.clone(), Some(since), config()));
            let Event::Start { resume, from } = next_event(&mut events).await else {
                panic!("{kind}");
            };
            assert_eq!(resume, Resume::NotRecovered(why), "{kind}: {since}");
            assert_eq!(from, Position::new(epoch, 10), "{kind}: live from the head");
        }
        // The oldest kept position still resumes.
        let mut events = Box::pin(subscribe(
            store.clone(),
            t.clone(),
            Some(positions[6]),
            config(),
        ));
        let Event::Start { resume, .. } = next_event(&mut events).await else {
            panic!("{kind}");
        };
        assert_eq!(resume, Resume::Recovered, "{kind}");
        assert_eq!(payload(&next_event(&mut events).await), "8", "{kind}");
    }
}

// A subscriber that falls behind the retained history is told it lagged,
// and its subscription ends: never a silent skip.
#[tokio::test]
async fn a_subscriber_left_behind_is_told_it_lagged() {
    for (kind, store, _backing) in stores(Retention::new(3, Duration::from_secs(3600))) {
        let t = topic("fast");
        let mut events = Box::pin(subscribe(store.clone(), t.clone(), None, config()));
        assert!(
            matches!(next_event(&mut events).await, Event::Start { .. }),
            "{kind}"
        );
        publish_numbers(&*store, &t, 1..=10).await;
        assert!(
            matches!(next_event(&mut events).await, Event::Lagged { at } if at.offset == 0),
            "{kind}"
        );
        assert!(events.next().await.is_none(), "{kind}: ends after Lagged");
    }
}

// Concurrent publishers get distinct, contiguous offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_get_one_order() {
    for (kind, store, _backing) in stores(Retention::default()) {
        let t = topic("busy");
        let tasks: Vec<_> = (0..8)
            .map(|w| {
                let (store, t) = (store.clone(), t.clone());
                tokio::spawn(async move {
                    let mut offsets = Vec::new();
                    for i in 0..40 {
                        let p = store
                            .publish(&t, NewMessage::new(format!("{w}-{i}")))
                            .await
                            .unwrap();
                        offsets.push(p.position.offset);
                    }
                    offsets
                })
            })
            .collect();
        let mut all = HashSet::new();
        for task in tasks {
            for o in task.await.unwrap() {
                assert!(all.insert(o), "{kind}: offset {o} twice");
            }
        }
        assert_eq!(all, (1..=320).collect(), "{kind}");
    }
}

// SQLite: the history survives closing and reopening the file (a restart,
// or an upgrade's successor), and two store objects on one file (the two
// processes of an upgrade) append to one log that a subscriber of either
// reads whole, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_history_survives_reopening_and_is_shared() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("topics.db");
    let t = topic("shared");
    let first = {
        let store = SqliteStore::open(&path, Retention::default()).unwrap();
        store
            .publish(&t, NewMessage::new("before"))
            .await
            .unwrap()
            .position
    };
    let a: Arc<dyn Store> = Arc::new(SqliteStore::open(&path, Retention::default()).unwrap());
    let b: Arc<dyn Store> = Arc::new(SqliteStore::open(&path, Retention::default()).unwrap());
    let mut events = Box::pin(subscribe(b.clone(), t.clone(), Some(first), config()));
    let Event::Start { resume, .. } = next_event(&mut events).await else {
        panic!("no start");
    };
    assert_eq!(resume, Resume::Recovered, "same epoch after reopening");
    let writers: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .enumerate()
        .map(|(w, store)| {
            let t = t.clone();
            tokio::spawn(async move {
                for i in 0..50 {
                    store
                        .publish(&t, NewMessage::new(format!("{w}-{i}")))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let mut seen = Vec::new();
    while seen.len() < 100 {
        match next_event(&mut events).await {
            Event::Message(m) => seen.push(m.position.offset),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        seen,
        (2..=101).collect::<Vec<_>>(),
        "one order, no gap, no duplicate"
    );
    for w in writers {
        w.await.unwrap();
    }
}

// A later build's schema that only adds (a test-only migration: a new
// column) is read and written by this build as it is, as during an
// upgrade's overlap; one that says this build can no longer read it (its
// min_reader is past this build's schema) is refused, not misread.
#[tokio::test]
async fn sqlite_reads_a_later_additive_schema_and_refuses_a_contracting_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("topics.db");
    let t = topic("evolving");
    let before = {
        let store = SqliteStore::open(&path, Retention::default()).unwrap();
        store
            .publish(&t, NewMessage::new("old"))
            .await
            .unwrap()
            .position
    };
    let conn = rusqlite::Connection::open(&path).unwrap();
    let current: u32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    conn.execute_batch("ALTER TABLE messages ADD COLUMN priority INTEGER;")
        .unwrap();
    conn.pragma_update(None, "user_version", current + 1)
        .unwrap();
    drop(conn);

    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path, Retention::default()).unwrap());
    let next = store
        .publish(&t, NewMessage::new("new"))
        .await
        .unwrap()
        .position;
    assert_eq!((next.epoch, next.offset), (before.epoch, 2));
    let mut events = Box::pin(subscribe(store.clone(), t.clone(), Some(before), config()));
    assert!(matches!(
        next_event(&mut events).await,
        Event::Start {
            resume: Resume::Recovered,
            ..
        }
    ));
    assert_eq!(payload(&next_event(&mut events).await), "new");
    drop(events);
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let kept: u32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(kept, current + 1, "not rewritten to this build's version");
    conn.execute(
        "UPDATE schema_meta SET value = ?1 WHERE key = 'min_reader'",
        [current + 1],
    )
    .unwrap();
    drop(conn);
    assert!(matches!(
        SqliteStore::open(&path, Retention::default()),
        Err(TopicError::Corrupt(_))
    ));
}

// Publisher sessions: random, 32 hex digits, known to the store that
// issued them (and, for SQLite, to another process on the same file);
// anything else is unknown.
#[tokio::test]
async fn sessions_are_issued_and_known() {
    for (kind, store, backing) in stores(Retention::default()) {
        let a = store.new_session().await.unwrap();
        let b = store.new_session().await.unwrap();
        assert_ne!(a, b, "{kind}");
        assert!(
            a.len() == 32 && a.bytes().all(|c| c.is_ascii_hexdigit()),
            "{kind}: {a}"
        );
        assert!(store.session_known(&a).await.unwrap(), "{kind}");
        for unknown in ["", "nope", &"0".repeat(32), &format!("{a}0")] {
            assert!(
                !store.session_known(unknown).await.unwrap(),
                "{kind}: {unknown:?}"
            );
        }
        if let Some(other) = backing.another() {
            assert!(
                other.session_known(&b).await.unwrap(),
                "{kind}: another process on the same store knows it"
            );
        }
    }
}

// A file written by the previous build (schema 1, before sessions) is
// brought forward on open, and keeps its history.
#[tokio::test]
async fn sqlite_migrates_a_file_of_the_previous_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("topics.db");
    let t = topic("kept");
    let before = {
        let store = SqliteStore::open(&path, Retention::default()).unwrap();
        store
            .publish(&t, NewMessage::new("old"))
            .await
            .unwrap()
            .position
    };
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("DROP TABLE sessions; DROP TABLE schema_meta; PRAGMA user_version = 1;")
        .unwrap();
    drop(conn);
    let store = SqliteStore::open(&path, Retention::default()).unwrap();
    assert_eq!(store.head(&t).await.unwrap().epoch, before.epoch);
    let session = store.new_session().await.unwrap();
    assert!(store.session_known(&session).await.unwrap());
}

// Retention by age: a publish drops what is older than `max_age`, and a
// resume from before it says it was trimmed.
#[tokio::test]
async fn messages_older_than_the_retention_age_are_dropped() {
    for (kind, store, _backing) in stores(Retention::new(1_000, Duration::from_millis(300))) {
        let t = topic("aging");
        let old = publish_numbers(&*store, &t, 1..=3).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        store.publish(&t, NewMessage::new("4")).await.unwrap();
        let head = store.head(&t).await.unwrap();
        assert_eq!((head.first, head.last), (4, 4), "{kind}");
        let mut events = Box::pin(subscribe(store.clone(), t.clone(), Some(old[0]), config()));
        let Event::Start { resume, .. } = next_event(&mut events).await else {
            panic!("{kind}");
        };
        assert_eq!(
            resume,
            Resume::NotRecovered(Unrecoverable::Trimmed),
            "{kind}"
        );
    }
}

// Redis: a publish through one instance's store wakes the subscribers of
// another instance's at once (its publish notice), not at the next poll:
// the subscriber is parked, with an hour-long poll, before each publish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_publishes_wake_the_subscribers_of_every_instance() {
    let backing = Backing::Redis(fresh_prefix(), Retention::default());
    let (a, b) = (backing.another().unwrap(), backing.another().unwrap());
    let t = topic("fleet");
    let mut slow = SubscribeConfig::default();
    slow.poll = Duration::from_secs(3600);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = {
        let events = subscribe(b.clone(), t.clone(), None, slow);
        tokio::spawn(async move {
            let mut events = Box::pin(events);
            while let Some(event) = events.next().await {
                if tx.send(event.unwrap()).is_err() {
                    break;
                }
            }
        })
    };
    let received = async |rx: &mut tokio::sync::mpsc::UnboundedReceiver<Event>, within| {
        tokio::time::timeout(within, rx.recv())
            .await
            .ok()
            .map(|e| e.expect("the reader goes on"))
    };
    assert!(matches!(
        received(&mut rx, WAIT).await,
        Some(Event::Start { .. })
    ));
    // The notice subscription is made in the background: publish until a
    // message is seen, each a new one; all of them then arrive in order.
    let mut sent = 0;
    let first = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        sent += 1;
        a.publish(&t, NewMessage::new(sent.to_string()))
            .await
            .unwrap();
        if let Some(event) = received(&mut rx, Duration::from_millis(200)).await {
            break event;
        }
        assert!(sent < 50, "no publish reached the other instance");
    };
    assert_eq!(payload(&first), "1");
    for i in 2..=sent {
        assert_eq!(
            payload(&received(&mut rx, WAIT).await.unwrap()),
            i.to_string()
        );
    }
    for i in sent + 1..=sent + 20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        a.publish(&t, NewMessage::new(i.to_string())).await.unwrap();
        let event = received(&mut rx, 5 * Duration::from_secs(1)).await;
        assert_eq!(payload(&event.expect("woken by the notice")), i.to_string());
    }
    reader.abort();
}

/// Runs one command on `redis` (a test's own server).
fn command(redis: &RedisServer, name: &str) -> String {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    redis::cmd(name).query(&mut conn).unwrap()
}

/// A Redis store on `redis` that retries its first call until the server
/// answers (a restarted server takes a moment to load its snapshot).
async fn head_when_up(store: &dyn Store, t: &TopicName) -> lameduck_topics::Head {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match store.head(t).await {
            Ok(head) => return head,
            Err(e) => assert!(std::time::Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn resume_of(store: Arc<dyn Store>, t: &TopicName, since: Position) -> Resume {
    let mut events = Box::pin(subscribe(store, t.clone(), Some(since), config()));
    match next_event(&mut events).await {
        Event::Start { resume, .. } => resume,
        other => panic!("{other:?}"),
    }
}

// A flushed Redis (FLUSHALL) loses the history: the next read starts a new
// epoch, and a client resuming from the old one is told it was not
// recovered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_redis_starts_a_new_epoch() {
    let redis = RedisServer::start();
    let store: Arc<dyn Store> =
        Arc::new(RedisStore::connect(RedisStoreConfig::new(redis.url())).unwrap());
    let t = topic("flushed");
    let seen = *publish_numbers(&*store, &t, 1..=5).await.last().unwrap();
    assert_eq!(resume_of(store.clone(), &t, seen).await, Resume::Recovered);
    assert_eq!(command(&redis, "FLUSHALL"), "OK");
    let head = head_when_up(&*store, &t).await;
    assert_ne!(head.epoch, seen.epoch, "a new history");
    assert_eq!(head.last, 0);
    assert_eq!(
        resume_of(store.clone(), &t, seen).await,
        Resume::NotRecovered(Unrecoverable::OtherEpoch)
    );
    // The new history numbers from 1 again, in its own epoch.
    let next = store.publish(&t, NewMessage::new("x")).await.unwrap();
    assert_eq!(next.position, Position::new(head.epoch, 1));
}

// A Redis restored from an older snapshot keeps the epoch but an older
// head: a client that saw later positions is told it is ahead of the head
// (not recovered), never served the offsets again as if nothing happened;
// one at or before the snapshot's head is recovered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restored_from_an_older_snapshot_is_a_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisServer::start_in(free_port(), dir.path());
    let store: Arc<dyn Store> =
        Arc::new(RedisStore::connect(RedisStoreConfig::new(redis.url())).unwrap());
    let t = topic("restored");
    let mut positions = Vec::new();
    for i in 1..=10 {
        positions.push(
            store
                .publish(&t, NewMessage::new(i.to_string()))
                .await
                .unwrap()
                .position,
        );
        if i == 5 {
            assert_eq!(command(&redis, "SAVE"), "OK");
        }
    }
    // Killed (nothing saved after 5) and started again on its data: it
    // loads the snapshot taken at 5.
    redis.stop();
    let redis = RedisServer::start_in(redis.addr.port(), dir.path());
    let head = head_when_up(&*store, &t).await;
    assert_eq!(
        (head.epoch, head.last),
        (positions[0].epoch, 5),
        "the snapshot's history and head"
    );
    assert_eq!(
        resume_of(store.clone(), &t, positions[9]).await,
        Resume::NotRecovered(Unrecoverable::AheadOfHead)
    );
    assert_eq!(
        resume_of(store.clone(), &t, positions[3]).await,
        Resume::Recovered
    );
    drop(redis);
}

/// Every offset a subscription delivers until `last`, checking the start
/// was `resume`.
async fn offsets_until(
    events: &mut (impl Stream<Item = Result<Event, TopicError>> + Unpin),
    resume: Resume,
    last: u64,
) -> Vec<u64> {
    let Event::Start { resume: got, .. } = next_event(events).await else {
        panic!("a start first");
    };
    assert_eq!(got, resume);
    let mut offsets = Vec::new();
    while offsets.last() != Some(&last) {
        match next_event(events).await {
            Event::Message(m) => offsets.push(m.position.offset),
            other => panic!("{other:?} after {:?}", offsets.last()),
        }
    }
    offsets
}

// Through a Fanout, subscribers that start live and subscribers that
// resume from older positions (a replay, then the shared reader) each get
// every message once, in order, while two publishers write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_subscribers_get_everything_once_in_order() {
    for (kind, store, _backing) in stores(Retention::default()) {
        let t = topic("shared");
        let early = publish_numbers(&*store, &t, 1..=20).await;
        let fanout = Arc::new(Fanout::new(store.clone(), config()));
        let mut readers = Vec::new();
        for i in 0..40usize {
            let since = (i % 2 == 1).then(|| early[i % 20]);
            let mut events = Box::pin(fanout.subscribe(t.clone(), since));
            readers.push(tokio::spawn(async move {
                let resume = if since.is_some() {
                    Resume::Recovered
                } else {
                    Resume::Fresh
                };
                let offsets = offsets_until(&mut events, resume, 220).await;
                (since.map_or(20, |p| p.offset), offsets)
            }));
        }
        // Let the live ones start before the publishes they must see.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let (store, t) = (store.clone(), t.clone());
                tokio::spawn(async move {
                    for i in 0..100 {
                        store
                            .publish(&t, NewMessage::new(format!("{w}-{i}")))
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
        for r in readers {
            let (from, offsets) = tokio::time::timeout(WAIT, r).await.unwrap().unwrap();
            assert_eq!(offsets, (from + 1..=220).collect::<Vec<_>>(), "{kind}");
        }
    }
}

/// A store that counts its reads, to see who reads it.
#[derive(Debug)]
struct Counted {
    inner: Arc<dyn Store>,
    reads: std::sync::atomic::AtomicU64,
}

#[async_trait::async_trait]
impl Store for Counted {
    async fn publish(
        &self,
        topic: &TopicName,
        message: NewMessage,
    ) -> Result<lameduck_topics::Published, TopicError> {
        self.inner.publish(topic, message).await
    }
    async fn head(&self, topic: &TopicName) -> Result<lameduck_topics::Head, TopicError> {
        self.inner.head(topic).await
    }
    async fn read(
        &self,
        topic: &TopicName,
        after: u64,
        limit: usize,
    ) -> Result<(lameduck_topics::Head, Vec<lameduck_topics::Message>), TopicError> {
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.read(topic, after, limit).await
    }
    async fn new_session(&self) -> Result<String, TopicError> {
        self.inner.new_session().await
    }
    async fn session_known(&self, session: &str) -> Result<bool, TopicError> {
        self.inner.session_known(session).await
    }
    fn version(&self) -> u64 {
        self.inner.version()
    }
    async fn changed(&self, topic: &TopicName, version: u64, poll: Duration) {
        self.inner.changed(topic, version, poll).await;
    }
}

// The point of a Fanout: 100 live subscribers and 50 publishes, one at a
// time, cost about one read of the store per publish (the shared reader's,
// plus each subscriber's first), not one per subscriber and publish
// (5,000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fanout_reads_the_store_once_per_publish_not_per_subscriber() {
    let counted = Arc::new(Counted {
        inner: Arc::new(MemoryStore::new(Retention::default())),
        reads: Default::default(),
    });
    let store: Arc<dyn Store> = counted.clone();
    let t = topic("many");
    let fanout = Fanout::new(store.clone(), SubscribeConfig::default());
    let mut readers = Vec::new();
    for _ in 0..100 {
        let mut events = Box::pin(fanout.subscribe(t.clone(), None));
        readers.push(tokio::spawn(async move {
            offsets_until(&mut events, Resume::Fresh, 50).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = counted.reads.load(std::sync::atomic::Ordering::Relaxed);
    for i in 1..=50 {
        store
            .publish(&t, NewMessage::new(i.to_string()))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for r in readers {
        let offsets = tokio::time::timeout(WAIT, r).await.unwrap().unwrap();
        assert_eq!(offsets, (1..=50).collect::<Vec<_>>());
    }
    let reads = counted.reads.load(std::sync::atomic::Ordering::Relaxed) - before;
    assert!(reads <= 2 * 50 + 100, "{reads} reads for 50 publishes");
}

// Retries racing each other (the same key at once, as from a client that
// timed out and retried while the first try was still being stored) get
// one position and store one message; a key raced by different payloads
// is stored for exactly one of them, the others refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_retries_store_one_message() {
    for (kind, store, _backing) in stores(Retention::default()) {
        let t = topic("racy");
        let same: Vec<_> = (0..32)
            .map(|_| {
                let (store, t) = (store.clone(), t.clone());
                tokio::spawn(async move {
                    store
                        .publish(&t, NewMessage::new("pay").key("k"))
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut positions = HashSet::new();
        let mut fresh = 0;
        for task in same {
            let p = task.await.unwrap();
            positions.insert(p.position);
            fresh += usize::from(!p.duplicate);
        }
        assert_eq!((positions.len(), fresh), (1, 1), "{kind}");
        let different: Vec<_> = (0..32)
            .map(|i| {
                let (store, t) = (store.clone(), t.clone());
                tokio::spawn(async move {
                    store
                        .publish(&t, NewMessage::new(format!("pay {i}")).key("k2"))
                        .await
                })
            })
            .collect();
        let mut stored = 0;
        for task in different {
            match task.await.unwrap() {
                Ok(p) => {
                    assert!(!p.duplicate, "{kind}");
                    stored += 1;
                }
                Err(TopicError::KeyConflict) => {}
                Err(e) => panic!("{kind}: {e}"),
            }
        }
        assert_eq!(stored, 1, "{kind}");
        assert_eq!(
            store.head(&t).await.unwrap().last,
            2,
            "{kind}: two messages"
        );
    }
}

// Redis's key layout during a rolling deploy: a later build that only
// added (a new field in each message, layout 2 readable by layout 1) is
// read on; one that raised `min_reader` past this build is refused at the
// check, before anything is misread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_reads_a_later_additive_layout_and_refuses_a_contracting_one() {
    let prefix = fresh_prefix();
    let config = RedisStoreConfig::new(redis_url()).prefix(prefix.clone());
    let store = RedisStore::connect(config.clone()).unwrap();
    store.check_layout().await.unwrap();
    let t = topic("later");
    let first = store.publish(&t, NewMessage::new("one")).await.unwrap();
    // What a later build writes: layout 2, an extra field in a message.
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let hash = format!("{prefix}:topic:later");
    let _: () = redis::cmd("HSET")
        .arg(format!("{prefix}:schema"))
        .arg("version")
        .arg(2)
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("HINCRBY")
        .arg(&hash)
        .arg("last")
        .arg(1)
        .query(&mut conn)
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(format!("{hash}:log"))
        .arg("2-0")
        .arg("p")
        .arg("two")
        .arg("t")
        .arg(1)
        .arg("priority")
        .arg("high")
        .query(&mut conn)
        .unwrap();
    let reader = RedisStore::connect(config.clone()).unwrap();
    reader.check_layout().await.unwrap();
    let (_, messages) = reader.read(&t, first.position.offset, 10).await.unwrap();
    assert_eq!(messages.len(), 1);
    assert_eq!(&messages[0].payload[..], b"two");
    let _: () = redis::cmd("HSET")
        .arg(format!("{prefix}:schema"))
        .arg("min_reader")
        .arg(2)
        .query(&mut conn)
        .unwrap();
    let refused = RedisStore::connect(config).unwrap().check_layout().await;
    assert!(
        matches!(refused, Err(TopicError::Corrupt(_))),
        "{refused:?}"
    );
}
