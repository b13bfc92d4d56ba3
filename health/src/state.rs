//! The quarantine state machine: pure and deterministic (time is passed in), so every rule is unit-
//! and property-tested without sockets.
//!
//! Rules: `quarantine_after` consecutive failures quarantine; `restore_after` consecutive successes
//! restore into a slow-start ramp (agent `N%` from `ramp_start_percent` to 100 over `ramp`); an
//! exit-IP leak quarantines at once; never more than `max_quarantined_share` of the pool is
//! quarantined for ordinary failures — past it the least-failed stay up and the guard is reported.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::probe::class::FailureClass;

/// The identity HAProxy sends in `agent-send`: `<backend>/<server>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerKey {
    /// HAProxy backend.
    pub backend: Arc<str>,
    /// HAProxy server.
    pub server: Arc<str>,
}

impl ServerKey {
    /// A key from its two names.
    pub fn new(backend: &str, server: &str) -> Self {
        ServerKey {
            backend: backend.into(),
            server: server.into(),
        }
    }
}

impl fmt::Display for ServerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.backend, self.server)
    }
}

/// A server's health as the checker sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Not probed to a conclusion yet (checker start): the agent changes nothing in HAProxy.
    Unknown,
    /// Serving at full weight.
    Healthy,
    /// Restored; the weight ramps up.
    Ramping {
        /// When the restore happened.
        since: Instant,
    },
    /// Held down through the agent.
    Quarantined {
        /// When.
        since: Instant,
        /// The failure class that decided it.
        reason: FailureClass,
    },
}

/// `Health` without its data: the label of a transition end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HealthKind {
    /// See [`Health::Unknown`].
    Unknown,
    /// See [`Health::Healthy`].
    Healthy,
    /// See [`Health::Ramping`].
    Ramping,
    /// See [`Health::Quarantined`].
    Quarantined,
}

impl HealthKind {
    /// Label spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthKind::Unknown => "unknown",
            HealthKind::Healthy => "healthy",
            HealthKind::Ramping => "ramping",
            HealthKind::Quarantined => "quarantined",
        }
    }
}

impl Health {
    /// The kind.
    pub fn kind(&self) -> HealthKind {
        match self {
            Health::Unknown => HealthKind::Unknown,
            Health::Healthy => HealthKind::Healthy,
            Health::Ramping { .. } => HealthKind::Ramping,
            Health::Quarantined { .. } => HealthKind::Quarantined,
        }
    }
}

/// One probe's verdict, after the control probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The tunnel works.
    Success {
        /// The probe also checked the exit IP and it was clean.
        exit_ip_verified: bool,
    },
    /// The backend failed.
    Failure(FailureClass),
    /// Says nothing about the backend (the control probe shares the failure).
    Inconclusive,
}

/// A change of a server's health: one ledger event and one metric update. `from == to` happens
/// once: a server already quarantined for another reason is found leaking (`reason` exit-ip-leak).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// HAProxy backend.
    pub backend: Arc<str>,
    /// HAProxy server.
    pub server: Arc<str>,
    /// Before.
    pub from: HealthKind,
    /// After.
    pub to: HealthKind,
    /// The failure class behind a quarantine (and the one a restore ends).
    pub reason: Option<FailureClass>,
    /// Consecutive failures when it happened.
    pub consecutive_failures: u32,
    /// Wall-clock time.
    pub at: DateTime<Utc>,
}

/// Decision parameters (see [`crate::config::DecisionConfig`]).
#[derive(Clone, Copy, Debug)]
pub struct Params {
    /// Failures that quarantine.
    pub quarantine_after: u32,
    /// Successes that restore.
    pub restore_after: u32,
    /// Slow-start window.
    pub ramp: Duration,
    /// Weight percent at the start of the ramp.
    pub ramp_start_percent: u8,
    /// Pool share that may be quarantined.
    pub max_quarantined_share: f64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            quarantine_after: 5,
            restore_after: 1,
            ramp: Duration::from_secs(10),
            ramp_start_percent: 10,
            max_quarantined_share: 0.5,
        }
    }
}

