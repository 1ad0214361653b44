//! Command-line flags. Every flag has a `LAMEDUCK_*` environment variable.

use std::{net::SocketAddr, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "lameduck", version, about = "Drain-safe reference service", long_about = None)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
// Parsed once at start: the size of the larger variant does not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Command {
    /// Run the reference service: /ping, /slow, /ws, /events, /jobs, /livez,
    /// /readyz.
    Serve(ServeArgs),
    /// Drive traffic at a service (any service), stop or restart it, and
    /// classify every request, message and connection. Exit code 2 when
    /// anything was lost (see --allow).
    Drill(crate::drill::DrillArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (the bound address is
    /// in the `server.listening` log line). Ignored when a listening socket
    /// is inherited (systemd socket activation, or an upgrade).
    #[arg(long, env = "LAMEDUCK_LISTEN", default_value = "127.0.0.1:8080")]
    pub(crate) listen: SocketAddr,

    /// For benchmarks only (`bench/instructions.sh`): serve the same
    /// Router, with the same job pool and stores, with plain
    /// `axum::serve` instead of lameduck's server (no drain, no limits).
    #[arg(long, hide = true)]
    pub(crate) baseline_plain_axum: bool,

    /// Time connections get to finish after the announce period.
    #[arg(long, env = "LAMEDUCK_DRAIN_TIMEOUT", default_value = "25s", value_parser = parse_duration)]
    pub(crate) drain_timeout: Duration,

    /// Over how long WebSockets, SSE streams, idle keep-alive and HTTP/2
    /// connections are told to go, one at a time in random order, so the
    /// rest of the fleet is not hit by every reconnect at once: a duration,
    /// or `auto` (1 ms per connection, at most half the drain timeout).
    /// `0s` tells them all at once. Must fit in the drain timeout less the
    /// WebSocket close timeout.
    #[arg(long, env = "LAMEDUCK_DRAIN_SPREAD", default_value = "auto", value_parser = parse_spread)]
    pub(crate) drain_spread: lameduck::DrainSpread,

    /// Time between the drain request and closing the listener, with /readyz
    /// failing: a duration (5s advised on Kubernetes), or `auto` / `auto:MAX`
    /// (until no request but health probes came for --drain-announce-quiet,
    /// at least --drain-announce-min, at most MAX, default 10s). An upgrade
    /// has none.
    #[arg(long, env = "LAMEDUCK_DRAIN_ANNOUNCE", default_value = "0s", value_parser = parse_announce)]
    pub(crate) drain_announce: Announce,

    /// With `--drain-announce auto`: the shortest announce period; at least
    /// the load balancer's check interval times its fall count.
    #[arg(long, env = "LAMEDUCK_DRAIN_ANNOUNCE_MIN", default_value = "2s", value_parser = parse_duration)]
    pub(crate) drain_announce_min: Duration,

    /// With `--drain-announce auto`: how long without a request (health
    /// probes aside) ends the announce period.
    #[arg(long, env = "LAMEDUCK_DRAIN_ANNOUNCE_QUIET", default_value = "1s", value_parser = parse_duration)]
    pub(crate) drain_announce_quiet: Duration,

    /// How long an idle keep-alive connection is kept open once draining.
    #[arg(long, env = "LAMEDUCK_DRAIN_IDLE_GRACE", default_value = "1s", value_parser = parse_duration)]
    pub(crate) drain_idle_grace: Duration,

    /// Interval between WebSocket pings.
    #[arg(long, env = "LAMEDUCK_WS_PING_INTERVAL", default_value = "20s", value_parser = parse_duration)]
    pub(crate) ws_ping_interval: Duration,

    /// A WebSocket peer that does not answer a ping within this is dropped.
    #[arg(long, env = "LAMEDUCK_WS_PONG_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub(crate) ws_pong_timeout: Duration,

    /// How long to wait for the peer's Close after sending ours.
    #[arg(long, env = "LAMEDUCK_WS_CLOSE_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub(crate) ws_close_timeout: Duration,

    /// Address of the admin listener (`/metrics`, `POST /admin/drain`,
    /// `POST /admin/upgrade`); keep it off the public network. The admin
    /// endpoints need `Authorization: Bearer $LAMEDUCK_ADMIN_TOKEN`, and are
    /// disabled when that variable is unset or empty.
    #[arg(long, env = "LAMEDUCK_ADMIN_LISTEN", default_value = "127.0.0.1:9090")]
    pub(crate) admin_listen: SocketAddr,

    /// Sources allowed on the admin listener, as CIDR or addresses
    /// (repeatable, or comma-separated in the variable); default loopback
    /// only. Others get 403 before any token is looked at, `/metrics`
    /// included, and each refused address is logged once a minute.
    #[arg(long = "admin-allow", env = "LAMEDUCK_ADMIN_ALLOW", value_delimiter = ',', value_parser = crate::serve::parse_net)]
    pub(crate) admin_allow: Vec<ipnet::IpNet>,

    /// Program started on SIGHUP to take over the listening socket (default:
    /// this binary, as it is on disk now), with the same arguments.
    #[arg(long, env = "LAMEDUCK_UPGRADE_BINARY")]
    pub(crate) upgrade_binary: Option<std::path::PathBuf>,

    /// How long the new process gets to report ready before it is killed and
    /// this one keeps serving.
    #[arg(long, env = "LAMEDUCK_UPGRADE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub(crate) upgrade_timeout: Duration,

    /// After the new process is ready, how long this one keeps serving
    /// beside it before draining; if the new one exits meanwhile, the
    /// upgrade is rolled back and this one serves on.
    #[arg(long, env = "LAMEDUCK_UPGRADE_PROBATION", default_value = "5s", value_parser = parse_duration)]
    pub(crate) upgrade_probation: Duration,

    /// Largest WebSocket message; a larger one closes the socket with 1009.
    #[arg(long, env = "LAMEDUCK_WS_MAX_MESSAGE", default_value_t = 1 << 20,
          value_parser = clap::value_parser!(u32).range(1024..=(16 << 20)))]
    pub(crate) ws_max_message: u32,

    /// Largest WebSocket frame; a larger one closes the socket with 1009.
    #[arg(long, env = "LAMEDUCK_WS_MAX_FRAME", default_value_t = 1 << 20,
          value_parser = clap::value_parser!(u32).range(1024..=(16 << 20)))]
    pub(crate) ws_max_frame: u32,

    /// Origins allowed to open WebSockets besides the service's own host
    /// (exact `https://host[:port]`, or `*`); repeat the flag, or give a
    /// comma-separated list in the variable. Others get 403.
    #[arg(
        long = "ws-allowed-origin",
        env = "LAMEDUCK_WS_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub(crate) ws_allowed_origins: Vec<String>,

    #[command(flatten)]
    pub(crate) limits: LimitArgs,

    #[command(flatten)]
    pub(crate) jobs: JobArgs,

    /// Where topics are kept: `sqlite:PATH` (history survives restarts and
    /// upgrades of one instance), `redis://HOST:PORT[/DB]` (every instance
    /// sharing the server delivers every message; add `?prefix=NAME` to
    /// choose the key prefix) or `memory` (history ends with the process).
    #[arg(
        long,
        env = "LAMEDUCK_TOPICS",
        default_value = "sqlite:./lameduck-topics.db"
    )]
    pub(crate) topics: String,

    /// History kept per topic: `COUNT` or `COUNT:AGE` (messages at most,
    /// none older than AGE).
    #[arg(long, env = "LAMEDUCK_TOPIC_RETENTION", default_value = "10000:1h", value_parser = parse_retention)]
    pub(crate) topic_retention: lameduck_topics::Retention,

    /// How long a publish's `Idempotency-Key` (and a WebSocket publisher
    /// session) is remembered, independently of how long messages are
    /// kept: a retry within it is stored once.
    #[arg(long, env = "LAMEDUCK_TOPIC_IDEMPOTENCY_WINDOW", default_value = "24h", value_parser = parse_window)]
    pub(crate) topic_idempotency_window: Duration,

    /// Serve HTTPS: the certificate chain, a PEM file (the leaf first).
    /// HTTP/2 and HTTP/1.1 are offered by ALPN. Needs `--tls-key`.
    #[arg(long, env = "LAMEDUCK_TLS_CERT", value_name = "FILE")]
    pub(crate) tls_cert: Option<std::path::PathBuf>,

    /// The private key of `--tls-cert`, a PEM file (PKCS#8, PKCS#1 or
    /// SEC1).
    #[arg(long, env = "LAMEDUCK_TLS_KEY", value_name = "FILE")]
    pub(crate) tls_key: Option<std::path::PathBuf>,

    #[command(flatten)]
    pub(crate) log: LogArgs,
}

