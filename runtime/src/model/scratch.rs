//! The host-side working memory of a forward step, preallocated at start-up: the activation
//! buffers the CPU executor computes in, the RoPE tables, and the logits every backend leaves
//! for the sampler (the CUDA backend copies its logit rows here).
//!
//! Nothing is allocated after [`Scratch::new`]; every size comes from the caller's
//! configuration and is allocated fallibly, so an absurd batch size is an error, not an abort.

use super::config::{Config, FfnAct};
use super::executor::{Act, Widths};
use super::Model;
use crate::error::{Error, Result};
use crate::sampler::MAX_DEVICE_TOP;

/// Preallocated working memory of the forward pass for up to `max_tokens` tokens per batch and
/// `max_logits` rows of logits.
pub struct Scratch {
    pub(crate) max_tokens: usize,
    pub(crate) max_logits: usize,
    pub(crate) n_ctx: usize,
    /// Residual stream `[T, E]`.
    pub(crate) x: Vec<f32>,
    /// Normed input of a projection `[T, E]`.
    pub(crate) xn: Vec<f32>,
    /// Queries `[T, Hq*D]`.
    pub(crate) q: Vec<f32>,
    /// Keys of the new tokens `[T, Hkv*D]`.
    pub(crate) k: Vec<f32>,
    /// Values of the new tokens `[T, Hkv*D]`.
    pub(crate) v: Vec<f32>,
    /// Attention output `[T, Hq*D]`.
    pub(crate) att: Vec<f32>,
    /// Output of a projection back to the residual width `[T, E]`.
    pub(crate) proj: Vec<f32>,
    /// FFN gate `[T, F]`.
    pub(crate) gate: Vec<f32>,
    /// FFN up `[T, F]`.
    pub(crate) up: Vec<f32>,
    /// Quantized activations `[T, row bytes]` (row bytes up to 4 × the widest input).
    pub(crate) acts: Vec<u8>,
    /// Normed final hidden states of those rows `[L, E]`.
    pub(crate) out_x: Vec<f32>,
    /// Logits `[L, n_vocab]`.
    pub(crate) logits: Vec<f32>,
    /// Per logits row, set by the caller before a forward pass: what it reads of the row
    /// (default: every row whole).
    pub(crate) row_need: Vec<RowNeed>,
    /// Per logits row after a forward pass: the row's argmax (the lowest index among equal
    /// maxima) where the backend computed it, [`NO_ARGMAX`] where it did not. A backend that can
    /// (CUDA) computes it on the device for the [`RowNeed::Argmax`] rows and copies those rows
    /// back only where they hold a NaN (then the entry is [`NO_ARGMAX`] and the row is in
    /// `logits`); the CPU leaves every entry [`NO_ARGMAX`] and every row in `logits`.
    pub(crate) argmax: Vec<u32>,
    /// The same for the [`RowNeed::Top`] rows: where the backend computed a row's
    /// [`top_candidates`](crate::sampler::top_candidates), `top_len` holds how many (else
    /// [`NO_TOP`], and the row is in `logits`), `top_ids` / `top_vals` hold them from
    /// `row * top_stride`, and `top_complete` whether they are all of the row's usable tokens.
    /// The candidate buffers are empty until [`Scratch::reserve_device_top`] (a backend that
    /// never fills them, the CPU, does not pay for them).
    pub(crate) top_len: Vec<u32>,
    pub(crate) top_complete: Vec<bool>,
    pub(crate) top_ids: Vec<u32>,
    pub(crate) top_vals: Vec<f32>,
    pub(crate) top_stride: usize,
    /// Where the backend copies its candidates in one transfer before spreading them into
    /// `top_ids` / `top_vals` (the CUDA layout: `backend::cuda::params::TopkParams::out`).
    pub(crate) top_raw: Vec<u32>,
    /// One row, for norms in place `[max(E, D)]`.
    pub(crate) tmp: Vec<f32>,
    /// Row widths of the buffers.
    widths: Widths,
    /// RoPE cos/sin per position and pair `[n_ctx, D/2]` each.
    pub(crate) rope_cos: Vec<f32>,
    pub(crate) rope_sin: Vec<f32>,
    /// The same for the sliding-window layers' RoPE base (empty without such layers).
    pub(crate) rope_cos_swa: Vec<f32>,
    pub(crate) rope_sin_swa: Vec<f32>,
}

/// [`Scratch::argmax`] entry of a row whose argmax the backend did not compute.
pub(crate) const NO_ARGMAX: u32 = u32::MAX;

/// [`Scratch::top_len`] entry of a row whose candidates the backend did not compute.
pub(crate) const NO_TOP: u32 = u32::MAX;

