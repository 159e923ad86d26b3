//! The KV arena: keys and values for every block, one allocation at start-up, stored as the
//! engine's [`KvType`] (f16, or quantized per row in ggml's Q8_0 / Q4_0 layouts).
//!
//! Layout of block `b`, for keys and values alike: `[block_layers][n_kv_head][block_size][row]`,
//! a row being one token's `head_dim` elements in [`KvType::row_bytes`] bytes, so one (layer,
//! head) of a block is a contiguous `block_size`-row tile that attention reads front to back.
//! A block holds the layers of one layer group ([`super::KvGroups`]): every layer of the model,
//! or, for a model with sliding-window layers, the layers of one group; the arena's `layer`
//! arguments are slots within the block ([`super::KvGroups::slot_of`]).

pub use ember_kernels::kv::{KvRows, KvType};

use crate::error::{Error, Result};

/// Geometry of the arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvLayout {
    /// Layers one block holds (the model's layers, or one layer group's).
    pub block_layers: usize,
    /// Key/value heads.
    pub n_kv_head: usize,
    /// Dimension of a head.
    pub head_dim: usize,
    /// Token slots per block.
    pub block_size: usize,
    /// How a row is stored.
    pub kv_type: KvType,
}

impl KvLayout {
    /// Bytes of one stored row (one token, one head). The engine checks at start-up that the
    /// head size suits the type; an unsuitable one counts as 0 here.
    pub fn row_bytes(&self) -> usize {
        self.kv_type.row_bytes(self.head_dim).unwrap_or(0)
    }

    /// Bytes of one (layer, head) tile of a block.
    pub fn tile_bytes(&self) -> usize {
        self.block_size * self.row_bytes()
    }

    /// Bytes of one block's keys (its values take as many).
    pub fn keys_bytes(&self) -> usize {
        self.block_layers * self.n_kv_head * self.tile_bytes()
    }

    /// Bytes one block takes, keys and values together.
    pub fn block_bytes(&self) -> usize {
        2 * self.keys_bytes()
    }

    /// Blocks that fit in `bytes`.
    pub fn blocks_for_bytes(&self, bytes: usize) -> usize {
        bytes.checked_div(self.block_bytes()).unwrap_or(0)
    }
}

/// Keys and values of every block.
pub struct KvArena {
    layout: KvLayout,
    n_blocks: usize,
    k: Vec<u8>,
    v: Vec<u8>,
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
        if layout.kv_type.row_bytes(layout.head_dim).is_none() {
            return Err(Error::InvalidParam {
                name: "kv_type",
                what: format!(
                    "{} rows need a head size that is a multiple of {}; this model's is {}",
                    layout.kv_type,
                    layout.kv_type.block_elems(),
                    layout.head_dim
                ),
            });
        }
        let len = layout
            .keys_bytes()
            .checked_mul(n_blocks)
            .ok_or_else(|| Error::InvalidParam {
                name: "kv_blocks",
                what: format!("{n_blocks} blocks overflow the address space"),
            })?;
        // Zero pages from the OS, mapped as blocks are first written (crate::zeroed).
        let alloc = |what| -> Result<Vec<u8>> {
            crate::zeroed::zeroed_vec(len).ok_or_else(|| Error::InvalidParam {
                name: "kv_blocks",
                what: format!("cannot allocate {what} of the KV arena ({len} bytes)"),
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
        self.k.len() + self.v.len()
    }

    fn tile_start(&self, block: usize, layer: usize, head: usize) -> usize {
        let l = &self.layout;
        ((block * l.block_layers + layer) * l.n_kv_head + head) * l.tile_bytes()
    }

    /// Keys of one (block, layer, head): `block_size` rows.
    pub fn k_tile(&self, block: usize, layer: usize, head: usize) -> KvRows<'_> {
        let s = self.tile_start(block, layer, head);
        KvRows::new(
            self.layout.kv_type,
            &self.k[s..s + self.layout.tile_bytes()],
        )
    }

    /// Keys of one (block, layer, head), writable (a context shift rotates them in place).
    pub fn k_tile_mut(&mut self, block: usize, layer: usize, head: usize) -> &mut [u8] {
        let s = self.tile_start(block, layer, head);
        &mut self.k[s..s + self.layout.tile_bytes()]
    }

    /// Values of one (block, layer, head): `block_size` rows.
    pub fn v_tile(&self, block: usize, layer: usize, head: usize) -> KvRows<'_> {
        let s = self.tile_start(block, layer, head);
        KvRows::new(
            self.layout.kv_type,
            &self.v[s..s + self.layout.tile_bytes()],
        )
    }

