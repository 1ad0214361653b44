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
