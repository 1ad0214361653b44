//! `--tls-cert` and `--tls-key`: the service's certificate chain and key,
//! read at start (and by each successor at an upgrade), and read again when
//! the files change.

use std::{path::Path, sync::Arc, time::Duration};

use lameduck::{
    rustls,
    tls::{CertError, CertFiles},
};

/// How often the files are checked for a new version.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// The TLS configuration of the chain in `cert` and the key in `key` (PEM
/// files), watched for changes. Every error names its file and flag.
pub(crate) fn load(cert: &Path, key: &Path) -> anyhow::Result<rustls::ServerConfig> {
    let files = CertFiles::load(cert, key).map_err(|e| {
        let flag = match e {
            CertError::Chain { .. } => "--tls-cert",
            CertError::Key { .. } => "--tls-key",
            _ => "--tls-cert, --tls-key",
        };
        anyhow::anyhow!("{e} ({flag})")
    })?;
    files.watch(WATCH_EVERY);
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(files as Arc<dyn rustls::server::ResolvesServerCert>);
    Ok(config)
}
