//! A loaded model with everything needed to run it: tokenizer, worker threads, the KV arena and
//! scratch memory, all allocated here, once. Drives single sequences from prompt to finish
//! (generation, perplexity); the batching engine drives many through the same pieces.

use std::time::Instant;

use crate::backend::{Backend, BackendKind, BackendSizes, CudaWeights};
use crate::error::{Error, Result};
use crate::kv::{BlockId, BlockPool, BlockTable, KvLayout};
use crate::model::{BatchToken, Model, Scratch};
use crate::sampler::{Sampler, SamplingParams};
use crate::stop::StopMatcher;
use crate::tokenizer::{StreamDecoder, Tokenizer};

/// How much KV cache to allocate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvBudget {
    /// Exactly this many blocks.
    Blocks(usize),
    /// As many blocks as fit in this many bytes.
    Bytes(usize),
    /// Enough blocks for one sequence of the full context.
    FullContext,
}

/// Start-up parameters of a [`Session`].
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Context length in tokens (0: the model's training context).
    pub n_ctx: usize,
    /// KV arena size.
    pub kv_budget: KvBudget,
    /// Token slots per KV block.
    pub block_size: usize,
    /// Most tokens per forward pass (longer prompts are evaluated in chunks).
    pub max_batch_tokens: usize,
    /// Most logit rows per forward pass.
    pub max_logits: usize,
    /// Worker threads (0: the number of physical cores).
    pub threads: usize,
    /// Where the CUDA backend keeps the weights (ignored by the CPU backend).
    pub cuda_weights: CudaWeights,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            n_ctx: 4096,
            kv_budget: KvBudget::FullContext,
            block_size: 16,
            max_batch_tokens: 512,
            max_logits: 1,
            threads: 0,
            cuda_weights: CudaWeights::Upload,
        }
    }
}

/// Number of physical cores (falls back to the logical count).
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    // /proc/cpuinfo lists "core id" per logical CPU; count distinct (physical id, core id).
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return logical;
    };
    let mut cores = std::collections::HashSet::new();
    let mut phys = "";
    for line in info.lines() {
        if let Some(v) = line.strip_prefix("physical id") {
            phys = v.trim_start_matches([' ', '\t', ':']);
        } else if let Some(v) = line.strip_prefix("core id") {
            cores.insert((
                phys.to_string(),
                v.trim_start_matches([' ', '\t', ':']).to_string(),
            ));
        }
    }
    if cores.is_empty() {
        logical
    } else {
        cores.len().min(logical)
    }
}

/// The worker threads a request for `requested` gets: 0 means the physical cores; more threads
/// than the machine runs at once (`available_parallelism`) are capped to it, because spinning
/// workers that outnumber the cores make every parallel region wait for a descheduled thread
/// (measured: `--threads 1000` on 2 cores gave no token in 60 s).
pub fn effective_threads(requested: usize) -> usize {
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    if requested == 0 {
        physical_cores()
    } else {
        requested.min(available)
    }
}

/// One sequence's tokens and KV blocks.
#[derive(Debug)]
pub struct Sequence {
    /// All tokens: prompt, then generated.
    pub tokens: Vec<u32>,
    /// Tokens whose K/V are in the cache.
    pub n_computed: usize,
    /// Blocks holding them.
    pub table: BlockTable,
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced an end-of-generation token.
    Eos,
    /// `max_tokens` were generated.
    Length,
    /// A stop string or stop token was produced.
    Stop,
    /// The caller cancelled the request.
    Cancelled,
    /// The request failed (its error is reported separately).
    Error,
}

impl FinishReason {
    /// Lower-case name, as printed in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Eos => "eos",
            FinishReason::Length => "length",
            FinishReason::Stop => "stop",
            FinishReason::Cancelled => "cancelled",
            FinishReason::Error => "error",
        }
    }
}

