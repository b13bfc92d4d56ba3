//! The background writer: batches events and attribution off the request path, survives Postgres
//! outages (events spool to disk, attribution is shed and counted), reconnects with backoff, and
//! flushes on shutdown.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use prometheus::Registry;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::attribution::AttributionRow;
use crate::error::{LedgerError, redact_url};
use crate::event::Event;
use crate::metrics::{Metrics, ShedReason};
use crate::spool::{Spool, SpoolReader};
use crate::store::{Store, StoreOptions};

/// Writer settings.
#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// Postgres URL.
    pub database_url: String,
    /// The local spool file (its directory is created).
    pub spool_path: PathBuf,
    /// Capacity of the in-memory event queue; when full, `record_event` appends to the spool.
    pub event_queue: usize,
    /// Most attribution rows held in memory (queued and pending); beyond it rows are shed.
    pub attribution_queue: usize,
    /// Most events per INSERT, and the pending count that triggers an early write.
    pub batch_size: usize,
    /// Write at least this often.
    pub flush_interval: Duration,
    /// Attribution retention in days: older partitions are dropped, older rows are shed. None: keep all.
    pub retention_days: Option<u32>,
    /// Attribution partitions created ahead, in days.
    pub partitions_ahead: u32,
    /// Cap on the spool files, in bytes.
    pub max_spool_bytes: u64,
    /// First retry delay after a failed write; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// How long shutdown may spend flushing before it spools what is left.
    pub shutdown_timeout: Duration,
    /// Pool and statement deadlines.
    pub store: StoreOptions,
}

impl WriterConfig {
    /// Defaults for everything but the URL and spool path.
    pub fn new(database_url: impl Into<String>, spool_path: impl Into<PathBuf>) -> Self {
        Self {
            database_url: database_url.into(),
            spool_path: spool_path.into(),
            event_queue: 4096,
            attribution_queue: 200_000,
            batch_size: 1000,
            flush_interval: Duration::from_secs(1),
            retention_days: Some(30),
            partitions_ahead: 2,
            max_spool_bytes: 256 << 20,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(10),
            store: StoreOptions {
                max_connections: 2,
                connect_timeout: Duration::from_secs(3),
                statement_timeout: Duration::from_secs(15),
            },
        }
    }

    fn validate(&self) -> Result<(), LedgerError> {
        let bad = |m: &str| Err(LedgerError::InvalidInput(format!("writer config: {m}")));
        if self.event_queue == 0 || self.batch_size == 0 || self.attribution_queue == 0 {
            return bad("event_queue, attribution_queue and batch_size must be > 0");
        }
        if self.flush_interval.is_zero() || self.backoff_min.is_zero() || self.backoff_max < self.backoff_min
        {
            return bad("flush_interval and backoff_min must be > 0 and backoff_max >= backoff_min");
        }
        Ok(())
    }
}

/// Counters of one writer, for tests and status output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Events committed (replays included).
    pub events_written: u64,
    /// Events appended to the spool.
    pub events_spooled: u64,
    /// Spooled events replayed.
    pub events_replayed: u64,
    /// Events lost (spool full or unwritable; rejected by Postgres for good).
    pub events_dropped: u64,
    /// Attribution rows upserted.
    pub attribution_written: u64,
    /// Attribution rows shed, all reasons.
    pub attribution_shed: u64,
    /// Bytes in the spool files.
    pub spool_bytes: u64,
}

type FlushReply = oneshot::Sender<Result<(), LedgerError>>;

#[derive(Debug)]
struct Shared {
    spool: Spool,
    metrics: Metrics,
    /// Attribution rows in the channel or pending in the writer.
    attr_rows: AtomicUsize,
    attr_cap: usize,
    /// Torn spool fragments already counted in `spool_corrupt_lines`.
    torn_reported: AtomicU64,
}

impl Shared {
    /// Count torn fragments the spool cut since the last call.
    fn report_torn(&self) {
        let now = self.spool.torn_fragments();
        let before = self.torn_reported.fetch_max(now, Ordering::AcqRel);
        if now > before {
            self.metrics.spool_corrupt_lines.inc_by(now - before);
        }
    }

