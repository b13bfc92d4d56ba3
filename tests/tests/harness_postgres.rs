//! The private PostgreSQL cluster: starts, serves queries, applies migrations, survives stop/start.

use std::time::Duration;

use egress_harness::postgres::Postgres;
use sqlx::{Connection as _, Row as _};

async fn query_one(url: &str) -> anyhow::Result<i32> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let row = sqlx::query("SELECT 41 + 1 AS answer")
        .fetch_one(&mut conn)
        .await?;
    Ok(row.try_get("answer")?)
}

#[tokio::test]
async fn postgres_starts_answers_and_restarts() -> anyhow::Result<()> {
    let mut pg = Postgres::start()?;
    assert!(
        pg.url().starts_with("postgres://egress@127.0.0.1:"),
        "{}",
        pg.url()
    );
    assert_eq!(query_one(pg.url()).await?, 42);

    // Every one of the ledger's embedded migrations is applied, and recorded by sqlx.
    let mut conn = sqlx::PgConnection::connect(pg.url()).await?;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut conn)
        .await?;
    let embedded = egress_ledger::MIGRATOR.iter().count();
    assert!(embedded > 0, "the ledger embeds no migration");
    assert_eq!(usize::try_from(n)?, embedded, "not every migration was applied");

    let pid = pg.pid().expect("running");
    pg.stop()?;
    assert!(
        !egress_harness::dirs::is_alive(pid),
        "postgres {pid} still alive after stop"
    );
    assert!(
        query_one(pg.url()).await.is_err(),
        "a stopped server must refuse connections"
    );
    pg.start_again()?;
    assert_eq!(query_one(pg.url()).await?, 42);

    let dir = pg.dir().to_owned();
    let pid = pg.pid().expect("running");
    drop(pg);
    assert!(
        egress_harness::wait_until(Duration::from_secs(5), || !egress_harness::dirs::is_alive(pid)),
        "postgres {pid} outlived its handle"
    );
    assert!(!dir.exists(), "{} not removed on drop", dir.display());
    Ok(())
}
