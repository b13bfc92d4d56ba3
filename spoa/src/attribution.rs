//! Attribution: who (client hash) went out through which backend/server and exit IP, per minute.
//!
//! Connections hand records over in batches (one lock per read batch, not per message) to a bounded
//! queue; a full queue is a counted drop, never back-pressure on HAProxy. A single task owns the
//! [`Aggregator`]: it takes the whole queue when it is a quarter full and on every flush tick, so a
//! busy agent does not wake it once per read batch. On each tick it hands *closed* minute windows
//! to an [`AttributionSink`]; the ledger writer implements that trait.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use egress_common::client_hash::ClientHash;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::fasthash::FxHashMap;
use crate::metrics::Metrics;

/// The aggregation window.
pub const WINDOW: Duration = Duration::from_secs(60);

/// One attributed request, as the handler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttributionRecord {
    /// Keyed hash of the client identity (or source address).
    pub client_hash: ClientHash,
    /// HAProxy backend (`be_name`), interned.
    pub backend: Arc<str>,
    /// HAProxy server (`srv_name`), interned.
    pub server: Arc<str>,
    /// The server's exit IP as last recorded, if known.
    pub exit_ip: Option<IpAddr>,
    /// When HAProxy asked.
    pub at: SystemTime,
}

/// One aggregated row: every request of one client through one server and exit IP in one minute.
/// A (key, window) may appear in more than one row if the aggregator had to flush early (key cap);
/// sinks must add `requests` and widen first/last seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttributionRow {
    /// Keyed client hash.
    pub client_hash: ClientHash,
    /// HAProxy backend.
    pub backend: Arc<str>,
    /// HAProxy server.
    pub server: Arc<str>,
    /// Exit IP, if known.
    pub exit_ip: Option<IpAddr>,
    /// Start of the minute window.
    pub window_start: SystemTime,
    /// First request in the window.
    pub first_seen: SystemTime,
    /// Last request in the window.
    pub last_seen: SystemTime,
    /// Number of requests.
    pub requests: u64,
}

/// Where aggregated rows go ([`crate::ledger::LedgerSink`]: the ledger writer; [`LogSink`]: the log).
/// Must not block for long: called from the aggregation task.
pub trait AttributionSink: Send + Sync {
    /// Take ownership of closed rows.
    fn submit(&self, rows: Vec<AttributionRow>);
}

/// The default sink: logs each row at debug.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogSink;

impl AttributionSink for LogSink {
    fn submit(&self, rows: Vec<AttributionRow>) {
        for r in rows {
            tracing::debug!(
                client_hash = %r.client_hash,
                backend = %r.backend,
                server = %r.server,
                exit_ip = ?r.exit_ip,
                window_start = ?r.window_start,
                requests = r.requests,
                "attribution"
            );
        }
    }
}

/// Compact key: names are small integer ids, so a lookup compares 40 bytes in place instead of
/// chasing two `Arc<str>` pointers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    client_hash: u64,
    backend: u32,
    server: u32,
    minute: u64,
    exit_ip: Option<IpAddr>,
}

#[derive(Clone, Copy, Debug)]
struct Counts {
    first_seen: SystemTime,
    last_seen: SystemTime,
    requests: u64,
}

fn minute_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / WINDOW.as_secs())
        .unwrap_or(0)
}

/// Backend and server names seen by the aggregator, as ids.
#[derive(Debug, Default)]
struct Names {
    ids: FxHashMap<Arc<str>, u32>,
    names: Vec<Arc<str>>,
}

/// Distinct names held before the aggregator asks for a full flush (names come from HAProxy's
/// configuration, so this is never reached in practice).
const MAX_NAMES: usize = 1 << 16;

impl Names {
    fn id(&mut self, name: Arc<str>) -> u32 {
        if let Some(&id) = self.ids.get(&name) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(name.clone());
        self.ids.insert(name, id);
        id
    }

    fn name(&self, id: u32) -> Arc<str> {
        self.names
            .get(id as usize)
            .cloned()
            .unwrap_or_else(|| Arc::from("?"))
    }
}

