//! A real headless Chromium (Debian's `chromium`), driven over its
//! DevTools protocol: what a browser sees, not what a test client thinks
//! it would.

use std::{
    os::unix::process::CommandExt,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::{WebSocketStream, tungstenite::Message};

/// A headless Chromium with a fresh profile, in its own process group,
/// all of which is killed on drop.
#[derive(Debug)]
pub struct Chromium {
    child: std::process::Child,
    profile: tempfile::TempDir,
    /// Its DevTools HTTP and WebSocket port, on 127.0.0.1.
    pub devtools_port: u16,
}

impl Chromium {
    /// Starts Chromium on `url` and waits (20 s at most) until its
    /// DevTools port is open. Background networking is off: this machine
    /// reaches nothing but 127.0.0.1.
    ///
    /// # Panics
    ///
    /// When `chromium` is missing (`.ci/run` installs it) or does not come
    /// up.
    pub fn start(url: &str) -> Self {
        let profile = tempfile::tempdir().expect("a temp dir for the profile");
        let child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromium on PATH (.ci/run installs it)");
        let mut chromium = Self {
            child,
            profile,
            devtools_port: 0,
        };
        // Chromium writes the port it chose to this file once it listens.
        let file = chromium.profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(20);
        chromium.devtools_port = loop {
            if let Some(port) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|s| s.lines().next()?.trim().parse().ok())
            {
                break port;
            }
            assert!(Instant::now() < deadline, "chromium never opened DevTools");
            std::thread::sleep(Duration::from_millis(50));
        };
        chromium
    }

    /// The first page (tab), once it has one, connected over DevTools.
    ///
    /// # Panics
    ///
    /// When no page shows up within 20 s.
    pub async fn page(&self) -> Page {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.devtools_port));
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = loop {
            let targets = crate::get(addr, "/json/list", Duration::from_secs(5))
                .await
                .ok()
                .and_then(|r| serde_json::from_slice::<Value>(&r.body).ok());
            let page = targets.as_ref().and_then(|t| {
                t.as_array()?.iter().find(|t| t["type"] == "page")?["webSocketDebuggerUrl"]
                    .as_str()
                    .map(str::to_owned)
            });
            if let Some(url) = page {
                break url;
            }
            assert!(Instant::now() < deadline, "chromium shows no page");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let tcp = TcpStream::connect(addr).await.expect("DevTools connect");
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::client_async(url.as_str(), tcp),
        )
        .await
        .expect("DevTools handshake in time")
        .expect("DevTools handshake");
        Page { ws, next_id: 1 }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // The renderer and helpers are in the same group.
        let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// A page of a [`Chromium`], over DevTools.
#[derive(Debug)]
pub struct Page {
    ws: WebSocketStream<TcpStream>,
    next_id: u64,
}

impl Page {
    /// Waits (20 s at most) until the page has loaded a URL that starts
    /// with `prefix`: scripts evaluated before that run in `about:blank`,
    /// whose origin is `null`.
    ///
    /// # Panics
    ///
    /// When it has not within 20 s.
    pub async fn loaded(&mut self, prefix: &str) {
        let check = format!(
            "document.readyState === 'complete' && location.href.startsWith({})",
            Value::from(prefix)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.evaluate(&check).await != Value::Bool(true) {
            assert!(Instant::now() < deadline, "the page never loaded {prefix}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Evaluates `expression` in the page (awaiting it if it is a
    /// promise) and returns its value as JSON; waits 30 s at most.
    ///
    /// # Panics
    ///
    /// When the page throws, or DevTools does not answer in time.
    pub async fn evaluate(&mut self, expression: &str) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let call = json!({
            "id": id,
            "method": "Runtime.evaluate",
            "params": {"expression": expression, "awaitPromise": true, "returnByValue": true},
        });
        self.ws
            .send(Message::text(call.to_string()))
            .await
            .expect("DevTools send");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("DevTools answers in time")
                .expect("DevTools open")
                .expect("DevTools frame");
            let Message::Text(text) = frame else { continue };
            let reply: Value = serde_json::from_str(text.as_str()).expect("DevTools JSON");
            if reply["id"] != id {
                continue;
            }
            if let Some(e) = reply["result"].get("exceptionDetails") {
                panic!("the page threw: {e}");
            }
            return reply["result"]["result"]["value"].clone();
        }
    }
}
