//! The queries behind `egress-checker report`: every server's events inside a window, plus what was
//! in effect when the window opened (the last state event and the last exit-IP event before it).

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::error::LedgerError;
use crate::event::Event;
use crate::store::{EVENT_COLUMNS, EventRow, MAX_QUERY_ROWS, Store, events_from_rows};

/// Deadline for each report query (connect and network included).
const REPORT_QUERY_TIMEOUT: Duration = Duration::from_secs(60);

/// What the report reads: for each server, the state it was in at `since` and what happened after.
#[derive(Clone, Debug, Default)]
pub struct ReportEvents {
    /// Events with `since <= at <= until`, oldest first (at most [`MAX_QUERY_ROWS`]).
    pub in_window: Vec<Event>,
    /// Per server, its latest events before `since` that say what was in effect then: the last
    /// quarantined/restored event, the last drain_started/drained/sessions_cut/rotated/rotation_failed
    /// event, and the last exit-IP-bearing event. Servers with no event before `since` are absent.
    pub before_window: Vec<Event>,
    /// Whether `in_window` was cut at [`MAX_QUERY_ROWS`].
    pub truncated: bool,
}

async fn bounded<T>(fut: impl Future<Output = Result<T, sqlx::Error>>) -> Result<T, LedgerError> {
    match tokio::time::timeout(REPORT_QUERY_TIMEOUT, fut).await {
        Ok(r) => r.map_err(LedgerError::Query),
        Err(_) => Err(LedgerError::Timeout(REPORT_QUERY_TIMEOUT)),
    }
}

impl Store {
    /// Everything the report needs about `[since, until]`. Servers come from `ledger_servers`
    /// (every server an event ever named), so a server quiet all window still has its prior state.
    pub async fn report_events(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<ReportEvents, LedgerError> {
        let in_window_sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE at >= $1 AND at <= $2 ORDER BY at, id LIMIT $3"
        );
        let rows: Vec<EventRow> = bounded(
            sqlx::query_as::<_, EventRow>(&in_window_sql)
                .bind(since)
                .bind(until)
                .bind(MAX_QUERY_ROWS + 1)
                .fetch_all(self.pool()),
        )
        .await?;
        let truncated = rows.len() as i64 > MAX_QUERY_ROWS;
        let mut in_window = events_from_rows(rows);
        in_window.truncate(MAX_QUERY_ROWS as usize);

        // One backward probe of the (server, at) index per server and event group.
        let before_sql = format!(
            "SELECT e.* FROM ledger_servers s,
               LATERAL (VALUES
                 (ARRAY['quarantined', 'restored']),
                 (ARRAY['drain_started', 'drained', 'sessions_cut', 'rotated', 'rotation_failed']),
                 (ARRAY['rotated', 'exit_ip_changed', 'exit_ip_leak', 'exit_ip_observed'])) g(kinds),
               LATERAL (SELECT {EVENT_COLUMNS} FROM events
                        WHERE server = s.server AND backend = s.backend AND at < $1
                          AND kind = ANY(g.kinds)
                        ORDER BY at DESC, id DESC LIMIT 1) e"
        );
        let rows: Vec<EventRow> = bounded(
            sqlx::query_as::<_, EventRow>(&before_sql)
                .bind(since)
                .fetch_all(self.pool()),
        )
        .await?;
        let mut before_window = events_from_rows(rows);
        before_window.sort_by_key(|e| (e.at, e.id));
        before_window.dedup_by_key(|e| e.id);
        Ok(ReportEvents {
            in_window,
            before_window,
            truncated,
        })
    }
}
