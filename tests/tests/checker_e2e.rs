//! egress-checker against the real HAProxy 2.6 running the shipped configuration (haproxy/haproxy.cfg.in
//! rendered for test ports by `egress_harness::shipped::haproxy_for_test`: the shipped server line
//! `weight 100 check inter 2s fall 3 rise 2 agent-check ... agent-inter 500ms`): tinyproxy backends
//! (each with its own exit address), fault backends, the echo target, and the checker binary feeding
//! HAProxy through agent-check. No egress-spoa runs here: the shipped SPOE filter fails open.
//!
//! Build the binary first: `cargo build -p egress-checker --bins`. Timings measured here are printed
//! (`--nocapture`) as `FIGURE ...` lines.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use egress_harness::client::{echo_ip_direct, echo_ip_via_proxy};
use egress_harness::echo::EchoServer;
use egress_harness::entry::EntryPolicy;
use egress_harness::fault::{FaultBackend, FaultMode};
use egress_harness::haproxy::{Haproxy, shipped_spoe_conf};
use egress_harness::process::{ChildSpec, ManagedChild};
use egress_harness::shipped::{AGENT_PORT, FRONT_PORT, haproxy_for_test};
use egress_harness::tinyproxy::Tinyproxy;
use egress_harness::{bins::bin_path, ports::free_port, wait_until};

const BACKEND: &str = "egress";

/// HAProxy running the shipped configuration with `servers` in the global pool (backend `egress`)
/// and `kr_servers` in the Korea pool (`egress_kr`). The agent port is `h.port(AGENT_PORT)`.
struct Proxy {
    h: Haproxy,
    _spoe: tempfile::TempDir,
}

impl std::ops::Deref for Proxy {
    type Target = Haproxy;
    fn deref(&self) -> &Haproxy {
        &self.h
    }
}

fn shipped_config(
    echo: &EchoServer,
    servers: &[(&str, SocketAddr)],
    kr_servers: &[(&str, SocketAddr)],
) -> anyhow::Result<(String, tempfile::TempDir)> {
    let spoe = tempfile::tempdir()?;
    let all: Vec<(&str, &str, SocketAddr)> = servers
        .iter()
        .map(|(n, a)| (BACKEND, *n, *a))
        .chain(kr_servers.iter().map(|(n, a)| ("egress_kr", *n, *a)))
        .collect();
    let policy = EntryPolicy::for_test(&[echo.http_addr(), echo.https_addr()]);
    let config = haproxy_for_test(&all, &shipped_spoe_conf(spoe.path())?, &policy, None)?;
    Ok((config, spoe))
}

fn start_haproxy(echo: &EchoServer, servers: &[(&str, SocketAddr)]) -> anyhow::Result<Proxy> {
    let (config, spoe) = shipped_config(echo, servers, &[])?;
    Ok(Proxy {
        h: Haproxy::start(&config)?,
        _spoe: spoe,
    })
}

fn agent_port(h: &Haproxy) -> u16 {
    h.port(AGENT_PORT)
}

struct Checker {
    child: ManagedChild,
    _dir: tempfile::TempDir,
}

fn start_checker(haproxy: &Haproxy, targets: &str, extra: &str) -> anyhow::Result<Checker> {
    let agent_port = agent_port(haproxy);
    let dir = tempfile::tempdir()?;
    let config = format!(
        "[backends]\nruntime_api = \"unix:{}\"\nnames = [\"{BACKEND}\"]\nrefresh = \"2s\"\n{extra}\n{targets}",
        haproxy.runtime_socket().display()
    );
    let path = dir.path().join("checker.toml");
    std::fs::write(&path, config)?;
    let mut cmd = Command::new(bin_path("egress-checker")?);
    cmd.arg("--config")
        .arg(&path)
        .arg("--log")
        .arg("info,egress_checker=debug")
        .arg("run")
        .arg("--agent-listen")
        .arg(format!("127.0.0.1:{agent_port}"))
        .arg("--metrics-listen")
        .arg(format!("127.0.0.1:{}", free_port()?));
    let child = ChildSpec::new("egress-checker", cmd).spawn()?;
    Ok(Checker { child, _dir: dir })
}

