//! TLS: the configuration [`Server::with_tls`](crate::Server::with_tls)
//! serves with, certificates read again when their files change, and
//! session-ticket keys that an upgrade hands over, so that
//! clients resume their sessions with the successor (an abbreviated
//! handshake) instead of paying a full one after every deploy.

mod cert;
mod config;
mod tickets;

pub use cert::{CertError, CertFiles};
pub(crate) use config::acceptor;
pub use tickets::{TICKET_KEYS, TicketKeys};
