//! The `kubernetes` executor: the location goes into one env variable of the backend Deployment's
//! container, the restart annotation of its pod template is set to now, and the rotation waits
//! until the Deployment has rolled out and a pod carrying that annotation value is Ready.
//!
//! The patch is a *strategic merge patch*: Kubernetes merges `containers` and `env` lists by their
//! `name`, so the patch names one container and one variable and leaves every other container,
//! variable and field as it is. A JSON merge patch (RFC 7386) replaces lists whole: it would have to
//! carry the complete `containers` array read a moment before, and overwrite any edit made since.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::json;
use tokio::sync::OnceCell;

use crate::config::KubernetesExecutorConfig;
use crate::error::{DiscoveryError, KubernetesError};

/// Deadline of one API request (the whole restart has `rotation.restart_timeout`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// A Kubernetes client for `api_url` (default: in-cluster, else the kubeconfig) and the namespace
/// to use (`namespace`, else the service account's or the kubeconfig context's).
pub(crate) async fn kube_client(
    api_url: Option<&str>,
    namespace: Option<&str>,
) -> Result<(kube::Client, String), KubernetesError> {
    let mut config = match api_url {
        Some(url) => {
            let uri = url
                .parse::<http::Uri>()
                .map_err(|e| KubernetesError::Config(format!("Kubernetes API URL {url:?}: {e}")))?;
            kube::Config::new(uri)
        }
        None => kube::Config::infer().await.map_err(|e| {
            KubernetesError::Config(format!(
                "no Kubernetes API access (neither an in-cluster service account nor a kubeconfig): {e}"
            ))
        })?,
    };
    config.connect_timeout = Some(REQUEST_TIMEOUT);
    config.read_timeout = Some(REQUEST_TIMEOUT);
    config.write_timeout = Some(REQUEST_TIMEOUT);
    let namespace = namespace.map_or_else(|| config.default_namespace.clone(), str::to_owned);
    let client = kube::Client::try_from(config)
        .map_err(|e| KubernetesError::Config(format!("Kubernetes client: {e}")))?;
    Ok((client, namespace))
}

/// The HAProxy replicas of `[rotation.discovery]`: every pod matching the selector, each of which
/// must be Ready with an IP (a rotation that skipped one would leave its HAProxy behind).
pub async fn discover_instances(
    cfg: &crate::config::DiscoveryConfig,
) -> Result<Vec<egress_haproxy_api::RuntimeApiAddr>, DiscoveryError> {
    let (client, ns) = kube_client(cfg.api_url.as_deref(), cfg.namespace.as_deref()).await?;
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    let list = pods
        .list(&ListParams::default().labels(&cfg.selector))
        .await
        .map_err(|e| api_error(format!("listing pods {ns}/{}", cfg.selector), &e))?;
    let mut out = Vec::new();
    let mut not_ready = Vec::new();
    for pod in list.items {
        let name = pod.metadata.name.clone().unwrap_or_default();
        if pod.metadata.deletion_timestamp.is_some() {
            // Terminating: it takes no new connection and is gone before the rotation ends.
            continue;
        }
        let status = pod.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let ip = status
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse::<std::net::IpAddr>().ok());
        match (ready, ip) {
            (true, Some(ip)) => out.push(egress_haproxy_api::RuntimeApiAddr::Tcp(
                std::net::SocketAddr::new(ip, cfg.port),
            )),
            _ => not_ready.push(name),
        }
    }
    if !not_ready.is_empty() {
        return Err(DiscoveryError::NotReady {
            namespace: ns,
            pods: not_ready,
        });
    }
    if out.is_empty() {
        return Err(DiscoveryError::NoneMatch {
            namespace: ns,
            selector: cfg.selector.clone(),
        });
    }
    out.sort_by_key(|a| format!("{a:?}"));
    Ok(out)
}

/// The kubernetes executor: configuration and a client created on first use.
#[derive(Clone)]
pub struct KubernetesExecutor {
    cfg: KubernetesExecutorConfig,
    client: Arc<OnceCell<(kube::Client, String)>>,
}

impl std::fmt::Debug for KubernetesExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesExecutor")
            .field("cfg", &self.cfg)
            .field("connected", &self.client.initialized())
            .finish()
    }
}

/// What the checks of a Deployment found: the container to patch.
struct Checked {
    container: String,
}

impl KubernetesExecutor {
    /// From the validated `[rotation.executor]`.
    pub fn new(cfg: KubernetesExecutorConfig) -> Self {
        KubernetesExecutor {
            cfg,
            client: Arc::new(OnceCell::new()),
        }
    }

