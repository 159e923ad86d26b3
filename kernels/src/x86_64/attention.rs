//! Attention of one query over f16 keys and values with F16C and FMA, fused: keys and values
//! are converted 8 elements at a time as they are read, and for head sizes that fit, the f16
//! accumulator stays in registers across keys. Same operations in the same order as
//! [`attention::attend_rows`] (ggml's `flash_attn_ext_f16_one_chunk`), so the same bits.

use std::arch::x86_64::{
    __m256, _mm256_add_ps, _mm256_castps256_ps128, _mm256_cvtph_ps, _mm256_cvtps_ph,
    _mm256_extractf128_ps, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_mul_ps, _mm256_set1_ps,
    _mm256_setzero_ps, _mm256_storeu_ps, _mm_add_ps, _mm_add_ss, _mm_cvtss_f32, _mm_hadd_ps,
    _mm_loadu_si128, _mm_movehdup_ps, _MM_FROUND_TO_NEAREST_INT,
};

use half::f16;

use crate::reference::attention::{self, OnlineSoftmax};

/// # Safety
/// The CPU must have AVX2 and F16C; called only from kernels that enable them.
#[inline(always)]
unsafe fn round_f16(v: __m256) -> __m256 {
    // SAFETY: F16C is enabled in every caller (target_feature).
    unsafe { _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v)) }
}

/// 8 f16 at `p` as f32.
///
/// # Safety
/// `p..p+8` readable; F16C enabled in the caller.
#[inline(always)]
unsafe fn load8(p: *const f16) -> __m256 {
    // SAFETY: 16 readable bytes (caller); unaligned load.
    unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
}

/// The fused loop for `d = 8 * D8` with `D8 % 4 == 0` (`d` a multiple of 32, so the dot has no
/// tail).
///
/// # Safety
/// AVX2, FMA and F16C; `q.len() == out.len() == 8 * D8`; `k.len() == v.len()`, a multiple of
/// `8 * D8`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_d<const D8: usize>(
    q: &[f32],
    k: &[f16],
    v: &[f16],
    scale: f32,
    st: &mut OnlineSoftmax,
    out: &mut [f32],
) {
    let d = 8 * D8;
    let mut qv = [_mm256_setzero_ps(); D8];
    let mut o = [_mm256_setzero_ps(); D8];
    for c in 0..D8 {
        // SAFETY: `q` and `out` hold `d` elements (caller).
        unsafe {
            qv[c] = _mm256_loadu_ps(q.as_ptr().add(8 * c));
            o[c] = _mm256_loadu_ps(out.as_ptr().add(8 * c));
        }
    }
    let n = k.len() / d;
    for j in 0..n {
        // k · q: chunk c of 8 elements into accumulator c % 4 (dot_f16_order).
        let mut acc = [_mm256_setzero_ps(); 4];
        for c in 0..D8 {
            // SAFETY: row `j < n` of `k` holds `d` elements (caller).
            let kc = unsafe { load8(k.as_ptr().add(j * d + 8 * c)) };
            acc[c % 4] = _mm256_fmadd_ps(kc, qv[c], acc[c % 4]);
        }
        let r = _mm256_add_ps(_mm256_add_ps(acc[0], acc[2]), _mm256_add_ps(acc[1], acc[3]));
        // [r0+r4, r1+r5, r2+r6, r3+r7] -> (t0+t1) + (t2+t3).
        let t = _mm_add_ps(_mm256_castps256_ps128(r), _mm256_extractf128_ps::<1>(r));
        let h = _mm_hadd_ps(t, t);
        let dot = _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
        let (rescale, vs) = st.push(dot * scale);
        if let Some(ms) = rescale {
            let m = _mm256_set1_ps(ms);
            for oc in o.iter_mut() {
                // SAFETY: F16C (target_feature).
                *oc = unsafe { round_f16(_mm256_mul_ps(*oc, m)) };
            }
        }
        let w = _mm256_set1_ps(vs);
        for (c, oc) in o.iter_mut().enumerate() {
            // SAFETY: row `j < n` of `v` holds `d` elements (caller); F16C (target_feature).
            *oc = unsafe {
                round_f16(_mm256_fmadd_ps(
                    load8(v.as_ptr().add(j * d + 8 * c)),
                    w,
                    *oc,
                ))
            };
        }
    }
    for (c, oc) in o.iter().enumerate() {
        // SAFETY: `out` holds `d` elements (caller).
        unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(8 * c), *oc) };
    }
}

