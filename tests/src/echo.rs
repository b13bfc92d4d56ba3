//! The "IP echo" target: answers any HTTP request with the peer address it sees, over plain HTTP and
//! over HTTPS (a leaf for `echo.test` and 127.0.0.1 signed by a CA generated here with rcgen).
//!
//! `GET /json` answers `{"ip":"<peer>"}`; any other request answers the bare peer IP as text/plain.
//! Every answer carries `Connection: close`. Runs on the harness runtime, so sync and async tests can
//! both use it; stops on drop.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::http_util::read_head;

/// The TLS server name of the HTTPS listener.
pub const SERVER_NAME: &str = "echo.test";
/// Connections served at once per listener; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 512;
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A running echo server (HTTP and HTTPS listeners on 127.0.0.1). Stops on drop.
#[derive(Debug)]
pub struct EchoServer {
    http: SocketAddr,
    https: SocketAddr,
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    shutdown: CancellationToken,
}

impl EchoServer {
    /// Starts both listeners on 127.0.0.1 ephemeral ports.
    pub fn start() -> anyhow::Result<EchoServer> {
        Self::start_on(Ipv4Addr::LOCALHOST)
    }

    /// Starts both listeners on `ip` (any 127.0.0.0/8 address) and ephemeral ports.
    pub fn start_on(ip: Ipv4Addr) -> anyhow::Result<EchoServer> {
        let (ca_pem, ca_der, tls) = tls_config()?;
        let handle = crate::runtime::handle()?;
        let _enter = handle.enter();
        let http = bind(ip)?;
        let https = bind(ip)?;
        let (http_addr, https_addr) = (http.local_addr()?, https.local_addr()?);
        let shutdown = CancellationToken::new();
        handle.spawn(serve(http, None, shutdown.clone()));
        handle.spawn(serve(
            https,
            Some(tokio_rustls::TlsAcceptor::from(tls)),
            shutdown.clone(),
        ));
        Ok(EchoServer {
            http: http_addr,
            https: https_addr,
            ca_pem,
            ca_der,
            shutdown,
        })
    }

    /// The plain HTTP listener.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    /// The HTTPS listener (certificate for [`SERVER_NAME`] and 127.0.0.1).
    pub fn https_addr(&self) -> SocketAddr {
        self.https
    }

    /// The CA certificate (PEM) that signed the HTTPS certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA certificate (DER).
    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// The TLS server name, "echo.test".
    pub fn server_name(&self) -> &str {
        SERVER_NAME
    }

    /// A rustls client config trusting only this server's CA.
    pub fn client_config(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).context("adding the echo CA")?;
        let config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn bind(ip: Ipv4Addr) -> anyhow::Result<TcpListener> {
    let std = std::net::TcpListener::bind((ip, 0)).with_context(|| format!("binding {ip}:0"))?;
    std.set_nonblocking(true)?;
    Ok(TcpListener::from_std(std)?)
}

/// A fresh CA and a leaf for echo.test + 127.0.0.1; returns (CA PEM, CA DER, server config).
fn tls_config() -> anyhow::Result<(String, CertificateDer<'static>, Arc<rustls::ServerConfig>)> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "egress-harness test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let leaf_key = KeyPair::generate()?;
    let mut leaf_params = CertificateParams::new(vec![SERVER_NAME.to_owned(), "127.0.0.1".to_owned()])?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, SERVER_NAME);
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf_params.signed_by(&leaf_key, &issuer)?;

    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone(), ca_cert.der().clone()], key)?;
    Ok((ca_cert.pem(), ca_cert.der().clone(), Arc::new(config)))
}

async fn serve(listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>, shutdown: CancellationToken) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::debug!(%error, "echo accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let tls = tls.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = async {
                    match tls {
                        None => answer(stream, peer).await,
                        Some(tls) => {
                            if let Ok(Ok(stream)) =
                                tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(stream)).await
                            {
                                answer(stream, peer).await;
                            }
                        }
                    }
                } => {}
            }
        });
    }
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, peer: SocketAddr) {
    let Some(request) = read_head(&mut stream).await else {
        return;
    };
    let ip = peer.ip().to_string();
    let (content_type, body) = match request.head.target.as_str() {
        "/json" => ("application/json", format!("{{\"ip\":\"{ip}\"}}")),
        _ => ("text/plain", ip),
    };
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let write = async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(WRITE_TIMEOUT, write).await;
}
