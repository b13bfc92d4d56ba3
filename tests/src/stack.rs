//! The whole system on loopback, as the demo and the observability test run it: a throwaway
//! Postgres ledger, an HTTP IP-echo target, egress backends (tinyproxy with exit IPs 127.0.0.2-6; the
//! one at 127.0.0.6 sits behind a [`FaultBackend`] relay, so its tunnel can be broken), HAProxy from the shipped configuration
//! ([`crate::shipped::haproxy_for_test`]), egress-checker and egress-spoa, both writing the ledger.
//!
//! Everything stops when the [`LocalStack`] drops (fields drop in declaration order: the agents first,
//! so they flush the ledger while Postgres still runs).

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use egress_haproxy_api::Row;

use crate::bins::bin_path;
use crate::client::{connect_from, connect_request_with, http_get};
use crate::echo::EchoServer;
use crate::entry::EntryPolicy;
use crate::fault::{FaultBackend, FaultMode};
use crate::haproxy::{Haproxy, shipped_spoe_conf};
use crate::ports::free_addr;
use crate::postgres::Postgres;
use crate::process::{ChildSpec, ManagedChild};
use crate::shipped::{AGENT_PORT, FRONT_PORT, SPOA_PORT, STATS_PORT, haproxy_for_test};
use crate::tinyproxy::Tinyproxy;

/// The hash key the stack's agents share (a demo key: never use it in production).
pub const KEY_HEX: &str = "00112233445566778899aabbccddeeff";
/// The backend server whose tunnel [`LocalStack::break_tunnel`] breaks.
pub const FAULT_SERVER: (&str, &str) = ("egress", "g04");
/// The exit IP of [`FAULT_SERVER`].
pub const FAULT_EXIT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);

/// The running system. See the module docs.
#[derive(Debug)]
pub struct LocalStack {
    spoa: ManagedChild,
    checker: ManagedChild,
    /// HAProxy, from the shipped config.
    pub haproxy: Haproxy,
    fault: FaultBackend,
    behind_fault: Tinyproxy,
    proxies: Vec<(String, String, Tinyproxy)>,
    echo: EchoServer,
    pg: Postgres,
    checker_metrics: SocketAddr,
    spoa_metrics: SocketAddr,
    checker_config: std::path::PathBuf,
    dir: tempfile::TempDir,
}

impl LocalStack {
    /// Starts everything; `progress` hears one line per component as it comes up. `stop` is polled
    /// between components: when it returns true the start is abandoned (what started is stopped).
    pub fn start(progress: &mut dyn FnMut(&str), stop: &dyn Fn() -> bool) -> anyhow::Result<LocalStack> {
        // The echo target's ports, and 443 as shipped (so a refused request to a private address on
        // 443 is refused for the address, as it would be in production).
        LocalStack::start_with(progress, stop, &|echo| {
            let mut policy = EntryPolicy::for_test(&[echo.http_addr(), echo.https_addr()]);
            policy.connect_ports.push(443);
            policy
        })
    }

