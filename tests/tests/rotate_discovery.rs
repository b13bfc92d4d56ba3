//! `egress-checker rotate` with `[rotation.discovery]`: the HAProxy replicas come from the
//! Kubernetes API (a local stand-in serving the pod list, no cluster here), every rotation fans out
//! to each one found (two real HAProxy processes, their runtime APIs on 127.0.0.1:P and
//! 127.0.0.2:P as two pod IPs with the same port would be), and a rotation is refused while a
//! matching pod is not Ready.
//!
//! Needs the binaries: `cargo build --workspace --bins` (scripts/test does it).

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use egress_e2e::bins::bin_path;
use egress_e2e::echo::EchoServer;
use egress_e2e::haproxy::Haproxy;
use egress_e2e::ports::free_port;
use egress_e2e::postgres::Postgres;
use egress_e2e::tinyproxy::Tinyproxy;
use egress_e2e::wait_until;

const SELECTOR: &str = "app.kubernetes.io/name=haproxy-egress";
const PODS_PATH: &str = "/api/v1/namespaces/egress/pods";

/// The stand-in API server: answers the pod list (and nothing else) for the selector; the second
/// pod is Ready while `b_ready` is.
struct ApiServer {
    addr: SocketAddr,
    b_ready: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn pod(name: &str, ip: &str, ready: bool) -> serde_json::Value {
    serde_json::json!({
        "metadata": {"name": name, "namespace": "egress", "labels": {"app.kubernetes.io/name": "haproxy-egress"}},
        "status": {"phase": "Running", "podIP": ip,
                   "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
    })
}

fn serve(mut conn: std::net::TcpStream, b_ready: &AtomicBool, requests: &Mutex<Vec<String>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if buf.len() > 64 * 1024 {
                return;
            }
        }
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let target = head.split_whitespace().nth(1).unwrap_or_default().to_owned();
        requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(target.clone());
        // The path exactly, and the selector among the query parameters (kube-rs may add others).
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let selector_ok = query
            .split('&')
            .any(|kv| kv == "labelSelector=app.kubernetes.io%2Fname%3Dhaproxy-egress");
        let (status, body) = if head.starts_with("GET ") && path == PODS_PATH && selector_ok {
            let list = serde_json::json!({
                "apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "7"},
                "items": [pod("haproxy-egress-a", "127.0.0.1", true),
                          pod("haproxy-egress-b", "127.0.0.2", b_ready.load(Ordering::SeqCst))]
            });
            ("200 OK", list.to_string())
        } else {
            (
                "404 Not Found",
                serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": format!("not served here: {target}"), "reason": "NotFound", "code": 404})
                .to_string(),
            )
        };
        let answer = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if conn.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn api_server() -> anyhow::Result<ApiServer> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let (b_ready, requests, stop) = (
        Arc::new(AtomicBool::new(true)),
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(AtomicBool::new(false)),
    );
    let (b, r, s) = (b_ready.clone(), requests.clone(), stop.clone());
    std::thread::spawn(move || {
        while !s.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((conn, _)) => {
                    let _ = conn.set_nonblocking(false);
                    let (b, r) = (b.clone(), r.clone());
                    std::thread::spawn(move || serve(conn, &b, &r));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    Ok(ApiServer {
        addr,
        b_ready,
        requests,
        stop,
    })
}

fn replica(ip: Ipv4Addr, api_port: u16, s1: SocketAddr, s2: SocketAddr) -> anyhow::Result<Haproxy> {
    Haproxy::start(&format!(
        "global
    log stdout format raw local0
    stats socket {{{{RUNTIME_SOCKET}}}} mode 600 level admin
    stats socket ipv4@{ip}:{api_port} level admin
    stats timeout 30s

defaults
    log global
    mode tcp
    timeout connect 2s
    timeout client 60s
    timeout server 60s

listen egress
    bind 127.0.0.1:{{{{PORT0}}}}
    balance source
    hash-type consistent
    default-server weight 100 check inter 300ms fall 2 rise 1
    server s1 {s1}
    server s2 {s2}
"
    ))
}

fn admin_state(h: &Haproxy, server: &str) -> String {
    h.show_servers_state()
        .ok()
        .and_then(|rows| {
            rows.into_iter()
                .find(|r| r.get("srv_name").map(String::as_str) == Some(server))
                .and_then(|r| r.get("srv_admin_state").cloned())
        })
        .unwrap_or_default()
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
    let api = api_server()?;
    let dir = tempfile::tempdir()?;
    let script = egress_e2e::executor::write_script(dir.path())?;
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
            api = api.addr,
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
            maint_seen[i] |= admin_state(h, "s1") == "1";
        }
        egress_e2e::executor::serve_restart(dir.path(), "s1", |ip| s1.restart(ip))?;
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = run
        .join()
        .map_err(|_| anyhow::anyhow!("rotate thread panicked"))??;
    let text = egress_e2e::executor::output_text(&out);
    println!("ROTATE with discovery:\n{text}");
    anyhow::ensure!(out.status.success(), "rotate failed:\n{text}");
    assert_eq!(
        maint_seen,
        [true, true],
        "maint was not set on every discovered replica"
    );
    for h in [&a, &b] {
        assert_eq!(admin_state(h, "s1"), "0", "s1 not ready again on every replica");
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
    assert!(
        api.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .all(|r| r.starts_with(PODS_PATH)),
        "unexpected API requests: {:?}",
        api.requests.lock().unwrap_or_else(|e| e.into_inner())
    );

    // One replica not Ready: refused before anything changes (exit 1: a service the rotation needs is
    // unavailable), s2 untouched everywhere.
    api.b_ready.store(false, Ordering::SeqCst);
    let out = checker(&["rotate", "egress/s2"])?;
    let text = egress_e2e::executor::output_text(&out);
    println!("ROTATE with a replica not Ready:\n{text}");
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("haproxy-egress-b") && text.contains("not Ready"),
        "{text}"
    );
    for h in [&a, &b] {
        assert_eq!(admin_state(h, "s2"), "0");
    }
    Ok(())
}
