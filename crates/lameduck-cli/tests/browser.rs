//! What a browser sees: a real headless Chromium, driven over DevTools,
//! runs the topics' browser client (`/topics.js`, `clients/js/`) and a
//! plain `EventSource` against `lameduck serve` while it is upgraded.
//! Loopback only; Chromium and the server are killed at the end.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use lameduck_test_support::{Child, Chromium, TopicPublisher, assert_one_to, send};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_lameduck");
const SEC: Duration = Duration::from_secs(1);

/// Started in the page, after `SINCE` (the position of a `0` published
/// before): the client and an EventSource reading `browser`, and a second
/// client publishing `1`, `2`, ... to `browser-up`, each once acknowledged.
const START: &str = r#"
(async () => {
  const { Topic } = await import(location.origin + '/topics.js');
  const r = window.__r = { ws: [], sse: [], acked: 0, resets: 0, sseResets: 0, wsOpens: 0, sseOpens: 0, upPos: null };
  let hello;
  const ready = new Promise((res) => (hello = res));
  new Topic('browser', {
    since: SINCE,
    onMessage: (m) => r.ws.push(Number(m.data)),
    onReset: () => r.resets++,
    onState: (s) => { if (s.connected) { r.wsOpens++; hello(); } },
    minDelay: 100,
  });
  const es = new EventSource('/topics/browser/events?since=' + SINCE);
  const open = new Promise((res) => es.addEventListener('open', res, { once: true }));
  es.addEventListener('open', () => r.sseOpens++);
  es.onmessage = (e) => r.sse.push(Number(e.data));
  es.addEventListener('reset', () => r.sseResets++);
  await Promise.all([ready, open]);
  const up = new Topic('browser-up', { minDelay: 100 });
  (async () => {
    for (let n = 1; !window.__stop; n++) {
      r.upPos = await up.publish(String(n));
      r.acked = n;
      await new Promise((res) => setTimeout(res, 20));
    }
    window.__done = true;
  })();
  return 'started';
})()
"#;

fn numbers(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_u64)
        .collect()
}

/// Reads `topic` over SSE from its first message until `count` messages
/// came (10 s at most): their data, as numbers.
async fn read_back(addr: SocketAddr, topic: &str, epoch: &str, count: usize) -> Vec<u64> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /topics/{topic}/events?since={epoch}-0 HTTP/1.1\r\nHost: t\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let (mut text, mut buf) = (String::new(), [0u8; 8192]);
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + 10 * SEC;
    while got.len() < count {
        let Ok(Ok(n)) = tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await else {
            break;
        };
        if n == 0 {
            break;
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        got = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: ")?.parse().ok())
            .collect();
    }
    got
}

