//! The current exit IP of each (backend, server): a read-mostly map swapped whole by a background
//! refresher. Lookups never wait for the refresher: each connection keeps a snapshot and re-reads
//! it only when the generation counter moves.
//!
//! The refresher reloads on a timer (the fallback), and at once when woken: by a ledger
//! notification ([`crate::ledger::run_exit_ip_listener`]), or by a lookup of a server the map does
//! not know (at most once per [`UNKNOWN_RELOAD_EVERY`]). Wake-ups that arrive while a reload runs
//! fold into one more reload: a burst of notifications costs two loads at most.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// The (backend, server) → exit IP map a source loads.
pub type ExitIpMap = HashMap<(String, String), IpAddr>;

/// The future an [`ExitIpSource`] returns.
pub type LoadFuture<'a> = Pin<Box<dyn Future<Output = Result<ExitIpMap, ExitIpError>> + Send + 'a>>;

/// Why an exit-IP map could not be loaded (the refresher keeps the previous map).
#[derive(Debug, thiserror::Error)]
pub enum ExitIpError {
    /// A line of the file is not `backend server ip`.
    #[error("line {line}: want `backend server ip`, got {fields} fields")]
    Fields {
        /// 1-based line number.
        line: usize,
        /// How many whitespace-separated fields it had.
        fields: usize,
    },
    /// The third field is not an IP address.
    #[error("line {line}: bad IP {text:?}: {source}")]
    BadIp {
        /// 1-based line number.
        line: usize,
        /// The field.
        text: String,
        /// The parser's reason.
        #[source]
        source: std::net::AddrParseError,
    },
    /// The file could not be read.
    #[error("{}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than the agent reads.
    #[error("{}: larger than {max} bytes", .path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        max: u64,
    },
    /// The ledger could not be read.
    #[error(transparent)]
    Ledger(#[from] egress_ledger::LedgerError),
}

/// Shortest time between two reloads asked for by lookups of unknown servers: a server that stays
/// unknown (mid-rotation, or a name the ledger never saw) must not turn every request into a query.
pub const UNKNOWN_RELOAD_EVERY: Duration = Duration::from_secs(1);

/// Why the refresher reloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// A ledger notification: an exit IP was observed, changed, leaked, rotated or became unknown.
    Push,
    /// The notification listener (re)connected: what happened while it was away is unknown.
    Reconnect,
    /// A request named a server the map does not know.
    UnknownServer,
}

impl Reload {
    fn as_str(self) -> &'static str {
        match self {
            Reload::Push => "push",
            Reload::Reconnect => "reconnect",
            Reload::UnknownServer => "unknown-server",
        }
    }
}

/// Where the exit IPs come from (a file, or the ledger).
pub trait ExitIpSource: Send + Sync {
    /// Load the whole (backend, server) → exit IP map.
    fn load(&self) -> LoadFuture<'_>;
}

/// backend → server → IP, so lookups borrow `&str` without building a tuple key.
pub type Snapshot = HashMap<String, HashMap<String, IpAddr>>;

/// The shared map.
#[derive(Debug, Default)]
pub struct ExitIps {
    current: RwLock<Arc<Snapshot>>,
    generation: AtomicU64,
    wake: Notify,
    /// Why the pending wake-up was asked for (the first cause since the last reload).
    cause: Mutex<Option<Reload>>,
    /// When a lookup last asked for a reload: milliseconds since [`epoch`] + 1 (0: never). An
    /// atomic: it is read on the request path for every unknown server.
    last_unknown_wake: AtomicU64,
}

