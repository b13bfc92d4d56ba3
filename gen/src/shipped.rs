//! The shipped deployment files, generated from one list: `haproxy/pool.txt` (backend, server,
//! VM address, location) and the template `haproxy/haproxy.cfg.in` give
//!
//! - `haproxy/haproxy.cfg`: the VM-hosted configuration (agent and SPOA on loopback);
//! - `k8s/base/haproxy/haproxy.cfg` (+ a copy of `haproxy/spoe-egress.conf` beside it, as kustomize
//!   reads no file outside its folder): the same pool for Kubernetes (servers are Services);
//! - `k8s/base/backends.yaml`: one egress backend Deployment + Service per server;
//! - `k8s/base/rotator-role.yaml`: the rotator's RBAC, exactly the pool's Deployments;
//! - the `[rotation.locations]` tail of `k8s/base/checker/checker.toml` (below its GENERATED line);
//!
//! and, for the tests and the demo, [`haproxy_for_test`]: the same template rendered for loopback
//! servers and harness ports. `egress-gen --check` (and the `shipped_config` test) fail when a
//! committed file differs from the generator's output; `scripts/gen-config` rewrites them.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::entry::EntryPolicy;

/// In the test rendering: `{{PORT0}}` is the frontend (client) port.
pub const FRONT_PORT: usize = 0;
/// In the test rendering: `{{PORT1}}` is the agent-check port egress-checker must listen on.
pub const AGENT_PORT: usize = 1;
/// In the test rendering: `{{PORT2}}` is the SPOP port egress-spoa must listen on.
pub const SPOA_PORT: usize = 2;
/// In the test rendering: `{{PORT3}}` is the stats page (`/`) and HAProxy's Prometheus exporter.
pub const STATS_PORT: usize = 3;

/// The repository root (the workspace folder).
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

/// One server of the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolServer {
    /// HAProxy backend (`egress` or `egress_kr`).
    pub backend: String,
    /// HAProxy server name, unique in the pool.
    pub name: String,
    /// Address in the VM configuration (`ip:port`).
    pub vm_address: String,
    /// Exit location (gluetun `SERVER_COUNTRIES`).
    pub location: String,
    /// VPN server hostnames in that location to rotate through (gluetun `SERVER_HOSTNAMES`), when
    /// the pool line lists them after `|`; empty: the server rotates within its country.
    pub hostnames: Vec<String>,
}

/// Parses `haproxy/pool.txt`: `backend server address location...`, `#` comments.
pub fn parse_pool(text: &str) -> anyhow::Result<Vec<PoolServer>> {
    let mut servers: Vec<PoolServer> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (line, hostnames) = match line.split_once('|') {
            Some((l, h)) => (
                l.trim(),
                h.split_whitespace().map(str::to_owned).collect::<Vec<_>>(),
            ),
            None => (line, Vec::new()),
        };
        anyhow::ensure!(
            hostnames.iter().all(|h| !h.is_empty()
                && h.len() <= 253
                && h.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')),
            "pool line {}: hostnames after `|` are lowercase letters, digits, `-` and `.`",
            i + 1
        );
        let line_has_hostnames = !hostnames.is_empty();
        let mut words = line.split_whitespace();
        let (Some(backend), Some(name), Some(addr)) = (words.next(), words.next(), words.next()) else {
            anyhow::bail!("pool line {}: expected `backend server address location`", i + 1);
        };
        let location = words.collect::<Vec<_>>().join(" ");
        anyhow::ensure!(!location.is_empty(), "pool line {}: no location", i + 1);
        addr.parse::<SocketAddr>()
            .with_context(|| format!("pool line {}: address {addr:?}", i + 1))?;
        let valid = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        anyhow::ensure!(
            valid(backend) && valid(name) && !name.contains('_'),
            "pool line {}: names are lowercase letters and digits (backend: also `_`)",
            i + 1
        );
        anyhow::ensure!(
            servers.iter().all(|s| s.name != name),
            "pool line {}: server {name} listed twice",
            i + 1
        );
        anyhow::ensure!(
            !line_has_hostnames || hostnames.len() >= 2,
            "pool line {}: list at least two hostnames to rotate between (or none)",
            i + 1
        );
        servers.push(PoolServer {
            backend: backend.to_owned(),
            name: name.to_owned(),
            vm_address: addr.to_owned(),
            location,
            hostnames,
        });
    }
    anyhow::ensure!(!servers.is_empty(), "the pool lists no server");
    Ok(servers)
}

