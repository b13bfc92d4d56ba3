//! One run: a fresh pool (tinyproxies, the victim, HAProxy at one rung, the checker from rung (c)),
//! the open-loop load, one fault injected and cleared at fixed times, and the measurements.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use egress_haproxy_api::{AdminState, Fleet, RuntimeApi, RuntimeApiAddr};
use egress_harness::echo::EchoServer;
use egress_harness::haproxy::Haproxy;
use egress_harness::metrics;
use egress_harness::process::{ChildSpec, ManagedChild};
use egress_harness::tinyproxy::Tinyproxy;
use egress_harness::{bins::bin_path, ports::free_port, wait_until};
use tokio::time::Instant;

use crate::load::{self, Load, Outcome, Sample};
use crate::proxy::{Mode, Victim};
use crate::rungs::{self, BACKEND, Rung};
use crate::target::Target;

/// The server that the fault hits.
pub const VICTIM: &str = "v1";
/// The brownout's CONNECT delay: past the probe's 400 ms response timeout, within HAProxy's 2.5 s
/// server timeout and the client's deadline.
/// Detection causes, as HAProxy logs them (see `run`).
pub const PASSIVE: &str = "observe (passive)";
pub const ACTIVE_AGENT: &str = "agent probe (active)";
pub const ACTIVE_CHECK: &str = "haproxy check (active)";
const BROWNOUT: Duration = Duration::from_millis(1200);

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
}

impl Fault {
    /// All faults, in report order.
    pub const ALL: [Fault; 7] = [
        Fault::Crash,
        Fault::Tunnel503,
        Fault::BlackHole,
        Fault::TargetFail,
        Fault::Brownout,
        Fault::RotateDrain,
        Fault::RotateAbrupt,
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
        }
    }

    /// Parses an id.
    pub fn parse(s: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.id() == s.trim())
    }

    /// Whether the victim is a tinyproxy itself (crash, rotations) rather than the lab's fault proxy in
    /// front of one.
    fn bare_tinyproxy(self) -> bool {
        matches!(self, Fault::Crash | Fault::RotateDrain | Fault::RotateAbrupt)
    }

    fn has_restore(self) -> bool {
        !matches!(self, Fault::RotateDrain | Fault::RotateAbrupt)
    }
}

/// Timing and load shared by every run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Requests per second.
    pub rate: u32,
    /// Egress backends in the pool.
    pub backends: usize,
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

/// What one (fault, rung) run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunResult {
    pub fault: Fault,
    pub rung: Rung,
    pub requests: u64,
    pub errors: u64,
    pub resets: u64,
    pub timeouts: u64,
    pub status_errors: u64,
    /// HAProxy `wretr` + `wredis` of the backend over the run.
    pub retries: u64,
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
    /// a false quarantine or mark-down shows here.
    pub bystander_downs: u64,
    /// Of which by the egress-checker's agent (a probe that failed a healthy backend).
    pub bystander_agent_downs: u64,
    /// The checker's probe durations up to the fault (every backend healthy, under the load), from
    /// its own histogram: rungs (c)/(d) only.
    pub probe_warm: Option<ProbeWarm>,
    /// p99 of all requests scheduled in the first `after` window after the restore, ms.
    pub restore_p99_ms: Option<f64>,
    /// p99 of those the victim carried, and how many it carried.
    pub victim_restore_p99_ms: Option<f64>,
    pub victim_restore_requests: u64,
    /// Rotation: how long the sequence took, ms.
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

