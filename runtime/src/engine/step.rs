//! One engine step: schedule, run the batched forward pass, sample, retire.

use std::time::Instant;

use super::partial::PartialBlocks;
use super::sequence::Seq;
use super::{Engine, FinishReason, LogitsRow, RequestId, SeqState, SlabTables, StepStats};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::kv::{group_hash, hash_block, BlockHash, BlockId, BlockPool};
use crate::model::scratch::{RowNeed, NO_ARGMAX, NO_TOP};
use crate::model::BatchToken;

/// Why a sequence could not get the blocks it needs this step.
struct NoBlocks;

impl Engine {
    /// Blocks sequence `slot` needs to compute `k` more tokens: new blocks for the positions
    /// beyond its table (in every layer group), plus one copy per group whose block it writes
    /// into first is shared.
    fn blocks_needed(&self, slot: u32, k: usize) -> (usize, bool) {
        let bs = self.cfg.block_size;
        let seq = self.seqs[slot as usize].as_ref().expect("live sequence");
        let (i, t) = (seq.num_computed / bs, &seq.table);
        let cow = if seq.num_computed.is_multiple_of(bs) {
            0
        } else {
            (0..t.groups())
                .filter(|&g| {
                    t.group(g)
                        .get(i)
                        .is_some_and(|&b| b != BlockId::NULL && self.pool.ref_count(b) > 1)
                })
                .count()
        };
        (t.blocks_to_cover(seq.num_computed + k, bs) + cow, cow > 0)
    }

    /// Return the blocks of sequence `slot`'s sliding-window groups that no query from its next
    /// position on reads (a shifting sequence keeps its first, kept blocks: after a shift they
    /// are in the window again).
    pub(super) fn release_out_of_window(&mut self, slot: u32) {
        let groups = self.backend.kv_groups();
        if !groups.releases() {
            return;
        }
        let bs = self.cfg.block_size;
        let pin = self.pinned_blocks(slot);
        let seq = self.seqs[slot as usize].as_mut().expect("live sequence");
        for g in 0..groups.len() {
            if groups.window(g) > 0 {
                let to = groups.first_needed_block(g, seq.num_computed, bs);
                seq.table.release_before(g, pin, to, &mut self.pool);
            }
        }
    }

    /// Leading blocks of sequence `slot` that a sliding-window group keeps whatever its window:
    /// a shifting sequence's kept blocks (after a shift they are in the window again).
    fn pinned_blocks(&self, slot: u32) -> usize {
        let seq = self.seqs[slot as usize].as_ref().expect("live sequence");
        seq.shift.map_or(0, |s| self.shift_keep_blocks(s.keep))
    }

    /// Give sequence `slot` the blocks for `k` more tokens, copying a shared block it is about
    /// to write into (copy-on-write). Nothing changes on failure (but blocks out of its window,
    /// which it never reads again, are returned first).
    fn reserve(&mut self, slot: u32, k: usize) -> Result<(), NoBlocks> {
        self.release_out_of_window(slot);
        let (n, cow) = self.blocks_needed(slot, k);
        if n > self.pool.num_free() {
            return Err(NoBlocks);
        }
        let bs = self.cfg.block_size;
        let (pool, backend) = (&mut self.pool, &mut self.backend);
        let seq = self.seqs[slot as usize].as_mut().expect("live sequence");
        if cow {
            let i = seq.num_computed / bs;
            for g in 0..seq.table.groups() {
                let old = seq.table.group(g)[i];
                if old == BlockId::NULL || pool.ref_count(old) == 1 {
                    continue;
                }
                let new = pool.allocate().expect("free count checked");
                if backend
                    .copy_slots(old.index(), new.index(), seq.num_computed % bs)
                    .is_err()
                {
                    // A device failure here surfaces again at the step's forward pass; do not
                    // hand out a block whose contents are unknown.
                    pool.free(new);
                    return Err(NoBlocks);
                }
                seq.table.replace(g, i, new);
                pool.free(old);
            }
        }
        seq.table
            .ensure_capacity(pool, seq.num_computed + k, bs)
            .map_err(|_| NoBlocks)
    }

