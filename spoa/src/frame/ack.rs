//! ACK (SPOE.txt §3.2.7, §3.4): `LIST-OF-ACTIONS : [ <ACTION-TYPE:1> <NB-ARGS:1> <ACTION-ARGS> ... ]`.
//!
//! ```text
//! SET-VAR   : 01 03 <SCOPE:1 byte> <NAME: varint-len + bytes> <VALUE: TYPED-DATA>
//! UNSET-VAR : 02 02 <SCOPE:1 byte> <NAME: varint-len + bytes>
//! ```

use bytes::{BufMut, BytesMut};

use super::data::{bytes_field, encode_bytes};
use super::{DecodeError, Flags, FrameTooBig, FrameType, FrameWriter, PResult, TypedData, flatten};

const SET_VAR: u8 = 1;
const UNSET_VAR: u8 = 2;

/// Variable scopes; HAProxy prefixes the name itself (`<scope>.<var-prefix>.<name>`, < 64 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Scope {
    /// 0: process (needs `option force-set-var`).
    Proc = 0,
    /// 1: session.
    Sess = 1,
    /// 2: transaction.
    Txn = 2,
    /// 3: request.
    Req = 3,
    /// 4: response.
    Res = 4,
}

impl Scope {
    /// From the wire byte; `None` for values HAProxy would refuse.
    pub fn from_u8(b: u8) -> Option<Scope> {
        Some(match b {
            0 => Scope::Proc,
            1 => Scope::Sess,
            2 => Scope::Txn,
            3 => Scope::Req,
            4 => Scope::Res,
            _ => return None,
        })
    }
}

/// One action in an ACK.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action<'a> {
    /// Set a variable. A NULL value makes HAProxy unset it.
    SetVar {
        /// The scope.
        scope: Scope,
        /// The bare name (no scope, no prefix).
        name: &'a [u8],
        /// The value.
        value: TypedData<'a>,
    },
    /// Unset a variable.
    UnsetVar {
        /// The scope.
        scope: Scope,
        /// The bare name.
        name: &'a [u8],
    },
}

impl<'a> Action<'a> {
    /// Append the encoding.
    pub fn encode(&self, buf: &mut impl BufMut) {
        match *self {
            Action::SetVar { scope, name, value } => {
                // NB-ARGS must be exactly 3 for set-var, 2 for unset-var; the scope is a raw byte.
                buf.put_slice(&[SET_VAR, 3, scope as u8]);
                encode_bytes(name, buf);
                value.encode(buf);
            }
            Action::UnsetVar { scope, name } => {
                buf.put_slice(&[UNSET_VAR, 2, scope as u8]);
                encode_bytes(name, buf);
            }
        }
    }

    /// Decode one action (agents never receive these; used by tests and the load generator).
    pub fn decode(input: &'a [u8]) -> PResult<'a, Action<'a>> {
        let (rest, kind) = nom::number::complete::be_u8(input)?;
        let (rest, nb) = nom::number::complete::be_u8(rest)?;
        let (rest, scope) = nom::number::complete::be_u8(rest)?;
        let scope = Scope::from_u8(scope).ok_or(nom::Err::Error(DecodeError::Malformed))?;
        let (rest, name) = bytes_field(rest)?;
        match (kind, nb) {
            (SET_VAR, 3) => {
                let (rest, value) = TypedData::decode(rest)?;
                Ok((rest, Action::SetVar { scope, name, value }))
            }
            (UNSET_VAR, 2) => Ok((rest, Action::UnsetVar { scope, name })),
            _ => Err(nom::Err::Error(DecodeError::Malformed)),
        }
    }
}

/// Decode a whole LIST-OF-ACTIONS.
pub fn decode_actions(payload: &[u8]) -> Result<Vec<Action<'_>>, DecodeError> {
    let mut out = Vec::new();
    let mut rest = payload;
    while !rest.is_empty() {
        let (r, a) = Action::decode(rest).map_err(flatten)?;
        out.push(a);
        rest = r;
    }
    Ok(out)
}

