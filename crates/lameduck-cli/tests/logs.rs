//! JSON logs of the real binary: every request has an id (the client's
//! `x-request-id` when it is sane, a generated one otherwise), echoed in the
//! response and carried by the request's log lines: a `request_id` field at
//! info, and a `request` span on every line with debug logging.

use std::time::{Duration, Instant};

use lameduck_test_support::{Child, post_json, run_to_exit, send};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_lameduck");
const SEC: Duration = Duration::from_secs(1);

/// The log lines (10 s at most to appear) named `name` whose `request_id`
/// field is `id`.
fn lines_for(server: &Child, name: &str, id: &str) -> Vec<Value> {
    lines_where(server, name, |l| l["request_id"] == id)
}

fn lines_where(server: &Child, name: &str, pick: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + 10 * SEC;
    loop {
        let found: Vec<Value> = server
            .events(name)
            .into_iter()
            .filter(|l| pick(l))
            .collect();
        if !found.is_empty() || Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_carry_their_id_on_every_log_line() {
    let mut server = Child::serve(BIN, &["--access-log"]);
    let addr = server.addr;

    // A sane id from the client is kept and echoed.
    let res = send(
        addr,
        "GET",
        "/ping",
        &[("x-request-id", "trace-abc.123")],
        b"",
        5 * SEC,
    )
    .await
    .unwrap();
    assert_eq!(res.header("x-request-id"), Some("trace-abc.123"));
    let access = lines_for(&server, "http.request", "trace-abc.123");
    assert_eq!(access.len(), 1, "{:#?}", server.logs());
    assert_eq!(access[0]["method"], "GET");
    assert_eq!(access[0]["path"], "/ping");
    assert_eq!(access[0]["status"], 200);
    assert!(access[0]["duration_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(access[0]["level"], "INFO");

    // No id, or one too long or with bytes unfit for a log: a fresh one,
    // different every time.
    let long = "x".repeat(200);
    let mut generated = Vec::new();
    for headers in [
        vec![],
        vec![("x-request-id", long.as_str())],
        vec![("x-request-id", "a\"b")],
    ] {
        let res = send(addr, "GET", "/nowhere", &headers, b"", 5 * SEC)
            .await
            .unwrap();
        assert_eq!(res.status, 404);
        let id = res.header("x-request-id").expect("an id").to_owned();
        assert!(
            id.len() > 17 && id.as_bytes()[16] == b'-',
            "generated ids look like <prefix>-<n>: {id}"
        );
        let access = lines_for(&server, "http.request", &id);
        assert_eq!(access.len(), 1, "{id}: {:#?}", server.logs());
        assert_eq!(access[0]["status"], 404);
        generated.push(id);
    }
    generated.sort();
    generated.dedup();
    assert_eq!(generated.len(), 3, "{generated:?}");

    // A handler's own lines carry the id: the accepted job names its id.
    let res = post_json(
        addr,
        "/jobs",
        &[("x-request-id", "submit-1")],
        r#"{"kind":"sleep","steps":1,"step_ms":0}"#,
        5 * SEC,
    )
    .await
    .unwrap();
    assert_eq!(res.status, 202);
    assert_eq!(res.header("x-request-id"), Some("submit-1"));
    let job = res.json()["id"].clone();
    let accepted = lines_for(&server, "job.accepted", "submit-1");
    assert_eq!(accepted.len(), 1, "{:#?}", server.logs());
    assert_eq!(accepted[0]["job"], Value::String(job.to_string()), "{job}");

    // Lines outside any request have no request span.
    let listening = server.events("server.listening");
    assert!(listening[0].get("span").is_none(), "{listening:?}");

    server.signal(nix::sys::signal::Signal::SIGTERM);
    let status = server.expect_exit(30 * SEC);
    assert_eq!(status.code(), Some(0), "{:#?}", server.logs());
}

// Without --access-log there is no line per request, and ids are still
// echoed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_is_off_by_default() {
    let server = Child::serve(BIN, &[]);
    let res = send(
        server.addr,
        "GET",
        "/ping",
        &[("x-request-id", "quiet")],
        b"",
        5 * SEC,
    )
    .await
    .unwrap();
    assert_eq!(res.header("x-request-id"), Some("quiet"));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        server.events("http.request").is_empty(),
        "{:#?}",
        server.logs()
    );
}

// With debug logging, lines written inside a request that do not name the
// id themselves (here the WebSocket session's end, logged long after the
// handshake's response) carry it through the `request` span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_lines_carry_the_request_span() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

    let server = Child::serve(BIN, &["--log-level", "info,lameduck=debug"]);
    let mut request = format!("ws://{}/ws", server.addr)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("x-request-id", "ws-7".parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut ws, response) =
        tokio::time::timeout(5 * SEC, tokio_tungstenite::client_async(request, tcp))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(response.headers()["x-request-id"], "ws-7");
    ws.send(Message::text("hi")).await.unwrap();
    ws.close(None).await.unwrap();
    let ended = lines_where(&server, "ws.end", |l| l["span"]["request_id"] == "ws-7");
    assert_eq!(ended.len(), 1, "{:#?}", server.logs());
    assert_eq!(ended[0]["span"]["name"], "request");
}

// A log reader that went away (a crashed log shipper, `| head`) leaves
// stderr a pipe with no reader: every line then fails with EPIPE. The
// service keeps serving, counts the lines it dropped in /metrics, and the
// first SIGTERM still drains it to exit 0. (tracing-subscriber's own
// report of a failed write panicked in whatever task logged it, the
// signal task included, and the process ignored SIGTERM.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_log_pipe_stops_neither_serving_nor_the_drain() {
    let (command, journal) = Child::serve_command(BIN, &["--access-log"]);
    let mut server = Child::spawn_logs_closed_after(command, journal, Some("server.listening"));
    let admin = server.admin_addr.expect("admin address");
    for i in 0..20 {
        let res = send(server.addr, "GET", "/ping", &[], b"", 5 * SEC)
            .await
            .unwrap_or_else(|e| panic!("request {i} after the log pipe closed: {e}"));
        assert_eq!(res.status, 200, "request {i}");
    }
    // Lines reach the writer thread through a queue, so the last access
    // lines may still be on their way when the first scrape is served.
    let deadline = Instant::now() + 10 * SEC;
    let dropped = loop {
        let metrics = send(admin, "GET", "/metrics", &[], b"", 5 * SEC)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&metrics.body).into_owned();
        let dropped: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("lameduck_log_lines_dropped_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no lameduck_log_lines_dropped_total in {text}"));
        if dropped >= 20 || Instant::now() > deadline {
            break dropped;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(dropped >= 20, "20 access lines were dropped: {dropped}");

    server.signal(nix::sys::signal::Signal::SIGTERM);
    let status = server.expect_exit(30 * SEC);
    assert_eq!(status.code(), Some(0));
}

