//! HAProxy started from a config the test renders, with its runtime API on a unix socket.
//!
//! Placeholders the config may use: `{{RUNTIME_SOCKET}}` (the admin socket path, required: declare
//! `stats socket {{RUNTIME_SOCKET}} mode 600 level admin`, as [`GLOBAL`] does), `{{DIR}}` (the
//! instance's temp dir) and `{{PORT0}}` ... `{{PORT9}}` (free ports picked by the harness, read back
//! with [`Haproxy::port`]; on a bind collision the harness picks new ones and starts again).
//!
//! The config is checked with `haproxy -c` first, so a bad config fails with HAProxy's own message.
//! HAProxy then runs in the foreground (`-db`); with `log stdout format raw local0` its log lines land
//! in the captured output ([`Haproxy::logs`]).

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use nix::sys::signal::Signal;

use crate::dirs::HarnessDir;
use crate::ports::{free_port, is_addr_in_use};
use crate::process::{ChildSpec, ManagedChild, tail};
use crate::programs::find_program;

/// A `global` + `defaults` preamble: logs to stdout, the admin socket, short timeouts.
pub const GLOBAL: &str = "\
global
    log stdout format raw local0
    stats socket {{RUNTIME_SOCKET}} mode 600 level admin
    stats timeout 30s

defaults
    log global
    timeout connect 2s
    timeout client 30s
    timeout server 30s
";

const START_TIMEOUT: Duration = Duration::from_secs(15);
const CMD_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_ANSWER: usize = 16 * 1024 * 1024;
const PORT_PLACEHOLDERS: usize = 10;

/// A running HAProxy. Stopped on drop.
#[derive(Debug)]
pub struct Haproxy {
    child: ManagedChild,
    socket: PathBuf,
    config_path: PathBuf,
    ports: Vec<u16>,
    dir: Arc<HarnessDir>,
}

