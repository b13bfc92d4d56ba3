//! The webhook through a real CONNECT proxy: the harness's tinyproxy, whose outgoing connections
//! leave from their own loopback address, in front of an HTTPS webhook stand-in with its own CA
//! (a certificate for 127.0.0.1). The stand-in records the peer of every request, so "went through
//! the proxy" is the proxy's exit address at the webhook, and tinyproxy's log names the tunnel.
//!
//! Two ways in: an explicit [`Proxy::Url`], and `HTTPS_PROXY` from the environment, in a child
//! process (this test binary run again with one ignored test selected): setting variables in the
//! multi-threaded test process itself would race with every other test reading them.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use egress_common::http1;
use egress_harness::tinyproxy::Tinyproxy;
use egress_http::{Client, Proxy, WebhookUrl};
use rustls::pki_types::pem::PemObject as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const SECRET_PATH: &str = "/services/T0/B0/s3cr3t";
const CHILD_TEST: &str = "child_posts_through_the_environment_proxy";

/// One request as the stand-in saw it.
#[derive(Clone, Debug)]
struct Seen {
    peer: SocketAddr,
    method: String,
    target: String,
    body: Vec<u8>,
}

/// The HTTPS webhook stand-in: a certificate for 127.0.0.1 signed by a CA of its own (PEM), every
/// request recorded and answered `200 ok`.
struct Hook {
    addr: SocketAddr,
    ca_pem: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    _runtime: tokio::runtime::Runtime,
}

impl Hook {
    fn start() -> anyhow::Result<Hook> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        use rcgen::{
            BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
            KeyUsagePurpose,
        };
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, &ca_key);
        let leaf_key = KeyPair::generate()?;
        let mut leaf_params = CertificateParams::new(vec!["127.0.0.1".to_owned()])?;
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = leaf_params.signed_by(&leaf_key, &issuer)?;
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(vec![leaf.der().clone()], key)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let record = seen.clone();
        runtime.spawn(async move {
            while let Ok((tcp, peer)) = listener.accept().await {
                let (acceptor, record) = (acceptor.clone(), record.clone());
                tokio::spawn(async move {
                    let serve = async {
                        let mut tls = acceptor.accept(tcp).await.ok()?;
                        let mut buf = Vec::new();
                        let head = http1::read_request_head(&mut tls, &mut buf, 16 * 1024)
                            .await
                            .ok()?;
                        let len = head.len + usize::try_from(head.headers.content_length().ok()??).ok()?;
                        let mut chunk = [0u8; 4096];
                        while buf.len() < len {
                            let n = tls.read(&mut chunk).await.ok()?;
                            if n == 0 {
                                return None;
                            }
                            buf.extend_from_slice(&chunk[..n]);
                        }
                        record.lock().unwrap().push(Seen {
                            peer,
                            method: head.method,
                            target: head.target,
                            body: buf.get(head.len..len)?.to_vec(),
                        });
                        tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .await
                            .ok()?;
                        tls.shutdown().await.ok()
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(10), serve).await;
                });
            }
        });
        Ok(Hook {
            addr,
            ca_pem: ca.pem(),
            seen,
            _runtime: runtime,
        })
    }

    fn url(&self) -> String {
        format!("https://{}{SECRET_PATH}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A client trusting the CA in `pem`.
fn client_trusting(pem: &str, proxy: Proxy) -> anyhow::Result<Client> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots.add(cert?)?;
    }
    Ok(Client::with_tls(proxy, &egress_http::tls_config_with(roots))?)
}

