//! Servers in HAProxy maintenance are not the checker's business: a failing probe of a server whose
//! admin state is MAINT (the rotator restarting it, an operator working on it) is not counted, so a
//! rotation's restart never turns into a quarantine.
//!
//! A probe failure asks [`MaintWatch::in_maint`], which reads `show servers state <backend>` at most
//! once per `ttl` per backend. Successes never ask (they cost nothing to count).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::runtime_api::{AdminState, RuntimeApi};
use crate::state::ServerKey;

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
                    tracing::debug!(%error, backend = %key.backend, "cannot read admin states");
                    return false;
                }
            }
        }
        cache
            .get(&*key.backend)
            .is_some_and(|(_, set)| set.contains(&*key.server))
    }
}
