//! egress-client: how an application should use the egress pool. Opens a CONNECT tunnel through the
//! pool's HAProxy with a short, explicit deadline and, when the first attempt fails for a reason
//! that another exit could fix, falls back exactly once, deterministically:
//!
//! - the second attempt carries `X-Egress-Attempt: 2`; HAProxy sends it to the next server of the
//!   consistent-hash ring after this client's own (the same one from every HAProxy instance, never
//!   the one that just failed);
//! - fallback only on a network error (connect refused or timed out, reset, closed, no answer in
//!   time) or a 5xx answer; never on a 4xx (403 refused by policy, 407 credentials): another exit
//!   would be refused the same way;
//! - every attempt is logged on stderr with the path it took (`selected=primary` / `retry`).
//!
//! With `--get PATH` it then sends a plain `GET PATH` through the tunnel and prints the body (the
//! IP-echo demo: the body is the exit IP).
//!
//! The standard library and httparse only (the answer head is parsed by it, not by hand), blocking
//! I/O: the logic is short enough to port to any client. It depends on httparse directly, not on
//! the workspace's egress-common (whose http1 module wraps the same parser): this is the code an
//! application team copies, and egress-common would drag tokio, prometheus and clap along.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str = "\
egress-client: a CONNECT through the egress pool, with one deterministic fallback.

USAGE:
    egress-client --proxy HOST:PORT --connect HOST:PORT [OPTIONS]

OPTIONS:
    --proxy HOST:PORT         the pool's HAProxy entry
    --connect HOST:PORT       the destination of the tunnel
    --get PATH                then send `GET PATH` through the tunnel and print the body
    --user USER:PASSWORD      Proxy-Authorization (Basic) when the entry requires credentials
    --header 'NAME: VALUE'    an extra header on the CONNECT (repeatable), e.g. 'X-Egress-Pool: kr'
    --connect-timeout DUR     deadline for the TCP connect to the proxy [default: 500ms]
    --answer-timeout DUR      deadline for the CONNECT answer [default: 6s: above the shipped
                              `timeout server 5s`, so HAProxy's 504 arrives first]
    --no-fallback             one attempt only
    -h, --help                this text

DUR is a number with ms or s (250ms, 6s).

RULES:
    Attempt 1 goes out as is (selected=primary). It is retried once, with `X-Egress-Attempt: 2`
    (selected=retry), after a network error or a 5xx answer; never after a 4xx.

EXIT STATUS:
    0  the tunnel is open (and the GET answered 200 when --get was given)
    1  both attempts failed (network error or 5xx), or the GET through the tunnel failed
    2  bad usage
    3  refused with a 4xx (not retried): policy (403) or credentials (407)
";

/// Longest answer head read from the proxy or the destination.
const MAX_HEAD: usize = 16 * 1024;
/// Longest body printed for `--get`.
const MAX_BODY: usize = 1024 * 1024;

#[derive(Debug)]
struct Options {
    proxy: String,
    connect: String,
    get: Option<String>,
    user: Option<String>,
    headers: Vec<String>,
    connect_timeout: Duration,
    answer_timeout: Duration,
    fallback: bool,
}

/// A command line the client cannot run (exit status 2), in words for the user.
#[derive(Debug, PartialEq, Eq)]
struct UsageError(String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn usage(text: impl Into<String>) -> UsageError {
    UsageError(text.into())
}

fn parse_duration(s: &str) -> Result<Duration, UsageError> {
    let (num, unit) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else {
        return Err(usage(format!("{s:?}: a duration needs ms or s")));
    };
    let n: u64 = num.parse().map_err(|_| usage(format!("{s:?}: not a duration")))?;
    let ms = n
        .checked_mul(unit)
        .filter(|ms| *ms > 0)
        .ok_or_else(|| usage(format!("{s:?}: out of range")))?;
    Ok(Duration::from_millis(ms))
}

fn parse_args(args: &[String]) -> Result<Option<Options>, UsageError> {
    let mut o = Options {
        proxy: String::new(),
        connect: String::new(),
        get: None,
        user: None,
        headers: Vec::new(),
        connect_timeout: Duration::from_millis(500),
        answer_timeout: Duration::from_secs(6),
        fallback: true,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| usage(format!("{arg} needs a value")))
        };
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--proxy" => o.proxy = value()?,
            "--connect" => o.connect = value()?,
            "--get" => o.get = Some(value()?),
            "--user" => o.user = Some(value()?),
            "--header" => {
                let h = value()?;
                if !h.contains(':') || h.contains('\r') || h.contains('\n') {
                    return Err(usage(format!(
                        "--header {h:?}: expected 'Name: value' on one line"
                    )));
                }
                o.headers.push(h);
            }
            "--connect-timeout" => o.connect_timeout = parse_duration(&value()?)?,
            "--answer-timeout" => o.answer_timeout = parse_duration(&value()?)?,
            "--no-fallback" => o.fallback = false,
            other => return Err(usage(format!("unknown argument {other:?}"))),
        }
    }
    if o.proxy.is_empty() || o.connect.is_empty() {
        return Err(usage("--proxy and --connect are required"));
    }
    for (name, v) in [
        ("--connect", &o.connect),
        ("--get", o.get.as_ref().unwrap_or(&String::new())),
    ] {
        if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(usage(format!("{name} {v:?}: no spaces or control characters")));
        }
    }
    Ok(Some(o))
}