impl Haproxy {
    /// Renders the placeholders, checks the config with `haproxy -c`, starts HAProxy and waits until
    /// its runtime API answers `show info`.
    pub fn start(config_text: &str) -> anyhow::Result<Haproxy> {
        anyhow::ensure!(
            config_text.contains("{{RUNTIME_SOCKET}}"),
            "the HAProxy config must declare `stats socket {{{{RUNTIME_SOCKET}}}} mode 600 level admin` \
             (egress_e2e::haproxy::GLOBAL does)"
        );
        let bin = find_program("haproxy", "haproxy")?;
        let dir = Arc::new(HarnessDir::new("haproxy")?);
        let socket = dir.path().join("admin.sock");
        let config_path = dir.path().join("haproxy.cfg");
        let uses_ports = (0..PORT_PLACEHOLDERS).any(|i| config_text.contains(&format!("{{{{PORT{i}}}}}")));
        let attempts = if uses_ports { 5 } else { 1 };
        let mut last = None;
        for _ in 0..attempts {
            let ports = (0..PORT_PLACEHOLDERS)
                .map(|_| free_port())
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut text = config_text
                .replace("{{RUNTIME_SOCKET}}", &socket.to_string_lossy())
                .replace("{{DIR}}", &dir.path().to_string_lossy());
            for (i, port) in ports.iter().enumerate() {
                text = text.replace(&format!("{{{{PORT{i}}}}}"), &port.to_string());
            }
            std::fs::write(&config_path, &text)
                .with_context(|| format!("writing {}", config_path.display()))?;
            check(&bin, &config_path, &dir)?;
            let _ = std::fs::remove_file(&socket);
            let mut cmd = Command::new(&bin);
            cmd.arg("-db").arg("-f").arg(&config_path).current_dir(dir.path());
            let mut child = ChildSpec::new("haproxy", cmd)
                // SIGTERM: HAProxy's hard stop, at once; tests do not wait for sessions to finish.
                .stop_signal(Signal::SIGTERM)
                .grace(Duration::from_secs(2))
                .in_dir(dir.clone())
                .spawn()?;
            let ready = crate::wait_until(START_TIMEOUT, || {
                !child.is_running() || send(&socket, "show info").is_ok()
            });
            if ready && child.is_running() {
                return Ok(Haproxy {
                    child,
                    socket,
                    config_path,
                    ports,
                    dir,
                });
            }
            let log = child.logs();
            child.kill();
            let error = anyhow::anyhow!("haproxy did not start:\n{}", tail(&log));
            if !is_addr_in_use(&log) {
                return Err(error);
            }
            last = Some(error);
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("haproxy did not start")))
    }

    /// The admin socket's path.
    pub fn runtime_socket(&self) -> &Path {
        &self.socket
    }

    /// The port that replaced `{{PORT<i>}}` in the config.
    pub fn port(&self, i: usize) -> u16 {
        self.ports.get(i).copied().unwrap_or(0)
    }

    /// The rendered config file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The instance's temp dir (`{{DIR}}`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// HAProxy's pid.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Sends one runtime API command and returns the whole answer.
    pub fn cmd(&self, command: &str) -> anyhow::Result<String> {
        send(&self.socket, command).with_context(|| format!("haproxy runtime API `{command}`"))
    }

    /// `show stat`, one map per row keyed by the CSV header (pxname, svname, status, scur, ...).
    pub fn show_stat(&self) -> anyhow::Result<Vec<HashMap<String, String>>> {
        parse_show_stat(&self.cmd("show stat")?)
    }

    /// The `show stat` row of `proxy`/`server` (e.g. "egress", "b1" or "egress", "BACKEND").
    pub fn stat(&self, proxy: &str, server: &str) -> anyhow::Result<Option<HashMap<String, String>>> {
        Ok(self.show_stat()?.into_iter().find(|row| {
            row.get("pxname").map(String::as_str) == Some(proxy)
                && row.get("svname").map(String::as_str) == Some(server)
        }))
    }

    /// `show servers state`, one map per server keyed by the header (be_name, srv_name, srv_op_state,
    /// srv_admin_state, srv_addr, ...).
    pub fn show_servers_state(&self) -> anyhow::Result<Vec<HashMap<String, String>>> {
        parse_servers_state(&self.cmd("show servers state")?)
    }

    /// All output so far: log lines (`log stdout`) and HAProxy's own messages.
    pub fn logs(&self) -> String {
        self.child.logs()
    }

    /// Whether HAProxy is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }
}

fn check(bin: &Path, config: &Path, dir: &Arc<HarnessDir>) -> anyhow::Result<()> {
    let mut cmd = Command::new(bin);
    cmd.arg("-c").arg("-f").arg(config);
    ChildSpec::new("haproxy-check", cmd)
        .in_dir(dir.clone())
        .run(Duration::from_secs(30))
        .map(|_| ())
        .context("`haproxy -c` rejected the config")
}

fn send(socket: &Path, command: &str) -> anyhow::Result<String> {
    let mut stream =
        UnixStream::connect(socket).with_context(|| format!("connecting to {}", socket.display()))?;
    stream.set_read_timeout(Some(CMD_TIMEOUT))?;
    stream.set_write_timeout(Some(CMD_TIMEOUT))?;
    // Non-interactive mode: one command per connection, HAProxy closes after the answer.
    stream.write_all(format!("{command}\n").as_bytes())?;
    let mut answer = Vec::new();
    stream.take(MAX_ANSWER as u64 + 1).read_to_end(&mut answer)?;
    anyhow::ensure!(
        answer.len() <= MAX_ANSWER,
        "answer larger than {MAX_ANSWER} bytes"
    );
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// Parses `show stat` CSV output ("# pxname,svname,..." header line).
pub fn parse_show_stat(text: &str) -> anyhow::Result<Vec<HashMap<String, String>>> {
    let mut lines = text.lines();
    let header = lines
        .next()
        .and_then(|l| l.strip_prefix("# "))
        .ok_or_else(|| anyhow::anyhow!("show stat: no header in {:?}", tail(text)))?;
    let names: Vec<&str> = header.split(',').collect();
    Ok(lines
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            // The header and every row end with a comma: skip the empty last column.
            names
                .iter()
                .zip(line.split(','))
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| ((*k).to_owned(), v.to_owned()))
                .collect()
        })
        .collect())
}

