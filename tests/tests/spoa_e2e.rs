//! egress-spoa behind a real HAProxy 2.6: the shipped configuration (haproxy/haproxy.cfg.in rendered
//! for test ports by `egress_harness::shipped::haproxy_for_test`, with the shipped SPOE engine file
//! haproxy/spoe-egress.conf), CONNECT traffic through real tinyproxy backends, and the agent binary.
//!
//! Needs the binaries: `cargo build -p egress-spoa --bins` (or `cargo build --workspace --bins`).

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use egress_common::client_hash::HashKey;
use egress_harness::bins::bin_path;
use egress_harness::client::echo_ip_via_proxy;
use egress_harness::echo::EchoServer;
use egress_harness::entry::EntryPolicy;
use egress_harness::haproxy::{GLOBAL, Haproxy, raised_spoe_conf};
use egress_harness::metrics::{scrape, value};
use egress_harness::ports::free_port;
use egress_harness::process::{ChildSpec, ManagedChild};
use egress_harness::shipped::{FRONT_PORT, SPOA_PORT, haproxy_for_test};
use egress_harness::tinyproxy::Tinyproxy;
use egress_harness::wait_until;

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

/// The `egress <src> <backend>/<server> client=<hash> exit=<ip> err=<n>` lines of the TCP-mode
/// test's own log-format.
fn tcp_traffic_lines(logs: &str) -> Vec<String> {
    logs.lines()
        .filter(|l| l.starts_with("egress "))
        .map(str::to_owned)
        .collect()
}

/// One traffic line of the shipped frontend's log-format:
/// `%ci:%cp [%tr] %ft %b/%s selected=.. %TR/%Tw/%Tc/%Tr/%Ta %ST %B %tsc %ac/%fc/%bc/%sc/%rc %{+Q}r
/// pool=.. client=.. exit=.. spoe_err=.. refused=..`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Traffic {
    client: String,
    backend_server: String,
    pool: String,
    client_hash: String,
    exit: String,
    spoe_err: String,
}

fn parse_traffic(line: &str) -> Option<Traffic> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let (client, _port) = words.first()?.rsplit_once(':')?;
    if words.get(2) != Some(&"entry") || !words.get(1)?.starts_with('[') {
        return None;
    }
    // The request line (`%{+Q}r`) has spaces: the variables are the last five words.
    let tail = words.get(words.len().checked_sub(5)?..)?;
    let var = |i: usize, name: &str| tail[i].strip_prefix(name).map(str::to_owned);
    Some(Traffic {
        client: client.to_owned(),
        backend_server: (*words.get(3)?).to_owned(),
        pool: var(0, "pool=")?,
        client_hash: var(1, "client=")?,
        exit: var(2, "exit=")?,
        spoe_err: var(3, "spoe_err=")?,
    })
    .filter(|_| tail[4] == "refused=-")
}

fn traffic(logs: &str) -> Vec<Traffic> {
    logs.lines().filter_map(parse_traffic).collect()
}

/// `status` and `check_status` of the SPOA server, e.g. ("UP", "L7OK").
fn spoa_status(haproxy: &Haproxy) -> (String, String) {
    let row = haproxy
        .stat("spoe-egress", "spoa1")
        .ok()
        .flatten()
        .unwrap_or_default();
    let get = |k: &str| row.get(k).cloned().unwrap_or_default();
    (get("status"), get("check_status"))
}

/// `option spop-check` (HELLO with healthcheck=true) answered by the agent: fully UP by a passed
/// check. HAProxy shows a server "UP 1/3" with check status INI before its first check, so a bare
/// "UP" prefix would prove nothing.
fn spop_check_up(haproxy: &Haproxy) -> bool {
    let (status, check) = spoa_status(haproxy);
    status == "UP" && check == "L7OK"
}

/// The agent is gone: HAProxy's spop-check failed often enough (fall) to mark it DOWN.
fn spop_check_down(haproxy: &Haproxy) -> bool {
    let (status, check) = spoa_status(haproxy);
    status == "DOWN" && check != "L7OK"
}

/// Every exchange succeeded: the agent answered at least `at_least` egress-attribution messages, and
/// HAProxy's SPOE log (shipped `option dontlog-normal`: one line per *failed* exchange only) is empty.
fn assert_spoe_exchanges_ok(logs: &str, metrics_port: u16, at_least: usize) {
    let m = scrape(SocketAddr::from((Ipv4Addr::LOCALHOST, metrics_port))).unwrap_or_default();
    let answered = value(
        &m,
        "egress_spoa_messages_total",
        &[("message", "egress-attribution"), ("outcome", "ok")],
    )
    .unwrap_or(0.0);
    assert!(answered >= at_least as f64, "{answered} messages answered:\n{m}");
    let failed: Vec<&str> = logs.lines().filter(|l| l.contains("<EVENT:")).collect();
    assert!(failed.is_empty(), "SPOE errors:\n{}", failed.join("\n"));
}

