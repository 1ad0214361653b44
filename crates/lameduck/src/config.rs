//! Timings of a drain, and limits.

use std::{num::NonZeroU32, time::Duration};

use ipnet::IpNet;

/// How long each step of a drain may take, and how much a server takes on.
///
/// The defaults follow Kubernetes: `drain_timeout` (25 s) leaves room under the
/// default 30 s `terminationGracePeriodSeconds`. On Kubernetes, also set
/// `drain_announce` (5 s advised) so that endpoints are removed before the
/// listener closes.
///
/// The struct is `#[non_exhaustive]` (new settings are not breaking
/// changes), so it is built from its default with the setters, or by
/// assigning fields of a `Config::default()`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use lameduck::Config;
///
/// let config = Config::default()
///     .drain_announce(Duration::from_secs(5))
///     .drain_timeout(Duration::from_secs(20))
///     .max_in_flight(Some(1_000));
/// assert_eq!(config.idle_grace, Duration::from_secs(1));
/// assert_eq!(config.drain_announce.max(), Duration::from_secs(5));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// Time between the drain request and closing the listener, during which
    /// everything keeps working but `/readyz` answers 503 (`drain.announce`,
    /// default 0 s): a fixed period, or until the load balancer has stopped
    /// sending ([`DrainAnnounce::UntilQuiet`]). A restart (an upgrade, whose
    /// successor shares the listening socket) has none.
    pub drain_announce: DrainAnnounce,
    /// Paths of the health probes (default `/readyz` and `/livez`):
    /// requests to them do not count as traffic when
    /// [`DrainAnnounce::UntilQuiet`] waits for quiet.
    pub health_paths: Vec<String>,
    /// Time, after the announce period, that connections are given to finish
    /// before whatever remains is cut (`drain.timeout`, default 25 s).
    pub drain_timeout: Duration,
    /// Over how long the long-lived connections (WebSockets, SSE streams,
    /// idle HTTP/1 keep-alive connections, HTTP/2 connections) are told to
    /// go, one at a time in random order, so that the rest of the fleet
    /// takes their reconnects as a trickle rather than a wall
    /// (`drain.spread`, default [`DrainSpread::Auto`]). The window starts
    /// when the listener has closed and lies inside `drain_timeout`.
    pub drain_spread: DrainSpread,
    /// How long an idle HTTP/1.1 keep-alive connection is kept open once the
    /// drain starts, so that a request its client is already sending is still
    /// served (with `Connection: close`) instead of lost (`drain.idle_grace`,
    /// default 1 s).
    pub idle_grace: Duration,
    /// Time an HTTP/1 client has to send a complete request head, from its
    /// first byte (or from the connection's start, for its first request),
    /// against slowloris (default 10 s; `None`: no limit). Checked by a sweep
    /// twice a second rather than a timer per request, so a timeout fires up
    /// to a second late, never early.
    pub header_read_timeout: Option<Duration>,
    /// How long an HTTP/1 keep-alive connection may stay idle between
    /// requests before the server closes it (default 60 s; `None`: no
    /// limit).
    pub keep_alive_timeout: Option<Duration>,
    /// How often an HTTP/2 connection with open streams is sent a PING; a
    /// peer that does not answer within as long is gone, and its connection
    /// closed (default 20 s; `None`: no PINGs). Dead-peer detection for
    /// long streams costs on every request: hyper reads the clock and polls
    /// a timer each time it polls the connection (about 3 % of an h2c
    /// request's instructions in `bench/`).
    pub http2_ping_interval: Option<Duration>,
    /// Interval of the `shutdown.progress` events (default 1 s).
    pub progress_interval: Duration,
    /// Put axum's `ConnectInfo<SocketAddr>` (the client's address) in every
    /// request's extensions, for the `ConnectInfo` extractor. Off by
    /// default, as with `axum::serve`: it costs an allocation per request.
    pub connect_info: bool,
    /// Connections held at once. Past it, a new connection is answered
    /// `503 Service Unavailable` with `Retry-After: 1` and closed, never left
    /// hanging in the queue (default 25,000; `None`: no limit).
    pub max_connections: Option<usize>,
    /// Requests handled at once. Past it, a request waits in a queue of
    /// [`Config::max_in_flight_queue`] places, or is answered 503 with
    /// `Retry-After` without reaching the application (default `None`: no
    /// limit; it costs one shared semaphore per request when set).
    pub max_in_flight: Option<usize>,
    /// Requests that may wait, first come first served, for a place under
    /// [`Config::max_in_flight`] (default 0: refused at once). A queued
    /// request counts as in flight: a drain serves it, never drops it.
    pub max_in_flight_queue: usize,
    /// Longest wait in that queue; past it, 503 with `Retry-After` (this
    /// timeout rounded up to seconds). Default 1 s.
    pub queue_timeout: Duration,
    /// A token bucket per client address; past it, 429 (default `None`:
    /// no limit, and no cost).
    pub rate_limit: Option<RateLimit>,
    /// New WebSocket and SSE sessions allowed per second on this instance;
    /// past it, 503 with a spread `Retry-After`, or for a WebSocket upgrade
    /// with `Origin` (a browser, which cannot read a refused handshake) a
    /// 101 and at once a Close with 1013 and `retry after N` (default
    /// `None`).
    pub max_new_sessions: Option<SessionRate>,
    /// Largest HTTP/1 request head (request line and headers); larger ones
    /// get `431 Request Header Fields Too Large` (default 64 KiB, at least
    /// 8 KiB).
    pub max_header_bytes: usize,
}

