//! `lameduck serve`: the reference service, built only on lameduck's public
//! API.

mod admin;
mod admin_allow;
mod jobs;
mod request_id;
mod routes;
mod sleep_job;
mod tls;
mod trace_context;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use lameduck::{
    Config, EXIT_FORCED, Server,
    handoff::{Inherited, UpgradeConfig},
    ws::WsConfig,
};
use lameduck_jobs::{PoolConfig, WorkerPool};

pub(crate) use admin_allow::parse_net;
use tokio_util::sync::CancellationToken;

use crate::cli::ServeArgs;

/// The listening sockets `serve` inherited (from systemd or from the
/// process it replaces): the service's and the admin listener's.
#[derive(Debug, Default)]
pub(crate) struct Sockets {
    service: Option<std::net::TcpListener>,
    admin: Option<std::net::TcpListener>,
    /// The file of TLS session-ticket keys the predecessor handed over.
    ticket_keys: Option<std::fs::File>,
}

impl Sockets {
    /// By name (`service`, `admin`) when `LISTEN_FDNAMES` gives them, else
    /// in order: the service's first, then the admin listener's.
    pub(crate) fn from_inherited(mut inherited: Inherited) -> Result<Self, String> {
        // Taken with the sockets; read (or new keys made) only with
        // `--tls-cert`.
        let ticket_keys = inherited.take_file(lameduck::tls::TICKET_KEYS);
        let admin = inherited.take("admin");
        let service = inherited.take("service").or_else(|| inherited.take_first());
        let admin = admin.or_else(|| inherited.take_first());
        if !inherited.is_empty() {
            return Err(format!(
                "{} more listening sockets inherited than `serve` takes (one for the \
                 service, one for the admin listener); names left: {:?}",
                inherited.len(),
                inherited.names()
            ));
        }
        Ok(Self {
            service,
            admin,
            ticket_keys,
        })
    }
}

pub(crate) async fn run(args: ServeArgs, sockets: Sockets) -> anyhow::Result<u8> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let mut config = tls::load(cert, key)?;
            // Tickets sealed with keys the successor inherits: a client
            // resumes its session across upgrades.
            let keys = match &sockets.ticket_keys {
                Some(file) => lameduck::tls::TicketKeys::read(file)
                    .context("cannot read the TLS ticket keys handed over by the predecessor")?,
                None => {
                    lameduck::tls::TicketKeys::generate().context("cannot make TLS ticket keys")?
                }
            };
            config.ticketer = keys.ticketer();
            Some((Arc::new(config), keys))
        }
        _ => None,
    };
    let journal = lameduck_jobs::open(&args.jobs.journal)
        .await
        .with_context(|| format!("cannot open the job journal {:?}", args.jobs.journal))?;
    let topic_store = open_topics(
        &args.topics,
        args.topic_retention,
        args.topic_idempotency_window,
    )
    .await
    .with_context(|| format!("cannot open the topic store {:?} (--topics)", args.topics))?;
    let listener = match sockets.service {
        Some(listener) => tokio::net::TcpListener::from_std(listener)
            .context("cannot use the inherited listening socket")?,
        None => tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?,
    };

    let mut config = Config::default();
    config.drain_timeout = args.drain_timeout;
    config.drain_announce = args.announce();
    config.drain_spread = args.drain_spread;
    config.idle_grace = args.drain_idle_grace;
    let limit = |n: u32| (n > 0).then_some(n as usize);
    config.max_connections = limit(args.limits.max_connections);
    config.max_in_flight = limit(args.limits.max_in_flight);
    config.max_in_flight_queue = args.limits.max_in_flight_queue as usize;
    config.queue_timeout = args.limits.queue_timeout;
    config.max_new_sessions = args
        .limits
        .max_new_sessions
        .map(|(rate, burst)| lameduck::SessionRate::per_second(rate).burst(burst));
    config.rate_limit = args.limits.rate_limit.map(|(rps, burst)| {
        let limit = lameduck::RateLimit::per_second(rps).burst(burst);
        args.limits
            .trust_proxy
            .iter()
            .fold(limit, |limit, net| limit.trust_proxy(*net))
    });
    config.max_header_bytes = args.limits.max_header_bytes as usize;
    let nonzero = |d: std::time::Duration| (!d.is_zero()).then_some(d);
    config.header_read_timeout = nonzero(args.limits.header_read_timeout);
    config.keep_alive_timeout = nonzero(args.limits.keep_alive_timeout);
    config.http2_ping_interval = nonzero(args.limits.h2_ping_interval);

    let mut ws = WsConfig::default();
    ws.ping_interval = args.ws_ping_interval;
    ws.pong_timeout = args.ws_pong_timeout;
    ws.close_timeout = args.ws_close_timeout;

    let mut pool_config = PoolConfig::default();
    pool_config.concurrency = usize::from(args.jobs.jobs_concurrency);
    pool_config.lease = args.jobs.jobs_lease;
    pool_config.drain_timeout = args.jobs.jobs_drain_timeout;
    pool_config.retention =
        (!args.jobs.jobs_retention.is_zero()).then_some(args.jobs.jobs_retention);
    let pool =
        WorkerPool::with_config(journal.clone(), pool_config).handler("sleep", sleep_job::run);

    let admin_listener = match sockets.admin {
        Some(listener) => tokio::net::TcpListener::from_std(listener)
            .context("cannot use the inherited admin socket")?,
        None => bind_admin(args.admin_listen).with_context(|| {
            format!(
                "cannot listen on {} (--admin-listen; is another instance using it?)",
                args.admin_listen
            )
        })?,
    };
    tracing::info!(addr = %admin_listener.local_addr()?, "admin.listening");

    let mut upgrade = UpgradeConfig::default();
    upgrade.binary = args.upgrade_binary;
    upgrade.ready_timeout = args.upgrade_timeout;
    upgrade.probation = args.upgrade_probation;
    // The successor inherits the admin socket as it inherits the service's:
    // the socket is never closed nor shared with an unrelated process.
    upgrade
        .hand_over("admin", &admin_listener)
        .context("cannot prepare the admin socket for upgrades")?;
    if let Some((_, keys)) = &tls {
        keys.hand_over(&mut upgrade)
            .context("cannot prepare the TLS ticket keys for upgrades")?;
    }

    // The benchmark baseline serves on the address asked for; lameduck's
    // server gets one it never serves on.
    let (listener, baseline) = if args.baseline_plain_axum {
        let unused = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        (unused, Some(listener))
    } else {
        (listener, None)
    };
    let mut server = Server::with_config(listener, config).with_upgrade(upgrade);
    if let Some((config, _)) = tls {
        server = server.with_tls(config);
    }
    let token = std::env::var("LAMEDUCK_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .map(Arc::from);
    let allow = Arc::new(admin_allow::AdminAllow::new(
        if args.admin_allow.is_empty() {
            admin_allow::loopback()
        } else {
            args.admin_allow.clone()
        },
    ));
    let admin_app = admin::routes(admin::Admin {
        handle: server.handle(),
        journal: journal.clone(),
        token,
        allow: allow.clone(),
    });
    let admin_done = CancellationToken::new();
    let admin_server = tokio::spawn(admin::serve(
        admin_listener,
        admin_app,
        allow,
        admin_done.clone(),
    ));

    let ws = routes::WsLimits {
        config: ws,
        max_message: args.ws_max_message as usize,
        max_frame: args.ws_max_frame as usize,
        allowed_origins: args.ws_allowed_origins.into(),
    };
    let mut app = routes::app(ws)
        .merge(jobs::routes(jobs::Jobs {
            journal,
            pool: pool.handle(),
        }))
        .merge(topics_routes(topic_store));
    if let Some(limit) = nonzero(args.limits.request_timeout) {
        app = routes::with_timeout(app, limit);
    }
    // Outermost, so that a 504 from the timeout carries the id too.
    let app = app.layer(axum::middleware::from_fn_with_state(
        request_id::Settings {
            access_log: args.log.access_log,
            trace_context: !args.log.no_trace_context,
        },
        request_id::layer,
    ));
    let workers = tokio::spawn(pool.run_until_drained(server.handle().watcher()));
    if let Some(listener) = baseline {
        // Until killed: a benchmark's baseline, nothing else.
        tracing::info!(addr = %listener.local_addr()?, "baseline.listening");
        axum::serve(listener, app).await?;
        return Ok(0);
    }
    let report = server.serve(app).await?;
    let jobs = workers.await.context("the job pool panicked")?;
    // The admin plane answers until the very end (metrics of the drain).
    admin_done.cancel();
    let _ = admin_server.await;
    // Jobs given back at the deadline lost nothing (they resume from their
    // checkpoint), but they were cut, as connections cut at the deadline are.
    Ok(if jobs.forced > 0 {
        EXIT_FORCED
    } else {
        report.exit_code()
    })
}

