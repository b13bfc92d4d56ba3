//! The report: Markdown tables, JSON, one PNG per fault and profile, the headline checks, and the
//! target verdict of every table row (misses flagged in the table and, with `--strict`, in the exit
//! code).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use plotters::prelude::*;

use crate::load::Profile;
use crate::rungs::Rung;
use crate::scenario::{ACTIVE_AGENT, Fault, PASSIVE, RunResult};

/// The DejaVu font the plots use (Debian `fonts-dejavu-core`).
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// The rate target (issue 9): < 0.1 % of the requests.
const RATE_TARGET: f64 = 0.001;

/// One headline inequality and whether this run met it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    pub name: String,
    pub met: bool,
    pub detail: String,
    /// Whether a miss fails the run (exit 2). The targets and the false-quarantine count are reported
    /// but only gate the exit code with `--strict`: HAProxy cannot replay a CONNECT, which bounds the
    /// tunnel error rate from below (see docs/lab.md), and a loaded machine can slow a healthy
    /// backend past the probe deadline.
    pub asserted: bool,
}

/// The target a table row is held to, if any, and whether it met it.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub met: bool,
    /// The target, and what missed it.
    pub text: String,
}

/// The HTTP faults whose targets are issue 9's as written.
const HTTP_TARGET_FAULTS: [Fault; 4] = [
    Fault::Crash,
    Fault::Tunnel503,
    Fault::BlackHole,
    Fault::TargetFail,
];

/// The target of one row: CONNECT at the top rungs (d) and (e): errors <= the bound + 1; plain HTTP
/// at (d) for crash, tunnel-503, black hole and target-503: error rate and retry rate < 0.1 %.
pub fn verdict(r: &RunResult) -> Option<Verdict> {
    match r.profile {
        Profile::Connect if matches!(r.rung, Rung::D | Rung::E) => {
            let limit = r.bound? + 1.0;
            let met = r.errors as f64 <= limit;
            Some(Verdict {
                met,
                text: format!("errors <= bound + 1 = {limit:.1}"),
            })
        }
        Profile::Http if r.rung == Rung::D && HTTP_TARGET_FAULTS.contains(&r.fault) => {
            let mut missed = Vec::new();
            if r.error_rate() >= RATE_TARGET {
                missed.push(format!("errors {:.3} %", 100.0 * r.error_rate()));
            }
            if r.retry_rate() >= RATE_TARGET {
                missed.push(format!("retries {:.3} %", 100.0 * r.retry_rate()));
            }
            Some(Verdict {
                met: missed.is_empty(),
                text: if missed.is_empty() {
                    "errors and retries < 0.1 %".into()
                } else {
                    format!("errors and retries < 0.1 %: {}", missed.join(", "))
                },
            })
        }
        _ => None,
    }
}

/// The first run of a cell in the default pool.
fn find(
    results: &[RunResult],
    profile: Profile,
    fault: Fault,
    rung: Rung,
    backends: usize,
) -> Option<&RunResult> {
    cell_runs(results, profile, fault, rung, backends)
        .into_iter()
        .next()
}

/// Every run (repeats included) of a cell.
fn cell_runs(
    results: &[RunResult],
    profile: Profile,
    fault: Fault,
    rung: Rung,
    backends: usize,
) -> Vec<&RunResult> {
    results
        .iter()
        .filter(|r| r.profile == profile && r.fault == fault && r.rung == rung && r.backends == backends)
        .collect()
}

fn errors_detail(r: &RunResult) -> String {
    format!(
        "errors {}/{} = {:.3} %, retries {} = {:.3} %",
        r.errors,
        r.requests,
        100.0 * r.error_rate(),
        r.retries,
        100.0 * r.retry_rate()
    )
}

