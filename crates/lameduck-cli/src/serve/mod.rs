//! `lameduck serve`: the reference service, built only on lameduck's public
//! API.

mod jobs;
mod routes;
mod sleep_job;

use anyhow::Context;
use lameduck::{Config, EXIT_FORCED, Server, handoff::UpgradeConfig, ws::WsConfig};
use lameduck_jobs::{PoolConfig, WorkerPool};

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
    let app = routes::app(ws).merge(jobs::routes(jobs::Jobs {
        journal,
        pool: pool.handle(),
    }));
    let workers = tokio::spawn(pool.run_until_drained(server.handle().watcher()));
    let report = server.serve(app).await?;
    let jobs = workers.await.context("the job pool panicked")?;
    // Jobs given back at the deadline lost nothing (they resume from their
    // checkpoint), but they were cut, as connections cut at the deadline are.
    Ok(if jobs.forced > 0 {
        EXIT_FORCED
    } else {
        report.exit_code()
    })
}
