//! The rotator's `command` executor, played by the test: `egress-checker rotate` runs the script
//! [`write_script`] installs (`<program> <backend> <server> <location>`), which hands the request to
//! the test through a file and waits (bounded, 20 s) for its answer. The test serves requests with
//! [`take_request`] and [`answer`], e.g. by restarting its tinyproxy with the location as the new
//! exit address.

use std::path::{Path, PathBuf};

const SCRIPT: &str = r#"#!/bin/sh
d="$(dirname "$0")"
echo "$3" > "$d/req.$2.tmp" && mv "$d/req.$2.tmp" "$d/req.$2"
i=0
while [ ! -f "$d/done.$2" ]; do
  sleep 0.05; i=$((i+1))
  if [ $i -gt 400 ]; then echo "restart of $2 not answered" >&2; exit 1; fi
done
answer="$(cat "$d/done.$2")"; rm -f "$d/done.$2"
[ "$answer" = "ok" ] || { echo "$answer" >&2; exit 1; }
"#;

/// Writes the executor script into `dir` (mode 0755) and returns its path, for
/// `[rotation.executor] kind = "command", program = <path>`.
pub fn write_script(dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("rotate-backend");
    std::fs::write(&path, SCRIPT)?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    Ok(path)
}

/// The location the executor asked for `server`, if it is waiting (the request is consumed).
pub fn take_request(dir: &Path, server: &str) -> Option<String> {
    let req = dir.join(format!("req.{server}"));
    let location = std::fs::read_to_string(&req).ok()?;
    let _ = std::fs::remove_file(&req);
    Some(location.trim().to_owned())
}

/// Answers the executor waiting for `server`: `Ok` lets the rotation go on, `Err` fails it with
/// that message.
pub fn answer(dir: &Path, server: &str, result: anyhow::Result<()>) -> anyhow::Result<()> {
    let text = match result {
        Ok(()) => "ok".to_owned(),
        Err(e) => format!("restart failed: {e:#}"),
    };
    let tmp = dir.join(format!("done.{server}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join(format!("done.{server}")))?;
    Ok(())
}

/// Serves the request waiting for `server`, if any: the location is the new exit address, and
/// `restart` makes it so (e.g. a tinyproxy restarted with that `Bind`); its result is the answer.
pub fn serve_restart(
    dir: &Path,
    server: &str,
    restart: impl FnOnce(std::net::Ipv4Addr) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let Some(location) = take_request(dir, server) else {
        return Ok(());
    };
    let result = location
        .parse::<std::net::Ipv4Addr>()
        .map_err(|_| anyhow::anyhow!("bad location {location:?}"))
        .and_then(restart);
    answer(dir, server, result)
}

/// A finished command's stdout then stderr, as text.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
