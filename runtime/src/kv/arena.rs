//! The KV arena: f16 keys and values for every block, one allocation at start-up.
//!
//! Layout of block `b`, for keys and values alike: `[n_layer][n_kv_head][block_size][head_dim]`,
//! so one (layer, head) of a block is a contiguous `block_size × head_dim` tile that attention
//! reads front to back.

use half::f16;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

use crate::error::{Error, Result};

/// Geometry of the arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvLayout {
    /// Transformer blocks.
    pub n_layer: usize,
    /// Key/value heads.
    pub n_kv_head: usize,
    /// Dimension of a head.
    pub head_dim: usize,
    /// Token slots per block.
    pub block_size: usize,
}

impl KvLayout {
    /// f16 elements of one (layer, head) tile of a block.
    pub fn tile_len(&self) -> usize {
        self.block_size * self.head_dim
    }

    /// f16 elements of one block (keys or values).
    pub fn block_len(&self) -> usize {
        self.n_layer * self.n_kv_head * self.tile_len()
    }

    /// Bytes one block takes, keys and values together.
    pub fn block_bytes(&self) -> usize {
        2 * self.block_len() * std::mem::size_of::<f16>()
    }

    /// Blocks that fit in `bytes`.
    pub fn blocks_for_bytes(&self, bytes: usize) -> usize {
        bytes / self.block_bytes()
    }
}

/// Keys and values of every block.
pub struct KvArena {
    layout: KvLayout,
    n_blocks: usize,
    k: Vec<f16>,
    v: Vec<f16>,
}

impl std::fmt::Debug for KvArena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvArena")
            .field("layout", &self.layout)
            .field("n_blocks", &self.n_blocks)
            .finish()
    }
}

impl KvArena {
    /// Allocate the arena: `n_blocks` blocks of `layout`. Fails cleanly (no abort) when the
    /// memory cannot be had.
    pub fn new(layout: KvLayout, n_blocks: usize) -> Result<KvArena> {
        if n_blocks == 0 || layout.block_size == 0 {
            return Err(Error::InvalidParam {
                name: "kv_blocks",
                what: "the KV arena needs at least one block of at least one token".into(),
            });
        }
        let len = layout
            .block_len()
            .checked_mul(n_blocks)
            .ok_or_else(|| Error::InvalidParam {
                name: "kv_blocks",
                what: format!("{n_blocks} blocks overflow the address space"),
            })?;
        // Zero pages from the OS, mapped as blocks are first written (crate::zeroed).
        let alloc = |what| -> Result<Vec<f16>> {
            crate::zeroed::zeroed_vec(len).ok_or_else(|| Error::InvalidParam {
                name: "kv_blocks",
                what: format!(
                    "cannot allocate {what} of the KV arena ({} bytes)",
                    len.saturating_mul(std::mem::size_of::<f16>())
                ),
            })
        };
        Ok(KvArena {
            layout,
            n_blocks,
            k: alloc("keys")?,
            v: alloc("values")?,
        })
    }

    /// Geometry.
    pub fn layout(&self) -> KvLayout {
        self.layout
    }

    /// Blocks in the arena.
    pub fn n_blocks(&self) -> usize {
        self.n_blocks
    }

    /// Bytes held (keys and values).
    pub fn bytes(&self) -> usize {
        (self.k.len() + self.v.len()) * std::mem::size_of::<f16>()
    }

    fn tile_start(&self, block: usize, layer: usize, head: usize) -> usize {
        let l = &self.layout;
        ((block * l.n_layer + layer) * l.n_kv_head + head) * l.tile_len()
    }

    /// Keys of one (block, layer, head): `[block_size][head_dim]`.
    pub fn k_tile(&self, block: usize, layer: usize, head: usize) -> &[f16] {
        let s = self.tile_start(block, layer, head);
        &self.k[s..s + self.layout.tile_len()]
    }

