//! The forward pass of a llama-family transformer over a batch of tokens from any number of
//! sequences, reading and writing K/V through each sequence's block table.
//!
//! Per layer (shapes for a batch of T tokens, E = n_embd, Hq/Hkv heads of D dims, F = n_ff):
//! ```text
//! xn  = rmsnorm(x) * attn_norm                      [T, E]
//! q   = xn Wq^T (+bq)   k = xn Wk^T (+bk)   v = xn Wv^T (+bv)     [T, Hq*D], [T, Hkv*D] x2
//! q,k = rope(q, pos), rope(k, pos)
//! KV[seq][pos] = k, v                               (f16, in the paged arena)
//! att = softmax(q k^T / sqrt(D)) v                  [T, Hq*D]  (causal, per sequence, GQA)
//! x  += att Wo^T                                    [T, E]
//! xn  = rmsnorm(x) * ffn_norm
//! x  += (silu(xn Wg^T) * (xn Wu^T)) Wd^T            [T, F] -> [T, E]
//! ```
//! then `logits = (rmsnorm(x) * output_norm) Wout^T` for the rows that asked for logits.
//!
//! Gemma 3 (`Arch::Gemma3`) differs in these places, each switched on by the config or by the
//! presence of its weights: `x = token_embd[tok] * sqrt(E)`; each head of q and k is
//! RMS-normed (`attn_q_norm`, `attn_k_norm`) before RoPE; q is multiplied by `1/sqrt(D)` and the
//! scores are not scaled again; the attention output and the FFN output are RMS-normed
//! (`post_attention_norm`, `post_ffw_norm`) before their residual adds; the FFN is GELU-gated;
//! sliding-window layers see only the last `sliding_window` positions (masked through the block
//! table: blocks wholly before the window are not read) and use their own RoPE base.
//!
//! Activations are quantized before each product to the type the weight's kernel expects
//! (Q8_1 for Q4_1, Q8_0 for Q4_0/Q8_0, Q8_K for K-quants, F16 for F16), exactly as ggml does:
//! that rounding is part of llama.cpp's numerics and moves logits by up to ~0.5.
//!
//! Nothing here allocates: every buffer is in [`Scratch`], sized at start-up.

use ember_kernels::dispatch;
use ember_kernels::reference::attention::OnlineSoftmax;
use half::f16;

use super::config::{Config, FfnAct, RopePairing, MAX_HEAD_DIM};
use super::weights::{f32_slice, Mat, Vector};
use super::Model;
use crate::compute::{Compute, MatJob, SharedOut, MAX_JOBS};
use crate::error::{Error, Result};
use crate::kv::{BlockId, KvArena};

/// One token of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchToken {
    /// Token id.
    pub token: u32,
    /// Position in its sequence.
    pub pos: usize,
    /// Index of its sequence in the `tables` argument of [`Model::forward`].
    pub seq: usize,
    /// Whether to compute logits for this token.
    pub logits: bool,
}

/// Where the forward pass finds each sequence's block table (`BatchToken::seq` indexes it).
pub trait BlockTables: Sync {
    /// The block table of sequence `seq`, or `None` if there is no such sequence.
    fn table(&self, seq: usize) -> Option<&[BlockId]>;
}

impl BlockTables for [&[BlockId]] {
    fn table(&self, seq: usize) -> Option<&[BlockId]> {
        self.get(seq).copied()
    }
}

