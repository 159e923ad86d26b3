//! Which type each tensor becomes: llama-quantize's choice, rule for rule, so that a model
//! converted here holds the same tensors as one quantized by llama-quantize (without an
//! importance matrix) from the same input.
//!
//! A uniform target converts every weight matrix, except that a k-quant (256-element blocks) falls
//! back, for matrices whose rows are not a multiple of 256, to the 32-element type llama-quantize
//! picks (Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0). A mix (`Q4_K_M`, …) starts from its k-quant
//! and gives more bits where llama-quantize does: the output matrix (or the tied token
//! embeddings) in Q6_K, and the value projections and FFN down projections of some layers.

use std::fmt;

use ember_kernels::GgmlType;

/// One of llama-quantize's k-quant mixes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KMix {
    /// `Q4_K_S`: Q4_K; Q5_K for the first four value projections and the first eighth of the
    /// FFN down projections.
    Q4KS,
    /// `Q4_K_M`: Q4_K; Q6_K for half the value and FFN down projections (first and last
    /// eighth of the layers, every third between).
    Q4KM,
    /// `Q5_K_S`: Q5_K throughout.
    Q5KS,
    /// `Q5_K_M`: Q5_K; Q6_K where `Q4_K_M` has it.
    Q5KM,
}

impl KMix {
    /// Every mix, for parsers and help texts.
    pub const ALL: [KMix; 4] = [KMix::Q4KS, KMix::Q4KM, KMix::Q5KS, KMix::Q5KM];

    /// llama.cpp's name (`Q4_K_M`).
    pub fn name(self) -> &'static str {
        match self {
            KMix::Q4KS => "Q4_K_S",
            KMix::Q4KM => "Q4_K_M",
            KMix::Q5KS => "Q5_K_S",
            KMix::Q5KM => "Q5_K_M",
        }
    }

    fn base(self) -> GgmlType {
        match self {
            KMix::Q4KS | KMix::Q4KM => GgmlType::Q4_K,
            KMix::Q5KS | KMix::Q5KM => GgmlType::Q5_K,
        }
    }
}

/// What the weight matrices of a converted model become.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quantization {
    /// Every weight matrix in this type (k-quants with llama-quantize's fallback for rows that
    /// are not a multiple of 256).
    Uniform(GgmlType),
    /// One of llama-quantize's k-quant mixes.
    Mix(KMix),
}

impl From<GgmlType> for Quantization {
    fn from(t: GgmlType) -> Self {
        Quantization::Uniform(t)
    }
}

impl fmt::Display for Quantization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Quantization::Uniform(t) => f.write_str(t.name()),
            Quantization::Mix(m) => f.write_str(m.name()),
        }
    }
}

impl Quantization {
    /// The `general.file_type` (llama.cpp's `llama_ftype`) a file of this quantization declares;
    /// `None` for types llama.cpp has no file type for.
    pub fn file_type(self) -> Option<u32> {
        Some(match self {
            Quantization::Mix(KMix::Q4KS) | Quantization::Uniform(GgmlType::Q4_K) => 14,
            Quantization::Mix(KMix::Q4KM) => 15,
            Quantization::Mix(KMix::Q5KS) | Quantization::Uniform(GgmlType::Q5_K) => 16,
            Quantization::Mix(KMix::Q5KM) => 17,
            Quantization::Uniform(t) => match t {
                GgmlType::F32 => 0,
                GgmlType::F16 => 1,
                GgmlType::Q4_0 => 2,
                GgmlType::Q4_1 => 3,
                GgmlType::Q8_0 => 7,
                GgmlType::Q5_0 => 8,
                GgmlType::Q5_1 => 9,
                GgmlType::Q6_K => 18,
                GgmlType::BF16 => 32,
                _ => return None,
            },
        })
    }
}

/// Whether llama-quantize quantizes this tensor at all (its `tensor_allows_quantization`, for
/// the names of the architectures Ember loads): matrices named `*weight`, not norms.
pub fn quantizable(name: &str, n_dims: u32) -> bool {
    n_dims >= 2 && name.ends_with("weight") && !name.contains("_norm.weight")
}

/// The model facts the mixes look at.
#[derive(Clone, Copy, Debug)]
pub struct ModelShape {
    /// `{arch}.block_count`.
    pub n_layer: usize,
    /// Tensors named `*attn_v.weight` / `*attn_qkv.weight` / `*attn_kv_b.weight`.
    pub n_attn_v: usize,
    /// No `output.weight`: the token embeddings are also the output matrix.
    pub tied_embeddings: bool,
    /// Llama 70B (80 blocks, grouped-query attention), whose value projections get more bits.
    pub llama_70b: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Category {
    Output,
    TokenEmbd,
    AttnV,
    FfnDown,
    Other,
}

/// A value projection (or a fused one holding it), as llama-quantize counts them.
pub fn is_attn_v(name: &str) -> bool {
    category(name) == Category::AttnV
}

fn category(name: &str) -> Category {
    if name == "output.weight" {
        Category::Output
    } else if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
        Category::TokenEmbd
    } else if name.contains("attn_qkv.weight")
        || name.contains("attn_kv_b.weight")
        || name.contains("attn_v.weight")
    {
        Category::AttnV
    } else if name.contains("ffn_down") {
        Category::FfnDown
    } else {
        Category::Other
    }
}

/// Counts of the tensors seen so far, in file order (llama-quantize counts value and FFN down
/// projections in the order it meets them, not by their block number).
#[derive(Default)]
pub struct Counters {
    attn_v: usize,
    ffn_down: usize,
}

