//! Request ids: `x-request-id` taken from the client (when it is a sane
//! token) or made here, echoed in the response, and put on the request's
//! log lines: as a `request_id` field on the lines this service writes at
//! info and above (handlers read it back from the request's headers), and
//! through a `request` span on everything logged inside the request when
//! debug logging is on. An info-level span on every request cost more than
//! the rest of `/ping` (callgrind: 13,821 -> 23,583 instructions), for the
//! few lines a request logs.

use std::{
    hash::{BuildHasher, RandomState},
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use axum::{
    extract::Request,
    http::{HeaderName, HeaderValue},
    middleware::Next,
    response::Response,
};
use tracing::Instrument;

pub(crate) const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Longest id taken from a client; a longer one is replaced, so a client
/// cannot make every log line of its request 64 KiB long.
const MAX_LEN: usize = 128;

/// Whether the access log (`http.request` per response) is on.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AccessLog(pub(crate) bool);

/// The middleware: `axum::middleware::from_fn_with_state(AccessLog(..), layer)`.
pub(crate) async fn layer(
    axum::extract::State(access): axum::extract::State<AccessLog>,
    mut request: Request,
    next: Next,
) -> Response {
    let id = match request.headers().get(&HEADER) {
        Some(value) if acceptable(value.as_bytes()) => value.clone(),
        _ => {
            let id = generate();
            request.headers_mut().insert(HEADER, id.clone());
            id
        }
    };
    // Validated or generated above: visible ASCII.
    let shown = id.to_str().unwrap_or_default();
    let (traceparent, span) = if crate::otlp::exporting() {
        super::trace_context::exported_span(request.headers_mut(), shown)
    } else {
        let traceparent = super::trace_context::continue_or_start(request.headers_mut());
        // Fields are read only when the span is enabled (debug logging).
        let span = tracing::debug_span!(
            "request",
            request_id = shown,
            trace_id = super::trace_context::trace_id_in(&traceparent)
        );
        (traceparent, span)
    };
    let started = access.0.then(Instant::now);
    let method = access.0.then(|| request.method().clone());
    let path = access.0.then(|| request.uri().path().to_owned());
    let mut response = next.run(request).instrument(span.clone()).await;
    if let (Some(started), Some(method), Some(path)) = (started, method, path) {
        tracing::info!(
            request_id = shown,
            trace_id = super::trace_context::trace_id_in(&traceparent),
            method = %method,
            path,
            status = response.status().as_u16(),
            duration_ms = started.elapsed().as_secs_f64() * 1e3,
            "http.request"
        );
    }
    response.headers_mut().insert(HEADER, id);
    response
        .headers_mut()
        .insert(super::trace_context::TRACEPARENT, traceparent);
    response
}

/// A client's id is kept when it is 1 to 128 visible ASCII characters other
/// than quotes and backslashes: safe to log and to echo as it is.
pub(crate) fn acceptable(id: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&id.len())
        && id
            .iter()
            .all(|&b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
}

/// The id a handler's request carries (the middleware puts a generated one
/// in the request's headers too), for its log lines.
pub(crate) fn of(headers: &axum::http::HeaderMap) -> &str {
    headers
        .get(&HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// `<16 hex digits, random per process>-<16 hex digits of a counter>`:
/// unique within the process by the counter, and across processes and
/// restarts by the prefix.
fn generate() -> HeaderValue {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    // `RandomState` is seeded from the OS's random source: no crate needed
    // for 64 random bits.
    let prefix = *PREFIX.get_or_init(|| RandomState::new().hash_one(std::process::id()));
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut buf = [b'-'; 33];
    hex(prefix, &mut buf[..16]);
    hex(n, &mut buf[17..]);
    HeaderValue::from_bytes(&buf).expect("hex digits are a valid header")
}

fn hex(mut n: u64, out: &mut [u8]) {
    for digit in out.iter_mut().rev() {
        *digit = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn generated_ids_are_acceptable_and_distinct() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert!(acceptable(a.as_bytes()), "{a:?}");
        assert_eq!(a.len(), 33);
        assert_eq!(
            a.as_bytes()[..17],
            b.as_bytes()[..17],
            "same process prefix"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Whatever bytes a client sends, an id kept is short and printable
        /// without escaping, and sane ids are kept.
        #[test]
        fn kept_ids_are_safe(id in proptest::collection::vec(any::<u8>(), 0..300)) {
            if acceptable(&id) {
                prop_assert!(!id.is_empty() && id.len() <= MAX_LEN);
                prop_assert!(id.iter().all(|b| (0x21..0x7f).contains(b) && *b != b'"' && *b != b'\\'));
            }
        }

        #[test]
        fn sane_ids_are_kept(id in "[A-Za-z0-9._:/+=-]{1,128}") {
            prop_assert!(acceptable(id.as_bytes()));
        }
    }
}
