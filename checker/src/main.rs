//! The `egress-checker` binary: thin. Parses flags, loads the config, sets up logs and metrics,
//! binds, and calls the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use egress_checker::{Config, LedgerObserver, LogObserver, TransitionObserver};
use egress_ledger::{LedgerWriter, WriterConfig};

mod commands;
use egress_common::telemetry::{self, LogFormat};
use tokio_util::sync::CancellationToken;

/// Self-healing egress pools for HAProxy: the checker.
///
/// `run` probes every egress backend (HTTP CONNECT proxies) through its tunnel — TCP connect,
/// `CONNECT <target>`, any 2xx, a verified TLS handshake, and periodically the exit IP — and keeps
/// each server Healthy, Quarantined or Ramping (5 consecutive failures quarantine, 1 success
/// restores, with slow start; never more than half the pool quarantined). HAProxy learns the verdict
/// through agent-check: every server line carries `agent-check agent-addr <checker> agent-port 5555
/// agent-send "<backend>/<server>\n"`, and the checker answers `up N%` or `down #<reason>` from
/// memory. It never answers ready/drain/maint, so operators' and the rotator's drains stand.
#[derive(Debug, Parser)]
#[command(name = "egress-checker", version, about, long_about)]
struct Cli {
    /// Configuration file (TOML). Keys can be overridden with EGRESS_CHECKER_<SECTION>__<KEY>,
    /// e.g. EGRESS_CHECKER_PROBE__INTERVAL=700ms.
    #[arg(
        long,
        short,
        global = true,
        env = "EGRESS_CHECKER_CONFIG",
        default_value = "/etc/egress-checker/checker.toml"
    )]
    config: PathBuf,

    /// Validate the configuration, explain every problem, and exit (non-zero when invalid).
    #[arg(long, global = true)]
    check_config: bool,

    /// Log format.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "EGRESS_CHECKER_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,

    /// Log filter, RUST_LOG syntax.
    #[arg(long, global = true, env = "EGRESS_CHECKER_LOG", default_value = "info")]
    log: String,

    #[command(subcommand)]
    command: Option<Command>,
}