/// What the agent answers for a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `up N%` (100 when healthy: the weight must come back after a ramp).
    Up(u8),
    /// `down #<class>`.
    Down(FailureClass),
    /// A line with no health, admin or weight word: HAProxy keeps its state.
    NoChange(&'static str),
}

impl Reply {
    /// The agent line, newline included. Never `ready`, `drain` or `maint`: those share HAProxy's
    /// admin flags with the runtime API and would cancel an operator's or the rotator's drain.
    pub fn line(self) -> String {
        match self {
            Reply::Up(p) => format!("up {p}%\n"),
            // configuration.txt agent-check: "a description string after a sharp ('#')".
            Reply::Down(c) => format!("down #{}\n", c.as_str()),
            Reply::NoChange(why) => format!("#{why}\n"),
        }
    }
}

#[derive(Clone, Debug)]
struct ServerState {
    health: Health,
    failures: u32,
    successes: u32,
    last_failure: Option<FailureClass>,
    /// Past the threshold but kept up by the guard.
    held: bool,
}

/// The pool's state machine.
#[derive(Debug)]
pub struct Machine {
    params: Params,
    servers: HashMap<ServerKey, ServerState>,
    /// Servers with `held` set, kept in step so the hot path knows when a rebalance can matter.
    held_count: usize,
}

impl Machine {
    /// An empty pool.
    pub fn new(params: Params) -> Self {
        Machine {
            params,
            servers: HashMap::new(),
            held_count: 0,
        }
    }

    /// The parameters.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Make the pool exactly `keys`: new servers start `Unknown`, vanished ones are forgotten.
    pub fn set_servers(&mut self, keys: &[ServerKey]) {
        let wanted: std::collections::HashSet<&ServerKey> = keys.iter().collect();
        self.servers.retain(|k, _| wanted.contains(k));
        for k in keys {
            self.servers.entry(k.clone()).or_insert(ServerState {
                health: Health::Unknown,
                failures: 0,
                successes: 0,
                last_failure: None,
                held: false,
            });
        }
        self.held_count = self.servers.values().filter(|s| s.held).count();
    }

    /// Number of servers.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Whether the pool is empty.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// A server's health.
    pub fn health(&self, key: &ServerKey) -> Option<Health> {
        self.servers.get(key).map(|s| s.health)
    }

    /// Consecutive failures of a server.
    pub fn failures(&self, key: &ServerKey) -> Option<u32> {
        self.servers.get(key).map(|s| s.failures)
    }

    /// Most servers that may be quarantined for ordinary failures (Envoy's max_ejection_percent,
    /// which also "will eject at least one host regardless").
    pub fn quarantine_cap(&self) -> usize {
        if self.params.max_quarantined_share <= 0.0 {
            return 0;
        }
        let cap = (self.params.max_quarantined_share * self.servers.len() as f64).floor() as usize;
        cap.max(1)
    }

    /// Servers quarantined now.
    pub fn quarantined(&self) -> usize {
        self.servers
            .values()
            .filter(|s| matches!(s.health, Health::Quarantined { .. }))
            .count()
    }

    /// Servers past the threshold that the guard keeps up.
    pub fn held(&self) -> usize {
        self.held_count
    }

    /// Count of servers per health kind.
    pub fn counts(&self) -> [(HealthKind, usize); 4] {
        let mut c = [
            (HealthKind::Unknown, 0),
            (HealthKind::Healthy, 0),
            (HealthKind::Ramping, 0),
            (HealthKind::Quarantined, 0),
        ];
        for s in self.servers.values() {
            let i = match s.health.kind() {
                HealthKind::Unknown => 0,
                HealthKind::Healthy => 1,
                HealthKind::Ramping => 2,
                HealthKind::Quarantined => 3,
            };
            c[i].1 += 1;
        }
        c
    }

