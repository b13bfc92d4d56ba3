//! A private PostgreSQL cluster per test: `initdb` into a temp dir, `postgres` on 127.0.0.1:<ephemeral>,
//! the ledger schema applied with the ledger's own embedded migrations (`egress_ledger::MIGRATOR`).
//!
//! The server runs as a foreground child of the harness (`postgres -D ...`), not daemonized by
//! `pg_ctl start`: that way the harness owns the process, its parent-death signal works and its log is
//! captured. As root (CI) both `initdb` and `postgres` run as the `postgres` system user, which Debian's
//! package creates, because PostgreSQL refuses to run as root. The cluster is throwaway, so durability
//! is off (fsync, synchronous_commit, full_page_writes) and loopback auth is `trust`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use nix::sys::signal::Signal;

use crate::dirs::HarnessDir;
use crate::ports::{free_port, is_addr_in_use};
use crate::process::{ChildSpec, ManagedChild, tail};
use crate::programs::{find_program, is_root};

/// The database and role the tests use.
pub const DB: &str = "egress";
const PG_USER: &str = "postgres";
const READY_LINE: &str = "database system is ready to accept connections";
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running throwaway cluster. Stopped and deleted on drop.
#[derive(Debug)]
pub struct Postgres {
    // Field order matters: the server stops before the dir is removed.
    server: Option<ManagedChild>,
    postgres_bin: PathBuf,
    data: PathBuf,
    port: u16,
    url: String,
    dir: Arc<HarnessDir>,
}

impl Postgres {
    /// initdb, start, create the `egress` database, apply the ledger's migrations.
    pub fn start() -> anyhow::Result<Postgres> {
        let initdb = find_program("initdb", "postgresql")?;
        let postgres_bin = initdb.with_file_name("postgres");
        anyhow::ensure!(
            postgres_bin.exists(),
            "`postgres` not found next to {}: install Debian's `postgresql` package",
            initdb.display()
        );
        let dir = Arc::new(HarnessDir::new("postgres")?);
        if is_root() {
            let user = nix::unistd::User::from_name(PG_USER)
                .context("looking up the postgres user")?
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "running as root but there is no `postgres` user: install Debian's `postgresql` package"
                    )
                })?;
            nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid))
                .with_context(|| format!("chown postgres {}", dir.path().display()))?;
        }
        let data = dir.path().join("data");
        let mut cmd = Command::new(&initdb);
        cmd.arg("-D")
            .arg(&data)
            .args([
                "-U",
                DB,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .current_dir(dir.path());
        ChildSpec::new("initdb", cmd)
            .run_as(PG_USER)
            .in_dir(dir.clone())
            .run(Duration::from_secs(120))
            .context("initdb")?;

        let mut pg = Postgres {
            server: None,
            postgres_bin,
            data,
            port: 0,
            url: String::new(),
            dir,
        };
        let mut last_error = None;
        for _ in 0..5 {
            pg.port = free_port()?;
            match pg.launch() {
                Ok(()) => {
                    last_error = None;
                    break;
                }
                Err(LaunchError::AddrInUse) => last_error = Some(anyhow::anyhow!("port collisions")),
                Err(LaunchError::Other(e)) => return Err(e),
            }
        }
        if let Some(e) = last_error {
            return Err(e.context("starting postgres"));
        }
        pg.url = format!("postgres://{DB}@127.0.0.1:{}/{DB}", pg.port);
        let admin_url = format!("postgres://{DB}@127.0.0.1:{}/postgres", pg.port);
        crate::runtime::block_on(async move {
            use sqlx::Connection as _;
            let mut admin = sqlx::PgConnection::connect(&admin_url)
                .await
                .context("connecting to postgres")?;
            sqlx::query(&format!("CREATE DATABASE {DB}"))
                .execute(&mut admin)
                .await?;
            admin.close().await?;
            Ok(())
        })
        .context("creating the egress database")?;
        let url = pg.url.clone();
        crate::runtime::block_on(async move {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(10))
                .connect(&url)
                .await?;
            egress_ledger::MIGRATOR
                .run(&pool)
                .await
                .context("applying migrations")?;
            pool.close().await;
            Ok(())
        })?;
        Ok(pg)
    }

    /// `postgres://egress@127.0.0.1:<port>/egress`, for DATABASE_URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server with a fast shutdown (SIGINT: active sessions are rolled back and closed).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut server) = self.server.take() {
            server
                .stop()
                .ok_or_else(|| anyhow::anyhow!("postgres did not stop"))?;
        }
        Ok(())
    }

    /// Starts the server again on the same port and data (after [`Postgres::stop`]).
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.server.is_none(), "postgres is already running");
        match self.launch() {
            Ok(()) => Ok(()),
            Err(LaunchError::AddrInUse) => {
                anyhow::bail!(
                    "postgres cannot start again: port {} was taken meanwhile",
                    self.port
                )
            }
            Err(LaunchError::Other(e)) => Err(e),
        }
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        self.server.as_mut().is_some_and(ManagedChild::is_running)
    }

    /// The server log so far (all starts).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// The server's pid, while running.
    pub fn pid(&self) -> Option<u32> {
        self.server.as_ref().map(ManagedChild::pid)
    }

    /// The cluster's temp dir.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn launch(&mut self) -> Result<(), LaunchError> {
        let log_before = self.logs().len();
        let mut cmd = Command::new(&self.postgres_bin);
        cmd.arg("-D")
            .arg(&self.data)
            .arg("-k")
            .arg(&self.data)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ])
            .args(["-c", "max_connections=200", "-c", "shared_buffers=32MB"])
            .current_dir(self.dir.path());
        let mut server = ChildSpec::new("postgres", cmd)
            .run_as(PG_USER)
            .stop_signal(Signal::SIGINT)
            .grace(Duration::from_secs(10))
            .in_dir(self.dir.clone())
            .spawn()?;
        let ready = crate::wait_until(START_TIMEOUT, || {
            let log = self.logs();
            let new = log.get(log_before..).unwrap_or("");
            new.contains(READY_LINE) || !server.is_running()
        });
        let log = self.logs();
        let new = log.get(log_before..).unwrap_or("").to_owned();
        if ready && new.contains(READY_LINE) && server.is_running() {
            self.server = Some(server);
            return Ok(());
        }
        server.kill();
        if is_addr_in_use(&new) {
            return Err(LaunchError::AddrInUse);
        }
        Err(LaunchError::Other(anyhow::anyhow!(
            "postgres did not become ready within {START_TIMEOUT:?}:\n{}",
            tail(&new)
        )))
    }
}

enum LaunchError {
    AddrInUse,
    Other(anyhow::Error),
}

impl From<anyhow::Error> for LaunchError {
    fn from(e: anyhow::Error) -> Self {
        LaunchError::Other(e)
    }
}
