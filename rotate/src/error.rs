//! The executors' and the Kubernetes client's errors. Each has a closed [`ExecutorErrorKind`], and
//! [`ExecutorError::is_unavailable`] separates a service that did not answer (exit 1, try again
//! later) from an executor or a Deployment that cannot work as configured (exit 2).

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use humantime::format_duration;

/// Why nothing Kubernetes can run in a build without the `kubernetes` feature.
pub const NOT_BUILT: &str = "this egress-checker was built without the `kubernetes` feature";

/// What kind of failure an [`ExecutorError`] is: a small closed set, usable as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExecutorErrorKind {
    /// The command executor's program could not be started or waited for.
    Spawn,
    /// The program exited unsuccessfully.
    Exit,
    /// The restart did not complete within `rotation.restart_timeout` (a program still running, a
    /// Deployment not ready, an API that did not answer).
    Timeout,
    /// The executor's own configuration cannot be used (a URL, the API key file, the Kubernetes
    /// client configuration, a build without the feature).
    Config,
    /// A request to gluetun's control server failed (connect, TLS, no answer).
    Http,
    /// gluetun's control server answered with an error status.
    Rejected,
    /// A Kubernetes API request failed or was refused.
    KubernetesApi,
    /// The Deployment does not allow the rotation (missing, strategy, container, env, selector).
    Deployment,
}

impl ExecutorErrorKind {
    /// The label: `spawn`, `exit`, `timeout`, `config`, `http`, `rejected`, `kubernetes_api`,
    /// `deployment`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Spawn => "spawn",
            Self::Exit => "exit",
            Self::Timeout => "timeout",
            Self::Config => "config",
            Self::Http => "http",
            Self::Rejected => "rejected",
            Self::KubernetesApi => "kubernetes_api",
            Self::Deployment => "deployment",
        }
    }
}

impl std::fmt::Display for ExecutorErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an executor's preflight or restart failed, in the executor's own words.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The program could not be started.
    #[error("cannot start {}: {source}", .program.display())]
    Spawn {
        /// The configured program.
        program: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Waiting for the program failed.
    #[error("waiting for {}: {source}", .program.display())]
    Wait {
        /// The configured program.
        program: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The program exited unsuccessfully.
    #[error("{} exited with {status}: {stderr_tail}", .program.display())]
    Exit {
        /// The configured program.
        program: PathBuf,
        /// Its exit status.
        status: ExitStatus,
        /// The last 400 characters of its stderr, trimmed.
        stderr_tail: String,
    },
    /// The program was still running at the deadline (it is killed).
    #[error("{} did not finish within {}", .program.display(), format_duration(*.within))]
    Timeout {
        /// The configured program.
        program: PathBuf,
        /// The deadline.
        within: Duration,
    },
    /// gluetun's control URL, for this server, is not a usable URL.
    #[error("rotation.executor.control_url for {server}: {reason}")]
    ControlUrl {
        /// `backend/server`.
        server: String,
        /// Why the URL was refused.
        reason: String,
    },
    /// gluetun's API key file could not be read.
    #[error("reading {}: {source}", .path.display())]
    ApiKeyFile {
        /// `rotation.executor.api_key_file`.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The request to gluetun's control server failed.
    #[error("gluetun control server of {server} ({url}): {reason}")]
    Http {
        /// `backend/server`.
        server: String,
        /// The URL, credentials removed.
        url: String,
        /// What the HTTP client reported.
        reason: String,
    },
    /// gluetun's control server answered with something other than 2xx.
    #[error("gluetun control server of {server} answered {status}: {body}")]
    Rejected {
        /// `backend/server`.
        server: String,
        /// The HTTP status.
        status: u16,
        /// The start of its answer, trimmed (gluetun says what it refused).
        body: String,
    },
    /// The kubernetes executor.
    #[error(transparent)]
    Kubernetes(#[from] KubernetesError),
}

impl ExecutorError {
    /// The closed kind, for exit codes and labels.
    pub fn kind(&self) -> ExecutorErrorKind {
        match self {
            Self::Spawn { .. } | Self::Wait { .. } => ExecutorErrorKind::Spawn,
            Self::Exit { .. } => ExecutorErrorKind::Exit,
            Self::Timeout { .. } => ExecutorErrorKind::Timeout,
            Self::ControlUrl { .. } | Self::ApiKeyFile { .. } => ExecutorErrorKind::Config,
            Self::Http { .. } => ExecutorErrorKind::Http,
            Self::Rejected { .. } => ExecutorErrorKind::Rejected,
            Self::Kubernetes(k) => k.kind(),
        }
    }

    /// True when a service the executor needs could not be reached, refused the request or did not
    /// answer in time: nothing is wrong with the input, and a later attempt may succeed.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self.kind(),
            ExecutorErrorKind::Http | ExecutorErrorKind::KubernetesApi | ExecutorErrorKind::Timeout
        )
    }
}

/// A Kubernetes API failure of the kubernetes executor or of `[rotation.discovery]`.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    /// No usable client: the API URL, the in-cluster service account or kubeconfig.
    #[error("{0}")]
    Config(String),
    /// A request failed: connect, TLS, or an error status (`<code> <reason> (<message>)`).
    #[error("{action}: {detail}")]
    Api {
        /// What was asked, e.g. `reading Deployment egress/egress-g01`.
        action: String,
        /// What the API (or the connection) said.
        detail: String,
    },
    /// The Deployment does not allow the rotation; nothing was changed.
    #[error("{0}")]
    Deployment(String),
    /// The rollout did not finish within the restart timeout.
    #[error("Deployment {deployment} was not ready within {}: {state}", format_duration(*.within))]
    NotReady {
        /// `namespace/name`.
        deployment: String,
        /// The restart timeout.
        within: Duration,
        /// What the last poll found missing.
        state: String,
    },
    /// The API did not answer before the restart timeout.
    #[error("the Kubernetes API did not answer within {}", format_duration(*.within))]
    Timeout {
        /// The restart timeout.
        within: Duration,
    },
    /// Built without the `kubernetes` feature.
    #[error("{}", NOT_BUILT)]
    NotBuilt,
}

impl KubernetesError {
    /// The closed kind, as an executor's.
    pub fn kind(&self) -> ExecutorErrorKind {
        match self {
            Self::Config(_) | Self::NotBuilt => ExecutorErrorKind::Config,
            Self::Api { .. } => ExecutorErrorKind::KubernetesApi,
            Self::Deployment(_) => ExecutorErrorKind::Deployment,
            Self::NotReady { .. } | Self::Timeout { .. } => ExecutorErrorKind::Timeout,
        }
    }
}

/// Why `[rotation.discovery]` found no HAProxy replicas to rotate on.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The Kubernetes API could not be asked.
    #[error(transparent)]
    Kubernetes(#[from] KubernetesError),
    /// A matching pod is not Ready (or has no IP): a rotation would leave its HAProxy behind.
    #[error(
        "HAProxy replica(s) {} in {namespace} not Ready: refusing to rotate while a replica cannot follow",
        .pods.join(", ")
    )]
    NotReady {
        /// The namespace.
        namespace: String,
        /// The pods not Ready.
        pods: Vec<String>,
    },
    /// No pod matches the selector.
    #[error("no HAProxy pod in {namespace} matches {selector}")]
    NoneMatch {
        /// The namespace.
        namespace: String,
        /// `rotation.discovery.selector`.
        selector: String,
    },
}