fn read(rel: &str) -> anyhow::Result<String> {
    let path = repo_root().join(rel);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// The shipped pool (`haproxy/pool.txt`).
pub fn shipped_pool() -> anyhow::Result<Vec<PoolServer>> {
    parse_pool(&read("haproxy/pool.txt")?)
}

/// The shipped entry policy (`haproxy/entry.txt`).
pub fn shipped_entry_policy() -> anyhow::Result<EntryPolicy> {
    EntryPolicy::parse(&read("haproxy/entry.txt")?).context("haproxy/entry.txt")
}

/// Where a rendering differs: what the template's placeholders become.
struct Profile<'a> {
    header: &'a str,
    run_as: &'a str,
    stats_sockets: &'a str,
    /// The `resolvers egress-dns` section's nameserver line(s).
    nameservers: &'a str,
    /// Completes the resolvers comment: what else resolves through it.
    resolvers_use: &'a str,
    /// Which `client` lines of the entry policy apply: `vm`, `k8s` or `test`.
    name: &'a str,
    bind: &'a str,
    spoe_conf: &'a str,
    agent_addr: &'a str,
    agent_port: &'a str,
    spoa_addr: &'a str,
    stats_bind: &'a str,
    server_extra: &'a str,
    state_file: &'a str,
}

/// One `server` line per entry: (backend, name, address), with the entry policy rendered into the
/// frontend.
fn render(
    template: &str,
    servers: &[(String, String, String)],
    p: &Profile,
    policy: &EntryPolicy,
) -> anyhow::Result<String> {
    let mut backends: Vec<&str> = servers.iter().map(|(b, _, _)| b.as_str()).collect();
    backends.dedup();
    policy.check_backends(&backends)?;
    let mut out = String::new();
    for line in template.lines() {
        if let Some(backend) = line.strip_prefix("@@SERVERS ").and_then(|l| l.strip_suffix("@@")) {
            let pool: Vec<_> = servers.iter().filter(|(b, _, _)| b == backend).collect();
            for (id, (b, name, addr)) in (1..).zip(&pool) {
                // agent-send names the server to the checker: "<backend>/<server>\n".
                writeln!(
                    out,
                    "    server {name} {addr} id {id} agent-send \"{b}/{name}\\n\""
                )?;
            }
            continue;
        }
        if let Some(backend) = line
            .strip_prefix("@@RETRY_SERVERS ")
            .and_then(|l| l.strip_suffix("@@"))
        {
            let pool: Vec<_> = servers.iter().filter(|(b, _, _)| b == backend).collect();
            // Ring position `id` holds the server that has id+1 in the pool (the last wraps).
            for (id, (b, name, addr)) in (1..).zip(pool.iter().cycle().skip(1).take(pool.len())) {
                writeln!(out, "    server {name} {addr} id {id} track {b}/{name}")?;
            }
            continue;
        }
        let block = match line {
            "@@RUN_AS@@" => Some(if p.run_as.is_empty() {
                String::new()
            } else {
                format!("{}\n", p.run_as)
            }),
            "@@NAMESERVERS@@" => Some(format!("{}\n", p.nameservers)),
            "@@USERLIST@@" => Some(policy.userlist()?),
            "@@ENTRY_AUTH@@" => Some(policy.auth_lines()),
            "@@ENTRY_PROXY_PROTOCOL@@" => Some(policy.proxy_protocol_lines()),
            "@@ENTRY_EXCEPTIONS@@" => Some(policy.exception_lines()),
            "@@ENTRY_POOL_BY_GROUP@@" => Some(policy.pool_group_lines()),
            "@@ENTRY_FALLBACK@@" => Some(policy.fallback_lines()?),
            _ => None,
        };
        if let Some(block) = block {
            out.push_str(&block);
            continue;
        }
        let line = line
            .replace("@@HEADER@@", p.header)
            .replace("@@STATS_SOCKETS@@", p.stats_sockets)
            .replace("@@RESOLVERS_USE@@", p.resolvers_use)
            .replace("@@BIND@@", p.bind)
            .replace("@@SPOE_CONF@@", p.spoe_conf)
            .replace("@@AGENT_ADDR@@", p.agent_addr)
            .replace("@@AGENT_PORT@@", p.agent_port)
            .replace("@@SPOA_ADDR@@", p.spoa_addr)
            .replace("@@STATS_BIND@@", p.stats_bind)
            .replace("@@SERVER_EXTRA@@", p.server_extra)
            .replace("@@STATE_FILE@@", p.state_file)
            .replace("@@CLIENT_NETS@@", &policy.client_nets(p.name))
            .replace("@@CONNECT_PORTS@@", &EntryPolicy::ports(&policy.connect_ports))
            .replace("@@HTTP_PORTS@@", &EntryPolicy::ports(&policy.http_ports));
        anyhow::ensure!(
            !line.contains("@@"),
            "unknown placeholder in template line {line:?}"
        );
        out.push_str(&line);
        out.push('\n');
    }
    for (backend, name, _) in servers {
        anyhow::ensure!(
            template.contains(&format!("@@SERVERS {backend}@@"))
                && template.contains(&format!("@@RETRY_SERVERS {backend}@@")),
            "server {name}: the template has no backend {backend} (and {backend}_retry)"
        );
    }
    Ok(out)
}

