//! Ephemeral ports for daemons that bind their own sockets.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};

use anyhow::Context as _;

/// A port that was free on 127.0.0.1 a moment ago (bind :0, read, close). Another process may take it
/// before the daemon binds it, so callers retry with a new port when the daemon reports the address in
/// use. Where the harness owns the socket it keeps the listener instead.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// `127.0.0.1:<free port>`.
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?)))
}

/// Whether a log line says the daemon lost the race for its port.
pub(crate) fn is_addr_in_use(log: &str) -> bool {
    // PostgreSQL: "could not bind IPv4 address"; HAProxy: "cannot bind socket"; tinyproxy 1.11 only says
    // "Could not create listening sockets".
    [
        "Address already in use",
        "could not bind",
        "cannot bind",
        "Could not create listening sockets",
    ]
    .iter()
    .any(|needle| log.contains(needle))
}