/// Preallocated working memory of the forward pass for up to `max_tokens` tokens per batch and
/// `max_logits` rows of logits.
pub struct Scratch {
    max_tokens: usize,
    max_logits: usize,
    n_ctx: usize,
    /// Residual stream `[T, E]`.
    x: Vec<f32>,
    /// Normed input of a projection `[T, E]`.
    xn: Vec<f32>,
    /// Queries `[T, Hq*D]`, then the attention output in place of... (kept separate: `att`).
    q: Vec<f32>,
    /// Keys of the new tokens `[T, Hkv*D]`.
    k: Vec<f32>,
    /// Values of the new tokens `[T, Hkv*D]`.
    v: Vec<f32>,
    /// Attention output `[T, Hq*D]`.
    att: Vec<f32>,
    /// Output of a projection back to the residual width `[T, E]`.
    proj: Vec<f32>,
    /// FFN gate `[T, F]`.
    gate: Vec<f32>,
    /// FFN up `[T, F]`.
    up: Vec<f32>,
    /// Quantized activations `[T, row bytes]` (row bytes up to 4 × the widest input).
    acts: Vec<u8>,
    /// Rows of the batch that want logits.
    logit_rows: Vec<usize>,
    /// Normed final hidden states of those rows `[L, E]`.
    out_x: Vec<f32>,
    /// Logits `[L, n_vocab]`.
    logits: Vec<f32>,
    /// RoPE cos/sin per position and pair `[n_ctx, D/2]` each.
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
    /// The same for the sliding-window layers' RoPE base (empty without such layers).
    rope_cos_swa: Vec<f32>,
    rope_sin_swa: Vec<f32>,
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
            super::gelu::table();
        }
        let per_token = |cols: usize| zeroed(t, cols, "max_batch_tokens");
        let per_logit = |cols: usize| zeroed(max_logits, cols, "max_seqs");
        let mut logit_rows = Vec::new();
        logit_rows
            .try_reserve_exact(max_logits)
            .map_err(|_| scratch_too_large("max_seqs", max_logits, 1))?;
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
            logit_rows,
            out_x: per_logit(c.n_embd)?,
            logits: per_logit(c.n_vocab)?,
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
            + self.rope_sin_swa.len();
        f * 4 + self.acts.len() + self.logit_rows.capacity() * 8
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
fn zeroed<T: Clone + Default>(rows: usize, cols: usize, name: &'static str) -> Result<Vec<T>> {
    let len = rows
        .checked_mul(cols)
        .ok_or_else(|| scratch_too_large(name, rows, cols))?;
    let mut v = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|_| scratch_too_large(name, rows, cols))?;
    v.resize(len, T::default());
    Ok(v)
}

/// Quantize `n_tok` rows of `x` (`cols` wide) to the activation type `w` expects, spread over
/// the threads; returns the bytes per row.
fn quantize_acts(cx: &Compute, w: &Mat, x: &[f32], n_tok: usize, acts: &mut [u8]) -> usize {
    let at = dispatch::traits(w.kernels.vec_dot_type)
        .expect("every supported weight type has a supported activation type");
    let from_float = at
        .quantize_act
        .expect("activation types have an activation quantizer");
    let rb = w
        .kernels
        .vec_dot_type
        .row_bytes(w.cols as u64)
        .expect("row length checked at load") as usize;
    let cols = w.cols;
    assert!(x.len() >= n_tok * cols && acts.len() >= n_tok * rb);
    let acts_ptr = SharedOut(acts.as_mut_ptr());
    cx.parallel_for(n_tok, |t| {
        // SAFETY: token `t` owns bytes `t*rb .. (t+1)*rb` of `acts` (asserted in bounds); no
        // other token writes them, and `acts` is borrowed mutably for the whole region.
        let out = unsafe { std::slice::from_raw_parts_mut(acts_ptr.ptr().add(t * rb), rb) };
        from_float(&x[t * cols..(t + 1) * cols], out);
    });
    rb
}

impl Model {
    fn vec(&self, v: &Vector) -> &[f32] {
        f32_slice(self.file.bytes(), v).expect("alignment checked at load")
    }

    fn mat_bytes(&self, m: &Mat) -> &[u8] {
        &self.file.bytes()[m.range.clone()]
    }

    pub(crate) fn rope_freqs(&self) -> Option<&[f32]> {
        self.weights.rope_freqs.as_ref().map(|v| self.vec(v))
    }

    /// `y = rmsnorm(y) * norm` row by row (`n_tok` rows of `n_embd`), when the layer has such a
    /// norm (gemma3's post-attention / post-FFN norms); `tmp` is scratch of the same size.
    fn post_norm(&self, norm: &Option<Vector>, n_tok: usize, y: &mut [f32], tmp: &mut [f32]) {
        let Some(norm) = norm else { return };
        let (norm, e, eps) = (self.vec(norm), self.config.n_embd, self.config.rms_eps);
        let k = dispatch::ops();
        tmp[..n_tok * e].copy_from_slice(&y[..n_tok * e]);
        for t in 0..n_tok {
            (k.rms_norm)(
                &tmp[t * e..(t + 1) * e],
                norm,
                eps,
                &mut y[t * e..(t + 1) * e],
            );
        }
    }

