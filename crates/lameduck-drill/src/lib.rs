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

pub mod record;
pub mod report;
mod scenario;
mod target;
pub mod wire;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use nix::sys::signal::Signal;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use record::{Class, Recorder};
pub use report::Report;
pub use scenario::{Scenario, Settings};
pub use target::Target;

use record::{Kind, Phase};
use report::{Phases, StillOpen};

/// Why a drill could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DrillError {
    /// The port asked for cannot be bound (in use, most likely).
    #[error("port {0} is not free: {1}")]
    Port(u16, #[source] std::io::Error),
    /// A command could not be started.
    #[error("cannot start `{0}`: {1}")]
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
    /// Neither a pid nor a trigger command was given for a running service.
    #[error("a running service needs --pid or --trigger")]
    NoTrigger,
    /// The trigger command failed.
    #[error("the trigger `{0}` failed: {1}")]
    Trigger(String, String),
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
    /// Traffic before the signal.
    pub before: Duration,
    /// Traffic after the exit (or after the trigger, when the exit cannot
    /// be watched).
    pub after: Duration,
    /// Everything, from start to end, is bounded by this.
    pub limit: Duration,
    /// Failure classes tolerated (by name, as `refused`).
    pub allow: Vec<Class>,
}

impl Drill {
    /// A drill of `target` with the defaults: every scenario, 2 s of
    /// traffic before the signal and 1 s after the exit, 120 s at most.
    pub fn new(target: Target) -> Self {
        Self {
            target,
            scenarios: Scenario::ALL.to_vec(),
            settings: Settings::default(),
            health: "/ping".into(),
            startup: Duration::from_secs(10),
            before: Duration::from_secs(2),
            after: Duration::from_secs(1),
            limit: Duration::from_secs(120),
            allow: Vec::new(),
        }
    }

    /// Runs the drill; `progress` is called about five times a second with
    /// the counts so far. A spawned service is killed (its whole process
    /// group) when this returns, whatever happened.
    ///
    /// # Errors
    ///
    /// When the service cannot be started, never becomes healthy, or cannot
    /// be signalled. Losses are not errors: they are in the report.
    pub async fn run(&self, progress: impl Fn(&Recorder)) -> Result<Report, DrillError> {
        let deadline = tokio::time::Instant::now() + self.limit;
        let mut live = target::Live::start(&self.target, &self.health, self.startup).await?;
        let rec = Arc::new(Recorder::new());
        let ctx = scenario::Ctx {
            addr: live.addr,
            rec: rec.clone(),
            settings: Arc::new(self.settings.clone()),
            stop: CancellationToken::new(),
        };
        let mut tasks = JoinSet::new();
        let mut scenarios = self.scenarios.clone();
        scenarios.sort();
        scenarios.dedup();
        for s in &scenarios {
            scenario::start(*s, &ctx, self.before, &mut tasks).await;
        }
        let tick = || {
            rec.sample();
            progress(&rec);
        };

        // Traffic, then the signal.
        let signal_at = tokio::time::Instant::now() + self.before;
        while tokio::time::Instant::now() < signal_at.min(deadline) {
            tick();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let signal_at_ms = rec.elapsed().as_millis() as u64;
        rec.set_phase(Phase::During);
        let trigger = match &self.target {
            Target::Running {
                pid: None,
                trigger: Some(t),
                ..
            } => format!("trigger `{t}`"),
            _ => "SIGTERM".to_owned(),
        };
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let signalled = live.signal(Signal::SIGTERM, remaining).await;
        if let Err(e) = signalled {
            ctx.stop.cancel();
            tasks.shutdown().await;
            return Err(e);
        }

        // The shutdown, until the process is gone.
        let mut exit_at_ms = None;
        if live.can_watch_exit() {
            while tokio::time::Instant::now() < deadline {
                if live.gone() {
                    exit_at_ms = Some(rec.elapsed().as_millis() as u64);
                    break;
                }
                tick();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        rec.set_phase(Phase::After);
        let status = live.try_exit();
        let after_end = (tokio::time::Instant::now() + self.after).min(deadline);
        while tokio::time::Instant::now() < after_end {
            tick();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tick();
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
                Target::Running { addr, .. } => format!("http://{addr}"),
            },
            scenarios: scenarios
                .iter()
                .map(|s| format!("{s:?}").to_lowercase())
                .collect(),
            trigger,
            signal_at_ms,
            exit_at_ms,
            exit_after_ms: exit_at_ms.map(|e| e - signal_at_ms),
            exit_status: status.map(target::describe),
            exit_code: status.and_then(|s| s.code()),
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
            allowed: self.allow.iter().map(|c| c.name().to_owned()).collect(),
            failures: Vec::new(),
            passed: false,
        };
        report.judge();
        Ok(report)
    }
}