    /// Apply one probe outcome. Returns the transitions it caused (possibly for other servers: a
    /// restore frees a guard slot for a held one).
    pub fn record(
        &mut self,
        key: &ServerKey,
        outcome: Outcome,
        now: Instant,
        wall: DateTime<Utc>,
    ) -> Vec<Transition> {
        let mut out = Vec::new();
        let params = self.params;
        let Some(s) = self.servers.get_mut(key) else {
            return out;
        };
        match outcome {
            Outcome::Inconclusive => return out,
            Outcome::Success { exit_ip_verified } => {
                // A leak is only cleared by a probe that looked at the exit IP.
                if let Health::Quarantined {
                    reason: FailureClass::ExitIpLeak,
                    ..
                } = s.health
                    && !exit_ip_verified
                {
                    return out;
                }
                s.failures = 0;
                if std::mem::take(&mut s.held) {
                    self.held_count = self.held_count.saturating_sub(1);
                }
                s.successes = s.successes.saturating_add(1);
                let from = s.health;
                let to = match from {
                    Health::Unknown => Some(Health::Healthy),
                    Health::Quarantined { .. } if s.successes >= params.restore_after => {
                        Some(if params.ramp.is_zero() {
                            Health::Healthy
                        } else {
                            Health::Ramping { since: now }
                        })
                    }
                    _ => None,
                };
                let Some(to) = to else { return out };
                let reason = match from {
                    Health::Quarantined { reason, .. } => Some(reason),
                    _ => None,
                };
                s.health = to;
                out.push(transition(key, from, to, reason, 0, wall));
                // A restore frees a guard slot: only then can a held server move.
                if reason.is_none() || self.held_count == 0 {
                    return out;
                }
            }
            Outcome::Failure(class) => {
                s.successes = 0;
                s.failures = s.failures.saturating_add(1);
                s.last_failure = Some(class);
                if class == FailureClass::ExitIpLeak {
                    // A leak sends traffic from the node itself: quarantine at once, guard or not.
                    if std::mem::take(&mut s.held) {
                        self.held_count = self.held_count.saturating_sub(1);
                    }
                    let from = s.health;
                    let to = Health::Quarantined {
                        since: now,
                        reason: class,
                    };
                    let already = matches!(
                        from,
                        Health::Quarantined {
                            reason: FailureClass::ExitIpLeak,
                            ..
                        }
                    );
                    if already {
                        return out;
                    }
                    s.health = to;
                    out.push(transition(key, from, to, Some(class), s.failures, wall));
                    // The leak took a guard slot: fall through so the cap is enforced again.
                } else if s.failures < params.quarantine_after
                    || (matches!(s.health, Health::Quarantined { .. }) && self.held_count == 0)
                {
                    // Below the threshold, or already quarantined with nobody waiting for a slot:
                    // the quarantined set cannot change, so skip the O(pool) rebalance (hot path).
                    return out;
                }
            }
        }
        self.rebalance(now, wall, &mut out);
        out
    }

    /// Time-driven changes: ramps that ended become `Healthy`.
    pub fn tick(&mut self, now: Instant, wall: DateTime<Utc>) -> Vec<Transition> {
        let mut out = Vec::new();
        let ramp = self.params.ramp;
        let mut keys: Vec<&ServerKey> = self
            .servers
            .iter()
            .filter(|(_, s)| matches!(s.health, Health::Ramping { since } if now.saturating_duration_since(since) >= ramp))
            .map(|(k, _)| k)
            .collect();
        keys.sort();
        let keys: Vec<ServerKey> = keys.into_iter().cloned().collect();
        for k in keys {
            if let Some(s) = self.servers.get_mut(&k) {
                let from = s.health;
                s.health = Health::Healthy;
                out.push(transition(&k, from, Health::Healthy, None, s.failures, wall));
            }
        }
        out
    }

