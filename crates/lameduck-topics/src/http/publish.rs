//! `POST /topics/{name}`.

use std::time::Duration;

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use serde_json::json;

use super::{Access, Topics, error};
use crate::{NewMessage, TopicError};

/// How long a publish waits for the store before answering 503.
const STORE_WAIT: Duration = Duration::from_secs(5);

/// `POST /topics/{name}`: the body is the message.
pub(super) async fn publish(
    State(topics): State<Topics>,
    Path(raw): Path<String>,
    parts: Parts,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let topic = match topics.allowed(&raw, &parts, Access::Publish).await {
        Ok(topic) => topic,
        Err(response) => return response,
    };
    let headers: &HeaderMap = &parts.headers;
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
