//! One synthetic probe through a backend: TCP connect → `CONNECT target` → any 2xx → optionally a
//! verified TLS handshake through the tunnel; and, periodically, the exit IP through the tunnel.

pub mod class;
pub mod connect;
pub mod direct;
pub mod exit_ip;
pub mod tls;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use crate::config::Config;
use class::FailureClass;
use connect::TunnelLimits;
use egress_haproxy_api::split_host_port;

/// Why the probes cannot be set up (the configuration passed validation, so this is rare).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A target's `host:port`.
    #[error("target address: {0}")]
    Address(#[from] egress_haproxy_api::AddrError),
    /// A target's TLS name.
    #[error("{address}: TLS name: {reason}")]
    TlsName {
        /// The target.
        address: String,
        /// rustls's words.
        reason: String,
    },
    /// The CA file or the TLS client.
    #[error("TLS trust: {0}")]
    Tls(#[from] tls::TlsSetupError),
}

/// A destination reached through the tunnel.
#[derive(Clone, Debug)]
pub struct Target {
    /// `host:port` for the CONNECT line.
    pub address: String,
    /// The host part (Host header default, control-probe DNS).
    pub host: String,
    /// The port.
    pub port: u16,
    /// TLS name when a handshake is wanted.
    pub tls: Option<ServerName<'static>>,
}

impl Target {
    fn new(address: &str, tls: bool, server_name: Option<&str>) -> Result<Self, SetupError> {
        let (host, port) = split_host_port(address)?;
        let tls = if tls {
            let name = server_name.unwrap_or(&host).to_owned();
            Some(ServerName::try_from(name).map_err(|e| SetupError::TlsName {
                address: address.to_owned(),
                reason: e.to_string(),
            })?)
        } else {
            None
        };
        Ok(Target {
            address: address.to_owned(),
            host,
            port,
            tls,
        })
    }
}

/// The exit-IP endpoint.
#[derive(Clone, Debug)]
pub struct ExitIpTarget {
    /// Where it is.
    pub target: Target,
    /// The request path.
    pub path: String,
    /// Host header value.
    pub host: String,
    /// Deadline for the echo exchange.
    pub timeout: Duration,
    /// How often per backend.
    pub interval: Duration,
}

/// Everything needed to probe, shared by all probe tasks.
#[derive(Clone)]
pub struct Prober {
    /// Targets, round-robin.
    pub targets: Arc<[Target]>,
    /// The IP-echo endpoint, if configured.
    pub exit_ip: Option<Arc<ExitIpTarget>>,
    /// Tunnel deadlines.
    pub limits: TunnelLimits,
    /// TLS handshake deadline.
    pub tls_timeout: Duration,
    /// TLS client.
    pub connector: TlsConnector,
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober")
            .field("targets", &self.targets)
            .field("exit_ip", &self.exit_ip)
            .finish()
    }
}

impl Prober {
    /// Build from a validated configuration.
    pub fn from_config(cfg: &Config) -> Result<Self, SetupError> {
        let targets = cfg
            .targets
            .iter()
            .map(|t| Target::new(&t.address, t.tls, t.server_name.as_deref()))
            .collect::<Result<Vec<_>, _>>()?;
        let exit_ip = match &cfg.exit_ip {
            Some(e) => {
                let target = Target::new(&e.address, e.tls, e.server_name.as_deref())?;
                let host = e.server_name.clone().unwrap_or_else(|| target.host.clone());
                Some(Arc::new(ExitIpTarget {
                    target,
                    path: e.path.clone(),
                    host,
                    timeout: e.timeout,
                    interval: e.interval,
                }))
            }
            None => None,
        };
        let connector = tls::connector(cfg.tls.ca_file.as_deref())?;
        Ok(Prober {
            targets: targets.into(),
            exit_ip,
            limits: TunnelLimits {
                connect_timeout: cfg.probe.connect_timeout,
                response_timeout: cfg.probe.response_timeout,
                max_head: cfg.probe.max_response_head,
            },
            tls_timeout: cfg.probe.tls_timeout,
            connector,
        })
    }

    /// Probe `proxy` with target number `target` (taken modulo the target count).
    pub async fn probe(&self, proxy: SocketAddr, target: usize) -> Result<(), FailureClass> {
        let Some(t) = self.targets.get(target % self.targets.len().max(1)) else {
            return Ok(());
        };
        let stream = connect::open_tunnel(proxy, &t.address, &self.limits).await?;
        if let Some(name) = &t.tls {
            let _tls = tls::handshake(&self.connector, name, stream, self.tls_timeout).await?;
        }
        Ok(())
    }

    /// The exit IP through `proxy`, or `None` when no echo endpoint is configured.
    pub async fn exit_ip(&self, proxy: SocketAddr) -> Option<Result<IpAddr, FailureClass>> {
        let e = self.exit_ip.as_ref()?;
        let run = async {
            let stream = connect::open_tunnel(proxy, &e.target.address, &self.limits).await?;
            match &e.target.tls {
                Some(name) => {
                    let tls = tls::handshake(&self.connector, name, stream, self.tls_timeout).await?;
                    exit_ip::fetch(tls, &e.host, &e.path, e.timeout).await
                }
                None => exit_ip::fetch(stream, &e.host, &e.path, e.timeout).await,
            }
        };
        Some(run.await)
    }

    /// The checker's own exit IP: the same echo request without a tunnel.
    pub async fn direct_exit_ip(&self, timeout: Duration) -> Option<Result<IpAddr, FailureClass>> {
        let e = self.exit_ip.as_ref()?;
        let run = async {
            let stream = direct::dial(&e.target.host, e.target.port, timeout).await?;
            match &e.target.tls {
                Some(name) => {
                    let tls = tls::handshake(&self.connector, name, stream, timeout).await?;
                    exit_ip::fetch(tls, &e.host, &e.path, e.timeout).await
                }
                None => exit_ip::fetch(stream, &e.host, &e.path, e.timeout).await,
            }
        };
        Some(run.await)
    }
}
