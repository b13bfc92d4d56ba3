//! tinyproxy instances as real egress backends: a CONNECT proxy on 127.0.0.1:<port> whose outgoing
//! connections leave from its own `Bind` address, so the echo server sees a distinct "exit IP" per
//! backend. A rotation is a [`Tinyproxy::restart`] with another address.
//!
//! Verified with tinyproxy 1.11.1: it runs as root without User/Group (a warning only), `-d` keeps it
//! in the foreground logging to stderr, and without ConnectPort lines CONNECT is allowed to any port.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::dirs::HarnessDir;
use crate::ports::{free_port, is_addr_in_use};
use crate::process::{ChildSpec, ManagedChild, tail};
use crate::programs::find_program;

const START_TIMEOUT: Duration = Duration::from_secs(10);
const READY_LINE: &str = "Starting main loop";

/// A running tinyproxy. Stopped on drop.
#[derive(Debug)]
pub struct Tinyproxy {
    child: Option<ManagedChild>,
    bin: PathBuf,
    port: u16,
    bind: Ipv4Addr,
    /// The listening address (127.0.0.1 unless started in a namespace).
    listen: Ipv4Addr,
    /// The network namespace it runs in (`ip netns exec`), if any.
    netns: Option<String>,
    dir: Arc<HarnessDir>,
}

impl Tinyproxy {
    /// Starts a tinyproxy listening on 127.0.0.1:<ephemeral> whose outgoing connections leave from
    /// `bind` (any 127.0.0.0/8 address).
    pub fn start(bind: Ipv4Addr) -> anyhow::Result<Tinyproxy> {
        Self::start_with(None, Ipv4Addr::LOCALHOST, bind)
    }

    /// Starts a tinyproxy inside the network namespace `netns` (see [`crate::netns`]), listening on
    /// `listen` and leaving from `bind`, both addresses of that namespace. It accepts any client
    /// there: the namespace's segment has no route out.
    pub fn start_in(netns: &str, listen: Ipv4Addr, bind: Ipv4Addr) -> anyhow::Result<Tinyproxy> {
        Self::start_with(Some(netns.to_owned()), listen, bind)
    }

    fn start_with(netns: Option<String>, listen: Ipv4Addr, bind: Ipv4Addr) -> anyhow::Result<Tinyproxy> {
        let bin = find_program("tinyproxy", "tinyproxy")?;
        let dir = Arc::new(HarnessDir::new("tinyproxy")?);
        let mut proxy = Tinyproxy {
            child: None,
            bin,
            port: 0,
            bind,
            listen,
            netns,
            dir,
        };
        for attempt in 1..=5 {
            proxy.port = free_port()?;
            match proxy.launch() {
                Ok(()) => return Ok(proxy),
                Err(e) if attempt < 5 && is_addr_in_use(&format!("{e:#}")) => continue,
                Err(e) => return Err(e),
            }
        }
        anyhow::bail!("tinyproxy: no free port after 5 attempts")
    }

    /// The proxy's listening address (127.0.0.1:<port>, or its namespace address).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((self.listen, self.port))
    }

    /// The outgoing source address (`Bind`).
    pub fn bind_addr(&self) -> Ipv4Addr {
        self.bind
    }

    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ManagedChild::pid)
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(ManagedChild::is_running)
    }

    /// SIGKILLs the proxy, as a crashed backend: its port refuses connections afterwards.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }

    /// Stops the proxy (if running) and starts it again on the same port with outgoing address `bind`.
    pub fn restart(&mut self, bind: Ipv4Addr) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.stop();
        }
        self.bind = bind;
        // The old socket may linger for a moment; tinyproxy reports the bind failure and exits.
        let mut last = None;
        for _ in 0..10 {
            match self.launch() {
                Ok(()) => return Ok(()),
                Err(e) if is_addr_in_use(&format!("{e:#}")) => last = Some(e),
                Err(e) => return Err(e),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("tinyproxy restart failed")))
    }

    /// The proxy's log so far (all starts).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tinyproxy.log")).unwrap_or_default()
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let config = self.dir.path().join("tinyproxy.conf");
        // No ConnectPort lines: CONNECT to any port is allowed. No PidFile: the harness owns the pid.
        // In a namespace, no Allow line: any client of the isolated segment may use it.
        let allow = if self.netns.is_some() {
            ""
        } else {
            "Allow 127.0.0.0/8\n"
        };
        let text = format!(
            "Port {port}\nListen {listen}\nBind {bind}\n{allow}Timeout 60\nMaxClients 512\n\
             LogLevel Info\nDisableViaHeader Yes\n",
            port = self.port,
            listen = self.listen,
            bind = self.bind
        );
        std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        let log_before = self.logs().len();
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        cmd.arg("-d").arg("-c").arg(&config);
        let mut child = ChildSpec::new("tinyproxy", cmd)
            .grace(Duration::from_secs(2))
            .in_dir(self.dir.clone())
            .spawn()?;
        let ready = crate::wait_until(START_TIMEOUT, || {
            let log = self.logs();
            log.get(log_before..).is_some_and(|l| l.contains(READY_LINE)) || !child.is_running()
        });
        let log = self.logs();
        let new = log.get(log_before..).unwrap_or("").to_owned();
        if ready && child.is_running() && new.contains(READY_LINE) {
            self.child = Some(child);
            return Ok(());
        }
        child.kill();
        anyhow::bail!(
            "tinyproxy (port {}, bind {}) did not start:\n{}",
            self.port,
            self.bind,
            tail(&new)
        )
    }
}
