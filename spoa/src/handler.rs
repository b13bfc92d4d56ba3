//! The SPOE message handlers: `egress-attribution` and `egress-client`.
//!
//! Arguments are looked up by name. Every NOTIFY gets at least one action (the 3.1 empty-ACK bug,
//! commit `851e52b55`); an unknown message or missing arguments get a harmless
//! `txn.egress.status` and a metric, never silence (criteo/haproxy-spoe-go#38: no ACK = a stalled
//! request for the whole `timeout processing`).

use std::io::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use egress_common::client_hash::{ClientHash, HashKey};

use crate::attribution::{AttributionRecord, AttributionSender};
use crate::exit_ip::{CachedExitIps, ExitIps};
use crate::fasthash::FxHashMap;
use crate::frame::ack::AckWriter;
use crate::frame::{Action, Message, Notify, Scope, TypedData};
use crate::metrics::Metrics;

/// Sent at `on-server-session`: `src`, `backend=be_name`, `server=srv_name`, optional `id=<sample>`.
pub const MSG_ATTRIBUTION: &[u8] = b"egress-attribution";
/// Sent at `on-frontend-http-request`: `src`, optional `id`; answers only the client hash.
pub const MSG_CLIENT: &[u8] = b"egress-client";
/// `txn.<prefix>.client_hash`: 16 hex characters.
pub const VAR_CLIENT_HASH: &[u8] = b"client_hash";
/// `txn.<prefix>.exit_ip`: an IP sample, or the string [`EXIT_UNKNOWN`].
pub const VAR_EXIT_IP: &[u8] = b"exit_ip";
/// The `exit_ip` tag of a server whose exit IP is not known right now.
pub const EXIT_UNKNOWN: &[u8] = b"unknown";
/// `txn.<prefix>.status`: set only when something was off.
pub const VAR_STATUS: &[u8] = b"status";

/// State shared by every connection.
#[derive(Debug)]
pub struct Agent {
    key: HashKey,
    exit_ips: Arc<ExitIps>,
    attribution: AttributionSender,
    metrics: Arc<Metrics>,
}

impl Agent {
    /// Assemble the agent.
    pub fn new(
        key: HashKey,
        exit_ips: Arc<ExitIps>,
        attribution: AttributionSender,
        metrics: Arc<Metrics>,
    ) -> Self {
        Agent {
            key,
            exit_ips,
            attribution,
            metrics,
        }
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

/// A resolved (backend, server): interned names and the exit IP from the current snapshot.
#[derive(Clone, Debug)]
struct Route {
    backend: Arc<str>,
    server: Arc<str>,
    exit_ip: Option<IpAddr>,
}

/// Per-connection cache (backend, server) → [`Route`]: one hash lookup per message instead of
/// interning and exit-IP lookups. Cleared when the exit-IP map changes, and when it grows past
/// [`ROUTES_MAX`] (names come from HAProxy's config, so it stays tiny in practice).
#[derive(Debug, Default)]
struct RouteCache {
    /// Key: backend length (4 bytes LE), backend, server — unambiguous for any pair of names.
    map: FxHashMap<Box<[u8]>, Route>,
    /// The lookup key, rebuilt in place for every message (no allocation once warm).
    key: Vec<u8>,
}

const ROUTES_MAX: usize = 4096;

impl RouteCache {
    fn get(&mut self, backend: &[u8], server: &[u8], exit_ips: &CachedExitIps) -> Route {
        self.key.clear();
        self.key
            .extend_from_slice(&u32::try_from(backend.len()).unwrap_or(u32::MAX).to_le_bytes());
        self.key.extend_from_slice(backend);
        self.key.extend_from_slice(server);
        if let Some(route) = self.map.get(self.key.as_slice()) {
            return route.clone();
        }
        if self.map.len() >= ROUTES_MAX {
            self.map.clear();
        }
        let b: Arc<str> = Arc::from(String::from_utf8_lossy(backend).as_ref());
        let s: Arc<str> = Arc::from(String::from_utf8_lossy(server).as_ref());
        let exit_ip = exit_ips.get(&b, &s);
        let route = Route {
            backend: b,
            server: s,
            exit_ip,
        };
        self.map.insert(self.key.as_slice().into(), route.clone());
        route
    }
}

/// Per-connection handler state: route cache, exit-IP snapshot, the attribution batch of the
/// current read.
#[derive(Debug)]
pub struct ConnHandler {
    agent: Arc<Agent>,
    routes: RouteCache,
    exit_ips: CachedExitIps,
    batch: Vec<AttributionRecord>,
    now: SystemTime,
    /// `egress-attribution` messages answered in the current batch (one counter update per batch).
    attributions: u64,
    /// `egress-client` messages answered in the current batch (likewise).
    clients: u64,
    /// Messages of the current batch tagged `exit=unknown`: counted, and the reload asked for,
    /// once per batch.
    unknown_exits: u64,
}

/// The arguments the handlers use, gathered in one pass over the message.
#[derive(Default)]
struct Args<'a> {
    id: Option<&'a [u8]>,
    src: Option<IpAddr>,
    src_text: Option<&'a [u8]>,
    backend: Option<&'a [u8]>,
    server: Option<&'a [u8]>,
}

impl<'a> Args<'a> {
    fn of(m: &Message<'a>) -> Self {
        let mut a = Args::default();
        for (name, value) in m.args() {
            match (name, value) {
                // `args src` without a name is encoded with an empty name.
                (b"src" | b"", TypedData::Ipv4(ip)) if a.src.is_none() => a.src = Some(IpAddr::V4(ip)),
                (b"src" | b"", TypedData::Ipv6(ip)) if a.src.is_none() => {
                    // A v4 client on a dual-stack listener arrives v4-mapped: hash it as v4.
                    a.src = Some(IpAddr::V6(ip).to_canonical());
                }
                (b"src", TypedData::String(s)) if !s.is_empty() => a.src_text = Some(s),
                (b"id", TypedData::String(s) | TypedData::Binary(s)) if !s.is_empty() => a.id = Some(s),
                (b"backend", TypedData::String(s)) if !s.is_empty() => a.backend = Some(s),
                (b"server", TypedData::String(s)) if !s.is_empty() => a.server = Some(s),
                _ => {}
            }
        }
        a
    }

