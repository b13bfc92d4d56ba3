//! Ledger figures: flush throughput and `who --ip --at` latency on a 30-day database.
//!
//! Usage: `DATABASE_URL=postgres://... cargo run -p egress-ledger --example bench-ledger -- [days] [clients_per_day]`
//! (days 0: the flush figures only)
//! (scripts/bench-ledger starts a private cluster and runs this). The database must be empty; the
//! migrations are applied here. Prints the figures, the data size on disk and an EXPLAIN ANALYZE of
//! the `who --ip` query.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use chrono::{DurationRound, TimeDelta, Utc};
use egress_ledger::{AttributionRow, ClientHash, LedgerWriter, Store, WriterConfig};
use tokio_util::sync::CancellationToken;

const SERVERS: i64 = 28;
const ROTATION_HOURS: i64 = 6;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL").map_err(|_| anyhow::anyhow!("set DATABASE_URL"))?;
    let mut args = std::env::args().skip(1);
    let days: i64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(30);
    let per_day: i64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(100_000);
    let store = Store::connect(&url).await?;
    store.migrate().await?;
    let existing: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(store.pool())
        .await?;
    anyhow::ensure!(existing == 0, "bench-ledger needs an empty database");

    // 1. Flush: 100k distinct aggregated rows, through Store::upsert_attribution and through the writer.
    let now = Utc::now().duration_trunc(TimeDelta::minutes(1))?;
    let make_rows = |salt: u64| -> Vec<AttributionRow> {
        (0..100_000u64)
            .map(|i| AttributionRow {
                client_hash: ClientHash((i ^ salt).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                backend: "egress".into(),
                server: format!("s{}", i % SERVERS as u64),
                exit_ip: Some(IpAddr::from([100, 64, (i % 28) as u8, 1])),
                window_start: now,
                first_seen: now + TimeDelta::seconds((i % 30) as i64),
                last_seen: now + TimeDelta::seconds(30 + (i % 29) as i64),
                requests: 1 + i % 17,
            })
            .collect()
    };
    store.ensure_partitions(1).await?;
    let rows = make_rows(1);
    let started = Instant::now();
    let n = store.upsert_attribution(&rows).await?;
    let store_flush = started.elapsed();
    println!("flush (Store::upsert_attribution, new keys): {n} rows in {store_flush:?}");
    let started = Instant::now();
    let n = store.upsert_attribution(&rows).await?;
    println!(
        "flush (Store::upsert_attribution, all keys merge): {n} rows in {:?}",
        started.elapsed()
    );

    let dir = tempfile::tempdir()?;
    let registry = prometheus::Registry::new();
    let shutdown = CancellationToken::new();
    let mut cfg = WriterConfig::new(&url, dir.path().join("spool"));
    cfg.flush_interval = Duration::from_secs(3600); // only the explicit flush writes
    cfg.batch_size = 200_000;
    let (handle, task) = LedgerWriter::spawn(cfg, &registry, shutdown.clone())?;
    handle.flush().await?; // connect, partitions
    let rows = make_rows(2);
    let started = Instant::now();
    for chunk in rows.chunks(10_000) {
        handle.submit_attribution(chunk.to_vec());
    }
    handle.flush().await?;
    let writer_flush = started.elapsed();
    println!(
        "flush (LedgerWriter submit + flush): 100000 rows in {writer_flush:?} (written {}, shed {})",
        handle.stats().attribution_written,
        handle.stats().attribution_shed
    );
    shutdown.cancel();
    task.await?;
    sqlx::query("TRUNCATE attribution").execute(store.pool()).await?;
    if days == 0 {
        return Ok(()); // flush figures only
    }

    // 2. A 30-day database: `per_day` distinct clients a day (one row each, in one of the day's
    //    windows), 28 servers rotating every 6 hours, the rows' exit IPs consistent with the timeline,
    //    inserted in window order as agents write them.
    let start = (Utc::now() - TimeDelta::days(days - 1)).duration_trunc(TimeDelta::days(1))?;
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO events (id, at, backend, server, kind, actor, old_ip, new_ip)
         SELECT gen_random_uuid(), $1 + make_interval(hours => e * $3::int, mins => s * 5),
                'egress', 's' || s, CASE WHEN e = 0 THEN 'exit_ip_observed' ELSE 'rotated' END,
                CASE WHEN e = 0 THEN 'checker' ELSE 'rotator' END,
                CASE WHEN e = 0 THEN NULL ELSE format('100.%s.%s.%s', 64 + s, (e - 1) / 256, (e - 1) % 256)::inet END,
                format('100.%s.%s.%s', 64 + s, e / 256, e % 256)::inet
         FROM generate_series(0, $2::int - 1) AS s, generate_series(0, $4::int) AS e",
    )
    .bind(start)
    .bind(SERVERS as i32)
    .bind(ROTATION_HOURS as i32)
    .bind((days * 24 / ROTATION_HOURS) as i32)
    .execute(store.pool())
    .await?;
    // Some state noise: quarantines and restores.
    sqlx::query(
        "INSERT INTO events (id, at, backend, server, kind, actor, reason)
         SELECT gen_random_uuid(), $1 + make_interval(mins => g * 7), 'egress', 's' || (g % $2::int),
                CASE WHEN g % 2 = 0 THEN 'quarantined' ELSE 'restored' END, 'checker', 'connect_timeout'
         FROM generate_series(0, ($3::int * 24 * 60 / 7)) AS g",
    )
    .bind(start)
    .bind(SERVERS as i32)
    .bind(days as i32)
    .execute(store.pool())
    .await?;
    for d in 0..days {
        let day = start + TimeDelta::days(d);
        store.ensure_partition(day.date_naive()).await?;
        // minute-of-day m for client i; server i % 28; the exit IP is the one the timeline gives.
        sqlx::query(
            "INSERT INTO attribution (client_hash, backend, server, exit_ip, window_start, first_seen, last_seen, requests)
             SELECT ('x' || substr(md5($2::text || '-' || i), 1, 16))::bit(64)::bigint, 'egress', 's' || s,
                    format('100.%s.%s.%s', 64 + s, e / 256, e % 256)::inet,
                    w, w + make_interval(secs => i % 20), w + make_interval(secs => 20 + i % 39), 1 + i % 50
             FROM generate_series(0, $3::int - 1) AS i,
                  LATERAL (SELECT i % $4::int AS s, $1 + make_interval(mins => (i * 7919) % 1440) AS w) AS x,
                  LATERAL (SELECT greatest(0, floor(extract(epoch FROM (x.w - $5 - make_interval(mins => x.s * 5)))
                                                    / ($6::int * 3600)))::int AS e) AS y
             ORDER BY x.w -- agents write windows in time order",
        )
        .bind(day)
        .bind(d)
        .bind(per_day as i32)
        .bind(SERVERS as i32)
        .bind(start)
        .bind(ROTATION_HOURS as i32)
        .execute(store.pool())
        .await?;
    }
    sqlx::query("VACUUM ANALYZE attribution")
        .execute(store.pool())
        .await?;
    sqlx::query("VACUUM ANALYZE events").execute(store.pool()).await?;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM attribution")
        .fetch_one(store.pool())
        .await?;
    let size: String = sqlx::query_scalar(
        "SELECT pg_size_pretty(sum(pg_total_relation_size(inhrelid))) FROM pg_inherits
         WHERE inhparent = 'attribution'::regclass",
    )
    .fetch_one(store.pool())
    .await?;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(store.pool())
        .await?;
    let db_size: String = sqlx::query_scalar("SELECT pg_size_pretty(pg_database_size(current_database()))")
        .fetch_one(store.pool())
        .await?;
    println!(
        "dataset: {days} days x {per_day} clients/day = {rows} attribution rows ({size} with indexes), {events} events, database {db_size}; generated in {:?}",
        started.elapsed()
    );

    // 3. who --ip --at: random instants, the IP a random server had then, window 5 minutes.
    let mut lat = Vec::new();
    let mut answers = 0usize;
    let mut sample = None;
    for k in 0..200i64 {
        let s = (k * 7) % SERVERS;
        let at = start + TimeDelta::minutes((k * 104_729) % (days * 1440 - 60));
        let e =
            ((at - start - TimeDelta::minutes(s * 5)).num_seconds().max(0) / (ROTATION_HOURS * 3600)) as u32;
        let ip: IpAddr = format!("100.{}.{}.{}", 64 + s, e / 256, e % 256).parse()?;
        let started = Instant::now();
        let got = store.who_ip(ip, at, Duration::from_secs(300)).await?;
        lat.push(started.elapsed());
        answers += got.len();
        sample.get_or_insert((ip, at));
    }
    lat.sort();
    println!(
        "who --ip --at --window 5m: {} queries, {answers} rows in total; p50 {:?}, p95 {:?}, max {:?}",
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.95),
        lat.last().copied().unwrap_or_default()
    );
    if let Some((ip, at)) = sample {
        // The same statement as Store::who_ip, with its parameters inlined.
        let lo = at - TimeDelta::minutes(5);
        let hi = at + TimeDelta::minutes(5);
        let sql = egress_ledger::store::who_ip_sql()
            .replace("$1::inet", &format!("'{ip}'::inet"))
            .replace("$2", &format!("'{}'::timestamptz", lo.to_rfc3339()))
            .replace("$3", &format!("'{}'::timestamptz", hi.to_rfc3339()))
            .replace("$4::interval", "'1 hour'::interval")
            .replace("$5", "100000");
        let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {sql}"))
            .fetch_all(store.pool())
            .await?;
        println!("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) who --ip {ip} --at {at} --window 5m:");
        for line in plan {
            println!("    {line}");
        }
        let c: i64 = sqlx::query_scalar("SELECT client_hash FROM attribution LIMIT 1")
            .fetch_one(store.pool())
            .await?;
        let sql = egress_ledger::store::who_client_sql()
            .replace("$1", &c.to_string())
            .replace("$2", &format!("'{}'::timestamptz", start.to_rfc3339()))
            .replace("$3", &format!("'{}'::timestamptz", Utc::now().to_rfc3339()))
            .replace("$4::interval", "'1 hour'::interval")
            .replace("$5", "100000");
        let started = Instant::now();
        let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {sql}"))
            .fetch_all(store.pool())
            .await?;
        println!(
            "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) who --client (all {days} days) [{:?}]:",
            started.elapsed()
        );
        for line in plan {
            println!("    {line}");
        }
    }
    Ok(())
}
