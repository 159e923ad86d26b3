//! Per-type kernel table, after ggml's `type_traits_cpu`: for each tensor type, how to
//! dequantize it, how to quantize f32 into it, and its dot product with the activation type it
//! pairs with.
//!
//! To multiply a weight row of type `ty` with an f32 activation vector, quantize the activations
//! once with `reference_traits(vec_dot_type).quantize_act` (for F16 / BF16 weights that is a
//! rounding to f16 / bf16, for Q4_0 / Q5_0 / Q8_0 to Q8_0, Q4_1 / Q5_1 to Q8_1, the k-quants to
//! Q8_K), then call `vec_dot` per row. `from_float` is the file format's reference quantizer (weights);
//! `quantize_act` is what ggml-cpu applies to activations on x86, which rounds differently for
//! Q8_0 / Q8_1. Skipping the activation quantization is not an option: the dots read
//! activation bytes in `vec_dot_type`, and ggml's results include that rounding.

use crate::reference::{float, kquant_search, q4_0, q4_1, q4_k, q5_0, q5_1, q5_k, q6_k, q8, q8_k};
use crate::GgmlType;

/// Dequantizes `src`, which holds exactly `out.len() / block_size` blocks, into `out`.
pub type ToFloatFn = fn(src: &[u8], out: &mut [f32]);
/// Quantizes `src` (length a multiple of the block size) into `out` (its exact byte length).
pub type FromFloatFn = fn(src: &[f32], out: &mut [u8]);
/// Dot product of one row of `n` elements: `w` in the weight type, `a` in its `vec_dot_type`.
pub type VecDotFn = fn(n: usize, w: &[u8], a: &[u8]) -> f32;

/// The kernels of one tensor type.
#[derive(Debug)]
pub struct TypeTraits {
    /// The tensor type.
    pub ty: GgmlType,
    /// Activation type the dot expects (F32, F16, BF16, Q8_0, Q8_1, Q8_K).
    pub vec_dot_type: GgmlType,
    /// Dequantize: `src` holds exactly `out.len() / block_size` blocks.
    pub to_float: ToFloatFn,
    /// Quantize `src` (len multiple of block_size) into `out` (exact byte length): ggml's
    /// reference quantizer of the format (for the k-quants an iterative search, see
    /// [`crate::reference::kquant_search`]). `None` for none of the supported types today.
    pub from_float: Option<FromFloatFn>,
    /// Quantize activations before a product (`None` for types that are never activations).
    pub quantize_act: Option<FromFloatFn>,
    /// Dot product of one row of `n` elements: `w` in this type, `a` in `vec_dot_type`.
    pub vec_dot: VecDotFn,
    /// The dot llama.cpp's x86 backend uses instead of `vec_dot` for some rows of a product of
    /// several activation rows, where it rounds differently (`None`: `vec_dot` for all rows).
    pub vec_dot_batched: Option<(BatchRows, VecDotFn)>,
}

/// Which rows of an `n`-row product take a type's batched dot (see
/// [`TypeTraits::vec_dot_batched`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchRows {
    /// Rows `0 .. n - n % 4`: those ggml's repacked kernels take four at a time (the rest go
    /// one by one). Q4_K (`gemm_q4_K_8x8_q8_K`).
    FullQuads,
    /// Every row once `n` reaches the bound: ggml's tiled k-quant matmul, taken from 8 rows.
    /// Q6_K.
    AllFrom(usize),
}

impl TypeTraits {
    /// The dot for row `t` of an `n_rows`-row product.
    #[inline]
    pub fn dot_for_row(&self, t: usize, n_rows: usize) -> VecDotFn {
        match self.vec_dot_batched {
            Some((BatchRows::FullQuads, f)) if t < n_rows - n_rows % 4 => f,
            Some((BatchRows::AllFrom(m), f)) if n_rows >= m => f,
            _ => self.vec_dot,
        }
    }
}

static F32: TypeTraits = TypeTraits {
    ty: GgmlType::F32,
    vec_dot_type: GgmlType::F32,
    to_float: float::dequantize_row_f32,
    from_float: Some(float::quantize_row_f32),
    quantize_act: Some(float::quantize_row_f32),
    vec_dot: float::vec_dot_f32,
    vec_dot_batched: None,
};

static F16: TypeTraits = TypeTraits {
    ty: GgmlType::F16,
    vec_dot_type: GgmlType::F16,
    to_float: float::dequantize_row_f16,
    from_float: Some(float::quantize_row_f16),
    quantize_act: Some(float::quantize_row_f16),
    vec_dot: float::vec_dot_f16,
    vec_dot_batched: None,
};

static BF16: TypeTraits = TypeTraits {
    ty: GgmlType::BF16,
    vec_dot_type: GgmlType::BF16,
    to_float: float::dequantize_row_bf16,
    from_float: Some(float::quantize_row_bf16),
    quantize_act: Some(float::quantize_row_bf16),
    vec_dot: float::vec_dot_bf16,
    vec_dot_batched: None,
};

static Q4_0: TypeTraits = TypeTraits {
    ty: GgmlType::Q4_0,
    vec_dot_type: GgmlType::Q8_0,
    to_float: q4_0::dequantize_row_q4_0,
    from_float: Some(q4_0::quantize_row_q4_0),
    quantize_act: None,
    vec_dot: q4_0::vec_dot_q4_0_q8_0,
    vec_dot_batched: None,
};

