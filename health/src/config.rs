//! The probe service's configuration (every section of `checker.toml` but `[rotation]`), validated
//! as a whole so `--check-config` lists every problem at once. Layering (the file, then
//! `EGRESS_CHECKER_<SECTION>__<KEY>` environment overrides) is the binary's job.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use egress_haproxy_api::{RuntimeApiAddr, split_host_port, valid_name};
use serde::Deserialize;

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The TOML (after env overrides) does not match the schema.
    #[error("invalid configuration: {0}")]
    Parse(String),
    /// Values that parse but make no sense; one line per problem.
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// The whole configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Probe timing and bounds.
    #[serde(default)]
    pub probe: ProbeConfig,
    /// CONNECT targets, used round-robin per probe.
    #[serde(default)]
    pub targets: Vec<TargetConfig>,
    /// The exit-IP check; off when absent.
    #[serde(default)]
    pub exit_ip: Option<ExitIpConfig>,
    /// Quarantine decisions.
    #[serde(default)]
    pub decision: DecisionConfig,
    /// The direct-path control probe.
    #[serde(default)]
    pub control: ControlConfig,
    /// The agent-check responder.
    #[serde(default)]
    pub agent: AgentConfig,
    /// TLS trust.
    #[serde(default)]
    pub tls: TlsConfig,
    /// Where the backend list comes from.
    #[serde(default)]
    pub backends: BackendsConfig,
}

/// `[probe]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeConfig {
    /// Time between probes of one server (fixed rate).
    #[serde(with = "egress_common::duration")]
    pub interval: Duration,
    /// Each interval is scaled by a random factor in `[1 - jitter, 1 + jitter]`.
    pub jitter: f64,
    /// TCP connect to the backend.
    #[serde(with = "egress_common::duration")]
    pub connect_timeout: Duration,
    /// From sending CONNECT to a complete response head.
    #[serde(with = "egress_common::duration")]
    pub response_timeout: Duration,
    /// The TLS handshake through the tunnel.
    #[serde(with = "egress_common::duration")]
    pub tls_timeout: Duration,
    /// Largest CONNECT response head accepted.
    pub max_response_head: usize,
    /// Most probes in flight at once (sockets).
    pub max_concurrency: usize,
    /// Global probe rate limit, probes per second.
    pub max_rate: u32,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            // 5 failures at ~500 ms plus a 500 ms agent-inter stay under the 4 s target; every step
            // deadline is below the interval so a black hole is detected at the same pace.
            interval: Duration::from_millis(500),
            jitter: 0.1,
            connect_timeout: Duration::from_millis(300),
            response_timeout: Duration::from_millis(400),
            tls_timeout: Duration::from_millis(500),
            max_response_head: 8 * 1024,
            max_concurrency: 1024,
            max_rate: 20_000,
        }
    }
}

/// `[[targets]]`: a destination reached through each backend.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// `host:port` sent in the CONNECT line and dialled by the control probe.
    pub address: String,
    /// Do a verified TLS handshake through the tunnel.
    #[serde(default)]
    pub tls: bool,
    /// TLS name (SNI and verification); default: the host part of `address`.
    #[serde(default)]
    pub server_name: Option<String>,
}

/// `[exit_ip]`: the IP-echo endpoint.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitIpConfig {
    /// `host:port` of the echo service.
    pub address: String,
    /// Speak HTTPS to it.
    #[serde(default)]
    pub tls: bool,
    /// Host header and TLS name; default: the host part of `address`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Request path, e.g. `/` or `/?format=json`.
    #[serde(default = "default_path")]
    pub path: String,
    /// How often each backend's exit IP is checked (also after every restore).
    #[serde(default = "default_exit_interval", with = "egress_common::duration")]
    pub interval: Duration,
    /// Deadline for the whole echo exchange after the tunnel is open.
    #[serde(default = "default_exit_timeout", with = "egress_common::duration")]
    pub timeout: Duration,
}

fn default_path() -> String {
    "/".into()
}
fn default_exit_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_exit_timeout() -> Duration {
    Duration::from_secs(1)
}

