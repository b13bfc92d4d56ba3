//! The Postgres store: batched writes and the `who` / `history` queries.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use serde::Serialize;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

use crate::attribution::{AttributionRow, ClientHash, MAX_WINDOW, sort_and_merge};
use crate::error::{LedgerError, redact_url};
use crate::event::exit_ip_kinds_sql;
use crate::event::{Actor, Event, EventKind};

/// Most rows a `who` or `history` query returns; more are cut (the output says so).
pub const MAX_QUERY_ROWS: i64 = 100_000;
/// Widest `who --ip --window` accepted (each side of the instant).
pub const MAX_WHO_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Rows per INSERT statement (arrays of this length are bound per column).
const UPSERT_CHUNK: usize = 50_000;

/// The migrations in `migrations/`, embedded at build time: the one way the schema is applied
/// (`egress-checker migrate` through [`Store::migrate`], and the test harness's clusters).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Connection settings for [`Store`].
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Pool size.
    pub max_connections: u32,
    /// Deadline for connecting / getting a pooled connection.
    pub connect_timeout: Duration,
    /// Deadline for each statement (also sent as the session's `statement_timeout`).
    pub statement_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 4,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
        }
    }
}

/// A `backend/server` or a bare `server` name (matches that server in any backend).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServerRef {
    /// The backend, when given.
    pub backend: Option<String>,
    /// The server name.
    pub server: String,
}

impl FromStr for ServerRef {
    type Err = LedgerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            LedgerError::InvalidInput(format!(
                "bad server {s:?}: expected <server> or <backend>/<server> (1-256 characters each)"
            ))
        };
        let ok = |p: &str| !p.is_empty() && p.len() <= 256 && !p.chars().any(char::is_whitespace);
        match s.split_once('/') {
            Some((b, srv)) if ok(b) && ok(srv) && !srv.contains('/') => Ok(Self {
                backend: Some(b.to_owned()),
                server: srv.to_owned(),
            }),
            None if ok(s) => Ok(Self {
                backend: None,
                server: s.to_owned(),
            }),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for ServerRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.backend {
            Some(b) => write!(f, "{b}/{}", self.server),
            None => f.write_str(&self.server),
        }
    }
}

/// One answer to "who used exit IP X around T": a client on one server, with its activity there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WhoIpRow {
    /// The keyed client hash (16 hex characters in output).
    #[serde(serialize_with = "ser_hash")]
    pub client_hash: ClientHash,
    /// Backend.
    pub backend: String,
    /// Server that had the IP.
    pub server: String,
    /// The IP asked about.
    pub exit_ip: IpAddr,
    /// Earliest request in the matching rows.
    pub first_seen: DateTime<Utc>,
    /// Latest request in the matching rows.
    pub last_seen: DateTime<Utc>,
    /// Requests in the matching rows (whole windows, not only those inside the asked range).
    pub requests: u64,
    /// The agent recorded another exit IP for some of these rows: it had not yet seen the change
    /// (a stale `exit=` tag in HAProxy's log).
    pub agent_ip_differs: bool,
    /// The agent recorded no exit IP for some of these rows: it tagged them `exit=unknown` (a
    /// server it did not know yet, mid-rotation, or whose tunnel had failed). Honest, not stale.
    pub agent_ip_unknown: bool,
}

/// One answer to "which servers and exit IPs did client C use between F and T".
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WhoClientRow {
    /// Backend.
    pub backend: String,
    /// Server.
    pub server: String,
    /// The exit IP per the timeline (or as the agent recorded it where no timeline exists).
    pub exit_ip: Option<IpAddr>,
    /// Earliest request.
    pub first_seen: DateTime<Utc>,
    /// Latest request.
    pub last_seen: DateTime<Utc>,
    /// Requests.
    pub requests: u64,
}

/// One interval of a server's exit-IP timeline: `[valid_from, valid_to)`, `valid_to` None = current.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExitIpInterval {
    /// Backend.
    pub backend: String,
    /// Server.
    pub server: String,
    /// Its exit IP in the interval.
    pub ip: IpAddr,
    /// Start (inclusive).
    pub valid_from: DateTime<Utc>,
    /// End (exclusive), None while current.
    pub valid_to: Option<DateTime<Utc>>,
}

fn ser_hash<S: serde::Serializer>(h: &ClientHash, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(h)
}

