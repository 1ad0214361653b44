//! W3C trace context: an incoming `traceparent` is validated and
//! continued (same trace, a span of this service's own as the parent of
//! whatever it calls), a request without one (or with a malformed one,
//! which is never echoed) starts a trace, and the response carries the
//! `traceparent` of this service's span. With span export, a well-formed
//! `tracestate` goes on into the exported span with a valid `traceparent`
//! and is dropped with an invalid one (without export nothing this service
//! sends would carry it). The trace id goes on the request's log lines as
//! `trace_id`, next to `request_id`. Nothing is written into the request:
//! handlers find the trace in its [`RequestIds`](super::request_id::RequestIds).

use axum::http::{HeaderName, HeaderValue};

pub(crate) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Longest `tracestate` kept (the specification's 32 members of up to 256
/// bytes are more than any real one; 512 bytes is what it asks a
/// propagator to keep at least).
const MAX_TRACESTATE: usize = 512;

/// The fields of a valid `traceparent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TraceParent {
    pub(crate) trace_id: [u8; 16],
    pub(crate) parent_id: [u8; 8],
    pub(crate) flags: u8,
}

/// Parses `version-traceid-parentid-flags`: version `00` exactly 55 bytes;
/// a later version at least as long, with anything after a `-`; lowercase
/// hex; neither id all zeros; version `ff` refused.
pub(crate) fn parse(value: &[u8]) -> Option<TraceParent> {
    if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let version = hex_byte(&value[0..2])?;
    if version == 0xff || (version == 0 && value.len() != 55) {
        return None;
    }
    if value.len() > 55 && value[55] != b'-' {
        return None;
    }
    let mut trace_id = [0u8; 16];
    for (i, b) in trace_id.iter_mut().enumerate() {
        *b = hex_byte(&value[3 + 2 * i..5 + 2 * i])?;
    }
    let mut parent_id = [0u8; 8];
    for (i, b) in parent_id.iter_mut().enumerate() {
        *b = hex_byte(&value[36 + 2 * i..38 + 2 * i])?;
    }
    let flags = hex_byte(&value[53..55])?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(TraceParent {
        trace_id,
        parent_id,
        flags,
    })
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(digit(two[0])? << 4 | digit(two[1])?)
}

/// The trace a request belongs to, and this service's span in it, as the
/// middleware found or made it (kept in the request's extensions through
/// [`RequestIds`](super::request_id::RequestIds)). Plain bytes: the hex
/// forms are written only where they are used, the response's
/// `traceparent` and the log lines that name the trace.
#[derive(Clone, Debug)]
pub(crate) struct Trace {
    pub(crate) trace_id: [u8; 16],
    /// This service's span: the parent of whatever a handler calls.
    pub(crate) span_id: [u8; 8],
    /// Only the sampled bit is passed on.
    pub(crate) flags: u8,
}

impl Trace {
    /// Continues the incoming trace when `traceparent` is valid (its trace
    /// id and sampled flag, a span id of our own), else starts one.
    pub(crate) fn continue_or_start(traceparent: Option<&HeaderValue>) -> Trace {
        let span_id = fastrand::u64(1..).to_be_bytes();
        match traceparent.and_then(|v| parse(v.as_bytes())) {
            Some(parent) => Trace {
                trace_id: parent.trace_id,
                span_id,
                flags: parent.flags & 0x01,
            },
            None => {
                let mut trace_id = [0u8; 16];
                trace_id[..8].copy_from_slice(&fastrand::u64(..).to_be_bytes());
                trace_id[8..].copy_from_slice(&fastrand::u64(1..).to_be_bytes());
                Trace {
                    trace_id,
                    span_id,
                    flags: 0,
                }
            }
        }
    }

    /// With span export on: the request's span, at info level, a child of
    /// a valid incoming `traceparent` (a new trace otherwise), and the
    /// trace as that span has it, so that the ids a client sees are the
    /// exported ones. A `tracestate` goes on, in the exported span, only
    /// with a valid `traceparent`, and only when it is well formed.
    pub(crate) fn exported(
        traceparent: Option<&HeaderValue>,
        tracestate: Option<&HeaderValue>,
        request_id: &str,
    ) -> (Trace, tracing::Span) {
        use opentelemetry::trace::{
            SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
        };
        use tracing_opentelemetry::OpenTelemetrySpanExt;

        let span = tracing::info_span!("request", request_id, trace_id = tracing::field::Empty);
        let parent = traceparent.and_then(|v| parse(v.as_bytes()));
        if let Some(parent) = parent {
            let state = tracestate
                .filter(|v| v.len() <= MAX_TRACESTATE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<TraceState>().ok())
                .unwrap_or_default();
            let remote = SpanContext::new(
                TraceId::from_bytes(parent.trace_id),
                SpanId::from_bytes(parent.parent_id),
                TraceFlags::new(parent.flags & 0x01),
                true,
                state,
            );
            let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
        }
        let context = span.context();
        let ours = context.span().span_context().clone();
        let trace = Trace {
            trace_id: ours.trace_id().to_bytes(),
            span_id: ours.span_id().to_bytes(),
            flags: ours.trace_flags().to_u8() & 0x01,
        };
        span.record("trace_id", tracing::field::display(trace.trace_id()));
        (trace, span)
    }

