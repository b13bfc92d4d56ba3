//! The binary's configuration surface: `--check-config`, `--help`, exit codes.

use std::process::Command;

const KEY: &str = "000102030405060708090a0b0c0d0e0f";

fn agent() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_egress-spoa"));
    c.env_remove("EGRESS_HASH_KEY").env_remove("EGRESS_HASH_KEY_FILE");
    c
}

#[test]
fn check_config_accepts_a_valid_setup_with_a_one_line_summary() {
    let dir = std::env::temp_dir().join(format!("egress-spoa-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ips = dir.join("exit-ips");
    std::fs::write(&ips, "egress s1 203.0.113.1\negress s2 203.0.113.2\n").unwrap();
    let out = agent()
        .env("EGRESS_HASH_KEY", KEY)
        .args(["--check-config", "--exit-ips-file"])
        .arg(&ips)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.contains("configuration OK") && stdout.contains("exit-ips 2 entries"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_config_refuses_bad_settings_with_exit_2() {
    let cases: &[(&[&str], Option<&str>, &str)] = &[
        (&["--check-config"], None, "EGRESS_HASH_KEY"),
        (&["--check-config"], Some("abcd"), "32 hex"),
        (
            &["--check-config", "--max-frame-size", "100"],
            Some(KEY),
            "max-frame-size",
        ),
        (
            &["--check-config", "--hello-timeout", "0s"],
            Some(KEY),
            "hello-timeout",
        ),
        (
            &["--check-config", "--exit-ips-file", "/nonexistent/x"],
            Some(KEY),
            "exit-IP file",
        ),
        (
            &[
                "--check-config",
                "--database-url",
                "mysql://egress:s3cret@db/egress",
            ],
            Some(KEY),
            "--database-url: bad database URL mysql://egress:***@db/egress",
        ),
    ];
    for (args, key, want) in cases {
        let mut c = agent();
        c.args(*args);
        if let Some(k) = key {
            c.env("EGRESS_HASH_KEY", k);
        }
        let out = c.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: want {want:?} in {stderr}");
    }
}

#[test]
fn help_explains_and_shows_the_haproxy_lines() {
    let out = agent().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for want in [
        "filter spoe engine egress",
        "option spop-check",
        "txn.egress.client_hash",
        "EGRESS_SPOA_LISTEN",
        "Exit codes: 0 stopped",
        "2 invalid configuration",
    ] {
        assert!(text.contains(want), "missing {want:?} in --help:\n{text}");
    }
    let v = agent().arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("egress-spoa "));
}
