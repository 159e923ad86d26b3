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
//! - one forward pass per step over all scheduled tokens of all sequences.
//!
//! Everything is allocated by [`Engine::new`] and [`Engine::submit`]; `step` allocates nothing.

mod sequence;

use std::collections::VecDeque;

use sequence::Seq;
pub use sequence::{SeqOutput, SeqState};

use crate::backend::{Backend, BackendKind, CudaWeights};
use crate::error::{Error, Result};
use crate::kv::{BlockId, BlockPool, BlockTable};
use crate::model::{BatchToken, BlockTables, Model, Scratch};
use crate::sampler::{Sampler, SamplingParams};
use crate::session::{FinishReason, KvBudget, Resources};
use crate::stop::StopMatcher;
use crate::tokenizer::{StreamDecoder, Tokenizer};

/// Start-up parameters of an [`Engine`].
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Longest sequence (prompt + generated) in tokens; 0: the model's training context.
    pub n_ctx: usize,
    /// KV arena size.
    pub kv_budget: KvBudget,
    /// Token slots per KV block.
    pub block_size: usize,
    /// Most sequences running at once.
    pub max_seqs: usize,
    /// Most tokens computed per step.
    pub max_batch_tokens: usize,
    /// Most requests held at once (waiting, running, or finished but not yet released).
    pub max_requests: usize,
    /// Worker threads (0: physical cores).
    pub threads: usize,
    /// Reuse cached KV blocks of identical prompt prefixes.
    pub prefix_caching: bool,
    /// Where the CUDA backend keeps the weights (ignored by the CPU backend).
    pub cuda_weights: CudaWeights,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            n_ctx: 4096,
            kv_budget: KvBudget::Bytes(256 << 20),
            block_size: 16,
            max_seqs: 32,
            max_batch_tokens: 512,
            max_requests: 256,
            threads: 0,
            prefix_caching: true,
            cuda_weights: CudaWeights::Upload,
        }
    }
}

/// What one request asks for.
#[derive(Clone, Debug)]
pub struct RequestParams {
    /// Sampler settings (sequence `i` of the request uses seed `seed + i`).
    pub sampling: SamplingParams,
    /// Most tokens to generate per sequence.
    pub max_tokens: usize,
    /// Stop strings (excluded from the output text).
    pub stop: Vec<String>,
    /// Token ids that stop generation, besides the model's end-of-generation tokens.
    pub stop_ids: Vec<u32>,
    /// Number of sequences to sample from the prompt (parallel sampling).
    pub n: usize,
    /// Keep generating past end-of-generation tokens.
    pub ignore_eos: bool,
}

impl Default for RequestParams {
    fn default() -> Self {
        RequestParams {
            sampling: SamplingParams::default(),
            max_tokens: 128,
            stop: Vec::new(),
            stop_ids: Vec::new(),
            n: 1,
            ignore_eos: false,
        }
    }
}

/// Handle of a submitted request. Generation-checked: a handle of a released request never
/// refers to a later one that reuses its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestId {
    slot: u32,
    generation: u32,
}

impl RequestId {
    /// A stable 64-bit encoding (for the C ABI).
    pub fn to_u64(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.slot)
    }

    /// Inverse of [`RequestId::to_u64`].
    pub fn from_u64(v: u64) -> RequestId {
        RequestId {
            slot: v as u32,
            generation: (v >> 32) as u32,
        }
    }
}

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
    /// Logit rows that held a NaN (non-finite weights): each ended its request with
    /// [`FinishReason::Error`].
    pub nan_logit_rows: u64,
    /// Engine steps that ran a forward pass.
    pub steps: u64,
    /// Seconds spent in steps.
    pub busy_s: f64,
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
    fn table(&self, seq: usize) -> Option<&[BlockId]> {
        self.0.get(seq)?.as_ref().map(|s| s.table.blocks())
    }
}

/// The engine. Not thread-safe by itself: drive it from one thread (the C ABI wraps it).
pub struct Engine {
    // Declared (so dropped) before the model: with `CudaWeights::Mapped` it holds a device
    // mapping of the model's file.
    backend: Backend,
    model: Model,
    tokenizer: Tokenizer,
    pool: BlockPool,
    scratch: Scratch,
    cfg: EngineConfig,
    n_ctx: usize,
    requests: Vec<Option<Request>>,
    free_requests: Vec<u32>,
    request_generation: u32,
    seqs: Vec<Option<Seq>>,
    free_seqs: Vec<u32>,
    waiting: VecDeque<u32>,
    running: Vec<u32>,
    /// Per step: (sequence slot, tokens scheduled).
    scheduled: Vec<(u32, usize)>,
    batch: Vec<BatchToken>,
    admissions: u64,
    metrics: Metrics,
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

fn invalid(name: &'static str, what: impl Into<String>) -> Error {
    Error::InvalidParam {
        name,
        what: what.into(),
    }
}

impl Engine {
    /// Allocate everything: the KV arena, scratch for `max_batch_tokens`, request and sequence
    /// slabs, the worker threads.
    pub fn new(model: Model, cfg: EngineConfig) -> Result<Engine> {
        Self::with_backend(model, cfg, BackendKind::Cpu)
    }

