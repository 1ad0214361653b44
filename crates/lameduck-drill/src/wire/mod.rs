//! Clients that speak the wire directly, so that every outcome can be
//! classified.

pub mod http;
