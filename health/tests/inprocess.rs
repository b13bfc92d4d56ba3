//! In-process tests: the probe and the whole `run()` against small tokio servers written here
//! (refusing, black-holing, answering 503, forwarding CONNECT from a chosen source address, echoing
//! the peer IP over HTTP and HTTPS). The real-HAProxy tests live in tests/tests/checker_e2e.rs.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use egress_harness::http_util::read_head;
use egress_harness::metrics;
use egress_health::config::Config;
use egress_health::probe::Prober;
use egress_health::probe::class::FailureClass;
use egress_health::{ExitIpEvent, Transition, TransitionObserver};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, Debug)]
enum Mode {
    Status(u16),
    BlackHole,
    /// A working CONNECT proxy whose outgoing connections leave from this source address.
    Forward(IpAddr),
}

async fn fake_proxy(mode: Mode) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                match mode {
                    Mode::BlackHole => {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                    Mode::Status(code) => {
                        let _ = read_head(&mut s).await;
                        let _ = s
                            .write_all(
                                format!("HTTP/1.1 {code} Nope\r\nContent-Length: 0\r\n\r\n").as_bytes(),
                            )
                            .await;
                    }
                    Mode::Forward(src) => {
                        let Some(request) = read_head(&mut s).await else {
                            return;
                        };
                        let Ok(target) = request.head.target.parse::<SocketAddr>() else {
                            return;
                        };
                        let sock = TcpSocket::new_v4().unwrap();
                        sock.bind(SocketAddr::new(src, 0)).unwrap();
                        match tokio::time::timeout(Duration::from_secs(1), sock.connect(target)).await {
                            Ok(Ok(mut up)) => {
                                if s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.is_ok() {
                                    let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
                                }
                            }
                            // gluetun: "If that fails it answers 503 with the error text".
                            _ => {
                                let _ = s.write_all(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

fn refused_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

async fn answer_echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S, peer: IpAddr) {
    if read_head(&mut s).await.is_none() {
        return;
    }
    let body = format!("{peer}\n");
    let _ = s
        .write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes())
        .await;
    let _ = s.shutdown().await;
}

/// An HTTP echo server answering the peer's IP.
async fn echo_http() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, peer)) = l.accept().await {
            tokio::spawn(answer_echo(s, peer.ip()));
        }
    });
    addr
}

/// An HTTPS echo server for "echo.test"; returns its address and the CA file to trust.
async fn echo_https() -> (SocketAddr, tempfile::NamedTempFile) {
    let ck = rcgen::generate_simple_self_signed(vec!["echo.test".to_owned()]).unwrap();
    let mut ca = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut ca, ck.cert.pem().as_bytes()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, peer)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(2), acceptor.accept(s)).await {
                    answer_echo(tls, peer.ip()).await;
                }
            });
        }
    });
    (addr, ca)
}

fn config(text: &str) -> Config {
    Config::from_toml(text).unwrap()
}

fn servers_toml(servers: &[(&str, SocketAddr)]) -> String {
    servers
        .iter()
        .map(|(n, a)| {
            format!("[[backends.servers]]\nbackend = \"egress\"\nname = \"{n}\"\naddress = \"{a}\"\n")
        })
        .collect()
}

#[tokio::test]
async fn probe_classifies_every_failure() {
    let echo = echo_http().await;
    let (tls_echo, ca) = echo_https().await;
    let good = fake_proxy(Mode::Forward("127.0.0.1".parse().unwrap())).await;
    let s503 = fake_proxy(Mode::Status(503)).await;
    let s407 = fake_proxy(Mode::Status(407)).await;
    let hole = fake_proxy(Mode::BlackHole).await;
    let refused = refused_addr();
    let cfg = config(&format!(
        "[tls]\nca_file = {:?}\n[[targets]]\naddress = \"{echo}\"\n[[targets]]\naddress = \"{tls_echo}\"\ntls = true\nserver_name = \"echo.test\"\n[[targets]]\naddress = \"{tls_echo}\"\ntls = true\nserver_name = \"wrong.test\"\n{}",
        ca.path(),
        servers_toml(&[("x", good)])
    ));
    let p = Prober::from_config(&cfg).unwrap();
    assert_eq!(p.probe(good, 0).await, Ok(()));
    assert_eq!(p.probe(good, 1).await, Ok(()), "verified TLS through the tunnel");
    assert_eq!(
        p.probe(good, 2).await,
        Err(FailureClass::Tls),
        "wrong name must fail verification"
    );
    assert_eq!(p.probe(refused, 0).await, Err(FailureClass::Refused));
    assert_eq!(
        p.probe(s503, 0).await.map_err(|c| c.as_str()),
        Err("connect-status-503")
    );
    assert_eq!(
        p.probe(s407, 0).await.map_err(|c| c.as_str()),
        Err("connect-status-407")
    );
    let t = Instant::now();
    assert_eq!(
        p.probe(hole, 0).await,
        Err(FailureClass::ConnectTimeoutAfterAccept)
    );
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_millis(900),
        "{took:?}"
    );
}