/// The echo's CA in a temp file (kept until the returned dir drops).
fn write_ca(echo: &EchoServer) -> anyhow::Result<(tempfile::TempDir, std::path::PathBuf)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, echo.ca_pem())?;
    Ok((dir, path))
}

/// Two targets (plain HTTP and verified HTTPS through the tunnel), as the issue asks.
fn targets(echo: &EchoServer, ca: &Path) -> String {
    format!(
        "[tls]\nca_file = {:?}\n[[targets]]\naddress = \"{}\"\n[[targets]]\naddress = \"{}\"\ntls = true\nserver_name = \"{}\"\n",
        ca,
        echo.http_addr(),
        echo.https_addr(),
        echo.server_name()
    )
}

fn row(h: &Haproxy, server: &str) -> HashMap<String, String> {
    h.stat(BACKEND, server).ok().flatten().unwrap_or_default()
}

fn status(h: &Haproxy, server: &str) -> String {
    row(h, server).get("status").cloned().unwrap_or_default()
}

fn field(h: &Haproxy, server: &str, f: &str) -> String {
    row(h, server).get(f).cloned().unwrap_or_default()
}

fn wait_status(h: &Haproxy, server: &str, want: &str, within: Duration) -> Option<Duration> {
    let t = Instant::now();
    wait_until(within, || status(h, server) == want).then(|| t.elapsed())
}

fn wait_all_up(h: &Haproxy, servers: &[&str]) {
    for s in servers {
        assert!(
            wait_status(h, s, "UP", Duration::from_secs(10)).is_some(),
            "{s} never UP: {:?}\n{}",
            row(h, s),
            h.logs()
        );
    }
}

/// The checker's agent-check answer for `server` (of [`BACKEND`]), asked as HAProxy asks it.
fn agent_answer(h: &Haproxy, server: &str) -> String {
    use std::io::{Read as _, Write as _};
    let ask = || -> anyhow::Result<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", agent_port(h)))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(format!("{BACKEND}/{server}\n").as_bytes())?;
        let mut answer = String::new();
        s.take(4096).read_to_string(&mut answer)?;
        Ok(answer.trim().to_owned())
    };
    ask().unwrap_or_else(|e| format!("error: {e:#}"))
}

fn front(h: &Haproxy) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, h.port(FRONT_PORT)))
}

/// The exit IP a client from `src` gets through HAProxy.
fn exit_of(h: &Haproxy, echo: &EchoServer, src: Ipv4Addr) -> String {
    echo_ip_via_proxy(front(h), echo, Some(src))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|e| format!("error: {e:#}"))
}

fn clients() -> Vec<Ipv4Addr> {
    (1..=60).map(|i| Ipv4Addr::new(127, 0, 1, i)).collect()
}

