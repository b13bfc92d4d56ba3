//! The shipped deployment files: every generated file equals the generator's output (edit
//! haproxy/pool.txt or haproxy/haproxy.cfg.in, then run scripts/gen-config), and both HAProxy
//! configurations pass `haproxy -dW -c` (no warning) with the HAProxy the tests run
//! (`EGRESS_TEST_HAPROXY`, default Debian's 2.6).

use std::process::Command;

use egress_harness::haproxy::EMPTY_SERVER_STATE;
use egress_harness::programs::haproxy_program;
use egress_harness::shipped::{repo_root, shipped_pool, stale_files};

#[test]
fn generated_files_are_up_to_date() -> anyhow::Result<()> {
    let stale = stale_files()?;
    assert!(
        stale.is_empty(),
        "stale generated files {stale:?}: run scripts/gen-config and commit the result"
    );
    Ok(())
}

#[test]
fn the_pool_has_26_global_and_2_korea_servers() -> anyhow::Result<()> {
    let pool = shipped_pool()?;
    let count = |b: &str| pool.iter().filter(|s| s.backend == b).count();
    assert_eq!((count("egress"), count("egress_kr"), pool.len()), (26, 2, 28));
    let cfg = std::fs::read_to_string(repo_root().join("haproxy/haproxy.cfg"))?;
    for backend in ["egress", "egress_kr"] {
        let servers: Vec<_> = pool.iter().filter(|s| s.backend == backend).collect();
        for (i, s) in servers.iter().enumerate() {
            // The pool's server, with its fixed ring id, and its twin in <pool>_retry: the ring
            // position before it (the last server's twin wraps to position 1).
            let line = format!(
                "    server {} {} id {} agent-send \"{}/{}\\n\"",
                s.name,
                s.vm_address,
                i + 1,
                s.backend,
                s.name
            );
            assert!(cfg.contains(&line), "missing {line:?}");
            let twin_id = if i == 0 { servers.len() } else { i };
            let twin = format!(
                "    server {} {} id {twin_id} track {}/{}",
                s.name, s.vm_address, s.backend, s.name
            );
            assert!(cfg.contains(&twin), "missing {twin:?}");
        }
    }
    Ok(())
}

/// `haproxy -dW -c` on a copy of the shipped `file` (with every file of its folder beside it), its
/// `server-state-file` pointed at a file with no server in the copy: the packages create that file
/// (HAProxy 2.6 warns when it is missing), and a test must not write /var/lib/haproxy.
fn haproxy_check(dir: &std::path::Path, file: &str, env: &[(&str, &str)]) -> anyhow::Result<()> {
    let copy = tempfile::tempdir()?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), copy.path().join(entry.file_name()))?;
        }
    }
    let state = copy.path().join("server-state");
    std::fs::write(&state, EMPTY_SERVER_STATE)?;
    let cfg = copy.path().join(file);
    let text = std::fs::read_to_string(&cfg)?;
    anyhow::ensure!(
        text.contains(SHIPPED_STATE_FILE),
        "{file}: no server-state-file {SHIPPED_STATE_FILE}"
    );
    std::fs::write(&cfg, text.replace(SHIPPED_STATE_FILE, &state.to_string_lossy()))?;
    let out = Command::new(haproxy_program()?)
        .arg("-dW")
        .arg("-c")
        .arg("-f")
        .arg(file)
        .current_dir(copy.path())
        .envs(env.iter().copied())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "haproxy -dW -c {file} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

const SHIPPED_STATE_FILE: &str = "/var/lib/haproxy/server-state";

#[test]
fn shipped_configs_pass_haproxy_check() -> anyhow::Result<()> {
    let root = repo_root();
    haproxy_check(&root.join("haproxy"), "haproxy.cfg", &[])?;
    // agent-addr is resolved while parsing: in the cluster the Deployment sets EGRESS_AGENT_ADDR.
    haproxy_check(
        &root.join("k8s/base/haproxy"),
        "haproxy.cfg",
        &[("EGRESS_AGENT_ADDR", "127.0.0.1")],
    )?;
    Ok(())
}
