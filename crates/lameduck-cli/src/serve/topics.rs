//! `/topics`: publish a message (202 once stored, with its position), and
//! read a topic as an SSE stream that resumes after `Last-Event-ID` or
//! `?since=`, saying so (`event: reset`) when it cannot.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, RawQuery, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode, header},
    response::{
        IntoResponse, Response,
        sse::{Event as SseEvent, KeepAlive, Sse},
    },
    routing::{get, post},
};
use base64::Engine;
use futures_util::{Stream, StreamExt};
use lameduck::{Drain, sse::SseStream};
use lameduck_topics::{
    Event, MAX_MESSAGE, NewMessage, Position, Resume, Store, SubscribeConfig, TopicError,
    TopicName, subscribe,
};
use serde_json::json;

use super::routes::error;

/// How long a publish waits for the store before answering 503.
const STORE_WAIT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub(crate) struct Topics {
    pub(crate) store: Arc<dyn Store>,
    /// Required to publish when set (`LAMEDUCK_TOPICS_TOKEN`).
    pub(crate) token: Option<Arc<str>>,
}

pub(crate) fn routes(topics: Topics) -> Router {
    Router::new()
        .route("/topics/{name}", post(publish))
        .route("/topics/{name}/events", get(events))
        .layer(DefaultBodyLimit::max(MAX_MESSAGE))
        .with_state(topics)
}

// The error is the response itself, built once, on a path that is rare.
#[allow(clippy::result_large_err)]
fn name(raw: &str) -> Result<TopicName, Response> {
    TopicName::new(raw).map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))
}

/// `POST /topics/{name}`: the body is the message.
async fn publish(
    State(topics): State<Topics>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Some(token) = &topics.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(&**token) {
            return error(StatusCode::UNAUTHORIZED, "unauthorized");
        }
    }
    let topic = match name(&raw) {
        Ok(topic) => topic,
        Err(response) => return response,
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return error(rejection.status(), rejection.body_text()),
    };
    let mut message = NewMessage::new(body);
    if let Some(key) = headers.get("idempotency-key") {
        match key.to_str() {
            Ok(key) if (1..=200).contains(&key.len()) => message = message.key(key),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "Idempotency-Key must be 1 to 200 visible ASCII characters",
                );
            }
        }
    }
    if let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        message = message.content_type(ct);
    }
    match tokio::time::timeout(STORE_WAIT, topics.store.publish(&topic, message)).await {
        Ok(Ok(published)) => (
            StatusCode::ACCEPTED,
            Json(json!({
                "position": published.position.to_string(),
                "duplicate": published.duplicate,
            })),
        )
            .into_response(),
        Ok(Err(TopicError::KeyConflict)) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the Idempotency-Key was used for another message",
        ),
        Ok(Err(e @ TopicError::TooLarge { .. })) => {
            error(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
        }
        Ok(Err(e)) => {
            tracing::warn!(topic = %topic, error = %e, "topic.store_unavailable");
            unavailable()
        }
        Err(_) => unavailable(),
    }
}

fn unavailable() -> Response {
    let mut response = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the topic store is unavailable; retry with the same Idempotency-Key",
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    response
}

/// `GET /topics/{name}/events`: SSE, resuming after `Last-Event-ID` (or
/// `?since=`).
async fn events(
    State(topics): State<Topics>,
    Path(raw): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    drain: Drain,
) -> Response {
    let topic = match name(&raw) {
        Ok(topic) => topic,
        Err(response) => return response,
    };
    let since = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            query
                .as_deref()
                .unwrap_or("")
                .split('&')
                .find_map(|kv| kv.strip_prefix("since=").map(str::to_owned))
        });
    let since = match since.map(|s| s.trim().parse::<Position>()).transpose() {
        Ok(since) => since,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let events = subscribe(
        topics.store,
        topic.clone(),
        since,
        SubscribeConfig::default(),
    );
    Sse::new(SseStream::new(as_sse(events, topic), drain))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// A topic's events as SSE: each message with its position as `id:`, a
/// resume that was not recovered as `event: reset`, a subscriber left
/// behind as `event: lagged` (and the end).
fn as_sse(
    events: impl Stream<Item = Result<Event, TopicError>> + Send + 'static,
    topic: TopicName,
) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static {
    events.filter_map(move |event| {
        let topic = topic.clone();
        async move {
            let sse = match event {
                Ok(Event::Start {
                    resume: Resume::NotRecovered(why),
                    from,
                }) => SseEvent::default()
                    .event("reset")
                    .id(from.to_string())
                    .data(
                        json!({
                            "recovered": false,
                            "from": from.to_string(),
                            "why": format!("{why:?}"),
                        })
                        .to_string(),
                    ),
                Ok(Event::Start { .. }) => return None,
                Ok(Event::Message(m)) => {
                    let event = SseEvent::default().id(m.position.to_string());
                    match std::str::from_utf8(&m.payload) {
                        Ok(text) if !text.contains('\r') => event.data(text),
                        _ => event
                            .event("binary")
                            .data(base64::engine::general_purpose::STANDARD.encode(&m.payload)),
                    }
                }
                Ok(Event::Lagged { at }) => SseEvent::default()
                    .event("lagged")
                    .data(json!({ "at": at.to_string() }).to_string()),
                Ok(_) => return None,
                Err(e) => {
                    tracing::warn!(topic = %topic, error = %e, "topic.store_unavailable");
                    SseEvent::default()
                        .event("error")
                        .data(json!({ "error": "the topic store is unavailable" }).to_string())
                }
            };
            Some(Ok(sse))
        }
    })
}
