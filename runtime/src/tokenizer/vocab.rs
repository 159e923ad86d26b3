//! Token text → id, built in a few milliseconds.
//!
//! A `HashMap<String, u32>` of a 49 152-token vocabulary costs 49 152 string copies and as many
//! allocations at start-up (and the same again to free them); for Gemma 3's 262 144 tokens, five
//! times that. [`VocabIndex`] is an open-addressing table of ids over one concatenation of
//! the texts: building it allocates three arrays.
//!
//! The hash ([`SeededHash`]) is a multiply-and-mix over 8-byte words with a per-process random
//! seed: several times cheaper than std's SipHash on token-sized keys (which made it a third of
//! the build), and still keyed, so texts chosen to collide in one process do not in another.

use std::hash::{BuildHasher, Hasher, RandomState};

/// A fast keyed hash for short keys (token texts, id pairs); see the module docs.
#[derive(Clone, Copy)]
pub(crate) struct SeededHash {
    seed: u64,
}

const K: u64 = 0x9E37_79B9_7F4A_7C15;

/// MurmurHash3's 64-bit finalizer: every input bit reaches every output bit.
fn fmix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    h ^ (h >> 33)
}

impl SeededHash {
    /// A new random seed (from std's per-process random keys).
    pub(crate) fn new() -> SeededHash {
        SeededHash {
            seed: RandomState::new().hash_one(0x4542_u64),
        }
    }

    pub(crate) fn bytes(&self, b: &[u8]) -> u64 {
        let mut h = self.seed ^ (b.len() as u64).wrapping_mul(K);
        let mut words = b.chunks_exact(8);
        for w in &mut words {
            let w = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
            h = (h ^ w).wrapping_mul(K).rotate_left(31);
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K).rotate_left(31);
        }
        fmix(h)
    }
}

/// [`SeededHash`] as a std `Hasher` for maps keyed by integers (the merge table's id pairs).
pub(crate) struct SeededHasher {
    seed: u64,
    h: u64,
}

impl Hasher for SeededHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.h = SeededHash {
            seed: self.seed ^ self.h,
        }
        .bytes(bytes);
    }
    fn write_u32(&mut self, v: u32) {
        self.h = (self.h ^ u64::from(v)).wrapping_mul(K).rotate_left(31);
    }
    fn write_u64(&mut self, v: u64) {
        self.h = (self.h ^ v).wrapping_mul(K).rotate_left(31);
    }
    fn finish(&self) -> u64 {
        fmix(self.h ^ self.seed)
    }
}

impl BuildHasher for SeededHash {
    type Hasher = SeededHasher;
    fn build_hasher(&self) -> SeededHasher {
        SeededHasher {
            seed: self.seed,
            h: self.seed,
        }
    }
}

/// One slot: `id + 1` (0 = empty) and the low bits of its text's hash, compared before the text.
#[derive(Clone, Copy, Default)]
struct Slot {
    id1: u32,
    hash: u32,
}

/// The index over a vocabulary's texts (see the module docs). Duplicate texts resolve to the
/// last id, as llama.cpp's `token_to_id` map does.
pub(crate) struct VocabIndex {
    slots: Vec<Slot>,
    mask: usize,
    hash: SeededHash,
    /// Every text, concatenated in id order: a lookup compares against these bytes, which stay
    /// in cache far better than one allocation per text.
    blob: Vec<u8>,
    /// `blob[ends[id - 1]..ends[id]]` is text `id` (from 0 for id 0).
    ends: Vec<u32>,
}

impl VocabIndex {
    /// Indexes `texts` (index = id). At most half the slots are used, so probes stay short.
    /// `None` when the texts together exceed 4 GiB.
    pub(crate) fn new(texts: &[String]) -> Option<VocabIndex> {
        let total: usize = texts.iter().map(String::len).sum();
        u32::try_from(total).ok()?;
        u32::try_from(texts.len()).ok()?;
        let mut blob = Vec::with_capacity(total);
        let mut ends = Vec::with_capacity(texts.len());
        for t in texts {
            blob.extend_from_slice(t.as_bytes());
            ends.push(blob.len() as u32);
        }
        let size = (texts.len() * 2).next_power_of_two().max(16);
        let mut index = VocabIndex {
            slots: vec![Slot::default(); size],
            mask: size - 1,
            hash: SeededHash::new(),
            blob,
            ends,
        };
        for (id, text) in texts.iter().enumerate() {
            let h = index.hash.bytes(text.as_bytes());
            let mut at = h as usize & index.mask;
            loop {
                let s = index.slots[at];
                if s.id1 == 0 || (s.hash == h as u32 && index.text(s.id1 - 1) == text.as_bytes()) {
                    index.slots[at] = Slot {
                        id1: id as u32 + 1,
                        hash: h as u32,
                    };
                    break;
                }
                at = (at + 1) & index.mask;
            }
        }
        Some(index)
    }

    fn text(&self, id: u32) -> &[u8] {
        let id = id as usize;
        let start = if id == 0 {
            0
        } else {
            self.ends[id - 1] as usize
        };
        &self.blob[start..self.ends[id] as usize]
    }

    /// The id of the token whose text is `text`, if any.
    pub(crate) fn id(&self, text: &str) -> Option<u32> {
        let h = self.hash.bytes(text.as_bytes());
        let mut at = h as usize & self.mask;
        loop {
            let s = self.slots[at];
            if s.id1 == 0 {
                return None;
            }
            if s.hash == h as u32 && self.text(s.id1 - 1) == text.as_bytes() {
                return Some(s.id1 - 1);
            }
            at = (at + 1) & self.mask;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_text_and_nothing_else_and_the_last_duplicate_wins() {
        let texts: Vec<String> = (0..1000)
            .map(|i| format!("t{i}"))
            .chain(["dup".to_string(), "x".to_string(), "dup".to_string()])
            .collect();
        let v = VocabIndex::new(&texts).unwrap();
        for i in 0..1000 {
            assert_eq!(v.id(&format!("t{i}")), Some(i));
        }
        assert_eq!(v.id("dup"), Some(1002));
        assert_eq!(v.id("x"), Some(1001));
        assert_eq!(v.id("t1000"), None);
        assert_eq!(v.id(""), None);
        assert_eq!(VocabIndex::new(&[]).unwrap().id("a"), None);
    }
}