/// The Postgres store. Cheap to clone (a pool handle).
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
    url: String,
    statement_timeout: Duration,
    /// Days whose attribution partition is known to exist.
    partitions: Arc<Mutex<HashSet<NaiveDate>>>,
}

/// One chunk of attribution rows as column arrays, in the parameter order of the two statements below.
type AttributionCols<'a> = (
    &'a [i64],
    &'a [&'a str],
    &'a [&'a str],
    &'a [Option<String>],
    &'a [DateTime<Utc>],
    &'a [DateTime<Utc>],
    &'a [DateTime<Utc>],
    &'a [i64],
);

/// Plain insert of a chunk (a macro so the merge statement can extend it with `concat!`).
macro_rules! attribution_insert {
    () => {
        "INSERT INTO attribution AS a
             (client_hash, backend, server, exit_ip, window_start, first_seen, last_seen, requests)
         SELECT h, b, s, ip::inet, w, f, l, r
         FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                     $6::timestamptz[], $7::timestamptz[], $8::int8[]) AS u(h, b, s, ip, w, f, l, r)"
    };
}

/// The fast path, when every key is new.
const ATTRIBUTION_INSERT: &str = attribution_insert!();

/// The same insert merging into existing keys: the fallback on a unique violation.
const ATTRIBUTION_MERGE: &str = concat!(
    attribution_insert!(),
    " ON CONFLICT ON CONSTRAINT attribution_key DO UPDATE SET
         requests = a.requests + EXCLUDED.requests,
         first_seen = LEAST(a.first_seen, EXCLUDED.first_seen),
         last_seen = GREATEST(a.last_seen, EXCLUDED.last_seen)"
);

fn bind_rows<'q>(
    sql: &'q str,
    (h, b, s, ip, w, f, l, r): AttributionCols<'q>,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(sql)
        .bind(h)
        .bind(b)
        .bind(s)
        .bind(ip)
        .bind(w)
        .bind(f)
        .bind(l)
        .bind(r)
}

/// A `postgres://` URL's connect options; anything else is [`LedgerError::InvalidInput`], with the
/// password removed from the text.
fn parse_url(url: &str) -> Result<PgConnectOptions, LedgerError> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(LedgerError::InvalidInput(format!(
            "bad database URL {}: expected postgres://user@host:port/database",
            redact_url(url)
        )));
    }
    url.parse()
        .map_err(|e| LedgerError::InvalidInput(format!("bad database URL {}: {e}", redact_url(url))))
}

impl Store {
    /// Connect now (fails fast with a clear error if the database is unreachable or refuses us).
    pub async fn connect(url: &str) -> Result<Store, LedgerError> {
        Self::connect_with(url, StoreOptions::default()).await
    }

    /// [`Store::connect`] with explicit options.
    pub async fn connect_with(url: &str, opts: StoreOptions) -> Result<Store, LedgerError> {
        let store = Self::connect_lazy_with(url, opts)?;
        let conn = store
            .pool
            .acquire()
            .await
            .map_err(|e| LedgerError::connect(url, e))?;
        drop(conn);
        Ok(store)
    }

    /// A store that connects on first use (the writer starts even while Postgres is down).
    pub fn connect_lazy_with(url: &str, opts: StoreOptions) -> Result<Store, LedgerError> {
        let connect = parse_url(url)?;
        let ms = opts.statement_timeout.as_millis().to_string();
        let connect = connect.options([("statement_timeout", ms.as_str())]);
        let pool = PgPoolOptions::new()
            .max_connections(opts.max_connections.max(1))
            .acquire_timeout(opts.connect_timeout)
            .idle_timeout(Some(Duration::from_secs(300)))
            .connect_lazy_with(connect);
        Ok(Store {
            pool,
            url: url.to_owned(),
            statement_timeout: opts.statement_timeout,
            partitions: Arc::new(Mutex::new(HashSet::new())),
        })
    }

    /// Checks a database URL without connecting (and without a runtime), so that a binary can
    /// refuse a bad one with its other configuration, before anything starts. The error is
    /// [`LedgerError::InvalidInput`].
    pub fn check_url(url: &str) -> Result<(), LedgerError> {
        parse_url(url).map(drop)
    }

