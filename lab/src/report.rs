//! The report: Markdown tables, JSON, one PNG per fault, and the headline checks.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use plotters::prelude::*;

use crate::rungs::Rung;
use crate::scenario::{ACTIVE_AGENT, Fault, PASSIVE, RunResult};

/// The DejaVu font the plots use (Debian `fonts-dejavu-core`).
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// One headline inequality and whether this run met it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    pub name: String,
    pub met: bool,
    pub detail: String,
    /// Whether a miss fails the run (exit 2). The error/retry-rate targets and the false-quarantine
    /// count are reported but only gate the exit code with `--strict`: HAProxy cannot replay a CONNECT,
    /// which bounds the error rate from below (see docs/lab.md), and a loaded machine can slow a healthy
    /// backend past the probe deadline.
    pub asserted: bool,
}

fn find(results: &[RunResult], fault: Fault, rung: Rung) -> Option<&RunResult> {
    results.iter().find(|r| r.fault == fault && r.rung == rung)
}

/// The headline inequalities for the full ladder (d). A check whose runs are missing is not met.
pub fn checks(results: &[RunResult]) -> Vec<Check> {
    let mut out = Vec::new();
    for fault in [Fault::Crash, Fault::Tunnel503, Fault::BlackHole] {
        let r = find(results, fault, Rung::D);
        out.push(Check {
            name: format!("(d) {}: error rate < 0.1 % and retry rate < 0.1 %", fault.id()),
            met: r.is_some_and(|r| r.error_rate() < 0.001 && r.retry_rate() < 0.001),
            asserted: false,
            detail: r.map_or("not run".into(), |r| {
                format!(
                    "errors {}/{} = {:.3} %, retries {} = {:.3} %",
                    r.errors,
                    r.requests,
                    100.0 * r.error_rate(),
                    r.retries,
                    100.0 * r.retry_rate()
                )
            }),
        });
    }
    let t = find(results, Fault::TargetFail, Rung::D);
    out.push(Check {
        name: "(d) target-503: caught first by passive observe; the probe (agent) does not see it".into(),
        met: t.is_some_and(|r| r.detected_by == PASSIVE && r.passive_downs > r.agent_downs),
        asserted: true,
        detail: t.map_or("not run".into(), |r| {
            format!("observe downs {}, agent downs {}", r.passive_downs, r.agent_downs)
        }),
    });
    let b = find(results, Fault::Brownout, Rung::D);
    out.push(Check {
        name: "(d) brownout: caught first by the probe (agent); passive observe does not see it".into(),
        met: b.is_some_and(|r| r.detected_by == ACTIVE_AGENT && r.agent_downs > r.passive_downs),
        asserted: true,
        detail: b.map_or("not run".into(), |r| {
            format!("agent downs {}, observe downs {}", r.agent_downs, r.passive_downs)
        }),
    });
    let (d, a) = (
        find(results, Fault::RotateDrain, Rung::D),
        find(results, Fault::RotateAbrupt, Rung::D),
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
    let probed: Vec<&RunResult> = results.iter().filter(|r| r.rung.has_checker()).collect();
    let false_quarantines: u64 = probed.iter().map(|r| r.bystander_agent_downs).sum();
    out.push(Check {
        name: "(c)/(d): the probe never quarantines a healthy backend".into(),
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
        find(results, Fault::Tunnel503, Rung::C),
        find(results, Fault::Tunnel503, Rung::D),
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
    out
}

/// The Markdown report.
pub fn markdown(results: &[RunResult], checks: &[Check], command: &str, setup: &str) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "Command: `{command}`\n\n{setup}\n");
    let _ = writeln!(md, "## Headline checks (full ladder, rung d)\n");
    for c in checks {
        let gate = if c.asserted {
            ""
        } else if c.name.contains("error rate") {
            " (a target of the issue: reported, gates the exit code only with --strict)"
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
    for fault in Fault::ALL {
        let rows: Vec<&RunResult> = results.iter().filter(|r| r.fault == fault).collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(md, "\n## {}\n\n{}\n", fault.id(), fault.describe());
        let _ = writeln!(
            md,
            "| rung | requests | error rate | resets | retry rate | p50 ms | p99 ms | time to detect | first DOWN reason | DOWNs observe/agent/check | healthy-server DOWNs (agent) | p99 after restore, all (victim, n) |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|");
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
            let _ = writeln!(
                md,
                "| {} | {} | {:.3} % ({}) | {} | {:.3} % ({}) | {:.1} | {:.1} | {} | {} | {}/{}/{} | {} ({}) | {} |",
                r.rung.label(),
                r.requests,
                100.0 * r.error_rate(),
                r.errors,
                r.resets,
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
        let _ = writeln!(md, "\n![{0}](lab/{0}.png)", fault.id());
    }
    let probed: Vec<&RunResult> = results.iter().filter(|r| r.probe_warm.is_some()).collect();
    if !probed.is_empty() {
        let _ = writeln!(
            md,
            "\n## The checker's probes before each fault\n\nEvery backend healthy, under the load; the \
             checker's own `egress_checker_probe_duration_seconds` histogram at the fault injection.\n"
        );
        let _ = writeln!(
            md,
            "| fault | rung | probes | failed | > 50 ms | > 100 ms | > 250 ms |\n|---|---|---:|---:|---:|---:|---:|"
        );
        for r in probed {
            if let Some(p) = &r.probe_warm {
                let over = |ms: f64| p.slower_than(ms).map_or("-".into(), |n| n.to_string());
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    r.fault.id(),
                    r.rung.label(),
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

/// One PNG per fault: error rate and p99 over time, a line per rung, fault and restore marked.
pub fn plot(results: &[RunResult], fault: Fault, path: &Path) -> anyhow::Result<()> {
    let rows: Vec<&RunResult> = results.iter().filter(|r| r.fault == fault).collect();
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
            &format!("{}: {}", fault.id(), "per 0.5 s bucket"),
            ("sans-serif", 22),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (top, bottom) = root.split_vertically(340);
    let colors = [RED, BLUE, GREEN, BLACK];
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

    fn run(fault: Fault, rung: Rung) -> RunResult {
        RunResult {
            fault,
            rung,
            requests: 1000,
            errors: 0,
            resets: 0,
            timeouts: 0,
            status_errors: 0,
            retries: 0,
            p50_ms: 1.0,
            p99_ms: 2.0,
            detect_ms: Some(10.0),
            detected_by: ACTIVE_CHECK.into(),
            passive_downs: 0,
            agent_downs: 0,
            check_downs: 0,
            bystander_downs: 0,
            bystander_agent_downs: 0,
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

    fn passing() -> Vec<RunResult> {
        let mut rs: Vec<RunResult> = Fault::ALL.iter().map(|f| run(*f, Rung::D)).collect();
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
                Fault::RotateAbrupt => r.resets = 5,
                _ => {}
            }
        }
        let mut c = run(Fault::Tunnel503, Rung::C);
        c.restore_p99_ms = Some(900.0);
        rs.push(c);
        rs
    }

    #[test]
    fn all_checks_met_when_every_figure_is_on_the_right_side() {
        let checks = checks(&passing());
        assert_eq!(checks.len(), 8);
        assert!(checks.iter().all(|c| c.met), "{checks:?}");
        assert_eq!(checks.iter().filter(|c| c.asserted).count(), 4);
    }

    #[test]
    fn each_inequality_fails_on_its_own_figure() {
        type Flip = fn(&mut Vec<RunResult>);
        let flip: [(&str, Flip); 6] = [
            ("crash", |rs| rs[0].errors = 1),
            ("target-503", |rs| rs[3].detected_by = ACTIVE_AGENT.into()),
            ("brownout", |rs| rs[4].passive_downs = 5),
            ("rotation", |rs| rs[5].resets = 1),
            ("healthy backend", |rs| rs[7].bystander_agent_downs = 1),
            ("restore", |rs| rs[7].restore_p99_ms = Some(50.0)),
        ];
        for (name, f) in flip {
            let mut rs = passing();
            f(&mut rs);
            let failed: Vec<_> = checks(&rs).into_iter().filter(|c| !c.met).collect();
            assert_eq!(failed.len(), 1, "{name}: {failed:?}");
            assert!(failed[0].name.contains(name), "{name}: {failed:?}");
        }
    }

    #[test]
    fn a_missing_run_is_not_met() {
        let rs: Vec<RunResult> = passing()
            .into_iter()
            .filter(|r| r.fault != Fault::Brownout)
            .collect();
        let c = checks(&rs)
            .into_iter()
            .find(|c| c.name.contains("brownout"))
            .unwrap();
        assert!(!c.met && c.detail == "not run", "{c:?}");
    }
}
