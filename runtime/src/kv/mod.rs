//! The paged KV cache: one arena of fixed-size blocks, allocated once at start-up.
//!
//! PagedAttention (vLLM): a sequence's keys and values live in blocks of `block_size` token slots
//! anywhere in the arena; its [`BlockTable`] maps logical block `i` (tokens `i*bs .. (i+1)*bs`) to
//! a physical block. Attention walks the table. Blocks come from the [`BlockPool`], which never
//! allocates after construction.

mod arena;
mod block_pool;
pub mod cache_file;
mod groups;

pub use arena::{KvArena, KvLayout, KvRows, KvType};
pub use block_pool::{hash_block, BlockHash, BlockId, BlockPool};
pub use groups::{group_hash, KvGroups};

use crate::error::{Error, Result};

/// The physical blocks of one sequence, in logical order, one row per layer group
/// ([`KvGroups`]): logical block `i` of group `g` holds that group's layers for tokens
/// `i*bs .. (i+1)*bs`. Every group has the same number of logical blocks; a sliding group's
/// blocks that fell out of its window are released and read [`BlockId::NULL`]. Capacity is
/// fixed at creation, so nothing here allocates afterwards.
#[derive(Debug)]
pub struct BlockTable {
    /// `[groups][max_blocks]`, the first `len` of each row in use.
    blocks: Vec<BlockId>,
    groups: usize,
    max_blocks: usize,
    len: usize,
    /// Per group: the logical blocks below this one were visited by
    /// [`BlockTable::release_before`] (an optimisation: released entries are NULL anyway).
    released: Vec<usize>,
}

impl BlockTable {
    /// A table of one group able to hold `max_blocks` blocks (the context length in blocks).
    pub fn with_capacity(max_blocks: usize) -> BlockTable {
        BlockTable::grouped(1, max_blocks)
    }

    /// A table of `groups` groups, each able to hold `max_blocks` blocks.
    pub fn grouped(groups: usize, max_blocks: usize) -> BlockTable {
        BlockTable {
            blocks: vec![BlockId::NULL; groups * max_blocks],
            groups,
            max_blocks,
            len: 0,
            released: vec![0; groups],
        }
    }

    /// Number of groups.
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// The blocks of group 0, in logical order.
    pub fn blocks(&self) -> &[BlockId] {
        self.group(0)
    }

    /// The blocks of group `g`, in logical order (released ones are [`BlockId::NULL`]).
    pub fn group(&self, g: usize) -> &[BlockId] {
        &self.blocks[g * self.max_blocks..g * self.max_blocks + self.len]
    }

    /// Logical blocks held (in every group).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table holds no block.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Blocks held from the pool, over all groups (released ones not counted).
    pub fn held(&self) -> usize {
        (0..self.groups)
            .map(|g| {
                self.group(g)
                    .iter()
                    .filter(|&&b| b != BlockId::NULL)
                    .count()
            })
            .sum()
    }

    /// Blocks [`ensure_capacity`](Self::ensure_capacity) takes to cover `n_tokens` slots.
    pub fn blocks_to_cover(&self, n_tokens: usize, block_size: usize) -> usize {
        n_tokens.div_ceil(block_size).saturating_sub(self.len) * self.groups
    }

    /// Make sure the table covers `n_tokens` slots in every group, taking blocks from `pool`.
    /// On failure nothing is taken (capacity is checked before any mutation).
    pub fn ensure_capacity(
        &mut self,
        pool: &mut BlockPool,
        n_tokens: usize,
        block_size: usize,
    ) -> Result<()> {
        let need = n_tokens.div_ceil(block_size);
        if need <= self.len {
            return Ok(());
        }
        if need > self.max_blocks {
            return Err(Error::ContextFull {
                n_ctx: self.max_blocks * block_size,
                requested: n_tokens,
            });
        }
        let extra = (need - self.len) * self.groups;
        if extra > pool.num_free() {
            return Err(Error::KvCacheFull {
                total_blocks: pool.num_blocks(),
                needed_blocks: need * self.groups,
            });
        }
        for i in self.len..need {
            for g in 0..self.groups {
                let b = pool.allocate().expect("free count was checked just above");
                self.blocks[g * self.max_blocks + i] = b;
            }
        }
        self.len = need;
        Ok(())
    }

    /// Append logical block `len` with `block(g)` as group `g`'s block (a shared prefix block,
    /// or a fork of another table; [`BlockId::NULL`] for a block out of a sliding window).
    /// Panics past the capacity, which callers size from the sequence's maximum length.
    pub fn push(&mut self, mut block: impl FnMut(usize) -> BlockId) {
        assert!(self.len < self.max_blocks, "block table overflow");
        for g in 0..self.groups {
            self.blocks[g * self.max_blocks + self.len] = block(g);
        }
        self.len += 1;
    }

