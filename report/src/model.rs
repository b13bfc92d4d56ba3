//! The report's data model (serialized as `report.json`, schema `docs/report.schema.json`) and the
//! aggregation that builds it from ledger events.
//!
//! A server's displayed state at any instant is, in this order of precedence:
//! `quarantined` (between a `quarantined` event and the next `restored`), `maint` (after `drained` or
//! `sessions_cut` of a rotation), `draining` (after `drain_started`), else `healthy`. A rotation phase
//! ends with `rotated` or `rotation_failed`. Availability is the share of the observed time a server
//! was `healthy`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use egress_ledger::{Event, EventKind};
use serde::{Deserialize, Serialize};

/// The version of the `report.json` layout; bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// How many servers the "flapped most" list keeps.
pub const TOP_FLAPPERS: usize = 5;

/// A server's state at an instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Taking traffic.
    Healthy,
    /// Taken out by the checker (agent-check `down`).
    Quarantined,
    /// Draining for a rotation (`set server ... state drain`).
    Draining,
    /// Drained and in maintenance while its exit IP is rotated.
    Maint,
}

impl State {
    /// The name used in JSON, CSS classes and Slack.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Quarantined => "quarantined",
            Self::Draining => "draining",
            Self::Maint => "maint",
        }
    }
}

/// The whole artifact.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// A title for people (the pool's name).
    pub title: String,
    /// When the report was made.
    pub generated_at: DateTime<Utc>,
    /// The time range covered.
    pub window: Window,
    /// True when the ledger held more events in the window than one report reads (100 000).
    pub truncated: bool,
    /// Pool-wide figures.
    pub pool: Pool,
    /// One entry per server, sorted by backend then server.
    pub servers: Vec<ServerReport>,
}

/// `[since, until]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// Start (inclusive).
    pub since: DateTime<Utc>,
    /// End (inclusive): the generation time.
    pub until: DateTime<Utc>,
    /// `until - since` in seconds.
    pub seconds: f64,
}

/// Pool-wide figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pool {
    /// Number of servers in the report.
    pub servers: usize,
    /// Healthy server-seconds / observed server-seconds over the window (null when nothing was observed).
    pub availability: Option<f64>,
    /// Servers per state now.
    pub state_now: BTreeMap<State, usize>,
    /// Quarantines that started in the window.
    pub quarantines: u64,
    /// Restores (a quarantine ended) in the window.
    pub recoveries: u64,
    /// Completed rotations in the window.
    pub rotations: u64,
    /// Failed rotations in the window.
    pub rotation_failures: u64,
    /// The servers quarantined most often in the window (at least twice), most first.
    pub most_flapping: Vec<Flapper>,
    /// Servers quarantined now, longest first.
    pub open_quarantines: Vec<OpenQuarantine>,
}

/// A server that was quarantined repeatedly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Flapper {
    /// HAProxy backend.
    pub backend: String,
    /// HAProxy server.
    pub server: String,
    /// Quarantines started in the window.
    pub quarantines: u64,
}

/// A quarantine still in effect at the end of the window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpenQuarantine {
    /// HAProxy backend.
    pub backend: String,
    /// HAProxy server.
    pub server: String,
    /// When it started (possibly before the window).
    pub since: DateTime<Utc>,
    /// Seconds from `since` to the end of the window.
    pub seconds: f64,
    /// The probe failure class.
    pub reason: Option<String>,
}

/// One server over the window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServerReport {
    /// HAProxy backend.
    pub backend: String,
    /// HAProxy server.
    pub server: String,
    /// The state at the end of the window.
    pub state_now: State,
    /// When that state began, when the ledger says (null: no event ever changed it).
    pub state_since: Option<DateTime<Utc>>,
    /// The last exit IP the ledger knows.
    pub exit_ip: Option<String>,
    /// Start of the observed part of the window: `since`, or the server's first event if it had none before.
    pub observed_from: DateTime<Utc>,
    /// Seconds from `observed_from` to the end of the window.
    pub observed_seconds: f64,
    /// Seconds not healthy (quarantined, draining or maint) within the observed part.
    pub unavailable_seconds: f64,
    /// `1 - unavailable_seconds / observed_seconds` (null when `observed_seconds` is 0).
    pub availability: Option<f64>,
    /// Quarantines.
    pub quarantines: Quarantines,
    /// Restores in the window.
    pub recoveries: u64,
    /// Completed rotations in the window, oldest first.
    pub rotations: Vec<Rotation>,
    /// Failed rotations in the window, oldest first.
    pub rotation_failures: Vec<RotationFailure>,
    /// Exit-IP changes seen by probes without a rotation.
    pub exit_ip_changes: u64,
    /// Exit-IP leaks seen by probes.
    pub exit_ip_leaks: u64,
    /// The timeline: consecutive, non-overlapping segments covering `[observed_from, until]`.
    pub segments: Vec<Segment>,
}

