//! Reconnect admission: a rate for new long-lived sessions (WebSocket
//! upgrades and SSE streams) per instance, so that an unplanned storm (an
//! instance killed, every client of it reconnecting to the others at once)
//! is spread over time instead of landing in one second.
//!
//! A refused session gets 503 with a spread `Retry-After`, except a
//! browser's WebSocket (its upgrade carries `Origin`): a page sees neither
//! the status nor the headers of a refused handshake, only that it failed,
//! so it is accepted and closed at once with 1013 (Try Again Later) and
//! `retry after N` as the reason, which a client can honour.

use std::{
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use axum::extract::{
    FromRequestParts,
    ws::{CloseFrame, Message, WebSocketUpgrade},
};
use governor::{
    DefaultDirectRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};
use http::{HeaderMap, Method, Request, header::ORIGIN};

use crate::config::SessionRate;

/// The shortest spread of `Retry-After` values, in seconds.
const MIN_SPREAD_SECS: u64 = 4;

/// The WebSocket close code "Try Again Later".
const TRY_AGAIN_LATER: u16 = 1013;

/// How long a refused browser WebSocket is given to answer the Close.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

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

/// Whether a refused session is told so inside the WebSocket (see the
/// module's documentation): a WebSocket upgrade with an `Origin`.
pub(crate) fn refused_inside<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(ORIGIN) && is_websocket(req)
}

/// Accepts a refused browser WebSocket and closes it at once with 1013 and
/// `retry after N` (N seconds, the `Retry-After` it would have had; also
/// in that header of the 101). `None` when the upgrade is not one a
/// WebSocket can be made of (the caller answers 503 instead).
pub(crate) async fn close_to_retry_later<B>(
    req: Request<B>,
    retry_after_secs: u64,
) -> Option<http::response::Parts> {
    let (mut parts, _) = req.into_parts();
    let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &())
        .await
        .ok()?;
    let response = upgrade.on_upgrade(move |mut socket| async move {
        let close = CloseFrame {
            code: TRY_AGAIN_LATER,
            reason: format!("retry after {retry_after_secs}").into(),
        };
        if socket.send(Message::Close(Some(close))).await.is_ok() {
            // Until the client's Close, so that the client ends the TCP
            // connection (no TIME_WAIT here); bounded.
            let _ = tokio::time::timeout(CLOSE_WAIT, async {
                while let Some(Ok(_)) = socket.recv().await {}
            })
            .await;
        }
    });
    let (mut parts, _) = response.into_parts();
    parts
        .headers
        .insert(http::header::RETRY_AFTER, retry_after_secs.into());
    Some(parts)
}

/// A WebSocket upgrade (HTTP/1 `Upgrade: websocket`, or an HTTP/2
/// extended CONNECT) or an SSE request (`Accept: text/event-stream`).
fn opens_a_session<B>(req: &Request<B>) -> bool {
    is_websocket(req) || has_token(req.headers(), http::header::ACCEPT, "text/event-stream")
}

fn is_websocket<B>(req: &Request<B>) -> bool {
    if *req.method() == Method::GET && has_token(req.headers(), http::header::UPGRADE, "websocket")
    {
        return true;
    }
    *req.method() == Method::CONNECT
        && req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

fn has_token(headers: &HeaderMap, name: http::header::HeaderName, token: &str) -> bool {
    // Most requests have neither header: one lookup, no iteration.
    let Some(first) = headers.get(&name) else {
        return false;
    };
    let listed = |v: &http::HeaderValue| {
        v.to_str().is_ok_and(|v| {
            v.split(',').any(|t| {
                t.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case(token)
            })
        })
    };
    listed(first) || headers.get_all(name).iter().skip(1).any(listed)
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
