//! The drain, run by the server's `serve` future: it moves the lifecycle's
//! phase forward and tells the accept loop and the connections what each
//! phase asks of them. The order is the drain contract of
//! `ARCHITECTURE.md`.

use std::{
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
    time::Duration,
};

use tokio::time::{Instant, sleep, sleep_until, timeout};

use super::registry::Registry;
use crate::{
    DrainAnnounce,
    handoff::notify,
    lifecycle::{DrainReason, Lifecycle, Phase, ToTell},
    report::DrainReport,
};

/// After the cut, how long the tasks of cut connections get to drop their
/// sockets before the report is written. They only have to notice an error
/// and unwind, which takes microseconds; the bound is for handlers that
/// ignore their errors.
const UNWIND_GRACE: Duration = Duration::from_secs(1);

/// Waits for a drain request, then takes the server through
/// announcing → draining → (forcing) → stopped, logging every step.
pub(crate) async fn drive(lifecycle: &Lifecycle, registry: &Registry) -> DrainReport {
    wait_for(lifecycle, Phase::Announcing).await;
    let started = Instant::now();
    let config = lifecycle.config();
    let reason = lifecycle
        .reason()
        .cloned()
        .unwrap_or_else(|| DrainReason::Requested("unknown".into()));
    // A restart's successor already serves on the same socket: there is
    // no load balancer to wait for.
    let announce = if reason.is_restart() {
        DrainAnnounce::For(Duration::ZERO)
    } else {
        config.drain_announce
    };
    if !reason.is_restart() {
        notify::stopping();
    }
    let latest = announce.max() + config.drain_timeout;
    tracing::info!(
        reason = %reason,
        announce = match announce {
            DrainAnnounce::UntilQuiet { .. } => "until quiet",
            _ => "fixed",
        },
        announce_ms = announce.max().as_millis() as u64,
        timeout_ms = config.drain_timeout.as_millis() as u64,
        deadline_ms = latest.as_millis() as u64,
        "shutdown.begin"
    );

    let state = State {
        started,
        // Moved earlier once the announce period ends.
        deadline_ms: AtomicU64::new(ms(latest)),
        to_tell: AtomicUsize::new(0),
    };
    let cut = tokio::select! {
        biased;
        cut = run_phases(lifecycle, registry, announce, &state) => cut,
        () = report_progress(lifecycle, registry, &state) => unreachable!("progress reports until cancelled"),
    };

    let report = DrainReport {
        reason,
        duration: started.elapsed(),
        cut,
        panicked: lifecycle.panicked(),
        totals: lifecycle.totals(),
    };
    lifecycle.advance(Phase::Stopped);
    tracing::info!(
        reason = %report.reason,
        outcome = if report.is_clean() { "drained" } else { "forced" },
        cut = report.cut,
        panicked = report.panicked,
        duration_ms = report.duration.as_millis() as u64,
        connections = report.totals.connections,
        accepted_during_drain = report.totals.accepted_during_drain,
        requests = report.totals.requests,
        upgrades = report.totals.upgrades,
        sse_streams = report.totals.sse_streams,
        "shutdown.complete"
    );
    report
}

/// What the phases and the progress reports share.
struct State {
    started: Instant,
    /// The deadline, in ms after `started`.
    deadline_ms: AtomicU64,
    /// Connections of a spread drain not yet told to go.
    to_tell: AtomicUsize,
}

impl State {
    fn deadline(&self) -> Instant {
        self.started + Duration::from_millis(self.deadline_ms.load(Ordering::Relaxed))
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// How often the announce period looks for traffic.
const QUIET_CHECK: Duration = Duration::from_millis(50);

/// Runs the announce period; returns why it ended.
async fn announce(lifecycle: &Lifecycle, announce: DrainAnnounce) -> &'static str {
    match announce {
        DrainAnnounce::For(period) if period.is_zero() => "none",
        DrainAnnounce::UntilQuiet { min, quiet, max } => {
            let start = Instant::now();
            let stats = lifecycle.stats();
            let mut seen = stats.announce_traffic_seen();
            let mut last_traffic = start;
            let mut ticks = tokio::time::interval(QUIET_CHECK);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    () = lifecycle.force_requested() => return "forced",
                }
                let now = Instant::now();
                let count = stats.announce_traffic_seen();
                if count != seen {
                    seen = count;
                    last_traffic = now;
                }
                if now - start >= max {
                    return "max";
                }
                if now - start >= min && now - last_traffic >= quiet {
                    return "quiet";
                }
            }
        }
        DrainAnnounce::For(period) => tokio::select! {
            () = sleep(period) => "elapsed",
            () = lifecycle.force_requested() => "forced",
        },
    }
}

