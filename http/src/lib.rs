//! The workspace's HTTP client, on reqwest (rustls on ring, HTTP/1.1): send a JSON body to a webhook
//! (Slack) or a control API (gluetun's) and read the status, `Retry-After` and the start of the body.
//!
//! What it guarantees on top of reqwest:
//! - **one deadline for the whole exchange** (connect, proxy tunnel, TLS, request, answer head and
//!   the body start), given per request;
//! - **a capped answer**: at most [`BODY_START`] body bytes are read, never more than the answer
//!   announced (a server that keeps the connection open after its body costs nothing), and an
//!   answer without a length gets at most [`BODY_GRACE`] for its body; the head is bounded by hyper
//!   (at most 100 header fields, about 400 KiB);
//! - **the URL stays secret** (a Slack webhook's path is its credential): [`WebhookUrl`]'s `Debug`
//!   and [`WebhookUrl::redacted`] show only scheme, host and port, parse errors never echo the
//!   input, and every reqwest error is stripped of its URL ([`reqwest::Error::without_url`]) before
//!   its text is kept. reqwest's own `log` records (bridged into tracing) name only scheme, host
//!   and port: its connector is handed the pool key, never the path;
//! - **no redirects**: a 3xx is an answer like any other (following it could hand the body to
//!   another host);
//! - **one connection per request**: nothing is pooled (a webhook posts a few times a day).
//!
//! Proxies ([`Proxy`]): [`Proxy::FromEnv`] (the default) honours `HTTPS_PROXY` (https URLs),
//! `HTTP_PROXY` (http URLs), `ALL_PROXY` (both, when the specific one is unset), each also in lower
//! case, and `NO_PROXY`, read when the client is built, as curl reads them: `NO_PROXY` is a comma
//! list of host names (each also matching its subdomains), IP addresses, CIDR ranges
//! (`127.0.0.0/8`) or `*`. Loopback is **not** exempt by itself: with `HTTPS_PROXY` set, a
//! webhook on 127.0.0.1 goes through the proxy unless `NO_PROXY` lists it. An https URL goes through
//! an HTTP CONNECT tunnel (TLS end to end); an http URL is forwarded by the proxy (absolute-form
//! request). When `REQUEST_METHOD` is set (a CGI environment) the variables are ignored.

use std::sync::Arc;
use std::time::Duration;

/// The request method (reqwest's, i.e. the `http` crate's).
pub use reqwest::Method;

/// Body bytes kept for error messages (Slack answers e.g. `invalid_payload`).
pub const BODY_START: usize = 512;
/// Longest wait for the body of an answer that announces no length (the status is the answer; the
/// body is only for error messages).
pub const BODY_GRACE: Duration = Duration::from_secs(1);

/// The `User-Agent` sent.
const USER_AGENT: &str = concat!("egress-checker/", env!("CARGO_PKG_VERSION"));

/// A parsed http(s) URL whose path and query are secret. `Debug` hides them.
#[derive(Clone)]
pub struct WebhookUrl {
    url: reqwest::Url,
}

impl std::fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebhookUrl({})", self.redacted())
    }
}

/// Why a webhook URL was refused. The text never echoes the URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Neither `https://` nor `http://`.
    #[error("the webhook URL must start with https:// (or http://)")]
    Scheme,
    /// `user:password@` before the host.
    #[error("the webhook URL must not carry credentials before the host")]
    Credentials,
    /// A port that is not a number below 65536.
    #[error("the webhook URL has a bad port")]
    Port,
    /// No host, whitespace or control characters, or unparsable otherwise.
    #[error("the webhook URL is malformed")]
    Malformed,
}

