//! A Postgres outage under load: events flow, Postgres stops for 30 s (EGRESS_LEDGER_OUTAGE_SECS),
//! starts again; every state event is stored exactly once, and the attribution rows missing are exactly
//! the ones the shed counter reports.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{SubsecRound, TimeDelta, Utc};
use egress_harness::postgres::Postgres;
use egress_ledger::{Actor, AttributionRow, ClientHash, Event, EventKind, LedgerWriter, Store, WriterConfig};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_state_event_is_lost_across_a_postgres_outage() -> anyhow::Result<()> {
    let outage_secs: u64 = std::env::var("EGRESS_LEDGER_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let mut pg = tokio::task::spawn_blocking(Postgres::start).await??;
    let url = pg.url().to_owned();
    let dir = tempfile::tempdir()?;
    let mut cfg = WriterConfig::new(&url, dir.path().join("ledger.spool"));
    cfg.event_queue = 64;
    cfg.attribution_queue = 500; // 500 rows/s are produced: any outage over a second sheds
    cfg.batch_size = 256;
    cfg.flush_interval = Duration::from_millis(100);
    cfg.backoff_max = Duration::from_secs(1);
    cfg.shutdown_timeout = Duration::from_secs(10);
    let registry = prometheus::Registry::new();
    let shutdown = CancellationToken::new();
    let (handle, task) = LedgerWriter::spawn(cfg, &registry, shutdown.clone())?;

    // Producer: one state event and five distinct attribution rows every 10 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (handle, stop) = (handle.clone(), stop.clone());
        tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut rows_submitted = 0u64;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let e = Event::new(
                    EventKind::Quarantined,
                    Actor::Checker,
                    "egress",
                    format!("s{}", i % 28),
                )
                .reason("connect_timeout")
                .detail(serde_json::json!({ "seq": i }));
                ids.push(e.id);
                handle.record_event(e);
                let now = Utc::now().trunc_subsecs(6);
                let window_start = now - TimeDelta::milliseconds(now.timestamp_millis().rem_euclid(60_000));
                let rows: Vec<AttributionRow> = (0..5)
                    .map(|k| AttributionRow {
                        client_hash: ClientHash(i * 5 + k),
                        backend: "egress".into(),
                        server: format!("s{}", i % 28),
                        exit_ip: Some("203.0.113.7".parse().unwrap()),
                        window_start,
                        first_seen: now,
                        last_seen: now,
                        requests: 1,
                    })
                    .collect();
                rows_submitted += rows.len() as u64;
                handle.submit_attribution(rows);
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (ids, rows_submitted)
        })
    };

    tokio::time::sleep(Duration::from_secs(2)).await;
    let written_before = handle.stats().events_written;
    assert!(written_before > 0, "events flow before the outage");
    pg = tokio::task::spawn_blocking(move || pg.stop().map(|()| pg)).await??;
    tokio::time::sleep(Duration::from_secs(outage_secs)).await;
    let during = handle.stats();
    assert!(
        during.events_spooled > 0,
        "events were spooled during the outage: {during:?}"
    );
    assert!(
        during.attribution_shed > 0,
        "attribution was shed under pressure: {during:?}"
    );
    pg = tokio::task::spawn_blocking(move || pg.start_again().map(|()| pg)).await??;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let (ids, rows_submitted) = producer.await?;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), task).await??;

    let stats = handle.stats();
    let store = Store::connect(pg.url()).await?;
    let stored: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM events")
        .fetch_all(store.pool())
        .await?;
    let stored_set: HashSet<Uuid> = stored.iter().copied().collect();
    assert_eq!(stored.len(), stored_set.len());
    let produced: HashSet<Uuid> = ids.iter().copied().collect();
    assert_eq!(stored_set, produced, "every state event present exactly once");
    assert_eq!(stats.events_dropped, 0);
    assert_eq!(stats.spool_bytes, 0, "spool replayed and emptied: {stats:?}");
    assert!(stats.events_replayed > 0, "{stats:?}");

    let rows_stored: i64 = sqlx::query_scalar("SELECT count(*) FROM attribution")
        .fetch_one(store.pool())
        .await?;
    let requests_stored: i64 = sqlx::query_scalar("SELECT coalesce(sum(requests), 0)::int8 FROM attribution")
        .fetch_one(store.pool())
        .await?;
    assert_eq!(rows_stored, requests_stored, "distinct keys: nothing merged");
    assert_eq!(
        rows_submitted - rows_stored as u64,
        stats.attribution_shed,
        "missing attribution rows == shed counter ({stats:?}, submitted {rows_submitted})"
    );
    assert_eq!(stats.attribution_written, rows_stored as u64);
    println!(
        "outage {outage_secs}s: events {} (spooled {}, replayed {}), attribution submitted {rows_submitted}, stored {rows_stored}, shed {}",
        ids.len(),
        stats.events_spooled,
        stats.events_replayed,
        stats.attribution_shed
    );
    Ok(())
}

