//! The admin listener: Prometheus metrics, and the drain and upgrade
//! endpoints behind a bearer token. Separate from the service port so that
//! it can stay on loopback (or a private network) while the service faces
//! the world.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use lameduck::{DrainReason, Handle, Phase, handoff::UpgradeError};
use lameduck_jobs::{JobState, Journal};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{admin_allow::AdminAllow, routes::error};

#[derive(Clone, Debug)]
pub(crate) struct Admin {
    pub(crate) handle: Handle,
    pub(crate) journal: Arc<dyn Journal>,
    /// `None`: the drain and upgrade endpoints are disabled.
    pub(crate) token: Option<Arc<str>>,
    pub(crate) allow: Arc<AdminAllow>,
}

pub(crate) fn routes(admin: Admin) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/admin/drain", post(drain))
        .route("/admin/upgrade", post(upgrade))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such admin route") })
        .with_state(admin)
}

/// How long a connection gets to send its request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long, once the admin plane stops, the requests it accepted get to
/// finish.
const FINISH_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the admin plane on `listener` until `stop`, one request per
/// connection; then stops accepting and lets every accepted connection
/// finish its request (5 s at most).
///
/// Not `axum::serve`: its graceful shutdown closes a connection it has
/// accepted but whose request it has not read yet, and during an upgrade
/// that loses scrapes: the socket is shared with the successor, which
/// would have served them.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    allow: Arc<AdminAllow>,
    stop: CancellationToken,
) {
    let conns = TaskTracker::new();
    let refuse = Router::new().fallback(|| async {
        error(
            StatusCode::FORBIDDEN,
            "this source is not allowed on the admin listener (--admin-allow)",
        )
    });
    loop {
        let stream = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: retrying at once
                    // would spin.
                    tracing::warn!(error = %e, "admin.accept_error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (stream, peer) = stream;
        let app = if allow.admits(peer.ip()) {
            app.clone()
        } else {
            refuse.clone()
        };
        let service = TowerToHyperService::new(app);
        conns.spawn(async move {
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "admin.conn_error");
            }
        });
    }
    drop(listener);
    conns.close();
    let _ = tokio::time::timeout(FINISH_TIMEOUT, conns.wait()).await;
}

/// Compares in time that depends only on the lengths, so that response times
/// do not tell how much of a guess was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `Ok` when the request carries the token; the error response otherwise.
#[allow(clippy::result_large_err)]
fn authorize(admin: &Admin, headers: &HeaderMap) -> Result<(), Response> {
    let Some(token) = &admin.token else {
        return Err(error(
            StatusCode::NOT_FOUND,
            "admin endpoints are disabled (LAMEDUCK_ADMIN_TOKEN is not set)",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if same(given.as_bytes(), token.as_bytes()) {
        Ok(())
    } else {
        // No hint: missing, malformed and wrong tokens look the same.
        Err(error(StatusCode::UNAUTHORIZED, "unauthorized"))
    }
}

/// `POST /admin/drain`: starts the drain (202), as SIGTERM would.
async fn drain(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    if let Err(denied) = authorize(&admin, &headers) {
        return denied;
    }
    let started = admin
        .handle
        .drain(DrainReason::Requested("POST /admin/drain".into()));
    tracing::info!(started, "admin.drain");
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({ "started": started, "phase": admin.handle.phase() })),
    )
        .into_response()
}

/// `POST /admin/upgrade`: upgrades as SIGHUP would, and answers once the new
/// process is ready (200 with its pid) or the upgrade failed (the old
/// process keeps serving).
async fn upgrade(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    if let Err(denied) = authorize(&admin, &headers) {
        return denied;
    }
    match admin.handle.upgrade().await {
        Ok(pid) => axum::Json(json!({ "new_pid": pid })).into_response(),
        Err(
            e @ (UpgradeError::InProgress
            | UpgradeError::Draining
            | UpgradeError::TooManyGenerations(_)),
        ) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e) => error(StatusCode::BAD_GATEWAY, format!("upgrade failed: {e}")),
    }
}

