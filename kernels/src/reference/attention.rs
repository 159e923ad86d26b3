//! The per-key steps of attention over an f16 KV cache, as ggml's CPU flash attention
//! (`ggml_compute_forward_flash_attn_ext_f16_one_chunk`, the path llama.cpp runs by default)
//! computes them: the query arrives rounded to f16; the weighted sum of values is an f16
//! accumulator rounded after every key; the running denominator is f32.
//!
//! The model re-quantizes activations after attention, where a last-bit difference can change a
//! quantization level, so the summation order and roundings here are part of the spec.

use super::expf::expf;
use crate::kv::KvRows;
use half::f16;

/// `k · q` in the order of ggml's AVX2 `ggml_vec_dot_f16`: 32 elements per step into four
/// 8-lane FMA accumulators (element `i` to accumulator `(i / 8) % 4`, lane `i % 8`), reduced as
/// `(a0 + a2) + (a1 + a3)`, then the lanes as `((l0+l4) + (l1+l5)) + ((l2+l6) + (l3+l7))`, and
/// any tail added in f64.
#[inline(always)]
pub fn dot_f16_order(k: &[f32], q: &[f32]) -> f32 {
    let n32 = k.len() / 32 * 32;
    let mut acc = [[0.0f32; 8]; 4];
    for i in (0..n32).step_by(32) {
        for (a, lanes) in acc.iter_mut().enumerate() {
            for (l, v) in lanes.iter_mut().enumerate() {
                let e = i + 8 * a + l;
                *v = k[e].mul_add(q[e], *v);
            }
        }
    }
    let mut r = [0.0f32; 8];
    for (l, r) in r.iter_mut().enumerate() {
        *r = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
    }
    let t = [r[0] + r[4], r[1] + r[5], r[2] + r[6], r[3] + r[7]];
    let mut sum = f64::from((t[0] + t[1]) + (t[2] + t[3]));
    for e in n32..k.len() {
        sum += f64::from(k[e] * q[e]);
    }
    sum as f32
}

/// `acc = f16(acc * s)` (ggml's `ggml_vec_scale_f16`), on f16 values held in f32.
#[inline(always)]
pub fn scale_f16(acc: &mut [f32], s: f32) {
    for o in acc {
        *o = f16::from_f32(*o * s).to_f32();
    }
}

/// `acc = f16(fma(v, w, acc))` (ggml's `ggml_vec_mad_f16`), on f16 values held in f32.
#[inline(always)]
pub fn mad_f16(acc: &mut [f32], v: &[f32], w: f32) {
    for (o, x) in acc.iter_mut().zip(v) {
        *o = f16::from_f32(x.mul_add(w, *o)).to_f32();
    }
}

/// Running state of one query's online softmax: the largest score so far and the sum of
/// `exp(score - max)` (f32, as ggml's `S` and `M`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OnlineSoftmax {
    /// Largest score seen (`-inf` before the first key).
    pub max: f32,
    /// Sum of `exp(score - max)` over the keys seen.
    pub sum: f32,
}

impl Default for OnlineSoftmax {
    fn default() -> Self {
        OnlineSoftmax {
            max: f32::NEG_INFINITY,
            sum: 0.0,
        }
    }
}

impl OnlineSoftmax {
    /// Take the next key's `score`, as ggml does: when it exceeds the running maximum, the
    /// maximum moves to it, the key's weight is 1 and the accumulated values must be rescaled
    /// by `exp(old max - score)` (returned as `Some`); otherwise the weight is
    /// `exp(score - max)`. The denominator is updated here. Returns (rescale, weight). The
    /// exponential is [`expf`] (glibc's, on every platform).
    #[inline(always)]
    pub fn push(&mut self, score: f32) -> (Option<f32>, f32) {
        let grew = score > self.max;
        let (ms, vs) = if grew {
            let ms = expf(self.max - score);
            self.max = score;
            (ms, 1.0)
        } else {
            (1.0, expf(score - self.max))
        };
        self.sum = self.sum.mul_add(ms, vs);
        (grew.then_some(ms), vs)
    }

    /// Divide the accumulated values by the denominator (0 when no key was seen).
    pub fn finish(&self, out: &mut [f32]) {
        let inv = if self.sum == 0.0 { 0.0 } else { 1.0 / self.sum };
        out.iter_mut().for_each(|o| *o *= inv);
    }
}