/// Why an attempt failed, and whether that is worth the one fallback.
#[derive(Debug)]
enum Failure {
    /// Connect refused or timed out, reset, closed, or no answer in time: another exit may work.
    Network(String),
    /// The proxy (or the backend) answered 5xx: another exit may work.
    Server(u16, String),
    /// 4xx: refused by policy or credentials; another exit would be refused the same way.
    Refused(u16, String),
}

impl Failure {
    fn retryable(&self) -> bool {
        !matches!(self, Failure::Refused(..))
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Network(e) => write!(f, "network error: {e}"),
            Failure::Server(code, line) | Failure::Refused(code, line) => {
                write!(f, "answered {code} ({line})")
            }
        }
    }
}

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn resolve(hostport: &str) -> std::io::Result<SocketAddr> {
    hostport
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))
}

/// Reads one HTTP answer head byte by byte, so no tunnel byte is consumed, before `deadline`: its
/// status code and status line. httparse parses it at each line end, so a peer that is not
/// speaking HTTP is refused at its first line, not after MAX_HEAD bytes.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> Result<(u16, String), String> {
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    loop {
        if (head.len() <= 1 || head.ends_with(b"\n"))
            && let Some(answer) = parse_answer(&head)
                .map_err(|e| format!("not an HTTP answer ({e}): {:?}", String::from_utf8_lossy(&head)))?
        {
            return Ok(answer);
        }
        if head.len() >= MAX_HEAD {
            return Err(format!("answer head larger than {MAX_HEAD} bytes"));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("no answer in time".to_owned());
        }
        stream.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        match stream.read(&mut byte) {
            Ok(0) => return Err("closed before answering".to_owned()),
            Ok(_) => head.push(byte[0]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err("no answer in time".to_owned());
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// The status code and status line of a complete answer head; `Ok(None)` while incomplete. A code
/// outside 100..=599 is a status error too.
fn parse_answer(head: &[u8]) -> Result<Option<(u16, String)>, httparse::Error> {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut answer = httparse::Response::new(&mut fields);
    if answer.parse(head)?.is_partial() {
        return Ok(None);
    }
    let code = answer.code.unwrap_or_default();
    if !(100..=599).contains(&code) {
        return Err(httparse::Error::Status);
    }
    let line = format!(
        "HTTP/1.{} {code} {}",
        answer.version.unwrap_or_default(),
        answer.reason.unwrap_or_default()
    );
    Ok(Some((code, line.trim_end().to_owned())))
}

fn attempt(o: &Options, proxy: SocketAddr, number: u8) -> Result<TcpStream, Failure> {
    let mut stream = TcpStream::connect_timeout(&proxy, o.connect_timeout)
        .map_err(|e| Failure::Network(format!("connect to {proxy}: {e}")))?;
    let _ = stream.set_nodelay(true);
    let mut request = format!("CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n", o.connect);
    if number > 1 {
        request.push_str(&format!("X-Egress-Attempt: {number}\r\n"));
    }
    if let Some(user) = &o.user {
        request.push_str(&format!(
            "Proxy-Authorization: Basic {}\r\n",
            base64(user.as_bytes())
        ));
    }
    for h in &o.headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream
        .set_write_timeout(Some(o.answer_timeout))
        .map_err(|e| Failure::Network(e.to_string()))?;
    stream
        .write_all(request.as_bytes())
        .map_err(|e| Failure::Network(format!("sending CONNECT: {e}")))?;
    let (code, line) = read_head(&mut stream, Instant::now() + o.answer_timeout).map_err(Failure::Network)?;
    match code {
        200..=299 => Ok(stream),
        400..=499 => Err(Failure::Refused(code, line)),
        500..=599 => Err(Failure::Server(code, line)),
        _ => Err(Failure::Network(format!("unexpected answer {line:?}"))),
    }
}

/// Why the `GET` through an open tunnel failed (exit status 1; not retried).
#[derive(Debug)]
enum GetError {
    /// A socket option could not be set.
    Socket(std::io::Error),
    /// Writing the request failed.
    Send(std::io::Error),
    /// No complete answer head.
    Head(String),
    /// An answer other than 200.
    Status {
        /// The requested path.
        path: String,
        /// The status line.
        line: String,
    },
    /// Reading the body failed.
    Body(std::io::Error),
    /// The body did not end before the deadline.
    BodyTimeout,
    /// The body is larger than [`MAX_BODY`].
    BodyTooLarge,
}

impl std::fmt::Display for GetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GetError::Socket(e) => write!(f, "{e}"),
            GetError::Send(e) => write!(f, "sending GET: {e}"),
            GetError::Head(reason) => f.write_str(reason),
            GetError::Status { path, line } => write!(f, "GET {path} answered {line:?}"),
            GetError::Body(e) => write!(f, "reading the body: {e}"),
            GetError::BodyTimeout => f.write_str("the body did not end in time"),
            GetError::BodyTooLarge => write!(f, "body larger than {MAX_BODY} bytes"),
        }
    }
}

