//! Model hyper-parameters read from GGUF metadata (`{arch}.*` keys).

use crate::error::{Error, Result};
use crate::gguf::GgufFile;

/// Largest head dimension supported (Gemma 3 uses 256); attention keeps one head row on the stack.
pub const MAX_HEAD_DIM: usize = 256;

/// Architectures Ember implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2/3, SmolLM2, Mistral, TinyLlama: NORM RoPE (the converter permuted Q/K for it).
    Llama,
    /// Qwen2 / Qwen2.5: QKV biases, NEOX RoPE.
    Qwen2,
    /// Gemma 3: embeddings scaled by sqrt(n_embd), per-head Q/K RMSNorm, post-attention and
    /// post-FFN RMSNorms, GELU-gated FFN, NEOX RoPE, sliding-window attention on five layers of
    /// every six with their own RoPE base.
    Gemma3,
}

impl Arch {
    /// GGUF name (`general.architecture`).
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Gemma3 => "gemma3",
        }
    }
}

/// The activation of the gated feed-forward network: `act(x Wg^T) * (x Wu^T)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FfnAct {
    /// SiLU (SwiGLU): llama, qwen2.
    Silu,
    /// GELU, tanh approximation, through ggml's f16 lookup table (GeGLU): gemma3.
    Gelu,
}

/// How RoPE pairs the dimensions of a head.
///
/// Getting this wrong does not fail loudly: the model runs and produces fluent-looking garbage.
/// `Norm` rotates `(x[2i], x[2i+1])`; `Neox` rotates `(x[i], x[i + d/2])`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopePairing {
    /// Adjacent pairs (ggml `GGML_ROPE_TYPE_NORM`), used by `llama`.
    Norm,
    /// Halves (ggml `GGML_ROPE_TYPE_NEOX`), used by `qwen2`.
    Neox,
}

/// Hyper-parameters of a llama-family model.
#[derive(Clone, Debug)]
pub struct Config {
    /// Architecture.
    pub arch: Arch,
    /// Vocabulary size (rows of `token_embd`).
    pub n_vocab: usize,
    /// Model width.
    pub n_embd: usize,
    /// Transformer blocks.
    pub n_layer: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (GQA: `n_head` is a multiple of it).
    pub n_head_kv: usize,
    /// Dimension of one head.
    pub head_dim: usize,
    /// Hidden width of the feed-forward network.
    pub n_ff: usize,
    /// Context length the model was trained for.
    pub n_ctx_train: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// RoPE base frequency.
    pub rope_base: f32,
    /// RoPE position scale (1 / linear scaling factor; 1.0 = none).
    pub rope_freq_scale: f32,
    /// RoPE pairing convention.
    pub rope_pairing: RopePairing,
    /// Dimensions rotated per head (`rope.dimension_count`, usually `head_dim`).
    pub rope_dims: usize,
    /// Sliding-window attention: on the layers `swa_layers` marks, a query at position `p` sees
    /// only keys at positions `p - sliding_window + 1 ..= p` (llama.cpp's
    /// `LLAMA_SWA_TYPE_STANDARD`). 0 = every layer attends to the whole context.
    pub sliding_window: usize,
    /// Per layer, whether it uses the sliding window `[n_layer]` (all false without one).
    pub swa_layers: Vec<bool>,
    /// RoPE base frequency of the sliding-window layers.
    pub rope_base_swa: f32,
    /// Factor applied to the token embeddings (Gemma: sqrt(n_embd); 1 = none).
    pub embd_scale: f32,
    /// Queries are multiplied by this before attention, whose scores are then not scaled
    /// (Gemma: `1 / sqrt(head_dim)`, as llama.cpp's graph does it); `None`: scores are scaled by
    /// `1 / sqrt(head_dim)`.
    pub q_scale: Option<f32>,
    /// Activation of the gated FFN.
    pub ffn_act: FfnAct,
}

fn need_u(f: &GgufFile, key: &str) -> Result<usize> {
    let v = f
        .get_u64(key)?
        .ok_or_else(|| Error::MissingKey(key.to_string()))?;
    usize::try_from(v)
        .ok()
        .filter(|&v| v > 0 && v <= 1 << 24)
        .ok_or_else(|| Error::BadKey {
            key: key.into(),
            what: format!("{v} is out of range (1..=16777216)"),
        })
}