#[derive(Debug, Args)]
pub(crate) struct LimitArgs {
    /// Connections held at once; past it new ones get 503 with Retry-After
    /// and are closed. 0: no limit.
    #[arg(long, env = "LAMEDUCK_MAX_CONNECTIONS", default_value_t = 25_000)]
    pub(crate) max_connections: u32,

    /// Requests handled at once; past it requests get 503 with Retry-After.
    /// 0: no limit.
    #[arg(long, env = "LAMEDUCK_MAX_IN_FLIGHT", default_value_t = 0)]
    pub(crate) max_in_flight: u32,

    /// Requests past --max-in-flight that wait, first come first served,
    /// for a place (0: refused at once). Queued requests are served across
    /// a drain.
    #[arg(long, env = "LAMEDUCK_MAX_IN_FLIGHT_QUEUE", default_value_t = 0)]
    pub(crate) max_in_flight_queue: u32,

    /// A token bucket per client address: RPS requests a second, in bursts
    /// of BURST (default RPS); past it 429 with Retry-After. IPv6 clients
    /// count by their /64; health-check paths are not limited.
    #[arg(long, env = "LAMEDUCK_RATE_LIMIT", value_name = "RPS[:BURST]", value_parser = parse_rate)]
    pub(crate) rate_limit: Option<(std::num::NonZeroU32, std::num::NonZeroU32)>,

