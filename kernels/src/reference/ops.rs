//! f32 element-wise and normalization ops of a transformer layer, following ggml-cpu's
//! arithmetic (where ggml accumulates in f64, `ggml_float`, so do we).

/// `out = x / sqrt(mean(x^2) + eps) * w`: ggml's `ggml_rms_norm` followed by `ggml_mul`.
///
/// As ggml does: the squares are formed in f32 and summed in f64, the mean is rounded to f32,
/// `scale = 1 / sqrtf(mean + eps)` in f32, then `out[i] = (x[i] * scale) * w[i]`.
/// All slices have the same length.
#[inline(always)]
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    debug_assert!(x.len() == w.len() && x.len() == out.len());
    let mut sum = 0f64;
    for &v in x {
        sum += f64::from(v * v);
    }
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = (v * scale) * g;
    }
}

/// In-place softmax of `x` (ggml's `ggml_soft_max` without mask or scale): `e_i = expf(x_i -
/// max)`, summed in f64, then every `e_i` multiplied by the f32 of `1 / sum`. An empty slice is
/// left as is.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0f64;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += f64::from(*v);
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// `gate[i] = silu(gate[i]) * up[i]` with `silu(x) = x / (1 + expf(-x))` (ggml's
/// `ggml_vec_swiglu_f32`, the fused SwiGLU of llama-style feed-forward layers).
#[inline(always)]
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    debug_assert_eq!(gate.len(), up.len());
    let n8 = gate.len() / 8 * 8;
    for (g, &u) in gate[..n8].iter_mut().zip(&up[..n8]) {
        *g = *g / (1.0 + expf_ggml(0.0 - *g)) * u;
    }
    for (g, &u) in gate[n8..].iter_mut().zip(&up[n8..]) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// Entries of a GELU table for [`geglu`]: one per f16 input bit pattern, plus one padding entry
/// (vector kernels read table entries as 4-byte gathers, the last one 2 bytes past entry
/// 65 535).
pub const GELU_TABLE_LEN: usize = 65537;

/// `gate[i] = gelu(gate[i]) * up[i]` as ggml computes it with `GGML_GELU_FP16`
/// (`ggml_vec_geglu_f32`): `0` where `x <= -10`, `x · u` where `x >= 10`, else the f16 GELU of
/// `x` rounded to f16 (round to nearest even), looked up in `table` by its bits, times `u`.
/// NaN takes the lookup. `table` holds at least the 65 536 entries (it is built by the
/// runtime: `ember::backend::gelu::table`, with [`GELU_TABLE_LEN`] entries).
pub fn geglu(gate: &mut [f32], up: &[f32], table: &[u16]) {
    debug_assert_eq!(gate.len(), up.len());
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = *g;
        *g = if x <= -10.0 {
            0.0
        } else if x >= 10.0 {
            x * u
        } else {
            half::f16::from_bits(table[usize::from(half::f16::from_f32(x).to_bits())]).to_f32() * u
        };
    }
}

/// `exp(x)` exactly as ggml's vectorized `ggml_v_expf` computes each lane (a range reduction
/// to `2^n * e^b` and a degree-5 polynomial, ~1.5 ulp), which ggml uses for SiLU on blocks of 8
/// elements. Reproduced bit for bit (same constants, same fused operations) because the SiLU
/// output is quantized right after, where a last-bit difference can change a level.
#[inline(always)]
pub fn expf_ggml(x: f32) -> f32 {
    let c = f32::from_bits;
    let z = x.mul_add(c(0x3fb8_aa3b), c(0x4b40_0000));
    let n = z - c(0x4b40_0000);
    // fnmadd(a, b, c) = c - a*b, one rounding.
    let b = (-n).mul_add(c(0x35bf_be8e), (-n).mul_add(c(0x3f31_7200), x));
    let e = z.to_bits() << 23;
    let k = f32::from_bits(e.wrapping_add(1.0f32.to_bits()));
    let u = b * b;
    let j = c(0x3c07_2010)
        .mul_add(b, c(0x3d2b_9f17))
        .mul_add(u, c(0x3e2a_af33).mul_add(b, c(0x3eff_fedb)))
        .mul_add(u, c(0x3f7f_fff6) * b);
    if n.abs() <= 126.0 {
        return j.mul_add(k, k);
    }
    let g: u32 = if n <= 0.0 { 0x8200_0000 } else { 0 };
    let s1 = f32::from_bits(g.wrapping_add(0x7f00_0000));
    let s2 = f32::from_bits(e.wrapping_sub(g));
    if n.abs() > 192.0 {
        s1 * s1
    } else {
        s2.mul_add(j, s2) * s1
    }
}

