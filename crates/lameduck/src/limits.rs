//! The request limits a server was configured with, and their state: the
//! in-flight limit and its queue, the per-client rate limit, the
//! new-session rate. Owned by the lifecycle; checked by the server's
//! service.

use crate::{
    Config,
    admission::Admission,
    rate::Limiter,
    sessions::Sessions,
    stats::{Counts, Totals},
};

#[derive(Debug)]
pub(crate) struct Limits {
    admission: Option<Admission>,
    limiter: Option<Limiter>,
    sessions: Option<Sessions>,
    /// Whether any is set: one branch a request when none is.
    any: bool,
}

impl Limits {
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            admission: config
                .max_in_flight
                .map(|max| Admission::new(max, config.max_in_flight_queue, config.queue_timeout)),
            limiter: config.rate_limit.clone().map(Limiter::new),
            sessions: config.max_new_sessions.map(Sessions::new),
            any: config.max_in_flight.is_some()
                || config.rate_limit.is_some()
                || config.max_new_sessions.is_some(),
        }
    }

    /// Whether a request limit is set (rate, new sessions, in flight).
    pub(crate) fn any(&self) -> bool {
        self.any
    }

    pub(crate) fn admission(&self) -> Option<&Admission> {
        self.admission.as_ref()
    }

    pub(crate) fn limiter(&self) -> Option<&Limiter> {
        self.limiter.as_ref()
    }

    pub(crate) fn sessions(&self) -> Option<&Sessions> {
        self.sessions.as_ref()
    }

    /// Adds what the limits count to the server's counts.
    pub(crate) fn add_counts(&self, counts: &mut Counts) {
        counts.queued = self.admission.as_ref().map_or(0, |a| a.stats().queued);
    }

    /// Adds what the limits count to the server's totals.
    pub(crate) fn add_totals(&self, totals: &mut Totals) {
        if let Some(queue) = self.admission.as_ref().map(Admission::stats) {
            totals.queue_timeouts = queue.timed_out;
            totals.queue_waited = queue.waited;
            totals.queue_wait_micros = queue.waited_us;
        }
        totals.rate_limited = self.limiter.as_ref().map_or(0, Limiter::limited);
        totals.sessions_refused = self.sessions.as_ref().map_or(0, Sessions::refused);
    }
}
