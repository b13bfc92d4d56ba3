//! The one-command local run (`scripts/demo`): the whole system on loopback — a throwaway Postgres
//! ledger, egress backends (tinyproxy with distinct exit IPs, one breakable), HAProxy from the
//! shipped configuration, egress-checker and egress-spoa — then a little traffic, a broken tunnel
//! quarantined and restored, the ledger queried, and where to look. Ctrl-C stops everything.
//!
//! `egress-demo` waits for Ctrl-C (SIGINT) or SIGTERM at the end; `egress-demo --ci` exits by itself
//! after the steps (a non-zero status if a step failed). Every process it started stops with it.

use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use egress_harness::haproxy::SHIPPED_PROCESSING_MS;
use egress_harness::stack::{FAULT_SERVER, KEY_HEX, LocalStack};

static STOP: AtomicBool = AtomicBool::new(false);

fn stopping() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Polls `cond` every 100 ms until it holds, `timeout` passes, or Ctrl-C.
fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if stopping() || Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Installs the SIGINT/SIGTERM handlers (returns once they are in place) and sets STOP on the first.
fn watch_signals() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready_tx.send(Err(anyhow::Error::from(e)));
                return;
            }
        };
        runtime.block_on(async move {
            let (mut int, mut term) = match (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
            {
                (Ok(i), Ok(t)) => (i, t),
                (Err(e), _) | (_, Err(e)) => {
                    let _ = ready_tx.send(Err(e.into()));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            let name = tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            };
            eprintln!("\negress-demo: {name}: stopping everything");
            STOP.store(true, Ordering::SeqCst);
        });
    });
    ready_rx
        .recv()
        .map_err(|_| anyhow::anyhow!("the signal thread ended"))?
}

fn say(line: &str) {
    println!("{line}");
}

