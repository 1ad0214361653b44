//! The admin listener on the real binary: metrics that match what the test
//! did, and drain/upgrade endpoints that are disabled without a token and
//! refuse a wrong one without a hint.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use lameduck_test_support::{Child, get, post_json, send};
use tokio::{io::AsyncWriteExt, net::TcpStream, time::timeout};
use tokio_tungstenite::client_async;

const BIN: &str = env!("CARGO_BIN_EXE_lameduck");
const SEC: Duration = Duration::from_secs(1);

/// Starts the binary with `LAMEDUCK_ADMIN_TOKEN` set (or not).
fn serve_with_token(token: Option<&str>) -> Child {
    let (mut command, dir) = Child::serve_command(BIN, &[]);
    command.env_remove("LAMEDUCK_ADMIN_TOKEN");
    if let Some(token) = token {
        command.env("LAMEDUCK_ADMIN_TOKEN", token);
    }
    Child::spawn(command, dir)
}

/// `name{labels}` → value, from OpenMetrics text; panics on a line that is
/// neither a comment nor a sample.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {l:?}"));
            (name.to_owned(), value)
        })
        .collect()
}

async fn metrics(admin: SocketAddr) -> HashMap<String, f64> {
    let res = get(admin, "/metrics", 5 * SEC).await.unwrap();
    assert_eq!(res.status, 200);
    assert!(
        res.header("content-type")
            .unwrap_or("")
            .starts_with("application/openmetrics-text")
    );
    parse_metrics(&String::from_utf8(res.body).unwrap())
}

