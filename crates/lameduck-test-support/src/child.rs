//! The binary as a child process.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use nix::{
    sys::{
        resource::{Resource, getrlimit, setrlimit},
        signal::{Signal, kill},
    },
    unistd::Pid,
};
use serde_json::Value;

/// Runs `command` (stdin and stdout closed, stderr captured) expecting it
/// to exit within `limit`: its status and stderr. Past the limit it is
/// killed and the test fails.
pub fn run_to_exit(mut command: Command, limit: Duration) -> (ExitStatus, String) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command starts");
    // Read on a thread of its own: a child that fills the pipe would
    // otherwise never exit.
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waitpid") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} still ran after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, reader.join().unwrap_or_default())
}

/// A process's resident memory in KiB, from /proc (0 once it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Raises this process's open-file limit to `want` (or the hard limit, if
/// lower); children inherit it. Returns the new soft limit.
pub fn raise_fd_limit(want: u64) -> u64 {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    let target = want.min(hard);
    if soft < target {
        setrlimit(Resource::RLIMIT_NOFILE, target, hard).expect("setrlimit");
        return target;
    }
    soft
}

#[derive(Default)]
struct Logs {
    lines: Mutex<(Vec<Value>, bool)>,
    changed: Condvar,
}

/// A running `lameduck` process, killed on drop.
pub struct Child {
    child: std::process::Child,
    logs: Arc<Logs>,
    /// The job journal's directory, when the caller did not name a journal.
    _journal_dir: Option<tempfile::TempDir>,
    /// The address from the `server.listening` event.
    pub addr: SocketAddr,
    /// The admin listener's address, from the `admin.listening` event.
    pub admin_addr: Option<SocketAddr>,
}

impl std::fmt::Debug for Child {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Child")
            .field("pid", &self.child.id())
            .field("addr", &self.addr)
            .finish()
    }
}

impl Child {
    /// Starts `bin serve --listen 127.0.0.1:0 --log-format json <args>`
    /// (with the `--listen` and `--admin-listen` of `args` when they name
    /// them, `127.0.0.1:0` otherwise), and
    /// waits (10 s at most) for its `server.listening` event. Without a
    /// `--journal` in `args`, the job journal (and, without `--topics`, the
    /// topic store) is a SQLite file in a temp dir removed with the child.
    ///
    /// # Panics
    ///
    /// When the process cannot start or never reports its address.
    pub fn serve(bin: &str, args: &[&str]) -> Self {
        let (command, journal_dir) = Self::serve_command(bin, args);
        Self::spawn(command, journal_dir)
    }

    /// The command [`Child::serve`] runs, for a caller that adds to it
    /// (environment, say) before [`Child::spawn`]; with the journal's temp
    /// dir, to be kept as long as the child.
    pub fn serve_command(bin: &str, args: &[&str]) -> (Command, Option<tempfile::TempDir>) {
        let mut command = Command::new(bin);
        command.args(["serve", "--log-format", "json"]);
        if !args.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        if !args.contains(&"--admin-listen") {
            command.args(["--admin-listen", "127.0.0.1:0"]);
        }
        command.args(args);
        let journal_dir = if args.contains(&"--journal") {
            None
        } else {
            let dir = tempfile::tempdir().expect("temp dir for the journal");
            command
                .arg("--journal")
                .arg(format!("sqlite:{}", dir.path().join("jobs.db").display()));
            if !args.contains(&"--topics") {
                command
                    .arg("--topics")
                    .arg(format!("sqlite:{}", dir.path().join("topics.db").display()));
            }
            Some(dir)
        };
        (command, journal_dir)
    }

    /// Starts `command` (which must log JSON to stderr) and waits (10 s at
    /// most) for its `server.listening` event; `keep` lives as long as the
    /// child.
    ///
    /// # Panics
    ///
    /// When the process cannot start or never reports its address.
    pub fn spawn(command: Command, keep: Option<tempfile::TempDir>) -> Self {
        Self::spawn_logs_closed_after(command, keep, None)
    }

