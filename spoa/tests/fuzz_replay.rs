//! The cargo-fuzz targets (fuzz/) as ordinary tests on stable: replay the seed corpus (and any
//! local fuzz corpus), then throw random and mutated inputs at the same entry points.

use std::path::PathBuf;

use egress_spoa::fuzzing;
use proptest::prelude::*;

type Target = fn(&[u8]);
/// Each target's corpus: (file, bytes).
type Corpus = Vec<(PathBuf, Vec<u8>)>;

const TARGETS: [(&str, Target); 3] = [
    ("frame_decoder", fuzzing::frame_decoder),
    ("typed_data", fuzzing::typed_data),
    ("connection", fuzzing::connection),
];

fn inputs(target: &str) -> Corpus {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut out = Vec::new();
    for dir in ["seeds", "corpus"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for e in entries.flatten() {
            if let Ok(bytes) = std::fs::read(e.path()) {
                out.push((e.path(), bytes));
            }
        }
    }
    out
}

#[test]
fn replay_corpus() {
    for (name, target) in TARGETS {
        let inputs = inputs(name);
        assert!(!inputs.is_empty(), "seed corpus for {name} is missing");
        for (path, bytes) in inputs {
            eprintln!("{name}: {}", path.display());
            target(&bytes);
        }
    }
}

#[test]
fn seeds_reach_the_notify_path() {
    // The connection seed really exercises the handlers: HELLO, 3 ACKs and a DISCONNECT come out.
    let seed = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/connection/hello_then_attribution"),
    )
    .unwrap();
    assert_eq!(count_acks(&seed), 3);
}

fn count_acks(stream: &[u8]) -> usize {
    use bytes::BytesMut;
    use egress_spoa::connection::{Session, Step};
    let metrics = std::sync::Arc::new(egress_spoa::metrics::Metrics::new().unwrap());
    let (tx, _rx) = egress_spoa::attribution::channel(16, metrics.clone());
    let key = egress_common::client_hash::HashKey::from_hex("000102030405060708090a0b0c0d0e0f").unwrap();
    let agent = std::sync::Arc::new(egress_spoa::Agent::new(
        key,
        std::sync::Arc::new(egress_spoa::exit_ip::ExitIps::new()),
        tx,
        metrics.clone(),
    ));
    let mut s = Session::new(agent, 16380);
    let mut input = BytesMut::from(stream);
    let mut out = BytesMut::new();
    while s.process(&mut input, &mut out, 64) == Step::Yield {}
    fuzzing::check_agent_output(&mut out.clone(), 16380);
    metrics.ack_sent.get() as usize
}

fn mutate(seed: &[u8], flips: &[(usize, u8)], cut: usize) -> Vec<u8> {
    let mut v = seed.to_vec();
    for &(i, b) in flips {
        if !v.is_empty() {
            let n = v.len();
            v[i % n] ^= b;
        }
    }
    v.truncate(cut.min(v.len()).max(v.len().saturating_sub(cut % 8)));
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        for (_, target) in TARGETS {
            target(&data);
        }
        let mut with_hello = vec![b'!'];
        with_hello.extend_from_slice(&data);
        fuzzing::connection(&with_hello);
    }

    #[test]
    fn mutated_seeds(which in 0usize..64, flips in proptest::collection::vec((any::<usize>(), 1u8..=255), 0..4), cut: usize) {
        static SEEDS: std::sync::OnceLock<Vec<Corpus>> = std::sync::OnceLock::new();
        let all = SEEDS.get_or_init(|| TARGETS.iter().map(|(name, _)| inputs(name)).collect());
        for ((_, target), seeds) in TARGETS.iter().zip(all) {
            let (_, seed) = &seeds[which % seeds.len()];
            target(&mutate(seed, &flips, cut));
        }
    }
}
