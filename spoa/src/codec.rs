//! The length layer: a tokio-util codec that checks the 4-byte length against the negotiated
//! max-frame-size *before* reserving or buffering the body, then hands the complete body to the nom
//! parser in [`crate::frame`]. `Ok(None)` = need more bytes; `Err` = the stream is corrupt and must
//! end with an AGENT-DISCONNECT carrying [`CodecError::status`].

use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::frame::{
    AgentHello, DecodeError, Disconnect, Frame, FrameTooBig, FrameType, MIN_FRAME_LEN, Status,
};

/// Why the byte stream cannot continue.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The declared length is above the negotiated max-frame-size.
    #[error("frame length {len} exceeds max-frame-size {max}")]
    TooBig {
        /// The declared length.
        len: u32,
        /// The limit in force.
        max: u32,
    },
    /// The declared length cannot even hold the frame metadata (zero-length frames included).
    #[error("frame length {0} is shorter than the frame metadata")]
    TooShort(u32),
    /// The body does not follow the grammar.
    #[error("malformed frame: {0}")]
    Decode(#[from] DecodeError),
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl CodecError {
    /// The SPOP status to put in the AGENT-DISCONNECT.
    pub fn status(&self) -> Status {
        match self {
            CodecError::TooBig { .. } => Status::TOO_BIG,
            CodecError::TooShort(_) | CodecError::Decode(_) => Status::INVALID,
            CodecError::Io(_) => Status::IO,
        }
    }
}

impl From<FrameTooBig> for CodecError {
    fn from(e: FrameTooBig) -> Self {
        CodecError::TooBig {
            len: u32::try_from(e.len).unwrap_or(u32::MAX),
            max: e.max,
        }
    }
}

/// The SPOP frame codec. `max_frame_size` counts the frame without its 4-byte prefix.
#[derive(Clone, Copy, Debug)]
pub struct SpopCodec {
    max_frame_size: u32,
}

impl SpopCodec {
    /// A codec refusing frames longer than `max_frame_size` (before the HELLO: our own limit).
    pub fn new(max_frame_size: u32) -> Self {
        SpopCodec { max_frame_size }
    }

    /// The limit in force.
    pub fn max_frame_size(&self) -> u32 {
        self.max_frame_size
    }

    /// Switch to the negotiated limit after the HELLO exchange.
    pub fn set_max_frame_size(&mut self, max: u32) {
        self.max_frame_size = max;
    }

    /// The length layer alone: the size of the first frame in `src`, prefix included, once it is
    /// complete (`src[4..size]` is its body); `Ok(None)`, after reserving room for the rest, while
    /// it is not. Nothing is consumed. The agent's connection loop parses the body in place
    /// ([`crate::frame::FrameRef`]) and then advances past it.
    pub fn frame_len(&self, src: &mut BytesMut) -> Result<Option<usize>, CodecError> {
        let Some(prefix) = src.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        // "The FRAME (excluding the 4-byte prefix) must be ≤ the negotiated max-frame-size".
        if len > self.max_frame_size {
            return Err(CodecError::TooBig {
                len,
                max: self.max_frame_size,
            });
        }
        // A zero or short length would otherwise stall or spin (haproxy#2490, nbari/spop 0.12.0).
        if len < MIN_FRAME_LEN {
            return Err(CodecError::TooShort(len));
        }
        let total = 4 + len as usize;
        if src.len() < total {
            // Safe to reserve now: bounded by max_frame_size.
            src.reserve(total - src.len());
            return Ok(None);
        }
        Ok(Some(total))
    }
}

impl Decoder for SpopCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        let Some(total) = self.frame_len(src)? else {
            return Ok(None);
        };
        src.advance(4);
        let body = src.split_to(total - 4).freeze();
        Ok(Some(Frame::parse(body)?))
    }
}

impl Encoder<AgentHello<'_>> for SpopCodec {
    type Error = CodecError;

    fn encode(&mut self, hello: AgentHello<'_>, dst: &mut BytesMut) -> Result<(), CodecError> {
        Ok(hello.encode(dst, self.max_frame_size)?)
    }
}

