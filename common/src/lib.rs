//! Shared plumbing for the haproxy-egress binaries.
//!
//! - [`client_hash`]: the keyed client hash every agent and the checker agree on.
//! - [`duration`]: the configuration files' duration type (humantime strings).
//! - [`telemetry`]: tracing setup (text or JSON).
//! - [`http1`]: HTTP/1.x heads parsed by httparse: the workspace's one head parser.
//! - [`metrics_http`]: a minimal `/metrics` + `/healthz` HTTP endpoint for Prometheus.
//! - [`signal`]: SIGTERM/SIGINT into a `CancellationToken`.
#![forbid(unsafe_code)]

pub mod client_hash;
pub mod duration;
pub mod http1;
pub mod metrics_http;
pub mod signal;
pub mod telemetry;
