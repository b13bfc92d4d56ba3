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

/// The HAProxy binary every test runs: `EGRESS_TEST_HAPROXY` (a path, or a name looked up like any
/// program, e.g. `haproxy-3.4` from scripts/install-haproxy-newer), else Debian's `haproxy`.
///
/// A link is resolved (`haproxy-3.4` → `.../usr/sbin/haproxy`), so the process is named `haproxy`
/// whichever version runs.
pub fn haproxy_program() -> anyhow::Result<PathBuf> {
    let bin = configured_haproxy()?;
    std::fs::canonicalize(&bin).map_err(|e| anyhow::anyhow!("{}: {e}", bin.display()))
}

fn configured_haproxy() -> anyhow::Result<PathBuf> {
    match std::env::var("EGRESS_TEST_HAPROXY") {
        Ok(bin) if !bin.trim().is_empty() => {
            let path = PathBuf::from(bin.trim());
            if path.components().count() > 1 {
                anyhow::ensure!(
                    is_executable(&path),
                    "EGRESS_TEST_HAPROXY={}: not an executable file",
                    path.display()
                );
                return Ok(path);
            }
            find_program(
                bin.trim(),
                "haproxy (newer series: scripts/install-haproxy-newer)",
            )
        }
        _ => find_program("haproxy", "haproxy"),
    }
}

/// The version of [`haproxy_program`] as (major, minor), from `haproxy -v`.
pub fn haproxy_version() -> anyhow::Result<(u32, u32)> {
    let bin = haproxy_program()?;
    let out = std::process::Command::new(&bin)
        .arg("-v")
        .output()
        .map_err(|e| anyhow::anyhow!("{} -v: {e}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "HAProxy version 3.4.7-1 2026/10/14 - https://haproxy.org/"
    let version = text
        .split_whitespace()
        .nth(2)
        .ok_or_else(|| anyhow::anyhow!("{} -v: unexpected output {text:?}", bin.display()))?;
    let mut parts = version.split(['.', '-']);
    let mut next = || parts.next().and_then(|p| p.parse::<u32>().ok());
    match (next(), next()) {
        (Some(major), Some(minor)) => Ok((major, minor)),
        _ => anyhow::bail!("{} -v: unexpected version {version:?}", bin.display()),
    }
}
