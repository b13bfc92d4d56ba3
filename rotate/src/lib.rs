//! Drain-rotate: move one egress backend to a new exit IP without dropping clients.
//!
//! ```text
//!  preflight (every HAProxy: reachable, level admin, knows the server; locations; old exit IP)
//!  lock (pg_try_advisory_lock, one rotation at a time across the fleet)
//!  1 drain on every instance → poll scur to 0 or the drain deadline → shutdown sessions (counted)
//!  2 maint on every instance (no traffic, no health checks; the checker does not count failures)
//!    → `exit_ip_unknown` (the agents tag `exit=unknown` from here, never the old IP)
//!  3 executor: change location + restart          ┐ same exit IP: next location
//!  4 probe through the server until a new exit IP ┘
//!  5 `rotated` old IP → new IP (pushed to every agent) → 0.5 s for the agents to reload
//!  6 ready on every instance (slow start applies)
//! ```
//! Every step has a deadline; a failed step leaves the server in maint and writes `rotation_failed`.

pub mod config;
pub mod error;
pub mod executor;
pub mod heal;
/// The kubernetes executor and replica discovery (feature `kubernetes`, on by default).
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
/// Built without the `kubernetes` feature: configurations that need it are refused.
#[cfg(not(feature = "kubernetes"))]
#[path = "without_kubernetes.rs"]
pub mod kubernetes;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use egress_ledger::{Actor, Event, EventKind, LedgerError, Store};
use serde_json::json;

use config::RotationConfig;
use egress_haproxy_api::{AdminState, Fleet, FleetError, RuntimeApi, RuntimeApiError, valid_name};
use egress_health::probe::Prober;
use egress_health::probe::class::FailureClass;
use executor::Executor;

pub use error::{DiscoveryError, ExecutorError, ExecutorErrorKind, KubernetesError};

/// Why a rotation did not happen or did not complete.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    /// Bad input or configuration, found before anything changed.
    #[error("{0}")]
    Invalid(String),
    /// Another rotation holds the fleet-wide lock.
    #[error("another rotation is in progress (Postgres advisory lock {0} is held); try again later")]
    Locked(i64),
    /// A step failed after the drain started; the server was left in maint.
    #[error("rotation of {server} failed at {step}: {reason} (the server is left in maint)")]
    Failed {
        /// `backend/server`.
        server: String,
        /// Which step.
        step: &'static str,
        /// Why.
        reason: String,
    },
    /// The ledger could not be reached before the rotation started: nothing changed. (A bad
    /// database URL is [`RotateError::Invalid`].)
    #[error("the ledger is unreachable, nothing changed: {0}")]
    Ledger(#[source] egress_ledger::LedgerError),
    /// A service the rotation needs (the ledger, an HAProxy runtime API, the Kubernetes API, a Ready
    /// HAProxy replica) could not be reached, refused or did not answer in time, before anything
    /// changed.
    #[error("{0} (nothing changed)")]
    Unavailable(String),
}

impl From<LedgerError> for RotateError {
    /// A bad database URL is bad input (exit 2); anything else the ledger fails with means it could
    /// not be used (exit 1).
    fn from(e: LedgerError) -> Self {
        match e {
            LedgerError::InvalidInput(reason) => RotateError::Invalid(reason),
            e => RotateError::Ledger(e),
        }
    }
}

impl RotateError {
    /// A preflight step failed before anything changed: a service that did not answer is
    /// [`Unavailable`](Self::Unavailable) (try again later), anything else is bad input or
    /// configuration ([`Invalid`](Self::Invalid)).
    fn before_change(unavailable: bool, reason: String) -> Self {
        if unavailable {
            RotateError::Unavailable(reason)
        } else {
            RotateError::Invalid(reason)
        }
    }
}

/// What a rotation will do (`--dry-run` prints it) or did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Plan {
    /// HAProxy backend.
    pub backend: String,
    /// HAProxy server.
    pub server: String,
    /// The address probed (from `show servers state`).
    pub addr: SocketAddr,
    /// The exit IP before, when known.
    pub old_ip: Option<IpAddr>,
    /// Whether `old_ip` was seen through the server just now (else it is the ledger's last one).
    pub old_ip_probed: bool,
    /// Locations to try, in order.
    pub locations: Vec<String>,
    /// The HAProxy instances.
    pub instances: Vec<String>,
    /// The first executor invocation.
    pub executor: String,
    /// The instances themselves (configured, and discovered when planning).
    #[serde(skip_serializing)]
    pub fleet: Fleet,
    /// Servers `--next` did not take, and why (an operator's MAINT).
    pub left_alone: Vec<String>,
}

