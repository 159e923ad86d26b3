//! The prompt cache file: the KV blocks of a prompt's leading full blocks, kept on disk so that
//! a later process (the app restarted) puts them back into its arena's prefix cache instead of
//! computing them again (llama.cpp's `--prompt-cache`, done with whole blocks).
//!
//! Layout, all integers little-endian, version 1:
//!
//! | offset | bytes | field |
//! | ---: | ---: | --- |
//! | 0 | 8 | magic `EMBERKVC` |
//! | 8 | 4 | version (1) |
//! | 12 | 4 | KV type (1: f16, 2: q8_0, 3: q4_0) |
//! | 16 | 8 | model fingerprint ([`Model::fingerprint`](crate::model::Model::fingerprint)) |
//! | 24 | 16 | `n_layer`, `n_kv_head`, `head_dim`, `block_size` (u32 each) |
//! | 40 | 4 | `n_blocks` |
//! | 44 | 4 | reserved, 0 |
//! | 48 | 4 × `n_blocks × block_size` | the token ids the blocks hold |
//! | … | `n_blocks ×` [`KvLayout::block_bytes`] | per block: its keys, then its values, `[n_layer][n_kv_head][block_size][row]` each (every layer of the model in order, whatever the arena's layer groups), rows stored as the KV type |
//! | end − 8 | 8 | [`Checksum`] of every byte before it |
//!
//! A reader checks the header against its own engine (model, KV type, geometry), the file's
//! length against the header, and the checksum over the whole file before any loaded block
//! becomes visible: a file of another model, a truncated file or a flipped byte is an error,
//! never wrong output.

use super::{KvLayout, KvType};

/// First bytes of every prompt cache file.
pub const MAGIC: [u8; 8] = *b"EMBERKVC";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;
/// KV type code of f16 keys and values (the first type; see [`kv_type_code`]).
pub const KV_F16: u32 = 1;

/// The file's code of a KV type: 1 f16, 2 q8_0, 3 q4_0.
pub fn kv_type_code(t: KvType) -> u32 {
    t.code() + 1
}

/// The KV type of a file's code, if this build knows it.
pub fn kv_type_of(code: u32) -> Option<KvType> {
    code.checked_sub(1).and_then(KvType::from_code)
}
/// Bytes of the header.
pub const HEADER_LEN: usize = 48;
/// Bytes of the closing checksum.
pub const CHECKSUM_LEN: usize = 8;

/// What a prompt cache file says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheHeader {
    /// KV type code ([`kv_type_code`]; may be one this build does not know).
    pub kv_type: u32,
    /// Fingerprint of the model that computed the blocks.
    pub model: u64,
    /// Geometry of a block (its `kv_type` is f16 when the code is unknown).
    pub layout: KvLayout,
    /// Blocks stored.
    pub n_blocks: usize,
}

impl CacheHeader {
    /// The header's bytes. Geometry fields past `u32` cannot come from a real arena; they are
    /// saturated (and then rejected by every reader as a geometry mismatch).
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let u = |x: usize| u32::try_from(x).unwrap_or(u32::MAX).to_le_bytes();
        let l = &self.layout;
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.kv_type.to_le_bytes());
        b[16..24].copy_from_slice(&self.model.to_le_bytes());
        b[24..28].copy_from_slice(&u(l.block_layers));
        b[28..32].copy_from_slice(&u(l.n_kv_head));
        b[32..36].copy_from_slice(&u(l.head_dim));
        b[36..40].copy_from_slice(&u(l.block_size));
        b[40..44].copy_from_slice(&u(self.n_blocks));
        b
    }

    /// Parse a header; the error says what is wrong with it.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<CacheHeader, String> {
        if b[0..8] != MAGIC {
            return Err("not an Ember prompt cache file (bad magic)".into());
        }
        let u = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
        let version = u(8);
        if version != VERSION {
            return Err(format!(
                "format version {version}, this build reads version {VERSION}"
            ));
        }
        if u(44) != 0 {
            return Err("damaged header (reserved field is not 0)".into());
        }
        Ok(CacheHeader {
            kv_type: u(12),
            model: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
            layout: KvLayout {
                block_layers: u(24) as usize,
                n_kv_head: u(28) as usize,
                head_dim: u(32) as usize,
                block_size: u(36) as usize,
                kv_type: kv_type_of(u(12)).unwrap_or_default(),
            },
            n_blocks: u(40) as usize,
        })
    }

    /// Token ids stored.
    pub fn n_tokens(&self) -> Option<usize> {
        self.n_blocks.checked_mul(self.layout.block_size)
    }

    /// The length of a whole file with this header (`None` if it overflows: no such file).
    pub fn file_len(&self) -> Option<u64> {
        let tokens = self.n_tokens()?.checked_mul(4)?;
        let l = &self.layout;
        let block = l
            .block_layers
            .checked_mul(l.n_kv_head)?
            .checked_mul(l.block_size)?
            .checked_mul(l.kv_type.row_bytes(l.head_dim)?)?
            .checked_mul(2)?; // keys and values
        let data = self.n_blocks.checked_mul(block)?;
        let total = (HEADER_LEN + CHECKSUM_LEN)
            .checked_add(tokens)?
            .checked_add(data)?;
        u64::try_from(total).ok()
    }
}