    /// As [`LocalStack::start`], with HAProxy's entry policy made by `policy` from the echo target
    /// (its destinations must be allowed for the stack's own requests to pass).
    pub fn start_with(
        progress: &mut dyn FnMut(&str),
        stop: &dyn Fn() -> bool,
        policy: &dyn Fn(&EchoServer) -> EntryPolicy,
    ) -> anyhow::Result<LocalStack> {
        let abandoned = || anyhow::anyhow!("interrupted");
        let dir = tempfile::tempdir()?;
        let pg = Postgres::start().context("starting PostgreSQL")?;
        progress(&format!(
            "PostgreSQL (throwaway cluster, ledger migrated): {}",
            pg.url()
        ));
        anyhow::ensure!(!stop(), abandoned());
        let echo = EchoServer::start()?;
        progress(&format!("IP-echo target: http://{}/", echo.http_addr()));
        let mut proxies = Vec::new();
        for (backend, name, last) in [
            ("egress", "g01", 2),
            ("egress", "g02", 3),
            ("egress", "g03", 4),
            ("egress_kr", "kr01", 5),
        ] {
            let exit = Ipv4Addr::new(127, 0, 0, last);
            let t = Tinyproxy::start(exit)?;
            progress(&format!(
                "egress backend {backend}/{name}: tinyproxy on {}, exit IP {exit}",
                t.addr()
            ));
            proxies.push((backend.to_owned(), name.to_owned(), t));
            anyhow::ensure!(!stop(), abandoned());
        }
        let behind_fault = Tinyproxy::start(FAULT_EXIT)?;
        let fault = FaultBackend::start(FaultMode::Relay(behind_fault.addr()))?;
        progress(&format!(
            "egress backend {}/{}: tinyproxy on {} behind a breakable relay on {}, exit IP {FAULT_EXIT}",
            FAULT_SERVER.0,
            FAULT_SERVER.1,
            behind_fault.addr(),
            fault.addr()
        ));

        let mut servers: Vec<(&str, &str, SocketAddr)> = proxies
            .iter()
            .map(|(b, n, t)| (b.as_str(), n.as_str(), t.addr()))
            .collect();
        servers.push((FAULT_SERVER.0, FAULT_SERVER.1, fault.addr()));
        let config = haproxy_for_test(&servers, &shipped_spoe_conf(dir.path())?, &policy(&echo), None)?;
        let haproxy = Haproxy::start(&config).context("starting HAProxy")?;
        progress(&format!(
            "HAProxy {} (shipped haproxy.cfg for loopback): proxy 127.0.0.1:{}, stats http://127.0.0.1:{}/",
            haproxy_version_text(),
            haproxy.port(FRONT_PORT),
            haproxy.port(STATS_PORT)
        ));
        anyhow::ensure!(!stop(), abandoned());

        let checker_config = dir.path().join("checker.toml");
        std::fs::write(
            &checker_config,
            format!(
                "[backends]\nruntime_api = \"unix:{sock}\"\nnames = [\"egress\", \"egress_kr\"]\nrefresh = \"2s\"\n\
                 [[targets]]\naddress = \"{http}\"\n\
                 [exit_ip]\naddress = \"{http}\"\npath = \"/\"\ninterval = \"5s\"\ntimeout = \"2s\"\n",
                sock = haproxy.runtime_socket().display(),
                http = echo.http_addr(),
            ),
        )?;
        let checker_metrics = free_addr()?;
        let mut cmd = Command::new(bin_path("egress-checker")?);
        cmd.env("EGRESS_DATABASE_URL", pg.url())
            .arg("--config")
            .arg(&checker_config)
            .arg("run")
            .arg("--agent-listen")
            .arg(format!("127.0.0.1:{}", haproxy.port(AGENT_PORT)))
            .arg("--metrics-listen")
            .arg(checker_metrics.to_string())
            .arg("--spool-path")
            .arg(dir.path().join("checker.spool"));
        let checker = ChildSpec::new("egress-checker", cmd)
            .grace(Duration::from_secs(10))
            .spawn()?;
        progress(&format!(
            "egress-checker: agent-check 127.0.0.1:{}, metrics http://{checker_metrics}/metrics",
            haproxy.port(AGENT_PORT)
        ));

        let spoa_metrics = free_addr()?;
        let spoa = spawn_spoa(&haproxy, spoa_metrics, &pg, dir.path())?;
        progress(&format!(
            "egress-spoa: SPOP 127.0.0.1:{}, metrics http://{spoa_metrics}/metrics",
            haproxy.port(SPOA_PORT)
        ));
        Ok(LocalStack {
            spoa,
            checker,
            haproxy,
            fault,
            behind_fault,
            proxies,
            echo,
            pg,
            checker_metrics,
            spoa_metrics,
            checker_config,
            dir,
        })
    }

