//! The agent over real TCP sockets: `egress_spoa::run` on 127.0.0.1:0, driven by a SPOP client that
//! speaks like HAProxy 2.6 and 3.x.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use egress_common::client_hash::HashKey;
use egress_spoa::attribution::{self, AggregatorConfig, AttributionRow, AttributionSink};
use egress_spoa::codec::SpopCodec;
use egress_spoa::connection::ConnectionConfig;
use egress_spoa::exit_ip::ExitIps;
use egress_spoa::frame::ack::{Action, decode_actions};
use egress_spoa::frame::kv::encode_pair;
use egress_spoa::frame::notify::{encode_message, encode_notify};
use egress_spoa::frame::{Disconnect, Flags, Frame, FrameType, FrameWriter, Scope, Status, TypedData};
use egress_spoa::metrics::Metrics;
use egress_spoa::{Agent, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

const KEY_HEX: &str = "00112233445566778899aabbccddeeff";
const STEP: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Collect(Mutex<Vec<AttributionRow>>);
impl AttributionSink for Collect {
    fn submit(&self, rows: Vec<AttributionRow>) {
        self.0.lock().unwrap().extend(rows);
    }
}

struct Harness {
    addr: SocketAddr,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<()>,
    aggregator: tokio::task::JoinHandle<()>,
    aggregator_stop: CancellationToken,
    sink: Arc<Collect>,
    metrics: Arc<Metrics>,
    exit_ips: Arc<ExitIps>,
}

impl Harness {
    async fn start(cfg: ServerConfig) -> Harness {
        let metrics = Arc::new(Metrics::new().unwrap());
        let exit_ips = Arc::new(ExitIps::new());
        exit_ips.replace(HashMap::from([(
            ("egress".to_owned(), "s1".to_owned()),
            IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
        )]));
        let (tx, rx) = attribution::channel(1024, metrics.clone());
        let sink = Arc::new(Collect::default());
        let aggregator_stop = CancellationToken::new();
        let aggregator = tokio::spawn(attribution::run_aggregator(
            rx,
            sink.clone(),
            AggregatorConfig {
                flush_interval: Duration::from_secs(3600),
                max_keys: 1000,
            },
            aggregator_stop.clone(),
            metrics.clone(),
        ));
        let agent = Arc::new(Agent::new(
            HashKey::from_hex(KEY_HEX).unwrap(),
            exit_ips.clone(),
            tx,
            metrics.clone(),
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let server =
            tokio::spawn(async move { egress_spoa::run(listener, agent, cfg, token).await.unwrap() });
        Harness {
            addr,
            shutdown,
            server,
            aggregator,
            aggregator_stop,
            sink,
            metrics,
            exit_ips,
        }
    }

    async fn stop(self) -> Vec<AttributionRow> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.server)
            .await
            .unwrap()
            .unwrap();
        self.aggregator_stop.cancel();
        tokio::time::timeout(STEP, self.aggregator)
            .await
            .unwrap()
            .unwrap();
        self.sink.0.lock().unwrap().clone()
    }
}

struct Client {
    s: TcpStream,
    codec: SpopCodec,
    buf: BytesMut,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        Client {
            s,
            codec: SpopCodec::new(1 << 20),
            buf: BytesMut::new(),
        }
    }

    async fn hello(addr: SocketAddr) -> Client {
        let mut c = Client::connect(addr).await;
        c.send(&hello(16380, false, "pipelining")).await;
        let f = c.recv().await.expect("AGENT-HELLO");
        assert_eq!(f.kind, FrameType::AgentHello);
        c
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.unwrap();
    }

    /// The next frame, or None on EOF/reset.
    async fn recv(&mut self) -> Option<Frame> {
        tokio::time::timeout(STEP, async {
            loop {
                if let Some(f) = self.codec.decode(&mut self.buf).unwrap() {
                    return Some(f);
                }
                match self.s.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("agent answered in time")
    }
}

fn hello(max: u32, healthcheck: bool, caps: &str) -> Vec<u8> {
    let mut out = BytesMut::new();
    let mut w = FrameWriter::begin(&mut out, FrameType::HaproxyHello, Flags::FIN, 0, 0);
    encode_pair(b"supported-versions", TypedData::String(b"2.0"), w.payload());
    encode_pair(b"max-frame-size", TypedData::Uint32(max), w.payload());
    encode_pair(b"capabilities", TypedData::String(caps.as_bytes()), w.payload());
    if healthcheck {
        encode_pair(b"healthcheck", TypedData::Bool(true), w.payload());
    }
    w.finish(16380).unwrap();
    out.to_vec()
}

fn attribution_notify(sid: u64, fid: u64, src: Ipv4Addr, id: Option<&[u8]>, server: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    let mut args: Vec<(&[u8], TypedData<'_>)> = vec![
        (b"", TypedData::Ipv4(src)), // `args src` is unnamed on the wire
        (b"backend", TypedData::String(b"egress")),
        (b"server", TypedData::String(server)),
    ];
    if let Some(id) = id {
        args.push((b"id", TypedData::String(id)));
    }
    encode_message(b"egress-attribution", &args, &mut m);
    let mut out = BytesMut::new();
    encode_notify(sid, fid, &m, &mut out, 16380).unwrap();
    out.to_vec()
}

fn txn_vars(f: &Frame) -> HashMap<Vec<u8>, String> {
    decode_actions(&f.payload)
        .unwrap()
        .into_iter()
        .map(|a| match a {
            Action::SetVar {
                scope: Scope::Txn,
                name,
                value,
            } => (
                name.to_vec(),
                match value {
                    TypedData::String(s) => String::from_utf8(s.to_vec()).unwrap(),
                    TypedData::Ipv4(ip) => ip.to_string(),
                    other => format!("{other:?}"),
                },
            ),
            other => panic!("unexpected action {other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn attribution_answers_hash_and_exit_ip_and_is_aggregated() {
    let h = Harness::start(ServerConfig::default()).await;
    let key = HashKey::from_hex(KEY_HEX).unwrap();
    let mut c = Client::hello(h.addr).await;

    c.send(&attribution_notify(7, 1, Ipv4Addr::new(10, 0, 0, 1), None, b"s1"))
        .await;
    let ack = c.recv().await.unwrap();
    assert_eq!(
        (ack.kind, ack.flags, ack.stream_id, ack.frame_id),
        (FrameType::Ack, Flags::FIN, 7, 1)
    );
    let vars = txn_vars(&ack);
    assert_eq!(vars[&b"client_hash".to_vec()], key.hash(b"10.0.0.1").to_string());
    assert_eq!(vars[&b"exit_ip".to_vec()], "203.0.113.7");

    // With an identity, the identity is hashed, not the address; unknown server: exit_ip is the
    // explicit "unknown", never an IP.
    c.send(&attribution_notify(
        9,
        1,
        Ipv4Addr::new(10, 0, 0, 1),
        Some(b"tenant-42"),
        b"s2",
    ))
    .await;
    let vars = txn_vars(&c.recv().await.unwrap());
    assert_eq!(vars[&b"client_hash".to_vec()], key.hash(b"tenant-42").to_string());
    assert_eq!(vars[&b"exit_ip".to_vec()], "unknown");

    // A refreshed exit-IP map is picked up by the open connection.
    h.exit_ips.replace(HashMap::from([(
        ("egress".into(), "s2".into()),
        IpAddr::from([198, 51, 100, 2]),
    )]));
    c.send(&attribution_notify(
        11,
        1,
        Ipv4Addr::new(10, 0, 0, 1),
        Some(b"tenant-42"),
        b"s2",
    ))
    .await;
    assert_eq!(
        txn_vars(&c.recv().await.unwrap())[&b"exit_ip".to_vec()],
        "198.51.100.2"
    );

    drop(c);
    let rows = h.stop().await;
    let total: u64 = rows.iter().map(|r| r.requests).sum();
    assert_eq!(total, 3);
    let r = rows.iter().find(|r| &*r.server == "s1").unwrap();
    assert_eq!(
        (r.client_hash, &*r.backend, r.exit_ip),
        (
            key.hash(b"10.0.0.1"),
            "egress",
            Some(IpAddr::from([203, 0, 113, 7]))
        )
    );
}

#[tokio::test]
async fn pipelined_notifies_with_2x_and_3x_ids_are_all_acked_with_their_ids() {
    let h = Harness::start(ServerConfig::default()).await;
    let mut c = Client::hello(h.addr).await;
    // 2.6: sid = stream uniq_id, fid counts per stream; 3.x: odd sids, fid 1. Sent in one write.
    let mut ids: Vec<(u64, u64)> = (0..60).map(|i| (100_000 + i / 3, 1 + i % 3)).collect();
    ids.extend((0..60).map(|i| (2 * i + 1, 1)));
    ids.push((u64::MAX, u64::MAX));
    let mut burst = Vec::new();
    for &(sid, fid) in &ids {
        burst.extend(attribution_notify(
            sid,
            fid,
            Ipv4Addr::new(10, 0, 0, 2),
            None,
            b"s1",
        ));
    }
    c.send(&burst).await;
    let mut got = HashSet::new();
    for _ in 0..ids.len() {
        let f = c.recv().await.unwrap();
        assert_eq!(f.kind, FrameType::Ack);
        assert!(got.insert((f.stream_id, f.frame_id)), "duplicate ACK");
    }
    assert_eq!(got, ids.into_iter().collect::<HashSet<_>>());
    drop(c);
    h.stop().await;
}

#[tokio::test]
async fn odd_notifies_get_harmless_acks_and_metrics() {
    let h = Harness::start(ServerConfig::default()).await;
    let mut c = Client::hello(h.addr).await;
    // Empty NOTIFY (3.1+ when every message's ACL is false).
    let mut out = BytesMut::new();
    encode_notify(1, 1, &[], &mut out, 16380).unwrap();
    // Unknown message.
    let mut m = Vec::new();
    encode_message(b"something-else", &[(b"x", TypedData::Null)], &mut m);
    encode_notify(3, 1, &m, &mut out, 16380).unwrap();
    // Attribution with missing server and NULL src (sample not available).
    let mut m = Vec::new();
    encode_message(
        b"egress-attribution",
        &[
            (b"src", TypedData::Null),
            (b"backend", TypedData::String(b"egress")),
        ],
        &mut m,
    );
    encode_notify(5, 1, &m, &mut out, 16380).unwrap();
    c.send(&out).await;
    let want = ["empty", "unknown-message", "missing-args"];
    for (i, status) in want.iter().enumerate() {
        let f = c.recv().await.unwrap();
        assert_eq!((f.kind, f.stream_id), (FrameType::Ack, 2 * i as u64 + 1));
        assert_eq!(txn_vars(&f)[&b"status".to_vec()], *status);
    }
    assert_eq!(h.metrics.msg_empty.get(), 1);
    assert_eq!(h.metrics.msg_unknown.get(), 1);
    assert_eq!(h.metrics.msg_bad_args.get(), 1);
    assert_eq!(h.metrics.notify_received.get(), 3);
    assert_eq!(h.metrics.ack_sent.get(), 3);
    drop(c);
    h.stop().await;
}

#[tokio::test]
async fn healthcheck_hello_is_answered_then_closed() {
    let h = Harness::start(ServerConfig::default()).await;
    let mut c = Client::connect(h.addr).await;
    c.send(&hello(16380, true, "")).await;
    let f = c.recv().await.unwrap();
    assert_eq!((f.kind, f.stream_id, f.frame_id), (FrameType::AgentHello, 0, 0));
    assert!(c.recv().await.is_none(), "closed after the health check");
    h.stop().await;
}

#[tokio::test]
async fn handshake_negotiates_min_frame_size_and_pipelining_only() {
    let h = Harness::start(ServerConfig::default()).await;
    let mut c = Client::connect(h.addr).await;
    c.send(&hello(1024, false, "pipelining,async")).await;
    let f = c.recv().await.unwrap();
    let kv: HashMap<Vec<u8>, TypedData<'_>> = egress_spoa::frame::kv::KvIter::new(&f.payload)
        .map(|r| r.map(|(k, v)| (k.to_vec(), v)))
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(kv[&b"version".to_vec()], TypedData::String(b"2.0"));
    assert_eq!(kv[&b"max-frame-size".to_vec()], TypedData::Uint32(1024));
    assert_eq!(kv[&b"capabilities".to_vec()], TypedData::String(b"pipelining"));
    // A frame above the negotiated 1024 is refused with status 3.
    let mut big = BytesMut::new();
    let mut w = FrameWriter::begin(&mut big, FrameType::Notify, Flags::FIN, 1, 1);
    w.payload().extend_from_slice(&[0u8; 1100]);
    w.finish(4096).unwrap();
    c.send(&big).await;
    let f = c.recv().await.unwrap();
    assert_eq!(f.kind, FrameType::AgentDisconnect);
    assert_eq!(Disconnect::parse(&f.payload).unwrap().status, Status::TOO_BIG);
    assert!(c.recv().await.is_none());
    h.stop().await;
}

async fn expect_disconnect(c: &mut Client, status: Status) {
    let f = c.recv().await.expect("AGENT-DISCONNECT");
    assert_eq!(
        (f.kind, f.stream_id, f.frame_id),
        (FrameType::AgentDisconnect, 0, 0)
    );
    assert!(f.flags.fin());
    assert_eq!(Disconnect::parse(&f.payload).unwrap().status, status);
    assert!(
        c.recv().await.is_none(),
        "the agent closes after AGENT-DISCONNECT"
    );
}

#[tokio::test]
async fn protocol_errors_end_with_the_right_status_code() {
    let h = Harness::start(ServerConfig::default()).await;
    // NOTIFY before HELLO: invalid (4).
    let mut c = Client::connect(h.addr).await;
    c.send(&attribution_notify(1, 1, Ipv4Addr::LOCALHOST, None, b"s1"))
        .await;
    expect_disconnect(&mut c, Status::INVALID).await;
    // Unsupported version (8).
    let mut c = Client::connect(h.addr).await;
    let mut out = BytesMut::new();
    let mut w = FrameWriter::begin(&mut out, FrameType::HaproxyHello, Flags::FIN, 0, 0);
    encode_pair(b"supported-versions", TypedData::String(b"1.0"), w.payload());
    encode_pair(b"max-frame-size", TypedData::Uint32(16380), w.payload());
    w.finish(16380).unwrap();
    c.send(&out).await;
    expect_disconnect(&mut c, Status::BAD_VERSION).await;
    // Zero-length frame (4).
    let mut c = Client::hello(h.addr).await;
    c.send(&[0, 0, 0, 0]).await;
    expect_disconnect(&mut c, Status::INVALID).await;
    // Truncated KV list inside a NOTIFY (4).
    let mut c = Client::hello(h.addr).await;
    let mut out = BytesMut::new();
    encode_notify(1, 1, b"\x12egress-attribution\x03\x00\x06\x0a", &mut out, 16380).unwrap();
    c.send(&out).await;
    expect_disconnect(&mut c, Status::INVALID).await;
    // A NOTIFY without FIN: fragmentation is not supported (10).
    let mut c = Client::hello(h.addr).await;
    let mut out = BytesMut::new();
    FrameWriter::begin(&mut out, FrameType::Notify, Flags(0), 1, 1)
        .finish(16380)
        .unwrap();
    c.send(&out).await;
    expect_disconnect(&mut c, Status::FRAGMENTATION).await;
    // HAPROXY-DISCONNECT gets AGENT-DISCONNECT status 0.
    let mut c = Client::hello(h.addr).await;
    let mut out = BytesMut::new();
    Disconnect {
        status: Status::NORMAL,
        message: b"bye",
    }
    .encode(FrameType::HaproxyDisconnect, &mut out, 16380)
    .unwrap();
    c.send(&out).await;
    expect_disconnect(&mut c, Status::NORMAL).await;
    // Unknown frame types are skipped.
    let mut c = Client::hello(h.addr).await;
    let mut out = BytesMut::new();
    FrameWriter::begin(&mut out, FrameType::Unknown(42), Flags::FIN, 1, 1)
        .finish(16380)
        .unwrap();
    c.send(&out).await;
    c.send(&attribution_notify(3, 1, Ipv4Addr::LOCALHOST, None, b"s1"))
        .await;
    assert_eq!(c.recv().await.unwrap().stream_id, 3);
    drop(c);
    h.stop().await;
}

#[tokio::test]
async fn frames_arriving_one_byte_at_a_time_over_tcp() {
    let h = Harness::start(ServerConfig::default()).await;
    let mut c = Client::connect(h.addr).await;
    let mut stream = hello(16380, false, "pipelining");
    stream.extend(attribution_notify(5, 2, Ipv4Addr::new(10, 9, 8, 7), None, b"s1"));
    for b in stream {
        c.send(&[b]).await;
        tokio::task::yield_now().await;
    }
    assert_eq!(c.recv().await.unwrap().kind, FrameType::AgentHello);
    let ack = c.recv().await.unwrap();
    assert_eq!((ack.kind, ack.stream_id, ack.frame_id), (FrameType::Ack, 5, 2));
    drop(c);
    h.stop().await;
}

#[tokio::test]
async fn hello_deadline_and_idle_timeout_close_with_status_2() {
    let cfg = ServerConfig {
        connection: ConnectionConfig {
            hello_timeout: Duration::from_millis(200),
            idle_timeout: Duration::from_millis(300),
            ..ConnectionConfig::default()
        },
        ..ServerConfig::default()
    };
    let h = Harness::start(cfg).await;
    let mut silent = Client::connect(h.addr).await;
    expect_disconnect(&mut silent, Status::TIMEOUT).await;
    let mut idle = Client::hello(h.addr).await;
    expect_disconnect(&mut idle, Status::TIMEOUT).await;
    h.stop().await;
}

#[tokio::test]
async fn connection_limit_holds_extra_connections_until_a_slot_frees() {
    let cfg = ServerConfig {
        max_connections: 1,
        ..ServerConfig::default()
    };
    let h = Harness::start(cfg).await;
    let first = Client::hello(h.addr).await;
    let mut second = Client::connect(h.addr).await; // sits in the backlog
    second.send(&hello(16380, false, "pipelining")).await;
    let early = tokio::time::timeout(Duration::from_millis(300), second.s.read_buf(&mut second.buf)).await;
    assert!(
        early.is_err(),
        "second connection must not be served while the first holds the only slot"
    );
    drop(first);
    let f = second.recv().await.unwrap();
    assert_eq!(f.kind, FrameType::AgentHello);
    drop(second);
    h.stop().await;
}

#[tokio::test]
async fn shutdown_answers_in_flight_then_disconnects_normally() {
    let h = Harness::start(ServerConfig::default()).await;
    let mut c = Client::hello(h.addr).await;
    let shutdown = h.shutdown.clone();
    shutdown.cancel();
    // Still answered during the drain.
    c.send(&attribution_notify(
        21,
        1,
        Ipv4Addr::new(10, 0, 0, 3),
        None,
        b"s1",
    ))
    .await;
    let ack = c.recv().await.unwrap();
    assert_eq!((ack.kind, ack.stream_id), (FrameType::Ack, 21));
    expect_disconnect(&mut c, Status::NORMAL).await;
    // No new connection is accepted.
    let refused = TcpStream::connect(h.addr).await;
    assert!(refused.is_err(), "listener closed after shutdown");
    let rows = h.stop().await;
    assert_eq!(
        rows.iter().map(|r| r.requests).sum::<u64>(),
        1,
        "attribution flushed on shutdown"
    );
}

/// Default limits but a 300 ms frame deadline.
fn frame_timeout_300ms() -> ServerConfig {
    ServerConfig {
        connection: ConnectionConfig {
            frame_timeout: Duration::from_millis(300),
            ..ConnectionConfig::default()
        },
        ..ServerConfig::default()
    }
}

#[tokio::test]
async fn a_frame_started_but_never_finished_is_cut_at_the_frame_deadline() {
    let h = Harness::start(frame_timeout_300ms()).await;
    let mut c = Client::hello(h.addr).await;
    // Three bytes of a length prefix, then nothing: far below the 5-minute idle timeout.
    c.send(&[0, 0, 0]).await;
    let t = std::time::Instant::now();
    expect_disconnect(&mut c, Status::TIMEOUT).await;
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    h.stop().await;
}

#[tokio::test]
async fn a_busy_connection_is_still_closed_when_draining() {
    let h = Harness::start(ServerConfig::default()).await;
    let mut c = Client::hello(h.addr).await;
    h.shutdown.cancel();
    let t = std::time::Instant::now();
    // A NOTIFY every 50 ms never lets the connection go quiet for drain_quiet (100 ms).
    let mut sid = 1;
    let status = loop {
        assert!(t.elapsed() < Duration::from_secs(5), "drain never ended");
        // The agent may have closed already: a failed write is not the test's concern.
        let _ =
            c.s.write_all(&attribution_notify(
                sid,
                1,
                Ipv4Addr::new(10, 0, 0, 4),
                None,
                b"s1",
            ))
            .await;
        sid += 2;
        match tokio::time::timeout(Duration::from_millis(50), c.recv()).await {
            Ok(Some(f)) if f.kind == FrameType::AgentDisconnect => break f,
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => panic!("closed without AGENT-DISCONNECT"),
        }
    };
    assert_eq!(status.kind, FrameType::AgentDisconnect);
    assert!(t.elapsed() >= Duration::from_millis(1500), "{:?}", t.elapsed());
    h.stop().await;
}

#[tokio::test]
async fn a_busy_connection_whose_reads_end_mid_frame_is_not_cut_by_the_frame_deadline() {
    let h = Harness::start(frame_timeout_300ms()).await;
    let mut c = Client::hello(h.addr).await;
    // For 1.2 s (four frame deadlines), every write finishes the previous NOTIFY and starts the next
    // one, so the agent's read buffer is never empty; but no frame takes more than ~60 ms to arrive.
    let frames: Vec<Vec<u8>> = (0..25u64)
        .map(|i| attribution_notify(2 * i + 1, 1, Ipv4Addr::new(10, 0, 0, 5), None, b"s1"))
        .collect();
    let half = frames[0].len() / 2;
    c.send(&frames[0][..half]).await;
    let mut acks = 0;
    for i in 0..frames.len() {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut chunk = frames[i][half..].to_vec();
        if let Some(next) = frames.get(i + 1) {
            chunk.extend_from_slice(&next[..half]);
        }
        c.send(&chunk).await;
        let f = c.recv().await.expect("an ACK, not a close");
        assert_eq!(f.kind, FrameType::Ack, "frame {i}: {f:?}");
        acks += 1;
    }
    assert_eq!(acks, frames.len());
    h.stop().await;
}
