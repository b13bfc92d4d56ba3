//! The shipped deployment files: every generated file equals the generator's output (edit
//! haproxy/pool.txt or haproxy/haproxy.cfg.in, then run scripts/gen-config), and both HAProxy
//! configurations pass `haproxy -c` (Debian's HAProxy 2.6).

use std::process::Command;

use egress_e2e::shipped::{repo_root, shipped_pool, stale_files};

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
    for s in &pool {
        let line = format!(
            "    server {} {} agent-send \"{}/{}\\n\"",
            s.name, s.vm_address, s.backend, s.name
        );
        assert!(cfg.contains(&line), "missing {line:?}");
    }
    Ok(())
}

fn haproxy_check(dir: &std::path::Path, file: &str, env: &[(&str, &str)]) -> anyhow::Result<()> {
    let out = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(file)
        .current_dir(dir)
        .envs(env.iter().copied())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "haproxy -c {file} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

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
