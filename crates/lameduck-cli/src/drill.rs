//! `lameduck drill`: flags, progress bar and outputs around
//! `lameduck_drill`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use lameduck_drill::{Class, Drill, DrillError, Scenario, Signal, Target, report};

use crate::cli::parse_duration;

/// Exit code when the drill saw a failure that was not allowed.
pub(crate) const EXIT_LOSSES: u8 = 2;

/// Exit code after Ctrl-C (128 + SIGINT, as shells report it).
const EXIT_INTERRUPTED: u8 = 130;

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["spawn", "url"])))]
#[command(group(clap::ArgGroup::new("stop_by").multiple(true)))]
pub(crate) struct DrillArgs {
    /// Start the service with this command (one program, exec'd by `sh -c`),
    /// with `PORT` in its environment and `{port}` replaced by the port; the
    /// drill sends SIGTERM to its process group itself and kills the group
    /// at the end.
    #[arg(long)]
    spawn: Option<String>,

    /// Port given to a spawned service (0: a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,

    /// A service already running, as `http://HOST:PORT` or
    /// `https://HOST:PORT` (loopback or your own staging hosts only).
    #[arg(long, requires = "stop_by")]
    url: Option<String>,

    /// The running service's pid: sent SIGTERM to stop it, and the restart
    /// signal to restart it.
    #[arg(long, group = "stop_by")]
    pid: Option<u32>,

    /// Command that stops the running service (`systemctl stop app`), run
    /// by `sh -c`.
    #[arg(long, group = "stop_by", conflicts_with = "pid")]
    trigger: Option<String>,

    /// Command that restarts the running service for the `restart`
    /// scenario (`systemctl reload app`), run by `sh -c`; without it the
    /// restart signal goes to --pid.
    #[arg(long, group = "stop_by")]
    restart_trigger: Option<String>,

    /// Scenarios: idle, inflight, load, websocket, sse, restart, or all
    /// (repeat or comma-separate). With `restart`, the service is restarted
    /// --restarts times first; it is then stopped if any other scenario is
    /// run.
    #[arg(long = "scenario", value_delimiter = ',', default_value = "all", value_parser = parse_scenario)]
    scenarios: Vec<Vec<Scenario>>,

    /// Failure classes to tolerate (e.g. `refused` for a service whose
    /// restarts close its listener for a moment): refused, lost, cut,
    /// http_5xx, idle_reset, ws_abrupt, ws_unechoed, sse_abrupt, sse_gap,
    /// restart_failed, no_exit. Refusals after the final stop are counted
    /// apart (`refused_after_stop`) and never fail.
    #[arg(long, value_delimiter = ',', value_parser = parse_class)]
    allow: Vec<Class>,

    /// The spawned service speaks TLS (HTTP/1.1 by ALPN), as an
    /// `https://` --url does; its certificate is checked against --ca, or
    /// not at all with --insecure. The name checked is `localhost`.
    #[arg(long, requires = "spawn")]
    tls: bool,

    /// `load` clients (and the restart scenario's) speak HTTP/2: one
    /// connection each, 4 streams at once (h2c with prior knowledge over
    /// plain TCP, `h2` by ALPN over TLS). A stream refused by the server's
    /// GOAWAY is sent again (`retried`); GOAWAYs are counted (`h2_goaway`).
    #[arg(long)]
    http2: bool,

    /// PEM file of the CA (or self-signed certificate) to trust for a TLS
    /// service.
    #[arg(long, value_name = "FILE")]
    ca: Option<std::path::PathBuf>,

    /// Accept any certificate from a TLS service (the connection is still
    /// TLS; who answers is not checked).
    #[arg(long, conflicts_with = "ca")]
    insecure: bool,

    /// `Host` header of every request (default: the --url's HOST:PORT, or
    /// 127.0.0.1:PORT for --spawn).
    #[arg(long)]
    host: Option<String>,

    /// Path that must answer 200 before traffic starts.
    #[arg(long, default_value = "/ping")]
    health: String,
    /// Fast path looped by `load` and used by `idle`.
    #[arg(long, default_value = "/ping")]
    ping: String,
    /// Path answering after `?ms=N`, for `inflight`.
    #[arg(long, default_value = "/slow")]
    slow: String,
    /// WebSocket echo path.
    #[arg(long, default_value = "/ws")]
    ws: String,
    /// SSE path.
    #[arg(long, default_value = "/events")]
    sse: String,