/// `haproxy/haproxy.cfg`: HAProxy on a VM, egress-checker and egress-spoa on the same host.
pub fn render_vm(template: &str, pool: &[PoolServer], policy: &EntryPolicy) -> anyhow::Result<String> {
    let servers: Vec<_> = pool
        .iter()
        .map(|s| (s.backend.clone(), s.name.clone(), s.vm_address.clone()))
        .collect();
    render(
        template,
        &servers,
        &Profile {
            header: "GENERATED from haproxy/haproxy.cfg.in and haproxy/pool.txt by scripts/gen-config: edit those.\n\
                     # VM profile: install as /etc/haproxy/haproxy.cfg beside /etc/haproxy/spoe-egress.conf.",
            run_as: "    # Debian's haproxy user; the admin socket below is group haproxy, mode 660 (the egress\n    \
                     # user of the egress-checker package is in that group).\n    \
                     user haproxy\n    group haproxy",
            stats_sockets: "    # Runtime API: egress-checker reads the server list from it; the rotator drains through it.\n    \
                            stats socket /run/haproxy/admin.sock mode 660 group haproxy level admin expose-fd listeners",
            nameservers: "    parse-resolv-conf",
            resolvers_use: "",
            name: "vm",
            bind: ":3128",
            spoe_conf: "spoe-egress.conf",
            agent_addr: "127.0.0.1",
            agent_port: "5555",
            spoa_addr: "127.0.0.1:12345",
            stats_bind: "127.0.0.1:8404",
            server_extra: "",
            state_file: "/var/lib/haproxy/server-state",
        },
        policy,
    )
}

/// The Kubernetes Service name of a pool server.
pub fn k8s_service(server: &PoolServer) -> String {
    format!("egress-{}", server.name)
}