/// Runs `fault` at `rung`.
pub fn run(
    rt: &tokio::runtime::Runtime,
    fx: &Fixtures,
    plan: &Plan,
    fault: Fault,
    rung: Rung,
) -> anyhow::Result<RunResult> {
    // The pool: tinyproxies with exit addresses 127.0.0.11.., the victim first.
    let mut proxies = (0..plan.backends)
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
    let agent_port = free_port()?;
    let haproxy = Haproxy::start(&rungs::haproxy_config(rung, &servers, agent_port))?;
    let checker = if rung.has_checker() {
        let ramp = if rung == Rung::D {
            plan.after
        } else {
            Duration::ZERO
        };
        Some(start_checker(
            &haproxy,
            fx.probe_echo.http_addr(),
            ramp,
            agent_port,
        )?)
    } else {
        None
    };
    let all_up = wait_until(Duration::from_secs(20), || {
        servers
            .iter()
            .all(|(name, _)| server_row(&haproxy, name).is_some_and(|(s, w)| s == "UP" && w > 0))
    });
    anyhow::ensure!(
        all_up,
        "the pool never came UP: {}",
        haproxy.cmd("show stat").unwrap_or_default()
    );

    let victim_exit = exit_ip(0, 0);
    let retries_before = backend_retries(&haproxy);
    let start = Instant::now();
    let load = Load {
        proxy: SocketAddr::from((Ipv4Addr::LOCALHOST, haproxy.port(0))),
        target: fx.target.addr(),
        rate: plan.rate,
        duration: plan.total(),
        hold: plan.hold,
        deadline: plan.deadline,
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
                    && let Some((status, weight)) = row_via(&socket)
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
    match fault {
        Fault::Crash => proxies[0].kill(),
        Fault::Tunnel503 => set(&victim, Mode::Status(503)),
        Fault::BlackHole => set(&victim, Mode::BlackHole),
        Fault::TargetFail => set(&victim, Mode::FailTarget(fx.target.addr().to_string())),
        Fault::Brownout => set(&victim, Mode::Delay(BROWNOUT)),
        Fault::RotateDrain => {
            let t = std::time::Instant::now();
            rotate_drain(rt, &haproxy, &mut proxies[0])?;
            rotation_ms = Some(t.elapsed().as_secs_f64() * 1e3);
        }
        Fault::RotateAbrupt => {
            let t = std::time::Instant::now();
            proxies[0].kill();
            proxies[0].restart(exit_ip(0, 1))?;
            rotation_ms = Some(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let restore_at = fault_at + plan.fault;
    if fault.has_restore() {
        sleep_until(start, restore_at);
        match fault {
            Fault::Crash => proxies[0].restart(exit_ip(0, 0))?,
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
    let retries = backend_retries(&haproxy).saturating_sub(retries_before);
    let logs = haproxy.logs();
    if let Some(dir) = &plan.log_dir {
        let _ = std::fs::create_dir_all(dir);
        let _ = std::fs::write(dir.join(format!("{}-{:?}-haproxy.log", fault.id(), rung)), &logs);
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
        .filter(|l| !l.starts_with('[') && l.contains(&format!("Server {BACKEND}/{VICTIM} is DOWN")))
        .collect();
    // HAProxy logs the cause: "reason: Health analyze" = observe (passive); "via agent" = the
    // egress-checker's probe (active); any other reason = HAProxy's own check (active, L4).
    let cause = |l: &str| {
        if l.contains("Health analyze") {
            PASSIVE
        } else if l.contains("via agent") {
            ACTIVE_AGENT
        } else {
            ACTIVE_CHECK
        }
    };
    let count = |c: &str| downs.iter().filter(|l| cause(l) == c).count() as u64;
    // Healthy servers: any DOWN of theirs over the whole run (warm-up included).
    let bystanders: Vec<&str> = logs
        .lines()
        .filter(|l| {
            !l.starts_with('[')
                && l.starts_with(&format!("Server {BACKEND}/"))
                && l.contains(" is DOWN")
                && !l.starts_with(&format!("Server {BACKEND}/{VICTIM} "))
        })
        .collect();
    let detected_by = downs
        .first()
        .map_or_else(|| "-".to_owned(), |l| cause(l).to_owned());

    Ok(summarize(
        fault,
        rung,
        plan,
        &samples,
        victim_exit,
        fault.has_restore().then_some(restore_at),
        RunExtras {
            retries,
            detect_ms,
            detected_by,
            passive_downs: count(PASSIVE),
            agent_downs: count(ACTIVE_AGENT),
            check_downs: count(ACTIVE_CHECK),
            bystander_downs: bystanders.len() as u64,
            bystander_agent_downs: bystanders.iter().filter(|l| cause(l) == ACTIVE_AGENT).count() as u64,
            probe_warm,
            rotation_ms,
        },
    ))
}

struct RunExtras {
    retries: u64,
    detect_ms: Option<f64>,
    detected_by: String,
    passive_downs: u64,
    agent_downs: u64,
    check_downs: u64,
    bystander_downs: u64,
    bystander_agent_downs: u64,
    probe_warm: Option<ProbeWarm>,
    rotation_ms: Option<f64>,
}

fn summarize(
    fault: Fault,
    rung: Rung,
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
    RunResult {
        fault,
        rung,
        requests: samples.len() as u64,
        errors: samples.iter().filter(failed).count() as u64,
        resets: count(&|s| s.outcome == Outcome::Reset),
        timeouts: count(&|s| s.outcome == Outcome::Timeout),
        status_errors: count(&|s| matches!(s.outcome, Outcome::Status(_))),
        retries: x.retries,
        p50_ms: p(&mut samples.iter(), 0.50).unwrap_or(0.0),
        p99_ms: p(&mut samples.iter(), 0.99).unwrap_or(0.0),
        detect_ms: x.detect_ms,
        detected_by: x.detected_by,
        passive_downs: x.passive_downs,
        agent_downs: x.agent_downs,
        check_downs: x.check_downs,
        bystander_downs: x.bystander_downs,
        bystander_agent_downs: x.bystander_agent_downs,
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
fn rotate_drain(rt: &tokio::runtime::Runtime, h: &Haproxy, proxy: &mut Tinyproxy) -> anyhow::Result<()> {
    let fleet = Fleet::new(vec![RuntimeApi::new(
        RuntimeApiAddr::Unix(h.runtime_socket().to_path_buf()),
        Duration::from_secs(2),
    )]);
    rt.block_on(async {
        fleet.set_state(BACKEND, VICTIM, AdminState::Drain).await?;
        // Sessions finish on their own; the deadline bounds a stuck one.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let left = fleet
            .wait_for_no_sessions(BACKEND, VICTIM, deadline, Duration::from_millis(50))
            .await?;
        if left > 0 {
            eprintln!("egress-lab: drain deadline passed with {left} sessions left; cutting them");
            fleet.shutdown_sessions(BACKEND, VICTIM).await?;
        }
        fleet.set_state(BACKEND, VICTIM, AdminState::Maint).await
    })?;
    proxy.restart(exit_ip(0, 1))?;
    rt.block_on(fleet.set_state(BACKEND, VICTIM, AdminState::Ready))?;
    Ok(())
}

fn start_checker(
    h: &Haproxy,
    probe_target: SocketAddr,
    ramp: Duration,
    agent_port: u16,
) -> anyhow::Result<Checker> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("checker.toml");
    std::fs::write(
        &path,
        rungs::checker_config(h.runtime_socket(), probe_target, ramp),
    )?;
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
        _dir: dir,
        metrics_port,
    })
}

#[derive(Debug)]
struct Checker {
    _child: ManagedChild,
    _dir: tempfile::TempDir,
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

fn server_row(h: &Haproxy, server: &str) -> Option<(String, u64)> {
    let row = h.stat(BACKEND, server).ok().flatten()?;
    Some((row.get("status")?.clone(), row.get("weight")?.parse().ok()?))
}

fn row_via(socket: &std::path::Path) -> Option<(String, u64)> {
    let addr = RuntimeApiAddr::Unix(socket.to_path_buf());
    let text = egress_haproxy_api::command_blocking(&addr, "show stat", Duration::from_secs(2)).ok()?;
    let row = egress_haproxy_api::parse_show_stat(&text)
        .ok()?
        .into_iter()
        .find(|r| r.proxy == BACKEND && r.name == VICTIM)?;
    Some((row.status, row.weight))
}

fn backend_retries(h: &Haproxy) -> u64 {
    h.stat(BACKEND, "BACKEND")
        .ok()
        .flatten()
        .map(|r| {
            ["wretr", "wredis"]
                .iter()
                .filter_map(|k| r.get(*k).and_then(|v| v.parse::<u64>().ok()))
                .sum()
        })
        .unwrap_or(0)
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
}