/// The process stops while Postgres is down: shutdown spools every queued event (none was written or
/// even attempted: the flush interval is an hour), and the next writer replays them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_while_postgres_is_down_spools_and_the_next_writer_replays() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let spool = dir.path().join("ledger.spool");
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut cfg = WriterConfig::new(format!("postgres://egress@127.0.0.1:{dead_port}/egress"), &spool);
    cfg.flush_interval = Duration::from_secs(3600);
    cfg.shutdown_timeout = Duration::from_secs(2);
    cfg.store.connect_timeout = Duration::from_millis(500);
    let shutdown = CancellationToken::new();
    let (handle, task) = LedgerWriter::spawn(cfg, &prometheus::Registry::new(), shutdown.clone())?;
    let events: Vec<Event> = (0..100)
        .map(|i| Event::new(EventKind::Restored, Actor::Operator, "egress", format!("s{i}")))
        .collect();
    for e in &events {
        handle.record_event(e.clone());
    }
    let rows = vec![AttributionRow {
        client_hash: ClientHash(1),
        backend: "egress".into(),
        server: "s1".into(),
        exit_ip: None,
        window_start: Utc::now().trunc_subsecs(0),
        first_seen: Utc::now().trunc_subsecs(0),
        last_seen: Utc::now().trunc_subsecs(0),
        requests: 1,
    }];
    handle.submit_attribution(rows);
    assert_eq!(
        handle.stats().events_spooled,
        0,
        "nothing spooled before shutdown"
    );
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), task).await??;
    let stats = handle.stats();
    assert_eq!(stats.events_spooled, 100, "{stats:?}");
    assert_eq!(stats.attribution_shed, 1, "{stats:?}");
    // After the writer stopped, record_event still never loses: it spools.
    let late = Event::new(EventKind::Restored, Actor::Operator, "egress", "late");
    handle.record_event(late.clone());
    assert_eq!(handle.stats().events_spooled, 101);

    let pg = tokio::task::spawn_blocking(Postgres::start).await??;
    let shutdown = CancellationToken::new();
    let (handle, task) = LedgerWriter::spawn(
        WriterConfig::new(pg.url(), &spool),
        &prometheus::Registry::new(),
        shutdown.clone(),
    )?;
    handle.flush().await?;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), task).await??;
    let store = Store::connect(pg.url()).await?;
    let stored: HashSet<Uuid> = sqlx::query_scalar("SELECT id FROM events")
        .fetch_all(store.pool())
        .await?
        .into_iter()
        .collect();
    let mut want: HashSet<Uuid> = events.iter().map(|e| e.id).collect();
    want.insert(late.id);
    assert_eq!(stored, want);
    Ok(())
}

/// A spooled event Postgres refuses for good (a server name over the schema's 256 characters, from a
/// spool written before names were checked) is skipped and counted; the events around it, in the same
/// replay batch, are stored, and the spool is emptied instead of blocking every later write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_in_the_spool_is_skipped_not_blocking() -> anyhow::Result<()> {
    let pg = tokio::task::spawn_blocking(Postgres::start).await??;
    let dir = tempfile::tempdir()?;
    let spool = dir.path().join("ledger.spool");
    let ev = |s: String| Event::new(EventKind::Quarantined, Actor::Checker, "egress", s);
    let good: Vec<Event> = (0..5).map(|i| ev(format!("s{i}"))).collect();
    let poison = ev("x".repeat(300));
    assert!(poison.validate().is_err());
    let mut text = String::new();
    for e in good[..2].iter().chain([&poison]).chain(&good[2..]) {
        text.push_str(&serde_json::to_string(e)?);
        text.push('\n');
    }
    std::fs::write(&spool, text)?;

    let mut cfg = WriterConfig::new(pg.url(), &spool);
    cfg.batch_size = 4; // the poison event shares a batch with good ones
    let shutdown = CancellationToken::new();
    let (handle, task) = LedgerWriter::spawn(cfg, &prometheus::Registry::new(), shutdown.clone())?;
    tokio::time::timeout(Duration::from_secs(20), handle.flush()).await??;
    // Later events flow too.
    let late = ev("late".into());
    handle.record_event(late.clone());
    tokio::time::timeout(Duration::from_secs(20), handle.flush()).await??;
    let stats = handle.stats();
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), task).await??;

    assert_eq!(stats.events_dropped, 1, "{stats:?}");
    assert_eq!(stats.events_replayed, 6, "{stats:?}");
    assert_eq!(stats.spool_bytes, 0, "{stats:?}");
    let store = Store::connect(pg.url()).await?;
    let stored: HashSet<Uuid> = sqlx::query_scalar("SELECT id FROM events")
        .fetch_all(store.pool())
        .await?
        .into_iter()
        .collect();
    let mut want: HashSet<Uuid> = good.iter().map(|e| e.id).collect();
    want.insert(late.id);
    assert_eq!(stored, want);
    Ok(())
}
