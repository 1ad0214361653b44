//! Topic benchmarks, each store against a plain `tokio::sync::broadcast`
//! measured in the same run:
//!
//! - latency: publish → delivery to every one of `--subscribers`
//!   subscribers (each reading the store, then through a [`Fanout`]), p50/p99 over `--messages` messages published 5 ms apart;
//! - fan-out: deliveries per second when `--burst` messages are published
//!   back to back to the same subscribers;
//! - replay: a resume from the start of a `--replay`-message topic, in
//!   messages per second;
//! - publishes per second from 64 concurrent publishers (SQLite with its
//!   group commit, and with one transaction a publish).
//!
//! `cargo run --release -p lameduck-topics --example topics_bench --
//! [--stores memory,sqlite,redis] [--subscribers 1000] [--messages 200]
//! [--burst 1000] [--replay 100000]`. Redis is the one at `REDIS_URL`
//! (default `redis://127.0.0.1:6379`), under a fresh prefix.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use lameduck_topics::{
    Event, Fanout, MemoryStore, NewMessage, Position, RedisStore, RedisStoreConfig, Retention,
    SqliteStore, Store, SubscribeConfig, TopicName, subscribe,
};
use tokio::sync::mpsc;

struct Args {
    stores: Vec<String>,
    subscribers: usize,
    messages: usize,
    burst: usize,
    replay: usize,
}

fn args() -> Args {
    let mut a = Args {
        stores: vec!["memory".into(), "sqlite".into(), "redis".into()],
        subscribers: 1000,
        messages: 200,
        burst: 1000,
        replay: 100_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let n = || {
            value
                .parse::<usize>()
                .unwrap_or_else(|_| panic!("{flag} {value}"))
        };
        match flag.as_str() {
            "--stores" => a.stores = value.split(',').map(str::to_owned).collect(),
            "--subscribers" => a.subscribers = n(),
            "--messages" => a.messages = n(),
            "--burst" => a.burst = n(),
            "--replay" => a.replay = n(),
            _ => panic!("unknown flag {flag}"),
        }
    }
    a
}

fn micros_since(start: Instant) -> u64 {
    start.elapsed().as_micros() as u64
}

/// A fresh store of `kind`; the temp dir lives as long.
fn open(kind: &str, retention: Retention) -> (Arc<dyn Store>, Option<tempfile::TempDir>) {
    match kind {
        "memory" => (Arc::new(MemoryStore::new(retention)), None),
        "sqlite" | "sqlite-ungrouped" => {
            let dir = tempfile::tempdir().unwrap();
            let mut store = SqliteStore::open(dir.path().join("bench.db"), retention).unwrap();
            if kind == "sqlite-ungrouped" {
                store = store.max_group(1);
            }
            (Arc::new(store), Some(dir))
        }
        "redis" => {
            let url = std::env::var("REDIS_URL").unwrap_or("redis://127.0.0.1:6379".into());
            let prefix = format!("bench-{:016x}", fastrand::u64(..));
            let config = RedisStoreConfig::new(url)
                .prefix(prefix)
                .retention(retention);
            (Arc::new(RedisStore::connect(config).unwrap()), None)
        }
        other => panic!("unknown store {other}"),
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Every subscriber sends (message number, receive time in µs) here.
type Seen = mpsc::UnboundedSender<(u64, u64)>;

/// `n` subscribers of `topic` on `store`, each reporting what it receives;
/// returns once all have started.
async fn store_subscribers(
    store: &Arc<dyn Store>,
    fanout: Option<&Fanout>,
    topic: &TopicName,
    n: usize,
    start: Instant,
    seen: Seen,
) {
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    for _ in 0..n {
        let mut events = match fanout {
            Some(f) => f.subscribe(topic.clone(), None).boxed(),
            None => subscribe(
                store.clone(),
                topic.clone(),
                None,
                SubscribeConfig::default(),
            )
            .boxed(),
        };
        let (seen, ready) = (seen.clone(), ready_tx.clone());
        tokio::spawn(async move {
            while let Some(Ok(event)) = events.next().await {
                match event {
                    Event::Start { .. } => {
                        let _ = ready.send(());
                    }
                    Event::Message(m) => {
                        let k: u64 = std::str::from_utf8(&m.payload).unwrap().parse().unwrap();
                        if seen.send((k, micros_since(start))).is_err() {
                            return;
                        }
                    }
                    _ => return,
                }
            }
        });
    }
    for _ in 0..n {
        ready_rx.recv().await.unwrap();
    }
}

async fn broadcast_subscribers(
    tx: &tokio::sync::broadcast::Sender<u64>,
    n: usize,
    start: Instant,
    seen: Seen,
) {
    for _ in 0..n {
        let mut rx = tx.subscribe();
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Ok(k) = rx.recv().await {
                if seen.send((k, micros_since(start))).is_err() {
                    return;
                }
            }
        });
    }
}

/// Publishes `count` messages (numbered from `first`) `gap` apart with
/// `publish`, and waits until every one of `subscribers` received each:
/// the latency of each delivery (µs, sorted) and the elapsed time.
async fn run<F, Fut>(
    subscribers: usize,
    first: u64,
    count: usize,
    gap: Duration,
    start: Instant,
    mut rx: mpsc::UnboundedReceiver<(u64, u64)>,
    mut publish: F,
) -> (Vec<u64>, Duration, mpsc::UnboundedReceiver<(u64, u64)>)
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut sent_at = vec![0u64; count];
    let began = Instant::now();
    let expect = subscribers * count;
    let collector = tokio::spawn(async move {
        let mut got = Vec::with_capacity(expect);
        while got.len() < expect {
            match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
                Ok(Some(item)) => got.push(item),
                _ => panic!("only {} of {expect} deliveries", got.len()),
            }
        }
        (got, rx)
    });
    for (i, sent) in sent_at.iter_mut().enumerate() {
        *sent = micros_since(start);
        publish(first + i as u64).await;
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
    }
    let (got, rx) = collector.await.unwrap();
    let elapsed = began.elapsed();
    let mut latencies: Vec<u64> = got
        .iter()
        .map(|(k, at)| at.saturating_sub(sent_at[(k - first) as usize]))
        .collect();
    latencies.sort_unstable();
    (latencies, elapsed, rx)
}

