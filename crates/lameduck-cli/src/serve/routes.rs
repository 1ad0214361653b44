//! The reference service's endpoints.

use std::{convert::Infallible, time::Duration};

use axum::{
    Json, Router,
    extract::{RawQuery, State, ws::WebSocketUpgrade},
    http::{HeaderMap, StatusCode, Uri},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::get,
};
use futures_util::{Stream, stream};
use lameduck::{
    Drain,
    sse::SseStream,
    ws::{WsConfig, WsSession},
};
use serde_json::json;
use tracing::Instrument;

const SLOW_DEFAULT_MS: u64 = 10_000;
const SLOW_MAX_MS: u64 = 600_000;
const EVENTS_DEFAULT_MS: u64 = 100;
const EVENTS_MAX_MS: u64 = 60_000;

/// The WebSocket endpoint's settings.
#[derive(Clone, Debug)]
pub(crate) struct WsLimits {
    pub(crate) config: WsConfig,
    pub(crate) max_message: usize,
    pub(crate) max_frame: usize,
    pub(crate) allowed_origins: std::sync::Arc<[String]>,
}

pub(crate) fn app(ws: WsLimits) -> Router {
    Router::new()
        .route("/ping", get(|| async { "pong" }))
        .route("/slow", get(slow))
        .route("/ws", get(websocket))
        .route("/events", get(events))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .with_state(ws)
}

/// Answers 504 (JSON) when a handler takes longer than `limit` to produce
/// its response head.
pub(crate) fn with_timeout(app: Router, limit: Duration) -> Router {
    app.layer(
        tower::ServiceBuilder::new()
            .layer(axum::error_handling::HandleErrorLayer::new(
                move |_: tower::BoxError| async move {
                    error(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!("no response within the request timeout ({limit:?})"),
                    )
                },
            ))
            .layer(tower::timeout::TimeoutLayer::new(limit)),
    )
}

/// A JSON error response: `{"error": "..."}`.
pub(super) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// Reads `name` from a query string as an integer in `0..=max`; absent means
/// `default`.
pub(super) fn query_u64(
    query: Option<&str>,
    name: &str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, String> {
    let value = query
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value);
    let Some(value) = value else {
        return Ok(default);
    };
    match value.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "invalid {name}={value:?}: expected an integer in {min}..={max}"
        )),
    }
}

