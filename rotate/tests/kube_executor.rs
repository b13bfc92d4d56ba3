#![cfg(feature = "kubernetes")]
//! The kubernetes executor against a local stand-in for the API server (no cluster runs here): it
//! serves the Deployment and its pods over HTTP/1.1 on 127.0.0.1, checks every request exactly
//! (method, path, patch content type and body) and plays a rollout that takes a few polls.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use egress_harness::http_util::read_request;
use egress_rotate::config::KubernetesExecutorConfig;
use egress_rotate::kubernetes::KubernetesExecutor;
use egress_rotate::{ExecutorError, ExecutorErrorKind, KubernetesError};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// Largest request head the stand-in reads (the client's heads are a few hundred bytes).
const MAX_HEAD: usize = 64 * 1024;

const NS: &str = "egress";
const DEPLOY_PATH: &str = "/apis/apps/v1/namespaces/egress/deployments/egress-g01";
const PODS_PATH: &str = "/api/v1/namespaces/egress/pods";
const ANNOTATION: &str = "egress.haproxy-egress.io/restartedAt";

#[derive(Clone, Debug)]
struct Request {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    content_type: Option<String>,
    body: Vec<u8>,
}

/// How the stand-in behaves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// Rollout in progress for two polls, then Ready.
    Rollout,
    /// The Deployment does not exist.
    Missing,
    /// The Deployment uses RollingUpdate.
    RollingUpdate,
    /// The new pod never becomes Ready.
    NeverReady,
}

struct Cluster {
    scenario: Scenario,
    requests: Vec<Request>,
    generation: i64,
    /// The restartedAt value of the accepted patch.
    stamp: Option<String>,
    /// Polls of the Deployment since the patch.
    polls: u32,
    /// The container the patch must name.
    container: &'static str,
    errors: Vec<String>,
}

/// In the `Rollout` scenario, the poll (GET of the Deployment after the patch) from which the rollout
/// is complete. Each earlier poll fails exactly one of the executor's conditions, so dropping any
/// of them makes `restart` return early: 1 stale `observedGeneration`, 2 `updatedReplicas` 0,
/// 3 `readyReplicas` 0, 4 the new pod not Ready.
const READY_AT_POLL: u32 = 5;

impl Cluster {
    fn ready(&self) -> bool {
        self.scenario == Scenario::Rollout && self.polls >= READY_AT_POLL
    }

    /// (observedGeneration caught up, updatedReplicas, readyReplicas, new pod Ready).
    fn rollout(&self) -> (bool, i64, i64, bool) {
        match (&self.stamp, self.scenario) {
            (None, _) => (true, 1, 1, true),
            (Some(_), Scenario::Rollout) => match self.polls {
                0 | 1 => (false, 1, 1, true),
                2 => (true, 0, 1, true),
                3 => (true, 1, 0, true),
                4 => (true, 1, 1, false),
                _ => (true, 1, 1, true),
            },
            (Some(_), _) => (false, 0, 0, false),
        }
    }