/// What to generate.
#[derive(Clone, Debug, Default)]
pub struct GenerateParams {
    /// Sampler settings.
    pub sampling: SamplingParams,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Stop strings (not included in the output text).
    pub stop: Vec<String>,
    /// Extra token ids that stop generation (end-of-generation tokens always do).
    pub stop_ids: Vec<u32>,
    /// Keep generating past end-of-generation tokens (for reference comparisons).
    pub ignore_eos: bool,
}

/// The result of [`Session::generate`].
#[derive(Clone, Debug)]
pub struct Generation {
    /// Generated token ids (the EOS or stop token included when one ended generation).
    pub ids: Vec<u32>,
    /// Generated text (stop string and end-of-generation token excluded).
    pub text: String,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Prompt tokens per second.
    pub prefill_tok_s: f64,
    /// Generated tokens per second (after the first).
    pub decode_tok_s: f64,
}

/// What running a model needs besides the model, allocated once at start-up: the tokenizer,
/// the backend (worker threads or a GPU) with its KV arena, the block pool, and the forward
/// pass's scratch (on the host: it receives the logits whichever backend computes them).
pub(crate) struct Resources {
    pub tokenizer: Tokenizer,
    pub backend: Backend,
    pub pool: BlockPool,
    pub scratch: Scratch,
}

impl Resources {
    /// `max_seqs` sizes a [`KvBudget::FullContext`] arena (one full context per sequence).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: &Model,
        kv_budget: KvBudget,
        block_size: usize,
        n_ctx: usize,
        max_seqs: usize,
        max_batch_tokens: usize,
        max_logits: usize,
        threads: usize,
        backend: BackendKind,
        cuda_weights: CudaWeights,
    ) -> Result<Resources> {
        let c = &model.config;
        if block_size == 0 || block_size > 4096 {
            return Err(Error::InvalidParam {
                name: "block_size",
                what: format!("{block_size} (must be 1..=4096)"),
            });
        }
        let layout = KvLayout {
            n_layer: c.n_layer,
            n_kv_head: c.n_head_kv,
            head_dim: c.head_dim,
            block_size,
        };
        // One extra block: block 0 is the pool's null block, never handed out. Checked: a
        // count near `usize::MAX` must be reported as too large, not wrap to "no block".
        let overflow = |what: String| Error::InvalidParam {
            name: "kv_blocks",
            what: format!("{what} overflow the address space: give a smaller KV budget"),
        };
        let n_blocks = match kv_budget {
            KvBudget::Blocks(n) => n
                .checked_add(1)
                .ok_or_else(|| overflow(format!("{n} blocks")))?,
            KvBudget::Bytes(b) => 1 + layout.blocks_for_bytes(b).saturating_sub(1),
            KvBudget::FullContext => n_ctx
                .div_ceil(block_size)
                .checked_mul(max_seqs)
                .and_then(|n| n.checked_add(1))
                .ok_or_else(|| {
                    overflow(format!(
                        "{max_seqs} full contexts of {n_ctx} tokens (one per sequence)"
                    ))
                })?,
        };
        // Block ids are `u32` (the pool asserts it): refuse more before allocating the arena.
        if n_blocks > u32::MAX as usize {
            return Err(Error::InvalidParam {
                name: "kv_blocks",
                what: format!(
                    "{} blocks (at most {}: block ids are 32-bit): give a smaller KV budget",
                    n_blocks - 1,
                    u32::MAX - 1
                ),
            });
        }
        if n_blocks < 2 {
            return Err(Error::InvalidParam {
                name: "kv_budget",
                what: "the KV budget does not hold a single block".into(),
            });
        }
        layout
            .block_bytes()
            .checked_mul(n_blocks)
            .filter(|&b| b <= isize::MAX as usize)
            .ok_or_else(|| {
                overflow(format!(
                    "{} blocks of {} bytes",
                    n_blocks - 1,
                    layout.block_bytes()
                ))
            })?;
        // A bad EMBER_CPU request is reported at start-up, never a silent fallback.
        ember_kernels::dispatch::select().map_err(|what| Error::InvalidParam {
            name: "EMBER_CPU",
            what,
        })?;
        let tokenizer = crate::gguf::tokenizer_from_gguf(&model.file)?;
        let threads = effective_threads(threads);
        // The arena first: it is the large allocation a budget can make fail, and it fails
        // cleanly before the scratch (RoPE tables of the whole context) is computed.
        let backend = Backend::new(
            backend,
            model,
            BackendSizes {
                layout,
                n_blocks,
                max_tokens: max_batch_tokens,
                max_logits,
                n_ctx,
                threads,
                cuda_weights,
            },
        )?;
        // RoPE tables only for positions a sequence can reach: its blocks come from the arena.
        let reachable = (n_blocks - 1).saturating_mul(block_size);
        let scratch = Scratch::new(model, max_batch_tokens, max_logits, n_ctx.min(reachable))?;
        Ok(Resources {
            tokenizer,
            backend,
            pool: BlockPool::new(n_blocks),
            scratch,
        })
    }
}

