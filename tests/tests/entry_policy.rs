//! The entry of the shipped configuration (haproxy/haproxy.cfg.in with an entry policy, see
//! haproxy/entry.txt), against real HAProxy, tinyproxy backends, dnsmasq and the example client:
//!
//! - refusals (source, port, private address by literal and by name, ambiguous numbers, local
//!   names, unresolvable names, origin-form requests) get 403 with their reason logged and counted,
//!   before HAProxy connects to any backend;
//! - credentials (auth on): 407 with Proxy-Authenticate, and the user is the identity hashed;
//! - fail fast: a black-holed backend costs a CONNECT `timeout server`, not an hour;
//! - fallback: a plain-HTTP 503 is retried on another server, the same from two instances; the
//!   example client's retry of a failed CONNECT lands on the next server of the ring, the same from
//!   two instances, and a 4xx is never retried; a pool falls back only where the policy says.
//!
//! Every destination that passes the policy is on loopback or served by a fake backend that dials
//! nowhere: nothing leaves the machine.
//!
//! Needs the binaries: `cargo build --workspace --bins` (scripts/test does it).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use egress_harness::bins::bin_path;
use egress_harness::client::{ask, connect_from, connect_request_with, http_get};
use egress_harness::dns::Dnsmasq;
use egress_harness::echo::EchoServer;
use egress_harness::entry::{ClientNet, EntryPolicy, User};
use egress_harness::fault::{FaultBackend, FaultMode};
use egress_harness::haproxy::{Haproxy, shipped_spoe_conf};
use egress_harness::metrics::{scrape, value};
use egress_harness::ports::free_port;
use egress_harness::shipped::{AGENT_PORT, FRONT_PORT, STATS_PORT, haproxy_for_test};
use egress_harness::stack::LocalStack;
use egress_harness::tinyproxy::Tinyproxy;
use egress_harness::wait_until;

/// `openssl passwd -6 -salt egresstest s3cret`
const ALICE_HASH: &str =
    "$6$egresstest$czebtYtsCf6JqdTI07STwrxfk4vejbg/5/eRrOHJTpAiyE3QjhJaSTq5NUM4nVFdcIF9YIPAO8DRzF39970eZ.";
/// `openssl passwd -6 -salt egresstest2 hunter2`
const BOB_HASH: &str =
    "$6$egresstest2$xoELXVU3WjcDuprvkRzSl24KNqhMrmR8ElL6UXgIBU1gNGC/SS8sbOBzOueAzXdtiky64u0WbYFIoAOBrmpzT1";

/// HAProxy from the shipped template with `servers`, `policy` and `dns`; the stats page on
/// `stats_port` and the agent port on `agent_port` when given (so the policy can name them).
fn start_haproxy(
    servers: &[(&str, &str, SocketAddr)],
    policy: &EntryPolicy,
    dns: Option<SocketAddr>,
    pinned: &[(usize, u16)],
) -> anyhow::Result<(Haproxy, tempfile::TempDir)> {
    let spoe = tempfile::tempdir()?;
    let mut config = haproxy_for_test(servers, &shipped_spoe_conf(spoe.path())?, policy, dns)?;
    for (placeholder, port) in pinned {
        config = config.replace(&format!("{{{{PORT{placeholder}}}}}"), &port.to_string());
    }
    Ok((Haproxy::start(&config)?, spoe))
}

fn front(h: &Haproxy) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, h.port(FRONT_PORT)))
}

fn status(h: &Haproxy, backend: &str, server: &str) -> String {
    h.stat(backend, server)
        .ok()
        .flatten()
        .and_then(|row| row.get("status").cloned())
        .unwrap_or_default()
}

fn wait_up(h: &Haproxy, servers: &[(&str, &str)]) {
    for (b, s) in servers {
        assert!(
            wait_until(Duration::from_secs(15), || status(h, b, s) == "UP"),
            "{b}/{s} not UP: {}",
            status(h, b, s)
        );
    }
}

