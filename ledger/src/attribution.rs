//! Attribution rows: which client (by keyed hash) used which server and exit IP, per time window.

use std::net::IpAddr;

use chrono::{DateTime, TimeDelta, Utc};
pub use egress_common::client_hash::ClientHash;

/// The longest aggregation window the schema accepts (its CHECK: `last_seen < window_start + 1 hour`).
/// Queries rely on it to bound `window_start` and prune partitions.
pub const MAX_WINDOW: TimeDelta = TimeDelta::hours(1);

/// One aggregated row, as the agent's in-memory aggregator produces it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttributionRow {
    /// The keyed client hash (stored as the u64's bits in a BIGINT).
    pub client_hash: ClientHash,
    /// HAProxy backend.
    pub backend: String,
    /// HAProxy server.
    pub server: String,
    /// The exit IP the agent believed the server had (None: not known yet).
    pub exit_ip: Option<IpAddr>,
    /// Start of the aggregation window.
    pub window_start: DateTime<Utc>,
    /// First request of this client in the window.
    pub first_seen: DateTime<Utc>,
    /// Last request of this client in the window.
    pub last_seen: DateTime<Utc>,
    /// Requests in the window.
    pub requests: u64,
}

impl AttributionRow {
    /// Whether the row fits the schema's constraints (a row that does not would fail its whole batch).
    pub fn is_valid(&self) -> bool {
        self.first_seen >= self.window_start
            && self.last_seen >= self.first_seen
            && self.last_seen < self.window_start + MAX_WINDOW
            && i64::try_from(self.requests).is_ok()
            && !self.backend.is_empty()
            && !self.server.is_empty()
    }

    /// Fold `other` (same key) into `self`: requests add, first_seen = min, last_seen = max.
    pub fn merge(&mut self, other: &AttributionRow) {
        self.requests = self.requests.saturating_add(other.requests);
        self.first_seen = self.first_seen.min(other.first_seen);
        self.last_seen = self.last_seen.max(other.last_seen);
    }
}

/// Sort rows by key (the unique index's order: a fixed lock order, so two agents upserting
/// overlapping keys cannot deadlock) and merge equal keys (one INSERT ... ON CONFLICT DO UPDATE must
/// not touch a row twice).
pub(crate) fn sort_and_merge(mut rows: Vec<AttributionRow>) -> Vec<AttributionRow> {
    rows.sort_unstable_by(|a, b| {
        (a.client_hash, a.window_start, &a.backend, &a.server, a.exit_ip).cmp(&(
            b.client_hash,
            b.window_start,
            &b.backend,
            &b.server,
            b.exit_ip,
        ))
    });
    let mut out: Vec<AttributionRow> = Vec::with_capacity(rows.len());
    for row in rows {
        match out.last_mut() {
            Some(last)
                if last.client_hash == row.client_hash
                    && last.window_start == row.window_start
                    && last.backend == row.backend
                    && last.server == row.server
                    && last.exit_ip == row.exit_ip =>
            {
                last.merge(&row)
            }
            _ => out.push(row),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(hash: u64, first: i64, last: i64, requests: u64) -> AttributionRow {
        let w = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        AttributionRow {
            client_hash: ClientHash(hash),
            backend: "b".into(),
            server: "s".into(),
            exit_ip: None,
            window_start: w,
            first_seen: w + TimeDelta::seconds(first),
            last_seen: w + TimeDelta::seconds(last),
            requests,
        }
    }

    #[test]
    fn duplicates_merge_like_the_upsert() {
        let merged = sort_and_merge(vec![row(1, 10, 20, 2), row(2, 1, 1, 1), row(1, 5, 15, 3)]);
        assert_eq!(merged.len(), 2);
        let one = merged.iter().find(|r| r.client_hash.0 == 1).unwrap();
        assert_eq!(
            (one.requests, one.first_seen, one.last_seen),
            (5, row(0, 5, 0, 0).first_seen, row(0, 0, 20, 0).last_seen)
        );
    }

    #[test]
    fn validity_matches_the_schema() {
        assert!(row(1, 0, 3599, 1).is_valid());
        assert!(!row(1, 0, 3600, 1).is_valid());
        assert!(!row(1, -1, 3, 1).is_valid());
        assert!(!row(1, 5, 4, 1).is_valid());
        assert!(!row(1, 0, 1, u64::MAX).is_valid());
    }
}