/// A model ready to run.
pub struct Session {
    // Declared (so dropped) before the model: with `CudaWeights::Mapped` it holds a device
    // mapping of the model's file.
    backend: Backend,
    /// The model.
    pub model: Model,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    pool: BlockPool,
    scratch: Scratch,
    batch: Vec<BatchToken>,
    n_ctx: usize,
    /// Milliseconds spent loading (set by the caller that timed it, if any).
    pub load_ms: f64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("model", &self.model)
            .field("backend", &self.backend)
            .finish()
    }
}

impl Session {
    /// Build the tokenizer, start the CPU workers and allocate the KV arena and scratch memory.
    pub fn new(model: Model, cfg: &SessionConfig) -> Result<Session> {
        Self::with_backend(model, cfg, BackendKind::Cpu)
    }

    /// [`Session::new`] on the chosen backend (the KV arena lives where the backend computes).
    pub fn with_backend(
        model: Model,
        cfg: &SessionConfig,
        backend: BackendKind,
    ) -> Result<Session> {
        let c = &model.config;
        let n_ctx = if cfg.n_ctx == 0 {
            c.n_ctx_train
        } else {
            cfg.n_ctx
        };
        let r = Resources::new(
            &model,
            cfg.kv_budget,
            cfg.block_size,
            n_ctx,
            1,
            cfg.max_batch_tokens,
            cfg.max_logits,
            cfg.threads,
            backend,
            cfg.cuda_weights,
        )?;
        Ok(Session {
            tokenizer: r.tokenizer,
            backend: r.backend,
            pool: r.pool,
            scratch: r.scratch,
            batch: Vec::with_capacity(cfg.max_batch_tokens),
            n_ctx,
            model,
            load_ms: 0.0,
        })
    }

    /// Context length in tokens.
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

    /// See [`Backend::set_cuda_graph`] (for comparisons).
    #[doc(hidden)]
    pub fn set_cuda_graph(&mut self, on: bool) {
        self.backend.set_cuda_graph(on);
    }

    /// Bytes of the KV arena.
    pub fn arena_bytes(&self) -> usize {
        self.backend.arena_bytes()
    }

    /// Blocks in the KV arena.
    pub fn arena_blocks(&self) -> usize {
        self.backend.n_blocks()
    }

    /// Free blocks in the KV arena.
    pub fn free_blocks(&self) -> usize {
        self.pool.num_free()
    }

    /// Bytes of scratch memory.
    pub fn scratch_bytes(&self) -> usize {
        self.scratch.bytes()
    }

    /// A new, empty sequence. Its block table is sized for the whole context up front.
    pub fn new_sequence(&self) -> Sequence {
        Sequence {
            tokens: Vec::with_capacity(self.n_ctx),
            n_computed: 0,
            table: BlockTable::with_capacity(self.n_ctx.div_ceil(self.backend.layout().block_size)),
        }
    }

    /// Return a sequence's blocks to the arena.
    pub fn release(&mut self, seq: &mut Sequence) {
        seq.table.release(&mut self.pool);
        seq.n_computed = 0;
    }