/// `k8s/base/haproxy/haproxy.cfg`: servers are the backends' Services; the agent address comes from
/// the `EGRESS_AGENT_ADDR` environment variable (HAProxy expands `"${VAR}"`; the Deployment sets the
/// `egress-agent` Service name), because HAProxy resolves `agent-addr` once, while parsing, and a CI
/// machine without cluster DNS checks the file with `EGRESS_AGENT_ADDR=127.0.0.1`.
pub fn render_k8s(template: &str, pool: &[PoolServer], policy: &EntryPolicy) -> anyhow::Result<String> {
    let servers: Vec<_> = pool
        .iter()
        .map(|s| {
            (
                s.backend.clone(),
                s.name.clone(),
                format!("{}:8888", k8s_service(s)),
            )
        })
        .collect();
    let profile = container_profile(
        "k8s",
        "GENERATED from haproxy/haproxy.cfg.in and haproxy/pool.txt by scripts/gen-config: edit those.\n\
         # Kubernetes profile (k8s/base): servers are Services, the SPOA is a sidecar.",
        "    # Runtime API: a local socket, and TCP for egress-checker (port 9999, open only to the\n    \
         # checker by the NetworkPolicy in k8s/base).\n    \
         stats socket /var/run/haproxy/admin.sock mode 600 level admin\n    \
         stats socket ipv4@0.0.0.0:9999 level admin",
        ", and the servers' Service names are re-resolved\n# through it at run time (a recreated Service gets a new ClusterIP)",
    );
    render(template, &servers, &profile, policy)
}

/// The profile of a containerised HAProxy (Kubernetes, compose): the SPOA on 127.0.0.1:12345 in
/// HAProxy's network namespace, the agent address from `EGRESS_AGENT_ADDR`, server names resolved
/// at run time.
fn container_profile<'a>(
    name: &'a str,
    header: &'a str,
    stats_sockets: &'a str,
    resolvers_use: &'a str,
) -> Profile<'a> {
    Profile {
        header,
        run_as: "",
        stats_sockets,
        nameservers: "    parse-resolv-conf",
        resolvers_use,
        name,
        bind: ":3128",
        spoe_conf: "spoe-egress.conf",
        agent_addr: "\"${EGRESS_AGENT_ADDR}\"",
        agent_port: "5555",
        spoa_addr: "127.0.0.1:12345",
        stats_bind: ":8404",
        server_extra: " resolvers egress-dns init-addr last,none",
        state_file: "/var/lib/haproxy/server-state",
    }
}

/// The servers of the docker-compose profile: the first [`COMPOSE_GLOBAL`] servers of the global pool
/// and every Korea server (a compose host runs a handful of VPN clients, not the whole pool).
pub const COMPOSE_GLOBAL: usize = 3;

/// The compose profile's subset of the pool.
pub fn compose_pool(pool: &[PoolServer]) -> Vec<PoolServer> {
    let global = pool.iter().filter(|s| s.backend == "egress").take(COMPOSE_GLOBAL);
    let rest = pool.iter().filter(|s| s.backend != "egress");
    global.chain(rest).cloned().collect()
}

/// The compose service of a pool server.
pub fn compose_service(server: &PoolServer) -> String {
    format!("gluetun-{}", server.name)
}

/// `deploy/compose/haproxy/haproxy.cfg`: servers are the gluetun services, egress-spoa shares
/// HAProxy's network namespace (127.0.0.1:12345), the agent is the egress-checker service.
pub fn render_compose(template: &str, pool: &[PoolServer], policy: &EntryPolicy) -> anyhow::Result<String> {
    let servers: Vec<_> = compose_pool(pool)
        .iter()
        .map(|s| {
            (
                s.backend.clone(),
                s.name.clone(),
                format!("{}:8888", compose_service(s)),
            )
        })
        .collect();
    let profile = container_profile(
        "compose",
        "GENERATED from haproxy/haproxy.cfg.in and haproxy/pool.txt by scripts/gen-config: edit those.\n\
         # docker-compose profile (deploy/compose): servers are the gluetun services.",
        "    # Runtime API: a local socket, and TCP for egress-checker on the compose network (port 9999,\n    \
         # not published on the host).\n    \
         stats socket /var/run/haproxy/admin.sock mode 600 level admin\n    \
         stats socket ipv4@0.0.0.0:9999 level admin",
        ", and the gluetun services' names are re-resolved\n# through it at run time (a recreated container gets a new address)",
    );
    render(template, &servers, &profile, policy)
}

