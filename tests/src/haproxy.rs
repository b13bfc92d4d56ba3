//! HAProxy started from a config the test renders, with its runtime API on a unix socket.
//!
//! Placeholders the config may use: `{{RUNTIME_SOCKET}}` (the admin socket path, required: declare
//! `stats socket {{RUNTIME_SOCKET}} mode 600 level admin`, as [`GLOBAL`] does), `{{DIR}}` (the
//! instance's temp dir, holding a `server-state` file with no server for `server-state-file`) and `{{PORT0}}` ... `{{PORT9}}` (free ports picked by the harness, read back
//! with [`Haproxy::port`]; on a bind collision the harness picks new ones and starts again).
//!
//! The config is checked with `haproxy -dW -c` first, so a bad config (or one HAProxy warns about)
//! fails with HAProxy's own message. The binary is [`haproxy_program`] (`EGRESS_TEST_HAPROXY`).
//! HAProxy then runs in the foreground (`-db`); with `log stdout format raw local0` its log lines land
//! in the captured output ([`Haproxy::logs`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use egress_haproxy_api::{Row, RuntimeApiAddr};
use nix::sys::signal::Signal;

use crate::dirs::HarnessDir;
use crate::ports::{free_port, is_addr_in_use};
use crate::process::{ChildSpec, ManagedChild, tail};
use crate::programs::haproxy_program;

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

/// The HAProxy rotation tests drive: a source-hashed TCP pool `listen egress` of `servers` (checked
/// every 300 ms), the runtime API on `{{RUNTIME_SOCKET}}`, plus one `stats socket` line per entry of
/// `extra_sockets` (e.g. `ipv4@127.0.0.2:9999 level admin`).
pub fn rotation_pool_config(extra_sockets: &[&str], servers: &[(&str, std::net::SocketAddr)]) -> String {
    let mut text = String::from(
        "global\n    log stdout format raw local0\n    stats socket {{RUNTIME_SOCKET}} mode 600 level admin\n",
    );
    for s in extra_sockets {
        text.push_str(&format!("    stats socket {s}\n"));
    }
    text.push_str(
        "    stats timeout 30s\n\ndefaults\n    log global\n    mode tcp\n    timeout connect 2s\n    \
         timeout client 60s\n    timeout server 60s\n\nlisten egress\n    bind 127.0.0.1:{{PORT0}}\n    \
         balance source\n    hash-type consistent\n    default-server weight 100 check inter 300ms fall 2 rise 1\n",
    );
    for (name, addr) in servers {
        text.push_str(&format!("    server {name} {addr}\n"));
    }
    text
}

/// A server-state file with no server: the format version line alone. HAProxy 2.6 warns about a
/// missing or empty file, not about this one.
pub const EMPTY_SERVER_STATE: &str = "1\n";

const START_TIMEOUT: Duration = Duration::from_secs(15);
const CMD_TIMEOUT: Duration = Duration::from_secs(10);
const PORT_PLACEHOLDERS: usize = 10;

/// A running HAProxy. Stopped on drop.
#[derive(Debug)]
pub struct Haproxy {
    child: ManagedChild,
    /// The output of the processes that a [`Haproxy::reload`] replaced.
    earlier_logs: String,
    socket: PathBuf,
    config_path: PathBuf,
    ports: Vec<u16>,
    dir: Arc<HarnessDir>,
    /// The network namespace it runs in, if any.
    netns: Option<String>,
}

impl Haproxy {
    /// Renders the placeholders, checks the config with `haproxy -c`, starts HAProxy and waits until
    /// its runtime API answers `show info`.
    pub fn start(config_text: &str) -> anyhow::Result<Haproxy> {
        Self::start_with(config_text, None)
    }

    /// As [`Haproxy::start`], inside the network namespace `netns` (see [`crate::netns`]); the
    /// runtime API is a Unix socket, reachable from the test as usual.
    pub fn start_in(config_text: &str, netns: &str) -> anyhow::Result<Haproxy> {
        Self::start_with(config_text, Some(netns))
    }

