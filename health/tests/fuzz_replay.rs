//! The cargo-fuzz targets of this crate (`fuzz/fuzz_targets/{agent_line,connect_head,exit_ip_body}.rs`)
//! as ordinary tests on stable: replay the seed corpus (and any local fuzz corpus), then throw
//! random, mutated and well-formed inputs at the same functions, with the same assertions.

use std::net::IpAddr;
use std::path::PathBuf;

use proptest::prelude::*;

#[path = "../../fuzz/fuzz_targets/health_checks.rs"]
mod health_checks;

type Target = fn(&[u8]);
/// Each target's corpus: (file, bytes).
type Corpus = Vec<(PathBuf, Vec<u8>)>;

const TARGETS: [(&str, Target); 3] = [
    ("agent_line", health_checks::agent_line),
    ("connect_head", health_checks::connect_head),
    ("exit_ip_body", health_checks::exit_ip_body),
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
    out.sort();
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

/// The seeds reach the accepting paths, so the Ok-side assertions run on them.
#[test]
fn seeds_are_accepted_where_expected() {
    use egress_health::agent::parse_line;
    use egress_health::probe::connect::parse_response_head;
    use egress_health::probe::exit_ip::parse_ip_body;
    let seed = |target: &str, file: &str| {
        std::fs::read(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../fuzz/seeds")
                .join(target)
                .join(file),
        )
        .unwrap()
    };
    for file in ["lf", "crlf_all_name_chars", "no_newline", "longest_names"] {
        assert!(parse_line(&seed("agent_line", file)).is_ok(), "{file}");
    }
    for (file, status) in [
        ("200_established", 200),
        ("503_length", 503),
        ("407_auth", 407),
        ("502_bare_lf", 502),
    ] {
        let data = seed("connect_head", file);
        let max = health_checks::connect_max_head(data[0]);
        let head = parse_response_head(&data[2..], max).unwrap().unwrap();
        assert_eq!((head.status, head.len), (status, data.len() - 2), "{file}");
    }
    let data = seed("connect_head", "longer_than_max_64");
    assert!(parse_response_head(&data[2..], health_checks::connect_max_head(data[0])).is_err());
    for (file, ip) in [
        ("ipv4_lf", "203.0.113.7"),
        ("ipv6", "2001:db8::1"),
        ("ipv4_mapped_padded", "::ffff:198.51.100.4"),
        ("json_ipify", "198.51.100.4"),
        ("json_ipinfo", "203.0.113.7"),
    ] {
        assert_eq!(
            parse_ip_body(&seed("exit_ip_body", file)),
            Some(ip.parse().unwrap()),
            "{file}"
        );
    }
}

/// The head ends at its first empty line, whatever line ends come after it: the bug the strict
/// `connect_head` fuzz run found in the hand-written parser (docs/fuzzing.md), fixed by parsing with
/// httparse (`egress_common::http1`).
#[test]
fn connect_head_ends_at_first_empty_line() {
    use egress_health::probe::connect::{ResponseHead, parse_response_head};
    let head = |status, len| Ok(Some(ResponseHead { status, len }));
    // Bytes after a bare-LF head that happen to hold a CRLF CRLF are not part of the head.
    assert_eq!(
        parse_response_head(b"HTTP/1.1 200 OK\n\nX\r\n\r\n", 8192),
        head(200, 17)
    );
    assert_eq!(
        parse_response_head(b"HTTP/1.1 200 OK\n\n127.0.0.1\r\n\r\n", 8192),
        head(200, 17)
    );
    // ... nor when they are past max_head.
    let mut long = b"HTTP/1.1 200 OK\n\n".to_vec();
    long.extend(std::iter::repeat_n(b'x', 100));
    long.extend_from_slice(b"\r\n\r\n");
    assert_eq!(parse_response_head(&long, 64), head(200, 17));
    // A bare-LF line followed by a CRLF empty line ends the head.
    assert_eq!(parse_response_head(b"HTTP/1.1 200 OK\n\r\n", 8192), head(200, 18));
    assert_eq!(
        parse_response_head(b"HTTP/1.1 200 OK\r\nA: b\n\r\n", 8192),
        head(200, 24)
    );
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

const NAME: &str = "[A-Za-z0-9._:-]{1,100}";
const EOL: [&str; 4] = ["\n", "\r\n", "", "\r"];

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        for (_, target) in TARGETS {
            target(&data);
        }
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

    /// Well-formed lines, and lines with one byte replaced.
    #[test]
    fn agent_lines(backend in NAME, server in NAME, eol in 0usize..4, at: usize, byte: u8) {
        let line = format!("{backend}/{server}{}", EOL[eol]);
        let key = egress_health::agent::parse_line(line.as_bytes());
        prop_assert_eq!(key, Ok(egress_health::ServerKey::new(&backend, &server)));
        health_checks::agent_line(line.as_bytes());
        let mut bad = line.into_bytes();
        let n = bad.len();
        bad[at % n] = byte;
        health_checks::agent_line(&bad);
    }

    /// Well-formed heads under every limit, with tunnel bytes after them, cut anywhere.
    #[test]
    fn connect_heads(
        max_sel: u8,
        cut_sel: u8,
        minor in 0u8..10,
        status in 100u16..1000,
        reason in "[ -~]{0,30}",
        headers in proptest::collection::vec(("[A-Za-z-]{1,20}", "[ -~]{0,40}"), 0..6),
        crlf: bool,
        tail in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let eol = if crlf { "\r\n" } else { "\n" };
        let mut head = format!("HTTP/1.{minor} {status} {reason}{eol}");
        for (name, value) in &headers {
            head.push_str(&format!("{name}: {value}{eol}"));
        }
        head.push_str(eol);
        let mut data = vec![max_sel, cut_sel];
        data.extend_from_slice(head.as_bytes());
        health_checks::connect_head(&data);
        data.extend_from_slice(&tail);
        health_checks::connect_head(&data);
    }

    /// Every address in its bare and JSON forms, and those forms with one byte replaced.
    #[test]
    fn exit_ip_bodies(ip: IpAddr, form in 0usize..4, at: usize, byte: u8) {
        let body = match form {
            0 => ip.to_string(),
            1 => format!("{ip}\n"),
            2 => format!("{{\"ip\":\"{ip}\"}}"),
            _ => format!("{{\"country\":\"KR\",\"ip\": \" {ip} \",\"n\":[1,2.5,null]}}\n"),
        };
        prop_assert_eq!(egress_health::probe::exit_ip::parse_ip_body(body.as_bytes()), Some(ip));
        health_checks::exit_ip_body(body.as_bytes());
        let mut bad = body.into_bytes();
        let n = bad.len();
        bad[at % n] = byte;
        health_checks::exit_ip_body(&bad);
    }
}