    /// An event refused for good: count it, say which, and go on.
    fn reject(&self, e: &Event, error: &LedgerError) {
        self.metrics.events_dropped.inc();
        self.metrics.events_rejected.inc();
        warn!(%error, id = %e.id, kind = %e.kind, backend = %e.backend, server = %e.server, "ledger event rejected for good; skipped");
    }
}

/// The producers' side. Cheap to clone; every method returns at once.
#[derive(Clone, Debug)]
pub struct LedgerHandle {
    shared: Arc<Shared>,
    events: mpsc::Sender<Event>,
    attribution: mpsc::Sender<Vec<AttributionRow>>,
    flush: mpsc::Sender<FlushReply>,
}

impl LedgerHandle {
    /// Record a state event. Never blocks on Postgres and never drops the event: when the queue is full
    /// (or the writer has stopped) the event is appended to the spool file and fsync'd, here. An event
    /// Postgres could never store (see [`Event::validate`]: e.g. a server name over 256 characters) is
    /// dropped here, counted in `egress_ledger_events_rejected_total`, so it cannot block the spool.
    pub fn record_event(&self, event: Event) {
        if let Err(error) = event.validate() {
            self.shared.reject(&event, &error);
            return;
        }
        match self.events.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(e) | mpsc::error::TrySendError::Closed(e)) => {
                if !spool_events(&self.shared, &[e]) {
                    self.shared.metrics.events_dropped.inc();
                    error!(events = 1, "cannot queue or spool a ledger event; it is lost");
                }
            }
        }
    }

    /// Hand over aggregated attribution rows. Never blocks; when the in-memory budget is full the rows
    /// are shed and counted in `egress_ledger_attribution_shed_rows_total{reason="queue_full"}`.
    pub fn submit_attribution(&self, rows: Vec<AttributionRow>) {
        let n = rows.len();
        if n == 0 {
            return;
        }
        let s = &self.shared;
        let before = s.attr_rows.fetch_add(n, Ordering::AcqRel);
        if before + n > s.attr_cap {
            s.attr_rows.fetch_sub(n, Ordering::AcqRel);
            s.metrics.shed(ShedReason::QueueFull, n);
            return;
        }
        if self.attribution.try_send(rows).is_err() {
            s.attr_rows.fetch_sub(n, Ordering::AcqRel);
            s.metrics.shed(ShedReason::QueueFull, n);
        }
    }

    /// Write everything queued so far. Errors when Postgres is unavailable (events are then kept or
    /// spooled, never lost) or the writer has stopped.
    pub async fn flush(&self) -> Result<(), LedgerError> {
        let (tx, rx) = oneshot::channel();
        let gone = || LedgerError::InvalidInput("ledger writer has stopped".into());
        self.flush.send(tx).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// The writer's counters so far.
    pub fn stats(&self) -> WriterStats {
        let m = &self.shared.metrics;
        WriterStats {
            events_written: m.events_written.get(),
            events_spooled: m.events_spooled.get(),
            events_replayed: m.events_replayed.get(),
            events_dropped: m.events_dropped.get(),
            attribution_written: m.attribution_written.get(),
            attribution_shed: m.shed_total(),
            spool_bytes: self.shared.spool.bytes(),
        }
    }
}

/// Append to the spool; false when that failed (the caller decides whether the events are lost).
fn spool_events(shared: &Shared, events: &[Event]) -> bool {
    let r = shared.spool.append(events);
    shared.report_torn();
    match r {
        Ok(()) => {
            shared.metrics.events_spooled.inc_by(events.len() as u64);
            shared
                .metrics
                .spool_bytes
                .set(i64::try_from(shared.spool.bytes()).unwrap_or(i64::MAX));
            true
        }
        Err(error) => {
            error!(%error, events = events.len(), "cannot spool ledger events");
            false
        }
    }
}

/// The background writer task.
#[derive(Debug)]
pub struct LedgerWriter {
    cfg: WriterConfig,
    store: Store,
    shared: Arc<Shared>,
    events_rx: mpsc::Receiver<Event>,
    attr_rx: mpsc::Receiver<Vec<AttributionRow>>,
    flush_rx: mpsc::Receiver<FlushReply>,
    pending_events: Vec<Event>,
    pending_rows: Vec<AttributionRow>,
    db_up: bool,
    backoff: Duration,
    next_attempt: Instant,
    last_maintenance: Option<Instant>,
}

