//! A stand-in HTTP/1.1 server for the APIs the project calls (the Kubernetes API, gluetun's
//! control server, the Slack webhook): on 127.0.0.1:<ephemeral>, keep-alive, each request handed to
//! the test's handler, which answers a status, extra headers and a body. Records every request, with
//! the peer it came from (a request through a proxy comes from the proxy). Stops on drop.

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::http_util::read_request_blocking;

/// Largest request head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Deadline of each read (the next request on a kept-alive connection included).
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// One request as received.
#[derive(Clone, Debug)]
pub struct Request {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// The request target (path and query).
    pub target: String,
    /// The minor HTTP version (1 for HTTP/1.1).
    pub version: u8,
    /// Header (lowercase name, value) pairs.
    pub headers: Vec<(String, String)>,
    /// The body (by Content-Length).
    pub body: Vec<u8>,
    /// The connection's peer.
    pub peer: SocketAddr,
    /// When the request was complete.
    pub at: Instant,
}

impl Request {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the handler answers.
#[derive(Clone, Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// Extra header lines (name, value), e.g. `Retry-After`.
    pub headers: Vec<(String, String)>,
    /// `Content-Type` of the body.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
}

impl Answer {
    /// `status` with a JSON body.
    pub fn json(status: u16, body: impl Into<String>) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            content_type: "application/json",
            body: body.into(),
        }
    }

    /// `status` with a plain-text body.
    pub fn text(status: u16, body: impl Into<String>) -> Answer {
        Answer {
            content_type: "text/plain",
            ..Answer::json(status, body)
        }
    }

    /// With one more header line.
    pub fn header(mut self, name: &str, value: &str) -> Answer {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

type Handler = dyn Fn(&Request) -> Answer + Send + Sync;

/// The running stand-in.
#[derive(Debug)]
pub struct StandIn {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
}

impl StandIn {
    /// Serves `handler`, answering its status and JSON body, until dropped.
    pub fn start(
        handler: impl Fn(&Request) -> (u16, String) + Send + Sync + 'static,
    ) -> anyhow::Result<StandIn> {
        Self::start_with(move |req| {
            let (status, body) = handler(req);
            Answer::json(status, body)
        })
    }

    /// Serves `handler` until dropped.
    pub fn start_with(
        handler: impl Fn(&Request) -> Answer + Send + Sync + 'static,
    ) -> anyhow::Result<StandIn> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let requests: Arc<Mutex<Vec<Request>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let (r, s) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, peer)) => {
                        let (h, r) = (handler.clone(), r.clone());
                        std::thread::spawn(move || serve(conn, peer, &*h, &r));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(StandIn { addr, requests, stop })
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(mut conn: TcpStream, peer: SocketAddr, handler: &Handler, requests: &Mutex<Vec<Request>>) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(READ_TIMEOUT));
    let mut buf = Vec::new();
    while let Some(full) = read_request_blocking(&mut conn, &mut buf, MAX_HEAD) {
        let req = Request {
            method: full.head.method,
            target: full.head.target,
            version: full.head.version,
            headers: full
                .head
                .headers
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v.to_owned()))
                .collect(),
            body: full.body,
            peer,
            at: Instant::now(),
        };
        let answer = handler(&req);
        let close = req
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
            || req.version == 0;
        requests.lock().unwrap_or_else(|e| e.into_inner()).push(req);
        let extra: String = answer
            .headers
            .iter()
            .map(|(n, v)| format!("{n}: {v}\r\n"))
            .collect();
        let text = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\n{extra}Content-Length: {}\r\n{}\r\n{}",
            answer.status,
            if (200..300).contains(&answer.status) {
                "OK"
            } else {
                "Error"
            },
            answer.content_type,
            answer.body.len(),
            if close { "Connection: close\r\n" } else { "" },
            answer.body
        );
        if conn.write_all(text.as_bytes()).is_err() || close {
            return;
        }
    }
}