/// Quarantine figures of one server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Quarantines {
    /// Quarantines that started in the window.
    pub count: u64,
    /// Seconds quarantined within the window (including a quarantine that began before it).
    pub total_seconds: f64,
    /// Reasons of the quarantines counted in `count`, most frequent first.
    pub reasons: Vec<ReasonCount>,
}

/// A reason and how often it occurred.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReasonCount {
    /// The reason (`unknown` when the event had none).
    pub reason: String,
    /// Occurrences.
    pub count: u64,
}

/// A completed rotation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rotation {
    /// When it completed.
    pub at: DateTime<Utc>,
    /// Exit IP before.
    pub old_ip: Option<String>,
    /// Exit IP after.
    pub new_ip: Option<String>,
    /// Why (scheduled, quarantined too long, an operator's note).
    pub reason: Option<String>,
}

/// A failed rotation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RotationFailure {
    /// When it failed.
    pub at: DateTime<Utc>,
    /// Where it stopped.
    pub reason: Option<String>,
}

/// A stretch of time in one state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    /// The state.
    pub state: State,
    /// Start (inclusive).
    pub from: DateTime<Utc>,
    /// End (exclusive; the window's end for the last segment).
    pub to: DateTime<Utc>,
}

fn seconds(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    ((to - from).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6).max(0.0)
}

#[derive(Debug, Default)]
struct Tracker {
    quarantined: Option<(DateTime<Utc>, Option<String>)>,
    phase: Option<State>,
    exit_ip: Option<String>,
    state_since: Option<DateTime<Utc>>,
    observed_from: Option<DateTime<Utc>>,
    segments: Vec<Segment>,
    quarantine_count: u64,
    reasons: BTreeMap<String, u64>,
    recoveries: u64,
    rotations: Vec<Rotation>,
    rotation_failures: Vec<RotationFailure>,
    exit_ip_changes: u64,
    exit_ip_leaks: u64,
}

impl Tracker {
    fn state(&self) -> State {
        if self.quarantined.is_some() {
            State::Quarantined
        } else {
            self.phase.unwrap_or(State::Healthy)
        }
    }

    /// Apply one event. `count` is false for the events before the window (they set the state only).
    fn apply(&mut self, e: &Event, count: bool) {
        let before = self.state();
        match e.kind {
            EventKind::Quarantined if self.quarantined.is_none() => {
                self.quarantined = Some((e.at, e.reason.clone()));
                if count {
                    self.quarantine_count += 1;
                    let reason = e.reason.clone().unwrap_or_else(|| "unknown".into());
                    *self.reasons.entry(reason).or_default() += 1;
                }
            }
            EventKind::Restored => {
                let ended = self.quarantined.take().is_some();
                if ended && count {
                    self.recoveries += 1;
                }
            }
            EventKind::DrainStarted => self.phase = Some(State::Draining),
            EventKind::Drained | EventKind::SessionsCut => self.phase = Some(State::Maint),
            EventKind::Rotated => {
                self.phase = None;
                if count {
                    self.rotations.push(Rotation {
                        at: e.at,
                        old_ip: e.old_ip.map(|i| i.to_string()),
                        new_ip: e.new_ip.map(|i| i.to_string()),
                        reason: e.reason.clone(),
                    });
                }
            }
            EventKind::RotationFailed => {
                self.phase = None;
                if count {
                    self.rotation_failures.push(RotationFailure {
                        at: e.at,
                        reason: e.reason.clone(),
                    });
                }
            }
            EventKind::ExitIpChanged if count => self.exit_ip_changes += 1,
            EventKind::ExitIpLeak if count => self.exit_ip_leaks += 1,
            _ => {}
        }
        if e.kind.sets_exit_ip()
            && let Some(ip) = e.new_ip
        {
            self.exit_ip = Some(ip.to_string());
        }
        let after = self.state();
        if after != before {
            self.state_since = Some(e.at);
            if count {
                self.split(e.at, after);
            }
        }
    }

    /// Close the open segment at `at` and open one in `state`.
    fn split(&mut self, at: DateTime<Utc>, state: State) {
        match self.segments.last_mut() {
            Some(last) if last.from == at => last.state = state,
            Some(last) => {
                last.to = at;
                self.segments.push(Segment {
                    state,
                    from: at,
                    to: at,
                });
            }
            None => self.segments.push(Segment {
                state,
                from: at,
                to: at,
            }),
        }
        // Same state on both sides of a zero-length segment: merge.
        let n = self.segments.len();
        if n >= 2 && self.segments[n - 2].state == state {
            self.segments.pop();
        }
    }
}

