//! One run: a fresh pool (tinyproxies, the victim, HAProxy at one rung, the checker from rung (c),
//! egress-spoa for the shipped rung), the open-loop load of one profile, one fault injected and
//! cleared at fixed times, and the measurements (the client's samples, HAProxy's state polled, its
//! log: transitions and the access log's retries and termination codes).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use egress_haproxy_api::{AdminState, Fleet, RuntimeApi, RuntimeApiAddr};
use egress_harness::echo::EchoServer;
use egress_harness::entry::EntryPolicy;
use egress_harness::haproxy::{Haproxy, shipped_spoe_conf};
use egress_harness::metrics;
use egress_harness::process::{ChildSpec, ManagedChild};
use egress_harness::shipped::{AGENT_PORT, SPOA_PORT, haproxy_for_test};
use egress_harness::tinyproxy::Tinyproxy;
use egress_harness::{bins::bin_path, ports::free_port, wait_until};
use tokio::time::Instant;

use crate::load::{self, Load, Outcome, Profile, Sample};
use crate::proxy::{Mode, Victim};
use crate::rungs::{self, Rung};
use crate::target::Target;

/// The server that the fault hits.
pub const VICTIM: &str = "v1";
/// Detection causes, as HAProxy logs them (see `run`).
pub const PASSIVE: &str = "observe (passive)";
pub const ACTIVE_AGENT: &str = "agent probe (active)";
pub const ACTIVE_CHECK: &str = "haproxy check (active)";
/// The brownout's CONNECT delay: past the probe's response timeouts (200 ms in the lab's rungs,
/// 400 ms shipped), within HAProxy's 2.5 s server timeout and the client's deadline.
const BROWNOUT: Duration = Duration::from_millis(1200);
/// How long the blip lasts.
pub const BLIP: Duration = Duration::from_millis(500);

/// The faults, injected one per run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Fault {
    /// 1: the backend process is SIGKILLed (its port then refuses); restarted at restore time.
    Crash,
    /// 2: the backend accepts TCP but answers every CONNECT with 503.
    Tunnel503,
    /// 3: the backend accepts and never answers (a hung CONNECT looks the same from outside).
    BlackHole,
    /// Passive-only: the backend fails CONNECT (503) only to the clients' target, not the probe's.
    TargetFail,
    /// Active-only: the backend answers every CONNECT 1.2 s late (a brownout; nothing errors).
    Brownout,
    /// 4a: rotation with draining through the runtime API.
    RotateDrain,
    /// 4b: rotation by an abrupt kill and restart.
    RotateAbrupt,
    /// A 500 ms blip: the victim answers 503 to everything, then is healthy again (not cold).
    Blip,
    /// A rolling restart of the whole pool, each server drained first (as 4a), one after the other.
    RollingDrain,
    /// A rolling restart of the whole pool by abrupt kills (as 4b), one after the other.
    RollingAbrupt,
}

impl Fault {
    /// All faults, in report order.
    pub const ALL: [Fault; 10] = [
        Fault::Crash,
        Fault::Tunnel503,
        Fault::BlackHole,
        Fault::TargetFail,
        Fault::Brownout,
        Fault::Blip,
        Fault::RotateDrain,
        Fault::RotateAbrupt,
        Fault::RollingDrain,
        Fault::RollingAbrupt,
    ];

    /// File-name friendly id.
    pub fn id(self) -> &'static str {
        match self {
            Fault::Crash => "crash",
            Fault::Tunnel503 => "tunnel-503",
            Fault::BlackHole => "black-hole",
            Fault::TargetFail => "target-503",
            Fault::Brownout => "brownout",
            Fault::RotateDrain => "rotate-drain",
            Fault::RotateAbrupt => "rotate-abrupt",
            Fault::Blip => "blip",
            Fault::RollingDrain => "rolling-drain",
            Fault::RollingAbrupt => "rolling-abrupt",
        }
    }

    /// One-line description for the report.
    pub fn describe(self) -> &'static str {
        match self {
            Fault::Crash => {
                "1. hard crash: the victim tinyproxy is SIGKILLed (port refuses), restarted at restore"
            }
            Fault::Tunnel503 => "2. tunnel failure: the victim accepts TCP but answers every CONNECT 503",
            Fault::BlackHole => "3. black hole: the victim accepts, reads, never answers",
            Fault::TargetFail => {
                "2b. passive-only: the victim answers 503 only to CONNECTs for the clients' target; the probe's target works"
            }
            Fault::Brownout => {
                "2c. active-only: the victim answers every CONNECT 1.2 s late (slow, never failing)"
            }
            Fault::RotateDrain => {
                "4a. rotation with draining: drain, wait scur=0, shutdown sessions, maint, restart with a new exit address, ready"
            }
            Fault::RotateAbrupt => {
                "4b. rotation by abrupt kill: SIGKILL mid-traffic, restart with a new exit address"
            }
            Fault::Blip => {
                "5. a 500 ms blip: the victim answers 503 to everything for 500 ms, then is healthy (not cold)"
            }
            Fault::RollingDrain => {
                "6a. rolling restart of the whole pool with draining: every server in turn as 4a, one per fault/N slot"
            }
            Fault::RollingAbrupt => {
                "6b. rolling restart of the whole pool without draining: every server in turn as 4b, one per fault/N slot"
            }
        }
    }

    /// Parses an id.
    pub fn parse(s: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.id() == s.trim())
    }

    /// Whether the victim is a tinyproxy itself (crash, rotations) rather than the lab's fault proxy in
    /// front of one.
    fn bare_tinyproxy(self) -> bool {
        matches!(
            self,
            Fault::Crash
                | Fault::RotateDrain
                | Fault::RotateAbrupt
                | Fault::RollingDrain
                | Fault::RollingAbrupt
        )
    }

    /// Whether the fault is cleared at a restore time (the rotations are not).
    pub fn has_restore(self) -> bool {
        !matches!(
            self,
            Fault::RotateDrain | Fault::RotateAbrupt | Fault::RollingDrain | Fault::RollingAbrupt
        )
    }

    /// Whether the fault is a rotation (planned work, no detection).
    pub fn is_rotation(self) -> bool {
        !self.has_restore()
    }
}

