//! The topics over HTTP, as an axum [`Router`]: publish with a POST, read
//! as Server-Sent Events or over a WebSocket that also publishes. This is
//! the wire `lameduck serve` speaks; an application mounts the same with
//! a few lines (see [`Topics`]).
//!
//! - `POST /topics/{name}`: the body is the message (at most
//!   [`MAX_MESSAGE`]: 413 above; a bad name: 400). `202
//!   {"position":"E-O","duplicate":false}` once stored. An
//!   `Idempotency-Key` makes a retry answer the first position, stored
//!   once; a key reused for another message gets 422; a store that cannot
//!   be reached gets 503 with `Retry-After`.
//! - `GET /topics/{name}/events`: SSE. Each message with its position as
//!   `id:` and its text as `data:` (bytes that are not UTF-8 as base64,
//!   with `event: binary`). Resumes after `Last-Event-ID` or `?since=`; a
//!   resume that is not recovered starts with `event: reset` and `data:
//!   {"recovered":false,"from":"E-O"}`; a subscriber left behind gets
//!   `event: lagged` and the end of the stream.
//! - `GET /topics/{name}/ws?since=E-O&session=S`: a WebSocket. The first
//!   frame is `{"topic","recovered","from","session"}`, the session issued
//!   on a first connect (128 random bits) and given back on reconnects;
//!   then `{"topic","pos","data"}` per message (`data_b64` for bytes that
//!   are not UTF-8). Client frames `{"id","data"}` are published, keyed by
//!   (session, id), and answered `{"ack","pos"}` once stored: a client that
//!   resends what was not acknowledged after a reconnect publishes each
//!   message once. A malformed frame closes with 1007, an unknown session
//!   or a publish the [`Authorize`] hook refuses with 1008, a store that
//!   cannot be reached with 1013. On a drain the session sends what was
//!   stored before that instant, then its Close.
//!
//! - `GET /topics.js`: the browser client, an ES module ([`CLIENT_JS`]).
//!
//! [`MAX_MESSAGE`]: crate::MAX_MESSAGE

mod auth;
mod publish;
mod sse;
mod ws;

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::DefaultBodyLimit,
    http::{StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::json;

use crate::{Fanout, MAX_MESSAGE, Store, SubscribeConfig, TopicName};

pub use auth::{Access, AllowAll, Authorize, BearerToPublish, Denied};

/// The topics of a store, served over HTTP, with the hook that decides who
/// may publish and subscribe.
///
/// # Examples
///
/// An application that serves the topics of a SQLite file and lets only
/// holders of a token publish:
///
/// ```
/// use std::sync::Arc;
/// use lameduck_topics::{Retention, SqliteStore, http::{BearerToPublish, Topics}};
///
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("topics.db");
/// let store = Arc::new(SqliteStore::open(&path, Retention::default()).unwrap());
/// let app: axum::Router = axum::Router::new()
///     .merge(Topics::new(store).authorize(BearerToPublish::new("s3cret")).router());
/// // Served by lameduck's `Server`, its SSE and WebSocket handlers end
/// // cleanly on a drain (see docs/topics.md).
/// # let _ = app;
/// ```
#[derive(Clone)]
pub struct Topics {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) authorize: Arc<dyn Authorize>,
    /// Subscriptions share one reader of each topic.
    pub(crate) fanout: Arc<Fanout>,
}

impl std::fmt::Debug for Topics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topics")
            .field("store", &self.store)
            .field("fanout", &self.fanout)
            .finish_non_exhaustive()
    }
}

impl Topics {
    /// The topics of `store`, open to anyone (see [`Topics::authorize`]).
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            fanout: Arc::new(Fanout::new(store.clone(), SubscribeConfig::default())),
            store,
            authorize: Arc::new(AllowAll),
        }
    }

    /// Sets the hook asked, per request and topic, whether it may publish
    /// or subscribe.
    pub fn authorize(mut self, hook: impl Authorize) -> Self {
        self.authorize = Arc::new(hook);
        self
    }

    /// Sets how subscriptions read the store.
    pub fn subscribe_config(mut self, config: SubscribeConfig) -> Self {
        self.fanout = Arc::new(Fanout::new(self.store.clone(), config));
        self
    }

    /// The routes: `POST /topics/{name}`, `GET /topics/{name}/events`,
    /// `GET /topics/{name}/ws`, and the browser client, `GET /topics.js`
    /// (an ES module: [`CLIENT_JS`]). SSE and WebSocket handlers take lameduck's
    /// [`Drain`](lameduck::Drain), so they end cleanly when the server
    /// drains.
    pub fn router(self) -> Router {
        Router::new()
            .route("/topics/{name}", post(publish::publish))
            .route("/topics/{name}/events", get(sse::events))
            .route("/topics/{name}/ws", get(ws::websocket))
            .route("/topics.js", get(client))
            .layer(DefaultBodyLimit::max(MAX_MESSAGE))
            .with_state(self)
    }
}

/// The browser client: one plain ES module (`clients/js/lameduck-topics.js`
/// in the repository) that keeps its position, resends what was not
/// acknowledged, and reconnects with jittered back-off.
pub const CLIENT_JS: &str = include_str!("../../../../clients/js/lameduck-topics.js");

async fn client() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        CLIENT_JS,
    )
        .into_response()
}

/// A JSON error response: `{"error": "..."}`.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

impl Topics {
    /// The topic named `raw`, if `request` may `access` it; otherwise the
    /// response that says why not (400 for a bad name, the hook's refusal).
    // The error is the response itself, built once, on a path that is rare.
    #[allow(clippy::result_large_err)]
    async fn allowed(
        &self,
        raw: &str,
        request: &Parts,
        access: Access,
    ) -> Result<TopicName, Response> {
        let topic =
            TopicName::new(raw).map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))?;
        self.authorize
            .authorize(request, &topic, access)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(topic)
    }
}

/// A query parameter's raw value.
fn param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}
