//! The model's weights: typed views of tensors in the memory-mapped GGUF, checked at load.
//!
//! Nothing here copies weight data: a [`Mat`] records the byte range of a tensor in the file and
//! its type (the kernels that compute with it belong to the executor); `f32` vectors (norms, biases) are reinterpreted in place.

use std::ops::Range;

use ember_kernels::traits::reference_traits;
use ember_kernels::GgmlType;

use super::config::{Arch, Config};
use crate::error::{Error, Result};
use crate::gguf::{GgufFile, TensorInfo};

/// A weight matrix `[rows, cols]` (ggml `ne = [cols, rows]`): `rows` outputs, each a dot product
/// over `cols` inputs.
#[derive(Clone, Debug)]
pub struct Mat {
    /// Tensor name (for errors and `ember info`).
    pub name: String,
    /// Storage type.
    pub ty: GgmlType,
    /// Output features.
    pub rows: usize,
    /// Input features (row length).
    pub cols: usize,
    /// Bytes of one row.
    pub row_bytes: usize,
    /// Byte range of the tensor in the file.
    pub range: Range<usize>,
    /// The activation type its dot products take (ggml's `vec_dot_type`, fixed by the format:
    /// the same on every kernel path).
    pub act_type: GgmlType,
}

/// An f32 vector (norm weight or bias), by byte range in the file.
#[derive(Clone, Debug)]
pub struct Vector {
    /// Byte range in the file (4-byte aligned, checked at load).
    pub range: Range<usize>,
    /// Elements.
    pub len: usize,
}

/// Weights of one transformer block.
#[derive(Clone, Debug)]
pub struct LayerWeights {
    /// RMSNorm before attention `[n_embd]`.
    pub attn_norm: Vector,
    /// Query projection `[q_dim, n_embd]`.
    pub wq: Mat,
    /// Key projection `[kv_dim, n_embd]`.
    pub wk: Mat,
    /// Value projection `[kv_dim, n_embd]`.
    pub wv: Mat,
    /// Output projection `[n_embd, q_dim]`.
    pub wo: Mat,
    /// Query/key/value biases (qwen2) `[q_dim]`, `[kv_dim]`, `[kv_dim]`.
    pub bq: Option<Vector>,
    /// Key bias.
    pub bk: Option<Vector>,
    /// Value bias.
    pub bv: Option<Vector>,
    /// Per-head RMSNorm of the queries (gemma3) `[head_dim]`.
    pub attn_q_norm: Option<Vector>,
    /// Per-head RMSNorm of the keys (gemma3) `[head_dim]`.
    pub attn_k_norm: Option<Vector>,
    /// RMSNorm of the attention output before the residual add (gemma3) `[n_embd]`.
    pub attn_post_norm: Option<Vector>,
    /// RMSNorm before the FFN `[n_embd]`.
    pub ffn_norm: Vector,
    /// RMSNorm of the FFN output before the residual add (gemma3) `[n_embd]`.
    pub ffn_post_norm: Option<Vector>,
    /// FFN gate `[n_ff, n_embd]`.
    pub w_gate: Mat,
    /// FFN up `[n_ff, n_embd]`.
    pub w_up: Mat,
    /// FFN down `[n_embd, n_ff]`.
    pub w_down: Mat,
}

/// All weights of the model.
#[derive(Clone, Debug)]
pub struct Weights {
    /// Token embedding `[n_vocab, n_embd]` (rows are looked up, not multiplied).
    pub token_embd: Mat,
    /// Transformer blocks.
    pub layers: Vec<LayerWeights>,
    /// Final RMSNorm `[n_embd]`.
    pub output_norm: Vector,
    /// Output projection `[n_vocab, n_embd]`; the embedding itself when tied.
    pub output: Mat,
    /// Whether `output` is the tied embedding.
    pub tied_output: bool,
    /// Per-dimension RoPE frequency divisors (Llama 3.1-style scaling) `[head_dim / 2]`.
    pub rope_freqs: Option<Vector>,
}

fn tensor<'a>(f: &'a GgufFile, name: &str) -> Result<&'a TensorInfo> {
    f.tensor(name)
        .ok_or_else(|| Error::MissingTensor(name.to_string()))
}