/// The headline inequalities; `backends` is the default pool size (the cells run at another size
/// are the capacity comparison). A check whose runs are missing is not met.
pub fn checks(results: &[RunResult], backends: usize) -> Vec<Check> {
    use Profile::{Connect, Http};
    let mut out = Vec::new();
    for fault in [
        Fault::Crash,
        Fault::Tunnel503,
        Fault::BlackHole,
        Fault::TargetFail,
    ] {
        let runs = cell_runs(results, Connect, fault, Rung::D, backends);
        out.push(Check {
            name: format!("(d) {}: tunnel errors <= the bound + 1 in every run", fault.id()),
            met: !runs.is_empty() && runs.iter().all(|r| verdict(r).is_some_and(|v| v.met)),
            asserted: false,
            detail: if runs.is_empty() {
                "not run".into()
            } else {
                runs.iter()
                    .map(|r| format!("{} (bound {:.1})", r.errors, r.bound.unwrap_or(0.0)))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        });
    }
    let t = find(results, Connect, Fault::TargetFail, Rung::D, backends);
    out.push(Check {
        name: "(d) target-503: caught first by passive observe; the probe (agent) does not see it".into(),
        met: t.is_some_and(|r| r.detected_by == PASSIVE && r.passive_downs > r.agent_downs),
        asserted: true,
        detail: t.map_or("not run".into(), |r| {
            format!("observe downs {}, agent downs {}", r.passive_downs, r.agent_downs)
        }),
    });
    let b = find(results, Connect, Fault::Brownout, Rung::D, backends);
    out.push(Check {
        name: "(d) brownout: caught first by the probe (agent); passive observe does not see it".into(),
        met: b.is_some_and(|r| r.detected_by == ACTIVE_AGENT && r.agent_downs > r.passive_downs),
        asserted: true,
        detail: b.map_or("not run".into(), |r| {
            format!("agent downs {}, observe downs {}", r.agent_downs, r.passive_downs)
        }),
    });
    let (d, a) = (
        find(results, Connect, Fault::RotateDrain, Rung::D, backends),
        find(results, Connect, Fault::RotateAbrupt, Rung::D, backends),
    );
    out.push(Check {
        name: "(d) rotation: zero client resets when drained, non-zero on abrupt kill".into(),
        met: d.is_some_and(|d| d.resets == 0) && a.is_some_and(|a| a.resets > 0),
        asserted: true,
        detail: format!(
            "drained {}, abrupt {}",
            d.map_or("not run".into(), |r| r.resets.to_string()),
            a.map_or("not run".into(), |r| r.resets.to_string())
        ),
    });
    // A rolling restart takes every server down in turn: not a false quarantine.
    let probed: Vec<&RunResult> = results
        .iter()
        .filter(|r| r.rung.has_checker() && !matches!(r.fault, Fault::RollingDrain | Fault::RollingAbrupt))
        .collect();
    let false_quarantines: u64 = probed.iter().map(|r| r.bystander_agent_downs).sum();
    out.push(Check {
        name: "the probe never quarantines a healthy backend (rungs with the checker)".into(),
        met: !probed.is_empty() && false_quarantines == 0,
        // Reported: a loaded CI machine can slow a healthy backend past the probe deadline.
        asserted: false,
        detail: if probed.is_empty() {
            "not run".into()
        } else {
            format!(
                "agent DOWNs of healthy servers: {false_quarantines} over {} runs",
                probed.len()
            )
        },
    });
    let (c, d) = (
        find(results, Connect, Fault::Tunnel503, Rung::C, backends),
        find(results, Connect, Fault::Tunnel503, Rung::D, backends),
    );
    out.push(Check {
        name: "tunnel-503 restore of a cold backend: p99 during the ramp (d) < immediate full-weight rejoin (c)".into(),
        met: matches!((c.and_then(|r| r.restore_p99_ms), d.and_then(|r| r.restore_p99_ms)), (Some(c), Some(d)) if d < c),
        asserted: true,
        detail: if c.is_none() || d.is_none() {
            "not run".into()
        } else {
            format!(
                "(c) {} ms, (d) {} ms",
                c.and_then(|r| r.restore_p99_ms).map_or("n/a".into(), |v| format!("{v:.1}")),
                d.and_then(|r| r.restore_p99_ms).map_or("n/a".into(), |v| format!("{v:.1}"))
            )
        },
    });
    let h = find(results, Http, Fault::Tunnel503, Rung::D, backends);
    out.push(Check {
        name: "plain HTTP (d) tunnel-503: error rate < 0.1 % (HAProxy retries the 503 elsewhere)".into(),
        met: h.is_some_and(|r| r.error_rate() < RATE_TARGET),
        asserted: true,
        detail: h.map_or("not run".into(), errors_detail),
    });
    for fault in HTTP_TARGET_FAULTS {
        let r = find(results, Http, fault, Rung::D, backends);
        out.push(Check {
            name: format!(
                "plain HTTP (d) {}: error rate < 0.1 % and retry rate < 0.1 %",
                fault.id()
            ),
            met: r.is_some_and(|r| verdict(r).is_some_and(|v| v.met)),
            asserted: false,
            detail: r.map_or("not run".into(), errors_detail),
        });
    }
    let e = find(results, Connect, Fault::Tunnel503, Rung::E, backends);
    out.push(Check {
        name: "(e) client fallback, tunnel-503: errors <= 1 (retries counted)".into(),
        met: e.is_some_and(|r| r.errors <= 1),
        asserted: true,
        detail: e.map_or("not run".into(), |r| {
            format!(
                "errors {}/{}, client second attempts {}, HAProxy retries {}",
                r.errors, r.requests, r.client_retries, r.retries
            )
        }),
    });
    let (rd, ra) = (
        find(results, Connect, Fault::RollingDrain, Rung::D, backends),
        find(results, Connect, Fault::RollingAbrupt, Rung::D, backends),
    );
    out.push(Check {
        name: "(d) rolling restart: drained = zero resets at the client and in the access log; without draining > 0".into(),
        met: rd.is_some_and(|r| r.resets == 0 && r.log_resets == 0) && ra.is_some_and(|r| r.resets > 0),
        asserted: false,
        detail: format!(
            "drained {}, abrupt {}",
            rd.map_or("not run".into(), |r| format!("client {} / log {}", r.resets, r.log_resets)),
            ra.map_or("not run".into(), |r| format!("client {} / log {}", r.resets, r.log_resets))
        ),
    });
    let misses: Vec<String> = results
        .iter()
        .filter(|r| verdict(r).is_some_and(|v| !v.met))
        .map(row_name)
        .collect();
    out.push(Check {
        name: "every table row that has a target meets it".into(),
        met: misses.is_empty(),
        asserted: false,
        detail: if misses.is_empty() {
            format!(
                "{} rows with a target",
                results.iter().filter(|r| verdict(r).is_some()).count()
            )
        } else {
            format!("missed: {}", misses.join("; "))
        },
    });
    out
}

/// `<profile> <fault> <rung>[, N backends][ #k]`.
fn row_name(r: &RunResult) -> String {
    format!("{} {} {}", r.profile.id(), r.fault.id(), row_label(r, None))
}

/// The rung label, with the pool size when it is not `default` and the repeat number.
fn row_label(r: &RunResult, default: Option<usize>) -> String {
    let mut s = r.rung.label().to_owned();
    if default.is_none_or(|d| d != r.backends) {
        let _ = write!(s, ", {} backends", r.backends);
    }
    if r.repeat > 0 {
        let _ = write!(s, " #{}", r.repeat + 1);
    }
    s
}

/// p50 and max of a list.
fn p50_max(mut v: Vec<f64>) -> Option<(f64, f64)> {
    v.sort_by(f64::total_cmp);
    Some((*v.get(v.len() / 2)?, *v.last()?))
}

/// The Markdown report.
pub fn markdown(
    results: &[RunResult],
    checks: &[Check],
    command: &str,
    setup: &str,
    backends: usize,
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "Command: `{command}`\n\n{setup}\n");
    let _ = writeln!(md, "## Headline checks\n");
    for c in checks {
        let gate = if c.asserted {
            ""
        } else {
            " (reported, gates the exit code only with --strict)"
        };
        let _ = writeln!(
            md,
            "- {} **{}**{gate}: {}",
            if c.met { "MET" } else { "NOT MET" },
            c.name,
            c.detail
        );
    }
    for profile in Profile::ALL {
        for fault in Fault::ALL {
            let rows: Vec<&RunResult> = results
                .iter()
                .filter(|r| r.profile == profile && r.fault == fault)
                .collect();
            if rows.is_empty() {
                continue;
            }
            let (title, load) = match profile {
                Profile::Connect => (fault.id().to_owned(), "CONNECT tunnels"),
                Profile::Http => (format!("http {}", fault.id()), "plain-HTTP proxy requests"),
            };
            let _ = writeln!(md, "\n## {title}\n\n{} ({load})\n", fault.describe());
            let _ = writeln!(
                md,
                "| rung | requests | errors | bound | target | resets client/log | retries HAProxy (client) | p50 ms | p99 ms | time to detect | first DOWN reason | DOWNs observe/agent/check | healthy-server DOWNs (agent) | p99 after restore, all (victim, n) |"
            );
            let _ = writeln!(
                md,
                "|---|---:|---:|---:|---|---|---:|---:|---:|---:|---|---|---|---|"
            );
            for r in rows {
                let detect = match (r.detect_ms, r.rotation_ms) {
                    (_, Some(rot)) => format!("rotation took {rot:.0} ms"),
                    (Some(d), None) => format!("{d:.0} ms"),
                    (None, None) => "never".into(),
                };
                let restore = match r.restore_p99_ms {
                    Some(all) => format!(
                        "{all:.1} ms ({}, n={})",
                        r.victim_restore_p99_ms
                            .map_or("-".into(), |v| format!("{v:.1} ms")),
                        r.victim_restore_requests
                    ),
                    None => "-".into(),
                };
                let bound = r.bound.map_or("-".into(), |b| {
                    if r.open_at_kill > 0 {
                        format!("{b:.1} ({} open)", r.open_at_kill)
                    } else {
                        format!("{b:.1}")
                    }
                });
                let target = match verdict(r) {
                    Some(v) if v.met => format!("met ({})", v.text),
                    Some(v) => format!("**MISS** ({})", v.text),
                    None => "-".into(),
                };
                let client = if r.rung.client_fallback() {
                    format!(" ({})", r.client_retries)
                } else {
                    String::new()
                };
                let _ = writeln!(
                    md,
                    "| {} | {} | {:.3} % ({}) | {} | {} | {}/{} | {:.3} % ({}){client} | {:.1} | {:.1} | {} | {} | {}/{}/{} | {} ({}) | {} |",
                    row_label(r, Some(backends)),
                    r.requests,
                    100.0 * r.error_rate(),
                    r.errors,
                    bound,
                    target,
                    r.resets,
                    r.log_resets,
                    100.0 * r.retry_rate(),
                    r.retries,
                    r.p50_ms,
                    r.p99_ms,
                    detect,
                    r.detected_by,
                    r.passive_downs,
                    r.agent_downs,
                    r.check_downs,
                    r.bystander_downs,
                    r.bystander_agent_downs,
                    restore
                );
            }
            let _ = writeln!(md, "\n![{0}](lab/{0}.png)", plot_name(profile, fault));
        }
    }
    repeats_table(&mut md, results, backends);
    termination_table(&mut md, results, backends);
    let probed: Vec<&RunResult> = results.iter().filter(|r| r.probe_warm.is_some()).collect();
    if !probed.is_empty() {
        let _ = writeln!(
            md,
            "\n## The checker's probes before each fault\n\nEvery backend healthy, under the load; the \
             checker's own `egress_checker_probe_duration_seconds` histogram at the fault injection.\n"
        );
        let _ = writeln!(
            md,
            "| profile | fault | rung | probes | failed | > 50 ms | > 100 ms | > 250 ms |\n|---|---|---|---:|---:|---:|---:|---:|"
        );
        for r in probed {
            if let Some(p) = &r.probe_warm {
                let over = |ms: f64| p.slower_than(ms).map_or("-".into(), |n| n.to_string());
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {} | {} |",
                    r.profile.id(),
                    r.fault.id(),
                    row_label(r, Some(backends)),
                    p.probes,
                    p.failed,
                    over(50.0),
                    over(100.0),
                    over(250.0)
                );
            }
        }
    }
    md
}

