//! What [`Server::with_tls`](crate::Server::with_tls) does to the
//! configuration it is given.

use std::sync::Arc;

/// The configuration the server terminates TLS with: `config`, offering
/// HTTP/2 and HTTP/1.1 by ALPN unless it names its own protocols, and
/// with 0-RTT early data off (early data can be replayed by anyone who
/// saw it, and a drain must not answer a request twice).
pub(crate) fn acceptor(config: Arc<rustls::ServerConfig>) -> tokio_rustls::TlsAcceptor {
    let mut config = Arc::unwrap_or_clone(config);
    if config.alpn_protocols.is_empty() {
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    }
    config.max_early_data_size = 0;
    config.send_half_rtt_data = false;
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}