/// [`attention::attend_rows_group`] for `d = 8 * D8`, `D8 % 4 == 0`: each key and value row is
/// converted once for all the group's queries; the accumulators live in `out` (L1).
///
/// # Safety
/// AVX2, FMA and F16C; `q.len() == out.len() == st.len() * 8 * D8`; `k.len() == v.len()`, a
/// multiple of `8 * D8`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_group_d<const D8: usize>(
    q: &[f32],
    k: &[f16],
    v: &[f16],
    scale: f32,
    st: &mut [OnlineSoftmax],
    out: &mut [f32],
) {
    let d = 8 * D8;
    let n = k.len() / d;
    let (qp, op) = (q.as_ptr(), out.as_mut_ptr());
    let mut w = [0f32; MAX_GROUP];
    for j in 0..n {
        let mut kr = [_mm256_setzero_ps(); D8];
        for (c, kc) in kr.iter_mut().enumerate() {
            // SAFETY: row `j < n` of `k` holds `d` elements (caller).
            *kc = unsafe { load8(k.as_ptr().add(j * d + 8 * c)) };
        }
        for (g, s) in st.iter_mut().enumerate() {
            let mut acc = [_mm256_setzero_ps(); 4];
            for (c, kc) in kr.iter().enumerate() {
                // SAFETY: query `g` holds `d` elements at `g * d` (caller).
                let qc = unsafe { _mm256_loadu_ps(qp.add(g * d + 8 * c)) };
                acc[c % 4] = _mm256_fmadd_ps(*kc, qc, acc[c % 4]);
            }
            let r = _mm256_add_ps(_mm256_add_ps(acc[0], acc[2]), _mm256_add_ps(acc[1], acc[3]));
            let t = _mm_add_ps(_mm256_castps256_ps128(r), _mm256_extractf128_ps::<1>(r));
            let h = _mm_hadd_ps(t, t);
            let (rescale, vs) = s.push(_mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h))) * scale);
            if let Some(ms) = rescale {
                let m = _mm256_set1_ps(ms);
                for c in 0..D8 {
                    // SAFETY: output row `g` holds `d` elements at `g * d` (caller).
                    unsafe {
                        let p = op.add(g * d + 8 * c);
                        _mm256_storeu_ps(p, round_f16(_mm256_mul_ps(_mm256_loadu_ps(p), m)));
                    }
                }
            }
            w[g] = vs;
        }
        for c in 0..D8 {
            // SAFETY: row `j < n` of `v` holds `d` elements (caller).
            let vc = unsafe { load8(v.as_ptr().add(j * d + 8 * c)) };
            for (g, &wg) in w[..st.len()].iter().enumerate() {
                // SAFETY: output row `g` holds `d` elements at `g * d` (caller); F16C.
                unsafe {
                    let p = op.add(g * d + 8 * c);
                    let r = _mm256_fmadd_ps(vc, _mm256_set1_ps(wg), _mm256_loadu_ps(p));
                    _mm256_storeu_ps(p, round_f16(r));
                }
            }
        }
    }
}

/// Most queries per group in the fused group kernel (larger groups use the reference).
const MAX_GROUP: usize = 16;

/// [`attention::attend_rows_group`] with F16C and FMA (the reference for other head sizes or
/// groups over [`MAX_GROUP`]).
pub(crate) fn attend_rows_group(
    q: &[f32],
    k: &[f16],
    v: &[f16],
    scale: f32,
    st: &mut [OnlineSoftmax],
    out: &mut [f32],
) {
    let (g, d) = attention::group_shape(q, k, v, st, out);
    // SAFETY: installed only after avx2, fma and f16c were detected; lengths checked above.
    unsafe {
        match (d, g <= MAX_GROUP) {
            (32, true) => attend_group_d::<4>(q, k, v, scale, st, out),
            (64, true) => attend_group_d::<8>(q, k, v, scale, st, out),
            (128, true) => attend_group_d::<16>(q, k, v, scale, st, out),
            (256, true) => attend_group_d::<32>(q, k, v, scale, st, out),
            _ => attention::attend_rows_group(q, k, v, scale, st, out),
        }
    }
}

/// [`attention::attend_rows`] with F16C and FMA (the reference for head sizes other than 32,
/// 64, 128, 256).
pub(crate) fn attend_rows(
    q: &[f32],
    k: &[f16],
    v: &[f16],
    scale: f32,
    st: &mut OnlineSoftmax,
    out: &mut [f32],
) {
    let d = q.len();
    assert!(out.len() == d && k.len() == v.len() && k.len().is_multiple_of(d.max(1)));
    // SAFETY: installed only after avx2, fma and f16c were detected; lengths checked above.
    unsafe {
        match d {
            32 => attend_d::<4>(q, k, v, scale, st, out),
            64 => attend_d::<8>(q, k, v, scale, st, out),
            128 => attend_d::<16>(q, k, v, scale, st, out),
            256 => attend_d::<32>(q, k, v, scale, st, out),
            _ => attention::attend_rows(q, k, v, scale, st, out),
        }
    }
}
