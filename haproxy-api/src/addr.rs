//! Addresses and names as HAProxy and our configs spell them: the runtime API's socket, `host:port`,
//! proxy and server names.

use std::net::SocketAddr;
use std::path::PathBuf;

/// An address or name that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    /// Not `unix:/path`, `tcp:ip:port` or `tcp:host:port`.
    #[error("expected unix:/path, tcp:ip:port or tcp:host:port, got {0:?}")]
    RuntimeApi(String),
    /// Not `host:port`.
    #[error("{0:?} is not host:port")]
    HostPort(String),
    /// The port is not a number in 1..=65535.
    #[error("{0:?}: bad port")]
    Port(String),
}

/// Where the runtime API listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuntimeApiAddr {
    /// A unix socket path.
    Unix(PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
    /// A TCP host name and port, resolved at every connection (a compose service, a Kubernetes
    /// Service name): `(host, port)`.
    TcpHost(String, u16),
}

impl RuntimeApiAddr {
    /// Parse `unix:/path`, `tcp:ip:port` or `tcp:host:port` (a bare path starting with `/` is a
    /// unix socket; a host name is resolved at every connection).
    pub fn parse(s: &str) -> Result<Self, AddrError> {
        if let Some(p) = s.strip_prefix("unix:") {
            return Ok(RuntimeApiAddr::Unix(PathBuf::from(p)));
        }
        if s.starts_with('/') {
            return Ok(RuntimeApiAddr::Unix(PathBuf::from(s)));
        }
        let rest = s.strip_prefix("tcp:").unwrap_or(s);
        if let Ok(addr) = rest.parse() {
            return Ok(RuntimeApiAddr::Tcp(addr));
        }
        let bad = || AddrError::RuntimeApi(s.to_owned());
        let (host, port) = split_host_port(rest).map_err(|_| bad())?;
        let name_ok = host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !name_ok {
            return Err(bad());
        }
        Ok(RuntimeApiAddr::TcpHost(host, port))
    }
}

/// HAProxy proxy/server names: letters, digits, `-_.:` (configuration.txt §2.4 names).
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// Split `host:port` (IPv6 in brackets); the host is returned without brackets.
pub fn split_host_port(s: &str) -> Result<(String, u16), AddrError> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| AddrError::HostPort(s.to_owned()))?;
    let port: u16 = port.parse().map_err(|_| AddrError::Port(s.to_owned()))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || port == 0 || host.bytes().any(|b| b <= b' ' || b == b'/' || b == 0x7f) {
        return Err(AddrError::HostPort(s.to_owned()));
    }
    Ok((host.to_owned(), port))
}

impl std::fmt::Display for RuntimeApiAddr {
    /// As the config spells it: `unix:/path`, `tcp:ip:port`, `tcp:host:port`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RuntimeApiAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            RuntimeApiAddr::Tcp(a) => write!(f, "tcp:{a}"),
            RuntimeApiAddr::TcpHost(h, p) => write!(f, "tcp:{h}:{p}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_api_addresses() {
        assert_eq!(
            RuntimeApiAddr::parse("unix:/run/h.sock"),
            Ok(RuntimeApiAddr::Unix("/run/h.sock".into()))
        );
        assert_eq!(
            RuntimeApiAddr::parse("/run/h.sock"),
            Ok(RuntimeApiAddr::Unix("/run/h.sock".into()))
        );
        assert_eq!(
            RuntimeApiAddr::parse("tcp:127.0.0.1:9999"),
            Ok(RuntimeApiAddr::Tcp("127.0.0.1:9999".parse().unwrap()))
        );
        assert!(RuntimeApiAddr::parse("tcp:nowhere").is_err());
        assert_eq!(
            RuntimeApiAddr::parse("tcp:haproxy:9999"),
            Ok(RuntimeApiAddr::TcpHost("haproxy".into(), 9999))
        );
        assert!(RuntimeApiAddr::parse("tcp:bad host:9999").is_err());
        assert!(RuntimeApiAddr::parse("tcp:haproxy:0").is_err());
        assert_eq!(split_host_port("[::1]:443"), Ok(("::1".into(), 443)));
        assert!(split_host_port("host:0").is_err());
    }
}
