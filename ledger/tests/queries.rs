//! The rotator's point queries and the advisory locks against a real PostgreSQL (the harness's
//! private cluster).

use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use egress_harness::postgres::Postgres;
use egress_ledger::{Actor, AdvisoryLock, Event, EventKind, Store};

fn t(s: &str) -> DateTime<Utc> {
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap()
        .with_timezone(&chrono::Utc)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ev(kind: EventKind, actor: Actor, backend: &str, server: &str, at: &str) -> Event {
    Event::new(kind, actor, backend, server).at(t(at))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_location_last_kind_and_last_exit_ip_change() -> anyhow::Result<()> {
    let pg = tokio::task::spawn_blocking(Postgres::start).await??;
    let store = Store::connect(pg.url()).await?;
    use Actor::{Checker, Rotator};
    use EventKind::*;
    let events = vec![
        ev(ExitIpObserved, Checker, "egress", "s1", "2026-11-20T00:00:00Z").new_ip(ip("203.0.113.1")),
        ev(Rotated, Rotator, "egress", "s1", "2026-11-20T01:00:00Z")
            .old_ip(ip("203.0.113.1"))
            .new_ip(ip("203.0.113.2"))
            .detail(serde_json::json!({"location": "kr"})),
        ev(Rotated, Rotator, "egress", "s1", "2026-11-20T02:00:00Z")
            .old_ip(ip("203.0.113.2"))
            .new_ip(ip("203.0.113.3"))
            .detail(serde_json::json!({"location": "nl"})),
        ev(ExitIpUnknown, Rotator, "egress", "s1", "2026-11-20T03:00:00Z"),
        ev(RotationFailed, Rotator, "egress", "s1", "2026-11-20T03:00:01Z").reason("tunnel did not come up"),
        // A kind that does not move the timeline, even with a new_ip, is no exit-IP change.
        ev(Quarantined, Checker, "egress", "s1", "2026-11-20T04:00:00Z").new_ip(ip("203.0.113.9")),
        // Same server name in another backend: not the same server.
        ev(Rotated, Rotator, "other", "s1", "2026-11-20T05:00:00Z")
            .new_ip(ip("198.51.100.1"))
            .detail(serde_json::json!({"location": "us"})),
        // Rotated without a recorded location.
        ev(Rotated, Rotator, "egress", "s2", "2026-11-20T01:00:00Z").new_ip(ip("198.51.100.2")),
        ev(ExitIpLeak, Checker, "egress", "s2", "2026-11-20T06:00:00Z").new_ip(ip("198.51.100.3")),
        ev(Restored, Checker, "egress", "s3", "2026-11-20T00:00:00Z"),
    ];
    assert_eq!(store.insert_events(&events).await?, events.len() as u64);

    assert_eq!(
        store.last_rotation_location("egress", "s1").await?.as_deref(),
        Some("nl")
    );
    assert_eq!(
        store.last_rotation_location("other", "s1").await?.as_deref(),
        Some("us")
    );
    assert_eq!(store.last_rotation_location("egress", "s2").await?, None);
    assert_eq!(store.last_rotation_location("egress", "s3").await?, None);
    assert_eq!(store.last_rotation_location("egress", "s9").await?, None);

    assert_eq!(
        store.last_event_kind("egress", "s1", Rotator).await?,
        Some(RotationFailed)
    );
    assert_eq!(
        store.last_event_kind("egress", "s1", Checker).await?,
        Some(Quarantined)
    );
    assert_eq!(
        store.last_event_kind("egress", "s2", Rotator).await?,
        Some(Rotated)
    );
    assert_eq!(store.last_event_kind("egress", "s3", Rotator).await?, None);
    assert_eq!(
        store.last_event_kind("egress", "s3", Actor::Operator).await?,
        None
    );

    assert_eq!(
        store.last_exit_ip_change("egress", "s1").await?,
        Some(t("2026-11-20T02:00:00Z"))
    );
    assert_eq!(
        store.last_exit_ip_change("egress", "s2").await?,
        Some(t("2026-11-20T06:00:00Z"))
    );
    assert_eq!(store.last_exit_ip_change("egress", "s3").await?, None);
    assert_eq!(store.last_exit_ip_change("egress", "s9").await?, None);
    Ok(())
}

/// The backend pid holding advisory lock `key` (a bigint key: classid = high half, objid = low).
async fn holder(store: &Store, key: i64) -> Option<i32> {
    sqlx::query_scalar::<_, i32>(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1
           AND classid::int8 = ($1 >> 32) AND objid::int8 = ($1 & 4294967295)",
    )
    .bind(key)
    .fetch_optional(store.pool())
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_locks_exclude_each_other_and_die_with_their_session() -> anyhow::Result<()> {
    let pg = tokio::task::spawn_blocking(Postgres::start).await??;
    let store = Store::connect(pg.url()).await?;
    let other = Store::connect(pg.url()).await?;
    let key = 0x0123_4567_89ab_cdef_i64;

    // One holder at a time, across stores and sessions.
    let lock = store.try_lock(key).await?.expect("free lock");
    assert_eq!(lock.key(), key);
    assert!(holder(&store, key).await.is_some());
    assert!(other.try_lock(key).await?.is_none());
    assert!(
        store.try_lock(key).await?.is_none(),
        "a second session of the same store"
    );
    let mut session = AdvisoryLock::connect(pg.url()).await?;
    assert!(!session.try_take(key).await?);
    // Another key is independent.
    assert!(session.try_take(key + 1).await?);

    // Releasing frees it (the server ends the session right after the client's goodbye); dropping
    // does too.
    lock.release().await;
    let mut lock = None;
    for _ in 0..50 {
        lock = other.try_lock(key).await?;
        if lock.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(lock.is_some(), "a released SessionLock must be free");
    drop(lock);
    let mut taken = false;
    for _ in 0..50 {
        if session.try_take(key).await? {
            taken = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(taken, "a dropped SessionLock must end its session");
    // The holding session: taking again succeeds, pings answer, others are refused.
    assert!(session.try_take(key).await?);
    session.ping().await?;
    assert!(store.try_lock(key).await?.is_none());

    // The session dies (as when its holder loses the database): the lock goes with it, and the
    // ping says so.
    let pid = holder(&store, key).await.expect("held");
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(store.pool())
        .await?;
    assert!(killed);
    let mut lost = false;
    for _ in 0..50 {
        if session.ping().await.is_err() {
            lost = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(lost, "a terminated session must fail its ping");
    // The backend releases its locks as it exits, a moment after the client sees the session end.
    let mut freed = None;
    for _ in 0..50 {
        if let Some(l) = store.try_lock(key).await? {
            freed = Some(l);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lock = freed.expect("the dead session's lock is free within 5 s");
    lock.release().await;
    session.close().await;

    // An unreachable database is an error, classified, not a hang.
    let port = egress_harness::ports::free_port()?;
    let err = AdvisoryLock::connect(&format!("postgres://egress:secret@127.0.0.1:{port}/egress"))
        .await
        .expect_err("nothing listens there");
    assert_eq!(err.kind(), "unreachable");
    assert!(!err.to_string().contains("secret"), "{err}");
    Ok(())
}
