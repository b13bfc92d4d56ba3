//! The ledger behind the agent: aggregated attribution rows go to the ledger writer (batched,
//! off the request path, shed and counted under pressure), and the exit-IP map is refreshed from the
//! ledger's exit-IP timeline: pushed (`LISTEN` on [`egress_ledger::EXIT_IPS_CHANNEL`]) and polled.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use egress_ledger::{EXIT_IPS_CHANNEL, LedgerHandle, Store};
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use crate::attribution::{AttributionRow, AttributionSink};
use crate::exit_ip::{ExitIpSource, ExitIps, LoadFuture, Reload};
use crate::metrics::Metrics;

/// Deadline for connecting the listener and subscribing.
const LISTEN_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait between two attempts to (re)connect the listener.
const LISTEN_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Listens to the ledger's exit-IP notifications and wakes the refresher for each, and after every
/// (re)connection (what changed while the listener was away is unknown). When the connection
/// breaks, the periodic refresh goes on alone and the listener reconnects with backoff
/// (1 s doubling to 30 s). Runs until `shutdown`.
pub async fn run_exit_ip_listener(
    store: Store,
    exit_ips: Arc<ExitIps>,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let connected = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = tokio::time::timeout(LISTEN_CONNECT_TIMEOUT, async {
                let mut l = PgListener::connect_with(store.pool()).await?;
                l.listen(EXIT_IPS_CHANNEL).await?;
                Ok::<_, sqlx::Error>(l)
            }) => r,
        };
        let mut listener = match connected {
            Ok(Ok(l)) => l,
            Ok(Err(error)) => {
                tracing::warn!(%error, retry_in = ?backoff, "exit-IP notifications: cannot listen; polling meanwhile");
                if sleep_or_stop(backoff, &shutdown).await {
                    return;
                }
                backoff = (backoff * 2).min(LISTEN_BACKOFF_MAX);
                continue;
            }
            Err(_) => {
                tracing::warn!(retry_in = ?backoff, "exit-IP notifications: listen timed out; polling meanwhile");
                if sleep_or_stop(backoff, &shutdown).await {
                    return;
                }
                backoff = (backoff * 2).min(LISTEN_BACKOFF_MAX);
                continue;
            }
        };
        tracing::info!(channel = EXIT_IPS_CHANNEL, "exit-IP notifications: listening");
        metrics.exit_ip_listener_up.set(1);
        backoff = Duration::from_secs(1);
        exit_ips.request_reload(Reload::Reconnect);
        loop {
            let received = tokio::select! {
                _ = shutdown.cancelled() => {
                    metrics.exit_ip_listener_up.set(0);
                    return;
                }
                r = listener.try_recv() => r,
            };
            match received {
                Ok(Some(_)) => exit_ips.request_reload(Reload::Push),
                // sqlx reconnected by itself: notifications may have been missed meanwhile.
                Ok(None) => {
                    tracing::info!("exit-IP notifications: reconnected");
                    exit_ips.request_reload(Reload::Reconnect);
                }
                Err(error) => {
                    tracing::warn!(%error, "exit-IP notifications: connection lost; polling meanwhile");
                    break;
                }
            }
        }
        metrics.exit_ip_listener_up.set(0);
        if sleep_or_stop(backoff, &shutdown).await {
            return;
        }
    }
}

/// Sleeps `d`; true when `shutdown` came first.
async fn sleep_or_stop(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

/// Hands closed attribution windows to the ledger writer.
#[derive(Clone, Debug)]
pub struct LedgerSink {
    ledger: LedgerHandle,
}

impl LedgerSink {
    /// Submit through `ledger`.
    pub fn new(ledger: LedgerHandle) -> Self {
        Self { ledger }
    }
}

fn row(r: AttributionRow) -> egress_ledger::AttributionRow {
    egress_ledger::AttributionRow {
        client_hash: r.client_hash,
        backend: r.backend.to_string(),
        server: r.server.to_string(),
        exit_ip: r.exit_ip,
        window_start: DateTime::<Utc>::from(r.window_start),
        first_seen: DateTime::<Utc>::from(r.first_seen),
        last_seen: DateTime::<Utc>::from(r.last_seen),
        requests: r.requests,
    }
}

impl AttributionSink for LedgerSink {
    fn submit(&self, rows: Vec<AttributionRow>) {
        // Never blocks: the writer sheds (and counts) what it cannot hold.
        self.ledger
            .submit_attribution(rows.into_iter().map(row).collect());
    }
}

/// Reads every server's current exit IP from the ledger's timeline.
#[derive(Clone, Debug)]
pub struct LedgerExitIps {
    store: Arc<Store>,
}

impl LedgerExitIps {
    /// Query through `store`.
    pub fn new(store: Store) -> Self {
        Self {
            store: Arc::new(store),
        }
    }
}

impl ExitIpSource for LedgerExitIps {
    fn load(&self) -> LoadFuture<'_> {
        Box::pin(async move { Ok(self.store.current_exit_ips().await?) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use egress_common::client_hash::ClientHash;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn rows_keep_every_field() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let r = AttributionRow {
            client_hash: ClientHash(0xdead_beef),
            backend: "egress".into(),
            server: "g01".into(),
            exit_ip: Some("127.0.0.2".parse().unwrap()),
            window_start: t0,
            first_seen: t0 + Duration::from_millis(1500),
            last_seen: t0 + Duration::from_secs(59),
            requests: 7,
        };
        let l = row(r);
        assert_eq!(l.client_hash, ClientHash(0xdead_beef));
        assert_eq!((l.backend.as_str(), l.server.as_str()), ("egress", "g01"));
        assert_eq!(l.exit_ip, Some("127.0.0.2".parse().unwrap()));
        assert_eq!(l.window_start.timestamp(), 1_800_000_000);
        assert_eq!(l.first_seen.timestamp_millis(), 1_800_000_001_500);
        assert_eq!(l.last_seen.timestamp(), 1_800_000_059);
        assert_eq!(l.requests, 7);
        assert!(l.is_valid());
    }
}
