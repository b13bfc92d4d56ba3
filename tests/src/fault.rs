//! Fault-injecting egress backends, switchable while running ([`FaultBackend::set_mode`]).
//!
//! The mode is read once per accepted connection. [`FaultMode::Refuse`] closes the listening socket
//! (connects get RST: "connection refused"); switching away from it binds the same port again
//! (SO_REUSEADDR). [`FaultMode::Forward`] is a minimal working CONNECT proxy, so one backend can be
//! healthy and then break.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use anyhow::Context as _;
use socket2::{Domain, Socket, Type};
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::http_util::{read_head, reason};

/// Connections handled at once; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 512;
/// How long a black-holed connection is held at most.
const BLACK_HOLE_MAX: Duration = Duration::from_secs(600);
/// Deadline for Forward mode's upstream connect.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a forwarded tunnel lives.
const TUNNEL_MAX: Duration = Duration::from_secs(600);

/// What the backend does with the next connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultMode {
    /// The port is closed: connects are refused.
    Refuse,
    /// Accepts, reads and discards, never answers (a dead tunnel that still accepts TCP).
    BlackHole,
    /// Answers the CONNECT with this status (e.g. 502, 503) and closes.
    Status(u16),
    /// Answers `200 Connection established`, then closes the tunnel at once.
    OkThenClose,
    /// A working CONNECT proxy.
    Forward,
    /// A plain TCP relay to this address (e.g. a tinyproxy): the backend behind a breakable link.
    Relay(SocketAddr),
}

/// A running fault backend on 127.0.0.1. Stops on drop.
#[derive(Debug)]
pub struct FaultBackend {
    addr: SocketAddr,
    state: Arc<State>,
    acceptor: Mutex<Option<Acceptor>>,
    handle: tokio::runtime::Handle,
    shutdown: CancellationToken,
}

#[derive(Debug)]
struct State {
    mode: Mutex<FaultMode>,
    accepted: AtomicU64,
    // Cancelled (and replaced) by drop_connections.
    connections: Mutex<CancellationToken>,
    permits: Arc<Semaphore>,
}

#[derive(Debug)]
struct Acceptor {
    stop: CancellationToken,
    stopped: mpsc::Receiver<()>,
}

