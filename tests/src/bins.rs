//! Locating the workspace's own binaries (built once by `cargo build --workspace --bins`).

use std::path::PathBuf;

use anyhow::Context as _;

/// `target/<profile>/<name>`, found next to the running test executable (target/<profile>/deps/x ->
/// target/<profile>/), or in `$EGRESS_BIN_DIR` when set.
pub fn bin_path(name: &str) -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("EGRESS_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().context("locating the test executable")?;
            let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
            if dir.file_name().is_some_and(|n| n == "deps" || n == "examples") {
                dir.pop();
            }
            dir
        }
    };
    let path = dir.join(name);
    anyhow::ensure!(
        path.is_file(),
        "{name} not built ({} missing): run `cargo build --workspace --bins` first (scripts/test does this)",
        path.display()
    );
    Ok(path)
}

/// Runs `egress-checker <args>` to completion against the ledger at `database_url`, with the hash
/// key `key_hex`, and returns its stdout; an unsuccessful exit is an error carrying its stderr.
pub fn checker_cli(database_url: &str, key_hex: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(bin_path("egress-checker")?)
        .args(args)
        .env("EGRESS_DATABASE_URL", database_url)
        .env("EGRESS_HASH_KEY", key_hex)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "egress-checker {args:?} exited {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// The `egress-spoa` command the demo stack and the system test run: SPOP on `listen`, metrics on
/// `metrics`, exit IPs from and attribution to the ledger at `database_url`, both refreshed every
/// second (so a test sees them quickly), spooling to `spool` during a Postgres outage.
pub fn spoa_command(
    listen: &str,
    metrics: &str,
    database_url: &str,
    key_hex: &str,
    spool: &std::path::Path,
) -> anyhow::Result<std::process::Command> {
    let mut cmd = std::process::Command::new(bin_path("egress-spoa")?);
    cmd.env("EGRESS_HASH_KEY", key_hex)
        .env("EGRESS_DATABASE_URL", database_url)
        .args(["--listen", listen, "--metrics-listen", metrics])
        // The shipped exit-IP poll (10 s): changes reach the agent by push (LISTEN/NOTIFY), the poll is
        // the fallback.
        .args(["--exit-ips-refresh", "10s", "--attribution-flush-interval", "1s"])
        .arg("--spool-path")
        .arg(spool);
    Ok(cmd)
}