fn stat_field(h: &Haproxy, proxy: &str, server: &str, field: &str) -> u64 {
    h.stat(proxy, server)
        .ok()
        .flatten()
        .and_then(|row| row.get(field).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// The log line of the request whose request line is `request_line`.
fn log_line(h: &Haproxy, request_line: &str) -> Option<String> {
    h.logs()
        .lines()
        .find(|l| l.contains(&format!("\"{request_line}\"")))
        .map(str::to_owned)
}

fn connect(host_port: &str) -> String {
    format!("CONNECT {host_port} HTTP/1.1\r\nHost: {host_port}\r\n\r\n")
}

#[test]
fn refusals_are_403_with_a_logged_reason_and_reach_no_backend() -> anyhow::Result<()> {
    let echo = EchoServer::start()?;
    let t1 = Tinyproxy::start(Ipv4Addr::new(127, 0, 0, 2))?;
    let t2 = Tinyproxy::start(Ipv4Addr::new(127, 0, 0, 3))?;
    // The Korea pool's only server answers every CONNECT 200 itself and dials nowhere: the one
    // destination here that resolves to a public address is sent there.
    let fake = FaultBackend::start(FaultMode::Status(200))?;
    let dns = Dnsmasq::start(&[
        ("loop.test", IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ("meta.test", IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254))),
        ("rfc1918.test", IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))),
        ("v6loop.test", IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ("public.test", IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10))),
    ])?;
    let stats_port = free_port()?;
    let agent_port = free_port()?;
    let mut policy = EntryPolicy::for_test(&[echo.http_addr()]);
    policy.clients = vec![ClientNet {
        net: "127.0.0.1/32".to_owned(),
        only: None,
    }];
    // The ports of HAProxy's own stats page and of the checker's agent are allowed ports here, so
    // that what refuses them is the private-address rule, not the port rule.
    policy.connect_ports.extend([443, stats_port, agent_port]);
    policy.http_ports.extend([80, stats_port]);
    let servers = [
        ("egress", "t1", t1.addr()),
        ("egress", "t2", t2.addr()),
        ("egress_kr", "k1", fake.addr()),
    ];
    let (h, _spoe) = start_haproxy(
        &servers,
        &policy,
        Some(dns.addr()),
        &[(STATS_PORT, stats_port), (AGENT_PORT, agent_port)],
    )?;
    wait_up(&h, &[("egress", "t1"), ("egress", "t2"), ("egress_kr", "k1")]);
    let me = Some(Ipv4Addr::LOCALHOST);
    let cases: Vec<(Option<Ipv4Addr>, String, &str)> = vec![
        (
            Some(Ipv4Addr::new(127, 0, 0, 9)),
            connect(&echo.http_addr().to_string()),
            "client",
        ),
        (
            me,
            format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", echo.http_addr()),
            "not-a-proxy-request",
        ),
        (me, connect("127.0.0.1:25"), "port"),
        (me, connect(&format!("127.0.0.1:{stats_port}")), "private-address"),
        (me, connect(&format!("127.0.0.1:{agent_port}")), "private-address"),
        (me, connect("10.1.2.3:443"), "private-address"),
        (me, connect("172.16.0.1:443"), "private-address"),
        (me, connect("192.168.1.1:443"), "private-address"),
        (me, connect("100.64.0.1:443"), "private-address"),
        (me, connect("169.254.169.254:443"), "private-address"),
        (me, connect("[::1]:443"), "private-address"),
        (me, connect("[::ffff:127.0.0.1]:443"), "private-address"),
        (me, connect("[fd00:ec2::254]:443"), "private-address"),
        (me, connect("127.1:443"), "ambiguous-address"),
        (me, connect("2130706433:443"), "ambiguous-address"),
        (me, connect("0x7f.0.0.1:443"), "ambiguous-address"),
        (me, connect("localhost:443"), "destination-name"),
        (me, connect("metadata.google.internal:443"), "destination-name"),
        (me, connect("loop.test:443"), "private-address"),
        (me, connect("meta.test:443"), "private-address"),
        (me, connect("rfc1918.test:443"), "private-address"),
        (me, connect("v6loop.test:443"), "private-address"),
        (me, connect("nowhere.test:443"), "unresolvable"),
        (
            me,
            "GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n"
                .to_owned(),
            "private-address",
        ),
        (
            me,
            format!("GET http://127.0.0.1:{stats_port}/ HTTP/1.1\r\nHost: 127.0.0.1:{stats_port}\r\n\r\n"),
            "private-address",
        ),
        (
            me,
            "GET http://x@loop.test/ HTTP/1.1\r\nHost: loop.test\r\n\r\n".to_owned(),
            "private-address",
        ),
    ];
    for (source, request, reason) in &cases {
        let (code, head) = ask(front(&h), *source, request)?;
        let line = request.lines().next().unwrap_or_default();
        assert_eq!(code, 403, "{line}: {head}");
        assert!(
            wait_until(Duration::from_secs(5), || log_line(&h, line).is_some()),
            "no log line for {line}:\n{}",
            h.logs()
        );
        let logged = log_line(&h, line).unwrap_or_default();
        assert!(
            logged.contains(&format!(" refused={reason}")) && logged.contains(" 403 "),
            "{line}: expected refused={reason}: {logged}"
        );
        println!("REFUSED {reason:<20} {line}");
    }
    // No backend saw a connection: no session on any server, no request in any tinyproxy log.
    for (b, s, _) in &servers {
        assert_eq!(stat_field(&h, b, s, "stot"), 0, "{b}/{s} had sessions");
    }
    for t in [&t1, &t2] {
        assert!(!t.logs().contains("Request (file descriptor"), "{}", t.logs());
    }
    // Counted where an operator can alert: HAProxy's exporter.
    let metrics = scrape(SocketAddr::from((Ipv4Addr::LOCALHOST, stats_port)))?;
    let denied = value(
        &metrics,
        "haproxy_frontend_requests_denied_total",
        &[("proxy", "entry")],
    );
    assert_eq!(
        denied,
        Some(cases.len() as f64),
        "haproxy_frontend_requests_denied_total"
    );

    // What the policy lets through: the echo exception, and a name that resolves to a public
    // address (to the fake backend: it answers 200 and dials nowhere).
    let echo_target = echo.http_addr().to_string();
    let (code, mut tunnel) = connect_request_with(connect_from(me, front(&h))?, &echo_target, "")?;
    assert_eq!(code, 200);
    let exit = http_get(&mut tunnel, &echo_target, "/")?;
    assert!(["127.0.0.2", "127.0.0.3"].contains(&exit.trim()), "{exit}");
    let (code, _) = connect_request_with(
        connect_from(me, front(&h))?,
        "public.test:443",
        "X-Egress-Pool: kr\r\n",
    )?;
    assert_eq!(code, 200, "{}", h.logs());
    assert!(dns.logs().contains("public.test"), "{}", dns.logs());
    assert_eq!(stat_field(&h, "egress_kr", "k1", "stot"), 1);
    Ok(())
}

