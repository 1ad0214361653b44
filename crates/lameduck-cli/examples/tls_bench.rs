//! TLS benchmarks against `lameduck serve --tls-cert --tls-key` (the binary
//! given), on loopback, with a rustls client:
//!
//! - full and resumed handshakes per second: `--conns` connections, each
//!   a handshake and one `GET /ping`, from 8 tasks; with session
//!   resumption off, then on (each task resumes with the ticket its last
//!   connection got);
//! - what a restart costs `--clients` clients that each hold a session:
//!   they all reconnect after an upgrade (SIGHUP: the successor inherits
//!   the ticket keys) and after a stop and a fresh start (no keys handed
//!   over), and the full handshakes are counted, with the time until all
//!   are served again.
//!
//! `cargo run --release -p lameduck-cli --example tls_bench --
//! target/release/lameduck [--conns 4000] [--clients 1000]`

use std::{
    net::SocketAddr,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use lameduck::rustls::{
    ClientConfig, HandshakeKind, RootCertStore,
    client::Resumption,
    pki_types::{CertificateDer, ServerName},
};
use lameduck_test_support::{Child, raise_fd_limit};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;

fn client(root: &CertificateDer<'static>, resume: bool) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let mut config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !resume {
        config.resumption = Resumption::disabled();
    }
    Arc::new(config)
}

/// One connection: a handshake, `GET /ping` (which also reads the TLS 1.3
/// tickets sent after the handshake), and a close. Whether the handshake
/// was resumed.
async fn one(config: &Arc<ClientConfig>, addr: SocketAddr) -> std::io::Result<bool> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await?;
    let resumed = tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
    tls.write_all(b"GET /ping HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut sink = Vec::new();
    tls.read_to_end(&mut sink).await.or_else(|e| {
        // A server that closed after its response without waiting for ours.
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Ok(0)
        } else {
            Err(e)
        }
    })?;
    if !sink.starts_with(b"HTTP/1.1 200") {
        return Err(std::io::Error::other("not a 200"));
    }
    Ok(resumed)
}

/// `n` connections from 8 tasks; connections per second and how many were
/// resumed.
async fn handshakes(
    root: &CertificateDer<'static>,
    addr: SocketAddr,
    n: usize,
    resume: bool,
) -> (f64, usize) {
    let began = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let config = client(root, resume);
            tokio::spawn(async move {
                let mut resumed = 0;
                for _ in 0..n / 8 {
                    resumed += usize::from(one(&config, addr).await.expect("a connection"));
                }
                resumed
            })
        })
        .collect();
    let mut resumed = 0;
    for t in tasks {
        resumed += t.await.unwrap();
    }
    ((n / 8 * 8) as f64 / began.elapsed().as_secs_f64(), resumed)
}

/// Each client connects once (keeping its tickets); then `restart` runs;
/// then all reconnect at once (each retrying until served, 30 s at most).
/// Full handshakes, and the time from the restart's end until all were
/// served.
async fn restart_cost(
    configs: &[Arc<ClientConfig>],
    addr: SocketAddr,
    restart: impl FnOnce(),
) -> (usize, Duration) {
    for c in configs {
        one(c, addr).await.expect("a first connection");
    }
    restart();
    let began = Instant::now();
    let tasks: Vec<_> = configs
        .iter()
        .cloned()
        .map(|c| {
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    match one(&c, addr).await {
                        Ok(resumed) => return resumed,
                        Err(e) => assert!(Instant::now() < deadline, "never served again: {e}"),
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect();
    let mut full = 0;
    for t in tasks {
        full += usize::from(!t.await.unwrap());
    }
    (full, began.elapsed())
}

fn serve(bin: &str, dir: &Path, listen: Option<SocketAddr>) -> Child {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let listen = listen.map_or("127.0.0.1:0".to_owned(), |a| a.to_string());
    Child::serve(
        bin,
        &[
            "--listen",
            &listen,
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--upgrade-probation",
            "0s",
            "--log-level",
            "warn,lameduck=info",
        ],
    )
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let bin = args.next().expect("the lameduck binary");
    let (mut conns, mut clients) = (4000usize, 1000usize);
    while let Some(flag) = args.next() {
        let v: usize = args.next().and_then(|v| v.parse().ok()).expect("a number");
        match flag.as_str() {
            "--conns" => conns = v,
            "--clients" => clients = v,
            other => panic!("unknown flag {other}"),
        }
    }
    raise_fd_limit(16_384);
    let dir = tempfile::tempdir().unwrap();
    let made = lameduck_test_support::TestCert::new_in(dir.path());
    let root = CertificateDer::from(made.der);

    let server = serve(&bin, dir.path(), None);
    let addr = server.addr;
    let (full_rate, _) = handshakes(&root, addr, conns, false).await;
    let (resumed_rate, resumed) = handshakes(&root, addr, conns, true).await;
    println!("| connections (handshake + GET /ping + close), 8 at a time | per second |");
    println!("|---|---|");
    println!("| full handshakes (resumption off) | {full_rate:.0} |");
    println!("| resumed handshakes ({resumed} of {conns} resumed) | {resumed_rate:.0} |");
    println!();

    let configs: Vec<_> = (0..clients).map(|_| client(&root, true)).collect();
    let mut pids = vec![server.pid()];
    let (upgrade_full, upgrade_time) = restart_cost(&configs, addr, || {
        server.upgrade(&mut pids, Duration::from_secs(30));
    })
    .await;
    drop(server);
    let configs: Vec<_> = (0..clients).map(|_| client(&root, true)).collect();
    let mut fresh = Some(serve(&bin, dir.path(), None));
    let addr2 = fresh.as_ref().unwrap().addr;
    let (restart_full, restart_time) = restart_cost(&configs, addr2, || {
        let mut old = fresh.take().unwrap();
        old.signal(nix::sys::signal::Signal::SIGTERM);
        old.expect_exit(Duration::from_secs(30));
        fresh = Some(serve(&bin, dir.path(), Some(addr2)));
    })
    .await;
    println!(
        "| {clients} clients holding a session reconnect after | full handshakes | until all served again |"
    );
    println!("|---|---|---|");
    println!(
        "| an upgrade (SIGHUP: ticket keys handed over) | {upgrade_full} | {} ms |",
        upgrade_time.as_millis()
    );
    println!(
        "| a stop and a fresh start (no keys handed over) | {restart_full} | {} ms |",
        restart_time.as_millis()
    );
    drop(fresh);
}
