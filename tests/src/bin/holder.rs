//! Test helper for tests/tests/harness_orphans.rs: starts one of each harness process, prints
//! `READY`, then sleeps (at most 120 s) until it is killed.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::time::Duration;

use egress_harness::fault::{FaultBackend, FaultMode};
use egress_harness::haproxy::{GLOBAL, Haproxy};
use egress_harness::postgres::Postgres;
use egress_harness::tinyproxy::Tinyproxy;

fn main() -> anyhow::Result<()> {
    let pg = Postgres::start()?;
    let tiny = Tinyproxy::start(Ipv4Addr::new(127, 0, 0, 5))?;
    let fault = FaultBackend::start(FaultMode::Forward)?;
    let config = format!(
        "{GLOBAL}\nlisten front\n    mode tcp\n    bind 127.0.0.1:{{{{PORT0}}}}\n    server t {}\n    server f {}\n",
        tiny.addr(),
        fault.addr()
    );
    let haproxy = Haproxy::start(&config)?;
    println!(
        "READY postgres={} tinyproxy={} haproxy={}",
        pg.pid().unwrap_or(0),
        tiny.pid().unwrap_or(0),
        haproxy.pid()
    );
    std::io::stdout().flush()?;
    std::thread::sleep(Duration::from_secs(120));
    Ok(())
}
