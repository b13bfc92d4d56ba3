//! SPOP 2.0 frames (SPOE.txt §3.2): one module per protocol concept.
//!
//! ```text
//! <FRAME-LENGTH:4 bytes BE> <FRAME-TYPE:1> <FLAGS:4 BE> <STREAM-ID:varint> <FRAME-ID:varint> <PAYLOAD>
//! ```
//! The length layer lives in [`crate::codec`]; everything here parses a *complete* frame with nom, so
//! running out of bytes is always an error ([`DecodeError::Truncated`]), never "need more".

pub mod ack;
pub mod data;
pub mod disconnect;
pub mod hello;
pub mod kv;
pub mod notify;
pub mod varint;

use bytes::{Bytes, BytesMut};
use nom::Parser;

pub use ack::{Action, Scope};
pub use data::TypedData;
pub use disconnect::Disconnect;
pub use hello::{AgentHello, HaproxyHello};
pub use notify::{Message, Notify};

/// Why a complete payload could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A field runs past the end of the frame (including NB-ARGS past the end).
    #[error("field runs past the end of the frame")]
    Truncated,
    /// A varint with more than 10 bytes.
    #[error("varint longer than 10 bytes")]
    VarintTooLong,
    /// A varint whose value does not fit in 64 bits.
    #[error("varint overflows 64 bits")]
    VarintOverflow,
    /// A typed-data type in the reserved range 10–15.
    #[error("reserved typed-data type {0}")]
    ReservedType(u8),
    /// Anything else that does not follow the grammar.
    #[error("malformed frame")]
    Malformed,
}

impl<I> nom::error::ParseError<I> for DecodeError {
    fn from_error_kind(_input: I, kind: nom::error::ErrorKind) -> Self {
        match kind {
            nom::error::ErrorKind::Eof => DecodeError::Truncated,
            _ => DecodeError::Malformed,
        }
    }

    fn append(_input: I, _kind: nom::error::ErrorKind, other: Self) -> Self {
        other
    }
}

/// The nom result type of every parser in this module.
pub type PResult<'a, O> = nom::IResult<&'a [u8], O, DecodeError>;

/// Unwrap a nom error into our error (complete input: `Incomplete` cannot happen, map it anyway).
pub fn flatten(e: nom::Err<DecodeError>) -> DecodeError {
    match e {
        nom::Err::Error(e) | nom::Err::Failure(e) => e,
        nom::Err::Incomplete(_) => DecodeError::Truncated,
    }
}

/// `n` bytes from the front of a complete input.
#[inline]
pub(crate) fn take(input: &[u8], n: usize) -> PResult<'_, &[u8]> {
    nom::bytes::complete::take(n).parse(input)
}

/// Frame types (`enum spop_frame_type`, SPOE.txt §3.2.2). Unknown types are kept, not rejected:
/// "Unknown frames may be silently skipped".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameType {
    /// 1, HAProxy → agent.
    HaproxyHello,
    /// 2, HAProxy → agent.
    HaproxyDisconnect,
    /// 3, HAProxy → agent.
    Notify,
    /// 101, agent → HAProxy.
    AgentHello,
    /// 102, agent → HAProxy.
    AgentDisconnect,
    /// 103, agent → HAProxy.
    Ack,
    /// Anything else (including 0, the 2.x fragment continuation, which we never negotiate).
    Unknown(u8),
}

impl FrameType {
    /// From the wire byte.
    pub fn from_u8(b: u8) -> Self {
        match b {
            1 => FrameType::HaproxyHello,
            2 => FrameType::HaproxyDisconnect,
            3 => FrameType::Notify,
            101 => FrameType::AgentHello,
            102 => FrameType::AgentDisconnect,
            103 => FrameType::Ack,
            other => FrameType::Unknown(other),
        }
    }

