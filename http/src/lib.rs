//! A minimal HTTP/1.1 client for one thing: POST a JSON body to a webhook (http or https) and read
//! the status and `Retry-After`. Every step has a deadline and the response head is capped; the URL
//! (whose path is a secret for Slack webhooks) never appears in an error.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response head read (status line and headers).
const MAX_HEAD: usize = 16 * 1024;

/// A parsed webhook URL. `Debug` hides the path.
#[derive(Clone)]
pub struct WebhookUrl {
    tls: bool,
    host: String,
    port: u16,
    path: String,
}

impl std::fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebhookUrl({})", self.redacted())
    }
}

impl WebhookUrl {
    /// Parse `https://host[:port]/path` or `http://...`. The error never echoes the input.
    pub fn parse(url: &str) -> Result<WebhookUrl, String> {
        let url = url.trim();
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err("the webhook URL must start with https:// (or http://)".into());
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err("the webhook URL must not carry credentials before the host".into());
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => match p.parse::<u16>() {
                Ok(p) => (h, p),
                Err(_) => return Err("the webhook URL has a bad port".into()),
            },
            _ => (authority, if tls { 443 } else { 80 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("the webhook URL is malformed".into());
        }
        Ok(WebhookUrl {
            tls,
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }

    /// `https://host:port/…`: safe to print.
    pub fn redacted(&self) -> String {
        format!(
            "{}://{}:{}/…",
            if self.tls { "https" } else { "http" },
            self.host,
            self.port
        )
    }
}

/// What the server answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// `Retry-After` in seconds, when present as a number.
    pub retry_after: Option<u64>,
    /// The first bytes of the body, for error messages (Slack answers e.g. `invalid_payload`).
    pub body_start: String,
}

/// Post `body` as JSON, with `timeout` on each of connect, TLS, write and read.
pub async fn post_json(
    url: &WebhookUrl,
    body: &[u8],
    timeout: Duration,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Response, String> {
    send_json("POST", url, &[], body, timeout, tls).await
}

/// Send `body` as JSON with `method` and extra `headers` (e.g. an API key), with `timeout` on each
/// of connect, TLS, write and read.
pub async fn send_json(
    method: &str,
    url: &WebhookUrl,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Response, String> {
    if headers
        .iter()
        .any(|(n, v)| n.contains(['\r', '\n', ':']) || v.contains(['\r', '\n']))
    {
        return Err("a header name or value with a line break".into());
    }
    let step = |what: &'static str| move |_| format!("{what} timed out after {timeout:?}");
    let tcp = tokio::time::timeout(timeout, TcpStream::connect((url.host.as_str(), url.port)))
        .await
        .map_err(step("connect"))?
        .map_err(|e| format!("connect to {}:{}: {e}", url.host, url.port))?;
    let _ = tcp.set_nodelay(true);
    if url.tls {
        let name = rustls::pki_types::ServerName::try_from(url.host.clone())
            .map_err(|_| format!("{:?} is not a valid TLS server name", url.host))?;
        let connector = tokio_rustls::TlsConnector::from(tls.clone());
        let stream = tokio::time::timeout(timeout, connector.connect(name, tcp))
            .await
            .map_err(step("TLS handshake"))?
            .map_err(|e| format!("TLS handshake with {}: {e}", url.host))?;
        exchange(stream, method, url, headers, body, timeout).await
    } else {
        exchange(tcp, method, url, headers, body, timeout).await
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    method: &str,
    url: &WebhookUrl,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<Response, String> {
    let host = if url.host.contains(':') {
        format!("[{}]", url.host)
    } else {
        url.host.clone()
    };
    let extra: String = headers.iter().map(|(n, v)| format!("{n}: {v}\r\n")).collect();
    let mut req = format!(
        "{method} {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: egress-checker/{}\r\n{extra}Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        url.path,
        env!("CARGO_PKG_VERSION"),
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    tokio::time::timeout(timeout, async {
        s.write_all(&req).await?;
        s.flush().await
    })
    .await
    .map_err(|_| format!("sending the request timed out after {timeout:?}"))?
    .map_err(|e| format!("sending the request: {e}"))?;

    let mut buf = Vec::with_capacity(1024);
    let read = async {
        let mut chunk = [0u8; 2048];
        loop {
            if let Some(end) = find_head_end(&buf) {
                // Keep up to 512 body bytes for error messages, but never wait for more than the
                // server announced: it may keep the connection open despite `Connection: close`.
                let want = content_length(&buf[..end]).map_or(0, |n| n.min(512));
                if buf.len() >= end + want {
                    break;
                }
            }
            if buf.len() >= MAX_HEAD + 512 {
                break;
            }
            match s.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if find_head_end(&buf).is_some() => {
                    tracing::debug!(%e, "webhook connection closed after the response head");
                    break;
                }
                Err(e) => return Err(format!("reading the response: {e}")),
            }
        }
        Ok(())
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| format!("reading the response timed out after {timeout:?}"))??;
    parse_response(&buf)
}

fn content_length(head: &[u8]) -> Option<usize> {
    let head = std::str::from_utf8(head).ok()?;
    head.split("\r\n").find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Parse a response head (and keep the start of the body).
pub fn parse_response(buf: &[u8]) -> Result<Response, String> {
    let end = find_head_end(buf).ok_or_else(|| {
        if buf.len() >= MAX_HEAD {
            "the response head is larger than 16 KiB".to_owned()
        } else {
            "the connection closed before a complete response head".to_owned()
        }
    })?;
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "the response head is not UTF-8".to_owned())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(format!(
            "not an HTTP/1.x status line: {:?}",
            truncate(status_line, 80)
        ));
    }
    let status = code
        .parse::<u16>()
        .map_err(|_| format!("bad status code {:?}", truncate(code, 8)))?;
    let mut retry_after = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("retry-after")
        {
            retry_after = value.trim().parse::<u64>().ok();
        }
    }
    let body = &buf[end..buf.len().min(end + 512)];
    Ok(Response {
        status,
        retry_after,
        body_start: truncate(&String::from_utf8_lossy(body), 200),
    })
}

fn truncate(s: &str, max: usize) -> String {
    let t: String = s.chars().take(max).collect();
    t.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned()
}

/// A client configuration trusting the webpki roots.
pub fn tls_config() -> Arc<rustls::ClientConfig> {
    tls_config_with(rustls::RootCertStore::from_iter(
        webpki_roots::TLS_SERVER_ROOTS.iter().cloned(),
    ))
}

/// A client configuration (ring provider) trusting `roots`.
pub fn tls_config_with(roots: rustls::RootCertStore) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_never_print_their_path() {
        let u = WebhookUrl::parse("https://hooks.slack.com/services/T0/B0/secret").unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port), (true, "hooks.slack.com", 443));
        assert_eq!(u.path, "/services/T0/B0/secret");
        assert!(!format!("{u:?}").contains("secret"));
        assert!(!u.redacted().contains("secret"));
        let u = WebhookUrl::parse("http://127.0.0.1:8080/hook").unwrap();
        assert_eq!((u.tls, u.port), (false, 8080));
        let u = WebhookUrl::parse("http://[::1]:9/x").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9));
        for bad in [
            "ftp://x/secret",
            "https://u:p@h/secret",
            "https://h:99999/secret",
            "https:///secret",
        ] {
            let e = WebhookUrl::parse(bad).unwrap_err();
            assert!(!e.contains("secret"), "{e}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_or_fail_without_panicking(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = parse_response(&bytes);
            let mut framed = b"HTTP/1.1 503 x\r\n".to_vec();
            framed.extend_from_slice(&bytes);
            framed.extend_from_slice(b"\r\n\r\n");
            let _ = parse_response(&framed);
        }
    }

    #[test]
    fn responses_parse_or_explain() {
        let r =
            parse_response(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\n\r\nrate_limited").unwrap();
        assert_eq!(
            (r.status, r.retry_after, r.body_start.as_str()),
            (429, Some(3), "rate_limited")
        );
        let r = parse_response(b"HTTP/1.0 200 OK\r\n\r\n").unwrap();
        assert_eq!((r.status, r.retry_after), (200, None));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_response(b"SSH-2.0-x\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 2x0 OK\r\n\r\n").is_err());
        assert!(parse_response(&[0xff; 40]).is_err());
    }
}
