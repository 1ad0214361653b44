//! A self-signed certificate for the TLS tests.

use std::path::{Path, PathBuf};

/// A fresh ECDSA P-256 certificate for `localhost` and 127.0.0.1, written
/// as PEM files (`cert.pem`, `key.pem`) in a directory.
#[derive(Debug)]
pub struct TestCert {
    /// The certificate's PEM file.
    pub cert: PathBuf,
    /// The private key's PEM file.
    pub key: PathBuf,
    /// The certificate in DER, for a client to trust.
    pub der: Vec<u8>,
}

impl TestCert {
    /// Writes a new certificate and key into `dir`.
    ///
    /// # Panics
    ///
    /// When they cannot be generated or written.
    pub fn new_in(dir: &Path) -> Self {
        let key = rcgen::KeyPair::generate().expect("a key pair");
        let cert = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("names")
            .self_signed(&key)
            .expect("a self-signed certificate");
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_path, cert.pem()).expect("writing cert.pem");
        std::fs::write(&key_path, key.serialize_pem()).expect("writing key.pem");
        Self {
            cert: cert_path,
            key: key_path,
            der: cert.der().to_vec(),
        }
    }
}
