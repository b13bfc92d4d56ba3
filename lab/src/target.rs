//! The load's target: a line echo that answers every line with the peer address it sees, so the
//! client learns which egress backend (tinyproxy `Bind` address) carried its tunnel. Connections
//! stay open for several lines (the load sends two per tunnel, with a pause between).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const IDLE: Duration = Duration::from_secs(30);
const MAX_LINE: usize = 256;

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

async fn serve(stream: tokio::net::TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let reply = format!("{}\n", peer.ip());
    while let Ok(Ok(Some(()))) = tokio::time::timeout(IDLE, next_line(&mut reader)).await {
        if write.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Reads one line (bounded: a line longer than [`MAX_LINE`] ends the connection); `None` on EOF.
async fn next_line(reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> std::io::Result<Option<()>> {
    let mut seen = 0;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(None);
        }
        if let Some(i) = available.iter().position(|b| *b == b'\n') {
            reader.consume(i + 1);
            return Ok(Some(()));
        }
        let n = available.len();
        reader.consume(n);
        seen += n;
        if seen > MAX_LINE {
            return Ok(None);
        }
    }
}
