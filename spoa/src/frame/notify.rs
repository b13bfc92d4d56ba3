//! NOTIFY (SPOE.txt §3.2.6): `LIST-OF-MESSAGES : [ <MESSAGE-NAME> <NB-ARGS:1 byte> <KV-LIST> ... ]`.
//!
//! A NOTIFY is validated once ([`Notify::parse`]) and then read through borrowing iterators, so
//! handling a message allocates nothing.

use bytes::{BufMut, BytesMut};

use super::data::{bytes_field, encode_bytes};
use super::kv::{self, encode_pair};
use super::{DecodeError, Flags, FrameTooBig, FrameType, FrameWriter, PResult, TypedData, flatten};

/// A validated LIST-OF-MESSAGES. May be empty: 3.1+ can send a NOTIFY with no messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Notify<'a> {
    raw: &'a [u8],
    /// The first message and what follows it, as validation found them: almost every NOTIFY
    /// carries one message, which is then not parsed a second time.
    first: Option<(Message<'a>, &'a [u8])>,
}

impl<'a> Notify<'a> {
    /// Validate the whole payload: every message, every argument, no trailing garbage.
    pub fn parse(payload: &'a [u8]) -> Result<Self, DecodeError> {
        let mut first = None;
        let mut rest = payload;
        while !rest.is_empty() {
            let (r, m) = message(rest).map_err(flatten)?;
            first.get_or_insert((m, r));
            rest = r;
        }
        Ok(Notify { raw: payload, first })
    }

    /// The messages, in order.
    pub fn messages(&self) -> impl Iterator<Item = Message<'a>> + use<'a> {
        let mut first = self.first;
        let mut rest = self.raw;
        std::iter::from_fn(move || {
            if let Some((m, after)) = first.take() {
                rest = after;
                return Some(m);
            }
            if rest.is_empty() {
                return None;
            }
            // Validated in parse(); an error here cannot happen but must not panic either.
            let (r, m) = message(rest).ok()?;
            rest = r;
            Some(m)
        })
    }

    /// Whether the NOTIFY carries no message at all.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }
}

/// One message with its (validated) arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    /// The spoe-message name.
    pub name: &'a [u8],
    nb_args: u8,
    args: &'a [u8],
}

impl<'a> Message<'a> {
    /// The number of arguments (NB-ARGS).
    pub fn nb_args(&self) -> u8 {
        self.nb_args
    }

    /// The arguments as (name, value); unnamed args (`args src`) have an empty name.
    pub fn args(&self) -> impl Iterator<Item = (&'a [u8], TypedData<'a>)> + use<'a> {
        kv::KvIter::new(self.args).map_while(Result::ok)
    }

    /// The first argument called `name`.
    pub fn arg(&self, name: &[u8]) -> Option<TypedData<'a>> {
        self.args().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

fn message(input: &[u8]) -> PResult<'_, Message<'_>> {
    let (rest, name) = bytes_field(input)?;
    let (mut rest, nb_args) = nom::number::complete::be_u8(rest)?;
    let args_start = rest;
    // NB-ARGS past the end of the frame is Truncated: each pair must be complete.
    for _ in 0..nb_args {
        let (r, _) = kv::pair(rest)?;
        rest = r;
    }
    let used = args_start.len() - rest.len();
    let args = args_start
        .get(..used)
        .ok_or(nom::Err::Error(DecodeError::Malformed))?;
    Ok((rest, Message { name, nb_args, args }))
}

