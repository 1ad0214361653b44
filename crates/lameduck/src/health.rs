//! Liveness and readiness handlers.
//!
//! Liveness says the process works (restart it if not); readiness says it
//! wants traffic. During a drain readiness fails at once, from the first
//! instant of the announce period, while liveness stays up: a draining
//! process must not be restarted by its orchestrator.

use axum::response::{IntoResponse, Response};
use http::StatusCode;

use crate::lifecycle::Drain;

/// `GET /livez`: 200 `ok` while the process runs.
pub async fn livez() -> &'static str {
    "ok"
}

/// `GET /readyz`: 200 `ready` while serving, 503 `draining` (with the phase)
/// from the moment a drain is requested.
///
/// # Examples
///
/// ```
/// use axum::{Router, routing::get};
/// let _app: Router = Router::new()
///     .route("/livez", get(lameduck::health::livez))
///     .route("/readyz", get(lameduck::health::readyz));
/// ```
pub async fn readyz(drain: Drain) -> Response {
    if drain.is_ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("draining ({})", drain.phase()),
        )
            .into_response()
    }
}
