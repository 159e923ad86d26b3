//! [`crate::reference::attention_tiled::attend_tile`] with AVX-512: the AVX2 kernel's register-blocked products
//! ([`super::attention_tiled`], generic over the width) with 16-lane vectors, so one fused multiply-add serves 16 keys
//! (scores) or 16 value elements (the weighted sum) where the AVX2 kernel needs two. Each lane
//! is still one FMA chain in the reference's order, and the softmax step is the AVX2 kernel's:
//! same bits as the reference. The tile loader converts f16 keys 16 at a time and transposes
//! them in registers into the key tile's layout.

use std::arch::x86_64::{
    __m512, _mm256_loadu_si256, _mm512_cvtph_ps, _mm512_fmadd_ps, _mm512_loadu_ps,
    _mm512_loadu_si512, _mm512_mul_ps, _mm512_permutex2var_ps, _mm512_set1_ps, _mm512_setzero_ps,
    _mm512_storeu_ps,
};

use super::attention_tiled::{attend_tile_with, by_rows, rescale, scores, values_n, F32x};
use crate::kv::{KvRows, KvType};
use crate::reference::attention::OnlineSoftmax;
use crate::reference::attention_tiled::{load_shape, tile_shape, KvTile, TILE};

impl F32x for __m512 {
    const LANES: usize = 16;
    const RM: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: AVX-512F (caller).
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: forwarded contract; unaligned.
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: forwarded contract; unaligned.
        unsafe { _mm512_storeu_ps(p, self) }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        // SAFETY: AVX-512F (caller).
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
        // SAFETY: AVX-512F (caller).
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn mul(a: Self, b: Self) -> Self {
        // SAFETY: AVX-512F (caller).
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn scores_rows(
        m: usize,
        q: &[f32],
        kt: &[f32],
        d: usize,
        r0: usize,
        c: usize,
        p: &mut [f32],
    ) {
        // SAFETY: forwarded contract; AVX-512F enabled here.
        unsafe { by_rows!(m, [1 2 3 4 5 6 7; 8], scores::<__m512>, (q, kt, d, r0, c, p)) }
    }
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn rescale_row(row: &mut [f32], ms: f32) {
        // SAFETY: forwarded contract; AVX-512F enabled here.
        unsafe { rescale::<__m512>(row, ms) }
    }
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn values_rows(
        m: usize,
        full: bool,
        p: &[f32],
        v: &[f32],
        d: usize,
        r0: usize,
        j0: usize,
        out: &mut [f32],
    ) {
        // SAFETY: forwarded contract; AVX-512F enabled here.
        unsafe {
            if full {
                by_rows!(m, [1 2 3 4 5 6 7; 8], values_n::<__m512, _, true>, (p, v, d, r0, j0, out))
            } else {
                by_rows!(m, [1 2 3 4 5 6 7; 8], values_n::<__m512, _, false>, (p, v, d, r0, j0, out))
            }
        }
    }
}

/// # Safety
/// AVX-512F, AVX2 and FMA; shapes checked by [`tile_shape`], `d % 16 == 0`.
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_tile_avx512(
    q: &[f32],
    kv: KvTile<'_>,
    spans: &[(u8, u8)],
    scale: f32,
    st: &mut [OnlineSoftmax],
    out: &mut [f32],
    p: &mut [f32],
    rows: usize,
    d: usize,
) {
    // SAFETY: forwarded contract; AVX-512F, AVX2 and FMA enabled here.
    unsafe { attend_tile_with::<__m512>(q, kv, spans, scale, st, out, p, rows, d) }
}

/// [`crate::reference::attention_tiled::attend_tile`] with AVX-512 (the AVX2 kernel for head sizes not a multiple of 16).
pub(crate) fn attend_tile(
    q: &[f32],
    kv: KvTile<'_>,
    spans: &[(u8, u8)],
    scale: f32,
    st: &mut [OnlineSoftmax],
    out: &mut [f32],
    p: &mut [f32],
) {
    let (rows, d) = tile_shape(q, &kv, spans, st, out, p);
    if !d.is_multiple_of(16) {
        return super::attention_tiled::attend_tile(q, kv, spans, scale, st, out, p);
    }
    // SAFETY: installed only after the AVX-512 path's features were detected; shapes checked
    // above.
    unsafe { attend_tile_avx512(q, kv, spans, scale, st, out, p, rows, d) }
}

/// Transpose the 16 × 16 matrix held in `r` (row `i` in `r[i]`): off-diagonal blocks of 8, 4,
/// 2 and 1 swapped in turn, two two-source permutes per pair of rows and level.
///
/// # Safety
/// AVX-512F.
#[inline(always)]
unsafe fn transpose16(r: &mut [__m512; 16]) {
    for b in [8usize, 4, 2, 1] {
        // Row `i` (bit `b` clear) keeps its lanes without bit `b` and takes row `i + b`'s
        // lanes `l - b` into those with it; row `i + b` takes row `i`'s lanes `l + b` and
        // keeps its own.
        let (mut lo, mut hi) = ([0i32; 16], [0i32; 16]);
        for l in 0..16 {
            (lo[l], hi[l]) = if l & b == 0 {
                (l as i32, (l + b) as i32)
            } else {
                ((l - b + 16) as i32, (l + 16) as i32)
            };
        }
        // SAFETY: AVX-512F (caller); 16 i32 each.
        let (lo, hi) = unsafe {
            (
                _mm512_loadu_si512(lo.as_ptr().cast()),
                _mm512_loadu_si512(hi.as_ptr().cast()),
            )
        };
        for i in (0..16).filter(|i| i & b == 0) {
            let (x, y) = (r[i], r[i + b]);
            // SAFETY: AVX-512F (caller).
            unsafe {
                r[i] = _mm512_permutex2var_ps(x, lo, y);
                r[i + b] = _mm512_permutex2var_ps(x, hi, y);
            }
        }
    }
}

/// f16 rows into a tile, 16 keys at a time: values converted and stored in place; keys
/// converted as a 16 × 16 block (16 keys, 16 elements), transposed in registers and stored as
/// 16 rows of the transposed key tile. Keys past the last whole 16 take the AVX2 loader.
///
/// # Safety
/// AVX-512F and F16C; `k` and `v` hold `n` f16 rows of `d` elements (`d % 16 == 0`); keys
/// `at..at + n` are in the tile (`kt`: `d × TILE`, `vt`: `TILE × d`).
#[target_feature(enable = "avx512f,avx2,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn load_f16(
    k: KvRows<'_>,
    v: KvRows<'_>,
    n: usize,
    d: usize,
    at: usize,
    kt: &mut [f32],
    vt: &mut [f32],
) {
    let whole = n / 16 * 16;
    let (kp, vp) = (k.bytes.as_ptr(), v.bytes.as_ptr());
    for j0 in (0..whole).step_by(16) {
        for c in 0..d / 16 {
            let mut r = [_mm512_setzero_ps(); 16];
            for (m, r) in r.iter_mut().enumerate() {
                let src = ((j0 + m) * d + 16 * c) * 2;
                // SAFETY: elements `16c..16c + 16 <= d` of row `j0 + m < n` (32 bytes) in `k`
                // and `v`; row `at + j0 + m < TILE` of `vt` (caller); unaligned.
                unsafe {
                    *r = _mm512_cvtph_ps(_mm256_loadu_si256(kp.add(src).cast()));
                    let vx = _mm512_cvtph_ps(_mm256_loadu_si256(vp.add(src).cast()));
                    _mm512_storeu_ps(vt.as_mut_ptr().add((at + j0 + m) * d + 16 * c), vx);
                }
            }
            // SAFETY: AVX-512F (target_feature).
            unsafe { transpose16(&mut r) };
            for (l, r) in r.iter().enumerate() {
                // SAFETY: keys `at + j0 .. at + j0 + 16 <= TILE` of row `16c + l < d` of `kt`.
                unsafe { _mm512_storeu_ps(kt.as_mut_ptr().add((16 * c + l) * TILE + at + j0), *r) };
            }
        }
    }
    if whole < n {
        super::attention_tiled::load_tile(
            k.slice(whole..n, d),
            v.slice(whole..n, d),
            at + whole,
            kt,
            vt,
        );
    }
}

/// [`crate::reference::attention_tiled::load_tile`] with AVX-512 for f16 rows whose size is a
/// multiple of 16 (the AVX2 loader otherwise).
pub(crate) fn load_tile(k: KvRows<'_>, v: KvRows<'_>, at: usize, kt: &mut [f32], vt: &mut [f32]) {
    let (n, d) = load_shape(&k, &v, at, kt, vt);
    if k.ty != KvType::F16 || !d.is_multiple_of(16) {
        return super::attention_tiled::load_tile(k, v, at, kt, vt);
    }
    // SAFETY: installed only after the AVX-512 path's features were detected; shapes checked
    // above (`n` whole f16 rows of `d` elements in `k` and `v`, keys `at..at + n` in the tile).
    unsafe { load_f16(k, v, n, d, at, kt, vt) }
}
