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
