//! HTTP/1.x message heads, parsed by [`httparse`]: the workspace's one head parser.
//!
//! Everything that reads an HTTP/1 head without an HTTP client library goes through here: the
//! probe's CONNECT answer and exit-IP GET (egress-health), the `/metrics` server
//! ([`crate::metrics_http`]), and the test harness's servers, stand-ins and fault proxies, which the
//! lab uses too. The webhook and gluetun clients use reqwest (egress-http) and never see a head.
//!
//! Two layers, as everywhere in the workspace: [`parse_request`] and [`parse_response`] are sans-IO
//! (`Ok(None)`: incomplete, read more; `Err`: it cannot become a valid head, so stop reading), and
//! the readers on top ([`read_request_head`], [`read_response_head`], their blocking twins and
//! [`read_response_head_exact`]) loop over a stream. Every parse is bounded by the caller's
//! `max_head` (bytes) and by [`MAX_HEADERS`]; the readers add no deadline of their own: the caller
//! wraps them in its own (each caller already had one, and keeps it).

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt as _};

/// Header fields kept per head (hyper's default too); a head with more is refused.
pub const MAX_HEADERS: usize = 100;

/// Bytes read per call by the chunked readers.
const CHUNK: usize = 4096;

/// Why a head is not acceptable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// No complete head within the byte limit.
    #[error("the head is longer than {max} bytes")]
    TooLong {
        /// The limit.
        max: usize,
    },
    /// More than [`MAX_HEADERS`] header fields.
    #[error("the head has more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    /// Not an HTTP/1.0 or HTTP/1.1 head (httparse's reason).
    #[error("malformed head: {0}")]
    Malformed(httparse::Error),
    /// A status code outside 100..=599 (RFC 9110 §15: "three-digit integer", first digit 1-5).
    #[error("status code {0} is outside 100..=599")]
    Status(u16),
    /// Content-Length is not one decimal number (several differing values included).
    #[error("invalid Content-Length")]
    ContentLength,
}

impl From<httparse::Error> for HeadError {
    fn from(e: httparse::Error) -> Self {
        match e {
            httparse::Error::TooManyHeaders => HeadError::TooManyHeaders,
            other => HeadError::Malformed(other),
        }
    }
}

/// The header fields of a head, in order, names as received. Values that are not UTF-8 (obs-text)
/// are kept lossily: nothing here needs their bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    fn from_parsed(fields: &[httparse::Header<'_>]) -> Self {
        Headers(
            fields
                .iter()
                .map(|h| {
                    (
                        h.name.to_owned(),
                        String::from_utf8_lossy(h.value).trim().to_owned(),
                    )
                })
                .collect(),
        )
    }

    /// The first value of `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Every (name, value), in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// How many fields.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No fields at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The body length announced by Content-Length, `None` without one.
    ///
    /// RFC 9110 §8.6: `Content-Length = 1*DIGIT`; a recipient may accept a list or repeated fields
    /// of one same value. RFC 9112 §6.3: anything else is an unrecoverable framing error.
    pub fn content_length(&self) -> Result<Option<u64>, HeadError> {
        let mut found = None;
        for (_, value) in self
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        {
            for part in value.split(',').map(str::trim) {
                if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(HeadError::ContentLength);
                }
                let n: u64 = part.parse().map_err(|_| HeadError::ContentLength)?;
                if found.is_some_and(|f| f != n) {
                    return Err(HeadError::ContentLength);
                }
                found = Some(n);
            }
        }
        Ok(found)
    }
}

/// A parsed request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// `GET`, `CONNECT`, ...
    pub method: String,
    /// The request target: a path (and query), `host:port` for CONNECT, or an absolute URL.
    pub target: String,
    /// The minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// The header fields.
    pub headers: Headers,
    /// The head's length in bytes, the final empty line included: the body starts there.
    pub len: usize,
}

/// A parsed response head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    /// The minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// The status code, 100..=599.
    pub status: u16,
    /// The reason phrase (empty when absent, or when it was not ASCII).
    pub reason: String,
    /// The header fields.
    pub headers: Headers,
    /// The head's length in bytes, the final empty line included: the body starts there.
    pub len: usize,
}

impl ResponseHead {
    /// The status line as an HTTP/1.x peer would print it, e.g. `HTTP/1.1 503 Service Unavailable`.
    pub fn status_line(&self) -> String {
        let line = format!("HTTP/1.{} {} {}", self.version, self.status, self.reason);
        line.trim_end().to_owned()
    }
}

