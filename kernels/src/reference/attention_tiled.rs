//! Attention of many queries at once over tiles of 64 keys, as ggml's CPU flash attention
//! computes it for a batch of 64 or more query rows over an f16 (or f32) KV cache
//! (`ggml_compute_forward_flash_attn_ext_tiled`, llama.cpp's path for prompt processing): the
//! query stays f32, keys and values are read exactly to f32 a tile at a time, scores and the
//! weighted sum of values are f32, and the online softmax moves once per tile instead of once
//! per key.
//!
//! Tiles are aligned to positions `64 j .. 64 j + 64` of a sequence (ggml's KV cells of a
//! sequence that starts at cell 0); a query sees its own range of positions, the others of a
//! tile are masked. Per query and tile, in this order:
//! 1. `s_k = (Σ_i q_i k_i) · scale`, the sum a chain of fused multiply-adds over `i` from 0
//!    (ggml's `simd_gemm`: one FMA lane per key), `-inf` for a masked key;
//! 2. `m` = the tile's largest score (a `-inf` maximum skips the tile for this query);
//!    `M' = max(M, m)`; when `M' > M` the accumulated values and the sum are multiplied by
//!    `expf(M - M')` (glibc's `expf`);
//! 3. `p_k = e(s_k - M')` with ggml's vectorized exponential ([`expf_ggml`]), summed in f64 by
//!    groups of 8 keys, each group's lanes as `((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7))`
//!    (`ggml_vec_soft_max_f32` on AVX2), then `S = f32(S + sum)`;
//! 4. `out_j = fma(v_kj, p_k, out_j)` for every key `k` of the tile in order (again `simd_gemm`;
//!    a masked key has `p_k = 0`).
//!
//! At the end `out *= 1 / S` ([`OnlineSoftmax::finish`]). Each query's result depends only on
//! its own row, its visible positions and the tiles, never on the other rows of the call.

use super::attention::{rows_shape, OnlineSoftmax};
use super::expf::expf;
use super::ops::expf_ggml;
use crate::kv::KvRows;

/// Keys per tile (ggml's `GGML_FA_TILE_KV`); tiles start at multiples of it.
pub const TILE: usize = 64;

/// Batches of at least this many tokens take the tiled path (ggml's `GGML_FA_TILE_Q`: its
/// tiled path needs that many query rows in the batch).
pub const MIN_BATCH: usize = 64;

/// Largest head size of the tiled path (the one-query path's limit too).
pub const MAX_HEAD: usize = 256;

/// Most query rows of one [`attend_tile`] call that [`WORKSPACE`] is sized for.
pub const MAX_ROWS: usize = 64;

/// Whether a pass of `n_tok` tokens over K/V stored as `kv` with head size `d` and `group`
/// query heads per KV head takes the tiled path (ggml's rule: 64 or more query rows over f16
/// K/V; Ember's kernels also need `d <= MAX_HEAD` and a KV head's rows in one call). Its
/// queries are then not rounded to f16. Every backend decides by this.
pub fn takes(kv: crate::kv::KvType, n_tok: usize, d: usize, group: usize) -> bool {
    kv == crate::kv::KvType::F16 && n_tok >= MIN_BATCH && d <= MAX_HEAD && group <= MAX_ROWS
}

/// f32 elements of one thread's workspace for calls of up to [`MAX_ROWS`] rows and head size
/// [`MAX_HEAD`]: queries and outputs (`rows × d` each), weights (`rows × TILE`), the transposed
/// key tile and the value tile (`TILE × d` each).
pub const WORKSPACE: usize = 2 * MAX_ROWS * MAX_HEAD + MAX_ROWS * TILE + 2 * TILE * MAX_HEAD;

/// The keys and values of one tile as f32: `kt[i * TILE + k]` is element `i` of key `k`
/// (transposed, keys side by side), `v[k * d + i]` element `i` of value `k`. Keys a tile does not
/// hold are zero.
#[derive(Clone, Copy, Debug)]
pub struct KvTile<'a> {
    /// Keys, transposed (`d × TILE`).
    pub kt: &'a [f32],
    /// Values (`TILE × d`).
    pub v: &'a [f32],
}

/// `d` of a [`load_tile`] call after checking its operands: rows `at..at + n` of the tile for
/// the `n` rows of `k` and `v` (a mismatch is a caller bug: panics).
pub(crate) fn load_shape(
    k: &KvRows<'_>,
    v: &KvRows<'_>,
    at: usize,
    kt: &[f32],
    vt: &[f32],
) -> (usize, usize) {
    let d = kt.len() / TILE;
    let n = rows_shape(d, k, v);
    assert!(
        kt.len() == d * TILE && vt.len() == TILE * d && at + n <= TILE,
        "tile of {} / {} elements: {n} rows at {at}",
        kt.len(),
        vt.len()
    );
    (n, d)
}

