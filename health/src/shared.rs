//! The state the probe tasks write and the agent responder reads: the quarantine state machine and
//! the metrics, behind one lock.

use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use crate::metrics::Metrics;
use crate::state::{Machine, Params, Reply, ServerKey};

/// State shared by the probe tasks (writers) and the agent responder (reader).
#[derive(Debug)]
pub struct Shared {
    machine: Mutex<Machine>,
    /// The checker's metrics.
    pub metrics: Metrics,
}

impl Shared {
    /// A pool with no servers yet.
    pub fn new(params: Params, metrics: Metrics) -> Self {
        Shared {
            machine: Mutex::new(Machine::new(params)),
            metrics,
        }
    }

    /// Lock the state machine. Critical sections are map lookups; a poisoned lock still holds a
    /// consistent machine (every mutation is a few field writes), so it is used as is.
    pub fn lock(&self) -> MutexGuard<'_, Machine> {
        self.machine.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The agent reply for `key`; `None` for a server not in the pool.
    pub fn reply(&self, key: &ServerKey, now: Instant) -> Option<Reply> {
        self.lock().reply(key, now)
    }

    /// Refresh the per-state and guard gauges.
    pub fn update_gauges(&self) {
        let m = self.lock();
        for (kind, n) in m.counts() {
            self.metrics
                .servers
                .with_label_values(&[kind.as_str()])
                .set(n as i64);
        }
        let held = m.held();
        let quarantined = m.quarantined();
        drop(m);
        let was_active = self.metrics.guard_active.get() == 1;
        if held > 0 && !was_active {
            tracing::warn!(
                held,
                quarantined,
                "quarantine guard active: failing servers kept up"
            );
        } else if held == 0 && was_active {
            tracing::info!(quarantined, "quarantine guard released");
        }
        self.metrics.guard_held.set(held as i64);
        self.metrics.guard_active.set(i64::from(held > 0));
    }
}
