//! Reconnect admission: a rate for new long-lived sessions (WebSocket
//! upgrades and SSE streams) per instance, so that an unplanned storm (an
//! instance killed, every client of it reconnecting to the others at once)
//! is spread over time instead of landing in one second.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use governor::{
    DefaultDirectRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};
use http::{HeaderMap, Method, Request};

use crate::config::SessionRate;

/// The shortest spread of `Retry-After` values, in seconds.
const MIN_SPREAD_SECS: u64 = 4;

#[derive(Debug)]
pub(crate) struct Sessions {
    limiter: DefaultDirectRateLimiter,
    /// `Retry-After` values go from the wait for the next place to this
    /// many seconds past it: a full burst's worth of time, at least
    /// [`MIN_SPREAD_SECS`].
    spread_secs: u64,
    refused: AtomicU64,
}

impl Sessions {
    pub(crate) fn new(rate: SessionRate) -> Self {
        let quota = Quota::per_second(rate.per_second).allow_burst(rate.burst);
        Self {
            limiter: RateLimiter::direct(quota),
            spread_secs: (u64::from(rate.burst.get()) / u64::from(rate.per_second.get()))
                .max(MIN_SPREAD_SECS),
            refused: AtomicU64::new(0),
        }
    }

    /// `Ok` for any request but a new session, and for a new session with
    /// a place; otherwise the `Retry-After` to give, in seconds.
    pub(crate) fn admit<B>(&self, req: &Request<B>) -> Result<(), u64> {
        if !opens_a_session(req) {
            return Ok(());
        }
        match self.limiter.check() {
            Ok(()) => Ok(()),
            Err(not_until) => {
                self.refused.fetch_add(1, Relaxed);
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                let base = wait.as_millis().div_ceil(1000).max(1) as u64;
                Err(base + fastrand::u64(0..=self.spread_secs))
            }
        }
    }

    /// New sessions refused so far.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Relaxed)
    }
}

/// A WebSocket upgrade (HTTP/1 `Upgrade: websocket`, or an HTTP/2
/// extended CONNECT) or an SSE request (`Accept: text/event-stream`).
fn opens_a_session<B>(req: &Request<B>) -> bool {
    let headers = req.headers();
    if *req.method() == Method::GET && has_token(headers, http::header::UPGRADE, "websocket") {
        return true;
    }
    if *req.method() == Method::CONNECT
        && req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
    {
        return true;
    }
    has_token(headers, http::header::ACCEPT, "text/event-stream")
}

fn has_token(headers: &HeaderMap, name: http::header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',').any(|t| {
                t.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case(token)
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    fn request(method: Method, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri("/x");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn only_new_sessions_are_limited_with_spread_retry_afters() {
        let s = Sessions::new(
            SessionRate::per_second(NonZeroU32::new(1).unwrap()).burst(NonZeroU32::new(2).unwrap()),
        );
        let ws = request(
            Method::GET,
            &[("upgrade", "websocket"), ("connection", "Upgrade")],
        );
        let sse = request(
            Method::GET,
            &[("accept", "text/html, text/event-stream;q=0.9")],
        );
        let plain = request(Method::GET, &[("accept", "application/json")]);
        assert!(s.admit(&ws).is_ok());
        assert!(s.admit(&sse).is_ok());
        let mut afters = std::collections::HashSet::new();
        for _ in 0..50 {
            let after = s.admit(&ws).unwrap_err();
            assert!((1..=1 + MIN_SPREAD_SECS + 1).contains(&after), "{after}");
            afters.insert(after);
            assert!(s.admit(&plain).is_ok(), "plain requests are never limited");
        }
        assert!(afters.len() > 1, "Retry-After values differ: {afters:?}");
        assert_eq!(s.refused(), 50);
    }
}
