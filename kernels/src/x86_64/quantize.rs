//! AVX2 activation quantizers, equal bit for bit to the reference: Q8_0 and Q8_1 as ggml-cpu's
//! x86 `quantize_row_q8_0` / `q8_1` (`reference::q8::quantize_row_q8_*_act`), Q8_K as ggml's
//! `quantize_row_q8_K_ref` (`reference::q8_k::quantize_row_q8_k`).
//!
//! Per block: the largest magnitude with `maxps` (`max(|v|, m)` keeps `m` when `v` is NaN,
//! as the reference's `f32::max` fold and `>` scan skip NaNs; the maximum is exact in any
//! order); the scale in scalar f32 exactly as the reference computes it; the quants as
//! `round(v · id)` to nearest even (`vroundps`) and `cvtps2dq`. A lane that converts to
//! `i32::MIN` is a NaN, an infinity or a value past i32 (only possible when the input holds
//! non-finite or subnormal-range values): there the reference's saturating casts differ from
//! the packing instructions, so such a block is handed to the reference itself. Otherwise all
//! quants lie in -127..=127 and saturating packs are exact.

use std::arch::x86_64::{
    __m256, __m256i, _mm256_add_epi32, _mm256_and_si256, _mm256_andnot_ps, _mm256_blendv_epi8,
    _mm256_castps256_ps128, _mm256_castps_si256, _mm256_castsi256_si128, _mm256_cmp_ps,
    _mm256_cmpeq_epi32, _mm256_cvtps_epi32, _mm256_cvtps_ph, _mm256_extractf128_ps,
    _mm256_extracti128_si256, _mm256_hadd_epi32, _mm256_loadu_ps, _mm256_madd_epi16,
    _mm256_maddubs_epi16, _mm256_max_ps, _mm256_min_epi32, _mm256_movemask_epi8,
    _mm256_movemask_ps, _mm256_mul_ps, _mm256_or_si256, _mm256_packs_epi16, _mm256_packs_epi32,
    _mm256_packus_epi32, _mm256_permute4x64_epi64, _mm256_permutevar8x32_epi32, _mm256_round_ps,
    _mm256_set1_epi16, _mm256_set1_epi32, _mm256_set1_epi8, _mm256_set1_ps, _mm256_setr_epi32,
    _mm256_setzero_ps, _mm256_setzero_si256, _mm256_srli_epi32, _mm256_storeu_si256, _mm_add_epi32,
    _mm_cvtsi128_si32, _mm_cvtss_f32, _mm_hadd_epi32, _mm_max_ps, _mm_max_ss, _mm_movehdup_ps,
    _mm_movehl_ps, _mm_storeu_si128, _mm_unpackhi_epi16, _mm_unpacklo_epi16, _CMP_EQ_OQ,
    _CMP_UNORD_Q, _MM_FROUND_NO_EXC, _MM_FROUND_TO_NEAREST_INT,
};

use super::f16c::to_f16_le;
use crate::reference::q8::{BlockQ8_0, BlockQ8_1};
use crate::reference::q8_k::BlockQ8K;
use crate::reference::{bytes_mut, q8, q8_k, view_mut};

const QK8: usize = 32;
const QK_K: usize = 256;

/// Eight f32 of `x` from `at`.
#[target_feature(enable = "avx2,fma,f16c")]
fn load8(x: &[f32], at: usize) -> __m256 {
    let s = &x[at..at + 8];
    // SAFETY: `s` holds exactly 8 f32; unaligned load.
    unsafe { _mm256_loadu_ps(s.as_ptr()) }
}

/// `|v|`.
#[target_feature(enable = "avx2,fma,f16c")]
fn abs(v: __m256) -> __m256 {
    _mm256_andnot_ps(_mm256_set1_ps(-0.0), v)
}

/// The largest of the 8 lanes (none is NaN).
#[target_feature(enable = "avx2,fma,f16c")]
fn hmax(m: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)))
}

/// `round_ties_even(v · s)` as i32 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
fn round_scaled(v: __m256, s: __m256) -> __m256i {
    const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    _mm256_cvtps_epi32(_mm256_round_ps::<NEAREST>(_mm256_mul_ps(v, s)))
}