/// `GET /slow?ms=N`: answers after N ms (default 10 000).
async fn slow(RawQuery(query): RawQuery) -> Response {
    let ms = match query_u64(query.as_deref(), "ms", SLOW_DEFAULT_MS, 0, SLOW_MAX_MS) {
        Ok(ms) => ms,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Json(json!({ "slept_ms": ms })).into_response()
}

/// `GET /ws`: echoes text and binary messages.
async fn websocket(
    upgrade: WebSocketUpgrade,
    drain: Drain,
    headers: HeaderMap,
    State(ws): State<WsLimits>,
) -> Response {
    if !lameduck::ws::origin_allowed(&headers, &ws.allowed_origins) {
        return error(StatusCode::FORBIDDEN, "WebSocket origin not allowed");
    }
    let config = ws.config;
    // The socket outlives the request; its log lines keep the request's id.
    let span = tracing::Span::current();
    let response = upgrade
        .read_buffer_size(lameduck::ws::READ_BUFFER)
        .max_message_size(ws.max_message)
        .max_frame_size(ws.max_frame)
        .on_upgrade(move |socket| {
            // Made before the `async` block, which then holds the session
            // only, not the socket it was made from as well.
            let mut ws = WsSession::with_config(socket, drain, config);
            async move {
                while let Some(msg) = ws.recv().await {
                    if ws.send(msg).await.is_err() {
                        break;
                    }
                }
                tracing::debug!(end = ?ws.end(), "ws.end");
            }
            .instrument(span)
        });
    with_pid(response)
}

/// Says which process answered (`x-lameduck-pid`), so clients can tell the
/// old process from its successor across an upgrade.
fn with_pid(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert("x-lameduck-pid", std::process::id().into());
    response
}

/// `GET /events?interval_ms=N`: an event every N ms (default 100), numbered
/// from the one after `Last-Event-ID`.
async fn events(RawQuery(query): RawQuery, headers: HeaderMap, drain: Drain) -> Response {
    let interval = match query_u64(
        query.as_deref(),
        "interval_ms",
        EVENTS_DEFAULT_MS,
        1,
        EVENTS_MAX_MS,
    ) {
        Ok(ms) => Duration::from_millis(ms),
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let last = match headers
        .get("last-event-id")
        .map(|v| last_event_id(v.as_bytes()))
    {
        None => 0,
        Some(Some(id)) => id,
        Some(None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid Last-Event-ID: expected an integer",
            );
        }
    };
    with_pid(
        Sse::new(SseStream::new(numbered(last, interval), drain))
            .keep_alive(KeepAlive::default())
            .into_response(),
    )
}

/// A `Last-Event-ID` as this service numbers its events: a decimal `u64`,
/// surrounding blanks ignored.
fn last_event_id(raw: &[u8]) -> Option<u64> {
    std::str::from_utf8(raw).ok()?.trim().parse().ok()
}

fn numbered(last: u64, interval: Duration) -> impl Stream<Item = Result<Event, Infallible>> {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    stream::unfold((last, ticks), |(last, mut ticks)| async move {
        ticks.tick().await;
        let id = last.checked_add(1)?;
        let event = Event::default().id(id.to_string()).data(id.to_string());
        Some((Ok(event), (id, ticks)))
    })
}

async fn livez() -> Response {
    Json(json!({ "status": "ok", "pid": std::process::id() })).into_response()
}

async fn readyz(drain: Drain) -> Response {
    let body = json!({ "phase": drain.phase(), "pid": std::process::id() });
    if drain.is_ready() {
        (StatusCode::OK, Json(body)).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

async fn not_found(uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no route for {}", uri.path()),
    )
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        // Any query string: a value in range, the default, or an error that
        // names the range; never a panic.
        #[test]
        fn query_values_are_in_range_or_refused(query in "[a-z=&0-9%.+-]{0,40}") {
            match query_u64(Some(&query), "ms", 5, 1, 1000) {
                Ok(v) => prop_assert!(v == 5 || (1..=1000).contains(&v)),
                Err(msg) => prop_assert!(msg.contains("1..=1000")),
            }
        }

        // Any header bytes: an id or a refusal, never a panic; every u64 is
        // read back exactly, with or without blanks around it.
        #[test]
        fn last_event_ids(raw in proptest::collection::vec(any::<u8>(), 0..40), id in any::<u64>()) {
            if let Some(n) = last_event_id(&raw) {
                // Only digits (after an optional '+') are ever taken.
                let text = std::str::from_utf8(&raw).unwrap().trim();
                let digits = text.strip_prefix('+').unwrap_or(text);
                prop_assert!(!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()), "{:?}", text);
                prop_assert_eq!(digits.parse::<u128>().ok(), Some(u128::from(n)));
            }
            prop_assert_eq!(last_event_id(format!(" {id}\t").as_bytes()), Some(id));
        }

        // Every in-range number is read back exactly.
        #[test]
        fn in_range_values_round_trip(v in 1u64..=1000, junk in "[a-z]{0,5}") {
            let query = format!("{junk}x=1&ms={v}");
            prop_assert_eq!(query_u64(Some(&query), "ms", 5, 1, 1000), Ok(v));
        }
    }

    #[test]
    fn query_parsing() {
        assert_eq!(query_u64(None, "ms", 5, 0, 10).unwrap(), 5);
        assert_eq!(query_u64(Some("ms=7"), "ms", 5, 0, 10).unwrap(), 7);
        assert_eq!(query_u64(Some("a=1&ms=0"), "ms", 5, 0, 10).unwrap(), 0);
        assert_eq!(query_u64(Some("msx=1"), "ms", 5, 0, 10).unwrap(), 5);
        for bad in [
            "ms=",
            "ms",
            "ms=11",
            "ms=-1",
            "ms=1.5",
            "ms=abc",
            "ms=99999999999999999999999",
        ] {
            let message = query_u64(Some(bad), "ms", 5, 0, 10).unwrap_err();
            assert!(message.contains("0..=10"), "{bad}: {message}");
        }
    }
}
