//! Q4_1 × Q8_1 with NEON, equal to `reference::q4_1::vec_dot_q4_1_q8_1` bit for bit: per block
//! the 8 lane sums of `q_w × q_a` (low nibbles are elements 0..16, high nibbles 16..32), one
//! fused multiply-add by `d_w * d_a` per lane, the `m_w * s_a` terms in a separate fused scalar
//! sum added after the `hsum8` reduction.

use std::arch::aarch64::{
    int8x16_t, vandq_u8, vdupq_n_u8, vld1q_s8, vld1q_u8, vreinterpretq_s8_u8, vshrq_n_u8,
};

use super::lanes::{f16_at, sdot4, sums4, Acc8};

const Q4_1_SIZE: usize = 20;
const Q8_1_SIZE: usize = 36;

/// The quants of one block pair as four 16-byte vectors: weights of elements 0..16 and
/// 16..32 (nibbles 0..15, as signed bytes), activations of elements 0..16 and 16..32.
#[inline]
#[target_feature(enable = "neon")]
fn quants(x: &[u8], y: &[u8]) -> [int8x16_t; 4] {
    let (x, y) = (&x[4..20], &y[4..36]);
    // SAFETY: `x` holds 16 bytes and `y` 32 (slices bounds-checked above); NEON loads have no
    // alignment requirement.
    let (packed, y0, y1) = unsafe {
        (
            vld1q_u8(x.as_ptr()),
            vld1q_s8(y.as_ptr().cast()),
            vld1q_s8(y[16..].as_ptr().cast()),
        )
    };
    let lo = vreinterpretq_s8_u8(vandq_u8(packed, vdupq_n_u8(0x0f)));
    let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(packed));
    [lo, hi, y0, y1]
}

#[target_feature(enable = "neon,dotprod")]
fn dot_dotprod(w: &[u8], a: &[u8]) -> f32 {
    let mut acc = Acc8::zero();
    let mut summs = 0f32;
    for (x, y) in w.chunks_exact(Q4_1_SIZE).zip(a.chunks_exact(Q8_1_SIZE)) {
        let [x0, x1, y0, y1] = quants(x, y);
        acc = acc.fma(sdot4(x0, y0), sdot4(x1, y1), f16_at(x, 0) * f16_at(y, 0));
        summs = f16_at(x, 2).mul_add(f16_at(y, 2), summs);
    }
    acc.hsum() + summs
}

#[target_feature(enable = "neon")]
fn dot_neon(w: &[u8], a: &[u8]) -> f32 {
    let mut acc = Acc8::zero();
    let mut summs = 0f32;
    for (x, y) in w.chunks_exact(Q4_1_SIZE).zip(a.chunks_exact(Q8_1_SIZE)) {
        let [x0, x1, y0, y1] = quants(x, y);
        acc = acc.fma(sums4(x0, y0), sums4(x1, y1), f16_at(x, 0) * f16_at(y, 0));
        summs = f16_at(x, 2).mul_add(f16_at(y, 2), summs);
    }
    acc.hsum() + summs
}

/// The `n / 32` blocks of each row (a short row is a caller bug, as in the reference).
fn rows<'a, 'b>(n: usize, w: &'a [u8], a: &'b [u8]) -> (&'a [u8], &'b [u8]) {
    let nb = n / 32;
    (&w[..nb * Q4_1_SIZE], &a[..nb * Q8_1_SIZE])
}

/// Q4_1 × Q8_1 with `sdot` (same result as the reference).
pub(crate) fn vec_dot_q4_1_q8_1_dotprod(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (w, a) = rows(n, w, a);
    // SAFETY: installed in the dispatch table only after neon and dotprod were detected.
    unsafe { dot_dotprod(w, a) }
}

/// Q4_1 × Q8_1 with plain NEON (same result as the reference).
pub(crate) fn vec_dot_q4_1_q8_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (w, a) = rows(n, w, a);
    // SAFETY: installed in the dispatch table only after neon was detected.
    unsafe { dot_neon(w, a) }
}
