//! The agent-check responder: one TCP listener for every server. HAProxy connects, sends its
//! `agent-send "<backend>/<server>\n"` line, and reads one reply line. The reply comes from memory;
//! nothing is probed inside the connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::shared::Shared;
use crate::state::{Reply, ServerKey};
use egress_haproxy_api::valid_name;

/// Longest request line accepted, newline included.
pub const MAX_LINE: usize = 256;
const WRITE_DEADLINE: Duration = Duration::from_secs(1);

/// Why a request line is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineError {
    /// Nothing but a line end.
    Empty,
    /// Not `<backend>/<server>` with HAProxy name characters.
    Garbage,
}

/// Parse one request line (without or with its `\n` / `\r\n`).
pub fn parse_line(line: &[u8]) -> Result<ServerKey, LineError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        return Err(LineError::Empty);
    }
    let text = std::str::from_utf8(line).map_err(|_| LineError::Garbage)?;
    let (backend, server) = text.split_once('/').ok_or(LineError::Garbage)?;
    if !valid_name(backend) || !valid_name(server) {
        return Err(LineError::Garbage);
    }
    Ok(ServerKey::new(backend, server))
}

/// What to answer a line: the server's reply, or for an unknown name a line that changes nothing
/// (tcpcheck.c: without a health, admin or weight word, HAProxy only records the text).
pub fn answer(shared: &Shared, key: &ServerKey, now: Instant) -> (Reply, &'static str) {
    match shared.reply(key, now) {
        Some(r) => (r, "known"),
        None => (Reply::NoChange("unknown-server"), "unknown"),
    }
}

/// Serve agent checks on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    read_timeout: Duration,
    max_connections: usize,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(max_connections.max(1)));
    let tracker = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(error) => {
                    tracing::debug!(%error, "agent accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        tracker.spawn(async move {
            let _permit = permit;
            handle(stream, &shared, read_timeout).await;
        });
    }
    tracker.close();
    // Connections are short and bounded by their deadlines; wait for them, but not forever.
    let _ = tokio::time::timeout(read_timeout + WRITE_DEADLINE, tracker.wait()).await;
}

async fn handle(mut stream: TcpStream, shared: &Shared, read_timeout: Duration) {
    let metrics: &Metrics = &shared.metrics;
    let mut buf = [0u8; MAX_LINE];
    let mut len = 0usize;
    let read = async {
        loop {
            if buf[..len].contains(&b'\n') {
                return ReadEnd::Line;
            }
            if len == buf.len() {
                return ReadEnd::Overlong;
            }
            match stream.read(&mut buf[len..]).await {
                Ok(0) => return ReadEnd::Eof,
                Ok(n) => len += n,
                Err(_) => return ReadEnd::Error,
            }
        }
    };
    let end = tokio::time::timeout(read_timeout, read)
        .await
        .unwrap_or(ReadEnd::Timeout);
    let line = &buf[..len];
    let line = match end {
        ReadEnd::Line => line.split(|&b| b == b'\n').next().unwrap_or_default(),
        // A half-closed peer that forgot the newline still named a server.
        ReadEnd::Eof if !line.is_empty() => line,
        ReadEnd::Eof | ReadEnd::Error => {
            metrics.agent_requests.with_label_values(&["closed"]).inc();
            return;
        }
        // No newline within the deadline: an `agent-send` without "\n" (HAProxy does not half-close).
        // Answer anyway if it names a server, and tell the operator once how to fix the config.
        ReadEnd::Timeout if parse_line(line).is_ok() => {
            static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
            if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(
                    "agent-send line without a newline: answering after the read deadline; \
                     end agent-send with \\n (agent-send \"<backend>/<server>\\n\") for prompt answers"
                );
            }
            line
        }
        ReadEnd::Timeout => {
            metrics.agent_requests.with_label_values(&["timeout"]).inc();
            return;
        }
        ReadEnd::Overlong => {
            metrics.agent_requests.with_label_values(&["overlong"]).inc();
            return;
        }
    };
    let key = match parse_line(line) {
        Ok(k) => k,
        Err(e) => {
            // Garbage is counted and dropped: no reply, so HAProxy changes nothing.
            let label = if e == LineError::Empty { "empty" } else { "garbage" };
            metrics.agent_requests.with_label_values(&[label]).inc();
            return;
        }
    };
    let (reply, label) = answer(shared, &key, Instant::now());
    metrics.agent_requests.with_label_values(&[label]).inc();
    let out = reply.line();
    let write = async {
        stream.write_all(out.as_bytes()).await?;
        stream.shutdown().await
    };
    if let Ok(Err(error)) = tokio::time::timeout(WRITE_DEADLINE, write).await {
        tracing::debug!(%error, server = %key, "agent reply not delivered");
    }
}

enum ReadEnd {
    Line,
    Eof,
    Error,
    Timeout,
    Overlong,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_refuses_garbage() {
        assert_eq!(parse_line(b"egress/s1\n"), Ok(ServerKey::new("egress", "s1")));
        assert_eq!(
            parse_line(b"be_web.1/srv-2:a\r\n"),
            Ok(ServerKey::new("be_web.1", "srv-2:a"))
        );
        assert_eq!(parse_line(b"egress/s1"), Ok(ServerKey::new("egress", "s1")));
        assert_eq!(parse_line(b"\n"), Err(LineError::Empty));
        assert_eq!(parse_line(b"\r\n"), Err(LineError::Empty));
        for bad in [
            &b"egress\n"[..],
            b"/s1\n",
            b"egress/\n",
            b"egress/s1/x\n",
            b"egress/s 1\n",
            b"GET / HTTP/1.1\r\n",
            b"\xff\xfe/\x00\n",
            b"egress/s1\x00\n",
        ] {
            assert_eq!(parse_line(bad), Err(LineError::Garbage), "{bad:?}");
        }
    }
}