impl WebhookUrl {
    /// Parse `https://host[:port]/path` or `http://...` (surrounding whitespace is ignored).
    pub fn parse(url: &str) -> Result<WebhookUrl, UrlError> {
        let url = url.trim();
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or(UrlError::Scheme)?;
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.contains('@') {
            return Err(UrlError::Credentials);
        }
        // The url crate would read `https:///x` as host `x`, and percent-encode a space: refuse both.
        if authority.is_empty() || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(UrlError::Malformed);
        }
        let parsed = reqwest::Url::parse(url).map_err(|e| match e {
            url::ParseError::InvalidPort => UrlError::Port,
            _ => UrlError::Malformed,
        })?;
        if parsed.host().is_none() {
            return Err(UrlError::Malformed);
        }
        Ok(WebhookUrl { url: parsed })
    }

    /// Whether it is https.
    pub fn is_tls(&self) -> bool {
        self.url.scheme() == "https"
    }

    /// The host: a name, or an IP address (IPv6 without brackets).
    pub fn host(&self) -> String {
        match self.url.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(host) => host.to_string(),
            None => String::new(),
        }
    }

    /// The port, explicit or the scheme's.
    pub fn port(&self) -> u16 {
        self.url.port_or_known_default().unwrap_or(0)
    }

    /// The path and query: the secret part.
    pub fn path(&self) -> &str {
        &self.url[url::Position::BeforePath..url::Position::AfterQuery]
    }

    /// `https://host:port/…`: safe to print.
    pub fn redacted(&self) -> String {
        let host = self.url.host_str().unwrap_or_default();
        format!("{}://{host}:{}/…", self.url.scheme(), self.port())
    }
}

/// Which proxy the client uses.
#[derive(Clone, Debug, Default)]
pub enum Proxy {
    /// `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` from the environment (see the crate
    /// docs), read when the client is built.
    #[default]
    FromEnv,
    /// No proxy, whatever the environment says (e.g. a control server on the pod's own network).
    Direct,
    /// This proxy (`http://host:port`) for every request.
    Url(String),
}

/// What kind of failure, as a closed set (usable as a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The client could not be built (its TLS or proxy settings).
    Client,
    /// A header name or value that cannot be sent.
    Header,
    /// No connection (refused, unreachable, name not resolved, TLS handshake failed, the proxy
    /// refused the tunnel).
    Connect,
    /// The deadline passed.
    Timeout,
    /// The exchange failed after connecting (reset, a malformed answer).
    Request,
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErrorKind::Client => "building the HTTP client",
            ErrorKind::Header => "a header that cannot be sent",
            ErrorKind::Connect => "connecting",
            ErrorKind::Timeout => "timed out",
            ErrorKind::Request => "the exchange failed",
        })
    }
}

/// Why no answer was had. Neither the text nor the `Debug` output holds the URL.
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {detail}")]
pub struct Error {
    kind: ErrorKind,
    detail: String,
}

impl Error {
    /// What kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Error {
            kind,
            detail: detail.into(),
        }
    }

    /// From a reqwest error: its URL dropped, its cause chain kept as text.
    fn from_reqwest(e: reqwest::Error, timeout: Duration) -> Self {
        let e = e.without_url();
        let kind = if e.is_timeout() {
            ErrorKind::Timeout
        } else if e.is_connect() {
            ErrorKind::Connect
        } else if e.is_builder() {
            ErrorKind::Client
        } else {
            ErrorKind::Request
        };
        let mut detail = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            let text = c.to_string();
            if !detail.ends_with(&text) {
                detail.push_str(": ");
                detail.push_str(&text);
            }
            cause = c.source();
        }
        if kind == ErrorKind::Timeout {
            detail = format!("after {timeout:?} ({detail})");
        }
        Error { kind, detail }
    }
}

/// What the server answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// `Retry-After` in seconds, when present as a number.
    pub retry_after: Option<u64>,
    /// The first bytes of the body (at most [`BODY_START`]), control characters blanked, cut to 200
    /// characters: for error messages.
    pub body_start: String,
}

/// A client configuration (ring provider) trusting the webpki roots.
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

/// An HTTP client: one per use site (it holds its TLS configuration and proxy choice).
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
}

impl Client {
    /// Trusting the webpki roots, with `proxy`.
    pub fn new(proxy: Proxy) -> Result<Client, Error> {
        Self::with_tls(proxy, &tls_config())
    }

