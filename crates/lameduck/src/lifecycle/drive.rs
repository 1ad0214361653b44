//! The drain state machine, run by the server's `serve` future.

use std::time::Duration;

use tokio::time::{Instant, sleep, sleep_until, timeout};

use super::{DrainReason, Phase, Shared};
use crate::report::DrainReport;

/// After the cut, how long the tasks of cut connections get to drop their
/// sockets before the report is written. They only have to notice an error
/// and unwind, which takes microseconds; the bound is for handlers that
/// ignore their errors.
const UNWIND_GRACE: Duration = Duration::from_secs(1);

/// Waits for a drain request, then takes the server through
/// announcing → draining → (forcing) → stopped, logging every step.
pub(crate) async fn drive(shared: &Shared) -> DrainReport {
    shared.drain_requested.cancelled().await;
    let started = Instant::now();
    let _ = shared.drain_started.set(started.into_std());
    let config = &shared.config;
    let reason = shared
        .reason()
        .cloned()
        .unwrap_or_else(|| DrainReason::Requested("unknown".into()));
    let deadline = started + config.drain_announce + config.drain_timeout;
    shared.set_phase(Phase::Announcing);
    if !reason.is_restart() {
        crate::handoff::notify::stopping();
    }
    tracing::info!(
        reason = %reason,
        announce_ms = config.drain_announce.as_millis() as u64,
        timeout_ms = config.drain_timeout.as_millis() as u64,
        deadline_ms = (config.drain_announce + config.drain_timeout).as_millis() as u64,
        "shutdown.begin"
    );

    let forced = tokio::select! {
        biased;
        forced = run_phases(shared, deadline) => forced,
        () = report_progress(shared, deadline) => unreachable!("progress reports until cancelled"),
    };

    shared.set_phase(Phase::Stopped);
    let report = DrainReport {
        reason,
        duration: started.elapsed(),
        forced,
        panicked: shared.panicked(),
        totals: shared.stats.totals(),
    };
    tracing::info!(
        reason = %report.reason,
        outcome = if report.is_clean() { "drained" } else { "forced" },
        forced = report.forced,
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

/// Returns how many connections had to be cut (0 when all drained).
async fn run_phases(shared: &Shared, deadline: Instant) -> usize {
    let announce = shared.config.drain_announce;
    if !announce.is_zero() {
        tokio::select! {
            () = sleep(announce) => {}
            () = shared.force_requested.cancelled() => {}
        }
    }

    shared.set_phase(Phase::Draining);
    shared.stop_accepting.cancel();
    tokio::select! {
        () = shared.listener_closed.cancelled() => {}
        () = shared.force_requested.cancelled() => {}
    }
    shared.start_draining();
    tracing::info!("shutdown.draining");

    let why = tokio::select! {
        () = shared.tracker.wait() => return 0,
        () = sleep_until(deadline) => "deadline",
        () = shared.force_requested.cancelled() => "forced",
    };

    // Zero when the last connection closed as the deadline passed (or the
    // drain was forced before the accept loop let go of the listener):
    // nothing to cut, but the same bounded wait for the tracker to close.
    let remaining = shared.tracker.len();
    shared.stats.conns_forced(remaining);
    if remaining > 0 {
        shared.set_phase(Phase::Forcing);
        let counts = shared.stats.counts();
        tracing::warn!(
            why,
            forced = remaining,
            http1 = counts.http1,
            http2 = counts.http2,
            websocket = counts.websocket,
            sse = counts.sse,
            in_flight = counts.in_flight,
            "shutdown.forcing"
        );
    }
    shared.start_forcing();
    if timeout(UNWIND_GRACE, shared.tracker.wait()).await.is_err() {
        tracing::warn!(
            still_open = shared.tracker.len(),
            detail = "cut connections still held by handlers that ignore their errors",
            "shutdown.unwind_timeout"
        );
    }
    remaining
}

async fn report_progress(shared: &Shared, deadline: Instant) {
    let period = shared
        .config
        .progress_interval
        .max(Duration::from_millis(10));
    let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
    loop {
        ticks.tick().await;
        let counts = shared.stats.counts();
        tracing::info!(
            phase = %shared.phase(),
            remaining_ms = deadline.saturating_duration_since(Instant::now()).as_millis() as u64,
            connections = shared.tracker.len(),
            http1 = counts.http1,
            http2 = counts.http2,
            websocket = counts.websocket,
            sse = counts.sse,
            in_flight = counts.in_flight,
            jobs = counts.jobs,
            "shutdown.progress"
        );
        crate::handoff::notify::status(&format!(
            "{}: {} connections, {} requests in flight, {} jobs",
            shared.phase(),
            shared.tracker.len(),
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
    use crate::{Config, lifecycle::Handle};

    fn setup(announce: u64, timeout: u64) -> (Arc<Shared>, Handle) {
        let config = Config {
            drain_announce: Duration::from_secs(announce),
            drain_timeout: Duration::from_secs(timeout),
            ..Config::default()
        };
        let shared = Shared::new(config);
        let handle = Handle {
            shared: shared.clone(),
        };
        (shared, handle)
    }

    /// Runs the state machine, with a stand-in for the accept loop that
    /// closes the listener when told to.
    fn spawn_drive(shared: &Arc<Shared>) -> tokio::task::JoinHandle<DrainReport> {
        fake_listener(shared);
        let shared = shared.clone();
        tokio::spawn(async move { drive(&shared).await })
    }

    fn fake_listener(shared: &Arc<Shared>) {
        let shared = shared.clone();
        tokio::spawn(async move {
            shared.stop_accepting.cancelled().await;
            shared.tracker.close();
            shared.listener_closed.cancel();
        });
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
        let (shared, handle) = setup(0, 25);
        let task = spawn_drive(&shared);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(handle.phase(), Phase::Serving);
        assert!(!shared.draining.is_cancelled());
        assert!(!task.is_finished());
        task.abort();
    }

    // Announce: readiness flips at once, connections are asked to go only
    // when the announce period ends.
    #[tokio::test(start_paused = true)]
    async fn announce_then_drain() {
        let (shared, handle) = setup(5, 25);
        let watcher = handle.watcher();
        let conn = shared.tracker.token();
        let task = spawn_drive(&shared);

        assert!(handle.drain(DrainReason::Signal("SIGTERM")));
        settle().await;
        assert_eq!(handle.phase(), Phase::Announcing);
        assert!(!watcher.is_ready());
        assert!(!watcher.is_draining());

        tokio::time::sleep(Duration::from_millis(4900)).await;
        assert!(!watcher.is_draining(), "drained before the announce ended");
        assert!(!shared.stop_accepting.is_cancelled());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(shared.listener_closed.is_cancelled());
        assert!(watcher.is_draining());
        assert_eq!(handle.phase(), Phase::Draining);

        drop(conn);
        let report = task.await.unwrap();
        assert_eq!(report.forced, 0);
        assert_eq!(report.exit_code(), 0);
        assert_eq!(report.reason, DrainReason::Signal("SIGTERM"));
        assert_eq!(handle.phase(), Phase::Stopped);
    }

    // A connection that never finishes is cut at announce + timeout.
    #[tokio::test(start_paused = true)]
    async fn deadline_forces() {
        let (shared, handle) = setup(2, 10);
        let conn = shared.tracker.token();
        let task = spawn_drive(&shared);
        let start = Instant::now();
        handle.drain(DrainReason::Requested("test".into()));

        let forcing = shared.forcing.clone();
        let cut = tokio::spawn(async move {
            forcing.cancelled().await;
            let at = Instant::now();
            drop(conn);
            at
        });
        let cut_at = cut.await.unwrap();
        assert_eq!(cut_at - start, Duration::from_secs(12));
        let report = task.await.unwrap();
        assert_eq!(report.forced, 1);
        assert_ne!(report.exit_code(), 0);
    }

    // A second request to force cuts at once, mid-announce included.
    #[tokio::test(start_paused = true)]
    async fn force_cuts_at_once() {
        let (shared, handle) = setup(5, 25);
        let _conn = shared.tracker.token();
        let task = spawn_drive(&shared);
        let start = Instant::now();
        handle.drain(DrainReason::Signal("SIGTERM"));
        tokio::time::sleep(Duration::from_secs(1)).await;
        handle.force();
        settle().await;
        assert!(shared.forcing.is_cancelled());
        assert!(shared.draining.is_cancelled());
        // The token is never dropped: the report waits the unwind grace only.
        let report = task.await.unwrap();
        assert_eq!(report.forced, 1);
        assert!(start.elapsed() <= Duration::from_secs(1) + UNWIND_GRACE);
    }

    // The first reason wins; later requests report that they changed nothing.
    #[tokio::test(start_paused = true)]
    async fn first_reason_wins() {
        let (shared, handle) = setup(0, 25);
        assert!(handle.drain(DrainReason::Signal("SIGINT")));
        assert!(!handle.drain(DrainReason::Restart));
        fake_listener(&shared);
        let report = drive(&shared).await;
        assert_eq!(report.reason, DrainReason::Signal("SIGINT"));
        assert_eq!(report.forced, 0);
    }

    // Drained exactly when the last connection goes, not at the deadline.
    #[tokio::test(start_paused = true)]
    async fn completes_when_last_connection_closes() {
        let (shared, handle) = setup(0, 25);
        let conns: Vec<_> = (0..3).map(|_| shared.tracker.token()).collect();
        let task = spawn_drive(&shared);
        let start = Instant::now();
        handle.drain(DrainReason::Signal("SIGTERM"));
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
        assert_eq!(report.forced, 0);
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }
}