/// Read the `n` rows of `k` and `v` (keys and values of `d = kt.len() / TILE` elements, stored
/// as [`KvRows`] says) into keys `at..at + n` of a tile, exactly as f32.
pub fn load_tile(k: KvRows<'_>, v: KvRows<'_>, at: usize, kt: &mut [f32], vt: &mut [f32]) {
    let (n, d) = load_shape(&k, &v, at, kt, vt);
    let mut row = [0f32; MAX_HEAD];
    for j in 0..n {
        k.load(j, d, &mut row);
        for (i, &x) in row[..d].iter().enumerate() {
            kt[i * TILE + at + j] = x;
        }
        v.load(j, d, &mut vt[(at + j) * d..(at + j + 1) * d]);
    }
}

/// Set keys `keys` of a tile to zero (keys the tile does not hold).
pub fn clear_tile(keys: std::ops::Range<usize>, kt: &mut [f32], vt: &mut [f32]) {
    let d = kt.len() / TILE;
    for r in kt.chunks_exact_mut(TILE) {
        r[keys.clone()].fill(0.0);
    }
    vt[keys.start * d..keys.end * d].fill(0.0);
}

/// `(rows, d)` of an [`attend_tile`] call after checking its operands (a mismatch is a caller
/// bug: panics).
pub(crate) fn tile_shape(
    q: &[f32],
    kv: &KvTile<'_>,
    spans: &[(u8, u8)],
    st: &[OnlineSoftmax],
    out: &[f32],
    p: &[f32],
) -> (usize, usize) {
    let r = st.len();
    let d = q.len().checked_div(r).unwrap_or(0);
    assert!(
        q.len() == r * d
            && out.len() == q.len()
            && spans.len() == r
            && p.len() >= r * TILE
            && kv.kt.len() == d * TILE
            && kv.v.len() == TILE * d
            && spans
                .iter()
                .all(|&(lo, hi)| lo <= hi && usize::from(hi) <= TILE),
        "tiled attention: {} query elements, {} rows, {} spans, tile {} / {}, weights {}",
        q.len(),
        r,
        spans.len(),
        kv.kt.len(),
        kv.v.len(),
        p.len()
    );
    (r, d)
}

/// The sum of 8 lanes in the order of ggml's AVX2 `ggml_vec_soft_max_f32`.
#[inline(always)]
pub fn sum8_softmax_order(l: &[f32]) -> f32 {
    ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
}

/// Steps 2 and 3 for one query row: `s` holds the tile's scores (masked ones `-inf`) and
/// becomes the weights. Returns `None` when the tile is skipped (its weights are then all 0),
/// else `Some(rescale)` where a rescale of the accumulated values is due.
#[inline(always)]
pub fn softmax_tile(s: &mut [f32], st: &mut OnlineSoftmax) -> Option<Option<f32>> {
    softmax_tile_with(s, st, |g| g.iter_mut().for_each(|x| *x = expf_ggml(*x)))
}

/// [`softmax_tile`] with `exp8` applying [`expf_ggml`] to a group of 8 elements in place (a
/// kernel's vector version; it must give the same bits).
#[inline(always)]
pub fn softmax_tile_with(
    s: &mut [f32],
    st: &mut OnlineSoftmax,
    mut exp8: impl FnMut(&mut [f32]),
) -> Option<Option<f32>> {
    // ggml_vec_max_f32: `max = max > x ? max : x`.
    let m = s
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| if m > x { m } else { x });
    if m == f32::NEG_INFINITY {
        s.fill(0.0);
        return None;
    }
    let new = st.max.max(m);
    let mut rescale = None;
    if new > st.max {
        let ms = expf(st.max - new);
        st.sum *= ms;
        rescale = Some(ms);
    }
    st.max = new;
    let mut sum = 0f64;
    for g in s.chunks_exact_mut(8) {
        g.iter_mut().for_each(|x| *x -= new);
        exp8(g);
        sum += f64::from(sum8_softmax_order(g));
    }
    st.sum = (f64::from(st.sum) + sum) as f32;
    Some(rescale)
}

/// Steps 1 (scale, mask) to 3 for every row of a call: `p` holds each row's dot products
/// (`TILE` per row; only those in the row's span are read) and becomes its weights;
/// `rescale(r, ms)` multiplies row `r`'s accumulated values by `ms` where that is due. `exp8`
/// as in [`softmax_tile_with`].
#[inline(always)]
pub fn softmax_rows(
    p: &mut [f32],
    spans: &[(u8, u8)],
    scale: f32,
    st: &mut [OnlineSoftmax],
    mut exp8: impl FnMut(&mut [f32]),
    mut rescale: impl FnMut(usize, f32),
) {
    for (r, (st, &(lo, hi))) in st.iter_mut().zip(spans).enumerate() {
        let s = &mut p[r * TILE..(r + 1) * TILE];
        for (k, s) in s.iter_mut().enumerate() {
            *s = if (usize::from(lo)..usize::from(hi)).contains(&k) {
                *s * scale
            } else {
                f32::NEG_INFINITY
            };
        }
        if let Some(Some(ms)) = softmax_tile_with(s, st, &mut exp8) {
            rescale(r, ms);
        }
    }
}

