//! cargo-fuzz target: the agent-check request line parser, `egress_health::agent::parse_line`,
//! through `health_checks::agent_line` (the same function `health/tests/fuzz_replay.rs` runs on stable),
//! under an allocator that aborts on any single allocation above 64 KiB.
#![no_main]

mod bounded_alloc;
#[allow(dead_code)] // each target uses one of the checks
mod health_checks;

#[global_allocator]
static ALLOC: bounded_alloc::Bounded = bounded_alloc::Bounded;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    health_checks::agent_line(data);
});
