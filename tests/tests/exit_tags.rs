//! The `exit=` tag of every HAProxy log line against the ground truth: the whole local stack
//! (Postgres ledger, HAProxy from the shipped config, egress-checker, egress-spoa with its shipped
//! 10 s exit-IP poll), steady traffic from several clients, while one server is drain-rotated twice
//! (`egress-checker rotate`, the `command` executor restarting its tinyproxy with a new exit address)
//! and another restarts on its own with a new exit IP. Each request's truth is the address the echo
//! target saw on that very request; its log line is found by the client's address and port.
//!
//! Target: every tag exact or explicitly `unknown`, none stale; printed as `exit tags: N exact,
//! M unknown, 0 stale`. A second test shows the poll still brings changes when no notification
//! comes (events inserted with triggers off), and that the listener reconnects after its
//! connection is killed.
//!
//! Needs the binaries: `cargo build --workspace --bins` (scripts/test does it).

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use egress_harness::bins::bin_path;
use egress_harness::client::{connect_from, connect_request_with, http_get};
use egress_harness::metrics::{scrape, value};
use egress_harness::stack::{KEY_HEX, LocalStack};
use egress_harness::wait_until;

/// (client address, client port) -> the exit IP the echo target saw.
type Truth = Arc<Mutex<HashMap<(Ipv4Addr, u16), String>>>;

fn stack() -> anyhow::Result<LocalStack> {
    let stack = LocalStack::start(&mut |_| {}, &|| false)?;
    anyhow::ensure!(
        wait_until(Duration::from_secs(60), || stack.all_up()),
        "not all servers UP: {:?}",
        stack.server_stats().ok()
    );
    Ok(stack)
}

/// Clients hashed to `exit` (first `n` of 127.0.20.1..=120).
fn clients_of(stack: &LocalStack, exit: &str, n: usize) -> anyhow::Result<Vec<Ipv4Addr>> {
    let mut out = Vec::new();
    for i in 1..=120u8 {
        let c = Ipv4Addr::new(127, 0, 20, i);
        if stack.request(c, false)? == exit {
            out.push(c);
            if out.len() == n {
                return Ok(out);
            }
        }
    }
    anyhow::bail!("only {} clients hash to {exit}", out.len())
}

