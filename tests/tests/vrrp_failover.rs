//! A pair of HAProxy nodes behind a keepalived VRRP virtual IP, failing over, measured.
//!
//! Network namespaces the test creates (see `egress_harness::netns`): nodes `n1` and `n2`, a client
//! `cl` and a `pool` (the egress backends and the echo target), on one private bridge with
//! 10.250.0.0/24 addresses and no route anywhere else. Real keepalived (Debian's) runs the shipped
//! `deploy/keepalived/keepalived.conf` (only its `$VARIABLE` definitions changed: interface, VIP,
//! script paths) with the shipped `check-haproxy` and `notify-egress`; real HAProxy runs the shipped
//! template on each node (servers: four tinyproxies in `pool`, each with its own exit address).
//! egress-spoa and egress-checker do not run here: both fail open, and the two nodes' rings are the
//! same file.
//!
//! An open-loop client in `cl` starts a new CONNECT to the VIP every 50 ms (each with a 300 ms
//! connect and 1 s answer deadline). Faults: the master's HAProxy is SIGKILLed; then (the pair
//! healthy again) the new master's link goes down. For each: `FAILOVER <s> s` = from the fault to
//! the first successful CONNECT started after it (through the other node), the requests failed in
//! between, and the exit IP the client got before and after (the same backend: the same ring on
//! both nodes). Target: ≤ 3 s for both.
//!
//! Needs root, keepalived and iproute2 (scripts/install-deps).

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use egress_harness::client::{connect_request_with, http_get};
use egress_harness::echo::EchoServer;
use egress_harness::entry::{ClientNet, EntryPolicy};
use egress_harness::haproxy::{Haproxy, shipped_spoe_conf};
use egress_harness::netns::{Segment, enter};
use egress_harness::process::{ChildSpec, ManagedChild};
use egress_harness::programs::find_program;
use egress_harness::shipped::{FRONT_PORT, STATS_PORT, haproxy_for_test, repo_root};
use egress_harness::tinyproxy::Tinyproxy;
use egress_harness::wait_until;

const N1: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 11);
const N2: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 12);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 100);
const POOL: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 50);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 10);
const PROXY_PORT: u16 = 3128;
const TARGET_S: f64 = 3.0;

/// One open-loop request: when it started, when it ended, and the exit IP when it succeeded.
#[derive(Debug, Clone)]
struct Attempt {
    started: Instant,
    ended: Instant,
    exit: Option<String>,
}

/// Scripts for keepalived live in a root-owned folder outside /tmp: with `enable_script_security`
/// keepalived refuses a script whose path a non-root user could write (/tmp is world-writable).
struct ScriptDir(PathBuf);

