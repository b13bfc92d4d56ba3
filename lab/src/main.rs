//! `egress-lab`: the resilience lab. Builds a pool on loopback (HAProxy 2.6, tinyproxy egress
//! backends, a fault proxy, the egress-checker), drives it with an open-loop CONNECT load, injects
//! each fault under each rung of the configuration ladder, and writes `results.md`, `results.json`
//! and one PNG per fault. See docs/lab.md.

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

use crate::rungs::Rung;
use crate::scenario::{Fault, Fixtures, Plan, RunResult};

/// The resilience lab: every fault under every rung of the ladder, identical load and fault timing.
///
/// Needs haproxy (2.6), tinyproxy and fonts-dejavu-core installed, and the egress-checker binary
/// built next to this one (`cargo build -p egress-checker -p egress-lab`). Everything runs on
/// 127.0.0.0/8. Exits 2 when a headline inequality is not met or the table is malformed (after
/// writing the report; the error/retry-rate targets only with --strict), 1 on a setup error.
#[derive(Debug, Parser)]
#[command(name = "egress-lab", version)]
struct Args {
    /// Directory for results.md, results.json, <fault>.png and logs/ (each run's HAProxy log).
    #[arg(long, default_value = "lab-out")]
    out: PathBuf,
    /// CI mode: short phases, rung (d) for every fault plus (c) for tunnel-503 (the slow-start
    /// comparison); checks the table's shape and the headline inequalities.
    #[arg(long)]
    quick: bool,
    /// Offered load, requests (new CONNECT tunnels) per second.
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// Egress backends in the pool (3-5).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(3..=5))]
    backends: u8,
    /// Faults to run, comma-separated (crash, tunnel-503, black-hole, target-503, brownout,
    /// rotate-drain, rotate-abrupt). Default: all.
    #[arg(long, value_delimiter = ',')]
    faults: Vec<String>,
    /// Also fail (exit 2) on the error/retry-rate targets, not only on the asserted checks.
    #[arg(long)]
    strict: bool,
    /// Rungs to run, comma-separated (a, b, c, d). Default: all (quick: see --quick).
    #[arg(long, value_delimiter = ',')]
    rungs: Vec<String>,
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

fn run(args: &Args) -> anyhow::Result<bool> {
    let faults = if args.faults.is_empty() {
        Fault::ALL.to_vec()
    } else {
        args.faults
            .iter()
            .map(|f| Fault::parse(f).with_context(|| format!("unknown fault {f:?}")))
            .collect::<anyhow::Result<_>>()?
    };
    let rungs: Option<Vec<Rung>> = if args.rungs.is_empty() {
        None
    } else {
        Some(
            args.rungs
                .iter()
                .map(|r| Rung::parse(r).with_context(|| format!("unknown rung {r:?} (a, b, c or d)")))
                .collect::<anyhow::Result<_>>()?,
        )
    };
    let plan = if args.quick {
        Plan {
            rate: args.rate,
            backends: usize::from(args.backends),
            warm: Duration::from_secs(2),
            fault: Duration::from_secs(4),
            after: Duration::from_secs(4),
            hold: Duration::from_millis(300),
            deadline: Duration::from_secs(5),
            log_dir: Some(args.out.join("logs")),
        }
    } else {
        Plan {
            rate: args.rate,
            backends: usize::from(args.backends),
            warm: Duration::from_secs(2),
            fault: Duration::from_secs(6),
            after: Duration::from_secs(6),
            hold: Duration::from_millis(300),
            deadline: Duration::from_secs(5),
            log_dir: Some(args.out.join("logs")),
        }
    };
    let runs: Vec<(Fault, Rung)> = faults
        .iter()
        .flat_map(|&f| {
            let rs = match (&rungs, args.quick) {
                (Some(rs), _) => rs.clone(),
                (None, false) => Rung::ALL.to_vec(),
                (None, true) if f == Fault::Tunnel503 => vec![Rung::C, Rung::D],
                (None, true) => vec![Rung::D],
            };
            rs.into_iter().map(move |r| (f, r))
        })
        .collect();

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
    let mut results: Vec<RunResult> = Vec::new();
    for (i, (fault, rung)) in runs.iter().enumerate() {
        eprintln!(
            "egress-lab: [{}/{}] {} at {}",
            i + 1,
            runs.len(),
            fault.id(),
            rung.label()
        );
        let r = scenario::run(&rt, &fixtures, &plan, *fault, *rung)
            .with_context(|| format!("{} at {}", fault.id(), rung.label()))?;
        eprintln!(
            "egress-lab:   errors {}/{} resets {} retries {} p99 {:.1} ms detect {:?} by {}",
            r.errors, r.requests, r.resets, r.retries, r.p99_ms, r.detect_ms, r.detected_by
        );
        results.push(r);
    }

    // Shape: one row per planned run, each with the whole offered load and every plot bucket.
    let expected =
        (f64::from(plan.rate) * (plan.warm + plan.fault + plan.after).as_secs_f64()).round() as u64;
    let mut shape = Vec::new();
    for (fault, rung) in &runs {
        match results.iter().find(|r| r.fault == *fault && r.rung == *rung) {
            None => shape.push(format!("{} {}: no row", fault.id(), rung.label())),
            Some(r) if r.requests != expected || r.series.is_empty() => shape.push(format!(
                "{} {}: {} requests (expected {expected}), {} buckets",
                fault.id(),
                rung.label(),
                r.requests,
                r.series.len()
            )),
            Some(_) => {}
        }
    }
    let checks = report::checks(&results);
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let setup = format!(
        "Load: {} CONNECT tunnels/s open loop, {} ms idle hold per tunnel, {} s deadline; {} backends \
         (roundrobin), victim v1. Phases: {} s warm, fault for {} s, {} s after restore (also the rung (d) \
         ramp and the cold backend's warm-up).",
        plan.rate,
        plan.hold.as_millis(),
        plan.deadline.as_secs(),
        plan.backends,
        plan.warm.as_secs(),
        plan.fault.as_secs(),
        plan.after.as_secs()
    );
    let mut md = report::markdown(&results, &checks, &command, &setup);
    if !shape.is_empty() {
        md.push_str(&format!("\n## Table shape errors\n\n- {}\n", shape.join("\n- ")));
    }
    std::fs::write(args.out.join("results.md"), &md)?;
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_string_pretty(
            &serde_json::json!({ "checks": checks, "runs": results, "shape_errors": shape }),
        )?,
    )?;
    for fault in &faults {
        report::plot(&results, *fault, &args.out.join(format!("{}.png", fault.id())))
            .with_context(|| format!("plotting {}", fault.id()))?;
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
        "egress-lab: wrote {} ({})",
        args.out.display(),
        if ok {
            "all checks met"
        } else {
            "SOME CHECKS NOT MET"
        }
    );
    Ok(ok)
}
