//! Two egress-checker replicas behind one agent address, as on Kubernetes (the `egress-agent`
//! Service): a TCP balancer (HAProxy `mode tcp`, round robin with checks, standing in for the
//! Service) in front of both agent ports; the shipped haproxy.cfg points its agent checks at the
//! balancer. Both replicas probe and answer; one writes the ledger (the ledger-writer lock).
//!
//! - a quarantine and a restore seen by both replicas are each recorded once;
//! - the writer is killed: HAProxy keeps getting answers from the other, quarantines still happen,
//!   and the other takes over the ledger.
//!
//! Needs the binaries: `cargo build --workspace --bins` (scripts/test does it).

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use egress_harness::bins::{bin_path, checker_cli};
use egress_harness::echo::EchoServer;
use egress_harness::entry::EntryPolicy;
use egress_harness::fault::{FaultBackend, FaultMode};
use egress_harness::haproxy::{GLOBAL, Haproxy, shipped_spoe_conf};
use egress_harness::metrics::{scrape, value};
use egress_harness::ports::free_port;
use egress_harness::postgres::Postgres;
use egress_harness::process::{ChildSpec, ManagedChild};
use egress_harness::shipped::{AGENT_PORT, haproxy_for_test};
use egress_harness::tinyproxy::Tinyproxy;
use egress_harness::wait_until;

const KEY_HEX: &str = "00112233445566778899aabbccddeeff";

struct Replica {
    child: ManagedChild,
    metrics: SocketAddr,
}

fn start_checker(
    pg: &Postgres,
    config: &std::path::Path,
    agent_port: u16,
    dir: &std::path::Path,
    name: &str,
) -> anyhow::Result<Replica> {
    let metrics = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
    let mut cmd = Command::new(bin_path("egress-checker")?);
    cmd.env("EGRESS_DATABASE_URL", pg.url())
        .env("EGRESS_HASH_KEY", KEY_HEX)
        .arg("--config")
        .arg(config)
        .arg("run")
        .arg("--agent-listen")
        .arg(format!("127.0.0.1:{agent_port}"))
        .arg("--metrics-listen")
        .arg(metrics.to_string())
        .arg("--spool-path")
        .arg(dir.join(format!("{name}.spool")));
    let child = ChildSpec::new(name, cmd).grace(Duration::from_secs(5)).spawn()?;
    Ok(Replica { child, metrics })
}

fn writer(r: &Replica) -> Option<f64> {
    scrape(r.metrics)
        .ok()
        .and_then(|t| value(&t, "egress_checker_ledger_writer", &[]))
}

fn status(h: &Haproxy, server: &str) -> String {
    h.stat("egress", server)
        .ok()
        .flatten()
        .and_then(|r| r.get("status").cloned())
        .unwrap_or_default()
}

fn count(pg: &Postgres, kind: &str) -> anyhow::Result<usize> {
    let out = checker_cli(
        pg.url(),
        KEY_HEX,
        &["history", "egress/f1", "--since", "1h", "--json"],
    )?;
    let events: serde_json::Value = serde_json::from_str(&out)?;
    Ok(events
        .as_array()
        .map(|a| a.iter().filter(|e| e["kind"] == kind).count())
        .unwrap_or(0))
}