/// Resolves once the phase is `phase` or later, borrowing the lifecycle.
async fn wait_for(lifecycle: &Lifecycle, phase: Phase) {
    let mut current = lifecycle.phase();
    while current < phase {
        current = lifecycle.changed_from(current).await;
    }
}

/// Returns how many connections had to be cut (0 when all drained).
async fn run_phases(
    lifecycle: &Lifecycle,
    registry: &Registry,
    period: DrainAnnounce,
    state: &State,
) -> usize {
    let why = announce(lifecycle, period).await;
    let announced = state.started.elapsed();
    state.deadline_ms.store(
        ms(announced + lifecycle.config().drain_timeout),
        Ordering::Relaxed,
    );
    if why != "none" {
        tracing::info!(after_ms = ms(announced), why, "shutdown.announced");
    }
    let deadline = state.deadline();
    let to_tell = &state.to_tell;

    // Queued connections are taken and the listener closes before anyone
    // is told to go: clients told to reconnect find the listener closed
    // (or, after a handoff, the new process) rather than a queue that is
    // about to be reset.
    registry.stop_accepting();
    tokio::select! {
        () = registry.listener_closed() => {}
        () = lifecycle.force_requested() => {}
    }
    let config = lifecycle.config();
    let window = config
        .drain_spread
        .window(long_lived(lifecycle), config.drain_timeout);
    let told = lifecycle.start_draining(!window.is_zero());
    to_tell.store(told.len(), Ordering::Relaxed);
    tracing::info!("shutdown.draining");
    if !told.is_empty() {
        tracing::info!(
            window_ms = window.as_millis() as u64,
            count = told.len(),
            "shutdown.spread"
        );
    }
    let telling = async {
        tell_spread(told, window, to_tell).await;
        std::future::pending::<()>().await
    };

    // Biased: a drain that was forced is forced even when nothing is left
    // to cut (its jobs are released at once), whichever came first.
    let why = tokio::select! {
        biased;
        () = lifecycle.force_requested() => "forced",
        () = sleep_until(deadline) => "deadline",
        () = registry.all_closed() => return 0,
        () = telling => unreachable!("telling pends once done"),
    };

    // Zero when the last connection closed as the deadline passed (or the
    // drain was forced before the accept loop let go of the listener):
    // nothing to cut, but the same bounded wait for the tracker to close.
    let remaining = registry.open();
    lifecycle.stats().conns_cut(remaining);
    lifecycle.advance(Phase::Forcing);
    if remaining > 0 {
        let counts = lifecycle.counts();
        tracing::warn!(
            why,
            cut = remaining,
            http1 = counts.http1,
            http2 = counts.http2,
            websocket = counts.websocket,
            sse = counts.sse,
            in_flight = counts.in_flight,
            "shutdown.forcing"
        );
    }
    if timeout(UNWIND_GRACE, registry.all_closed()).await.is_err() {
        tracing::warn!(
            still_open = registry.open(),
            detail = "cut connections still held by handlers that ignore their errors",
            "shutdown.unwind_timeout"
        );
    }
    remaining
}

/// Connections a spread is sized for: WebSockets, SSE streams, HTTP/2
/// connections and idle HTTP/1 ones (roughly: HTTP/1 connections less the
/// requests in flight, SSE streams among them).
fn long_lived(lifecycle: &Lifecycle) -> usize {
    let c = lifecycle.counts();
    c.websocket + c.sse + c.http2 + c.http1.saturating_sub(c.in_flight)
}

