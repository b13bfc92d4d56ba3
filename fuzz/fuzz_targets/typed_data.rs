//! cargo-fuzz target: `egress_spoa::fuzzing::typed_data` (the same function the corpus-replay test runs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    egress_spoa::fuzzing::typed_data(data);
});
