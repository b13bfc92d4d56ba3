//! The exit IP as seen by an IP-echo endpoint: a plain HTTP/1.1 GET over an open stream (a tunnel,
//! TLS or not, or a direct connection for the checker's own exit IP).

use std::net::IpAddr;
use std::time::Duration;

use egress_common::http1;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::class::FailureClass;

/// The whole answer (head and body) is refused past this size: an IP is a few bytes.
pub const MAX_ANSWER: usize = 16 * 1024;

/// GET `path` with `Host: host` over `stream` and parse the exit IP from the body.
pub async fn fetch<S>(
    mut stream: S,
    host: &str,
    path: &str,
    timeout: Duration,
) -> Result<IpAddr, FailureClass>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let exchange = async {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: egress-checker\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|_| FailureClass::ExitIpUnavailable)?;
        let mut buf = Vec::with_capacity(512);
        let mut chunk = [0u8; 2048];
        loop {
            // Stop early once Content-Length is satisfied; otherwise read to EOF (Connection: close).
            if let Ok(Some(head)) = http1::parse_response(&buf, MAX_ANSWER)
                && let Ok(Some(len)) = head.headers.content_length()
                && buf.len() as u64 >= (head.len as u64).saturating_add(len)
            {
                break;
            }
            let n = match stream.read(&mut chunk).await {
                Ok(n) => n,
                // A TLS peer that closes without close_notify still gave us a complete answer.
                Err(_) if !buf.is_empty() => 0,
                Err(_) => return Err(FailureClass::ExitIpUnavailable),
            };
            if n == 0 {
                break;
            }
            if buf.len() + n > MAX_ANSWER {
                return Err(FailureClass::ExitIpInvalid);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let head = match http1::parse_response(&buf, MAX_ANSWER) {
            Ok(Some(h)) => h,
            _ => return Err(FailureClass::ExitIpUnavailable),
        };
        if head.status != 200 {
            return Err(FailureClass::ExitIpUnavailable);
        }
        // RFC 9112 §6.3: an invalid Content-Length is an unrecoverable framing error.
        let length = head
            .headers
            .content_length()
            .map_err(|_| FailureClass::ExitIpUnavailable)?;
        let mut body = &buf[head.len..];
        if let Some(len) = length.and_then(|l| usize::try_from(l).ok()) {
            body = body.get(..len).unwrap_or(body);
        }
        parse_ip_body(body).ok_or(FailureClass::ExitIpInvalid)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => Err(FailureClass::ExitIpUnavailable),
        Ok(r) => r,
    }
}

/// Parse a bare IP (`203.0.113.7\n`) or a JSON object with an `ip` field (`{"ip":"203.0.113.7"}`,
/// as ipify's `?format=json` and ipinfo.io answer).
pub fn parse_ip_body(body: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(body).ok()?.trim();
    if text.starts_with('{') {
        // Only the `ip` member is read: the rest of the object is skipped, never built (a body of
        // a few KiB holding a large array must not cost a large allocation).
        #[derive(serde::Deserialize)]
        struct Echo<'a> {
            #[serde(borrow)]
            ip: std::borrow::Cow<'a, str>,
        }
        let echo: Echo<'_> = serde_json::from_str(text).ok()?;
        return echo.ip.trim().parse().ok();
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bare_and_json() {
        assert_eq!(parse_ip_body(b"127.0.0.9\n"), Some("127.0.0.9".parse().unwrap()));
        assert_eq!(
            parse_ip_body(b"  2001:db8::1 "),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(
            parse_ip_body(br#"{"ip":"198.51.100.4","country":"KR"}"#),
            Some("198.51.100.4".parse().unwrap())
        );
        for bad in [
            &b""[..],
            b"hello",
            b"{\"ip\":42}",
            b"{\"addr\":\"1.2.3.4\"}",
            b"1.2.3.4.5",
            b"\xff\xfe",
        ] {
            assert_eq!(parse_ip_body(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn fetches_over_a_stream_with_and_without_length() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n127.0.0.5\ntrailing-junk"[..],
            b"HTTP/1.0 200 OK\r\n\r\n{\"ip\": \"127.0.0.5\"}",
        ] {
            let (client, mut server) = tokio::io::duplex(4096);
            let answer = answer.to_vec();
            let srv = tokio::spawn(async move {
                let mut req = [0u8; 512];
                let n = server.read(&mut req).await.unwrap();
                assert!(req[..n].starts_with(b"GET /ip HTTP/1.1\r\nHost: echo.test\r\n"));
                server.write_all(&answer).await.unwrap();
                if !answer
                    .windows(14)
                    .any(|w| w.eq_ignore_ascii_case(b"content-length"))
                {
                    drop(server);
                } else {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            });
            let ip = fetch(client, "echo.test", "/ip", Duration::from_secs(2)).await;
            assert_eq!(ip, Ok("127.0.0.5".parse().unwrap()));
            srv.abort();
        }
    }

    /// RFC 9112 §6.3: differing Content-Length values are a framing error, not a length to guess.
    #[tokio::test]
    async fn an_invalid_length_is_unavailable() {
        let (client, mut server) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            let mut req = [0u8; 512];
            let _ = server.read(&mut req).await;
            let _ = server
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nContent-Length: 10\r\n\r\n127.0.0.5\n")
                .await;
        });
        assert_eq!(
            fetch(client, "h", "/", Duration::from_secs(2)).await,
            Err(FailureClass::ExitIpUnavailable)
        );
    }

    #[tokio::test]
    async fn non_200_and_silence_are_unavailable() {
        let (client, mut server) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            let mut req = [0u8; 512];
            let _ = server.read(&mut req).await;
            let _ = server
                .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                .await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        assert_eq!(
            fetch(client, "h", "/", Duration::from_secs(2)).await,
            Err(FailureClass::ExitIpUnavailable)
        );
        let (client, _server) = tokio::io::duplex(4096);
        assert_eq!(
            fetch(client, "h", "/", Duration::from_millis(100)).await,
            Err(FailureClass::ExitIpUnavailable)
        );
    }
}