#[test]
fn credentials_are_required_and_the_user_is_the_identity_hashed() -> anyhow::Result<()> {
    let stack = LocalStack::start_with(&mut |_| {}, &|| false, &|echo| {
        let mut p = EntryPolicy::for_test(&[echo.http_addr()]);
        p.auth = true;
        p.users = vec![
            User {
                name: "alice".to_owned(),
                hash: ALICE_HASH.to_owned(),
                groups: Vec::new(),
            },
            User {
                name: "bob".to_owned(),
                hash: BOB_HASH.to_owned(),
                groups: vec!["kr".to_owned()],
            },
        ];
        p
    })?;
    assert!(
        wait_until(Duration::from_secs(60), || stack.all_up()),
        "not all servers UP: {:?}",
        stack.server_stats().ok()
    );
    let target = stack.echo_addr().to_string();
    let src = |i: u8| Some(Ipv4Addr::new(127, 0, 7, i));
    // alice:s3cret, alice:wrong, bob:hunter2
    let alice = "Proxy-Authorization: Basic YWxpY2U6czNjcmV0\r\n";
    let wrong = "Proxy-Authorization: Basic YWxpY2U6d3Jvbmc=\r\n";
    let bob = "Proxy-Authorization: Basic Ym9iOmh1bnRlcjI=\r\n";
    for headers in ["", wrong] {
        let (code, head) = ask(
            stack.front(),
            src(1),
            &format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{headers}\r\n"),
        )?;
        assert_eq!(code, 407, "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("proxy-authenticate: basic realm=\"egress\""),
            "{head}"
        );
    }
    assert!(
        wait_until(Duration::from_secs(5), || stack
            .haproxy
            .logs()
            .matches(" refused=credentials")
            .count()
            == 2),
        "{}",
        stack.haproxy.logs()
    );
    // Counted: 407s are 4xx responses of the entry (HAProxy's exporter).
    let stats: SocketAddr = stack
        .stats_url()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()?;
    let responses = value(
        &scrape(stats)?,
        "haproxy_frontend_http_responses_total",
        &[("proxy", "entry"), ("code", "4xx")],
    );
    assert_eq!(responses, Some(2.0), "haproxy_frontend_http_responses_total 4xx");
    // Authenticated: the client identity is the user, whatever the source address; bob is in
    // group kr: the Korea pool (exit 127.0.0.5).
    let mut hashes = Vec::new();
    for (i, headers) in [(2, alice), (3, alice), (4, bob)] {
        let exit = stack.request_with(Ipv4Addr::new(127, 0, 7, i), headers)?;
        let want_kr = headers == bob;
        assert_eq!(exit == "127.0.0.5", want_kr, "{headers:?}: exit {exit}");
        // The agent's tag on the log line (written when the tunnel ends; fail-open: a request the
        // agent did not answer within its budget is untagged, then ask again).
        let from = format!("127.0.7.{i}:");
        let tagged = |logs: &str| -> Option<String> {
            logs.lines()
                .filter(|l| l.starts_with(&from) && l.contains(" 200 "))
                .filter_map(|l| l.split(" client=").nth(1)?.split(' ').next().map(str::to_owned))
                .find(|h| h != "-")
        };
        let mut hash = None;
        for _ in 0..3 {
            if wait_until(Duration::from_secs(5), || tagged(&stack.haproxy.logs()).is_some()) {
                hash = tagged(&stack.haproxy.logs());
                break;
            }
            stack.request_with(Ipv4Addr::new(127, 0, 7, i), headers)?;
        }
        hashes.push(hash.ok_or_else(|| anyhow::anyhow!("no tagged line for 127.0.7.{i}"))?);
    }
    assert_eq!(hashes[0], hashes[1], "alice from two addresses: one identity");
    assert_ne!(hashes[0], hashes[2], "alice and bob: two identities");
    Ok(())
}

