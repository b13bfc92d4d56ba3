//! The control probe: the checker's own direct path to a target. A failure that the control probe
//! shares (the target itself is down or unreachable from here) does not count against backends.

use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::probe::class::FailureClass;
use crate::probe::direct::dial;
use crate::probe::{Prober, tls};

/// Per-target control results, cached for `ttl`. Concurrent callers for one target wait for a single
/// probe instead of each dialling the target.
#[derive(Debug)]
pub struct Control {
    ttl: Duration,
    timeout: Duration,
    cache: Vec<Mutex<Option<(Instant, bool)>>>,
}

impl Control {
    /// One cache slot per target of `prober`.
    pub fn new(prober: &Prober, ttl: Duration, timeout: Duration) -> Self {
        let cache = prober.targets.iter().map(|_| Mutex::new(None)).collect();
        Control { ttl, timeout, cache }
    }

    /// Whether the checker reaches target `idx` directly (TCP, plus TLS when the target wants it).
    pub async fn target_ok(&self, prober: &Prober, idx: usize) -> bool {
        let n = prober.targets.len();
        if n == 0 {
            return true;
        }
        let idx = idx % n;
        let (Some(slot), Some(target)) = (self.cache.get(idx), prober.targets.get(idx)) else {
            return true;
        };
        let mut slot = slot.lock().await;
        if let Some((at, ok)) = *slot
            && at.elapsed() < self.ttl
        {
            return ok;
        }
        let ok = async {
            let stream = dial(&target.host, target.port, self.timeout).await?;
            if let Some(name) = &target.tls {
                tls::handshake(&prober.connector, name, stream, self.timeout).await?;
            }
            Ok::<(), FailureClass>(())
        }
        .await
        .is_ok();
        *slot = Some((Instant::now(), ok));
        ok
    }
}
