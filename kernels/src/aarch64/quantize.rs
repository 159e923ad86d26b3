//! Q8_0 / Q8_1 activation quantizers with NEON, equal to `reference::q8::quantize_row_q8_0_act`
//! and `quantize_row_q8_1_act` bit for bit: `amax` is a maximum (order-free), `d = amax / 127`,
//! `id = 127 / amax` (0 for an all-zero block), `q = round_half_even(x * id)` (`vcvtnq_s32_f32`),
//! saturated to i8 as Rust's `as i8` does, and for Q8_1 `s = f16(Σq * d)` with the f32 `d`.
//!
//! NaN inputs: the maximum skips quiet NaNs (`vmaxnm`, like `f32::max`) and a NaN quantizes to 0
//! (like `as i8`); blocks with infinities, signaling NaNs or a scale that overflows go to the
//! reference (see `block`).

use std::arch::aarch64::{
    int8x16_t, vabsq_f32, vaddlvq_s8, vandq_u32, vcleq_f32, vcvtnq_s32_f32, vdupq_n_f32, vld1q_f32,
    vmaxnmq_f32, vmaxnmvq_f32, vminvq_u32, vmulq_n_f32, vqmovn_high_s16, vqmovn_high_s32,
    vqmovn_s16, vqmovn_s32, vst1q_s8,
};

use half::f16;

use crate::reference::q8;

const QK8: usize = 32;

/// Quantizes 32 values into `qs` (32 bytes); returns the f32 scale `d` and `Σ qs`, or `None`
/// when the block holds values whose handling differs between the NEON instructions and the
/// reference's scalar code (an infinity, a signaling NaN — `vmaxnm` returns NaN for it where
/// `f32::max` skips it — or an amax so small that `127 / amax` overflows): the caller then
/// quantizes the block with the reference.
#[inline]
#[target_feature(enable = "neon")]
fn block(x: &[f32], qs: &mut [u8]) -> Option<(f32, i32)> {
    let (x, qs) = (&x[..QK8], &mut qs[..QK8]);
    // SAFETY: `x` holds 32 f32 (bounds-checked above); each load reads 4 from `4 * j`.
    let v: [_; 8] = std::array::from_fn(|j| unsafe { vld1q_f32(x[4 * j..].as_ptr()) });
    // Every value finite (|x| <= f32::MAX fails for infinities and NaNs of any kind)?
    let lim = vdupq_n_f32(f32::MAX);
    let mut fin = vcleq_f32(vabsq_f32(v[0]), lim);
    for &vj in &v[1..] {
        fin = vandq_u32(fin, vcleq_f32(vabsq_f32(vj), lim));
    }
    if vminvq_u32(fin) != u32::MAX {
        return None;
    }
    let mut m = vabsq_f32(v[0]);
    for &vj in &v[1..] {
        m = vmaxnmq_f32(m, vabsq_f32(vj));
    }
    let amax = vmaxnmvq_f32(m);
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    if !(amax.is_finite() && id.is_finite()) {
        return None;
    }
    let q: [_; 8] = std::array::from_fn(|j| vcvtnq_s32_f32(vmulq_n_f32(v[j], id)));
    let bytes = |j: usize| -> int8x16_t {
        let h0 = vqmovn_high_s32(vqmovn_s32(q[4 * j]), q[4 * j + 1]);
        let h1 = vqmovn_high_s32(vqmovn_s32(q[4 * j + 2]), q[4 * j + 3]);
        vqmovn_high_s16(vqmovn_s16(h0), h1)
    };
    let (b0, b1) = (bytes(0), bytes(1));
    // SAFETY: `qs` holds 32 bytes (bounds-checked above); unaligned NEON stores of 16 bytes at
    // offsets 0 and 16.
    unsafe {
        vst1q_s8(qs.as_mut_ptr().cast(), b0);
        vst1q_s8(qs[16..].as_mut_ptr().cast(), b1);
    }
    Some((d, i32::from(vaddlvq_s8(b0)) + i32::from(vaddlvq_s8(b1))))
}

#[target_feature(enable = "neon")]
fn q8_0(src: &[f32], out: &mut [u8]) {
    for (x, o) in src.chunks_exact(QK8).zip(out.chunks_exact_mut(34)) {
        match block(x, &mut o[2..]) {
            Some((d, _)) => o[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes()),
            None => q8::quantize_row_q8_0_act(x, o),
        }
    }
}

#[target_feature(enable = "neon")]
fn q8_1(src: &[f32], out: &mut [u8]) {
    for (x, o) in src.chunks_exact(QK8).zip(out.chunks_exact_mut(36)) {
        match block(x, &mut o[4..]) {
            Some((d, sum)) => {
                o[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
                o[2..4].copy_from_slice(&f16::from_f32(sum as f32 * d).to_le_bytes());
            }
            None => q8::quantize_row_q8_1_act(x, o),
        }
    }
}

/// f32 activations to Q8_0 blocks (same bytes as the reference's `quantize_row_q8_0_act`).
pub(crate) fn quantize_row_q8_0_act(src: &[f32], out: &mut [u8]) {
    debug_assert_eq!(src.len() * 34, out.len() * QK8);
    // SAFETY: installed in the dispatch table only after neon was detected.
    unsafe { q8_0(src, out) }
}

/// f32 activations to Q8_1 blocks (same bytes as the reference's `quantize_row_q8_1_act`).
pub(crate) fn quantize_row_q8_1_act(src: &[f32], out: &mut [u8]) {
    debug_assert_eq!(src.len() * 36, out.len() * QK8);
    // SAFETY: installed in the dispatch table only after neon was detected.
    unsafe { q8_1(src, out) }
}
