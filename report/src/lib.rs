//! `egress-checker report`: what happened to the pool over a window (default the last 24 h), as
//! `report.json` (schema `docs/report.schema.json`), a static `index.html` with a timeline per server,
//! and optionally a Slack message. See `docs/report.md`.
//!
//! Order of a run: read the ledger → render both files → write them to temp files in `--out` and
//! fsync → post to Slack (if configured) → rename `report.json`, then `index.html`, then fsync the
//! directory. Any failure before the renames removes the temp files and leaves the previous report
//! untouched, so a reader of the directory sees either the old or the new file, never half of one.

pub mod html;
pub mod model;
#[cfg(test)]
mod sample;
pub mod slack;
pub mod write;

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use egress_http::WebhookUrl;
use egress_ledger::Store;

/// One report run's inputs, parsed (the binary's `report` subcommand reads the flags).
#[derive(Debug)]
pub struct Options {
    /// Postgres URL of the ledger.
    pub database_url: String,
    /// The window: `since..until`.
    pub since: DateTime<Utc>,
    /// The end of the window (whole seconds read better, and an event in the cut-off fraction is in
    /// the next run).
    pub until: DateTime<Utc>,
    /// Directory for report.json and index.html (created if missing).
    pub out: PathBuf,
    /// Title on the page and in Slack.
    pub title: String,
    /// Where to post the summary; `None`: nothing is posted.
    pub webhook: Option<WebhookUrl>,
    /// Link to the published index.html, added to the Slack message.
    pub report_url: Option<String>,
    /// Total time budget for posting to Slack, retries and waits included.
    pub slack_timeout: Duration,
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

/// One report run (see the module docs for the order of steps).
pub async fn run(args: &Options) -> Result<Outcome, ReportError> {
    let (since, until) = (args.since, args.until);
    if since >= until {
        return Err(ReportError::Usage(format!(
            "the window starts at {since}, not before its end {until}"
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
    let slack_attempts = match &args.webhook {
        Some(url) => {
            let policy = slack::Delivery {
                total_timeout: args.slack_timeout,
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
