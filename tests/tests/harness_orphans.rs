//! Killing a test process midway leaves nothing behind: its children die with it (parent-death
//! signal) and the next harness start removes its temp dirs.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use egress_harness::dirs::{self, is_alive, start_time};
use egress_harness::process::{ManagedChild, descendants};
use egress_harness::wait_until;

#[test]
fn sigkilled_test_process_leaves_no_process_and_no_temp_dir() -> anyhow::Result<()> {
    let mut holder = ManagedChild::spawn(
        "holder",
        Command::new(env!("CARGO_BIN_EXE_egress-harness-holder")),
    )?;
    let ready = wait_until(Duration::from_secs(60), || {
        holder.logs().contains("READY") || !holder.is_running()
    });
    assert!(
        ready && holder.is_running(),
        "holder did not start:\n{}",
        holder.logs()
    );
    let holder_pid = holder.pid();

    // Everything the holder started, with start times so a recycled pid is not mistaken for a survivor.
    let tree: HashMap<u32, u64> = descendants(holder_pid)
        .into_iter()
        .filter_map(|pid| Some((pid, start_time(pid)?)))
        .collect();
    let names: Vec<String> = tree
        .keys()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).ok())
        .map(|s| s.trim().to_owned())
        .collect();
    for expected in ["postgres", "haproxy", "tinyproxy"] {
        assert!(
            names.iter().any(|n| n == expected),
            "no {expected} under the holder: {names:?}"
        );
    }
    let holder_dirs: Vec<_> = std::fs::read_dir(dirs::root())?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{holder_pid}-")))
        })
        .collect();
    assert!(holder_dirs.len() >= 3, "holder dirs: {holder_dirs:?}");

    holder.kill();

    let survivors = || -> Vec<u32> {
        tree.iter()
            .filter(|(pid, start)| is_alive(**pid) && start_time(**pid) == Some(**start))
            .map(|(p, _)| *p)
            .collect()
    };
    let clean = wait_until(Duration::from_secs(10), || survivors().is_empty());
    assert!(clean, "processes outlived their killed parent: {:?}", survivors());

    let report = dirs::sweep()?;
    for dir in &holder_dirs {
        assert!(!dir.exists(), "{} not swept (report: {report:?})", dir.display());
    }
    Ok(())
}
