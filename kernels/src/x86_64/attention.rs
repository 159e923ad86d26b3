//! Attention of one query over f16 or quantized (Q8_0, Q4_0) keys and values with F16C and FMA,
//! fused: keys and values are converted 8 elements at a time as they are read ([`Rows8`]), and
//! for head sizes that fit, the f16 accumulator stays in registers across keys. Same operations
//! in the same order as [`attention::attend_rows`] (ggml's `flash_attn_ext_f16_one_chunk`), so
//! the same bits.

use std::arch::x86_64::{
    __m256, _mm256_add_ps, _mm256_castps256_ps128, _mm256_cvtph_ps, _mm256_cvtps_ph,
    _mm256_extractf128_ps, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_mul_ps, _mm256_set1_ps,
    _mm256_setzero_ps, _mm256_storeu_ps, _mm_add_ps, _mm_add_ss, _mm_cvtss_f32, _mm_hadd_ps,
    _mm_loadu_si128, _mm_movehdup_ps, _MM_FROUND_TO_NEAREST_INT,
};

use std::arch::x86_64::{
    _mm256_broadcastss_ps, _mm256_cvtepi32_ps, _mm256_cvtepi8_epi32, _mm256_cvtepu8_epi32,
    _mm256_set1_epi32, _mm256_sub_epi32, _mm_and_si128, _mm_cvtph_ps, _mm_cvtsi32_si128,
    _mm_loadl_epi64, _mm_set1_epi8, _mm_srli_epi16,
};

use crate::kv::{KvRows, KvType};
use crate::reference::attention::{self, OnlineSoftmax};

/// How a kernel reads a stored K/V row: 8 elements at a time as f32, exactly the values of
/// [`crate::kv::KvType::load_row`].
pub(super) trait Rows8 {
    /// Elements `8c..8c+8` of the row at `p`.
    ///
    /// # Safety
    /// The row at `p` holds at least `8c + 8` elements; AVX2 and F16C enabled in the caller.
    unsafe fn load8(p: *const u8, c: usize) -> __m256;
}

/// f16 rows.
pub(super) struct F16Rows;
/// Q8_0 rows: blocks of 32 (an f16 scale, 32 signed bytes).
pub(super) struct Q8Rows;
/// Q4_0 rows: blocks of 32 (an f16 scale; byte `i` holds elements `i` and `i + 16`).
pub(super) struct Q4Rows;

/// The f16 scale at `p`, broadcast.
///
/// # Safety
/// `p..p+2` readable; F16C and AVX2 enabled in the caller.
#[inline(always)]
unsafe fn scale_at(p: *const u8) -> __m256 {
    // SAFETY: two readable bytes (caller); F16C and AVX2 (caller).
    unsafe {
        let bits = u16::from_le_bytes([*p, *p.add(1)]);
        _mm256_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
    }
}

impl Rows8 for F16Rows {
    #[inline(always)]
    unsafe fn load8(p: *const u8, c: usize) -> __m256 {
        // SAFETY: 16 readable bytes at element `8c` (caller); unaligned load; F16C.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.add(16 * c).cast())) }
    }
}

impl Rows8 for Q8Rows {
    #[inline(always)]
    unsafe fn load8(p: *const u8, c: usize) -> __m256 {
        // SAFETY: block `c / 4` (34 bytes) is in the row (caller); its quants `8 (c % 4)..+8`
        // start 2 bytes in; AVX2 (caller). `d * q` is exact in f32, as in the reference.
        unsafe {
            let b = p.add(c / 4 * 34);
            let q = _mm256_cvtepi8_epi32(_mm_loadl_epi64(b.add(2 + 8 * (c % 4)).cast()));
            _mm256_mul_ps(_mm256_cvtepi32_ps(q), scale_at(b))
        }
    }
}

impl Rows8 for Q4Rows {
    #[inline(always)]
    unsafe fn load8(p: *const u8, c: usize) -> __m256 {
        // SAFETY: block `c / 4` (18 bytes) is in the row (caller): elements `8 (c % 4)..+8` are
        // the low (c % 4 < 2) or high nibbles of bytes `8 (c % 2)..+8`, 2 bytes in; AVX2.
        unsafe {
            let b = p.add(c / 4 * 18);
            let mut x = _mm_loadl_epi64(b.add(2 + 8 * (c % 2)).cast());
            if c % 4 >= 2 {
                x = _mm_srli_epi16::<4>(x);
            }
            let x = _mm_and_si128(x, _mm_set1_epi8(0x0f));
            let q = _mm256_sub_epi32(_mm256_cvtepu8_epi32(x), _mm256_set1_epi32(8));
            _mm256_mul_ps(_mm256_cvtepi32_ps(q), scale_at(b))
        }
    }
}

/// # Safety
/// The CPU must have AVX2 and F16C; called only from kernels that enable them.
#[inline(always)]
unsafe fn round_f16(v: __m256) -> __m256 {
    // SAFETY: F16C is enabled in every caller (target_feature).
    unsafe { _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v)) }
}