    /// For `--dry-run` and the plan.
    pub fn describe(&self, backend: &str, server: &str, location: &str) -> String {
        format!(
            "kubernetes: patch Deployment {}/{} (env {}={location:?}, annotation {}=<now>), wait for the new pod to be Ready",
            self.cfg.namespace.as_deref().unwrap_or("<default namespace>"),
            self.cfg.deployment_of(backend, server),
            self.cfg.env_of(backend, server),
            self.cfg.restart_annotation,
        )
    }

    async fn client(&self) -> Result<&(kube::Client, String), KubernetesError> {
        self.client
            .get_or_try_init(|| kube_client(self.cfg.api_url.as_deref(), self.cfg.namespace.as_deref()))
            .await
    }

    /// Checks, before anything changes, that the Deployment of `backend/server` exists, uses
    /// `strategy: Recreate` and has the container, whose env variable (if present) is a plain value.
    pub async fn preflight(&self, backend: &str, server: &str) -> Result<(), KubernetesError> {
        let (client, ns) = self.client().await?;
        let name = self.cfg.deployment_of(backend, server);
        let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
        let d = get_deployment(&api, ns, &name).await?;
        self.check(ns, &name, self.cfg.env_of(backend, server), &d)
            .map(|_| ())
    }

    fn check(&self, ns: &str, name: &str, env: &str, d: &Deployment) -> Result<Checked, KubernetesError> {
        let spec = d
            .spec
            .as_ref()
            .ok_or_else(|| KubernetesError::Deployment(format!("Deployment {ns}/{name} has no spec")))?;
        let strategy = spec
            .strategy
            .as_ref()
            .and_then(|s| s.type_.as_deref())
            .unwrap_or("RollingUpdate");
        if strategy != "Recreate" {
            return Err(KubernetesError::Deployment(format!(
                "Deployment {ns}/{name} has strategy {strategy}; the rotation needs strategy Recreate \
                 (the old pod must be gone before the new one starts its tunnel); nothing was changed"
            )));
        }
        let containers = spec
            .template
            .spec
            .as_ref()
            .map(|s| s.containers.as_slice())
            .unwrap_or_default();
        let container = match &self.cfg.container {
            Some(want) => containers.iter().find(|c| &c.name == want).ok_or_else(|| {
                KubernetesError::Deployment(format!(
                    "Deployment {ns}/{name} has no container {want:?} (it has: {})",
                    containers
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?,
            None => containers.first().ok_or_else(|| {
                KubernetesError::Deployment(format!("Deployment {ns}/{name} has no container"))
            })?,
        };
        let from_ref = container
            .env
            .iter()
            .flatten()
            .any(|e| e.name == env && e.value_from.is_some());
        if from_ref {
            return Err(KubernetesError::Deployment(format!(
                "Deployment {ns}/{name}: container {} takes {env} from valueFrom; the rotation sets a plain value",
                container.name
            )));
        }
        Ok(Checked {
            container: container.name.clone(),
        })
    }

    /// Sets the location and the restart annotation of `backend/server`'s Deployment and waits,
    /// within `timeout`, until the rollout is done and the new pod is Ready.
    pub async fn restart(
        &self,
        backend: &str,
        server: &str,
        location: &str,
        timeout: Duration,
    ) -> Result<(), KubernetesError> {
        let deadline = tokio::time::Instant::now() + timeout;
        // What the last poll saw, for the error when the deadline cuts a request short.
        let mut last_state: Option<(String, String)> = None;
        let work = async {
            let (client, ns) = self.client().await?;
            let name = self.cfg.deployment_of(backend, server);
            let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
            let d = get_deployment(&deployments, ns, &name).await?;
            let checked = self.check(ns, &name, self.cfg.env_of(backend, server), &d)?;
            let stamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let patch = json!({
                "spec": {"template": {
                    "metadata": {"annotations": {&self.cfg.restart_annotation: &stamp}},
                    "spec": {"containers": [{
                        "name": checked.container,
                        "env": [{"name": self.cfg.env_of(backend, server), "value": location}],
                    }]},
                }}
            });
            let patched = deployments
                .patch(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                .await
                .map_err(|e| api_error(format!("patching Deployment {ns}/{name}"), &e))?;
            tracing::info!(deployment = %format!("{ns}/{name}"), env = %self.cfg.env_of(backend, server), %location, restarted_at = %stamp, "patched; waiting for the new pod");
            let generation = patched.metadata.generation.unwrap_or(0);
            let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
            loop {
                let state = match self
                    .rollout_state(&deployments, &pods, ns, &name, generation, &stamp)
                    .await
                {
                    Ok(None) => return Ok(()),
                    Ok(Some(s)) => s,
                    // A failed poll is one more state to report; the next poll may succeed.
                    Err(e) => e.to_string(),
                };
                last_state = Some((format!("{ns}/{name}"), state.clone()));
                if tokio::time::Instant::now() + self.cfg.poll_interval >= deadline {
                    return Err(KubernetesError::NotReady {
                        deployment: format!("{ns}/{name}"),
                        within: timeout,
                        state,
                    });
                }
                tokio::time::sleep(self.cfg.poll_interval).await;
            }
        };
        let result = tokio::time::timeout_at(deadline, work).await;
        match (result, last_state) {
            (Ok(r), _) => r,
            (Err(_), Some((deployment, state))) => Err(KubernetesError::NotReady {
                deployment,
                within: timeout,
                state,
            }),
            (Err(_), None) => Err(KubernetesError::Timeout { within: timeout }),
        }
    }

    /// `None` once rolled out and a pod with the new `restartedAt` is Ready; else what is missing.
    async fn rollout_state(
        &self,
        deployments: &Api<Deployment>,
        pods: &Api<Pod>,
        ns: &str,
        name: &str,
        generation: i64,
        stamp: &str,
    ) -> Result<Option<String>, KubernetesError> {
        let d = get_deployment(deployments, ns, name).await?;
        let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let status = d.status.clone().unwrap_or_default();
        let observed = status.observed_generation.unwrap_or(0);
        let updated = status.updated_replicas.unwrap_or(0);
        let ready = status.ready_replicas.unwrap_or(0);
        let mut missing = Vec::new();
        if observed < generation {
            missing.push(format!("observedGeneration {observed} < generation {generation}"));
        }
        if updated != want {
            missing.push(format!("updatedReplicas {updated}/{want}"));
        }
        if ready != want {
            missing.push(format!("readyReplicas {ready}/{want}"));
        }
        let selector = d
            .spec
            .as_ref()
            .map(|s| label_selector(ns, name, &s.selector))
            .transpose()?
            .unwrap_or_default();
        if selector.is_empty() {
            return Err(KubernetesError::Deployment(format!(
                "Deployment {ns}/{name} has an empty selector"
            )));
        }
        let list = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| api_error(format!("listing pods {selector:?}"), &e))?;
        let annotation = &self.cfg.restart_annotation;
        let new_pods: Vec<&Pod> = list
            .items
            .iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(annotation))
                        .is_some_and(|v| v == stamp)
            })
            .collect();
        if !new_pods.iter().any(|p| pod_ready(p)) {
            let seen: Vec<String> = new_pods
                .iter()
                .map(|p| {
                    format!(
                        "{} {}",
                        p.metadata.name.as_deref().unwrap_or("?"),
                        p.status
                            .as_ref()
                            .and_then(|s| s.phase.as_deref())
                            .unwrap_or("Unknown")
                    )
                })
                .collect();
            missing.push(if seen.is_empty() {
                format!(
                    "no pod with {annotation}={stamp} yet ({} other pod(s))",
                    list.items.len()
                )
            } else {
                format!("new pod not Ready ({})", seen.join(", "))
            });
        }
        Ok((!missing.is_empty()).then(|| missing.join(", ")))
    }
}

async fn get_deployment(api: &Api<Deployment>, ns: &str, name: &str) -> Result<Deployment, KubernetesError> {
    api.get_opt(name)
        .await
        .map_err(|e| api_error(format!("reading Deployment {ns}/{name}"), &e))?
        .ok_or_else(|| KubernetesError::Deployment(format!("Deployment {ns}/{name} not found")))
}

/// A failed request: what was asked, and the API's status (`<code> <reason> (<message>)`) or the
/// connection's error.
fn api_error(action: String, e: &kube::Error) -> KubernetesError {
    let detail = match e {
        kube::Error::Api(r) => format!("{} {} ({})", r.code, r.reason, r.message),
        other => other.to_string(),
    };
    KubernetesError::Api { action, detail }
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Deployment `ns/name`'s label selector in the API's query syntax (`a=b,c in (d,e),!f`).
fn label_selector(
    ns: &str,
    name: &str,
    s: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
) -> Result<String, KubernetesError> {
    let mut parts: Vec<String> = s
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in s.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            other => {
                return Err(KubernetesError::Deployment(format!(
                    "Deployment {ns}/{name}: unknown selector operator {other:?}"
                )));
            }
        });
    }
    Ok(parts.join(","))
}
