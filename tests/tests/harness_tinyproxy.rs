//! tinyproxy backends and the echo server: the exit address follows `Bind`, a kill refuses, a restart
//! with another address is a rotation.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

use egress_harness::client::{connect_from, echo_ip_via_proxy, echo_ip_via_proxy_tls, http_get};
use egress_harness::echo::EchoServer;
use egress_harness::tinyproxy::Tinyproxy;

#[test]
fn kill_refuses_and_restart_rotates_the_exit_address() -> anyhow::Result<()> {
    let echo = EchoServer::start()?;
    let mut proxy = Tinyproxy::start(Ipv4Addr::new(127, 0, 0, 7))?;
    assert_eq!(echo_ip_via_proxy(proxy.addr(), &echo, None)?, "127.0.0.7");
    assert_eq!(echo_ip_via_proxy_tls(proxy.addr(), &echo, None)?, "127.0.0.7");

    let addr = proxy.addr();
    proxy.kill();
    let err = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect_err("killed proxy");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");

    proxy.restart(Ipv4Addr::new(127, 0, 0, 8))?;
    assert_eq!(proxy.addr(), addr, "a restart keeps the port");
    assert_eq!(echo_ip_via_proxy(proxy.addr(), &echo, None)?, "127.0.0.8");
    assert!(proxy.logs().contains("Bound to 127.0.0.8"), "{}", proxy.logs());
    Ok(())
}

#[test]
fn echo_answers_the_peer_address_as_text_and_json() -> anyhow::Result<()> {
    let echo = EchoServer::start()?;
    assert_eq!(echo.server_name(), "echo.test");
    assert!(echo.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    let mut stream = connect_from(Some(Ipv4Addr::new(127, 0, 0, 9)), echo.http_addr())?;
    assert_eq!(http_get(&mut stream, "echo", "/")?, "127.0.0.9");
    let mut stream = connect_from(Some(Ipv4Addr::new(127, 0, 0, 10)), echo.http_addr())?;
    assert_eq!(http_get(&mut stream, "echo", "/json")?, r#"{"ip":"127.0.0.10"}"#);
    Ok(())
}