    /// Keep-alive clients of `load`.
    #[arg(long, default_value_t = 32)]
    load_clients: usize,
    /// Slow requests of `inflight`.
    #[arg(long, default_value_t = 50)]
    inflight: usize,
    /// Duration of each `inflight` request.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    slow_for: Duration,
    /// Idle keep-alive connections of `idle`.
    #[arg(long, default_value_t = 200)]
    idle_http: usize,
    /// Idle WebSockets of `idle`.
    #[arg(long, default_value_t = 200)]
    idle_ws: usize,
    /// Clients of `websocket`.
    #[arg(long, default_value_t = 50)]
    ws_clients: usize,
    /// Pause between one `websocket` client's messages.
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    ws_interval: Duration,
    /// Streams of `sse`.
    #[arg(long, default_value_t = 20)]
    sse_clients: usize,

    /// Restarts made by `restart`.
    #[arg(long, default_value_t = 3)]
    restarts: u32,
    /// Time from one restart to the next (and after the last).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    restart_every: Duration,
    /// Signal that restarts a spawned service (sent to its main process, as
    /// systemd's `ExecReload=kill -HUP $MAINPID`) or --pid.
    #[arg(long, default_value = "HUP", value_parser = parse_signal)]
    restart_signal: Signal,
    /// How long a service that reports READY=1 (sd_notify) gets to report
    /// it again after a restart.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    restart_timeout: Duration,
    /// Keep-alive clients of `restart`.
    #[arg(long, default_value_t = 16)]
    restart_load: usize,
    /// Reconnecting WebSocket clients of `restart`.
    #[arg(long, default_value_t = 20)]
    restart_ws: usize,
    /// Reconnecting SSE streams of `restart`.
    #[arg(long, default_value_t = 10)]
    restart_sse: usize,

    /// Traffic before the first signal (restart or stop).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    before: Duration,
    /// Traffic after the exit.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    after: Duration,
    /// Time the service gets to become healthy.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    startup: Duration,
    /// The whole drill is bounded by this.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    limit: Duration,

    /// Append a spawned service's stdout and stderr to this file (default:
    /// discarded).
    #[arg(long)]
    service_log: Option<PathBuf>,

    /// Write every figure as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a self-contained HTML report (timeline chart and table) here.
    #[arg(long)]
    html: Option<PathBuf>,
}

fn parse_scenario(s: &str) -> Result<Vec<Scenario>, String> {
    if s == "all" {
        return Ok(Scenario::ALL.to_vec());
    }
    Scenario::from_name(s).map(|s| vec![s]).ok_or_else(|| {
        format!(
            "unknown scenario {s:?} (expected idle, inflight, load, websocket, sse, restart or all)"
        )
    })
}

fn parse_signal(s: &str) -> Result<Signal, String> {
    let name = s.to_ascii_uppercase();
    let name = if name.starts_with("SIG") {
        name
    } else {
        format!("SIG{name}")
    };
    name.parse()
        .map_err(|_| format!("unknown signal {s:?} (expected a name such as HUP or USR2)"))
}

fn parse_class(s: &str) -> Result<Class, String> {
    Class::from_name(s)
        .filter(|c| c.is_failure())
        .ok_or_else(|| format!("{s:?} is not a failure class"))
}