/// How long the announce period lasts (see [`Config::drain_announce`]).
///
/// A fixed period is a guess at how long the load balancer takes to stop
/// sending: too short and connections it still sends are refused, too long
/// and every deploy is slower. `UntilQuiet` watches for that instead: the
/// period ends once no request but a health probe arrived for `quiet`
/// (requests, not connections: health checks open connections all the
/// time, and pooled load-balancer connections send without opening any),
/// never before `min` (set it to at least the load balancer's check
/// interval times its fall count) and never after `max`.
///
/// A fixed period is still the right choice behind a load balancer that
/// does not retry refused connections elsewhere, or for a service with so
/// little traffic that a second of silence proves nothing.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use lameduck::{Config, DrainAnnounce};
///
/// let config = Config::default().drain_announce(DrainAnnounce::auto());
/// assert_eq!(config.drain_announce.max(), Duration::from_secs(10));
/// let fixed = Config::default().drain_announce(Duration::from_secs(5));
/// assert_eq!(fixed.drain_announce, DrainAnnounce::For(Duration::from_secs(5)));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DrainAnnounce {
    /// A fixed period.
    For(Duration),
    /// Until no request but health probes arrived for `quiet`, never
    /// before `min`, never after `max`.
    UntilQuiet {
        /// The shortest period.
        min: Duration,
        /// How long without traffic ends it.
        quiet: Duration,
        /// The longest period.
        max: Duration,
    },
}

impl DrainAnnounce {
    /// `UntilQuiet` with a 2 s minimum, 1 s of quiet and a 10 s maximum.
    pub fn auto() -> Self {
        Self::auto_max(Duration::from_secs(10))
    }

    /// `UntilQuiet` with a 2 s minimum, 1 s of quiet and `max` (at least
    /// the minimum).
    pub fn auto_max(max: Duration) -> Self {
        let min = Duration::from_secs(2).min(max);
        DrainAnnounce::UntilQuiet {
            min,
            quiet: Duration::from_secs(1),
            max,
        }
    }

    /// The longest the period can last.
    pub fn max(self) -> Duration {
        match self {
            DrainAnnounce::For(period) => period,
            DrainAnnounce::UntilQuiet { max, .. } => max,
        }
    }
}

impl From<Duration> for DrainAnnounce {
    fn from(period: Duration) -> Self {
        DrainAnnounce::For(period)
    }
}

/// How the drain spreads the moments it tells long-lived connections to go
/// (see [`Config::drain_spread`]).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use lameduck::DrainSpread;
///
/// let timeout = Duration::from_secs(25);
/// // Auto: a millisecond per connection, at most half the drain timeout.
/// assert_eq!(DrainSpread::Auto.window(3_000, timeout), Duration::from_secs(3));
/// assert_eq!(DrainSpread::Auto.window(100_000, timeout), Duration::from_millis(12_500));
/// // A fixed window; zero tells every connection at once.
/// assert_eq!(DrainSpread::Over(Duration::ZERO).window(3_000, timeout), Duration::ZERO);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DrainSpread {
    /// Sized from the number of long-lived connections when the drain
    /// starts: one millisecond each, so 1,000 reconnects a second land on
    /// the rest of the fleet (a chosen rate, not a measured capacity: set
    /// a window with `Over` when yours is known), at most half of
    /// `drain_timeout`, so that the last connections told still have the
    /// other half for their close handshakes and whatever they send.
    Auto,
    /// Over this window (zero: all at once). It must leave room, inside
    /// `drain_timeout`, for the close handshakes of the last connections
    /// told (`lameduck serve` refuses one longer than the drain timeout
    /// minus the WebSocket close timeout).
    Over(Duration),
}

