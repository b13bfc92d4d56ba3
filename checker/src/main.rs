//! The `egress-checker` binary: every subcommand is declared here ([`Command`]), each runs on the
//! one runtime [`runtime`] builds, and each maps its outcome to the exit codes its `--help` gives.
//! The work is in the libraries: egress-health (`run`), egress-rotate (`rotate`), egress-report
//! (`report`), egress-ledger (`migrate`, `who`, `history`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use egress_common::telemetry::{self, LogFormat};

mod config;
mod ledger;
mod output;
mod report;
mod rotate;
mod service;

use config::Config;

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
    #[command(after_help = service::EXIT_CODES)]
    Run(service::RunArgs),
    /// Create or upgrade the ledger schema in Postgres (idempotent; safe to run on every deploy).
    #[command(after_help = ledger::EXIT_CODES)]
    Migrate(ledger::DbArgs),
    /// Who used exit IP X at time T (`--ip --at`), or which servers and exit IPs a client used
    /// (`--client --from --to`).
    #[command(after_help = ledger::EXIT_CODES)]
    Who(ledger::WhoArgs),
    /// The event timeline of one server: quarantines, restores, drains, rotations, exit-IP changes.
    #[command(after_help = ledger::EXIT_CODES)]
    History(ledger::HistoryArgs),
    /// The morning report: report.json, a static index.html with a timeline per server, and a Slack
    /// summary, over the last 24 h (--since). Files are replaced atomically; a failed run leaves the
    /// previous report in place.
    #[command(after_help = report::EXIT_CODES)]
    Report(report::ReportArgs),
    /// Drain-rotate one server to a new exit IP with zero dropped clients: drain on every HAProxy,
    /// maint, restart in another location, verify the new exit IP, ready. `--next` picks the
    /// longest-quarantined server (else the oldest exit IP); `--dry-run` prints the plan.
    Rotate(rotate::RotateArgs),
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
    let Some(command) = cli.command else {
        eprintln!("no command given; see egress-checker --help");
        return ExitCode::from(2);
    };
    // `run` and `rotate` read the configuration; a bad one is exit code 2 before anything starts.
    let config = match &command {
        Command::Run(_) | Command::Rotate(_) => match Config::load(&cli.config) {
            Ok(c) => Some(c),
            Err(error) => {
                eprintln!("{}: {error}", cli.config.display());
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    // `run` refuses a bad --database-url with the configuration, before anything binds.
    if let Command::Run(args) = &command
        && let Some(url) = &args.database_url
        && let Err(error) = egress_ledger::Store::check_url(url)
    {
        eprintln!("egress-checker: --database-url: {error}");
        return ExitCode::from(2);
    }
    let runtime = match runtime(&command) {
        Ok(r) => r,
        Err(error) => {
            eprintln!("egress-checker: tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match (command, config) {
            (Command::Run(args), Some(config)) => match Box::pin(service::run(config, args)).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!(error = format!("{error:#}"), "egress-checker failed");
                    eprintln!("egress-checker: {error:#}");
                    ExitCode::FAILURE
                }
            },
            (Command::Rotate(args), Some(config)) => rotate::main(config, args).await,
            (Command::Migrate(db), _) => ledger::migrate(db).await,
            (Command::Who(args), _) => ledger::who(args).await,
            (Command::History(args), _) => ledger::history(args).await,
            (Command::Report(args), _) => report::main(args).await,
            (Command::Run(_) | Command::Rotate(_), None) => {
                unreachable!("the configuration was loaded above")
            }
        }
    })
}

/// The one runtime: the long-running service on every core, a one-shot command on this thread.
fn runtime(command: &Command) -> std::io::Result<tokio::runtime::Runtime> {
    match command {
        Command::Run(_) => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
        _ => tokio::runtime::Builder::new_current_thread().enable_all().build(),
    }
}
