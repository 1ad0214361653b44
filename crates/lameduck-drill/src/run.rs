//! A drill under way: traffic, then the restarts, then the stop, each
//! watched and recorded.

use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    Drill, DrillError, Target,
    record::{Class, Phase, Recorder},
    report::Restart,
    target,
};

/// How the stop went.
#[derive(Default)]
pub(crate) struct Stop {
    pub(crate) trigger: String,
    pub(crate) signal_at_ms: Option<u64>,
    pub(crate) exit_at_ms: Option<u64>,
    pub(crate) status: Option<std::process::ExitStatus>,
}

/// A drill under way: the service, the recorder and the clock.
pub(crate) struct Run<'a, P> {
    pub(crate) drill: &'a Drill,
    pub(crate) live: &'a mut target::Live,
    pub(crate) rec: &'a Recorder,
    pub(crate) progress: &'a P,
    pub(crate) deadline: Instant,
    pub(crate) restarts: Vec<Restart>,
    /// Processes replaced by a restart and not yet seen to exit: (index in
    /// `restarts`, pid).
    pub(crate) replaced: Vec<(usize, u32)>,
    /// What the drill could not do, for the report.
    pub(crate) notes: Vec<String>,
    /// Fires the slow requests, this long before the stop.
    pub(crate) inflight: Option<(CancellationToken, Duration)>,
}

