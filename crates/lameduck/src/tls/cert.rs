//! A certificate and key read from PEM files, and read again when the files
//! change.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, SystemTime},
};

use rustls::{
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

/// Why a certificate or key file cannot be used. Each names its file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// The certificate chain cannot be read or parsed.
    #[error("cannot read the certificate chain {path}: {reason}")]
    Chain {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The private key cannot be read, parsed or used.
    #[error("cannot read the private key {path}: {reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The key is not the one of the certificate.
    #[error("the key {key} does not go with the certificate {cert}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
}

/// What identifies a version of a file: a rewrite in place changes the
/// time or size, a swap by rename or symlink (as Kubernetes does with a
/// Secret) changes the inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
    })
}

/// The certificate chain and key of two PEM files, served to every new
/// TLS connection (a `rustls` certificate resolver), and read again when
/// either file changes ([`CertFiles::watch`]): what cert-manager and
/// similar tools renew in place is served without a restart and without
/// dropping a connection. A version that does not parse, or whose key does
/// not match, keeps the previous one and says why (`tls.cert_reload_failed`).
///
/// # Examples
///
/// ```no_run
/// use std::{sync::Arc, time::Duration};
/// use lameduck::{Server, rustls, tls::CertFiles};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let cert = CertFiles::load("/etc/tls/tls.crt", "/etc/tls/tls.key")?;
/// cert.watch(Duration::from_secs(2));
/// let tls = rustls::ServerConfig::builder()
///     .with_no_client_auth()
///     .with_cert_resolver(cert);
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:443").await?;
/// Server::new(listener).with_tls(Arc::new(tls)).serve(axum::Router::new()).await?;
/// # Ok(()) }
/// # let _ = run;
/// ```
pub struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    stamps: Mutex<(Option<Stamp>, Option<Stamp>)>,
}

impl fmt::Debug for CertFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertFiles")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

fn read(cert: &Path, key: &Path) -> Result<CertifiedKey, CertError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| CertError::Chain {
            path: cert.to_owned(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(CertError::Chain {
            path: cert.to_owned(),
            reason: "no PEM `CERTIFICATE` block".into(),
        });
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| CertError::Key {
        path: key.to_owned(),
        reason: e.to_string(),
    })?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, private, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => CertError::Mismatch {
            cert: cert.to_owned(),
            key: key.to_owned(),
        },
        other => CertError::Key {
            path: key.to_owned(),
            reason: other.to_string(),
        },
    })
}

impl CertFiles {
    /// Reads the chain in `cert` (leaf first) and the key in `key`.
    ///
    /// # Errors
    ///
    /// [`CertError`], naming the file.
    pub fn load(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Arc<Self>, CertError> {
        let (cert, key) = (cert.as_ref().to_owned(), key.as_ref().to_owned());
        let stamps = (stamp(&cert), stamp(&key));
        let current = read(&cert, &key)?;
        Ok(Arc::new(Self {
            cert,
            key,
            current: RwLock::new(Arc::new(current)),
            stamps: Mutex::new(stamps),
        }))
    }

    /// Reads the files again if either changed since they were last read:
    /// `Ok(true)` when a new certificate is served from now on, `Ok(false)`
    /// when nothing changed.
    ///
    /// # Errors
    ///
    /// [`CertError`]: the previous certificate is kept.
    pub fn reload(&self) -> Result<bool, CertError> {
        let now = (stamp(&self.cert), stamp(&self.key));
        let mut seen = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
        if *seen == now {
            return Ok(false);
        }
        // Recorded even on failure: a broken file is reported once, and
        // read again when it changes next.
        *seen = now;
        let next = read(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
        Ok(true)
    }

    /// Checks the files every `every` from now on (in a task on the
    /// current Tokio runtime, which ends with it), logging
    /// `tls.cert_reloaded` or `tls.cert_reload_failed`.
    pub fn watch(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let files = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(files) = files.upgrade() else { return };
                match files.reload() {
                    Ok(false) => {}
                    Ok(true) => tracing::info!(cert = %files.cert.display(), "tls.cert_reloaded"),
                    Err(e) => tracing::warn!(error = %e, "tls.cert_reload_failed"),
                }
            }
        })
    }

    /// The certificate and key served now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl ResolvesServerCert for CertFiles {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}
