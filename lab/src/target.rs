//! The load's target: a line echo that answers every line with the peer address it sees, so the
//! client learns which egress backend (tinyproxy `Bind` address) carried its tunnel. Connections
//! stay open for several lines (the load sends two per tunnel, with a pause between). A connection
//! whose first line is a `GET` gets one HTTP answer instead: after the delay its path names
//! ([`hold_path`]), a 200 whose body is the same address line, then the connection closes.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const IDLE: Duration = Duration::from_secs(30);
const MAX_LINE: usize = 256;
/// Longest answer delay a GET can ask for.
const MAX_HOLD: Duration = Duration::from_secs(5);

/// A running line-echo target on 127.0.0.1. Stops on drop.
#[derive(Debug)]
pub struct Target {
    addr: SocketAddr,
    shutdown: CancellationToken,
}

impl Target {
    /// Starts on 127.0.0.1:<ephemeral> on the current tokio runtime.
    pub async fn start() -> anyhow::Result<Target> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    () = stop.cancelled() => return,
                    r = listener.accept() => match r {
                        Ok(a) => a,
                        Err(_) => { tokio::time::sleep(Duration::from_millis(10)).await; continue; }
                    },
                };
                let stop = stop.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = serve(stream, peer) => {}
                    }
                });
            }
        });
        Ok(Target { addr, shutdown })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The path of a GET the target answers after `hold`.
pub fn hold_path(hold: Duration) -> String {
    format!("/hold/{}", hold.as_millis())
}

/// The answer delay a GET's request line asks for (`GET <anything>/hold/<ms> HTTP/1.1`), bounded.
fn requested_hold(request_line: &str) -> Duration {
    let ms = request_line
        .split_whitespace()
        .nth(1)
        .and_then(|t| t.rsplit_once("/hold/"))
        .and_then(|(_, ms)| ms.parse::<u64>().ok())
        .unwrap_or(0);
    Duration::from_millis(ms).min(MAX_HOLD)
}

async fn serve(stream: tokio::net::TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let reply = format!("{}\n", peer.ip());
    let mut first = true;
    while let Ok(Ok(Some(line))) = tokio::time::timeout(IDLE, next_line(&mut reader)).await {
        if first && line.starts_with("GET ") {
            // The rest of the head, up to the empty line.
            loop {
                match tokio::time::timeout(IDLE, next_line(&mut reader)).await {
                    Ok(Ok(Some(l))) if !l.trim_end().is_empty() => {}
                    Ok(Ok(Some(_))) => break,
                    _ => return,
                }
            }
            tokio::time::sleep(requested_hold(&line)).await;
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                reply.len()
            );
            let _ = write.write_all(answer.as_bytes()).await;
            let _ = write.shutdown().await;
            return;
        }
        first = false;
        if write.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Reads one line (bounded: a line longer than [`MAX_LINE`] ends the connection); `None` on EOF.
async fn next_line(
    reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(None);
        }
        if let Some(i) = available.iter().position(|b| *b == b'\n') {
            line.extend_from_slice(available.get(..i).unwrap_or_default());
            reader.consume(i + 1);
            return Ok((line.len() <= MAX_LINE).then(|| String::from_utf8_lossy(&line).into_owned()));
        }
        let n = available.len();
        line.extend_from_slice(available);
        reader.consume(n);
        if line.len() > MAX_LINE {
            return Ok(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hold_is_read_from_the_path() {
        let line = format!(
            "GET http://127.0.0.1:9{} HTTP/1.1",
            hold_path(Duration::from_millis(300))
        );
        assert_eq!(requested_hold(&line), Duration::from_millis(300));
        assert_eq!(requested_hold("GET / HTTP/1.1"), Duration::ZERO);
        assert_eq!(requested_hold("GET /hold/99999999 HTTP/1.1"), MAX_HOLD);
    }
}
