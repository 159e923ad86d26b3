//! AVX2 dot products of quantized weights with quantized activations, in exactly the lane
//! order of the reference (which is ggml's AVX2 order): lane `l` of a block holds the integer
//! sum of elements `4l..4l+4` (`maddubs` then `madd` with ones), accumulated per block with one
//! FMA by the product of the two scales, the 8 lanes reduced as `hsum8`. Integer sums are exact,
//! so the results equal the reference bit for bit (tested through the dispatch table).

use std::arch::x86_64::{
    __m256, __m256i, _mm256_and_si256, _mm256_cvtepi32_ps, _mm256_fmadd_ps, _mm256_loadu_si256,
    _mm256_madd_epi16, _mm256_maddubs_epi16, _mm256_set1_epi16, _mm256_set1_epi8, _mm256_set1_ps,
    _mm256_set_m128i, _mm256_setzero_ps, _mm256_sign_epi8, _mm_loadu_si128, _mm_srli_epi16,
};

use super::f16c::f16_at;
use crate::reference::q4_1::BlockQ4_1;
use crate::reference::q8::{BlockQ8_0, BlockQ8_1};
use crate::reference::view;

/// 8 lanes of `Σ u8 × i8` over 4 consecutive bytes each, as f32.
#[target_feature(enable = "avx2,fma,f16c")]
fn lane_sums_u8_i8(u: __m256i, s: __m256i) -> __m256 {
    let pairs = _mm256_maddubs_epi16(u, s);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
}

/// # Safety
/// The CPU must have AVX2, FMA and F16C (the caller checked it through the kernel set).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_1_q8_1_avx2(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    let low = _mm256_set1_epi8(0x0f);
    let mut acc = _mm256_setzero_ps();
    let mut summs = 0f32;
    for (x, y) in w.iter().zip(a) {
        let d = _mm256_set1_ps(f16_at(&x.d, 0) * f16_at(&y.d, 0));
        summs = f16_at(&x.m, 0).mul_add(f16_at(&y.s, 0), summs);
        // SAFETY: `x.qs` holds 16 bytes and `y.qs` 32; unaligned loads.
        let (packed, qy) = unsafe {
            (
                _mm_loadu_si128(x.qs.as_ptr().cast()),
                _mm256_loadu_si256(y.qs.as_ptr().cast::<__m256i>()),
            )
        };
        // Low nibbles are elements 0..16, high nibbles 16..32.
        let qx = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(packed), packed), low);
        acc = _mm256_fmadd_ps(d, lane_sums_u8_i8(qx, qy), acc);
    }
    // SAFETY: AVX (target_feature).
    unsafe { super::tiles::hsum8(acc) + summs }
}

/// Q4_1 × Q8_1 with AVX2 (same result as `reference::q4_1::vec_dot_q4_1_q8_1`).
pub(crate) fn vec_dot_q4_1_q8_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / 32;
    let (w, a) = (view::<BlockQ4_1>(w, nb), view::<BlockQ8_1>(a, nb));
    // SAFETY: installed in the dispatch table only after avx2, fma and f16c were detected.
    unsafe { q4_1_q8_1_avx2(w, a) }
}

/// # Safety
/// The CPU must have AVX2, FMA and F16C (the caller checked it through the kernel set).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0_q8_0_avx2(w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (x, y) in w.iter().zip(a) {
        let d = _mm256_set1_ps(f16_at(&x.d, 0) * f16_at(&y.d, 0));
        // SAFETY: `x.qs` and `y.qs` hold 32 bytes each; unaligned loads.
        let (qx, qy) = unsafe {
            (
                _mm256_loadu_si256(x.qs.as_ptr().cast::<__m256i>()),
                _mm256_loadu_si256(y.qs.as_ptr().cast::<__m256i>()),
            )
        };
        // |x| as unsigned times y with x's sign: exact products while y != -128 (activation
        // quantizers clamp to ±127).
        let q = lane_sums_u8_i8(_mm256_sign_epi8(qx, qx), _mm256_sign_epi8(qy, qx));
        acc = _mm256_fmadd_ps(d, q, acc);
    }
    // SAFETY: AVX (target_feature).
    unsafe { super::tiles::hsum8(acc) }
}

/// Q8_0 × Q8_0 with AVX2 (same result as `reference::q8::vec_dot_q8_0_q8_0` for activations
/// in ±127, which the activation quantizers guarantee).
pub(crate) fn vec_dot_q8_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / 32;
    let (w, a) = (view::<BlockQ8_0>(w, nb), view::<BlockQ8_0>(a, nb));
    // SAFETY: installed in the dispatch table only after avx2, fma and f16c were detected.
    unsafe { q8_0_q8_0_avx2(w, a) }
}
