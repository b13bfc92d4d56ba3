//! State events: what happened to a backend server, when, who did it, and why.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::LazyLock;

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::LedgerError;

/// What happened. Stored as the snake_case name (a CHECK constraint in the schema lists them all).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The checker took the server out (agent-check `down`).
    Quarantined,
    /// The checker put it back.
    Restored,
    /// `set server b/s state drain` was issued.
    DrainStarted,
    /// The server reached zero sessions (or the drain deadline passed).
    Drained,
    /// `shutdown sessions server b/s` cut the remaining sessions.
    SessionsCut,
    /// The exit IP was rotated: `old_ip` -> `new_ip`.
    Rotated,
    /// A rotation did not complete; `reason` says where it stopped.
    RotationFailed,
    /// A probe saw a new exit IP without a rotation: `old_ip` -> `new_ip`.
    ExitIpChanged,
    /// A probe saw traffic leave from an IP that is not the tunnel's (`new_ip`).
    ExitIpLeak,
    /// The first sighting of a server's exit IP (`new_ip`).
    ExitIpObserved,
    /// From now on the server's exit IP is not known (a rotation took it out, or its tunnel failed)
    /// until the next event with a `new_ip`: agents tag it `exit=unknown`, never the old IP.
    ExitIpUnknown,
}

impl EventKind {
    /// Every kind, in schema order.
    pub const ALL: [EventKind; 11] = [
        Self::Quarantined,
        Self::Restored,
        Self::DrainStarted,
        Self::Drained,
        Self::SessionsCut,
        Self::Rotated,
        Self::RotationFailed,
        Self::ExitIpChanged,
        Self::ExitIpLeak,
        Self::ExitIpObserved,
        Self::ExitIpUnknown,
    ];

    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quarantined => "quarantined",
            Self::Restored => "restored",
            Self::DrainStarted => "drain_started",
            Self::Drained => "drained",
            Self::SessionsCut => "sessions_cut",
            Self::Rotated => "rotated",
            Self::RotationFailed => "rotation_failed",
            Self::ExitIpChanged => "exit_ip_changed",
            Self::ExitIpLeak => "exit_ip_leak",
            Self::ExitIpObserved => "exit_ip_observed",
            Self::ExitIpUnknown => "exit_ip_unknown",
        }
    }

    /// Whether an event of this kind with a `new_ip` moves the exit-IP timeline (see the
    /// `exit_ip_intervals` view).
    pub fn sets_exit_ip(self) -> bool {
        matches!(
            self,
            Self::Rotated | Self::ExitIpChanged | Self::ExitIpLeak | Self::ExitIpObserved
        )
    }
}

impl EventKind {
    /// Whether agents must learn of an event of this kind at once (it changes the `exit=` tag):
    /// the writer writes it without waiting for its flush interval, and the schema's trigger
    /// notifies the agents.
    pub fn changes_exit_tag(self) -> bool {
        self.sets_exit_ip() || self == Self::ExitIpUnknown
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not an [`EventKind`]'s (see [`EventKind::as_str`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown event kind {0:?}")]
pub struct UnknownEventKind(pub String);

impl FromStr for EventKind {
    type Err = UnknownEventKind;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownEventKind(s.to_owned()))
    }
}

/// Who caused the event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Actor {
    /// The probe loop and quarantine state machine.
    Checker,
    /// Drain-rotate.
    Rotator,
    /// A human, through the CLI.
    Operator,
}

impl Actor {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Checker => "checker",
            Self::Rotator => "rotator",
            Self::Operator => "operator",
        }
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Actor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "checker" => Ok(Self::Checker),
            "rotator" => Ok(Self::Rotator),
            "operator" => Ok(Self::Operator),
            _ => Err(format!("unknown actor {s:?}")),
        }
    }
}

