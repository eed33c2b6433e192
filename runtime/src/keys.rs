//! API keys: what a node keeps of them (a SHA-256 digest, never the key) and how a presented key
//! is checked against them (in constant time, whatever the key looks like).

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix of every key `helixflow keys new` and `helixflow up` make; only a convention, any
/// string is a valid key.
pub const KEY_PREFIX: &str = "hf-";

/// SHA-256 of an API key. The node stores and compares only this.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    /// The digest of `key`.
    pub fn of(key: &str) -> KeyHash {
        KeyHash(Sha256::digest(key.as_bytes()).into())
    }

    /// Parses the 64 lowercase or uppercase hex digits of a digest.
    pub fn from_hex(hex: &str) -> Option<KeyHash> {
        let hex = hex.as_bytes();
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
            *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Some(KeyHash(out))
    }

    /// Constant-time equality: the time taken does not depend on where the digests differ.
    pub fn matches(&self, other: &KeyHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({self})")
    }
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Finds the entry whose digest equals `presented`'s, comparing against every entry (no early
/// exit), so neither the position nor the existence of a match shows in the timing.
pub fn find_key<'a, T>(
    presented: &str,
    entries: impl IntoIterator<Item = (&'a KeyHash, T)>,
) -> Option<T> {
    let digest = KeyHash::of(presented);
    let mut found = None;
    for (hash, value) in entries {
        if hash.matches(&digest) && found.is_none() {
            found = Some(value);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_round_trips_through_hex() {
        let hash = KeyHash::of("hf-test");
        // sha256("hf-test"), computed with `printf hf-test | sha256sum`.
        assert_eq!(
            hash.to_string(),
            "b7aa8ae787177aafcbfaf610cab2f3674b74e34332270931fbf9121733887f8d"
        );
        assert_eq!(KeyHash::from_hex(&hash.to_string()), Some(hash));
        assert_eq!(
            KeyHash::from_hex(&hash.to_string().to_uppercase()),
            Some(hash)
        );
        assert_eq!(KeyHash::from_hex("abc"), None);
        assert_eq!(KeyHash::from_hex(&"g".repeat(64)), None);
    }

    #[test]
    fn find_key_matches_only_the_right_key() {
        let a = KeyHash::of("alpha");
        let b = KeyHash::of("beta");
        let entries = [(&a, 1), (&b, 2)];
        assert_eq!(find_key("beta", entries), Some(2));
        assert_eq!(find_key("alpha", entries), Some(1));
        assert_eq!(find_key("gamma", entries), None);
        assert_eq!(find_key("", entries), None);
    }
}
