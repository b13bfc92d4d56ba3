//! `[rotation]`: where HAProxy's runtime API is, how long each step may take, how a backend is
//! restarted in another location, and when the checker rotates a quarantined server by itself.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use egress_haproxy_api::{AddrError, RuntimeApiAddr, valid_name};

/// The advisory-lock key shared by every rotator of the fleet (`pg_try_advisory_lock`): "egrsrot1".
pub const DEFAULT_LOCK_KEY: i64 = 0x6567_7273_726f_7431;

/// `[rotation]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotationConfig {
    /// Every HAProxy instance's admin socket (`unix:/path` or `tcp:ip:port`): a rotation drains the
    /// server on all of them and stops before changing anything if one cannot be reached. With
    /// `[rotation.discovery]`, the discovered replicas are added to these (which may then be empty).
    #[serde(default)]
    pub instances: Vec<String>,
    /// Find the HAProxy replicas on Kubernetes at every rotation: `[rotation.discovery]`.
    #[serde(default)]
    pub discovery: Option<DiscoveryConfig>,
    /// Deadline of one runtime-API command.
    #[serde(default = "d_command", with = "egress_common::duration")]
    pub command_timeout: Duration,
    /// How long to wait for the server's sessions to reach 0 before `shutdown sessions`.
    #[serde(default = "d_drain", with = "egress_common::duration")]
    pub drain_deadline: Duration,
    /// How often `scur` is polled while draining.
    #[serde(default = "d_poll", with = "egress_common::duration")]
    pub poll_interval: Duration,
    /// Deadline of the executor (change location + restart + ready).
    #[serde(default = "d_restart", with = "egress_common::duration")]
    pub restart_timeout: Duration,
    /// Deadline for the restarted backend to pass a probe and show a new exit IP.
    #[serde(default = "d_verify", with = "egress_common::duration")]
    pub verify_timeout: Duration,
    /// Postgres advisory-lock key: one rotation at a time across the fleet.
    #[serde(default = "d_lock")]
    pub lock_key: i64,
    /// Self-healing: `egress-checker run` rotates a server quarantined longer than this. Off when absent.
    #[serde(default, with = "egress_common::duration::option")]
    pub quarantined_for: Option<Duration>,
    /// Self-healing never rotates while fewer than this many servers are healthy.
    #[serde(default = "d_min_healthy")]
    pub min_healthy: usize,
    /// Restarts a rotation may make before it fails on the same exit IP: the locations in order,
    /// and when they run out, again from the first (a restart in the same location usually lands
    /// on another VPN server of it: a server with one location gets this many tries).
    #[serde(default = "d_restart_attempts")]
    pub restart_attempts: usize,
    /// How a backend gets its new location and restarts.
    pub executor: ExecutorConfig,
    /// Per server (`backend/server`), the locations it rotates through, in order.
    pub locations: BTreeMap<String, Vec<String>>,
}

/// `[rotation.discovery]`: the HAProxy replicas are the pods matching `selector` in `namespace`,
/// each with its runtime API on `tcp:<pod IP>:<port>`; read from the Kubernetes API at every
/// rotation (and every self-healing round). A rotation refuses to start while a matching pod is not
/// Ready (its HAProxy would keep the old state).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// Label selector of the HAProxy pods, e.g. `app.kubernetes.io/name=haproxy-egress`.
    pub selector: String,
    /// The runtime API's TCP port in each pod (`stats socket ipv4@0.0.0.0:<port> level admin`).
    pub port: u16,
    /// The pods' namespace; default: the service account's namespace in a pod, else the
    /// kubeconfig context's.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The API server (`http(s)://host:port`), without credentials; default: in-cluster, else the
    /// kubeconfig. For tests and `kubectl proxy`.
    #[serde(default)]
    pub api_url: Option<String>,
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
fn d_restart_attempts() -> usize {
    3
}
fn d_min_healthy() -> usize {
    1
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
    /// Patch the server's Deployment (the location into one env variable of its container, the
    /// restart annotation of its pod template to now) and wait until the new pod is Ready. The
    /// Deployment must use `strategy: Recreate`: two pods of one backend must never hold two tunnels.
    Kubernetes(KubernetesExecutorConfig),
    /// Through gluetun's own control server (`PUT /v1/vpn/settings`): the location becomes the
    /// server selection (`field`: SERVER_HOSTNAMES' `hostnames` by default) and gluetun reconnects
    /// the tunnel in place, no container restart. Works wherever gluetun runs (compose, VMs,
    /// Kubernetes).
    Gluetun(GluetunExecutorConfig),
}