impl DrainSpread {
    /// The window for `connections` long-lived connections.
    pub fn window(self, connections: usize, drain_timeout: Duration) -> Duration {
        match self {
            DrainSpread::Over(window) => window,
            DrainSpread::Auto => {
                let per = Duration::from_millis(1);
                per.saturating_mul(u32::try_from(connections).unwrap_or(u32::MAX))
                    .min(drain_timeout / 2)
            }
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            drain_announce: DrainAnnounce::For(Duration::ZERO),
            health_paths: vec!["/readyz".into(), "/livez".into()],
            drain_timeout: Duration::from_secs(25),
            drain_spread: DrainSpread::Auto,
            idle_grace: Duration::from_secs(1),
            header_read_timeout: Some(Duration::from_secs(10)),
            keep_alive_timeout: Some(Duration::from_secs(60)),
            http2_ping_interval: Some(Duration::from_secs(20)),
            progress_interval: Duration::from_secs(1),
            connect_info: false,
            max_connections: Some(25_000),
            max_in_flight: None,
            max_in_flight_queue: 0,
            queue_timeout: Duration::from_secs(1),
            rate_limit: None,
            max_new_sessions: None,
            max_header_bytes: 64 * 1024,
        }
    }
}

/// Setters, one per field, for building a `Config` in one expression.
impl Config {
    /// Sets [`Config::drain_announce`] (a `Duration` is a fixed period).
    pub fn drain_announce(mut self, value: impl Into<DrainAnnounce>) -> Self {
        self.drain_announce = value.into();
        self
    }

    /// Sets [`Config::health_paths`].
    pub fn health_paths(mut self, value: Vec<String>) -> Self {
        self.health_paths = value;
        self
    }

    /// Sets [`Config::drain_timeout`].
    pub fn drain_timeout(mut self, value: Duration) -> Self {
        self.drain_timeout = value;
        self
    }

    /// Sets [`Config::drain_spread`].
    pub fn drain_spread(mut self, value: DrainSpread) -> Self {
        self.drain_spread = value;
        self
    }

    /// Sets [`Config::idle_grace`].
    pub fn idle_grace(mut self, value: Duration) -> Self {
        self.idle_grace = value;
        self
    }

    /// Sets [`Config::header_read_timeout`].
    pub fn header_read_timeout(mut self, value: Option<Duration>) -> Self {
        self.header_read_timeout = value;
        self
    }

    /// Sets [`Config::keep_alive_timeout`].
    pub fn keep_alive_timeout(mut self, value: Option<Duration>) -> Self {
        self.keep_alive_timeout = value;
        self
    }

    /// Sets [`Config::http2_ping_interval`].
    pub fn http2_ping_interval(mut self, value: Option<Duration>) -> Self {
        self.http2_ping_interval = value;
        self
    }

    /// Sets [`Config::progress_interval`].
    pub fn progress_interval(mut self, value: Duration) -> Self {
        self.progress_interval = value;
        self
    }

    /// Sets [`Config::connect_info`].
    pub fn connect_info(mut self, value: bool) -> Self {
        self.connect_info = value;
        self
    }

    /// Sets [`Config::max_connections`].
    pub fn max_connections(mut self, value: Option<usize>) -> Self {
        self.max_connections = value;
        self
    }

    /// Sets [`Config::max_in_flight`].
    pub fn max_in_flight(mut self, value: Option<usize>) -> Self {
        self.max_in_flight = value;
        self
    }

    /// Sets [`Config::max_in_flight_queue`].
    pub fn max_in_flight_queue(mut self, value: usize) -> Self {
        self.max_in_flight_queue = value;
        self
    }

    /// Sets [`Config::queue_timeout`].
    pub fn queue_timeout(mut self, value: Duration) -> Self {
        self.queue_timeout = value;
        self
    }

