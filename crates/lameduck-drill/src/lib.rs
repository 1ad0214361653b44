//! `lameduck drill`: drives long-lived traffic at a service (any service:
//! it only uses the wire), stops or restarts it, and classifies every
//! request, message and connection.
//!
//! It is meant for loopback or one's own staging hosts: traffic goes only
//! to the address given.
//!
//! # Examples
//!
//! ```no_run
//! use lameduck_drill::{Drill, Scenario, Target};
//! # async fn run() -> Result<(), lameduck_drill::DrillError> {
//! let mut drill = Drill::new(Target::Spawn {
//!     command: "lameduck serve --listen 127.0.0.1:{port}".into(),
//!     port: 0,
//! });
//! drill.scenarios = vec![Scenario::Load, Scenario::Websocket];
//! let report = drill.run(|_| {}).await?;
//! println!("{}", lameduck_drill::report::table(&report));
//! assert!(report.passed);
//! # Ok(()) }
//! ```

mod files;
pub mod record;
pub mod report;
mod run;
mod scenario;
mod target;
pub mod wire;

use std::{net::SocketAddr, sync::Arc, time::Duration};

pub use nix::sys::signal::Signal;
use tokio::{task::JoinSet, time::Instant};
use tokio_util::sync::CancellationToken;

pub use record::{Class, Recorder};
pub use report::Report;
pub use scenario::{H2_STREAMS, Scenario, Settings};
pub use target::Target;

use record::Kind;
use report::{Phases, StillOpen};

/// Why a drill could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DrillError {
    /// The port asked for cannot be bound (in use, most likely).
    #[error("port {0} is not free")]
    Port(u16, #[source] std::io::Error),
    /// A command could not be started.
    #[error("cannot start `{0}`")]
    Spawn(String, #[source] std::io::Error),
    /// The spawned command ended before its health path answered.
    #[error("the service exited before it was healthy ({0})")]
    ExitedEarly(String),
    /// The health path never answered 200.
    #[error("the service at {addr} never answered 200 on {path} within {waited:?} (last: {last})")]
    NeverHealthy {
        /// Where.
        addr: SocketAddr,
        /// The health path.
        path: String,
        /// How long the drill waited.
        waited: Duration,
        /// The last answer or error.
        last: String,
    },
    /// The signal could not be sent.
    #[error("cannot signal pid {0}: {1}")]
    Signal(u32, String),
    /// Neither a pid nor a trigger command was given to stop a running
    /// service.
    #[error("stopping a running service needs --pid or --trigger")]
    NoTrigger,
    /// The trigger command failed.
    #[error("the trigger `{0}` failed: {1}")]
    Trigger(String, String),
    /// The drill's clients need more sockets than its open-file limit
    /// allows, even raised to the hard limit.
    #[error(
        "the scenarios hold up to {need} sockets but this process may open only {limit} files (raise `ulimit -Hn`, or lower the counts)"
    )]
    TooManySockets {
        /// Descriptors needed (sockets plus a margin).
        need: u64,
        /// The hard limit.
        limit: u64,
    },
    /// The service log file cannot be opened.
    #[error("cannot open the service log {path}", path = .0.display())]
    Log(std::path::PathBuf, #[source] std::io::Error),
    /// `restart` on a running service without a pid or a restart trigger.
    #[error("the restart scenario on a running service needs --pid or --restart-trigger")]
    NoRestart,
}

/// One drill: the target, the traffic and the timings.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Drill {
    /// The service.
    pub target: Target,
    /// The traffic (default: every scenario).
    pub scenarios: Vec<Scenario>,
    /// Paths, counts and rates.
    pub settings: Settings,
    /// The path that must answer 200 before traffic starts.
    pub health: String,
    /// How long the service gets to become healthy.
    pub startup: Duration,
    /// Traffic before the first signal.
    pub before: Duration,
    /// Traffic after the exit (or after the trigger, when the exit cannot
    /// be watched).
    pub after: Duration,
    /// Restarts made when the `restart` scenario is run.
    pub restarts: u32,
    /// Time from one restart to the next (and after the last one).
    pub restart_every: Duration,
    /// The signal that restarts the service (sent to its main process).
    pub restart_signal: Signal,
    /// How long a service that reports `READY=1` gets to report it again
    /// after a restart before the restart counts as failed.
    pub restart_timeout: Duration,
    /// Everything, from start to end, is bounded by this.
    pub limit: Duration,
    /// Failure classes tolerated (by name, as `refused`).
    pub allow: Vec<Class>,
    /// Where a spawned service's stdout and stderr go (appended); `None`
    /// discards them.
    pub service_log: Option<std::path::PathBuf>,
    /// Cancel it (on Ctrl-C, say) to end the drill early: what has not
    /// happened yet is skipped, and the report covers what did.
    pub interrupt: CancellationToken,
    /// Speak TLS to the service (HTTP/1.1 by ALPN); plain TCP when `None`.
    pub tls: Option<Tls>,
}