    /// `00-TRACEID-SPANID-FLAGS`: for the response, and for a handler to
    /// send on to what it calls.
    pub(crate) fn traceparent(&self) -> HeaderValue {
        let mut out = [b'-'; 55];
        out[..2].copy_from_slice(b"00");
        hex_into(&self.trace_id, &mut out[3..35]);
        hex_into(&self.span_id, &mut out[36..52]);
        hex_into(&[self.flags], &mut out[53..55]);
        HeaderValue::from_bytes(&out).expect("hex digits and dashes are a valid header")
    }

    /// The trace id as 32 lowercase hex digits, for log lines.
    pub(crate) fn trace_id(&self) -> TraceIdHex {
        let mut out = [0u8; 32];
        hex_into(&self.trace_id, &mut out);
        TraceIdHex(out)
    }
}

/// A trace id written out (see [`Trace::trace_id`]).
#[derive(Clone, Copy)]
pub(crate) struct TraceIdHex([u8; 32]);

impl TraceIdHex {
    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits are UTF-8")
    }
}

impl std::fmt::Display for TraceIdHex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lowercase hex of `bytes` into `out` (two digits a byte).
pub(crate) fn hex_into(bytes: &[u8], out: &mut [u8]) {
    // Two digits a lookup: this runs for every response.
    static PAIRS: [[u8; 2]; 256] = {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut table = [[0u8; 2]; 256];
        let mut i = 0;
        while i < 256 {
            table[i] = [HEX[i >> 4], HEX[i & 0xf]];
            i += 1;
        }
        table
    };
    for (pair, &b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&PAIRS[usize::from(b)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GIVEN: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn value(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn a_valid_traceparent_is_continued_with_a_span_of_our_own() {
        let trace = Trace::continue_or_start(Some(&value(GIVEN)));
        let out = trace.traceparent();
        let out = out.to_str().unwrap();
        assert_eq!(&out[..36], &GIVEN[..36]);
        assert_ne!(&out[36..52], &GIVEN[36..52]);
        assert!(out.ends_with("-01"));
        assert!(parse(out.as_bytes()).is_some());
        assert_eq!(
            trace.trace_id().as_str(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        // Only the sampled bit goes on.
        let other_flags = format!("{}-ff", &GIVEN[..52]);
        let out = Trace::continue_or_start(Some(&value(&other_flags))).traceparent();
        assert!(out.to_str().unwrap().ends_with("-01"), "{out:?}");
    }

    #[test]
    fn malformed_ones_are_replaced_never_echoed() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse(bad.as_bytes()).is_none(), "{bad}");
            let given = HeaderValue::from_str(bad).ok();
            let trace = Trace::continue_or_start(given.as_ref());
            let out = trace.traceparent();
            let out = out.to_str().unwrap();
            assert!(parse(out.as_bytes()).is_some(), "{out}");
            assert!(
                !out.contains("4bf92f3577b34da6a3ce929d0e0e4736"),
                "{bad} -> {out}"
            );
        }
        // A later version with more after a dash is read.
        assert!(parse(format!("01{}-more", &GIVEN[2..]).as_bytes()).is_some());
    }

    #[test]
    fn started_traces_differ() {
        let a = Trace::continue_or_start(None);
        let b = Trace::continue_or_start(None);
        assert_ne!(a.trace_id, b.trace_id);
        assert_ne!(a.trace_id, [0; 16]);
        assert_ne!(a.span_id, [0; 8]);
        assert_eq!(a.flags, 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        // Any header value: parsed or refused, never a panic; whatever is
        // answered is a valid traceparent naming the trace logged.
        #[test]
        fn any_value_is_handled(raw in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = parse(&raw);
            let given = HeaderValue::from_bytes(&raw).ok();
            let trace = Trace::continue_or_start(given.as_ref());
            let out = trace.traceparent();
            let parsed = parse(out.as_bytes());
            prop_assert!(parsed.is_some());
            prop_assert_eq!(parsed.unwrap().trace_id, trace.trace_id);
            let logged = trace.trace_id();
            prop_assert_eq!(&out.to_str().unwrap()[3..35], logged.as_str());
        }
    }
}
