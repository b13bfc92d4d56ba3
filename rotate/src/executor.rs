//! Step 3 of a rotation: give the backend its new location and restart it.

use std::process::Stdio;
use std::time::Duration;

use egress_http::{Client, Proxy, WebhookUrl};

use tokio::io::AsyncReadExt;

use crate::config::ExecutorConfig;
use crate::error::ExecutorError;
use crate::kubernetes::KubernetesExecutor;

/// Runs the configured restart mechanism.
#[derive(Clone, Debug)]
pub enum Executor {
    /// `program args... <backend> <server> <location>`.
    Command {
        /// The program.
        program: std::path::PathBuf,
        /// Leading arguments.
        args: Vec<String>,
    },
    /// Patch the backend's Deployment and wait for its new pod (see [`super::kubernetes`]).
    Kubernetes(KubernetesExecutor),
    /// gluetun's control server: new server selection, reconnect in place.
    Gluetun(crate::config::GluetunExecutorConfig),
}

impl Executor {
    /// From the validated `[rotation.executor]`.
    pub fn from_config(cfg: &ExecutorConfig) -> Self {
        match cfg {
            ExecutorConfig::Command { program, args } => Executor::Command {
                program: program.clone(),
                args: args.clone(),
            },
            ExecutorConfig::Kubernetes(k) => Executor::Kubernetes(KubernetesExecutor::new(k.clone())),
            ExecutorConfig::Gluetun(g) => Executor::Gluetun(g.clone()),
        }
    }

    /// Checks what can be checked before anything changes (the kubernetes executor: the Deployment
    /// exists, uses strategy Recreate, has the container).
    pub async fn preflight(&self, backend: &str, server: &str) -> Result<(), ExecutorError> {
        match self {
            Executor::Command { .. } | Executor::Gluetun(_) => Ok(()),
            Executor::Kubernetes(k) => Ok(k.preflight(backend, server).await?),
        }
    }

    /// What [`restart`](Self::restart) would run, for `--dry-run`.
    pub fn describe(&self, backend: &str, server: &str, location: &str) -> String {
        match self {
            Executor::Command { program, args } => {
                let mut words = vec![program.display().to_string()];
                words.extend(args.iter().cloned());
                words.extend([backend.to_owned(), server.to_owned(), location.to_owned()]);
                words.join(" ")
            }
            Executor::Kubernetes(k) => k.describe(backend, server, location),
            Executor::Gluetun(g) => format!(
                "gluetun: PUT {}/v1/vpn/settings (server_selection.{} = [{location:?}]), gluetun reconnects",
                gluetun_url(g, backend, server),
                g.field
            ),
        }
    }

    /// Restart `backend/server` in `location`, within `timeout`. The error says what went wrong in
    /// the executor's own words (exit status and the tail of its stderr).
    pub async fn restart(
        &self,
        backend: &str,
        server: &str,
        location: &str,
        timeout: Duration,
    ) -> Result<(), ExecutorError> {
        match self {
            Executor::Kubernetes(k) => Ok(k.restart(backend, server, location, timeout).await?),
            Executor::Gluetun(g) => gluetun_restart(g, backend, server, location, timeout).await,
            Executor::Command { program, args } => {
                let mut child = tokio::process::Command::new(program)
                    .args(args)
                    .arg(backend)
                    .arg(server)
                    .arg(location)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(|source| ExecutorError::Spawn {
                        program: program.clone(),
                        source,
                    })?;
                let mut stdout = child.stdout.take();
                let mut stderr = child.stderr.take();
                let run = async {
                    let mut out = Vec::new();
                    let mut err = Vec::new();
                    let read_out = async {
                        if let Some(s) = stdout.as_mut() {
                            let _ = s.take(64 * 1024).read_to_end(&mut out).await;
                        }
                    };
                    let read_err = async {
                        if let Some(s) = stderr.as_mut() {
                            let _ = s.take(64 * 1024).read_to_end(&mut err).await;
                        }
                    };
                    let ((), (), status) = tokio::join!(read_out, read_err, child.wait());
                    (status, out, err)
                };
                let (status, out, err) =
                    tokio::time::timeout(timeout, run)
                        .await
                        .map_err(|_| ExecutorError::Timeout {
                            program: program.clone(),
                            within: timeout,
                        })?;
                let status = status.map_err(|source| ExecutorError::Wait {
                    program: program.clone(),
                    source,
                })?;
                let out = String::from_utf8_lossy(&out);
                if !out.trim().is_empty() {
                    tracing::info!(output = %out.trim(), "executor stdout");
                }
                if status.success() {
                    Ok(())
                } else {
                    let err = String::from_utf8_lossy(&err);
                    let stderr_tail: String = err
                        .trim()
                        .chars()
                        .rev()
                        .take(400)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect();
                    Err(ExecutorError::Exit {
                        program: program.clone(),
                        status,
                        stderr_tail,
                    })
                }
            }
        }
    }
}

