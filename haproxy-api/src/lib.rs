//! HAProxy's runtime API (management.txt §9.3), spoken in one place for the whole workspace: the
//! checker's backend discovery and MAINT watch, the rotator, self-healing, the test harness and the
//! lab all send their commands and parse `show stat` / `show servers state` here.
//!
//! - [`addr`]: where the socket is (`unix:/path`, `tcp:ip:port`, `tcp:host:port`), `host:port`, and
//!   proxy/server name validity;
//! - [`client`]: one command per connection under a deadline and a size cap ([`RuntimeApi`] async,
//!   [`command_blocking`] for blocking callers), the strict parsers ([`parse_show_stat`],
//!   [`parse_servers_state`]), admin states, and a [`Fleet`] of instances that must agree.
#![forbid(unsafe_code)]

pub mod addr;
pub mod client;

pub use addr::{AddrError, RuntimeApiAddr, split_host_port, valid_name};
pub use client::{
    ADMIN_DRAIN_BITS, ADMIN_MAINT_BITS, AdminState, Fleet, FleetError, MAX_ANSWER, Row, RuntimeApi,
    RuntimeApiError, StatRow, command_blocking, parse_servers_state, parse_show_stat,
};
