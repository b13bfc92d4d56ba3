//! HAProxy's "Peers" variable-length integer (SPOE.txt §3.1), which is **not** LEB128.
//!
//! Values below 240 take one byte. Larger values put their low 4 bits in a first byte `0xF0 | v`,
//! then 7-bit groups with a continuation bit, each step subtracting the value the previous byte
//! already accounted for (`include/haproxy/intops.h` `encode_varint`/`decode_varint`).

use bytes::BufMut;

use super::{DecodeError, PResult};

/// A u64 never takes more than 10 bytes; anything longer is hostile (HAProxy's own decoder has no cap).
pub const MAX_LEN: usize = 10;

/// Append the encoding of `v` to `buf`.
pub fn encode(v: u64, buf: &mut impl BufMut) {
    if v < 240 {
        buf.put_u8(v as u8);
        return;
    }
    let (bytes, n) = encode_array(v);
    buf.put_slice(&bytes[..n]);
}

/// The encoding of `v`: its first `n` bytes, for callers that assemble a header on the stack.
pub fn encode_array(mut v: u64) -> ([u8; MAX_LEN], usize) {
    let mut out = [0u8; MAX_LEN];
    if v < 240 {
        out[0] = v as u8;
        return (out, 1);
    }
    out[0] = (v as u8) | 0xF0;
    v = (v - 240) >> 4;
    let mut n = 1;
    // What is left after the first byte is under 2^60: at most 8 continuation bytes and a last one.
    while v >= 128 && n < MAX_LEN - 1 {
        out[n] = (v as u8) | 0x80;
        n += 1;
        v = (v - 128) >> 7;
    }
    out[n] = v as u8;
    (out, n + 1)
}

/// The number of bytes [`encode`] writes for `v`.
pub fn encoded_len(mut v: u64) -> usize {
    if v < 240 {
        return 1;
    }
    let mut n = 2;
    v = (v - 240) >> 4;
    while v >= 128 {
        n += 1;
        v = (v - 128) >> 7;
    }
    n
}

/// Decode one varint from the front of `input` (a complete payload: running out is an error).
#[inline]
pub fn decode(input: &[u8]) -> PResult<'_, u64> {
    let Some((&first, mut rest)) = input.split_first() else {
        return Err(nom::Err::Error(DecodeError::Truncated));
    };
    if first < 240 {
        return Ok((rest, u64::from(first)));
    }
    // u128 so that the 10th byte's shift (4 + 7*8 = 60) cannot silently wrap; checked below.
    let mut value = u128::from(first);
    let mut shift = 4u32;
    for _ in 1..MAX_LEN {
        let Some((&b, tail)) = rest.split_first() else {
            return Err(nom::Err::Error(DecodeError::Truncated));
        };
        rest = tail;
        // HAProxy adds the byte *with* its continuation bit: the encoder subtracted 128 for it.
        value += u128::from(b) << shift;
        if b < 128 {
            return u64::try_from(value)
                .map(|v| (rest, v))
                .map_err(|_| nom::Err::Error(DecodeError::VarintOverflow));
        }
        shift += 7;
    }
    Err(nom::Err::Error(DecodeError::VarintTooLong))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc(v: u64) -> Vec<u8> {
        let mut b = Vec::new();
        encode(v, &mut b);
        b
    }

    /// The table from the research notes (checked there against a port of HAProxy's C code).
    const VECTORS: &[(u64, &[u8])] = &[
        (0, &[0x00]),
        (239, &[0xef]),
        (240, &[0xf0, 0x00]),
        (300, &[0xfc, 0x03]),
        (1000, &[0xf8, 0x2f]),
        (2287, &[0xff, 0x7f]),
        (2288, &[0xf0, 0x80, 0x00]),
        (16380, &[0xfc, 0xf0, 0x06]),
        (264432, &[0xf0, 0x80, 0x80, 0x00]),
        ((1 << 31) - 1, &[0xff, 0xf0, 0xfe, 0xfe, 0x3e]),
        (
            u64::MAX,
            &[0xff, 0xf0, 0xfe, 0xfe, 0xfe, 0xfe, 0xfe, 0xfe, 0xfe, 0x0e],
        ),
    ];

    #[test]
    fn byte_exact_vectors() {
        for &(v, bytes) in VECTORS {
            assert_eq!(enc(v), bytes, "encode {v}");
            assert_eq!(encoded_len(v), bytes.len(), "len {v}");
            let (rest, got) = decode(bytes).unwrap();
            assert_eq!((rest.len(), got), (0, v), "decode {v}");
        }
    }

    #[test]
    fn size_class_boundaries_from_spoe_txt() {
        // "0-239: 1 byte, 240-2287: 2, 2288-264431: 3, 264432-33818863: 4, 33818864-4328786159: 5".
        for (v, n) in [
            (239, 1),
            (240, 2),
            (2287, 2),
            (2288, 3),
            (264431, 3),
            (264432, 4),
            (33818863, 4),
            (33818864, 5),
            (4328786159, 5),
            (4328786160, 6),
        ] {
            assert_eq!(enc(v).len(), n, "{v}");
        }
    }

    #[test]
    fn hostile_varints_are_refused() {
        assert_eq!(decode(&[]), Err(nom::Err::Error(DecodeError::Truncated)));
        assert_eq!(decode(&[0xf0]), Err(nom::Err::Error(DecodeError::Truncated)));
        assert_eq!(
            decode(&[0xf0, 0x80, 0x80]),
            Err(nom::Err::Error(DecodeError::Truncated))
        );
        // 11 bytes of continuation: longer than any u64.
        assert_eq!(
            decode(&[0xff; 11]),
            Err(nom::Err::Error(DecodeError::VarintTooLong))
        );
        // 10 bytes whose last one is too large for 64 bits.
        let mut big = vec![0xff, 0xf0, 0xfe, 0xfe, 0xfe, 0xfe, 0xfe, 0xfe, 0xfe, 0x7f];
        assert_eq!(decode(&big), Err(nom::Err::Error(DecodeError::VarintOverflow)));
        // u64::MAX + 1 overflows too.
        big[9] = 0x0f;
        assert_eq!(decode(&big), Err(nom::Err::Error(DecodeError::VarintOverflow)));
    }

    proptest! {
        #[test]
        fn round_trip(v: u64, tail: Vec<u8>) {
            let mut b = enc(v);
            prop_assert_eq!(b.len(), encoded_len(v));
            prop_assert!(b.len() <= MAX_LEN);
            b.extend_from_slice(&tail);
            let (rest, got) = decode(&b).unwrap();
            prop_assert_eq!(got, v);
            prop_assert_eq!(rest, &tail[..]);
        }

        #[test]
        fn decode_never_panics(bytes: Vec<u8>) {
            let _ = decode(&bytes);
        }
    }
}