/// Timing and load shared by every run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Requests per second.
    pub rate: u32,
    /// Load before the fault.
    pub warm: Duration,
    /// Fault -> restore.
    pub fault: Duration,
    /// Restore -> end of load (also the slow-start ramp of rung (d) and the cold backend's warm-up).
    pub after: Duration,
    /// Idle time inside each tunnel.
    pub hold: Duration,
    /// Per-request deadline.
    pub deadline: Duration,
    /// Where each run's HAProxy log is kept.
    pub log_dir: Option<std::path::PathBuf>,
}

impl Plan {
    fn total(&self) -> Duration {
        self.warm + self.fault + self.after
    }
}

/// The egress-checker's probes from its start to the fault injection, while every backend is healthy
/// and carries the lab's load: `egress_checker_probe_duration_seconds` and `egress_checker_probes_total`
/// scraped from its /metrics.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProbeWarm {
    /// Probes that completed.
    pub probes: u64,
    /// Of which failed (any class, counted or not).
    pub failed: u64,
    /// Cumulative histogram: (upper bound in ms, probes at or below it).
    pub buckets_ms: Vec<(f64, u64)>,
}

impl ProbeWarm {
    /// Probes slower than `ms` (needs `ms` to be a bucket bound), or None.
    pub fn slower_than(&self, ms: f64) -> Option<u64> {
        self.buckets_ms
            .iter()
            .find(|(le, _)| (*le - ms).abs() < 1e-6)
            .map(|(_, n)| self.probes.saturating_sub(*n))
    }
}

/// One plot bucket.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Bucket {
    /// Bucket start, seconds since the load started.
    pub t: f64,
    /// Requests scheduled in the bucket.
    pub requests: u64,
    /// Of which failed (any outcome but Ok).
    pub errors: u64,
    /// p99 latency of the bucket's answered requests, ms.
    pub p99_ms: f64,
}

/// One cell of the ladder: what [`run`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Cell {
    pub profile: Profile,
    pub fault: Fault,
    pub rung: Rung,
    /// Egress backends in the pool.
    pub backends: usize,
    /// 0 for the first run of the cell, 1.. for its repeats.
    pub repeat: u32,
}

/// What one run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunResult {
    pub profile: Profile,
    pub fault: Fault,
    pub rung: Rung,
    pub backends: usize,
    pub repeat: u32,
    pub requests: u64,
    pub errors: u64,
    pub resets: u64,
    pub timeouts: u64,
    pub status_errors: u64,
    /// Retries HAProxy made: the sum of the access log's retry counts (`%rc`) over the run.
    pub retries: u64,
    /// Requests the client sent a second time (the client-fallback rung).
    pub client_retries: u64,
    /// Requests HAProxy logged (access-log lines).
    pub logged: u64,
    /// Sessions the access log says the server side or an admin ended: termination state `S...`
    /// (the server side aborted) or `K...` (`shutdown sessions`), plus the cut tunnels.
    pub log_resets: u64,
    /// Of which tunnels logged as a normal end (`----`) that carried less than a complete one
    /// (a killed process closes its tunnels with a FIN; see [`AccessLog::cut_tunnels`]).
    pub log_cut_tunnels: u64,
    /// Every termination state of the access log but `----`, with its count.
    pub termination: BTreeMap<String, u64>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Fault injection -> the victim left rotation (status not UP or weight 0), ms; None = never.
    pub detect_ms: Option<f64>,
    /// What first took the victim DOWN after the fault (from HAProxy's log).
    pub detected_by: String,
    /// Victim DOWN transitions after the fault by cause.
    pub passive_downs: u64,
    pub agent_downs: u64,
    pub check_downs: u64,
    /// DOWN transitions of the *healthy* servers (not the victim) over the whole run, any cause:
    /// a false quarantine or mark-down shows here (for the rolling restarts, which touch every
    /// server, any DOWN of a server outside its own restart slot).
    pub bystander_downs: u64,
    /// Of which by the egress-checker's agent (a probe that failed a healthy backend).
    pub bystander_agent_downs: u64,
    /// The victim's share of the requests scheduled before the fault that got an answer.
    pub victim_share: f64,
    /// Tunnels open on a process when it was killed: answered through it less than `hold` before
    /// the kill (CONNECT only; summed over the kills of a rolling restart).
    pub open_at_kill: u64,
    /// The lower bound of the client's errors under CONNECT load (docs/lab.md): the victim's share x
    /// the rate x the time to detection (the fault's length when never detected; at least 1 when
    /// the fault answers errors), + the tunnels open on a killed process. With the client fallback
    /// only the open tunnels count (a failed set-up is tried again). None for plain HTTP.
    pub bound: Option<f64>,
    /// The checker's probe durations up to the fault (every backend healthy, under the load), from
    /// its own histogram: rungs with the checker only.
    pub probe_warm: Option<ProbeWarm>,
    /// p99 of all requests scheduled in the first `after` window after the restore, ms.
    pub restore_p99_ms: Option<f64>,
    /// p99 of those the victim carried, and how many it carried.
    pub victim_restore_p99_ms: Option<f64>,
    pub victim_restore_requests: u64,
    /// Rotation: how long the sequence took, ms (a rolling restart: first start to last end).
    pub rotation_ms: Option<f64>,
    pub fault_at_s: f64,
    pub restore_at_s: Option<f64>,
    pub series: Vec<Bucket>,
}

