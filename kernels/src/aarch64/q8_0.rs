//! Q8_0 × Q8_0 with NEON, equal to `reference::q8::vec_dot_q8_0_q8_0` bit for bit: per block
//! the 8 lane sums of `q_w × q_a`, one fused multiply-add by `d_w * d_a` per lane, reduced in
//! `hsum8` order. Exact for every pair of signed bytes (no ±127 assumption).

use std::arch::aarch64::{int8x16_t, vld1q_s8};

use super::lanes::{f16_at, sdot4, sums4, Acc8};

const Q8_0_SIZE: usize = 34;

/// The quants of one block pair: weights of elements 0..16 and 16..32, then activations.
#[inline]
#[target_feature(enable = "neon")]
fn quants(x: &[u8], y: &[u8]) -> [int8x16_t; 4] {
    let (x, y) = (&x[2..34], &y[2..34]);
    // SAFETY: `x` and `y` hold 32 bytes each (bounds-checked above); unaligned NEON loads.
    unsafe {
        [
            vld1q_s8(x.as_ptr().cast()),
            vld1q_s8(x[16..].as_ptr().cast()),
            vld1q_s8(y.as_ptr().cast()),
            vld1q_s8(y[16..].as_ptr().cast()),
        ]
    }
}

#[target_feature(enable = "neon,dotprod")]
fn dot_dotprod(w: &[u8], a: &[u8]) -> f32 {
    let mut acc = Acc8::zero();
    for (x, y) in w.chunks_exact(Q8_0_SIZE).zip(a.chunks_exact(Q8_0_SIZE)) {
        let [x0, x1, y0, y1] = quants(x, y);
        acc = acc.fma(sdot4(x0, y0), sdot4(x1, y1), f16_at(x, 0) * f16_at(y, 0));
    }
    acc.hsum()
}

#[target_feature(enable = "neon")]
fn dot_neon(w: &[u8], a: &[u8]) -> f32 {
    let mut acc = Acc8::zero();
    for (x, y) in w.chunks_exact(Q8_0_SIZE).zip(a.chunks_exact(Q8_0_SIZE)) {
        let [x0, x1, y0, y1] = quants(x, y);
        acc = acc.fma(sums4(x0, y0), sums4(x1, y1), f16_at(x, 0) * f16_at(y, 0));
    }
    acc.hsum()
}

/// The `n / 32` blocks of each row (a short row is a caller bug, as in the reference).
fn rows<'a, 'b>(n: usize, w: &'a [u8], a: &'b [u8]) -> (&'a [u8], &'b [u8]) {
    let nb = n / 32;
    (&w[..nb * Q8_0_SIZE], &a[..nb * Q8_0_SIZE])
}

/// Q8_0 × Q8_0 with `sdot` (same result as the reference).
pub(crate) fn vec_dot_q8_0_q8_0_dotprod(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (w, a) = rows(n, w, a);
    // SAFETY: installed in the dispatch table only after neon and dotprod were detected.
    unsafe { dot_dotprod(w, a) }
}

/// Q8_0 × Q8_0 with plain NEON (same result as the reference).
pub(crate) fn vec_dot_q8_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (w, a) = rows(n, w, a);
    // SAFETY: installed in the dispatch table only after neon was detected.
    unsafe { dot_neon(w, a) }
}
