//! The lab's victim backend: a CONNECT-aware fault proxy in front of a real tinyproxy.
//!
//! The harness's `FaultBackend` covers refuse/black-hole/status; the lab also needs a failure that
//! shows only for one CONNECT target (passive-only detection), a slow-but-working tunnel (active-only
//! detection) and a cold backend whose capacity grows after a restore (the slow-start comparison), so
//! it has its own. The mode is read once per accepted connection; every step has a deadline.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use egress_harness::http_util::{Incoming, read_head};
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const STEP: Duration = Duration::from_secs(10);
const TUNNEL_MAX: Duration = Duration::from_secs(120);

/// What the victim does with the next connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// Pipe to the tinyproxy behind (a healthy backend).
    Forward,
    /// Answer the CONNECT with this status and close (a dead tunnel; TCP still accepted).
    Status(u16),
    /// Accept and read, never answer (a black hole).
    BlackHole,
    /// Answer 503 only when the CONNECT target (or a GET's absolute-URI authority) is this address;
    /// forward everything else.
    FailTarget(String),
    /// Forward, but only after this delay (a brownout: slow, never failing).
    Delay(Duration),
    /// Forward at a capacity (tunnels per second) that grows linearly from `from` to `to` over
    /// `over`, starting when the mode is set; excess connections queue (a cold backend warming up).
    Warming { from: f64, to: f64, over: Duration },
}

#[derive(Debug)]
struct State {
    mode: Mode,
    since: Instant,
    next_slot: Instant,
}

/// A running victim proxy on 127.0.0.1. Stops when the token is cancelled or on drop.
#[derive(Debug)]
pub struct Victim {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    shutdown: CancellationToken,
}

impl Victim {
    /// Starts in front of `upstream` (a tinyproxy) on the current tokio runtime.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Victim> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let now = Instant::now();
        let state = Arc::new(Mutex::new(State {
            mode: Mode::Forward,
            since: now,
            next_slot: now,
        }));
        let shutdown = CancellationToken::new();
        tokio::spawn(accept_loop(listener, upstream, state.clone(), shutdown.clone()));
        Ok(Victim {
            addr,
            state,
            shutdown,
        })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches the mode for connections accepted from now on.
    pub fn set_mode(&self, mode: Mode) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.mode = mode;
        s.since = Instant::now();
        s.next_slot = s.since;
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    state: Arc<Mutex<State>>,
    shutdown: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => { tokio::time::sleep(Duration::from_millis(10)).await; continue; }
            },
        };
        // Reserve the warming slot at accept time, so queued connections keep their order.
        let (mode, slot) = {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            let slot = match &s.mode {
                Mode::Warming { from, to, over } => {
                    let now = Instant::now();
                    let t = now.saturating_duration_since(s.since).as_secs_f64();
                    let frac = if over.is_zero() {
                        1.0
                    } else {
                        (t / over.as_secs_f64()).min(1.0)
                    };
                    let rate = (from + (to - from) * frac).max(0.1);
                    let slot = s.next_slot.max(now);
                    s.next_slot = slot + Duration::from_secs_f64(1.0 / rate);
                    Some(slot)
                }
                _ => None,
            };
            (s.mode.clone(), slot)
        };
        let token = shutdown.child_token();
        tokio::spawn(async move {
            tokio::select! {
                () = token.cancelled() => {}
                () = handle(stream, upstream, mode, slot) => {}
            }
        });
    }
}

async fn handle(mut client: TcpStream, upstream: SocketAddr, mode: Mode, slot: Option<Instant>) {
    let _ = client.set_nodelay(true);
    let Some(request) = read_head(&mut client).await else {
        return;
    };
    match mode {
        Mode::Status(status) => return answer(&mut client, status).await,
        Mode::BlackHole => {
            let _ =
                tokio::time::timeout(TUNNEL_MAX, tokio::io::copy(&mut client, &mut tokio::io::sink())).await;
            return;
        }
        Mode::FailTarget(target) if for_target(&request, &target) => {
            return answer(&mut client, 503).await;
        }
        Mode::Delay(d) => tokio::time::sleep(d).await,
        _ => {}
    }
    if let Some(slot) = slot {
        tokio::time::sleep_until(slot).await;
    }
    let Ok(Ok(mut up)) = tokio::time::timeout(STEP, TcpStream::connect(upstream)).await else {
        return answer(&mut client, 502).await;
    };
    let _ = up.set_nodelay(true);
    // The head exactly as the client sent it, then whatever followed it.
    if up.write_all(&request.bytes).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(TUNNEL_MAX, tokio::io::copy_bidirectional(&mut client, &mut up)).await;
}

/// Whether `request` is a CONNECT to `target` or an absolute-URI request for it.
fn for_target(request: &Incoming, target: &str) -> bool {
    request.connect_target() == Some(target)
        || request
            .head
            .target
            .strip_prefix("http://")
            .and_then(|rest| rest.split('/').next())
            == Some(target)
}

async fn answer(client: &mut TcpStream, status: u16) {
    let text = format!("HTTP/1.1 {status} Lab Fault\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let _ = client.write_all(text.as_bytes()).await;
    let _ = client.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connect_target_is_parsed() {
        let connect = read_head(&mut &b"CONNECT 127.0.0.1:80 HTTP/1.1\r\nHost: x\r\n\r\n"[..])
            .await
            .unwrap();
        assert_eq!(connect.connect_target(), Some("127.0.0.1:80"));
        assert!(for_target(&connect, "127.0.0.1:80"));
        let get = read_head(&mut &b"GET / HTTP/1.1\r\n\r\n"[..]).await.unwrap();
        assert_eq!(get.connect_target(), None);
        assert!(!for_target(&get, "127.0.0.1:80"));
        let proxied = read_head(&mut &b"GET http://127.0.0.1:80/hold/300 HTTP/1.1\r\nHost: x\r\n\r\n"[..])
            .await
            .unwrap();
        assert!(for_target(&proxied, "127.0.0.1:80"));
        assert!(!for_target(&proxied, "127.0.0.1:8"));
    }
}
