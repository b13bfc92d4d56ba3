//! Finding the external programs the harness runs, with a one-line error naming the Debian package.

use std::path::{Path, PathBuf};

/// Finds `name` in `PATH`, /usr/sbin, /usr/bin, or the newest /usr/lib/postgresql/*/bin.
///
/// The error is one line naming the Debian package to install, so a missing dependency reads as such
/// rather than as a panic deep in a test.
pub fn find_program(name: &str, package: &str) -> anyhow::Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push("/usr/sbin".into());
    dirs.push("/usr/bin".into());
    dirs.extend(postgres_bin_dirs());
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "`{name}` not found in PATH, /usr/sbin or /usr/lib/postgresql/*/bin: install Debian's \
                 `{package}` package (as root: scripts/install-deps)"
            )
        })
}

/// /usr/lib/postgresql/<major>/bin dirs, newest major first.
fn postgres_bin_dirs() -> Vec<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((major, e.path().join("bin")))
        })
        .collect();
    found.sort_by_key(|(major, _)| std::cmp::Reverse(*major));
    found.into_iter().map(|(_, p)| p).collect()
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether this process runs as root (then PostgreSQL is run as the `postgres` user).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