/// Detection and errors over the repeated runs of a cell.
fn repeats_table(md: &mut String, results: &[RunResult], backends: usize) {
    let mut cells: Vec<(Profile, Fault, Rung, usize)> = Vec::new();
    for r in results {
        let key = (r.profile, r.fault, r.rung, r.backends);
        if r.repeat > 0 && !cells.contains(&key) {
            cells.push(key);
        }
    }
    if cells.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\n## Repeated cells: time to detect and errors over every run\n\n\
         | profile | fault | rung | runs | time to detect p50 / max | never detected | errors min / max | bound max | target misses |\n\
         |---|---|---|---:|---|---:|---|---:|---:|"
    );
    for (profile, fault, rung, n) in cells {
        let runs = cell_runs(results, profile, fault, rung, n);
        let detects: Vec<f64> = runs.iter().filter_map(|r| r.detect_ms).collect();
        let never = runs.len() - detects.len();
        let detect = p50_max(detects).map_or("-".into(), |(p, m)| format!("{p:.0} / {m:.0} ms"));
        let errors: Vec<u64> = runs.iter().map(|r| r.errors).collect();
        let bound = runs
            .iter()
            .filter_map(|r| r.bound)
            .fold(None, |m: Option<f64>, b| Some(m.map_or(b, |m| m.max(b))));
        let misses = runs.iter().filter(|r| verdict(r).is_some_and(|v| !v.met)).count();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {detect} | {never} | {} / {} | {} | {misses} |",
            profile.id(),
            fault.id(),
            row_label(runs[0], Some(backends)),
            runs.len(),
            errors.iter().min().copied().unwrap_or(0),
            errors.iter().max().copied().unwrap_or(0),
            bound.map_or("-".into(), |b| format!("{b:.1}")),
        );
    }
}

