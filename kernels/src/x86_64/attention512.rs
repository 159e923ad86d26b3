//! Attention of up to four queries over f16 or quantized (Q8_0, Q4_0) keys and values with
//! AVX-512: the AVX2 kernel of [`super::attention`] in 16-lane registers, with the queries' f16 accumulators kept in
//! registers across the keys of a call. Same operations in the same order as
//! [`attention::attend_rows`] (ggml's `flash_attn_ext_f16_one_chunk`), so the same bits:
//!
//! - the score `k · q` follows `dot_f16_order`: for each 32 elements, lanes 0..8 of the first
//!   register are its accumulator 0, lanes 8..16 accumulator 1, and the second register holds
//!   accumulators 2 and 3; then `(a0 + a2) + (a1 + a3)` and the same final additions;
//! - the online softmax is the reference's scalar code;
//! - the weighted sum is rounded to f16 after every key (`vcvtps2ph` / `vcvtph2ps`, nearest
//!   even), as ggml's `VKQ16`.

use std::arch::x86_64::{
    __m512, _mm256_add_ps, _mm256_castps256_ps128, _mm256_extractf128_ps, _mm256_loadu_si256,
    _mm512_add_ps, _mm512_castps512_ps256, _mm512_cvtph_ps, _mm512_cvtps_ph,
    _mm512_extractf32x8_ps, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_mul_ps, _mm512_set1_ps,
    _mm512_setzero_ps, _mm512_storeu_ps, _mm_add_ps, _mm_add_ss, _mm_cvtss_f32, _mm_hadd_ps,
    _mm_movehdup_ps, _MM_FROUND_TO_NEAREST_INT,
};

use std::arch::x86_64::{
    _mm512_broadcastss_ps, _mm512_cvtepi32_ps, _mm512_cvtepi8_epi32, _mm512_cvtepu8_epi32,
    _mm512_set1_epi32, _mm512_sub_epi32, _mm_and_si128, _mm_cvtph_ps, _mm_cvtsi32_si128,
    _mm_loadu_si128, _mm_set1_epi8, _mm_srli_epi16,
};

use crate::kv::{KvRows, KvType};
use crate::reference::attention::{self, OnlineSoftmax};

/// `v` rounded to f16 and back (nearest even).
///
/// # Safety
/// The CPU must have AVX-512 F (and F16C); called only from kernels that enable them.
#[inline(always)]
unsafe fn round_f16(v: __m512) -> __m512 {
    // SAFETY: AVX-512F is enabled in every caller (target_feature).
    unsafe { _mm512_cvtph_ps(_mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v)) }
}

/// How a kernel reads a stored K/V row: 16 elements at a time as f32, exactly the values of
/// [`crate::kv::KvType::load_row`].
trait Rows16 {
    /// Elements `16c..16c+16` of the row at `p`.
    ///
    /// # Safety
    /// The row at `p` holds at least `16c + 16` elements; AVX-512F enabled in the caller.
    unsafe fn load16(p: *const u8, c: usize) -> __m512;
}

/// f16 rows.
struct F16Rows;
/// Q8_0 rows: blocks of 32 (an f16 scale, 32 signed bytes).
struct Q8Rows;
/// Q4_0 rows: blocks of 32 (an f16 scale; byte `i` holds elements `i` and `i + 16`).
struct Q4Rows;

/// The f16 scale at `p`, broadcast.
///
/// # Safety
/// `p..p+2` readable; AVX-512F (and F16C) enabled in the caller.
#[inline(always)]
unsafe fn scale_at(p: *const u8) -> __m512 {
    // SAFETY: two readable bytes (caller); F16C (caller).
    unsafe {
        let bits = u16::from_le_bytes([*p, *p.add(1)]);
        _mm512_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
    }
}

impl Rows16 for F16Rows {
    #[inline(always)]
    unsafe fn load16(p: *const u8, c: usize) -> __m512 {
        // SAFETY: 32 readable bytes at element `16c` (caller); unaligned load.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.add(32 * c).cast())) }
    }
}

