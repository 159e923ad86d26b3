//! The kernel module's contents: which functions it has (one matrix kernel per weight type,
//! the attention variants by shape, the small kernels) and the activations each weight type's
//! kernel reads.

use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaModule};
use ember_kernels::GgmlType;

use super::error::backend_err;
use crate::error::Result;

/// Weight types the CUDA matrix kernels take, and each one's kernel.
pub(super) const MATMUL_KERNELS: [(GgmlType, &str); 11] = [
    (GgmlType::F32, "matmul_f32"),
    (GgmlType::F16, "matmul_f16"),
    (GgmlType::BF16, "matmul_bf16"),
    (GgmlType::Q4_0, "matmul_q4_0"),
    (GgmlType::Q4_1, "matmul_q4_1"),
    (GgmlType::Q5_0, "matmul_q5_0"),
    (GgmlType::Q5_1, "matmul_q5_1"),
    (GgmlType::Q8_0, "matmul_q8_0"),
    (GgmlType::Q4_K, "matmul_q4_k"),
    (GgmlType::Q5_K, "matmul_q5_k"),
    (GgmlType::Q6_K, "matmul_q6_k"),
];

/// Weight types with a tensor-core kernel for many tokens (`mmq.cu`), and each one's kernel.
pub(super) const MMQ_KERNELS: [(GgmlType, &str); 8] = [
    (GgmlType::Q4_0, "mmq_q4_0"),
    (GgmlType::Q4_1, "mmq_q4_1"),
    (GgmlType::Q5_0, "mmq_q5_0"),
    (GgmlType::Q5_1, "mmq_q5_1"),
    (GgmlType::Q8_0, "mmq_q8_0"),
    (GgmlType::Q4_K, "mmq_q4_k"),
    (GgmlType::Q5_K, "mmq_q5_k"),
    (GgmlType::Q6_K, "mmq_q6_k"),
];

/// Weight types the CUDA matrix kernels take.
pub const SUPPORTED_WEIGHTS: [GgmlType; 11] = {
    let mut t = [GgmlType::F32; 11];
    let mut i = 0;
    while i < t.len() {
        t[i] = MATMUL_KERNELS[i].0;
        i += 1;
    }
    t
};

/// The activations a weight type's kernel reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acts {
    /// The f32 rows themselves (F32, F16, BF16 weights; the kernels round to f16 / bf16 as
    /// they read, as the CPU's dots do).
    F32,
    /// Q8_1 blocks of 32 (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0).
    Q8_1,
    /// Q8_K super-blocks of 256 (K-quants).
    Q8K,
}

/// The activations weights of `ty` take.
pub fn acts_of(ty: GgmlType) -> Acts {
    match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => Acts::F32,
        GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => Acts::Q8K,
        _ => Acts::Q8_1,
    }
}

/// A matrix kernel variant (`matmul_<type><suffix>`) per weight type, in the order of
/// `MATMUL_KERNELS`: for the Q8_1 types, and for the K-quants too where `kquants` says so; `None`
/// for the float types.
fn variant(
    f: &dyn Fn(&str) -> Result<CudaFunction>,
    suffix: &str,
    kquants: bool,
) -> Result<Vec<Option<CudaFunction>>> {
    MATMUL_KERNELS
        .iter()
        .map(|&(t, n)| match acts_of(t) {
            Acts::Q8_1 => f(&format!("{n}{suffix}")).map(Some),
            Acts::Q8K if kquants => f(&format!("{n}{suffix}")).map(Some),
            _ => Ok(None),
        })
        .collect()
}

