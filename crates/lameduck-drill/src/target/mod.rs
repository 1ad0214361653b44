//! The service under test: a command the drill starts (and always kills,
//! with its whole process group), or one already running, reached by URL
//! and stopped or restarted by pid or by trigger commands.

mod group;
mod notify;

use std::{
    collections::HashMap,
    net::{SocketAddr, TcpListener},
    os::unix::process::{CommandExt, ExitStatusExt},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use nix::{
    sys::{
        signal::{Signal, kill, killpg},
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::Pid,
};

use crate::{DrillError, wire::http};

/// Where the service is and how to stop or restart it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Target {
    /// `sh -c 'exec COMMAND'` in a process group of its own, with `PORT` in
    /// its environment and `{port}` in the command replaced by the port: the
    /// command must be one program (wrap a pipeline in `sh -c '...'`).
    ///
    /// As systemd does for a unit: the stop signal goes to the whole group
    /// (`KillMode=control-group`), the restart signal to the main process
    /// only (`ExecReload=kill -HUP $MAINPID`), and `NOTIFY_SOCKET` is set, so
    /// a service that reports `READY=1` and `MAINPID=` is followed across
    /// upgrades that change its pid. The drill becomes a child subreaper
    /// (`PR_SET_CHILD_SUBREAPER`, for its whole process) so that such
    /// successors are its children and their exit status is known.
    Spawn {
        /// The command line.
        command: String,
        /// The port to give it; 0 picks a free one.
        port: u16,
    },
    /// A running service at `addr`.
    Running {
        /// Its address (loopback or one's own staging host).
        addr: SocketAddr,
        /// The process to signal, if any.
        pid: Option<u32>,
        /// The command that stops it (`systemctl stop x`), if no pid.
        trigger: Option<String>,
        /// The command that restarts it (`systemctl reload x`, `kubectl
        /// rollout restart ...`), for the `restart` scenario; without one,
        /// the restart signal goes to `pid`.
        restart_trigger: Option<String>,
    },
}

/// A target once started: the address and the means to signal it.
#[derive(Debug)]
pub(crate) struct Live {
    pub(crate) addr: SocketAddr,
    /// How clients reach it (TLS when the drill speaks it).
    pub(crate) dialer: crate::wire::Dialer,
    /// The `Host` of the drill's requests.
    pub(crate) host: String,
    /// The process the drill started; its pid is the group's id.
    child: Option<Child>,
    /// Kills the spawned group if the drill dies without its `Drop`
    /// running (SIGKILL, a second Ctrl-C).
    watchdog: Option<Child>,
    pid: Option<u32>,
    trigger: Option<String>,
    restart_trigger: Option<String>,
    notify: Option<notify::Listener>,
    /// Exit statuses of processes reaped so far, by pid.
    reaped: HashMap<u32, ExitStatus>,
}

impl Live {
    /// Starts (or finds) the target and waits until `health` answers 200,
    /// for `startup` at most.
    ///
    /// A spawned command gets `nofile` as its soft open-file limit (the
    /// drill's own, before the drill raised it for its clients), and its
    /// output goes to `log` (appended) or nowhere.
    pub(crate) async fn start(
        target: &Target,
        health: &str,
        startup: Duration,
        nofile: u64,
        log: Option<&std::path::Path>,
        host: Option<&str>,
        tls: Option<&crate::Tls>,
    ) -> Result<Self, DrillError> {
        let mut live = match target {
            Target::Spawn { command, port } => {
                let port = free_port(*port)?;
                let command = command.replace("{port}", &port.to_string());
                // Best effort: without it, successors are adopted by init and
                // only their exit (not their status) is seen.
                let _ = nix::sys::prctl::set_child_subreaper(true);
                let notify = notify::Listener::bind()
                    .map_err(|e| DrillError::Spawn("a NOTIFY_SOCKET".into(), e))?;
                let nofile = match nofile {
                    u64::MAX => "unlimited".to_owned(),
                    n => n.to_string(),
                };
                let (stdout, stderr) = match log {
                    Some(path) => {
                        let file = std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(path)
                            .map_err(|e| DrillError::Log(path.to_owned(), e))?;
                        let copy = file
                            .try_clone()
                            .map_err(|e| DrillError::Log(path.to_owned(), e))?;
                        (Stdio::from(file), Stdio::from(copy))
                    }
                    None => (Stdio::null(), Stdio::null()),
                };
                let child = Command::new("sh")
                    .arg("-c")
                    // exec: the service is the process the drill watches
                    // (dash does not exec a lone command by itself). The
                    // limit: the service runs as it would without the drill.
                    .arg(format!("ulimit -Sn {nofile} 2>/dev/null; exec {command}"))
                    .env("PORT", port.to_string())
                    .env("NOTIFY_SOCKET", notify.path())
                    .stdin(Stdio::null())
                    .stdout(stdout)
                    .stderr(stderr)
                    // Its own group, so that everything it starts can be
                    // killed at the end, whatever happens.
                    .process_group(0)
                    .spawn()
                    .map_err(|e| DrillError::Spawn(command.clone(), e))?;
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                let mut live = Live {
                    addr,
                    dialer: dialer(addr, tls),
                    host: host.map_or_else(|| addr.to_string(), str::to_owned),
                    pid: Some(child.id()),
                    child: Some(child),
                    watchdog: None,
                    trigger: None,
                    restart_trigger: None,
                    notify: Some(notify),
                    reaped: HashMap::new(),
                };
                // Set up after `live`, so that its drop kills the service
                // if the watchdog cannot start.
                live.watchdog = Some(watchdog(live.pid.unwrap_or_default())?);
                live
            }
            Target::Running {
                addr,
                pid,
                trigger,
                restart_trigger,
            } => Live {
                addr: *addr,
                dialer: dialer(*addr, tls),
                host: host.map_or_else(|| addr.to_string(), str::to_owned),
                child: None,
                watchdog: None,
                pid: *pid,
                trigger: trigger.clone(),
                restart_trigger: restart_trigger.clone(),
                notify: None,
                reaped: HashMap::new(),
            },
        };
        live.wait_healthy(health, startup).await?;
        Ok(live)
    }

    async fn wait_healthy(&mut self, health: &str, startup: Duration) -> Result<(), DrillError> {
        let deadline = Instant::now() + startup;
        let mut last = String::from("no answer");
        while Instant::now() < deadline {
            if let Some(status) = self.try_exit() {
                return Err(DrillError::ExitedEarly(describe(status)));
            }
            match http::get_from(&self.dialer, &self.host, health, Duration::from_secs(2)).await {
                Ok(res) if res.status == 200 => return Ok(()),
                Ok(res) => last = format!("status {}", res.status),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(DrillError::NeverHealthy {
            addr: self.addr,
            path: health.to_owned(),
            waited: startup,
            last,
        })
    }

    /// Sends the stop `signal` (to the whole group of a spawned service),
    /// or runs the stop trigger (waiting for it, `limit` at most).
    pub(crate) async fn stop(&self, signal: Signal, limit: Duration) -> Result<(), DrillError> {
        if let Some(child) = &self.child {
            // The group's id is the child's pid (`process_group(0)`).
            let group = child.id();
            return killpg(Pid::from_raw(group as i32), signal)
                .map_err(|e| DrillError::Signal(group, e.to_string()));
        }
        if let Some(pid) = self.pid {
            return kill(Pid::from_raw(pid as i32), signal)
                .map_err(|e| DrillError::Signal(pid, e.to_string()));
        }
        match &self.trigger {
            Some(trigger) => run_trigger(trigger, limit).await,
            None => Err(DrillError::NoTrigger),
        }
    }

    /// Sends the restart `signal` to the main process, or runs the restart
    /// trigger (waiting for it, `limit` at most).
    pub(crate) async fn restart(&self, signal: Signal, limit: Duration) -> Result<(), DrillError> {
        if let Some(trigger) = &self.restart_trigger {
            return run_trigger(trigger, limit).await;
        }
        let pid = self.main_pid().ok_or(DrillError::NoTrigger)?;
        kill(Pid::from_raw(pid as i32), signal).map_err(|e| DrillError::Signal(pid, e.to_string()))
    }

    /// How a restart is made, for the report.
    pub(crate) fn restart_means(&self, signal: Signal) -> String {
        match &self.restart_trigger {
            Some(t) => format!("trigger `{t}`"),
            None => signal.as_str().to_owned(),
        }
    }

    /// The process that serves now: the last `MAINPID=` the service
    /// reported, else the one started or given.
    pub(crate) fn main_pid(&self) -> Option<u32> {
        self.notify
            .as_ref()
            .and_then(|n| n.said().main_pid)
            .or(self.pid)
    }

    /// Woken by each message of the service's, if it has a notify socket.
    pub(crate) fn notice_changes(&self) -> Option<tokio::sync::watch::Receiver<notify::Said>> {
        self.notify.as_ref().map(notify::Listener::subscribe)
    }

    /// `RELOADING=1` and `READY=1` messages so far (0 when the service does
    /// not report).
    pub(crate) fn notices_so_far(&self) -> u64 {
        self.notify.as_ref().map_or(0, |n| {
            let said = n.said();
            said.ready + said.reloading
        })
    }

    /// `READY=1` messages so far (0 when the service does not report).
    pub(crate) fn readies(&self) -> u64 {
        self.notify.as_ref().map_or(0, |n| n.said().ready)
    }

    /// Whether the drill can see the process end (it started it, or has
    /// its pid).
    pub(crate) fn can_watch_exit(&self) -> bool {
        self.pid.is_some()
    }

    /// The exit status of the main process if it has ended (`None` for a
    /// pid the drill did not start: it ended, but its status is its
    /// parent's).
    pub(crate) fn try_exit(&mut self) -> Option<ExitStatus> {
        let pid = self.main_pid()?;
        self.pid_ended(pid);
        self.reaped.get(&pid).copied()
    }

    /// Whether `pid` has ended; reaps it if it is the drill's child. A
    /// child counts as ended once reaped: `/proc` shows the leader of a
    /// process whose other threads are still exiting as a zombie already.
    pub(crate) fn pid_ended(&mut self, pid: u32) -> bool {
        if self.reaped.contains_key(&pid) {
            return true;
        }
        let child = match &mut self.child {
            Some(child) if child.id() == pid => match child.try_wait() {
                Ok(Some(status)) => group::Wait::Reaped(status),
                Ok(None) => group::Wait::Running,
                Err(_) => group::Wait::Foreign,
            },
            Some(_) => group::reap(pid),
            None => group::Wait::Foreign,
        };
        match child {
            group::Wait::Reaped(status) => {
                self.reaped.insert(pid, status);
                true
            }
            group::Wait::Running => false,
            group::Wait::Foreign => group::ended(pid),
        }
    }

    /// The exit status of `pid`, if the drill reaped it.
    pub(crate) fn status_of(&self, pid: u32) -> Option<ExitStatus> {
        self.reaped.get(&pid).copied()
    }

    /// Whether the drill started the service.
    pub(crate) fn spawned(&self) -> bool {
        self.child.is_some()
    }

    /// Whether a restart is a signal to a pid given on the command line
    /// (which a service that restarts under a new pid leaves behind).
    pub(crate) fn restarts_given_pid(&self) -> bool {
        self.child.is_none() && self.restart_trigger.is_none() && self.pid.is_some()
    }

    /// `Err(why)` unless `health` answers 200 now (2 s at most).
    pub(crate) async fn healthy(&self, health: &str) -> Result<(), String> {
        match http::get_from(&self.dialer, &self.host, health, Duration::from_secs(2)).await {
            Ok(res) if res.status == 200 => Ok(()),
            Ok(res) => Err(format!("status {}", res.status)),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Whether the service is gone: every process of a spawned service's
    /// group, or the given pid.
    pub(crate) fn gone(&mut self) -> bool {
        if let Some(child) = &self.child {
            let group = child.id();
            self.pid_ended(group);
            // The main process first: scanning /proc for the group is only
            // needed once it has gone.
            let main_ended = self.main_pid().is_none_or(|main| self.pid_ended(main));
            return main_ended && !group::any_alive(group as i32);
        }
        match self.pid {
            Some(pid) => self.pid_ended(pid),
            None => false,
        }
    }
}

/// Runs a trigger command, `limit` at most. Its output is kept off the
/// drill's (the table goes to stdout); the end of its stderr is in the
/// error when it fails.
async fn run_trigger(trigger: &str, limit: Duration) -> Result<(), DrillError> {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(trigger)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| DrillError::Spawn(trigger.to_owned(), e))?;
    let failed = |why: String| Err(DrillError::Trigger(trigger.to_owned(), why));
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.trim_end().lines().rev().take(3).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            if tail.is_empty() {
                failed(describe(out.status))
            } else {
                failed(format!("{}: {}", describe(out.status), tail.join(" / ")))
            }
        }
        Ok(Err(e)) => failed(e.to_string()),
        Err(_) => failed(format!("still running after {limit:?}")),
    }
}

/// A process that waits for end of file on its stdin, a pipe only the
/// drill holds, and then kills group `group`: the kernel closes the pipe
/// however the drill ends, so the service never outlives it. (The other
/// way, a parent-death signal, needs `pre_exec` code, and would not reach
/// successors started by an upgrade.) Its own process group keeps a
/// terminal's Ctrl-C, meant for the drill, off it.
fn watchdog(group: u32) -> Result<Child, DrillError> {
    Command::new("sh")
        .arg("-c")
        .arg(format!("read _; kill -KILL -{group} 2>/dev/null"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| DrillError::Spawn("the watchdog (sh)".into(), e))
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            // Its work is done below; it must not outlive the group and
            // kill a later group that reuses the id.
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        if let Some(child) = &mut self.child {
            // The group's id is the child's pid (process_group(0)).
            let group = child.id() as i32;
            let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
            let _ = child.kill();
            let _ = child.wait();
            // Successors adopted by the drill: reaped, not left as zombies
            // (a second or so at most: SIGKILL cannot be caught).
            for _ in 0..100 {
                match waitpid(Pid::from_raw(-group), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(10)),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
    }
}

/// The exit code, or `signal N` when a signal ended the process.
pub(crate) fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "unknown status".into(),
    }
}

/// `port`, if free, or a free one for 0.
fn free_port(port: u16) -> Result<u16, DrillError> {
    let listener = TcpListener::bind(("127.0.0.1", port)).map_err(|e| DrillError::Port(port, e))?;
    Ok(listener
        .local_addr()
        .map_err(|e| DrillError::Port(port, e))?
        .port())
}

/// Plain TCP to `addr`, or TLS with `tls`.
fn dialer(addr: SocketAddr, tls: Option<&crate::Tls>) -> crate::wire::Dialer {
    match tls {
        Some(t) => crate::wire::Dialer::tls(addr, t.config.clone(), t.server_name.clone()),
        None => crate::wire::Dialer::plain(addr),
    }
}