impl RunResult {
    pub fn error_rate(&self) -> f64 {
        ratio(self.errors, self.requests)
    }
    pub fn retry_rate(&self) -> f64 {
        ratio(self.retries, self.requests)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// Shared, long-lived pieces: the load's target and the probe's target.
#[derive(Debug)]
pub struct Fixtures {
    pub target: Target,
    pub probe_echo: EchoServer,
}

/// A killed process: when (since the load started) and the exit address of the tunnels it carried.
type Kill = (Duration, Ipv4Addr);

/// Runs one cell.
pub fn run(
    rt: &tokio::runtime::Runtime,
    fx: &Fixtures,
    plan: &Plan,
    cell: Cell,
) -> anyhow::Result<RunResult> {
    let Cell {
        profile,
        fault,
        rung,
        backends,
        ..
    } = cell;
    let backend = rung.backend();
    // The pool: tinyproxies with exit addresses 127.0.0.11.., the victim first.
    let mut proxies = (0..backends)
        .map(|i| Tinyproxy::start(exit_ip(i, 0)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let victim = if fault.bare_tinyproxy() {
        None
    } else {
        Some(rt.block_on(Victim::start(proxies[0].addr()))?)
    };
    let servers: Vec<(String, SocketAddr)> = proxies
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let addr = match (&victim, i) {
                (Some(v), 0) => v.addr(),
                _ => p.addr(),
            };
            (format!("v{}", i + 1), addr)
        })
        .collect();
    let dir = tempfile::tempdir()?;
    let (haproxy, agent_port) = if rung == Rung::Shipped {
        let pool: Vec<(&str, &str, SocketAddr)> =
            servers.iter().map(|(n, a)| (backend, n.as_str(), *a)).collect();
        let config = haproxy_for_test(
            &pool,
            &shipped_spoe_conf(dir.path())?,
            &EntryPolicy::for_test(&[fx.target.addr()]),
            None,
        )?;
        let h = Haproxy::start(&config)?;
        let agent = h.port(AGENT_PORT);
        (h, agent)
    } else {
        let agent_port = free_port()?;
        (
            Haproxy::start(&rungs::haproxy_config(rung, &servers, agent_port))?,
            agent_port,
        )
    };
    let _spoa = if rung == Rung::Shipped {
        Some(start_spoa(&haproxy, &servers, dir.path())?)
    } else {
        None
    };
    let checker = if rung.has_checker() {
        let config = match rung {
            Rung::Shipped => {
                rungs::shipped_checker_config(haproxy.runtime_socket(), fx.probe_echo.http_addr())
            }
            _ => rungs::checker_config(
                haproxy.runtime_socket(),
                fx.probe_echo.http_addr(),
                if rung >= Rung::D {
                    plan.after
                } else {
                    Duration::ZERO
                },
            ),
        };
        Some(start_checker(&config, agent_port, dir.path())?)
    } else {
        None
    };
    let all_up = wait_until(Duration::from_secs(20), || {
        servers
            .iter()
            .all(|(name, _)| server_row(&haproxy, backend, name).is_some_and(|(s, w)| s == "UP" && w > 0))
    });
    anyhow::ensure!(
        all_up,
        "the pool never came UP: {}",
        haproxy.cmd("show stat").unwrap_or_default()
    );

    let victim_exit = exit_ip(0, 0);
    let start = Instant::now();
    let load = Load {
        proxy: SocketAddr::from((Ipv4Addr::LOCALHOST, haproxy.port(0))),
        target: fx.target.addr(),
        profile,
        rate: plan.rate,
        duration: plan.total(),
        hold: plan.hold,
        deadline: plan.deadline,
        fallback: rung.client_fallback(),
    };
    let load_task = rt.spawn(load::run(load, start));

    // The detector: polls the victim's state from the runtime API.
    let stop = Arc::new(AtomicBool::new(false));
    let left_rotation: Arc<Mutex<Option<Duration>>> = Arc::default();
    let fault_at = plan.warm;
    let poller = {
        let stop = stop.clone();
        let left = left_rotation.clone();
        let socket = haproxy.runtime_socket().to_owned();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let now = start.elapsed();
                if now >= fault_at
                    && let Some((status, weight)) = row_via(&socket, backend, VICTIM)
                    && !(status.starts_with("UP") && weight > 0)
                {
                    let mut l = left.lock().unwrap_or_else(|e| e.into_inner());
                    if l.is_none() {
                        *l = Some(now.saturating_sub(fault_at));
                    }
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        })
    };

    sleep_until(start, fault_at);
    let log_mark = haproxy.logs().len();
    let probe_warm = checker.as_ref().and_then(|c| scrape_probes(c.metrics_port));
    let mut rotation_ms = None;
    let mut kills: Vec<Kill> = Vec::new();
    // The restarts of a rolling restart, each in its own slot of the fault window.
    let slot = plan.fault / u32::try_from(backends).unwrap_or(1);
    match fault {
        Fault::Crash => {
            kills.push((start.elapsed(), victim_exit));
            proxies[0].kill();
        }
        Fault::Tunnel503 | Fault::Blip => set(&victim, Mode::Status(503)),
        Fault::BlackHole => set(&victim, Mode::BlackHole),
        Fault::TargetFail => set(&victim, Mode::FailTarget(fx.target.addr().to_string())),
        Fault::Brownout => set(&victim, Mode::Delay(BROWNOUT)),
        Fault::RotateDrain => {
            let t = std::time::Instant::now();
            rotate_drain(rt, &haproxy, backend, VICTIM, &mut proxies[0], exit_ip(0, 1))?;
            rotation_ms = Some(t.elapsed().as_secs_f64() * 1e3);
        }
        Fault::RotateAbrupt => {
            let t = std::time::Instant::now();
            kills.push((start.elapsed(), victim_exit));
            proxies[0].kill();
            proxies[0].restart(exit_ip(0, 1))?;
            rotation_ms = Some(t.elapsed().as_secs_f64() * 1e3);
        }
        Fault::RollingDrain | Fault::RollingAbrupt => {
            let t = std::time::Instant::now();
            for (i, proxy) in proxies.iter_mut().enumerate() {
                sleep_until(start, fault_at + slot * u32::try_from(i).unwrap_or(0));
                let name = format!("v{}", i + 1);
                if fault == Fault::RollingDrain {
                    rotate_drain(rt, &haproxy, backend, &name, proxy, exit_ip(i, 1))?;
                } else {
                    kills.push((start.elapsed(), exit_ip(i, 0)));
                    proxy.kill();
                    proxy.restart(exit_ip(i, 1))?;
                }
                // An operator waits for the server to be back before the next one (bounded by the
                // slot: the schedule is the same for every rung).
                let next = fault_at + slot * u32::try_from(i + 1).unwrap_or(1);
                let _ = wait_until(next.saturating_sub(start.elapsed()), || {
                    server_row(&haproxy, backend, &name).is_some_and(|(s, w)| s == "UP" && w > 0)
                });
            }
            rotation_ms = Some(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let restore_at = if fault == Fault::Blip {
        fault_at + BLIP
    } else {
        fault_at + plan.fault
    };
    if fault.has_restore() {
        sleep_until(start, restore_at);
        match fault {
            Fault::Crash => proxies[0].restart(exit_ip(0, 0))?,
            Fault::Blip => set(&victim, Mode::Forward),
            _ => set(
                &victim,
                // A restored backend is cold: its capacity grows from 5 % to 60 % of the offered
                // load (tunnels/s) over the `after` window (a stand-in for connection pools, caches
                // and upstream warm-up); its fair share is 1/backends.
                Mode::Warming {
                    from: 0.05 * f64::from(plan.rate),
                    to: 0.6 * f64::from(plan.rate),
                    over: plan.after,
                },
            ),
        }
    }
    let samples = rt.block_on(load_task).context("the load task failed")?;
    stop.store(true, Ordering::Relaxed);
    let _ = poller.join();
    let logs = haproxy.logs();
    if let Some(dir) = &plan.log_dir {
        let _ = std::fs::create_dir_all(dir);
        let _ = std::fs::write(dir.join(format!("{}-haproxy.log", cell_id(&cell))), &logs);
    }
    let after_fault = logs.get(log_mark..).unwrap_or_default();

    let detect_ms = if fault.has_restore() {
        left_rotation
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .filter(|d| *d < plan.fault)
            .map(|d| d.as_secs_f64() * 1e3)
    } else {
        None
    };
    let downs: Vec<&str> = after_fault
        .lines()
        // HAProxy prints each transition twice: as a `[WARNING]` on stderr and as a log line.
        .filter(|l| !l.starts_with('[') && l.contains(&format!("Server {backend}/{VICTIM} is DOWN")))
        .collect();
    let count = |c: &str| downs.iter().filter(|l| down_cause(l) == c).count() as u64;
    // Healthy servers: any DOWN of theirs over the whole run (warm-up included). In a rolling
    // restart every server is restarted in turn, so there only the victim's DOWNs are excluded
    // as before and the rolling rows are read with that in mind.
    let bystanders: Vec<&str> = logs
        .lines()
        .filter(|l| {
            !l.starts_with('[')
                && l.starts_with(&format!("Server {backend}/"))
                && l.contains(" is DOWN")
                && !l.starts_with(&format!("Server {backend}/{VICTIM} "))
        })
        .collect();
    let detected_by = downs
        .first()
        .map_or_else(|| "-".to_owned(), |l| down_cause(l).to_owned());
    let access = AccessLog::parse(&logs);

    Ok(summarize(
        cell,
        plan,
        &samples,
        victim_exit,
        fault.has_restore().then_some(restore_at),
        RunExtras {
            access,
            detect_ms,
            detected_by,
            passive_downs: count(PASSIVE),
            agent_downs: count(ACTIVE_AGENT),
            check_downs: count(ACTIVE_CHECK),
            bystander_downs: bystanders.len() as u64,
            bystander_agent_downs: bystanders
                .iter()
                .filter(|l| down_cause(l) == ACTIVE_AGENT)
                .count() as u64,
            probe_warm,
            rotation_ms,
            kills,
        },
    ))
}

/// The file-name id of a cell: `<profile>-<fault>-<rung>-n<backends>[-r<repeat>]`.
pub fn cell_id(c: &Cell) -> String {
    let repeat = if c.repeat > 0 {
        format!("-r{}", c.repeat)
    } else {
        String::new()
    };
    format!(
        "{}-{}-{:?}-n{}{repeat}",
        c.profile.id(),
        c.fault.id(),
        c.rung,
        c.backends
    )
}

/// What took a server DOWN, from HAProxy's log line: "reason: Health analyze" = observe (passive);
/// "via agent" = the egress-checker's probe (active); any other reason = HAProxy's own check.
fn down_cause(l: &str) -> &'static str {
    if l.contains("Health analyze") {
        PASSIVE
    } else if l.contains("via agent") {
        ACTIVE_AGENT
    } else {
        ACTIVE_CHECK
    }
}

/// `a/b/c/d/e`: five numbers, each with an optional `sign` prefix.
fn five_fields(t: &str, sign: char) -> Option<Vec<&str>> {
    let parts: Vec<&str> = t.split('/').collect();
    (parts.len() == 5
        && parts.iter().all(|p| {
            let p = p.trim_start_matches(sign);
            !p.is_empty() && p.chars().all(|c| c.is_ascii_digit())
        }))
    .then_some(parts)
}

/// What the access log says about the run's requests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AccessLog {
    /// Access-log lines.
    pub lines: u64,
    /// The sum of their retry counts (`%rc`; a `+` prefix marks a redispatch).
    pub retries: u64,
    /// Termination states other than `----`, with counts.
    pub termination: BTreeMap<String, u64>,
    /// CONNECT tunnels answered 200 and logged as a normal end (`----`) that carried fewer bytes to
    /// the client (`%B`) than the run's complete tunnels (the most common count): the server side
    /// ended them early. HAProxy logs a tunnel that a killed process closed (a FIN) as a normal end;
    /// its byte count is what tells it apart (one answer fewer).
    pub cut_tunnels: u64,
}

impl AccessLog {
    /// Reads the access-log lines of HAProxy's output: those with the connection counters
    /// `%ac/%fc/%bc/%sc/%rc` right after the 4-character termination state, and the timers
    /// `%TR/%Tw/%Tc/%Tr/%Ta` followed by the status and the bytes (`option httplog`'s format and the
    /// shipped `log-format` both have them so).
    pub fn parse(logs: &str) -> AccessLog {
        let mut out = AccessLog::default();
        // Bytes of every 200 CONNECT line, and whether it ended as normal (`----`).
        let mut tunnels: Vec<(u64, bool)> = Vec::new();
        for line in logs.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let found = words.windows(2).find_map(|w| {
                let (state, counters) = (w[0], w[1]);
                let state_ok = state.len() == 4 && state.chars().all(|c| c.is_ascii_alphabetic() || c == '-');
                let parts = five_fields(counters, '+').filter(|_| state_ok)?;
                Some((
                    state,
                    parts[4].trim_start_matches('+').parse::<u64>().unwrap_or(0),
                ))
            });
            let Some((state, retries)) = found else {
                continue;
            };
            out.lines += 1;
            out.retries += retries;
            if state != "----" {
                *out.termination.entry(state.to_owned()).or_default() += 1;
            }
            let status_bytes = words.windows(3).find_map(|w| {
                five_fields(w[0], '-')?;
                let status = w[1].parse::<u16>().ok().filter(|s| (100..=599).contains(s))?;
                Some((status, w[2].parse::<u64>().ok()?))
            });
            if let Some((200, bytes)) = status_bytes
                && words.contains(&"\"CONNECT")
            {
                tunnels.push((bytes, state == "----"));
            }
        }
        let mut counts: BTreeMap<u64, u64> = BTreeMap::new();
        for (b, _) in &tunnels {
            *counts.entry(*b).or_default() += 1;
        }
        if let Some((&complete, _)) = counts.iter().max_by_key(|(_, n)| **n) {
            out.cut_tunnels = tunnels
                .iter()
                .filter(|(b, normal)| *normal && *b < complete)
                .count() as u64;
        }
        out
    }

    /// Sessions the server side or an admin ended, by the log: termination states starting with `S`
    /// (the server side aborted) or `K` (`shutdown sessions`), and the cut tunnels.
    pub fn resets(&self) -> u64 {
        let states: u64 = self
            .termination
            .iter()
            .filter(|(s, _)| s.starts_with('S') || s.starts_with('K'))
            .map(|(_, n)| n)
            .sum();
        states + self.cut_tunnels
    }
}

struct RunExtras {
    access: AccessLog,
    detect_ms: Option<f64>,
    detected_by: String,
    passive_downs: u64,
    agent_downs: u64,
    check_downs: u64,
    bystander_downs: u64,
    bystander_agent_downs: u64,
    probe_warm: Option<ProbeWarm>,
    rotation_ms: Option<f64>,
    kills: Vec<Kill>,
}

fn summarize(
    cell: Cell,
    plan: &Plan,
    samples: &[Sample],
    victim_exit: Ipv4Addr,
    restore_at: Option<Duration>,
    x: RunExtras,
) -> RunResult {
    let failed = |s: &&Sample| s.outcome != Outcome::Ok;
    let count = |f: &dyn Fn(&Sample) -> bool| samples.iter().filter(|s| f(s)).count() as u64;
    let p = |it: &mut dyn Iterator<Item = &Sample>, q: f64| -> Option<f64> {
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).ok()?;
        let mut any = false;
        for s in it {
            if let Some(l) = s.latency {
                let _ = h.record((l.as_micros() as u64).clamp(1, 120_000_000));
                any = true;
            }
        }
        any.then(|| h.value_at_quantile(q) as f64 / 1e3)
    };
    let bucket = Duration::from_millis(500);
    let n_buckets = plan.total().as_millis().div_ceil(bucket.as_millis()) as usize;
    let series = (0..n_buckets)
        .map(|b| {
            let lo = bucket * b as u32;
            let hi = lo + bucket;
            let in_b: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.scheduled >= lo && s.scheduled < hi)
                .collect();
            Bucket {
                t: lo.as_secs_f64(),
                requests: in_b.len() as u64,
                errors: in_b.iter().filter(|s| s.outcome != Outcome::Ok).count() as u64,
                p99_ms: p(&mut in_b.iter().copied(), 0.99).unwrap_or(0.0),
            }
        })
        .collect();
    let window = |s: &&Sample| restore_at.is_some_and(|r| s.scheduled >= r && s.scheduled < r + plan.after);
    // Every warm-up request that got an answer (an exit address), whether or not it completed: a
    // kill at the end of the warm-up cuts tunnels of the victim only.
    let warm: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.scheduled < plan.warm && s.exit.is_some())
        .collect();
    let victim_share = ratio(
        warm.iter().filter(|s| s.exit == Some(victim_exit)).count() as u64,
        warm.len() as u64,
    );
    let open = open_at_kill(samples, &x.kills, plan.hold);
    let bound =
        (cell.profile == Profile::Connect).then(|| error_bound(&cell, plan, victim_share, x.detect_ms, open));
    RunResult {
        profile: cell.profile,
        fault: cell.fault,
        rung: cell.rung,
        backends: cell.backends,
        repeat: cell.repeat,
        requests: samples.len() as u64,
        errors: samples.iter().filter(failed).count() as u64,
        resets: count(&|s| s.outcome == Outcome::Reset),
        timeouts: count(&|s| s.outcome == Outcome::Timeout),
        status_errors: count(&|s| matches!(s.outcome, Outcome::Status(_))),
        retries: x.access.retries,
        client_retries: count(&|s| s.fell_back),
        logged: x.access.lines,
        log_resets: x.access.resets(),
        log_cut_tunnels: x.access.cut_tunnels,
        termination: x.access.termination,
        p50_ms: p(&mut samples.iter(), 0.50).unwrap_or(0.0),
        p99_ms: p(&mut samples.iter(), 0.99).unwrap_or(0.0),
        detect_ms: x.detect_ms,
        detected_by: x.detected_by,
        passive_downs: x.passive_downs,
        agent_downs: x.agent_downs,
        check_downs: x.check_downs,
        bystander_downs: x.bystander_downs,
        bystander_agent_downs: x.bystander_agent_downs,
        victim_share,
        open_at_kill: open,
        bound,
        probe_warm: x.probe_warm,
        restore_p99_ms: restore_at.and_then(|_| p(&mut samples.iter().filter(window), 0.99)),
        victim_restore_p99_ms: restore_at.and_then(|_| {
            p(
                &mut samples
                    .iter()
                    .filter(window)
                    .filter(|s| s.exit == Some(victim_exit)),
                0.99,
            )
        }),
        victim_restore_requests: samples
            .iter()
            .filter(window)
            .filter(|s| s.exit == Some(victim_exit))
            .count() as u64,
        rotation_ms: x.rotation_ms,
        fault_at_s: plan.warm.as_secs_f64(),
        restore_at_s: restore_at.map(|d| d.as_secs_f64()),
        series,
    }
}

