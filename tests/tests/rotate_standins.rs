//! `egress-checker rotate` against local stand-ins of the APIs it calls (`egress_harness::standin`),
//! with real HAProxy, tinyproxy and Postgres:
//!
//! - `[rotation.discovery]`: the HAProxy replicas come from the Kubernetes API (the pod list), every
//!   rotation fans out to each one found (two HAProxy processes, their runtime APIs on 127.0.0.1:P
//!   and 127.0.0.2:P as two pod IPs with the same port would be), and a rotation is refused while a
//!   matching pod is not Ready;
//! - the `gluetun` executor: the new location goes to gluetun's control server (`PUT
//!   /v1/vpn/settings`, the API key in `X-API-Key`), which here reconnects the "tunnel" by
//!   restarting the tinyproxy with the location as its exit address; a wrong key fails the rotation.
//!
//! Needs the binaries: `cargo build --workspace --bins` (scripts/test does it).

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use egress_harness::bins::bin_path;
use egress_harness::echo::EchoServer;
use egress_harness::haproxy::Haproxy;
use egress_harness::ports::free_port;
use egress_harness::postgres::Postgres;
use egress_harness::standin::StandIn;
use egress_harness::tinyproxy::Tinyproxy;
use egress_harness::wait_until;

const SELECTOR: &str = "app.kubernetes.io/name=haproxy-egress";
const PODS_PATH: &str = "/api/v1/namespaces/egress/pods";

/// The stand-in API server: answers the pod list for the selector (the second pod Ready while
/// `b_ready` is), 404 for anything else.
fn api_server(b_ready: Arc<AtomicBool>) -> anyhow::Result<StandIn> {
    StandIn::start(move |req| {
        // The path exactly, and the selector among the query parameters (kube-rs may add others).
        let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
        let selector_ok = query
            .split('&')
            .any(|kv| kv == "labelSelector=app.kubernetes.io%2Fname%3Dhaproxy-egress");
        if req.method == "GET" && path == PODS_PATH && selector_ok {
            let list = serde_json::json!({
                "apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "7"},
                "items": [pod("haproxy-egress-a", "127.0.0.1", true),
                          pod("haproxy-egress-b", "127.0.0.2", b_ready.load(Ordering::SeqCst))]
            });
            (200, list.to_string())
        } else {
            (
                404,
                serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": format!("not served here: {}", req.target), "reason": "NotFound", "code": 404})
                .to_string(),
            )
        }
    })
}