/// What the caller of a forward pass reads of a logits row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RowNeed {
    /// The whole row.
    Full,
    /// Its greedy argmax only.
    Argmax,
    /// Its `k` most likely tokens only (`k` at most [`MAX_DEVICE_TOP`]).
    Top(u32),
}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scratch")
            .field("max_tokens", &self.max_tokens)
            .field("max_logits", &self.max_logits)
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl Scratch {
    /// Allocate scratch for batches of up to `max_tokens` tokens, `max_logits` of which want
    /// logits, at positions below `n_ctx`.
    pub fn new(
        model: &Model,
        max_tokens: usize,
        max_logits: usize,
        n_ctx: usize,
    ) -> Result<Scratch> {
        let c = &model.config;
        if max_tokens == 0 || max_logits == 0 || max_logits > max_tokens {
            return Err(Error::InvalidParam {
                name: "max_batch_tokens",
                what: format!(
                    "need 1 <= max_logits ({max_logits}) <= max_batch_tokens ({max_tokens})"
                ),
            });
        }
        if n_ctx == 0 {
            return Err(Error::InvalidParam {
                name: "n_ctx",
                what: "the context must hold at least one token".into(),
            });
        }
        let t = max_tokens;
        let widest = c.n_embd.max(c.q_dim()).max(c.n_ff);
        let (rope_cos, rope_sin) = rope_tables(c, c.rope_base, model.rope_freqs(), n_ctx)?;
        let (rope_cos_swa, rope_sin_swa) = if c.swa_layers.contains(&true) {
            rope_tables(c, c.rope_base_swa, model.rope_freqs(), n_ctx)?
        } else {
            (Vec::new(), Vec::new())
        };
        if c.ffn_act == FfnAct::Gelu {
            // Build the lookup table now, not in the first forward pass.
            crate::backend::gelu::table();
        }
        let per_token = |cols: usize| zeroed(t, cols, "max_batch_tokens");
        let per_logit = |cols: usize| zeroed(max_logits, cols, "max_seqs");
        Ok(Scratch {
            max_tokens,
            max_logits,
            n_ctx,
            x: per_token(c.n_embd)?,
            xn: per_token(c.n_embd)?,
            q: per_token(c.q_dim())?,
            k: per_token(c.kv_dim())?,
            v: per_token(c.kv_dim())?,
            att: per_token(c.q_dim())?,
            proj: per_token(c.n_embd)?,
            gate: per_token(c.n_ff)?,
            up: per_token(c.n_ff)?,
            acts: zeroed(t, widest.saturating_mul(4), "max_batch_tokens")?,
            tmp: zeroed(1, c.n_embd.max(c.head_dim), "n_embd")?,
            widths: Widths::of(c),
            out_x: per_logit(c.n_embd)?,
            logits: per_logit(c.n_vocab)?,
            row_need: vec![RowNeed::Full; max_logits],
            argmax: vec![NO_ARGMAX; max_logits],
            top_len: vec![NO_TOP; max_logits],
            top_complete: vec![false; max_logits],
            top_ids: Vec::new(),
            top_vals: Vec::new(),
            top_stride: 0,
            top_raw: Vec::new(),
            rope_cos,
            rope_sin,
            rope_cos_swa,
            rope_sin_swa,
        })
    }

    /// Bytes of scratch memory.
    pub fn bytes(&self) -> usize {
        let f = self.x.len()
            + self.xn.len()
            + self.q.len()
            + self.k.len()
            + self.v.len()
            + self.att.len()
            + self.proj.len()
            + self.gate.len()
            + self.up.len()
            + self.out_x.len()
            + self.logits.len()
            + self.rope_cos.len()
            + self.rope_sin.len()
            + self.rope_cos_swa.len()
            + self.rope_sin_swa.len()
            + self.tmp.len();
        f * 4
            + self.acts.len()
            + (self.top_ids.len() + self.top_vals.len() + self.top_raw.len()) * 4
    }

    /// Make room for a backend that selects each sampled row's most likely tokens itself
    /// ([`RowNeed::Top`]): up to [`MAX_DEVICE_TOP`] candidates per logits row.
    pub(crate) fn reserve_device_top(&mut self) -> Result<()> {
        let per_row = MAX_DEVICE_TOP;
        self.top_ids = zeroed(self.max_logits, per_row, "max_seqs")?;
        self.top_vals = zeroed(self.max_logits, per_row, "max_seqs")?;
        self.top_raw = zeroed(self.max_logits, 2 * per_row + 2, "max_seqs")?;
        Ok(())
    }

    /// Most tokens per batch.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Most logit rows per batch.
    pub fn max_logits(&self) -> usize {
        self.max_logits
    }

    /// Positions covered by the RoPE tables.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Logits of the `i`-th token (in batch order) that asked for them, after [`Model::forward`].
    pub fn logits(&self, i: usize, n_vocab: usize) -> &[f32] {
        &self.logits[i * n_vocab..(i + 1) * n_vocab]
    }

    /// Move the logits buffer out (no allocation), so a caller can hand rows to code that also
    /// needs `&mut` access to its owner; give it back with [`Scratch::put_logits`] before the
    /// next forward pass.
    pub fn take_logits(&mut self) -> Vec<f32> {
        std::mem::take(&mut self.logits)
    }

    /// Return the buffer taken by [`Scratch::take_logits`].
    pub fn put_logits(&mut self, logits: Vec<f32>) {
        self.logits = logits;
    }

    /// Mutable logits (samplers modify them in place).
    pub fn logits_mut(&mut self, i: usize, n_vocab: usize) -> &mut [f32] {
        &mut self.logits[i * n_vocab..(i + 1) * n_vocab]
    }
}

