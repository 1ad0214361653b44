//! Who may publish to and subscribe to a topic.

use async_trait::async_trait;
use axum::{
    http::{StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};

use crate::TopicName;

/// What a request wants to do with a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Access {
    /// Append messages (a POST, or a WebSocket's client frames).
    Publish,
    /// Read messages (SSE, or a WebSocket).
    Subscribe,
}

/// A refusal: its status (401 or 403, say) and a reason for the client,
/// sent as `{"error": reason}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied {
    status: StatusCode,
    reason: String,
}

impl Denied {
    /// 401: the request did not say who it is (or not convincingly).
    pub fn unauthorized(reason: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            reason: reason.into(),
        }
    }

    /// 403: who it is may not do this.
    pub fn forbidden(reason: impl Into<String>) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            reason: reason.into(),
        }
    }
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        let mut response = super::error(self.status, self.reason);
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// Decides, per request and topic, whether it may publish or subscribe.
/// A WebSocket is asked both when it opens: `Subscribe` (refused: the
/// upgrade is answered with the refusal) and `Publish` (refused: the first
/// client frame closes the socket with 1008, nothing stored).
///
/// Closures `Fn(&Parts, &TopicName, Access) -> Result<(), Denied>` are
/// hooks; implement the trait for one that must wait (a lookup).
///
/// # Examples
///
/// Anyone reads; only `admin-` topics need a header to publish:
///
/// ```
/// use lameduck_topics::http::{Access, Denied, Topics};
/// # let store = std::sync::Arc::new(lameduck_topics::MemoryStore::new(Default::default()));
///
/// let topics = Topics::new(store).authorize(|request: &axum::http::request::Parts, topic: &lameduck_topics::TopicName, access| {
///     if access == Access::Publish
///         && topic.as_str().starts_with("admin-")
///         && !request.headers.contains_key("x-admin")
///     {
///         return Err(Denied::forbidden("admin topics are published by admins"));
///     }
///     Ok(())
/// });
/// let app: axum::Router = topics.router();
/// # let _ = app;
/// ```
#[async_trait]
pub trait Authorize: Send + Sync + 'static {
    /// `Ok` lets the request go on.
    async fn authorize(
        &self,
        request: &Parts,
        topic: &TopicName,
        access: Access,
    ) -> Result<(), Denied>;
}

#[async_trait]
impl<F> Authorize for F
where
    F: Fn(&Parts, &TopicName, Access) -> Result<(), Denied> + Send + Sync + 'static,
{
    async fn authorize(
        &self,
        request: &Parts,
        topic: &TopicName,
        access: Access,
    ) -> Result<(), Denied> {
        self(request, topic, access)
    }
}

/// Lets every request do everything: the default.
#[derive(Clone, Copy, Debug, Default)]
pub struct AllowAll;

#[async_trait]
impl Authorize for AllowAll {
    async fn authorize(&self, _: &Parts, _: &TopicName, _: Access) -> Result<(), Denied> {
        Ok(())
    }
}

/// Anyone subscribes; publishing needs `Authorization: Bearer TOKEN`
/// (what `lameduck serve` does when `LAMEDUCK_TOPICS_TOKEN` is set).
#[derive(Clone)]
pub struct BearerToPublish {
    token: String,
}

impl std::fmt::Debug for BearerToPublish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToPublish(..)")
    }
}

impl BearerToPublish {
    /// Publishing needs `token`.
    pub fn new(token: impl Into<String>) -> Self {
        Self {
            token: token.into(),
        }
    }
}

#[async_trait]
impl Authorize for BearerToPublish {
    async fn authorize(
        &self,
        request: &Parts,
        _: &TopicName,
        access: Access,
    ) -> Result<(), Denied> {
        if access != Access::Publish {
            return Ok(());
        }
        let given = request
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // Compared in constant time: the token is a secret.
        match given {
            Some(given) if constant_time_eq(given.as_bytes(), self.token.as_bytes()) => Ok(()),
            _ => Err(Denied::unauthorized(
                "publishing needs Authorization: Bearer <token>",
            )),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
