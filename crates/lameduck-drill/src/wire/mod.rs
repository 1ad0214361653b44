//! Clients that speak the wire directly, so that every outcome can be
//! classified.

mod conn;
pub mod http;

pub use conn::{Conn, Dialer};