/// Builds one ACK frame in place: begin, push actions, finish.
#[derive(Debug)]
pub struct AckWriter<'b> {
    frame: FrameWriter<'b>,
    actions: usize,
}

impl<'b> AckWriter<'b> {
    /// Start an ACK echoing the NOTIFY's (stream-id, frame-id).
    pub fn begin(buf: &'b mut BytesMut, sid: u64, fid: u64) -> Self {
        AckWriter {
            frame: FrameWriter::begin(buf, FrameType::Ack, Flags::FIN, sid, fid),
            actions: 0,
        }
    }

    /// Append an action.
    pub fn push(&mut self, action: Action<'_>) {
        action.encode(self.frame.payload());
        self.actions += 1;
    }

    /// How many actions so far.
    pub fn len(&self) -> usize {
        self.actions
    }

    /// Whether no action was pushed yet.
    pub fn is_empty(&self) -> bool {
        self.actions == 0
    }

    /// Patch the length; on overflow the frame is removed and the caller must send a smaller one.
    pub fn finish(self, max: u32) -> Result<(), FrameTooBig> {
        self.frame.finish(max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Frame;

    /// `00 00 00 23 67 00 00 00 01 01 01 | 01 03 02 06 "egress" 08 04 "be_a" | 01 03 02 05 "score" 04 fc 03`.
    const REFERENCE: &[u8] =
        b"\x00\x00\x00\x23\x67\x00\x00\x00\x01\x01\x01\x01\x03\x02\x06egress\x08\x04be_a\x01\x03\x02\x05score\x04\xfc\x03";

    #[test]
    fn encodes_the_reference_ack() {
        let mut buf = BytesMut::new();
        let mut w = AckWriter::begin(&mut buf, 1, 1);
        w.push(Action::SetVar {
            scope: Scope::Txn,
            name: b"egress",
            value: TypedData::String(b"be_a"),
        });
        w.push(Action::SetVar {
            scope: Scope::Txn,
            name: b"score",
            value: TypedData::Int64(300),
        });
        assert_eq!(w.len(), 2);
        w.finish(16380).unwrap();
        assert_eq!(&buf[..], REFERENCE);
    }

    #[test]
    fn decodes_the_reference_ack() {
        let f = Frame::parse(bytes::Bytes::from_static(&REFERENCE[4..])).unwrap();
        assert_eq!(f.kind, FrameType::Ack);
        let actions = decode_actions(&f.payload).unwrap();
        assert_eq!(
            actions,
            [
                Action::SetVar {
                    scope: Scope::Txn,
                    name: b"egress",
                    value: TypedData::String(b"be_a")
                },
                Action::SetVar {
                    scope: Scope::Txn,
                    name: b"score",
                    value: TypedData::Int64(300)
                },
            ]
        );
    }

    #[test]
    fn all_five_scopes_and_unset_round_trip() {
        for s in 0..=4u8 {
            let scope = Scope::from_u8(s).unwrap();
            for a in [
                Action::SetVar {
                    scope,
                    name: b"v",
                    value: TypedData::Bool(true),
                },
                Action::UnsetVar { scope, name: b"v" },
            ] {
                let mut b = Vec::new();
                a.encode(&mut b);
                assert_eq!(b[2], s, "the scope is a raw byte");
                assert_eq!(decode_actions(&b).unwrap(), [a]);
            }
        }
        let mut b = Vec::new();
        Action::UnsetVar {
            scope: Scope::Res,
            name: b"x",
        }
        .encode(&mut b);
        assert_eq!(b, [0x02, 0x02, 0x04, 0x01, b'x']);
        assert_eq!(Scope::from_u8(5), None);
        assert_eq!(
            decode_actions(&[0x01, 0x02, 0x02, 0x01, b'x']),
            Err(DecodeError::Malformed)
        );
    }
}