/// One query over the `n` keys and values of `k` and `v` (rows of `q.len()` elements, stored as
/// f16 or quantized, see [`KvRows`]), continuing the online softmax in `st` and the f16-rounded
/// weighted sum in `out`: the inner loop of ggml's `flash_attn_ext_f16_one_chunk`. Per key: the
/// row is read back exactly to f32; `s = (k · q) * scale` in [`dot_f16_order`]; a new maximum
/// rescales `out` with [`scale_f16`] by `exp(old - new)`; then `out` += `v * exp(s - max)` with
/// [`mad_f16`] and `sum = sum * ms + vs`.
pub fn attend_rows(
    q: &[f32],
    k: KvRows<'_>,
    v: KvRows<'_>,
    scale: f32,
    st: &mut OnlineSoftmax,
    out: &mut [f32],
) {
    let d = q.len();
    let n = rows_shape(d, &k, &v);
    assert!(out.len() == d);
    let mut row = [0.0f32; 256];
    for j in 0..n {
        k.load(j, d, &mut row);
        let (rescale, vs) = st.push(dot_f16_order(&row[..d], q) * scale);
        if let Some(ms) = rescale {
            scale_f16(out, ms);
        }
        v.load(j, d, &mut row);
        mad_f16(out, &row[..d], vs);
    }
}

/// Rows in `k` and `v` for a head size of `d`, after checking that they are whole rows of one
/// type, as many keys as values, and `d` at most 256 (a mismatch is a caller bug: panics).
pub(crate) fn rows_shape(d: usize, k: &KvRows<'_>, v: &KvRows<'_>) -> usize {
    let rb = k.ty.row_bytes(d).filter(|_| d <= 256 && d > 0);
    assert!(
        rb.is_some_and(|rb| k.bytes.len().is_multiple_of(rb))
            && k.ty == v.ty
            && k.bytes.len() == v.bytes.len(),
        "attention over {} rows of {d} elements: {} and {} bytes",
        k.ty,
        k.bytes.len(),
        v.bytes.len()
    );
    k.n_rows(d)
}

/// `(g, d)`: the query count (`st.len()`) and head size of an [`attend_rows_group`] call,
/// after checking its operands' lengths (a mismatch is a caller bug: panics).
#[cfg_attr(
    not(all(feature = "simd", any(target_arch = "x86_64", target_arch = "aarch64"))),
    allow(dead_code)
)]
pub(crate) fn group_shape(
    q: &[f32],
    k: &KvRows<'_>,
    v: &KvRows<'_>,
    st: &[OnlineSoftmax],
    out: &[f32],
) -> (usize, usize) {
    let g = st.len();
    let d = q.len().checked_div(g).unwrap_or(0);
    assert!(q.len() == g * d && out.len() == q.len());
    rows_shape(d, k, v);
    (g, d)
}

/// [`attend_rows`] for `g = st.len()` queries over the same keys and values (the query heads
/// that share one KV head under grouped-query attention): `q` and `out` hold `g` rows of
/// `d = q.len() / g` elements. Each query's result is exactly its own [`attend_rows`].
pub fn attend_rows_group(
    q: &[f32],
    k: KvRows<'_>,
    v: KvRows<'_>,
    scale: f32,
    st: &mut [OnlineSoftmax],
    out: &mut [f32],
) {
    let g = st.len().max(1);
    let d = q.len() / g;
    for ((q, o), st) in q.chunks_exact(d).zip(out.chunks_exact_mut(d)).zip(st) {
        attend_rows(q, k, v, scale, st, o);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_f64_and_handles_tails() {
        for n in [1, 7, 32, 33, 64, 95, 256] {
            let k: Vec<f32> = (0..n).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.25).collect();
            let q: Vec<f32> = (0..n).map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.5).collect();
            let exact: f64 = k
                .iter()
                .zip(&q)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum();
            assert!(
                (f64::from(dot_f16_order(&k, &q)) - exact).abs() < 1e-4,
                "n = {n}"
            );
        }
    }

    #[test]
    fn accumulator_is_rounded_to_f16() {
        let mut acc = [1.0f32];
        mad_f16(&mut acc, &[1.0], 1e-4);
        assert_eq!(acc[0], 1.0, "1 + 1e-4 rounds back to 1 in f16");
        scale_f16(&mut acc, 1.0 / 3.0);
        assert_eq!(acc[0], f16::from_f32(1.0 / 3.0).to_f32());
    }
}