    /// HAProxy's client-facing address.
    pub fn front(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.haproxy.port(FRONT_PORT)))
    }

    /// The IP-echo target (plain HTTP): answers with the address it sees, i.e. the exit IP.
    pub fn echo_addr(&self) -> SocketAddr {
        self.echo.http_addr()
    }

    /// The stats page.
    pub fn stats_url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.haproxy.port(STATS_PORT))
    }

    /// The ledger's URL.
    pub fn database_url(&self) -> &str {
        self.pg.url()
    }

    /// egress-checker's metrics address.
    pub fn checker_metrics(&self) -> SocketAddr {
        self.checker_metrics
    }

    /// egress-spoa's metrics address.
    pub fn spoa_metrics(&self) -> SocketAddr {
        self.spoa_metrics
    }

    /// egress-spoa's SPOP address.
    pub fn spoa_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.haproxy.port(SPOA_PORT)))
    }

    /// The checker's config file.
    pub fn checker_config(&self) -> &std::path::Path {
        &self.checker_config
    }

    /// The stack's temp dir.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Every server of the stack: (backend, name, exit IP).
    pub fn servers(&self) -> Vec<(String, String, Ipv4Addr)> {
        let mut v: Vec<_> = self
            .proxies
            .iter()
            .map(|(b, n, t)| (b.clone(), n.clone(), t.bind_addr()))
            .collect();
        v.push((FAULT_SERVER.0.to_owned(), FAULT_SERVER.1.to_owned(), FAULT_EXIT));
        v
    }

    /// The `show stat` rows of the pool's servers: (backend/server, row).
    pub fn server_stats(&self) -> anyhow::Result<Vec<(String, Row)>> {
        let names: Vec<(String, String)> = self.servers().into_iter().map(|(b, n, _)| (b, n)).collect();
        Ok(self
            .haproxy
            .show_stat()?
            .into_iter()
            .filter_map(|row| {
                let px = row.get("pxname")?.clone();
                let sv = row.get("svname")?.clone();
                names
                    .iter()
                    .any(|(b, n)| *b == px && *n == sv)
                    .then(|| (format!("{px}/{sv}"), row))
            })
            .collect())
    }

    /// HAProxy's `status` of one server ("UP", "DOWN", ...), empty when unknown.
    pub fn status(&self, backend: &str, server: &str) -> String {
        self.haproxy
            .stat(backend, server)
            .ok()
            .flatten()
            .and_then(|r| r.get("status").cloned())
            .unwrap_or_default()
    }

    /// Whether every pool server is UP in HAProxy with its agent check answered (`L7OK`), and the
    /// SPOA backend is UP.
    pub fn all_up(&self) -> bool {
        let Ok(rows) = self.server_stats() else {
            return false;
        };
        rows.len() == self.servers().len()
            && rows.iter().all(|(_, r)| {
                r.get("status").is_some_and(|s| s == "UP")
                    && r.get("agent_status").is_some_and(|s| s == "L7OK")
            })
            && self.status("spoe-egress", "spoa1").starts_with("UP")
    }

    /// Whether HAProxy shows the server DOWN (for a quarantine: "DOWN (agent)").
    pub fn is_down(&self, backend: &str, server: &str) -> bool {
        self.status(backend, server).starts_with("DOWN")
    }

    /// One request through HAProxy from `client` (a 127.0.0.0/8 address) to the echo target, in the
    /// Korea pool when `kr`: returns the exit IP the target saw.
    pub fn request(&self, client: Ipv4Addr, kr: bool) -> anyhow::Result<String> {
        self.request_with(client, if kr { "X-Egress-Pool: kr\r\n" } else { "" })
    }

    /// As [`LocalStack::request`], with extra CONNECT header lines (each ending in `\r\n`).
    pub fn request_with(&self, client: Ipv4Addr, headers: &str) -> anyhow::Result<String> {
        let target = self.echo.http_addr().to_string();
        let (status, mut tunnel) =
            connect_request_with(connect_from(Some(client), self.front())?, &target, headers)?;
        anyhow::ensure!((200..300).contains(&status), "CONNECT {target} answered {status}");
        Ok(http_get(&mut tunnel, &target, "/")?.trim().to_owned())
    }

    /// Kills backend `name`'s tinyproxy (its port then refuses connections).
    pub fn kill_backend(&mut self, name: &str) -> anyhow::Result<()> {
        self.backend(name)?.kill();
        Ok(())
    }

    /// Starts backend `name`'s tinyproxy again on its port, leaving from `exit` (a new exit IP).
    pub fn restart_backend(&mut self, name: &str, exit: Ipv4Addr) -> anyhow::Result<()> {
        self.backend(name)?.restart(exit)
    }

    fn backend(&mut self, name: &str) -> anyhow::Result<&mut Tinyproxy> {
        self.proxies
            .iter_mut()
            .find(|(_, n, _)| n == name)
            .map(|(_, _, t)| t)
            .ok_or_else(|| {
                anyhow::anyhow!("no tinyproxy backend {name} (the relayed one cannot be restarted)")
            })
    }

    /// Breaks [`FAULT_SERVER`]'s tunnel: its port still accepts TCP (HAProxy's own check stays
    /// green) but nothing answers a CONNECT.
    pub fn break_tunnel(&self) -> anyhow::Result<()> {
        self.fault.set_mode(FaultMode::BlackHole)?;
        self.fault.drop_connections();
        Ok(())
    }

    /// Repairs [`FAULT_SERVER`]'s tunnel.
    pub fn repair_tunnel(&self) -> anyhow::Result<()> {
        self.fault.set_mode(FaultMode::Relay(self.behind_fault.addr()))
    }

    /// Runs `egress-checker <args>` against the stack's ledger and returns its stdout.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        crate::bins::checker_cli(self.pg.url(), KEY_HEX, args)
    }

    /// Every process the stack started: (name, pid).
    pub fn pids(&mut self) -> Vec<(String, u32)> {
        let mut v = vec![
            ("haproxy".to_owned(), self.haproxy.pid()),
            ("egress-checker".to_owned(), self.checker.pid()),
            ("egress-spoa".to_owned(), self.spoa.pid()),
        ];
        if let Some(pid) = self.pg.pid() {
            v.push(("postgres".to_owned(), pid));
        }
        for (_, n, t) in &self.proxies {
            if let Some(pid) = t.pid() {
                v.push((format!("tinyproxy-{n}"), pid));
            }
        }
        if let Some(pid) = self.behind_fault.pid() {
            v.push((format!("tinyproxy-{}", FAULT_SERVER.1), pid));
        }
        v
    }

    /// `n` CONNECT tunnels through HAProxy, one after the other, each from its own client address
    /// (127.0.`subnet`.1 ..), each a CONNECT to the echo target and a GET through it. Fails on the
    /// first tunnel that fails; returns each tunnel's time (connect to answer).
    pub fn timed_tunnels(&self, subnet: u8, n: u8) -> anyhow::Result<Latencies> {
        let mut each = Vec::with_capacity(usize::from(n));
        for i in 1..=n {
            let client = Ipv4Addr::new(127, 0, subnet, i);
            let t = std::time::Instant::now();
            self.request(client, false)
                .with_context(|| format!("tunnel {i} of {n} from {client}"))?;
            each.push(t.elapsed());
        }
        Ok(Latencies(each))
    }

    /// Pauses egress-spoa (SIGSTOP): its port still accepts connections, it answers nothing, as a
    /// hung agent (a stalled node, CPU starvation, a deadlock) does.
    pub fn pause_spoa(&mut self) -> anyhow::Result<()> {
        self.spoa.signal(nix::sys::signal::Signal::SIGSTOP)
    }

    /// Resumes a paused egress-spoa (SIGCONT).
    pub fn resume_spoa(&mut self) -> anyhow::Result<()> {
        self.spoa.signal(nix::sys::signal::Signal::SIGCONT)
    }

    /// Kills egress-spoa (SIGKILL): its port refuses connections.
    pub fn kill_spoa(&mut self) {
        self.spoa.kill();
    }

    /// Starts egress-spoa again (after [`LocalStack::kill_spoa`]), on the same ports and ledger.
    pub fn restart_spoa(&mut self) -> anyhow::Result<()> {
        self.spoa.kill();
        self.spoa = spawn_spoa(&self.haproxy, self.spoa_metrics, &self.pg, self.dir.path())?;
        Ok(())
    }

    /// Kills egress-checker (SIGKILL): HAProxy keeps every server's last agent state.
    pub fn kill_checker(&mut self) {
        self.checker.kill();
    }

    /// Stops the ledger's PostgreSQL (fast shutdown).
    pub fn stop_postgres(&mut self) -> anyhow::Result<()> {
        self.pg.stop()
    }

    /// Starts the ledger's PostgreSQL again.
    pub fn start_postgres(&mut self) -> anyhow::Result<()> {
        self.pg.start_again()
    }

    /// The logs of the checker and the agent (for failure messages).
    pub fn agent_logs(&self) -> String {
        format!(
            "--- egress-checker:\n{}\n--- egress-spoa:\n{}",
            crate::process::tail(&self.checker.logs()),
            crate::process::tail(&self.spoa.logs())
        )
    }
}

