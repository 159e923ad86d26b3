//! Q4_1 × Q8_1 with NEON, equal to `reference::q4_1::vec_dot_q4_1_q8_1` bit for bit: per block
//! the 8 lane sums of `q_w × q_a` (low nibbles are elements 0..16, high nibbles 16..32), one
//! fused multiply-add by `d_w * d_a` per lane, the `m_w * s_a` terms in a separate fused scalar
//! sum added after the `hsum8` reduction. Written once over [`LaneSums`] (`sdot` or plain
//! NEON), on the reference's typed blocks.

use std::arch::aarch64::{
    int8x16_t, vandq_u8, vdupq_n_u8, vld1q_s8, vld1q_u8, vreinterpretq_s8_u8, vshrq_n_u8,
};

use super::lanes::{f16_at, with_mull, with_sdot, Acc8, Dot, LaneSums};
use crate::reference::q4_1::BlockQ4_1;
use crate::reference::q8::BlockQ8_1;
use crate::reference::view;

/// The quants of one block pair as four 16-byte vectors: weights of elements 0..16 and
/// 16..32 (nibbles 0..15, as signed bytes), activations of elements 0..16 and 16..32.
#[inline]
#[target_feature(enable = "neon")]
fn quants(x: &BlockQ4_1, y: &BlockQ8_1) -> [int8x16_t; 4] {
    // SAFETY: `x.qs` holds 16 bytes and `y.qs` 32; NEON loads have no alignment requirement.
    let (packed, y0, y1) = unsafe {
        (
            vld1q_u8(x.qs.as_ptr()),
            vld1q_s8(y.qs.as_ptr()),
            vld1q_s8(y.qs[16..].as_ptr()),
        )
    };
    let lo = vreinterpretq_s8_u8(vandq_u8(packed, vdupq_n_u8(0x0f)));
    let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(packed));
    [lo, hi, y0, y1]
}

/// # Safety
/// The CPU has neon and the features `S` needs.
#[inline(always)]
unsafe fn dot<S: LaneSums>(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    // SAFETY: neon and `S`'s features (this function's contract).
    unsafe {
        let mut acc = Acc8::zero();
        let mut summs = 0f32;
        for (x, y) in w.iter().zip(a) {
            let [x0, x1, y0, y1] = quants(x, y);
            acc = acc.fma(
                S::sums(x0, y0),
                S::sums(x1, y1),
                f16_at(&x.d, 0) * f16_at(&y.d, 0),
            );
            summs = f16_at(&x.m, 0).mul_add(f16_at(&y.s, 0), summs);
        }
        acc.hsum() + summs
    }
}

/// This file's dot, for [`with_sdot`] and [`with_mull`].
struct This;

impl Dot for This {
    type W = BlockQ4_1;
    type A = BlockQ8_1;
    #[inline(always)]
    unsafe fn run<S: LaneSums>(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
        // SAFETY: forwarded contract.
        unsafe { dot::<S>(w, a) }
    }
}

/// Q4_1 × Q8_1 with `sdot` (same result as the reference).
pub(crate) fn vec_dot_q4_1_q8_1_dotprod(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (w, a) = (view::<BlockQ4_1>(w, n / 32), view::<BlockQ8_1>(a, n / 32));
    // SAFETY: installed in the dispatch table only after neon and dotprod were detected.
    unsafe { with_sdot::<This>(w, a) }
}

/// Q4_1 × Q8_1 with plain NEON (same result as the reference).
pub(crate) fn vec_dot_q4_1_q8_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (w, a) = (view::<BlockQ4_1>(w, n / 32), view::<BlockQ8_1>(a, n / 32));
    // SAFETY: installed in the dispatch table only after neon was detected.
    unsafe { with_mull::<This>(w, a) }
}
