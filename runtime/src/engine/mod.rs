//! The continuous-batching engine: many requests served together over one paged KV arena.
//!
//! PagedAttention as vLLM does it, sized for an edge device:
//! - one arena of KV blocks, allocated once from an explicit budget, handed out by the
//!   [`BlockPool`] (ref counts, LRU free list, prefix cache);
//! - no prefill / decode phases: each sequence has `num_computed` of its `tokens` in the cache,
//!   and every [`Engine::step`] fills a token budget (`max_batch_tokens`) with the pending tokens
//!   of running sequences first (a decode is one token), then with chunks of waiting prompts
//!   (chunked prefill), FCFS;
//! - a new request reuses every cached block of its longest cached prefix (chained block
//!   hashes) and computes only the rest; `n > 1` samples of one prompt share the prompt blocks
//!   and copy a block only when they write into it (copy-on-write);
//! - when a running sequence needs a block and none is free, the most recently admitted
//!   sequence is preempted: its blocks are freed (full ones stay in the prefix cache), its
//!   generated tokens kept, and it is requeued at the front to be recomputed;
//! - one forward pass per step over all scheduled tokens of all sequences;
//! - besides generation requests, scoring requests ([`Engine::submit_scoring`], `score.rs`):
//!   logits at chosen positions for the caller, no sampling, the KV cache held between
//!   [`Engine::append`]s. Perplexity, `ember bench` and [`Session`](crate::session::Session)
//!   evaluation are scoring requests: the engine is the only driver.
//!
//! One NaN rule, for both kinds: a logits row holding NaN is never sampled from or handed out;
//! its request ends with [`FinishReason::Error`] and [`Error::NonFinite`] in
//! [`SeqOutput::error`].
//!
//! Everything is allocated by [`Engine::new`] and [`Engine::submit`]; `step` allocates nothing.

mod config;
mod draft_model;
#[cfg(test)]
mod grammar_tests;
mod partial;
mod prompt_cache;
mod request;
mod score;
mod sequence;
mod shift;
mod speculative;
mod step;
mod submit;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use config::{
    alloc_failed, check_limits, invalid, reserve_failed, reserved, slab, slot_u32, Resources,
};
pub use config::{
    effective_threads, physical_cores, EngineConfig, MAX_BATCH_TOKENS, MAX_REQUESTS, MAX_SEQS,
};
pub use prompt_cache::PromptCacheLoad;
pub use request::{FinishReason, KvBudget, LogitsRow, RequestId, RequestParams};
use sequence::Seq;
pub use sequence::{SeqOutput, SeqState};
pub use shift::ContextShift;
pub use speculative::{Drafter, Speculative, MAX_DRAFT};

use crate::backend::{Backend, BackendKind};
use crate::error::{Error, Result};
use crate::grammar::{GrammarMatcher, VocabTrie};
use crate::kv::{BlockId, BlockPool, BlockTable};
use crate::model::{BatchToken, BlockTables, Model, Scratch};
use crate::sampler::{Sampler, SamplingParams};
use crate::stop::StopMatcher;
use crate::tokenizer::{StreamDecoder, Tokenizer};

#[derive(Debug)]
struct Request {
    generation: u32,
    /// Sequence slots, index `i` = sequence `i` of the request.
    seqs: Vec<u32>,
    stop_ids: Vec<u32>,
    ignore_eos: bool,
    /// Logits of the last prompt token, kept for forking sequences `1..n` (`n > 1` only).
    fork_logits: Vec<f32>,
    /// A copy of `fork_logits` each forked sequence's sampler may modify.
    fork_work: Vec<f32>,
}

/// What one [`Engine::step`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepStats {
    /// Sequences that had tokens computed.
    pub seqs: usize,
    /// Prompt (or recomputed) tokens computed.
    pub prefill_tokens: usize,
    /// Tokens sampled.
    pub sampled: usize,
    /// Sequences preempted to make room.
    pub preempted: usize,
    /// Sequences that finished.
    pub finished: usize,
}

