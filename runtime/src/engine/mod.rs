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
    /// Most sequences running at once (1..=[`MAX_SEQS`]).
    pub max_seqs: usize,
    /// Most tokens computed per step (`max_seqs..=`[`MAX_BATCH_TOKENS`]; lowered to
    /// `n_ctx × max_seqs` when above it).
    pub max_batch_tokens: usize,
    /// Most requests held at once (waiting, running, or finished but not yet released;
    /// 1..=[`MAX_REQUESTS`]).
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

/// Most requests an engine holds at once (`EngineConfig::max_requests`). Request and sequence
/// slots are `u32` and every held request costs a slab entry whether used or not; a million
/// requests in flight is far beyond what one edge device serves, and the bound keeps every
/// slab size (at most `2 × MAX_REQUESTS` sequence slots) far from overflowing anything.
pub const MAX_REQUESTS: usize = 1 << 20;

/// Most sequences running at once (`EngineConfig::max_seqs`). Each one takes a row of
/// `n_vocab` logits in the forward pass's scratch (a 49k-token vocabulary: 192 KiB a row) and
/// at least one KV block; 65 536 of them is past any arena an edge device holds.
pub const MAX_SEQS: usize = 1 << 16;

/// Most tokens per step (`EngineConfig::max_batch_tokens`): the forward pass's scratch holds
/// every activation of that many tokens, about 30 KiB a token for the smallest supported model,
/// so 2^20 tokens already ask for 32 GiB. A budget above `n_ctx × max_seqs` is lowered to it
/// (a step never has more tokens to compute than its running sequences hold).
pub const MAX_BATCH_TOKENS: usize = 1 << 20;