/// Tunnels open on a killed process: answered through it (its exit address) less than `hold`
/// before the kill, so their second ping was still to come.
fn open_at_kill(samples: &[Sample], kills: &[Kill], hold: Duration) -> u64 {
    kills
        .iter()
        .map(|(at, exit)| {
            samples
                .iter()
                .filter(|s| s.exit == Some(*exit))
                .filter(|s| s.answered().is_some_and(|a| a <= *at && a + hold > *at))
                .count() as u64
        })
        .sum()
}

/// The lower bound of a CONNECT run's client errors (see [`RunResult::bound`] and docs/lab.md).
fn error_bound(cell: &Cell, plan: &Plan, share: f64, detect_ms: Option<f64>, open: u64) -> f64 {
    let fault_len = match cell.fault {
        Fault::Blip => BLIP,
        _ => plan.fault,
    };
    // Tunnels sent to the victim before it left rotation. A rotation is planned (no detection);
    // a brownout answers late but answers.
    let exposed = match cell.fault {
        _ if cell.fault.is_rotation() || cell.fault == Fault::Brownout => 0.0,
        _ if cell.rung.client_fallback() => 0.0,
        _ => {
            let t = detect_ms.map_or(fault_len.as_secs_f64(), |d| {
                (d / 1e3).min(fault_len.as_secs_f64())
            });
            let sent = share * f64::from(plan.rate) * t;
            // A fault that answers an error is seen by observe only through a failed answer.
            if matches!(cell.fault, Fault::Tunnel503 | Fault::TargetFail | Fault::Blip) {
                sent.max(1.0)
            } else {
                sent
            }
        }
    };
    exposed + open as f64
}