#[derive(Default)]
struct Recorder {
    transitions: Mutex<Vec<Transition>>,
    exit: Mutex<Vec<ExitIpEvent>>,
}

impl TransitionObserver for Recorder {
    fn on_transition(&self, t: &Transition) {
        self.transitions.lock().unwrap().push(t.clone());
    }
    fn on_exit_ip(&self, e: &ExitIpEvent) {
        self.exit.lock().unwrap().push(e.clone());
    }
}

/// One agent-check exchange, as HAProxy does it.
async fn agent(addr: SocketAddr, send: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(send).await.unwrap();
    let mut out = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_string(&mut out)).await;
    out
}

async fn wait_reply(addr: SocketAddr, server: &str, want: &str, within: Duration) -> Duration {
    let t = Instant::now();
    let mut last = String::new();
    while t.elapsed() < within {
        last = agent(addr, format!("egress/{server}\n").as_bytes()).await;
        if last == want {
            return t.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{server}: wanted {want:?}, last reply {last:?}");
}

struct Running {
    agent: SocketAddr,
    registry: prometheus::Registry,
    token: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), egress_health::Error>>,
}

async fn start(cfg: Config, observer: Arc<dyn TransitionObserver>) -> Running {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent = l.local_addr().unwrap();
    let registry = prometheus::Registry::new();
    let token = CancellationToken::new();
    let (r, t) = (registry.clone(), token.clone());
    let task = tokio::spawn(async move {
        let maint = egress_health::maint_api(&cfg.backends, None);
        egress_health::run(cfg, maint, l, observer, &r, t).await
    });
    Running {
        agent,
        registry,
        token,
        task,
    }
}

impl Running {
    async fn stop(self) {
        self.token.cancel();
        let r = tokio::time::timeout(Duration::from_secs(8), self.task)
            .await
            .expect("run() stops");
        r.unwrap().unwrap();
    }

    /// The sum of the `name` samples with `labels`, as a scrape of the registry would show them.
    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut text = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &self.registry.gather(),
            &mut text,
        )
        .unwrap();
        metrics::sum(&String::from_utf8_lossy(&text), name, labels)
    }
}

const FAST: &str = "[probe]\ninterval = \"100ms\"\nconnect_timeout = \"200ms\"\nresponse_timeout = \"200ms\"\n[decision]\nramp = \"1s\"\n";

