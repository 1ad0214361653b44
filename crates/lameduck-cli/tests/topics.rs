//! Topics on the real binary: publishing over HTTP (202 once stored,
//! idempotent retries), SSE subscribers resuming with `Last-Event-ID`
//! across SIGHUP upgrades with every message once and in order, and bad
//! input refused with nothing stored. Loopback only; every wait bounded.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use lameduck_test_support::{
    Child, Haproxy, TopicPublisher, assert_one_to, free_port, get, raise_fd_limit, redis_url, send,
};
use nix::sys::signal::Signal::SIGTERM;
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};

const BIN: &str = env!("CARGO_BIN_EXE_lameduck");
const SEC: Duration = Duration::from_secs(1);

async fn publish(addr: SocketAddr, topic: &str, body: &str, key: Option<&str>) -> (u16, Value) {
    let mut headers = vec![("content-type", "text/plain")];
    if let Some(key) = key {
        headers.push(("idempotency-key", key));
    }
    let res = send(
        addr,
        "POST",
        &format!("/topics/{topic}"),
        &headers,
        body.as_bytes(),
        5 * SEC,
    )
    .await
    .expect("an answer");
    let json = serde_json::from_slice(&res.body).unwrap_or(Value::Null);
    (res.status, json)
}

// Bad names, oversized bodies, malformed positions and reused keys get a
// 4xx with a reason and store nothing; a retry with its key is stored
// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_is_idempotent_and_bad_input_stores_nothing() {
    let server = Child::serve(BIN, &[]);
    let addr = server.addr;
    let (status, first) = publish(addr, "orders", "pay 5", Some("k1")).await;
    assert_eq!(status, 202, "{first}");
    let (status, again) = publish(addr, "orders", "pay 5", Some("k1")).await;
    assert_eq!(status, 202);
    assert_eq!(again["position"], first["position"]);
    assert_eq!(again["duplicate"], true);
    let (status, body) = publish(addr, "orders", "pay 6", Some("k1")).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(publish(addr, "bad%20name", "x", None).await.0, 400);
    let big = "x".repeat(64 * 1024 + 1);
    assert_eq!(publish(addr, "orders", &big, None).await.0, 413);
    let res = send(
        addr,
        "GET",
        "/topics/orders/events",
        &[("last-event-id", "not-a-position")],
        b"",
        5 * SEC,
    )
    .await
    .unwrap();
    assert_eq!(res.status, 400);
    // One message stored: the next publish is offset 2.
    let (_, next) = publish(addr, "orders", "pay 7", None).await;
    let position = next["position"].as_str().unwrap();
    assert!(position.ends_with("-2"), "{position}");
    server.drains_cleanly();
}

/// What an SSE subscriber saw.
#[derive(Default)]
struct Seen {
    /// The numbers received, in order.
    numbers: Mutex<Vec<u64>>,
    /// Every message's text and offset, in order.
    texts: Mutex<Vec<String>>,
    offsets: Mutex<Vec<u64>>,
    resets: AtomicU64,
    reconnects: AtomicU64,
}

/// The offset of a position `EPOCH-OFFSET`.
fn offset_of(position: &str) -> Option<u64> {
    position.split_once('-')?.1.parse().ok()
}

/// Reads `/topics/{topic}/events`, resuming with `Last-Event-ID`, until
/// `stop`.
async fn subscriber(addr: SocketAddr, topic: &'static str, stop: Arc<AtomicBool>, seen: Arc<Seen>) {
    let mut last: Option<String> = None;
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut tcp) = TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let resume = last
            .as_ref()
            .map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
        let request = format!("GET /topics/{topic}/events HTTP/1.1\r\nHost: t\r\n{resume}\r\n");
        if tcp.write_all(request.as_bytes()).await.is_err() {
            continue;
        }
        let mut pending = String::new();
        let mut buf = [0u8; 8192];
        let (mut id, mut event) = (None::<String>, None::<String>);
        loop {
            let n = match timeout(2 * SEC, tcp.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => 0,
            };
            if n == 0 || stop.load(Ordering::Relaxed) {
                break;
            }
            pending.push_str(&String::from_utf8_lossy(&buf[..n]));
            while let Some(end) = pending.find('\n') {
                let line: String = pending.drain(..=end).collect();
                let line = line.trim_end();
                if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("event: ") {
                    event = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    if event.as_deref() == Some("reset") {
                        seen.resets.fetch_add(1, Ordering::Relaxed);
                    } else if event.is_none() {
                        if let Ok(n) = v.parse::<u64>() {
                            seen.numbers.lock().unwrap().push(n);
                        }
                        seen.texts.lock().unwrap().push(v.to_owned());
                        if let Some(offset) = id.as_deref().and_then(offset_of) {
                            seen.offsets.lock().unwrap().push(offset);
                        }
                    }
                    if event.as_deref() != Some("drain") {
                        if let Some(id) = id.take() {
                            last = Some(id);
                        }
                    }
                    event = None;
                }
            }
        }
        seen.reconnects.fetch_add(1, Ordering::Relaxed);
        // As EventSource waits for its retry hint: messages published
        // meanwhile are there only if the resume replays them.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A WebSocket subscriber of `/topics/{topic}/ws`: keeps the position of