    fn start_with(config_text: &str, netns: Option<&str>) -> anyhow::Result<Haproxy> {
        anyhow::ensure!(
            config_text.contains("{{RUNTIME_SOCKET}}"),
            "the HAProxy config must declare `stats socket {{{{RUNTIME_SOCKET}}}} mode 600 level admin` \
             (egress_harness::haproxy::GLOBAL does)"
        );
        let bin = haproxy_program()?;
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
            // `server-state-file {{DIR}}/server-state` (the shipped config's) exists as the packages
            // create it, holding only the format version, unless a test (a reload) saved states.
            let state = dir.path().join("server-state");
            if !state.exists() {
                std::fs::write(&state, EMPTY_SERVER_STATE)?;
            }
            check(&bin, &config_path, &dir, true)?;
            let _ = std::fs::remove_file(&socket);
            let mut child = spawn(&bin, &config_path, &dir, None, netns)?;
            let ready = crate::wait_until(START_TIMEOUT, || {
                !child.is_running() || send(&socket, "show info").is_ok()
            });
            if ready && child.is_running() {
                return Ok(Haproxy {
                    netns: netns.map(str::to_owned),
                    child,
                    earlier_logs: String::new(),
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
    pub fn show_stat(&self) -> anyhow::Result<Vec<Row>> {
        parse_show_stat(&self.cmd("show stat")?)
    }

    /// The `show stat` row of `proxy`/`server` (e.g. "egress", "b1" or "egress", "BACKEND").
    pub fn stat(&self, proxy: &str, server: &str) -> anyhow::Result<Option<Row>> {
        Ok(self.show_stat()?.into_iter().find(|row| {
            row.get("pxname").map(String::as_str) == Some(proxy)
                && row.get("svname").map(String::as_str) == Some(server)
        }))
    }

    /// `show servers state`, one map per server keyed by the header (be_name, srv_name, srv_op_state,
    /// srv_admin_state, srv_addr, ...).
    pub fn show_servers_state(&self) -> anyhow::Result<Vec<Row>> {
        parse_servers_state(&self.cmd("show servers state")?)
    }

    /// All output so far: log lines (`log stdout`) and HAProxy's own messages, those of the
    /// processes a reload replaced first.
    pub fn logs(&self) -> String {
        format!("{}{}", self.earlier_logs, self.child.logs())
    }

    /// Reloads HAProxy as an operator does (docs/operator-guide.md, "Reloading HAProxy"): saves
    /// `show servers state` into the instance's `server-state` file (the shipped
    /// `server-state-file`), then starts a new process on the same config with `-sf <old pid>`,
    /// which takes over the listeners and tells the old one to finish. Returns once the new
    /// process answers on the runtime API.
    pub fn reload(&mut self) -> anyhow::Result<()> {
        let states = self.cmd("show servers state")?;
        std::fs::write(self.dir.path().join("server-state"), states)?;
        let bin = haproxy_program()?;
        check(&bin, &self.config_path, &self.dir, false)?;
        let old_pid = self.child.pid();
        let mut child = spawn(
            &bin,
            &self.config_path,
            &self.dir,
            Some(old_pid),
            self.netns.as_deref(),
        )?;
        let new_pid = child.pid();
        // The old process's socket answers until the new one has replaced it: wait for the new pid.
        let ready = crate::wait_until(START_TIMEOUT, || {
            !child.is_running()
                || send(&self.socket, "show info")
                    .is_ok_and(|info| info.lines().any(|l| l == format!("Pid: {new_pid}")))
        });
        if !(ready && child.is_running()) {
            let log = child.logs();
            child.kill();
            anyhow::bail!("haproxy did not reload:\n{}", tail(&log));
        }
        let mut old = std::mem::replace(&mut self.child, child);
        // The old process stops once its sessions (agent checks, tunnels) are done.
        old.wait_timeout(Duration::from_secs(5));
        self.earlier_logs.push_str(&old.logs());
        Ok(())
    }

    /// `srv_admin_state` of `server` in `show servers state` (0 ready, 1 forced maint, 8 drain),
    /// or "" when there is none.
    pub fn admin_state(&self, server: &str) -> String {
        self.show_servers_state()
            .ok()
            .and_then(|rows| {
                rows.into_iter()
                    .find(|r| r.get("srv_name").map(String::as_str) == Some(server))
                    .and_then(|r| r.get("srv_admin_state").cloned())
            })
            .unwrap_or_default()
    }

    /// SIGKILLs HAProxy, as a crash: its listeners are gone at once.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// Whether HAProxy is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }
}

/// HAProxy in the foreground (`-db`) on `config`; `-sf <pid>` when it replaces a running process.
fn spawn(
    bin: &Path,
    config: &Path,
    dir: &Arc<HarnessDir>,
    replaces: Option<u32>,
    netns: Option<&str>,
) -> anyhow::Result<ManagedChild> {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.arg("-db").arg("-f").arg(config).current_dir(dir.path());
    if let Some(pid) = replaces {
        cmd.arg("-sf").arg(pid.to_string());
    }
    ChildSpec::new("haproxy", cmd)
        // SIGTERM: HAProxy's hard stop, at once; tests do not wait for sessions to finish.
        .stop_signal(Signal::SIGTERM)
        .grace(Duration::from_secs(2))
        .in_dir(dir.clone())
        .spawn()
}

/// `haproxy -c`; `zero_warning` adds -dW: a warning fails the check as an error does (not on a
/// reload, where HAProxy warns about every server state it restores).
fn check(bin: &Path, config: &Path, dir: &Arc<HarnessDir>, zero_warning: bool) -> anyhow::Result<()> {
    let mut cmd = Command::new(bin);
    if zero_warning {
        cmd.arg("-dW");
    }
    cmd.arg("-c").arg("-f").arg(config);
    ChildSpec::new("haproxy-check", cmd)
        .in_dir(dir.clone())
        .run(Duration::from_secs(30))
        .map(|_| ())
        .context("`haproxy -c` rejected the config")
}

fn send(socket: &Path, command: &str) -> anyhow::Result<String> {
    let addr = RuntimeApiAddr::Unix(socket.to_path_buf());
    egress_haproxy_api::command_blocking(&addr, command, CMD_TIMEOUT)
        .with_context(|| format!("runtime API at {}", socket.display()))
}

/// `show stat` rows keyed by the CSV header (pxname, svname, status, scur, ...), parsed by
/// egress-haproxy-api's strict parser (a cut-off dump is an error, not fewer rows).
pub fn parse_show_stat(text: &str) -> anyhow::Result<Vec<Row>> {
    Ok(egress_haproxy_api::parse_show_stat(text)?
        .into_iter()
        .map(|r| r.fields)
        .collect())
}

/// `show servers state` rows keyed by the header (be_name, srv_name, srv_op_state, ...).
pub fn parse_servers_state(text: &str) -> anyhow::Result<Vec<Row>> {
    Ok(egress_haproxy_api::parse_servers_state(text)?)
}

/// The shipped SPOE engine file (`haproxy/spoe-egress.conf`) copied into `dir` exactly as shipped
/// (`timeout processing 15ms`): what the demo, the fail-open test and every test that does not
/// assert the agent's answer on each request run.
pub fn shipped_spoe_conf(dir: &Path) -> anyhow::Result<PathBuf> {
    let text = shipped_spoe_text()?;
    let path = dir.join("spoe-egress.conf");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// The shipped SPOE engine file with its `timeout processing` raised from 15 ms to 2 s, for the
/// tests that assert that *every* request was tagged by the agent (a debug build on a loaded
/// 2-core machine can miss 15 ms now and then, and HAProxy then fails open, as it should). Each
/// test that uses it says so. Everything else is the file as shipped.
pub fn raised_spoe_conf(dir: &Path) -> anyhow::Result<PathBuf> {
    let text = shipped_spoe_text()?;
    anyhow::ensure!(
        text.contains(&format!("timeout processing {SHIPPED_PROCESSING_MS}ms")),
        "the shipped SPOE processing timeout changed: update SHIPPED_PROCESSING_MS"
    );
    let path = dir.join("spoe-egress.conf");
    std::fs::write(
        &path,
        text.replace(
            &format!("timeout processing {SHIPPED_PROCESSING_MS}ms"),
            "timeout processing 2s",
        ),
    )?;
    Ok(path)
}

/// The shipped `timeout processing` of haproxy/spoe-egress.conf, in milliseconds: a dead or hung
/// agent costs a request at most this long (tests assert against it).
pub const SHIPPED_PROCESSING_MS: u64 = 15;

fn shipped_spoe_text() -> anyhow::Result<String> {
    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../haproxy/spoe-egress.conf");
    std::fs::read_to_string(&shipped).map_err(|e| anyhow::anyhow!("{}: {e}", shipped.display()))
}