/// HAProxy's access-log termination states of the rotations and the kills.
fn termination_table(md: &mut String, results: &[RunResult], backends: usize) {
    let rows: Vec<&RunResult> = results
        .iter()
        .filter(|r| r.fault.is_rotation() || r.fault == Fault::Crash)
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\n## Access-log termination states (crash, rotations, rolling restarts)\n\n\
         Every state but `----` (normal end), from HAProxy's access log of the run; `S...` = the \
         server side aborted, `K...` = killed by the runtime API (`shutdown sessions`), `C...` = the \
         client aborted (its deadline). A tunnel that a killed process closed is logged `----`: the \
         cut tunnels are the 200 CONNECTs logged `----` with fewer bytes than a complete one.\n\n\
         | profile | fault | rung | requests logged | states (count) | cut tunnels | log resets (S/K + cut) | client resets |\n|---|---|---|---:|---|---:|---:|---:|"
    );
    for r in rows {
        let states = if r.termination.is_empty() {
            "none".to_owned()
        } else {
            r.termination
                .iter()
                .map(|(s, n)| format!("`{s}` {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {states} | {} | {} | {} |",
            r.profile.id(),
            r.fault.id(),
            row_label(r, Some(backends)),
            r.logged,
            r.log_cut_tunnels,
            r.log_resets,
            r.resets
        );
    }
}

/// The PNG name of a (profile, fault): `<fault>` for CONNECT (as before), `http-<fault>` for HTTP.
pub fn plot_name(profile: Profile, fault: Fault) -> String {
    match profile {
        Profile::Connect => fault.id().to_owned(),
        Profile::Http => format!("http-{}", fault.id()),
    }
}

/// Loads the plot font once (ab_glyph needs the bytes for the process lifetime).
pub fn load_font() -> anyhow::Result<()> {
    let bytes =
        std::fs::read(FONT).with_context(|| format!("reading {FONT} (Debian package fonts-dejavu-core)"))?;
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(bytes.into_boxed_slice()),
    )
    .map_err(|_| anyhow::anyhow!("{FONT} is not a usable TrueType font"))
}