const MAINTENANCE_EVERY: Duration = Duration::from_secs(3600);

impl LedgerWriter {
    /// Start the writer on the current tokio runtime. It runs until `shutdown` is cancelled, then
    /// flushes (or spools, if Postgres is down) and ends; await the JoinHandle to know it is done.
    pub fn spawn(
        cfg: WriterConfig,
        registry: &Registry,
        shutdown: CancellationToken,
    ) -> Result<(LedgerHandle, JoinHandle<()>), LedgerError> {
        let (handle, writer) = Self::build(cfg, registry)?;
        let task = tokio::spawn(writer.run(shutdown));
        Ok((handle, task))
    }

    fn build(cfg: WriterConfig, registry: &Registry) -> Result<(LedgerHandle, LedgerWriter), LedgerError> {
        cfg.validate()?;
        let store = Store::connect_lazy_with(&cfg.database_url, cfg.store.clone())?;
        let spool = Spool::new(cfg.spool_path.clone(), cfg.max_spool_bytes)?;
        let metrics = Metrics::register(registry)?;
        metrics
            .spool_bytes
            .set(i64::try_from(spool.bytes()).unwrap_or(i64::MAX));
        let shared = Arc::new(Shared {
            spool,
            metrics,
            attr_rows: AtomicUsize::new(0),
            attr_cap: cfg.attribution_queue,
            torn_reported: AtomicU64::new(0),
        });
        shared.report_torn();
        let (events_tx, events_rx) = mpsc::channel(cfg.event_queue);
        // Messages are Vecs; the row budget (attr_cap) is the real bound, this only caps the message count.
        let (attr_tx, attr_rx) = mpsc::channel(cfg.attribution_queue.clamp(1, 65_536));
        let (flush_tx, flush_rx) = mpsc::channel(16);
        let handle = LedgerHandle {
            shared: shared.clone(),
            events: events_tx,
            attribution: attr_tx,
            flush: flush_tx,
        };
        let writer = LedgerWriter {
            backoff: cfg.backoff_min,
            cfg,
            store,
            shared,
            events_rx,
            attr_rx,
            flush_rx,
            pending_events: Vec::new(),
            pending_rows: Vec::new(),
            db_up: false,
            next_attempt: Instant::now(),
            last_maintenance: None,
        };
        Ok((handle, writer))
    }

    /// Most events held in memory while they can be neither written nor spooled: a full batch plus a
    /// full queue (what the run loop can hold anyway).
    fn pending_cap(&self) -> usize {
        self.cfg.batch_size.saturating_add(self.cfg.event_queue)
    }

    /// The write failed: move pending events to the spool; if the spool cannot take them either
    /// (disk full, read-only), keep them in memory up to `pending_cap` for the next attempt, and drop
    /// (counted) only the newest beyond it.
    fn spool_pending(&mut self) {
        if self.pending_events.is_empty() {
            return;
        }
        if spool_events(&self.shared, &self.pending_events) {
            self.pending_events.clear();
            return;
        }
        let cap = self.pending_cap();
        if self.pending_events.len() > cap {
            let lost = self.pending_events.len() - cap;
            self.pending_events.truncate(cap);
            self.shared.metrics.events_dropped.inc_by(lost as u64);
            error!(
                lost,
                kept = cap,
                "ledger events beyond the in-memory cap are lost"
            );
        }
        warn!(
            kept = self.pending_events.len(),
            "ledger spool unwritable; events kept in memory for the next attempt"
        );
    }

