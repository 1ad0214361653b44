//! Request ids: `x-request-id` taken from the client (when it is a sane
//! token) or made here, echoed in the response, and put on the request's
//! log lines: as a `request_id` field on the lines this service writes at
//! info and above (handlers read it from the request's [`RequestIds`]), and
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

use super::trace_context::{TRACEPARENT, Trace, TraceIdHex, hex_into};

pub(crate) const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Longest id taken from a client; a longer one is replaced, so a client
/// cannot make every log line of its request 64 KiB long.
const MAX_LEN: usize = 128;

/// What the middleware does beyond request ids.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Settings {
    /// `http.request` per response.
    pub(crate) access_log: bool,
    /// W3C trace context (`--no-trace-context` turns it off).
    pub(crate) trace_context: bool,
}

/// What the middleware found or made for a request, in the request's
/// extensions: the lines a handler writes name both ids, and a handler that
/// calls another service sends `trace.traceparent()` on.
#[derive(Clone, Debug)]
pub(crate) struct RequestIds {
    pub(crate) id: HeaderValue,
    /// `None` with `--no-trace-context`.
    pub(crate) trace: Option<Trace>,
}

impl RequestIds {
    pub(crate) fn request_id(&self) -> &str {
        // Validated or generated: visible ASCII.
        self.id.to_str().unwrap_or_default()
    }

    /// For a log line's `trace_id` field: absent without a trace context.
    pub(crate) fn trace_id(&self) -> Option<tracing::field::DisplayValue<TraceIdHex>> {
        self.trace
            .as_ref()
            .map(|t| tracing::field::display(t.trace_id()))
    }
}

/// The middleware: `axum::middleware::from_fn_with_state(Settings {..}, layer)`.
/// Nothing is written into the request's headers: a header map made to
/// fit what the client sent would grow (a reallocation) for each one.
pub(crate) async fn layer(
    axum::extract::State(settings): axum::extract::State<Settings>,
    mut request: Request,
    next: Next,
) -> Response {
    let (mut given, mut traceparent, mut tracestate) = (None, None, None);
    // One pass over a few headers costs less than three hashed lookups.
    for (name, value) in request.headers() {
        match name.as_str() {
            "x-request-id" if given.is_none() => given = Some(value),
            "traceparent" if traceparent.is_none() => traceparent = Some(value),
            "tracestate" if tracestate.is_none() => tracestate = Some(value),
            _ => {}
        }
    }
    let id = match given {
        Some(value) if acceptable(value.as_bytes()) => value.clone(),
        _ => generate(),
    };
    let shown = id.to_str().unwrap_or_default();
    let (trace, span) = if crate::otlp::exporting() {
        let (trace, span) = Trace::exported(traceparent, tracestate, shown);
        (Some(trace), span)
    } else {
        let trace = settings
            .trace_context
            .then(|| Trace::continue_or_start(traceparent));
        // Fields are read only when the span is enabled (debug logging).
        let span = tracing::debug_span!(
            "request",
            request_id = shown,
            trace_id = trace
                .as_ref()
                .map(|t| tracing::field::display(t.trace_id()))
        );
        (trace, span)
    };
    let traceparent = trace.as_ref().map(Trace::traceparent);
    let access = settings.access_log.then(|| {
        (
            Instant::now(),
            request.method().clone(),
            request.uri().path().to_owned(),
            trace.as_ref().map(Trace::trace_id),
        )
    });
    request.extensions_mut().insert(RequestIds {
        id: id.clone(),
        trace,
    });
    let mut response = next.run(request).instrument(span).await;
    if let Some((started, method, path, trace_id)) = access {
        tracing::info!(
            request_id = id.to_str().unwrap_or_default(),
            trace_id = trace_id.map(tracing::field::display),
            method = %method,
            path,
            status = response.status().as_u16(),
            duration_ms = started.elapsed().as_secs_f64() * 1e3,
            "http.request"
        );
    }
    let headers = response.headers_mut();
    headers.insert(HEADER, id);
    if let Some(traceparent) = traceparent {
        headers.insert(TRACEPARENT, traceparent);
    }
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
    hex_into(&prefix.to_be_bytes(), &mut buf[..16]);
    hex_into(&n.to_be_bytes(), &mut buf[17..]);
    HeaderValue::from_bytes(&buf).expect("hex digits are a valid header")
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