    /// Sets [`Config::rate_limit`].
    pub fn rate_limit(mut self, value: Option<RateLimit>) -> Self {
        self.rate_limit = value;
        self
    }

    /// Sets [`Config::max_new_sessions`].
    pub fn max_new_sessions(mut self, value: Option<SessionRate>) -> Self {
        self.max_new_sessions = value;
        self
    }

    /// Sets [`Config::max_header_bytes`].
    pub fn max_header_bytes(mut self, value: usize) -> Self {
        self.max_header_bytes = value;
        self
    }
}

/// A rate limit per client address: `per_second` requests a second, in
/// bursts of up to `burst`; past it a request is answered
/// `429 Too Many Requests` with `Retry-After` and a JSON error, without
/// reaching the application. Health-check paths
/// ([`Config::health_paths`](crate::Config::health_paths)) are not
/// limited: a load balancer's probes come from few addresses.
///
/// The client is the connection's peer address; IPv6 addresses count by
/// their /64 (one host usually holds a whole /64). Only a peer in
/// [`RateLimit::trust_proxy`] is believed about the client behind it
/// (`X-Forwarded-For`, else `Forwarded: for=`): the rightmost address
/// that is not itself a trusted proxy is the client.
///
/// # Examples
///
/// ```
/// use std::num::NonZeroU32;
/// use lameduck::{Config, RateLimit};
///
/// let limit = RateLimit::per_second(NonZeroU32::new(100).unwrap())
///     .burst(NonZeroU32::new(200).unwrap())
///     .trust_proxy("10.0.0.0/8".parse().unwrap());
/// let config = Config::default().rate_limit(Some(limit));
/// assert!(config.rate_limit.is_some());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimit {
    /// Requests a second, sustained.
    pub per_second: NonZeroU32,
    /// Requests at once after a quiet spell (the bucket's size).
    pub burst: NonZeroU32,
    /// Peers whose forwarding headers name the client.
    pub trusted_proxies: Vec<IpNet>,
    /// Client addresses tracked at once (default 100,000). Buckets that
    /// are full again are forgotten as the table grows; should recently
    /// active clients still exceed this, the table starts afresh (every
    /// client with a full bucket), so memory stays bounded under a flood
    /// of addresses.
    pub max_clients: usize,
}

impl RateLimit {
    /// `per_second` requests a second, bursts of as many.
    pub fn per_second(per_second: NonZeroU32) -> Self {
        Self {
            per_second,
            burst: per_second,
            trusted_proxies: Vec::new(),
            max_clients: 100_000,
        }
    }

    /// Sets [`RateLimit::burst`].
    pub fn burst(mut self, burst: NonZeroU32) -> Self {
        self.burst = burst;
        self
    }

    /// Adds a network to [`RateLimit::trusted_proxies`].
    pub fn trust_proxy(mut self, net: IpNet) -> Self {
        self.trusted_proxies.push(net);
        self
    }

    /// Sets [`RateLimit::max_clients`].
    pub fn max_clients(mut self, max: usize) -> Self {
        self.max_clients = max.max(1);
        self
    }
}

/// New WebSocket and SSE sessions allowed per second on one instance, in
/// bursts of up to `burst`. Past it, a new session gets 503 with a
/// `Retry-After` spread at random over a few seconds (clients told the
/// same number would come back together); requests on connections already
/// open, and other requests, are untouched.
///
/// # Examples
///
/// ```
/// use std::num::NonZeroU32;
/// use lameduck::{Config, SessionRate};
///
/// let rate = SessionRate::per_second(NonZeroU32::new(500).unwrap()).burst(NonZeroU32::new(1000).unwrap());
/// let config = Config::default().max_new_sessions(Some(rate));
/// assert_eq!(config.max_new_sessions.unwrap().burst.get(), 1000);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionRate {
    /// New sessions a second, sustained.
    pub per_second: NonZeroU32,
    /// New sessions at once after a quiet spell.
    pub burst: NonZeroU32,
}

impl SessionRate {
    /// `per_second` new sessions a second, bursts of as many.
    pub fn per_second(per_second: NonZeroU32) -> Self {
        Self {
            per_second,
            burst: per_second,
        }
    }

    /// Sets [`SessionRate::burst`].
    pub fn burst(mut self, burst: NonZeroU32) -> Self {
        self.burst = burst;
        self
    }
}