/// The first and last eighth of the layers and every third between: where `_M` mixes put Q6_K.
fn use_more_bits(i: usize, n: usize) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// The type of the quantizable tensor `name` with rows of `cols` elements, currently of type
/// `current`; `seen` advances as llama-quantize's counters do.
pub fn target_type(
    q: Quantization,
    shape: &ModelShape,
    name: &str,
    cols: u64,
    seen: &mut Counters,
) -> GgmlType {
    let divides = |t: GgmlType| cols.is_multiple_of(t.block_size() as u64);
    let chosen = match q {
        Quantization::Uniform(t) => t,
        Quantization::Mix(mix) => {
            let base = mix.base();
            let cat = category(name);
            match cat {
                Category::Output | Category::TokenEmbd
                    if cat == Category::Output || shape.tied_embeddings =>
                {
                    if divides(base) {
                        GgmlType::Q6_K
                    } else {
                        GgmlType::Q8_0
                    }
                }
                Category::AttnV => {
                    let i = seen.attn_v;
                    seen.attn_v += 1;
                    let mut t = match mix {
                        KMix::Q4KM | KMix::Q5KM if use_more_bits(i, shape.n_attn_v) => {
                            GgmlType::Q6_K
                        }
                        KMix::Q4KS if i < 4 => GgmlType::Q5_K,
                        _ => base,
                    };
                    if shape.llama_70b && t == GgmlType::Q4_K {
                        t = GgmlType::Q5_K;
                    }
                    t
                }
                Category::FfnDown => {
                    let (i, n) = (seen.ffn_down, shape.n_layer);
                    seen.ffn_down += 1;
                    match mix {
                        KMix::Q4KM | KMix::Q5KM if use_more_bits(i, n) => GgmlType::Q6_K,
                        KMix::Q4KS if i < n / 8 => GgmlType::Q5_K,
                        _ => base,
                    }
                }
                _ => base,
            }
        }
    };
    if divides(chosen) {
        return chosen;
    }
    // llama-quantize's `tensor_type_fallback`.
    let fallback = match chosen {
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        other => other,
    };
    if divides(fallback) {
        fallback
    } else {
        GgmlType::F16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_bits_layers_match_llama_quantize_for_30_blocks() {
        // n/8 = 3, 7n/8 = 26: layers 0-2, 26-29, and 3 + 2, 3 + 5, ... between.
        let got: Vec<usize> = (0..30).filter(|&i| use_more_bits(i, 30)).collect();
        assert_eq!(got, [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]);
    }

    #[test]
    fn k_quants_fall_back_for_short_rows() {
        let shape = ModelShape {
            n_layer: 30,
            n_attn_v: 30,
            tied_embeddings: true,
            llama_70b: false,
        };
        let mut c = Counters::default();
        let t = |q, name, cols, c: &mut Counters| target_type(q, &shape, name, cols, c);
        let q4 = Quantization::Uniform(GgmlType::Q4_K);
        assert_eq!(t(q4, "blk.0.attn_q.weight", 576, &mut c), GgmlType::Q5_0);
        assert_eq!(t(q4, "blk.0.ffn_down.weight", 1536, &mut c), GgmlType::Q4_K);
        let q6 = Quantization::Uniform(GgmlType::Q6_K);
        assert_eq!(t(q6, "blk.0.attn_q.weight", 576, &mut c), GgmlType::Q8_0);
        let q5 = Quantization::Uniform(GgmlType::Q5_K);
        assert_eq!(t(q5, "blk.0.attn_q.weight", 576, &mut c), GgmlType::Q5_1);
        assert_eq!(t(q5, "x.weight", 48, &mut c), GgmlType::F16);
        // Tied embeddings with short rows: Q8_0, as llama-quantize writes them.
        let m = Quantization::Mix(KMix::Q4KM);
        assert_eq!(t(m, "token_embd.weight", 576, &mut c), GgmlType::Q8_0);
        assert_eq!(t(m, "token_embd.weight", 2048, &mut c), GgmlType::Q6_K);
    }

    #[test]
    fn q4_k_m_counts_value_and_down_projections_in_file_order() {
        let shape = ModelShape {
            n_layer: 16,
            n_attn_v: 16,
            tied_embeddings: false,
            llama_70b: false,
        };
        let mut c = Counters::default();
        let m = Quantization::Mix(KMix::Q4KM);
        let v: Vec<GgmlType> = (0..16)
            .map(|i| target_type(m, &shape, &format!("blk.{i}.attn_v.weight"), 2048, &mut c))
            .collect();
        // n/8 = 2, 7n/8 = 14: 0, 1, 4, 7, 10, 13, 14, 15.
        let six: Vec<usize> = (0..16).filter(|&i| v[i] == GgmlType::Q6_K).collect();
        assert_eq!(six, [0, 1, 4, 7, 10, 13, 14, 15]);
        assert!(v
            .iter()
            .all(|&t| t == GgmlType::Q6_K || t == GgmlType::Q4_K));
        // Untied token embeddings keep the mix's base type; the output gets Q6_K.
        assert_eq!(
            target_type(m, &shape, "token_embd.weight", 2048, &mut c),
            GgmlType::Q4_K
        );
        assert_eq!(
            target_type(m, &shape, "output.weight", 2048, &mut c),
            GgmlType::Q6_K
        );
        let s = Quantization::Mix(KMix::Q4KS);
        let mut c = Counters::default();
        let down: Vec<GgmlType> = (0..16)
            .map(|i| target_type(s, &shape, &format!("blk.{i}.ffn_down.weight"), 8192, &mut c))
            .collect();
        assert_eq!(down[..2], [GgmlType::Q5_K; 2]);
        assert!(down[2..].iter().all(|&t| t == GgmlType::Q4_K));
    }
}