// The browser client and a plain EventSource read a topic that the test
// publishes to over HTTP, through three SIGHUP upgrades, while a second
// client in the page publishes its own numbered messages: each reader gets
// every message once and in order (0 gaps, 0 duplicates), no resume is
// reported unrecovered, and every message the page published was stored
// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_loses_nothing_across_upgrades() {
    let server = Child::serve(BIN, &["--upgrade-probation", "1s"]);
    let addr = server.addr;
    let origin = format!("http://{addr}");
    let zero = send(addr, "POST", "/topics/browser", &[], b"0", 5 * SEC)
        .await
        .unwrap();
    let since = serde_json::from_slice::<Value>(&zero.body).unwrap()["position"].clone();
    let chromium = Chromium::start(&format!("{origin}/readyz"));
    let mut page = chromium.page().await;
    page.loaded(&origin).await;
    let started = page
        .evaluate(&START.replace("SINCE", &since.to_string()))
        .await;
    assert_eq!(started, "started");

    let publisher = TopicPublisher::start(addr, "browser");
    let mut pids = vec![server.pid()];
    for _ in 0..3 {
        tokio::time::sleep(SEC).await;
        server.upgrade(&mut pids, 30 * SEC);
    }
    tokio::time::sleep(SEC).await;
    let last = publisher.finish().await.last;
    assert!(last > 20, "only {last} published");
    page.evaluate("window.__stop = true").await;
    let deadline = Instant::now() + 20 * SEC;
    let r = loop {
        let r = page
            .evaluate("window.__done ? JSON.stringify(window.__r) : null")
            .await;
        if let Some(text) = r.as_str() {
            let r: Value = serde_json::from_str(text).unwrap();
            let end = |k: &str| numbers(&r[k]).last().copied();
            if end("ws") == Some(last) && end("sse") == Some(last) {
                break r;
            }
        }
        assert!(Instant::now() < deadline, "the page never caught up: {r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let all: Vec<u64> = (1..=last).collect();
    assert_eq!(
        numbers(&r["ws"]),
        all,
        "the client: every message once, in order"
    );
    assert_eq!(
        numbers(&r["sse"]),
        all,
        "EventSource: every message once, in order"
    );
    assert_eq!(
        (&r["resets"], &r["sseResets"]),
        (&0.into(), &0.into()),
        "{r}"
    );
    // Each upgrade moved both to the next process.
    assert!(r["wsOpens"].as_u64().unwrap() >= 4, "{r}");
    assert!(r["sseOpens"].as_u64().unwrap() >= 4, "{r}");

    let acked = r["acked"].as_u64().unwrap();
    assert!(acked > 20, "the page published only {acked}");
    let epoch = r["upPos"].as_str().unwrap().split('-').next().unwrap();
    let stored = read_back(addr, "browser-up", epoch, acked as usize).await;
    assert_one_to("what the page published, as stored", &stored, acked);
}

/// Two topic clients started together in the page, with `WebSocket`
/// wrapped to record when each socket was made and how it closed.
const ADMISSION: &str = r#"
(async () => {
  const r = window.__r = { opens: [], closes: [], got: [] };
  const Native = WebSocket;
  window.WebSocket = class extends Native {
    constructor(url, protocols) {
      super(url, protocols);
      const topic = new URL(url).pathname.split('/')[2];
      r.opens.push({ topic, at: Date.now() });
      this.addEventListener('close', (e) =>
        r.closes.push({ topic, at: Date.now(), code: e.code, reason: e.reason }));
    }
  };
  const { Topic } = await import(location.origin + '/topics.js');
  for (const name of ['admission-a', 'admission-b']) {
    new Topic(name, {
      since: SINCE[name],
      onMessage: (m) => r.got.push(name + ':' + m.data),
      minDelay: 100,
    });
  }
  return 'started';
})()
"#;

// Reconnect admission as a page meets it: with --max-new-sessions 1:1 two
// topic clients connect at once; the second is accepted and closed with
// 1013 and "retry after N" (a page cannot read a 503), and the client waits
// those N seconds, not its 100 ms back-off, before it connects again; then
// it gets the message published while it waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_topics_client_waits_as_long_as_a_refusal_says() {
    let server = Child::serve(BIN, &["--max-new-sessions", "1:1"]);
    let addr = server.addr;
    let origin = format!("http://{addr}");
    let mut since = serde_json::Map::new();
    for topic in ["admission-a", "admission-b"] {
        let zero = send(
            addr,
            "POST",
            &format!("/topics/{topic}"),
            &[],
            b"0",
            5 * SEC,
        )
        .await
        .unwrap();
        let zero: Value = serde_json::from_slice(&zero.body).unwrap();
        since.insert(topic.into(), zero["position"].clone());
    }
    let chromium = Chromium::start(&format!("{origin}/readyz"));
    let mut page = chromium.page().await;
    page.loaded(&origin).await;
    let started = page
        .evaluate(&ADMISSION.replace("SINCE", &Value::Object(since).to_string()))
        .await;
    assert_eq!(started, "started");

    // The refusal, then a message for the refused client while it waits.
    let deadline = Instant::now() + 10 * SEC;
    let refused = loop {
        let r = page.evaluate("JSON.stringify(window.__r)").await;
        let r: Value = serde_json::from_str(r.as_str().unwrap()).unwrap();
        if let Some(close) = r["closes"].as_array().unwrap().first() {
            break close.clone();
        }
        assert!(Instant::now() < deadline, "no session was refused: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(refused["code"], 1013, "{refused}");
    let topic = refused["topic"].as_str().unwrap().to_owned();
    let wait: u64 = refused["reason"]
        .as_str()
        .and_then(|r| r.strip_prefix("retry after "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{refused}"));
    assert!((1..=6).contains(&wait), "{refused}");
    let res = send(
        addr,
        "POST",
        &format!("/topics/{topic}"),
        &[],
        b"1",
        5 * SEC,
    )
    .await
    .unwrap();
    assert_eq!(res.status, 202, "stored");

    let deadline = Instant::now() + Duration::from_secs(wait + 10);
    let r = loop {
        let r = page.evaluate("JSON.stringify(window.__r)").await;
        let r: Value = serde_json::from_str(r.as_str().unwrap()).unwrap();
        if r["got"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g == &Value::from(format!("{topic}:1")))
        {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the refused client never caught up: {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let opens: Vec<u64> = r["opens"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["topic"] == topic.as_str())
        .map(|o| o["at"].as_u64().unwrap())
        .collect();
    assert_eq!(opens.len(), 2, "one refused attempt, one that worked: {r}");
    let closed_at = refused["at"].as_u64().unwrap();
    assert!(
        opens[1] >= closed_at + wait * 1000,
        "came back {} ms after a refusal that said {wait} s: {r}",
        opens[1] - closed_at
    );
    assert_eq!(
        r["closes"].as_array().unwrap().len(),
        1,
        "only one refusal: {r}"
    );
    server.drains_cleanly();
}
