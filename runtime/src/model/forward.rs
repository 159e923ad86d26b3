//! The forward pass of a llama-family transformer over a batch of tokens from any number of
//! sequences, written once against [`Executor`]: every backend runs this code.
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
//! sliding-window layers see only the last `sliding_window` positions and use their own RoPE
//! base.
//!
//! Activations are quantized before each product to the type the weight's kernel expects
//! (Q8_1 for Q4_1, Q8_0 for Q4_0/Q8_0, Q8_K for K-quants, F16 for F16), exactly as ggml does:
//! that rounding is part of llama.cpp's numerics and moves logits by up to ~0.5. The executor
//! does it inside [`Executor::matmul`].
//!
//! Nothing here allocates: every buffer belongs to the executor, sized at start-up.

use super::executor::{Act, BatchToken, BlockTables, Executor, Limits, Out, RopeTable, Step};
use super::weights::{LayerWeights, Mat, Vector};
use super::Model;
use crate::error::{Error, Result};

impl Model {
    /// Run the model over `batch` on `ex`. Token `i` belongs to sequence `batch[i].seq`, whose
    /// block tables are `tables.table(batch[i].seq, group)` and must already cover position
    /// `batch[i].pos`. Positions `0..pos` of that sequence must already be in the KV arena
    /// (from earlier steps or earlier in this batch). Returns the number of logit rows, which
    /// the executor leaves in [`Act::Logits`] in batch order.
    ///
    /// The whole batch is checked before any state changes: an empty or oversized batch, a
    /// token outside the vocabulary, a missing block table or a position beyond the context or
    /// the table is an error and nothing is written.
    pub fn forward<E: Executor, T: BlockTables + ?Sized>(
        &self,
        ex: &mut E,
        batch: &[BatchToken],
        tables: &T,
    ) -> Result<usize> {
        let n_logits = self.check_batch(ex.limits(), batch, tables)?;
        let step = Step { batch, tables };
        let (c, w) = (&self.config, &self.weights);
        let n_tok = batch.len();
        ex.begin(&step)?;

        // x = token_embd[token] * embd_scale                                [T, E]
        ex.embed(&step, &w.token_embd, c.embd_scale)?;
        for (l, lw) in w.layers.iter().enumerate() {
            // x += attention(rmsnorm(x))                                     [T, E]
            self.attention(ex, &step, l, lw)?;
            // The last layer keeps only the rows that want logits, as llama.cpp does
            // (`inp_out_ids`): the other rows' FFN output is never read.
            let rows = if l + 1 == c.n_layer {
                ex.keep_rows(&step)?
            } else {
                n_tok
            };
            if rows == 0 {
                break;
            }
            // x += ffn(rmsnorm(x))                                           [rows, E]
            self.feed_forward(ex, lw, rows)?;
        }

        if n_logits > 0 {
            // logits = (rmsnorm(x) * output_norm) Wout^T                     [L, n_vocab]
            ex.rms_norm(Act::X, Act::OutX, &w.output_norm, n_logits)?;
            ex.matmul(&[(&w.output, Out::Set(Act::Logits))], Act::OutX, n_logits)?;
        }
        ex.finish(n_logits)?;
        Ok(n_logits)
    }

    /// The attention half of layer `l`: `x += post_norm(attend(rope(qkv(rmsnorm(x)))) Wo^T)`.
    fn attention<E: Executor, T: BlockTables + ?Sized>(
        &self,
        ex: &mut E,
        step: &Step<'_, T>,
        l: usize,
        lw: &LayerWeights,
    ) -> Result<()> {
        let c = &self.config;
        let n = step.batch.len();
        // xn = rmsnorm(x) * attn_norm                                        [T, E]
        ex.rms_norm(Act::X, Act::Xn, &lw.attn_norm, n)?;
        // q = xn Wq^T, k = xn Wk^T, v = xn Wv^T (+ biases, qwen2)    [T, Hq*D], [T, Hkv*D] x2
        let qkv = [
            (&lw.wq, Out::Set(Act::Q)),
            (&lw.wk, Out::Set(Act::K)),
            (&lw.wv, Out::Set(Act::V)),
        ];
        ex.matmul(&qkv, Act::Xn, n)?;
        for (bias, dst) in [(&lw.bq, Act::Q), (&lw.bk, Act::K), (&lw.bv, Act::V)] {
            if let Some(bias) = bias {
                ex.add_bias(dst, bias, n)?;
            }
        }
        // Each head of q and k RMS-normed (gemma3)                    [T*Hq, D], [T*Hkv, D]
        if let Some(norm) = &lw.attn_q_norm {
            ex.rms_norm(Act::Q, Act::Q, norm, n * c.n_head)?;
        }
        if let Some(norm) = &lw.attn_k_norm {
            ex.rms_norm(Act::K, Act::K, norm, n * c.n_head_kv)?;
        }
        // q, k = rope(q, pos), rope(k, pos); q *= q_scale; KV[seq][pos] = k, v
        let sliding = c.swa_layers[l];
        let rope = if sliding {
            RopeTable::Local
        } else {
            RopeTable::Global
        };
        ex.rope_and_store_kv(step, l, rope, c.q_scale.unwrap_or(1.0))?;
        // att = softmax(q k^T * scale) v, causal; sliding layers see the last window  [T, Hq*D]
        // (Gemma scales q instead of the scores.)
        let scale = match c.q_scale {
            Some(_) => 1.0,
            None => 1.0 / (c.head_dim as f32).sqrt(),
        };
        let window = if sliding { c.sliding_window } else { 0 };
        ex.attend(step, l, window, scale)?;
        // x += post_norm(att Wo^T)                                           [T, E]
        residual(ex, &lw.wo, Act::Att, lw.attn_post_norm.as_ref(), n)
    }