/// Parses `show servers state` output (a version line, a "# be_id be_name ..." header, rows).
pub fn parse_servers_state(text: &str) -> anyhow::Result<Vec<HashMap<String, String>>> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let version = lines.next().unwrap_or_default().trim();
    anyhow::ensure!(
        version == "1",
        "show servers state: unexpected version line {version:?}"
    );
    let header = lines
        .next()
        .and_then(|l| l.strip_prefix("# "))
        .ok_or_else(|| anyhow::anyhow!("show servers state: no header in {:?}", tail(text)))?;
    let names: Vec<&str> = header.split_whitespace().collect();
    Ok(lines
        .filter(|l| !l.starts_with('#'))
        .map(|line| {
            names
                .iter()
                .zip(line.split_whitespace())
                .map(|(k, v)| ((*k).to_owned(), v.to_owned()))
                .collect()
        })
        .collect())
}

/// The shipped SPOE engine file (`haproxy/spoe-egress.conf`) copied into `dir`, with its
/// `timeout processing` raised from 15 ms to 2 s: on a loaded test machine the first exchange
/// (connect + HELLO + NOTIFY) can exceed 15 ms, and HAProxy would fail open. Fail-open itself is
/// tested separately. Everything else is the file as shipped.
pub fn shipped_spoe_conf(dir: &Path) -> anyhow::Result<PathBuf> {
    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../haproxy/spoe-egress.conf");
    let text =
        std::fs::read_to_string(&shipped).map_err(|e| anyhow::anyhow!("{}: {e}", shipped.display()))?;
    anyhow::ensure!(
        text.contains("timeout processing 15ms"),
        "the shipped SPOE processing timeout changed: update shipped_spoe_conf"
    );
    let path = dir.join("spoe-egress.conf");
    std::fs::write(
        &path,
        text.replace("timeout processing 15ms", "timeout processing 2s"),
    )?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Both captured from HAProxy 2.6.12 (one listen section, servers b1 with a failing check, b2 without).
    const SHOW_STAT: &str = include_str!("testdata/show_stat.csv");
    const SERVERS_STATE: &str = include_str!("testdata/servers_state.txt");

    #[test]
    fn parses_show_stat_rows_by_header() {
        let rows = parse_show_stat(SHOW_STAT).unwrap();
        let names: Vec<_> = rows.iter().map(|r| r["svname"].as_str()).collect();
        assert_eq!(names, ["FRONTEND", "b1", "b2", "BACKEND"]);
        assert_eq!(rows[1]["status"], "DOWN");
        assert_eq!(rows[1]["check_desc"], "Layer4 connection problem");
        assert_eq!(rows[2]["status"], "no check");
        assert_eq!(rows[2]["addr"], "127.0.0.1:10");
        assert!(rows.iter().all(|r| !r.contains_key("")));
    }

    #[test]
    fn parses_servers_state_rows_by_header() {
        let rows = parse_servers_state(SERVERS_STATE).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["be_name"], "egress");
        assert_eq!(rows[0]["srv_name"], "b1");
        assert_eq!(rows[0]["srv_op_state"], "0");
        assert_eq!(rows[1]["srv_op_state"], "2");
        assert_eq!(rows[1]["srv_port"], "10");
    }

    #[test]
    fn rejects_output_without_header() {
        assert!(parse_show_stat("Unknown command\n").is_err());
        assert!(parse_servers_state("Can't find backend.\n").is_err());
    }
}