/// Parses a request head at the start of `buf`. `Ok(None)`: incomplete (and within `max_head`).
pub fn parse_request(buf: &[u8], max_head: usize) -> Result<Option<RequestHead>, HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut fields);
    match request.parse(window(buf, max_head))? {
        httparse::Status::Partial => incomplete(buf, max_head),
        httparse::Status::Complete(len) => Ok(Some(RequestHead {
            method: request.method.unwrap_or_default().to_owned(),
            target: request.path.unwrap_or_default().to_owned(),
            version: request.version.unwrap_or_default(),
            headers: Headers::from_parsed(request.headers),
            len,
        })),
    }
}

/// Parses a response head at the start of `buf`. `Ok(None)`: incomplete (and within `max_head`).
///
/// The status line is checked as soon as it is complete (httparse parses it first on every call),
/// so a peer that is not speaking HTTP is refused without buffering `max_head` bytes of it.
pub fn parse_response(buf: &[u8], max_head: usize) -> Result<Option<ResponseHead>, HeadError> {
    // An answer to our own request begins with its status line: httparse would skip empty lines
    // before it (RFC 9112 §2.2 allows a server to), so a peer could hold the head open with them.
    let start = buf.len().min(5);
    if buf[..start] != b"HTTP/"[..start] {
        return Err(HeadError::Malformed(httparse::Error::Version));
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut fields);
    let parsed = response.parse(window(buf, max_head));
    // httparse accepts any three digits; the status line is checked even while headers are missing.
    if let Some(code) = response.code
        && !(100..=599).contains(&code)
    {
        return Err(HeadError::Status(code));
    }
    match parsed? {
        httparse::Status::Partial => incomplete(buf, max_head),
        httparse::Status::Complete(len) => Ok(Some(ResponseHead {
            version: response.version.unwrap_or_default(),
            status: response.code.unwrap_or_default(),
            reason: response.reason.unwrap_or_default().to_owned(),
            headers: Headers::from_parsed(response.headers),
            len,
        })),
    }
}

/// The part of `buf` a head may occupy: never parse more than `max_head` bytes.
fn window(buf: &[u8], max_head: usize) -> &[u8] {
    &buf[..buf.len().min(max_head)]
}

fn incomplete<T>(buf: &[u8], max_head: usize) -> Result<Option<T>, HeadError> {
    if buf.len() > max_head {
        Err(HeadError::TooLong { max: max_head })
    } else {
        Ok(None)
    }
}

/// Why no head could be read from a stream.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer closed the connection before the head was complete.
    #[error("the connection closed before a complete head")]
    Closed,
    /// What arrived is not an acceptable head.
    #[error(transparent)]
    Head(#[from] HeadError),
    /// The stream failed (a read timeout of a blocking socket included).
    #[error("reading the head: {0}")]
    Io(#[from] io::Error),
}

/// Reads from `stream` until `buf` starts with a complete request head, and parses it.
///
/// `buf` may already hold bytes (a keep-alive connection's leftovers). On success it holds the head
/// (`..head.len`) and whatever was read after it (the start of a body, or a tunnel's first bytes).
pub async fn read_request_head<S: AsyncRead + Unpin + ?Sized>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    max_head: usize,
) -> Result<RequestHead, ReadError> {
    loop {
        if let Some(head) = parse_request(buf, max_head)? {
            return Ok(head);
        }
        fill(stream, buf).await?;
    }
}

/// [`read_request_head`] for a response head.
pub async fn read_response_head<S: AsyncRead + Unpin + ?Sized>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    max_head: usize,
) -> Result<ResponseHead, ReadError> {
    loop {
        if let Some(head) = parse_response(buf, max_head)? {
            return Ok(head);
        }
        fill(stream, buf).await?;
    }
}

async fn fill<S: AsyncRead + Unpin + ?Sized>(stream: &mut S, buf: &mut Vec<u8>) -> Result<(), ReadError> {
    let mut chunk = [0u8; CHUNK];
    match stream.read(&mut chunk).await? {
        0 => Err(ReadError::Closed),
        n => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
    }
}

