//! The operator commands that read or prepare the ledger: `migrate`, `who`, `history`. Each prints
//! its answer and returns the exit code (0 ok, 1 the ledger failed, 2 bad input or unknown server).

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::output::{self, client_hash_for, parse_duration, parse_instant, parse_since};
use chrono::Utc;
use egress_common::client_hash::HashKey;
use egress_ledger::{LedgerError, ServerRef, Store};

/// Where the ledger lives.
#[derive(Debug, clap::Args)]
pub struct DbArgs {
    /// Postgres URL of the ledger, e.g. postgres://egress@db:5432/egress.
    #[arg(long, env = "EGRESS_DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
}

/// `who`: who used an exit IP at an instant, or where a client went.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("query").required(true).args(["ip", "client"])))]
pub struct WhoArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// The exit IP to ask about (with --at).
    #[arg(long, requires = "at")]
    pub ip: Option<IpAddr>,
    /// The instant, RFC 3339 (2026-11-20T03:00:00Z) or `now`.
    #[arg(long)]
    pub at: Option<String>,
    /// Half-width of the time range around --at.
    #[arg(long, default_value = "5m")]
    pub window: String,
    /// A client address or identity: hashed with the shared key, then looked up (with --from/--to).
    #[arg(long)]
    pub client: Option<String>,
    /// Start of the range for --client: a duration back from now (24h) or an RFC 3339 time.
    #[arg(long, default_value = "24h")]
    pub from: String,
    /// End of the range for --client: RFC 3339 or `now`.
    #[arg(long, default_value = "now")]
    pub to: String,
    /// File holding the 32-hex-character hash key (needed by --client).
    #[arg(long, env = "EGRESS_HASH_KEY_FILE")]
    pub hash_key_file: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `history`: the event timeline of one server.
#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// `<backend>/<server>` or a bare server name.
    pub server: String,
    /// How far back: a duration (24h, 7d) or an RFC 3339 time.
    #[arg(long, default_value = "24h")]
    pub since: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `migrate`, `who` and `history --help`'s exit codes ([`fail`] maps them).
pub const EXIT_CODES: &str = "Exit codes: 0 done, 1 the ledger failed (unreachable, refused the connection, \
                              a query or the migration failed), 2 bad input (a time, a duration, the hash \
                              key, a bad --database-url) or an unknown server.";

fn fail(error: &LedgerError) -> ExitCode {
    eprintln!("egress-checker: {error}");
    match error {
        LedgerError::InvalidInput(_) | LedgerError::UnknownServer(_) => ExitCode::from(2),
        _ => ExitCode::FAILURE,
    }
}

async fn connect(db: &DbArgs) -> Result<Store, LedgerError> {
    Store::connect(&db.database_url).await
}

/// Apply the ledger migrations (idempotent).
pub async fn migrate(db: DbArgs) -> ExitCode {
    let result = async {
        let store = connect(&db).await?;
        store.migrate().await?;
        let days = store.ensure_partitions(2).await?;
        store.close().await;
        Ok::<u32, LedgerError>(days)
    }
    .await;
    match result {
        Ok(days) => {
            println!("ledger schema is up to date ({days} attribution partitions ensured)");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// Answer `who --ip --at` or `who --client`.
pub async fn who(args: WhoArgs) -> ExitCode {
    let result: Result<String, LedgerError> = async {
        if let Some(ip) = args.ip {
            let at = parse_instant(args.at.as_deref().unwrap_or("now"))?;
            let window = parse_duration(&args.window)?;
            let store = connect(&args.db).await?;
            let rows = store.who_ip(ip, at, window).await?;
            store.close().await;
            if args.json {
                output::to_json(&rows)
            } else {
                Ok(output::who_ip_table(&rows))
            }
        } else {
            let client = args.client.as_deref().unwrap_or_default();
            let key = HashKey::load(
                args.hash_key_file.as_deref(),
                std::env::var("EGRESS_HASH_KEY").ok().as_deref(),
            )
            .map_err(|e| LedgerError::InvalidInput(e.to_string()))?;
            let now = Utc::now();
            let from = parse_since(&args.from, now)?;
            let to = parse_instant(&args.to)?;
            if to < from {
                return Err(LedgerError::InvalidInput(format!(
                    "--to {to} is before --from {from}"
                )));
            }
            let hash = client_hash_for(&key, client);
            let store = connect(&args.db).await?;
            let rows = store.who_client(hash, from, to).await?;
            store.close().await;
            if args.json {
                output::to_json(&rows)
            } else {
                Ok(format!("client hash {hash}\n{}", output::who_client_table(&rows)))
            }
        }
    }
    .await;
    match result {
        Ok(text) => {
            println!("{}", text.trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// Print one server's event timeline.
pub async fn history(args: HistoryArgs) -> ExitCode {
    let result: Result<String, LedgerError> = async {
        let server: ServerRef = args.server.parse()?;
        let since = parse_since(&args.since, Utc::now())?;
        let store = connect(&args.db).await?;
        let events = store.history(&server, since).await?;
        store.close().await;
        if args.json {
            output::to_json(&events)
        } else {
            Ok(output::history_table(&events))
        }
    }
    .await;
    match result {
        Ok(text) => {
            println!("{}", text.trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}
