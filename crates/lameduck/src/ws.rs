//! WebSocket sessions that end with a Close frame, never a cut socket.
//!
//! A [`WsSession`] wraps axum's [`WebSocket`]: it answers pings, sends its own
//! on a heartbeat and closes a peer that stops answering, and when the server
//! drains it flushes what is queued, sends Close with 1001 (Going Away) or,
//! on a restart, 1012 (Service Restart), and waits a bounded time for the
//! peer's Close before dropping the socket.

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use crate::lifecycle::{Drain, DrainWaiter};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::time::{Interval, MissedTickBehavior, Sleep, sleep, timeout};

/// Close code sent when the server shuts down (RFC 6455: Going Away).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code sent when the server restarts and the client should reconnect
/// at once (IANA registry: Service Restart).
pub const CLOSE_SERVICE_RESTART: u16 = 1012;

/// A WebSocket read buffer size for axum's
/// [`WebSocketUpgrade::read_buffer_size`](axum::extract::ws::WebSocketUpgrade::read_buffer_size)
/// that keeps idle sockets cheap behind [`crate::Server`].
///
/// tungstenite allocates its read buffer whole when the socket opens and
/// keeps it while the socket idles (its default is 128 KiB a socket); it
/// also reads at most this many bytes a call. Behind `Server`, an upgraded
/// connection serves such small reads from a read-ahead of 8 KiB that
/// exists only until it is taken, so a large message still costs a system
/// call per 8 KiB, not per 512 bytes. Under another server (such as
/// `axum::serve`) a buffer this small means more system calls for large
/// messages: choose 4 KiB or more there.
///
/// # Examples
///
/// ```
/// use axum::{extract::ws::WebSocketUpgrade, response::Response};
/// use lameduck::{Drain, ws::WsSession};
///
/// async fn echo(upgrade: WebSocketUpgrade, drain: Drain) -> Response {
///     upgrade
///         .read_buffer_size(lameduck::ws::READ_BUFFER)
///         .on_upgrade(|socket| {
///             let mut ws = WsSession::new(socket, drain);
///             async move {
///                 while let Some(msg) = ws.recv().await {
///                     if ws.send(msg).await.is_err() {
///                         break;
///                     }
///                 }
///             }
///         })
/// }
/// # let _ = echo;
/// ```
pub const READ_BUFFER: usize = 512;

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
        // A peer that went away is not refused: nothing can reach it.
        tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        ) => None,
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
/// An echo endpoint. The session is made before the `async` block, so
/// that the block (which lives as long as the socket, in its task) holds
/// the session only and not also the socket it was made from: about 370
/// bytes less for every open socket.
///
/// ```
/// use axum::{Router, extract::ws::WebSocketUpgrade, response::Response, routing::get};
/// use lameduck::{Drain, ws::WsSession};
///
/// async fn echo(upgrade: WebSocketUpgrade, drain: Drain) -> Response {
///     upgrade.on_upgrade(|socket| {
///         let mut ws = WsSession::new(socket, drain);
///         async move {
///             // `recv` returns `None` once the session is over, including
///             // after the drain's Close handshake.
///             while let Some(msg) = ws.recv().await {
///                 if ws.send(msg).await.is_err() {
///                     break;
///                 }
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
        loop {
            if self.end.is_some() {
                return None;
            }
            // What happens next is found by one poll function, and all but
            // a message is handled in a boxed future: this future is then a
            // few words, and so is every idle session's task that awaits it.
            match std::future::poll_fn(|cx| self.poll_event(cx)).await {
                Ok(msg) => return Some(msg),
                Err(event) => Box::pin(self.handle(event)).await,
            }
        }
    }

    /// The next message, or the next thing the session must act on, in
    /// this order: the drain, a pong overdue, the heartbeat's tick, the
    /// socket. Pongs and pings from the peer are taken here (tungstenite
    /// answers pings itself).
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Result<Message, Event>> {
        if !self.config.handler_drains && self.drained.poll_drained(cx).is_ready() {
            return Poll::Ready(Err(Event::Drain));
        }
        if let Some(deadline) = self.pong_deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(Event::PeerDead));
        }
        if self.ping.poll_tick(cx).is_ready() {
            return Poll::Ready(Err(Event::Tick));
        }
        loop {
            let event = match ready!(self.socket.poll_next_unpin(cx)) {
                Some(Ok(Message::Pong(_))) => {
                    self.pong_deadline = None;
                    continue;
                }
                Some(Ok(Message::Ping(_))) => continue,
                Some(Ok(Message::Close(frame))) => Event::Closed(frame.map(|f| f.code)),
                Some(Ok(msg)) => return Poll::Ready(Ok(msg)),
                Some(Err(err)) => Event::Failed(err),
                None => Event::Gone,
            };
            return Poll::Ready(Err(event));
        }
    }

    /// Acts on everything but a message.
    async fn handle(&mut self, event: Event) {
        match event {
            Event::Drain => self.close_for_drain().await,
            Event::PeerDead => {
                tracing::debug!("ws.peer_dead");
                self.end = Some(WsEnd::PeerDead);
            }
            Event::Tick => {
                if self.pong_deadline.is_none() {
                    self.pong_deadline = Some(Box::pin(sleep(self.config.pong_timeout)));
                }
                // A peer that reads nothing fills the socket: the ping
                // itself may not go out.
                let ping = self.socket.send(Message::Ping(Default::default()));
                match timeout(self.config.pong_timeout, ping).await {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => self.end = Some(WsEnd::Gone(err.to_string())),
                    Err(_) => {
                        tracing::debug!("ws.peer_dead");
                        self.end = Some(WsEnd::PeerDead);
                    }
                }
            }
            Event::Closed(code) => self.closed_by_peer(code).await,
            Event::Failed(err) => self.failed(err).await,
            Event::Gone => self.end = Some(WsEnd::Gone("end of stream without Close".into())),
        }
    }

    /// The peer sent Close. The reply Close is queued by tungstenite;
    /// reading on sends it and sees the end of the stream.
    async fn closed_by_peer(&mut self, code: Option<u16>) {
        let close_timeout = self.config.close_timeout;
        let _ = timeout(close_timeout, async {
            while let Some(Ok(_)) = self.socket.recv().await {}
        })
        .await;
        self.end = Some(WsEnd::ClosedByPeer { code });
    }

    /// The socket failed: a peer that broke a limit or the protocol gets
    /// the Close it earned.
    async fn failed(&mut self, err: axum::Error) {
        let reason = err.to_string();
        let Some(code) = refusal_code(&err) else {
            self.end = Some(WsEnd::Gone(reason));
            return;
        };
        drop(err);
        tracing::debug!(code, reason = %reason, "ws.refused");
        let close = Message::Close(Some(CloseFrame {
            code,
            reason: "".into(),
        }));
        let _ = timeout(self.config.close_timeout, self.socket.send(close)).await;
        self.end = Some(WsEnd::Refused { code, reason });
    }

    /// Sends a message and flushes it. A peer that reads nothing for the
    /// pong timeout is dead: the send gives up then, so a stuck peer cannot
    /// hold the session (and what it buffered) forever.
    ///
    /// # Errors
    ///
    /// When the socket is closed or fails, or the peer read nothing for the
    /// pong timeout (the session then ends with [`WsEnd::PeerDead`]).
    pub fn send(&mut self, msg: Message) -> WsSend<'_> {
        WsSend {
            session: self,
            msg: Some(msg),
            deadline: None,
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
        self.end = Some(WsEnd::Drained { code });
    }

    /// Why the session ended, once it has.
    pub fn end(&self) -> Option<&WsEnd> {
        self.end.as_ref()
    }

    /// The underlying socket, for what this wrapper does not cover.
    pub fn socket_mut(&mut self) -> &mut WebSocket {
        &mut self.socket
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

/// What [`WsSession::recv`] acts on, besides a message.
enum Event {
    Drain,
    PeerDead,
    Tick,
    Closed(Option<u16>),
    Failed(axum::Error),
    Gone,
}

/// The future of [`WsSession::send`].
///
/// A type of its own rather than an `async fn`'s: it holds the message
/// once, and makes its deadline (reading the clock) only for a send that
/// has to wait, which nearly none does. Every idle session's task is as
/// large as the largest future its handler awaits, this one included.
#[must_use = "futures do nothing unless polled"]
pub struct WsSend<'a> {
    session: &'a mut WsSession,
    msg: Option<Message>,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl std::fmt::Debug for WsSend<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsSend")
            .field("started", &self.msg.is_none())
            .finish()
    }
}

impl WsSend<'_> {
    /// Hands the message to the socket when it has room, then flushes.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        let socket = &mut self.session.socket;
        if self.msg.is_some() {
            ready!(socket.poll_ready_unpin(cx))?;
            if let Some(msg) = self.msg.take() {
                socket.start_send_unpin(msg)?;
            }
        }
        socket.poll_flush_unpin(cx)
    }
}

impl Future for WsSend<'_> {
    type Output = Result<(), axum::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let result = match this.poll_send(cx) {
            Poll::Ready(result) => result,
            Poll::Pending => {
                let pong_timeout = this.session.config.pong_timeout;
                let deadline = this
                    .deadline
                    .get_or_insert_with(|| Box::pin(sleep(pong_timeout)));
                ready!(deadline.as_mut().poll(cx));
                tracing::debug!("ws.peer_dead");
                this.session.end = Some(WsEnd::PeerDead);
                return Poll::Ready(Err(axum::Error::new(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the peer read nothing for the pong timeout",
                ))));
            }
        };
        if let Err(err) = &result
            && this.session.end.is_none()
        {
            this.session.end = Some(WsEnd::Gone(err.to_string()));
        }
        Poll::Ready(result)
    }
}
