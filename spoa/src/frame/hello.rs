//! HAPROXY-HELLO and AGENT-HELLO (SPOE.txt §3.2.4–3.2.5).

use bytes::BytesMut;

use super::kv::{KvIter, encode_pair};
use super::{DecodeError, Flags, FrameTooBig, FrameType, FrameWriter, Status, TypedData};

/// The only SPOP version HAProxy 2.x and 3.x speak (`SPOP_SUPPORTED_VERSIONS_VAL`).
pub const VERSION: &str = "2.0";

/// The fields of a HAPROXY-HELLO that the agent uses. Unknown keys are skipped, as HAProxy does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HaproxyHello<'a> {
    /// `supported-versions`, comma-separated.
    pub supported_versions: Option<&'a [u8]>,
    /// `max-frame-size`, any integer type.
    pub max_frame_size: Option<u64>,
    /// `capabilities`, comma-separated (empty on health checks).
    pub capabilities: Option<&'a [u8]>,
    /// `healthcheck` BOOL true: answer and close.
    pub healthcheck: bool,
    /// `engine-id`, optional.
    pub engine_id: Option<&'a [u8]>,
}

impl<'a> HaproxyHello<'a> {
    /// Parse the KV-list payload.
    pub fn parse(payload: &'a [u8]) -> Result<Self, DecodeError> {
        let mut hello = HaproxyHello::default();
        for kv in KvIter::new(payload) {
            let (name, value) = kv?;
            match (name, value) {
                (b"supported-versions", TypedData::String(s)) => hello.supported_versions = Some(s),
                (b"max-frame-size", v) => hello.max_frame_size = v.as_u64(),
                (b"capabilities", TypedData::String(s)) => hello.capabilities = Some(s),
                (b"healthcheck", TypedData::Bool(b)) => hello.healthcheck = b,
                (b"engine-id", TypedData::String(s)) => hello.engine_id = Some(s),
                _ => {}
            }
        }
        Ok(hello)
    }

    /// Check the version and max-frame-size, returning the size to use: min(HAProxy's, ours).
    pub fn negotiate(&self, ours: u32) -> Result<u32, Status> {
        let versions = self.supported_versions.ok_or(Status::NO_VERSION)?;
        // HAProxy parses "Major.Minor" with spaces trimmed; accept "2.0" anywhere in the list.
        let supported = versions
            .split(|&b| b == b',')
            .any(|v| v.trim_ascii() == VERSION.as_bytes());
        if !supported {
            return Err(Status::BAD_VERSION);
        }
        let theirs = self.max_frame_size.ok_or(Status::NO_FRAME_SIZE)?;
        // "max-frame-size ... must be ≥ 256" (SPOP_MIN_FRAME_SIZE).
        if theirs < u64::from(super::MIN_MAX_FRAME_SIZE) {
            return Err(Status::BAD_FRAME_SIZE);
        }
        Ok(u32::try_from(theirs).unwrap_or(u32::MAX).min(ours))
    }
}

/// The agent's reply: always version, max-frame-size and capabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentHello<'a> {
    /// The negotiated max-frame-size.
    pub max_frame_size: u32,
    /// `"pipelining"`, never `async` or `fragmentation`.
    pub capabilities: &'a str,
}