/// SIGTERM: the agent drains, flushes attribution (logged at debug) and exits 0.
fn stop_agent_and_check_flush(agent: &mut ManagedChild, key: &HashKey, clients: &[Ipv4Addr]) {
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
}

const CLIENTS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(127, 0, 0, 1),
    Ipv4Addr::new(127, 0, 0, 9),
    Ipv4Addr::new(127, 0, 0, 10),
];

/// The shipped configuration (HTTP mode, CONNECT forwarded by HAProxy): the ACK is applied before
/// the response, so the shipped log line carries both variables.
/// The shared second half of both modes: the SPOE exchanges went well and were counted; stopping
/// the agent flushes its attribution; then, fail open: HAProxy marks the agent down (shipped `check
/// inter 1s fall 2`: 1 to 2 s) and every client still gets through. Returns how many
/// traffic lines (`count` of HAProxy's log) there were before the clients went through without the
/// agent.
fn stop_agent_and_pass_without_it(
    haproxy: &Haproxy,
    agent: &mut ManagedChild,
    key: &HashKey,
    metrics_port: u16,
    front: SocketAddr,
    echo: &EchoServer,
    count: impl Fn(&str) -> usize,
) -> anyhow::Result<usize> {
    assert_spoe_exchanges_ok(&haproxy.logs(), metrics_port, CLIENTS.len());
    stop_agent_and_check_flush(agent, key, &CLIENTS);
    assert!(
        wait_until(WAIT, || spop_check_down(haproxy)),
        "{:?}",
        spoa_status(haproxy)
    );
    let before = count(&haproxy.logs());
    for client in CLIENTS {
        let exit = echo_ip_via_proxy(front, echo, Some(client))?;
        assert!(exit == "127.0.0.2" || exit == "127.0.0.3", "exit {exit}");
    }
    Ok(before)
}

#[test]
fn http_mode_tags_connect_traffic_and_fails_open_without_the_agent() -> anyhow::Result<()> {
    let spoe_dir = tempfile::tempdir()?;
    let echo = EchoServer::start()?;
    let t1 = Tinyproxy::start(Ipv4Addr::new(127, 0, 0, 2))?;
    let t2 = Tinyproxy::start(Ipv4Addr::new(127, 0, 0, 3))?;
    let (mut agent, agent_addr, metrics_port) = start_agent("egress t1 127.0.0.2\negress t2 127.0.0.3\n")?;
    // The agent listens before HAProxy starts, on a port of its own: the rendering's SPOA
    // placeholder is pinned to it, so `option spop-check` finds it from the first check on.
    // Raised SPOE budget (2 s): this test asserts that every request was tagged by the agent.
    let config = haproxy_for_test(
        &[("egress", "t1", t1.addr()), ("egress", "t2", t2.addr())],
        &raised_spoe_conf(spoe_dir.path())?,
        &EntryPolicy::for_test(&[echo.http_addr(), echo.https_addr()]),
        None,
    )?
    .replace(
        &format!("{{{{PORT{SPOA_PORT}}}}}"),
        &agent_addr.port().to_string(),
    );
    let haproxy = Haproxy::start(&config)?;
    let front = SocketAddr::from((Ipv4Addr::LOCALHOST, haproxy.port(FRONT_PORT)));
    // Shipped `check inter 1s fall 2 rise 2`: two passed checks, 1 to 2 s.
    assert!(
        wait_until(WAIT, || spop_check_up(&haproxy)),
        "spop-check: {:?}",
        spoa_status(&haproxy)
    );

    let key = HashKey::from_hex(KEY_HEX)?;
    let mut seen = Vec::new();
    for client in CLIENTS {
        let exit = echo_ip_via_proxy(front, &echo, Some(client))?;
        assert!(exit == "127.0.0.2" || exit == "127.0.0.3", "exit {exit}");
        seen.push((client, exit));
    }
    // Every CONNECT is logged with the keyed hash of its source and the exit IP of its server.
    assert!(
        wait_until(WAIT, || traffic(&haproxy.logs()).len() >= CLIENTS.len()),
        "log lines:\n{}",
        haproxy.logs()
    );
    let lines = traffic(&haproxy.logs());
    for (client, exit) in &seen {
        let server = if exit == "127.0.0.2" { "t1" } else { "t2" };
        let want = Traffic {
            client: client.to_string(),
            backend_server: format!("egress/{server}"),
            pool: "global".to_owned(),
            client_hash: key.hash(client.to_string().as_bytes()).to_string(),
            exit: exit.clone(),
            spoe_err: "-".to_owned(),
        };
        assert!(lines.contains(&want), "missing {want:?} in\n{}", haproxy.logs());
    }
    let before =
        stop_agent_and_pass_without_it(&haproxy, &mut agent, &key, metrics_port, front, &echo, |l| {
            traffic(l).len()
        })?;
    assert!(wait_until(WAIT, || traffic(&haproxy.logs()).len() >= before + CLIENTS.len()));
    let after = traffic(&haproxy.logs());
    assert!(
        after[before..]
            .iter()
            .all(|t| t.client_hash == "-" && t.exit == "-" && t.spoe_err != "-"),
        "without the agent no var is set and set-on-error reports the failure:\n{:?}",
        &after[before..]
    );
    Ok(())
}