/// `[rotation.executor] kind = "gluetun"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GluetunExecutorConfig {
    /// The control server of `backend/server`: `{backend}` and `{server}` are replaced, e.g.
    /// `http://gluetun-{server}:8000` (compose) or `http://egress-{server}:8000` (a Service).
    pub control_url: String,
    /// A file holding the API key of a gluetun role allowed `PUT /v1/vpn/settings`
    /// (HTTP_CONTROL_SERVER_AUTH_CONFIG_FILEPATH, `auth = "apikey"`); sent as `X-API-Key`.
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// The server-selection field the location goes into: `hostnames` (SERVER_HOSTNAMES),
    /// `cities`, `countries` or `names`.
    #[serde(default = "d_gluetun_field")]
    pub field: String,
}

fn d_gluetun_field() -> String {
    "hostnames".into()
}

impl GluetunExecutorConfig {
    /// Every problem, in words an operator can act on.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !(self.control_url.starts_with("http://") || self.control_url.starts_with("https://")) {
            p.push("rotation.executor.control_url: an http:// URL of gluetun's control server, e.g. http://gluetun-{server}:8000".into());
        }
        if !["hostnames", "cities", "countries", "names"].contains(&self.field.as_str()) {
            p.push("rotation.executor.field: one of hostnames, cities, countries, names".into());
        }
        if let Some(f) = &self.api_key_file
            && std::fs::metadata(f).is_err()
        {
            p.push(format!(
                "rotation.executor.api_key_file: cannot read {}",
                f.display()
            ));
        }
        p
    }
}

/// `[rotation.executor] kind = "kubernetes"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesExecutorConfig {
    /// The namespace of the Deployments; default: the service account's namespace in a pod, else
    /// the kubeconfig context's.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The Deployment of `backend/server`: `{backend}` and `{server}` are replaced.
    #[serde(default = "d_deployment")]
    pub deployment: String,
    /// Explicit Deployment names per `backend/server`, over the template.
    #[serde(default)]
    pub deployments: BTreeMap<String, String>,
    /// The container whose env is set; default: the pod template's first container.
    #[serde(default)]
    pub container: Option<String>,
    /// The env variable that receives the location.
    #[serde(default = "d_env")]
    pub env: String,
    /// Per `backend/server`, another variable than `env` (e.g. SERVER_HOSTNAMES for the servers
    /// whose locations are VPN server hostnames: haproxy/pool.txt).
    #[serde(default)]
    pub envs: BTreeMap<String, String>,
    /// The pod-template annotation set to the time of the restart (what `kubectl rollout restart`
    /// does with `kubectl.kubernetes.io/restartedAt`); it also marks the new pod.
    #[serde(default = "d_annotation")]
    pub restart_annotation: String,
    /// How often the Deployment and its pods are read while waiting for the new pod.
    #[serde(default = "d_k8s_poll", with = "egress_common::duration")]
    pub poll_interval: Duration,
    /// The API server (`http(s)://host:port`), without credentials; default: the in-cluster service
    /// account, else the kubeconfig (`KUBECONFIG`, `~/.kube/config`). For tests and `kubectl proxy`.
    #[serde(default)]
    pub api_url: Option<String>,
}