/// The process's reference instant for [`ExitIps::request_reload_for_unknown`].
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl ExitIps {
    /// An empty map (every lookup answers `None` until the first refresh).
    pub fn new() -> Self {
        Self::default()
    }

    /// Replace the whole map.
    pub fn replace(&self, map: ExitIpMap) {
        let mut snap: Snapshot = HashMap::new();
        for ((backend, server), ip) in map {
            snap.entry(backend).or_default().insert(server, ip);
        }
        let snap = Arc::new(snap);
        // A poisoned lock only means a panic elsewhere while swapping an Arc: the data is intact.
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = snap;
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The current generation; changes on every [`ExitIps::replace`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Look one server up in the current snapshot (tests and one-off callers; connections use
    /// [`CachedExitIps`]).
    pub fn get(&self, backend: &str, server: &str) -> Option<IpAddr> {
        lookup(&self.snapshot(), backend, server)
    }

    /// Ask the refresher to reload now (it coalesces: one reload for any number of calls made
    /// while it waits).
    pub fn request_reload(&self, cause: Reload) {
        self.cause
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(cause);
        self.wake.notify_one();
    }

    /// A lookup missed: ask for a reload, at most once per [`UNKNOWN_RELOAD_EVERY`]. Returns
    /// whether it asked.
    pub fn request_reload_for_unknown(&self) -> bool {
        let now = u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1;
        let last = self.last_unknown_wake.load(Ordering::Relaxed);
        let every = u64::try_from(UNKNOWN_RELOAD_EVERY.as_millis()).unwrap_or(u64::MAX);
        if last != 0 && now.saturating_sub(last) < every {
            return false;
        }
        // One caller wins the slot; the others of the same instant do not ask again.
        if self
            .last_unknown_wake
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        self.request_reload(Reload::UnknownServer);
        true
    }

    /// Refresh from `source` every `every`, and whenever [`ExitIps::request_reload`] asks, until
    /// `shutdown`. A failed load keeps the previous map.
    pub async fn run_refresher(
        self: Arc<Self>,
        source: Arc<dyn ExitIpSource>,
        every: Duration,
        shutdown: CancellationToken,
        metrics: Arc<Metrics>,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let cause = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => "poll",
                _ = self.wake.notified() => {
                    let cause = self.cause.lock().unwrap_or_else(|e| e.into_inner()).take();
                    cause.map_or("push", Reload::as_str)
                }
            };
            metrics.exit_ip_reloads.with_label_values(&[cause]).inc();
            // Bounded: a hung source must not stall refreshes forever.
            match tokio::time::timeout(every.max(Duration::from_secs(1)), source.load()).await {
                Ok(Ok(map)) => {
                    metrics.exit_ip_entries.set(map.len() as i64);
                    tracing::debug!(cause, entries = map.len(), "exit-IP map reloaded");
                    self.replace(map);
                }
                Ok(Err(error)) => {
                    metrics.exit_ip_refresh_failures.inc();
                    tracing::warn!(%error, cause, "exit-IP refresh failed; keeping the previous map");
                }
                Err(_) => {
                    metrics.exit_ip_refresh_failures.inc();
                    tracing::warn!(cause, "exit-IP refresh timed out; keeping the previous map");
                }
            }
        }
    }
}

fn lookup(snap: &Snapshot, backend: &str, server: &str) -> Option<IpAddr> {
    snap.get(backend)?.get(server).copied()
}

/// A per-connection view: one atomic load per batch, no lock on the request path.
#[derive(Debug)]
pub struct CachedExitIps {
    shared: Arc<ExitIps>,
    generation: u64,
    snap: Arc<Snapshot>,
}

impl CachedExitIps {
    /// A cache over `shared`.
    pub fn new(shared: Arc<ExitIps>) -> Self {
        let generation = shared.generation();
        let snap = shared.snapshot();
        CachedExitIps {
            shared,
            generation,
            snap,
        }
    }

    /// Pick up a newer map if there is one; `true` if it changed.
    pub fn refresh(&mut self) -> bool {
        let g = self.shared.generation();
        if g == self.generation {
            return false;
        }
        self.generation = g;
        self.snap = self.shared.snapshot();
        true
    }

    /// The exit IP of `backend`/`server` in the cached snapshot.
    pub fn get(&self, backend: &str, server: &str) -> Option<IpAddr> {
        lookup(&self.snap, backend, server)
    }
}

/// Largest exit-IP file read.
const MAX_FILE: u64 = 4 << 20;

/// A text file of `backend server ip` lines (whitespace-separated, `#` comments), e.g. written by
/// the checker or an operator.
#[derive(Clone, Debug)]
pub struct FileExitIpSource {
    path: PathBuf,
}

impl FileExitIpSource {
    /// A source reading `path` on every refresh.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileExitIpSource { path: path.into() }
    }
}

