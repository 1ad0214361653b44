//! A real HAProxy (Debian's `haproxy`) in front of `lameduck` instances,
//! for fleet tests: a config on free loopback ports, its runtime socket,
//! and the process killed on drop.

use std::{
    io::{Read, Write},
    net::SocketAddr,
    os::unix::net::UnixStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A free loopback port for a server a test starts later, below the
/// kernel's ephemeral range: a port from that range (what binding port 0
/// gives) can be taken meanwhile by any client socket of the test, and a
/// fleet test opens thousands. Bound, then released; another process could
/// still take it in between, which loopback tests accept.
pub fn free_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if low > 11_000 {
        for _ in 0..200 {
            let port = fastrand::u16(10_000..low);
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// HAProxy with one frontend and one backend (`be`) of server slots
/// `s0`, `s1`, ... on the given ports. Slots start in maintenance except
/// the first `live` ones; health checks are `GET /readyz` every 300 ms
/// (rise 2, fall 2), with `retries 3` and `option redispatch`.
pub struct Haproxy {
    child: Child,
    dir: tempfile::TempDir,
    /// The frontend's address: where clients connect.
    pub front: SocketAddr,
}

impl std::fmt::Debug for Haproxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Haproxy")
            .field("front", &self.front)
            .finish()
    }
}

impl Haproxy {
    /// Starts HAProxy for `slots` and waits (10 s at most) for its
    /// frontend.
    ///
    /// # Panics
    ///
    /// When `haproxy` is not installed (`.ci/run` installs it) or does not
    /// start.
    pub fn start(slots: &[u16], live: usize) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for haproxy");
        let front = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let socket = dir.path().join("admin.sock");
        let mut cfg = format!(
            "global\n  maxconn 8192\n  stats socket {} mode 600 level admin\n\
             defaults\n  mode http\n  timeout connect 1s\n  timeout client 60s\n\
             \x20 timeout server 60s\n  timeout tunnel 60s\n  timeout http-keep-alive 60s\n\
             \x20 retries 3\n  option redispatch\n\
             frontend fe\n  bind {front}\n  default_backend be\n\
             backend be\n  balance roundrobin\n  option httpchk GET /readyz\n\
             \x20 http-check expect status 200\n  default-server inter 300ms rise 2 fall 2\n",
            socket.display()
        );
        for (i, port) in slots.iter().enumerate() {
            let state = if i < live { "" } else { " disabled" };
            cfg.push_str(&format!("  server s{i} 127.0.0.1:{port} check{state}\n"));
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).expect("write haproxy.cfg");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy (Debian package haproxy; .ci/run installs it)");
        let this = Self { child, dir, front };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(front).is_err() || !this.socket_path().exists() {
            assert!(Instant::now() < deadline, "haproxy did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        this
    }

    fn socket_path(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    /// Sends `command` on the runtime socket and returns the answer.
    pub fn command(&self, command: &str) -> String {
        let mut stream = UnixStream::connect(self.socket_path()).expect("haproxy runtime socket");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        stream
            .write_all(format!("{command}\n").as_bytes())
            .expect("write to haproxy");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    }

    /// The status HAProxy gives server slot `slot` (`UP`, `DOWN`, `MAINT`,
    /// `UP 1/2`, ...).
    pub fn status(&self, slot: usize) -> String {
        let stat = self.command("show stat");
        let mut lines = stat.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or("")
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = |name: &str| header.iter().position(|h| *h == name);
        let (Some(px), Some(sv), Some(status)) = (col("pxname"), col("svname"), col("status"))
        else {
            return String::new();
        };
        let name = format!("s{slot}");
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f.get(px) == Some(&"be") && f.get(sv) == Some(&name.as_str()))
            .and_then(|f| f.get(status).map(|s| (*s).to_owned()))
            .unwrap_or_default()
    }

    /// Waits (`limit` at most) until slot `slot` is `UP`.
    ///
    /// # Panics
    ///
    /// When it is not by then.
    pub fn wait_up(&self, slot: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let status = self.status(slot);
            if status == "UP" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "slot s{slot} not UP within {limit:?}: {status}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