#[test]
fn dead_tunnel_goes_down_via_agent_while_l4_check_passes_and_clients_move_and_return() -> anyhow::Result<()> {
    let echo = EchoServer::start()?;
    let (_ca_dir, ca) = write_ca(&echo)?;
    let t1 = Tinyproxy::start(Ipv4Addr::new(127, 0, 0, 2))?;
    let t2 = Tinyproxy::start(Ipv4Addr::new(127, 0, 0, 3))?;
    let f1 = FaultBackend::start(FaultMode::Forward)?;
    let h = start_haproxy(&echo, &[("t1", t1.addr()), ("t2", t2.addr()), ("f1", f1.addr())])?;
    let _c = start_checker(&h, &targets(&echo, &ca), "")?;
    wait_all_up(&h, &["t1", "t2", "f1"]);

    // f1's exit address is the harness's own (127.0.0.1); find clients hashed to it.
    let before: HashMap<Ipv4Addr, String> = clients()
        .into_iter()
        .map(|c| (c, exit_of(&h, &echo, c)))
        .collect();
    let on_f1: Vec<Ipv4Addr> = before
        .iter()
        .filter(|(_, ip)| *ip == "127.0.0.1")
        .map(|(c, _)| *c)
        .collect();
    assert!(!on_f1.is_empty(), "no client hashed to f1: {before:?}");

    // The tunnel dies: f1 still accepts TCP but answers CONNECT with 503.
    f1.set_mode(FaultMode::Status(503))?;
    let took = wait_status(&h, "f1", "DOWN (agent)", Duration::from_secs(10));
    assert!(took.is_some(), "f1 not DOWN via agent: {:?}", row(&h, "f1"));
    println!(
        "FIGURE fault-to-DOWN connect-status-503: {:?}",
        took.unwrap_or_default()
    );
    // HAProxy's own check still passes: it alone would never see the dead tunnel.
    assert_eq!(field(&h, "f1", "check_status"), "L4OK", "{:?}", row(&h, "f1"));
    assert!(
        field(&h, "f1", "last_agt").contains("connect-status-503"),
        "{:?}",
        row(&h, "f1")
    );
    for c in &on_f1 {
        let now = exit_of(&h, &echo, *c);
        assert!(
            now == "127.0.0.2" || now == "127.0.0.3",
            "client {c} not moved: {now}"
        );
    }
    // Clients of other servers did not move (consistent hashing).
    for (c, ip) in &before {
        if ip != "127.0.0.1" {
            assert_eq!(
                &exit_of(&h, &echo, *c),
                ip,
                "client {c} moved although its server is fine"
            );
        }
    }

    // Restore: one good probe brings it back (ramping), and its clients come home.
    f1.set_mode(FaultMode::Forward)?;
    let took = wait_status(&h, "f1", "UP", Duration::from_secs(10));
    assert!(took.is_some(), "f1 not UP again: {:?}", row(&h, "f1"));
    println!("FIGURE fault-cleared-to-UP: {:?}", took.unwrap_or_default());
    // The ramp shows as a reduced weight first (agent N% of 100); with consistent hashing a lower
    // weight is a smaller share of the ring, so clients come home as the ramp completes.
    let w: u32 = field(&h, "f1", "weight").parse().unwrap_or(0);
    assert!(w < 100, "weight right after restore should be ramping, got {w}");
    assert!(
        wait_until(Duration::from_secs(15), || field(&h, "f1", "weight") == "100"),
        "ramp never reached 100"
    );
    for c in &on_f1 {
        assert_eq!(
            exit_of(&h, &echo, *c),
            "127.0.0.1",
            "client {c} did not come back to f1"
        );
    }
    Ok(())
}

