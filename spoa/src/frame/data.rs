//! Typed data (SPOE.txt §3.1): `<TYPE:4 bits><FLAGS:4 bits><DATA>`, type in the low nibble.

use std::net::{Ipv4Addr, Ipv6Addr};

use bytes::BufMut;

use super::{DecodeError, PResult, take, varint};

const T_NULL: u8 = 0;
const T_BOOL: u8 = 1;
const T_INT32: u8 = 2;
const T_UINT32: u8 = 3;
const T_INT64: u8 = 4;
const T_UINT64: u8 = 5;
const T_IPV4: u8 = 6;
const T_IPV6: u8 = 7;
const T_STRING: u8 = 8;
const T_BINARY: u8 = 9;
/// `SPOP_DATA_FL_TRUE`: the BOOL value lives in the flags nibble.
const FL_TRUE: u8 = 0x10;

/// One typed value, borrowing strings and binaries from the frame payload (zero-copy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TypedData<'a> {
    /// Type 0. HAProxy sends it for a sample that is not available.
    Null,
    /// Type 1, value in the flags nibble.
    Bool(bool),
    /// Type 2.
    Int32(i32),
    /// Type 3.
    Uint32(u32),
    /// Type 4. HAProxy encodes every signed sample this way (two's complement in the varint).
    Int64(i64),
    /// Type 5.
    Uint64(u64),
    /// Type 6, 4 bytes in network order.
    Ipv4(Ipv4Addr),
    /// Type 7, 16 bytes in network order.
    Ipv6(Ipv6Addr),
    /// Type 8, varint length + bytes, not NUL-terminated. Not necessarily UTF-8.
    String(&'a [u8]),
    /// Type 9, varint length + bytes.
    Binary(&'a [u8]),
}

impl<'a> TypedData<'a> {
    /// Decode one typed value from the front of `input`.
    #[inline]
    pub fn decode(input: &'a [u8]) -> PResult<'a, TypedData<'a>> {
        let Some((&tag, rest)) = input.split_first() else {
            return Err(nom::Err::Error(DecodeError::Truncated));
        };
        match tag & 0x0F {
            T_NULL => Ok((rest, TypedData::Null)),
            // HAProxy: true iff (byte & 0xF0) == SPOP_DATA_FL_TRUE.
            T_BOOL => Ok((rest, TypedData::Bool(tag & 0xF0 == FL_TRUE))),
            // HAProxy decodes all four integer types as a u64 varint stored into a signed 64-bit.
            T_INT32 => varint::decode(rest).map(|(r, v)| (r, TypedData::Int32(v as i64 as i32))),
            T_UINT32 => varint::decode(rest).map(|(r, v)| (r, TypedData::Uint32(v as u32))),
            T_INT64 => varint::decode(rest).map(|(r, v)| (r, TypedData::Int64(v as i64))),
            T_UINT64 => varint::decode(rest).map(|(r, v)| (r, TypedData::Uint64(v))),
            T_IPV4 => {
                let (r, b) = take(rest, 4)?;
                let a: [u8; 4] = b
                    .try_into()
                    .map_err(|_| nom::Err::Error(DecodeError::Truncated))?;
                Ok((r, TypedData::Ipv4(Ipv4Addr::from(a))))
            }
            T_IPV6 => {
                let (r, b) = take(rest, 16)?;
                let a: [u8; 16] = b
                    .try_into()
                    .map_err(|_| nom::Err::Error(DecodeError::Truncated))?;
                Ok((r, TypedData::Ipv6(Ipv6Addr::from(a))))
            }
            T_STRING => bytes_field(rest).map(|(r, s)| (r, TypedData::String(s))),
            T_BINARY => bytes_field(rest).map(|(r, s)| (r, TypedData::Binary(s))),
            reserved => Err(nom::Err::Error(DecodeError::ReservedType(reserved))),
        }
    }

    /// Append the encoding of this value. Flags nibbles stay 0 except for BOOL: HAProxy reads a
    /// STRING with flags set as BINARY.
    pub fn encode(&self, buf: &mut impl BufMut) {
        match *self {
            TypedData::Null => buf.put_u8(T_NULL),
            TypedData::Bool(b) => buf.put_u8(T_BOOL | if b { FL_TRUE } else { 0 }),
            TypedData::Int32(v) => {
                buf.put_u8(T_INT32);
                varint::encode(i64::from(v) as u64, buf);
            }
            TypedData::Uint32(v) => {
                buf.put_u8(T_UINT32);
                varint::encode(u64::from(v), buf);
            }
            TypedData::Int64(v) => {
                buf.put_u8(T_INT64);
                varint::encode(v as u64, buf);
            }
            TypedData::Uint64(v) => {
                buf.put_u8(T_UINT64);
                varint::encode(v, buf);
            }
            TypedData::Ipv4(a) => {
                buf.put_u8(T_IPV4);
                buf.put_slice(&a.octets());
            }
            TypedData::Ipv6(a) => {
                buf.put_u8(T_IPV6);
                buf.put_slice(&a.octets());
            }
            TypedData::String(s) => {
                buf.put_u8(T_STRING);
                encode_bytes(s, buf);
            }
            TypedData::Binary(s) => {
                buf.put_u8(T_BINARY);
                encode_bytes(s, buf);
            }
        }
    }

    /// The number of bytes [`TypedData::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        1 + match *self {
            TypedData::Null | TypedData::Bool(_) => 0,
            TypedData::Int32(v) => varint::encoded_len(i64::from(v) as u64),
            TypedData::Uint32(v) => varint::encoded_len(u64::from(v)),
            TypedData::Int64(v) => varint::encoded_len(v as u64),
            TypedData::Uint64(v) => varint::encoded_len(v),
            TypedData::Ipv4(_) => 4,
            TypedData::Ipv6(_) => 16,
            TypedData::String(s) | TypedData::Binary(s) => varint::encoded_len(s.len() as u64) + s.len(),
        }
    }

    /// The value as an unsigned integer, whatever integer type carried it.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            TypedData::Int32(v) => u64::try_from(v).ok(),
            TypedData::Uint32(v) => Some(u64::from(v)),
            TypedData::Int64(v) => u64::try_from(v).ok(),
            TypedData::Uint64(v) => Some(v),
            _ => None,
        }
    }
}

