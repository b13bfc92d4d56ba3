//! The haproxy-egress event ledger.
//!
//! - [`event`]: state events (quarantined, rotated, exit IP changed, ...), append-only in Postgres;
//! - [`attribution`]: aggregated "client used server/exit IP in this window" rows;
//! - [`store`]: the Postgres store: batched writes, the exit-IP timeline, the `who` and `history` queries;
//! - [`queries`]: typed point queries for the rotator (last rotation location, last event kind of an
//!   actor, last exit-IP change), their kind lists built from [`EventKind`];
//! - [`lock`]: session-level advisory locks ([`Store::try_lock`], [`AdvisoryLock`]);
//! - [`MIGRATOR`]: the schema's migrations (`migrations/`), embedded: the one way to apply them
//!   ([`Store::migrate`], or `MIGRATOR.run(&pool)`);
//! - [`writer`]: the background writer with outage spooling ([`spool`]) and its metrics;
//!
//! Schema: `migrations/`; design notes, query plans and figures: `docs/ledger.md`.
#![forbid(unsafe_code)]

pub mod attribution;
pub mod error;
pub mod event;
pub mod lock;
mod metrics;
pub mod queries;
pub mod report;
pub mod spool;
pub mod store;
pub mod writer;

pub use attribution::{AttributionRow, ClientHash};
pub use error::LedgerError;
pub use event::{Actor, Event, EventKind, UnknownEventKind};
pub use lock::{AdvisoryLock, SessionLock};
pub use metrics::ShedReason;
pub use store::{ExitIpInterval, MIGRATOR, ServerRef, Store, StoreOptions, WhoClientRow, WhoIpRow};
pub use writer::{LedgerHandle, LedgerWriter, WriterConfig, WriterStats};

/// The Postgres channel every insert of an exit-IP event notifies (a trigger of the ledger schema):
/// agents `LISTEN` on it and reload their exit-IP map at once.
pub const EXIT_IPS_CHANNEL: &str = "egress_exit_ips";