#[test]
fn two_checkers_answer_alike_write_each_transition_once_and_survive_one_dying() -> anyhow::Result<()> {
    let pg = Postgres::start()?;
    let echo = EchoServer::start()?;
    let t1 = Tinyproxy::start(Ipv4Addr::new(127, 0, 0, 2))?;
    let t2 = Tinyproxy::start(Ipv4Addr::new(127, 0, 0, 3))?;
    let f1 = FaultBackend::start(FaultMode::Forward)?;
    let agent_ports = [free_port()?, free_port()?];
    // The Service in front of the replicas: round robin, a dead replica skipped after one failed check.
    let balancer = Haproxy::start(&format!(
        "{GLOBAL}
listen agents
    mode tcp
    bind 127.0.0.1:{{{{PORT0}}}}
    balance roundrobin
    default-server check inter 300ms fall 1 rise 1
    server c1 127.0.0.1:{}
    server c2 127.0.0.1:{}
",
        agent_ports[0], agent_ports[1]
    ))?;
    let spoe = tempfile::tempdir()?;
    let policy = EntryPolicy::for_test(&[echo.http_addr()]);
    let config = haproxy_for_test(
        &[
            ("egress", "t1", t1.addr()),
            ("egress", "t2", t2.addr()),
            ("egress", "f1", f1.addr()),
        ],
        &shipped_spoe_conf(spoe.path())?,
        &policy,
        None,
    )?
    .replace(
        &format!("{{{{PORT{AGENT_PORT}}}}}"),
        &balancer.port(0).to_string(),
    );
    let h = Haproxy::start(&config)?;
    let dir = tempfile::tempdir()?;
    let checker_config = dir.path().join("checker.toml");
    std::fs::write(
        &checker_config,
        format!(
            // No [exit_ip]: f1 (a fault backend) exits from the host's own address, which the exit-IP
            // check would rightly call a leak.
            "[backends]\nruntime_api = \"unix:{sock}\"\nnames = [\"egress\"]\nrefresh = \"1s\"\n\
             [[targets]]\naddress = \"{echo}\"\n",
            sock = h.runtime_socket().display(),
            echo = echo.http_addr(),
        ),
    )?;
    anyhow::ensure!(
        checker_cli(pg.url(), KEY_HEX, &["migrate"]).is_ok(),
        "migrate failed"
    );
    let mut replicas = vec![
        start_checker(&pg, &checker_config, agent_ports[0], dir.path(), "checker-1")?,
        start_checker(&pg, &checker_config, agent_ports[1], dir.path(), "checker-2")?,
    ];
    for s in ["t1", "t2", "f1"] {
        assert!(
            wait_until(Duration::from_secs(30), || status(&h, s) == "UP"),
            "{s}: {}",
            status(&h, s)
        );
    }
    // One writer among the two.
    assert!(
        wait_until(Duration::from_secs(15), || {
            let w: Vec<Option<f64>> = replicas.iter().map(writer).collect();
            w.iter().filter(|v| **v == Some(1.0)).count() == 1 && w.iter().all(Option::is_some)
        }),
        "not exactly one ledger writer: {:?}",
        replicas.iter().map(writer).collect::<Vec<_>>()
    );
    let leader = replicas.iter().position(|r| writer(r) == Some(1.0)).unwrap_or(0);

    // A quarantine and a restore, each seen by both replicas: recorded once each.
    f1.set_mode(FaultMode::Status(502))?;
    assert!(
        wait_until(Duration::from_secs(15), || status(&h, "f1") == "DOWN (agent)"),
        "{}",
        status(&h, "f1")
    );
    f1.set_mode(FaultMode::Forward)?;
    assert!(
        wait_until(Duration::from_secs(15), || status(&h, "f1") == "UP"),
        "{}",
        status(&h, "f1")
    );
    assert!(wait_until(Duration::from_secs(10), || count(&pg, "restored")
        .unwrap_or(0)
        >= 1));
    std::thread::sleep(Duration::from_secs(2));
    let (q, r) = (count(&pg, "quarantined")?, count(&pg, "restored")?);
    println!(
        "TWO CHECKERS: one quarantine and one restore of f1, seen by both replicas: {q} quarantined, {r} restored in the ledger"
    );
    assert_eq!((q, r), (1, 1), "each transition once");

    // The writer dies: the other keeps answering HAProxy, quarantines, and takes over the ledger.
    replicas[leader].child.kill();
    let other = &replicas[1 - leader];
    assert!(
        wait_until(Duration::from_secs(15), || writer(other) == Some(1.0)),
        "the surviving replica never took over the ledger"
    );
    f1.set_mode(FaultMode::Status(502))?;
    assert!(
        wait_until(Duration::from_secs(15), || status(&h, "f1") == "DOWN (agent)"),
        "no quarantine after a replica died: {}",
        status(&h, "f1")
    );
    assert!(wait_until(Duration::from_secs(10), || count(&pg, "quarantined")
        .unwrap_or(0)
        == 2));
    println!(
        "TWO CHECKERS: writer killed; the other quarantined f1 again and recorded it (2 quarantined in the ledger)"
    );
    for s in ["t1", "t2"] {
        assert_eq!(status(&h, s), "UP", "{s}");
    }
    replicas.clear();
    Ok(())
}
