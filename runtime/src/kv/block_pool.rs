//! A fixed pool of KV blocks with reference counts and an O(1) free list.
//!
//! Invariants: a block is either on the free list with ref count 0, or off it with ref count ≥ 1;
//! the free list never holds a block twice. All storage is allocated by [`BlockPool::new`].

/// Index of a block in the arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId(pub u32);

impl BlockId {
    /// The index as `usize`.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Free list and reference counts of the arena's blocks.
#[derive(Debug)]
pub struct BlockPool {
    ref_counts: Vec<u32>,
    /// Stack of free blocks; capacity = number of blocks, so pushes never allocate.
    free: Vec<BlockId>,
}

impl BlockPool {
    /// A pool of `n_blocks` free blocks.
    pub fn new(n_blocks: usize) -> BlockPool {
        assert!(n_blocks <= u32::MAX as usize, "block count fits in u32");
        BlockPool {
            ref_counts: vec![0; n_blocks],
            // Pop from the end: hand out low ids first.
            free: (0..n_blocks as u32).rev().map(BlockId).collect(),
        }
    }

    /// Blocks in the pool.
    pub fn num_blocks(&self) -> usize {
        self.ref_counts.len()
    }

    /// Blocks not in use.
    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// Take a free block (ref count 1), or `None` when the pool is exhausted.
    pub fn allocate(&mut self) -> Option<BlockId> {
        let b = self.free.pop()?;
        self.ref_counts[b.index()] = 1;
        Some(b)
    }

    /// Add a reference to a block in use (sharing).
    pub fn retain(&mut self, b: BlockId) {
        let rc = &mut self.ref_counts[b.index()];
        assert!(*rc > 0, "retain of free block {b:?}");
        *rc += 1;
    }

    /// Drop a reference; the block returns to the free list when the last one goes.
    pub fn free(&mut self, b: BlockId) {
        let rc = &mut self.ref_counts[b.index()];
        assert!(*rc > 0, "double free of block {b:?}");
        *rc -= 1;
        if *rc == 0 {
            self.free.push(b);
        }
    }

    /// References held on `b`.
    pub fn ref_count(&self, b: BlockId) -> u32 {
        self.ref_counts[b.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_until_exhausted_then_free() {
        let mut p = BlockPool::new(3);
        let a = p.allocate().unwrap();
        let b = p.allocate().unwrap();
        let c = p.allocate().unwrap();
        assert_eq!(p.allocate(), None);
        assert_eq!((a.0, b.0, c.0), (0, 1, 2));
        p.retain(b);
        p.free(b);
        assert_eq!(p.num_free(), 0);
        p.free(b);
        assert_eq!(p.num_free(), 1);
        assert_eq!(p.allocate(), Some(b));
    }
}