/// The address to connect to, the authority as given (for `Host`), and
/// whether it is `https`.
fn parse_url(url: &str) -> anyhow::Result<(SocketAddr, String, bool)> {
    let (rest, https) = match url.strip_prefix("https://") {
        Some(rest) => (rest, true),
        None => (
            url.strip_prefix("http://").with_context(|| {
                format!("--url {url:?}: expected http://HOST:PORT or https://HOST:PORT")
            })?,
            false,
        ),
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    let addrs: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(authority)
        .with_context(|| format!("--url {url:?}: cannot resolve {authority:?}"))?
        .collect();
    // `localhost` may resolve to ::1 first and the service listen on
    // 127.0.0.1 only: the first address that accepts, as curl does.
    let addr = addrs
        .iter()
        .copied()
        .find(|a| std::net::TcpStream::connect_timeout(a, Duration::from_secs(1)).is_ok())
        .or_else(|| addrs.first().copied())
        .with_context(|| format!("--url {url:?}: no address"))?;
    Ok((addr, authority.to_owned(), https))
}

pub(crate) async fn run(args: DrillArgs) -> anyhow::Result<u8> {
    let mut host = args.host.clone();
    // The name a TLS service's certificate must carry, when it speaks TLS.
    let mut tls_name = None;
    let target = match (&args.spawn, &args.url) {
        (Some(command), _) => {
            if args.tls {
                tls_name = Some("localhost".to_owned());
            }
            Target::Spawn {
                command: command.clone(),
                port: args.port,
            }
        }
        (None, Some(url)) => Target::Running {
            addr: {
                let (addr, authority, https) = parse_url(url)?;
                if https {
                    let name = authority.rsplit_once(':').map_or(&*authority, |(h, _)| h);
                    tls_name = Some(name.trim_matches(['[', ']']).to_owned());
                }
                host.get_or_insert(authority);
                addr
            },
            pid: args.pid,
            trigger: args.trigger.clone(),
            restart_trigger: args.restart_trigger.clone(),
        },
        (None, None) => unreachable!("clap requires --spawn or --url"),
    };
    let mut drill = Drill::new(target);
    if let Some(name) = tls_name {
        let config = crate::drill_tls::client(args.ca.as_deref(), args.insecure)?;
        drill.tls = Some(lameduck_drill::Tls::new(
            config,
            crate::drill_tls::server_name(&name)?,
        ));
    }
    drill.scenarios = args.scenarios.concat();
    drill.allow = args.allow.clone();
    drill.health = args.health.clone();
    drill.before = args.before;
    drill.after = args.after;
    drill.startup = args.startup;
    drill.limit = args.limit;
    drill.service_log = args.service_log.clone();
    drill.restarts = args.restarts;
    drill.restart_every = args.restart_every;
    drill.restart_signal = args.restart_signal;
    drill.restart_timeout = args.restart_timeout;
    let s = &mut drill.settings;
    s.ping = args.ping.clone();
    s.slow = args.slow.clone();
    s.ws = args.ws.clone();
    s.sse = args.sse.clone();
    s.load_clients = args.load_clients;
    s.inflight = args.inflight;
    s.slow_ms = args.slow_for.as_millis() as u64;
    s.idle_http = args.idle_http;
    s.idle_ws = args.idle_ws;
    s.ws_clients = args.ws_clients;
    s.ws_interval = args.ws_interval;
    s.sse_clients = args.sse_clients;
    s.host = host;
    s.http2 = args.http2;
    s.restart_load = args.restart_load;
    s.restart_ws = args.restart_ws;
    s.restart_sse = args.restart_sse;

    // Ctrl-C ends the drill early with a report of what happened; a second
    // one exits at once (the watchdog still kills a spawned service).
    let interrupt = drill.interrupt.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("lameduck drill: interrupted; finishing the report (Ctrl-C again to quit)");
            interrupt.cancel();
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(EXIT_INTERRUPTED.into());
            }
        }
    });

    // Drawn on stderr, and only on a terminal.
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed} {msg}").expect("valid template"),
    );
    let report = drill
        .run(|rec| {
            let c = |class| rec.total(class);
            bar.set_message(format!(
                "{:?}: ok {} refused {} LOST {} cut {} | ws echoed {} abrupt {} | sse events {} | open http {} ws {} sse {}",
                rec.phase(),
                c(Class::Ok),
                c(Class::Refused),
                c(Class::Lost),
                c(Class::Cut),
                c(Class::WsEchoed),
                c(Class::WsAbrupt),
                c(Class::SseEvent),
                rec.open_now(lameduck_drill::record::Kind::Http),
                rec.open_now(lameduck_drill::record::Kind::Ws),
                rec.open_now(lameduck_drill::record::Kind::Sse),
            ));
            bar.tick();
        })
        .await;
    bar.finish_and_clear();
    let report = match report {
        Ok(report) => report,
        Err(e @ (DrillError::NoTrigger | DrillError::NoRestart)) => {
            eprintln!("lameduck: error: {e}");
            return Ok(crate::EXIT_USAGE);
        }
        Err(e @ (DrillError::ExitedEarly(_) | DrillError::NeverHealthy { .. })) => {
            let hint = match (&args.spawn, &args.service_log) {
                (None, _) => String::new(),
                (Some(_), Some(path)) => format!("; its output is in {}", path.display()),
                (Some(_), None) => "; --service-log FILE keeps its output".to_owned(),
            };
            return Err(anyhow::anyhow!("{e}{hint}"));
        }
        Err(e) => return Err(e.into()),
    };
    print!("{}", report::table(&report));
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).context("report as JSON")?;
        std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.html {
        std::fs::write(path, report::html(&report))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(if drill.interrupt.is_cancelled() {
        EXIT_INTERRUPTED
    } else if report.passed {
        0
    } else {
        EXIT_LOSSES
    })
}