/// The result of a completed rotation.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Outcome {
    /// The plan it followed.
    pub plan: Plan,
    /// The location it ended in.
    pub location: String,
    /// The new exit IP.
    pub new_ip: IpAddr,
    /// Sessions cut by `shutdown sessions` after the drain deadline (summed over instances).
    pub sessions_cut: u64,
    /// How long the drain took.
    pub drain_ms: u64,
}

/// Which server to rotate.
#[derive(Clone, Debug)]
pub enum Target {
    /// `backend/server`, optionally to a given location.
    Server {
        /// HAProxy backend.
        backend: String,
        /// HAProxy server.
        server: String,
        /// `--to`: the location to use first.
        to: Option<String>,
    },
    /// The longest-quarantined server, else the one holding its exit IP longest.
    Next,
}

/// Everything a rotation needs.
#[derive(Debug)]
pub struct Rotator {
    cfg: RotationConfig,
    fleet: Fleet,
    prober: Prober,
    executor: Executor,
    store: Option<Store>,
}

impl Rotator {
    /// From a validated configuration; `store` is required for anything but a dry run.
    pub fn new(
        cfg: &egress_health::Config,
        rotation: Option<&RotationConfig>,
        store: Option<Store>,
    ) -> Result<Self, RotateError> {
        let rot = rotation
            .cloned()
            .ok_or_else(|| RotateError::Invalid("no [rotation] section in the configuration".into()))?;
        if cfg.exit_ip.is_none() {
            return Err(RotateError::Invalid(
                "rotation needs [exit_ip]: a rotation is verified by a new exit IP".into(),
            ));
        }
        let instances = rot
            .instance_addrs()
            .map_err(|e| RotateError::Invalid(format!("rotation.instances: {e}")))?
            .into_iter()
            .map(|a| RuntimeApi::new(a, rot.command_timeout))
            .collect();
        let prober = Prober::from_config(cfg).map_err(|e| RotateError::Invalid(e.to_string()))?;
        Ok(Rotator {
            executor: Executor::from_config(&rot.executor),
            fleet: Fleet::new(instances),
            cfg: rot,
            prober,
            store,
        })
    }

    /// The HAProxy instances now: the configured ones, and the replicas `[rotation.discovery]`
    /// finds (every one Ready, or an error).
    pub async fn current_fleet(&self) -> Result<Fleet, RotateError> {
        let Some(d) = &self.cfg.discovery else {
            return Ok(self.fleet.clone());
        };
        let found = kubernetes::discover_instances(d)
            .await
            .map_err(|e| RotateError::Unavailable(format!("rotation.discovery: {e}")))?;
        let mut instances = self.fleet.instances().to_vec();
        for addr in found {
            if !instances.iter().any(|i| i.addr() == &addr) {
                instances.push(RuntimeApi::new(addr, self.cfg.command_timeout));
            }
        }
        Ok(Fleet::new(instances))
    }

