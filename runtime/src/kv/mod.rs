//! The paged KV cache: one arena of fixed-size blocks, allocated once at start-up.
//!
//! PagedAttention (vLLM): a sequence's keys and values live in blocks of `block_size` token slots
//! anywhere in the arena; its [`BlockTable`] maps logical block `i` (tokens `i*bs .. (i+1)*bs`) to
//! a physical block. Attention walks the table. Blocks come from the [`BlockPool`], which never
//! allocates after construction.

mod arena;
mod block_pool;
pub mod cache_file;

pub use arena::{KvArena, KvLayout, KvRows, KvType};
pub use block_pool::{hash_block, BlockHash, BlockId, BlockPool};

use crate::error::{Error, Result};

/// The physical blocks of one sequence, in logical order. Capacity is fixed at creation, so
/// growing it never allocates.
#[derive(Debug)]
pub struct BlockTable {
    blocks: Vec<BlockId>,
    max_blocks: usize,
}

impl BlockTable {
    /// A table able to hold `max_blocks` blocks (the context length in blocks).
    pub fn with_capacity(max_blocks: usize) -> BlockTable {
        BlockTable {
            blocks: Vec::with_capacity(max_blocks),
            max_blocks,
        }
    }

    /// The blocks, in logical order.
    pub fn blocks(&self) -> &[BlockId] {
        &self.blocks
    }

    /// Number of blocks held.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether the table holds no block.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Make sure the table covers `n_tokens` slots, taking blocks from `pool`. On failure
    /// nothing is taken (capacity is checked before any mutation).
    pub fn ensure_capacity(
        &mut self,
        pool: &mut BlockPool,
        n_tokens: usize,
        block_size: usize,
    ) -> Result<()> {
        let need = n_tokens.div_ceil(block_size);
        if need <= self.blocks.len() {
            return Ok(());
        }
        if need > self.max_blocks {
            return Err(Error::ContextFull {
                n_ctx: self.max_blocks * block_size,
                requested: n_tokens,
            });
        }
        let extra = need - self.blocks.len();
        if extra > pool.num_free() {
            return Err(Error::KvCacheFull {
                total_blocks: pool.num_blocks(),
                needed_blocks: need,
            });
        }
        for _ in 0..extra {
            let b = pool.allocate().expect("free count was checked just above");
            self.blocks.push(b);
        }
        Ok(())
    }

    /// Append a block (a shared prefix block, or a fork of another table). Panics past the
    /// capacity, which callers size from the sequence's maximum length.
    pub fn push(&mut self, b: BlockId) {
        assert!(self.blocks.len() < self.max_blocks, "block table overflow");
        self.blocks.push(b);
    }

    /// Replace logical block `i` (copy-on-write).
    pub fn replace(&mut self, i: usize, b: BlockId) {
        self.blocks[i] = b;
    }

    /// Keep the first `n` blocks, returning the rest to `pool` (last block first).
    pub fn truncate(&mut self, n: usize, pool: &mut BlockPool) {
        while self.blocks.len() > n {
            let b = self.blocks.pop().expect("longer than n");
            pool.free(b);
        }
    }

    /// Remove logical blocks `range` (a context shift drops them), returning them to `pool`
    /// (last first); the blocks after them move down. Allocates nothing.
    pub fn remove(&mut self, range: std::ops::Range<usize>, pool: &mut BlockPool) {
        for b in self.blocks.drain(range).rev() {
            pool.free(b);
        }
    }

    /// Return every block to `pool`, last block first: the pool's free list is LRU, so a
    /// sequence's tail blocks are evicted before its (possibly shared) leading prefix blocks.
    pub fn release(&mut self, pool: &mut BlockPool) {
        for b in self.blocks.drain(..).rev() {
            pool.free(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_frees_the_range_and_keeps_order() {
        let mut pool = BlockPool::new(8);
        let mut t = BlockTable::with_capacity(6);
        t.ensure_capacity(&mut pool, 6 * 2, 2).unwrap();
        let before = t.blocks().to_vec();
        t.remove(1..3, &mut pool);
        assert_eq!(t.blocks(), [before[0], before[3], before[4], before[5]]);
        assert_eq!(pool.num_free(), 3);
        assert_eq!(pool.ref_count(before[1]), 0);
        pool.check_invariants().unwrap();
    }

    #[test]
    fn ensure_capacity_takes_exactly_the_blocks_needed() {
        let mut pool = BlockPool::new(6);
        let mut t = BlockTable::with_capacity(4);
        t.ensure_capacity(&mut pool, 5, 4).unwrap();
        assert_eq!(t.len(), 2);
        t.ensure_capacity(&mut pool, 8, 4).unwrap();
        assert_eq!(t.len(), 2, "8 tokens still fit in 2 blocks of 4");
        t.ensure_capacity(&mut pool, 9, 4).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(pool.num_used(), 3);
        t.release(&mut pool);
        assert!(t.is_empty());
        assert_eq!(pool.num_used(), 0);
    }

    #[test]
    fn ensure_capacity_fails_without_taking_anything() {
        let mut pool = BlockPool::new(4); // 3 usable blocks (block 0 is the null block)
        let mut t = BlockTable::with_capacity(8);
        t.ensure_capacity(&mut pool, 4, 4).unwrap();
        let e = t.ensure_capacity(&mut pool, 20, 4).unwrap_err();
        assert!(matches!(e, Error::KvCacheFull { .. }), "{e}");
        assert_eq!(
            (t.len(), pool.num_used()),
            (1, 1),
            "nothing taken on failure"
        );
        let mut short = BlockTable::with_capacity(1);
        let e = short.ensure_capacity(&mut pool, 5, 4).unwrap_err();
        assert!(
            matches!(
                e,
                Error::ContextFull {
                    n_ctx: 4,
                    requested: 5
                }
            ),
            "{e}"
        );
        assert_eq!((short.len(), pool.num_used()), (0, 1));
        t.release(&mut pool);
    }

    #[test]
    fn shared_blocks_survive_one_holder_and_replace_swaps_in_place() {
        let mut pool = BlockPool::new(8);
        let mut a = BlockTable::with_capacity(4);
        a.ensure_capacity(&mut pool, 8, 4).unwrap();
        // A fork: b holds a's blocks too.
        let mut b = BlockTable::with_capacity(4);
        for &blk in a.blocks() {
            pool.retain(blk);
            b.push(blk);
        }
        // Copy-on-write of b's last block.
        let old = b.blocks()[1];
        let new = pool.allocate().unwrap();
        b.replace(1, new);
        pool.free(old);
        assert_eq!(pool.ref_count(a.blocks()[0]), 2);
        assert_eq!(pool.ref_count(a.blocks()[1]), 1);
        assert_eq!(pool.ref_count(new), 1);
        a.release(&mut pool);
        assert_eq!(pool.num_used(), 2, "b's blocks stay");
        b.release(&mut pool);
        assert_eq!(pool.num_used(), 0);
    }

    #[test]
    #[should_panic(expected = "block table overflow")]
    fn push_past_capacity_panics() {
        let mut pool = BlockPool::new(4);
        let mut t = BlockTable::with_capacity(1);
        t.ensure_capacity(&mut pool, 1, 4).unwrap();
        let b = pool.allocate().unwrap();
        t.push(b);
    }
}
