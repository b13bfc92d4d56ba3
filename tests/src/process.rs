//! Child processes that cannot outlive the test: [`ManagedChild`].
//!
//! Every child is started as `setpriv --pdeathsig=KILL -- <program> <args>` (util-linux), so the kernel
//! SIGKILLs it when its parent dies, even by SIGKILL. Linux fires the parent-death signal when the
//! *thread* that forked the child exits, so all children are forked by one spawner thread that lives as
//! long as the process (a test thread or a tokio blocking thread may end long before the child should).
//! On drop a child gets its stop signal (SIGTERM unless set), then SIGKILL after a grace period. Its
//! stdout and stderr go to `<dir>/<name>.log`, whose tail is printed on drop into the test's captured
//! output, which libtest shows only for a failing test.
//!
//! Remaining gap, covered by [`crate::dirs::sweep`]: a parent killed between fork and setpriv's prctl
//! leaves the child running; its pid is in the dir's `pids` file and the next harness start kills it.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::dirs::HarnessDir;
use crate::programs::{find_program, is_root};

/// How many bytes of a log the failure message shows.
const LOG_TAIL_BYTES: usize = 6000;

/// What to start: a command plus how to run and stop it. Build with [`ChildSpec::new`].
#[derive(Debug)]
pub struct ChildSpec {
    name: String,
    cmd: Command,
    run_as: Option<String>,
    stop_signal: Signal,
    grace: Duration,
    dir: Option<Arc<HarnessDir>>,
}

impl ChildSpec {
    /// `name` names the log file and the failure message; `cmd` carries program, args, env and cwd
    /// (its stdio settings are replaced: stdin is /dev/null, stdout and stderr go to the log file).
    pub fn new(name: &str, cmd: Command) -> ChildSpec {
        ChildSpec {
            name: name.to_owned(),
            cmd,
            run_as: None,
            stop_signal: Signal::SIGTERM,
            grace: Duration::from_secs(3),
            dir: None,
        }
    }

    /// Runs the program as `user` when this process is root (ignored otherwise).
    pub fn run_as(mut self, user: &str) -> ChildSpec {
        self.run_as = Some(user.to_owned());
        self
    }

    /// The signal sent first on stop (default SIGTERM; PostgreSQL wants SIGINT, its fast shutdown).
    pub fn stop_signal(mut self, signal: Signal) -> ChildSpec {
        self.stop_signal = signal;
        self
    }

    /// How long to wait after the stop signal before SIGKILL (default 3 s).
    pub fn grace(mut self, grace: Duration) -> ChildSpec {
        self.grace = grace;
        self
    }

    /// Puts the log file in `dir` (default: a fresh harness dir named after the child).
    pub fn in_dir(mut self, dir: Arc<HarnessDir>) -> ChildSpec {
        self.dir = Some(dir);
        self
    }

    /// Starts the child.
    pub fn spawn(self) -> anyhow::Result<ManagedChild> {
        let dir = match self.dir {
            Some(dir) => dir,
            None => Arc::new(HarnessDir::new(&self.name)?),
        };
        let log_path = dir.path().join(format!("{}.log", self.name));
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut wrapped = wrap(&self.cmd, self.run_as.as_deref())?;
        wrapped.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        let program = self.cmd.get_program().to_string_lossy().into_owned();
        let child = spawn_on_spawner_thread(wrapped).with_context(|| format!("spawning {program}"))?;
        let pid = child.id();
        dir.record_pid(pid, &self.name);
        Ok(ManagedChild {
            name: self.name,
            child,
            pid,
            log_path,
            stop_signal: self.stop_signal,
            grace: self.grace,
            exited: None,
            quiet: false,
            dir,
        })
    }

    /// Runs the child to completion within `timeout`; an error (with the log) unless it exits 0.
    pub fn run(self, timeout: Duration) -> anyhow::Result<String> {
        let name = self.name.clone();
        let mut child = self.spawn()?;
        // The log goes into the result (or the error), so the drop need not print it.
        child.quiet = true;
        match child.wait_timeout(timeout) {
            Some(status) if status.success() => Ok(child.logs()),
            Some(status) => anyhow::bail!("{name} failed ({status}):\n{}", tail(&child.logs())),
            None => {
                child.kill();
                anyhow::bail!(
                    "{name} did not finish within {timeout:?}:\n{}",
                    tail(&child.logs())
                )
            }
        }
    }
}

/// A running child process, stopped on drop (stop signal, then SIGKILL) and killed by the kernel if
/// the test process dies.
#[derive(Debug)]
pub struct ManagedChild {
    name: String,
    child: Child,
    pid: u32,
    log_path: PathBuf,
    stop_signal: Signal,
    grace: Duration,
    exited: Option<ExitStatus>,
    quiet: bool,
    dir: Arc<HarnessDir>,
}

