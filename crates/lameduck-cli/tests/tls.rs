//! TLS on the real binary (`--tls-cert`, `--tls-key`), checked with a
//! rustls client: HTTP/2 and HTTP/1.1 by ALPN, a drain that ends every
//! connection with `close_notify` before its FIN, HTTP/2's GOAWAY with the
//! in-flight stream finished, WebSockets over TLS closed with 1001, failed
//! and stalled handshakes counted, bad certificate and key files refused
//! with the file named. Loopback only; every wait bounded.

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures_util::StreamExt;
use lameduck::rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName},
};
use lameduck_test_support::{Child, send};
use nix::sys::signal::Signal::SIGTERM;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
    time::timeout,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

const BIN: &str = env!("CARGO_BIN_EXE_lameduck");
const SEC: Duration = Duration::from_secs(1);

/// A self-signed certificate for `localhost` and 127.0.0.1, as PEM files
/// in a temp dir, and the DER a client trusts.
struct Cert {
    dir: tempfile::TempDir,
    der: CertificateDer<'static>,
}

impl Cert {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let made = lameduck_test_support::TestCert::new_in(dir.path());
        Self {
            der: CertificateDer::from(made.der),
            dir,
        }
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    /// `lameduck serve` with this certificate, and `extra` flags.
    fn serve(&self, extra: &[&str]) -> Child {
        let (cert, key) = (self.cert(), self.key());
        let mut args = vec![
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        Child::serve(BIN, &args)
    }

    /// A client that offers `alpn` and trusts only this certificate; it
    /// keeps the session tickets it is given, to resume with them.
    fn client(&self, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let mut config = ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// A TLS connection to `addr` offering `alpn`, trusting only this
    /// certificate.
    async fn connect(&self, addr: SocketAddr, alpn: &[&[u8]]) -> TlsStream<Observed> {
        connect_with(self.client(alpn), addr).await
    }
}

/// A TLS connection to `addr` with `config`.
async fn connect_with(config: Arc<ClientConfig>, addr: SocketAddr) -> TlsStream<Observed> {
    {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        timeout(
            10 * SEC,
            TlsConnector::from(config).connect(name, Observed::new(tcp)),
        )
        .await
        .expect("handshake in time")
        .expect("handshake")
    }
}

/// How the TLS layer saw its connection end, from below it: the TCP
/// socket, observed.
struct Observed {
    tcp: TcpStream,
}

impl Observed {
    fn new(tcp: TcpStream) -> Self {
        Self { tcp }
    }
}

impl AsyncRead for Observed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Observed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// How a TLS connection's reading end ended.
#[derive(Debug, PartialEq)]
enum TlsEnd {
    /// `close_notify`, then the end of the stream: a clean close.
    CloseNotify,
    /// The TCP stream ended without `close_notify` (rustls reports
    /// `UnexpectedEof`): a truncation a client cannot tell from an attack.
    Truncated,
    Other(String),
}

/// Reads until the connection ends (15 s at most) and says how.
async fn tls_end(tls: &mut TlsStream<Observed>) -> TlsEnd {
    let mut buf = [0u8; 4096];
    let end = timeout(15 * SEC, async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) => return TlsEnd::CloseNotify,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return TlsEnd::Truncated,
                Err(e) => return TlsEnd::Other(e.to_string()),
            }
        }
    })
    .await;
    end.expect("the connection ends in time")
}

/// `GET path` on an HTTP/1.1 TLS connection; the response's head and body.
async fn get_h1(tls: &mut TlsStream<Observed>, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // One small response: read until its body (Content-Length) is in.
    timeout(10 * SEC, async {
        loop {
            let n = tls.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the response");
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    return;
                }
            }
        }
    })
    .await
    .expect("a response in time");
    String::from_utf8_lossy(&got).into_owned()
}

