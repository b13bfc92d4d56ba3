//! Blocking client helpers for tests: open a CONNECT tunnel (optionally from a chosen loopback source
//! address) and ask the echo server which address it sees, over HTTP or HTTPS.

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::Context as _;
use egress_common::http1;
use socket2::{Domain, Socket, Type};

use crate::echo::EchoServer;

/// The deadline used for each step (connect, CONNECT answer, request, response) by the helpers below.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_RESPONSE: usize = 64 * 1024;
/// Largest CONNECT answer head read.
const MAX_ANSWER_HEAD: usize = 8192;

/// A TCP connection to `to`, from `source` (port chosen by the kernel) when given.
pub fn connect_from(source: Option<Ipv4Addr>, to: SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    if let Some(ip) = source {
        socket
            .bind(&SocketAddr::from((ip, 0)).into())
            .with_context(|| format!("binding {ip}:0"))?;
    }
    socket
        .connect_timeout(&to.into(), STEP_TIMEOUT)
        .with_context(|| format!("connecting to {to}"))?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(STEP_TIMEOUT))?;
    stream.set_write_timeout(Some(STEP_TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Sends `CONNECT <target> HTTP/1.1` and reads the answer's head (byte by byte, so no tunnel byte is
/// consumed). Returns the status code and the stream.
pub fn connect_request(stream: TcpStream, target: &str) -> anyhow::Result<(u16, TcpStream)> {
    connect_request_with(stream, target, "")
}

/// As [`connect_request`], with extra header lines (each ending in `\r\n`), e.g.
/// `"X-Egress-Pool: kr\r\n"`.
pub fn connect_request_with(
    mut stream: TcpStream,
    target: &str,
    headers: &str,
) -> anyhow::Result<(u16, TcpStream)> {
    // One write: `write!` on a socket may send each formatted piece as its own segment.
    stream
        .write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{headers}\r\n").as_bytes())
        .context("sending CONNECT")?;
    let (status, _) = read_answer_head(&mut stream)?;
    Ok((status, stream))
}

/// Reads an answer head byte by byte (so no tunnel byte is consumed): the status code and the head.
pub fn read_answer_head(stream: &mut TcpStream) -> anyhow::Result<(u16, String)> {
    let (head, bytes) = http1::read_response_head_exact(stream, MAX_ANSWER_HEAD).map_err(|e| match e {
        http1::ReadError::Closed => anyhow::anyhow!("the proxy closed the connection before answering"),
        e => anyhow::Error::new(e).context("reading the answer"),
    })?;
    Ok((head.status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// Sends `request` (a whole request head, ending in an empty line) to `proxy` from `source` and
/// returns the answer's status and head: for requests the proxy answers itself (a refusal).
pub fn ask(proxy: SocketAddr, source: Option<Ipv4Addr>, request: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = connect_from(source, proxy)?;
    stream
        .write_all(request.as_bytes())
        .context("sending the request")?;
    read_answer_head(&mut stream)
}

/// A CONNECT tunnel to `target` through `proxy`, from `source` when given; an error unless 2xx.
pub fn connect_tunnel(
    proxy: SocketAddr,
    target: &str,
    source: Option<Ipv4Addr>,
) -> anyhow::Result<TcpStream> {
    let (status, stream) = connect_request(connect_from(source, proxy)?, target)?;
    anyhow::ensure!(
        (200..300).contains(&status),
        "CONNECT {target} via {proxy} answered {status}"
    );
    Ok(stream)
}

/// `GET <path>` over an open stream (plain or TLS); returns the body. Reads to EOF (the echo closes).
pub fn http_get<S: std::io::Read + std::io::Write>(
    stream: &mut S,
    host: &str,
    path: &str,
) -> anyhow::Result<String> {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .context("sending GET")?;
    stream.flush()?;
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            // rustls reports a peer that closes without close_notify this way; the body is complete.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e).context("reading the response"),
        }
        anyhow::ensure!(
            response.len() <= MAX_RESPONSE,
            "response larger than {MAX_RESPONSE} bytes"
        );
    }
    let head = http1::parse_response(&response, MAX_RESPONSE)
        .with_context(|| format!("GET {path}: {:?}", String::from_utf8_lossy(&response)))?
        .ok_or_else(|| anyhow::anyhow!("no HTTP head in {:?}", String::from_utf8_lossy(&response)))?;
    anyhow::ensure!(
        (head.version, head.status) == (1, 200),
        "GET {path} answered {:?}",
        head.status_line()
    );
    Ok(String::from_utf8_lossy(response.get(head.len..).unwrap_or_default()).into_owned())
}

/// Through `proxy` (from `source` when given), asks the echo's plain HTTP listener which address it
/// sees: the proxy's exit address.
pub fn echo_ip_via_proxy(
    proxy: SocketAddr,
    echo: &EchoServer,
    source: Option<Ipv4Addr>,
) -> anyhow::Result<String> {
    let target = echo.http_addr().to_string();
    let mut tunnel = connect_tunnel(proxy, &target, source)?;
    http_get(&mut tunnel, &target, "/")
}

/// As [`echo_ip_via_proxy`], over TLS verified against the echo's CA for "echo.test".
pub fn echo_ip_via_proxy_tls(
    proxy: SocketAddr,
    echo: &EchoServer,
    source: Option<Ipv4Addr>,
) -> anyhow::Result<String> {
    let target = echo.https_addr().to_string();
    let tunnel = connect_tunnel(proxy, &target, source)?;
    let name = rustls::pki_types::ServerName::try_from(echo.server_name().to_owned())?;
    let conn = rustls::ClientConnection::new(echo.client_config()?, name)?;
    let mut tls = rustls::StreamOwned::new(conn, tunnel);
    http_get(&mut tls, echo.server_name(), "/")
}

/// Asks the echo directly (no proxy), from `source` when given.
pub fn echo_ip_direct(echo: &EchoServer, source: Option<Ipv4Addr>) -> anyhow::Result<String> {
    let mut stream = connect_from(source, echo.http_addr())?;
    http_get(&mut stream, &echo.http_addr().to_string(), "/")
}