    /// New WebSocket and SSE sessions allowed per second on this instance,
    /// in bursts of BURST (default RATE): past it 503 with a Retry-After
    /// spread over a few seconds, so that the clients of a killed instance
    /// reconnect spread out (a browser's WebSocket, which cannot read a
    /// 503, is closed with 1013 "retry after N" instead). Requests on open
    /// connections are untouched.
    #[arg(long, env = "LAMEDUCK_MAX_NEW_SESSIONS", value_name = "RATE[:BURST]", value_parser = parse_rate)]
    pub(crate) max_new_sessions: Option<(std::num::NonZeroU32, std::num::NonZeroU32)>,

    /// Proxies (CIDR or address; repeatable, comma-separated in the
    /// variable) whose X-Forwarded-For or Forwarded header names the
    /// client for --rate-limit; no other peer's is believed.
    #[arg(long = "trust-proxy", env = "LAMEDUCK_TRUST_PROXY", value_delimiter = ',', value_parser = crate::serve::parse_net)]
    pub(crate) trust_proxy: Vec<ipnet::IpNet>,

    /// Longest wait in that queue; then 503 with Retry-After.
    #[arg(long, env = "LAMEDUCK_QUEUE_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub(crate) queue_timeout: Duration,

    /// Time a client has to send a complete HTTP/1 request head, from its
    /// first byte (or from connecting, for the first request): slowloris.
    /// 0 turns it off.
    #[arg(long, env = "LAMEDUCK_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub(crate) header_read_timeout: Duration,

    /// How long an HTTP/1 keep-alive connection may stay idle between
    /// requests before it is closed. 0 turns it off.
    #[arg(long, env = "LAMEDUCK_KEEP_ALIVE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub(crate) keep_alive_timeout: Duration,

    /// How often an HTTP/2 connection with open streams is sent a PING; a
    /// peer that does not answer within as long is closed. 0 turns PINGs
    /// off (they cost about 3 % of an h2c request).
    #[arg(long, env = "LAMEDUCK_H2_PING_INTERVAL", default_value = "20s", value_parser = parse_duration)]
    pub(crate) h2_ping_interval: Duration,

    /// Time a handler has to produce its response head; past it the client
    /// gets 504 with a JSON error. 0 (the default) turns it off. Streaming
    /// bodies (SSE) and WebSockets are not limited by it.
    #[arg(long, env = "LAMEDUCK_REQUEST_TIMEOUT", default_value = "0s", value_parser = parse_duration)]
    pub(crate) request_timeout: Duration,

    /// Largest HTTP/1 request head; larger ones get 431.
    #[arg(long, env = "LAMEDUCK_MAX_HEADER_BYTES", default_value_t = 64 * 1024,
          value_parser = clap::value_parser!(u32).range(8192..=(16 << 20)))]
    pub(crate) max_header_bytes: u32,
}

