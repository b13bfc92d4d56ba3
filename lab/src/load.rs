//! The open-loop load generator.
//!
//! Request `i` is *scheduled* at `start + i / rate` and its task is spawned at that instant whatever
//! happened to earlier requests (open loop), so a stalled backend cannot slow the offered load down
//! and latency is measured from the scheduled time (no coordinated omission).
//!
//! Two profiles. [`Profile::Connect`]: one request = one session on a fresh tunnel: `CONNECT
//! <target>` through HAProxy, a `ping` line whose answer (the exit address the target saw) ends the
//! measured latency, then a pause of `hold` with the tunnel idle, then a second `ping` that proves the
//! tunnel survived. Tunnels are not reused across requests; holding each open for `hold` keeps about
//! `rate × hold` tunnels in flight, which is what a backend kill or a drain acts on.
//! [`Profile::Http`]: one request = `GET http://<target>/hold/<ms>` on a fresh connection (an
//! absolute-URI proxy request, which HAProxy can replay), answered by the target after `hold` with
//! the exit address it saw; the latency runs to the complete answer, so it includes the hold.
//!
//! Each request leaves from one of [`SOURCES`] client addresses in 127.0.0.0/8 ([`source`]), so a
//! pool balanced by source hash (the shipped one) spreads them over its servers. With `fallback` the CONNECT client
//! follows the rule of `egress-client` (client/src/main.rs): a tunnel whose set-up fails with a
//! network error (connect refused or not within 500 ms, reset, closed, no answer in time) or a 5xx is
//! tried once more with `X-Egress-Attempt: 2`; never after a 4xx, and never once the tunnel is open
//! (its bytes may have been used).

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use egress_harness::http_util::http1;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

/// Largest CONNECT (or GET) answer head read.
const MAX_ANSWER_HEAD: usize = 8192;
/// Client source addresses; request `i` leaves from number `i % SOURCES` ([`source`]).
pub const SOURCES: u8 = 64;
/// The client fallback's connect deadline (egress-client `--connect-timeout` default).
const FALLBACK_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// The client fallback's deadline for the CONNECT answer: above the 2.5 s `timeout server` of rungs
/// (b)+, so HAProxy's 504 arrives first (egress-client's default is 6 s against the shipped 5 s).
const FALLBACK_ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

/// What one request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Profile {
    /// A fresh CONNECT tunnel, two pings `hold` apart.
    Connect,
    /// A plain proxy request, `GET http://target/...`, answered after `hold`.
    Http,
}

impl Profile {
    /// Both, in report order.
    pub const ALL: [Profile; 2] = [Profile::Connect, Profile::Http];

    /// File-name friendly id.
    pub fn id(self) -> &'static str {
        match self {
            Profile::Connect => "connect",
            Profile::Http => "http",
        }
    }

    /// Parses an id.
    pub fn parse(s: &str) -> Option<Profile> {
        Profile::ALL.into_iter().find(|p| p.id() == s.trim())
    }
}

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Both pings answered (HTTP: a 200 with the exit address).
    Ok,
    /// HAProxy (or the backend) answered with a non-2xx status.
    Status(u16),
    /// ECONNRESET or an unexpected EOF, before or inside the tunnel: a client-visible reset.
    Reset,
    /// The request's deadline passed.
    Timeout,
    /// Anything else (connect refused by HAProxy, malformed answer).
    Other,
}

impl Outcome {
    /// Whether a failed tunnel set-up is worth the one fallback (egress-client: network errors and
    /// 5xx, never 4xx).
    fn retryable(self) -> bool {
        !matches!(self, Outcome::Ok | Outcome::Status(400..=499))
    }
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
    /// Whether the client fell back (a second attempt was sent).
    pub fell_back: bool,
}

impl Sample {
    /// When the first answer came, since the load started.
    pub fn answered(&self) -> Option<Duration> {
        self.latency.map(|l| self.scheduled + l)
    }
}

/// The load's parameters.
#[derive(Debug, Clone)]
pub struct Load {
    /// HAProxy's frontend.
    pub proxy: SocketAddr,
    /// The target (the line echo, which also answers GETs).
    pub target: SocketAddr,
    /// CONNECT tunnels or plain proxy requests.
    pub profile: Profile,
    /// Requests per second.
    pub rate: u32,
    /// How long the load runs.
    pub duration: Duration,
    /// Idle time inside each tunnel between the two pings; for HTTP, the target's answer delay.
    pub hold: Duration,
    /// A request not finished this long after its scheduled time is a timeout.
    pub deadline: Duration,
    /// Fall back once on a failed tunnel set-up (the egress-client rule).
    pub fallback: bool,
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
        tasks.push(tokio::spawn(async move { one(&load, i, start, scheduled).await }));
    }
    let mut samples = Vec::with_capacity(tasks.len());
    for (i, task) in tasks.into_iter().enumerate() {
        samples.push(task.await.unwrap_or(Sample {
            scheduled: Duration::from_secs_f64(i as f64 / f64::from(load.rate)),
            latency: None,
            exit: None,
            outcome: Outcome::Other,
            fell_back: false,
        }));
    }
    samples
}

