//! `checker.toml`, layered: the file, then `EGRESS_CHECKER_<SECTION>__<KEY>[__<KEY>...]` environment
//! overrides at any depth (`EGRESS_CHECKER_ROTATION__EXECUTOR__PROGRAM=/usr/local/bin/rotate`), with
//! values typed as figment reads them (`3` a number, `true` a bool, `[\"a\", \"b\"]` an array, anything
//! else a string). Then each concern's section is checked by its own crate (the probe service's
//! sections by egress-health, `[rotation]` by egress-rotate) and every problem is listed at once.

use std::path::Path;

use egress_health::config::ConfigError;
use egress_rotate::config::RotationConfig;
use figment::Figment;
use figment::providers::{Env, Serialized};
use figment::value::{Dict, Value};

/// Prefix of the environment overrides. Only names with `__` after it are config keys: the CLI's own
/// variables (`EGRESS_CHECKER_CONFIG`, `EGRESS_CHECKER_AGENT_LISTEN`, ...) share the prefix.
pub const ENV_PREFIX: &str = "EGRESS_CHECKER_";

/// The whole file.
#[derive(Clone, Debug)]
pub struct Config {
    /// Every section but `[rotation]`: probes, targets, decisions, the agent, backends.
    pub health: egress_health::Config,
    /// `[rotation]`: drain-rotate and self-healing; off when absent.
    pub rotation: Option<RotationConfig>,
}

impl Config {
    /// Read `path`, apply the environment's overrides, validate.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml(&text)
    }

    /// Parse TOML `text`, apply the process environment's overrides, validate.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        let env = Env::prefixed(ENV_PREFIX)
            .filter(|k| k.as_str().contains("__"))
            .split("__");
        let mut all: Dict = Figment::from(Serialized::defaults(table))
            .merge(env)
            .extract()
            .map_err(|e| ConfigError::Parse(e.to_string()))?;
        let rotation: Option<RotationConfig> = all
            .remove("rotation")
            .map(|v| {
                v.deserialize()
                    .map_err(|e| ConfigError::Parse(format!("[rotation]: {e}")))
            })
            .transpose()?;
        let health: egress_health::Config = Value::from(all)
            .deserialize()
            .map_err(|e| ConfigError::Parse(e.to_string()))?;
        let mut problems = health.problems();
        if let Some(r) = &rotation {
            problems.extend(r.problems());
        }
        if problems.is_empty() {
            Ok(Config { health, rotation })
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
mod tests {
    use std::time::Duration;

    use figment::Jail;

    use super::*;

    const MIN: &str = r#"
        [[targets]]
        address = "127.0.0.1:443"
        [[backends.servers]]
        backend = "egress"
        name = "s1"
        address = "127.0.0.1:3128"
    "#;

    const ROTATION: &str = r#"
        [rotation]
        instances = ["unix:/run/haproxy/admin.sock"]
        [rotation.executor]
        kind = "command"
        program = "/usr/local/bin/rotate-backend"
        [rotation.locations]
        "egress/s1" = ["de-fra", "nl-ams"]
    "#;

    #[test]
    fn env_overrides_win_and_are_typed() {
        Jail::expect_with(|jail| {
            jail.set_env("EGRESS_CHECKER_PROBE__INTERVAL", "700ms");
            jail.set_env("EGRESS_CHECKER_DECISION__QUARANTINE_AFTER", "3");
            jail.set_env("EGRESS_CHECKER_AGENT_LISTEN", "127.0.0.1:1"); // a CLI variable, not a key
            jail.set_env("OTHER__X", "1");
            let c = Config::from_toml(MIN).unwrap();
            assert_eq!(c.health.probe.interval, Duration::from_millis(700));
            assert_eq!(c.health.decision.quarantine_after, 3);
            assert!(c.rotation.is_none());
            Ok(())
        });
    }

    #[test]
    fn nested_keys_and_arrays_are_overridden_from_the_environment() {
        Jail::expect_with(|jail| {
            jail.set_env("EGRESS_CHECKER_ROTATION__EXECUTOR__PROGRAM", "/opt/egress/rotate");
            jail.set_env(
                "EGRESS_CHECKER_ROTATION__INSTANCES",
                r#"["tcp:127.0.0.1:9999", "unix:/run/h.sock"]"#,
            );
            jail.set_env("EGRESS_CHECKER_BACKENDS__NAMES", r#"["egress"]"#);
            let c = Config::from_toml(&format!("{MIN}\n{ROTATION}")).unwrap();
            let r = c.rotation.unwrap();
            let egress_rotate::config::ExecutorConfig::Command { program, .. } = &r.executor else {
                panic!("not the command executor: {:?}", r.executor);
            };
            assert_eq!(program, Path::new("/opt/egress/rotate"));
            assert_eq!(r.instances, ["tcp:127.0.0.1:9999", "unix:/run/h.sock"]);
            assert_eq!(c.health.backends.names, ["egress"]);
            Ok(())
        });
    }

    #[test]
    fn problems_of_every_section_are_listed_together() {
        Jail::expect_with(|jail| {
            jail.set_env("EGRESS_CHECKER_PROBE__JITTER", "0.9");
            jail.set_env("EGRESS_CHECKER_ROTATION__DRAIN_DEADLINE", "0s");
            let e = Config::from_toml(&format!("{MIN}\n{ROTATION}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("probe.jitter"), "{e}");
            assert!(e.contains("rotation.drain_deadline"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_named_wherever_they_are() {
        // Every test that reads the configuration runs inside a Jail, even one that sets no
        // variable: the Jail's lock keeps the other tests' EGRESS_CHECKER_* variables (process-wide)
        // out of it. Outside one, this test once read another's [rotation] override and failed.
        Jail::expect_with(|_| {
            let e = Config::from_toml(&format!("{MIN}\n[probe]\nintervl = \"1s\"\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("intervl"), "{e}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("EGRESS_CHECKER_ROTATION__EXECUTOR__PROGRAMME", "/x");
            let e = Config::from_toml(&format!("{MIN}\n{ROTATION}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("programme"), "{e}");
            Ok(())
        });
    }
}
