//! Stop, restart and redeploy an axum/hyper service without losing a
//! request, a WebSocket message or an SSE event.
//!
//! "Lame duck" is the state a server enters when it still serves what it
//! holds but takes on nothing new. [`Server`] runs its own accept loop over
//! hyper-util's connection builder so that it sees every connection,
//! upgraded ones included, and drains them in the order that loses nothing:
//!
//! 1. `/readyz` fails at once; everything else works for `drain_announce`.
//! 2. Connections already in the kernel's accept queue are served, then the
//!    listener closes.
//! 3. HTTP/1.1 keep-alive goes off: busy connections answer with
//!    `Connection: close`; idle ones get `idle_grace` for a request already
//!    on its way. HTTP/2 gets GOAWAY.
//! 4. WebSockets ([`ws::WsSession`]) get Close 1001 (1012 on restart); SSE
//!    streams ([`sse::SseStream`]) get `event: drain` and end.
//! 5. Long requests run until `drain_timeout`; then the rest is cut.
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
//! # Events
//!
//! Tracing events with stable names (the event's message):
//! `server.listening` (`addr`, `pid`), `signal.received`, `shutdown.begin`
//! (reason, announce, timeout, deadline), `shutdown.draining`,
//! `shutdown.listener_closed`, `shutdown.progress` (each second: time left,
//! counts by kind, in-flight requests), `shutdown.second_signal`,
//! `shutdown.forcing`, `shutdown.unwind_timeout`, `shutdown.complete`
//! (totals, forced count).

#![deny(missing_docs)]
#![doc(test(attr(deny(warnings))))]

mod config;
mod error;
pub mod handoff;
pub mod health;
mod lifecycle;
mod report;
mod server;
pub mod sse;
mod stats;
pub mod ws;

pub use config::Config;
pub use error::Error;
pub use lifecycle::{
    Drain, DrainReason, Handle, JobGuard, MissingDrain, Phase, listen_for_signals,
};
pub use report::{DrainReport, EXIT_DRAINED, EXIT_FORCED};
pub use server::{Server, TrackedBody};
pub use stats::{ConnKind, Counts, Totals};

/// The README's examples, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