/// One state event. The producer makes the id (UUIDv7), so writing it twice is a no-op.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique id; also the idempotency key of the spool replay.
    pub id: Uuid,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// HAProxy backend name.
    pub backend: String,
    /// HAProxy server name within the backend.
    pub server: String,
    /// What happened.
    pub kind: EventKind,
    /// Who did it.
    pub actor: Actor,
    /// A short human reason (the probe failure class, an operator's note).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The exit IP before (rotations, changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_ip: Option<IpAddr>,
    /// The exit IP after (rotations, changes, sightings, leaks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_ip: Option<IpAddr>,
    /// Anything else, as JSON (an object by convention).
    #[serde(default = "empty_object")]
    pub detail: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

/// Whether any string or key in `v` holds U+0000 (depth-bounded; serde_json's parser nests 128 deep).
fn json_has_nul(v: &serde_json::Value, depth: usize) -> bool {
    use serde_json::Value;
    if depth > 256 {
        return true;
    }
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(|x| json_has_nul(x, depth + 1)),
        Value::Object(o) => o
            .iter()
            .any(|(k, x)| k.contains('\0') || json_has_nul(x, depth + 1)),
        _ => false,
    }
}

/// Longest backend or server name, in characters (the schema's CHECK: `length(server) BETWEEN 1 AND 256`).
pub const MAX_NAME_LEN: usize = 256;

/// Longest `reason` kept (the schema's CHECK); longer reasons are cut at a char boundary.
pub const MAX_REASON_LEN: usize = 1024;

impl Event {
    /// A new event happening now, with a fresh UUIDv7.
    pub fn new(kind: EventKind, actor: Actor, backend: impl Into<String>, server: impl Into<String>) -> Self {
        Self {
            id: Uuid::now_v7(),
            at: Utc::now().trunc_subsecs(6),
            backend: backend.into(),
            server: server.into(),
            kind,
            actor,
            reason: None,
            old_ip: None,
            new_ip: None,
            detail: empty_object(),
        }
    }

    /// Set the time (default: now). Cut to microseconds, Postgres's precision, so a stored event
    /// reads back equal.
    #[must_use]
    pub fn at(mut self, at: DateTime<Utc>) -> Self {
        self.at = at.trunc_subsecs(6);
        self
    }

    /// Set the reason (cut to [`MAX_REASON_LEN`] bytes).
    #[must_use]
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        let mut r: String = reason.into();
        if r.len() > MAX_REASON_LEN {
            let mut cut = MAX_REASON_LEN;
            while !r.is_char_boundary(cut) {
                cut -= 1;
            }
            r.truncate(cut);
        }
        self.reason = Some(r);
        self
    }

    /// Set the exit IP before.
    #[must_use]
    pub fn old_ip(mut self, ip: IpAddr) -> Self {
        self.old_ip = Some(ip);
        self
    }

    /// Set the exit IP after.
    #[must_use]
    pub fn new_ip(mut self, ip: IpAddr) -> Self {
        self.new_ip = Some(ip);
        self
    }

    /// Set the JSON detail.
    #[must_use]
    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }

    /// Check the event against the schema's limits (names of 1 to [`MAX_NAME_LEN`] characters, a reason
    /// of at most [`MAX_REASON_LEN`] characters, no NUL in any text). An invalid event would be refused
    /// by Postgres for good, so `record_event` drops it (counted) instead of queueing or spooling it.
    pub fn validate(&self) -> Result<(), LedgerError> {
        let bad = |m: String| Err(LedgerError::InvalidInput(format!("event {}: {m}", self.id)));
        for (what, name) in [("backend", &self.backend), ("server", &self.server)] {
            let chars = name.chars().count();
            if chars == 0 || chars > MAX_NAME_LEN {
                return bad(format!(
                    "{what} name has {chars} characters; 1 to {MAX_NAME_LEN} allowed"
                ));
            }
            if name.contains('\0') {
                return bad(format!("{what} name contains NUL"));
            }
        }
        if let Some(r) = &self.reason {
            // The CHECK counts characters; the builder cuts bytes, but the field is public.
            if r.chars().count() > MAX_REASON_LEN {
                return bad(format!("reason longer than {MAX_REASON_LEN} characters"));
            }
            if r.contains('\0') {
                return bad("reason contains NUL".into());
            }
        }
        // Postgres text and jsonb cannot hold U+0000.
        if json_has_nul(&self.detail, 0) {
            return bad("detail contains NUL".into());
        }
        Ok(())
    }

    /// Set the id (tests, and producers that derive ids deterministically).
    #[must_use]
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.id = id;
        self
    }
}