    /// Hash the identity, or the textual source address when there is none.
    fn hash(&self, key: &HashKey) -> Option<ClientHash> {
        if let Some(id) = self.id {
            return Some(key.hash(id));
        }
        if let Some(ip) = self.src {
            let mut buf = [0u8; 48];
            let n = ip_text(ip, &mut buf)?;
            return Some(key.hash(buf.get(..n)?));
        }
        self.src_text.map(|s| key.hash(s))
    }
}

/// The text form of `ip` (as `Display` writes it) into `buf`; IPv4 from a table of the 256 octets,
/// since it is on every request.
fn ip_text(ip: IpAddr, buf: &mut [u8; 48]) -> Option<usize> {
    match ip {
        IpAddr::V4(v4) => {
            let mut n = 0;
            for octet in v4.octets() {
                // Each entry is the octet's digits then a dot, written whole: the next octet (or
                // nothing, after the last) overwrites what follows the digits.
                let (text, len) = OCTETS[usize::from(octet)];
                buf.get_mut(n..n + 4)?.copy_from_slice(&text);
                n += usize::from(len) + 1;
            }
            Some(n - 1)
        }
        IpAddr::V6(_) => {
            let mut w = &mut buf[..];
            // An IP's text form is at most 45 bytes: this write cannot fail.
            write!(w, "{ip}").ok()?;
            Some(48 - w.len())
        }
    }
}

/// Every octet's decimal digits followed by a dot, and the number of digits.
const OCTETS: [([u8; 4], u8); 256] = {
    let mut t = [([0u8; 4], 0u8); 256];
    let mut i = 0;
    while i < 256 {
        let (h, d, o) = ((i / 100) as u8, ((i / 10) % 10) as u8, (i % 10) as u8);
        t[i] = if i >= 100 {
            ([b'0' + h, b'0' + d, b'0' + o, b'.'], 3)
        } else if i >= 10 {
            ([b'0' + d, b'0' + o, b'.', 0], 2)
        } else {
            ([b'0' + o, b'.', 0, 0], 1)
        };
        i += 1;
    }
    t
};

fn set_txn<'a>(name: &'a [u8], value: TypedData<'a>) -> Action<'a> {
    Action::SetVar {
        scope: Scope::Txn,
        name,
        value,
    }
}

impl ConnHandler {
    /// A handler for one connection.
    pub fn new(agent: Arc<Agent>) -> Self {
        let exit_ips = CachedExitIps::new(agent.exit_ips.clone());
        ConnHandler {
            agent,
            routes: RouteCache::default(),
            exit_ips,
            batch: Vec::new(),
            now: SystemTime::now(),
            attributions: 0,
            clients: 0,
            unknown_exits: 0,
        }
    }

    /// Called before a batch of frames: one clock read and one exit-IP generation check per batch.
    pub fn begin_batch(&mut self) {
        if self.exit_ips.refresh() {
            self.routes = RouteCache::default();
        }
        self.now = SystemTime::now();
    }

    /// Called after a batch: hand the attribution records over under one lock.
    pub fn end_batch(&mut self) {
        self.agent.attribution.send_batch(&mut self.batch);
        if self.attributions > 0 {
            self.agent.metrics.msg_attribution.inc_by(self.attributions);
            self.attributions = 0;
        }
        if self.clients > 0 {
            self.agent.metrics.msg_client.inc_by(self.clients);
            self.clients = 0;
        }
        if self.unknown_exits > 0 {
            self.agent.metrics.exit_ip_unknown.inc_by(self.unknown_exits);
            self.unknown_exits = 0;
            self.agent.exit_ips.request_reload_for_unknown();
        }
    }

