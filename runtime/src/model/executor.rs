//! The operations a forward pass needs, as one trait that each backend implements.
//!
//! [`Model::forward`](super::Model::forward) is written once, against [`Executor`]: it knows the
//! architectures (which norms, which activation, which RoPE base, which layers slide) and calls
//! these operations in the paper's order. An executor knows none of that: it owns the step's
//! activation buffers and the KV arena, and runs each operation on its device (worker threads
//! over `ember-kernels` on the CPU, kernels on a CUDA stream). The batch has been checked against
//! the executor's [`Limits`] before the first operation, so operations do not check it again.
//!
//! Buffers are named, not passed: each [`Act`] is a `[rows, width]` f32 matrix the executor
//! holds, sized at start-up for the largest batch. Row `t` of a per-token buffer belongs to token
//! `t` of the batch until [`Executor::keep_rows`] moves the rows that want logits to the front.
//!
//! Numerics are part of the contract: every executor quantizes a product's activations to the
//! type its weight's kernel expects (as ggml does), rounds queries to f16 before attention, and
//! stores K/V as f16, so the CPU reference and the GPU agree to rounding.

use super::config::{Config, FfnAct};
use super::weights::{Mat, Vector};
use crate::error::Result;
use crate::kv::BlockId;

/// One token of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchToken {
    /// Token id.
    pub token: u32,
    /// Position in its sequence.
    pub pos: usize,
    /// Index of its sequence in the step's [`BlockTables`].
    pub seq: usize,
    /// Whether to compute logits for this token.
    pub logits: bool,
}

/// Where the forward pass finds each sequence's block tables (`BatchToken::seq` indexes them):
/// one per layer group of the KV arena ([`crate::kv::KvGroups`]), all of the same length.
pub trait BlockTables: Sync {
    /// The block table of layer group `group` of sequence `seq`, or `None` if there is no such
    /// sequence or group.
    fn table(&self, seq: usize, group: usize) -> Option<&[BlockId]>;
}

/// One group: sequence `seq`'s table is `self[seq]`.
impl BlockTables for [&[BlockId]] {
    fn table(&self, seq: usize, group: usize) -> Option<&[BlockId]> {
        match group {
            0 => self.get(seq).copied(),
            _ => None,
        }
    }
}

/// One forward step: the batch and the block tables its tokens index.
pub struct Step<'a, T: BlockTables + ?Sized> {
    /// The tokens, in batch order.
    pub batch: &'a [BatchToken],
    /// Their sequences' block tables, already covering every token's position.
    pub tables: &'a T,
}

impl<T: BlockTables + ?Sized> Step<'_, T> {
    /// The block table of layer group `group` of token `t`'s sequence (checked to exist before
    /// the first operation).
    pub fn table_of(&self, t: usize, group: usize) -> &[BlockId] {
        self.tables
            .table(self.batch[t].seq, group)
            .expect("batch checked against the block tables")
    }
}

/// An activation buffer of the step, `[rows, width]` f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// Residual stream `[T, n_embd]`.
    X,
    /// Normed input of a projection `[T, n_embd]`.
    Xn,
    /// Queries `[T, n_head * head_dim]`.
    Q,
    /// Keys of the new tokens `[T, n_head_kv * head_dim]`.
    K,
    /// Values of the new tokens `[T, n_head_kv * head_dim]`.
    V,
    /// Attention output `[T, n_head * head_dim]`.
    Att,
    /// A projection back to the residual width, before its residual add `[T, n_embd]`.
    Proj,
    /// FFN gate, then the gated activation `[T, n_ff]`.
    Gate,
    /// FFN up `[T, n_ff]`.
    Up,
    /// Normed final hidden states of the rows that want logits `[L, n_embd]`.
    OutX,
    /// Logits `[L, n_vocab]`.
    Logits,
}

/// Row widths of a model's activation buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Widths {
    embd: usize,
    q: usize,
    kv: usize,
    ff: usize,
    vocab: usize,
}

impl Widths {
    /// The widths of `c`'s buffers.
    pub fn of(c: &Config) -> Widths {
        Widths {
            embd: c.n_embd,
            q: c.q_dim(),
            kv: c.kv_dim(),
            ff: c.n_ff,
            vocab: c.n_vocab,
        }
    }