#[tokio::test]
async fn run_quarantines_restores_and_answers_haproxy() {
    let echo = echo_http().await;
    let good = fake_proxy(Mode::Forward("127.0.0.1".parse().unwrap())).await;
    let bad = fake_proxy(Mode::Status(503)).await;
    let hole = fake_proxy(Mode::BlackHole).await;
    let refused = refused_addr();
    let cfg = config(&format!(
        "{FAST}max_quarantined_share = 1.0\n[[targets]]\naddress = \"{echo}\"\n{}",
        servers_toml(&[("good", good), ("bad", bad), ("hole", hole), ("refused", refused)])
    ));
    let rec = Arc::new(Recorder::default());
    let r = start(cfg, rec.clone()).await;

    wait_reply(r.agent, "good", "up 100%\n", Duration::from_secs(3)).await;
    wait_reply(
        r.agent,
        "bad",
        "down #connect-status-503\n",
        Duration::from_secs(3),
    )
    .await;
    wait_reply(
        r.agent,
        "hole",
        "down #connect-timeout-after-accept\n",
        Duration::from_secs(4),
    )
    .await;
    wait_reply(r.agent, "refused", "down #refused\n", Duration::from_secs(3)).await;

    // The responder: unknown name -> a line that changes nothing; garbage and overlong -> no reply.
    assert_eq!(agent(r.agent, b"egress/nope\n").await, "#unknown-server\n");
    assert_eq!(agent(r.agent, b"\x16\x03\x01garbage\n").await, "");
    assert_eq!(agent(r.agent, &[b'a'; 300]).await, "");
    assert_eq!(
        agent(r.agent, b"egress/bad\r\n").await,
        "down #connect-status-503\n"
    );
    // No newline, but the peer half-closes: still answered.
    let mut s = TcpStream::connect(r.agent).await.unwrap();
    s.write_all(b"egress/good").await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert_eq!(out, "up 100%\n");
    // No newline and no half-close (an `agent-send` missing its "\n"): answered at the read
    // deadline rather than never.
    let t = Instant::now();
    assert_eq!(agent(r.agent, b"egress/good").await, "up 100%\n");
    assert!(t.elapsed() >= Duration::from_millis(900), "{:?}", t.elapsed());
    // A silent client is cut at the read deadline (1 s), without a reply.
    let t = Instant::now();
    assert_eq!(agent(r.agent, b"").await, "");
    assert!(t.elapsed() < Duration::from_millis(2500));
    assert!(r.metric("egress_checker_agent_requests_total", &[("result", "garbage")]) >= 1.0);
    assert!(r.metric("egress_checker_agent_requests_total", &[("result", "overlong")]) >= 1.0);
    assert!(r.metric("egress_checker_agent_requests_total", &[("result", "unknown")]) >= 1.0);

    {
        let t = rec.transitions.lock().unwrap();
        let q: Vec<_> = t
            .iter()
            .filter(|t| t.to == egress_health::HealthKind::Quarantined)
            .collect();
        assert_eq!(q.len(), 3, "{t:?}");
        assert!(q.iter().all(|t| t.consecutive_failures >= 5));
    }
    r.stop().await;
}

#[tokio::test]
async fn restore_ramps_weight_after_one_success() {
    let echo = echo_http().await;
    // A proxy we can switch: first it answers 503, then it forwards.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let h = healthy.clone();
    let good = fake_proxy(Mode::Forward("127.0.0.1".parse().unwrap())).await;
    let bad = fake_proxy(Mode::Status(503)).await;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let to = if h.load(std::sync::atomic::Ordering::SeqCst) {
                good
            } else {
                bad
            };
            tokio::spawn(async move {
                if let Ok(mut up) = TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
                }
            });
        }
    });
    let other = fake_proxy(Mode::Forward("127.0.0.1".parse().unwrap())).await;
    let cfg = config(&format!(
        "{FAST}[[targets]]\naddress = \"{echo}\"\n{}",
        servers_toml(&[("flip", addr), ("other", other)])
    ));
    let r = start(cfg, Arc::new(egress_health::LogObserver)).await;
    wait_reply(
        r.agent,
        "flip",
        "down #connect-status-503\n",
        Duration::from_secs(3),
    )
    .await;
    healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    // One success restores, at the ramp's starting weight; the ramp reaches 100 % after 1 s.
    let t = Instant::now();
    let mut seen = Vec::new();
    while t.elapsed() < Duration::from_secs(3) {
        let reply = agent(r.agent, b"egress/flip\n").await;
        if seen.last() != Some(&reply) {
            seen.push(reply.clone());
        }
        if reply == "up 100%\n" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen.last().map(String::as_str), Some("up 100%\n"), "{seen:?}");
    let ramp: Vec<u32> = seen
        .iter()
        .filter_map(|s| s.strip_prefix("up ")?.strip_suffix("%\n")?.parse().ok())
        .collect();
    assert!(ramp.len() >= 3, "a visible ramp: {seen:?}");
    assert!(ramp[0] <= 20, "starts near 10 %: {seen:?}");
    assert!(ramp.windows(2).all(|w| w[0] < w[1]), "monotonic: {seen:?}");
    r.stop().await;
}

