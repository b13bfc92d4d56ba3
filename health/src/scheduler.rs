//! Runs the probes: one small task per server on a jittered fixed-rate schedule, a global rate limit
//! (governor) and a concurrency cap (a semaphore), so 10,000 backends never become 10,000
//! simultaneous sockets. Every outcome goes through the state machine; every transition is
//! published from one place ([`Ctx::publish`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::Rng;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backends::{BackendSource, ServerSpec};
use crate::config::ProbeConfig;
use crate::control::Control;
use crate::observer::{ExitIpEvent, TransitionObserver};
use crate::probe::Prober;
use crate::probe::class::FailureClass;
use crate::shared::Shared;
use crate::state::{Health, HealthKind, Outcome, ServerKey, Transition};

/// Everything the probe tasks share.
pub struct Ctx {
    /// State and metrics.
    pub shared: Arc<Shared>,
    /// Probe machinery.
    pub prober: Prober,
    /// Control probe.
    pub control: Control,
    /// Ledger / log sink.
    pub observer: Arc<dyn TransitionObserver>,
    /// Global probe rate.
    pub limiter: DefaultDirectRateLimiter,
    /// Probes in flight.
    pub in_flight: Semaphore,
    /// Schedule.
    pub interval: Duration,
    /// Schedule jitter fraction.
    pub jitter: f64,
    /// The checker's own direct exit IP (for leak detection), refreshed in the background.
    pub direct_ip: RwLock<Option<IpAddr>>,
    /// HAProxy's maintenance states: failures of servers in MAINT are not counted.
    pub maint: Option<crate::maint::MaintWatch>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl Ctx {
    /// Build from the probe config.
    pub fn new(
        shared: Arc<Shared>,
        prober: Prober,
        control: Control,
        observer: Arc<dyn TransitionObserver>,
        probe: &ProbeConfig,
    ) -> Self {
        let rate = NonZeroU32::new(probe.max_rate).unwrap_or(NonZeroU32::MIN);
        // A small burst keeps the limiter from releasing a whole second's worth at once.
        let burst = NonZeroU32::new((probe.max_rate / 20).max(1)).unwrap_or(NonZeroU32::MIN);
        Ctx {
            shared,
            prober,
            control,
            observer,
            limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
            in_flight: Semaphore::new(probe.max_concurrency.max(1)),
            interval: probe.interval,
            jitter: probe.jitter,
            direct_ip: RwLock::new(None),
            maint: None,
        }
    }

    /// Do not count failures of servers HAProxy has in maintenance (read through `watch`).
    #[must_use]
    pub fn with_maint_watch(mut self, watch: crate::maint::MaintWatch) -> Self {
        self.maint = Some(watch);
        self
    }

    /// The one place transitions go: a metric update and an observer call each, then the gauges.
    pub fn publish(&self, transitions: &[Transition]) {
        let m = &self.shared.metrics;
        for t in transitions {
            m.transitions
                .with_label_values(&[t.to.as_str(), t.reason.map(|r| r.as_str()).unwrap_or("-")])
                .inc();
            self.observer.on_transition(t);
        }
        self.shared.update_gauges();
    }

    fn jittered(&self) -> Duration {
        if self.jitter <= 0.0 {
            return self.interval;
        }
        let f = rand::rng().random_range((1.0 - self.jitter)..=(1.0 + self.jitter));
        self.interval.mul_f64(f)
    }

    fn direct_ip(&self) -> Option<IpAddr> {
        *self.direct_ip.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// Keep the probe tasks in step with the backend list until `shutdown`.
pub async fn run_pool(ctx: Arc<Ctx>, source: BackendSource, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    let mut running: HashMap<ServerKey, (SocketAddr, CancellationToken)> = HashMap::new();
    loop {
        match source.load().await {
            Ok(list) => {
                ctx.shared
                    .metrics
                    .backend_refreshes
                    .with_label_values(&["ok"])
                    .inc();
                apply(&ctx, &tracker, &mut running, list, &shutdown);
            }
            Err(error) => {
                // Keep probing the last known list: HAProxy being briefly unreachable changes nothing.
                ctx.shared
                    .metrics
                    .backend_refreshes
                    .with_label_values(&["error"])
                    .inc();
                tracing::warn!(%error, "backend list refresh failed");
            }
        }
        let Some(every) = source.refresh() else { break };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
    shutdown.cancelled().await;
    tracker.close();
    tracker.wait().await;
}

fn apply(
    ctx: &Arc<Ctx>,
    tracker: &TaskTracker,
    running: &mut HashMap<ServerKey, (SocketAddr, CancellationToken)>,
    list: Vec<ServerSpec>,
    shutdown: &CancellationToken,
) {
    let wanted: HashMap<ServerKey, SocketAddr> = list.into_iter().map(|s| (s.key, s.addr)).collect();
    running.retain(|k, (addr, token)| {
        let keep = wanted.get(k) == Some(addr);
        if !keep {
            token.cancel();
        }
        keep
    });
    {
        let keys: Vec<ServerKey> = wanted.keys().cloned().collect();
        ctx.shared.lock().set_servers(&keys);
    }
    for (key, addr) in wanted {
        if running.contains_key(&key) {
            continue;
        }
        let token = shutdown.child_token();
        running.insert(key.clone(), (addr, token.clone()));
        tracker.spawn(server_loop(ctx.clone(), key, addr, token));
    }
    ctx.shared.update_gauges();
}

async fn in_maint(ctx: &Ctx, key: &ServerKey) -> bool {
    match &ctx.maint {
        Some(w) => w.in_maint(key).await,
        None => false,
    }
}

async fn server_loop(ctx: Arc<Ctx>, key: ServerKey, addr: SocketAddr, token: CancellationToken) {
    let interval = ctx.interval;
    // Spread first probes over one interval so servers do not probe in lockstep.
    let mut due = Instant::now() + interval.mul_f64(rand::rng().random_range(0.0..1.0));
    let mut target = rand::rng().random_range(0..ctx.prober.targets.len().max(1));
    let mut next_exit_check = Instant::now();
    let mut force_exit_check = false;
    let mut last_ip: Option<IpAddr> = None;
    // The IP known before an `exit_ip_unknown`: the next check records a change against it.
    let mut ip_before_unknown: Option<IpAddr> = None;
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep_until(due.into()) => {}
        }
        let permit = tokio::select! {
            _ = token.cancelled() => return,
            p = async {
                ctx.limiter.until_ready().await;
                ctx.in_flight.acquire().await
            } => match p { Ok(p) => p, Err(_) => return },
        };
        let started = Instant::now();
        ctx.shared
            .metrics
            .probe_lateness
            .observe(started.saturating_duration_since(due).as_secs_f64());
        let idx = target;
        target = target.wrapping_add(1);

        let mut outcome = match ctx.prober.probe(addr, idx).await {
            Ok(()) => {
                ctx.shared
                    .metrics
                    .probes
                    .with_label_values(&["ok", "counted"])
                    .inc();
                Outcome::Success {
                    exit_ip_verified: false,
                }
            }
            Err(class) if in_maint(&ctx, &key).await => {
                ctx.shared
                    .metrics
                    .probes
                    .with_label_values(&[class.as_str(), "maint"])
                    .inc();
                tracing::debug!(server = %key, class = class.as_str(), "probe failed while in HAProxy maintenance: not counted");
                Outcome::Inconclusive
            }
            Err(class) => {
                let excused = class.may_be_target_side() && !ctx.control.target_ok(&ctx.prober, idx).await;
                let m = &ctx.shared.metrics;
                if class.may_be_target_side() {
                    m.control_probes
                        .with_label_values(&[if excused { "target-down" } else { "target-up" }])
                        .inc();
                }
                m.probes
                    .with_label_values(&[class.as_str(), if excused { "excused" } else { "counted" }])
                    .inc();
                tracing::debug!(server = %key, class = class.as_str(), excused, "probe failed");
                if excused {
                    Outcome::Inconclusive
                } else {
                    Outcome::Failure(class)
                }
            }
        };

        // A failed probe of a server whose exit IP was known: the tunnel may come back elsewhere,
        // so the agents tag it `unknown` until the next exit-IP check (at the next success).
        if let (Outcome::Failure(class), Some(last)) = (&outcome, last_ip) {
            ctx.observer.on_exit_ip(&ExitIpEvent::Unknown {
                backend: key.backend.clone(),
                server: key.server.clone(),
                last,
                reason: class.as_str(),
                at: Utc::now(),
            });
            ip_before_unknown = last_ip.take();
            force_exit_check = true;
        }
        let leak_quarantined = matches!(
            ctx.shared.lock().health(&key),
            Some(Health::Quarantined {
                reason: FailureClass::ExitIpLeak,
                ..
            })
        );
        let exit_due = force_exit_check || leak_quarantined || Instant::now() >= next_exit_check;
        if matches!(outcome, Outcome::Success { .. })
            && exit_due
            && let Some(result) = ctx.prober.exit_ip(addr).await
        {
            let exit_interval = ctx
                .prober
                .exit_ip
                .as_ref()
                .map(|e| e.interval)
                .unwrap_or(interval);
            next_exit_check = Instant::now() + exit_interval;
            force_exit_check = false;
            outcome = exit_ip_outcome(&ctx, &key, result, &mut last_ip, &mut ip_before_unknown);
        }
        drop(permit);
        ctx.shared
            .metrics
            .probe_duration
            .observe(started.elapsed().as_secs_f64());

        let transitions = ctx
            .shared
            .lock()
            .record(&key, outcome, Instant::now(), Utc::now());
        if transitions
            .iter()
            .any(|t| t.to == HealthKind::Ramping && t.server == key.server && t.backend == key.backend)
        {
            // Every restore is followed by an exit-IP check: a restarted tunnel may exit elsewhere.
            force_exit_check = true;
        }
        if !transitions.is_empty() {
            ctx.publish(&transitions);
        }

        due += ctx.jittered();
        let now = Instant::now();
        if due < now {
            due = now;
        }
    }
}

fn exit_ip_outcome(
    ctx: &Ctx,
    key: &ServerKey,
    result: Result<IpAddr, FailureClass>,
    last_ip: &mut Option<IpAddr>,
    ip_before_unknown: &mut Option<IpAddr>,
) -> Outcome {
    let m = &ctx.shared.metrics;
    let ip = match result {
        Ok(ip) => ip,
        Err(class) => {
            // The echo endpoint being unreachable says nothing certain about the tunnel, which
            // just passed its CONNECT (and TLS) probe: count it, do not quarantine on it.
            m.exit_ip_checks.with_label_values(&[class.as_str()]).inc();
            return Outcome::Success {
                exit_ip_verified: false,
            };
        }
    };
    let at = Utc::now();
    if ctx.direct_ip() == Some(ip) {
        m.exit_ip_checks.with_label_values(&["exit-ip-leak"]).inc();
        ctx.observer.on_exit_ip(&ExitIpEvent::Leak {
            backend: key.backend.clone(),
            server: key.server.clone(),
            ip,
            at,
        });
        return Outcome::Failure(FailureClass::ExitIpLeak);
    }
    m.exit_ip_checks.with_label_values(&["ok"]).inc();
    // After an `exit_ip_unknown`, the IP known before it: a different IP is a change, the same one
    // is observed again (which ends the unknown state in the agents).
    let after_unknown = last_ip.is_none() && ip_before_unknown.is_some();
    match last_ip.or(ip_before_unknown.take()) {
        Some(old) if old == ip && after_unknown => ctx.observer.on_exit_ip(&ExitIpEvent::Observed {
            backend: key.backend.clone(),
            server: key.server.clone(),
            ip,
            at,
        }),
        None => ctx.observer.on_exit_ip(&ExitIpEvent::Observed {
            backend: key.backend.clone(),
            server: key.server.clone(),
            ip,
            at,
        }),
        Some(old) if old != ip => {
            m.exit_ip_changes.inc();
            ctx.observer.on_exit_ip(&ExitIpEvent::Changed {
                backend: key.backend.clone(),
                server: key.server.clone(),
                old,
                new: ip,
                at,
            });
        }
        Some(_) => {}
    }
    *last_ip = Some(ip);
    Outcome::Success {
        exit_ip_verified: true,
    }
}

/// Fetch the checker's own direct exit IP once; keep the last known value on failure.
pub async fn fetch_direct_ip(ctx: &Ctx, timeout: Duration) {
    match ctx.prober.direct_exit_ip(timeout).await {
        None => {}
        Some(Ok(ip)) => {
            let mut slot = ctx.direct_ip.write().unwrap_or_else(|e| e.into_inner());
            if *slot != Some(ip) {
                tracing::info!(%ip, "checker's own direct exit ip");
            }
            *slot = Some(ip);
        }
        Some(Err(class)) => {
            tracing::warn!(
                class = class.as_str(),
                "direct exit ip unavailable; leak check keeps the last value"
            );
        }
    }
}

/// Re-fetch the direct exit IP every `every` until `shutdown`.
pub async fn refresh_direct_ip(
    ctx: Arc<Ctx>,
    every: Duration,
    timeout: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        fetch_direct_ip(&ctx, timeout).await;
    }
}

/// Publish time-driven transitions (ramps ending) and refresh the gauges every `every` until
/// `shutdown`.
pub async fn tick_loop(ctx: Arc<Ctx>, every: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let transitions = ctx.shared.lock().tick(Instant::now(), Utc::now());
        if transitions.is_empty() {
            // Guard holds change without transitions; keep the gauges fresh regardless.
            ctx.shared.update_gauges();
        } else {
            ctx.publish(&transitions);
        }
    }
}
