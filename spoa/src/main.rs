//! egress-spoa: the HAProxy SPOE agent binary. Thin: parse and validate config, set up tracing and
//! metrics, bind, and call `egress_spoa::run`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use egress_common::client_hash::HashKey;
use egress_common::telemetry::{self, LogFormat};
use egress_ledger::{LedgerWriter, Store, StoreOptions, WriterConfig};
use egress_spoa::attribution::{self, AggregatorConfig, AttributionSink, LogSink};
use egress_spoa::connection::ConnectionConfig;
use egress_spoa::exit_ip::{ExitIpSource, ExitIps, FileExitIpSource};
use egress_spoa::ledger::{LedgerExitIps, LedgerSink};
use egress_spoa::metrics::Metrics;
use egress_spoa::{Agent, ServerConfig};
use tokio_util::sync::CancellationToken;

const LONG_ABOUT: &str = "\
egress-spoa is an HAProxy SPOE agent (SPOP 2.0, HAProxy 2.6 to 3.4). At on-server-session HAProxy sends
it the client address, the backend and the chosen server (message egress-attribution); the agent answers
at once with txn.egress.client_hash (a SipHash of the client identity, keyed with a secret shared by every
agent) and txn.egress.exit_ip (the server's exit IP as last recorded), and aggregates who went out through
which server and exit IP per minute. It never routes: if it is down, HAProxy fails open.

HAProxy lines to paste (the engine file is haproxy/spoe-egress.conf):

  frontend entry
      filter spoe engine egress config /etc/haproxy/spoe-egress.conf
      log-format \"%ci:%cp [%tr] %ft %b/%s %TR/%Tw/%Tc/%Tr/%Ta %ST %B %tsc client=%[var(txn.egress.client_hash)] exit=%[var(txn.egress.exit_ip)]\"

  backend spoe-egress
  .if version_atleast(3.1)
      mode spop
  .else
      mode tcp
  .endif
      timeout connect 1s
      timeout server 3m
      retries 0
      option spop-check
      server spoa1 127.0.0.1:12345 check inter 1s fall 2 rise 2

On HAProxy 3.1+ leave `maxconn` off that server line: there it caps messages in flight, not
connections. The frontend must not share a backend's name (an error from HAProxy 3.3 on).

The hash key is 32 hex characters, from --hash-key-file or the EGRESS_HASH_KEY environment variable.";

/// What `main` returns, as `--help` prints it.
const EXIT_CODES: &str = "Exit codes: 0 stopped by SIGTERM/SIGINT (--check-config: the configuration is valid), \
                          1 failed (the runtime, a listener, the metrics or the ledger writer could not start), \
                          2 invalid configuration, a bad --database-url included (nothing started).";

/// Command line; every option can also come from the environment.
#[derive(Debug, Parser)]
#[command(
    name = "egress-spoa",
    version,
    about = "HAProxy SPOE agent: client hash, exit IP and attribution for egress pools",
    long_about = LONG_ABOUT,
    after_help = EXIT_CODES
)]
struct Cli {
    /// SPOP listen address.
    #[arg(long, env = "EGRESS_SPOA_LISTEN", default_value = "127.0.0.1:12345")]
    listen: SocketAddr,
    /// Prometheus /metrics and /healthz listen address.
    #[arg(long, env = "EGRESS_SPOA_METRICS_LISTEN", default_value = "127.0.0.1:9112")]
    metrics_listen: SocketAddr,
    /// File holding the 32-hex-character hash key (else the EGRESS_HASH_KEY environment variable).
    #[arg(long, env = "EGRESS_HASH_KEY_FILE")]
    hash_key_file: Option<PathBuf>,
    /// Our max-frame-size; the agent uses min(this, HAProxy's). HAProxy's default is 16380.
    #[arg(long, env = "EGRESS_SPOA_MAX_FRAME_SIZE", default_value_t = 16380)]
    max_frame_size: u32,
    /// Concurrent SPOP connections (HAProxy 2.x opens many; 3.x reuses a few).
    #[arg(long, env = "EGRESS_SPOA_MAX_CONNECTIONS", default_value_t = 4096)]
    max_connections: usize,
    /// NOTIFYs answered per connection before ACKs are flushed (HAProxy pipelines up to 20).
    #[arg(long, env = "EGRESS_SPOA_MAX_INFLIGHT_PER_CONNECTION", default_value_t = 64)]
    max_inflight_per_connection: usize,
    /// Deadline for HAProxy's HELLO after accept.
    #[arg(long, env = "EGRESS_SPOA_HELLO_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    hello_timeout: Duration,
    /// Close connections idle this long (keep above HAProxy's `timeout idle`/`timeout server`).
    #[arg(long, env = "EGRESS_SPOA_IDLE_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// Deadline for one socket write.
    #[arg(long, env = "EGRESS_SPOA_WRITE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    write_timeout: Duration,
    /// How long open connections may drain after SIGTERM.
    #[arg(long, env = "EGRESS_SPOA_SHUTDOWN_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
    /// Attribution records queued for aggregation; beyond this they are dropped and counted.
    #[arg(long, env = "EGRESS_SPOA_ATTRIBUTION_QUEUE", default_value_t = 65536)]
    attribution_queue: usize,
    /// How often closed minute windows are handed to the attribution sink.
    #[arg(long, env = "EGRESS_SPOA_ATTRIBUTION_FLUSH_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    attribution_flush_interval: Duration,
    /// Distinct attribution keys held in memory before an early flush.
    #[arg(long, env = "EGRESS_SPOA_ATTRIBUTION_MAX_KEYS", default_value_t = 1_000_000)]
    attribution_max_keys: usize,
    /// Postgres URL of the ledger: attribution is written there, and exit IPs are read from its
    /// timeline. Without it the agent still tags requests (client hash; exit IP from
    /// --exit-ips-file) and only logs attribution.
    #[arg(long, env = "EGRESS_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Local spool file for the ledger writer (used while Postgres is unreachable).
    #[arg(
        long,
        env = "EGRESS_SPOA_SPOOL",
        default_value = "/var/lib/egress-spoa/ledger.spool"
    )]
    spool_path: PathBuf,
    /// File of `backend server ip` lines: the exit IP of each server. Overrides the ledger as the
    /// exit-IP source (for setups without a checker).
    #[arg(long, env = "EGRESS_SPOA_EXIT_IPS_FILE")]
    exit_ips_file: Option<PathBuf>,
    /// How often the exit-IP map is reloaded in any case. From the ledger, changes are also pushed
    /// (LISTEN/NOTIFY) and reloaded within milliseconds; this poll is the fallback while the
    /// notification connection is down. A server the map does not know is tagged `exit=unknown`
    /// (never a stale IP) and triggers a reload at once (at most one per second).
    #[arg(long, env = "EGRESS_SPOA_EXIT_IPS_REFRESH", default_value = "10s", value_parser = humantime::parse_duration)]
    exit_ips_refresh: Duration,
    /// Runtime worker threads (default: the CPUs this process may run on, as affinity and cgroup
    /// quota allow). 1 runs everything on one thread (tokio's current-thread scheduler): the
    /// cheapest per message when the agent is pinned to one core.
    #[arg(long, env = "EGRESS_SPOA_WORKER_THREADS")]
    worker_threads: Option<usize>,
    /// Batching window: when the agent is answering a stream of NOTIFYs (at least two per wake-up),
    /// it waits this long before going idle, so that what arrives meanwhile is read and answered in
    /// one read and one write per connection. HAProxy 3.1+ sends each NOTIFY with its own write;
    /// this halves the agent's CPU per message there (docs/spoa-figures.md). A quiet agent never
    /// waits. 0 turns it off. At most 5ms (it adds up to this much to an answer under load).
    #[arg(long, env = "EGRESS_SPOA_COALESCE", default_value = "500us", value_parser = humantime::parse_duration)]
    coalesce: Duration,
    /// Log format.
    #[arg(long, env = "EGRESS_SPOA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log filter (RUST_LOG syntax).
    #[arg(long, env = "EGRESS_SPOA_LOG", default_value = "info")]
    log: String,
    /// Validate the configuration, print a one-line summary and exit (0 = valid, 2 = invalid).
    #[arg(long)]
    check_config: bool,
}