#[test]
fn a_black_holed_backend_fails_a_connect_within_timeout_server() -> anyhow::Result<()> {
    let echo = EchoServer::start()?;
    let hole = FaultBackend::start(FaultMode::BlackHole)?;
    let (h, _spoe) = start_haproxy(
        &[("egress", "b1", hole.addr())],
        &EntryPolicy::for_test(&[echo.http_addr()]),
        None,
        &[],
    )?;
    wait_up(&h, &[("egress", "b1")]);
    let started = Instant::now();
    let (code, _) = connect_request_with(connect_from(None, front(&h))?, &echo.http_addr().to_string(), "")?;
    let took = started.elapsed();
    println!("FAIL-FAST black-holed backend: CONNECT answered {code} after {took:.2?}");
    assert_eq!(code, 504);
    // The shipped `timeout server 5s`, not `timeout tunnel 1h`.
    assert!(
        took >= Duration::from_millis(4500) && took < Duration::from_secs(8),
        "{took:?}"
    );
    Ok(())
}

/// The global pool: four servers at ring positions 1..4, tinyproxies with exits 127.0.0.2..5,
/// except position `f1_at` (0-based), which is f1, a [`FaultBackend`] in `mode`; and two HAProxy
/// instances with the same configuration.
struct TwoInstances {
    a: Haproxy,
    b: Haproxy,
    f1: FaultBackend,
    echo: EchoServer,
    /// (server name, exit IP or "" for f1) by ring position.
    ring: Vec<(String, String)>,
    _t: Vec<Tinyproxy>,
    _spoe: Vec<tempfile::TempDir>,
}

fn tinyproxies() -> anyhow::Result<Vec<Tinyproxy>> {
    (2..=5)
        .map(|last| Tinyproxy::start(Ipv4Addr::new(127, 0, 0, last)))
        .collect()
}

fn two_instances(
    echo: EchoServer,
    t: Vec<Tinyproxy>,
    f1_at: usize,
    mode: FaultMode,
) -> anyhow::Result<TwoInstances> {
    let f1 = FaultBackend::start(mode)?;
    let mut ring = Vec::new();
    let mut servers = Vec::new();
    for (i, proxy) in t.iter().enumerate() {
        if i == f1_at {
            ring.push(("f1".to_owned(), String::new()));
            servers.push(("egress", "f1".to_owned(), f1.addr()));
        } else {
            ring.push((format!("t{}", i + 1), proxy.bind_addr().to_string()));
            servers.push(("egress", format!("t{}", i + 1), proxy.addr()));
        }
    }
    let servers: Vec<(&str, &str, SocketAddr)> =
        servers.iter().map(|(b, n, a)| (*b, n.as_str(), *a)).collect();
    let policy = EntryPolicy::for_test(&[echo.http_addr()]);
    let (a, sa) = start_haproxy(&servers, &policy, None, &[])?;
    let (b, sb) = start_haproxy(&servers, &policy, None, &[])?;
    let names: Vec<(&str, &str)> = servers.iter().map(|(b, n, _)| (*b, *n)).collect();
    for h in [&a, &b] {
        wait_up(h, &names);
    }
    Ok(TwoInstances {
        a,
        b,
        f1,
        echo,
        ring,
        _t: t,
        _spoe: vec![sa, sb],
    })
}