/// the last message and reconnects (after 200 ms, as a client's back-off)
/// with `?since=` it, until `stop`.
async fn ws_subscriber(
    addr: SocketAddr,
    topic: &'static str,
    stop: Arc<AtomicBool>,
    seen: Arc<Seen>,
) {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut last: Option<String> = None;
    while !stop.load(Ordering::Relaxed) {
        let path = match &last {
            Some(pos) => format!("/topics/{topic}/ws?since={pos}"),
            None => format!("/topics/{topic}/ws"),
        };
        let connected = async {
            let tcp = TcpStream::connect(addr).await.ok()?;
            timeout(
                10 * SEC,
                tokio_tungstenite::client_async(format!("ws://{addr}{path}"), tcp),
            )
            .await
            .ok()?
            .ok()
        };
        let Some((mut ws, _)) = connected.await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        while !stop.load(Ordering::Relaxed) {
            match timeout(2 * SEC, ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                    if v["recovered"] == false {
                        seen.resets.fetch_add(1, Ordering::Relaxed);
                    }
                    if let (Some(pos), Some(data)) = (v["pos"].as_str(), v["data"].as_str()) {
                        if let Ok(n) = data.parse::<u64>() {
                            seen.numbers.lock().unwrap().push(n);
                        }
                        seen.texts.lock().unwrap().push(data.to_owned());
                        if let Some(offset) = offset_of(pos) {
                            seen.offsets.lock().unwrap().push(offset);
                        }
                        last = Some(pos.to_owned());
                    }
                }
                Ok(Some(Ok(_))) | Err(_) => {}
                Ok(Some(Err(_)) | None) => break,
            }
        }
        seen.reconnects.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `sse` SSE and `ws` WebSocket subscribers of `topic` at `addr`.
fn subscribers(
    addr: SocketAddr,
    topic: &'static str,
    (sse, ws): (usize, usize),
    stop: &Arc<AtomicBool>,
) -> (Vec<Arc<Seen>>, Vec<tokio::task::JoinHandle<()>>) {
    let seen: Vec<Arc<Seen>> = (0..sse + ws).map(|_| Arc::default()).collect();
    let tasks = seen
        .iter()
        .enumerate()
        .map(|(i, s)| {
            if i < sse {
                tokio::spawn(subscriber(addr, topic, stop.clone(), s.clone()))
            } else {
                tokio::spawn(ws_subscriber(addr, topic, stop.clone(), s.clone()))
            }
        })
        .collect();
    (seen, tasks)
}

/// Waits (20 s at most) until every subscriber has `last`, stops them, and
/// asserts that each got every number once, in order, through at least
/// `reconnects` reconnects, none of them reported unrecovered.
async fn every_subscriber_got_everything(
    seen: &[Arc<Seen>],
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop: &AtomicBool,
    last: u64,
    reconnects: u64,
) {
    let deadline = Instant::now() + 20 * SEC;
    for (i, s) in seen.iter().enumerate() {
        while s.numbers.lock().unwrap().last() != Some(&last) {
            assert!(
                Instant::now() < deadline,
                "subscriber {i} stopped at {:?} of {last}",
                s.numbers.lock().unwrap().last()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = timeout(10 * SEC, task).await;
    }
    for (i, s) in seen.iter().enumerate() {
        let numbers = s.numbers.lock().unwrap().clone();
        assert_one_to(&format!("subscriber {i}"), &numbers, last);
        assert_eq!(s.resets.load(Ordering::Relaxed), 0, "subscriber {i}");
        assert!(
            s.reconnects.load(Ordering::Relaxed) >= reconnects,
            "subscriber {i}: {} reconnects",
            s.reconnects.load(Ordering::Relaxed)
        );
    }
}

// One instance on SQLite, upgraded five times (SIGHUP) while a publisher
// posts numbered messages (retrying with the same key through anything
// that fails), and 50 SSE subscribers (resuming with Last-Event-ID) and 50
// WebSocket subscribers (resuming with ?since=) read: every subscriber
// gets every number exactly once and in order, and no resume is ever
// reported unrecovered (the successor continues the same history).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_get_everything_once_across_upgrades() {
    let server = Child::serve(BIN, &["--upgrade-probation", "1s"]);
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let (seen, tasks) = subscribers(addr, "feed", (50, 50), &stop);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let publisher = TopicPublisher::start(addr, "feed");
    let mut pids = vec![server.pid()];
    for _ in 0..5 {
        tokio::time::sleep(SEC).await;
        server.upgrade(&mut pids, 30 * SEC);
    }
    tokio::time::sleep(SEC).await;
    let last = publisher.finish().await.last;
    assert!(last > 50, "only {last} published");
    every_subscriber_got_everything(&seen, tasks, &stop, last, 5).await;
    let ready = get(addr, "/readyz", 5 * SEC).await.unwrap();
    assert_eq!(ready.json()["pid"].as_u64(), Some(u64::from(pids[5])));
}

// A fleet: three instances on one Redis behind HAProxy, replaced one by one
// (the new one up, SIGTERM to the old, taken out of rotation a second
// later) while a publisher posts through HAProxy and 50 SSE and 50
// WebSocket subscribers read through it, each reconnection landing on any
// instance: every subscriber gets every number exactly once and in order,
// never told it was not recovered, and every old instance exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_redis_delivers_everything_once_through_a_rolling_deploy() {
    raise_fd_limit(4096);
    // A prefix of this run's own: the machine's Redis outlives it.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let store = format!(
        "{}?prefix=fleet-{}-{nanos}",
        redis_url(),
        std::process::id()
    );
    let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
    let instance = |port: u16| {
        let listen = format!("127.0.0.1:{port}");
        Child::serve(
            BIN,
            &[
                "--listen",
                &listen,
                "--topics",
                &store,
                "--drain-spread",
                "1s",
            ],
        )
    };
    let mut old: Vec<Child> = ports[..3].iter().map(|p| instance(*p)).collect();
    let haproxy = Haproxy::start(&ports, 3);
    for slot in 0..3 {
        tokio::task::block_in_place(|| haproxy.wait_up(slot, 10 * SEC));
    }
    let front = haproxy.front;
    let stop = Arc::new(AtomicBool::new(false));
    let (seen, tasks) = subscribers(front, "fleet", (50, 50), &stop);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let publisher = TopicPublisher::start(front, "fleet");
    let mut new = Vec::new();
    for (i, mut gone) in old.drain(..).enumerate() {
        tokio::time::sleep(SEC).await;
        let slot = 3 + i;
        new.push(instance(ports[slot]));
        haproxy.command(&format!("enable server be/s{slot}"));
        tokio::task::block_in_place(|| haproxy.wait_up(slot, 10 * SEC));
        gone.signal(SIGTERM);
        tokio::time::sleep(SEC).await;
        haproxy.command(&format!("disable server be/s{i}"));
        let status = gone.expect_exit(30 * SEC);
        assert_eq!(status.code(), Some(0), "instance {i}");
    }
    tokio::time::sleep(SEC).await;
    let last = publisher.finish().await.last;
    assert!(last > 50, "only {last} published");
    // Each subscriber was on one of the three old instances: one reconnect
    // at least.
    every_subscriber_got_everything(&seen, tasks, &stop, last, 1).await;
    drop(new);
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn ws_connect(addr: SocketAddr, path: &str) -> Ws {
    let tcp = TcpStream::connect(addr).await.unwrap();
    timeout(
        10 * SEC,
        tokio_tungstenite::client_async(format!("ws://{addr}{path}"), tcp),
    )
    .await
    .expect("handshake in time")
    .expect("handshake")
    .0
}

/// The next text frame as JSON; panics on anything else.
async fn ws_json(ws: &mut Ws) -> Value {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match timeout(10 * SEC, ws.next()).await.expect("a frame in time") {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a JSON frame, got {other:?}"),
        }
    }
}

