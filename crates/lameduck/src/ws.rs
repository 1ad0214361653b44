//! WebSocket sessions that end with a Close frame, never a cut socket.
//!
//! A [`WsSession`] wraps axum's [`WebSocket`]: it answers pings, sends its own
//! on a heartbeat and closes a peer that stops answering, and when the server
//! drains it flushes what is queued, sends Close with 1001 (Going Away) or,
//! on a restart, 1012 (Service Restart), and waits a bounded time for the
//! peer's Close before dropping the socket.

use std::{pin::Pin, time::Duration};

use crate::lifecycle::{Drain, DrainWaiter};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::SinkExt;
use tokio::time::{Interval, MissedTickBehavior, Sleep, sleep, timeout};

/// Close code sent when the server shuts down (RFC 6455: Going Away).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code sent when the server restarts and the client should reconnect
/// at once (IANA registry: Service Restart).
pub const CLOSE_SERVICE_RESTART: u16 = 1012;

/// Timings of a [`WsSession`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// let config = lameduck::ws::WsConfig::default()
///     .ping_interval(Duration::from_secs(30))
///     .close_timeout(Duration::from_secs(5));
/// assert_eq!(config.pong_timeout, Duration::from_secs(20));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct WsConfig {
    /// Interval between the server's pings (`ws.ping_interval`, default 20 s).
    pub ping_interval: Duration,
    /// How long after a ping without a pong the peer is declared dead and
    /// dropped (`ws.pong_timeout`, default 20 s); also how long a send may
    /// wait for a peer that reads nothing.
    pub pong_timeout: Duration,
    /// How long to wait for the peer's Close after sending ours
    /// (`ws.close_timeout`, default 2 s).
    pub close_timeout: Duration,
    /// The handler takes over the drain step (default `false`): `recv`
    /// then does not close the session when the server drains; the
    /// handler watches [`crate::Drain::told`], sends what it still owes
    /// the peer, and calls [`WsSession::close_for_drain`]. At the drain's
    /// deadline the socket is cut as any other.
    pub handler_drains: bool,
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(20),
            pong_timeout: Duration::from_secs(20),
            close_timeout: Duration::from_secs(2),
            handler_drains: false,
        }
    }
}

/// Setters, one per field, for building a `WsConfig` in one expression.
impl WsConfig {
    /// Sets [`WsConfig::ping_interval`].
    pub fn ping_interval(mut self, value: Duration) -> Self {
        self.ping_interval = value;
        self
    }

    /// Sets [`WsConfig::pong_timeout`].
    pub fn pong_timeout(mut self, value: Duration) -> Self {
        self.pong_timeout = value;
        self
    }

    /// Sets [`WsConfig::handler_drains`].
    pub fn handler_drains(mut self, value: bool) -> Self {
        self.handler_drains = value;
        self
    }

    /// Sets [`WsConfig::close_timeout`].
    pub fn close_timeout(mut self, value: Duration) -> Self {
        self.close_timeout = value;
        self
    }
}

/// Why a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WsEnd {
    /// The server drained: we sent Close with this code.
    Drained {
        /// 1001 or 1012.
        code: u16,
    },
    /// The peer sent Close (with its code, if any).
    ClosedByPeer {
        /// The peer's close code.
        code: Option<u16>,
    },
    /// No pong within the pong timeout.
    PeerDead,
    /// The peer broke a limit or the protocol: we sent Close with this code
    /// (1009 message too big, 1007 invalid UTF-8 in a text message, 1002
    /// protocol error) and dropped the socket.
    Refused {
        /// The close code sent.
        code: u16,
        /// What the peer did.
        reason: String,
    },
    /// The socket ended without a Close frame, or failed.
    Gone(String),
}

/// Close code for a message over the size limit (RFC 6455).
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code for a text message that is not UTF-8 (RFC 6455).
pub const CLOSE_INVALID_DATA: u16 = 1007;
/// Close code for a protocol violation (RFC 6455).
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;

/// The close code owed to a peer whose frame made `err`, if the error is the
/// peer's doing.
fn refusal_code(err: &axum::Error) -> Option<u16> {
    use std::error::Error as _;
    let inner = err.source()?.downcast_ref::<tungstenite::Error>()?;
    match inner {
        tungstenite::Error::Capacity(_) => Some(CLOSE_TOO_BIG),
        tungstenite::Error::Utf8(_) => Some(CLOSE_INVALID_DATA),
        tungstenite::Error::Protocol(_) => Some(CLOSE_PROTOCOL_ERROR),
        _ => None,
    }
}

