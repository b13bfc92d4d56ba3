//! The agent's Prometheus metrics: one struct, registered once in its own [`Registry`].
//! Hot-path series are resolved to their label children up front.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::frame::{FrameType, Status};

/// Every metric of egress-spoa.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    frames_received: IntCounterVec,
    frames_sent: IntCounterVec,
    /// `egress_spoa_frames_received_total{type="notify"}`, resolved.
    pub notify_received: IntCounter,
    /// `egress_spoa_frames_sent_total{type="ack"}`, resolved.
    pub ack_sent: IntCounter,
    /// Time to decode and handle one NOTIFY: the average over its read batch (not including the
    /// socket write).
    pub notify_seconds: Histogram,
    /// Open SPOP connections.
    pub connections: IntGauge,
    /// Accepted SPOP connections.
    pub connections_accepted: IntCounter,
    disconnects: IntCounterVec,
    /// Messages `egress-attribution` answered.
    pub msg_attribution: IntCounter,
    /// Messages `egress-client` answered.
    pub msg_client: IntCounter,
    /// Messages with a name we do not know.
    pub msg_unknown: IntCounter,
    /// Known messages missing a required argument.
    pub msg_bad_args: IntCounter,
    /// NOTIFYs with no message at all (3.1+).
    pub msg_empty: IntCounter,
    /// Attribution records waiting in the queue (sampled on each flush tick).
    pub attribution_queue_depth: IntGauge,
    /// Attribution records dropped because the queue was full.
    pub attribution_dropped: IntCounter,
    /// Aggregated attribution rows handed to the sink.
    pub attribution_rows: IntCounter,
    /// Failed exit-IP refreshes.
    pub exit_ip_refresh_failures: IntCounter,
    /// Entries in the current exit-IP map.
    pub exit_ip_entries: IntGauge,
    /// Exit-IP map reloads, by cause (`poll`, `push`, `reconnect`, `unknown-server`).
    pub exit_ip_reloads: IntCounterVec,
    /// 1 while the ledger's exit-IP notifications are being listened to.
    pub exit_ip_listener_up: IntGauge,
    /// Requests tagged `exit=unknown`: a server the map does not know (never seen, mid-rotation, or
    /// its tunnel failed).
    pub exit_ip_unknown: IntCounter,
    /// Socket errors other than resets and EOF.
    pub io_errors: IntCounter,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> Result<T, prometheus::Error> {
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

impl Metrics {
    /// Create and register everything in a fresh registry.
    pub fn new() -> Result<Self, prometheus::Error> {
        let r = Registry::new();
        let frames_received = reg(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "egress_spoa_frames_received_total",
                    "SPOP frames received, by type",
                ),
                &["type"],
            )?,
        )?;
        let frames_sent = reg(
            &r,
            IntCounterVec::new(
                Opts::new("egress_spoa_frames_sent_total", "SPOP frames sent, by type"),
                &["type"],
            )?,
        )?;
        let notify_seconds = reg(
            &r,
            Histogram::with_opts(
                HistogramOpts::new(
                    "egress_spoa_notify_duration_seconds",
                    "Time to decode and handle one NOTIFY, excluding the socket write: the average over its read batch",
                )
                .buckets(vec![
                    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2,
                ]),
            )?,
        )?;
        let disconnects = reg(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "egress_spoa_disconnects_total",
                    "DISCONNECT frames by direction (sent by the agent, received from HAProxy) and SPOP status code",
                ),
                &["direction", "status"],
            )?,
        )?;
        let messages = reg(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "egress_spoa_messages_total",
                    "SPOE messages handled, by message and outcome",
                ),
                &["message", "outcome"],
            )?,
        )?;
        Ok(Metrics {
            notify_received: frames_received.with_label_values(&[FrameType::Notify.label()]),
            ack_sent: frames_sent.with_label_values(&[FrameType::Ack.label()]),
            msg_attribution: messages.with_label_values(&["egress-attribution", "ok"]),
            msg_client: messages.with_label_values(&["egress-client", "ok"]),
            msg_unknown: messages.with_label_values(&["unknown", "unknown_message"]),
            msg_bad_args: messages.with_label_values(&["known", "missing_args"]),
            msg_empty: messages.with_label_values(&["none", "empty_notify"]),
            frames_received,
            frames_sent,
            notify_seconds,
            connections: reg(
                &r,
                IntGauge::new("egress_spoa_connections", "Open SPOP connections")?,
            )?,
            connections_accepted: reg(
                &r,
                IntCounter::new(
                    "egress_spoa_connections_accepted_total",
                    "Accepted SPOP connections",
                )?,
            )?,
            disconnects,
            attribution_queue_depth: reg(
                &r,
                IntGauge::new(
                    "egress_spoa_attribution_queue_depth",
                    "Attribution records waiting to be aggregated, sampled on each flush tick before the aggregator takes them (it also takes them whenever they reach a quarter of the queue capacity)",
                )?,
            )?,
            attribution_dropped: reg(
                &r,
                IntCounter::new(
                    "egress_spoa_attribution_dropped_total",
                    "Attribution records dropped because the aggregation queue was full",
                )?,
            )?,
            attribution_rows: reg(
                &r,
                IntCounter::new(
                    "egress_spoa_attribution_rows_total",
                    "Aggregated attribution rows handed to the sink",
                )?,
            )?,
            exit_ip_refresh_failures: reg(
                &r,
                IntCounter::new(
                    "egress_spoa_exit_ip_refresh_failures_total",
                    "Failed exit-IP map refreshes",
                )?,
            )?,
            exit_ip_entries: reg(
                &r,
                IntGauge::new(
                    "egress_spoa_exit_ip_entries",
                    "(backend, server) entries in the exit-IP map",
                )?,
            )?,
            exit_ip_reloads: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "egress_spoa_exit_ip_reloads_total",
                        "Exit-IP map reloads by cause: poll, push (a ledger notification), reconnect, unknown-server",
                    ),
                    &["cause"],
                )?,
            )?,
            exit_ip_listener_up: reg(
                &r,
                IntGauge::new(
                    "egress_spoa_exit_ip_listener_up",
                    "1 while the agent listens to the ledger's exit-IP notifications",
                )?,
            )?,
            exit_ip_unknown: reg(
                &r,
                IntCounter::new(
                    "egress_spoa_exit_ip_unknown_total",
                    "Requests tagged exit=unknown (a server the exit-IP map does not know)",
                )?,
            )?,
            io_errors: reg(
                &r,
                IntCounter::new(
                    "egress_spoa_io_errors_total",
                    "SPOP socket errors other than reset and EOF",
                )?,
            )?,
            registry: r,
        })
    }

    /// The registry to serve on /metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Count a received frame by type.
    pub fn frame_received(&self, kind: FrameType) {
        self.frames_received.with_label_values(&[kind.label()]).inc();
    }

    /// Count a sent frame by type.
    pub fn frame_sent(&self, kind: FrameType) {
        self.frames_sent.with_label_values(&[kind.label()]).inc();
    }

    /// Count a DISCONNECT, `sent` by the agent or received.
    pub fn disconnect(&self, sent: bool, status: Status) {
        let direction = if sent { "sent" } else { "received" };
        self.disconnects
            .with_label_values(&[direction, status.label()])
            .inc();
    }
}
