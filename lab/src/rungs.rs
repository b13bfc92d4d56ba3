//! The configuration ladder. Each rung is the previous one plus its controls; every HAProxy keyword
//! here was checked against HAProxy 2.6's doc/configuration.txt (quoted in the comments).

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// The backend (listen section) name the lab's own rungs use.
pub const BACKEND: &str = "lab";
/// The shipped configuration's global pool.
pub const SHIPPED_BACKEND: &str = "egress";

/// One rung of the ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Rung {
    /// (a) HAProxy alone, default checks.
    A,
    /// (b) + tuned HAProxy: passive observe, error-limit/on-error, retry-on, redispatch.
    B,
    /// (c) + egress-checker (synthetic CONNECT probe through each backend, agent-check quarantine);
    /// a restored backend rejoins at full weight at once.
    C,
    /// (d) + the checker's slow-start ramp on restore.
    D,
    /// (e) (d) with the pool hashed by source as shipped, and the deterministic client fallback: a
    /// failed tunnel set-up is retried once with `X-Egress-Attempt: 2`, which HAProxy routes to the
    /// next server of the ring (`lab_retry`), as `haproxy/haproxy.cfg.in` does for `egress_retry`.
    E,
    /// (s) `haproxy/haproxy.cfg.in` as shipped (rendered for the lab's ports by egress-gen) with the
    /// egress-checker's shipped defaults and egress-spoa: what a user who changes nothing gets.
    Shipped,
}

impl Rung {
    /// Short label for tables and plots.
    pub fn label(self) -> &'static str {
        match self {
            Rung::A => "(a) haproxy defaults",
            Rung::B => "(b) + tuned haproxy",
            Rung::C => "(c) + egress-checker",
            Rung::D => "(d) + slow-start",
            Rung::E => "(e) + client fallback",
            Rung::Shipped => "(s) shipped as is",
        }
    }

    /// Whether the rung runs the egress-checker (agent-check).
    pub fn has_checker(self) -> bool {
        !matches!(self, Rung::A | Rung::B)
    }

    /// Whether the load generator falls back once (the egress-client rule).
    pub fn client_fallback(self) -> bool {
        self == Rung::E
    }

    /// The HAProxy backend that holds the pool's servers.
    pub fn backend(self) -> &'static str {
        match self {
            Rung::Shipped => SHIPPED_BACKEND,
            _ => BACKEND,
        }
    }

    /// Parses "a".."e" and "s".
    pub fn parse(s: &str) -> Option<Rung> {
        match s.trim().to_ascii_lowercase().as_str() {
            "a" => Some(Rung::A),
            "b" => Some(Rung::B),
            "c" => Some(Rung::C),
            "d" => Some(Rung::D),
            "e" => Some(Rung::E),
            "s" | "shipped" => Some(Rung::Shipped),
            _ => None,
        }
    }
}