    fn deployment(&self) -> Value {
        let strategy = if self.scenario == Scenario::RollingUpdate {
            "RollingUpdate"
        } else {
            "Recreate"
        };
        let (observed, updated, ready, _) = self.rollout();
        let mut annotations = json!({});
        if let Some(s) = &self.stamp {
            annotations[ANNOTATION] = json!(s);
        }
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "egress-g01", "namespace": NS, "generation": self.generation},
            "spec": {
                "replicas": 1,
                "strategy": {"type": strategy},
                "selector": {"matchLabels": {"app.kubernetes.io/instance": "egress-g01"}},
                "template": {
                    "metadata": {
                        "labels": {"app.kubernetes.io/instance": "egress-g01"},
                        "annotations": annotations,
                    },
                    "spec": {"containers": [
                        {"name": "sidecar", "image": "busybox"},
                        {"name": "gluetun", "image": "qmcgaw/gluetun:v3.39.1",
                         "env": [{"name": "SERVER_HOSTNAMES", "value": "nl-ams-01"},
                                 {"name": "VPN_TYPE", "value": "wireguard"}]},
                    ]},
                },
            },
            "status": {
                "observedGeneration": if observed { self.generation } else { self.generation - 1 },
                "replicas": 1,
                "updatedReplicas": updated,
                "readyReplicas": ready,
            },
        })
    }

    fn pods(&self) -> Value {
        let old = json!({
            "metadata": {"name": "egress-g01-old", "labels": {"app.kubernetes.io/instance": "egress-g01"}},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
        });
        let items = match &self.stamp {
            None => vec![old],
            Some(stamp) => {
                let (ready, phase) = if self.rollout().3 {
                    ("True", "Running")
                } else {
                    ("False", "Pending")
                };
                // The old pod, still Ready while it terminates, must not count.
                let mut old = old;
                old["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
                vec![
                    old,
                    json!({
                        "metadata": {"name": "egress-g01-new",
                                     "labels": {"app.kubernetes.io/instance": "egress-g01"},
                                     "annotations": {ANNOTATION: stamp}},
                        "status": {"phase": phase, "conditions": [{"type": "Ready", "status": ready}]},
                    }),
                ]
            }
        };
        json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items})
    }

    fn answer(&mut self, r: &Request) -> (u16, Value) {
        self.requests.push(r.clone());
        let not_found = (
            404,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": "deployments.apps \"egress-g01\" not found", "reason": "NotFound", "code": 404}),
        );
        match (r.method.as_str(), r.path.as_str()) {
            ("GET", DEPLOY_PATH) if self.scenario == Scenario::Missing => not_found,
            ("GET", DEPLOY_PATH) => {
                if self.stamp.is_some() {
                    self.polls += 1;
                }
                (200, self.deployment())
            }
            ("PATCH", DEPLOY_PATH) => {
                self.check_patch(r);
                self.generation += 1;
                (200, self.deployment())
            }
            ("GET", PODS_PATH) => {
                let sel = r.query.get("labelSelector").map(String::as_str);
                if sel != Some("app.kubernetes.io/instance=egress-g01") {
                    self.errors
                        .push(format!("pods listed with labelSelector {sel:?}"));
                }
                (200, self.pods())
            }
            _ => {
                self.errors.push(format!("unexpected {} {}", r.method, r.path));
                (
                    404,
                    json!({"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404, "message": "no such path"}),
                )
            }
        }
    }

    fn check_patch(&mut self, r: &Request) {
        if self.scenario != Scenario::Rollout && self.scenario != Scenario::NeverReady {
            self.errors.push("PATCH in a scenario that must not patch".into());
        }
        if r.content_type.as_deref() != Some("application/strategic-merge-patch+json") {
            self.errors
                .push(format!("patch content type {:?}", r.content_type));
        }
        let body: Value = match serde_json::from_slice(&r.body) {
            Ok(v) => v,
            Err(e) => {
                self.errors.push(format!("patch body is not JSON: {e}"));
                return;
            }
        };
        let stamp = body["spec"]["template"]["metadata"]["annotations"][ANNOTATION]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match chrono::DateTime::parse_from_rfc3339(&stamp) {
            Ok(t) if (chrono::Utc::now() - t.to_utc()).num_seconds().abs() < 60 => {}
            _ => self
                .errors
                .push(format!("restart annotation {stamp:?} is not now")),
        }
        let want = json!({
            "spec": {"template": {
                "metadata": {"annotations": {ANNOTATION: stamp}},
                "spec": {"containers": [
                    {"name": self.container, "env": [{"name": "SERVER_HOSTNAMES", "value": "de-fra-07"}]}
                ]},
            }}
        });
        if body != want {
            self.errors.push(format!("patch body {body} != {want}"));
        }
        self.stamp = Some(stamp);
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Starts the stand-in; returns its URL and the shared state.
async fn stand_in(scenario: Scenario) -> (String, Arc<Mutex<Cluster>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let cluster = Arc::new(Mutex::new(Cluster {
        scenario,
        requests: Vec::new(),
        generation: 1,
        stamp: None,
        polls: 0,
        container: "gluetun",
        errors: Vec::new(),
    }));
    let shared = cluster.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let cluster = shared.clone();
            tokio::spawn(async move {
                let mut stream = stream;
                let mut buf = Vec::new();
                while let Some(full) = read_request(&mut stream, &mut buf, MAX_HEAD).await {
                    let (method, target, body) = (full.head.method, full.head.target, full.body);
                    let content_type = full.head.headers.get("content-type").map(str::to_owned);
                    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
                    let query = query
                        .split('&')
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
                        .collect();
                    let request = Request {
                        method,
                        path: path.to_owned(),
                        query,
                        content_type,
                        body,
                    };
                    let (code, value) = cluster.lock().unwrap().answer(&request);
                    let body = value.to_string();
                    let head = format!(
                        "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    );
                    if stream.write_all(head.as_bytes()).await.is_err()
                        || stream.write_all(body.as_bytes()).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (url, cluster)
}

fn executor(url: &str, container: Option<&str>) -> KubernetesExecutor {
    KubernetesExecutor::new(KubernetesExecutorConfig {
        namespace: Some(NS.into()),
        deployment: "egress-{server}".into(),
        deployments: BTreeMap::new(),
        container: container.map(str::to_owned),
        // The default variable, and g01's own (its locations are hostnames): the patch must name
        // SERVER_HOSTNAMES, which only the per-server entry gives.
        env: "SERVER_COUNTRIES".into(),
        envs: BTreeMap::from([("egress/g01".to_owned(), "SERVER_HOSTNAMES".to_owned())]),
        restart_annotation: ANNOTATION.into(),
        poll_interval: Duration::from_millis(50),
        api_url: Some(url.into()),
    })
}

fn methods(c: &Cluster) -> Vec<String> {
    c.requests
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

#[tokio::test]
async fn patches_the_env_and_annotation_then_waits_for_the_new_pod() {
    let (url, cluster) = stand_in(Scenario::Rollout).await;
    let k = executor(&url, Some("gluetun"));
    k.preflight("egress", "g01").await.unwrap();
    k.restart("egress", "g01", "de-fra-07", Duration::from_secs(30))
        .await
        .unwrap();
    let c = cluster.lock().unwrap();
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    assert!(c.ready(), "returned before the stand-in reported Ready");
    let seen = methods(&c);
    // preflight GET, GET before the patch, PATCH, then polls (GET deployment + list pods).
    assert_eq!(
        seen[..3],
        [
            format!("GET {DEPLOY_PATH}"),
            format!("GET {DEPLOY_PATH}"),
            format!("PATCH {DEPLOY_PATH}")
        ]
    );
    assert_eq!(seen.iter().filter(|m| m.starts_with("PATCH")).count(), 1);
    assert!(seen.iter().any(|m| *m == format!("GET {PODS_PATH}")), "{seen:?}");
    // It returned at the first poll that met every condition, and not before.
    assert_eq!(c.polls, READY_AT_POLL);
}

#[tokio::test]
async fn the_default_container_is_the_first_one() {
    let (url, cluster) = stand_in(Scenario::Rollout).await;
    cluster.lock().unwrap().container = "sidecar";
    let k = executor(&url, None);
    k.restart("egress", "g01", "de-fra-07", Duration::from_secs(30))
        .await
        .unwrap();
    let c = cluster.lock().unwrap();
    assert!(c.errors.is_empty(), "{:?}", c.errors);
}

#[tokio::test]
async fn a_missing_deployment_is_a_clear_error() {
    let (url, cluster) = stand_in(Scenario::Missing).await;
    let k = executor(&url, Some("gluetun"));
    let e = k.preflight("egress", "g01").await.unwrap_err();
    assert!(matches!(e, KubernetesError::Deployment(_)), "{e:?}");
    assert_eq!(e.to_string(), "Deployment egress/egress-g01 not found");
    let e = k
        .restart("egress", "g01", "x", Duration::from_secs(10))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ExecutorErrorKind::Deployment);
    assert!(e.to_string().contains("not found"), "{e}");
    let c = cluster.lock().unwrap();
    assert!(
        methods(&c).iter().all(|m| m.starts_with("GET ")),
        "{:?}",
        methods(&c)
    );
}

#[tokio::test]
async fn rolling_update_is_refused_before_patching() {
    let (url, cluster) = stand_in(Scenario::RollingUpdate).await;
    let k = executor(&url, Some("gluetun"));
    let e = k.preflight("egress", "g01").await.unwrap_err();
    assert_eq!(e.kind(), ExecutorErrorKind::Deployment);
    let e = e.to_string();
    assert!(
        e.contains("strategy RollingUpdate") && e.contains("Recreate"),
        "{e}"
    );
    let e = k
        .restart("egress", "g01", "x", Duration::from_secs(10))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ExecutorErrorKind::Deployment);
    assert!(e.to_string().contains("strategy RollingUpdate"), "{e}");
    let c = cluster.lock().unwrap();
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    assert!(
        methods(&c).iter().all(|m| m.starts_with("GET ")),
        "{:?}",
        methods(&c)
    );
}

#[tokio::test]
async fn a_container_that_is_not_there_is_refused() {
    let (url, _cluster) = stand_in(Scenario::Rollout).await;
    let k = executor(&url, Some("wireguard"));
    let e = k.preflight("egress", "g01").await.unwrap_err();
    assert_eq!(e.kind(), ExecutorErrorKind::Deployment);
    let e = e.to_string();
    assert!(
        e.contains("no container \"wireguard\"") && e.contains("gluetun"),
        "{e}"
    );
}

#[tokio::test]
async fn never_ready_times_out_naming_what_is_missing() {
    let (url, cluster) = stand_in(Scenario::NeverReady).await;
    let k = executor(&url, Some("gluetun"));
    let e = k
        // Long enough for a few polls on a loaded machine; the deadline may also cut a request short,
        // and the error must still name what the last poll saw.
        .restart("egress", "g01", "de-fra-07", Duration::from_secs(4))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, KubernetesError::NotReady { deployment, .. } if deployment == "egress/egress-g01"),
        "{e:?}"
    );
    assert_eq!(e.kind(), ExecutorErrorKind::Timeout);
    let e = e.to_string();
    assert!(e.contains("egress/egress-g01 was not ready within"), "{e}");
    for needle in ["updatedReplicas 0/1", "readyReplicas 0/1"] {
        assert!(e.contains(needle), "{needle} missing in {e}");
    }
    let c = cluster.lock().unwrap();
    assert!(c.errors.is_empty(), "{:?}", c.errors);
}

#[tokio::test]
async fn an_unreachable_api_server_is_an_error_not_a_hang() {
    // A port that was just free: nothing listens.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let k = executor(&format!("http://127.0.0.1:{port}"), None);
    let e = tokio::time::timeout(Duration::from_secs(30), k.preflight("egress", "g01"))
        .await
        .expect("the preflight must give up by itself")
        .unwrap_err();
    let text = e.to_string();
    assert!(text.contains("reading Deployment egress/egress-g01"), "{text}");
    // A service that did not answer: the rotation's exit code 1, never 2 (bad input).
    assert_eq!(e.kind(), ExecutorErrorKind::KubernetesApi);
    assert!(ExecutorError::from(e).is_unavailable(), "{text}");
    assert!(
        ExecutorError::from(KubernetesError::Timeout {
            within: Duration::from_secs(1)
        })
        .is_unavailable()
    );
}