fn haproxy_version_text() -> String {
    crate::programs::haproxy_version()
        .map(|(major, minor)| format!("{major}.{minor}"))
        .unwrap_or_default()
}

fn spawn_spoa(
    haproxy: &Haproxy,
    metrics: SocketAddr,
    pg: &Postgres,
    dir: &std::path::Path,
) -> anyhow::Result<ManagedChild> {
    let cmd = crate::bins::spoa_command(
        &format!("127.0.0.1:{}", haproxy.port(SPOA_PORT)),
        &metrics.to_string(),
        pg.url(),
        KEY_HEX,
        &dir.join("spoa.spool"),
    )?;
    ChildSpec::new("egress-spoa", cmd)
        .grace(Duration::from_secs(10))
        .spawn()
}

/// Tunnel times from [`LocalStack::timed_tunnels`].
#[derive(Clone, Debug)]
pub struct Latencies(pub Vec<Duration>);

impl Latencies {
    /// The median.
    pub fn p50(&self) -> Duration {
        let mut v = self.0.clone();
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or_default()
    }

    /// The slowest.
    pub fn max(&self) -> Duration {
        self.0.iter().max().copied().unwrap_or_default()
    }

    /// `n/n tunnels ok, p50 X ms, max Y ms`.
    pub fn summary(&self) -> String {
        format!(
            "{n}/{n} tunnels ok, p50 {:.1} ms, max {:.1} ms",
            self.p50().as_secs_f64() * 1e3,
            self.max().as_secs_f64() * 1e3,
            n = self.0.len()
        )
    }
}