/// Client addresses whose primary server is f1: f1 answers their CONNECT with `code`.
fn clients_of_f1(h: &Haproxy, echo: &EchoServer, code: u16, want: usize) -> anyhow::Result<Vec<Ipv4Addr>> {
    let mut found = Vec::new();
    for i in 1..=120u8 {
        let src = Ipv4Addr::new(127, 0, 8, i);
        let (c, _) = connect_request_with(
            connect_from(Some(src), front(h))?,
            &echo.http_addr().to_string(),
            "",
        )?;
        if c == code {
            found.push(src);
            if found.len() == want {
                break;
            }
        }
    }
    anyhow::ensure!(
        found.len() == want,
        "only {} clients of f1 among 120",
        found.len()
    );
    Ok(found)
}

#[test]
fn a_plain_http_503_is_retried_on_the_same_next_server_from_two_instances() -> anyhow::Result<()> {
    let s = two_instances(EchoServer::start()?, tinyproxies()?, 1, FaultMode::Status(503))?;
    let clients = clients_of_f1(&s.a, &s.echo, 503, 3)?;
    let url = format!("http://{}/", s.echo.http_addr());
    let modern = egress_harness::programs::haproxy_version()? >= (3, 0);
    for src in &clients {
        let mut exits = Vec::new();
        for h in [&s.a, &s.b] {
            let mut stream = connect_from(Some(*src), front(h))?;
            let exit = http_get(&mut stream, &s.echo.http_addr().to_string(), &url)?;
            exits.push(exit.trim().to_owned());
            let mut line = String::new();
            let logged = wait_until(Duration::from_secs(5), || {
                line = h
                    .logs()
                    .lines()
                    .rev()
                    .find(|l| l.starts_with(&format!("{src}:")) && l.contains(&format!("\"GET {url} ")))
                    .map(str::to_owned)
                    .unwrap_or_default();
                !line.is_empty()
            });
            assert!(logged, "no log line for {src}:\n{}", h.logs());
            // %rc with a `+`: retried on another server; 3.x also says selected=retry.
            assert!(line.contains("/+1 "), "not logged as redispatched: {line}");
            if modern {
                assert!(line.contains(" selected=retry "), "{line}");
            }
            println!("FALLBACK plain-HTTP 503 from f1: {line}");
        }
        let exits_ok = s.ring.iter().any(|(_, ip)| !ip.is_empty() && *ip == exits[0]);
        assert!(exits_ok, "{exits:?}");
        assert_eq!(
            exits[0], exits[1],
            "{src}: the two instances chose different servers"
        );
    }
    for h in [&s.a, &s.b] {
        // The retries are in `show stat`: one redispatch per request, on the backend.
        assert_eq!(stat_field(h, "egress", "BACKEND", "wredis"), clients.len() as u64);
    }
    assert!(s.f1.accepted() > 0);
    Ok(())
}

