//! The bodies of the `egress-health` fuzz targets (`agent_line`, `connect_head`, `exit_ip_body`),
//! shared with the stable replay test `health/tests/fuzz_replay.rs` (which includes this file with
//! `#[path]`), so the same assertions run under libFuzzer and in `cargo test`.
//!
//! Each function takes arbitrary bytes, calls one public parser of `egress-health`, and asserts
//! properties of the answer; it panics only when a property fails. Only the public signatures are
//! used, so a re-implementation of a parser keeps its target.

use std::net::IpAddr;

use egress_haproxy_api::valid_name;
use egress_health::ServerKey;
use egress_health::agent::{LineError, MAX_LINE, parse_line};
use egress_health::probe::connect::{ResponseHead, parse_response_head};
use egress_health::probe::exit_ip::parse_ip_body;

/// The agent-check request line (`<backend>/<server>\n`).
///
/// - An accepted key's two names are valid HAProxy names, the line is exactly `{b}/{s}` plus at most
///   one `\r\n` / `\n` / `\r`, the whole line fits in the responder's read buffer (`MAX_LINE`), and
///   `{b}/{s}\n`, `{b}/{s}\r\n` and `{b}/{s}` parse back to the same key.
/// - `Empty` exactly when nothing but a line end is left; otherwise, accepted exactly when the line
///   is UTF-8 and splits at its first `/` into two valid names.
pub fn agent_line(data: &[u8]) {
    let result = parse_line(data);
    let content = data.strip_suffix(b"\n").unwrap_or(data);
    let content = content.strip_suffix(b"\r").unwrap_or(content);
    // The model: the same grammar, written independently.
    let model = std::str::from_utf8(content)
        .ok()
        .and_then(|t| t.split_once('/'))
        .filter(|(b, s)| valid_name(b) && valid_name(s));
    match &result {
        Err(LineError::Empty) => assert!(content.is_empty(), "Empty for {data:?}"),
        Err(LineError::Garbage) => {
            assert!(!content.is_empty(), "Garbage for an empty line {data:?}");
            assert!(model.is_none(), "valid line refused: {data:?}");
        }
        Ok(key) => {
            let (b, s) = (&*key.backend, &*key.server);
            assert!(valid_name(b), "invalid backend {b:?} from {data:?}");
            assert!(valid_name(s), "invalid server {s:?} from {data:?}");
            assert_eq!(model, Some((b, s)), "key differs from the line {data:?}");
            assert_eq!(content, format!("{b}/{s}").as_bytes());
            assert_eq!(key.to_string(), format!("{b}/{s}"));
            assert!(
                data.len() <= MAX_LINE,
                "accepted a line longer than MAX_LINE: {}",
                data.len()
            );
            for line in [format!("{b}/{s}\n"), format!("{b}/{s}\r\n"), format!("{b}/{s}")] {
                assert_eq!(
                    parse_line(line.as_bytes()).as_ref(),
                    Ok(key),
                    "re-parse of {line:?}"
                );
            }
            assert_eq!(*key, ServerKey::new(b, s));
        }
    }
}

/// The `max_head` a `connect_head` input selects with its first byte: 64 … 16 384 in steps of 64.
pub fn connect_max_head(selector: u8) -> usize {
    64 + usize::from(selector) * 64
}