    /// The pool, for callers with their own statements.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The database URL (with its password: for error classification, never for display).
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Close the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Run `fut` within the statement timeout (plus connect and network slack), mapping its error.
    pub(crate) async fn bounded<T, F>(&self, fut: F) -> Result<T, LedgerError>
    where
        F: std::future::Future<Output = Result<T, sqlx::Error>>,
    {
        // The session statement_timeout bounds the server side; this bounds connect + network too.
        let deadline = self.statement_timeout + Duration::from_secs(5);
        match tokio::time::timeout(deadline, fut).await {
            Ok(r) => r.map_err(|e| LedgerError::query(&self.url, e)),
            Err(_) => Err(LedgerError::Timeout(deadline)),
        }
    }

    /// Apply the migrations in `migrations/` (a no-op when they are already applied).
    pub async fn migrate(&self) -> Result<(), LedgerError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// `SELECT 1`.
    pub async fn ping(&self) -> Result<(), LedgerError> {
        self.bounded(sqlx::query("SELECT 1").execute(&self.pool))
            .await
            .map(|_| ())
    }

    /// Insert events in one statement; ids already present are skipped. Returns the rows inserted.
    pub async fn insert_events(&self, events: &[Event]) -> Result<u64, LedgerError> {
        if events.is_empty() {
            return Ok(0);
        }
        let n = events.len();
        let (mut id, mut at, mut backend, mut server) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut kind, mut actor, mut reason) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut old_ip, mut new_ip, mut detail) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for e in events {
            id.push(e.id);
            at.push(e.at);
            backend.push(e.backend.as_str());
            server.push(e.server.as_str());
            kind.push(e.kind.as_str());
            actor.push(e.actor.as_str());
            reason.push(e.reason.as_deref());
            old_ip.push(e.old_ip.map(|ip| ip.to_string()));
            new_ip.push(e.new_ip.map(|ip| ip.to_string()));
            detail.push(e.detail.to_string());
        }
        let q = sqlx::query(
            "INSERT INTO events (id, at, backend, server, kind, actor, reason, old_ip, new_ip, detail)
             SELECT id, at, backend, server, kind, actor, reason, old_ip::inet, new_ip::inet, detail::jsonb
             FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[],
                         $7::text[], $8::text[], $9::text[], $10::text[])
                  AS u(id, at, backend, server, kind, actor, reason, old_ip, new_ip, detail)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(at)
        .bind(backend)
        .bind(server)
        .bind(kind)
        .bind(actor)
        .bind(reason)
        .bind(old_ip)
        .bind(new_ip)
        .bind(detail);
        let done = self.bounded(q.execute(&self.pool)).await?;
        Ok(done.rows_affected())
    }

    /// Make sure the attribution partition of `day` exists (cached after the first call).
    pub async fn ensure_partition(&self, day: NaiveDate) -> Result<(), LedgerError> {
        if self.partitions.lock().map(|p| p.contains(&day)).unwrap_or(false) {
            return Ok(());
        }
        self.bounded(
            sqlx::query("SELECT ledger_ensure_partition($1)")
                .bind(day)
                .execute(&self.pool),
        )
        .await?;
        if let Ok(mut p) = self.partitions.lock() {
            p.insert(day);
        }
        Ok(())
    }

    /// Create the partitions of yesterday, today and `days_ahead` days ahead; returns how many were new.
    pub async fn ensure_partitions(&self, days_ahead: u32) -> Result<u32, LedgerError> {
        let ahead = i32::try_from(days_ahead.min(366)).unwrap_or(366);
        let q = sqlx::query_scalar::<_, i32>("SELECT ledger_ensure_partitions($1)").bind(ahead);
        let n = self.bounded(q.fetch_one(&self.pool)).await?;
        Ok(u32::try_from(n).unwrap_or(0))
    }

    /// Drop the attribution partitions wholly older than `retention`; returns how many were dropped.
    pub async fn drop_partitions_older_than(&self, retention: Duration) -> Result<u32, LedgerError> {
        let secs = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
        let q = sqlx::query_scalar::<_, i32>(
            "SELECT ledger_drop_partitions_older_than(make_interval(secs => $1::bigint))",
        )
        .bind(secs);
        let n = self.bounded(q.fetch_one(&self.pool)).await?;
        if n > 0 {
            // Forget the cache: a dropped day must be re-created if a (late) row ever needs it.
            if let Ok(mut p) = self.partitions.lock() {
                p.clear();
            }
        }
        Ok(u32::try_from(n).unwrap_or(0))
    }

    /// Upsert aggregated rows: equal keys merge (requests add, first_seen = min, last_seen = max), in the
    /// batch and against what is stored. Rows failing [`AttributionRow::is_valid`] must be filtered
    /// first (one invalid row fails the batch). Returns the rows written.
    pub async fn upsert_attribution(&self, rows: &[AttributionRow]) -> Result<u64, LedgerError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let rows = sort_and_merge(rows.to_vec());
        let days: HashSet<NaiveDate> = rows.iter().map(|r| r.window_start.date_naive()).collect();
        for day in days {
            self.ensure_partition(day).await?;
        }
        let mut tx = self.bounded(self.pool.begin()).await?;
        let mut written = 0;
        for chunk in rows.chunks(UPSERT_CHUNK) {
            let n = chunk.len();
            let (mut h, mut b, mut s, mut ip) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            let (mut w, mut f, mut l, mut r) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            for row in chunk {
                h.push(row.client_hash.0 as i64); // the u64's bits, as the schema documents
                b.push(row.backend.as_str());
                s.push(row.server.as_str());
                ip.push(row.exit_ip.map(|i| i.to_string()));
                w.push(row.window_start);
                f.push(row.first_seen);
                l.push(row.last_seen);
                r.push(i64::try_from(row.requests).unwrap_or(i64::MAX));
            }
            // Fast path: a closed minute window is almost always a new key, and a plain INSERT skips
            // the speculative insertion behind ON CONFLICT (about 2.5x the cost, docs/ledger.md). On a
            // unique violation (an early flush of the same window, another agent, a retried batch)
            // the savepoint undoes the attempt and the chunk is merged with ON CONFLICT DO UPDATE,
            // so requests are never counted twice.
            let cols = (&h[..], &b[..], &s[..], &ip[..], &w[..], &f[..], &l[..], &r[..]);
            self.bounded(sqlx::query("SAVEPOINT attribution_fast").execute(&mut *tx))
                .await?;
            let res = match self
                .bounded(bind_rows(ATTRIBUTION_INSERT, cols).execute(&mut *tx))
                .await
            {
                Ok(done) => {
                    self.bounded(sqlx::query("RELEASE SAVEPOINT attribution_fast").execute(&mut *tx))
                        .await?;
                    Ok(done)
                }
                Err(e) if e.is_unique_violation() => {
                    self.bounded(sqlx::query("ROLLBACK TO SAVEPOINT attribution_fast").execute(&mut *tx))
                        .await?;
                    self.bounded(bind_rows(ATTRIBUTION_MERGE, cols).execute(&mut *tx))
                        .await
                }
                Err(e) => Err(e),
            };
            match res {
                Ok(done) => written += done.rows_affected(),
                Err(e) => {
                    // Maybe a partition vanished under the cache (retention ran elsewhere): re-check next time.
                    if let Ok(mut p) = self.partitions.lock() {
                        p.clear();
                    }
                    return Err(e);
                }
            }
        }
        self.bounded(tx.commit()).await?;
        Ok(written)
    }

    /// The current exit IP of every server that has one, keyed by (backend, server): its latest
    /// IP-bearing event, unless an `exit_ip_unknown` event came after it (a rotation or a failed
    /// tunnel): such a server is left out, and the agents tag it `exit=unknown`.
    pub async fn current_exit_ips(&self) -> Result<HashMap<(String, String), IpAddr>, LedgerError> {
        // Two index scans (the partial timeline index, and (kind, at)) rather than one pass over
        // every event.
        let sql = format!(
            "SELECT ip.backend, ip.server, host(ip.new_ip) FROM (
                 SELECT DISTINCT ON (backend, server) backend, server, new_ip, at, id
                 FROM events WHERE new_ip IS NOT NULL AND kind IN {IP_KINDS}
                 ORDER BY backend, server, at DESC, id DESC) ip
             LEFT JOIN (
                 SELECT DISTINCT ON (backend, server) backend, server, at, id
                 FROM events WHERE kind = '{UNKNOWN}'
                 ORDER BY backend, server, at DESC, id DESC) u
               ON u.backend = ip.backend AND u.server = ip.server
             WHERE u.at IS NULL OR (u.at, u.id) < (ip.at, ip.id)",
            UNKNOWN = EventKind::ExitIpUnknown.as_str(),
            IP_KINDS = exit_ip_kinds_sql(),
        );
        let rows: Vec<(String, String, String)> =
            self.bounded(sqlx::query_as(&sql).fetch_all(&self.pool)).await?;
        let mut out = HashMap::with_capacity(rows.len());
        for (b, s, ip) in rows {
            if let Ok(ip) = ip.parse() {
                out.insert((b, s), ip);
            }
        }
        Ok(out)
    }

    /// The latest exit IP of one server, if the timeline knows it.
    pub async fn last_exit_ip(&self, backend: &str, server: &str) -> Result<Option<IpAddr>, LedgerError> {
        let sql = format!(
            "SELECT host(new_ip) FROM events
             WHERE backend = $1 AND server = $2 AND new_ip IS NOT NULL AND kind IN {IP_KINDS}
             ORDER BY at DESC, id DESC LIMIT 1",
            IP_KINDS = exit_ip_kinds_sql(),
        );
        let q = sqlx::query_scalar::<_, String>(&sql).bind(backend).bind(server);
        let ip = self.bounded(q.fetch_optional(&self.pool)).await?;
        Ok(ip.and_then(|s| s.parse().ok()))
    }

    /// The exit-IP timeline of one server (or all servers when `server` is None), oldest first.
    pub async fn exit_ip_timeline(
        &self,
        server: Option<&ServerRef>,
    ) -> Result<Vec<ExitIpInterval>, LedgerError> {
        let (b, s) = match server {
            Some(r) => (r.backend.clone(), Some(r.server.clone())),
            None => (None, None),
        };
        let q = sqlx::query_as::<_, (String, String, String, DateTime<Utc>, Option<DateTime<Utc>>)>(
            "SELECT backend, server, host(ip), valid_from, valid_to FROM exit_ip_intervals
             WHERE ($1::text IS NULL OR backend = $1) AND ($2::text IS NULL OR server = $2)
             ORDER BY backend, server, valid_from LIMIT $3",
        )
        .bind(b)
        .bind(s)
        .bind(MAX_QUERY_ROWS);
        let rows = self.bounded(q.fetch_all(&self.pool)).await?;
        Ok(rows
            .into_iter()
            .filter_map(|(backend, server, ip, valid_from, valid_to)| {
                Some(ExitIpInterval {
                    backend,
                    server,
                    ip: ip.parse().ok()?,
                    valid_from,
                    valid_to,
                })
            })
            .collect())
    }

    /// The clients that used exit IP `ip` at any instant of `[at - window, at + window]`.
    ///
    /// The exit-IP timeline (from the events) decides which server had `ip` when; an attribution row
    /// matches when its activity span `[first_seen, last_seen]`, the server's interval with `ip` and the
    /// asked range share an instant. Rows of servers without any timeline before the row fall back to
    /// the IP the agent recorded. See docs/ledger.md.
    pub async fn who_ip(
        &self,
        ip: IpAddr,
        at: DateTime<Utc>,
        window: Duration,
    ) -> Result<Vec<WhoIpRow>, LedgerError> {
        if window > MAX_WHO_WINDOW {
            return Err(LedgerError::InvalidInput(format!(
                "--window {} is too wide: at most {}",
                humantime::format_duration(window),
                humantime::format_duration(MAX_WHO_WINDOW)
            )));
        }
        let w = TimeDelta::from_std(window)
            .map_err(|_| LedgerError::InvalidInput(format!("window {window:?} is too large")))?;
        let (lo, hi) = (at - w, at + w);
        let sql = who_ip_sql();
        let q =
            sqlx::query_as::<_, (i64, String, String, DateTime<Utc>, DateTime<Utc>, i64, bool, bool)>(&sql)
                .bind(ip.to_string())
                .bind(lo)
                .bind(hi)
                .bind(pg_interval(MAX_WINDOW))
                .bind(MAX_QUERY_ROWS);
        let rows = self.bounded(q.fetch_all(&self.pool)).await?;
        Ok(rows
            .into_iter()
            .map(
                |(h, backend, server, first_seen, last_seen, requests, differs, unknown)| WhoIpRow {
                    client_hash: ClientHash(h as u64),
                    backend,
                    server,
                    exit_ip: ip,
                    first_seen,
                    last_seen,
                    requests: u64::try_from(requests).unwrap_or(0),
                    agent_ip_differs: differs,
                    agent_ip_unknown: unknown,
                },
            )
            .collect())
    }

    /// The servers and exit IPs client `hash` used with activity in `[from, to]`. The exit IP comes from
    /// the timeline (the agent's recorded IP only where no timeline exists); a row whose activity spans
    /// a change of IP counts for both IPs, with first/last seen clipped to each IP's interval. Requests
    /// are whole rows' counts.
    pub async fn who_client(
        &self,
        hash: ClientHash,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<WhoClientRow>, LedgerError> {
        if to < from {
            return Err(LedgerError::InvalidInput(format!(
                "--to {to} is before --from {from}"
            )));
        }
        let sql = who_client_sql();
        let q =
            sqlx::query_as::<_, (String, String, Option<String>, DateTime<Utc>, DateTime<Utc>, i64)>(&sql)
                .bind(hash.0 as i64)
                .bind(from)
                .bind(to)
                .bind(pg_interval(MAX_WINDOW))
                .bind(MAX_QUERY_ROWS);
        let rows = self.bounded(q.fetch_all(&self.pool)).await?;
        Ok(rows
            .into_iter()
            .map(
                |(backend, server, ip, first_seen, last_seen, requests)| WhoClientRow {
                    backend,
                    server,
                    exit_ip: ip.and_then(|s| s.parse().ok()),
                    first_seen,
                    last_seen,
                    requests: u64::try_from(requests).unwrap_or(0),
                },
            )
            .collect())
    }

    /// Whether any event (or recent attribution) mentions this server.
    pub async fn known_server(&self, server: &ServerRef) -> Result<bool, LedgerError> {
        let q = sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM ledger_servers WHERE server = $2 AND ($1::text IS NULL OR backend = $1))
                 OR EXISTS (SELECT 1 FROM attribution WHERE server = $2 AND ($1::text IS NULL OR backend = $1)
                            AND window_start > now() - interval '2 days')",
        )
        .bind(server.backend.as_deref())
        .bind(&server.server);
        self.bounded(q.fetch_one(&self.pool)).await
    }

    /// The events of `server` since `since`, oldest first (at most [`MAX_QUERY_ROWS`]). An unknown server
    /// is an error, not an empty answer.
    pub async fn history(&self, server: &ServerRef, since: DateTime<Utc>) -> Result<Vec<Event>, LedgerError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events
             WHERE server = $2 AND ($1::text IS NULL OR backend = $1) AND at >= $3
             ORDER BY at, id LIMIT $4"
        );
        let q = sqlx::query_as::<_, EventRow>(&sql)
            .bind(server.backend.as_deref())
            .bind(&server.server)
            .bind(since)
            .bind(MAX_QUERY_ROWS);
        let rows = self.bounded(q.fetch_all(&self.pool)).await?;
        if rows.is_empty() && !self.known_server(server).await? {
            return Err(LedgerError::UnknownServer(server.to_string()));
        }
        Ok(events_from_rows(rows))
    }
}

