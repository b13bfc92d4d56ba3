//! The real-component test harness for haproxy-egress.
//!
//! Every piece is a real process or server on 127.0.0.0/8, on ephemeral ports, torn down on drop (also
//! when a test panics), with its logs printed when a test fails:
//!
//! - [`postgres::Postgres`]: a private throwaway PostgreSQL cluster with the workspace migrations applied;
//! - [`haproxy::Haproxy`]: HAProxy started from a config the test renders, with its runtime API;
//! - [`tinyproxy::Tinyproxy`]: a real CONNECT proxy whose outgoing connections leave from its own
//!   loopback address (`Bind`), i.e. an egress backend with its own "exit IP";
//! - [`echo::EchoServer`]: an HTTP and HTTPS "IP echo" target answering with the peer address it sees;
//! - [`fault::FaultBackend`]: a backend whose failure mode can be switched while it runs;
//! - [`client`]: blocking helpers to open CONNECT tunnels (from a chosen 127.0.0.x source) and ask
//!   the echo server which address it sees;
//! - [`standin`]: a recording stand-in for the HTTP APIs the project calls (Kubernetes, gluetun,
//!   the Slack webhook);
//! - [`metrics`]: the one Prometheus scraper (`GET /metrics`, samples by name and labels).
//!
//! Orphans: every child process is spawned through `setpriv --pdeathsig=KILL` from one long-lived
//! spawner thread ([`process`]), and all temp dirs live under one root named with the owning test
//! process's pid; the first harness use in a process sweeps the dirs of dead owners ([`dirs::sweep`]).

/// The generator's entry policy and shipped-config rendering (egress-gen), re-exported for tests.
pub use egress_gen::{entry, shipped};

pub mod bins;
pub mod client;
pub mod dirs;
pub mod dns;
pub mod echo;
pub mod executor;
pub mod fault;
pub mod haproxy;
pub mod http_util;
pub mod metrics;
pub mod netns;
pub mod ports;
pub mod postgres;
pub mod process;
pub mod programs;
mod runtime;
pub mod stack;
pub mod standin;
pub mod tinyproxy;

use std::time::{Duration, Instant};

/// Polls `cond` every 20 ms until it returns true or `timeout` passes; returns whether it became true.
#[must_use]
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Async twin of [`wait_until`] for tokio tests: polls `cond` every 20 ms without blocking the runtime.
#[must_use]
pub async fn wait_until_async<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
