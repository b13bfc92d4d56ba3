//! A minimal HTTP/1.1 endpoint serving `GET /metrics` (Prometheus text format) and `GET /healthz`.
//!
//! Deliberately tiny: one request per connection, a bounded request head (parsed by
//! [`crate::http1`]), one deadline over the whole exchange and a cap on concurrent scrapes. It is
//! scraped by Prometheus and probed by Kubernetes, nothing else.
//!
//! Why not a hyper server: this answers two fixed GETs with `Connection: close` and never reads a
//! body, so what a server library adds (keep-alive, pipelining, chunked bodies, upgrades, HTTP/2)
//! is surface it would have to disable again; the workspace links hyper only as a client (kube,
//! reqwest), and its server half would bring more code than this file. Every bound stays visible
//! here: 8 KiB of head, 10 s per exchange, 16 scrapes at once.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{Encoder, Registry, TextEncoder};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::http1;

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
    let mut buf = Vec::with_capacity(512);
    let head = match http1::read_request_head(&mut stream, &mut buf, MAX_HEAD).await {
        Ok(head) => head,
        Err(http1::ReadError::Io(e)) => return Err(e),
        Err(http1::ReadError::Closed | http1::ReadError::Head(_)) => {
            return respond(&mut stream, "400 Bad Request", "text/plain", b"bad request\n").await;
        }
    };
    let path = head.target.split('?').next().unwrap_or_default();
    match (head.method.as_str(), path) {
        ("GET", "/metrics") => {
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
        ("GET", "/healthz") => respond(&mut stream, "200 OK", "text/plain", b"ok\n").await,
        ("GET", _) => respond(&mut stream, "404 Not Found", "text/plain", b"not found\n").await,
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
    use tokio::io::AsyncReadExt;

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