    /// Answer every message of `notify` into `ack`. Always leaves at least one action.
    pub fn handle(&mut self, notify: &Notify<'_>, ack: &mut AckWriter<'_>) {
        if notify.is_empty() {
            // 3.1+ may send a NOTIFY with no message (every ACL false): answer, harmlessly.
            self.agent.metrics.msg_empty.inc();
            ack.push(set_txn(VAR_STATUS, TypedData::String(b"empty")));
            return;
        }
        for m in notify.messages() {
            match m.name {
                MSG_ATTRIBUTION => self.attribution(&m, ack),
                MSG_CLIENT => self.client(&m, ack),
                _ => {
                    self.agent.metrics.msg_unknown.inc();
                    ack.push(set_txn(VAR_STATUS, TypedData::String(b"unknown-message")));
                }
            }
        }
        if ack.is_empty() {
            ack.push(set_txn(VAR_STATUS, TypedData::String(b"no-action")));
        }
    }

    fn client(&mut self, m: &Message<'_>, ack: &mut AckWriter<'_>) {
        match Args::of(m).hash(&self.agent.key) {
            Some(h) => {
                self.clients += 1;
                ack.push(set_txn(VAR_CLIENT_HASH, TypedData::String(&h.to_hex())));
            }
            None => self.bad_args(ack),
        }
    }

    fn attribution(&mut self, m: &Message<'_>, ack: &mut AckWriter<'_>) {
        let args = Args::of(m);
        let Some(hash) = args.hash(&self.agent.key) else {
            return self.bad_args(ack);
        };
        ack.push(set_txn(VAR_CLIENT_HASH, TypedData::String(&hash.to_hex())));
        let (Some(backend), Some(server)) = (args.backend, args.server) else {
            return self.bad_args(ack);
        };
        let route = self.routes.get(backend, server, &self.exit_ips);
        match route.exit_ip {
            Some(IpAddr::V4(a)) => ack.push(set_txn(VAR_EXIT_IP, TypedData::Ipv4(a))),
            Some(IpAddr::V6(a)) => ack.push(set_txn(VAR_EXIT_IP, TypedData::Ipv6(a))),
            // Never a stale IP: a server the map does not know (never seen, mid-rotation, or its
            // tunnel failed) is tagged `unknown`, and the map is reloaded at once (asked for at the
            // end of the batch, rate-limited).
            None => {
                ack.push(set_txn(VAR_EXIT_IP, TypedData::String(EXIT_UNKNOWN)));
                self.unknown_exits += 1;
            }
        }
        self.batch.push(AttributionRecord {
            client_hash: hash,
            backend: route.backend,
            server: route.server,
            exit_ip: route.exit_ip,
            at: self.now,
        });
        self.attributions += 1;
    }

    fn bad_args(&self, ack: &mut AckWriter<'_>) {
        self.agent.metrics.msg_bad_args.inc();
        ack.push(set_txn(VAR_STATUS, TypedData::String(b"missing-args")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn ip_text_matches_display(v4: [u8; 4], v6: [u8; 16]) {
            for ip in [IpAddr::from(v4), IpAddr::from(v6)] {
                let mut buf = [0u8; 48];
                let n = ip_text(ip, &mut buf).unwrap();
                prop_assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), ip.to_string());
            }
        }
    }

    #[test]
    fn route_cache_keys_are_unambiguous_and_carry_the_exit_ip() {
        let ips = Arc::new(ExitIps::new());
        ips.replace(std::collections::HashMap::from([(
            ("ab".to_owned(), "c".to_owned()),
            IpAddr::from([203, 0, 113, 9]),
        )]));
        let cached = CachedExitIps::new(ips);
        let mut cache = RouteCache::default();
        for _ in 0..2 {
            let r = cache.get(b"ab", b"c", &cached);
            assert_eq!((&*r.backend, &*r.server), ("ab", "c"));
            assert_eq!(r.exit_ip, Some(IpAddr::from([203, 0, 113, 9])));
            let r = cache.get(b"a", b"bc", &cached);
            assert_eq!((&*r.backend, &*r.server), ("a", "bc"));
            assert_eq!(r.exit_ip, None);
        }
        assert_eq!(cache.map.len(), 2);
    }

    #[test]
    fn ip_text_edge_octets() {
        for ip in ["0.0.0.0", "255.255.255.255", "10.0.100.9", "1.20.3.40"] {
            let mut buf = [0u8; 48];
            let n = ip_text(ip.parse().unwrap(), &mut buf).unwrap();
            assert_eq!(&buf[..n], ip.as_bytes());
        }
    }
}