/// Append one message (for load generators and tests; HAProxy is the real sender).
/// Panics if more than 255 args are given: that is a caller bug, never network input.
pub fn encode_message(name: &[u8], args: &[(&[u8], TypedData<'_>)], buf: &mut impl BufMut) {
    encode_bytes(name, buf);
    buf.put_u8(u8::try_from(args.len()).expect("at most 255 args"));
    for (n, v) in args {
        encode_pair(n, *v, buf);
    }
}

/// Append a complete NOTIFY frame whose payload is `messages` (already encoded).
pub fn encode_notify(
    sid: u64,
    fid: u64,
    messages: &[u8],
    buf: &mut BytesMut,
    max: u32,
) -> Result<(), FrameTooBig> {
    let mut w = FrameWriter::begin(buf, FrameType::Notify, Flags::FIN, sid, fid);
    w.payload().put_slice(messages);
    w.finish(max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Frame;
    use std::net::Ipv4Addr;

    /// `00 00 00 1d 03 00 00 00 01 01 01 03 "tag" 02 02 "ip" 06 0a 00 00 01 04 "path" 08 02 "/x"`.
    const REFERENCE: &[u8] = b"\x00\x00\x00\x1d\x03\x00\x00\x00\x01\x01\x01\x03tag\x02\x02ip\x06\x0a\x00\x00\x01\x04path\x08\x02/x";

    #[test]
    fn parses_the_reference_notify() {
        assert_eq!(REFERENCE.len(), 4 + 0x1d);
        let f = Frame::parse(bytes::Bytes::from_static(&REFERENCE[4..])).unwrap();
        assert_eq!(
            (f.kind, f.flags, f.stream_id, f.frame_id),
            (FrameType::Notify, Flags::FIN, 1, 1)
        );
        let n = Notify::parse(&f.payload).unwrap();
        let msgs: Vec<_> = n.messages().collect();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].name, b"tag");
        assert_eq!(msgs[0].nb_args(), 2);
        assert_eq!(
            msgs[0].arg(b"ip"),
            Some(TypedData::Ipv4(Ipv4Addr::new(10, 0, 0, 1)))
        );
        assert_eq!(msgs[0].arg(b"path"), Some(TypedData::String(b"/x")));
        assert_eq!(msgs[0].arg(b"nope"), None);
    }

    #[test]
    fn encodes_the_reference_notify() {
        let mut m = Vec::new();
        encode_message(
            b"tag",
            &[
                (b"ip", TypedData::Ipv4(Ipv4Addr::new(10, 0, 0, 1))),
                (b"path", TypedData::String(b"/x")),
            ],
            &mut m,
        );
        let mut buf = BytesMut::new();
        encode_notify(1, 1, &m, &mut buf, 16380).unwrap();
        assert_eq!(&buf[..], REFERENCE);
    }

    #[test]
    fn empty_notify_is_valid() {
        let n = Notify::parse(b"").unwrap();
        assert!(n.is_empty());
        assert_eq!(n.messages().count(), 0);
    }

    #[test]
    fn hostile_message_lists_are_refused() {
        // NB-ARGS says 3, only one arg present.
        assert_eq!(
            Notify::parse(b"\x03tag\x03\x02ip\x00"),
            Err(DecodeError::Truncated)
        );
        // NB-ARGS missing entirely.
        assert_eq!(Notify::parse(b"\x03tag"), Err(DecodeError::Truncated));
        // Name length past the end.
        assert_eq!(Notify::parse(b"\x09tag"), Err(DecodeError::Truncated));
        // Arg with a reserved type.
        assert_eq!(
            Notify::parse(b"\x03tag\x01\x02ip\x0c"),
            Err(DecodeError::ReservedType(12))
        );
        // A valid message followed by garbage.
        assert_eq!(Notify::parse(b"\x03tag\x00\x05"), Err(DecodeError::Truncated));
    }

    #[test]
    fn unnamed_args_have_empty_names() {
        let n = Notify::parse(b"\x01m\x02\x00\x06\x7f\x00\x00\x01\x02id\x08\x01u").unwrap();
        let m = n.messages().next().unwrap();
        assert_eq!(m.arg(b""), Some(TypedData::Ipv4(Ipv4Addr::LOCALHOST)));
        assert_eq!(m.arg(b"id"), Some(TypedData::String(b"u")));
    }
}
