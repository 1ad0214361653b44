//! `GET /topics/{name}/ws`: a WebSocket that delivers a topic and
//! publishes to it, each client message stored once however often it is
//! resent.

use std::time::Duration;

use axum::{
    body::Bytes,
    extract::ws::{CloseFrame, Message as WsMessage, WebSocketUpgrade},
    extract::{Path, RawQuery, State},
    http::{StatusCode, request::Parts},
    response::Response,
};
use base64::Engine;
use futures_util::StreamExt;
use lameduck::{
    Drain,
    ws::{WsConfig, WsSession},
};
use serde_json::json;

use super::{Access, Topics, error, param};
use crate::{Event, MAX_MESSAGE, NewMessage, Position, Resume, TopicError, TopicName};

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
pub(super) async fn websocket(
    State(topics): State<Topics>,
    Path(raw): Path<String>,
    RawQuery(query): RawQuery,
    drain: Drain,
    parts: Parts,
    upgrade: WebSocketUpgrade,
) -> Response {
    let topic = match topics.allowed(&raw, &parts, Access::Subscribe).await {
        Ok(topic) => topic,
        Err(response) => return response,
    };
    // Asked once, with the request that opened the socket: the frames
    // that publish carry no headers of their own.
    let may_publish = topics
        .authorize
        .authorize(&parts, &topic, Access::Publish)
        .await
        .is_ok();
    let since = match param(query.as_deref(), "since")
        .map(str::parse::<Position>)
        .transpose()
    {
        Ok(since) => since,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let session = param(query.as_deref(), "session").map(str::to_owned);
    upgrade
        .read_buffer_size(lameduck::ws::READ_BUFFER)
        .max_message_size(MAX_MESSAGE * 2)
        .on_upgrade(move |socket| {
            // Registered now, so that a spread drain tells this session at
            // its own instant.
            let told = drain.told();
            let config = WsConfig::default().handler_drains(true);
            // Made before the `async` block, which then holds the session
            // only, not the socket it was made from as well.
            let mut ws = WsSession::with_config(socket, drain, config);
            async move {
                topic_session(&mut ws, told, topics, topic, since, session, may_publish).await;
            }
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
    may_publish: bool,
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
    let mut events = Box::pin(topics.fanout.subscribe(topic.clone(), since));
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
                Some(WsMessage::Text(_)) if !may_publish => {
                    return close(ws, CLOSE_POLICY, "not allowed to publish to this topic").await;
                }
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