/// KV type code → name, for messages.
pub fn kv_type_name(code: u32) -> String {
    match kv_type_of(code) {
        Some(t) => t.name().into(),
        None => format!("#{code} (unknown)"),
    }
}

/// A fast 64-bit checksum of a byte stream, fed in pieces of any size.
///
/// Four lanes each take every fourth 8-byte word: `lane = rotl((lane ^ word) · K, 31)`. Each
/// step is a bijection of the lane for a fixed word and of the word for a fixed lane, so two
/// streams of equal length that differ in a single word (any flipped bits within 8 aligned
/// bytes) always end with a different lane, and the lanes are combined through a bijective
/// mixer each: such a change is always detected, not merely with high probability. Wider
/// damage collides with probability about 2⁻⁶⁴. Not cryptographic: it guards against damage,
/// not against someone forging a file.
#[derive(Clone, Debug)]
pub struct Checksum {
    lanes: [u64; 4],
    /// Bytes of an incomplete 32-byte stripe.
    tail: [u8; 32],
    tail_len: usize,
    total: u64,
}

impl Default for Checksum {
    fn default() -> Self {
        Checksum {
            lanes: [
                0x243f_6a88_85a3_08d3,
                0x1319_8a2e_0370_7344,
                0xa409_3822_299f_31d0,
                0x082e_fa98_ec4e_6c89,
            ],
            tail: [0; 32],
            tail_len: 0,
            total: 0,
        }
    }
}

const K: u64 = 0x9fb2_1c65_1e98_df25;

impl Checksum {
    /// A checksum of nothing yet.
    pub fn new() -> Checksum {
        Checksum::default()
    }

    fn stripe(&mut self, s: &[u8]) {
        for (lane, w) in self.lanes.iter_mut().zip(s.chunks_exact(8)) {
            let w = u64::from_le_bytes(w.try_into().expect("8 bytes"));
            *lane = ((*lane ^ w).wrapping_mul(K)).rotate_left(31);
        }
    }

    /// Feed `bytes`.
    pub fn update(&mut self, mut bytes: &[u8]) {
        self.total = self.total.wrapping_add(bytes.len() as u64);
        if self.tail_len > 0 {
            let take = (32 - self.tail_len).min(bytes.len());
            self.tail[self.tail_len..self.tail_len + take].copy_from_slice(&bytes[..take]);
            self.tail_len += take;
            bytes = &bytes[take..];
            if self.tail_len < 32 {
                return;
            }
            let t = self.tail;
            self.stripe(&t);
            self.tail_len = 0;
        }
        let mut stripes = bytes.chunks_exact(32);
        for s in &mut stripes {
            self.stripe(s);
        }
        let rest = stripes.remainder();
        self.tail[..rest.len()].copy_from_slice(rest);
        self.tail_len = rest.len();
    }

