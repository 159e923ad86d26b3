//! AVX2 Q4_0 × Q8_0 dot, equal bit for bit to `reference::q4_0::vec_dot_q4_0_q8_0`.
//!
//! The reference is ggml's *generic* dot: per block the exact integer sum `sumi`, then
//! `sumf += (sumi as f32 * d_w) * d_a`, one block after the other. Only the integer work is
//! vectorized here (`maddubs` of the unsigned nibbles with the activations, minus `maddubs` of 8
//! with the activations, which is exact for every i8 activation including -128); the per-block
//! sums of eight blocks are reduced together with `hadd`, and the float steps run in the
//! reference's order: the two products lane-wise (the same roundings as the scalar ones), the
//! additions to `sumf` one block at a time.

use std::arch::x86_64::{
    __m256i, _mm256_add_epi32, _mm256_and_si256, _mm256_castsi256_si128, _mm256_cvtepi32_ps,
    _mm256_extracti128_si256, _mm256_hadd_epi32, _mm256_loadu_ps, _mm256_loadu_si256,
    _mm256_madd_epi16, _mm256_maddubs_epi16, _mm256_mul_ps, _mm256_permute2x128_si256,
    _mm256_set1_epi16, _mm256_set1_epi8, _mm256_set_m128i, _mm256_setzero_si256, _mm256_storeu_ps,
    _mm256_sub_epi16, _mm_add_epi32, _mm_cvtsi128_si32, _mm_hadd_epi32, _mm_loadu_si128,
    _mm_srli_epi16,
};

use super::f16c::f16_at;
use crate::reference::q4_0::BlockQ4_0;
use crate::reference::q8::BlockQ8_0;
use crate::reference::view;

/// Eight i32 lanes whose total is the block's `Σ (q - 8) · y` (exact).
#[target_feature(enable = "avx2,fma,f16c")]
fn block_lanes(x: &BlockQ4_0, y: &BlockQ8_0) -> __m256i {
    // SAFETY: `x.qs` holds 16 bytes and `y.qs` 32; unaligned loads.
    let (packed, qy) = unsafe {
        (
            _mm_loadu_si128(x.qs.as_ptr().cast()),
            _mm256_loadu_si256(y.qs.as_ptr().cast::<__m256i>()),
        )
    };
    // Low nibbles are elements 0..16, high nibbles 16..32.
    let qx = _mm256_and_si256(
        _mm256_set_m128i(_mm_srli_epi16::<4>(packed), packed),
        _mm256_set1_epi8(0x0f),
    );
    // q·y - 8·y per pair of elements: |q·y| pairs stay within ±3840, no saturation.
    let pairs = _mm256_sub_epi16(
        _mm256_maddubs_epi16(qx, qy),
        _mm256_maddubs_epi16(_mm256_set1_epi8(8), qy),
    );
    _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
}

/// Total of the eight lanes of `v` (exact).
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_hadd_epi32(s, s);
    _mm_cvtsi128_si32(_mm_hadd_epi32(s, s))
}

/// `[Σ v0, Σ v1, ..., Σ v7]`: the lane totals of eight vectors (exact).
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum8_i32(v: [__m256i; 8]) -> __m256i {
    let a = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    let b = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
    // `a` holds the totals of v0..v3 over lanes 0..4 in its low half and over lanes 4..8 in
    // its high half; `b` those of v4..v7.
    _mm256_add_epi32(
        _mm256_permute2x128_si256::<0x20>(a, b),
        _mm256_permute2x128_si256::<0x31>(a, b),
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q4_0_q8_0_avx2(w: &[BlockQ4_0], a: &[BlockQ8_0]) -> f32 {
    let mut sumf = 0f32;
    let (wg, wt) = w.as_chunks::<8>();
    let (ag, at) = a.as_chunks::<8>();
    for (xs, ys) in wg.iter().zip(ag) {
        let mut lanes = [_mm256_setzero_si256(); 8];
        for (l, (x, y)) in lanes.iter_mut().zip(xs.iter().zip(ys)) {
            *l = block_lanes(x, y);
        }
        let sumi = _mm256_cvtepi32_ps(hsum8_i32(lanes));
        let (mut dx, mut dy) = ([0f32; 8], [0f32; 8]);
        for k in 0..8 {
            dx[k] = f16_at(&xs[k].d, 0);
            dy[k] = f16_at(&ys[k].d, 0);
        }
        // SAFETY: `dx` and `dy` hold 8 f32 each; unaligned loads.
        let (dxv, dyv) = unsafe { (_mm256_loadu_ps(dx.as_ptr()), _mm256_loadu_ps(dy.as_ptr())) };
        let mut t = [0f32; 8];
        // SAFETY: `t` holds 8 f32; unaligned store.
        unsafe { _mm256_storeu_ps(t.as_mut_ptr(), _mm256_mul_ps(_mm256_mul_ps(sumi, dxv), dyv)) };
        for v in t {
            sumf += v;
        }
    }
    for (x, y) in wt.iter().zip(at) {
        let sumi = hsum_i32(block_lanes(x, y));
        sumf += sumi as f32 * f16_at(&x.d, 0) * f16_at(&y.d, 0);
    }
    sumf
}

/// Q4_0 × Q8_0 with AVX2 (same result as `reference::q4_0::vec_dot_q4_0_q8_0`).
pub(crate) fn vec_dot_q4_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / 32;
    let (w, a) = (view::<BlockQ4_0>(w, nb), view::<BlockQ8_0>(a, nb));
    // SAFETY: installed in the dispatch table only after avx2, fma and f16c were detected.
    unsafe { q4_0_q8_0_avx2(w, a) }
}
