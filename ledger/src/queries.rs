//! Typed point queries about one server's events, for the rotator (`egress-checker rotate`):
//! where it was last rotated to, the last thing the rotator did to it, when its exit IP last moved.
//!
//! Kinds and actors are [`EventKind`] and [`Actor`], never strings: the SQL's kind lists are built
//! from [`EventKind::as_str`] (e.g. the kinds where [`EventKind::sets_exit_ip`] holds).

use chrono::{DateTime, Utc};

use crate::error::LedgerError;
use crate::event::{Actor, EventKind, exit_ip_kinds_sql};
use crate::store::Store;

impl Store {
    /// The `location` recorded (in `detail`) by the last [`EventKind::Rotated`] event of
    /// `backend/server`; None when it was never rotated or that event has no location.
    pub async fn last_rotation_location(
        &self,
        backend: &str,
        server: &str,
    ) -> Result<Option<String>, LedgerError> {
        let q = sqlx::query_scalar::<_, Option<String>>(
            "SELECT detail->>'location' FROM events WHERE backend = $1 AND server = $2 AND kind = $3
             ORDER BY at DESC, id DESC LIMIT 1",
        )
        .bind(backend)
        .bind(server)
        .bind(EventKind::Rotated.as_str());
        Ok(self.bounded(q.fetch_optional(self.pool())).await?.flatten())
    }

    /// The kind of the last event `actor` wrote for `backend/server` (None: it never wrote one).
    /// The rotator asks with [`Actor::Rotator`]: a server whose last rotator event is
    /// [`EventKind::RotationFailed`] was left in MAINT by a rotation.
    pub async fn last_event_kind(
        &self,
        backend: &str,
        server: &str,
        actor: Actor,
    ) -> Result<Option<EventKind>, LedgerError> {
        let q = sqlx::query_scalar::<_, String>(
            "SELECT kind FROM events WHERE backend = $1 AND server = $2 AND actor = $3
             ORDER BY at DESC, id DESC LIMIT 1",
        )
        .bind(backend)
        .bind(server)
        .bind(actor.as_str());
        let Some(kind) = self.bounded(q.fetch_optional(self.pool())).await? else {
            return Ok(None);
        };
        // The schema's CHECK only admits known kinds; an unknown one means a newer schema.
        kind.parse()
            .map(Some)
            .map_err(|e| LedgerError::Query(sqlx::Error::Decode(Box::new(e))))
    }

    /// When the exit IP of `backend/server` last changed: the time of its latest event with a
    /// `new_ip` whose kind moves the timeline ([`EventKind::sets_exit_ip`]); None when the ledger
    /// never saw its exit IP.
    pub async fn last_exit_ip_change(
        &self,
        backend: &str,
        server: &str,
    ) -> Result<Option<DateTime<Utc>>, LedgerError> {
        let sql = format!(
            "SELECT max(at) FROM events WHERE backend = $1 AND server = $2 AND new_ip IS NOT NULL
             AND kind IN {}",
            exit_ip_kinds_sql()
        );
        let q = sqlx::query_scalar::<_, Option<DateTime<Utc>>>(&sql)
            .bind(backend)
            .bind(server);
        self.bounded(q.fetch_one(self.pool())).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::kinds_sql;
    use crate::store::MIGRATOR;

    #[test]
    fn the_exit_ip_kinds_are_pinned_and_are_the_schema_s() {
        let kinds: Vec<EventKind> = EventKind::ALL.into_iter().filter(|k| k.sets_exit_ip()).collect();
        assert_eq!(
            kinds,
            [
                EventKind::Rotated,
                EventKind::ExitIpChanged,
                EventKind::ExitIpLeak,
                EventKind::ExitIpObserved
            ]
        );
        assert_eq!(
            exit_ip_kinds_sql(),
            "('rotated', 'exit_ip_changed', 'exit_ip_leak', 'exit_ip_observed')"
        );
        // The same literal list as the partial index `events_ip_timeline`, so queries filtering on
        // it can use that index.
        let predicate = format!("kind IN {}", exit_ip_kinds_sql());
        assert!(
            MIGRATOR.iter().any(|m| m.sql.contains(&predicate)),
            "no migration has {predicate}"
        );
    }

    #[test]
    fn kind_lists_follow_the_predicate_in_schema_order() {
        assert_eq!(kinds_sql(|k| k == EventKind::Rotated), "('rotated')");
        assert_eq!(
            kinds_sql(EventKind::changes_exit_tag),
            "('rotated', 'exit_ip_changed', 'exit_ip_leak', 'exit_ip_observed', 'exit_ip_unknown')"
        );
    }
}
