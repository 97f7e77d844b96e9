//! TLS with rustls 0.23 (ring provider; TLS 1.2 and 1.3 only): the acceptor for client
//! connections built from `[proxy.tls]`. Certificates are read when Sluice starts and again at
//! every reload, so a renewed certificate is picked up by `RELOAD`/SIGHUP without dropping
//! sessions (open TLS sessions keep the certificate they were made with).

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::Config;

/// A socket that is plain TCP, or TLS once switched (`T` is the client or server side of a
/// tokio-rustls stream).
pub enum MaybeTls<T> {
    Plain(TcpStream),
    Tls(Box<T>),
    /// Only while switching to TLS.
    Switching,
}

impl<T> std::fmt::Debug for MaybeTls<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MaybeTls::Plain(_) => "plain TCP",
            MaybeTls::Tls(_) => "TLS",
            MaybeTls::Switching => "switching to TLS",
        })
    }
}

impl<T> MaybeTls<T> {
    pub fn is_tls(&self) -> bool {
        matches!(self, MaybeTls::Tls(_))
    }
}

fn switching() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "switching to TLS")
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for MaybeTls<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            MaybeTls::Switching => Poll::Ready(Err(switching())),
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MaybeTls<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            MaybeTls::Switching => Poll::Ready(Err(switching())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            MaybeTls::Switching => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            MaybeTls::Switching => Poll::Ready(Ok(())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            MaybeTls::Switching => Poll::Ready(Err(switching())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Tls(s) => s.is_write_vectored(),
            MaybeTls::Switching => false,
        }
    }
}

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

/// TLS to the servers (`[backend_tls]`), shared by every backend connection.
pub struct BackendTls {
    pub connector: tokio_rustls::TlsConnector,
    /// The name every server's certificate must carry instead of its host.
    pub server_name: Option<String>,
    /// For the monitor's mysql_async connections.
    pub ca: std::path::PathBuf,
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
    pub verify_server_name: bool,
}

impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTls")
            .field("ca", &self.ca)
            .field("verify_server_name", &self.verify_server_name)
            .finish()
    }
}

impl BackendTls {
    /// The name to verify for a server at `address` (`host:port`).
    pub fn name_for(
        &self,
        address: &str,
    ) -> Result<rustls::pki_types::ServerName<'static>, String> {
        let host = match &self.server_name {
            Some(n) => n.clone(),
            None => address
                .rsplit_once(':')
                .map_or(address, |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
        };
        rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("[backend_tls]: {host:?} is not a valid server name: {e}"))
    }
}

/// Accepts a certificate whose chain verifies but that names another host
/// (`verify_server_name = false`).
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error};
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            r => r,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The TLS a server is reached with: `[backend_tls]`, unless the server says `tls = false`.
pub fn for_server(
    global: Option<&Arc<BackendTls>>,
    server: &crate::config::ServerConfig,
) -> Option<Arc<BackendTls>> {
    match server.tls {
        Some(false) => None,
        _ => global.cloned(),
    }
}

/// The connector for `[backend_tls]`, or `None` when the section is absent.
pub fn backend_tls(config: &Config) -> Result<Option<Arc<BackendTls>>, String> {
    let Some(t) = &config.backend_tls else {
        return Ok(None);
    };
    let ca = config.base_dir.join(&t.ca);
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(&ca).map_err(|e| format!("[backend_tls] ca: {e}"))? {
        roots
            .add(c)
            .map_err(|e| format!("[backend_tls] ca: {}: {e}", ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("[backend_tls]: {e}"))?;
    let builder = if t.verify_server_name {
        builder.with_root_certificates(roots)
    } else {
        let inner =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("[backend_tls] ca: {e}"))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly(inner)))
    };
    let (client, identity) = match (&t.cert, &t.key) {
        (Some(cert), Some(key)) => {
            let (cert, key) = (config.base_dir.join(cert), config.base_dir.join(key));
            let chain = load_certs(&cert).map_err(|e| format!("[backend_tls] cert: {e}"))?;
            let k = PrivateKeyDer::from_pem_file(&key)
                .map_err(|e| format!("[backend_tls] key: cannot read {}: {e}", key.display()))?;
            let c = builder
                .with_client_auth_cert(chain, k)
                .map_err(|e| format!("[backend_tls] cert/key: {e}"))?;
            (c, Some((cert, key)))
        }
        (None, None) => (builder.with_no_client_auth(), None),
        _ => return Err("[backend_tls]: set both cert and key, or neither".into()),
    };
    Ok(Some(Arc::new(BackendTls {
        connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
        server_name: t.server_name.clone(),
        ca,
        identity,
        verify_server_name: t.verify_server_name,
    })))
}

/// The `notAfter` of an X.509 certificate, in Unix seconds (for the expiry metric). A small
/// DER walk: Certificate → tbsCertificate → [version] serial signature issuer validity.
pub fn not_after(cert: &[u8]) -> Option<i64> {
    /// One DER element at the front of `b`: (tag, contents, rest).
    fn element(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, b) = b.split_first()?;
        let (&first, mut b) = b.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || b.len() < n {
                return None;
            }
            let len = b[..n]
                .iter()
                .fold(0usize, |a, &x| (a << 8) | usize::from(x));
            b = &b[n..];
            len
        };
        (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
    }
    let (_, cert, _) = element(cert)?;
    let (_, mut tbs, _) = element(cert)?;
    let (tag, _, rest) = element(tbs)?;
    if tag == 0xa0 {
        tbs = rest; // explicit version
    }
    for _ in 0..3 {
        tbs = element(tbs)?.2; // serial, signature algorithm, issuer
    }
    let (_, validity, _) = element(tbs)?;
    let (_, _, validity) = element(validity)?; // notBefore
    let (tag, time, _) = element(validity)?;
    let text = std::str::from_utf8(time).ok()?;
    let digits = |s: &str| -> Option<i64> { s.parse().ok() };
    let (year, rest) = match tag {
        0x17 => {
            // UTCTime YYMMDDHHMMSSZ: 50–99 → 19xx.
            let yy = digits(text.get(..2)?)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, text.get(2..)?)
        }
        0x18 => (digits(text.get(..4)?)?, text.get(4..)?),
        _ => return None,
    };
    let field = |i: usize| digits(rest.get(i..i + 2)?);
    let (month, day, h, m, s) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    // Days from the civil date (proleptic Gregorian), 1970-01-01 = 0.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + m * 60 + s)
}

#[cfg(test)]
mod not_after_tests {
    #[test]
    fn reads_the_expiry_of_a_generated_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert_until = |y, m, d| {
            let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
            params.not_after = rcgen::date_time_ymd(y, m, d);
            params.self_signed(&key).unwrap()
        };
        // 2031-07-15T00:00:00Z
        assert_eq!(
            super::not_after(cert_until(2031, 7, 15).der()),
            Some(1_941_840_000)
        );
        let cert = cert_until(2060, 2, 29);
        // GeneralizedTime after 2049: 2060-02-29T00:00:00Z
        assert_eq!(super::not_after(cert.der()), Some(2_845_238_400));
        assert_eq!(super::not_after(b"\x30\x03\x02\x01"), None);
        assert_eq!(super::not_after(&[]), None);
    }
}