/// The cos / sin of RoPE for position `pos` and `cos.len() == sin.len() == head_dim / 2`
/// frequencies, computed as ggml's `ggml_rope_cache_init` does without YaRN (`ext_factor = 0`,
/// `attn_factor = 1`, no frequency factors): `theta_0 = pos`, `theta_{i+1} = theta_i *
/// freq_base^(-2 / head_dim)` (a running f32 product, not a fresh `powf` per `i`), and entry `i`
/// is `cosf(freq_scale * theta_i)`, `sinf(freq_scale * theta_i)`.
pub fn rope_cache(pos: f32, freq_base: f32, freq_scale: f32, cos: &mut [f32], sin: &mut [f32]) {
    debug_assert_eq!(cos.len(), sin.len());
    let n_dims = 2 * cos.len();
    let theta_scale = freq_base.powf(-2.0 / n_dims as f32);
    let mut theta = pos;
    for (c, s) in cos.iter_mut().zip(sin.iter_mut()) {
        let t = freq_scale * theta;
        *c = t.cos();
        *s = t.sin();
        theta *= theta_scale;
    }
}

/// RoPE with NORM pairing (ggml's `GGML_ROPE_TYPE_NORM`; llama, mistral): rotates the pairs of
/// *neighbours* `(x[2i], x[2i + 1])` by angle `i`, for `i < head_dim / 2`.
///
/// **Warning:** NORM and NEOX pairing are not interchangeable, and using the wrong one corrupts
/// the output silently (the model still runs; it just produces garbage). The pairing is fixed by
/// the architecture (llama.cpp's `llama_model_rope_type`): llama-family GGUFs use NORM, and their
/// Q/K weights were permuted by the converter to make that right; qwen2, gpt-neox, phi and
/// others use [`rope_neox`].
///
/// `x` is one head (`head_dim` elements, all rotated); `cos` and `sin` have `head_dim / 2`
/// entries for this position (see [`rope_cache`]). `x'[2i] = x[2i] cos - x[2i+1] sin`,
/// `x'[2i+1] = x[2i] sin + x[2i+1] cos`.
#[inline(always)]
pub fn rope_norm(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    debug_assert!(x.len() == 2 * cos.len() && cos.len() == sin.len());
    for ((p, &c), &s) in x.chunks_exact_mut(2).zip(cos).zip(sin) {
        let (x0, x1) = (p[0], p[1]);
        p[0] = x0.mul_add(c, -(x1 * s));
        p[1] = x0.mul_add(s, x1 * c);
    }
}