    /// [`Engine::new`] on the chosen backend: with CUDA the KV arena and every step's forward
    /// pass live on the GPU; the CPU schedules and samples.
    pub fn with_backend(model: Model, cfg: EngineConfig, backend: BackendKind) -> Result<Engine> {
        let c = &model.config;
        let n_ctx = if cfg.n_ctx == 0 {
            c.n_ctx_train
        } else {
            cfg.n_ctx.min(c.n_ctx_train)
        };
        if cfg.max_seqs == 0 || cfg.max_requests == 0 {
            return Err(invalid(
                "max_seqs",
                "max_seqs and max_requests must be at least 1",
            ));
        }
        if cfg.max_batch_tokens < cfg.max_seqs {
            return Err(invalid(
                "max_batch_tokens",
                format!(
                    "{} is below max_seqs ({}): every running sequence needs a token per step",
                    cfg.max_batch_tokens, cfg.max_seqs
                ),
            ));
        }
        let r = Resources::new(
            &model,
            cfg.kv_budget,
            cfg.block_size,
            n_ctx,
            cfg.max_seqs,
            cfg.max_batch_tokens,
            cfg.max_seqs,
            cfg.threads,
            backend,
            cfg.cuda_weights,
        )?;
        let max_total_seqs = cfg.max_requests.max(cfg.max_seqs) * 2;
        Ok(Engine {
            tokenizer: r.tokenizer,
            backend: r.backend,
            pool: r.pool,
            scratch: r.scratch,
            n_ctx,
            requests: (0..cfg.max_requests).map(|_| None).collect(),
            free_requests: (0..cfg.max_requests as u32).rev().collect(),
            request_generation: 0,
            seqs: (0..max_total_seqs).map(|_| None).collect(),
            free_seqs: (0..max_total_seqs as u32).rev().collect(),
            waiting: VecDeque::with_capacity(max_total_seqs),
            running: Vec::with_capacity(cfg.max_seqs),
            scheduled: Vec::with_capacity(cfg.max_seqs),
            batch: Vec::with_capacity(cfg.max_batch_tokens),
            admissions: 0,
            metrics: Metrics::default(),
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

    /// Bytes of the KV arena.
    pub fn arena_bytes(&self) -> usize {
        self.backend.arena_bytes()
    }

    /// Whether any request is waiting or running.
    pub fn has_work(&self) -> bool {
        !self.running.is_empty() || !self.waiting.is_empty()
    }

    /// Tokenize `prompt` (special tokens parsed, BOS per the model) and submit it.
    pub fn submit_text(&mut self, prompt: &str, params: &RequestParams) -> Result<RequestId> {
        // Refused from its byte length alone when it cannot fit (no time or memory spent
        // tokenizing a huge text).
        let ids = crate::session::encode_prompt(&self.tokenizer, prompt, self.n_ctx)?;
        self.submit(&ids, params)
    }

    /// Queue a request. Refused (nothing queued) when it can never fit: prompt + `max_tokens`
    /// beyond the context, or more blocks than the whole arena; or when the request table is
    /// full.
    pub fn submit(&mut self, prompt: &[u32], params: &RequestParams) -> Result<RequestId> {
        let n_vocab = self.model.config.n_vocab;
        if prompt.is_empty() {
            return Err(invalid("prompt", "the prompt has no tokens"));
        }
        if let Some(&t) = prompt.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(invalid(
                "prompt",
                format!("token id {t} is outside the vocabulary ({n_vocab})"),
            ));
        }
        if params.n == 0 || params.n > self.cfg.max_seqs {
            return Err(invalid(
                "n",
                format!("{} (must be 1..={})", params.n, self.cfg.max_seqs),
            ));
        }
        if params.max_tokens == 0 {
            return Err(invalid("max_tokens", "must be at least 1"));
        }
        params.sampling.validate()?;
        let total = prompt.len() + params.max_tokens;
        if total > self.n_ctx {
            return Err(Error::ContextFull {
                n_ctx: self.n_ctx,
                requested: total,
            });
        }
        let bs = self.cfg.block_size;
        let need =
            total.div_ceil(bs) + (params.n - 1) * params.max_tokens.div_ceil(bs).saturating_add(1);
        if need > self.pool.num_blocks() {
            return Err(Error::KvCacheFull {
                total_blocks: self.pool.num_blocks(),
                needed_blocks: need,
            });
        }
        if self.free_seqs.len() < params.n {
            return Err(invalid(
                "request",
                "too many sequences in flight: release finished requests first",
            ));
        }
        let Some(slot) = self.free_requests.pop() else {
            return Err(invalid(
                "request",
                format!(
                    "{} requests are held: release finished requests first",
                    self.cfg.max_requests
                ),
            ));
        };
        self.request_generation = self.request_generation.wrapping_add(1);
        let mut seq_slots = Vec::with_capacity(params.n);
        for i in 0..params.n {
            let sampling = SamplingParams {
                seed: params.sampling.seed.wrapping_add(i as u64),
                ..params.sampling.clone()
            };
            let seq = match self.new_seq(slot, prompt, params, sampling) {
                Ok(s) => s,
                Err(e) => {
                    for s in seq_slots.drain(..) {
                        self.seqs[s as usize] = None;
                        self.free_seqs.push(s);
                    }
                    self.free_requests.push(slot);
                    return Err(e);
                }
            };
            let s = self
                .free_seqs
                .pop()
                .expect("free sequence count checked above");
            self.seqs[s as usize] = Some(seq);
            seq_slots.push(s);
        }
        // Sequence 0 computes the prompt; the others fork from it.
        self.waiting.push_back(seq_slots[0]);
        for &s in &seq_slots[1..] {
            self.seq_mut(s).state = SeqState::ForkPending;
        }
        self.requests[slot as usize] = Some(Request {
            generation: self.request_generation,
            seqs: seq_slots,
            stop_ids: params.stop_ids.clone(),
            ignore_eos: params.ignore_eos,
            fork_logits: if params.n > 1 {
                vec![0.0; n_vocab]
            } else {
                Vec::new()
            },
            fork_work: if params.n > 1 {
                vec![0.0; n_vocab]
            } else {
                Vec::new()
            },
        });
        Ok(RequestId {
            slot,
            generation: self.request_generation,
        })
    }

    fn new_seq(
        &self,
        req: u32,
        prompt: &[u32],
        params: &RequestParams,
        sampling: SamplingParams,
    ) -> Result<Seq> {
        let total = prompt.len() + params.max_tokens;
        let mut tokens = Vec::with_capacity(total);
        tokens.extend_from_slice(prompt);
        let max_blocks = total.div_ceil(self.cfg.block_size);
        let piece = self.tokenizer.max_piece_len().max(4);
        Ok(Seq {
            req,
            tokens,
            n_prompt: prompt.len(),
            max_tokens: params.max_tokens,
            num_computed: 0,
            table: BlockTable::with_capacity(max_blocks),
            block_hashes: Vec::with_capacity(max_blocks),
            admitted_at: 0,
            state: SeqState::Waiting,
            sampler: Sampler::new(sampling, self.model.config.n_vocab)?,
            decoder: StreamDecoder::new(&self.tokenizer),
            stops: StopMatcher::new(&params.stop),
            out: SeqOutput {
                ids: Vec::with_capacity(params.max_tokens),
                text: String::with_capacity(params.max_tokens * piece + 8),
                piece_ends: Vec::with_capacity(params.max_tokens),
                finish: None,
            },
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
            self.seqs[s as usize] = None;
            self.free_seqs.push(s);
        }
        self.free_requests.push(id.slot);
        Ok(())
    }

    /// Return a sequence's KV blocks to the pool (full ones stay in the prefix cache) and mark
    /// none of its tokens computed; used when it finishes, is preempted, or cannot be admitted.
    fn drop_kv(&mut self, slot: u32) -> &mut Seq {
        let pool = &mut self.pool;
        let seq = self.seqs[slot as usize].as_mut().expect("live sequence");
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
        let seq = self.drop_kv(slot);
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
            for (i, b) in seq.table.blocks().iter().enumerate() {
                let f = seq.num_computed.saturating_sub(i * bs).min(bs);
                fill[b.index()] = fill[b.index()].max(f);
            }
        }
        let stored: usize = fill.iter().sum();
        m.utilization = if m.blocks_used == 0 {
            1.0
        } else {
            stored as f64 / (m.blocks_used * bs) as f64
        };
        m
    }
}

mod step;

// The C API steps an engine on a background thread: every backend must be `Send`.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<Engine>();
};

#[cfg(test)]
mod tests;
