//! F32, F16 and BF16 dots with NEON, equal to `reference::float` bit for bit: each product is
//! formed in f32 (exact for f16 / bf16 operands) and added in f64 to lane `i % 8` (four
//! `float64x2_t`), the tail added to lanes `0..`, the lanes summed in order at the end.
//! F16 widens with the base ARMv8 `fcvtl` (exact), BF16 with a 16-bit shift (as the reference,
//! which keeps NaN payloads).

use std::arch::aarch64::{
    float32x4_t, float64x2_t, uint16x8_t, vaddq_f64, vcvt_f64_f32, vcvt_high_f64_f32, vdupq_n_f64,
    vget_high_u16, vget_low_f32, vget_low_u16, vld1q_u8, vmulq_f32, vreinterpretq_f32_u32,
    vreinterpretq_f32_u8, vreinterpretq_u16_u8, vshll_n_u16, vst1q_f64,
};
use std::arch::asm;

use half::f16;

/// The 16 bytes at the start of `b` (which holds at least 16).
#[inline]
#[target_feature(enable = "neon")]
fn load16(b: &[u8]) -> std::arch::aarch64::uint8x16_t {
    let b = &b[..16];
    // SAFETY: `b` holds 16 bytes (bounds-checked above); NEON byte loads have no alignment
    // requirement.
    unsafe { vld1q_u8(b.as_ptr()) }
}

/// Sum over `i < n` of `prod(w_i, a_i)` in f64 over 8 lanes, as the reference's `dot_lanes`:
/// `prod8` gives the f32 products of 8 consecutive `E`-byte elements (lanes 0..4, 4..8),
/// `prod1` that of one element.
#[inline]
#[target_feature(enable = "neon")]
fn dot_lanes<const E: usize>(
    n: usize,
    w: &[u8],
    a: &[u8],
    prod8: impl Fn(&[u8], &[u8]) -> [float32x4_t; 2],
    prod1: impl Fn(&[u8], &[u8]) -> f32,
) -> f32 {
    let (w, a) = (&w[..n * E], &a[..n * E]);
    let mut acc: [float64x2_t; 4] = [vdupq_n_f64(0.0); 4];
    let mut wc = w.chunks_exact(E * 8);
    let mut ac = a.chunks_exact(E * 8);
    for (wb, ab) in (&mut wc).zip(&mut ac) {
        let [p0, p1] = prod8(wb, ab);
        acc[0] = vaddq_f64(acc[0], vcvt_f64_f32(vget_low_f32(p0)));
        acc[1] = vaddq_f64(acc[1], vcvt_high_f64_f32(p0));
        acc[2] = vaddq_f64(acc[2], vcvt_f64_f32(vget_low_f32(p1)));
        acc[3] = vaddq_f64(acc[3], vcvt_high_f64_f32(p1));
    }
    let mut lanes = [0f64; 8];
    for (j, v) in acc.iter().enumerate() {
        // SAFETY: `lanes[2 * j..]` has room for the 2 f64 stored (j < 4).
        unsafe { vst1q_f64(lanes[2 * j..2 * j + 2].as_mut_ptr(), *v) };
    }
    for (i, (we, ae)) in wc
        .remainder()
        .chunks_exact(E)
        .zip(ac.remainder().chunks_exact(E))
        .enumerate()
    {
        lanes[i] += f64::from(prod1(we, ae));
    }
    lanes.iter().sum::<f64>() as f32
}

#[target_feature(enable = "neon")]
fn f32_neon(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let f = |b: &[u8]| vreinterpretq_f32_u8(load16(b));
    let at = |b: &[u8]| f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    dot_lanes::<4>(
        n,
        w,
        a,
        |x, y| [vmulq_f32(f(x), f(y)), vmulq_f32(f(&x[16..]), f(&y[16..]))],
        |x, y| at(x) * at(y),
    )
}

/// Dot product of F32 weights and activations (same result as `reference::float::vec_dot_f32`).
pub(crate) fn vec_dot_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    // SAFETY: installed in the dispatch table only after neon was detected.
    unsafe { f32_neon(n, w, a) }
}

/// Eight f16 (as raw u16) widened exactly to f32: elements 0..4 and 4..8.
#[inline]
#[target_feature(enable = "neon")]
fn widen_f16(h: uint16x8_t) -> [float32x4_t; 2] {
    let (lo, hi): (float32x4_t, float32x4_t);
    // SAFETY: `fcvtl` / `fcvtl2` (ARMv8.0 Advanced SIMD, present wherever neon is) touch only
    // the vector registers named here; no memory, stack or flags.
    unsafe {
        asm!(
            "fcvtl {lo:v}.4s, {h:v}.4h",
            "fcvtl2 {hi:v}.4s, {h:v}.8h",
            h = in(vreg) h,
            lo = out(vreg) lo,
            hi = out(vreg) hi,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    [lo, hi]
}

#[target_feature(enable = "neon")]
fn f16_neon(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let at = |b: &[u8]| f16::from_le_bytes([b[0], b[1]]).to_f32();
    dot_lanes::<2>(
        n,
        w,
        a,
        |x, y| {
            let [x0, x1] = widen_f16(vreinterpretq_u16_u8(load16(x)));
            let [y0, y1] = widen_f16(vreinterpretq_u16_u8(load16(y)));
            [vmulq_f32(x0, y0), vmulq_f32(x1, y1)]
        },
        |x, y| at(x) * at(y),
    )
}

/// Dot product of F16 weights and activations (same result as `reference::float::vec_dot_f16`).
pub(crate) fn vec_dot_f16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    // SAFETY: installed in the dispatch table only after neon was detected.
    unsafe { f16_neon(n, w, a) }
}

/// Eight bf16 (as raw u16) widened to f32 by a 16-bit shift: elements 0..4 and 4..8.
#[inline]
#[target_feature(enable = "neon")]
fn widen_bf16(h: uint16x8_t) -> [float32x4_t; 2] {
    [
        vreinterpretq_f32_u32(vshll_n_u16::<16>(vget_low_u16(h))),
        vreinterpretq_f32_u32(vshll_n_u16::<16>(vget_high_u16(h))),
    ]
}

#[target_feature(enable = "neon")]
fn bf16_neon(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let at = |b: &[u8]| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
    dot_lanes::<2>(
        n,
        w,
        a,
        |x, y| {
            let [x0, x1] = widen_bf16(vreinterpretq_u16_u8(load16(x)));
            let [y0, y1] = widen_bf16(vreinterpretq_u16_u8(load16(y)));
            [vmulq_f32(x0, y0), vmulq_f32(x1, y1)]
        },
        |x, y| at(x) * at(y),
    )
}

/// Dot product of BF16 weights and activations (same result as
/// `reference::float::vec_dot_bf16`).
pub(crate) fn vec_dot_bf16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    // SAFETY: installed in the dispatch table only after neon was detected.
    unsafe { bf16_neon(n, w, a) }
}
