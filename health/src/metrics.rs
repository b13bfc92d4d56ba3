//! The checker's Prometheus metrics: one struct, registered once.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Every metric the checker exports.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Probes by result (`ok` or a failure class) and verdict (`counted`, `excused`, `maint`: failed while HAProxy had the server in maintenance, not counted).
    pub probes: IntCounterVec,
    /// Probe duration.
    pub probe_duration: Histogram,
    /// How late a probe started against its schedule (rate limit, concurrency, runtime).
    pub probe_lateness: Histogram,
    /// Servers per health state.
    pub servers: IntGaugeVec,
    /// Health transitions by destination and reason.
    pub transitions: IntCounterVec,
    /// 1 while the max-quarantined guard keeps failing servers up.
    pub guard_active: IntGauge,
    /// Servers past the threshold kept up by the guard.
    pub guard_held: IntGauge,
    /// Agent-check requests by result.
    pub agent_requests: IntCounterVec,
    /// Control probes by result.
    pub control_probes: IntCounterVec,
    /// Exit-IP checks by result.
    pub exit_ip_checks: IntCounterVec,
    /// Exit-IP changes seen.
    pub exit_ip_changes: IntCounter,
    /// Backend-list refreshes by result.
    pub backend_refreshes: IntCounterVec,
}

impl Metrics {
    /// Create and register on `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let lat_buckets = vec![
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5,
        ];
        let m = Metrics {
            probes: IntCounterVec::new(
                Opts::new(
                    "egress_checker_probes_total",
                    "Synthetic CONNECT probes by result and verdict.",
                ),
                &["result", "verdict"],
            )?,
            probe_duration: Histogram::with_opts(
                HistogramOpts::new("egress_checker_probe_duration_seconds", "Duration of one probe.")
                    .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0]),
            )?,
            probe_lateness: Histogram::with_opts(
                HistogramOpts::new(
                    "egress_checker_probe_lateness_seconds",
                    "How late probes start against their schedule.",
                )
                .buckets(lat_buckets),
            )?,
            servers: IntGaugeVec::new(
                Opts::new("egress_checker_servers", "Servers per checker health state."),
                &["state"],
            )?,
            transitions: IntCounterVec::new(
                Opts::new(
                    "egress_checker_transitions_total",
                    "Health transitions by destination and reason.",
                ),
                &["to", "reason"],
            )?,
            guard_active: IntGauge::new(
                "egress_checker_quarantine_guard_active",
                "1 while the max-quarantined guard keeps failing servers up.",
            )?,
            guard_held: IntGauge::new(
                "egress_checker_quarantine_guard_held_servers",
                "Servers past the failure threshold kept up by the guard.",
            )?,
            agent_requests: IntCounterVec::new(
                Opts::new(
                    "egress_checker_agent_requests_total",
                    "agent-check requests by result.",
                ),
                &["result"],
            )?,
            control_probes: IntCounterVec::new(
                Opts::new(
                    "egress_checker_control_probes_total",
                    "Control-probe consultations by result.",
                ),
                &["result"],
            )?,
            exit_ip_checks: IntCounterVec::new(
                Opts::new("egress_checker_exit_ip_checks_total", "Exit-IP checks by result."),
                &["result"],
            )?,
            exit_ip_changes: IntCounter::new(
                "egress_checker_exit_ip_changes_total",
                "Exit-IP changes observed through backends.",
            )?,
            backend_refreshes: IntCounterVec::new(
                Opts::new(
                    "egress_checker_backend_refreshes_total",
                    "Backend-list refreshes by result.",
                ),
                &["result"],
            )?,
        };
        registry.register(Box::new(m.probes.clone()))?;
        registry.register(Box::new(m.probe_duration.clone()))?;
        registry.register(Box::new(m.probe_lateness.clone()))?;
        registry.register(Box::new(m.servers.clone()))?;
        registry.register(Box::new(m.transitions.clone()))?;
        registry.register(Box::new(m.guard_active.clone()))?;
        registry.register(Box::new(m.guard_held.clone()))?;
        registry.register(Box::new(m.agent_requests.clone()))?;
        registry.register(Box::new(m.control_probes.clone()))?;
        registry.register(Box::new(m.exit_ip_checks.clone()))?;
        registry.register(Box::new(m.exit_ip_changes.clone()))?;
        registry.register(Box::new(m.backend_refreshes.clone()))?;
        Ok(m)
    }
}