    async fn run(mut self, shutdown: CancellationToken) {
        info!(url = %redact_url(&self.cfg.database_url), spool = %self.shared.spool.path().display(), "ledger writer started");
        let mut tick = tokio::time::interval(
            self.cfg
                .flush_interval
                .min(self.cfg.backoff_min.max(Duration::from_millis(50))),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_write = Instant::now();
        loop {
            let take_events = self.pending_events.len() < self.cfg.batch_size;
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(reply) = self.flush_rx.recv() => {
                    self.drain_channels();
                    let r = self.write_all().await;
                    last_write = Instant::now();
                    let _ = reply.send(r);
                    continue;
                }
                Some(e) = self.events_rx.recv(), if take_events => self.pending_events.push(e),
                Some(rows) = self.attr_rx.recv() => self.pending_rows.extend(rows),
                _ = tick.tick() => {}
            }
            self.update_lag();
            // An event that changes the agents' `exit=` tag is written at once: every moment it
            // waits here, requests are tagged from the previous state.
            let due = last_write.elapsed() >= self.cfg.flush_interval
                || self.pending_events.iter().any(|e| e.kind.changes_exit_tag())
                || self.pending_events.len() >= self.cfg.batch_size
                || self.pending_rows.len() >= self.cfg.batch_size;
            // Idle ticks do not touch Postgres, so db_up reflects real writes.
            let has_work = !self.pending_events.is_empty()
                || !self.pending_rows.is_empty()
                || self.shared.spool.has_pending()
                || self.maintenance_due();
            if due && has_work && Instant::now() >= self.next_attempt {
                // Errors are logged and retried with backoff inside.
                let _ = self.write_all().await;
                last_write = Instant::now();
            }
        }
        self.shutdown().await;
    }

    fn drain_channels(&mut self) {
        while let Ok(e) = self.events_rx.try_recv() {
            self.pending_events.push(e);
        }
        while let Ok(rows) = self.attr_rx.try_recv() {
            self.pending_rows.extend(rows);
        }
    }

    fn update_lag(&self) {
        let age = self
            .pending_events
            .iter()
            .map(|e| e.at)
            .min()
            .map(|oldest| (Utc::now() - oldest).num_milliseconds().max(0) as f64 / 1000.0)
            .unwrap_or(0.0);
        self.shared.metrics.pending_oldest_age.set(age);
    }

    /// One attempt at writing everything pending: spool replay first, then events, then attribution.
    /// On a transient failure, pending events go to the spool (durable across a crash while Postgres is
    /// down) and the next attempt waits for the backoff.
    async fn write_all(&mut self) -> Result<(), LedgerError> {
        let r = self.try_write_all().await;
        match &r {
            Ok(()) => {
                if !self.db_up {
                    info!("ledger database reachable; writes resumed");
                }
                self.db_up = true;
                self.shared.metrics.db_up.set(1);
                self.backoff = self.cfg.backoff_min;
                self.next_attempt = Instant::now();
            }
            Err(error) => {
                if !error.is_transient() {
                    error!(%error, "ledger write failed; events spooled, retrying with backoff");
                } else if self.db_up {
                    warn!(%error, "ledger database write failed; spooling events and retrying with backoff");
                } else {
                    debug!(%error, backoff_ms = self.backoff.as_millis() as u64, "ledger database still unavailable");
                }
                self.db_up = false;
                self.shared.metrics.db_up.set(0);
                self.spool_pending();
                self.next_attempt = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(self.cfg.backoff_max);
            }
        }
        self.update_lag();
        r
    }

    async fn try_write_all(&mut self) -> Result<(), LedgerError> {
        self.maintain().await?;
        self.replay_spool().await?;
        while !self.pending_events.is_empty() {
            let n = self.pending_events.len().min(self.cfg.batch_size);
            let started = Instant::now();
            match self.store.insert_events(&self.pending_events[..n]).await {
                Ok(_) => {
                    self.shared
                        .metrics
                        .events_write_seconds
                        .observe(started.elapsed().as_secs_f64());
                    self.shared.metrics.events_written.inc_by(n as u64);
                    self.pending_events.drain(..n);
                }
                Err(e) if !e.is_row_rejection() => return Err(e),
                Err(e) => {
                    // A batch Postgres refuses for good (e.g. a CHECK): write it one by one.
                    warn!(error = %e, events = n, "ledger rejected an event batch; inserting one by one");
                    self.insert_one_by_one(n).await?;
                }
            }
        }
        self.write_attribution().await
    }

