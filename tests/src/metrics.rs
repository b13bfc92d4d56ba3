//! Prometheus scrapes for the tests, the lab and the benchmarks: `GET /metrics` over HTTP/1.1
//! ([`scrape`]: our binaries' endpoint and HAProxy's exporter alike) and the samples of the text
//! exposition format ([`samples`], [`value`], [`sum`]). The one scraper: nothing else in the
//! workspace opens a socket to a `/metrics` endpoint or splits its lines.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::Context as _;
use egress_common::http1;

/// Deadline of the TCP connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of each read.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read (HAProxy's exporter with many servers is a few MiB).
const MAX_ANSWER: u64 = 16 * 1024 * 1024;
/// Largest answer head.
const MAX_HEAD: usize = 64 * 1024;

/// `GET /metrics` from `addr`: the Prometheus text. An error unless `HTTP/1.1 200`.
pub fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    stream.set_write_timeout(Some(READ_TIMEOUT))?;
    // One write: the request must not be split into segments a server might read one at a time.
    stream
        .write_all(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .with_context(|| format!("{addr}: sending GET /metrics"))?;
    let mut answer = Vec::new();
    stream
        .take(MAX_ANSWER)
        .read_to_end(&mut answer)
        .with_context(|| format!("{addr}: reading the answer"))?;
    let body = body_of(&answer).with_context(|| format!("{addr}: GET /metrics"))?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// The body of a complete answer read to EOF: de-chunked, or cut at its Content-Length.
fn body_of(answer: &[u8]) -> anyhow::Result<Vec<u8>> {
    let head = http1::parse_response(answer, MAX_HEAD)?
        .ok_or_else(|| anyhow::anyhow!("no complete HTTP head in {} bytes", answer.len()))?;
    anyhow::ensure!(
        (head.version, head.status) == (1, 200),
        "answered {:?}",
        head.status_line()
    );
    let rest = answer.get(head.len..).unwrap_or_default();
    let chunked = head
        .headers
        .get("transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"));
    if chunked {
        return dechunk(rest);
    }
    match head.headers.content_length()? {
        Some(len) => {
            let len = usize::try_from(len)?;
            anyhow::ensure!(
                rest.len() >= len,
                "the body ended after {} of {len} bytes",
                rest.len()
            );
            Ok(rest.get(..len).unwrap_or_default().to_vec())
        }
        None => Ok(rest.to_vec()),
    }
}

/// RFC 9112 §7.1: chunk-size [ext] CRLF data CRLF ..., ended by a zero-size chunk.
fn dechunk(mut rest: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::with_capacity(rest.len());
    loop {
        let (start, size) = match httparse::parse_chunk_size(rest) {
            Ok(httparse::Status::Complete(parsed)) => parsed,
            Ok(httparse::Status::Partial) => anyhow::bail!("the chunked body ended early"),
            Err(_) => anyhow::bail!("a malformed chunk size"),
        };
        if size == 0 {
            return Ok(body);
        }
        let size = usize::try_from(size)?;
        let data = rest
            .get(start..start.saturating_add(size))
            .ok_or_else(|| anyhow::anyhow!("the chunked body ended early"))?;
        body.extend_from_slice(data);
        rest = rest
            .get(start + size..)
            .and_then(|r| r.strip_prefix(b"\r\n"))
            .ok_or_else(|| anyhow::anyhow!("a chunk not followed by CRLF"))?;
    }
}

/// One sample line of the text format: `name{label="value",...} value [timestamp]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The metric name (for a histogram: `x_bucket`, `x_sum`, `x_count`).
    pub name: String,
    /// The labels, in order, values unescaped.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// The value of label `name`.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether every (name, value) of `labels` is one of this sample's labels.
    pub fn has(&self, labels: &[(&str, &str)]) -> bool {
        labels.iter().all(|(k, v)| self.label(k) == Some(*v))
    }
}

/// Every sample of `text`, in order; comments, blank and unparsable lines are skipped.
pub fn samples(text: &str) -> impl Iterator<Item = Sample> + '_ {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(parse_line)
}

/// The value of the first sample named `name` that has every label of `labels`.
pub fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text)
        .find(|s| s.name == name && s.has(labels))
        .map(|s| s.value)
}

/// The sum of the samples named `name` that have every label of `labels` (0 when none does).
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(text)
        .filter(|s| s.name == name && s.has(labels))
        .map(|s| s.value)
        .sum()
}

fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let (name, mut rest) = line.split_at(name_end);
    if name.is_empty() {
        return None;
    }
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = inner;
        loop {
            rest = rest.trim_start_matches([' ', ',']);
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = rest.split_once('=')?;
            let mut chars = after.strip_prefix('"')?.char_indices();
            let mut value = String::new();
            let end = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.push((key.trim().to_owned(), value));
            rest = after.get(end + 2..)?;
        }
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP egress_checker_probes_total Probes.
# TYPE egress_checker_probes_total counter
egress_checker_probes_total{result=\"ok\",verdict=\"counted\"} 77
egress_checker_probes_total{result=\"status\",verdict=\"excused\"} 1
egress_checker_probe_duration_seconds_bucket{le=\"0.05\"} 70
egress_checker_probe_duration_seconds_bucket{le=\"+Inf\"} 80
egress_checker_rotation_in_progress 0
haproxy_server_status{proxy=\"a \\\"b\\\", c\",server=\"s1\",} 1 1700000000000
odd{x=\"unterminated} 3
";

    #[test]
    fn samples_are_parsed_with_their_labels() {
        let all: Vec<Sample> = samples(TEXT).collect();
        assert_eq!(all.len(), 6, "{all:?}");
        assert_eq!(
            value(TEXT, "egress_checker_probes_total", &[("result", "ok")]),
            Some(77.0)
        );
        assert_eq!(
            value(TEXT, "egress_checker_probes_total", &[("result", "nope")]),
            None
        );
        assert_eq!(sum(TEXT, "egress_checker_probes_total", &[]), 78.0);
        assert_eq!(value(TEXT, "egress_checker_rotation_in_progress", &[]), Some(0.0));
        assert_eq!(
            value(
                TEXT,
                "haproxy_server_status",
                &[("proxy", "a \"b\", c"), ("server", "s1")]
            ),
            Some(1.0)
        );
        let inf = all.iter().find(|s| s.label("le") == Some("+Inf")).unwrap();
        assert_eq!(inf.value, 80.0);
        // A prefix of a name is another name.
        assert_eq!(value(TEXT, "egress_checker_probes", &[]), None);
    }

    #[test]
    fn bodies_are_framed_by_length_or_chunks() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef";
        assert_eq!(body_of(plain).unwrap(), b"abc");
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(body_of(chunked).unwrap(), b"abcde");
        let to_eof = b"HTTP/1.1 200 OK\r\n\r\nall of it";
        assert_eq!(body_of(to_eof).unwrap(), b"all of it");
        assert!(body_of(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").is_err());
        assert!(body_of(b"HTTP/1.0 200 OK\r\n\r\nx").is_err());
        assert!(body_of(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort").is_err());
        assert!(body_of(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab").is_err());
        assert!(body_of(b"HTTP/1.1 200 OK\r\n").is_err());
    }
}
