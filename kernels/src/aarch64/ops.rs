//! RMSNorm, SiLU×mul and RoPE with NEON, equal to `reference::ops` bit for bit: the same
//! per-element operations (fused where the reference fuses, nothing fused where it does not),
//! four lanes at a time. What has a fixed sequential order in the reference stays scalar: the
//! f64 sum of squares of `rms_norm`, and the libm `expf` tail (elements past the last multiple
//! of 8) of `silu_mul`.

use std::arch::aarch64::{
    float32x4_t, uint32x4_t, vabsq_f32, vaddq_f32, vaddq_u32, vandq_u32, vbslq_f32, vcgtq_f32,
    vcleq_f32, vdivq_f32, vdupq_n_f32, vdupq_n_u32, vfmaq_f32, vfmsq_f32, vld1q_f32, vld2q_f32,
    vmulq_f32, vmulq_n_f32, vnegq_f32, vreinterpretq_f32_u32, vreinterpretq_u32_f32, vshlq_n_u32,
    vst1q_f32, vst2q_f32, vsubq_f32, vsubq_u32,
};

use crate::reference::ops;

#[inline]
#[target_feature(enable = "neon")]
fn splat(bits: u32) -> float32x4_t {
    vdupq_n_f32(f32::from_bits(bits))
}

/// `reference::ops::expf_ggml` on four lanes: the same constants and fused operations, the
/// three range cases selected per lane instead of branched.
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn expf4(x: float32x4_t) -> float32x4_t {
    let magic = splat(0x4b40_0000);
    let z = vfmaq_f32(magic, x, splat(0x3fb8_aa3b));
    let n = vsubq_f32(z, magic);
    // fma(-n, c, x) = x - n*c with one rounding = vfms.
    let b = vfmsq_f32(vfmsq_f32(x, n, splat(0x3f31_7200)), n, splat(0x35bf_be8e));
    let e: uint32x4_t = vshlq_n_u32::<23>(vreinterpretq_u32_f32(z));
    let k = vreinterpretq_f32_u32(vaddq_u32(e, vdupq_n_u32(1.0f32.to_bits())));
    let u = vmulq_f32(b, b);
    let j = vfmaq_f32(splat(0x3d2b_9f17), splat(0x3c07_2010), b);
    let j = vfmaq_f32(vfmaq_f32(splat(0x3eff_fedb), splat(0x3e2a_af33), b), j, u);
    let j = vfmaq_f32(vmulq_f32(splat(0x3f7f_fff6), b), j, u);
    let normal = vfmaq_f32(k, j, k);
    // |n| > 126: scale in two steps (or saturate past 192). Comparisons with NaN are false,
    // as the reference's `if`s are.
    let an = vabsq_f32(n);
    let g = vandq_u32(vcleq_f32(n, vdupq_n_f32(0.0)), vdupq_n_u32(0x8200_0000));
    let s1 = vreinterpretq_f32_u32(vaddq_u32(g, vdupq_n_u32(0x7f00_0000)));
    let s2 = vreinterpretq_f32_u32(vsubq_u32(e, g));
    let far = vbslq_f32(
        vcgtq_f32(an, vdupq_n_f32(192.0)),
        vmulq_f32(s1, s1),
        vmulq_f32(vfmaq_f32(s2, s2, j), s1),
    );
    vbslq_f32(vcleq_f32(an, vdupq_n_f32(126.0)), normal, far)
}

#[target_feature(enable = "neon")]
fn silu_mul_neon(gate: &mut [f32], up: &[f32]) {
    let n8 = gate.len() / 8 * 8;
    let (one, zero) = (vdupq_n_f32(1.0), vdupq_n_f32(0.0));
    for (g, u) in gate[..n8].chunks_exact_mut(4).zip(up[..n8].chunks_exact(4)) {
        // SAFETY: `g` and `u` hold exactly 4 f32 each; unaligned loads and stores.
        unsafe {
            let x = vld1q_f32(g.as_ptr());
            let s = vdivq_f32(x, vaddq_f32(one, expf4(vsubq_f32(zero, x))));
            vst1q_f32(g.as_mut_ptr(), vmulq_f32(s, vld1q_f32(u.as_ptr())));
        }
    }
    ops::silu_mul(&mut gate[n8..], &up[n8..]);
}

/// See `reference::ops::silu_mul`.
pub(crate) fn silu_mul(gate: &mut [f32], up: &[f32]) {
    debug_assert_eq!(gate.len(), up.len());
    // SAFETY: installed in the dispatch table only after neon was detected.
    unsafe { silu_mul_neon(gate, up) }
}

