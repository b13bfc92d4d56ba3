//! `egress-checker report`: what happened to the pool over a window (default the last 24 h), as
//! `report.json` (schema `docs/report.schema.json`), a static `index.html` with a timeline per server,
//! and optionally a Slack message. See `docs/report.md`.
//!
//! Order of a run: read the ledger → render both files → write them to temp files in `--out` and
//! fsync → post to Slack (if configured) → rename `report.json`, then `index.html`, then fsync the
//! directory. Any failure before the renames removes the temp files and leaves the previous report
//! untouched, so a reader of the directory sees either the old or the new file, never half of one.

pub mod html;
pub mod http;
pub mod model;
pub mod sample;
pub mod slack;
pub mod write;

use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{SubsecRound, Utc};
use egress_ledger::Store;
use egress_ledger::output::{parse_duration, parse_since};

use http::WebhookUrl;

/// `report`: read the ledger, write `report.json` and `index.html` atomically, post to Slack.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("slack").args(["slack_webhook_url_env", "slack_webhook_url_file"])))]
pub struct ReportArgs {
    /// Postgres URL of the ledger, e.g. postgres://egress@db:5432/egress.
    #[arg(long, env = "EGRESS_DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// How far back: a duration (24h, 7d) or an RFC 3339 time. The window ends now.
    #[arg(long, default_value = "24h")]
    pub since: String,
    /// Directory to write report.json and index.html into (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Title shown on the page and in Slack (e.g. the pool's name).
    #[arg(long, default_value = "egress pool")]
    pub title: String,
    /// Name of an environment variable holding the Slack incoming-webhook URL. Without this or
    /// --slack-webhook-url-file nothing is posted. The URL is never printed or logged.
    #[arg(long, value_name = "NAME")]
    pub slack_webhook_url_env: Option<String>,
    /// File holding the Slack incoming-webhook URL (e.g. a mounted Secret).
    #[arg(long, value_name = "PATH")]
    pub slack_webhook_url_file: Option<PathBuf>,
    /// Link to the published index.html, added to the Slack message.
    #[arg(long)]
    pub report_url: Option<String>,
    /// Total time budget for posting to Slack, retries and waits included.
    #[arg(long, default_value = "60s")]
    pub slack_timeout: String,
}

/// Why a report run failed.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Bad flags or configuration (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// The ledger could not be read.
    #[error("cannot read the ledger: {0}")]
    Ledger(#[from] egress_ledger::LedgerError),
    /// The artifacts could not be written.
    #[error("cannot write the report: {0}")]
    Write(String),
    /// Slack did not take the message.
    #[error("{0} (the previous report was left in place)")]
    Slack(#[from] slack::SlackError),
}

/// What a successful run did.
#[derive(Debug)]
pub struct Outcome {
    /// The report written.
    pub report: model::Report,
    /// Slack attempts made (`None`: Slack not configured).
    pub slack_attempts: Option<u32>,
}

fn webhook(args: &ReportArgs) -> Result<Option<WebhookUrl>, ReportError> {
    let raw = if let Some(name) = &args.slack_webhook_url_env {
        match std::env::var(name) {
            Ok(v) if !v.trim().is_empty() => v,
            _ => {
                return Err(ReportError::Usage(format!(
                    "--slack-webhook-url-env {name}: that environment variable is not set or empty"
                )));
            }
        }
    } else if let Some(path) = &args.slack_webhook_url_file {
        std::fs::read_to_string(path)
            .map_err(|e| ReportError::Usage(format!("--slack-webhook-url-file {}: {e}", path.display())))?
    } else {
        return Ok(None);
    };
    WebhookUrl::parse(&raw).map(Some).map_err(ReportError::Usage)
}

/// One report run (see the module docs for the order of steps).
pub async fn run(args: &ReportArgs) -> Result<Outcome, ReportError> {
    let url = webhook(args)?;
    let slack_timeout = parse_duration(&args.slack_timeout).map_err(|e| ReportError::Usage(e.to_string()))?;
    // Whole seconds: the artifact reads better, and an event in the cut-off fraction is in the next run.
    let until = Utc::now().trunc_subsecs(0);
    let since = parse_since(&args.since, until).map_err(|e| ReportError::Usage(e.to_string()))?;
    if since >= until {
        return Err(ReportError::Usage(format!(
            "--since {} is not in the past",
            args.since
        )));
    }
    std::fs::create_dir_all(&args.out)
        .map_err(|e| ReportError::Write(format!("{}: {e}", args.out.display())))?;

    let store = Store::connect(&args.database_url).await?;
    let events = store.report_events(since, until).await;
    store.close().await;
    let events = events?;
    let report = model::build(
        &args.title,
        since,
        until,
        &events.before_window,
        &events.in_window,
        events.truncated,
    );
    let json = serde_json::to_vec_pretty(&report).map_err(|e| ReportError::Write(format!("JSON: {e}")))?;
    let page = html::render(&report);
    let staged = write::Staged::new(
        &args.out,
        &[("report.json", &json), ("index.html", page.as_bytes())],
    )
    .map_err(|e| ReportError::Write(e.to_string()))?;
    let slack_attempts = match &url {
        Some(url) => {
            let policy = slack::Delivery {
                total_timeout: slack_timeout,
                ..slack::Delivery::default()
            };
            let msg = slack::message(&report, args.report_url.as_deref());
            Some(slack::post(url, &msg, &policy).await?)
        }
        None => None,
    };
    staged.commit().map_err(|e| ReportError::Write(e.to_string()))?;
    Ok(Outcome {
        report,
        slack_attempts,
    })
}

/// The subcommand: run, print one line, and map the outcome to an exit code (0 ok, 1 failed, 2 usage).
pub fn main(args: ReportArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("egress-checker report: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(o) => {
            let p = &o.report.pool;
            let slack = match o.slack_attempts {
                Some(n) => format!(
                    "; Slack message posted ({n} attempt{})",
                    if n == 1 { "" } else { "s" }
                ),
                None => String::new(),
            };
            println!(
                "report written to {}: {} servers, availability {}, {} quarantined now, {} quarantines, {} rotations{slack}",
                args.out.display(),
                p.servers,
                html::percent(p.availability),
                p.open_quarantines.len(),
                p.quarantines,
                p.rotations
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "report failed");
            eprintln!("egress-checker report: {e}");
            match e {
                ReportError::Usage(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}
