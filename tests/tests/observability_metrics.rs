//! The alert rules (deploy/prometheus/egress-alerts.yml) and the Grafana dashboard
//! (deploy/grafana/egress-dashboard.json) name only metrics the binaries really serve: the whole
//! stack runs (HAProxy from the shipped config, egress-checker and egress-spoa with the ledger), a
//! little traffic flows, a tunnel breaks (a quarantine), an SPOP peer sends garbage (an error
//! DISCONNECT), and then every `egress_*` name in the two files must appear in a `/metrics` scrape.
//!
//! Needs the binaries: `cargo build --workspace --bins` (scripts/test does it).

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

use egress_harness::metrics::{samples, scrape, value};
use egress_harness::shipped::repo_root;
use egress_harness::stack::{FAULT_SERVER, LocalStack};
use egress_harness::wait_until;

/// Every `egress_<...>` identifier in `text` (a prefix in prose, such as `egress_ledger_*`, ends in
/// `_` and is skipped).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text.get(i..).and_then(|t| t.find("egress_")) {
        let start = i + pos;
        let boundary = start == 0
            || !bytes
                .get(start - 1)
                .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_');
        let end = text
            .get(start..)
            .and_then(|t| t.find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')))
            .map_or(text.len(), |e| start + e);
        if boundary && !text.get(..end).unwrap_or_default().ends_with('_') {
            names.insert(text.get(start..end).unwrap_or_default().to_owned());
        }
        i = end.max(start + 1);
    }
    names
}

/// Sample names in a Prometheus text exposition (histograms show as `_bucket`, `_sum`, `_count`).
fn served_names(text: &str) -> BTreeSet<String> {
    samples(text).map(|s| s.name).collect()
}

#[test]
fn rules_and_dashboard_use_only_served_metrics() -> anyhow::Result<()> {
    let root = repo_root();
    let rules = std::fs::read_to_string(root.join("deploy/prometheus/egress-alerts.yml"))?;
    let dashboard = std::fs::read_to_string(root.join("deploy/grafana/egress-dashboard.json"))?;
    let used: BTreeSet<String> = metric_names(&rules)
        .into_iter()
        .chain(metric_names(&dashboard))
        .collect();
    assert!(used.len() > 20, "too few metric names found: {used:?}");

    let stack = LocalStack::start(&mut |_| {}, &|| false)?;
    let wait = Duration::from_secs(60);
    assert!(
        wait_until(wait, || stack.all_up()),
        "not all servers UP: {:?}\n{}",
        stack.server_stats().ok(),
        stack.agent_logs()
    );
    // Traffic: SPOE NOTIFY/ACK, attribution, exit-IP lookups.
    for i in 1..=4 {
        let exit = stack.request(Ipv4Addr::new(127, 0, 4, i), false)?;
        assert!(exit.starts_with("127.0.0."), "{exit}");
    }
    assert_eq!(stack.request(Ipv4Addr::new(127, 0, 4, 9), true)?, "127.0.0.5");
    // A quarantine: transitions, failing probes, control probes.
    stack.break_tunnel()?;
    assert!(
        wait_until(wait, || stack.is_down(FAULT_SERVER.0, FAULT_SERVER.1)),
        "{} never DOWN\n{}",
        FAULT_SERVER.1,
        stack.agent_logs()
    );
    stack.repair_tunnel()?;
    // An SPOP peer that sends a frame of an unknown type: the agent answers with an error DISCONNECT.
    let mut peer = TcpStream::connect(stack.spoa_addr())?;
    peer.set_read_timeout(Some(Duration::from_secs(10)))?;
    peer.write_all(&[0, 0, 0, 1, 0x63])?;
    let mut answer = Vec::new();
    let _ = peer.read_to_end(&mut answer);
    assert!(!answer.is_empty(), "the agent did not answer the garbage frame");

    let mut served = BTreeSet::new();
    let ok = wait_until(wait, || {
        served = [stack.checker_metrics(), stack.spoa_metrics()]
            .into_iter()
            .filter_map(|a| scrape(a).ok())
            .flat_map(|t| served_names(&t))
            .collect();
        used.is_subset(&served)
    });
    let missing: Vec<_> = used.difference(&served).collect();
    assert!(
        ok,
        "named by the rules or the dashboard but not served: {missing:?}"
    );
    // The quarantine is visible in the metrics the rules read.
    let checker = scrape(stack.checker_metrics())?;
    assert!(
        value(
            &checker,
            "egress_checker_transitions_total",
            &[("to", "quarantined")]
        )
        .is_some_and(|v| v >= 1.0),
        "{checker}"
    );
    Ok(())
}

#[test]
fn finds_metric_names_in_expressions() {
    let names = metric_names(
        "expr: rate(egress_a_total[5m]) / sum(egress_b_seconds_bucket{x=\"egress_c\"}) my_egress_d egress_e_*",
    );
    let want: BTreeSet<String> = ["egress_a_total", "egress_b_seconds_bucket", "egress_c"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    assert_eq!(names, want);
    let served = served_names("# HELP x\nfoo_bucket{le=\"1\"} 1\nbar 2\n");
    assert!(served.contains("foo_bucket") && served.contains("bar"));
}
