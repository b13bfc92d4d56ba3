//! spop-load: a direct SPOP load generator for egress-spoa (no HAProxy in the way).
//!
//! Opens `--connections` connections, does the HELLO handshake like HAProxy, then keeps `--depth`
//! NOTIFYs in flight per connection (3.x style: odd stream-ids, frame-id 1), writing each refill in
//! one write. Prints `messages=… seconds=… rate=…/s` and, with `--agent-pid`, the agent's CPU time
//! per message from /proc/<pid>/stat over the same window.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::BytesMut;
use clap::Parser;
use egress_spoa::codec::SpopCodec;
use egress_spoa::frame::kv::encode_pair;
use egress_spoa::frame::notify::{encode_message, encode_notify};
use egress_spoa::frame::{Flags, FrameType, FrameWriter, TypedData};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

#[derive(Debug, Parser)]
#[command(name = "spop-load", about = "Direct SPOP load generator for egress-spoa")]
struct Cli {
    /// Agent address.
    #[arg(long, default_value = "127.0.0.1:12345")]
    addr: SocketAddr,
    /// Connections.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// NOTIFYs in flight per connection (HAProxy 3.x pipelines at most 20).
    #[arg(long, default_value_t = 20)]
    depth: usize,
    /// Measured duration.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured warm-up before the window.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Message to send: `attribution` or `client`.
    #[arg(long, default_value = "attribution")]
    message: String,
    /// Distinct client addresses cycled through.
    #[arg(long, default_value_t = 10_000)]
    clients: u32,
    /// Runtime threads for the generator.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// The agent's pid, to report its CPU time per message over the measured window.
    #[arg(long)]
    agent_pid: Option<u32>,
    /// Clock ticks per second for /proc/<pid>/stat (`getconf CLK_TCK`).
    #[arg(long, default_value_t = 100)]
    clk_tck: u64,
}

fn hello() -> BytesMut {
    let mut out = BytesMut::new();
    let mut w = FrameWriter::begin(&mut out, FrameType::HaproxyHello, Flags::FIN, 0, 0);
    encode_pair(b"supported-versions", TypedData::String(b"2.0"), w.payload());
    encode_pair(b"max-frame-size", TypedData::Uint32(16380), w.payload());
    encode_pair(b"capabilities", TypedData::String(b"pipelining"), w.payload());
    w.finish(16380).expect("small");
    out
}

fn messages(kind: &str, clients: u32) -> anyhow::Result<Vec<Vec<u8>>> {
    let servers: Vec<String> = (1..=28).map(|i| format!("egress{i:02}")).collect();
    (0..clients.clamp(1, 1 << 20))
        .map(|i| {
            let src = TypedData::Ipv4(Ipv4Addr::from(0x0a00_0000 | i));
            let server = &servers[i as usize % servers.len()];
            let mut m = Vec::new();
            match kind {
                "attribution" => encode_message(
                    b"egress-attribution",
                    &[
                        (b"", src),
                        (b"backend", TypedData::String(b"egress")),
                        (b"server", TypedData::String(server.as_bytes())),
                    ],
                    &mut m,
                ),
                "client" => encode_message(b"egress-client", &[(b"", src)], &mut m),
                other => bail!("unknown --message {other}"),
            }
            Ok(m)
        })
        .collect()
}

fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).context("read /proc/<pid>/stat")?;
    // Fields after the command name, which may contain spaces: state is field 3, utime 14, stime 15.
    let rest = stat
        .rsplit_once(") ")
        .map(|(_, r)| r)
        .context("parse /proc/<pid>/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11).context("utime")?.parse()?;
    let stime: u64 = f.get(12).context("stime")?.parse()?;
    Ok(utime + stime)
}

async fn connection(
    addr: SocketAddr,
    depth: usize,
    msgs: Arc<Vec<Vec<u8>>>,
    counter: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    offset: usize,
) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(addr).await.context("connect")?;
    s.set_nodelay(true)?;
    s.write_all(&hello()).await?;
    let mut codec = SpopCodec::new(16380);
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    loop {
        if s.read_buf(&mut rbuf).await? == 0 {
            bail!("agent closed during the handshake");
        }
        if let Some(f) = codec.decode(&mut rbuf)? {
            if f.kind != FrameType::AgentHello {
                bail!("expected AGENT-HELLO, got {:?}", f.kind);
            }
            break;
        }
    }
    let mut sid: u64 = 1;
    let mut next = offset;
    let mut wbuf = BytesMut::with_capacity(64 * 1024);
    let mut refill = |n: usize, wbuf: &mut BytesMut| {
        for _ in 0..n {
            let m = &msgs[next % msgs.len()];
            next += 1;
            // 3.x: a fresh odd stream-id per NOTIFY, frame-id 1.
            encode_notify(sid, 1, m, wbuf, 16380).expect("small NOTIFY");
            sid += 2;
        }
    };
    refill(depth, &mut wbuf);
    s.write_all(&wbuf).await?;
    wbuf.clear();
    while !stop.load(Ordering::Relaxed) {
        if s.read_buf(&mut rbuf).await? == 0 {
            bail!("agent closed the connection");
        }
        let mut acks = 0;
        while let Some(f) = codec.decode(&mut rbuf)? {
            if f.kind != FrameType::Ack {
                bail!("expected ACK, got {:?}", f.kind);
            }
            acks += 1;
        }
        if acks > 0 {
            counter.fetch_add(acks as u64, Ordering::Relaxed);
            refill(acks, &mut wbuf);
            s.write_all(&wbuf).await?;
            wbuf.clear();
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(async {
        let msgs = Arc::new(messages(&cli.message, cli.clients)?);
        let counter = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for i in 0..cli.connections.max(1) {
            tasks.push(tokio::spawn(connection(
                cli.addr,
                cli.depth.max(1),
                msgs.clone(),
                counter.clone(),
                stop.clone(),
                i * 7919,
            )));
        }
        tokio::time::sleep(cli.warmup).await;
        let c0 = counter.load(Ordering::Relaxed);
        let cpu0 = cli.agent_pid.map(cpu_ticks).transpose()?;
        let t0 = Instant::now();
        tokio::time::sleep(cli.duration).await;
        let c1 = counter.load(Ordering::Relaxed);
        let cpu1 = cli.agent_pid.map(cpu_ticks).transpose()?;
        let secs = t0.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let n = c1 - c0;
        let mut line = format!(
            "messages={n} seconds={secs:.3} rate={:.0}/s connections={} depth={} message={}",
            n as f64 / secs,
            cli.connections,
            cli.depth,
            cli.message
        );
        if let (Some(a), Some(b)) = (cpu0, cpu1) {
            let cpu = (b - a) as f64 / cli.clk_tck as f64;
            line.push_str(&format!(
                " agent_cpu_seconds={cpu:.2} agent_cpu_us_per_message={:.3}",
                if n > 0 { cpu * 1e6 / n as f64 } else { f64::NAN }
            ));
        }
        println!("{line}");
        for t in tasks {
            // Tasks stop at their next read; failures before the window would show as a low rate.
            if let Ok(Ok(Err(error))) = tokio::time::timeout(Duration::from_secs(2), t).await {
                eprintln!("spop-load: connection failed: {error:#}");
            }
        }
        if n == 0 {
            bail!("no message was acknowledged");
        }
        Ok(())
    })
}