#[target_feature(enable = "neon")]
fn rms_norm_neon(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let mut sum = 0f64;
    for &v in x {
        sum += f64::from(v * v);
    }
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    let n4 = x.len().min(w.len()).min(out.len()) / 4 * 4;
    for ((o, v), g) in out[..n4]
        .chunks_exact_mut(4)
        .zip(x[..n4].chunks_exact(4))
        .zip(w[..n4].chunks_exact(4))
    {
        // SAFETY: `o`, `v` and `g` hold exactly 4 f32 each; unaligned loads and stores.
        unsafe {
            let r = vmulq_f32(
                vmulq_n_f32(vld1q_f32(v.as_ptr()), scale),
                vld1q_f32(g.as_ptr()),
            );
            vst1q_f32(o.as_mut_ptr(), r);
        }
    }
    for ((o, &v), &g) in out[n4..].iter_mut().zip(&x[n4..]).zip(&w[n4..]) {
        *o = (v * scale) * g;
    }
}

/// See `reference::ops::rms_norm`.
pub(crate) fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    debug_assert!(x.len() == w.len() && x.len() == out.len());
    // SAFETY: installed in the dispatch table only after neon was detected.
    unsafe { rms_norm_neon(x, w, eps, out) }
}

#[target_feature(enable = "neon")]
fn rope_norm_neon(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let m = (x.len() / 2).min(cos.len()).min(sin.len()) / 4 * 4;
    for ((p, c), s) in x[..2 * m]
        .chunks_exact_mut(8)
        .zip(cos[..m].chunks_exact(4))
        .zip(sin[..m].chunks_exact(4))
    {
        // SAFETY: `p` holds 8 f32 (4 interleaved pairs), `c` and `s` 4 each; unaligned
        // de-interleaving load and interleaving store.
        unsafe {
            let v = vld2q_f32(p.as_ptr());
            let (c, s) = (vld1q_f32(c.as_ptr()), vld1q_f32(s.as_ptr()));
            let (x0, x1) = (v.0, v.1);
            let mut r = v;
            // x0.mul_add(c, -(x1 * s)) and x0.mul_add(s, x1 * c).
            r.0 = vfmaq_f32(vnegq_f32(vmulq_f32(x1, s)), x0, c);
            r.1 = vfmaq_f32(vmulq_f32(x1, c), x0, s);
            vst2q_f32(p.as_mut_ptr(), r);
        }
    }
    ops::rope_norm(&mut x[2 * m..], &cos[m..], &sin[m..]);
}

/// See `reference::ops::rope_norm` (and its warning on NORM vs NEOX pairing).
pub(crate) fn rope_norm(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    debug_assert!(x.len() == 2 * cos.len() && cos.len() == sin.len());
    // SAFETY: installed in the dispatch table only after neon was detected.
    unsafe { rope_norm_neon(x, cos, sin) }
}

#[target_feature(enable = "neon")]
fn rope_neox_neon(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let (lo, hi) = x.split_at_mut(cos.len().min(x.len()));
    let h = lo.len().min(hi.len()).min(sin.len());
    let m = h / 4 * 4;
    for (((a, b), c), s) in lo[..m]
        .chunks_exact_mut(4)
        .zip(hi[..m].chunks_exact_mut(4))
        .zip(cos[..m].chunks_exact(4))
        .zip(sin[..m].chunks_exact(4))
    {
        // SAFETY: each chunk holds exactly 4 f32; unaligned loads and stores.
        unsafe {
            let (x0, x1) = (vld1q_f32(a.as_ptr()), vld1q_f32(b.as_ptr()));
            let (c, s) = (vld1q_f32(c.as_ptr()), vld1q_f32(s.as_ptr()));
            // x0.mul_add(c, -(x1 * s)) and x0.mul_add(s, x1 * c).
            vst1q_f32(
                a.as_mut_ptr(),
                vfmaq_f32(vnegq_f32(vmulq_f32(x1, s)), x0, c),
            );
            vst1q_f32(b.as_mut_ptr(), vfmaq_f32(vmulq_f32(x1, c), x0, s));
        }
    }
    for (((a, b), &c), &s) in lo[m..h]
        .iter_mut()
        .zip(hi[m..h].iter_mut())
        .zip(&cos[m..h])
        .zip(&sin[m..h])
    {
        let (x0, x1) = (*a, *b);
        *a = x0.mul_add(c, -(x1 * s));
        *b = x0.mul_add(s, x1 * c);
    }
}

/// See `reference::ops::rope_neox` (and its warning on NORM vs NEOX pairing).
pub(crate) fn rope_neox(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    debug_assert!(x.len() == 2 * cos.len() && cos.len() == sin.len());
    // SAFETY: installed in the dispatch table only after neon was detected.
    unsafe { rope_neox_neon(x, cos, sin) }
}
