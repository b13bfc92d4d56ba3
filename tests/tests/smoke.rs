//! The whole chain, for real: client -> HAProxy -> tinyproxy K (Bind 127.0.0.K) -> IP echo, which must
//! see 127.0.0.K. Three backends, three distinct source addresses, over HTTP and over verified TLS.

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};

use egress_harness::client::{echo_ip_direct, echo_ip_via_proxy, echo_ip_via_proxy_tls};
use egress_harness::echo::EchoServer;
use egress_harness::haproxy::{GLOBAL, Haproxy};
use egress_harness::tinyproxy::Tinyproxy;

/// Exit addresses of the three backends. Not 127.0.0.1: that is every loopback client's default source,
/// so a proxy ignoring `Bind` would still pass.
const EXITS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(127, 0, 0, 2),
    Ipv4Addr::new(127, 0, 0, 3),
    Ipv4Addr::new(127, 0, 0, 4),
];

fn config(backends: &[Tinyproxy]) -> String {
    let mut cfg = format!("{GLOBAL}\n    mode tcp\n");
    // One listen section per backend: a deterministic path to each.
    for (i, b) in backends.iter().enumerate() {
        cfg += &format!(
            "\nlisten direct{i}\n    bind 127.0.0.1:{{{{PORT{i}}}}}\n    server b{i} {} check\n",
            b.addr()
        );
    }
    // The pool as production balances it: source hash on a consistent ring.
    cfg += "\nlisten pool\n    bind 127.0.0.1:{{PORT9}}\n    balance source\n    hash-type consistent\n";
    for (i, b) in backends.iter().enumerate() {
        cfg += &format!("    server b{i} {} check\n", b.addr());
    }
    cfg
}

#[test]
fn three_backends_three_exit_addresses() -> anyhow::Result<()> {
    let echo = EchoServer::start()?;
    assert_eq!(
        echo_ip_direct(&echo, None)?,
        "127.0.0.1",
        "control: a direct request comes from 127.0.0.1"
    );
    let backends = EXITS
        .iter()
        .map(|ip| Tinyproxy::start(*ip))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let haproxy = Haproxy::start(&config(&backends))?;
    let front = |i: usize| SocketAddr::from((Ipv4Addr::LOCALHOST, haproxy.port(i)));

    // Through each listen section, backend K's exit address, over HTTP and TLS.
    let mut seen = BTreeSet::new();
    for (i, exit) in EXITS.iter().enumerate() {
        let ip = echo_ip_via_proxy(front(i), &echo, None)?;
        assert_eq!(ip, exit.to_string(), "HTTP through backend b{i}");
        let ip_tls = echo_ip_via_proxy_tls(front(i), &echo, None)?;
        assert_eq!(ip_tls, exit.to_string(), "HTTPS through backend b{i}");
        seen.insert(ip);
    }
    assert_eq!(
        seen.len(),
        3,
        "three backends must show three distinct source addresses: {seen:?}"
    );

    // Through the pool with distinct client sources: balance source is sticky per client and spreads
    // 30 clients over all three exits.
    let mut by_client = HashMap::new();
    for last in 1..=30u8 {
        let client = Ipv4Addr::new(127, 0, 1, last);
        let first = echo_ip_via_proxy(front(9), &echo, Some(client))?;
        let again = echo_ip_via_proxy(front(9), &echo, Some(client))?;
        assert_eq!(
            first, again,
            "balance source must keep client {client} on one backend"
        );
        by_client.insert(client, first);
    }
    let exits: BTreeSet<_> = by_client.values().cloned().collect();
    let expected: BTreeSet<_> = EXITS.iter().map(ToString::to_string).collect();
    assert_eq!(
        exits, expected,
        "30 clients over the pool should reach every exit: {by_client:?}"
    );

    // HAProxy's view: the pool's three servers exist and were used.
    let stats = haproxy.show_stat()?;
    let pool_servers: Vec<_> = stats
        .iter()
        .filter(|r| r.get("pxname").map(String::as_str) == Some("pool"))
        .filter(|r| r.get("svname").is_some_and(|s| s.starts_with('b')))
        .collect();
    assert_eq!(pool_servers.len(), 3, "{stats:?}");
    for row in pool_servers {
        let total: u64 = row.get("stot").and_then(|s| s.parse().ok()).unwrap_or(0);
        assert!(total > 0, "server {:?} took no session", row.get("svname"));
    }
    let state = haproxy.show_servers_state()?;
    assert_eq!(
        state
            .iter()
            .filter(|r| r.get("be_name").map(String::as_str) == Some("pool"))
            .count(),
        3
    );
    Ok(())
}
