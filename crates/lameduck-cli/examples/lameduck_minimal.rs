//! The library alone, for the benchmark: `lameduck::Server` serving the very
//! same `service_fn` as `bare_hyper`, so the ratio between the two is the
//! cost of lameduck's connection tracking and nothing else.
//!
//! Usage: `lameduck_minimal [ADDR] [--no-header-timeout] [--no-h2-ping]
//! [--tls CERT KEY] [--rate-limit] [--max-in-flight] [--max-new-sessions]`;
//! prints `listening ADDR`. The last three turn the limit on at a level no
//! run of the benchmark reaches, so that they cost what they check and
//! refuse nothing.

#[path = "shared/ping.rs"]
mod shared;
#[path = "shared/tls.rs"]
mod tls;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = args
        .iter()
        .find(|a| a.parse::<std::net::SocketAddr>().is_ok())
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let has = |flag: &str| args.iter().any(|a| a == flag);
    let mut config = lameduck::Config::default();
    if has("--no-header-timeout") {
        config.header_read_timeout = None;
    }
    if has("--no-h2-ping") {
        config.http2_ping_interval = None;
    }
    let huge = std::num::NonZeroU32::new(1_000_000_000).expect("not zero");
    if has("--rate-limit") {
        config.rate_limit = Some(lameduck::RateLimit::per_second(huge));
    }
    if has("--max-in-flight") {
        config.max_in_flight = Some(1_000_000);
        config.max_in_flight_queue = 1_000;
    }
    if has("--max-new-sessions") {
        config.max_new_sessions = Some(lameduck::SessionRate::per_second(huge));
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