fn gluetun_url(g: &crate::config::GluetunExecutorConfig, backend: &str, server: &str) -> String {
    g.control_url
        .replace("{backend}", backend)
        .replace("{server}", server)
        .trim_end_matches('/')
        .to_owned()
}

/// `PUT /v1/vpn/settings` with `{"provider":{"server_selection":{<field>:[location]}}}`: gluetun
/// merges it into its settings, validates them against its server list and reconnects the tunnel.
/// Its answer is the outcome in words; anything but 2xx is the error, with that text.
///
/// Always direct: the control server is on the backend's own network (the pod, the compose
/// project), and an `HTTPS_PROXY`/`HTTP_PROXY` meant for the Slack webhook must not carry it.
async fn gluetun_restart(
    g: &crate::config::GluetunExecutorConfig,
    backend: &str,
    server: &str,
    location: &str,
    timeout: Duration,
) -> Result<(), ExecutorError> {
    let key = format!("{backend}/{server}");
    let base = gluetun_url(g, backend, server);
    let url =
        WebhookUrl::parse(&format!("{base}/v1/vpn/settings")).map_err(|e| ExecutorError::ControlUrl {
            server: key.clone(),
            reason: e.to_string(),
        })?;
    let api_key = match &g.api_key_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .map_err(|source| ExecutorError::ApiKeyFile {
                    path: f.clone(),
                    source,
                })?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let body = serde_json::json!({"provider": {"server_selection": {g.field.as_str(): [location]}}});
    let headers: Vec<(&str, &str)> = api_key.as_deref().map(|k| ("X-API-Key", k)).into_iter().collect();
    let unreachable = |e: egress_http::Error| ExecutorError::Http {
        server: key.clone(),
        url: url.redacted(),
        reason: e.to_string(),
    };
    let answer = Client::new(Proxy::Direct)
        .map_err(unreachable)?
        .send_json(
            egress_http::Method::PUT,
            &url,
            &headers,
            body.to_string().as_bytes(),
            timeout.min(Duration::from_secs(30)),
        )
        .await
        .map_err(unreachable)?;
    if (200..300).contains(&answer.status) {
        tracing::info!(%backend, %server, %location, outcome = %answer.body_start.trim(), "gluetun applied the new server selection");
        Ok(())
    } else {
        Err(ExecutorError::Rejected {
            server: key,
            status: answer.status,
            body: answer.body_start.trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ExecutorErrorKind;

    #[tokio::test]
    async fn passes_the_arguments_and_reports_failures() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("args");
        let ok = Executor::Command {
            program: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                format!("echo \"$@\" > {}", out.display()),
                "sh".into(),
            ],
        };
        ok.restart("egress", "s1", "de-fra", Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap().trim(), "egress s1 de-fra");

        let fail = Executor::Command {
            program: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                "echo no capacity in $3 >&2; exit 3".into(),
                "sh".into(),
            ],
        };
        let e = fail
            .restart("egress", "s1", "nl-ams", Duration::from_secs(10))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ExecutorErrorKind::Exit);
        assert!(
            matches!(&e, ExecutorError::Exit { status, .. } if status.code() == Some(3)),
            "{e:?}"
        );
        let e = e.to_string();
        assert!(e.contains("no capacity in nl-ams") && e.contains('3'), "{e}");

        let slow = Executor::Command {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "sleep 30".into(), "sh".into()],
        };
        let e = slow
            .restart("egress", "s1", "x", Duration::from_millis(300))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ExecutorErrorKind::Timeout);
        assert!(e.to_string().contains("did not finish"), "{e}");

        let missing = Executor::Command {
            program: "/nonexistent/rotate".into(),
            args: vec![],
        };
        let e = missing
            .restart("egress", "s1", "x", Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ExecutorErrorKind::Spawn);
        assert!(!e.is_unavailable());
        assert!(e.to_string().contains("cannot start"), "{e}");
    }
}