/// Whether a lane of `q` is `i32::MIN` (NaN or out of range: see the module notes).
#[target_feature(enable = "avx2,fma,f16c")]
fn bad_lanes(q: [__m256i; 4]) -> bool {
    let min = _mm256_set1_epi32(i32::MIN);
    let mut bad = _mm256_setzero_si256();
    for v in q {
        bad = _mm256_or_si256(bad, _mm256_cmpeq_epi32(v, min));
    }
    _mm256_movemask_epi8(bad) != 0
}

/// 32 i32 lanes (4 × 8, in element order) packed to 32 i8 in element order.
#[target_feature(enable = "avx2,fma,f16c")]
fn pack32(q: [__m256i; 4]) -> __m256i {
    let p = _mm256_packs_epi16(
        _mm256_packs_epi32(q[0], q[1]),
        _mm256_packs_epi32(q[2], q[3]),
    );
    // The packs work per 128-bit half, leaving the 4-element dwords in the order
    // q0[0..4], q1[0..4], q2[0..4], q3[0..4], q0[4..8], ...: put them back in element order.
    _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// The i32 sums of each 4 consecutive i8 of `q` (exact).
#[target_feature(enable = "avx2,fma,f16c")]
fn sums_of_4(q: __m256i) -> __m256i {
    _mm256_madd_epi16(
        _mm256_maddubs_epi16(_mm256_set1_epi8(1), q),
        _mm256_set1_epi16(1),
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
fn store32<T: Copy>(out: &mut [T; 32], v: __m256i) {
    const { assert!(size_of::<T>() == 1) };
    // SAFETY: `out` is 32 one-byte elements (`u8` or `i8`, asserted above): 32 writable bytes;
    // unaligned store.
    unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast::<__m256i>(), v) }
}

/// `n`'s first 32 elements, as an array.
fn first32<T>(n: &mut [T]) -> &mut [T; 32] {
    (&mut n[..32]).try_into().expect("32 elements")
}

/// One Q8_0 / Q8_1 activation block: the f32 scale `d` and the 32 quants, or `None` when the
/// reference must handle the block.
#[target_feature(enable = "avx2,fma,f16c")]
fn q8_act_block(x: &[f32]) -> Option<(f32, __m256i)> {
    let v = [load8(x, 0), load8(x, 8), load8(x, 16), load8(x, 24)];
    let mut m = _mm256_setzero_ps();
    for v in v {
        m = _mm256_max_ps(abs(v), m);
    }
    let amax = hmax(m);
    let d = amax / 127.0;
    let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
    let q = [
        round_scaled(v[0], id),
        round_scaled(v[1], id),
        round_scaled(v[2], id),
        round_scaled(v[3], id),
    ];
    if bad_lanes(q) {
        return None;
    }
    Some((d, pack32(q)))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q8_0_act_avx2(src: &[f32], out: &mut [u8]) {
    let blocks = view_mut::<BlockQ8_0>(out, src.len() / QK8);
    for (x, o) in src.chunks_exact(QK8).zip(blocks) {
        match q8_act_block(x) {
            Some((d, q)) => {
                o.d = to_f16_le(d);
                store32(&mut o.qs, q);
            }
            None => q8::quantize_row_q8_0_act(x, bytes_mut(o)),
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q8_1_act_avx2(src: &[f32], out: &mut [u8]) {
    let blocks = view_mut::<BlockQ8_1>(out, src.len() / QK8);
    for (x, o) in src.chunks_exact(QK8).zip(blocks) {
        match q8_act_block(x) {
            Some((d, q)) => {
                let s = sums_of_4(q);
                let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
                let s = _mm_hadd_epi32(s, s);
                let sum = _mm_cvtsi128_si32(_mm_hadd_epi32(s, s));
                o.d = to_f16_le(d);
                o.s = to_f16_le(sum as f32 * d);
                store32(&mut o.qs, q);
            }
            None => q8::quantize_row_q8_1_act(x, bytes_mut(o)),
        }
    }
}

/// f32 activations to Q8_0 blocks with AVX2 (same bytes as
/// `reference::q8::quantize_row_q8_0_act`).
pub(crate) fn quantize_row_q8_0_act(src: &[f32], out: &mut [u8]) {
    // SAFETY: installed in the dispatch table only after avx2, fma and f16c were detected;
    // slices are bounds-checked inside.
    unsafe { q8_0_act_avx2(src, out) }
}

/// f32 activations to Q8_1 blocks with AVX2 (same bytes as
/// `reference::q8::quantize_row_q8_1_act`).
pub(crate) fn quantize_row_q8_1_act(src: &[f32], out: &mut [u8]) {
    // SAFETY: as `quantize_row_q8_0_act`.
    unsafe { q8_1_act_avx2(src, out) }
}

/// One Q8_K block; `false` when the reference must handle it.
#[target_feature(enable = "avx2,fma,f16c")]
fn q8_k_block(x: &[f32], o: &mut BlockQ8K) -> bool {
    let x = &x[..QK_K];
    // Four independent maxima (the maximum is exact in any order).
    let (mut m0, mut m1, mut m2, mut m3) = (
        _mm256_setzero_ps(),
        _mm256_setzero_ps(),
        _mm256_setzero_ps(),
        _mm256_setzero_ps(),
    );
    for k in (0..QK_K).step_by(32) {
        m0 = _mm256_max_ps(abs(load8(x, k)), m0);
        m1 = _mm256_max_ps(abs(load8(x, k + 8)), m1);
        m2 = _mm256_max_ps(abs(load8(x, k + 16)), m2);
        m3 = _mm256_max_ps(abs(load8(x, k + 24)), m3);
    }
    let amax = hmax(_mm256_max_ps(_mm256_max_ps(m0, m1), _mm256_max_ps(m2, m3)));
    if amax == 0.0 {
        bytes_mut(o).fill(0);
        return true;
    }
    // The reference's `max`: the first value whose magnitude is `amax`.
    let av = _mm256_set1_ps(amax);
    let mut first = None;
    for k in 0..QK_K / 8 {
        let hit = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(abs(load8(x, 8 * k)), av));
        if hit != 0 {
            first = Some(8 * k + hit.trailing_zeros() as usize);
            break;
        }
    }
    let Some(first) = first else {
        return false;
    };
    let iscale = -127.0 / x[first];
    let s = _mm256_set1_ps(iscale);
    let top = _mm256_set1_epi32(127);
    let mut sums = [_mm256_setzero_si256(); 8];
    for (c, sum) in sums.iter_mut().enumerate() {
        let mut q = [_mm256_setzero_si256(); 4];
        for (k, q) in q.iter_mut().enumerate() {
            *q = _mm256_min_epi32(round_scaled(load8(x, 32 * c + 8 * k), s), top);
        }
        if bad_lanes(q) {
            return false;
        }
        let p = pack32(q);
        store32(first32(&mut o.qs[32 * c..]), p);
        *sum = sums_of_4(p);
    }
    // `sums[c]` holds group 2c in lanes 0..4 and group 2c + 1 in lanes 4..8. Two rounds of
    // `hadd` leave groups [0, 2, 4, 6 | 1, 3, 5, 7] in `a` and [8, .., 14 | 9, .., 15] in `b`.
    let a = _mm256_hadd_epi32(
        _mm256_hadd_epi32(sums[0], sums[1]),
        _mm256_hadd_epi32(sums[2], sums[3]),
    );
    let b = _mm256_hadd_epi32(
        _mm256_hadd_epi32(sums[4], sums[5]),
        _mm256_hadd_epi32(sums[6], sums[7]),
    );
    // |group sum| ≤ 16 · 127: the i16 pack is exact.
    let p = _mm256_packs_epi32(a, b);
    let (even, odd) = (_mm256_castsi256_si128(p), _mm256_extracti128_si256::<1>(p));
    let bs = o.bsums.as_flattened_mut();
    // SAFETY: `bs` holds 32 bytes (16 i16); two unaligned 16-byte stores.
    unsafe {
        _mm_storeu_si128(bs.as_mut_ptr().cast(), _mm_unpacklo_epi16(even, odd));
        _mm_storeu_si128(
            bs.as_mut_ptr().add(16).cast(),
            _mm_unpackhi_epi16(even, odd),
        );
    }
    o.d = (1.0 / iscale).to_le_bytes();
    true
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q8_k_avx2(src: &[f32], out: &mut [u8]) {
    let blocks = view_mut::<BlockQ8K>(out, src.len() / QK_K);
    for (x, o) in src.chunks_exact(QK_K).zip(blocks) {
        if !q8_k_block(x, o) {
            q8_k::quantize_row_q8_k(x, bytes_mut(o));
        }
    }
}

/// f32 activations to Q8_K blocks with AVX2 (same bytes as `reference::q8_k::quantize_row_q8_k`).
pub(crate) fn quantize_row_q8_k(src: &[f32], out: &mut [u8]) {
    // SAFETY: as `quantize_row_q8_0_act`.
    unsafe { q8_k_avx2(src, out) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn f16_avx2(src: &[f32], out: &mut [u8]) {
    let n8 = src.len() / 8 * 8;
    for (x, o) in src[..n8].chunks_exact(8).zip(out.chunks_exact_mut(16)) {
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(load8(x, 0));
        // SAFETY: `o` holds 16 bytes; unaligned store.
        unsafe { _mm_storeu_si128(o.as_mut_ptr().cast(), h) };
    }
    for (i, &x) in src.iter().enumerate().skip(n8) {
        out[2 * i..2 * i + 2].copy_from_slice(&to_f16_le(x));
    }
}

/// f32 to F16 bytes with F16C (same bytes as `reference::float::quantize_row_f16`, which is
/// `half`'s conversion: this very instruction on CPUs with F16C).
pub(crate) fn quantize_row_f16(src: &[f32], out: &mut [u8]) {
    assert!(out.len() >= 2 * src.len(), "row lengths");
    // SAFETY: as `quantize_row_q8_0_act`.
    unsafe { f16_avx2(src, out) }
}

/// ggml's `GGML_FP32_TO_BF16` on 8 lanes: NaNs keep their top bits with the quiet bit set,
/// everything else rounds to nearest even (`u + 0x7fff + ((u >> 16) & 1)`, which cannot wrap:
/// only NaN bit patterns are that large).
#[target_feature(enable = "avx2,fma,f16c")]
fn bf16x8(v: __m256) -> __m256i {
    let u = _mm256_castps_si256(v);
    let top = _mm256_srli_epi32::<16>(u);
    let bias = _mm256_add_epi32(
        _mm256_set1_epi32(0x7fff),
        _mm256_and_si256(top, _mm256_set1_epi32(1)),
    );
    let rounded = _mm256_srli_epi32::<16>(_mm256_add_epi32(u, bias));
    let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
    let quiet = _mm256_or_si256(top, _mm256_set1_epi32(64));
    _mm256_blendv_epi8(rounded, quiet, nan)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn bf16_avx2(src: &[f32], out: &mut [u8]) {
    let n16 = src.len() / 16 * 16;
    for (x, o) in src[..n16].chunks_exact(16).zip(out.chunks_exact_mut(32)) {
        // 32 → 16 bits per 128-bit half (the values fit: no saturation), then the halves in
        // element order.
        let p = _mm256_packus_epi32(bf16x8(load8(x, 0)), bf16x8(load8(x, 8)));
        store32(first32(o), _mm256_permute4x64_epi64::<0b11_01_10_00>(p));
    }
    let tail = &src[n16..];
    if !tail.is_empty() {
        crate::reference::float::quantize_row_bf16(tail, &mut out[2 * n16..2 * src.len()]);
    }
}

/// f32 to BF16 bytes with AVX2 (same bytes as `reference::float::quantize_row_bf16`).
pub(crate) fn quantize_row_bf16(src: &[f32], out: &mut [u8]) {
    assert!(out.len() >= 2 * src.len(), "row lengths");
    // SAFETY: as `quantize_row_q8_0_act`.
    unsafe { bf16_avx2(src, out) }
}