/// RoPE with NEOX pairing (ggml's `GGML_ROPE_TYPE_NEOX`; qwen2, gpt-neox, phi): rotates the pairs
/// `(x[i], x[i + head_dim / 2])` — the two *halves* of the head — by angle `i`.
///
/// **Warning:** see [`rope_norm`]: using the wrong pairing silently corrupts the output.
///
/// `x'[i] = x[i] cos - x[i+h] sin`, `x'[i+h] = x[i] sin + x[i+h] cos`, `h = head_dim / 2`, with
/// the same fused multiply-adds as [`rope_norm`]: ggml rotates both pairings with one function
/// (`rotate_pairs`), which the compiler contracts the same way.
#[inline(always)]
pub fn rope_neox(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    debug_assert!(x.len() == 2 * cos.len() && cos.len() == sin.len());
    let (lo, hi) = x.split_at_mut(cos.len());
    for (((a, b), &c), &s) in lo.iter_mut().zip(hi.iter_mut()).zip(cos).zip(sin) {
        let (x0, x1) = (*a, *b);
        *a = x0.mul_add(c, -(x1 * s));
        *b = x0.mul_add(s, x1 * c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_matches_f64_formula() {
        let x: Vec<f32> = (0..67)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.173)
            .collect();
        let w: Vec<f32> = (0..67).map(|i| 0.5 + (i % 7) as f32 * 0.25).collect();
        let eps = 1e-6;
        let mut out = vec![0f32; x.len()];
        rms_norm(&x, &w, eps, &mut out);
        let ms = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / x.len() as f64;
        let scale = 1.0 / (ms + f64::from(eps)).sqrt();
        for i in 0..x.len() {
            let want = f64::from(x[i]) * scale * f64::from(w[i]);
            let diff = (f64::from(out[i]) - want).abs();
            assert!(
                diff <= 1e-6 * want.abs().max(1e-3),
                "element {i}: {} vs {want}",
                out[i]
            );
        }
    }

    #[test]
    fn softmax_sums_to_one_and_orders() {
        let mut x = vec![1.0f32, 2.0, 3.0, -5.0];
        softmax(&mut x);
        let sum: f32 = x.iter().sum();
        assert!((sum - 1.0).abs() < 1e-6, "sum {sum}");
        assert!(x[2] > x[1] && x[1] > x[0] && x[0] > x[3] && x[3] > 0.0);
        let z: f64 = [1.0f64, 2.0, 3.0, -5.0].iter().map(|v| v.exp()).sum();
        assert!((f64::from(x[2]) - 3f64.exp() / z).abs() < 1e-6);
        // Large logits do not overflow (the maximum is subtracted first).
        let mut big = vec![1000.0f32, 999.0];
        softmax(&mut big);
        let want = 1.0 / (1.0 + (-1.0f64).exp());
        assert!((f64::from(big[0]) - want).abs() < 1e-6, "{big:?}");
        let mut one = [5.0f32];
        softmax(&mut one);
        assert_eq!(one, [1.0]);
    }

    #[test]
    fn silu_mul_values() {
        let mut g = [0.0f32, 1.0, -2.0, 20.0];
        let u = [3.0f32, 2.0, 1.0, 0.5];
        silu_mul(&mut g, &u);
        let silu = |x: f64| x / (1.0 + (-x).exp());
        for (i, (&got, (&x, &m))) in g
            .iter()
            .zip([0.0f32, 1.0, -2.0, 20.0].iter().zip(&u))
            .enumerate()
        {
            let want = silu(f64::from(x)) * f64::from(m);
            assert!(
                (f64::from(got) - want).abs() < 1e-6,
                "element {i}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn rope_pairings_differ_as_hand_computed() {
        // head_dim 4, a quarter turn at frequency 0 and no turn at frequency 1.
        let cos = [0.0f32, 1.0];
        let sin = [1.0f32, 0.0];
        let x = [1.0f32, 2.0, 3.0, 4.0];
        let mut n = x;
        rope_norm(&mut n, &cos, &sin);
        // NORM rotates (x0, x1) = (1, 2) by 90 degrees: (-2, 1); (3, 4) unchanged.
        assert_eq!(n, [-2.0, 1.0, 3.0, 4.0]);
        let mut q = x;
        rope_neox(&mut q, &cos, &sin);
        // NEOX rotates (x0, x2) = (1, 3) by 90 degrees: (-3, 1); (x1, x3) = (2, 4) unchanged.
        assert_eq!(q, [-3.0, 2.0, 1.0, 4.0]);
        assert_ne!(n, q);
    }

    #[test]
    fn rope_cache_frequencies() {
        let (mut c, mut s) = ([0f32; 4], [0f32; 4]);
        rope_cache(3.0, 10000.0, 1.0, &mut c, &mut s);
        for i in 0..4 {
            let theta = 3.0 * 10000f64.powf(-2.0 * i as f64 / 8.0);
            assert!((f64::from(c[i]) - theta.cos()).abs() < 1e-6, "cos {i}");
            assert!((f64::from(s[i]) - theta.sin()).abs() < 1e-6, "sin {i}");
        }
        rope_cache(0.0, 10000.0, 1.0, &mut c, &mut s);
        assert_eq!((c, s), ([1.0; 4], [0.0; 4]));
    }
}