impl AgentHello<'_> {
    /// Append the AGENT-HELLO frame (FIN, sid 0, fid 0).
    pub fn encode(&self, buf: &mut BytesMut, max: u32) -> Result<(), FrameTooBig> {
        let mut w = FrameWriter::begin(buf, FrameType::AgentHello, Flags::FIN, 0, 0);
        let p = w.payload();
        encode_pair(b"version", TypedData::String(VERSION.as_bytes()), p);
        encode_pair(b"max-frame-size", TypedData::Uint32(self.max_frame_size), p);
        encode_pair(
            b"capabilities",
            TypedData::String(self.capabilities.as_bytes()),
            p,
        );
        w.finish(max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Frame;

    fn hex(s: &str) -> Vec<u8> {
        // "00 ab" hex with quoted ASCII segments: the notation of the research notes.
        let mut out = Vec::new();
        let mut parts = s.split('"');
        let mut quoted = false;
        for part in parts.by_ref() {
            if quoted {
                out.extend_from_slice(part.as_bytes());
            } else {
                for h in part.split_whitespace() {
                    out.push(u8::from_str_radix(h, 16).unwrap());
                }
            }
            quoted = !quoted;
        }
        out
    }

    /// The 3.x HAPROXY-HELLO with default settings, byte for byte from the research notes.
    pub(crate) fn haproxy_hello_bytes() -> Vec<u8> {
        hex(
            r#"00 00 00 4b 01 00 00 00 01 00 00 12 "supported-versions" 08 03 "2.0"
               0e "max-frame-size" 03 fc f0 06 0c "capabilities" 08 0a "pipelining""#,
        )
    }

    #[test]
    fn parses_the_reference_haproxy_hello() {
        let bytes = haproxy_hello_bytes();
        assert_eq!(bytes.len(), 4 + 0x4b);
        let f = Frame::parse(bytes::Bytes::copy_from_slice(&bytes[4..])).unwrap();
        assert_eq!(
            (f.kind, f.flags, f.stream_id, f.frame_id),
            (FrameType::HaproxyHello, Flags::FIN, 0, 0)
        );
        let h = HaproxyHello::parse(&f.payload).unwrap();
        assert_eq!(h.supported_versions, Some(&b"2.0"[..]));
        assert_eq!(h.max_frame_size, Some(16380));
        assert_eq!(h.capabilities, Some(&b"pipelining"[..]));
        assert!(!h.healthcheck);
        assert_eq!(h.negotiate(16380), Ok(16380));
        assert_eq!(h.negotiate(1000), Ok(1000));
    }

    #[test]
    fn encodes_the_reference_agent_hello() {
        let want = hex(r#"00 00 00 40 65 00 00 00 01 00 00 07 "version" 08 03 "2.0"
                          0e "max-frame-size" 03 fc f0 06 0c "capabilities" 08 0a "pipelining""#);
        assert_eq!(want.len(), 68);
        let mut buf = BytesMut::new();
        AgentHello {
            max_frame_size: 16380,
            capabilities: "pipelining",
        }
        .encode(&mut buf, 16380)
        .unwrap();
        assert_eq!(&buf[..], &want[..]);
    }

    #[test]
    fn negotiation_errors_carry_haproxy_status_codes() {
        let base = HaproxyHello {
            supported_versions: Some(b"2.0"),
            max_frame_size: Some(16380),
            ..Default::default()
        };
        assert_eq!(
            HaproxyHello {
                supported_versions: None,
                ..base
            }
            .negotiate(16380),
            Err(Status(5))
        );
        assert_eq!(
            HaproxyHello {
                supported_versions: Some(b"1.0"),
                ..base
            }
            .negotiate(16380),
            Err(Status(8))
        );
        assert_eq!(
            HaproxyHello {
                supported_versions: Some(b"1.0, 2.0"),
                ..base
            }
            .negotiate(300),
            Ok(300)
        );
        assert_eq!(
            HaproxyHello {
                max_frame_size: None,
                ..base
            }
            .negotiate(16380),
            Err(Status(6))
        );
        assert_eq!(
            HaproxyHello {
                max_frame_size: Some(255),
                ..base
            }
            .negotiate(16380),
            Err(Status(9))
        );
        assert_eq!(
            HaproxyHello {
                max_frame_size: Some(1 << 40),
                ..base
            }
            .negotiate(16380),
            Ok(16380)
        );
    }

    #[test]
    fn healthcheck_flag_is_read() {
        let mut p = BytesMut::new();
        encode_pair(b"supported-versions", TypedData::String(b"2.0"), &mut p);
        encode_pair(b"max-frame-size", TypedData::Uint32(16380), &mut p);
        encode_pair(b"capabilities", TypedData::String(b""), &mut p);
        encode_pair(b"healthcheck", TypedData::Bool(true), &mut p);
        let h = HaproxyHello::parse(&p).unwrap();
        assert!(h.healthcheck);
        assert_eq!(h.capabilities, Some(&b""[..]));
    }
}
