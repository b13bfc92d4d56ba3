//! TCP connect to a backend and the HTTP CONNECT handshake, each step under its own deadline.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use egress_common::http1;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::class::FailureClass;

/// Deadlines and bounds for one tunnel.
#[derive(Clone, Copy, Debug)]
pub struct TunnelLimits {
    /// TCP connect to the backend.
    pub connect_timeout: Duration,
    /// From the CONNECT request to a complete response head.
    pub response_timeout: Duration,
    /// The response head is refused past this many bytes.
    pub max_head: usize,
}

/// The result of parsing a response head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    /// The status code.
    pub status: u16,
    /// The length of the head, terminator included; bytes past it belong to the tunnel.
    pub len: usize,
}

/// Why a response head is not acceptable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Not an `HTTP/1.x NNN` status line, or malformed (or too many) header fields.
    #[error("malformed response head")]
    Malformed,
    /// The head is longer than allowed.
    #[error("response head too long")]
    TooLong,
}

/// Parse an HTTP/1.x response head from `buf` ([`egress_common::http1`]). `Ok(None)`: incomplete,
/// read more.
///
/// The status line is validated as soon as it is complete, so a hostile peer cannot make us buffer
/// `max_head` bytes of garbage before we notice it is not HTTP.
pub fn parse_response_head(buf: &[u8], max_head: usize) -> Result<Option<ResponseHead>, HeadError> {
    match http1::parse_response(buf, max_head) {
        Ok(head) => Ok(head.map(|h| ResponseHead {
            status: h.status,
            len: h.len,
        })),
        Err(http1::HeadError::TooLong { .. }) => Err(HeadError::TooLong),
        Err(_) => Err(HeadError::Malformed),
    }
}

/// TCP connect with its own timeout. The socket is built with socket2 so we can set `SO_LINGER 0`:
/// a checker opening thousands of short probe connections per second must not fill the table with
/// TIME_WAIT entries.
pub async fn tcp_connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, FailureClass> {
    let socket = new_socket(addr).map_err(|_| FailureClass::ConnectError)?;
    match tokio::time::timeout(timeout, socket.connect(addr)).await {
        Err(_) => Err(FailureClass::ConnectTimeout),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => Err(FailureClass::Refused),
        Ok(Err(_)) => Err(FailureClass::ConnectError),
        Ok(Ok(stream)) => Ok(stream),
    }
}

fn new_socket(addr: SocketAddr) -> io::Result<TcpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_linger(Some(Duration::ZERO))?;
    Ok(TcpSocket::from_std_stream(std::net::TcpStream::from(socket)))
}

/// Open a tunnel: connect to the proxy at `proxy`, send `CONNECT target`, accept any 2xx.
///
/// MDN: "Any 2XX successful response status code means that the proxy will switch to 'tunnel
/// mode'" — gluetun answers `HTTP/1.1 200 OK`, not "Connection established".
pub async fn open_tunnel(
    proxy: SocketAddr,
    target: &str,
    limits: &TunnelLimits,
) -> Result<TcpStream, FailureClass> {
    let mut stream = tcp_connect(proxy, limits.connect_timeout).await?;
    let exchange = async {
        let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|_| FailureClass::ConnectClosed)?;
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 1024];
        loop {
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|_| FailureClass::ConnectClosed)?;
            if n == 0 {
                return Err(FailureClass::ConnectClosed);
            }
            buf.extend_from_slice(&chunk[..n]);
            match parse_response_head(&buf, limits.max_head) {
                Ok(None) => continue,
                Err(_) => return Err(FailureClass::ConnectMalformed),
                Ok(Some(head)) if !(200..=299).contains(&head.status) => {
                    return Err(FailureClass::connect_status(head.status));
                }
                // Our targets never speak first (TLS, HTTP): bytes after the head are a broken proxy.
                Ok(Some(head)) if head.len != buf.len() => return Err(FailureClass::ConnectMalformed),
                Ok(Some(_)) => return Ok(()),
            }
        }
    };
    match tokio::time::timeout(limits.response_timeout, exchange).await {
        Err(_) => Err(FailureClass::ConnectTimeoutAfterAccept),
        Ok(Err(class)) => Err(class),
        Ok(Ok(())) => Ok(stream),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_answers() {
        let h = parse_response_head(b"HTTP/1.1 200 OK\r\n\r\n", 8192)
            .unwrap()
            .unwrap();
        assert_eq!(h, ResponseHead { status: 200, len: 19 });
        let h = parse_response_head(
            b"HTTP/1.0 200 Connection established\r\nProxy-Agent: x\r\n\r\n",
            8192,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.status, 200);
        let h = parse_response_head(b"HTTP/1.1 503\r\n\r\n", 8192)
            .unwrap()
            .unwrap();
        assert_eq!(h.status, 503);
        let h = parse_response_head(b"HTTP/1.1 502 Bad Gateway\n\n", 8192)
            .unwrap()
            .unwrap();
        assert_eq!((h.status, h.len), (502, 26));
    }

    #[test]
    fn incomplete_is_not_invalid() {
        assert_eq!(parse_response_head(b"", 8192), Ok(None));
        assert_eq!(parse_response_head(b"HT", 8192), Ok(None));
        assert_eq!(parse_response_head(b"HTTP/1.1 200 OK\r\n", 8192), Ok(None));
        assert_eq!(
            parse_response_head(b"HTTP/1.1 200 OK\r\nA: b\r\n\r", 8192),
            Ok(None)
        );
    }

    #[test]
    fn rejects_hostile_input() {
        for bad in [
            &b"SSH-2.0-OpenSSH\r\n"[..],
            b"XTTP/1.1 200 OK\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 099 x\r\n\r\n",
            b"HTTP/1.1 600 x\r\n\r\n",
            b"HTTP/1.x 200 OK\r\n\r\n",
            b"HTTP/1.1 2a0 OK\r\n\r\n",
            b"HTTP/1.1  200 OK\r\n\r\n",
            b"\x16\x03\x01\x02\x00\n",
        ] {
            assert_eq!(
                parse_response_head(bad, 8192),
                Err(HeadError::Malformed),
                "{bad:?}"
            );
        }
        // Garbage without a newline is refused as soon as it cannot be "HTTP/".
        assert_eq!(parse_response_head(b"GARBAGE", 8192), Err(HeadError::Malformed));
        // An endless header block is cut at max_head, not buffered forever.
        let mut long = b"HTTP/1.1 200 OK\r\n".to_vec();
        long.extend(std::iter::repeat_n(b'a', 9000));
        assert_eq!(parse_response_head(&long, 8192), Err(HeadError::TooLong));
        let mut long_line = b"HTTP/1.1 200 ".to_vec();
        long_line.extend(std::iter::repeat_n(b'a', 9000));
        assert_eq!(parse_response_head(&long_line, 8192), Err(HeadError::TooLong));
    }
}