/// Build the report for `[since, until]` from the events before the window (state at `since`) and
/// the events inside it (oldest first).
pub fn build(
    title: &str,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    before_window: &[Event],
    in_window: &[Event],
    truncated: bool,
) -> Report {
    let mut servers: BTreeMap<(String, String), Tracker> = BTreeMap::new();
    for e in before_window.iter().filter(|e| e.at < since) {
        let t = servers.entry((e.backend.clone(), e.server.clone())).or_default();
        t.apply(e, false);
    }
    for t in servers.values_mut() {
        t.observed_from = Some(since);
        t.segments.push(Segment {
            state: t.state(),
            from: since,
            to: since,
        });
    }
    let mut sorted: Vec<&Event> = in_window
        .iter()
        .filter(|e| e.at >= since && e.at <= until)
        .collect();
    sorted.sort_by_key(|e| (e.at, e.id));
    for e in sorted {
        let t = servers.entry((e.backend.clone(), e.server.clone())).or_default();
        if t.observed_from.is_none() {
            // First sighting of this server: assume it was healthy just before its first event.
            t.observed_from = Some(e.at);
            t.segments.push(Segment {
                state: State::Healthy,
                from: e.at,
                to: e.at,
            });
        }
        t.apply(e, true);
    }

    let mut out = Vec::with_capacity(servers.len());
    let mut state_now: BTreeMap<State, usize> =
        [State::Healthy, State::Quarantined, State::Draining, State::Maint]
            .into_iter()
            .map(|s| (s, 0))
            .collect();
    let (mut healthy_total, mut observed_total) = (0.0, 0.0);
    let mut open = Vec::new();
    for ((backend, server), mut t) in servers {
        if let Some(last) = t.segments.last_mut() {
            last.to = until;
        }
        let observed_from = t.observed_from.unwrap_or(since);
        let observed_seconds = seconds(observed_from, until);
        let mut unavailable = 0.0;
        let mut quarantined_seconds = 0.0;
        for s in &t.segments {
            let d = seconds(s.from, s.to);
            if s.state != State::Healthy {
                unavailable += d;
            }
            if s.state == State::Quarantined {
                quarantined_seconds += d;
            }
        }
        healthy_total += observed_seconds - unavailable;
        observed_total += observed_seconds;
        let now = t.state();
        *state_now.entry(now).or_default() += 1;
        if let Some((at, reason)) = &t.quarantined {
            open.push(OpenQuarantine {
                backend: backend.clone(),
                server: server.clone(),
                since: *at,
                seconds: seconds(*at, until),
                reason: reason.clone(),
            });
        }
        let mut reasons: Vec<ReasonCount> = t
            .reasons
            .into_iter()
            .map(|(reason, count)| ReasonCount { reason, count })
            .collect();
        reasons.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.reason.cmp(&b.reason)));
        out.push(ServerReport {
            backend,
            server,
            state_now: now,
            state_since: t.state_since,
            exit_ip: t.exit_ip,
            observed_from,
            observed_seconds,
            unavailable_seconds: unavailable,
            availability: (observed_seconds > 0.0).then(|| 1.0 - unavailable / observed_seconds),
            quarantines: Quarantines {
                count: t.quarantine_count,
                total_seconds: quarantined_seconds,
                reasons,
            },
            recoveries: t.recoveries,
            rotations: t.rotations,
            rotation_failures: t.rotation_failures,
            exit_ip_changes: t.exit_ip_changes,
            exit_ip_leaks: t.exit_ip_leaks,
            segments: t.segments,
        });
    }
    open.sort_by(|a, b| a.since.cmp(&b.since).then_with(|| a.server.cmp(&b.server)));
    let mut most_flapping: Vec<Flapper> = out
        .iter()
        .filter(|s| s.quarantines.count >= 2)
        .map(|s| Flapper {
            backend: s.backend.clone(),
            server: s.server.clone(),
            quarantines: s.quarantines.count,
        })
        .collect();
    most_flapping.sort_by(|a, b| {
        b.quarantines
            .cmp(&a.quarantines)
            .then_with(|| a.server.cmp(&b.server))
    });
    most_flapping.truncate(TOP_FLAPPERS);
    let pool = Pool {
        servers: out.len(),
        availability: (observed_total > 0.0).then(|| healthy_total / observed_total),
        state_now,
        quarantines: out.iter().map(|s| s.quarantines.count).sum(),
        recoveries: out.iter().map(|s| s.recoveries).sum(),
        rotations: out.iter().map(|s| s.rotations.len() as u64).sum(),
        rotation_failures: out.iter().map(|s| s.rotation_failures.len() as u64).sum(),
        most_flapping,
        open_quarantines: open,
    };
    Report {
        schema_version: SCHEMA_VERSION,
        title: title.to_owned(),
        generated_at: until,
        window: Window {
            since,
            until,
            seconds: seconds(since, until),
        },
        truncated,
        pool,
        servers: out,
    }
}