impl ManagedChild {
    /// Starts `cmd` with the defaults of [`ChildSpec`] (own temp dir, SIGTERM then SIGKILL after 3 s).
    pub fn spawn(name: &str, cmd: Command) -> anyhow::Result<ManagedChild> {
        ChildSpec::new(name, cmd).spawn()
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The temp dir holding the log file (tests may put config files there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Path of the combined stdout + stderr log.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the child wrote so far (stdout and stderr interleaved).
    pub fn logs(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The exit status if the child has exited (reaps it).
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_exit_status().is_none()
    }

    /// Sends `signal` to the child (no-op once it has exited).
    pub fn signal(&mut self, signal: Signal) -> anyhow::Result<()> {
        if self.is_running() {
            kill(Pid::from_raw(self.pid as i32), signal)
                .with_context(|| format!("sending {signal} to {} (pid {})", self.name, self.pid))?;
        }
        Ok(())
    }

    /// Waits up to `timeout` for the child to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the child: the stop signal, then SIGKILL after the grace period. Returns its exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if let Some(status) = self.try_exit_status() {
            return Some(status);
        }
        let _ = kill(Pid::from_raw(self.pid as i32), self.stop_signal);
        if let Some(status) = self.wait_timeout(self.grace) {
            return Some(status);
        }
        self.kill()
    }

    /// Keeps the log tail out of the output printed on drop (it is printed by default; see Drop).
    pub fn set_quiet(&mut self, quiet: bool) {
        self.quiet = quiet;
    }

    /// SIGKILLs the child at once and reaps it.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if let Some(status) = self.try_exit_status() {
            return Some(status);
        }
        let _ = self.child.kill();
        self.exited = self.child.wait().ok();
        self.exited
    }
}

static QUIET_ALL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Stops every [`ManagedChild`] of this process from printing its log tail on drop (for programs
/// that show their own output, such as the demo; tests want the tails).
pub fn quiet_all() {
    QUIET_ALL.store(true, std::sync::atomic::Ordering::Relaxed);
}

impl Drop for ManagedChild {
    fn drop(&mut self) {
        self.stop();
        // libtest shows a test's captured output only when the test fails (by panic or by returning
        // Err), so the tail is printed on every drop and appears exactly in failure messages.
        // EGRESS_HARNESS_QUIET (or quiet_all, for programs such as the demo) silences it.
        let quiet = self.quiet
            || QUIET_ALL.load(std::sync::atomic::Ordering::Relaxed)
            || std::env::var_os("EGRESS_HARNESS_QUIET").is_some();
        if std::thread::panicking() || !quiet {
            eprintln!(
                "---- {} (pid {}) log tail, {} ----\n{}\n---- end of {} ----",
                self.name,
                self.pid,
                self.log_path.display(),
                tail(&self.logs()),
                self.name
            );
        }
    }
}

/// The last few KiB of a log, for error messages.
pub fn tail(log: &str) -> &str {
    if log.len() <= LOG_TAIL_BYTES {
        return log;
    }
    let mut start = log.len() - LOG_TAIL_BYTES;
    while !log.is_char_boundary(start) {
        start += 1;
    }
    &log[start..]
}

/// `setpriv [--reuid --regid --init-groups] --pdeathsig=KILL -- <program> <args>`, same env and cwd.
fn wrap(cmd: &Command, run_as: Option<&str>) -> anyhow::Result<Command> {
    static SETPRIV: OnceLock<anyhow::Result<PathBuf>> = OnceLock::new();
    let setpriv = SETPRIV
        .get_or_init(|| find_program("setpriv", "util-linux"))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let mut wrapped = Command::new(setpriv);
    if let Some(user) = run_as.filter(|_| is_root()) {
        wrapped.args([
            format!("--reuid={user}"),
            format!("--regid={user}"),
            "--init-groups".into(),
        ]);
    }
    wrapped
        .arg("--pdeathsig=KILL")
        .arg("--")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    if let Some(cwd) = cmd.get_current_dir() {
        wrapped.current_dir(cwd);
    }
    Ok(wrapped)
}

type SpawnJob = (Command, mpsc::SyncSender<std::io::Result<Child>>);

/// Forks on the one spawner thread, which never exits before the process (see the module docs).
fn spawn_on_spawner_thread(cmd: Command) -> anyhow::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("egress-harness-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("cannot start the harness spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::sync_channel(1);
    sender
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply_tx))
        .map_err(|_| anyhow::anyhow!("the harness spawner thread is gone"))?;
    let child = reply_rx
        .recv()
        .map_err(|_| anyhow::anyhow!("the harness spawner thread is gone"))??;
    Ok(child)
}

/// Builds a [`Command`] from a program and arguments (a small convenience for tests).
pub fn command<I, S>(program: impl Into<OsString>, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let mut cmd = Command::new(program.into());
    cmd.args(args.into_iter().map(Into::into));
    cmd
}

/// All live descendants of `root` (children, grandchildren, ...), found by scanning /proc.
pub fn descendants(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, crate::dirs::parent_pid(pid)?)))
        .collect();
    let mut found = vec![root];
    let mut i = 0;
    while let Some(&parent) = found.get(i) {
        found.extend(
            parents
                .iter()
                .filter(|(_, ppid)| *ppid == parent)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    found.remove(0);
    found
}
