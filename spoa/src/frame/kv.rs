//! KV lists (SPOE.txt §3.2): `[ <KV-NAME> <KV-VALUE> ... ]` running to the end of the payload.
//! KV-NAME is `<varint len><bytes>` with **no** type byte (`spoe_encode_buffer`); KV-VALUE is typed data.

use bytes::BufMut;

use super::data::{bytes_field, encode_bytes};
use super::{DecodeError, PResult, TypedData};

/// Decode one `<name><typed value>` pair.
#[inline]
pub fn pair(input: &[u8]) -> PResult<'_, (&[u8], TypedData<'_>)> {
    let (rest, name) = bytes_field(input)?;
    let (rest, value) = TypedData::decode(rest)?;
    Ok((rest, (name, value)))
}

/// Iterate over a KV list; yields an error once (and then stops) if the list is malformed.
#[derive(Clone, Debug)]
pub struct KvIter<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> KvIter<'a> {
    /// Iterate over the KV list that makes up `payload`.
    pub fn new(payload: &'a [u8]) -> Self {
        KvIter {
            rest: payload,
            failed: false,
        }
    }
}

impl<'a> Iterator for KvIter<'a> {
    type Item = Result<(&'a [u8], TypedData<'a>), DecodeError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() || self.failed {
            return None;
        }
        match pair(self.rest) {
            Ok((rest, kv)) => {
                self.rest = rest;
                Some(Ok(kv))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(super::flatten(e)))
            }
        }
    }
}

/// Append one KV pair.
pub fn encode_pair(name: &[u8], value: TypedData<'_>, buf: &mut impl BufMut) {
    encode_bytes(name, buf);
    value.encode(buf);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_kv_lists_are_errors() {
        let mut full = Vec::new();
        encode_pair(b"status-code", TypedData::Uint32(3), &mut full);
        encode_pair(b"message", TypedData::String(b"too big"), &mut full);
        let all: Result<Vec<_>, _> = KvIter::new(&full).collect();
        assert_eq!(all.unwrap().len(), 2);
        // Every strict prefix that cuts a pair in half must fail, never yield a partial pair.
        for cut in 1..full.len() {
            let prefix = &full[..cut];
            let r: Result<Vec<_>, _> = KvIter::new(prefix).collect();
            let boundary = cut == 14; // end of the first pair: a valid one-pair list
            assert_eq!(r.is_ok(), boundary, "cut at {cut}");
        }
    }
}