#[tokio::test]
async fn guard_keeps_half_the_pool_up() {
    let echo = echo_http().await;
    let good = fake_proxy(Mode::Forward("127.0.0.1".parse().unwrap())).await;
    let bad = fake_proxy(Mode::Status(502)).await;
    let refused = refused_addr();
    let mut servers = vec![("good", good)];
    let names = ["b1", "b2", "b3"];
    for n in names {
        servers.push((n, if n == "b3" { refused } else { bad }));
    }
    let cfg = config(&format!(
        "{FAST}[[targets]]\naddress = \"{echo}\"\n{}",
        servers_toml(&servers)
    ));
    let r = start(cfg, Arc::new(egress_health::LogObserver)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut down = 0;
    for n in names {
        if agent(r.agent, format!("egress/{n}\n").as_bytes())
            .await
            .starts_with("down")
        {
            down += 1;
        }
    }
    assert_eq!(down, 2, "50 % of 4 servers");
    assert_eq!(r.metric("egress_checker_quarantine_guard_active", &[]), 1.0);
    assert_eq!(r.metric("egress_checker_quarantine_guard_held_servers", &[]), 1.0);
    r.stop().await;
}

#[tokio::test]
async fn control_probe_excuses_a_target_outage() {
    let dead_target = refused_addr();
    // Both proxies answer 503 because the target is down; so does the checker's own direct path.
    let p1 = fake_proxy(Mode::Forward("127.0.0.1".parse().unwrap())).await;
    let p2 = fake_proxy(Mode::Forward("127.0.0.1".parse().unwrap())).await;
    let cfg = config(&format!(
        "{FAST}[[targets]]\naddress = \"{dead_target}\"\n{}",
        servers_toml(&[("p1", p1), ("p2", p2)])
    ));
    let r = start(cfg, Arc::new(egress_health::LogObserver)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for n in ["p1", "p2"] {
        let reply = agent(r.agent, format!("egress/{n}\n").as_bytes()).await;
        assert!(!reply.starts_with("down"), "{n}: {reply:?}");
    }
    assert!(
        r.metric(
            "egress_checker_probes_total",
            &[("result", "connect-status-503"), ("verdict", "excused")]
        ) >= 10.0
    );
    assert_eq!(
        r.metric("egress_checker_probes_total", &[("verdict", "counted")]),
        0.0
    );
    r.stop().await;
}

#[tokio::test]
async fn exit_ip_leak_quarantines_at_once_and_changes_are_reported() {
    let echo = echo_http().await;
    let (tls_echo, ca) = echo_https().await;
    // The checker reaches the echo from 127.0.0.1; a proxy exiting from 127.0.0.1 is a leak.
    let leaky = fake_proxy(Mode::Forward("127.0.0.1".parse().unwrap())).await;
    let clean = fake_proxy(Mode::Forward("127.0.0.2".parse().unwrap())).await;
    let cfg = config(&format!(
        "{FAST}[tls]\nca_file = {:?}\n[exit_ip]\naddress = \"{tls_echo}\"\ntls = true\nserver_name = \"echo.test\"\ninterval = \"1s\"\n[[targets]]\naddress = \"{echo}\"\n{}",
        ca.path(),
        servers_toml(&[("leaky", leaky), ("clean", clean)])
    ));
    let rec = Arc::new(Recorder::default());
    let r = start(cfg, rec.clone()).await;
    let took = wait_reply(r.agent, "leaky", "down #exit-ip-leak\n", Duration::from_secs(2)).await;
    assert!(
        took < Duration::from_secs(1),
        "a leak quarantines at once: {took:?}"
    );
    wait_reply(r.agent, "clean", "up 100%\n", Duration::from_secs(2)).await;
    let events = rec.exit.lock().unwrap().clone();
    assert!(events.iter().any(|e| matches!(e, ExitIpEvent::Leak { server, ip, .. } if &**server == "leaky" && ip.to_string() == "127.0.0.1")), "{events:?}");
    assert!(events.iter().any(|e| matches!(e, ExitIpEvent::Observed { server, ip, .. } if &**server == "clean" && ip.to_string() == "127.0.0.2")), "{events:?}");
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, ExitIpEvent::Leak { server, .. } if &**server == "clean"))
    );
    r.stop().await;
}
