//! egress-spoa behind a real HAProxy 2.6: the shipped SPOE engine file (haproxy/spoe-egress.conf),
//! CONNECT traffic through real tinyproxy backends, and the agent binary itself.
//!
//! Needs the binaries: `cargo build -p egress-spoa --bins` (or `cargo build --workspace --bins`).

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use egress_common::client_hash::HashKey;
use egress_e2e::bins::bin_path;
use egress_e2e::client::echo_ip_via_proxy;
use egress_e2e::echo::EchoServer;
use egress_e2e::haproxy::{GLOBAL, Haproxy, shipped_spoe_conf};
use egress_e2e::ports::free_port;
use egress_e2e::process::{ChildSpec, ManagedChild};
use egress_e2e::tinyproxy::Tinyproxy;
use egress_e2e::wait_until;

const KEY_HEX: &str = "0f0e0d0c0b0a09080706050403020100";
const WAIT: Duration = Duration::from_secs(15);

fn start_agent(exit_ips: &str) -> anyhow::Result<(ManagedChild, SocketAddr, u16)> {
    let port = free_port()?;
    let metrics_port = free_port()?;
    let dir = std::env::temp_dir().join(format!("egress-spoa-e2e-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("exit-ips");
    std::fs::write(&file, exit_ips)?;
    let mut cmd = Command::new(bin_path("egress-spoa")?);
    cmd.env("EGRESS_HASH_KEY", KEY_HEX)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--metrics-listen")
        .arg(format!("127.0.0.1:{metrics_port}"))
        .arg("--exit-ips-file")
        .arg(&file)
        .arg("--exit-ips-refresh")
        .arg("1s")
        .arg("--log")
        .arg("info,egress_spoa=debug");
    let child = ChildSpec::new("egress-spoa", cmd)
        .grace(Duration::from_secs(8))
        .spawn()?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    anyhow::ensure!(
        wait_until(WAIT, || TcpStream::connect_timeout(
            &addr,
            Duration::from_millis(200)
        )
        .is_ok()),
        "egress-spoa did not listen on {addr}:\n{}",
        child.logs()
    );
    Ok((child, addr, metrics_port))
}

fn metrics(port: u16) -> String {
    use std::io::{Read as _, Write as _};
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// The `egress <src> <backend>/<server> client=<hash> exit=<ip> err=<n>` lines of the log-format.
fn traffic_lines(logs: &str) -> Vec<String> {
    logs.lines()
        .filter(|l| l.starts_with("egress "))
        .map(str::to_owned)
        .collect()
}

/// HTTP mode (CONNECT forwarded by HAProxy): the ACK is applied before the response, so the log
/// line carries both variables.
#[test]
fn http_mode_tags_connect_traffic_and_fails_open_without_the_agent() -> anyhow::Result<()> {
    run("http")
}

/// TCP mode on HAProxy 2.6: the on-server-session exchange succeeds (st=0) and the agent attributes
/// every connection, but HAProxy does not wait for the ACK before forwarding, so a short tunnel can
/// be logged before the variables are set: the log line is not checked for them here.
#[test]
fn tcp_mode_attributes_connect_traffic_and_fails_open_without_the_agent() -> anyhow::Result<()> {
    run("tcp")
}

fn run(mode: &str) -> anyhow::Result<()> {
    let spoe_dir = tempfile::tempdir()?;
    let echo = EchoServer::start()?;
    let t1 = Tinyproxy::start(Ipv4Addr::new(127, 0, 0, 2))?;
    let t2 = Tinyproxy::start(Ipv4Addr::new(127, 0, 0, 3))?;
    let (mut agent, agent_addr, metrics_port) = start_agent("pool t1 127.0.0.2\npool t2 127.0.0.3\n")?;

    let config = format!(
        "{GLOBAL}
frontend egress
    mode {mode}
    bind 127.0.0.1:{{{{PORT0}}}}
    filter spoe engine egress config {spoe}
    log-format \"egress %ci %b/%s client=%[var(txn.egress.client_hash)] exit=%[var(txn.egress.exit_ip)] err=%[var(txn.egress.error)]\"
    default_backend pool

backend pool
    mode {mode}
    balance source
    hash-type consistent
    server t1 {t1}
    server t2 {t2}

backend spoe-egress
    mode tcp
    timeout connect 1s
    timeout server 3m
    option spop-check
    server spoa1 {agent_addr} check inter 200ms fall 1 rise 1
",
        spoe = shipped_spoe_conf(spoe_dir.path())?.display(),

        t1 = t1.addr(),
        t2 = t2.addr(),
    );
    let haproxy = Haproxy::start(&config)?;
    let front = SocketAddr::from((Ipv4Addr::LOCALHOST, haproxy.port(0)));
    let status = |haproxy: &Haproxy| {
        haproxy
            .stat("spoe-egress", "spoa1")
            .ok()
            .flatten()
            .and_then(|r| r.get("status").cloned())
            .unwrap_or_default()
    };
    // `option spop-check`: HELLO with healthcheck=true, answered by the agent.
    assert!(
        wait_until(WAIT, || status(&haproxy).starts_with("UP")),
        "spop-check: {}",
        status(&haproxy)
    );

    let key = HashKey::from_hex(KEY_HEX)?;
    let clients = [
        Ipv4Addr::new(127, 0, 0, 1),
        Ipv4Addr::new(127, 0, 0, 9),
        Ipv4Addr::new(127, 0, 0, 10),
    ];
    let mut seen = Vec::new();
    for &client in &clients {
        let exit = echo_ip_via_proxy(front, &echo, Some(client))?;
        assert!(exit == "127.0.0.2" || exit == "127.0.0.3", "exit {exit}");
        seen.push((client, exit));
    }
    // Every CONNECT is logged with the keyed hash of its source and the exit IP of its server.
    assert!(
        wait_until(WAIT, || traffic_lines(&haproxy.logs()).len() >= clients.len()),
        "log lines:\n{}",
        haproxy.logs()
    );
    let lines = traffic_lines(&haproxy.logs());
    for (client, exit) in seen.iter().filter(|_| mode == "http") {
        let server = if exit == "127.0.0.2" { "t1" } else { "t2" };
        let want = format!(
            "egress {client} pool/{server} client={} exit={exit} err=-",
            key.hash(client.to_string().as_bytes())
        );
        assert!(lines.contains(&want), "missing {want:?} in\n{}", lines.join("\n"));
    }
    // HAProxy's own SPOE log: every on-server-session exchange succeeded (st=0).
    let logs = haproxy.logs();
    let spoe: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("<EVENT:on-server-session>"))
        .collect();
    assert!(spoe.len() >= clients.len(), "SPOE lines:\n{logs}");
    assert!(
        spoe.iter().all(|l| l.contains(" st=0 ")),
        "SPOE errors:\n{}",
        spoe.join("\n")
    );
    let m = metrics(metrics_port);
    assert!(
        m.lines().any(|l| l
            .starts_with("egress_spoa_messages_total{message=\"egress-attribution\",outcome=\"ok\"}")
            && !l.ends_with(" 0")),
        "{m}"
    );

    // SIGTERM: the agent drains, flushes attribution (logged at debug) and exits 0.
    let exit = agent.stop();
    assert!(
        exit.is_some_and(|s| s.success()),
        "agent exit {exit:?}:\n{}",
        agent.logs()
    );
    let agent_logs = agent.logs();
    assert!(
        agent_logs.contains("attribution"),
        "no attribution flush in:\n{agent_logs}"
    );
    for client in clients {
        let h = key.hash(client.to_string().as_bytes()).to_string();
        assert!(
            agent_logs.contains(&h),
            "attribution for {client} ({h}) not flushed:\n{agent_logs}"
        );
    }

    // Fail open: with the agent gone, HAProxy marks it down and clients still get through.
    assert!(
        wait_until(WAIT, || status(&haproxy).starts_with("DOWN")),
        "{}",
        status(&haproxy)
    );
    let before = traffic_lines(&haproxy.logs()).len();
    for &client in &clients {
        let exit = echo_ip_via_proxy(front, &echo, Some(client))?;
        assert!(exit == "127.0.0.2" || exit == "127.0.0.3", "exit {exit}");
    }
    assert!(wait_until(WAIT, || traffic_lines(&haproxy.logs()).len()
        >= before + clients.len()));
    let after = traffic_lines(&haproxy.logs());
    assert!(
        after[before..]
            .iter()
            .all(|l| l.contains("client=- exit=-") && (mode == "tcp" || !l.contains("err=-"))),
        "without the agent no var is set and set-on-error reports the failure:\n{}",
        after[before..].join("\n")
    );
    Ok(())
}