/// RoPE: base frequency, frequency scale (linear scaling) and rotated dimensions (all of them).
fn rope_params(
    f: &GgufFile,
    k: &dyn Fn(&str) -> String,
    head_dim: usize,
) -> Result<(f32, f32, usize)> {
    let rope_base = f.get_f32(&k("rope.freq_base"))?.unwrap_or(10000.0);
    if !(rope_base.is_finite() && rope_base > 1.0) {
        return Err(Error::BadKey {
            key: k("rope.freq_base"),
            what: format!("{rope_base} must be a finite number above 1"),
        });
    }
    let mut rope_freq_scale = 1.0;
    match f.get_str(&k("rope.scaling.type"))? {
        None | Some("none") => {}
        Some("linear") => {
            let factor = f.get_f32(&k("rope.scaling.factor"))?.unwrap_or(1.0);
            if !(factor.is_finite() && factor > 0.0) {
                return Err(Error::BadKey {
                    key: k("rope.scaling.factor"),
                    what: format!("{factor} must be a positive number"),
                });
            }
            rope_freq_scale = 1.0 / factor;
            // A subnormal factor (1e-45) passes the test above but its inverse is inf:
            // every angle would be garbage.
            if !rope_freq_scale.is_finite() {
                return Err(Error::BadKey {
                    key: k("rope.scaling.factor"),
                    what: format!("{factor} is too small (its inverse is not finite)"),
                });
            }
        }
        // Llama 3.1-style scaling is carried by the `rope_freqs.weight` tensor.
        Some("llama3") => {}
        Some(other) => {
            return Err(Error::BadKey {
                key: k("rope.scaling.type"),
                what: format!("RoPE scaling {other:?} is not supported (none, linear, llama3)"),
            })
        }
    }
    let rope_dims = match f.get_u64(&k("rope.dimension_count"))? {
        Some(_) => need_u(f, &k("rope.dimension_count"))?,
        None => head_dim,
    };
    if rope_dims != head_dim {
        return Err(Error::BadKey {
            key: k("rope.dimension_count"),
            what: format!("partial RoPE ({rope_dims} of {head_dim} dims) is not supported"),
        });
    }
    Ok((rope_base, rope_freq_scale, rope_dims))
}

/// Gemma 3's sliding window: its length, which layers use it, their RoPE base; and a refusal of
/// logit soft-capping, which is not implemented.
fn gemma_params(
    f: &GgufFile,
    k: &dyn Fn(&str) -> String,
    n_layer: usize,
    gemma: bool,
) -> Result<(usize, Vec<bool>, f32)> {
    let sliding_window = if gemma {
        need_u(f, &k("attention.sliding_window"))?
    } else {
        0
    };
    // llama.cpp's gemma3: pattern 6, i.e. layers 5, 11, 17, ... attend to the whole
    // context and the others use the window (the GGUF carries no pattern key).
    let swa_layers = (0..n_layer)
        .map(|l| sliding_window > 0 && l % 6 < 5)
        .collect();
    // llama.cpp's default for gemma3's sliding layers when the file has no key.
    let rope_base_swa = f.get_f32(&k("rope.freq_base_swa"))?.unwrap_or(10000.0);
    if !(rope_base_swa.is_finite() && rope_base_swa > 1.0) {
        return Err(Error::BadKey {
            key: k("rope.freq_base_swa"),
            what: format!("{rope_base_swa} must be a finite number above 1"),
        });
    }
    if gemma {
        for key in ["final_logit_softcapping", "attn_logit_softcapping"] {
            if f.get_f32(&k(key))?.is_some_and(|v| v != 0.0) {
                return Err(Error::BadKey {
                    key: k(key),
                    what: "logit soft-capping is not supported".into(),
                });
            }
        }
    }
    Ok((sliding_window, swa_layers, rope_base_swa))
}