// Metrics count what the test did: requests, open WebSockets and SSE
// streams, jobs by state, the phase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_what_happened() {
    let server = serve_with_token(None);
    let (addr, admin) = (
        server.addr,
        server.admin_addr.expect("admin address logged"),
    );
    for _ in 0..10 {
        assert_eq!(get(addr, "/ping", 5 * SEC).await.unwrap().status, 200);
    }
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (ws, _) = client_async(format!("ws://{addr}/ws"), tcp).await.unwrap();
        sockets.push(ws);
    }
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /events HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        streams.push(tcp);
    }
    for _ in 0..2 {
        let res = post_json(
            addr,
            "/jobs",
            &[],
            r#"{"kind":"sleep","steps":1,"step_ms":1}"#,
            5 * SEC,
        )
        .await
        .unwrap();
        assert_eq!(res.status, 202);
    }

    // The SSE streams and the jobs settle asynchronously: poll (bounded).
    let mut m = HashMap::new();
    for _ in 0..100 {
        m = metrics(admin).await;
        if m.get("lameduck_sse_streams") == Some(&2.0)
            && m.get(r#"lameduck_jobs{state="completed"}"#) == Some(&2.0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(m[r#"lameduck_connections{kind="websocket"}"#], 3.0, "{m:?}");
    assert_eq!(m["lameduck_websocket_upgrades_total"], 3.0);
    assert_eq!(m["lameduck_sse_streams"], 2.0);
    assert_eq!(m[r#"lameduck_jobs{state="completed"}"#], 2.0);
    assert_eq!(m[r#"lameduck_jobs{state="dead"}"#], 0.0);
    assert_eq!(m["lameduck_journal_up"], 1.0);
    assert_eq!(m[r#"lameduck_phase{phase="serving"}"#], 1.0);
    assert_eq!(m[r#"lameduck_phase{phase="draining"}"#], 0.0);
    assert_eq!(m["lameduck_drain_duration_seconds"], 0.0);
    // 10 pings, 3 upgrades, 2 SSE streams, 2 job submissions.
    assert_eq!(m["lameduck_requests_total"], 17.0);
    // 10 pings on their own connections + 3 + 2 + 2, all accepted.
    assert_eq!(m["lameduck_connections_accepted_total"], 17.0);
    assert_eq!(m["lameduck_connections_cut_total"], 0.0);
    drop(sockets);
    drop(streams);
}

// Without a token the drain endpoint is disabled (and the service keeps
// serving); with one, a missing or wrong token gets 401 with no hint, and
// the right one starts the drain: the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_drain_needs_the_token() {
    let open = serve_with_token(None);
    let admin = open.admin_addr.unwrap();
    let res = send(
        admin,
        "POST",
        "/admin/drain",
        &[("Authorization", "Bearer x")],
        b"",
        5 * SEC,
    )
    .await
    .unwrap();
    assert_eq!(res.status, 404);
    assert!(res.json()["error"].as_str().unwrap().contains("disabled"));
    assert_eq!(
        get(open.addr, "/readyz", 5 * SEC).await.unwrap().status,
        200,
        "still serving"
    );
    drop(open);

    let mut server = serve_with_token(Some("s3cret-token"));
    let admin = server.admin_addr.unwrap();
    let mut bodies = Vec::new();
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer s3cret-toke"),
        Some("s3cret-token"),
    ] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        let res = send(admin, "POST", "/admin/drain", &headers, b"", 5 * SEC)
            .await
            .unwrap();
        assert_eq!(res.status, 401, "{auth:?}");
        bodies.push(res.body);
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "every refusal looks the same"
    );
    assert_eq!(
        get(server.addr, "/readyz", 5 * SEC).await.unwrap().status,
        200
    );

    let res = send(
        admin,
        "POST",
        "/admin/drain",
        &[("Authorization", "Bearer s3cret-token")],
        b"",
        5 * SEC,
    )
    .await
    .unwrap();
    assert_eq!(res.status, 202);
    assert_eq!(res.json()["started"], true);
    let status = server.expect_exit(20 * SEC);
    assert_eq!(status.code(), Some(0));
    let begin = server.events("shutdown.begin");
    assert!(
        begin[0]["reason"]
            .as_str()
            .unwrap()
            .contains("/admin/drain"),
        "{begin:?}"
    );
}

// POST /admin/upgrade upgrades like SIGHUP and answers with the new pid once
// it serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_upgrade_hands_over() {
    let server = serve_with_token(Some("t0ken"));
    let admin = server.admin_addr.unwrap();
    let res = timeout(
        30 * SEC,
        send(
            admin,
            "POST",
            "/admin/upgrade",
            &[("Authorization", "Bearer t0ken")],
            b"",
            30 * SEC,
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
    let new_pid = res.json()["new_pid"].as_u64().unwrap();
    assert_ne!(new_pid, u64::from(server.pid()));
    let deadline = std::time::Instant::now() + 20 * SEC;
    loop {
        let live = get(server.addr, "/livez", 5 * SEC).await.unwrap().json();
        if live["pid"].as_u64() == Some(new_pid) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new process never answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// The admin address belongs to one service: a second instance given the
// same address exits 1 naming the address and the flag, instead of
// sharing the port (with SO_REUSEPORT the kernel spread scrapes, and drain
// requests, over both); the first keeps serving its admin plane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_cannot_take_the_admin_address() {
    let first = serve_with_token(None);
    let admin = first.admin_addr.expect("admin address");
    let dir = tempfile::tempdir().unwrap();
    let journal = format!("sqlite:{}", dir.path().join("jobs.db").display());
    let mut second = std::process::Command::new(BIN);
    second
        .args(["serve", "--listen", "127.0.0.1:0", "--journal", &journal])
        .args(["--admin-listen", &admin.to_string()]);
    let (status, stderr) = lameduck_test_support::run_to_exit(second, 10 * SEC);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&admin.to_string()), "{stderr}");
    assert!(stderr.contains("--admin-listen"), "{stderr}");

    for _ in 0..6 {
        let m = metrics(admin).await;
        assert_eq!(m["lameduck_phase{phase=\"serving\"}"], 1.0);
    }
    assert_eq!(get(first.addr, "/ping", 5 * SEC).await.unwrap().status, 200);
}

/// Sends `request` to `to` from the source address `from`; the status and
/// the whole answer (the admin listener closes after one request).
async fn send_from(from: &str, to: SocketAddr, request: &str) -> (u16, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut tcp = timeout(5 * SEC, socket.connect(to)).await.unwrap().unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    timeout(
        5 * SEC,
        tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut answer),
    )
    .await
    .unwrap()
    .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"));
    (status, answer)
}

// `--admin-allow`: a source outside the list gets 403 on every admin route,
// before the token is looked at (a right token does not help), and is
// logged once however often it asks; listed sources are served as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_sources_outside_the_allowlist_get_403_before_the_token() {
    let (mut command, dir) = Child::serve_command(BIN, &[]);
    command.args(["--admin-allow", "127.0.0.1/32"]);
    command.env("LAMEDUCK_ADMIN_TOKEN", "s3cret");
    let server = Child::spawn(command, dir);
    let admin = server.admin_addr.expect("admin address");
    let scrape = "GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n";
    let drain = "POST /admin/drain HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer s3cret\r\n\
                 Content-Length: 0\r\n\r\n";

    let (status, answer) = send_from("127.0.0.2", admin, scrape).await;
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("--admin-allow"), "{answer}");
    let (status, answer) = send_from("127.0.0.2", admin, drain).await;
    assert_eq!(status, 403, "{answer}");
    let (status, _) = send_from("127.0.0.1", admin, scrape).await;
    assert_eq!(status, 200);

    let m = metrics(admin).await;
    assert_eq!(m["lameduck_admin_refused_sources_total"], 2.0);
    assert_eq!(
        m["lameduck_phase{phase=\"serving\"}"], 1.0,
        "the drain was refused"
    );
    let logged = server.events("admin.refused_source");
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!(logged[0]["peer"], "127.0.0.2", "{logged:?}");
}