/// `GET /metrics`: OpenMetrics text.
async fn metrics(State(admin): State<Admin>) -> Response {
    let counts = admin.handle.counts();
    let totals = admin.handle.totals();
    let phase = admin.handle.phase();
    let mut registry = Registry::with_prefix("lameduck");

    let gauge = |registry: &mut Registry, name: &str, help: &str, v: u64| {
        let g = Gauge::<i64>::default();
        g.set(v as i64);
        registry.register(name, help, g);
    };
    let counter = |registry: &mut Registry, name: &str, help: &str, v: u64| {
        let c = Counter::<u64>::default();
        c.inc_by(v);
        registry.register(name, help, c);
    };

    let connections = Family::<Vec<(&'static str, &'static str)>, Gauge>::default();
    for (kind, n) in [
        ("http1", counts.http1),
        ("http2", counts.http2),
        ("websocket", counts.websocket),
    ] {
        connections
            .get_or_create(&vec![("kind", kind)])
            .set(n as i64);
    }
    registry.register("connections", "Open connections by kind", connections);
    gauge(
        &mut registry,
        "sse_streams",
        "Open SSE streams",
        counts.sse as u64,
    );
    gauge(
        &mut registry,
        "in_flight_requests",
        "Requests being handled or whose response is being sent",
        counts.in_flight as u64,
    );
    gauge(
        &mut registry,
        "jobs_running",
        "Jobs running in this process",
        counts.jobs as u64,
    );
    counter(
        &mut registry,
        "admin_refused_sources",
        "Admin connections refused because their source is outside --admin-allow",
        admin.allow.refused(),
    );
    counter(
        &mut registry,
        "connections_accepted",
        "Connections accepted",
        totals.connections,
    );
    counter(
        &mut registry,
        "connections_closed",
        "Connections closed",
        totals.closed,
    );
    counter(
        &mut registry,
        "connections_cut",
        "Connections cut when the drain was forced (deadline or second signal)",
        totals.cut,
    );
    counter(
        &mut registry,
        "requests",
        "Requests received",
        totals.requests,
    );
    counter(
        &mut registry,
        "websocket_upgrades",
        "WebSocket upgrades",
        totals.upgrades,
    );
    counter(
        &mut registry,
        "log_lines_dropped",
        "Log lines not written (stderr closed, failing or too slow)",
        crate::logging::dropped_lines(),
    );
    counter(
        &mut registry,
        "tls_handshakes_failed",
        "TLS handshakes that failed or did not finish within the header-read timeout",
        totals.tls_handshakes_failed,
    );
    let rejected = Family::<Vec<(&'static str, &'static str)>, Counter>::default();
    rejected
        .get_or_create(&vec![("reason", "max_connections")])
        .inc_by(totals.rejected_connections);
    rejected
        .get_or_create(&vec![("reason", "max_in_flight")])
        .inc_by(totals.rejected_requests - totals.queue_timeouts);
    rejected
        .get_or_create(&vec![("reason", "queue_timeout")])
        .inc_by(totals.queue_timeouts);
    rejected
        .get_or_create(&vec![("reason", "rate_limit")])
        .inc_by(totals.rate_limited);
    rejected
        .get_or_create(&vec![("reason", "new_sessions")])
        .inc_by(totals.sessions_refused);
    registry.register(
        "rejected",
        "Connections and requests refused by a limit",
        rejected,
    );

    gauge(
        &mut registry,
        "queued_requests",
        "Requests waiting for a place under --max-in-flight",
        counts.queued as u64,
    );
    counter(
        &mut registry,
        "queue_waited",
        "Requests that waited in the --max-in-flight queue, then were served",
        totals.queue_waited,
    );
    let waited = Counter::<f64, std::sync::atomic::AtomicU64>::default();
    waited.inc_by(totals.queue_wait_micros as f64 / 1e6);
    registry.register(
        "queue_wait_seconds",
        "Time those requests waited in the queue, in total",
        waited,
    );

    let phases = Family::<Vec<(&'static str, &'static str)>, Gauge>::default();
    for p in Phase::all() {
        phases
            .get_or_create(&vec![("phase", p.as_str())])
            .set(i64::from(p == phase));
    }
    registry.register("phase", "1 for the current lifecycle phase", phases);
    let drain_secs = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    drain_secs.set(
        admin
            .handle
            .drain_elapsed()
            .map_or(0.0, |d| d.as_secs_f64()),
    );
    registry.register(
        "drain_duration_seconds",
        "Time since the drain started (0 before)",
        drain_secs,
    );

    match tokio::time::timeout(Duration::from_secs(1), admin.journal.counts()).await {
        Ok(Ok(states)) => {
            gauge(
                &mut registry,
                "journal_up",
                "Whether the job journal answered",
                1,
            );
            let jobs = Family::<Vec<(&'static str, &'static str)>, Gauge>::default();
            for s in JobState::ALL {
                jobs.get_or_create(&vec![("state", s.as_str())])
                    .set(states.get(s) as i64);
            }
            registry.register("jobs", "Jobs in the journal by state", jobs);
        }
        _ => gauge(
            &mut registry,
            "journal_up",
            "Whether the job journal answered",
            0,
        ),
    }

    let mut body = String::new();
    if let Err(e) = encode(&mut body, &registry) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::same;

    #[test]
    fn token_comparison() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
        assert!(!same(b"", b"x"));
        assert!(same(b"", b""));
    }
}
