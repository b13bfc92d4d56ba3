//! The one-command local run (`scripts/demo` = `egress-demo`): the bounded `--ci` mode prints every
//! step and exits 0, and Ctrl-C (SIGINT) in the middle of a run stops every process it started.
//!
//! Needs the binaries: `cargo build --workspace --bins` (scripts/test does it).

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use egress_harness::bins::bin_path;
use egress_harness::wait_until;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The demo process, SIGKILLed if the test fails before it exits (its children die with it:
/// the harness starts them with a parent-death signal).
struct Demo {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Demo {
    fn start(args: &[&str]) -> anyhow::Result<Demo> {
        let mut child = Command::new(bin_path("egress-demo")?)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let (tx, lines) = mpsc::channel();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Demo {
            child,
            lines,
            seen: Vec::new(),
        })
    }

    /// Reads lines until one contains `needle`; false after `timeout` or at the end of the output.
    fn wait_line(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    self.seen.push(line);
                    if hit {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                // The rest of the output.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
                    self.seen.push(line);
                }
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn output(&self) -> String {
        self.seen.join("\n")
    }

    /// The pids from the "processes: name=pid ..." line.
    fn pids(&self) -> Vec<(String, i32)> {
        self.seen
            .iter()
            .find_map(|l| l.trim().strip_prefix("processes: "))
            .map(|rest| {
                rest.split_whitespace()
                    .filter_map(|kv| kv.split_once('='))
                    .filter_map(|(n, p)| Some((n.to_owned(), p.parse().ok()?)))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn alive(pid: i32) -> bool {
    // A reaped process is gone from /proc; a zombie would still be there but is not running.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.split_whitespace().nth(2).is_none_or(|state| state != "Z"))
}

fn assert_all_gone(demo: &Demo) {
    let pids = demo.pids();
    assert!(pids.len() >= 8, "no processes line:\n{}", demo.output());
    let gone = wait_until(Duration::from_secs(20), || pids.iter().all(|(_, p)| !alive(*p)));
    let left: Vec<_> = pids.iter().filter(|(_, p)| alive(*p)).collect();
    assert!(
        gone,
        "still running after the demo exited: {left:?}\n{}",
        demo.output()
    );
}

#[test]
fn ci_mode_runs_every_step_and_stops_everything() -> anyhow::Result<()> {
    let mut demo = Demo::start(&["--ci"])?;
    let status = demo.wait_exit(Duration::from_secs(300));
    let out = demo.output();
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{out}");
    for needle in [
        "started HAProxy",
        "all servers UP",
        "client 127.0.1.9   -> exit IP 127.0.0.5",
        "its retry (X-Egress-Attempt: 2) -> exit IP 127.0.0.",
        "REFUSED CONNECT 169.254.169.254:443 (the cloud metadata address): 403, logged refused=private-address",
        "QUARANTINED egress/g04",
        "status=DOWN (agent)",
        "RESTORED egress/g04",
        "quarantined       checker",
        "restored          checker",
        "egress_kr/kr01  127.0.0.5",
        "FAIL-OPEN egress-spoa hung: 10/10 tunnels ok",
        "report.json: egress/g04 quarantined",
        "the report:              file://",
        "HAProxy stats page:      http://127.0.0.1:",
        "egress-checker metrics:  http://127.0.0.1:",
        "egress-spoa metrics:     http://127.0.0.1:",
        "egress-checker who --client",
        "everything stopped",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    // Every exit tag was right from the first request: `who` never reports the agent's IP as
    // differing from the ledger's (a stale tag).
    assert!(!out.contains("differs"), "`who` found a stale exit tag:\n{out}");
    // The fallback lands on another server than the primary.
    let fallback = out
        .lines()
        .find(|l| l.contains("FALLBACK client"))
        .unwrap_or_default();
    let ips: Vec<&str> = fallback
        .split("exit IP ")
        .skip(1)
        .filter_map(|rest| rest.split([';', ',']).next())
        .collect();
    assert!(ips.len() == 2 && ips[0] != ips[1], "{fallback}");
    // The shipped SPOE budget holds in the demo: a hung agent adds at most 20 ms to a tunnel (the
    // shipped `timeout processing 15ms`, plus scheduling on a loaded machine).
    let added: f64 = out
        .lines()
        .find(|l| l.contains("FAIL-OPEN egress-spoa hung:"))
        .and_then(|l| l.split("(+").nth(1))
        .and_then(|rest| rest.split(" ms").next())
        .and_then(|ms| ms.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no FAIL-OPEN line with the added latency in:\n{out}"))?;
    assert!(
        added <= 20.0,
        "a hung agent added {added} ms to the median tunnel:\n{out}"
    );
    assert_all_gone(&demo);
    Ok(())
}

#[test]
fn ctrl_c_in_the_middle_stops_everything() -> anyhow::Result<()> {
    let mut demo = Demo::start(&[])?;
    assert!(
        demo.wait_line("== 2. Traffic", Duration::from_secs(180)),
        "the demo never reached its traffic step:\n{}",
        demo.output()
    );
    kill(Pid::from_raw(i32::try_from(demo.child.id())?), Signal::SIGINT)?;
    let status = demo.wait_exit(Duration::from_secs(60));
    let out = demo.output();
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{out}");
    assert!(out.contains("stopping everything"), "{out}");
    assert_all_gone(&demo);
    Ok(())
}