/// `deploy/compose/compose.yaml`'s generated tail: one gluetun service per compose server.
pub fn render_compose_backends(current: &str, pool: &[PoolServer]) -> anyhow::Result<String> {
    let (head, _) = current
        .split_once(COMPOSE_MARK)
        .context("deploy/compose/compose.yaml has no GENERATED marker line")?;
    let mut out = format!("{head}{COMPOSE_MARK}");
    for s in compose_pool(pool) {
        write!(
            out,
            "
  {svc}:
    <<: *gluetun
    environment:
      <<: *gluetun-env
      SERVER_COUNTRIES: \"{location}\"{hostnames}
",
            svc = compose_service(&s),
            location = s.location,
            hostnames = match s.hostnames.first() {
                Some(h) => format!("\n      SERVER_HOSTNAMES: \"{h}\""),
                None => String::new(),
            },
        )?;
    }
    Ok(out)
}

/// The line after which `deploy/compose/compose.yaml` is generated.
pub const COMPOSE_MARK: &str = "  # ---- GENERATED from haproxy/pool.txt by scripts/gen-config: the gluetun services, one per server. ----\n";

/// The shipped template rendered for a test or the demo: the frontend on `127.0.0.1:{{PORT0}}`, the
/// agent on `127.0.0.1:{{PORT1}}`, the SPOA on `127.0.0.1:{{PORT2}}`, the stats page on
/// `127.0.0.1:{{PORT3}}`, the runtime API on `{{RUNTIME_SOCKET}}` (for the harness's `Haproxy`),
/// `servers` = (backend, name, address) and the SPOE file at `spoe_conf` (see
/// the harness's `shipped_spoe_conf`). The entry policy is `policy` (usually
/// [`EntryPolicy::for_test`] with the test's targets), and destination names resolve through `dns`
/// (the harness's `Dnsmasq`; `None`: a loopback port where nothing answers, so every name is
/// refused as `unresolvable` and no query leaves the machine). Everything else is the shipped file.
pub fn haproxy_for_test(
    servers: &[(&str, &str, SocketAddr)],
    spoe_conf: &Path,
    policy: &EntryPolicy,
    dns: Option<SocketAddr>,
) -> anyhow::Result<String> {
    let nameservers = match dns {
        Some(addr) => format!("    nameserver dns {addr}"),
        None => "    nameserver dns 127.0.0.1:{{PORT9}}".to_owned(),
    };
    let servers: Vec<_> = servers
        .iter()
        .map(|(b, n, a)| ((*b).to_owned(), (*n).to_owned(), a.to_string()))
        .collect();
    let spoe = spoe_conf.to_string_lossy();
    render(
        &read("haproxy/haproxy.cfg.in")?,
        &servers,
        &Profile {
            header: "Rendered for a local run (egress_harness::shipped::haproxy_for_test).",
            run_as: "",
            stats_sockets: "    stats socket {{RUNTIME_SOCKET}} mode 600 level admin",
            nameservers: &nameservers,
            resolvers_use: "",
            name: "test",
            bind: "127.0.0.1:{{PORT0}}",
            spoe_conf: &spoe,
            agent_addr: "127.0.0.1",
            agent_port: "{{PORT1}}",
            spoa_addr: "127.0.0.1:{{PORT2}}",
            stats_bind: "127.0.0.1:{{PORT3}}",
            server_extra: "",
            state_file: "{{DIR}}/server-state",
        },
        policy,
    )
}