/// 127.0.0.(11+i), or 127.0.0.(31+i) after a rotation.
fn exit_ip(i: usize, generation: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 11 + i as u8 + 20 * generation)
}

fn set(victim: &Option<Victim>, mode: Mode) {
    if let Some(v) = victim {
        v.set_mode(mode);
    }
}

fn sleep_until(start: Instant, at: Duration) {
    let now = start.elapsed();
    if at > now {
        std::thread::sleep(at - now);
    }
}

/// The drain-rotate sequence of `egress-checker rotate`, through the same runtime-API fleet calls
/// (egress-haproxy-api) and the rotation's drain wait, without the ledger and the exit-IP check.
fn rotate_drain(
    rt: &tokio::runtime::Runtime,
    h: &Haproxy,
    backend: &str,
    server: &str,
    proxy: &mut Tinyproxy,
    new_exit: Ipv4Addr,
) -> anyhow::Result<()> {
    let fleet = Fleet::new(vec![RuntimeApi::new(
        RuntimeApiAddr::Unix(h.runtime_socket().to_path_buf()),
        Duration::from_secs(2),
    )]);
    rt.block_on(async {
        fleet.set_state(backend, server, AdminState::Drain).await?;
        // Sessions finish on their own; the deadline bounds a stuck one.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let left = fleet
            .wait_for_no_sessions(backend, server, deadline, Duration::from_millis(50))
            .await?;
        if left > 0 {
            eprintln!("egress-lab: drain deadline passed with {left} sessions left; cutting them");
            fleet.shutdown_sessions(backend, server).await?;
        }
        fleet.set_state(backend, server, AdminState::Maint).await
    })?;
    proxy.restart(new_exit)?;
    rt.block_on(fleet.set_state(backend, server, AdminState::Ready))?;
    Ok(())
}

