//! A convenience over an [`Engine`] with one sequence: what the CLI's `generate`, `chat`,
//! `perplexity` and `bench` use, and what reference tests drive one step at a time.
//!
//! There is one driver, the engine; a session adds nothing to how tokens are computed,
//! sampled or emitted. [`Session::generate`] submits one request and steps the engine until it
//! finishes; [`Session::eval`] is a scoring request (logits at chosen positions, no sampling)
//! that holds its KV cache between calls, so a caller can append a token and evaluate again
//! without recomputing the context. The vocabulary ([`RequestParams`], [`SeqOutput`],
//! [`FinishReason`], [`KvBudget`]) is the engine's, re-exported here.
//!
//! The NaN rule is the engine's too: a NaN logits row ends the request with
//! [`FinishReason::Error`] and [`Error::NonFinite`] as its cause; the session's methods return
//! a `Result` for their one request, so they return that cause as `Err`.

use crate::backend::{Backend, BackendKind, CudaWeights};
use crate::engine::{Engine, EngineConfig, RequestId};
use crate::error::{Error, Result};
use crate::kv::KvType;
use crate::model::Model;
use crate::tokenizer::Tokenizer;

pub use crate::engine::{
    effective_threads, physical_cores, FinishReason, KvBudget, RequestParams, SeqOutput,
};
pub use conversation::{
    fit_chat, ChatFormat, ChatPrompt, ContextPolicy, Conversation, Turn, TurnPrompt,
};

/// What to generate: the engine's [`RequestParams`] (one parameters type everywhere).
pub type GenerateParams = RequestParams;

/// The result of [`Session::generate`]: the engine's [`SeqOutput`] (one output type
/// everywhere).
pub type Generation = SeqOutput;

/// Start-up parameters of a [`Session`].
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Context length in tokens (0: the model's training context; capped at it).
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
    /// How the KV arena stores keys and values (see [`EngineConfig::kv_type`]).
    pub kv_type: KvType,
    /// Keep every KV block of sliding-window layers (see [`EngineConfig::swa_full`]).
    pub swa_full: bool,
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
            kv_type: KvType::F16,
            swa_full: false,
        }
    }
}

impl SessionConfig {
    /// The engine configuration of a session: one sequence, one request, no prefix cache
    /// (every evaluation computes what it is given, so reference comparisons see exactly the
    /// batches they ask for; [`Session::set_prefix_caching`] turns it on).
    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            n_ctx: self.n_ctx,
            kv_budget: self.kv_budget,
            block_size: self.block_size,
            max_seqs: 1,
            max_batch_tokens: self.max_batch_tokens.max(1),
            max_requests: 1,
            threads: self.threads,
            prefix_caching: false,
            cuda_weights: self.cuda_weights,
            kv_type: self.kv_type,
            swa_full: self.swa_full,
        }
    }
}

/// One sequence evaluated through [`Session::eval`]: the caller owns its tokens and appends to
/// them between evaluations; the engine holds its KV cache.
#[derive(Debug)]
pub struct Sequence {
    /// All tokens: prompt, then whatever the caller appended. Tokens already evaluated must
    /// not change until [`Session::release`].
    pub tokens: Vec<u32>,
    n_computed: usize,
    request: Option<RequestId>,
}

impl Sequence {
    /// Tokens whose K/V are in the cache.
    pub fn n_computed(&self) -> usize {
        self.n_computed
    }
}

/// A model ready to run: an [`Engine`] with one sequence.
pub struct Session {
    engine: Engine,
    /// Milliseconds spent loading (set by the caller that timed it, if any).
    pub load_ms: f64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("engine", &self.engine)
            .finish()
    }
}

