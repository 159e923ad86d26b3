//! The reference quantizers of the k-quants (Q4_K, Q5_K, Q6_K), after ggml's
//! `quantize_row_q{4,5,6}_K_ref`: what `llama-quantize` runs when it has no importance matrix.
//!
//! Unlike the 32-element formats, a k-quant's scales are not a closed formula of the block: each
//! group's (scale, minimum) comes out of a small search (`make_qkx2_quants` for the
//! scale-and-minimum formats, `make_qx_quants` for Q6_K's signed one), then the group scales are
//! themselves quantized to 6 or 8 bits and the quants recomputed against them. Every float
//! operation here is in ggml's order and none is fused (ggml-base is built without FMA
//! contraction), so a tensor quantized here is byte for byte the tensor llama-quantize writes;
//! `runtime/tests/convert_kquants.rs` checks it against llama-quantize's output for the real
//! model. Model-file work, not inference: these run once per weight, never per token.

use super::q4_k::{scale_min_k4, BlockQ4K, K_SCALE_SIZE};
use super::q5_k::BlockQ5K;
use super::q6_k::BlockQ6K;
use super::{f16_le, nearest_int, to_f16_le, Block, QK_K};

/// ggml's `GROUP_MAX_EPS`: below this a group counts as all zeros.
const GROUP_MAX_EPS: f32 = 1e-15;