static Q4_1: TypeTraits = TypeTraits {
    ty: GgmlType::Q4_1,
    vec_dot_type: GgmlType::Q8_1,
    to_float: q4_1::dequantize_row_q4_1,
    from_float: Some(q4_1::quantize_row_q4_1),
    quantize_act: None,
    vec_dot: q4_1::vec_dot_q4_1_q8_1,
    vec_dot_batched: None,
};

static Q5_0: TypeTraits = TypeTraits {
    ty: GgmlType::Q5_0,
    vec_dot_type: GgmlType::Q8_0,
    to_float: q5_0::dequantize_row_q5_0,
    from_float: Some(q5_0::quantize_row_q5_0),
    quantize_act: None,
    vec_dot: q5_0::vec_dot_q5_0_q8_0,
    vec_dot_batched: None,
};

static Q5_1: TypeTraits = TypeTraits {
    ty: GgmlType::Q5_1,
    vec_dot_type: GgmlType::Q8_1,
    to_float: q5_1::dequantize_row_q5_1,
    from_float: Some(q5_1::quantize_row_q5_1),
    quantize_act: None,
    vec_dot: q5_1::vec_dot_q5_1_q8_1,
    vec_dot_batched: None,
};

static Q8_0: TypeTraits = TypeTraits {
    ty: GgmlType::Q8_0,
    vec_dot_type: GgmlType::Q8_0,
    to_float: q8::dequantize_row_q8_0,
    from_float: Some(q8::quantize_row_q8_0),
    quantize_act: Some(q8::quantize_row_q8_0_act),
    vec_dot: q8::vec_dot_q8_0_q8_0,
    vec_dot_batched: None,
};

static Q8_1: TypeTraits = TypeTraits {
    ty: GgmlType::Q8_1,
    vec_dot_type: GgmlType::Q8_1,
    to_float: q8::dequantize_row_q8_1,
    from_float: Some(q8::quantize_row_q8_1),
    quantize_act: Some(q8::quantize_row_q8_1_act),
    vec_dot: q8::vec_dot_q8_1_q8_1,
    vec_dot_batched: None,
};

static Q4_K: TypeTraits = TypeTraits {
    ty: GgmlType::Q4_K,
    vec_dot_type: GgmlType::Q8_K,
    to_float: q4_k::dequantize_row_q4_k,
    from_float: Some(kquant_search::quantize_row_q4_k),
    quantize_act: None,
    vec_dot: q4_k::vec_dot_q4_k_q8_k,
    vec_dot_batched: Some((BatchRows::FullQuads, q4_k::vec_dot_q4_k_q8_k_x4)),
};

static Q5_K: TypeTraits = TypeTraits {
    ty: GgmlType::Q5_K,
    vec_dot_type: GgmlType::Q8_K,
    to_float: q5_k::dequantize_row_q5_k,
    from_float: Some(kquant_search::quantize_row_q5_k),
    quantize_act: None,
    vec_dot: q5_k::vec_dot_q5_k_q8_k,
    vec_dot_batched: None,
};

static Q6_K: TypeTraits = TypeTraits {
    ty: GgmlType::Q6_K,
    vec_dot_type: GgmlType::Q8_K,
    to_float: q6_k::dequantize_row_q6_k,
    from_float: Some(kquant_search::quantize_row_q6_k),
    quantize_act: None,
    vec_dot: q6_k::vec_dot_q6_k_q8_k,
    vec_dot_batched: Some((BatchRows::AllFrom(8), q6_k::vec_dot_q6_k_q8_k_tiled)),
};

static Q8_K: TypeTraits = TypeTraits {
    ty: GgmlType::Q8_K,
    vec_dot_type: GgmlType::Q8_K,
    to_float: q8_k::dequantize_row_q8_k,
    from_float: Some(q8_k::quantize_row_q8_k),
    quantize_act: Some(q8_k::quantize_row_q8_k),
    vec_dot: q8_k::vec_dot_q8_k_q8_k,
    vec_dot_batched: None,
};

/// The reference table entry of `ty`; None for types Ember cannot compute with.
///
/// Entries exist for the weight types of [`crate::SUPPORTED`] and for the activation-only types
/// Q8_1 and Q8_K (whose `vec_dot` dots two activation rows; ggml has no such kernel).
pub fn reference_traits(ty: GgmlType) -> Option<&'static TypeTraits> {
    Some(match ty {
        GgmlType::F32 => &F32,
        GgmlType::F16 => &F16,
        GgmlType::BF16 => &BF16,
        GgmlType::Q4_0 => &Q4_0,
        GgmlType::Q4_1 => &Q4_1,
        GgmlType::Q5_0 => &Q5_0,
        GgmlType::Q5_1 => &Q5_1,
        GgmlType::Q8_0 => &Q8_0,
        GgmlType::Q8_1 => &Q8_1,
        GgmlType::Q4_K => &Q4_K,
        GgmlType::Q5_K => &Q5_K,
        GgmlType::Q6_K => &Q6_K,
        GgmlType::Q8_K => &Q8_K,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_covers_supported_types_and_their_activations() {
        for &ty in crate::SUPPORTED {
            let t = reference_traits(ty).unwrap_or_else(|| panic!("{ty} has no entry"));
            assert_eq!(t.ty, ty);
            let act = reference_traits(t.vec_dot_type).expect("activation type has an entry");
            assert!(act.from_float.is_some(), "{} cannot be quantized", act.ty);
            assert_eq!(act.vec_dot_type, act.ty);
        }
        assert!(reference_traits(GgmlType::Q2_K).is_none());
        assert!(reference_traits(GgmlType::IQ4_NL).is_none());
    }
}