impl ScriptDir {
    fn new() -> anyhow::Result<ScriptDir> {
        let dir = PathBuf::from(format!("/run/egress-vrrp-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        Ok(ScriptDir(dir))
    }
}

impl Drop for ScriptDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// keepalived for `node` (`node-a` on n1, `node-b` on n2): the shipped file, its definitions set.
fn start_keepalived(seg: &Segment, node: &str, id: &str, dir: &Path) -> anyhow::Result<ManagedChild> {
    let shipped = std::fs::read_to_string(repo_root().join("deploy/keepalived/keepalived.conf"))?;
    let mut text = String::new();
    for line in shipped.lines() {
        let line = match line.split_once('=') {
            Some(("$INTERFACE", _)) => "$INTERFACE=eth0".to_owned(),
            Some(("$VIP", _)) => format!("$VIP={VIP}/24"),
            Some(("$CHECK", _)) => format!("$CHECK={}", dir.join("check-haproxy").display()),
            Some(("$NOTIFY", _)) => format!("$NOTIFY={}", dir.join(format!("notify-{node}")).display()),
            _ => line.to_owned(),
        };
        text.push_str(&line);
        text.push('\n');
    }
    let conf = dir.join(format!("keepalived-{node}.conf"));
    std::fs::write(&conf, text)?;
    // The notify hook as shipped, writing its state file here instead of /run.
    let notify = dir.join(format!("notify-{node}"));
    std::fs::write(
        &notify,
        format!(
            "#!/bin/sh\nEGRESS_VRRP_STATE_FILE={} exec {} \"$@\"\n",
            dir.join(format!("{node}.state")).display(),
            dir.join("notify-egress").display()
        ),
    )?;
    std::fs::set_permissions(&notify, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let mut cmd = seg.command(node, &find_program("keepalived", "keepalived")?);
    cmd.args(["--dont-fork", "--log-console", "--no-syslog", "-i", id, "-f"])
        .arg(&conf)
        .arg("-p")
        .arg(dir.join(format!("{node}.pid")))
        .arg("-r")
        .arg(dir.join(format!("{node}.vrrp.pid")))
        .arg("-c")
        .arg(dir.join(format!("{node}.checkers.pid")));
    ChildSpec::new(&format!("keepalived-{node}"), cmd)
        .grace(Duration::from_secs(3))
        .spawn()
}

/// The shipped template for a node: `bind :3128`, the stats frontend (monitor-uri /healthz) on
/// 127.0.0.1:8404 as shipped, clients from the segment, the echo target as the one destination.
fn node_config(
    servers: &[(&str, &str, SocketAddr)],
    echo: SocketAddr,
    spoe: &Path,
) -> anyhow::Result<String> {
    let mut policy = EntryPolicy::for_test(&[echo]);
    policy.clients = vec![ClientNet {
        net: "10.250.0.0/24".to_owned(),
        only: None,
    }];
    Ok(haproxy_for_test(servers, spoe, &policy, None)?
        .replace(
            &format!("bind 127.0.0.1:{{{{PORT{FRONT_PORT}}}}}"),
            &format!("bind :{PROXY_PORT}"),
        )
        .replace(&format!("127.0.0.1:{{{{PORT{STATS_PORT}}}}}"), "127.0.0.1:8404"))
}

fn one_request(echo: SocketAddr) -> Option<String> {
    let vip = SocketAddr::from((VIP, PROXY_PORT));
    let stream = TcpStream::connect_timeout(&vip, Duration::from_millis(300)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    stream.set_write_timeout(Some(Duration::from_secs(1))).ok()?;
    let (code, mut tunnel) = connect_request_with(stream, &echo.to_string(), "").ok()?;
    if code != 200 {
        return None;
    }
    http_get(&mut tunnel, &echo.to_string(), "/")
        .ok()
        .map(|s| s.trim().to_owned())
}

/// The open-loop client: a new request every 50 ms, each on its own thread inside `cl`.
fn client(netns: String, echo: SocketAddr, stop: Arc<AtomicBool>, log: Arc<Mutex<Vec<Attempt>>>) {
    let mut next = Instant::now();
    let mut workers = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let (netns, log) = (netns.clone(), log.clone());
        workers.push(std::thread::spawn(move || {
            if enter(&netns).is_err() {
                return;
            }
            let started = Instant::now();
            let exit = one_request(echo);
            log.lock().unwrap_or_else(|e| e.into_inner()).push(Attempt {
                started,
                ended: Instant::now(),
                exit,
            });
        }));
        next += Duration::from_millis(50);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    for w in workers {
        let _ = w.join();
    }
}

/// From `fault`: (seconds to the first success started after it, failures in between, its exit).
fn measure(log: &Mutex<Vec<Attempt>>, fault: Instant) -> Option<(f64, usize, String)> {
    let mut after: Vec<Attempt> = log
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|a| a.started >= fault)
        .cloned()
        .collect();
    after.sort_by_key(|a| a.started);
    let first_ok = after.iter().position(|a| a.exit.is_some())?;
    let ok = &after[first_ok];
    Some((
        ok.ended.duration_since(fault).as_secs_f64(),
        first_ok,
        ok.exit.clone().unwrap_or_default(),
    ))
}

/// The exit IP of steady traffic since `since`: 10 requests or more, all successful.
fn steady(log: &Mutex<Vec<Attempt>>, since: Instant) -> Option<String> {
    let l = log.lock().unwrap_or_else(|e| e.into_inner());
    let recent: Vec<&Attempt> = l.iter().filter(|a| a.started >= since).collect();
    (recent.len() >= 10 && recent.iter().all(|a| a.exit.is_some()))
        .then(|| recent[0].exit.clone().unwrap_or_default())
}

/// Waits for steady traffic, applies `fault`, waits for the first success after it: (seconds to
/// it, requests failed in between, the exit IP before, the exit IP after).
fn fault_and_measure(
    log: &Mutex<Vec<Attempt>>,
    what: &str,
    fault: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<(f64, usize, String, String)> {
    let warm = Instant::now();
    anyhow::ensure!(
        wait_until(Duration::from_secs(10), || steady(log, warm).is_some()),
        "no steady traffic through the VIP before {what}"
    );
    let before = steady(log, warm).unwrap_or_default();
    let at = Instant::now();
    fault()?;
    anyhow::ensure!(
        wait_until(Duration::from_secs(15), || measure(log, at).is_some()),
        "no request succeeded within 15 s of {what}"
    );
    // Let the requests started just before the success end, so the failure count is complete.
    std::thread::sleep(Duration::from_millis(500));
    let (secs, failed, after) = measure(log, at).unwrap_or_default();
    Ok((secs, failed, before, after))
}

fn master(seg: &Segment) -> Option<&'static str> {
    match (seg.has_addr("n1", VIP), seg.has_addr("n2", VIP)) {
        (true, false) => Some("n1"),
        (false, true) => Some("n2"),
        _ => None,
    }
}

#[test]
fn vrrp_pair_fails_over_within_three_seconds_and_keeps_the_clients_backend() -> anyhow::Result<()> {
    let seg = Segment::new(&[("n1", N1), ("n2", N2), ("cl", CLIENT), ("pool", POOL)])?;
    let exits: Vec<Ipv4Addr> = (61..=64).map(|i| Ipv4Addr::new(10, 250, 0, i)).collect();
    for e in &exits {
        seg.add_addr("pool", *e)?;
    }
    let echo = seg.run_in("pool", || EchoServer::start_on(POOL))?;
    let echo_addr = echo.http_addr();
    let proxies: Vec<Tinyproxy> = exits
        .iter()
        .map(|e| Tinyproxy::start_in(&seg.ns("pool"), POOL, *e))
        .collect::<anyhow::Result<_>>()?;
    let names = ["g01", "g02", "g03", "g04"];
    let servers: Vec<(&str, &str, SocketAddr)> = names
        .iter()
        .zip(&proxies)
        .map(|(n, p)| ("egress", *n, p.addr()))
        .collect();
    let spoe = tempfile::tempdir()?;
    let config = node_config(&servers, echo_addr, &shipped_spoe_conf(spoe.path())?)?;
    let mut haproxy = vec![
        Some(Haproxy::start_in(&config, &seg.ns("n1"))?),
        Some(Haproxy::start_in(&config, &seg.ns("n2"))?),
    ];

    let scripts = ScriptDir::new()?;
    for f in ["check-haproxy", "notify-egress"] {
        let to = scripts.0.join(f);
        std::fs::copy(repo_root().join("deploy/keepalived").join(f), &to)?;
        std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    let _ka = [
        start_keepalived(&seg, "n1", "node-a", &scripts.0)?,
        start_keepalived(&seg, "n2", "node-b", &scripts.0)?,
    ];
    anyhow::ensure!(
        wait_until(Duration::from_secs(20), || master(&seg) == Some("n1")),
        "n1 (node-a, priority 150) never held the VIP alone: n1 {} n2 {}",
        seg.has_addr("n1", VIP),
        seg.has_addr("n2", VIP)
    );

    let stop = Arc::new(AtomicBool::new(false));
    let log: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    let client_thread = {
        let (ns, stop, log) = (seg.path("cl"), stop.clone(), log.clone());
        std::thread::spawn(move || client(ns, echo_addr, stop, log))
    };
    let mut results = Vec::new();

    // Fault 1: the master's HAProxy crashes.
    let (secs, failed, before, after) = fault_and_measure(&log, "n1's HAProxy killed", || {
        if let Some(h) = haproxy[0].as_mut() {
            h.kill();
        }
        Ok(())
    })?;
    println!(
        "FAILOVER {secs:.2} s (HAProxy killed on the master n1; {failed} requests failed; exit IP {before} before, {after} after; VIP on {:?})",
        master(&seg)
    );
    results.push(("haproxy killed", secs, failed, before, after));

    // Back to a healthy pair: n1's HAProxy again (nopreempt: n2 keeps the VIP).
    haproxy[0] = Some(Haproxy::start_in(&config, &seg.ns("n1"))?);
    std::thread::sleep(Duration::from_secs(3));
    anyhow::ensure!(
        master(&seg) == Some("n2"),
        "n2 lost the VIP when n1 came back: {:?}",
        master(&seg)
    );

    // Fault 2: the new master's link goes down.
    let (secs, failed, before, after) =
        fault_and_measure(&log, "n2's link down", || seg.set_link("n2", false))?;
    println!(
        "FAILOVER {secs:.2} s (link down on the master n2; {failed} requests failed; exit IP {before} before, {after} after; VIP on n1: {})",
        seg.has_addr("n1", VIP)
    );
    results.push(("link down", secs, failed, before, after));

    stop.store(true, Ordering::Relaxed);
    let _ = client_thread.join();
    drop(haproxy);
    for (fault, secs, failed, before, after) in &results {
        assert!(
            *secs <= TARGET_S,
            "{fault}: failover took {secs:.2} s (target {TARGET_S} s)"
        );
        assert!(*failed > 0, "{fault}: no request failed: was the fault applied?");
        assert_eq!(before, after, "{fault}: the client changed backend with the node");
    }
    Ok(())
}