// HTTP/1.1 over TLS, chosen by ALPN: served; then the drain closes the idle
// keep-alive connection with close_notify before its FIN (a client sees a
// clean end, not a truncation), and the server exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_closes_tls_connections_with_close_notify() {
    let cert = Cert::new();
    let mut server = cert.serve(&["--drain-timeout", "10s"]);
    let mut tls = cert.connect(server.addr, &[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let response = get_h1(&mut tls, "/ping").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    server.signal(SIGTERM);
    assert_eq!(tls_end(&mut tls).await, TlsEnd::CloseNotify);
    assert_eq!(server.expect_exit(30 * SEC).code(), Some(0));
}

// HTTP/2 over TLS (ALPN h2): the stream in flight at the drain finishes,
// the client is told GOAWAY (the connection ends cleanly and no new stream
// is accepted), and the TLS connection ends with close_notify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_over_tls_finishes_in_flight_streams_through_a_drain() {
    let cert = Cert::new();
    let mut server = cert.serve(&["--drain-timeout", "20s"]);
    let tls = cert.connect(server.addr, &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let end = Arc::new(AtomicU8::new(0));
    let (client, connection) = h2::client::handshake(Watched {
        inner: Some(tls),
        end: end.clone(),
    })
    .await
    .unwrap();
    let driver = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::get("https://localhost/slow?ms=2000")
        .body(())
        .unwrap();
    let (in_flight, _) = client.send_request(request, true).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.signal(SIGTERM);
    server.expect_event("shutdown.draining", 10 * SEC);

    let response = timeout(10 * SEC, in_flight).await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = timeout(10 * SEC, body.data()).await.unwrap() {
        bytes.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(String::from_utf8_lossy(&bytes), r#"{"slept_ms":2000}"#);
    let ended = timeout(10 * SEC, driver)
        .await
        .expect("connection ended")
        .unwrap();
    assert!(ended.is_ok(), "connection error: {ended:?}");
    let late = http::Request::get("https://localhost/ping")
        .body(())
        .unwrap();
    let refused = match client.send_request(late, true) {
        Err(err) => Some(err),
        Ok((res, _)) => timeout(5 * SEC, res).await.unwrap().err(),
    };
    assert!(refused.is_some(), "a new stream was accepted after GOAWAY");
    drop(client);
    let deadline = std::time::Instant::now() + 15 * SEC;
    while end.load(Ordering::Relaxed) == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        end.load(Ordering::Relaxed),
        CLEAN,
        "the TLS stream under HTTP/2 ended with close_notify (1), not truncated (2)"
    );
    assert_eq!(server.expect_exit(30 * SEC).code(), Some(0));
}

const CLEAN: u8 = 1;
const TRUNCATED: u8 = 2;

/// A TLS stream that records how its reading end ended, for a protocol
/// (h2) that owns it; dropped (h2 lets go of it once GOAWAY is done), it
/// reads on to the end.
struct Watched {
    inner: Option<TlsStream<Observed>>,
    end: Arc<AtomicU8>,
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Some(mut tls) = self.inner.take() {
            let end = self.end.clone();
            tokio::spawn(async move {
                let how = match tls_end(&mut tls).await {
                    TlsEnd::CloseNotify => CLEAN,
                    TlsEnd::Truncated => TRUNCATED,
                    TlsEnd::Other(_) => 3,
                };
                end.store(how, Ordering::Relaxed);
            });
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(self.inner.as_mut().unwrap()).poll_read(cx, buf);
        match &res {
            Poll::Ready(Ok(())) if buf.filled().len() == before => {
                self.end.store(CLEAN, Ordering::Relaxed);
            }
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                self.end.store(TRUNCATED, Ordering::Relaxed);
            }
            _ => {}
        }
        res
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.inner.as_mut().unwrap()).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.inner.as_mut().unwrap()).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.inner.as_mut().unwrap()).poll_shutdown(cx)
    }
}

// A WebSocket over TLS (wss) echoes messages small and large (rustls's
// reads pass through the upgraded connection's read-ahead, under a
// 512-byte WebSocket read buffer), gets Close 1001 at the drain, and its
// TLS connection then ends with close_notify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_gets_1001_and_close_notify_at_the_drain() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let cert = Cert::new();
    let mut server = cert.serve(&["--drain-timeout", "10s"]);
    let tls = cert.connect(server.addr, &[b"http/1.1"]).await;
    let (mut ws, res) = timeout(
        10 * SEC,
        tokio_tungstenite::client_async("wss://localhost/ws", tls),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(res.status(), 101);
    for len in [1usize, 511, 513, 8_193, 70_000, 300_000] {
        let sent: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
        ws.send(Message::binary(sent.clone())).await.unwrap();
        let echo = timeout(10 * SEC, ws.next())
            .await
            .unwrap_or_else(|_| panic!("echo of {len} bytes in time"))
            .expect("an echo")
            .expect("no error");
        assert_eq!(echo.into_data().as_ref(), &sent[..], "{len} bytes over TLS");
    }
    server.signal(SIGTERM);
    let code = timeout(15 * SEC, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                _ => return None,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(code, Some(1001));
    // tungstenite answers the Close; the server then ends the connection.
    let mut tls = ws.into_inner();
    assert_eq!(tls_end(&mut tls).await, TlsEnd::CloseNotify);
    assert_eq!(server.expect_exit(30 * SEC).code(), Some(0));
}

/// `lameduck_tls_handshakes_failed_total` from the admin endpoint.
async fn failed_handshakes(admin: SocketAddr) -> u64 {
    let res = send(admin, "GET", "/metrics", &[], b"", 5 * SEC)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&res.body).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("lameduck_tls_handshakes_failed_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no lameduck_tls_handshakes_failed_total in {text}"))
}

