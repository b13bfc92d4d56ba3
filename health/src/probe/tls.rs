//! A verified TLS handshake through the tunnel (rustls, ring provider).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::class::FailureClass;

/// Why TLS roots could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The CA file could not be read.
    #[error("cannot read CA file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The CA file holds no usable certificate.
    #[error("CA file {0} contains no usable certificate")]
    Empty(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Build a connector trusting the PEM certificates in `ca_file`, or the webpki roots when `None`.
pub fn connector(ca_file: Option<&Path>) -> Result<TlsConnector, TlsSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let shown = path.display().to_string();
            let pem = std::fs::read(path).map_err(|source| TlsSetupError::Read {
                path: shown.clone(),
                source,
            })?;
            let mut added = 0usize;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()).flatten() {
                if roots.add(cert).is_ok() {
                    added += 1;
                }
            }
            if added == 0 {
                return Err(TlsSetupError::Empty(shown));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Handshake over `stream` (an open tunnel) with SNI and certificate verification for `name`.
pub async fn handshake<S>(
    connector: &TlsConnector,
    name: &ServerName<'static>,
    stream: S,
    timeout: Duration,
) -> Result<TlsStream<S>, FailureClass>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(timeout, connector.connect(name.clone(), stream)).await {
        Err(_) => Err(FailureClass::TlsTimeout),
        Ok(Err(_)) => Err(FailureClass::Tls),
        Ok(Ok(s)) => Ok(s),
    }
}
