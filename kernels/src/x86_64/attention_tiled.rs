//! [`attention_tiled::attend_tile`] with AVX2 and FMA: scores and the weighted sum of values
//! as register-blocked products (6 query rows × 16 lanes, ggml's `simd_gemm` shape on AVX2),
//! each lane one fused multiply-add chain in the reference's order, and ggml's vectorized
//! exponential 8 keys at a time. Same bits as the reference.

use std::arch::x86_64::{
    _mm256_andnot_ps, _mm256_cmp_ps, _mm256_cvtph_ps, _mm256_fmadd_ps, _mm256_loadu_ps,
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

/// Query rows per register block.
const RM: usize = 6;

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

/// Scores of rows `r0..r0 + M` for keys `16 c .. 16 c + 16`: `p[r][k] = Σ_i kt[i][k] q[r][i]`,
/// one FMA chain per lane from `i = 0`.
///
/// # Safety
/// AVX2 and FMA; rows `r0..r0 + M` of `q` (`d` each) and of `p` (`TILE` each) exist; `kt` holds
/// `d × TILE` elements; `c < 4`.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn scores<const M: usize>(
    q: &[f32],
    kt: &[f32],
    d: usize,
    r0: usize,
    c: usize,
    p: &mut [f32],
) {
    let mut acc = [[_mm256_setzero_ps(); 2]; M];
    let (qp, kp) = (q.as_ptr(), kt.as_ptr());
    for i in 0..d {
        // SAFETY: element `i < d` of rows `r0..r0 + M` and keys `16c..16c + 16` of row `i` of
        // `kt` are in bounds (caller).
        unsafe {
            let b0 = _mm256_loadu_ps(kp.add(i * TILE + 16 * c));
            let b1 = _mm256_loadu_ps(kp.add(i * TILE + 16 * c + 8));
            for (r, acc) in acc.iter_mut().enumerate() {
                let a = _mm256_set1_ps(*qp.add((r0 + r) * d + i));
                acc[0] = _mm256_fmadd_ps(b0, a, acc[0]);
                acc[1] = _mm256_fmadd_ps(b1, a, acc[1]);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        // SAFETY: row `r0 + r` of `p` holds `TILE` elements (caller).
        unsafe {
            let o = p.as_mut_ptr().add((r0 + r) * TILE + 16 * c);
            _mm256_storeu_ps(o, acc[0]);
            _mm256_storeu_ps(o.add(8), acc[1]);
        }
    }
}

/// `out[r][j] = fma(v[k][j], p[r][k], out[r][j])` for `k` in tile order, rows `r0..r0 + M`,
/// lanes `j0..j0 + 8 N`.
///
/// # Safety
/// AVX2 and FMA; rows `r0..r0 + M` of `out` (`d` each) and `p` (`TILE` each) exist, `v` holds
/// `TILE × d`, `j0 + 8 N <= d`.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn values<const M: usize, const N: usize>(
    p: &[f32],
    v: &[f32],
    d: usize,
    r0: usize,
    j0: usize,
    out: &mut [f32],
) {
    let mut acc = [[_mm256_setzero_ps(); N]; M];
    let op = out.as_mut_ptr();
    for (r, acc) in acc.iter_mut().enumerate() {
        for (n, a) in acc.iter_mut().enumerate() {
            // SAFETY: lanes `j0 + 8n .. +8` of row `r0 + r` of `out` (caller).
            *a = unsafe { _mm256_loadu_ps(op.add((r0 + r) * d + j0 + 8 * n)) };
        }
    }
    let (pp, vp) = (p.as_ptr(), v.as_ptr());
    for k in 0..TILE {
        let mut b = [_mm256_setzero_ps(); N];
        for (n, b) in b.iter_mut().enumerate() {
            // SAFETY: row `k` of `v`, lanes `j0 + 8n .. +8` (caller).
            *b = unsafe { _mm256_loadu_ps(vp.add(k * d + j0 + 8 * n)) };
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: weight `k` of row `r0 + r` (caller).
            let a = _mm256_set1_ps(unsafe { *pp.add((r0 + r) * TILE + k) });
            for (a_n, b) in acc.iter_mut().zip(&b) {
                *a_n = _mm256_fmadd_ps(*b, a, *a_n);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (n, a) in acc.iter().enumerate() {
            // SAFETY: as the loads.
            unsafe { _mm256_storeu_ps(op.add((r0 + r) * d + j0 + 8 * n), *a) };
        }
    }
}

/// Calls `$f::<M, ..>` for a block of `$m` (1 to [`RM`]) rows.
macro_rules! by_rows {
    ($m:expr, $f:ident, [$($n:tt)*], ($($arg:expr),*)) => {
        match $m {
            1 => $f::<1 $(, $n)*>($($arg),*),
            2 => $f::<2 $(, $n)*>($($arg),*),
            3 => $f::<3 $(, $n)*>($($arg),*),
            4 => $f::<4 $(, $n)*>($($arg),*),
            5 => $f::<5 $(, $n)*>($($arg),*),
            _ => $f::<RM $(, $n)*>($($arg),*),
        }
    };
}

/// The register-blocked products of one vector width, which [`attend_tile_with`] drives.
pub(super) trait TileProducts {
    /// Keys per [`TileProducts::scores`] call (`TILE` is a multiple).
    const KEYS: usize;
    /// Value lanes per full [`TileProducts::values`] call; a half call takes `LANES / 2`, and
    /// head sizes are multiples of that.
    const LANES: usize;
    /// Query rows per register block.
    const RM: usize;
    /// Scores of rows `r0..r0 + m` (`m <= RM`) for keys `KEYS c .. KEYS (c + 1)`.
    ///
    /// # Safety
    /// The width's CPU features; the rows, keys and weights are in bounds.
    unsafe fn scores(m: usize, q: &[f32], kt: &[f32], d: usize, r0: usize, c: usize, p: &mut [f32]);
    /// The weighted sum of values for rows `r0..r0 + m`, lanes `j0..j0 + LANES` (`full`) or
    /// `j0..j0 + LANES / 2`.
    ///
    /// # Safety
    /// As [`TileProducts::scores`], for the lanes.
    #[allow(clippy::too_many_arguments)]
    unsafe fn values(
        m: usize,
        full: bool,
        p: &[f32],
        v: &[f32],
        d: usize,
        r0: usize,
        j0: usize,
        out: &mut [f32],
    );
    /// `row *= ms`, lane by lane.
    ///
    /// # Safety
    /// The width's CPU features; `row.len()` a multiple of `LANES / 2`.
    unsafe fn rescale(row: &mut [f32], ms: f32);
}

/// One tile for `rows` query rows with products `K` (steps 1–4 of
/// [`crate::reference::attention_tiled`]): scores `K::KEYS` keys at a time, skipping blocks no
/// row of the register block sees; each row's softmax step with ggml's vectorized exponential;
/// the weighted sum of values.
///
/// # Safety
/// AVX2 and FMA and `K`'s features; shapes checked by [`tile_shape`], `d` a multiple of
/// `K::LANES / 2`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn attend_tile_with<K: TileProducts>(
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
    let n = K::KEYS;
    for r0 in (0..rows).step_by(K::RM) {
        let m = (rows - r0).min(K::RM);
        for c in 0..TILE / n {
            let seen = spans[r0..r0 + m]
                .iter()
                .any(|&(lo, hi)| usize::from(lo) < n * c + n && usize::from(hi) > n * c);
            if seen {
                // SAFETY: rows `r0..r0 + m` exist, keys `n c .. n c + n <= TILE`, `kt` is
                // `d × TILE` (checked); the features (caller).
                unsafe { K::scores(m, q, kv.kt, d, r0, c, p) };
            }
        }
    }
    // SAFETY: AVX2 and FMA (caller); groups of 8 elements.
    let exp8 = |g: &mut [f32]| unsafe { exp8(g) };
    softmax_rows(p, spans, scale, st, exp8, |r, ms| {
        // SAFETY: a row of `d` elements, a multiple of `K::LANES / 2`; the features (caller).
        unsafe { K::rescale(&mut out[r * d..(r + 1) * d], ms) }
    });
    for r0 in (0..rows).step_by(K::RM) {
        let m = (rows - r0).min(K::RM);
        let mut j0 = 0;
        while j0 + K::LANES <= d {
            // SAFETY: rows `r0..r0 + m`, lanes `j0..j0 + LANES <= d` (checked).
            unsafe { K::values(m, true, p, kv.v, d, r0, j0, out) };
            j0 += K::LANES;
        }
        if j0 < d {
            // SAFETY: `d` is a multiple of `LANES / 2`, so lanes `j0..j0 + LANES / 2 == d`.
            unsafe { K::values(m, false, p, kv.v, d, r0, j0, out) };
        }
    }
}

/// AVX2's products: 16 keys (two registers) per row, 16 value lanes, 6 rows per block.
struct Avx2Products;

/// `row *= ms` with AVX2.
///
/// # Safety
/// AVX2; `row.len() % 8 == 0`.
#[target_feature(enable = "avx2,fma")]
unsafe fn rescale8(row: &mut [f32], ms: f32) {
    let m = _mm256_set1_ps(ms);
    for c in row.chunks_exact_mut(8) {
        // SAFETY: 8 elements; unaligned.
        unsafe {
            _mm256_storeu_ps(
                c.as_mut_ptr(),
                _mm256_mul_ps(_mm256_loadu_ps(c.as_ptr()), m),
            )
        };
    }
}

impl TileProducts for Avx2Products {
    const KEYS: usize = 16;
    const LANES: usize = 16;
    const RM: usize = RM;
    unsafe fn scores(
        m: usize,
        q: &[f32],
        kt: &[f32],
        d: usize,
        r0: usize,
        c: usize,
        p: &mut [f32],
    ) {
        // SAFETY: forwarded contract.
        unsafe { by_rows!(m, scores, [], (q, kt, d, r0, c, p)) }
    }
    unsafe fn values(
        m: usize,
        full: bool,
        p: &[f32],
        v: &[f32],
        d: usize,
        r0: usize,
        j0: usize,
        out: &mut [f32],
    ) {
        // SAFETY: forwarded contract.
        unsafe {
            if full {
                by_rows!(m, values, [2], (p, v, d, r0, j0, out))
            } else {
                by_rows!(m, values, [1], (p, v, d, r0, j0, out))
            }
        }
    }
    unsafe fn rescale(row: &mut [f32], ms: f32) {
        // SAFETY: forwarded contract.
        unsafe { rescale8(row, ms) }
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
    unsafe { attend_tile_with::<Avx2Products>(q, kv, spans, scale, st, out, p, rows, d) }
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
