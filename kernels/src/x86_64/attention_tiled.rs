//! [`attention_tiled::attend_tile`] with AVX2 and FMA: scores and the weighted sum of values
//! as register-blocked products (6 query rows × 16 lanes, ggml's `simd_gemm` shape on AVX2),
//! each lane one fused multiply-add chain in the reference's order, and ggml's vectorized
//! exponential 8 keys at a time. Same bits as the reference. The loops are written once,
//! generic over the vector width ([`F32x`]); the AVX-512 kernel instantiates them for 512-bit
//! registers.

use std::arch::x86_64::{
    __m256, _mm256_andnot_ps, _mm256_cmp_ps, _mm256_cvtph_ps, _mm256_fmadd_ps, _mm256_loadu_ps,
    _mm256_movemask_ps, _mm256_mul_ps, _mm256_set1_ps, _mm256_setzero_ps, _mm256_storeu_ps,
    _mm_loadu_si128, _CMP_EQ_OQ, _CMP_GT_OQ,
};

use super::v3::{abs8, expf_ggml8_fast_branch};
use crate::kv::{KvRows, KvType};
use crate::reference::attention::OnlineSoftmax;
use crate::reference::attention_tiled::{
    self as tiled, load_shape, softmax_rows, tile_shape, KvTile, TILE,
};
use crate::reference::ops::expf_ggml;

/// `expf_ggml` of 8 lanes: ggml's `ggml_v_expf` on AVX2. Lanes at `-inf` give 0 (as the
/// reference's slow branch does); any other lane outside the fast branch's range sends the
/// group to the scalar reference.
///
/// # Safety
/// AVX2 and FMA; `s` holds 8 elements.
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(super) unsafe fn exp8(s: &mut [f32]) {
    // SAFETY: 8 elements (caller); unaligned load.
    let x = unsafe { _mm256_loadu_ps(s.as_ptr()) };
    let dead = _mm256_cmp_ps::<_CMP_EQ_OQ>(x, _mm256_set1_ps(f32::NEG_INFINITY));
    // SAFETY: AVX2 and FMA (target_feature).
    let (e, n) = unsafe { expf_ggml8_fast_branch(x) };
    // SAFETY: as above.
    let wide = _mm256_cmp_ps::<_CMP_GT_OQ>(unsafe { abs8(n) }, _mm256_set1_ps(126.0));
    if _mm256_movemask_ps(wide) & !_mm256_movemask_ps(dead) != 0 {
        s.iter_mut().for_each(|x| *x = expf_ggml(*x));
        return;
    }
    // SAFETY: as the load.
    unsafe { _mm256_storeu_ps(s.as_mut_ptr(), _mm256_andnot_ps(dead, e)) };
}

/// One f32 vector width of the tiled-attention products (`__m256`, `__m512`): the operations
/// the generic loops below need, and the width's register blocking, dispatched by row count in
/// a function compiled for the width's instructions.
pub(super) trait F32x: Copy {
    /// f32 lanes.
    const LANES: usize;
    /// Query rows per register block (2 vectors per row, plus the loaded operands, fit the
    /// registers).
    const RM: usize;
    /// # Safety
    /// The width's CPU features (every method).
    unsafe fn zero() -> Self;
    /// # Safety
    /// `LANES` readable f32 at `p`.
    unsafe fn load(p: *const f32) -> Self;
    /// # Safety
    /// `LANES` writable f32 at `p`.
    unsafe fn store(self, p: *mut f32);
    /// # Safety
    /// The width's CPU features.
    unsafe fn splat(x: f32) -> Self;
    /// `a · b + c`, one rounding.
    ///
    /// # Safety
    /// The width's CPU features.
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self;
    /// # Safety
    /// The width's CPU features.
    unsafe fn mul(a: Self, b: Self) -> Self;
    /// [`scores`] for a block of `m <= RM` rows.
    ///
    /// # Safety
    /// As [`scores`].
    unsafe fn scores_rows(
        m: usize,
        q: &[f32],
        kt: &[f32],
        d: usize,
        r0: usize,
        c: usize,
        p: &mut [f32],
    );
    /// [`values`] for a block of `m <= RM` rows, over `2 LANES` (`full`) or `LANES` lanes.
    ///
    /// # Safety
    /// As [`values`].
    /// `row *= ms` ([`rescale`]), compiled for the width's instructions (the softmax step calls
    /// it from a closure, which does not inherit them).
    ///
    /// # Safety
    /// The width's CPU features; `row.len()` a multiple of `LANES`.
    unsafe fn rescale_row(row: &mut [f32], ms: f32);
    #[allow(clippy::too_many_arguments)]
    unsafe fn values_rows(
        m: usize,
        full: bool,
        p: &[f32],
        v: &[f32],
        d: usize,
        r0: usize,
        j0: usize,
        out: &mut [f32],
    );
}