/// Quants `l[..n]` in `0..=nmax` and `(scale, min)` with `x ≈ scale * l - min`, chosen by
/// ggml's `make_qkx2_quants`: start from the range's own scale, then try `nstep + 1` scales
/// around it, each refined by a weighted least-squares fit of (scale, min); keep the one with
/// the smallest weighted squared error. The returned `min` is the positive offset subtracted.
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l[..n].fill(0);
        return (0.0, -min);
    }
    let nmax_f = nmax as f32;
    let mut iscale = nmax_f / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        l[i] = nearest_int(iscale * (x[i] - min)).clamp(0, nmax) as u8;
        let diff = scale * f32::from(l[i]) + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    if nstep < 1 {
        return (scale, -min);
    }
    let mut laux = [0u8; 32];
    let laux = &mut laux[..n];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax_f) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = q as u8;
            let (w, q) = (weights[i], q as f32);
            sum_l += w * q;
            sum_l2 += w * q * q;
            sum_xl += w * q * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let diff = this_scale * f32::from(laux[i]) + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                l[..n].copy_from_slice(laux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Signed quants `l[..n]` (stored offset by `nmax`, so in `0..2 nmax`) and the scale with
/// `x ≈ scale * (l - nmax)`, chosen by ggml's `make_qx_quants` with `rmse_type` 1 (weights
/// `x²`, no importance matrix): the scale of the largest magnitude, then 18 scales around it,
/// keeping the best weighted least-squares fit.
fn make_qx_quants(nmax: i32, x: &[f32], l: &mut [i8]) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l[..x.len()].fill(0);
        return 0.0;
    }
    let fit = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for &v in x {
            let q = nearest_int(iscale * v).clamp(-nmax, nmax - 1) as f32;
            let w = v * v;
            sumlx += w * v * q;
            suml2 += w * q * q;
        }
        (sumlx, suml2)
    };
    let store = |l: &mut [i8], iscale: f32| {
        for (d, &v) in l.iter_mut().zip(x) {
            *d = (nmax + nearest_int(iscale * v).clamp(-nmax, nmax - 1)) as i8;
        }
    };
    let iscale = -(nmax as f32) / max;
    store(l, iscale);
    let (sumlx, suml2) = fit(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in (-9..=9).filter(|&is| is != 0) {
        let iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = fit(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            store(l, iscale);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// The per-group (scale, min) search shared by Q4_K and Q5_K, then the 6-bit packing of the
/// group scales and the final quants `l` (in `0..=nmax`) against the packed scales. Returns
/// `(d, dmin, scales)`.
fn quantize_super_block_qkx(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    nstep: i32,
    l: &mut [u8; QK_K],
) -> ([u8; 2], [u8; 2], [u8; K_SCALE_SIZE]) {
    let (mut scales, mut mins) = ([0f32; QK_K / 32], [0f32; QK_K / 32]);
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    let mut weights = [0f32; 32];
    for j in 0..QK_K / 32 {
        let g = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0f32;
        for &v in g {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(g) {
            *w = av_x + v.abs();
        }
        let (s, m) = make_qkx2_quants(nmax, g, &weights, &mut l[32 * j..], rmin, 0.1, nstep);
        (scales[j], mins[j]) = (s, m);
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut packed = [0u8; K_SCALE_SIZE];
    for j in 0..QK_K / 32 {
        // ggml stores nearest_int's result in a uint8_t before clamping (a wrap, never hit:
        // both products are at most 63 up to rounding).
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0x0f) | ((lm & 0x0f) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let (d, dmin) = (to_f16_le(max_scale / 63.0), to_f16_le(max_min / 63.0));
    for j in 0..QK_K / 32 {
        let (sc, m) = scale_min_k4(j, &packed);
        let dj = f16_le(d) * f32::from(sc);
        if dj == 0.0 {
            continue;
        }
        let dm = f16_le(dmin) * f32::from(m);
        for i in 0..32 {
            l[32 * j + i] = nearest_int((x[32 * j + i] + dm) / dj).clamp(0, nmax) as u8;
        }
    }
    (d, dmin, packed)
}

/// f32 to Q4_K blocks (ggml's `quantize_row_q4_K_ref`).
pub fn quantize_row_q4_k(src: &[f32], out: &mut [u8]) {
    debug_assert_eq!(src.len() * BlockQ4K::SIZE, out.len() * QK_K);
    let mut l = [0u8; QK_K];
    for (x, o) in src
        .chunks_exact(QK_K)
        .zip(out.chunks_exact_mut(BlockQ4K::SIZE))
    {
        let (d, dmin, scales) = quantize_super_block_qkx(x, 15, -1.0, 20, &mut l);
        let mut qs = [0u8; QK_K / 2];
        for c in 0..QK_K / 64 {
            for i in 0..32 {
                qs[32 * c + i] = l[64 * c + i] | (l[64 * c + 32 + i] << 4);
            }
        }
        BlockQ4K {
            d,
            dmin,
            scales,
            qs,
        }
        .write(o);
    }
}

/// f32 to Q5_K blocks (ggml's `quantize_row_q5_K_ref`).
pub fn quantize_row_q5_k(src: &[f32], out: &mut [u8]) {
    debug_assert_eq!(src.len() * BlockQ5K::SIZE, out.len() * QK_K);
    let mut l = [0u8; QK_K];
    for (x, o) in src
        .chunks_exact(QK_K)
        .zip(out.chunks_exact_mut(BlockQ5K::SIZE))
    {
        let (d, dmin, scales) = quantize_super_block_qkx(x, 31, -0.5, 15, &mut l);
        let (mut qs, mut qh) = ([0u8; QK_K / 2], [0u8; QK_K / 8]);
        for c in 0..QK_K / 64 {
            let (m1, m2) = (1u8 << (2 * c), 2u8 << (2 * c));
            for i in 0..32 {
                let (mut l1, mut l2) = (l[64 * c + i], l[64 * c + 32 + i]);
                if l1 > 15 {
                    l1 -= 16;
                    qh[i] |= m1;
                }
                if l2 > 15 {
                    l2 -= 16;
                    qh[i] |= m2;
                }
                qs[32 * c + i] = l1 | (l2 << 4);
            }
        }
        BlockQ5K {
            d,
            dmin,
            scales,
            qh,
            qs,
        }
        .write(o);
    }
}

/// f32 to Q6_K blocks (ggml's `quantize_row_q6_K_ref`).
pub fn quantize_row_q6_k(src: &[f32], out: &mut [u8]) {
    debug_assert_eq!(src.len() * BlockQ6K::SIZE, out.len() * QK_K);
    let mut l = [0i8; QK_K];
    for (x, o) in src
        .chunks_exact(QK_K)
        .zip(out.chunks_exact_mut(BlockQ6K::SIZE))
    {
        let mut scales = [0f32; QK_K / 16];
        let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
        for (ib, s) in scales.iter_mut().enumerate() {
            *s = make_qx_quants(32, &x[16 * ib..16 * ib + 16], &mut l[16 * ib..16 * ib + 16]);
            if s.abs() > max_abs_scale {
                max_abs_scale = s.abs();
                max_scale = *s;
            }
        }
        let mut b = BlockQ6K {
            ql: [0; QK_K / 2],
            qh: [0; QK_K / 4],
            scales: [0; QK_K / 16],
            d: to_f16_le(0.0),
        };
        if max_abs_scale < GROUP_MAX_EPS {
            b.write(o);
            continue;
        }
        let iscale = -128.0 / max_scale;
        b.d = to_f16_le(1.0 / iscale);
        for (q, &s) in b.scales.iter_mut().zip(&scales) {
            *q = nearest_int(iscale * s).min(127) as i8;
        }
        for j in 0..QK_K / 16 {
            let dj = f16_le(b.d) * f32::from(b.scales[j]);
            if dj == 0.0 {
                continue;
            }
            for i in 0..16 {
                l[16 * j + i] = (nearest_int(x[16 * j + i] / dj).clamp(-32, 31) + 32) as i8;
            }
        }
        // Unsigned 6-bit quants from here on (0..64).
        let u = |k: usize| l[k] as u8;
        for h in 0..QK_K / 128 {
            let base = 128 * h;
            for i in 0..32 {
                let (q1, q2, q3, q4) = (
                    u(base + i),
                    u(base + i + 32),
                    u(base + i + 64),
                    u(base + i + 96),
                );
                b.ql[64 * h + i] = (q1 & 0x0f) | ((q3 & 0x0f) << 4);
                b.ql[64 * h + i + 32] = (q2 & 0x0f) | ((q4 & 0x0f) << 4);
                b.qh[32 * h + i] =
                    (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
            }
        }
        b.write(o);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::{q4_k, q5_k, q6_k};

    fn signal(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|i| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                // Mixed magnitudes across groups, like real weight rows.
                u * (1.0 + (i / 37 % 5) as f32)
            })
            .collect()
    }

    fn rms_error(x: &[f32], y: &[f32]) -> f32 {
        let se: f32 = x.iter().zip(y).map(|(a, b)| (a - b) * (a - b)).sum();
        (se / x.len() as f32).sqrt()
    }

    fn rms(x: &[f32]) -> f32 {
        (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt()
    }

    type Quant = fn(&[f32], &mut [u8]);
    type Dequant = fn(&[u8], &mut [f32]);

    fn round_trip(q: Quant, dq: Dequant, size: usize, x: &[f32]) -> Vec<f32> {
        let mut b = vec![0u8; x.len() / QK_K * size];
        q(x, &mut b);
        let mut y = vec![0f32; x.len()];
        dq(&b, &mut y);
        y
    }

    #[test]
    fn round_trip_error_shrinks_with_bits() {
        let x = signal(4 * QK_K, 7);
        let e4 = rms_error(
            &x,
            &round_trip(quantize_row_q4_k, q4_k::dequantize_row_q4_k, 144, &x),
        );
        let e5 = rms_error(
            &x,
            &round_trip(quantize_row_q5_k, q5_k::dequantize_row_q5_k, 176, &x),
        );
        let e6 = rms_error(
            &x,
            &round_trip(quantize_row_q6_k, q6_k::dequantize_row_q6_k, 210, &x),
        );
        let r = rms(&x);
        // Uniform data: a 4-bit grid over a group's range gives ≈ range / 15 / √12 ≈ 5.6 % of
        // the group's rms; each further bit halves it.
        assert!(e4 < 0.08 * r, "q4_K error {e4} vs rms {r}");
        assert!(e5 < 0.6 * e4, "q5_K {e5} not below q4_K {e4}");
        assert!(e6 < 0.6 * e5, "q6_K {e6} not below q5_K {e5}");
    }

    #[test]
    fn the_search_beats_the_plain_range_grid() {
        // make_qkx2_quants starts from the range's own grid and only keeps a better fit.
        let x = signal(32, 11);
        let w: Vec<f32> = x.iter().map(|v| 0.1 + v.abs()).collect();
        let mut l = [0u8; 32];
        let (scale, min) = make_qkx2_quants(15, &x, &w, &mut l, -1.0, 0.1, 20);
        let err = |scale: f32, min: f32, l: &[u8]| -> f32 {
            x.iter()
                .zip(l)
                .zip(&w)
                .map(|((&v, &q), &w)| w * (scale * f32::from(q) - min - v).powi(2))
                .sum()
        };
        let mut l0 = [0u8; 32];
        let (s0, m0) = make_qkx2_quants(15, &x, &w, &mut l0, -1.0, 0.1, 0);
        assert!(err(scale, min, &l) < err(s0, m0, &l0));
        assert!(l.iter().all(|&q| q <= 15));
    }

    #[test]
    fn zero_and_constant_blocks() {
        for (q, dq, size) in [
            (
                quantize_row_q4_k as Quant,
                q4_k::dequantize_row_q4_k as Dequant,
                144,
            ),
            (quantize_row_q5_k, q5_k::dequantize_row_q5_k, 176),
            (quantize_row_q6_k, q6_k::dequantize_row_q6_k, 210),
        ] {
            let zeros = vec![0f32; QK_K];
            assert!(round_trip(q, dq, size, &zeros).iter().all(|&v| v == 0.0));
            // A constant negative block is exactly its minimum (or, for Q6_K, close).
            let c = vec![-0.75f32; QK_K];
            let y = round_trip(q, dq, size, &c);
            assert!(rms_error(&c, &y) < 0.01, "{y:?}");
        }
    }

    #[test]
    fn q6_k_keeps_the_sign_of_the_largest_group() {
        let mut x = signal(QK_K, 3);
        x[200] = -40.0; // the largest magnitude is negative
        let y = round_trip(quantize_row_q6_k, q6_k::dequantize_row_q6_k, 210, &x);
        assert!((y[200] + 40.0).abs() < 0.5, "{}", y[200]);
    }
}
