//! An L4 tier in front of the entry: HAProxy in `mode tcp` as the load balancer, its connections to
//! the shipped entry leaving from 127.0.0.77. With `proxy-protocol-from 127.0.0.77` in the entry
//! policy and `send-proxy-v2` on the balancer, the entry sees each real client: two client
//! addresses get two client hashes and each sticks to its own backend. Without PROXY protocol the
//! same setup collapses them: every client is the balancer, one hash, one backend (the failure
//! operators hit). The whole local stack runs (egress-spoa tags the hashes).
//!
//! Needs the binaries: `cargo build --workspace --bins` (scripts/test does it).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use egress_harness::client::{connect_from, connect_request_with, http_get};
use egress_harness::entry::EntryPolicy;
use egress_harness::haproxy::{GLOBAL, Haproxy};
use egress_harness::stack::LocalStack;
use egress_harness::wait_until;

const BALANCER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 77);
const CLIENTS: [Ipv4Addr; 2] = [Ipv4Addr::new(127, 0, 21, 1), Ipv4Addr::new(127, 0, 21, 2)];

/// What the entry logged for the clients' requests: (%ci, client hash, exit IP seen by the echo).
struct Seen {
    /// client address -> exit IPs of its requests
    exits: BTreeMap<Ipv4Addr, BTreeSet<String>>,
    /// %ci of the entry's log lines -> client hashes
    hashes: BTreeMap<String, BTreeSet<String>>,
}

fn run(proxy_protocol: bool) -> anyhow::Result<Seen> {
    let stack = LocalStack::start_with(&mut |_| {}, &|| false, &|echo| {
        let mut p = EntryPolicy::for_test(&[echo.http_addr()]);
        if proxy_protocol {
            p.proxy_from = vec![format!("{BALANCER}/32")];
        }
        p
    })?;
    anyhow::ensure!(
        wait_until(Duration::from_secs(60), || stack.all_up()),
        "not all servers UP: {:?}",
        stack.server_stats().ok()
    );
    let send = if proxy_protocol { " send-proxy-v2" } else { "" };
    let balancer = Haproxy::start(&format!(
        "{GLOBAL}
listen balancer
    mode tcp
    bind 127.0.0.1:{{{{PORT0}}}}
    server entry {entry} source {BALANCER}{send}
",
        entry = stack.front(),
    ))?;
    let front = SocketAddr::from((Ipv4Addr::LOCALHOST, balancer.port(0)));
    let target = stack.echo_addr().to_string();
    let mut exits: BTreeMap<Ipv4Addr, BTreeSet<String>> = BTreeMap::new();
    for round in 0..4 {
        for c in CLIENTS {
            let (code, mut tunnel) = connect_request_with(connect_from(Some(c), front)?, &target, "")?;
            anyhow::ensure!(code == 200, "round {round}, {c}: CONNECT answered {code}");
            exits
                .entry(c)
                .or_default()
                .insert(http_get(&mut tunnel, &target, "/")?.trim().to_owned());
        }
    }
    // The entry's log lines for those requests (written when each tunnel ends), with the agent's
    // hash (a line the agent did not tag in time is skipped: the shipped budget fails open).
    let mut hashes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let logged = wait_until(Duration::from_secs(10), || {
        hashes.clear();
        let logs = stack.haproxy.logs();
        let lines: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains(&format!("\"CONNECT {target} HTTP/1.1\"")) && l.contains(" 200 "))
            .collect();
        for l in &lines {
            let ci = l.split(':').next().unwrap_or_default().to_owned();
            if let Some(h) = l.split(" client=").nth(1).and_then(|r| r.split(' ').next())
                && h != "-"
            {
                hashes.entry(ci).or_default().insert(h.to_owned());
            }
        }
        lines.len() >= 8
    });
    anyhow::ensure!(
        logged,
        "the entry logged fewer than 8 requests:\n{}",
        stack.haproxy.logs()
    );
    Ok(Seen { exits, hashes })
}

#[test]
fn the_entry_sees_real_clients_through_an_l4_balancer_with_proxy_protocol_and_not_without()
-> anyhow::Result<()> {
    let with = run(true)?;
    println!(
        "PROXY protocol v2: entry saw {:?}, exits per client {:?}",
        with.hashes, with.exits
    );
    // Two real clients: two addresses in the entry's log, two hashes, each client on one backend.
    let sources: BTreeSet<String> = with.hashes.keys().cloned().collect();
    let want: BTreeSet<String> = CLIENTS.iter().map(ToString::to_string).collect();
    assert_eq!(sources, want, "the entry should log the real clients");
    let all: BTreeSet<&String> = with.hashes.values().flatten().collect();
    assert_eq!(all.len(), 2, "two clients, two hashes: {:?}", with.hashes);
    assert!(with.hashes.values().all(|h| h.len() == 1), "{:?}", with.hashes);
    assert!(
        with.exits.values().all(|e| e.len() == 1),
        "each client sticks to its backend: {:?}",
        with.exits
    );

    let without = run(false)?;
    println!(
        "without PROXY protocol: entry saw {:?}, exits per client {:?}",
        without.hashes, without.exits
    );
    // Without it, every client is the balancer: one address, one hash, one backend for both.
    let sources: BTreeSet<String> = without.hashes.keys().cloned().collect();
    assert_eq!(sources, BTreeSet::from([BALANCER.to_string()]));
    let all: BTreeSet<&String> = without.hashes.values().flatten().collect();
    assert_eq!(all.len(), 1, "{:?}", without.hashes);
    let exits: BTreeSet<&String> = without.exits.values().flatten().collect();
    assert_eq!(
        exits.len(),
        1,
        "every client on the balancer's backend: {:?}",
        without.exits
    );
    Ok(())
}
