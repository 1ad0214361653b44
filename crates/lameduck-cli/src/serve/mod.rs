//! `lameduck serve`: the reference service, built only on lameduck's public
//! API.

mod admin;
mod jobs;
mod request_id;
mod routes;
mod sleep_job;

use std::{future::IntoFuture, net::SocketAddr, sync::Arc};

use anyhow::Context;
use lameduck::{Config, EXIT_FORCED, Server, handoff::UpgradeConfig, ws::WsConfig};
use lameduck_jobs::{PoolConfig, WorkerPool};
use tokio_util::sync::CancellationToken;

use crate::cli::ServeArgs;

pub(crate) async fn run(
    args: ServeArgs,
    inherited: Option<std::net::TcpListener>,
) -> anyhow::Result<u8> {
    let journal = lameduck_jobs::open(&args.jobs.journal)
        .await
        .with_context(|| format!("cannot open the job journal {:?}", args.jobs.journal))?;
    let listener = match inherited {
        Some(listener) => tokio::net::TcpListener::from_std(listener)
            .context("cannot use the inherited listening socket")?,
        None => tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?,
    };

    let mut config = Config::default();
    config.drain_timeout = args.drain_timeout;
    config.drain_announce = args.drain_announce;
    config.idle_grace = args.drain_idle_grace;
    let limit = |n: u32| (n > 0).then_some(n as usize);
    config.max_connections = limit(args.limits.max_connections);
    config.max_in_flight = limit(args.limits.max_in_flight);
    config.max_header_bytes = args.limits.max_header_bytes as usize;
    let nonzero = |d: std::time::Duration| (!d.is_zero()).then_some(d);
    config.header_read_timeout = nonzero(args.limits.header_read_timeout);
    config.keep_alive_timeout = nonzero(args.limits.keep_alive_timeout);

    let mut ws = WsConfig::default();
    ws.ping_interval = args.ws_ping_interval;
    ws.pong_timeout = args.ws_pong_timeout;
    ws.close_timeout = args.ws_close_timeout;

    let mut pool_config = PoolConfig::default();
    pool_config.concurrency = usize::from(args.jobs.jobs_concurrency);
    pool_config.lease = args.jobs.jobs_lease;
    pool_config.drain_timeout = args.jobs.jobs_drain_timeout;
    let pool =
        WorkerPool::with_config(journal.clone(), pool_config).handler("sleep", sleep_job::run);

    let mut upgrade = UpgradeConfig::default();
    upgrade.binary = args.upgrade_binary;
    upgrade.ready_timeout = args.upgrade_timeout;

    let server = Server::with_config(listener, config).with_upgrade(upgrade);
    let admin_listener = bind_admin(args.admin_listen)
        .with_context(|| format!("cannot listen on {} (admin)", args.admin_listen))?;
    tracing::info!(addr = %admin_listener.local_addr()?, "admin.listening");
    let token = std::env::var("LAMEDUCK_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .map(Arc::from);
    let admin_app = admin::routes(admin::Admin {
        handle: server.handle(),
        journal: journal.clone(),
        token,
    });
    let admin_done = CancellationToken::new();
    let admin_server = tokio::spawn(
        axum::serve(admin_listener, admin_app)
            .with_graceful_shutdown(admin_done.clone().cancelled_owned())
            .into_future(),
    );

    let ws = routes::WsLimits {
        config: ws,
        max_message: args.ws_max_message as usize,
        max_frame: args.ws_max_frame as usize,
        allowed_origins: args.ws_allowed_origins.into(),
    };
    let mut app = routes::app(ws).merge(jobs::routes(jobs::Jobs {
        journal,
        pool: pool.handle(),
    }));
    if let Some(limit) = nonzero(args.limits.request_timeout) {
        app = routes::with_timeout(app, limit);
    }
    // Outermost, so that a 504 from the timeout carries the id too.
    let app = app.layer(axum::middleware::from_fn_with_state(
        request_id::AccessLog(args.log.access_log),
        request_id::layer,
    ));
    let workers = tokio::spawn(pool.run_until_drained(server.handle().watcher()));
    let report = server.serve(app).await?;
    let jobs = workers.await.context("the job pool panicked")?;
    // The admin plane answers until the very end (metrics of the drain).
    admin_done.cancel();
    if let Ok(Err(e)) = admin_server.await {
        tracing::warn!(error = %e, "admin.error");
    }
    // Jobs given back at the deadline lost nothing (they resume from their
    // checkpoint), but they were cut, as connections cut at the deadline are.
    Ok(if jobs.forced > 0 {
        EXIT_FORCED
    } else {
        report.exit_code()
    })
}

/// The admin listener, with `SO_REUSEPORT`: during an upgrade the new
/// process binds the same admin address while the old one still holds it.
fn bind_admin(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}
