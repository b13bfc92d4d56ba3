//! The ledger writer's Prometheus metrics, registered once per registry.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Why attribution rows were shed (the `reason` label of `egress_ledger_attribution_shed_rows_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShedReason {
    /// The in-memory row budget was full (Postgres slow or down).
    QueueFull,
    /// The row broke the schema's rules (see `AttributionRow::is_valid`).
    Invalid,
    /// The row's window is older than the retention.
    Expired,
    /// Postgres rejected the batch for a non-transient reason.
    Rejected,
    /// Shutdown while Postgres was down.
    Shutdown,
}

impl ShedReason {
    fn label(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::Invalid => "invalid",
            Self::Expired => "expired",
            Self::Rejected => "rejected",
            Self::Shutdown => "shutdown",
        }
    }
}

/// All writer metrics.
#[derive(Clone, Debug)]
pub(crate) struct Metrics {
    pub events_written: IntCounter,
    pub events_spooled: IntCounter,
    pub events_replayed: IntCounter,
    pub events_dropped: IntCounter,
    pub events_rejected: IntCounter,
    pub spool_corrupt_lines: IntCounter,
    pub spool_bytes: IntGauge,
    pub attribution_written: IntCounter,
    attribution_shed: IntCounterVec,
    pub db_up: IntGauge,
    pub pending_oldest_age: prometheus::Gauge,
    pub events_write_seconds: Histogram,
    pub attribution_write_seconds: Histogram,
}

impl Metrics {
    pub(crate) fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let events_written = IntCounter::new(
            "egress_ledger_events_written_total",
            "State events committed to Postgres (replayed ones included).",
        )?;
        let events_spooled = IntCounter::new(
            "egress_ledger_events_spooled_total",
            "State events appended to the local spool file (queue full, Postgres down, or shutdown).",
        )?;
        let events_replayed = IntCounter::new(
            "egress_ledger_events_replayed_total",
            "Spooled events replayed to Postgres (duplicates of already-stored ids included).",
        )?;
        let events_dropped = IntCounter::new(
            "egress_ledger_events_dropped_total",
            "State events lost: the spool was full or unwritable, or Postgres rejected them for good.",
        )?;
        let events_rejected = IntCounter::new(
            "egress_ledger_events_rejected_total",
            "State events refused for good (invalid at the source, or rejected by Postgres) and skipped; \
             also counted in egress_ledger_events_dropped_total.",
        )?;
        let spool_corrupt_lines = IntCounter::new(
            "egress_ledger_spool_corrupt_lines_total",
            "Spool lines skipped on replay as unreadable, and torn partial lines cut off the spool.",
        )?;
        let spool_bytes = IntGauge::new(
            "egress_ledger_spool_bytes",
            "Size of the local spool files, in bytes.",
        )?;
        let attribution_written = IntCounter::new(
            "egress_ledger_attribution_rows_written_total",
            "Attribution rows upserted into Postgres.",
        )?;
        let attribution_shed = IntCounterVec::new(
            Opts::new(
                "egress_ledger_attribution_shed_rows_total",
                "Attribution rows dropped without being written, by reason.",
            ),
            &["reason"],
        )?;
        let write_seconds = HistogramVec::new(
            HistogramOpts::new(
                "egress_ledger_write_duration_seconds",
                "Duration of one batched write to Postgres, by table.",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["table"],
        )?;
        let db_up = IntGauge::new(
            "egress_ledger_db_up",
            "1 when the last write to Postgres succeeded, 0 while it fails.",
        )?;
        let pending_oldest_age = prometheus::Gauge::new(
            "egress_ledger_pending_oldest_age_seconds",
            "Age of the oldest state event held in memory and not yet written (0 when none).",
        )?;
        registry.register(Box::new(events_written.clone()))?;
        registry.register(Box::new(events_spooled.clone()))?;
        registry.register(Box::new(events_replayed.clone()))?;
        registry.register(Box::new(events_dropped.clone()))?;
        registry.register(Box::new(events_rejected.clone()))?;
        registry.register(Box::new(spool_corrupt_lines.clone()))?;
        registry.register(Box::new(spool_bytes.clone()))?;
        registry.register(Box::new(attribution_written.clone()))?;
        registry.register(Box::new(attribution_shed.clone()))?;
        registry.register(Box::new(write_seconds.clone()))?;
        registry.register(Box::new(db_up.clone()))?;
        registry.register(Box::new(pending_oldest_age.clone()))?;
        for r in [
            ShedReason::QueueFull,
            ShedReason::Invalid,
            ShedReason::Expired,
            ShedReason::Rejected,
            ShedReason::Shutdown,
        ] {
            attribution_shed.with_label_values(&[r.label()]);
        }
        let events_write_seconds = write_seconds.with_label_values(&["events"]);
        let attribution_write_seconds = write_seconds.with_label_values(&["attribution"]);
        Ok(Self {
            events_written,
            events_spooled,
            events_replayed,
            events_dropped,
            events_rejected,
            spool_corrupt_lines,
            spool_bytes,
            attribution_written,
            attribution_shed,
            db_up,
            pending_oldest_age,
            events_write_seconds,
            attribution_write_seconds,
        })
    }

    pub(crate) fn shed(&self, reason: ShedReason, rows: usize) {
        self.attribution_shed
            .with_label_values(&[reason.label()])
            .inc_by(rows as u64);
    }

    pub(crate) fn shed_total(&self) -> u64 {
        [
            ShedReason::QueueFull,
            ShedReason::Invalid,
            ShedReason::Expired,
            ShedReason::Rejected,
            ShedReason::Shutdown,
        ]
        .into_iter()
        .map(|r| self.attribution_shed.with_label_values(&[r.label()]).get())
        .sum()
    }
}