/// The in-memory aggregate. Single owner, no locks; a record is one hash lookup and, in steady
/// state, no allocation.
#[derive(Debug)]
pub struct Aggregator {
    map: FxHashMap<Key, Counts>,
    names: Names,
    max_keys: usize,
}

impl Aggregator {
    /// An aggregator holding at most `max_keys` distinct keys before it must be flushed.
    pub fn new(max_keys: usize) -> Self {
        Aggregator {
            map: FxHashMap::with_capacity_and_hasher(max_keys.min(1 << 16), Default::default()),
            names: Names::default(),
            max_keys: max_keys.max(1),
        }
    }

    /// Add one record. Returns `true` when the key cap is reached and the caller must flush.
    pub fn record(&mut self, r: AttributionRecord) -> bool {
        let key = Key {
            client_hash: r.client_hash.0,
            backend: self.names.id(r.backend),
            server: self.names.id(r.server),
            exit_ip: r.exit_ip,
            minute: minute_of(r.at),
        };
        self.map
            .entry(key)
            .and_modify(|c| {
                c.requests += 1;
                c.first_seen = c.first_seen.min(r.at);
                c.last_seen = c.last_seen.max(r.at);
            })
            .or_insert(Counts {
                first_seen: r.at,
                last_seen: r.at,
                requests: 1,
            });
        self.map.len() >= self.max_keys || self.names.names.len() >= MAX_NAMES
    }

    /// Distinct keys held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Remove and return rows whose minute window has ended at `now`.
    pub fn take_closed(&mut self, now: SystemTime) -> Vec<AttributionRow> {
        let current = minute_of(now);
        self.take_where(|minute| minute < current)
    }

    /// Remove and return everything (shutdown, or a cap was hit).
    pub fn take_all(&mut self) -> Vec<AttributionRow> {
        let rows = self.take_where(|_| true);
        self.names = Names::default();
        rows
    }

    fn take_where(&mut self, closed: impl Fn(u64) -> bool) -> Vec<AttributionRow> {
        let mut rows = Vec::new();
        let names = &self.names;
        self.map.retain(|k, c| {
            if !closed(k.minute) {
                return true;
            }
            rows.push(AttributionRow {
                client_hash: ClientHash(k.client_hash),
                backend: names.name(k.backend),
                server: names.name(k.server),
                exit_ip: k.exit_ip,
                window_start: UNIX_EPOCH + Duration::from_secs(k.minute * WINDOW.as_secs()),
                first_seen: c.first_seen,
                last_seen: c.last_seen,
                requests: c.requests,
            });
            false
        });
        rows
    }
}

