//! The paged KV cache: one arena of fixed-size blocks, allocated once at start-up.
//!
//! PagedAttention (vLLM): a sequence's keys and values live in blocks of `block_size` token slots
//! anywhere in the arena; its [`BlockTable`] maps logical block `i` (tokens `i*bs .. (i+1)*bs`) to
//! a physical block. Attention walks the table. Blocks come from the [`BlockPool`], which never
//! allocates after construction.

mod arena;
mod block_pool;

pub use arena::{KvArena, KvLayout};
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

    /// Return every block to `pool`, last block first: the pool's free list is LRU, so a
    /// sequence's tail blocks are evicted before its (possibly shared) leading prefix blocks.
    pub fn release(&mut self, pool: &mut BlockPool) {
        for b in self.blocks.drain(..).rev() {
            pool.free(b);
        }
    }
}