    /// The wire byte.
    pub fn to_u8(self) -> u8 {
        match self {
            FrameType::HaproxyHello => 1,
            FrameType::HaproxyDisconnect => 2,
            FrameType::Notify => 3,
            FrameType::AgentHello => 101,
            FrameType::AgentDisconnect => 102,
            FrameType::Ack => 103,
            FrameType::Unknown(b) => b,
        }
    }

    /// A bounded label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            FrameType::HaproxyHello => "haproxy_hello",
            FrameType::HaproxyDisconnect => "haproxy_disconnect",
            FrameType::Notify => "notify",
            FrameType::AgentHello => "agent_hello",
            FrameType::AgentDisconnect => "agent_disconnect",
            FrameType::Ack => "ack",
            FrameType::Unknown(_) => "unknown",
        }
    }
}

/// Frame flags, 32 bits in network order (SPOP 1.0 used host order, hence 2.0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Flags(pub u32);

impl Flags {
    /// `SPOP_FRM_FL_FIN`: the last (and, for us, only) fragment.
    pub const FIN: Flags = Flags(0x0000_0001);
    /// `SPOP_FRM_FL_ABRT`: abort a fragmented frame.
    pub const ABORT: Flags = Flags(0x0000_0002);

    /// Whether FIN is set.
    pub fn fin(self) -> bool {
        self.0 & Self::FIN.0 != 0
    }

    /// Whether ABORT is set.
    pub fn abort(self) -> bool {
        self.0 & Self::ABORT.0 != 0
    }
}

/// The smallest legal frame after the length prefix: type + flags + two 1-byte varints.
pub const MIN_FRAME_LEN: u32 = 7;
/// `SPOP_MIN_FRAME_SIZE`: the lowest max-frame-size either side may announce.
pub const MIN_MAX_FRAME_SIZE: u32 = 256;
/// HAProxy's default max-frame-size: `tune.bufsize - 4` (16384 - 4), not 16384.
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 16380;

/// A decoded frame: the metadata plus the payload, shared with the read buffer (zero-copy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The frame type.
    pub kind: FrameType,
    /// FIN / ABORT.
    pub flags: Flags,
    /// Stream-ID: an opaque correlation key (2.x: stream uniq_id; 3.x: odd per mux connection).
    pub stream_id: u64,
    /// Frame-ID: echoed in the ACK.
    pub frame_id: u64,
    /// Everything after the metadata.
    pub payload: Bytes,
}

impl Frame {
    /// Parse a frame body (everything after the 4-byte length) held in `body`.
    pub fn parse(body: Bytes) -> Result<Frame, DecodeError> {
        let f = FrameRef::parse(&body)?;
        let offset = body.len() - f.payload.len();
        Ok(Frame {
            kind: f.kind,
            flags: f.flags,
            stream_id: f.stream_id,
            frame_id: f.frame_id,
            payload: body.slice(offset..),
        })
    }
}

/// A decoded frame borrowing its payload from the read buffer: what the agent's connection loop
/// handles, so that a frame costs neither a reference count nor a `Bytes` (see [`Frame`] for an
/// owned one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRef<'a> {
    /// The frame type.
    pub kind: FrameType,
    /// FIN / ABORT.
    pub flags: Flags,
    /// Stream-ID.
    pub stream_id: u64,
    /// Frame-ID.
    pub frame_id: u64,
    /// Everything after the metadata.
    pub payload: &'a [u8],
}

impl<'a> FrameRef<'a> {
    /// Parse a frame body (everything after the 4-byte length).
    pub fn parse(body: &'a [u8]) -> Result<FrameRef<'a>, DecodeError> {
        let (payload, (kind, flags, stream_id, frame_id)) = header(body).map_err(flatten)?;
        Ok(FrameRef {
            kind: FrameType::from_u8(kind),
            flags: Flags(flags),
            stream_id,
            frame_id,
            payload,
        })
    }
}

fn header(input: &[u8]) -> PResult<'_, (u8, u32, u64, u64)> {
    let (i, kind) = nom::number::complete::be_u8(input)?;
    let (i, flags) = nom::number::complete::be_u32(i)?;
    let (i, sid) = varint::decode(i)?;
    let (i, fid) = varint::decode(i)?;
    Ok((i, (kind, flags, sid, fid)))
}