/// The functions of the loaded kernel module.
pub(super) struct Kernels {
    pub(super) quantize_q8_1: CudaFunction,
    pub(super) quantize_q8_k: CudaFunction,
    /// One per weight type, in the order of `MATMUL_KERNELS`.
    pub(super) matmul: Vec<CudaFunction>,
    /// The same for a lone token (`_1`: one token per thread block, fewer registers), for the
    /// quantized types; `None` for float weights.
    pub(super) matmul_1: Vec<Option<CudaFunction>>,
    /// A lone token, two weight rows per thread block (`_1x2`), for Q4_0..Q8_0; `None` for the
    /// others (the K-quant kernels take row pairs already).
    pub(super) matmul_1x2: Vec<Option<CudaFunction>>,
    /// One per weight type, in the order of `MMQ_KERNELS`: 64 x 64 tiles, 16 x 32, 64 x 16.
    pub(super) mmq: Vec<CudaFunction>,
    pub(super) mmq_small: Vec<CudaFunction>,
    pub(super) mmq_narrow: Vec<CudaFunction>,
    pub(super) rms_norm: CudaFunction,
    pub(super) swiglu: CudaFunction,
    pub(super) geglu: CudaFunction,
    pub(super) add: CudaFunction,
    pub(super) gather_rows: CudaFunction,
    pub(super) add_bias: CudaFunction,
    pub(super) argmax_part: CudaFunction,
    pub(super) argmax_reduce: CudaFunction,
    pub(super) topk_rows: CudaFunction,
    pub(super) rope_kv_write: CudaFunction,
    pub(super) copy_slots: CudaFunction,
    pub(super) shift_keys: CudaFunction,
    pub(super) paged_attention: CudaFunction,
    pub(super) attention_reduce: CudaFunction,
    /// Grouped-query attention by KV row type and shape: f16 rows, then Q8_0, then Q4_0 (16
    /// each); within a type head_dim 64 with 1..=8 query heads per KV head, then head_dim 128
    /// with 1..=8 (index `16 * kv_type + 8 * (head_dim == 128) + group - 1`).
    pub(super) attn_gqa: Vec<CudaFunction>,
    pub(super) hadamard_rows: CudaFunction,
}

impl Kernels {
    /// Look every kernel up in the loaded module.
    pub(super) fn load(module: &Arc<CudaModule>) -> Result<Kernels> {
        let f = |n: &str| {
            module
                .load_function(n)
                .map_err(|e| backend_err(format!("kernel {n}: {e}")))
        };
        Ok(Kernels {
            quantize_q8_1: f("quantize_q8_1")?,
            quantize_q8_k: f("quantize_q8_k")?,
            matmul: MATMUL_KERNELS
                .iter()
                .map(|(_, n)| f(n))
                .collect::<Result<_>>()?,
            matmul_1: variant(&f, "_1", true)?,
            matmul_1x2: variant(&f, "_1x2", false)?,
            mmq: MMQ_KERNELS
                .iter()
                .map(|(_, n)| f(n))
                .collect::<Result<_>>()?,
            mmq_small: MMQ_KERNELS
                .iter()
                .map(|(_, n)| f(&format!("{n}_s")))
                .collect::<Result<_>>()?,
            mmq_narrow: MMQ_KERNELS
                .iter()
                .map(|(_, n)| f(&format!("{n}_n")))
                .collect::<Result<_>>()?,
            rms_norm: f("rms_norm")?,
            swiglu: f("swiglu")?,
            geglu: f("geglu")?,
            add: f("add")?,
            gather_rows: f("gather_rows")?,
            add_bias: f("add_bias")?,
            argmax_part: f("argmax_part")?,
            argmax_reduce: f("argmax_reduce")?,
            topk_rows: f("topk_rows")?,
            rope_kv_write: f("rope_kv_write")?,
            copy_slots: f("copy_slots")?,
            shift_keys: f("shift_keys")?,
            paged_attention: f("paged_attention")?,
            attention_reduce: f("attention_reduce")?,
            attn_gqa: ["", "q8_", "q4_"]
                .iter()
                .flat_map(|t| [64, 128].map(|d| (t, d)))
                .flat_map(|(t, d)| (1..=8).map(move |g| format!("attn_gqa_{t}d{d}_g{g}")))
                .map(|n| f(&n))
                .collect::<Result<_>>()?,
            hadamard_rows: f("hadamard_rows")?,
        })
    }
}
