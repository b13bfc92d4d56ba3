//! dnsmasq (Debian's `dnsmasq-base`) as the DNS server HAProxy's entry policy resolves destination
//! names through: on 127.0.0.1:<ephemeral>, answering only the names a test gives it, with no
//! upstream (`--no-resolv`, no `--server`) and no `/etc/hosts`, so no query ever leaves the machine.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::dirs::HarnessDir;
use crate::ports::{free_port, is_addr_in_use};
use crate::process::{ChildSpec, ManagedChild, tail};
use crate::programs::find_program;

const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running dnsmasq. Stopped on drop.
#[derive(Debug)]
pub struct Dnsmasq {
    child: ManagedChild,
    addr: SocketAddr,
    _dir: Arc<HarnessDir>,
}

impl Dnsmasq {
    /// Starts dnsmasq answering `records`: (name, address), a name may appear once per family
    /// (an A and an AAAA). Every other name is unanswered (dnsmasq has no upstream).
    pub fn start(records: &[(&str, IpAddr)]) -> anyhow::Result<Dnsmasq> {
        let bin = find_program("dnsmasq", "dnsmasq-base")?;
        let dir = Arc::new(HarnessDir::new("dnsmasq")?);
        let mut last = None;
        for _ in 0..5 {
            let port = free_port()?;
            let mut cmd = Command::new(&bin);
            cmd.arg("--keep-in-foreground")
                .arg("--conf-file=/dev/null")
                .arg("--no-resolv")
                .arg("--no-hosts")
                .arg("--no-poll")
                .arg("--bind-interfaces")
                .arg("--listen-address=127.0.0.1")
                .arg(format!("--port={port}"))
                .arg("--pid-file=")
                .arg("--user=root")
                .arg("--log-facility=-")
                .arg("--log-queries");
            for (name, ip) in records {
                cmd.arg(format!("--host-record={name},{ip}"));
            }
            let mut child = ChildSpec::new("dnsmasq", cmd)
                .grace(Duration::from_secs(2))
                .in_dir(dir.clone())
                .spawn()?;
            let ready = crate::wait_until(START_TIMEOUT, || {
                child.logs().contains("started, version") || !child.is_running()
            });
            if ready && child.is_running() {
                return Ok(Dnsmasq {
                    child,
                    addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                    _dir: dir,
                });
            }
            let log = child.logs();
            child.kill();
            let error = anyhow::anyhow!("dnsmasq did not start:\n{}", tail(&log));
            if !is_addr_in_use(&log) {
                return Err(error);
            }
            last = Some(error);
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("dnsmasq did not start")))
    }

    /// The DNS server's address (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What dnsmasq logged (every query, with `--log-queries`).
    pub fn logs(&self) -> String {
        self.child.logs()
    }
}