/// The end of the head: just past its first empty line (a `\n` followed by `\n` or `\r\n`, so
/// `\r\n\r\n`, `\n\n`, `\r\n\n` and `\n\r\n` all end a head: RFC 9112 §2.2 lets a recipient
/// accept a bare LF as a line terminator, and the parser says it does).
pub fn head_end(buf: &[u8]) -> Option<usize> {
    let lf = find(buf, b"\n\n").map(|i| i + 2);
    let crlf = find(buf, b"\n\r\n").map(|i| i + 3);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The proxy's answer to CONNECT. The first byte selects `max_head` ([`connect_max_head`]), the
/// second a cut point for the prefix checks; the rest is the answer.
///
/// - `Ok(None)` only while the buffer is at most `max_head` bytes and holds no complete head (no
///   empty line, [`head_end`]): anything longer is decided, a head or an error.
/// - `Ok(Some(h))`: `h.len <= max_head`; the head ends at its first empty line (`h.len` is
///   [`head_end`]); the status line is `HTTP/1.<digit> <3 digits>` with those digits as `h.status`,
///   in 100..=599 (the unit tests refuse 099 and 600); the head alone gives the same answer, and
///   one byte less of it gives `Ok(None)`.
/// - Bytes past the head belong to the tunnel: the answer for any prefix that holds the head, and
///   for the buffer cut at `max_head + 1`, is the same `Ok(Some(h))`. Once decided (head or error),
///   more bytes do not change the decision; an incomplete buffer's prefixes are incomplete too.
/// - Early refusal, as documented: a buffer that does not start like `HTTP/`, or whose first line
///   is complete but does not start `HTTP/1.<digit> <3 digits>`, is an error.
pub fn connect_head(data: &[u8]) {
    let [max_sel, cut_sel, buf @ ..] = data else {
        return;
    };
    let max = connect_max_head(*max_sel);
    let result = parse_response_head(buf, max);

    match result {
        Ok(None) => {
            assert!(
                buf.len() <= max,
                "Ok(None) for {} bytes > max_head {max}",
                buf.len()
            );
            assert_eq!(
                head_end(buf),
                None,
                "Ok(None) although the head is complete: {buf:?}"
            );
        }
        Ok(Some(h)) => check_head(buf, max, h),
        Err(_) => {}
    }

    // Early refusal.
    let n = buf.len().min(5);
    if buf[..n] != b"HTTP/"[..n] {
        assert!(result.is_err(), "not HTTP but {result:?}: {buf:?}");
    }
    if let Some(eol) = buf.iter().position(|&b| b == b'\n')
        && !status_line_start(&buf[..eol])
    {
        assert!(result.is_err(), "bad status line but {result:?}: {buf:?}");
    }
    // Decided by the first max_head + 1 bytes.
    if buf.len() > max {
        let short = parse_response_head(&buf[..=max], max);
        assert_eq!(
            short.is_err(),
            result.is_err(),
            "cut at max_head+1: {short:?} vs {result:?}"
        );
        assert_eq!(short.ok(), result.ok(), "cut at max_head+1 changes the head");
    }

    // A prefix: a decision there stays; an incomplete whole has incomplete prefixes.
    let cut = usize::from(*cut_sel) * buf.len() / 255;
    let prefix = parse_response_head(&buf[..cut], max);
    match prefix {
        Ok(Some(h)) => assert_eq!(result, Ok(Some(h)), "bytes after the head changed it (cut {cut})"),
        Err(_) => assert!(result.is_err(), "an error at {cut} bytes became {result:?}"),
        Ok(None) => {}
    }
    if result == Ok(None) {
        assert_eq!(prefix, Ok(None), "prefix of an incomplete head");
    }
}

fn check_head(buf: &[u8], max: usize, h: ResponseHead) {
    assert!(h.len <= max, "head of {} bytes > max_head {max}", h.len);
    assert!(
        h.len <= buf.len(),
        "head of {} bytes in a {}-byte buffer",
        h.len,
        buf.len()
    );
    let head = &buf[..h.len];
    assert!(
        head.ends_with(b"\n\n") || head.ends_with(b"\n\r\n"),
        "head does not end with an empty line: {head:?}"
    );
    assert!(status_line_start(head), "status line: {head:?}");
    let code = &head[9..12];
    let digits = code.iter().fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    assert_eq!(h.status, digits, "status differs from the status line");
    assert!((100..=599).contains(&h.status), "status {}", h.status);
    assert_eq!(
        Some(h.len),
        head_end(buf),
        "the head does not end at its first empty line: {buf:?}"
    );
    assert_eq!(parse_response_head(head, max), Ok(Some(h)), "the head alone");
    assert_eq!(
        parse_response_head(&head[..h.len - 1], max),
        Ok(None),
        "one byte short of {head:?}"
    );
}

/// `HTTP/1.<digit> <3 digits>` and then the end of the line, a space or a CR.
fn status_line_start(line: &[u8]) -> bool {
    line.len() >= 12
        && line.starts_with(b"HTTP/1.")
        && line[7].is_ascii_digit()
        && line[8] == b' '
        && line[9..12].iter().all(u8::is_ascii_digit)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Longest textual IP address `parse_ip_body` can accept bare
/// (`ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255`).
const MAX_IP_TEXT: usize = 45;

/// An IP-echo body: a bare address or a JSON object with an `ip` string.
///
/// - An accepted body is UTF-8. Bare (the trimmed body does not start with `{`): the trimmed body
///   is the address itself (at most 45 characters of `0-9a-fA-F:.`, parsing to the same address;
///   for IPv4 exactly its dotted form). JSON: the trimmed body is a JSON object whose `ip` member is
///   a string that, trimmed, parses to the address.
/// - Surrounding whitespace never changes the answer.
/// - The address's own forms parse back: `{ip}`, `{ip}\n`, `{"ip":"{ip}"}`.
pub fn exit_ip_body(data: &[u8]) {
    let result = parse_ip_body(data);
    let mut padded = b" \r\n\t".to_vec();
    padded.extend_from_slice(data);
    padded.extend_from_slice(b"\r\n \n");
    assert_eq!(
        parse_ip_body(&padded),
        result,
        "whitespace changed the answer for {data:?}"
    );

    let Some(ip) = result else {
        return;
    };
    let text = std::str::from_utf8(data)
        .expect("accepted a body that is not UTF-8")
        .trim();
    if text.starts_with('{') {
        // Only the `ip` member is read (the rest is skipped unbuilt, as the parser does: a number
        // out of f64's range elsewhere in the object does not matter).
        #[derive(serde::Deserialize)]
        struct IpMember {
            ip: String,
        }
        let member: IpMember =
            serde_json::from_str(text).expect("accepted JSON that is not an object with an `ip` string");
        let field = member.ip.as_str();
        assert_eq!(
            field.trim().parse::<IpAddr>().ok(),
            Some(ip),
            "JSON ip field {field:?}"
        );
    } else {
        assert!(
            text.len() <= MAX_IP_TEXT,
            "bare body of {} characters",
            text.len()
        );
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.'),
            "bare body with other characters: {text:?}"
        );
        assert_eq!(text.parse::<IpAddr>().ok(), Some(ip), "bare body {text:?}");
        if ip.is_ipv4() {
            assert_eq!(text, ip.to_string(), "IPv4 not in its dotted form");
        }
    }
    for form in [ip.to_string(), format!("{ip}\n"), format!("{{\"ip\":\"{ip}\"}}")] {
        assert_eq!(parse_ip_body(form.as_bytes()), Some(ip), "own form {form:?}");
    }
}