/// The close code the server ends with.
async fn ws_close_code(ws: &mut Ws) -> Option<u16> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match timeout(10 * SEC, ws.next()).await.expect("a frame in time") {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            _ => return None,
        }
    }
}

async fn ws_send(ws: &mut Ws, text: &str) {
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::text(text))
        .await
        .unwrap();
}

// The topic WebSocket: the first frame names a session; a client frame is
// acknowledged with its position once stored and reaches the other
// subscribers; resent after a reconnect under the same session it is
// acknowledged with the same position and stored once; an unknown session
// is closed with 1008, a malformed frame with 1007.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_clients_publish_each_message_once() {
    let server = Child::serve(BIN, &[]);
    let addr = server.addr;
    let mut a = ws_connect(addr, "/topics/chat/ws").await;
    let hello = ws_json(&mut a).await;
    let session = hello["session"].as_str().unwrap().to_owned();
    assert_eq!(session.len(), 32, "{hello}");
    assert_eq!(hello["topic"], "chat");
    let mut b = ws_connect(addr, "/topics/chat/ws").await;
    assert_ne!(ws_json(&mut b).await["session"], hello["session"]);

    ws_send(&mut a, r#"{"id":"m1","data":"hello"}"#).await;
    // The ack and a's own copy of the message, in either order.
    let (mut ack, mut own) = (None, None);
    while ack.is_none() || own.is_none() {
        let frame = ws_json(&mut a).await;
        if frame.get("ack").is_some() {
            ack = Some(frame);
        } else {
            own = Some(frame);
        }
    }
    let (ack, own) = (ack.unwrap(), own.unwrap());
    assert_eq!(ack["ack"], "m1");
    let pos = ack["pos"].as_str().unwrap().to_owned();
    assert_eq!(
        (own["pos"].as_str(), own["data"].as_str()),
        (Some(&*pos), Some("hello"))
    );
    let got = ws_json(&mut b).await;
    assert_eq!(
        (got["pos"].as_str(), got["data"].as_str()),
        (Some(&*pos), Some("hello"))
    );

    // a reconnects under its session, from its position, and resends m1.
    drop(a);
    let mut a = ws_connect(
        addr,
        &format!("/topics/chat/ws?session={session}&since={pos}"),
    )
    .await;
    let again = ws_json(&mut a).await;
    assert_eq!(
        (again["recovered"].as_bool(), again["session"].as_str()),
        (Some(true), Some(&*session))
    );
    ws_send(&mut a, r#"{"id":"m1","data":"hello"}"#).await;
    assert_eq!(
        ws_json(&mut a).await,
        serde_json::json!({"ack": "m1", "pos": pos})
    );
    ws_send(&mut a, r#"{"id":"m2","data":"again"}"#).await;
    // b sees m2 next: m1 was not stored twice.
    assert_eq!(ws_json(&mut b).await["data"], "again");

    let mut stranger =
        ws_connect(addr, &format!("/topics/chat/ws?session={}", "0".repeat(32))).await;
    assert_eq!(ws_close_code(&mut stranger).await, Some(1008));
    let mut sloppy = ws_connect(addr, "/topics/chat/ws").await;
    ws_json(&mut sloppy).await;
    ws_send(&mut sloppy, "not json").await;
    assert_eq!(ws_close_code(&mut sloppy).await, Some(1007));
    let res = get(addr, "/topics/chat/ws?since=garbage", 5 * SEC)
        .await
        .unwrap();
    assert_eq!(res.status, 400);
}

/// A WebSocket publisher: sends `c{id}-{n}` for n = 0, 1, ... one at a
/// time, each until acknowledged; on a closed socket it reconnects under
/// its session and resends the unacknowledged one. Returns how many were
/// acknowledged.
async fn ws_publisher(addr: SocketAddr, id: usize, stop: Arc<AtomicBool>) -> u64 {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let mut session: Option<String> = None;
    let mut n = 0u64;
    'connect: while !stop.load(Ordering::Relaxed) {
        let path = match &session {
            Some(s) => format!("/topics/load/ws?session={s}"),
            None => "/topics/load/ws".to_owned(),
        };
        let Ok(tcp) = TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let Ok(Ok((mut ws, _))) = timeout(
            10 * SEC,
            tokio_tungstenite::client_async(format!("ws://{addr}{path}"), tcp),
        )
        .await
        else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        while !stop.load(Ordering::Relaxed) {
            let msg_id = format!("c{id}-{n}");
            let frame = serde_json::json!({ "id": msg_id, "data": msg_id }).to_string();
            if ws.send(Message::text(frame)).await.is_err() {
                continue 'connect;
            }
            loop {
                match timeout(10 * SEC, ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        let v: Value = serde_json::from_str(t.as_str()).unwrap();
                        if let Some(s) = v["session"].as_str() {
                            session.get_or_insert_with(|| s.to_owned());
                        }
                        if v["ack"] == msg_id.as_str() {
                            n += 1;
                            break;
                        }
                    }
                    Ok(Some(Ok(_))) => {}
                    // Closed (a drain) or broken: reconnect and resend.
                    _ => continue 'connect,
                }
            }
        }
        let _ = timeout(2 * SEC, ws.close(None)).await;
    }
    n
}