    /// Keys of one (block, layer, head), writable (a context shift rotates them in place).
    pub fn k_tile_mut(&mut self, block: usize, layer: usize, head: usize) -> &mut [f16] {
        let s = self.tile_start(block, layer, head);
        &mut self.k[s..s + self.layout.tile_len()]
    }

    /// Values of one (block, layer, head): `[block_size][head_dim]`.
    pub fn v_tile(&self, block: usize, layer: usize, head: usize) -> &[f16] {
        let s = self.tile_start(block, layer, head);
        &self.v[s..s + self.layout.tile_len()]
    }

    /// Store the key and value of one token slot for all KV heads of `layer`.
    /// `k` and `v` are `[n_kv_head][head_dim]`.
    pub fn write(&mut self, block: usize, slot: usize, layer: usize, k: &[f32], v: &[f32]) {
        let hd = self.layout.head_dim;
        for h in 0..self.layout.n_kv_head {
            let s = self.tile_start(block, layer, h) + slot * hd;
            for (dst, &src) in self.k[s..s + hd].iter_mut().zip(&k[h * hd..(h + 1) * hd]) {
                *dst = f16::from_f32(src);
            }
            for (dst, &src) in self.v[s..s + hd].iter_mut().zip(&v[h * hd..(h + 1) * hd]) {
                *dst = f16::from_f32(src);
            }
        }
    }

    /// Range of block `b` in `k` and `v`.
    fn block_range(&self, b: usize) -> std::ops::Range<usize> {
        let n = self.layout.block_len();
        b * n..(b + 1) * n
    }

    /// Keys and values of block `b` as f16 bits, each `[n_layer][n_kv_head][block_size]
    /// [head_dim]`.
    pub fn block_bits(&self, b: usize) -> (&[u16], &[u16]) {
        let r = self.block_range(b);
        (
            self.k[r.clone()].reinterpret_cast(),
            self.v[r].reinterpret_cast(),
        )
    }

    /// Overwrite block `b` with keys and values as f16 bits (see [`KvArena::block_bits`]).
    /// Panics unless both are one block long.
    pub fn set_block_bits(&mut self, b: usize, k: &[u16], v: &[u16]) {
        let r = self.block_range(b);
        self.k[r.clone()].copy_from_slice(k.reinterpret_cast::<f16>());
        self.v[r].copy_from_slice(v.reinterpret_cast::<f16>());
    }

    /// Copy the first `n_slots` token slots of block `src` into block `dst`, every layer and
    /// head, keys and values (copy-on-write of a shared block).
    pub fn copy_slots(&mut self, src: usize, dst: usize, n_slots: usize) {
        let l = self.layout;
        let n = n_slots.min(l.block_size) * l.head_dim;
        for layer in 0..l.n_layer {
            for h in 0..l.n_kv_head {
                let (s, d) = (
                    self.tile_start(src, layer, h),
                    self.tile_start(dst, layer, h),
                );
                self.k.copy_within(s..s + n, d);
                self.v.copy_within(s..s + n, d);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_bits_round_trip_one_block_and_touch_no_other() {
        let layout = KvLayout {
            n_layer: 2,
            n_kv_head: 2,
            head_dim: 4,
            block_size: 3,
        };
        let mut a = KvArena::new(layout, 3).unwrap();
        let kv: Vec<f32> = (0..8).map(|i| i as f32 * 0.5 - 1.0).collect();
        a.write(1, 2, 1, &kv, &kv);
        let n = layout.block_len();
        let (k, v) = a.block_bits(1);
        let (k, v) = (k.to_vec(), v.to_vec());
        // Layer 1, head 1, slot 2: the last head_dim elements of the block.
        assert_eq!(f16::from_bits(k[n - 1]).to_f32(), 2.5);
        assert_eq!(f16::from_bits(v[n - 4]).to_f32(), 1.0);
        a.set_block_bits(2, &k, &v);
        assert_eq!(a.block_bits(2), (&k[..], &v[..]));
        assert!(
            a.block_bits(0).0.iter().all(|&x| x == 0),
            "block 0 untouched"
        );
    }
}
