//! `[rotation]`: where HAProxy's runtime API is, how long each step may take, how a backend is
//! restarted in another location, and when the checker rotates a quarantined server by itself.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::config::{RuntimeApiAddr, valid_name};

/// The advisory-lock key shared by every rotator of the fleet (`pg_try_advisory_lock`): "egrsrot1".
pub const DEFAULT_LOCK_KEY: i64 = 0x6567_7273_726f_7431;

/// `[rotation]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotationConfig {
    /// Every HAProxy instance's admin socket (`unix:/path` or `tcp:ip:port`): a rotation drains the
    /// server on all of them and stops before changing anything if one cannot be reached.
    pub instances: Vec<String>,
    /// Deadline of one runtime-API command.
    #[serde(default = "d_command", deserialize_with = "duration")]
    pub command_timeout: Duration,
    /// How long to wait for the server's sessions to reach 0 before `shutdown sessions`.
    #[serde(default = "d_drain", deserialize_with = "duration")]
    pub drain_deadline: Duration,
    /// How often `scur` is polled while draining.
    #[serde(default = "d_poll", deserialize_with = "duration")]
    pub poll_interval: Duration,
    /// Deadline of the executor (change location + restart + ready).
    #[serde(default = "d_restart", deserialize_with = "duration")]
    pub restart_timeout: Duration,
    /// Deadline for the restarted backend to pass a probe and show a new exit IP.
    #[serde(default = "d_verify", deserialize_with = "duration")]
    pub verify_timeout: Duration,
    /// Postgres advisory-lock key: one rotation at a time across the fleet.
    #[serde(default = "d_lock")]
    pub lock_key: i64,
    /// Self-healing: `egress-checker run` rotates a server quarantined longer than this. Off when absent.
    #[serde(default, deserialize_with = "opt_duration")]
    pub quarantined_for: Option<Duration>,
    /// Self-healing never rotates while fewer than this many servers are healthy.
    #[serde(default = "d_min_healthy")]
    pub min_healthy: usize,
    /// How a backend gets its new location and restarts.
    pub executor: ExecutorConfig,
    /// Per server (`backend/server`), the locations it rotates through, in order.
    pub locations: BTreeMap<String, Vec<String>>,
    /// The ledger URL for self-healing rotations; not a config key: `run` sets it from
    /// `--database-url`.
    #[serde(skip)]
    pub database_url: Option<SecretUrl>,
}

/// A database URL whose `Debug` hides the password.
#[derive(Clone)]
pub struct SecretUrl(pub String);

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&egress_ledger::error::redact_url(&self.0))
    }
}

fn d_command() -> Duration {
    Duration::from_secs(5)
}
fn d_drain() -> Duration {
    Duration::from_secs(60)
}
fn d_poll() -> Duration {
    Duration::from_millis(500)
}
fn d_restart() -> Duration {
    Duration::from_secs(180)
}
fn d_verify() -> Duration {
    Duration::from_secs(60)
}
fn d_lock() -> i64 {
    DEFAULT_LOCK_KEY
}
fn d_min_healthy() -> usize {
    1
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// `[rotation.executor]`: how the location changes and the backend restarts.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum ExecutorConfig {
    /// Run `program args... <backend> <server> <location>`; exit 0 once the backend has restarted
    /// in that location (systemd, docker, a script). Its stdin is closed; stdout/stderr are logged.
    Command {
        /// The program (absolute path, or found in PATH).
        program: PathBuf,
        /// Arguments before the three positional ones.
        #[serde(default)]
        args: Vec<String>,
    },
}

