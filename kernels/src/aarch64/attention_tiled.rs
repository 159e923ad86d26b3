//! [`attention_tiled::attend_tile`] with NEON: scores and the weighted sum of values as
//! register-blocked products (4 query rows × 16 lanes), each lane one fused multiply-add chain in
//! the reference's order, and ggml's vectorized exponential four keys at a time ([`expf4`]).
//! Same bits as the reference.

use std::arch::aarch64::{vdupq_n_f32, vfmaq_f32, vld1q_f32, vmulq_f32, vst1q_f32};

use half::f16;

use super::attention::load8_f16;
use super::ops::expf4;
use crate::kv::{KvRows, KvType};
use crate::reference::attention::OnlineSoftmax;
use crate::reference::attention_tiled::{
    self as tiled, load_shape, softmax_rows, tile_shape, KvTile, TILE,
};

/// Query rows per register block.
const RM: usize = 4;

/// Scores of rows `r0..r0 + M` for keys `16 c .. 16 c + 16`, one FMA chain per lane from
/// `i = 0`.
///
/// # Safety
/// Rows `r0..r0 + M` of `q` (`d` each) and of `p` (`TILE` each) exist; `kt` holds `d × TILE`
/// elements; `c < 4`.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn scores<const M: usize>(
    q: &[f32],
    kt: &[f32],
    d: usize,
    r0: usize,
    c: usize,
    p: &mut [f32],
) {
    let mut acc = [[vdupq_n_f32(0.0); 4]; M];
    let (qp, kp) = (q.as_ptr(), kt.as_ptr());
    for i in 0..d {
        // SAFETY: element `i < d` of rows `r0..r0 + M`, keys `16c..16c + 16` of row `i` of `kt`
        // (caller).
        unsafe {
            let b = [0, 4, 8, 12].map(|o| vld1q_f32(kp.add(i * TILE + 16 * c + o)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let a = vdupq_n_f32(*qp.add((r0 + r) * d + i));
                for (x, b) in acc.iter_mut().zip(b) {
                    *x = vfmaq_f32(*x, b, a);
                }
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (n, x) in acc.iter().enumerate() {
            // SAFETY: row `r0 + r` of `p` holds `TILE` elements (caller).
            unsafe { vst1q_f32(p.as_mut_ptr().add((r0 + r) * TILE + 16 * c + 4 * n), *x) };
        }
    }
}

/// `out[r][j] = fma(v[k][j], p[r][k], out[r][j])` for `k` in tile order, rows `r0..r0 + M`,
/// lanes `j0..j0 + 4 N`.
///
/// # Safety
/// Rows `r0..r0 + M` of `out` (`d` each) and `p` (`TILE` each) exist, `v` holds `TILE × d`,
/// `j0 + 4 N <= d`.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn values<const M: usize, const N: usize>(
    p: &[f32],
    v: &[f32],
    d: usize,
    r0: usize,
    j0: usize,
    out: &mut [f32],
) {
    let op = out.as_mut_ptr();
    let mut acc = [[vdupq_n_f32(0.0); N]; M];
    for (r, acc) in acc.iter_mut().enumerate() {
        for (n, a) in acc.iter_mut().enumerate() {
            // SAFETY: lanes `j0 + 4n .. +4` of row `r0 + r` of `out` (caller).
            *a = unsafe { vld1q_f32(op.add((r0 + r) * d + j0 + 4 * n)) };
        }
    }
    let (pp, vp) = (p.as_ptr(), v.as_ptr());
    for k in 0..TILE {
        let mut b = [vdupq_n_f32(0.0); N];
        for (n, b) in b.iter_mut().enumerate() {
            // SAFETY: row `k` of `v`, lanes `j0 + 4n .. +4` (caller).
            *b = unsafe { vld1q_f32(vp.add(k * d + j0 + 4 * n)) };
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: weight `k` of row `r0 + r` (caller).
            let a = vdupq_n_f32(unsafe { *pp.add((r0 + r) * TILE + k) });
            for (x, b) in acc.iter_mut().zip(&b) {
                *x = vfmaq_f32(*x, *b, a);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (n, a) in acc.iter().enumerate() {
            // SAFETY: as the loads.
            unsafe { vst1q_f32(op.add((r0 + r) * d + j0 + 4 * n), *a) };
        }
    }
}

/// `expf_ggml` of 8 elements in place.
///
/// # Safety
/// `s` holds 8 elements.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn exp8(s: &mut [f32]) {
    for h in 0..2 {
        // SAFETY: elements `4h..4h + 4` of 8 (caller).
        unsafe {
            let p = s.as_mut_ptr().add(4 * h);
            vst1q_f32(p, expf4(vld1q_f32(p)));
        }
    }
}

/// # Safety
/// NEON; shapes checked by [`tile_shape`], `d % 4 == 0`.
#[target_feature(enable = "neon")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_tile_neon(
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
    for r0 in (0..rows).step_by(RM) {
        let m = (rows - r0).min(RM);
        for c in 0..TILE / 16 {
            let seen = spans[r0..r0 + m]
                .iter()
                .any(|&(lo, hi)| usize::from(lo) < 16 * c + 16 && usize::from(hi) > 16 * c);
            if seen {
                // SAFETY: rows `r0..r0 + m` exist, `c < 4`, `kt` is `d × TILE` (checked).
                unsafe {
                    match m {
                        1 => scores::<1>(q, kv.kt, d, r0, c, p),
                        2 => scores::<2>(q, kv.kt, d, r0, c, p),
                        3 => scores::<3>(q, kv.kt, d, r0, c, p),
                        _ => scores::<RM>(q, kv.kt, d, r0, c, p),
                    }
                }
            }
        }
    }
    // SAFETY: NEON are enabled in this function; groups of 8 elements.
    let exp8 = |g: &mut [f32]| unsafe { exp8(g) };
    softmax_rows(p, spans, scale, st, exp8, |r, ms| {
        for c in out[r * d..(r + 1) * d].chunks_exact_mut(4) {
            // SAFETY: 4 elements.
            unsafe {
                vst1q_f32(
                    c.as_mut_ptr(),
                    vmulq_f32(vld1q_f32(c.as_ptr()), vdupq_n_f32(ms)),
                )
            };
        }
    });
    for r0 in (0..rows).step_by(RM) {
        let m = (rows - r0).min(RM);
        let mut j0 = 0;
        while j0 < d {
            let wide = j0 + 16 <= d;
            // SAFETY: rows `r0..r0 + m`; lanes `j0..j0 + 16` or `j0..j0 + 4 <= d` (`d % 4 == 0`).
            unsafe {
                match (m, wide) {
                    (1, true) => values::<1, 4>(p, kv.v, d, r0, j0, out),
                    (2, true) => values::<2, 4>(p, kv.v, d, r0, j0, out),
                    (3, true) => values::<3, 4>(p, kv.v, d, r0, j0, out),
                    (_, true) => values::<RM, 4>(p, kv.v, d, r0, j0, out),
                    (1, false) => values::<1, 1>(p, kv.v, d, r0, j0, out),
                    (2, false) => values::<2, 1>(p, kv.v, d, r0, j0, out),
                    (3, false) => values::<3, 1>(p, kv.v, d, r0, j0, out),
                    (_, false) => values::<RM, 1>(p, kv.v, d, r0, j0, out),
                }
            }
            j0 += if wide { 16 } else { 4 };
        }
    }
}

/// [`tiled::attend_tile`] with NEON (the reference for head sizes not a multiple of 4).
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
    if !d.is_multiple_of(4) {
        return tiled::attend_tile(q, kv, spans, scale, st, out, p);
    }
    // SAFETY: NEON is part of every aarch64 target this path is built for (the kernel set
    // checked it); shapes checked above.
    unsafe { attend_tile_neon(q, kv, spans, scale, st, out, p, rows, d) }
}

/// f16 rows into a tile, 8 elements at a time.
///
/// # Safety
/// `k` and `v` hold `n` f16 rows of `d` elements (`d % 8 == 0`); keys `at..at + n` are in the
/// tile (`kt`: `d × TILE`, `vt`: `TILE × d`).
#[target_feature(enable = "neon")]
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
    let (kp, vp) = (k.as_ptr().cast::<f16>(), v.as_ptr().cast::<f16>());
    let mut lanes = [0f32; 8];
    for j in 0..n {
        for c in 0..d / 8 {
            // SAFETY: elements `8c..8c + 8 <= d` of row `j < n` of `k` and `v`, row `at + j <
            // TILE` of `vt` (caller); NEON loads and stores have no alignment requirement.
            unsafe {
                let (a, b) = load8_f16(kp.add(j * d + 8 * c));
                vst1q_f32(lanes.as_mut_ptr(), a);
                vst1q_f32(lanes.as_mut_ptr().add(4), b);
                let (a, b) = load8_f16(vp.add(j * d + 8 * c));
                let o = vt.as_mut_ptr().add((at + j) * d + 8 * c);
                vst1q_f32(o, a);
                vst1q_f32(o.add(4), b);
            }
            for (l, &x) in lanes.iter().enumerate() {
                kt[(8 * c + l) * TILE + at + j] = x;
            }
        }
    }
}

/// [`tiled::load_tile`] with NEON for f16 rows (the reference for other types and head sizes).
pub(crate) fn load_tile(k: KvRows<'_>, v: KvRows<'_>, at: usize, kt: &mut [f32], vt: &mut [f32]) {
    let (n, d) = load_shape(&k, &v, at, kt, vt);
    if k.ty != KvType::F16 || !d.is_multiple_of(8) {
        return tiled::load_tile(k, v, at, kt, vt);
    }
    // SAFETY: NEON (the kernel set checked it); shapes checked above.
    unsafe { load_f16(k.bytes, v.bytes, n, d, at, kt, vt) }
}