/// The topics' routes: anyone subscribes; publishing needs
/// `Authorization: Bearer $LAMEDUCK_TOPICS_TOKEN` when that is set.
fn topics_routes(store: Arc<dyn lameduck_topics::Store>) -> axum::Router {
    let topics = lameduck_topics::http::Topics::new(store);
    match std::env::var("LAMEDUCK_TOPICS_TOKEN") {
        Ok(token) if !token.is_empty() => topics
            .authorize(lameduck_topics::http::BearerToPublish::new(token))
            .router(),
        _ => topics.router(),
    }
}

/// The topic store `--topics` names.
async fn open_topics(
    spec: &str,
    retention: lameduck_topics::Retention,
    key_window: Duration,
) -> anyhow::Result<Arc<dyn lameduck_topics::Store>> {
    if spec == "memory" {
        return Ok(Arc::new(lameduck_topics::MemoryStore::new(retention)));
    }
    if spec.starts_with("redis://") || spec.starts_with("rediss://") {
        let config = lameduck_topics::RedisStoreConfig::from_url(spec)?
            .retention(retention)
            .key_window(key_window);
        let store = lameduck_topics::RedisStore::connect(config)?;
        store.check_layout().await?;
        return Ok(Arc::new(store));
    }
    let Some(path) = spec.strip_prefix("sqlite:") else {
        anyhow::bail!("expected sqlite:PATH, redis://HOST:PORT[/DB][?prefix=NAME] or memory");
    };
    Ok(Arc::new(lameduck_topics::SqliteStore::open_with(
        path, retention, key_window,
    )?))
}

/// The admin listener. Without `SO_REUSEPORT`: a second instance given
/// the same address must fail, not share it (the kernel would spread admin
/// connections over both, and a drain request could reach the wrong
/// service). Successors inherit the socket instead of binding it.
fn bind_admin(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // Only lets a restarted process bind over connections in TIME_WAIT;
    // on Linux it never lets two sockets listen on one address.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}
