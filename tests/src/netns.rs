//! A private L2 segment of network namespaces: one namespace per node, each with an `eth0` on a
//! bridge that lives in a namespace of its own, addresses the test assigns, and no route anywhere
//! else (no default route, no link to the host's namespaces). Everything is deleted on drop, and a
//! later run deletes what a killed run left (names carry the owner's pid).
//!
//! Processes run inside a node through [`Segment::command`] (`ip netns exec`); in-process servers
//! and clients through [`Segment::run_in`], a thread that enters the namespace first (`setns`
//! applies to the calling thread; a socket keeps the namespace it was made in).
//!
//! Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN) and the kernel's netns, veth and bridge support.

use std::fs::File;
use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::Context as _;
use nix::sched::{CloneFlags, setns};

/// Prefix of every namespace this harness creates: `egt<owner pid>-<node>`.
const PREFIX: &str = "egt";

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (Debian's iproute2)")?;
    anyhow::ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Deletes the namespaces of owners that no longer run.
fn sweep() {
    let Ok(entries) = std::fs::read_dir("/var/run/netns") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        if !alive {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

/// The segment. See the module docs.
#[derive(Debug)]
pub struct Segment {
    tag: String,
    nodes: Vec<String>,
}

impl Segment {
    /// Creates the bridge namespace and one namespace per `(node, address)`, the address on its
    /// `eth0` as a /24. Node names: up to 8 lowercase letters and digits.
    pub fn new(nodes: &[(&str, Ipv4Addr)]) -> anyhow::Result<Segment> {
        sweep();
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let tag = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut seg = Segment {
            tag,
            nodes: Vec::new(),
        };
        let sw = seg.ns("sw");
        ip(&["netns", "add", &sw])
            .context("creating a network namespace (needs root and a kernel with network namespaces)")?;
        seg.nodes.push("sw".to_owned());
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for (node, addr) in nodes {
            anyhow::ensure!(
                node.len() <= 8 && node.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
                "node name {node:?}: up to 8 lowercase letters and digits"
            );
            let ns = seg.ns(node);
            ip(&["netns", "add", &ns])?;
            seg.nodes.push((*node).to_owned());
            let port = format!("p-{node}");
            ip(&[
                "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port, "netns", &sw,
            ])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        }
        Ok(seg)
    }

    /// The namespace name of `node`.
    pub fn ns(&self, node: &str) -> String {
        format!("{}-{node}", self.tag)
    }

    /// Adds `addr/24` to `node`'s eth0 (e.g. the exit addresses of backends).
    pub fn add_addr(&self, node: &str, addr: Ipv4Addr) -> anyhow::Result<()> {
        ip(&[
            "-n",
            &self.ns(node),
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])
    }

    /// Takes `node`'s link down (`up = false`) or up again.
    pub fn set_link(&self, node: &str, up: bool) -> anyhow::Result<()> {
        ip(&[
            "-n",
            &self.ns(node),
            "link",
            "set",
            "eth0",
            if up { "up" } else { "down" },
        ])
    }

    /// Whether `node`'s eth0 holds `addr` (e.g. the VIP).
    pub fn has_addr(&self, node: &str, addr: Ipv4Addr) -> bool {
        Command::new("ip")
            .args(["-n", &self.ns(node), "-4", "-o", "addr", "show", "dev", "eth0"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!(" {addr}/")))
            .unwrap_or(false)
    }

    /// `/var/run/netns/<namespace of node>`, for [`enter`].
    pub fn path(&self, node: &str) -> String {
        format!("/var/run/netns/{}", self.ns(node))
    }

    /// `program args...` inside `node` (through `ip netns exec`).
    pub fn command(&self, node: &str, program: &std::path::Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(node)]).arg(program);
        cmd
    }

    /// Runs `f` on a thread that first enters `node`'s namespace, and returns its result: sockets
    /// `f` creates belong to `node`.
    pub fn run_in<T: Send + 'static>(
        &self,
        node: &str,
        f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let path = self.path(node);
        std::thread::spawn(move || {
            enter(&path)?;
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in {node} panicked"))?
    }
}

/// Moves the calling thread into the network namespace at `path` (`/var/run/netns/<name>`).
pub fn enter(path: &str) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("opening {path}"))?;
    setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| format!("entering {path}"))?;
    Ok(())
}

impl Drop for Segment {
    fn drop(&mut self) {
        for node in self.nodes.iter().rev() {
            let _ = ip(&["netns", "del", &self.ns(node)]);
        }
    }
}