// Client to server, exactly once: 50 WebSocket publishers send numbered
// messages, each resent after a reconnect until acknowledged, across three
// SIGHUP upgrades. Read back from the start of the topic, every message
// acknowledged is stored, and every message is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_publishers_store_each_message_once_across_upgrades() {
    // Every message is kept, to be read back: the publishers store tens of
    // thousands, past the default retention.
    let server = Child::serve(
        BIN,
        &["--upgrade-probation", "1s", "--topic-retention", "1000000"],
    );
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = (0..50)
        .map(|i| tokio::spawn(ws_publisher(addr, i, stop.clone())))
        .collect();
    let mut pids = vec![server.pid()];
    for _ in 0..3 {
        tokio::time::sleep(SEC).await;
        server.upgrade(&mut pids, 30 * SEC);
    }
    tokio::time::sleep(SEC).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for p in publishers {
        acked.push(timeout(30 * SEC, p).await.unwrap().unwrap());
    }
    assert!(acked.iter().all(|&n| n > 5), "{acked:?}");

    // Read the whole topic back, from before its first message.
    let mut reader = ws_connect(addr, "/topics/load/ws").await;
    let first = ws_json(&mut reader).await;
    let from = first["from"].as_str().unwrap().to_owned();
    let (epoch, last) = from.split_once('-').unwrap();
    let last: u64 = last.parse().unwrap();
    drop(reader);
    let mut reader = ws_connect(addr, &format!("/topics/load/ws?since={epoch}-0")).await;
    let hello = ws_json(&mut reader).await;
    assert_eq!(hello["recovered"], true, "{hello}");
    let mut stored = std::collections::HashMap::<String, u32>::new();
    for _ in 0..last {
        let frame = ws_json(&mut reader).await;
        *stored
            .entry(frame["data"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let twice: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    for (i, &n) in acked.iter().enumerate() {
        for k in 0..n {
            assert!(
                stored.contains_key(&format!("c{i}-{k}")),
                "acknowledged c{i}-{k} missing"
            );
        }
    }
}

// On a drain, a WebSocket subscriber gets what was stored before that
// instant, then its Close: a subscriber replaying 2,000 messages when
// SIGTERM comes receives all 2,000, then Close 1001.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_websocket_subscriber_gets_everything_stored_before_its_close() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let server = Child::serve(BIN, &["--topics", "memory", "--drain-spread", "0s"]);
    let addr = server.addr;
    let mut epoch = String::new();
    for i in 1..=2000 {
        let (status, body) = publish(addr, "backlog", &i.to_string(), None).await;
        assert_eq!(status, 202);
        if i == 1 {
            epoch = body["position"]
                .as_str()
                .unwrap()
                .split('-')
                .next()
                .unwrap()
                .to_owned();
        }
    }
    let mut ws = ws_connect(addr, &format!("/topics/backlog/ws?since={epoch}-0")).await;
    assert_eq!(ws_json(&mut ws).await["recovered"], true);
    server.signal(nix::sys::signal::Signal::SIGTERM);
    let mut received = 0u64;
    let close = loop {
        match timeout(10 * SEC, ws.next()).await.expect("a frame in time") {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                received += 1;
                assert_eq!(v["data"], received.to_string(), "in order");
            }
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            other => panic!("ended without a Close after {received}: {other:?}"),
        }
    };
    assert_eq!(
        received, 2000,
        "everything stored before the drain, then the Close"
    );
    assert_eq!(close, Some(1001));
}

