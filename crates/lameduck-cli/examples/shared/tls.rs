//! `--tls CERT KEY` for the benchmark servers: a rustls configuration
//! offering h2 and HTTP/1.1, as `lameduck serve --tls-cert --tls-key` has.

use std::sync::Arc;

use lameduck::rustls::{
    self,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

/// The configuration named by `--tls CERT KEY` in `args`, if any.
pub(crate) fn from_args(args: &[String]) -> Option<Arc<rustls::ServerConfig>> {
    let at = args.iter().position(|a| a == "--tls")?;
    let (cert, key) = (args.get(at + 1)?, args.get(at + 2)?);
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|c| c.collect::<Result<Vec<_>, _>>())
        .expect("the certificate");
    let key = PrivateKeyDer::from_pem_file(key).expect("the key");
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("a certificate and its key");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Some(Arc::new(config))
}