fn mat(f: &GgufFile, name: &str, rows: Option<usize>, cols: usize) -> Result<Mat> {
    let t = tensor(f, name)?;
    let bad = |what: String| Error::BadTensor {
        name: name.into(),
        what,
    };
    if t.n_dims != 2 || t.ne[0] != cols as u64 || rows.is_some_and(|r| t.ne[1] != r as u64) {
        let want_rows = rows.map_or("N".to_string(), |r| r.to_string());
        return Err(bad(format!(
            "shape {} does not match the metadata (expected [{cols}, {want_rows}])",
            t.shape_string()
        )));
    }
    let format = reference_traits(t.ty)
        .filter(|_| t.ty.is_supported())
        .ok_or_else(|| Error::UnsupportedType {
            tensor: name.into(),
            ty: t.ty.name().into(),
        })?;
    let row_bytes =
        t.ty.row_bytes(t.ne[0])
            .ok_or_else(|| bad("row size overflows".into()))?;
    Ok(Mat {
        name: name.into(),
        ty: t.ty,
        rows: t.ne[1] as usize,
        cols,
        row_bytes: row_bytes as usize,
        range: t.data.clone(),
        act_type: format.vec_dot_type,
    })
}

fn vector(f: &GgufFile, name: &str, len: usize) -> Result<Vector> {
    let t = tensor(f, name)?;
    if t.ty != GgmlType::F32 {
        return Err(Error::BadTensor {
            name: name.into(),
            what: format!("type {} where F32 is required for norms and biases", t.ty),
        });
    }
    if t.n_elements() != len as u64 || t.ne[0] != len as u64 {
        return Err(Error::BadTensor {
            name: name.into(),
            what: format!(
                "shape {} does not match the metadata (expected [{len}])",
                t.shape_string()
            ),
        });
    }
    let v = Vector {
        range: t.data.clone(),
        len,
    };
    // The data offset is aligned in the file; the mapping is page-aligned, so this only fails for
    // an in-memory image at an odd address or `general.alignment` < 4.
    if f32_slice(f.bytes(), &v).is_none() {
        return Err(Error::BadTensor {
            name: name.into(),
            what: "data is not 4-byte aligned in memory".into(),
        });
    }
    Ok(v)
}

fn opt_vector(f: &GgufFile, name: &str, len: usize) -> Result<Option<Vector>> {
    match f.tensor(name) {
        None => Ok(None),
        Some(_) => vector(f, name, len).map(Some),
    }
}

/// View `v` of `bytes` as `&[f32]`; `None` if misaligned (checked once at load).
pub fn f32_slice<'a>(bytes: &'a [u8], v: &Vector) -> Option<&'a [f32]> {
    let raw = bytes.get(v.range.clone())?;
    // SAFETY: every bit pattern is a valid f32, and `align_to` only puts correctly aligned,
    // fully in-bounds elements in the middle slice.
    let (pre, mid, post) = unsafe { raw.align_to::<f32>() };
    (pre.is_empty() && post.is_empty() && mid.len() == v.len).then_some(mid)
}

impl LayerWeights {
    /// The layer's matrices (the products of its forward pass).
    pub fn matrices(&self) -> [&Mat; 7] {
        [
            &self.wq,
            &self.wk,
            &self.wv,
            &self.wo,
            &self.w_gate,
            &self.w_up,
            &self.w_down,
        ]
    }

    /// The layer's f32 vectors that it has (norm weights and biases).
    pub fn vectors(&self) -> impl Iterator<Item = &Vector> {
        [
            Some(&self.attn_norm),
            self.bq.as_ref(),
            self.bk.as_ref(),
            self.bv.as_ref(),
            self.attn_q_norm.as_ref(),
            self.attn_k_norm.as_ref(),
            self.attn_post_norm.as_ref(),
            Some(&self.ffn_norm),
            self.ffn_post_norm.as_ref(),
        ]
        .into_iter()
        .flatten()
    }
}