/// One client sending short CONNECT + GET requests until `stop`, recording each one's truth.
fn traffic(front: SocketAddr, echo: SocketAddr, client: Ipv4Addr, stop: Arc<AtomicBool>, truth: Truth) {
    let target = echo.to_string();
    while !stop.load(Ordering::Relaxed) {
        let result = (|| -> anyhow::Result<()> {
            let stream = connect_from(Some(client), front)?;
            let port = stream.local_addr()?.port();
            let (code, mut tunnel) = connect_request_with(stream, &target, "")?;
            if code == 200 {
                let exit = http_get(&mut tunnel, &target, "/")?;
                truth
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert((client, port), exit.trim().to_owned());
            }
            Ok(())
        })();
        // A failed request has no truth to compare with (a backend restarting): it is not counted.
        let _ = result;
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Runs `egress-checker rotate egress/<server>` while serving its executor's restart request
/// (restarting the stack's tinyproxy with the location as its new exit address).
fn rotate(stack: &mut LocalStack, config: &Path, dir: &Path, server: &str) -> anyhow::Result<String> {
    let mut cmd = Command::new(bin_path("egress-checker")?);
    cmd.arg("--config")
        .arg(config)
        .args(["rotate", &format!("egress/{server}")])
        .env("EGRESS_DATABASE_URL", stack.database_url())
        .env("EGRESS_HASH_KEY", KEY_HEX);
    let run = std::thread::spawn(move || cmd.output());
    let deadline = Instant::now() + Duration::from_secs(90);
    while !run.is_finished() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "rotation of {server} did not end in 90 s"
        );
        egress_harness::executor::serve_restart(dir, server, |ip| stack.restart_backend(server, ip))?;
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = run
        .join()
        .map_err(|_| anyhow::anyhow!("rotate thread panicked"))??;
    let text = egress_harness::executor::output_text(&out);
    anyhow::ensure!(out.status.success(), "rotate egress/{server} failed:\n{text}");
    Ok(text)
}

fn metric(stack: &LocalStack, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape(stack.spoa_metrics())
        .ok()
        .and_then(|t| value(&t, name, labels))
        .unwrap_or(0.0)
}

#[test]
fn every_log_line_carries_the_exit_ip_its_request_left_from() -> anyhow::Result<()> {
    let mut stack = stack()?;
    let dir = tempfile::tempdir()?;
    let script = egress_harness::executor::write_script(dir.path())?;
    let sock = stack.haproxy.runtime_socket().display().to_string();
    let config = dir.path().join("rotate.toml");
    std::fs::write(
        &config,
        format!(
            "[backends]\nruntime_api = \"unix:{sock}\"\nnames = [\"egress\", \"egress_kr\"]\n\n\
             [[targets]]\naddress = \"{echo}\"\n\n[exit_ip]\naddress = \"{echo}\"\npath = \"/\"\n\n\
             [rotation]\ninstances = [\"unix:{sock}\"]\ndrain_deadline = \"2s\"\npoll_interval = \"100ms\"\n\
             restart_timeout = \"20s\"\nverify_timeout = \"20s\"\n\n\
             [rotation.executor]\nkind = \"command\"\nprogram = \"{script}\"\n\n\
             [rotation.locations]\n\"egress/g01\" = [\"127.0.0.21\", \"127.0.0.22\"]\n",
            echo = stack.echo_addr(),
            script = script.display(),
        ),
    )?;

    // Clients of g01 (rotated twice), of g02 (restarts on its own) and of g03 (untouched).
    let mut clients = clients_of(&stack, "127.0.0.2", 2)?;
    clients.extend(clients_of(&stack, "127.0.0.3", 2)?);
    clients.extend(clients_of(&stack, "127.0.0.4", 1)?);
    // The agent learns the exit IPs the checker observed at its start: from here every tag is
    // compared (a tag from before the first observation would be `unknown`, which is allowed).
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let truth: Truth = Arc::default();
    let threads: Vec<_> = clients
        .iter()
        .map(|c| {
            let (front, echo, c, stop, truth) =
                (stack.front(), stack.echo_addr(), *c, stop.clone(), truth.clone());
            std::thread::spawn(move || traffic(front, echo, c, stop, truth))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));

    let first = rotate(&mut stack, &config, dir.path(), "g01")?;
    println!("ROTATION 1 of egress/g01:\n{first}");
    std::thread::sleep(Duration::from_secs(2));
    let second = rotate(&mut stack, &config, dir.path(), "g01")?;
    println!("ROTATION 2 of egress/g01:\n{second}");
    std::thread::sleep(Duration::from_secs(2));

    // g02 restarts by itself, as a VPN client that reconnects, and comes back on another exit IP.
    stack.kill_backend("g02")?;
    std::thread::sleep(Duration::from_secs(2));
    stack.restart_backend("g02", Ipv4Addr::new(127, 0, 0, 33))?;
    let g02_back = wait_until(Duration::from_secs(30), || {
        truth
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .any(|ip| ip == "127.0.0.33")
    });
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    anyhow::ensure!(g02_back, "no request left through g02's new exit IP 127.0.0.33");
    let elapsed = started.elapsed();

    // Every log line of these clients against the truth of its own request.
    let truth = truth.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut tags: HashMap<(Ipv4Addr, u16), (String, String)> = HashMap::new();
    let logged = wait_until(Duration::from_secs(10), || {
        tags.clear();
        for line in stack.haproxy.logs().lines() {
            let mut words = line.split_whitespace();
            let Some((ip, port)) = words.next().and_then(|w| w.rsplit_once(':')) else {
                continue;
            };
            let (Ok(ip), Ok(port)) = (ip.parse::<Ipv4Addr>(), port.parse::<u16>()) else {
                continue;
            };
            let Some(exit) = line.split(" exit=").nth(1).and_then(|r| r.split(' ').next()) else {
                continue;
            };
            let server = line.split_whitespace().nth(3).unwrap_or_default().to_owned();
            tags.insert((ip, port), (exit.to_owned(), server));
        }
        truth.keys().all(|k| tags.contains_key(k))
    });
    let (mut exact, mut unknown, mut untagged, mut stale) = (0, 0, 0, Vec::new());
    let mut by_server: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    for (key, ip) in &truth {
        let Some((tag, server)) = tags.get(key) else {
            continue;
        };
        let e = by_server.entry(server.clone()).or_default();
        match tag.as_str() {
            t if t == ip => {
                exact += 1;
                e.0 += 1;
            }
            "unknown" => {
                unknown += 1;
                e.1 += 1;
            }
            // The agent did not answer within the shipped 15 ms budget: HAProxy failed open.
            "-" => untagged += 1,
            _ => stale.push(format!(
                "{}:{} via {server}: tagged {tag}, left from {ip}",
                key.0, key.1
            )),
        }
    }
    let missing = truth.keys().filter(|k| !tags.contains_key(k)).count();
    println!(
        "exit tags: {exact} exact, {unknown} unknown, {} stale ({untagged} untagged by a fail-open exchange, \
         {missing} without a log line; {} requests in {elapsed:.1?})",
        stale.len(),
        truth.len()
    );
    println!("  per server (exact, unknown): {by_server:?}");
    println!(
        "  agent reloads: push {}, reconnect {}, poll {}, unknown-server {}",
        metric(&stack, "egress_spoa_exit_ip_reloads_total", &[("cause", "push")]),
        metric(
            &stack,
            "egress_spoa_exit_ip_reloads_total",
            &[("cause", "reconnect")]
        ),
        metric(&stack, "egress_spoa_exit_ip_reloads_total", &[("cause", "poll")]),
        metric(
            &stack,
            "egress_spoa_exit_ip_reloads_total",
            &[("cause", "unknown-server")]
        ),
    );
    assert!(logged, "{missing} requests have no log line");
    assert!(stale.is_empty(), "stale exit tags:\n{}", stale.join("\n"));
    assert!(truth.len() >= 100, "only {} requests", truth.len());
    assert!(
        untagged * 100 <= truth.len(),
        "{untagged} of {} requests untagged",
        truth.len()
    );
    // The new IPs (both rotations, the self-restart) were tagged exactly, not only as unknown.
    for ip in ["127.0.0.21", "127.0.0.22", "127.0.0.33"] {
        assert!(
            truth
                .iter()
                .any(|(k, t)| t == ip && tags.get(k).is_some_and(|(tag, _)| tag == ip)),
            "no request through {ip} was tagged with it"
        );
    }
    assert!(metric(&stack, "egress_spoa_exit_ip_reloads_total", &[("cause", "push")]) > 0.0);

    // The ledger tells g02's story: its failed probes made the IP unknown, the next check after
    // its return recorded the change against the IP known before.
    let history: serde_json::Value =
        serde_json::from_str(&stack.cli(&["history", "egress/g02", "--since", "1h", "--json"])?)?;
    let kinds: Vec<(String, String)> = history
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["kind"].as_str().unwrap_or_default().to_owned(),
                        e["new_ip"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let unknown_at = kinds.iter().position(|(k, _)| k == "exit_ip_unknown");
    let changed_at = kinds
        .iter()
        .position(|(k, ip)| k == "exit_ip_changed" && ip == "127.0.0.33");
    assert!(
        matches!((unknown_at, changed_at), (Some(u), Some(c)) if u < c),
        "egress/g02 history: {kinds:?}"
    );

    // `who` never finds the agent's tag differing from the ledger's timeline.
    let mut ips: Vec<&String> = truth.values().collect();
    ips.sort();
    ips.dedup();
    std::thread::sleep(Duration::from_secs(2));
    for ip in ips {
        let out = stack.cli(&["who", "--ip", ip, "--at", "now", "--window", "10m", "--json"])?;
        let rows: serde_json::Value = serde_json::from_str(&out)?;
        let differs: Vec<_> = rows
            .as_array()
            .map(|a| a.iter().filter(|r| r["agent_ip_differs"] == true).collect())
            .unwrap_or_default();
        assert!(
            differs.is_empty(),
            "who --ip {ip}: AGENT IP differs in {differs:?}"
        );
    }
    Ok(())
}

#[test]
fn the_poll_brings_changes_no_notification_announced_and_the_listener_reconnects() -> anyhow::Result<()> {
    let stack = stack()?;
    let client = clients_of(&stack, "127.0.0.4", 1)?[0];
    let tag_of_last = |stack: &LocalStack| -> Option<String> {
        let from = format!("{client}:");
        stack
            .haproxy
            .logs()
            .lines()
            .rev()
            .find(|l| l.starts_with(&from) && l.contains(" 200 "))
            .and_then(|l| l.split(" exit=").nth(1))
            .and_then(|r| r.split(' ').next())
            .map(str::to_owned)
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let sql = |statements: &[&str]| -> anyhow::Result<()> {
        rt.block_on(async {
            use sqlx::Connection as _;
            let mut c = sqlx::PgConnection::connect(stack.database_url()).await?;
            for s in statements {
                sqlx::query(s).execute(&mut c).await?;
            }
            anyhow::Ok(())
        })
    };
    let event = |ip: &str| {
        format!(
            "INSERT INTO events (id, at, backend, server, kind, actor, reason, new_ip)
             VALUES (gen_random_uuid(), now(), 'egress', 'g03', 'exit_ip_changed', 'operator', 'test', '{ip}')"
        )
    };

    // 1. No notification (the trigger is off for this session): the 10 s poll brings it.
    let t = Instant::now();
    sql(&["SET session_replication_role = replica", &event("192.0.2.44")])?;
    let polled = wait_until(Duration::from_secs(15), || {
        stack.request(client, false).is_ok()
            && wait_until(Duration::from_secs(1), || tag_of_last(&stack).is_some())
            && tag_of_last(&stack).as_deref() == Some("192.0.2.44")
    });
    println!(
        "POLL without a notification: the agent tagged the new IP after {:.1?}",
        t.elapsed()
    );
    assert!(
        polled,
        "the poll never brought 192.0.2.44: {:?}",
        tag_of_last(&stack)
    );

    // 2. The listener's connection is killed: it reconnects (and reloads), and pushes work again.
    let reconnects = metric(
        &stack,
        "egress_spoa_exit_ip_reloads_total",
        &[("cause", "reconnect")],
    );
    sql(&["SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN%'"])?;
    assert!(
        wait_until(Duration::from_secs(20), || metric(
            &stack,
            "egress_spoa_exit_ip_reloads_total",
            &[("cause", "reconnect")]
        ) > reconnects
            && metric(&stack, "egress_spoa_exit_ip_listener_up", &[]) == 1.0),
        "the listener did not reconnect:\n{}",
        stack.agent_logs()
    );
    let pushes = metric(&stack, "egress_spoa_exit_ip_reloads_total", &[("cause", "push")]);
    let t = Instant::now();
    sql(&[&event("192.0.2.45")])?;
    let committed = t.elapsed();
    let mut reloaded = Duration::ZERO;
    let reload_seen = wait_until(Duration::from_secs(5), || {
        reloaded = t.elapsed();
        metric(&stack, "egress_spoa_exit_ip_reloads_total", &[("cause", "push")]) > pushes
    });
    println!(
        "PUSH latency: event committed after {committed:.1?}, the agent had reloaded (by its metrics, polled) after {reloaded:.1?}"
    );
    assert!(reload_seen, "no push reload");
    let pushed = wait_until(Duration::from_secs(5), || {
        stack.request(client, false).is_ok()
            && wait_until(Duration::from_secs(1), || {
                tag_of_last(&stack).as_deref() == Some("192.0.2.45")
            })
    });
    println!(
        "PUSH after the listener reconnected: the agent tagged the new IP after {:.1?}",
        t.elapsed()
    );
    assert!(pushed, "no push after the reconnect: {:?}", tag_of_last(&stack));
    Ok(())
}