    /// Trusting what `tls` trusts (tests: their own CA), with `proxy`.
    pub fn with_tls(proxy: Proxy, tls: &Arc<rustls::ClientConfig>) -> Result<Client, Error> {
        let mut builder = reqwest::Client::builder()
            .use_preconfigured_tls(rustls::ClientConfig::clone(tls))
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(0)
            .user_agent(USER_AGENT)
            .http1_only()
            .tcp_nodelay(true);
        builder = match proxy {
            Proxy::FromEnv => builder,
            Proxy::Direct => builder.no_proxy(),
            Proxy::Url(url) => builder.proxy(
                reqwest::Proxy::all(url.as_str())
                    .map_err(|_| Error::new(ErrorKind::Client, "the proxy URL is malformed"))?,
            ),
        };
        let http = builder
            .build()
            .map_err(|e| Error::from_reqwest(e, Duration::ZERO))?;
        Ok(Client { http })
    }

    /// POST `body` as JSON to `url`, all within `timeout`.
    pub async fn post_json(
        &self,
        url: &WebhookUrl,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Response, Error> {
        self.send_json(Method::POST, url, &[], body, timeout).await
    }

    /// Send `body` as JSON with `method` and extra `headers` (e.g. an API key), all within
    /// `timeout`.
    pub async fn send_json(
        &self,
        method: reqwest::Method,
        url: &WebhookUrl,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> Result<Response, Error> {
        let mut request = self
            .http
            .request(method, url.url.clone())
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json; charset=utf-8")
            .body(body.to_vec());
        for (name, value) in headers {
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| Error::new(ErrorKind::Header, "a header name that is not a token"))?;
            let mut value = reqwest::header::HeaderValue::from_str(value)
                .map_err(|_| Error::new(ErrorKind::Header, "a header value with a line break"))?;
            value.set_sensitive(true);
            request = request.header(name, value);
        }
        let started = tokio::time::Instant::now();
        let mut answer = request
            .send()
            .await
            .map_err(|e| Error::from_reqwest(e, timeout))?;
        let status = answer.status().as_u16();
        let retry_after = answer
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        // The body start, best effort within what is left of the deadline: the status is the answer.
        let mut body = Vec::new();
        let mut rest = timeout.saturating_sub(started.elapsed());
        if answer.content_length().is_none() {
            rest = rest.min(BODY_GRACE);
        }
        let read = async {
            while body.len() < BODY_START {
                match answer.chunk().await {
                    Ok(Some(chunk)) => {
                        body.extend_from_slice(&chunk[..chunk.len().min(BODY_START - body.len())])
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e.without_url(), "the answer's body ended early");
                        break;
                    }
                }
            }
        };
        if tokio::time::timeout(rest, read).await.is_err() {
            tracing::debug!("the answer's body did not arrive in time");
        }
        Ok(Response {
            status,
            retry_after,
            body_start: printable(&String::from_utf8_lossy(&body), 200),
        })
    }
}