impl Weights {
    /// Every matrix the forward pass multiplies with (not the embedding table, whose rows are
    /// looked up, unless it is also the tied output).
    pub fn matrices(&self) -> impl Iterator<Item = &Mat> {
        self.layers
            .iter()
            .flat_map(|l| l.matrices())
            .chain([&self.output])
    }

    /// Every f32 vector the forward pass reads (norm weights and biases).
    pub fn vectors(&self) -> impl Iterator<Item = &Vector> {
        self.layers
            .iter()
            .flat_map(|l| l.vectors())
            .chain([&self.output_norm])
    }

    /// Find and check every tensor the architecture needs. Sets `cfg.n_vocab`.
    pub fn from_gguf(f: &GgufFile, cfg: &mut Config) -> Result<Weights> {
        let e = cfg.n_embd;
        let token_embd = mat(f, "token_embd.weight", None, e)?;
        cfg.n_vocab = token_embd.rows;
        // Every row of the embedding (and of the output projection) must be a token the
        // tokenizer can decode, and every token an embedding row: llama.cpp requires the same.
        if let Some(n_tokens) = f.array_len("tokenizer.ggml.tokens") {
            if n_tokens != cfg.n_vocab as u64 {
                return Err(Error::BadTensor {
                    name: "token_embd.weight".into(),
                    what: format!(
                        "{} rows, but the vocabulary (tokenizer.ggml.tokens) has {n_tokens} \
                         tokens",
                        cfg.n_vocab
                    ),
                });
            }
        }
        let (output, tied_output) = match f.tensor("output.weight") {
            Some(_) => (mat(f, "output.weight", Some(cfg.n_vocab), e)?, false),
            None => (token_embd.clone(), true),
        };
        let qkv_bias = cfg.arch == Arch::Qwen2;
        // Gemma's norms are stored as llama.cpp's converter writes them: (1 + w), so every norm
        // is a plain `rmsnorm(x) * weight` here too.
        let gemma = cfg.arch == Arch::Gemma3;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let n = |s: &str| format!("blk.{i}.{s}");
            let bias = |s: &str, len| -> Result<Option<Vector>> {
                if qkv_bias {
                    vector(f, &n(s), len).map(Some)
                } else {
                    opt_vector(f, &n(s), len)
                }
            };
            let gemma_norm = |s: &str, len| -> Result<Option<Vector>> {
                if gemma {
                    vector(f, &n(s), len).map(Some)
                } else {
                    Ok(None)
                }
            };
            layers.push(LayerWeights {
                attn_norm: vector(f, &n("attn_norm.weight"), e)?,
                wq: mat(f, &n("attn_q.weight"), Some(cfg.q_dim()), e)?,
                wk: mat(f, &n("attn_k.weight"), Some(cfg.kv_dim()), e)?,
                wv: mat(f, &n("attn_v.weight"), Some(cfg.kv_dim()), e)?,
                wo: mat(f, &n("attn_output.weight"), Some(e), cfg.q_dim())?,
                bq: bias("attn_q.bias", cfg.q_dim())?,
                bk: bias("attn_k.bias", cfg.kv_dim())?,
                bv: bias("attn_v.bias", cfg.kv_dim())?,
                attn_q_norm: gemma_norm("attn_q_norm.weight", cfg.head_dim)?,
                attn_k_norm: gemma_norm("attn_k_norm.weight", cfg.head_dim)?,
                attn_post_norm: gemma_norm("post_attention_norm.weight", e)?,
                ffn_norm: vector(f, &n("ffn_norm.weight"), e)?,
                ffn_post_norm: gemma_norm("post_ffw_norm.weight", e)?,
                w_gate: mat(f, &n("ffn_gate.weight"), Some(cfg.n_ff), e)?,
                w_up: mat(f, &n("ffn_up.weight"), Some(cfg.n_ff), e)?,
                w_down: mat(f, &n("ffn_down.weight"), Some(e), cfg.n_ff)?,
            });
        }
        Ok(Weights {
            token_embd,
            layers,
            output_norm: vector(f, "output_norm.weight", e)?,
            output,
            tied_output,
            rope_freqs: opt_vector(f, "rope_freqs.weight", cfg.head_dim / 2)?,
        })
    }
}