/// One PNG per fault and profile: error rate and p99 over time, a line per rung (the first run of each
/// cell in the default pool), fault and restore marked.
pub fn plot(
    results: &[RunResult],
    profile: Profile,
    fault: Fault,
    backends: usize,
    path: &Path,
) -> anyhow::Result<()> {
    let rows: Vec<&RunResult> = results
        .iter()
        .filter(|r| r.profile == profile && r.fault == fault && r.repeat == 0 && r.backends == backends)
        .collect();
    let Some(first) = rows.first() else {
        return Ok(());
    };
    let t_max = first.series.last().map_or(1.0, |b| b.t + 0.5);
    let err_max = rows
        .iter()
        .flat_map(|r| r.series.iter())
        .map(|b| {
            if b.requests == 0 {
                0.0
            } else {
                100.0 * b.errors as f64 / b.requests as f64
            }
        })
        .fold(1.0_f64, f64::max)
        * 1.1;
    let p99_max = rows
        .iter()
        .flat_map(|r| r.series.iter())
        .map(|b| b.p99_ms)
        .fold(1.0_f64, f64::max)
        * 1.1;
    let root = BitMapBackend::new(path, (1000, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let root = root
        .titled(
            &format!("{}: per 0.5 s bucket", plot_name(profile, fault)),
            ("sans-serif", 22),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (top, bottom) = root.split_vertically(340);
    let colors = [RED, BLUE, GREEN, BLACK, CYAN, RGBColor(230, 140, 0)];
    for (area, title, y_max, is_err) in [
        (top, "error rate %", err_max, true),
        (bottom, "p99 latency ms", p99_max, false),
    ] {
        let mut chart = ChartBuilder::on(&area)
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .caption(title, ("sans-serif", 16))
            .build_cartesian_2d(0.0..t_max, 0.0..y_max)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("seconds since load start")
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut marks = vec![(first.fault_at_s, "fault")];
        if let Some(r) = first.restore_at_s {
            marks.push((r, "restore"));
        }
        for (x, _) in &marks {
            chart
                .draw_series(LineSeries::new(
                    vec![(*x, 0.0), (*x, y_max)],
                    MAGENTA.stroke_width(2),
                ))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        for (i, r) in rows.iter().enumerate() {
            let color = colors[i % colors.len()];
            let points: Vec<(f64, f64)> = r
                .series
                .iter()
                .map(|b| {
                    let y = if is_err {
                        if b.requests == 0 {
                            0.0
                        } else {
                            100.0 * b.errors as f64 / b.requests as f64
                        }
                    } else {
                        b.p99_ms
                    };
                    (b.t + 0.25, y)
                })
                .collect();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .label(r.rung.label())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::ACTIVE_CHECK;

    fn run(profile: Profile, fault: Fault, rung: Rung) -> RunResult {
        RunResult {
            profile,
            fault,
            rung,
            backends: 4,
            repeat: 0,
            requests: 1000,
            errors: 0,
            resets: 0,
            timeouts: 0,
            status_errors: 0,
            retries: 0,
            client_retries: 0,
            logged: 1000,
            log_resets: 0,
            log_cut_tunnels: 0,
            termination: Default::default(),
            p50_ms: 1.0,
            p99_ms: 2.0,
            detect_ms: Some(10.0),
            detected_by: ACTIVE_CHECK.into(),
            passive_downs: 0,
            agent_downs: 0,
            check_downs: 0,
            bystander_downs: 0,
            bystander_agent_downs: 0,
            victim_share: 0.25,
            open_at_kill: 0,
            bound: (profile == Profile::Connect).then_some(1.0),
            probe_warm: None,
            restore_p99_ms: Some(100.0),
            victim_restore_p99_ms: None,
            victim_restore_requests: 0,
            rotation_ms: None,
            fault_at_s: 2.0,
            restore_at_s: Some(8.0),
            series: Vec::new(),
        }
    }

    /// Index of each run in [`passing`].
    const TARGET: usize = 3;
    const BROWNOUT: usize = 4;
    const DRAIN: usize = 6;
    const TUNNEL503_C: usize = 10;
    const HTTP_503: usize = 12;
    const E_503: usize = 15;

    fn passing() -> Vec<RunResult> {
        let mut rs: Vec<RunResult> = Fault::ALL
            .iter()
            .map(|f| run(Profile::Connect, *f, Rung::D))
            .collect();
        for r in &mut rs {
            match r.fault {
                Fault::TargetFail => {
                    r.detected_by = PASSIVE.into();
                    r.passive_downs = 3;
                }
                Fault::Brownout => {
                    r.detected_by = ACTIVE_AGENT.into();
                    r.agent_downs = 1;
                }
                Fault::RotateAbrupt | Fault::RollingAbrupt => {
                    r.resets = 5;
                    r.errors = 5;
                    r.bound = Some(5.0);
                }
                _ => {}
            }
        }
        let mut c = run(Profile::Connect, Fault::Tunnel503, Rung::C);
        c.restore_p99_ms = Some(900.0);
        rs.push(c);
        rs.push(run(Profile::Http, Fault::Crash, Rung::D));
        rs.push(run(Profile::Http, Fault::Tunnel503, Rung::D));
        rs.push(run(Profile::Http, Fault::BlackHole, Rung::D));
        rs.push(run(Profile::Http, Fault::TargetFail, Rung::D));
        let mut e = run(Profile::Connect, Fault::Tunnel503, Rung::E);
        e.bound = Some(0.0);
        e.errors = 1;
        e.client_retries = 40;
        rs.push(e);
        rs
    }

    #[test]
    fn all_checks_met_when_every_figure_is_on_the_right_side() {
        let rs = passing();
        assert_eq!(
            (rs[TUNNEL503_C].rung, rs[HTTP_503].profile, rs[E_503].rung),
            (Rung::C, Profile::Http, Rung::E)
        );
        let checks = checks(&rs, 4);
        assert_eq!(checks.len(), 17);
        assert!(checks.iter().all(|c| c.met), "{checks:?}");
        assert_eq!(checks.iter().filter(|c| c.asserted).count(), 6);
    }

    #[test]
    fn each_inequality_fails_on_its_own_figure() {
        type Flip = fn(&mut Vec<RunResult>);
        let flip: [(&str, Flip); 9] = [
            ("target-503: caught", |rs| {
                rs[TARGET].detected_by = ACTIVE_AGENT.into()
            }),
            ("brownout", |rs| rs[BROWNOUT].passive_downs = 5),
            ("rotation", |rs| rs[DRAIN].resets = 1),
            ("healthy backend", |rs| rs[TUNNEL503_C].bystander_agent_downs = 1),
            ("restore", |rs| rs[TUNNEL503_C].restore_p99_ms = Some(50.0)),
            ("HAProxy retries the 503", |rs| rs[HTTP_503].errors = 2),
            ("client fallback", |rs| {
                rs[E_503].errors = 2;
                rs[E_503].bound = Some(1.0);
            }),
            ("rolling", |rs| rs[8].log_resets = 1),
            ("(d) black-hole", |rs| rs[2].errors = 3),
        ];
        for (name, f) in flip {
            let mut rs = passing();
            f(&mut rs);
            let failed: Vec<_> = checks(&rs, 4).into_iter().filter(|c| !c.met).collect();
            assert!(!failed.is_empty(), "{name}: nothing failed");
            assert!(failed[0].name.contains(name), "{name}: {failed:?}");
        }
    }

    #[test]
    fn a_missing_run_is_not_met() {
        let rs: Vec<RunResult> = passing()
            .into_iter()
            .filter(|r| r.fault != Fault::Brownout)
            .collect();
        let c = checks(&rs, 4)
            .into_iter()
            .find(|c| c.name.contains("brownout"))
            .unwrap();
        assert!(!c.met && c.detail == "not run", "{c:?}");
    }

    #[test]
    fn rows_are_held_to_their_targets_and_misses_are_flagged() {
        let mut r = run(Profile::Connect, Fault::TargetFail, Rung::D);
        r.errors = 12;
        assert!(!verdict(&r).unwrap().met);
        let md = markdown(&[r.clone()], &[], "cmd", "setup", 4);
        assert!(md.contains("**MISS** (errors <= bound + 1 = 2.0)"), "{md}");
        r.rung = Rung::B;
        assert_eq!(verdict(&r), None);
        let mut h = run(Profile::Http, Fault::Crash, Rung::D);
        h.retries = 7;
        let v = verdict(&h).unwrap();
        assert!(!v.met && v.text.contains("retries 0.700 %"), "{v:?}");
        h.fault = Fault::Brownout;
        assert_eq!(verdict(&h), None);
    }
}
