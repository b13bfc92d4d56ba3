//! The ledger side of [`TransitionObserver`]: every quarantine, restore and exit-IP sighting becomes
//! one append-only event. `record_event` never blocks on Postgres (it queues, or spools to disk during
//! an outage), so this is safe on the probe path.

use egress_ledger::{Actor, Event, EventKind, LedgerHandle};

use crate::leader::Leadership;
use crate::observer::{ExitIpEvent, LogObserver, TransitionObserver};
use crate::state::{HealthKind, Transition};

/// Logs every transition and writes the ones that matter to the ledger.
#[derive(Clone, Debug)]
pub struct LedgerObserver {
    ledger: LedgerHandle,
    leader: Leadership,
}

impl LedgerObserver {
    /// Write through `ledger` while `leader` says this checker is the ledger writer (the other
    /// replicas only log).
    pub fn new(ledger: LedgerHandle, leader: Leadership) -> Self {
        Self { ledger, leader }
    }
}

/// The ledger event kind for a health transition, if it is one the ledger records.
///
/// Unknown→Healthy (first good probe) and Ramping→Healthy (end of slow start) are not events;
/// Quarantined→Quarantined (a leak found on a server already out) is recorded by its
/// [`ExitIpEvent::Leak`] instead.
pub fn event_kind(from: HealthKind, to: HealthKind) -> Option<EventKind> {
    match (from, to) {
        (HealthKind::Quarantined, HealthKind::Quarantined) => None,
        (_, HealthKind::Quarantined) => Some(EventKind::Quarantined),
        (HealthKind::Quarantined, HealthKind::Ramping | HealthKind::Healthy) => Some(EventKind::Restored),
        _ => None,
    }
}

impl TransitionObserver for LedgerObserver {
    fn on_transition(&self, t: &Transition) {
        LogObserver.on_transition(t);
        if !self.leader.is_leader() {
            return;
        }
        let Some(kind) = event_kind(t.from, t.to) else {
            return;
        };
        let mut event = Event::new(kind, Actor::Checker, &*t.backend, &*t.server)
            .at(t.at)
            .detail(serde_json::json!({
                "from": t.from.as_str(),
                "to": t.to.as_str(),
                "consecutive_failures": t.consecutive_failures,
            }));
        if let Some(reason) = t.reason {
            event = event.reason(reason.as_str());
        }
        self.ledger.record_event(event);
    }

    fn on_exit_ip(&self, e: &ExitIpEvent) {
        LogObserver.on_exit_ip(e);
        if !self.leader.is_leader() {
            return;
        }
        let event = match e {
            ExitIpEvent::Observed {
                backend,
                server,
                ip,
                at,
            } => Event::new(EventKind::ExitIpObserved, Actor::Checker, &**backend, &**server)
                .at(*at)
                .new_ip(*ip),
            ExitIpEvent::Changed {
                backend,
                server,
                old,
                new,
                at,
            } => Event::new(EventKind::ExitIpChanged, Actor::Checker, &**backend, &**server)
                .at(*at)
                .old_ip(*old)
                .new_ip(*new),
            ExitIpEvent::Leak {
                backend,
                server,
                ip,
                at,
            } => Event::new(EventKind::ExitIpLeak, Actor::Checker, &**backend, &**server)
                .at(*at)
                .new_ip(*ip)
                .reason("exit-ip-leak"),
            ExitIpEvent::Unknown {
                backend,
                server,
                last,
                reason,
                at,
            } => Event::new(EventKind::ExitIpUnknown, Actor::Checker, &**backend, &**server)
                .at(*at)
                .old_ip(*last)
                .reason(format!("probe failed: {reason}")),
        };
        self.ledger.record_event(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use HealthKind::*;

    #[test]
    fn only_quarantine_and_restore_are_events() {
        assert_eq!(event_kind(Healthy, Quarantined), Some(EventKind::Quarantined));
        assert_eq!(event_kind(Unknown, Quarantined), Some(EventKind::Quarantined));
        assert_eq!(event_kind(Ramping, Quarantined), Some(EventKind::Quarantined));
        assert_eq!(event_kind(Quarantined, Ramping), Some(EventKind::Restored));
        assert_eq!(event_kind(Quarantined, Healthy), Some(EventKind::Restored));
        assert_eq!(event_kind(Quarantined, Quarantined), None);
        assert_eq!(event_kind(Unknown, Healthy), None);
        assert_eq!(event_kind(Ramping, Healthy), None);
    }
}