/// At most `max` characters, control characters blanked, trimmed.
fn printable(s: &str, max: usize) -> String {
    let t: String = s.chars().take(max).collect();
    t.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use egress_common::http1;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use super::*;

    const SECRET: &str = "s3cr3t";

    #[test]
    fn urls_parse_and_never_print_their_path() {
        let u = WebhookUrl::parse("https://hooks.slack.com/services/T0/B0/secret").unwrap();
        assert_eq!(
            (u.is_tls(), u.host().as_str(), u.port()),
            (true, "hooks.slack.com", 443)
        );
        assert_eq!(u.path(), "/services/T0/B0/secret");
        assert!(!format!("{u:?}").contains("secret"));
        assert!(!u.redacted().contains("secret"));
        let u = WebhookUrl::parse("http://127.0.0.1:8080/hook").unwrap();
        assert_eq!((u.is_tls(), u.port()), (false, 8080));
        let u = WebhookUrl::parse("http://[::1]:9/x").unwrap();
        assert_eq!((u.host().as_str(), u.port()), ("::1", 9));
        let u = WebhookUrl::parse(" https://h/a?token=secret ").unwrap();
        assert_eq!(u.path(), "/a?token=secret");
        assert!(!format!("{u:?}").contains("secret"));
        for (bad, why) in [
            ("ftp://x/secret", UrlError::Scheme),
            ("https://u:p@h/secret", UrlError::Credentials),
            ("https://h:99999/secret", UrlError::Port),
            ("https:///secret", UrlError::Malformed),
            ("https://h/sec ret", UrlError::Malformed),
            ("https://h/sec\u{7}ret", UrlError::Malformed),
        ] {
            let e = WebhookUrl::parse(bad).unwrap_err();
            assert_eq!(e, why, "{bad}");
            assert!(!e.to_string().contains("secret"), "{e}");
        }
    }

    /// A one-shot HTTP server: answers `answer` to the first request (head and Content-Length body)
    /// and keeps the connection open for `hold`; yields what it received.
    async fn server(answer: &'static [u8], hold: Duration) -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let head = http1::read_request_head(&mut s, &mut got, 16 * 1024)
                .await
                .unwrap();
            let len = head.len + head.headers.content_length().unwrap().unwrap_or(0) as usize;
            let mut chunk = [0u8; 4096];
            while got.len() < len {
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0, "the client closed early");
                got.extend_from_slice(&chunk[..n]);
            }
            s.write_all(answer).await.unwrap();
            tokio::time::sleep(hold).await;
            got
        });
        (addr, task)
    }

    fn direct() -> Client {
        Client::new(Proxy::Direct).unwrap()
    }

    #[tokio::test]
    async fn answers_are_read_with_retry_after_and_a_capped_body() {
        let (addr, task) = server(
            b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nContent-Length: 12\r\n\r\nrate_limited",
            Duration::from_secs(30),
        )
        .await;
        let url = WebhookUrl::parse(&format!("http://{addr}/hook/{SECRET}")).unwrap();
        let started = tokio::time::Instant::now();
        let r = direct()
            .send_json(
                Method::PUT,
                &url,
                &[("X-API-Key", "k")],
                br#"{"a":1}"#,
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert_eq!(
            (r.status, r.retry_after, r.body_start.as_str()),
            (429, Some(3), "rate_limited")
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "waited for the server to close"
        );
        task.abort();

        // A long body: only the start is kept.
        let mut long = b"HTTP/1.1 500 Internal Server Error\r\n\r\n".to_vec();
        long.extend(std::iter::repeat_n(b'x', 5000));
        let long: &'static [u8] = Box::leak(long.into_boxed_slice());
        let (addr, task) = server(long, Duration::from_secs(30)).await;
        let url = WebhookUrl::parse(&format!("http://{addr}/hook")).unwrap();
        let r = direct()
            .post_json(&url, b"{}", Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(r.status, 500);
        assert_eq!(r.body_start, "x".repeat(200));
        task.abort();

        // No length and no close: the body gets BODY_GRACE, then the answer is what arrived.
        let (addr, task) = server(
            b"HTTP/1.1 503 Service Unavailable\r\n\r\nbusy",
            Duration::from_secs(30),
        )
        .await;
        let url = WebhookUrl::parse(&format!("http://{addr}/hook")).unwrap();
        let started = tokio::time::Instant::now();
        let r = direct()
            .post_json(&url, b"{}", Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!((r.status, r.body_start.as_str()), (503, "busy"));
        let waited = started.elapsed();
        assert!(waited >= BODY_GRACE && waited < BODY_GRACE * 3, "{waited:?}");
        task.abort();
    }

    /// What an HTTP/1 peer may answer, then close: a status, or an error (never a panic).
    #[tokio::test]
    async fn answers_parse_or_explain() {
        let (addr, task) = server(b"HTTP/1.0 200 OK\r\n\r\n", Duration::ZERO).await;
        let url = WebhookUrl::parse(&format!("http://{addr}/hook")).unwrap();
        let r = direct()
            .post_json(&url, b"{}", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!((r.status, r.retry_after, r.body_start.as_str()), (200, None, ""));
        task.abort();
        let garbage: &'static [u8] = &[0xff; 40];
        for bad in [
            &b"HTTP/1.1 200 OK\r\n"[..],
            b"SSH-2.0-x\r\n\r\n",
            b"HTTP/1.1 2x0 OK\r\n\r\n",
            garbage,
        ] {
            let (addr, task) = server(bad, Duration::ZERO).await;
            let url = WebhookUrl::parse(&format!("http://{addr}/hook/{SECRET}")).unwrap();
            let e = direct()
                .post_json(&url, b"{}", Duration::from_secs(5))
                .await
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Request, "{bad:?}: {e}");
            assert!(!e.to_string().contains(SECRET), "{e}");
            task.abort();
        }
    }

    #[tokio::test]
    async fn the_request_carries_method_path_type_and_headers() {
        let (addr, task) = server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", Duration::ZERO).await;
        let url = WebhookUrl::parse(&format!("http://{addr}/v1/vpn/settings")).unwrap();
        let r = direct()
            .send_json(
                Method::PUT,
                &url,
                &[("X-API-Key", "the-key")],
                br#"{"a":1}"#,
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert_eq!((r.status, r.body_start.as_str()), (200, ""));
        let got = String::from_utf8(task.await.unwrap()).unwrap();
        let lower = got.to_ascii_lowercase();
        assert!(got.starts_with("PUT /v1/vpn/settings HTTP/1.1\r\n"), "{got}");
        assert!(lower.contains("\r\nx-api-key: the-key\r\n"), "{got}");
        assert!(
            lower.contains("\r\ncontent-type: application/json; charset=utf-8\r\n"),
            "{got}"
        );
        assert!(lower.contains("\r\nuser-agent: egress-checker/"), "{got}");
        assert!(got.ends_with("\r\n\r\n{\"a\":1}"), "{got}");
    }

    #[tokio::test]
    async fn bad_headers_are_refused_before_sending() {
        let url = WebhookUrl::parse("http://127.0.0.1:9/x").unwrap();
        for headers in [[("X-A", "a\r\nInjected: 1")], [("X A", "b")], [("X:A", "c")]] {
            let e = direct()
                .send_json(Method::PUT, &url, &headers, b"{}", Duration::from_secs(1))
                .await
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Header, "{e}");
        }
    }

    /// Refused, timed out, an untrusted certificate, a proxy that refuses the tunnel: the error says
    /// what happened and never holds the URL's path.
    #[tokio::test]
    async fn errors_are_typed_and_never_hold_the_url() {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let url = WebhookUrl::parse(&format!("http://{closed}/services/{SECRET}")).unwrap();
        let e = direct()
            .post_json(&url, b"{}", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Connect, "{e}");
        assert!(e.to_string().contains("refused"), "{e}");

        // Accepts and never answers.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = WebhookUrl::parse(&format!(
            "http://{}/services/{SECRET}",
            silent.local_addr().unwrap()
        ))
        .unwrap();
        let started = tokio::time::Instant::now();
        let e2 = direct()
            .post_json(&url, b"{}", Duration::from_millis(300))
            .await
            .unwrap_err();
        assert_eq!(e2.kind(), ErrorKind::Timeout, "{e2}");
        assert!(started.elapsed() < Duration::from_secs(3));

        // TLS with a certificate no root vouches for.
        let (addr, _server) = tls_server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
        let url = WebhookUrl::parse(&format!("https://localhost:{}/services/{SECRET}", addr.port())).unwrap();
        let e3 = direct()
            .post_json(&url, b"{}", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(e3.kind(), ErrorKind::Connect, "{e3}");
        assert!(
            e3.to_string().to_ascii_lowercase().contains("certificate"),
            "{e3}"
        );

        // A proxy that answers the CONNECT with 403.
        let (proxy, _p) = server(
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n",
            Duration::ZERO,
        )
        .await;
        let client = Client::new(Proxy::Url(format!("http://{proxy}"))).unwrap();
        let url = WebhookUrl::parse(&format!("https://hooks.example:443/services/{SECRET}")).unwrap();
        let e4 = client
            .post_json(&url, b"{}", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(e4.kind(), ErrorKind::Connect, "{e4}");

        for e in [&e, &e2, &e3, &e4] {
            assert!(!e.to_string().contains(SECRET), "{e}");
            assert!(!format!("{e:?}").contains(SECRET), "{e:?}");
        }
    }

    /// A TLS server for "localhost" with its own self-signed certificate, answering `answer`.
    async fn tls_server(answer: &'static [u8]) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        let cfg =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![ck.cert.der().clone()], key)
                .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut buf = [0u8; 4096];
                    let _ = tls.read(&mut buf).await;
                    let _ = tls.write_all(answer).await;
                    let _ = tls.shutdown().await;
                }
            }
        });
        (addr, task)
    }
}