/// Checks the sizes of `cfg` before anything is allocated from them. Every bound is stated in
/// the message.
fn check_limits(cfg: &EngineConfig) -> Result<()> {
    if cfg.max_seqs == 0 || cfg.max_seqs > MAX_SEQS {
        return Err(invalid(
            "max_seqs",
            format!("{} (must be 1..={MAX_SEQS})", cfg.max_seqs),
        ));
    }
    if cfg.max_requests == 0 || cfg.max_requests > MAX_REQUESTS {
        return Err(invalid(
            "max_requests",
            format!("{} (must be 1..={MAX_REQUESTS})", cfg.max_requests),
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
    if cfg.max_batch_tokens > MAX_BATCH_TOKENS {
        return Err(invalid(
            "max_batch_tokens",
            format!(
                "{} (must be max_seqs..={MAX_BATCH_TOKENS}: the forward pass's scratch is sized \
                 for this many tokens)",
                cfg.max_batch_tokens
            ),
        ));
    }
    Ok(())
}

fn alloc_failed(name: &'static str, n: usize) -> Error {
    invalid(
        name,
        format!("cannot allocate {n} entries: lower {name} or free memory"),
    )
}

/// An empty `Vec` with room for exactly `n` elements, allocated fallibly: sizes come from the
/// caller's configuration, and a size the machine cannot hold is an error, not an abort.
fn slab<T>(n: usize, name: &'static str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| alloc_failed(name, n))?;
    Ok(v)
}

fn reserve_failed(max_tokens: usize) -> Error {
    invalid(
        "max_tokens",
        format!("cannot allocate the output of {max_tokens} tokens: ask for fewer"),
    )
}

/// An empty `Vec` with room for `n` elements of a sequence (`n` bounded by the context).
fn reserved<T>(n: usize) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| reserve_failed(n))?;
    Ok(v)
}

/// `n` as a `u32` slot count (bounded by [`MAX_REQUESTS`] before this is called).
fn slot_u32(n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| invalid("max_requests", format!("{n} slots exceed u32")))
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
        check_limits(&cfg)?;
        // Lossless: a step never has more tokens to compute than its sequences can hold.
        let mut cfg = cfg;
        cfg.max_batch_tokens = cfg.max_batch_tokens.min(n_ctx.saturating_mul(cfg.max_seqs));
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
            tokenizer: r.tokenizer,
            backend: r.backend,
            pool: r.pool,
            scratch: r.scratch,
            n_ctx,
            requests,
            free_requests,
            request_generation: 0,
            seqs,
            free_seqs,
            waiting,
            running: slab(cfg.max_seqs, "max_seqs")?,
            scheduled: slab(cfg.max_seqs, "max_seqs")?,
            batch: slab(cfg.max_batch_tokens, "max_batch_tokens")?,
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

    /// Queue a request. Refused (nothing queued) when it can never fit: a prompt that leaves no
    /// room in the context ([`Error::PromptTooLong`]), prompt + `max_tokens` beyond the context
    /// ([`Error::ContextFull`]), or more blocks than the whole arena holds
    /// ([`Error::KvCacheFull`] with `needed_blocks > total_blocks`); or when the request table is
    /// full.
    ///
    /// `max_tokens` is taken literally, whatever its size (checked arithmetic: `usize::MAX` is
    /// [`Error::ContextFull`], as a session's `generate` says it): prompt + `max_tokens` must
    /// fit the context.
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
        let max_tokens = self.max_tokens_for(prompt.len(), params.max_tokens)?;
        // Both at most `n_ctx` now: nothing below can overflow (`n <= max_seqs`).
        let total = prompt.len() + max_tokens;
        let bs = self.cfg.block_size;
        let need = total.div_ceil(bs).saturating_add(
            (params.n - 1).saturating_mul(max_tokens.div_ceil(bs).saturating_add(1)),
        );
        if need > self.pool.num_blocks() {
            // Reported as "can never fit this arena" (needed > total), even when it is empty.
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
            let seq = match self.new_seq(slot, prompt, params, max_tokens, sampling) {
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

    /// The tokens a request of a `n_prompt`-token prompt may generate when it asks for
    /// `max_tokens` (see [`Engine::submit`]). Checked arithmetic: `max_tokens` is the caller's
    /// and may be anything up to `usize::MAX`.
    fn max_tokens_for(&self, n_prompt: usize, max_tokens: usize) -> Result<usize> {
        if n_prompt >= self.n_ctx {
            return Err(Error::PromptTooLong {
                n_prompt,
                n_ctx: self.n_ctx,
            });
        }
        if max_tokens > self.n_ctx - n_prompt {
            return Err(Error::ContextFull {
                n_ctx: self.n_ctx,
                requested: n_prompt.saturating_add(max_tokens),
            });
        }
        Ok(max_tokens)
    }

    /// A new sequence; `max_tokens` is the checked count of [`Engine::max_tokens_for`], so
    /// every reservation here is bounded by the context.
    fn new_seq(
        &self,
        req: u32,
        prompt: &[u32],
        params: &RequestParams,
        max_tokens: usize,
        sampling: SamplingParams,
    ) -> Result<Seq> {
        let total = prompt.len() + max_tokens;
        let mut tokens = reserved(total)?;
        tokens.extend_from_slice(prompt);
        let max_blocks = total.div_ceil(self.cfg.block_size);
        let piece = self.tokenizer.max_piece_len().max(4);
        let mut text = String::new();
        text.try_reserve_exact(max_tokens.saturating_mul(piece).saturating_add(8))
            .map_err(|_| reserve_failed(max_tokens))?;
        Ok(Seq {
            req,
            tokens,
            n_prompt: prompt.len(),
            max_tokens,
            num_computed: 0,
            table: BlockTable::with_capacity(max_blocks),
            block_hashes: reserved(max_blocks)?,
            admitted_at: 0,
            state: SeqState::Waiting,
            sampler: Sampler::new(sampling, self.model.config.n_vocab)?,
            decoder: StreamDecoder::new(&self.tokenizer),
            stops: StopMatcher::new(&params.stop),
            out: SeqOutput {
                ids: reserved(max_tokens)?,
                text,
                piece_ends: reserved(max_tokens)?,
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