    /// Free a running sequence's blocks and requeue it (at the front) to be recomputed.
    fn preempt(&mut self, slot: u32) {
        if let Some(p) = self.running.iter().position(|&s| s == slot) {
            self.running.remove(p);
        }
        let seq = self.drop_kv(slot);
        super::speculative::drop_draft(seq);
        seq.state = SeqState::Waiting;
        self.waiting.push_front(slot);
        self.metrics.preemptions += 1;
    }

    /// Take the longest cached prefix of a waiting sequence's tokens (whole blocks, leaving at
    /// least one token to compute so there are logits to sample from, and every position whose
    /// logits a scoring request wants). With layer groups, a full-attention group needs every
    /// block of the prefix, a sliding-window group only the blocks its next query reads (and,
    /// for a shifting sequence, the kept ones): the others stay out of its table.
    fn take_cached_prefix(&mut self, slot: u32) {
        if !self.cfg.prefix_caching {
            return;
        }
        let bs = self.cfg.block_size;
        let pin = self.pinned_blocks(slot);
        let groups = self.backend.kv_groups();
        let pool = &mut self.pool;
        let seq = self.seqs[slot as usize].as_mut().expect("live sequence");
        debug_assert_eq!(seq.num_computed, 0);
        let cached =
            |pool: &crate::kv::BlockPool, h: BlockHash, g: usize| pool.lookup(group_hash(h, g));
        // The leading blocks every full-attention group has (their hashes in `block_hashes`).
        let mut parent: Option<BlockHash> = None;
        let limit = seq.first_needed();
        while (seq.block_hashes.len() + 1) * bs <= limit {
            let i = seq.block_hashes.len();
            let h = hash_block(parent, &seq.tokens[i * bs..(i + 1) * bs]);
            let full = (0..groups.len()).filter(|&g| groups.window(g) == 0);
            if !full.into_iter().all(|g| cached(pool, h, g).is_some()) {
                break;
            }
            seq.block_hashes.push(h);
            parent = Some(h);
        }
        // The longest of those prefixes whose sliding groups have what they read.

        let needed = |g: usize, i: usize, n: usize| {
            groups.window(g) == 0 || i < pin || i >= groups.first_needed_block(g, n * bs, bs)
        };
        let has_window = |n: usize| {
            let hashes = &seq.block_hashes;
            (0..groups.len())
                .filter(|&g| groups.window(g) > 0)
                .all(|g| {
                    let lo = groups.first_needed_block(g, n * bs, bs).max(pin.min(n));
                    (0..pin.min(n))
                        .chain(lo..n)
                        .all(|i| cached(pool, hashes[i], g).is_some())
                })
        };
        let mut n = seq.block_hashes.len();
        while n > 0 && !has_window(n) {
            n -= 1;
        }
        seq.block_hashes.truncate(n);
        for i in 0..n {
            let h = seq.block_hashes[i];
            seq.table.push(|g| {
                if !needed(g, i, n) {
                    return BlockId::NULL;
                }
                let b = cached(pool, h, g).expect("checked above");
                pool.retain(b);
                b
            });
        }
        let parent = seq.block_hashes.last().copied();
        // Below block granularity: the first tokens of the next block, copied from the blocks
        // (one per layer group) that hold them after the same prefix (partial.rs).
        let mut cached = n * bs;
        let want = &seq.tokens[cached..limit.min(cached + bs)];
        let best = self.partial.best(pool, parent, want);
        if let Some((src, m)) = best {
            let partial = &mut self.partial;
            if Self::copy_partial(pool, partial, &mut self.backend, src, m) {
                let own = &partial.own;
                seq.table.push(|g| own[g]);
                cached += m;
            }
        }
        seq.num_computed = cached;
        if seq.out.first_token.is_none() {
            seq.out.n_cached = cached.min(seq.out.n_prompt);
        }
        self.metrics.prefix_hit_tokens += cached as u64;
    }