impl Encoder<Disconnect<'_>> for SpopCodec {
    type Error = CodecError;

    fn encode(&mut self, d: Disconnect<'_>, dst: &mut BytesMut) -> Result<(), CodecError> {
        Ok(d.encode(FrameType::AgentDisconnect, dst, self.max_frame_size)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Flags, hello::AgentHello};

    const NOTIFY: &[u8] = b"\x00\x00\x00\x1d\x03\x00\x00\x00\x01\x01\x01\x03tag\x02\x02ip\x06\x0a\x00\x00\x01\x04path\x08\x02/x";

    #[test]
    fn frames_delivered_one_byte_at_a_time() {
        let mut codec = SpopCodec::new(16380);
        let mut stream = Vec::new();
        for _ in 0..3 {
            stream.extend_from_slice(NOTIFY);
        }
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for &b in &stream {
            buf.extend_from_slice(&[b]);
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(frames.len(), 3);
        assert!(buf.is_empty());
        for f in frames {
            assert_eq!(
                (f.kind, f.flags, f.stream_id, f.frame_id),
                (FrameType::Notify, Flags::FIN, 1, 1)
            );
            assert_eq!(f.payload.len(), 0x1d - 7);
        }
    }

    #[test]
    fn length_above_limit_is_refused_before_buffering() {
        let mut codec = SpopCodec::new(300);
        // Declares 0xFFFFFFF0 bytes; only the prefix has arrived.
        let mut buf = BytesMut::from(&b"\xff\xff\xff\xf0"[..]);
        let cap_before = buf.capacity();
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(matches!(
            err,
            CodecError::TooBig {
                len: 0xffff_fff0,
                max: 300
            }
        ));
        assert_eq!(err.status(), Status::TOO_BIG);
        assert_eq!(
            buf.capacity(),
            cap_before,
            "nothing reserved for a refused length"
        );
        // Exactly the limit is fine (and needs more bytes).
        let mut buf = BytesMut::from(&300u32.to_be_bytes()[..]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(
            codec
                .decode(&mut BytesMut::from(&301u32.to_be_bytes()[..]))
                .is_err()
        );
    }

    #[test]
    fn zero_and_short_lengths_are_invalid() {
        let mut codec = SpopCodec::new(16380);
        for len in 0..MIN_FRAME_LEN {
            let mut buf = BytesMut::from(&len.to_be_bytes()[..]);
            buf.extend_from_slice(&[0; 8]);
            let err = codec.decode(&mut buf).unwrap_err();
            assert!(matches!(err, CodecError::TooShort(l) if l == len));
            assert_eq!(err.status(), Status::INVALID);
        }
        // A short prefix is just incomplete.
        assert!(
            codec
                .decode(&mut BytesMut::from(&b"\x00\x00"[..]))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn truncated_header_inside_a_complete_frame_is_invalid() {
        let mut codec = SpopCodec::new(16380);
        // Length 7 but the stream-id varint claims continuation bytes that are not there.
        let mut buf = BytesMut::from(&b"\x00\x00\x00\x07\x03\x00\x00\x00\x01\xf0\xf0"[..]);
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(matches!(err, CodecError::Decode(DecodeError::Truncated)));
    }

    #[test]
    fn varint_over_ten_bytes_in_header_is_invalid() {
        let mut codec = SpopCodec::new(16380);
        let mut body = vec![0x03, 0, 0, 0, 1];
        body.extend_from_slice(&[0xff; 11]);
        body.push(0x01);
        let mut buf = BytesMut::from(&(body.len() as u32).to_be_bytes()[..]);
        buf.extend_from_slice(&body);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(CodecError::Decode(DecodeError::VarintTooLong))
        ));
    }

    #[test]
    fn encoder_writes_hello_and_disconnect() {
        let mut codec = SpopCodec::new(16380);
        let mut out = BytesMut::new();
        codec
            .encode(
                AgentHello {
                    max_frame_size: 16380,
                    capabilities: "pipelining",
                },
                &mut out,
            )
            .unwrap();
        codec.encode(Disconnect::agent(Status::NORMAL), &mut out).unwrap();
        let a = codec.decode(&mut out).unwrap().unwrap();
        let b = codec.decode(&mut out).unwrap().unwrap();
        assert_eq!(
            (a.kind, b.kind),
            (FrameType::AgentHello, FrameType::AgentDisconnect)
        );
        assert!(out.is_empty());
    }
}
