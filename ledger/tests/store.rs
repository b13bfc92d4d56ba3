//! The schema and the store against a real PostgreSQL 15 (the harness's private cluster).

use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use egress_harness::postgres::Postgres;
use egress_ledger::{Actor, AttributionRow, ClientHash, Event, EventKind, LedgerError, ServerRef, Store};

fn t(s: &str) -> DateTime<Utc> {
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap()
        .with_timezone(&chrono::Utc)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn row(
    hash: u64,
    server: &str,
    exit: Option<&str>,
    first: DateTime<Utc>,
    last: DateTime<Utc>,
    n: u64,
) -> AttributionRow {
    // Postgres keeps microseconds.
    let first = first.trunc_subsecs(6);
    let last = last.trunc_subsecs(6);
    let window_start = first
        - TimeDelta::seconds(first.timestamp().rem_euclid(60))
        - TimeDelta::nanoseconds(first.timestamp_subsec_nanos().into());
    AttributionRow {
        client_hash: ClientHash(hash),
        backend: "egress".into(),
        server: server.into(),
        exit_ip: exit.map(ip),
        window_start,
        first_seen: first,
        last_seen: last,
        requests: n,
    }
}

async fn count(store: &Store, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(store.pool())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_to_an_empty_database_and_then_are_a_no_op() -> anyhow::Result<()> {
    let pg = tokio::task::spawn_blocking(Postgres::start).await??;
    // The harness already applied migrations/ to `egress`; use a second, empty database.
    let admin = Store::connect(pg.url()).await?;
    sqlx::query("CREATE DATABASE empty_db")
        .execute(admin.pool())
        .await?;
    let url = format!("{}/empty_db", &pg.url()[..pg.url().rfind('/').unwrap()]);
    let store = Store::connect(&url).await?;
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'events'"
        )
        .await,
        0
    );
    store.migrate().await?;
    let applied = count(&store, "SELECT count(*) FROM _sqlx_migrations").await;
    assert!(applied >= 1);
    let tables = count(
        &store,
        "SELECT count(*) FROM pg_class WHERE relname IN ('events', 'attribution', 'exit_ip_intervals')",
    )
    .await;
    assert_eq!(tables, 3);
    // Second run: nothing new, no error.
    store.migrate().await?;
    assert_eq!(
        count(&store, "SELECT count(*) FROM _sqlx_migrations").await,
        applied
    );
    // And the harness's database (migrated by the same embedded migrator) agrees.
    admin.migrate().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_idempotent_append_only_and_build_the_timeline() -> anyhow::Result<()> {
    let pg = tokio::task::spawn_blocking(Postgres::start).await??;
    let store = Store::connect(pg.url()).await?;
    let e1 = Event::new(EventKind::ExitIpObserved, Actor::Checker, "egress", "s1")
        .at(t("2026-11-20T00:00:00Z"))
        .new_ip(ip("203.0.113.1"));
    let e2 = Event::new(EventKind::ExitIpObserved, Actor::Checker, "egress", "s1")
        .at(t("2026-11-20T01:00:00Z"))
        .new_ip(ip("203.0.113.1")); // same IP again: no new interval
    let e3 = Event::new(EventKind::Rotated, Actor::Rotator, "egress", "s1")
        .at(t("2026-11-20T02:00:00Z"))
        .reason("scheduled")
        .old_ip(ip("203.0.113.1"))
        .new_ip(ip("203.0.113.2"))
        .detail(serde_json::json!({"location": "kr"}));
    let q = Event::new(EventKind::Quarantined, Actor::Checker, "egress", "s1")
        .at(t("2026-11-20T01:30:00Z"))
        .reason("connect_timeout");
    let batch = vec![e1.clone(), e2.clone(), e3.clone(), q.clone()];
    assert_eq!(store.insert_events(&batch).await?, 4);
    // A replay writes nothing twice.
    assert_eq!(store.insert_events(&batch).await?, 0);
    assert_eq!(count(&store, "SELECT count(*) FROM events").await, 4);

    // Append-only: UPDATE and DELETE are refused.
    assert!(
        sqlx::query("UPDATE events SET reason = 'x'")
            .execute(store.pool())
            .await
            .is_err()
    );
    assert!(
        sqlx::query("DELETE FROM events")
            .execute(store.pool())
            .await
            .is_err()
    );

    let timeline = store.exit_ip_timeline(Some(&"egress/s1".parse()?)).await?;
    assert_eq!(timeline.len(), 2, "{timeline:?}");
    assert_eq!(
        (timeline[0].ip, timeline[0].valid_from, timeline[0].valid_to),
        (ip("203.0.113.1"), e1.at, Some(e3.at))
    );
    assert_eq!((timeline[1].ip, timeline[1].valid_to), (ip("203.0.113.2"), None));
    assert_eq!(store.last_exit_ip("egress", "s1").await?, Some(ip("203.0.113.2")));
    assert_eq!(store.last_exit_ip("egress", "s9").await?, None);
    let current = store.current_exit_ips().await?;
    assert_eq!(
        current.get(&("egress".to_owned(), "s1".to_owned())),
        Some(&ip("203.0.113.2"))
    );
    assert_eq!(current.len(), 1);

    // history: ordered, complete, round-trips every field.
    let hist = store.history(&"s1".parse()?, t("2026-11-19T00:00:00Z")).await?;
    assert_eq!(hist, vec![e1.clone(), e2, q, e3.clone()]);
    let recent = store
        .history(&"egress/s1".parse()?, t("2026-11-20T01:45:00Z"))
        .await?;
    assert_eq!(recent, vec![e3]);
    match store
        .history(&"egress/nope".parse()?, t("2026-11-19T00:00:00Z"))
        .await
    {
        Err(LedgerError::UnknownServer(s)) => assert_eq!(s, "egress/nope"),
        other => panic!("expected UnknownServer, got {other:?}"),
    }
    assert!("a/b/c".parse::<ServerRef>().is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attribution_upserts_merge_and_partitions_drop_by_day() -> anyhow::Result<()> {
    let pg = tokio::task::spawn_blocking(Postgres::start).await??;
    let store = Store::connect(pg.url()).await?;
    let now = Utc::now().trunc_subsecs(6);
    let f = now - TimeDelta::minutes(10);
    let a = row(
        u64::MAX,
        "s1",
        Some("203.0.113.1"),
        f,
        f + TimeDelta::seconds(5),
        2,
    );
    let mut b = a.clone();
    b.first_seen = (f - TimeDelta::seconds(1)).max(a.window_start);
    b.last_seen = f + TimeDelta::seconds(20);
    b.requests = 3;
    let no_ip = row(7, "s1", None, f, f, 1);
    // Same key twice within one batch, then again in a second batch; NULL exit IPs merge too.
    store
        .upsert_attribution(&[a.clone(), b.clone(), no_ip.clone()])
        .await?;
    store.upsert_attribution(&[a.clone(), no_ip.clone()]).await?;
    let rows: Vec<(i64, i64, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT client_hash, requests, first_seen, last_seen FROM attribution ORDER BY client_hash",
    )
    .fetch_all(store.pool())
    .await?;
    assert_eq!(rows.len(), 2);
    let big = rows.iter().find(|r| r.0 == -1).expect("u64::MAX stored as -1");
    assert_eq!(big.1, 7);
    assert_eq!(big.2, a.first_seen.min(b.first_seen));
    assert_eq!(big.3, a.last_seen.max(b.last_seen));
    let small = rows.iter().find(|r| r.0 == 7).unwrap();
    assert_eq!(small.1, 2);
    // A batch mixing a new key with an existing one: the fast plain INSERT hits the unique key,
    // the savepoint undoes it, and the merge path stores both exactly once.
    let fresh = row(8, "s1", None, f, f, 4);
    store.upsert_attribution(&[no_ip.clone(), fresh]).await?;
    let mixed: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT client_hash, requests FROM attribution WHERE client_hash IN (7, 8) ORDER BY 1",
    )
    .fetch_all(store.pool())
    .await?;
    assert_eq!(mixed, vec![(7, 3), (8, 4)]);

    // Retention: a partition from 40 days ago is dropped as a whole, the current ones stay.
    let old_day = (now - TimeDelta::days(40)).date_naive();
    store.ensure_partition(old_day).await?;
    let old_row = row(
        9,
        "s1",
        None,
        now - TimeDelta::days(40),
        now - TimeDelta::days(40),
        1,
    );
    store.upsert_attribution(&[old_row]).await?;
    let parts = "SELECT count(*) FROM pg_inherits WHERE inhparent = 'attribution'::regclass";
    store.ensure_partitions(3).await?;
    let before = count(&store, parts).await;
    assert!(before >= 6, "yesterday, today, 3 ahead and the old day: {before}");
    let dropped = store
        .drop_partitions_older_than(Duration::from_secs(30 * 86_400))
        .await?;
    assert_eq!(dropped, 1);
    assert_eq!(count(&store, parts).await, before - 1);
    assert_eq!(
        count(&store, "SELECT count(*) FROM attribution WHERE client_hash = 9").await,
        0
    );
    // The three current keys (u64::MAX, 7, 8) stay.
    assert_eq!(count(&store, "SELECT count(*) FROM attribution").await, 3);
    // Idempotent.
    assert_eq!(
        store
            .drop_partitions_older_than(Duration::from_secs(30 * 86_400))
            .await?,
        0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_joins_attribution_to_the_timeline() -> anyhow::Result<()> {
    let pg = tokio::task::spawn_blocking(Postgres::start).await??;
    let store = Store::connect(pg.url()).await?;
    let r = t("2026-11-20T03:00:00Z");
    store
        .insert_events(&[
            Event::new(EventKind::ExitIpObserved, Actor::Checker, "egress", "s1")
                .at(r - TimeDelta::hours(1))
                .new_ip(ip("203.0.113.1")),
            Event::new(EventKind::Rotated, Actor::Rotator, "egress", "s1")
                .at(r)
                .old_ip(ip("203.0.113.1"))
                .new_ip(ip("203.0.113.2")),
        ])
        .await?;
    // Client 1 just before the rotation; client 2 just after; client 3 right after, but the agent had
    // not seen the change yet (it recorded the old IP): the timeline wins.
    let c1 = row(
        1,
        "s1",
        Some("203.0.113.1"),
        r - TimeDelta::seconds(50),
        r - TimeDelta::seconds(10),
        4,
    );
    let c2 = row(
        2,
        "s1",
        Some("203.0.113.2"),
        r + TimeDelta::seconds(10),
        r + TimeDelta::seconds(30),
        2,
    );
    let c3 = row(
        3,
        "s1",
        Some("203.0.113.1"),
        r + TimeDelta::seconds(5),
        r + TimeDelta::seconds(6),
        1,
    );
    // Client 4 on a server with no timeline at all: the agent's IP is all we have.
    let c4 = row(4, "s2", Some("203.0.113.9"), r, r, 1);
    store.upsert_attribution(&[c1, c2, c3, c4]).await?;

    let hashes = |rows: &[egress_ledger::WhoIpRow]| rows.iter().map(|r| r.client_hash.0).collect::<Vec<_>>();
    let before = store
        .who_ip(ip("203.0.113.1"), r - TimeDelta::seconds(20), Duration::ZERO)
        .await?;
    assert_eq!(hashes(&before), vec![1]);
    let old_after = store
        .who_ip(ip("203.0.113.1"), r + TimeDelta::seconds(5), Duration::ZERO)
        .await?;
    assert!(old_after.is_empty(), "{old_after:?}");
    let new_after = store
        .who_ip(
            ip("203.0.113.2"),
            r + TimeDelta::seconds(5),
            Duration::from_secs(30),
        )
        .await?;
    assert_eq!(hashes(&new_after), vec![3, 2]);
    assert!(new_after[0].agent_ip_differs && !new_after[1].agent_ip_differs);
    assert!(!new_after[0].agent_ip_unknown && !new_after[1].agent_ip_unknown);
    // Client 5 right after the rotation, tagged `exit=unknown` by the agent: unknown, not differs.
    store
        .upsert_attribution(&[row(
            5,
            "s1",
            None,
            r + TimeDelta::seconds(7),
            r + TimeDelta::seconds(8),
            1,
        )])
        .await?;
    let with_unknown = store
        .who_ip(
            ip("203.0.113.2"),
            r + TimeDelta::seconds(5),
            Duration::from_secs(30),
        )
        .await?;
    let c5 = with_unknown
        .iter()
        .find(|w| w.client_hash.0 == 5)
        .expect("client 5");
    assert!(c5.agent_ip_unknown && !c5.agent_ip_differs, "{c5:?}");
    let wide = store
        .who_ip(ip("203.0.113.1"), r, Duration::from_secs(300))
        .await?;
    assert_eq!(hashes(&wide), vec![1]);
    let fallback = store.who_ip(ip("203.0.113.9"), r, Duration::from_secs(1)).await?;
    let too_wide = store
        .who_ip(ip("203.0.113.9"), r, Duration::from_secs(2 * 86_400))
        .await
        .unwrap_err();
    assert!(too_wide.to_string().contains("too wide"), "{too_wide}");
    assert_eq!(hashes(&fallback), vec![4]);

    let c3_used = store
        .who_client(ClientHash(3), r - TimeDelta::hours(1), r + TimeDelta::hours(1))
        .await?;
    assert_eq!(c3_used.len(), 1);
    assert_eq!(c3_used[0].exit_ip, Some(ip("203.0.113.2")));
    let c4_used = store
        .who_client(ClientHash(4), r - TimeDelta::hours(1), r + TimeDelta::hours(1))
        .await?;
    assert_eq!(c4_used[0].exit_ip, Some(ip("203.0.113.9")));
    assert!(
        store
            .who_client(ClientHash(4), r + TimeDelta::hours(1), r)
            .await
            .is_err()
    );
    Ok(())
}

#[tokio::test]
async fn an_unreachable_database_is_a_clear_error() {
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://egress:secret@127.0.0.1:{port}/egress");
    let err = Store::connect(&url).await.unwrap_err();
    assert_eq!(err.kind(), "unreachable", "{err}");
    let text = err.to_string();
    assert!(
        text.contains("unreachable") && text.contains(&port.to_string()),
        "{text}"
    );
    assert!(!text.contains("secret"), "{text}");
    let bad = Store::connect("mysql://x").await.unwrap_err();
    assert_eq!(bad.kind(), "invalid_input", "{bad}");
}
