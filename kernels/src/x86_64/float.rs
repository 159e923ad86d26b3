//! AVX2 F32, F16 and BF16 dots, equal bit for bit to `reference::float`.
//!
//! The reference forms each product in f32 and adds it to one of 8 f64 lanes (element `i` of
//! every full group of 8 to lane `i % 8`, the tail's element `t` to lane `t`), the lanes summed
//! in order at the end. Here the 8 products of a group are one `mulps` (the same roundings; for
//! F16 and BF16 the products are exact anyway) widened to two 4-lane f64 accumulators, which are
//! lanes 0..4 and 4..8; the tail and the final sum are the reference's scalar steps. The f64
//! additions form one dependency chain per lane, as the reference's order requires.

use std::arch::x86_64::{
    __m256, _mm256_add_pd, _mm256_castps256_ps128, _mm256_castsi256_ps, _mm256_cvtepu16_epi32,
    _mm256_cvtph_ps, _mm256_cvtps_pd, _mm256_extractf128_ps, _mm256_loadu_ps, _mm256_mul_ps,
    _mm256_setzero_pd, _mm256_slli_epi32, _mm256_storeu_pd, _mm_loadu_si128,
};

use super::f16c::f16_at;

#[target_feature(enable = "avx2,fma,f16c")]
fn widen_f32(b: &[u8]) -> __m256 {
    let b = &b[..32];
    // SAFETY: `b` holds 32 bytes = 8 f32; unaligned load (no alignment is assumed).
    unsafe { _mm256_loadu_ps(b.as_ptr().cast()) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn widen_f16(b: &[u8]) -> __m256 {
    let b = &b[..16];
    // SAFETY: `b` holds 16 bytes = 8 f16; unaligned load.
    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(b.as_ptr().cast()) })
}

#[target_feature(enable = "avx2,fma,f16c")]
fn widen_bf16(b: &[u8]) -> __m256 {
    let b = &b[..16];
    // SAFETY: `b` holds 16 bytes = 8 bf16; unaligned load.
    let v = unsafe { _mm_loadu_si128(b.as_ptr().cast()) };
    // bf16 is the top half of an f32 (ggml's `GGML_BF16_TO_FP32`, NaN payloads kept).
    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(v)))
}

/// The reference's `dot_lanes` for `E`-byte elements: `widen` converts 8 of them to f32,
/// `one` a single one.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_lanes<const E: usize>(
    n: usize,
    w: &[u8],
    a: &[u8],
    widen: impl Fn(&[u8]) -> __m256,
    one: impl Fn(&[u8]) -> f32,
) -> f32 {
    let (w, a) = (&w[..n * E], &a[..n * E]);
    let n8 = n / 8 * 8;
    let (mut lo, mut hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
    for i in (0..n8).step_by(8) {
        let r = i * E..(i + 8) * E;
        let p = _mm256_mul_ps(widen(&w[r.clone()]), widen(&a[r]));
        lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(p)));
        hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(p)));
    }
    let mut lanes = [0f64; 8];
    // SAFETY: `lanes` holds 8 f64; unaligned stores of 4 each.
    unsafe {
        _mm256_storeu_pd(lanes.as_mut_ptr(), lo);
        _mm256_storeu_pd(lanes.as_mut_ptr().add(4), hi);
    }
    for (t, i) in (n8..n).enumerate() {
        let r = i * E..(i + 1) * E;
        lanes[t] += f64::from(one(&w[r.clone()]) * one(&a[r]));
    }
    lanes.iter().sum::<f64>() as f32
}

#[target_feature(enable = "avx2,fma,f16c")]
fn f32_avx2(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_lanes::<4>(
        n,
        w,
        a,
        |b| widen_f32(b),
        |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
fn f16_avx2(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_lanes::<2>(n, w, a, |b| widen_f16(b), |b| f16_at(b, 0))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn bf16_avx2(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_lanes::<2>(
        n,
        w,
        a,
        |b| widen_bf16(b),
        |b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16),
    )
}

/// F32 × F32 with AVX2 (same result as `reference::float::vec_dot_f32`).
pub(crate) fn vec_dot_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    // SAFETY: installed in the dispatch table only after avx2, fma and f16c were detected;
    // slices are bounds-checked inside.
    unsafe { f32_avx2(n, w, a) }
}

/// F16 × F16 with AVX2 and F16C (same result as `reference::float::vec_dot_f16`).
pub(crate) fn vec_dot_f16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    // SAFETY: as `vec_dot_f32`.
    unsafe { f16_avx2(n, w, a) }
}

/// BF16 × BF16 with AVX2 (same result as `reference::float::vec_dot_bf16`).
pub(crate) fn vec_dot_bf16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    // SAFETY: as `vec_dot_f32`.
    unsafe { bf16_avx2(n, w, a) }
}