impl<P: Fn(&Recorder)> Run<'_, P> {
    pub(crate) fn tick(&self) {
        self.rec.sample();
        (self.progress)(self.rec);
    }

    /// Awaits `work` (a trigger command can take as long as the drain it
    /// waits for), sampling meanwhile.
    async fn ticking<T>(&self, work: impl Future<Output = T>) -> T {
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return out,
                () = tokio::time::sleep(Duration::from_millis(100)) => self.tick(),
            }
        }
    }

    /// Whether the drill must end now: its limit came, or it was
    /// interrupted.
    fn over(&self) -> bool {
        Instant::now() >= self.deadline || self.drill.interrupt.is_cancelled()
    }

    fn now_ms(&self) -> u64 {
        self.rec.elapsed().as_millis() as u64
    }

    /// Traffic, sampled, until `until` (or the drill's limit).
    pub(crate) async fn traffic_until(&mut self, until: Instant) {
        while Instant::now() < until && !self.over() {
            self.watch_replaced();
            self.tick();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `restarts` restarts, `restart_every` apart, each watched: when the
    /// service says it is ready again, and when the process it replaced
    /// exits.
    pub(crate) async fn restarts(&mut self) -> Result<(), DrillError> {
        let d = self.drill;
        let speaks_notify = self.live.readies() > 0;
        for n in 1..=d.restarts {
            if self.over() {
                let why = if d.interrupt.is_cancelled() {
                    "the drill was interrupted".to_owned()
                } else {
                    format!("the drill's limit ({:?}) came", d.limit)
                };
                self.notes
                    .push(format!("restarts stopped after {}: {why}", n - 1));
                break;
            }
            if self.live.spawned() && self.live.gone() {
                // Nothing left to restart: counted as a failed restart.
                break;
            }
            if self.live.restarts_given_pid() && self.live.gone() {
                self.notes.push(format!(
                    "restarts stopped after {}: pid {} is gone (a service that restarts under a new pid needs --restart-trigger)",
                    n - 1,
                    self.live.main_pid().unwrap_or_default()
                ));
                break;
            }
            let pid_before = self.live.main_pid();
            let readies = self.live.readies();
            let said_before = self.live.notices_so_far();
            let at = Instant::now();
            let i = self.restarts.len();
            self.restarts.push(Restart {
                n,
                means: self.live.restart_means(d.restart_signal),
                at_ms: self.now_ms(),
                pid_before,
                ..Restart::default()
            });
            self.rec.set_phase(Phase::During);
            let remaining = self.deadline.saturating_duration_since(at);
            self.ticking(self.live.restart(d.restart_signal, remaining))
                .await?;
            let next = at + d.restart_every;
            let ready_by = at + d.restart_timeout;
            let mut notices = self.live.notice_changes();
            let mut sampled = Instant::now();
            loop {
                let now = Instant::now();
                if self.restarts[i].ready_after_ms.is_none() && self.live.readies() > readies {
                    let pid_after = self.live.main_pid();
                    let r = &mut self.restarts[i];
                    r.ready_after_ms = Some(at.elapsed().as_millis() as u64);
                    r.pid_after = pid_after;
                    if let Some(old) = pid_before.filter(|_| pid_after != pid_before) {
                        self.replaced.push((i, old));
                    }
                }
                self.watch_replaced();
                let ready = !speaks_notify || self.restarts[i].ready_after_ms.is_some();
                let old_done = !self.replaced.iter().any(|&(j, _)| j == i);
                // The window ends when the new process is ready and the old
                // one gone; without reports, with the restart's time.
                if speaks_notify && ready && old_done {
                    self.rec.set_phase(Phase::After);
                }
                if self.over() || (self.live.spawned() && self.live.gone()) {
                    break;
                }
                // A service that said nothing at all (no RELOADING=1 either)
                // by the next restart's time did not start one: no point
                // waiting for the timeout.
                let started = self.live.notices_so_far() > said_before;
                if now >= next && (ready || now >= ready_by || !started) {
                    break;
                }
                if now.duration_since(sampled) >= Duration::from_millis(100) {
                    self.tick();
                    sampled = now;
                }
                // Woken at once by the service's READY=1, so that the time
                // to ready and the window's end are not rounded up to the
                // 10 ms poll of process exits.
                let notice = async {
                    match notices.as_mut() {
                        Some(rx) => rx.changed().await.is_ok(),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    open = notice => if !open { notices = None },
                    () = tokio::time::sleep(Duration::from_millis(10)) => {}
                }
            }
            self.rec.set_phase(Phase::After);
            let failure = if self.live.spawned() && self.live.gone() {
                Some("no process of the service is left".to_owned())
            } else if speaks_notify && self.live.notices_so_far() == said_before {
                Some(format!(
                    "no RELOADING=1 or READY=1 within {:?}: the signal started no restart",
                    d.restart_every
                ))
            } else if speaks_notify && self.restarts[i].ready_after_ms.is_none() {
                Some(format!("no READY=1 within {:?}", d.restart_timeout))
            } else if let Err(why) = self.live.healthy(&d.health).await {
                Some(format!("{} does not answer 200 after it ({why})", d.health))
            } else {
                None
            };
            if failure.is_some() {
                self.rec.count(Class::RestartFailed);
            }
            self.restarts[i].failure = failure;
        }
        Ok(())
    }

    /// Records the exits, seen since the last call, of processes that
    /// restarts replaced.
    fn watch_replaced(&mut self) {
        let now = self.now_ms();
        let mut replaced = std::mem::take(&mut self.replaced);
        replaced.retain(|&(i, pid)| {
            if !self.live.pid_ended(pid) {
                return true;
            }
            let status = self.live.status_of(pid).map(target::describe);
            let r = &mut self.restarts[i];
            r.old_exit_after_ms = Some(now - r.at_ms);
            r.old_exit_status = status;
            false
        });
        self.replaced = replaced;
    }

    /// The stop signal (or trigger), then the exit, then `after`.
    pub(crate) async fn stop(&mut self, stop: &mut Stop) -> Result<(), DrillError> {
        let d = self.drill;
        stop.trigger = match &d.target {
            Target::Running {
                pid: None,
                trigger: Some(t),
                ..
            } => format!("trigger `{t}`"),
            _ => "SIGTERM".to_owned(),
        };
        if d.interrupt.is_cancelled() {
            stop.trigger = format!("{} not sent: the drill was interrupted", stop.trigger);
            return Ok(());
        }
        if self.live.gone() {
            let why = match self.live.main_pid() {
                Some(pid) if !self.live.spawned() => format!("pid {pid} is gone"),
                _ => "the service was already gone".to_owned(),
            };
            stop.trigger = format!("{} not sent: {why}", stop.trigger);
            self.traffic_until(Instant::now() + d.after).await;
            return Ok(());
        }
        // After restarts, the stop waits for the slow requests' lead.
        if let Some((go, lead)) = self.inflight.take() {
            go.cancel();
            self.traffic_until(Instant::now() + lead).await;
        }
        stop.signal_at_ms = Some(self.now_ms());
        self.rec.set_phase(Phase::During);
        // Set before the signal leaves, so that no refusal the stop causes
        // is counted as a failure.
        self.rec.final_stop();
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        self.ticking(self.live.stop(Signal::SIGTERM, remaining))
            .await?;

        // The shutdown, until the process is gone.
        if self.live.can_watch_exit() {
            let mut sampled = Instant::now();
            while !self.over() {
                self.watch_replaced();
                if self.live.gone() {
                    stop.exit_at_ms = Some(self.now_ms());
                    break;
                }
                if sampled.elapsed() >= Duration::from_millis(100) {
                    self.tick();
                    sampled = Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if stop.exit_at_ms.is_none() && !d.interrupt.is_cancelled() {
                self.rec.count(Class::NoExit);
            }
        }
        self.rec.set_phase(Phase::After);
        stop.status = self.live.try_exit();
        self.traffic_until(Instant::now() + d.after).await;
        Ok(())
    }
}