/// The encoded frame would exceed the negotiated max-frame-size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("frame of {len} bytes exceeds max-frame-size {max}")]
pub struct FrameTooBig {
    /// Encoded length without the prefix.
    pub len: usize,
    /// The limit.
    pub max: u32,
}

/// Writes one frame in place at the end of a buffer, then patches its length prefix.
#[derive(Debug)]
pub struct FrameWriter<'b> {
    buf: &'b mut BytesMut,
    start: usize,
}

impl<'b> FrameWriter<'b> {
    /// Start a frame: a placeholder length, then the metadata. FIN is always set by callers: we
    /// never fragment ("the FIN flag must be set on all frames", 3.x SPOE.txt).
    pub fn begin(buf: &'b mut BytesMut, kind: FrameType, flags: Flags, sid: u64, fid: u64) -> Self {
        let start = buf.len();
        // Assembled on the stack and appended at once: one capacity check instead of one per field.
        let mut head = [0u8; 4 + 1 + 4 + 2 * varint::MAX_LEN];
        head[4] = kind.to_u8();
        head[5..9].copy_from_slice(&flags.0.to_be_bytes());
        let mut n = 9;
        for v in [sid, fid] {
            let (bytes, len) = varint::encode_array(v);
            head[n..n + len].copy_from_slice(&bytes[..len]);
            n += len;
        }
        buf.reserve(n + 64);
        buf.extend_from_slice(&head[..n]);
        FrameWriter { buf, start }
    }

    /// The buffer, for appending the payload.
    pub fn payload(&mut self) -> &mut BytesMut {
        self.buf
    }

    /// Patch the length, or remove the whole frame if it is larger than `max`.
    pub fn finish(self, max: u32) -> Result<(), FrameTooBig> {
        let len = self.buf.len() - self.start - 4;
        if len > max as usize {
            self.buf.truncate(self.start);
            return Err(FrameTooBig { len, max });
        }
        // Our own buffer, written above: the 4 bytes exist.
        self.buf[self.start..self.start + 4].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(())
    }
}

/// SPOP status codes (SPOE.txt §3.5, `spop_err_reasons`), carried in DISCONNECT frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Status(pub u32);

impl Status {
    /// 0: normal (no error occurred).
    pub const NORMAL: Status = Status(0);
    /// 1: I/O error.
    pub const IO: Status = Status(1);
    /// 2: a timeout occurred.
    pub const TIMEOUT: Status = Status(2);
    /// 3: frame is too big.
    pub const TOO_BIG: Status = Status(3);
    /// 4: invalid frame received.
    pub const INVALID: Status = Status(4);
    /// 5: version value not found.
    pub const NO_VERSION: Status = Status(5);
    /// 6: max-frame-size value not found.
    pub const NO_FRAME_SIZE: Status = Status(6);
    /// 7: capabilities value not found.
    pub const NO_CAPABILITIES: Status = Status(7);
    /// 8: unsupported version.
    pub const BAD_VERSION: Status = Status(8);
    /// 9: max-frame-size too big or too small.
    pub const BAD_FRAME_SIZE: Status = Status(9);
    /// 10: payload fragmentation is not supported.
    pub const FRAGMENTATION: Status = Status(10);
    /// 11: invalid interlaced frames.
    pub const INTERLACED: Status = Status(11);
    /// 12: frame-id not found.
    pub const FRAME_ID_NOT_FOUND: Status = Status(12);
    /// 13: resource allocation error.
    pub const RESOURCE: Status = Status(13);
    /// 99: an unknown error occurred.
    pub const UNKNOWN: Status = Status(99);

