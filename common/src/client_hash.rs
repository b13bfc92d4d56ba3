//! The keyed client hash: SipHash-2-4 with a 128-bit secret shared by every agent.
//!
//! Raw client addresses and identities never reach the ledger; only this hash does. All HAProxy
//! instances (and `egress-checker who --client`) must load the same key so they agree on the value.

use std::fmt;
use std::path::Path;

use siphasher::sip::SipHasher24;

/// Errors loading the hash key.
#[derive(Debug, thiserror::Error)]
pub enum HashKeyError {
    #[error("hash key must be 32 hex characters (128 bits), got {0} characters")]
    Length(usize),
    #[error("hash key is not valid hex: {0}")]
    Hex(#[from] hex::FromHexError),
    #[error("cannot read hash key file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no hash key given: set --hash-key-file or the EGRESS_HASH_KEY environment variable")]
    Missing,
}

/// A 128-bit SipHash key. `Debug` never prints the key.
#[derive(Clone)]
pub struct HashKey {
    /// Keyed once: a hash then runs SipHash's one-shot path, with no per-call key setup.
    sip: SipHasher24,
}

impl fmt::Debug for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HashKey(<redacted>)")
    }
}

impl HashKey {
    /// Parse 32 hex characters (surrounding whitespace ignored).
    pub fn from_hex(s: &str) -> Result<Self, HashKeyError> {
        let s = s.trim();
        if s.len() != 32 {
            return Err(HashKeyError::Length(s.len()));
        }
        let mut key = [0u8; 16];
        hex::decode_to_slice(s, &mut key)?;
        Ok(Self {
            sip: SipHasher24::new_with_key(&key),
        })
    }

    /// Read the key from a file holding 32 hex characters.
    pub fn from_file(path: &Path) -> Result<Self, HashKeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| HashKeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_hex(&text)
    }

    /// The key from a file if given, else from a hex string (normally an environment variable).
    pub fn load(file: Option<&Path>, hex_value: Option<&str>) -> Result<Self, HashKeyError> {
        match (file, hex_value) {
            (Some(path), _) => Self::from_file(path),
            (None, Some(value)) => Self::from_hex(value),
            (None, None) => Err(HashKeyError::Missing),
        }
    }

    /// Hash a client identity (a tenant id, a user name, or the textual source address).
    pub fn hash(&self, identity: &[u8]) -> ClientHash {
        ClientHash(self.sip.hash(identity))
    }
}

/// A keyed client hash. Displays as 16 lowercase hex characters, the form in HAProxy logs and the ledger.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ClientHash(pub u64);

impl ClientHash {
    /// The 16-character lowercase hex form, without allocating.
    pub fn to_hex(self) -> [u8; 16] {
        // A byte at a time from a 256-entry table of digit pairs: it runs for every request.
        const PAIRS: [[u8; 2]; 256] = {
            const DIGITS: &[u8; 16] = b"0123456789abcdef";
            let mut t = [[0u8; 2]; 256];
            let mut i = 0;
            while i < 256 {
                t[i] = [DIGITS[i >> 4], DIGITS[i & 0xf]];
                i += 1;
            }
            t
        };
        let mut out = [0u8; 16];
        for (pair, byte) in out.chunks_exact_mut(2).zip(self.0.to_be_bytes()) {
            pair.copy_from_slice(&PAIRS[usize::from(byte)]);
        }
        out
    }

    /// Parse the 16-character hex form.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 16 {
            return None;
        }
        u64::from_str_radix(s, 16).ok().map(Self)
    }
}

impl fmt::Display for ClientHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::Hasher;

    #[test]
    fn hex_round_trip_and_display_agree() {
        let key = HashKey::from_hex("000102030405060708090a0b0c0d0e0f").unwrap();
        let h = key.hash(b"10.0.0.1");
        let s = h.to_string();
        assert_eq!(s.as_bytes(), &h.to_hex());
        assert_eq!(ClientHash::from_hex(&s), Some(h));
    }

    #[test]
    fn one_shot_hash_matches_the_streaming_hasher() {
        let raw = [7u8, 1, 200, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
        let key = HashKey::from_hex(&hex::encode(raw)).unwrap();
        let data: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37)).collect();
        for len in 0..data.len() {
            let mut h = SipHasher24::new_with_key(&raw);
            h.write(&data[..len]);
            assert_eq!(key.hash(&data[..len]).0, h.finish(), "length {len}");
        }
        for v in [0, 1, 0xf0, 0x0123_4567_89ab_cdef, u64::MAX] {
            assert_eq!(ClientHash(v).to_hex(), *format!("{v:016x}").as_bytes());
        }
    }

    #[test]
    fn siphash_reference_vector() {
        // SipHash-2-4 reference: key 00..0f, empty message -> 0x726fdb47dd0e0e31 (Aumasson & Bernstein).
        let key = HashKey::from_hex("000102030405060708090a0b0c0d0e0f").unwrap();
        assert_eq!(key.hash(b"").0, 0x726f_db47_dd0e_0e31);
    }

    #[test]
    fn bad_keys_are_explained() {
        assert!(matches!(HashKey::from_hex("abcd"), Err(HashKeyError::Length(4))));
        assert!(matches!(
            HashKey::from_hex("zz0102030405060708090a0b0c0d0e0f"),
            Err(HashKeyError::Hex(_))
        ));
        assert!(matches!(HashKey::load(None, None), Err(HashKeyError::Missing)));
        assert!(!format!("{:?}", HashKey::from_hex(&"a".repeat(32)).unwrap()).contains("aaaa"));
    }
}
