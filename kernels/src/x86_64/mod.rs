//! x86_64 kernels, reached only through the dispatch table after the CPU was shown to have the
//! features they are compiled for.
//!
//! `v3` (AVX2 + FMA + F16C, x86-64-v3): the scalar reference compiled for that ISA — the same
//! source, so the same results bit for bit (`f32::mul_add` becomes one fused instruction
//! instead of a libm call, `round_ties_even` one `roundss`) — plus F16C conversions for the f16
//! attention accumulator. Hand-written AVX2 kernels replace entries of this table: each equals
//! the reference bit for bit (it reproduces the reference's float order; only integer sums,
//! exact in any grouping, are regrouped), one file per family.

pub(crate) mod attention;
pub(crate) mod attention512;
pub(crate) mod attention_tiled;
pub(crate) mod attention_tiled512;
pub(crate) mod dots;
pub(crate) mod f16c;
pub(crate) mod float;
pub(crate) mod kquants;
pub(crate) mod q4_0;
pub(crate) mod q5_0;
pub(crate) mod quantize;
pub(crate) mod tiles;
pub(crate) mod tiles512;
pub(crate) mod tiles512_k;
pub(crate) mod tiles512_laid;
pub(crate) mod tiles512_rows;
pub(crate) mod tiles_k;
pub(crate) mod tiles_unpacked;
pub(crate) mod v3;
