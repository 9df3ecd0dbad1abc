//! TLS settings: the certificate and key read from PEM files into a rustls `ServerConfig`
//! (at start, and again on SIGHUP so that a renewed certificate takes effect without a
//! restart). The reactor drives each session itself (`Link::read`, `Link::write_out`).

use std::io;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The server's TLS settings: TLS 1.2 and 1.3, no client certificates, ALPN none.
pub fn load(cert: &str, key: &str) -> io::Result<Arc<ServerConfig>> {
    let invalid = |what: &str, path: &str, e: &dyn std::fmt::Display| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("{what} {path}: {e}"))
    };
    let chain: Vec<CertificateDer> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect())
        .map_err(|e| invalid("TlsCert", cert, &e))?;
    if chain.is_empty() {
        return Err(invalid("TlsCert", cert, &"no certificate in the file"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| invalid("TlsKey", key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("TLS", "settings", &e))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| invalid("TlsKey", key, &e))?;
    Ok(Arc::new(config))
}