    /// Store the key and value of one token slot for all KV heads of `layer`, as the arena's
    /// type. `k` and `v` are `[n_kv_head][head_dim]`.
    pub fn write(&mut self, block: usize, slot: usize, layer: usize, k: &[f32], v: &[f32]) {
        let (hd, rb, ty) = (
            self.layout.head_dim,
            self.layout.row_bytes(),
            self.layout.kv_type,
        );
        for h in 0..self.layout.n_kv_head {
            let s = self.tile_start(block, layer, h) + slot * rb;
            ty.store_row(&k[h * hd..(h + 1) * hd], &mut self.k[s..s + rb]);
            ty.store_row(&v[h * hd..(h + 1) * hd], &mut self.v[s..s + rb]);
        }
    }

    /// Range of block `b` in `k` and `v`.
    fn block_range(&self, b: usize) -> std::ops::Range<usize> {
        let n = self.layout.keys_bytes();
        b * n..(b + 1) * n
    }

    /// Keys and values of block `b` as stored, each `[block_layers][n_kv_head][block_size][row]`
    /// ([`KvLayout::keys_bytes`] bytes).
    pub fn block_data(&self, b: usize) -> (&[u8], &[u8]) {
        let r = self.block_range(b);
        (&self.k[r.clone()], &self.v[r])
    }

    /// Overwrite block `b` with keys and values laid out as [`KvArena::block_data`] gives them.
    /// Panics unless both are one block long.
    pub fn set_block_data(&mut self, b: usize, k: &[u8], v: &[u8]) {
        let r = self.block_range(b);
        self.k[r.clone()].copy_from_slice(k);
        self.v[r].copy_from_slice(v);
    }

    /// Copy the first `n_slots` token slots of block `src` into block `dst`, every layer and
    /// head, keys and values (copy-on-write of a shared block).
    pub fn copy_slots(&mut self, src: usize, dst: usize, n_slots: usize) {
        let l = self.layout;
        let n = n_slots.min(l.block_size) * l.row_bytes();
        for layer in 0..l.block_layers {
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
    fn block_data_round_trips_one_block_and_touches_no_other() {
        for kv_type in KvType::ALL {
            let layout = KvLayout {
                block_layers: 2,
                n_kv_head: 2,
                head_dim: 32,
                block_size: 3,
                kv_type,
            };
            let mut a = KvArena::new(layout, 3).unwrap();
            let kv: Vec<f32> = (0..64).map(|i| i as f32 * 0.5 - 16.0).collect();
            a.write(1, 2, 1, &kv, &kv);
            let (k, v) = a.block_data(1);
            let (k, v) = (k.to_vec(), v.to_vec());
            assert_eq!(k.len(), layout.keys_bytes());
            // Layer 1, head 1, slot 2: the last row of the block.
            let mut row = [0f32; 32];
            let rb = layout.row_bytes();
            kv_type.load_row(&k[k.len() - rb..], &mut row);
            let tol = if kv_type == KvType::Q4_0 { 1.2 } else { 0.07 };
            assert!((row[31] - kv[63]).abs() <= tol, "{kv_type}: {}", row[31]);
            a.set_block_data(2, &k, &v);
            assert_eq!(a.block_data(2), (&k[..], &v[..]));
            assert!(
                a.block_data(0).0.iter().all(|&x| x == 0),
                "block 0 untouched"
            );
            // Rows of that tile read back through `v_tile` as they were stored.
            let t = a.v_tile(2, 1, 1);
            assert_eq!(t.n_rows(32), 3);
            t.load(2, 32, &mut row);
            let mut want = [0f32; 32];
            kv_type.load_row(&v[v.len() - rb..], &mut want);
            assert_eq!(row, want);
        }
    }

    #[test]
    fn quantized_rows_need_whole_blocks() {
        let layout = KvLayout {
            block_layers: 1,
            n_kv_head: 1,
            head_dim: 48,
            block_size: 4,
            kv_type: KvType::Q8_0,
        };
        let e = KvArena::new(layout, 2).unwrap_err().to_string();
        assert!(e.contains("multiple of 32"), "{e}");
        assert!(KvArena::new(
            KvLayout {
                kv_type: KvType::F16,
                ..layout
            },
            2
        )
        .is_ok());
    }
}