    /// HAProxy's reason text for the code.
    pub fn reason(self) -> &'static str {
        match self.0 {
            0 => "normal",
            1 => "I/O error",
            2 => "a timeout occurred",
            3 => "frame is too big",
            4 => "invalid frame received",
            5 => "version value not found",
            6 => "max-frame-size value not found",
            7 => "capabilities value not found",
            8 => "unsupported version",
            9 => "max-frame-size too big or too small",
            10 => "payload fragmentation is not supported",
            11 => "invalid interlaced frames",
            12 => "frame-id not found",
            13 => "resource allocation error",
            _ => "an unknown error occurred",
        }
    }

    /// A bounded metric label (codes outside the table collapse to "other").
    pub fn label(self) -> &'static str {
        const LABELS: [&str; 14] = [
            "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13",
        ];
        LABELS.get(self.0 as usize).copied().unwrap_or("other")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    #[test]
    fn frame_types_round_trip() {
        for b in 0..=255u8 {
            assert_eq!(FrameType::from_u8(b).to_u8(), b);
        }
        assert_eq!(FrameType::from_u8(0x65), FrameType::AgentHello);
        assert_eq!(FrameType::from_u8(0), FrameType::Unknown(0));
    }

    #[test]
    fn writer_patches_length_and_refuses_oversize() {
        let mut buf = BytesMut::new();
        let mut w = FrameWriter::begin(&mut buf, FrameType::Ack, Flags::FIN, 2, 1);
        let _ = w.payload();
        w.finish(256).unwrap();
        // The minimal empty ACK from a real capture (haproxytech/spoa-mirror#17).
        assert_eq!(
            &buf[..],
            &[0x00, 0x00, 0x00, 0x07, 0x67, 0x00, 0x00, 0x00, 0x01, 0x02, 0x01]
        );

        let mut w = FrameWriter::begin(&mut buf, FrameType::Ack, Flags::FIN, 2, 1);
        w.payload().put_slice(&[0u8; 300]);
        assert_eq!(w.finish(256), Err(FrameTooBig { len: 307, max: 256 }));
        assert_eq!(buf.len(), 11, "the refused frame is removed");
    }

    #[test]
    fn writer_header_round_trips_every_varint_size() {
        for (sid, fid) in [
            (0, 0),
            (239, 240),
            (2287, 2288),
            (1 << 40, 264_432),
            (u64::MAX, 1),
        ] {
            let mut buf = BytesMut::new();
            let mut w = FrameWriter::begin(&mut buf, FrameType::Ack, Flags::FIN, sid, fid);
            w.payload().put_slice(b"xy");
            w.finish(16380).unwrap();
            let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
            assert_eq!(len, buf.len() - 4);
            let f = FrameRef::parse(&buf[4..]).unwrap();
            assert_eq!(
                (f.kind, f.flags, f.stream_id, f.frame_id, f.payload),
                (FrameType::Ack, Flags::FIN, sid, fid, &b"xy"[..])
            );
            assert_eq!(
                Frame::parse(buf.split_off(4).freeze()).unwrap().payload,
                &b"xy"[..]
            );
        }
    }

    #[test]
    fn header_parse_rejects_truncation() {
        for body in [
            &b""[..],
            &[3],
            &[3, 0, 0, 0],
            &[3, 0, 0, 0, 1],
            &[3, 0, 0, 0, 1, 0xf0],
        ] {
            assert_eq!(
                Frame::parse(Bytes::copy_from_slice(body)),
                Err(DecodeError::Truncated)
            );
        }
        let f = Frame::parse(Bytes::from_static(&[3, 0, 0, 0, 1, 0xfc, 0x03, 1, 0xaa])).unwrap();
        assert_eq!(
            (f.kind, f.flags, f.stream_id, f.frame_id),
            (FrameType::Notify, Flags::FIN, 300, 1)
        );
        assert_eq!(&f.payload[..], &[0xaa]);
    }
}