// A client that speaks plain HTTP to the TLS port, and one that opens a
// connection and never says hello, are counted as failed handshakes (the
// second once the header-read timeout passes) and closed; the server goes
// on serving TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_and_stalled_handshakes_are_counted_and_closed() {
    let cert = Cert::new();
    let server = cert.serve(&["--header-read-timeout", "1s"]);
    let admin = server.admin_addr.expect("admin address");
    let mut plain = TcpStream::connect(server.addr).await.unwrap();
    plain
        .write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    // rustls answers a non-TLS hello with an alert, then closes.
    timeout(5 * SEC, async {
        while plain.read(&mut buf).await.unwrap_or(0) > 0 {}
    })
    .await
    .expect("the plain-text client is closed");
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let closed = timeout(5 * SEC, silent.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "a silent client is closed at the header-read timeout: {closed:?}"
    );
    assert_eq!(failed_handshakes(admin).await, 2);
    let mut tls = cert.connect(server.addr, &[b"http/1.1"]).await;
    assert!(get_h1(&mut tls, "/ping").await.starts_with("HTTP/1.1 200"));
    drop(tls);
    server.drains_cleanly();
}

/// Runs `lameduck serve` with `args` expecting it to exit at once: its
/// code and stderr.
fn refused(args: &[&str]) -> (Option<i32>, String) {
    let mut serve = std::process::Command::new(BIN);
    serve
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(args);
    let (status, stderr) = lameduck_test_support::run_to_exit(serve, 10 * SEC);
    (status.code(), stderr)
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

// Bad certificate and key files are refused at start with the file named
// (exit 1); a certificate without a key is bad usage (exit 64).
#[test]
fn bad_certificate_and_key_files_are_refused_with_the_file_named() {
    let a = Cert::new();
    let b = Cert::new();
    let missing = a.dir.path().join("nowhere.pem");
    let garbage = a.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();

    let (code, err) = refused(&["--tls-cert", path(&missing), "--tls-key", path(&a.key())]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("nowhere.pem") && err.contains("--tls-cert"),
        "{err}"
    );

    let (code, err) = refused(&["--tls-cert", path(&garbage), "--tls-key", path(&a.key())]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("garbage.pem"), "{err}");

    let (code, err) = refused(&["--tls-cert", path(&a.cert()), "--tls-key", path(&garbage)]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("garbage.pem") && err.contains("--tls-key"),
        "{err}"
    );

    // A's certificate with B's key.
    let (code, err) = refused(&["--tls-cert", path(&a.cert()), "--tls-key", path(&b.key())]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("does not go with"), "{err}");

    let (code, err) = refused(&["--tls-cert", path(&a.cert())]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("--tls-key"), "{err}");
}

// Sessions resume across an upgrade: the successor inherited the ticket
// keys (a memory-only file handed over with the sockets), so a client
// that held a ticket from the old process gets an abbreviated handshake
// from the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_resume_across_an_upgrade() {
    use lameduck::rustls::HandshakeKind;
    let cert = Cert::new();
    let server = cert.serve(&["--upgrade-probation", "0s"]);
    let client = cert.client(&[b"http/1.1"]);
    let mut first = connect_with(client.clone(), server.addr).await;
    assert_eq!(
        first.get_ref().1.handshake_kind(),
        Some(HandshakeKind::Full)
    );
    // TLS 1.3 tickets come after the handshake: a response reads them.
    assert!(
        get_h1(&mut first, "/ping")
            .await
            .starts_with("HTTP/1.1 200")
    );
    drop(first);
    let mut pids = vec![server.pid()];
    server.upgrade(&mut pids, 30 * SEC);
    let mut second = connect_with(client.clone(), server.addr).await;
    assert_eq!(
        second.get_ref().1.handshake_kind(),
        Some(HandshakeKind::Resumed),
        "the successor resumed a session of its predecessor"
    );
    let response = get_h1(&mut second, "/readyz").await;
    assert!(
        response.contains(&format!("\"pid\":{}", pids[1])),
        "answered by the successor: {response}"
    );
}