// W3C trace context: a given `traceparent` is continued (same trace id, a
// span of the service's own, the sampled flag kept) in the response, and
// its trace id is the `trace_id` of the request's log lines, next to the
// request id; a malformed one is replaced, never echoed or logged; a
// request without one starts a trace of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_is_continued_into_the_response_and_the_log_lines() {
    let server = Child::serve(BIN, &["--access-log"]);
    let addr = server.addr;
    let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let res = post_json(
        addr,
        "/jobs",
        &[("x-request-id", "traced-1"), ("traceparent", given)],
        r#"{"kind":"sleep","steps":1,"step_ms":0}"#,
        5 * SEC,
    )
    .await
    .unwrap();
    assert_eq!(res.status, 202);
    let answered = res.header("traceparent").expect("a traceparent").to_owned();
    assert_eq!(&answered[..36], &given[..36], "{answered}");
    assert_ne!(
        &answered[36..52],
        &given[36..52],
        "a span of its own: {answered}"
    );
    assert!(answered.ends_with("-01"), "{answered}");
    for name in ["job.accepted", "http.request"] {
        let lines = lines_for(&server, name, "traced-1");
        assert_eq!(lines.len(), 1, "{name}: {:#?}", server.logs());
        assert_eq!(
            lines[0]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736",
            "{name}"
        );
    }

    let malformed = "00-4bf92f3577b34da6a3ce929d0e0e47ZZ-00f067aa0ba902b7-01";
    let res = send(
        addr,
        "GET",
        "/ping",
        &[("x-request-id", "traced-2"), ("traceparent", malformed)],
        b"",
        5 * SEC,
    )
    .await
    .unwrap();
    let answered = res.header("traceparent").expect("a traceparent").to_owned();
    assert!(
        !answered.contains("e47ZZ") && !answered.contains("4bf92f35"),
        "{answered}"
    );
    assert_eq!(answered.len(), 55, "{answered}");
    let line = &lines_for(&server, "http.request", "traced-2")[0];
    assert_eq!(line["trace_id"], answered[3..35], "{line}");
    assert!(
        !server
            .logs()
            .iter()
            .any(|l| l.to_string().contains("e47ZZ")),
        "never logged"
    );

    let res = send(
        addr,
        "GET",
        "/ping",
        &[("x-request-id", "traced-3")],
        b"",
        5 * SEC,
    )
    .await
    .unwrap();
    let started = res.header("traceparent").expect("a traceparent").to_owned();
    assert!(
        started.starts_with("00-") && started.ends_with("-00"),
        "{started}"
    );
    assert_ne!(&started[3..35], &answered[3..35], "a new trace per request");
    server.drains_cleanly();
}