fn report(label: &str, subscribers: usize, lat: &[u64], burst: usize, burst_time: Duration) {
    println!(
        "| {label} | {} | {} | {} | {:.0} |",
        subscribers,
        percentile(lat, 0.50),
        percentile(lat, 0.99),
        (subscribers * burst) as f64 / burst_time.as_secs_f64()
    );
}

#[tokio::main]
async fn main() {
    let a = args();
    let start = Instant::now();
    println!(
        "fan-out: {} subscribers; latency over {} messages 5 ms apart; fan-out over {} back to back\n",
        a.subscribers, a.messages, a.burst
    );
    println!("| store | subscribers | p50 µs | p99 µs | deliveries/s |");
    println!("|---|---|---|---|---|");
    {
        let (tx, _) = tokio::sync::broadcast::channel::<u64>(a.burst.max(a.messages) + 16);
        let (seen_tx, rx) = mpsc::unbounded_channel();
        broadcast_subscribers(&tx, a.subscribers, start, seen_tx).await;
        let gap = Duration::from_millis(5);
        let (lat, _, rx) = run(a.subscribers, 0, a.messages, gap, start, rx, |k| {
            let _ = tx.send(k);
            async {}
        })
        .await;
        let first = a.messages as u64;
        let (_, burst, _) = run(
            a.subscribers,
            first,
            a.burst,
            Duration::ZERO,
            start,
            rx,
            |k| {
                let _ = tx.send(k);
                async {}
            },
        )
        .await;
        report(
            "tokio broadcast (baseline)",
            a.subscribers,
            &lat,
            a.burst,
            burst,
        );
    }
    for (kind, shared) in a.stores.iter().flat_map(|k| [(k, false), (k, true)]) {
        let (store, _dir) = open(kind, Retention::new(1_000_000, Duration::from_secs(3600)));
        let topic = TopicName::new("bench").unwrap();
        let (seen_tx, rx) = mpsc::unbounded_channel();
        let fanout = shared.then(|| Fanout::new(store.clone(), SubscribeConfig::default()));
        store_subscribers(
            &store,
            fanout.as_ref(),
            &topic,
            a.subscribers,
            start,
            seen_tx,
        )
        .await;
        let publish = |k: u64| {
            let (store, topic) = (store.clone(), topic.clone());
            async move {
                store
                    .publish(&topic, NewMessage::new(k.to_string()))
                    .await
                    .unwrap();
            }
        };
        let gap = Duration::from_millis(5);
        let (lat, _, rx) = run(a.subscribers, 0, a.messages, gap, start, rx, publish).await;
        let first = a.messages as u64;
        let (_, burst, _) = run(
            a.subscribers,
            first,
            a.burst,
            Duration::ZERO,
            start,
            rx,
            publish,
        )
        .await;
        let how = if shared {
            "Fanout (one reader a topic)"
        } else {
            "subscribe (each reads the store)"
        };
        report(
            &format!("{kind}, {how}"),
            a.subscribers,
            &lat,
            a.burst,
            burst,
        );
    }

    println!(
        "\nreplay of {} messages, and publishes from 64 concurrent publishers\n",
        a.replay
    );
    println!("| store | replay msg/s | publishes/s (64 publishers) |");
    println!("|---|---|---|");
    let mut kinds = a.stores.clone();
    if kinds.iter().any(|k| k == "sqlite") {
        // Group commit against one transaction a publish, in the same run.
        kinds.insert(
            kinds.iter().position(|k| k == "sqlite").unwrap() + 1,
            "sqlite-ungrouped".into(),
        );
    }
    for kind in &kinds {
        let (store, _dir) = open(
            kind,
            Retention::new(a.replay as u64 + 1, Duration::from_secs(3600)),
        );
        let topic = TopicName::new("replay").unwrap();
        // Filled by 64 publishers at once: this is the publish figure.
        let began = Instant::now();
        let per = a.replay / 64;
        let tasks: Vec<_> = (0..64)
            .map(|w| {
                let (store, topic) = (store.clone(), topic.clone());
                tokio::spawn(async move {
                    for i in 0..per {
                        store
                            .publish(&topic, NewMessage::new(format!("{w}-{i}")))
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let publishes = (per * 64) as f64 / began.elapsed().as_secs_f64();
        let head = store.head(&topic).await.unwrap();
        let began = Instant::now();
        let mut events = Box::pin(subscribe(
            store.clone(),
            topic.clone(),
            Some(Position::new(head.epoch, 0)),
            SubscribeConfig::default(),
        ));
        let mut n = 0;
        while n < per * 64 {
            match events.next().await {
                Some(Ok(Event::Message(_))) => n += 1,
                Some(Ok(Event::Start { .. })) => {}
                other => panic!("{other:?}"),
            }
        }
        let replay = n as f64 / began.elapsed().as_secs_f64();
        println!("| {kind} | {replay:.0} | {publishes:.0} |");
    }
}