    /// The feed-forward half of a layer over the first `rows` rows:
    /// `x += post_norm((act(xn Wg^T) * (xn Wu^T)) Wd^T)` with `xn = rmsnorm(x) * ffn_norm`.
    fn feed_forward<E: Executor>(&self, ex: &mut E, lw: &LayerWeights, rows: usize) -> Result<()> {
        // xn = rmsnorm(x) * ffn_norm                                         [rows, E]
        ex.rms_norm(Act::X, Act::Xn, &lw.ffn_norm, rows)?;
        // gate = xn Wg^T, up = xn Wu^T                                       [rows, F] x2
        let gate_up = [
            (&lw.w_gate, Out::Set(Act::Gate)),
            (&lw.w_up, Out::Set(Act::Up)),
        ];
        ex.matmul(&gate_up, Act::Xn, rows)?;
        // gate = silu(gate) * up (SwiGLU), or gelu(gate) * up (GeGLU, gemma3)
        ex.gated_act(self.config.ffn_act, rows)?;
        // x += post_norm(gate Wd^T)                                          [rows, E]
        residual(ex, &lw.w_down, Act::Gate, lw.ffn_post_norm.as_ref(), rows)
    }

    /// Check a batch against the executor's sizes and the block tables; returns the number of
    /// logit rows it asks for.
    fn check_batch<T: BlockTables + ?Sized>(
        &self,
        lim: Limits,
        batch: &[BatchToken],
        tables: &T,
    ) -> Result<usize> {
        let n_tok = batch.len();
        if n_tok == 0 || n_tok > lim.max_tokens {
            return Err(Error::InvalidParam {
                name: "batch",
                what: format!("{n_tok} tokens (must be 1..={})", lim.max_tokens),
            });
        }
        let n_logits = batch.iter().filter(|b| b.logits).count();
        if n_logits > lim.max_logits {
            return Err(Error::InvalidParam {
                name: "batch",
                what: format!(
                    "{n_logits} logit rows requested, at most {}",
                    lim.max_logits
                ),
            });
        }
        let bs = lim.block_size;
        for b in batch {
            let Some(table) = tables.table(b.seq, 0) else {
                return Err(Error::InvalidParam {
                    name: "batch",
                    what: format!(
                        "token refers to sequence {}, which has no block table",
                        b.seq
                    ),
                });
            };
            if (1..lim.kv_groups)
                .any(|g| tables.table(b.seq, g).map(<[_]>::len) != Some(table.len()))
            {
                return Err(Error::InvalidParam {
                    name: "batch",
                    what: format!(
                        "sequence {} lacks a block table for one of the {} layer groups",
                        b.seq, lim.kv_groups
                    ),
                });
            }
            if b.token as usize >= self.config.n_vocab {
                return Err(Error::InvalidParam {
                    name: "batch",
                    what: format!(
                        "token id {} is outside the vocabulary ({})",
                        b.token, self.config.n_vocab
                    ),
                });
            }
            if b.pos >= lim.n_ctx || b.pos / bs >= table.len() {
                return Err(Error::ContextFull {
                    n_ctx: lim.n_ctx.min(table.len() * bs),
                    requested: b.pos + 1,
                });
            }
        }
        Ok(n_logits)
    }
}

/// `x += post_norm(src W^T)` over `rows` rows: the residual add of a projection, its output
/// RMS-normed first where the layer has such a norm (gemma3).
fn residual<E: Executor>(
    ex: &mut E,
    w: &Mat,
    src: Act,
    post_norm: Option<&Vector>,
    rows: usize,
) -> Result<()> {
    match post_norm {
        None => ex.matmul(&[(w, Out::Add(Act::X))], src, rows),
        Some(norm) => {
            ex.matmul(&[(w, Out::Set(Act::Proj))], src, rows)?;
            ex.rms_norm(Act::Proj, Act::Proj, norm, rows)?;
            ex.add(Act::X, Act::Proj, rows)
        }
    }
}