    /// Evaluate every token of `seq` not yet in the cache, in chunks of at most
    /// `max_batch_tokens`. `want(pos)` says which positions need logits;
    /// `on_logits(pos, logits, tokens)` receives them in position order, with the sequence's
    /// tokens (the sampling history).
    pub fn eval(
        &mut self,
        seq: &mut Sequence,
        want: impl Fn(usize) -> bool,
        mut on_logits: impl FnMut(usize, &mut [f32], &[u32]),
    ) -> Result<()> {
        let n = seq.tokens.len();
        if n > self.n_ctx {
            return Err(Error::ContextFull {
                n_ctx: self.n_ctx,
                requested: n,
            });
        }
        let bs = self.backend.layout().block_size;
        seq.table.ensure_capacity(&mut self.pool, n, bs)?;
        let n_vocab = self.model.config.n_vocab;
        while seq.n_computed < n {
            let start = seq.n_computed;
            // Fill a batch up to the token budget and the logit-row budget.
            self.batch.clear();
            let mut n_logits = 0;
            for pos in start..n {
                if self.batch.len() == self.scratch.max_tokens() {
                    break;
                }
                let logits = want(pos);
                if logits && n_logits == self.scratch.max_logits() {
                    break;
                }
                n_logits += usize::from(logits);
                self.batch.push(BatchToken {
                    token: seq.tokens[pos],
                    pos,
                    seq: 0,
                    logits,
                });
            }
            let tables: [&[BlockId]; 1] = [seq.table.blocks()];
            self.backend
                .forward(&self.model, &self.batch, &tables[..], &mut self.scratch)?;
            let mut row = 0;
            for b in &self.batch {
                if b.logits {
                    on_logits(b.pos, self.scratch.logits_mut(row, n_vocab), &seq.tokens);
                    row += 1;
                }
            }
            seq.n_computed += self.batch.len();
        }
        Ok(())
    }

    /// Tokenize `prompt` (special tokens parsed, BOS per the model) and generate.
    ///
    /// A prompt whose byte length alone shows it cannot fit the context is refused before it
    /// is tokenized ([`Error::ContextFull`] with the fewest tokens it could encode to), so a
    /// huge text costs neither the time nor the memory of tokenizing it.
    pub fn generate_text(
        &mut self,
        prompt: &str,
        params: &GenerateParams,
        mut on_piece: impl FnMut(&str),
    ) -> Result<(Vec<u32>, Generation)> {
        self.generate_text_until(prompt, params, |p| {
            on_piece(p);
            true
        })
    }

    /// [`Session::generate_text`] with a callback that can stop generation: when `on_piece`
    /// returns false (its reader went away, say), generation ends at once with
    /// [`FinishReason::Cancelled`].
    pub fn generate_text_until(
        &mut self,
        prompt: &str,
        params: &GenerateParams,
        on_piece: impl FnMut(&str) -> bool,
    ) -> Result<(Vec<u32>, Generation)> {
        let ids = encode_prompt(&self.tokenizer, prompt, self.n_ctx)?;
        let g = self.generate_until(&ids, params, on_piece)?;
        Ok((ids, g))
    }

    /// Generate a continuation of `prompt_ids`, streaming complete UTF-8 text pieces to
    /// `on_piece`. The sequence's blocks are released at the end.
    pub fn generate(
        &mut self,
        prompt_ids: &[u32],
        params: &GenerateParams,
        mut on_piece: impl FnMut(&str),
    ) -> Result<Generation> {
        self.generate_until(prompt_ids, params, |p| {
            on_piece(p);
            true
        })
    }

