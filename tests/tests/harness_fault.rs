//! Fault backends: every mode does what it says, and modes switch while running on the same port.

use std::io::{ErrorKind, Read as _};
use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

use egress_harness::client::{connect_from, connect_request, echo_ip_via_proxy, echo_ip_via_proxy_tls};
use egress_harness::echo::EchoServer;
use egress_harness::fault::{FaultBackend, FaultMode};

fn connect(backend: &FaultBackend) -> std::io::Result<TcpStream> {
    TcpStream::connect_timeout(&backend.addr(), Duration::from_secs(2))
}

#[test]
fn refuse_closes_the_port_and_forward_reopens_it() -> anyhow::Result<()> {
    let echo = EchoServer::start()?;
    let backend = FaultBackend::start(FaultMode::Forward)?;
    assert_eq!(echo_ip_via_proxy(backend.addr(), &echo, None)?, "127.0.0.1");
    assert_eq!(echo_ip_via_proxy_tls(backend.addr(), &echo, None)?, "127.0.0.1");

    backend.set_mode(FaultMode::Refuse)?;
    let err = connect(&backend).expect_err("Refuse must refuse connects");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");

    backend.set_mode(FaultMode::Forward)?;
    assert_eq!(echo_ip_via_proxy(backend.addr(), &echo, None)?, "127.0.0.1");

    let refusing = FaultBackend::start(FaultMode::Refuse)?;
    assert_eq!(
        connect(&refusing).expect_err("refused").kind(),
        ErrorKind::ConnectionRefused
    );
    Ok(())
}

#[test]
fn status_modes_answer_connect_with_their_status() -> anyhow::Result<()> {
    let backend = FaultBackend::start(FaultMode::Status(502))?;
    let (status, _) = connect_request(connect_from(None, backend.addr())?, "127.0.0.1:9")?;
    assert_eq!(status, 502);
    backend.set_mode(FaultMode::Status(503))?;
    let (status, _) = connect_request(connect_from(None, backend.addr())?, "127.0.0.1:9")?;
    assert_eq!(status, 503);
    Ok(())
}

#[test]
fn ok_then_close_answers_200_then_ends_the_tunnel() -> anyhow::Result<()> {
    let backend = FaultBackend::start(FaultMode::OkThenClose)?;
    let (status, mut tunnel) = connect_request(connect_from(None, backend.addr())?, "127.0.0.1:9")?;
    assert_eq!(status, 200);
    let mut buf = [0u8; 16];
    assert_eq!(
        tunnel.read(&mut buf)?,
        0,
        "the tunnel must close right after the 200"
    );
    Ok(())
}

#[test]
fn black_hole_accepts_and_never_answers() -> anyhow::Result<()> {
    let backend = FaultBackend::start(FaultMode::BlackHole)?;
    let stream = connect_from(None, backend.addr())?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    let err = connect_request(stream, "127.0.0.1:9").expect_err("a black hole never answers");
    let io = err
        .chain()
        .find_map(|e| e.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind);
    assert!(
        matches!(io, Some(ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "{err:#}"
    );
    assert!(egress_harness::wait_until(Duration::from_secs(2), || backend
        .accepted()
        >= 1));
    Ok(())
}

#[test]
fn drop_connections_kills_open_tunnels() -> anyhow::Result<()> {
    // A tunnel to a listener that never speaks: only drop_connections can end it.
    let quiet = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let backend = FaultBackend::start(FaultMode::Forward)?;
    let (status, mut tunnel) = connect_request(
        connect_from(None, backend.addr())?,
        &quiet.local_addr()?.to_string(),
    )?;
    assert_eq!(status, 200);
    backend.drop_connections();
    tunnel.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = [0u8; 16];
    let n = tunnel.read(&mut buf).or_else(|e| {
        if e.kind() == ErrorKind::ConnectionReset {
            Ok(0)
        } else {
            Err(e)
        }
    })?;
    assert_eq!(n, 0, "the tunnel must be closed");
    Ok(())
}
