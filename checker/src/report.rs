//! `egress-checker report`: the flags, read into `egress_report::Options`, and the one-line answer.

use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{SubsecRound, Utc};
use egress_http::WebhookUrl;
use egress_ledger::Store;
use egress_report::{ReportError, html};

use crate::output::{parse_duration, parse_since};

/// `report --help`'s exit codes ([`main`] maps them).
pub const EXIT_CODES: &str = "Exit codes: 0 written (and posted), 1 failed: the ledger could not be read, the \
                              files could not be written or Slack did not take the message (the previous \
                              report is left in place), 2 bad flags (--since, --slack-timeout, the webhook \
                              URL, a bad --database-url).";

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
    WebhookUrl::parse(&raw)
        .map(Some)
        .map_err(|e| ReportError::Usage(e.to_string()))
}

fn options(args: &ReportArgs) -> Result<egress_report::Options, ReportError> {
    Store::check_url(&args.database_url).map_err(|e| ReportError::Usage(e.to_string()))?;
    let webhook = webhook(args)?;
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
    Ok(egress_report::Options {
        database_url: args.database_url.clone(),
        since,
        until,
        out: args.out.clone(),
        title: args.title.clone(),
        webhook,
        report_url: args.report_url.clone(),
        slack_timeout,
    })
}

/// The subcommand: run, print one line, and map the outcome to an exit code (0 ok, 1 failed, 2 usage).
pub async fn main(args: ReportArgs) -> ExitCode {
    let result = match options(&args) {
        Ok(o) => egress_report::run(&o).await,
        Err(e) => Err(e),
    };
    match result {
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
