//! The truth test: a generated trace (clients, servers, rotations at known times, an exit IP reused by
//! another server) goes through the writer exactly as production data would: IP events from the
//! checker/rotator, attribution aggregated per (client, server, agent's exit IP, 1-minute window) by a
//! simulated agent whose idea of the exit IP lags the real one by 20 s. `who --ip` and `who --client`
//! must equal the ground truth computed from the raw requests, at instants on both sides of every
//! rotation.
//!
//! Exactness needs a common time grid: requests, rotations and query instants fall on 10 s steps, and
//! a client's sessions are separated by more than a window, so within one row the requests are dense
//! (one every 10 s between first_seen and last_seen). Off the grid, answers are exact to the
//! resolution of a row's [first_seen, last_seen] span (docs/ledger.md).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use egress_common::client_hash::HashKey;
use egress_harness::postgres::Postgres;
use egress_ledger::{Actor, AttributionRow, ClientHash, Event, EventKind, LedgerWriter, Store, WriterConfig};
use tokio_util::sync::CancellationToken;

const STEP: i64 = 10; // seconds: the grid
const SERVERS: usize = 6;
const CLIENTS: usize = 60;
const MINUTES: i64 = 90;
const AGENT_LAG: i64 = 20; // seconds

/// A small deterministic PRNG (xorshift64*), so the trace is the same on every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Trace {
    t0: DateTime<Utc>,
    /// Per server: (from, ip) in time order; the first entry is the initial sighting.
    timeline: Vec<Vec<(DateTime<Utc>, IpAddr)>>,
    /// (client, server, time) of every request.
    requests: Vec<(ClientHash, usize, DateTime<Utc>)>,
}

impl Trace {
    fn ip_at(&self, server: usize, t: DateTime<Utc>) -> Option<IpAddr> {
        self.timeline[server]
            .iter()
            .rev()
            .find(|(from, _)| *from <= t)
            .map(|(_, ip)| *ip)
    }

    fn who_ip(&self, ip: IpAddr, at: DateTime<Utc>, w: TimeDelta) -> BTreeSet<(u64, String)> {
        self.requests
            .iter()
            .filter(|(_, s, t)| *t >= at - w && *t <= at + w && self.ip_at(*s, *t) == Some(ip))
            .map(|(c, s, _)| (c.0, format!("s{s}")))
            .collect()
    }

    fn who_client(
        &self,
        c: ClientHash,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> BTreeSet<(String, IpAddr)> {
        self.requests
            .iter()
            .filter(|(cc, _, t)| *cc == c && *t >= from && *t <= to)
            .filter_map(|(_, s, t)| Some((format!("s{s}"), self.ip_at(*s, *t)?)))
            .collect()
    }
}

fn generate(t0: DateTime<Utc>) -> Trace {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let step = TimeDelta::seconds(STEP);
    let ip =
        |s: usize, epoch: usize| -> IpAddr { format!("198.51.100.{}", 10 * s + epoch + 1).parse().unwrap() };
    let mut timeline: Vec<Vec<(DateTime<Utc>, IpAddr)>> =
        (0..SERVERS).map(|s| vec![(t0, ip(s, 0))]).collect();
    for (s, tl) in timeline.iter_mut().enumerate() {
        let rotations = 1 + rng.below(2) as i64;
        for r in 0..rotations {
            // Spread over the trace, on the grid.
            let slot = (MINUTES * 60 / STEP) / (rotations + 1);
            let at = t0 + step * i32::try_from(slot * (r + 1) + rng.below(20) as i64 - 10).unwrap();
            tl.push((at, ip(s, r as usize + 1)));
        }
    }
    // Server 5 rotates onto server 0's first IP after server 0 has left it.
    let s0_left = timeline[0][1].0;
    let reuse_at = s0_left + TimeDelta::minutes(5);
    let reused = timeline[0][0].1;
    timeline[5].retain(|(from, _)| *from < reuse_at);
    timeline[5].push((reuse_at, reused));

    let key = HashKey::from_hex("0f0e0d0c0b0a09080706050403020100").unwrap();
    let mut requests = Vec::new();
    let end = t0 + TimeDelta::minutes(MINUTES);
    for c in 0..CLIENTS {
        let hash = key.hash(format!("10.1.{}.{}", c / 256, c % 256).as_bytes());
        let server = c % SERVERS;
        // Sessions on the grid, 1-15 minutes long, separated by more than one window.
        let mut t = t0 + step * (6 + rng.below(60) as i32);
        while t < end {
            let len = 6 + rng.below(84) as i32; // steps
            for k in 0..len {
                let at = t + step * k;
                if at >= end {
                    break;
                }
                requests.push((hash, server, at));
            }
            t = t + step * len + TimeDelta::seconds(70 + 10 * rng.below(30) as i64);
        }
    }
    Trace {
        t0,
        timeline,
        requests,
    }
}

/// What the agent would send: aggregated per (client, server, exit IP as the agent believes, window).
fn aggregate(trace: &Trace) -> Vec<AttributionRow> {
    let mut rows: BTreeMap<(u64, usize, Option<IpAddr>, DateTime<Utc>), AttributionRow> = BTreeMap::new();
    for &(c, s, t) in &trace.requests {
        let agent_ip = trace
            .ip_at(s, t - TimeDelta::seconds(AGENT_LAG))
            .or(trace.ip_at(s, t));
        let window_start = t.duration_trunc(TimeDelta::minutes(1)).unwrap();
        rows.entry((c.0, s, agent_ip, window_start))
            .and_modify(|r| {
                r.first_seen = r.first_seen.min(t);
                r.last_seen = r.last_seen.max(t);
                r.requests += 1;
            })
            .or_insert(AttributionRow {
                client_hash: c,
                backend: "egress".into(),
                server: format!("s{s}"),
                exit_ip: agent_ip,
                window_start,
                first_seen: t,
                last_seen: t,
                requests: 1,
            });
    }
    rows.into_values().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_answers_match_the_ground_truth_around_every_rotation() -> anyhow::Result<()> {
    let pg = tokio::task::spawn_blocking(Postgres::start).await??;
    // Recent enough for the writer's retention, on the grid.
    let t0 = Utc::now().duration_trunc(TimeDelta::hours(1))? - TimeDelta::hours(3);
    let trace = generate(t0);
    let rows = aggregate(&trace);

    // Everything goes through the writer, as in production.
    let dir = tempfile::tempdir()?;
    let registry = prometheus::Registry::new();
    let shutdown = CancellationToken::new();
    let (handle, task) = LedgerWriter::spawn(
        WriterConfig::new(pg.url(), dir.path().join("spool")),
        &registry,
        shutdown.clone(),
    )?;
    for (s, tl) in trace.timeline.iter().enumerate() {
        for (i, (at, ip)) in tl.iter().enumerate() {
            let e = if i == 0 {
                Event::new(
                    EventKind::ExitIpObserved,
                    Actor::Checker,
                    "egress",
                    format!("s{s}"),
                )
                .new_ip(*ip)
            } else {
                Event::new(EventKind::Rotated, Actor::Rotator, "egress", format!("s{s}"))
                    .old_ip(tl[i - 1].1)
                    .new_ip(*ip)
            };
            handle.record_event(e.at(*at));
        }
    }
    for chunk in rows.chunks(500) {
        handle.submit_attribution(chunk.to_vec());
    }
    handle.flush().await?;
    let stats = handle.stats();
    assert_eq!(stats.attribution_shed, 0, "{stats:?}");
    assert_eq!(stats.attribution_written, rows.len() as u64);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), task).await??;