fn run_client(proxy: SocketAddr, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let out = Command::new(bin_path("egress-client")?)
        .arg("--proxy")
        .arg(proxy.to_string())
        .args(args)
        .output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn the_example_clients_retry_lands_on_the_next_server_from_two_instances_and_4xx_is_final()
-> anyhow::Result<()> {
    // The example client connects from 127.0.0.1: first find its ring position with a probe
    // instance of four working servers, then put f1 (answering 502) exactly there.
    let echo = EchoServer::start()?;
    let t = tinyproxies()?;
    let target = echo.http_addr().to_string();
    let position = {
        let servers: Vec<(String, SocketAddr)> = t
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("t{}", i + 1), p.addr()))
            .collect();
        let servers: Vec<(&str, &str, SocketAddr)> =
            servers.iter().map(|(n, a)| ("egress", n.as_str(), *a)).collect();
        let (probe, _spoe) = start_haproxy(&servers, &EntryPolicy::for_test(&[echo.http_addr()]), None, &[])?;
        wait_up(
            &probe,
            &servers.iter().map(|(b, n, _)| (*b, *n)).collect::<Vec<_>>(),
        );
        let (code, mut tunnel) = connect_request_with(
            connect_from(Some(Ipv4Addr::LOCALHOST), front(&probe))?,
            &target,
            "",
        )?;
        anyhow::ensure!(code == 200, "probe CONNECT answered {code}");
        let exit = http_get(&mut tunnel, &target, "/")?;
        t.iter()
            .position(|p| p.bind_addr().to_string() == exit.trim())
            .ok_or_else(|| anyhow::anyhow!("probe exit {exit:?} is no server's"))?
    };
    let s = two_instances(echo, t, position, FaultMode::Status(502))?;
    let (next_name, next_exit) = s.ring[(position + 1) % s.ring.len()].clone();
    for h in [&s.a, &s.b] {
        let (code, stdout, stderr) = run_client(front(h), &["--connect", &target, "--get", "/"])?;
        println!(
            "CLIENT via {}: exit status {code}, body {stdout:?}\n{stderr}",
            front(h)
        );
        assert_eq!(code, 0, "{stderr}");
        assert!(
            stderr.contains("attempt=1 selected=primary") && stderr.contains("answered 502"),
            "{stderr}"
        );
        assert!(stderr.contains("attempt=2 selected=retry"), "{stderr}");
        // f1 is at ring position `position`: the retry lands on the next one, on both instances.
        assert_eq!(stdout.trim(), next_exit, "{stderr}");
        assert!(
            wait_until(Duration::from_secs(5), || h
                .logs()
                .contains(&format!(" egress_retry/{next_name} selected=retry "))),
            "{}",
            h.logs()
        );
    }
    // A 4xx is final: exit status 3, one request in HAProxy's log.
    let (code, _, stderr) = run_client(front(&s.a), &["--connect", "127.0.0.1:25"])?;
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains("a 4xx is not retried") && !stderr.contains("attempt=2"),
        "{stderr}"
    );
    assert!(wait_until(Duration::from_secs(5), || s
        .a
        .logs()
        .contains("\"CONNECT 127.0.0.1:25 HTTP/1.1\"")));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(s.a.logs().matches("\"CONNECT 127.0.0.1:25 HTTP/1.1\"").count(), 1);
    Ok(())
}

#[test]
fn a_pool_falls_back_only_where_the_policy_says() -> anyhow::Result<()> {
    let echo = EchoServer::start()?;
    let g1 = Tinyproxy::start(Ipv4Addr::new(127, 0, 0, 2))?;
    let k1 = Tinyproxy::start(Ipv4Addr::new(127, 0, 0, 5))?;
    let servers = [("egress", "g1", g1.addr()), ("egress_kr", "k1", k1.addr())];
    let strict = EntryPolicy::for_test(&[echo.http_addr()]);
    let mut lenient = strict.clone();
    lenient.fallbacks = vec![("egress_kr".to_owned(), "egress".to_owned())];
    let target = echo.http_addr().to_string();
    for (policy, fallback) in [(&strict, false), (&lenient, true)] {
        let (h, _spoe) = start_haproxy(&servers, policy, None, &[])?;
        wait_up(&h, &[("egress", "g1"), ("egress_kr", "k1")]);
        let korea = |src: u8| {
            connect_request_with(
                connect_from(Some(Ipv4Addr::new(127, 0, 9, src)), front(&h))?,
                &target,
                "X-Egress-Pool: kr\r\n",
            )
        };
        let (code, mut tunnel) = korea(1)?;
        assert_eq!(code, 200);
        assert_eq!(http_get(&mut tunnel, &target, "/")?.trim(), "127.0.0.5");
        // Every Korea server out (an operator's MAINT): strict policy 503, lenient the global pool.
        h.cmd("set server egress_kr/k1 state maint")?;
        let (code, tunnel) = korea(2)?;
        if fallback {
            assert_eq!(code, 200, "{}", h.logs());
            let mut tunnel = tunnel;
            assert_eq!(http_get(&mut tunnel, &target, "/")?.trim(), "127.0.0.2");
        } else {
            assert_eq!(code, 503, "{}", h.logs());
        }
        let want = if fallback {
            " egress/g1 selected=fallback "
        } else {
            " egress_kr/<NOSRV> selected=primary "
        };
        assert!(
            wait_until(Duration::from_secs(5), || h
                .logs()
                .lines()
                .any(|l| l.starts_with("127.0.9.2:") && l.contains(want))),
            "{want}: {}",
            h.logs()
        );
        println!(
            "POOL FALLBACK policy={} -> {code}",
            if fallback {
                "fallback egress_kr egress"
            } else {
                "none"
            }
        );
    }
    Ok(())
}