/// Counters and gauges of the engine.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Metrics {
    /// Usable blocks in the arena.
    pub blocks_total: usize,
    /// Blocks referenced by sequences.
    pub blocks_used: usize,
    /// Blocks that can be handed out (including cached ones).
    pub blocks_free: usize,
    /// Free blocks that still hold a cached prefix.
    pub blocks_cached: usize,
    /// Tokens stored ÷ slots in used blocks (1.0 when no block is used).
    pub utilization: f64,
    /// Prompt tokens served from the prefix cache instead of computed.
    pub prefix_hit_tokens: u64,
    /// Tokens computed by forward passes (prompts, recomputation, and fed-back samples).
    pub tokens_computed: u64,
    /// Tokens sampled.
    pub tokens_generated: u64,
    /// Preemptions.
    pub preemptions: u64,
    /// Context shifts ([`ContextShift`]): generations that reached the end of the context and
    /// dropped a window of old tokens to go on.
    pub context_shifts: u64,
    /// Logit rows that held a NaN (non-finite weights): each ended its request with
    /// [`FinishReason::Error`].
    pub nan_logit_rows: u64,
    /// Engine steps that ran a forward pass.
    pub steps: u64,
    /// Tokens sampled (not greedy) from a row's most likely tokens that the backend selected
    /// on the device, instead of from the whole row (sampler/top.rs).
    pub device_top_rows: u64,
    /// Seconds spent in steps.
    pub busy_s: f64,
    /// Tokens sampled under a grammar.
    pub grammar_tokens: u64,
    /// Seconds spent choosing them and advancing their grammars (part of `busy_s`): the cost
    /// of constrained sampling over plain sampling's.
    pub grammar_s: f64,
}

impl Metrics {
    /// Sampled tokens per second of step time.
    pub fn generated_tok_s(&self) -> f64 {
        self.tokens_generated as f64 / self.busy_s.max(1e-9)
    }
}

/// Block tables of the sequence slab, as the forward pass sees them (`BatchToken::seq` is the
/// slot).
struct SlabTables<'a>(&'a [Option<Seq>]);

impl BlockTables for SlabTables<'_> {
    fn table(&self, seq: usize, group: usize) -> Option<&[BlockId]> {
        let t = &self.0.get(seq)?.as_ref()?.table;
        (group < t.groups()).then(|| t.group(group))
    }
}

/// The engine. Not thread-safe by itself: drive it from one thread (the C ABI wraps it).
pub struct Engine {
    // Declared (so dropped) before the model: with `CudaWeights::Mapped` it holds a device
    // mapping of the model's file.
    backend: Backend,
    model: Model,
    tokenizer: Arc<Tokenizer>,
    pool: BlockPool,
    /// Which tokens each block holds, for reuse below block granularity (`partial.rs`).
    partial: partial::PartialBlocks,
    scratch: Scratch,
    cfg: EngineConfig,
    n_ctx: usize,
    requests: Vec<Option<Request>>,
    free_requests: Vec<u32>,
    request_generation: u32,
    /// The draft model's engine, when one is set ([`Engine::set_draft_model`]).
    draft_model: Option<Box<draft_model::DraftModel>>,
    /// The vocabulary's byte trie, built by the first request with a grammar.
    vocab_trie: Option<Arc<VocabTrie>>,
    seqs: Vec<Option<Seq>>,
    free_seqs: Vec<u32>,
    waiting: VecDeque<u32>,
    running: Vec<u32>,
    /// Per step: (sequence slot, tokens scheduled).
    scheduled: Vec<(u32, usize)>,
    batch: Vec<BatchToken>,
    admissions: u64,
    metrics: Metrics,
    /// Whether sampled rows may stay on the device (only their argmax or most likely tokens
    /// copied back); [`Engine::set_device_sampling`].
    device_sampling: bool,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("cfg", &self.cfg)
            .field("running", &self.running.len())
            .field("waiting", &self.waiting.len())
            .finish()
    }
}

impl Engine {
    /// Most blocks a sequence of `n_tokens` tokens holds at once, over every layer group (a
    /// sliding-window group holds its window and a step's tokens).
    pub fn blocks_for(&self, n_tokens: usize) -> usize {
        let g = self.backend.kv_groups();
        (0..g.len())
            .map(|i| g.max_blocks(i, n_tokens, self.cfg.max_batch_tokens, self.cfg.block_size))
            .sum()
    }