fn main() -> ExitCode {
    let ci = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--ci") => true,
        Some("-h" | "--help") => {
            println!(
                "usage: egress-demo [--ci]\n\nStarts haproxy-egress locally on 127.0.0.0/8, shows a quarantine and a restore, \
                 and waits for Ctrl-C (--ci: exits after the steps)."
            );
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("egress-demo: unknown argument {other:?} (try --help)");
            return ExitCode::from(2);
        }
    };
    // SIGINT/SIGTERM set STOP (tokio's handlers, on a thread of their own; a blocked signal mask would
    // be inherited by the children, which then could not be stopped gracefully). The steps poll
    // STOP, return, and the stack's drop stops every process in order.
    if let Err(e) = watch_signals() {
        eprintln!("egress-demo: installing signal handlers: {e:#}");
        return ExitCode::FAILURE;
    }
    // The demo prints what matters; the components' logs stay in their files.
    egress_harness::process::quiet_all();
    let started = Instant::now();
    let result = run(ci);
    match result {
        Ok(()) => {
            say(&format!(
                "egress-demo: everything stopped ({:.0} s in all)",
                started.elapsed().as_secs_f64()
            ));
            ExitCode::SUCCESS
        }
        Err(e) if stopping() => {
            say(&format!("egress-demo: interrupted ({e:#}); everything stopped"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("egress-demo: FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(ci: bool) -> anyhow::Result<()> {
    say("== Starting haproxy-egress on loopback (everything stops on Ctrl-C)");
    let mut stack = LocalStack::start(&mut |line| say(&format!("  started {line}")), &stopping)?;
    let pids: Vec<String> = stack.pids().iter().map(|(n, p)| format!("{n}={p}")).collect();
    say(&format!("  processes: {}", pids.join(" ")));

    // The steps, in order. Each returns Err to stop the demo.
    step_pool_up(&stack)?;
    step_traffic(&stack)?;
    step_quarantine(&stack)?;
    step_ledger(&stack)?;
    step_fail_open(&mut stack)?;
    let report = step_report(&stack)?;
    step_where_to_look(&stack, &report);

    if ci {
        say("== --ci: stopping");
    } else {
        say("== Running. Press Ctrl-C to stop everything.");
        while !stopping() {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    drop(stack);
    Ok(())
}

fn interrupted() -> anyhow::Error {
    anyhow::anyhow!("stopped by a signal")
}

fn step_pool_up(stack: &LocalStack) -> anyhow::Result<()> {
    say("== 1. Waiting for HAProxy to see every server UP (HAProxy's check + egress-checker's agent)");
    let t = Instant::now();
    if !wait_for(Duration::from_secs(60), || stack.all_up()) {
        anyhow::ensure!(!stopping(), interrupted());
        anyhow::bail!(
            "servers not UP after 60 s: {:?}\n{}",
            stack
                .server_stats()
                .unwrap_or_default()
                .iter()
                .map(|(n, r)| format!("{n}={}", r.get("status").cloned().unwrap_or_default()))
                .collect::<Vec<_>>(),
            stack.agent_logs()
        );
    }
    say(&format!(
        "  all servers UP after {:.1} s",
        t.elapsed().as_secs_f64()
    ));
    print_pool(stack)
}

fn print_pool(stack: &LocalStack) -> anyhow::Result<()> {
    for (name, row) in stack.server_stats()? {
        let get = |k: &str| row.get(k).cloned().unwrap_or_default();
        say(&format!(
            "  {name:<16} status={:<6} weight={:<4} check={:<10} agent={}",
            get("status"),
            get("weight"),
            get("check_status"),
            get("agent_status"),
        ));
    }
    Ok(())
}

fn step_traffic(stack: &LocalStack) -> anyhow::Result<()> {
    say(&format!(
        "== 2. Traffic: CONNECT through HAProxy ({}) from 8 client addresses, source-hashed",
        stack.front()
    ));
    for i in 1..=8 {
        let client = Ipv4Addr::new(127, 0, 1, i);
        let exit = stack.request(client, false)?;
        say(&format!("  client {client:<11} -> exit IP {exit}"));
    }
    let client = Ipv4Addr::new(127, 0, 1, 9);
    let exit = stack.request(client, true)?;
    say(&format!(
        "  client {client:<11} -> exit IP {exit}   (header X-Egress-Pool: kr: the Korea pool)"
    ));
    // A client's fallback: its retry (X-Egress-Attempt: 2) goes to the next server of the ring.
    let client = Ipv4Addr::new(127, 0, 1, 1);
    let primary = stack.request(client, false)?;
    let retry = stack.request_with(client, "X-Egress-Attempt: 2\r\n")?;
    say(&format!(
        "  FALLBACK client {client} -> exit IP {primary}; its retry (X-Egress-Attempt: 2) -> exit IP {retry}, the next server of the ring, from every HAProxy"
    ));
    // Not an open proxy: the cloud metadata address is refused before any backend is contacted.
    let request = "CONNECT 169.254.169.254:443 HTTP/1.1\r\nHost: 169.254.169.254:443\r\n\r\n";
    let (code, _) = egress_harness::client::ask(stack.front(), Some(client), request)?;
    let mut reason = String::new();
    wait_for(Duration::from_secs(5), || {
        reason = stack
            .haproxy
            .logs()
            .lines()
            .find(|l| l.contains("\"CONNECT 169.254.169.254:443 HTTP/1.1\""))
            .and_then(|l| l.split(" refused=").nth(1))
            .unwrap_or_default()
            .to_owned();
        !reason.is_empty()
    });
    say(&format!(
        "  REFUSED CONNECT 169.254.169.254:443 (the cloud metadata address): {code}, logged refused={reason} (policy: haproxy/entry.txt)"
    ));
    anyhow::ensure!(code == 403, "the metadata address was answered {code}, not 403");
    Ok(())
}

fn step_quarantine(stack: &LocalStack) -> anyhow::Result<()> {
    let (backend, server) = FAULT_SERVER;
    say(&format!(
        "== 3. Breaking {backend}/{server}'s tunnel: it still accepts TCP, so HAProxy's own check stays green"
    ));
    stack.break_tunnel()?;
    let t = Instant::now();
    if !wait_for(Duration::from_secs(60), || stack.is_down(backend, server)) {
        anyhow::ensure!(!stopping(), interrupted());
        anyhow::bail!(
            "{backend}/{server} not quarantined after 60 s\n{}",
            stack.agent_logs()
        );
    }
    say(&format!(
        "  QUARANTINED {backend}/{server} after {:.1} s: egress-checker's CONNECT probes failed and its agent answered `down`",
        t.elapsed().as_secs_f64()
    ));
    print_pool(stack)?;
    say(&format!("== 4. Repairing {backend}/{server}'s tunnel"));
    stack.repair_tunnel()?;
    let t = Instant::now();
    if !wait_for(Duration::from_secs(60), || stack.status(backend, server) == "UP") {
        anyhow::ensure!(!stopping(), interrupted());
        anyhow::bail!(
            "{backend}/{server} not restored after 60 s\n{}",
            stack.agent_logs()
        );
    }
    say(&format!(
        "  RESTORED {backend}/{server} after {:.1} s (weight ramps back up from 10 %)",
        t.elapsed().as_secs_f64()
    ));
    print_pool(stack)
}

fn step_ledger(stack: &LocalStack) -> anyhow::Result<()> {
    let (backend, server) = FAULT_SERVER;
    say(&format!(
        "== 5. The ledger: egress-checker history {backend}/{server}"
    ));
    // Events reach Postgres in batches: wait for the restore to be there too.
    let history = || {
        stack
            .cli(&["history", &format!("{backend}/{server}"), "--since", "1h"])
            .unwrap_or_default()
    };
    let mut text = String::new();
    wait_for(Duration::from_secs(30), || {
        text = history();
        text.contains("restored")
    });
    anyhow::ensure!(!stopping(), interrupted());
    anyhow::ensure!(
        text.contains("quarantined") && text.contains("restored"),
        "the ledger lacks the quarantine or the restore:\n{text}"
    );
    let history = text;
    for line in history.lines() {
        say(&format!("  {line}"));
    }
    // Attribution is written per closed minute: wait for this minute's rows.
    say("  waiting for the current attribution minute to close and reach the ledger (up to 70 s)...");
    let who = || {
        stack
            .cli(&["who", "--ip", "127.0.0.5", "--at", "now", "--window", "10m"])
            .ok()
            .filter(|t| t.contains("kr01"))
    };
    let mut answer = None;
    wait_for(Duration::from_secs(70), || {
        answer = who();
        answer.is_some()
    });
    anyhow::ensure!(!stopping(), interrupted());
    let answer = answer
        .ok_or_else(|| anyhow::anyhow!("no attribution for 127.0.0.5 after 70 s\n{}", stack.agent_logs()))?;
    say("== 6. Who used exit IP 127.0.0.5? egress-checker who --ip 127.0.0.5 --at now --window 10m");
    for line in answer.lines() {
        say(&format!("  {line}"));
    }
    Ok(())
}

/// The agent hangs (SIGSTOP: its port accepts, it never answers): with the shipped SPOE file each
/// tunnel costs at most `timeout processing` (15 ms) more, until HAProxy's spop-check marks the
/// agent DOWN and skips it.
fn step_fail_open(stack: &mut LocalStack) -> anyhow::Result<()> {
    say(&format!(
        "== 7. Fail-open: egress-spoa hung (SIGSTOP); HAProxy runs haproxy/spoe-egress.conf as shipped (timeout processing {SHIPPED_PROCESSING_MS}ms)"
    ));
    let baseline = stack.timed_tunnels(7, 10)?;
    say(&format!("  agent running:     {}", baseline.summary()));
    stack.pause_spoa()?;
    let hung = stack.timed_tunnels(8, 10);
    stack.resume_spoa()?;
    let hung = hung?;
    say(&format!(
        "  FAIL-OPEN egress-spoa hung: {} (+{:.1} ms on the p50; budget {SHIPPED_PROCESSING_MS} ms)",
        hung.summary(),
        (hung.p50().as_secs_f64() - baseline.p50().as_secs_f64()) * 1e3
    ));
    say("  egress-spoa resumed (SIGCONT); waiting for HAProxy's spop-check to see it UP");
    if !wait_for(Duration::from_secs(30), || {
        stack.status("spoe-egress", "spoa1").starts_with("UP")
    }) {
        anyhow::ensure!(!stopping(), interrupted());
        anyhow::bail!("egress-spoa not UP again after 30 s\n{}", stack.agent_logs());
    }
    Ok(())
}

fn step_report(stack: &LocalStack) -> anyhow::Result<std::path::PathBuf> {
    let out = stack.dir().join("report");
    let out_text = out.to_string_lossy().into_owned();
    say("== 8. The morning report: egress-checker report --since 1h --out <dir>");
    stack.cli(&[
        "report",
        "--since",
        "1h",
        "--out",
        &out_text,
        "--title",
        "egress-demo",
    ])?;
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json"))?)?;
    let (backend, server) = FAULT_SERVER;
    let quarantines = json["servers"]
        .as_array()
        .and_then(|servers| {
            servers
                .iter()
                .find(|s| s["backend"] == backend && s["server"] == server)
        })
        .and_then(|s| s["quarantines"]["count"].as_u64())
        .unwrap_or(0);
    anyhow::ensure!(
        quarantines >= 1,
        "the report does not show {backend}/{server}'s quarantine:\n{json:#}"
    );
    say(&format!(
        "  report.json: {backend}/{server} quarantined {quarantines} time(s), pool availability {}",
        json["pool"]["availability"]
    ));
    say(&format!(
        "  index.html:  {} (removed when the demo stops)",
        out.join("index.html").display()
    ));
    Ok(out)
}

fn step_where_to_look(stack: &LocalStack, report: &std::path::Path) {
    let db = stack.database_url();
    say("== Where to look");
    say(&format!(
        "  the report:              file://{}",
        report.join("index.html").display()
    ));
    say(&format!("  HAProxy stats page:      {}", stack.stats_url()));
    say(&format!(
        "  HAProxy metrics:         {}metrics",
        stack.stats_url()
    ));
    say(&format!(
        "  egress-checker metrics:  http://{}/metrics",
        stack.checker_metrics()
    ));
    say(&format!(
        "  egress-spoa metrics:     http://{}/metrics",
        stack.spoa_metrics()
    ));
    say(&format!(
        "  the proxy:               curl -sx http://{} http://{}/   (the IP-echo target answers with your exit IP)",
        stack.front(),
        stack.echo_addr()
    ));
    say(&format!(
        "  who:                     EGRESS_DATABASE_URL='{db}' EGRESS_HASH_KEY={KEY_HEX} target/debug/egress-checker who --client 127.0.1.1 --from 1h"
    ));
    say(&format!(
        "  history:                 EGRESS_DATABASE_URL='{db}' target/debug/egress-checker history {}/{} --since 1h",
        FAULT_SERVER.0, FAULT_SERVER.1
    ));
    say(&format!("  the ledger:              psql '{db}'"));
    say(&format!(
        "  checker config:          {}",
        stack.checker_config().display()
    ));
}