    /// Resolve `target`, check every instance and input, and work out the plan. Changes nothing.
    pub async fn plan(&self, target: &Target) -> Result<Plan, RotateError> {
        let fleet = self.current_fleet().await?;
        let mut left_alone = Vec::new();
        let (backend, server, to) = match target {
            Target::Server { backend, server, to } => (backend.clone(), server.clone(), to.clone()),
            Target::Next => {
                let (b, s) = self.pick_next(&fleet, &mut left_alone).await?;
                (b, s, None)
            }
        };
        let key = format!("{backend}/{server}");
        if !valid_name(&backend) || !valid_name(&server) {
            return Err(RotateError::Invalid(format!(
                "{key:?} is not a valid backend/server name"
            )));
        }
        let list = self.cfg.locations_of(&backend, &server).ok_or_else(|| {
            RotateError::Invalid(format!(
                "unknown server {key}: it has no [rotation.locations] entry (known: {})",
                self.cfg.locations.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        if list.is_empty() {
            return Err(RotateError::Invalid(format!(
                "rotation.locations.\"{key}\" is empty"
            )));
        }
        if let Some(to) = &to
            && !list.contains(to)
        {
            return Err(RotateError::Invalid(format!(
                "--to {to:?} is not one of {key}'s locations ({})",
                list.join(", ")
            )));
        }
        fleet
            .preflight(&backend, &server)
            .await
            .map_err(|e: FleetError| {
                RotateError::before_change(e.source.is_unreachable(), format!("cannot rotate {key}: {e}"))
            })?;
        self.executor
            .preflight(&backend, &server)
            .await
            .map_err(|e: ExecutorError| {
                RotateError::before_change(e.is_unavailable(), format!("cannot rotate {key}: {e}"))
            })?;
        let row = fleet.instances()[0]
            .server_state(&backend, &server)
            .await
            .map_err(|e: RuntimeApiError| {
                RotateError::before_change(e.is_unreachable(), format!("cannot rotate {key}: {e}"))
            })?
            .ok_or_else(|| RotateError::Invalid(format!("unknown server {key}")))?;
        let addr = egress_health::backends::spec_from_row(&row)
            .ok_or_else(|| RotateError::Invalid(format!("{key} has no usable address in HAProxy")))?
            .addr;
        let (old_ip, old_ip_probed) = match self.prober.exit_ip(addr).await {
            Some(Ok(ip)) => (Some(ip), true),
            _ => match &self.store {
                Some(store) => (store.last_exit_ip(&backend, &server).await?, false),
                None => (None, false),
            },
        };
        let locations = self
            .order_locations(&backend, &server, list, to.as_deref())
            .await?;
        let executor = self.executor.describe(&backend, &server, &locations[0]);
        Ok(Plan {
            backend,
            server,
            addr,
            old_ip,
            old_ip_probed,
            locations,
            instances: fleet.instances().iter().map(|i| i.addr().to_string()).collect(),
            executor,
            fleet,
            left_alone,
        })
    }

    /// `--to` first; otherwise start after the location of the last `rotated` event, so repeated
    /// rotations cycle through the list. Every location is tried at most once.
    async fn order_locations(
        &self,
        backend: &str,
        server: &str,
        list: &[String],
        to: Option<&str>,
    ) -> Result<Vec<String>, RotateError> {
        let start = match to {
            Some(to) => list.iter().position(|l| l == to).unwrap_or(0),
            None => {
                let last = match &self.store {
                    Some(store) => store
                        .last_rotation_location(backend, server)
                        .await
                        .map_err(ledger_unavailable)?,
                    None => None,
                };
                last.and_then(|l| list.iter().position(|x| *x == l))
                    .map_or(0, |i| (i + 1) % list.len())
            }
        };
        Ok((0..list.len())
            .map(|i| list[(start + i) % list.len()].clone())
            .collect())
    }

    /// The longest-quarantined server (DOWN or MAINT on the first instance, largest `lastchg`), else
    /// the server whose exit IP is oldest in the ledger (never seen first).
    async fn pick_next(
        &self,
        fleet: &Fleet,
        left_alone: &mut Vec<String>,
    ) -> Result<(String, String), RotateError> {
        let mut candidates: Vec<(String, String)> = self
            .cfg
            .locations
            .keys()
            .filter_map(|k| k.split_once('/'))
            .map(|(b, s)| (b.to_owned(), s.to_owned()))
            .collect();
        let first = &fleet.instances()[0];
        let stat = first.show_stat().await.map_err(|e| {
            RotateError::before_change(e.is_unreachable(), format!("--next: {}: {e}", first.addr()))
        })?;
        // A server in MAINT is the operator's unless a rotation of ours left it there (its last
        // rotator event is `rotation_failed`): never touch the operator's.
        for r in stat.iter().filter(|r| r.status.starts_with("MAINT")) {
            if !candidates.iter().any(|(b, s)| *b == r.proxy && *s == r.name) {
                continue;
            }
            let ours = match &self.store {
                Some(store) => {
                    store
                        .last_event_kind(&r.proxy, &r.name, Actor::Rotator)
                        .await
                        .map_err(ledger_unavailable)?
                        == Some(EventKind::RotationFailed)
                }
                None => false,
            };
            if !ours {
                candidates.retain(|(b, s)| !(*b == r.proxy && *s == r.name));
                left_alone.push(format!(
                    "{}/{} (in MAINT, not set by a rotation: an operator's; rotate it by name to override)",
                    r.proxy, r.name
                ));
            }
        }
        let down = stat
            .iter()
            .filter(|r| candidates.iter().any(|(b, s)| *b == r.proxy && *s == r.name))
            .filter(|r| r.status.starts_with("DOWN") || r.status.starts_with("MAINT"))
            .max_by_key(|r| {
                r.fields
                    .get("lastchg")
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            });
        if let Some(r) = down {
            return Ok((r.proxy.clone(), r.name.clone()));
        }
        let store = self.store.as_ref().ok_or_else(|| {
            RotateError::Invalid("--next needs the ledger (--database-url) when no server is down".into())
        })?;
        let mut best: Option<(Option<Since>, (String, String))> = None;
        for (b, s) in candidates {
            if !stat.iter().any(|r| r.proxy == b && r.name == s) {
                continue;
            }
            let since = store
                .last_exit_ip_change(&b, &s)
                .await
                .map_err(ledger_unavailable)?;
            let older = match &best {
                None => true,
                Some((cur, _)) => match (since, cur) {
                    (None, Some(_)) => true,
                    (Some(a), Some(c)) => a < *c,
                    _ => false,
                },
            };
            if older {
                best = Some((since, (b, s)));
            }
        }
        best.map(|(_, k)| k).ok_or_else(|| {
            RotateError::Invalid("--next: none of the servers in [rotation.locations] is in HAProxy".into())
        })
    }

    /// Run the whole rotation. Requires the ledger (lock and events).
    pub async fn rotate(&self, target: &Target) -> Result<Outcome, RotateError> {
        let store = self.store.as_ref().ok_or_else(|| {
            RotateError::Invalid(
                "rotation needs the ledger: pass --database-url or set EGRESS_DATABASE_URL".into(),
            )
        })?;
        let plan = self.plan(target).await?;
        let lock = store
            .try_lock(self.cfg.lock_key)
            .await
            .map_err(|e| RotateError::Unavailable(format!("rotation lock: {e}")))?
            .ok_or(RotateError::Locked(self.cfg.lock_key))?;
        let result = self.steps(store, &plan).await;
        // Closing the session releases the advisory lock (also if this process dies mid-rotation).
        lock.release().await;
        result
    }

    async fn steps(&self, store: &Store, plan: &Plan) -> Result<Outcome, RotateError> {
        let (b, s) = (plan.backend.as_str(), plan.server.as_str());
        let ev = |kind| {
            let mut e = Event::new(kind, Actor::Rotator, b, s);
            if let Some(ip) = plan.old_ip {
                e = e.old_ip(ip);
            }
            e
        };
        let fail = |step: &'static str, reason: String| RotateError::Failed {
            server: format!("{b}/{s}"),
            step,
            reason,
        };
        tracing::info!(server = %format!("{b}/{s}"), old_ip = ?plan.old_ip, locations = ?plan.locations, "rotation started");

        // The exit IP seen before the drain starts the timeline when the ledger did not know it, so
        // `who --ip <old>` answers for the time before the rotation.
        if let (true, Some(ip)) = (plan.old_ip_probed, plan.old_ip) {
            match store.last_exit_ip(b, s).await {
                Ok(known) if known == Some(ip) => {}
                Ok(_) => {
                    record(
                        store,
                        Event::new(EventKind::ExitIpObserved, Actor::Rotator, b, s)
                            .new_ip(ip)
                            .reason("seen by the rotator before the drain"),
                    )
                    .await
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the last exit IP"),
            }
        }

        // 1. drain everywhere, wait for scur 0 or the deadline, cut the rest.
        let drain_start = Instant::now();
        let res: Result<(u64, u64), RotateError> = async {
            plan.fleet
                .set_state(b, s, AdminState::Drain)
                .await
                .map_err(|e| fail("drain", e.to_string()))?;
            record(
                store,
                ev(EventKind::DrainStarted).detail(json!({"instances": plan.instances})),
            )
            .await;
            let deadline = drain_start + self.cfg.drain_deadline;
            // Every instance of the plan, the discovered replicas too.
            let remaining = plan
                .fleet
                .wait_for_no_sessions(b, s, deadline, self.cfg.poll_interval)
                .await
                .map_err(|e| fail("drain", e.to_string()))?;
            let drain_ms = drain_start.elapsed().as_millis() as u64;
            record(
                store,
                ev(EventKind::Drained).detail(json!({"waited_ms": drain_ms, "remaining": remaining})),
            )
            .await;
            let mut cut = 0;
            if remaining > 0 {
                plan.fleet
                    .shutdown_sessions(b, s)
                    .await
                    .map_err(|e| fail("shutdown sessions", e.to_string()))?;
                cut = remaining;
                record(
                    store,
                    ev(EventKind::SessionsCut).reason("drain deadline passed").detail(
                        json!({"cut": cut, "drain_deadline_ms": self.cfg.drain_deadline.as_millis() as u64}),
                    ),
                )
                .await;
            }
            // 2. maint everywhere: no traffic, no health checks. From here on the exit IP is not
            // known: the agents tag the server `exit=unknown`, never the old IP, until step 5.
            plan.fleet
                .set_state(b, s, AdminState::Maint)
                .await
                .map_err(|e| fail("maint", e.to_string()))?;
            record(
                store,
                ev(EventKind::ExitIpUnknown).reason("rotation: the exit IP is about to change"),
            )
            .await;
            Ok((cut, drain_ms))
        }
        .await;
        let (cut, drain_ms) = match res {
            Ok(v) => v,
            Err(e) => return Err(self.abort(store, plan, e).await),
        };

        // 3 + 4. restart in the next location until the exit IP differs.
        let mut tried = Vec::new();
        for location in attempts(&plan.locations, self.cfg.restart_attempts) {
            tracing::info!(server = %format!("{b}/{s}"), %location, "restarting in a new location");
            if let Err(reason) = self
                .executor
                .restart(b, s, location, self.cfg.restart_timeout)
                .await
            {
                return Err(self
                    .abort(
                        store,
                        plan,
                        fail("restart", format!("location {location}: {reason}")),
                    )
                    .await);
            }
            let new_ip = match self.verify(plan.addr).await {
                Ok(ip) => ip,
                Err(reason) => {
                    return Err(self
                        .abort(
                            store,
                            plan,
                            fail("verify", format!("location {location}: {reason}")),
                        )
                        .await);
                }
            };
            if Some(new_ip) == plan.old_ip {
                tracing::warn!(server = %format!("{b}/{s}"), %location, %new_ip, "same exit IP after the restart; trying the next location");
                tried.push(location.clone());
                continue;
            }
            // 5. the ledger: old IP -> new IP, before any traffic: the write notifies every agent
            // (LISTEN/NOTIFY), which reloads its map within milliseconds; AGENT_PUSH_GRACE covers
            // that. An agent that misses the push tags the server `unknown` (step 2) until its next
            // poll, never the old IP.
            record(
                store,
                ev(EventKind::Rotated)
                    .new_ip(new_ip)
                    .reason(format!("rotated to {location}"))
                    .detail(json!({"location": location, "sessions_cut": cut, "drain_ms": drain_ms, "same_ip_locations": tried})),
            )
            .await;
            tokio::time::sleep(AGENT_PUSH_GRACE).await;
            // 6. ready everywhere.
            if let Err(e) = plan.fleet.set_state(b, s, AdminState::Ready).await {
                return Err(self.abort(store, plan, fail("ready", e.to_string())).await);
            }
            tracing::info!(server = %format!("{b}/{s}"), old_ip = ?plan.old_ip, %new_ip, %location, sessions_cut = cut, "rotation complete");
            return Ok(Outcome {
                plan: plan.clone(),
                location: location.clone(),
                new_ip,
                sessions_cut: cut,
                drain_ms,
            });
        }
        let reason = format!(
            "every restart kept the old exit IP {} (tried: {})",
            plan.old_ip.map(|i| i.to_string()).unwrap_or_default(),
            tried.join(", ")
        );
        Err(self.abort(store, plan, fail("verify", reason)).await)
    }

    /// Probe through the restarted server until a probe and an exit-IP check pass, or the deadline.
    async fn verify(&self, addr: SocketAddr) -> Result<IpAddr, VerifyError> {
        let deadline = Instant::now() + self.cfg.verify_timeout;
        let mut last = LastCheck::None;
        let mut target = 0usize;
        while Instant::now() < deadline {
            match self.prober.probe(addr, target).await {
                Ok(()) => match self.prober.exit_ip(addr).await {
                    Some(Ok(ip)) => return Ok(ip),
                    Some(Err(c)) => last = LastCheck::ExitIp(c),
                    None => return Err(VerifyError::NoExitIpCheck),
                },
                Err(c) => last = LastCheck::Probe(c),
            }
            target = target.wrapping_add(1);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(VerifyError::Deadline {
            within: self.cfg.verify_timeout,
            last,
        })
    }

    /// Leave the server in maint (best effort on every instance) and record why.
    async fn abort(&self, store: &Store, plan: &Plan, err: RotateError) -> RotateError {
        let (b, s) = (plan.backend.as_str(), plan.server.as_str());
        if let Err(e) = plan.fleet.set_state(b, s, AdminState::Maint).await {
            tracing::error!(error = %e, "could not leave the server in maint");
        }
        let mut e = Event::new(EventKind::RotationFailed, Actor::Rotator, b, s).reason(err.to_string());
        if let Some(ip) = plan.old_ip {
            e = e.old_ip(ip);
        }
        record(store, e).await;
        tracing::error!(error = %err, "rotation failed");
        err
    }
}

/// When a server's exit IP last changed.
type Since = chrono::DateTime<chrono::Utc>;

/// Why step 4 found no new exit IP.
#[derive(Debug, thiserror::Error)]
enum VerifyError {
    /// Nothing to verify with.
    #[error("no [exit_ip] configured")]
    NoExitIpCheck,
    /// No probe and exit-IP check passed in time.
    #[error(
        "no successful probe with an exit IP within {} (last: {last})",
        humantime::format_duration(*.within)
    )]
    Deadline {
        /// `rotation.verify_timeout`.
        within: Duration,
        /// How the last attempt ended.
        last: LastCheck,
    },
}

/// How the last verification attempt ended.
#[derive(Debug)]
enum LastCheck {
    /// None completed.
    None,
    /// The probe through the server failed.
    Probe(FailureClass),
    /// The probe passed; the exit-IP check failed.
    ExitIp(FailureClass),
}

impl std::fmt::Display for LastCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LastCheck::None => f.write_str("no probe completed"),
            LastCheck::Probe(c) => write!(f, "probe failed: {}", c.as_str()),
            LastCheck::ExitIp(c) => write!(f, "exit-IP check failed: {}", c.as_str()),
        }
    }
}