    /// Check that a request needing `need` blocks and `n_seqs` sequences can ever be admitted,
    /// and take a request slot for it (nothing changes on error).
    pub(crate) fn take_request_slot(&mut self, need: usize, n_seqs: usize) -> Result<u32> {
        if need > self.pool.num_blocks() {
            // Reported as "can never fit this arena" (needed > total), even when it is empty.
            return Err(Error::KvCacheFull {
                total_blocks: self.pool.num_blocks(),
                needed_blocks: need,
            });
        }
        if self.free_seqs.len() < n_seqs {
            return Err(invalid(
                "request",
                "too many sequences in flight: release finished requests first",
            ));
        }
        self.free_requests.pop().ok_or_else(|| {
            invalid(
                "request",
                format!(
                    "{} requests are held: release finished requests first",
                    self.cfg.max_requests
                ),
            )
        })
    }

    /// Allocate everything: the KV arena, scratch for `max_batch_tokens`, request and sequence
    /// slabs, the worker threads.
    pub fn new(model: Model, cfg: EngineConfig) -> Result<Engine> {
        Self::with_backend(model, cfg, BackendKind::Cpu)
    }

    /// [`Engine::new`] on the chosen backend: with CUDA the KV arena and every step's forward
    /// pass live on the GPU; the CPU schedules and samples.
    pub fn with_backend(model: Model, cfg: EngineConfig, backend: BackendKind) -> Result<Engine> {
        let rows = cfg.max_seqs;
        Self::open(model, cfg, backend, rows)
    }

    /// [`Engine::with_backend`] with [`MAX_DRAFT`] more logits rows per step (as far as
    /// `max_batch_tokens` allows; 3 MiB for a 49k vocabulary): room to verify one sequence's
    /// speculative drafts in each step (`RequestParams::speculative`). Without the rows,
    /// drafts are dropped and requests decode plainly. The CLI, `ember batch` and the C ABI
    /// open their engines this way.
    pub fn with_draft_rows(
        model: Model,
        cfg: EngineConfig,
        backend: BackendKind,
    ) -> Result<Engine> {
        let rows = (cfg.max_seqs + MAX_DRAFT)
            .min(cfg.max_batch_tokens)
            .max(cfg.max_seqs);
        Self::open(model, cfg, backend, rows)
    }