    /// The checksum of everything fed so far.
    pub fn finish(&self) -> u64 {
        let mut c = self.clone();
        if c.tail_len > 0 {
            // Zero-padded; the length below tells a padded stream from one with real zeros.
            let mut t = [0u8; 32];
            t[..c.tail_len].copy_from_slice(&c.tail[..c.tail_len]);
            c.stripe(&t);
        }
        let mut h = c.total.wrapping_mul(K);
        for (i, &l) in c.lanes.iter().enumerate() {
            h ^= super::block_pool::mix64(l ^ (i as u64)).rotate_left(16 * i as u32);
        }
        super::block_pool::mix64(h)
    }
}

/// One-shot [`Checksum`] of `bytes`.
pub fn checksum(bytes: &[u8]) -> u64 {
    let mut c = Checksum::new();
    c.update(bytes);
    c.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> CacheHeader {
        CacheHeader {
            kv_type: KV_F16,
            model: 0x0123_4567_89ab_cdef,
            layout: KvLayout {
                block_layers: 30,
                n_kv_head: 3,
                head_dim: 64,
                block_size: 16,
                kv_type: KvType::F16,
            },
            n_blocks: 62,
        }
    }

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let h = header();
        let b = h.encode();
        assert_eq!(CacheHeader::decode(&b), Ok(h));
        assert_eq!(h.n_tokens(), Some(62 * 16));
        let want = 48 + 62 * 16 * 4 + 62 * 30 * 3 * 16 * 64 * 4 + 8;
        assert_eq!(h.file_len(), Some(want as u64));
        let mut bad = b;
        bad[0] ^= 1;
        assert!(CacheHeader::decode(&bad).unwrap_err().contains("magic"));
        let mut bad = b;
        bad[8] = 2;
        assert!(CacheHeader::decode(&bad).unwrap_err().contains("version 2"));
        let mut bad = b;
        bad[45] = 1;
        assert!(CacheHeader::decode(&bad).unwrap_err().contains("reserved"));
        let huge = CacheHeader {
            n_blocks: u32::MAX as usize,
            layout: KvLayout {
                block_layers: u32::MAX as usize,
                ..h.layout
            },
            ..h
        };
        assert_eq!(
            huge.file_len(),
            None,
            "an impossible header has no file length"
        );
        // A quantized cache: its code round-trips and its blocks are smaller (34 bytes per 32).
        let q = CacheHeader {
            kv_type: kv_type_code(KvType::Q8_0),
            layout: KvLayout {
                kv_type: KvType::Q8_0,
                ..h.layout
            },
            ..h
        };
        assert_eq!(CacheHeader::decode(&q.encode()), Ok(q));
        let want = 48 + 62 * 16 * 4 + 62 * 30 * 3 * 16 * 68 * 2 + 8;
        assert_eq!(q.file_len(), Some(want as u64));
        assert_eq!(kv_type_name(9), "#9 (unknown)");
        assert_eq!(kv_type_name(3), "q4_0");
    }

    #[test]
    fn checksum_does_not_depend_on_how_the_stream_is_cut() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let whole = checksum(&data);
        for cut in [0, 1, 7, 31, 32, 33, 500, 999, 1000] {
            let mut c = Checksum::new();
            c.update(&data[..cut]);
            c.update(&data[cut..]);
            assert_eq!(c.finish(), whole, "cut at {cut}");
        }
        let mut c = Checksum::new();
        data.chunks(3).for_each(|p| c.update(p));
        assert_eq!(c.finish(), whole);
    }

    #[test]
    fn checksum_sees_every_flipped_bit_and_every_length() {
        let data: Vec<u8> = (0..203u32).map(|i| (i * 31 + 5) as u8).collect();
        let whole = checksum(&data);
        for i in 0..data.len() {
            for bit in 0..8 {
                let mut d = data.clone();
                d[i] ^= 1 << bit;
                assert_ne!(checksum(&d), whole, "byte {i} bit {bit}");
            }
        }
        // A stream and the same stream cut short or padded with zeros.
        for n in 0..data.len() {
            assert_ne!(checksum(&data[..n]), whole, "length {n}");
        }
        let mut padded = data.clone();
        padded.push(0);
        assert_ne!(checksum(&padded), whole);
    }
}
