//! Q4_0 × Q8_0 with NEON, equal to `reference::q4_0::vec_dot_q4_0_q8_0` bit for bit. The
//! reference is ggml's generic dot (one integer sum per block, `sumf += sumi * d_w * d_a` in
//! f32), so only the integer sum is vectorized; it is exact in any grouping. Written once over
//! [`LaneSums`] (`sdot` or plain NEON), on the reference's typed blocks.

use std::arch::aarch64::{
    int8x16_t, vaddq_s32, vaddvq_s32, vandq_u8, vdupq_n_s8, vdupq_n_u8, vld1q_s8, vld1q_u8,
    vreinterpretq_s8_u8, vshrq_n_u8, vsubq_s8,
};

use super::lanes::{f16_at, with_mull, with_sdot, Dot, LaneSums};
use crate::reference::q4_0::BlockQ4_0;
use crate::reference::q8::BlockQ8_0;
use crate::reference::view;

/// The quants of one block pair: weights `q - 8` of elements 0..16 and 16..32, then the
/// activations of elements 0..16 and 16..32.
#[inline]
#[target_feature(enable = "neon")]
fn quants(x: &BlockQ4_0, y: &BlockQ8_0) -> [int8x16_t; 4] {
    // SAFETY: `x.qs` holds 16 bytes and `y.qs` 32; unaligned NEON loads.
    let (packed, y0, y1) = unsafe {
        (
            vld1q_u8(x.qs.as_ptr()),
            vld1q_s8(y.qs.as_ptr()),
            vld1q_s8(y.qs[16..].as_ptr()),
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

/// # Safety
/// The CPU has neon and the features `S` needs.
#[inline(always)]
unsafe fn dot<S: LaneSums>(w: &[BlockQ4_0], a: &[BlockQ8_0]) -> f32 {
    let mut sumf = 0f32;
    for (x, y) in w.iter().zip(a) {
        // SAFETY: neon and `S`'s features (this function's contract).
        let sumi = unsafe {
            let [x0, x1, y0, y1] = quants(x, y);
            vaddvq_s32(vaddq_s32(S::sums(x0, y0), S::sums(x1, y1)))
        };
        sumf += sumi as f32 * f16_at(&x.d, 0) * f16_at(&y.d, 0);
    }
    sumf
}

/// This file's dot, for [`with_sdot`] and [`with_mull`].
struct This;

impl Dot for This {
    type W = BlockQ4_0;
    type A = BlockQ8_0;
    #[inline(always)]
    unsafe fn run<S: LaneSums>(w: &[BlockQ4_0], a: &[BlockQ8_0]) -> f32 {
        // SAFETY: forwarded contract.
        unsafe { dot::<S>(w, a) }
    }
}

/// Q4_0 × Q8_0 with `sdot` (same result as the reference).
pub(crate) fn vec_dot_q4_0_q8_0_dotprod(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (w, a) = (view::<BlockQ4_0>(w, n / 32), view::<BlockQ8_0>(a, n / 32));
    // SAFETY: installed in the dispatch table only after neon and dotprod were detected.
    unsafe { with_sdot::<This>(w, a) }
}

/// Q4_0 × Q8_0 with plain NEON (same result as the reference).
pub(crate) fn vec_dot_q4_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (w, a) = (view::<BlockQ4_0>(w, n / 32), view::<BlockQ8_0>(a, n / 32));
    // SAFETY: installed in the dispatch table only after neon was detected.
    unsafe { with_mull::<This>(w, a) }
}