    /// Insert the first `n` pending events one at a time, skipping (counted) those Postgres rejects.
    /// Each event leaves `pending_events` only once it is committed or rejected, so a failure or a
    /// cancellation (the shutdown deadline) leaves the rest pending, to be spooled.
    async fn insert_one_by_one(&mut self, n: usize) -> Result<(), LedgerError> {
        for _ in 0..n {
            let Some(e) = self.pending_events.first() else {
                break;
            };
            match self.store.insert_events(std::slice::from_ref(e)).await {
                Ok(inserted) => self.shared.metrics.events_written.inc_by(inserted),
                Err(err) if err.is_row_rejection() => self.shared.reject(e, &err),
                Err(err) => return Err(err),
            }
            self.pending_events.remove(0);
        }
        Ok(())
    }

    async fn write_attribution(&mut self) -> Result<(), LedgerError> {
        if self.pending_rows.is_empty() {
            return Ok(());
        }
        let cutoff = self
            .cfg
            .retention_days
            .map(|d| Utc::now() - TimeDelta::days(i64::from(d)));
        let before = self.pending_rows.len();
        let mut invalid = 0;
        let mut expired = 0;
        self.pending_rows.retain(|r| {
            if !r.is_valid() {
                invalid += 1;
                false
            } else if cutoff.is_some_and(|c| r.window_start < c) {
                expired += 1;
                false
            } else {
                true
            }
        });
        self.shared.metrics.shed(ShedReason::Invalid, invalid);
        self.shared.metrics.shed(ShedReason::Expired, expired);
        self.release_rows(invalid + expired);
        debug_assert_eq!(before, self.pending_rows.len() + invalid + expired);
        if self.pending_rows.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let n = self.pending_rows.len();
        match self.store.upsert_attribution(&self.pending_rows).await {
            Ok(_) => {
                self.shared
                    .metrics
                    .attribution_write_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.shared.metrics.attribution_written.inc_by(n as u64);
                self.pending_rows.clear();
                self.release_rows(n);
                Ok(())
            }
            Err(e) if e.is_transient() => Err(e),
            Err(e) => {
                error!(error = %e, rows = n, "ledger rejected an attribution batch; shedding it");
                self.shared.metrics.shed(ShedReason::Rejected, n);
                self.pending_rows.clear();
                self.release_rows(n);
                Ok(())
            }
        }
    }

    fn release_rows(&self, n: usize) {
        if n > 0 {
            self.shared.attr_rows.fetch_sub(n, Ordering::AcqRel);
        }
    }

    fn maintenance_due(&self) -> bool {
        self.last_maintenance
            .is_none_or(|t| t.elapsed() >= MAINTENANCE_EVERY)
    }

    /// Partitions ahead and retention, at start and hourly. A transient failure aborts the write
    /// attempt (Postgres is down); any other failure is logged and retried in a minute, and events
    /// are still written (a missing partition only affects attribution).
    async fn maintain(&mut self) -> Result<(), LedgerError> {
        if !self.maintenance_due() {
            return Ok(());
        }
        let r = async {
            let created = self.store.ensure_partitions(self.cfg.partitions_ahead).await?;
            let dropped = match self.cfg.retention_days {
                Some(days) => {
                    self.store
                        .drop_partitions_older_than(Duration::from_secs(u64::from(days) * 86_400))
                        .await?
                }
                None => 0,
            };
            Ok::<_, LedgerError>((created, dropped))
        }
        .await;
        match r {
            Ok((created, dropped)) => {
                info!(created, dropped, "ledger attribution partitions maintained");
                self.last_maintenance = Some(Instant::now());
                Ok(())
            }
            Err(e) if e.is_transient() => Err(e),
            Err(error) => {
                error!(%error, "ledger partition maintenance failed; retrying in a minute");
                self.last_maintenance =
                    Instant::now().checked_sub(MAINTENANCE_EVERY - Duration::from_secs(60));
                Ok(())
            }
        }
    }