/// The blocking twin of [`read_request_head`] (the deadline is the socket's read timeout).
pub fn read_request_head_blocking<R: io::Read + ?Sized>(
    stream: &mut R,
    buf: &mut Vec<u8>,
    max_head: usize,
) -> Result<RequestHead, ReadError> {
    loop {
        if let Some(head) = parse_request(buf, max_head)? {
            return Ok(head);
        }
        let mut chunk = [0u8; CHUNK];
        let n = read_some(stream, &mut chunk)?;
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads a response head byte by byte, so not one byte after it is consumed: for a CONNECT answer
/// on a blocking socket, whose next bytes belong to the tunnel. Parses at each line end only.
/// Returns the head and its raw bytes.
pub fn read_response_head_exact<R: io::Read + ?Sized>(
    stream: &mut R,
    max_head: usize,
) -> Result<(ResponseHead, Vec<u8>), ReadError> {
    let mut buf = Vec::with_capacity(256);
    loop {
        // A first byte that cannot start "HTTP/" is refused at once, as httparse would.
        if buf.len() <= 1 || buf.last() == Some(&b'\n') {
            if let Some(head) = parse_response(&buf, max_head)? {
                return Ok((head, buf));
            }
        } else if buf.len() > max_head {
            return Err(HeadError::TooLong { max: max_head }.into());
        }
        let mut byte = [0u8; 1];
        read_some(stream, &mut byte)?;
        buf.push(byte[0]);
    }
}

/// One read: `Closed` at EOF, interrupted reads retried.
fn read_some<R: io::Read + ?Sized>(stream: &mut R, chunk: &mut [u8]) -> Result<usize, ReadError> {
    loop {
        match stream.read(chunk) {
            Ok(0) => return Err(ReadError::Closed),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn requests_parse_with_their_length() {
        let raw =
            b"CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1:443\r\nX-Egress-Pool:  kr \r\n\r\nearly";
        let h = parse_request(raw, 8192).unwrap().unwrap();
        assert_eq!(
            (h.method.as_str(), h.target.as_str(), h.version),
            ("CONNECT", "127.0.0.1:443", 1)
        );
        assert_eq!(h.headers.get("x-egress-pool"), Some("kr"));
        assert_eq!(h.headers.get("HOST"), Some("127.0.0.1:443"));
        assert_eq!(h.headers.len(), 2);
        assert_eq!(&raw[h.len..], b"early");
        // RFC 9112 §2.2: a bare LF may end a line.
        let h = parse_request(b"GET /metrics HTTP/1.0\n\n", 8192)
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.method.as_str(), h.target.as_str(), h.version, h.len),
            ("GET", "/metrics", 0, 23)
        );
        assert!(h.headers.is_empty());
    }

    #[test]
    fn responses_parse_with_their_length() {
        let raw = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nContent-Length: 2\r\n\r\nok";
        let h = parse_response(raw, 8192).unwrap().unwrap();
        assert_eq!(
            (h.version, h.status, h.reason.as_str()),
            (1, 429, "Too Many Requests")
        );
        assert_eq!(h.headers.get("retry-after"), Some("3"));
        assert_eq!(h.headers.content_length(), Ok(Some(2)));
        assert_eq!(&raw[h.len..], b"ok");
        assert_eq!(h.status_line(), "HTTP/1.1 429 Too Many Requests");
        let h = parse_response(b"HTTP/1.0 503\r\n\r\n", 8192).unwrap().unwrap();
        assert_eq!((h.version, h.status, h.reason.as_str(), h.len), (0, 503, "", 16));
        assert_eq!(h.status_line(), "HTTP/1.0 503");
    }

    #[test]
    fn incomplete_is_not_invalid() {
        for partial in [
            &b""[..],
            b"HT",
            b"HTTP/1.1 200 OK\r\n",
            b"HTTP/1.1 200 OK\r\nA: b\r\n\r",
        ] {
            assert_eq!(parse_response(partial, 8192), Ok(None), "{partial:?}");
        }
        for partial in [&b""[..], b"GE", b"GET / HTTP/1.1\r\nHost: x\r\n"] {
            assert_eq!(parse_request(partial, 8192), Ok(None), "{partial:?}");
        }
    }

    #[test]
    fn hostile_heads_are_refused_early() {
        for bad in [
            &b"SSH-2.0-OpenSSH\r\n"[..],
            b"GARBAGE",
            b"HTTP/1.x 200 OK\r\n\r\n",
            b"HTTP/2.0 200 OK\r\n\r\n",
            b"HTTP/1.1 2a0 OK\r\n",
            b"HTTP/1.1 2000 OK\r\n",
            b"HTTP/1.1  200 OK\r\n",
            b"\x16\x03\x01\x02\x00\n",
            b"\r\nHTTP/1.1 200 OK\r\n\r\n",
            b"\n\r\n",
        ] {
            assert!(
                matches!(parse_response(bad, 8192), Err(HeadError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_response(b"HTTP/1.1 099 x\r\n", 8192),
            Err(HeadError::Status(99))
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 600 x\r\n\r\n", 8192),
            Err(HeadError::Status(600))
        );
        assert!(matches!(
            parse_request(b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", 8192),
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            parse_request(b"\x16\x03\x01", 8192),
            Err(HeadError::Malformed(_))
        ));
    }

    #[test]
    fn limits_hold() {
        let mut long = b"HTTP/1.1 200 OK\r\n".to_vec();
        long.extend(std::iter::repeat_n(b'a', 9000));
        assert_eq!(parse_response(&long, 8192), Err(HeadError::TooLong { max: 8192 }));
        // Exactly at the limit it is still "incomplete"; one byte more is too long.
        assert_eq!(parse_response(&long[..8192], 8192), Ok(None));
        assert_eq!(
            parse_response(&long[..8193], 8192),
            Err(HeadError::TooLong { max: 8192 })
        );
        // A complete head longer than the limit is refused too.
        let mut big = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'v', 200));
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse_response(&big, 100), Err(HeadError::TooLong { max: 100 }));
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("h{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse_request(&many, 1 << 20), Err(HeadError::TooManyHeaders));
    }

    #[test]
    fn content_length_is_one_number() {
        let cl = |fields: &[&str]| {
            let mut raw = b"HTTP/1.1 200 OK\r\n".to_vec();
            for f in fields {
                raw.extend_from_slice(format!("Content-Length: {f}\r\n").as_bytes());
            }
            raw.extend_from_slice(b"\r\n");
            parse_response(&raw, 8192)
                .unwrap()
                .unwrap()
                .headers
                .content_length()
        };
        assert_eq!(cl(&[]), Ok(None));
        assert_eq!(cl(&["10"]), Ok(Some(10)));
        assert_eq!(cl(&["10", "10"]), Ok(Some(10)));
        assert_eq!(cl(&["10, 10"]), Ok(Some(10)));
        for bad in [
            &["10", "11"][..],
            &["-1"],
            &["+1"],
            &["1x"],
            &[""],
            &["99999999999999999999999"],
        ] {
            assert_eq!(cl(bad), Err(HeadError::ContentLength), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn readers_keep_what_follows_the_head() {
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            // Byte by byte: the reader must assemble split reads.
            for b in b"PUT /v1/vpn/settings HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody".iter() {
                client.write_all(&[*b]).await.unwrap();
            }
        });
        let mut buf = Vec::new();
        let head = read_request_head(&mut server, &mut buf, 8192).await.unwrap();
        assert_eq!(
            (head.method.as_str(), head.target.as_str()),
            ("PUT", "/v1/vpn/settings")
        );
        assert_eq!(head.headers.content_length(), Ok(Some(4)));
        assert!(buf.len() >= head.len && b"body".starts_with(&buf[head.len..]));

        let (mut client, mut server) = tokio::io::duplex(64);
        drop(tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            let _ = client.write_all(b"HTTP/1.1 200 OK\r\n").await;
        }));
        let mut buf = Vec::new();
        assert!(matches!(
            read_response_head(&mut server, &mut buf, 8192).await,
            Err(ReadError::Closed)
        ));
    }

    #[test]
    fn blocking_readers() {
        let raw = b"GET /x HTTP/1.1\r\nHost: h\r\n\r\nrest".to_vec();
        let mut buf = Vec::new();
        let head = read_request_head_blocking(&mut &raw[..], &mut buf, 8192).unwrap();
        assert_eq!((head.target.as_str(), &buf[head.len..]), ("/x", &b"rest"[..]));
        // The exact reader leaves the tunnel's bytes in the stream.
        let raw = b"HTTP/1.1 200 Connection established\r\n\r\nTUNNEL".to_vec();
        let mut stream = &raw[..];
        let (head, bytes) = read_response_head_exact(&mut stream, 8192).unwrap();
        assert_eq!((head.status, bytes.len()), (200, head.len));
        assert_eq!(stream, b"TUNNEL");
        assert!(matches!(
            read_response_head_exact(&mut &b"SSH-2.0-x\r\n\r\n"[..], 8192),
            Err(ReadError::Head(HeadError::Malformed(_)))
        ));
        let endless = [b'a'; 300];
        assert!(matches!(
            read_request_head_blocking(&mut &endless[..], &mut Vec::new(), 100),
            Err(ReadError::Head(HeadError::TooLong { max: 100 }))
        ));
    }

    proptest! {
        /// A valid head fed in any split is "incomplete" until its end, then the same answer.
        #[test]
        fn split_reads_agree(status in 100u16..600, reason in "[A-Za-z ]{0,20}", hdrs in 0usize..4, cut in 0usize..200) {
            let mut head = format!("HTTP/1.1 {status} {reason}\r\n");
            for i in 0..hdrs {
                head.push_str(&format!("X-H{i}: v{i}\r\n"));
            }
            head.push_str("\r\n");
            let bytes = head.as_bytes();
            let cut = cut.min(bytes.len());
            if cut < bytes.len() {
                prop_assert_eq!(parse_response(&bytes[..cut], 8192), Ok(None));
            }
            let full = parse_response(bytes, 8192).unwrap().unwrap();
            prop_assert_eq!((full.status, full.len, full.headers.len()), (status, bytes.len(), hdrs));
        }

        /// Arbitrary bytes never panic, and an accepted head fits the input and the limit.
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(Some(h)) = parse_response(&data, 128) {
                prop_assert!(h.len <= data.len() && h.len <= 128);
            }
            if let Ok(Some(h)) = parse_request(&data, 128) {
                prop_assert!(h.len <= data.len() && h.len <= 128);
            }
        }
    }
}