fn invalid(name: &'static str, what: impl Into<String>) -> Error {
    Error::InvalidParam {
        name,
        what: what.into(),
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
        let engine = Engine::open(model, cfg.engine_config(), backend, cfg.max_logits.max(1))?;
        Ok(Session {
            engine,
            load_ms: 0.0,
        })
    }

    /// The engine underneath.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The engine underneath, mutably (to submit requests of its own vocabulary).
    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// Reuse the KV blocks of a cached prompt prefix (off by default): a chat turn then
    /// computes only what the previous turns did not.
    pub fn set_prefix_caching(&mut self, on: bool) {
        self.engine.set_prefix_caching(on);
    }

    /// The model.
    pub fn model(&self) -> &Model {
        self.engine.model()
    }

    /// Its tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        self.engine.tokenizer()
    }

    /// Context length in tokens.
    pub fn n_ctx(&self) -> usize {
        self.engine.n_ctx()
    }

    /// Worker threads (0 when a GPU computes).
    pub fn threads(&self) -> usize {
        self.engine.threads()
    }

    /// The backend.
    pub fn backend(&self) -> &Backend {
        self.engine.backend()
    }

    /// See [`Backend::set_cuda_graph`] (for comparisons).
    #[doc(hidden)]
    pub fn set_cuda_graph(&mut self, on: bool) {
        self.engine.set_cuda_graph(on);
    }

    /// Bytes of the KV arena.
    pub fn arena_bytes(&self) -> usize {
        self.engine.arena_bytes()
    }

    /// Blocks in the KV arena.
    pub fn arena_blocks(&self) -> usize {
        self.engine.arena_blocks()
    }

    /// Free blocks in the KV arena.
    pub fn free_blocks(&self) -> usize {
        self.engine.metrics().blocks_free
    }

    /// Bytes of scratch memory.
    pub fn scratch_bytes(&self) -> usize {
        self.engine.scratch_bytes()
    }

    /// A new, empty sequence, with room for the whole context.
    pub fn new_sequence(&self) -> Sequence {
        Sequence {
            tokens: Vec::with_capacity(self.n_ctx()),
            n_computed: 0,
            request: None,
        }
    }

    /// Return a sequence's blocks to the arena; its tokens stay, none computed.
    pub fn release(&mut self, seq: &mut Sequence) {
        if let Some(id) = seq.request.take() {
            // The id came from this engine and is released once: it cannot be unknown.
            let _ = self.engine.release(id);
        }
        seq.n_computed = 0;
    }

    /// Evaluate every token of `seq` not yet in the cache (a scoring request of the engine,
    /// chunked by `max_batch_tokens` and `max_logits`). `want(pos)` says which positions need
    /// logits and must select one contiguous run of them; `on_logits(pos, logits, tokens)`
    /// receives them in position order, with the sequence's tokens (the sampling history).
    ///
    /// Allocates nothing after the first call on a sequence. On error the sequence is released
    /// (nothing computed) unless the error was found before anything ran.
    pub fn eval(
        &mut self,
        seq: &mut Sequence,
        want: impl Fn(usize) -> bool,
        mut on_logits: impl FnMut(usize, &mut [f32], &[u32]),
    ) -> Result<()> {
        let n = seq.tokens.len();
        let n_ctx = self.n_ctx();
        if n > n_ctx {
            return Err(Error::ContextFull {
                n_ctx,
                requested: n,
            });
        }
        let start = seq.n_computed;
        if n < start {
            return Err(invalid(
                "tokens",
                "evaluated tokens were removed: release the sequence before reusing it",
            ));
        }
        if n == start {
            return Ok(());
        }
        let rows = match (start..n).find(|&p| want(p)) {
            None => n..n,
            Some(first) => {
                let end = (first + 1..n).find(|&p| !want(p)).unwrap_or(n);
                if (end..n).any(&want) {
                    return Err(invalid(
                        "want",
                        "the positions that need logits must be one contiguous run",
                    ));
                }
                first..end
            }
        };
        let id = match seq.request {
            Some(id) => {
                self.engine.append(id, &seq.tokens[start..], rows)?;
                id
            }
            None => {
                let id = self.engine.submit_scoring(&seq.tokens, rows)?;
                seq.request = Some(id);
                id
            }
        };
        let r = self.run(id, |row| on_logits(row.pos, row.logits, row.tokens));
        if let Err(e) = r {
            self.release(seq);
            return Err(e);
        }
        seq.n_computed = n;
        Ok(())
    }

    /// Step the engine until request `id` is idle, handing its logits rows to `on_row`; the
    /// cause of an [`FinishReason::Error`] comes back as `Err`.
    fn run(
        &mut self,
        id: RequestId,
        mut on_row: impl FnMut(crate::engine::LogitsRow<'_>),
    ) -> Result<()> {
        while !self.engine.is_idle(id)? {
            let stats = self.engine.step_with(|row| {
                if row.request == id {
                    on_row(row);
                }
            })?;
            if stats.seqs == 0 {
                return Err(invalid(
                    "request",
                    "the session cannot schedule its sequence (is another one held?)",
                ));
            }
        }
        self.failure(id)
    }

    /// The error that ended request `id`, if one did.
    fn failure(&mut self, id: RequestId) -> Result<()> {
        let failed = self
            .engine
            .output(id)?
            .any(|o| o.finish == Some(FinishReason::Error));
        if failed {
            let out = self.engine.take_output(id, 0)?;
            return Err(out
                .error
                .unwrap_or_else(|| Error::Backend("the request failed".into())));
        }
        Ok(())
    }
}

mod conversation;
mod generate;
