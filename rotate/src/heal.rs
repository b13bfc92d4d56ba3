//! Self-healing: `egress-checker run` rotates a server that stays quarantined (HAProxy shows it
//! `DOWN` for longer than `rotation.quarantined_for`), one at a time, and never while fewer than
//! `rotation.min_healthy` servers of its backend are UP. A server a failed rotation left in MAINT is
//! not retried: it waits for an operator (the `rotation_failed` event says why).

use std::time::Duration;

use egress_ledger::{Store, StoreOptions};
use tokio_util::sync::CancellationToken;

use egress_haproxy_api::{RuntimeApi, StatRow};
use egress_health::leader::Leadership;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

use crate::config::RotationConfig;
use crate::{Rotator, Target};

/// A server due for a self-healing rotation: DOWN for at least `after`, and its backend keeps
/// `min_healthy` UP servers. The longest-down first.
pub fn due<'a>(
    rows: &'a [StatRow],
    candidates: &[(String, String)],
    after: Duration,
    min_healthy: usize,
) -> Option<&'a StatRow> {
    rows.iter()
        .filter(|r| candidates.iter().any(|(b, s)| *b == r.proxy && *s == r.name))
        .filter(|r| r.status.starts_with("DOWN"))
        .filter(|r| lastchg(r) >= after.as_secs())
        .filter(|r| {
            let up = rows
                .iter()
                .filter(|o| o.proxy == r.proxy && o.name != "BACKEND" && o.name != "FRONTEND")
                .filter(|o| o.status.starts_with("UP"))
                .count();
            if up < min_healthy {
                tracing::warn!(backend = %r.proxy, server = %r.name, up, min_healthy, "self-healing rotation held: too few healthy servers");
            }
            up >= min_healthy
        })
        .max_by_key(|r| lastchg(r))
}

/// Self-healing's metrics, registered whether or not self-healing is on (both results exist from the
/// start, so rate() and alerts see a 0 rather than no series).
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Rotations run by this process (self-healing), by result (`ok`, `failed`).
    pub rotations: IntCounterVec,
    /// 1 while this process runs a rotation.
    pub rotation_in_progress: IntGauge,
}

impl Metrics {
    /// Create and register on `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Metrics {
            rotations: IntCounterVec::new(
                Opts::new(
                    "egress_checker_rotations_total",
                    "Drain-rotations run by the checker, by result (ok, failed).",
                ),
                &["result"],
            )?,
            rotation_in_progress: IntGauge::new(
                "egress_checker_rotation_in_progress",
                "1 while the checker runs a drain-rotation.",
            )?,
        };
        for result in ["ok", "failed"] {
            m.rotations.with_label_values(&[result]);
        }
        registry.register(Box::new(m.rotations.clone()))?;
        registry.register(Box::new(m.rotation_in_progress.clone()))?;
        Ok(m)
    }
}