// With LAMEDUCK_TOPICS_TOKEN set, publishing needs `Authorization: Bearer
// TOKEN`: a POST without it or with another gets 401, and a WebSocket
// opened without it reads but is closed with 1008 at its first client
// frame; neither stores anything. Subscribing stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_needs_the_token_when_one_is_set() {
    let (mut command, dir) = Child::serve_command(BIN, &[]);
    command.env("LAMEDUCK_TOPICS_TOKEN", "t0ken");
    let server = Child::spawn(command, dir);
    let addr = server.addr;
    for auth in [None, Some("Bearer nope"), Some("t0ken")] {
        let mut headers = vec![];
        if let Some(a) = auth {
            headers.push(("authorization", a));
        }
        let res = send(addr, "POST", "/topics/locked", &headers, b"x", 5 * SEC)
            .await
            .unwrap();
        assert_eq!(res.status, 401, "{auth:?}");
    }
    let mut ws = ws_connect(addr, "/topics/locked/ws").await;
    assert_eq!(ws_json(&mut ws).await["recovered"], true, "reading is open");
    ws_send(&mut ws, r#"{"id":"1","data":"sneaky"}"#).await;
    assert_eq!(ws_close_code(&mut ws).await, Some(1008));
    let res = send(
        addr,
        "POST",
        "/topics/locked",
        &[("authorization", "Bearer t0ken")],
        b"x",
        5 * SEC,
    )
    .await
    .unwrap();
    assert_eq!(res.status, 202);
    let position = serde_json::from_slice::<Value>(&res.body).unwrap()["position"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        position.ends_with("-1"),
        "nothing stored before: {position}"
    );
    server.drains_cleanly();
}