impl Rows16 for Q8Rows {
    #[inline(always)]
    unsafe fn load16(p: *const u8, c: usize) -> __m512 {
        // SAFETY: block `c / 2` (34 bytes) is in the row (caller); its quants `16 (c % 2)..+16`
        // start 2 bytes in. `d * q` is exact in f32, as in the reference.
        unsafe {
            let b = p.add(c / 2 * 34);
            let q = _mm512_cvtepi8_epi32(_mm_loadu_si128(b.add(2 + 16 * (c % 2)).cast()));
            _mm512_mul_ps(_mm512_cvtepi32_ps(q), scale_at(b))
        }
    }
}

impl Rows16 for Q4Rows {
    #[inline(always)]
    unsafe fn load16(p: *const u8, c: usize) -> __m512 {
        // SAFETY: block `c / 2` (18 bytes) is in the row (caller): elements `16 (c % 2)..+16`
        // are the low (even `c`) or high nibbles of its 16 quant bytes, 2 bytes in.
        unsafe {
            let b = p.add(c / 2 * 18);
            let mut x = _mm_loadu_si128(b.add(2).cast());
            if c % 2 == 1 {
                x = _mm_srli_epi16::<4>(x);
            }
            let x = _mm_and_si128(x, _mm_set1_epi8(0x0f));
            let q = _mm512_sub_epi32(_mm512_cvtepu8_epi32(x), _mm512_set1_epi32(8));
            _mm512_mul_ps(_mm512_cvtepi32_ps(q), scale_at(b))
        }
    }
}

/// `G` queries of `d = 16 * D16` elements (`D16` even) over the `n` keys and values of one call,
/// continuing `st` and `out` (`G` rows each).
///
/// # Safety
/// The CPU has the features of this file; `q` and `out` hold `G * 16 * D16` elements, `st` `G`
/// states; `k` and `v` hold `n` rows of `rb` bytes, each `16 * D16` elements stored as `R`
/// reads them.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend<const G: usize, const D16: usize, R: Rows16>(
    q: *const f32,
    k: *const u8,
    v: *const u8,
    rb: usize,
    n: usize,
    scale: f32,
    st: &mut [OnlineSoftmax],
    out: *mut f32,
) {
    let d = 16 * D16;
    let mut o = [[_mm512_setzero_ps(); D16]; G];
    for (g, og) in o.iter_mut().enumerate() {
        for (c, oc) in og.iter_mut().enumerate() {
            // SAFETY: `out` holds `G * d` elements (caller).
            *oc = unsafe { _mm512_loadu_ps(out.add(g * d + 16 * c)) };
        }
    }
    let mut w = [0f32; G];
    for j in 0..n {
        let mut kr = [_mm512_setzero_ps(); D16];
        for (c, kc) in kr.iter_mut().enumerate() {
            // SAFETY: key row `j < n` holds `d` elements (caller).
            *kc = unsafe { R::load16(k.add(j * rb), c) };
        }
        for g in 0..G {
            // Accumulators [a0 | a1] and [a2 | a3] of dot_f16_order.
            let (mut lo, mut hi) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            for c in (0..D16).step_by(2) {
                // SAFETY: query `g` holds `d` elements at `g * d` (caller).
                let (q0, q1) = unsafe {
                    (
                        _mm512_loadu_ps(q.add(g * d + 16 * c)),
                        _mm512_loadu_ps(q.add(g * d + 16 * c + 16)),
                    )
                };
                lo = _mm512_fmadd_ps(kr[c], q0, lo);
                hi = _mm512_fmadd_ps(kr[c + 1], q1, hi);
            }
            // [a0 + a2 | a1 + a3] -> r = (a0 + a2) + (a1 + a3) -> [r0+r4, .., r3+r7] ->
            // (t0 + t1) + (t2 + t3).
            let s = _mm512_add_ps(lo, hi);
            let r = _mm256_add_ps(_mm512_castps512_ps256(s), _mm512_extractf32x8_ps::<1>(s));
            let t = _mm_add_ps(_mm256_castps256_ps128(r), _mm256_extractf128_ps::<1>(r));
            let h = _mm_hadd_ps(t, t);
            let (rescale, vs) =
                st[g].push(_mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h))) * scale);
            if let Some(ms) = rescale {
                let m = _mm512_set1_ps(ms);
                for oc in o[g].iter_mut() {
                    // SAFETY: AVX-512F (target_feature).
                    *oc = unsafe { round_f16(_mm512_mul_ps(*oc, m)) };
                }
            }
            w[g] = vs;
        }
        for c in 0..D16 {
            // SAFETY: value row `j < n` holds `d` elements (caller).
            let vc = unsafe { R::load16(v.add(j * rb), c) };
            for (og, &wg) in o.iter_mut().zip(&w) {
                // SAFETY: AVX-512F (target_feature).
                og[c] = unsafe { round_f16(_mm512_fmadd_ps(vc, _mm512_set1_ps(wg), og[c])) };
            }
        }
    }
    for (g, og) in o.iter().enumerate() {
        for (c, oc) in og.iter().enumerate() {
            // SAFETY: `out` holds `G * d` elements (caller).
            unsafe { _mm512_storeu_ps(out.add(g * d + 16 * c), *oc) };
        }
    }
}

