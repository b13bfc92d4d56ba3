//! Temp dirs under one root, named with the owning process's pid, swept when their owner is dead.
//!
//! Layout: `$TMPDIR/egress-harness/<owner pid>-<seq>-<kind>/` with two bookkeeping files:
//! `owner` (the owner's start time from /proc, so a recycled pid is not mistaken for a live owner) and
//! `pids` (one `pid starttime name` line per child spawned there). [`sweep`] kills any recorded child
//! that is still the same process, then removes the dir.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Once, OnceLock};

use anyhow::Context as _;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The root every harness temp dir lives under: `$TMPDIR/egress-harness` (`egress-harness-<uid>`
/// when not root, so users sharing a machine do not trip over each other's dirs).
pub fn root() -> PathBuf {
    let uid = nix::unistd::geteuid();
    let name = if uid.is_root() {
        "egress-harness".to_owned()
    } else {
        format!("egress-harness-{uid}")
    };
    std::env::temp_dir().join(name)
}

/// A temp dir owned by this test process; removed on drop.
#[derive(Debug)]
pub struct HarnessDir {
    path: PathBuf,
    // Serializes appends to the pids file.
    pids_lock: Mutex<()>,
}

impl HarnessDir {
    /// Creates `<root>/<pid>-<seq>-<kind>`, sweeping dead owners' dirs first (once per process).
    pub fn new(kind: &str) -> anyhow::Result<HarnessDir> {
        static SWEEP: Once = Once::new();
        static SEQ: AtomicU64 = AtomicU64::new(0);
        SWEEP.call_once(|| {
            if let Err(error) = sweep() {
                eprintln!("egress-harness: sweeping stale temp dirs failed: {error:#}");
            }
        });
        let root = root();
        fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        // The postgres user must be able to traverse the root to reach its data dir.
        set_mode(&root, 0o755)?;
        let pid = std::process::id();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let kind: String = kind
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        let path = root.join(format!("{pid}-{seq}-{kind}"));
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        set_mode(&path, 0o755)?;
        let start = own_start_time().context("reading /proc/self/stat")?;
        fs::write(path.join("owner"), format!("{start}\n"))?;
        Ok(HarnessDir {
            path,
            pids_lock: Mutex::new(()),
        })
    }

    /// The dir's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records a child so that a later [`sweep`] can kill it if this process dies without cleaning up.
    pub fn record_pid(&self, pid: u32, name: &str) {
        let _guard = self.pids_lock.lock().unwrap_or_else(|e| e.into_inner());
        let Some(start) = start_time(pid) else { return };
        let line = format!("{pid} {start} {}\n", name.replace(char::is_whitespace, "_"));
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path.join("pids"));
        if let Ok(mut file) = file {
            let _ = file.write_all(line.as_bytes());
        }
    }
}

impl Drop for HarnessDir {
    fn drop(&mut self) {
        if std::env::var_os("EGRESS_KEEP_TMP").is_some() {
            eprintln!(
                "egress-harness: keeping {} (EGRESS_KEEP_TMP is set)",
                self.path.display()
            );
            return;
        }
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// What [`sweep`] did.
#[derive(Debug, Default)]
pub struct SweepReport {
    /// Dirs removed because their owner process is gone.
    pub removed: Vec<PathBuf>,
    /// Leftover child processes killed (pid, name).
    pub killed: Vec<(u32, String)>,
}

/// Removes the temp dirs of dead owners, first SIGKILLing any child recorded there that still runs.
pub fn sweep() -> anyhow::Result<SweepReport> {
    // Two sweeps in one process must not race on the same dir.
    static LOCK: OnceLock<Mutex<()>> = OnceLock::new();
    let _guard = LOCK
        .get_or_init(|| Mutex::new(()))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let mut report = SweepReport::default();
    let entries = match fs::read_dir(root()) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(report),
        Err(error) => return Err(error).context("listing the harness root"),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(owner) = owner_pid(&path) else { continue };
        let recorded_start = fs::read_to_string(path.join("owner"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        let alive = match (start_time(owner), recorded_start) {
            (Some(now), Some(then)) => now == then,
            (Some(_), None) => true, // owner file not written yet: being created right now
            (None, _) => false,
        };
        if alive {
            continue;
        }
        if let Ok(pids) = fs::read_to_string(path.join("pids")) {
            for line in pids.lines() {
                let mut it = line.split_whitespace();
                let (Some(pid), Some(start)) = (it.next(), it.next()) else {
                    continue;
                };
                let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
                    continue;
                };
                if start_time(pid) == Some(start) && !is_zombie(pid) {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                    report.killed.push((pid, it.next().unwrap_or("?").to_owned()));
                }
            }
        }
        if fs::remove_dir_all(&path).is_ok() {
            report.removed.push(path);
        }
    }
    Ok(report)
}

fn owner_pid(dir: &Path) -> Option<u32> {
    dir.file_name()?.to_str()?.split('-').next()?.parse().ok()
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

fn own_start_time() -> Option<u64> {
    start_time(std::process::id())
}

/// Field 22 of /proc/<pid>/stat (start time in clock ticks since boot); None if the process is gone.
pub fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// Whether the process exists but is a zombie (dead, not yet reaped).
pub fn is_zombie(pid: u32) -> bool {
    stat_fields(pid).and_then(|f| f.first().cloned()).as_deref() == Some("Z")
}

/// Whether `pid` is a live (non-zombie) process.
pub fn is_alive(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|f| f.first().map(String::as_str) != Some("Z"))
}

/// The parent pid of `pid`, if it exists.
pub fn parent_pid(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

// Fields from 3 (state) on; the comm field (2) may contain spaces and parentheses, so split after the
// last ')'.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}