    /// `out = x W^T` for `n_tok` rows, quantizing `x` first.
    fn project(
        &self,
        cx: &Compute,
        w: &Mat,
        x: &[f32],
        n_tok: usize,
        acts: &mut [u8],
        out: &mut [f32],
    ) {
        let rb = quantize_acts(cx, w, x, n_tok, acts);
        cx.matmul(w, self.mat_bytes(w), acts, rb, n_tok, out);
    }

    /// `out_j = x W_j^T` for several matrices of the same input: one quantization of `x` and
    /// one parallel region when they share an activation type (the usual case), else one
    /// [`Model::project`] each.
    fn project_many<const N: usize>(
        &self,
        cx: &Compute,
        jobs: [(&Mat, &mut [f32]); N],
        x: &[f32],
        n_tok: usize,
        acts: &mut [u8],
    ) {
        let w0 = jobs[0].0;
        let shared = jobs
            .iter()
            .all(|(w, _)| w.cols == w0.cols && w.kernels.vec_dot_type == w0.kernels.vec_dot_type);
        if !shared || N > MAX_JOBS {
            for (w, out) in jobs {
                self.project(cx, w, x, n_tok, acts, out);
            }
            return;
        }
        let rb = quantize_acts(cx, w0, x, n_tok, acts);
        let mut list = jobs.map(|(w, out)| MatJob {
            w,
            weights: self.mat_bytes(w),
            out,
        });
        cx.matmuls(&mut list, acts, rb, n_tok);
    }

