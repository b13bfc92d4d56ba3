//! `egress-lab`: the resilience lab. Builds a pool on loopback (HAProxy 2.6, tinyproxy egress
//! backends, a fault proxy, the egress-checker; egress-spoa for the shipped rung), drives it with an
//! open-loop load (CONNECT tunnels or plain-HTTP proxy requests), injects each fault under each rung
//! of the configuration ladder, and writes `results.md`, `results.json` and one PNG per fault and
//! profile. See docs/lab.md.

#![forbid(unsafe_code)]

mod load;
mod proxy;
mod report;
mod rungs;
mod scenario;
mod target;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;

use crate::load::Profile;
use crate::rungs::Rung;
use crate::scenario::{Cell, Fault, Fixtures, Plan, RunResult};

/// The resilience lab: every fault under every rung of the ladder, identical load and fault timing.
///
/// Needs haproxy (2.6), tinyproxy and fonts-dejavu-core installed, and the egress-checker and
/// egress-spoa binaries built next to this one (`cargo build -p egress-checker -p egress-spoa -p
/// egress-lab`). Everything runs on 127.0.0.0/8, one run at a time (a 2-core machine). Exits 2 when
/// an asserted headline check is not met or the table is malformed (after writing the report; the
/// targets and every flagged miss only with --strict), 1 on a setup error.
#[derive(Debug, Parser)]
#[command(name = "egress-lab", version)]
struct Args {
    /// Directory for results.md, results.json, <fault>.png and logs/ (each run's HAProxy log).
    #[arg(long, default_value = "lab-out")]
    out: PathBuf,
    /// CI mode: short phases; CONNECT at rung (d) for the faults of the first lab, (c) and (e) for
    /// tunnel-503, plain HTTP at (d) for tunnel-503; checks the table's shape and the asserted
    /// headline checks.
    #[arg(long)]
    quick: bool,
    /// Runs of each headline cell (CONNECT crash, tunnel-503 and black hole at rung (d)) in the
    /// full ladder: the time to detect is reported as p50/max over them.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10))]
    repeat: u32,
    /// Offered load, requests (new CONNECT tunnels or plain-HTTP requests) per second.
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// Egress backends in the pool (3-5); the full ladder also runs two cells at 3 and 5 (capacity).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(3..=5))]
    backends: u8,
    /// Faults to run, comma-separated (crash, tunnel-503, black-hole, target-503, brownout, blip,
    /// rotate-drain, rotate-abrupt, rolling-drain, rolling-abrupt). Default: the schedule's.
    #[arg(long, value_delimiter = ',')]
    faults: Vec<String>,
    /// Also fail (exit 2) on the targets and every flagged miss, not only on the asserted checks.
    #[arg(long)]
    strict: bool,
    /// Rungs to run, comma-separated (a, b, c, d, e, s). Default: the schedule's (see docs/lab.md).
    #[arg(long, value_delimiter = ',')]
    rungs: Vec<String>,
    /// Load profiles to run, comma-separated (connect, http). Default: both.
    #[arg(long, value_delimiter = ',')]
    profiles: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // The harness prints each child's log tail when it stops; the lab stops hundreds of them.
    // Setting the variable needs `unsafe` in edition 2024, so re-run ourselves with it instead.
    if std::env::var_os("EGRESS_HARNESS_QUIET").is_none() {
        let status = std::env::current_exe().and_then(|exe| {
            std::process::Command::new(exe)
                .args(std::env::args_os().skip(1))
                .env("EGRESS_HARNESS_QUIET", "1")
                .status()
        });
        return match status {
            Ok(s) => ExitCode::from(u8::try_from(s.code().unwrap_or(1)).unwrap_or(1)),
            Err(e) => {
                eprintln!("egress-lab: re-running with EGRESS_HARNESS_QUIET=1: {e}");
                ExitCode::from(1)
            }
        };
    }
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("egress-lab: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Parses a comma list with `parse`, or `None` when empty.
fn parse_list<T>(
    items: &[String],
    what: &str,
    parse: fn(&str) -> Option<T>,
) -> anyhow::Result<Option<Vec<T>>> {
    if items.is_empty() {
        return Ok(None);
    }
    items
        .iter()
        .map(|i| parse(i).with_context(|| format!("unknown {what} {i:?}")))
        .collect::<anyhow::Result<Vec<_>>>()
        .map(Some)
}

/// The cells of a run, in order: the full ladder, or the quick (CI) subset.
fn schedule(quick: bool, backends: usize, repeat: u32) -> Vec<Cell> {
    use Fault::*;
    use Profile::{Connect, Http};
    use Rung::{A, B, C, D, E, Shipped as S};
    let mut cells = Vec::new();
    let mut add = |profile: Profile, fault: Fault, rungs: &[Rung]| {
        for &rung in rungs {
            cells.push(Cell {
                profile,
                fault,
                rung,
                backends,
                repeat: 0,
            });
        }
    };
    if quick {
        for fault in [Crash, BlackHole, TargetFail, Brownout, RotateDrain, RotateAbrupt] {
            add(Connect, fault, &[D]);
        }
        add(Connect, Tunnel503, &[C, D, E]);
        add(Http, Tunnel503, &[D]);
        return cells;
    }
    for fault in [Crash, Tunnel503, BlackHole, TargetFail] {
        add(Connect, fault, &[A, B, C, D, E, S]);
    }
    add(Connect, Brownout, &[C, D, S]);
    add(Connect, Blip, &[B, D, E, S]);
    for fault in [RotateDrain, RotateAbrupt, RollingDrain, RollingAbrupt] {
        add(Connect, fault, &[D, S]);
    }
    for fault in [Crash, Tunnel503, BlackHole, TargetFail] {
        add(Http, fault, &[B, D, S]);
    }
    add(Http, Blip, &[D]);
    // The headline cells again, for p50/max of the time to detect.
    for fault in [Crash, Tunnel503, BlackHole] {
        for r in 1..repeat {
            cells.push(Cell {
                profile: Connect,
                fault,
                rung: D,
                backends,
                repeat: r,
            });
        }
    }
    // Capacity: the same faults in a smaller and a larger pool.
    for n in [3, 5].into_iter().filter(|n| *n != backends) {
        for fault in [Tunnel503, BlackHole] {
            cells.push(Cell {
                profile: Connect,
                fault,
                rung: D,
                backends: n,
                repeat: 0,
            });
        }
    }
    cells
}

fn run(args: &Args) -> anyhow::Result<bool> {
    let faults = parse_list(&args.faults, "fault", Fault::parse)?;
    let rungs = parse_list(&args.rungs, "rung (a, b, c, d, e or s)", Rung::parse)?;
    let profiles = parse_list(&args.profiles, "profile (connect or http)", Profile::parse)?;
    let backends = usize::from(args.backends);
    let (fault_len, after) = if args.quick { (3, 3) } else { (6, 6) };
    let plan = Plan {
        rate: args.rate,
        warm: Duration::from_secs(2),
        fault: Duration::from_secs(fault_len),
        after: Duration::from_secs(after),
        hold: Duration::from_millis(300),
        deadline: Duration::from_secs(5),
        log_dir: Some(args.out.join("logs")),
    };
    let mut runs: Vec<Cell> = schedule(args.quick, backends, args.repeat)
        .into_iter()
        .filter(|c| faults.as_ref().is_none_or(|f| f.contains(&c.fault)))
        .filter(|c| profiles.as_ref().is_none_or(|p| p.contains(&c.profile)))
        .collect();
    // Explicit rungs replace the schedule's for every selected (profile, fault).
    if let Some(rungs) = &rungs {
        let mut explicit: Vec<Cell> = Vec::new();
        for c in &runs {
            for &rung in rungs {
                let cell = Cell { rung, ..*c };
                if !explicit.contains(&cell) {
                    explicit.push(cell);
                }
            }
        }
        runs = explicit;
    }

    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    report::load_font()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let fixtures = Fixtures {
        target: rt.block_on(target::Target::start())?,
        probe_echo: egress_harness::echo::EchoServer::start()?,
    };
    let started = std::time::Instant::now();
    let mut results: Vec<RunResult> = Vec::new();
    for (i, cell) in runs.iter().enumerate() {
        let name = scenario::cell_id(cell);
        eprintln!("egress-lab: [{}/{}] {name}", i + 1, runs.len());
        let r = scenario::run(&rt, &fixtures, &plan, *cell).with_context(|| name.clone())?;
        eprintln!(
            "egress-lab:   errors {}/{} (bound {}) resets {} retries {} (client {}) p99 {:.1} ms detect {:?} by {}",
            r.errors,
            r.requests,
            r.bound.map_or("-".into(), |b| format!("{b:.1}")),
            r.resets,
            r.retries,
            r.client_retries,
            r.p99_ms,
            r.detect_ms,
            r.detected_by
        );
        results.push(r);
    }
    let wall = started.elapsed();

    // Shape: one row per planned run, each with the whole offered load and every plot bucket.
    let expected =
        (f64::from(plan.rate) * (plan.warm + plan.fault + plan.after).as_secs_f64()).round() as u64;
    let mut shape = Vec::new();
    for cell in &runs {
        let id = scenario::cell_id(cell);
        match results.iter().find(|r| {
            r.profile == cell.profile
                && r.fault == cell.fault
                && r.rung == cell.rung
                && r.backends == cell.backends
                && r.repeat == cell.repeat
        }) {
            None => shape.push(format!("{id}: no row")),
            Some(r) if r.requests != expected || r.series.is_empty() => shape.push(format!(
                "{id}: {} requests (expected {expected}), {} buckets",
                r.requests,
                r.series.len()
            )),
            Some(_) => {}
        }
    }
    let checks = report::checks(&results, backends);
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let setup = format!(
        "Load: {} requests/s open loop from {} client addresses; CONNECT: a fresh tunnel each, {} ms idle \
         hold; plain HTTP: `GET http://target/hold/{}` on a fresh connection, answered after {} ms; {} s \
         deadline; {backends} backends (roundrobin; source hash in rungs (e) and (s)), victim v1. Phases: {} s \
         warm, fault for {} s (the blip: 500 ms), {} s after restore (also the rung (d) ramp and the cold \
         backend's warm-up). {} runs, one at a time, in {} min {} s.",
        plan.rate,
        load::SOURCES,
        plan.hold.as_millis(),
        plan.hold.as_millis(),
        plan.hold.as_millis(),
        plan.deadline.as_secs(),
        plan.warm.as_secs(),
        plan.fault.as_secs(),
        plan.after.as_secs(),
        runs.len(),
        wall.as_secs() / 60,
        wall.as_secs() % 60
    );
    let mut md = report::markdown(&results, &checks, &command, &setup, backends);
    if !shape.is_empty() {
        md.push_str(&format!("\n## Table shape errors\n\n- {}\n", shape.join("\n- ")));
    }
    std::fs::write(args.out.join("results.md"), &md)?;
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_string_pretty(
            &serde_json::json!({ "checks": checks, "runs": results, "shape_errors": shape, "wall_seconds": wall.as_secs_f64() }),
        )?,
    )?;
    for profile in Profile::ALL {
        for fault in Fault::ALL {
            if results.iter().any(|r| r.profile == profile && r.fault == fault) {
                let name = report::plot_name(profile, fault);
                report::plot(
                    &results,
                    profile,
                    fault,
                    backends,
                    &args.out.join(format!("{name}.png")),
                )
                .with_context(|| format!("plotting {name}"))?;
            }
        }
    }
    println!("{md}");
    // Full runs check only the headline runs they contain; quick runs must have them all.
    let relevant: Vec<&report::Check> = checks
        .iter()
        .filter(|c| c.asserted || args.strict)
        .filter(|c| args.quick || !c.detail.contains("not run"))
        .collect();
    let ok = shape.is_empty() && relevant.iter().all(|c| c.met);
    eprintln!(
        "egress-lab: wrote {} in {:.0} s ({})",
        args.out.display(),
        wall.as_secs_f64(),
        if ok {
            "all checks met"
        } else {
            "SOME CHECKS NOT MET"
        }
    );
    Ok(ok)
}