/// The locations a rotation tries, in order: every one once, then again from the first until
/// `at_least` restarts (a restart in the same location usually lands on another VPN server).
fn attempts(locations: &[String], at_least: usize) -> impl Iterator<Item = &String> {
    locations.iter().cycle().take(locations.len().max(at_least))
}

/// How long the rotator waits between writing the new exit IP and putting the server back in
/// service: the agents reload on the ledger's notification within milliseconds.
const AGENT_PUSH_GRACE: Duration = Duration::from_millis(500);

/// Write one event now; a ledger failure is logged, it does not stop the rotation half-way.
async fn record(store: &Store, event: Event) {
    let kind = event.kind;
    if let Err(e) = store.insert_events(&[event]).await {
        tracing::error!(error = %e, %kind, "could not write the rotation event to the ledger");
    }
}

/// A ledger read failed before anything changed.
fn ledger_unavailable(e: LedgerError) -> RotateError {
    RotateError::Unavailable(format!("ledger: {e}"))
}

#[cfg(test)]
mod tests {
    use super::attempts;

    #[test]
    fn a_single_location_is_retried_and_a_longer_list_is_walked_once() {
        let one = vec!["nl".to_owned()];
        assert_eq!(attempts(&one, 3).collect::<Vec<_>>(), ["nl", "nl", "nl"]);
        let three: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        assert_eq!(attempts(&three, 3).collect::<Vec<_>>(), ["a", "b", "c"]);
        let two: Vec<String> = ["a", "b"].map(String::from).to_vec();
        assert_eq!(attempts(&two, 3).collect::<Vec<_>>(), ["a", "b", "a"]);
    }
}