/// One tile of keys for `st.len()` query rows: `q` and `out` hold that many rows of `d`
/// elements, `spans[r]` the positions `lo..hi` of the tile that row `r` sees, `p` at least
/// `rows × TILE` elements of room for the weights. Continues each row's online softmax in `st`
/// and its weighted sum of values in `out` (steps 1–4 of the module docs).
pub fn attend_tile(
    q: &[f32],
    kv: KvTile<'_>,
    spans: &[(u8, u8)],
    scale: f32,
    st: &mut [OnlineSoftmax],
    out: &mut [f32],
    p: &mut [f32],
) {
    let (rows, d) = tile_shape(q, &kv, spans, st, out, p);
    for (r, &(lo, hi)) in spans.iter().enumerate() {
        let q = &q[r * d..(r + 1) * d];
        for k in usize::from(lo)..usize::from(hi) {
            let mut acc = 0.0f32;
            for (i, &qi) in q.iter().enumerate() {
                acc = kv.kt[i * TILE + k].mul_add(qi, acc);
            }
            p[r * TILE + k] = acc;
        }
    }
    let exp8 = |g: &mut [f32]| g.iter_mut().for_each(|x| *x = expf_ggml(*x));
    softmax_rows(p, spans, scale, st, exp8, |r, ms| {
        out[r * d..(r + 1) * d].iter_mut().for_each(|x| *x *= ms)
    });
    for r in 0..rows {
        let o = &mut out[r * d..(r + 1) * d];
        for (k, &w) in p[r * TILE..(r + 1) * TILE].iter().enumerate() {
            let v = &kv.v[k * d..(k + 1) * d];
            for (x, &vk) in o.iter_mut().zip(v) {
                *x = vk.mul_add(w, *x);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One query over keys at positions 0..n, tiled, against the plain softmax in f64.
    #[test]
    fn tiles_compose_to_softmax() {
        let d = 8;
        let n = 150;
        let q: Vec<f32> = (0..d).map(|i| (i as f32 - 3.5) * 0.3).collect();
        let key = |k: usize, i: usize| ((k * 7 + i * 3) % 11) as f32 * 0.2 - 1.0;
        let val = |k: usize, i: usize| ((k * 5 + i) % 13) as f32 * 0.1 - 0.6;
        let mut st = [OnlineSoftmax::default()];
        let mut out = vec![0.0f32; d];
        let mut p = vec![0.0f32; TILE];
        for t0 in (0..n).step_by(TILE) {
            let mut kt = vec![0.0f32; d * TILE];
            let mut v = vec![0.0f32; TILE * d];
            let hi = (n - t0).min(TILE);
            for k in 0..hi {
                for i in 0..d {
                    kt[i * TILE + k] = key(t0 + k, i);
                    v[k * d + i] = val(t0 + k, i);
                }
            }
            let kv = KvTile { kt: &kt, v: &v };
            attend_tile(&q, kv, &[(0, hi as u8)], 0.5, &mut st, &mut out, &mut p);
        }
        st[0].finish(&mut out);
        let s: Vec<f64> = (0..n)
            .map(|k| (0..d).map(|i| f64::from(q[i] * key(k, i))).sum::<f64>() * 0.5)
            .collect();
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
        let z: f64 = w.iter().sum();
        for (i, &o) in out.iter().enumerate() {
            let want: f64 = (0..n).map(|k| w[k] * f64::from(val(k, i))).sum::<f64>() / z;
            assert!((f64::from(o) - want).abs() < 1e-5, "{i}: {o} vs {want}");
        }
    }

    #[test]
    fn a_row_that_sees_nothing_is_left_alone() {
        let d = 4;
        let kt = vec![1.0f32; d * TILE];
        let v = vec![1.0f32; TILE * d];
        let mut st = [OnlineSoftmax::default()];
        let mut out = vec![0.0f32; d];
        let mut p = vec![0.0f32; TILE];
        let kv = KvTile { kt: &kt, v: &v };
        attend_tile(&[1.0; 4], kv, &[(5, 5)], 1.0, &mut st, &mut out, &mut p);
        assert_eq!(st[0], OnlineSoftmax::default());
        assert_eq!(out, [0.0; 4]);
    }
}
