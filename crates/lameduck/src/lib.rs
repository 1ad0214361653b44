//! Stop, restart and redeploy an axum/hyper service without losing a
//! request, a WebSocket message or an SSE event.
//!
//! "Lame duck" is the state a server enters when it still serves what it
//! holds but takes on nothing new. [`Server`] runs its own accept loop over
//! hyper-util's connection builder so that it sees every connection,
//! upgraded ones included, and drains them in the order that loses nothing.
//! That order, phase by phase and connection kind by connection kind, with
//! the function that does each step and the test that proves it, is the
//! drain contract in `ARCHITECTURE.md` at the repository's root; the
//! events it logs are listed there too. In brief: `/readyz` fails at once
//! ([`Phase::Announcing`]); queued connections are served and the listener
//! closes; connections are asked to go ([`Phase::Draining`]: keep-alive
//! off, GOAWAY, WebSocket Close 1001/1012, SSE `event: drain`); at the
//! deadline what remains is cut ([`Phase::Forcing`]).
//!
//! # Quick start
//!
//! ```no_run
//! use axum::{Router, routing::get};
//!
//! #[tokio::main]
//! async fn main() -> Result<std::process::ExitCode, Box<dyn std::error::Error>> {
//!     let app = Router::new()
//!         .route("/", get(|| async { "hello" }))
//!         .route("/readyz", get(lameduck::health::readyz));
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//!     let report = lameduck::Server::new(listener).serve(app).await?;
//!     // 0 when everything drained, lameduck::EXIT_FORCED when something was cut.
//!     Ok(report.exit_code().into())
//! }
//! ```
//!
//! # Modules
//!
//! - [`Server`], [`Handle`], [`Drain`]: serving, steering and watching a
//!   drain; [`Config`] its timings and limits.
//! - [`ws`] and [`sse`]: WebSocket sessions and SSE streams that end
//!   cleanly when the server drains.
//! - [`health`]: liveness and readiness handlers.
//! - [`handoff`]: inherited sockets and upgrades without a gap.
//! - [`signal`]: what each process signal does.

#![deny(missing_docs)]
#![doc(test(attr(deny(warnings))))]

mod admission;
mod config;
mod error;
mod handle;
pub mod handoff;
pub mod health;
mod lifecycle;
mod limits;
mod rate;
mod report;
mod server;
mod sessions;
pub mod signal;
pub mod sse;
mod stats;
pub mod tls;
pub mod ws;

pub use config::{Config, DrainAnnounce, DrainSpread, RateLimit, SessionRate};
pub use error::Error;
pub use handle::Handle;
pub use lifecycle::{Drain, DrainReason, JobGuard, Phase, PhaseFuture, Told};
pub use report::{DrainReport, EXIT_DRAINED, EXIT_FORCED};
/// The rustls this crate terminates TLS with ([`Server::with_tls`]): build
/// the `ServerConfig` with it, so that the versions match.
pub use rustls;
pub use server::Server;
pub use signal::Signal;
pub use stats::{Counts, Totals};

/// The README's examples, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

/// The library guide's examples, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/library.md")]
pub struct LibraryGuideDoctests;
