//! W3C trace context: an incoming `traceparent` is validated and
//! continued (same trace, a span of this service's own as the parent of
//! whatever it calls), a request without one (or with a malformed one,
//! which is never echoed) starts a trace, and the response carries the
//! `traceparent` of this service's span. `tracestate` goes on with a valid
//! `traceparent` and is dropped with an invalid one. The trace id goes on
//! the request's log lines as `trace_id`, next to `request_id`.

use axum::http::{HeaderMap, HeaderName, HeaderValue};

pub(crate) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub(crate) const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

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

/// Continues the request's trace, or starts one: the request's
/// `traceparent` becomes this service's span (so handlers and the calls
/// they make carry it), an invalid `tracestate` is dropped; returns the
/// `traceparent` for the response.
pub(crate) fn continue_or_start(headers: &mut HeaderMap) -> HeaderValue {
    let incoming = headers.get(&TRACEPARENT).and_then(|v| parse(v.as_bytes()));
    let (trace_id, flags) = match incoming {
        Some(parent) => (parent.trace_id, parent.flags & 0x01),
        None => {
            // Only a `tracestate` without a valid `traceparent` goes.
            if headers.contains_key(&TRACESTATE) {
                headers.remove(&TRACESTATE);
            }
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&fastrand::u64(..).to_be_bytes());
            id[8..].copy_from_slice(&fastrand::u64(1..).to_be_bytes());
            (id, 0)
        }
    };
    if incoming.is_some()
        && !headers
            .get(&TRACESTATE)
            .is_none_or(|v| sane_tracestate(v.as_bytes()))
    {
        headers.remove(&TRACESTATE);
    }
    let span_id = fastrand::u64(1..).to_be_bytes();
    let value = format_traceparent(&trace_id, &span_id, flags);
    headers.insert(TRACEPARENT, value.clone());
    value
}

fn sane_tracestate(v: &[u8]) -> bool {
    v.len() <= MAX_TRACESTATE && v.iter().all(|&b| b == b' ' || b.is_ascii_graphic())
}

fn format_traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], flags: u8) -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 55];
    out[..3].copy_from_slice(b"00-");
    let mut at = 3;
    for &b in trace_id {
        out[at] = HEX[usize::from(b >> 4)];
        out[at + 1] = HEX[usize::from(b & 0xf)];
        at += 2;
    }
    out[at] = b'-';
    at += 1;
    for &b in span_id {
        out[at] = HEX[usize::from(b >> 4)];
        out[at + 1] = HEX[usize::from(b & 0xf)];
        at += 2;
    }
    out[at] = b'-';
    out[at + 1] = HEX[usize::from(flags >> 4)];
    out[at + 2] = HEX[usize::from(flags & 0xf)];
    HeaderValue::from_bytes(&out).expect("hex digits and dashes are a valid header")
}

/// With span export on: the request's span, at info level, as a child of
/// the incoming `traceparent` when it is valid (a new trace otherwise);
/// the request's `traceparent` becomes that span's, and is returned for
/// the response, so that the ids a client sees are the exported ones.
pub(crate) fn exported_span(
    headers: &mut HeaderMap,
    request_id: &str,
) -> (HeaderValue, tracing::Span) {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let span = tracing::info_span!("request", request_id, trace_id = tracing::field::Empty);
    match headers.get(&TRACEPARENT).and_then(|v| parse(v.as_bytes())) {
        Some(parent) => {
            if !headers
                .get(&TRACESTATE)
                .is_none_or(|v| sane_tracestate(v.as_bytes()))
            {
                headers.remove(&TRACESTATE);
            }
            let remote = SpanContext::new(
                TraceId::from_bytes(parent.trace_id),
                SpanId::from_bytes(parent.parent_id),
                TraceFlags::new(parent.flags & 0x01),
                true,
                TraceState::default(),
            );
            let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
        }
        None => {
            headers.remove(&TRACESTATE);
        }
    }
    let context = span.context();
    let ours = context.span().span_context().clone();
    let value = format_traceparent(
        &ours.trace_id().to_bytes(),
        &ours.span_id().to_bytes(),
        ours.trace_flags().to_u8(),
    );
    headers.insert(TRACEPARENT, value.clone());
    span.record("trace_id", trace_id_of(headers));
    (value, span)
}

/// The trace id in a `traceparent` this module made.
pub(crate) fn trace_id_in(traceparent: &HeaderValue) -> &str {
    traceparent
        .to_str()
        .ok()
        .and_then(|v| v.get(3..35))
        .unwrap_or("")
}

/// The trace id of the request (its `traceparent` after
/// [`continue_or_start`]), for its log lines; empty before.
pub(crate) fn trace_id_of(headers: &HeaderMap) -> &str {
    headers
        .get(&TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.get(3..35))
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GIVEN: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_continued_with_a_span_of_our_own() {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(GIVEN));
        h.insert(TRACESTATE, HeaderValue::from_static("congo=t61rcWkgMzE"));
        let out = continue_or_start(&mut h);
        let out = out.to_str().unwrap();
        assert_eq!(&out[..36], &GIVEN[..36]);
        assert_ne!(&out[36..52], &GIVEN[36..52]);
        assert!(out.ends_with("-01"));
        assert!(parse(out.as_bytes()).is_some());
        assert_eq!(trace_id_of(&h), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(h[&TRACESTATE], "congo=t61rcWkgMzE");
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
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(bad) {
                h.insert(TRACEPARENT, v);
            }
            h.insert(TRACESTATE, HeaderValue::from_static("a=b"));
            let out = continue_or_start(&mut h);
            let out = out.to_str().unwrap();
            assert!(parse(out.as_bytes()).is_some(), "{out}");
            assert!(
                !out.contains("4bf92f3577b34da6a3ce929d0e0e4736"),
                "{bad} -> {out}"
            );
            assert!(
                h.get(&TRACESTATE).is_none(),
                "tracestate goes with a bad traceparent"
            );
        }
        // A later version with more after a dash is read.
        assert!(parse(format!("01{}-more", &GIVEN[2..]).as_bytes()).is_some());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        // Any header value: parsed or refused, never a panic; whatever is
        // answered is a valid traceparent.
        #[test]
        fn any_value_is_handled(raw in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = parse(&raw);
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_bytes(&raw) {
                h.insert(TRACEPARENT, v);
            }
            let out = continue_or_start(&mut h);
            prop_assert!(parse(out.as_bytes()).is_some());
        }
    }
}
