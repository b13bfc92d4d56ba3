//! Tiny bounded HTTP/1.1 helpers shared by the in-process servers (the harness's and the lab's).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _};

/// Largest request head the test servers accept.
pub const MAX_HEAD: usize = 8 * 1024;
/// Deadline for a client to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads up to the end of an HTTP head (`\r\n\r\n`), at most [`MAX_HEAD`] bytes. Returns the head and
/// any bytes read after it. `None` on EOF, timeout or an oversized head.
pub async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Option<(Vec<u8>, Vec<u8>)> {
    let read = async {
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        loop {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(chunk.get(..n)?);
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let rest = buf.split_off(end + 4);
                return Some((buf, rest));
            }
            if buf.len() > MAX_HEAD {
                return None;
            }
        }
    };
    tokio::time::timeout(HEAD_TIMEOUT, read).await.ok().flatten()
}

/// The request line's method and target, e.g. ("CONNECT", "127.0.0.1:443").
pub fn request_line(head: &[u8]) -> Option<(&str, &str)> {
    let line_end = find(head, b"\r\n")?;
    let line = std::str::from_utf8(head.get(..line_end)?).ok()?;
    let mut parts = line.split(' ');
    Some((parts.next()?, parts.next()?))
}

pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
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