impl Config {
    /// Read the hyper-parameters; `n_vocab` is taken from the embedding tensor by the caller.
    pub fn from_gguf(f: &GgufFile) -> Result<Config> {
        let arch_name = f
            .get_str("general.architecture")?
            .ok_or_else(|| Error::MissingKey("general.architecture".into()))?;
        let arch = match arch_name {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "gemma3" => Arch::Gemma3,
            other => return Err(Error::UnsupportedArch(other.to_string())),
        };
        let a = arch.name();
        let k = |s: &str| format!("{a}.{s}");
        let n_embd = need_u(f, &k("embedding_length"))?;
        let n_layer = need_u(f, &k("block_count"))?;
        // Each block has tensors of its own: a count beyond the file's tensors is corrupt, and
        // the per-layer tables sized from it must not be (a fuzzed 14-byte patch asked for 5 GB).
        if n_layer > f.tensors().len() {
            return Err(Error::BadKey {
                key: k("block_count"),
                what: format!(
                    "{n_layer} blocks, but the file has only {} tensors (each block needs its own)",
                    f.tensors().len()
                ),
            });
        }
        let n_head = need_u(f, &k("attention.head_count"))?;
        let n_head_kv = match f.get_u64(&k("attention.head_count_kv"))? {
            Some(_) => need_u(f, &k("attention.head_count_kv"))?,
            None => n_head,
        };
        if n_head % n_head_kv != 0 {
            return Err(Error::BadKey {
                key: k("attention.head_count_kv"),
                what: format!("{n_head} query heads are not a multiple of {n_head_kv} KV heads"),
            });
        }
        let head_dim = match f.get_u64(&k("attention.key_length"))? {
            Some(_) => need_u(f, &k("attention.key_length"))?,
            None => {
                if n_embd % n_head != 0 {
                    return Err(Error::BadKey {
                        key: k("embedding_length"),
                        what: format!("{n_embd} is not a multiple of {n_head} heads"),
                    });
                }
                n_embd / n_head
            }
        };
        if head_dim % 2 != 0 || head_dim > MAX_HEAD_DIM {
            return Err(Error::BadKey {
                key: k("attention.key_length"),
                what: format!("head dimension {head_dim} must be even and at most {MAX_HEAD_DIM}"),
            });
        }
        if let Some(vl) = f.get_u64(&k("attention.value_length"))? {
            if vl != head_dim as u64 {
                return Err(Error::BadKey {
                    key: k("attention.value_length"),
                    what: format!("{vl} differs from the key length {head_dim}: not supported"),
                });
            }
        }
        let n_ff = need_u(f, &k("feed_forward_length"))?;
        let n_ctx_train = need_u(f, &k("context_length"))?;
        let rms_eps = f
            .get_f32(&k("attention.layer_norm_rms_epsilon"))?
            .unwrap_or(1e-5);
        if !(rms_eps.is_finite() && rms_eps >= 0.0) {
            return Err(Error::BadKey {
                key: k("attention.layer_norm_rms_epsilon"),
                what: format!("{rms_eps} is not a finite non-negative number"),
            });
        }
        let (rope_base, rope_freq_scale, rope_dims) = rope_params(f, &k, head_dim)?;
        let gemma = arch == Arch::Gemma3;
        let (sliding_window, swa_layers, rope_base_swa) = gemma_params(f, &k, n_layer, gemma)?;
        Ok(Config {
            arch,
            n_vocab: 0,
            n_embd,
            n_layer,
            n_head,
            n_head_kv,
            head_dim,
            n_ff,
            n_ctx_train,
            rms_eps,
            rope_base,
            rope_freq_scale,
            rope_pairing: match arch {
                Arch::Llama => RopePairing::Norm,
                Arch::Qwen2 | Arch::Gemma3 => RopePairing::Neox,
            },
            rope_dims,
            sliding_window,
            swa_layers,
            rope_base_swa,
            embd_scale: if gemma { (n_embd as f32).sqrt() } else { 1.0 },
            // llama.cpp: 1/sqrt(head_dim) for every Gemma 3 size but 27B (62 layers), which
            // uses 1/sqrt(n_embd / n_head).
            q_scale: gemma.then(|| {
                if n_layer == 62 {
                    1.0 / ((n_embd / n_head) as f32).sqrt()
                } else {
                    1.0 / (head_dim as f32).sqrt()
                }
            }),
            ffn_act: if gemma { FfnAct::Gelu } else { FfnAct::Silu },
        })
    }

    /// Width of all query heads together.
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    /// Width of all key (or value) heads together.
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// The first position a query at `pos` attends to in layer `layer` (0 without a window).
    pub fn attn_start(&self, layer: usize, pos: usize) -> usize {
        if self.swa_layers.get(layer).copied().unwrap_or(false) {
            (pos + 1).saturating_sub(self.sliding_window)
        } else {
            0
        }
    }
}
