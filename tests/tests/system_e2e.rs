//! The whole system at once, against real components: HAProxy 2.6 with the SPOE filter and
//! agent-checks, three tinyproxy egress backends (exit IPs 127.0.0.2-4), egress-checker and
//! egress-spoa both writing to a throwaway Postgres ledger, and the operator CLI reading it back.
//!
//! It proves the loop the design promises: the checker records each server's exit IP, the agent
//! picks those IPs up from the ledger and tags requests with them, attribution lands in the ledger,
//! and `egress-checker who` / `history` answer from it — including a quarantine.
//!
//! Needs the binaries: `cargo build --workspace --bins` (scripts/test does it).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use egress_common::client_hash::HashKey;
use egress_harness::bins::bin_path;
use egress_harness::client::echo_ip_via_proxy;
use egress_harness::echo::EchoServer;
use egress_harness::entry::EntryPolicy;
use egress_harness::haproxy::{Haproxy, raised_spoe_conf};
use egress_harness::ports::free_port;
use egress_harness::postgres::Postgres;
use egress_harness::process::{ChildSpec, ManagedChild};
use egress_harness::shipped::{AGENT_PORT, FRONT_PORT, SPOA_PORT, haproxy_for_test};
use egress_harness::tinyproxy::Tinyproxy;
use egress_harness::wait_until;

const KEY_HEX: &str = "00112233445566778899aabbccddeeff";
const BACKEND: &str = "egress";

/// Run `egress-checker <args>` to completion and return its stdout; fail with stderr otherwise.
fn cli(db: &str, args: &[&str]) -> anyhow::Result<String> {
    egress_harness::bins::checker_cli(db, KEY_HEX, args)
}

fn json_rows(text: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    match serde_json::from_str::<serde_json::Value>(text)? {
        serde_json::Value::Array(rows) => Ok(rows),
        other => anyhow::bail!("expected a JSON array, got {other}"),
    }
}

fn history_kinds(db: &str, server: &str) -> Vec<String> {
    cli(db, &["history", server, "--since", "1h", "--json"])
        .ok()
        .and_then(|t| json_rows(&t).ok())
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e.get("kind").and_then(|k| k.as_str()).map(str::to_owned))
        .collect()
}

