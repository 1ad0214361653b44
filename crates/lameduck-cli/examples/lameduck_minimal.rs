//! The library alone, for the benchmark: `lameduck::Server` serving the very
//! same `service_fn` as `bare_hyper`, so the ratio between the two is the
//! cost of lameduck's connection tracking and nothing else.
//!
//! Usage: `lameduck_minimal [ADDR] [--no-header-timeout] [--tls CERT KEY]`;
//! prints `listening ADDR`.

#[path = "shared/ping.rs"]
mod shared;
#[path = "shared/tls.rs"]
mod tls;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = args
        .first()
        .filter(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let mut config = lameduck::Config::default();
    if args.iter().any(|a| a == "--no-header-timeout") {
        config.header_read_timeout = None;
    }
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening {}", listener.local_addr()?);
    let mut server = lameduck::Server::with_config(listener, config);
    if let Some(tls) = tls::from_args(&args) {
        server = server.with_tls(tls);
    }
    server.serve(tower::service_fn(shared::ping)).await?;
    Ok(())
}
