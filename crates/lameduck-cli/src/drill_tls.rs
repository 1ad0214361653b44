//! The drill's TLS client: `https://` URLs, `--tls` for a spawned service,
//! trusting `--ca FILE`, or anything with `--insecure`.

use std::{path::Path, sync::Arc};

use anyhow::Context;
use lameduck::rustls::{
    self, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};

/// The client configuration: trusting the certificates in `ca`, or with
/// `insecure` any certificate at all (its signature over the handshake is
/// still checked, so the connection is TLS; who is at the other end is not).
pub(crate) fn client(ca: Option<&Path>, insecure: bool) -> anyhow::Result<Arc<ClientConfig>> {
    let builder = ClientConfig::builder();
    let config = if insecure {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let ca =
            ca.context("a TLS service needs --ca FILE (the CA that signed it) or --insecure")?;
        let mut roots = RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca)
            .and_then(|c| c.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("cannot read {} (--ca)", ca.display()))?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            anyhow::bail!("no usable certificate in {} (--ca)", ca.display());
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// The name checked against the certificate: the URL's host.
pub(crate) fn server_name(host: &str) -> anyhow::Result<ServerName<'static>> {
    ServerName::try_from(host.to_owned())
        .with_context(|| format!("{host:?} is not a TLS server name"))
}

/// `--insecure`: every certificate is accepted.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