    async fn replay_spool(&mut self) -> Result<(), LedgerError> {
        while let Some(path) = self.shared.spool.take_for_replay()? {
            let mut reader = SpoolReader::open(&path)?;
            let mut total = 0u64;
            loop {
                let batch = reader
                    .next_batch(self.cfg.batch_size)
                    .map_err(|source| LedgerError::Spool {
                        path: path.display().to_string(),
                        source,
                    })?;
                if batch.is_empty() {
                    break;
                }
                let started = Instant::now();
                match self.store.insert_events(&batch).await {
                    Ok(inserted) => {
                        self.shared
                            .metrics
                            .events_write_seconds
                            .observe(started.elapsed().as_secs_f64());
                        self.shared.metrics.events_written.inc_by(inserted);
                    }
                    Err(e) if !e.is_row_rejection() => return Err(e),
                    Err(e) => {
                        // One event Postgres refuses for good must not hold back the whole spool.
                        warn!(error = %e, events = batch.len(), path = %path.display(), "ledger rejected a replayed batch; inserting one by one");
                        for ev in &batch {
                            match self.store.insert_events(std::slice::from_ref(ev)).await {
                                Ok(inserted) => self.shared.metrics.events_written.inc_by(inserted),
                                Err(err) if err.is_row_rejection() => self.shared.reject(ev, &err),
                                Err(err) => return Err(err),
                            }
                        }
                    }
                }
                self.shared.metrics.events_replayed.inc_by(batch.len() as u64);
                total += batch.len() as u64;
            }
            self.shared
                .metrics
                .spool_corrupt_lines
                .inc_by(reader.corrupt_lines);
            if reader.corrupt_lines > 0 {
                warn!(lines = reader.corrupt_lines, path = %path.display(), "skipped unreadable spool lines");
            }
            // Only now, after every batch committed, is the file removed.
            self.shared.spool.finish_replay()?;
            self.shared
                .metrics
                .spool_bytes
                .set(i64::try_from(self.shared.spool.bytes()).unwrap_or(i64::MAX));
            info!(events = total, "ledger spool replayed");
        }
        Ok(())
    }