#[derive(Debug)]
struct Queue {
    records: Mutex<Vec<AttributionRecord>>,
    capacity: usize,
    /// Queue length at which the aggregator is woken early.
    wake_at: usize,
    ready: Notify,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Vec<AttributionRecord>> {
        // A panic while holding this lock leaves a Vec of plain records: still consistent.
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The connections' end of the queue. Cloned into every connection.
#[derive(Clone, Debug)]
pub struct AttributionSender {
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
}

impl AttributionSender {
    /// Move every record of `batch` into the queue (leaving `batch` empty, its capacity kept); if
    /// they do not all fit, drop the batch and count the drop.
    pub fn send_batch(&self, batch: &mut Vec<AttributionRecord>) {
        let n = batch.len();
        if n == 0 {
            return;
        }
        let mut q = self.queue.lock();
        let before = q.len();
        if before + n > self.queue.capacity {
            drop(q);
            batch.clear();
            self.metrics.attribution_dropped.inc_by(n as u64);
            return;
        }
        q.append(batch);
        drop(q);
        if before < self.queue.wake_at && before + n >= self.queue.wake_at {
            self.queue.ready.notify_one();
        }
    }
}

/// The aggregation task's end of the queue.
#[derive(Debug)]
pub struct AttributionReceiver {
    queue: Arc<Queue>,
    /// The buffer swapped in for the queue on every take (no allocation once warm).
    spare: Vec<AttributionRecord>,
}

impl AttributionReceiver {
    /// Take every queued record into `agg`, calling `on_full` whenever it reaches its key cap.
    /// Works in chunks and yields between them, so a large take does not hold up the connections
    /// that share the thread.
    async fn take_into<F: FnMut(&mut Aggregator)>(&mut self, agg: &mut Aggregator, mut on_full: F) {
        const CHUNK: usize = 4096;
        let mut taken = std::mem::take(&mut self.spare);
        std::mem::swap(&mut *self.queue.lock(), &mut taken);
        for (n, r) in taken.drain(..).enumerate() {
            if agg.record(r) {
                on_full(agg);
            }
            if n % CHUNK == CHUNK - 1 {
                tokio::task::yield_now().await;
            }
        }
        self.spare = taken;
    }

    /// Records waiting in the queue.
    fn depth(&self) -> usize {
        self.queue.lock().len()
    }

    /// Discard every queued record without waiting (the fuzz harness drains after each input, so
    /// nothing it allocated outlives the input). Returns the records discarded.
    pub fn drain_now(&mut self) -> usize {
        let mut q = self.queue.lock();
        let n = q.len();
        q.clear();
        n
    }
}

/// A queue holding at most `capacity` records.
pub fn channel(capacity: usize, metrics: Arc<Metrics>) -> (AttributionSender, AttributionReceiver) {
    let capacity = capacity.max(1);
    let queue = Arc::new(Queue {
        records: Mutex::new(Vec::new()),
        capacity,
        wake_at: (capacity / 4).max(1),
        ready: Notify::new(),
    });
    (
        AttributionSender {
            queue: queue.clone(),
            metrics,
        },
        AttributionReceiver {
            queue,
            spare: Vec::new(),
        },
    )
}

/// Aggregation task settings.
#[derive(Clone, Copy, Debug)]
pub struct AggregatorConfig {
    /// How often closed windows go to the sink.
    pub flush_interval: Duration,
    /// Distinct keys held before an early flush.
    pub max_keys: usize,
}

/// Drain the queue into an [`Aggregator`] and flush closed windows every `flush_interval`. Returns
/// after `stop` is cancelled (or every sender is gone), having handed *everything* to the sink.
pub async fn run_aggregator(
    mut rx: AttributionReceiver,
    sink: Arc<dyn AttributionSink>,
    cfg: AggregatorConfig,
    stop: CancellationToken,
    metrics: Arc<Metrics>,
) {
    let mut agg = Aggregator::new(cfg.max_keys);
    let mut tick = tokio::time::interval(cfg.flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let submit = |rows: Vec<AttributionRow>| {
        if !rows.is_empty() {
            metrics.attribution_rows.inc_by(rows.len() as u64);
            sink.submit(rows);
        }
    };
    let on_full = |agg: &mut Aggregator| {
        tracing::warn!(keys = agg.len(), "attribution key cap reached; flushing early");
        submit(agg.take_all());
    };
    loop {
        tokio::select! {
            () = rx.queue.ready.notified() => rx.take_into(&mut agg, on_full).await,
            _ = tick.tick() => {
                metrics.attribution_queue_depth.set(rx.depth() as i64);
                rx.take_into(&mut agg, on_full).await;
                submit(agg.take_closed(SystemTime::now()));
            }
            _ = stop.cancelled() => break,
        }
    }
    // Whatever is still queued is part of the final flush.
    rx.take_into(&mut agg, on_full).await;
    metrics.attribution_queue_depth.set(0);
    submit(agg.take_all());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn rec(h: u64, server: &Arc<str>, at: SystemTime) -> AttributionRecord {
        AttributionRecord {
            client_hash: ClientHash(h),
            backend: Arc::from("be"),
            server: server.clone(),
            exit_ip: Some(IpAddr::from([127, 0, 0, 2])),
            at,
        }
    }

    #[test]
    fn aggregates_per_key_and_minute_and_flushes_only_closed_windows() {
        let s1: Arc<str> = Arc::from("s1");
        let t0 = UNIX_EPOCH + Duration::from_secs(60 * 1000 + 5);
        let mut agg = Aggregator::new(1000);
        for i in 0..10 {
            agg.record(rec(1, &s1, t0 + Duration::from_secs(i)));
        }
        agg.record(rec(2, &s1, t0));
        agg.record(rec(1, &s1, t0 + Duration::from_secs(60))); // next minute
        assert_eq!(agg.len(), 3);

        // Still inside minute 1000: nothing closed.
        assert!(agg.take_closed(t0 + Duration::from_secs(30)).is_empty());
        let mut rows = agg.take_closed(t0 + Duration::from_secs(60));
        rows.sort_by_key(|r| r.client_hash);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].requests, 10);
        assert_eq!(rows[0].first_seen, t0);
        assert_eq!(rows[0].last_seen, t0 + Duration::from_secs(9));
        assert_eq!(rows[0].window_start, UNIX_EPOCH + Duration::from_secs(60 * 1000));
        assert_eq!(rows[1].requests, 1);
        let rest = agg.take_all();
        assert_eq!(rest.len(), 1);
        assert!(agg.is_empty());
    }

    #[test]
    fn key_cap_asks_for_a_flush() {
        let s: Arc<str> = Arc::from("s");
        let mut agg = Aggregator::new(2);
        assert!(!agg.record(rec(1, &s, UNIX_EPOCH)));
        assert!(agg.record(rec(2, &s, UNIX_EPOCH)));
    }

    #[derive(Default)]
    struct Collect(Mutex<Vec<AttributionRow>>);
    impl AttributionSink for Collect {
        fn submit(&self, rows: Vec<AttributionRow>) {
            self.0.lock().unwrap().extend(rows);
        }
    }

    #[tokio::test]
    async fn full_queue_drops_are_counted_and_shutdown_flushes_everything() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let (tx, rx) = channel(10, metrics.clone());
        let s: Arc<str> = Arc::from("s");
        let now = SystemTime::now();
        tx.send_batch(&mut (0..8).map(|i| rec(i % 2, &s, now)).collect());
        tx.send_batch(&mut (0..8).map(|_| rec(5, &s, now)).collect()); // 16 > 10: dropped
        assert_eq!(metrics.attribution_dropped.get(), 8);

        let sink = Arc::new(Collect::default());
        let stop = CancellationToken::new();
        let cfg = AggregatorConfig {
            flush_interval: Duration::from_secs(3600),
            max_keys: 1000,
        };
        let task = tokio::spawn(run_aggregator(
            rx,
            sink.clone(),
            cfg,
            stop.clone(),
            metrics.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send_batch(&mut vec![rec(7, &s, now)]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        let rows = sink.0.lock().unwrap();
        let total: u64 = rows.iter().map(|r| r.requests).sum();
        assert_eq!(total, 9);
        assert_eq!(rows.len(), 3);
        assert_eq!(metrics.attribution_rows.get(), 3);
    }

    /// Aggregator throughput on one core. Run: `cargo test -p egress-spoa --release -- --ignored
    /// aggregator_throughput --nocapture`.
    #[test]
    #[ignore]
    fn aggregator_throughput() {
        let servers: Vec<Arc<str>> = (0..28).map(|i| Arc::from(format!("s{i}"))).collect();
        let backend: Arc<str> = Arc::from("egress");
        let now = SystemTime::now();
        let records: Vec<AttributionRecord> = (0..2_000_000u64)
            .map(|i| AttributionRecord {
                client_hash: ClientHash(i % 10_000),
                backend: backend.clone(),
                server: servers[(i % 28) as usize].clone(),
                exit_ip: Some(IpAddr::from([10, 0, 0, (i % 28) as u8])),
                at: now,
            })
            .collect();
        let mut agg = Aggregator::new(1 << 20);
        let start = std::time::Instant::now();
        let n = records.len();
        for r in records {
            agg.record(r);
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "aggregator: {n} records in {secs:.3}s = {:.0} records/s, {} keys",
            n as f64 / secs,
            agg.len()
        );
        assert!(agg.len() <= 10_000 * 28);
    }
}
