//! `--tls-cert` and `--tls-key`: the service's certificate chain and key,
//! read at start (and by each successor at an upgrade).

use std::path::Path;

use anyhow::Context;
use lameduck::rustls::{
    self,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

/// The TLS configuration of the chain in `cert` and the key in `key` (PEM
/// files). Every error names the file it concerns.
pub(crate) fn load(cert: &Path, key: &Path) -> anyhow::Result<rustls::ServerConfig> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| {
            format!(
                "cannot read the certificate chain {} (--tls-cert)",
                cert.display()
            )
        })?;
    if chain.is_empty() {
        anyhow::bail!(
            "no certificate in {} (--tls-cert): expected PEM `CERTIFICATE` blocks",
            cert.display()
        );
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read the private key {} (--tls-key)", key.display()))?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .with_context(|| {
            format!(
                "the key {} (--tls-key) does not go with the certificate {} (--tls-cert)",
                key.display(),
                cert.display()
            )
        })?;
    Ok(config)
}
