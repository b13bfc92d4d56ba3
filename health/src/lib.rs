//! The probe service of egress-checker (`egress-checker run`): synthetic CONNECT probes through every egress backend, a quarantine state machine
//! with hysteresis and a pool guard, and an agent-check responder that tells HAProxy the verdict.
//!
//! ```text
//!  backends (runtime API or config) ─▶ scheduler ─▶ probe (TCP → CONNECT → 2xx → TLS → exit IP)
//!                                          │  control probe excuses target-side failures
//!                                          ▼
//!                                 state::Machine ──▶ TransitionObserver (ledger, logs) + metrics
//!                                          ▲
//!  HAProxy agent-check ("be/srv\n") ─▶ agent responder ("up 40%" / "down #connect-status-503")
//! ```
//!
//! [`run`] is the whole long-running service; the binary and the tests both call it.
#![forbid(unsafe_code)]

pub mod agent;
pub mod backends;
pub mod config;
pub mod control;
pub mod leader;
pub mod ledger_observer;
pub mod maint;
pub mod metrics;
pub mod observer;
pub mod probe;
pub mod scheduler;
pub mod shared;
pub mod state;

use std::sync::Arc;
use std::time::Duration;

use egress_haproxy_api::{RuntimeApi, RuntimeApiAddr};
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use ledger_observer::LedgerObserver;
pub use observer::{ExitIpEvent, LogObserver, TransitionObserver};
pub use shared::Shared;
pub use state::{HealthKind, ServerKey, Transition};

use metrics::Metrics;
use state::Params;

/// Why the checker cannot run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// Metrics could not be registered (a name clash in the registry).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// Probe setup failed (TLS roots, targets).
    #[error("setup: {0}")]
    Setup(#[from] probe::SetupError),
    /// The backends' runtime API address.
    #[error("backends.runtime_api: {0}")]
    Backends(#[from] egress_haproxy_api::AddrError),
}

impl Params {
    /// From the `[decision]` section.
    pub fn from_config(d: &config::DecisionConfig) -> Self {
        Params {
            quarantine_after: d.quarantine_after,
            restore_after: d.restore_after,
            ramp: d.ramp,
            ramp_start_percent: d.ramp_start_percent,
            max_quarantined_share: d.max_quarantined_share,
        }
    }
}

/// Run the checker until `shutdown`: probe every backend, keep the quarantine state, and answer
/// HAProxy's agent checks on `agent_listener`. Metrics are registered on `registry` (serving them is
/// the caller's job).
/// `maint_api` is where MAINT states are read ([`maint_api`]). Which replica writes the ledger is the
/// observer's business ([`leader`], [`LedgerObserver`]); self-healing rotations are the binary's to
/// run beside this (egress-rotate).
pub async fn run(
    cfg: Config,
    maint_api: Option<RuntimeApi>,
    agent_listener: TcpListener,
    observer: Arc<dyn TransitionObserver>,
    registry: &Registry,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let problems = cfg.problems();
    if !problems.is_empty() {
        return Err(config::ConfigError::Invalid(problems).into());
    }
    let metrics = Metrics::new(registry)?;
    let prober = probe::Prober::from_config(&cfg)?;
    let source = backends::BackendSource::from_config(&cfg.backends)?;
    let control = control::Control::new(&prober, cfg.control.ttl, cfg.control.timeout);
    let shared = Arc::new(Shared::new(Params::from_config(&cfg.decision), metrics));
    let mut ctx = scheduler::Ctx::new(shared.clone(), prober, control, observer, &cfg.probe);
    if let Some(api) = maint_api {
        ctx = ctx.with_maint_watch(maint::MaintWatch::new(api, Duration::from_millis(500)));
    }
    let ctx = Arc::new(ctx);

    let tasks = tokio_util::task::TaskTracker::new();
    tasks.spawn(agent::serve(
        agent_listener,
        shared.clone(),
        cfg.agent.read_timeout,
        cfg.agent.max_connections,
        shutdown.clone(),
    ));
    if let Some(e) = &cfg.exit_ip {
        // Know our own exit IP before the first probe, or the first leak would go unseen.
        scheduler::fetch_direct_ip(&ctx, e.timeout + cfg.control.timeout).await;
        tasks.spawn(scheduler::refresh_direct_ip(
            ctx.clone(),
            e.interval,
            e.timeout + cfg.control.timeout,
            shutdown.clone(),
        ));
    }
    tasks.spawn(scheduler::tick_loop(
        ctx.clone(),
        Duration::from_millis(250),
        shutdown.clone(),
    ));
    tasks.spawn(scheduler::run_pool(ctx.clone(), source, shutdown.clone()));
    tracing::info!(targets = cfg.targets.len(), "egress checker running");
    shutdown.cancelled().await;
    tasks.close();
    // Probe steps all have deadlines; a stuck task must not hold the process hostage.
    if tokio::time::timeout(Duration::from_secs(5), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("checker tasks did not stop within 5s");
    }
    Ok(())
}

/// Where MAINT states (and self-healing's stats) are read: the backend source's runtime API, else
/// `fallback` (the first rotation instance, when the backends are listed statically).
pub fn maint_api(backends: &config::BackendsConfig, fallback: Option<&str>) -> Option<RuntimeApi> {
    let addr = backends.runtime_api.as_deref().or(fallback)?;
    let addr = RuntimeApiAddr::parse(addr).ok()?;
    Some(RuntimeApi::new(addr, Duration::from_secs(2)))
}