fn start_checker(config: &str, agent_port: u16, dir: &std::path::Path) -> anyhow::Result<Checker> {
    let path = dir.join("checker.toml");
    std::fs::write(&path, config)?;
    let metrics_port = free_port()?;
    let mut cmd = Command::new(bin_path("egress-checker")?);
    cmd.arg("--config")
        .arg(&path)
        .arg("--log")
        .arg("warn")
        .arg("run")
        .arg("--agent-listen")
        .arg(format!("127.0.0.1:{agent_port}"))
        .arg("--metrics-listen")
        .arg(format!("127.0.0.1:{metrics_port}"));
    let child = ChildSpec::new("egress-checker", cmd).spawn()?;
    Ok(Checker {
        _child: child,
        metrics_port,
    })
}

/// egress-spoa for the shipped rung, as the shipped config expects it on `{{PORT2}}`: without a
/// ledger (it then tags requests from its key and an exit-IP file, and only logs attribution).
fn start_spoa(
    h: &Haproxy,
    servers: &[(String, SocketAddr)],
    dir: &std::path::Path,
) -> anyhow::Result<ManagedChild> {
    let exits: String = (0..servers.len())
        .map(|i| format!("{} v{} {}\n", rungs::SHIPPED_BACKEND, i + 1, exit_ip(i, 0)))
        .collect();
    let exits_path = dir.join("exit-ips");
    std::fs::write(&exits_path, exits)?;
    let mut cmd = Command::new(bin_path("egress-spoa")?);
    cmd.env("EGRESS_HASH_KEY", egress_harness::stack::KEY_HEX)
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", h.port(SPOA_PORT)))
        .arg("--metrics-listen")
        .arg(format!("127.0.0.1:{}", free_port()?))
        .arg("--exit-ips-file")
        .arg(&exits_path)
        .arg("--spool-path")
        .arg(dir.join("spoa.spool"))
        .arg("--log")
        .arg("warn");
    ChildSpec::new("egress-spoa", cmd).spawn()
}

