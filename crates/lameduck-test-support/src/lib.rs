//! Test support: the real `lameduck` binary as a child process, and raw
//! HTTP/1.1 clients that can tell a lost request from a refused one.
//!
//! Every wait here has a timeout, and a [`Child`] kills its process when
//! dropped, so a failing test leaves nothing behind.

mod cert;
mod child;
mod chromium;
mod haproxy;
mod postgres;
mod publisher;
pub mod raw_ws;
mod redis;

pub use cert::TestCert;
pub use child::{Child, is_alive, raise_fd_limit, rss_kib, run_to_exit, wait_gone};
pub use chromium::{Chromium, Page};
pub use haproxy::{Haproxy, free_port};
pub use lameduck_drill::wire::http::{KeepAlive, Outcome, Response, get, post_json, send};
pub use postgres::{PostgresServer, database_url};
pub use publisher::{Published, TopicPublisher, assert_one_to};
pub use redis::{RedisServer, redis_url};

/// The exit code of a drain that had to cut connections (the library's
/// `lameduck::EXIT_FORCED`, as `std::process::ExitStatus::code` gives it).
pub const EXIT_FORCED: i32 = 3;