fn pod(name: &str, ip: &str, ready: bool) -> serde_json::Value {
    serde_json::json!({
        "metadata": {"name": name, "namespace": "egress", "labels": {"app.kubernetes.io/name": "haproxy-egress"}},
        "status": {"phase": "Running", "podIP": ip,
                   "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
    })
}

fn replica(ip: Ipv4Addr, api_port: u16, s1: SocketAddr, s2: SocketAddr) -> anyhow::Result<Haproxy> {
    Haproxy::start(&egress_harness::haproxy::rotation_pool_config(
        &[&format!("ipv4@{ip}:{api_port} level admin")],
        &[("s1", s1), ("s2", s2)],
    ))
}

#[test]
fn discovery_finds_every_replica_and_a_rotation_drains_and_readies_each() -> anyhow::Result<()> {
    let pg = Postgres::start()?;
    let echo = EchoServer::start()?;
    let mut s1 = Tinyproxy::start(Ipv4Addr::new(127, 0, 0, 11))?;
    let s2 = Tinyproxy::start(Ipv4Addr::new(127, 0, 0, 12))?;
    let api_port = free_port()?;
    let a = replica(Ipv4Addr::new(127, 0, 0, 1), api_port, s1.addr(), s2.addr())?;
    let b = replica(Ipv4Addr::new(127, 0, 0, 2), api_port, s1.addr(), s2.addr())?;
    let b_ready = Arc::new(AtomicBool::new(true));
    let api = api_server(b_ready.clone())?;
    let dir = tempfile::tempdir()?;
    let script = egress_harness::executor::write_script(dir.path())?;
    let config = dir.path().join("checker.toml");
    std::fs::write(
        &config,
        format!(
            "[backends]\nruntime_api = \"tcp:127.0.0.1:{api_port}\"\nnames = [\"egress\"]\n\n\
             [[targets]]\naddress = \"{echo}\"\n\n[exit_ip]\naddress = \"{echo}\"\n\n\
             [rotation]\ndrain_deadline = \"2s\"\npoll_interval = \"100ms\"\nrestart_timeout = \"20s\"\nverify_timeout = \"20s\"\n\n\
             [rotation.discovery]\nselector = \"{SELECTOR}\"\nport = {api_port}\nnamespace = \"egress\"\napi_url = \"http://{api}\"\n\n\
             [rotation.executor]\nkind = \"command\"\nprogram = \"{script}\"\n\n\
             [rotation.locations]\n\"egress/s1\" = [\"127.0.0.21\"]\n\"egress/s2\" = [\"127.0.0.22\"]\n",
            echo = echo.http_addr(),
            api = api.addr(),
            script = script.display(),
        ),
    )?;
    for h in [&a, &b] {
        for s in ["s1", "s2"] {
            assert!(wait_until(Duration::from_secs(15), || h
                .stat("egress", s)
                .ok()
                .flatten()
                .and_then(|r| r.get("status").cloned())
                .as_deref()
                == Some("UP")));
        }
    }
    let checker = |args: &[&str]| -> anyhow::Result<Output> {
        Ok(Command::new(bin_path("egress-checker")?)
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("EGRESS_DATABASE_URL", pg.url())
            .output()?)
    };
    anyhow::ensure!(checker(&["migrate"])?.status.success(), "migrate failed");

    // Both replicas Ready: the rotation drains, puts in maint and readies s1 on each of them.
    let mut cmd = Command::new(bin_path("egress-checker")?);
    cmd.arg("--config")
        .arg(&config)
        .args(["rotate", "egress/s1"])
        .env("EGRESS_DATABASE_URL", pg.url());
    let run = std::thread::spawn(move || cmd.output());
    let mut maint_seen = [false, false];
    let deadline = Instant::now() + Duration::from_secs(60);
    while !run.is_finished() {
        anyhow::ensure!(Instant::now() < deadline, "rotation did not end in 60 s");
        for (i, h) in [&a, &b].iter().enumerate() {
            // srv_admin_state 1 = forced maintenance.
            maint_seen[i] |= h.admin_state("s1") == "1";
        }
        egress_harness::executor::serve_restart(dir.path(), "s1", |ip| s1.restart(ip))?;
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = run
        .join()
        .map_err(|_| anyhow::anyhow!("rotate thread panicked"))??;
    let text = egress_harness::executor::output_text(&out);
    println!("ROTATE with discovery:\n{text}");
    anyhow::ensure!(out.status.success(), "rotate failed:\n{text}");
    assert_eq!(
        maint_seen,
        [true, true],
        "maint was not set on every discovered replica"
    );
    for h in [&a, &b] {
        assert_eq!(h.admin_state("s1"), "0", "s1 not ready again on every replica");
    }
    let history = checker(&["history", "egress/s1", "--since", "1h", "--json"])?;
    let events: serde_json::Value = serde_json::from_slice(&history.stdout)?;
    let drain = events
        .as_array()
        .and_then(|a| a.iter().find(|e| e["kind"] == "drain_started"))
        .cloned()
        .unwrap_or_default();
    let instances: Vec<String> = drain["detail"]["instances"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    assert_eq!(
        instances,
        [
            format!("tcp:127.0.0.1:{api_port}"),
            format!("tcp:127.0.0.2:{api_port}")
        ],
        "{drain}"
    );
    let requests = api.requests();
    assert!(
        !requests.is_empty() && requests.iter().all(|r| r.target.starts_with(PODS_PATH)),
        "unexpected API requests: {requests:?}"
    );

    // One replica not Ready: refused before anything changes (exit 1: a service the rotation needs is
    // unavailable), s2 untouched everywhere.
    b_ready.store(false, Ordering::SeqCst);
    let out = checker(&["rotate", "egress/s2"])?;
    let text = egress_harness::executor::output_text(&out);
    println!("ROTATE with a replica not Ready:\n{text}");
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("haproxy-egress-b") && text.contains("not Ready"),
        "{text}"
    );
    for h in [&a, &b] {
        assert_eq!(h.admin_state("s2"), "0");
    }
    Ok(())
}

#[test]
fn the_gluetun_executor_rotates_through_the_control_server() -> anyhow::Result<()> {
    let pg = Postgres::start()?;
    let echo = EchoServer::start()?;
    let s1 = Arc::new(std::sync::Mutex::new(Tinyproxy::start(Ipv4Addr::new(
        127, 0, 0, 11,
    ))?));
    let s2 = Tinyproxy::start(Ipv4Addr::new(127, 0, 0, 12))?;
    let s1_addr = s1
        .lock()
        .map(|t| t.addr())
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    let h = replica(Ipv4Addr::LOCALHOST, free_port()?, s1_addr, s2.addr())?;
    const KEY: &str = "k3y-for-the-rotator";
    // gluetun's control server, played: the API key checked, the new selection applied by
    // restarting the tunnel (tinyproxy) on the hostname's address.
    let gluetun = {
        let s1 = s1.clone();
        StandIn::start(move |req| {
            if req.header("x-api-key") != Some(KEY) {
                return (401, "{\"error\":\"unauthorized\"}".into());
            }
            if req.method != "PUT" || req.target != "/v1/vpn/settings" {
                return (404, "{}".into());
            }
            let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
            let Some(host) = body["provider"]["server_selection"]["hostnames"][0].as_str() else {
                return (400, "{\"error\":\"no hostnames\"}".into());
            };
            let Ok(ip) = host.parse::<Ipv4Addr>() else {
                return (400, format!("{{\"error\":\"unknown hostname {host}\"}}"));
            };
            match s1.lock().map(|mut t| t.restart(ip)) {
                Ok(Ok(())) => (200, "settings updated".into()),
                _ => (500, "{\"error\":\"restart\"}".into()),
            }
        })?
    };
    let dir = tempfile::tempdir()?;
    let config = |key: &str| -> anyhow::Result<std::path::PathBuf> {
        let key_file = dir.path().join(format!("key-{}", key.len()));
        std::fs::write(&key_file, format!("{key}\n"))?;
        let path = dir.path().join(format!("checker-{}.toml", key.len()));
        std::fs::write(
            &path,
            format!(
                "[backends]\nruntime_api = \"unix:{sock}\"\nnames = [\"egress\"]\n\n\
                 [[targets]]\naddress = \"{echo}\"\n\n[exit_ip]\naddress = \"{echo}\"\n\n\
                 [rotation]\ninstances = [\"unix:{sock}\"]\ndrain_deadline = \"2s\"\npoll_interval = \"100ms\"\n\
                 restart_timeout = \"20s\"\nverify_timeout = \"20s\"\n\n\
                 [rotation.executor]\nkind = \"gluetun\"\ncontrol_url = \"http://{gluetun}\"\napi_key_file = \"{key_file}\"\n\n\
                 [rotation.locations]\n\"egress/s1\" = [\"127.0.0.21\", \"127.0.0.22\"]\n",
                sock = h.runtime_socket().display(),
                echo = echo.http_addr(),
                gluetun = gluetun.addr(),
                key_file = key_file.display(),
            ),
        )?;
        Ok(path)
    };
    let checker = |config: &std::path::Path, args: &[&str]| -> anyhow::Result<Output> {
        Ok(Command::new(bin_path("egress-checker")?)
            .arg("--config")
            .arg(config)
            .args(args)
            .env("EGRESS_DATABASE_URL", pg.url())
            .output()?)
    };
    let good = config(KEY)?;
    anyhow::ensure!(checker(&good, &["migrate"])?.status.success(), "migrate failed");
    let out = checker(&good, &["rotate", "egress/s1"])?;
    let text = egress_harness::executor::output_text(&out);
    println!("ROTATE through gluetun's control server:\n{text}");
    anyhow::ensure!(out.status.success(), "rotate failed:\n{text}");
    assert!(text.contains("127.0.0.11 → 127.0.0.21"), "{text}");
    assert_eq!(h.admin_state("s1"), "0");
    let puts: Vec<_> = gluetun
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT")
        .collect();
    assert_eq!(puts.len(), 1, "{puts:?}");
    let body: serde_json::Value = serde_json::from_slice(&puts[0].body)?;
    assert_eq!(
        body,
        serde_json::json!({"provider": {"server_selection": {"hostnames": ["127.0.0.21"]}}})
    );

    // A wrong API key: gluetun refuses, the rotation fails at its restart step, the server stays in
    // MAINT (exit 1), and the answer is in the message.
    let bad = config("wrong")?;
    let out = checker(&bad, &["rotate", "egress/s1"])?;
    let text = egress_harness::executor::output_text(&out);
    println!("ROTATE with a wrong gluetun API key:\n{text}");
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("answered 401"), "{text}");
    assert_eq!(h.admin_state("s1"), "1");
    Ok(())
}