/// Subcommands. `run` is the long-running service; operator commands join this enum.
#[derive(Debug, Subcommand)]
enum Command {
    /// Probe the backends and answer HAProxy's agent checks until SIGTERM/SIGINT.
    Run(RunArgs),
    /// Create or upgrade the ledger schema in Postgres (idempotent; safe to run on every deploy).
    Migrate(commands::DbArgs),
    /// Who used exit IP X at time T (`--ip --at`), or which servers and exit IPs a client used
    /// (`--client --from --to`).
    Who(commands::WhoArgs),
    /// The event timeline of one server: quarantines, restores, drains, rotations, exit-IP changes.
    History(commands::HistoryArgs),
    /// The morning report: report.json, a static index.html with a timeline per server, and a Slack
    /// summary, over the last 24 h (--since). Files are replaced atomically; a failed run leaves the
    /// previous report in place.
    Report(egress_checker::report::ReportArgs),
    /// Drain-rotate one server to a new exit IP with zero dropped clients: drain on every HAProxy,
    /// maint, restart in another location, verify the new exit IP, ready. `--next` picks the
    /// longest-quarantined server (else the oldest exit IP); `--dry-run` prints the plan.
    Rotate(egress_checker::rotate::cli::RotateArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Address of the agent-check responder (HAProxy's agent-addr/agent-port).
    #[arg(long, env = "EGRESS_CHECKER_AGENT_LISTEN", default_value = "127.0.0.1:5555")]
    agent_listen: SocketAddr,

    /// Address of the Prometheus endpoint (GET /metrics, /healthz).
    #[arg(long, env = "EGRESS_CHECKER_METRICS_LISTEN", default_value = "127.0.0.1:9113")]
    metrics_listen: SocketAddr,

    /// Postgres URL of the ledger. Without it, transitions are only logged (and counted).
    #[arg(long, env = "EGRESS_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,

    /// Local spool file: state events wait here while Postgres is unreachable, and are replayed
    /// (exactly once) when it is back.
    #[arg(
        long,
        env = "EGRESS_CHECKER_SPOOL",
        default_value = "/var/lib/egress-checker/ledger.spool"
    )]
    spool_path: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format, &cli.log);
    if cli.check_config {
        return match Config::load(&cli.config) {
            Ok(_) => {
                println!("{}: configuration is valid", cli.config.display());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("{}: {error}", cli.config.display());
                ExitCode::from(2)
            }
        };
    }
    let result = match cli.command {
        Some(Command::Run(args)) => match Config::load(&cli.config) {
            Ok(config) => run(config, args),
            Err(error) => {
                eprintln!("{}: {error}", cli.config.display());
                return ExitCode::from(2);
            }
        },
        Some(Command::Migrate(db)) => return commands::migrate(db),
        Some(Command::Who(args)) => return commands::who(args),
        Some(Command::History(args)) => return commands::history(args),
        Some(Command::Report(args)) => return egress_checker::report::main(args),
        Some(Command::Rotate(args)) => return egress_checker::rotate::cli::main(&cli.config, args),
        None => {
            eprintln!("no command given; see egress-checker --help");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "egress-checker failed");
            eprintln!("egress-checker: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config, args: RunArgs) -> anyhow::Result<()> {
    let mut config = config;
    if let Some(r) = config.rotation.as_mut() {
        r.database_url = args
            .database_url
            .clone()
            .map(egress_checker::rotate::config::SecretUrl);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(async move {
        let agent = tokio::net::TcpListener::bind(args.agent_listen)
            .await
            .with_context(|| format!("bind agent listener {}", args.agent_listen))?;
        let metrics = tokio::net::TcpListener::bind(args.metrics_listen)
            .await
            .with_context(|| format!("bind metrics listener {}", args.metrics_listen))?;
        let shutdown = CancellationToken::new();
        tokio::spawn(egress_common::signal::cancel_on_signal(shutdown.clone()));
        let registry = prometheus::Registry::new();
        // A Registry clone shares its collectors, so the metrics run() registers are served too.
        let serve = egress_common::metrics_http::serve(metrics, registry.clone(), shutdown.clone());
        // The ledger writer outlives the probes: it is stopped only after run() returns, so the
        // last transitions are flushed (or spooled) on the way out.
        let ledger_stop = CancellationToken::new();
        let writer_gauge = prometheus::IntGauge::new(
            "egress_checker_ledger_writer",
            "1 while this checker writes the ledger and runs self-healing rotations (one of several replicas)",
        )?;
        registry.register(Box::new(writer_gauge.clone()))?;
        let (observer, ledger_task, leader): (Arc<dyn TransitionObserver>, _, _) = match &args.database_url {
            Some(url) => {
                let (handle, task) = LedgerWriter::spawn(
                    WriterConfig::new(url.clone(), args.spool_path.clone()),
                    &registry,
                    ledger_stop.clone(),
                )
                .context("start the ledger writer")?;
                // One writer among the replicas: the holder of the ledger-writer lock, a key next
                // to the rotation lock's (so fleets that share a database keep their own).
                let key = config
                    .rotation
                    .as_ref()
                    .map_or(egress_checker::rotate::config::DEFAULT_LOCK_KEY, |r| r.lock_key)
                    .wrapping_add(1);
                let leader = egress_checker::leader::Leadership::elect(url.clone(), key, writer_gauge, shutdown.clone());
                (Arc::new(LedgerObserver::new(handle, leader.clone())), Some(task), leader)
            }
            None => {
                tracing::warn!("no --database-url: transitions are logged, not written to the ledger");
                writer_gauge.set(1);
                (Arc::new(LogObserver), None, egress_checker::leader::Leadership::sole())
            }
        };
        let checker = async {
            let result = egress_checker::run(config, agent, observer, leader, &registry, shutdown.clone()).await;
            // run() also returns early on a setup error: stop the metrics server with it.
            shutdown.cancel();
            result
        };
        let (result, ()) = tokio::join!(checker, serve);
        ledger_stop.cancel();
        if let Some(task) = ledger_task {
            if let Err(error) = task.await {
                tracing::error!(%error, "ledger writer task failed");
            }
        }
        result.context("checker")
    })
}
