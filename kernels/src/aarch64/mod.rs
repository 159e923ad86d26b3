//! aarch64 NEON kernels, reached only through the dispatch table after the CPU was shown to have
//! the features they are compiled for (`neon`; `neon,dotprod` for the `*_dotprod` dots).
//!
//! Every kernel here reproduces the scalar reference bit for bit, which is what keeps the
//! model's logits equal to llama.cpp's x86 numerics on ARM: integer sums are exact in any
//! grouping, so the dots form the reference's 8 per-lane integer sums (lane `l` = elements
//! `4l..4l+4` of a block: one `sdot` lane, or a `vmull_s8` + pairwise-add group without the
//! dotprod extension) and accumulate them in two `float32x4_t` halves with one fused multiply-add
//! per block, reduced in the reference's `hsum8` order. The f32 ops keep the reference's
//! per-element arithmetic (the same fused or unfused operations, the same reduction order);
//! where that cannot be vectorized (the f64 sum of `rms_norm`, the libm `expf` of `silu_mul`'s
//! tail) the reference runs that part.
//!
//! One file per family: `q4_0`, `q4_1`, `q8_0` (dots, each with a dotprod and a plain NEON
//! variant), `kquants` (Q4_K and Q6_K in the reference's llama.cpp-x86 float orders, dotprod and
//! plain), `q5_k` (Q5_K), `float` (F32 / F16 / BF16 dots), `quantize`
//! (Q8_0 / Q8_1 activation quantizers), `ops` (RMSNorm, SiLU×mul, RoPE), `attention` (the f16
//! attention accumulator helpers), `attention_tiled` (attention of 64+-token batches) and `lanes`
//! (what the dots share).

pub(crate) mod attention;
pub(crate) mod attention_tiled;
pub(crate) mod float;
pub(crate) mod kquants;
mod lanes;
pub(crate) mod ops;
pub(crate) mod q4_0;
pub(crate) mod q4_1;
pub(crate) mod q5_k;
pub(crate) mod q8_0;
pub(crate) mod quantize;
pub(crate) mod tiles;