/// Scores of rows `r0..r0 + M` for keys `2 L c .. 2 L (c + 1)` (`L` lanes of `V`):
/// `p[r][k] = Σ_i kt[i][k] q[r][i]`, one FMA chain per lane from `i = 0`, two registers per row
/// (enough independent chains to hide the FMA latency with few rows).
///
/// # Safety
/// `V`'s features; rows `r0..r0 + M` of `q` (`d` each) and of `p` (`TILE` each) exist; `kt`
/// holds `d × TILE` elements; `2 L (c + 1) <= TILE`.
#[inline(always)]
pub(super) unsafe fn scores<V: F32x, const M: usize>(
    q: &[f32],
    kt: &[f32],
    d: usize,
    r0: usize,
    c: usize,
    p: &mut [f32],
) {
    let l = V::LANES;
    // SAFETY: `V`'s features (caller); every pointer below is in bounds (caller).
    unsafe {
        let mut acc = [[V::zero(); 2]; M];
        let (qp, kp) = (q.as_ptr(), kt.as_ptr());
        for i in 0..d {
            let b0 = V::load(kp.add(i * TILE + 2 * l * c));
            let b1 = V::load(kp.add(i * TILE + 2 * l * c + l));
            for (r, acc) in acc.iter_mut().enumerate() {
                let a = V::splat(*qp.add((r0 + r) * d + i));
                acc[0] = V::fmadd(b0, a, acc[0]);
                acc[1] = V::fmadd(b1, a, acc[1]);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let o = p.as_mut_ptr().add((r0 + r) * TILE + 2 * l * c);
            acc[0].store(o);
            acc[1].store(o.add(l));
        }
    }
}

/// `out[r][j] = fma(v[k][j], p[r][k], out[r][j])` for `k` in tile order, rows `r0..r0 + M`,
/// lanes `j0..j0 + N L`.
///
/// # Safety
/// `V`'s features; rows `r0..r0 + M` of `out` (`d` each) and `p` (`TILE` each) exist, `v`
/// holds `TILE × d`, `j0 + N L <= d`.
#[inline(always)]
pub(super) unsafe fn values<V: F32x, const M: usize, const N: usize>(
    p: &[f32],
    v: &[f32],
    d: usize,
    r0: usize,
    j0: usize,
    out: &mut [f32],
) {
    let l = V::LANES;
    // SAFETY: `V`'s features (caller); every pointer below is in bounds (caller).
    unsafe {
        let op = out.as_mut_ptr();
        let mut acc = [[V::zero(); N]; M];
        for (r, acc) in acc.iter_mut().enumerate() {
            for (n, a) in acc.iter_mut().enumerate() {
                *a = V::load(op.add((r0 + r) * d + j0 + l * n));
            }
        }
        let (pp, vp) = (p.as_ptr(), v.as_ptr());
        for k in 0..TILE {
            let mut b = [V::zero(); N];
            for (n, b) in b.iter_mut().enumerate() {
                *b = V::load(vp.add(k * d + j0 + l * n));
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let a = V::splat(*pp.add((r0 + r) * TILE + k));
                for (a_n, b) in acc.iter_mut().zip(&b) {
                    *a_n = V::fmadd(*b, a, *a_n);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (n, a) in acc.iter().enumerate() {
                a.store(op.add((r0 + r) * d + j0 + l * n));
            }
        }
    }
}

/// [`values`] over two registers of lanes (`N = 2`) or one.
///
/// # Safety
/// As [`values`].
#[inline(always)]
pub(super) unsafe fn values_n<V: F32x, const M: usize, const FULL: bool>(
    p: &[f32],
    v: &[f32],
    d: usize,
    r0: usize,
    j0: usize,
    out: &mut [f32],
) {
    // SAFETY: forwarded contract.
    unsafe {
        if FULL {
            values::<V, M, 2>(p, v, d, r0, j0, out)
        } else {
            values::<V, M, 1>(p, v, d, r0, j0, out)
        }
    }
}

/// Calls `$f::<$V, M $(, $x)?>` for a block of `$m` rows, `M` one of the listed counts (the
/// last for any larger `$m`).
macro_rules! by_rows {
    ($m:expr, [$($k:literal)*; $last:literal], $f:ident::<$v:ty>, $args:tt) => {
        match $m {
            $($k => $f::<$v, $k> $args,)*
            _ => $f::<$v, $last> $args,
        }
    };
    ($m:expr, [$($k:literal)*; $last:literal], $f:ident::<$v:ty, _, $x:tt>, $args:tt) => {
        match $m {
            $($k => $f::<$v, $k, $x> $args,)*
            _ => $f::<$v, $last, $x> $args,
        }
    };
}
pub(super) use by_rows;

impl F32x for __m256 {
    const LANES: usize = 8;
    const RM: usize = 6;
    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: AVX (caller).
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: forwarded contract; unaligned.
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: forwarded contract; unaligned.
        unsafe { _mm256_storeu_ps(p, self) }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        // SAFETY: AVX (caller).
        unsafe { _mm256_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
        // SAFETY: FMA (caller).
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn mul(a: Self, b: Self) -> Self {
        // SAFETY: AVX (caller).
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[target_feature(enable = "avx2,fma")]
    unsafe fn scores_rows(
        m: usize,
        q: &[f32],
        kt: &[f32],
        d: usize,
        r0: usize,
        c: usize,
        p: &mut [f32],
    ) {
        // SAFETY: forwarded contract; AVX2 and FMA enabled here.
        unsafe { by_rows!(m, [1 2 3 4 5; 6], scores::<__m256>, (q, kt, d, r0, c, p)) }
    }
    #[target_feature(enable = "avx2,fma")]
    unsafe fn rescale_row(row: &mut [f32], ms: f32) {
        // SAFETY: forwarded contract; AVX2 enabled here.
        unsafe { rescale::<__m256>(row, ms) }
    }
    #[target_feature(enable = "avx2,fma")]
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
        // SAFETY: forwarded contract; AVX2 and FMA enabled here.
        unsafe {
            if full {
                by_rows!(m, [1 2 3 4 5; 6], values_n::<__m256, _, true>, (p, v, d, r0, j0, out))
            } else {
                by_rows!(m, [1 2 3 4 5; 6], values_n::<__m256, _, false>, (p, v, d, r0, j0, out))
            }
        }
    }
}

/// `row *= ms`, `V::LANES` at a time.
///
/// # Safety
/// `V`'s features; `row.len()` a multiple of `V::LANES`.
#[inline(always)]
pub(super) unsafe fn rescale<V: F32x>(row: &mut [f32], ms: f32) {
    // SAFETY: `V`'s features (caller); whole vectors of the row.
    unsafe {
        let m = V::splat(ms);
        for c in row.chunks_exact_mut(V::LANES) {
            V::mul(V::load(c.as_ptr()), m).store(c.as_mut_ptr());
        }
    }
}

/// One tile for `rows` query rows with vectors `V` (steps 1–4 of
/// [`crate::reference::attention_tiled`]): scores `2 V::LANES` keys at a time, skipping blocks
/// no row of the register block sees; each row's softmax step with ggml's vectorized
/// exponential; the weighted sum of values.
///
/// # Safety
/// AVX2, FMA and `V`'s features; shapes checked by [`tile_shape`], `d` a multiple of
/// `V::LANES`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn attend_tile_with<V: F32x>(
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
    let (n, l) = (2 * V::LANES, V::LANES);
    for r0 in (0..rows).step_by(V::RM) {
        let m = (rows - r0).min(V::RM);
        for c in 0..TILE / n {
            let seen = spans[r0..r0 + m]
                .iter()
                .any(|&(lo, hi)| usize::from(lo) < n * c + n && usize::from(hi) > n * c);
            if seen {
                // SAFETY: rows `r0..r0 + m` exist, keys `n c .. n c + n <= TILE`, `kt` is
                // `d × TILE` (checked); the features (caller).
                unsafe { V::scores_rows(m, q, kv.kt, d, r0, c, p) };
            }
        }
    }
    // SAFETY: AVX2 and FMA (caller); groups of 8 elements.
    let exp8 = |g: &mut [f32]| unsafe { exp8(g) };
    softmax_rows(p, spans, scale, st, exp8, |r, ms| {
        // SAFETY: a row of `d` elements, a multiple of `V::LANES`; the features (caller).
        unsafe { V::rescale_row(&mut out[r * d..(r + 1) * d], ms) }
    });
    for r0 in (0..rows).step_by(V::RM) {
        let m = (rows - r0).min(V::RM);
        let mut j0 = 0;
        while j0 + 2 * l <= d {
            // SAFETY: rows `r0..r0 + m`, lanes `j0..j0 + 2 l <= d` (checked).
            unsafe { V::values_rows(m, true, p, kv.v, d, r0, j0, out) };
            j0 += 2 * l;
        }
        if j0 < d {
            // SAFETY: `d` is a multiple of `l`, so lanes `j0..j0 + l == d`.
            unsafe { V::values_rows(m, false, p, kv.v, d, r0, j0, out) };
        }
    }
}

/// # Safety
/// AVX2 and FMA; shapes checked by [`tile_shape`], `d % 8 == 0`.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_tile_avx2(
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
    // SAFETY: forwarded contract; AVX2 and FMA enabled here.
    unsafe { attend_tile_with::<__m256>(q, kv, spans, scale, st, out, p, rows, d) }
}

/// [`tiled::attend_tile`] with AVX2 and FMA (the reference for head sizes not a multiple of 8).
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
    if !d.is_multiple_of(8) {
        return tiled::attend_tile(q, kv, spans, scale, st, out, p);
    }
    // SAFETY: installed only after avx2 and fma were detected; shapes checked above.
    unsafe { attend_tile_avx2(q, kv, spans, scale, st, out, p, rows, d) }
}

/// f16 rows into a tile with F16C, 8 elements at a time.
///
/// # Safety
/// AVX2 and F16C; `k` and `v` hold `n` f16 rows of `d` elements (`d % 8 == 0`); keys
/// `at..at + n` are in the tile (`kt`: `d × TILE`, `vt`: `TILE × d`).
#[target_feature(enable = "avx2,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn load_f16(
    k: &[u8],
    v: &[u8],
    n: usize,
    d: usize,
    at: usize,
    kt: &mut [f32],
    vt: &mut [f32],
) {
    let mut lanes = [0f32; 8];
    for j in 0..n {
        for c in 0..d / 8 {
            // SAFETY: element `8c..8c + 8 <= d` of row `j < n` (16 bytes) in `k` and `v`, and
            // row `at + j < TILE` of `vt` (caller); unaligned loads and stores.
            unsafe {
                let src = (j * d + 8 * c) * 2;
                let kx = _mm256_cvtph_ps(_mm_loadu_si128(k.as_ptr().add(src).cast()));
                _mm256_storeu_ps(lanes.as_mut_ptr(), kx);
                let vx = _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr().add(src).cast()));
                _mm256_storeu_ps(vt.as_mut_ptr().add((at + j) * d + 8 * c), vx);
            }
            for (l, &x) in lanes.iter().enumerate() {
                kt[(8 * c + l) * TILE + at + j] = x;
            }
        }
    }
}

/// [`tiled::load_tile`] with F16C for f16 rows (the reference for other types and head sizes).
pub(crate) fn load_tile(k: KvRows<'_>, v: KvRows<'_>, at: usize, kt: &mut [f32], vt: &mut [f32]) {
    let (n, d) = load_shape(&k, &v, at, kt, vt);
    if k.ty != KvType::F16 || !d.is_multiple_of(8) {
        return tiled::load_tile(k, v, at, kt, vt);
    }
    // SAFETY: installed only after avx2 and f16c were detected; shapes checked above (`n`
    // whole f16 rows of `d` elements in `k` and `v`, keys `at..at + n` in the tile).
    unsafe { load_f16(k.bytes, v.bytes, n, d, at, kt, vt) }
}