/// Parse the `backend server ip` text format.
pub fn parse_exit_ip_lines(text: &str) -> Result<ExitIpMap, ExitIpError> {
    let mut map = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [backend, server, ip] = fields[..] else {
            return Err(ExitIpError::Fields {
                line: n + 1,
                fields: fields.len(),
            });
        };
        let ip: IpAddr = ip.parse().map_err(|source| ExitIpError::BadIp {
            line: n + 1,
            text: ip.to_owned(),
            source,
        })?;
        map.insert((backend.to_owned(), server.to_owned()), ip);
    }
    Ok(map)
}

impl ExitIpSource for FileExitIpSource {
    fn load(&self) -> LoadFuture<'_> {
        Box::pin(async move {
            let read_error = |source| ExitIpError::Read {
                path: self.path.clone(),
                source,
            };
            let meta = tokio::fs::metadata(&self.path).await.map_err(read_error)?;
            if meta.len() > MAX_FILE {
                return Err(ExitIpError::TooLarge {
                    path: self.path.clone(),
                    max: MAX_FILE,
                });
            }
            let text = tokio::fs::read_to_string(&self.path).await.map_err(read_error)?;
            parse_exit_ip_lines(&text)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_servers_ask_for_one_reload_per_interval() {
        let ips = ExitIps::new();
        assert!(ips.request_reload_for_unknown());
        assert!(
            !ips.request_reload_for_unknown(),
            "a second miss within the interval asks nothing"
        );
    }

    #[test]
    fn parses_lines_and_reports_bad_ones() {
        let m =
            parse_exit_ip_lines("# pool\negress s1 203.0.113.7\n\n egress  s2 2001:db8::1 # kr\n").unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[&("egress".into(), "s1".into())], IpAddr::from([203, 0, 113, 7]));
        let e = parse_exit_ip_lines("egress s1").unwrap_err();
        assert!(matches!(e, ExitIpError::Fields { line: 1, fields: 2 }), "{e:?}");
        assert!(e.to_string().contains("line 1"), "{e}");
        let e = parse_exit_ip_lines("a b 1.1.1.1\negress s1 nope").unwrap_err();
        assert!(
            matches!(&e, ExitIpError::BadIp { line: 2, text, .. } if text == "nope"),
            "{e:?}"
        );
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    fn cached_view_follows_replacements() {
        let shared = Arc::new(ExitIps::new());
        let mut cache = CachedExitIps::new(shared.clone());
        assert_eq!(cache.get("be", "s1"), None);
        shared.replace(HashMap::from([(
            ("be".into(), "s1".into()),
            IpAddr::from([1, 2, 3, 4]),
        )]));
        assert_eq!(cache.get("be", "s1"), None, "stale until refresh()");
        cache.refresh();
        assert_eq!(cache.get("be", "s1"), Some(IpAddr::from([1, 2, 3, 4])));
        assert_eq!(shared.get("be", "s1"), Some(IpAddr::from([1, 2, 3, 4])));
    }

    #[tokio::test]
    async fn refresher_loads_the_file_and_keeps_the_old_map_on_errors() {
        let dir = std::env::temp_dir().join(format!("egress-spoa-exit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("exit-ips");
        std::fs::write(&path, "be s1 10.1.1.1\n").unwrap();
        let shared = Arc::new(ExitIps::new());
        let metrics = Arc::new(Metrics::new().unwrap());
        let stop = CancellationToken::new();
        let task = tokio::spawn(shared.clone().run_refresher(
            Arc::new(FileExitIpSource::new(&path)),
            Duration::from_millis(20),
            stop.clone(),
            metrics.clone(),
        ));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while shared.get("be", "s1").is_none() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(shared.get("be", "s1"), Some(IpAddr::from([10, 1, 1, 1])));
        std::fs::write(&path, "garbage\n").unwrap();
        while metrics.exit_ip_refresh_failures.get() == 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(metrics.exit_ip_refresh_failures.get() > 0);
        assert_eq!(shared.get("be", "s1"), Some(IpAddr::from([10, 1, 1, 1])));
        stop.cancel();
        task.await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