fn d_deployment() -> String {
    "egress-{server}".into()
}
fn d_env() -> String {
    "SERVER_HOSTNAMES".into()
}
fn d_annotation() -> String {
    "egress.haproxy-egress.io/restartedAt".into()
}
fn d_k8s_poll() -> Duration {
    Duration::from_secs(2)
}

impl KubernetesExecutorConfig {
    /// The env variable that receives `backend/server`'s location.
    pub fn env_of(&self, backend: &str, server: &str) -> &str {
        self.envs
            .get(&format!("{backend}/{server}"))
            .map_or(self.env.as_str(), String::as_str)
    }

    /// The Deployment name of `backend/server`.
    pub fn deployment_of(&self, backend: &str, server: &str) -> String {
        match self.deployments.get(&format!("{backend}/{server}")) {
            Some(name) => name.clone(),
            None => self
                .deployment
                .replace("{backend}", backend)
                .replace("{server}", server),
        }
    }

    /// Every problem of the section; `servers` are the `backend/server` keys that rotate.
    pub fn problems<'a>(&'a self, servers: impl Iterator<Item = &'a String>) -> Vec<String> {
        let mut p = Vec::new();
        let k = "rotation.executor";
        if let Some(ns) = &self.namespace
            && !is_dns_label(ns)
        {
            p.push(format!(
                "{k}.namespace {ns:?} is not a namespace name (lowercase letters, digits, '-', at most 63)"
            ));
        }
        if !is_env_name(&self.env) {
            p.push(format!(
                "{k}.env {:?} is not an environment variable name (letters, digits, '_', not starting with a digit)",
                self.env
            ));
        }
        if let Some(c) = &self.container
            && !is_dns_label(c)
        {
            p.push(format!("{k}.container {c:?} is not a container name"));
        }
        if !is_annotation_key(&self.restart_annotation) {
            p.push(format!(
                "{k}.restart_annotation {:?} is not an annotation key ([prefix/]name, e.g. example.com/restartedAt)",
                self.restart_annotation
            ));
        }
        if self.poll_interval.is_zero() {
            p.push(format!("{k}.poll_interval must be greater than 0"));
        }
        if let Some(url) = &self.api_url {
            match url.parse::<http::Uri>() {
                Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {}
                _ => p.push(format!("{k}.api_url {url:?} is not an http(s)://host:port URL")),
            }
        }
        for key in self.deployments.keys() {
            if !key
                .split_once('/')
                .is_some_and(|(b, s)| valid_name(b) && valid_name(s))
            {
                p.push(format!("{k}.deployments: {key:?} is not backend/server"));
            }
        }
        for key in servers.chain(self.deployments.keys()) {
            if let Some((b, s)) = key.split_once('/') {
                let name = self.deployment_of(b, s);
                if !is_dns_subdomain(&name) {
                    p.push(format!(
                        "{k}: the Deployment name of {key} would be {name:?}, not a Kubernetes name (lowercase letters, digits, '-', '.'); set {k}.deployments.\"{key}\""
                    ));
                }
            }
        }
        p
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn is_annotation_key(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    prefix.is_none_or(is_dns_subdomain)
        && !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

impl RotationConfig {
    /// Every problem, in words an operator can act on.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !cfg!(feature = "kubernetes") {
            if self.discovery.is_some() {
                p.push("rotation.discovery needs the Kubernetes client: this egress-checker was built without the `kubernetes` feature".into());
            }
            if matches!(self.executor, ExecutorConfig::Kubernetes(_)) {
                p.push("rotation.executor kind = \"kubernetes\" needs the Kubernetes client: this egress-checker was built without the `kubernetes` feature".into());
            }
        }
        if self.instances.is_empty() && self.discovery.is_none() {
            p.push("rotation.instances: list every HAProxy admin socket (unix:/path or tcp:ip:port), or configure [rotation.discovery]".into());
        }
        if let Some(d) = &self.discovery {
            if d.selector.trim().is_empty() || d.selector.chars().any(char::is_whitespace) {
                p.push("rotation.discovery.selector: a label selector such as app.kubernetes.io/name=haproxy-egress".into());
            }
            if d.port == 0 {
                p.push("rotation.discovery.port: the runtime API's TCP port in each HAProxy pod".into());
            }
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
        if self.restart_attempts == 0 {
            p.push("rotation.restart_attempts must be at least 1".into());
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
            ExecutorConfig::Kubernetes(k) => p.extend(k.problems(self.locations.keys())),
            ExecutorConfig::Gluetun(g) => p.extend(g.problems()),
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
    pub fn instance_addrs(&self) -> Result<Vec<RuntimeApiAddr>, AddrError> {
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
    use super::RotationConfig;

    /// The `[rotation]` section of a checker.toml, validated as the binary does.
    #[derive(Debug, serde::Deserialize)]
    struct File {
        rotation: Option<RotationConfig>,
    }

    const BASE: &str = r#"
        [[targets]]
        address = "127.0.0.1:443"
        [[backends.servers]]
        backend = "egress"
        name = "s1"
        address = "127.0.0.1:3128"
    "#;

    /// Why [`load`] refused a configuration.
    #[derive(Debug, thiserror::Error)]
    enum LoadError {
        #[error(transparent)]
        Toml(#[from] toml::de::Error),
        #[error("{}", .0.join("\n"))]
        Problems(Vec<String>),
    }

    fn load(extra: &str) -> Result<File, LoadError> {
        let f: File = toml::from_str(&format!("{BASE}\n{extra}"))?;
        let problems = f
            .rotation
            .as_ref()
            .map(RotationConfig::problems)
            .unwrap_or_default();
        if problems.is_empty() {
            Ok(f)
        } else {
            Err(LoadError::Problems(problems))
        }
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

    #[test]
    fn the_kubernetes_executor_parses_with_defaults() {
        let c = load(
            r#"
            [rotation]
            instances = ["tcp:10.0.0.2:9999"]
            [rotation.executor]
            kind = "kubernetes"
            namespace = "egress"
            [rotation.executor.deployments]
            "egress/s1" = "vpn-one"
            [rotation.locations]
            "egress/s1" = ["de-fra", "nl-ams"]
        "#,
        )
        .unwrap();
        let super::ExecutorConfig::Kubernetes(k) = c.rotation.unwrap().executor else {
            panic!("not kubernetes");
        };
        assert_eq!(k.env, "SERVER_HOSTNAMES");
        assert_eq!(k.restart_annotation, "egress.haproxy-egress.io/restartedAt");
        assert_eq!(k.deployment_of("egress", "s1"), "vpn-one");
        assert_eq!(k.deployment_of("egress", "s2"), "egress-s2");
        assert_eq!(k.poll_interval.as_secs(), 2);
        assert!(k.container.is_none() && k.api_url.is_none());
    }

    #[test]
    fn bad_kubernetes_settings_are_named() {
        let e = load(
            r#"
            [rotation]
            instances = ["tcp:10.0.0.2:9999"]
            [rotation.executor]
            kind = "kubernetes"
            namespace = "Egress"
            deployment = "{backend}-{server}"
            env = "1BAD"
            container = "Gluetun"
            restart_annotation = "/x"
            poll_interval = "0s"
            api_url = "ftp://x"
            [rotation.locations]
            "egress_kr/s1" = ["kr"]
        "#,
        )
        .unwrap_err()
        .to_string();
        for needle in [
            "rotation.executor.namespace \"Egress\"",
            "rotation.executor.env \"1BAD\"",
            "rotation.executor.container \"Gluetun\"",
            "rotation.executor.restart_annotation \"/x\"",
            "rotation.executor.poll_interval",
            "rotation.executor.api_url \"ftp://x\"",
            "the Deployment name of egress_kr/s1 would be \"egress_kr-s1\"",
        ] {
            assert!(e.contains(needle), "missing {needle} in {e}");
        }
    }
}