/// One `events` row as the event queries select it ([`EVENT_COLUMNS`]).
pub(crate) type EventRow = (
    Uuid,
    DateTime<Utc>,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    serde_json::Value,
);

/// The select list that [`EventRow`] reads.
pub(crate) const EVENT_COLUMNS: &str =
    "id, at, backend, server, kind, actor, reason, host(old_ip) AS old_ip, host(new_ip) AS new_ip, detail";

/// Rows into events. The CHECK constraints make kind and actor parse; a row that does not is
/// skipped, not fatal.
pub(crate) fn events_from_rows(rows: Vec<EventRow>) -> Vec<Event> {
    rows.into_iter()
        .filter_map(
            |(id, at, backend, server, kind, actor, reason, old_ip, new_ip, detail)| {
                Some(Event {
                    id,
                    at,
                    backend,
                    server,
                    kind: kind.parse::<EventKind>().ok()?,
                    actor: actor.parse::<Actor>().ok()?,
                    reason,
                    old_ip: old_ip.and_then(|s| s.parse().ok()),
                    new_ip: new_ip.and_then(|s| s.parse().ok()),
                    detail,
                })
            },
        )
        .collect()
}

/// The `who --ip` statement: $1 ip (text), $2 range start, $3 range end, $4 max window (interval text),
/// $5 row limit. Public so the benchmark can EXPLAIN exactly what runs.
pub fn who_ip_sql() -> String {
    format!(
        "WITH iv AS (
                SELECT backend, server, valid_from, valid_to FROM ledger_exit_ip_intervals($2, $3)
                WHERE ip = $1::inet AND (valid_to IS NULL OR valid_to > $2)
             ),
             hits AS (
                SELECT a.client_hash, a.backend, a.server, a.exit_ip, a.window_start, a.first_seen,
                       a.last_seen, a.requests
                FROM iv JOIN attribution a ON a.backend = iv.backend AND a.server = iv.server
                WHERE a.window_start > $2 - $4::interval AND a.window_start <= $3
                  AND a.first_seen <= $3 AND a.last_seen >= $2
                  AND GREATEST(a.first_seen, iv.valid_from, $2) <= LEAST(a.last_seen, $3)
                  AND (iv.valid_to IS NULL OR GREATEST(a.first_seen, iv.valid_from, $2) < iv.valid_to)
                UNION
                SELECT a.client_hash, a.backend, a.server, a.exit_ip, a.window_start, a.first_seen,
                       a.last_seen, a.requests
                FROM attribution a
                WHERE a.exit_ip = $1::inet
                  AND a.window_start > $2 - $4::interval AND a.window_start <= $3
                  AND a.first_seen <= $3 AND a.last_seen >= $2
                  AND NOT EXISTS (
                      SELECT 1 FROM events e
                      WHERE e.backend = a.backend AND e.server = a.server AND e.new_ip IS NOT NULL
                        AND e.kind IN {IP_KINDS} AND e.at <= a.first_seen)
             )
             SELECT client_hash, backend, server, min(first_seen), max(last_seen), sum(requests)::int8,
                    bool_or(exit_ip IS NOT NULL AND exit_ip <> $1::inet), bool_or(exit_ip IS NULL)
             FROM hits GROUP BY client_hash, backend, server
             ORDER BY min(first_seen), backend, server, client_hash
             LIMIT $5",
        IP_KINDS = exit_ip_kinds_sql(),
    )
}