/// The names of the kinds where `pred` holds, as an SQL list literal: `('rotated', 'exit_ip_leak')`.
///
/// Inlined into statements rather than bound: a partial index's predicate (e.g. `events_ip_timeline`,
/// `kind IN (...)`) only serves a query whose planner sees the same literal list. The names are
/// [`EventKind::as_str`], plain snake_case, so no quoting is needed.
pub(crate) fn kinds_sql(pred: impl Fn(EventKind) -> bool) -> String {
    let names: Vec<String> = EventKind::ALL
        .into_iter()
        .filter(|k| pred(*k))
        .map(|k| format!("'{}'", k.as_str()))
        .collect();
    format!("({})", names.join(", "))
}

/// The kinds that move the exit-IP timeline ([`EventKind::sets_exit_ip`]) as an SQL list, in the
/// same order as the schema's `events_ip_timeline` index and `exit_ip_intervals` view list them.
pub(crate) fn exit_ip_kinds_sql() -> &'static str {
    static KINDS: LazyLock<String> = LazyLock::new(|| kinds_sql(EventKind::sets_exit_ip));
    &KINDS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_names_and_serde() {
        for k in EventKind::ALL {
            assert_eq!(k.as_str().parse::<EventKind>(), Ok(k));
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{}\"", k.as_str()));
        }
        assert_eq!(
            "rebooted".parse::<EventKind>(),
            Err(UnknownEventKind("rebooted".into()))
        );
    }

    #[test]
    fn events_round_trip_as_json_lines() {
        let e = Event::new(EventKind::Rotated, Actor::Rotator, "egress", "s1")
            .reason("scheduled")
            .old_ip("203.0.113.7".parse().unwrap())
            .new_ip("2001:db8::1".parse().unwrap())
            .detail(serde_json::json!({"location": "kr"}));
        let line = serde_json::to_string(&e).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), e);
    }

    #[test]
    fn names_outside_the_schema_limits_are_invalid() {
        let ok = |b: &str, s: &str| Event::new(EventKind::Quarantined, Actor::Checker, b, s).validate();
        assert!(ok("b", "s").is_ok());
        assert!(ok("b", &"é".repeat(MAX_NAME_LEN)).is_ok());
        assert!(ok("b", &"s".repeat(MAX_NAME_LEN + 1)).is_err());
        assert!(ok(&"b".repeat(MAX_NAME_LEN + 1), "s").is_err());
        assert!(ok("", "s").is_err());
        assert!(ok("b", "").is_err());
        assert!(ok("b", "s\0").is_err());
        let e = Event::new(EventKind::Quarantined, Actor::Checker, "b", "s");
        assert!(e.clone().reason("why\0").validate().is_err());
        assert!(
            e.clone()
                .detail(serde_json::json!({"k": "a\u{0}b"}))
                .validate()
                .is_err()
        );
        assert!(e.clone().reason("é".repeat(2000)).validate().is_ok());
        let mut long = e;
        long.reason = Some("r".repeat(MAX_REASON_LEN + 1));
        assert!(long.validate().is_err());
    }

    #[test]
    fn long_reasons_are_cut_on_a_char_boundary() {
        let e = Event::new(EventKind::Quarantined, Actor::Checker, "b", "s").reason("é".repeat(1000));
        let r = e.reason.unwrap();
        assert!(r.len() <= MAX_REASON_LEN && r.len() >= MAX_REASON_LEN - 1);
    }
}
