//! Bounded HTTP/1.1 reading for the in-process servers (the harness's and the lab's), on top of the
//! workspace's one head parser, [`egress_common::http1`] (re-exported here for the test crates that
//! do not depend on egress-common).

use std::time::Duration;

pub use egress_common::http1;
use egress_common::http1::{RequestHead, read_request_head};
use tokio::io::{AsyncRead, AsyncReadExt as _};

/// Largest request head the test servers accept.
pub const MAX_HEAD: usize = 8 * 1024;
/// Deadline for a client to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request body the stand-ins read.
pub const MAX_BODY: usize = 1 << 20;

/// A request head as received: the parsed head and every byte read (`bytes[..head.len]` is the
/// head as sent, what follows is the start of a body or a tunnel's first bytes).
#[derive(Debug)]
pub struct Incoming {
    /// The parsed head.
    pub head: RequestHead,
    /// The head's bytes and whatever was read after them.
    pub bytes: Vec<u8>,
}

impl Incoming {
    /// The head exactly as the client sent it.
    pub fn raw_head(&self) -> &[u8] {
        self.bytes.get(..self.head.len).unwrap_or_default()
    }

    /// The bytes read after the head.
    pub fn rest(&self) -> &[u8] {
        self.bytes.get(self.head.len..).unwrap_or_default()
    }

    /// The CONNECT target, if the request is a CONNECT.
    pub fn connect_target(&self) -> Option<&str> {
        (self.head.method == "CONNECT").then_some(self.head.target.as_str())
    }
}

/// Reads a request head, at most [`MAX_HEAD`] bytes within [`HEAD_TIMEOUT`]. `None` on EOF, timeout,
/// a malformed or an oversized head.
pub async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Option<Incoming> {
    let mut bytes = Vec::with_capacity(1024);
    let read = read_request_head(stream, &mut bytes, MAX_HEAD);
    let head = tokio::time::timeout(HEAD_TIMEOUT, read).await.ok()?.ok()?;
    Some(Incoming { head, bytes })
}

/// A whole request: the head and its Content-Length body.
#[derive(Debug)]
pub struct FullRequest {
    /// The parsed head.
    pub head: RequestHead,
    /// The body (Content-Length bytes; none without the header).
    pub body: Vec<u8>,
}

/// Reads one request (a head of at most `max_head` bytes and its Content-Length body, at most
/// [`MAX_BODY`]) from a keep-alive connection: `buf` carries the bytes read past the previous
/// request. `None` on EOF, a malformed head or Content-Length, or an oversized head or body. No
/// deadline of its own: an idle keep-alive connection may wait for its next request as long as the
/// client keeps it. Chunked bodies are not supported (none of the clients served sends one).
pub async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    max_head: usize,
) -> Option<FullRequest> {
    let head = read_request_head(stream, buf, max_head).await.ok()?;
    let len = body_length(&head)?;
    buf.drain(..head.len);
    let mut chunk = [0u8; 4096];
    while buf.len() < len {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(chunk.get(..n)?);
    }
    let body = buf.drain(..len).collect();
    Some(FullRequest { head, body })
}

/// The blocking twin of [`read_request`]: the deadline is the socket's read timeout.
pub fn read_request_blocking<S: std::io::Read>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    max_head: usize,
) -> Option<FullRequest> {
    let head = http1::read_request_head_blocking(stream, buf, max_head).ok()?;
    let len = body_length(&head)?;
    buf.drain(..head.len);
    let mut chunk = [0u8; 4096];
    while buf.len() < len {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(chunk.get(..n)?);
    }
    let body = buf.drain(..len).collect();
    Some(FullRequest { head, body })
}

fn body_length(head: &RequestHead) -> Option<usize> {
    let len = usize::try_from(head.headers.content_length().ok()?.unwrap_or(0)).ok()?;
    (len <= MAX_BODY).then_some(len)
}

/// The reason phrase for the status codes the fault backend sends.
pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        200 => "Connection established",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        407 => "Proxy Authentication Required",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}