    /// Replace logical block `i` of group `g` (copy-on-write).
    pub fn replace(&mut self, g: usize, i: usize, b: BlockId) {
        assert!(i < self.len, "block {i} of a table of {}", self.len);
        self.blocks[g * self.max_blocks + i] = b;
    }

    /// Return the blocks of group `g` in `from..to` to `pool` (they fell out of its window):
    /// they read [`BlockId::NULL`] afterwards. Blocks visited by an earlier call are skipped.
    pub fn release_before(&mut self, g: usize, from: usize, to: usize, pool: &mut BlockPool) {
        let to = to.min(self.len);
        for i in from.max(self.released[g])..to {
            let b = std::mem::replace(&mut self.blocks[g * self.max_blocks + i], BlockId::NULL);
            if b != BlockId::NULL {
                pool.free(b);
            }
        }
        self.released[g] = self.released[g].max(to);
    }

    /// Keep the first `n` logical blocks, returning the rest to `pool` (last block first).
    pub fn truncate(&mut self, n: usize, pool: &mut BlockPool) {
        while self.len > n {
            self.len -= 1;
            for g in 0..self.groups {
                let b = self.blocks[g * self.max_blocks + self.len];
                if b != BlockId::NULL {
                    pool.free(b);
                }
            }
        }
        for r in &mut self.released {
            *r = (*r).min(n);
        }
    }

    /// Remove logical blocks `range` (a context shift drops them), returning them to `pool`
    /// (last first); the blocks after them move down. Allocates nothing.
    pub fn remove(&mut self, range: std::ops::Range<usize>, pool: &mut BlockPool) {
        let n = range.len();
        for g in 0..self.groups {
            let row = &mut self.blocks[g * self.max_blocks..g * self.max_blocks + self.len];
            for &b in row[range.clone()].iter().rev() {
                if b != BlockId::NULL {
                    pool.free(b);
                }
            }
            row.copy_within(range.end.., range.start);
            let r = &mut self.released[g];
            *r = if *r >= range.end {
                *r - n
            } else {
                (*r).min(range.start)
            };
        }
        self.len -= n;
    }

    /// Return every block to `pool`, last block first: the pool's free list is LRU, so a
    /// sequence's tail blocks are evicted before its (possibly shared) leading prefix blocks.
    pub fn release(&mut self, pool: &mut BlockPool) {
        self.truncate(0, pool);
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
            b.push(|_| blk);
        }
        // Copy-on-write of b's last block.
        let old = b.blocks()[1];
        let new = pool.allocate().unwrap();
        b.replace(0, 1, new);
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
    fn groups_grow_together_and_release_out_of_window_blocks() {
        let mut pool = BlockPool::new(32);
        let mut t = BlockTable::grouped(3, 8);
        t.ensure_capacity(&mut pool, 10, 2).unwrap(); // 5 logical blocks, 15 pool blocks
        assert_eq!((t.len(), t.held(), pool.num_used()), (5, 15, 15));
        assert_eq!(
            t.blocks_to_cover(12, 2),
            3,
            "one more logical block in each group"
        );
        // Group 2 slides: its first three blocks go back (twice: the second call is a no-op).
        t.release_before(2, 0, 3, &mut pool);
        t.release_before(2, 0, 3, &mut pool);
        assert_eq!(t.group(2)[..3], [BlockId::NULL; 3]);
        assert_eq!((t.held(), pool.num_used()), (12, 12));
        // A shift drops logical blocks 1..3 of every group (NULLs skipped), the rest move down.
        let tail: Vec<BlockId> = (0..3).map(|g| t.group(g)[4]).collect();
        t.remove(1..3, &mut pool);
        assert_eq!(t.len(), 3);
        assert_eq!((0..3).map(|g| t.group(g)[2]).collect::<Vec<_>>(), tail);
        assert_eq!(t.group(2)[0], BlockId::NULL);
        assert_eq!(pool.num_used(), t.held());
        pool.check_invariants().unwrap();
        t.release(&mut pool);
        assert_eq!(pool.num_used(), 0);
        // Not enough for every group: nothing taken.
        let mut small = BlockPool::new(5); // 4 usable
        let mut u = BlockTable::grouped(3, 4);
        u.ensure_capacity(&mut small, 2, 2).unwrap();
        assert!(u.ensure_capacity(&mut small, 4, 2).is_err());
        assert_eq!((u.len(), small.num_used()), (1, 3));
        u.release(&mut small);
    }

    #[test]
    #[should_panic(expected = "block table overflow")]
    fn push_past_capacity_panics() {
        let mut pool = BlockPool::new(4);
        let mut t = BlockTable::with_capacity(1);
        t.ensure_capacity(&mut pool, 1, 4).unwrap();
        let b = pool.allocate().unwrap();
        t.push(|_| b);
    }
}
