//! The hasher of the maps looked up on every statement: the session's prepared statements
//! (keyed by Sluice's statement ids), each server connection's statement cache (keyed by SQL
//! text) and the query digest store (keyed by 64-bit digests). One multiplication per 8 bytes
//! instead of SipHash's rounds (SipHash over a statement's text was 2-3 % of Sluice's CPU
//! time per prepared execution).
//!
//! It is not collision-resistant. Every map that uses it is bounded (a session's statements by
//! `max_prepared_statements`, a connection's cache by `max_prepared_statements_per_connection`,
//! the digest store by `query_digest_max_entries`), so crafted collisions can only make a
//! bounded map slower, never grow one.

use std::hash::{BuildHasherDefault, Hasher};

const K: u64 = 0x9E37_79B9_7F4A_7C15;

#[derive(Default, Clone, Copy)]
pub struct FastHasher(u64);

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn finish(&self) -> u64 {
        // Hash tables take the bucket from the low bits and a tag from the top ones: the
        // multiplication mixed the input into the top bits; the rotation brings them down.
        self.0.rotate_left(26)
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            self.add(u64::from_le_bytes([
                w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7],
            ]));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            // The remainder's length is in the word: "a" and "a\0" differ.
            last[7] ^= rest.len() as u8;
            self.add(u64::from_le_bytes(last));
        }
    }

    #[inline]
    fn write_u8(&mut self, x: u8) {
        self.add(u64::from(x));
    }

    #[inline]
    fn write_u32(&mut self, x: u32) {
        self.add(u64::from(x));
    }

    #[inline]
    fn write_u64(&mut self, x: u64) {
        self.add(x);
    }

    #[inline]
    fn write_usize(&mut self, x: usize) {
        self.add(x as u64);
    }
}

pub type FastBuild = BuildHasherDefault<FastHasher>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};
    use std::hash::BuildHasher;

    #[test]
    fn texts_that_differ_anywhere_hash_apart() {
        let b = FastBuild::default();
        let base = b"SELECT c FROM sbtest1 WHERE id=?".to_vec();
        let mut seen = HashSet::new();
        assert!(seen.insert(b.hash_one(&base[..])));
        for i in 0..base.len() {
            let mut t = base.clone();
            t[i] ^= 1;
            assert!(seen.insert(b.hash_one(&t[..])), "byte {i}");
        }
        // Lengths, and zero bytes at the end, count.
        for t in [
            &b""[..],
            b"\0",
            b"\0\0",
            b"a",
            b"a\0",
            b"abcdefgh",
            b"abcdefgh\0",
        ] {
            assert!(seen.insert(b.hash_one(t)), "{t:?}");
        }
    }

    #[test]
    fn sequential_ids_spread_over_the_buckets() {
        // A session's statement ids are 1, 2, 3…: their low bits (the bucket) must differ.
        let b = FastBuild::default();
        let low: HashSet<u64> = (1u32..=1024).map(|i| b.hash_one(i) & 1023).collect();
        assert!(low.len() > 600, "{} distinct buckets of 1024", low.len());
        let mut m: HashMap<u32, u32, FastBuild> = HashMap::default();
        for i in 0..10_000 {
            m.insert(i, i * 2);
        }
        assert!((0..10_000).all(|i| m[&i] == i * 2));
    }
}
