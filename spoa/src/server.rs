//! The accept loop: a connection permit before each accept, every connection tracked, and a
//! two-phase shutdown (stop accepting; let connections drain under a deadline).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connection::{ConnectionConfig, serve_connection};
use crate::handler::Agent;

/// Server limits.
#[derive(Clone, Copy, Debug)]
pub struct ServerConfig {
    /// Per-connection settings.
    pub connection: ConnectionConfig,
    /// Concurrent connections; further connects wait in the listen backlog.
    pub max_connections: usize,
    /// How long open connections may take to drain after shutdown.
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            connection: ConnectionConfig::default(),
            max_connections: 4096,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Errors that end the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listener is unusable.
    #[error("listener failed: {0}")]
    Listener(#[source] std::io::Error),
}

/// Serve SPOP on `listener` until `shutdown` is cancelled, then drain open connections for at most
/// `cfg.shutdown_grace`.
pub async fn run(
    listener: TcpListener,
    agent: Arc<Agent>,
    cfg: ServerConfig,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let addr = listener.local_addr().map_err(Error::Listener)?;
    tracing::info!(%addr, max_connections = cfg.max_connections, "SPOP agent listening");
    let permits = Arc::new(Semaphore::new(cfg.max_connections.max(1)));
    let tracker = TaskTracker::new();
    let metrics = agent.metrics().clone();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break, // the semaphore is never closed; be safe anyway
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        metrics.connections_accepted.inc();
        metrics.connections.inc();
        let agent = agent.clone();
        let token = shutdown.clone();
        let conn_cfg = cfg.connection;
        let metrics = metrics.clone();
        tracker.spawn(async move {
            tracing::trace!(%peer, "SPOP connection");
            serve_connection(stream, agent, conn_cfg, token).await;
            metrics.connections.dec();
            drop(permit);
        });
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(cfg.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = tracker.len(),
            "SPOP connections still open after the shutdown grace"
        );
    }
    Ok(())
}