    /// Take a block of every layer group and copy into each the first `m` token slots of the
    /// group's block registered with group 0's block `src` ([`partial::PartialBlocks::best`]);
    /// `true` with the blocks in `partial.own`, `false` (nothing taken) if a source is gone, the
    /// pool runs out or a copy fails.
    fn copy_partial(
        pool: &mut BlockPool,
        partial: &mut PartialBlocks,
        backend: &mut Backend,
        src: BlockId,
        m: usize,
    ) -> bool {
        if !partial.sources(pool, src) {
            return false;
        }
        partial.own.clear();
        for _ in 0..partial.src.len() {
            match pool.allocate() {
                Some(b) => partial.own.push(b),
                None => break,
            }
        }
        // `allocate` may hand out a source itself (the least recently used free block): as its
        // own group's block its slots are already in place; as another group's, copying into
        // it would overwrite a source not yet read, so the reuse is given up.
        let (src, own) = (&partial.src, &partial.own);
        let ok = own.len() == src.len()
            && own
                .iter()
                .enumerate()
                .all(|(g, o)| src.iter().enumerate().all(|(h, s)| o != s || g == h))
            && (0..own.len()).all(|g| {
                own[g] == src[g]
                    || backend
                        .copy_slots(src[g].index(), own[g].index(), m)
                        .is_ok()
            });
        if !ok {
            for &b in own {
                pool.free(b);
            }
        }
        ok
    }

    /// Register the sequence's newly completed blocks in the prefix cache (each layer group's
    /// block under its own hash; the partial-block index only for models of one group).
    fn cache_full_blocks(&mut self, slot: u32) {
        if !self.cfg.prefix_caching {
            return;
        }
        let bs = self.cfg.block_size;
        let pool = &mut self.pool;
        let seq = self.seqs[slot as usize].as_mut().expect("live sequence");
        if seq.shifted {
            return; // its KV is no longer what its tokens compute to (shift.rs)
        }
        let full = seq.num_computed / bs;
        while seq.block_hashes.len() < full {
            let i = seq.block_hashes.len();
            let parent = seq.block_hashes.last().copied();
            let tokens = &seq.tokens[i * bs..(i + 1) * bs];
            let h = hash_block(parent, tokens);
            for g in 0..seq.table.groups() {
                let b = seq.table.group(g)[i];
                if b != BlockId::NULL {
                    pool.set_hash(b, group_hash(h, g));
                }
            }
            let table = &seq.table;
            self.partial
                .register(pool, |g| table.group(g)[i], parent, tokens);
            seq.block_hashes.push(h);
        }
    }

