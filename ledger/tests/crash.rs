//! A writer process killed (SIGKILL) with events in its spool; a new writer replays them, once.
//!
//! The "writer process" is this test binary re-executed with `EGRESS_LEDGER_CRASH_CHILD` set, running
//! only the ignored test `crash_child` (no `cargo run --example` in the loop: the binary is already
//! built). The child points its writer at a port where nothing listens, records N events, waits until
//! all N are in the spool, writes a marker file, and sleeps until killed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use egress_harness::postgres::Postgres;
use egress_ledger::spool::SpoolReader;
use egress_ledger::{Actor, Event, EventKind, LedgerWriter, Store, WriterConfig};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const CHILD_ENV: &str = "EGRESS_LEDGER_CRASH_CHILD";
const N: u64 = 200;

fn event(i: u64) -> Event {
    Event::new(
        EventKind::Drained,
        Actor::Rotator,
        "egress",
        format!("s{}", i % 7),
    )
    .with_id(Uuid::from_u128(
        0xe9e5_0000_0000_7000_8000_0000_0000_0000 | u128::from(i),
    ))
    .detail(serde_json::json!({ "seq": i }))
}

/// Kills the child on drop (a failing assertion must not leave it running).
struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_writer_leaves_a_spool_that_a_new_writer_replays_once() -> anyhow::Result<()> {
    let pg = tokio::task::spawn_blocking(Postgres::start).await??;
    let dir = tempfile::tempdir()?;
    let spool = dir.path().join("ledger.spool");
    let ready = dir.path().join("child.ready");
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();

    let child = Command::new(std::env::current_exe()?)
        .args([
            "--ignored",
            "--exact",
            "crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .env(
            "CHILD_DATABASE_URL",
            format!("postgres://egress@127.0.0.1:{dead_port}/egress"),
        )
        .env("CHILD_SPOOL", &spool)
        .env("CHILD_READY", &ready)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut child = Child(child);
    let came_up = egress_harness::wait_until_async(Duration::from_secs(60), || {
        let ready = ready.clone();
        async move { ready.exists() }
    })
    .await;
    assert!(came_up, "child did not spool its events in time");
    // SIGKILL: no shutdown path runs.
    child.0.kill()?;
    let status = child.0.wait()?;
    assert!(!status.success());

    // The spool holds exactly the N events.
    let mut reader = SpoolReader::open(&spool)?;
    let spooled = reader.next_batch(10_000)?;
    assert_eq!(spooled.len() as u64, N);
    assert_eq!(reader.corrupt_lines, 0);

    // Pretend an earlier replay committed the first half before it crashed.
    let store = Store::connect(pg.url()).await?;
    let half: Vec<Event> = (0..N / 2).map(event).collect();
    assert_eq!(store.insert_events(&half).await?, N / 2);

    let registry = prometheus::Registry::new();
    let shutdown = CancellationToken::new();
    let mut cfg = WriterConfig::new(pg.url(), &spool);
    cfg.batch_size = 16;
    let (handle, task) = LedgerWriter::spawn(cfg, &registry, shutdown.clone())?;
    handle.flush().await?;
    let stats = handle.stats();
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), task).await??;

    assert_eq!(stats.events_replayed, N, "{stats:?}");
    assert_eq!(
        stats.events_written,
        N - N / 2,
        "the committed half is not written twice: {stats:?}"
    );
    let rows: Vec<(Uuid, serde_json::Value)> = sqlx::query_as("SELECT id, detail FROM events")
        .fetch_all(store.pool())
        .await?;
    let mut seen: HashMap<Uuid, u32> = HashMap::new();
    for (id, _) in &rows {
        *seen.entry(*id).or_default() += 1;
    }
    assert_eq!(rows.len() as u64, N);
    for i in 0..N {
        assert_eq!(seen.get(&event(i).id), Some(&1), "event {i} exactly once");
    }
    assert!(!spool.exists() || std::fs::metadata(&spool)?.len() == 0);
    assert!(!PathBuf::from(format!("{}.replaying", spool.display())).exists());
    Ok(())
}

/// The child half of the test above; does nothing unless started by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run only as the child process of a_killed_writer_leaves_a_spool_that_a_new_writer_replays_once"]
async fn crash_child() -> anyhow::Result<()> {
    if std::env::var_os(CHILD_ENV).is_none() {
        return Ok(());
    }
    let url = std::env::var("CHILD_DATABASE_URL")?;
    let spool = PathBuf::from(std::env::var("CHILD_SPOOL")?);
    let ready = PathBuf::from(std::env::var("CHILD_READY")?);
    let mut cfg = WriterConfig::new(url, spool);
    cfg.event_queue = 4;
    cfg.backoff_max = Duration::from_millis(200);
    cfg.store.connect_timeout = Duration::from_millis(500);
    let registry = prometheus::Registry::new();
    let (handle, _task) = LedgerWriter::spawn(cfg, &registry, CancellationToken::new())?;
    for i in 0..N {
        handle.record_event(event(i));
    }
    let all_spooled = egress_harness::wait_until_async(Duration::from_secs(30), || {
        let h = handle.clone();
        async move { h.stats().events_spooled == N }
    })
    .await;
    anyhow::ensure!(all_spooled, "child: events not spooled: {:?}", handle.stats());
    std::fs::write(&ready, b"ready")?;
    // Wait to be killed (bounded: the parent kills within seconds).
    tokio::time::sleep(Duration::from_secs(60)).await;
    Ok(())
}