type Kernel =
    unsafe fn(*const f32, *const u8, *const u8, usize, usize, f32, &mut [OnlineSoftmax], *mut f32);

/// The kernel for `g` queries (at most 4, fewer for large heads so that the accumulators fit in
/// registers) of head size `d` over rows of `ty`, or `None` where the AVX2 kernel serves.
fn kernel(d: usize, g: usize, ty: KvType) -> Option<(Kernel, usize)> {
    match ty {
        KvType::F16 => kernel_for::<F16Rows>(d, g),
        KvType::Q8_0 => kernel_for::<Q8Rows>(d, g),
        KvType::Q4_0 => kernel_for::<Q4Rows>(d, g),
    }
}

/// [`kernel`] for rows read by `R`.
fn kernel_for<R: Rows16>(d: usize, g: usize) -> Option<(Kernel, usize)> {
    macro_rules! by_g {
        ($d16:literal, $max:literal) => {{
            let k: [Kernel; $max] = {
                let all: [Kernel; 4] = [
                    attend::<1, $d16, R>,
                    attend::<2, $d16, R>,
                    attend::<3, $d16, R>,
                    attend::<4, $d16, R>,
                ];
                let mut k = [all[0]; $max];
                k.copy_from_slice(&all[..$max]);
                k
            };
            let take = g.min($max);
            Some((k[take - 1], take))
        }};
    }
    if g == 0 {
        return None;
    }
    match d {
        32 => by_g!(2, 4),
        64 => by_g!(4, 4),
        128 => by_g!(8, 2),
        256 => by_g!(16, 1),
        _ => None,
    }
}

/// [`crate::reference::attention::attend_rows_group`] with AVX-512 (queries in chunks of up to
/// four; the AVX2 kernel for head sizes other than 32, 64, 128, 256).
pub(crate) fn attend_rows_group(
    q: &[f32],
    k: KvRows<'_>,
    v: KvRows<'_>,
    scale: f32,
    st: &mut [OnlineSoftmax],
    out: &mut [f32],
) {
    let (g, d) = attention::group_shape(q, &k, &v, st, out);
    if kernel(d, g, k.ty).is_none() {
        return super::attention::attend_rows_group(q, k, v, scale, st, out);
    }
    let (rb, n) = (k.ty.row_bytes(d).unwrap_or(0), k.n_rows(d));
    let mut h = 0;
    while h < g {
        let (f, take) = kernel(d, g - h, k.ty).expect("a kernel for this head size");
        // SAFETY: installed only on the AVX-512 path (after `tiles512::available()`, the same
        // features); queries `h..h+take` and their outputs
        // and states are in bounds (lengths checked above); `k`, `v` hold `n` rows of `rb`
        // bytes of the kernel's type.
        unsafe {
            f(
                q.as_ptr().add(h * d),
                k.bytes.as_ptr(),
                v.bytes.as_ptr(),
                rb,
                n,
                scale,
                &mut st[h..h + take],
                out.as_mut_ptr().add(h * d),
            )
        };
        h += take;
    }
}

/// [`crate::reference::attention::attend_rows`] with AVX-512 (one query).
pub(crate) fn attend_rows(
    q: &[f32],
    k: KvRows<'_>,
    v: KvRows<'_>,
    scale: f32,
    st: &mut OnlineSoftmax,
    out: &mut [f32],
) {
    attend_rows_group(q, k, v, scale, std::slice::from_mut(st), out)
}