    /// Fill this step's token budget: running sequences first (preempting the most recently
    /// admitted when blocks run out), then waiting ones in arrival order.
    fn schedule(&mut self, stats: &mut StepStats) {
        self.scheduled.clear();
        let mut budget = self.cfg.max_batch_tokens;
        let mut rows = self.scratch.max_logits();
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let slot = self.running[i];
            let seq = self.seqs[slot as usize].as_ref().expect("running sequence");
            // A scoring request leaves a row for each sequence after it (running, or waiting to
            // be admitted), so its many rows never hold back their samples; it keeps at least
            // one (`rows >= max_seqs >= 1`).
            let keep = if seq.scoring {
                (self.running.len() - i - 1 + self.waiting.len()).min(rows.saturating_sub(1))
            } else {
                0
            };
            if seq.draft > 0
                && (seq.pending() > budget
                    || seq.rows_for(seq.pending()) > rows.saturating_sub(keep))
            {
                // The real token and its drafts go in one step or the drafts go.
                self.drop_draft(slot);
            }
            let seq = self.seqs[slot as usize].as_ref().expect("running sequence");
            let mut k = seq.fit_rows(seq.pending().min(budget), rows.saturating_sub(keep));
            if k == 0 {
                // Idle (a computed scoring request) or no logits row left this step.
                i += 1;
                continue;
            }
            loop {
                let has_draft = self.seqs[slot as usize]
                    .as_ref()
                    .is_some_and(|s| s.draft > 0);
                if has_draft && self.blocks_needed(slot, k).0 > self.pool.num_free() {
                    // Drafts never preempt anyone: compute the real token alone.
                    self.drop_draft(slot);
                    let seq = self.seqs[slot as usize].as_ref().expect("running sequence");
                    k = seq.fit_rows(seq.pending().min(budget), rows.saturating_sub(keep));
                    continue;
                }
                if self.reserve(slot, k).is_ok() {
                    let seq = self.seqs[slot as usize].as_ref().expect("running sequence");
                    rows -= seq.rows_for(k);
                    self.scheduled.push((slot, k));
                    budget -= k;
                    i += 1;
                    break;
                }
                // Most recently admitted running sequence not yet scheduled this step.
                let victim = *self.running[i..]
                    .iter()
                    .max_by_key(|&&s| self.seqs[s as usize].as_ref().expect("running").admitted_at)
                    .expect("slot itself is a candidate");
                self.preempt(victim);
                stats.preempted += 1;
                if victim == slot {
                    break;
                }
            }
        }
        if stats.preempted > 0 {
            return;
        }
        while budget > 0 && self.running.len() < self.cfg.max_seqs {
            let Some(&slot) = self.waiting.front() else {
                break;
            };
            self.take_cached_prefix(slot);
            let seq = self.seqs[slot as usize].as_ref().expect("waiting sequence");
            let k = seq.fit_rows(seq.pending().min(budget), rows);
            if k == 0 || self.reserve(slot, k).is_err() {
                // Not enough blocks yet: give back the prefix and keep FCFS order.
                self.drop_kv(slot);
                break;
            }
            self.waiting.pop_front();
            self.admissions += 1;
            let seq = self.seqs[slot as usize].as_mut().expect("live");
            rows -= seq.rows_for(k);
            seq.state = SeqState::Running;
            seq.admitted_at = self.admissions;
            self.running.push(slot);
            self.scheduled.push((slot, k));
            budget -= k;
        }
    }

    /// Run one step: schedule, one forward pass over every scheduled token, sample the
    /// sequences whose pending tokens are all computed, retire finished ones. Allocates nothing.
    /// Rows of scoring requests are dropped (use [`Engine::step_with`] to receive them).
    pub fn step(&mut self) -> Result<StepStats> {
        self.step_with(|_| {})
    }

    /// [`Engine::step`], handing every logits row a scoring request asked for to `on_row`, in
    /// position order per request. A row holding a NaN is not handed out: it ends its request
    /// with [`FinishReason::Error`] and `Error::NonFinite` as its cause. Allocates nothing.
    pub fn step_with(&mut self, mut on_row: impl FnMut(LogitsRow<'_>)) -> Result<StepStats> {
        let mut stats = StepStats::default();
        self.schedule(&mut stats);
        if self.scheduled.is_empty() {
            return Ok(stats);
        }
        let t0 = Instant::now();
        self.batch.clear();
        let mut n_rows = 0;
        for &(slot, k) in &self.scheduled {
            let need = self.row_need(slot);
            let seq = self.seqs[slot as usize]
                .as_ref()
                .expect("scheduled sequence");
            let last = seq.tokens.len() - 1;
            for pos in seq.num_computed..seq.num_computed + k {
                let logits = seq.wants_row(pos, last);
                if logits {
                    if let Some(f) = self.scratch.row_need.get_mut(n_rows) {
                        *f = need;
                    }
                    n_rows += 1;
                }
                self.batch.push(BatchToken {
                    token: seq.tokens[pos],
                    pos,
                    seq: slot as usize,
                    logits,
                });
            }
            // A decode is the one fed-back sample of a sequence past its prompt (and its drafts).
            let real = last - seq.draft;
            let decode = k == 1 + seq.draft && seq.num_computed == real && real >= seq.n_prompt;
            stats.prefill_tokens += if decode { 0 } else { k };
        }
        let r = self.backend.forward(
            &self.model,
            &self.batch,
            &SlabTables(&self.seqs),
            &mut self.scratch,
        );
        if let Err(e) = r {
            // A forward error is an engine bug or resource failure: fail the scheduled
            // sequences rather than retrying them forever.
            for i in 0..self.scheduled.len() {
                let slot = self.scheduled[i].0;
                self.finish_seq(slot, FinishReason::Error);
            }
            return Err(e);
        }
        self.metrics.tokens_computed += self.batch.len() as u64;
        stats.seqs = self.scheduled.len();
        let n_vocab = self.model.config.n_vocab;
        let mut logits = self.scratch.take_logits();
        let mut row = 0;
        for i in 0..self.scheduled.len() {
            let (slot, k) = self.scheduled[i];
            let seq = self.seqs[slot as usize]
                .as_mut()
                .expect("scheduled sequence");
            let from = seq.num_computed;
            seq.num_computed += k;
            let sample = !seq.scoring && seq.num_computed == seq.tokens.len();
            let draft = seq.draft;
            if draft == 0 {
                self.cache_full_blocks(slot);
            }
            if sample {
                let l = &mut logits[row * n_vocab..(row + 1 + draft) * n_vocab];
                if draft == 0 {
                    // The backend's argmax or candidates, where it computed them for a row not
                    // read in full.
                    let on_device = match self.scratch.row_need[row] {
                        RowNeed::Argmax => {
                            Some(self.scratch.argmax[row]).filter(|&a| a != NO_ARGMAX)
                        }
                        RowNeed::Top(_) if self.scratch.top_len[row] != NO_TOP => {
                            let z = &self.scratch;
                            let at = row * z.top_stride;
                            let n = z.top_len[row] as usize;
                            let seq = self.seqs[slot as usize].as_mut().expect("live");
                            self.metrics.device_top_rows += 1;
                            Some(seq.sampler.sample_top(
                                &z.top_ids[at..at + n],
                                &z.top_vals[at..at + n],
                                z.top_complete[row],
                                &seq.tokens,
                            ))
                        }
                        _ => None,
                    };
                    self.sample_seq(slot, l, on_device, &mut stats);
                } else {
                    // Blocks enter the prefix cache once their tokens are verified.
                    self.verify(slot, l, &mut stats);
                    self.cache_full_blocks(slot);
                }
                row += 1 + draft;
                let seq = self.seqs[slot as usize].as_ref().expect("live sequence");
                if seq.out.finish.is_none() && seq.speculative.is_some() {
                    self.propose(slot);
                }
            } else {
                row = self.hand_out_rows(slot, from..from + k, &mut logits, row, &mut on_row);
            }
        }
        self.scratch.put_logits(logits);
        self.metrics.steps += 1;
        self.metrics.busy_s += t0.elapsed().as_secs_f64();
        Ok(stats)
    }

    /// Hand the rows a scoring sequence wanted among the just-computed positions `computed`
    /// (starting at logits row `row`) to `on_row`; returns the next row.
    fn hand_out_rows(
        &mut self,
        slot: u32,
        computed: std::ops::Range<usize>,
        logits: &mut [f32],
        mut row: usize,
        on_row: &mut impl FnMut(LogitsRow<'_>),
    ) -> usize {
        let n_vocab = self.model.config.n_vocab;
        let seq = self.seqs[slot as usize]
            .as_ref()
            .expect("scheduled sequence");
        if !seq.scoring {
            return row;
        }
        let req = seq.req;
        let request = RequestId {
            slot: req,
            generation: self.requests[req as usize]
                .as_ref()
                .expect("live request")
                .generation,
        };
        let (a, b) = (
            computed.start.max(seq.rows.start),
            computed.end.min(seq.rows.end),
        );
        for pos in a..b.max(a) {
            let l = &mut logits[row * n_vocab..(row + 1) * n_vocab];
            row += 1;
            let seq = self.seqs[slot as usize]
                .as_mut()
                .expect("scheduled sequence");
            if seq.out.finish.is_some() {
                continue;
            }
            seq.rows.start = pos + 1;
            if l.iter().any(|x| x.is_nan()) {
                self.fail_nan(slot, pos);
                continue;
            }
            on_row(LogitsRow {
                request,
                pos,
                logits: l,
                tokens: &seq.tokens,
            });
        }
        row
    }

    /// What `slot`'s next step reads of its sampled row: only its argmax for a plain greedy
    /// sampler, only its most likely tokens for a top-k sampler (sampler/top.rs), else the
    /// whole row; always the whole row under a grammar, with drafts to verify, for a scoring
    /// request, with siblings waiting to fork from the row, or with device sampling off.
    fn row_need(&self, slot: u32) -> RowNeed {
        let seq = self.seqs[slot as usize].as_ref().expect("live");
        if seq.scoring
            || seq.draft != 0
            || seq.grammar.is_some()
            || !self.device_sampling
            || self.has_fork_siblings(slot)
        {
            return RowNeed::Full;
        }
        if seq.sampler.is_plain_argmax() {
            return RowNeed::Argmax;
        }
        match seq.sampler.device_top(seq.tokens.len()) {
            Some(k) => RowNeed::Top(k as u32),
            None => RowNeed::Full,
        }
    }

    /// Whether siblings of `slot` (a request with `n` > 1) wait to fork from its next logits.
    fn has_fork_siblings(&self, slot: u32) -> bool {
        let req = self.seqs[slot as usize].as_ref().expect("live").req as usize;
        self.requests[req].as_ref().is_some_and(|r| {
            r.seqs.iter().any(|&s| {
                self.seqs[s as usize]
                    .as_ref()
                    .is_some_and(|q| q.state == SeqState::ForkPending)
            })
        })
    }

    /// Sample the next token of sequence `slot` from its logits row (or take `on_device`, the
    /// token sampled from the row's argmax or candidates computed by the backend: only given
    /// when [`Engine::row_need`] asked for them, and never for a row holding a NaN), fork its pending siblings first if it
    /// just finished its prompt, and retire it if it is done.
    pub(super) fn sample_seq(
        &mut self,
        slot: u32,
        logits: &mut [f32],
        on_device: Option<u32>,
        stats: &mut StepStats,
    ) {
        if let Some(tok) = on_device {
            self.emit(slot, logits, Some(tok), stats);
            return;
        }
        if logits.iter().any(|l| l.is_nan()) {
            // NaN logits come from non-finite weights (or an overflow inside the model): the
            // request ends with an error (and its siblings waiting to fork from these logits
            // with it) instead of emitting junk.
            let pos = self.seqs[slot as usize]
                .as_ref()
                .expect("live")
                .tokens
                .len()
                - 1;
            self.fail_nan(slot, pos);
            stats.finished += 1;
            return;
        }
        let req = self.seqs[slot as usize].as_ref().expect("live").req as usize;
        if self.has_fork_siblings(slot) {
            let r = self.requests[req].as_mut().expect("live request");
            r.fork_logits.copy_from_slice(logits);
            self.fork_siblings(slot, stats);
        }
        self.emit(slot, logits, None, stats);
    }

    /// Fork every pending sibling of `parent`: share its blocks (copy-on-write) and sample each
    /// sibling's first token from the parent's logits.
    fn fork_siblings(&mut self, parent: u32, stats: &mut StepStats) {
        let req = self.seqs[parent as usize].as_ref().expect("live").req as usize;
        let n = self.requests[req].as_ref().expect("live").seqs.len();
        for j in 0..n {
            let s = self.requests[req].as_ref().expect("live").seqs[j];
            if self.seqs[s as usize].as_ref().expect("live").state != SeqState::ForkPending {
                continue;
            }
            if self.running.len() == self.cfg.max_seqs {
                // No room to run it now: it computes its prompt itself later (the prefix cache
                // still shares the full blocks).
                let sib = self.seqs[s as usize].as_mut().expect("live");
                sib.state = SeqState::Waiting;
                self.waiting.push_back(s);
                continue;
            }
            let (parent_seq, sib) = two_mut(&mut self.seqs, parent as usize, s as usize);
            let pool = &mut self.pool;
            for i in 0..parent_seq.table.len() {
                sib.table.push(|g| {
                    let b = parent_seq.table.group(g)[i];
                    if b != BlockId::NULL {
                        pool.retain(b);
                    }
                    b
                });
            }
            sib.block_hashes.extend_from_slice(&parent_seq.block_hashes);
            sib.num_computed = parent_seq.num_computed;
            self.admissions += 1;
            sib.admitted_at = self.admissions;
            sib.state = SeqState::Running;
            self.running.push(s);
            // Each sibling samples from the parent's unmodified logits (samplers modify their
            // input in place): copy them into the request's work buffer first.
            let r = self.requests[req].as_mut().expect("live request");
            let mut work = std::mem::take(&mut r.fork_work);
            work.copy_from_slice(&r.fork_logits);
            self.emit(s, &mut work, None, stats);
            self.requests[req].as_mut().expect("live request").fork_work = work;
        }
    }

    /// Sample from `logits`, append the token to sequence `slot`, stream its text, and finish
    /// the sequence on EOS, a stop token or string, or its length limit.
    fn emit(&mut self, slot: u32, logits: &mut [f32], chosen: Option<u32>, stats: &mut StepStats) {
        let (tok, req) = {
            let seq = self.seqs[slot as usize].as_mut().expect("live");
            let tok = match &mut seq.grammar {
                _ if chosen.is_some() => chosen,
                None => Some(seq.sampler.sample(logits, &seq.tokens)),
                Some(g) => {
                    let t0 = Instant::now();
                    let tok = seq
                        .sampler
                        .sample_constrained(logits, &seq.tokens, g)
                        .filter(|&t| g.accept(t));
                    self.metrics.grammar_tokens += 1;
                    self.metrics.grammar_s += t0.elapsed().as_secs_f64();
                    tok
                }
            };
            (tok, seq.req as usize)
        };
        let Some(tok) = tok else {
            self.fail_grammar(slot);
            stats.finished += 1;
            return;
        };
        stats.sampled += 1;
        self.metrics.tokens_generated += 1;
        let r = self.requests[req].as_ref().expect("live request");
        let eog =
            self.tokenizer.is_eog(tok) && !(r.ignore_eos && seq_has_no_grammar(&self.seqs, slot));
        let stop_id = r.stop_ids.contains(&tok);
        let seq = self.seqs[slot as usize].as_mut().expect("live");
        seq.tokens.push(tok);
        seq.out.ids.push(tok);
        let now = Instant::now();
        seq.out.first_token.get_or_insert(now);
        seq.out.last_token = Some(now);
        let mut reason = None;
        if eog {
            reason = Some(FinishReason::Eos);
        } else if stop_id {
            reason = Some(FinishReason::Stop);
        } else {
            let piece = seq.decoder.push(&self.tokenizer, tok);
            let (safe, stopped) = seq.stops.push(piece);
            seq.out.text.push_str(safe);
            if stopped {
                reason = Some(FinishReason::Stop);
            } else if seq.n_generated() >= seq.max_tokens {
                reason = Some(FinishReason::Length);
            }
        }
        if reason.is_some_and(|r| r != FinishReason::Stop) {
            // Flush what the decoder and the stop matcher held back.
            let tail = seq.decoder.flush();
            let (safe, _) = seq.stops.push(tail);
            seq.out.text.push_str(safe);
            let rest = seq.stops.finish();
            seq.out.text.push_str(rest);
        }
        seq.out.piece_ends.push(seq.out.text.len() as u32);
        if let Some(reason) = reason {
            self.finish_seq(slot, reason);
            stats.finished += 1;
        } else if seq.shift.is_some() && seq.tokens.len() > self.n_ctx {
            // The new token has no position left: drop old ones (shift.rs).
            self.shift_or_finish(slot);
            if self.seqs[slot as usize]
                .as_ref()
                .is_some_and(|s| s.out.finish.is_some())
            {
                stats.finished += 1;
            }
        }
    }
}

impl Engine {
    /// Ends sequence `slot` with [`FinishReason::Error`]: its grammar allows no token.
    fn fail_grammar(&mut self, slot: u32) {
        self.finish_seq(slot, FinishReason::Error);
        let seq = self.seqs[slot as usize].as_mut().expect("live sequence");
        seq.out.error = Some(Error::Grammar(format!(
            "after {} generated tokens no token can continue the grammar (is it \
             satisfiable with this vocabulary?)",
            seq.n_generated()
        )));
    }
}

/// Two distinct elements of the slab, mutably.
fn two_mut<T>(v: &mut [Option<T>], a: usize, b: usize) -> (&mut T, &mut T) {
    assert_ne!(a, b, "two_mut of one slot");
    let (x, y) = if a < b {
        let (l, r) = v.split_at_mut(b);
        (&mut l[a], &mut r[0])
    } else {
        let (l, r) = v.split_at_mut(a);
        (&mut r[0], &mut l[b])
    };
    (
        x.as_mut().expect("live sequence"),
        y.as_mut().expect("live sequence"),
    )
}

/// Whether sequence `slot` generates without a grammar (`ignore_eos` applies only then).
fn seq_has_no_grammar(seqs: &[Option<Seq>], slot: u32) -> bool {
    seqs[slot as usize]
        .as_ref()
        .is_some_and(|s| s.grammar.is_none())
}