fn lastchg(r: &StatRow) -> u64 {
    r.fields.get("lastchg").and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Run until `shutdown`; returns at once when self-healing is off (no `quarantined_for`) or there is
/// no ledger (`database_url`): a rotation needs the fleet-wide lock.
/// Only the ledger writer among several checkers rotates (`leader`).
/// `stats_api` is where `show stat` is read (the checker's own runtime API, see
/// `egress_health::maint_api`); without one, the first HAProxy instance of the fleet.
pub async fn run(
    cfg: egress_health::Config,
    rot: Option<RotationConfig>,
    database_url: Option<String>,
    stats_api: Option<RuntimeApi>,
    metrics: Metrics,
    leader: Leadership,
    shutdown: CancellationToken,
) {
    let Some(rot) = rot else { return };
    let Some(after) = rot.quarantined_for else { return };
    let Some(url) = database_url else {
        tracing::warn!(
            "rotation.quarantined_for is set but there is no --database-url: self-healing rotations are off"
        );
        return;
    };
    let store = match Store::connect_lazy_with(
        &url,
        StoreOptions {
            max_connections: 2,
            ..StoreOptions::default()
        },
    ) {
        Ok(s) => s,
        Err(error) => {
            tracing::error!(%error, "self-healing rotations are off: bad database URL");
            return;
        }
    };
    let rotator = match Rotator::new(&cfg, Some(&rot), Some(store)) {
        Ok(r) => r,
        Err(error) => {
            tracing::error!(%error, "self-healing rotations are off");
            return;
        }
    };
    let candidates: Vec<(String, String)> = rot
        .locations
        .keys()
        .filter_map(|k| k.split_once('/'))
        .map(|(b, s)| (b.to_owned(), s.to_owned()))
        .collect();
    let every = (after / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
    tracing::info!(after = %humantime::format_duration(after), min_healthy = rot.min_healthy, "self-healing rotations on");
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        if !leader.is_leader() {
            continue;
        }
        // The stats come from the checker's own runtime API (any replica holds the same states);
        // the HAProxy replicas are discovered only when a rotation is due (its plan does it).
        let api = match &stats_api {
            Some(api) => api.clone(),
            None => match rotator.current_fleet().await {
                Ok(f) => f.instances()[0].clone(),
                Err(error) => {
                    tracing::warn!(%error, "self-healing: cannot find the HAProxy instances");
                    continue;
                }
            },
        };
        let rows = match api.show_stat().await {
            Ok(r) => r,
            Err(error) => {
                tracing::warn!(%error, "self-healing: cannot read show stat");
                continue;
            }
        };
        let Some(row) = due(&rows, &candidates, after, rot.min_healthy) else {
            continue;
        };
        let target = Target::Server {
            backend: row.proxy.clone(),
            server: row.name.clone(),
            to: None,
        };
        tracing::warn!(backend = %row.proxy, server = %row.name, down_for_s = lastchg(row), "quarantined too long: rotating");
        metrics.rotation_in_progress.set(1);
        // Not raced against shutdown: a checker stopped mid-rotation (after run()'s 5 s grace)
        // leaves the server drained or in maint, which is safe, and its session's lock is released.
        let result = rotator.rotate(&target).await;
        metrics.rotation_in_progress.set(0);
        let label = if result.is_ok() { "ok" } else { "failed" };
        metrics.rotations.with_label_values(&[label]).inc();
        match result {
            Ok(out) => {
                tracing::info!(server = %row.name, new_ip = %out.new_ip, "self-healing rotation complete")
            }
            Err(error) => tracing::error!(%error, "self-healing rotation failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(px: &str, sv: &str, status: &str, lastchg: u64) -> StatRow {
        StatRow {
            proxy: px.into(),
            name: sv.into(),
            scur: 0,
            status: status.into(),
            weight: 100,
            addr: None,
            fields: [("lastchg".to_owned(), lastchg.to_string())].into(),
        }
    }

    #[test]
    fn picks_the_longest_down_and_respects_min_healthy() {
        let cands: Vec<(String, String)> = ["s1", "s2", "s3"]
            .iter()
            .map(|s| ("egress".into(), (*s).into()))
            .collect();
        let rows = vec![
            row("egress", "s1", "DOWN (agent)", 700),
            row("egress", "s2", "DOWN", 900),
            row("egress", "s3", "UP", 5000),
            row("egress", "s4", "DOWN", 9000), // not a candidate: no locations
            row("egress", "BACKEND", "UP", 1),
        ];
        let ten_min = Duration::from_secs(600);
        assert_eq!(due(&rows, &cands, ten_min, 1).unwrap().name, "s2");
        assert!(due(&rows, &cands, ten_min, 2).is_none(), "only one server UP");
        assert!(due(&rows, &cands, Duration::from_secs(1000), 1).is_none());
        let maint = vec![row("egress", "s1", "MAINT", 9000), row("egress", "s3", "UP", 1)];
        assert!(
            due(&maint, &cands, ten_min, 1).is_none(),
            "a failed rotation's MAINT waits for an operator"
        );
    }
}
