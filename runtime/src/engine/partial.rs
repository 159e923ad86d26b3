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
    regs: Vec<Reg>,
    /// `tokens[b * bs..b * bs + fill]`: the token ids of block `b`.
    tokens: Vec<u32>,
}

impl PartialBlocks {
    pub(super) fn new(n_blocks: usize, bs: usize) -> PartialBlocks {
        PartialBlocks {
            bs,
            regs: vec![Reg::default(); n_blocks],
            tokens: vec![0; n_blocks * bs],
        }
    }

    /// Note that block `b` (currently held, its epoch unchanged until freed and handed out
    /// again) holds `tokens` (1..=block size of them) after the prefix `parent`.
    pub(super) fn register(
        &mut self,
        pool: &BlockPool,
        b: BlockId,
        parent: Option<BlockHash>,
        tokens: &[u32],
    ) {
        let i = b.index();
        if tokens.is_empty() || tokens.len() > self.bs || i >= self.regs.len() {
            return;
        }
        self.tokens[i * self.bs..i * self.bs + tokens.len()].copy_from_slice(tokens);
        self.regs[i] = Reg {
            parent: parent.unwrap_or(ROOT),
            epoch: pool.epoch(b),
            fill: tokens.len() as u32,
        };
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
