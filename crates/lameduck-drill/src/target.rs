//! The service under test: a command the drill starts (and always kills,
//! with its whole process group), or one already running, reached by URL
//! and stopped by pid or by a trigger command.

use std::{
    net::{SocketAddr, TcpListener},
    os::unix::process::{CommandExt, ExitStatusExt},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill, killpg},
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
    /// Signals go to the whole group, as systemd's default `KillMode` does;
    /// the exit status is the program's.
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
        /// The command that stops or restarts it (`systemctl restart x`,
        /// `kubectl rollout restart ...`), if no pid.
        trigger: Option<String>,
    },
}

/// A target once started: the address and the means to signal it.
#[derive(Debug)]
pub(crate) struct Live {
    pub(crate) addr: SocketAddr,
    child: Option<Child>,
    pid: Option<u32>,
    trigger: Option<String>,
}

impl Live {
    /// Starts (or finds) the target and waits until `health` answers 200,
    /// for `startup` at most.
    pub(crate) async fn start(
        target: &Target,
        health: &str,
        startup: Duration,
    ) -> Result<Self, DrillError> {
        let mut live = match target {
            Target::Spawn { command, port } => {
                let port = free_port(*port)?;
                let command = command.replace("{port}", &port.to_string());
                let child = Command::new("sh")
                    .arg("-c")
                    // exec: the service is the process the drill watches
                    // (dash does not exec a lone command by itself).
                    .arg(format!("exec {command}"))
                    .env("PORT", port.to_string())
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    // Its own group, so that everything it starts can be
                    // killed at the end, whatever happens.
                    .process_group(0)
                    .spawn()
                    .map_err(|e| DrillError::Spawn(command.clone(), e))?;
                Live {
                    addr: SocketAddr::from(([127, 0, 0, 1], port)),
                    pid: Some(child.id()),
                    child: Some(child),
                    trigger: None,
                }
            }
            Target::Running { addr, pid, trigger } => Live {
                addr: *addr,
                child: None,
                pid: *pid,
                trigger: trigger.clone(),
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
            match http::get(self.addr, health, Duration::from_secs(2)).await {
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

    /// Sends `signal` to the process, or runs the trigger command (waiting
    /// for it, `limit` at most).
    pub(crate) async fn signal(&self, signal: Signal, limit: Duration) -> Result<(), DrillError> {
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
        let Some(trigger) = &self.trigger else {
            return Err(DrillError::NoTrigger);
        };
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(trigger)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| DrillError::Spawn(trigger.clone(), e))?;
        match tokio::time::timeout(limit, child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(DrillError::Trigger(trigger.clone(), describe(status))),
            Ok(Err(e)) => Err(DrillError::Trigger(trigger.clone(), e.to_string())),
            Err(_) => Err(DrillError::Trigger(
                trigger.clone(),
                format!("still running after {limit:?}"),
            )),
        }
    }

    /// Whether the drill can see the process end (it started it, or has
    /// its pid).
    pub(crate) fn can_watch_exit(&self) -> bool {
        self.pid.is_some()
    }

    /// The exit status if the process has ended (`None` for a pid the drill
    /// did not start: it ended, but its status is its parent's).
    pub(crate) fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Whether the process is gone.
    pub(crate) fn gone(&mut self) -> bool {
        if self.child.is_some() {
            return self.try_exit().is_some();
        }
        self.pid.is_some_and(|pid| {
            // A zombie has exited too.
            std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    .is_some_and(|state| state == "Z" || state == "X")
            })
        })
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            // The group's id is the child's pid (process_group(0)).
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.kill();
            let _ = child.wait();
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