/// Whether a WebSocket upgrade request may proceed, judged by its `Origin`
/// header: requests without one (non-browser clients) pass; a browser's
/// must come from the same host as the request (`Host`), or be listed in
/// `allowed` (exact `scheme://host[:port]`, or `*` for any). Browsers send
/// `Origin` on every WebSocket handshake, so this is what stops another
/// site's page from opening sockets with your users' cookies.
///
/// # Examples
///
/// ```
/// use http::HeaderMap;
/// use lameduck::ws::origin_allowed;
///
/// let mut headers = HeaderMap::new();
/// headers.insert("host", "app.example.com".parse().unwrap());
/// assert!(origin_allowed(&headers, &[]));
/// headers.insert("origin", "https://app.example.com".parse().unwrap());
/// assert!(origin_allowed(&headers, &[]));
/// headers.insert("origin", "https://evil.example".parse().unwrap());
/// assert!(!origin_allowed(&headers, &[]));
/// assert!(origin_allowed(&headers, &["https://evil.example".to_owned()]));
/// ```
pub fn origin_allowed(headers: &http::HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(http::header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let origin_host = origin
        .split_once("://")
        .map(|(_, rest)| rest.trim_end_matches('/'));
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok());
    matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

/// A WebSocket that takes part in the server's drain.
///
/// # Examples
///
/// An echo endpoint:
///
/// ```
/// use axum::{Router, extract::ws::WebSocketUpgrade, response::Response, routing::get};
/// use lameduck::{Drain, ws::WsSession};
///
/// async fn echo(upgrade: WebSocketUpgrade, drain: Drain) -> Response {
///     upgrade.on_upgrade(|socket| async move {
///         let mut ws = WsSession::new(socket, drain);
///         // `recv` returns `None` once the session is over, including after
///         // the drain's Close handshake.
///         while let Some(msg) = ws.recv().await {
///             if ws.send(msg).await.is_err() {
///                 break;
///             }
///         }
///     })
/// }
/// let _app: Router = Router::new().route("/ws", get(echo));
/// ```
#[must_use = "a session does nothing unless `recv` is called"]
pub struct WsSession {
    socket: WebSocket,
    drain: Drain,
    drained: DrainWaiter,
    config: WsConfig,
    ping: Interval,
    pong_deadline: Option<Pin<Box<Sleep>>>,
    end: Option<WsEnd>,
}

impl std::fmt::Debug for WsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsSession")
            .field("config", &self.config)
            .field("end", &self.end)
            .finish()
    }
}

impl WsSession {
    /// A session with the default [`WsConfig`].
    pub fn new(socket: WebSocket, drain: Drain) -> Self {
        Self::with_config(socket, drain, WsConfig::default())
    }

    /// A session with the given timings.
    pub fn with_config(socket: WebSocket, drain: Drain, config: WsConfig) -> Self {
        let period = config.ping_interval.max(Duration::from_millis(1));
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let drained = DrainWaiter::new(drain.lifecycle().clone());
        if config.handler_drains {
            // The handler's own `Drain::told` is the one a spread tells.
            drained.done_waiting();
        }
        Self {
            socket,
            drained,
            drain,
            config,
            ping,
            pong_deadline: None,
            end: None,
        }
    }