/// The one test of a mode the project does not ship: a `mode tcp` frontend (CONNECT tunnels
/// relayed as plain TCP, no HTTP parsing), with its own config below rather than the shipped one.
/// It exists because haproxy/spoe-egress.conf is meant for any frontend carrying the egress traffic:
/// on HAProxy 2.6 the on-server-session exchange also succeeds in TCP mode (st=0), the agent
/// attributes every connection and traffic fails open without it. HAProxy does not wait for the
/// ACK before forwarding in TCP mode, so a short tunnel can be logged before the variables are set:
/// the log line is not checked for them here.
#[test]
fn tcp_mode_attributes_connect_traffic_and_fails_open_without_the_agent() -> anyhow::Result<()> {
    run_tcp()
}

fn run_tcp() -> anyhow::Result<()> {
    let spoe_dir = tempfile::tempdir()?;
    let echo = EchoServer::start()?;
    let t1 = Tinyproxy::start(Ipv4Addr::new(127, 0, 0, 2))?;
    let t2 = Tinyproxy::start(Ipv4Addr::new(127, 0, 0, 3))?;
    let (mut agent, agent_addr, metrics_port) = start_agent("pool t1 127.0.0.2\npool t2 127.0.0.3\n")?;

    let config = format!(
        "{GLOBAL}
frontend egress
    mode tcp
    bind 127.0.0.1:{{{{PORT0}}}}
    filter spoe engine egress config {spoe}
    log-format \"egress %ci %b/%s client=%[var(txn.egress.client_hash)] exit=%[var(txn.egress.exit_ip)] err=%[var(txn.egress.error)]\"
    default_backend pool

backend pool
    mode tcp
    balance source
    hash-type consistent
    server t1 {t1}
    server t2 {t2}

backend spoe-egress
.if version_atleast(3.1)
    mode spop
.else
    mode tcp
.endif
    timeout connect 1s
    timeout server 3m
    option spop-check
    server spoa1 {agent_addr} check inter 200ms fall 1 rise 1
",
        // Raised SPOE budget (2 s): this test asserts that the agent attributed every connection.
        spoe = raised_spoe_conf(spoe_dir.path())?.display(),
        t1 = t1.addr(),
        t2 = t2.addr(),
    );
    let haproxy = Haproxy::start(&config)?;
    let front = SocketAddr::from((Ipv4Addr::LOCALHOST, haproxy.port(0)));
    assert!(
        wait_until(WAIT, || spop_check_up(&haproxy)),
        "spop-check: {:?}",
        spoa_status(&haproxy)
    );

    let key = HashKey::from_hex(KEY_HEX)?;
    for client in CLIENTS {
        let exit = echo_ip_via_proxy(front, &echo, Some(client))?;
        assert!(exit == "127.0.0.2" || exit == "127.0.0.3", "exit {exit}");
    }
    assert!(
        wait_until(WAIT, || tcp_traffic_lines(&haproxy.logs()).len() >= CLIENTS.len()),
        "log lines:\n{}",
        haproxy.logs()
    );
    let before =
        stop_agent_and_pass_without_it(&haproxy, &mut agent, &key, metrics_port, front, &echo, |l| {
            tcp_traffic_lines(l).len()
        })?;
    assert!(wait_until(WAIT, || tcp_traffic_lines(&haproxy.logs()).len()
        >= before + CLIENTS.len()));
    let after = tcp_traffic_lines(&haproxy.logs());
    assert!(
        after[before..].iter().all(|l| l.contains("client=- exit=-")),
        "without the agent no var is set:\n{}",
        after[before..].join("\n")
    );
    Ok(())
}