    /// [`Engine::with_backend`] with room for `logit_rows` logits rows per step (at least
    /// `max_seqs`: every running sequence may sample in one step). Scoring requests use the
    /// rows beyond that to score many positions per forward pass (a [`Session`] sizes it from
    /// `SessionConfig::max_logits`).
    ///
    /// [`Session`]: crate::session::Session
    pub(crate) fn open(
        model: Model,
        cfg: EngineConfig,
        backend: BackendKind,
        logit_rows: usize,
    ) -> Result<Engine> {
        let c = &model.config;
        let n_ctx = if cfg.n_ctx == 0 {
            c.n_ctx_train
        } else {
            cfg.n_ctx.min(c.n_ctx_train)
        };
        check_limits(&cfg)?;
        // Lossless: a step never has more tokens to compute than its sequences can hold.
        let mut cfg = cfg;
        cfg.max_batch_tokens = cfg.max_batch_tokens.min(n_ctx.saturating_mul(cfg.max_seqs));
        let r = Resources::new(
            &model,
            cfg.kv_budget,
            cfg.block_size,
            cfg.kv_type,
            cfg.swa_full,
            n_ctx,
            cfg.max_seqs,
            cfg.max_batch_tokens,
            logit_rows.max(cfg.max_seqs),
            cfg.threads,
            backend,
            cfg.cuda_weights,
        )?;
        // Both bounded by `check_limits` (at most 2 × MAX_REQUESTS slots), so the arithmetic and
        // the `u32` slot numbers cannot overflow; the allocations can still fail and are
        // reported, never aborted on.
        let max_total_seqs = cfg
            .max_requests
            .max(cfg.max_seqs)
            .checked_mul(2)
            .ok_or_else(|| invalid("max_requests", "the sequence slab overflows"))?;
        let mut requests = slab::<Option<Request>>(cfg.max_requests, "max_requests")?;
        requests.extend((0..cfg.max_requests).map(|_| None));
        let mut free_requests = slab::<u32>(cfg.max_requests, "max_requests")?;
        free_requests.extend((0..slot_u32(cfg.max_requests)?).rev());
        let mut seqs = slab::<Option<Seq>>(max_total_seqs, "max_requests")?;
        seqs.extend((0..max_total_seqs).map(|_| None));
        let mut free_seqs = slab::<u32>(max_total_seqs, "max_requests")?;
        free_seqs.extend((0..slot_u32(max_total_seqs)?).rev());
        let mut waiting = VecDeque::new();
        waiting
            .try_reserve_exact(max_total_seqs)
            .map_err(|_| alloc_failed("max_requests", max_total_seqs))?;
        Ok(Engine {
            tokenizer: Arc::new(r.tokenizer),
            partial: partial::PartialBlocks::new(
                r.backend.n_blocks(),
                cfg.block_size,
                r.backend.kv_groups().len(),
            ),
            backend: r.backend,
            pool: r.pool,
            scratch: r.scratch,
            n_ctx,
            requests,
            free_requests,
            request_generation: 0,
            vocab_trie: None,
            draft_model: None,
            seqs,
            free_seqs,
            waiting,
            running: slab(cfg.max_seqs, "max_seqs")?,
            scheduled: slab(cfg.max_seqs, "max_seqs")?,
            batch: slab(cfg.max_batch_tokens, "max_batch_tokens")?,
            admissions: 0,
            metrics: Metrics::default(),
            device_sampling: true,
            model,
            cfg,
        })
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The tokenizer, shared: threads that prepare requests (the HTTP server's connections)
    /// tokenize and render chat templates with it while the engine steps.
    pub fn shared_tokenizer(&self) -> Arc<Tokenizer> {
        Arc::clone(&self.tokenizer)
    }

    /// Longest sequence in tokens.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Worker threads (0 when a GPU computes).
    pub fn threads(&self) -> usize {
        self.backend.threads()
    }

    /// The backend.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Tokens per KV block.
    pub fn block_size(&self) -> usize {
        self.cfg.block_size
    }

    /// Usable blocks of the KV arena (the pool's null block excluded). A block holds one layer
    /// group's keys and values for [`block_size`](Self::block_size) tokens: with one group
    /// (every model without sliding-window layers) times `block_size` it is the tokens the
    /// arena holds over all sequences; see [`Engine::kv_capacity_tokens`].
    pub fn kv_blocks(&self) -> usize {
        self.pool.num_blocks()
    }

    /// Tokens of one sequence the KV arena holds when that sequence has it all. With one layer
    /// group it is [`kv_blocks`](Self::kv_blocks) × `block_size`; with sliding-window groups,
    /// which keep only their window's blocks, more (while every group grows alike until the
    /// sliding ones reach their bound, the full-attention groups then take the rest).
    pub fn kv_capacity_tokens(&self) -> usize {
        let (blocks, bs) = (self.pool.num_blocks(), self.cfg.block_size);
        let g = self.backend.kv_groups();
        let sliding: Vec<usize> = (0..g.len())
            .filter(|&i| g.window(i) > 0)
            .map(|i| g.max_blocks(i, usize::MAX / 2, self.cfg.max_batch_tokens, bs))
            .collect();
        let (n, full) = (g.len().max(1), g.len() - sliding.len());
        let bound: usize = sliding.iter().sum();
        let even = blocks / n;
        if full == 0 || sliding.iter().all(|&c| even <= c) {
            return even * bs;
        }
        (blocks - bound) / full * bs
    }

    /// The KV arena's layer groups (block tables per sequence).
    pub fn kv_groups(&self) -> &crate::kv::KvGroups {
        self.backend.kv_groups()
    }

    /// How the KV arena stores keys and values.
    pub fn kv_type(&self) -> crate::kv::KvType {
        self.cfg.kv_type
    }

    /// Bytes of the KV arena.
    pub fn arena_bytes(&self) -> usize {
        self.backend.arena_bytes()
    }

    /// Blocks in the KV arena (the pool's null block included).
    pub fn arena_blocks(&self) -> usize {
        self.backend.n_blocks()
    }

    /// Bytes of the forward pass's scratch memory.
    pub fn scratch_bytes(&self) -> usize {
        self.scratch.bytes()
    }

    /// Turn prefix caching on or off for requests admitted from now on.
    pub fn set_prefix_caching(&mut self, on: bool) {
        self.cfg.prefix_caching = on;
    }

    /// See [`Backend::set_cuda_graph`] (for comparisons).
    #[doc(hidden)]
    pub fn set_cuda_graph(&mut self, on: bool) {
        self.backend.set_cuda_graph(on);
    }

    /// Whether any request is waiting, or running with tokens to compute (an idle scoring
    /// request is no work until tokens are appended to it).
    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty()
            || self.running.iter().any(|&s| {
                self.seqs[s as usize]
                    .as_ref()
                    .is_some_and(|q| q.pending() > 0)
            })
    }

    fn seq_mut(&mut self, slot: u32) -> &mut Seq {
        self.seqs[slot as usize]
            .as_mut()
            .expect("slot refers to a live sequence")
    }

    fn request(&self, id: RequestId) -> Result<&Request> {
        match self.requests.get(id.slot as usize) {
            Some(Some(r)) if r.generation == id.generation => Ok(r),
            _ => Err(invalid("request", "unknown or released request id")),
        }
    }

    /// Outputs of the request's sequences (index `i` = sequence `i`).
    pub fn output(&self, id: RequestId) -> Result<impl Iterator<Item = &SeqOutput>> {
        let r = self.request(id)?;
        Ok(r.seqs.iter().map(|&s| {
            &self.seqs[s as usize]
                .as_ref()
                .expect("a request's sequences live until it is released")
                .out
        }))
    }

    /// The prompt of a request (its token ids).
    pub fn prompt(&self, id: RequestId) -> Result<&[u32]> {
        let r = self.request(id)?;
        let seq = self.seqs[r.seqs[0] as usize]
            .as_ref()
            .expect("a request's sequences live until it is released");
        Ok(&seq.tokens[..seq.n_prompt])
    }

    /// Whether every sequence of the request has finished.
    pub fn is_finished(&self, id: RequestId) -> Result<bool> {
        Ok(self.output(id)?.all(|o| o.finish.is_some()))
    }

    /// Cancel a request: its blocks are returned at once; unfinished sequences finish with
    /// [`FinishReason::Cancelled`].
    pub fn cancel(&mut self, id: RequestId) -> Result<()> {
        let seqs_len = self.request(id)?.seqs.len();
        for i in 0..seqs_len {
            let s = self.requests[id.slot as usize]
                .as_ref()
                .expect("checked")
                .seqs[i];
            if self.seq_mut(s).out.finish.is_none() {
                self.finish_seq(s, FinishReason::Cancelled);
            }
        }
        Ok(())
    }

    /// Forget a request (cancelling it first if needed); its id becomes invalid.
    pub fn release(&mut self, id: RequestId) -> Result<()> {
        self.cancel(id)?;
        let r = self.requests[id.slot as usize]
            .take()
            .expect("checked by cancel");
        for s in r.seqs {
            self.close_draft(s);
            self.seqs[s as usize] = None;
            self.free_seqs.push(s);
        }
        self.free_requests.push(id.slot);
        Ok(())
    }

    /// Return a sequence's KV blocks to the pool (full ones stay in the prefix cache) and mark
    /// none of its tokens computed; used when it finishes, is preempted, or cannot be admitted.
    fn drop_kv(&mut self, slot: u32) -> &mut Seq {
        let (pool, partial) = (&mut self.pool, &mut self.partial);
        let seq = self.seqs[slot as usize].as_mut().expect("live sequence");
        // The last, partial block keeps its computed tokens until the pool hands it out again:
        // a later sequence with the same prefix copies them instead of computing them.
        let bs = self.cfg.block_size;
        let (i, fill) = (seq.num_computed / bs, seq.num_computed % bs);
        // (Not after a context shift: its blocks no longer hold what their tokens compute to.)
        if self.cfg.prefix_caching && fill > 0 && !seq.shifted {
            let parent = match i {
                0 => Some(None),
                _ => seq.block_hashes.get(i - 1).map(|&h| Some(h)),
            };
            let table = &seq.table;
            // Only blocks no other sequence shares (nobody writes into them once freed).
            let own = i < table.len()
                && (0..table.groups()).all(|g| {
                    let b = table.group(g)[i];
                    b != BlockId::NULL && pool.ref_count(b) == 1
                });
            if let (Some(parent), true) = (parent, own) {
                let tokens = &seq.tokens[i * bs..seq.num_computed];
                partial.register(pool, |g| table.group(g)[i], parent, tokens);
            }
        }
        seq.table.release(pool);
        seq.block_hashes.clear();
        seq.num_computed = 0;
        seq
    }

    /// End a sequence: return its blocks, drop it from the queues, record the reason.
    fn finish_seq(&mut self, slot: u32, reason: FinishReason) {
        if let Some(p) = self.running.iter().position(|&s| s == slot) {
            self.running.remove(p);
        }
        if let Some(p) = self.waiting.iter().position(|&s| s == slot) {
            self.waiting.remove(p);
        }
        self.close_draft(slot);
        let seq = self.drop_kv(slot);
        speculative::drop_draft(seq);
        seq.state = SeqState::Finished;
        seq.out.finish = Some(reason);
        // Sequences still waiting to fork from this one can never be forked: run them alone.
        let req = seq.req;
        if let Some(r) = self.requests[req as usize].as_ref() {
            for &s in &r.seqs {
                let sib = self.seqs[s as usize].as_mut().expect("live sequence");
                if sib.state == SeqState::ForkPending {
                    sib.state = if matches!(reason, FinishReason::Cancelled | FinishReason::Error) {
                        sib.out.finish = Some(reason);
                        SeqState::Finished
                    } else {
                        SeqState::Waiting
                    };
                    if sib.state == SeqState::Waiting {
                        self.waiting.push_back(s);
                    }
                }
            }
        }
    }

    /// With `false`, every sampled row comes back whole and is sampled on the host, as on the
    /// CPU backend (for comparisons: the tokens are the same either way). On by default.
    pub fn set_device_sampling(&mut self, on: bool) {
        self.device_sampling = on;
    }

    /// Current metrics.
    pub fn metrics(&self) -> Metrics {
        let bs = self.cfg.block_size;
        let mut m = self.metrics;
        m.blocks_total = self.pool.num_blocks();
        m.blocks_free = self.pool.num_free();
        m.blocks_used = self.pool.num_used();
        m.blocks_cached = self.pool.num_cached();
        // Tokens stored: each used block counted once, with the fill of its fullest holder
        // (shared blocks are full prefix blocks, identical for every holder).
        let mut fill = vec![0usize; self.backend.n_blocks()];
        for &s in &self.running {
            let seq = self.seqs[s as usize].as_ref().expect("running sequence");
            for g in 0..seq.table.groups() {
                for (i, b) in seq.table.group(g).iter().enumerate() {
                    let f = seq.num_computed.saturating_sub(i * bs).min(bs);
                    fill[b.index()] = fill[b.index()].max(f);
                }
            }
        }
        fill[0] = 0; // released blocks of sliding-window groups
        let stored: usize = fill.iter().sum();
        m.utilization = if m.blocks_used == 0 {
            1.0
        } else {
            stored as f64 / (m.blocks_used * bs) as f64
        };
        m
    }
}

// The C API steps an engine on a background thread: every backend must be `Send`.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<Engine>();
};

#[cfg(test)]
mod kv_type_tests;
#[cfg(test)]
mod prompt_cache_tests;
#[cfg(test)]
mod score_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod window_tests;

/// Tokenize `prompt` (special tokens parsed, BOS per the model) for a context of `n_ctx`
/// tokens. Refused before tokenizing when the byte length alone shows it cannot fit: no token
/// covers more bytes than the longest token piece, so a text of `b` bytes needs at least
/// `b / max_piece` tokens ([`Error::ContextFull`] reports that bound).
pub(crate) fn encode_prompt(tok: &Tokenizer, prompt: &str, n_ctx: usize) -> Result<Vec<u32>> {
    let fewest = prompt.len().div_ceil(tok.max_piece_len().max(1));
    if fewest > n_ctx {
        return Err(Error::ContextFull {
            n_ctx,
            requested: fewest,
        });
    }
    tok.encode(prompt, true, true)
        .map_err(|e| Error::Tokenizer(e.to_string()))
}