/// `k8s/base/backends.yaml`: one gluetun-style Deployment (strategy Recreate: two pods of one
/// backend must never hold two tunnels) and one Service per server.
pub fn render_k8s_backends(pool: &[PoolServer]) -> anyhow::Result<String> {
    let mut out = String::from(
        "# GENERATED from haproxy/pool.txt by scripts/gen-config: edit that list, not this file.\n\
         # One egress backend per pool server: a gluetun-style VPN client exposing an HTTP CONNECT proxy\n\
         # on :8888. The rotator (egress-checker rotate) patches SERVER_COUNTRIES/SERVER_HOSTNAMES and the\n\
         # restart annotation of these Deployments.\n",
    );
    for s in pool {
        let svc = k8s_service(s);
        write!(
            out,
            "---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {svc}
  labels:
    app.kubernetes.io/name: egress-backend
    app.kubernetes.io/instance: {svc}
    egress.haproxy/backend: {backend}
    egress.haproxy/server: {name}
spec:
  replicas: 1
  strategy:
    type: Recreate
  selector:
    matchLabels:
      app.kubernetes.io/instance: {svc}
  template:
    metadata:
      labels:
        app.kubernetes.io/name: egress-backend
        app.kubernetes.io/instance: {svc}
        egress.haproxy/backend: {backend}
        egress.haproxy/server: {name}
    spec:
      containers:
        - name: gluetun
          image: qmcgaw/gluetun:v3.39.1
          envFrom:
            - configMapRef:
                name: egress-backend-common
          env:
            - name: SERVER_COUNTRIES
              value: \"{location}\"{hostnames}
            - name: WIREGUARD_PRIVATE_KEY
              valueFrom:
                secretKeyRef:
                  name: egress-vpn
                  key: wireguard-private-key
            - name: WIREGUARD_ADDRESSES
              valueFrom:
                secretKeyRef:
                  name: egress-vpn
                  key: wireguard-addresses
          ports:
            - name: proxy
              containerPort: 8888
            - name: health
              containerPort: 9999
          # gluetun's own health server (HEALTH_SERVER_ADDRESS): 200 only while the tunnel works,
          # not merely while the proxy port accepts TCP.
          readinessProbe:
            httpGet:
              path: /
              port: health
            periodSeconds: 5
            failureThreshold: 3
          securityContext:
            capabilities:
              add: [\"NET_ADMIN\"]
          resources:
            requests:
              cpu: 50m
              memory: 64Mi
            limits:
              memory: 256Mi
---
apiVersion: v1
kind: Service
metadata:
  name: {svc}
  labels:
    app.kubernetes.io/name: egress-backend
    egress.haproxy/server: {name}
spec:
  selector:
    app.kubernetes.io/instance: {svc}
  ports:
    - name: proxy
      port: 8888
      targetPort: proxy
",
            backend = s.backend,
            name = s.name,
            location = s.location,
            hostnames = match s.hostnames.first() {
                Some(h) => format!("\n            - name: SERVER_HOSTNAMES\n              value: \"{h}\""),
                None => String::new(),
            },
        )?;
    }
    Ok(out)
}

/// `k8s/base/rotator-role.yaml`: what `egress-checker rotate` needs and nothing more: read and patch
/// exactly the pool's Deployments (env and restart annotation), read pods (to see the new one ready).
pub fn render_k8s_rotator_role(pool: &[PoolServer]) -> anyhow::Result<String> {
    let mut names = String::new();
    for s in pool {
        writeln!(names, "      - {}", k8s_service(s))?;
    }
    Ok(format!(
        "# GENERATED from haproxy/pool.txt by scripts/gen-config: edit that list, not this file.
# The rotator (egress-checker rotate, and the checker's own rotation of long-quarantined servers)
# patches the egress backend Deployments' env and restart annotation and reads their pods (the
# kubernetes executor: get + patch deployments, list pods by the Deployment's selector; it polls, no watch).
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: egress-rotator
rules:
  - apiGroups: [\"apps\"]
    resources: [\"deployments\"]
    verbs: [\"get\", \"patch\"]
    resourceNames:
{names}  - apiGroups: [\"\"]
    resources: [\"pods\"]
    verbs: [\"list\"]
"
    ))
}

/// The line after which `k8s/base/checker/checker.toml` is generated; above it the file is edited
/// by hand.
pub const K8S_CHECKER_MARK: &str = "# ---- GENERATED from haproxy/pool.txt by scripts/gen-config: edit that list, not the lines below. ----\n";

/// `k8s/base/checker/checker.toml`: the hand-written part above [`K8S_CHECKER_MARK`] (from `current`,
/// the committed file), then `[rotation.locations]`: each server rotates within its pool location
/// (a restart in the same country gets another VPN server, hence another exit IP).
pub fn render_k8s_checker(current: &str, pool: &[PoolServer]) -> anyhow::Result<String> {
    let (head, _) = current
        .split_once(K8S_CHECKER_MARK)
        .context("k8s/base/checker/checker.toml has no GENERATED marker line")?;
    let mut out = format!("{head}{K8S_CHECKER_MARK}[rotation.locations]\n");
    for s in pool {
        let list: Vec<String> = if s.hostnames.is_empty() {
            vec![format!("{:?}", s.location)]
        } else {
            s.hostnames.iter().map(|h| format!("{h:?}")).collect()
        };
        writeln!(out, "\"{}/{}\" = [{}]", s.backend, s.name, list.join(", "))?;
    }
    // The servers whose locations are hostnames rotate through SERVER_HOSTNAMES.
    let by_hostname: Vec<&PoolServer> = pool.iter().filter(|s| !s.hostnames.is_empty()).collect();
    if !by_hostname.is_empty() {
        out.push_str("\n[rotation.executor.envs]\n");
        for s in by_hostname {
            writeln!(out, "\"{}/{}\" = \"SERVER_HOSTNAMES\"", s.backend, s.name)?;
        }
    }
    Ok(out)
}

/// Every generated file: (path relative to the repository root, expected content).
pub fn generated_files() -> anyhow::Result<Vec<(String, String)>> {
    let pool = shipped_pool()?;
    let policy = shipped_entry_policy()?;
    let template = read("haproxy/haproxy.cfg.in")?;
    Ok(vec![
        (
            "haproxy/haproxy.cfg".to_owned(),
            render_vm(&template, &pool, &policy)?,
        ),
        (
            "k8s/base/haproxy/haproxy.cfg".to_owned(),
            render_k8s(&template, &pool, &policy)?,
        ),
        (
            "k8s/base/haproxy/spoe-egress.conf".to_owned(),
            read("haproxy/spoe-egress.conf")?,
        ),
        ("k8s/base/backends.yaml".to_owned(), render_k8s_backends(&pool)?),
        (
            "k8s/base/rotator-role.yaml".to_owned(),
            render_k8s_rotator_role(&pool)?,
        ),
        (
            "k8s/base/checker/checker.toml".to_owned(),
            render_k8s_checker(&read("k8s/base/checker/checker.toml")?, &pool)?,
        ),
        (
            "deploy/compose/haproxy/haproxy.cfg".to_owned(),
            render_compose(&template, &pool, &policy)?,
        ),
        (
            "deploy/compose/haproxy/spoe-egress.conf".to_owned(),
            read("haproxy/spoe-egress.conf")?,
        ),
        (
            "deploy/compose/compose.yaml".to_owned(),
            render_compose_backends(&read("deploy/compose/compose.yaml")?, &pool)?,
        ),
    ])
}

/// The generated files whose committed content differs from the generator's output.
pub fn stale_files() -> anyhow::Result<Vec<String>> {
    let mut stale = Vec::new();
    for (rel, want) in generated_files()? {
        let have = std::fs::read_to_string(repo_root().join(&rel)).unwrap_or_default();
        if have != want {
            stale.push(rel);
        }
    }
    Ok(stale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_pool_and_rejects_bad_lines() {
        let pool = parse_pool("# c\negress g01 10.0.0.1:8888 United States # x\n").unwrap();
        assert_eq!(pool[0].location, "United States");
        assert!(pool[0].hostnames.is_empty());
        let pool =
            parse_pool("egress g01 10.0.0.1:8888 Netherlands | nl-ams-wg-001 nl-ams-wg-002\n").unwrap();
        assert_eq!(
            (pool[0].location.as_str(), pool[0].hostnames.len()),
            ("Netherlands", 2)
        );
        let checker = render_k8s_checker(&format!("head\n{K8S_CHECKER_MARK}"), &pool).unwrap();
        assert!(
            checker.contains("\"egress/g01\" = [\"nl-ams-wg-001\", \"nl-ams-wg-002\"]"),
            "{checker}"
        );
        assert!(
            checker.contains("[rotation.executor.envs]\n\"egress/g01\" = \"SERVER_HOSTNAMES\""),
            "{checker}"
        );
        assert!(
            render_k8s_backends(&pool)
                .unwrap()
                .contains("name: SERVER_HOSTNAMES\n              value: \"nl-ams-wg-001\"")
        );
        assert!(parse_pool("egress g01 10.0.0.1:8888 NL | only-one\n").is_err());
        assert!(parse_pool("egress g01 10.0.0.1:8888 NL | Bad_Host x\n").is_err());
        assert!(parse_pool("egress g01 nowhere Spain\n").is_err());
        assert!(parse_pool("egress g01 10.0.0.1:8888\n").is_err());
        assert!(parse_pool("egress g01 10.0.0.1:1 A\negress g01 10.0.0.2:1 B\n").is_err());
        assert!(parse_pool("egress G01 10.0.0.1:1 A\n").is_err());
        assert!(parse_pool("").is_err());
    }

    #[test]
    fn renders_one_line_per_server_with_its_agent_send() {
        let template = "x @@BIND@@\n@@SERVERS b@@\n@@RETRY_SERVERS b@@\nend\n";
        let servers = vec![
            ("b".to_owned(), "s1".to_owned(), "1.2.3.4:5".to_owned()),
            ("b".to_owned(), "s2".to_owned(), "1.2.3.4:6".to_owned()),
            ("b".to_owned(), "s3".to_owned(), "1.2.3.4:7".to_owned()),
        ];
        let policy = EntryPolicy::for_test(&[]);
        let p = Profile {
            header: "",
            run_as: "",
            stats_sockets: "",
            nameservers: "",
            resolvers_use: "",
            name: "test",
            bind: ":1",
            spoe_conf: "",
            agent_addr: "",
            agent_port: "",
            spoa_addr: "",
            stats_bind: "",
            server_extra: "",
            state_file: "",
        };
        assert_eq!(
            render(template, &servers, &p, &policy).unwrap(),
            "x :1\n\
             \x20   server s1 1.2.3.4:5 id 1 agent-send \"b/s1\\n\"\n\
             \x20   server s2 1.2.3.4:6 id 2 agent-send \"b/s2\\n\"\n\
             \x20   server s3 1.2.3.4:7 id 3 agent-send \"b/s3\\n\"\n\
             \x20   server s2 1.2.3.4:6 id 1 track b/s2\n\
             \x20   server s3 1.2.3.4:7 id 2 track b/s3\n\
             \x20   server s1 1.2.3.4:5 id 3 track b/s1\n\
             end\n"
        );
        let unknown = vec![("c".to_owned(), "s1".to_owned(), "1.2.3.4:5".to_owned())];
        assert!(render(template, &unknown, &p, &policy).is_err());
        assert!(render("@@NOPE@@\n", &servers, &p, &policy).is_err());
    }
}
