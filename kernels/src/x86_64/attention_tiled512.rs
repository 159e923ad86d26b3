//! [`crate::reference::attention_tiled::attend_tile`] with AVX-512: the AVX2 kernel's register-blocked products
//! ([`super::attention_tiled`]) with 16-lane vectors, so one fused multiply-add serves 16 keys
//! (scores) or 16 value elements (the weighted sum) where the AVX2 kernel needs two. Each lane
//! is still one FMA chain in the reference's order, and the softmax step is the AVX2 kernel's:
//! same bits as the reference. The tile loader converts f16 keys 16 at a time and transposes
//! them in registers into the key tile's layout.

use std::arch::x86_64::{
    __m512, _mm256_loadu_si256, _mm512_cvtph_ps, _mm512_fmadd_ps, _mm512_loadu_ps,
    _mm512_loadu_si512, _mm512_mul_ps, _mm512_permutex2var_ps, _mm512_set1_ps, _mm512_setzero_ps,
    _mm512_storeu_ps,
};

use super::attention_tiled::{attend_tile_with, TileProducts};
use crate::kv::{KvRows, KvType};
use crate::reference::attention::OnlineSoftmax;
use crate::reference::attention_tiled::{load_shape, tile_shape, KvTile, TILE};

/// Query rows per register block: 8 × 2 accumulators of scores or of values leave room in the
/// 32 registers for the loaded operands.
const RM: usize = 8;

/// Scores of rows `r0..r0 + M` for keys `32 c .. 32 c + 32`: `p[r][k] = Σ_i kt[i][k] q[r][i]`,
/// one FMA chain per lane from `i = 0` (two registers per row: enough independent chains to
/// cover the FMA latency with few rows).
///
/// # Safety
/// AVX-512F; rows `r0..r0 + M` of `q` (`d` each) and of `p` (`TILE` each) exist; `kt` holds
/// `d × TILE` elements; `c < 2`.
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn scores<const M: usize>(
    q: &[f32],
    kt: &[f32],
    d: usize,
    r0: usize,
    c: usize,
    p: &mut [f32],
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; M];
    let (qp, kp) = (q.as_ptr(), kt.as_ptr());
    for i in 0..d {
        // SAFETY: element `i < d` of rows `r0..r0 + M` and keys `32c..32c + 32` of row `i` of
        // `kt` are in bounds (caller).
        unsafe {
            let b0 = _mm512_loadu_ps(kp.add(i * TILE + 32 * c));
            let b1 = _mm512_loadu_ps(kp.add(i * TILE + 32 * c + 16));
            for (r, acc) in acc.iter_mut().enumerate() {
                let a = _mm512_set1_ps(*qp.add((r0 + r) * d + i));
                acc[0] = _mm512_fmadd_ps(b0, a, acc[0]);
                acc[1] = _mm512_fmadd_ps(b1, a, acc[1]);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        // SAFETY: row `r0 + r` of `p` holds `TILE` elements (caller).
        unsafe {
            let o = p.as_mut_ptr().add((r0 + r) * TILE + 32 * c);
            _mm512_storeu_ps(o, acc[0]);
            _mm512_storeu_ps(o.add(16), acc[1]);
        }
    }
}

/// `out[r][j] = fma(v[k][j], p[r][k], out[r][j])` for `k` in tile order, rows `r0..r0 + M`,
/// lanes `j0..j0 + 16 N`.
///
/// # Safety
/// AVX-512F; rows `r0..r0 + M` of `out` (`d` each) and `p` (`TILE` each) exist, `v` holds
/// `TILE × d`, `j0 + 16 N <= d`.
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn values<const M: usize, const N: usize>(
    p: &[f32],
    v: &[f32],
    d: usize,
    r0: usize,
    j0: usize,
    out: &mut [f32],
) {
    let mut acc = [[_mm512_setzero_ps(); N]; M];
    let op = out.as_mut_ptr();
    for (r, acc) in acc.iter_mut().enumerate() {
        for (n, a) in acc.iter_mut().enumerate() {
            // SAFETY: lanes `j0 + 16n .. +16` of row `r0 + r` of `out` (caller).
            *a = unsafe { _mm512_loadu_ps(op.add((r0 + r) * d + j0 + 16 * n)) };
        }
    }
    let (pp, vp) = (p.as_ptr(), v.as_ptr());
    for k in 0..TILE {
        let mut b = [_mm512_setzero_ps(); N];
        for (n, b) in b.iter_mut().enumerate() {
            // SAFETY: row `k` of `v`, lanes `j0 + 16n .. +16` (caller).
            *b = unsafe { _mm512_loadu_ps(vp.add(k * d + j0 + 16 * n)) };
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: weight `k` of row `r0 + r` (caller).
            let a = _mm512_set1_ps(unsafe { *pp.add((r0 + r) * TILE + k) });
            for (a_n, b) in acc.iter_mut().zip(&b) {
                *a_n = _mm512_fmadd_ps(*b, a, *a_n);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (n, a) in acc.iter().enumerate() {
            // SAFETY: as the loads.
            unsafe { _mm512_storeu_ps(op.add((r0 + r) * d + j0 + 16 * n), *a) };
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
            6 => $f::<6 $(, $n)*>($($arg),*),
            7 => $f::<7 $(, $n)*>($($arg),*),
            _ => $f::<RM $(, $n)*>($($arg),*),
        }
    };
}

/// AVX-512's products: 32 keys (two registers) per row, 32 value lanes, 8 rows per block.
struct Avx512Products;

/// `row *= ms` with AVX-512.
///
/// # Safety
/// AVX-512F; `row.len() % 16 == 0`.
#[target_feature(enable = "avx512f")]
unsafe fn rescale16(row: &mut [f32], ms: f32) {
    let m = _mm512_set1_ps(ms);
    for c in row.chunks_exact_mut(16) {
        // SAFETY: 16 elements; unaligned.
        unsafe {
            _mm512_storeu_ps(
                c.as_mut_ptr(),
                _mm512_mul_ps(_mm512_loadu_ps(c.as_ptr()), m),
            )
        };
    }
}

impl TileProducts for Avx512Products {
    const KEYS: usize = 32;
    const LANES: usize = 32;
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
        unsafe { rescale16(row, ms) }
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
    unsafe { attend_tile_with::<Avx512Products>(q, kv, spans, scale, st, out, p, rows, d) }
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
