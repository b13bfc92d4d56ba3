//! A minimal HTTP/1.1 endpoint serving `GET /metrics` (Prometheus text format) and `GET /healthz`.
//!
//! Deliberately tiny: one request per connection, a bounded request head, a read deadline and a cap
//! on concurrent scrapes. It is scraped by Prometheus and probed by Kubernetes, nothing else.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{Encoder, Registry, TextEncoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

const MAX_HEAD: usize = 8 * 1024;
/// Whole-exchange deadline: reading the request and writing the answer. A scraper that stops
/// reading cannot hold a slot for longer.
const DEADLINE: Duration = Duration::from_secs(10);
const MAX_CONCURRENT: usize = 16;

/// Serve `registry` on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, registry: Registry, shutdown: CancellationToken) {
    let registry = Arc::new(registry);
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(error) => {
                    tracing::debug!(%error, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(DEADLINE, handle(stream, &registry)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%error, "metrics request failed"),
                Err(_) => tracing::debug!("metrics request timed out"),
            }
        });
    }
}

async fn handle(mut stream: TcpStream, registry: &Registry) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            head.extend_from_slice(&buf[..n]);
            if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
                return Ok(true);
            }
            if head.len() > MAX_HEAD {
                return Ok(false);
            }
        }
    };
    let complete = read.await?;
    if !complete {
        return respond(&mut stream, "400 Bad Request", "text/plain", b"bad request\n").await;
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or_default();
    let path = path.split(|&b| b == b'?').next().unwrap_or_default();
    match (method, path) {
        (b"GET", b"/metrics") => {
            let mut body = Vec::with_capacity(16 * 1024);
            let encoder = TextEncoder::new();
            if let Err(error) = encoder.encode(&registry.gather(), &mut body) {
                tracing::warn!(%error, "metrics encoding failed");
                return respond(
                    &mut stream,
                    "500 Internal Server Error",
                    "text/plain",
                    b"encode\n",
                )
                .await;
            }
            respond(&mut stream, "200 OK", encoder.format_type(), &body).await
        }
        (b"GET", b"/healthz") => respond(&mut stream, "200 OK", "text/plain", b"ok\n").await,
        (b"GET", _) => respond(&mut stream, "404 Not Found", "text/plain", b"not found\n").await,
        _ => respond(&mut stream, "405 Method Not Allowed", "text/plain", b"GET only\n").await,
    }
}

async fn respond(stream: &mut TcpStream, status: &str, ctype: &str, body: &[u8]) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut out = Vec::with_capacity(head.len() + body.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(body);
    stream.write_all(&out).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: std::net::SocketAddr, req: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(req).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_metrics_healthz_and_rejects_others() {
        let registry = Registry::new();
        let c = prometheus::IntCounter::new("egress_test_things_total", "things").unwrap();
        registry.register(Box::new(c.clone())).unwrap();
        c.inc();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let token = CancellationToken::new();
        let task = tokio::spawn(serve(listener, registry, token.clone()));

        let m = get(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(m.starts_with("HTTP/1.1 200 OK"), "{m}");
        assert!(m.contains("egress_test_things_total 1"), "{m}");
        assert!(
            get(addr, b"GET /healthz HTTP/1.0\r\n\r\n")
                .await
                .contains("200 OK")
        );
        assert!(get(addr, b"GET /nope HTTP/1.1\r\n\r\n").await.contains("404"));
        assert!(get(addr, b"POST /metrics HTTP/1.1\r\n\r\n").await.contains("405"));
        // An oversized head is refused, not buffered forever.
        let big = vec![b'a'; MAX_HEAD + 2048];
        assert!(get(addr, &big).await.contains("400"));

        token.cancel();
        task.await.unwrap();
    }
}