impl fmt::Display for Rung {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The HAProxy config of `rung` (not [`Rung::Shipped`], which is rendered from the shipped template)
/// for `servers` (name, address); `agent_port` is the checker's agent-check listener (used from rung
/// (c) on).
pub fn haproxy_config(rung: Rung, servers: &[(String, SocketAddr)], agent_port: u16) -> String {
    let mut cfg = String::from(
        "global
    log stdout format raw local0
    stats socket {{RUNTIME_SOCKET}} mode 600 level admin
    stats timeout 30s
    maxconn 4096

defaults
    log global
    mode http
    option httplog
    timeout connect 1s
    timeout client 30s
    # Once CONNECT is answered 2xx the stream is a tunnel and `timeout tunnel` applies instead.
    timeout tunnel 30s
",
    );
    match rung {
        // (a) HAProxy's own default: the server timeout also bounds the wait for the CONNECT answer.
        Rung::A => cfg.push_str("    timeout server 10s\n"),
        // (b)+ the CONNECT answer is due within 2.5 s (tunnels are governed by `timeout tunnel`), so a
        // black hole becomes a `response-timeout` that retry-on and observe see. Generous because the
        // lab runs on a small shared machine; production can go lower.
        _ => cfg.push_str("    timeout server 2500ms\n"),
    }
    if rung == Rung::E {
        // The shipped entry's rule (haproxy/haproxy.cfg.in): a client's second attempt says
        // `X-Egress-Attempt: 2` and goes to the same ring with every server one place on; the
        // header is removed before the backend sees it.
        cfg.push_str(&format!(
            "
frontend entry
    bind 127.0.0.1:{{{{PORT0}}}}
    http-request set-var(txn.egress_retry) bool(true) if {{ req.hdr(x-egress-attempt) -m int ge 2 }}
    http-request del-header x-egress-attempt
    use_backend {BACKEND}_retry if {{ var(txn.egress_retry) -m bool }}
    default_backend {BACKEND}

backend {BACKEND}
    # As shipped: a server going down moves only its own clients, and the fixed ids below build
    # the ring that `{BACKEND}_retry` shifts by one.
    balance source
    hash-type consistent
"
        ));
    } else {
        cfg.push_str(&format!(
            "
listen {BACKEND}
    bind 127.0.0.1:{{{{PORT0}}}}
    balance roundrobin
"
        ));
    }
    match rung {
        Rung::A => cfg.push_str(
            "    # (a) Defaults: `retries 3` (\"retries\": by default retries apply only to new connection
    # attempts, on the same server), a plain TCP connect check (inter 2s, fall 3, rise 2).
    default-server check
",
        ),
        _ => {
            cfg.push_str(
                "    # (b) \"retries\": each retry-on condition counts one attempt.
    retries 2
    # \"option redispatch <interval>\": 1 = every retry goes to another server, not the failed one.
    option redispatch 1
    # \"retry-on\": conn-failure empty-response response-timeout 502 503 504 (\"only valid when mode is
    # http\"). For a CONNECT only conn-failure can apply: HAProxy clears the L7-retry flag before the
    # first send unless the request is complete (HTTP_MSG_DONE), and a CONNECT is a tunnel (src/stconn.c
    # sc_conn_send); after a 503, 504 or response-timeout the client gets the error (docs/lab.md). A
    # plain-HTTP request (a GET) is complete and is retried on all of them.
    retry-on conn-failure empty-response response-timeout 502 503 504
    # \"observe layer7\": responses from the server are verified (valid codes 100-499, 501, 505), as are
    # connection errors and timeouts; \"error-limit 1\" + \"on-error mark-down\": the first error marks
    # the server down at once and forces fastinter (a spurious one costs `rise 2` x fastinter). HAProxy 2.6 has no retry budget: `retries` per
    # request is the only bound, hence 2.
    # `slowstart` is not used: rung (d) ramps through the agent weight instead.
",
            );
            let agent = if rung.has_checker() {
                format!(
                    " weight 100 agent-check agent-addr 127.0.0.1 agent-port {agent_port} agent-inter {AGENT_INTER_MS}ms"
                )
            } else {
                String::new()
            };
            cfg.push_str(&format!(
                "    default-server check inter 1s fastinter 250ms fall 2 rise 2 observe layer7 error-limit 1 on-error mark-down{agent}\n"
            ));
        }
    }
    for (id, (name, addr)) in (1..).zip(servers) {
        let send = if rung.has_checker() {
            format!(" agent-send \"{BACKEND}/{name}\\n\"")
        } else {
            String::new()
        };
        cfg.push_str(&format!("    server {name} {addr} id {id}{send}\n"));
    }
    if rung == Rung::E {
        cfg.push_str(&format!(
            "
# A client's second attempt: ring position `id` holds the server with id+1 in `{BACKEND}` (the last
# wraps), so a client lands on the successor of its primary server; each tracks its twin's state.
backend {BACKEND}_retry
    balance source
    hash-type consistent
    retries 2
    option redispatch 1
    retry-on conn-failure empty-response response-timeout 502 503 504
    default-server weight 100
"
        ));
        for (id, (name, addr)) in (1..).zip(servers.iter().cycle().skip(1).take(servers.len())) {
            cfg.push_str(&format!(
                "    server {name} {addr} id {id} track {BACKEND}/{name}\n"
            ));
        }
    }
    cfg
}

/// How often HAProxy asks the checker's agent (`agent-inter`, any value >= 1 ms is accepted). One
/// agent reply `down` sets the server's agent health to 0 at once, so this bounds the delay between
/// the checker's quarantine and HAProxy acting on it. 100 ms keeps that delay below the `rise 2` x
/// `fastinter 250ms` after which HAProxy's own TCP check would bring an observe-marked server back.
pub const AGENT_INTER_MS: u64 = 100;

/// The checker's probe interval per server (the lab's `[probe] interval`).
pub const PROBE_INTERVAL_MS: u64 = 100;

/// The probe's CONNECT answer deadline (`[probe] response_timeout`): a black hole is detected after
/// `QUARANTINE_AFTER` of these. Healthy probe durations under the lab's load are measured on every
/// checker run (`probe_warm` in results.json, docs/lab.md): this is well above them.
pub const PROBE_RESPONSE_TIMEOUT_MS: u64 = 200;

/// Consecutive probe failures before the checker quarantines (`[decision] quarantine_after`).
pub const QUARANTINE_AFTER: u32 = 2;

/// The egress-checker config for rungs (c)/(d): probes through every server of [`BACKEND`] (read from
/// the runtime API) to `probe_target`; `ramp` is zero for (c) (full weight at once).
pub fn checker_config(runtime_socket: &std::path::Path, probe_target: SocketAddr, ramp: Duration) -> String {
    format!(
        "[backends]
runtime_api = \"unix:{socket}\"
names = [\"{BACKEND}\"]
refresh = \"1s\"

[probe]
interval = \"{PROBE_INTERVAL_MS}ms\"
jitter = 0.1
connect_timeout = \"500ms\"
response_timeout = \"{PROBE_RESPONSE_TIMEOUT_MS}ms\"

[[targets]]
address = \"{probe_target}\"

[decision]
quarantine_after = {QUARANTINE_AFTER}
restore_after = 2
ramp = \"{ramp}ms\"
ramp_start_percent = 10
max_quarantined_share = 0.5
",
        socket = runtime_socket.display(),
        ramp = ramp.as_millis()
    )
}

/// The egress-checker config for [`Rung::Shipped`]: what `checker/checker.example.toml` requires
/// (the runtime API, the pool, a probe target), every other key at its shipped default
/// (`health/src/config.rs`: probe every 500 ms, 400 ms answer deadline, quarantine after 5
/// failures, restore after 1 success, 10 s ramp from 10 %).
pub fn shipped_checker_config(runtime_socket: &std::path::Path, probe_target: SocketAddr) -> String {
    format!(
        "[backends]
runtime_api = \"unix:{socket}\"
names = [\"{SHIPPED_BACKEND}\"]

[[targets]]
address = \"{probe_target}\"
",
        socket = runtime_socket.display(),
    )
}
