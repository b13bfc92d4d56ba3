//! The backend list: HAProxy's runtime API (`show servers state`) when configured — one source of
//! truth, refreshed — or the static list from the checker's config file. Never both.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::config::BackendsConfig;
use crate::state::ServerKey;
use egress_haproxy_api::{RuntimeApi, RuntimeApiAddr, RuntimeApiError};

/// A server to probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSpec {
    /// `<backend>/<server>`.
    pub key: ServerKey,
    /// The proxy address.
    pub addr: SocketAddr,
}

/// Where the list comes from.
#[derive(Clone, Debug)]
pub enum BackendSource {
    /// Fixed at startup.
    Static(Vec<ServerSpec>),
    /// Read from HAProxy.
    Runtime {
        /// The client.
        api: RuntimeApi,
        /// Backends to read.
        names: Vec<String>,
        /// Re-read period.
        refresh: Duration,
    },
}

impl BackendSource {
    /// From a validated config.
    pub fn from_config(cfg: &BackendsConfig) -> Result<Self, egress_haproxy_api::AddrError> {
        match &cfg.runtime_api {
            Some(addr) => Ok(BackendSource::Runtime {
                api: RuntimeApi::new(RuntimeApiAddr::parse(addr)?, Duration::from_secs(5)),
                names: cfg.names.clone(),
                refresh: cfg.refresh,
            }),
            None => Ok(BackendSource::Static(
                cfg.servers
                    .iter()
                    .map(|s| ServerSpec {
                        key: ServerKey::new(&s.backend, &s.name),
                        addr: s.address,
                    })
                    .collect(),
            )),
        }
    }

    /// How often to reload; `None` for a static list.
    pub fn refresh(&self) -> Option<Duration> {
        match self {
            BackendSource::Static(_) => None,
            BackendSource::Runtime { refresh, .. } => Some(*refresh),
        }
    }

    /// The current list.
    pub async fn load(&self) -> Result<Vec<ServerSpec>, RuntimeApiError> {
        match self {
            BackendSource::Static(list) => Ok(list.clone()),
            BackendSource::Runtime { api, names, .. } => {
                let mut out = Vec::new();
                for name in names {
                    for row in api.servers_state(name).await? {
                        if let Some(spec) = spec_from_row(&row) {
                            out.push(spec);
                        }
                    }
                }
                Ok(out)
            }
        }
    }
}

/// A server from one `show servers state` row; `None` when it has no usable address yet (e.g. a
/// server whose FQDN is not resolved: `srv_addr` is `-` or `0.0.0.0`).
pub fn spec_from_row(row: &std::collections::HashMap<String, String>) -> Option<ServerSpec> {
    let backend = row.get("be_name")?;
    let server = row.get("srv_name")?;
    let ip: IpAddr = row.get("srv_addr")?.parse().ok()?;
    let port: u16 = row.get("srv_port")?.parse().ok()?;
    if ip.is_unspecified() || port == 0 {
        return None;
    }
    Some(ServerSpec {
        key: ServerKey::new(backend, server),
        addr: SocketAddr::new(ip, port),
    })
}