    /// [`Session::generate`] with a callback that can stop generation (see
    /// [`Session::generate_text_until`]).
    pub fn generate_until(
        &mut self,
        prompt_ids: &[u32],
        params: &GenerateParams,
        mut on_piece: impl FnMut(&str) -> bool,
    ) -> Result<Generation> {
        if prompt_ids.is_empty() {
            return Err(Error::InvalidParam {
                name: "prompt",
                what: "the prompt has no tokens (nothing to continue)".into(),
            });
        }
        let n_vocab = self.model.config.n_vocab;
        let mut sampler = Sampler::new(params.sampling.clone(), n_vocab)?;
        // Checked: `max_tokens` is the caller's number (`-n 18446744073709551615`).
        let total = prompt_ids.len().saturating_add(params.max_tokens);
        if total > self.n_ctx {
            return Err(Error::ContextFull {
                n_ctx: self.n_ctx,
                requested: total,
            });
        }
        let mut seq = self.new_sequence();
        seq.tokens.extend_from_slice(prompt_ids);
        let result = self.generate_seq(&mut seq, &mut sampler, params, &mut on_piece);
        self.release(&mut seq);
        result
    }

    fn generate_seq(
        &mut self,
        seq: &mut Sequence,
        sampler: &mut Sampler,
        params: &GenerateParams,
        on_piece: &mut impl FnMut(&str) -> bool,
    ) -> Result<Generation> {
        let n_prompt = seq.tokens.len();
        let mut stops = StopMatcher::new(&params.stop);
        let mut decoder = StreamDecoder::new(&self.tokenizer);
        let mut text = String::new();
        // At most the context (checked by the caller): never a capacity from the caller's number.
        let mut ids = Vec::with_capacity(params.max_tokens.min(self.n_ctx));
        let mut finish = FinishReason::Length;
        let t0 = Instant::now();
        let mut t_first = None;
        while ids.len() < params.max_tokens {
            let last = seq.tokens.len() - 1;
            let mut picked = None;
            let mut nan_logits = false;
            self.eval(
                seq,
                |p| p == last,
                |_, logits, hist| {
                    nan_logits = logits.iter().any(|l| l.is_nan());
                    picked = Some(sampler.sample(logits, hist));
                },
            )?;
            let next = picked.expect("eval computes logits for the last position");
            if nan_logits {
                return Err(Error::NonFinite(format!(
                    "the logits after {} tokens hold NaN (are the model's weights finite? \
                     `ember info --check-tensors` checks them)",
                    seq.tokens.len()
                )));
            }
            if t_first.is_none() {
                t_first = Some(Instant::now());
            }
            ids.push(next);
            seq.tokens.push(next);
            let eog = self.tokenizer.is_eog(next) && !params.ignore_eos;
            if eog {
                finish = FinishReason::Eos;
                break;
            }
            if params.stop_ids.contains(&next) {
                finish = FinishReason::Stop;
                break;
            }
            let piece = decoder.push(&self.tokenizer, next);
            let (safe, stopped) = stops.push(piece);
            if !safe.is_empty() {
                text.push_str(safe);
                if !on_piece(safe) {
                    finish = FinishReason::Cancelled;
                    break;
                }
            }
            if stopped {
                finish = FinishReason::Stop;
                break;
            }
        }
        if !matches!(finish, FinishReason::Stop | FinishReason::Cancelled) {
            let tail = decoder.flush();
            let (safe, _) = stops.push(tail);
            let safe = safe.to_string();
            let rest = stops.finish().to_string();
            for s in [safe, rest] {
                if !s.is_empty() {
                    text.push_str(&s);
                    if !on_piece(&s) {
                        finish = FinishReason::Cancelled;
                        break;
                    }
                }
            }
        }
        let t_end = Instant::now();
        let t_first = t_first.unwrap_or(t_end);
        let prefill_s = (t_first - t0).as_secs_f64();
        let decode_s = (t_end - t_first).as_secs_f64();
        Ok(Generation {
            finish_reason: finish,
            prefill_tok_s: n_prompt as f64 / prefill_s.max(1e-9),
            decode_tok_s: if ids.len() > 1 {
                (ids.len() - 1) as f64 / decode_s.max(1e-9)
            } else {
                0.0
            },
            ids,
            text,
        })
    }
}

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
