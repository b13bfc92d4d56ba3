//! The open-loop load generator.
//!
//! Request `i` is *scheduled* at `start + i / rate` and its task is spawned at that instant whatever
//! happened to earlier requests (open loop), so a stalled backend cannot slow the offered load down
//! and latency is measured from the scheduled time (no coordinated omission).
//!
//! One request = one session on a fresh tunnel: `CONNECT <target>` through HAProxy, a `ping` line
//! whose answer (the exit address the target saw) ends the measured latency, then a pause of `hold`
//! with the tunnel idle, then a second `ping` that proves the tunnel survived. Tunnels are not reused
//! across requests; holding each open for `hold` keeps about `rate × hold` tunnels in flight, which is
//! what a backend kill or a drain acts on.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use egress_harness::http_util::http1;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Largest CONNECT answer head read.
const MAX_ANSWER_HEAD: usize = 8192;

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Both pings answered.
    Ok,
    /// HAProxy (or the backend) answered the CONNECT with a non-2xx status.
    Status(u16),
    /// ECONNRESET or an unexpected EOF, before or inside the tunnel: a client-visible reset.
    Reset,
    /// The request's deadline passed.
    Timeout,
    /// Anything else (connect refused by HAProxy, malformed answer).
    Other,
}

/// One finished request.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Scheduled send time, since the load started.
    pub scheduled: Duration,
    /// Scheduled send time -> first answer, when there was one.
    pub latency: Option<Duration>,
    /// The exit address the target saw (which backend carried it).
    pub exit: Option<Ipv4Addr>,
    /// How it ended.
    pub outcome: Outcome,
}

/// The load's parameters.
#[derive(Debug, Clone)]
pub struct Load {
    /// HAProxy's frontend.
    pub proxy: SocketAddr,
    /// The CONNECT target (the line echo).
    pub target: SocketAddr,
    /// Requests per second.
    pub rate: u32,
    /// How long the load runs.
    pub duration: Duration,
    /// Idle time inside each tunnel between the two pings.
    pub hold: Duration,
    /// A request not finished this long after its scheduled time is a timeout.
    pub deadline: Duration,
}

/// Runs the load; returns every request's sample, in scheduled order. `start` is the common clock
/// the caller also uses to time its fault injections.
pub async fn run(load: Load, start: Instant) -> Vec<Sample> {
    let total = (f64::from(load.rate) * load.duration.as_secs_f64()).round() as u64;
    let load = Arc::new(load);
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let scheduled = Duration::from_secs_f64(i as f64 / f64::from(load.rate));
        tokio::time::sleep_until(start + scheduled).await;
        let load = load.clone();
        tasks.push(tokio::spawn(async move { one(&load, start, scheduled).await }));
    }
    let mut samples = Vec::with_capacity(tasks.len());
    for (i, task) in tasks.into_iter().enumerate() {
        samples.push(task.await.unwrap_or(Sample {
            scheduled: Duration::from_secs_f64(i as f64 / f64::from(load.rate)),
            latency: None,
            exit: None,
            outcome: Outcome::Other,
        }));
    }
    samples
}

async fn one(load: &Load, start: Instant, scheduled: Duration) -> Sample {
    let due = start + scheduled;
    let mut sample = Sample {
        scheduled,
        latency: None,
        exit: None,
        outcome: Outcome::Ok,
    };
    let result = tokio::time::timeout_at(due + load.deadline, session(load, due, &mut sample)).await;
    sample.outcome = match result {
        Err(_) => Outcome::Timeout,
        Ok(outcome) => outcome,
    };
    sample
}

async fn session(load: &Load, due: Instant, sample: &mut Sample) -> Outcome {
    let mut stream = match TcpStream::connect(load.proxy).await {
        Ok(s) => s,
        Err(e) => return io_outcome(&e),
    };
    let _ = stream.set_nodelay(true);
    let target = load.target;
    let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    if let Err(e) = stream.write_all(request.as_bytes()).await {
        return io_outcome(&e);
    }
    // The CONNECT answer head; the first ping goes once the tunnel is up.
    let mut buf = Vec::with_capacity(256);
    let head = match http1::read_response_head(&mut stream, &mut buf, MAX_ANSWER_HEAD).await {
        Ok(head) => head,
        Err(http1::ReadError::Closed) => return Outcome::Reset,
        Err(http1::ReadError::Io(e)) => return io_outcome(&e),
        Err(http1::ReadError::Head(_)) => return Outcome::Other,
    };
    buf.drain(..head.len);
    if !(200..300).contains(&head.status) {
        return Outcome::Status(head.status);
    }
    if let Err(e) = stream.write_all(b"ping\n").await {
        return io_outcome(&e);
    }
    let line = match read_line(&mut stream, &mut buf).await {
        Ok(line) => line,
        Err(outcome) => return outcome,
    };
    sample.latency = Some(Instant::now().saturating_duration_since(due));
    sample.exit = line.trim().parse().ok();
    tokio::time::sleep(load.hold).await;
    if let Err(e) = stream.write_all(b"ping\n").await {
        return io_outcome(&e);
    }
    match read_line(&mut stream, &mut buf).await {
        Ok(_) => Outcome::Ok,
        Err(outcome) => outcome,
    }
}

async fn read_some(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut chunk = [0u8; 512];
    let n = stream.read(&mut chunk).await?;
    buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    Ok(n)
}

async fn read_line(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<String, Outcome> {
    loop {
        if let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line = String::from_utf8_lossy(buf.get(..i).unwrap_or_default()).into_owned();
            buf.drain(..=i);
            return Ok(line);
        }
        if buf.len() > 256 {
            return Err(Outcome::Other);
        }
        match read_some(stream, buf).await {
            Ok(0) => return Err(Outcome::Reset),
            Ok(_) => {}
            Err(e) => return Err(io_outcome(&e)),
        }
    }
}

fn io_outcome(e: &std::io::Error) -> Outcome {
    match e.kind() {
        ErrorKind::ConnectionReset
        | ErrorKind::UnexpectedEof
        | ErrorKind::BrokenPipe
        | ErrorKind::ConnectionAborted => Outcome::Reset,
        _ => Outcome::Other,
    }
}
