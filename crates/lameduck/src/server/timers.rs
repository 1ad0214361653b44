//! Header-read and keep-alive timeouts of HTTP/1 connections, checked by one
//! sweep per server twice a second, instead of a timer armed for every
//! request (hyper's header-read timer costs about 1,600 instructions per
//! request). A connection's reads and request boundaries only store a
//! coarse timestamp.

use std::{sync::Arc, time::Duration};

use tokio::time::{Instant, MissedTickBehavior, interval};

use super::registry::Registry;
use crate::Config;

/// How often the sweep runs, and so how late a timeout may be noticed.
const PERIOD: Duration = Duration::from_millis(500);

/// Advances the coarse clock and closes (through their tasks) the idle
/// connections whose timer ran out. Runs until aborted.
pub(crate) async fn sweep(config: Config, registry: Arc<Registry>) {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    // Timestamps come from the coarse clock, which lags real time by up to
    // one period: adding a period means a timeout never fires early (it may
    // fire up to two periods late).
    let header = config
        .header_read_timeout
        .map(|d| ms(d).saturating_add(ms(PERIOD)));
    let idle = config
        .keep_alive_timeout
        .map(|d| ms(d).saturating_add(ms(PERIOD)));
    if header.is_none() && idle.is_none() {
        return;
    }
    let start = Instant::now();
    let mut ticks = interval(PERIOD);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        // Starts at 1: 0 means "no request head under way".
        let now = ms(start.elapsed()) + 1;
        registry.set_now_ms(now);
        let started = std::time::Instant::now();
        let swept = registry.timed_out(now, header, idle);
        // For the benchmark of the sweep (bench/sweep.sh, at debug level):
        // how long it ran, and the longest it held one map's lock, which a
        // connection being accepted may wait for.
        tracing::debug!(
            timed = swept.timed,
            expired = swept.expired.len(),
            micros = started.elapsed().as_micros() as u64,
            longest_hold_micros = swept.longest_hold.as_micros() as u64,
            "timers.sweep"
        );
        for conn in swept.expired {
            conn.expire();
        }
    }
}
