//! Servers in HAProxy maintenance are not the checker's business: a failing probe of a server whose
//! admin state is MAINT (the rotator restarting it, an operator working on it) is not counted, so a
//! rotation's restart never turns into a quarantine.
//!
//! A probe failure asks [`MaintWatch::in_maint`], which reads `show servers state <backend>` at most
//! once per `ttl` per backend. Successes never ask (they cost nothing to count).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::state::ServerKey;
use egress_haproxy_api::{AdminState, RuntimeApi};

/// A cached view of which servers HAProxy has in maintenance.
#[derive(Debug)]
pub struct MaintWatch {
    api: RuntimeApi,
    ttl: Duration,
    cache: Mutex<HashMap<String, (Instant, HashSet<String>)>>,
}

impl MaintWatch {
    /// Read through `api`, re-reading a backend's states at most every `ttl`.
    pub fn new(api: RuntimeApi, ttl: Duration) -> Self {
        MaintWatch {
            api,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Whether HAProxy has `key` in maintenance. When HAProxy cannot be asked, `false`: the failure
    /// counts as it would without this check.
    pub async fn in_maint(&self, key: &ServerKey) -> bool {
        let mut cache = self.cache.lock().await;
        let fresh = cache
            .get(&*key.backend)
            .is_some_and(|(at, _)| at.elapsed() < self.ttl);
        if !fresh {
            match self.api.servers_state(&key.backend).await {
                Ok(rows) => {
                    let maint = rows
                        .iter()
                        .filter(|r| AdminState::from_servers_state_row(r) == Some(AdminState::Maint))
                        .filter_map(|r| r.get("srv_name").cloned())
                        .collect();
                    cache.insert(key.backend.to_string(), (Instant::now(), maint));
                }
                Err(error) => {
                    // Remember "unknown" for a ttl too, so an unreachable HAProxy costs one timeout
                    // per backend and ttl, not one per failing probe.
                    tracing::debug!(%error, backend = %key.backend, "cannot read admin states");
                    cache.insert(key.backend.to_string(), (Instant::now(), HashSet::new()));
                    return false;
                }
            }
        }
        cache
            .get(&*key.backend)
            .is_some_and(|(_, set)| set.contains(&*key.server))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use egress_haproxy_api::RuntimeApiAddr;

    #[tokio::test]
    async fn reads_maint_bits_and_caches_per_backend() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = served.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut b = [0u8; 64];
                let n = s.read(&mut b).await.unwrap();
                assert_eq!(&b[..n], b"show servers state egress\n");
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                s.write_all(b"1\n# be_id be_name srv_id srv_name srv_admin_state\n3 egress 1 s1 1\n3 egress 2 s2 8\n3 egress 3 s3 0\n")
                    .await
                    .unwrap();
            }
        });
        let w = MaintWatch::new(
            RuntimeApi::new(RuntimeApiAddr::Tcp(addr), Duration::from_secs(2)),
            Duration::from_secs(60),
        );
        assert!(w.in_maint(&ServerKey::new("egress", "s1")).await);
        assert!(
            !w.in_maint(&ServerKey::new("egress", "s2")).await,
            "drain is not maint"
        );
        assert!(!w.in_maint(&ServerKey::new("egress", "s3")).await);
        assert_eq!(
            served.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "one read per ttl"
        );
        // HAProxy unreachable: failures count as usual.
        let gone = MaintWatch::new(
            RuntimeApi::new(
                RuntimeApiAddr::Unix("/nonexistent/h.sock".into()),
                Duration::from_secs(1),
            ),
            Duration::from_secs(1),
        );
        assert!(!gone.in_maint(&ServerKey::new("egress", "s1")).await);
    }
}
