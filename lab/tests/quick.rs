//! Runs `egress-lab --quick` (the CI mode) and checks that it exits 0, i.e. that the table has its
//! shape and every asserted headline check holds (among them: plain-HTTP tunnel-503 error rate
//! < 0.1 % at rung (d), and at most 1 error with the client fallback, rung (e)), and that it wrote
//! its outputs.
//!
//! Needs haproxy, tinyproxy, fonts-dejavu-core and the egress-checker binary
//! (`cargo build -p egress-checker -p egress-lab`, or `cargo build --workspace --bins`).

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn quick_lab_meets_the_headline_figures() -> anyhow::Result<()> {
    let out = tempfile::tempdir()?;
    // Fails early, with the build hint, when the checker binary is missing.
    egress_harness::bins::bin_path("egress-checker")?;
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_egress-lab"))
        .arg("--quick")
        .arg("--out")
        .arg(out.path())
        .env(
            "EGRESS_BIN_DIR",
            egress_harness::bins::bin_path("egress-checker")?
                .parent()
                .unwrap_or(out.path()),
        )
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}\n{stderr}\nquick lab took {:?}", started.elapsed());
    assert!(
        output.status.success(),
        "egress-lab --quick failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    for file in [
        "results.md",
        "results.json",
        "crash.png",
        "tunnel-503.png",
        "rotate-drain.png",
        "http-tunnel-503.png",
    ] {
        let path = out.path().join(file);
        assert!(path.is_file(), "{} missing", path.display());
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("results.json"))?)?;
    let checks = json["checks"].as_array().cloned().unwrap_or_default();
    assert_eq!(checks.len(), 17, "{json}");
    // The asserted checks gate the exit code (checked above); here also in the JSON. The targets
    // and the false-quarantine count are reported only: HAProxy cannot replay a CONNECT, which puts
    // a floor under the tunnel error counts (the bound, docs/lab.md).
    let asserted: Vec<_> = checks.iter().filter(|c| c["asserted"] == true).collect();
    assert_eq!(asserted.len(), 6, "{checks:?}");
    assert!(asserted.iter().all(|c| c["met"] == true), "{checks:?}");
    // The two new figures, read from the rows themselves.
    let runs = json["runs"].as_array().cloned().unwrap_or_default();
    let row = |profile: &str, rung: &str| {
        runs.iter()
            .find(|r| r["profile"] == profile && r["fault"] == "Tunnel503" && r["rung"] == rung)
            .cloned()
            .unwrap_or_else(|| panic!("no {profile} tunnel-503 {rung} row: {json}"))
    };
    let http = row("Http", "D");
    let (errors, requests) = (
        http["errors"].as_u64().unwrap_or(u64::MAX),
        http["requests"].as_u64().unwrap_or(0),
    );
    assert!(
        requests > 0 && errors * 1000 < requests,
        "plain HTTP tunnel-503 at (d): {errors}/{requests}"
    );
    let fallback = row("Connect", "E");
    assert!(
        fallback["errors"].as_u64().is_some_and(|e| e <= 1),
        "client fallback: {fallback}"
    );
    assert!(
        fallback["client_retries"].as_u64().is_some_and(|n| n > 0),
        "client fallback: {fallback}"
    );
    for c in checks.iter().filter(|c| c["asserted"] != true) {
        println!("target {}: met={} ({})", c["name"], c["met"], c["detail"]);
    }
    assert!(started.elapsed() < Duration::from_secs(600));
    Ok(())
}
