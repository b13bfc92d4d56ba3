//! `egress-checker run`: binds, starts the ledger writer (one writer among replicas), the probe
//! service (egress-health), self-healing rotations (egress-rotate) and the metrics endpoint, and
//! stops them in order on SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use egress_health::leader::Leadership;
use egress_health::{LedgerObserver, LogObserver, TransitionObserver};
use egress_ledger::{LedgerWriter, WriterConfig};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// `run --help`'s exit codes (main maps them).
pub const EXIT_CODES: &str = "Exit codes: 0 stopped by SIGTERM/SIGINT, 1 failed (a listener could not bind, \
                              the ledger writer or the probes could not start), 2 invalid configuration, \
                              a bad --database-url included (nothing started).";

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Address of the agent-check responder (HAProxy's agent-addr/agent-port).
    #[arg(long, env = "EGRESS_CHECKER_AGENT_LISTEN", default_value = "127.0.0.1:5555")]
    pub agent_listen: SocketAddr,

    /// Address of the Prometheus endpoint (GET /metrics, /healthz).
    #[arg(long, env = "EGRESS_CHECKER_METRICS_LISTEN", default_value = "127.0.0.1:9113")]
    pub metrics_listen: SocketAddr,

    /// Postgres URL of the ledger. Without it, transitions are only logged (and counted).
    #[arg(long, env = "EGRESS_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Local spool file: state events wait here while Postgres is unreachable, and are replayed
    /// (exactly once) when it is back.
    #[arg(
        long,
        env = "EGRESS_CHECKER_SPOOL",
        default_value = "/var/lib/egress-checker/ledger.spool"
    )]
    pub spool_path: PathBuf,
}

pub async fn run(config: Config, args: RunArgs) -> anyhow::Result<()> {
    {
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
                    .map_or(egress_rotate::config::DEFAULT_LOCK_KEY, |r| r.lock_key)
                    .wrapping_add(1);
                let leader = Leadership::elect(url.clone(), key, writer_gauge, shutdown.clone());
                (
                    Arc::new(LedgerObserver::new(handle, leader.clone())),
                    Some(task),
                    leader,
                )
            }
            None => {
                tracing::warn!("no --database-url: transitions are logged, not written to the ledger");
                writer_gauge.set(1);
                (Arc::new(LogObserver), None, Leadership::sole())
            }
        };
        // MAINT states and self-healing's stats: the backends' runtime API, else the first rotation
        // instance.
        let first_instance = config
            .rotation
            .as_ref()
            .and_then(|r| r.instances.first().map(String::as_str));
        let maint_api = egress_health::maint_api(&config.health.backends, first_instance);
        let heal_metrics = egress_rotate::heal::Metrics::new(&registry)?;
        let heal = egress_rotate::heal::run(
            config.health.clone(),
            config.rotation.clone(),
            args.database_url.clone(),
            maint_api.clone(),
            heal_metrics,
            leader.clone(),
            shutdown.clone(),
        );
        let checker = async {
            let result = egress_health::run(
                config.health,
                maint_api,
                agent,
                observer,
                &registry,
                shutdown.clone(),
            )
            .await;
            // run() also returns early on a setup error: stop the metrics server with it.
            shutdown.cancel();
            result
        };
        let (result, (), ()) = tokio::join!(checker, serve, heal);
        ledger_stop.cancel();
        if let Some(task) = ledger_task
            && let Err(error) = task.await
        {
            tracing::error!(%error, "ledger writer task failed");
        }
        result.context("checker")
    }
}