    async fn shutdown(mut self) {
        // No new sends from here on; what is buffered can still be received (tokio mpsc `close`).
        self.events_rx.close();
        self.attr_rx.close();
        self.flush_rx.close();
        while let Some(e) = self.events_rx.recv().await {
            self.pending_events.push(e);
        }
        while let Some(rows) = self.attr_rx.recv().await {
            self.pending_rows.extend(rows);
        }
        let deadline = Instant::now() + self.cfg.shutdown_timeout;
        let mut flushed = false;
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.write_all()).await {
                Ok(Ok(())) => {
                    flushed = true;
                    break;
                }
                Ok(Err(e)) if !e.is_transient() => break,
                Ok(Err(_)) => {
                    // Events are already spooled by write_all; retry attribution until the deadline.
                    let wait = self
                        .next_attempt
                        .saturating_duration_since(Instant::now())
                        .min(left);
                    tokio::time::sleep(wait).await;
                }
                Err(_) => break,
            }
        }
        if !self.pending_events.is_empty() {
            let evs = std::mem::take(&mut self.pending_events);
            if !spool_events(&self.shared, &evs) {
                self.shared.metrics.events_dropped.inc_by(evs.len() as u64);
                error!(
                    events = evs.len(),
                    "cannot spool ledger events at shutdown; they are lost"
                );
            }
        }
        if !self.pending_rows.is_empty() {
            let n = self.pending_rows.len();
            warn!(
                rows = n,
                "ledger database unavailable at shutdown; attribution rows shed"
            );
            self.shared.metrics.shed(ShedReason::Shutdown, n);
            self.pending_rows.clear();
            self.release_rows(n);
        }
        self.store.close().await;
        info!(
            flushed,
            spool_bytes = self.shared.spool.bytes(),
            "ledger writer stopped"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Actor, EventKind};

    fn ev(i: usize) -> Event {
        // An hour old, so the pending-age gauge shows they are still held.
        Event::new(EventKind::Quarantined, Actor::Checker, "b", format!("s{i}"))
            .at(Utc::now() - TimeDelta::hours(1))
    }

    /// A port nothing listens on: connecting is refused at once (a transient error).
    fn dead_url() -> String {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        format!("postgres://egress@127.0.0.1:{port}/egress")
    }

    fn writer(url: String, dir: &std::path::Path) -> (LedgerHandle, LedgerWriter) {
        writer_with(url, dir, Duration::from_millis(300))
    }

    fn writer_with(url: String, dir: &std::path::Path, connect: Duration) -> (LedgerHandle, LedgerWriter) {
        let mut cfg = WriterConfig::new(url, dir.join("spool"));
        cfg.batch_size = 2;
        cfg.event_queue = 1;
        // sqlx retries a refused connect until this deadline.
        cfg.store.connect_timeout = connect;
        LedgerWriter::build(cfg, &Registry::new()).unwrap()
    }

    #[tokio::test]
    async fn a_failed_spool_write_keeps_events_in_memory_up_to_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let (handle, mut w) = writer(dead_url(), dir.path());
        // The spool refuses everything (as a full or read-only disk would).
        w.shared = Arc::new(Shared {
            spool: Spool::new(dir.path().join("full"), 1).unwrap(),
            metrics: Metrics::register(&Registry::new()).unwrap(),
            attr_rows: AtomicUsize::new(0),
            attr_cap: 10,
            torn_reported: AtomicU64::new(0),
        });
        let handle = LedgerHandle {
            shared: w.shared.clone(),
            ..handle
        };
        let evs: Vec<Event> = (0..2).map(ev).collect();
        w.pending_events = evs.clone();
        assert!(w.write_all().await.unwrap_err().is_transient());
        assert_eq!(w.pending_events, evs, "kept for the next attempt");
        assert_eq!(handle.stats().events_dropped, 0);
        assert!(w.shared.metrics.pending_oldest_age.get() >= 3000.0);

        // Beyond the cap (batch_size 2 + event_queue 1) the newest are dropped, and counted.
        let evs: Vec<Event> = (0..5).map(ev).collect();
        w.pending_events = evs.clone();
        w.next_attempt = Instant::now();
        assert!(w.write_all().await.is_err());
        assert_eq!(w.pending_events, evs[..3].to_vec());
        assert_eq!(handle.stats().events_dropped, 2);
    }

    #[tokio::test]
    async fn with_a_working_spool_failed_writes_still_spool() {
        let dir = tempfile::tempdir().unwrap();
        let (handle, mut w) = writer(dead_url(), dir.path());
        w.pending_events = (0..3).map(ev).collect();
        assert!(w.write_all().await.is_err());
        assert!(w.pending_events.is_empty());
        let stats = handle.stats();
        assert_eq!((stats.events_spooled, stats.events_dropped), (3, 0), "{stats:?}");
    }

    #[tokio::test]
    async fn a_cancelled_one_by_one_insert_leaves_the_events_pending() {
        // Accepts TCP (the kernel's backlog) but never answers: every insert hangs.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("postgres://egress@{}/egress", silent.local_addr().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let (_handle, mut w) = writer_with(url, dir.path(), Duration::from_secs(30));
        let evs: Vec<Event> = (0..3).map(ev).collect();
        w.pending_events = evs.clone();
        // What the shutdown deadline does to a write in progress.
        let r = tokio::time::timeout(Duration::from_millis(200), w.insert_one_by_one(3)).await;
        assert!(r.is_err(), "the insert should hang");
        assert_eq!(
            w.pending_events, evs,
            "nothing confirmed, so nothing leaves pending"
        );
        drop(silent);
    }

    #[tokio::test]
    async fn events_postgres_could_never_store_are_rejected_at_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let (handle, mut w) = writer(dead_url(), dir.path());
        handle.record_event(Event::new(
            EventKind::Quarantined,
            Actor::Checker,
            "b",
            "s".repeat(257),
        ));
        handle.record_event(Event::new(EventKind::Quarantined, Actor::Checker, "", "s"));
        let ok = ev(1);
        handle.record_event(ok.clone());
        assert_eq!(w.events_rx.try_recv().unwrap(), ok);
        assert!(w.events_rx.try_recv().is_err());
        let stats = handle.stats();
        assert_eq!((stats.events_dropped, stats.events_spooled), (2, 0), "{stats:?}");
        assert_eq!(w.shared.metrics.events_rejected.get(), 2);
    }

    #[tokio::test]
    async fn torn_spool_fragments_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("spool"), "{\"id\":").unwrap();
        let (_handle, w) = writer(dead_url(), dir.path());
        assert_eq!(w.shared.metrics.spool_corrupt_lines.get(), 1);
    }
}
