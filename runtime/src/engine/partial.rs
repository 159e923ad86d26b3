//! Prefix reuse below block granularity.
//!
//! The prefix cache ([`crate::kv::BlockPool`]) shares whole blocks: a prompt that repeats an
//! earlier one up to a point inside a block recomputes that block's first tokens (up to
//! `block_size - 1` of them; with 16-token blocks, a repeated short chat request recomputed most
//! of its prompt's last block). This table remembers, for each block, which tokens it holds
//! and under which parent (the chained hash of the blocks before it): every full block when it
//! enters the prefix cache, and a sequence's last, partial block when it is released. When a
//! sequence is admitted, after its whole cached blocks, the block registered under the same
//! parent with the longest common prefix gives its first `m` token slots: they are copied into a
//! block of the sequence's own (the source may be shared, and the sequence will write after
//! them), and only the rest is computed.
//!
//! A model whose layers are split into groups (`kv::KvGroups`: Gemma 3's sliding-window
//! layers) keeps one block per group for the same tokens. A registration is then keyed by group
//! 0's block and remembers the other groups' blocks with their epochs; it is used only while
//! every one of them is intact.
//!
//! A registration is valid while the pool has not handed its block out again
//! ([`BlockPool::epoch`] unchanged): a full block's contents never change while cached, and a
//! released block is not written until it is allocated. Everything is allocated when the engine
//! is built; registering and looking up allocate nothing (the lookup scans the table: one
//! admission, a few thousand comparisons).

use crate::kv::{BlockHash, BlockId, BlockPool};

/// The parent key of a sequence's first block (no block before it).
const ROOT: u64 = 0x5bd1_e995_0ddb_a11d;

#[derive(Clone, Copy, Default)]
struct Reg {
    /// The chained hash of the blocks before this one ([`ROOT`] for a first block).
    parent: u64,
    /// The block's epoch when registered.
    epoch: u32,
    /// Tokens held (0: no registration).
    fill: u32,
}

/// Per block of the arena: the tokens it holds and the prefix it follows.
pub(super) struct PartialBlocks {
    bs: usize,
    /// Layer groups: blocks per token range.
    groups: usize,
    regs: Vec<Reg>,
    /// `tokens[b * bs..b * bs + fill]`: the token ids of block `b`.
    tokens: Vec<u32>,
    /// `others[b * (groups - 1) + g - 1]`: group `g`'s block (g ≥ 1) registered with group 0's
    /// block `b`, and its epoch then.
    others: Vec<(BlockId, u32)>,
    /// A reuse's source and own blocks, one per group (preallocated scratch).
    pub(super) src: Vec<BlockId>,
    pub(super) own: Vec<BlockId>,
}

impl PartialBlocks {
    pub(super) fn new(n_blocks: usize, bs: usize, groups: usize) -> PartialBlocks {
        let groups = groups.max(1);
        PartialBlocks {
            bs,
            groups,
            regs: vec![Reg::default(); n_blocks],
            tokens: vec![0; n_blocks * bs],
            others: vec![(BlockId::NULL, 0); n_blocks * (groups - 1)],
            src: Vec::with_capacity(groups),
            own: Vec::with_capacity(groups),
        }
    }

    /// Note that the blocks `block(g)` of every group `g` (currently held, their epochs
    /// unchanged until freed and handed out again) hold `tokens` (1..=block size of them) after
    /// the prefix `parent`. Nothing is noted if a group has no block there.
    pub(super) fn register(
        &mut self,
        pool: &BlockPool,
        block: impl Fn(usize) -> BlockId,
        parent: Option<BlockHash>,
        tokens: &[u32],
    ) {
        let b = block(0);
        let i = b.index();
        if tokens.is_empty() || tokens.len() > self.bs || i >= self.regs.len() || b == BlockId::NULL
        {
            return;
        }
        if (1..self.groups).any(|g| block(g) == BlockId::NULL) {
            self.regs[i].fill = 0;
            return;
        }
        for g in 1..self.groups {
            let o = block(g);
            self.others[i * (self.groups - 1) + g - 1] = (o, pool.epoch(o));
        }
        self.tokens[i * self.bs..i * self.bs + tokens.len()].copy_from_slice(tokens);
        self.regs[i] = Reg {
            parent: parent.unwrap_or(ROOT),
            epoch: pool.epoch(b),
            fill: tokens.len() as u32,
        };
    }

    /// Fill [`Self::src`] with the blocks of every group registered with group 0's block `b`
    /// (from [`Self::best`]); `false` if one of them has been handed out again since.
    pub(super) fn sources(&mut self, pool: &BlockPool, b: BlockId) -> bool {
        self.src.clear();
        self.src.push(b);
        for g in 1..self.groups {
            let (o, epoch) = self.others[b.index() * (self.groups - 1) + g - 1];
            if o == BlockId::NULL || pool.epoch(o) != epoch {
                return false;
            }
            self.src.push(o);
        }
        true
    }

    /// The block whose registered tokens after `parent` share the longest prefix with `want`,
    /// and that length (at least 1); `None` if no valid registration does.
    pub(super) fn best(
        &self,
        pool: &BlockPool,
        parent: Option<BlockHash>,
        want: &[u32],
    ) -> Option<(BlockId, usize)> {
        let key = parent.unwrap_or(ROOT);
        let mut best: Option<(BlockId, usize)> = None;
        for (i, r) in self.regs.iter().enumerate() {
            if r.fill == 0 || r.parent != key {
                continue;
            }
            let b = BlockId(i as u32);
            if pool.epoch(b) != r.epoch {
                continue; // handed out again since: its contents are gone
            }
            let held = &self.tokens[i * self.bs..i * self.bs + r.fill as usize];
            let m = held.iter().zip(want).take_while(|(a, b)| a == b).count();
            if m > best.map_or(0, |(_, n)| n) {
                best = Some((b, m));
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registration of two groups is used while both blocks are intact, and not once the
    /// second group's block has been handed out again (its slots may be overwritten).
    #[test]
    fn every_groups_block_must_be_intact() {
        let mut pool = BlockPool::new(4); // blocks 1..=3
        let mut p = PartialBlocks::new(4, 4, 2);
        let (b0, b1) = (pool.allocate().unwrap(), pool.allocate().unwrap());
        p.register(&pool, |g| [b0, b1][g], None, &[1, 2, 3]);
        assert_eq!(p.best(&pool, None, &[1, 2, 9]), Some((b0, 2)));
        assert!(
            p.best(&pool, Some(7), &[1, 2, 9]).is_none(),
            "another parent"
        );
        pool.free(b1);
        pool.free(b0);
        assert!(p.sources(&pool, b0));
        assert_eq!(p.src, [b0, b1]);
        // The never-used block 3 goes first, then b1 (freed before b0).
        assert_eq!(pool.allocate(), Some(BlockId(3)));
        assert_eq!(pool.allocate(), Some(b1));
        assert_eq!(p.best(&pool, None, &[1, 2, 9]), Some((b0, 2)));
        assert!(
            !p.sources(&pool, b0),
            "group 1's block was handed out again"
        );
        // A missing block in a group registers nothing.
        p.register(&pool, |g| [b1, BlockId::NULL][g], None, &[4]);
        assert!(p.best(&pool, None, &[4]).is_none());
    }
}
