//! The traffic the drill drives, one module per kind of client.

mod h2;
mod http;
mod sse;
mod ws;

use std::{sync::Arc, time::Duration};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::record::Recorder;

/// Pause before reconnecting after a refusal, or after a session that
/// carried nothing, so that a stopped or refusing server is not hammered.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// A kind of traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Scenario {
    /// Idle keep-alive connections and idle WebSockets, then the signal.
    Idle,
    /// Slow requests that straddle the signal.
    Inflight,
    /// Keep-alive clients looping the ping path.
    Load,
    /// Numbered WebSocket messages, each echoed before the next.
    Websocket,
    /// SSE streams, reconnecting with `Last-Event-ID`.
    Sse,
    /// Mixed load (keep-alive requests, WebSocket messages, SSE streams)
    /// from clients that reconnect, across repeated restarts.
    Restart,
}

impl Scenario {
    /// Every scenario (`all`).
    pub const ALL: [Scenario; 6] = [
        Scenario::Idle,
        Scenario::Inflight,
        Scenario::Load,
        Scenario::Websocket,
        Scenario::Sse,
        Scenario::Restart,
    ];

    /// The scenario named `name`.
    pub fn from_name(name: &str) -> Option<Scenario> {
        Some(match name {
            "idle" => Scenario::Idle,
            "inflight" => Scenario::Inflight,
            "load" => Scenario::Load,
            "websocket" => Scenario::Websocket,
            "sse" => Scenario::Sse,
            "restart" => Scenario::Restart,
            _ => return None,
        })
    }
}

/// Paths, counts and rates of the scenarios.
#[derive(Clone, Debug, serde::Serialize)]
#[non_exhaustive]
pub struct Settings {
    /// A fast path (`load`, `idle`).
    pub ping: String,
    /// A path that answers after `?ms=N` (`inflight`).
    pub slow: String,
    /// A WebSocket echo path.
    pub ws: String,
    /// An SSE path.
    pub sse: String,
    /// Keep-alive clients of `load`.
    pub load_clients: usize,
    /// Pause between one `load` client's requests (0: none).
    pub load_pause: Duration,
    /// Requests of `inflight`.
    pub inflight: usize,
    /// How long each `inflight` request takes.
    pub slow_ms: u64,
    /// Idle keep-alive connections of `idle`.
    pub idle_http: usize,
    /// Idle WebSockets of `idle`.
    pub idle_ws: usize,
    /// Clients of `websocket`.
    pub ws_clients: usize,
    /// Pause between one `websocket` client's messages.
    pub ws_interval: Duration,
    /// Streams of `sse`.
    pub sse_clients: usize,
    /// Keep-alive clients of `restart`.
    pub restart_load: usize,
    /// WebSocket clients of `restart`.
    pub restart_ws: usize,
    /// SSE streams of `restart`.
    pub restart_sse: usize,
    /// How long one request, echo or handshake may take before it counts
    /// as lost.
    pub request_timeout: Duration,
    /// The `Host` of every request (default: the address, `IP:PORT`).
    pub host: Option<String>,
    /// `load` clients (and those of `restart`) speak HTTP/2: one
    /// connection each, [`H2_STREAMS`] streams at once (h2c with prior
    /// knowledge over plain TCP, `h2` by ALPN over TLS).
    pub http2: bool,
}

/// Streams in flight on one HTTP/2 `load` connection.
pub const H2_STREAMS: usize = 4;

impl Default for Settings {
    fn default() -> Self {
        Self {
            ping: "/ping".into(),
            slow: "/slow".into(),
            ws: "/ws".into(),
            sse: "/events".into(),
            load_clients: 32,
            load_pause: Duration::ZERO,
            inflight: 50,
            slow_ms: 2_000,
            idle_http: 200,
            idle_ws: 200,
            ws_clients: 50,
            ws_interval: Duration::from_millis(50),
            sse_clients: 20,
            restart_load: 16,
            restart_ws: 20,
            restart_sse: 10,
            request_timeout: Duration::from_secs(30),
            host: None,
            http2: false,
        }
    }
}

/// What every client task gets.
#[derive(Clone, Debug)]
pub(crate) struct Ctx {
    /// How every client connects (plain or TLS).
    pub(crate) dialer: crate::wire::Dialer,
    /// The `Host` header's value.
    pub(crate) host: Arc<str>,
    pub(crate) rec: Arc<Recorder>,
    pub(crate) settings: Arc<Settings>,
    /// Cancelled when the drill ends: clients stop and report what is still
    /// open.
    pub(crate) stop: CancellationToken,
    /// Cancelled half the slow requests' duration before the stop: they are
    /// sent then.
    pub(crate) inflight_go: CancellationToken,
}

impl Ctx {
    /// Waits `RETRY_PAUSE`; false if the drill stopped meanwhile.
    pub(crate) async fn pause(&self) -> bool {
        tokio::select! {
            () = tokio::time::sleep(RETRY_PAUSE) => true,
            () = self.stop.cancelled() => false,
        }
    }
}

/// Starts the clients of `scenario`; they run until `ctx.stop`.
pub(crate) async fn start(scenario: Scenario, ctx: &Ctx, tasks: &mut JoinSet<()>) {
    match scenario {
        Scenario::Load if ctx.settings.http2 => h2::load(ctx, ctx.settings.load_clients, tasks),
        Scenario::Load => http::load(ctx, ctx.settings.load_clients, tasks),
        Scenario::Inflight => http::inflight(ctx, tasks),
        Scenario::Idle => {
            http::idle(ctx, tasks).await;
            ws::idle(ctx, tasks).await;
        }
        Scenario::Websocket => ws::chat(ctx, ctx.settings.ws_clients, false, tasks).await,
        Scenario::Sse => sse::streams(ctx, ctx.settings.sse_clients, tasks).await,
        Scenario::Restart if ctx.settings.http2 => {
            h2::load(ctx, ctx.settings.restart_load, tasks);
            ws::chat(ctx, ctx.settings.restart_ws, true, tasks).await;
            sse::streams(ctx, ctx.settings.restart_sse, tasks).await;
        }
        Scenario::Restart => {
            http::load(ctx, ctx.settings.restart_load, tasks);
            ws::chat(ctx, ctx.settings.restart_ws, true, tasks).await;
            sse::streams(ctx, ctx.settings.restart_sse, tasks).await;
        }
    }
}
