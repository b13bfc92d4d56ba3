//! egress-spoa: an HAProxy SPOE agent (SPOP 2.0) that tags each egress request with a keyed client
//! hash and the chosen server's exit IP, and aggregates who went out where.
//!
//! - [`frame`] — the protocol, one module per concept (varint, typed data, KV, HELLO, NOTIFY, ACK,
//!   DISCONNECT), nom over complete payloads, zero-copy.
//! - [`codec`] — the length layer (tokio-util), refusing oversize lengths before buffering.
//! - [`connection`] — the per-connection state machine and its I/O loop.
//! - [`server`] — the accept loop with bounded connections and a two-phase shutdown.
//! - [`coalesce`] — batching reads and ACK writes when HAProxy 3.x sends one NOTIFY per write.
//! - [`handler`] — `egress-attribution` and `egress-client`.
//! - [`attribution`] — the per-minute aggregator and the [`attribution::AttributionSink`] trait.
//! - [`exit_ip`] — the read-mostly exit-IP map and its refresher.
//! - [`metrics`] — Prometheus.
#![forbid(unsafe_code)]

pub mod attribution;
pub mod coalesce;
pub mod codec;
pub mod connection;
pub mod exit_ip;
pub mod fasthash;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
pub mod handler;
pub mod ledger;
pub mod metrics;
pub mod server;

pub use handler::Agent;
pub use server::{Error, ServerConfig, run};