#[derive(Debug)]
struct Checker {
    _child: ManagedChild,
    metrics_port: u16,
}

/// The checker's probe counters so far, from its /metrics (None if it cannot be read: the report
/// then shows no probe figures for the run, nothing else changes).
fn scrape_probes(port: u16) -> Option<ProbeWarm> {
    let text = metrics::scrape(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).ok()?;
    parse_probes(&text)
}

fn parse_probes(text: &str) -> Option<ProbeWarm> {
    let mut buckets_ms = Vec::new();
    let (mut probes, mut failed) = (None, 0u64);
    for sample in metrics::samples(text) {
        match sample.name.as_str() {
            "egress_checker_probe_duration_seconds_bucket" => {
                let le = sample.label("le")?;
                if le != "+Inf" {
                    buckets_ms.push((le.parse::<f64>().ok()? * 1e3, sample.value as u64));
                }
            }
            "egress_checker_probe_duration_seconds_count" => probes = Some(sample.value as u64),
            "egress_checker_probes_total" if sample.label("result") != Some("ok") => {
                failed += sample.value as u64;
            }
            _ => {}
        }
    }
    Some(ProbeWarm {
        probes: probes?,
        failed,
        buckets_ms,
    })
}

fn server_row(h: &Haproxy, backend: &str, server: &str) -> Option<(String, u64)> {
    let row = h.stat(backend, server).ok().flatten()?;
    Some((row.get("status")?.clone(), row.get("weight")?.parse().ok()?))
}