    /// Run the model over `batch`. Token `i` belongs to sequence `batch[i].seq`, whose block
    /// table is `tables[batch[i].seq]` and must already cover position `batch[i].pos`. Positions
    /// before it must hold that sequence's K/V (earlier batches, or earlier tokens of this one).
    ///
    /// Returns the number of logit rows written to `scratch` (one per token with `logits`, in
    /// batch order).
    pub fn forward(
        &self,
        cx: &Compute,
        batch: &[BatchToken],
        tables: &(impl BlockTables + ?Sized),
        kv: &mut KvArena,
        s: &mut Scratch,
    ) -> Result<usize> {
        let c = &self.config;
        let k = dispatch::ops();
        let n_tok = batch.len();
        let (e, d, hq, hkv) = (c.n_embd, c.head_dim, c.n_head, c.n_head_kv);
        let (qd, kvd) = (c.q_dim(), c.kv_dim());
        let bs = kv.layout().block_size;
        // Validate the whole batch before touching any state.
        if n_tok == 0 || n_tok > s.max_tokens {
            return Err(Error::InvalidParam {
                name: "batch",
                what: format!("{n_tok} tokens (must be 1..={})", s.max_tokens),
            });
        }
        let n_logits = batch.iter().filter(|b| b.logits).count();
        if n_logits > s.max_logits {
            return Err(Error::InvalidParam {
                name: "batch",
                what: format!("{n_logits} logit rows requested, at most {}", s.max_logits),
            });
        }
        for b in batch {
            let Some(table) = tables.table(b.seq) else {
                return Err(Error::InvalidParam {
                    name: "batch",
                    what: format!(
                        "token refers to sequence {}, which has no block table",
                        b.seq
                    ),
                });
            };
            if b.token as usize >= c.n_vocab {
                return Err(Error::InvalidParam {
                    name: "batch",
                    what: format!(
                        "token id {} is outside the vocabulary ({})",
                        b.token, c.n_vocab
                    ),
                });
            }
            if b.pos >= s.n_ctx || b.pos / bs >= table.len() {
                return Err(Error::ContextFull {
                    n_ctx: s.n_ctx.min(table.len() * bs),
                    requested: b.pos + 1,
                });
            }
        }

        // Token embeddings: x[t] = token_embd[token_t]                      [T, E]
        let emb = &self.weights.token_embd;
        let emb_bytes = self.mat_bytes(emb);
        for (t, b) in batch.iter().enumerate() {
            let row = &emb_bytes[b.token as usize * emb.row_bytes..][..emb.row_bytes];
            (emb.kernels.to_float)(row, &mut s.x[t * e..(t + 1) * e]);
        }
        if c.embd_scale != 1.0 {
            s.x[..n_tok * e].iter_mut().for_each(|x| *x *= c.embd_scale);
        }

        for (l, lw) in self.weights.layers.iter().enumerate() {
            // ---- attention ----
            let norm = self.vec(&lw.attn_norm);
            for t in 0..n_tok {
                (k.rms_norm)(
                    &s.x[t * e..(t + 1) * e],
                    norm,
                    c.rms_eps,
                    &mut s.xn[t * e..(t + 1) * e],
                );
            }
            self.project_many(
                cx,
                [
                    (&lw.wq, &mut s.q[..n_tok * qd]),
                    (&lw.wk, &mut s.k[..n_tok * kvd]),
                    (&lw.wv, &mut s.v[..n_tok * kvd]),
                ],
                &s.xn,
                n_tok,
                &mut s.acts,
            );
            for (bias, out, w) in [
                (&lw.bq, &mut s.q, qd),
                (&lw.bk, &mut s.k, kvd),
                (&lw.bv, &mut s.v, kvd),
            ] {
                if let Some(bias) = bias {
                    let bias = self.vec(bias);
                    for row in out[..n_tok * w].chunks_exact_mut(w) {
                        row.iter_mut().zip(bias).for_each(|(o, b)| *o += b);
                    }
                }
            }
            // Per-head RMSNorm of q and k (gemma3).
            for (norm, out, w) in [
                (&lw.attn_q_norm, &mut s.q, qd),
                (&lw.attn_k_norm, &mut s.k, kvd),
            ] {
                if let Some(norm) = norm {
                    let norm = self.vec(norm);
                    let mut row = [0.0f32; MAX_HEAD_DIM];
                    for head in out[..n_tok * w].chunks_exact_mut(d) {
                        row[..d].copy_from_slice(head);
                        (k.rms_norm)(&row[..d], norm, c.rms_eps, head);
                    }
                }
            }
            // RoPE on every head of q and k, at each token's position.
            let half = d / 2;
            let (rope_cos, rope_sin) = if c.swa_layers[l] {
                (&s.rope_cos_swa, &s.rope_sin_swa)
            } else {
                (&s.rope_cos, &s.rope_sin)
            };
            for (t, b) in batch.iter().enumerate() {
                let cos = &rope_cos[b.pos * half..(b.pos + 1) * half];
                let sin = &rope_sin[b.pos * half..(b.pos + 1) * half];
                let heads = s.q[t * qd..(t + 1) * qd]
                    .chunks_exact_mut(d)
                    .chain(s.k[t * kvd..(t + 1) * kvd].chunks_exact_mut(d));
                for head in heads {
                    match c.rope_pairing {
                        RopePairing::Norm => (k.rope_norm)(head, cos, sin),
                        RopePairing::Neox => (k.rope_neox)(head, cos, sin),
                    }
                }
                // Gemma scales q before attention (ggml_scale), not the scores.
                if let Some(qs) = c.q_scale {
                    s.q[t * qd..(t + 1) * qd].iter_mut().for_each(|q| *q *= qs);
                }
                // ggml's attention converts Q to f16 to multiply it with the f16 K cache.
                for q in &mut s.q[t * qd..(t + 1) * qd] {
                    *q = f16::from_f32(*q).to_f32();
                }
            }
            // Store the new keys and values in their slots.
            for (t, b) in batch.iter().enumerate() {
                let block = tables.table(b.seq).expect("checked above")[b.pos / bs];
                kv.write(
                    block.index(),
                    b.pos % bs,
                    l,
                    &s.k[t * kvd..(t + 1) * kvd],
                    &s.v[t * kvd..(t + 1) * kvd],
                );
            }
            // att[t, h] = softmax(q[t,h] . K[seq_t, 0..=pos_t, h/group] / sqrt(D)) V[...]
            let kv_ro: &KvArena = kv;
            let q_all = &s.q;
            let scale = match c.q_scale {
                Some(_) => 1.0,
                None => 1.0 / (d as f32).sqrt(),
            };
            let group = hq / hkv;
            let att_ptr = SharedOut(s.att.as_mut_ptr());
            if n_tok * hkv >= 2 * cx.n_threads() && group <= MAX_GROUP {
                // Enough work per KV head: the query heads of a group share each K/V row read.
                cx.parallel_for(n_tok * hkv, |i| {
                    let (t, kh) = (i / hkv, i % hkv);
                    let b = &batch[t];
                    let (h0, h1) = (kh * group, (kh + 1) * group);
                    let q = &q_all[t * qd + h0 * d..t * qd + h1 * d];
                    // SAFETY: item `i` owns `att[(t*hq + h0)*d .. (t*hq + h1)*d]` (heads h0..h1
                    // of token t), inside `att` (n_tok*hq*d elements); no other item touches
                    // it, and `s.att` is not otherwise borrowed during the region.
                    let out = unsafe {
                        std::slice::from_raw_parts_mut(
                            att_ptr.ptr().add((t * hq + h0) * d),
                            group * d,
                        )
                    };
                    let table = tables.table(b.seq).expect("checked above");
                    let start = c.attn_start(l, b.pos);
                    attend_group(kv_ro, l, kh, table, start, b.pos + 1, q, scale, out);
                });
            } else {
                cx.parallel_for(n_tok * hq, |i| {
                    let (t, h) = (i / hq, i % hq);
                    let b = &batch[t];
                    let q = &q_all[t * qd + h * d..t * qd + (h + 1) * d];
                    // SAFETY: pair `i` owns `att[i*d .. (i+1)*d]`, inside `att` (n_tok*hq*d
                    // elements, checked against max_tokens above); no other pair touches it,
                    // and `s.att` is not otherwise borrowed during the region.
                    let out =
                        unsafe { std::slice::from_raw_parts_mut(att_ptr.ptr().add(i * d), d) };
                    let table = tables.table(b.seq).expect("checked above");
                    let start = c.attn_start(l, b.pos);
                    attend(kv_ro, l, h / group, table, start, b.pos + 1, q, scale, out);
                });
            }
            self.project(
                cx,
                &lw.wo,
                &s.att,
                n_tok,
                &mut s.acts,
                &mut s.proj[..n_tok * e],
            );
            // From here on the last layer keeps only the rows that want logits, as llama.cpp
            // does (`inp_out_ids`): the other rows' FFN output is never read, and the smaller
            // product also takes the k-quant kernels llama.cpp takes for it.
            let n_rows = if l + 1 == c.n_layer {
                let mut i = 0;
                for (t, _) in batch.iter().enumerate().filter(|(_, b)| b.logits) {
                    s.proj.copy_within(t * e..(t + 1) * e, i * e);
                    s.x.copy_within(t * e..(t + 1) * e, i * e);
                    i += 1;
                }
                i
            } else {
                n_tok
            };
            if n_rows == 0 {
                break;
            }
            self.post_norm(&lw.attn_post_norm, n_rows, &mut s.proj, &mut s.xn);
            s.x[..n_rows * e]
                .iter_mut()
                .zip(&s.proj[..n_rows * e])
                .for_each(|(x, p)| *x += p);

            // ---- feed-forward (SwiGLU, or GeGLU for gemma3) ----
            let norm = self.vec(&lw.ffn_norm);
            for t in 0..n_rows {
                (k.rms_norm)(
                    &s.x[t * e..(t + 1) * e],
                    norm,
                    c.rms_eps,
                    &mut s.xn[t * e..(t + 1) * e],
                );
            }
            let f = c.n_ff;
            self.project_many(
                cx,
                [
                    (&lw.w_gate, &mut s.gate[..n_rows * f]),
                    (&lw.w_up, &mut s.up[..n_rows * f]),
                ],
                &s.xn,
                n_rows,
                &mut s.acts,
            );
            match c.ffn_act {
                FfnAct::Silu => (k.silu_mul)(&mut s.gate[..n_rows * f], &s.up[..n_rows * f]),
                FfnAct::Gelu => super::gelu::geglu(&mut s.gate[..n_rows * f], &s.up[..n_rows * f]),
            }
            self.project(
                cx,
                &lw.w_down,
                &s.gate,
                n_rows,
                &mut s.acts,
                &mut s.proj[..n_rows * e],
            );
            self.post_norm(&lw.ffn_post_norm, n_rows, &mut s.proj, &mut s.xn);
            s.x[..n_rows * e]
                .iter_mut()
                .zip(&s.proj[..n_rows * e])
                .for_each(|(x, p)| *x += p);
        }

        // ---- output: logits for the rows that want them ----
        s.logit_rows.clear();
        s.logit_rows.extend(
            batch
                .iter()
                .enumerate()
                .filter(|(_, b)| b.logits)
                .map(|(t, _)| t),
        );
        let norm = self.vec(&self.weights.output_norm);
        // The last layer left the logit rows first in `x`, in batch order.
        for i in 0..s.logit_rows.len() {
            (k.rms_norm)(
                &s.x[i * e..(i + 1) * e],
                norm,
                c.rms_eps,
                &mut s.out_x[i * e..(i + 1) * e],
            );
        }
        if n_logits > 0 {
            let out = &self.weights.output;
            self.project(
                cx,
                out,
                &s.out_x,
                n_logits,
                &mut s.acts,
                &mut s.logits[..n_logits * c.n_vocab],
            );
        }
        Ok(n_logits)
    }
}

