//! The binary's command line: `--check-config` explains problems and exits non-zero; `--help` says
//! what the checker does.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_egress-checker"))
}

#[test]
fn check_config_accepts_the_shipped_example() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/checker.example.toml");
    let out = bin()
        .args(["--config", example, "--check-config"])
        .env_remove("EGRESS_CHECKER_PROBE__INTERVAL")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration is valid"));
}

#[test]
fn check_config_lists_every_problem_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[decision]\nrestore_after = 0\n[[targets]]\naddress = \"nohost\"\n",
    )
    .unwrap();
    let out = bin()
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in ["restore_after", "targets[0].address", "backends:"] {
        assert!(err.contains(needle), "missing {needle}: {err}");
    }
    // An environment override is validated like the file.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/checker.example.toml");
    let out = bin()
        .args(["--config", example, "--check-config"])
        .env("EGRESS_CHECKER_DECISION__MAX_QUARANTINED_SHARE", "2.0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_quarantined_share"));
}

#[test]
fn help_explains_the_checker() {
    let out = bin().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for needle in ["agent-check", "CONNECT", "run", "--check-config"] {
        assert!(text.contains(needle), "missing {needle}");
    }
}

/// The shipped example (valid: `--check-config` passes), run with only the environment this test sets.
fn with_example(args: &[&str]) -> Command {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/checker.example.toml");
    let mut c = bin();
    c.args(["--config", example])
        .args(args)
        .env_remove("EGRESS_CHECKER_PROBE__INTERVAL")
        .env_remove("EGRESS_CHECKER_ROTATION__INSTANCES")
        .env_remove("EGRESS_DATABASE_URL")
        .env_remove("EGRESS_HASH_KEY")
        .env_remove("EGRESS_HASH_KEY_FILE");
    c
}

/// Runs `c`; its exit code and stderr.
fn exit(c: &mut Command) -> (Option<i32>, String) {
    let out = c.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A port that was just free: nothing listens, connects are refused at once.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn every_subcommand_prints_its_exit_codes() {
    for sub in ["run", "migrate", "who", "history", "report", "rotate"] {
        let out = bin().args([sub, "--help"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{sub} --help");
        assert!(
            text.contains("Exit codes: 0 "),
            "{sub} --help has no exit codes:\n{text}"
        );
        assert!(
            text.contains("2 "),
            "{sub} --help does not say what 2 means:\n{text}"
        );
    }
}

/// `rotate --help`: 1 when a service it needs is unavailable (nothing changed), 2 for bad input.
/// The ledger refusing the connection is the first; a database URL that is not one is the second.
#[test]
fn rotate_exits_1_when_the_ledger_is_down_and_2_when_its_url_is_bad() {
    let url = format!("postgres://egress@127.0.0.1:{}/egress", closed_port());
    let (code, err) = exit(&mut with_example(&["rotate", "--next", "--database-url", &url]));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("the ledger is unreachable, nothing changed"),
        "{err}"
    );

    let (code, err) = exit(&mut with_example(&[
        "rotate",
        "--next",
        "--database-url",
        "mysql://egress:s3cret@db/egress",
    ]));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("bad database URL mysql://egress:***@db/egress") && !err.contains("s3cret"),
        "{err}"
    );
}

/// An HAProxy runtime API that refuses the connection is a service that did not answer (1, try
/// again later); a Unix socket path that names nothing is the configuration's error (2). Either way
/// nothing changed, and `--dry-run` needs no ledger.
#[test]
fn rotate_tells_an_unreachable_haproxy_from_a_wrong_socket_path() {
    let refused = format!("[\"tcp:127.0.0.1:{}\"]", closed_port());
    let (code, err) = exit(
        with_example(&["rotate", "egress/px1", "--dry-run"])
            .env("EGRESS_CHECKER_ROTATION__INSTANCES", &refused),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("cannot rotate egress/px1: HAProxy instance tcp:127.0.0.1:")
            && err.contains("(nothing changed)"),
        "{err}"
    );

    let (code, err) = exit(with_example(&["rotate", "egress/px1", "--dry-run"]).env(
        "EGRESS_CHECKER_ROTATION__INSTANCES",
        "[\"unix:/nonexistent/haproxy.sock\"]",
    ));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("unix:/nonexistent/haproxy.sock"), "{err}");
}

/// `migrate`, `who`, `history`: 1 the ledger failed, 2 bad input (a bad database URL too).
#[test]
fn ledger_commands_exit_1_when_the_ledger_is_down_and_2_for_bad_input() {
    let down = format!("postgres://egress@127.0.0.1:{}/egress", closed_port());
    for url in [down.as_str(), "mysql://db/egress"] {
        let want = if url == down { 1 } else { 2 };
        for args in [
            &["migrate"][..],
            &["who", "--ip", "192.0.2.1", "--at", "now"],
            &["history", "egress/px1"],
        ] {
            let (code, err) = exit(with_example(args).args(["--database-url", url]));
            assert_eq!(code, Some(want), "{args:?} {url}: {err}");
        }
    }
    let (code, err) = exit(&mut with_example(&[
        "history",
        "egress/px1",
        "--since",
        "yesterday-ish",
        "--database-url",
        &down,
    ]));
    assert_eq!(code, Some(2), "{err}");
}

/// `report`: 1 the ledger could not be read, 2 bad flags (a bad database URL too).
#[test]
fn report_exits_1_when_the_ledger_is_down_and_2_for_a_bad_database_url() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let down = format!("postgres://egress@127.0.0.1:{}/egress", closed_port());
    let (code, err) = exit(with_example(&["report", "--database-url", &down, "--out"]).arg(&out));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot read the ledger"), "{err}");

    let (code, err) =
        exit(with_example(&["report", "--database-url", "mysql://db/egress", "--out"]).arg(&out));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("bad database URL"), "{err}");
}

/// `run`: a bad --database-url is invalid configuration, refused before anything binds.
#[test]
fn run_refuses_a_bad_database_url_before_binding() {
    let (code, err) = exit(&mut with_example(&[
        "run",
        "--agent-listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--database-url",
        "mysql://egress:s3cret@db/egress",
    ]));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--database-url: bad database URL mysql://egress:***@db/egress"),
        "{err}"
    );
}
