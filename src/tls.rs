//! TLS with rustls 0.23 (ring provider; TLS 1.2 and 1.3 only): the acceptor for client
//! connections built from `[proxy.tls]`. Certificates are read when Sluice starts and again at
//! every reload, so a renewed certificate is picked up by `RELOAD`/SIGHUP without dropping
//! sessions (open TLS sessions keep the certificate they were made with).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Config;

/// The acceptor for `[proxy.tls]`, or `None` when the section is absent. The error names the
/// file and what is wrong with it.
pub fn client_acceptor(config: &Config) -> Result<Option<tokio_rustls::TlsAcceptor>, String> {
    let Some(tls) = &config.proxy.tls else {
        return Ok(None);
    };
    let cert_path = config.base_dir.join(&tls.cert);
    let key_path = config.base_dir.join(&tls.key);
    let certs = load_certs(&cert_path)?;
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| {
        format!(
            "[proxy.tls] key: cannot read a PEM private key from {}: {e}",
            key_path.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("[proxy.tls]: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!(
                "[proxy.tls]: the key {} does not fit the certificate {}: {e}",
                key_path.display(),
                cert_path.display()
            )
        })?;
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(server))))
}

/// Every certificate of a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(certs)
}
