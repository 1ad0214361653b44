//! `/topics`: publish a message (202 once stored, with its position), read
//! a topic as an SSE stream that resumes after `Last-Event-ID` or
//! `?since=`, saying so (`event: reset`) when it cannot, or over a
//! WebSocket that both delivers and publishes, each client message stored
//! once however often it is resent.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::Bytes,
    extract::ws::{CloseFrame, Message as WsMessage, WebSocketUpgrade},
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
use lameduck::{
    Drain,
    sse::SseStream,
    ws::{WsConfig, WsSession},
};
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
        .route("/topics/{name}/ws", get(websocket))
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
        .or_else(|| param(query.as_deref(), "since"));
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

/// A query parameter's raw value.
fn param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

/// Close codes of the topic WebSocket.
const CLOSE_INVALID: u16 = 1007;
const CLOSE_POLICY: u16 = 1008;
const CLOSE_ERROR: u16 = 1011;
const CLOSE_TRY_LATER: u16 = 1013;

/// `GET /topics/{name}/ws?since=E-O&session=S`: the first frame says how
/// the subscription started and names the session (issued on a first
/// connect, given back on reconnects); then a frame per message. Client
/// frames `{"id":"…","data":"…"}` are published, keyed by (session, id),
/// and answered `{"ack":"…","pos":"E-O"}` once stored: a client that
/// resends what was not acknowledged publishes each message once.
async fn websocket(
    State(topics): State<Topics>,
    Path(raw): Path<String>,
    RawQuery(query): RawQuery,
    upgrade: WebSocketUpgrade,
    drain: Drain,
) -> Response {
    let topic = match name(&raw) {
        Ok(topic) => topic,
        Err(response) => return response,
    };
    let since = match param(query.as_deref(), "since")
        .map(str::parse::<Position>)
        .transpose()
    {
        Ok(since) => since,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let session = param(query.as_deref(), "session").map(str::to_owned);
    upgrade
        .max_message_size(MAX_MESSAGE * 2)
        .on_upgrade(move |socket| async move {
            // Registered now, so that a spread drain tells this session at
            // its own instant.
            let told = drain.told();
            let config = WsConfig::default().handler_drains(true);
            let mut ws = WsSession::with_config(socket, drain, config);
            topic_session(&mut ws, told, topics, topic, since, session).await;
        })
}

/// Sends a Close with `code` and `reason` (through the raw socket: these
/// codes are the topic protocol's, not the drain's).
async fn close(ws: &mut WsSession, code: u16, reason: &str) {
    let frame = WsMessage::Close(Some(CloseFrame {
        code,
        reason: reason.to_owned().into(),
    }));
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.socket_mut().send(frame)).await;
}

async fn send_json(ws: &mut WsSession, value: serde_json::Value) -> bool {
    ws.send(WsMessage::text(value.to_string())).await.is_ok()
}

/// The frame of one event; `None` for events that carry none.
fn frame(topic: &TopicName, session: &str, event: &Event) -> Option<serde_json::Value> {
    Some(match event {
        Event::Start { resume, from } => json!({
            "topic": topic.as_str(),
            "recovered": !matches!(resume, Resume::NotRecovered(_)),
            "from": from.to_string(),
            "session": session,
        }),
        Event::Message(m) => match std::str::from_utf8(&m.payload) {
            Ok(text) => {
                json!({ "topic": topic.as_str(), "pos": m.position.to_string(), "data": text })
            }
            Err(_) => json!({
                "topic": topic.as_str(),
                "pos": m.position.to_string(),
                "data_b64": base64::engine::general_purpose::STANDARD.encode(&m.payload),
            }),
        },
        _ => return None,
    })
}

/// How long a drained session may take to send what was stored before
/// the drain, before its Close.
const DRAIN_FLUSH: Duration = Duration::from_secs(2);