    let store = Store::connect(pg.url()).await?;
    let all_ips: BTreeSet<IpAddr> = trace.timeline.iter().flatten().map(|(_, ip)| *ip).collect();
    let mut instants = Vec::new();
    for tl in &trace.timeline {
        for (at, _) in tl.iter().skip(1) {
            for d in [-2 * STEP, -STEP, 0, STEP, 2 * STEP, AGENT_LAG + STEP] {
                instants.push(*at + TimeDelta::seconds(d));
            }
        }
    }
    let mut checked = 0;
    let mut non_empty = 0;
    for &at in &instants {
        for w in [0, STEP, 3 * STEP] {
            for &ip in &all_ips {
                let w = TimeDelta::seconds(w);
                let got: BTreeSet<(u64, String)> = store
                    .who_ip(ip, at, w.to_std()?)
                    .await?
                    .into_iter()
                    .map(|r| {
                        assert_eq!(r.exit_ip, ip);
                        (r.client_hash.0, r.server)
                    })
                    .collect();
                let want = trace.who_ip(ip, at, w);
                assert_eq!(got, want, "who --ip {ip} --at {at} --window {w}");
                checked += 1;
                non_empty += usize::from(!want.is_empty());
            }
        }
    }
    // The test is only as good as its data: most rotation instants must have had clients on both sides.
    assert!(
        non_empty >= checked / 20 && non_empty >= 50,
        "{non_empty} of {checked} answers non-empty"
    );

    let clients: BTreeSet<ClientHash> = trace.requests.iter().map(|(c, _, _)| *c).collect();
    let mut client_checks = 0;
    let mut by_client: HashMap<ClientHash, usize> = HashMap::new();
    for &(c, s, _) in &trace.requests {
        by_client.insert(c, s);
    }
    for c in clients.iter().take(20) {
        let s = by_client[c];
        for (at, _) in trace.timeline[s].iter().skip(1) {
            for (from, to) in [(-60, -STEP), (-60, 60), (0, 60), (-3600, 3600)] {
                let (from, to) = (*at + TimeDelta::seconds(from), *at + TimeDelta::seconds(to));
                let got: BTreeSet<(String, IpAddr)> = store
                    .who_client(*c, from, to)
                    .await?
                    .into_iter()
                    .map(|r| (r.server, r.exit_ip.expect("timeline knows every IP")))
                    .collect();
                assert_eq!(
                    got,
                    trace.who_client(*c, from, to),
                    "who --client {c} --from {from} --to {to}"
                );
                client_checks += 1;
            }
        }
    }
    assert!(client_checks >= 20);
    println!(
        "truth: {} requests -> {} rows; {checked} who --ip answers ({non_empty} non-empty), {client_checks} who --client answers; t0 {}",
        trace.requests.len(),
        rows.len(),
        trace.t0
    );
    Ok(())
}