#[test]
fn checker_and_agent_fill_the_ledger_and_who_answers_from_it() -> anyhow::Result<()> {
    let wait = Duration::from_secs(30);
    let dir = tempfile::tempdir()?;
    let pg = Postgres::start()?;
    let db = pg.url().to_owned();
    // The harness already migrated; the operator command must be an idempotent no-op on top.
    let migrated = cli(&db, &["migrate"])?;
    assert!(migrated.contains("up to date"), "{migrated}");

    let echo = EchoServer::start()?;
    let mut proxies = [
        ("t1", Tinyproxy::start(Ipv4Addr::new(127, 0, 0, 2))?),
        ("t2", Tinyproxy::start(Ipv4Addr::new(127, 0, 0, 3))?),
        ("t3", Tinyproxy::start(Ipv4Addr::new(127, 0, 0, 4))?),
    ];
    let exit_of_server: BTreeMap<&str, String> = proxies
        .iter()
        .map(|(name, t)| (*name, t.bind_addr().to_string()))
        .collect();

    // The shipped haproxy.cfg (haproxy/haproxy.cfg.in), rendered for these three servers and
    // harness ports: the test runs the configuration operators deploy, not a private copy.
    let servers: Vec<(&str, &str, SocketAddr)> = proxies
        .iter()
        .map(|(name, t)| (BACKEND, *name, t.addr()))
        .collect();
    // Raised SPOE budget (2 s): this test asserts that every request was attributed.
    let config = haproxy_for_test(
        &servers,
        &raised_spoe_conf(dir.path())?,
        &EntryPolicy::for_test(&[echo.http_addr(), echo.https_addr()]),
        None,
    )?;
    let haproxy = Haproxy::start(&config)?;
    let agent_port = haproxy.port(AGENT_PORT);
    let spoa_port = haproxy.port(SPOA_PORT);

    // egress-checker: backends from HAProxy's runtime API, probes through each tinyproxy to the
    // echo target, the exit IP from the echo, transitions and exit IPs into the ledger.
    let checker_toml = dir.path().join("checker.toml");
    std::fs::write(
        &checker_toml,
        format!(
            "[backends]\nruntime_api = \"unix:{sock}\"\nnames = [\"{BACKEND}\"]\nrefresh = \"2s\"\n\
             [[targets]]\naddress = \"{http}\"\n\
             [exit_ip]\naddress = \"{http}\"\npath = \"/\"\ninterval = \"2s\"\ntimeout = \"2s\"\n",
            sock = haproxy.runtime_socket().display(),
            http = echo.http_addr(),
        ),
    )?;
    let mut checker_cmd = Command::new(bin_path("egress-checker")?);
    checker_cmd
        .env("EGRESS_DATABASE_URL", &db)
        .arg("--config")
        .arg(&checker_toml)
        .arg("run")
        .arg("--agent-listen")
        .arg(format!("127.0.0.1:{agent_port}"))
        .arg("--metrics-listen")
        .arg(format!("127.0.0.1:{}", free_port()?))
        .arg("--spool-path")
        .arg(dir.path().join("checker.spool"));
    let checker = ChildSpec::new("egress-checker", checker_cmd).spawn()?;

    // Every server's exit IP reaches the ledger through the checker.
    for (name, _) in &proxies {
        let server = format!("{BACKEND}/{name}");
        assert!(
            wait_until(wait, || history_kinds(&db, &server)
                .iter()
                .any(|k| k == "exit_ip_observed")),
            "no exit_ip_observed for {server}: {:?}\nchecker:\n{}",
            history_kinds(&db, &server),
            checker.logs()
        );
    }

    // egress-spoa: exit IPs from the ledger, attribution to the ledger.
    let spoa_cmd = egress_harness::bins::spoa_command(
        &format!("127.0.0.1:{spoa_port}"),
        &format!("127.0.0.1:{}", free_port()?),
        &db,
        KEY_HEX,
        &dir.path().join("spoa.spool"),
    )?;
    let mut spoa: ManagedChild = ChildSpec::new("egress-spoa", spoa_cmd)
        .grace(Duration::from_secs(10))
        .spawn()?;

    let status = |server: &str| {
        haproxy
            .stat(BACKEND, server)
            .ok()
            .flatten()
            .and_then(|r| r.get("status").cloned())
            .unwrap_or_default()
    };
    for (name, _) in &proxies {
        assert!(
            wait_until(wait, || status(name) == "UP"),
            "{name}: {}",
            status(name)
        );
    }
    let spoe_up = || {
        haproxy
            .stat("spoe-egress", "spoa1")
            .ok()
            .flatten()
            .and_then(|r| r.get("status").cloned())
            .unwrap_or_default()
            .starts_with("UP")
    };
    assert!(wait_until(wait, spoe_up), "spoa never UP:\n{}", spoa.logs());

    // Traffic: the agent must tag each request with the exit IP the checker recorded. Retry until
    // its first refresh from the ledger has landed (the log line shows the exit IP).
    let front = SocketAddr::from((Ipv4Addr::LOCALHOST, haproxy.port(FRONT_PORT)));
    let key = HashKey::from_hex(KEY_HEX)?;
    let tagged = wait_until(wait, || {
        echo_ip_via_proxy(front, &echo, Some(Ipv4Addr::new(127, 0, 2, 1))).is_ok()
            && haproxy
                .logs()
                .lines()
                .any(|l| l.starts_with("127.0.2.1:") && l.contains(" exit=127.0.0."))
    });
    assert!(tagged, "requests never carried an exit IP:\n{}", haproxy.logs());

    let clients: Vec<Ipv4Addr> = (1..=24).map(|i| Ipv4Addr::new(127, 0, 1, i)).collect();
    let mut by_exit: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for &c in &clients {
        let exit = echo_ip_via_proxy(front, &echo, Some(c))?.trim().to_owned();
        assert!(
            exit_of_server.values().any(|e| *e == exit),
            "client {c} exit {exit}"
        );
        by_exit
            .entry(exit)
            .or_default()
            .insert(key.hash(c.to_string().as_bytes()).to_string());
    }
    assert!(
        by_exit.len() >= 2,
        "source hashing should spread 24 clients: {by_exit:?}"
    );

    // SIGTERM: the agent drains, flushes the open minute to the ledger writer, and the writer
    // flushes to Postgres before the process exits.
    let code = spoa.stop();
    assert!(
        code.is_some_and(|c| c.success()),
        "spoa exit {code:?}:\n{}",
        spoa.logs()
    );

    // who --ip: exactly the clients that used each exit IP (the warm-up client aside).
    let warmup = key.hash(b"127.0.2.1").to_string();
    for (exit, want) in &by_exit {
        let rows = json_rows(&cli(
            &db,
            &["who", "--ip", exit, "--at", "now", "--window", "10m", "--json"],
        )?)?;
        let got: BTreeSet<String> = rows
            .iter()
            .filter_map(|r| r.get("client_hash").and_then(|h| h.as_str()).map(str::to_owned))
            .filter(|h| *h != warmup)
            .collect();
        assert_eq!(&got, want, "who --ip {exit}: {rows:?}");
    }

    // who --client: the CLI hashes the address with the shared key and finds its server and IP.
    let probe_client = clients[5];
    let rows = json_rows(&cli(
        &db,
        &[
            "who",
            "--client",
            &probe_client.to_string(),
            "--from",
            "1h",
            "--json",
        ],
    )?)?;
    let expected_exit = by_exit
        .iter()
        .find(|(_, hashes)| hashes.contains(&key.hash(probe_client.to_string().as_bytes()).to_string()))
        .map(|(exit, _)| exit.clone());
    assert_eq!(rows.len(), 1, "who --client {probe_client}: {rows:?}");
    assert_eq!(
        rows[0].get("exit_ip").and_then(|v| v.as_str()).map(str::to_owned),
        expected_exit,
        "{rows:?}"
    );

    // A backend dies: HAProxy shows it DOWN and the ledger has the quarantine, with its reason.
    let dead_name = proxies[2].0;
    proxies[2].1.kill();
    let server = format!("{BACKEND}/{dead_name}");
    assert!(
        wait_until(wait, || history_kinds(&db, &server)
            .iter()
            .any(|k| k == "quarantined")),
        "no quarantine event for {server}: {:?}\nchecker:\n{}",
        history_kinds(&db, &server),
        checker.logs()
    );
    let table = cli(&db, &["history", &server, "--since", "1h"])?;
    assert!(
        table.contains("quarantined") && table.contains("refused"),
        "{table}"
    );
    Ok(())
}