// `--no-trace-context`: no `traceparent` is answered and no `trace_id` is
// logged, whatever the client sends; request ids go on as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_trace_context_answers_and_logs_no_trace() {
    let server = Child::serve(BIN, &["--access-log", "--no-trace-context"]);
    let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let res = send(
        server.addr,
        "GET",
        "/ping",
        &[("x-request-id", "untraced-1"), ("traceparent", given)],
        b"",
        5 * SEC,
    )
    .await
    .unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(res.header("x-request-id"), Some("untraced-1"));
    assert_eq!(res.header("traceparent"), None);
    let line = &lines_for(&server, "http.request", "untraced-1")[0];
    assert!(line.get("trace_id").is_none(), "{line}");
    server.drains_cleanly();

    // Span export needs the trace context: the two together are refused.
    let mut both = std::process::Command::new(BIN);
    both.args([
        "serve",
        "--no-trace-context",
        "--otlp-endpoint",
        "http://127.0.0.1:1",
    ]);
    let (status, stderr) = run_to_exit(both, 10 * SEC);
    assert_eq!(status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("--otlp-endpoint"), "{stderr}");
}

/// An OTLP/HTTP receiver on 127.0.0.1 that keeps every request body
/// (protobuf `ExportTraceServiceRequest`s) and answers each with an empty
/// success.
async fn otlp_receiver() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
) {
    use http_body_util::BodyExt;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = bodies.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let kept = kept.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let kept = kept.clone();
                        async move {
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes().to_vec())
                                .unwrap_or_default();
                            kept.lock().unwrap().push(body);
                            let answer = hyper::Response::builder()
                                .header("content-type", "application/x-protobuf")
                                .body(http_body_util::Full::new(bytes::Bytes::new()))
                                .unwrap();
                            Ok::<_, std::convert::Infallible>(answer)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (addr, bodies)
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

// Spans over OTLP: with --otlp-endpoint, each request's span reaches the
// collector (a receiver this test runs) under the trace its `traceparent`
// named, with the span id the response told the client, including a
// request served during the drain (the exporter is flushed at its end);
// a collector that is down changes nothing for the requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_receiver_including_those_of_the_drain() {
    let (collector, bodies) = otlp_receiver().await;
    let endpoint = format!("http://{collector}");
    let mut server = Child::serve(
        BIN,
        &["--otlp-endpoint", &endpoint, "--drain-timeout", "20s"],
    );
    let addr = server.addr;
    let first = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let res = send(
        addr,
        "GET",
        "/ping",
        &[("traceparent", first)],
        b"",
        5 * SEC,
    )
    .await
    .unwrap();
    let answered_first = res.header("traceparent").unwrap().to_owned();
    assert_eq!(&answered_first[..36], &first[..36], "{answered_first}");

    let during = "00-5b8aa5a2d2c872e8321cf37308d69df2-051581bf3cb55c13-01";
    let slow = tokio::spawn(async move {
        send(
            addr,
            "GET",
            "/slow?ms=1500",
            &[
                ("traceparent", during),
                ("tracestate", "lameduck=t61rcWkgMzE"),
            ],
            b"",
            10 * SEC,
        )
        .await
        .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.signal(nix::sys::signal::Signal::SIGTERM);
    let res = slow.await.unwrap();
    assert_eq!(res.status, 200);
    let answered_during = res.header("traceparent").unwrap().to_owned();
    assert_eq!(&answered_during[..36], &during[..36], "{answered_during}");
    assert_eq!(server.expect_exit(30 * SEC).code(), Some(0));

    let bodies = bodies.lock().unwrap().concat();
    for (name, answered) in [
        ("before", &answered_first),
        ("during the drain", &answered_during),
    ] {
        let trace = unhex(&answered[3..35]);
        let span = unhex(&answered[36..52]);
        let found = |needle: &[u8]| bodies.windows(needle.len()).any(|w| w == needle);
        assert!(
            found(&trace),
            "the trace of the request {name} was exported"
        );
        assert!(found(&span), "the span of the request {name} was exported");
    }
    assert!(
        bodies
            .windows(b"lameduck=t61rcWkgMzE".len())
            .any(|w| w == b"lameduck=t61rcWkgMzE"),
        "the tracestate of a continued trace goes on in its span"
    );

    // A collector that is down: requests are served, the drain ends.
    let server = Child::serve(BIN, &["--otlp-endpoint", "http://127.0.0.1:1"]);
    for _ in 0..20 {
        let res = send(server.addr, "GET", "/ping", &[], b"", 5 * SEC)
            .await
            .unwrap();
        assert_eq!(res.status, 200);
    }
    server.drains_cleanly();
}