/// The `who --client` statement: $1 client hash (bigint), $2 from, $3 to, $4 max window, $5 row limit.
pub fn who_client_sql() -> String {
    "WITH rows AS (
                SELECT * FROM attribution a
                WHERE a.client_hash = $1 AND a.window_start > $2 - $4::interval AND a.window_start <= $3
                  AND a.first_seen <= $3 AND a.last_seen >= $2
             ),
             iv AS (
                SELECT i.* FROM ledger_exit_ip_intervals($2, $3) i
                WHERE (i.backend, i.server) IN (SELECT backend, server FROM rows)
             )
             SELECT r.backend, r.server, host(COALESCE(iv.ip, r.exit_ip)),
                    min(GREATEST(r.first_seen, iv.valid_from)), max(LEAST(r.last_seen, iv.valid_to)),
                    sum(r.requests)::int8
             FROM rows r
             LEFT JOIN iv ON iv.backend = r.backend AND iv.server = r.server
                 AND iv.valid_from <= LEAST(r.last_seen, $3)
                 AND (iv.valid_to IS NULL OR iv.valid_to > GREATEST(r.first_seen, $2))
             GROUP BY 1, 2, 3
             ORDER BY min(r.first_seen), 1, 2
             LIMIT $5"
        .to_owned()
}

/// A Postgres interval literal for a TimeDelta (bound as text, cast with `::interval`).
fn pg_interval(d: TimeDelta) -> String {
    format!("{} milliseconds", d.num_milliseconds())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_database_url_is_invalid_input_without_its_password() {
        assert!(Store::check_url("postgres://egress@db:5432/egress").is_ok());
        assert!(Store::check_url("postgresql://egress:s3cret@db/egress").is_ok());
        for bad in [
            "mysql://egress:s3cret@db/egress",
            "postgres://egress:s3cret@db:port/egress",
        ] {
            let e = Store::check_url(bad).unwrap_err();
            assert!(matches!(e, LedgerError::InvalidInput(_)), "{bad}: {e:?}");
            let text = e.to_string();
            assert!(text.starts_with("bad database URL"), "{text}");
            assert!(!text.contains("s3cret"), "{text}");
        }
    }
}