    /// As [`Child::spawn`], but stops reading the child's stderr and closes
    /// the pipe right after the event named `close_after` (when given): a
    /// log reader that went away. Later lines are not seen.
    ///
    /// # Panics
    ///
    /// As [`Child::spawn`].
    pub fn spawn_logs_closed_after(
        mut command: Command,
        keep: Option<tempfile::TempDir>,
        close_after: Option<&'static str>,
    ) -> Self {
        let journal_dir = keep;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lameduck");
        let stderr = child.stderr.take().expect("piped stderr");
        let logs = Arc::new(Logs::default());
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({ "raw": line }));
                let last = close_after.is_some_and(|name| value["message"] == name);
                sink.lines.lock().unwrap().0.push(value);
                sink.changed.notify_all();
                if last {
                    break;
                }
            }
            sink.lines.lock().unwrap().1 = true;
            sink.changed.notify_all();
        });
        let mut this = Self {
            child,
            logs,
            _journal_dir: journal_dir,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_addr: None,
        };
        let listening = this
            .wait_for_event("server.listening", Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no server.listening event; logs: {:?}", this.logs()));
        this.addr = listening["addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .expect("addr in server.listening");
        // Logged before the service listens, so already here.
        this.admin_addr = this
            .events("admin.listening")
            .first()
            .and_then(|e| e["addr"].as_str())
            .and_then(|a| a.parse().ok());
        this
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every process that logged `server.listening` on this child's stderr:
    /// the child, and the successors it started by upgrades (they inherit
    /// its stderr), in order.
    pub fn listening_pids(&self) -> Vec<u32> {
        self.events("server.listening")
            .iter()
            .filter_map(|e| e["pid"].as_u64())
            .map(|p| p as u32)
            .collect()
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("kill");
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits up to `limit` until a process other than those in `known` has
    /// logged `server.listening` (an upgrade's successor), and returns its
    /// pid; panics (with the logs) otherwise.
    pub fn wait_new_pid(&self, known: &[u32], limit: Duration) -> u32 {
        let deadline = Instant::now() + limit;
        blocking(|| {
            loop {
                if let Some(pid) = self
                    .listening_pids()
                    .into_iter()
                    .find(|p| !known.contains(p))
                {
                    return pid;
                }
                assert!(
                    Instant::now() < deadline,
                    "no new process; logs: {:#?}",
                    self.logs()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    }

    /// Upgrades the newest process of `pids` (SIGHUP), waits (`limit` for
    /// each step) for its successor and for the old process to exit, and
    /// adds the successor to `pids`.
    pub fn upgrade(&self, pids: &mut Vec<u32>, limit: Duration) -> u32 {
        let old = *pids.last().expect("a process to upgrade");
        kill(Pid::from_raw(old as i32), Signal::SIGHUP).expect("SIGHUP");
        let new = self.wait_new_pid(pids, limit);
        pids.push(new);
        wait_gone(old, limit);
        new
    }

    /// Waits up to `limit` for the process to exit, and panics (with its
    /// logs) if it does not. Safe inside a multi-threaded tokio runtime.
    pub fn expect_exit(&mut self, limit: Duration) -> ExitStatus {
        let status = blocking(|| self.wait_exit(limit));
        status.unwrap_or_else(|| {
            panic!(
                "the server did not exit within {limit:?}; logs: {:#?}",
                self.logs()
            )
        })
    }

    /// Waits up to `limit` for the event named `name`, and panics (with the
    /// logs) if it does not come. Safe inside a multi-threaded tokio
    /// runtime.
    pub fn expect_event(&self, name: &str, limit: Duration) -> Value {
        blocking(|| self.wait_for_event(name, limit))
            .unwrap_or_else(|| panic!("no {name} within {limit:?}; logs: {:#?}", self.logs()))
    }

    /// Sends SIGTERM and checks the drain is clean: exit code 0 within
    /// 30 s, and no panic logged.
    pub fn drains_cleanly(mut self) {
        self.signal(Signal::SIGTERM);
        let status = self.expect_exit(Duration::from_secs(30));
        let logs = self.logs();
        assert!(
            !logs.iter().any(|l| l.to_string().contains("panicked")),
            "a panic was logged: {logs:#?}"
        );
        assert_eq!(status.code(), Some(0), "logs: {logs:#?}");
    }

    /// Every log line so far (JSON objects; other lines as `{"raw": ...}`).
    pub fn logs(&self) -> Vec<Value> {
        self.logs.lines.lock().unwrap().0.clone()
    }

    /// Log events whose message is `name`.
    pub fn events(&self, name: &str) -> Vec<Value> {
        self.logs()
            .into_iter()
            .filter(|v| v["message"] == name)
            .collect()
    }

    /// Waits up to `timeout` for the first event named `name`.
    pub fn wait_for_event(&self, name: &str, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        let mut guard = self.logs.lines.lock().unwrap();
        loop {
            if let Some(v) = guard.0.iter().find(|v| v["message"] == name) {
                return Some(v.clone());
            }
            let now = Instant::now();
            if guard.1 || now >= deadline {
                return None;
            }
            guard = self
                .logs
                .changed
                .wait_timeout(guard, deadline - now)
                .unwrap()
                .0;
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Successors started by upgrades are not our children: kill them by
        // pid, checking the pid still names a lameduck process.
        for pid in self.listening_pids() {
            if pid != self.child.id() && is_alive(pid) && is_lameduck(pid) {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
    }
}

/// Runs `f`, which blocks, without stalling a multi-threaded tokio runtime
/// it is called from.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) if rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Waits up to `limit` until `pid` has exited; panics otherwise.
pub fn wait_gone(pid: u32, limit: Duration) {
    let deadline = Instant::now() + limit;
    blocking(|| {
        while is_alive(pid) {
            assert!(Instant::now() < deadline, "process {pid} did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    });
}

/// Whether `pid` is a running process (not gone, not a zombie).
pub fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn is_lameduck(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("lameduck"))
        .unwrap_or(false)
}