impl std::error::Error for GetError {}

fn get_through(
    stream: &mut TcpStream,
    host: &str,
    path: &str,
    timeout: Duration,
) -> Result<String, GetError> {
    stream
        .set_write_timeout(Some(timeout))
        .map_err(GetError::Socket)?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .map_err(GetError::Send)?;
    let deadline = Instant::now() + timeout;
    let (code, line) = read_head(stream, deadline).map_err(GetError::Head)?;
    if code != 200 {
        return Err(GetError::Status {
            path: path.to_owned(),
            line,
        });
    }
    let mut body = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(GetError::BodyTimeout);
        }
        stream.set_read_timeout(Some(left)).map_err(GetError::Socket)?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(GetError::Body(e)),
        }
        if body.len() > MAX_BODY {
            return Err(GetError::BodyTooLarge);
        }
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

fn run(o: &Options) -> ExitCode {
    let proxy = match resolve(&o.proxy) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("egress-client: --proxy {}: {e}", o.proxy);
            return ExitCode::from(2);
        }
    };
    let attempts: u8 = if o.fallback { 2 } else { 1 };
    for number in 1..=attempts {
        let selected = if number == 1 { "primary" } else { "retry" };
        let started = Instant::now();
        match attempt(o, proxy, number) {
            Ok(mut stream) => {
                eprintln!(
                    "egress-client: attempt={number} selected={selected} connect={} ok in {} ms",
                    o.connect,
                    started.elapsed().as_millis()
                );
                let Some(path) = &o.get else {
                    return ExitCode::SUCCESS;
                };
                return match get_through(&mut stream, &o.connect, path, o.answer_timeout) {
                    Ok(body) => {
                        print!("{body}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        // The tunnel was open: what failed is the application's exchange, which
                        // this client does not replay.
                        eprintln!("egress-client: GET through the tunnel failed: {e}");
                        ExitCode::FAILURE
                    }
                };
            }
            Err(failure) => {
                let will_retry = failure.retryable() && number < attempts;
                eprintln!(
                    "egress-client: attempt={number} selected={selected} connect={} failed in {} ms: {failure}{}",
                    o.connect,
                    started.elapsed().as_millis(),
                    if will_retry {
                        "; falling back (X-Egress-Attempt: 2)"
                    } else if failure.retryable() {
                        "; no fallback left"
                    } else {
                        "; a 4xx is not retried"
                    }
                );
                if !failure.retryable() {
                    return ExitCode::from(3);
                }
            }
        }
    }
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match parse_args(&args) {
        Ok(Some(o)) => run(&o),
        Ok(None) => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("egress-client: {e}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("kr:secret", "a3I6c2VjcmV0"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn only_network_errors_and_5xx_are_retried() {
        assert!(Failure::Network("reset".into()).retryable());
        assert!(Failure::Server(503, String::new()).retryable());
        assert!(!Failure::Refused(403, String::new()).retryable());
        assert!(!Failure::Refused(407, String::new()).retryable());
    }

    #[test]
    fn parses_answers_and_arguments() {
        assert_eq!(
            parse_answer(b"HTTP/1.1 504 Gateway Time-out\r\n\r\n"),
            Ok(Some((504, "HTTP/1.1 504 Gateway Time-out".to_owned())))
        );
        assert_eq!(parse_answer(b"HTTP/1.1 504 Gateway Time-out\r\n"), Ok(None));
        assert!(parse_answer(b"SSH-2.0-x\r\n\r\n").is_err());
        assert!(parse_answer(b"S").is_err(), "refused at the first byte");
        assert!(parse_answer(b"HTTP/1.1 999 x\r\n\r\n").is_err());
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("6s"), Ok(Duration::from_secs(6)));
        assert!(parse_duration("6").is_err() && parse_duration("0s").is_err());
        let args = |a: &[&str]| parse_args(&a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        assert!(args(&["--proxy", "p:1"]).is_err());
        assert!(args(&["--proxy", "p:1", "--connect", "a b:1"]).is_err());
        assert!(args(&["--proxy", "p:1", "--connect", "a:1", "--header", "X\r\nY: z"]).is_err());
        assert!(args(&["--help"]).unwrap().is_none());
        let o = args(&["--proxy", "p:1", "--connect", "a:1", "--no-fallback"])
            .unwrap()
            .unwrap();
        assert!(!o.fallback);
    }
}