/// `[decision]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecisionConfig {
    /// Consecutive failures that quarantine.
    pub quarantine_after: u32,
    /// Consecutive successes that restore.
    pub restore_after: u32,
    /// Slow-start window after a restore.
    #[serde(with = "egress_common::duration")]
    pub ramp: Duration,
    /// Weight (percent of the configured weight) at the start of the ramp.
    pub ramp_start_percent: u8,
    /// Never more than this share of the pool quarantined at once (0.0-1.0).
    pub max_quarantined_share: f64,
}

impl Default for DecisionConfig {
    fn default() -> Self {
        DecisionConfig {
            quarantine_after: 5,
            restore_after: 1,
            ramp: Duration::from_secs(10),
            ramp_start_percent: 10,
            max_quarantined_share: 0.5,
        }
    }
}

/// `[control]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// How long a control result is reused.
    #[serde(with = "egress_common::duration")]
    pub ttl: Duration,
    /// Deadline of the direct probe.
    #[serde(with = "egress_common::duration")]
    pub timeout: Duration,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            ttl: Duration::from_secs(2),
            timeout: Duration::from_millis(800),
        }
    }
}

/// `[agent]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Deadline to receive the `agent-send` line.
    #[serde(with = "egress_common::duration")]
    pub read_timeout: Duration,
    /// Most agent connections served at once.
    pub max_connections: usize,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            read_timeout: Duration::from_secs(1),
            max_connections: 1024,
        }
    }
}

/// `[tls]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM CA bundle; default: the webpki roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// `[backends]`: either HAProxy's runtime API (preferred: one source of truth) or a static list.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendsConfig {
    /// `unix:/path/to/admin.sock` or `tcp:127.0.0.1:9999`.
    pub runtime_api: Option<String>,
    /// HAProxy backends whose servers are probed (with `runtime_api`).
    pub names: Vec<String>,
    /// How often the server list is re-read from the runtime API.
    #[serde(with = "egress_common::duration")]
    pub refresh: Duration,
    /// Static servers, when there is no runtime API.
    pub servers: Vec<StaticServer>,
}

impl Default for BackendsConfig {
    fn default() -> Self {
        BackendsConfig {
            runtime_api: None,
            names: Vec::new(),
            refresh: Duration::from_secs(10),
            servers: Vec::new(),
        }
    }
}

/// `[[backends.servers]]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticServer {
    /// HAProxy backend name.
    pub backend: String,
    /// HAProxy server name.
    pub name: String,
    /// The proxy's `ip:port`.
    pub address: SocketAddr,
}