/// cos/sin of every (position, pair), computed as ggml's `rope_cache_init` does (the angle is
/// advanced by repeated f32 multiplication, not `powf` per pair) so positions far into the
/// context round as llama.cpp's do.
pub(crate) fn rope_tables(
    c: &Config,
    base: f32,
    freq_factors: Option<&[f32]>,
    n_ctx: usize,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let half = c.head_dim / 2;
    let theta_scale = base.powf(-2.0 / c.rope_dims as f32);
    let mut cos = zeroed(n_ctx, half, "n_ctx")?;
    let mut sin = zeroed(n_ctx, half, "n_ctx")?;
    for p in 0..n_ctx {
        let mut theta = p as f32;
        for i in 0..half {
            let ff = freq_factors.map_or(1.0, |f| f[i]);
            let t = c.rope_freq_scale * (theta / ff);
            cos[p * half + i] = t.cos();
            sin[p * half + i] = t.sin();
            theta *= theta_scale;
        }
    }
    // Finite base, scale and frequency factors are checked at load, but their product can
    // still overflow far into a long context: refuse instead of rotating by NaN.
    if let Some(p) = cos.iter().chain(&sin).position(|v| !v.is_finite()) {
        return Err(Error::BadKey {
            key: "rope".into(),
            what: format!(
                "the RoPE angle of position {} is not finite (rope.freq_base {base}, \
                 scale {}): the model's RoPE parameters are broken",
                p % cos.len().max(1) / half.max(1),
                c.rope_freq_scale
            ),
        });
    }
    Ok((cos, sin))
}

fn scratch_too_large(name: &'static str, rows: usize, cols: usize) -> Error {
    Error::InvalidParam {
        name,
        what: format!(
            "{rows} rows of {cols} elements of scratch memory cannot be allocated: lower {name}"
        ),
    }
}

/// A zeroed `[rows, cols]` buffer, allocated fallibly: `rows` comes from the caller's
/// configuration (`name`), and a size the machine cannot hold is an error, never an abort.
/// Zero pages from the OS: rows a step never reaches are never mapped (crate::zeroed).
fn zeroed<T: crate::zeroed::ZeroBits>(
    rows: usize,
    cols: usize,
    name: &'static str,
) -> Result<Vec<T>> {
    rows.checked_mul(cols)
        .and_then(crate::zeroed::zeroed_vec)
        .ok_or_else(|| scratch_too_large(name, rows, cols))
}

impl Scratch {
    /// Row width of buffer `a`.
    pub(crate) fn width(&self, a: Act) -> usize {
        self.widths.of_act(a)
    }

    /// Buffer `a`.
    pub(crate) fn buf(&self, a: Act) -> &[f32] {
        match a {
            Act::X => &self.x,
            Act::Xn => &self.xn,
            Act::Q => &self.q,
            Act::K => &self.k,
            Act::V => &self.v,
            Act::Att => &self.att,
            Act::Proj => &self.proj,
            Act::Gate => &self.gate,
            Act::Up => &self.up,
            Act::OutX => &self.out_x,
            Act::Logits => &self.logits,
        }
    }

    /// Buffer `a`, mutably.
    pub(crate) fn buf_mut(&mut self, a: Act) -> &mut Vec<f32> {
        match a {
            Act::X => &mut self.x,
            Act::Xn => &mut self.xn,
            Act::Q => &mut self.q,
            Act::K => &mut self.k,
            Act::V => &mut self.v,
            Act::Att => &mut self.att,
            Act::Proj => &mut self.proj,
            Act::Gate => &mut self.gate,
            Act::Up => &mut self.up,
            Act::OutX => &mut self.out_x,
            Act::Logits => &mut self.logits,
        }
    }

    /// Move buffer `a` out (no allocation) so that it can be written while other buffers are
    /// read; give it back with [`Scratch::put`].
    pub(crate) fn take(&mut self, a: Act) -> Vec<f32> {
        std::mem::take(self.buf_mut(a))
    }

    /// Return a buffer moved out by [`Scratch::take`].
    pub(crate) fn put(&mut self, a: Act, v: Vec<f32>) {
        *self.buf_mut(a) = v;
    }
}