/// Posts `{"text":"via proxy"}` to `url` and returns the status.
fn post(client: &Client, url: &str) -> anyhow::Result<u16> {
    let url = WebhookUrl::parse(url)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answer =
        runtime.block_on(client.post_json(&url, br#"{"text":"via proxy"}"#, Duration::from_secs(10)))?;
    Ok(answer.status)
}

/// tinyproxy's log lines for CONNECTs to `addr`.
fn tunnels_to(proxy: &Tinyproxy, addr: SocketAddr) -> usize {
    proxy
        .logs()
        .lines()
        .filter(|l| l.contains(&format!("CONNECT {addr} ")))
        .count()
}

fn assert_arrived_via(hook: &Hook, n: usize, exit: Ipv4Addr) {
    let seen = hook.seen();
    assert_eq!(seen.len(), n, "{seen:?}");
    let last = &seen[n - 1];
    assert_eq!(
        (last.method.as_str(), last.target.as_str(), last.body.as_slice()),
        ("POST", SECRET_PATH, &br#"{"text":"via proxy"}"#[..])
    );
    assert_eq!(last.peer.ip(), exit, "the post did not come through the proxy");
}

#[test]
fn https_webhook_through_an_explicit_connect_proxy() -> anyhow::Result<()> {
    const EXIT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 62);
    let hook = Hook::start()?;
    let proxy = Tinyproxy::start(EXIT)?;
    let client = client_trusting(&hook.ca_pem, Proxy::Url(format!("http://{}", proxy.addr())))?;
    assert_eq!(post(&client, &hook.url())?, 200);
    assert_arrived_via(&hook, 1, EXIT);
    assert_eq!(tunnels_to(&proxy, hook.addr), 1, "{}", proxy.logs());
    // A CONNECT tunnel: the proxy saw the host and port, never the secret path.
    assert!(!proxy.logs().contains("s3cr3t"), "{}", proxy.logs());
    // Direct, the same client kind goes straight to the webhook (its peer is 127.0.0.1).
    assert_eq!(
        post(&client_trusting(&hook.ca_pem, Proxy::Direct)?, &hook.url())?,
        200
    );
    assert_arrived_via(&hook, 2, Ipv4Addr::LOCALHOST);
    assert_eq!(tunnels_to(&proxy, hook.addr), 1);
    Ok(())
}

/// `HTTPS_PROXY` and `NO_PROXY` as the checker's environment would set them, in a child process.
#[test]
fn https_webhook_through_the_environment_proxy() -> anyhow::Result<()> {
    const EXIT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 63);
    let hook = Hook::start()?;
    let proxy = Tinyproxy::start(EXIT)?;
    let dir = tempfile::tempdir()?;
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &hook.ca_pem)?;
    let child = |extra: &[(&str, &str)]| -> anyhow::Result<()> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args([
            CHILD_TEST,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ]);
        for var in [
            "HTTP_PROXY",
            "http_proxy",
            "HTTPS_PROXY",
            "https_proxy",
            "ALL_PROXY",
            "all_proxy",
            "NO_PROXY",
            "no_proxy",
            "REQUEST_METHOD",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("EGRESS_HTTP_TEST_URL", hook.url())
            .env("EGRESS_HTTP_TEST_CA", &ca)
            .env("HTTPS_PROXY", format!("http://{}", proxy.addr()))
            .envs(extra.iter().copied());
        let out = cmd.output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        anyhow::ensure!(out.status.success(), "the child failed: {text}");
        anyhow::ensure!(text.contains("1 passed"), "the child test did not run: {text}");
        Ok(())
    };
    // Loopback is not exempt by itself: the post goes through the proxy.
    child(&[])?;
    assert_arrived_via(&hook, 1, EXIT);
    assert_eq!(tunnels_to(&proxy, hook.addr), 1, "{}", proxy.logs());
    // NO_PROXY lists the webhook's address: direct.
    child(&[("NO_PROXY", "localhost,127.0.0.0/8")])?;
    assert_arrived_via(&hook, 2, Ipv4Addr::LOCALHOST);
    assert_eq!(tunnels_to(&proxy, hook.addr), 1, "{}", proxy.logs());
    Ok(())
}

/// The child half of [`https_webhook_through_the_environment_proxy`], run by it with the
/// environment set; on its own (no `EGRESS_HTTP_TEST_URL`) it has nothing to do.
#[test]
#[ignore = "run by https_webhook_through_the_environment_proxy in a child process"]
fn child_posts_through_the_environment_proxy() -> anyhow::Result<()> {
    let Ok(url) = std::env::var("EGRESS_HTTP_TEST_URL") else {
        return Ok(());
    };
    let pem = std::fs::read_to_string(std::env::var("EGRESS_HTTP_TEST_CA")?)?;
    assert_eq!(post(&client_trusting(&pem, Proxy::FromEnv)?, &url)?, 200);
    Ok(())
}
