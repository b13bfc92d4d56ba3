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