impl RotationConfig {
    /// Every problem, in words an operator can act on.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.instances.is_empty() {
            p.push("rotation.instances: list every HAProxy admin socket (unix:/path or tcp:ip:port)".into());
        }
        for (i, a) in self.instances.iter().enumerate() {
            if let Err(e) = RuntimeApiAddr::parse(a) {
                p.push(format!("rotation.instances[{i}]: {e}"));
            }
        }
        for (name, d) in [
            ("rotation.command_timeout", self.command_timeout),
            ("rotation.drain_deadline", self.drain_deadline),
            ("rotation.poll_interval", self.poll_interval),
            ("rotation.restart_timeout", self.restart_timeout),
            ("rotation.verify_timeout", self.verify_timeout),
        ] {
            if d.is_zero() {
                p.push(format!("{name} must be greater than 0"));
            }
        }
        if self.quarantined_for.is_some_and(|d| d.is_zero()) {
            p.push(
                "rotation.quarantined_for must be greater than 0 (or absent to turn self-healing off)".into(),
            );
        }
        match &self.executor {
            ExecutorConfig::Command { program, .. } => {
                if program.as_os_str().is_empty() {
                    p.push("rotation.executor.program must not be empty".into());
                }
            }
        }
        if self.locations.is_empty() {
            p.push("rotation.locations: list the locations of at least one server (\"backend/server\" = [\"loc-a\", \"loc-b\"])".into());
        }
        for (key, list) in &self.locations {
            match key.split_once('/') {
                Some((b, s)) if valid_name(b) && valid_name(s) => {}
                _ => p.push(format!("rotation.locations: {key:?} is not backend/server")),
            }
            if list.is_empty() {
                p.push(format!(
                    "rotation.locations.\"{key}\" is empty: a server needs at least one location to rotate to"
                ));
            }
            for l in list {
                if l.is_empty() || l.len() > 256 || l.chars().any(char::is_control) {
                    p.push(format!("rotation.locations.\"{key}\": {l:?} is not a usable location (1-256 printable characters)"));
                }
            }
        }
        p
    }

    /// The parsed instance addresses (valid after [`problems`](Self::problems) is empty).
    pub fn instance_addrs(&self) -> Result<Vec<RuntimeApiAddr>, String> {
        self.instances.iter().map(|a| RuntimeApiAddr::parse(a)).collect()
    }

    /// The locations of `backend/server`.
    pub fn locations_of(&self, backend: &str, server: &str) -> Option<&[String]> {
        self.locations
            .get(&format!("{backend}/{server}"))
            .map(Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};

    const BASE: &str = r#"
        [[targets]]
        address = "127.0.0.1:443"
        [[backends.servers]]
        backend = "egress"
        name = "s1"
        address = "127.0.0.1:3128"
    "#;

    fn load(extra: &str) -> Result<Config, ConfigError> {
        Config::from_toml_with_env(&format!("{BASE}\n{extra}"), Vec::new())
    }

    #[test]
    fn a_full_section_parses_with_defaults() {
        let c = load(
            r#"
            [rotation]
            instances = ["unix:/run/haproxy/admin.sock", "tcp:10.0.0.2:9999"]
            drain_deadline = "30s"
            quarantined_for = "10m"
            [rotation.executor]
            kind = "command"
            program = "/usr/local/bin/rotate-backend"
            [rotation.locations]
            "egress/s1" = ["de-fra", "nl-ams"]
        "#,
        )
        .unwrap();
        let r = c.rotation.unwrap();
        assert_eq!(r.instances.len(), 2);
        assert_eq!(r.drain_deadline.as_secs(), 30);
        assert_eq!(r.verify_timeout.as_secs(), 60);
        assert_eq!(r.quarantined_for.unwrap().as_secs(), 600);
        assert_eq!(r.locations_of("egress", "s1").unwrap(), ["de-fra", "nl-ams"]);
    }

    #[test]
    fn an_empty_location_list_is_a_clear_error() {
        let e = load(
            r#"
            [rotation]
            instances = []
            drain_deadline = "0s"
            [rotation.executor]
            kind = "command"
            program = "/bin/true"
            [rotation.locations]
            "egress/s1" = []
            "nobackend" = ["x"]
        "#,
        )
        .unwrap_err()
        .to_string();
        for needle in [
            "rotation.locations.\"egress/s1\" is empty",
            "\"nobackend\" is not backend/server",
            "rotation.instances",
            "rotation.drain_deadline",
        ] {
            assert!(e.contains(needle), "missing {needle} in {e}");
        }
    }

    #[test]
    fn unknown_executor_kinds_are_refused() {
        let e = load(
            r#"
            [rotation]
            instances = ["unix:/x"]
            [rotation.executor]
            kind = "teleport"
            [rotation.locations]
            "egress/s1" = ["a"]
        "#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("teleport"), "{e}");
    }
}
