//! Q4_0 × Q8_0 with NEON, equal to `reference::q4_0::vec_dot_q4_0_q8_0` bit for bit. The
//! reference is ggml's generic dot (one integer sum per block, `sumf += sumi * d_w * d_a` in
//! f32), so only the integer sum is vectorized; it is exact in any grouping.

use std::arch::aarch64::{
    int8x16_t, vaddq_s32, vaddvq_s32, vandq_u8, vdupq_n_s8, vdupq_n_u8, vld1q_s8, vld1q_u8,
    vreinterpretq_s8_u8, vshrq_n_u8, vsubq_s8,
};

use super::lanes::{f16_at, sdot4, sums4};

const Q4_0_SIZE: usize = 18;
const Q8_0_SIZE: usize = 34;

/// The quants of one block pair: weights `q - 8` of elements 0..16 and 16..32, then the
/// activations of elements 0..16 and 16..32.
#[inline]
#[target_feature(enable = "neon")]
fn quants(x: &[u8], y: &[u8]) -> [int8x16_t; 4] {
    let (x, y) = (&x[2..18], &y[2..34]);
    // SAFETY: `x` holds 16 bytes and `y` 32 (bounds-checked above); unaligned NEON loads.
    let (packed, y0, y1) = unsafe {
        (
            vld1q_u8(x.as_ptr()),
            vld1q_s8(y.as_ptr().cast()),
            vld1q_s8(y[16..].as_ptr().cast()),
        )
    };
    let eight = vdupq_n_s8(8);
    let lo = vsubq_s8(
        vreinterpretq_s8_u8(vandq_u8(packed, vdupq_n_u8(0x0f))),
        eight,
    );
    let hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8::<4>(packed)), eight);
    [lo, hi, y0, y1]
}

#[target_feature(enable = "neon,dotprod")]
fn dot_dotprod(w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for (x, y) in w.chunks_exact(Q4_0_SIZE).zip(a.chunks_exact(Q8_0_SIZE)) {
        let [x0, x1, y0, y1] = quants(x, y);
        let sumi = vaddvq_s32(vaddq_s32(sdot4(x0, y0), sdot4(x1, y1)));
        sumf += sumi as f32 * f16_at(x, 0) * f16_at(y, 0);
    }
    sumf
}

#[target_feature(enable = "neon")]
fn dot_neon(w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for (x, y) in w.chunks_exact(Q4_0_SIZE).zip(a.chunks_exact(Q8_0_SIZE)) {
        let [x0, x1, y0, y1] = quants(x, y);
        let sumi = vaddvq_s32(vaddq_s32(sums4(x0, y0), sums4(x1, y1)));
        sumf += sumi as f32 * f16_at(x, 0) * f16_at(y, 0);
    }
    sumf
}

/// The `n / 32` blocks of each row (a short row is a caller bug, as in the reference).
fn rows<'a, 'b>(n: usize, w: &'a [u8], a: &'b [u8]) -> (&'a [u8], &'b [u8]) {
    let nb = n / 32;
    (&w[..nb * Q4_0_SIZE], &a[..nb * Q8_0_SIZE])
}

/// Q4_0 × Q8_0 with `sdot` (same result as the reference).
pub(crate) fn vec_dot_q4_0_q8_0_dotprod(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (w, a) = rows(n, w, a);
    // SAFETY: installed in the dispatch table only after neon and dotprod were detected.
    unsafe { dot_dotprod(w, a) }
}

/// Q4_0 × Q8_0 with plain NEON (same result as the reference).
pub(crate) fn vec_dot_q4_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (w, a) = rows(n, w, a);
    // SAFETY: installed in the dispatch table only after neon was detected.
    unsafe { dot_neon(w, a) }
}