/// A client trusting every one of `certs`, resuming no session (a resumed
/// one shows the certificate of the session it resumes, not the one the
/// server has now).
fn client_trusting(certs: &[&Cert]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots.add(c.der.clone()).unwrap();
    }
    let mut config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = lameduck::rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// The certificate the server presented on `tls`.
fn presented(tls: &TlsStream<Observed>) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

// Certificates renewed in place (cert-manager rewrites the files) are
// served to new connections without a restart, while an open connection
// goes on; a version that does not parse keeps the one before and says
// why. Then an upgrade's successor reads what is on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_renewed_in_place_or_by_an_upgrade_are_served() {
    let (a, b) = (Cert::new(), Cert::new());
    let server = a.serve(&["--upgrade-probation", "0s"]);
    let client = client_trusting(&[&a, &b]);
    let mut open = connect_with(client.clone(), server.addr).await;
    assert_eq!(presented(&open), a.der);

    std::fs::copy(b.cert(), a.cert()).unwrap();
    std::fs::copy(b.key(), a.key()).unwrap();
    server.expect_event("tls.cert_reloaded", 10 * SEC);
    let renewed = connect_with(client.clone(), server.addr).await;
    assert_eq!(
        presented(&renewed),
        b.der,
        "new connections get the new certificate"
    );
    assert!(
        get_h1(&mut open, "/ping").await.starts_with("HTTP/1.1 200"),
        "the open one goes on"
    );

    // (Copying the two files one after the other may have been seen half
    // done, a key that does not match: that failure is not this one.)
    let before = server.events("tls.cert_reload_failed").len();
    std::fs::write(a.cert(), "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    let deadline = std::time::Instant::now() + 10 * SEC;
    while server.events("tls.cert_reload_failed").len() == before {
        assert!(
            std::time::Instant::now() < deadline,
            "no tls.cert_reload_failed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failed = server.events("tls.cert_reload_failed").pop().unwrap();
    assert!(failed.to_string().contains("cert.pem"), "{failed}");
    let kept = connect_with(client.clone(), server.addr).await;
    assert_eq!(
        presented(&kept),
        b.der,
        "a broken file keeps the certificate before it"
    );

    // A third certificate on disk, then an upgrade: the successor serves it.
    let c = Cert::new();
    std::fs::copy(c.cert(), a.cert()).unwrap();
    std::fs::copy(c.key(), a.key()).unwrap();
    let mut pids = vec![server.pid()];
    server.upgrade(&mut pids, 30 * SEC);
    let upgraded = connect_with(client_trusting(&[&a, &b, &c]), server.addr).await;
    assert_eq!(
        presented(&upgraded),
        c.der,
        "the successor serves what is on disk"
    );
}

/// Runs `openssl s_client` against `addr` (trusting `cert`) with `args`,
/// sending one request that closes the connection; its stdout.
fn s_client(addr: SocketAddr, cert: &Cert, args: &[&str]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
        ])
        .arg("-CAfile")
        .arg(cert.cert())
        .args(["-ign_eof"])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl (.ci/run installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET /ping HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let deadline = std::time::Instant::now() + 10 * SEC;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("openssl s_client did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    out
}

// The same, seen by OpenSSL: a session saved with `-sess_out` from the old
// process is `Reused` by the successor with `-sess_in`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_reuses_its_session_across_an_upgrade() {
    let cert = Cert::new();
    let server = cert.serve(&["--upgrade-probation", "0s"]);
    let session = cert.dir.path().join("session.pem");
    let session = path(&session);
    let addr = server.addr;
    let first = tokio::task::block_in_place(|| s_client(addr, &cert, &["-sess_out", session]));
    assert!(first.contains("New, TLSv1.3"), "{first}");
    assert!(first.contains("HTTP/1.1 200"), "{first}");
    let mut pids = vec![server.pid()];
    server.upgrade(&mut pids, 30 * SEC);
    let again = tokio::task::block_in_place(|| s_client(addr, &cert, &["-sess_in", session]));
    assert!(again.contains("Reused, TLSv1.3"), "{again}");
    assert!(again.contains("HTTP/1.1 200"), "{again}");
}
