//! `lameduck serve`: the reference service, built only on lameduck's public
//! API.

mod routes;

use anyhow::Context;
use lameduck::{Config, Server, ws::WsConfig};

use crate::cli::ServeArgs;

pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<u8> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;

    let mut config = Config::default();
    config.drain_timeout = args.drain_timeout;
    config.drain_announce = args.drain_announce;
    config.idle_grace = args.drain_idle_grace;

    let mut ws = WsConfig::default();
    ws.ping_interval = args.ws_ping_interval;
    ws.pong_timeout = args.ws_pong_timeout;
    ws.close_timeout = args.ws_close_timeout;

    let report = Server::with_config(listener, config)
        .serve(routes::app(ws))
        .await?;
    Ok(report.exit_code())
}