/// The fused loop for `d = 8 * D8` with `D8 % 4 == 0` (`d` a multiple of 32, so the dot has no
/// tail), over the `n` rows of `rb` bytes at `k` and `v`, read by `R`.
///
/// # Safety
/// AVX2, FMA and F16C; `q.len() == out.len() == 8 * D8`; `k` and `v` hold `n` rows of `rb`
/// bytes, each `d` elements stored as `R` reads them.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_d<const D8: usize, R: Rows8>(
    q: &[f32],
    k: *const u8,
    v: *const u8,
    rb: usize,
    n: usize,
    scale: f32,
    st: &mut OnlineSoftmax,
    out: &mut [f32],
) {
    let mut qv = [_mm256_setzero_ps(); D8];
    let mut o = [_mm256_setzero_ps(); D8];
    for c in 0..D8 {
        // SAFETY: `q` and `out` hold `d` elements (caller).
        unsafe {
            qv[c] = _mm256_loadu_ps(q.as_ptr().add(8 * c));
            o[c] = _mm256_loadu_ps(out.as_ptr().add(8 * c));
        }
    }
    for j in 0..n {
        // k · q: chunk c of 8 elements into accumulator c % 4 (dot_f16_order).
        let mut acc = [_mm256_setzero_ps(); 4];
        for c in 0..D8 {
            // SAFETY: row `j < n` of `k` holds `d` elements (caller).
            let kc = unsafe { R::load8(k.add(j * rb), c) };
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
            *oc = unsafe { round_f16(_mm256_fmadd_ps(R::load8(v.add(j * rb), c), w, *oc)) };
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
/// AVX2, FMA and F16C; `q.len() == out.len() == st.len() * 8 * D8`; `k` and `v` hold `n` rows
/// of `rb` bytes, each `d` elements stored as `R` reads them.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_group_d<const D8: usize, R: Rows8>(
    q: &[f32],
    k: *const u8,
    v: *const u8,
    rb: usize,
    n: usize,
    scale: f32,
    st: &mut [OnlineSoftmax],
    out: &mut [f32],
) {
    let d = 8 * D8;
    let (qp, op) = (q.as_ptr(), out.as_mut_ptr());
    let mut w = [0f32; MAX_GROUP];
    for j in 0..n {
        let mut kr = [_mm256_setzero_ps(); D8];
        for (c, kc) in kr.iter_mut().enumerate() {
            // SAFETY: row `j < n` of `k` holds `d` elements (caller).
            *kc = unsafe { R::load8(k.add(j * rb), c) };
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
            let vc = unsafe { R::load8(v.add(j * rb), c) };
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

/// The kernel's arguments for rows of `d` elements in `k` and `v`: (key and value pointers,
/// bytes per row, rows).
fn rows(d: usize, k: &KvRows<'_>, v: &KvRows<'_>) -> (*const u8, *const u8, usize, usize) {
    let rb = k.ty.row_bytes(d).unwrap_or(0);
    (k.bytes.as_ptr(), v.bytes.as_ptr(), rb, k.n_rows(d))
}

/// Calls `$f::<D8, R>($args)` for head size `$d` (32, 64, 128 or 256) and the rows' type, or
/// evaluates `$other`.
macro_rules! by_shape {
    ($f:ident, $d:expr, $ty:expr, ($($a:expr),*), $other:expr) => {
        match ($d, $ty) {
            (32, KvType::F16) => $f::<4, F16Rows>($($a),*),
            (64, KvType::F16) => $f::<8, F16Rows>($($a),*),
            (128, KvType::F16) => $f::<16, F16Rows>($($a),*),
            (256, KvType::F16) => $f::<32, F16Rows>($($a),*),
            (32, KvType::Q8_0) => $f::<4, Q8Rows>($($a),*),
            (64, KvType::Q8_0) => $f::<8, Q8Rows>($($a),*),
            (128, KvType::Q8_0) => $f::<16, Q8Rows>($($a),*),
            (256, KvType::Q8_0) => $f::<32, Q8Rows>($($a),*),
            (32, KvType::Q4_0) => $f::<4, Q4Rows>($($a),*),
            (64, KvType::Q4_0) => $f::<8, Q4Rows>($($a),*),
            (128, KvType::Q4_0) => $f::<16, Q4Rows>($($a),*),
            (256, KvType::Q4_0) => $f::<32, Q4Rows>($($a),*),
            _ => $other,
        }
    };
}

/// Most queries per group in the fused group kernel (larger groups use the reference).
const MAX_GROUP: usize = 16;

/// [`attention::attend_rows_group`] with F16C and FMA (the reference for other head sizes or
/// groups over [`MAX_GROUP`]).
pub(crate) fn attend_rows_group(
    q: &[f32],
    k: KvRows<'_>,
    v: KvRows<'_>,
    scale: f32,
    st: &mut [OnlineSoftmax],
    out: &mut [f32],
) {
    let (g, d) = attention::group_shape(q, &k, &v, st, out);
    if g > MAX_GROUP {
        return attention::attend_rows_group(q, k, v, scale, st, out);
    }
    let (kp, vp, rb, n) = rows(d, &k, &v);
    // SAFETY: installed only after avx2, fma and f16c were detected; shapes checked above: `k`
    // and `v` hold `n` rows of `rb` bytes of the type matched.
    unsafe {
        by_shape!(
            attend_group_d,
            d,
            k.ty,
            (q, kp, vp, rb, n, scale, st, out),
            attention::attend_rows_group(q, k, v, scale, st, out)
        )
    }
}

/// [`attention::attend_rows`] with F16C and FMA (the reference for head sizes other than 32,
/// 64, 128, 256).
pub(crate) fn attend_rows(
    q: &[f32],
    k: KvRows<'_>,
    v: KvRows<'_>,
    scale: f32,
    st: &mut OnlineSoftmax,
    out: &mut [f32],
) {
    let d = q.len();
    attention::rows_shape(d, &k, &v);
    assert!(out.len() == d);
    let (kp, vp, rb, n) = rows(d, &k, &v);
    // SAFETY: installed only after avx2, fma and f16c were detected; shapes checked above.
    unsafe {
        by_shape!(
            attend_d,
            d,
            k.ty,
            (q, kp, vp, rb, n, scale, st, out),
            attention::attend_rows(q, k, v, scale, st, out)
        )
    }
}
