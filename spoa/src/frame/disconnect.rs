//! HAPROXY-DISCONNECT and AGENT-DISCONNECT (SPOE.txt §3.2.8–3.2.9): KV `status-code` + `message`.

use bytes::BytesMut;

use super::kv::{KvIter, encode_pair};
use super::{DecodeError, Flags, FrameTooBig, FrameType, FrameWriter, Status, TypedData};

/// A DISCONNECT in either direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Disconnect<'a> {
    /// `status-code`.
    pub status: Status,
    /// `message` (HAProxy 3.x skips it; still mandatory per the doc).
    pub message: &'a [u8],
}

impl<'a> Disconnect<'a> {
    /// Parse a HAPROXY-DISCONNECT payload. A missing status reads as 0, a missing message as empty.
    pub fn parse(payload: &'a [u8]) -> Result<Self, DecodeError> {
        let mut d = Disconnect {
            status: Status::NORMAL,
            message: b"",
        };
        for kv in KvIter::new(payload) {
            match kv? {
                (b"status-code", v) => {
                    d.status = Status(v.as_u64().and_then(|v| u32::try_from(v).ok()).unwrap_or(99));
                }
                (b"message", TypedData::String(s)) => d.message = s,
                _ => {}
            }
        }
        Ok(d)
    }

    /// An AGENT-DISCONNECT with HAProxy's reason text for `status`.
    pub fn agent(status: Status) -> Disconnect<'static> {
        Disconnect {
            status,
            message: status.reason().as_bytes(),
        }
    }

    /// Append the frame (AGENT-DISCONNECT: FIN, sid 0, fid 0). "The agent must close the socket
    /// just after sending" it.
    pub fn encode(&self, kind: FrameType, buf: &mut BytesMut, max: u32) -> Result<(), FrameTooBig> {
        let mut w = FrameWriter::begin(buf, kind, Flags::FIN, 0, 0);
        encode_pair(b"status-code", TypedData::Uint32(self.status.0), w.payload());
        encode_pair(b"message", TypedData::String(self.message), w.payload());
        w.finish(max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Frame;

    #[test]
    fn parses_a_real_haproxy_disconnect() {
        // `02 00000001 00 00 0b"status-code" 03 01 07"message" 08 09"I/O error"` (spoa-mirror#17).
        let body = b"\x02\x00\x00\x00\x01\x00\x00\x0bstatus-code\x03\x01\x07message\x08\x09I/O error";
        let f = Frame::parse(bytes::Bytes::from_static(body)).unwrap();
        assert_eq!(f.kind, FrameType::HaproxyDisconnect);
        let d = Disconnect::parse(&f.payload).unwrap();
        assert_eq!(
            d,
            Disconnect {
                status: Status::IO,
                message: b"I/O error"
            }
        );
    }

    #[test]
    fn agent_disconnect_round_trips() {
        let mut buf = BytesMut::new();
        Disconnect::agent(Status::TOO_BIG)
            .encode(FrameType::AgentDisconnect, &mut buf, 16380)
            .unwrap();
        let want = b"\x66\x00\x00\x00\x01\x00\x00\x0bstatus-code\x03\x03\x07message\x08\x10frame is too big";
        assert_eq!(&buf[4..], &want[..]);
        assert_eq!(
            u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize,
            want.len()
        );
        let d = Disconnect::parse(&buf[11..]).unwrap();
        assert_eq!(d.status, Status::TOO_BIG);
    }
}