async fn topic_session(
    ws: &mut WsSession,
    told: lameduck::Told,
    topics: Topics,
    topic: TopicName,
    since: Option<Position>,
    session: Option<String>,
) {
    let store = topics.store.clone();
    let session = match session {
        Some(s) => match store.session_known(&s).await {
            Ok(true) => s,
            Ok(false) => return close(ws, CLOSE_POLICY, "unknown session").await,
            Err(_) => return close(ws, CLOSE_TRY_LATER, "the topic store is unavailable").await,
        },
        None => match store.new_session().await {
            Ok(s) => s,
            Err(_) => return close(ws, CLOSE_TRY_LATER, "the topic store is unavailable").await,
        },
    };
    let mut events = Box::pin(subscribe(
        store.clone(),
        topic.clone(),
        since,
        SubscribeConfig::default(),
    ));
    tokio::pin!(told);
    // The last offset sent to the peer.
    let mut sent = 0u64;
    loop {
        tokio::select! {
            () = &mut told => {
                // What was stored before this instant goes out before the
                // Close (as far as the peer reads it in time); what the
                // client sent and saw no ack for is its to resend.
                if let Ok(head) = store.head(&topic).await {
                    let flush = async {
                        while sent < head.last {
                            match events.next().await {
                                Some(Ok(event)) => {
                                    match &event {
                                        Event::Message(m) => sent = m.position.offset,
                                        Event::Start { from, .. } => sent = from.offset,
                                        _ => {}
                                    }
                                    if let Some(f) = frame(&topic, &session, &event) {
                                        if !send_json(ws, f).await {
                                            return;
                                        }
                                    }
                                }
                                _ => return,
                            }
                        }
                    };
                    let _ = tokio::time::timeout(DRAIN_FLUSH, flush).await;
                }
                ws.close_for_drain().await;
                return;
            }
            msg = ws.recv() => match msg {
                Some(WsMessage::Text(text)) => {
                    match client_frame(text.as_str()) {
                        Ok((id, payload)) => {
                            let key = format!("ws-{session}-{id}");
                            match store.publish(&topic, NewMessage::new(payload).key(key)).await {
                                Ok(published) => {
                                    let ack = json!({ "ack": id, "pos": published.position.to_string() });
                                    if !send_json(ws, ack).await {
                                        return;
                                    }
                                }
                                Err(TopicError::KeyConflict) => {
                                    return close(ws, CLOSE_POLICY, "a message id was reused for another message").await;
                                }
                                Err(TopicError::TooLarge { .. }) => {
                                    return close(ws, CLOSE_POLICY, "message too large").await;
                                }
                                Err(_) => {
                                    return close(ws, CLOSE_TRY_LATER, "the topic store is unavailable").await;
                                }
                            }
                        }
                        Err(why) => return close(ws, CLOSE_INVALID, why).await,
                    }
                }
                Some(_) => return close(ws, CLOSE_INVALID, "frames are JSON text").await,
                None => return,
            },
            event = events.next() => {
                let event = match event {
                    Some(Ok(Event::Lagged { .. })) => {
                        return close(ws, CLOSE_TRY_LATER, "lagged: resume from your last position").await;
                    }
                    Some(Ok(event)) => event,
                    Some(Err(_)) | None => {
                        return close(ws, CLOSE_ERROR, "the topic store failed").await;
                    }
                };
                match &event {
                    Event::Message(m) => sent = m.position.offset,
                    Event::Start { from, .. } => sent = from.offset,
                    _ => {}
                }
                let Some(frame) = frame(&topic, &session, &event) else {
                    continue;
                };
                if !send_json(ws, frame).await {
                    return;
                }
            }
        }
    }
}

/// A client frame `{"id":"…","data":"…"}` (or `"data_b64"`): its id (1 to
/// 128 characters) and payload.
fn client_frame(text: &str) -> Result<(String, Bytes), &'static str> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|_| "a frame is a JSON object")?;
    let id = value
        .get("id")
        .and_then(|v| v.as_str())
        .filter(|id| (1..=128).contains(&id.len()))
        .ok_or("a frame needs an \"id\" of 1 to 128 characters")?
        .to_owned();
    let payload = match (value.get("data"), value.get("data_b64")) {
        (Some(serde_json::Value::String(s)), None) => Bytes::from(s.clone()),
        (None, Some(serde_json::Value::String(b))) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map(Bytes::from)
            .map_err(|_| "data_b64 is not base64")?,
        _ => return Err("a frame needs \"data\" (text) or \"data_b64\""),
    };
    Ok((id, payload))
}