async fn one(load: &Load, i: u64, start: Instant, scheduled: Duration) -> Sample {
    let due = start + scheduled;
    let mut sample = Sample {
        scheduled,
        latency: None,
        exit: None,
        outcome: Outcome::Ok,
        fell_back: false,
    };
    let from = source((i % u64::from(SOURCES)) as u8);
    let session = async {
        match load.profile {
            Profile::Connect => tunnel(load, from, due, &mut sample).await,
            Profile::Http => get(load, from, due, &mut sample).await,
        }
    };
    let result = tokio::time::timeout_at(due + load.deadline, session).await;
    sample.outcome = match result {
        Err(_) => Outcome::Timeout,
        Ok(outcome) => outcome,
    };
    sample
}

/// Client address number `n`: 127.(1+n).x.y, distinct in each of the three low bytes (the shipped
/// pool hashes the source address: `balance source`, `hash-type consistent`, which uses sdbm with
/// avalanche by default).
pub fn source(n: u8) -> Ipv4Addr {
    let n = u32::from(n);
    Ipv4Addr::new(
        127,
        (1 + n) as u8,
        ((n * 37 + 11) % 256) as u8,
        ((n * 101 + 7) % 254 + 1) as u8,
    )
}

/// `step` within `limit` when there is one (the fallback client's own deadlines; without them only
/// the request's deadline applies): a step that overruns it is a timeout.
async fn deadline<T>(limit: Option<Duration>, step: impl Future<Output = T>) -> Result<T, Outcome> {
    match limit {
        Some(limit) => tokio::time::timeout(limit, step)
            .await
            .map_err(|_| Outcome::Timeout),
        None => Ok(step.await),
    }
}

async fn dial(load: &Load, from: Ipv4Addr) -> Result<TcpStream, Outcome> {
    let connect = async {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from((from, 0)))?;
        socket.connect(load.proxy).await
    };
    let stream = deadline(load.fallback.then_some(FALLBACK_CONNECT_TIMEOUT), connect)
        .await?
        .map_err(|e| io_outcome(&e))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Opens one tunnel: connect, `CONNECT` (with `X-Egress-Attempt: <attempt>` from the second on),
/// the answer head. Returns the stream and the bytes read after the head.
async fn open(load: &Load, from: Ipv4Addr, attempt: u8) -> Result<(TcpStream, Vec<u8>), Outcome> {
    let mut stream = dial(load, from).await?;
    let target = load.target;
    let extra = if attempt > 1 {
        format!("X-Egress-Attempt: {attempt}\r\n")
    } else {
        String::new()
    };
    let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{extra}\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| io_outcome(&e))?;
    let mut buf = Vec::with_capacity(256);
    let read = http1::read_response_head(&mut stream, &mut buf, MAX_ANSWER_HEAD);
    let head = match deadline(load.fallback.then_some(FALLBACK_ANSWER_TIMEOUT), read).await? {
        Ok(head) => head,
        Err(http1::ReadError::Closed) => return Err(Outcome::Reset),
        Err(http1::ReadError::Io(e)) => return Err(io_outcome(&e)),
        Err(http1::ReadError::Head(_)) => return Err(Outcome::Other),
    };
    buf.drain(..head.len);
    if !(200..300).contains(&head.status) {
        return Err(Outcome::Status(head.status));
    }
    Ok((stream, buf))
}

async fn tunnel(load: &Load, from: Ipv4Addr, due: Instant, sample: &mut Sample) -> Outcome {
    let opened = match open(load, from, 1).await {
        Err(outcome) if load.fallback && outcome.retryable() => {
            sample.fell_back = true;
            open(load, from, 2).await
        }
        other => other,
    };
    let (mut stream, mut buf) = match opened {
        Ok(x) => x,
        Err(outcome) => return outcome,
    };
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

/// One absolute-URI proxy request; the target answers after `hold` with the exit address it saw.
async fn get(load: &Load, from: Ipv4Addr, due: Instant, sample: &mut Sample) -> Outcome {
    let mut stream = match dial(load, from).await {
        Ok(s) => s,
        Err(outcome) => return outcome,
    };
    let target = load.target;
    let request = format!(
        "GET http://{target}{} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n",
        crate::target::hold_path(load.hold)
    );
    if let Err(e) = stream.write_all(request.as_bytes()).await {
        return io_outcome(&e);
    }
    let mut buf = Vec::with_capacity(256);
    let head = match http1::read_response_head(&mut stream, &mut buf, MAX_ANSWER_HEAD).await {
        Ok(head) => head,
        Err(http1::ReadError::Closed) => return Outcome::Reset,
        Err(http1::ReadError::Io(e)) => return io_outcome(&e),
        Err(http1::ReadError::Head(_)) => return Outcome::Other,
    };
    buf.drain(..head.len);
    if head.status != 200 {
        return Outcome::Status(head.status);
    }
    // The body is one line: the exit address.
    match read_line(&mut stream, &mut buf).await {
        Ok(line) => {
            sample.latency = Some(Instant::now().saturating_duration_since(due));
            sample.exit = line.trim().parse().ok();
            Outcome::Ok
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_addresses_are_distinct_loopback_addresses() {
        let all: std::collections::HashSet<Ipv4Addr> = (0..SOURCES).map(source).collect();
        assert_eq!(all.len(), usize::from(SOURCES));
        assert!(all.iter().all(|a| a.is_loopback() && a.octets()[3] != 0));
    }

    #[test]
    fn the_fallback_never_follows_a_4xx() {
        assert!(
            Outcome::Status(503).retryable() && Outcome::Reset.retryable() && Outcome::Timeout.retryable()
        );
        assert!(!Outcome::Status(403).retryable() && !Outcome::Status(407).retryable());
    }
}