    /// The next Text or Binary message, or `None` once the session is over
    /// (see [`WsSession::end`] for why). Pings, pongs and the close
    /// handshake are handled here.
    ///
    /// # Cancel safety
    ///
    /// `recv` is cancel-safe: used as a branch of `tokio::select!` that
    /// loses to another branch, it is dropped without losing a message (a
    /// message is taken from the socket only in the poll that returns it).
    /// The session is one owner's: to send from other tasks, give them a
    /// channel and select over it and `recv` in the session's task.
    ///
    /// # Examples
    ///
    /// A chat handler: messages from the room (other tasks) and from the
    /// peer, in one loop.
    ///
    /// ```
    /// use axum::extract::ws::{Message, WebSocket};
    /// use lameduck::{Drain, ws::WsSession};
    /// use tokio::sync::broadcast;
    ///
    /// async fn chat(socket: WebSocket, drain: Drain, room: broadcast::Sender<String>) {
    ///     let mut ws = WsSession::new(socket, drain);
    ///     let mut heard = room.subscribe();
    ///     loop {
    ///         tokio::select! {
    ///             // Returns None after the drain's Close handshake.
    ///             msg = ws.recv() => match msg {
    ///                 Some(Message::Text(text)) => { let _ = room.send(text.to_string()); }
    ///                 Some(_) => {}
    ///                 None => break,
    ///             },
    ///             Ok(line) = heard.recv() => {
    ///                 if ws.send(Message::text(line)).await.is_err() {
    ///                     break;
    ///                 }
    ///             }
    ///         }
    ///     }
    /// }
    /// # let _ = chat;
    /// ```
    pub async fn recv(&mut self) -> Option<Message> {
        if self.end.is_some() {
            return None;
        }
        loop {
            let pong_deadline = async {
                match self.pong_deadline.as_mut() {
                    Some(deadline) => deadline.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = std::future::poll_fn(|cx| self.drained.poll_drained(cx)), if !self.config.handler_drains => {
                    // The rare paths' futures are boxed: inline, they would
                    // make every idle session's task as large as the
                    // largest of them.
                    Box::pin(self.close_for_drain()).await;
                    return None;
                }
                () = pong_deadline => {
                    tracing::debug!("ws.peer_dead");
                    return self.finish(WsEnd::PeerDead);
                }
                _ = self.ping.tick() => {
                    if self.pong_deadline.is_none() {
                        self.pong_deadline = Some(Box::pin(sleep(self.config.pong_timeout)));
                    }
                    // A peer that reads nothing fills the socket: the ping
                    // itself may not go out.
                    let ping = timeout(self.config.pong_timeout, self.socket.send(Message::Ping(Default::default())));
                    match Box::pin(ping).await {
                        Ok(Ok(())) => {}
                        Ok(Err(err)) => return self.finish(WsEnd::Gone(err.to_string())),
                        Err(_) => {
                            tracing::debug!("ws.peer_dead");
                            return self.finish(WsEnd::PeerDead);
                        }
                    }
                }
                msg = self.socket.recv() => match msg {
                    Some(Ok(Message::Pong(_))) => self.pong_deadline = None,
                    Some(Ok(Message::Ping(_))) => {}
                    Some(Ok(Message::Close(frame))) => {
                        // The reply Close is queued by tungstenite; reading on
                        // sends it and sees the end of the stream.
                        let close_timeout = self.config.close_timeout;
                        let _ = Box::pin(timeout(close_timeout, async {
                            while let Some(Ok(_)) = self.socket.recv().await {}
                        }))
                        .await;
                        return self.finish(WsEnd::ClosedByPeer { code: frame.map(|f| f.code) });
                    }
                    Some(Ok(msg)) => return Some(msg),
                    Some(Err(err)) => {
                        let Some(code) = refusal_code(&err) else {
                            return self.finish(WsEnd::Gone(err.to_string()));
                        };
                        let reason = err.to_string();
                        tracing::debug!(code, reason = %reason, "ws.refused");
                        let close = Message::Close(Some(CloseFrame {
                            code,
                            reason: "".into(),
                        }));
                        let _ = Box::pin(timeout(self.config.close_timeout, self.socket.send(close))).await;
                        return self.finish(WsEnd::Refused { code, reason });
                    }
                    None => return self.finish(WsEnd::Gone("end of stream without Close".into())),
                }
            }
        }
    }

    /// Sends a message and flushes it. A peer that reads nothing for the
    /// pong timeout is dead: the send gives up then, so a stuck peer cannot
    /// hold the session (and what it buffered) forever.
    ///
    /// # Errors
    ///
    /// When the socket is closed or fails, or the peer read nothing for the
    /// pong timeout (the session then ends with [`WsEnd::PeerDead`]).
    pub async fn send(&mut self, msg: Message) -> Result<(), axum::Error> {
        match timeout(self.config.pong_timeout, self.socket.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => {
                if self.end.is_none() {
                    self.end = Some(WsEnd::Gone(err.to_string()));
                }
                Err(err)
            }
            Err(_) => {
                tracing::debug!("ws.peer_dead");
                self.end = Some(WsEnd::PeerDead);
                Err(axum::Error::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the peer read nothing for the pong timeout",
                )))
            }
        }
    }

    /// The drain's step, for a handler that took it over
    /// ([`WsConfig::handler_drains`]) once it has sent what it owes: flush,
    /// Close with 1001 (1012 on a restart), wait (bounded) for the peer's
    /// Close. [`WsSession::recv`] returns `None` from then on.
    pub async fn close_for_drain(&mut self) {
        if self.end.is_some() {
            return;
        }
        let code = if self.drain.reason().is_some_and(|r| r.is_restart()) {
            CLOSE_SERVICE_RESTART
        } else {
            CLOSE_GOING_AWAY
        };
        self.close(code, "server draining").await;
        self.finish(WsEnd::Drained { code });
    }

    /// Why the session ended, once it has.
    pub fn end(&self) -> Option<&WsEnd> {
        self.end.as_ref()
    }

    /// The underlying socket, for what this wrapper does not cover.
    pub fn socket_mut(&mut self) -> &mut WebSocket {
        &mut self.socket
    }

    fn finish(&mut self, end: WsEnd) -> Option<Message> {
        self.end = Some(end);
        None
    }

    /// Flush, send Close, wait (bounded) for the peer's Close; whatever data
    /// arrives meanwhile is discarded, as RFC 6455 allows once Close is sent.
    async fn close(&mut self, code: u16, reason: &'static str) {
        let socket = &mut self.socket;
        let handshake = async {
            socket.flush().await?;
            socket
                .send(Message::Close(Some(CloseFrame {
                    code,
                    reason: reason.into(),
                })))
                .await?;
            while let Some(msg) = socket.recv().await {
                if matches!(msg?, Message::Close(_)) {
                    break;
                }
            }
            Ok::<_, axum::Error>(())
        };
        match timeout(self.config.close_timeout, handshake).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::debug!(error = %err, "ws.close_error"),
            Err(_) => tracing::debug!("ws.close_timeout"),
        }
    }
}
