//! Q8_0 × Q8_0 with NEON, equal to `reference::q8::vec_dot_q8_0_q8_0` bit for bit: per block
//! the 8 lane sums of `q_w × q_a`, one fused multiply-add by `d_w * d_a` per lane, reduced in
//! `hsum8` order. Exact for every pair of signed bytes (no ±127 assumption). Written once over
//! [`LaneSums`] (`sdot` or plain NEON), on the reference's typed blocks.

use std::arch::aarch64::{int8x16_t, vld1q_s8};

use super::lanes::{f16_at, with_mull, with_sdot, Acc8, Dot, LaneSums};
use crate::reference::q8::BlockQ8_0;
use crate::reference::view;

/// The quants of one block pair: weights of elements 0..16 and 16..32, then activations.
#[inline]
#[target_feature(enable = "neon")]
fn quants(x: &BlockQ8_0, y: &BlockQ8_0) -> [int8x16_t; 4] {
    // SAFETY: `x.qs` and `y.qs` hold 32 bytes each; unaligned NEON loads.
    unsafe {
        [
            vld1q_s8(x.qs.as_ptr()),
            vld1q_s8(x.qs[16..].as_ptr()),
            vld1q_s8(y.qs.as_ptr()),
            vld1q_s8(y.qs[16..].as_ptr()),
        ]
    }
}

/// # Safety
/// The CPU has neon and the features `S` needs.
#[inline(always)]
unsafe fn dot<S: LaneSums>(w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
    // SAFETY: neon and `S`'s features (this function's contract).
    unsafe {
        let mut acc = Acc8::zero();
        for (x, y) in w.iter().zip(a) {
            let [x0, x1, y0, y1] = quants(x, y);
            acc = acc.fma(
                S::sums(x0, y0),
                S::sums(x1, y1),
                f16_at(&x.d, 0) * f16_at(&y.d, 0),
            );
        }
        acc.hsum()
    }
}

/// This file's dot, for [`with_sdot`] and [`with_mull`].
struct This;

impl Dot for This {
    type W = BlockQ8_0;
    type A = BlockQ8_0;
    #[inline(always)]
    unsafe fn run<S: LaneSums>(w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
        // SAFETY: forwarded contract.
        unsafe { dot::<S>(w, a) }
    }
}

/// Q8_0 × Q8_0 with `sdot` (same result as the reference).
pub(crate) fn vec_dot_q8_0_q8_0_dotprod(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (w, a) = (view::<BlockQ8_0>(w, n / 32), view::<BlockQ8_0>(a, n / 32));
    // SAFETY: installed in the dispatch table only after neon and dotprod were detected.
    unsafe { with_sdot::<This>(w, a) }
}

/// Q8_0 × Q8_0 with plain NEON (same result as the reference).
pub(crate) fn vec_dot_q8_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (w, a) = (view::<BlockQ8_0>(w, n / 32), view::<BlockQ8_0>(a, n / 32));
    // SAFETY: installed in the dispatch table only after neon was detected.
    unsafe { with_mull::<This>(w, a) }
}