#[derive(Debug, Args)]
pub(crate) struct JobArgs {
    /// Where accepted jobs are kept: `sqlite:PATH`, `redis://HOST:PORT[/DB]`
    /// (add `?prefix=NAME` to choose the key prefix; instances that share
    /// work share it), or `postgres://USER@HOST:PORT/DB` (add `?schema=NAME`;
    /// default `lameduck`).
    #[arg(long, env = "LAMEDUCK_JOURNAL", default_value = "sqlite:./lameduck.db")]
    pub(crate) journal: String,

    /// Jobs run at once by this instance.
    #[arg(long, env = "LAMEDUCK_JOBS_CONCURRENCY", default_value_t = 8,
          value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub(crate) jobs_concurrency: u16,

    /// Lease on each claimed job, renewed every third of it; a crashed
    /// instance's jobs are taken back once it expires.
    #[arg(long, env = "LAMEDUCK_JOBS_LEASE", default_value = "30s", value_parser = parse_lease)]
    pub(crate) jobs_lease: Duration,

    /// On drain, time running jobs get to finish before they are stopped and
    /// given back (with their last checkpoint).
    #[arg(long, env = "LAMEDUCK_JOBS_DRAIN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub(crate) jobs_drain_timeout: Duration,

    /// Completed and dead jobs older than this are deleted, with their
    /// idempotency keys (in batches, at each lease sweep); `0` keeps them.
    #[arg(long, env = "LAMEDUCK_JOBS_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub(crate) jobs_retention: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct LogArgs {
    /// Log output format.
    #[arg(long, env = "LAMEDUCK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub(crate) log_format: LogFormat,

    /// Log filter: a level (`info`) or tracing directives (`info,lameduck=debug`).
    #[arg(long, env = "LAMEDUCK_LOG_LEVEL", default_value = "info", value_parser = parse_filter)]
    pub(crate) log_level: String,

    /// Log every response (`http.request`: method, path, status,
    /// duration_ms, with its request id).
    #[arg(long, env = "LAMEDUCK_ACCESS_LOG")]
    pub(crate) access_log: bool,

    /// Export a span per request over OTLP/HTTP (protobuf) to this
    /// collector (`/v1/traces` is added to a base URL). Export failures
    /// never slow or fail requests; what is queued is sent at the end of
    /// the drain.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub(crate) otlp_endpoint: Option<String>,

    /// Neither read nor answer W3C `traceparent` (nor put `trace_id` on log
    /// lines): the trace context then costs nothing. Only without span
    /// export.
    #[arg(
        long,
        env = "LAMEDUCK_NO_TRACE_CONTEXT",
        conflicts_with = "otlp_endpoint"
    )]
    pub(crate) no_trace_context: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// `--drain-announce`: a fixed period, or until quiet with a maximum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Announce {
    Fixed(Duration),
    Auto { max: Duration },
}

/// `2s`, `auto` or `auto:15s`.
fn parse_announce(s: &str) -> Result<Announce, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("auto") {
        return Ok(Announce::Auto {
            max: Duration::from_secs(10),
        });
    }
    if let Some(max) = s.strip_prefix("auto:") {
        return parse_duration(max).map(|max| Announce::Auto { max });
    }
    parse_duration(s)
        .map(Announce::Fixed)
        .map_err(|e| format!("{e}, or auto, or auto:MAX"))
}

impl ServeArgs {
    /// The library's announce period.
    pub(crate) fn announce(&self) -> lameduck::DrainAnnounce {
        match self.drain_announce {
            Announce::Fixed(period) => lameduck::DrainAnnounce::For(period),
            Announce::Auto { max } => lameduck::DrainAnnounce::UntilQuiet {
                min: self.drain_announce_min,
                quiet: self.drain_announce_quiet,
                max,
            },
        }
    }

