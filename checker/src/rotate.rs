//! `egress-checker rotate`: the operator's (and the CronJob's) entry point.

use std::process::ExitCode;

use egress_ledger::{Store, StoreOptions};
use egress_rotate::{RotateError, Rotator, Target};

use crate::config::Config;

/// Arguments of `egress-checker rotate`.
#[derive(Debug, clap::Args)]
#[command(
    group(clap::ArgGroup::new("which").required(true).args(["server", "next"])),
    after_help = "Exit codes: 0 rotated (or planned), 1 the rotation failed (the server is left in MAINT; \
                  the ledger has a rotation_failed event with the reason) or a service it needs (the ledger, \
                  an HAProxy runtime API, the Kubernetes API, a Ready HAProxy replica) did not answer or \
                  refused (nothing changed), 2 bad input or configuration, a bad --database-url included \
                  (nothing changed), 3 another rotation holds the fleet-wide lock. \
                  --next never takes a server an operator put in MAINT (it says so)."
)]
pub struct RotateArgs {
    /// The server to rotate, as `backend/server` (it needs a [rotation.locations] entry).
    pub server: Option<String>,

    /// The location to move to first (one of the server's locations); default: the one after the
    /// location of its last rotation.
    #[arg(long, requires = "server")]
    pub to: Option<String>,

    /// Rotate the longest-quarantined server (DOWN in HAProxy, or in MAINT after a failed rotation),
    /// else the one holding its exit IP longest; a server an operator put in MAINT is left alone.
    /// What a CronJob runs.
    #[arg(long)]
    pub next: bool,

    /// Check everything and print the plan; change nothing, take no lock.
    #[arg(long)]
    pub dry_run: bool,

    /// Print the plan or the result as JSON.
    #[arg(long)]
    pub json: bool,

    /// Postgres URL of the ledger (events and the fleet-wide rotation lock).
    #[arg(long, env = "EGRESS_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

/// Run `rotate` and print the outcome; the exit code is [`exit_code`]'s.
pub async fn main(config: Config, args: RotateArgs) -> ExitCode {
    let result = run(config, args).await;
    match result {
        Ok(text) => {
            println!("{}", text.trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("egress-checker rotate: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The exit codes of `rotate --help`: 1 the rotation failed (server left in maint) or a service did
/// not answer (nothing changed), 2 bad input or configuration (nothing changed), 3 another rotation
/// holds the lock.
fn exit_code(e: &RotateError) -> u8 {
    match e {
        RotateError::Invalid(_) => 2,
        RotateError::Locked(_) => 3,
        RotateError::Failed { .. } | RotateError::Ledger(_) | RotateError::Unavailable(_) => 1,
    }
}

async fn run(config: Config, args: RotateArgs) -> Result<String, RotateError> {
    let target = match (&args.server, args.next) {
        (Some(key), false) => {
            let (backend, server) = key
                .split_once('/')
                .ok_or_else(|| RotateError::Invalid(format!("{key:?}: expected backend/server")))?;
            Target::Server {
                backend: backend.to_owned(),
                server: server.to_owned(),
                to: args.to.clone(),
            }
        }
        _ => Target::Next,
    };
    let store = match &args.database_url {
        Some(url) => Some(
            Store::connect_with(
                url,
                StoreOptions {
                    max_connections: 3,
                    ..StoreOptions::default()
                },
            )
            .await?,
        ),
        None => None,
    };
    let rotator = Rotator::new(&config.health, config.rotation.as_ref(), store)?;
    if args.dry_run {
        let plan = rotator.plan(&target).await?;
        let left_alone: String = plan
            .left_alone
            .iter()
            .map(|l| format!("\n  left alone {l}"))
            .collect();
        return Ok(if args.json {
            serde_json::to_string_pretty(&plan).unwrap_or_default()
        } else {
            format!(
                "plan (dry run, nothing changed):\n  server     {}/{} ({})\n  instances  {}\n  old ip     {}\n  locations  {}\n  1. drain on every instance, wait for 0 sessions (cut the rest at the drain deadline)\n  2. maint on every instance\n  3. {}\n  4. probe until the exit IP differs (next location on the same IP)\n  5. ready on every instance",
                plan.backend,
                plan.server,
                plan.addr,
                plan.instances.join(", "),
                plan.old_ip
                    .map(|i| i.to_string())
                    .unwrap_or_else(|| "unknown".into()),
                plan.locations.join(" → "),
                plan.executor,
            ) + &left_alone
        });
    }
    let out = rotator.rotate(&target).await?;
    let left_alone: String = out
        .plan
        .left_alone
        .iter()
        .map(|l| format!("\nleft alone: {l}"))
        .collect();
    Ok(if args.json {
        serde_json::to_string_pretty(&out).unwrap_or_default()
    } else {
        format!(
            "rotated {}/{}: {} → {} (location {}, drained in {} ms, {} sessions cut)",
            out.plan.backend,
            out.plan.server,
            out.plan
                .old_ip
                .map(|i| i.to_string())
                .unwrap_or_else(|| "unknown".into()),
            out.new_ip,
            out.location,
            out.drain_ms,
            out.sessions_cut
        ) + &left_alone
    })
}