/// Everything validated before anything binds.
struct Checked {
    key: HashKey,
    server: ServerConfig,
    exit_ip_entries: Option<usize>,
}

fn check(cli: &Cli) -> anyhow::Result<Checked> {
    let env_key = std::env::var("EGRESS_HASH_KEY").ok();
    let key = HashKey::load(cli.hash_key_file.as_deref(), env_key.as_deref()).context("hash key")?;
    // SPOP_MIN_FRAME_SIZE is 256; HAProxy's maximum is tune.bufsize - 4.
    if !(256..=1 << 20).contains(&cli.max_frame_size) {
        bail!(
            "--max-frame-size must be between 256 and 1048576, got {}",
            cli.max_frame_size
        );
    }
    if cli.max_connections == 0 || cli.max_inflight_per_connection == 0 || cli.attribution_queue == 0 {
        bail!("--max-connections, --max-inflight-per-connection and --attribution-queue must be at least 1");
    }
    if cli.coalesce > Duration::from_millis(5) {
        bail!(
            "--coalesce must be at most 5ms (it adds up to that much to an answer), got {:?}",
            cli.coalesce
        );
    }
    for (name, d) in [
        ("--hello-timeout", cli.hello_timeout),
        ("--idle-timeout", cli.idle_timeout),
        ("--write-timeout", cli.write_timeout),
        ("--attribution-flush-interval", cli.attribution_flush_interval),
        ("--exit-ips-refresh", cli.exit_ips_refresh),
    ] {
        if d.is_zero() {
            bail!("{name} must be greater than zero");
        }
    }
    if cli.worker_threads == Some(0) {
        bail!("--worker-threads must be at least 1");
    }
    if let Some(url) = &cli.database_url {
        Store::check_url(url).context("--database-url")?;
    }
    let exit_ip_entries = match &cli.exit_ips_file {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("exit-IP file {}", path.display()))?;
            // The reason in one line: its source is part of its text.
            let map = egress_spoa::exit_ip::parse_exit_ip_lines(&text)
                .map_err(|e| anyhow::anyhow!("exit-IP file {}: {e}", path.display()))?;
            Some(map.len())
        }
        None => None,
    };
    Ok(Checked {
        key,
        server: ServerConfig {
            connection: ConnectionConfig {
                max_frame_size: cli.max_frame_size,
                max_inflight: cli.max_inflight_per_connection,
                hello_timeout: cli.hello_timeout,
                idle_timeout: cli.idle_timeout,
                write_timeout: cli.write_timeout,
                ..ConnectionConfig::default()
            },
            max_connections: cli.max_connections,
            shutdown_grace: cli.shutdown_grace,
        },
        exit_ip_entries,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let checked = match check(&cli) {
        Ok(c) => c,
        Err(error) => {
            eprintln!("egress-spoa: invalid configuration: {error:#}");
            return ExitCode::from(2);
        }
    };
    if cli.check_config {
        println!(
            "egress-spoa: configuration OK: listen {} metrics {} max-frame-size {} max-connections {} \
             max-inflight {} exit-ips {}",
            cli.listen,
            cli.metrics_listen,
            cli.max_frame_size,
            cli.max_connections,
            cli.max_inflight_per_connection,
            checked
                .exit_ip_entries
                .map_or("none".to_owned(), |n| format!("{n} entries")),
        );
        return ExitCode::SUCCESS;
    }
    telemetry::init(cli.log_format, &cli.log);
    // One worker: the current-thread scheduler (no work-stealing queues, no cross-thread wake-ups);
    // the same code runs on either.
    let workers = cli
        .worker_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get));
    let mut rt = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    rt.on_thread_park(egress_spoa::coalesce::park_hook(cli.coalesce));
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("egress-spoa: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(cli, checked)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "egress-spoa failed");
            eprintln!("egress-spoa: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(cli: Cli, checked: Checked) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new().context("metrics registry")?);
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("bind SPOP listener {}", cli.listen))?;
    let metrics_listener = tokio::net::TcpListener::bind(cli.metrics_listen)
        .await
        .with_context(|| format!("bind metrics listener {}", cli.metrics_listen))?;

    let shutdown = CancellationToken::new();
    tokio::spawn(egress_common::signal::cancel_on_signal(shutdown.clone()));
    tokio::spawn(egress_common::metrics_http::serve(
        metrics_listener,
        metrics.registry().clone(),
        shutdown.clone(),
    ));

    // The ledger writer is stopped last, after the aggregator has handed it every row.
    let ledger_stop = CancellationToken::new();
    let ledger = match &cli.database_url {
        Some(url) => {
            let (handle, task) = LedgerWriter::spawn(
                WriterConfig::new(url.clone(), cli.spool_path.clone()),
                metrics.registry(),
                ledger_stop.clone(),
            )
            .context("start the ledger writer")?;
            let store = Store::connect_lazy_with(url, StoreOptions::default()).context("ledger store")?;
            Some((handle, task, store))
        }
        None => {
            tracing::warn!("no --database-url: attribution is logged at debug level, not stored");
            None
        }
    };

    let exit_ips = Arc::new(ExitIps::new());
    let exit_ip_source: Option<Arc<dyn ExitIpSource>> = match (&cli.exit_ips_file, &ledger) {
        (Some(path), _) => Some(Arc::new(FileExitIpSource::new(path))),
        (None, Some((_, _, store))) => Some(Arc::new(LedgerExitIps::new(store.clone()))),
        (None, None) => None,
    };
    if let Some(source) = exit_ip_source {
        // First load before serving, so the first requests already carry exit IPs.
        match source.load().await {
            Ok(map) => {
                metrics.exit_ip_entries.set(map.len() as i64);
                exit_ips.replace(map);
            }
            Err(error) => tracing::warn!(%error, "initial exit-IP load failed"),
        }
        tokio::spawn(exit_ips.clone().run_refresher(
            source,
            cli.exit_ips_refresh,
            shutdown.clone(),
            metrics.clone(),
        ));
        // From the ledger, changes are also pushed: every exit-IP event reloads the map at once.
        if let (None, Some((_, _, store))) = (&cli.exit_ips_file, &ledger) {
            tokio::spawn(egress_spoa::ledger::run_exit_ip_listener(
                store.clone(),
                exit_ips.clone(),
                shutdown.clone(),
                metrics.clone(),
            ));
        }
    }

    let (tx, rx) = attribution::channel(cli.attribution_queue, metrics.clone());
    let aggregator_stop = CancellationToken::new();
    let aggregator = tokio::spawn(attribution::run_aggregator(
        rx,
        match &ledger {
            Some((handle, _, _)) => Arc::new(LedgerSink::new(handle.clone())) as Arc<dyn AttributionSink>,
            None => Arc::new(LogSink),
        },
        AggregatorConfig {
            flush_interval: cli.attribution_flush_interval,
            max_keys: cli.attribution_max_keys,
        },
        aggregator_stop.clone(),
        metrics.clone(),
    ));

    let agent = Arc::new(Agent::new(checked.key, exit_ips, tx, metrics));
    egress_spoa::run(listener, agent, checked.server, shutdown.clone()).await?;

    // Connections are drained: flush attribution, including the open minute.
    aggregator_stop.cancel();
    if tokio::time::timeout(Duration::from_secs(10), aggregator)
        .await
        .is_err()
    {
        tracing::warn!("attribution flush did not finish in 10s");
    }
    if let Some((handle, task, store)) = ledger {
        drop(handle);
        ledger_stop.cancel();
        if let Err(error) = task.await {
            tracing::error!(%error, "ledger writer task failed");
        }
        store.close().await;
    }
    tracing::info!("egress-spoa stopped");
    Ok(())
}
