//! `GET /topics/{name}/events`: a topic as Server-Sent Events.

use std::convert::Infallible;

use axum::{
    extract::{Path, RawQuery, State},
    http::{StatusCode, request::Parts},
    response::{
        IntoResponse, Response,
        sse::{Event as SseEvent, KeepAlive, Sse},
    },
};
use base64::Engine;
use futures_util::{Stream, StreamExt};
use lameduck::{Drain, sse::SseStream};
use serde_json::json;

use super::{Access, Topics, error, param};
use crate::{Event, Position, Resume, TopicError, TopicName};

/// `GET /topics/{name}/events`: SSE, resuming after `Last-Event-ID` (or
/// `?since=`).
pub(super) async fn events(
    State(topics): State<Topics>,
    Path(raw): Path<String>,
    RawQuery(query): RawQuery,
    drain: Drain,
    parts: Parts,
) -> Response {
    let topic = match topics.allowed(&raw, &parts, Access::Subscribe).await {
        Ok(topic) => topic,
        Err(response) => return response,
    };
    let headers = &parts.headers;
    let since = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or_else(|| param(query.as_deref(), "since"));
    let since = match since.map(|s| s.trim().parse::<Position>()).transpose() {
        Ok(since) => since,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let events = topics.fanout.subscribe(topic.clone(), since);
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