// Both processes of an upgrade publishing at once: during a 3 s probation
// the old and the new process both accept on the shared socket, and four
// HTTP publishers (each request on a new connection, reaching either)
// store into the one SQLite topic. 20 SSE and 20 WebSocket subscribers, on
// either process, see one order: every offset once, none missing, and
// every acknowledged message exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_processes_of_an_upgrade_publish_into_one_order() {
    let server = Child::serve(BIN, &["--upgrade-probation", "3s"]);
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let (seen, tasks) = subscribers(addr, "both", (20, 20), &stop);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let publishers: Vec<_> = (0..4)
        .map(|i| TopicPublisher::start_as(addr, "both", &format!("p{i}")))
        .collect();
    let mut pids = vec![server.pid()];
    for _ in 0..2 {
        tokio::time::sleep(SEC).await;
        server.upgrade(&mut pids, 30 * SEC);
    }
    tokio::time::sleep(SEC).await;
    let mut expected = Vec::new();
    let mut interleaved = false;
    for (i, p) in publishers.into_iter().enumerate() {
        let done = p.finish().await;
        assert!(done.last > 20, "publisher {i}: only {}", done.last);
        expected.extend((1..=done.last).map(|n| format!("p{i}-{n}")));
        // A process answering again after another did: both were storing
        // at once, not one after the other.
        let mut runs: Vec<&String> = Vec::new();
        for by in &done.served_by {
            if runs.last() != Some(&by) {
                runs.push(by);
            }
        }
        interleaved |= runs
            .iter()
            .enumerate()
            .any(|(k, by)| runs[..k.saturating_sub(1)].contains(by));
    }
    assert!(
        interleaved,
        "no publisher was answered by both processes in turn"
    );
    expected.sort();
    let deadline = Instant::now() + 20 * SEC;
    for (i, s) in seen.iter().enumerate() {
        while s.texts.lock().unwrap().len() < expected.len() {
            assert!(
                Instant::now() < deadline,
                "subscriber {i}: {} of {} messages",
                s.texts.lock().unwrap().len(),
                expected.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = timeout(10 * SEC, task).await;
    }
    for (i, s) in seen.iter().enumerate() {
        let offsets = s.offsets.lock().unwrap().clone();
        let gaps = offsets.windows(2).filter(|w| w[1] != w[0] + 1).count();
        assert_eq!(
            gaps, 0,
            "subscriber {i}: offsets in one order, none missing or twice"
        );
        let mut texts = s.texts.lock().unwrap().clone();
        texts.sort();
        assert!(
            texts == expected,
            "subscriber {i}: every acknowledged message exactly once"
        );
        assert_eq!(s.resets.load(Ordering::Relaxed), 0, "subscriber {i}");
    }
}