fn row_via(socket: &std::path::Path, backend: &str, server: &str) -> Option<(String, u64)> {
    let addr = RuntimeApiAddr::Unix(socket.to_path_buf());
    let text = egress_haproxy_api::command_blocking(&addr, "show stat", Duration::from_secs(2)).ok()?;
    let row = egress_haproxy_api::parse_show_stat(&text)
        .ok()?
        .into_iter()
        .find(|r| r.proxy == backend && r.name == server)?;
    Some((row.status, row.weight))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_counters_are_read_from_the_checker_metrics() {
        let text = "# TYPE egress_checker_probe_duration_seconds histogram
egress_checker_probe_duration_seconds_bucket{le=\"0.05\"} 70
egress_checker_probe_duration_seconds_bucket{le=\"0.1\"} 78
egress_checker_probe_duration_seconds_bucket{le=\"+Inf\"} 80
egress_checker_probe_duration_seconds_sum 1.5
egress_checker_probe_duration_seconds_count 80
egress_checker_probes_total{result=\"ok\",verdict=\"counted\"} 77
egress_checker_probes_total{result=\"response-timeout\",verdict=\"counted\"} 2
egress_checker_probes_total{result=\"status\",verdict=\"excused\"} 1
";
        let p = parse_probes(text).expect("parsed");
        assert_eq!((p.probes, p.failed), (80, 3));
        assert_eq!(p.buckets_ms, vec![(50.0, 70), (100.0, 78)]);
        assert_eq!(p.slower_than(50.0), Some(10));
        assert_eq!(p.slower_than(250.0), None);
        assert!(parse_probes("").is_none());
    }

    #[test]
    fn access_log_lines_give_retries_and_termination_states() {
        let logs = "\
127.0.2.1:4000 [07/Dec/2026:05:00:00.000] lab lab/v2 0/0/0/1/305 200 103 - - ---- 30/30/29/8/+1 0/0 \"CONNECT 127.0.0.1:9 HTTP/1.1\"
127.0.2.2:4001 [07/Dec/2026:05:00:00.000] lab lab/v1 0/0/0/1/20 200 81 - - SD-- 30/30/29/8/0 0/0 \"CONNECT 127.0.0.1:9 HTTP/1.1\"
127.0.2.3:4002 [07/Dec/2026:05:00:00.100] entry egress/v1 selected=primary 0/0/0/1/20 200 103 KD-- 1/1/0/0/2 \"CONNECT 127.0.0.1:9 HTTP/1.1\" pool=global
127.0.2.4:4003 [07/Dec/2026:05:00:00.100] lab lab/v3 0/0/0/1/305 200 75 - - CD-- 30/30/29/8/0 0/0 \"GET http://127.0.0.1:9/hold/300 HTTP/1.1\"
127.0.2.5:4004 [07/Dec/2026:05:00:00.200] lab lab/v1 0/0/0/1/302 200 92 - - ---- 30/30/29/8/0 0/0 \"CONNECT 127.0.0.1:9 HTTP/1.1\"
127.0.2.6:4005 [07/Dec/2026:05:00:00.300] lab lab/v1 0/0/0/-1/0 502 209 - - SH-- 30/30/29/8/0 0/0 \"CONNECT 127.0.0.1:9 HTTP/1.1\"
Server lab/v1 is DOWN, reason: Layer4 connection problem, check duration: 0ms. 3 active and 0 backup servers left.
[WARNING]  (1) : Server lab/v1 is DOWN.
";
        let a = AccessLog::parse(logs);
        assert_eq!((a.lines, a.retries), (6, 3));
        assert_eq!(
            a.termination
                .iter()
                .map(|(s, n)| (s.as_str(), *n))
                .collect::<Vec<_>>(),
            vec![("CD--", 1), ("KD--", 1), ("SD--", 1), ("SH--", 1)]
        );
        // The normal-looking 200 tunnel that carried less than the complete ones (103 bytes): 92.
        assert_eq!(a.cut_tunnels, 1);
        // The S*/K* states (3) and the cut tunnel.
        assert_eq!(a.resets(), 4);
    }

    fn plan() -> Plan {
        Plan {
            rate: 100,
            warm: Duration::from_secs(2),
            fault: Duration::from_secs(6),
            after: Duration::from_secs(6),
            hold: Duration::from_millis(300),
            deadline: Duration::from_secs(5),
            log_dir: None,
        }
    }

    fn cell(fault: Fault, rung: Rung) -> Cell {
        Cell {
            profile: Profile::Connect,
            fault,
            rung,
            backends: 4,
            repeat: 0,
        }
    }

    #[test]
    fn the_bound_is_the_exposure_before_detection_plus_the_open_tunnels() {
        let p = plan();
        // 25 tunnels/s on the victim for 552 ms.
        let b = error_bound(&cell(Fault::BlackHole, Rung::D), &p, 0.25, Some(552.0), 0);
        assert!((b - 13.8).abs() < 1e-9, "{b}");
        // Never detected: the whole fault.
        let b = error_bound(&cell(Fault::BlackHole, Rung::A), &p, 0.25, None, 0);
        assert!((b - 150.0).abs() < 1e-9, "{b}");
        // A 503 is seen by observe only through one failed answer.
        assert_eq!(
            error_bound(&cell(Fault::Tunnel503, Rung::D), &p, 0.25, Some(15.0), 0),
            1.0
        );
        // A blip is over after 500 ms.
        let b = error_bound(&cell(Fault::Blip, Rung::B), &p, 0.25, None, 0);
        assert!((b - 12.5).abs() < 1e-9, "{b}");
        // A crash: the open tunnels, plus what reached the dead port before detection.
        let b = error_bound(&cell(Fault::Crash, Rung::D), &p, 0.25, Some(20.0), 7);
        assert!((b - 7.5).abs() < 1e-9, "{b}");
        // The client falls back on a failed set-up: only the open tunnels remain.
        assert_eq!(
            error_bound(&cell(Fault::Tunnel503, Rung::E), &p, 0.25, Some(300.0), 0),
            0.0
        );
        assert_eq!(
            error_bound(&cell(Fault::Crash, Rung::E), &p, 0.25, Some(20.0), 6),
            6.0
        );
        assert_eq!(
            error_bound(&cell(Fault::RotateDrain, Rung::D), &p, 0.25, None, 0),
            0.0
        );
    }

    #[test]
    fn open_tunnels_are_those_answered_within_the_hold_before_the_kill() {
        let exit = exit_ip(0, 0);
        let sample = |answered_ms: u64, exit: Ipv4Addr| Sample {
            scheduled: Duration::from_millis(answered_ms - 5),
            latency: Some(Duration::from_millis(5)),
            exit: Some(exit),
            outcome: Outcome::Ok,
            fell_back: false,
        };
        let samples = vec![
            sample(1600, exit),          // its second ping went before the kill
            sample(1800, exit),          // open
            sample(1990, exit),          // open
            sample(1990, exit_ip(1, 0)), // another backend
            sample(2100, exit),          // after the kill
        ];
        let kills = vec![(Duration::from_secs(2), exit)];
        assert_eq!(open_at_kill(&samples, &kills, Duration::from_millis(300)), 2);
    }
}
