//! Redis for tests: the shared server at `REDIS_URL`, or a private
//! `redis-server` a test can stop.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// The Redis the tests share: `REDIS_URL`, default `redis://127.0.0.1:6379`.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A `redis-server` of the test's own, on a free port, with no automatic
/// persistence; killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<std::process::Child>,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl RedisServer {
    /// Starts `redis-server` (from `PATH`) on a free port and waits (10 s at
    /// most) until it answers `PING`.
    ///
    /// # Panics
    ///
    /// When `redis-server` is missing or does not come up: tests that need
    /// it fail rather than skip.
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        Self::start_on(port)
    }

    /// As [`RedisServer::start`], on `port` (to bring a stopped one back).
    ///
    /// # Panics
    ///
    /// As [`RedisServer::start`].
    pub fn start_on(port: u16) -> Self {
        Self::start_with(port, None)
    }

    /// As [`RedisServer::start_on`], keeping its data in `dir`: a `SAVE`
    /// writes a snapshot there, which the next server started in `dir`
    /// loads (a Redis restored from a backup).
    ///
    /// # Panics
    ///
    /// As [`RedisServer::start`].
    pub fn start_in(port: u16, dir: &std::path::Path) -> Self {
        Self::start_with(port, Some(dir))
    }

    fn start_with(port: u16, dir: Option<&std::path::Path>) -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut command = Command::new("redis-server");
        if let Some(dir) = dir {
            command.arg("--dir").arg(dir);
        }
        let child = command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (.ci/run installs it)");
        let server = Self {
            child: Some(child),
            addr,
        };
        // Loading a snapshot answers PING with -LOADING first.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !server.answers() {
            assert!(
                Instant::now() < deadline,
                "redis-server on {addr} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// `redis://ADDR`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
