//! cargo-fuzz target: `egress_spoa::fuzzing::typed_data` (the same function the corpus-replay test runs),
//! under an allocator that aborts on any single allocation above 64 KiB.
#![no_main]

mod bounded_alloc;

#[global_allocator]
static ALLOC: bounded_alloc::Bounded = bounded_alloc::Bounded;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    egress_spoa::fuzzing::typed_data(data);
});