    /// Decide who is quarantined for ordinary failures: every server past the threshold, unless the
    /// guard caps it; then the most-failed are quarantined and the least-failed stay up (held).
    /// Ties keep the incumbent, then go by name, so the result is deterministic and does not flap.
    fn rebalance(&mut self, now: Instant, wall: DateTime<Utc>, out: &mut Vec<Transition>) {
        let threshold = self.params.quarantine_after;
        let leaks = self
            .servers
            .values()
            .filter(|s| {
                matches!(
                    s.health,
                    Health::Quarantined {
                        reason: FailureClass::ExitIpLeak,
                        ..
                    }
                )
            })
            .count();
        let cap = self.quarantine_cap().saturating_sub(leaks);
        let mut candidates: Vec<(&ServerKey, u32, bool)> = self
            .servers
            .iter()
            .filter(|(_, s)| {
                s.failures >= threshold
                    && !matches!(
                        s.health,
                        Health::Quarantined {
                            reason: FailureClass::ExitIpLeak,
                            ..
                        }
                    )
            })
            .map(|(k, s)| (k, s.failures, matches!(s.health, Health::Quarantined { .. })))
            .collect();
        candidates.sort_by(|a, b| b.1.cmp(&a.1).then(b.2.cmp(&a.2)).then(a.0.cmp(b.0)));
        self.held_count = candidates.len().saturating_sub(cap);
        let decided: Vec<(ServerKey, bool)> = candidates
            .iter()
            .enumerate()
            .map(|(i, (k, _, _))| ((*k).clone(), i < cap))
            .collect();
        for (k, quarantine) in decided {
            let Some(s) = self.servers.get_mut(&k) else {
                continue;
            };
            let from = s.health;
            match (quarantine, from) {
                (true, Health::Quarantined { .. }) => s.held = false,
                (true, _) => {
                    let reason = s.last_failure.unwrap_or(FailureClass::ConnectError);
                    let to = Health::Quarantined { since: now, reason };
                    s.health = to;
                    s.held = false;
                    out.push(transition(&k, from, to, Some(reason), s.failures, wall));
                }
                (false, Health::Quarantined { reason, .. }) => {
                    // Displaced by a server that failed more: it stays up, held by the guard.
                    s.held = true;
                    s.health = Health::Healthy;
                    out.push(transition(
                        &k,
                        from,
                        Health::Healthy,
                        Some(reason),
                        s.failures,
                        wall,
                    ));
                }
                (false, _) => s.held = true,
            }
        }
    }

    /// The agent reply for `key` at `now`; `None` when the server is not in the pool.
    pub fn reply(&self, key: &ServerKey, now: Instant) -> Option<Reply> {
        let s = self.servers.get(key)?;
        Some(match s.health {
            Health::Unknown => Reply::NoChange("not-yet-probed"),
            Health::Healthy => Reply::Up(100),
            Health::Ramping { since } => {
                Reply::Up(ramp_percent(&self.params, now.saturating_duration_since(since)))
            }
            Health::Quarantined { reason, .. } => Reply::Down(reason),
        })
    }
}

/// Linear slow start from `ramp_start_percent` to 100 over `ramp`.
pub fn ramp_percent(p: &Params, elapsed: Duration) -> u8 {
    if p.ramp.is_zero() || elapsed >= p.ramp {
        return 100;
    }
    let start = f64::from(p.ramp_start_percent.clamp(1, 100));
    let frac = elapsed.as_secs_f64() / p.ramp.as_secs_f64();
    (start + (100.0 - start) * frac).floor().clamp(start, 100.0) as u8
}