impl FaultBackend {
    /// Starts on 127.0.0.1:<ephemeral> in `mode` (in Refuse mode the port is reserved, then closed).
    pub fn start(mode: FaultMode) -> anyhow::Result<FaultBackend> {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), mode)
    }

    /// Starts on `addr` (port 0 = ephemeral) in `mode`.
    pub fn start_on(addr: SocketAddr, mode: FaultMode) -> anyhow::Result<FaultBackend> {
        let handle = crate::runtime::handle()?;
        let shutdown = CancellationToken::new();
        let state = Arc::new(State {
            mode: Mutex::new(FaultMode::Forward),
            accepted: AtomicU64::new(0),
            connections: Mutex::new(shutdown.child_token()),
            permits: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        });
        let listener = bind(addr)?;
        let addr = listener.local_addr()?;
        let backend = FaultBackend {
            addr,
            state,
            acceptor: Mutex::new(None),
            handle,
            shutdown,
        };
        *backend.acceptor.lock().unwrap_or_else(|e| e.into_inner()) = Some(backend.run_acceptor(listener)?);
        backend.set_mode(mode)?;
        Ok(backend)
    }

    /// The listening address (stable across mode switches).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The current mode.
    pub fn mode(&self) -> FaultMode {
        *self.state.mode.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connections accepted so far (all modes).
    pub fn accepted(&self) -> u64 {
        self.state.accepted.load(Ordering::Relaxed)
    }

    /// Switches the mode; effective for connections accepted after it returns. Switching to Refuse
    /// closes the port before returning; switching away from it binds the port again.
    pub fn set_mode(&self, mode: FaultMode) -> anyhow::Result<()> {
        let mut acceptor = self.acceptor.lock().unwrap_or_else(|e| e.into_inner());
        *self.state.mode.lock().unwrap_or_else(|e| e.into_inner()) = mode;
        match (mode, acceptor.take()) {
            (FaultMode::Refuse, Some(running)) => {
                running.stop.cancel();
                running
                    .stopped
                    .recv_timeout(Duration::from_secs(5))
                    .context("fault backend: the listener did not close")?;
            }
            (FaultMode::Refuse, None) => {}
            (_, Some(running)) => *acceptor = Some(running),
            (_, None) => {
                // The old socket is closed; only TIME_WAIT leftovers may remain, which SO_REUSEADDR
                // allows. Retry briefly in case a test connection still holds the port.
                let mut last = None;
                for _ in 0..50 {
                    match bind(self.addr) {
                        Ok(listener) => {
                            *acceptor = Some(self.run_acceptor(listener)?);
                            return Ok(());
                        }
                        Err(e) => last = Some(e),
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                return Err(last.unwrap_or_else(|| anyhow::anyhow!("bind failed")))
                    .with_context(|| format!("fault backend: binding {} again", self.addr));
            }
        }
        Ok(())
    }

    /// Closes every connection currently open (tunnels, black holes), as a crash mid-stream would.
    pub fn drop_connections(&self) {
        let mut token = self.state.connections.lock().unwrap_or_else(|e| e.into_inner());
        token.cancel();
        *token = self.shutdown.child_token();
    }

    fn run_acceptor(&self, listener: std::net::TcpListener) -> anyhow::Result<Acceptor> {
        let stop = self.shutdown.child_token();
        let (stopped_tx, stopped) = mpsc::channel();
        let _enter = self.handle.enter();
        let listener = TcpListener::from_std(listener)?;
        let state = self.state.clone();
        let stop_task = stop.clone();
        self.handle.spawn(async move {
            accept_loop(listener, state, stop_task).await;
            // The listener is dropped (port closed) before set_mode hears about it.
            let _ = stopped_tx.send(());
        });
        Ok(Acceptor { stop, stopped })
    }
}

impl Drop for FaultBackend {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("binding {addr}"))?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, stop: CancellationToken) {
    loop {
        let Ok(permit) = state.permits.clone().acquire_owned().await else {
            return;
        };
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::debug!(%error, "fault backend accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        state.accepted.fetch_add(1, Ordering::Relaxed);
        let mode = *state.mode.lock().unwrap_or_else(|e| e.into_inner());
        let token = state
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        tokio::spawn(async move {
            let _permit = permit;
            tokio::select! {
                () = token.cancelled() => {}
                () = handle(stream, mode) => {}
            }
        });
    }
}

async fn handle(mut stream: TcpStream, mode: FaultMode) {
    match mode {
        // Accepted in the instant before the switch: behave as refused.
        FaultMode::Refuse => {}
        FaultMode::BlackHole => {
            let _ = tokio::time::timeout(
                BLACK_HOLE_MAX,
                tokio::io::copy(&mut stream, &mut tokio::io::sink()),
            )
            .await;
        }
        FaultMode::Status(status) => {
            if read_head(&mut stream).await.is_some() {
                let answer = format!(
                    "HTTP/1.1 {status} {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    reason(status)
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        }
        FaultMode::OkThenClose => {
            if read_head(&mut stream).await.is_some() {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await;
                let _ = stream.shutdown().await;
            }
        }
        FaultMode::Forward => forward(stream).await,
        FaultMode::Relay(to) => relay(stream, to).await,
    }
}

async fn relay(mut stream: TcpStream, to: SocketAddr) {
    let upstream = tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(to)).await;
    let Ok(Ok(mut upstream)) = upstream else {
        return;
    };
    let _ = tokio::time::timeout(
        TUNNEL_MAX,
        tokio::io::copy_bidirectional(&mut stream, &mut upstream),
    )
    .await;
}

async fn forward(mut stream: TcpStream) {
    let Some(request) = read_head(&mut stream).await else {
        return;
    };
    let target = match request.connect_target() {
        Some(target) => target.to_owned(),
        None => {
            let _ = stream
                .write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
                .await;
            return;
        }
    };
    let upstream = tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(target.as_str())).await;
    let Ok(Ok(mut upstream)) = upstream else {
        let _ = stream
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\n\r\n")
            .await;
        return;
    };
    if stream
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    let early = request.rest();
    if !early.is_empty() && upstream.write_all(early).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(
        TUNNEL_MAX,
        tokio::io::copy_bidirectional(&mut stream, &mut upstream),
    )
    .await;
}