/// A `<varint length><bytes>` field without a type byte: KV names, message names, action var names.
#[inline]
pub fn bytes_field(input: &[u8]) -> PResult<'_, &[u8]> {
    let (rest, len) = varint::decode(input)?;
    // A length beyond the remaining payload is truncation, never an allocation.
    let len = usize::try_from(len).map_err(|_| nom::Err::Error(DecodeError::Truncated))?;
    take(rest, len)
}

/// Append a `<varint length><bytes>` field.
pub fn encode_bytes(s: &[u8], buf: &mut impl BufMut) {
    varint::encode(s.len() as u64, buf);
    buf.put_slice(s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc(d: TypedData<'_>) -> Vec<u8> {
        let mut b = Vec::new();
        d.encode(&mut b);
        assert_eq!(b.len(), d.encoded_len());
        b
    }

    #[test]
    fn byte_exact_encodings() {
        assert_eq!(enc(TypedData::Null), [0x00]);
        assert_eq!(enc(TypedData::Bool(false)), [0x01]);
        assert_eq!(enc(TypedData::Bool(true)), [0x11]);
        assert_eq!(enc(TypedData::Int64(300)), [0x04, 0xfc, 0x03]);
        assert_eq!(enc(TypedData::Uint32(16380)), [0x03, 0xfc, 0xf0, 0x06]);
        // -1 as INT64 is the two's-complement u64::MAX varint (10 bytes).
        assert_eq!(
            enc(TypedData::Int64(-1)),
            [0x04, 0xff, 0xf0, 0xfe, 0xfe, 0xfe, 0xfe, 0xfe, 0xfe, 0xfe, 0x0e]
        );
        assert_eq!(
            enc(TypedData::Ipv4(Ipv4Addr::new(10, 0, 0, 1))),
            [0x06, 10, 0, 0, 1]
        );
        assert_eq!(enc(TypedData::String(b"")), [0x08, 0x00]);
        assert_eq!(enc(TypedData::String(b"2.0")), [0x08, 0x03, b'2', b'.', b'0']);
        assert_eq!(enc(TypedData::Binary(b"\x00\xff")), [0x09, 0x02, 0x00, 0xff]);
    }

    #[test]
    fn every_type_decodes() {
        let cases: &[(&[u8], TypedData<'_>)] = &[
            (&[0x00], TypedData::Null),
            (&[0x01], TypedData::Bool(false)),
            (&[0x11], TypedData::Bool(true)),
            (&[0x02, 0x05], TypedData::Int32(5)),
            (&[0x03, 0x05], TypedData::Uint32(5)),
            (&[0x04, 0xfc, 0x03], TypedData::Int64(300)),
            (&[0x05, 0xef], TypedData::Uint64(239)),
            (&[0x06, 127, 0, 0, 1], TypedData::Ipv4(Ipv4Addr::LOCALHOST)),
            (
                &[0x07, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                TypedData::Ipv6(Ipv6Addr::LOCALHOST),
            ),
            (&[0x08, 0x02, b'h', b'i'], TypedData::String(b"hi")),
            (&[0x09, 0x01, 0x00], TypedData::Binary(b"\x00")),
        ];
        for (bytes, want) in cases {
            let (rest, got) = TypedData::decode(bytes).unwrap();
            assert!(rest.is_empty());
            assert_eq!(&got, want);
        }
    }

    #[test]
    fn hostile_typed_data_is_refused() {
        for t in 10u8..=15 {
            assert_eq!(
                TypedData::decode(&[t, 0, 0]),
                Err(nom::Err::Error(DecodeError::ReservedType(t)))
            );
        }
        let truncated: &[&[u8]] = &[
            &[],
            &[0x06, 1, 2, 3],
            &[0x07, 0, 0],
            &[0x08, 0x05, b'a'],
            &[0x09, 0xf0],
            &[0x04],
            // A string length of u64::MAX: must be a clean error, not an allocation.
            &[0x08, 0xff, 0xf0, 0xfe, 0xfe, 0xfe, 0xfe, 0xfe, 0xfe, 0xfe, 0x0e],
        ];
        for bytes in truncated {
            assert_eq!(
                TypedData::decode(bytes),
                Err(nom::Err::Error(DecodeError::Truncated)),
                "{bytes:?}"
            );
        }
    }

    pub(crate) fn arb_data() -> impl Strategy<Value = (u8, i64, Vec<u8>, [u8; 16])> {
        (
            0u8..10,
            any::<i64>(),
            proptest::collection::vec(any::<u8>(), 0..300),
            any::<[u8; 16]>(),
        )
    }

    proptest! {
        #[test]
        fn round_trip((t, n, s, ip) in arb_data()) {
            let d = match t {
                0 => TypedData::Null,
                1 => TypedData::Bool(n & 1 == 1),
                2 => TypedData::Int32(n as i32),
                3 => TypedData::Uint32(n as u32),
                4 => TypedData::Int64(n),
                5 => TypedData::Uint64(n as u64),
                6 => TypedData::Ipv4(Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3])),
                7 => TypedData::Ipv6(Ipv6Addr::from(ip)),
                8 => TypedData::String(&s),
                _ => TypedData::Binary(&s),
            };
            let b = enc(d);
            let (rest, got) = TypedData::decode(&b).unwrap();
            prop_assert!(rest.is_empty());
            prop_assert_eq!(got, d);
        }

        #[test]
        fn decode_never_panics(bytes: Vec<u8>) {
            let _ = TypedData::decode(&bytes);
        }
    }
}