impl Config {
    /// Parse TOML `text` and validate (the binary layers files and the environment first, then calls
    /// [`Config::from_table`]).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        config.validated()
    }

    /// `self`, or every problem with it.
    pub fn validated(self) -> Result<Config, ConfigError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(self)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Every problem with this configuration, in words an operator can act on.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let pr = &self.probe;
        for (name, d) in [
            ("probe.interval", pr.interval),
            ("probe.connect_timeout", pr.connect_timeout),
            ("probe.response_timeout", pr.response_timeout),
            ("probe.tls_timeout", pr.tls_timeout),
            ("control.ttl", self.control.ttl),
            ("control.timeout", self.control.timeout),
            ("agent.read_timeout", self.agent.read_timeout),
        ] {
            if d.is_zero() {
                p.push(format!("{name} must be greater than 0"));
            }
        }
        if !(0.0..=0.5).contains(&pr.jitter) {
            p.push(format!(
                "probe.jitter must be between 0.0 and 0.5, got {}",
                pr.jitter
            ));
        }
        if pr.max_response_head < 64 || pr.max_response_head > 1 << 20 {
            p.push(format!(
                "probe.max_response_head must be between 64 and 1048576, got {}",
                pr.max_response_head
            ));
        }
        if pr.max_concurrency == 0 {
            p.push("probe.max_concurrency must be at least 1".into());
        }
        if pr.max_rate == 0 {
            p.push("probe.max_rate must be at least 1 probe per second".into());
        }
        if self.targets.is_empty() {
            p.push("no [[targets]]: at least one CONNECT target is needed (several, so one target's outage is not a backend's)".into());
        }
        for (i, t) in self.targets.iter().enumerate() {
            if let Err(e) = split_host_port(&t.address) {
                p.push(format!("targets[{i}].address: {e}"));
            }
            if let Some(name) = t.server_name.as_deref()
                && rustls::pki_types::ServerName::try_from(name.to_owned()).is_err()
            {
                p.push(format!(
                    "targets[{i}].server_name {name:?} is not a valid TLS name"
                ));
            }
        }
        if let Some(e) = &self.exit_ip {
            if let Err(err) = split_host_port(&e.address) {
                p.push(format!("exit_ip.address: {err}"));
            }
            if !e.path.starts_with('/') || e.path.bytes().any(|b| b <= b' ' || b == 0x7f) {
                p.push(format!(
                    "exit_ip.path must start with / and contain no spaces or controls, got {:?}",
                    e.path
                ));
            }
            if e.interval.is_zero() || e.timeout.is_zero() {
                p.push("exit_ip.interval and exit_ip.timeout must be greater than 0".into());
            }
        }
        let d = &self.decision;
        if d.quarantine_after == 0 {
            p.push("decision.quarantine_after must be at least 1".into());
        }
        if d.restore_after == 0 {
            p.push("decision.restore_after must be at least 1".into());
        }
        if !(1..=100).contains(&d.ramp_start_percent) {
            p.push(format!(
                "decision.ramp_start_percent must be 1-100, got {}",
                d.ramp_start_percent
            ));
        }
        if !(0.0..=1.0).contains(&d.max_quarantined_share) {
            p.push(format!(
                "decision.max_quarantined_share must be between 0.0 and 1.0, got {}",
                d.max_quarantined_share
            ));
        }
        if self.agent.max_connections == 0 {
            p.push("agent.max_connections must be at least 1".into());
        }
        if let Some(ca) = &self.tls.ca_file
            && !ca.is_file()
        {
            p.push(format!(
                "tls.ca_file {} does not exist or is not a file",
                ca.display()
            ));
        }
        let b = &self.backends;
        match (&b.runtime_api, b.servers.is_empty()) {
            (Some(_), false) => p.push(
                "backends: set either runtime_api (HAProxy is the source of truth) or [[backends.servers]], not both".into(),
            ),
            (None, true) => p.push("backends: set runtime_api (with names) or list [[backends.servers]]".into()),
            (Some(api), true) => {
                if let Err(e) = RuntimeApiAddr::parse(api) {
                    p.push(format!("backends.runtime_api: {e}"));
                }
                if b.names.is_empty() {
                    p.push("backends.names: list the HAProxy backends whose servers are probed".into());
                }
                if b.refresh.is_zero() {
                    p.push("backends.refresh must be greater than 0".into());
                }
            }
            (None, false) => {
                let mut seen = std::collections::HashSet::new();
                for s in &b.servers {
                    if !valid_name(&s.backend) || !valid_name(&s.name) {
                        p.push(format!("backends.servers: {:?}/{:?} is not a valid HAProxy name", s.backend, s.name));
                    }
                    if !seen.insert((s.backend.as_str(), s.name.as_str())) {
                        p.push(format!("backends.servers: {}/{} is listed twice", s.backend, s.name));
                    }
                }
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
        [[targets]]
        address = "127.0.0.1:443"
        [[backends.servers]]
        backend = "egress"
        name = "s1"
        address = "127.0.0.1:3128"
    "#;

    #[test]
    fn defaults_fill_a_minimal_file() {
        let c = Config::from_toml(MIN).unwrap();
        assert_eq!(c.probe.interval, Duration::from_millis(500));
        assert_eq!(c.decision.quarantine_after, 5);
        assert_eq!(c.backends.servers.len(), 1);
    }

    #[test]
    fn lists_every_problem() {
        let text = r#"
            [probe]
            interval = "0s"
            jitter = 0.9
            [decision]
            quarantine_after = 0
            max_quarantined_share = 1.5
            [[targets]]
            address = "no-port"
        "#;
        let Err(ConfigError::Invalid(p)) = Config::from_toml(text) else {
            panic!("expected Invalid");
        };
        let all = p.join("\n");
        for needle in [
            "probe.interval",
            "probe.jitter",
            "quarantine_after",
            "max_quarantined_share",
            "targets[0]",
            "backends:",
        ] {
            assert!(all.contains(needle), "missing {needle} in {all}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_durations_are_named() {
        let e = Config::from_toml("[probe]\nintervl = \"1s\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("intervl"), "{e}");
        let e = Config::from_toml("[probe]\ninterval = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("soon"), "{e}");
    }
}
