//! Built without the `kubernetes` feature: no Kubernetes client is linked. A configuration that asks
//! for the kubernetes executor or `[rotation.discovery]` is refused by `RotationConfig::problems`;
//! these stand-ins only keep the types, and say why if reached anyway.

use std::time::Duration;

use crate::config::{DiscoveryConfig, KubernetesExecutorConfig};
use crate::error::{DiscoveryError, KubernetesError};

pub use crate::error::NOT_BUILT;

/// Always an error: see [`NOT_BUILT`].
pub async fn discover_instances(
    _cfg: &DiscoveryConfig,
) -> Result<Vec<egress_haproxy_api::RuntimeApiAddr>, DiscoveryError> {
    Err(KubernetesError::NotBuilt.into())
}

/// The kubernetes executor's place, empty.
#[derive(Clone, Debug)]
pub struct KubernetesExecutor;

impl KubernetesExecutor {
    /// Nothing to keep.
    pub fn new(_cfg: KubernetesExecutorConfig) -> Self {
        KubernetesExecutor
    }

    /// For `--dry-run` and the plan.
    pub fn describe(&self, _backend: &str, _server: &str, _location: &str) -> String {
        format!("kubernetes: unavailable ({NOT_BUILT})")
    }

    /// Always an error.
    pub async fn preflight(&self, _backend: &str, _server: &str) -> Result<(), KubernetesError> {
        Err(KubernetesError::NotBuilt)
    }

    /// Always an error.
    pub async fn restart(
        &self,
        _backend: &str,
        _server: &str,
        _location: &str,
        _timeout: Duration,
    ) -> Result<(), KubernetesError> {
        Err(KubernetesError::NotBuilt)
    }
}