    /// What clap cannot check flag by flag: a spread that leaves no room
    /// for the close handshakes would turn into forced cuts.
    pub(crate) fn check(&self) -> Result<(), String> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return Err("--tls-cert needs --tls-key".into()),
            (None, Some(_)) => return Err("--tls-key needs --tls-cert".into()),
            _ => {}
        }
        if let Announce::Auto { max } = self.drain_announce {
            if self.drain_announce_min > max {
                return Err(format!(
                    "--drain-announce-min {:?} is longer than the announce maximum {max:?}",
                    self.drain_announce_min
                ));
            }
        }
        if let lameduck::DrainSpread::Over(window) = self.drain_spread {
            let room = self.drain_timeout.saturating_sub(self.ws_close_timeout);
            if window > room {
                return Err(format!(
                    "--drain-spread {window:?} does not fit: it must leave the WebSocket close \
                     timeout ({:?}) inside the drain timeout ({:?}), so at most {room:?}",
                    self.ws_close_timeout, self.drain_timeout
                ));
            }
        }
        Ok(())
    }
}

/// `COUNT` or `COUNT:AGE`.
fn parse_retention(s: &str) -> Result<lameduck_topics::Retention, String> {
    let (count, age) = s.split_once(':').unwrap_or((s, "1h"));
    let count: u64 = count
        .trim()
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or("COUNT must be a positive number of messages")?;
    Ok(lameduck_topics::Retention::new(count, parse_duration(age)?))
}

/// `auto` or a duration.
fn parse_spread(s: &str) -> Result<lameduck::DrainSpread, String> {
    if s.trim().eq_ignore_ascii_case("auto") {
        return Ok(lameduck::DrainSpread::Auto);
    }
    parse_duration(s)
        .map(lameduck::DrainSpread::Over)
        .map_err(|e| format!("{e}, or auto"))
}

/// Checked here so that a bad filter is a usage error, like any bad flag.
/// tracing-subscriber 0.3 panics on a directive that starts with a blank
/// followed by a multi-byte character (it slices the untrimmed text at the
/// trimmed text's offsets): the blanks around each directive are removed
/// first, and a panic that still comes is caught and refused.
fn parse_filter(s: &str) -> Result<String, String> {
    let normalized = s.split(',').map(str::trim).collect::<Vec<_>>().join(",");
    match std::panic::catch_unwind(|| tracing_subscriber::EnvFilter::try_new(&normalized)) {
        Ok(Ok(_)) => Ok(normalized),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("not a valid log filter".into()),
    }
}

/// A lease long enough to be renewed (every third of it) over a network.
fn parse_lease(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(300) {
        return Err("a job lease must be at least 300ms".into());
    }
    Ok(d)
}

/// An idempotency window: 1 s to 366 days (a key forgotten at once would
/// make retries unsafe; the bound keeps millisecond arithmetic far from
/// overflow).
fn parse_window(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if !(Duration::from_secs(1)..=Duration::from_secs(366 * 86_400)).contains(&d) {
        return Err("an idempotency window is 1s to 366d".into());
    }
    Ok(d)
}