#[test]
fn black_hole_and_refusing_backends_are_quarantined() -> anyhow::Result<()> {
    let echo = EchoServer::start()?;
    let (_ca_dir, ca) = write_ca(&echo)?;
    let t1 = Tinyproxy::start(Ipv4Addr::new(127, 0, 0, 2))?;
    let t2 = Tinyproxy::start(Ipv4Addr::new(127, 0, 0, 3))?;
    let hole = FaultBackend::start(FaultMode::Forward)?;
    let refuse = FaultBackend::start(FaultMode::Forward)?;
    let h = start_haproxy(
        &echo,
        &[
            ("t1", t1.addr()),
            ("t2", t2.addr()),
            ("hole", hole.addr()),
            ("refuse", refuse.addr()),
        ],
    )?;
    let _c = start_checker(&h, &targets(&echo, &ca), "")?;
    wait_all_up(&h, &["t1", "t2", "hole", "refuse"]);

    hole.set_mode(FaultMode::BlackHole)?;
    refuse.set_mode(FaultMode::Refuse)?;
    let t = Instant::now();
    let mut hole_at = None;
    let mut refuse_at = None;
    let mut refuse_check_at = None;
    let mut refuse_own_down_at = None;
    // 15 s: HAProxy's own check needs fall 3 x inter 2s (shipped) = 4 to 6 s after the refusal
    // starts (the first failing check comes up to one inter later); the rest is margin for a loaded
    // machine.
    while t.elapsed() < Duration::from_secs(15)
        && (hole_at.is_none() || refuse_at.is_none() || refuse_own_down_at.is_none())
    {
        if hole_at.is_none() && status(&h, "hole") == "DOWN (agent)" {
            hole_at = Some(t.elapsed());
        }
        let lagt = field(&h, "refuse", "last_agt");
        if refuse_at.is_none() && status(&h, "refuse").starts_with("DOWN") && lagt.contains("refused") {
            refuse_at = Some(t.elapsed());
        }
        if refuse_check_at.is_none() && field(&h, "refuse", "check_status") == "L4CON" {
            refuse_check_at = Some(t.elapsed());
        }
        // HAProxy's own check (fall 3) marks it down by itself: its health reaches 0. The status
        // column cannot show it once the agent has said down ("DOWN (agent)" takes precedence).
        if refuse_own_down_at.is_none() && field(&h, "refuse", "check_health") == "0" {
            refuse_own_down_at = Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("FIGURE fault-to-DOWN connect-timeout-after-accept (black hole): {hole_at:?}");
    println!("FIGURE fault-to-DOWN refused (agent says down #refused): {refuse_at:?}");
    println!(
        "FIGURE refused: HAProxy's own check first L4CON at {refuse_check_at:?}, own DOWN at {refuse_own_down_at:?}"
    );
    assert!(
        hole_at.is_some(),
        "black hole not quarantined: {:?}",
        row(&h, "hole")
    );
    assert!(
        field(&h, "hole", "last_agt").contains("connect-timeout-after-accept"),
        "{:?}",
        row(&h, "hole")
    );
    // HAProxy's own L4 check still passes on the black hole.
    assert_eq!(field(&h, "hole", "check_status"), "L4OK");
    assert!(
        refuse_at.is_some(),
        "refusing backend not quarantined by the agent: {:?}",
        row(&h, "refuse")
    );
    // The second line of defence: HAProxy's own check alone takes a refusing backend down.
    assert!(
        refuse_check_at.is_some() && refuse_own_down_at.is_some(),
        "HAProxy's own check did not take the refusing backend down: {:?}",
        row(&h, "refuse")
    );
    Ok(())
}

#[test]
fn guard_holds_when_every_target_is_unreachable_and_caps_at_half_the_pool() -> anyhow::Result<()> {
    let echo = EchoServer::start()?;
    let t1 = Tinyproxy::start(Ipv4Addr::new(127, 0, 0, 2))?;
    let t2 = Tinyproxy::start(Ipv4Addr::new(127, 0, 0, 3))?;
    let f1 = FaultBackend::start(FaultMode::Forward)?;
    let f2 = FaultBackend::start(FaultMode::Forward)?;
    let h = start_haproxy(
        &echo,
        &[
            ("t1", t1.addr()),
            ("t2", t2.addr()),
            ("f1", f1.addr()),
            ("f2", f2.addr()),
        ],
    )?;
    // Every target is a closed port: every backend fails, and so does the checker's direct path.
    let dead = FaultBackend::start(FaultMode::Refuse)?;
    let dead_targets = format!(
        "[[targets]]\naddress = \"{}\"\n[[targets]]\naddress = \"{}\"\n",
        dead.addr(),
        dead.addr()
    );
    let mut c = start_checker(&h, &dead_targets, "")?;
    // Without the checker's verdict (unknown -> "no change"), HAProxy's own checks bring them UP.
    wait_all_up(&h, &["t1", "t2", "f1", "f2"]);
    std::thread::sleep(Duration::from_secs(5));
    for s in ["t1", "t2", "f1", "f2"] {
        assert_eq!(
            status(&h, s),
            "UP",
            "{s} went down although the target, not the backend, is dead: {:?}",
            row(&h, s)
        );
    }
    let exit = c.child.stop();
    assert!(
        exit.is_some_and(|s| s.success()),
        "SIGTERM must end the checker cleanly: {exit:?}"
    );

    // Now a real outage of three of four backends: only two (50 %) may be quarantined.
    let mut c = start_checker(
        &h,
        &format!("[[targets]]\naddress = \"{}\"\n", echo.http_addr()),
        "",
    )?;
    assert!(wait_until(Duration::from_secs(5), || echo_ip_direct(&echo, None).is_ok()));
    f1.set_mode(FaultMode::Status(502))?;
    f2.set_mode(FaultMode::Status(503))?;
    let mut t1 = t1;
    t1.kill();
    std::thread::sleep(Duration::from_secs(6));
    // The checker's own verdicts, asked on its agent port as HAProxy asks: HAProxy's agent_status
    // cannot tell, since a killed t1 is also DOWN by HAProxy's own check, and HAProxy 3.4 then
    // may not show the agent's last answer.
    let down: Vec<&str> = ["t1", "f1", "f2"]
        .into_iter()
        .filter(|s| agent_answer(&h, s).starts_with("down"))
        .collect();
    assert_eq!(
        down.len(),
        2,
        "guard: exactly 2 of 4 quarantined by the agent, got {down:?}"
    );
    assert!(
        agent_answer(&h, "t2").starts_with("up"),
        "{}",
        agent_answer(&h, "t2")
    );
    assert_eq!(status(&h, "t2"), "UP");
    let exit = c.child.stop();
    assert!(
        exit.is_some_and(|s| s.success()),
        "SIGTERM must end the checker cleanly: {exit:?}"
    );
    Ok(())
}

#[test]
fn checker_death_leaves_haproxy_state_as_it_was() -> anyhow::Result<()> {
    let echo = EchoServer::start()?;
    let (_ca_dir, ca) = write_ca(&echo)?;
    let t1 = Tinyproxy::start(Ipv4Addr::new(127, 0, 0, 2))?;
    let t2 = Tinyproxy::start(Ipv4Addr::new(127, 0, 0, 3))?;
    let f1 = FaultBackend::start(FaultMode::Status(503))?;
    let h = start_haproxy(&echo, &[("t1", t1.addr()), ("t2", t2.addr()), ("f1", f1.addr())])?;
    let mut c = start_checker(&h, &targets(&echo, &ca), "")?;
    wait_all_up(&h, &["t1", "t2"]);
    assert!(
        wait_status(&h, "f1", "DOWN (agent)", Duration::from_secs(10)).is_some(),
        "{:?}",
        row(&h, "f1")
    );
    c.child.kill();
    // Agent unreachable: "A failure to connect to the agent is not an error" (configuration.txt).
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(status(&h, "f1"), "DOWN (agent)");
    assert_eq!(status(&h, "t1"), "UP");
    assert_eq!(status(&h, "t2"), "UP");
    // A restarted checker answers "no change" until it has probed, so the state holds across it too.
    f1.set_mode(FaultMode::Forward)?;
    let _c = start_checker(&h, &targets(&echo, &ca), "")?;
    assert!(
        wait_status(&h, "f1", "UP", Duration::from_secs(10)).is_some(),
        "{:?}",
        row(&h, "f1")
    );
    Ok(())
}

#[test]
fn unknown_server_reply_changes_nothing_in_haproxy() -> anyhow::Result<()> {
    let echo = EchoServer::start()?;
    let (_ca_dir, ca) = write_ca(&echo)?;
    let t1 = Tinyproxy::start(Ipv4Addr::new(127, 0, 0, 2))?;
    let t2 = Tinyproxy::start(Ipv4Addr::new(127, 0, 0, 3))?;
    // ghost's agent-send names a server the checker does not know.
    // ghost is in the Korea pool (`egress_kr`) of the shipped file, which this checker does not
    // watch (`names = ["egress"]`): its agent-send "egress_kr/ghost" names a server it does not know.
    let (cfg, _spoe) = shipped_config(&echo, &[("t1", t1.addr())], &[("ghost", t2.addr())])?;
    let h = Haproxy::start(&cfg)?;
    let _c = start_checker(&h, &targets(&echo, &ca), "")?;
    wait_all_up(&h, &["t1"]);
    let ghost = |h: &Haproxy| h.stat("egress_kr", "ghost").ok().flatten().unwrap_or_default();
    let ghost_status = |h: &Haproxy| ghost(h).get("status").cloned().unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(10), || ghost_status(&h) == "UP"),
        "ghost never UP: {:?}",
        ghost(&h)
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(ghost_status(&h), "UP", "{:?}", ghost(&h));
    // Forced down by the operator: the unknown-name reply must not bring it back up either.
    h.cmd("set server egress_kr/ghost agent down")?;
    assert!(
        wait_until(Duration::from_secs(3), || ghost_status(&h) == "DOWN (agent)"),
        "{:?}",
        ghost(&h)
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(ghost_status(&h), "DOWN (agent)", "{:?}", ghost(&h));
    let g = ghost(&h);
    assert!(
        g.get("last_agt").is_some_and(|l| l.contains("unknown-server"))
            || g.get("agent_status").is_some_and(|s| s != "L7OK"),
        "{g:?}"
    );
    Ok(())
}

#[test]
fn two_haproxies_send_a_quarantined_servers_clients_to_the_same_fallback() -> anyhow::Result<()> {
    let echo = EchoServer::start()?;
    let (_ca_dir, ca) = write_ca(&echo)?;
    let t1 = Tinyproxy::start(Ipv4Addr::new(127, 0, 0, 2))?;
    let t2 = Tinyproxy::start(Ipv4Addr::new(127, 0, 0, 3))?;
    let t3 = Tinyproxy::start(Ipv4Addr::new(127, 0, 0, 4))?;
    let f1 = FaultBackend::start(FaultMode::Forward)?;
    let servers = [
        ("t1", t1.addr()),
        ("t2", t2.addr()),
        ("t3", t3.addr()),
        ("f1", f1.addr()),
    ];
    let a = start_haproxy(&echo, &servers)?;
    // One checker answers both instances (same agent-send names); its list comes from `a`: `b` is
    // the same rendering with its agent port pinned to `a`'s.
    let (config, _spoe) = shipped_config(&echo, &servers, &[])?;
    let b =
        Haproxy::start(&config.replace(&format!("{{{{PORT{AGENT_PORT}}}}}"), &agent_port(&a).to_string()))?;
    let _c = start_checker(&a, &targets(&echo, &ca), "")?;
    wait_all_up(&a, &["t1", "t2", "t3", "f1"]);
    wait_all_up(&b, &["t1", "t2", "t3", "f1"]);
    f1.set_mode(FaultMode::Status(502))?;
    assert!(wait_status(&a, "f1", "DOWN (agent)", Duration::from_secs(10)).is_some());
    assert!(wait_status(&b, "f1", "DOWN (agent)", Duration::from_secs(10)).is_some());
    let mut moved = 0;
    for c in clients() {
        let (ea, eb) = (exit_of(&a, &echo, c), exit_of(&b, &echo, c));
        assert_eq!(ea, eb, "client {c}: instance a -> {ea}, b -> {eb}");
        assert_ne!(ea, "127.0.0.1", "client {c} still on the quarantined server");
        moved += 1;
    }
    assert!(moved > 0);
    Ok(())
}

#[test]
fn exit_ip_leak_is_quarantined_with_its_reason() -> anyhow::Result<()> {
    let echo = EchoServer::start()?;
    let (_ca_dir, ca) = write_ca(&echo)?;
    let t1 = Tinyproxy::start(Ipv4Addr::new(127, 0, 0, 2))?;
    let t2 = Tinyproxy::start(Ipv4Addr::new(127, 0, 0, 3))?;
    // A "proxy" that forwards from the node's own address: the tunnel is gone, traffic leaks.
    let leak = FaultBackend::start(FaultMode::Forward)?;
    let h = start_haproxy(
        &echo,
        &[("t1", t1.addr()), ("t2", t2.addr()), ("leak", leak.addr())],
    )?;
    let exit = format!(
        "[exit_ip]\naddress = \"{}\"\ntls = true\nserver_name = \"{}\"\ninterval = \"5s\"\n",
        echo.https_addr(),
        echo.server_name()
    );
    let _c = start_checker(&h, &targets(&echo, &ca), &exit)?;
    assert!(
        wait_status(&h, "leak", "DOWN (agent)", Duration::from_secs(10)).is_some(),
        "{:?}",
        row(&h, "leak")
    );
    assert!(
        field(&h, "leak", "last_agt").contains("exit-ip-leak"),
        "{:?}",
        row(&h, "leak")
    );
    wait_all_up(&h, &["t1", "t2"]);
    Ok(())
}

/// A reload of HAProxy (`server-state-file`, saved just before, as docs/operator-guide.md says) keeps
/// a quarantined server DOWN and a server that a rotation or an operator put in MAINT in MAINT: the
/// new process starts from the saved states and the checker's next answer, never from UP.
#[test]
fn reload_keeps_a_quarantined_server_down_and_a_maint_server_in_maint() -> anyhow::Result<()> {
    let echo = EchoServer::start()?;
    let (_ca_dir, ca) = write_ca(&echo)?;
    let t1 = Tinyproxy::start(Ipv4Addr::new(127, 0, 0, 2))?;
    let t2 = Tinyproxy::start(Ipv4Addr::new(127, 0, 0, 3))?;
    let f1 = FaultBackend::start(FaultMode::Forward)?;
    let mut h = start_haproxy(&echo, &[("t1", t1.addr()), ("t2", t2.addr()), ("f1", f1.addr())])?;
    let _c = start_checker(&h, &targets(&echo, &ca), "")?;
    wait_all_up(&h, &["t1", "t2", "f1"]);

    f1.set_mode(FaultMode::Status(503))?;
    assert!(
        wait_status(&h, "f1", "DOWN (agent)", Duration::from_secs(10)).is_some(),
        "f1 not quarantined: {:?}",
        row(&h, "f1")
    );
    // What the rotator does first (and what an operator does by hand).
    h.cmd(&format!("set server {BACKEND}/t2 state maint"))?;
    assert!(wait_status(&h, "t2", "MAINT", Duration::from_secs(5)).is_some());

    let old_pid = h.pid();
    h.h.reload()?;
    assert_ne!(h.pid(), old_pid, "no new HAProxy process");
    // From the new process's first answer on, for longer than the health check's rise x inter
    // (2 x 2 s) would take to bring a server up from scratch.
    let watch = Instant::now();
    let mut seen = Vec::new();
    while watch.elapsed() < Duration::from_secs(5) {
        let (f1_status, t2_status) = (status(&h, "f1"), status(&h, "t2"));
        assert!(
            f1_status.starts_with("DOWN") && t2_status == "MAINT",
            "after the reload f1 {f1_status:?} (want DOWN), t2 {t2_status:?} (want MAINT); seen {seen:?}\n{}",
            h.logs()
        );
        if seen.last() != Some(&(f1_status.clone(), t2_status.clone())) {
            seen.push((f1_status, t2_status));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("FIGURE states after reload: {seen:?}");

    // The checker goes on answering the new process: the tunnel mends, f1 comes back; t2 only by hand.
    f1.set_mode(FaultMode::Forward)?;
    assert!(
        wait_status(&h, "f1", "UP", Duration::from_secs(10)).is_some(),
        "f1 not restored after the reload: {:?}",
        row(&h, "f1")
    );
    assert_eq!(status(&h, "t2"), "MAINT");
    h.cmd(&format!("set server {BACKEND}/t2 state ready"))?;
    assert!(wait_status(&h, "t2", "UP", Duration::from_secs(10)).is_some());
    Ok(())
}