    /// Elements in a row of `a`.
    pub fn of_act(self, a: Act) -> usize {
        match a {
            Act::X | Act::Xn | Act::Proj | Act::OutX => self.embd,
            Act::Q | Act::Att => self.q,
            Act::K | Act::V => self.kv,
            Act::Gate | Act::Up => self.ff,
            Act::Logits => self.vocab,
        }
    }
}

/// Where a product's result goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Out {
    /// `dst = x W^T`.
    Set(Act),
    /// `dst += x W^T` (a residual add; never into the product's own input).
    Add(Act),
}

/// Which RoPE table a layer rotates with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeTable {
    /// The model's base frequency (`rope.freq_base`).
    Global,
    /// The sliding-window layers' base (gemma3's `rope.freq_base_swa`).
    Local,
}

/// Sizes an executor was built for: a batch is checked against them before it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most tokens per step.
    pub max_tokens: usize,
    /// Most logit rows per step.
    pub max_logits: usize,
    /// Positions covered (RoPE tables, block tables).
    pub n_ctx: usize,
    /// Token slots per KV block.
    pub block_size: usize,
    /// Layer groups of the KV arena: block tables per sequence.
    pub kv_groups: usize,
}

/// The operations of a forward pass, on one device. `rows` counts leading rows of a buffer.
///
/// Calls come in the order of [`Model::forward`](super::Model::forward): [`Executor::begin`],
/// then the step's operations, then [`Executor::finish`]. After an error the step is abandoned
/// (its K/V slots may be partly written; the engine fails the step's requests).
pub trait Executor {
    /// The sizes this executor was built for.
    fn limits(&self) -> Limits;

    /// Start a step over a checked batch (stage positions and block tables).
    fn begin<T: BlockTables + ?Sized>(&mut self, step: &Step<'_, T>) -> Result<()>;

    /// `X[t] = table[token_t] * scale` (the embedding lookup).
    fn embed<T: BlockTables + ?Sized>(
        &mut self,
        step: &Step<'_, T>,
        table: &Mat,
        scale: f32,
    ) -> Result<()>;

    /// `dst[r] = rmsnorm(src[r]) * w` for `rows` rows of `w.len` elements (`src` may be `dst`;
    /// a buffer of heads is normed head by head when `w` is one head long).
    fn rms_norm(&mut self, src: Act, dst: Act, w: &Vector, rows: usize) -> Result<()>;

    /// `out_j (+)= src W_j^T` for `rows` rows of `src`; the products share one quantization of
    /// `src` (all `W_j` have `src`'s width).
    fn matmul(&mut self, jobs: &[(&Mat, Out)], src: Act, rows: usize) -> Result<()>;

    /// `dst[r] += b` for `rows` rows.
    fn add_bias(&mut self, dst: Act, b: &Vector, rows: usize) -> Result<()>;

    /// `dst += src`, `rows` rows of the residual width.
    fn add(&mut self, dst: Act, src: Act, rows: usize) -> Result<()>;

    /// Rotate every head of `Q` and `K` by its token's position (the model's pairing, `table`),
    /// multiply `Q` by `q_scale` and round it to f16, and store `K` and `V` of every token into
    /// its slot of `layer` in the KV arena.
    fn rope_and_store_kv<T: BlockTables + ?Sized>(
        &mut self,
        step: &Step<'_, T>,
        layer: usize,
        table: RopeTable,
        q_scale: f32,
    ) -> Result<()>;

    /// `Att[t, h] = softmax(scale * Q[t, h] . K^T) V` over the positions of token `t`'s sequence
    /// up to its own (causal; only the last `window` when `window > 0`), from `layer` of the
    /// arena; query heads share KV heads in groups (GQA).
    fn attend<T: BlockTables + ?Sized>(
        &mut self,
        step: &Step<'_, T>,
        layer: usize,
        window: usize,
        scale: f32,
    ) -> Result<()>;

    /// `Gate = act(Gate) * Up` for `rows` rows.
    fn gated_act(&mut self, act: FfnAct, rows: usize) -> Result<()>;

    /// Move the rows of `X` whose tokens want logits to the front, in batch order; returns how
    /// many there are. Rows past them are no longer meaningful.
    fn keep_rows<T: BlockTables + ?Sized>(&mut self, step: &Step<'_, T>) -> Result<usize>;

    /// End the step: make the first `n_logits` rows of [`Act::Logits`] readable by the caller.
    fn finish(&mut self, n_logits: usize) -> Result<()>;
}