/// `250ms`, `2s`, `1m30s`; a bare number is seconds.
/// `RPS[:BURST]`, both whole numbers from 1; BURST defaults to RPS.
pub(crate) fn parse_rate(s: &str) -> Result<(std::num::NonZeroU32, std::num::NonZeroU32), String> {
    let number = |part: &str| {
        part.trim().parse::<std::num::NonZeroU32>().map_err(|_| {
            format!("{s:?}: expected RPS[:BURST], whole numbers from 1 (e.g. 100:200)")
        })
    };
    match s.split_once(':') {
        Some((rps, burst)) => Ok((number(rps)?, number(burst)?)),
        None => {
            let rps = number(s)?;
            Ok((rps, rps))
        }
    }
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|e| e.to_string());
    }
    humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 500ms, 2s, 1m)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("2 parsecs").is_err());
        assert!(parse_duration("99999999999999999999999").is_err());
    }

    #[test]
    fn flags_parse() {
        let cli = Cli::try_parse_from([
            "lameduck",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--drain-timeout",
            "2s",
            "--log-format",
            "json",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("serve");
        };
        assert_eq!(args.drain_timeout, Duration::from_secs(2));
        assert_eq!(args.log.log_format, LogFormat::Json);
        assert!(Cli::try_parse_from(["lameduck", "serve", "--listen", "nowhere"]).is_err());
        assert!(Cli::try_parse_from(["lameduck", "serve", "--log-level", "zz["]).is_err());
        // Found by the property test below: a blank, then a multi-byte
        // character, made tracing-subscriber panic.
        for odd in [" \u{10400}=", "info, \u{10400}=", " \u{10400}"] {
            let _ = Cli::try_parse_from(["lameduck", "serve", "--log-level", odd]);
        }
        assert!(Cli::try_parse_from(["lameduck", "serve", "--log-format", "xml"]).is_err());
        assert!(Cli::try_parse_from(["lameduck", "serve", "--jobs-lease", "10ms"]).is_err());
        assert!(Cli::try_parse_from(["lameduck", "serve", "--jobs-concurrency", "0"]).is_err());
        assert!(Cli::try_parse_from(["lameduck", "serve", "--drain-spread", "soon"]).is_err());
        assert!(Cli::try_parse_from(["lameduck", "serve", "--drain-announce", "auto:x"]).is_err());
        let announce = |args: &[&str]| {
            let cli = Cli::try_parse_from([&["lameduck", "serve"], args].concat()).unwrap();
            let Command::Serve(args) = cli.command else {
                panic!("serve");
            };
            args.check().map(|()| args.announce())
        };
        assert_eq!(
            announce(&["--drain-announce", "5s"]),
            Ok(lameduck::DrainAnnounce::For(Duration::from_secs(5)))
        );
        assert_eq!(
            announce(&[
                "--drain-announce",
                "auto:15s",
                "--drain-announce-quiet",
                "500ms"
            ]),
            Ok(lameduck::DrainAnnounce::UntilQuiet {
                min: Duration::from_secs(2),
                quiet: Duration::from_millis(500),
                max: Duration::from_secs(15),
            })
        );
        assert!(announce(&["--drain-announce", "auto:1s"]).is_err());
        let spread = |args: &[&str]| {
            let cli = Cli::try_parse_from([&["lameduck", "serve"], args].concat()).unwrap();
            let Command::Serve(args) = cli.command else {
                panic!("serve");
            };
            args.check().map(|()| args.drain_spread)
        };
        assert_eq!(spread(&[]), Ok(lameduck::DrainSpread::Auto));
        assert_eq!(
            spread(&["--drain-spread", "3s"]),
            Ok(lameduck::DrainSpread::Over(Duration::from_secs(3)))
        );
        // 25 s of drain less 2 s of close handshake: 23 s fit, 24 s do not.
        assert!(spread(&["--drain-spread", "23s"]).is_ok());
        assert!(spread(&["--drain-spread", "24s"]).is_err());
        assert!(
            spread(&[
                "--drain-spread",
                "5s",
                "--drain-timeout",
                "6s",
                "--ws-close-timeout",
                "2s"
            ])
            .is_err()
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1024))]

        // Any value for any flag (as from a mistyped env file): parsed or a
        // clap error, never a panic.
        #[test]
        fn any_flag_value_parses_or_is_refused(
            flag in proptest::sample::select(&[
                "--listen", "--admin-listen", "--admin-allow", "--drain-timeout", "--drain-announce", "--drain-spread", "--drain-announce-min", "--drain-announce-quiet",
                "--max-connections", "--max-in-flight", "--max-in-flight-queue", "--queue-timeout", "--rate-limit", "--trust-proxy", "--max-new-sessions", "--header-read-timeout",
                "--keep-alive-timeout", "--request-timeout", "--max-header-bytes",
                "--ws-max-message", "--ws-max-frame", "--ws-allowed-origin",
                "--journal", "--jobs-concurrency", "--jobs-lease",
                "--jobs-drain-timeout", "--jobs-retention", "--log-level", "--log-format",
                "--upgrade-timeout", "--upgrade-probation", "--topics", "--topic-retention", "--topic-idempotency-window", "--tls-cert", "--tls-key",
            ][..]),
            value in "\\PC{0,24}",
        ) {
            let _ = Cli::try_parse_from(["lameduck", "serve", flag, &value]);
        }

        // Every duration written as `<n>ms` or as bare seconds reads back.
        #[test]
        fn durations_round_trip(ms in 0u64..=86_400_000, secs in 0u64..=1_000_000) {
            proptest::prop_assert_eq!(parse_duration(&format!("{ms}ms")), Ok(Duration::from_millis(ms)));
            proptest::prop_assert_eq!(parse_duration(&format!(" {secs} ")), Ok(Duration::from_secs(secs)));
        }
    }
}
