//! The checker's own path to a target, without a tunnel: the control probe and the direct exit-IP
//! check dial here.

use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::class::FailureClass;
use super::connect;

/// Resolve `host` and connect to the first address, all within `timeout`.
pub async fn dial(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, FailureClass> {
    let deadline = Instant::now() + timeout;
    let addr = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => std::net::SocketAddr::new(ip, port),
        Err(_) => {
            let lookup = tokio::net::lookup_host((host, port));
            match tokio::time::timeout(timeout, lookup).await {
                Ok(Ok(mut addrs)) => addrs.next().ok_or(FailureClass::ConnectError)?,
                Ok(Err(_)) => return Err(FailureClass::ConnectError),
                Err(_) => return Err(FailureClass::ConnectTimeout),
            }
        }
    };
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    connect::tcp_connect(addr, left).await
}