/// Tells the waiters of a spread drain to go, in random order, at instants
/// spread evenly over `window`.
async fn tell_spread(mut told: Vec<ToTell>, window: Duration, to_tell: &AtomicUsize) {
    fastrand::shuffle(&mut told);
    let start = Instant::now();
    let n = told.len().max(1) as f64;
    for (i, waiter) in told.into_iter().enumerate() {
        sleep_until(start + window.mul_f64(i as f64 / n)).await;
        waiter.tell();
        to_tell.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn report_progress(lifecycle: &Lifecycle, registry: &Registry, state: &State) {
    let period = lifecycle
        .config()
        .progress_interval
        .max(Duration::from_millis(10));
    let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
    loop {
        ticks.tick().await;
        let counts = lifecycle.counts();
        tracing::info!(
            phase = %lifecycle.phase(),
            remaining_ms = state.deadline().saturating_duration_since(Instant::now()).as_millis() as u64,
            connections = registry.open(),
            http1 = counts.http1,
            http2 = counts.http2,
            websocket = counts.websocket,
            sse = counts.sse,
            in_flight = counts.in_flight,
            queued = counts.queued,
            jobs = counts.jobs,
            to_tell = state.to_tell.load(Ordering::Relaxed),
            "shutdown.progress"
        );
        notify::status(&format!(
            "{}: {} connections, {} requests in flight, {} jobs",
            lifecycle.phase(),
            registry.open(),
            counts.in_flight,
            counts.jobs
        ));
    }
}

#[cfg(test)]
mod tests {
    //! The state machine alone, on paused time: a `TaskTracker` token stands
    //! in for a connection.

    use std::{sync::Arc, time::Duration};

    use super::*;
    use crate::{Config, Handle, Signal};

    /// A server's state without its sockets.
    struct Parts {
        lifecycle: Arc<Lifecycle>,
        registry: Arc<Registry>,
    }

    fn setup(announce: u64, timeout: u64) -> (Parts, Handle) {
        let config = Config::default()
            .drain_announce(Duration::from_secs(announce))
            .drain_timeout(Duration::from_secs(timeout));
        let lifecycle = Lifecycle::new(config);
        let handle = Handle::new(lifecycle.clone(), Arc::default());
        let parts = Parts {
            lifecycle,
            registry: Arc::default(),
        };
        (parts, handle)
    }

    /// Runs the state machine, with a stand-in for the accept loop that
    /// closes the listener when told to.
    fn spawn_drive(p: &Parts) -> tokio::task::JoinHandle<DrainReport> {
        fake_listener(p);
        let (lifecycle, registry) = (p.lifecycle.clone(), p.registry.clone());
        tokio::spawn(async move { drive(&lifecycle, &registry).await })
    }

    fn fake_listener(p: &Parts) {
        let registry = p.registry.clone();
        tokio::spawn(async move {
            registry.accepting_stopped().await;
            registry.listener_is_closed();
        });
    }

    fn listener_closed(p: &Parts) -> bool {
        p.registry.is_listener_closed()
    }

    /// Yields to the scheduler enough for spawned tasks to react.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    // Nothing happens until a drain is requested, however long we wait.
    #[tokio::test(start_paused = true)]
    async fn waits_for_a_request() {
        let (p, handle) = setup(0, 25);
        let task = spawn_drive(&p);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(handle.phase(), Phase::Serving);
        assert!(!p.lifecycle.is_draining());
        assert!(!task.is_finished());
        task.abort();
    }

    // Announce: readiness flips at once, connections are asked to go only
    // when the announce period ends.
    #[tokio::test(start_paused = true)]
    async fn announce_then_drain() {
        let (p, handle) = setup(5, 25);
        let watcher = handle.watcher();
        let conn = p.registry.token();
        let task = spawn_drive(&p);

        assert!(handle.drain(DrainReason::Signal(Signal::Terminate)));
        settle().await;
        assert_eq!(handle.phase(), Phase::Announcing);
        assert!(!watcher.is_ready());
        assert!(!watcher.is_draining());

        tokio::time::sleep(Duration::from_millis(4900)).await;
        assert!(!watcher.is_draining(), "drained before the announce ended");
        assert!(!p.registry.is_accepting_stopped());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(listener_closed(&p));
        assert!(watcher.is_draining());
        assert_eq!(handle.phase(), Phase::Draining);

        drop(conn);
        let report = task.await.unwrap();
        assert_eq!(report.cut, 0);
        assert_eq!(report.exit_code(), 0);
        assert_eq!(report.reason, DrainReason::Signal(Signal::Terminate));
        assert_eq!(handle.phase(), Phase::Stopped);
    }

    // A connection that never finishes is cut at announce + timeout.
    #[tokio::test(start_paused = true)]
    async fn deadline_forces() {
        let (p, handle) = setup(2, 10);
        let conn = p.registry.token();
        let task = spawn_drive(&p);
        let start = Instant::now();
        handle.drain(DrainReason::Requested("test".into()));

        let forcing = p.lifecycle.reached(Phase::Forcing);
        let cut = tokio::spawn(async move {
            forcing.await;
            let at = Instant::now();
            drop(conn);
            at
        });
        let cut_at = cut.await.unwrap();
        assert_eq!(cut_at - start, Duration::from_secs(12));
        let report = task.await.unwrap();
        assert_eq!(report.cut, 1);
        assert_ne!(report.exit_code(), 0);
    }

    // A second request to force cuts at once, mid-announce included.
    #[tokio::test(start_paused = true)]
    async fn force_cuts_at_once() {
        let (p, handle) = setup(5, 25);
        let _conn = p.registry.token();
        let task = spawn_drive(&p);
        let start = Instant::now();
        handle.drain(DrainReason::Signal(Signal::Terminate));
        tokio::time::sleep(Duration::from_secs(1)).await;
        handle.force();
        settle().await;
        assert_eq!(handle.phase(), Phase::Forcing);
        assert!(p.lifecycle.is_draining());
        // The token is never dropped: the report waits the unwind grace only.
        let report = task.await.unwrap();
        assert_eq!(report.cut, 1);
        assert!(start.elapsed() <= Duration::from_secs(1) + UNWIND_GRACE);
    }

    // The first reason wins; later requests report that they changed nothing.
    #[tokio::test(start_paused = true)]
    async fn first_reason_wins() {
        let (p, handle) = setup(0, 25);
        assert!(handle.drain(DrainReason::Signal(Signal::Interrupt)));
        assert!(!handle.drain(DrainReason::Restart));
        fake_listener(&p);
        let report = drive(&p.lifecycle, &p.registry).await;
        assert_eq!(report.reason, DrainReason::Signal(Signal::Interrupt));
        assert_eq!(report.cut, 0);
    }

    // Drained exactly when the last connection goes, not at the deadline.
    #[tokio::test(start_paused = true)]
    async fn completes_when_last_connection_closes() {
        let (p, handle) = setup(0, 25);
        let conns: Vec<_> = (0..3).map(|_| p.registry.token()).collect();
        let task = spawn_drive(&p);
        let start = Instant::now();
        handle.drain(DrainReason::Signal(Signal::Terminate));
        for (i, conn) in conns.into_iter().enumerate() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert!(
                !task.is_finished(),
                "finished with {} connections open",
                3 - i
            );
            drop(conn);
        }
        let report = task.await.unwrap();
        assert_eq!(report.cut, 0);
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    // A drain forced because a task panicked ends with exit code 3, even
    // with nothing to cut.
    #[tokio::test(start_paused = true)]
    async fn a_panicked_task_makes_the_drain_unclean() {
        let (p, _handle) = setup(5, 25);
        let task = spawn_drive(&p);
        p.lifecycle.task_panicked("signals");
        let report = task.await.unwrap();
        assert_eq!(report.cut, 0);
        assert_eq!(report.panicked, Some("signals"));
        assert!(!report.is_clean());
        assert_eq!(report.exit_code(), crate::EXIT_FORCED);
    }

    /// Drains with `spread` while 10 connection tasks wait: returns, for
    /// each, when it was told to go, from the drain request.
    async fn told_at(spread: crate::DrainSpread) -> Vec<Duration> {
        let config = Config::default().drain_spread(spread);
        let lifecycle = Lifecycle::new(config);
        let handle = Handle::new(lifecycle.clone(), Arc::default());
        let p = Parts {
            lifecycle,
            registry: Arc::default(),
        };
        let start = Instant::now();
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let waiter = crate::lifecycle::DrainWaiter::new(p.lifecycle.clone());
                let token = p.registry.token();
                tokio::spawn(async move {
                    std::future::poll_fn(|cx| waiter.poll_drained(cx)).await;
                    drop(token);
                    start.elapsed()
                })
            })
            .collect();
        settle().await;
        let task = spawn_drive(&p);
        handle.drain(DrainReason::Requested("test".into()));
        let mut at = Vec::new();
        for t in tasks {
            at.push(t.await.unwrap());
        }
        let report = task.await.unwrap();
        assert_eq!(report.cut, 0);
        at.sort();
        at
    }

    // A spread drain tells each waiting connection on its own, at instants
    // spread evenly over the window (here 10 over 1 s: 100 ms apart); a
    // zero spread tells them all at once.
    #[tokio::test(start_paused = true)]
    async fn spread_tells_connections_one_at_a_time() {
        let at = told_at(crate::DrainSpread::Over(Duration::from_secs(1))).await;
        for (i, t) in at.iter().enumerate() {
            let want = Duration::from_millis(100 * i as u64);
            assert!(
                t.abs_diff(want) <= Duration::from_millis(5),
                "connection {i} told at {t:?}, not near {want:?}: {at:?}"
            );
        }
        let at = told_at(crate::DrainSpread::Over(Duration::ZERO)).await;
        assert!(at.iter().all(|t| *t == at[0]), "{at:?}");
    }

    /// When the listener is told to close, with `traffic` requests (other
    /// than probes) arriving every 200 ms until that instant.
    async fn announce_ends_at(announce: crate::DrainAnnounce, traffic: Duration) -> Duration {
        let config = Config::default().drain_announce(announce);
        let lifecycle = Lifecycle::new(config);
        let handle = Handle::new(lifecycle.clone(), Arc::default());
        let p = Parts {
            lifecycle,
            registry: Arc::default(),
        };
        let task = spawn_drive(&p);
        let start = Instant::now();
        handle.drain(DrainReason::Signal(Signal::Terminate));
        let stats = p.lifecycle.clone();
        let sender = tokio::spawn(async move {
            let mut t = Duration::ZERO;
            while t < traffic {
                tokio::time::sleep(Duration::from_millis(200)).await;
                t += Duration::from_millis(200);
                stats.stats().announce_traffic();
            }
        });
        p.registry.accepting_stopped().await;
        let at = start.elapsed();
        sender.abort();
        task.await.unwrap();
        at
    }

    // Announcing until quiet: with no traffic it ends at its minimum; with
    // traffic until 5 s, a second of quiet later; with traffic throughout,
    // at its maximum.
    #[tokio::test(start_paused = true)]
    async fn announce_ends_when_the_traffic_stops() {
        let auto = crate::DrainAnnounce::auto();
        let quiet = announce_ends_at(auto, Duration::ZERO).await;
        assert!(
            quiet.abs_diff(Duration::from_secs(2)) <= Duration::from_millis(60),
            "{quiet:?}"
        );
        let after = announce_ends_at(auto, Duration::from_secs(5)).await;
        assert!(
            after >= Duration::from_secs(6) && after <= Duration::from_millis(6_100),
            "{after:?}"
        );
        let busy = announce_ends_at(auto, Duration::from_secs(60)).await;
        assert!(
            busy.abs_diff(Duration::from_secs(10)) <= Duration::from_millis(60),
            "{busy:?}"
        );
    }

    // A restart's drain has no announce period (its successor already
    // serves on the socket) and stays ready until it is forced.
    #[tokio::test(start_paused = true)]
    async fn a_restart_neither_announces_nor_turns_unready() {
        let (p, handle) = setup(5, 25);
        let conn = p.registry.token();
        let task = spawn_drive(&p);
        let start = Instant::now();
        handle.drain(DrainReason::Restart);
        p.registry.accepting_stopped().await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert!(p.lifecycle.is_ready());
        assert!(handle.watcher().is_ready());
        drop(conn);
        task.await.unwrap();

        let (p, handle) = setup(5, 25);
        handle.drain(DrainReason::Signal(Signal::Terminate));
        assert!(!p.lifecycle.is_ready(), "a stop turns unready at once");
    }
}