fn transition(
    key: &ServerKey,
    from: Health,
    to: Health,
    reason: Option<FailureClass>,
    failures: u32,
    at: DateTime<Utc>,
) -> Transition {
    Transition {
        backend: key.backend.clone(),
        server: key.server.clone(),
        from: from.kind(),
        to: to.kind(),
        reason,
        consecutive_failures: failures,
        at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S503: FailureClass = FailureClass::ConnectStatus(crate::probe::class::StatusBucket::new_const(503));

    fn pool(n: usize, params: Params) -> (Machine, Vec<ServerKey>) {
        let keys: Vec<ServerKey> = (0..n)
            .map(|i| ServerKey::new("egress", &format!("s{i:02}")))
            .collect();
        let mut m = Machine::new(params);
        m.set_servers(&keys);
        (m, keys)
    }

    fn ok() -> Outcome {
        Outcome::Success {
            exit_ip_verified: false,
        }
    }

    #[test]
    fn five_failures_quarantine_one_success_restores_then_ramps() {
        let (mut m, k) = pool(4, Params::default());
        let t0 = Instant::now();
        let w = Utc::now();
        assert_eq!(m.reply(&k[0], t0), Some(Reply::NoChange("not-yet-probed")));
        assert_eq!(m.record(&k[0], ok(), t0, w).len(), 1);
        assert_eq!(m.reply(&k[0], t0), Some(Reply::Up(100)));
        for i in 0..4 {
            assert!(
                m.record(&k[0], Outcome::Failure(S503), t0, w).is_empty(),
                "failure {i}"
            );
            assert_eq!(m.reply(&k[0], t0), Some(Reply::Up(100)));
        }
        let t = m.record(&k[0], Outcome::Failure(S503), t0, w);
        assert_eq!(t.len(), 1);
        assert_eq!(
            (t[0].from, t[0].to, t[0].reason),
            (HealthKind::Healthy, HealthKind::Quarantined, Some(S503))
        );
        assert_eq!(m.reply(&k[0], t0).unwrap().line(), "down #connect-status-503\n");
        // Inconclusive results change nothing.
        assert!(m.record(&k[0], Outcome::Inconclusive, t0, w).is_empty());
        let t1 = t0 + Duration::from_secs(3);
        let t = m.record(&k[0], ok(), t1, w);
        assert_eq!(
            (t[0].from, t[0].to),
            (HealthKind::Quarantined, HealthKind::Ramping)
        );
        assert_eq!(m.reply(&k[0], t1), Some(Reply::Up(10)));
        assert_eq!(m.reply(&k[0], t1 + Duration::from_secs(5)), Some(Reply::Up(55)));
        assert!(m.tick(t1 + Duration::from_secs(9), w).is_empty());
        let t = m.tick(t1 + Duration::from_secs(10), w);
        assert_eq!((t[0].from, t[0].to), (HealthKind::Ramping, HealthKind::Healthy));
        assert_eq!(
            m.reply(&k[0], t1 + Duration::from_secs(10)).unwrap().line(),
            "up 100%\n"
        );
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let (mut m, k) = pool(2, Params::default());
        let (t, w) = (Instant::now(), Utc::now());
        for _ in 0..4 {
            m.record(&k[0], Outcome::Failure(FailureClass::Refused), t, w);
        }
        m.record(&k[0], ok(), t, w);
        for _ in 0..4 {
            m.record(&k[0], Outcome::Failure(FailureClass::Refused), t, w);
        }
        assert_eq!(m.health(&k[0]), Some(Health::Healthy));
    }

    #[test]
    fn guard_keeps_the_least_failed_up() {
        let (mut m, k) = pool(4, Params::default());
        let (t, w) = (Instant::now(), Utc::now());
        // s00 fails 7 times, s01 6, s02 and s03 5: only two (50 % of 4) may be quarantined.
        for (i, n) in [(0, 7), (1, 6), (2, 5), (3, 5)] {
            for _ in 0..n {
                m.record(
                    &k[i],
                    Outcome::Failure(FailureClass::ConnectTimeoutAfterAccept),
                    t,
                    w,
                );
            }
        }
        assert_eq!(m.quarantined(), 2);
        assert_eq!(m.held(), 2);
        assert!(matches!(m.health(&k[0]), Some(Health::Quarantined { .. })));
        assert!(matches!(m.health(&k[1]), Some(Health::Quarantined { .. })));
        assert_eq!(m.reply(&k[2], t), Some(Reply::NoChange("not-yet-probed")));
        // s02 keeps failing and overtakes s01: it takes the slot, s01 (least failed) goes back up.
        for _ in 0..3 {
            m.record(
                &k[2],
                Outcome::Failure(FailureClass::ConnectTimeoutAfterAccept),
                t,
                w,
            );
        }
        assert!(matches!(m.health(&k[2]), Some(Health::Quarantined { .. })));
        assert_eq!(m.health(&k[1]), Some(Health::Healthy));
        assert_eq!(m.quarantined(), 2);
        // A restore frees a slot: the most-failed held server takes it.
        m.record(&k[0], ok(), t, w);
        m.record(
            &k[1],
            Outcome::Failure(FailureClass::ConnectTimeoutAfterAccept),
            t,
            w,
        );
        assert!(matches!(m.health(&k[1]), Some(Health::Quarantined { .. })));
    }

    #[test]
    fn a_leak_quarantines_at_once_and_needs_a_clean_exit_ip_to_restore() {
        let (mut m, k) = pool(2, Params::default());
        let (t, w) = (Instant::now(), Utc::now());
        m.record(&k[0], ok(), t, w);
        let tr = m.record(&k[0], Outcome::Failure(FailureClass::ExitIpLeak), t, w);
        assert_eq!(tr[0].reason, Some(FailureClass::ExitIpLeak));
        assert_eq!(m.reply(&k[0], t).unwrap().line(), "down #exit-ip-leak\n");
        assert!(m.record(&k[0], ok(), t, w).is_empty());
        let tr = m.record(
            &k[0],
            Outcome::Success {
                exit_ip_verified: true,
            },
            t,
            w,
        );
        assert_eq!(tr[0].to, HealthKind::Ramping);
    }

    #[test]
    fn unknown_servers_get_no_reply_and_vanished_ones_are_forgotten() {
        let (mut m, k) = pool(3, Params::default());
        assert_eq!(m.reply(&ServerKey::new("egress", "nope"), Instant::now()), None);
        m.set_servers(&k[..1]);
        assert_eq!(m.len(), 1);
        assert_eq!(m.reply(&k[1], Instant::now()), None);
    }

    proptest! {
        /// Whatever the sequence, the guard holds, the reply matches the state, and a server is only
        /// quarantined after `quarantine_after` consecutive failures (or a leak).
        #[test]
        fn invariants_hold(
            n in 1usize..12,
            share in 0.0f64..=1.0,
            steps in proptest::collection::vec((0usize..12, 0u8..6), 0..300),
        ) {
            let params = Params { max_quarantined_share: share, ..Params::default() };
            let (mut m, k) = pool(n, params);
            let t0 = Instant::now();
            let w = Utc::now();
            for (i, (who, what)) in steps.into_iter().enumerate() {
                let key = &k[who % n];
                let now = t0 + Duration::from_millis(500 * i as u64);
                let outcome = match what {
                    0 => ok(),
                    1 => Outcome::Failure(FailureClass::Refused),
                    2 => Outcome::Failure(S503),
                    3 => Outcome::Inconclusive,
                    4 => Outcome::Failure(FailureClass::ExitIpLeak),
                    _ => Outcome::Success { exit_ip_verified: true },
                };
                let before = m.failures(key).unwrap();
                let leaked = matches!(
                    m.health(key),
                    Some(Health::Quarantined { reason: FailureClass::ExitIpLeak, .. })
                );
                let trs = m.record(key, outcome, now, w);
                m.tick(now, w);
                for tr in &trs {
                    // The one same-kind transition: a quarantined server found leaking.
                    prop_assert!(tr.from != tr.to || tr.reason == Some(FailureClass::ExitIpLeak));
                    if tr.to == HealthKind::Quarantined && tr.reason != Some(FailureClass::ExitIpLeak) {
                        prop_assert!(tr.consecutive_failures >= params.quarantine_after);
                    }
                }
                if outcome == (Outcome::Success { exit_ip_verified: false }) && leaked {
                    // Only a probe that saw a clean exit IP may clear a leak.
                    prop_assert_eq!(m.failures(key), Some(before));
                    prop_assert!(trs.is_empty());
                } else if matches!(outcome, Outcome::Success { .. }) {
                    prop_assert_eq!(m.failures(key), Some(0));
                } else if outcome == Outcome::Inconclusive {
                    prop_assert_eq!(m.failures(key), Some(before));
                    prop_assert!(trs.is_empty());
                }
                let leaks = m.servers.values().filter(|s| matches!(s.health, Health::Quarantined { reason: FailureClass::ExitIpLeak, .. })).count();
                prop_assert!(m.quarantined() - leaks <= m.quarantine_cap().saturating_sub(leaks));
                prop_assert_eq!(m.held(), m.servers.values().filter(|s| s.held).count());
                for kk in &k {
                    let r = m.reply(kk, now).unwrap();
                    match m.health(kk).unwrap() {
                        Health::Quarantined { .. } => prop_assert!(matches!(r, Reply::Down(_))),
                        Health::Unknown => prop_assert!(matches!(r, Reply::NoChange(_))),
                        _ => prop_assert!(matches!(r, Reply::Up(p) if (10..=100).contains(&p))),
                    }
                }
            }
        }
    }
}