/// How a drill speaks TLS: the client configuration (which certificates
/// it trusts) and the name the certificate must carry.
#[derive(Clone)]
#[non_exhaustive]
pub struct Tls {
    /// The rustls client configuration.
    pub config: std::sync::Arc<rustls::ClientConfig>,
    /// The name checked against the service's certificate (and sent as
    /// SNI).
    pub server_name: rustls::pki_types::ServerName<'static>,
}

impl Tls {
    /// TLS with `config`, expecting a certificate for `server_name`.
    pub fn new(
        config: std::sync::Arc<rustls::ClientConfig>,
        server_name: rustls::pki_types::ServerName<'static>,
    ) -> Self {
        Self {
            config,
            server_name,
        }
    }
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl Drill {
    /// A drill of `target` with the defaults: every scenario, 2 s of
    /// traffic before the first signal, 3 restarts 2 s apart (SIGHUP), 1 s
    /// after the exit, 120 s at most.
    pub fn new(target: Target) -> Self {
        Self {
            target,
            scenarios: Scenario::ALL.to_vec(),
            settings: Settings::default(),
            health: "/ping".into(),
            startup: Duration::from_secs(10),
            before: Duration::from_secs(2),
            after: Duration::from_secs(1),
            restarts: 3,
            restart_every: Duration::from_secs(2),
            restart_signal: Signal::SIGHUP,
            restart_timeout: Duration::from_secs(30),
            limit: Duration::from_secs(120),
            allow: Vec::new(),
            service_log: None,
            interrupt: CancellationToken::new(),
            tls: None,
        }
    }

    /// Runs the drill; `progress` is called about five times a second with
    /// the counts so far. A spawned service is killed (its whole process
    /// group) when this returns, whatever happened.
    ///
    /// With `restart` among the scenarios, the service is restarted
    /// `restarts` times first. It is then stopped if any other scenario is
    /// run; with `restart` alone it is not (a spawned one is killed at the
    /// end, after the traffic).
    ///
    /// # Errors
    ///
    /// When the service cannot be started, never becomes healthy, or cannot
    /// be signalled. Losses are not errors: they are in the report.
    pub async fn run(&self, progress: impl Fn(&Recorder)) -> Result<Report, DrillError> {
        let deadline = Instant::now() + self.limit;
        let mut scenarios = self.scenarios.clone();
        scenarios.sort();
        scenarios.dedup();
        let restarting = scenarios.contains(&Scenario::Restart);
        let stopping = scenarios.iter().any(|s| *s != Scenario::Restart);
        if let Target::Running {
            pid: None,
            trigger,
            restart_trigger,
            ..
        } = &self.target
        {
            if restarting && restart_trigger.is_none() {
                return Err(DrillError::NoRestart);
            }
            if stopping && trigger.is_none() {
                return Err(DrillError::NoTrigger);
            }
        }
        let nofile = files::raise(self.sockets())?;
        let mut live = target::Live::start(
            &self.target,
            &self.health,
            self.startup,
            nofile,
            self.service_log.as_deref(),
            self.settings.host.as_deref(),
            self.tls.as_ref(),
        )
        .await?;
        let rec = Arc::new(Recorder::new());
        let ctx = scenario::Ctx {
            dialer: live.dialer.clone(),
            host: live.host.as_str().into(),
            rec: rec.clone(),
            settings: Arc::new(self.settings.clone()),
            stop: CancellationToken::new(),
            inflight_go: CancellationToken::new(),
        };
        let mut tasks = JoinSet::new();
        // Clients connect one after the other; on a host that drops SYNs
        // that could outlast the limit.
        tokio::select! {
            _ = tokio::time::timeout_at(deadline, async {
                for s in &scenarios {
                    scenario::start(*s, &ctx, &mut tasks).await;
                }
            }) => {}
            () = self.interrupt.cancelled() => {}
        }
        let mut run = run::Run {
            drill: self,
            live: &mut live,
            rec: &rec,
            progress: &progress,
            deadline,
            inflight: scenarios.contains(&Scenario::Inflight).then(|| {
                (
                    ctx.inflight_go.clone(),
                    Duration::from_millis(self.settings.slow_ms / 2),
                )
            }),
            restarts: Vec::new(),
            replaced: Vec::new(),
            notes: Vec::new(),
        };

        let traffic_from = Instant::now();
        if !restarting {
            // Without restarts the stop comes right after `before`: the slow
            // requests go out half their duration earlier.
            if let Some((go, lead)) = run.inflight.take() {
                run.traffic_until(traffic_from + self.before.saturating_sub(lead))
                    .await;
                go.cancel();
            }
        }
        run.traffic_until(traffic_from + self.before).await;
        let mut outcome = Ok(());
        if restarting {
            outcome = run.restarts().await;
        }
        let mut stop = run::Stop::default();
        if stopping && outcome.is_ok() {
            outcome = run.stop(&mut stop).await;
        } else {
            run.traffic_until(Instant::now() + self.after).await;
        }
        if let Err(e) = outcome {
            ctx.stop.cancel();
            tasks.shutdown().await;
            return Err(e);
        }
        run.tick();
        let restarts = std::mem::take(&mut run.restarts);
        let mut notes = std::mem::take(&mut run.notes);
        if self.interrupt.is_cancelled() {
            notes.push(format!(
                "interrupted at {:.2} s: the report covers the drill until then",
                rec.elapsed().as_secs_f64()
            ));
        }
        let still_open = StillOpen {
            http: rec.open_now(Kind::Http),
            websocket: rec.open_now(Kind::Ws),
            sse: rec.open_now(Kind::Sse),
        };
        ctx.stop.cancel();
        // Clients stop at once on `stop`; a bounded wait, then they are
        // aborted.
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tasks.shutdown().await;
        drop(live);

        let [before, during, after] = rec.latencies();
        let mut report = Report {
            target: match &self.target {
                Target::Spawn { command, .. } => command.clone(),
                Target::Running { addr, .. } if self.tls.is_some() => format!("https://{addr}"),
                Target::Running { addr, .. } => format!("http://{addr}"),
            },
            protocol: match (self.tls.is_some(), self.settings.http2) {
                (true, true) => {
                    "load: HTTP/2 over TLS (h2); the rest: HTTP/1.1 over TLS (WebSockets: wss)"
                        .into()
                }
                (true, false) => "HTTP/1.1 over TLS (WebSockets: wss)".into(),
                (false, true) => {
                    "load: HTTP/2 (h2c, prior knowledge); the rest: HTTP/1.1 (WebSockets: ws)"
                        .into()
                }
                (false, false) => "HTTP/1.1 (WebSockets: ws)".into(),
            },
            scenarios: scenarios
                .iter()
                .map(|s| format!("{s:?}").to_lowercase())
                .collect(),
            trigger: stop.trigger,
            signal_at_ms: stop.signal_at_ms,
            exit_at_ms: stop.exit_at_ms,
            exit_after_ms: stop.exit_at_ms.zip(stop.signal_at_ms).map(|(e, s)| e - s),
            exit_status: stop.status.map(target::describe),
            exit_code: stop.status.and_then(|s| s.code()),
            restarts,
            notes,
            end_ms: rec.elapsed().as_millis() as u64,
            counts: rec.totals(),
            close_codes: rec.close_codes(),
            still_open,
            latency: Phases {
                before,
                during,
                after,
            },
            timeline: rec.timeline(),
            reconnect_peak_per_100ms: 0,
            reconnect_peak_at_ms: None,
            allowed: self.allow.iter().map(|c| c.name().to_owned()).collect(),
            failures: Vec::new(),
            passed: false,
        };
        report.find_reconnect_peak();
        report.judge();
        Ok(report)
    }
}

impl Drill {
    /// Sockets the selected scenarios hold at most at once (each client
    /// closes a connection before it opens the next).
    pub fn sockets(&self) -> u64 {
        let s = &self.settings;
        let per = |scenario| match scenario {
            Scenario::Idle => s.idle_http + s.idle_ws,
            Scenario::Inflight => s.inflight,
            Scenario::Load => s.load_clients,
            Scenario::Websocket => s.ws_clients,
            Scenario::Sse => s.sse_clients,
            Scenario::Restart => s.restart_load + s.restart_ws + s.restart_sse,
        };
        let mut scenarios = self.scenarios.clone();
        scenarios.sort();
        scenarios.dedup();
        scenarios.into_iter().map(per).sum::<usize>() as u64
    }
}