/// Causal attention of one query head over positions `start .. n_pos` of a sequence (`start` > 0
/// on sliding-window layers: blocks wholly before it are not read, positions before it in its
/// block are skipped, exactly as ggml skips keys whose mask is -inf): one pass with an
/// online softmax, as ggml's CPU flash attention (`flash_attn_ext_f16_one_chunk`) computes it,
/// which is what llama.cpp runs by default. The query arrives rounded to f16; the weighted sum
/// of values is kept in f16 (rounded after every position, as ggml's `VKQ16`), the running
/// denominator in f32.
#[allow(clippy::too_many_arguments)]
fn attend(
    kv: &KvArena,
    layer: usize,
    kv_head: usize,
    table: &[BlockId],
    start: usize,
    n_pos: usize,
    q: &[f32],
    scale: f32,
    out: &mut [f32],
) {
    let attend_rows = dispatch::ops().attend_rows;
    out.fill(0.0);
    let mut st = OnlineSoftmax::default();
    for_each_kv_run(kv, layer, kv_head, table, start, n_pos, |k, v| {
        attend_rows(q, k, v, scale, &mut st, out)
    });
    st.finish(out);
}

/// Calls `f(k, v)` with the K and V rows of positions `start..n_pos` of a sequence, one run per
/// KV block in position order (a sliding window starts late, inside a block).
fn for_each_kv_run(
    kv: &KvArena,
    layer: usize,
    kv_head: usize,
    table: &[BlockId],
    start: usize,
    n_pos: usize,
    mut f: impl FnMut(&[f16], &[f16]),
) {
    let lay = kv.layout();
    let (bs, d) = (lay.block_size, lay.head_dim);
    for (bi, block) in table.iter().enumerate().skip(start / bs) {
        let block_start = bi * bs;
        if block_start >= n_pos {
            break;
        }
        let n = (n_pos - block_start).min(bs);
        let j0 = start.saturating_sub(block_start).min(n);
        let kt = kv.k_tile(block.index(), layer, kv_head);
        let vt = kv.v_tile(block.index(), layer, kv_head);
        f(&kt[j0 * d..n * d], &vt[j0 * d..n * d]);
    }
}

/// Most query heads per KV head that [`attend_group`] takes at once.
const MAX_GROUP: usize = 16;

/// [`attend`] for the `group` query heads that share KV head `kv_head` (`q` and `out`: `group`
/// rows of the head size): each K/V row is read once for all of them; every head's result is
/// exactly its own [`attend`].
#[allow(clippy::too_many_arguments)]
fn attend_group(
    kv: &KvArena,
    layer: usize,
    kv_head: usize,
    table: &[BlockId],
    start: usize,
    n_pos: usize,
    q: &[f32],
    scale: f32,
    out: &mut [f32],
) {
    let attend_rows_group = dispatch::ops().attend_rows_group;
    let d = kv.layout().head_dim;
    let g = q.len() / d;
    out.fill(0.0);
    let mut st = [OnlineSoftmax::default(); MAX_GROUP];
    for_each_kv_run(kv, layer, kv_head, table, start, n_pos, |k, v| {
        attend_rows_group(q, k, v, scale, &mut st[..g], out)
    });
    for (st, o) in st[..g].iter().zip(out.chunks_exact_mut(d)) {
        st.finish(o);
    }
}
