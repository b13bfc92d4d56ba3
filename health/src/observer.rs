//! Where transitions go: one call per transition, from one place (the scheduler's `publish`). The
//! lead's ledger implements [`TransitionObserver`]; [`LogObserver`] ships for logs only.

use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::state::Transition;

/// An exit-IP observation through a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitIpEvent {
    /// First IP seen for this server since the checker started.
    Observed {
        /// HAProxy backend.
        backend: Arc<str>,
        /// HAProxy server.
        server: Arc<str>,
        /// The exit IP.
        ip: IpAddr,
        /// When.
        at: DateTime<Utc>,
    },
    /// The exit IP differs from the last one seen.
    Changed {
        /// HAProxy backend.
        backend: Arc<str>,
        /// HAProxy server.
        server: Arc<str>,
        /// Before.
        old: IpAddr,
        /// After.
        new: IpAddr,
        /// When.
        at: DateTime<Utc>,
    },
    /// The exit IP is the checker's own direct exit IP: the tunnel is down and traffic leaves from
    /// the node. The quarantine itself arrives as a [`Transition`] with reason `exit-ip-leak`.
    Leak {
        /// HAProxy backend.
        backend: Arc<str>,
        /// HAProxy server.
        server: Arc<str>,
        /// The leaked IP.
        ip: IpAddr,
        /// When.
        at: DateTime<Utc>,
    },
    /// A probe through a server with a known exit IP failed: until the next exit-IP check passes,
    /// the IP is not known (the tunnel may come back elsewhere). Agents then tag `exit=unknown`.
    Unknown {
        /// HAProxy backend.
        backend: Arc<str>,
        /// HAProxy server.
        server: Arc<str>,
        /// The IP known until now.
        last: IpAddr,
        /// Why (the probe's failure class).
        reason: &'static str,
        /// When.
        at: DateTime<Utc>,
    },
}

/// Receives every health transition and exit-IP event. Called on the probe path: implementations
/// must not block (queue the event, e.g. into the ledger's bounded buffer).
pub trait TransitionObserver: Send + Sync {
    /// A server changed health.
    fn on_transition(&self, t: &Transition);
    /// An exit-IP observation.
    fn on_exit_ip(&self, _event: &ExitIpEvent) {}
}

/// Logs transitions and exit-IP events with tracing.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogObserver;

impl TransitionObserver for LogObserver {
    fn on_transition(&self, t: &Transition) {
        tracing::info!(
            backend = %t.backend,
            server = %t.server,
            from = t.from.as_str(),
            to = t.to.as_str(),
            reason = t.reason.map(|r| r.as_str()).unwrap_or("-"),
            failures = t.consecutive_failures,
            "server health changed"
        );
    }

    fn on_exit_ip(&self, event: &ExitIpEvent) {
        match event {
            ExitIpEvent::Observed {
                backend, server, ip, ..
            } => {
                tracing::info!(%backend, %server, %ip, "exit ip observed");
            }
            ExitIpEvent::Changed {
                backend,
                server,
                old,
                new,
                ..
            } => {
                tracing::info!(%backend, %server, %old, %new, "exit ip changed");
            }
            ExitIpEvent::Leak {
                backend, server, ip, ..
            } => {
                tracing::warn!(%backend, %server, %ip, "exit ip leak: traffic leaves from the checker's own address");
            }
            ExitIpEvent::Unknown {
                backend,
                server,
                last,
                reason,
                ..
            } => {
                tracing::info!(%backend, %server, %last, reason, "exit ip unknown until the next check passes");
            }
        }
    }
}
